"""Per-transformation figures that can be read next to the headline µAP.

µAP depends on the share of positives among the predictions' queries. Restricting an evaluation
to one family the way ``evaluate(queries=...)`` does (the family's positives plus **every** query
without a match) keeps all the distractors against a few positives: on disc-synth ``small`` a
family holds 7 of 220 positives, its share of positives falls from 22 % to under 1 % and every cell
is dominated by the distractors' best scores. Two definitions are offered (:data:`DEFINITIONS`):

* ``"prevalence"`` (default), *prevalence-matched*: the family's positives, each counted
  ``P / P_f`` times (``P`` the benchmark's positives, ``P_f`` the family's), plus every query without
  a match counted once. This is the official µAP of a benchmark with the same distractors in which
  every one of the ``P`` copies was made by that family; for an integer ``P / P_f`` it *is*
  ``evaluate`` on the family's queries replicated that many times (``tests/test_report_families.py``),
  and it agrees with the mean over random subsamples of the distractors in the family's proportion
  (``P_f / P`` of them), the estimate that motivated it. Weighting the distractors by ``P_f / P``
  instead gives the same share of positives; replication keeps integer counts, where the engine of
  :mod:`.weighted` is exactly the official metric.
* ``"restricted"``: ``evaluate(queries=family)`` as it stands (the family's positives plus all the
  distractors): comparable only between runs of one family, never with the headline µAP.

R@1 per family does not depend on the distractors (it is the same under both definitions), so it
is reported beside µAP. Intervals are percentile bootstrap intervals over queries (the resamples of
:func:`.weighted.bootstrap_counts`, the same for every run of a benchmark), the prevalence factor
recomputed inside each resample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .weighted import METRIC_NAMES, bootstrap_counts, weighted_metrics

DEFINITIONS = ("prevalence", "restricted")
DEFINITION_TEXT = {
    "prevalence": "prevalence-matched: the family's positives counted P / P_f times plus every query without a "
                  "match, i.e. the benchmark's µAP if every copy had been made by this family (comparable with "
                  "the leaderboard)",
    "restricted": "restricted: the family's positives plus every query without a match (evaluate(queries=...)); "
                  "few positives against all the distractors, so far below the leaderboard's µAP",
}


def family_members(families: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(sorted family names, (K, nq) bool membership) of a per-query ``family`` column."""
    fam = np.asarray(families).astype(str)
    names = sorted(set(fam))
    return names, fam[None, :] == np.array(names, dtype=object)[:, None]


def family_weights(has_match: np.ndarray, members: np.ndarray, definition: str = "prevalence",
                   counts: np.ndarray | None = None) -> np.ndarray:
    """Query weights of each family under ``definition`` (see the module docstring).

    Args:
        has_match: (nq,) bool.
        members: (K, nq) bool, one row per family (a query in none of them is dropped unless it has
            no match).
        counts: (nq,) or (B, nq) query multiplicities (a bootstrap resample); default 1.

    Returns:
        (K, nq) weights, or (K, B, nq) when ``counts`` is 2-d. A family without positives gets the
        weights of its (absent) positives as 0: its µAP is NaN.
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown per-family definition {definition!r}; use one of {DEFINITIONS}")
    pos = np.asarray(has_match, bool)
    m = np.asarray(members, bool)
    c = np.ones(len(pos)) if counts is None else np.asarray(counts, np.float64)
    two = c.ndim == 2
    C = c if two else c[None, :]  # (B, nq)
    fam_pos = (m & pos[None, :]).astype(np.float64)  # (K, nq)
    if definition == "restricted":
        scale = np.ones((len(m), len(C)))
    else:
        total = C @ pos.astype(np.float64)  # (B,)
        mine = fam_pos @ C.T  # (K, B)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(mine > 0, total[None, :] / np.where(mine > 0, mine, 1.0), 0.0)
    W = (fam_pos[:, None, :] * scale[:, :, None] + (~pos).astype(np.float64)[None, None, :]) * C[None, :, :]
    return W if two else W[:, 0, :]


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return np.nan, np.nan
    a = (1 - level) / 2
    return float(np.quantile(x, a)), float(np.quantile(x, 1 - a))


def family_metrics(runs: list, protocol: str = "isc2021", definition: str = "prevalence", n_boot: int = 200,
                   seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """µAP, R@P90 and R@1 of every run for each transformation family, with bootstrap intervals.

    Args:
        runs: :class:`.tables.RunData` of one benchmark.
        definition: ``"prevalence"`` or ``"restricted"`` (module docstring).
        n_boot: bootstrap resamples of the queries (0 = no interval).

    Returns:
        Long table, one row per run and family: label, family, group, definition, micro_ap,
        recall_at_p90, recall_at_rank1, their ``_low`` / ``_high`` bounds, width (of the µAP
        interval), n_positives (the family's own), n_queries.
    """
    from .tables import family_groups

    groups = family_groups()
    rows = []
    for rd in runs:
        pq = rd.per_query
        pos = pq["has_match"].to_numpy(bool)
        names, members = family_members(pq["family"].to_numpy())
        ss = rd.scored[protocol]
        point = weighted_metrics(ss, family_weights(pos, members, definition))
        B = bootstrap_counts(ss.nq, n_boot, seed) if n_boot else None
        for i, f in enumerate(names):
            row = {"label": rd.label, "family": f, "group": groups.get(f, "chain" if f == "chain" else "other"),
                   "definition": definition}
            # one family at a time: (n_boot, nq) weights, not (families x n_boot, nq)
            boot = weighted_metrics(ss, family_weights(pos, members[i:i + 1], definition, B)[0]) if n_boot else None
            for k in METRIC_NAMES:
                row[k] = float(point[k][i])
                lo, hi = _percentiles(boot[k], level) if boot is not None else (np.nan, np.nan)
                row[f"{k}_low"], row[f"{k}_high"] = lo, hi
            row["width"] = row["micro_ap_high"] - row["micro_ap_low"]
            row["n_positives"] = int((members[i] & pos).sum())
            row["n_queries"] = int(members[i].sum())
            rows.append(row)
    cols = ["label", "family", "group", "definition"]
    for k in METRIC_NAMES:
        cols += [k, f"{k}_low", f"{k}_high"]
    return pd.DataFrame(rows, columns=[*cols, "width", "n_positives", "n_queries"])


def subsampled_family_map(ss, has_match: np.ndarray, member: np.ndarray, draws: int = 30, seed: int = 0) -> float:
    """Mean µAP of one family over ``draws`` random subsamples of the queries without a match, each
    keeping ``round(N · P_f / P)`` of the N distractors (the explicit estimate the prevalence-matched
    figure replaces; used by the tests and the docs' measurement)."""
    rng = np.random.default_rng(seed)
    pos = np.asarray(has_match, bool)
    m = np.asarray(member, bool)
    neg = np.flatnonzero(~pos)
    keep = max(1, round(len(neg) * (m & pos).sum() / max(pos.sum(), 1)))
    W = np.zeros((draws, len(pos)))
    W[:, m & pos] = 1.0
    for d in range(draws):
        W[d, rng.choice(neg, keep, replace=False)] = 1.0
    return float(np.nanmean(weighted_metrics(ss, W)["micro_ap"]))
