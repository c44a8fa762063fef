"""``torch.distributed`` set-up shared by training and extraction (both run under ``torchrun``).

    from imsim_lab.distributed import init_distributed, destroy_distributed

    rank, world = init_distributed()      # (0, 1) when not started by torchrun
    try:
        ...                               # imsim_lab.train.train / imsim_lab.features.extract_split
    finally:
        destroy_distributed()

* :func:`init_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``: ``nccl``
  when CUDA is present, with GPU ``LOCAL_RANK`` bound to the process group
  (:func:`process_group_args`, which refuses more ranks on a node than GPUs: NCCL cannot run two
  ranks on one GPU), ``gloo`` on the CPU;
* :func:`init_from_env` does the same and also names the device this rank computes on;
* :func:`dist_info` and :func:`current_group` tell the code that runs inside whether a group is
  initialised (the trainer shards its batches, extraction its shards, by rank);
* :func:`all_reduce_grads` averages gradients that DDP does not (a criterion's own parameters).

torch is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import os

from .errors import ImsimError


class DistributedError(ImsimError):
    """The process group cannot be set up as asked (names the variable or backend and the reason)."""


def current_group():
    """(rank, world_size, the ``torch.distributed`` module or None when no group is initialised)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is optional for the ONNX extraction path
        return 0, 1, None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist
    return 0, 1, None


def dist_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without an initialised process group."""
    rank, world, _ = current_group()
    return rank, world


def process_group_args(backend: str | None, cuda: bool, local_rank: int, n_gpus: int) -> tuple[str, int | None]:
    """(backend, CUDA device of this rank or None) for ``init_process_group``.

    ``nccl`` with GPU ``local_rank`` when CUDA is present, else ``gloo`` on the CPU; an explicit
    ``backend`` is kept (``gloo`` on a GPU machine binds no device). More ranks on a node than
    GPUs is refused: NCCL cannot run two ranks on one GPU.

    Raises:
        DistributedError: ``nccl`` without CUDA, or ``local_rank`` beyond the node's GPUs.
    """
    backend = backend or ("nccl" if cuda else "gloo")
    if "nccl" not in backend:
        return backend, None
    if not cuda:
        raise DistributedError(f"backend {backend!r} needs CUDA, and torch sees no GPU")
    if not 0 <= local_rank < n_gpus:
        raise DistributedError(f"LOCAL_RANK {local_rank} but this node has {n_gpus} GPU(s): start at most "
                               f"{n_gpus} processes per node (torchrun --nproc_per_node)")
    return backend, local_rank


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (``RANK``, ``WORLD_SIZE``).

    Args:
        backend: None: ``nccl`` when CUDA is present (this rank's GPU ``LOCAL_RANK`` becomes the
            current device and is bound to the group), else ``gloo``.

    Returns:
        (rank, world_size); (0, 1) without torchrun's variables (nothing is initialised). A group
        that is already initialised is kept.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        # These modules take ``group=group.WORLD`` as a default argument, bound when they are first
        # imported (by DDP, by the losses that gather across ranks). Imported after the group
        # exists, their defaults hold it for the life of the process and destroy_distributed()
        # cannot free it; imported now, the default is None (the current group at call time).
        import torch.distributed.nn.functional  # noqa: F401
        import torch.nn.parallel.distributed  # noqa: F401

        backend, device_id = process_group_args(backend, torch.cuda.is_available(),
                                                int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count())
        if device_id is not None:
            torch.cuda.set_device(device_id)
            # bound device: NCCL's barrier and collectives use it (no guess, no warning)
            dist.init_process_group(backend, device_id=torch.device("cuda", device_id))
        else:
            dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def init_from_env(backend: str | None = None) -> tuple[int, int, str]:
    """:func:`init_distributed`, and the device this rank computes on: (rank, world, device).

    The device is ``cuda:LOCAL_RANK`` when CUDA is present (also with ``gloo``), else ``cpu``.
    Started without torchrun, this is the only process: (0, 1, device).
    """
    import torch

    rank, world = init_distributed(backend)
    if not torch.cuda.is_available():
        return rank, world, "cpu"
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    return rank, world, f"cuda:{local}"


def destroy_distributed() -> None:
    """Destroy the process group if one is initialised (the end of a torchrun command).

    ``destroy_process_group`` only unregisters the group: gloo's worker threads live on until the
    last reference goes, and a DDP wrapper left in a reference cycle keeps it until the
    interpreter's final collection. A worker thread that then releases a tensor Python knew
    needs the GIL, which finalisation no longer grants, and the process aborts ("terminate called
    without an active exception", exit -6) after all its work was saved. Collecting here frees the
    group, and joins its threads, while the interpreter is still alive.
    """
    _, _, dist = current_group()
    if dist is not None:
        import gc

        dist.destroy_process_group()
        gc.collect()


def all_reduce_grads(module, world: int) -> None:
    """Average over the ranks the gradients of ``module``'s parameters (those that have one).

    DDP averages the model's gradients, not the criterion's: a criterion with parameters (a
    learnable scale, class weights) would otherwise drift apart on each rank. Every rank runs the
    same code, so the same parameters have gradients everywhere.

    Args:
        module: an ``nn.Module`` after ``backward()``.
        world: the number of ranks (the divisor).
    """
    import torch.distributed as dist

    for p in module.parameters():
        if p.requires_grad and p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)
