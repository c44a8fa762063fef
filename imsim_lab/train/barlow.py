"""Barlow Twins: the self-supervised initialisation of Bag of Tricks' trunk.

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021, arXiv 2103.03230 (eq. 1-2). Two augmented views of each image go through
the trunk and a projector; with z^A, z^B (n, D) standardised along the batch and the
cross-correlation C = z^Aᵀ z^B / n,

    L_BT = Σ_i (1 - C_ii)² + λ Σ_i Σ_{j≠i} C_ij²,      λ = 0.0051

(the paper writes 5·10⁻³; 0.0051 is the released model's setting, in its file path). The
invariance term pulls C's diagonal to 1, the redundancy term pushes the rest to 0.

* :class:`BarlowNet`: the same timm trunk as :class:`~imsim_lab.features.models.bot.BoTNet` (last
  stride 1, identical parameter names, so its weights load into BoT's trunk), average pooling, a
  projector of three linear layers (BN + ReLU between; published 8192-8192-8192 on ResNet-50,
  4c wide here).
* :func:`train_barlow`: pretrain on the benchmark's training images (``imsim-lab train barlow``),
  the shared trainer (AMP, DDP, exact resume); writes ``OUT/trunk.pt`` next to the trainer's files.
  Under DDP the cross-correlation is each rank's own (the reference code sums it over ranks).
* :func:`load_trunk`: what BoT starts from: a ``trunk.pt`` of this recipe, or the released
  ResNet-50 (a path or URL, sha256 checked before loading, ``torch.load(weights_only=True)``).

Taught in ``notebooks/05_descriptor_3rd_bag_of_tricks``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from PIL import Image, ImageOps

from ..atomic import atomic_path
from ..data.augment import Assets, apply_op, sample_ops
from ..errors import ImsimError
from .data import TrainDataError, load_rgb, to_array
from .trainer import TrainConfig, TrainResult, train
from .views import random_resized_crop, view_rng

LAMBDA = 0.0051
#: the released ImageNet ResNet-50 (facebookresearch/barlowtwins); its sha256 is not published
RELEASED_URL = "https://dl.fbaipublicfiles.com/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth"
TRUNK = "trunk.pt"


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(z - mean) / sqrt(var + eps) along the batch (BatchNorm without affine, biased variance)."""
    z = z.float()
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def cross_correlation(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """C = standardise(za)ᵀ standardise(zb) / n. Shapes: (n, D), (n, D) -> (D, D)."""
    return standardise(za).T @ standardise(zb) / za.shape[0]


def barlow_twins_loss(za: torch.Tensor, zb: torch.Tensor, lambd: float = LAMBDA) -> torch.Tensor:
    """Σ (1 - C_ii)² + λ Σ_{i≠j} C_ij² (module docstring)."""
    c = cross_correlation(za, zb)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off


class BarlowLoss(nn.Module):
    """The trainer's criterion: rows 2i and 2i+1 of a batch are the two views of one image."""

    def __init__(self, lambd: float = LAMBDA):
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(z) % 2 or not torch.equal(y[0::2], y[1::2]):
            raise ValueError("Barlow Twins batches hold two consecutive views per image")
        return barlow_twins_loss(z[0::2], z[1::2], self.lambd)


class BarlowNet(nn.Module):
    """Trunk (as BoT's: timm, last stride 1) + average pooling + projector. (b, 3, h, w) -> (b, proj_dim)."""

    def __init__(self, backbone: str = "resnet50", proj_dim: int | None = None, pretrained: bool = False):
        super().__init__()
        import timm

        from ..features.models.bot import set_last_stride_one

        self.trunk = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="")
        set_last_stride_one(self.trunk)
        c = self.trunk.num_features
        h = int(proj_dim or 4 * c)
        self.projector = nn.Sequential(nn.Linear(c, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True),
                                       nn.Linear(h, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True),
                                       nn.Linear(h, h, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.trunk.forward_features(x).mean(dim=(2, 3)))


def barlow_view(img: Image.Image, size: int, rng: np.random.Generator, second: bool,
                assets: Assets | None = None) -> Image.Image:
    """Barlow Twins' views (paper, appendix): random resized crop (0.08-1), flip, colour jitter
    (p 0.8), grayscale (p 0.2), blur (p 1.0 on the first view, 0.1 on the second), solarisation
    (p 0 / 0.2); the edits are the families of :mod:`imsim_lab.data.augment`."""
    assets = assets or Assets.default()
    out = random_resized_crop(img, size, (0.08, 1.0), rng)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    for family, p in (("color_jitter", 0.8), ("grayscale", 0.2), ("blur", 0.1 if second else 1.0)):
        if rng.random() < p:
            for o in sample_ops(family, float(rng.uniform(0.3, 0.8)), rng, out.size, assets):
                out = apply_op(out, o, assets).convert("RGB")
    if second and rng.random() < 0.2:
        out = ImageOps.solarize(out, 128)
    return out.resize((size, size), Image.BILINEAR) if out.size != (size, size) else out


class BarlowViews:
    """Item ``(index, epoch)`` -> two views (2, 3, size, size) of training image ``index``, labels [i, i]."""

    def __init__(self, paths: Sequence[str | Path], size: int, mean, std, seed: int = 0):
        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise TrainDataError("no training images")
        self.size, self.mean, self.std, self.seed = int(size), tuple(mean), tuple(std), int(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        img = load_rgb(self.paths[index])
        xs = [to_array(barlow_view(img, self.size, view_rng(self.seed, epoch, index, v), v == 1), self.mean, self.std)
              for v in (0, 1)]
        return np.stack(xs), np.asarray([index, index], np.int64)


@dataclass(frozen=True)
class BarlowConfig:
    """One Barlow Twins run: trunk, resolution, projector width (None: 4c), λ, the trainer's settings
    (published: LARS 0.2 per 256 images, weight decay 1.5e-6, 10 warm-up epochs, cosine, 1,000 epochs,
    batch 2,048 at 224 px)."""

    backbone: str = "resnet50"
    size: int = 224
    proj_dim: int | None = None
    lambd: float = LAMBDA
    pretrained: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        optimizer="lars", lr=0.2, lr_schedule="cosine", weight_decay=1.5e-6, batch_size=256))

    def to_dict(self) -> dict:
        return asdict(self)


