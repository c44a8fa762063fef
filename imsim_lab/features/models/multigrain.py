"""A MultiGrain-like descriptor: ResNet-50 trunk, GeM pooling p = 3, 2048-d, L2.

MultiGrain (Berman et al., arXiv 1902.05509) is the ISC2021 baseline of the DISC21 paper
(1500-d after PCA whitening; µAP 0.154 -> 0.365 with score normalisation on the 25k dev queries,
as the facebookresearch/isc2021 docs report; ``docs/methods.md``, "Baselines of the DISC21
paper"). The trunk here is timm's ``resnet50``, whose parameter names are torchvision's, so a
MultiGrain or torchvision checkpoint loads with ``checkpoint_scope="backbone"``. Images are
resized so that the long side is 512 (aspect kept). Weights are optional: without them the
model has random weights, which is only useful to test the pipeline (the run's config.json says so).
"""

from __future__ import annotations

from .config import ModelConfig
from .timm_descriptor import timm_config

MULTIGRAIN_URL = "https://dl.fbaipublicfiles.com/multigrain/multigrain_models/joint_3B_0.5.pth"


def multigrain_config(name: str = "multigrain_resnet50", long_side: int = 512, **kw) -> ModelConfig:
    cfg = timm_config(name, "resnet50", dim=2048, size=224, gem_p=3.0, head="none",
                      paper="Berman et al., MultiGrain, arXiv 1902.05509", interpolation="bilinear")
    cfg = cfg.with_overrides(resize="long_side", long_side=long_side, checkpoint_scope="backbone")
    return cfg.with_overrides(**kw) if kw else cfg
