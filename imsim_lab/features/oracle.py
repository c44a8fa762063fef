"""Where the source image lies inside a disc-synth query, replayed from the recorded ops.

Each query of a disc-synth benchmark records its edit as ops (``queries.parquet`` column ``ops``,
replayed by :func:`imsim_lab.data.augment.apply_ops`). :func:`trace_source_box` follows the
rectangle of the source image through those ops without touching a pixel: it tracks the image
size and the source's box in pixels, op by op, with the same rounding as the op (and the
:data:`~imsim_lab.data.augment.core.MAX_SIDE` cap that ``apply_op`` adds after each op).

Handled exactly (axis-aligned): every op that keeps the geometry (photometric, quality, text,
emoji, stripes, ``overlay_image``: the source is the background there, so its box is the whole
query), ``crop``, ``scale``, ``aspect_ratio``, ``pad``, ``hflip``, ``vflip``, ``paste`` (the source
fitted into the background; needs the background's size), ``combine`` (``blend``: whole image;
``collage``: the source's tile, cover-cropped as ``ImageOps.fit`` does), ``meme`` and
``feed_frame``. Warps (``rotate`` without crop, ``perspective``, ``skew``, ``airgap``) give the
axis-aligned bounding box of the warped source (``SourceBox.warped``). Not handled (raise
:class:`~imsim_lab.features.views.ViewError` naming the op): ``screenshot`` (the AugLy template's
geometry), ``rotate`` with ``crop`` (AugLy's inscribed crop) and unknown ops; a chain holding
one of them is not handled either. Taught with the views of ``notebooks/`` on D2LV and imgFp.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..data.augment.composite import collage_layout
from ..data.augment.core import MAX_SIDE
from ..data.augment.geometric import crop_box_pixels, perspective_coeffs
from .views import ViewError

#: ops that keep the image size and move nothing
SAME_GEOMETRY = frozenset({
    "brightness", "contrast", "saturation", "color_jitter", "grayscale", "opacity", "channels",
    "blur", "noise", "jpeg", "pixelize", "sharpen", "shuffle_pixels", "text", "emoji", "stripes",
    "overlay_image",
})


@dataclass(frozen=True)
class SourceBox:
    """The source's box in a query.

    Attributes:
        box: ``(x0, y0, x1, y1)`` fractions of the query.
        pixels: the same box in pixels (floats) of an image of ``size``.
        size: the query's (w, h) as the ops make it.
        warped: True when an op warped the source (the box is then its bounding box).
    """

    box: tuple[float, float, float, float]
    pixels: tuple[float, float, float, float]
    size: tuple[int, int]
    warped: bool


class _Trace:
    def __init__(self, size):
        self.w, self.h = int(size[0]), int(size[1])
        self.b = np.array([0.0, 0.0, self.w, self.h])
        self.warped = False

    def resize(self, nw: int, nh: int) -> None:
        self.b *= [nw / self.w, nh / self.h, nw / self.w, nh / self.h]
        self.w, self.h = int(nw), int(nh)

    def cap(self) -> None:
        if max(self.w, self.h) > MAX_SIDE:
            f = MAX_SIDE / max(self.w, self.h)
            self.resize(max(1, round(self.w * f)), max(1, round(self.h * f)))

    def place(self, nw: int, nh: int, sx: float, sy: float, dx: float, dy: float) -> None:
        """The image becomes (nw, nh); a point (x, y) moves to (x sx + dx, y sy + dy)."""
        x0, y0, x1, y1 = self.b * [sx, sy, sx, sy] + [dx, dy, dx, dy]
        self.b = np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])  # a flip swaps the edges
        self.w, self.h = int(nw), int(nh)

    def warp(self, nw: int, nh: int, fwd: Callable[[np.ndarray], np.ndarray]) -> None:
        """A non-axis-aligned map: the box becomes the bounding box of its mapped corners."""
        x0, y0, x1, y1 = self.b
        pts = fwd(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64))
        self.b = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
        self.w, self.h = int(nw), int(nh)
        self.warped = True

    def clip(self, x0=0.0, y0=0.0, x1=None, y1=None) -> None:
        x1 = self.w if x1 is None else x1
        y1 = self.h if y1 is None else y1
        self.b = np.array([max(self.b[0], x0), max(self.b[1], y0), min(self.b[2], x1), min(self.b[3], y1)])


def _affine_inverse(a, b, c, d, e, f) -> Callable[[np.ndarray], np.ndarray]:
    """Forward map of PIL's ``AFFINE`` data (which maps output pixels to input pixels)."""
    m = np.linalg.inv(np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]]))
    return lambda p: p @ m[:2, :2].T + m[:2, 2]


