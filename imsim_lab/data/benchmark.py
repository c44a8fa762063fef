"""The on-disk benchmark format shared by every benchmark (disc-synth, DISC21 subsets, user photos).

A benchmark is a folder (``docs/CONTRACTS.md``)::

    BENCH/
      queries/Q00000.jpg ...   references/R000000.jpg ...   training/T000000.jpg ...
      held_out/H000000.jpg ... optional: originals of the queries without a match
      ground_truth.csv         official format: every query listed, empty reference = no match
      queries.parquet          one row per query (QUERY_COLUMNS)
      references.parquet       optional: one row per reference (reference_id, scene, sibling_group, source)
      manifest.json            generator, version, name, seed, preset, counts, sha256 of the two tables

:func:`load_benchmark` reads any such folder with one call and checks that the parts agree (ids
of the files, the ground truth, the query table, the checksums of the manifest); a folder that is
not a benchmark raises :class:`BenchmarkError` saying what is missing. The writers here
(:func:`write_query_table`, :func:`write_manifest`, ...) are the ones every generator uses, so
that two builds with the same content give byte-identical files (no timestamps, fixed parquet
options). Taught in ``notebooks/01_benchmark_and_metric``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..errors import FormatError, ImsimError
from ..eval.formats import GroundTruth, read_ground_truth, write_ground_truth

#: folder and id letter of each split; ``held_out`` holds the originals of no-match queries
SPLITS: dict[str, tuple[str, str]] = {
    "query": ("queries", "Q"),
    "reference": ("references", "R"),
    "training": ("training", "T"),
    "held_out": ("held_out", "H"),
}
#: digits of the ids, DISC21 style (more digits are accepted when a split outgrows them)
ID_DIGITS = {"Q": 5, "R": 6, "T": 6, "H": 6}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ID_RE = re.compile(r"([QRTH])(\d{5,})")

#: columns of ``queries.parquet`` and their arrow types (extra columns are allowed after them)
QUERY_COLUMNS: dict[str, str] = {
    "query_id": "string",
    "has_match": "bool",
    "reference_id": "string",
    "source_id": "string",
    "family": "string",
    "ops": "string",
    "strength": "float64",
}
REFERENCE_COLUMNS: dict[str, str] = {
    "reference_id": "string",
    "scene": "string",
    "sibling_group": "string",
    "source": "string",
}
GROUND_TRUTH = "ground_truth.csv"
QUERY_TABLE = "queries.parquet"
REFERENCE_TABLE = "references.parquet"
MANIFEST = "manifest.json"
#: family of a query whose edit is not known (DISC21 subsets)
UNKNOWN_FAMILY = "unknown"


class BenchmarkError(ImsimError):
    """A folder is not a valid benchmark; the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------------
# ids and hashing


def make_ids(letter: str, n: int, start: int = 0) -> list[str]:
    """DISC21-style ids: ``make_ids("R", 3) == ["R000000", "R000001", "R000002"]``."""
    width = max(ID_DIGITS[letter], len(str(max(start + n - 1, 0))))
    return [f"{letter}{i:0{width}d}" for i in range(start, start + n)]


def split_of(image_id: str) -> str:
    """The split of an id from its letter: ``split_of("R000012") == "reference"``."""
    m = ID_RE.fullmatch(str(image_id))
    if not m:
        raise BenchmarkError(f"{image_id!r} is not an image id (expected like Q00000, R000000, T000000, H000000)")
    return next(k for k, (_, letter) in SPLITS.items() if letter == m.group(1))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def list_split(root: str | Path, split: str) -> dict[str, Path]:
    """Map id -> file of the images of one split folder (files that are not images are ignored).

    Raises BenchmarkError when two files share an id (``R000001.jpg`` and ``R000001.png``).
    """
    folder = Path(root) / SPLITS[split][0]
    letter = SPLITS[split][1]
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as it:
        for e in it:
            stem, suffix = os.path.splitext(e.name)
            if suffix.lower() not in IMAGE_SUFFIXES or not stem.startswith(letter):
                continue
            if not ID_RE.fullmatch(stem):
                continue
            if stem in out:
                raise BenchmarkError(f"{folder}: two images for the id {stem}: {out[stem].name} and {e.name}")
            out[stem] = Path(e.path)
    return out


# --------------------------------------------------------------------------------------------
# the loaded benchmark


