"""VisionForce's network for Bag of Tricks (descriptor track 3rd) and D2LV (matching track 1st).

Wang, Zhang, Sun, Yang, "Bag of Tricks and A Strong Baseline for Image Copy Detection", arXiv
2111.08004, and Wang, Sun, Zhang, Yang, "D²LV", arXiv 2111.07090 (``docs/methods.md``, "Bag of
Tricks" and "D2LV"). Piece by piece (:class:`BoTNet`):

* **trunk**: a timm ResNet with the **last stride set to 1** (:func:`set_last_stride_one`: the
  stride-2 convolutions of the first block of ``layer4`` become stride 1, no dilation, so the
  last feature map is twice as large). The published trunk is ResNet-50 (torchvision layout,
  the key names of timm's ``resnet50``); D2LV also used ResNet-50-IBN-a, which timm does not
  provide (``timm.list_models('*ibn*')`` is empty in timm 1.0), so ``resnet50`` it is. CPU
  lessons use ``resnet18`` or timm's ``test_resnet``.
* **WaveBlock** (:class:`WaveBlock`; Wang et al., "Attentive WaveBlock", arXiv 2006.06525) after
  ``layer2`` and ``layer3``, in training only: a random horizontal band of 30 % of the height is
  kept, everything outside it is multiplied by 1.5.
* **GeM** with a learnable p initialised at 3; the published test code pools with p = 3 fixed
  (``gem_p_eval``; None: the learnt p).
* **projector** c -> 2c -> BN -> LeakyReLU(0.2) -> 4c -> BN without bias (2048 -> 4096 -> 8192
  for ResNet-50): the "wide" feature of D2LV.
* **matrix head** (BoT only): BN(4c) -> LeakyReLU(0.2) -> Linear(4c -> 256) -> BN without bias:
  the 256-d descriptor.

In training mode the forward returns ``cat([gem (c), wide (4c), head (256)])`` so that the
criterion (:class:`imsim_lab.train.bot_losses.BoTLoss`) sees all three; in eval mode it returns the
L2-normalised descriptor (``output="head"``: BoT; ``"wide"``: D2LV).

Test time (:class:`BoTDescriptor`): **multi-scale** descriptors, square resizes 200, 256, 320 and
400 (``scales``), each L2-normalised, averaged and L2-normalised again. The preprocessing makes
one flat array per image holding every scale, so the ordinary extraction pipeline
(:func:`imsim_lab.features.extract.extract_split`) batches it; with a single scale it is the plain
(3, s, s) array. Taught in ``notebooks/05_descriptor_3rd_bag_of_tricks``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .base import TorchDescriptorModel
from .config import _FILTERS, ModelConfig
from .layers import GeM, gem
from .timm_descriptor import timm_config
from .weights import WeightsError, load_state_dict, resolve_weights

BOT_PAPER = "Wang, Zhang, Sun, Yang, Bag of Tricks and A Strong Baseline for Image Copy Detection, arXiv 2111.08004"
D2LV_PAPER = "Wang, Sun, Zhang, Yang, D2LV: A Data-Driven and Local-Verification Approach, arXiv 2111.07090"
#: the published trunk, the published test scales, the matrix head and the WaveBlock settings
PUBLISHED_TRUNK, PUBLISHED_SCALES, HEAD_DIM = "resnet50", (200, 256, 320, 400), 256
WAVE_BAND, WAVE_FACTOR = 0.3, 1.5
OUTPUTS = ("head", "wide")


class WaveBlock(nn.Module):
    """Keep a random horizontal band of ``band`` x height, multiply the rest by ``factor`` (training only).

    The band's first row is drawn with torch's RNG (the trainer checkpoints it, so a resumed run
    draws the same bands). Shapes: (b, c, h, w) -> (b, c, h, w); identity in eval mode.
    """

    def __init__(self, band: float = WAVE_BAND, factor: float = WAVE_FACTOR):
        super().__init__()
        self.band, self.factor = float(band), float(factor)

    def mask(self, h: int, start: int | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """The (h, 1) multiplier: ``factor`` everywhere but rows [start, start + round(band h))."""
        rh = int(round(self.band * h))
        if start is None:
            start = int(torch.randint(0, h - rh + 1, (1,)).item())
        m = torch.full((h, 1), self.factor, device=device, dtype=dtype)
        m[start:start + rh] = 1.0
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * self.mask(x.shape[-2], device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"band={self.band}, factor={self.factor}"


def set_last_stride_one(trunk: nn.Module) -> int:
    """Turn the stride-2 convolutions of the first block of ``trunk.layer4`` into stride 1.

    Returns the number of convolutions changed (2 for a ResNet with a projection shortcut).

    Raises:
        WeightsError: the trunk has no ``layer4`` (not a ResNet).
    """
    layer4 = getattr(trunk, "layer4", None)
    if layer4 is None:
        raise WeightsError(f"{type(trunk).__name__}: the last-stride-1 trick needs a ResNet trunk (layer1..layer4)")
    changed = 0
    for m in layer4[0].modules():
        if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2):
            m.stride = (1, 1)
            changed += 1
        elif isinstance(m, nn.AvgPool2d) and m.stride in (2, (2, 2)):  # "d" variants pool in the shortcut
            m.stride, m.kernel_size = 1, 1
            changed += 1
    return changed


def _bn_no_bias(n: int) -> nn.BatchNorm1d:
    """BatchNorm1d whose shift stays 0 (the "BN without bias" of the reference code)."""
    bn = nn.BatchNorm1d(n)
    bn.bias.requires_grad_(False)
    return bn


class BoTNet(nn.Module):
    """Trunk (last stride 1) + WaveBlocks + GeM + projector (+ matrix head): module docstring.

    Args:
        backbone: a timm ResNet name. head_dim: the matrix head's size (None: no head, D2LV).
        output: what eval mode returns: ``"head"`` (BoT's 256-d) or ``"wide"`` (the 4c-d feature).
        gem_p: GeM's initial (learnable) p; gem_p_eval: the p of eval mode (None: the learnt one).
        waveblock: WaveBlocks after layer2 and layer3 (training only).
        pretrained: timm hub weights for the trunk (internet).

    Shapes: (b, 3, h, w) -> training: (b, c + 4c [+ head_dim]); eval: (b, head_dim or 4c), unit rows.
    """

    def __init__(self, backbone: str = PUBLISHED_TRUNK, head_dim: int | None = HEAD_DIM, output: str = "head",
                 gem_p: float = 3.0, gem_p_eval: float | None = 3.0, waveblock: bool = True,
                 pretrained: bool = False):
        super().__init__()
        import timm

        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
        if output == "head" and not head_dim:
            raise ValueError("output='head' needs a head_dim")
        self.trunk = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="")
        set_last_stride_one(self.trunk)
        c = self.trunk.num_features
        self.channels, self.wide_dim, self.head_dim, self.output = c, 4 * c, head_dim or 0, output
        self.wave2 = WaveBlock() if waveblock else nn.Identity()
        self.wave3 = WaveBlock() if waveblock else nn.Identity()
        self.gem = GeM(gem_p, learnable=True)
        self.gem_p_eval = gem_p_eval
        self.projector = nn.Sequential(nn.Linear(c, 2 * c), nn.BatchNorm1d(2 * c), nn.LeakyReLU(0.2),
                                       nn.Linear(2 * c, 4 * c), _bn_no_bias(4 * c))
        self.head = nn.Sequential(nn.BatchNorm1d(4 * c), nn.LeakyReLU(0.2), nn.Linear(4 * c, head_dim),
                                  _bn_no_bias(head_dim)) if head_dim else None

    @property
    def dims(self) -> tuple[int, ...]:
        """Widths of the training output's parts: (c, 4c) or (c, 4c, head_dim)."""
        return (self.channels, self.wide_dim) + ((self.head_dim,) if self.head is not None else ())

    @property
    def dim(self) -> int:
        return self.head_dim if self.output == "head" else self.wide_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) -> (b, c, h/16, w/16) with the WaveBlocks after layer2 and layer3 in training."""
        t = self.trunk
        x = t.maxpool(t.act1(t.bn1(t.conv1(x))))
        x = self.wave2(t.layer2(t.layer1(x)))
        x = self.wave3(t.layer3(x))
        return t.layer4(x)

    def pool(self, f: torch.Tensor) -> torch.Tensor:
        if self.training or self.gem_p_eval is None:
            return self.gem(f)
        return gem(f.float(), self.gem_p_eval, self.gem.eps).to(f.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.pool(self.forward_features(x))
        wide = self.projector(g)
        if self.training:
            parts = [g, wide] + ([self.head(wide)] if self.head is not None else [])
            return torch.cat(parts, dim=1)
        y = wide if self.output == "wide" else self.head(wide)
        return F.normalize(y.float(), dim=-1)


class MultiScalePreprocess:
    """PIL image -> the normalised square resizes at every scale of ``cfg.extra["scales"]``, flattened
    and concatenated (one scale: the plain (3, s, s) array). Picklable; derived from the config only."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.scales = tuple(int(s) for s in cfg.extra["scales"])
        self._mean = np.asarray(cfg.mean, np.float32)[:, None, None]
        self._std = np.asarray(cfg.std, np.float32)[:, None, None]

    def output_size(self, w: int, h: int) -> tuple[int, int]:
        """(w, h) of the main scale (``input_size``): what a single-scale caller resizes to."""
        return self.cfg.input_size[1], self.cfg.input_size[0]

    def one(self, img, s: int) -> np.ndarray:
        """The (3, s, s) normalised square resize."""
        img = img.convert("RGB") if img.mode != "RGB" else img
        if img.size != (s, s):
            img = img.resize((s, s), resample=_FILTERS[self.cfg.interpolation])
        x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / 255.0
        return (x - self._mean) / self._std

    def __call__(self, img) -> np.ndarray:
        if len(self.scales) == 1:
            return self.one(img, self.scales[0])
        return np.concatenate([self.one(img, s).ravel() for s in self.scales])


