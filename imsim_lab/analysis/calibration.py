"""Calibration and honest comparison of prediction sets held in memory (what the lessons report).

A copy detector is judged on one list of scored pairs pooled over all queries (µAP, R@P90), so
what matters beyond the ranking inside a query is whether one score means the same thing for
every query. This module measures that, and says when a difference is larger than its noise:

* :func:`pair_scores`: per query, the score of its true pair and of its best *wrong* pair; the two
  histograms overlap where a single threshold cannot separate copies from the rest
  (:func:`calibration_figure` draws them, one panel per method);
* :func:`pr_curves`: the precision-recall corners whose area is µAP (draw them with
  :func:`imsim_lab.analysis.report.figures.pr_figure`);
* :func:`metric_intervals` and :func:`paired_gain` / :func:`gains_table`: percentile bootstrap
  intervals over queries (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13),
  the paired version resampling the same queries for both methods; a gain whose interval holds 0
  is *not separable* on this benchmark;
* :func:`sweep_halves`: a hyper-parameter chosen on one seeded half of the queries and reported
  on the other, so that the reported figure is not the maximum of noisy measurements;
* :func:`failure_gallery`: missed copies and confident false positives as one image sheet.

Every figure is the official metric: the weighted engine of
:mod:`imsim_lab.analysis.report.weighted` (tested equal to :func:`imsim_lab.eval.metrics.evaluate`).
A *query set* here is strict: its copies **and** its queries without a match, nothing else (unlike
``evaluate(queries=...)``, which keeps every query without a match), so the two halves of a split
share no query. Taught in ``notebooks/02_background_set`` and ``notebooks/03_descriptor_1st_lyakaap``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..eval.formats import GroundTruth, Predictions
from .report.weighted import METRIC_NAMES, prepare_scored, pr_points, weighted_metrics

PAIR_KINDS = ("true pair", "best wrong pair")


def query_mask(gt: GroundTruth, queries: Sequence[str] | None = None) -> np.ndarray:
    """(nq,) bool in ``gt`` order: the queries of the set (all when ``queries`` is None)."""
    ids = np.asarray(gt.query_ids, dtype=object).astype(str)
    if queries is None:
        return np.ones(len(ids), bool)
    return np.isin(ids, np.asarray(list(map(str, queries)), dtype=object).astype(str))


def _resample(mask: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, nq) counts: the queries of ``mask`` drawn with replacement, the others 0. The same
    (mask, n_boot, seed) gives the same resamples: two methods compared on them are paired."""
    idx = np.flatnonzero(mask)
    W = np.zeros((n_boot, len(mask)))
    if len(idx):
        W[:, idx] = np.random.default_rng(seed).multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return W


def _point(ss, mask: np.ndarray) -> dict[str, float]:
    got = weighted_metrics(ss, mask[None, :].astype(np.float64))
    return {k: float(got[k][0]) for k in (*METRIC_NAMES, "n_positives")}


def metrics_on(gt: GroundTruth, preds: Predictions, queries: Sequence[str] | None = None,
               protocol: str = "isc2021") -> dict[str, float]:
    """µAP, R@P90 (NaN when 90 % precision is never reached), R@1 and n_positives of ``preds``
    on a strict query set (every query when None)."""
    return _point(prepare_scored(gt, preds, protocol), query_mask(gt, queries))


def metric_intervals(gt: GroundTruth, preds: Predictions, queries: Sequence[str] | None = None,
                     protocol: str = "isc2021", n_boot: int = 1000, seed: int = 0, level: float = 0.95
                     ) -> pd.DataFrame:
    """Point value and percentile bootstrap interval of each metric.

    Returns:
        DataFrame indexed by metric (micro_ap, recall_at_p90, recall_at_rank1) with columns
        value, low, high (R@P90 never reached counts as 0 inside the resamples).
    """
    ss = prepare_scored(gt, preds, protocol)
    mask = query_mask(gt, queries)
    point = _point(ss, mask)
    boot = weighted_metrics(ss, _resample(mask, n_boot, seed))
    a = (1 - level) / 2
    rows = []
    for k in METRIC_NAMES:
        b = np.nan_to_num(boot[k], nan=0.0)
        rows.append({"metric": k, "value": point[k], "low": float(np.quantile(b, a)),
                     "high": float(np.quantile(b, 1 - a))})
    return pd.DataFrame(rows).set_index("metric")


