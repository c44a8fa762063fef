"""DISC21 on disk: its manifest, a streaming verification of a local copy, deterministic subsets.

* :func:`load_manifest` reads ``data_manifests/disc21.json``: the splits with their id ranges and
  counts, the folder names each split may have, and the sha256 of the public list files
  (``docs/PROTOCOLS.md`` section 1).
* :func:`verify` walks a local copy split by split with ``os.scandir`` (a million files never sit
  in memory: a boolean array per split marks the ids seen) and reports missing, unreadable and
  unexpected files; :attr:`VerifyReport.complete` is True only when nothing required is wrong.
* :func:`make_subset` writes a named, deterministic subset in the benchmark format
  (:mod:`imsim_lab.data.benchmark`): the positives of a ground truth, N more references, M queries
  without a match and a training sample, with the images linked rather than copied.

Nothing here prints; ``progress(stage, done, total)`` callbacks let the CLI show bars.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..atomic import atomic_path
from .benchmark import UNKNOWN_FAMILY, sha256_file, write_tables
from ..errors import FormatError, ImsimError

MANIFEST_PATH = Path(__file__).resolve().parents[2] / "data_manifests" / "disc21.json"
SUBSET_GENERATOR = "disc21-subset"
SUBSET_VERSION = "1.0"
CHECKS = ("exists", "magic", "decode")
MAX_LISTED = 50  # ids or names listed per problem kind; the counts are always complete

Progress = Callable[[str, int, int], None]


class Disc21Error(ImsimError):
    """A DISC21 folder or its manifest cannot be used; the message says which and why."""


def load_manifest(path: str | Path | None = None) -> dict:
    """The DISC21 manifest (``data_manifests/disc21.json`` unless ``path`` is given)."""
    p = Path(path) if path else MANIFEST_PATH
    if not p.exists():
        raise Disc21Error(f"{p}: DISC21 manifest not found (pass --manifest with the path of disc21.json)")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise Disc21Error(f"{p}: unreadable manifest ({e})") from None
    for name, s in m.get("splits", {}).items():
        for k in ("prefix", "digits", "first", "last", "count", "folders"):
            if k not in s:
                raise Disc21Error(f"{p}: split {name!r} lacks {k!r}")
    return m


# --------------------------------------------------------------------------------------------
# finding the files of a split


def split_folders(root: Path, spec: dict) -> list[Path]:
    """The folders of ``root`` holding a split, from the manifest's names and globs (sorted)."""
    found: list[Path] = []
    for pattern in spec["folders"]:
        if any(c in pattern for c in "*?["):
            parent = root / os.path.dirname(pattern)
            if parent.is_dir():
                base = os.path.basename(pattern)
                found += [parent / d for d in sorted(os.listdir(parent))
                          if fnmatch.fnmatch(d, base) and (parent / d).is_dir()]
        elif (root / pattern).is_dir():
            found.append(root / pattern)
    uniq = []
    for f in found:
        if f.resolve() not in {u.resolve() for u in uniq}:
            uniq.append(f)
    return uniq


def _id_regex(spec: dict, suffix: str) -> re.Pattern:
    return re.compile(rf"{spec['prefix']}(\d{{{spec['digits']}}}){re.escape(suffix)}")


def iter_split(root: Path, spec: dict, suffix: str = ".jpg") -> Iterator[tuple[str, int | None, os.DirEntry]]:
    """Stream the entries of a split's folders: (name, index in the id range or None, entry)."""
    rx = _id_regex(spec, suffix)
    first, last = int(spec["first"]), int(spec["last"])
    for folder in split_folders(root, spec):
        with os.scandir(folder) as it:
            for e in it:
                m = rx.fullmatch(e.name)
                idx = None
                if m:
                    n = int(m.group(1))
                    idx = n - first if first <= n <= last else None
                yield e.name, idx, e


def index_split(root: str | Path, spec: dict, suffix: str = ".jpg") -> dict[str, Path]:
    """Map id -> file of every well-named file of a split (for subsets; a dict per split)."""
    out = {}
    for name, idx, e in iter_split(Path(root), spec, suffix):
        if idx is not None:
            out[name[: -len(suffix)]] = Path(e.path)
    return out


# --------------------------------------------------------------------------------------------
# verification


