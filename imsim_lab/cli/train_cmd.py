"""``imsim-lab train RECIPE --bench DIR --out DIR ...``: train a descriptor on a benchmark's training images.

The same arguments and the same code serve ``python -m imsim_lab.train RECIPE ...`` (which prints
its JSON summary by default, for scripts) and both work under ``torchrun``::

    torchrun --standalone --nproc_per_node 8 -m imsim_lab train lyakaap --bench DISC21 --out runs/v83 ...
    torchrun --standalone --nproc_per_node 8 -m imsim_lab.train lyakaap --bench DISC21 --out runs/v83 ...

Re-running a command resumes from ``OUT/checkpoint.pt``. Rank 0 draws a progress bar on stderr
when stderr is a terminal, one line per step otherwise (CI logs), and ends by naming the weights
and the ``imsim-lab run`` command that evaluates them on the benchmark.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..errors import ImsimError
from .progress import show_help

#: training recipes of ``imsim-lab train`` (name -> one-line help)
RECIPES = {
    "lyakaap": "one stage of lyakaap's contrastive training with a cross-batch memory "
               "(descriptor track 1st, arXiv 2112.04323)",
}

#: the registered method that evaluates a trained ISCNet (timm trunk + GeM p=1 + linear-BN head)
EVAL_METHOD = "iscnet"


# ------------------------------------------------------------------------------------------------
# arguments (one definition for both entry points)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a descriptor (resumable, multi-GPU with torchrun)",
                       description="Train a descriptor on the training/ images of a benchmark folder. "
                                   "Re-running a command resumes it; several GPUs: torchrun ... -m "
                                   "imsim_lab train RECIPE ... (or -m imsim_lab.train).",
                       epilog=_recipes_epilog("imsim-lab train"), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipes(p)
    p.set_defaults(func=lambda args: show_help(p))


def _recipes_epilog(prog: str) -> str:
    return f"`{prog} RECIPE --help` explains a recipe, its stages and the published schedule."


def add_recipes(parser: argparse.ArgumentParser, json_default: bool = False) -> None:
    """Add the recipe sub-commands to ``parser`` (``imsim-lab train`` or ``python -m imsim_lab.train``).

    Nothing heavy is imported here (every ``imsim-lab`` command builds this parser): the stage
    table of ``--help`` is made when help is asked for, and the values are checked when training.
    """
    rs = parser.add_subparsers(dest="recipe", metavar="RECIPE", title="recipes", parser_class=_Parser)
    p = rs.add_parser("lyakaap", help=RECIPES["lyakaap"], description=_lyakaap_description(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.lazy_epilog = stages_help
    add_lyakaap_arguments(p)
    p.set_defaults(func=run_lyakaap, json=json_default)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed when help is printed (``lazy_epilog``)."""

    lazy_epilog = None

    def format_help(self) -> str:
        if self.lazy_epilog is not None and self.epilog is None:
            self.epilog = self.lazy_epilog()
        return super().format_help()


def _lyakaap_description() -> str:
    return ("One stage of lyakaap's self-supervised recipe (METHODS.md section 1): every training image gives "
            "a moderate and a hard view with the same label; an ISCNet (timm trunk + GeM p=1 + Linear + BN "
            "+ L2, 256-d) learns with a contrastive loss over the batch and a cross-batch memory of past "
            "embeddings. Writes OUT/checkpoint.pt (resume), OUT/weights.pt, OUT/history.json and "
            "OUT/train_config.json.")


def stages_help() -> str:
    """The ``--help`` epilog of ``lyakaap``: the view stages and the published schedule."""
    from ..train.views import LYAKAAP_SCHEDULE, STAGES

    lines = ["stages (--stage; views get harder as the resolution grows):"]
    for name in STAGES.names():
        s = STAGES.get(name)
        lines.append(f"  {name}  {s.size} px: colour jitter {s.jitter:.2f}, each hard op p={s.p:.2f}, overlay "
                     f"p={s.overlay_p:.3f} (opacity >= {s.opacity_lower:.1f}, size {s.overlay_size[0]:.1f}-"
                     f"{s.overlay_size[1]:.1f}), erasing p={s.erase_p:.2f}")
    lines += ["", "published schedule (run the stages in order, each from the previous stage's weights.pt;",
              "--batch-size is per process, the global batch is batch-size x processes x accum-steps):"]
    prev = None
    for st in LYAKAAP_SCHEDULE:
        init = f"--init runs/{prev}/weights.pt" if prev else "--pretrained"
        extra = (f" --lr-schedule {st.lr_schedule}" if st.lr_schedule != "constant" else "") + \
            (f" --reference-negatives {st.reference_negatives}" if st.reference_negatives else "")
        lines.append(f"  {st.stage}: {st.epochs} epochs, lr {st.lr} {st.lr_schedule}, global batch {st.batch_size}, "
                     f"memory {st.memory_size:,}; {st.note}")
        lines.append(f"    torchrun --standalone --nproc_per_node 8 -m imsim_lab train lyakaap --bench DISC21 "
                     f"--out runs/{st.stage} --stage {st.stage} {init} --epochs {st.epochs} --lr {st.lr} "
                     f"--batch-size {max(1, st.batch_size // 8)}{extra}")
        prev = st.stage
    lines += ["  then v107: fine-tune on ground-truth (query, reference) pairs, margin 1.1, memory 1k",
              "    (imsim_lab.train.lyakaap.finetune_pairs, notebook 03; not a command yet).",
              "",
              "on a CPU: --backbone resnet18 --size 112 trains from random weights in minutes on small data;",
              "--size overrides the stage's resolution and keeps its magnitudes."]
    return "\n".join(lines)


