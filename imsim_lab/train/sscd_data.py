"""SSCD's training data: two augmented views per image, and mixup / CutMix positives.

Pizzi et al., arXiv 2202.10261 (``docs/methods.md``, "SSCD"). :data:`AUGMENTATIONS` holds the two
published sets: ``strong_blur`` (random resized crop, hflip, colour jitter 0.8/0.8/0.8/0.2 with p
0.8, grayscale 0.2, blur of radius 1-5 with p 0.5) and ``advanced`` (adds rot90 p 0.05, text p 0.1,
emoji p 0.2, free rotation p 0.05 and JPEG of quality 0-100 with p 0.2). The text and emoji are
the benchmark's own edits (:mod:`imsim_lab.data.augment`).

**Mixup / CutMix** ("mixup" variant): SSCD mixes whole batches with probability 0.05 (mixup α 2,
CutMix α 2, switching 0.5) and counts every pair of images that share content as positives. Items
here are made one at a time (each a pure function of ``(seed, epoch, index)``), so the mixing is
per item: with probability ``mix_p`` the second view of image i is mixed with a view of another
training image k, and carries the content ids {i, k}; :func:`imsim_lab.train.infonce.positive_mask`
then makes it a positive of i's and of k's views wherever they are in the global batch. The
expected share of mixed images is the same as SSCD's at ``mix_p = 0.05``; what differs is that
the partner is drawn from the whole training set, not from the same batch.

Item: ``x`` (2, 3, s, s) float32, ``y`` (2, 2) int64 content ids (-1 = none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..data.augment import Assets, Op, apply_op, sample_ops
from ..registry import Registry
from .data import TrainDataError, _ImagesById, to_array
from .ssquare_data import crop_factor, load_for_size
from .views import random_resized_crop, view_rng


@dataclass(frozen=True)
class AugmentationSet:
    """One of SSCD's augmentation settings (probabilities; 0 turns an op off)."""

    name: str
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_radius: tuple[float, float] = (1.0, 5.0)
    rot90_p: float = 0.0
    text_p: float = 0.0
    emoji_p: float = 0.0
    rotate_p: float = 0.0
    jpeg_p: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)


AUGMENTATIONS: Registry[AugmentationSet] = Registry("SSCD augmentation set")
AUGMENTATIONS.add("strong_blur", AugmentationSet("strong_blur"))
AUGMENTATIONS.add("advanced", AugmentationSet("advanced", rot90_p=0.05, text_p=0.1, emoji_p=0.2, rotate_p=0.05,
                                              jpeg_p=0.2))

#: published mixup settings of ``sscd_disc_mixup``
MIX_P, MIXUP_ALPHA, CUTMIX_ALPHA, SWITCH_P = 0.05, 2.0, 2.0, 0.5


def _jitter(img: Image.Image, j: tuple[float, float, float, float], rng: np.random.Generator) -> Image.Image:
    b, c, s = (float(rng.uniform(max(0.0, 1 - v), 1 + v)) for v in j[:3])
    img = apply_op(img, Op("color_jitter", {"brightness": b, "contrast": c, "saturation": s}))
    if j[3] > 0:  # hue: rotate the H channel
        h, sat, v = img.convert("HSV").split()
        shift = int(round(rng.uniform(-j[3], j[3]) * 255))
        h = h.point(lambda x: (x + shift) % 256)
        img = Image.merge("HSV", (h, sat, v)).convert("RGB")
    return img


def sscd_view(img: Image.Image, aug: AugmentationSet, size: int, rng: np.random.Generator,
              assets: Assets | None = None) -> tuple[Image.Image, list[str]]:
    """One view of ``img`` under ``aug`` at ``size`` x ``size``. Returns (image, names of the steps)."""
    assets = assets or Assets.default()
    steps = []

    def maybe(p):
        return p > 0 and rng.random() < p

    if maybe(aug.rot90_p):
        img = img.rotate(90 * int(rng.integers(1, 4)), expand=True)
        steps.append("rot90")
    if maybe(aug.rotate_p):
        img = img.rotate(float(rng.uniform(0, 359)), expand=True)
        steps.append("rotate")
    for name, p in (("text", aug.text_p), ("emoji", aug.emoji_p)):
        if maybe(p):
            for o in sample_ops(name, float(rng.uniform(0.3, 0.9)), rng, img.size, assets):
                img = apply_op(img, o, assets).convert("RGB")
            steps.append(name)
    img = random_resized_crop(img, size, aug.crop_scale, rng)
    steps.append("crop")
    if rng.random() < 0.5:
        img, steps = img.transpose(Image.FLIP_LEFT_RIGHT), steps + ["hflip"]
    if maybe(aug.jitter_p):
        img, steps = _jitter(img, aug.jitter, rng), steps + ["color_jitter"]
    if maybe(aug.gray_p):
        img, steps = img.convert("L").convert("RGB"), steps + ["grayscale"]
    if maybe(aug.blur_p):
        img, steps = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(*aug.blur_radius)) * size / 224)), \
            steps + ["blur"]
    if maybe(aug.jpeg_p):
        img = apply_op(img, Op("jpeg", {"quality": int(rng.integers(1, 101))}))
        steps.append("jpeg")
    return img.convert("RGB"), steps


