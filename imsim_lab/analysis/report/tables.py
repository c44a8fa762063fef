"""The tables behind the explorer: leaderboard with bootstrap intervals, per-family µAP,
AP versus strength, and the comparison of two runs.

Every figure is the official metric (:func:`imsim_lab.eval.metrics.evaluate`), computed through the
weighted engine of :mod:`imsim_lab.analysis.report.weighted` (tested equal to ``evaluate`` and to
``evaluate(queries=...)``). Per-family µAP follows the evaluation's definition: the family's
positives plus every query without a match.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...eval.formats import GroundTruth, Predictions
from ...eval.protocols import get_protocol
from .runs import RunInfo, load_per_query, load_predictions
from .weighted import (METRIC_NAMES, ScoredSet, bootstrap_counts, prepare_scored, subset_weights,
                       weighted_metrics)



@dataclass(frozen=True, eq=False)
class RunData:
    """What the tables need of one run, loaded once.

    Attributes:
        info: the run folder.
        gt: the ground truth, queries sorted by id (the same order for every run of a benchmark,
            so that bootstrap resamples are paired).
        per_query: ``per_query.parquet`` aligned with ``gt`` (row i = ``gt.query_ids[i]``).
        scored: protocol -> :class:`ScoredSet`.
        notes: what the reader should know (e.g. a DrivenData figure rebuilt approximately).
    """

    info: RunInfo
    gt: GroundTruth
    per_query: pd.DataFrame
    scored: dict
    notes: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.info.label


def ground_truth_of(per_query: pd.DataFrame) -> GroundTruth:
    """The ground truth, sorted by query id, from a per-query table (every benchmark query)."""
    df = per_query.sort_values("query_id", kind="stable")
    return GroundTruth(df["query_id"].to_numpy(dtype=object), df["reference_id"].fillna("").to_numpy(dtype=object))


def drivendata_predictions(preds: Predictions, n_queries: int) -> Predictions:
    """The DrivenData candidate set rebuilt from a run's isc2021 predictions.

    Both come from the same global search (``imsim_lab.eval.candidates``) with budgets 500,000 and
    nq x 10; the isc2021 file is sorted best first with the same deterministic tie order, so its
    first nq x 10 rows are the DrivenData set whenever 500,000 >= nq x 10.
    """
    n = get_protocol("drivendata").budget(n_queries)
    codes = preds.query_codes[:n] if preds.query_codes is not None else None
    return Predictions(preds.query_ids[:n], preds.reference_ids[:n], preds.scores[:n], query_codes=codes,
                       query_vocab=preds.query_vocab if codes is not None else None)


def load_run_data(info: RunInfo, gt: GroundTruth | None = None) -> RunData:
    """Read a run's per-query table and predictions and prepare both protocols.

    Args:
        info: the run.
        gt: the benchmark ground truth (default: rebuilt from the per-query table).

    Raises:
        FormatError: a file of the run is missing or malformed.
    """
    pq = load_per_query(info)
    gt = ground_truth_of(pq) if gt is None else _sorted(gt)
    pq = pq.set_index("query_id").reindex(gt.query_ids).reset_index()
    pq["query_id"] = gt.query_ids.astype(str)
    pq["family"] = pq["family"].fillna("unknown")
    preds = load_predictions(info)
    scored, notes = {}, []
    order = np.argsort(-preds.scores, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        preds = Predictions(preds.query_ids[order], preds.reference_ids[order], preds.scores[order])
    scored["isc2021"] = prepare_scored(gt, preds, "isc2021")
    # an uploaded matching CSV is evaluated as given under both protocols; a descriptor run's
    # DrivenData set is the head of its isc2021 set
    csv_upload = (info.config.get("submission") or {}).get("kind") == "csv"
    dd = preds if csv_upload else drivendata_predictions(preds, len(gt))
    scored["drivendata"] = prepare_scored(gt, dd, "drivendata")
    rec = info.metric("drivendata", "micro_ap")
    got = weighted_metrics(scored["drivendata"], np.ones((1, len(gt))))["micro_ap"][0]
    if rec is not None and not np.isnan(got) and abs(got - rec) > 1e-6:
        budget = get_protocol("drivendata").budget(len(gt))
        notes.append(f"DrivenData intervals use the top {budget} isc2021 predictions "
                     f"(µAP {got:.4f}; metrics.json {rec:.4f})")
    return RunData(info, gt, pq, scored, notes)


def _sorted(gt: GroundTruth) -> GroundTruth:
    o = np.argsort(gt.query_ids.astype(str), kind="stable")
    return GroundTruth(gt.query_ids[o], gt.reference_ids[o], gt.path)


# --------------------------------------------------------------------------------------------
# leaderboard


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    x = np.nan_to_num(np.asarray(x, float), nan=0.0)
    a = (1 - level) / 2
    return float(np.quantile(x, a)), float(np.quantile(x, 1 - a))


def tie_ranks(point: np.ndarray, replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Ranks that treat statistically indistinguishable runs as ties.

    Rank of run i = 1 + the number of runs j whose paired bootstrap difference ``m_j − m_i``
    has its whole ``level`` interval above 0 (j is significantly better than i). Runs that no
    other run beats share rank 1.

    Shapes: ``point`` (R,), ``replicates`` (R, B) on the same resamples (NaN counts as 0).
    """
    rep = np.nan_to_num(np.asarray(replicates, float), nan=0.0)
    R = len(rep)
    a = (1 - level) / 2
    ranks = np.ones(R, np.int64)
    for i in range(R):
        for j in range(R):
            if i != j and np.quantile(rep[j] - rep[i], a) > 0:
                ranks[i] += 1
    return ranks


