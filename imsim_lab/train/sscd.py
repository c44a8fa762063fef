"""SSCD's recipe (Pizzi et al., CVPR 2022, arXiv 2202.10261) on any benchmark folder.

``docs/methods.md``, "SSCD". The network is the registered ``sscd_repro``: a timm ResNet trunk +
GeM (p 3) + Linear(-> 512) + L2. Two augmented views per training image
(:mod:`imsim_lab.train.sscd_data`: ``advanced`` or ``strong_blur``), optionally mixed with other
images (``mix_p``: mixup / CutMix, content shared = positive), trained with InfoNCE (τ 0.05) plus
λ times the differential-entropy term (:class:`~imsim_lab.train.infonce.SSCDLoss`; all other images
of the global batch are negatives, across ranks under ``torchrun``), LARS (momentum 0.9, weight
decay 1e-6, :mod:`imsim_lab.train.lars`) at 0.3 per 256 images with a linear warm-up and cosine
decay. The released SSCD (method ``sscd``) is what a run of this recipe is compared with; it is
never fine-tuned here. Taught in ``notebooks/09_sscd``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .infonce import LAMBDA, TAU, SSCDLoss
from .sscd_data import AUGMENTATIONS, MIX_P, SSCDViews
from .trainer import TrainConfig, TrainResult, train

PUBLISHED_BACKBONE = "resnet50"
#: published: global batch 4,096, 100 epochs, 5 warm-up epochs (``docs/methods.md``, "SSCD")
PUBLISHED_BATCH, PUBLISHED_EPOCHS, PUBLISHED_WARMUP_EPOCHS = 4096, 100, 5


def published_lr(global_batch: int) -> float:
    """SSCD's linear scaling rule: 0.3 per 256 images (4.8 at 4,096)."""
    return 0.3 * global_batch / 256


@dataclass(frozen=True)
class SSCDConfig:
    """One SSCD training run.

    Attributes:
        backbone, size (training crops), dim, pretrained (timm hub weights for the trunk).
        aug: an :data:`~imsim_lab.train.sscd_data.AUGMENTATIONS` name.
        tau, lam: the loss. mix_p: share of items whose second view is mixed (0: the plain variant).
        timm_kwargs: more ``timm.create_model`` arguments (``{"dynamic_img_size": True}``: a ViT at 64 px).
        train: the trainer's settings (LARS, warm-up and cosine by default).
    """

    backbone: str = PUBLISHED_BACKBONE
    size: int = 224
    dim: int = 512
    pretrained: bool = False
    aug: str = "advanced"
    tau: float = TAU
    lam: float = LAMBDA
    mix_p: float = MIX_P
    timm_kwargs: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        optimizer="lars", lr=published_lr(256), lr_schedule="cosine", weight_decay=1e-6, batch_size=256))

    def __post_init__(self):
        if self.aug not in AUGMENTATIONS:
            raise ValueError(f"aug must be one of {AUGMENTATIONS.names()}, not {self.aug!r}")
        if self.tau <= 0 or self.lam < 0 or not 0 <= self.mix_p <= 1:
            raise ValueError("tau must be > 0, lam >= 0 and mix_p in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


def sscd_net(backbone: str = PUBLISHED_BACKBONE, size: int = 224, dim: int = 512, device: str | None = "cpu",
             weights_path: str | Path | None = None, pretrained: bool = False, timm_kwargs: dict | None = None):
    """The registered ``sscd_repro`` model (``.module`` is the nn.Module to train). ``size`` is the
    training crop; evaluation resizes the short side to 288 (``short_side=`` to change)."""
    from ..features.models import create_model

    kw = {"backbone": backbone, "input_size": size, "dim": dim, "timm_kwargs": dict(timm_kwargs or {})}
    if weights_path is not None:
        kw["weights_path"] = str(weights_path)
    elif pretrained:
        kw["weights"] = "timm"
    return create_model("sscd_repro", device=device, **kw)


def train_sscd(paths: Sequence[str | Path], out: str | Path, cfg: SSCDConfig, init: str | Path | None = None,
               on_step: Callable[[dict], None] | None = None, run_info: dict | None = None) -> TrainResult:
    """Train SSCD on the training images ``paths`` into ``out`` (resumable; the trainer's run folder).

    Args:
        init: network weights to start from (``weights.pt``); ignored on resume.
    """
    model = sscd_net(cfg.backbone, cfg.size, cfg.dim, pretrained=cfg.pretrained and init is None,
                     timm_kwargs=cfg.timm_kwargs)
    ds = SSCDViews(paths, cfg.aug, cfg.size, model.config.mean, model.config.std, seed=cfg.train.seed,
                   mix_p=cfg.mix_p)
    loss = SSCDLoss(cfg.tau, cfg.lam)
    info = {"recipe": "sscd", "config": cfg.to_dict(), "init": str(init) if init else None, **(run_info or {})}
    return train(model.module, loss, ds, cfg.train, out, init=init, on_step=on_step, run_info=info)
