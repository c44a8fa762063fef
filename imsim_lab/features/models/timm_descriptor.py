"""Descriptor models on timm backbones: features -> GeM -> projection head -> L2.

The staged API follows timm: :meth:`TimmDescriptorNet.forward_features` (feature maps),
:meth:`~TimmDescriptorNet.pool` (GeM), :meth:`~TimmDescriptorNet.forward_head` (projection),
then L2 normalisation. lyakaap's ISCNet (Yokoo, arXiv 2112.04323; ``docs/methods.md``,
"lyakaap") is this shape with GeM p = 1 and a Linear(no bias) + BatchNorm1d head; SSCD (Pizzi
et al., arXiv 2202.10261) with p = 3 and a Linear head.

Weights: ``weights="random"`` (tests, demos), ``"timm"`` (timm's hub; needs internet, backbone
only), or a local checkpoint ``weights_path`` (loaded safely, for the whole net or, with
``checkpoint_scope="backbone"``, the trunk only). Taught in ``notebooks/03_descriptor_1st_lyakaap``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import TorchDescriptorModel
from .config import ModelConfig
from .layers import GeM, L2Norm
from .weights import WeightsError, load_state_dict, resolve_weights

HEADS = ("linear", "linear_bn", "linear_nobias", "none")


class TimmDescriptorNet(nn.Module):
    """timm trunk + GeM + projection + L2.

    Args:
        backbone: a timm model name (``resnet18``, ``tf_efficientnetv2_m``...).
        dim: descriptor dimension (ignored with ``head="none"``: the trunk's channels).
        gem_p: GeM exponent; ``gem_learnable`` makes it a parameter.
        head: ``linear`` (bias), ``linear_bn`` (no bias + BatchNorm1d, lyakaap), ``linear_nobias``
            (S-square's neck) or ``none``.
        pretrained: ask timm for its hub weights (internet).
        timm_kwargs: more arguments of ``timm.create_model`` (e.g. ``dynamic_img_size=True`` for a ViT
            at another resolution than its default; the tensors keep their shapes).

    Shapes: (b, 3, h, w) -> (b, dim), rows of unit L2 norm.
    """

    def __init__(self, backbone: str, dim: int = 256, gem_p: float = 3.0, gem_learnable: bool = False,
                 head: str = "linear", pretrained: bool = False, timm_kwargs: dict | None = None):
        super().__init__()
        import timm

        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}")
        try:
            self.backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="",
                                              **(timm_kwargs or {}))
        except RuntimeError as e:
            raise WeightsError(f"timm model {backbone!r}: cannot get pretrained weights ({e}); "
                               f"pass weights_path= a local checkpoint") from None
        c = self.backbone.num_features
        self.gem = GeM(gem_p, learnable=gem_learnable)
        if head == "none":
            self.fc, self.bn = nn.Identity(), nn.Identity()
            self.dim = c
        else:
            self.fc = nn.Linear(c, dim, bias=head == "linear")  # linear_nobias, linear_bn: none
            nn.init.xavier_normal_(self.fc.weight)
            self.bn = nn.BatchNorm1d(dim) if head == "linear_bn" else nn.Identity()
            self.dim = dim
        self.l2 = L2Norm()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) -> (b, c, h', w') feature maps (tokens of a ViT are returned as is)."""
        return self.backbone.forward_features(x)

    def pool(self, f: torch.Tensor) -> torch.Tensor:
        """GeM over space; for token outputs (b, n, c) the class token."""
        return f[:, 0] if f.ndim == 3 else self.gem(f)

    def forward_head(self, g: torch.Tensor) -> torch.Tensor:
        """(b, c) -> (b, dim), before normalisation."""
        return self.bn(self.fc(g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.forward_head(self.pool(self.forward_features(x))))


def build_timm_descriptor(cfg: ModelConfig, device: str | None = None) -> TorchDescriptorModel:
    """Build the net of ``cfg`` (``extra``: backbone, gem_p, gem_learnable, head, checkpoint_scope),
    load its weights, and wrap it as a :class:`~imsim_lab.features.models.base.TorchDescriptorModel`."""
    e = cfg.extra
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(e.get("seed", 0)))  # random weights are reproducible
        net = TimmDescriptorNet(e["backbone"], cfg.dim, e.get("gem_p", 3.0), e.get("gem_learnable", False),
                                e.get("head", "linear"), pretrained=cfg.weights == "timm",
                                timm_kwargs=e.get("timm_kwargs"))
    if e.get("head") == "none" and net.dim != cfg.dim:
        raise WeightsError(f"model {cfg.name!r}: head='none' gives {net.dim}-d descriptors, config says {cfg.dim}")
    path = resolve_weights(cfg)
    if path is not None:
        scope = e.get("checkpoint_scope", "net")
        load_state_dict(net.backbone if scope == "backbone" else net, path, strict=True)
    return TorchDescriptorModel(cfg, net, device)


def timm_config(name: str, backbone: str, dim: int = 256, size: int = 224, gem_p: float = 3.0,
                head: str = "linear", paper: str = "", **kw) -> ModelConfig:
    """A :class:`ModelConfig` for a timm descriptor, taking mean/std/interpolation from timm's
    pretrained config of the backbone (so the preprocessing matches the trunk)."""
    import timm

    try:
        pc = timm.models.get_pretrained_cfg(backbone)
        pc = pc.to_dict() if pc is not None else {}
    except Exception:  # noqa: BLE001 - unknown tag: fall back to ImageNet defaults
        pc = {}
    extra = {"backbone": backbone, "gem_p": gem_p, "gem_learnable": False, "head": head,
             "checkpoint_scope": "net", "seed": 0}
    fields = dict(name=name, dim=dim, input_size=(size, size), resize="square",
                  mean=tuple(pc.get("mean", (0.485, 0.456, 0.406))), std=tuple(pc.get("std", (0.229, 0.224, 0.225))),
                  interpolation=pc.get("interpolation", "bilinear") if pc.get("interpolation") in
                  ("bilinear", "bicubic") else "bilinear", paper=paper, extra=extra)
    fields.update(kw)
    return ModelConfig(**fields)
