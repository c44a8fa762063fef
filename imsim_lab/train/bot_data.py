"""Bag of Tricks' training data: one class per training image, K views of it per batch (PK sampling).

VisionForce (arXiv 2111.08004; ``docs/methods.md``, "Bag of Tricks") made 19 augmented copies of
each of 100,000 training images offline (20 images per class with the original), then drew
batches of P classes x K = 4 images. Here:

* :class:`KViewImages` (default): item ``(index, epoch)`` -> K views of training image ``index``
  made on the fly (:func:`bot_view`), labels ``[index] * K``. The trainer's sampler draws P
  distinct items per batch, so a batch is P classes x K views, every class once per epoch.
* :func:`write_offline_copies` + :class:`OfflineCopies` (``full``): the published layout, written
  once into ``ROOT/<image id>/00.jpg`` (the original resized) .. ``NN.jpg`` (copies), each class
  folder appearing whole (written to a temporary folder and renamed); an item draws K of the copies
  and applies the online steps (horizontal flip, pad 10, random crop back to the size).

Views use the project's transformation families (:mod:`imsim_lab.data.augment`) with BoT's
probabilities (:data:`BOT_OPS`); every random choice comes from
:func:`~imsim_lab.train.views.view_rng`, so a view is the same on any worker, rank or resume.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..data.augment import Assets
from .data import TrainDataError, _ImagesById, load_rgb, to_array
from .views import crop_and_edit, view_rng

#: the "epoch" of the offline copies' generators: one no online view uses
OFFLINE_EPOCH = 2**31 - 1
#: published: 20 images per class (original + 19), P x K with K = 4, crop scale 0.2-1, pad 10
PUBLISHED_COPIES, PUBLISHED_K, CROP_SCALE, PAD = 20, 4, (0.2, 1.0), 10


@dataclass(frozen=True)
class BoTOp:
    """One step of the view: a family of :mod:`imsim_lab.data.augment` and its probability."""

    family: str
    p: float


#: BoT's offline augmentation mapped onto the families (probabilities as published): rotation,
#: pixelisation, pixel shuffling, perspective, padding, an image "underlay" (another image laid
#: over a small part: ``overlay_image``), colour jitter 0.8, blur always, grayscale 0.3, flip,
#: emoji, text, and the "image overlay" (this image pasted onto a foreign one: ``paste``) 0.2
BOT_OPS: tuple[BoTOp, ...] = (
    BoTOp("rotate", 0.3), BoTOp("pixelize", 0.3), BoTOp("shuffle_pixels", 0.3), BoTOp("perspective", 0.3),
    BoTOp("pad", 0.3), BoTOp("overlay_image", 0.3), BoTOp("color_jitter", 0.8), BoTOp("blur", 1.0),
    BoTOp("grayscale", 0.3), BoTOp("hflip", 0.5), BoTOp("emoji", 0.3), BoTOp("text", 0.3), BoTOp("paste", 0.2),
)
#: a subset of families (D2LV's specialists train on one family each) keeps only those ops
STRENGTH = (0.2, 0.8)
#: D2LV's specialists (arXiv 2111.07090: its training sets baseline, baseline_bw, blur, color, dark,
#: opa, u): each trains the same recipe on views made from one augmentation family only, applied to
#: every view (besides the random resized crop and the online flip / pad / crop that every view
#: has); ``baseline`` is BoT's full set of ops. ``dark`` is the brightness family (darker or brighter
#: half the time each), ``underlay`` BoT's image underlay (``overlay_image``).
SPECIALISTS: dict[str, tuple[BoTOp, ...]] = {
    "baseline": BOT_OPS,
    "grayscale": (BoTOp("grayscale", 1.0),),
    "blur": (BoTOp("blur", 1.0),),
    "colour": (BoTOp("color_jitter", 1.0),),
    "dark": (BoTOp("brightness", 1.0),),
    "opacity": (BoTOp("opacity", 1.0),),
    "underlay": (BoTOp("overlay_image", 1.0),),
}


def specialist_ops(name: str) -> tuple[BoTOp, ...]:
    """The ops of the specialist ``name`` (:data:`SPECIALISTS`); an unknown name is refused."""
    if name not in SPECIALISTS:
        raise TrainDataError(f"unknown specialist {name!r}; D2LV's specialists here: {', '.join(SPECIALISTS)}")
    return SPECIALISTS[name]


def bot_view(img: Image.Image, size: int, rng: np.random.Generator, assets: Assets | None = None,
             ops: Sequence[BoTOp] = BOT_OPS, strength: tuple[float, float] = STRENGTH) -> tuple[Image.Image, list[str]]:
    """One augmented copy: a random resized crop (area 0.2-1) at ``size``, then each op of ``ops``
    with its probability at a strength drawn in ``strength``. Returns (image, families applied)."""
    return crop_and_edit(img, size, CROP_SCALE, rng, assets or Assets.default(),
                         [(op.family, op.p, lambda g: float(g.uniform(*strength))) for op in ops])


def online_step(img: Image.Image, size: int, rng: np.random.Generator, pad: int = PAD) -> Image.Image:
    """The published online transform: resize to ``size``, horizontal flip (p 0.5), zero-pad ``pad``,
    random crop back to ``size``."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if pad:
        canvas = Image.new("RGB", (size + 2 * pad, size + 2 * pad))
        canvas.paste(img, (pad, pad))
        x0, y0 = int(rng.integers(0, 2 * pad + 1)), int(rng.integers(0, 2 * pad + 1))
        img = canvas.crop((x0, y0, x0 + size, y0 + size))
    return img


