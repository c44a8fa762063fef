"""The overlay detector (:mod:`imsim_lab.features.detector`) trained by the shared trainer: ``imsim-lab
train detector`` (:mod:`imsim_lab.train.recipes.detector`).

The composites (:func:`~imsim_lab.features.detector.make_composites`: training images pasted onto,
collaged with, padded or air-gapped around others by disc-synth's own ops, whose recorded parameters
give the box) are made once from the seed, resized to the detector's input and kept in memory; an
item ``(index, epoch)`` is one composite, mirrored (with its box) for half of the (index, epoch)
pairs, a pure function of the seed (so that a resumed run sees the batches an uninterrupted one
would). The target of an item is ``(has box, x0, y0, x1, y1)``; the loss is the detector's own
(:func:`~imsim_lab.features.detector.detector_loss`: focal loss on the cells' objectness, L1 and
generalised IoU on the boxes of the positive cells). AMP, DDP, checkpoints and exact resume are the
trainer's (:func:`imsim_lab.train.trainer.train`).

At the end the detector is written as ``OUT/detector.pt`` (:meth:`OverlayNet.save`, the checkpoint
``imgfp``'s ``detector=`` and ``candidates.crops=`` take) and measured on the benchmark's queries,
which it never saw: box recall and precision at IoU 0.5 against the recorded boxes
(:func:`~imsim_lab.features.detector.bench_boxes`), at imgFp's two thresholds (0.50 for the local
branch, 0.55 for the global one).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ImsimError

DETECTOR_FILE = "detector.pt"
#: imgFp's two thresholds: the local branch's detector, the global branch's
THRESHOLDS = (0.5, 0.55)


class CompositeDataset:
    """Items ``(x (1, 3, s, s) float32 in [0, 1], y (1, 5) float32)`` addressed by ``(index, epoch)``."""

    def __init__(self, samples, input_size: int, seed: int = 0):
        s = int(input_size)
        self.x = np.stack([np.asarray(im.convert("RGB").resize((s, s)), np.uint8) for im, _ in samples])
        self.y = np.array([(1.0, *b) if b is not None else (0.0, 0.0, 0.0, 1.0, 1.0) for _, b in samples], np.float32)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        x = self.x[index].astype(np.float32).transpose(2, 0, 1) / 255.0
        y = self.y[index].copy()
        if np.random.default_rng([self.seed, int(epoch), int(index)]).random() < 0.5:  # mirrored, box with it
            x = x[:, :, ::-1]
            y[1], y[3] = 1.0 - y[3], 1.0 - y[1]
        return np.ascontiguousarray(x)[None], y[None]


class DetectorLoss(nn.Module):
    """(net output, targets (n, 5)) -> the detector's loss (either head)."""

    def forward(self, out, y):
        from ..features.detector import detector_loss

        return detector_loss(out.float(), y[:, 0], y[:, 1:])


def held_out_metrics(det, bench, thresholds=THRESHOLDS) -> list[dict]:
    """Box recall and precision at IoU 0.5 on the benchmark's queries, one row per threshold."""
    from PIL import Image

    from ..features import detector as D

    qids = [str(q) for q in bench.query_ids]
    true = D.bench_boxes(bench, qids)
    ims = []
    for q in qids:
        with Image.open(bench.image_path(q)) as im:
            ims.append(im.convert("RGB"))
    boxes, conf = D.detect(det, ims)
    sizes = np.array([im.size for im in ims]).reshape(-1, 2)
    return [{"threshold": float(t), **D.box_metrics(boxes, D.keep_boxes(boxes, conf, t, sizes), true)}
            for t in thresholds]


def check_init(path: str | Path, config) -> "object":
    """The :class:`~imsim_lab.features.detector.OverlayNet` of ``path`` if it has the shape of
    ``config`` (input size, width, head), else one line naming the file."""
    from ..features.detector import OverlayNet

    det = OverlayNet.load(path)
    got = {k: getattr(det.config, k) for k in ("input_size", "width", "head")}
    want = {k: getattr(config, k) for k in got}
    if got != want:
        diff = ", ".join(f"{k} {got[k]} (asked {want[k]})" for k in got if got[k] != want[k])
        raise ImsimError(f"{path}: an overlay detector of another shape: {diff}")
    return det


def train_detector_run(paths, out, config, train_config, n_composites: int, negative_rate: float = 0.3,
                       init=None, on_step=None, run_info: dict | None = None):
    """Make the composites, train (resumable in ``out``), write ``OUT/detector.pt``.

    Returns (:class:`~imsim_lab.train.trainer.TrainResult`, the trained
    :class:`~imsim_lab.features.detector.OverlayNet` or None off rank 0 / without weights).
    """
    from ..features.detector import OverlayNet, make_composites
    from .trainer import train

    out = Path(out)
    samples = make_composites(paths, n_composites, seed=config.seed, negative_rate=negative_rate)
    if len(samples) < train_config.batch_size:
        raise ImsimError(f"{out}: {len(samples)} composites cannot fill one batch of {train_config.batch_size}; "
                         "raise --composites or lower --batch-size")
    det = OverlayNet(config)
    if init is not None:
        det.net.load_state_dict(check_init(init, config).net.state_dict())
    info = {"detector": asdict(config), "composites": int(n_composites), "made": len(samples),
            "negative_rate": float(negative_rate), **(run_info or {})}
    res = train(det.net, DetectorLoss(), CompositeDataset(samples, config.input_size, config.seed), train_config, out,
                on_step=on_step, run_info=info)
    from ..distributed import dist_info

    if res.weights is None or dist_info()[0] != 0:
        return res, None
    det.net = det.net.cpu()
    det.net.load_state_dict(torch.load(res.weights, map_location="cpu", weights_only=True))
    det.net.eval()
    det.save(out / DETECTOR_FILE)
    return res, det