def mix_arrays(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, mixup_alpha: float = MIXUP_ALPHA,
               cutmix_alpha: float = CUTMIX_ALPHA, switch_p: float = SWITCH_P) -> tuple[np.ndarray, str, float]:
    """Mix two (3, h, w) arrays: CutMix with probability ``switch_p`` (a box of ``b`` of area 1 - λ
    pasted into ``a``), else mixup ``λ a + (1 - λ) b``; λ ~ Beta(α, α). Returns (array, kind, λ)."""
    if rng.random() < switch_p:
        lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
        _, h, w = a.shape
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1 = max(0, cy - ch // 2), min(h, cy + ch // 2)
        x0, x1 = max(0, cx - cw // 2), min(w, cx + cw // 2)
        out = a.copy()
        out[:, y0:y1, x0:x1] = b[:, y0:y1, x0:x1]
        return out, "cutmix", 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    lam = float(rng.beta(mixup_alpha, mixup_alpha))
    return (lam * a + (1 - lam) * b).astype(a.dtype), "mixup", lam


class SSCDViews:
    """Two views per training image, optionally mixed (module docstring).

    Args:
        paths: the training images; aug: an :data:`AUGMENTATIONS` name; size: output side.
        mean, std: the model's normalisation. seed: global seed.
        mix_p: probability that an item's second view is mixed with another image (0: no mixup).
    """

    def __init__(self, paths: Sequence[str | Path], aug: str, size: int, mean, std, seed: int = 0,
                 mix_p: float = 0.0, mixup_alpha: float = MIXUP_ALPHA, cutmix_alpha: float = CUTMIX_ALPHA,
                 switch_p: float = SWITCH_P):
        self.paths = [str(p) for p in paths]
        if len(self.paths) < 2:
            raise TrainDataError(f"{len(self.paths)} training images: SSCD needs at least 2 (one image has no "
                                 f"negatives)")
        self.aug = AUGMENTATIONS.get(aug)
        self.size, self.seed, self.mean, self.std = int(size), int(seed), tuple(mean), tuple(std)
        if not 0.0 <= mix_p <= 1.0:
            raise ValueError("mix_p must be in [0, 1]")
        self.mix_p, self.switch_p = float(mix_p), switch_p
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        ids = tuple(Path(p).stem for p in self.paths)
        self.assets = Assets.from_augly(images=_ImagesById(dict(zip(ids, self.paths))), image_ids=ids, seed=self.seed)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> Image.Image:
        """Image ``index`` decoded at the smallest JPEG scale whose smallest crop is not upscaled."""
        return load_for_size(self.paths[index], self.size, crop_factor(self.aug.crop_scale[0]))

    def _view(self, img: Image.Image, index: int, epoch: int, v: int) -> np.ndarray:
        out, _ = sscd_view(img, self.aug, self.size, view_rng(self.seed, epoch, index, v), self.assets)
        return to_array(out, self.mean, self.std)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        img = self._load(index)  # decoded once for both views
        a, b = self._view(img, index, epoch, 0), self._view(img, index, epoch, 1)
        y = np.asarray([[index, -1], [index, -1]], np.int64)
        g = view_rng(self.seed, epoch, index, 2)
        if self.mix_p and g.random() < self.mix_p:
            k = int(g.integers(len(self.paths) - 1))
            k = k + 1 if k >= index else k
            other = self._view(self._load(k), k, epoch, 3)
            b, _, _ = mix_arrays(b, other, g, self.mixup_alpha, self.cutmix_alpha, self.switch_p)
            y[1, 1] = k
        return np.stack([a, b]), y
