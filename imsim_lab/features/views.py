"""Sub-image views: boxes and rotations of an image, described, never written to disk.

A :class:`View` is a box given as fractions ``(x0, y0, x1, y1)`` of its parent image and a
rotation (counter-clockwise degrees, the convention of ``PIL.Image.rotate`` and ``np.rot90``) applied
after the crop. :data:`VIEWS` is a registry of generators ``(size) -> list[View]`` (``size`` is the
parent's ``(w, h)`` in pixels), so a set may depend on the image (detector boxes do).

The sets follow the matching-track winners (``docs/methods.md``):

* D2LV (Wang et al., arXiv 2111.07090; their ``Test/augmentation/``): ``d2lv_query`` (original, rotations 90/180/270, centre
  crop [0.25, 0.75]², four overlapping half-size crops) and ``d2lv_reference`` (19: original, 2x2
  grid, centre crop, 3x3 grid, the four overlapping halves). The recipe places the halves "at
  [1/6, 3/6] and [3/6, 5/6]"; a half-size crop cannot span a third, so here each half is centred
  on the middle of those intervals (1/3 and 2/3): [1/12, 7/12] and [5/12, 11/12], overlapping by
  1/6 (:data:`D2LV_HALF_CENTRES`).
* SeungKee Jeon (arXiv 2111.09113): ``half_strips`` (three full-height halves at x = 0, 1/4, 1/2 and three
  full-width halves at y = 0, 1/4, 1/2; the original code's third y offset is 3/4, which runs off
  the image, so the symmetric offsets are used), ``half_grid`` (3x3 of 1/2 x 1/2, stride 1/4),
  ``third_grid`` (5x5 of 1/3 x 1/3, stride 1/6) and ``pairvit_query`` (the 8 re-scoring views:
  whole, whole rotated 90, left / right / vertical-centre halves, and the top / bottom /
  horizontal-centre halves rotated 90 so that they stand upright like the others).

Detector boxes in pixels become views with :func:`boxes`; :func:`oracle_boxes` gives the box of
the source image inside a disc-synth query from its recorded ops (see :mod:`.oracle`).

A view whose short side in pixels is below ``min_side`` is not made (:func:`too_small`): a few
pixels upsampled to the model's input size are noise, not a sub-image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import ImsimError
from ..registry import Registry

ROTATIONS = (0, 90, 180, 270)
#: centres of D2LV's overlapping half-size crops, in each axis (see the module docstring)
D2LV_HALF_CENTRES = (1 / 3, 2 / 3)


class ViewError(ImsimError):
    """A view, a view set or an oracle box that cannot be made; the message names which."""


@dataclass(frozen=True)
class View:
    """One sub-image of a parent image.

    Attributes:
        name: unique within its set (``"whole"``, ``"g3_1_2"``, ``"rot90"``...).
        box: ``(x0, y0, x1, y1)`` fractions of the parent, ``0 <= x0 < x1 <= 1`` (same for y).
        rotation: counter-clockwise degrees applied after the crop, one of :data:`ROTATIONS`.
    """

    name: str
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    rotation: int = 0

    def __post_init__(self):
        box = tuple(float(v) for v in self.box)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "rotation", int(self.rotation))
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ViewError(f"view {self.name!r}: box must be 4 finite fractions, got {self.box}")
        x0, y0, x1, y1 = box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ViewError(f"view {self.name!r}: box {box} is not inside [0, 1] with x0 < x1, y0 < y1")
        if self.rotation not in ROTATIONS:
            raise ViewError(f"view {self.name!r}: rotation must be one of {ROTATIONS}, got {self.rotation}")

    @property
    def is_whole(self) -> bool:
        """True for the unrotated whole image."""
        return self.box == (0.0, 0.0, 1.0, 1.0) and self.rotation == 0


ViewGenerator = Callable[[tuple[int, int]], list[View]]
VIEWS: Registry[ViewGenerator] = Registry("view set")

WHOLE = View("whole")


def _fixed(name: str, make: Callable[[], list[View]]) -> None:
    views = make()
    names = [v.name for v in views]
    if len(set(names)) != len(names):  # pragma: no cover - a programming error in this file
        raise ViewError(f"view set {name!r} repeats a view name")
    VIEWS.add(name, lambda size, views=tuple(views): list(views))


def grid(n: int, size: float | None = None, stride: float | None = None, prefix: str = "g") -> list[View]:
    """An ``n x n`` grid of square-fraction crops, row-major.

    Args:
        n: cells per side.
        size: cell side as a fraction (default ``1 / n``: a tiling).
        stride: offset between cells (default ``size``); ``(n - 1) * stride + size <= 1``.
        prefix: view names are ``f"{prefix}{n}_{row}_{col}"``.
    """
    size = 1.0 / n if size is None else float(size)
    stride = size if stride is None else float(stride)
    if (n - 1) * stride + size > 1.0 + 1e-9:
        raise ViewError(f"grid {n}x{n} of size {size} and stride {stride} runs off the image")
    out = []
    for r in range(n):
        for c in range(n):
            x0, y0 = c * stride, r * stride
            out.append(View(f"{prefix}{n}_{r}_{c}", (x0, y0, min(1.0, x0 + size), min(1.0, y0 + size))))
    return out


def center(lo: float = 0.25, hi: float = 0.75) -> View:
    return View("center", (lo, lo, hi, hi))


def rotations() -> list[View]:
    return [View(f"rot{r}", rotation=r) for r in (90, 180, 270)]


def d2lv_halves() -> list[View]:
    """D2LV's four overlapping half-size crops (see :data:`D2LV_HALF_CENTRES`)."""
    spans = [(c - 0.25, c + 0.25) for c in D2LV_HALF_CENTRES]
    return [View(f"half_{r}{c}", (xs[0], ys[0], xs[1], ys[1]))
            for r, ys in enumerate(spans) for c, xs in enumerate(spans)]