@dataclass(frozen=True, eq=False)
class Benchmark:
    """A benchmark folder, loaded.

    Attributes:
        root: the folder.
        name: ``manifest["name"]`` (the folder name when the manifest has none).
        manifest: the parsed ``manifest.json``.
        gt: the ground truth (every query, "" = no match).
        queries: DataFrame with one row per query, in ground-truth order (QUERY_COLUMNS + extras).
        query_ids, reference_ids, training_ids, held_out_ids: sorted arrays of the ids of the files.
        references: DataFrame (reference_id, scene, sibling_group, source, ...) or None.
    """

    root: Path
    name: str
    manifest: dict
    gt: GroundTruth
    queries: "object"
    query_ids: np.ndarray
    reference_ids: np.ndarray
    training_ids: np.ndarray
    held_out_ids: np.ndarray
    references: "object | None" = None
    _paths: Mapping[str, Path] = field(default_factory=dict, repr=False)

    def image_path(self, image_id: str) -> Path:
        """The file of an image id of any split (``Q…``, ``R…``, ``T…``, ``H…``)."""
        p = self._paths.get(str(image_id))
        if p is None:
            split = split_of(image_id)
            raise BenchmarkError(f"{self.root}: no image {image_id} in {SPLITS[split][0]}/")
        return p

    def load_image(self, image_id: str):
        """The image as an RGB ``PIL.Image`` (raises BenchmarkError naming the file if unreadable)."""
        from PIL import Image

        path = self.image_path(image_id)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decoder error becomes a named one
            raise BenchmarkError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None

    @property
    def families(self) -> list[str]:
        """Sorted transformation families present in the query table."""
        return sorted(set(self.queries["family"].astype(str)))

    @property
    def n_positives(self) -> int:
        return self.gt.n_positives

    def counts(self) -> dict[str, int]:
        return {"queries": len(self.query_ids), "positives": self.gt.n_positives,
                "references": len(self.reference_ids), "training": len(self.training_ids),
                "held_out": len(self.held_out_ids)}

    def summary(self) -> dict:
        """Counts, families (queries and positives per family) and the manifest, JSON-able."""
        q = self.queries
        fam = (q.groupby("family", sort=True)["has_match"].agg(["size", "sum"]))
        per_family = {str(k): {"queries": int(v["size"]), "positives": int(v["sum"])} for k, v in fam.iterrows()}
        s = q["strength"].astype(float)
        return {
            "name": self.name,
            "root": str(self.root),
            "counts": self.counts(),
            "match_rate": round(self.gt.n_positives / max(len(self.gt), 1), 4),
            "families": per_family,
            "strength": None if s.isna().all() else {"min": float(s.min()), "mean": float(s.mean()),
                                                     "max": float(s.max())},
            "manifest": self.manifest,
        }

    def ops_of(self, query_id: str) -> list[dict]:
        """The recorded operations of a query (JSON list of ``{"name", "params"}``)."""
        row = self.queries.loc[self.queries["query_id"] == query_id]
        if row.empty:
            raise BenchmarkError(f"{self.root}: unknown query {query_id}")
        return json.loads(row["ops"].iloc[0])


def _fail(path: Path, problem: str) -> BenchmarkError:
    return BenchmarkError(f"{path}: {problem}")


