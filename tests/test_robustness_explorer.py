"""The explorer side of the robustness suites: backend tables, figures, and the two pages under AppTest."""

import json
from pathlib import Path

import pytest

from imsim_lab.analysis.attacks import AttackConfig, SuiteConfig, run_attack_suite
from imsim_lab.analysis.report import discover_runs
from imsim_lab.analysis.report.robustness import (attack_curves, attack_examples, attack_figure, find_attacks, graded_example,
                                         graded_figure, graded_table)
from imsim_lab.analysis.robustness import GradedConfig, run_graded
from support import FAST, make_runs

APP = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust_explorer")
    bench, a, b = make_runs(root)
    run_graded(a, GradedConfig(families=("rotate", "crop"), strengths=(0.0, 0.5, 1.0), sample=3), opts=FAST)
    run_attack_suite(a, SuiteConfig(AttackConfig("fgsm", "linf"), eps=(0.0, 4 / 255, 16 / 255), sample=3,
                                    n_examples=2), [b], opts=FAST)
    return root / "runs", bench


def test_backend_tables_and_figures(results):
    runs_dir, bench = results
    runs, problems = discover_runs(runs_dir)
    assert not problems and len(runs) == 2  # the robustness folders are not mistaken for runs
    g = graded_table(runs)
    assert set(g["family"]) == {"rotate", "crop"} and g["label"].nunique() == 1
    spec = json.loads(graded_figure(g[g.protocol == "isc2021"]).to_json())
    assert len(spec["data"]) == 2 and spec["data"][0]["type"] == "scatter"
    assert graded_example(g["run"].iloc[0], "crop", 1.0) is not None
    suites = find_attacks(runs)
    assert [s.name for s in suites] == ["fgsm-linf"]
    cur = attack_curves(suites, "isc2021")
    assert set(cur["kind"]) == {"white-box", "transfer"} and len(cur) == 6
    assert len(json.loads(attack_figure(cur).to_json())["data"]) == 2
    from imsim_lab.data.benchmark import load_benchmark

    ex = attack_examples(suites[0], cur["eval_label"].iloc[0], 16 / 255, load_benchmark(bench))
    assert len(ex) == 2
    for col in ("clean", "adversarial", "perturbation"):
        assert all(Path(p).is_file() for p in ex[col])
    assert ex["rank_before"].notna().all() and ex["top_after"].str.startswith("R").all()


@pytest.mark.slow
def test_pages_under_apptest(results, monkeypatch):
    from streamlit.testing.v1 import AppTest

    runs_dir, _ = results
    monkeypatch.setenv("IMSIM_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("views/adversarial.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert specs and specs[0]["layout"]["xaxis"]["title"]["text"] == "attack budget ε"
    assert len(at.image) >= 6  # 2 examples x (clean, adversarial, perturbation)
    at.switch_page("views/families.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    titles = [json.loads(c.proto.spec)["layout"].get("xaxis", {}).get("title", {}).get("text", "")
              for c in at.get("plotly_chart")]
    assert any(t.startswith("edit strength") for t in titles)
