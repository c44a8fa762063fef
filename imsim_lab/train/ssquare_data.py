"""S-square's training data: one class per training image, one query-like view per item.

Papadakis & Addicam, arXiv 2112.03415 (``docs/methods.md``, "S-square"): every training image is
its own ArcFace class; each time it is drawn the network sees it through a *query augmentation*
whose ops fire with probabilities proportional to an **intensity** I that the drip schedule raises
(0.5 -> 0.6 -> 0.7 -> 0.75). :data:`QUERY_OPS` lists the published op probabilities (``p`` fixed,
or ``p * I``); the edits themselves are the transformation families of
:mod:`imsim_lab.data.augment` (the code that makes the benchmark's queries), each at a strength
drawn in [0.5 I, I]. Items are addressed by ``(index, epoch)`` and every random choice comes from
:func:`~imsim_lab.train.views.view_rng`, so a view is the same on any worker, rank or resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..data.augment import Assets
from .data import TrainDataError, _ImagesById, load_rgb, to_array
from .views import crop_and_edit, view_rng


@dataclass(frozen=True)
class QueryOp:
    """One op of the query augmentation: the family, its probability, whether it scales with I."""

    family: str
    p: float
    scaled: bool = True

    def probability(self, intensity: float) -> float:
        return min(1.0, self.p * intensity) if self.scaled else self.p


#: S-square's query augmentation (``docs/methods.md``, "S-square"), in the order applied here
QUERY_OPS: tuple[QueryOp, ...] = (
    QueryOp("overlay_image", 0.10), QueryOp("screenshot", 0.05), QueryOp("meme", 0.10),
    QueryOp("scale", 0.10, False), QueryOp("rotate", 0.10), QueryOp("perspective", 0.10), QueryOp("crop", 0.10),
    QueryOp("pad", 0.05), QueryOp("color_jitter", 0.20, False), QueryOp("grayscale", 0.10),
    QueryOp("opacity", 0.05), QueryOp("blur", 0.05), QueryOp("sharpen", 0.05), QueryOp("pixelize", 0.10),
    QueryOp("shuffle_pixels", 0.10, False), QueryOp("stripes", 0.10), QueryOp("emoji", 0.10), QueryOp("text", 0.10),
    QueryOp("channels", 0.15), QueryOp("vflip", 0.10, False), QueryOp("hflip", 0.50, False),
    QueryOp("jpeg", 0.10, False),
)

#: the intensities of the published drip schedule (test25 used 1.0 throughout)
INTENSITY_SCHEDULE = (0.5, 0.6, 0.7, 0.75)

#: area of the mild first crop of every query view (a fraction of the image)
CROP_AREA = (0.8, 1.0)


def query_view(img: Image.Image, size: int, intensity: float, rng: np.random.Generator,
               assets: Assets | None = None, ops: Sequence[QueryOp] = QUERY_OPS) -> tuple[Image.Image, list[str]]:
    """One query-like view of ``img`` at ``size`` x ``size``: a mild crop (area 0.8-1), then each op of
    ``ops`` with its probability at ``intensity``. Returns (image, names of the ops applied)."""
    scale = min(1.0, max(intensity, 0.1))
    return crop_and_edit(img, size, CROP_AREA, rng, assets or Assets.default(),
                         [(op.family, op.probability(intensity), lambda g: float(g.uniform(0.5, 1.0) * scale))
                          for op in ops])


def crop_factor(min_area: float) -> float:
    """How many times the output size the short side of a decoded image must keep so that the
    smallest crop of a view (``min_area`` of the image) is still downscaled, never upscaled:
    ``1 / sqrt(min_area)`` (0.8 -> 1.12 for S-square's first crop, 0.08 -> 3.54 for SSCD's)."""
    if not 0 < min_area <= 1:
        raise ValueError(f"min_area must be in (0, 1], got {min_area}")
    return 1.0 / math.sqrt(min_area)


def load_for_size(path: str | Path, size: int, factor: float = 4) -> Image.Image:
    """Open an RGB image for training at ``size`` px, letting the JPEG decoder skip resolution the
    views cannot use (``Image.draft``: the short side stays >= ``factor`` x ``size``; with
    ``factor = crop_factor(a)`` a crop of area ``a`` keeps at least ``size`` pixels on its short
    side). Other formats decode in full.

    Raises:
        TrainDataError: missing or unreadable (as :func:`imsim_lab.train.data.load_rgb`).
    """
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                w, h = im.size
                s = factor * size / min(w, h)
                if s < 1:
                    im.draft("RGB", (max(1, int(w * s)), max(1, int(h * s))))
            return im.convert("RGB")
    except FileNotFoundError:
        raise TrainDataError(f"{path}: training image not found") from None
    except Exception as e:  # noqa: BLE001 - any decoder error becomes a named one
        raise TrainDataError(f"{path}: unreadable training image ({type(e).__name__}: {e})") from None


class ClassImages:
    """One class per image: item ``(index, epoch)`` -> (x (1, 3, size, size), y (1,) = [index]).

    Args:
        paths: the images of the current classes, class i = ``paths[i]``.
        size: training resolution; intensity: the query-augmentation intensity I.
        mean, std: the model's normalisation.
        overlay_paths: images that overlays draw from (S-square: the training images that are not
            classes yet); default the class images.
    """

    def __init__(self, paths: Sequence[str | Path], size: int, intensity: float, mean, std, seed: int = 0,
                 overlay_paths: Sequence[str | Path] = ()):
        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise TrainDataError("no training images for the classes")
        self.size, self.intensity, self.seed = int(size), float(intensity), int(seed)
        self.mean, self.std = tuple(mean), tuple(std)
        pool = [str(p) for p in overlay_paths] or self.paths
        ids = tuple(Path(p).stem for p in pool)
        self.assets = Assets.from_augly(images=_ImagesById(dict(zip(ids, pool))), image_ids=ids, seed=self.seed)

    def __len__(self) -> int:
        return len(self.paths)

    def view(self, index: int, epoch: int = 0):
        """The PIL view of class ``index`` at ``epoch`` and the ops applied."""
        # the first crop keeps >= 80 % of the area: a JPEG decodes at the smallest scale that covers it
        return query_view(load_for_size(self.paths[index], self.size, crop_factor(CROP_AREA[0])), self.size,
                          self.intensity,
                          view_rng(self.seed, epoch, index, 0), self.assets)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        img, _ = self.view(index, epoch)
        return to_array(img, self.mean, self.std)[None], np.asarray([index], np.int64)


class PlainImages:
    """Images resized to ``size`` x ``size``, no augmentation (embedding new classes, evaluation)."""

    def __init__(self, paths: Sequence[str | Path], size: int, mean, std):
        self.paths, self.size, self.mean, self.std = [str(p) for p in paths], int(size), tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        img = load_rgb(self.paths[i]).resize((self.size, self.size), Image.BILINEAR)
        return to_array(img, self.mean, self.std)
