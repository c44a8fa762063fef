"""Find and read the run folders of a results folder (docs/CONTRACTS.md, "Run folder").

A results folder holds run folders at any depth; a run folder is any folder with ``metrics.json``
and ``config.json``. :func:`discover_runs` walks it once and returns one :class:`RunInfo` per run
(the small JSON files only); the large tables (``per_query.parquet``, ``predictions.csv``) are read
on demand by :func:`load_per_query` and :func:`load_predictions`. A run whose benchmark folder has
moved is re-attached by :func:`resolve_benchmark`, which looks for a benchmark with the same
manifest checksum next to the results.

Nothing here caches: the explorer caches in its app layer (``st.cache_data``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import FormatError, ImsimError
from ...eval.protocols import protocol_names

from ...runfolder import INTERNAL_DIRS, PER_QUERY_COLUMNS  # noqa: F401  (PER_QUERY_COLUMNS: the readers' columns)

_SKIP_DIRS = {*INTERNAL_DIRS, "__pycache__", "queries", "references", "training", "held_out"}


@dataclass(frozen=True, eq=False)
class RunInfo:
    """One run folder, its small JSON files read.

    Attributes:
        path: the run folder.
        run_id: its path relative to the results folder ("." when the results folder is the run).
        method: ``config["method"]``.
        label: a short unique name for tables and legends (the method, or method + folder when
            one benchmark holds several runs of the same method).
        config, metrics, timings: the parsed JSON files (``timings`` may be empty).
        bench_name: the benchmark name recorded in the config.
        bench_root: the benchmark folder recorded in the config (it may have moved: see
            :func:`resolve_benchmark`).
    """

    path: Path
    run_id: str
    method: str
    label: str
    config: dict
    metrics: dict
    timings: dict = field(default_factory=dict)
    bench_name: str = ""
    bench_root: str = ""

    @property
    def notes(self) -> dict:
        return dict(self.config.get("notes") or {})

    @property
    def manifest_sha256(self) -> str | None:
        return (self.config.get("benchmark") or {}).get("manifest_sha256")

    def metric(self, protocol: str, name: str):
        """A scalar of ``metrics.json`` (None when absent)."""
        return (self.metrics.get(protocol) or {}).get(name)


@dataclass(frozen=True)
class DiscoveryProblem:
    """A folder that looks like a run but could not be read."""

    path: str
    problem: str


def read_run(path: str | Path, results_root: str | Path | None = None) -> RunInfo:
    """Read one run folder (config.json, metrics.json, timings.json).

    Raises:
        FormatError: a JSON file is unreadable or lacks what the explorer needs.
        ImsimError: ``path`` is not a run folder.
    """
    from ...runfolder import read_config, read_metrics, read_timings, require_run

    path = require_run(path)
    config = read_config(path)
    metrics = read_metrics(path)
    timings = read_timings(path)
    bench = config.get("benchmark") or {}
    root = Path(results_root) if results_root is not None else path.parent
    try:
        run_id = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        run_id = path.name
    method = str(config.get("method") or path.name)
    return RunInfo(path=path, run_id=run_id, method=method, label=method, config=config, metrics=metrics,
                   timings=timings, bench_name=str(bench.get("name") or "?"), bench_root=str(bench.get("root") or ""))


def discover_runs(results_root: str | Path) -> tuple[list[RunInfo], list[DiscoveryProblem]]:
    """Every run folder under ``results_root`` (at any depth), sorted by benchmark then label.

    Folders named like the parts of runs and benchmarks (``features``, ``queries``, ...) and hidden
    folders are not entered. Runs that cannot be read are reported, not raised, so one broken
    folder does not hide the others.

    Returns:
        (runs, problems).

    Raises:
        ImsimError: ``results_root`` is not a folder.
    """
    root = Path(results_root)
    if not root.is_dir():
        raise ImsimError(f"{root}: not a folder (expected a results folder holding run folders)")
    runs, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        if "metrics.json" in filenames and "config.json" in filenames:
            try:
                runs.append(read_run(dirpath, root))
            except ImsimError as e:
                problems.append(DiscoveryProblem(str(dirpath), str(e)))
    # unique labels: the method name unless a benchmark has several runs of it
    count: dict[tuple[str, str], int] = {}
    for r in runs:
        count[(r.bench_name, r.method)] = count.get((r.bench_name, r.method), 0) + 1
    out = []
    for r in runs:
        label = r.method if count[(r.bench_name, r.method)] == 1 else f"{r.method} [{r.run_id}]"
        out.append(RunInfo(r.path, r.run_id, r.method, label, r.config, r.metrics, r.timings, r.bench_name,
                           r.bench_root))
    out.sort(key=lambda r: (r.bench_name, r.label))
    return out, problems


def runs_table(runs: list[RunInfo]) -> pd.DataFrame:
    """One row per run: label, method, benchmark, folder, the headline figures of both protocols,
    total seconds and notes (JSON text)."""
    rows = []
    for r in runs:
        row = {"label": r.label, "method": r.method, "benchmark": r.bench_name, "run_id": r.run_id,
               "path": str(r.path)}
        for p in protocol_names():
            for k in ("micro_ap", "recall_at_p90", "recall_at_rank1"):
                row[f"{p}.{k}"] = r.metric(p, k)
        row["seconds"] = r.timings.get("total")
        row["notes"] = json.dumps(r.notes, sort_keys=True) if r.notes else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=["label", "method", "benchmark", "run_id", "path",
                                       *[f"{p}.{k}" for p in protocol_names()
                                         for k in ("micro_ap", "recall_at_p90", "recall_at_rank1")],
                                       "seconds", "notes"])


def load_per_query(run: RunInfo | str | Path) -> pd.DataFrame:
    """``per_query.parquet`` of a run (:func:`imsim_lab.runfolder.read_per_query`)."""
    from ...runfolder import read_per_query

    return read_per_query(run.path if isinstance(run, RunInfo) else run)


def load_predictions(run: RunInfo | str | Path):
    """``predictions.csv`` of a run (:func:`imsim_lab.runfolder.read_predictions`)."""
    from ...runfolder import read_predictions

    return read_predictions(run.path if isinstance(run, RunInfo) else run)


def _manifest_sha(root: Path) -> str | None:
    from ...data.benchmark import sha256_file

    p = root / "manifest.json"
    return sha256_file(p) if p.is_file() else None


def resolve_benchmark(run: RunInfo, search: list[str | Path] = ()) -> Path | None:
    """The benchmark folder of a run: the recorded one when it still holds the same benchmark,
    else a folder under ``search`` (e.g. the results folder and its parent, two levels deep)
    whose ``manifest.json`` has the recorded checksum. None when none is found.
    """
    from ...data.benchmark import is_benchmark

    want = run.manifest_sha256
    rec = Path(run.bench_root) if run.bench_root else None
    if rec is not None and is_benchmark(rec) and (want is None or _manifest_sha(rec) == want):
        return rec
    if want is None:
        return None
    for base in search:
        base = Path(base)
        if not base.is_dir():
            continue
        for cand in [base, *sorted(base.glob("*")), *sorted(base.glob("*/*"))]:
            if cand.is_dir() and (cand / "manifest.json").is_file() and is_benchmark(cand) \
                    and _manifest_sha(cand) == want:
                return cand
    return None


def find_benchmarks(root: str | Path, depth: int = 3) -> list[Path]:
    """Benchmark folders (``manifest.json``, ``ground_truth.csv``, ``queries.parquet``) under
    ``root``, at most ``depth`` levels down, sorted."""
    from ...data.benchmark import is_benchmark

    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    base = len(root.resolve().parts)
    for dirpath, dirnames, _ in os.walk(root):
        p = Path(dirpath)
        if is_benchmark(p):
            out.append(p)
            dirnames[:] = []
            continue
        if len(p.resolve().parts) - base >= depth:
            dirnames[:] = []
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
    return sorted(out)
