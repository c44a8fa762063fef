"""Reading images for extraction: a Dataset that never raises on a bad file, and a collate
function that stacks equal shapes.

An unreadable image (missing, truncated, not an image, decompression bomb) becomes a failure
``(index, "ErrorType: message")`` carried next to the batch, so the extraction reports it by id
and goes on; nothing is skipped silently.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def read_image(path: str | Path):
    """Open and fully decode an image as RGB (raises on any problem)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")


class ImageFiles:
    """Map-style dataset: item i -> (i, array or None, error message or None)."""

    def __init__(self, paths: Sequence[str | Path], preprocess: Callable):
        self.paths = [str(p) for p in paths]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(read_image(self.paths[i])), None
        except Exception as e:  # noqa: BLE001 - any failure is reported by id, not raised
            return i, None, f"{type(e).__name__}: {e}"


def collate(items):
    """-> (indices (b,) int64, arrays: stacked ndarray or list, failures: list of (index, message)).

    ``arrays`` holds only the readable items, in the order of ``indices``.
    """
    ok = [(i, a) for i, a, err in items if err is None]
    failures = [(i, err) for i, a, err in items if err is not None]
    idx = np.array([i for i, _ in ok], dtype=np.int64)
    arrays = [a for _, a in ok]
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        import torch

        arrays = torch.from_numpy(np.stack(arrays))
    return idx, arrays, failures


def worker_init(_worker_id: int) -> None:
    """One thread per worker: the model in the main process owns the cores."""
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def ordered_threads(fn: Callable[[T], R], items: Iterable[T], threads: int, ahead: int) -> Iterator[R]:
    """``map(fn, items)`` on ``threads`` threads, yielding in the order of ``items``.

    At most ``ahead`` (>= ``threads``) calls are submitted and not yet consumed, so memory
    stays bounded on long lists. An exception in ``fn`` is raised at its item; when the
    consumer stops (an error, Ctrl-C, ``close()``), calls not yet started are cancelled and the
    running ones finish before this returns.
    """
    ahead = max(ahead, threads)
    it = iter(items)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="imsim-stream")
    pending: deque = deque()
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:
                pending.append(pool.submit(fn, item))
                break
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
