"""``imsim-lab train bot``, ``train d2lv`` and ``train barlow``: VisionForce's recipe as commands.

* ``bot`` / ``d2lv`` (:mod:`imsim_lab.train.bot`): options (defaults: the published recipe:
  ResNet-50 with last stride 1, 256 px, K = 4, Adam 3.5e-4 with warm-up, constant, cosine, 25
  epochs), the checks of the input (benchmark, trunk, ``--init-trunk`` weights, the class count
  of a checkpoint at resume), and the ``imsim-lab run bot ...`` command that evaluates the weights.
* ``barlow`` (:mod:`imsim_lab.train.barlow`): Barlow Twins on the benchmark's training images;
  its ``trunk.pt`` is what ``--init-trunk`` of ``bot`` / ``d2lv`` reads.

The training code is imported when a run starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import ImsimError
from .base import PublishedStep, Recipe, RunStart, TrainSession, add_trainer_arguments, training_summary
from .base import check_backbone, check_global_batch
from .ssquare import evaluate_command, training_paths

BOT_DESCRIPTION = (
    "Bag of Tricks (VisionForce, descriptor track 3rd, arXiv 2111.08004): a ResNet with last stride 1, WaveBlocks "
    "after layer2/layer3 (training only), GeM (learnable p from 3), a projector c -> 2c -> 4c and a 256-d 'matrix' "
    "head, trained with one class per training image (P classes x K views per batch): 10 label-smoothed CE on the "
    "4c-d feature + 1 on the 256-d one + 2 KD (T 2) between them + 1 batch-hard soft triplet on the GeM feature. "
    "Adam 3.5e-4, warm-up (5/25), constant (to 10/25), cosine. Writes OUT/checkpoint.pt, OUT/weights.pt, "
    "OUT/history.json, OUT/train_config.json.")
D2LV_DESCRIPTION = (
    "D2LV's backbones (VisionForce, matching track 1st, arXiv 2111.07090): the Bag of Tricks body without the "
    "256-d head, 10 label-smoothed CE on the 4c-d feature + 1 batch-hard soft triplet; the descriptor is the 4c-d "
    "feature (8192 for ResNet-50). --specialist NAME trains one of D2LV's specialists (views made from one "
    "family only: baseline, grayscale, blur, colour, dark, opacity, underlay); --families keeps a subset of BoT's "
    "view families. Same schedule and files as `train bot`.")
BARLOW_DESCRIPTION = (
    "Barlow Twins (Zbontar et al., ICML 2021, arXiv 2103.03230): the trunk of `train bot` + a 3-layer projector "
    "learn from two views per training image to make the cross-correlation of their standardised embeddings the "
    "identity (lambda 0.0051 off the diagonal). Writes the trainer's files and OUT/trunk.pt, which "
    "`train bot --init-trunk OUT` starts from.")
BOT_NOTES = ("on a CPU: --backbone resnet18 --size 96 --epochs 3 --batch-size 16 --k 4 trains from random weights in "
             "minutes;\n--init-trunk takes a `train barlow` folder or trunk.pt, or the released Barlow Twins "
             "resnet50.pth (path or URL, with --init-sha256);\n--batch-size is P (classes per process per step); "
             "re-running the command resumes.")


def add_bot_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``bot`` and ``d2lv``."""
    p.add_argument("--bench", required=True, help="benchmark folder (its training/ images are the classes)")
    p.add_argument("--out", required=True, help="training run folder")
    p.add_argument("--backbone", default="resnet50", help="timm ResNet trunk (default: the published resnet50)")
    p.add_argument("--size", type=int, default=256, help="training resolution (default 256)")
    p.add_argument("--k", type=int, default=4, help="views per class in a batch (default 4)")
    p.add_argument("--batch-size", type=int, default=32, help="classes per process per step, P (default 32: 128 "
                                                              "images with K 4)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--lr", type=float, default=3.5e-4)
    p.add_argument("--no-waveblock", action="store_true", help="train without the WaveBlocks")
    p.add_argument("--families", default=None, help="comma list of view families to keep")
    p.add_argument("--specialist", default=None,
                   help="one of D2LV's specialists: views made from that family only (baseline, grayscale, blur, "
                        "colour, dark, opacity, underlay)")
    p.add_argument("--offline", default=None, metavar="DIR",
                   help="train on the offline copies in DIR (written there first if missing: the published layout)")
    p.add_argument("--copies", type=int, default=20, help="with --offline: images per class (20 as published)")
    p.add_argument("--init-trunk", default=None, metavar="WEIGHTS",
                   help="trunk weights: a `train barlow` folder or trunk.pt, or the released Barlow Twins file/URL")
    p.add_argument("--init-sha256", default=None, help="sha256 of --init-trunk (required for a URL)")
    p.add_argument("--pretrained", action="store_true", help="timm hub weights for the trunk (internet)")
    add_trainer_arguments(p)


