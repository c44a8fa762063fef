"""Two-view augmentation and its progressive schedule (lyakaap, Yokoo, arXiv 2112.04323).

Each training image gives two views with the same label:

* **moderate**: random resized crop (scale 0.7-1) + horizontal flip;
* **hard**: random rotation (p) -> with probability ``overlay_p`` an overlay (another training
  image onto this one, or this one onto another) then a crop of scale 0.7-1, else a crop of scale
  0.15-1 -> a **shuffled** list of ops each applied with probability ``p`` (colour jitter,
  pixelisation, pixel shuffling, JPEG, grayscale, blur, perspective, text, emoji, edge
  enhancement) plus hflip 0.5 and vflip 0.1 -> random erasing (p 0.25, random values).

The magnitudes grow with the resolution: :data:`STAGES` holds the three published settings
(v83 at 256 px, v86 at 384 px, v98 at 512 px). Every random choice comes from a numpy Generator
seeded by (seed, epoch, image index), so a view is the same whatever the DataLoader worker and
after a resume. The edits reuse the recorded ops of :mod:`imsim_lab.data.augment` (the same code that
makes the benchmark's queries), with lyakaap's parameters.

Taught in ``notebooks/03_descriptor_1st_lyakaap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

from ..data.augment import Assets, Op, apply_op, sample_ops
from ..registry import Registry


@dataclass(frozen=True)
class ViewStage:
    """Magnitudes of the two views at one stage of the schedule.

    Attributes:
        name: registry name; size: output side in pixels (square).
        jitter: ColorJitter brightness/contrast/saturation strength (factor in [1-j, 1+j]).
        p: probability of each op of the hard view's list.
        overlay_p: probability of the overlay branch.
        opacity_lower: overlay opacity ~ U(opacity_lower, 1).
        overlay_size: overlay size (fraction of the base image's height) ~ U(lo, hi).
        moderate_scale, hard_scale: area range of the random resized crops.
        erase_p: random erasing probability (hard view).
        jpeg_qualities: JPEG qualities drawn from.
    """

    name: str
    size: int
    jitter: float = 0.7
    p: float = 0.25
    overlay_p: float = 0.05
    opacity_lower: float = 0.6
    overlay_size: tuple[float, float] = (0.4, 0.6)
    moderate_scale: tuple[float, float] = (0.7, 1.0)
    hard_scale: tuple[float, float] = (0.15, 1.0)
    erase_p: float = 0.25
    jpeg_qualities: tuple[int, ...] = (10, 20, 30, 50)

    def scaled(self, **changes) -> "ViewStage":
        """A copy with some fields changed (``STAGES.get("v83").scaled(size=128)``)."""
        return replace(self, **changes)


STAGES: Registry[ViewStage] = Registry("view stage")
STAGES.add("v83", ViewStage("v83", 256, jitter=0.7, p=0.25, overlay_p=0.05, opacity_lower=0.6,
                            overlay_size=(0.4, 0.6)))
STAGES.add("v86", ViewStage("v86", 384, jitter=0.75, p=0.30, overlay_p=0.075, opacity_lower=0.5,
                            overlay_size=(0.3, 0.7)))
STAGES.add("v98", ViewStage("v98", 512, jitter=0.8, p=0.35, overlay_p=0.10, opacity_lower=0.4,
                            overlay_size=(0.2, 0.8)))


@dataclass(frozen=True)
class ScheduleStep:
    """One step of a progressive training schedule (one call of :func:`imsim_lab.train.train`).

    Attributes:
        stage: a :data:`STAGES` name (view magnitudes and resolution).
        epochs, lr, batch_size (global, in images), memory_size: as published.
        lr_schedule: ``constant`` or ``linear`` (lr * (1 - t / T)).
        reference_negatives: reference images per sample added as extra negatives (v98: 2).
        note: what the published run did.
    """

    stage: str
    epochs: int
    lr: float
    batch_size: int
    memory_size: int = 20_000
    lr_schedule: str = "constant"
    reference_negatives: int = 0
    note: str = ""


#: lyakaap's published self-supervised schedule (lyakaap/ISC21-Descriptor-Track-1st ``reproduce_experiments.md``; ``docs/methods.md``, "lyakaap");
#: the fine-tune on ground-truth pairs (v107, margin 1.1, memory 1k) follows it.
LYAKAAP_SCHEDULE: tuple[ScheduleStep, ...] = (
    ScheduleStep("v83", 10, 0.1, 128, note="ImageNet init, 1M training images, 4 GPUs"),
    ScheduleStep("v86", 7, 0.1, 128, note="from v83 epoch 5, 8 GPUs"),
    ScheduleStep("v98", 3, 0.1, 64, lr_schedule="linear", reference_negatives=2, note="from v86 epoch 5"),
)


# ------------------------------------------------------------------------------------------------
# primitive steps (pure functions of an image and a Generator)


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float], rng: np.random.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop with a numpy Generator: a box of area ~ U(scale) and
    log-uniform aspect ``ratio``, resized to ``size`` x ``size`` (10 tries, then the centre)."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + s, y0 + s))


def crop_and_edit(img: Image.Image, size: int, area: tuple[float, float], rng: np.random.Generator,
                  assets: Assets, ops) -> tuple[Image.Image, list[str]]:
    """A random resized crop of ``area`` at ``size``, then each of ``ops`` = ``(family, probability,
    draw_strength)`` in order: fires when ``rng.random() < probability``, at strength
    ``draw_strength(rng)``, edited by the augmentation family's sampled ops. Returns (the view at
    ``size`` x ``size``, the families applied). The query-like views of S-square
    (:func:`imsim_lab.train.ssquare_data.query_view`) and Bag of Tricks' copies
    (:func:`imsim_lab.train.bot_data.bot_view`) are this loop with their own ops."""
    out = random_resized_crop(img, size, area, rng)
    applied = []
    for family, p, draw_strength in ops:
        if rng.random() >= p:
            continue
        strength = draw_strength(rng)
        for o in sample_ops(family, strength, rng, out.size, assets):
            out = apply_op(out, o, assets).convert("RGB")
        applied.append(family)
    if out.size != (size, size):
        out = out.resize((size, size), Image.BILINEAR)
    return out, applied


def random_erase(x: np.ndarray, rng: np.random.Generator, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> np.ndarray:
    """torchvision's RandomErasing(value="random") on a (3, h, w) normalised array (a copy)."""
    _, h, w = x.shape
    for _ in range(10):
        a = h * w * rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        eh, ew = int(round(math.sqrt(a * ar))), int(round(math.sqrt(a / ar)))
        if eh < h and ew < w:
            i, j = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            x = x.copy()
            x[:, i:i + eh, j:j + ew] = rng.standard_normal((x.shape[0], eh, ew)).astype(x.dtype)
            return x
    return x


