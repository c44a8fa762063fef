"""The registry of disc-synth scene families and the one call that renders a scene.

A scene family is ``fn(ctx: Ctx) -> np.ndarray (h, w, 3) float in [0, 1]`` registered with
:func:`register_scene`. :func:`render_scene` turns (family, seed, sibling) into an RGB image:
the seed fixes everything structural, ``sibling > 0`` re-draws the same scene with the objects
moved and the camera nudged, as in a camera burst (a near-duplicate that is NOT a copy).

Families live in ``scenes_nature`` (landscapes, aerial maps, space, forests, macro textures),
``scenes_objects`` (still lifes, shelves, food, portraits, abstract art) and ``scenes_made``
(documents, screenshots, charts, memes, emoji collages, cities, interiors). Fonts, emoji and
words come from the assets that AugLy ships (offline).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from ...registry import Registry
from .render import Ctx, camera_finish

SCENES: Registry = Registry("scene family")


def register_scene(name: str, weight: float = 1.0, sibling_ok: bool = True):
    """Decorator: register a scene family.

    Args:
        weight: relative share of the family among generated originals.
        sibling_ok: the scene has movable parts, so near-duplicate siblings make sense.
    """

    def deco(fn):
        fn.scene_weight = weight
        fn.sibling_ok = sibling_ok
        SCENES.add(name, fn)
        return fn

    return deco


@dataclass(frozen=True)
class Finish:
    """Which steps of the photographic finish (:mod:`.finish`) :func:`render_scene` applies.

    The default is what measurement kept (``data_manifests/disc-synth.md``); switch a step off to
    reproduce an earlier attempt's figures.
    """

    reframe: bool = True
    photo_detail: bool = True
    tone: bool = True
    max_zoom: float = 3.0


DEFAULT_FINISH = Finish()


def render_scene(name: str, seed: int, size: tuple[int, int], sibling: int = 0,
                 finish: Finish = DEFAULT_FINISH) -> Image.Image:
    """Render one scene as an RGB image.

    Args:
        name: a family of :data:`SCENES`.
        seed: the structural seed (layout, colours, objects).
        size: (width, height).
        sibling: 0 for the scene itself; k > 0 for its k-th near-duplicate sibling.
        finish: the finishing steps (framing, photo micro-texture and tone are drawn from the
            structural seed, so siblings share them; exposure and grain differ per sibling).
    """
    from .finish import photo_detail, reframe, tone_curve

    w, h = size
    rng = np.random.default_rng([seed, 0x5CE7E])
    jit = None if sibling == 0 else np.random.default_rng([seed, 0x51B, sibling])
    canvas = SCENES.get(name)(Ctx(rng, jit, w, h))
    look = np.random.default_rng([seed, 0x100C])
    if finish.reframe:
        canvas = reframe(canvas, look, finish.max_zoom)
    if finish.photo_detail:
        canvas = photo_detail(canvas, look)
    fin = np.random.default_rng([seed, 0xF17, sibling])  # siblings: another exposure and grain
    img = camera_finish(canvas, fin)
    return tone_curve(img, look) if finish.tone else img


# --------------------------------------------------------------------------------------------
# assets (AugLy's fonts, twemoji and word lists; cached per process)


def _augly_assets() -> Path | None:
    try:
        import augly
    except ImportError:  # pragma: no cover - augly is a core dependency
        return None
    p = Path(augly.__file__).parent / "assets"
    return p if p.is_dir() else None


_TEXT_FONTS = re.compile(r"^(IBMPlex(Sans|Serif|Mono)|Montserrat|OpenSans|Raleway|SourceSansPro|Titillium|"
                         r"Ubuntu|PlayfairDisplay|Quicksand|Prata|Impact|Lobster|Pacifico|DancingScript|"
                         r"KaushanScript|LeagueSpartan|Chunkfive|NotoSans-|NotoSerif-|Sofia|GrandHotel)")


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """Sorted Latin text fonts (AugLy's, else DejaVu); empty when none is installed."""
    base = _augly_assets()
    files = []
    if base is not None:
        files = sorted(str(p) for p in (base / "fonts").glob("*.ttf") if _TEXT_FONTS.match(p.name))
    if not files:
        files = sorted(str(p) for p in Path("/usr/share/fonts").rglob("DejaVu*.ttf"))
    return tuple(files)


@lru_cache(maxsize=512)
def _font(path: str, size: int):
    return ImageFont.truetype(path, size)


def font(rng: np.random.Generator, size: int, mono: bool = False):
    """A random text font at ``size`` px (PIL's built-in font when no file is available)."""
    files = font_files()
    if mono:
        files = tuple(f for f in files if "Mono" in f) or files
    size = max(int(size), 6)
    if not files:
        return ImageFont.load_default(size)
    return _font(files[int(rng.integers(len(files)))], size)


@lru_cache(maxsize=1)
def emoji_files() -> tuple[str, ...]:
    base = _augly_assets()
    if base is None:
        return ()
    return tuple(sorted(str(p) for p in (base / "twemojis").rglob("*.png")))


@lru_cache(maxsize=256)
def _emoji(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGBA")


def emoji(rng: np.random.Generator, size: int) -> Image.Image | None:
    """A random twemoji as an RGBA image of ``size`` px, or None when none is installed."""
    files = emoji_files()
    if not files:
        return None
    im = _emoji(files[int(rng.integers(len(files)))])
    return im.resize((max(int(size), 4),) * 2, Image.Resampling.LANCZOS)


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    """An English vocabulary (AugLy's misspelling list keys), or syllable words as a fallback."""
    base = _augly_assets()
    if base is not None and (base / "text" / "misspelling.json").exists():
        d = json.loads((base / "text" / "misspelling.json").read_text(encoding="utf-8"))
        return tuple(sorted(w for w in d if w.isalpha()))
    syl = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "or", "an", "is", "pre", "con", "di", "ta"]
    return tuple(sorted({a + b + c for a in syl for b in syl for c in ("", "s", "er")}))


def sentence(rng: np.random.Generator, n: int, capital: bool = True) -> str:
    v = words()
    ws = [v[int(i)] for i in rng.integers(len(v), size=max(n, 1))]
    ws = [w.lower() if w[1:].islower() else w for w in ws]
    if capital:
        ws[0] = ws[0][:1].upper() + ws[0][1:]
    return " ".join(ws)


def scene_names() -> list[str]:
    return SCENES.names()


def scene_weights() -> dict[str, float]:
    return {n: float(SCENES.get(n).scene_weight) for n in SCENES.names()}


# the families register themselves on import
from . import scenes_made, scenes_nature, scenes_objects  # noqa: E402,F401

__all__ = ["SCENES", "Finish", "DEFAULT_FINISH", "register_scene", "render_scene", "scene_names", "scene_weights", "font", "emoji",
           "sentence", "words", "font_files", "emoji_files"]
