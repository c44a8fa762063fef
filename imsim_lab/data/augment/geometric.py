"""Geometric edits: crop, scale, aspect ratio, pad, rotate, flips, perspective, skew.

Boxes, pads and corners are recorded as fractions of the image they apply to. The perspective
warp is written here (AugLy 1.0.0's ``perspective_transform`` fails with numpy 2): the eight
coefficients PIL's ``Image.transform(PERSPECTIVE)`` wants are solved from the four corner
correspondences (``perspective_coeffs``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from ._augly import augly
from .core import AugmentError, Op, geom, lerp, register_family, register_op, rnd, sign

_IDENTITY_CORNERS = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]


def _fill(params: dict, key: str = "fill") -> tuple[int, int, int]:
    c = params.get(key, [0, 0, 0])
    return (int(c[0]), int(c[1]), int(c[2]))


# -- crop ----------------------------------------------------------------------------------------
def crop_box_pixels(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Fractional box (x0, y0, x1, y1) -> pixel box of at least one pixel inside the image."""
    w, h = size
    x0 = min(max(int(math.floor(box[0] * w)), 0), w - 1)
    y0 = min(max(int(math.floor(box[1] * h)), 0), h - 1)
    x1 = min(max(int(math.ceil(box[2] * w)), x0 + 1), w)
    y1 = min(max(int(math.ceil(box[3] * h)), y0 + 1), h)
    return x0, y0, x1, y1


@register_op("crop")
def _crop(img, p, assets):
    return img.crop(crop_box_pixels(p["box"], img.size))


@register_family("crop", group="geometric", identity_at_zero=True)
def crop_family(s, rng, size, assets):
    """Crop a box whose area falls from 100 % to 5 % of the image (position and shape random)."""
    area = geom(1.0, 0.05, s)
    ratio = math.exp(rng.uniform(-1, 1) * math.log(2.0) * s)  # box aspect vs. the image's
    bw, bh = min(1.0, math.sqrt(area * ratio)), min(1.0, math.sqrt(area / ratio))
    x0, y0 = rng.random() * (1 - bw), rng.random() * (1 - bh)
    return [Op("crop", {"box": [rnd(x0), rnd(y0), rnd(x0 + bw), rnd(y0 + bh)]})]


# -- scale and aspect ratio ----------------------------------------------------------------------
@register_op("scale", uncapped=True, backend="augly")
def _scale(img, p, assets):
    f = float(p["factor"])
    if f <= 0:
        raise AugmentError(f"scale factor must be > 0, got {f}")
    w, h = img.size
    if int(w * f) >= 1 and int(h * f) >= 1:
        return augly("scale", img, factor=f)
    # AugLy would ask PIL for a zero-sized image: keep one pixel instead
    return img.resize((max(1, int(w * f)), max(1, int(h * f))), Image.Resampling.LANCZOS)


@register_family("scale", group="geometric", identity_at_zero=True)
def scale_family(s, rng, size, assets):
    """Resize: mostly down to 15 % of each side, sometimes up to 2.5x."""
    f = geom(1.0, 2.5, s) if rng.random() < 0.25 else geom(1.0, 0.15, s)
    return [Op("scale", {"factor": rnd(f)})]


@register_op("aspect_ratio")
def _aspect(img, p, assets):
    c = float(p["change"])
    if c <= 0:
        raise AugmentError(f"aspect ratio change must be > 0, got {c}")
    w, h = img.size
    nw, nh = max(1, round(w * math.sqrt(c))), max(1, round(h / math.sqrt(c)))
    return img if (nw, nh) == (w, h) else img.resize((nw, nh), Image.Resampling.BICUBIC)


@register_family("aspect_ratio", group="geometric", identity_at_zero=True)
def aspect_family(s, rng, size, assets):
    """Stretch one axis and squeeze the other (area kept), width/height ratio changed up to 3x."""
    return [Op("aspect_ratio", {"change": rnd(geom(1.0, 3.0, s) ** sign(rng))})]


# -- pad -----------------------------------------------------------------------------------------
@register_op("pad")
def _pad(img, p, assets):
    w, h = img.size
    left, top, right, bottom = (float(v) for v in p["sides"])
    l_, t_ = round(left * w), round(top * h)
    out = Image.new("RGB", (w + l_ + round(right * w), h + t_ + round(bottom * h)), _fill(p, "color"))
    out.paste(img, (l_, t_))
    return out


@register_family("pad", group="geometric", identity_at_zero=True)
def pad_family(s, rng, size, assets):
    """Add borders of a plain colour, each side up to 60 % of the image side."""
    sides = [rnd(s * 0.6 * u) for u in rng.uniform(0.2, 1.0, 4)]
    col = [0, 0, 0] if rng.random() < 0.4 else ([255] * 3 if rng.random() < 0.5 else
                                                [int(v) for v in rng.integers(0, 256, 3)])
    return [Op("pad", {"sides": sides, "color": col})]


