"""Originals read from files: the natural photos shipped inside installed packages, and a user's folder.

* :func:`packaged_photos` lists the photographs that scikit-image and scikit-learn ship in their
  wheels (no network: the files are read directly, never through a downloader). Each photo is a
  distinct original used once; the stereo motorcycle pair of scikit-image is a sibling group
  (two views of one scene: near-duplicates that are NOT copies of each other).
* :func:`scan_source` / :func:`load_source_image` read a user's folder defensively: corrupt,
  truncated or empty files and decompression bombs are skipped with a reason; CMYK, 16-bit,
  palette and alpha images are converted to 8-bit RGB and reported as converted.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

#: scikit-image data files that are photographs (others are drawings, masks or tiny faces),
#: with the sibling group of the stereo pair
SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut.png": "", "brick.png": "", "camera.png": "", "cell.png": "", "chelsea.png": "",
    "clock_motion.png": "", "coffee.png": "", "coins.png": "", "grass.png": "", "gravel.png": "",
    "hubble_deep_field.jpg": "", "ihc.png": "", "microaneurysms.png": "", "moon.png": "", "page.png": "",
    "retina.jpg": "", "rocket.jpg": "", "text.png": "",
    "motorcycle_left.png": "photo:motorcycle", "motorcycle_right.png": "photo:motorcycle",
}
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
#: images larger than this many pixels are refused (decompression bombs)
MAX_PIXELS = 64_000_000
SOURCE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


@dataclass(frozen=True)
class PhotoFile:
    """A packaged photo: ``name`` like ``skimage:astronaut``, its file and its sibling group."""

    name: str
    path: str
    sibling_group: str = ""


def packaged_photos() -> list[PhotoFile]:
    """The photographs available offline from installed packages, in a fixed order."""
    out: list[PhotoFile] = []
    try:
        import skimage

        base = Path(skimage.__file__).parent / "data"
        for fname, group in SKIMAGE_PHOTOS.items():
            if (base / fname).is_file():
                out.append(PhotoFile(f"skimage:{Path(fname).stem}", str(base / fname), group))
    except ImportError:  # pragma: no cover - scikit-image is a core dependency
        pass
    try:
        import sklearn.datasets

        base = Path(sklearn.datasets.__file__).parent / "images"
        for fname in SKLEARN_PHOTOS:
            if (base / fname).is_file():
                out.append(PhotoFile(f"sklearn:{Path(fname).stem}", str(base / fname)))
    except ImportError:  # pragma: no cover
        pass
    return out


def fit_long_side(img: Image.Image, long_side: int) -> Image.Image:
    """Downscale so that the long side is at most ``long_side`` (never upscales)."""
    w, h = img.size
    if max(w, h) <= long_side:
        return img
    f = long_side / max(w, h)
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------
# user folders


class SourceImageError(Exception):
    """A file of a source folder cannot be used; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def scan_source(root: str | Path) -> list[Path]:
    """Image-like files under ``root`` (recursive, hidden files skipped), sorted by relative path."""
    root = Path(root)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in SOURCE_SUFFIXES:
                files.append(Path(dirpath) / f)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _to_rgb8(im: Image.Image) -> tuple[Image.Image, str]:
    """Convert any mode to 8-bit RGB; returns (image, note) where note names the conversion."""
    mode = im.mode
    if mode == "RGB":
        return im, ""
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB"), f"{mode} (16-bit/float) to 8-bit RGB"
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        if im.mode == "RGB":
            return im, "palette to RGB"
        mode = "RGBA (from palette)"
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB"), f"{mode} alpha composited on white"
    if im.mode == "CMYK":
        return im.convert("RGB"), "CMYK to RGB"
    return im.convert("RGB"), f"{mode} to RGB"


def load_source_image(path: str | Path, long_side: int = 1024, max_pixels: int = MAX_PIXELS
                      ) -> tuple[Image.Image, str]:
    """Read one user file as 8-bit RGB, downscaled to ``long_side``.

    Returns:
        (image, note): note is "" or says what was converted.

    Raises:
        SourceImageError: empty, unreadable, truncated or too large (a decompression bomb).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SourceImageError(f"cannot stat ({e.strerror})") from None
    if size == 0:
        raise SourceImageError("empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise SourceImageError(f"too large ({w}x{h} = {w * h / 1e6:.0f} MP > {max_pixels / 1e6:.0f} MP): "
                                           "possible decompression bomb")
                if w < 16 or h < 16:
                    raise SourceImageError(f"too small ({w}x{h})")
                if im.format == "JPEG" and im.mode in ("RGB", "L"):
                    im.draft(im.mode, (long_side, long_side))  # decode big JPEGs at reduced size
                im.load()
                rgb, note = _to_rgb8(im)
    except SourceImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SourceImageError(f"decompression bomb refused ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        kind = "truncated" if "truncated" in msg.lower() else "unreadable"
        raise SourceImageError(f"{kind} image ({msg})") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types; the build must go on
        raise SourceImageError(f"unreadable image ({type(e).__name__}: {e})") from None
    return fit_long_side(rgb, long_side), note
