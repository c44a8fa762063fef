"""The candidate descriptor of SeungKee Jeon's matching-track solution (arXiv 2111.09113; trained by
``imsim-lab train ntxent``, :mod:`imsim_lab.train.ntxent`): a timm ViT (published
``vit_large_patch16_384``), its class token, Linear(d -> 256, no bias), L2, on grayscale square inputs.

``timm_kwargs`` (``{"img_size": 64, "depth": 2}``) makes the small network of the ``cpu`` profile.
"""

from __future__ import annotations

from dataclasses import replace

from .config import ModelConfig

NTXENT_PAPER = "Jeon, 2nd Place Solution to Facebook AI Image Similarity Challenge: Matching Track, arXiv 2111.09113"


def ntxent_config() -> ModelConfig:
    from .timm_descriptor import timm_config

    cfg = timm_config("ntxent_vit", "vit_large_patch16_384", 256, 384, head="linear_nobias", paper=NTXENT_PAPER)
    return replace(cfg, grayscale=True, extra={**cfg.extra, "timm_kwargs": {}})


def _layout(model: dict) -> str:
    size = model.get("input_size")
    side = size[0] if isinstance(size, (list, tuple)) else size
    return f"{side} px {'grayscale' if model.get('grayscale') else 'colour'}"


def check_layout(cfg: ModelConfig) -> None:
    """Refuse weights trained on another input layout (grayscale or colour, input size) than ``cfg``.

    The state_dict of a descriptor does not say what input it saw; the ``train_config.json`` that
    ``imsim-lab train ntxent`` writes next to ``weights.pt`` does (``run.model``). Weights without one
    are not checked. Raises :class:`~imsim_lab.features.models.weights.WeightsError` naming the file.
    """
    import json
    from pathlib import Path

    from .weights import WeightsError

    if not cfg.weights_path:
        return
    info = Path(cfg.weights_path).parent / "train_config.json"
    if not info.is_file():
        return
    try:
        trained = json.loads(info.read_text())["run"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a train ntxent folder: nothing recorded to compare with
    want = cfg.to_dict()
    if bool(trained.get("grayscale")) != bool(want["grayscale"]) or list(trained.get("input_size", [])) != list(
            want["input_size"]):
        raise WeightsError(f"{cfg.weights_path}: trained on {_layout(trained)} input ({info.name}), the model "
                           f"asks {_layout(want)} (set model.grayscale= and model.input_size= as trained)")


def build_ntxent(cfg: ModelConfig, device: str | None = None):
    """:func:`~imsim_lab.features.models.timm_descriptor.build_timm_descriptor` after :func:`check_layout`."""
    from .timm_descriptor import build_timm_descriptor

    check_layout(cfg)
    return build_timm_descriptor(cfg, device)