def bot_config(args: argparse.Namespace, variant: str):
    """The :class:`~imsim_lab.train.bot.BoTConfig` of the parsed options."""
    from dataclasses import replace

    from ..bot import PUBLISHED_TRAIN, BoTConfig

    if args.max_steps is not None and args.max_steps < 1:
        raise ImsimError("--max-steps must be >= 1")
    families = tuple(f.strip() for f in args.families.split(",") if f.strip()) if args.families else None
    try:
        tc = replace(PUBLISHED_TRAIN, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                     max_steps=args.max_steps, amp=args.amp, num_workers=args.workers,
                     checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device)
        if args.specialist is not None:
            from ..bot_data import specialist_ops

            specialist_ops(args.specialist)
        return BoTConfig(variant=variant, backbone=args.backbone, size=args.size, k=args.k,
                         waveblock=not args.no_waveblock, families=families, specialist=args.specialist,
                         offline=str(args.offline) if args.offline else None, pretrained=args.pretrained, train=tc)
    except ValueError as e:
        raise ImsimError(str(e)) from None


def _run_variant(variant: str, args: argparse.Namespace, session: TrainSession) -> dict:
    from ..bot import MODEL_OF, train_bot

    cfg = bot_config(args, variant)
    check_backbone(cfg.backbone)
    bench, paths = training_paths(args.bench, variant)
    check_global_batch(bench.root, len(paths), args.batch_size, session.world, "classes")
    glob = args.batch_size * session.world
    if cfg.offline and session.rank == 0:
        from ..bot_data import write_offline_copies

        write_offline_copies(paths, cfg.offline, args.copies, cfg.size, cfg.train.seed, cfg.families,
                             specialist=cfg.specialist)
    if session.world > 1:
        import torch.distributed as dist

        dist.barrier()
    out = Path(args.out)
    init = args.init_trunk
    if init:
        from ..barlow import check_trunk_source

        check_trunk_source(init, args.init_sha256)
    if cfg.families:
        from ..bot_data import ops_of

        ops_of(cfg.families)
    on_step = session.start(RunStart(f"{'Bag of Tricks' if variant == 'bot' else 'D2LV backbone'}, {cfg.backbone} at "
                                     f"{cfg.size} px, {len(paths):,} classes x K {cfg.k}"
                                     f"{' (offline copies)' if cfg.offline else ''}"
                                     f"{f', specialist {cfg.specialist}' if cfg.specialist else ''}, trunk from "
                                     f"{init or ('timm' if cfg.pretrained else 'random weights')}, {session.world} "
                                     f"process(es) -> {out}", glob * cfg.k, args.epochs, args.max_steps))
    res = train_bot(paths, out, cfg, init_trunk=init, init_sha256=args.init_sha256, on_step=on_step,
                    run_info={"benchmark": str(bench.root)})
    evaluate = None
    if res.weights is not None and session.rank == 0 and variant == "bot":
        # D2LV's descriptor (d2lv_net) is evaluated by the matching-track methods built on it
        from ...features.models.bot import scaled_scales

        evaluate = evaluate_command("bot", args.bench, out, {"backbone": cfg.backbone, "input_size": cfg.size,
                                                             "scales": scaled_scales(cfg.size)}, res.weights)
    return training_summary(variant, res, session.world, glob * cfg.k, evaluate) | {"model": MODEL_OF[variant]}


