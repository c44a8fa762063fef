"""Object scene families: still lifes, shop shelves, food from above, portraits, abstract art.

Objects are placed with :meth:`Ctx.move`, so a sibling of a scene (a camera burst) has the same
objects in slightly different places; they are drawn back to front with contact shadows, which
gives occlusion and a consistent light direction.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .render import (Ctx, colormap, ellipse_mask, fractal_noise, hsv, lit_sphere, mix, noise_lowres, palette,
                     paste, polygon_fill, soft_shadow)
from .scenes import emoji, font, register_scene, sentence


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    mode = "RGB" if a.ndim == 3 else "L"
    im = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), mode)
    return np.asarray(im.resize(size, Image.Resampling.BILINEAR), np.float32) / 255


def _light(rng) -> np.ndarray:
    v = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.9, -0.1), rng.uniform(0.3, 0.8)])
    return v / np.linalg.norm(v)


def _box(canvas, x, y, bw, bh, depth, col, light) -> None:
    """A box seen from the front and slightly above: front, top and side faces lit differently."""
    front = np.clip(col * (0.55 + 0.45 * light[2]), 0, 1)
    top = np.clip(col * (0.55 + 0.45 * max(-light[1], 0) + 0.2), 0, 1)
    side = np.clip(col * (0.35 + 0.4 * abs(light[0])), 0, 1)
    d = depth
    polygon_fill(canvas, [(x, y), (x + d, y - d * 0.6), (x + bw + d, y - d * 0.6), (x + bw, y)], top)
    polygon_fill(canvas, [(x + bw, y), (x + bw + d, y - d * 0.6), (x + bw + d, y + bh - d * 0.6), (x + bw, y + bh)], side)
    polygon_fill(canvas, [(x, y), (x + bw, y), (x + bw, y + bh), (x, y + bh)], front)


def _cylinder(canvas, x, y, cw, ch, col, light, rng) -> None:
    """An upright cylinder (cup, can, bottle body) with horizontal shading and an elliptic top."""
    cw, ch = max(int(cw), 4), max(int(ch), 4)
    xs = np.linspace(-1, 1, cw, dtype=np.float32)
    nz = np.sqrt(np.clip(1 - xs ** 2, 0, 1))
    lam = np.clip(xs * light[0] + nz * light[2], 0, 1)
    spec = np.clip(lam, 0, 1) ** 30 * rng.uniform(0, 0.8)
    row = col[None, :] * (0.25 + 0.75 * lam[:, None]) + spec[:, None]
    body = np.broadcast_to(row[None, :, :], (ch, cw, 3)).copy()
    if rng.random() < 0.5:  # a label band
        a, b = sorted(rng.uniform(0.2, 0.9, 2))
        lab = hsv(rng.random(), rng.uniform(0.2, 1), rng.uniform(0.4, 1))
        body[int(a * ch):int(b * ch) + 1] = lab[None, None, :] * (0.3 + 0.7 * lam[None, :, None])
    paste(canvas, np.clip(body, 0, 1), np.ones((ch, cw), np.float32), int(x), int(y))
    eh = max(int(cw * 0.3), 2)
    paste(canvas, np.broadcast_to(np.clip(col * 0.6, 0, 1), (eh, cw, 3)), ellipse_mask(cw, eh), int(x), int(y - eh / 2))


@register_scene("still_life", weight=0.8)
def still_life(ctx: Ctx) -> np.ndarray:
    """A table of many lit objects (balls, boxes, cups) with shadows and occlusion, before a wall."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    pal = palette(rng, 7)
    wall = colormap(noise_lowres(rng, h, w, rng.uniform(1.6, 2.8), 2), np.stack([pal[0] * 0.5, pal[1] * 0.9 + 0.1]))
    table_y = h * rng.uniform(0.25, 0.6)
    kind = rng.integers(3)
    if kind == 0:
        top = _resize(fractal_noise(rng, h // 2, w // 2, 2.0, aniso=(0.05, 1.0)), (w, h))
        tcol = colormap(top, np.stack([hsv(0.07, 0.6, 0.3), hsv(0.09, 0.5, 0.7)]))
    elif kind == 1:  # checked cloth
        yy, xx = np.mgrid[0:h, 0:w]
        p = int(rng.integers(8, 40))
        tcol = np.where((((xx // p) + (yy // p)) % 2)[..., None] == 0, pal[2], pal[3] * 0.4 + 0.6)
    else:
        tcol = pal[4][None, None, :] * (0.7 + 0.4 * noise_lowres(rng, h, w, 2.0, 2)[..., None])
    yy = np.arange(h, dtype=np.float32)[:, None]
    canvas = mix(wall, tcol.astype(np.float32), np.clip(yy - table_y, 0, 1))
    canvas = canvas * (1 - 0.25 * np.clip((yy - table_y) / (h - table_y), 0, 1))[..., None]
    light = _light(rng)
    n = int(rng.integers(6, 26))
    ys = np.sort(rng.uniform(table_y, h * 1.05, n))  # back to front
    for y0 in ys:
        x0, y = ctx.move(rng.uniform(-0.05, 1.0) * w, y0, 0.05)
        s = (0.4 + 0.9 * (y0 - table_y) / (h - table_y + 1)) * min(w, h) * rng.uniform(0.08, 0.28)
        col = pal[rng.integers(len(pal))] * rng.uniform(0.7, 1.2)
        t = rng.integers(4)
        soft_shadow(canvas, x0 + s * 0.5 - light[0] * s * 0.4, y, s * 0.7, s * 0.18, rng.uniform(0.3, 0.6))
        if t == 0:
            sp, al = lit_sphere(int(s), np.clip(col, 0, 1), light, rng.uniform(0, 0.9))
            paste(canvas, sp, al, int(x0), int(y - s * 0.95))
        elif t == 1:
            bh = s * rng.uniform(0.5, 1.5)
            _box(canvas, x0, y - bh, s * rng.uniform(0.6, 1.5), bh, s * rng.uniform(0.1, 0.4), col, light)
        elif t == 2:
            ch = s * rng.uniform(0.7, 2.2)
            _cylinder(canvas, x0, y - ch, s * rng.uniform(0.4, 0.9), ch, col, light, rng)
        else:  # a fruit-like ellipsoid with a stalk
            sp, al = lit_sphere(int(s), np.clip(col, 0, 1), light, 0.3)
            eh = max(int(s * rng.uniform(0.6, 1.0)), 3)
            paste(canvas, _resize(sp, (int(s) if s >= 3 else 3, eh)), _resize(al, (int(s) if s >= 3 else 3, eh)),
                  int(x0), int(y - eh))
            polygon_fill(canvas, [(x0 + s / 2, y - eh), (x0 + s / 2 + 2, y - eh - s * 0.15),
                                  (x0 + s / 2 + 4, y - eh - s * 0.12)], np.array([0.3, 0.2, 0.05]))
    return canvas


@register_scene("shelves", weight=0.6)
def shelves(ctx: Ctx) -> np.ndarray:
    """Shop shelves packed with labelled boxes, cans and bottles (clutter, repeated products)."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    canvas = np.broadcast_to(hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.2, 0.8)), (h, w, 3)).copy()
    n_shelves = int(rng.integers(2, 6))
    edges = np.linspace(0, h, n_shelves + 1)
    light = _light(rng)
    products = [(hsv(rng.random(), rng.uniform(0.3, 1), rng.uniform(0.3, 1)), rng.integers(3), rng.uniform(0.5, 1))
                for _ in range(int(rng.integers(4, 14)))]
    im_text = []
    for i in range(n_shelves):
        top, bot = edges[i], edges[i + 1]
        x = rng.uniform(-10, 5)
        while x < w:
            col, kind, hf = products[rng.integers(len(products))]
            pw = (bot - top) * rng.uniform(0.25, 0.6)
            ph = (bot - top - 8) * hf * rng.uniform(0.8, 1.0)
            xx, _ = ctx.move(x, 0, 0.01)
            if kind == 0:
                _box(canvas, xx, bot - 6 - ph, pw, ph, pw * 0.15, col, light)
            else:
                _cylinder(canvas, xx, bot - 6 - ph, pw, ph, col, light, rng)
            if rng.random() < 0.4:
                im_text.append((xx + 2, bot - 6 - ph * 0.6, pw))
            x += pw * rng.uniform(1.0, 1.3)
        b0, b1 = max(int(bot) - 6, 0), int(bot)
        canvas[b0:b1] = hsv(0, 0, rng.uniform(0.3, 0.9))
    im = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    dr = ImageDraw.Draw(im)
    for x, y, pw in im_text[:40]:
        dr.text((x, y), sentence(rng, 1), font=font(rng, max(pw / 4, 7)), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return np.asarray(im, np.float32) / 255


@register_scene("food", weight=0.8)
def food(ctx: Ctx) -> np.ndarray:
    """Plates and bowls seen from above on a table cloth, with food pieces and cutlery."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    pal = palette(rng, 6)
    base = colormap(noise_lowres(rng, h, w, 2.0, 2), np.stack([pal[0] * 0.6, pal[0]]))
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:h, 0:w]
        p = int(rng.integers(10, 50))
        stripes = ((xx // p) % 2 + (yy // p) % 2)[..., None] * 0.15
        base = base * (0.8 + stripes)
    canvas = base.astype(np.float32)
    light = _light(rng)
    for _ in range(int(rng.integers(1, 5))):
        d = int(min(w, h) * rng.uniform(0.25, 0.6))
        cx, cy = ctx.move(*(rng.uniform(0.1, 0.9, 2) * [w, h]), 0.06)
        soft_shadow(canvas, cx + d * 0.05, cy + d * 0.06, d * 0.52, d * 0.52, 0.4)
        plate = hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.8, 1.0))
        rim = ellipse_mask(d, d)
        inner = ellipse_mask(int(d * 0.75), int(d * 0.75))
        paste(canvas, np.broadcast_to(plate * 0.92, (d, d, 3)), rim, int(cx - d / 2), int(cy - d / 2))
        di = int(d * 0.75)
        paste(canvas, np.broadcast_to(plate, (di, di, 3)), inner, int(cx - di / 2), int(cy - di / 2))
        fc = palette(rng, 3)
        for _ in range(int(rng.integers(3, 25))):  # food pieces
            s = max(int(d * rng.uniform(0.06, 0.25)), 3)
            px, py = cx + rng.normal(0, d * 0.15), cy + rng.normal(0, d * 0.15)
            sp, al = lit_sphere(s, fc[rng.integers(3)], light, rng.uniform(0, 0.6))
            paste(canvas, sp * (0.8 + 0.4 * fractal_noise(rng, s, s, 1.5)[..., None]), al, int(px - s / 2), int(py - s / 2))
    if rng.random() < 0.7:  # cutlery
        x, y = ctx.move(rng.uniform(0.05, 0.95) * w, rng.uniform(0.1, 0.5) * h, 0.05)
        L = h * rng.uniform(0.3, 0.6)
        polygon_fill(canvas, [(x, y), (x + 6, y), (x + 5, y + L), (x + 1, y + L)], np.array([0.75, 0.76, 0.8]))
    return canvas


@register_scene("portrait", weight=1.2)
def portrait(ctx: Ctx) -> np.ndarray:
    """An abstract person: bokeh background, shaded head with hair, eyes and mouth, clothes."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    pal = palette(rng, 6)
    canvas = colormap(noise_lowres(rng, h, w, 3.0, 4), pal[:3] * 0.8)
    for _ in range(int(rng.integers(0, 30))):  # bokeh discs
        d = int(min(w, h) * rng.uniform(0.03, 0.15))
        paste(canvas, np.broadcast_to(np.clip(pal[rng.integers(6)] + 0.3, 0, 1), (d, d, 3)),
              ellipse_mask(d, d, d * 0.2) * rng.uniform(0.1, 0.5), int(rng.uniform(0, w)), int(rng.uniform(0, h)))
    cx, cy = ctx.move(w * rng.uniform(0.3, 0.7), h * rng.uniform(0.35, 0.55), 0.04)
    hw = min(w, h) * rng.uniform(0.22, 0.42)
    hh = hw * rng.uniform(1.15, 1.45)
    skin = hsv(rng.uniform(0.03, 0.1), rng.uniform(0.2, 0.65), rng.uniform(0.3, 0.95))
    if rng.random() < 0.15:
        skin = hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.9))  # a character
    cloth = pal[rng.integers(6)]
    polygon_fill(canvas, [(cx - hw * 1.6, h), (cx - hw * 1.2, cy + hh * 0.75), (cx + hw * 1.2, cy + hh * 0.75),
                          (cx + hw * 1.6, h)], cloth)
    polygon_fill(canvas, [(cx - hw * 0.25, cy + hh * 0.3), (cx + hw * 0.25, cy + hh * 0.3),
                          (cx + hw * 0.3, cy + hh * 0.85), (cx - hw * 0.3, cy + hh * 0.85)], skin * 0.8)
    hair = hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.7))
    hd = int(hw * rng.uniform(1.05, 1.5))
    hair_m = ellipse_mask(hd, int(hd * rng.uniform(0.9, 1.4)), 3)
    hair_m = hair_m * (0.6 + 0.5 * fractal_noise(rng, *hair_m.shape, 1.2))
    paste(canvas, np.broadcast_to(hair, hair_m.shape + (3,)), np.clip(hair_m * 1.4, 0, 1), int(cx - hd / 2), int(cy - hh * 0.62))
    light = _light(rng)
    sp, al = lit_sphere(int(hw), skin, light, 0.15, 0.4)
    sp, al = _resize(sp, (int(hw), int(hh))), _resize(al, (int(hw), int(hh)))
    paste(canvas, sp, al, int(cx - hw / 2), int(cy - hh / 2))
    eye = hsv(rng.uniform(0.05, 0.6), rng.uniform(0.3, 0.9), rng.uniform(0.1, 0.6))
    look = ctx.move(0, 0, 0.004)
    for sx in (-1, 1):
        ex, ey = cx + sx * hw * 0.2, cy - hh * 0.05
        ew = max(int(hw * 0.16), 3)
        paste(canvas, np.ones((ew // 2 + 1, ew, 3), np.float32) * 0.95, ellipse_mask(ew, ew // 2 + 1), int(ex - ew / 2), int(ey - ew / 4))
        iw = max(ew // 2, 2)
        paste(canvas, np.broadcast_to(eye, (iw, iw, 3)), ellipse_mask(iw, iw), int(ex - iw / 2 + look[0]), int(ey - iw / 2 + look[1]))
        polygon_fill(canvas, [(ex - ew * 0.6, ey - ew * 0.6), (ex + ew * 0.6, ey - ew * 0.7), (ex + ew * 0.6, ey - ew * 0.55),
                              (ex - ew * 0.6, ey - ew * 0.45)], hair * 0.8)
    mw = hw * rng.uniform(0.2, 0.4)
    my = cy + hh * 0.25
    smile = rng.uniform(-0.05, 0.12) * hh
    polygon_fill(canvas, [(cx - mw / 2, my), (cx, my + smile + 2), (cx + mw / 2, my), (cx, my + smile * 0.4 + 4)],
                 hsv(rng.uniform(0.95, 1.02), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)))
    return canvas


@register_scene("abstract")
def abstract(ctx: Ctx) -> np.ndarray:
    """Abstract painting: overlapping polygons, circles, brush strokes and a few emoji or letters."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    pal = palette(rng, 7)
    canvas = colormap(noise_lowres(rng, h, w, rng.uniform(1.5, 3.0), 2), pal[:2])
    im = Image.fromarray((canvas * 255).astype(np.uint8))
    dr = ImageDraw.Draw(im, "RGBA")
    for _ in range(int(rng.integers(8, 60))):
        c = tuple(int(v) for v in (pal[rng.integers(7)] * 255)) + (int(rng.integers(90, 256)),)
        x, y = ctx.move(*(rng.uniform(-0.1, 1.1, 2) * [w, h]), 0.03)
        s = min(w, h) * rng.uniform(0.03, 0.4)
        t = rng.integers(4)
        if t == 0:
            dr.ellipse([x - s, y - s, x + s, y + s], fill=c)
        elif t == 1:
            pts = [(x + s * np.cos(a), y + s * np.sin(a)) for a in np.sort(rng.uniform(0, 6.283, int(rng.integers(3, 7))))]
            dr.polygon(pts, fill=c)
        elif t == 2:
            pts = [(x, y)]
            for _ in range(int(rng.integers(2, 8))):
                pts.append((pts[-1][0] + rng.normal(0, s), pts[-1][1] + rng.normal(0, s)))
            dr.line(pts, fill=c, width=int(rng.integers(2, 20)), joint="curve")
        else:
            dr.rectangle([x, y, x + s * rng.uniform(0.2, 2), y + s * rng.uniform(0.2, 2)], fill=c)
    for _ in range(int(rng.integers(0, 4))):
        e = emoji(rng, int(min(w, h) * rng.uniform(0.08, 0.3)))
        if e is not None:
            x, y = ctx.move(rng.uniform(0, w), rng.uniform(0, h), 0.03)
            im.paste(e, (int(x), int(y)), e)
    out = np.asarray(im, np.float32) / 255
    return out * (0.85 + 0.3 * fractal_noise(rng, h, w, 1.2)[..., None])  # canvas grain