def leaderboard(runs: list[RunData], protocol: str = "isc2021", n_boot: int = 200, seed: int = 0,
                level: float = 0.95) -> pd.DataFrame:
    """One row per run, best µAP first, with percentile bootstrap intervals over queries.

    Point figures are those of ``metrics.json``; intervals come from ``n_boot`` resamples of the
    queries (with replacement, seeded, the same resamples for every run of a benchmark). The
    column ``tie_rank`` is :func:`tie_ranks` on µAP; ``tied_with_best`` marks the runs no other
    run beats.

    Columns: label, method, micro_ap, micro_ap_low, micro_ap_high, recall_at_p90(+_low/_high),
    recall_at_rank1(+_low/_high), rank, tie_rank, tied_with_best, n_positives, n_predictions,
    threshold_at_p90, notes.
    """
    cols = ["label", "method", "benchmark"]
    for k in METRIC_NAMES:
        cols += [k, f"{k}_low", f"{k}_high"]
    cols += ["rank", "tie_rank", "tied_with_best", "n_positives", "n_predictions", "threshold_at_p90", "notes"]
    if not runs:
        return pd.DataFrame(columns=cols)
    rows, reps = [], []
    W = None
    for rd in runs:
        ss: ScoredSet = rd.scored[protocol]
        if W is None or W.shape[1] != ss.nq:
            W = bootstrap_counts(ss.nq, n_boot, seed)
        boot = weighted_metrics(ss, W)
        point = weighted_metrics(ss, np.ones((1, ss.nq)))
        m = rd.info.metrics.get(protocol) or {}
        row = {"label": rd.label, "method": rd.info.method, "benchmark": rd.info.bench_name}
        for k in METRIC_NAMES:
            v = m.get(k, None) if k in m else float(point[k][0])
            row[k] = np.nan if v is None else float(v)
            lo, hi = _percentiles(boot[k], level)
            if k == "recall_at_rank1" and not get_protocol(protocol).rank_recalls:
                lo = hi = np.nan
            row[f"{k}_low"], row[f"{k}_high"] = lo, hi
        row["n_positives"] = m.get("n_positives", int(point["n_positives"][0]))
        row["n_predictions"] = m.get("n_predictions", ss.n_predictions)
        row["threshold_at_p90"] = m.get("threshold_at_p90")
        row["notes"] = "; ".join([*rd.notes, *(f"{k}: {v}" for k, v in rd.info.notes.items()
                                               if k in ("weights",))])
        rows.append(row)
        reps.append(boot["micro_ap"])
    df = pd.DataFrame(rows)
    df["tie_rank"] = tie_ranks(df["micro_ap"].to_numpy(), np.vstack(reps), level)
    df = df.sort_values(["micro_ap", "label"], ascending=[False, True], na_position="last", kind="stable")
    df["rank"] = np.arange(1, len(df) + 1)
    df["tied_with_best"] = df["tie_rank"] == 1
    return df[cols].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# per family and per strength


