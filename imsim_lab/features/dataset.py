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


#: images with more pixels than this are reported as skipped, never decoded (a 144-megapixel file
#: takes gigabytes; DISC21's images have about 0.5 megapixel)
MAX_PIXELS = 64_000_000


class ImageTooLarge(ValueError):
    """An image over :data:`MAX_PIXELS` (reported as a failure by id, not decoded)."""


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS, mode: str = "RGB",
               decode_size: Callable[[int, int], tuple[int, int]] | None = None):
    """Open and fully decode an image as RGB, or as luma with ``mode="L"`` (raises on any problem,
    :class:`ImageTooLarge` above ``max_pixels`` before decoding: only the header is read).

    With ``mode="L"`` a JPEG is decoded straight to its luma plane (the JFIF Y channel, which is
    ITU-R 601 luma: within rounding of converting the decoded RGB), skipping the chroma.
    ``decode_size``: ``(w, h) -> (min_w, min_h)``, the least size the caller needs of an image of size
    ``(w, h)``; a JPEG is then decoded at the smallest of libjpeg's scales 1/2, 1/4, 1/8 that keeps both
    (``Image.draft``: the scaling is done on the DCT coefficients, a low-pass reduction), in full otherwise."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        # the size is checked here, explicitly: Pillow's own warning would only be printed
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageTooLarge(f"{w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
                                    f"{max_pixels / 1e6:.0f} (skipped)")
            if im.format == "JPEG" and (mode == "L" or decode_size is not None):
                im.draft(mode if mode == "L" else "RGB", tuple(decode_size(w, h)) if decode_size else im.size)
            im.load()
            return im if im.mode == mode else im.convert(mode)


class ImageFiles:
    """Map-style dataset: item i -> (i, array or None, error message or None)."""

    def __init__(self, paths: Sequence[str | Path], preprocess: Callable):
        self.paths = [str(p) for p in paths]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            # a preprocessing that only needs luma says so (``decode_mode = "L"``: local features)
            # and one that needs fewer pixels than the file has says how many (``decode_size``)
            mode = getattr(self.preprocess, "decode_mode", "RGB")
            size = getattr(self.preprocess, "decode_size", None)
            return i, self.preprocess(read_image(self.paths[i], mode=mode, decode_size=size)), None
        except Exception as e:  # noqa: BLE001 - any failure is reported by id, not raised
            return i, None, f"{type(e).__name__}: {e}"


class ImageSource:
    """Images addressed by id, for the steps that need pixels: local features, sub-image views and
    the matchers of the matching track.

    A source knows its ids and builds, for a model's preprocessing, a map-style dataset whose item i
    is ``(i, array or None, error or None)`` (the contract of :class:`ImageFiles`, so every
    extraction path takes it). Benchmark images come from files (:meth:`files`); the robustness
    suite's edited queries come from a factory that edits on the fly (never written to disk).

    Args:
        ids: (n,) image ids.
        make: ``make(positions, preprocess) -> dataset`` over the images at ``positions`` of ``ids``.
        key: what the images are (e.g. ``"<manifest sha256>/query"``), so caches of features made
            from them are never mixed with another set of images.
    """

    def __init__(self, ids: Sequence[str], make: Callable[[list[int], Callable], object], key: str):
        self.ids = np.asarray([str(i) for i in ids], dtype=str)
        self.key = str(key)
        self._make = make
        self._pos = {i: k for k, i in enumerate(self.ids)}
        if len(self._pos) != len(self.ids):
            raise ValueError(f"image source {key!r}: repeated ids")

    @classmethod
    def files(cls, ids: Sequence[str], paths: Sequence[str | Path], key: str) -> "ImageSource":
        """A source over image files (``paths[k]`` is the image of ``ids[k]``)."""
        paths = [str(p) for p in paths]
        if len(paths) != len(ids):
            raise ValueError(f"{len(paths)} paths for {len(ids)} ids")
        return cls(ids, lambda pos, pre: ImageFiles([paths[k] for k in pos], pre), key)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id in :attr:`ids` (ValueError naming the first unknown id)."""
        try:
            return np.fromiter((self._pos[str(i)] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise ValueError(f"image source {self.key!r} has no image {e.args[0]!r}") from None

    def dataset(self, preprocess: Callable, ids: Sequence[str] | None = None):
        """The dataset of ``ids`` (default: all, in order) with ``preprocess`` applied."""
        pos = list(range(len(self.ids))) if ids is None else self.positions(ids).tolist()
        return self._make(pos, preprocess)


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
    """One thread per worker: the model in the main process owns the cores.

    OpenCV is not touched here: a worker is forked, and when the parent has run OpenCV's thread
    pool (local features), calling into it from the child can wait forever on a lock copied in
    the locked state. No worker uses OpenCV (local features are extracted in the main process's
    threads, :mod:`imsim_lab.features.localstore`).
    """
    import torch

    torch.set_num_threads(1)


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
