"""SeungKee Jeon's candidate descriptor (matching track 2nd, arXiv 2111.09113; ``docs/methods.md``,
"SeungKee Jeon (matching track, 2nd)"): a ViT + a linear projection without bias + L2, grayscale
input, trained with NT-Xent (SimCLR's loss, τ 0.1) on batches built from **hard-negative groups**.

* The network is the registered ``ntxent_vit`` model (:mod:`imsim_lab.features.models`): a timm ViT
  (published ``vit_large_patch16_384``), its class token, Linear(d -> 256, no bias), L2, on
  grayscale (3 equal channels) square inputs. The weights of a run are used by the method ``ntxent``
  (``-p model.weights_path=OUT/weights.pt``), which can be the ``candidates.method`` of ``pairvit``.
* A training item is one **group**: a training image and its nearest neighbours in some feature
  space (:func:`imsim_lab.train.pairvit.hard_negative_groups` over the descriptors of a finished run,
  or of the untrained network itself; or random others), each image giving two views: its clean
  version (resized, flipped half of the time) and an edit by one transformation family of
  :mod:`imsim_lab.data.augment` (the query side of a copy). The views of one image are positives,
  every other view of the global batch a negative, so the negatives are the images most easily
  confused with it. Labels are image indices: an image that sits in two groups of one batch is a
  positive of itself, never a negative.
* The loss is :class:`~imsim_lab.train.infonce.SSCDLoss` with τ = 0.1 and no entropy term (λ = 0),
  which is NT-Xent when every view has one positive (checked against pytorch-metric-learning's
  ``NTXentLoss`` in ``tests/test_train_sscd.py``); training runs on the shared trainer (AMP, DDP,
  exact resume), Adam at lr 1e-5 constant and weight decay 1e-6 as published.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ImsimError
from .data import load_rgb
from .trainer import TrainConfig, TrainResult, train
from .views import view_rng

#: published temperature, projection size, backbone and input side (``docs/methods.md``)
TAU, PUBLISHED_DIM, PUBLISHED_BACKBONE, PUBLISHED_SIZE = 0.1, 256, "vit_large_patch16_384", 384
#: the ``cpu`` profile's network: a 2-block ViT-Tiny at 64 px, 128-d
CPU_MODEL = {"backbone": "vit_tiny_patch16_224", "input_size": 64, "dim": 128,
             "timm_kwargs": {"img_size": 64, "depth": 2}}


class NTXentError(ImsimError):
    """A training run of the NT-Xent descriptor that cannot start; the message names what."""


@dataclass(frozen=True)
class NTXentConfig:
    """One training run.

    Attributes:
        model_args: overrides of the ``ntxent_vit`` model (backbone, input_size, dim, grayscale,
            timm_kwargs; ``{}``: the published network).
        group_size: images per group (the image and its ``group_size - 1`` neighbours).
        tau: the NT-Xent temperature (published 0.1).
        families, strength: the transformation families of the edited view and their strength range.
        pretrained: timm hub weights for the backbone (needs internet).
        train: the trainer's settings (published: Adam, lr 1e-5 constant, weight decay 1e-6).
    """

    model_args: dict = field(default_factory=dict)
    group_size: int = 8
    tau: float = TAU
    families: tuple = ()
    strength: tuple = (0.2, 1.0)
    pretrained: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(optimizer="adam", lr=1e-5, weight_decay=1e-6))

    def __post_init__(self):
        if self.tau <= 0:
            raise NTXentError(f"tau must be > 0, not {self.tau}")
        if self.group_size < 1:
            raise NTXentError(f"group size must be >= 1, not {self.group_size}")
        if not self.families:
            from .pairvit import TRAIN_FAMILIES

            object.__setattr__(self, "families", TRAIN_FAMILIES)
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "strength", tuple(float(v) for v in self.strength))

    def to_dict(self) -> dict:
        return asdict(self)


def ntxent_net(model_args: dict | None = None, device: str | None = "cpu", weights_path: str | Path | None = None,
               pretrained: bool = False):
    """The registered ``ntxent_vit`` model with ``model_args`` (``.module`` is the nn.Module to train)."""
    from ..features.models import create_model

    kw = dict(model_args or {})
    if weights_path is not None:
        kw["weights_path"] = str(weights_path)
    elif pretrained:
        kw["weights"] = "timm"
    return create_model("ntxent_vit", device=device, **kw)


class GroupViews:
    """Training items of the NT-Xent descriptor (map-style dataset addressed by ``(index, epoch)``).

    Item i: ``x`` (2g, 3, s, s) float32, the clean and the edited view of each image of ``groups[i]``
    (interleaved: image j's views at rows 2k and 2k + 1), ``y`` (2g,) int64 the image index of each
    view. Views go through ``preprocess`` (the model's: grayscale, square resize, normalisation).

    Args:
        paths: the training images; ``ids``: their ids (for the families that paste other images).
        groups: (n, g) indices into ``paths``, row i starting with i.
    """

    def __init__(self, paths: Sequence[str | Path], groups: np.ndarray, preprocess: Callable, seed: int = 0,
                 families: Sequence[str] = (), strength: tuple[float, float] = (0.2, 1.0),
                 ids: Sequence[str] | None = None, assets=None):
        from ..data.augment import FAMILIES, Assets
        from .data import _ImagesById
        from .pairvit import TRAIN_FAMILIES

        self.paths = [str(p) for p in paths]
        self.groups = np.asarray(groups, np.int64)
        n = len(self.paths)
        if self.groups.ndim != 2 or len(self.groups) != n or (n and (self.groups[:, 0] != np.arange(n)).any()) \
                or (self.groups.size and (self.groups.min() < 0 or self.groups.max() >= n)):
            raise NTXentError(f"groups must be ({n}, g) indices of the training images with row i starting with i, "
                              f"not {self.groups.shape}")
        families = tuple(families) or TRAIN_FAMILIES
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise NTXentError(f"unknown transformation family {unknown[0]!r}; families: {', '.join(FAMILIES.names())}")
        self.preprocess, self.seed, self.families, self.strength = preprocess, int(seed), families, tuple(strength)
        self.ids = tuple(str(i) for i in ids) if ids is not None else tuple(Path(p).stem for p in self.paths)
        self.assets = assets or Assets.from_augly(images=_ImagesById(dict(zip(self.ids, self.paths))),
                                                  image_ids=self.ids, seed=self.seed)

    def __len__(self) -> int:
        return len(self.paths)

    def views(self, j: int, g: np.random.Generator):
        """(clean, edited) PIL views of image ``j``."""
        from ..data.augment import apply_family

        img = load_rgb(self.paths[j])
        clean = img.transpose(0) if g.random() < 0.5 else img  # PIL FLIP_LEFT_RIGHT
        fam = self.families[int(g.integers(len(self.families)))]
        edited, _ = apply_family(img, fam, float(g.uniform(*self.strength)), g, self.assets)
        return clean, edited

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        xs, ys = [], []
        for k, j in enumerate(self.groups[index]):
            g = view_rng(self.seed, epoch, index, k)
            for v in self.views(int(j), g):
                xs.append(np.asarray(self.preprocess(v), np.float32))
                ys.append(int(j))
        return np.stack(xs), np.asarray(ys, np.int64)


def init_groups(model, paths: Sequence[str | Path], size: int, batch_size: int = 64) -> np.ndarray:
    """Hard-negative groups from ``model``'s own descriptors of the training images (the network
    before training, or any :class:`~imsim_lab.features.models.base.DescriptorModel`): (n, size)."""
    from ..features import ExtractConfig, batches_of, embedded_batches
    from .pairvit import hard_negative_groups

    paths = [str(p) for p in paths]
    x = np.zeros((len(paths), model.dim), np.float32)
    for idx, emb, failures in embedded_batches(model, paths, batches_of(len(paths), batch_size),
                                               ExtractConfig(batch_size=batch_size, num_workers=0)):
        if failures:
            raise NTXentError(f"{paths[failures[0][0]]}: unreadable training image ({failures[0][1]})")
        x[np.asarray(idx, np.int64)] = emb
    return hard_negative_groups(x, size)


def train_ntxent(bench, out: str | Path, cfg: NTXentConfig, groups: np.ndarray | str = "init",
                 init: str | Path | None = None, on_step: Callable[[dict], None] | None = None,
                 groups_source: str | None = None) -> TrainResult:
    """Train the descriptor on the training images of ``bench`` (never a query) into ``out``.

    Args:
        groups: (n, g) groups over ``bench.training_ids``, or ``"init"`` (the untrained network's
            nearest neighbours) or ``"random"`` (:func:`imsim_lab.train.pairvit.random_groups`).
        groups_source: what the groups were made from (kept in ``train_config.json``).
    """
    from .infonce import SSCDLoss
    from .pairvit import random_groups

    ids = [str(i) for i in bench.training_ids]
    if len(ids) < 2:
        raise NTXentError(f"{Path(bench.root) / 'training'}: fewer than 2 training images; ntxent trains on them")
    paths = [bench.image_path(i) for i in ids]
    size = min(cfg.group_size, len(ids))
    torch.manual_seed(cfg.train.seed)
    model = ntxent_net(cfg.model_args, device="cpu", pretrained=cfg.pretrained and init is None)
    if isinstance(groups, str):
        source = groups_source or groups
        if groups == "random":
            groups = random_groups(len(ids), size, cfg.train.seed)
        elif groups == "init":
            groups = init_groups(model, paths, size)
        else:
            raise NTXentError(f"groups must be an array, 'init' or 'random', not {groups!r}")
    else:
        source = groups_source or "given"
    ds = GroupViews(paths, groups, model.preprocess, cfg.train.seed, cfg.families, cfg.strength, ids=ids)
    info = {"recipe": "ntxent", "config": cfg.to_dict(), "model": model.config.to_dict(),
            "benchmark": str(bench.root), "groups": source, "group_size": int(np.shape(groups)[1]),
            "init": str(init) if init else None}
    return train(model.module, SSCDLoss(cfg.tau, 0.0), ds, cfg.train, out, init=init, on_step=on_step,
                 run_info=info)
