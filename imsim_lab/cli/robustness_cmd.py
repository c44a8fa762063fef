"""``imsim-lab robustness RUN_OR_METHOD --bench DIR`` (graded transformations) and
``imsim-lab attack RUN_OR_METHOD --bench DIR`` (FGSM / PGD, white-box and transfer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ImsimError


def _floats(text: str) -> list[float]:
    try:
        return [float(eval_fraction(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ImsimError(f"expected comma-separated numbers, got {text!r}") from None


def eval_fraction(v: str) -> float:
    """``0.5`` or ``8/255``."""
    v = v.strip()
    if "/" in v:
        a, b = v.split("/", 1)
        return float(a) / float(b)
    return float(v)


def _common(p) -> None:
    p.add_argument("target", metavar="RUN_OR_METHOD",
                   help="a finished run folder, or a method name (then --out is the run folder, made first)")
    p.add_argument("--bench", default=None, help="benchmark folder (default: the run's)")
    p.add_argument("--out", default=None, help="run folder when RUN_OR_METHOD is a method name")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter or model.<setting> when running a method (as `imsim-lab run`)")
    p.add_argument("--sample", type=int, default=None, help="size of the seeded sample (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda (default: CUDA if present)")
    p.add_argument("--backend", default="auto", choices=["auto", "faiss", "faiss-gpu", "torch", "numpy"])
    p.add_argument("--force", action="store_true", help="drop caches made with other settings")
    p.add_argument("--json", action="store_true", help="print the table as JSON records")


def register(sub) -> None:
    p = sub.add_parser("robustness", help="AP versus strength of each transformation family (graded suite)",
                       description="Edit a seeded sample of the matched references with each family at each "
                                   "strength, keep the distractor queries, evaluate against the full reference "
                                   "set; writes RUN/robustness/graded.parquet and graded.json (cached, resumable).")
    _common(p)
    p.add_argument("--families", default=None, help="comma-separated family names (default: the hard ones "
                   "named by the organisers plus a few common edits); 'all' for every family")
    p.add_argument("--strengths", default="0,0.25,0.5,0.75,1", help="comma-separated strengths in [0, 1]")
    p.add_argument("--jpeg-quality", type=int, default=90, help="quality of the edited queries (0: no JPEG)")
    p.add_argument("--workers", type=int, default=2, help="processes editing images")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=robustness)

    a = sub.add_parser("attack", help="adversarial queries (FGSM, PGD) on a surrogate run, white-box and transfer",
                       description="Attack a seeded sample of the matched queries on the run's torch model at "
                                   "each epsilon and evaluate it (white-box) and every --transfer run; writes "
                                   "RUN/robustness/attacks/NAME/curves.parquet, images and examples.")
    _common(a)
    a.add_argument("--method", dest="attack", default="pgd", choices=["fgsm", "pgd"])
    a.add_argument("--norm", default="linf", choices=["linf", "l2"])
    a.add_argument("--eps", default=None, help="comma-separated budgets; L-inf accepts 8/255 (default "
                   "0,2/255,4/255,8/255,16/255), L2 is the norm for a 224x224 image (default 0,0.5,1,2,4)")
    a.add_argument("--steps", type=int, default=10, help="PGD iterations")
    a.add_argument("--step-size", type=float, default=0.25, help="PGD step in units of eps")
    a.add_argument("--no-random-start", action="store_true")
    a.add_argument("--targeted", action="store_true", help="pull each query towards another (seeded) reference")
    a.add_argument("--jpeg", type=int, default=None, metavar="Q", help="re-encode the attacked query as JPEG Q")
    a.add_argument("--transfer", nargs="*", default=[], metavar="RUN", help="run folders to evaluate too")
    a.add_argument("--examples", type=int, default=4, help="queries whose amplified perturbation is saved")
    a.set_defaults(func=attack_cmd)


def _bars():
    from tqdm import tqdm

    def make(what: str, total: int):
        bar = tqdm(total=total, desc=what, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= bar.total:
                bar.close()

        return update

    return make


def _resolve_run(args) -> Path:
    """The run folder: given, or made now by running the method into --out."""
    target = Path(args.target)
    if (target / "config.json").is_file():
        return target
    from ..methods import METHODS

    if args.target not in METHODS:
        raise ImsimError(f"{args.target!r} is neither a run folder nor a method (see `imsim-lab methods`)")
    if not args.out or not args.bench:
        raise ImsimError(f"running the method {args.target!r} first needs --bench and --out")
    from ..runner import RunOptions, run_method
    from .run_cmd import parse_params

    try:
        res = run_method(args.target, args.bench, args.out, parse_params(args.param),
                         RunOptions(device=args.device, backend=args.backend), progress=_bars())
    except KeyError as e:
        raise ImsimError(str(e.args[0]) if e.args else str(e)) from None
    return res.out


def _bench(args):
    if not args.bench:
        return None
    from ..data.benchmark import load_benchmark

    return load_benchmark(args.bench, check_hashes=False)


def _sample(args, default: int):
    return default if args.sample is None else (None if args.sample == 0 else args.sample)


def robustness(args) -> int:
    from ..data.augment import FAMILIES
    from ..analysis.robustness import DEFAULT_FAMILIES, GradedConfig, run_graded
    from ..runner import RunOptions

    run = _resolve_run(args)
    fams = DEFAULT_FAMILIES if not args.families else (
        tuple(FAMILIES.names()) if args.families == "all" else tuple(f.strip() for f in args.families.split(",")))
    cfg = GradedConfig(families=fams, strengths=tuple(_floats(args.strengths)), sample=_sample(args, 200),
                       seed=args.seed, jpeg_quality=args.jpeg_quality or None)
    table = run_graded(run, cfg, _bench(args), RunOptions(backend=args.backend), args.device, args.batch_size,
                       args.workers, args.force, progress=_bars())
    if args.json:
        print(table.to_json(orient="records"))
        return 0
    t = table[table["protocol"] == "isc2021"].pivot(index="family", columns="strength", values="micro_ap")
    print(f"graded suite of {run} (µAP, isc2021; rows: family, columns: strength)")
    print(t.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"written: {run / 'robustness' / 'graded.parquet'}")
    return 0


def attack_cmd(args) -> int:
    from ..analysis.attacks import DEFAULT_EPS_L2, DEFAULT_EPS_LINF, AttackConfig, SuiteConfig, run_attack_suite
    from ..runner import RunOptions

    run = _resolve_run(args)
    eps = _floats(args.eps) if args.eps else (DEFAULT_EPS_LINF if args.norm == "linf" else DEFAULT_EPS_L2)
    acfg = AttackConfig(args.attack, args.norm, eps=max(eps), steps=args.steps, step_size=args.step_size,
                        random_start=not args.no_random_start, targeted=args.targeted, jpeg_quality=args.jpeg,
                        seed=args.seed)
    cfg = SuiteConfig(acfg, tuple(eps), _sample(args, 100), args.seed, args.examples)
    curves = run_attack_suite(run, cfg, args.transfer, _bench(args), RunOptions(backend=args.backend), args.device,
                              args.force, progress=_bars())
    if args.json:
        print(curves.to_json(orient="records"))
        return 0
    c = curves[curves["protocol"] == "isc2021"]
    t = c.pivot_table(index=["kind", "eval_label"], columns="eps_label", values="micro_ap", sort=False)
    print(f"{acfg.name} on {run} (µAP, isc2021; columns: epsilon)")
    print(t.to_string(float_format=lambda v: f"{v:.3f}"))
    sec = json.loads((run / "robustness" / "attacks" / acfg.name / "attack.json").read_text())["seconds_per_query"]
    if sec:
        print("seconds per attacked query: " + ", ".join(f"{k} {v}" for k, v in sec.items() if v is not None))
    return 0
