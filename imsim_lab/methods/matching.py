"""The matching track's two steps around a matcher: candidate pairs from a descriptor method, and
rescored pairs back to predictions.

* :func:`candidate_pairs`: a prepared descriptor method (:func:`~imsim_lab.methods.post.prepare`)
  gives each query its ``k`` best references and/or the ``budget`` best pairs overall, through the
  same :func:`~imsim_lab.methods.post.prepared_predictions` as a descriptor run;
* :func:`rescore`: the matcher scores every pair; the result is the run's final predictions (best
  scores first, cut to the protocol's row cap) and the table of candidates that the run folder keeps
  (``candidates.parquet``: query, reference, the descriptor score and rank that proposed the pair,
  the final score, and the matcher's per-pair columns).

With ``candidates.k = "all"`` every reference is a candidate of every query. For a matcher that
searches the references itself (``Matcher.own_search``, :func:`shortlist_for` gives its
shortlist) the all-pairs product is never listed: the matcher gets the descriptor method's
``shortlist`` best references per query (possibly none) and returns the pairs it found
(``MatchResult.pairs``), which are the pairs of the table and of the predictions; any other
matcher gets every (query, reference) pair, listed.
"""

from __future__ import annotations

import time

import numpy as np

from .matchers import CandidatePairs, MatchContext, create_matcher
from .spec import CandidateSource


def shortlist_for(matcher_name: str, params: dict) -> int | None:
    """How many descriptor neighbours per query the matcher wants under ``candidates.k = "all"``:
    its ``shortlist`` when it searches the references itself (``own_search``), else None (it gets
    every pair, listed)."""
    m = create_matcher(matcher_name, params)
    return int(m.shortlist) if m.own_search else None


def candidate_pairs(prep, query_ids, reference_ids, source: CandidateSource, backend: str = "auto",
                    shortlist: int | None = None) -> CandidatePairs:
    """Candidate pairs of the queries ``query_ids`` (rows of ``prep.xq``) among ``reference_ids``.

    With ``source.k``: the k nearest references of each query; with ``source.budget`` as well, the
    ``budget`` best of those pairs overall; with only ``source.budget``: the global search of that
    budget (a query can get none, another many). Ranks are within each query, by descriptor score.

    With ``source.k == "all"``: every pair, listed, when ``shortlist`` is None; else the
    ``shortlist`` nearest references of each query (none for 0), with ``all_queries`` set to the
    queries (the matcher finds the rest itself).
    """
    from .post import prepared_predictions

    nb = len(reference_ids)
    if source.all_references:
        if shortlist is None:
            return CandidatePairs.from_predictions(
                prepared_predictions(prep, query_ids, reference_ids, knn=nb, backend=backend))
        allq = np.asarray(query_ids).astype(str)
        if shortlist > 0 and nb:
            pairs = CandidatePairs.from_predictions(
                prepared_predictions(prep, query_ids, reference_ids, knn=min(int(shortlist), nb), backend=backend))
            return CandidatePairs(pairs.query_ids, pairs.reference_ids, pairs.scores, pairs.ranks, allq)
        return CandidatePairs(np.zeros(0, str), np.zeros(0, str), np.zeros(0), np.zeros(0, np.int64), allq)
    if source.k is not None:
        preds = prepared_predictions(prep, query_ids, reference_ids, knn=min(source.k, nb), backend=backend)
        if source.budget is not None and len(preds) > source.budget:
            keep = np.sort(np.argsort(-np.asarray(preds.scores), kind="stable")[: source.budget])
            pairs = CandidatePairs.from_predictions(preds)
            return CandidatePairs(pairs.query_ids[keep], pairs.reference_ids[keep], pairs.scores[keep],
                                  pairs.ranks[keep])
    else:
        preds = prepared_predictions(prep, query_ids, reference_ids, max_results=source.budget, backend=backend)
    return CandidatePairs.from_predictions(preds)


def rescore(matcher_name: str, params: dict, pairs: CandidatePairs, ctx: MatchContext, max_rows: int | None = None):
    """Score ``pairs`` with the registered matcher; returns (predictions, candidates table, report).

    ``predictions``: :class:`~imsim_lab.eval.formats.Predictions` of every pair, best first, cut to
    ``max_rows``; the candidates table has one row per pair (columns query_id, reference_id,
    candidate_score, candidate_rank, score, and the matcher's extras); the report is the matcher's,
    with ``pairs`` and ``seconds``. Under ``candidates.k = "all"`` the pairs are those the matcher
    returned (``MatchResult.pairs``), and ``shortlist_pairs`` counts the pairs it was given.
    """
    import pandas as pd

    from ..eval.formats import Predictions

    matcher = create_matcher(matcher_name, params)
    t = time.perf_counter()
    res = matcher.score(pairs, ctx)
    seconds = time.perf_counter() - t
    given = len(pairs)
    if res.pairs is not None:
        if not pairs.all_references:
            raise ValueError(f"matcher {matcher_name!r} returned pairs of its own, but it was given a candidate "
                             "list; it may only with candidates.k='all'")
        pairs = res.pairs
    scores = np.asarray(res.scores, np.float64)
    if scores.shape != (len(pairs),):
        raise ValueError(f"matcher {matcher_name!r} returned {scores.shape} scores for {len(pairs)} pairs")
    if not np.isfinite(scores).all():
        raise ValueError(f"matcher {matcher_name!r} returned non-finite scores")
    table = pd.DataFrame({"query_id": pairs.query_ids, "reference_id": pairs.reference_ids,
                          "candidate_score": pairs.scores, "candidate_rank": pairs.ranks, "score": scores})
    for k, v in res.extras.items():
        table[k] = np.asarray(v)
    order = np.argsort(-scores, kind="stable")
    if max_rows is not None:
        order = order[:max_rows]
    preds = Predictions(pairs.query_ids[order].astype(object), pairs.reference_ids[order].astype(object),
                        scores[order], pairs_checked_unique=True)
    report = {"matcher": matcher_name, "pairs": int(len(pairs)), "seconds": round(seconds, 3), **res.report}
    if res.pairs is not None:
        report["shortlist_pairs"] = int(given)
    return preds, table, report
