"""Descriptor models: one registry, ``create_model(name, **overrides)``.

Every entry is a factory of 3-5 lines that builds a frozen
:class:`~imsim_lab.features.models.config.ModelConfig`, applies the overrides (``dim=``, ``input_size=``,
``weights_path=``, ``weights="timm"``, ``backbone=``...) and returns a
:class:`~imsim_lab.features.models.base.DescriptorModel`::

    from imsim_lab.features.models import create_model, list_models
    model = create_model("resnet18_gem", input_size=128, device="cpu")
    x = model.preprocess(pil_image)            # derived from model.config only
    xq = model.embed([x])                      # (1, 256) float32, unit rows

Taught in ``notebooks/03_descriptor_1st_lyakaap`` (the ISCNet model); every model and its
paper: ``docs/methods.md``.
"""

from __future__ import annotations

from ...registry import Registry
from .base import DescriptorModel, TorchDescriptorModel, resolve_device
from .config import ModelConfig, Preprocess
from .weights import WeightsError, fetch_weights, load_state_dict

MODELS: Registry = Registry("model")


def create_model(name: str, device: str | None = None, **overrides) -> DescriptorModel:
    """Build the registered model ``name`` with config ``overrides`` on ``device`` (None: CUDA if present)."""
    return MODELS.create(name, device=device, **overrides)


def get_config(name: str, **overrides) -> ModelConfig:
    """The resolved config of ``name`` without building the model (no weights loaded)."""
    return MODELS.get(name).config(**overrides)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def _entry(name: str, make_config, build):
    """Register ``name``: ``make_config(**overrides) -> ModelConfig``, ``build(cfg, device)``."""

    def factory(device: str | None = None, **overrides) -> DescriptorModel:
        return build(factory.config(**overrides), device)

    def config(**overrides) -> ModelConfig:
        cfg = make_config()
        return cfg.with_overrides(**overrides) if overrides else cfg

    factory.config = config
    factory.__name__ = name
    factory.__doc__ = f"Model {name!r}; see :func:`create_model`."
    MODELS.add(name, factory)


def _register_all() -> None:
    from .classical import GistModel, PdqModel, gist_config, pdq_config
    from .multigrain import multigrain_config
    from .ssquare import sscd_repro_config, ssquare_config
    from .sscd import SSCDOnnx, SSCDTorchScript, onnx_config, torchscript_config
    from .timm_descriptor import build_timm_descriptor, timm_config

    # descriptors on timm trunks (random weights unless weights="timm" or weights_path=)
    _entry("resnet18_gem", lambda: timm_config("resnet18_gem", "resnet18", 256, 224), build_timm_descriptor)
    _entry("resnet50_gem", lambda: timm_config("resnet50_gem", "resnet50", 512, 224), build_timm_descriptor)
    _entry("efficientnet_b0_gem", lambda: timm_config("efficientnet_b0_gem", "efficientnet_b0", 256, 224),
           build_timm_descriptor)
    _entry("mobilenetv3_gem", lambda: timm_config("mobilenetv3_gem", "mobilenetv3_large_100", 256, 224),
           build_timm_descriptor)
    _entry("isc_effnetv2m", lambda: timm_config(
        "isc_effnetv2m", "tf_efficientnetv2_m.in21k_ft_in1k", 256, 512, gem_p=1.0, head="linear_bn",
        paper="Yokoo, Contrastive Learning with Large Memory Bank and NES, arXiv 2112.04323"),
        build_timm_descriptor)
    _entry("multigrain_resnet50", multigrain_config, build_timm_descriptor)
    _entry("ssquare_net", ssquare_config, build_timm_descriptor)  # trained by `imsim-lab train ssquare`
    _entry("sscd_repro", sscd_repro_config, build_timm_descriptor)  # trained by `imsim-lab train sscd`
    # VisionForce: Bag of Tricks (256-d head) and D2LV (wide feature); trained by `imsim-lab train bot|d2lv`
    from .bot import bot_config, build_bot_descriptor, d2lv_config

    _entry("bot_net", bot_config, build_bot_descriptor)
    _entry("d2lv_net", d2lv_config, build_bot_descriptor)
    from .ntxent import build_ntxent, ntxent_config

    _entry("ntxent_vit", ntxent_config, build_ntxent)  # trained by `imsim-lab train ntxent`
    # imgFp's global branch (full profile): EsViT Swin-B, window 14; weights from a path (not published)
    from .esvit import build_esvit, esvit_config

    _entry("esvit_swinb", esvit_config, build_esvit)
    # SSCD
    _entry("sscd_disc_mixup_onnx", onnx_config, SSCDOnnx)
    _entry("sscd_distilled_onnx", lambda: onnx_config("sscd_distilled_onnx", "sscd_distilled.onnx"), SSCDOnnx)
    for ts in ("sscd_disc_mixup", "sscd_disc_blur", "sscd_disc_advanced", "sscd_imagenet_mixup"):
        _entry(f"{ts}_torchscript", lambda ts=ts: torchscript_config(ts), SSCDTorchScript)
    _entry("sscd_disc_large_torchscript", lambda: torchscript_config("sscd_disc_large", 1024), SSCDTorchScript)
    # classical
    _entry("gist", gist_config, GistModel)
    _entry("pdq", pdq_config, PdqModel)
    # S-square's ensemble of trained ssquare_net members (its config resolves and checks the members)
    from .ensemble import register as register_ensemble

    register_ensemble(MODELS)


_register_all()

__all__ = ["MODELS", "DescriptorModel", "ModelConfig", "Preprocess", "TorchDescriptorModel", "WeightsError",
           "create_model", "fetch_weights", "get_config", "list_models", "load_state_dict", "resolve_device"]
