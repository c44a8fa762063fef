"""imsim_lab.analysis.calibration and .negatives against explicit evaluations on seeded data."""

import numpy as np
import pandas as pd
import pytest

from imsim_lab.analysis.calibration import (calibration_table, family_gains, gains_table, metric_intervals, metrics_on,
                                            pair_scores, paired_gain, pr_curves, query_mask, sweep_halves)
from imsim_lab.analysis.negatives import active_negatives
from imsim_lab.eval.formats import GroundTruth, Predictions
from imsim_lab.eval.metrics import evaluate


def _toy(seed=0, nq=60, nr=40, k=5, noise=1.0):
    rng = np.random.default_rng(seed)
    qids = [f"Q{i:05d}" for i in range(nq)]
    rids = [f"R{i:06d}" for i in range(nr)]
    truth = [rids[i % nr] if i % 3 == 0 else "" for i in range(nq)]
    gt = GroundTruth(np.array(qids, dtype=object), np.array(truth, dtype=object))
    q, r, s = [], [], []
    for i, qid in enumerate(qids):
        pool = [j for j in range(nr) if not truth[i] or rids[j] != truth[i]]
        refs = list(rng.choice(pool, size=k, replace=False))
        if truth[i] and rng.random() < 0.8:
            refs[0] = rids.index(truth[i])
        for j, ref in enumerate(refs):
            q.append(qid)
            r.append(rids[ref])
            s.append(float(rng.normal() * noise + (2.0 if rids[ref] == truth[i] else 0.0)))
    return gt, Predictions(np.array(q, dtype=object), np.array(r, dtype=object), np.array(s))


def _restricted(gt, preds, subset):
    keep_q = np.isin(gt.query_ids.astype(str), list(subset))
    keep_p = np.isin(preds.query_ids.astype(str), list(subset))
    return (GroundTruth(gt.query_ids[keep_q], gt.reference_ids[keep_q]),
            Predictions(preds.query_ids[keep_p], preds.reference_ids[keep_p], preds.scores[keep_p]))


def test_metrics_on_a_strict_subset_equal_evaluate_of_the_subset():
    gt, preds = _toy()
    subset = [f"Q{i:05d}" for i in range(0, 60, 2)]
    got = metrics_on(gt, preds, subset)
    g2, p2 = _restricted(gt, preds, subset)
    ref = evaluate(g2, p2, "isc2021")
    assert got["micro_ap"] == pytest.approx(ref.micro_ap, abs=1e-9)
    assert got["recall_at_rank1"] == pytest.approx(ref.recall_at_rank1, abs=1e-9)
    assert (np.isnan(got["recall_at_p90"]) and ref.recall_at_p90 is None) or \
        got["recall_at_p90"] == pytest.approx(ref.recall_at_p90, abs=1e-9)
    full = metrics_on(gt, preds)
    assert full["micro_ap"] == pytest.approx(evaluate(gt, preds, "isc2021").micro_ap, abs=1e-9)


def test_intervals_hold_the_point_and_paired_gain_of_a_run_with_itself_is_zero():
    gt, preds = _toy()
    iv = metric_intervals(gt, preds, n_boot=200)
    assert iv.loc["micro_ap", "low"] <= iv.loc["micro_ap", "value"] <= iv.loc["micro_ap", "high"]
    g = paired_gain(gt, preds, preds, n_boot=100)
    assert g.diff == 0 and g.low == 0 and g.high == 0 and not g.separable and g.verdict == "not separable"


def test_paired_gain_separates_a_clear_improvement_and_matches_the_gains_table():
    gt, noisy = _toy(noise=1.5)
    _, clean = _toy(noise=0.2)
    g = paired_gain(gt, noisy, clean, n_boot=300, seed=1)
    assert g.diff > 0 and g.separable and g.low > 0
    assert g.value_a == pytest.approx(evaluate(gt, noisy, "isc2021").micro_ap, abs=1e-9)
    t = gains_table(gt, {"noisy": noisy, "clean": clean}, "noisy", n_boot=300, seed=1)
    row = t[(t["label"] == "clean") & (t["metric"] == "micro_ap")].iloc[0]
    assert row["gain"] == pytest.approx(g.diff) and row["low"] == pytest.approx(g.low)
    assert row["verdict"] == "better"


