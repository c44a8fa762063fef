"""The official ISC2021 / DISC21 file formats, read and written with validation.

Formats (``docs/PROTOCOLS.md``):

* ground truth CSV: header ``query_id,reference_id``; every query has a row, an empty reference
  when it has no match;
* matching-track CSV: header ``query_id,reference_id,score`` (higher = more similar), at most
  500,000 rows;
* descriptor-track HDF5: datasets ``query`` (nq x d), ``reference`` (nr x d), ``query_ids`` and
  ``reference_ids`` (ASCII bytes, sorted ascending, unique); d <= 256;
* isc2021's per-split HDF5: ``vectors`` and ``image_names`` (path and extension stripped on read).

Every reader raises :class:`~imsim_lab.errors.FormatError` naming the file, the row or dataset and
the problem. Nothing is silently dropped. Taught in ``notebooks/01_benchmark_and_metric``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..errors import FormatError
from .csvread import EXAMPLE_ID, ID_PATTERNS, quote, read_table

GT_HEADER = ("query_id", "reference_id")
PREDICTIONS_HEADER = ("query_id", "reference_id", "score")
MAX_PREDICTIONS = 500_000
MAX_DESCRIPTOR_DIM = 256
#: the most that reading one HDF5 file may allocate (DISC21 at d = 256 in float32 is about 1 GiB)
MAX_READ_BYTES = 8 * 2**30


# --------------------------------------------------------------------------------------------
# containers


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The ground truth of a query set.

    Shapes: ``query_ids`` (n,) and ``reference_ids`` (n,), str; one row per line of the file;
    ``reference_ids[i] == ""`` when query i has no match.
    """

    query_ids: np.ndarray
    reference_ids: np.ndarray
    path: str | None = None

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str | None]], path: str | None = None) -> "GroundTruth":
        rows = [(q, r or "") for q, r in pairs]
        q = np.array([r[0] for r in rows], dtype=object)
        r = np.array([r[1] for r in rows], dtype=object)
        return cls(q, r, path)

    @property
    def positive_mask(self) -> np.ndarray:
        return self.reference_ids != ""

    @property
    def positives(self) -> tuple[np.ndarray, np.ndarray]:
        """(query_ids, reference_ids) of the pairs with a match."""
        m = self.positive_mask
        return self.query_ids[m], self.reference_ids[m]

    @property
    def n_positives(self) -> int:
        return int(self.positive_mask.sum())

    @property
    def queries(self) -> np.ndarray:
        """Sorted unique query ids listed in the file."""
        return np.unique(self.query_ids.astype(str))

    def __len__(self) -> int:
        return len(self.query_ids)