# -- rotate and flips ----------------------------------------------------------------------------
@register_op("rotate", backend="augly")
def _rotate(img, p, assets):
    deg = float(p["degrees"])
    if p.get("crop", False):
        out = augly("rotate", img, degrees=deg)
        return out if out.width >= 1 and out.height >= 1 else img.crop((0, 0, 1, 1))
    return img.rotate(deg, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=_fill(p))


@register_family("rotate", group="geometric", identity_at_zero=True)
def rotate_family(s, rng, size, assets):
    """Rotate up to 180 degrees, corners filled (black or a colour) or cropped away."""
    deg = sign(rng) * 180.0 * s
    crop = bool(rng.random() < 0.3)
    fill = [0, 0, 0] if rng.random() < 0.6 else [int(v) for v in rng.integers(0, 256, 3)]
    return [Op("rotate", {"degrees": rnd(deg, 3), "crop": crop, "fill": fill})]


@register_op("hflip", backend="augly")
def _hflip(img, p, assets):
    return augly("hflip", img)


@register_op("vflip", backend="augly")
def _vflip(img, p, assets):
    return augly("vflip", img)


@register_family("hflip", group="geometric", identity_at_zero=False)
def hflip_family(s, rng, size, assets):
    """Mirror left-right (no strength: the same at every strength)."""
    return [Op("hflip", {})]


@register_family("vflip", group="geometric", identity_at_zero=False)
def vflip_family(s, rng, size, assets):
    """Mirror top-bottom (no strength: the same at every strength)."""
    return [Op("vflip", {})]


# -- perspective ---------------------------------------------------------------------------------
def perspective_coeffs(dst: Sequence[Sequence[float]], src: Sequence[Sequence[float]]) -> list[float]:
    """Coefficients (a..h) of the projective map sending each ``dst`` point to its ``src`` point.

    PIL's ``Image.transform(size, PERSPECTIVE, data)`` samples the input at
    ``((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1))`` for each output
    pixel (x, y), so ``dst`` are output positions and ``src`` input positions.

    Args:
        dst: 4 points (x, y) in the output, in pixels.
        src: the 4 matching points in the input, in pixels.

    Returns:
        8 floats; raises :class:`AugmentError` when three points are collinear.
    """
    A = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(dst, src)):
        A[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        A[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    try:
        coeffs = np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        raise AugmentError(f"perspective corners {list(dst)} are degenerate (three collinear)") from None
    if not np.all(np.isfinite(coeffs)):
        raise AugmentError(f"perspective corners {list(dst)} give a non-finite transform")
    return [float(c) for c in coeffs]


def perspective(img: Image.Image, corners: Sequence[Sequence[float]],
                fill: Sequence[int] = (0, 0, 0)) -> Image.Image:
    """Warp ``img`` so that its corners (tl, tr, br, bl) land at ``corners`` (fractions of its size).

    The output has the input's size; what the warped image does not cover is ``fill``.
    Identity corners return an identical copy.
    """
    w, h = img.size
    corners = [[float(x), float(y)] for x, y in corners]
    if len(corners) != 4:
        raise AugmentError(f"perspective needs 4 corners, got {len(corners)}")
    if corners == _IDENTITY_CORNERS:
        return img.copy()
    dst = [(x * w, y * h) for x, y in corners]
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    coeffs = perspective_coeffs(dst, src)
    return img.transform((w, h), Image.Transform.PERSPECTIVE, coeffs,
                         resample=Image.Resampling.BICUBIC, fillcolor=tuple(int(c) for c in fill))


@register_op("perspective")
def _perspective(img, p, assets):
    return perspective(img, p["corners"], _fill(p))


@register_family("perspective", group="geometric", identity_at_zero=True)
def perspective_family(s, rng, size, assets):
    """Move each corner independently by up to 30 % of the side (a photo taken at an angle)."""
    d = 0.3 * s
    off = rng.uniform(-1, 1, (4, 2)) * d
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    # corners mostly move inward so that the picture stays on the canvas
    off = np.where(rng.random((4, 2)) < 0.8, np.abs(off) * inward, off)
    corners = [[rnd(c[0] + o[0]), rnd(c[1] + o[1])] for c, o in zip(_IDENTITY_CORNERS, off)]
    fill = [0, 0, 0] if rng.random() < 0.6 else [int(v) for v in rng.integers(0, 256, 3)]
    return [Op("perspective", {"corners": corners, "fill": fill})]


# -- skew ----------------------------------------------------------------------------------------
@register_op("skew", backend="augly")
def _skew(img, p, assets):
    f = float(p["factor"])
    return img.copy() if f == 0 else augly("skew", img, skew_factor=f, axis=int(p["axis"]))


@register_family("skew", group="geometric", identity_at_zero=True)
def skew_family(s, rng, size, assets):
    """Shear along x or y, up to 0.8 (a 39-degree slant)."""
    return [Op("skew", {"factor": rnd(sign(rng) * lerp(0, 0.8, s)), "axis": int(rng.integers(2))})]
