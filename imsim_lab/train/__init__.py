"""Training shared by every method: the trainer, losses, two-view augmentation, training data.

    from imsim_lab.train import TrainConfig, train, XBMContrastiveLoss, TwoViewImages, STAGES

* :mod:`.trainer`: :func:`train` (AMP, gradient accumulation, ``torchrun`` DDP with gloo or
  nccl, atomic checkpoints and exact resume), :class:`TrainConfig`.
* :mod:`.losses`: :func:`contrastive_loss` and :class:`XBMContrastiveLoss` (cross-batch memory).
* :mod:`.views`: the two views (moderate, hard) and their progressive schedule (:data:`STAGES`,
  :data:`LYAKAAP_SCHEDULE`).
* :mod:`.data`: :class:`TwoViewImages`, :class:`PairImages`, :class:`EpochBatches`.
* :mod:`.lyakaap`: the descriptor-track winner's recipe on a benchmark folder.

Multi-GPU: ``torchrun --nproc_per_node N -m imsim_lab.train lyakaap --bench DIR --out DIR``.
Taught in ``notebooks/03_descriptor_1st_lyakaap``.
"""

from .data import NEGATIVE_OFFSET, EpochBatches, PairImages, TrainDataError, TwoViewImages, collate, load_rgb
from .losses import XBMContrastiveLoss, contrastive_loss, pair_distances
from .trainer import TrainConfig, TrainError, TrainResult, load_checkpoint, lr_at, train
from .views import LYAKAAP_SCHEDULE, STAGES, ScheduleStep, ViewStage, hard_view, moderate_view, view_rng

__all__ = ["EpochBatches", "LYAKAAP_SCHEDULE", "NEGATIVE_OFFSET", "PairImages", "STAGES", "ScheduleStep",
           "TrainConfig", "TrainDataError", "TrainError", "TrainResult", "TwoViewImages", "ViewStage",
           "XBMContrastiveLoss", "collate", "contrastive_loss", "hard_view",
           "load_checkpoint", "load_rgb", "lr_at", "moderate_view", "pair_distances", "train", "view_rng"]
