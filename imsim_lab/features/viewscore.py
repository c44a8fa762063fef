"""From scores of view pairs to scores of image pairs: pure functions on arrays.

D2LV (Wang et al., arXiv 2111.07090; ``docs/methods.md``; their ``Test/final/combine.py``, ``top2.py``) scores every
(query view, reference view) pair, keeps the pairs that at least 2 of its 3 backbones predict
(:func:`vote`), drops the predictions of query views smaller than 100-200 px, lowers the score of
every query view that is not the original by 0.05, and takes the **max** per image pair (then
averages duplicates). SeungKee Jeon takes the max over 8 query views. :func:`aggregate` does the
filters and the reduction in one vectorised pass and keeps, for each image pair, which views
gave the kept score (the explorer's "which sub-image matched").
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..eval.formats import Predictions
from .views import ViewError

REDUCTIONS = ("max", "mean")


@dataclass(frozen=True)
class AggregateConfig:
    """How view pairs become image pairs.

    Attributes:
        reduce: ``"max"`` or ``"mean"`` of the (offset) scores of an image pair's view pairs.
        min_query_side, min_reference_side: drop view pairs whose query (reference) view has a
            short side below this many pixels (0: keep all).
        offset: added to the score of every pair whose query view is not matched by
            ``offset_exempt`` (D2LV: -0.05 for the non-original query views).
        offset_exempt: ``fnmatch`` patterns of query view names the offset leaves alone.
    """

    reduce: str = "max"
    min_query_side: int = 0
    min_reference_side: int = 0
    offset: float = 0.0
    offset_exempt: tuple[str, ...] = ("whole",)

    def __post_init__(self):
        if self.reduce not in REDUCTIONS:
            raise ViewError(f"reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
        object.__setattr__(self, "offset_exempt", tuple(self.offset_exempt))


@dataclass(frozen=True, eq=False)
class ParentPairs:
    """Scored image pairs. Shapes (p,): ``query_ids``, ``reference_ids``, ``scores``; ``q_row``,
    ``r_row``: the view rows of the best-scoring view pair (for ``mean`` too); ``q_view``,
    ``r_view``: their view names; ``n_pairs``: view pairs that were reduced."""

    query_ids: np.ndarray
    reference_ids: np.ndarray
    scores: np.ndarray
    q_row: np.ndarray
    r_row: np.ndarray
    q_view: np.ndarray
    r_view: np.ndarray
    n_pairs: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def to_predictions(self) -> Predictions:
        return Predictions(self.query_ids.astype(str), self.reference_ids.astype(str), self.scores.astype(np.float64))


def _matches(names: np.ndarray, patterns: Sequence[str]) -> np.ndarray:
    uniq, inv = np.unique(names.astype(str), return_inverse=True)
    hit = np.array([any(fnmatch.fnmatchcase(u, p) for p in patterns) for u in uniq], bool)
    return hit[inv] if len(uniq) else np.zeros(len(names), bool)


def view_mask(qviews, rviews, q_row: np.ndarray, r_row: np.ndarray, config: AggregateConfig) -> np.ndarray:
    """(p,) bool: the view pairs kept by the size filters."""
    keep = np.ones(len(q_row), bool)
    if config.min_query_side:
        keep &= np.asarray(qviews.sizes).min(1)[q_row] >= config.min_query_side
    if config.min_reference_side:
        keep &= np.asarray(rviews.sizes).min(1)[r_row] >= config.min_reference_side
    return keep


def aggregate(qviews, rviews, q_row: np.ndarray, r_row: np.ndarray, scores: np.ndarray,
              config: AggregateConfig = AggregateConfig()) -> ParentPairs:
    """Reduce scored view pairs to image pairs.

    Args:
        qviews, rviews: :class:`~imsim_lab.features.viewstore.ViewSet` (or anything with
            ``parent_ids``, ``view_names`` and ``sizes``) of the query and reference views.
        q_row, r_row: (p,) rows of ``qviews`` / ``rviews``; ``scores``: (p,) higher = more similar.
        config: filters and reduction.

    Returns:
        :class:`ParentPairs`, sorted by decreasing score (ties: query id, reference id).
    """
    q_row, r_row = np.asarray(q_row, np.int64), np.asarray(r_row, np.int64)
    s = np.asarray(scores, np.float64)
    if not (len(q_row) == len(r_row) == len(s)):
        raise ViewError(f"aggregate: {len(q_row)} query rows, {len(r_row)} reference rows, {len(s)} scores")
    for what, rows, vs in (("query", q_row, qviews), ("reference", r_row, rviews)):
        if len(rows) and (rows.min() < 0 or rows.max() >= len(vs.parent_ids)):
            raise ViewError(f"aggregate: a {what} view row is outside 0..{len(vs.parent_ids) - 1}")
    keep = view_mask(qviews, rviews, q_row, r_row, config) & np.isfinite(s)
    q_row, r_row, s = q_row[keep], r_row[keep], s[keep]
    qnames = np.asarray(qviews.view_names)[q_row]
    if config.offset:
        s = s + np.where(_matches(qnames, config.offset_exempt), 0.0, config.offset)
    qp = np.asarray(qviews.parent_ids).astype(str)[q_row]
    rp = np.asarray(rviews.parent_ids).astype(str)[r_row]
    if not len(s):
        e = np.zeros(0, np.int64)
        return ParentPairs(qp, rp, s, e, e, qnames, qnames, e)
    qu, qc = np.unique(qp, return_inverse=True)
    ru, rc = np.unique(rp, return_inverse=True)
    key = qc.astype(np.int64) * len(ru) + rc
    # best view pair first inside each image pair (ties: the earliest view rows)
    order = np.lexsort((r_row, q_row, -s, key))
    k_sorted = key[order]
    start = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]])
    best = order[start]
    counts = np.diff(np.r_[start, len(order)])
    out = s[best] if config.reduce == "max" else np.add.reduceat(s[order], start) / counts
    qi, ri = qu[qc[best]], ru[rc[best]]
    o = np.lexsort((ri, qi, -out))
    b = best[o]
    return ParentPairs(qi[o], ri[o], out[o], q_row[b], r_row[b], qnames[b],
                       np.asarray(rviews.view_names)[r_row[b]], counts[o])


@dataclass(frozen=True, eq=False)
class Votes:
    """Pairs predicted by at least k of n scored lists. Shapes: ``q`` (p,), ``r`` (p,) the keys,
    ``scores`` (p, n) each list's score (NaN where that list lacks the pair), ``n_agree`` (p,)."""

    q: np.ndarray
    r: np.ndarray
    scores: np.ndarray
    n_agree: np.ndarray

    def __len__(self) -> int:
        return len(self.q)