def half_strips() -> list[View]:
    """Three full-height halves (x offsets 0, 1/4, 1/2) and three full-width halves (same in y)."""
    offs = (0.0, 0.25, 0.5)
    return ([View(f"vstrip{i}", (o, 0.0, o + 0.5, 1.0)) for i, o in enumerate(offs)]
            + [View(f"hstrip{i}", (0.0, o, 1.0, o + 0.5)) for i, o in enumerate(offs)])


def pairvit_query() -> list[View]:
    """SeungKee Jeon's 8 re-scoring views (their ``eval_half.py``; arXiv 2111.09113)."""
    return [WHOLE, View("rot90", rotation=90),
            View("left", (0.0, 0.0, 0.5, 1.0)), View("right", (0.5, 0.0, 1.0, 1.0)),
            View("vcenter", (0.25, 0.0, 0.75, 1.0)),
            View("top", (0.0, 0.0, 1.0, 0.5), 90), View("bottom", (0.0, 0.5, 1.0, 1.0), 90),
            View("hcenter", (0.0, 0.25, 1.0, 0.75), 90)]


_fixed("identity", lambda: [WHOLE])
_fixed("rotations", rotations)
_fixed("center", lambda: [center()])
_fixed("grid2x2", lambda: grid(2))
_fixed("grid3x3", lambda: grid(3))
_fixed("d2lv_query", lambda: [WHOLE, *rotations(), center(), *d2lv_halves()])
_fixed("d2lv_reference", lambda: [WHOLE, *grid(2), center(), *grid(3), *d2lv_halves()])
_fixed("half_strips", half_strips)
_fixed("half_grid", lambda: grid(3, 0.5, 0.25, prefix="hg"))
_fixed("third_grid", lambda: grid(5, 1 / 3, 1 / 6, prefix="tg"))
_fixed("pairvit_query", pairvit_query)


def make_views(names: str | Sequence[str], size: tuple[int, int]) -> list[View]:
    """The views of one or several registered sets for an image of ``size`` (w, h), in order,
    each name once (a view already given by an earlier set is not repeated)."""
    names = [names] if isinstance(names, str) else list(names)
    out, seen = [], {}
    for n in names:
        for v in VIEWS.get(n)(tuple(size)):
            if v.name in seen:
                if seen[v.name] != v:
                    raise ViewError(f"view sets {names}: two different views are named {v.name!r}")
                continue
            seen[v.name] = v
            out.append(v)
    return out


