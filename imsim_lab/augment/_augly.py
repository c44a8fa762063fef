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

from ..errors import MissingDependencyError


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
