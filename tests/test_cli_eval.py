"""`imsim-lab eval`: the JSON contract and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from imsim_lab.cli import main
from imsim_lab.eval.formats import DescriptorSubmission, GroundTruth, Predictions, write_descriptors, write_ground_truth, write_predictions

KEYS = {"protocol", "micro_ap", "recall_at_p90", "precision_at_p90", "threshold_at_p90", "recall_at_rank1",
        "recall_at_rank10", "n_predictions", "n_positives"}


@pytest.fixture
def files(tmp_path):
    gt = GroundTruth.from_pairs([("Q00000", "R000000"), ("Q00001", "R000001"), ("Q00002", None), ("Q00003", None)])
    write_ground_truth(tmp_path / "gt.csv", gt)
    write_predictions(tmp_path / "sub.csv", Predictions.from_triples(
        [("Q00099", "R000005", 2.0), ("Q00000", "R000000", 1.0), ("Q00001", "R000001", 1.0)]))
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(6, 8)).astype("f4")
    xq = np.concatenate([xb[:2] + 0.01, rng.normal(size=(2, 8))]).astype("f4")
    write_descriptors(tmp_path / "d.h5", DescriptorSubmission(
        np.array([f"Q{i:05d}" for i in range(4)], object), xq, np.array([f"R{i:06d}" for i in range(6)], object), xb))
    return tmp_path


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_predictions_json(files, capsys):
    out = run_json(capsys, ["eval", "--gt", str(files / "gt.csv"), "--predictions", str(files / "sub.csv"), "--json"])
    assert KEYS <= set(out)
    assert out["protocol"] == "isc2021" and out["micro_ap"] == pytest.approx(0.58333333)
    assert out["recall_at_p90"] is None and out["threshold_at_p90"] is None
    out = run_json(capsys, ["eval", "--gt", str(files / "gt.csv"), "--predictions", str(files / "sub.csv"),
                            "--protocol", "drivendata", "--json"])
    assert out["micro_ap"] == pytest.approx(1.0) and out["recall_at_rank1"] is None


def test_eval_descriptors_json(files, capsys):
    out = run_json(capsys, ["eval", "--gt", str(files / "gt.csv"), "--descriptors", str(files / "d.h5"), "--json"])
    assert out["n_predictions"] == 24 and out["micro_ap"] == pytest.approx(1.0)
    out = run_json(capsys, ["eval", "--gt", str(files / "gt.csv"), "--descriptors", str(files / "d.h5"),
                            "--knn", "1", "--json"])
    assert out["n_predictions"] == 4 and out["recall_at_rank1"] == 1.0


def test_eval_human_readable(files, capsys):
    assert main(["eval", "--gt", str(files / "gt.csv"), "--predictions", str(files / "sub.csv")]) == 0
    text = capsys.readouterr().out
    assert "micro AP" in text and "not reached" in text


def test_bad_input_exit_2_one_line(files, capsys):
    (files / "bad.csv").write_text("query_id,reference_id,score\nQ00000,R000000,oops\n")
    code = main(["eval", "--gt", str(files / "gt.csv"), "--predictions", str(files / "bad.csv"), "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "bad.csv" in err and "row 2" in err and "non-numeric" in err


def test_console_entry_point(files):
    r = subprocess.run([sys.executable, "-m", "imsim_lab", "eval", "--gt", str(files / "missing.csv"),
                        "--predictions", str(files / "sub.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "missing.csv: file not found" in r.stderr