def split_scales(x: torch.Tensor, scales) -> list[torch.Tensor]:
    """(b, sum 3 s^2) flat batch -> [(b, 3, s, s) per scale]; a (b, 3, s, s) batch is returned as is."""
    if x.ndim == 4:
        return [x]
    out, i = [], 0
    for s in scales:
        n = 3 * s * s
        out.append(x[:, i:i + n].reshape(-1, 3, s, s))
        i += n
    if i != x.shape[1]:
        raise ValueError(f"a flat batch of width {x.shape[1]} does not hold the scales {tuple(scales)}")
    return out


class BoTDescriptor(TorchDescriptorModel):
    """A :class:`BoTNet` as a descriptor model: multi-scale average of unit descriptors, L2."""

    @property
    def preprocess(self) -> MultiScalePreprocess:
        return MultiScalePreprocess(self.config)

    def forward_tensor(self, x):
        parts = split_scales(x, self.config.extra["scales"])
        y = sum(super(BoTDescriptor, self).forward_tensor(p) for p in parts)
        return F.normalize(y, dim=-1)


def scaled_scales(size: int) -> list[int]:
    """The published test scales (200, 256, 320, 400 for 256-px training) for another training size."""
    return sorted({int(round(size * s / 256)) for s in PUBLISHED_SCALES})


