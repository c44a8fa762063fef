"""Natural scene families: landscapes, seascapes, aerial maps, night skies, forests, macro textures.

Each draws its own structure from 1/f noise with random palettes and lighting, so that two
scenes of one family share a drawing routine but neither layout nor colours.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .render import (Ctx, colormap, fractal_noise, hsv, lit_sphere, mix, noise_lowres, palette, paste,
                     polygon_fill, ridge_line, soft_shadow)
from .scenes import register_scene


def _sky(ctx: Ctx, horizon: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sky gradient with clouds; returns (canvas, colour at the zenith, colour at the horizon)."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    mood = rng.integers(4)
    if mood == 0:  # day
        top, hor = hsv(rng.uniform(0.55, 0.65), rng.uniform(0.4, 0.8), rng.uniform(0.6, 0.95)), \
            hsv(rng.uniform(0.5, 0.6), rng.uniform(0.05, 0.3), rng.uniform(0.85, 1.0))
    elif mood == 1:  # sunset
        top, hor = hsv(rng.uniform(0.6, 0.8), rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.6)), \
            hsv(rng.uniform(0.0, 0.12), rng.uniform(0.5, 0.9), rng.uniform(0.8, 1.0))
    elif mood == 2:  # overcast
        g = rng.uniform(0.45, 0.85)
        top, hor = np.array([g, g, g * 1.03], np.float32), np.array([g + 0.1] * 3, np.float32)
    else:  # night / dusk
        top, hor = hsv(rng.uniform(0.6, 0.7), rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.2)), \
            hsv(rng.uniform(0.55, 0.75), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.45))
    hy = max(int(horizon * h), 2)
    t = np.clip(np.arange(h, dtype=np.float32) / hy, 0, 1) ** rng.uniform(0.6, 1.6)
    canvas = np.broadcast_to(mix(top[None, None, :], hor, t[:, None, None]), (h, w, 3)).copy()
    if mood != 3 or rng.random() < 0.3:
        cl = noise_lowres(rng, h, w, beta=rng.uniform(2.6, 3.6), factor=4, aniso=(1.0, rng.uniform(1.0, 3.5)))
        cover = rng.uniform(0.3, 0.75)
        a = np.clip((cl - cover) / (1 - cover) * rng.uniform(1.5, 3.5), 0, 1)
        cloud = hor * rng.uniform(0.9, 1.2) if mood != 1 else hsv(rng.uniform(0.9, 1.05), 0.5, 0.9)
        shade = 0.75 + 0.25 * noise_lowres(rng, h, w, beta=2.2, factor=2)
        canvas = mix(canvas, np.clip(cloud[None, None, :] * shade[..., None], 0, 1), a * rng.uniform(0.5, 1.0))
    else:
        n = int(rng.integers(100, 400))
        ys, xs = rng.integers(0, hy, n), rng.integers(0, w, n)
        canvas[ys, xs] = np.clip(canvas[ys, xs] + rng.uniform(0.3, 1.0, (n, 1)), 0, 1)
    if rng.random() < 0.6:  # sun or moon with a glow
        cx, cy, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * hy, rng.uniform(0.015, 0.06) * w
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
        glow = np.clip(1.2 - d, 0, 1) + 0.35 * np.exp(-d / rng.uniform(2, 6))
        canvas = mix(canvas, hsv(rng.uniform(0.08, 0.16), rng.uniform(0.0, 0.5), 1.0), np.clip(glow, 0, 1))
    return canvas, top, hor


def _trees(ctx: Ctx, canvas: np.ndarray, base_y: np.ndarray, n: int, scale: float, colors: np.ndarray) -> None:
    rng, w = ctx.rng, ctx.w
    for _ in range(n):
        x = rng.uniform(0, w)
        th = scale * rng.uniform(0.6, 1.4)
        x, _y = ctx.move(x, 0.0, 0.04)
        yb = float(base_y[int(np.clip(x, 0, w - 1))]) + rng.uniform(0, th * 0.2)
        col = colors[rng.integers(len(colors))] * rng.uniform(0.6, 1.1)
        if rng.random() < 0.5:  # conifer
            tw = th * rng.uniform(0.25, 0.45)
            polygon_fill(canvas, [(x, yb - th), (x - tw, yb), (x + tw, yb)], np.clip(col, 0, 1))
        else:  # broadleaf: trunk and canopy
            polygon_fill(canvas, [(x - th * 0.04, yb), (x + th * 0.04, yb), (x + th * 0.03, yb - th * 0.6),
                                  (x - th * 0.03, yb - th * 0.6)], np.array([0.25, 0.18, 0.1]) * rng.uniform(0.6, 1.2))
            cw = max(int(th * rng.uniform(0.5, 0.9)), 3)
            ch = max(int(th * rng.uniform(0.45, 0.7)), 3)
            sp, al = lit_sphere(max(cw, ch), np.clip(col, 0, 1), np.array([-0.5, -0.6, 0.62]), 0.05, 0.45)
            sp = np.asarray(Image.fromarray((sp * 255).astype(np.uint8)).resize((cw, ch)), np.float32) / 255
            al = np.asarray(Image.fromarray((al * 255).astype(np.uint8)).resize((cw, ch)), np.float32) / 255
            paste(canvas, sp, al, int(x - cw / 2), int(yb - th * 0.5 - ch / 2))


@register_scene("landscape", weight=1.5)
def landscape(ctx: Ctx) -> np.ndarray:
    """Sky, layered mountain ridges with aerial perspective, a foreground and trees or a lake."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    horizon = rng.uniform(0.3, 0.7)
    canvas, top, hor = _sky(ctx, horizon)
    pal = palette(rng, 6)
    yy = np.arange(h, dtype=np.float32)[:, None]
    n_layers = int(rng.integers(2, 6))
    last_ridge = np.full(w, horizon * h, np.float32)
    for i in range(n_layers):
        depth = 1 - i / max(n_layers - 1, 1)  # 1 = farthest
        amp = h * rng.uniform(0.08, 0.35) * (0.5 + 0.5 * depth)
        base = horizon * h + (1 - depth) * h * rng.uniform(0.05, 0.2)
        prof = ridge_line(rng, w, rough=rng.uniform(0.4, 0.65))
        ridge = base - amp * prof
        col = pal[i % len(pal)] * rng.uniform(0.4, 0.9)
        tex = noise_lowres(rng, h, w, beta=rng.uniform(1.6, 2.4), factor=2)
        k = max(w // 64, 1)
        slope = np.convolve(np.gradient(prof), np.ones(k) / k, mode="same") * w * rng.uniform(0.01, 0.04)
        light = np.clip(0.85 + slope, 0.45, 1.25)[None, :]
        layer = col[None, None, :] * (0.6 + 0.6 * tex[..., None]) * light[..., None]
        layer = mix(layer, hor, 0.75 * depth ** 1.3 * rng.uniform(0.5, 1.0))  # haze
        m = np.clip(yy - ridge[None, :], 0, 1)
        canvas = mix(canvas, np.clip(layer, 0, 1), m)
        last_ridge = ridge
    if rng.random() < 0.35:  # a lake mirrors the sky and the ridges
        wl = int(h * rng.uniform(max(horizon, 0.55), 0.85))
        src = canvas[max(2 * wl - h, 0):wl][::-1]
        ripple = (noise_lowres(rng, h - wl, w, beta=2.0, factor=1, aniso=(0.2, 3.0)) - 0.5) * w * 0.02
        xi = np.clip(np.arange(w)[None, :] + ripple.astype(int), 0, w - 1)
        refl = src[np.arange(len(src))[:, None], xi[:len(src)]]
        water = hsv(rng.uniform(0.5, 0.65), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.5))
        canvas[wl:wl + len(src)] = mix(refl, water, rng.uniform(0.2, 0.5))
    else:
        _trees(ctx, canvas, last_ridge + h * 0.02, int(rng.integers(0, 14)), h * rng.uniform(0.08, 0.3), pal)
    return canvas


