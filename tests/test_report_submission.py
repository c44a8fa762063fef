"""Evaluating uploads: storage inside the results folder, limits, kinds, bad files, joining the
leaderboard."""

import numpy as np
import pytest

from imsim_lab.data.benchmark import load_benchmark
from imsim_lab.errors import FormatError, ImsimError
from imsim_lab.eval.formats import DescriptorSubmission, Predictions, write_descriptors, write_predictions
from imsim_lab.eval.metrics import evaluate
from imsim_lab.analysis.report import discover_runs, family_table, leaderboard, load_run_data
from imsim_lab.runfolder import per_query_from_predictions
from imsim_lab.analysis.report.submission import (UPLOADS, detect_kind, evaluate_submission,
                                         safe_name, save_as_run, store_upload, submission_run_data)
from support import make_mini_bench, scored_predictions


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return load_benchmark(make_mini_bench(tmp_path_factory.mktemp("sub") / "bench"))


def _csv_bytes(tmp_path, preds):
    p = tmp_path / "x.csv"
    write_predictions(p, preds)
    return p.read_bytes()


def test_store_upload_is_confined_and_limited(tmp_path):
    res = tmp_path / "results"
    p = store_upload(b"query_id,reference_id,score\n", "../../etc/passwd", res)
    assert p.parent == res / UPLOADS and p.name.startswith("passwd-")
    assert safe_name("..\\a b/..//c d.csv") == "c_d.csv" and safe_name("...") == "upload"
    assert not (tmp_path / "etc").exists()
    with pytest.raises(ImsimError, match="empty"):
        store_upload(b"", "a.csv", res)
    with pytest.raises(ImsimError, match="limit"):
        store_upload(b"x" * 2000, "a.csv", res, max_bytes=1000)
    assert store_upload(b"abc", "a.csv", res) == store_upload(b"abc", "a.csv", res)  # same content, same file


class _Uploaded:
    """Stands for Streamlit's UploadedFile: ``.size`` is known before ``.getvalue()`` reads it."""

    def __init__(self, data: bytes, size: int | None = None):
        self.data, self.size, self.reads = data, len(data) if size is None else size, 0

    def getvalue(self) -> bytes:
        self.reads += 1
        return self.data


def test_store_upload_checks_the_size_before_reading(tmp_path):
    big = _Uploaded(b"", size=2000)
    with pytest.raises(ImsimError, match="more than the limit"):
        store_upload(big, "a.csv", tmp_path, max_bytes=1000)
    assert big.reads == 0 and not (tmp_path / UPLOADS).exists()
    ok = _Uploaded(b"query_id,reference_id,score\n")
    p = store_upload(ok, "a.csv", tmp_path, max_bytes=1000)
    assert ok.reads == 1 and p.read_bytes() == ok.data


def test_uploads_folder_is_bounded_oldest_first(tmp_path):
    import os

    saved_run = tmp_path / UPLOADS / "team"  # a saved run folder is not an upload: never removed
    saved_run.mkdir(parents=True)
    (saved_run / "metrics.json").write_text("{}")
    paths = []
    for i in range(4):
        paths.append(store_upload(bytes([65 + i]) * 400, f"u{i}.csv", tmp_path, max_total_bytes=1000))
        os.utime(paths[-1], (1_000_000 + i, 1_000_000 + i))  # distinct ages, oldest first
    kept = sorted(p.name for p in (tmp_path / UPLOADS).iterdir() if p.is_file())
    assert kept == sorted(p.name for p in paths[-2:])  # 2 x 400 bytes fit under 1000, the 2 oldest went
    assert (saved_run / "metrics.json").is_file()
    big = store_upload(b"z" * 1500, "big.csv", tmp_path, max_total_bytes=1000)
    assert [p.name for p in (tmp_path / UPLOADS).iterdir() if p.is_file()] == [big.name]  # the new one stays


def test_submit_page_keeps_no_rejected_upload(monkeypatch, tmp_path):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    make_mini_bench(tmp_path / "results" / "bench")
    monkeypatch.setenv("IMSIM_RUNS_DIR", str(tmp_path / "results"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "explorer" / "app.py"), default_timeout=120)
    at.switch_page("views/submit.py")
    at.run()
    at.file_uploader(key="upload").set_value(("bad.csv", b"query_id,reference_id,score\nQ00000,R000000,x\n",
                                              "text/csv"))
    at.run()
    assert not at.exception and any("non-numeric score" in e.value for e in at.error)
    uploads = tmp_path / "results" / UPLOADS
    assert not uploads.exists() or not [p for p in uploads.iterdir() if p.is_file()]


def test_detect_kind(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 10)
    assert detect_kind(tmp_path / "a.bin") == "hdf5"
    (tmp_path / "b.txt").write_text("query_id,reference_id,score\nQ00000,R000000,1\n")
    assert detect_kind(tmp_path / "b.txt") == "csv"
    (tmp_path / "c.txt").write_text("hello\n")
    with pytest.raises(FormatError, match="not a submission"):
        detect_kind(tmp_path / "c.txt")
    (tmp_path / "d.bin").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FormatError, match="neither"):
        detect_kind(tmp_path / "d.bin")


