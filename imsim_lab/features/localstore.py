"""Where local features live on disk, and their batched, resumable extraction.

A split holds a variable number of keypoints per image, as offsets into flat arrays. Layout of
split ``name`` inside ``folder`` (prefixed ``name_local``, so it can share a folder with the
descriptor store of :mod:`imsim_lab.features.store`)::

    folder/name_local.json              settings (model fingerprint, ids digest, image key) and counts;
                                        written last: its presence means "split done"
    folder/name_local_ids.npy           (n,) ids of the readable images, in the order given
    folder/name_local_offsets.npy       (n + 1,) int64: image i owns rows offsets[i]:offsets[i + 1]
    folder/name_local_geometry.npy      (m, 4) float32: x, y, size, angle
    folder/name_local_descriptors.npy   (m, d) uint8 or float16 (the model's config)
    folder/name_local_shapes.npy        (n, 2) int32: (h, w) of each preprocessed image
    folder/name_local_failed.json       [{"id", "path", "error"}] unreadable images, when any
    folder/shards/name_local/meta.json, 00000.npz ...   work in progress (removed after the merge)

As in the descriptor store, shards are written atomically and a killed extraction restarts at the
first missing shard. A split, finished or not, made with another model configuration or of other
images (ids, or the images' ``key``) is refused with an :class:`~imsim_lab.errors.ImsimError`
naming the folder, never mixed. An image without keypoints keeps its row (an empty range).
Extraction runs in one process (no ``torchrun`` sharding).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_path, atomic_write_json, atomic_write_npy, atomic_write_npz
from ..errors import FormatError, ImsimError
from .dataset import ImageSource
from .extract import ExtractConfig, _ids_digest, batches_of, embedded_batches
from .local import LocalFeatures
from .store import check_meta

_ARRAYS = ("ids", "offsets", "geometry", "descriptors", "shapes")


@dataclass(frozen=True, eq=False)
class LocalFeatureSet:
    """The local features of one split.

    Shapes: ``ids`` (n,); ``offsets`` (n + 1,); ``geometry`` (m, 4) float32 x, y, size, angle;
    ``descriptors`` (m, d); ``shapes`` (n, 2) (h, w). The arrays may be read-only memmaps.
    ``failed`` lists the unreadable images (not in ``ids``); ``meta`` is ``name_local.json``.
    """

    ids: np.ndarray
    offsets: np.ndarray
    geometry: np.ndarray
    descriptors: np.ndarray
    shapes: np.ndarray
    failed: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def counts(self) -> np.ndarray:
        """(n,) keypoints per image."""
        return np.diff(self.offsets)

    def features(self, i: int) -> LocalFeatures:
        """The features of row ``i`` (views into the arrays)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return LocalFeatures(self.geometry[a:b], self.descriptors[a:b], tuple(int(v) for v in self.shapes[i]))

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids),) int64 row of each id, -1 for an id without features (unreadable or absent)."""
        pos = {str(i): k for k, i in enumerate(self.ids)}
        return np.fromiter((pos.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))


def _paths(folder: Path, name: str) -> dict:
    p = {a: folder / f"{name}_local_{a}.npy" for a in _ARRAYS}
    p["meta"], p["failed"] = folder / f"{name}_local.json", folder / f"{name}_local_failed.json"
    return p


def has_local_features(folder: str | Path, name: str) -> bool:
    return _paths(Path(folder), name)["meta"].is_file()


def load_local(folder: str | Path, name: str, mmap: bool = True) -> LocalFeatureSet:
    """Load a finished split; the arrays are read-only memmaps when ``mmap``.

    Raises:
        FormatError: a missing file or arrays that do not fit together (names the file).
    """
    p = _paths(Path(folder), name)
    if not p["meta"].is_file():
        raise FormatError(p["meta"], "file not found (the local-feature extraction of this split has not finished)")
    arrays = {}
    for a in _ARRAYS:
        try:
            arrays[a] = np.load(p[a], mmap_mode="r" if mmap and a != "ids" else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FormatError(p[a], f"cannot read the array ({e})") from None
    n, m = len(arrays["ids"]), len(arrays["geometry"])
    off = arrays["offsets"]
    if off.shape != (n + 1,) or off[0] != 0 or off[-1] != m or np.any(np.diff(off) < 0):
        raise FormatError(p["offsets"], f"offsets do not describe {n} images over {m} keypoints")
    if len(arrays["descriptors"]) != m or arrays["geometry"].shape[1:] != (4,) or arrays["shapes"].shape != (n, 2):
        raise FormatError(p["descriptors"], "descriptors, geometry and shapes do not match the offsets")
    failed = json.loads(p["failed"].read_text()) if p["failed"].is_file() else []
    meta = json.loads(p["meta"].read_text())
    return LocalFeatureSet(arrays["ids"].astype(str), off, arrays["geometry"], arrays["descriptors"],
                           arrays["shapes"], failed, meta)


def _refuse(where: Path, old: dict, new: dict) -> None:
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise ImsimError(f"{where}: local features there were made with other settings ({', '.join(diff)} "
                         f"differ); remove that folder or choose another")


def _resolve(model, data, ids, key):
    """-> (dataset or paths, ids (n,) str, key, paths or None) for the three kinds of input."""
    if isinstance(data, ImageSource):
        ids = data.ids if ids is None else np.asarray(ids, dtype=str)
        return data.dataset(model.preprocess, ids), ids, data.key if key is None else str(key), None
    if ids is None:
        raise ValueError("ids are needed unless the images come from an ImageSource")
    ids = np.asarray(ids, dtype=str)
    if isinstance(data, (list, tuple)) and all(isinstance(p, (str, Path)) for p in data):
        paths = [str(p) for p in data]
        if len(paths) != len(ids):
            raise ValueError(f"{len(paths)} paths for {len(ids)} ids")
        if key is None:
            key = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]
        return paths, ids, str(key), paths
    if key is None:
        raise ValueError("a dataset of images needs a key saying what the images are")
    if len(data) != len(ids):
        raise ValueError(f"{len(data)} images for {len(ids)} ids")
    return data, ids, str(key), None


def extract_local(model, data, ids: Sequence[str] | None, folder: str | Path, name: str,
                  config: ExtractConfig = ExtractConfig(), progress: Callable[[int], None] | None = None,
                  key: str | None = None) -> LocalFeatureSet:
    """Extract the local features of one split into ``folder`` (see the module docstring).

    Args:
        model: a :class:`~imsim_lab.features.local.LocalModel`.
        data: image paths, an :class:`~imsim_lab.features.dataset.ImageSource`, or a dataset whose
            item i is ``(i, array or None, error or None)`` (arrays already preprocessed).
        ids: the ids of the images, in order (``None`` with a source: all of its images).
        folder, name: output folder and split name.
        config: batches, shards and streams (its ``dtype`` is the descriptor store's: local
            descriptors take the model's ``config.dtype``). CPU streams (the default: one per
            core) run OpenCV single-threaded; ``streams=1`` takes the DataLoader path, reading in
            the main process (``num_workers`` is not used).
        progress: called with the number of images finished after each batch (and once with
            the number already on disk).
        key: what the images are (default: the source's key, or a digest of the paths); a split
            of another key is refused.

    Returns:
        The merged, memory-mapped :class:`LocalFeatureSet`.

    Raises:
        ImsimError: ``folder`` holds this split, finished or not, of another model configuration
            or other images.
    """
    data, ids, key, paths = _resolve(model, data, ids, key)
    folder = Path(folder)
    p = _paths(folder, name)
    settings = {"model": model.config.fingerprint(), "model_name": model.config.name, "n": len(ids),
                "ids": _ids_digest(ids), "key": key}
    if p["meta"].is_file():
        _refuse(folder, json.loads(p["meta"].read_text())["settings"], settings)
        if progress:
            progress(len(ids))
        return load_local(folder, name)
    shard_dir = folder / "shards" / f"{name}_local"
    shard_dir.mkdir(parents=True, exist_ok=True)
    shard_meta = {**settings, "shard_size": config.shard_size}
    check_meta(shard_dir, shard_meta)  # refuses unfinished shards of other settings
    n_shards = max(1, -(-len(ids) // config.shard_size))
    todo = [s for s in range(n_shards) if not _shard(shard_dir, s).is_file()]
    if progress and len(todo) < n_shards:
        progress(sum(min(config.shard_size, len(ids) - s * config.shard_size)
                     for s in range(n_shards) if s not in todo))
    if todo:
        _run_shards(model, data, ids, paths, shard_dir, todo, config, progress)
    fs = _merge(model, shard_dir, n_shards, folder, name, settings)
    for s in range(n_shards):
        _shard(shard_dir, s).unlink(missing_ok=True)
    (shard_dir / "meta.json").unlink(missing_ok=True)
    for d in (shard_dir, shard_dir.parent):
        try:
            d.rmdir()
        except OSError:
            pass
    return fs


def _shard(shard_dir: Path, s: int) -> Path:
    return shard_dir / f"{s:05d}.npz"


def _run_shards(model, data, ids, paths, shard_dir, todo, config, progress) -> None:
    ss, n = config.shard_size, len(ids)
    batches = [b for s in todo for b in batches_of(min(n, (s + 1) * ss), config.batch_size, start=s * ss)]
    streams = config.streams_for(model)
    if streams == 1 and config.num_workers:
        # read in the main process: a DataLoader worker forked after OpenCV's thread pool has run
        # can hang (seen once in benchmarks/bench_local.py), and reading is a few % of SIFT's time
        config = replace(config, num_workers=0)
    cv2, threads = None, None
    if streams > 1:  # one OpenCV thread per call: the streams own the cores
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
    try:
        left = {s: min(ss, n - s * ss) for s in todo}  # images still to come per shard
        rows: list[int] = []
        feats: list[LocalFeatures] = []
        fails: list[dict] = []
        for idx, out, failures in embedded_batches(model, data, batches, config):
            s = int((idx[0] if len(idx) else failures[0][0]) // ss)  # batches come in order, within a shard
            rows += [int(i) for i in idx]
            feats += list(out or [])
            fails += [{"id": str(ids[i]), "path": paths[i] if paths else None, "error": msg} for i, msg in failures]
            left[s] -= len(idx) + len(failures)
            if left[s] == 0:  # written as soon as complete: a kill later does not lose it
                _write_shard(shard_dir, s, ids[rows], feats, fails, model)
                rows, feats, fails = [], [], []
            if progress:
                progress(len(idx) + len(failures))
        for s in [s for s, k in left.items() if k == 0 and not _shard(shard_dir, s).is_file()]:
            _write_shard(shard_dir, s, ids[[]], [], [], model)  # an empty split
    finally:
        if cv2 is not None:
            cv2.setNumThreads(threads)


def _write_shard(shard_dir, s, ids, feats: list[LocalFeatures], failed, model) -> None:
    dt = np.dtype(model.config.dtype)
    geometry = np.concatenate([f.geometry for f in feats]) if feats else np.zeros((0, 4), np.float32)
    desc = np.concatenate([f.descriptors for f in feats]) if feats else np.zeros((0, model.dim), dt)
    atomic_write_npz(_shard(shard_dir, s), ids=np.asarray(ids, dtype=str),
                     counts=np.array([len(f) for f in feats], np.int64), geometry=geometry.astype(np.float32),
                     descriptors=desc.astype(dt), shapes=np.array([f.shape for f in feats], np.int32).reshape(-1, 2),
                     failed=np.array(json.dumps(failed)))


def _merge(model, shard_dir: Path, n_shards: int, folder: Path, name: str, settings: dict) -> LocalFeatureSet:
    """Concatenate the shards in order, streaming the big arrays through memmaps (memory stays at
    one shard); ``name_local.json`` is written last."""
    p = _paths(folder, name)
    ids, counts, shapes, failed = [], [], [], []
    for s in range(n_shards):
        with np.load(_shard(shard_dir, s), allow_pickle=False) as z:
            ids.append(z["ids"])
            counts.append(z["counts"])
            shapes.append(z["shapes"])
            failed += json.loads(str(z["failed"]))
    counts = np.concatenate(counts)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    m, dt = int(offsets[-1]), np.dtype(model.config.dtype)
    for key, shape, dtype in (("geometry", (m, 4), np.float32), ("descriptors", (m, model.dim), dt)):
        with atomic_path(p[key], suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            o = 0
            for s in range(n_shards):
                with np.load(_shard(shard_dir, s), allow_pickle=False) as z:
                    x = z[key]
                out[o:o + len(x)] = x
                o += len(x)
            out.flush()
            del out
    atomic_write_npy(p["offsets"], offsets)
    atomic_write_npy(p["shapes"], np.concatenate(shapes).astype(np.int32).reshape(-1, 2))
    atomic_write_npy(p["ids"], np.concatenate(ids).astype(str))
    if failed:
        atomic_write_json(p["failed"], failed)
    else:
        p["failed"].unlink(missing_ok=True)
    atomic_write_json(p["meta"], {"settings": settings, "config": model.config.to_dict(),
                                  "counts": {"images": int(len(counts)), "keypoints": m,
                                             "without_keypoints": int((counts == 0).sum()), "failed": len(failed)}})
    return load_local(folder, name)