@dataclass(frozen=True)
class Gain:
    """``b − a`` on one metric with its paired bootstrap interval.

    Attributes:
        value_a, value_b, diff: point figures on the query set.
        low, high: the ``level`` percentile interval of the difference over paired resamples.
        separable: the interval excludes 0 (else the gain is not separable on this benchmark).
    """

    metric: str
    value_a: float
    value_b: float
    diff: float
    low: float
    high: float
    level: float
    n_boot: int

    @property
    def separable(self) -> bool:
        # two runs that rank a family's pairs alike differ only by float rounding (1e-17) in every
        # resample: that is an interval of [0, 0], not a gain
        return bool(self.low > SEPARABLE_EPS or self.high < -SEPARABLE_EPS)

    @property
    def verdict(self) -> str:
        if not self.separable:
            return "not separable"
        return "b better" if self.diff > 0 else "b worse"


#: below this, an interval bound is 0 (metrics are sums of float weights: equal runs differ by rounding)
SEPARABLE_EPS = 1e-9


def _diff_replicates(ss_a, ss_b, mask, metric, n_boot, seed):
    W = _resample(mask, n_boot, seed)
    ra = np.nan_to_num(weighted_metrics(ss_a, W)[metric], nan=0.0)
    rb = np.nan_to_num(weighted_metrics(ss_b, W)[metric], nan=0.0)
    return rb - ra


def paired_gain(gt: GroundTruth, preds_a: Predictions, preds_b: Predictions, metric: str = "micro_ap",
                queries: Sequence[str] | None = None, protocol: str = "isc2021", n_boot: int = 1000,
                seed: int = 0, level: float = 0.95) -> Gain:
    """The gain of ``preds_b`` over ``preds_a`` with a paired percentile bootstrap interval (both
    evaluated on the same resamples of the query set; R@P90 never reached counts as 0)."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {METRIC_NAMES}, not {metric!r}")
    mask = query_mask(gt, queries)
    ss_a, ss_b = prepare_scored(gt, preds_a, protocol), prepare_scored(gt, preds_b, protocol)
    va, vb = (np.nan_to_num(_point(s, mask)[metric], nan=0.0) for s in (ss_a, ss_b))
    d = _diff_replicates(ss_a, ss_b, mask, metric, n_boot, seed)
    a = (1 - level) / 2
    return Gain(metric, float(va), float(vb), float(vb - va), float(np.quantile(d, a)), float(np.quantile(d, 1 - a)),
                level, n_boot)


def gains_table(gt: GroundTruth, runs: Mapping[str, Predictions], baseline: str,
                metrics: Sequence[str] = ("micro_ap", "recall_at_p90"), queries: Sequence[str] | None = None,
                protocol: str = "isc2021", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Every run against ``baseline`` (:func:`paired_gain`, one row per run and metric).

    Columns: label, metric, baseline, value, gain, low, high, verdict.
    """
    mask = query_mask(gt, queries)
    scored = {k: prepare_scored(gt, p, protocol) for k, p in runs.items()}
    if baseline not in scored:
        raise KeyError(f"baseline {baseline!r} is not one of the runs {sorted(scored)}")
    W = _resample(mask, n_boot, seed)
    a = (1 - level) / 2
    rows = []
    for m in metrics:
        base_rep = np.nan_to_num(weighted_metrics(scored[baseline], W)[m], nan=0.0)
        base = float(np.nan_to_num(_point(scored[baseline], mask)[m], nan=0.0))
        for label, ss in scored.items():
            if label == baseline:
                continue
            v = float(np.nan_to_num(_point(ss, mask)[m], nan=0.0))
            d = np.nan_to_num(weighted_metrics(ss, W)[m], nan=0.0) - base_rep
            g = Gain(m, base, v, v - base, float(np.quantile(d, a)), float(np.quantile(d, 1 - a)), level, n_boot)
            rows.append({"label": label, "metric": m, "baseline": base, "value": v, "gain": g.diff, "low": g.low,
                         "high": g.high, "verdict": g.verdict.replace("b ", "")})
    return pd.DataFrame(rows, columns=["label", "metric", "baseline", "value", "gain", "low", "high", "verdict"])


