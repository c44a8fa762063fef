"""imgFp's global descriptor (``full`` profile): EsViT Swin-B, the last 4 blocks pooled, Linear -> 256, L2.

imgFp (Sun et al., "A Global and Local Dual Retrieval Solution", arXiv 2112.02373; sun-xl/ISC2021
``global_fea/feature_extract/predict_FB_model.py``) embeds every image with a Swin-B of window 14
trained by EsViT's self-supervision (Li et al., "Efficient Self-supervised Vision Transformers for
Representation Learning", arXiv 2106.09785) and then fine-tuned by the team on the challenge data:
Resize(224, 224) bicubic, ImageNet mean and std; the feature is the concatenation of the token
averages of the **last 4 transformer blocks** (with Swin-B's depths 2-2-18-2: the last two blocks of
stage 3, 512 channels each, and the two of stage 4, 1024 each, after the final LayerNorm: 3072
values), then Linear(3072 -> 256) and L2 normalisation.

The trunk is timm's ``swin_base_patch4_window7_224`` built with ``window_size=14`` (timm 1.x
offers Swin-B only as ``swin_base_patch4_window7_224`` and ``swin_base_patch4_window12_384``; its
``window_size`` argument gives the published window 14 at 224 pixels, and timm clamps the window of
the last stage, whose map is 7 x 7, to 7, as the original Swin code does).

**Weights.** The team's fine-tuned checkpoint
(``EsViT_SwinB_finetune_bs8_lr0.0001_adjustlr_0_margin1.0_dataFB_epoch200``) is not published.
``weights_path`` (or ``weights="url"`` with ``weights_url``) accepts, with ``weights_sha256`` checked
before a byte is read and ``torch.load(weights_only=True)``:

* ``weights_layout="net"`` (default): a state dict of this net (``backbone.*`` timm keys and the
  head ``fc.*``), e.g. one saved by ``torch.save(model.module.state_dict())``;
* ``weights_layout="esvit"``: EsViT's own released Swin-B checkpoint (a ``teacher`` / ``student``
  dict in the original Swin layout, ``module.`` / ``backbone.`` prefixes), mapped explicitly by
  :func:`esvit_to_timm`; it holds no 256-d head, which then keeps its seeded random initialisation
  (a run records it as not the published descriptor).

A missing file, a wrong checksum or tensors of another shape raise
:class:`~imsim_lab.features.models.weights.WeightsError` naming the file (the CLI: one line, exit 2).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .base import TorchDescriptorModel
from .config import ModelConfig
from .layers import L2Norm
from .weights import WeightsError, load_state_dict, resolve_weights, state_dict_mismatch

ESVIT_PAPER = ("Sun et al., A Global and Local Dual Retrieval Solution, arXiv 2112.02373 (global branch); "
               "Li et al., EsViT, arXiv 2106.09785")
#: timm's Swin-B entry and the published window
TRUNK, WINDOW = "swin_base_patch4_window7_224", 14
LAYOUTS = ("net", "esvit")


class EsViTDescriptorNet(nn.Module):
    """Swin trunk -> token means of the last ``n_last_blocks`` blocks, concatenated -> Linear -> L2.

    Args:
        backbone: a timm Swin name; ``window_size``: its window; ``timm_kwargs``: more arguments of
            ``timm.create_model`` (tests build a narrow Swin with ``embed_dim``, ``depths``, ``num_heads``).
        dim: descriptor dimension; n_last_blocks: blocks pooled (imgFp: 4).

    Shapes: (b, 3, h, w) -> (b, dim), unit rows.
    """

    def __init__(self, backbone: str = TRUNK, dim: int = 256, window_size: int = WINDOW, n_last_blocks: int = 4,
                 timm_kwargs: dict | None = None):
        super().__init__()
        import timm

        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, window_size=window_size,
                                          **(timm_kwargs or {}))
        widths = [int(blk.norm1.normalized_shape[0]) for layer in self.backbone.layers for blk in layer.blocks]
        if not 1 <= n_last_blocks <= len(widths):
            raise ValueError(f"n_last_blocks must be in 1..{len(widths)}, not {n_last_blocks}")
        self.n_last_blocks = int(n_last_blocks)
        self.feature_dim = sum(widths[-self.n_last_blocks:])
        self.fc = nn.Linear(self.feature_dim, dim)
        self.dim = dim
        self.l2 = L2Norm()

    def block_features(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) -> (b, feature_dim): the token mean of each of the last blocks' outputs (those
        of the last stage after the trunk's final LayerNorm, as EsViT's linear evaluation does)."""
        b = self.backbone
        x = b.patch_embed(x)
        if getattr(b, "absolute_pos_embed", None) is not None:
            x = x + b.absolute_pos_embed
        outs = []
        total = sum(len(layer.blocks) for layer in b.layers)
        seen = 0
        last = len(b.layers) - 1
        for i, layer in enumerate(b.layers):
            x = layer.downsample(x)
            for blk in layer.blocks:
                x = blk(x)
                seen += 1
                if seen > total - self.n_last_blocks:
                    y = b.norm(x) if i == last else x
                    outs.append(y.mean((1, 2)))  # timm's blocks are NHWC
        return torch.cat(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.fc(self.block_features(x)))