def _homography(src, dst) -> Callable[[np.ndarray], np.ndarray]:
    """The projective map sending each ``src`` point to its ``dst`` point."""
    a, b, c, d, e, f, g, h = perspective_coeffs(src, dst)  # "dst -> src" of PIL, here src -> dst

    def fwd(p):
        den = g * p[:, 0] + h * p[:, 1] + 1.0
        return np.stack([(a * p[:, 0] + b * p[:, 1] + c) / den, (d * p[:, 0] + e * p[:, 1] + f) / den], 1)

    return fwd


def _rotate(t: _Trace, deg: float) -> None:
    # PIL's Image.rotate(expand=True): the matrix maps output to input, about the centre
    w, h = t.w, t.h
    r = -math.radians(deg)
    m = [round(math.cos(r), 15), round(math.sin(r), 15), 0.0, round(-math.sin(r), 15), round(math.cos(r), 15), 0.0]

    def tr(x, y):
        return m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]

    m[2], m[5] = tr(-w / 2, -h / 2)
    m[2] += w / 2
    m[5] += h / 2
    xs, ys = zip(*(tr(x, y) for x, y in ((0, 0), (w, 0), (w, h), (0, h))))
    nw, nh = math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys))
    m[2], m[5] = tr(-(nw - w) / 2.0, -(nh - h) / 2.0)
    t.warp(nw, nh, _affine_inverse(*m))


def _fit_crop(w: int, h: int, tw: int, th: int) -> tuple[float, float, float, float]:
    """The part of a (w, h) image that ``ImageOps.fit(img, (tw, th))`` keeps (centred)."""
    live, out = w / h, tw / th
    cw, ch = (w, h) if live == out else ((out * h, h) if live >= out else (w, w / out))
    return (w - cw) / 2, (h - ch) / 2, cw, ch


def _collage(t: _Trace, p: dict) -> None:
    n = len(p["others"]) + 1
    tiles = collage_layout(n, float(p["split"]), float(p["split2"]), bool(p["horizontal"]))
    tx0, ty0, tx1, ty1 = tiles[int(p["slot"])]
    W, H = t.w / (tx1 - tx0), t.h / (ty1 - ty0)
    f = min(1.0, MAX_SIDE / max(W, H))
    W, H = max(2, int(round(W * f))), max(2, int(round(H * f)))
    g = int(round(float(p["gap"]) * min(W, H) / 2))
    X0, Y0 = round(tx0 * W) + g, round(ty0 * H) + g
    X1, Y1 = round(tx1 * W) - g, round(ty1 * H) - g
    if X1 <= X0 or Y1 <= Y0:
        raise ViewError(f"combine op: the source's tile is empty (gap {p['gap']})")
    cx, cy, cw, ch = _fit_crop(t.w, t.h, X1 - X0, Y1 - Y0)
    sx, sy = (X1 - X0) / cw, (Y1 - Y0) / ch
    t.place(W, H, sx, sy, X0 - cx * sx, Y0 - cy * sy)
    t.clip(X0, Y0, X1, Y1)


def _airgap(t: _Trace, p: dict) -> None:
    b = int(round(float(p["bezel"]) * max(t.w, t.h)))
    if b > 0:
        t.place(t.w + 2 * b, t.h + 2 * b, 1.0, 1.0, b, b)
    m = float(p["margin"])
    if m > 0 or any(abs(v) > 0 for xy in p["jitter"] for v in xy):
        pw, ph = t.w, t.h
        W, H = int(round(pw * (1 + 2 * m))), int(round(ph * (1 + 2 * m)))
        base = [[m, m], [1 + m, m], [1 + m, 1 + m], [m, 1 + m]]
        dst = [((bx + jx) * pw, (by + jy) * ph) for (bx, by), (jx, jy) in zip(base, p["jitter"])]
        t.warp(W, H, _homography([(0, 0), (pw, 0), (pw, ph), (0, ph)], dst))


