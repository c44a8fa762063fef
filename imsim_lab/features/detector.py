"""Overlay detection: where in a query does a pasted image lie? A small single-box detector in torch.

imgFp (Sun et al., arXiv 2112.02373; docs/methods.md; sun-xl/ISC2021 ``preprocess/``) runs a
fine-tuned YOLOv5 on every query and, when a box passes its filters (confidence over a threshold,
normalised area at most 0.85, aspect ratio h/w in [1/4, 4]), keeps the single most confident box
and uses the crop as the query. Since only one box per image is ever kept, this module's detector
predicts one box and one confidence per image: a small CNN (:class:`OverlayNet`, strided
convolutions, a 4 x 4 map, five outputs), trained from scratch on composites that it makes from
training images with disc-synth's own ``paste`` and ``combine`` ops, whose recorded parameters give
the exact box of the pasted image (:func:`~imsim_lab.features.oracle.trace_source_box`). It is MIT
code of this project (no YOLOv5, which is AGPL).

    samples = make_composites(train_paths, n=2000, seed=0)
    det, history = train_detector(samples, DetectorConfig(), epochs=8)
    boxes, conf = detect(det, [Image.open(p) for p in query_paths])
    m = box_metrics(boxes, conf, true_boxes, threshold=0.5)      # recall and precision at IoU 0.5

Boxes are ``(x0, y0, x1, y1)`` fractions of the image; "no box" is a row of NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ImsimError

#: imgFp's box filter: normalised area at most this, aspect h/w inside this range
MAX_AREA, ASPECT = 0.85, (0.25, 4.0)
#: the disc-synth families whose source ends up as a box inside the query, and their training shares
COMPOSITE_FAMILIES, COMPOSITE_WEIGHTS = ("paste", "combine", "pad", "airgap"), (0.4, 0.3, 0.15, 0.15)


@dataclass(frozen=True)
class DetectorConfig:
    """Input side (square resize), channel width, seed, learning rate and batch of the training."""

    input_size: int = 128
    width: int = 16
    seed: int = 0
    lr: float = 2e-3
    batch_size: int = 32


def _net(cfg: DetectorConfig):
    import torch.nn as nn

    w = cfg.width

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    # the last map is kept whole (4 x 4 at 128 pixels): a global pooling would throw away where things are
    return nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w),
                         block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.1),
                         nn.Linear(16 * 4 * w, 5))


class OverlayNet:
    """The detector: ``net`` (torch module) and its frozen :class:`DetectorConfig`.

    Output per image: confidence logit, then (cx, cy, w, h) through a sigmoid, fractions of the image.
    """

    def __init__(self, config: DetectorConfig = DetectorConfig()):
        import torch

        torch.manual_seed(config.seed)
        self.config = config
        self.net = _net(config)

    def to_tensor(self, images: Sequence) -> "object":
        import torch

        s = self.config.input_size
        a = np.stack([np.asarray(im.convert("RGB").resize((s, s)), np.float32) / 255.0 for im in images])
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

    def save(self, path: str | Path) -> None:
        import torch

        from ..atomic import atomic_path

        with atomic_path(Path(path)) as tmp:
            torch.save({"config": asdict(self.config), "state": self.net.state_dict()}, tmp)

    @classmethod
    def load(cls, path: str | Path) -> "OverlayNet":
        """Raises ImsimError (one line naming the file) for a checkpoint of another shape."""
        import torch

        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            det = cls(DetectorConfig(**ck["config"]))
            det.net.load_state_dict(ck["state"])
        except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on a foreign file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ImsimError(f"{path}: not an overlay detector checkpoint of this shape ({first[:200]})") from None
        return det


def _decode(out):
    import torch

    c = out[:, 1:].sigmoid()
    cx, cy, w, h = c.unbind(1)
    return out[:, 0], torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clamp(0, 1)


def make_composites(paths: Sequence[str | Path], n: int, seed: int = 0, negative_rate: float = 0.3):
    """``n`` training samples (image, box or None) from training images only: for the positives an
    edit of :data:`COMPOSITE_FAMILIES` (pasted onto another image, a collage, a frame of padding or
    an air gap), the plain image for the rest; the box is traced from the recorded ops, None when
    it covers more than :data:`MAX_AREA` of the image (imgFp would not crop it)."""
    from PIL import Image

    from ..data.augment import Assets, apply_ops, sample_ops
    from .oracle import trace_source_box
    from .views import ViewError

    paths = [str(p) for p in paths]
    if len(paths) < 2:
        raise ImsimError("overlay detector: at least 2 training images are needed to make composites")
    ids = [f"img{i}" for i in range(len(paths))]
    cache: dict = {}

    def img(i):
        if i not in cache:
            with Image.open(paths[ids.index(i)]) as im:
                cache[i] = im.convert("RGB")
        return cache[i]

    assets = Assets(images=img, image_ids=tuple(ids))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        src = ids[int(rng.integers(len(ids)))]
        im = img(src)
        if rng.random() < negative_rate:
            out.append((im, None))
            continue
        fam = COMPOSITE_FAMILIES[int(rng.choice(len(COMPOSITE_FAMILIES), p=COMPOSITE_WEIGHTS))]
        ops = sample_ops(fam, float(rng.uniform(0.3, 1.0)), rng, im.size, assets)
        try:
            box = trace_source_box([o.to_dict() if hasattr(o, "to_dict") else o for o in ops], im.size,
                                   lambda i: img(i).size)
        except ViewError:
            continue
        b = box.box
        area = (b[2] - b[0]) * (b[3] - b[1])
        out.append((apply_ops(im, ops, assets), tuple(b) if area <= MAX_AREA else None))
    return out


def train_detector(samples, config: DetectorConfig = DetectorConfig(), epochs: int = 8, device: str | None = None,
                   amp: bool = True, progress=None):
    """Train an :class:`OverlayNet` on (image, box or None) samples; returns (detector, loss per epoch).

    Loss: BCE on the confidence + (L1 + generalised IoU) on the box of positives. AMP (fp16 on CUDA)
    when ``amp`` and the device is CUDA.
    """
    import torch
    from torchvision.ops import generalized_box_iou_loss

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    det = OverlayNet(config)
    net = det.net.to(dev)
    x = det.to_tensor([s[0] for s in samples])
    pos = torch.tensor([s[1] is not None for s in samples], dtype=torch.float32)
    boxes = torch.tensor([s[1] if s[1] is not None else (0.0, 0.0, 1.0, 1.0) for s in samples], dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    steps = epochs * max(1, -(-len(samples) // config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps)
    use_amp = amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    g = torch.Generator().manual_seed(config.seed)
    history = []
    net.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(samples), generator=g), 0.0
        for a in range(0, len(samples), config.batch_size):
            i = order[a:a + config.batch_size]
            xb = x[i].to(dev)
            if torch.rand(1, generator=g).item() < 0.5:  # a mirrored batch, boxes mirrored with it
                xb, bb = xb.flip(3), boxes[i][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
                    [1.0, 0, 1.0, 0])
            else:
                bb = boxes[i]
            pb, bb = pos[i].to(dev), bb.to(dev)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                out = net(xb)
            logit, pred = _decode(out.float())
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, pb)
            if pb.sum() > 0:
                m = pb > 0
                loss = loss + (pred[m] - bb[m]).abs().sum(1).mean() + generalized_box_iou_loss(
                    pred[m], bb[m], reduction="mean")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * len(i)
        history.append(total / len(samples))
        if progress:
            progress(1)
    det.net = net.cpu().eval()
    return det, history


def detect(det: OverlayNet, images: Sequence, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4) fractions and confidences (n,) in [0, 1] of PIL images (no filter applied)."""
    import torch

    boxes, conf = [], []
    det.net.eval()
    with torch.no_grad():
        for a in range(0, len(images), batch):
            logit, b = _decode(det.net(det.to_tensor(images[a:a + batch])).float())
            boxes.append(b.numpy())
            conf.append(logit.sigmoid().numpy())
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return np.concatenate(boxes).astype(np.float32), np.concatenate(conf).astype(np.float32)