def _assets(paths: Sequence[str], seed: int) -> Assets:
    ids = tuple(Path(p).stem for p in paths)
    return Assets.from_augly(images=_ImagesById(dict(zip(ids, paths))), image_ids=ids, seed=seed)


def ops_of(families: Sequence[str] | None) -> tuple[BoTOp, ...]:
    """The ops of :data:`BOT_OPS` whose family is in ``families`` (None or empty: all); an unknown one is refused."""
    if not families:
        return BOT_OPS
    known = {o.family for o in BOT_OPS}
    bad = [f for f in families if f not in known]
    if bad:
        raise TrainDataError(f"unknown view family {bad[0]!r}; BoT's views use {', '.join(o.family for o in BOT_OPS)}")
    return tuple(o for o in BOT_OPS if o.family in set(families))


class KViewImages:
    """K on-the-fly views per training image (map-style dataset addressed by ``(index, epoch)``).

    Args:
        paths: training images, class i = ``paths[i]``. k: views per class per batch.
        size: training resolution. mean, std: the model's normalisation.
        families: keep only these ops of :data:`BOT_OPS` (None: all).
        ops: the ops themselves (a specialist's, :func:`specialist_ops`); excludes ``families``.

    Item: ``(x (k, 3, size, size) float32, y (k,) int64 = [index] * k)``.
    """

    def __init__(self, paths: Sequence[str | Path], k: int, size: int, mean, std, seed: int = 0,
                 families: Sequence[str] | None = None, ops: Sequence[BoTOp] | None = None):
        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise TrainDataError("no training images for the classes")
        if k < 2:
            raise TrainDataError(f"k={k}: the batch-hard triplet needs at least 2 views per class")
        self.k, self.size, self.seed = int(k), int(size), int(seed)
        self.mean, self.std = tuple(mean), tuple(std)
        if ops is not None and families:
            raise TrainDataError("give the view families or a specialist's ops, not both")
        self.ops = tuple(ops) if ops is not None else ops_of(families)
        self.assets = _assets(self.paths, self.seed)

    def __len__(self) -> int:
        return len(self.paths)

    def views(self, index: int, epoch: int = 0) -> list[tuple[Image.Image, list[str]]]:
        img = load_rgb(self.paths[index])
        out = []
        for v in range(self.k):
            rng = view_rng(self.seed, epoch, index, v)
            view, applied = bot_view(img, self.size, rng, self.assets, self.ops)
            out.append((online_step(view, self.size, rng), applied))
        return out

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        xs = [to_array(v, self.mean, self.std) for v, _ in self.views(index, epoch)]
        return np.stack(xs), np.full(self.k, index, np.int64)