@register_scene("seascape", weight=1.2)
def seascape(ctx: Ctx) -> np.ndarray:
    """Sea to the horizon with perspective waves, a beach or cliffs, boats and birds."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    horizon = rng.uniform(0.3, 0.6)
    canvas, top, hor = _sky(ctx, horizon)
    hy = int(horizon * h)
    rows = np.arange(h - hy, dtype=np.float32)[:, None]
    dist = 1.0 / (rows / (h - hy) + 0.05)  # perspective: waves compress toward the horizon
    xs = np.arange(w, dtype=np.float32)[None, :]
    waves = np.zeros((h - hy, w), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        k, ang, ph = rng.uniform(0.02, 0.2), rng.uniform(-0.6, 0.6), rng.uniform(0, 6.28)
        waves += np.sin(k * (rows * dist * 3 + xs * ang / (dist * 0.2 + 1)) + ph) * rng.uniform(0.3, 1)
    waves = (waves - waves.min()) / (np.ptp(waves) + 1e-6)
    sea_a, sea_b = hsv(rng.uniform(0.45, 0.65), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.6)), hor
    sea = mix(sea_a[None, None, :] * (0.7 + 0.5 * waves[..., None]), sea_b, np.clip(1 / dist, 0, 1) ** 0.4 * 0.6)
    canvas[hy:] = np.clip(sea, 0, 1)
    if rng.random() < 0.6:  # beach or cliff in the foreground
        prof = ridge_line(rng, w, 0.5)
        edge = h - h * rng.uniform(0.1, 0.35) * (0.4 + prof)
        sand = hsv(rng.uniform(0.07, 0.14), rng.uniform(0.2, 0.6), rng.uniform(0.5, 0.9))
        tex = noise_lowres(rng, h, w, beta=1.8, factor=1)
        m = np.clip(np.arange(h, dtype=np.float32)[:, None] - edge[None, :], 0, 1)
        canvas = mix(canvas, sand[None, None, :] * (0.75 + 0.4 * tex[..., None]), m)
    for _ in range(int(rng.integers(0, 5))):  # boats
        x, y = ctx.move(rng.uniform(0.05, 0.95) * w, hy + rng.uniform(0.05, 0.5) * (h - hy), 0.05)
        s = (y - hy + 5) / (h - hy) * w * rng.uniform(0.05, 0.15)
        hull = hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.1, 0.9))
        polygon_fill(canvas, [(x - s, y), (x + s, y), (x + s * 0.7, y + s * 0.3), (x - s * 0.7, y + s * 0.3)], hull)
        polygon_fill(canvas, [(x, y - s * 1.4), (x, y - s * 0.05), (x + s * 0.8, y - s * 0.05)],
                     np.array([0.95, 0.93, 0.88]) * rng.uniform(0.7, 1))
    return canvas


@register_scene("aerial", weight=0.6)
def aerial(ctx: Ctx) -> np.ndarray:
    """A satellite-like view: elevation-coloured terrain with hill shading, fields, roads and a river."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    z = fractal_noise(rng, h, w, beta=rng.uniform(2.8, 3.6))
    sea = rng.uniform(0.15, 0.45)
    stops = np.sort(np.concatenate([[0, sea, sea + 0.03], rng.uniform(sea + 0.05, 1, 3), [1]]))
    cols = np.stack([hsv(0.6, 0.7, 0.35), hsv(0.55, 0.5, 0.6), hsv(0.12, 0.35, 0.8),
                     hsv(rng.uniform(0.2, 0.35), 0.6, rng.uniform(0.35, 0.6)),
                     hsv(rng.uniform(0.2, 0.35), 0.7, rng.uniform(0.2, 0.4)),
                     hsv(0.08, 0.25, 0.5), np.array([0.95, 0.95, 0.97], np.float32)])
    canvas = colormap(z, cols * rng.uniform(0.8, 1.1, 3).astype(np.float32), stops)
    gy, gx = np.gradient(z * rng.uniform(40, 160))
    az = rng.uniform(0, 2 * np.pi)
    shade = np.clip(0.8 + 0.5 * (np.cos(az) * gx + np.sin(az) * gy), 0.35, 1.3)
    land = z > sea + 0.03
    canvas[land] *= shade[land, None]
    if rng.random() < 0.7:  # patchwork of fields on the lowland (Voronoi cells at quarter size)
        n = int(rng.integers(20, 80))
        sh, sw = h // 4, w // 4
        pts = rng.uniform(0, 1, (n, 2)) * [sw, sh]
        yy, xx = np.mgrid[0:sh, 0:sw]
        d = (xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2
        cell = np.asarray(Image.fromarray(d.argmin(-1).astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST))
        crop = np.stack([hsv(rng.uniform(0.1, 0.3), rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.85)) for _ in range(n)])
        low = land & (z < stops[3] + 0.05)
        canvas[low] = mix(canvas[low], crop[cell[low]] * shade[low, None], 0.8)
    im = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    dr = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 5))):  # roads
        pts = [tuple(ctx.move(*(rng.uniform(-0.1, 1.1, 2) * [w, h]), 0.01)) for _ in range(int(rng.integers(2, 6)))]
        dr.line(pts, fill=tuple(int(v) for v in rng.integers(150, 230, 3)), width=int(rng.integers(1, 4)), joint="curve")
    if rng.random() < 0.5:  # buildings as small roofs
        for _ in range(int(rng.integers(10, 60))):
            x, y = ctx.move(*(rng.uniform(0, 1, 2) * [w, h]), 0.01)
            s = rng.uniform(2, 7)
            dr.rectangle([x, y, x + s, y + s * rng.uniform(0.6, 1.6)],
                         fill=tuple(int(v) for v in rng.integers(60, 240, 3)))
    return np.asarray(im, np.float32) / 255