def keep_boxes(boxes: np.ndarray, conf: np.ndarray, threshold: float = 0.5, sizes=None) -> np.ndarray:
    """imgFp's filter: (n,) bool, confidence over ``threshold``, area at most :data:`MAX_AREA` and
    aspect h/w in :data:`ASPECT` (``sizes`` (n, 2) w, h of the images, for the aspect in pixels)."""
    b = np.asarray(boxes, np.float64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if sizes is not None:
        s = np.asarray(sizes, np.float64)
        asp = (h * s[:, 1]) / np.maximum(w * s[:, 0], 1e-9)
    else:
        asp = h / np.maximum(w, 1e-9)
    return (np.asarray(conf) > threshold) & (w * h <= MAX_AREA) & (w > 0) & (h > 0) & (asp >= ASPECT[0]) & (
        asp <= ASPECT[1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) IoU of row-paired boxes (n, 4); NaN rows give 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.nan_to_num(inter / np.where(union > 0, union, np.inf))


def box_metrics(boxes, keep, true_boxes, iou: float = 0.5) -> dict:
    """Recall and precision of kept boxes at IoU ``iou`` against the true boxes (NaN row = none).

    A kept box is a true positive when the image has a true box it overlaps by at least ``iou``.
    """
    t = np.asarray(true_boxes, np.float64)
    has = ~np.isnan(t).any(axis=1)
    keep = np.asarray(keep, bool)
    hit = keep & has & (box_iou(boxes, np.nan_to_num(t)) >= iou)
    n_true, n_kept = int(has.sum()), int(keep.sum())
    return {"recall": hit.sum() / n_true if n_true else float("nan"),
            "precision": hit.sum() / n_kept if n_kept else float("nan"),
            "true_boxes": n_true, "kept": n_kept, "hits": int(hit.sum())}


def crop(image, box) -> object:
    """The crop of a PIL image to a fraction box (the query view both branches use)."""
    w, h = image.size
    x0, y0, x1, y1 = box
    return image.crop((int(x0 * w), int(y0 * h), max(int(x0 * w) + 1, int(round(x1 * w))),
                       max(int(y0 * h) + 1, int(round(y1 * h)))))


def bench_boxes(bench, query_ids: Sequence[str]) -> np.ndarray:
    """(n, 4) recorded boxes of the queries' source images (disc-synth ops), NaN where the source
    covers more than :data:`MAX_AREA` of the query or its box cannot be traced: the targets, and
    the upper bound of any detector (the crop an oracle would make)."""
    from .oracle import bench_source_box
    from .views import ViewError

    out = np.full((len(query_ids), 4), np.nan)
    for k, q in enumerate(query_ids):
        try:
            b = bench_source_box(bench, str(q)).box
        except ViewError:
            continue
        if (b[2] - b[0]) * (b[3] - b[1]) <= MAX_AREA:
            out[k] = b
    return out
