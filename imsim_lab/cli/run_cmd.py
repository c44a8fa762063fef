"""``imsim-lab run METHOD --bench DIR --out RUNDIR`` and ``imsim-lab methods``."""

from __future__ import annotations

import json
import sys

from ..errors import ImsimError


def register(sub) -> None:
    p = sub.add_parser("run", help="run a method (descriptor or matching track) on a benchmark and write a run folder",
                       description="Descriptor methods: extract descriptors (resumable), post-process, search. "
                                   "Matching methods: take the candidates of a descriptor run, rescore them with "
                                   "the matcher. Both: evaluate under both protocols; write config.json, "
                                   "predictions.csv, metrics.json, per_query.parquet and timings.json (descriptor "
                                   "runs add features/ and descriptors.h5, matching runs candidates.parquet).")
    p.add_argument("method", help="a method name (see `imsim-lab methods`)")
    p.add_argument("--bench", required=True, help="benchmark folder")
    p.add_argument("--out", required=True, help="run folder (re-running reuses what is done)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter (e.g. beta=0.3) or model setting (model.weights_path=w.pth); "
                        "VALUE is read as JSON when it parses, else as text")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.add_argument("--backend", default="auto", choices=["auto", "faiss", "faiss-gpu", "torch", "numpy"],
                   help="search backend")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--streams", type=int, default=None,
                   help="for models that run best as single-threaded calls on CPU (SSCD ONNX): threads that "
                        "each read and embed whole batches (default: one per core; 1: the DataLoader path)")
    p.add_argument("--shard-size", type=int, default=1024, help="images per resumable shard")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="feature storage")
    p.add_argument("--feature-cache", default=None, metavar="DIR",
                   help="share descriptors between runs of the same model on the same benchmark")
    p.add_argument("--candidates", default=None, metavar="RUNDIR",
                   help="matching methods: a finished run folder of the descriptor method named by the method's "
                        "candidates.method to take the candidates from (default: run it into OUT/candidates)")
    p.add_argument("--force", action="store_true",
                   help="redo post-processing, rescoring and evaluation; retry images that could not be read")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=run)

    m = sub.add_parser("methods", help="list the registered methods and their track")
    m.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'sscd*'")
    m.add_argument("--track", choices=["descriptor", "matching"], default=None, help="only the methods of one track")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=list_cmd)


def parse_params(items: list[str]) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise ImsimError(f"--param {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _bars():
    from tqdm import tqdm

    bars = []

    def make(stage: str, total: int):
        # a split of the benchmark is extracted (images); a matcher names its own stages (pairs...)
        split = stage in ("query", "reference", "training")
        bar = tqdm(total=total, desc=f"extract {stage}" if split else stage,
                   unit="img" if split or stage.startswith("local features") else "pair", file=sys.stderr,
                   dynamic_ncols=True)
        bars.append(bar)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= bar.total:
                bar.close()

        return update

    return make, bars


def run(args) -> int:
    from ..features import ExtractConfig
    from ..methods import METHODS
    from ..runner import RunOptions, run_method

    if args.method not in METHODS:
        raise ImsimError(f"unknown method {args.method!r}; see `imsim-lab methods` "
                         f"(known: {', '.join(METHODS.names())})")
    try:
        extract = ExtractConfig(args.batch_size, args.workers, args.shard_size, args.dtype, streams=args.streams)
    except ValueError as e:
        raise ImsimError(str(e)) from None
    check_device(args.device)
    opts = RunOptions(device=args.device, backend=args.backend, extract=extract, force=args.force,
                      feature_cache=args.feature_cache, candidates=args.candidates)
    make, bars = _bars()
    try:
        res = run_method(args.method, args.bench, args.out, parse_params(args.param), opts, progress=make)
    except KeyError as e:
        raise ImsimError(str(e.args[0]) if e.args else str(e)) from None
    except (TypeError, ValueError) as e:
        # a setting a model or matcher does not take, or a value it refuses (-p model.nosuch=1)
        raise ImsimError(f"{args.method}: {e}") from None
    finally:
        for b in bars:
            b.close()
    if args.json:
        print(json.dumps({"out": str(res.out), "reused": res.reused, **res.metrics}))
        return 0
    from .eval_cmd import format_metrics

    print(f"run folder        : {res.out}{'  (already done, reused)' if res.reused else ''}")
    failed = res.config.get("failed_images") or {}
    if failed:
        print(f"unreadable images : {', '.join(f'{k} {v}' for k, v in failed.items())} (skipped, listed "
              f"in features/*_failed.json)")
    if res.config.get("track") == "matching":
        c = res.config.get("candidates") or {}
        rep = res.config.get("matcher_report") or {}
        print(f"candidates        : {c.get('pairs')} pairs from {c.get('method')} (k {c.get('k')}, budget "
              f"{c.get('budget')}), run {c.get('run')}")
        skipped = {k: v for k, v in rep.items() if k.startswith("images_without") and v}
        if skipped:
            print("no keypoints      : " + ", ".join(f"{k[len('images_without_keypoints_'):] or k} {v}"
                                                   for k, v in skipped.items()) + " (scored as no match)")
    from ..eval.protocols import protocol_names

    for proto in protocol_names():
        print(f"--- {proto}")
        print(format_metrics(res.metrics[proto]))
    if res.timings:
        print("--- seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in res.timings.items()))
    return 0


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, before any work (one line, exit 2)."""
    if device in (None, "auto", "cpu"):
        return
    kind = str(device).split(":", 1)[0]
    if kind != "cuda":
        raise ImsimError(f"--device {device!r}: use cpu, cuda or cuda:N (or leave it out: CUDA when present)")
    from ..search import torch_cuda

    n = 0
    if torch_cuda():
        import torch

        n = torch.cuda.device_count()
    if n == 0:
        raise ImsimError(f"--device {device!r}: this machine has no CUDA GPU (use --device cpu or leave it out)")
    idx = str(device).split(":", 1)[1] if ":" in str(device) else "0"
    if not idx.isdigit() or int(idx) >= n:
        raise ImsimError(f"--device {device!r}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")


def list_cmd(args) -> int:
    from ..methods import METHODS, list_methods

    names = list_methods(args.pattern, track=args.track)
    rows = [METHODS.get(n) for n in names]
    if args.json:
        print(json.dumps([{"name": s.name, "track": s.track, "model": s.model, "post": s.post, "matcher": s.matcher,
                           "params": s.params, "needs_training": s.needs_training, "description": s.description,
                           "paper": s.paper} for s in rows], indent=1))
        return 0
    if not rows:
        print(f"no method matches {args.pattern!r}" + (f" on the {args.track} track" if args.track else ""))
        return 1
    w = max(len(n) for n in names)
    for s in rows:
        params = ", ".join(f"{k}={v}" for k, v in s.params.items())
        print(f"{s.name:<{w}}  {s.track:<10}  {s.description}" + (f"  [{params}]" if params else ""))
    return 0
