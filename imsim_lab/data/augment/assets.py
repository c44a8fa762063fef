"""Offline resources for the edits: other images by id, fonts, emoji and screenshot templates.

Everything works without network. Fonts, emoji (Twemoji PNGs) and the two screenshot templates
come from the folders AugLy 1.0.0 ships in its wheel; when a folder is missing, text falls back to
PIL's built-in font and emoji to glyphs drawn here (ids ``builtin:<name>``).

Other images (for paste, overlay and collage) come from a callable or mapping the benchmark builder
provides. Without one, ops draw from a pool of procedural stand-in images whose ids
(``synth:<seed>-<i>``) are enough to rebuild them, so recorded ops replay anywhere.
"""

from __future__ import annotations

import functools
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...errors import ImsimError

#: Fonts of AugLy's asset folder that render Latin captions (the others are symbol or non-Latin).
LATIN_FONTS = (
    "Impact.ttf", "Raleway-ExtraBold.ttf", "OpenSans-Bold.ttf", "OpenSans-Regular.ttf",
    "Montserrat-Black.ttf", "Montserrat-Regular.ttf", "IBMPlexSans-Bold.ttf", "IBMPlexSerif-Regular.ttf",
    "IBMPlexMono-Regular.ttf", "NotoSans-Regular.ttf", "NotoSerif-Regular.ttf", "Ubuntu-B.ttf",
    "Ubuntu-R.ttf", "SourceSansPro-Black.ttf", "PlayfairDisplay-Bold.ttf", "Pacifico.ttf",
    "Lobster_1.3.ttf", "Chunkfive.ttf", "LeagueSpartan-Bold.ttf", "Titillium-Bold.ttf",
    "Quicksand-Bold.ttf", "KaushanScript-Regular.ttf", "GreatVibes-Regular.ttf", "Prata-Regular.ttf",
)
#: Emoji drawn here when no emoji folder is available.
BUILTIN_EMOJI = ("builtin:smile", "builtin:heart", "builtin:star", "builtin:sad")
SYNTH_PREFIX = "synth:"


class AssetError(ImsimError):
    """A font, emoji or image asked for by an op is not available."""


def augly_assets_dir() -> Path | None:
    """AugLy's asset folder, or None when AugLy is not importable."""
    try:
        import augly
    except ImportError:
        return None
    p = Path(augly.__file__).parent / "assets"
    return p if p.is_dir() else None