def family_gains(gt: GroundTruth, queries: pd.DataFrame, runs: Mapping[str, Predictions], baseline: str,
                 metric: str = "micro_ap", protocol: str = "isc2021", n_boot: int = 300, seed: int = 0,
                 level: float = 0.95) -> pd.DataFrame:
    """Per transformation family, the gain of every run over ``baseline`` with its paired interval.

    A family's query set is its copies plus every query without a match (as per-family µAP is
    defined by ``evaluate(queries=...)``), among the queries of ``queries`` only.

    Args:
        queries: the benchmark's query table (query_id, family, has_match), or some of its rows
            (a held-out half): queries absent from it are left out.

    Returns:
        Columns: family, label, n_positives, baseline, value, gain, low, high, verdict.
    """
    ids = np.asarray(gt.query_ids, dtype=object).astype(str)
    q = queries.assign(query_id=queries["query_id"].astype(str)).set_index("query_id").reindex(ids)
    inside = q["has_match"].notna().to_numpy()
    has = q["has_match"].fillna(False).to_numpy(bool)
    fam = q["family"].fillna("unknown").astype(str).to_numpy()
    scored = {k: prepare_scored(gt, p, protocol) for k, p in runs.items()}
    a = (1 - level) / 2
    rows = []
    for f in sorted(set(fam[has])):
        mask = inside & ((has & (fam == f)) | ~has)
        W = _resample(mask, n_boot, seed)
        base = float(np.nan_to_num(_point(scored[baseline], mask)[metric], nan=0.0))
        base_rep = np.nan_to_num(weighted_metrics(scored[baseline], W)[metric], nan=0.0)
        for label, ss in scored.items():
            if label == baseline:
                continue
            v = float(np.nan_to_num(_point(ss, mask)[metric], nan=0.0))
            d = np.nan_to_num(weighted_metrics(ss, W)[metric], nan=0.0) - base_rep
            g = Gain(metric, base, v, v - base, float(np.quantile(d, a)), float(np.quantile(d, 1 - a)), level, n_boot)
            rows.append({"family": f, "label": label, "n_positives": int((has & (fam == f)).sum()), "baseline": base,
                         "value": v, "gain": g.diff, "low": g.low, "high": g.high,
                         "verdict": g.verdict.replace("b ", "")})
    return pd.DataFrame(rows, columns=["family", "label", "n_positives", "baseline", "value", "gain", "low", "high",
                                       "verdict"])


# ------------------------------------------------------------------------------------------------
# tune on one half, report on the other


@dataclass(frozen=True, eq=False)
class Sweep:
    """A hyper-parameter sweep chosen on the tuning half and reported on the other.

    Attributes:
        table: one row per value: value, tune_micro_ap, tune_recall_at_p90, report_micro_ap,
            report_recall_at_p90.
        chosen: the value with the best ``metric`` on the tuning half (first of equals).
        reported: ``metric`` of ``chosen`` on the reporting half: the figure to quote.
        best_on_report: the value that the reporting half alone would pick (for comparison only).
    """

    table: pd.DataFrame
    metric: str
    chosen: object
    tuned: float
    reported: float
    best_on_report: object


