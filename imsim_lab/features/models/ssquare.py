"""The configurations of the descriptors this lab trains itself: S-square's net and SSCD's.

* ``ssquare_net``: S-square (Papadakis & Addicam, arXiv 2112.03415; ``docs/methods.md``,
  "S-square"): a timm trunk (published: EfficientNetV2, ECA-NFNet, EfficientNet-B4 at 160-512
  px), GeM with a trainable p from 3, a linear neck without bias to the embedding (256-512), L2.
  The ArcFace class matrix is training state, not part of the descriptor.
* ``sscd_repro``: SSCD (Pizzi et al., arXiv 2202.10261; ``docs/methods.md``, "SSCD"): ResNet-50,
  GeM p = 3, Linear(2048 -> 512), L2; evaluated with the short side resized to 288, aspect kept.

Both are built by :func:`~imsim_lab.features.models.timm_descriptor.build_timm_descriptor`, random
weights unless ``weights_path=`` names what ``imsim-lab train ssquare`` / ``train sscd`` wrote.
``timm_kwargs`` (e.g. ``{"dynamic_img_size": true}``) lets a ViT trunk run at a small resolution.
"""

from __future__ import annotations

from dataclasses import replace

from .config import ModelConfig
from .timm_descriptor import timm_config

SSQUARE_PAPER = ("Papadakis & Addicam, Producing augmentation-invariant embeddings from real-life imagery, "
                 "arXiv 2112.03415")
SSCD_PAPER = "Pizzi et al., A Self-Supervised Descriptor for Image Copy Detection, CVPR 2022, arXiv 2202.10261"
#: the published trunks (the ensemble of eight) and a CPU-sized one
SSQUARE_BACKBONE, SSCD_BACKBONE = "eca_nfnet_l1", "resnet50"


def ssquare_config() -> ModelConfig:
    cfg = timm_config("ssquare_net", SSQUARE_BACKBONE, 384, 160, gem_p=3.0, head="linear_nobias", paper=SSQUARE_PAPER)
    return replace(cfg, extra={**cfg.extra, "gem_learnable": True, "timm_kwargs": {}})


def sscd_repro_config() -> ModelConfig:
    cfg = timm_config("sscd_repro", SSCD_BACKBONE, 512, 224, gem_p=3.0, head="linear", paper=SSCD_PAPER)
    return replace(cfg, resize="short_side", short_side=288, extra={**cfg.extra, "timm_kwargs": {}})