def test_sweep_chooses_on_the_tuning_half_and_reports_the_other():
    gt, _ = _toy()
    tune = [f"Q{i:05d}" for i in range(0, 60, 2)]
    report = [f"Q{i:05d}" for i in range(1, 60, 2)]
    sw = sweep_halves(gt, [1.5, 0.2, 0.8], lambda v: _toy(noise=v)[1], tune, report)
    assert list(sw.table["value"]) == [1.5, 0.2, 0.8]
    best = sw.table.loc[sw.table["tune_micro_ap"].idxmax()]
    assert sw.chosen == best["value"] and sw.reported == pytest.approx(best["report_micro_ap"])
    g2, p2 = _restricted(gt, _toy(noise=sw.chosen)[1], report)
    assert sw.reported == pytest.approx(evaluate(g2, p2, "isc2021").micro_ap, abs=1e-9)
    with pytest.raises(ValueError, match="share"):
        sweep_halves(gt, [1.0], lambda v: _toy()[1], tune, tune)


def test_pair_scores_and_curves():
    gt, preds = _toy()
    ps = pair_scores(gt, preds)
    assert len(ps) == 60 and ps["has_match"].sum() == 20
    df = pd.DataFrame({"q": preds.query_ids.astype(str), "r": preds.reference_ids.astype(str), "s": preds.scores})
    truth = dict(zip(gt.query_ids, gt.reference_ids))
    for _, row in ps.head(12).iterrows():
        mine = df[df["q"] == row["query_id"]]
        right = mine["r"] == truth[row["query_id"]]
        assert (np.isnan(row["true_score"]) and not right.any()) or row["true_score"] == mine.loc[right, "s"].max()
        assert row["best_wrong_score"] == mine.loc[~right, "s"].max()
    tab = calibration_table(gt, {"a": preds})
    assert set(tab["pair"]) == {"true pair", "best wrong pair"} and 0 <= tab.attrs["overlap"]["a"] <= 1
    pr = pr_curves(gt, {"a": preds})
    assert pr["recall"].is_monotonic_increasing and pr["precision"].between(0, 1).all()
    assert query_mask(gt, ["Q00001"]).sum() == 1


def test_active_negatives_against_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = active_negatives(x, [5, 30], margin=1.2)
    D = np.linalg.norm(x[:, None] - x[None], axis=2)
    for s in (5, 30):
        counts = [sum(D[i, j] < 1.2 for j in range(s) if j != i) for i in range(30)]
        assert t.loc[s, "active_per_anchor"] == pytest.approx(np.mean(counts))
        shares = [c / (s - (i < s)) for i, c in enumerate(counts)]
        assert t.loc[s, "active_share"] == pytest.approx(np.mean(shares))
    with pytest.raises(ValueError):
        active_negatives(x, [31])


def test_family_gains_use_the_family_copies_and_every_query_without_a_match():
    gt, noisy = _toy(noise=1.5)
    _, clean = _toy(noise=0.2)
    fam = ["a" if i % 2 else "b" for i in range(60)]
    qdf = pd.DataFrame({"query_id": gt.query_ids.astype(str), "family": fam, "has_match": gt.reference_ids != ""})
    t = family_gains(gt, qdf, {"noisy": noisy, "clean": clean}, "noisy", n_boot=100)
    assert list(t["family"]) == ["a", "b"]
    for _, row in t.iterrows():
        members = qdf[(qdf["family"] == row["family"]) | ~qdf["has_match"]]["query_id"]
        assert row["value"] == pytest.approx(evaluate(gt, clean, "isc2021", queries=list(
            qdf.loc[(qdf["family"] == row["family"]) & qdf["has_match"], "query_id"])).micro_ap, abs=1e-9)
        assert row["value"] == pytest.approx(metrics_on(gt, clean, list(members))["micro_ap"], abs=1e-9)
        assert row["low"] <= row["gain"] <= row["high"]

    half = qdf.iloc[::2]
    th = family_gains(gt, half, {"noisy": noisy, "clean": clean}, "noisy", n_boot=50)
    for _, row in th.iterrows():
        members = half[(half["family"] == row["family"]) | ~half["has_match"]]["query_id"]
        assert row["value"] == pytest.approx(metrics_on(gt, clean, list(members))["micro_ap"], abs=1e-9)


def test_an_interval_of_rounding_noise_is_not_separable():
    """Two runs that rank a family alike can differ by float rounding in every resample ([1e-17,
    2e-17]): that is no gain, and the verdict must not call it one."""
    from imsim_lab.analysis.calibration import Gain

    assert Gain("micro_ap", 0.143, 0.143, 1e-17, 1e-17, 2e-17, 0.95, 1000).verdict == "not separable"
    assert Gain("micro_ap", 0.143, 0.143, -1e-17, -2e-17, -1e-17, 0.95, 1000).verdict == "not separable"
    assert Gain("micro_ap", 0.1, 0.2, 0.1, 0.01, 0.2, 0.95, 1000).verdict == "b better"
    assert Gain("micro_ap", 0.2, 0.1, -0.1, -0.2, -0.01, 0.95, 1000).verdict == "b worse"