def moderate_view(img: Image.Image, stage: ViewStage, rng: np.random.Generator) -> tuple[Image.Image, list[str]]:
    """View A: crop of area 0.7-1 + horizontal flip (p 0.5). Returns (image, names of the steps)."""
    out = random_resized_crop(img, stage.size, stage.moderate_scale, rng)
    steps = ["crop"]
    if rng.random() < 0.5:
        out, steps = out.transpose(Image.FLIP_LEFT_RIGHT), steps + ["hflip"]
    return out, steps


def _list_ops(stage: ViewStage):
    """The shuffled list of the hard view: name -> function(img, rng, assets) -> img."""
    j = stage.jitter

    def jitter(img, rng, assets):
        f = [float(rng.uniform(max(0.0, 1 - j), 1 + j)) for _ in range(3)]
        return apply_op(img, Op("color_jitter", {"brightness": f[0], "contrast": f[1], "saturation": f[2]}), assets)

    def with_family(name, lo, hi, size_key=None, size=(0.1, 0.3)):
        def fn(img, rng, assets):
            ops = sample_ops(name, float(rng.uniform(lo, hi)), rng, img.size, assets)
            if size_key:  # lyakaap's magnitude (font / emoji size 0.1-0.3 of the image)
                ops = [Op(o.name, {**o.params, size_key: float(rng.uniform(*size))}) for o in ops]
            for o in ops:
                img = apply_op(img, o, assets)
            return img
        return fn

    return {
        "color_jitter": jitter,
        "pixelize": lambda img, rng, a: apply_op(img, Op("pixelize", {"ratio": float(rng.uniform(0.1, 0.5))}), a),
        "shuffle_pixels": lambda img, rng, a: apply_op(
            img, Op("shuffle_pixels", {"fraction": 0.1, "seed": int(rng.integers(2**31))}), a),
        "jpeg": lambda img, rng, a: apply_op(img, Op("jpeg", {"quality": int(rng.choice(stage.jpeg_qualities))}), a),
        "grayscale": lambda img, rng, a: apply_op(img, Op("grayscale", {"mode": "luminosity"}), a),
        "blur": lambda img, rng, a: img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.1, 2.0)))),
        "perspective": with_family("perspective", 0.2, 0.6),
        "text": with_family("text", 0.3, 0.8, "size"),
        "emoji": with_family("emoji", 0.3, 0.8, "size"),
        "edge_enhance": lambda img, rng, a: img.filter(
            ImageFilter.EDGE_ENHANCE if rng.random() < 0.5 else ImageFilter.EDGE_ENHANCE_MORE),
    }