def test_csv_submission_metrics_equal_evaluate(tmp_path, bench):
    preds = scored_predictions(bench, 3.0)
    path = store_upload(_csv_bytes(tmp_path, preds), "team.csv", tmp_path / "res")
    r = evaluate_submission(path, bench)
    assert r.kind == "csv" and not r.errors
    for proto in ("isc2021", "drivendata"):
        assert r.metrics[proto]["micro_ap"] == pytest.approx(evaluate(bench.gt, preds, proto).micro_ap)
    assert len(r.per_query) == len(bench.queries)
    ft = family_table([submission_run_data(r, bench, "team")], "isc2021")
    assert set(ft["family"]) == {"rotate", "blur", "text"}


def test_bad_csv_and_duplicates(tmp_path, bench):
    res = tmp_path / "res"
    bad = store_upload(b"query_id,reference_id,score\nQ00000,R000000,abc\n", "bad.csv", res)
    with pytest.raises(FormatError, match="non-numeric score") as e:
        evaluate_submission(bad, bench)
    assert "row 2" in str(e.value)
    wrong = store_upload(b"q,r,s\nQ00000,R000000,1\n", "w.csv", res)
    with pytest.raises(FormatError, match="not a submission"):
        evaluate_submission(wrong, bench)
    dup = store_upload(b"query_id,reference_id,score\nQ00000,R000000,1\nQ00000,R000000,0.5\n", "dup.csv", res)
    r = evaluate_submission(dup, bench)
    assert "isc2021" in r.errors and "duplicate" in r.errors["isc2021"] and "drivendata" in r.metrics
    with pytest.raises(ImsimError, match="both protocols"):
        save_as_run(r, bench, res, "dup")


def test_hdf5_submission(tmp_path, bench):
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(len(bench.reference_ids), 16)).astype(np.float32)
    truth = dict(zip(bench.gt.query_ids, bench.gt.reference_ids))
    ridx = {r: i for i, r in enumerate(bench.reference_ids)}
    xq = np.stack([xb[ridx[truth[q]]] + 0.05 * rng.normal(size=16) if truth[q] else rng.normal(size=16)
                   for q in bench.query_ids]).astype(np.float32)
    h5 = tmp_path / "d.h5"
    write_descriptors(h5, DescriptorSubmission(np.asarray(bench.query_ids), xq, np.asarray(bench.reference_ids), xb))
    path = store_upload(h5.read_bytes(), "desc.h5", tmp_path / "res")
    r = evaluate_submission(path, bench)
    assert r.kind == "hdf5" and r.metrics["isc2021"]["micro_ap"] > 0.9
    assert r.metrics["drivendata"]["n_predictions"] == 10 * len(bench.query_ids)
    assert evaluate_submission(path, bench, knn=1).metrics["isc2021"]["n_predictions"] == len(bench.query_ids)
    broken = store_upload(h5.read_bytes()[:200], "broken.h5", tmp_path / "res")
    with pytest.raises(FormatError):
        evaluate_submission(broken, bench)


def test_per_query_from_predictions_ranks():
    import pandas as pd

    q = pd.DataFrame({"query_id": ["Q00000", "Q00001", "Q00002"], "family": ["a", "a", "b"],
                      "strength": [0.1, 0.2, 0.3], "has_match": [True, True, False],
                      "reference_id": ["R000000", "R000001", ""]})
    p = Predictions.from_triples([("Q00000", "R000005", 0.9), ("Q00000", "R000000", 0.9), ("Q00000", "R000007", 0.1),
                                  ("Q00001", "R000001", 0.3), ("Q00002", "R000003", 0.8)])
    pq = per_query_from_predictions(q, p).set_index("query_id")
    assert pq.loc["Q00000", "true_rank"] == 1  # a tie counts against the truth
    assert pq.loc["Q00001", "true_rank"] == 0 and pq.loc["Q00001", "true_score"] == 0.3
    assert pq.loc["Q00002", "true_rank"] == -1 and np.isnan(pq.loc["Q00002", "true_score"])
    assert pq.loc["Q00002", "top_reference_id"] == "R000003"


def test_saved_submission_joins_the_leaderboard(tmp_path, bench):
    res = tmp_path / "res"
    preds = scored_predictions(bench, 4.0)
    r = evaluate_submission(store_upload(_csv_bytes(tmp_path, preds), "t.csv", res), bench)
    out = save_as_run(r, bench, res, "../team one")
    assert out == res / UPLOADS / "team_one"
    runs, problems = discover_runs(res)
    assert [x.label for x in runs] == ["upload:team_one"] and not problems
    rd = load_run_data(runs[0], bench.gt)
    assert rd.notes == []  # the DrivenData set of a CSV upload is the file itself
    lb = leaderboard([rd], "drivendata", n_boot=50)
    assert lb.loc[0, "micro_ap"] == pytest.approx(evaluate(bench.gt, preds, "drivendata").micro_ap)
    assert save_as_run(r, bench, res, "team one") == out  # same file again: allowed
    other = evaluate_submission(store_upload(_csv_bytes(tmp_path, scored_predictions(bench, 1.0, 5)), "u.csv", res),
                                bench)
    with pytest.raises(ImsimError, match="another run"):
        save_as_run(other, bench, res, "team one")
    # a name that is already an uploaded file (FileExistsError before): one line, nothing written
    taken = r.path.name
    with pytest.raises(ImsimError, match="exists and is not a folder"):
        save_as_run(other, bench, res, taken)
    with pytest.raises(ImsimError, match="give the run a name"):
        save_as_run(other, bench, res, "  ")
