"""The render-time script of the explorer (explorer/bench_render.py) on a small synthetic run."""

import pytest

from imsim_lab.eval.metrics import evaluate
from imsim_lab.analysis.report import discover_runs, leaderboard, load_run_data
from support import load_script


def _module():
    return load_script("explorer/bench_render.py")


@pytest.mark.slow
def test_synthetic_large_run_and_render_times(tmp_path):
    br = _module()
    bench = br.make_bench(tmp_path / "bench", nq=400, nref=300)
    for i in range(2):
        br.make_run(tmp_path / "runs" / f"m{i}", bench, skill=1.0 + 2 * i, seed=i)
    runs, problems = discover_runs(tmp_path / "runs")
    assert len(runs) == 2 and not problems
    rds = [load_run_data(r, bench.gt) for r in runs]
    lb = leaderboard(rds, n_boot=50)
    assert lb["label"].tolist() == ["m1", "m0"]  # more skill, better µAP
    from imsim_lab.eval.formats import read_predictions

    p = read_predictions(tmp_path / "runs" / "m1" / "predictions.csv")
    assert len(p) == 4000 and lb.loc[0, "micro_ap"] == evaluate(bench.gt, p).micro_ap
    rows = br.render_times(tmp_path / "runs", pages=["views/leaderboard.py", "views/failures.py"], timeout=120)
    assert [r["page"] for r in rows] == ["views/leaderboard.py", "views/failures.py"]
    assert all(r["cold_s"] > 0 and r["cached_s"] > 0 for r in rows)
