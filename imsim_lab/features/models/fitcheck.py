"""Refuse weights that do not fit a timm descriptor's network before anything is extracted or written.

A run of a trained descriptor (``ssquare``, ``ssquare_ensemble``, ``sscd_repro``, ``iscnet``) names its
weights with ``model.weights_path=``; weights of another backbone or embedding size are found here, when
the run's configuration is resolved, by building the network on the meta device (no memory, no
weights) and comparing names and shapes (:func:`~imsim_lab.features.models.weights.state_dict_mismatch`).
"""

from __future__ import annotations

from pathlib import Path

from .weights import WeightsError, check_sha256, state_dict_mismatch


def check_weights_fit(cfg, where: str = "model.weights_path") -> None:
    """Raise :class:`WeightsError` (one line naming the file) unless ``cfg.weights_path`` fits the
    network of ``cfg`` (a :class:`~imsim_lab.features.models.config.ModelConfig` of a timm descriptor,
    :func:`~imsim_lab.features.models.timm_descriptor.timm_config`: ``extra`` has ``backbone`` and
    ``head``). No weights path, or another kind of model (Bag of Tricks' network, an ensemble, ONNX):
    nothing to check here; those check their weights when they load them."""
    import torch

    from .timm_descriptor import TimmDescriptorNet

    e = cfg.extra
    if not cfg.weights_path or "backbone" not in e or "head" not in e:
        return
    path = Path(cfg.weights_path)
    if not path.is_file():
        raise WeightsError(f"{path}: {where}: weights file not found")
    check_sha256(path, cfg.weights_sha256)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as ex:  # noqa: BLE001 - any failure means the file cannot be used
        raise WeightsError(f"{path}: {where}: not a loadable weights file ({type(ex).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: {where}: holds no state_dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    with torch.device("meta"):
        net = TimmDescriptorNet(e["backbone"], cfg.dim, e.get("gem_p", 3.0), e.get("gem_learnable", False),
                                e.get("head", "linear"), timm_kwargs=e.get("timm_kwargs"))
    own = (net.backbone if e.get("checkpoint_scope") == "backbone" else net).state_dict()
    shapes, missing, unexpected = state_dict_mismatch(state, own)
    if shapes or missing or unexpected:
        why = (f"e.g. {shapes[0][0]} {shapes[0][1]} in the file, {shapes[0][2]} in the model" if shapes else
               f"{len(missing)} missing and {len(unexpected)} unexpected tensors")
        raise WeightsError(f"{path}: {where}: does not fit {e['backbone']} with a {cfg.dim}-d embedding ({why}); "
                           f"give the backbone and dim of the run that wrote it")
