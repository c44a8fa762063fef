"""Descriptors of sub-image views, made inside the extraction pipeline and stored per view.

``extract_views(model, data, ids, views, folder, name)``:

1. a :class:`ViewPlan` lists every (parent, view) pair: the view sets of
   :data:`~imsim_lab.features.views.VIEWS` (or a callable ``(parent id, size) -> list[View]``, for
   detector or oracle boxes) on each parent's size; views below ``min_side`` pixels are left out
   and counted (:attr:`ViewSet.skipped`), never upsampled;
2. :class:`ViewDataset` makes each view on the fly (item = one (parent, view) pair; the decoded
   parent is kept per thread or worker, so a parent's views in one batch decode it once) with
   the model's ``preprocess``; it is embedded by
   :func:`~imsim_lab.features.extract.embedded_batches` (DataLoader workers or CPU streams, as for
   whole images); no view is written to disk as an image;
3. shards of view rows are written and merged with :mod:`imsim_lab.features.store`'s functions
   (resumable: a killed run restarts at the first missing shard). Files of split ``name``::

       folder/name.npy         (m, d) one row per view that was made
       folder/name_ids.npy     (m,) the plan row of each descriptor row (as text)
       folder/name_views.npz   the plan: parent_ids, view_names, boxes, rotations, sizes, skipped
       folder/name_failed.json unreadable parents [{"id", "error"}], when any
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_write_npz
from .dataset import ImageFiles, ImageSource, ordered_threads
from .extract import ExtractConfig, batches_of, embedded_batches
from .store import check_meta, has_features, load_features, merge_shards, remove_shards, shard_path, write_shard
from .views import View, ViewError, apply_view, make_views, too_small, view_size


@dataclass(frozen=True)
class ViewConfig:
    """Which views to make.

    Attributes:
        views: names of registered view sets (:data:`~imsim_lab.features.views.VIEWS`), in order.
        min_side: a view whose short side is below this many pixels (before preprocessing) is
            not made; it is counted in :attr:`ViewSet.skipped`.
    """

    views: tuple[str, ...] = ("identity",)
    min_side: int = 32

    def __post_init__(self):
        object.__setattr__(self, "views", (self.views,) if isinstance(self.views, str) else tuple(self.views))
        if self.min_side < 1:
            raise ViewError(f"min_side must be >= 1 pixel, got {self.min_side}")


@dataclass(frozen=True, eq=False)
class ViewPlan:
    """The views to make, one row each. Shapes: ``parent`` (m,) position of the parent in the
    split's ids, ``parent_ids`` (m,), ``view_names`` (m,), ``boxes`` (m, 4) fractions,
    ``rotations`` (m,), ``sizes`` (m, 2) pixel (w, h) of the view; ``skipped``: view name -> count
    of views left out by ``min_side``."""

    parent: np.ndarray
    parent_ids: np.ndarray
    view_names: np.ndarray
    boxes: np.ndarray
    rotations: np.ndarray
    sizes: np.ndarray
    skipped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.parent)

    def view(self, k: int) -> View:
        return View(str(self.view_names[k]), tuple(self.boxes[k]), int(self.rotations[k]))

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.parent_ids, self.view_names, self.boxes, self.rotations, self.sizes):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class ViewSet:
    """Descriptors of views. Shapes: ``parent_ids`` (m,), ``view_names`` (m,), ``boxes`` (m, 4)
    fractions of the parent, ``rotations`` (m,), ``sizes`` (m, 2) pixel (w, h) of each view,
    ``x`` (m, d); ``skipped``: view name -> views left out by ``min_side``; ``failed``: unreadable
    parents ``[{"id", "error"}]``."""

    parent_ids: np.ndarray
    view_names: np.ndarray
    boxes: np.ndarray
    rotations: np.ndarray
    sizes: np.ndarray
    x: np.ndarray
    skipped: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.parent_ids)


def make_plan(ids: Sequence[str], sizes: np.ndarray, views: ViewConfig | Callable, min_side: int | None = None
              ) -> ViewPlan:
    """The views of every parent.

    Args:
        ids: (n,) parent ids; ``sizes``: (n, 2) their (w, h).
        views: a :class:`ViewConfig`, or ``views(parent_id, size) -> list[View]`` (then ``min_side``
            is required).
    """
    if isinstance(views, ViewConfig):
        min_side = views.min_side if min_side is None else min_side
        names = views.views
        gen = lambda _id, size: make_views(names, size)  # noqa: E731
    elif min_side is None:
        raise ViewError("make_plan: min_side is needed with a view callable")
    else:
        gen = views
    rows, skipped = [], {}
    for p, (pid, size) in enumerate(zip(ids, np.asarray(sizes).reshape(-1, 2))):
        size = (int(size[0]), int(size[1]))
        for v in gen(str(pid), size):
            if too_small(v, size, min_side):
                skipped[v.name] = skipped.get(v.name, 0) + 1
            else:
                rows.append((p, str(pid), v, view_size(v, size)))
    return ViewPlan(
        parent=np.array([r[0] for r in rows], np.int64),
        parent_ids=np.array([r[1] for r in rows], dtype=str).astype("U"),
        view_names=np.array([r[2].name for r in rows], dtype=str).astype("U"),
        boxes=np.array([r[2].box for r in rows], np.float64).reshape(-1, 4),
        rotations=np.array([r[2].rotation for r in rows], np.int16),
        sizes=np.array([r[3] for r in rows], np.int32).reshape(-1, 2), skipped=skipped)


def keep_image(img):
    """The identity preprocessing: the parent dataset yields PIL images (picklable)."""
    return img


class ViewDataset:
    """Map-style dataset over a plan: item k -> (k, preprocess(view k) or None, error or None).

    Args:
        parents: a dataset whose item i is ``(i, PIL image or None, error or None)`` (an
            :class:`~imsim_lab.features.dataset.ImageFiles` or ``ImageSource.dataset`` with
            :func:`keep_image`).
        plan: the views; ``plan.parent[k]`` indexes ``parents``.
        preprocess: the model's preprocessing (PIL image -> array).

    The last decoded parent is kept per thread (and so per worker process), so that the views
    of one parent made one after the other decode it once.
    """

    def __init__(self, parents, plan: ViewPlan, preprocess: Callable):
        self.parents, self.plan, self.preprocess = parents, plan, preprocess
        self._local = threading.local()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.plan)

    def _parent(self, p: int):
        if getattr(self._local, "pos", None) != p:
            _, img, err = self.parents[p]
            self._local.pos, self._local.item = p, (img, err)
        return self._local.item

    def __getitem__(self, k: int):
        img, err = self._parent(int(self.plan.parent[k]))
        if err is not None:
            return k, None, err
        try:
            return k, self.preprocess(apply_view(img, self.plan.view(k))), None
        except Exception as e:  # noqa: BLE001 - reported by parent id, like an unreadable image
            return k, None, f"{type(e).__name__}: {e}"


def parents_dataset(data, ids: Sequence[str]):
    """Parents as PIL images: ``data`` is a list of paths (same order as ``ids``) or an
    :class:`~imsim_lab.features.dataset.ImageSource` (its images ``ids``)."""
    if isinstance(data, ImageSource):
        return data.dataset(keep_image, ids)
    if len(data) != len(ids):
        raise ViewError(f"{len(data)} paths for {len(ids)} ids")
    return ImageFiles(list(data), keep_image)


def parent_sizes(data, ids: Sequence[str], threads: int = 2) -> tuple[np.ndarray, list[dict]]:
    """(n, 2) (w, h) of each parent (-1 when unreadable) and the failures ``[{"id", "error"}]``.

    Paths: read from the file headers. An ImageSource: its images are made (decoded) once.
    """
    if not isinstance(data, ImageSource):
        from .oracle import image_size

        def one(path):
            try:
                return image_size(path), None
            except Exception as e:  # noqa: BLE001
                return None, f"{type(e).__name__}: {e}"

        got = list(ordered_threads(one, [str(p) for p in data], threads, ahead=4 * threads))
    else:
        ds = parents_dataset(data, ids)
        got = [(img.size, None) if err is None else (None, err)
               for _, img, err in ordered_threads(ds.__getitem__, range(len(ids)), threads, 4 * threads)]
    sizes = np.array([s if s is not None else (-1, -1) for s, _ in got], np.int64).reshape(-1, 2)
    failed = [{"id": str(i), "error": e} for i, (_, e) in zip(ids, got) if e is not None]
    return sizes, failed


def _plan_file(folder: Path, name: str) -> Path:
    return folder / f"{name}_views.npz"


def save_plan(folder: Path, name: str, plan: ViewPlan, failed: list[dict]) -> None:
    atomic_write_npz(_plan_file(folder, name), parent_ids=plan.parent_ids, view_names=plan.view_names,
                     boxes=plan.boxes, rotations=plan.rotations, sizes=plan.sizes,
                     skipped=np.array(json.dumps(plan.skipped)), failed=np.array(json.dumps(failed)))


def has_views(folder: str | Path, name: str) -> bool:
    return has_features(folder, name) and _plan_file(Path(folder), name).is_file()


def load_views(folder: str | Path, name: str, mmap: bool = True) -> ViewSet:
    """A finished view split (``x`` memory-mapped when ``mmap``)."""
    folder = Path(folder)
    fs = load_features(folder, name, mmap=mmap)
    with np.load(_plan_file(folder, name), allow_pickle=False) as z:
        rows = fs.ids.astype(np.int64)
        failed = json.loads(str(z["failed"]))
        seen = {f["id"] for f in failed}
        for f in fs.failed:  # one entry per parent, not per view
            if f["id"] not in seen:
                seen.add(f["id"])
                failed.append({"id": f["id"], "error": f["error"]})
        return ViewSet(z["parent_ids"][rows], z["view_names"][rows], z["boxes"][rows], z["rotations"][rows],
                       z["sizes"][rows], fs.x, json.loads(str(z["skipped"])), failed)


def extract_views(model, data, ids: Sequence[str], views: ViewConfig | Callable, folder: str | Path, name: str,
                  config: ExtractConfig = ExtractConfig(), min_side: int | None = None,
                  sizes: np.ndarray | None = None) -> ViewSet:
    """Embed the views of the images ``ids`` and store them per view (see the module docstring).

    Args:
        model: a :class:`~imsim_lab.features.models.base.DescriptorModel`.
        data: image paths (``data[k]`` is ``ids[k]``) or an :class:`~imsim_lab.features.dataset.ImageSource`.
        ids: (n,) parent ids.
        views: a :class:`ViewConfig` or a callable ``(parent id, (w, h)) -> list[View]`` (with ``min_side``).
        folder, name: output folder and split name.
        config: batching, workers or streams, shards (of views), storage dtype.
        sizes: (n, 2) parent (w, h) when known (else read, see :func:`parent_sizes`).

    Returns:
        the :class:`ViewSet` (``x`` memory-mapped), rows in plan order, failed parents left out.
    """
    folder = Path(folder)
    ids = np.asarray([str(i) for i in ids], dtype=str)
    if has_views(folder, name):
        done = load_views(folder, name)
        if done.x.shape[1] == model.dim:
            return done
    if sizes is None:
        sizes, failed = parent_sizes(data, ids)
    else:
        sizes, failed = np.asarray(sizes, np.int64).reshape(-1, 2), []
    ok = sizes[:, 0] > 0
    plan = make_plan(ids[ok], sizes[ok], views, min_side)
    plan = ViewPlan(np.flatnonzero(ok)[plan.parent], *(getattr(plan, f) for f in
                    ("parent_ids", "view_names", "boxes", "rotations", "sizes", "skipped")))
    shard_dir = folder / "shards" / name
    ss = config.shard_size
    n_shards = max(1, -(-len(plan) // ss))
    shard_dir.mkdir(parents=True, exist_ok=True)
    check_meta(shard_dir, {"model": model.config.fingerprint(), "model_name": model.config.name, "views": plan.digest(),
                           "n": len(plan), "shard_size": ss, "dtype": config.dtype, "dim": model.dim})
    todo = [s for s in range(n_shards) if not shard_path(shard_dir, s).is_file()]
    if todo:
        dataset = ViewDataset(parents_dataset(data, ids), plan, model.preprocess)
        _run(model, dataset, plan, shard_dir, todo, config)
    save_plan(folder, name, plan, failed)
    merge_shards(shard_dir, n_shards, folder, name, model.dim, np.dtype(config.dtype))
    remove_shards(shard_dir, n_shards)
    return load_views(folder, name)


def _run(model, dataset: ViewDataset, plan: ViewPlan, shard_dir: Path, todo: list[int], config: ExtractConfig) -> None:
    ss, m, dtype = config.shard_size, len(plan), np.dtype(config.dtype)
    batches = [b for s in todo for b in batches_of(min(m, (s + 1) * ss), config.batch_size, start=s * ss)]
    acc: dict[int, list] = {s: [[], [], {}] for s in todo}

    def flush(s):
        xs, rows, failed = acc.pop(s)
        x = np.concatenate(xs).astype(dtype) if xs else np.zeros((0, model.dim), dtype)
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        write_shard(shard_dir, s, r.astype(str), x, [{"id": k, "error": e} for k, e in failed.items()])

    for idx, x, failures in embedded_batches(model, dataset, batches, config):
        s = int((idx[0] if len(idx) else failures[0][0]) // ss)
        for earlier in [t for t in acc if t < s]:  # batches come in order: earlier shards are complete
            flush(earlier)
        if len(idx):
            acc[s][0].append(x)
            acc[s][1].append(np.asarray(idx, np.int64))
        for k, msg in failures:
            acc[s][2].setdefault(str(plan.parent_ids[k]), msg)
    for s in sorted(acc):
        flush(s)
