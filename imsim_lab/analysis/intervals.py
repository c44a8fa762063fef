"""Lesson tables with 95 % bootstrap intervals: runs side by side, paired against a baseline, per family.

The resamples are :func:`imsim_lab.analysis.report.weighted.bootstrap_counts` (queries drawn with
replacement, the same resamples for every run: a paired bootstrap) and each figure is the
official metric under those query weights (:func:`~imsim_lab.analysis.report.weighted.weighted_metrics`).
A difference whose interval contains 0 is not separable on this benchmark. ``queries`` restricts a
table to a subset (e.g. the held-out half of a tune/report split) the way ``evaluate(queries=...)``
does. Used by the lessons (``notebooks/04_descriptor_2nd_ssquare``, ``05_descriptor_3rd_bag_of_tricks``,
``09_sscd``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .report.weighted import bootstrap_counts, prepare_scored, subset_weights, weighted_metrics

_NAMES = {"micro_ap": "µAP", "recall_at_p90": "R@P90", "recall_at_rank1": "R@1"}


def _base_weights(gt, queries: Sequence[str] | None) -> np.ndarray:
    qids = np.asarray(gt.query_ids).astype(str)
    has = np.asarray(gt.positive_mask, bool)
    if queries is None:
        return np.ones(len(qids))
    return subset_weights(has, np.isin(qids, np.asarray(list(queries), str)))


def _scored(gt, preds, protocol):
    return prepare_scored(gt, preds, protocol)


def interval_table(gt, runs: Mapping[str, object], protocol: str = "isc2021", n_boot: int = 200, seed: int = 0,
                   baseline: str | None = None, queries: Sequence[str] | None = None,
                   level: float = 0.95) -> pd.DataFrame:
    """µAP, R@P90 and R@1 of each run with a percentile interval, and (with ``baseline``) the paired
    difference in µAP against that run with its interval.

    Args:
        gt: the benchmark's GroundTruth; runs: name -> Predictions.

    Returns:
        One row per run: ``µAP``, ``µAP lo``, ``µAP hi``, the same for R@P90 and R@1, and with a
        baseline ``Δ µAP``, ``Δ lo``, ``Δ hi``.
    """
    base = _base_weights(gt, queries)
    W = bootstrap_counts(len(base), n_boot, seed) * base
    q = (1 - level) / 2
    point, boot = {}, {}
    for name, preds in runs.items():
        ss = _scored(gt, preds, protocol)
        point[name] = weighted_metrics(ss, base[None])
        boot[name] = weighted_metrics(ss, W)
    rows = []
    for name in runs:
        row = {"run": name}
        for k, label in _NAMES.items():
            b = boot[name][k]
            row[label] = float(point[name][k][0])
            row[f"{label} lo"], row[f"{label} hi"] = (float(np.nanquantile(b, q)), float(np.nanquantile(b, 1 - q))) \
                if np.isfinite(b).any() else (np.nan, np.nan)
        if baseline is not None:
            d = boot[name]["micro_ap"] - boot[baseline]["micro_ap"]
            row["Δ µAP"] = row["µAP"] - float(point[baseline]["micro_ap"][0])
            row["Δ lo"], row["Δ hi"] = float(np.nanquantile(d, q)), float(np.nanquantile(d, 1 - q))
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def paired_differences(gt, runs: Mapping[str, object], pairs: Mapping[str, tuple[str, str]],
                       protocol: str = "isc2021", n_boot: int = 200, seed: int = 0,
                       queries: Sequence[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Each ablation ``name -> (run with the trick, run without it)`` as the paired difference in µAP
    (:func:`interval_table` of the two with the second as baseline).

    Returns one row per name (index ``trick``): ``Δ µAP``, ``lo``, ``hi`` and ``separable`` (the
    interval excludes 0).
    """
    rows = []
    for what, (a, b) in pairs.items():
        t = interval_table(gt, {a: runs[a], b: runs[b]}, protocol, n_boot, seed, baseline=b, queries=queries,
                           level=level)
        lo, hi = t.loc[a, "Δ lo"], t.loc[a, "Δ hi"]
        rows.append({"trick": what, "Δ µAP": t.loc[a, "Δ µAP"], "lo": lo, "hi": hi,
                     "separable": not (lo <= 0 <= hi)})
    return pd.DataFrame(rows).set_index("trick")


def family_interval_table(bench, runs: Mapping[str, object], protocol: str = "isc2021", n_boot: int = 200,
                          seed: int = 0, queries: Sequence[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """µAP per transformation family of each run with its interval (the family's positives plus every
    query without a match, as :func:`imsim_lab.lessons.family_metrics`).

    Returns a long DataFrame: ``family``, ``run``, ``n_positives``, ``micro_ap``, ``lo``, ``hi``.
    """
    gt = bench.gt
    qids = np.asarray(gt.query_ids).astype(str)
    has = np.asarray(gt.positive_mask, bool)
    fam = bench.queries.set_index("query_id")["family"].astype(str).reindex(qids).fillna("none").to_numpy()
    keep = _base_weights(gt, queries) > 0
    C = bootstrap_counts(len(qids), n_boot, seed)
    q = (1 - level) / 2
    rows = []
    fams = sorted(set(fam[has & keep]))
    scored = {n: _scored(gt, p, protocol) for n, p in runs.items()}
    for f in fams:
        w = subset_weights(has, (fam == f) & keep) * keep
        for name, ss in scored.items():
            p = weighted_metrics(ss, w[None])["micro_ap"][0]
            b = weighted_metrics(ss, C * w)["micro_ap"]
            rows.append({"family": f, "run": name, "n_positives": int(((fam == f) & has & keep).sum()),
                         "micro_ap": float(p), "lo": float(np.nanquantile(b, q)),
                         "hi": float(np.nanquantile(b, 1 - q))})
    return pd.DataFrame(rows, columns=["family", "run", "n_positives", "micro_ap", "lo", "hi"])
