"""Overlay detection: where in a query does a pasted image lie? A small single-box detector in torch.

imgFp (Sun et al., arXiv 2112.02373; docs/methods.md; sun-xl/ISC2021 ``preprocess/``) runs a
fine-tuned YOLOv5 on every query and, when a box passes its filters (confidence over a threshold,
normalised area at most 0.85, aspect ratio h/w in [1/4, 4]), keeps the single most confident box
and uses the crop as the query. Since only one box per image is ever kept, this module's detector
gives one box and one confidence per image: a small CNN (:class:`OverlayNet`, strided convolutions
to an 8 x 8 map at 128 pixels) with one of two heads,

* ``grid`` (the default): an anchor-free head in the manner of FCOS (Tian et al., ICCV 2019): every
  cell of the map predicts an objectness logit and the distances from its centre to the four sides
  of the box, with the image's pooled features broadcast to every cell for context; the cells near
  the box centre are the positives (focal loss), their boxes are regressed (L1 + generalised IoU),
  and the most confident cell gives the image's box;
* ``global``: the first version, one box regressed from the flattened 4 x 4 map (recall 0.17 at
  IoU 0.5 on the held-out queries of disc-synth ``small``; kept to compare).

It is trained from scratch on composites that it makes from training images with disc-synth's own
``paste``, ``combine``, ``pad`` and ``airgap`` ops, whose recorded parameters give the exact box of
the pasted image (:func:`~imsim_lab.features.oracle.trace_source_box`). It is MIT code of this
project (no YOLOv5, which is AGPL).

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
    """Input side (square resize), channel width, head (``grid`` or ``global``, see the module
    docstring), seed, learning rate and batch of the training."""

    input_size: int = 128
    width: int = 16
    seed: int = 0
    lr: float = 2e-3
    batch_size: int = 32
    head: str = "grid"

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"detector head must be one of {HEADS}, not {self.head!r}")


HEADS = ("grid", "global")


def _block(i, o):
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                         nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


def _net(cfg: DetectorConfig):
    import torch.nn as nn

    w = cfg.width
    if cfg.head == "grid":
        return _GridNet(w)
    # the last map is kept whole (4 x 4 at 128 pixels): a global pooling would throw away where things are
    return nn.Sequential(_block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 4 * w),
                         _block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.1),
                         nn.Linear(16 * 4 * w, 5))


def _grid_module():
    import torch
    import torch.nn as nn

    class GridNet(nn.Module):
        """Four strided blocks (an 8 x 8 map at 128 pixels), the pooled map broadcast back to every
        cell, and a 3 x 3 head: per cell, an objectness logit and four side distances (sigmoid,
        fractions of the image)."""

        def __init__(self, w: int):
            super().__init__()
            self.body = nn.Sequential(_block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 4 * w))
            self.mix = nn.Sequential(nn.Conv2d(8 * w, 4 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(4 * w),
                                     nn.ReLU(inplace=True))
            self.head = nn.Conv2d(4 * w, 5, 3, 1, 1)
            with torch.no_grad():  # start rare (focal-loss prior 0.01), boxes of a quarter of the image
                self.head.bias.copy_(torch.tensor([-4.6, -1.1, -1.1, -1.1, -1.1]))

        def forward(self, x):
            f = self.body(x)
            g = f.mean((2, 3), keepdim=True).expand_as(f)
            return self.head(self.mix(torch.cat([f, g], 1)))

    return GridNet


def _GridNet(w: int):
    return _grid_module()(w)


class OverlayNet:
    """The detector: ``net`` (torch module) and its frozen :class:`DetectorConfig`.

    Output of ``net``: ``grid``: (n, 5, g, g), per cell an objectness logit and the four side
    distances; ``global``: (n, 5), a confidence logit, then (cx, cy, w, h) through a sigmoid,
    fractions of the image. :func:`detect` gives one box and confidence per image for either.
    A checkpoint saved before the heads existed loads as ``grid`` and is refused (another shape).
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
    """(logit (n,), box (n, 4)) of the image from the net's output (either head)."""
    import torch

    if out.dim() == 4:
        logit, boxes = _grid_boxes(out)
        n = len(out)
        best = logit.reshape(n, -1).argmax(1)
        return logit.reshape(n, -1)[torch.arange(n), best], boxes.reshape(n, -1, 4)[torch.arange(n), best]
    c = out[:, 1:].sigmoid()
    cx, cy, w, h = c.unbind(1)
    return out[:, 0], torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clamp(0, 1)


def _centres(g: int, like):
    import torch

    c = (torch.arange(g, dtype=torch.float32, device=like.device) + 0.5) / g
    return c[None, :].expand(g, g), c[:, None].expand(g, g)  # x, y of each cell, (g, g)


def _grid_boxes(out):
    """Per cell: (logit (n, g, g), box (n, g, g, 4)) from the grid head's (n, 5, g, g) output."""
    import torch

    g = out.shape[-1]
    cx, cy = _centres(g, out)
    d = out[:, 1:].sigmoid()
    box = torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], -1).clamp(0, 1)
    return out[:, 0], box