def _op(t: _Trace, name: str, p: dict, size_of: Callable[[str], tuple[int, int]]) -> None:
    w, h = t.w, t.h
    if name in SAME_GEOMETRY:
        return
    if name == "crop":
        x0, y0, x1, y1 = crop_box_pixels(p["box"], (w, h))
        t.place(x1 - x0, y1 - y0, 1.0, 1.0, -x0, -y0)
    elif name == "scale":
        f = float(p["factor"])
        t.resize(max(1, int(w * f)), max(1, int(h * f)))
    elif name == "aspect_ratio":
        c = math.sqrt(float(p["change"]))
        t.resize(max(1, round(w * c)), max(1, round(h / c)))
    elif name == "pad":
        left, top, right, bottom = (float(v) for v in p["sides"])
        lx, ty = round(left * w), round(top * h)
        t.place(w + lx + round(right * w), h + ty + round(bottom * h), 1.0, 1.0, lx, ty)
    elif name == "hflip":
        t.place(w, h, -1.0, 1.0, w, 0.0)
    elif name == "vflip":
        t.place(w, h, 1.0, -1.0, 0.0, h)
    elif name == "rotate":
        if p.get("crop", False):
            raise ViewError("rotate op with crop=True: AugLy's inscribed crop is not modelled")
        _rotate(t, float(p["degrees"]))
    elif name == "perspective":
        dst = [(float(x) * w, float(y) * h) for x, y in p["corners"]]
        t.warp(w, h, _homography([(0, 0), (w, 0), (w, h), (0, h)], dst))
    elif name == "skew":
        f = float(p["factor"])
        if f != 0:
            data = (1, f, -f * h / 2, 0, 1, 0) if int(p["axis"]) == 0 else (1, 0, 0, f, 1, -f * w / 2)
            t.warp(w, h, _affine_inverse(*data))
    elif name == "paste":
        bw, bh = _capped(size_of(str(p["background"])))
        fit = min(float(p["size"]) * bw / w, float(p["size"]) * bh / h)
        pw, ph = max(1, int(round(w * fit))), max(1, int(round(h * fit)))
        x, y = int(round(float(p["x"]) * (bw - pw))), int(round(float(p["y"]) * (bh - ph)))
        t.place(bw, bh, pw / w, ph / h, x, y)
        t.clip()
    elif name == "combine":
        if p["mode"] != "blend":
            _collage(t, p)
    elif name == "meme":
        if p.get("style", "band") == "band":
            bh = max(1, int(round(float(p["band"]) * h)))
            t.place(w, h + bh, 1.0, 1.0, 0.0, bh)
    elif name == "feed_frame":
        unit = max(2, int(round(float(p["margin"]) * w)))
        pad = max(1, unit // 4)
        t.place(w + 2 * pad, unit + h + int(unit * 0.7) + int(unit * 0.6) + 2 * pad, 1.0, 1.0, pad, pad + unit)
    elif name == "airgap":
        _airgap(t, p)
    else:
        raise ViewError(f"{name} op: the geometry of this op is not modelled (no oracle box)")
    t.clip()
    if name != "scale":  # apply_op caps every op's output but scale's
        t.cap()


def _capped(size) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if max(w, h) <= MAX_SIDE:
        return w, h
    f = MAX_SIDE / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def trace_source_box(ops: Sequence[dict], source_size: tuple[int, int],
                     size_of: Callable[[str], tuple[int, int]] | None = None) -> SourceBox:
    """The box of the source image in the image that ``apply_ops(source, ops)`` makes.

    Args:
        ops: recorded ops, dicts ``{"name", "params"}`` (or :class:`~imsim_lab.data.augment.Op`).
        source_size: the source image's (w, h) before the ops.
        size_of: ``image id -> (w, h)`` of other images (``paste`` backgrounds).

    Returns:
        :class:`SourceBox`; raises :class:`ViewError` naming the op when it is not handled or when
        the source ends up outside the image.
    """
    t = _Trace(_capped(source_size))
    for k, op in enumerate(ops):
        name, params = (op["name"], op.get("params", {})) if isinstance(op, dict) else (op.name, op.params)
        if name == "paste" and size_of is None:
            raise ViewError(f"op {k} (paste): the background's size is needed (size_of=)")
        try:
            _op(t, str(name), dict(params), size_of)
        except ViewError as e:
            raise ViewError(f"op {k}: {e}") from None
        if t.b[2] - t.b[0] <= 0 or t.b[3] - t.b[1] <= 0:
            raise ViewError(f"op {k} ({name}): the source is no longer inside the image")
    x0, y0, x1, y1 = (float(v) for v in t.b)
    frac = (x0 / t.w, y0 / t.h, x1 / t.w, y1 / t.h)
    return SourceBox(tuple(min(1.0, max(0.0, v)) for v in frac), (x0, y0, x1, y1), (t.w, t.h), t.warped)


def image_size(path) -> tuple[int, int]:
    """(w, h) from the file header (no decoding)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def bench_source_box(bench, query_id: str) -> SourceBox:
    """:func:`trace_source_box` for a query of a benchmark with recorded ops (disc-synth).

    Raises:
        ViewError: the query has no recorded ops or source, or an op is not handled.
    """
    q = bench.queries
    row = q.loc[q["query_id"] == str(query_id)]
    if row.empty:
        raise ViewError(f"{bench.root}: unknown query {query_id}")
    source, ops = str(row["source_id"].iloc[0]), row["ops"].iloc[0]
    if not source or not isinstance(ops, str) or not ops:
        raise ViewError(f"{bench.root}: query {query_id} has no recorded source or ops")
    sizes = {}

    def size_of(image_id: str) -> tuple[int, int]:
        if image_id not in sizes:
            sizes[image_id] = image_size(bench.image_path(image_id))
        return sizes[image_id]

    try:
        return trace_source_box(json.loads(ops), size_of(source), size_of)
    except ViewError as e:
        raise ViewError(f"{bench.root}: query {query_id}: {e}") from None