def sweep_halves(gt: GroundTruth, values: Sequence, predict: Callable[[object], Predictions],
                 tune: Sequence[str], report: Sequence[str], metric: str = "micro_ap",
                 protocol: str = "isc2021") -> Sweep:
    """Evaluate ``predict(v)`` for every value on two disjoint strict query sets and choose on ``tune``.

    Args:
        values: the values tried, in order. predict: value -> predictions for all queries.
        tune, report: the two halves (e.g. :func:`imsim_lab.lessons.query_halves`).
    """
    mt, mr = query_mask(gt, tune), query_mask(gt, report)
    if (mt & mr).any():
        raise ValueError(f"the tuning and reporting halves share {int((mt & mr).sum())} queries")
    rows = []
    for v in values:
        ss = prepare_scored(gt, predict(v), protocol)
        pt, pr = _point(ss, mt), _point(ss, mr)
        rows.append({"value": v, "tune_micro_ap": pt["micro_ap"], "tune_recall_at_p90": pt["recall_at_p90"],
                     "report_micro_ap": pr["micro_ap"], "report_recall_at_p90": pr["recall_at_p90"]})
    t = pd.DataFrame(rows)
    tc, rc = np.nan_to_num(t[f"tune_{metric}"].to_numpy(float), nan=-1), np.nan_to_num(
        t[f"report_{metric}"].to_numpy(float), nan=-1)
    i, j = int(np.argmax(tc)), int(np.argmax(rc))
    return Sweep(t, metric, t["value"].iloc[i], float(t[f"tune_{metric}"].iloc[i]),
                 float(t[f"report_{metric}"].iloc[i]), t["value"].iloc[j])


# ------------------------------------------------------------------------------------------------
# calibration pictures


def pair_scores(gt: GroundTruth, preds: Predictions, queries: Sequence[str] | None = None) -> pd.DataFrame:
    """Per query: the score of its true pair and of its best wrong pair (NaN when not predicted).

    A query without a match has no true pair; its best wrong pair is its top prediction.
    Columns: query_id, has_match, true_score, best_wrong_score.
    """
    qids = np.asarray(gt.query_ids, dtype=object).astype(str)
    truth = pd.Series(np.asarray(gt.reference_ids, dtype=object).astype(str), index=qids)
    df = pd.DataFrame({"q": np.asarray(preds.query_ids, dtype=object).astype(str),
                       "r": np.asarray(preds.reference_ids, dtype=object).astype(str),
                       "s": np.asarray(preds.scores, np.float64)})
    t = df["q"].map(truth).fillna("")
    right = (t != "") & (df["r"] == t)
    true_s = df[right].groupby("q")["s"].max()
    wrong_s = df[~right].groupby("q")["s"].max()
    keep = query_mask(gt, queries)
    out = pd.DataFrame({"query_id": qids, "has_match": truth.to_numpy() != "",
                        "true_score": pd.Series(qids).map(true_s).to_numpy(float),
                        "best_wrong_score": pd.Series(qids).map(wrong_s).to_numpy(float)})
    return out[keep].reset_index(drop=True)


def calibration_table(gt: GroundTruth, runs: Mapping[str, Predictions],
                      queries: Sequence[str] | None = None) -> pd.DataFrame:
    """Long format of :func:`pair_scores` for several runs: label, query_id, pair (one of
    :data:`PAIR_KINDS`), score; plus the separation of each run in ``.attrs["overlap"]``:
    label -> share of true pairs scored at or below the median best wrong pair."""
    parts, overlap = [], {}
    for label, p in runs.items():
        ps = pair_scores(gt, p, queries)
        t = ps.loc[ps["has_match"], "true_score"].dropna()
        w = ps["best_wrong_score"].dropna()
        overlap[label] = float((t <= w.median()).mean()) if len(t) and len(w) else float("nan")
        parts.append(pd.DataFrame({"label": label, "query_id": ps["query_id"], "pair": PAIR_KINDS[0],
                                   "score": ps["true_score"]}).dropna())
        parts.append(pd.DataFrame({"label": label, "query_id": ps["query_id"], "pair": PAIR_KINDS[1],
                                   "score": ps["best_wrong_score"]}).dropna())
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["label", "query_id", "pair", "score"])
    out.attrs["overlap"] = overlap
    return out


