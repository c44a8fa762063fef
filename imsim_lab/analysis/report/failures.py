"""Failure cases of a run: missed matches and confident false positives, with filters and pages.

Both read the per-query table of a run (docs/CONTRACTS.md): ``true_rank`` (0-based rank of the
true reference in the query's top-k, -1 when not retrieved), ``true_score``, ``top_reference_id``
and ``top_score``. The operating threshold is the score at which the run reaches 90 % precision
(``metrics.json``, ``threshold_at_p90``): a prediction scored at or above it is one the system
would report.

A retrieved reference that belongs to the same sibling group as the truth (a near-duplicate
shot of the same scene) is flagged: in copy detection it is NOT a match.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

MISSED_COLUMNS = ["query_id", "family", "strength", "reference_id", "true_rank", "true_score", "top_reference_id",
                  "top_score", "margin", "retrieved_sibling", "reason"]
FP_COLUMNS = ["query_id", "family", "strength", "kind", "top_reference_id", "top_score", "excess",
              "reference_id", "retrieved_sibling"]


def filter_queries(df: pd.DataFrame, families: list[str] | None = None,
                   strength: tuple[float, float] | None = None) -> pd.DataFrame:
    """Rows of a per-query-like table within some families and a closed strength range."""
    m = np.ones(len(df), bool)
    if families:
        m &= df["family"].isin(list(families)).to_numpy()
    if strength is not None:
        s = df["strength"].to_numpy(float)
        m &= (s >= strength[0] - 1e-12) & (s <= strength[1] + 1e-12)
    return df[m]


def _same_group(a: pd.Series, b: pd.Series, groups: dict | None) -> np.ndarray:
    if not groups:
        return np.zeros(len(a), bool)
    ga = a.map(groups).fillna("").to_numpy()
    gb = b.map(groups).fillna("").to_numpy()
    return (ga != "") & (ga == gb)


def missed_matches(pq: pd.DataFrame, threshold: float | None = None, criterion: str = "rank1",
                   groups: dict | None = None) -> pd.DataFrame:
    """Positive queries the run gets wrong, worst first.

    Args:
        pq: a per-query table.
        threshold: the operating score (``threshold_at_p90``), used by ``criterion="threshold"``.
        criterion: ``"rank1"``: the true reference is not ranked first; ``"threshold"``: it is not
            ranked first or its score is below the threshold (the system would not report it).
        groups: image id -> sibling group (:func:`imsim_lab.analysis.report.browse.sibling_groups`).

    Returns:
        Columns :data:`MISSED_COLUMNS`; ``margin`` = top_score − true_score (how far the truth is
        behind what was retrieved instead); ``reason`` in words.
    """
    if criterion not in ("rank1", "threshold"):
        raise ValueError(f"criterion must be 'rank1' or 'threshold', not {criterion!r}")
    pos = pq[pq["has_match"].to_numpy(bool)]
    rank = pos["true_rank"].to_numpy()
    bad = rank != 0
    below = np.zeros(len(pos), bool)
    if criterion == "threshold" and threshold is not None and not math.isnan(threshold):
        below = ~(pos["true_score"].to_numpy(float) >= threshold)
        bad |= below
    df = pos[bad].copy()
    df["margin"] = df["top_score"] - df["true_score"]
    df["retrieved_sibling"] = _same_group(df["top_reference_id"], df["reference_id"], groups) & \
        (df["top_reference_id"] != df["reference_id"])
    r = df["true_rank"].to_numpy()
    reason = np.where(r < 0, "true reference not retrieved", np.where(r > 0, "true reference ranked below another",
                                                                     "ranked first but below the threshold"))
    reason = np.where(df["retrieved_sibling"].to_numpy(), "a near-duplicate sibling was ranked first", reason)
    df["reason"] = reason
    key = np.where(r < 0, np.inf, df["margin"].fillna(np.inf).to_numpy())
    df = df.assign(_k=key).sort_values(["_k", "query_id"], ascending=[False, True], kind="stable")
    return df[MISSED_COLUMNS].reset_index(drop=True)


def confident_false_positives(pq: pd.DataFrame, threshold: float | None, groups: dict | None = None,
                              include_wrong_reference: bool = True) -> pd.DataFrame:
    """Top predictions that are wrong and scored at or above the operating threshold.

    Args:
        threshold: ``threshold_at_p90``; None (90 % precision never reached): every wrong top
            prediction is listed, highest score first.
        include_wrong_reference: also list queries that have a match but whose top prediction
            is another reference (else only queries without a match).

    Returns:
        Columns :data:`FP_COLUMNS`; ``kind``: "no-match query" or "wrong reference";
        ``excess`` = top_score − threshold.
    """
    has = pq["has_match"].to_numpy(bool)
    top = pq["top_reference_id"].astype(str).to_numpy()
    wrong = (top != "") & (~has | (include_wrong_reference & (top != pq["reference_id"].astype(str).to_numpy())))
    score = pq["top_score"].to_numpy(float)
    thr = None if threshold is None or (isinstance(threshold, float) and math.isnan(threshold)) else float(threshold)
    if thr is not None:
        wrong &= score >= thr
    df = pq[wrong].copy()
    df["kind"] = np.where(df["has_match"].to_numpy(bool), "wrong reference", "no-match query")
    df["excess"] = df["top_score"] - thr if thr is not None else np.nan
    # a no-match query made from a sibling of a reference: compare the query's source if known
    src = df["source_id"] if "source_id" in df else df["reference_id"]
    df["retrieved_sibling"] = _same_group(df["top_reference_id"], src.where(src != "", df["reference_id"]), groups)
    df = df.sort_values(["top_score", "query_id"], ascending=[False, True], kind="stable")
    return df[FP_COLUMNS].reset_index(drop=True)


def paginate(df: pd.DataFrame, page: int, per_page: int) -> tuple[pd.DataFrame, int]:
    """Rows of 1-based ``page`` and the number of pages (at least 1); the page is clamped."""
    per_page = max(int(per_page), 1)
    n_pages = max(1, -(-len(df) // per_page))
    page = min(max(int(page), 1), n_pages)
    return df.iloc[(page - 1) * per_page: page * per_page], n_pages


def recipe_text(ops_json: str | list) -> str:
    """A recorded edit in one line: ``rotate(angle=12.3) → jpeg(quality=40)``."""
    try:
        ops = json.loads(ops_json) if isinstance(ops_json, str) else list(ops_json)
    except (TypeError, ValueError):
        return str(ops_json)
    if not ops:
        return "(no edit)"
    parts = []
    for op in ops:
        if not isinstance(op, dict):
            parts.append(str(op))
            continue
        params = op.get("params") or {}
        shown = []
        for k, v in params.items():
            if isinstance(v, float):
                v = f"{v:.3g}"
            elif isinstance(v, (list, dict)):
                v = json.dumps(v, separators=(",", ":"))
                v = v if len(v) <= 28 else v[:25] + "..."
            shown.append(f"{k}={v}")
        parts.append(f"{op.get('name', '?')}({', '.join(shown)})")
    return " → ".join(parts)