@register_scene("night_sky")
def night_sky(ctx: Ctx) -> np.ndarray:
    """Stars with a power-law brightness, a coloured nebula and lit planets, some with rings."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    neb = np.stack([fractal_noise(rng, h, w, beta=rng.uniform(2.4, 3.4)) for _ in range(3)], -1)
    gain = rng.uniform(0.0, 1.2, 3).astype(np.float32)
    canvas = np.clip((neb ** rng.uniform(2.0, 5.0)) * gain, 0, 1) * rng.uniform(0.3, 1.0)
    n = int(rng.integers(300, 2500))
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    b = (rng.pareto(2.0, n) * 0.2 + 0.1).clip(0, 1)
    canvas[ys, xs] = np.maximum(canvas[ys, xs], (b[:, None] * rng.uniform(0.7, 1.0, (n, 3))).astype(np.float32))
    for _ in range(int(rng.integers(0, 4))):
        d = int(rng.uniform(0.06, 0.5) * min(w, h))
        cx, cy = ctx.move(*(rng.uniform(0, 1, 2) * [w, h]), 0.05)
        light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), 0.4])
        light /= np.linalg.norm(light)
        bands = palette(rng, 4)
        sp, al = lit_sphere(d, np.array([1.0, 1.0, 1.0], np.float32), light, 0.1, 0.03)
        t = (np.linspace(0, 1, d) + 0.1 * fractal_noise(rng, d, d, 3.0)[:, : d].mean(1)) % 1.0
        tex = colormap(np.broadcast_to(t[:, None], (d, d)), bands)
        if rng.random() < 0.6:
            tex = tex * (0.7 + 0.6 * fractal_noise(rng, d, d, 2.5)[..., None])
        if rng.random() < 0.35:  # ring behind and in front: drawn as a thin ellipse
            rw, rh = int(d * rng.uniform(1.6, 2.4)), max(int(d * rng.uniform(0.12, 0.4)), 3)
            ring = ImageDraw.Draw(im := Image.new("L", (rw, rh), 0))
            ring.ellipse([0, 0, rw - 1, rh - 1], outline=255, width=max(rh // 5, 1))
            paste(canvas, np.broadcast_to(bands[0], (rh, rw, 3)), np.asarray(im, np.float32) / 255 * 0.8,
                  int(cx - rw / 2), int(cy - rh / 2))
        paste(canvas, np.clip(sp * tex, 0, 1), al, int(cx - d / 2), int(cy - d / 2))
    return canvas


@register_scene("forest", weight=0.6)
def forest(ctx: Ctx) -> np.ndarray:
    """Tree trunks at several depths with bark texture, foliage, haze and light shafts."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    pal = palette(rng, 5)
    fol = colormap(fractal_noise(rng, h, w, beta=rng.uniform(1.8, 2.6)), np.stack(
        [hsv(rng.uniform(0.18, 0.4), rng.uniform(0.3, 0.9), rng.uniform(0.1, 0.4)),
         hsv(rng.uniform(0.15, 0.35), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)),
         pal[0] * 0.5 + 0.5]))
    haze = hsv(rng.uniform(0.1, 0.6), rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.0))
    canvas = mix(fol, haze, rng.uniform(0.1, 0.5))
    ground_y = h * rng.uniform(0.65, 0.9)
    gnd = colormap(noise_lowres(rng, h, w, 1.8, 2), np.stack([hsv(0.08, 0.6, 0.25), hsv(0.1, 0.5, 0.55),
                                                                  hsv(rng.uniform(0.15, 0.3), 0.6, 0.45)]))
    canvas[int(ground_y):] = gnd[int(ground_y):]
    bark = fractal_noise(rng, h, w, beta=2.0, aniso=(1.0, 0.08))
    n = int(rng.integers(6, 30))
    depths = np.sort(rng.uniform(0, 1, n))[::-1]
    for dpt in depths:  # far to near
        x, _ = ctx.move(rng.uniform(-0.05, 1.05) * w, 0, 0.03)
        tw = w * (0.01 + 0.12 * (1 - dpt) ** 2) * rng.uniform(0.6, 1.4)
        col = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.5))
        x0, x1 = int(max(x - tw / 2, 0)), int(min(x + tw / 2, w))
        if x1 <= x0:
            continue
        bottom = int(min(ground_y + (1 - dpt) * (h - ground_y), h))
        seg = col[None, None, :] * (0.55 + 0.8 * bark[:bottom, x0:x1, None])
        xs = np.linspace(-1, 1, x1 - x0, dtype=np.float32)
        seg = seg * (1.1 - 0.5 * xs[None, :, None] ** 2)  # round trunk
        canvas[:bottom, x0:x1] = mix(seg, haze, dpt * rng.uniform(0.3, 0.8))
    if rng.random() < 0.6:  # light shafts
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ang = rng.uniform(-0.6, 0.6)
        s = np.sin((xx + yy * ang) * rng.uniform(0.01, 0.05) + rng.uniform(0, 6)) ** 8
        canvas = canvas + s[..., None] * rng.uniform(0.05, 0.25) * (1 - yy / h)[..., None]
    return canvas


