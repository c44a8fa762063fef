"""The official ISC2021 / DISC21 file formats, read and written with validation.

Formats (``shared/docs/PROTOCOL.md`` section 2):

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

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import FormatError

GT_HEADER = ("query_id", "reference_id")
PREDICTIONS_HEADER = ("query_id", "reference_id", "score")
MAX_PREDICTIONS = 500_000
MAX_DESCRIPTOR_DIM = 256

#: Accepted id formats, DISC21 style (benchmarks larger than DISC21 may use more digits).
ID_PATTERNS = {
    "query": re.compile(r"Q\d{5,}"),
    "reference": re.compile(r"R\d{6,}"),
    "training": re.compile(r"T\d{6,}"),
}


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
    ``reference_ids`` (nr,). Distances are Euclidean (PROTOCOL.md section 4).
    """

    query_ids: np.ndarray
    xq: np.ndarray
    reference_ids: np.ndarray
    xb: np.ndarray
    path: str | None = None


# --------------------------------------------------------------------------------------------
# helpers


def _check_ids(ids: np.ndarray, kind: str, path, where: str, offset: int = 0) -> None:
    """Raise on the first id (in file order) that does not match the format of ``kind``.

    ``where`` is formatted with the position of the bad id plus ``offset`` (2 for CSV rows:
    1-based, after the header).
    """
    pat = ID_PATTERNS[kind]
    uniq, first = np.unique(ids.astype(str), return_index=True)
    bad = [i for u, i in zip(uniq, first) if not pat.fullmatch(u)]
    if bad:
        i = min(bad)
        raise FormatError(path, f"unknown {kind} id format {str(ids[i])!r} (expected like "
                                f"{ {'query': 'Q00000', 'reference': 'R000000', 'training': 'T000000'}[kind]})",
                          where.format(i + offset))


def _open_text(path: Path):
    if not path.exists():
        raise FormatError(path, "file not found")
    if path.is_dir():
        raise FormatError(path, "is a folder, expected a CSV file")
    return open(path, newline="", encoding="utf-8-sig")


def _read_header(path: Path, expected: tuple[str, ...]) -> None:
    with _open_text(path) as f:
        first = f.readline()
    if not first.strip():
        raise FormatError(path, f"empty file; expected the header {','.join(expected)}", "row 1")
    header = tuple(h.strip() for h in next(csv.reader([first])))
    if header != expected:
        raise FormatError(path, f"wrong header {','.join(header)!r}; expected {','.join(expected)!r}", "row 1")


def _read_columns(path: Path, ncols: int):
    """Read the CSV body as string columns with pandas (fast C parser), keeping empty fields."""
    import pandas as pd

    try:
        # header=None + skiprows: the header is checked by _read_header, and a data row with an
        # extra field is an error instead of silently becoming an index column
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, header=None, skiprows=1,
                         skip_blank_lines=True, engine="c", encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return pd.DataFrame({i: pd.Series([], dtype=str) for i in range(ncols)})
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        raise FormatError(path, f"malformed CSV ({str(e).strip()})", f"row {m.group(1)}" if m else None) from None
    except UnicodeDecodeError as e:
        raise FormatError(path, f"not UTF-8 text ({e.reason})") from None
    if df.shape[1] != ncols:
        raise FormatError(path, f"expected {ncols} columns, found {df.shape[1]}", "row 2")
    return df


def _atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# ground truth


