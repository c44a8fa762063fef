"""The trainer shared by every method: AMP, gradient accumulation, DDP, checkpoints and exact resume.

    from imsim_lab.train import TrainConfig, train
    result = train(net, criterion, dataset, TrainConfig(epochs=2, batch_size=32), out="runs/train")

* The model maps (n, 3, h, w) to embeddings; the criterion (an ``nn.Module``, e.g.
  :class:`~imsim_lab.train.losses.XBMContrastiveLoss`, ArcFace...) maps (embeddings, labels) to a
  scalar. Its parameters are optimised and its buffers (a memory bank) checkpointed with the model.
* A dataset item is ``(x (v, 3, h, w), y (v,))`` addressed by ``(index, epoch)``
  (:mod:`imsim_lab.train.data`); a batch is flattened to ``(b * v, ...)``.
* AMP: ``amp="auto"`` is bf16 on CUDA when supported (fp16 + GradScaler otherwise), off on CPU.
* ``accum_steps`` micro-batches make one optimiser step (DDP does not synchronise the others).
* Under ``torchrun`` (:func:`imsim_lab.distributed.init_distributed`): DDP with ``nccl`` on CUDA (one GPU per rank, bound
  with ``device_id``), ``gloo`` on CPU; each rank reads its part of every global batch; SyncBN on
  CUDA; the criterion's own gradients are averaged over the ranks too. Checkpoints are written by
  rank 0.
* Every ``checkpoint_every`` optimiser steps ``checkpoint.pt`` is written atomically (temp file +
  ``os.replace``): model, criterion (memory bank), optimiser, GradScaler, step, the RNG states of
  torch / CUDA / numpy / Python, and the history, as tensors and JSON-able values only, so it is
  read back with ``torch.load(weights_only=True)``. Calling :func:`train` again with the same
  configuration and ``out`` resumes from it: the rest of the run is the one an uninterrupted run
  would have done (bit for bit on CPU; ``tests/test_train_trainer.py``).
* At the end ``weights.pt`` holds the model's ``state_dict`` only, loadable with
  ``create_model(..., weights_path=...)``; ``history.json`` one record per logged step.

Nothing here prints: pass ``on_step`` to see progress.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, atomic_write_text
from ..distributed import all_reduce_grads, dist_info
from ..errors import ImsimError
from .data import EpochBatches, SyncBatches, collate

AMP_MODES = ("auto", "off", "bf16", "fp16")
CHANNELS_LAST_MODES = ("auto", "on", "off")
LOADER_MODES = ("auto", "overlap", "sync")
LR_SCHEDULES = ("constant", "linear", "cosine", "plateau")  # plateau: imsim_lab.train.schedules
OPTIMIZERS = ("sgd", "adam", "adamw", "lars")  # lars: imsim_lab.train.lars
CHECKPOINT, WEIGHTS, HISTORY = "checkpoint.pt", "weights.pt", "history.json"


class TrainError(ImsimError):
    """A training run cannot start or resume (names the folder and the reason)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train (what to train is the model, the criterion and the data).

    Attributes:
        epochs: passes over the data; ``max_steps``: stop after this many optimiser steps.
        batch_size: images per process per micro-batch (each gives several views).
        accum_steps: micro-batches per optimiser step.
        lr, lr_schedule (``constant``, ``linear`` = lr (1 - t/T) as lyakaap's v98, ``cosine``,
        ``plateau`` = S-square's ReduceLROnPlateau from the epoch losses, :mod:`.schedules`),
        warmup_steps (linear warm-up from ``warmup_start`` x lr, default 0), hold_steps (then the
        constant lr for this many steps before the schedule starts: Bag of Tricks' warm-up,
        constant, cosine).
        optimizer: ``sgd`` (momentum), ``adam``, ``adamw`` or ``lars`` (SSCD, :mod:`.lars`);
            weight_decay, not applied to 1-D parameters (biases, norms) when ``no_decay_1d``.
        grad_clip: max global gradient norm (None: off).
        amp: one of :data:`AMP_MODES`.
        channels_last: ``auto`` (channels-last weights and inputs on CUDA, where convolutions run
            faster in it under AMP; contiguous on CPU), ``on`` or ``off``.
        num_workers: processes that make the batches (0: in the training process).
        loader: how those processes feed the step: ``overlap`` (a DataLoader: the next batches are
            made while the step runs), ``sync`` (:class:`~imsim_lab.train.data.SyncBatches`: made
            between steps, every core for each phase: faster on a CPU whose cores the step's
            threads fill) or ``auto`` (``sync`` on a CPU device with at least two workers, else ``overlap``).
        checkpoint_every: optimiser steps between checkpoints (0: only at the end).
        log_every: optimiser steps between history records.
        seed: seeds the model-side RNGs and the data order.
        device: None = CUDA if present.
        sync_bn: convert BatchNorm to SyncBatchNorm under DDP on CUDA.
    """

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    accum_steps: int = 1
    lr: float = 0.1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-6
    no_decay_1d: bool = True
    grad_clip: float | None = None
    amp: str = "auto"
    num_workers: int = 0
    checkpoint_every: int = 100
    log_every: int = 1
    seed: int = 0
    device: str | None = None
    sync_bn: bool = True
    hold_steps: int = 0
    warmup_start: float = 0.0
    channels_last: str = "auto"
    loader: str = "auto"

    def __post_init__(self):
        for name, value, allowed in (("amp", self.amp, AMP_MODES), ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
                                     ("channels_last", self.channels_last, CHANNELS_LAST_MODES),
                                     ("loader", self.loader, LOADER_MODES),
                                     ("optimizer", self.optimizer, OPTIMIZERS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.accum_steps < 1 or self.log_every < 1:
            raise ValueError("epochs, batch_size, accum_steps and log_every must be >= 1")
        if self.hold_steps < 0 or not 0.0 <= self.warmup_start <= 1.0:
            raise ValueError("hold_steps must be >= 0 and warmup_start in [0, 1]")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, default in _LATER_FIELDS.items():  # recorded only when set: older run folders still resume
            if d[k] == default:
                del d[k]
        return d


#: fields added after run folders existed, with their defaults (left out of ``to_dict`` at the default)
_LATER_FIELDS = {"hold_steps": 0, "warmup_start": 0.0, "channels_last": "auto", "loader": "auto"}

#: how a run is executed, not what it computes (items are addressed by (index, epoch): the batches are the
#: same for any number of loader workers); recorded, but a resume may change them
EXECUTION_FIELDS = ("num_workers", "channels_last", "loader")


def _identity(described: dict) -> dict:
    """A recorded training configuration without its :data:`EXECUTION_FIELDS` (what a resume must match)."""
    train = {k: v for k, v in (described.get("train") or {}).items() if k not in EXECUTION_FIELDS}
    return {**described, "train": train}


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What a run did. ``history``: one record per logged step (step, epoch, loss, lr, seconds)."""

    out: Path
    steps: int
    total_steps: int
    history: list = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    weights: Path | None = None


# ------------------------------------------------------------------------------------------------
# pure pieces


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """The learning rate of optimiser step ``step`` (0-based) out of ``total``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        f = (step + 1) / cfg.warmup_steps
        return cfg.lr * (cfg.warmup_start + (1.0 - cfg.warmup_start) * f) if cfg.warmup_start else cfg.lr * f
    flat = cfg.warmup_steps + cfg.hold_steps
    if step < flat:
        return cfg.lr
    t = (step - flat) / max(1, total - flat)
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - t)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return cfg.lr


def resolve_loader(mode: str, device: str, workers: int) -> str:
    """``inline`` (no worker), ``overlap`` or ``sync`` for a :data:`LOADER_MODES` ``mode`` (``auto``: sync on
    a CPU device with two or more workers, overlap otherwise)."""
    if workers < 1:
        return "inline"
    if mode == "auto":  # one sync worker would make every batch on one core while the others wait
        return "sync" if not device.startswith("cuda") and workers >= 2 else "overlap"
    return mode


def resolve_channels_last(mode: str, device: str) -> bool:
    """Whether the trainer keeps weights and 4-D inputs channels-last for a :data:`CHANNELS_LAST_MODES`
    ``mode`` (``auto``: on CUDA only)."""
    return mode == "on" or (mode == "auto" and device.startswith("cuda"))


def to_device(x, device: str, channels_last: bool):
    """A batch on ``device`` (non-blocking from pinned memory), channels-last when asked and 4-D."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def resolve_amp(amp: str, device: str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: full precision)."""
    if amp == "off" or not device.startswith("cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def param_groups(modules: list[nn.Module], weight_decay: float, no_decay_1d: bool = True) -> list[dict]:
    """Parameters of ``modules`` in two groups: with weight decay, and 1-D ones (biases, norms) without."""
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                (no_decay if no_decay_1d and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(modules: list[nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(modules, cfg.weight_decay, cfg.no_decay_1d)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "lars":
        from .lars import LARS

        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr)


def rng_state() -> dict:
    """torch, CUDA (the current device's), numpy and Python RNG states as tensors and JSON-able values.

    Only the current GPU's generator: under DDP each rank uses one GPU, and reading or setting
    the others' would make every rank open a CUDA context on every GPU.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": list(pstate), "gauss": pgauss}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]  # one state (older checkpoints: one per GPU, indexed by device)
        torch.cuda.set_rng_state(cuda[torch.cuda.current_device()] if len(cuda) > 1 else cuda[0])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _atomic_json(obj, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=float))  # numpy scalars as numbers


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (``weights_only=True``); a broken file is named in the error."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        raise TrainError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); delete it to start over") from None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------
# the loop


def train(model: nn.Module, criterion: nn.Module, dataset, config: TrainConfig, out: str | Path,
          init: str | Path | None = None, on_step: Callable[[dict], None] | None = None,
          run_info: dict | None = None) -> TrainResult:
    """Train ``model`` with ``criterion`` on ``dataset``; checkpoints and resumes in ``out``.

    Args:
        model: (n, 3, h, w) -> (n, d); trained in place (its weights are the result).
        criterion: (embeddings (n, d), labels (n,)) -> scalar loss; may hold parameters and buffers.
        dataset: items ``(x (v, 3, h, w), y (v,))`` addressed by ``(index, epoch)``.
        config: :class:`TrainConfig`.
        out: run folder (``checkpoint.pt``, ``weights.pt``, ``history.json``, ``train_config.json``).
        init: weights to start from (a ``weights.pt`` of an earlier stage or a checkpoint); ignored
            when resuming (the checkpoint has them).
        on_step: called on rank 0 after every logged step with its record (progress bars, tests).
        run_info: JSON-able description stored in ``train_config.json`` (stage, data, model);
            a resume with different ``config`` or ``run_info`` is refused.

    Returns:
        :class:`TrainResult`.

    Raises:
        TrainError: ``out`` holds a run of another configuration, or a broken checkpoint.
    """
    t0 = time.perf_counter()
    out = Path(out)
    rank, world = dist_info()
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world > 1:
        device = f"cuda:{torch.cuda.current_device()}"
    described = {"train": config.to_dict(), "run": run_info or {}, "world_size": world,
                 "n_items": len(dataset)}
    cfg_path = out / "train_config.json"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp*"):  # a write cut short by a kill; the finished files are intact
            stale.unlink(missing_ok=True)
    if cfg_path.is_file():
        old = _identity(json.loads(cfg_path.read_text()))
        new = _identity(json.loads(json.dumps(described, default=str)))
        if old != new:
            diff = sorted(f"train.{k}" for k in set(old["train"]) | set(new["train"])
                          if old["train"].get(k) != new["train"].get(k))
            diff += sorted(k for k in set(old) | set(new) if k != "train" and old.get(k) != new.get(k))
            raise TrainError(f"{out}: holds a training run of another configuration ({', '.join(diff)} differ); "
                             f"choose another folder or delete it")
    elif rank == 0:
        _atomic_json(described, cfg_path)

    sampler = EpochBatches(len(dataset), config.batch_size, config.seed, rank, world)
    steps_per_epoch = len(sampler) // config.accum_steps
    if steps_per_epoch < 1:
        raise TrainError(f"{out}: {len(dataset)} items give fewer micro-batches ({len(sampler)}) than "
                         f"accum_steps={config.accum_steps}")
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    model.to(device)
    criterion.to(device)
    channels_last = resolve_channels_last(config.channels_last, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ckpt_path = out / CHECKPOINT
    state = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if state is None and init is not None:
        init_state = load_checkpoint(init)
        model.load_state_dict(init_state.get("model", init_state))
    if world > 1 and config.sync_bn and device.startswith("cuda"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer([model, criterion], config)
    amp_dtype = resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, history = int(state["step"]), list(state["history"])
        set_rng_state(state["rng"])
    resumed_from = step
    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()]
                                                  if device.startswith("cuda") else None)

    def save(final: bool = False):
        if rank != 0:
            return
        atomic_torch_save({"model": _unwrap(model).state_dict(), "criterion": criterion.state_dict(),
                           "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled()
                           else {}, "step": step, "total_steps": total, "history": history, "rng": rng_state(),
                           "config": json.dumps(described, default=str)}, ckpt_path)
        _atomic_json(history, out / HISTORY)
        if final:
            atomic_torch_save(_unwrap(model).state_dict(), out / WEIGHTS)

    from torch.utils.data import DataLoader

    model.train()
    criterion.train()
    t_start = time.perf_counter()
    mode = resolve_loader(config.loader, device, config.num_workers)
    with SyncBatches(dataset, config.num_workers) if mode == "sync" else nullcontext() as pool:
        while step < total:
            epoch, within = divmod(step, steps_per_epoch)
            batches = sampler.batches(epoch, within * config.accum_steps)
            batches = batches[: (steps_per_epoch - within) * config.accum_steps]
            if pool is not None:
                loader = pool.batches(batches)
            else:
                # an own generator: creating a loader must not draw from the global torch RNG (exact resume)
                loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                    num_workers=config.num_workers, pin_memory=device.startswith("cuda"),
                                    generator=torch.Generator().manual_seed(epoch))
            running, micro = 0.0, 0
            for x, y in loader:
                x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
                last_micro = (micro + 1) % config.accum_steps == 0
                sync = ddp.no_sync() if (world > 1 and not last_micro) else nullcontext()
                with sync:
                    with torch.autocast(device.split(":")[0], dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        emb = ddp(x)
                    loss = criterion(emb.float(), y) / config.accum_steps
                    scaler.scale(loss).backward()
                running += float(loss.detach())
                micro += 1
                if not last_micro:
                    continue
                lr = lr_at(step, total, config)
                if config.lr_schedule == "plateau":
                    from .schedules import epoch_losses, plateau_lr

                    lr = plateau_lr(lr, epoch_losses(history, steps_per_epoch)) if history else lr
                for g in optimizer.param_groups:
                    g["lr"] = lr
                if world > 1:
                    all_reduce_grads(criterion, world)
                if config.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % config.log_every == 0 or step == total:
                    rec = {"step": step, "epoch": step / steps_per_epoch, "loss": running, "lr": lr,
                           "seconds": round(time.perf_counter() - t_start, 3)}
                    history.append(rec)
                    if on_step and rank == 0:
                        on_step(rec)
                running = 0.0
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
                    save()
                if step >= total:
                    break
    save(final=True)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return TrainResult(out, step, total, history, time.perf_counter() - t0, resumed_from,
                       out / WEIGHTS if (out / WEIGHTS).is_file() else None)