def _grid_targets(boxes, pos, g: int, radius: float = 1.5):
    """(n, g, g) bool: the positive cells, those whose centre is inside the box and within ``radius``
    cells of its centre (FCOS's centre sampling), at least the cell holding the centre."""
    import torch

    cx, cy = _centres(g, boxes)
    bx, by = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = ((cx[None] >= boxes[:, 0, None, None]) & (cx[None] <= boxes[:, 2, None, None])
              & (cy[None] >= boxes[:, 1, None, None]) & (cy[None] <= boxes[:, 3, None, None]))
    near = ((cx[None] - bx[:, None, None]).abs() <= radius / g) & ((cy[None] - by[:, None, None]).abs() <= radius / g)
    centre = torch.zeros_like(inside)
    i = (by * g).long().clamp(0, g - 1)
    j = (bx * g).long().clamp(0, g - 1)
    centre[torch.arange(len(boxes)), i, j] = True
    return ((inside & near) | centre) & (pos[:, None, None] > 0)


def _loss(out, pb, bb):
    """The training loss of either head on a batch: ``pb`` (n,) 1 = has a box, ``bb`` (n, 4) boxes."""
    import torch
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    if out.dim() == 4:
        logit, boxes = _grid_boxes(out)
        t = _grid_targets(bb, pb, out.shape[-1])
        npos = max(1.0, float(t.sum()))
        loss = sigmoid_focal_loss(logit, t.float(), alpha=0.25, gamma=2.0, reduction="sum") / npos
        if t.any():
            pred = boxes[t]
            true = bb[:, None, None, :].expand_as(boxes)[t]
            loss = loss + 2.0 * (pred - true).abs().sum(1).mean() + generalized_box_iou_loss(pred, true,
                                                                                             reduction="mean")
        return loss
    logit, pred = _decode(out)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, pb)
    if pb.sum() > 0:
        m = pb > 0
        loss = loss + (pred[m] - bb[m]).abs().sum(1).mean() + generalized_box_iou_loss(pred[m], bb[m],
                                                                                      reduction="mean")
    return loss


def detector_loss(out, has_box, boxes):
    """The training loss of the net's output ``out`` (either head) against ``has_box`` (n,) 1 = the
    image has a box and ``boxes`` (n, 4) fractions (see :func:`train_detector`)."""
    return _loss(out, has_box, boxes)


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

    Loss (:func:`_loss`): ``grid``: focal loss on the cells' objectness + (2 L1 + generalised IoU)
    on the boxes of the positive cells; ``global``: BCE on the confidence + (L1 + generalised IoU) on
    the box of positives. AMP (fp16 on CUDA) when ``amp`` and the device is CUDA.
    """
    import torch

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
            loss = _loss(out.float(), pb, bb)
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


def checkpoint_digest(path: str | Path) -> str:
    """sha256 of a detector checkpoint file (what the caches of its crops are keyed on)."""
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ImsimError(f"{path}: cannot read the overlay detector checkpoint ({e.strerror or e})") from None
    return h.hexdigest()


class _AsIs:
    """A preprocessing that keeps the decoded RGB image (for the detector and for cropping)."""

    decode_mode = "RGB"

    def __call__(self, img):
        return img


def detect_source(det: OverlayNet, source, ids: Sequence[str], batch: int = 64):
    """Boxes (n, 4), confidences (n,) and sizes (n, 2) (w, h) of the images ``ids`` of an
    :class:`~imsim_lab.features.dataset.ImageSource`; an unreadable image gets a NaN box and
    confidence 0."""
    ids = [str(i) for i in ids]
    data = source.dataset(_AsIs(), ids)
    boxes = np.full((len(ids), 4), np.nan, np.float32)
    conf = np.zeros(len(ids), np.float32)
    sizes = np.zeros((len(ids), 2), np.int64)
    for a in range(0, len(ids), batch):
        items = [data[k] for k in range(a, min(a + batch, len(ids)))]
        ok = [(i, im) for i, im, err in items if err is None]
        if not ok:
            continue
        b, c = detect(det, [im for _, im in ok], batch)
        rows = [i for i, _ in ok]
        boxes[rows], conf[rows] = b, c
        sizes[rows] = [im.size for _, im in ok]
    return boxes, conf, sizes


class _Crops:
    """Map-style dataset: item i is ``(i, preprocess(crop of image i to box i) or None, error or None)``."""

    def __init__(self, inner, boxes: np.ndarray, preprocess):
        self.inner, self.boxes, self.preprocess = inner, boxes, preprocess

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        _, im, err = self.inner[i]
        if err is not None:
            return i, None, err
        try:
            return i, self.preprocess(crop(im, self.boxes[i])), None
        except Exception as e:  # noqa: BLE001 - reported by id, as every extraction path does
            return i, None, f"{type(e).__name__}: {e}"


def crop_source(source, ids: Sequence[str], boxes: np.ndarray, key: str):
    """The crops of the images ``ids`` of ``source`` to ``boxes`` (n, 4) as an
    :class:`~imsim_lab.features.dataset.ImageSource` with the same ids (the query views of imgFp's
    crop-local branch); ``key`` must name the detector and its threshold."""
    from .dataset import ImageSource

    ids = np.asarray([str(i) for i in ids], dtype=str)
    boxes = np.asarray(boxes, np.float64).reshape(len(ids), 4)

    def make(pos, pre):
        return _Crops(source.dataset(_AsIs(), ids[pos]), boxes[pos], pre)

    return ImageSource(ids, make, f"{source.key}/crops/{key}")