def _marble(rng, h, w):
    t = fractal_noise(rng, h, w, beta=rng.uniform(2.2, 3.0))
    xx = np.arange(w, dtype=np.float32)[None, :] * rng.uniform(0.01, 0.06)
    yy = np.arange(h, dtype=np.float32)[:, None] * rng.uniform(-0.04, 0.04)
    v = np.abs(np.sin(xx + yy + t * rng.uniform(6, 18))) ** rng.uniform(0.3, 3)
    return colormap(v, palette(rng, 3))


def _wood(rng, h, w):
    cx, cy = rng.uniform(-1, 2) * w, rng.uniform(-1, 2) * h
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - cx) * rng.uniform(0.1, 1)) ** 2 + (yy - cy) ** 2)
    r = r + fractal_noise(rng, h, w, 2.6) * rng.uniform(20, 80)
    rings = (r * rng.uniform(0.05, 0.3)) % 1.0
    base = hsv(rng.uniform(0.04, 0.11), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.9))
    return colormap(rings ** 2, np.stack([base, base * 0.55]))


def _cells(rng, h, w):
    n = int(rng.integers(15, 160))
    sh, sw = h // 2, w // 2
    pts = rng.uniform(0, 1, (n, 2)) * [sw, sh]
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    d = np.sqrt((xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2)
    d.sort(-1)
    edge = np.clip((d[..., 1] - d[..., 0]) / rng.uniform(1, 5), 0, 1)
    cell = np.argmin(np.sqrt((xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2), -1)
    pal = palette(rng, 6)
    cols = pal[rng.integers(0, 6, n)] * rng.uniform(0.6, 1.2, (n, 1))
    img = cols[cell] * edge[..., None] + pal[0] * 0.3 * (1 - edge[..., None])
    img = np.asarray(Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((w, h)), np.float32) / 255
    return img * (0.75 + 0.5 * fractal_noise(rng, h, w, 1.6)[..., None])


def _weave(rng, h, w):
    p = int(rng.integers(4, 16))
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.sin(np.pi * (xx % p) / p) ** 2
    b = np.sin(np.pi * (yy % p) / p) ** 2
    over = ((xx // p + yy // p) % 2).astype(bool)
    v = np.where(over, a, b).astype(np.float32)
    c1, c2 = palette(rng, 2)
    img = np.where(over[..., None], c1, c2) * (0.5 + 0.6 * v[..., None])
    return img * (0.8 + 0.4 * fractal_noise(rng, h, w, 2.0)[..., None])


def _pebbles(rng, h, w):
    canvas = colormap(fractal_noise(rng, h, w, 1.5), palette(rng, 2) * 0.5)
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7), 0.6])
    light /= np.linalg.norm(light)
    pal = palette(rng, 5)
    for _ in range(int(rng.integers(40, 220))):
        d = int(rng.uniform(0.02, 0.12) * min(h, w))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        sp, al = lit_sphere(d, pal[rng.integers(5)] * rng.uniform(0.6, 1.2), light, rng.uniform(0, 0.4))
        sy = rng.uniform(0.5, 1.0)
        dh = max(int(d * sy), 3)
        sp = np.asarray(Image.fromarray((np.clip(sp, 0, 1) * 255).astype(np.uint8)).resize((d, dh)), np.float32) / 255
        al = np.asarray(Image.fromarray((al * 255).astype(np.uint8)).resize((d, dh)), np.float32) / 255
        soft_shadow(canvas, x + d * 0.15, y + dh * 0.15, d * 0.5, dh * 0.5, 0.35)
        paste(canvas, sp, al, int(x - d / 2), int(y - dh / 2))
    return canvas


def _lichen(rng, h, w):
    a, b = fractal_noise(rng, h, w, 1.4), fractal_noise(rng, h, w, 2.8)
    v = np.clip((a - 0.5) * rng.uniform(2, 8) + (b - 0.5) * 2 + 0.5, 0, 1)
    return colormap(v, palette(rng, 4))


@register_scene("texture", weight=1.5)
def texture(ctx: Ctx) -> np.ndarray:
    """A macro photograph of a material: marble, wood, stone cells, woven cloth, pebbles or lichen."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    kinds = [_marble, _wood, _cells, _weave, _pebbles, _lichen]
    img = kinds[int(rng.integers(len(kinds)))](rng, h, w)
    if rng.random() < 0.5:  # raking light across the surface
        across = rng.random() < 0.5
        g = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.9, 1.3), w if across else h, dtype=np.float32)
        img = img * (g[None, :, None] if across else g[:, None, None])
    return img
