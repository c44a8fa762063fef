"""Drawing helpers of the disc-synth scenes: 1/f noise, palettes, lit shapes, a camera finish.

Canvases are float32 arrays (h, w, 3) in [0, 1]; every function takes its randomness from the
``rng`` it is given, so a scene is a pure function of its seed. Shapes are composited inside
their bounding box only, which keeps a cluttered scene at a few tens of milliseconds.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


# --------------------------------------------------------------------------------------------
# the context a scene is drawn with


@dataclass
class Ctx:
    """What a scene function receives.

    Attributes:
        rng: structural randomness (layout, colours, objects): the same for every sibling.
        jit: sibling randomness, or None for the scene itself; :meth:`move` and :meth:`vary`
            draw from it so that siblings differ only where a scene calls them.
        w, h: size of the image to draw.
    """

    rng: np.random.Generator
    jit: np.random.Generator | None
    w: int
    h: int

    def move(self, x: float, y: float, amount: float = 0.06) -> tuple[float, float]:
        """(x, y) moved by about ``amount`` of the image size in a sibling; unchanged otherwise."""
        if self.jit is None:
            return x, y
        d = self.jit.normal(0.0, amount, 2)
        return x + d[0] * self.w, y + d[1] * self.h

    def vary(self, value: float, amount: float) -> float:
        """``value`` plus a small change (relative ``amount``) in a sibling."""
        if self.jit is None:
            return value
        return value * (1.0 + float(self.jit.normal(0.0, amount)))

    def uniform(self, lo: float, hi: float, n=None):
        return self.rng.uniform(lo, hi, n)

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


# --------------------------------------------------------------------------------------------
# noise


@lru_cache(maxsize=64)
def _freq_radius(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    r = np.sqrt(fx * fx + fy * fy).astype(np.float32)
    r[0, 0] = 1.0
    return r


def fractal_noise(rng: np.random.Generator, h: int, w: int, beta: float = 2.0,
                  aniso: tuple[float, float] = (1.0, 1.0), cutoff: float = 0.0) -> np.ndarray:
    """Gaussian noise with a power spectrum ~ 1 / f**beta, scaled to [0, 1].

    beta 2 is the spectrum of natural images (amplitude 1/f); larger is smoother. ``aniso``
    stretches the frequencies (streaks, strata); ``cutoff`` removes frequencies below it.

    Returns:
        (h, w) float32 in [0, 1].
    """
    fy = np.fft.fftfreq(h)[:, None] * aniso[1]
    fx = np.fft.rfftfreq(w)[None, :] * aniso[0]
    r = np.sqrt(fx * fx + fy * fy).astype(np.float32)
    r[0, 0] = 1.0
    spec = (rng.standard_normal(r.shape).astype(np.float32)
            + 1j * rng.standard_normal(r.shape).astype(np.float32)) * r ** (-beta / 2.0)
    spec[0, 0] = 0.0
    if cutoff > 0:
        spec[r < cutoff] = 0.0
    out = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / (hi - lo + 1e-12)


def noise_lowres(rng: np.random.Generator, h: int, w: int, beta: float = 2.5, factor: int = 4,
                 **kw) -> np.ndarray:
    """:func:`fractal_noise` drawn at 1/``factor`` resolution and upsampled (smooth fields, fast)."""
    hs, ws = max(8, h // factor), max(8, w // factor)
    small = fractal_noise(rng, hs, ws, beta, **kw)
    im = Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)


def ridge_line(rng: np.random.Generator, n: int, rough: float = 0.55, octaves: int = 8) -> np.ndarray:
    """A 1-D fractal profile of length n in [0, 1] (mountain ridges, skylines of hills)."""
    x = np.zeros(n, np.float32)
    amp = 1.0
    for o in range(octaves):
        k = 2 ** (o + 1)
        pts = rng.standard_normal(k + 1).astype(np.float32)
        x += amp * np.interp(np.linspace(0, k, n), np.arange(k + 1), pts).astype(np.float32)
        amp *= rough
    x -= x.min()
    return x / (x.max() + 1e-9)


# --------------------------------------------------------------------------------------------
# colour


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)), np.float32)


def palette(rng: np.random.Generator, n: int = 5) -> np.ndarray:
    """n colours (n, 3) in [0, 1] from a random harmony (analogous, complementary, triad, free)."""
    base = rng.random()
    scheme = rng.integers(4)
    if scheme == 0:
        hues = base + rng.uniform(-0.08, 0.08, n)
    elif scheme == 1:
        hues = base + 0.5 * rng.integers(0, 2, n) + rng.uniform(-0.04, 0.04, n)
    elif scheme == 2:
        hues = base + rng.integers(0, 3, n) / 3.0 + rng.uniform(-0.03, 0.03, n)
    else:
        hues = rng.random(n)
    sat = rng.uniform(0.15, 0.95, n) * rng.uniform(0.5, 1.0)
    val = rng.uniform(0.25, 1.0, n)
    return np.stack([hsv(h, s, v) for h, s, v in zip(hues, sat, val)])


def colormap(t: np.ndarray, colors: np.ndarray, stops: np.ndarray | None = None) -> np.ndarray:
    """Map a field t (h, w) in [0, 1] through a piecewise-linear gradient of ``colors`` (k, 3)."""
    k = len(colors)
    stops = np.linspace(0, 1, k) if stops is None else stops
    out = np.empty(t.shape + (3,), np.float32)
    for c in range(3):
        out[..., c] = np.interp(t, stops, colors[:, c])
    return out


def mix(a: np.ndarray, b, t) -> np.ndarray:
    """a * (1 - t) + b * t, broadcasting t over the channels."""
    t = np.asarray(t, np.float32)
    if t.ndim == 2:
        t = t[..., None]
    return a + (np.asarray(b, np.float32) - a) * t


# --------------------------------------------------------------------------------------------
# compositing in a bounding box


def paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Alpha-composite ``patch`` (ph, pw, 3) with ``alpha`` (ph, pw) at (x0, y0), clipped, in place."""
    h, w = canvas.shape[:2]
    ph, pw = alpha.shape
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + pw, w), min(y0 + ph, h)
    if xa >= xb or ya >= yb:
        return
    sub_a = alpha[ya - y0:yb - y0, xa - x0:xb - x0, None]
    sub_p = patch[ya - y0:yb - y0, xa - x0:xb - x0] if patch.ndim == 3 else patch
    region = canvas[ya:yb, xa:xb]
    region += (sub_p - region) * sub_a


