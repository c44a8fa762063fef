"""``imsim-lab train pairvit``: SeungKee Jeon's pair classifier (:mod:`imsim_lab.train.pairvit`) as a command.

Defaults: the published classifier (ViT-L/16, halves of 224 x 112, grayscale, Adam lr 1e-5 constant, weight
decay 1e-6); ``--profile cpu`` is a 2-block ViT-Tiny on 64 x 32 halves. The hard-negative groups come from
the training descriptors of a finished descriptor run (``--groups RUN``: its ``features/training.npy``), or
are random. The summary ends with the ``imsim-lab run pairvit ...`` command that uses the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import ImsimError
from .base import PublishedStep, Recipe, RunStart, TrainSession, add_trainer_arguments, training_summary

DESCRIPTION = (
    "SeungKee Jeon's pair classifier (matching track 2nd, arXiv 2111.09113): a timm ViT looks at [reference | query], "
    "each resized to 224x112 (grayscale by default), and gives one logit, trained with binary cross-entropy. "
    "Every training image is paired with the augmented views (transformation families) of itself (label 1) and "
    "of its hard-negative group (label 0); no query is ever used. Writes OUT/checkpoint.pt (resume), "
    "OUT/weights.pt, OUT/history.json and OUT/train_config.json.")

NOTES = ("--batch-size counts training images per process; each gives --group-size pairs.\n"
         "on a CPU: --profile cpu (ViT-Tiny, 2 blocks, 64x32 halves) trains from random weights in minutes; from\n"
         "random weights it learns on random groups first (no --groups), then on hard ones (--groups RUN --init\n"
         "OUT/weights.pt): on hard groups alone a tiny ViT learned only the label prior (notebook 07).")

PROFILES = ("full", "cpu")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bench", required=True, help="benchmark folder (its training/ images are used)")
    p.add_argument("--out", required=True, help="training run folder (checkpoint.pt, weights.pt, history.json)")
    p.add_argument("--profile", default="full", help="full (ViT-L/16, 224x112, default) or cpu (tiny ViT, 64x32)")
    p.add_argument("--backbone", default=None, help="timm ViT (default: the profile's)")
    p.add_argument("--height", type=int, default=None, help="height of each half (default: the profile's)")
    p.add_argument("--width", type=int, default=None, help="width of each half (default: the profile's)")
    p.add_argument("--patch-size", type=int, default=None, help="ViT patch size (default: the profile's)")
    p.add_argument("--color", action="store_true", help="colour halves (default grayscale, as published)")
    p.add_argument("--pretrained", action="store_true", help="timm hub weights for the backbone (internet)")
    p.add_argument("--groups", default=None, metavar="RUN",
                   help="a descriptor run folder whose features/training.npy gives the hard-negative groups "
                        "(default: random groups)")
    p.add_argument("--group-size", type=int, default=8, help="pairs per training image: itself + negatives")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="the last N training images are not trained on (held-out pairs measure the classifier)")
    p.add_argument("--init", default=None, metavar="WEIGHTS", help="weights.pt of an earlier run")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=3, help="training images per process (default 3: 24 pairs)")
    p.add_argument("--accum-steps", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    add_trainer_arguments(p)


def schedule() -> list[PublishedStep]:
    return [PublishedStep("model 0: ViT-L/16 at 224x(112+112) grayscale, Adam lr 1e-5, 24 pairs x 8 GPUs, three "
                          "chained runs (50.5k + 18.5k + 30k steps), each from the previous weights; runs/desc: the "
                          "trained NT-Xent descriptor over the training images (`imsim-lab run ntxent+training -p "
                          "model.weights_path=runs/ntxent/weights.pt`), its neighbours are the hard-negative groups",
                          ("torchrun", "--standalone", "--nproc_per_node", "8", "-m", "imsim_lab", "train", "pairvit",
                           "--bench", "DISC21", "--out", "runs/pairvit0", "--pretrained", "--groups", "runs/desc",
                           "--max-steps", "50500")),
            PublishedStep("model 1: the same in colour (--color); model 2: more chained runs; the matcher averages "
                          "the three (-p weights_path=A,B,C)")]


def model_config(args: argparse.Namespace):
    from ..pairvit import CPU_CONFIG, PairViTConfig

    if args.profile not in PROFILES:
        raise ImsimError(f"--profile {args.profile!r}: unknown; profiles: {', '.join(PROFILES)}")
    base = CPU_CONFIG if args.profile == "cpu" else PairViTConfig()
    try:
        return PairViTConfig(args.backbone or base.backbone, args.height or base.height, args.width or base.width,
                             not args.color, base.depth, base.embed_dim, base.num_heads, pretrained=args.pretrained,
                             patch_size=args.patch_size or base.patch_size)
    except ImsimError:
        raise
    except ValueError as e:
        raise ImsimError(str(e)) from None


def _groups(run: str | None, bench, size: int, n: int | None = None):
    import numpy as np

    from ..pairvit import hard_negative_groups

    if run is None:
        return None, "random"
    feats = Path(run) / "features"
    x, ids = feats / "training.npy", feats / "training_ids.npy"
    if not x.is_file() or not ids.is_file():
        raise ImsimError(f"{feats}: no training.npy / training_ids.npy: --groups needs a descriptor run that "
                         f"extracted the training images (a method with needs_training, e.g. `imsim-lab run "
                         f"ntxent+training -p model.weights_path=NTXENT/weights.pt`)")
    xt, tid = np.load(x), np.load(ids).astype(str)
    want = np.asarray(bench.training_ids).astype(str)
    if len(tid) != len(want) or (np.sort(tid) != np.sort(want)).any():
        raise ImsimError(f"{ids}: the run's training images are not this benchmark's ({len(tid)} vs {len(want)})")
    xt = xt[np.argsort(tid)][np.argsort(np.argsort(want))].astype(np.float32)
    xt /= np.maximum(np.linalg.norm(xt, axis=1, keepdims=True), 1e-12)
    xt = xt[:n] if n is not None else xt  # the trained images only (the held-out ones are the last)
    return hard_negative_groups(xt, min(size, len(xt))), str(run)


def run(args: argparse.Namespace, session: TrainSession) -> dict:
    """Train the pair classifier as ``args`` say; returns the summary (:func:`training_summary`)."""
    from ...data.benchmark import load_benchmark
    from ..pairvit import PairTrainConfig, train_pairvit
    from ..trainer import TrainConfig

    mc = model_config(args)
    if args.group_size < 2:
        raise ImsimError("--group-size must be >= 2 (itself and at least one negative)")
    if args.max_steps is not None and args.max_steps < 1:
        raise ImsimError("--max-steps must be >= 1")
    if args.init:  # weights of another layout or shape are refused before any training
        import torch

        from ..pairvit import PairViT, _read_state, check_state

        with torch.device("meta"):
            check_state(_read_state(Path(args.init)), PairViT(mc), Path(args.init))
    try:
        tc = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         accum_steps=args.accum_steps, lr=args.lr, optimizer="adam", weight_decay=1e-6,
                         amp=args.amp, num_workers=args.workers, checkpoint_every=args.checkpoint_every,
                         seed=args.seed, device=args.device)
    except ValueError as e:
        raise ImsimError(str(e)) from None
    bench = load_benchmark(args.bench)
    if len(bench.training_ids) < 2:
        raise ImsimError(f"{Path(bench.root) / 'training'}: fewer than 2 training images; pairvit trains on them")
    from ..pairvit import held_out_split

    try:
        n_train = len(held_out_split(len(bench.training_ids), args.holdout)[0])
    except ImsimError as e:
        raise ImsimError(f"{Path(bench.root) / 'training'}: {e}") from None
    groups, source = _groups(args.groups, bench, args.group_size, n_train)
    cfg = PairTrainConfig(model=mc, group_size=min(args.group_size, n_train), train=tc)
    per_step = args.batch_size * args.accum_steps * session.world
    out = Path(args.out)
    on_step = session.start(RunStart(f"pair classifier {mc.backbone} on {mc.height}x{mc.width} halves "
                                     f"({'grayscale' if mc.gray else 'colour'}), {len(bench.training_ids):,} training "
                                     f"images, groups of {cfg.group_size} ({source}) -> {out}",
                                     per_step, args.epochs, args.max_steps))
    res = train_pairvit(bench, out, cfg, groups=groups, init=args.init, on_step=on_step, groups_source=source,
                        holdout=args.holdout)
    evaluate = None
    if res.weights is not None:
        evaluate = ["imsim-lab", "run", "pairvit", "--bench", str(args.bench), "--out", str(out / "eval"),
                    "-p", f"weights_path={res.weights}", "-p", f"backbone={mc.backbone}",
                    "-p", f"height={mc.height}", "-p", f"width={mc.width}", "-p", f"gray={str(mc.gray).lower()}"]
        for k in ("depth", "embed_dim", "num_heads", "patch_size"):
            if getattr(mc, k) is not None:
                evaluate += ["-p", f"{k}={getattr(mc, k)}"]
    return training_summary("pairvit", res, session.world, per_step, evaluate)


RECIPE = Recipe(
    name="pairvit",
    help="SeungKee Jeon's [reference | query] ViT pair classifier, BCE on hard-negative groups (matching track "
         "2nd, arXiv 2111.09113)",
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
    schedule=schedule,
    notes=NOTES,
)
