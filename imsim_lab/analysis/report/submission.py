"""Evaluate an uploaded submission (matching CSV or descriptor HDF5) against a benchmark.

The upload is first stored inside the results folder (``RESULTS/uploads/``, a sanitised name with
the content hash, written atomically), then read with the official readers of
:mod:`imsim_lab.eval.formats`, so a bad file gets the same message as on the command line (file, row or
dataset, problem). Nothing is written outside the results folder. :func:`save_as_run` turns an
evaluated submission into a run folder so that it joins the leaderboard.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ...atomic import atomic_write_bytes
from ...errors import FormatError, ImsimError

MAX_UPLOAD_BYTES = 200 * 2**20
#: the most the stored uploads (files directly in ``uploads/``) may hold together; oldest removed first
MAX_UPLOADS_TOTAL_BYTES = 2 * 2**30
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
UPLOADS = "uploads"


@dataclass(frozen=True, eq=False)
class SubmissionResult:
    """An evaluated submission.

    Attributes:
        kind: "csv" (matching track) or "hdf5" (descriptor track).
        path: where the upload was stored.
        metrics: protocol -> ``Metrics.to_dict()`` for the protocols that accepted the file.
        errors: protocol -> message for a protocol that refused it (isc2021 refuses duplicates).
        predictions: protocol -> :class:`~imsim_lab.eval.formats.Predictions` evaluated.
        per_query: a per-query table (docs/CONTRACTS.md columns) from the isc2021 predictions
            (or the DrivenData ones when isc2021 refused the file).
    """

    kind: str
    path: Path
    metrics: dict
    errors: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)
    per_query: pd.DataFrame | None = None


def safe_name(filename: str) -> str:
    """A file name without folders or odd characters (``../../x y.csv`` -> ``x_y.csv``)."""
    base = os.path.basename(str(filename).replace("\\", "/")) or "upload"
    base = re.sub(r"[^A-Za-z0-9._+-]+", "_", base).lstrip(".") or "upload"
    return base[:80]


def store_upload(data, filename: str, results_dir: str | Path, max_bytes: int = MAX_UPLOAD_BYTES,
                 max_total_bytes: int = MAX_UPLOADS_TOTAL_BYTES) -> Path:
    """Write an upload to ``results_dir/uploads/<stem>-<sha8><suffix>`` (atomic) and return it.

    Args:
        data: the bytes, or an uploaded file with ``.size`` and ``.getvalue()`` (Streamlit's
            ``UploadedFile``): its size is checked before its content is read.
        filename: the name it was uploaded under (sanitised with :func:`safe_name`).
        results_dir: the results folder.
        max_bytes: the largest upload accepted.
        max_total_bytes: the stored uploads (the files directly in ``uploads/``; saved run folders
            are not counted) are kept under this total by removing the oldest ones first.

    Raises:
        ImsimError: the upload is empty or larger than ``max_bytes``.
    """
    size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else int(data.size)
    if not size:
        raise ImsimError(f"{filename}: the uploaded file is empty")
    if size > max_bytes:
        raise ImsimError(f"{filename}: {size / 2**20:.1f} MiB, more than the limit of {max_bytes / 2**20:.0f} MiB")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = data.getvalue()
    name = safe_name(filename)
    stem, suffix = os.path.splitext(name)
    digest = hashlib.sha256(data).hexdigest()[:8]
    folder = Path(results_dir) / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{stem}-{digest}{suffix}"
    atomic_write_bytes(dest, data)
    stored = sorted((p for p in folder.iterdir() if p.is_file() and p != dest), key=lambda p: p.stat().st_mtime)
    total = size + sum(p.stat().st_size for p in stored)
    for old in stored:  # oldest first, never the upload just stored
        if total <= max_total_bytes:
            break
        total -= old.stat().st_size
        old.unlink(missing_ok=True)
    return dest


def detect_kind(path: str | Path) -> str:
    """"hdf5" (by its signature) or "csv" (text starting with a header); FormatError otherwise."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FormatError(path, "neither an HDF5 file nor UTF-8 CSV text") from None
    if text.lstrip().lower().startswith("query_id"):
        return "csv"
    raise FormatError(path, "not a submission: expected a CSV with the header query_id,reference_id,score or a "
                            "descriptor HDF5 file", "row 1")


