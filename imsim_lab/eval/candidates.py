"""Descriptor track: from descriptors to scored predictions (PROTOCOL.md section 4).

* ``drivendata``: keep the submitted queries listed in the ground truth (nq of them); search all
  references with squared L2 under ONE global budget of ``nq x 10`` pairs; score = −distance.
* ``isc2021`` (``compute_metrics.py --track2``): the same global search with a budget of 500,000
  pairs (``max_results``), or ``knn`` neighbours per query; inner product on request.

Scores are "higher = more similar" (L2 distances negated here).
"""

from __future__ import annotations

import numpy as np

from .formats import DescriptorSubmission, GroundTruth, Predictions
from ..search import global_topn, knn as knn_search

ISC2021_MAX_RESULTS = 500_000
DRIVENDATA_PER_QUERY = 10


def descriptor_predictions(sub: DescriptorSubmission, gt: GroundTruth | None = None,
                           protocol: str = "isc2021", knn: int | None = None,
                           max_results: int | None = None, metric: str = "l2",
                           backend: str = "auto") -> Predictions:
    """Turn a descriptor submission into matching-track predictions.

    Args:
        sub: the descriptors (xq with query_ids, xb with reference_ids).
        gt: the ground truth; under ``drivendata`` only its queries are kept.
        protocol: ``isc2021`` or ``drivendata``.
        knn: k neighbours per query instead of a global budget.
        max_results: the global budget (default: 500,000 for isc2021, nq x 10 for drivendata).
        metric: ``l2`` (score = −squared distance) or ``ip`` (score = inner product).

    Returns:
        Predictions sorted by score descending.
    """
    xq, qids = sub.xq, np.asarray(sub.query_ids, dtype=object)
    if protocol == "drivendata":
        if gt is None:
            raise ValueError("the drivendata protocol needs the ground truth to select the queries")
        keep = np.isin(qids.astype(str), gt.queries)
        xq, qids = xq[keep], qids[keep]
    elif protocol != "isc2021":
        raise ValueError(f"unknown protocol {protocol!r}")
    sign = -1.0 if metric == "l2" else 1.0
    if knn is not None:
        D, I = knn_search(xq, sub.xb, knn, metric, backend)
        valid = I >= 0
        qi = np.nonzero(valid)[0]
        bi = I[valid]
        dist = D[valid]
    else:
        if max_results is None:
            max_results = len(qids) * DRIVENDATA_PER_QUERY if protocol == "drivendata" else ISC2021_MAX_RESULTS
        qi, bi, dist = global_topn(xq, sub.xb, max_results, metric, backend)
    scores = sign * dist.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    rids = np.asarray(sub.reference_ids, dtype=object)
    qi, bi = qi[order], bi[order]
    # the search indices are the id codes: hand them over so that evaluate need not hash ids
    return Predictions(qids[qi], rids[bi], scores[order], reference_codes=bi.astype(np.int64),
                       query_codes=qi.astype(np.int64), query_vocab=qids, pairs_checked_unique=True)