def vote(lists: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int) -> Votes:
    """Keep the pairs present in at least ``k`` of the ``lists`` (D2LV: 2 of 3 backbones).

    Args:
        lists: n triples ``(q, r, scores)`` of (p_i,) arrays; keys may be view rows or image ids;
            a pair repeated inside one list keeps its highest score.
        k: 1 <= k <= n.

    Returns:
        :class:`Votes` sorted by (q, r), with every list's score kept (D2LV keeps both scores of
        a pairwise intersection).
    """
    n = len(lists)
    if not 1 <= k <= max(n, 1) or n == 0:
        raise ViewError(f"vote: k must be in 1..{n} (the number of lists), got {k}")
    qs = [np.asarray(t[0]) for t in lists]
    rs = [np.asarray(t[1]) for t in lists]
    for i, (q, r, s) in enumerate(lists):
        if not len(q) == len(r) == len(s):
            raise ViewError(f"vote: list {i} has arrays of different lengths")
    qu, qc = np.unique(np.concatenate(qs), return_inverse=True)
    ru, rc = np.unique(np.concatenate(rs), return_inverse=True)
    key = qc.astype(np.int64) * max(len(ru), 1) + rc
    which = np.repeat(np.arange(n), [len(q) for q in qs])
    s = np.concatenate([np.asarray(t[2], np.float64) for t in lists]) if n else np.zeros(0)
    uk, ki = np.unique(key, return_inverse=True)
    table = np.full((len(uk), n), -np.inf)
    np.maximum.at(table, (ki, which), s)
    present = table > -np.inf
    agree = present.sum(1)
    sel = agree >= k
    table = np.where(present, table, np.nan)[sel]
    uk = uk[sel]
    return Votes(qu[uk // max(len(ru), 1)], ru[uk % max(len(ru), 1)], table, agree[sel])