def check_file(path: str, level: str) -> str:
    """"" when the file looks fine at ``level``, else the problem in a few words.

    Levels: "exists" (any size), "magic" (non-empty, JPEG start marker and end marker, cheap:
    two small reads), "decode" (a full decode with PIL).
    """
    if level == "exists":
        return ""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(3)
            f.seek(max(size - 2, 0))
            tail = f.read(2)
    except OSError as e:
        return f"cannot read ({e.strerror})"
    if head[:3] != b"\xff\xd8\xff":
        return "not a JPEG (wrong start marker)"
    if level == "magic":
        if tail != b"\xff\xd9":
            return "truncated JPEG (no end marker)"
        return ""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is "unreadable"
        return f"cannot decode ({type(e).__name__}: {e})"
    return ""


@dataclass
class SplitReport:
    """What :func:`verify` found for one split."""

    name: str
    required: bool
    expected: int
    folders: list = field(default_factory=list)
    found: int = 0
    missing: int = 0
    missing_ids: list = field(default_factory=list)      # first MAX_LISTED
    unreadable: list = field(default_factory=list)       # [{"file", "problem"}], first MAX_LISTED
    n_unreadable: int = 0
    unexpected: list = field(default_factory=list)       # names, first MAX_LISTED
    n_unexpected: int = 0

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.n_unreadable == 0


@dataclass
class VerifyReport:
    """The result of :func:`verify`; ``complete`` is the exit criterion of ``data verify``."""

    root: str
    check: str
    splits: list = field(default_factory=list)       # SplitReport
    list_files: list = field(default_factory=list)   # [{"file", "status", "path"}]

    @property
    def complete(self) -> bool:
        splits_ok = all(s.ok for s in self.splits if s.required)
        lists_ok = all(f["status"] in ("ok", "absent") for f in self.list_files)
        return splits_ok and lists_ok

    def to_dict(self) -> dict:
        d = asdict(self)
        d["complete"] = self.complete
        return d


def verify(root: str | Path, manifest: dict | None = None, check: str = "magic", splits: list[str] | None = None,
           workers: int = 8, progress: Progress | None = None) -> VerifyReport:
    """Check a local DISC21 copy against the manifest, streaming over the files.

    Args:
        root: the DISC21 folder.
        manifest: the parsed manifest (default :func:`load_manifest`).
        check: "exists", "magic" (default: non-empty, JPEG start and end markers) or "decode".
        splits: the splits to check (default: all of the manifest; optional ones that are
            absent are reported but do not make the copy incomplete).
        workers: threads that read file headers (I/O bound).
        progress: ``progress(split, done, expected)``.

    Returns:
        A :class:`VerifyReport`.
    """
    if check not in CHECKS:
        raise Disc21Error(f"unknown check {check!r}; use one of {', '.join(CHECKS)}")
    root = Path(root)
    if not root.is_dir():
        raise Disc21Error(f"{root}: not a folder")
    manifest = manifest or load_manifest()
    suffix = manifest.get("image_suffix", ".jpg")
    names = splits or list(manifest["splits"])
    unknown = [n for n in names if n not in manifest["splits"]]
    if unknown:
        raise Disc21Error(f"unknown split(s) {', '.join(unknown)}; known: {', '.join(manifest['splits'])}")
    report = VerifyReport(str(root), check)
    pool = ThreadPoolExecutor(max(workers, 1)) if check != "exists" else None
    try:
        for name in names:
            spec = manifest["splits"][name]
            required = bool(spec.get("required", True)) or splits is not None
            sr = SplitReport(name, required, int(spec["count"]),
                             [str(f.relative_to(root)) for f in split_folders(root, spec)])
            _verify_split(root, spec, sr, check, suffix, pool, progress)
            if not sr.folders and not spec.get("required", True) and splits is None:
                sr.required = False
            report.splits.append(sr)
    finally:
        if pool is not None:
            pool.shutdown()
    report.list_files = _check_list_files(root, manifest)
    return report


def _verify_split(root, spec, sr: SplitReport, check, suffix, pool, progress) -> None:
    seen = np.zeros(int(spec["count"]), dtype=bool)
    batch: list[tuple[str, str]] = []
    done = 0

    def flush():
        nonlocal batch
        if not batch:
            return
        results = pool.map(lambda nf: check_file(nf[1], check), batch) if pool else [""] * len(batch)
        for (nm, path), problem in zip(batch, results):
            if problem:
                sr.n_unreadable += 1
                if len(sr.unreadable) < MAX_LISTED:
                    sr.unreadable.append({"file": str(Path(path).relative_to(root)), "problem": problem})
        batch = []

    for name, idx, entry in iter_split(root, spec, suffix):
        if idx is None or not entry.is_file():
            sr.n_unexpected += 1
            if len(sr.unexpected) < MAX_LISTED:
                sr.unexpected.append(str(Path(entry.path).relative_to(root)))
            continue
        if seen[idx]:  # the same id in two shards
            sr.n_unexpected += 1
            if len(sr.unexpected) < MAX_LISTED:
                sr.unexpected.append(f"{Path(entry.path).relative_to(root)} (duplicate id)")
            continue
        seen[idx] = True
        batch.append((name, entry.path))
        if len(batch) >= 2048:
            flush()
        done += 1
        if progress and done % 1000 == 0:
            progress(sr.name, done, sr.expected)
    flush()
    sr.found = int(seen.sum())
    miss = np.flatnonzero(~seen)
    sr.missing = int(len(miss))
    first = int(spec["first"])
    sr.missing_ids = [f"{spec['prefix']}{first + int(i):0{spec['digits']}d}" for i in miss[:MAX_LISTED]]
    if progress:
        progress(sr.name, done, sr.expected)


