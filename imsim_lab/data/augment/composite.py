"""Edits that bring in other images: paste onto one, overlay one on top, combine several.

Other images are named by id and fetched from :class:`~imsim_lab.data.augment.assets.Assets` at replay
time (the benchmark builder's images, or procedural ``synth:`` stand-ins). ``combine`` is the
hardest DISC21 family: the query is one tile of a 2-4 image collage, or blended with another image.
"""

from __future__ import annotations

from PIL import Image, ImageOps

from ._augly import augly
from .core import MAX_SIDE, Op, cap_size, lerp, register_family, register_op, rnd, to_rgb


def _other(assets, image_id: str) -> Image.Image:
    return cap_size(to_rgb(assets.image(image_id)))


def _fit(img: Image.Image, box_w: float, box_h: float) -> Image.Image:
    """Resize keeping the aspect so that ``img`` fits inside box_w x box_h (sides >= 1)."""
    f = min(box_w / img.width, box_h / img.height)
    size = (max(1, int(round(img.width * f))), max(1, int(round(img.height * f))))
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def _cover(img: Image.Image, w: int, h: int) -> Image.Image:
    """Resize and centre-crop ``img`` to exactly w x h."""
    return ImageOps.fit(img, (max(1, w), max(1, h)), Image.Resampling.BICUBIC)


# -- paste onto another image --------------------------------------------------------------------
@register_op("paste")
def _paste(img, p, assets):
    bg = _other(assets, p["background"])
    size = float(p["size"])
    piece = _fit(img, size * bg.width, size * bg.height)
    x = int(round(float(p["x"]) * (bg.width - piece.width)))
    y = int(round(float(p["y"]) * (bg.height - piece.height)))
    opacity = float(p.get("opacity", 1.0))
    mask = Image.new("L", piece.size, int(round(255 * opacity)))
    bg.paste(piece, (x, y), mask)
    return bg


@register_family("paste", group="composite", identity_at_zero=False)
def paste_family(s, rng, size, assets):
    """Pasted onto another image, shrinking from 90 % to 20 % of the background's size."""
    return [Op("paste", {
        "background": assets.draw_image_ids(rng, 1)[0], "size": rnd(lerp(0.9, 0.2, s)),
        "x": rnd(rng.random()), "y": rnd(rng.random()), "opacity": rnd(rng.uniform(0.85, 1.0)),
    })]


# -- another image on top ------------------------------------------------------------------------
@register_op("overlay_image", backend="augly")
def _overlay(img, p, assets):
    size, opacity = float(p["size"]), float(p["opacity"])
    if int(img.height * size) < 1 or opacity <= 0:
        return img.copy()
    top = _other(assets, p["image"])
    if int(top.width * max(1, int(img.height * size)) / top.height) < 1:
        return img.copy()  # a sliver thinner than one pixel: AugLy would ask PIL for width 0
    return augly("overlay_image", img, overlay=top, overlay_size=size, opacity=opacity,
                 x_pos=float(p["x"]), y_pos=float(p["y"]))


@register_family("overlay_image", group="composite", identity_at_zero=True)
def overlay_image_family(s, rng, size, assets):
    """Another image laid over part of this one, up to 70 % of its height."""
    sz = lerp(0.0, 0.7, s) * rng.uniform(0.6, 1.0)
    return [Op("overlay_image", {
        "image": assets.draw_image_ids(rng, 1)[0], "size": rnd(sz), "opacity": rnd(rng.uniform(0.6, 1.0)),
        "x": rnd(rng.uniform(0, max(0.0, 1 - sz))), "y": rnd(rng.uniform(0, max(0.0, 1 - sz))),
    })]


# -- combine several images ----------------------------------------------------------------------
def collage_layout(n: int, split: float, split2: float, horizontal: bool) -> list[list[float]]:
    """Tiles (x0, y0, x1, y1 as fractions of the canvas) of an ``n``-image collage (n = 2..4)."""
    a, b = split, split2
    if n == 2:
        tiles = [[0, 0, a, 1], [a, 0, 1, 1]]
    elif n == 3:
        tiles = [[0, 0, a, 1], [a, 0, 1, b], [a, b, 1, 1]]
    elif n == 4:
        tiles = [[0, 0, a, b], [a, 0, 1, b], [0, b, a, 1], [a, b, 1, 1]]
    else:
        raise ValueError(f"a collage has 2 to 4 images, got {n}")
    if horizontal:  # transpose the layout: splits run across instead of down
        tiles = [[y0, x0, y1, x1] for x0, y0, x1, y1 in tiles]
    return tiles


def collage(img: Image.Image, others: list[Image.Image], tiles, slot: int, gap: float,
            gap_color) -> Image.Image:
    """Put ``img`` in tile ``slot`` and ``others`` in the remaining tiles (cover-cropped).

    The canvas is sized so that ``img`` keeps its resolution in its tile, then shrunk to fit
    :data:`MAX_SIDE`.
    """
    tx0, ty0, tx1, ty1 = tiles[slot]
    W, H = img.width / (tx1 - tx0), img.height / (ty1 - ty0)
    f = min(1.0, MAX_SIDE / max(W, H))
    W, H = max(2, int(round(W * f))), max(2, int(round(H * f)))
    g = int(round(gap * min(W, H) / 2))
    canvas = Image.new("RGB", (W, H), tuple(int(c) for c in gap_color))
    pics = list(others)
    pics.insert(slot, img)
    for (x0, y0, x1, y1), pic in zip(tiles, pics):
        X0, Y0, X1, Y1 = round(x0 * W) + g, round(y0 * H) + g, round(x1 * W) - g, round(y1 * H) - g
        if X1 > X0 and Y1 > Y0:
            canvas.paste(_cover(pic, X1 - X0, Y1 - Y0), (X0, Y0))
    return canvas


@register_op("combine")
def _combine(img, p, assets):
    others = [_other(assets, i) for i in p["others"]]
    if p["mode"] == "blend":
        top = _cover(others[0], img.width, img.height)
        return Image.blend(img, top, float(p["alpha"]))
    tiles = collage_layout(len(others) + 1, float(p["split"]), float(p["split2"]), bool(p["horizontal"]))
    return collage(img, others, tiles, int(p["slot"]), float(p["gap"]), p["gap_color"])


@register_family("combine", group="composite", identity_at_zero=False)
def combine_family(s, rng, size, assets):
    """Collage of 2-4 images (more images and a smaller tile with strength) or a blend of two."""
    if rng.random() < 0.25:
        return [Op("combine", {"mode": "blend", "others": assets.draw_image_ids(rng, 1),
                               "alpha": rnd(lerp(0.2, 0.6, s))})]
    n = 2 + min(2, int(3 * s * rng.uniform(0.7, 1.0) + 0.5))
    # the query's tile shrinks with strength: the splits move towards 1/3 .. 2/3
    share = lerp(0.6, 0.35, s)
    slot = int(rng.integers(n))
    left = {0} if n == 3 else {0, 2}  # tiles whose width is `split` (see collage_layout)
    split = share if slot in left else 1 - share
    split2 = rnd(rng.uniform(0.35, 0.65))
    return [Op("combine", {
        "mode": "collage", "others": assets.draw_image_ids(rng, n - 1), "split": rnd(split),
        "split2": split2, "horizontal": bool(rng.random() < 0.5), "slot": slot,
        "gap": rnd(rng.choice([0.0, 0.01, 0.03])), "gap_color": [255, 255, 255] if rng.random() < 0.6 else [0, 0, 0],
    })]
