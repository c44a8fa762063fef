"""Training shared by every method: the trainer, losses, two-view augmentation, training data, recipes.

    from imsim_lab.train import TrainConfig, train, XBMContrastiveLoss, TwoViewImages, STAGES

* :mod:`.trainer`: :func:`train` (AMP, gradient accumulation, ``torchrun`` DDP with gloo or
  nccl through :mod:`imsim_lab.distributed`, atomic checkpoints and exact resume), :class:`TrainConfig`.
* :mod:`.losses`: :func:`contrastive_loss` and :class:`XBMContrastiveLoss` (cross-batch memory).
* :mod:`.views`: the two views (moderate, hard) and their progressive schedule (:data:`STAGES`,
  :data:`LYAKAAP_SCHEDULE`).
* :mod:`.data`: :class:`TwoViewImages`, :class:`PairImages`, :class:`EpochBatches`.
* :mod:`.lyakaap`: the descriptor-track winner's recipe on a benchmark folder.
* :mod:`.recipes`: the registry of the recipes that ``imsim-lab train RECIPE`` runs.

The names above are imported on first use (PEP 562): ``import imsim_lab.train.recipes``, which
every ``imsim-lab`` command does to build its parser, does not import torch.

Multi-GPU: ``torchrun --nproc_per_node N -m imsim_lab.train lyakaap --bench DIR --out DIR``.
Taught in ``notebooks/03_descriptor_1st_lyakaap``.
"""

from __future__ import annotations

import importlib

#: exported name -> submodule that defines it
_EXPORTS = {
    **dict.fromkeys(["NEGATIVE_OFFSET", "EpochBatches", "PairImages", "TrainDataError", "TwoViewImages", "collate",
                     "load_rgb"], "data"),
    **dict.fromkeys(["XBMContrastiveLoss", "contrastive_loss", "pair_distances"], "losses"),
    **dict.fromkeys(["TrainConfig", "TrainError", "TrainResult", "load_checkpoint", "lr_at", "train"], "trainer"),
    **dict.fromkeys(["LYAKAAP_SCHEDULE", "STAGES", "ScheduleStep", "ViewStage", "hard_view", "moderate_view",
                     "view_rng"], "views"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