def add_lyakaap_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the ``lyakaap`` recipe (defaults: the published v83 stage)."""
    p.add_argument("--bench", required=True, help="benchmark folder (its training/ images are used)")
    p.add_argument("--out", required=True, help="training run folder (checkpoint.pt, weights.pt, history.json)")
    p.add_argument("--stage", default="v83", help="view stage: v83 (256 px, default), v86 (384), v98 (512)")
    p.add_argument("--size", type=int, default=None, help="override the stage's resolution (pixels)")
    p.add_argument("--backbone", default=None,
                   help="timm backbone (default: the published tf_efficientnetv2_m.in21k_ft_in1k)")
    p.add_argument("--pretrained", action="store_true", help="timm hub weights for the backbone (internet)")
    p.add_argument("--init", default=None, metavar="WEIGHTS", help="weights.pt of the previous stage")
    p.add_argument("--memory-size", type=int, default=20_000, help="cross-batch memory (default 20,000)")
    p.add_argument("--neg-margin", type=float, default=1.0, help="contrastive negative margin (default 1.0)")
    p.add_argument("--reference-negatives", type=int, default=0,
                   help="reference images per sample as extra negatives (v98: 2)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=int, default=32, help="training images per process (default 32)")
    p.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-schedule", default="constant", help="constant (default), linear (v98) or cosine")
    p.add_argument("--amp", default="auto", help="auto (bf16/fp16 on CUDA, off on CPU), off, bf16 or fp16")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes per rank")
    p.add_argument("--checkpoint-every", type=int, default=200, help="optimiser steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda (default: CUDA if present)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


# ------------------------------------------------------------------------------------------------
# the implementation


def run_lyakaap(args) -> int:
    """Train one lyakaap stage as ``args`` say; rank 0 reports. Raises ImsimError on bad input."""
    from ..distributed import init_distributed

    rank, world = init_distributed()
    try:
        return _run_lyakaap(args, rank, world)
    except ImsimError:
        if rank > 0:  # every rank meets the same bad input: rank 0 says it once
            return 2
        raise
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run_lyakaap(args, rank: int, world: int) -> int:
    from ..data.benchmark import load_benchmark
    from ..train.lyakaap import PUBLISHED_BACKBONE, StageConfig, train_stage
    from ..train.trainer import CHECKPOINT, TrainConfig
    from ..train.views import STAGES

    if args.stage not in STAGES:
        raise ImsimError(f"--stage {args.stage!r}: unknown; stages: {', '.join(STAGES.names())}")
    try:
        tc = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         accum_steps=args.accum_steps, lr=args.lr, lr_schedule=args.lr_schedule, amp=args.amp,
                         num_workers=args.workers, checkpoint_every=args.checkpoint_every, seed=args.seed,
                         device=args.device)
        cfg = StageConfig(stage=args.stage, size=args.size, backbone=args.backbone or PUBLISHED_BACKBONE,
                          pretrained=args.pretrained, memory_size=args.memory_size, neg_margin=args.neg_margin,
                          reference_negatives=args.reference_negatives, train=tc)
    except ValueError as e:
        raise ImsimError(str(e)) from None
    if args.max_steps is not None and args.max_steps < 1:
        raise ImsimError("--max-steps must be >= 1")
    _check_backbone(cfg.backbone)
    bench = load_benchmark(args.bench)
    if len(bench.training_ids) == 0:
        raise ImsimError(f"{Path(bench.root) / 'training'}: no training images; lyakaap trains on the benchmark's "
                         f"training/ folder (build one with training images, e.g. `imsim-lab bench build`, or "
                         f"`imsim-lab data subset ... --training N`)")
    if cfg.reference_negatives and len(bench.reference_ids) == 0:
        raise ImsimError(f"{Path(bench.root) / 'references'}: no reference images for --reference-negatives")
    out = Path(args.out)
    size = cfg.view_stage().size
    if args.init and not (out / CHECKPOINT).is_file():  # a resume takes its weights from the checkpoint
        check_init(args.init, cfg.backbone, cfg.dim)

    per_step = args.batch_size * args.accum_steps * world
    progress = StepProgress(per_step, args.epochs, args.max_steps, tty=sys.stderr.isatty()) if rank == 0 else None
    if rank == 0:
        print(f"train lyakaap {cfg.stage} at {size} px, {cfg.backbone}, {len(bench.training_ids):,} training images, "
              f"{world} process{'es' if world > 1 else ''} -> {out}", file=sys.stderr)
    try:
        res = train_stage(bench, out, cfg, init=args.init, on_step=progress)
    except ImsimError as e:
        raise _from_worker(e) from None
    finally:
        if progress is not None:
            progress.close()
    if rank != 0:
        return 0
    done = res.steps - res.resumed_from
    step_seconds = res.history[-1]["seconds"] if done and res.history else 0.0
    summary = {"out": str(res.out), "steps": res.steps, "total_steps": res.total_steps,
               "resumed_from": res.resumed_from, "seconds": round(res.seconds, 2), "world_size": world,
               "weights": str(res.weights) if res.weights else None,
               "images_per_second": round(done * per_step / step_seconds, 2) if step_seconds else None,
               "history": str(res.out / "history.json")}
    if res.weights is not None:
        summary["evaluate"] = shlex.join(evaluate_command(args.bench, res.out, cfg.backbone, size, cfg.dim,
                                                          res.weights))
    if args.json:
        print(json.dumps(summary))
        return 0
    if done == 0:
        state = f"already finished: {res.steps} of {res.total_steps} steps, nothing redone"
    else:
        rate = f", {summary['images_per_second']:.1f} img/s" if summary["images_per_second"] else ""
        steps = f"steps {res.resumed_from + 1}-{res.steps} of {res.total_steps} (resumed)" if res.resumed_from \
            else f"{res.steps} of {res.total_steps} steps"
        state = f"{steps}, {res.seconds:.1f} s{rate}"
    print(f"training run : {res.out}  ({state})")
    print(f"weights      : {res.weights}")
    print(f"loss history : {summary['history']}")
    if "evaluate" in summary:
        print("evaluate them as a run on the benchmark:")
        print(f"  {summary['evaluate']}")
    return 0


def _from_worker(e: ImsimError) -> ImsimError:
    """An error raised in a DataLoader worker arrives wrapped in the worker's traceback: keep its
    last line, the message itself (e.g. the training image that cannot be read)."""
    text = str(e)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return e
    last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
    head, sep, rest = last.partition(": ")
    return ImsimError(rest if sep and " " not in head and head.endswith(("Error", "Exception")) else last)


def _check_backbone(name: str) -> None:
    import timm

    if not name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not timm.is_model(name):
        raise ImsimError(f"--backbone {name!r}: not a timm model (list them with timm.list_models('pattern*'))")


def check_init(path: str | Path, backbone: str, dim: int) -> None:
    """Refuse an ``--init`` file that is missing, unreadable, or whose tensors do not fit ISCNet on ``backbone``.

    Reads the file the way the trainer does (a ``state_dict``, or a checkpoint with a ``model`` entry)
    and compares names and shapes with the network built on the meta device (no memory, no weights).

    Raises:
        ImsimError: naming the file and the first tensors that do not fit.
    """
    import torch

    from ..features.models import get_config
    from ..features.models.timm_descriptor import TimmDescriptorNet
    from ..features.models.weights import state_dict_mismatch

    path = Path(path)
    if not path.is_file():
        raise ImsimError(f"{path}: --init weights file not found")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files of the legacy format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        import pickle

        why = ("not a file written by torch.save, or one holding more than tensors"
               if isinstance(e, pickle.UnpicklingError) else (str(e).strip().splitlines() or [""])[0][:160])
        raise ImsimError(f"{path}: --init is not a readable weights file ({type(e).__name__}: {why})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImsimError(f"{path}: --init holds no state_dict of tensors (expected a weights.pt of an earlier stage)")
    extra = get_config("isc_effnetv2m", backbone=backbone, dim=dim).extra
    with torch.device("meta"):
        net = TimmDescriptorNet(backbone, dim, extra["gem_p"], extra["gem_learnable"], extra["head"])
    shapes, missing, unexpected = state_dict_mismatch(state, net.state_dict())
    if shapes or missing or unexpected:
        parts = []
        if shapes:
            shown = [f"{k} {a} (model {b})" for k, a, b in shapes[:2]]
            parts.append(f"{len(shapes)} tensors of other shapes, e.g. {'; '.join(shown)}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {', '.join(missing[:2])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:2])}")
        raise ImsimError(f"{path}: --init does not fit ISCNet on {backbone} ({dim}-d): {'; '.join(parts)}; "
                         f"give the same --backbone as the stage that wrote it")


# ------------------------------------------------------------------------------------------------
# what comes next: evaluating the weights


def evaluate_command(bench: str | Path, out: str | Path, backbone: str, size: int, dim: int,
                     weights: str | Path) -> list[str]:
    """The ``imsim-lab run`` command that evaluates trained ISCNet ``weights`` on ``bench`` into ``OUT/eval``.

    The registered method :data:`EVAL_METHOD` (a timm descriptor) is given, as ``-p model.X=V``, every
    setting in which ISCNet's model config (:func:`imsim_lab.train.lyakaap.model_args`: backbone, size,
    weights and their sha256) differs from it, so the run preprocesses and builds exactly the trained net.

    Raises:
        ImsimError: the method cannot express this model (the command would evaluate something else).
    """
    from ..methods import get_method
    from ..features.models import get_config
    from ..train.lyakaap import model_args

    spec = get_method(EVAL_METHOD)
    target = get_config("isc_effnetv2m", **model_args(backbone, size, dim, weights_path=weights)).to_dict()
    base = get_config(spec.model, **spec.model_args).to_dict()
    order = ["backbone", "input_size", "dim", "gem_p", "head", "mean", "std", "interpolation", "weights_path"]
    changes = {k: v for k, v in target["extra"].items() if base["extra"].get(k) != v}
    changes.update({k: v for k, v in target.items() if k not in ("name", "paper", "extra") and base[k] != v})
    changes = dict(sorted(changes.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    got = get_config(spec.model, **{**spec.model_args, **changes}).to_dict()

    def same(d):
        return {k: v for k, v in d.items() if k not in ("name", "paper")}

    if same(got) != same(target):
        raise ImsimError(f"method {EVAL_METHOD!r} cannot reproduce the trained model's configuration")
    argv = ["imsim-lab", "run", EVAL_METHOD, "--bench", str(bench), "--out", str(Path(out) / "eval")]
    for k, v in changes.items():
        argv += ["-p", f"model.{k}={_param_text(v)}"]
    return argv


def _param_text(v) -> str:
    """A value as ``imsim-lab run -p`` reads it back (JSON when it parses, else text)."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and v[0] == v[1] and isinstance(v[0], int):
        return str(v[0])  # a square input size
    if isinstance(v, str):
        try:
            json.loads(v)
        except json.JSONDecodeError:
            return v
    return json.dumps(v, separators=(",", ":"))


