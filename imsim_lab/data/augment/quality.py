"""Quality edits: blur, noise, JPEG, pixelisation, sharpening, shuffled pixels.

Radii are fractions of the long side, so one strength looks the same on a thumbnail and on a
large image. Noise and shuffling draw from a ``numpy.random.Generator`` seeded by the op's
``seed`` (AugLy's versions reseed numpy's global generator).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ._augly import augly
from .core import Op, geom, lerp, new_seed, register_family, register_op, rnd


@register_op("blur", backend="augly")
def _blur(img, p, assets):
    r = float(p["radius"]) * max(img.size)
    return img.copy() if r <= 0 else augly("blur", img, radius=r)


@register_family("blur", group="quality", identity_at_zero=True)
def blur_family(s, rng, size, assets):
    """Gaussian blur, radius up to 2 % of the long side (about 10 px on a 512 px image)."""
    return [Op("blur", {"radius": rnd(0.02 * s, 6)})]


def gaussian_noise(img: Image.Image, std: float, seed: int, mono: bool = False) -> Image.Image:
    """Add zero-mean Gaussian noise of ``std`` (in 0..1 intensity units), clipped, seeded."""
    if std <= 0:
        return img.copy()
    a = np.asarray(img)
    g = np.random.default_rng(int(seed))
    shape = a.shape[:2] + (1,) if mono else a.shape
    n = g.standard_normal(shape, dtype=np.float32)
    n *= std * 255.0
    n = n + a if mono else np.add(n, a, out=n)
    n += 0.5  # round half up on the cast below
    np.clip(n, 0, 255.49, out=n)
    return Image.fromarray(n.astype(np.uint8), "RGB")


@register_op("noise")
def _noise(img, p, assets):
    return gaussian_noise(img, float(p["std"]), int(p["seed"]), bool(p.get("mono", False)))


@register_family("noise", group="quality", identity_at_zero=True)
def noise_family(s, rng, size, assets):
    """Gaussian noise, standard deviation up to 0.3 of the intensity range, colour or mono."""
    return [Op("noise", {"std": rnd(0.3 * s ** 1.5), "seed": new_seed(rng), "mono": bool(rng.random() < 0.3)})]


@register_op("jpeg", backend="augly")
def _jpeg(img, p, assets):
    return augly("encoding_quality", img, quality=int(p["quality"]))


@register_family("jpeg", group="quality", identity_at_zero=True)
def jpeg_family(s, rng, size, assets):
    """Re-encode as JPEG, quality from 95 (strength 0, near-identity) down to 5."""
    return [Op("jpeg", {"quality": int(round(lerp(95, 5, s)))})]


@register_op("pixelize", backend="augly")
def _pixelize(img, p, assets):
    ratio = float(p["ratio"])
    w, h = img.size
    if ratio >= 1.0:
        return img.copy()
    if int(w * ratio) >= 1 and int(h * ratio) >= 1:
        return augly("pixelization", img, ratio=ratio)
    # AugLy would ask PIL for a zero-sized image: one block per axis instead
    small = img.resize((max(1, int(w * ratio)), max(1, int(h * ratio))))
    return small.resize((w, h))


@register_family("pixelize", group="quality", identity_at_zero=True)
def pixelize_family(s, rng, size, assets):
    """Downsample then upsample: blocks up to 1/0.04 = 25 px wide."""
    return [Op("pixelize", {"ratio": rnd(geom(1.0, 0.04, s))})]


@register_op("sharpen", backend="augly")
def _sharpen(img, p, assets):
    return augly("sharpen", img, factor=float(p["factor"]))


@register_family("sharpen", group="quality", identity_at_zero=True)
def sharpen_family(s, rng, size, assets):
    """Sharpen (PIL ImageEnhance.Sharpness), factor 1 (none) up to 20 (ringing edges)."""
    return [Op("sharpen", {"factor": rnd(geom(1.0, 20.0, s))})]


def shuffle_pixels(img: Image.Image, fraction: float, seed: int) -> Image.Image:
    """Move a random ``fraction`` of the pixels to each other's places (seeded)."""
    a = np.array(img)
    h, w = a.shape[:2]
    n = int(round(fraction * h * w))
    if n < 2:
        return img.copy()
    g = np.random.default_rng(int(seed))
    flat = a.reshape(h * w, -1)
    idx = g.choice(h * w, size=n, replace=False)
    flat[idx] = flat[g.permutation(idx)]
    return Image.fromarray(flat.reshape(a.shape), "RGB")


@register_op("shuffle_pixels")
def _shuffle(img, p, assets):
    return shuffle_pixels(img, float(p["fraction"]), int(p["seed"]))


@register_family("shuffle_pixels", group="quality", identity_at_zero=True)
def shuffle_pixels_family(s, rng, size, assets):
    """Swap a random share of the pixels, up to 50 % of them (salt-like scrambling)."""
    return [Op("shuffle_pixels", {"fraction": rnd(0.5 * s), "seed": new_seed(rng)})]
