"""The photographic finish of disc-synth scenes: framing, photo micro-texture, tone.

Measured with SSCD (``data_manifests/disc-synth.md``), three steps applied after a scene is
drawn bring distinct synthetic originals further apart than any change of a single family:

* :func:`reframe`: a random crop-and-zoom of the drawn canvas (1x to 2.2x), so that two scenes
  of one family do not share the scale and place of their parts;
* :func:`photo_detail`: the high-passed luminance of a random crop of one of the packaged
  natural photos, magnified, rotated or mirrored, multiplied into the canvas: the fine
  structure (grain of materials, foliage, fur) that drawn shapes lack. It is a texture, not a
  copy: the finished image is no closer to its donor photo under SSCD than to any other photo;
* :func:`tone_curve`: a random monotone curve per channel and a saturation change, applied as
  look-up tables on the 8-bit image (the colour rendition of a camera or a filter).

A step that did not lower the statistics (uniform 1/f grain over the whole image, patchwork
of small photo patches) is not here; the figures of each attempt are in the recipe.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageEnhance

from .photos import fit_long_side, packaged_photos

#: long side of the luminance arrays kept per process for :func:`photo_detail`
TEXTURE_LONG_SIDE = 512


@lru_cache(maxsize=1)
def photo_textures() -> tuple[np.ndarray, ...]:
    """Luminance of the packaged photos as uint8 arrays, in the packaged order (cached)."""
    out = []
    for p in packaged_photos():
        with Image.open(p.path) as im:
            out.append(np.asarray(fit_long_side(im.convert("L"), TEXTURE_LONG_SIDE), np.uint8))
    return tuple(out)


def reframe(canvas: np.ndarray, rng: np.random.Generator, max_zoom: float = 3.0) -> np.ndarray:
    """A random crop of ``canvas`` (zoom 1 to ``max_zoom``) resized back to the full size.

    Args:
        canvas: (h, w, 3) float32 in [0, 1].

    Returns:
        (h, w, 3) float32 in [0, 1].
    """
    h, w = canvas.shape[:2]
    z = float(rng.uniform(1.0, max_zoom))
    cw, ch = max(int(w / z), 8), max(int(h / z), 8)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    if z < 1.02:
        return np.clip(canvas, 0, 1)
    im = Image.fromarray(_u8(canvas[y0:y0 + ch, x0:x0 + cw]), "RGB").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(im, np.float32) / 255


def photo_detail(canvas: np.ndarray, rng: np.random.Generator, strength: tuple[float, float] = (0.5, 1.2),
                 textures: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Multiply the high-passed luminance of a random photo crop into ``canvas``.

    Args:
        canvas: (h, w, 3) float32.
        strength: range of the gain of the high-pass detail.
        textures: uint8 luminance arrays to draw from (default: :func:`photo_textures`); an empty
            tuple leaves the canvas as it is.

    Returns:
        (h, w, 3) float32 (not clipped).
    """
    tex = photo_textures() if textures is None else textures
    if not tex:
        return canvas
    h, w = canvas.shape[:2]
    src = tex[int(rng.integers(len(tex)))]
    turn = bool(rng.random() < 0.5)
    sh, sw = src.shape
    th, tw = (w, h) if turn else (h, w)  # the crop's shape before a quarter turn
    ch = min(sh, max(int(th * rng.uniform(0.3, 1.0)), 8))
    cw = min(sw, max(int(tw * rng.uniform(0.3, 1.0)), 8))
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    im = Image.fromarray(np.ascontiguousarray(src[y0:y0 + ch, x0:x0 + cw]), "L")
    if turn:
        im = im.transpose(Image.Transpose.ROTATE_90)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    t = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255
    f = 6
    lo = im.resize((max(w // f, 1), max(h // f, 1)), Image.Resampling.BOX).resize((w, h), Image.Resampling.BILINEAR)
    hp = t - np.asarray(lo, np.float32) / 255
    gain = np.float32(rng.uniform(*strength))
    return canvas * (1 + gain * hp)[..., None]


def tone_curve(img: Image.Image, rng: np.random.Generator, spread: float = 0.08,
               saturation: tuple[float, float] = (0.4, 1.4)) -> Image.Image:
    """A random monotone tone curve per channel (5 knots) and a saturation change, on 8-bit RGB."""
    xs = np.linspace(0, 1, 5)
    luts = []
    for _ in range(3):
        ys = np.sort(np.clip(xs + rng.normal(0, spread, 5), 0, 1))
        ys[0] = min(ys[0], 0.05)
        luts += (np.interp(np.arange(256) / 255, xs, ys) * 255 + 0.5).astype(np.uint8).tolist()
    out = img.point(luts)
    return ImageEnhance.Color(out).enhance(float(rng.uniform(*saturation)))


def _u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


__all__ = ["photo_textures", "reframe", "photo_detail", "tone_curve", "TEXTURE_LONG_SIDE"]