def run_bot(args: argparse.Namespace, session: TrainSession) -> dict:
    """Train Bag of Tricks as ``args`` say; returns the summary (:func:`training_summary`)."""
    return _run_variant("bot", args, session)


def run_d2lv(args: argparse.Namespace, session: TrainSession) -> dict:
    """Train one D2LV backbone as ``args`` say."""
    return _run_variant("d2lv", args, session)


def bot_schedule(variant: str = "bot", nproc: int = 4) -> list[PublishedStep]:
    """The published run: 4 GPUs, 32 classes x 4 views each (global 128), 25 epochs of 8,000 iterations."""
    argv = ["torchrun", "--standalone", "--nproc_per_node", str(nproc), "-m", "imsim_lab", "train", variant,
            "--bench", "DISC21_100k", "--out", f"runs/{variant}", "--init-trunk", "BARLOW_RESNET50",
            "--init-sha256", "SHA256", "--offline", f"runs/{variant}_offline", "--copies", "20",
            "--batch-size", str(32 // nproc), "--k", "4", "--epochs", "25"]
    steps = [PublishedStep("offline set: 100,000 training images (every 10th of the 1M) x 20 (original + 19 copies); "
                           "published epochs are 8,000 iterations of 128 images (10 passes over the classes)"),
             PublishedStep(f"{'Bag of Tricks' if variant == 'bot' else 'D2LV (one of 33 models)'}: Barlow Twins "
                           f"ResNet-50, 256 px, Adam 3.5e-4, warm-up 5, constant to 10, cosine to 25 epochs",
                           tuple(argv))]
    if variant == "d2lv":
        # D2LV's 33 models are 3 backbones x 11 training sets; the sets here are the specialists (their
        # ResNet-152 and ResNet-50-IBN-a Momentum2-Teacher trunks are not released: --init-trunk takes them)
        from ..bot_data import SPECIALISTS

        for name in SPECIALISTS:
            spec = [a.replace(f"runs/{variant}", f"runs/d2lv_{name}") for a in argv] + ["--specialist", name]
            steps.append(PublishedStep(f"D2LV specialist {name} (combined by `imsim-lab run d2lv -p "
                                       f"specialists='{{...}}'`)", tuple(spec)))
    return steps


def add_barlow_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``barlow``."""
    p.add_argument("--bench", required=True, help="benchmark folder (its training/ images are used)")
    p.add_argument("--out", required=True, help="training run folder")
    p.add_argument("--backbone", default="resnet50", help="timm ResNet trunk (default resnet50)")
    p.add_argument("--size", type=int, default=224, help="view resolution (default 224)")
    p.add_argument("--proj-dim", type=int, default=None, help="projector width (default 4 x the trunk's channels)")
    p.add_argument("--lambd", type=float, default=0.0051, help="weight of the off-diagonal term (0.0051)")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--warmup-epochs", type=float, default=10.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256, help="images per process (2 views each)")
    p.add_argument("--optimizer", default="lars", help="lars (published) or adam (small CPU runs)")
    p.add_argument("--lr", type=float, default=None, help="default: lars 0.2 x global batch / 256, adam 1e-3")
    add_trainer_arguments(p)


def barlow_config(args: argparse.Namespace, world: int = 1, n_images: int | None = None):
    from ..barlow import BarlowConfig
    from ..trainer import TrainConfig

    if args.optimizer not in ("lars", "adam"):
        raise ImsimError(f"--optimizer {args.optimizer!r}: lars or adam")
    if args.max_steps is not None and args.max_steps < 1:
        raise ImsimError("--max-steps must be >= 1")
    glob = args.batch_size * world
    lr = args.lr if args.lr is not None else (0.2 * glob / 256 if args.optimizer == "lars" else 1e-3)
    per_epoch = max(1, (n_images or glob) // glob)
    try:
        tc = TrainConfig(optimizer=args.optimizer, lr=lr, lr_schedule="cosine", weight_decay=1.5e-6,
                         warmup_steps=int(round(args.warmup_epochs * per_epoch)), epochs=args.epochs,
                         max_steps=args.max_steps, batch_size=args.batch_size, amp=args.amp, num_workers=args.workers,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device)
        return BarlowConfig(backbone=args.backbone, size=args.size, proj_dim=args.proj_dim, lambd=args.lambd, train=tc)
    except ValueError as e:
        raise ImsimError(str(e)) from None


def run_barlow(args: argparse.Namespace, session: TrainSession) -> dict:
    """Pretrain a trunk with Barlow Twins as ``args`` say."""
    from ..barlow import TRUNK, train_barlow

    barlow_config(args)
    bench, paths = training_paths(args.bench, "barlow")
    cfg = barlow_config(args, session.world, len(paths))
    check_backbone(cfg.backbone)
    check_global_batch(bench.root, len(paths), args.batch_size, session.world)
    glob = args.batch_size * session.world
    out = Path(args.out)
    on_step = session.start(RunStart(f"Barlow Twins (lambda {cfg.lambd}), {cfg.backbone} at {cfg.size} px, "
                                     f"{len(paths):,} training images, {session.world} process(es) -> {out}",
                                     glob, args.epochs, args.max_steps))
    res = train_barlow(paths, out, cfg, on_step=on_step, run_info={"benchmark": str(bench.root)})
    summary = training_summary("barlow", res, session.world, glob, None)
    summary["trunk"] = str(out / TRUNK) if (out / TRUNK).is_file() else None
    summary["next"] = f"imsim-lab train bot --bench {args.bench} --backbone {cfg.backbone} --init-trunk {out} --out ..."
    return summary


def barlow_schedule() -> list[PublishedStep]:
    return [PublishedStep("the released ResNet-50 (ImageNet, 1,000 epochs, batch 2,048, LARS): "
                          "`train bot --init-trunk URL --init-sha256 SHA256` loads it instead; to train one here:",
                          ("torchrun", "--standalone", "--nproc_per_node", "8", "-m", "imsim_lab", "train", "barlow",
                           "--bench", "DISC21", "--out", "runs/barlow", "--epochs", "1000", "--batch-size", "256"))]


BOT_RECIPE = Recipe(name="bot", help="VisionForce's Bag of Tricks: CE + KD + soft triplet, one class per image "
                    "(descriptor track 3rd, arXiv 2111.08004)", description=BOT_DESCRIPTION,
                    add_arguments=add_bot_arguments, run=run_bot, schedule=lambda: bot_schedule("bot"),
                    notes=BOT_NOTES)
D2LV_RECIPE = Recipe(name="d2lv", help="one D2LV backbone: the Bag of Tricks body without its head (matching track "
                     "1st, arXiv 2111.07090)", description=D2LV_DESCRIPTION, add_arguments=add_bot_arguments,
                     run=run_d2lv, schedule=lambda: bot_schedule("d2lv"), notes=BOT_NOTES)
BARLOW_RECIPE = Recipe(name="barlow", help="Barlow Twins self-supervised pretraining of a ResNet trunk "
                       "(arXiv 2103.03230), the initialisation of `bot` and `d2lv`", description=BARLOW_DESCRIPTION,
                       add_arguments=add_barlow_arguments, run=run_barlow, schedule=barlow_schedule,
                       notes="on a CPU: --backbone resnet18 --size 64 --epochs 2 --batch-size 32 --optimizer adam "
                             "--warmup-epochs 0")