# ------------------------------------------------------------------------------------------------
# progress


class StepProgress:
    """The ``on_step`` callback of the trainer: a tqdm bar on a terminal, one line per step otherwise.

    Args:
        per_step: training images per optimiser step, all processes together (for img/s).
        epochs, max_steps: as configured (the total is known from the first record's epoch fraction).
        tty: draw a bar (True) or write lines (False), both on stderr.
    """

    def __init__(self, per_step: int, epochs: int, max_steps: int | None, tty: bool):
        self.per_step, self.epochs, self.max_steps, self.tty = per_step, epochs, max_steps, tty
        self.bar = None
        self.last = None  # (step, seconds) of the previous record

    def rate(self, rec: dict) -> float:
        prev_step, prev_s = self.last if self.last else (rec["step"] - 1, 0.0)
        dt = rec["seconds"] - prev_s
        return self.per_step * (rec["step"] - prev_step) / dt if dt > 0 else float("nan")

    def total(self, rec: dict) -> int:
        per_epoch = max(1, round(rec["step"] / rec["epoch"])) if rec["epoch"] else 1
        total = self.epochs * per_epoch
        return min(total, self.max_steps) if self.max_steps else total

    def __call__(self, rec: dict) -> None:
        rate = self.rate(rec)
        self.last = (rec["step"], rec["seconds"])
        if not self.tty:
            print(f"step {rec['step']}/{self.total(rec)} epoch {rec['epoch']:.2f} loss {rec['loss']:.4f} "
                  f"lr {rec['lr']:.4g} {rate:.1f} img/s", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total(rec), initial=rec["step"] - 1, desc="train", unit="step",
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"loss {rec['loss']:.4f}, {rate:.1f} img/s, lr {rec['lr']:.3g}", refresh=False)
        self.bar.update(rec["step"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------------------------------------
# ``python -m imsim_lab.train``


def main(argv: list[str] | None = None, prog: str = "python -m imsim_lab.train") -> int:
    """``python -m imsim_lab.train RECIPE ...``: the recipes of ``imsim-lab train``, JSON summary by default."""
    from . import main as run_command

    ap = argparse.ArgumentParser(prog=prog, description="Train a descriptor (the same as `imsim-lab train`, "
                                 "printing the summary as one JSON line). Re-running a command resumes it.",
                                 epilog=_recipes_epilog(prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipes(ap, json_default=True)
    return run_command(argv, ap)
