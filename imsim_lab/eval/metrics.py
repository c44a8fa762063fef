"""The ISC2021 metrics, exactly as the two official implementations compute them.

Definitions (``docs/PROTOCOLS.md``). Predictions are triples (q, r, score), higher =
more similar; the positives P are the ground-truth pairs with a reference, ``N_gt = |P|``::

    order  = sort by score descending; inside a tie, wrong predictions come first (pessimistic)
    prec_k = tp_k / k,  rec_k = tp_k / N_gt
    µAP    = Σ_k (rec_k − rec_{k−1}) · prec_k          (no interpolation)
    R@P90  = the largest rec_k over the prefixes k with prec_k ≥ 0.9 (the first such prefix
             gives the precision and the score threshold reported with it)
    rank(q, r) = #{predictions of q with score ≥ score(q, r)} − 1, infinite when not predicted;
    R@1 = mean(rank == 0), R@10 = mean(rank < 10) over the positives      (isc2021 only)

The protocols of :data:`~imsim_lab.eval.protocols.PROTOCOLS` differ where the two reference
implementations differ (the fields of :class:`~imsim_lab.eval.protocols.Protocol`):

=============================  ==========================  ==============================
behaviour                      ``isc2021`` (isc/metrics)   ``drivendata`` (leaderboard)
=============================  ==========================  ==============================
duplicate (q, r) predictions   error                       counted again
queries absent from the GT     kept, count as wrong        dropped
P90 never reached              None                        0.0
R@rank1 / R@rank10             yes                         no (None)
=============================  ==========================  ==============================

Everything is vectorised numpy (no Python loop over predictions). The arithmetic of µAP is the
one of isc2021 (differences of recall times precision, summed by numpy), so that the matching
track reproduces the official figure bit for bit. Taught in ``notebooks/01_benchmark_and_metric``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import count, repeat
from typing import Iterable

import numpy as np

from ..errors import FormatError
from .csvread import factorize_keys
from .formats import GroundTruth, Predictions, first_repeat
from .protocols import get_protocol

REQUIRED_PRECISION = 0.9


@dataclass(frozen=True, eq=False)
class Metrics:
    """The result of :func:`evaluate`.

    ``precisions``, ``recalls``, ``thresholds`` and ``is_correct`` (n,) are the full PR curve in
    evaluation order (score descending, wrong first inside a tie).
    """

    protocol: str
    micro_ap: float
    recall_at_p90: float | None
    precision_at_p90: float | None
    threshold_at_p90: float | None
    recall_at_rank1: float | None
    recall_at_rank10: float | None
    n_predictions: int
    n_positives: int
    n_dropped: int = 0
    precisions: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    recalls: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    is_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    def to_dict(self) -> dict:
        """The scalar figures as a JSON-ready dict (NaN becomes None)."""

        def clean(v):
            if v is None:
                return None
            if isinstance(v, (float, np.floating)):
                return None if math.isnan(v) else float(v)
            return int(v) if isinstance(v, (np.integer,)) else v

        keys = ("protocol", "micro_ap", "recall_at_p90", "precision_at_p90", "threshold_at_p90",
                "recall_at_rank1", "recall_at_rank10", "n_predictions", "n_positives", "n_dropped")
        return {k: clean(getattr(self, k)) for k in keys}


def _factorize(values) -> tuple[np.ndarray, np.ndarray]:
    """(codes, vocabulary) of a sequence of ids: ``vocabulary[codes] == values``; codes (n,) int64
    in [0, u).

    One dictionary pass (C speed: ``map(dict.setdefault, ...)``) gives each value the position of
    its first occurrence; those integers are then made dense.
    """
    arr = np.asarray(values, dtype=object).ravel()
    if not len(arr):
        return np.zeros(0, np.int64), arr
    first = np.fromiter(map({}.setdefault, arr.tolist(), count()), np.int64, len(arr))
    codes, where = factorize_keys(first)
    return codes, arr[where]


def _codes(*arrays: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Integer codes of string arrays over one shared vocabulary.

    Returns ([codes of each array], vocabulary) with ``vocabulary[codes] == array``.
    """
    sizes = [len(a) for a in arrays]
    allv = np.concatenate([np.asarray(a, dtype=object) for a in arrays]) if sum(sizes) else np.array([], object)
    codes, uniques = _factorize(allv)
    return np.split(codes, np.cumsum(sizes)[:-1]), uniques


def _lookup(vocab: np.ndarray, values) -> np.ndarray:
    """Position of each of ``values`` in ``vocab`` (-1 when absent); (len(values),) int64."""
    index = dict(zip(vocab.tolist(), range(len(vocab))))
    return np.fromiter(map(index.get, values, repeat(-1)), np.int64, len(values))


