"""The weighted-evaluation engine against the official evaluate on explicitly replicated data."""

import math

import numpy as np
import pytest

from imsim_lab.eval.formats import GroundTruth, Predictions
from imsim_lab.eval.metrics import evaluate
from imsim_lab.analysis.report.weighted import (bootstrap_counts, prepare_scored, subset_weights, weighted_metrics)


def random_case(seed, nq=30, nref=12, n_pred=120, tie_levels=None, extra_queries=0):
    rng = np.random.default_rng(seed)
    qids = [f"Q{i:05d}" for i in range(nq)]
    refs = [f"R{i:06d}" for i in range(nref)]
    gt_refs = [refs[rng.integers(nref)] if rng.random() < 0.4 else "" for _ in qids]
    gt = GroundTruth.from_pairs(zip(qids, gt_refs))
    allq = qids + [f"Q{90000 + i:05d}" for i in range(extra_queries)]
    pairs = set()
    # make sure many true pairs are predicted
    for q, r in zip(qids, gt_refs):
        if r and rng.random() < 0.8:
            pairs.add((q, r))
    while len(pairs) < n_pred:
        pairs.add((allq[rng.integers(len(allq))], refs[rng.integers(nref)]))
    pairs = sorted(pairs)
    if tie_levels:
        scores = rng.integers(0, tie_levels, len(pairs)).astype(float)
    else:
        scores = rng.normal(size=len(pairs))
    preds = Predictions(np.array([p[0] for p in pairs], object), np.array([p[1] for p in pairs], object),
                        scores)
    return gt, preds


def replicate(gt, preds, w):
    """Repeat query i w[i] times (copies renamed, so each copy is its own query)."""
    w = np.asarray(w, int)
    gq, gr = [], []
    index = {q: i for i, q in enumerate(gt.query_ids)}
    for i, (q, r) in enumerate(zip(gt.query_ids, gt.reference_ids)):
        for c in range(w[i]):
            gq.append(f"Q{(c + 1) * 100000 + i}")
            gr.append(r)
    pq, pr, ps = [], [], []
    for q, r, s in zip(preds.query_ids, preds.reference_ids, preds.scores):
        i = index.get(q)
        if i is None:
            pq.append(q), pr.append(r), ps.append(s)
            continue
        for c in range(w[i]):
            pq.append(f"Q{(c + 1) * 100000 + i}"), pr.append(r), ps.append(s)
    return (GroundTruth.from_pairs(zip(gq, gr)),
            Predictions(np.array(pq, object), np.array(pr, object), np.array(ps, float)))


def close(a, b):
    if b is None:
        return math.isnan(a)
    return a == pytest.approx(b, abs=1e-9)


@pytest.mark.parametrize("protocol", ["isc2021", "drivendata"])
@pytest.mark.parametrize("tie_levels", [None, 4])
def test_unit_weights_equal_evaluate(protocol, tie_levels):
    for seed in range(6):
        gt, preds = random_case(seed, tie_levels=tie_levels, extra_queries=3)
        m = evaluate(gt, preds, protocol)
        got = weighted_metrics(prepare_scored(gt, preds, protocol), np.ones((1, len(gt))))
        assert close(got["micro_ap"][0], m.micro_ap)
        assert close(got["recall_at_p90"][0], m.recall_at_p90)
        if protocol == "isc2021":
            assert close(got["recall_at_rank1"][0], m.recall_at_rank1)
        else:
            assert math.isnan(got["recall_at_rank1"][0])
        assert got["n_positives"][0] == m.n_positives


@pytest.mark.parametrize("protocol", ["isc2021", "drivendata"])
@pytest.mark.parametrize("tie_levels", [None, 3])
def test_bootstrap_weights_equal_replicated_evaluate(protocol, tie_levels):
    gt, preds = random_case(11, tie_levels=tie_levels, extra_queries=2)
    ss = prepare_scored(gt, preds, protocol)
    W = bootstrap_counts(len(gt), 5, seed=3)
    got = weighted_metrics(ss, W, chunk=2)
    for b in range(len(W)):
        g2, p2 = replicate(gt, preds, W[b])
        m = evaluate(g2, p2, protocol)
        assert close(got["micro_ap"][b], m.micro_ap)
        assert close(got["recall_at_p90"][b], m.recall_at_p90)
        if protocol == "isc2021":
            assert close(got["recall_at_rank1"][b], m.recall_at_rank1)


@pytest.mark.parametrize("protocol", ["isc2021", "drivendata"])
def test_subset_weights_equal_evaluate_queries(protocol):
    gt, preds = random_case(5, nq=40, n_pred=150, extra_queries=2)
    rng = np.random.default_rng(0)
    members = rng.random((4, len(gt))) < 0.3
    ss = prepare_scored(gt, preds, protocol)
    got = weighted_metrics(ss, subset_weights(gt.positive_mask, members))
    for k in range(4):
        m = evaluate(gt, preds, protocol, queries=gt.query_ids[members[k]])
        if m.n_positives == 0:
            assert math.isnan(got["micro_ap"][k])
            continue
        assert close(got["micro_ap"][k], m.micro_ap)
        assert close(got["recall_at_p90"][k], m.recall_at_p90)


def test_zero_weights_and_empty():
    gt, preds = random_case(2)
    ss = prepare_scored(gt, preds)
    got = weighted_metrics(ss, np.zeros((1, len(gt))))
    assert math.isnan(got["micro_ap"][0]) and got["n_positives"][0] == 0
    ss = prepare_scored(gt, Predictions.empty())
    got = weighted_metrics(ss, np.ones((1, len(gt))))
    assert got["micro_ap"][0] == 0.0 and math.isnan(got["recall_at_p90"][0])
    with pytest.raises(ValueError, match="columns"):
        weighted_metrics(ss, np.ones((1, len(gt) + 1)))


def test_bootstrap_counts_are_seeded_resamples():
    a = bootstrap_counts(50, 7, seed=1)
    assert a.shape == (7, 50) and (a.sum(axis=1) == 50).all()
    assert np.array_equal(a, bootstrap_counts(50, 7, seed=1))
    assert not np.array_equal(a, bootstrap_counts(50, 7, seed=2))


def test_reader_codes_give_the_same_result(tmp_path):
    from imsim_lab.eval.formats import read_predictions, write_predictions

    gt, preds = random_case(8, extra_queries=2)
    write_predictions(tmp_path / "p.csv", preds)
    read = read_predictions(tmp_path / "p.csv")
    assert read.query_codes is not None
    for protocol in ("isc2021", "drivendata"):
        a = weighted_metrics(prepare_scored(gt, preds, protocol), np.ones((1, len(gt))))
        b = weighted_metrics(prepare_scored(gt, read, protocol), np.ones((1, len(gt))))
        for k in ("micro_ap", "recall_at_p90"):
            assert np.allclose(a[k], b[k], equal_nan=True)


def test_pr_points_match_evaluate_curve():
    from imsim_lab.analysis.report.weighted import pr_points

    gt, preds = random_case(4, tie_levels=5)
    m = evaluate(gt, preds)
    r, p = pr_points(prepare_scored(gt, preds), max_points=10_000)
    # every corner is a point of the official curve, and the last one is its final recall
    curve = set(zip(np.round(m.recalls, 12), np.round(m.precisions, 12)))
    assert all((round(a, 12), round(b, 12)) in curve for a, b in zip(r, p))
    assert r[-1] == pytest.approx(m.recalls[m.is_correct].max())
    assert len(pr_points(prepare_scored(gt, preds), max_points=3)[0]) == 3
