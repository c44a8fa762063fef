"""The ISC2021 metrics of one prediction set under many query weightings at once.

Bootstrap confidence intervals resample queries with replacement, per-family µAP keeps only some
queries, AP-versus-strength keeps the queries of a strength bin: each is the official
:func:`imsim_lab.eval.metrics.evaluate` applied to the predictions with every query *q* repeated
``w_q`` times (``w_q`` = 0 drops its predictions and its positives). Replicated copies of a query
tie with each other, and ties are pessimistic (wrong predictions first), so the result has a
closed form that needs the predictions sorted only once.

Write the sorted predictions as "segments": segment *s* holds the wrong predictions that come
after the previous tie group with a correct prediction, the wrong ones of its own tie group, then
its correct ones. Under weights ``w`` let ``C_s`` be the weighted count of correct predictions of
segment *s*, ``a_s`` the weighted count of correct predictions before it and ``b_s`` of all
predictions before its correct ones. Its correct predictions sit at positions ``b_s + j`` with
``a_s + j`` hits, ``j = 1..C_s``, so (with H the harmonic numbers, H(n) = ψ(n+1) + γ)::

    Σ_j (a_s + j) / (b_s + j) = C_s − (b_s − a_s) · (H(b_s + C_s) − H(b_s))
    µAP(w)   = Σ_s [that] / N_gt(w),         N_gt(w) = Σ_q w_q · positives(q)
    R@P90(w) = max over segment ends with precision ≥ 0.9 of the recall there
    R@1(w)   = Σ_q w_q · (positives of q ranked first) / N_gt(w)           (isc2021)

The segment counts are sparse matrix products (segments x queries) @ (queries x weightings),
so 200 resamples of a 500,000-prediction run take about a second. ``tests/test_report_weighted.py``
checks every figure against ``evaluate`` on explicitly replicated predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...eval.formats import GroundTruth, Predictions
from ...eval.metrics import REQUIRED_PRECISION
from ...eval.protocols import get_protocol

METRIC_NAMES = ("micro_ap", "recall_at_p90", "recall_at_rank1")


@dataclass(frozen=True, eq=False)
class ScoredSet:
    """One run's predictions prepared for weighted evaluation (see the module docstring).

    Shapes: ``query_ids``, ``n_pos``, ``hit1`` (nq,) in ground-truth order; ``seg_wrong`` and
    ``seg_right`` sparse (S, nq + 1): weighted counts per segment, the last column holding the
    predictions for queries absent from the ground truth (isc2021 keeps them with weight 1).
    """

    protocol: str
    query_ids: np.ndarray
    n_pos: np.ndarray
    hit1: np.ndarray
    seg_wrong: object
    seg_right: object
    n_predictions: int

    @property
    def nq(self) -> int:
        return len(self.query_ids)


def _rank_first(gq: np.ndarray, scores: np.ndarray, correct: np.ndarray, nq: int) -> np.ndarray:
    """(nq,) count of each query's correct predictions with rank 0, where rank = #{predictions of
    the query with score ≥ its score} − 1 (ties count against you, as in isc2021)."""
    hit = np.zeros(nq, np.int64)
    sel = gq >= 0
    if not correct.any():
        return hit
    q, s, c = gq[sel], scores[sel], correct[sel]
    best = pd.Series(s).groupby(q).max()
    n_at_best = pd.Series(s == best.reindex(q).to_numpy()).groupby(q).sum()
    first = c & (s == best.reindex(q).to_numpy()) & (n_at_best.reindex(q).to_numpy() == 1)
    np.add.at(hit, q[first], 1)
    return hit


def prepare_scored(gt: GroundTruth, preds: Predictions, protocol: str = "isc2021") -> ScoredSet:
    """Sort and segment ``preds`` once (pessimistic ties, as :func:`imsim_lab.eval.metrics.evaluate`).

    Under ``drivendata`` the predictions for queries absent from ``gt`` are dropped; under
    ``isc2021`` they stay, wrong, with a fixed weight of 1. Duplicated pairs count again (isc2021
    refuses them earlier, in :func:`evaluate`).
    """
    from scipy import sparse

    proto = get_protocol(protocol)
    qids = np.asarray(gt.query_ids, dtype=object)
    nq = len(qids)
    if preds.query_codes is not None and preds.query_vocab is not None and len(preds.query_codes) == len(preds):
        # the CSV reader's codes: look up each distinct query once, not each prediction
        gq = pd.Index(qids).get_indexer(np.asarray(preds.query_vocab, dtype=object)).astype(np.int64)
        gq = gq[np.asarray(preds.query_codes, np.int64)] if len(gq) else np.zeros(len(preds), np.int64)
    else:
        gq = pd.Index(qids).get_indexer(np.asarray(preds.query_ids, dtype=object)).astype(np.int64)
    scores = np.asarray(preds.scores, np.float64)
    rids = np.asarray(preds.reference_ids, dtype=object)
    if proto.unknown_queries == "drop":
        keep = gq >= 0
        gq, scores, rids = gq[keep], scores[keep], rids[keep]
    gref = np.asarray(gt.reference_ids, dtype=object)
    has = gref != ""
    n_pos = np.bincount(np.flatnonzero(has), minlength=nq) if nq else np.zeros(0, np.int64)
    # correct = (query, reference) is a ground-truth pair
    codes, _ = pd.factorize(np.concatenate([rids, gref[has]]))
    rp, rg = codes[: len(rids)].astype(np.int64), codes[len(rids):].astype(np.int64)
    span = int(codes.max(initial=0)) + 1
    correct = (gq >= 0) & np.isin(gq * span + rp, np.flatnonzero(has) * span + rg)
    hit1 = _rank_first(gq, scores, correct, nq)

    order = np.argsort(-scores, kind="stable")
    s, y, q = scores[order], correct[order], gq[order]
    col = np.where(q >= 0, q, nq)
    n = len(s)
    group = np.cumsum(np.concatenate([[True], s[1:] != s[:-1]])) - 1 if n else np.zeros(0, np.int64)
    ng = int(group[-1]) + 1 if n else 0
    right_groups = np.flatnonzero(np.bincount(group[y], minlength=ng) > 0) if n else np.zeros(0, np.int64)
    S = len(right_groups)
    seg = np.searchsorted(right_groups, group, side="left")  # first right group at or after
    w = (~y) & (seg < S)
    shape = (S, nq + 1)
    seg_wrong = sparse.csr_matrix((np.ones(int(w.sum())), (seg[w], col[w])), shape=shape)
    seg_right = sparse.csr_matrix((np.ones(int(y.sum())), (seg[y], col[y])), shape=shape)
    return ScoredSet(protocol, qids, n_pos.astype(np.int64), hit1, seg_wrong, seg_right, n)


def weighted_metrics(ss: ScoredSet, weights: np.ndarray, chunk: int | None = None) -> dict[str, np.ndarray]:
    """µAP, R@P90 and R@1 of the predictions under each row of ``weights``.

    Args:
        ss: from :func:`prepare_scored`.
        weights: (B, nq) non-negative query weights (integers for the exact meaning of
            "repeat query q w_q times"; 1 everywhere = the plain evaluation).
        chunk: rows handled at once (memory: about chunk x (nq + segments) x 8 bytes).

    Returns:
        ``{"micro_ap", "recall_at_p90", "recall_at_rank1", "n_positives"}`` each (B,). µAP and
        R@1 are NaN where no positive is kept; R@P90 is NaN when 90 % precision is never reached
        under isc2021 (0.0 under drivendata, as that implementation reports it); R@1 is NaN
        under drivendata (not one of its metrics).
    """
    from scipy.special import digamma

    W = np.atleast_2d(np.asarray(weights, np.float64))
    if W.shape[1] != ss.nq:
        raise ValueError(f"weights have {W.shape[1]} columns, expected one per query ({ss.nq})")
    B = len(W)
    S = ss.seg_right.shape[0]
    chunk = chunk or max(1, int(4e6 // max(ss.nq + S, 1)))
    out = {k: np.full(B, np.nan) for k in (*METRIC_NAMES, "n_positives")}
    for lo in range(0, B, chunk):
        Wc = W[lo:lo + chunk]
        full = np.hstack([Wc, np.ones((len(Wc), 1))]).T  # (nq + 1, b)
        C = np.asarray(ss.seg_right @ full).T  # (b, S)
        X = np.asarray(ss.seg_wrong @ full).T
        npos = Wc @ ss.n_pos
        cumC = np.cumsum(C, axis=1)
        a = cumC - C
        b = np.cumsum(X, axis=1) + a
        with np.errstate(invalid="ignore", divide="ignore"):
            contrib = C - (b - a) * (digamma(b + C + 1.0) - digamma(b + 1.0))
            ap = contrib.sum(axis=1) / npos
            n_end = b + C
            prec = np.where(n_end > 0, cumC / np.where(n_end > 0, n_end, 1.0), 0.0)
            valid = (prec >= REQUIRED_PRECISION) & (n_end > 0)
            best = np.where(valid, cumC, -1.0).max(axis=1, initial=-1.0)
            r90 = np.where(best >= 0, best / npos, np.nan)
            proto = get_protocol(ss.protocol)
            if proto.p90_missing is not None:
                r90 = np.where(np.isnan(r90) & (npos > 0), proto.p90_missing, r90)
            r1 = (Wc @ ss.hit1) / npos if proto.rank_recalls else np.full(len(Wc), np.nan)
        none = npos <= 0
        ap[none] = np.nan
        r90[none] = np.nan
        r1[none] = np.nan
        sl = slice(lo, lo + len(Wc))
        out["micro_ap"][sl], out["recall_at_p90"][sl], out["recall_at_rank1"][sl] = ap, r90, r1
        out["n_positives"][sl] = npos
    return out


def subset_weights(has_match: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Weights that restrict an evaluation to a subset of queries, as ``evaluate(queries=...)``
    does: the subset's positives plus every query without a match.

    Shapes: ``has_match`` (nq,) bool; ``members`` (nq,) bool or (K, nq) for K subsets at once.
    Returns float weights of the same shape as ``members``.
    """
    m = np.asarray(members, bool)
    return (m | ~np.asarray(has_match, bool)).astype(np.float64)


