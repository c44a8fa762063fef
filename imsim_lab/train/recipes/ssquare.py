"""``imsim-lab train ssquare``: S-square's drip training (:mod:`imsim_lab.train.ssquare`) as a command.

Options (defaults: the published optimiser; the class counts, epochs and intensities of the drip
as comma lists), the published schedule of ``--help``, the checks of the input (benchmark,
class counts against the training images, ``--init`` weights, the class count of a checkpoint at
resume), and the ``imsim-lab run ssquare ...`` command that evaluates the weights. The training
code is imported when a run starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import ImsimError
from .base import (PublishedStep, Recipe, RunStart, TrainSession, add_trainer_arguments, check_backbone,
                   training_summary)

#: the published training resolution, the default of ``--size``
TRAIN_SIZE = 160

DESCRIPTION = (
    "S-square's drip training (descriptor track 2nd, arXiv 2112.03415): a timm trunk + trainable GeM + linear "
    "neck + L2 learns with ArcFace (m 0.4, s 40), one class per training image; the class set grows stage by "
    "stage (--classes), the new ArcFace rows initialised from the current model's embeddings of the new images, "
    "while the query-augmentation intensity rises (--intensity). Adam 1e-3 with ReduceLROnPlateau (0.9, 2). "
    "Writes OUT/stage<k>/ (checkpoint.pt, history.json), OUT/weights.pt and OUT/drip.json.")

NOTES = ("on a CPU: --backbone resnet18 --size 64 --dim 128 --classes 100,200 trains from random weights in minutes;\n"
         "--batch-size is per process; re-running the command resumes the stage it was in.")


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in str(text).split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the ``ssquare`` recipe."""
    p.add_argument("--bench", required=True, help="benchmark folder (its training/ images are the classes)")
    p.add_argument("--out", required=True, help="training run folder")
    p.add_argument("--classes", default="50000,100000,200000,500000,1000000",
                   help="classes per drip stage, comma-separated (the first N training images; default: test26's)")
    p.add_argument("--epochs", default=None, help="epochs per stage (one value: every stage; default: the published "
                                                  "10,10,10,10,20 for the published classes, else 1 each)")
    p.add_argument("--intensity", default=None, help="query-augmentation intensity per stage (default: the published "
                                                     "0.5 -> 0.75 spread over the stages)")
    p.add_argument("--backbone", default=None, help="timm backbone (default: the published eca_nfnet_l1)")
    p.add_argument("--size", type=int, default=TRAIN_SIZE,
                   help=f"training and evaluation resolution (default {TRAIN_SIZE})")
    p.add_argument("--dim", type=int, default=384, help="embedding size (default 384)")
    p.add_argument("--pretrained", action="store_true", help="timm hub weights for the backbone (internet)")
    p.add_argument("--init", default=None, metavar="WEIGHTS", help="weights.pt of an earlier S-square run")
    p.add_argument("--batch-size", type=int, default=64, help="images (= classes drawn) per process per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-steps", type=int, default=None, help="stop every stage after this many steps")
    add_trainer_arguments(p)


