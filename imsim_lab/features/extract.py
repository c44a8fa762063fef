"""Batched, resumable, optionally distributed descriptor extraction.

``extract_split(model, paths, ids, folder, name)``:

1. the images (in the given order) are cut into shards of ``shard_size``; shards already on disk
   are skipped, so a killed run restarts where it stopped;
2. a DataLoader with ``num_workers`` reads and preprocesses (the model's own
   :attr:`~imsim_lab.features.models.base.DescriptorModel.preprocess`); batches never straddle shards;
3. the model embeds each batch (CUDA: AMP fp16 and channels-last, see
   :class:`~imsim_lab.features.models.base.TorchDescriptorModel`); finished shards are written atomically;

   or, for models that run best as several single-threaded calls on CPU
   (:meth:`~imsim_lab.features.models.base.DescriptorModel.cpu_streams` > 1, the SSCD ONNX model),
   ``streams`` threads each read, preprocess and embed whole batches, in order of completion
   but consumed in batch order (no DataLoader: decoding and onnxruntime both release the GIL);
4. under ``torchrun`` (``torch.distributed`` initialised) rank r takes shards s with
   ``s % world_size == r``; after a barrier rank 0 merges; the others wait for it.

Unreadable images are reported by id (``name_failed.json`` and :attr:`FeatureSet.failed`) and
left out of the arrays; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..distributed import current_group
from .dataset import ImageFiles, collate, ordered_threads, worker_init
from .store import (FeatureSet, check_meta, has_features, load_features, merge_shards, remove_shards, shard_path,
                    write_shard)

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractConfig:
    """How to run an extraction (not what it computes: that is the model's config).

    Attributes:
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes (0: read in the main process).
        shard_size: images per shard file (the unit of resumption).
        dtype: ``float32`` or ``float16`` storage.
        prefetch_factor: batches loaded ahead per worker (or per stream).
        streams: threads that each read and embed whole batches, for models whose
            :meth:`~imsim_lab.features.models.base.DescriptorModel.cpu_streams` is above 1; ``None``
            (default): the model's own number; 1: always the DataLoader path. ``num_workers``
            is not used when more than one stream runs.
    """

    batch_size: int = 32
    num_workers: int = 2
    shard_size: int = 1024
    dtype: str = "float32"
    prefetch_factor: int = 2
    streams: int | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}")
        if self.batch_size < 1 or self.shard_size < 1 or self.num_workers < 0:
            raise ValueError("batch_size and shard_size must be >= 1, num_workers >= 0")
        if self.streams is not None and self.streams < 1:
            raise ValueError("streams must be >= 1 (or None: the model decides)")

    def streams_for(self, model) -> int:
        """The number of streams an extraction with ``model`` runs (1: the DataLoader path)."""
        if self.streams is not None:
            return self.streams if model.cpu_streams() > 1 else 1
        return model.cpu_streams()


def _ids_digest(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def extract_split(model, paths: Sequence[str | Path], ids: Sequence[str], folder: str | Path, name: str,
                  config: ExtractConfig = ExtractConfig(), progress: Callable[[int], None] | None = None
                  ) -> FeatureSet:
    """Extract the descriptors of one split into ``folder`` (see module docstring).

    Args:
        model: a :class:`~imsim_lab.features.models.base.DescriptorModel`.
        paths, ids: the images and their ids, same length (order = row order of the output).
        folder: output folder; ``name``: split name (file stem).
        config: batching, workers, shards, storage dtype.
        progress: called with the number of images finished after each batch (and once with the
            number already on disk); the CLI passes ``tqdm.update``.

    Returns:
        The merged :class:`FeatureSet` (memory-mapped), on every rank.
    """
    if len(paths) != len(ids):
        raise ValueError(f"{len(paths)} paths for {len(ids)} ids")
    folder = Path(folder)
    rank, world, dist = current_group()
    if has_features(folder, name):
        fs = load_features(folder, name)
        if len(fs.ids) + len(fs.failed) == len(ids) and fs.x.shape[1] == model.dim:
            if progress:
                progress(len(ids))
            return fs
    shard_dir = folder / "shards" / name
    n_shards = max(1, -(-len(ids) // config.shard_size))
    meta = {"model": model.config.fingerprint(), "model_name": model.config.name, "n": len(ids),
            "ids": _ids_digest(ids), "shard_size": config.shard_size, "dtype": config.dtype, "dim": model.dim}
    if rank == 0:
        shard_dir.mkdir(parents=True, exist_ok=True)
        check_meta(shard_dir, meta)
    if dist is not None:
        dist.barrier()
    if rank != 0:
        check_meta(shard_dir, meta)
    mine = [s for s in range(n_shards) if s % world == rank]
    todo = [s for s in mine if not shard_path(shard_dir, s).is_file()]
    if progress:
        done = sum(min(config.shard_size, len(ids) - s * config.shard_size) for s in mine if s not in todo)
        if done:
            progress(done)
    if todo:
        _run_shards(model, [str(p) for p in paths], np.asarray(ids, dtype=str), shard_dir, todo, config, progress)
    if dist is not None:
        dist.barrier()
    if rank == 0:
        merge_shards(shard_dir, n_shards, folder, name, model.dim, np.dtype(config.dtype))
        remove_shards(shard_dir, n_shards)
    if dist is not None:
        dist.barrier()
    return load_features(folder, name)


def _batches(shards: list[int], n: int, shard_size: int, batch_size: int) -> list[list[int]]:
    """The batches of the given shards, in order (a batch never straddles two shards)."""
    return [b for s in shards for b in batches_of(min(n, (s + 1) * shard_size), batch_size, start=s * shard_size)]


def as_dataset(model, data):
    """``data`` as a map-style dataset whose item i is ``(i, array or None, error or None)``: a
    list of image paths becomes :class:`~imsim_lab.features.dataset.ImageFiles` with the model's
    preprocessing; anything else (e.g. the robustness suite's edited references) is used as is."""
    if isinstance(data, (list, tuple)) and all(isinstance(p, (str, Path)) for p in data):
        return ImageFiles(data, model.preprocess)
    return data


def make_loader(model, data, batches: list[list[int]], config: ExtractConfig):
    """The DataLoader of an extraction over image paths or a dataset (see :func:`as_dataset`)."""
    from torch.utils.data import DataLoader

    kw = {}
    if config.num_workers > 0:
        kw = dict(worker_init_fn=worker_init, prefetch_factor=config.prefetch_factor, persistent_workers=False)
    return DataLoader(as_dataset(model, data), batch_sampler=batches, collate_fn=collate,
                      num_workers=config.num_workers, pin_memory=str(model.device).startswith("cuda"), **kw)


def embedded_batches(model, data, batches: list[list[int]], config: ExtractConfig):
    """Yield ``(indices, descriptors or None, failures)`` per batch, in the order of ``batches``.

    ``data``: image paths or a dataset (see :func:`as_dataset`). The DataLoader path
    (``num_workers`` processes read, the main process embeds), or
    :func:`~imsim_lab.features.dataset.ordered_threads` over whole batches when
    :meth:`ExtractConfig.streams_for` the model is above 1 (then the dataset's items are made in
    threads: they must not share mutable state).
    """
    streams = config.streams_for(model)
    if streams > 1:
        dataset = as_dataset(model, data)

        def one(batch):
            idx, arrays, failures = collate([dataset[i] for i in batch])
            return idx, model.embed_stream(arrays) if len(idx) else None, failures

        yield from ordered_threads(one, batches, streams, ahead=streams * config.prefetch_factor)
        return
    for idx, arrays, failures in make_loader(model, data, batches, config):
        yield idx, model.embed(arrays) if len(idx) else None, failures


def batches_of(stop: int, batch_size: int, start: int = 0) -> list[list[int]]:
    """The indices ``start..stop-1`` in consecutive batches of ``batch_size`` (the last may be shorter)."""
    return [list(range(b, min(stop, b + batch_size))) for b in range(start, stop, batch_size)]


def _run_shards(model, paths, ids, shard_dir, todo, config, progress) -> None:
    n, ss = len(ids), config.shard_size
    batches = embedded_batches(model, paths, _batches(todo, n, ss, config.batch_size), config)
    dtype = np.dtype(config.dtype)
    queue = list(todo)
    cur_x, cur_i, cur_fail = [], [], []

    def flush(s):
        idx = np.concatenate(cur_i) if cur_i else np.zeros(0, np.int64)
        x = np.concatenate(cur_x).astype(dtype) if cur_x else np.zeros((0, model.dim), dtype)
        write_shard(shard_dir, s, ids[idx], x, cur_fail)

    for idx, x, failures in batches:
        s = int((idx[0] if len(idx) else failures[0][0]) // ss)
        while s != queue[0]:  # the previous shard is complete
            flush(queue.pop(0))
            cur_x, cur_i, cur_fail = [], [], []
        if len(idx):
            cur_x.append(x)
            cur_i.append(idx)
        cur_fail += [{"id": str(ids[i]), "path": paths[i], "error": msg} for i, msg in failures]
        if progress:
            progress(len(idx) + len(failures))
    while queue:
        flush(queue.pop(0))
        cur_x, cur_i, cur_fail = [], [], []


def describe(config: ExtractConfig) -> dict:
    return asdict(config)