def calibration_figure(table: pd.DataFrame, nbins: int = 40, cols: int = 3):
    """Overlaid histograms of true-pair and best-wrong-pair scores, one panel per run (each panel
    its own score axis: methods score on different scales). Colour-blind safe (Okabe-Ito)."""
    import plotly.express as px

    from .report.figures import OKABE_ITO

    fig = px.histogram(table, x="score", color="pair", facet_col="label", facet_col_wrap=cols, nbins=nbins,
                       barmode="overlay", opacity=0.6, histnorm="probability",
                       color_discrete_map={PAIR_KINDS[0]: OKABE_ITO[0], PAIR_KINDS[1]: OKABE_ITO[1]},
                       category_orders={"pair": list(PAIR_KINDS)})
    fig.update_xaxes(matches=None, showticklabels=True)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_layout(height=260 * max(1, -(-table["label"].nunique() // cols)), margin={"t": 40})
    return fig


def pr_curves(gt: GroundTruth, runs: Mapping[str, Predictions], queries: Sequence[str] | None = None,
              protocol: str = "isc2021", max_points: int = 400) -> pd.DataFrame:
    """Precision-recall corners of each run on a strict query set: label, recall, precision."""
    parts = []
    mask = query_mask(gt, queries)
    for label, p in runs.items():
        if queries is not None:
            keep = np.isin(np.asarray(p.query_ids, dtype=object).astype(str),
                           np.asarray(gt.query_ids, dtype=object).astype(str)[mask])
            p = Predictions(p.query_ids[keep], p.reference_ids[keep], p.scores[keep])
            g = GroundTruth(gt.query_ids[mask], gt.reference_ids[mask])
        else:
            g = gt
        r, pr = pr_points(prepare_scored(g, p, protocol), max_points)
        parts.append(pd.DataFrame({"label": label, "recall": r, "precision": pr}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["label", "recall", "precision"])


def failure_gallery(bench, preds: Predictions, threshold: float | None, n: int = 4, size: int = 150):
    """Missed copies and confident false positives of ``preds`` as one image sheet.

    Row 1..: for each of the ``n`` worst missed copies (true reference not ranked first, or scored
    below ``threshold``, the score at 90 % precision): the query, its true reference and what was
    retrieved instead. Then the ``n`` most confident wrong top predictions at or above the
    threshold: the query and the retrieved reference.

    Returns:
        (PIL image or None when there is nothing to show, DataFrame of the cases shown).
    """
    from ..runfolder import per_query_from_predictions
    from ..lessons import contact_sheet
    from .report.browse import sibling_groups
    from .report.failures import confident_false_positives, missed_matches

    pq = per_query_from_predictions(bench.queries, preds)
    groups = sibling_groups(bench)
    missed = missed_matches(pq, threshold, "threshold", groups).head(n)
    fps = confident_false_positives(pq, threshold, groups).head(n)
    images, captions, rows = [], [], []
    for _, r in missed.iterrows():
        top = r["top_reference_id"] or ""
        top = "" if top == r["reference_id"] else top    # ranked first but below the threshold
        ids = [r["query_id"], r["reference_id"]] + ([top] if top else [])
        cap = [f"missed {r['query_id']} ({r['family']})", f"truth, rank {r['true_rank']}",
               f"got {top} {r['top_score']:.3f}" if top else f"score {r['true_score']:.3f} < P90 threshold"]
        images += [bench.load_image(i) for i in ids] + [None] * (3 - len(ids))
        captions += cap
        rows.append({"case": "missed copy", "query_id": r["query_id"], "family": r["family"],
                     "shown": ", ".join(ids), "score": r["true_score"]})
    for _, r in fps.iterrows():
        images += [bench.load_image(r["query_id"]), bench.load_image(r["top_reference_id"]), None]
        captions += [f"{r['kind']} {r['query_id']}", f"got {r['top_reference_id']} {r['top_score']:.3f}", ""]
        rows.append({"case": f"confident false positive ({r['kind']})", "query_id": r["query_id"],
                     "family": r["family"], "shown": f"{r['query_id']}, {r['top_reference_id']}",
                     "score": r["top_score"]})
    cases = pd.DataFrame(rows, columns=["case", "query_id", "family", "shown", "score"])
    if not images:
        return None, cases
    from PIL import Image

    blank = Image.new("RGB", (8, 8), "white")
    sheet = contact_sheet([im if im is not None else blank for im in images], captions, size=size, cols=6)
    return sheet, cases