def mask_of(size: tuple[int, int], draw_fn, blur: float = 0.0, supersample: int = 2) -> np.ndarray:
    """A soft mask (h, w) in [0, 1] drawn with PIL: ``draw_fn(ImageDraw, s)`` at ``s``x scale."""
    w, h = size
    s = supersample
    im = Image.new("L", (w * s, h * s), 0)
    draw_fn(ImageDraw.Draw(im), s)
    if s > 1:
        im = im.resize((w, h), Image.Resampling.BOX)
    if blur > 0:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(im, np.float32) / 255.0


def ellipse_mask(w: int, h: int, soft: float = 1.0) -> np.ndarray:
    """An anti-aliased filled ellipse in a (h, w) box."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    nx = (xx + 0.5 - w / 2) / (w / 2)
    ny = (yy + 0.5 - h / 2) / (h / 2)
    r = np.sqrt(nx * nx + ny * ny)
    edge = soft / max(min(w, h) / 2, 1)
    return np.clip((1 - r) / edge, 0, 1).astype(np.float32)


def lit_sphere(d: int, color: np.ndarray, light: np.ndarray, shiny: float = 0.5,
               ambient: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A Lambert + Phong shaded sphere of diameter d: (patch (d, d, 3), alpha (d, d))."""
    d = max(int(d), 3)
    yy, xx = np.mgrid[0:d, 0:d].astype(np.float32)
    nx = (xx + 0.5 - d / 2) / (d / 2)
    ny = (yy + 0.5 - d / 2) / (d / 2)
    r2 = nx * nx + ny * ny
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    lam = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    # reflection of the light about the normal, viewed from +z
    rz = 2 * lam * nz - light[2]
    spec = np.clip(rz, 0, 1) ** 24 * shiny
    patch = color[None, None, :] * (ambient + (1 - ambient) * lam)[..., None] + spec[..., None]
    alpha = np.clip((1 - np.sqrt(r2)) * d / 2, 0, 1)
    return np.clip(patch, 0, 1).astype(np.float32), alpha.astype(np.float32)


def soft_shadow(canvas: np.ndarray, cx: float, cy: float, rx: float, ry: float, strength: float = 0.45) -> None:
    """Darken an elliptical soft region (contact shadow) in place."""
    rx, ry = max(int(rx), 2), max(int(ry), 2)
    a = ellipse_mask(2 * rx, 2 * ry, soft=max(rx, ry) * 0.9) * strength
    paste(canvas, np.zeros((2 * ry, 2 * rx, 3), np.float32), a, int(cx - rx), int(cy - ry))


def polygon_fill(canvas: np.ndarray, pts, color, alpha: float = 1.0) -> None:
    """Fill a polygon (list of (x, y)) with a flat colour, anti-aliased, in its bounding box."""
    pts = np.asarray(pts, np.float32)
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return
    local = [(float(x - x0), float(y - y0)) for x, y in pts]
    m = mask_of((x1 - x0, y1 - y0), lambda d, s: d.polygon([(x * s, y * s) for x, y in local], fill=255))
    paste(canvas, np.broadcast_to(np.asarray(color, np.float32), (y1 - y0, x1 - x0, 3)), m * alpha, x0, y0)


# --------------------------------------------------------------------------------------------
# camera finish


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)


def camera_finish(canvas: np.ndarray, rng: np.random.Generator, grain: float | None = None) -> Image.Image:
    """Turn a rendered canvas into a photograph-like 8-bit image.

    Random white balance and exposure, a vignette, sensor grain with a 1/f tint, and sometimes a
    slight defocus: the small imperfections every camera adds (they also decorrelate scenes
    that share a drawing routine).
    """
    h, w = canvas.shape[:2]
    c = np.clip(canvas, 0, None) * rng.uniform(0.9, 1.1, 3).astype(np.float32)  # white balance
    c = c ** np.float32(rng.uniform(0.85, 1.2))  # exposure curve
    if rng.random() < 0.7:
        yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        v = 1 - rng.uniform(0.05, 0.35) * (xx * xx + yy * yy) / 2
        c = c * v[..., None]
    g = rng.uniform(0.005, 0.03) if grain is None else grain
    if g > 0:
        c = c + rng.standard_normal((h, w, 1), dtype=np.float32) * g
    img = Image.fromarray(to_uint8(c), "RGB")
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    return img
