"""Air-gap: the picture shown on a screen (or printed) and photographed again.

One op, applied in this order, each stage with its own recorded parameters:

1. moire: the screen's pixel grid beating against the camera's sensor, modelled as the product
   of two slightly rotated sinusoidal gratings multiplied into the image;
2. bezel: a dark border around the picture (the screen's frame, or a print's margin);
3. framing: the framed picture is warped by a perspective (corners given as fractions of the
   output canvas) onto a background (a plain colour with a gradient, like a desk or a wall);
4. exposure: gain, gamma and a vignette, clipped (over-exposed highlights are lost);
5. blur (camera focus) and sensor noise (seeded).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from .core import Op, lerp, new_seed, register_family, register_op, rnd
from .geometric import perspective_coeffs
from .quality import gaussian_noise


def moire(a: np.ndarray, amplitude: float, period: float, angle: float, beat: float) -> np.ndarray:
    """Multiply ``a`` (h x w x 3 float) by ``1 + amplitude * g1 * g2`` (two gratings, periods in px)."""
    if amplitude <= 0:
        return a
    h, w = a.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t1, t2 = math.radians(angle), math.radians(angle + beat)
    g1 = np.sin(2 * np.pi / period * (x * math.cos(t1) + y * math.sin(t1)))
    g2 = np.sin(2 * np.pi / (period * 1.07) * (x * math.cos(t2) + y * math.sin(t2)))
    return a * (1.0 + amplitude * g1 * g2)[..., None]


def _background(size: tuple[int, int], c0, c1) -> Image.Image:
    w, h = size
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    a = np.asarray(c0, np.float32) * (1 - t) + np.asarray(c1, np.float32) * t
    return Image.fromarray(np.broadcast_to(a, (h, w, 3)).astype(np.uint8), "RGB")


def airgap(img: Image.Image, p: dict) -> Image.Image:
    """Apply the air-gap op (see the module docstring for the stages and ``p`` keys)."""
    a = np.asarray(img, dtype=np.float32)
    a = moire(a, float(p["moire"]), float(p["moire_period"]), float(p["moire_angle"]), float(p["moire_beat"]))
    pic = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    w, h = pic.size
    b = int(round(float(p["bezel"]) * max(w, h)))
    if b > 0:
        framed = Image.new("RGB", (w + 2 * b, h + 2 * b), tuple(p["bezel_color"]))
        framed.paste(pic, (b, b))
        pic = framed
    m = float(p["margin"])
    W, H = int(round(pic.width * (1 + 2 * m))), int(round(pic.height * (1 + 2 * m)))
    if m > 0 or any(abs(v) > 0 for xy in p["jitter"] for v in xy):
        base = [[m, m], [1 + m, m], [1 + m, 1 + m], [m, 1 + m]]  # corners in units of the picture
        dst = [((bx + jx) * pic.width, (by + jy) * pic.height)
               for (bx, by), (jx, jy) in zip(base, p["jitter"])]
        src = [(0, 0), (pic.width, 0), (pic.width, pic.height), (0, pic.height)]
        coeffs = perspective_coeffs(dst, src)
        # one RGBA warp: its alpha (0 outside the quad, soft at the edges) is the paste mask
        warped = pic.convert("RGBA").transform((W, H), Image.Transform.PERSPECTIVE, coeffs,
                                               Image.Resampling.BILINEAR)
        canvas = _background((W, H), p["bg_top"], p["bg_bottom"])
        canvas.paste(warped, (0, 0), warped)
        pic = canvas
    a = np.asarray(pic, dtype=np.float32) / 255.0
    gain, gamma, vig = float(p["gain"]), float(p["gamma"]), float(p["vignette"])
    a = np.clip(a * gain, 0, 1) ** gamma
    if vig > 0:
        hh, ww = a.shape[:2]
        yy, xx = np.ogrid[0:hh, 0:ww]
        r2 = ((xx - ww / 2) / (ww / 2)) ** 2 + ((yy - hh / 2) / (hh / 2)) ** 2
        a = a * (1 - vig * np.clip(r2 / 2, 0, 1))[..., None].astype(np.float32)
    out = Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8), "RGB")
    radius = float(p["blur"]) * max(out.size)
    if radius > 0:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    return gaussian_noise(out, float(p["noise"]), int(p["seed"]))


@register_op("airgap")
def _airgap(img, p, assets):
    return airgap(img, p)


@register_family("airgap", group="airgap", identity_at_zero=True)
def airgap_family(s, rng, size, assets):
    """Re-captured from a screen or print: moire, bezel, perspective framing, exposure, blur, noise."""
    screen = rng.random() < 0.7
    jit = rng.uniform(-1, 1, (4, 2)) * lerp(0.0, 0.12, s)
    bg0 = [int(v) for v in rng.integers(0, 256, 3)]
    return [Op("airgap", {
        "moire": rnd(lerp(0.0, 0.35, s) if screen else 0.0), "moire_period": rnd(rng.uniform(2.5, 6.0)),
        "moire_angle": rnd(rng.uniform(0, 180), 2), "moire_beat": rnd(rng.uniform(1.0, 5.0), 3),
        "bezel": rnd(lerp(0.0, 0.06, s)), "bezel_color": [18, 18, 18] if screen else [245, 245, 240],
        "margin": rnd(lerp(0.0, 0.25, s) * rng.uniform(0.5, 1.0)), "jitter": [[rnd(x), rnd(y)] for x, y in jit],
        "bg_top": bg0, "bg_bottom": [max(0, c - 60) for c in bg0],
        "gain": rnd(lerp(1.0, rng.uniform(1.4, 2.2), s)), "gamma": rnd(lerp(1.0, rng.uniform(0.6, 1.3), s)),
        "vignette": rnd(lerp(0.0, 0.5, s)), "blur": rnd(lerp(0.0, 0.006, s), 6),
        "noise": rnd(lerp(0.0, 0.08, s)), "seed": new_seed(rng),
    })]