def read_ground_truth(path: str | Path) -> GroundTruth:
    """Read an official ground-truth CSV (``query_id,reference_id``).

    Raises FormatError on a wrong header, malformed ids, a duplicated row, or a query listed both
    with and without a match.
    """
    path = Path(path)
    _read_header(path, GT_HEADER)
    df = _read_columns(path, 2)
    q = df.iloc[:, 0].str.strip().to_numpy(dtype=object)
    r = df.iloc[:, 1].str.strip().to_numpy(dtype=object)
    if len(q) == 0:
        raise FormatError(path, "no rows after the header")
    empty_q = np.flatnonzero(q == "")
    if len(empty_q):
        raise FormatError(path, "empty query_id", f"row {empty_q[0] + 2}")
    _check_ids(q, "query", path, "row {}", 2)
    has = r != ""
    if has.any():
        rr = r[has]
        idx = np.flatnonzero(has)
        uniq, first = np.unique(rr.astype(str), return_index=True)
        bad = [i for u, i in zip(uniq, first) if not ID_PATTERNS["reference"].fullmatch(u)]
        if bad:
            i = idx[min(bad)]
            raise FormatError(path, f"unknown reference id format {r[i]!r} (expected like R000000)", f"row {i + 2}")
    keys = np.char.add(np.char.add(q.astype(str), ","), r.astype(str))
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = first[counts > 1].min()
        # the second occurrence is the offending row
        second = np.flatnonzero(keys == keys[dup])[1]
        raise FormatError(path, f"duplicate row {keys[dup]!r}", f"row {second + 2}")
    # a query listed with an empty reference AND with a reference is contradictory
    q_neg = set(q[~has].astype(str))
    if q_neg:
        both = np.flatnonzero(has & np.isin(q.astype(str), list(q_neg)))
        if len(both):
            raise FormatError(path, f"query {q[both[0]]} is listed both without a match and with one",
                              f"row {both[0] + 2}")
    return GroundTruth(q, r, str(path))


def write_ground_truth(path: str | Path, gt: GroundTruth) -> None:
    """Write ``gt`` as an official ground-truth CSV, rows in the order of ``gt`` (atomic)."""
    lines = [",".join(GT_HEADER)]
    lines += [f"{q},{r}" for q, r in zip(gt.query_ids, gt.reference_ids)]
    _atomic_write_text(Path(path), "\n".join(lines) + "\n")


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
    _read_header(path, PREDICTIONS_HEADER)
    df = _read_columns(path, 3)
    n = len(df)
    if max_rows is not None and n > max_rows:
        raise FormatError(path, f"{n} predictions, more than the limit of {max_rows}", f"row {max_rows + 2}")
    if n == 0:
        return Predictions(np.array([], object), np.array([], object), np.array([], np.float64), str(path))
    q = df.iloc[:, 0].str.strip().to_numpy(dtype=object)
    r = df.iloc[:, 1].str.strip().to_numpy(dtype=object)
    s_txt = df.iloc[:, 2].str.strip()
    import pandas as pd

    s = pd.to_numeric(s_txt, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(s))
    if len(bad):
        i = bad[0]
        what = "empty" if s_txt.iloc[i] == "" else ("NaN" if s_txt.iloc[i].lower() in ("nan", "-nan") else
                                                     "infinite" if np.isinf(s[i]) else "non-numeric")
        raise FormatError(path, f"{what} score {s_txt.iloc[i]!r}", f"row {i + 2}")
    for col, arr, kind in ((1, q, "query"), (2, r, "reference")):
        empty = np.flatnonzero(arr == "")
        if len(empty):
            raise FormatError(path, f"empty {PREDICTIONS_HEADER[col - 1]}", f"row {empty[0] + 2}")
        _check_ids(arr, kind, path, "row {}", 2)
    if not allow_duplicates:
        dup = find_duplicate_pairs(q, r)
        if dup is not None:
            raise FormatError(path, f"duplicate prediction ({q[dup]}, {r[dup]})", f"row {dup + 2}")
    return Predictions(q, r, s, str(path))


def find_duplicate_pairs(query_ids: np.ndarray, reference_ids: np.ndarray) -> int | None:
    """Index of the first row that repeats an earlier (query, reference) pair, or None."""
    if len(query_ids) == 0:
        return None
    _, qi = np.unique(query_ids.astype(str), return_inverse=True)
    _, ri = np.unique(reference_ids.astype(str), return_inverse=True)
    key = qi.astype(np.int64) * (int(ri.max()) + 1) + ri
    order = np.argsort(key, kind="stable")
    ks = key[order]
    rep = np.flatnonzero(ks[1:] == ks[:-1]) + 1
    if len(rep) == 0:
        return None
    return int(order[rep].min())