def _check_list_files(root: Path, manifest: dict) -> list[dict]:
    out = []
    for fname, info in manifest.get("list_files", {}).items():
        path = next((root / d / fname for d in manifest.get("list_file_folders", ["."])
                     if (root / d / fname).is_file()), None)
        if path is None:
            out.append({"file": fname, "status": "absent", "path": None})
            continue
        status = "ok" if sha256_file(path) == info["sha256"] else "sha256 differs"
        out.append({"file": fname, "status": status, "path": str(path.relative_to(root))})
    return out


# --------------------------------------------------------------------------------------------
# subsets


@dataclass(frozen=True)
class SubsetConfig:
    """A named, deterministic DISC21 subset.

    Attributes:
        name: the benchmark name (recorded in the manifest).
        ground_truth: the ground-truth CSV to draw queries from (default: the first of the
            manifest's ``ground_truth_files`` found under the root).
        positives: queries with a match to keep (None: all of them).
        references: references added besides those of the kept positives (distractors).
        negatives: queries without a match to keep.
        training: training images to sample.
        seed: the seed of every random choice.
        link: "symlink" (default; falls back to hardlink, then copy), "hardlink" or "copy".
    """

    name: str
    ground_truth: str | None = None
    positives: int | None = None
    references: int = 10_000
    negatives: int = 10_000
    training: int = 10_000
    seed: int = 0
    link: str = "symlink"


def _find_ground_truth(root: Path, manifest: dict, given: str | None) -> Path:
    if given:
        p = Path(given)
        p = p if p.is_absolute() or p.exists() else root / p
        if not p.exists():
            raise Disc21Error(f"{p}: ground truth not found")
        return p
    for rel in manifest.get("ground_truth_files", []):
        if (root / rel).is_file():
            return root / rel
    raise Disc21Error(f"{root}: no ground truth found (looked for {', '.join(manifest.get('ground_truth_files', []))}); "
                      "pass --gt")


def link_file(src: Path, dst: Path, mode: str = "symlink") -> str:
    """Link ``src`` at ``dst`` (symlink, else hardlink, else copy); returns the method used."""
    order = {"symlink": ("symlink", "hardlink", "copy"), "hardlink": ("hardlink", "copy"), "copy": ("copy",)}[mode]
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    for how in order:
        try:
            if how == "symlink":
                os.symlink(os.path.abspath(src), dst)
            elif how == "hardlink":
                os.link(src, dst)
            else:
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
            return how
        except OSError:
            continue
    raise Disc21Error(f"{dst}: cannot link or copy {src}")