def family_groups() -> dict[str, str]:
    """family -> group ("geometric", "overlay", ...) of the registered families."""
    try:
        from ...data.augment import describe_families

        return {d["family"]: d["group"] for d in describe_families()}
    except Exception:  # noqa: BLE001 - the grouping is cosmetic; never fail a table for it
        return {}


def family_table(runs: list[RunData], protocol: str = "isc2021") -> pd.DataFrame:
    """µAP, R@P90 and R@1 of every run restricted to each transformation family.

    Columns: label, family, group, micro_ap, recall_at_p90, recall_at_rank1, n_positives, n_queries
    (long format: one row per run and family; pivot it for a heatmap).
    """
    groups = family_groups()
    out = []
    for rd in runs:
        pq = rd.per_query
        fam = pq["family"].astype(str).to_numpy()
        names = sorted(set(fam))
        members = fam[None, :] == np.array(names, dtype=object)[:, None]
        got = weighted_metrics(rd.scored[protocol], subset_weights(pq["has_match"].to_numpy(), members))
        for i, f in enumerate(names):
            out.append({"label": rd.label, "family": f, "group": groups.get(f, "chain" if f == "chain" else "other"),
                        **{k: float(got[k][i]) for k in METRIC_NAMES},
                        "n_positives": int(got["n_positives"][i]), "n_queries": int(members[i].sum())})
    cols = ["label", "family", "group", *METRIC_NAMES, "n_positives", "n_queries"]
    return pd.DataFrame(out, columns=cols)


def strength_bins(n_bins: int = 5) -> np.ndarray:
    """Edges of equal-width strength bins over 0..1."""
    return np.linspace(0.0, 1.0, n_bins + 1)


def strength_table(runs: list[RunData], protocol: str = "isc2021", n_bins: int = 5,
                   families: list[str] | None = None) -> pd.DataFrame:
    """µAP per strength bin (optionally within some families): positives of the bin plus every
    query without a match, as for a family.

    Columns: label, bin, strength_low, strength_high, strength_mid, micro_ap, recall_at_p90,
    n_positives.
    """
    edges = strength_bins(n_bins)
    out = []
    for rd in runs:
        pq = rd.per_query
        s = pq["strength"].to_numpy(float)
        inside = np.ones(len(pq), bool) if not families else pq["family"].isin(families).to_numpy()
        b = np.clip(np.digitize(s, edges[1:-1], right=False), 0, n_bins - 1)
        members = (b[None, :] == np.arange(n_bins)[:, None]) & inside[None, :] & ~np.isnan(s)[None, :]
        got = weighted_metrics(rd.scored[protocol], subset_weights(pq["has_match"].to_numpy(), members))
        for i in range(n_bins):
            out.append({"label": rd.label, "bin": i, "strength_low": edges[i], "strength_high": edges[i + 1],
                        "strength_mid": (edges[i] + edges[i + 1]) / 2, "micro_ap": float(got["micro_ap"][i]),
                        "recall_at_p90": float(got["recall_at_p90"][i]),
                        "n_positives": int(got["n_positives"][i])})
    return pd.DataFrame(out, columns=["label", "bin", "strength_low", "strength_high", "strength_mid", "micro_ap",
                                      "recall_at_p90", "n_positives"])