def esvit_to_timm(sd: dict) -> dict:
    """EsViT's released Swin checkpoint -> the ``backbone.*`` keys of :class:`EsViTDescriptorNet`.

    EsViT saves the original Swin layout (Liu et al., microsoft/Swin-Transformer) inside a DINO-style
    checkpoint: the ``teacher`` network (what EsViT evaluates) or ``student``, prefixed ``module.``
    and ``backbone.``, with projection heads (``head.*``, ``head_dense.*``). The mapping:

    * the teacher's weights (else the student's, else the dict itself); prefixes removed;
    * heads, ``relative_position_index`` and ``attn_mask`` dropped (buffers timm rebuilds);
    * ``layers.i.downsample.*`` -> ``layers.(i+1).downsample.*`` (the original Swin merges patches at
      the end of a stage, timm at the start of the next one; the reduction's channel order is the same);
    * everything else keeps its name under ``backbone.``.
    """
    for key in ("teacher", "student", "state_dict", "model"):
        if isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    out = {}
    for k, v in sd.items():
        for p in ("module.", "backbone."):
            if k.startswith(p):
                k = k[len(p):]
        if k.startswith(("head.", "head_dense.", "fc.")) or k.endswith(("relative_position_index", "attn_mask")):
            continue
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        out["backbone." + k] = v
    return out


def load_esvit_weights(net: EsViTDescriptorNet, path: str | Path) -> None:
    """Load EsViT's released checkpoint at ``path`` into the trunk of ``net`` (:func:`esvit_to_timm`):
    every trunk tensor must be present with its shape; the head is left as it is."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot be used
        raise WeightsError(f"{path}: not a loadable weights file ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected an EsViT checkpoint (a dict), found {type(raw).__name__}")
    sd = esvit_to_timm(raw)
    own = {k: v for k, v in net.state_dict().items() if k.startswith("backbone.")
           and not k.endswith(("relative_position_index", "attn_mask"))}
    shapes, missing, unexpected = state_dict_mismatch(sd, own)
    if shapes:
        bad = [f"{k}: file {a} vs model {b}" for k, a, b in shapes]
        raise WeightsError(f"{path}: shape mismatch for {len(bad)} tensors of the EsViT layout, e.g. "
                           f"{'; '.join(bad[:3])}")
    if missing or unexpected:
        raise WeightsError(f"{path}: not an EsViT Swin checkpoint of this shape: {len(missing)} missing trunk keys "
                           f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
    net.load_state_dict(sd, strict=False)


def esvit_config() -> ModelConfig:
    """``esvit_swinb``: 224 x 224 square bicubic resize, ImageNet mean / std, 256-d."""
    return ModelConfig(name="esvit_swinb", dim=256, input_size=(224, 224), resize="square", interpolation="bicubic",
                       paper=ESVIT_PAPER,
                       extra={"backbone": TRUNK, "window_size": WINDOW, "n_last_blocks": 4, "weights_layout": "net",
                              "timm_kwargs": {}, "seed": 0})


def build_esvit(cfg: ModelConfig, device: str | None = None) -> TorchDescriptorModel:
    """Build the net of ``cfg`` (seeded random weights), load its weights (see the module docstring), wrap."""
    e = cfg.extra
    layout = e.get("weights_layout", "net")
    if layout not in LAYOUTS:
        raise WeightsError(f"model {cfg.name!r}: weights_layout must be one of {LAYOUTS}, not {layout!r}")
    if cfg.weights == "timm":
        raise WeightsError(f"model {cfg.name!r}: timm has no EsViT weights; pass weights_path= a checkpoint")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(e.get("seed", 0)))
        net = EsViTDescriptorNet(e["backbone"], cfg.dim, int(e["window_size"]), int(e["n_last_blocks"]),
                                 e.get("timm_kwargs"))
    path = resolve_weights(cfg)
    if path is not None:
        if layout == "esvit":
            load_esvit_weights(net, path)
        else:
            load_state_dict(net, path, strict=True)
    return TorchDescriptorModel(cfg, net, device)