def schedule(nproc: int = 8) -> list[PublishedStep]:
    """The published drip (test26, ``PUBLISHED_DRIP``) as one ``torchrun`` command."""
    from ..ssquare import PUBLISHED_DRIP

    st = PUBLISHED_DRIP
    argv = ["torchrun", "--standalone", "--nproc_per_node", str(nproc), "-m", "imsim_lab", "train", "ssquare",
            "--bench", "DISC21", "--out", "runs/ssquare", "--pretrained",
            "--classes", ",".join(str(s.classes) for s in st), "--epochs", ",".join(str(s.epochs) for s in st),
            "--intensity", ",".join(str(s.intensity) for s in st), "--batch-size", str(max(1, 64 // nproc))]
    lines = [PublishedStep(f"stage {k + 1}: {s.classes:,} classes, intensity {s.intensity}, global batch "
                           f"{s.batch_size} (the command uses one batch size)") for k, s in enumerate(st)]
    return [*lines, PublishedStep("all stages, one command (the ensemble trains eight such runs on other "
                                  "backbones and sizes):", tuple(argv))]


def spread_intensity(n: int) -> list[float]:
    """The published intensities (test26: 0.5, 0.6, 0.6, 0.7, 0.75) spread over ``n`` stages."""
    pub = (0.5, 0.6, 0.6, 0.7, 0.75)
    return [pub[round(i * (len(pub) - 1) / (n - 1))] if n > 1 else pub[0] for i in range(max(n, 0))]


def config(args: argparse.Namespace):
    """The :class:`~imsim_lab.train.ssquare.SSquareConfig` of the parsed options.

    Raises:
        ImsimError: lists of other lengths, values the configuration refuses.
    """
    from dataclasses import replace

    from ..ssquare import PUBLISHED_BACKBONE, PUBLISHED_DRIP, PUBLISHED_TRAIN, DripStage, SSquareConfig

    try:
        classes = _ints(args.classes)
        published = classes == [s.classes for s in PUBLISHED_DRIP]
        epochs = _ints(args.epochs) if args.epochs else ([s.epochs for s in PUBLISHED_DRIP] if published else [1])
        inten = _floats(args.intensity) if args.intensity else spread_intensity(len(classes))
    except ValueError as e:
        raise ImsimError(f"--classes, --epochs, --intensity: comma-separated numbers ({e})") from None
    n = len(classes)
    epochs = epochs * n if len(epochs) == 1 else epochs
    inten = inten * n if len(inten) == 1 else inten
    if not n or len(epochs) != n or len(inten) != n:
        raise ImsimError(f"--classes gives {n} stages: --epochs and --intensity need 1 or {n} values each")
    if args.max_steps is not None and args.max_steps < 1:
        raise ImsimError("--max-steps must be >= 1")
    try:
        tc = replace(PUBLISHED_TRAIN, lr=args.lr, batch_size=args.batch_size, max_steps=args.max_steps, amp=args.amp,
                     num_workers=args.workers, checkpoint_every=args.checkpoint_every, seed=args.seed,
                     device=args.device)
        stages = tuple(DripStage(c, e, i) for c, e, i in zip(classes, epochs, inten))
        return SSquareConfig(backbone=args.backbone or PUBLISHED_BACKBONE, size=args.size, dim=args.dim,
                             pretrained=args.pretrained, stages=stages, train=tc)
    except ValueError as e:
        raise ImsimError(str(e)) from None


def training_paths(bench_root: str | Path, recipe: str):
    """The benchmark's training image paths, or one line naming the folder."""
    from ...data.benchmark import load_benchmark

    bench = load_benchmark(bench_root)
    if len(bench.training_ids) == 0:
        raise ImsimError(f"{Path(bench.root) / 'training'}: no training images; {recipe} trains on the benchmark's "
                         f"training/ folder (`imsim-lab data subset ... --training N`)")
    return bench, [bench.image_path(i) for i in bench.training_ids]


def run(args: argparse.Namespace, session: TrainSession) -> dict:
    """Drip-train as ``args`` say; returns the summary (:func:`training_summary`)."""
    from ...features.models import get_config
    from ..ssquare import check_classes, check_resume_classes, train_drip

    cfg = config(args)
    check_backbone(cfg.backbone)
    bench, paths = training_paths(args.bench, "ssquare")
    check_classes(len(paths), cfg, Path(bench.root) / "training")
    out = Path(args.out)
    check_resume_classes(out, cfg)  # before the start line: a refusal is one line
    if args.init and not (out / "stage1" / "checkpoint.pt").is_file():
        from ..initcheck import check_fits

        check_fits(args.init, get_config("ssquare_net", backbone=cfg.backbone, dim=cfg.dim))
    per_step = args.batch_size * session.world
    classes = ", ".join(f"{s.classes:,}" for s in cfg.stages)
    on_step = session.start(RunStart(f"S-square drip ({classes} classes), {cfg.backbone} at {cfg.size} px, "
                                     f"{len(paths):,} training images, {session.world} process(es) -> {out}",
                                     per_step, sum(s.epochs for s in cfg.stages), args.max_steps))
    res = train_drip(paths, out, cfg, init=args.init, on_step=on_step, run_info={"benchmark": str(bench.root)})
    last = res.stages[-1]
    evaluate = None
    if res.weights is not None and session.rank == 0:
        evaluate = evaluate_command("ssquare", args.bench, out, {"backbone": cfg.backbone, "input_size": cfg.size,
                                                                 "dim": cfg.dim}, res.weights)
    summary = training_summary("ssquare", last, session.world, per_step, evaluate)
    summary.update({"out": str(out), "weights": str(res.weights) if res.weights else None, "classes": res.classes,
                    "steps": res.steps, "total_steps": sum(r.total_steps for r in res.stages),
                    "resumed_from": sum(r.resumed_from for r in res.stages), "history": str(out / "drip.json"),
                    "seconds": round(sum(r.seconds for r in res.stages), 2)})
    return summary



def evaluate_command(method: str, bench, out, model_args: dict, weights) -> list[str]:
    """``imsim-lab run METHOD --bench B --out OUT/eval -p model.K=V ...``: every setting in which the
    trained net differs from the method's model, plus the weights and their sha256.

    Raises:
        ImsimError: the method cannot express this model.
    """
    import json

    from ...features.models import get_config
    from ...features.models.weights import sha256_file
    from ...methods import get_method

    spec = get_method(method)
    want = {**model_args, "weights_path": str(weights), "weights_sha256": sha256_file(weights)}
    base = get_config(spec.model, **spec.model_args)
    target = get_config(spec.model, **{**spec.model_args, **want})
    changes = {k: v for k, v in want.items() if getattr(base, k, base.extra.get(k)) != getattr(target, k,
                                                                                               target.extra.get(k))}
    argv = ["imsim-lab", "run", method, "--bench", str(bench), "--out", str(Path(out) / "eval")]
    for k, v in changes.items():
        argv += ["-p", f"model.{k}={v if isinstance(v, str) else json.dumps(v)}"]
    return argv


RECIPE = Recipe(
    name="ssquare",
    help="S-square's ArcFace drip training, one class per image (descriptor track 2nd, arXiv 2112.03415)",
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
    schedule=schedule,
    notes=NOTES,
)
