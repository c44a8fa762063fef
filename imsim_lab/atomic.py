"""Atomic file writes: a file appears complete or not at all.

Every writer that must not leave a half-written file behind (an interrupted run, a killed suite,
two processes filling the same cache) goes through :func:`atomic_path`: the content is written
to a hidden temporary file in the destination's folder (``.NAME.tmpPID[SUFFIX]``, so the rename
stays on one file system), which replaces the destination with ``os.replace`` only once the
writer has finished. On any error the temporary file is removed and the destination is left as
it was (absent, or the previous complete version).

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, ids=ids, x=x)

The helpers below cover the common formats; writers with their own format (deterministic
parquet through pyarrow, HDF5, torch checkpoints, images) use :func:`atomic_path` directly.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path to write to; it replaces ``path`` when the ``with`` block succeeds.

    Args:
        path: the destination; its folder is created when missing.
        suffix: appended to the temporary name, for writers that pick the format or add an
            extension from the name (``np.savez`` adds ``.npz`` to a name without it).

    Yields:
        the temporary path (not yet existing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON (objects it cannot encode as their ``str``), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def atomic_write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write one array as ``.npy`` (read back with ``np.load``, memory-mappable), atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def atomic_write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` (read back with ``np.load``), atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def atomic_write_parquet(path: str | Path, df) -> None:
    """Write a pandas DataFrame as parquet (without its index), atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
