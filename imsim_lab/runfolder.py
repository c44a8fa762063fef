"""The run folder: its layout, its columns, and the one writer and the readers of its files.

Every run folder, whatever wrote it (the runner for either track, the explorer's upload, a lesson),
has the same files (``docs/CONTRACTS.md``, "Run folder")::

    RUNDIR/config.json        resolved configuration (method, track, params, benchmark, versions, notes)
           predictions.csv    official matching-track CSV (the final predictions, isc2021's list)
           metrics.json       {protocol: Metrics.to_dict()}; written last: it marks the run finished
           per_query.parquet  one row per benchmark query, from the final predictions (:data:`PER_QUERY_COLUMNS`)
           timings.json       {phase: seconds}
           descriptors.h5     descriptor track only, d <= 256
           features/          descriptor track: query / reference / training descriptors
           candidates.parquet matching track: every candidate pair with its descriptor score and rank,
                              its final score and the matcher's per-pair columns
           candidates/        matching track: the descriptor run the candidates came from (unless given)

:func:`write_outputs` writes predictions, per-query table, timings, config and metrics in that
order, each atomically; :func:`per_query_from_predictions` computes the per-query table from the
**final** predictions, so a rescored run reports the rank and score of the truth after rescoring.
Readers (:func:`read_config`, :func:`read_metrics`, :func:`read_timings`, :func:`read_per_query`,
:func:`read_predictions`) name the file and the problem when something is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_write_json, atomic_write_parquet
from .errors import FormatError, ImsimError

CONFIG = "config.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
PER_QUERY = "per_query.parquet"
TIMINGS = "timings.json"
DESCRIPTORS = "descriptors.h5"
FEATURES = "features"
CANDIDATES = "candidates.parquet"
CANDIDATE_RUN = "candidates"
#: folder names inside a run folder that are never run folders of the results themselves
INTERNAL_DIRS = (FEATURES, "shards", CANDIDATE_RUN, "matcher", "robustness")

#: the columns of ``per_query.parquet``: ``true_rank`` is the 0-based rank of the true reference
#: among the query's final predictions (ties count against it), -1 when not predicted
PER_QUERY_COLUMNS = ("query_id", "family", "strength", "has_match", "reference_id", "true_rank",
                     "true_score", "top_reference_id", "top_score")


def is_run_folder(path: str | Path) -> bool:
    """A run folder is any folder with ``metrics.json`` and ``config.json``."""
    p = Path(path)
    return (p / METRICS).is_file() and (p / CONFIG).is_file()


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path`` (FormatError naming the file otherwise)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(path, f"not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise FormatError(path, "expected a JSON object")
    return obj


def require_run(path: str | Path) -> Path:
    path = Path(path)
    if not is_run_folder(path):
        raise ImsimError(f"{path}: not a finished run folder (needs {METRICS} and {CONFIG}); make one with "
                         f"`imsim-lab run METHOD --bench DIR --out {path}`")
    return path


def read_config(run: str | Path) -> dict:
    return read_json(Path(run) / CONFIG)


def read_metrics(run: str | Path) -> dict:
    from .eval.protocols import protocol_names

    path = Path(run) / METRICS
    metrics = read_json(path)
    if not any(p in metrics for p in protocol_names()):
        raise FormatError(path, f"no section for any protocol ({', '.join(protocol_names())})")
    return metrics


def read_timings(run: str | Path) -> dict:
    """``timings.json`` (empty when missing or unreadable: timings are informative only)."""
    try:
        return read_json(Path(run) / TIMINGS)
    except FormatError:
        return {}


def read_per_query(run: str | Path):
    """``per_query.parquet`` of a run, validated and typed (columns :data:`PER_QUERY_COLUMNS`)."""
    import pandas as pd

    path = Path(run) / PER_QUERY
    if not path.is_file():
        raise FormatError(path, "file not found (the run has no per-query table)")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any parquet error becomes a named one
        raise FormatError(path, f"not a readable parquet file ({e})") from None
    missing = [c for c in PER_QUERY_COLUMNS if c not in df.columns]
    if missing:
        raise FormatError(path, f"missing column(s) {', '.join(missing)}")
    for c in ("query_id", "family", "reference_id", "top_reference_id"):
        df[c] = df[c].fillna("").astype(str)
    df["has_match"] = df["has_match"].astype(bool)
    df["true_rank"] = df["true_rank"].fillna(-1).astype(np.int64)
    for c in ("strength", "true_score", "top_score"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    return df


def read_predictions(run: str | Path):
    """``predictions.csv`` of a run (no row cap: a run may use a larger budget)."""
    from .eval.formats import read_predictions as read_csv

    return read_csv(Path(run) / PREDICTIONS, max_rows=None)


def read_candidates(run: str | Path):
    """``candidates.parquet`` of a matching run, or None for a descriptor run."""
    import pandas as pd

    path = Path(run) / CANDIDATES
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise FormatError(path, f"not a readable parquet file ({e})") from None


def per_query_from_predictions(queries, preds):
    """The per-query table (:data:`PER_QUERY_COLUMNS`) of a benchmark's queries from predictions.

    Args:
        queries: DataFrame with query_id, family, strength, has_match, reference_id (a benchmark's
            ``queries`` table, or the new queries of a robustness cell).
        preds: :class:`~imsim_lab.eval.formats.Predictions` (any order).

    ``true_rank``: 0-based rank of the true reference among the query's predictions sorted by score,
    ties counting against it (as for R@1), -1 when not predicted; ``true_score``: its score (NaN when
    not predicted); ``top_*``: the query's best prediction.
    """
    import pandas as pd

    q = queries.reset_index(drop=True)
    df = pd.DataFrame({"query_id": np.asarray(preds.query_ids, dtype=object).astype(str),
                       "ref": np.asarray(preds.reference_ids, dtype=object).astype(str),
                       "score": np.asarray(preds.scores, float)})
    df = df.sort_values(["query_id", "score"], ascending=[True, False], kind="stable")
    top = df.drop_duplicates("query_id", keep="first").set_index("query_id")
    truth = dict(zip(q["query_id"].astype(str), q["reference_id"].astype(str)))
    df["truth"] = df["query_id"].map(truth).fillna("")
    hit = df[(df["truth"] != "") & (df["ref"] == df["truth"])].drop_duplicates("query_id").set_index("query_id")
    ge = df.merge(hit[["score"]].rename(columns={"score": "ts"}), left_on="query_id", right_index=True)
    rank = (ge["score"] >= ge["ts"]).groupby(ge["query_id"]).sum() - 1
    qid = q["query_id"].astype(str)
    return pd.DataFrame({
        "query_id": qid.to_numpy(), "family": q["family"].astype(str).to_numpy(),
        "strength": q["strength"].astype(float).to_numpy(), "has_match": q["has_match"].astype(bool).to_numpy(),
        "reference_id": q["reference_id"].astype(str).to_numpy(),
        "true_rank": qid.map(rank).fillna(-1).astype(np.int64).to_numpy(),
        "true_score": qid.map(hit["score"]).astype(float).to_numpy(),
        "top_reference_id": qid.map(top["ref"]).fillna("").astype(str).to_numpy(),
        "top_score": qid.map(top["score"]).astype(float).to_numpy(),
    }, columns=list(PER_QUERY_COLUMNS))


def sorted_predictions(preds):
    """``preds`` sorted by score descending (stable), as a run's predictions.csv holds them."""
    from .eval.formats import Predictions

    s = np.asarray(preds.scores, np.float64)
    order = np.argsort(-s, kind="stable")
    if np.array_equal(order, np.arange(len(s))):
        return preds
    return Predictions(np.asarray(preds.query_ids)[order], np.asarray(preds.reference_ids)[order], s[order])


