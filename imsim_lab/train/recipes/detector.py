"""``imsim-lab train detector``: imgFp's overlay detector (:mod:`imsim_lab.features.detector`) trained on
the benchmark's training composites (:mod:`imsim_lab.train.detector`) as a command.

Defaults: the ``cpu`` profile of notebooks/08_matching_3rd_imgfp (64-pixel inputs, width 16, 1,000
composites, 4 epochs, AdamW 2e-3 with warm-up and cosine), which trains in minutes on a CPU. imgFp's
own detector is a fine-tuned YOLOv5 at 640 pixels (AGPL, not used); there is no published schedule
of this one. At the end the command prints the detector's box recall and precision at IoU 0.5 on
the benchmark's held-out queries (thresholds 0.50 and 0.55) and the ``imsim-lab run imgfp`` command
that uses it.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ...errors import ImsimError
from .base import Recipe, RunStart, TrainSession, add_trainer_arguments, training_summary

DESCRIPTION = (
    "imgFp's overlay detector (Sun et al., arXiv 2112.02373: the single box of a pasted image, cropped as a query "
    "view): a small CNN with an anchor-free grid head (FCOS-style objectness and side distances per cell of an "
    "8 x 8 map at 128 px), trained from scratch on composites of the benchmark's training images made with "
    "disc-synth's paste, combine, pad and airgap ops (their recorded parameters give the boxes). Writes "
    "OUT/detector.pt (imgfp's detector= and candidates.crops=), OUT/checkpoint.pt, OUT/weights.pt, "
    "OUT/history.json, OUT/train_config.json; prints box recall and precision at IoU 0.5 on the held-out queries.")

NOTES = ("imgFp's thresholds: 0.50 for the detector of its local branch (imgfp -p detector=), 0.55 for the global "
         "branch (-p candidates.crops=);\n--init DETECTOR.pt continues from a detector of the same shape "
         "(--size, --width, --head).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the ``detector`` recipe."""
    p.add_argument("--bench", required=True, help="benchmark folder: training/ makes the composites, the queries "
                                                  "with recorded boxes measure the detector")
    p.add_argument("--out", required=True, help="training run folder")
    p.add_argument("--size", type=int, default=64, help="square input side (64; the detector's default 128)")
    p.add_argument("--width", type=int, default=16, help="channels of the first block (16)")
    p.add_argument("--head", default="grid", help="grid (default) or global")
    p.add_argument("--composites", type=int, default=1000, help="training composites made from training/ (1000)")
    p.add_argument("--negative-rate", type=float, default=0.3, help="share of plain images without a box (0.3)")
    p.add_argument("--init", default=None, metavar="DETECTOR", help="detector.pt of an earlier run (same shape)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=int, default=32, help="composites per process per step (32)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (2e-3)")
    p.add_argument("--warmup-fraction", type=float, default=0.3, help="share of the steps in linear warm-up (0.3)")
    add_trainer_arguments(p)


def config(args: argparse.Namespace, world: int = 1):
    """(:class:`~imsim_lab.features.detector.DetectorConfig`, :class:`~imsim_lab.train.trainer.TrainConfig`)."""
    from ...features.detector import DetectorConfig
    from ..trainer import TrainConfig

    if args.max_steps is not None and args.max_steps < 1:
        raise ImsimError("--max-steps must be >= 1")
    if args.composites < 1 or not 0.0 <= args.negative_rate < 1.0:
        raise ImsimError("--composites must be >= 1 and --negative-rate in [0, 1)")
    if args.size < 16 or args.size % 16:
        raise ImsimError(f"--size must be a multiple of 16 of at least 16 (four stride-2 blocks), not {args.size}")
    if not 0.0 <= args.warmup_fraction < 1.0:
        raise ImsimError("--warmup-fraction must be in [0, 1)")
    glob = args.batch_size * world
    steps = args.epochs * max(1, args.composites // glob)
    if args.max_steps is not None:
        steps = min(steps, args.max_steps)
    try:
        det = DetectorConfig(input_size=args.size, width=args.width, seed=args.seed, lr=args.lr,
                             batch_size=args.batch_size, head=args.head)
        tc = TrainConfig(optimizer="adamw", lr=args.lr, lr_schedule="cosine",
                         warmup_steps=int(round(args.warmup_fraction * steps)), weight_decay=1e-4,
                         epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, amp=args.amp,
                         num_workers=args.workers, checkpoint_every=args.checkpoint_every, seed=args.seed,
                         device=args.device)
    except ValueError as e:
        raise ImsimError(str(e)) from None
    return det, tc


def run_commands(bench, detector: Path, out: Path) -> list[list[str]]:
    """The imgfp runs that use the detector: its crop-local branch (threshold 0.50), and with the
    global branch's crops as well (0.55)."""
    d = str(detector)
    return [["imsim-lab", "run", "imgfp", "--bench", str(bench), "--out", str(out / "imgfp"), "-p", f"detector={d}"],
            ["imsim-lab", "run", "imgfp", "--bench", str(bench), "--out", str(out / "imgfp_global_crops"),
             "-p", f"detector={d}", "-p", f"candidates.crops={d}"]]


def run(args: argparse.Namespace, session: TrainSession) -> dict:
    """Train the detector as ``args`` say; returns the summary (:func:`training_summary`) with the
    held-out box recall and precision (``boxes``) and the lines the command prints (``report``)."""
    from ...data.benchmark import load_benchmark
    from ..detector import check_init, held_out_metrics, train_detector_run
    from .ssquare import training_paths

    det_cfg, tc = config(args, session.world)
    bench, paths = training_paths(args.bench, "detector")
    if len(paths) < 2:
        raise ImsimError(f"{Path(bench.root) / 'training'}: {len(paths)} training image; the composites need 2")
    out = Path(args.out)
    if args.init and not (out / "checkpoint.pt").is_file():
        check_init(args.init, det_cfg)  # before the start line: a refusal is one line
    glob = args.batch_size * session.world
    on_step = session.start(RunStart(f"overlay detector ({det_cfg.head} head, {det_cfg.input_size} px, width "
                                     f"{det_cfg.width}), {args.composites:,} composites of {len(paths):,} training "
                                     f"images, {session.world} process(es) -> {out}", glob, args.epochs,
                                     args.max_steps))
    res, det = train_detector_run(paths, out, det_cfg, tc, args.composites, args.negative_rate, args.init, on_step,
                                  {"benchmark": str(bench.root)})
    summary = training_summary("detector", res, session.world, glob)
    if det is None:
        return summary
    boxes = held_out_metrics(det, load_benchmark(bench.root))
    detector = out / "detector.pt"
    cmds = run_commands(args.bench, detector.resolve(), out)
    report = [f"detector     : {detector}"]
    for m in boxes:
        report.append(f"held-out queries, threshold {m['threshold']:.2f}: box recall {m['recall']:.3f} precision "
                      f"{m['precision']:.3f} at IoU 0.5 ({m['hits']} hits, {m['kept']} boxes kept, "
                      f"{m['true_boxes']} recorded boxes)")
    report.append(f"with the global branch's crops as well (threshold 0.55): {shlex.join(cmds[1])}")
    return {**summary, "detector": str(detector), "boxes": boxes, "report": report,
            "evaluate": shlex.join(cmds[0]), "evaluate_global_crops": shlex.join(cmds[1])}


RECIPE = Recipe(
    name="detector",
    help="imgFp's overlay detector, trained from scratch on the benchmark's composites (arXiv 2112.02373)",
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
    notes=NOTES,
)