@dataclass(frozen=True, eq=False)
class Predictions:
    """Scored (query, reference) pairs; score: higher = more similar.

    Shapes: ``query_ids`` (n,), ``reference_ids`` (n,) str; ``scores`` (n,) float64.
    """

    query_ids: np.ndarray
    reference_ids: np.ndarray
    scores: np.ndarray
    path: str | None = None
    #: optional caches of the CSV reader, which gets them for free: integer codes with equal
    #: codes for equal ids, and the query vocabulary (``query_vocab[query_codes] == query_ids``)
    reference_codes: np.ndarray | None = field(default=None, repr=False)
    query_codes: np.ndarray | None = field(default=None, repr=False)
    query_vocab: np.ndarray | None = field(default=None, repr=False)
    #: True when the reader already refused repeated (query, reference) pairs
    pairs_checked_unique: bool = field(default=False, repr=False)

    def __post_init__(self):
        n = len(self.query_ids)
        if len(self.reference_ids) != n or len(self.scores) != n:
            raise ValueError("query_ids, reference_ids and scores must have the same length")

    @classmethod
    def from_triples(cls, triples: Iterable[tuple[str, str, float]]) -> "Predictions":
        t = list(triples)
        return cls(
            np.array([x[0] for x in t], dtype=object),
            np.array([x[1] for x in t], dtype=object),
            np.array([x[2] for x in t], dtype=np.float64),
        )

    @classmethod
    def empty(cls) -> "Predictions":
        return cls(np.array([], dtype=object), np.array([], dtype=object), np.array([], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True, eq=False)
class DescriptorSubmission:
    """A descriptor-track submission.

    Shapes: ``xq`` (nq, d) float32 with ``query_ids`` (nq,); ``xb`` (nr, d) float32 with
    ``reference_ids`` (nr,). Distances are Euclidean (``docs/PROTOCOLS.md``, descriptor track).
    """

    query_ids: np.ndarray
    xq: np.ndarray
    reference_ids: np.ndarray
    xb: np.ndarray
    path: str | None = None


# --------------------------------------------------------------------------------------------
# helpers


def first_repeat(*codes: np.ndarray) -> int | None:
    """Index of the first row whose tuple of codes repeats an earlier row, or None.

    Args:
        codes: one or more (n,) arrays of non-negative integer codes (equal codes for equal ids).
    """
    n = len(codes[0])
    if n < 2:
        return None
    if np.prod([float(c.max()) + 1 for c in codes]) >= 2**62:  # the combined key would overflow
        codes = tuple(np.unique(c, return_inverse=True)[1].ravel() for c in codes)
    key = np.zeros(n, np.int64)
    for c in codes:
        key = key * (int(c.max()) + 1) + c
    sk = np.sort(key)
    if not (sk[1:] == sk[:-1]).any():
        return None
    _, first = np.unique(key, return_index=True)  # the first row of each key
    repeated = np.ones(n, bool)
    repeated[first] = False
    return int(np.flatnonzero(repeated)[0])


# --------------------------------------------------------------------------------------------
# ground truth


def read_ground_truth(path: str | Path) -> GroundTruth:
    """Read an official ground-truth CSV (``query_id,reference_id``).

    Raises FormatError on a wrong header, malformed ids, a duplicated row, or a query listed both
    with and without a match.
    """
    path = Path(path)
    t = read_table(path, GT_HEADER, ("query", "reference"), (False, True), score_column=False)
    if t.n == 0:
        raise FormatError(path, "no rows after the header")
    (q, qc, _), (r, rc, _) = [(c.values, c.codes, c.vocab) for c in t.ids]
    dup = first_repeat(qc, rc)
    if dup is not None:
        raise FormatError(path, f"duplicate row {q[dup]},{r[dup]}", f"row {t.row(dup)}")
    has = r != ""
    neg = np.zeros(int(qc.max()) + 1, bool)
    neg[qc[~has]] = True
    both = np.flatnonzero(has & neg[qc])
    if len(both):
        i = int(both[0])
        raise FormatError(path, f"query {q[i]} is listed both without a match and with one", f"row {t.row(i)}")
    return GroundTruth(q, r, str(path))


def write_ground_truth(path: str | Path, gt: GroundTruth) -> None:
    """Write ``gt`` as an official ground-truth CSV, rows in the order of ``gt`` (atomic)."""
    lines = [",".join(GT_HEADER)]
    lines += [f"{q},{r}" for q, r in zip(gt.query_ids, gt.reference_ids)]
    atomic_write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# matching-track predictions


def read_predictions(path: str | Path, max_rows: int | None = MAX_PREDICTIONS,
                     allow_duplicates: bool = False) -> Predictions:
    """Read a matching-track CSV (``query_id,reference_id,score``).

    Args:
        path: the CSV file.
        max_rows: the row cap (isc2021: 500,000); None for no cap.
        allow_duplicates: keep repeated (query, reference) pairs (DrivenData counts them again);
            by default a repeated pair is an error, as in isc2021.

    Raises FormatError naming the row on a wrong header, an empty or malformed id, a
    non-numeric, NaN or infinite score, a duplicate pair, or too many rows.
    """
    path = Path(path)
    t = read_table(path, PREDICTIONS_HEADER, ("query", "reference"), (False, False), score_column=True,
                   max_rows=max_rows)
    (q, qc, qvocab), (r, rc, _) = [(c.values, c.codes, c.vocab) for c in t.ids]
    if not allow_duplicates:
        dup = first_repeat(qc, rc)
        if dup is not None:
            raise FormatError(path, f"duplicate prediction ({q[dup]}, {r[dup]})", f"row {t.row(dup)}")
    return Predictions(q, r, t.scores, str(path), reference_codes=rc, query_codes=qc, query_vocab=qvocab,
                       pairs_checked_unique=not allow_duplicates)


def write_predictions(path: str | Path, preds: Predictions) -> None:
    """Write ``preds`` as a matching-track CSV (scores with full float precision; atomic)."""
    lines = [",".join(PREDICTIONS_HEADER)]
    lines += [f"{q},{r},{s!r}" for q, r, s in zip(preds.query_ids, preds.reference_ids, preds.scores.tolist())]
    atomic_write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# HDF5 formats


def _h5():
    import h5py

    return h5py


def _open_h5(path: Path, required: tuple[str, ...]):
    """Open an HDF5 file for reading, checking that it holds the ``required`` datasets."""
    if not path.exists():
        raise FormatError(path, "file not found")
    try:
        f = _h5().File(path, "r")
    except OSError as e:
        raise FormatError(path, f"not a readable HDF5 file ({e})") from None
    for name in required:
        if name not in f:
            found = sorted(f.keys())
            f.close()
            raise FormatError(path, f"missing dataset (found: {found})", f"dataset '{name}'")
        if not isinstance(f[name], _h5().Dataset):
            kind = "a group" if isinstance(f[name], _h5().Group) else f"a {type(f[name]).__name__}"
            f.close()
            raise FormatError(path, f"is {kind}, expected a dataset", f"dataset '{name}'")
    return f


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


class _ReadBudget:
    """What reading the datasets of one file may allocate, checked from their metadata."""

    def __init__(self, path, max_bytes: int | None):
        self.path, self.left, self.max_bytes = path, max_bytes, max_bytes

    def take(self, name: str, shape: tuple, itemsize: int) -> None:
        if self.max_bytes is None:
            return
        need = int(np.prod(shape, dtype=np.float64)) * itemsize
        if need > self.left:
            dims = " x ".join(f"{d:,}" for d in shape)
            raise FormatError(self.path, f"declares {dims} values: reading them needs {_gib(need)}, more than the "
                                         f"limit of {_gib(self.max_bytes)} per file", f"dataset '{name}'")
        self.left -= need


def _ids_meta(ds, path, name, budget: _ReadBudget) -> int:
    """Check an id dataset from its metadata (1-D, strings); returns its length."""
    if len(ds.shape) != 1:
        raise FormatError(path, f"expected a 1-D array of ids, found shape {ds.shape}", f"dataset '{name}'")
    if ds.dtype.kind not in "SOU":
        raise FormatError(path, f"dtype {ds.dtype}, expected ASCII strings", f"dataset '{name}'")
    # bytes of the array plus one Python string per id
    budget.take(name, ds.shape, (ds.dtype.itemsize if ds.dtype.kind == "S" else 16) + 64)
    return ds.shape[0]


def _matrix_meta(ds, path, name: str, n_ids: int, max_dim: int | None, budget: _ReadBudget) -> None:
    """The checks of :func:`_check_matrix` done on a dataset's metadata, before any read."""
    _check_shape(ds.shape, ds.dtype, path, name, n_ids, max_dim)
    budget.take(name, ds.shape, ds.dtype.itemsize + 4)  # as stored, then as float32


def _check_shape(shape, dtype, path, name: str, n_ids: int, max_dim: int | None) -> None:
    if len(shape) != 2:
        raise FormatError(path, f"expected a 2-D array, found shape {tuple(shape)}", f"dataset '{name}'")
    if shape[0] != n_ids:
        raise FormatError(path, f"{shape[0]} vectors for {n_ids} ids", f"dataset '{name}'")
    if shape[1] < 1:
        raise FormatError(path, "0-dimensional descriptors (shape (n, 0))", f"dataset '{name}'")
    if max_dim is not None and shape[1] > max_dim:
        raise FormatError(path, f"{shape[1]} dimensions, more than {max_dim}", f"dataset '{name}'")
    if not np.issubdtype(dtype, np.floating):
        raise FormatError(path, f"dtype {dtype}, expected float32", f"dataset '{name}'")


def _decode_ids(ds, path, name) -> np.ndarray:
    raw = ds[()]
    try:
        ids = np.array([x.decode("ascii") if isinstance(x, bytes) else str(x) for x in raw], dtype=object)
    except UnicodeDecodeError:
        raise FormatError(path, "ids are not ASCII", f"dataset '{name}'") from None
    return ids


def _check_id_array(ids: np.ndarray, kind: str, path, dataset: str) -> None:
    pat = ID_PATTERNS[kind]
    for i, u in enumerate(ids):
        if not pat.fullmatch(u):
            raise FormatError(path, f"unknown {kind} id format {quote(u)} at position {i} "
                                    f"(expected like {EXAMPLE_ID[kind]})",
                              f"dataset '{dataset}'")


def _check_sorted_unique(ids: np.ndarray, path, name: str) -> None:
    s = ids.astype(str)
    if len(s) > 1:
        notinc = np.flatnonzero(s[1:] <= s[:-1])
        if len(notinc):
            i = notinc[0] + 1
            problem = "not unique" if s[i] == s[i - 1] else "not sorted ascending"
            raise FormatError(path, f"ids {problem}: {s[i - 1]!r} then {s[i]!r} at position {i}", f"dataset '{name}'")


def _check_matrix(x, path, name: str, n_ids: int, max_dim: int | None) -> np.ndarray:
    _check_shape(x.shape, x.dtype, path, name, n_ids, max_dim)
    x = np.asarray(x, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise FormatError(path, f"non-finite value in vector {bad[0]}", f"dataset '{name}'")
    return x


def read_descriptors(path: str | Path, max_dim: int | None = MAX_DESCRIPTOR_DIM,
                     max_bytes: int | None = MAX_READ_BYTES) -> DescriptorSubmission:
    """Read a descriptor-track HDF5 submission and validate it (see module docstring).

    Shapes, dtypes and counts are checked from the datasets' metadata before anything is read,
    and the file is refused when reading it would allocate more than ``max_bytes`` (None: no
    limit): a small file can declare huge datasets.
    """
    path = Path(path)
    with _open_h5(path, ("query", "reference", "query_ids", "reference_ids")) as f:
        budget = _ReadBudget(path, max_bytes)
        nq = _ids_meta(f["query_ids"], path, "query_ids", budget)
        nr = _ids_meta(f["reference_ids"], path, "reference_ids", budget)
        _matrix_meta(f["query"], path, "query", nq, max_dim, budget)
        _matrix_meta(f["reference"], path, "reference", nr, max_dim, budget)
        if f["query"].shape[1] != f["reference"].shape[1]:
            raise FormatError(path, f"query dimension {f['query'].shape[1]} differs from reference dimension "
                                    f"{f['reference'].shape[1]}")
        qids = _decode_ids(f["query_ids"], path, "query_ids")
        rids = _decode_ids(f["reference_ids"], path, "reference_ids")
        _check_id_array(qids, "query", path, "query_ids")
        _check_id_array(rids, "reference", path, "reference_ids")
        _check_sorted_unique(qids, path, "query_ids")
        _check_sorted_unique(rids, path, "reference_ids")
        xq = _check_matrix(f["query"][()], path, "query", len(qids), max_dim)
        xb = _check_matrix(f["reference"][()], path, "reference", len(rids), max_dim)
    if xq.shape[1] != xb.shape[1]:
        raise FormatError(path, f"query dimension {xq.shape[1]} differs from reference dimension {xb.shape[1]}")
    return DescriptorSubmission(qids, xq, rids, xb, str(path))


def _ascii(ids) -> np.ndarray:
    return np.array([str(i).encode("ascii") for i in ids], dtype="S")


def write_descriptors(path: str | Path, sub: DescriptorSubmission, max_dim: int | None = MAX_DESCRIPTOR_DIM) -> None:
    """Write a descriptor-track HDF5, sorting the ids ascending (atomic). Validates like the reader."""
    path = Path(path)
    qo = np.argsort(np.asarray(sub.query_ids).astype(str), kind="stable")
    ro = np.argsort(np.asarray(sub.reference_ids).astype(str), kind="stable")
    qids, rids = np.asarray(sub.query_ids)[qo], np.asarray(sub.reference_ids)[ro]
    _check_sorted_unique(qids, path, "query_ids")
    _check_sorted_unique(rids, path, "reference_ids")
    xq = _check_matrix(np.asarray(sub.xq)[qo], path, "query", len(qids), max_dim)
    xb = _check_matrix(np.asarray(sub.xb)[ro], path, "reference", len(rids), max_dim)
    if xq.shape[1] != xb.shape[1]:
        raise FormatError(path, f"query dimension {xq.shape[1]} differs from reference dimension {xb.shape[1]}")
    with atomic_path(path) as tmp, _h5().File(tmp, "w") as f:
        f.create_dataset("query", data=xq)
        f.create_dataset("reference", data=xb)
        f.create_dataset("query_ids", data=_ascii(qids))
        f.create_dataset("reference_ids", data=_ascii(rids))


def read_split_vectors(path: str | Path, max_bytes: int | None = MAX_READ_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Read isc2021's per-split HDF5 (``vectors``, ``image_names``), checked like :func:`read_descriptors`.

    Returns (ids, x): ids (n,) with folders and extensions stripped, x (n, d) float32.
    """
    path = Path(path)
    with _open_h5(path, ("vectors", "image_names")) as f:
        budget = _ReadBudget(path, max_bytes)
        n = _ids_meta(f["image_names"], path, "image_names", budget)
        _matrix_meta(f["vectors"], path, "vectors", n, None, budget)
        names = _decode_ids(f["image_names"], path, "image_names")
        ids = np.array([os.path.splitext(os.path.basename(n))[0] for n in names], dtype=object)
        x = _check_matrix(f["vectors"][()], path, "vectors", len(ids), None)
    return ids, x


def write_split_vectors(path: str | Path, ids, x: np.ndarray) -> None:
    """Write isc2021's per-split HDF5 (atomic)."""
    path = Path(path)
    x = _check_matrix(np.asarray(x), path, "vectors", len(ids), None)
    with atomic_path(path) as tmp, _h5().File(tmp, "w") as f:
        f.create_dataset("vectors", data=x)
        f.create_dataset("image_names", data=_ascii(ids))
