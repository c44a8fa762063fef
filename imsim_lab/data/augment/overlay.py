"""Things drawn over the image: text, emoji, stripes.

Text is drawn here with the fonts AugLy ships (AugLy's ``overlay_text`` takes glyph indices, not a
string, and drops its opacity on RGB images); emoji and stripes call AugLy. Sizes and positions
are fractions of the image; fonts and emoji are named relative to the asset folders.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ._augly import augly
from .core import Op, lerp, register_family, register_op, rnd

#: Words for random captions (DISC21 overlays are short strings, often nonsense).
WORDS = (
    "copy", "detect", "image", "photo", "sunset", "lol", "omg", "wow", "best", "day", "ever", "share",
    "like", "follow", "news", "sale", "today", "2021", "love", "this", "city", "summer", "trip", "look",
    "what", "amazing", "cat", "dog", "food", "party", "vibes", "mood", "new", "post", "story", "live",
)


def random_text(rng: np.random.Generator, n_words: int = 3) -> str:
    """A few random words, sometimes a random alphanumeric token."""
    words = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=n_words)]
    if rng.random() < 0.3:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        words.append("".join(alphabet[int(i)] for i in rng.integers(len(alphabet), size=5)))
    text = " ".join(words)
    return text.upper() if rng.random() < 0.3 else text


def draw_text(img: Image.Image, lines, font, size: float, color, opacity: float, x: float, y: float,
              assets, stroke: int = 0) -> Image.Image:
    """Composite ``lines`` of text onto ``img``; ``size`` is the font height / short side."""
    px = int(round(size * min(img.size)))
    if px < 1 or opacity <= 0 or not any(lines):
        return img.copy()
    f = assets.font(font, px)
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    fill = tuple(int(c) for c in color) + (int(round(255 * float(opacity))),)
    stroke_fill = (0, 0, 0, fill[3]) if sum(fill[:3]) > 384 else (255, 255, 255, fill[3])
    x0, y0 = x * img.width, y * img.height
    for i, line in enumerate(lines):
        d.text((x0, y0 + i * px * 1.15), str(line), font=f, fill=fill,
               stroke_width=int(stroke), stroke_fill=stroke_fill)
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


@register_op("text")
def _text(img, p, assets):
    return draw_text(img, p["lines"], p.get("font", ""), float(p["size"]), p["color"],
                     float(p.get("opacity", 1.0)), float(p["x"]), float(p["y"]), assets,
                     int(p.get("stroke", 0)))


@register_family("text", group="overlay", identity_at_zero=True)
def text_family(s, rng, size, assets):
    """Caption text over the image: 1-3 lines, font height up to 30 % of the short side."""
    n_lines = 1 + int(rng.integers(0, 1 + round(2 * s)))
    lines = [random_text(rng, int(rng.integers(1, 4))) for _ in range(n_lines)]
    return [Op("text", {
        "lines": lines, "font": assets.draw_font(rng), "size": rnd(0.3 * s * rng.uniform(0.5, 1.0)),
        "color": [int(v) for v in rng.integers(0, 256, 3)], "opacity": rnd(rng.uniform(0.6, 1.0)),
        "x": rnd(rng.uniform(0.0, 0.5)), "y": rnd(rng.uniform(0.0, 0.8)),
        "stroke": int(rng.random() < 0.3),
    })]


@register_op("emoji", backend="augly")
def _emoji(img, p, assets):
    h = img.height
    if int(h * float(p["size"])) < 1 or float(p.get("opacity", 1.0)) <= 0:
        return img.copy()
    return augly("overlay_image", img, overlay=assets.emoji(p["emoji"]), overlay_size=float(p["size"]),
                 opacity=float(p.get("opacity", 1.0)), x_pos=float(p["x"]), y_pos=float(p["y"]))


@register_family("emoji", group="overlay", identity_at_zero=True)
def emoji_family(s, rng, size, assets):
    """1-3 emoji pasted on top, each up to 40 % of the image height."""
    n = 1 + int(rng.integers(0, 1 + round(2 * s)))
    ops = []
    for _ in range(n):
        sz = 0.4 * s * rng.uniform(0.5, 1.0)
        ops.append(Op("emoji", {
            "emoji": assets.emojis[int(rng.integers(len(assets.emojis)))], "size": rnd(sz),
            "opacity": rnd(rng.uniform(0.7, 1.0)),
            "x": rnd(rng.uniform(0, max(0.0, 1 - sz))), "y": rnd(rng.uniform(0, max(0.0, 1 - sz))),
        }))
    return ops


@register_op("stripes", backend="augly")
def _stripes(img, p, assets):
    if float(p["opacity"]) <= 0 or float(p["width"]) <= 0:
        return img.copy()
    return augly("overlay_stripes", img, line_width=float(p["width"]), line_color=tuple(p["color"]),
                 line_angle=float(p["angle"]), line_density=float(p["density"]),
                 line_type=str(p["type"]), line_opacity=float(p["opacity"]))


@register_family("stripes", group="overlay", identity_at_zero=True)
def stripes_family(s, rng, size, assets):
    """Parallel lines (solid, dashed or dotted) over the image, opacity and width growing with strength."""
    return [Op("stripes", {
        "width": rnd(lerp(0.0, 0.6, s) * rng.uniform(0.5, 1.0)), "density": rnd(rng.uniform(0.3, 0.8)),
        "angle": rnd(rng.uniform(-90, 90), 2), "type": ["solid", "dashed", "dotted"][int(rng.integers(3))],
        "color": [int(v) for v in rng.integers(0, 256, 3)], "opacity": rnd(lerp(0.0, 1.0, s) ** 0.5),
    })]
