"""Descriptor-track candidate generation against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from imsim_lab.eval.candidates import descriptor_predictions
from imsim_lab.eval.formats import DescriptorSubmission, GroundTruth
from imsim_lab.search import global_topn, knn, knn_numpy


def data(nq=40, nb=120, d=16, seed=0):
    rng = np.random.default_rng(seed)
    xb = rng.normal(size=(nb, d)).astype("f4")
    xq = rng.normal(size=(nq, d)).astype("f4")
    m = min(10, nq, nb)
    xq[:m] = xb[:m] + 0.05 * rng.normal(size=(m, d)).astype("f4")  # copies: dense pairs
    if nq >= 14 and nb > 20:
        xq[10:14] = xb[20] + 0.01 * rng.normal(size=(4, d)).astype("f4")  # one hub reference
    return xq, xb


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_faiss_equals_numpy(metric):
    xq, xb = data()
    D1, I1 = knn(xq, xb, 7, metric, backend="faiss")
    D2, I2 = knn_numpy(xq, xb, 7, metric)
    np.testing.assert_allclose(D1, D2, rtol=1e-4, atol=1e-4)
    assert (I1 == I2).mean() > 0.99  # near-ties may swap in the last bits


def test_knn_more_neighbours_than_database():
    xq, xb = data(nq=3, nb=4)
    D, I = knn(xq, xb, 6)
    assert (I[:, 4:] == -1).all() and np.isinf(D[:, 4:]).all()


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n", [1, 17, 400, 4800])
def test_global_topn_is_the_global_best(metric, n):
    xq, xb = data()
    qi, bi, dist = global_topn(xq, xb, n, metric, k0=2)  # k0=2 forces the refinement loop
    D, I = knn_numpy(xq, xb, len(xb), metric)
    flat = np.sort(D.ravel()) if metric == "l2" else -np.sort(-D.ravel())
    m = min(n, D.size)
    assert len(qi) == m
    np.testing.assert_allclose(dist, flat[:m], rtol=1e-4, atol=1e-4)
    # every returned pair has the distance it claims
    if metric == "l2":
        true = ((xq[qi] - xb[bi]) ** 2).sum(1)
    else:
        true = (xq[qi] * xb[bi]).sum(1)
    np.testing.assert_allclose(dist, true, rtol=1e-4, atol=1e-4)
    assert len(set(zip(qi.tolist(), bi.tolist()))) == m


def test_global_budget_is_not_per_query():
    xq, xb = data()
    qi, _, _ = global_topn(xq, xb, 40 * 10)
    counts = np.bincount(qi, minlength=len(xq))
    assert counts.max() > 10 and (counts != 10).any()


def make_sub():
    xq, xb = data()
    qids = np.array([f"Q{i:05d}" for i in range(len(xq))], object)
    rids = np.array([f"R{i:06d}" for i in range(len(xb))], object)
    return DescriptorSubmission(qids, xq, rids, xb)


def test_drivendata_keeps_gt_queries_and_budget():
    sub = make_sub()
    gt = GroundTruth.from_pairs([(f"Q{i:05d}", f"R{i:06d}" if i < 10 else None) for i in range(20)])
    p = descriptor_predictions(sub, gt, "drivendata")
    assert len(p) == 20 * 10
    assert set(p.query_ids) <= set(gt.query_ids)
    assert np.all(np.diff(p.scores) <= 0)  # sorted, higher = more similar
    assert (p.scores <= 0).all()  # -squared L2


def test_isc2021_knn_and_budget():
    sub = make_sub()
    p = descriptor_predictions(sub, None, "isc2021", knn=3)
    assert len(p) == 40 * 3
    assert np.bincount(np.unique(p.query_ids, return_inverse=True)[1]).tolist() == [3] * 40
    p = descriptor_predictions(sub, None, "isc2021", max_results=55)
    assert len(p) == 55
    p = descriptor_predictions(sub, None, "isc2021")  # 500,000 cap > all pairs
    assert len(p) == 40 * 120


def test_predictions_carry_codes_that_give_the_same_metrics():
    from imsim_lab.eval.formats import Predictions
    from imsim_lab.eval.metrics import evaluate

    sub = make_sub()
    gt = GroundTruth.from_pairs([(f"Q{i:05d}", f"R{i:06d}" if i < 10 else None) for i in range(40)])
    p = descriptor_predictions(sub, gt, "isc2021", max_results=300)
    assert p.query_codes is not None and p.pairs_checked_unique
    plain = Predictions(p.query_ids, p.reference_ids, p.scores)
    for protocol in ("isc2021", "drivendata"):
        assert evaluate(gt, p, protocol).to_dict() == evaluate(gt, plain, protocol).to_dict()