def first_duplicate(query_codes: np.ndarray, reference_ids: np.ndarray,
                    reference_codes: np.ndarray | None = None) -> int | None:
    """Index of the first prediction that repeats an earlier (query, reference) pair, or None.

    With ``reference_codes`` (equal codes for equal ids, from the CSV reader) the check is
    exact on integers. Otherwise the reference strings are hashed (Python caches str hashes)
    and the rare candidate collisions are confirmed on the strings themselves.
    """
    n = len(query_codes)
    if n < 2:
        return None
    q = query_codes.astype(np.int64)
    if reference_codes is not None:
        return first_repeat(q, reference_codes)
    rh = np.fromiter(map(hash, reference_ids), dtype=np.int64, count=n)
    with np.errstate(over="ignore"):
        key = rh * np.int64(1_000_003) + q
    order = np.argsort(key)
    sk = key[order]
    same = np.flatnonzero(sk[1:] == sk[:-1])
    cand = np.unique(np.concatenate([order[same], order[same + 1]]))  # rows sharing a key, in row order
    seen: set = set()
    for i in cand.tolist():  # only the colliding rows: a handful unless there are duplicates
        k = (int(q[i]), reference_ids[i])
        if k in seen:
            return i
        seen.add(k)
    return None


def precision_recall(is_correct: np.ndarray, scores: np.ndarray, n_positives: int):
    """PR curve in the pessimistic order.

    Args:
        is_correct: (n,) bool, whether each prediction is a ground-truth pair.
        scores: (n,) float, higher = more similar.
        n_positives: N_gt.

    Returns:
        (precisions, recalls, thresholds, is_correct_sorted), each (n,), by increasing recall.
    """
    y = np.asarray(is_correct, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    # score descending (an unstable sort is enough: the order inside a tie is rebuilt below)
    order = np.argsort(-s)
    s = s[order]
    y = y[order]
    # pessimistic ties: inside each run of equal scores the wrong predictions come first, so a
    # run of length L with c right ones ends with exactly c right ones
    n = len(s)
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]])) if n else np.zeros(0, np.int64)
    if len(starts) < n:
        lengths = np.diff(np.append(starts, n))
        n_right = np.add.reduceat(y.astype(np.int64), starts)
        run = np.repeat(np.arange(len(starts)), lengths)
        pos = np.arange(n) - starts[run]
        y = pos >= (lengths - n_right)[run]
    ntp = np.cumsum(y)
    nres = np.arange(1, len(y) + 1)
    precisions = ntp / nres
    with np.errstate(divide="ignore", invalid="ignore"):
        recalls = ntp / n_positives if n_positives else np.full(len(y), np.nan)
    return precisions, recalls, s, y


def average_precision(recalls: np.ndarray, precisions: np.ndarray) -> float:
    """µAP = Σ_k (rec_k − rec_{k−1}) · prec_k, recalls sorted ascending (no interpolation)."""
    if len(recalls) == 0:
        return 0.0
    return float(((recalls - np.concatenate([[0.0], recalls[:-1]])) * precisions).sum())


def operating_point(precisions, recalls, thresholds, required_precision: float = REQUIRED_PRECISION):
    """(precision, recall, threshold) of the highest-recall prefix with precision ≥ required.

    Among equal recalls the first (shortest) prefix wins, as in isc2021. Returns (None, None,
    None) when no prefix reaches the precision.
    """
    valid = np.flatnonzero(precisions >= required_precision)
    if len(valid) == 0:
        return None, None, None
    best = valid[np.argmax(recalls[valid])]
    return float(precisions[best]), float(recalls[best]), float(thresholds[best])