def cell_queries(rd: RunData, family: str | None = None, strength: tuple[float, float] | None = None,
                 positives_only: bool = True) -> pd.DataFrame:
    """The per-query rows behind a table cell (a family, a strength bin), worst first: queries
    whose true reference is not retrieved, then by rank, then by score."""
    pq = rd.per_query
    m = np.ones(len(pq), bool)
    if family is not None:
        m &= (pq["family"] == family).to_numpy()
    if strength is not None:
        lo, hi = strength
        s = pq["strength"].to_numpy(float)
        m &= (s >= lo) & ((s < hi) | (hi >= 1.0) & (s <= hi))
    if positives_only:
        m &= pq["has_match"].to_numpy()
    df = pq[m].copy()
    key = np.where(df["true_rank"].to_numpy() < 0, 10**9, df["true_rank"].to_numpy())
    return df.assign(_k=-key).sort_values(["_k", "true_score"], kind="stable").drop(columns="_k")


# --------------------------------------------------------------------------------------------
# two runs


def compare_families(a: RunData, b: RunData, protocol: str = "isc2021") -> pd.DataFrame:
    """Per-family µAP of two runs and their difference (b − a), largest gains of b first.

    Columns: family, group, micro_ap_a, micro_ap_b, diff, n_positives.
    """
    t = family_table([a, b], protocol)
    ta = t[t["label"] == a.label].set_index("family")
    tb = t[t["label"] == b.label].set_index("family")
    fams = sorted(set(ta.index) | set(tb.index))
    df = pd.DataFrame({"family": fams,
                       "group": [ta["group"].get(f, tb["group"].get(f, "")) for f in fams],
                       "micro_ap_a": [ta["micro_ap"].get(f, np.nan) for f in fams],
                       "micro_ap_b": [tb["micro_ap"].get(f, np.nan) for f in fams],
                       "n_positives": [int(ta["n_positives"].get(f, tb["n_positives"].get(f, 0))) for f in fams]})
    df["diff"] = df["micro_ap_b"] - df["micro_ap_a"]
    return df.sort_values("diff", ascending=False, kind="stable", na_position="last").reset_index(drop=True)


def found_by_one(a: RunData, b: RunData, found: str = "rank1") -> pd.DataFrame:
    """Positive queries that one run finds and the other misses.

    Args:
        found: ``"rank1"`` (true reference ranked first) or ``"retrieved"`` (in the per-query
            top-k at all).

    Returns:
        DataFrame (query_id, family, strength, reference_id, winner, rank_a, rank_b, score_a,
        score_b, top_a, top_b): ``winner`` is the label of the run that finds it.
    """
    pa, pb = a.per_query, b.per_query
    ra, rb = pa["true_rank"].to_numpy(), pb["true_rank"].to_numpy()
    fa = (ra == 0) if found == "rank1" else (ra >= 0)
    fb = (rb == 0) if found == "rank1" else (rb >= 0)
    pos = pa["has_match"].to_numpy()
    sel = pos & (fa != fb)
    df = pd.DataFrame({"query_id": pa["query_id"][sel], "family": pa["family"][sel],
                       "strength": pa["strength"][sel], "reference_id": pa["reference_id"][sel],
                       "winner": np.where(fa[sel], a.label, b.label), "rank_a": ra[sel], "rank_b": rb[sel],
                       "score_a": pa["true_score"][sel], "score_b": pb["true_score"][sel],
                       "top_a": pa["top_reference_id"][sel], "top_b": pb["top_reference_id"][sel]})
    return df.sort_values(["winner", "family", "query_id"], kind="stable").reset_index(drop=True)


def pr_table(runs: list[RunData], protocol: str = "isc2021", max_points: int = 400) -> pd.DataFrame:
    """Precision-recall corners of each run (label, recall, precision), for plotting."""
    from .weighted import pr_points

    parts = []
    for rd in runs:
        r, p = pr_points(rd.scored[protocol], max_points)
        parts.append(pd.DataFrame({"label": rd.label, "recall": r, "precision": p}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["label", "recall", "precision"])
