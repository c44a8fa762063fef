"""Training data: images that give two views each, ground-truth pairs, and the epoch sampler.

Items are addressed by ``(index, epoch)`` so that every random choice is a pure function of
(seed, epoch, index) (:func:`imsim_lab.train.views.view_rng`): the same batch comes out whatever
the number of DataLoader workers, on every rank, and after a resume.

* :class:`TwoViewImages`: image i -> (moderate view, hard view) with label i, plus optional extra
  negatives (reference images, label ``negative_offset + j``; lyakaap v98 adds 2 per sample).
* :class:`PairImages`: ground-truth (query, reference) pairs with label = pair index, plain
  resize, plus random non-matching references as negatives (lyakaap's fine-tune, v107).
* :class:`EpochBatches`: the batches of one epoch for one rank, from a seeded permutation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.augment import Assets
from ..errors import ImsimError
from .views import ViewStage, hard_view, moderate_view, view_rng

#: label of the j-th extra negative image: far above any training index
NEGATIVE_OFFSET = 10**9


class TrainDataError(ImsimError):
    """A training image cannot be used; the message names the file."""


def load_rgb(path: str | Path):
    """Open an image as RGB, or raise :class:`TrainDataError` naming the file and the problem."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise TrainDataError(f"{path}: training image not found") from None
    except Exception as e:  # noqa: BLE001 - any decoder error becomes a named one
        raise TrainDataError(f"{path}: unreadable training image ({type(e).__name__}: {e})") from None


