"""Man-made scene families: documents, screenshots, charts, memes, emoji collages, cities, rooms.

DISC21 holds many such images (text pages, user-interface captures, memes). They are drawn with
PIL (text with the fonts AugLy ships), then returned as float canvases like the other families.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .render import Ctx, colormap, fractal_noise, hsv, mix, noise_lowres, palette, polygon_fill
from .scenes import emoji, font, register_scene, sentence


def _rgb(c) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(c) * 255, 0, 255))


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), np.float32) / 255


def _thumb(rng, w: int, h: int) -> Image.Image:
    """A small picture for a page or a card: a noise landscape with a random palette."""
    w, h = max(w, 4), max(h, 4)
    t = fractal_noise(rng, h, w, rng.uniform(1.8, 3.2))
    return Image.fromarray((colormap(t, palette(rng, 3)) * 255).astype(np.uint8))


def _paragraph(dr, rng, x, y, width, bottom, size, color, mono=False) -> float:
    f = font(rng, size, mono)
    line_h = size * rng.uniform(1.15, 1.6)
    while y + line_h < bottom:
        n = int(rng.integers(3, 14))
        text = sentence(rng, n)
        while n > 1 and dr.textlength(text, font=f) > width:
            n -= 1
            text = " ".join(text.split(" ")[:n])
        dr.text((x, y), text, font=f, fill=color)
        y += line_h
        if rng.random() < 0.12:
            break
    return y


@register_scene("document", weight=1.3)
def document(ctx: Ctx) -> np.ndarray:
    """A page of text (columns, headings, a figure, a table), flat as a scan or photographed on a desk."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    paper = hsv(rng.uniform(0.08, 0.16), rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0))
    ink = _rgb(hsv(rng.uniform(0.55, 0.7), rng.uniform(0, 0.5), rng.uniform(0.0, 0.3)))
    page = Image.new("RGB", (w, h), _rgb(paper))
    dr = ImageDraw.Draw(page)
    margin = w * rng.uniform(0.05, 0.12)
    size = int(h * rng.uniform(0.018, 0.035))
    y = margin
    dr.text((margin, y), sentence(rng, int(rng.integers(2, 6))), font=font(rng, size * rng.uniform(1.6, 2.8)), fill=ink)
    y += size * 3.5
    cols = int(rng.integers(1, 3))
    cw = (w - 2 * margin - (cols - 1) * margin * 0.5) / cols
    for c in range(cols):
        x, yy = margin + c * (cw + margin * 0.5), y
        while yy < h - margin - size * 2:
            r = rng.random()
            if r < 0.12:  # a figure
                fh = int(min(h * rng.uniform(0.12, 0.3), h - margin - yy))
                if fh > 10:
                    page.paste(_thumb(rng, int(cw), fh), (int(x), int(yy)))
                    yy += fh + size
            elif r < 0.2:  # a table
                rows, ncol = int(rng.integers(3, 8)), int(rng.integers(2, 5))
                for i in range(rows + 1):
                    dr.line([(x, yy + i * size * 1.5), (x + cw, yy + i * size * 1.5)], fill=ink, width=1)
                    if i < rows:
                        for j in range(ncol):
                            dr.text((x + j * cw / ncol + 3, yy + i * size * 1.5 + 2), sentence(rng, 1, False)[:8],
                                    font=font(rng, size * 0.8), fill=ink)
                yy += (rows + 1) * size * 1.5
            elif r < 0.3:
                dr.text((x, yy), sentence(rng, 3), font=font(rng, size * 1.3), fill=ink)
                yy += size * 2
            else:
                yy = _paragraph(dr, rng, x, yy, cw, h - margin, size, ink) + size * 0.6
    canvas = _arr(page)
    if rng.random() < 0.5:  # photographed: the page as a quadrilateral on a desk
        desk = colormap(noise_lowres(rng, h, w, 2.0, 2, aniso=(0.1, 1.0)), palette(rng, 2) * 0.7)
        q = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
        q = q * rng.uniform(0.6, 0.85) + [w * rng.uniform(0.05, 0.2), h * rng.uniform(0.05, 0.2)]
        q = q + rng.normal(0, 0.03, (4, 2)) * [w, h]
        coeffs = _perspective_coeffs(q, np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32))
        warped = page.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
        m = Image.new("L", (w, h), 255).transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
        canvas = mix(desk, _arr(warped), np.asarray(m, np.float32) / 255)
        canvas = canvas * (0.8 + 0.25 * noise_lowres(rng, h, w, 3.0, 4)[..., None])  # uneven light
    return canvas


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` to input points ``src``."""
    a, b = [], []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.array(a, np.float64), np.array(b, np.float64)).tolist()


@register_scene("screenshot", weight=1.3)
def screenshot(ctx: Ctx) -> np.ndarray:
    """A user interface: title bar, side bar, cards with pictures, buttons, chat bubbles, icons."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    dark = rng.random() < 0.35
    bg = hsv(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.08, 0.2) if dark else rng.uniform(0.9, 1.0))
    fg = (0.92, 0.92, 0.92) if dark else (0.1, 0.1, 0.12)
    accent = hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9))
    im = Image.new("RGB", (w, h), _rgb(bg))
    dr = ImageDraw.Draw(im)
    bar = int(h * rng.uniform(0.06, 0.12))
    dr.rectangle([0, 0, w, bar], fill=_rgb(accent))
    dr.text((bar * 0.4, bar * 0.2), sentence(rng, 2), font=font(rng, bar * 0.5), fill=_rgb((1, 1, 1)))
    x0 = 0
    if rng.random() < 0.6:  # side bar
        x0 = int(w * rng.uniform(0.15, 0.3))
        dr.rectangle([0, bar, x0, h], fill=_rgb(np.clip(np.asarray(bg) * 0.9 + 0.05, 0, 1)))
        for i in range(int(rng.integers(4, 12))):
            dr.text((8, bar + 10 + i * h * 0.06), sentence(rng, 1), font=font(rng, h * 0.025), fill=_rgb(fg))
    y = bar + 10
    layout = rng.integers(3)
    while y < h - 20:
        if layout == 0:  # cards with pictures
            ncard = int(rng.integers(1, 4))
            cw = (w - x0 - 10 * (ncard + 1)) / ncard
            ch = h * rng.uniform(0.2, 0.4)
            for i in range(ncard):
                cx = x0 + 10 + i * (cw + 10)
                dr.rounded_rectangle([cx, y, cx + cw, y + ch], radius=8, fill=_rgb(np.clip(np.asarray(bg) + (0.08 if dark else -0.05), 0, 1)))
                im.paste(_thumb(rng, int(cw - 10), int(ch * 0.6)), (int(cx + 5), int(y + 5)))
                dr.text((cx + 6, y + ch * 0.68), sentence(rng, 3)[:30], font=font(rng, h * 0.025), fill=_rgb(fg))
            y += ch + 10
        elif layout == 1:  # chat bubbles
            mine = rng.random() < 0.5
            text = sentence(rng, int(rng.integers(2, 9)))
            f = font(rng, h * 0.03)
            tw = min(dr.textlength(text, font=f) + 20, (w - x0) * 0.8)
            bx = w - tw - 10 if mine else x0 + 10
            dr.rounded_rectangle([bx, y, bx + tw, y + h * 0.06], radius=12, fill=_rgb(accent if mine else np.clip(np.asarray(bg) * 0.85 + 0.1, 0, 1)))
            dr.text((bx + 10, y + h * 0.012), text, font=f, fill=_rgb((1, 1, 1) if mine else fg))
            y += h * 0.08
        else:  # list rows with icons and buttons
            e = emoji(rng, int(h * 0.06))
            if e is not None:
                im.paste(e, (x0 + 10, int(y)), e)
            dr.text((x0 + h * 0.09, y + 4), sentence(rng, 4), font=font(rng, h * 0.028), fill=_rgb(fg))
            if rng.random() < 0.4:
                dr.rounded_rectangle([w - 90, y, w - 12, y + h * 0.05], radius=6, fill=_rgb(accent))
            dr.line([(x0 + 8, y + h * 0.075), (w - 8, y + h * 0.075)], fill=_rgb(np.asarray(fg) * 0.3 + np.asarray(bg) * 0.7))
            y += h * 0.085
    return _arr(im)


@register_scene("chart")
def chart(ctx: Ctx) -> np.ndarray:
    """A plot as in a report or slide: bars, lines, scatter or pie, with axes, ticks and a title."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    im = Image.new("RGB", (w, h), _rgb(hsv(rng.random(), rng.uniform(0, 0.1), rng.uniform(0.85, 1))))
    dr = ImageDraw.Draw(im)
    pal = [_rgb(c) for c in palette(rng, 6)]
    fs = h * rng.uniform(0.025, 0.045)
    dr.text((w * 0.1, h * 0.03), sentence(rng, int(rng.integers(2, 6))), font=font(rng, fs * 1.3), fill=(20, 20, 20))
    L, R, T, B = w * 0.12, w * 0.95, h * 0.15, h * 0.85
    kind = rng.integers(4)
    if kind == 3:  # pie
        cx, cy, r = (L + R) / 2, (T + B) / 2, min(R - L, B - T) / 2
        parts = np.cumsum(rng.dirichlet(np.ones(int(rng.integers(2, 7))))) * 360
        a0 = rng.uniform(0, 360)
        prev = 0.0
        for i, p in enumerate(parts):
            dr.pieslice([cx - r, cy - r, cx + r, cy + r], a0 + prev, a0 + p, fill=pal[i % 6], outline=(255, 255, 255))
            prev = p
        return _arr(im)
    dr.line([(L, T), (L, B), (R, B)], fill=(40, 40, 40), width=2)
    for i in range(6):
        y = B - (B - T) * i / 5
        dr.line([(L - 4, y), (L, y)], fill=(40, 40, 40))
        if rng.random() < 0.6:
            dr.line([(L, y), (R, y)], fill=(220, 220, 220))
        dr.text((L - fs * 2.5, y - fs / 2), f"{i * rng.integers(1, 50)}", font=font(rng, fs * 0.8), fill=(40, 40, 40))
    n = int(rng.integers(5, 40))
    series = int(rng.integers(1, 4))
    for s in range(series):
        v = np.cumsum(rng.normal(0, 1, n)) if rng.random() < 0.6 else rng.uniform(0, 1, n)
        v = (v - v.min()) / (np.ptp(v) + 1e-9) * 0.9 + 0.05
        xs = L + (R - L) * (np.arange(n) + 0.5) / n
        ys = B - (B - T) * v
        if kind == 0:
            bw = (R - L) / n / series * 0.8
            for x, y in zip(xs, ys):
                dr.rectangle([x - (R - L) / n * 0.4 + s * bw, y, x - (R - L) / n * 0.4 + (s + 1) * bw, B], fill=pal[s])
        elif kind == 1:
            dr.line(list(zip(xs, ys)), fill=pal[s], width=int(rng.integers(1, 4)))
        else:
            for x, y in zip(xs, ys + rng.normal(0, 10, n)):
                dr.ellipse([x - 3, y - 3, x + 3, y + 3], fill=pal[s])
    return _arr(im)


@register_scene("meme", weight=1.3)
def meme(ctx: Ctx) -> np.ndarray:
    """A meme: a picture from another family with captions in heavy type above and below."""
    from .scenes import SCENES

    rng, w, h = ctx.rng, ctx.w, ctx.h
    inner = [n for n in ("landscape", "still_life", "portrait", "food", "forest", "abstract") if n in SCENES]
    sub = Ctx(np.random.default_rng(rng.integers(2 ** 32)), ctx.jit, w, h)
    canvas = SCENES.get(inner[int(rng.integers(len(inner)))])(sub)
    im = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    dr = ImageDraw.Draw(im)
    size = h * rng.uniform(0.07, 0.12)
    f = font(rng, size)
    for pos in ("top", "bottom") if rng.random() < 0.6 else ("top",):
        text = sentence(rng, int(rng.integers(2, 6))).upper()
        while dr.textlength(text, font=f) > w * 0.95 and " " in text:
            text = text.rsplit(" ", 1)[0]
        tw = dr.textlength(text, font=f)
        y = h * 0.03 if pos == "top" else h - size * 1.4
        dr.text(((w - tw) / 2, y), text, font=f, fill=(255, 255, 255), stroke_width=max(int(size / 14), 1),
                stroke_fill=(0, 0, 0))
    return _arr(im)


@register_scene("collage")
def collage(ctx: Ctx) -> np.ndarray:
    """Stickers and emoji scattered over a patterned background, as in social-media edits."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    pal = palette(rng, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    pattern = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * rng.uniform(0.02, 0.2)) * 0.5 + 0.5
    canvas = colormap(pattern * 0.5 + 0.5 * fractal_noise(rng, h, w, 2.2), pal)
    im = Image.fromarray((canvas * 255).astype(np.uint8))
    for _ in range(int(rng.integers(5, 40))):
        e = emoji(rng, int(min(w, h) * rng.uniform(0.06, 0.3)))
        if e is None:
            break
        e = e.rotate(rng.uniform(-40, 40), expand=True, resample=Image.Resampling.BILINEAR)
        x, y = ctx.move(rng.uniform(-0.1, 1.0) * w, rng.uniform(-0.1, 1.0) * h, 0.04)
        im.paste(e, (int(x), int(y)), e)
    if rng.random() < 0.5:
        dr = ImageDraw.Draw(im)
        dr.text((rng.uniform(0, 0.4) * w, rng.uniform(0, 0.8) * h), sentence(rng, 2), font=font(rng, h * 0.08),
                fill=_rgb(pal[0]), stroke_width=2, stroke_fill=_rgb(1 - pal[0]))
    return _arr(im)


@register_scene("city", weight=0.9)
def city(ctx: Ctx) -> np.ndarray:
    """A street or skyline: buildings with window grids (lit at night), a road with perspective."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    night = rng.random() < 0.35
    sky_top = hsv(rng.uniform(0.55, 0.7), rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.2) if night else rng.uniform(0.5, 0.95))
    sky_bot = hsv(rng.uniform(0.0, 0.15) if night else rng.uniform(0.5, 0.6), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.4) if night else 0.95)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(mix(sky_top[None, None, :], sky_bot, t), (h, w, 3)).copy()
    ground = h * rng.uniform(0.6, 0.9)
    pal = palette(rng, 6)
    for layer in range(int(rng.integers(1, 4))):  # far to near
        x = rng.uniform(-30, 0)
        haze = 0.6 / (layer + 1) if not night else 0.2
        while x < w:
            bw = w * rng.uniform(0.05, 0.2) * (1 + layer * 0.5)
            bh = h * rng.uniform(0.15, 0.75) * (1 - 0.1 * layer)
            xx, _ = ctx.move(x, 0, 0.006)
            top = ground - bh
            col = mix(pal[rng.integers(6)] * rng.uniform(0.3, 0.9), sky_bot, haze) * (0.3 if night else 1)
            x0, x1, y0 = int(max(xx, 0)), int(min(xx + bw, w)), int(max(top, 0))
            if x1 > x0 and int(ground) > y0:
                canvas[y0:int(ground), x0:x1] = col
                win = hsv(rng.uniform(0.1, 0.16), rng.uniform(0.2, 0.7), 0.95) if night else col * 0.55 + 0.2
                px, py = rng.uniform(6, 16), rng.uniform(8, 20)
                lit = rng.uniform(0.2, 0.8)
                for wy in np.arange(top + 6, ground - 8, py):
                    for wx in np.arange(xx + 4, xx + bw - 6, px):
                        if rng.random() < (lit if night else 0.9):
                            a, b = int(max(wx, 0)), int(min(wx + px * 0.55, w))
                            canvas[int(wy):int(wy + py * 0.55), a:b] = win * rng.uniform(0.7, 1.1)
            x += bw * rng.uniform(0.9, 1.4)
    road = hsv(0, 0, rng.uniform(0.1, 0.4))
    canvas[int(ground):] = road
    vx = w * rng.uniform(0.3, 0.7)
    for k in range(int(rng.integers(1, 5))):  # lane marks toward a vanishing point
        xb = rng.uniform(-0.5, 1.5) * w
        polygon_fill(canvas, [(vx, ground), (vx + 1, ground), (xb + 6, h), (xb - 6, h)], np.array([0.9, 0.85, 0.5]))
    for _ in range(int(rng.integers(0, 6))):  # cars as lit blobs
        x, y = ctx.move(rng.uniform(0, w), rng.uniform(ground, h), 0.05)
        s = (y - ground + 10) * rng.uniform(0.4, 0.9)
        polygon_fill(canvas, [(x, y), (x + s * 1.8, y), (x + s * 1.6, y - s * 0.6), (x + s * 0.2, y - s * 0.6)],
                     hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9)))
    return canvas


@register_scene("interior")
def interior(ctx: Ctx) -> np.ndarray:
    """A room in one-point perspective: tiled floor, walls, a window with a view, frames, furniture."""
    rng, w, h = ctx.rng, ctx.w, ctx.h
    pal = palette(rng, 6)
    vx, vy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.35, 0.55)
    bw, bh = w * rng.uniform(0.3, 0.55), h * rng.uniform(0.3, 0.5)
    bx0, by0, bx1, by1 = vx - bw / 2, vy - bh / 2, vx + bw / 2, vy + bh / 2
    wall = pal[0] * 0.6 + 0.35
    canvas = np.broadcast_to(wall * 0.85, (h, w, 3)).copy()
    polygon_fill(canvas, [(0, 0), (bx0, by0), (bx0, by1), (0, h)], wall * 0.75)
    polygon_fill(canvas, [(w, 0), (bx1, by0), (bx1, by1), (w, h)], wall * 0.95)
    polygon_fill(canvas, [(0, 0), (w, 0), (bx1, by0), (bx0, by0)], wall * 1.05)
    polygon_fill(canvas, [(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)], wall)
    floor = [(0, h), (bx0, by1), (bx1, by1), (w, h)]
    polygon_fill(canvas, floor, pal[1] * 0.6)
    im = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    dr = ImageDraw.Draw(im)
    n = int(rng.integers(4, 14))
    for i in range(n + 1):  # floor tile lines toward the vanishing point
        xb = -w + 3 * w * i / n
        dr.line([(bx0 + bw * i / n, by1), (xb, h)], fill=_rgb(pal[1] * 0.4), width=1)
    for j in range(1, n):
        t = (j / n) ** 2
        y = by1 + (h - by1) * t
        dr.line([(bx0 - bx0 * t, y), (bx1 + (w - bx1) * t, y)], fill=_rgb(pal[1] * 0.4), width=1)
    if rng.random() < 0.8:  # a window on the back wall with a view
        ww, wh = bw * rng.uniform(0.25, 0.5), bh * rng.uniform(0.3, 0.6)
        wx, wy = bx0 + rng.uniform(0.05, 0.6) * bw, by0 + rng.uniform(0.1, 0.3) * bh
        im.paste(_thumb(rng, int(ww), int(wh)), (int(wx), int(wy)))
        dr.rectangle([wx, wy, wx + ww, wy + wh], outline=_rgb(pal[2]), width=3)
    for _ in range(int(rng.integers(0, 4))):  # frames on the side walls
        fx, fy = ctx.move(rng.uniform(0.02, 0.2) * w, rng.uniform(0.15, 0.4) * h, 0.01)
        fw, fh = w * rng.uniform(0.05, 0.12), h * rng.uniform(0.06, 0.15)
        im.paste(_thumb(rng, int(fw), int(fh)), (int(fx), int(fy)))
    canvas = np.asarray(im, np.float32) / 255
    for _ in range(int(rng.integers(1, 5))):  # furniture as boxes on the floor
        x, y = ctx.move(rng.uniform(0.05, 0.8) * w, rng.uniform(by1 + 10, h), 0.04)
        s = (y - by1) / (h - by1 + 1) * w * rng.uniform(0.15, 0.35) + 10
        col = pal[rng.integers(2, 6)]
        polygon_fill(canvas, [(x, y - s * 0.6), (x + s, y - s * 0.6), (x + s, y), (x, y)], col * 0.8)
        polygon_fill(canvas, [(x, y - s * 0.6), (x + s * 0.15, y - s * 0.75), (x + s * 1.15, y - s * 0.75),
                              (x + s, y - s * 0.6)], np.clip(col * 1.1, 0, 1))
    light = noise_lowres(rng, h, w, 3.5, 4)
    return canvas * (0.75 + 0.4 * light[..., None])
