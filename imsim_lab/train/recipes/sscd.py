"""``imsim-lab train sscd``: SSCD's self-supervised training (:mod:`imsim_lab.train.sscd`) as a command.

Options (defaults: the published recipe at the given batch size: LARS at 0.3 per 256 images, 5
warm-up epochs' worth of steps then cosine, τ 0.05, λ 30, advanced augmentations, mixup p 0.05),
the published schedule of ``--help``, the checks of the input, and the ``imsim-lab run sscd_repro
...`` command that evaluates the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import ImsimError
from .base import PublishedStep, Recipe, RunStart, TrainSession, add_trainer_arguments, training_summary
from .base import check_backbone, check_global_batch
from .ssquare import evaluate_command, training_paths

#: the published training resolution, the default of ``--size``
TRAIN_SIZE = 224

DESCRIPTION = (
    "SSCD (Pizzi et al., CVPR 2022, arXiv 2202.10261): a ResNet + GeM (p 3) + linear 512 + L2 learns from two "
    "augmented views per training image with InfoNCE (tau 0.05, every other image of the global batch a "
    "negative) plus lambda x a differential-entropy term that spreads the descriptors; mixup/CutMix items count "
    "every image they show as a positive. LARS, warm-up and cosine. Writes OUT/checkpoint.pt, OUT/weights.pt, "
    "OUT/history.json and OUT/train_config.json.")

NOTES = ("small batches: the SSCD docs advise a lower entropy weight (--lam 10) than the published 30 at 4,096;\n"
         "--lr default: 0.3 x global batch / 256; --warmup-epochs 5 as published (0 for a few steps on a CPU);\n"
         "on a CPU: --backbone resnet18 --size 64 --batch-size 32 --lam 10 trains from random weights in minutes.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the ``sscd`` recipe."""
    p.add_argument("--bench", required=True, help="benchmark folder (its training/ images are used)")
    p.add_argument("--out", required=True, help="training run folder")
    p.add_argument("--backbone", default=None, help="timm ResNet trunk (default: the published resnet50)")
    p.add_argument("--size", type=int, default=TRAIN_SIZE,
                   help=f"training crop (default {TRAIN_SIZE}); evaluation short side 288 x size / 224")
    p.add_argument("--dim", type=int, default=512, help="descriptor size (default 512)")
    p.add_argument("--aug", default="advanced", help="augmentation set: advanced (default) or strong_blur")
    p.add_argument("--tau", type=float, default=0.05, help="InfoNCE temperature (0.05)")
    p.add_argument("--lam", type=float, default=30.0, help="entropy weight (30 published; 10 for small batches)")
    p.add_argument("--mix-p", type=float, default=0.05, help="share of mixup/CutMix items (0.05; 0: no mixup)")
    p.add_argument("--pretrained", action="store_true", help="timm hub weights for the trunk (internet)")
    p.add_argument("--init", default=None, metavar="WEIGHTS", help="weights.pt of an earlier SSCD run")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--warmup-epochs", type=float, default=5.0, help="linear warm-up, in epochs (5)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=int, default=256, help="training images per process (2 views each)")
    p.add_argument("--lr", type=float, default=None, help="default 0.3 x global batch / 256")
    add_trainer_arguments(p)


