"""Descriptor track: from descriptors to scored predictions (``docs/PROTOCOLS.md``).

The protocol (:mod:`imsim_lab.eval.protocols`) sets which queries are searched and the budget:

* ``drivendata``: keep the submitted queries listed in the ground truth (nq of them, its
  ``unknown_queries="drop"``); search all references with squared L2 under ONE global budget of
  ``nq x 10`` pairs; score = −distance.
* ``isc2021`` (``compute_metrics.py --track2``): the same global search with a budget of 500,000
  pairs (``max_results``), or ``knn`` neighbours per query; inner product on request.

Scores are "higher = more similar" (L2 distances negated here).
"""

from __future__ import annotations

import numpy as np

from ..errors import ImsimError
from .formats import DescriptorSubmission, GroundTruth, Predictions
from .protocols import get_protocol


def descriptor_predictions(sub: DescriptorSubmission, gt: GroundTruth | None = None,
                           protocol: str = "isc2021", knn: int | None = None,
                           max_results: int | None = None, metric: str = "l2",
                           backend: str = "auto") -> Predictions:
    """Turn a descriptor submission into matching-track predictions.

    Args:
        sub: the descriptors (xq with query_ids, xb with reference_ids).
        gt: the ground truth; under ``drivendata`` only its queries are kept.
        protocol: a registered protocol (:func:`~imsim_lab.eval.protocols.protocol_names`).
        knn: k neighbours per query instead of a global budget (at least 1).
        max_results: the global budget (at least 1; default: the protocol's
            :meth:`~imsim_lab.eval.protocols.Protocol.budget`, 500,000 for isc2021, nq x 10 for drivendata).
        metric: ``l2`` (score = −squared distance) or ``ip`` (score = inner product).

    Returns:
        Predictions sorted by score descending.

    Raises:
        ImsimError: ``knn`` or ``max_results`` below 1.
        ValueError: an unknown protocol, or a protocol that drops queries without ``gt``.
    """
    from ..search import global_topn, knn as knn_search

    proto = get_protocol(protocol)
    for name, value in (("knn", knn), ("max_results", max_results)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ImsimError(f"{name} must be a whole number of at least 1, not {value!r}")
    xq, qids = sub.xq, np.asarray(sub.query_ids, dtype=object)
    if proto.unknown_queries == "drop":
        if gt is None:
            raise ValueError(f"the {protocol} protocol needs the ground truth to select the queries")
        keep = np.isin(qids.astype(str), gt.queries)
        xq, qids = xq[keep], qids[keep]
    sign = -1.0 if metric == "l2" else 1.0
    if knn is not None:
        D, I = knn_search(xq, sub.xb, knn, metric, backend)
        valid = I >= 0
        qi = np.nonzero(valid)[0]
        bi = I[valid]
        dist = D[valid]
    else:
        if max_results is None:
            max_results = proto.budget(len(qids))
        qi, bi, dist = global_topn(xq, sub.xb, max_results, metric, backend)
    scores = sign * dist.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    rids = np.asarray(sub.reference_ids, dtype=object)
    qi, bi = qi[order], bi[order]
    # the search indices are the id codes: hand them over so that evaluate need not hash ids
    return Predictions(qids[qi], rids[bi], scores[order], reference_codes=bi.astype(np.int64),
                       query_codes=qi.astype(np.int64), query_vocab=qids, pairs_checked_unique=True)
