"""``imsim-lab demo``: the main job. Build the disc-synth benchmark (preset ``demo``: at least 30
copies per transformation family), run the baseline set of both tracks, train a short surrogate
and run the robustness suites (:mod:`.demo_robustness`), start the explorer on 127.0.0.1 and say
what to look at first. Every phase is printed with its duration;
re-running reuses what is done (finished builds and runs, extracted features).

Methods that share a descriptor (SSCD and its post-processings) share its extraction: the feature
files of the first run are hard-linked (or copied) into the next one before it starts, so SSCD
is extracted once. The files are identical by construction (same model fingerprint, same
benchmark), and the runner reuses finished splits it finds in ``features/``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from ..errors import ImsimError

#: the default set: both tracks, SSCD with each post-processing. ``gist_pca`` and ``timm_random`` (a
#: random-weights floor) are the slowest to extract on 5,400 images and are left to ``--methods``
BASELINE = ["pdq", "sscd", "sscd+sn", "sscd+nes", "sscd+stretch", "sscd+ssquare", "sift_verify"]
MORE = ["gist_pca", "timm_random"]


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: build disc-synth, run the baselines, start the explorer",
                       description="Build the disc-synth benchmark, run the baseline set of both tracks (PDQ, "
                                   "SSCD with each post-processing, SIFT verification of SSCD's candidates), train "
                                   "a short surrogate and run a PGD suite with transfer to SSCD and SSCD's graded "
                                   "suite, then start the explorer on 127.0.0.1. Re-running reuses what is done.")
    p.add_argument("--preset", default="demo", help="benchmark size: tiny | small | demo | medium (default demo: "
                                                    "4,400 queries, at least 30 copies per family)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/demo", help="demo folder: OUT/bench and OUT/runs (default results/demo)")
    p.add_argument("--methods", default=",".join(BASELINE),
                   help=f"comma-separated (default: {','.join(BASELINE)}; add {','.join(MORE)} for the classical "
                        "and random-weights baselines)")
    p.add_argument("--workers", type=int, default=2, help="image loading processes")
    p.add_argument("--no-serve", action="store_true", help="stop after the runs (print the findings only)")
    p.add_argument("--no-robustness", action="store_true",
                   help="skip the surrogate, the attack suite and the graded suite")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=run)


def _phase(title: str):
    print(f"==> {title}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str = "done") -> float:
    dt = time.perf_counter() - t0
    print(f"    {what} in {dt:.1f} s", flush=True)
    return dt


def build_phase(preset: str, seed: int, bench: Path, workers: int) -> None:
    from ..data.benchmark import BenchmarkError, load_benchmark
    from ..data.synth import BuildConfig, build_benchmark
    from .progress import PhaseBars

    try:
        b = load_benchmark(bench, check_hashes=False)
        if b.manifest.get("preset") == preset and b.manifest.get("seed") == seed:
            print(f"    {b.name} already built in {bench} (reused)", flush=True)
            return
    except BenchmarkError:
        pass
    bars = PhaseBars(False)
    try:
        rep = build_benchmark(BuildConfig(preset=preset, seed=seed, workers=workers), bench, progress=bars)
    finally:
        bars.close()
    c = rep.manifest["counts"]
    print(f"    {rep.manifest['name']}: {c['queries']} queries ({c['positives']} with a match), {c['references']} "
          f"references, {c['training']} training images", flush=True)


def runs_phase(methods: list[str], bench: Path, runs: Path, workers: int) -> dict:
    from ..features import ExtractConfig
    from ..methods import METHODS
    from ..runner import RunOptions, run_method
    from .run_cmd import _bars

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ImsimError(f"unknown method(s) {', '.join(unknown)}; see `imsim-lab methods`")
    # methods of one model (sscd, sscd+sn, ...) share its descriptors through the runs' feature
    # cache: extracted once, hard-linked (or copied) into each run folder
    opts = RunOptions(extract=ExtractConfig(num_workers=workers), feature_cache=str(runs.parent / "feature-cache"),
                      provenance={"writer": "imsim-lab demo", "saw_eval_queries": False})
    donors: dict[tuple, Path] = {}
    results = {}
    for i, m in enumerate(methods, 1):
        spec = METHODS.get(m)
        out = runs / m.replace("/", "_")
        key = (spec.model, tuple(sorted(spec.model_args.items())))
        run_opts = opts
        if spec.track == "matching":
            # a matching method's candidates come from the demo's run of its descriptor method when there is one
            source = spec.candidate_source().method
            if source in results:
                run_opts = replace(opts, candidates=str(results[source].out))
                print(f"    [{i}/{len(methods)}] {m}: candidates from the {source} run", flush=True)
        elif key in donors and not (out / "metrics.json").is_file():
            print(f"    [{i}/{len(methods)}] {m}: reusing the descriptors extracted for {donors[key].name}",
                  flush=True)
        t = time.perf_counter()
        make, bars = _bars()
        try:
            res = run_method(m, bench, out, None, run_opts, progress=make)
        finally:
            for b in bars:
                b.close()
        dt = time.perf_counter() - t
        mi = res.metrics["isc2021"]
        r90 = mi["recall_at_p90"]
        print(f"    [{i}/{len(methods)}] {m:<14} µAP {mi['micro_ap']:.3f}  R@P90 "
              f"{'n/a' if r90 is None else f'{r90:.3f}'}  R@1 {mi['recall_at_rank1']:.3f}  "
              f"{dt:6.1f} s{'  (reused)' if res.reused else ''}", flush=True)
        if (res.config.get("notes") or {}).get("weights"):
            print(f"          note: {res.config['notes']['weights']}", flush=True)
        if spec.track == "descriptor":
            donors.setdefault(key, out)
        results[m] = res
    return results


def run(args) -> int:
    from ..analysis.report.guide import first_look
    from .explore_cmd import free_port, serve

    from ..methods import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ImsimError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; see `imsim-lab methods`")
    out = Path(args.out)
    bench, runs = out / "bench", out / "runs"
    t_all = time.perf_counter()
    timings = {}
    robust = not args.no_robustness and "sscd" in methods
    n = 4 if robust else 3
    t = _phase(f"1/{n} benchmark: disc-synth preset '{args.preset}', seed {args.seed} -> {bench}")
    build_phase(args.preset, args.seed, bench, args.workers)
    timings["benchmark"] = _done(t)
    t = _phase(f"2/{n} runs: {len(methods)} methods -> {runs}")
    runs_phase(methods, bench, runs, args.workers)
    timings["runs"] = _done(t)
    if robust:
        from .demo_robustness import robustness_phase

        t = _phase(f"3/{n} robustness: a short surrogate, PGD with transfer to sscd, sscd's graded suite")
        robustness_phase(bench, runs, out, "sscd", workers=args.workers)
        timings["robustness"] = _done(t)
    t = _phase(f"{n}/{n} findings")
    findings = first_look(runs)
    timings["findings"] = _done(t)
    total = time.perf_counter() - t_all
    print(f"demo ready in {total:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")",
          flush=True)
    if args.no_serve:
        print("what to look at first (imsim-lab explore " + str(runs) + "):")
        for i, f in enumerate(findings, 1):
            print(f"  {i}. {f.text}")
        return 0
    port = free_port(args.port)
    base = f"http://127.0.0.1:{port}"
    hints = ["what to look at first:"] + [f"  {i}. {f.text}\n     {f.url(base)}" for i, f in enumerate(findings, 1)]
    sys.stdout.flush()
    return serve(runs, port, hints=hints)