def read_query_table(path: str | Path):
    """Read and validate ``queries.parquet`` (columns and types of QUERY_COLUMNS)."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise _fail(path, "file not found")
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001
        raise _fail(path, f"not a readable parquet file ({e})") from None
    missing = [c for c in QUERY_COLUMNS if c not in table.column_names]
    if missing:
        raise _fail(path, f"missing column(s) {', '.join(missing)} (found: {', '.join(table.column_names)})")
    df = table.to_pandas()
    for c in ("query_id", "reference_id", "source_id", "family", "ops"):
        df[c] = df[c].fillna("").astype(str).astype(object)
    df["has_match"] = df["has_match"].astype(bool)
    df["strength"] = pd.to_numeric(df["strength"], errors="coerce").astype(np.float64)
    dup = df["query_id"].duplicated()
    if dup.any():
        raise _fail(path, f"query {df['query_id'][dup].iloc[0]} listed twice")
    bad = df["has_match"] != (df["reference_id"] != "")
    if bad.any():
        raise _fail(path, f"query {df['query_id'][bad].iloc[0]}: has_match disagrees with reference_id")
    s = df["strength"]
    out = s.notna() & ((s < 0) | (s > 1))
    if out.any():
        raise _fail(path, f"query {df['query_id'][out].iloc[0]}: strength {s[out].iloc[0]} outside 0..1")
    return df


def load_benchmark(root: str | Path, check_hashes: bool = True) -> Benchmark:
    """Load a benchmark folder (see the module docstring) and check that its parts agree.

    Args:
        root: the benchmark folder.
        check_hashes: compare the sha256 of ``ground_truth.csv`` and ``queries.parquet`` with the
            manifest (fast: the two tables are small); a mismatch means a table was edited.

    Returns:
        The :class:`Benchmark`.

    Raises:
        BenchmarkError: naming what is missing or inconsistent (a missing folder or table, a query
            of the ground truth without an image, a positive whose reference image is absent, ...).
    """
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"{root}: not a folder")
    missing = [n for n in (SPLITS["query"][0], SPLITS["reference"][0], GROUND_TRUTH, QUERY_TABLE, MANIFEST)
               if not (root / n).exists()]
    if missing:
        raise BenchmarkError(f"{root}: not a benchmark folder, missing {', '.join(missing)}")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(root / MANIFEST, f"not readable JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise _fail(root / MANIFEST, "expected a JSON object")
    if check_hashes:
        for fname, digest in (manifest.get("sha256") or {}).items():
            p = root / fname
            if p.exists() and sha256_file(p) != digest:
                raise _fail(p, f"sha256 differs from {MANIFEST}: the file was changed after the build")
    try:
        gt = read_ground_truth(root / GROUND_TRUTH)
    except FormatError as e:
        raise BenchmarkError(str(e)) from None
    queries = read_query_table(root / QUERY_TABLE)

    paths: dict[str, Path] = {}
    ids = {}
    for split in SPLITS:
        found = list_split(root, split)
        paths.update(found)
        ids[split] = np.array(sorted(found), dtype=object)

    gt_q = gt.query_ids.astype(str)
    if len(set(gt_q)) != len(gt_q):
        dup = pd.Series(gt_q)[pd.Series(gt_q).duplicated()].iloc[0]
        raise _fail(root / GROUND_TRUTH, f"query {dup} is listed more than once")
    table_q = set(queries["query_id"])
    if set(gt_q) != table_q:
        diff = sorted(set(gt_q) ^ table_q)
        raise BenchmarkError(f"{root}: {GROUND_TRUTH} and {QUERY_TABLE} list different queries "
                             f"({len(diff)} differ, first {diff[0]})")
    no_img = sorted(set(gt_q) - set(ids["query"]))
    if no_img:
        raise BenchmarkError(f"{root}: {len(no_img)} queries of {GROUND_TRUTH} have no image in "
                             f"{SPLITS['query'][0]}/ (first {no_img[0]})")
    pos_q, pos_r = gt.positives
    no_ref = sorted(set(pos_r.astype(str)) - set(ids["reference"]))
    if no_ref:
        raise BenchmarkError(f"{root}: {len(no_ref)} references of {GROUND_TRUTH} have no image in "
                             f"{SPLITS['reference'][0]}/ (first {no_ref[0]})")
    # the table must agree with the ground truth pair by pair
    by_q = dict(zip(gt_q, gt.reference_ids.astype(str)))
    disagree = queries["reference_id"].to_numpy() != queries["query_id"].map(by_q).to_numpy()
    if disagree.any():
        q0 = queries["query_id"][disagree].iloc[0]
        raise BenchmarkError(f"{root}: {QUERY_TABLE} and {GROUND_TRUTH} disagree on the reference of {q0}")
    order = {q: i for i, q in enumerate(gt_q)}
    queries = queries.iloc[np.argsort(queries["query_id"].map(order).to_numpy(), kind="stable")]
    queries = queries.reset_index(drop=True)

    references = None
    if (root / REFERENCE_TABLE).exists():
        try:
            references = pd.read_parquet(root / REFERENCE_TABLE)
        except Exception as e:  # noqa: BLE001
            raise _fail(root / REFERENCE_TABLE, f"not a readable parquet file ({e})") from None
        miss = [c for c in REFERENCE_COLUMNS if c not in references.columns]
        if miss:
            raise _fail(root / REFERENCE_TABLE, f"missing column(s) {', '.join(miss)}")
    name = str(manifest.get("name") or root.name)
    return Benchmark(root=root, name=name, manifest=manifest, gt=gt, queries=queries,
                     query_ids=ids["query"], reference_ids=ids["reference"], training_ids=ids["training"],
                     held_out_ids=ids["held_out"], references=references, _paths=paths)


def is_benchmark(root: str | Path) -> bool:
    """True when ``root`` has the files of a benchmark (without checking them)."""
    root = Path(root)
    return all((root / n).exists() for n in (GROUND_TRUTH, QUERY_TABLE, MANIFEST))


# --------------------------------------------------------------------------------------------
# writers (deterministic: the same content gives the same bytes)


def _write_table(path: Path, columns: Mapping[str, str], rows: Mapping[str, Iterable]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "bool": pa.bool_(), "float64": pa.float64(), "int64": pa.int64()}
    arrays, names = [], []
    for name, typ in columns.items():
        arrays.append(pa.array(list(rows[name]), type=types[typ]))
        names.append(name)
    table = pa.Table.from_arrays(arrays, names=names)  # no pandas metadata: bytes depend on content only
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=3, use_dictionary=True,
                       write_statistics=True, store_schema=False)


def _columns_of(df, required: Mapping[str, str]) -> dict[str, str]:
    """Required columns first, then the extra columns of ``df`` with a type inferred from pandas."""
    cols = dict(required)
    for c in df.columns:
        if c in cols:
            continue
        kind = df[c].dtype.kind
        cols[c] = "bool" if kind == "b" else "int64" if kind in "iu" else "float64" if kind == "f" else "string"
    return cols


def write_query_table(path: str | Path, df) -> None:
    """Write ``queries.parquet`` (QUERY_COLUMNS first, then any extra column), atomically.

    ``ops`` may be given as lists of dicts; they are stored as compact JSON text.
    """
    df = df.copy()
    missing = [c for c in QUERY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"query table lacks column(s) {', '.join(missing)}")
    df["ops"] = [o if isinstance(o, str) else json.dumps(o, separators=(",", ":"), sort_keys=True)
                 for o in df["ops"]]
    df["strength"] = [float("nan") if s is None else float(s) for s in df["strength"]]
    bad = [s for s in df["strength"] if not math.isnan(s) and not 0.0 <= s <= 1.0]
    if bad:
        raise ValueError(f"strength {bad[0]} outside 0..1")
    cols = _columns_of(df, QUERY_COLUMNS)
    _write_table(Path(path), cols, {c: (df[c].tolist()) for c in cols})


def write_parquet(path: str | Path, df, required: Mapping[str, str] | None = None) -> None:
    """Write any DataFrame as parquet deterministically (``required`` columns first), atomically."""
    cols = _columns_of(df, required or {})
    _write_table(Path(path), cols, {c: df[c].tolist() for c in cols})


def write_reference_table(path: str | Path, df) -> None:
    """Write ``references.parquet`` (REFERENCE_COLUMNS first, then extras), atomically."""
    missing = [c for c in REFERENCE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"reference table lacks column(s) {', '.join(missing)}")
    cols = _columns_of(df, REFERENCE_COLUMNS)
    _write_table(Path(path), cols, {c: df[c].tolist() for c in cols})


def write_manifest(root: str | Path, manifest: dict) -> dict:
    """Add the sha256 of the ground truth and the query table, then write ``manifest.json``.

    The JSON is written with sorted keys and no timestamp, so it is byte-identical across builds
    with the same content. Returns the manifest written.
    """
    root = Path(root)
    out = dict(manifest)
    sha = dict(out.get("sha256") or {})
    for fname in (GROUND_TRUTH, QUERY_TABLE):
        if (root / fname).exists():
            sha[fname] = sha256_file(root / fname)
    out["sha256"] = sha
    atomic_write_text(root / MANIFEST, json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


def write_tables(root: str | Path, queries, references=None, manifest: dict | None = None) -> dict:
    """Write ``ground_truth.csv`` (from the query table, in its order), ``queries.parquet``,
    ``references.parquet`` (when given) and ``manifest.json``. Returns the manifest written."""
    root = Path(root)
    gt = GroundTruth.from_pairs(zip(queries["query_id"], queries["reference_id"]))
    write_ground_truth(root / GROUND_TRUTH, gt)
    write_query_table(root / QUERY_TABLE, queries)
    if references is not None:
        write_reference_table(root / REFERENCE_TABLE, references)
    return write_manifest(root, manifest or {})