def tp_ranks(pq: np.ndarray, ps: np.ndarray, correct: np.ndarray, n_positives: int) -> np.ndarray:
    """Rank of each found positive among its query's predictions (ties count against you).

    Args:
        pq: (n,) int query codes of the predictions; ps: (n,) scores; correct: (n,) bool.
        n_positives: N_gt; positives never predicted get an infinite rank.

    Returns:
        (N_gt,) float ranks (``inf`` for the positives not predicted).
    """
    ranks = np.full(n_positives, np.inf)
    if not correct.any():
        return ranks
    # only the queries with a found positive matter
    with_hit = np.zeros(int(pq.max()) + 1, bool)
    with_hit[pq[correct]] = True
    sel = with_hit[pq]
    pq, ps, correct = pq[sel], ps[sel], correct[sel]
    order = np.lexsort((-ps, pq))  # by query, then score descending
    q, s = pq[order], ps[order]
    n = len(q)
    new_group = np.ones(n, bool)
    new_group[1:] = q[1:] != q[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    # last index of each (query, score) tie run
    run_end_flag = np.ones(n, bool)
    run_end_flag[:-1] = (q[1:] != q[:-1]) | (s[1:] != s[:-1])
    ends = np.flatnonzero(run_end_flag)
    run_end = ends[np.searchsorted(ends, np.arange(n))]
    count_ge = run_end - group_start + 1
    found = count_ge[correct[order]] - 1
    ranks[: len(found)] = np.sort(found)
    return ranks


def evaluate(gt: GroundTruth, preds: Predictions, protocol: str = "isc2021",
             queries: Iterable[str] | None = None) -> Metrics:
    """Evaluate matching-track predictions against a ground truth.

    Args:
        gt: the ground truth (every query listed, "" reference when it has no match).
        preds: the predictions; scores higher = more similar.
        protocol: a name of :func:`~imsim_lab.eval.protocols.protocol_names` (see the module docstring).
        queries: restrict the evaluation to a subset S of queries (per-transformation AP).
            The evaluated queries are S plus every query without a match (the distractor
            queries stay, as they do in the full benchmark): N_gt counts only the positives of
            S, and the predictions of the positive queries outside S are removed. Under isc2021
            the predictions for queries absent from the GT file stay too (they are wrong by
            definition, like those of the queries without a match).

    Returns:
        :class:`Metrics`. With no positive, µAP and the recalls are NaN.

    Raises:
        FormatError: duplicate (q, r) predictions under isc2021.
        ValueError: an unknown protocol.
    """
    proto = get_protocol(protocol)
    pq_s, pr_s, ps = preds.query_ids, preds.reference_ids, np.asarray(preds.scores, np.float64)
    gq_s, gr_s = gt.query_ids, gt.reference_ids
    # one integer vocabulary for the query ids of the GT and of the predictions
    if preds.query_codes is not None and preds.query_vocab is not None:
        # reuse the reader's codes: only the (small) GT is looked up in its vocabulary
        known = np.asarray(preds.query_vocab, dtype=object)
        gq = _lookup(known, np.asarray(gq_s, dtype=object).tolist())
        unknown = gq < 0
        extra_codes, extra = _factorize(np.asarray(gq_s, dtype=object)[unknown])
        vocab = np.concatenate([known, extra])
        gq[unknown] = len(known) + extra_codes
        pq = preds.query_codes.astype(np.int64)
    else:
        (gq, pq), vocab = _codes(gq_s, pq_s)
    nvoc = len(vocab)
    if proto.duplicates == "error" and not preds.pairs_checked_unique:
        dup = first_duplicate(pq, pr_s, preds.reference_codes)
        if dup is not None:
            raise FormatError(preds.path, f"duplicate prediction ({pq_s[dup]}, {pr_s[dup]}); {protocol} refuses "
                                          "duplicates (the drivendata protocol counts them again)",
                              f"row {dup + 2}" if preds.path else f"prediction {dup}")
    has = gr_s != ""
    n_total = len(pq)
    keep = np.ones(n_total, bool)
    if proto.unknown_queries == "drop":
        in_gt = np.zeros(nvoc, bool)
        in_gt[gq] = True
        keep &= in_gt[pq]
    counted = has
    if queries is not None:
        sub = _lookup(vocab, list(queries))
        in_sub = np.zeros(nvoc, bool)
        in_sub[sub[sub >= 0]] = True
        counted = has & in_sub[gq]
        excluded = np.zeros(nvoc, bool)  # positive queries outside the subset
        excluded[gq[has & ~in_sub[gq]]] = True
        keep &= ~excluded[pq]
    pos_q, pos_r = gq[counted], gr_s[counted]
    n_pos = len(pos_q)
    if n_pos == 0 or np.bincount(pos_q).max() <= 1:
        # at most one match per query (DISC21): compare with the expected reference directly
        expected = np.full(nvoc, None, dtype=object)
        expected[pos_q] = pos_r
        has_pos = np.zeros(nvoc, bool)
        has_pos[pos_q] = True
        cand = np.flatnonzero(has_pos[pq])  # only these predictions can be right
        correct = np.zeros(len(pq), bool)
        correct[cand] = np.asarray(pr_s[cand] == expected[pq[cand]], dtype=bool)
    else:
        (rp, rg), _ = _codes(pr_s, pos_r)
        span = int(max(rp.max(initial=0), rg.max(initial=0))) + 1
        correct = np.isin(pq * span + rp, pos_q * span + rg)
    if not keep.all():
        pq, ps, correct = pq[keep], ps[keep], correct[keep]
    precisions, recalls, thresholds, y = precision_recall(correct, ps, n_pos)
    if n_pos == 0:
        ap = math.nan
        pp90 = rp90 = tp90 = None
    else:
        ap = average_precision(recalls, precisions)
        pp90, rp90, tp90 = operating_point(precisions, recalls, thresholds)
    r1 = r10 = None
    if proto.rank_recalls:
        if n_pos:
            ranks = tp_ranks(pq, ps, correct, n_pos)
            r1 = float((ranks == 0).sum() / n_pos)
            r10 = float((ranks < 10).sum() / n_pos)
        else:
            r1 = r10 = math.nan
    if rp90 is None and proto.p90_missing is not None:
        rp90 = proto.p90_missing if n_pos else math.nan
    return Metrics(protocol, ap, rp90, pp90, tp90, r1, r10, int(keep.sum()), n_pos, n_total - int(keep.sum()),
                   precisions, recalls, thresholds, y)
