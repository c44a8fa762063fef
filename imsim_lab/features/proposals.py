"""Selective-search region proposals as query views (D2LV's ``k = 10..`` sub-images).

D2LV (Wang, Sun, Zhang, Yang, arXiv 2111.07090; their ``Test/augmentation/``) adds to each query the
regions of selective search (Uijlings, van de Sande, Gevers, Smeulders, "Selective Search for Object
Recognition", IJCV 2013), keeping regions of at least 2,000 pixels, aspect ratio at most 2, after a
non-maximum suppression at IoU 0.5. Here the proposals are OpenCV's implementation
(``cv2.ximgproc.segmentation``, from ``opencv-contrib-python-headless``) in its *fast* mode, run on
the query resized to a long side of ``side`` pixels (the cost grows with the pixels; boxes are then
mapped back to fractions of the query), each box once, larger boxes first (OpenCV's own ranking
multiplies the hierarchy level by a random draw, which ``cv2.setRNGSeed`` does not make
reproducible), and
filtered here:

1. the small-crop rule: a box whose short side in pixels of the query is under ``min_side`` is
   dropped (the rule the ``lv`` matcher applies after scoring, applied before embedding so a view
   that would be dropped is never embedded), as are boxes under ``min_area`` pixels of the query;
2. aspect ratio (long side / short side) at most ``max_aspect``;
3. greedy non-maximum suppression in that order at IoU ``nms_iou``; a box that is nearly the whole
   image (IoU with it above ``nms_iou``) is dropped too, the whole query being a view already;
4. the first ``top_n``.

The views are named ``ss0``, ``ss1``... in that order. :func:`selective_search_views` is a pure
function of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ImsimError
from .views import View


@dataclass(frozen=True)
class ProposalConfig:
    """The filters of :func:`selective_search_views` (see the module docstring)."""

    top_n: int = 10
    side: int = 256
    min_side: int = 100
    min_area: int = 2000
    max_aspect: float = 2.0
    nms_iou: float = 0.5

    def __post_init__(self):
        if int(self.top_n) < 1 or int(self.side) < 16 or int(self.min_side) < 0 or int(self.min_area) < 0:
            raise ImsimError(f"selective search: top_n >= 1, side >= 16, min_side and min_area >= 0, got {self}")
        if float(self.max_aspect) < 1 or not 0 < float(self.nms_iou) <= 1:
            raise ImsimError(f"selective search: max_aspect >= 1 and 0 < nms_iou <= 1, got {self}")


def available() -> bool:
    """True when OpenCV's contrib module with selective search is importable."""
    try:
        import cv2

        return hasattr(cv2, "ximgproc") and hasattr(cv2.ximgproc, "segmentation")
    except ImportError:  # pragma: no cover - cv2 is a dependency
        return False


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` (4,) with boxes ``b`` (k, 4), all (x0, y0, x1, y1)."""
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def raw_proposals(img, side: int = 256) -> np.ndarray:
    """(k, 4) float64 boxes (x0, y0, x1, y1) in pixels of ``img`` (a PIL image), distinct, by area descending."""
    import cv2

    if not available():
        raise ImsimError("selective search needs OpenCV's contrib module (pip install opencv-contrib-python-headless)")
    a = np.asarray(img.convert("RGB"))[:, :, ::-1]
    h, w = a.shape[:2]
    if min(h, w) < 16:  # nothing to propose inside a few pixels
        return np.zeros((0, 4))
    s = min(1.0, float(side) / max(h, w))
    small = cv2.resize(a, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else a
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(small))
    ss.switchToSelectiveSearchFast()
    r = np.unique(np.asarray(ss.process(), np.int64).reshape(-1, 4), axis=0)
    # OpenCV ranks by hierarchy level times a random draw (a generator that cv2.setRNGSeed does not
    # reach): the order here is deterministic instead, larger regions (higher in the hierarchy) first
    r = r[np.lexsort((r[:, 1], r[:, 0], -(r[:, 2] * r[:, 3])))].astype(np.float64)
    sx, sy = w / small.shape[1], h / small.shape[0]
    return np.stack([r[:, 0] * sx, r[:, 1] * sy, (r[:, 0] + r[:, 2]) * sx, (r[:, 1] + r[:, 3]) * sy], 1)


def filter_proposals(px: np.ndarray, size: tuple[int, int], config: ProposalConfig = ProposalConfig()) -> np.ndarray:
    """The rows of ``px`` (k, 4) pixel boxes of an image of ``size`` (w, h) kept by the filters of the
    module docstring, in order, at most ``top_n``: (m,) int64."""
    w, h = (float(v) for v in size)
    b = np.asarray(px, np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    short, long_ = np.minimum(bw, bh), np.maximum(bw, bh)
    ok = (short >= max(int(config.min_side), 1)) & (bw * bh >= int(config.min_area))
    ok &= long_ <= float(config.max_aspect) * np.maximum(short, 1e-12)
    whole = np.array([0.0, 0.0, w, h])
    kept: list[int] = []
    for i in np.flatnonzero(ok):
        if _iou(b[i], whole[None])[0] > config.nms_iou:
            continue
        if kept and (_iou(b[i], b[kept]) > config.nms_iou).any():
            continue
        kept.append(int(i))
        if len(kept) == int(config.top_n):
            break
    return np.asarray(kept, np.int64)


def selective_search_views(img, config: ProposalConfig = ProposalConfig()) -> list[View]:
    """The query views ``ss0``, ``ss1``... of a PIL image (see the module docstring)."""
    w, h = img.size
    px = raw_proposals(img, config.side)
    out = []
    for k, i in enumerate(filter_proposals(px, (w, h), config)):
        x0, y0, x1, y1 = px[i]
        fx0, fy0 = max(0.0, x0 / w), max(0.0, y0 / h)
        fx1, fy1 = min(1.0, x1 / w), min(1.0, y1 / h)
        if fx1 > fx0 and fy1 > fy0:
            out.append(View(f"ss{k}", (fx0, fy0, fx1, fy1)))
    return out
