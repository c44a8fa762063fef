"""The image inside something larger: social-media screenshots, feed-post frames, memes.

``screenshot`` uses AugLy's two screenshot templates (web and mobile, shipped with AugLy 1.0.0);
``feed_frame`` draws a generic feed post (header with an avatar circle and a name, the picture,
a row of buttons, a caption). ``meme`` is written here because AugLy 1.0.0's ``meme_format`` calls
``FreeTypeFont.getsize_multiline``, which Pillow 10 removed: a band of white or black with an
Impact caption above the picture, or the classic white Impact text with a black outline on it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from ._augly import augly
from .assets import AssetError
from .core import Op, lerp, register_family, register_op, rnd
from .overlay import random_text

_LIGHT = {"bg": (255, 255, 255), "fg": (20, 20, 20), "muted": (110, 110, 110), "line": (220, 220, 220)}
_DARK = {"bg": (24, 25, 26), "fg": (228, 230, 235), "muted": (150, 150, 150), "line": (60, 60, 60)}


@register_op("screenshot", backend="augly")
def _screenshot(img, p, assets):
    if assets.screenshot_dir is None:
        raise AssetError("screenshot templates asked for, but these assets have no screenshot folder")
    root = Path(assets.screenshot_dir)
    return augly("overlay_onto_screenshot", img, template_filepath=str(root / p["template"]),
                 template_bboxes_filepath=str(root / "bboxes.json"), crop_src_to_fit=bool(p["crop"]))


def _fit_font(assets, font: str, text: str, max_w: float, max_h: float):
    """Largest font size (deterministic search) such that ``text`` fits in max_w x max_h."""
    size = max(1, int(max_h))
    while size > 1:
        f = assets.font(font, size)
        x0, y0, x1, y1 = f.getbbox(text)
        if x1 - x0 <= max_w and y1 - y0 <= max_h:
            return f
        size = max(1, int(size * 0.85))
    return assets.font(font, 1)


def feed_frame(img: Image.Image, assets, name: str, caption: str, font: str, margin: float,
               dark: bool, avatar_color) -> Image.Image:
    """Draw a generic social feed post around ``img``.

    Args:
        margin: header height as a fraction of the picture's width (borders and button row scale
            with it); larger margins leave the picture a smaller share of the screenshot.
    """
    t = _DARK if dark else _LIGHT
    w, h = img.size
    unit = max(2, int(round(margin * w)))
    pad = max(1, unit // 4)
    header, buttons, cap = unit, int(unit * 0.7), int(unit * 0.6)
    W, H = w + 2 * pad, header + h + buttons + cap + 2 * pad
    out = Image.new("RGB", (W, H), t["bg"])
    d = ImageDraw.Draw(out)
    r = int(header * 0.35)
    cx, cy = pad + r + pad, pad + header // 2
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(avatar_color))
    fname = _fit_font(assets, font, name, W * 0.5, header * 0.35)
    d.text((cx + r + pad * 2, cy), name, font=fname, fill=t["fg"], anchor="lm")
    d.text((W - pad * 3, cy), "...", font=fname, fill=t["muted"], anchor="rm")
    out.paste(img, (pad, pad + header))
    by = pad + header + h + buttons // 2
    d.line((pad, pad + header + h + 1, W - pad, pad + header + h + 1), fill=t["line"])
    fbtn = _fit_font(assets, font, "Comment", W / 5, buttons * 0.45)
    for i, label in enumerate(("Like", "Comment", "Share")):
        d.text((W * (2 * i + 1) / 6, by), label, font=fbtn, fill=t["muted"], anchor="mm")
    fcap = _fit_font(assets, font, caption, W - 2 * pad, cap * 0.5)
    d.text((pad * 2, by + buttons // 2 + cap // 2), caption, font=fcap, fill=t["fg"], anchor="lm")
    return out


@register_op("feed_frame")
def _feed_frame(img, p, assets):
    return feed_frame(img, assets, p["name"], p["caption"], p.get("font", ""), float(p["margin"]),
                      bool(p["dark"]), p["avatar"])


@register_family("screenshot", group="frame", identity_at_zero=False)
def screenshot_family(s, rng, size, assets):
    """Shown in a social-media post: AugLy's web/mobile templates or a drawn feed-post frame."""
    if assets.screenshot_dir is not None and rng.random() < 0.4:
        return [Op("screenshot", {"template": ["web.png", "mobile.png"][int(rng.integers(2))],
                                  "crop": bool(rng.random() < 0.5)})]
    first = ["anna", "ben", "chloe", "dev", "emma", "felix", "gina", "hugo", "ines", "jon"]
    name = f"{first[int(rng.integers(len(first)))]}_{int(rng.integers(10, 9999))}"
    return [Op("feed_frame", {
        "name": name, "caption": random_text(rng, int(rng.integers(2, 6))), "font": assets.draw_font(rng),
        "margin": rnd(lerp(0.08, 0.3, s)), "dark": bool(rng.random() < 0.3),
        "avatar": [int(v) for v in rng.integers(0, 256, 3)],
    })]


def meme(img: Image.Image, assets, text: str, font: str, band: float, style: str = "band",
         dark: bool = False) -> Image.Image:
    """Meme format.

    Args:
        band: caption height as a fraction of the image height.
        style: "band" (a white, or ``dark`` black, band above the picture with the caption in
            it, like AugLy's ``meme_format``) or "impact" (white text with a black outline over
            the top of the picture).
    """
    w, h = img.size
    bh = max(1, int(round(band * h)))
    if style == "band":
        out = Image.new("RGB", (w, h + bh), (0, 0, 0) if dark else (255, 255, 255))
        out.paste(img, (0, bh))
        fill, stroke = ((255, 255, 255) if dark else (0, 0, 0)), 0
    elif style == "impact":
        out, fill, stroke = img.copy(), (255, 255, 255), max(1, bh // 25)
    else:
        raise ValueError(f"unknown meme style {style!r}; known: band, impact")
    f = _fit_font(assets, font, text, w * 0.92, bh * 0.7)
    ImageDraw.Draw(out).text((w / 2, bh / 2), text, font=f, fill=fill, anchor="mm",
                             stroke_width=stroke, stroke_fill=(0, 0, 0))
    return out


@register_op("meme")
def _meme(img, p, assets):
    return meme(img, assets, p["text"], p.get("font", ""), float(p["band"]), p.get("style", "band"),
                bool(p.get("dark", False)))


@register_family("meme", group="frame", identity_at_zero=False)
def meme_family(s, rng, size, assets):
    """Meme: caption band (15-45 % of the height) above the picture, or Impact text on it."""
    return [Op("meme", {
        "text": random_text(rng, int(rng.integers(1, 5))).upper(),
        "font": assets.draw_font(rng, prefer=("Impact.ttf",)), "band": rnd(lerp(0.15, 0.45, s)),
        "style": "band" if rng.random() < 0.7 else "impact", "dark": bool(rng.random() < 0.3),
    })]