def write_outputs(out: str | Path, config: dict, predictions, metrics: dict, per_query, timings: dict,
                  descriptors=None, candidates=None) -> None:
    """Write a run's files, each atomically; ``metrics.json`` last (it marks the run finished).

    Args:
        out: the run folder (created).
        config: the resolved configuration (``config.json``).
        predictions: the final :class:`~imsim_lab.eval.formats.Predictions` (``predictions.csv``,
            sorted by score descending).
        metrics: ``{protocol: Metrics.to_dict()}``.
        per_query: a DataFrame with :data:`PER_QUERY_COLUMNS` (see :func:`per_query_from_predictions`).
        timings: ``{phase: seconds}``.
        descriptors: a :class:`~imsim_lab.eval.formats.DescriptorSubmission` for ``descriptors.h5``
            (descriptor track, d <= 256), or None (any stale file is removed).
        candidates: a DataFrame of candidate pairs (matching track) for ``candidates.parquet``.
    """
    from .eval.formats import write_descriptors, write_predictions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = [c for c in PER_QUERY_COLUMNS if c not in per_query.columns]
    if missing:
        raise ValueError(f"per-query table lacks {', '.join(missing)}")
    write_predictions(out / PREDICTIONS, sorted_predictions(predictions))
    if descriptors is not None:
        write_descriptors(out / DESCRIPTORS, descriptors)
    else:
        (out / DESCRIPTORS).unlink(missing_ok=True)
    if candidates is not None:
        atomic_write_parquet(out / CANDIDATES, candidates)
    atomic_write_parquet(out / PER_QUERY, per_query[list(PER_QUERY_COLUMNS)])
    atomic_write_json(out / TIMINGS, {k: round(float(v), 4) for k, v in timings.items()})
    atomic_write_json(out / CONFIG, config)
    atomic_write_json(out / METRICS, metrics)