def schedule(nproc: int = 32) -> list[PublishedStep]:
    """The published run (global batch 4,096 on 4 nodes x 8 GPUs, 100 epochs) as a command per node."""
    from ..sscd import PUBLISHED_BATCH, PUBLISHED_EPOCHS, published_lr

    argv = ["torchrun", "--nnodes", "4", "--nproc_per_node", "8", "-m", "imsim_lab", "train", "sscd",
            "--bench", "DISC21", "--out", "runs/sscd_mixup", "--pretrained", "--epochs", str(PUBLISHED_EPOCHS),
            "--batch-size", str(PUBLISHED_BATCH // nproc), "--lam", "30", "--mix-p", "0.05"]
    return [PublishedStep(f"sscd_disc_mixup: ResNet-50, {PUBLISHED_EPOCHS} epochs, global batch {PUBLISHED_BATCH}, "
                          f"LARS lr {published_lr(PUBLISHED_BATCH)}, 5 warm-up epochs + cosine, 224 px, "
                          f"advanced augmentations, mixup/CutMix p 0.05 (each node; add the rendezvous options)",
                          tuple(argv))]


def config(args: argparse.Namespace, world: int = 1, n_images: int | None = None):
    """The :class:`~imsim_lab.train.sscd.SSCDConfig` of the parsed options (warm-up steps from
    ``n_images``, the global batch from ``world``)."""
    from ..sscd import PUBLISHED_BACKBONE, SSCDConfig, published_lr
    from ..trainer import TrainConfig

    if args.max_steps is not None and args.max_steps < 1:
        raise ImsimError("--max-steps must be >= 1")
    if args.warmup_epochs < 0:
        raise ImsimError("--warmup-epochs must be >= 0")
    glob = args.batch_size * world
    steps_per_epoch = max(1, (n_images or glob) // glob)
    try:
        tc = TrainConfig(optimizer="lars", lr=args.lr if args.lr is not None else published_lr(glob),
                         lr_schedule="cosine", warmup_steps=int(round(args.warmup_epochs * steps_per_epoch)),
                         weight_decay=1e-6, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         amp=args.amp, num_workers=args.workers, checkpoint_every=args.checkpoint_every,
                         seed=args.seed, device=args.device)
        return SSCDConfig(backbone=args.backbone or PUBLISHED_BACKBONE, size=args.size, dim=args.dim,
                          pretrained=args.pretrained, aug=args.aug, tau=args.tau, lam=args.lam, mix_p=args.mix_p,
                          train=tc)
    except ValueError as e:
        raise ImsimError(str(e)) from None


def eval_short_side(size: int) -> int:
    """SSCD evaluates with the short side at 288 for 224-px training crops; the same ratio otherwise."""
    return int(round(size * 288 / 224))


def run(args: argparse.Namespace, session: TrainSession) -> dict:
    """Train SSCD as ``args`` say; returns the summary (:func:`training_summary`)."""
    from ...features.models import get_config
    from ..sscd import train_sscd

    config(args)  # refuse bad options before reading the benchmark
    bench, paths = training_paths(args.bench, "sscd")
    cfg = config(args, session.world, len(paths))
    check_backbone(cfg.backbone)
    check_global_batch(bench.root, len(paths), args.batch_size, session.world)
    glob = args.batch_size * session.world
    out = Path(args.out)
    if args.init and not (out / "checkpoint.pt").is_file():
        from ..initcheck import check_fits

        check_fits(args.init, get_config("sscd_repro", backbone=cfg.backbone, dim=cfg.dim))
    on_step = session.start(RunStart(f"SSCD ({cfg.aug}, lambda {cfg.lam}, mixup p {cfg.mix_p}), {cfg.backbone} at "
                                     f"{cfg.size} px, {len(paths):,} training images, {session.world} process(es) "
                                     f"-> {out}", glob, args.epochs, args.max_steps))
    res = train_sscd(paths, out, cfg, init=args.init, on_step=on_step, run_info={"benchmark": str(bench.root)})
    evaluate = None
    if res.weights is not None and session.rank == 0:
        evaluate = evaluate_command("sscd_repro", args.bench, out, {"backbone": cfg.backbone, "input_size": cfg.size,
                                                                    "short_side": eval_short_side(cfg.size),
                                                                    "dim": cfg.dim}, res.weights)
    return training_summary("sscd", res, session.world, glob, evaluate)


RECIPE = Recipe(
    name="sscd",
    help="SSCD's InfoNCE + entropy self-supervised training with mixup positives (CVPR 2022, arXiv 2202.10261)",
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
    schedule=schedule,
    notes=NOTES,
)
