"""Colour edits: brightness, contrast, saturation, colour jitter, grayscale, opacity, channels.

Factors are multiplicative (1 = unchanged); the sampler picks the direction (darker or brighter)
and the strength sets how far from 1 the factor goes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ._augly import augly
from .core import AugmentError, Op, geom, lerp, register_family, register_op, rnd, sign


def _factor(s: float, rng: np.random.Generator, low: float, high: float) -> float:
    """1 at strength 0; at strength 1 either ``low`` (< 1) or ``high`` (> 1), half the time each."""
    return geom(1.0, low, s) if rng.random() < 0.5 else geom(1.0, high, s)


@register_op("brightness", backend="augly")
def _brightness(img, p, assets):
    return augly("brightness", img, factor=float(p["factor"]))


@register_op("contrast", backend="augly")
def _contrast(img, p, assets):
    return augly("contrast", img, factor=float(p["factor"]))


@register_op("saturation", backend="augly")
def _saturation(img, p, assets):
    return augly("saturation", img, factor=float(p["factor"]))


@register_family("brightness", group="photometric", identity_at_zero=True)
def brightness_family(s, rng, size, assets):
    """Darken down to a factor 0.15 or brighten up to 3x."""
    return [Op("brightness", {"factor": rnd(_factor(s, rng, 0.15, 3.0))})]


@register_family("contrast", group="photometric", identity_at_zero=True)
def contrast_family(s, rng, size, assets):
    """Flatten down to a factor 0.15 or boost up to 4x."""
    return [Op("contrast", {"factor": rnd(_factor(s, rng, 0.15, 4.0))})]


@register_family("saturation", group="photometric", identity_at_zero=True)
def saturation_family(s, rng, size, assets):
    """Wash colours out (factor down to 0.05) or oversaturate (up to 6x)."""
    return [Op("saturation", {"factor": rnd(_factor(s, rng, 0.05, 6.0))})]


@register_op("color_jitter", backend="augly")
def _jitter(img, p, assets):
    return augly("color_jitter", img, brightness_factor=float(p["brightness"]),
                 contrast_factor=float(p["contrast"]), saturation_factor=float(p["saturation"]))


@register_family("color_jitter", group="photometric", identity_at_zero=True)
def color_jitter_family(s, rng, size, assets):
    """Brightness, contrast and saturation changed together (each factor 0.3..2.5 at strength 1)."""
    return [Op("color_jitter", {
        "brightness": rnd(_factor(s, rng, 0.3, 2.0)),
        "contrast": rnd(_factor(s, rng, 0.3, 2.5)),
        "saturation": rnd(_factor(s, rng, 0.1, 3.0)),
    })]


@register_op("grayscale", backend="augly")
def _grayscale(img, p, assets):
    return augly("grayscale", img, mode=str(p.get("mode", "luminosity")))


@register_family("grayscale", group="photometric", identity_at_zero=False)
def grayscale_family(s, rng, size, assets):
    """Drop colour (luminosity or channel average); the same at every strength."""
    return [Op("grayscale", {"mode": "luminosity" if rng.random() < 0.7 else "average"})]


@register_op("opacity", backend="augly")
def _opacity(img, p, assets):
    level = float(p["level"])
    # AugLy's opacity blends RGB images towards white through its composite mask
    return img.copy() if level >= 1.0 else augly("opacity", img, level=level)


@register_family("opacity", group="photometric", identity_at_zero=True)
def opacity_family(s, rng, size, assets):
    """Fade the image towards white, down to 20 % opacity."""
    return [Op("opacity", {"level": rnd(lerp(1.0, 0.2, s))})]


# -- channels ------------------------------------------------------------------------------------
def channel_edit(img: Image.Image, mode: str, amount: float, perm=(0, 1, 2),
                 offsets=(0, 0, 0)) -> Image.Image:
    """Invert, permute or shift colour channels, blended with the input by ``amount`` (0..1).

    Args:
        mode: "invert" (255 - x), "swap" (channels reordered by ``perm``) or "shift"
            (``offsets`` added per channel, wrapping around 256 like a hue-less colour cycle).
        amount: 0 leaves the image unchanged, 1 is the full edit.
    """
    a = np.asarray(img, dtype=np.int16)
    if mode == "invert":
        b = 255 - a
    elif mode == "swap":
        if sorted(int(i) for i in perm) != [0, 1, 2]:
            raise AugmentError(f"channel permutation must reorder 0, 1, 2; got {list(perm)}")
        b = a[..., [int(i) for i in perm]]
    elif mode == "shift":
        b = (a + np.asarray(offsets, dtype=np.int16)[None, None, :]) % 256
    else:
        raise AugmentError(f"unknown channel mode {mode!r}; known: invert, swap, shift")
    amount = float(amount)
    out = b if amount >= 1.0 else np.rint(a + (b - a) * amount)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


@register_op("channels")
def _channels(img, p, assets):
    return channel_edit(img, p["mode"], p["amount"], p.get("perm", (0, 1, 2)), p.get("offsets", (0, 0, 0)))


@register_family("channels", group="photometric", identity_at_zero=True)
def channels_family(s, rng, size, assets):
    """Invert the colours, swap channels (e.g. RGB -> BGR) or shift them, blended in with strength."""
    mode = ["invert", "swap", "shift"][int(rng.integers(3))]
    params = {"mode": mode, "amount": rnd(s)}
    if mode == "swap":
        perms = [[2, 1, 0], [1, 2, 0], [2, 0, 1], [0, 2, 1], [1, 0, 2]]
        params["perm"] = perms[int(rng.integers(len(perms)))]
    elif mode == "shift":
        params["amount"] = 1.0
        params["offsets"] = [int(round(sign(rng) * 128 * s * u)) for u in rng.uniform(0.3, 1.0, 3)]
    return [Op("channels", params)]