def evaluate_submission(path: str | Path, bench, knn: int | None = None) -> SubmissionResult:
    """Evaluate a stored submission under both protocols against ``bench``'s ground truth.

    Args:
        path: a matching CSV or descriptor HDF5 (:func:`detect_kind`).
        bench: a loaded :class:`imsim_lab.data.benchmark.Benchmark`.
        knn: descriptors only: k neighbours per query instead of the global budgets.

    Raises:
        FormatError: the file is malformed (names the row or dataset); a protocol that refuses
            a well-formed file (isc2021 and duplicates) is reported in ``errors`` instead.
    """
    from ...eval.candidates import descriptor_predictions
    from ...eval.formats import read_descriptors, read_predictions
    from ...eval.metrics import evaluate
    from ...eval.protocols import protocol_names

    path = Path(path)
    kind = detect_kind(path)
    metrics, errors, preds = {}, {}, {}
    if kind == "csv":
        base = read_predictions(path, allow_duplicates=True)
        for protocol in protocol_names():
            try:
                metrics[protocol] = evaluate(bench.gt, base, protocol).to_dict()
                preds[protocol] = base
            except FormatError as e:
                errors[protocol] = str(e)
    else:
        sub = read_descriptors(path)
        for protocol in protocol_names():
            p = descriptor_predictions(sub, bench.gt, protocol, knn=knn)
            metrics[protocol] = evaluate(bench.gt, p, protocol).to_dict()
            preds[protocol] = p
    from ...runfolder import per_query_from_predictions

    first = preds.get("isc2021", preds.get("drivendata"))
    pq = per_query_from_predictions(bench.queries, first) if first is not None else None
    return SubmissionResult(kind, path, metrics, errors, preds, pq)


def save_as_run(result: SubmissionResult, bench, results_dir: str | Path, name: str) -> Path:
    """Write an evaluated submission as a run folder ``results_dir/uploads/<name>/`` (the explorer
    then lists it like any run), through :func:`imsim_lab.runfolder.write_outputs`.

    Raises:
        ImsimError: a protocol refused the file, ``name`` is empty, or the folder holds another run
            (or is not a folder).
    """
    from ...data.benchmark import sha256_file
    from ...runfolder import CONFIG, read_json, write_outputs

    if result.errors:
        raise ImsimError("only a submission accepted by both protocols can join the leaderboard: "
                         + "; ".join(f"{k}: {v}" for k, v in result.errors.items()))
    if not str(name).strip():
        raise ImsimError("give the run a name")
    out = Path(results_dir) / UPLOADS / safe_name(name)
    if out.exists() and not out.is_dir():
        raise ImsimError(f"{out}: exists and is not a folder; choose another name")
    if (out / CONFIG).exists():
        try:
            old = read_json(out / CONFIG)
        except FormatError:
            old = {}
        if (old.get("submission") or {}).get("file") != str(result.path):
            raise ImsimError(f"{out}: holds another run (a run of this name exists, from another submission); choose another name")
    mpath = Path(bench.root) / "manifest.json"
    config = {"method": f"upload:{safe_name(name)}", "track": "matching" if result.kind == "csv" else "descriptor",
              "description": f"uploaded {result.kind} submission",
              "submission": {"kind": result.kind, "file": str(result.path),
                             "sha256": sha256_file(result.path)},
              "benchmark": {"root": str(Path(bench.root).resolve()), "name": bench.name,
                            "manifest_sha256": sha256_file(mpath) if mpath.is_file() else None,
                            "counts": bench.counts()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        write_outputs(out, config, result.predictions["isc2021"], result.metrics, result.per_query, {})
    except OSError as e:
        raise ImsimError(f"{out}: cannot write the run ({e.strerror or e})") from None
    return out


def submission_run_data(result: SubmissionResult, bench, label: str = "upload"):
    """The evaluated submission as a :class:`~imsim_lab.analysis.report.tables.RunData`, so the per-family
    tables and comparisons apply to it as to any run."""
    from .runs import RunInfo
    from .tables import RunData, _sorted
    from .weighted import prepare_scored

    gt = _sorted(bench.gt)
    info = RunInfo(path=result.path.parent, run_id=result.path.name, method=label, label=label,
                   config={"submission": {"kind": result.kind, "file": str(result.path)}}, metrics=result.metrics,
                   bench_name=bench.name, bench_root=str(bench.root))
    pq = result.per_query.set_index("query_id").reindex(gt.query_ids).reset_index()
    scored = {p: prepare_scored(gt, preds, p) for p, preds in result.predictions.items()}
    return RunData(info, gt, pq, scored)
