"""lyakaap's recipe (descriptor track 1st, arXiv 2112.04323) on any benchmark folder.

* :func:`iscnet` builds ISCNet: a timm backbone + GeM(p=1) + Linear(C->256, no bias) + BN + L2,
  i.e. the registered model ``isc_effnetv2m`` with another backbone or resolution if asked;
* :func:`train_stage` trains one stage of the progressive schedule
  (:data:`~imsim_lab.train.views.LYAKAAP_SCHEDULE`) on the benchmark's training images with the
  two views of :mod:`~imsim_lab.train.views` and :class:`~imsim_lab.train.losses.XBMContrastiveLoss`,
  optionally with reference images as extra negatives (v98);
* :func:`finetune_pairs` is the last step (v107): ground-truth (query, reference) pairs, margin
  1.1, memory 1k, no augmentation.

Each returns the :class:`~imsim_lab.train.trainer.TrainResult` of a run folder whose ``weights.pt``
loads with ``iscnet(..., weights_path=...)``. Multi-GPU: ``torchrun --nproc_per_node N -m
imsim_lab.train lyakaap ...`` (see ``python -m imsim_lab.train --help``).
Taught in ``notebooks/03_descriptor_1st_lyakaap``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import PairImages, TwoViewImages
from .losses import XBMContrastiveLoss
from .trainer import TrainConfig, TrainError, TrainResult, train
from .views import STAGES, ViewStage

PUBLISHED_BACKBONE = "tf_efficientnetv2_m.in21k_ft_in1k"


@dataclass(frozen=True)
class StageConfig:
    """One stage of lyakaap's self-supervised training.

    Attributes:
        stage: a :data:`STAGES` name (view magnitudes); ``size`` overrides its resolution.
        backbone: timm name (published: ``tf_efficientnetv2_m.in21k_ft_in1k``, ImageNet-21k init).
        pretrained: ask timm for the backbone's hub weights (needs internet; off in tests).
        dim: descriptor size; memory_size, pos_margin, neg_margin: the loss.
        reference_negatives: reference images per sample as extra negatives (v98: 2).
        train: the trainer's settings (epochs, lr, batch...).
    """

    stage: str = "v83"
    size: int | None = None
    backbone: str = PUBLISHED_BACKBONE
    pretrained: bool = False
    dim: int = 256
    memory_size: int = 20_000
    pos_margin: float = 0.0
    neg_margin: float = 1.0
    reference_negatives: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def view_stage(self) -> ViewStage:
        st = STAGES.get(self.stage)
        return st.scaled(size=self.size) if self.size else st

    def to_dict(self) -> dict:
        return asdict(self)


def iscnet(backbone: str = PUBLISHED_BACKBONE, size: int = 512, dim: int = 256, device: str | None = None,
           weights_path: str | Path | None = None, pretrained: bool = False):
    """ISCNet as a :class:`~imsim_lab.features.models.base.TorchDescriptorModel` (``.module`` is the
    ``nn.Module`` to train; ``.config`` gives the preprocessing)."""
    from ..features.models import create_model

    kw = {"backbone": backbone, "input_size": size, "dim": dim}
    if weights_path is not None:
        kw["weights_path"] = str(weights_path)
    elif pretrained:
        kw["weights"] = "timm"
    return create_model("isc_effnetv2m", device=device, **kw)


def model_args(backbone: str, size: int, dim: int = 256, weights_path: str | Path | None = None) -> dict:
    """The ``model_args`` of a :class:`~imsim_lab.methods.MethodSpec` running ISCNet weights.

    The weights' sha256 is part of them: a run folder made with other weights at the same path
    is refused instead of silently reused (and the checksum is verified before loading).
    """
    from ..features.models.weights import sha256_file

    d = {"backbone": backbone, "input_size": size, "dim": dim}
    if weights_path is not None:
        d["weights_path"] = str(weights_path)
        d["weights_sha256"] = sha256_file(weights_path)
    return d


def check_memory(out: str | Path, memory_size: int, batch_size: int, views: int) -> None:
    """Refuse, before any step, a cross-batch memory that cannot hold one batch of embeddings.

    Every loss call writes the whole (global) batch into the memory first
    (:meth:`~imsim_lab.train.losses.XBMContrastiveLoss.enqueue`): ``batch_size`` images per
    process x the processes x ``views`` embeddings per image (2 views, plus the extra negatives).
    """
    from ..distributed import dist_info

    world = dist_info()[1]
    n = batch_size * world * views
    if memory_size < n:
        procs = f" x {world} processes" if world > 1 else ""
        raise TrainError(f"{out}: a memory of {memory_size} embeddings cannot hold one batch of {n} "
                         f"({batch_size} images{procs} x {views} embeddings each); give memory_size >= {n}")


def train_stage(bench, out: str | Path, cfg: StageConfig, init: str | Path | None = None,
                on_step: Callable[[dict], None] | None = None, training_ids: Sequence[str] | None = None
                ) -> TrainResult:
    """Train one stage on ``bench`` (a :class:`~imsim_lab.data.benchmark.Benchmark`) into ``out``.

    Args:
        init: ``weights.pt`` of the previous stage (None: backbone init of ``cfg``).
        training_ids: a subset of the training images (default all).
    """
    st = cfg.view_stage()
    model = iscnet(cfg.backbone, st.size, cfg.dim, device="cpu", pretrained=cfg.pretrained and init is None)
    ids = list(training_ids) if training_ids is not None else [str(i) for i in bench.training_ids]
    negs = [bench.image_path(r) for r in bench.reference_ids] if cfg.reference_negatives else []
    ds = TwoViewImages([bench.image_path(i) for i in ids], st, model.config.mean, model.config.std,
                       seed=cfg.train.seed, ids=ids, negatives=negs, n_negatives=cfg.reference_negatives)
    check_memory(out, cfg.memory_size, cfg.train.batch_size, 2 + min(ds.n_negatives, len(negs)))
    loss = XBMContrastiveLoss(cfg.dim, cfg.memory_size, cfg.pos_margin, cfg.neg_margin)
    info = {"recipe": "lyakaap", "stage": cfg.to_dict(), "view_stage": asdict(st), "benchmark": str(bench.root),
            "init": str(init) if init else None}
    return train(model.module, loss, ds, cfg.train, out, init=init, on_step=on_step, run_info=info)


def finetune_pairs(bench, out: str | Path, init: str | Path, query_ids: Sequence[str], backbone: str,
                   size: int, train_cfg: TrainConfig, dim: int = 256, memory_size: int = 1000,
                   neg_margin: float = 1.1, n_negatives: int = 2, on_step=None) -> TrainResult:
    """Fine-tune on the ground-truth pairs of ``query_ids`` (lyakaap v107: margin 1.1, memory 1k).

    Negatives: ``n_negatives`` random references per sample that are none of these queries' matches.
    Evaluate afterwards on other queries only: these pairs are training data now.
    """
    q = bench.queries.set_index("query_id")
    pairs = [(qid, q.loc[qid, "reference_id"]) for qid in query_ids if bool(q.loc[qid, "has_match"])]
    used = {r for _, r in pairs}
    negs = [bench.image_path(r) for r in bench.reference_ids if r not in used]
    model = iscnet(backbone, size, dim, device="cpu")
    ds = PairImages([bench.image_path(a) for a, _ in pairs], [bench.image_path(b) for _, b in pairs], size,
                    model.config.mean, model.config.std, seed=train_cfg.seed, negatives=negs,
                    n_negatives=n_negatives)
    check_memory(out, memory_size, train_cfg.batch_size, 2 + min(ds.n_negatives, len(negs)))
    loss = XBMContrastiveLoss(dim, memory_size, 0.0, neg_margin)
    info = {"recipe": "lyakaap-finetune", "pairs": len(pairs), "benchmark": str(bench.root), "init": str(init),
            "backbone": backbone, "size": size, "memory_size": memory_size, "neg_margin": neg_margin}
    return train(model.module, loss, ds, train_cfg, out, init=init, on_step=on_step, run_info=info)


def split_queries(query_ids: Sequence[str], fraction: float = 0.5, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split queries into (fine-tune, held-out) parts reproducibly."""
    ids = np.asarray(sorted(str(q) for q in query_ids))
    perm = np.random.default_rng(seed).permutation(len(ids))
    k = int(round(len(ids) * fraction))
    return sorted(ids[perm[:k]].tolist()), sorted(ids[perm[k:]].tolist())


def torchrun_command(bench_root: str | Path, out: str | Path, step, nproc: int, backbone: str = PUBLISHED_BACKBONE,
                     init: str | Path | None = None, pretrained: bool = True, per_gpu_batch: int | None = None,
                     workers: int = 8) -> list[str]:
    """The ``torchrun`` command line of one :class:`~imsim_lab.train.views.ScheduleStep` on ``nproc`` GPUs
    (global batch = ``step.batch_size``, split over the processes)."""
    import sys

    batch = per_gpu_batch or max(1, step.batch_size // nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "imsim_lab.train", "lyakaap", "--bench", str(bench_root), "--out", str(out),
           "--stage", step.stage, "--backbone", backbone, "--epochs", str(step.epochs), "--lr", str(step.lr),
           "--lr-schedule", step.lr_schedule, "--batch-size", str(batch), "--memory-size", str(step.memory_size),
           "--reference-negatives", str(step.reference_negatives), "--workers", str(workers)]
    if init:
        cmd += ["--init", str(init)]
    elif pretrained:
        cmd += ["--pretrained"]
    return cmd
