"""``imsim-lab train ntxent``: SeungKee Jeon's candidate descriptor (:mod:`imsim_lab.train.ntxent`) as a command.

Defaults: the published network (ViT-L/16 at 384 px, grayscale, class token + linear 256 without bias),
NT-Xent with τ 0.1, Adam lr 1e-5 constant, weight decay 1e-6, batches of one 56-image hard-negative group;
``--profile cpu`` is a 2-block ViT-Tiny at 64 px, 128-d. The groups come from the training descriptors of a
finished descriptor run (``--groups RUN``), from the untrained network itself (``--groups init``, the
default) or are random (``--groups random``). The summary ends with the ``imsim-lab run ntxent ...``
command that uses the weights (as a descriptor, or as ``-p candidates.method=ntxent`` of ``pairvit``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import ImsimError
from .base import PublishedStep, Recipe, RunStart, TrainSession, add_trainer_arguments, training_summary

DESCRIPTION = (
    "SeungKee Jeon's candidate descriptor (matching track 2nd, arXiv 2111.09113): a timm ViT on grayscale input, "
    "its class token projected to 256-d without bias and L2-normalised, trained with NT-Xent (tau 0.1) on batches "
    "of hard-negative groups: each training image with its nearest neighbours in a feature space, every image "
    "giving a clean and an edited view (transformation families); no query is ever used. Writes "
    "OUT/checkpoint.pt (resume), OUT/weights.pt, OUT/history.json and OUT/train_config.json.")

NOTES = ("--batch-size counts groups per process; each gives 2 x --group-size views.\n"
         "on a CPU: --profile cpu (ViT-Tiny, 2 blocks, 64 px) trains from random weights in minutes.")

PROFILES = ("full", "cpu")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bench", required=True, help="benchmark folder (its training/ images are used)")
    p.add_argument("--out", required=True, help="training run folder (checkpoint.pt, weights.pt, history.json)")
    p.add_argument("--profile", default="full", help="full (ViT-L/16 at 384 px, default) or cpu (tiny ViT, 64 px)")
    p.add_argument("--backbone", default=None, help="timm ViT (default: the profile's)")
    p.add_argument("--size", type=int, default=None, help="input side in pixels (default: the profile's)")
    p.add_argument("--dim", type=int, default=None, help="descriptor size (default: the profile's)")
    p.add_argument("--color", action="store_true", help="colour input (default grayscale, as published)")
    p.add_argument("--pretrained", action="store_true", help="timm hub weights for the backbone (internet)")
    p.add_argument("--groups", default="init", metavar="RUN|init|random",
                   help="hard-negative groups: a descriptor run folder whose features/training.npy gives the "
                        "neighbours, init (the untrained network's, default) or random")
    p.add_argument("--group-size", type=int, default=56, help="images per group (published batch: 56 per GPU)")
    p.add_argument("--tau", type=float, default=0.1, help="NT-Xent temperature (0.1)")
    p.add_argument("--init", default=None, metavar="WEIGHTS", help="weights.pt of an earlier run")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1, help="groups per process (default 1: one group a batch)")
    p.add_argument("--lr", type=float, default=1e-5)
    add_trainer_arguments(p)


def schedule() -> list[PublishedStep]:
    return [PublishedStep("model 1: ViT-L/16 at 384 px, grayscale, 256-d, NT-Xent tau 0.1, Adam lr 1e-5, batches of 56 "
                          "per GPU from hard-negative groups, 8 GPUs, two chained runs (15.5k + 12.5k steps)",
                          ("torchrun", "--standalone", "--nproc_per_node", "8", "-m", "imsim_lab", "train", "ntxent",
                           "--bench", "DISC21", "--out", "runs/ntxent", "--pretrained", "--groups", "runs/desc",
                           "--max-steps", "15500")),
            PublishedStep("the second run starts from the first's weights (--init runs/ntxent/weights.pt "
                          "--max-steps 12500); model 2 of the paper is DINO ViT-B/8 without training")]


def model_args(args: argparse.Namespace) -> dict:
    """The ``ntxent_vit`` overrides of the parsed options."""
    from ..ntxent import CPU_MODEL

    if args.profile not in PROFILES:
        raise ImsimError(f"--profile {args.profile!r}: unknown; profiles: {', '.join(PROFILES)}")
    out = dict(CPU_MODEL) if args.profile == "cpu" else {}
    if args.backbone:
        out["backbone"] = args.backbone
    if args.size:
        if args.size < 16:
            raise ImsimError(f"--size {args.size}: at least 16 pixels (one ViT patch)")
        out["input_size"] = args.size
        out["timm_kwargs"] = {**out.get("timm_kwargs", {}), "img_size": args.size}  # the ViT's position table
    if args.dim:
        out["dim"] = args.dim
    if args.color:
        out["grayscale"] = False
    return out


def _groups(spec: str, bench, size: int):
    if spec in ("init", "random"):
        return spec, spec
    from .pairvit import _groups as run_groups

    return run_groups(spec, bench, size)


def run(args: argparse.Namespace, session: TrainSession) -> dict:
    """Train the NT-Xent descriptor as ``args`` say; returns the summary (:func:`training_summary`)."""
    from ...data.benchmark import load_benchmark
    from ...features.models import get_config
    from ..ntxent import NTXentConfig, train_ntxent
    from ..trainer import TrainConfig
    from .ssquare import evaluate_command

    margs = model_args(args)
    if args.group_size < 2:
        raise ImsimError("--group-size must be >= 2 (an image and at least one hard negative)")
    if args.max_steps is not None and args.max_steps < 1:
        raise ImsimError("--max-steps must be >= 1")
    if args.init:  # weights of another shape are refused before any training
        from ...features.models.ntxent import check_layout
        from ..initcheck import check_fits

        check_fits(args.init, get_config("ntxent_vit", **margs))
        check_layout(get_config("ntxent_vit", **margs, weights_path=str(args.init)))
    try:
        tc = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                         optimizer="adam", weight_decay=1e-6, amp=args.amp, num_workers=args.workers,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device)
        cfg = NTXentConfig(model_args=margs, group_size=args.group_size, tau=args.tau, pretrained=args.pretrained,
                           train=tc)
    except ValueError as e:
        raise ImsimError(str(e)) from None
    bench = load_benchmark(args.bench)
    if len(bench.training_ids) < 2:
        raise ImsimError(f"{Path(bench.root) / 'training'}: fewer than 2 training images; ntxent trains on them")
    size = min(args.group_size, len(bench.training_ids))
    groups, source = _groups(args.groups, bench, size)
    mc = get_config("ntxent_vit", **margs)
    per_step = args.batch_size * size * session.world
    out = Path(args.out)
    on_step = session.start(RunStart(f"NT-Xent descriptor {mc.extra['backbone']} at {mc.input_size[0]} px "
                                     f"({'grayscale' if mc.grayscale else 'colour'}, {mc.dim}-d), "
                                     f"{len(bench.training_ids):,} training images, groups of {size} ({source}) "
                                     f"-> {out}", per_step, args.epochs, args.max_steps))
    res = train_ntxent(bench, out, cfg, groups=groups, init=args.init, on_step=on_step, groups_source=source)
    evaluate = None
    if res.weights is not None:
        evaluate = evaluate_command("ntxent", args.bench, out, margs, res.weights)
    return training_summary("ntxent", res, session.world, per_step, evaluate)


RECIPE = Recipe(
    name="ntxent",
    help="SeungKee Jeon's candidate descriptor: grayscale ViT + linear 256, NT-Xent (tau 0.1) on hard-negative "
         "groups (matching track 2nd, arXiv 2111.09113)",
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
    schedule=schedule,
    notes=NOTES,
)