def hard_view(img: Image.Image, stage: ViewStage, rng: np.random.Generator, assets: Assets | None = None,
              other_ids: tuple[str, ...] = (), exclude: str | None = None) -> tuple[Image.Image, list[str]]:
    """View B (module docstring). ``other_ids``: ids of ``assets`` images to overlay (training
    images; ``exclude`` is the image's own id); without them the overlay branch is skipped.
    Returns (image, names of the steps)."""
    assets = assets or Assets.default()
    steps: list[str] = []
    if rng.random() < stage.p:
        img = apply_op(img, Op("rotate", {"degrees": float(rng.uniform(-180, 180)), "crop": False,
                                          "fill": [0, 0, 0]}), assets)
        steps.append("rotate")
    usable = len(other_ids) > 1 or (len(other_ids) == 1 and other_ids[0] != exclude)
    if usable and rng.random() < stage.overlay_p:
        k = int(rng.integers(len(other_ids)))
        if other_ids[k] == exclude:
            k = (k + 1) % len(other_ids)
        other = str(other_ids[k])
        params = {"size": float(rng.uniform(*stage.overlay_size)),
                  "opacity": float(rng.uniform(stage.opacity_lower, 1.0)),
                  "x": float(rng.uniform(0, 0.5)), "y": float(rng.uniform(0, 0.5))}
        if rng.random() < 0.5:  # another image onto this one
            img = apply_op(img, Op("overlay_image", {"image": other, **params}), assets)
            steps.append("overlay_other_on_this")
        else:  # this image onto another: the copy is a part of a foreign picture
            base = assets.image(other)
            small = img.resize((max(1, int(base.height * params["size"] * img.width / img.height)),
                                max(1, int(base.height * params["size"]))), Image.BILINEAR)
            layer = base.copy()
            x, y = int(params["x"] * base.width), int(params["y"] * base.height)
            mask = Image.new("L", small.size, int(255 * params["opacity"]))
            layer.paste(small, (x, y), mask)
            img = layer
            steps.append("overlay_this_on_other")
        img = random_resized_crop(img, stage.size, stage.moderate_scale, rng)
    else:
        img = random_resized_crop(img, stage.size, stage.hard_scale, rng)
    steps.append("crop")
    ops = _list_ops(stage)
    names = list(ops) + ["hflip", "vflip"]
    order = rng.permutation(len(names))
    for i in order:
        name = names[i]
        if name == "hflip":
            if rng.random() < 0.5:
                img, steps = img.transpose(Image.FLIP_LEFT_RIGHT), steps + [name]
        elif name == "vflip":
            if rng.random() < 0.1:
                img, steps = img.transpose(Image.FLIP_TOP_BOTTOM), steps + [name]
        elif rng.random() < stage.p:
            img = ops[name](img, rng, assets).convert("RGB")
            steps.append(name)
    if img.size != (stage.size, stage.size):
        img = img.resize((stage.size, stage.size), Image.BILINEAR)
    return img, steps


def view_rng(seed: int, epoch: int, index: int, view: int = 0) -> np.random.Generator:
    """The Generator of one view: a pure function of (seed, epoch, image index, view)."""
    return np.random.default_rng([int(seed), int(epoch), int(index), int(view)])