@dataclass(frozen=True, eq=False)
class Assets:
    """The offline resources ops may use.

    Args:
        images: other images by id: a callable ``id -> PIL.Image`` or a mapping id -> image or path.
        image_ids: ids samplers may draw; default: the mapping's keys, else a pool of
            ``synth_pool`` procedural stand-ins named ``synth:<seed>-<i>``.
        font_dir, fonts: folder and file names (relative to it) of the fonts to draw from.
        emoji_dir, emojis: folder and PNG paths (relative to it) of the emoji to draw from.
        screenshot_dir: folder with ``bboxes.json`` and the templates it names (AugLy's layout).
        seed: names the procedural stand-in pool, so two benchmarks can use different ones.
    """

    images: Callable[[str], Image.Image] | Mapping[str, object] | None = None
    image_ids: tuple[str, ...] = ()
    font_dir: Path | None = None
    fonts: tuple[str, ...] = ()
    emoji_dir: Path | None = None
    emojis: tuple[str, ...] = ()
    screenshot_dir: Path | None = None
    seed: int = 0
    synth_pool: int = 64
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        ids = tuple(self.image_ids)
        if not ids and isinstance(self.images, Mapping):
            ids = tuple(sorted(str(k) for k in self.images))
        if not ids:
            ids = tuple(f"{SYNTH_PREFIX}{int(self.seed)}-{i}" for i in range(self.synth_pool))
        object.__setattr__(self, "image_ids", ids)
        if self.font_dir is not None and not self.fonts:
            have = set(os.listdir(self.font_dir)) if Path(self.font_dir).is_dir() else set()
            object.__setattr__(self, "fonts", tuple(f for f in LATIN_FONTS if f in have))
        if self.emoji_dir is not None and not self.emojis and Path(self.emoji_dir).is_dir():
            root = Path(self.emoji_dir)
            found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
            object.__setattr__(self, "emojis", tuple(found))
        if not self.emojis:
            object.__setattr__(self, "emojis", BUILTIN_EMOJI)

    @classmethod
    def from_augly(cls, images=None, image_ids: Sequence[str] = (), seed: int = 0) -> "Assets":
        """Assets that use AugLy's shipped fonts, Twemoji and screenshot templates."""
        root = augly_assets_dir()
        sub = (lambda name: root / name if root is not None and (root / name).is_dir() else None)
        return cls(images=images, image_ids=tuple(image_ids), font_dir=sub("fonts"),
                   emoji_dir=sub("twemojis"), screenshot_dir=sub("screenshot_templates"), seed=seed)

    @classmethod
    def default(cls) -> "Assets":
        """Shared default: AugLy's assets and the procedural stand-in images."""
        return _default_assets()

    def __getstate__(self) -> dict:
        # loaded fonts and emoji are a cache: rebuild them in the receiving process
        state = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "_cache"}
        return state

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_cache", {})

    # -- other images ------------------------------------------------------------------------
    def image(self, image_id: str) -> Image.Image:
        """The image with this id, RGB (procedural ``synth:`` ids need no provider)."""
        image_id = str(image_id)
        if image_id.startswith(SYNTH_PREFIX):
            return synthetic_image(image_id)
        if self.images is None:
            raise AssetError(f"image {image_id!r} asked for, but these assets have no image provider")
        try:
            if isinstance(self.images, Mapping):
                obj = self.images[image_id]
            else:
                obj = self.images(image_id)
        except KeyError:
            raise AssetError(f"image {image_id!r} is not among the assets' images") from None
        if isinstance(obj, (str, os.PathLike)):
            try:
                with Image.open(obj) as im:
                    im.load()
                    obj = im.copy()
            except (OSError, ValueError) as e:
                raise AssetError(f"{obj}: cannot read image {image_id!r}: {e}") from None
        if not isinstance(obj, Image.Image):
            raise AssetError(f"image provider returned {type(obj).__name__} for {image_id!r}")
        return obj

    def draw_image_ids(self, rng: np.random.Generator, n: int) -> list[str]:
        """``n`` distinct ids (with repeats only when the pool is smaller than ``n``)."""
        ids = self.image_ids
        idx = rng.choice(len(ids), size=n, replace=len(ids) < n)
        return [ids[int(i)] for i in idx]

    # -- fonts -------------------------------------------------------------------------------
    def draw_font(self, rng: np.random.Generator, prefer: Sequence[str] = ()) -> str:
        """A font file name relative to ``font_dir`` ("" = PIL's built-in font)."""
        for name in prefer:
            if name in self.fonts:
                return name
        if not self.fonts:
            return ""
        return self.fonts[int(rng.integers(len(self.fonts)))]

    def font(self, name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        """Load font ``name`` (relative to ``font_dir``) at ``size`` pixels; cached."""
        size = max(1, int(size))
        key = ("font", name, size)
        if key not in self._cache:
            if not name:
                self._cache[key] = ImageFont.load_default(size=size)
            else:
                if self.font_dir is None:
                    raise AssetError(f"font {name!r} asked for, but these assets have no font folder")
                path = Path(self.font_dir) / name
                try:
                    self._cache[key] = ImageFont.truetype(str(path), size)
                except OSError as e:
                    raise AssetError(f"{path}: cannot load font: {e}") from None
        return self._cache[key]

    # -- emoji -------------------------------------------------------------------------------
    def emoji(self, name: str) -> Image.Image:
        """The emoji ``name`` (relative PNG path, or ``builtin:...``) as an RGBA image."""
        key = ("emoji", name)
        if key not in self._cache:
            if name.startswith("builtin:"):
                self._cache[key] = builtin_emoji(name)
            else:
                if self.emoji_dir is None:
                    raise AssetError(f"emoji {name!r} asked for, but these assets have no emoji folder")
                path = Path(self.emoji_dir) / name
                try:
                    with Image.open(path) as im:
                        self._cache[key] = im.convert("RGBA")
                except OSError as e:
                    raise AssetError(f"{path}: cannot read emoji: {e}") from None
        return self._cache[key]


@functools.lru_cache(maxsize=1)
def _default_assets() -> Assets:
    return Assets.from_augly()


def _seed_of(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


@functools.lru_cache(maxsize=128)
def _synthetic_cached(image_id: str) -> Image.Image:
    rng = np.random.default_rng(_seed_of(image_id))
    w, h = 512, int(rng.choice([288, 384, 512, 640]))
    # smooth two-colour gradient background
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None] * np.ones((h, 1, 1))
    base = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 14))):
        x0, y0 = rng.integers(-w // 4, w), rng.integers(-h // 4, h)
        x1, y1 = x0 + rng.integers(20, w // 2), y0 + rng.integers(20, h // 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=fill)
        else:
            d.rectangle((int(x0), int(y0), int(x1), int(y1)), fill=fill)
    return img


def synthetic_image(image_id: str) -> Image.Image:
    """Procedural stand-in image (gradient and shapes) fully determined by its id."""
    return _synthetic_cached(str(image_id)).copy()


def builtin_emoji(name: str, size: int = 128) -> Image.Image:
    """A simple emoji-like RGBA glyph drawn with PIL (used without an emoji folder)."""
    kind = name.split(":", 1)[-1]
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    s = size
    if kind == "heart":
        d.ellipse((s * .08, s * .15, s * .52, s * .58), fill=(230, 40, 60, 255))
        d.ellipse((s * .48, s * .15, s * .92, s * .58), fill=(230, 40, 60, 255))
        d.polygon([(s * .1, s * .45), (s * .9, s * .45), (s * .5, s * .92)], fill=(230, 40, 60, 255))
        return im
    if kind == "star":
        pts = []
        for i in range(10):
            r = s * (.48 if i % 2 == 0 else .2)
            a = np.pi / 2 + i * np.pi / 5
            pts.append((s / 2 + r * np.cos(a), s / 2 - r * np.sin(a)))
        d.polygon(pts, fill=(255, 200, 40, 255), outline=(200, 140, 0, 255))
        return im
    if kind not in ("smile", "sad"):
        raise AssetError(f"unknown built-in emoji {name!r}; known: {', '.join(BUILTIN_EMOJI)}")
    d.ellipse((s * .04, s * .04, s * .96, s * .96), fill=(255, 204, 77, 255), outline=(200, 140, 0, 255),
              width=max(1, s // 32))
    d.ellipse((s * .3, s * .3, s * .4, s * .45), fill=(60, 40, 20, 255))
    d.ellipse((s * .6, s * .3, s * .7, s * .45), fill=(60, 40, 20, 255))
    if kind == "smile":
        d.arc((s * .25, s * .35, s * .75, s * .78), 20, 160, fill=(60, 40, 20, 255), width=max(1, s // 20))
    else:
        d.arc((s * .25, s * .6, s * .75, s * .95), 200, 340, fill=(60, 40, 20, 255), width=max(1, s // 20))
    return im
