"""The exercises of lessons 01-03 that are cheap on ``tiny``, written as a student would write them
from the text, asserting what the text tells the student to expect.

The exercises whose expectation is a ``cpu`` figure (interval widths, sweeps, training ablations)
are not here: their measured figures are written in the notebooks next to the exercise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from imsim_lab.errors import FormatError, ImsimError
from imsim_lab.eval.formats import GroundTruth, Predictions
from imsim_lab.eval.metrics import evaluate


# ------------------------------------------------------------------------------------------------
# 01: the hand example of "µAP by hand"

def _hand_example():
    gt = GroundTruth.from_pairs([("Q0", "R0"), ("Q1", "R1"), ("Q2", None), ("Q3", None)])
    preds = Predictions(np.array(["Q0", "Q2", "Q1", "Q3", "Q0"], dtype=object),
                        np.array(["R0", "R5", "R1", "R2", "R7"], dtype=object),
                        np.array([0.9, 0.8, 0.7, 0.4, 0.3]))
    return gt, preds


def test_01_exercise_1_swapped_scores():
    gt, preds = _hand_example()
    swapped = Predictions(preds.query_ids, preds.reference_ids, np.array([0.8, 0.9, 0.7, 0.4, 0.3]))
    m = evaluate(gt, swapped, "isc2021")
    assert round(m.micro_ap, 4) == 0.5833 and np.isclose(m.micro_ap, (1 / 2 + 2 / 3) / 2)
    assert m.recall_at_p90 is None


def test_01_exercise_2_duplicate_pair():
    gt, preds = _hand_example()
    dup = Predictions(np.append(preds.query_ids, "Q0").astype(object), np.append(preds.reference_ids, "R0").astype(object),
                      np.append(preds.scores, 0.9))
    with pytest.raises(FormatError, match=r"duplicate prediction \(Q0, R0\)"):
        evaluate(gt, dup, "isc2021")
    d = evaluate(gt, dup, "drivendata")
    # sorted: Q0-R0, Q0-R0 (both hits, precision 1, 1), Q2-R5 (wrong), Q1-R1 (hit, precision 3/4):
    # three hits for two positives, each worth a recall step of 1/2
    assert np.isclose(d.micro_ap, (1 + 1 + 3 / 4) / 2) and d.micro_ap > 1


# ------------------------------------------------------------------------------------------------
# 02: score normalisation keeps the order inside each query


@pytest.fixture(scope="module")
def sscd_runs(tiny_bench, tmp_path_factory):
    """``runs["sscd"]`` and ``runs["sscd+sn"]`` of notebook 02 on ``tiny`` (one extraction, shared)."""
    from imsim_lab.eval.formats import read_predictions
    from imsim_lab.features import ExtractConfig
    from imsim_lab.runner import RunOptions, run_method

    base = tmp_path_factory.mktemp("nb02")
    opts = RunOptions(device="cpu", extract=ExtractConfig(batch_size=32, num_workers=0),
                      feature_cache=str(base / "feature_cache"))
    runs = {}
    for name in ("sscd", "sscd+sn"):
        run_method(name, tiny_bench, base / name, opts=opts)
        runs[name] = read_predictions(base / name / "predictions.csv")
    return runs


def _per_query(p):
    return pd.DataFrame({"q": p.query_ids.astype(str), "r": p.reference_ids.astype(str), "s": p.scores})


def test_02_exercise_1_same_order_with_a_shift_per_query(sscd_runs):
    a, b = _per_query(sscd_runs["sscd"]), _per_query(sscd_runs["sscd+sn"])
    shown = sorted(set(a.q))[:10]
    assert len(shown) == 10
    for qid in shown:
        ra = a[a.q == qid].sort_values("s", ascending=False, kind="stable")
        rb = b[b.q == qid].sort_values("s", ascending=False, kind="stable")
        assert len(ra) == len(rb) > 1
        assert list(ra.r) == list(rb.r), qid
        # sscd scores are -|q - r|^2 = 2 q.r - 2 (unit vectors); sscd+sn scores q.r - bias(q):
        # halved, the raw scores differ from the normalised ones by one constant per query
        shift = rb.s.to_numpy() - (ra.s.to_numpy() + 2) / 2
        assert np.ptp(shift) < 1e-4, qid


# ------------------------------------------------------------------------------------------------
# 03: memory of one batch (exercise 1), resume (exercise 4)


def test_03_exercise_1_memory_of_one_batch_is_accepted_and_less_is_refused(tmp_path):
    from imsim_lab.train.lyakaap import check_memory

    check_memory(tmp_path, 64, 32, 2)   # stage 1: 32 images x 2 views
    check_memory(tmp_path, 96, 32, 3)   # stage 2: + one reference negative each
    with pytest.raises(ImsimError, match=r"memory of 64 embeddings cannot hold one batch of 96") as e:
        check_memory(tmp_path / "stage2_v98", 64, 32, 3)
    assert str(tmp_path / "stage2_v98") in str(e.value)


def _stage(bench, out, memory, reference_negatives=0, max_steps=2, on_step=None):
    from imsim_lab.train import TrainConfig
    from imsim_lab.train.lyakaap import StageConfig, train_stage

    cfg = StageConfig(stage="v98", size=32, backbone="test_resnet", memory_size=memory,
                      reference_negatives=reference_negatives,
                      train=TrainConfig(epochs=1, max_steps=max_steps, lr=0.05, batch_size=4, num_workers=0,
                                        checkpoint_every=2, seed=0, device="cpu"))
    torch.manual_seed(0)
    return train_stage(bench, out, cfg, on_step=on_step)


def test_03_exercise_1_train_stage_refuses_before_any_step(tiny_bench, tmp_path):
    from imsim_lab.data.benchmark import load_benchmark

    bench = load_benchmark(tiny_bench)
    res = _stage(bench, tmp_path / "ok", memory=12, reference_negatives=1, max_steps=1)  # exactly one batch
    assert res.steps == 1
    with pytest.raises(ImsimError, match="cannot hold one batch of 12"):
        _stage(bench, tmp_path / "small", memory=8, reference_negatives=1)
    assert not (tmp_path / "small" / "checkpoint.pt").exists()


def test_03_exercise_4_a_killed_stage_resumes_to_the_same_weights(tiny_bench, tmp_path):
    from imsim_lab.data.benchmark import load_benchmark

    bench = load_benchmark(tiny_bench)
    whole = _stage(bench, tmp_path / "whole", memory=24, max_steps=5)

    def kill(rec):
        if rec["step"] == 3:
            raise KeyboardInterrupt("kernel killed")

    with pytest.raises(KeyboardInterrupt):
        _stage(bench, tmp_path / "cut", memory=24, max_steps=5, on_step=kill)
    assert not (tmp_path / "cut" / "weights.pt").exists()
    resumed = _stage(bench, tmp_path / "cut", memory=24, max_steps=5)
    assert resumed.resumed_from == 2 and resumed.steps == 5
    a = torch.load(whole.weights, weights_only=True)
    b = torch.load(resumed.weights, weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in resumed.history]