def bootstrap_counts(nq: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, nq) counts of each query in resamples of nq queries drawn with replacement.

    The same (nq, n_boot, seed) gives the same resamples, so runs of one benchmark are compared
    on identical resamples (a paired bootstrap).
    """
    rng = np.random.default_rng(seed)
    if nq == 0:
        return np.zeros((n_boot, 0))
    return rng.multinomial(nq, np.full(nq, 1.0 / nq), size=n_boot).astype(np.float64)


def pr_points(ss: ScoredSet, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(recalls, precisions) of the plain evaluation at the end of each tie group holding a correct
    prediction: the corners of the PR curve (µAP is the area under these steps). At most
    ``max_points`` of them, evenly spaced, the last one always kept."""
    one = np.ones((ss.nq + 1, 1))
    C = np.asarray(ss.seg_right @ one).ravel()
    X = np.asarray(ss.seg_wrong @ one).ravel()
    npos = float(ss.n_pos.sum())
    if len(C) == 0 or npos == 0:
        return np.zeros(0), np.zeros(0)
    tp = np.cumsum(C)
    n = np.cumsum(X) + tp
    keep = np.unique(np.linspace(0, len(C) - 1, min(max_points, len(C))).round().astype(int))
    return tp[keep] / npos, tp[keep] / n[keep]
