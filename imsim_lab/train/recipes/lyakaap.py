"""``imsim-lab train lyakaap``: one stage of lyakaap's recipe (:mod:`imsim_lab.train.lyakaap`) as a command.

Its options (defaults: the published v83 stage), the stage table and the published schedule of
``--help``, the checks of its input (benchmark, ``--stage``, ``--backbone``, ``--init``), and the
``imsim-lab run iscnet ...`` command that evaluates the trained weights. The training code is
imported when a run starts, not when the parser is built.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...errors import ImsimError
from .base import (PublishedStep, Recipe, RunStart, TrainSession, add_trainer_arguments, check_backbone,
                   training_summary)

#: the registered method that evaluates a trained ISCNet (timm trunk + GeM p=1 + linear-BN head)
EVAL_METHOD = "iscnet"

DESCRIPTION = (
    "One stage of lyakaap's self-supervised recipe (arXiv 2112.04323): every training image gives a moderate "
    "and a hard view with the same label; an ISCNet (timm trunk + GeM p=1 + Linear + BN + L2, 256-d) learns "
    "with a contrastive loss over the batch and a cross-batch memory of past embeddings. Writes "
    "OUT/checkpoint.pt (resume), OUT/weights.pt, OUT/history.json and OUT/train_config.json.")

NOTES = ("--batch-size is per process: the global batch is batch-size x processes x accum-steps.\n"
         "on a CPU: --backbone resnet18 --size 112 trains from random weights in minutes on small data;\n"
         "--size overrides the stage's resolution and keeps its magnitudes.")


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    add_trainer_arguments(p)


def details() -> str:
    """The view stages (``--stage``) and their magnitudes, for ``--help``."""
    from ..views import STAGES

    lines = ["stages (--stage; views get harder as the resolution grows):"]
    for name in STAGES.names():
        s = STAGES.get(name)
        lines.append(f"  {name}  {s.size} px: colour jitter {s.jitter:.2f}, each hard op p={s.p:.2f}, overlay "
                     f"p={s.overlay_p:.3f} (opacity >= {s.opacity_lower:.1f}, size {s.overlay_size[0]:.1f}-"
                     f"{s.overlay_size[1]:.1f}), erasing p={s.erase_p:.2f}")
    return "\n".join(lines)


def schedule(nproc: int = 8) -> list[PublishedStep]:
    """The published schedule (:data:`~imsim_lab.train.views.LYAKAAP_SCHEDULE`) as ``torchrun`` commands on
    ``nproc`` GPUs, each stage from the previous stage's ``weights.pt``, then v107 (not a command yet)."""
    from ..views import LYAKAAP_SCHEDULE

    steps, prev = [], None
    for st in LYAKAAP_SCHEDULE:
        argv = ["torchrun", "--standalone", "--nproc_per_node", str(nproc), "-m", "imsim_lab", "train", "lyakaap",
                "--bench", "DISC21", "--out", f"runs/{st.stage}", "--stage", st.stage,
                *(["--init", f"runs/{prev}/weights.pt"] if prev else ["--pretrained"]),
                "--epochs", str(st.epochs), "--lr", str(st.lr), "--batch-size", str(max(1, st.batch_size // nproc))]
        if st.lr_schedule != "constant":
            argv += ["--lr-schedule", st.lr_schedule]
        if st.reference_negatives:
            argv += ["--reference-negatives", str(st.reference_negatives)]
        steps.append(PublishedStep(f"{st.stage}: {st.epochs} epochs, lr {st.lr} {st.lr_schedule}, global batch "
                                   f"{st.batch_size}, memory {st.memory_size:,}; {st.note}", tuple(argv)))
        prev = st.stage
    steps.append(PublishedStep("then v107: fine-tune on ground-truth (query, reference) pairs, margin 1.1, memory 1k "
                               "(imsim_lab.train.lyakaap.finetune_pairs, notebook 03; not a command yet)"))
    return steps


# ------------------------------------------------------------------------------------------------
# configuration and run


def stage_config(args: argparse.Namespace):
    """The :class:`~imsim_lab.train.lyakaap.StageConfig` of the parsed options.

    Raises:
        ImsimError: an unknown stage, a value the configuration refuses, ``--max-steps`` below 1.
    """
    from ..lyakaap import PUBLISHED_BACKBONE, StageConfig
    from ..trainer import TrainConfig
    from ..views import STAGES

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
    return cfg


def run(args: argparse.Namespace, session: TrainSession) -> dict:
    """Train one lyakaap stage as ``args`` say; returns the summary (:func:`training_summary`).

    Raises:
        ImsimError: bad input, named on one line (benchmark, stage, backbone, ``--init`` file).
    """
    from ...data.benchmark import load_benchmark
    from ..lyakaap import train_stage
    from ..trainer import CHECKPOINT

    cfg = stage_config(args)
    check_backbone(cfg.backbone)
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

    per_step = args.batch_size * args.accum_steps * session.world
    plural = "es" if session.world > 1 else ""
    on_step = session.start(RunStart(f"{cfg.stage} at {size} px, {cfg.backbone}, {len(bench.training_ids):,} "
                                     f"training images, {session.world} process{plural} -> {out}",
                                     per_step, args.epochs, args.max_steps))
    res = train_stage(bench, out, cfg, init=args.init, on_step=on_step)
    evaluate = None
    if res.weights is not None and session.rank == 0:  # the others would hash the same weights again
        evaluate = evaluate_command(args.bench, res.out, cfg.backbone, size, cfg.dim, res.weights)
    return training_summary("lyakaap", res, session.world, per_step, evaluate)



def check_init(path: str | Path, backbone: str, dim: int) -> None:
    """Refuse an ``--init`` file that is missing, unreadable, or whose tensors do not fit ISCNet on ``backbone``.

    Reads the file the way the trainer does (a ``state_dict``, or a checkpoint with a ``model`` entry)
    and compares names and shapes with the network built on the meta device (no memory, no weights).

    Raises:
        ImsimError: naming the file and the first tensors that do not fit.
    """
    import torch

    from ...features.models import get_config
    from ...features.models.timm_descriptor import TimmDescriptorNet
    from ...features.models.weights import state_dict_mismatch
    from ..initcheck import read_state

    path = Path(path)
    state = read_state(path, "--init", "expected a weights.pt of an earlier stage")
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
    from ...features.models import get_config
    from ...methods import get_method
    from ..lyakaap import model_args

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


RECIPE = Recipe(
    name="lyakaap",
    help="one stage of lyakaap's contrastive training with a cross-batch memory (descriptor track 1st, "
         "arXiv 2112.04323)",
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
    details=details,
    schedule=schedule,
    notes=NOTES,
)