def to_array(img, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """PIL RGB -> (3, h, w) float32 normalised with ``mean``/``std`` (the model config's)."""
    a = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (a - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]


class _ImagesById:
    """id -> RGB image, picklable (DataLoader workers under the "spawn" start method)."""

    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    def __call__(self, image_id: str):
        return load_rgb(self.paths[image_id])


class TwoViewImages:
    """Two views of each training image (map-style dataset addressed by ``(index, epoch)``).

    Args:
        paths: the training images; ``ids``: their ids (for overlays drawn from the set).
        stage: view magnitudes and size (:data:`imsim_lab.train.views.STAGES`).
        mean, std: normalisation of the model (``model.config.mean``, ``.std``).
        seed: global seed.
        negatives: extra negative images (reference images), ``n_negatives`` per sample
            (moderate view, labels ``NEGATIVE_OFFSET + j``).
        assets: fonts/emoji and other images by id (default: the training images themselves).
        hard_only: both views hard (two independent draws) instead of one moderate and one hard
            (random erasing stays on the second view only).

    Item: ``(x, y)`` with x (2 + n_negatives, 3, s, s) float32 and y (2 + n_negatives,) int64.
    """

    def __init__(self, paths: Sequence[str | Path], stage: ViewStage, mean, std, seed: int = 0,
                 ids: Sequence[str] | None = None, negatives: Sequence[str | Path] = (), n_negatives: int = 0,
                 assets: Assets | None = None, hard_only: bool = False):
        self.hard_only = bool(hard_only)
        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise TrainDataError("no training images")
        self.ids = tuple(str(i) for i in ids) if ids is not None else tuple(Path(p).stem for p in self.paths)
        if len(self.ids) != len(self.paths):
            raise ValueError(f"{len(self.ids)} ids for {len(self.paths)} paths")
        self.stage, self.mean, self.std, self.seed = stage, tuple(mean), tuple(std), int(seed)
        self.negatives = [str(p) for p in negatives]
        self.n_negatives = int(n_negatives) if self.negatives else 0
        self.assets = assets or Assets.from_augly(images=_ImagesById(dict(zip(self.ids, self.paths))),
                                                  image_ids=self.ids, seed=self.seed)

    def __len__(self) -> int:
        return len(self.paths)

    def views(self, index: int, epoch: int = 0):
        """The two PIL views of image ``index`` at ``epoch`` and the names of their steps."""
        img = load_rgb(self.paths[index])
        a, sa = moderate_view(img, self.stage, view_rng(self.seed, epoch, index, 0)) if not self.hard_only else \
            hard_view(img, self.stage, view_rng(self.seed, epoch, index, 4), self.assets, self.ids, exclude=self.ids[index])
        b, sb = hard_view(img, self.stage, view_rng(self.seed, epoch, index, 1), self.assets, self.ids,
                          exclude=self.ids[index])
        return (a, sa), (b, sb)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        (a, _), (b, _) = self.views(index, epoch)
        xs = [to_array(a, self.mean, self.std)]
        xb = to_array(b, self.mean, self.std)
        if self.stage.erase_p > 0:
            g = view_rng(self.seed, epoch, index, 2)
            if g.random() < self.stage.erase_p:
                from .views import random_erase

                xb = random_erase(xb, g)
        xs.append(xb)
        labels = [index, index]
        if self.n_negatives:
            g = view_rng(self.seed, epoch, index, 3)
            for j in g.choice(len(self.negatives), size=min(self.n_negatives, len(self.negatives)), replace=False):
                v, _ = moderate_view(load_rgb(self.negatives[j]), self.stage, g)
                xs.append(to_array(v, self.mean, self.std))
                labels.append(NEGATIVE_OFFSET + int(j))
        return np.stack(xs), np.asarray(labels, np.int64)


class PairImages:
    """Ground-truth (query, reference) pairs for the fine-tune, plus random non-matching references.

    Args:
        query_paths, reference_paths: the pairs (same length; pair i has label i).
        negatives: reference images that are nobody's match, ``n_negatives`` per sample.
        size: square resize (no augmentation, as in lyakaap's v107).

    Item: ``(x, y)`` with x (2 + n_negatives, 3, size, size), y (2 + n_negatives,).
    """

    def __init__(self, query_paths, reference_paths, size: int, mean, std, seed: int = 0,
                 negatives: Sequence[str | Path] = (), n_negatives: int = 0):
        if len(query_paths) != len(reference_paths):
            raise ValueError(f"{len(query_paths)} queries for {len(reference_paths)} references")
        if not len(query_paths):
            raise TrainDataError("no ground-truth pairs to fine-tune on")
        self.q, self.r = [str(p) for p in query_paths], [str(p) for p in reference_paths]
        self.size, self.mean, self.std, self.seed = int(size), tuple(mean), tuple(std), int(seed)
        self.negatives = [str(p) for p in negatives]
        self.n_negatives = int(n_negatives) if self.negatives else 0

    def __len__(self) -> int:
        return len(self.q)

    def _load(self, path):
        from PIL import Image

        return to_array(load_rgb(path).resize((self.size, self.size), Image.BILINEAR), self.mean, self.std)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        xs = [self._load(self.q[index]), self._load(self.r[index])]
        labels = [index, index]
        if self.n_negatives:
            g = view_rng(self.seed, epoch, index, 3)
            for j in g.choice(len(self.negatives), size=min(self.n_negatives, len(self.negatives)), replace=False):
                xs.append(self._load(self.negatives[j]))
                labels.append(NEGATIVE_OFFSET + int(j))
        return np.stack(xs), np.asarray(labels, np.int64)


class EpochBatches:
    """Batches of ``(index, epoch)`` keys for one rank.

    Epoch e uses the permutation of ``default_rng([seed, e])``; the global batch of
    ``batch_size * world_size`` items is cut into ``world_size`` consecutive parts, rank r takes
    part r. The last incomplete global batch is dropped (every rank does the same number of steps).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.global_batch = batch_size * world_size
        if n < self.global_batch:
            raise TrainDataError(f"{n} training items cannot fill one global batch of {self.global_batch} "
                                 f"({batch_size} per process x {world_size}); lower the batch size")

    def __len__(self) -> int:
        return self.n // self.global_batch

    def batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
        """The rank's batches of ``epoch`` from batch number ``start`` on."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        out = []
        for b in range(start, len(self)):
            g = perm[b * self.global_batch:(b + 1) * self.global_batch]
            part = g[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            out.append([(int(i), int(epoch)) for i in part])
        return out


def collate(items):
    """Stack items ``(x (v, 3, h, w), y (v,))`` into tensors (b * v, 3, h, w), (b * v,)."""
    import torch

    x = torch.from_numpy(np.concatenate([it[0] for it in items]))
    y = torch.from_numpy(np.concatenate([it[1] for it in items]))
    return x, y


# ------------------------------------------------------------------------------------------------
# "sync" loading: a pool of processes makes each batch while the training step waits

_POOL_DATASET = None


def _pool_init(dataset) -> None:
    """Pool worker start (forked: ``dataset`` is inherited, not pickled): one torch thread."""
    global _POOL_DATASET
    import torch

    torch.set_num_threads(1)
    _POOL_DATASET = dataset


def _pool_item(key):
    return _POOL_DATASET[key]


class SyncBatches:
    """Batches made by ``workers`` forked processes *between* training steps, not during them.

    A DataLoader's workers make the next batches while the step runs: on a machine whose cores the
    step's threads already fill (a CPU run), each worker time slice stops one of the step's threads
    and the others wait for it at the next barrier, so the step loses more CPU than the views cost.
    Here the step and the views take turns and each phase uses every core. Items are addressed by
    ``(index, epoch)``, so the batches equal the DataLoader's. Use as a context manager; ``batches()``
    yields collated ``(x, y)``. An item's error (e.g. :class:`TrainDataError`) is raised in the caller.
    """

    def __init__(self, dataset, workers: int):
        if workers < 1:
            raise ValueError("SyncBatches needs at least one worker")
        self.dataset, self.workers, self.pool = dataset, int(workers), None

    def __enter__(self):
        import multiprocessing

        self.pool = multiprocessing.get_context("fork").Pool(self.workers, initializer=_pool_init,
                                                             initargs=(self.dataset,))
        return self

    def __exit__(self, *exc):
        self.pool.terminate()
        self.pool.join()
        return False

    def batches(self, keys):
        for batch in keys:
            chunk = max(1, -(-len(batch) // self.workers))
            yield collate(self.pool.map(_pool_item, batch, chunksize=chunk))