def write_offline_copies(paths: Sequence[str | Path], root: str | Path, copies: int = PUBLISHED_COPIES,
                         size: int = 256, seed: int = 0, families: Sequence[str] | None = None,
                         quality: int = 95, specialist: str | None = None) -> Path:
    """Write the published offline set once: ``root/<id>/00.jpg`` (the original at ``size``²) and
    ``01.jpg`` .. the ``copies - 1`` augmented copies (:func:`bot_view`), plus ``root/copies.json``.

    A class folder appears only complete (temporary folder + rename); an interrupted call resumes
    with the classes not written yet. Copy j of image i is a pure function of (seed, i, j).

    Raises:
        TrainDataError: an unreadable image (named), or ``root`` holding a set of other settings.
    """
    root = Path(root)
    paths = [str(p) for p in paths]
    if copies < 2:
        raise TrainDataError(f"copies={copies}: a class needs the original and at least one copy")
    settings = {"copies": int(copies), "size": int(size), "seed": int(seed), "families": list(families or []),
                "n": len(paths), "ids": [Path(p).stem for p in paths]}
    if specialist is not None:  # recorded only for a specialist's set (older sets keep their settings)
        if families:
            raise TrainDataError("give the view families or a specialist, not both")
        settings["specialist"] = str(specialist)
    meta = root / "copies.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old != settings:
            raise TrainDataError(f"{meta}: an offline set of other settings (copies, size, seed, families or "
                                 f"images differ); choose another folder")
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    from ..atomic import atomic_write_text

    atomic_write_text(meta, json.dumps(settings))
    ops = specialist_ops(specialist) if specialist is not None else ops_of(families)
    assets = _assets(paths, seed)
    for i, p in enumerate(paths):
        dest = root / Path(p).stem
        if dest.is_dir():
            continue
        tmp = root / f".{dest.name}.tmp{os.getpid()}"
        tmp.mkdir()
        img = load_rgb(p)
        img.resize((size, size), Image.BILINEAR).save(tmp / "00.jpg", quality=quality)
        for j in range(1, copies):
            view, _ = bot_view(img, size, view_rng(seed, OFFLINE_EPOCH, i, j), assets, ops)
            view.save(tmp / f"{j:02d}.jpg", quality=quality)
        os.replace(tmp, dest)
    return root


class OfflineCopies:
    """The offline set of :func:`write_offline_copies` as a dataset: class i = image i's folder; an
    item draws ``k`` of its copies (without replacement) and applies :func:`online_step`.

    Item: ``(x (k, 3, size, size), y (k,) = [index] * k)``.

    Raises:
        TrainDataError: ``root`` is not a finished offline set (names what is missing).
    """

    def __init__(self, root: str | Path, k: int, size: int, mean, std, seed: int = 0):
        self.root = Path(root)
        meta = self.root / "copies.json"
        if not meta.is_file():
            raise TrainDataError(f"{meta}: not an offline set (write it with write_offline_copies)")
        s = json.loads(meta.read_text())
        self.ids, self.copies = list(s["ids"]), int(s["copies"])
        missing = [i for i in self.ids if not (self.root / i).is_dir()]
        if missing:
            raise TrainDataError(f"{self.root / missing[0]}: class folder missing ({len(missing)} of {len(self.ids)} "
                                 f"not written yet); run write_offline_copies again to finish the set")
        if k < 2 or k > self.copies:
            raise TrainDataError(f"k={k}: between 2 and the {self.copies} copies per class")
        self.k, self.size, self.seed, self.mean, self.std = int(k), int(size), int(seed), tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = view_rng(self.seed, epoch, index, 0)
        pick = rng.choice(self.copies, size=self.k, replace=False)
        xs = [to_array(online_step(load_rgb(self.root / self.ids[index] / f"{j:02d}.jpg"), self.size, rng),
                       self.mean, self.std) for j in pick]
        return np.stack(xs), np.full(self.k, index, np.int64)