def make_subset(root: str | Path, out: str | Path, config: SubsetConfig, manifest: dict | None = None,
                progress: Progress | None = None) -> dict:
    """Write a DISC21 subset in the benchmark format; returns its manifest.

    Queries keep their DISC21 ids, so results on a subset compare with the official files. The
    edit of a DISC21 query is not published: ``family`` is "unknown", ``strength`` NaN and ``ops``
    an empty list. Images are linked (see :func:`link_file`). The choice depends only on the
    ground truth, the files present and the seed.

    Raises:
        Disc21Error: no ground truth, a split folder missing, or images of kept queries missing.
    """
    import pandas as pd

    from ..eval.formats import read_ground_truth

    root, out = Path(root), Path(out)
    manifest = manifest or load_manifest()
    suffix = manifest.get("image_suffix", ".jpg")
    gt_path = _find_ground_truth(root, manifest, config.ground_truth)
    try:
        gt = read_ground_truth(gt_path)
    except FormatError as e:
        raise Disc21Error(str(e)) from None
    rng = np.random.default_rng([int(config.seed), 0xD15C])
    specs = manifest["splits"]
    q_spec = {"prefix": "Q", "digits": 5, "first": 0, "last": 99999, "count": 100000,
              "folders": sorted({f for n in ("dev_queries", "final_queries") if n in specs for f in specs[n]["folders"]})}
    steps = [("index queries", q_spec), ("index references", specs["references"]), ("index training", specs["training"])]
    idx = {}
    for i, (stage, spec) in enumerate(steps):
        if progress:
            progress("index", i, len(steps))
        idx[stage] = index_split(root, spec, suffix)
    q_files, r_files, t_files = idx["index queries"], idx["index references"], idx["index training"]
    if not r_files:
        raise Disc21Error(f"{root}: no reference images found (folders tried: {', '.join(specs['references']['folders'])})")

    gq, gr = gt.query_ids.astype(str), gt.reference_ids.astype(str)
    pos = np.flatnonzero(gr != "")
    neg = np.flatnonzero(gr == "")
    if config.positives is not None and config.positives < len(pos):
        pos = np.sort(rng.choice(pos, size=config.positives, replace=False))
    if config.negatives < len(neg):
        neg = np.sort(rng.choice(neg, size=config.negatives, replace=False))
    keep = np.sort(np.concatenate([pos, neg]))
    missing_q = [q for q in gq[keep] if q not in q_files]
    missing_r = [r for r in gr[pos] if r not in r_files]
    if missing_q or missing_r:
        what = missing_q[:3] + missing_r[:3]
        raise Disc21Error(f"{root}: {len(missing_q)} queries and {len(missing_r)} references of the subset have no "
                          f"image (first: {', '.join(what)}); run `imsim-lab data verify` first")
    pos_refs = set(gr[pos])
    others = np.array(sorted(set(r_files) - pos_refs), dtype=object)
    n_extra = min(config.references, len(others))
    extra = set(others[rng.choice(len(others), size=n_extra, replace=False)]) if n_extra else set()
    ref_ids = sorted(pos_refs | extra)
    t_all = np.array(sorted(t_files), dtype=object)
    n_t = min(config.training, len(t_all))
    train_ids = sorted(t_all[rng.choice(len(t_all), size=n_t, replace=False)]) if n_t else []

    if out.exists() and any(out.iterdir()):
        prev = out / "manifest.json"
        if not prev.exists() or json.loads(prev.read_text(encoding="utf-8")).get("generator") != SUBSET_GENERATOR:
            raise Disc21Error(f"{out}: folder is not empty and is not a DISC21 subset; choose another --out")
        for folder in ("queries", "references", "training"):
            shutil.rmtree(out / folder, ignore_errors=True)
    jobs = ([(q_files[q], out / "queries" / f"{q}{suffix}") for q in gq[keep]]
            + [(r_files[r], out / "references" / f"{r}{suffix}") for r in ref_ids]
            + [(t_files[t], out / "training" / f"{t}{suffix}") for t in train_ids])
    for folder in ("queries", "references", "training"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    methods: dict[str, int] = {}
    for i, (src, dst) in enumerate(jobs):
        how = link_file(src, dst, config.link)
        methods[how] = methods.get(how, 0) + 1
        if progress and (i % 500 == 0 or i == len(jobs) - 1):
            progress("link", i + 1, len(jobs))

    qids = gq[keep]
    rids = gr[keep]
    queries = pd.DataFrame({"query_id": qids, "has_match": rids != "", "reference_id": rids,
                            "source_id": rids, "family": UNKNOWN_FAMILY, "ops": "[]",
                            "strength": np.full(len(qids), np.nan), "split": ["dev" if int(q[1:]) < 50000 else "final"
                                                                             for q in qids]})
    refs = pd.DataFrame({"reference_id": ref_ids, "scene": "unknown",
                         "sibling_group": "", "source": ["positive" if r in pos_refs else "distractor" for r in ref_ids]})
    man = {
        "generator": SUBSET_GENERATOR, "version": SUBSET_VERSION, "name": config.name, "seed": int(config.seed),
        "preset": None,
        "counts": {"queries": int(len(qids)), "positives": int(len(pos)), "negatives": int(len(neg)),
                   "references": len(ref_ids), "training": len(train_ids), "held_out": 0},
        "parameters": {k: v for k, v in asdict(config).items() if k not in ("name", "seed")},
        "source": {"dataset": "DISC21", "root": str(root.resolve()), "ground_truth": gt_path.name,
                   "ground_truth_sha256": sha256_file(gt_path)},
        "linked": methods,
    }
    return write_tables(out, queries, refs, man)
