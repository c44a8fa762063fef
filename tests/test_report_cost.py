"""Cost and provenance columns (imsim_lab.analysis.report.cost) from hand-made run folders, and the
Pareto front against brute force."""

import json
from pathlib import Path

import numpy as np
import pytest

from imsim_lab.analysis.report.cost import cost_figure, cost_table, pareto_front
from imsim_lab.analysis.report.runs import read_run

NQ = 100


def make_run(root: Path, name: str, config: dict, timings: dict, dim=None, dtype="float32") -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {"method": name, "track": "descriptor", "benchmark": {"name": "b", "counts": {"queries": NQ}}, **config}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "metrics.json").write_text(json.dumps({"isc2021": {"micro_ap": 0.5}}))
    (run / "timings.json").write_text(json.dumps(timings))
    if dim:
        (run / "features").mkdir()
        np.save(run / "features" / "reference.npy", np.zeros((5, dim), dtype))
    return run


def test_cost_columns(tmp_path):
    res = tmp_path / "results"
    a = make_run(res, "sscd", {"model": {"dim": 512, "metric": "l2"}, "post": "none", "model_fingerprint": "f1"},
                 {"extract_query": 2.0, "postprocess": 0.1, "search": 0.4}, dim=512)
    make_run(res, "sscd+sn", {"model": {"dim": 512}, "post": "score_norm", "model_fingerprint": "f1"},
             {"extract_query": 0.0005, "postprocess": 0.2, "search": 0.3}, dim=512, dtype="float16")
    make_run(res, "pdq", {"model": {"dim": 256, "metric": "hamming"}, "post": "hamming", "model_fingerprint": "p"},
             {"cpu_extract_query": 0.5, "cpu_postprocess": 0.0, "cpu_search": 0.5, "extract_query": 9.0}, dim=256)
    make_run(res, "sift_verify", {"track": "matching", "candidates": {"run": str(a), "pairs": 1000},
                                  "matcher_report": {"images_per_query": 1, "bytes_per_reference": 64000}},
             {"candidates": 0.1, "rescore": 30.0})
    make_run(res / "notebooks" / "03_lyakaap" / "cpu", "iscnet", {"model": {"dim": 256}, "model_fingerprint": "t",
             "provenance": {"saw_eval_queries": True}}, {"extract_query": 1.0}, dim=256)
    make_run(res, "upload", {"submission": {"kind": "csv"}}, {})
    infos = {n: read_run(p, res) for n, p in
             [(p.parent.name, p.parent) for p in res.rglob("metrics.json")]}
    t = cost_table(list(infos.values())).set_index("label")
    s = t.loc["sscd"]
    assert s["dim"] == 512 and s["bytes_per_reference"] == 2048 and s["images_per_query"] == 1
    assert s["seconds_per_query"] == pytest.approx(2.5 / NQ) and s["seconds_kind"] == "wall" and s["models"] == 1
    sn = t.loc["sscd+sn"]
    # float16 features; the reused extraction is charged from the run that extracted
    assert sn["bytes_per_reference"] == 1024
    assert sn["seconds_per_query"] == pytest.approx((0.0005 + 0.5) / NQ + 2.0 / NQ)
    assert "timed in run sscd" in sn["cost_notes"]
    p = t.loc["pdq"]
    assert p["bytes_per_reference"] == 32 and p["seconds_kind"] == "cpu" and p["seconds_per_query"] == pytest.approx(0.01)
    m = t.loc["sift_verify"]
    assert m["track"] == "matching" and m["images_per_query"] == 2 and m["models"] == 2
    assert m["bytes_per_reference"] == 2048 + 64000
    assert m["seconds_per_query"] == pytest.approx(2.5 / NQ + 30.0 / NQ)
    nb = t.loc["iscnet"]
    assert nb["written_by"] == "notebook 03_lyakaap (profile cpu)" and nb["saw_eval_queries"] is True
    assert t.loc["upload", "written_by"] == "upload (csv)" and t.loc["upload", "saw_eval_queries"] is None
    assert t.loc["sscd", "written_by"] == "imsim-lab run sscd" and t.loc["sscd", "saw_eval_queries"] is False


def test_pareto_front_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.integers(1, 6, 12).astype(float)
        v = rng.integers(0, 6, 12).astype(float)
        c[rng.integers(12)] = np.nan
        f = pareto_front(c, v)
        for i in range(12):
            if np.isnan(c[i]):
                assert not f[i]
                continue
            dominated = any(c[j] <= c[i] and v[j] >= v[i] and (c[j] < c[i] or v[j] > v[i])
                            for j in range(12) if j != i and not np.isnan(c[j]))
            assert f[i] == (not dominated)


def test_cost_figure_log_axis_and_front(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"label": ["a", "b", "c"], "track": ["descriptor", "descriptor", "matching"],
                       "micro_ap": [0.5, 0.4, 0.8], "seconds_per_query": [0.01, 0.02, 0.5],
                       "bytes_per_reference": [2048, 1024, 60000], "dim": [512, 256, 512],
                       "images_per_query": [1, 1, 2], "saw_eval_queries": [False, False, None]})
    fig = cost_figure(df)
    assert fig.layout.xaxis.type == "log"
    front = [t for t in fig.data if t.name == "Pareto front"][0]
    assert list(front.x) == [0.01, 0.5]  # b is dominated by a