def write_predictions(path: str | Path, preds: Predictions) -> None:
    """Write ``preds`` as a matching-track CSV (scores with full float precision; atomic)."""
    lines = [",".join(PREDICTIONS_HEADER)]
    lines += [f"{q},{r},{s!r}" for q, r, s in zip(preds.query_ids, preds.reference_ids, preds.scores.tolist())]
    _atomic_write_text(Path(path), "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# HDF5 formats


def _h5():
    import h5py

    return h5py


def _decode_ids(ds, path, name) -> np.ndarray:
    raw = ds[()]
    try:
        ids = np.array([x.decode("ascii") if isinstance(x, bytes) else str(x) for x in raw], dtype=object)
    except UnicodeDecodeError:
        raise FormatError(path, "ids are not ASCII", f"dataset '{name}'") from None
    return ids


def _check_sorted_unique(ids: np.ndarray, path, name: str) -> None:
    s = ids.astype(str)
    if len(s) > 1:
        notinc = np.flatnonzero(s[1:] <= s[:-1])
        if len(notinc):
            i = notinc[0] + 1
            problem = "not unique" if s[i] == s[i - 1] else "not sorted ascending"
            raise FormatError(path, f"ids {problem}: {s[i - 1]!r} then {s[i]!r} at position {i}", f"dataset '{name}'")


def _check_matrix(x, path, name: str, n_ids: int, max_dim: int | None) -> np.ndarray:
    if x.ndim != 2:
        raise FormatError(path, f"expected a 2-D array, found shape {x.shape}", f"dataset '{name}'")
    if x.shape[0] != n_ids:
        raise FormatError(path, f"{x.shape[0]} vectors for {n_ids} ids", f"dataset '{name}'")
    if max_dim is not None and x.shape[1] > max_dim:
        raise FormatError(path, f"{x.shape[1]} dimensions, more than {max_dim}", f"dataset '{name}'")
    if not np.issubdtype(x.dtype, np.floating):
        raise FormatError(path, f"dtype {x.dtype}, expected float32", f"dataset '{name}'")
    x = np.asarray(x, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise FormatError(path, f"non-finite value in vector {bad[0]}", f"dataset '{name}'")
    return x


def read_descriptors(path: str | Path, max_dim: int | None = MAX_DESCRIPTOR_DIM) -> DescriptorSubmission:
    """Read a descriptor-track HDF5 submission and validate it (see module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FormatError(path, "file not found")
    h5py = _h5()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError(path, f"not a readable HDF5 file ({e})") from None
    with f:
        for name in ("query", "reference", "query_ids", "reference_ids"):
            if name not in f:
                raise FormatError(path, f"missing dataset (found: {sorted(f.keys())})", f"dataset '{name}'")
        qids = _decode_ids(f["query_ids"], path, "query_ids")
        rids = _decode_ids(f["reference_ids"], path, "reference_ids")
        _check_ids(qids, "query", path, "dataset 'query_ids', position {}")
        _check_ids(rids, "reference", path, "dataset 'reference_ids', position {}")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with _h5().File(tmp, "w") as f:
        f.create_dataset("query", data=xq)
        f.create_dataset("reference", data=xb)
        f.create_dataset("query_ids", data=_ascii(qids))
        f.create_dataset("reference_ids", data=_ascii(rids))
    os.replace(tmp, path)


def read_split_vectors(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read isc2021's per-split HDF5 (``vectors``, ``image_names``).

    Returns (ids, x): ids (n,) with folders and extensions stripped, x (n, d) float32.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(path, "file not found")
    h5py = _h5()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError(path, f"not a readable HDF5 file ({e})") from None
    with f:
        for name in ("vectors", "image_names"):
            if name not in f:
                raise FormatError(path, f"missing dataset (found: {sorted(f.keys())})", f"dataset '{name}'")
        names = _decode_ids(f["image_names"], path, "image_names")
        ids = np.array([os.path.splitext(os.path.basename(n))[0] for n in names], dtype=object)
        x = _check_matrix(f["vectors"][()], path, "vectors", len(ids), None)
    return ids, x


def write_split_vectors(path: str | Path, ids, x: np.ndarray) -> None:
    """Write isc2021's per-split HDF5 (atomic)."""
    path = Path(path)
    x = _check_matrix(np.asarray(x), path, "vectors", len(ids), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with _h5().File(tmp, "w") as f:
        f.create_dataset("vectors", data=x)
        f.create_dataset("image_names", data=_ascii(ids))
    os.replace(tmp, path)
