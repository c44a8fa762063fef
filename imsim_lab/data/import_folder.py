"""``imsim-lab bench import DIR --out BENCH``: a benchmark folder from your own images.

The input is a folder with ``queries/`` and ``references/`` (images), optionally ``training/``, and
a ground-truth CSV in the official format (``query_id,reference_id``, every query listed, an empty
reference for a query without a match; ``docs/PROTOCOLS.md``): ``DIR/ground_truth.csv``,
or the only ``*.csv`` of ``DIR``, or the file given. Ids in the CSV are the image file names
without their extension.

Images whose names are already DISC21 ids of their split (``Q00012.jpg`` in ``queries/``,
``R000345.jpg`` in ``references/``, ``T...`` in ``training/``) keep them; otherwise every image of
that split is given an id in sorted-name order and ``id_map.csv`` (split, image_id, original)
records the mapping. Files are hard-linked when the file system allows it, else copied.
Nothing is known of how a query was made: its family is ``"unknown"``, its strength NaN and its
recipe empty, so pages that need families say so instead of failing.

Every problem is an :class:`~imsim_lab.data.benchmark.BenchmarkError` of one line naming what is
missing or wrong (a folder, the CSV, a query or reference of the CSV without an image, an image of
``queries/`` the CSV does not list...).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError
from ..eval.formats import read_ground_truth
from .benchmark import (ID_RE, IMAGE_SUFFIXES, SPLITS, UNKNOWN_FAMILY, BenchmarkError, load_benchmark, make_ids,
                        write_tables)

FOLDERS = {"query": "queries", "reference": "references", "training": "training"}


@dataclass(frozen=True)
class ImportReport:
    """What was imported: ``out``, counts per split, positives, whether ids were renamed, files
    linked (hard links) or copied."""

    out: str
    counts: dict
    positives: int
    renamed: tuple[str, ...]
    linked: int
    copied: int


def _images(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in out:
                raise BenchmarkError(f"{folder}: two images named {p.stem} ({out[p.stem].name} and {p.name})")
            out[p.stem] = p
    return out


def find_ground_truth(src: Path, gt: str | Path | None = None) -> Path:
    """The ground-truth CSV of ``src`` (see the module docstring)."""
    if gt is not None:
        p = Path(gt)
        if not p.is_file():
            raise BenchmarkError(f"{p}: ground-truth CSV not found")
        return p
    if (src / "ground_truth.csv").is_file():
        return src / "ground_truth.csv"
    csvs = sorted(src.glob("*.csv"))
    if len(csvs) == 1:
        return csvs[0]
    if not csvs:
        raise BenchmarkError(f"{src}: no ground-truth CSV (expected {src / 'ground_truth.csv'} with the header "
                             "query_id,reference_id; or pass --gt FILE)")
    raise BenchmarkError(f"{src}: several CSV files ({', '.join(c.name for c in csvs)}); name the ground truth with "
                         "--gt FILE")


def read_pairs(path: Path) -> tuple[list[str], list[str]]:
    """(query names, reference names or "") of a ground-truth CSV: the official reader when the
    names are DISC21 ids, else the same rules (header, two fields, each query once) on any names."""
    import csv

    try:
        truth = read_ground_truth(path)
        return [str(q) for q in truth.query_ids], [str(r) for r in truth.reference_ids]
    except FormatError as e:
        if "id format" not in str(e):
            raise BenchmarkError(str(e)) from None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["query_id", "reference_id"]:
        raise BenchmarkError(f"{path}: header must be query_id,reference_id")
    qs, rs, seen = [], [], set()
    for i, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip():
            raise BenchmarkError(f"{path}, row {i}: expected query_id,reference_id")
        q, r = row[0].strip(), row[1].strip()
        if q in seen:
            raise BenchmarkError(f"{path}, row {i}: query {q} listed twice")
        seen.add(q)
        qs.append(Path(q).stem if Path(q).suffix.lower() in IMAGE_SUFFIXES else q)
        rs.append(Path(r).stem if r and Path(r).suffix.lower() in IMAGE_SUFFIXES else r)
    return qs, rs


def _ids_for(split: str, names: list[str]) -> tuple[dict[str, str], bool]:
    """original name -> benchmark id, and whether it renamed."""
    letter = SPLITS[split][1]
    if all(ID_RE.fullmatch(n) and n[0] == letter for n in names):
        return {n: n for n in names}, False
    return dict(zip(names, make_ids(letter, len(names)))), True


def _place(src: Path, dst: Path) -> bool:
    """Hard-link (True) or copy (False) ``src`` to ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def import_folder(src: str | Path, out: str | Path, gt: str | Path | None = None, name: str | None = None,
                  overwrite: bool = False) -> ImportReport:
    """Write a benchmark folder (``docs/CONTRACTS.md``) at ``out`` from the images and ground truth of
    ``src``. Returns the :class:`ImportReport`; the result loads with :func:`load_benchmark`."""
    import pandas as pd

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise BenchmarkError(f"{src}: not a folder")
    for split in ("query", "reference"):
        if not (src / FOLDERS[split]).is_dir():
            raise BenchmarkError(f"{src}: missing {FOLDERS[split]}/ (a folder of {FOLDERS[split]} images)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BenchmarkError(f"{out}: exists and is not empty (choose another --out or pass --overwrite)")
    found = {s: _images(src / f) for s, f in FOLDERS.items() if (src / f).is_dir()}
    for s in ("query", "reference"):
        if not found[s]:
            raise BenchmarkError(f"{src / FOLDERS[s]}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    gt_path = find_ground_truth(src, gt)
    qnames, rnames = read_pairs(gt_path)
    no_img = [q for q in qnames if q not in found["query"]]
    if no_img:
        raise BenchmarkError(f"{gt_path}: {len(no_img)} queries have no image in {src / 'queries'} (first {no_img[0]})")
    unlisted = sorted(set(found["query"]) - set(qnames))
    if unlisted:
        raise BenchmarkError(f"{gt_path}: {len(unlisted)} images of {src / 'queries'} are not listed (first "
                             f"{unlisted[0]}); every query needs a row, with an empty reference_id when it has no match")
    no_ref = [r for r in rnames if r and r not in found["reference"]]
    if no_ref:
        raise BenchmarkError(f"{gt_path}: {len(no_ref)} references have no image in {src / 'references'} (first "
                             f"{no_ref[0]})")
    ids, renamed = {}, []
    for s, files in found.items():
        ids[s], r = _ids_for(s, list(files))
        if r:
            renamed.append(s)
    out.mkdir(parents=True, exist_ok=True)
    linked = copied = 0
    for s, files in found.items():
        for n, p in files.items():
            ok = _place(p, out / FOLDERS[s] / f"{ids[s][n]}{p.suffix.lower()}")
            linked += ok
            copied += not ok
    qid = [ids["query"][q] for q in qnames]
    rid = [ids["reference"][r] if r else "" for r in rnames]
    queries = pd.DataFrame({"query_id": qid, "has_match": [bool(r) for r in rid], "reference_id": rid,
                            "source_id": [found["query"][q].name for q in qnames], "family": UNKNOWN_FAMILY,
                            "ops": "[]", "strength": float("nan")}).sort_values("query_id", kind="stable")
    refs = pd.DataFrame({"reference_id": [ids["reference"][n] for n in found["reference"]], "scene": "",
                         "sibling_group": "", "source": [p.name for p in found["reference"].values()]})
    if renamed:
        rows = [(s, ids[s][n], p.name) for s in renamed for n, p in found[s].items()]
        pd.DataFrame(rows, columns=["split", "image_id", "original"]).to_csv(out / "id_map.csv", index=False)
    counts = {"queries": len(qid), "references": len(found["reference"]),
              "training": len(found.get("training", {})), "positives": sum(bool(r) for r in rid)}
    write_tables(out, queries.reset_index(drop=True), refs.sort_values("reference_id").reset_index(drop=True),
                 {"generator": "imsim-lab bench import", "version": "1", "name": name or src.name,
                  "source": str(src.resolve()), "ground_truth": gt_path.name, "counts": counts,
                  "families": [UNKNOWN_FAMILY], "renamed": renamed})
    load_benchmark(out)  # the folder must be a valid benchmark: fail here, not in a later run
    return ImportReport(str(out), counts, counts["positives"], tuple(renamed), linked, copied)