def train_barlow(paths: Sequence[str | Path], out: str | Path, cfg: BarlowConfig,
                 on_step: Callable[[dict], None] | None = None, run_info: dict | None = None) -> TrainResult:
    """Pretrain a trunk with Barlow Twins on ``paths`` into ``out``; writes ``out/trunk.pt`` (the
    trunk's state_dict, what :func:`load_trunk` and ``imsim-lab train bot --init-trunk`` read)."""
    from ..features.models.config import IMAGENET_MEAN, IMAGENET_STD

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        net = BarlowNet(cfg.backbone, cfg.proj_dim, cfg.pretrained)
    ds = BarlowViews(paths, cfg.size, IMAGENET_MEAN, IMAGENET_STD, seed=cfg.train.seed)
    info = {"recipe": "barlow", "config": cfg.to_dict(), **(run_info or {})}
    res = train(net, BarlowLoss(cfg.lambd), ds, cfg.train, out, on_step=on_step, run_info=info)
    from ..distributed import dist_info

    if dist_info()[0] == 0 and res.weights is not None:
        state = torch.load(res.weights, map_location="cpu", weights_only=True)
        trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
        with atomic_path(Path(out) / TRUNK) as tmp:
            torch.save(trunk, tmp)
    return res


def load_trunk(trunk: nn.Module, source: str | Path, sha256: str | None = None,
               cache_dir: str | Path | None = None) -> Path:
    """Load trunk weights into ``trunk`` (BoT's, or any timm ResNet) from ``source``.

    Args:
        source: a ``trunk.pt`` of :func:`train_barlow` (or its run folder), the released Barlow
            Twins ``resnet50.pth`` (torchvision names, which timm's ResNet shares), a path or an
            ``http(s)://`` URL (downloaded once into the weights cache).
        sha256: the file's checksum, checked before it is read; required for a URL.

    Returns:
        The local file read.

    Raises:
        ImsimError: a URL without sha256, a missing file, a wrong checksum, or weights of other
            names or shapes than the trunk (one line naming the file).
    """
    from ..features.models.weights import fetch_weights, state_dict_mismatch
    from .initcheck import read_state

    src = check_trunk_source(source, sha256)
    path = Path(fetch_weights(src, sha256, cache_dir))
    state = read_state(path, "trunk", "a `train barlow` trunk.pt or the released resnet50.pth")
    shapes, missing, unexpected = state_dict_mismatch(state, trunk.state_dict())
    if shapes or missing or unexpected:
        parts = [f"{len(shapes)} tensors of other shapes, e.g. " + "; ".join(f"{k} {a} (trunk {b})" for k, a, b in
                                                                            shapes[:2])] if shapes else []
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {', '.join(missing[:2])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:2])}")
        raise ImsimError(f"{path}: trunk weights do not fit {type(trunk).__name__}: {'; '.join(parts)}")
    trunk.load_state_dict(state)
    return path


def check_trunk_source(source: str | Path, sha256: str | None = None) -> str:
    """The file or URL :func:`load_trunk` reads (a folder means its ``trunk.pt``), checked before any
    training starts: a URL needs ``sha256``; a local file must exist.

    Raises:
        ImsimError: one line naming the source.
    """
    src = str(source)
    if src.startswith(("http://", "https://")):
        if not sha256:
            raise ImsimError(f"{src}: downloading trunk weights needs their sha256 (the released file's checksum is "
                             f"not published: download it once, run `sha256sum` on it and pass the value)")
        return src
    p = Path(src[len("file://"):] if src.startswith("file://") else src)
    if p.is_dir():
        p = p / TRUNK
    if not p.is_file():
        raise ImsimError(f"{p}: trunk weights file not found")
    return str(p)
