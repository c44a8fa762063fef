"""Calling AugLy 1.0.0's functional API, lazily and with errors that name the op.

Every AugLy function used by the ops was probed with Pillow 13 and numpy 2.5: ``perspective_transform``
(uses ``np.float``) and ``meme_format`` (uses ``FreeTypeFont.getsize_multiline``) fail and have
project equivalents (``geometric.perspective``, ``frames.meme``); ``random_noise`` and
``shuffle_pixels`` work but reseed numpy's global generator, so the project draws their randomness
from a local ``numpy.random.Generator`` instead; ``overlay_text`` takes glyph indices rather than
a string and loses its opacity on RGB images, so text is drawn here too. The rest is called as is.
"""

from __future__ import annotations

import functools

from PIL import Image

from ...errors import MissingDependencyError


@functools.lru_cache(maxsize=1)
def _functional():
    try:
        import augly.image.functional as F
    except ImportError as e:  # pragma: no cover - augly is a core dependency
        raise MissingDependencyError("augly", "these image edits") from e
    return F


def augly(fn_name: str, img: Image.Image, **kwargs) -> Image.Image:
    """``augly.image.functional.<fn_name>(img, **kwargs)``; errors are named by ``apply_op``."""
    return getattr(_functional(), fn_name)(img, **kwargs)


#: The AugLy functions the ops call, with arguments that exercise them on a small image.
USED = {
    "blur": {"radius": 2.0}, "brightness": {"factor": 1.5}, "contrast": {"factor": 1.5},
    "saturation": {"factor": 1.5},
    "color_jitter": {"brightness_factor": 1.2, "contrast_factor": 1.2, "saturation_factor": 1.2},
    "encoding_quality": {"quality": 30}, "grayscale": {"mode": "luminosity"}, "hflip": {}, "vflip": {},
    "opacity": {"level": 0.5}, "pixelization": {"ratio": 0.5}, "rotate": {"degrees": 30.0},
    "scale": {"factor": 0.5}, "sharpen": {"factor": 2.0}, "skew": {"skew_factor": 0.5, "axis": 0},
    "overlay_stripes": {"line_width": 0.3, "line_type": "dashed"},
    "overlay_image": {"overlay_size": 0.5}, "overlay_onto_screenshot": {},
}
#: AugLy functions known to fail with Pillow >= 10 / numpy >= 2, replaced by project code.
REPLACED = {"perspective_transform": "geometric.perspective", "meme_format": "frames.meme"}


def augly_status() -> dict[str, str | None]:
    """Run every AugLy function the ops use on a 48 x 32 image: name -> None (works) or the error.

    A quick check that the installed AugLy, Pillow and numpy still agree (``REPLACED`` lists the
    functions that do not, and what replaces them).
    """
    img = Image.new("RGB", (48, 32), (120, 60, 200))
    status: dict[str, str | None] = {}
    for name, kwargs in USED.items():
        kw = dict(kwargs)
        if name == "overlay_image":
            kw["overlay"] = Image.new("RGB", (20, 20), (0, 255, 0))
        try:
            out = augly(name, img, **kw)
            status[name] = None if isinstance(out, Image.Image) else f"returned {type(out).__name__}"
        except Exception as e:  # report, do not raise: this is a diagnostic
            status[name] = f"{type(e).__name__}: {e}"
    return status