def bot_config(name: str = "bot_net", output: str = "head", backbone: str = PUBLISHED_TRUNK,
               scales=PUBLISHED_SCALES, paper: str = BOT_PAPER) -> ModelConfig:
    """The config of BoT's (``output="head"``) or D2LV's (``"wide"``) descriptor; ``dim`` is the
    head's 256 or the wide 4c (8192 for ResNet-50: give ``dim=`` with another trunk)."""
    dim = HEAD_DIM if output == "head" else 8192
    cfg = timm_config(name, backbone, dim, 256, gem_p=3.0, head="none", paper=paper)
    extra = {"backbone": backbone, "output": output, "head_dim": HEAD_DIM if output == "head" else None,
             "gem_p": 3.0, "gem_p_eval": 3.0, "waveblock": True, "scales": list(scales), "seed": 0,
             "checkpoint_scope": "net"}
    return replace(cfg, extra=extra)


def d2lv_config() -> ModelConfig:
    return bot_config("d2lv_net", "wide", scales=(256,), paper=D2LV_PAPER)


def build_bot_net(cfg: ModelConfig, pretrained: bool | None = None) -> BoTNet:
    """The :class:`BoTNet` of ``cfg`` (random weights, seeded by ``extra["seed"]``)."""
    e = cfg.extra
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(e.get("seed", 0)))
        net = BoTNet(e["backbone"], e.get("head_dim"), e["output"], e.get("gem_p", 3.0), e.get("gem_p_eval", 3.0), e.get("waveblock", True),
                     pretrained=cfg.weights == "timm" if pretrained is None else pretrained)
    if net.dim != cfg.dim:
        raise WeightsError(f"model {cfg.name!r}: {e['backbone']} with output={e['output']!r} gives {net.dim}-d "
                           f"descriptors, the config says dim={cfg.dim}; pass dim={net.dim}")
    return net


def build_bot_descriptor(cfg: ModelConfig, device: str | None = None) -> BoTDescriptor:
    """Build, load ``weights_path`` (a ``weights.pt`` of ``imsim-lab train bot|d2lv``) and wrap."""
    if not cfg.extra.get("scales"):
        raise WeightsError(f"model {cfg.name!r}: scales must list at least one size")
    net = build_bot_net(cfg)
    path = resolve_weights(cfg)
    if path is not None:
        scope = cfg.extra.get("checkpoint_scope", "net")
        load_state_dict(net.trunk if scope == "trunk" else net, path, strict=True)
    return BoTDescriptor(cfg, net, device)