def boxes(pixel_boxes: np.ndarray, size: tuple[int, int], prefix: str = "det", rotation: int = 0) -> list[View]:
    """Views from pixel boxes (a detector's), clipped to the image; empty boxes are dropped.

    Args:
        pixel_boxes: (k, 4) ``x0, y0, x1, y1`` in pixels of the parent.
        size: the parent's (w, h).
        prefix: view names are ``f"{prefix}{i}"`` with ``i`` the row in ``pixel_boxes``.
    """
    b = np.asarray(pixel_boxes, dtype=np.float64).reshape(-1, 4)
    w, h = (float(v) for v in size)
    out = []
    for i, (x0, y0, x1, y1) in enumerate(b):
        fx0, fx1 = max(0.0, x0 / w), min(1.0, x1 / w)
        fy0, fy1 = max(0.0, y0 / h), min(1.0, y1 / h)
        if fx1 > fx0 and fy1 > fy0:
            out.append(View(f"{prefix}{i}", (fx0, fy0, fx1, fy1), rotation))
    return out


def pixel_box(view: View, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The view's box in pixels of a parent of ``size`` (w, h): rounded edges, at least 1 px, so
    that the cells of a tiling grid neither overlap nor leave gaps."""
    w, h = size
    x0 = min(int(round(view.box[0] * w)), w - 1)
    y0 = min(int(round(view.box[1] * h)), h - 1)
    return x0, y0, max(x0 + 1, int(round(view.box[2] * w))), max(y0 + 1, int(round(view.box[3] * h)))


def view_size(view: View, size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) in pixels of the view as :func:`apply_view` makes it (after the rotation)."""
    x0, y0, x1, y1 = pixel_box(view, size)
    return (y1 - y0, x1 - x0) if view.rotation in (90, 270) else (x1 - x0, y1 - y0)


def too_small(view: View, size: tuple[int, int], min_side: int) -> bool:
    """True when the view's short side is below ``min_side`` pixels (the view is not made)."""
    return min(view_size(view, size)) < int(min_side)


_TRANSPOSE = {90: 2, 180: 3, 270: 4}  # PIL.Image.Transpose.ROTATE_90 / _180 / _270 (counter-clockwise)


def apply_view(img, view: View):
    """The view of a PIL image: crop :func:`pixel_box`, then rotate (lossless transpose).

    Args:
        img: PIL image of size (w, h).

    Returns:
        a new PIL image of :func:`view_size`.
    """
    out = img.crop(pixel_box(view, img.size))
    return out.transpose(_TRANSPOSE[view.rotation]) if view.rotation else out


def parent_size_for(views: Sequence[View], width: int, height: int) -> tuple[int, int]:
    """The smallest parent ``(w, h)`` in pixels from which every view of ``views``, resized to
    ``width`` x ``height``, is still a reduction and not an enlargement (a rotation by 90 or 270
    swaps which side of the box becomes the output's width). A decoder may then decode a larger
    image at reduced scale (``Image.draft``) and lose nothing the views keep."""
    need_w, need_h = 1, 1
    for v in views:
        x0, y0, x1, y1 = v.box
        ow, oh = (height, width) if v.rotation in (90, 270) else (width, height)
        need_w = max(need_w, math.ceil(ow / (x1 - x0) - 1e-9))
        need_h = max(need_h, math.ceil(oh / (y1 - y0) - 1e-9))
    return need_w, need_h


def oracle_boxes(bench, query_id: str) -> list[View]:
    """The box of the source image inside a disc-synth query, from its recorded ops.

    Returns ``[View("oracle", box)]``; the handled ops and the chains that raise
    :class:`ViewError` are listed in :mod:`imsim_lab.features.oracle`.
    """
    from .oracle import bench_source_box

    sb = bench_source_box(bench, query_id)
    return [View("oracle", sb.box)]
