"""Where descriptors live on disk: shards written atomically, merged into memory-mappable arrays.

Layout of one split ``name`` (``query``, ``reference``, ``training``) inside ``folder``::

    folder/name.npy            (n, d) float32 or float16, row i = name_ids.npy[i]
    folder/name_ids.npy        (n,) unicode ids (no pickle)
    folder/name_failed.json    [{"id", "path", "error"}] unreadable images, when any
    folder/shards/name/meta.json, 00000.npz ...   work in progress (removed after the merge)

A shard file appears only once complete (temp file + ``os.replace``), so a killed extraction
restarts at the first missing shard and never reads half a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_json, atomic_write_npy, atomic_write_npz
from ..errors import FormatError, ImsimError


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Descriptors of one split. Shapes: ``ids`` (n,), ``x`` (n, d) (possibly a read-only memmap)."""

    ids: np.ndarray
    x: np.ndarray
    failed: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def shard_path(shard_dir: Path, s: int) -> Path:
    return Path(shard_dir) / f"{s:05d}.npz"


def write_shard(shard_dir: Path, s: int, ids: np.ndarray, x: np.ndarray, failed: list[dict]) -> None:
    """Write shard ``s`` atomically (one .npz: the file exists only when complete)."""
    atomic_write_npz(shard_path(shard_dir, s), ids=np.asarray(ids, dtype=str), x=x,
                     failed=np.array(json.dumps(failed)))


def read_shard(shard_dir: Path, s: int):
    with np.load(shard_path(shard_dir, s), allow_pickle=False) as z:
        return z["ids"], z["x"], json.loads(str(z["failed"]))


def check_meta(shard_dir: Path, meta: dict) -> None:
    """Create ``meta.json`` or check that existing shards were made with the same settings."""
    path = Path(shard_dir) / "meta.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(meta, default=str)):
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ImsimError(f"{shard_dir}: unfinished shards were made with other settings "
                             f"({', '.join(diff)} differ); remove that folder or choose another output")
    else:
        atomic_write_json(path, meta)


def merge_shards(shard_dir: Path, n_shards: int, folder: Path, name: str, dim: int, dtype) -> FeatureSet:
    """Concatenate the shards (in order) into ``name.npy`` / ``name_ids.npy`` atomically, streaming
    through a memmap so that memory stays at one shard."""
    folder = Path(folder)
    counts, ids, failed = [], [], []
    for s in range(n_shards):
        with np.load(shard_path(shard_dir, s), allow_pickle=False) as z:
            counts.append(len(z["ids"]))
            ids.append(z["ids"])
            failed += json.loads(str(z["failed"]))
    n = int(sum(counts))
    ids = np.concatenate(ids) if ids else np.zeros(0, dtype=str)
    with atomic_path(folder / f"{name}.npy", suffix=".npy") as tmp:  # replaced last: "split done"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim))
        o = 0
        for s in range(n_shards):
            _, x, _ = read_shard(shard_dir, s)
            out[o:o + len(x)] = x
            o += len(x)
        out.flush()
        del out
        if failed:
            atomic_write_json(folder / f"{name}_failed.json", failed)
        else:
            (folder / f"{name}_failed.json").unlink(missing_ok=True)
        atomic_write_npy(folder / f"{name}_ids.npy", ids.astype(str))
    return load_features(folder, name)


def remove_shards(shard_dir: Path, n_shards: int) -> None:
    """Remove a merged split's shards, its meta.json and the (then empty) shard folders."""
    shard_dir = Path(shard_dir)
    for s in range(n_shards):
        shard_path(shard_dir, s).unlink(missing_ok=True)
    (shard_dir / "meta.json").unlink(missing_ok=True)
    try:
        shard_dir.rmdir()
        shard_dir.parent.rmdir()
    except OSError:
        pass


def has_features(folder: str | Path, name: str) -> bool:
    folder = Path(folder)
    return (folder / f"{name}.npy").is_file() and (folder / f"{name}_ids.npy").is_file()


def load_features(folder: str | Path, name: str, mmap: bool = True) -> FeatureSet:
    """Load a merged split; ``x`` is a read-only memmap when ``mmap``."""
    folder = Path(folder)
    xp, ip = folder / f"{name}.npy", folder / f"{name}_ids.npy"
    for p in (xp, ip):
        if not p.is_file():
            raise FormatError(p, "file not found (the extraction of this split has not finished)")
    try:
        x = np.load(xp, mmap_mode="r" if mmap else None, allow_pickle=False)
        ids = np.load(ip, allow_pickle=False)
    except ValueError as e:
        raise FormatError(xp, f"not a numpy array file ({e})") from None
    if x.ndim != 2 or len(x) != len(ids):
        raise FormatError(xp, f"shape {x.shape} does not match {len(ids)} ids in {ip.name}")
    fp = folder / f"{name}_failed.json"
    failed = json.loads(fp.read_text()) if fp.is_file() else []
    return FeatureSet(ids.astype(str), x, failed)


def save_features(folder: str | Path, name: str, fs: FeatureSet) -> None:
    """Write a FeatureSet as ``name.npy`` + ``name_ids.npy`` (atomic; e.g. after post-processing)."""
    folder = Path(folder)
    atomic_write_npy(folder / f"{name}_ids.npy", np.asarray(fs.ids).astype(str))
    atomic_write_npy(folder / f"{name}.npy", np.asarray(fs.x))
