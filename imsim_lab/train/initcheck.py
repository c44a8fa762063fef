"""Refuse a weights file that does not fit the network a recipe is about to train.

Used by ``imsim-lab train ssquare`` and ``train sscd`` for ``--init`` (weights of another
architecture or embedding size are one line naming the file, before anything is written).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ImsimError


def read_state(path: str | Path, what: str = "--init", expected: str = "") -> dict:
    """A ``state_dict`` of tensors from ``path`` (a ``weights.pt`` or a checkpoint's ``model``),
    memory-mapped where the file's format allows it.

    Args:
        what: how the file is named in messages. expected: what the file should have been, added to
            the message when it holds no state_dict.

    Raises:
        ImsimError: missing, unreadable, or not a state_dict of tensors.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ImsimError(f"{path}: {what} weights file not found")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files of the legacy format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        why = ("not a file written by torch.save, or one holding more than tensors"
               if isinstance(e, pickle.UnpicklingError) else (str(e).strip().splitlines() or [""])[0][:160])
        raise ImsimError(f"{path}: {what} is not a readable weights file ({type(e).__name__}: {why})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImsimError(f"{path}: {what} holds no state_dict of tensors" + (f" ({expected})" if expected else ""))
    return state


def check_fits(path: str | Path, cfg, what: str = "--init") -> None:
    """Raise unless the weights at ``path`` fit the timm descriptor of ``cfg`` (a ModelConfig).

    The network is built on the meta device (no memory, no weights) and compared by names and shapes.
    """
    import torch

    from ..features.models.timm_descriptor import TimmDescriptorNet
    from ..features.models.weights import state_dict_mismatch

    state = read_state(path, what)
    e = cfg.extra
    with torch.device("meta"):
        net = TimmDescriptorNet(e["backbone"], cfg.dim, e["gem_p"], e["gem_learnable"], e["head"],
                                timm_kwargs=e.get("timm_kwargs"))
    shapes, missing, unexpected = state_dict_mismatch(state, net.state_dict())
    if shapes or missing or unexpected:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} tensors of other shapes, e.g. " +
                         "; ".join(f"{k} {a} (model {b})" for k, a, b in shapes[:2]))
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {', '.join(missing[:2])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:2])}")
        raise ImsimError(f"{path}: {what} does not fit {e['backbone']} with a {cfg.dim}-d embedding: "
                         f"{'; '.join(parts)}; give the --backbone and --dim of the run that wrote it")
