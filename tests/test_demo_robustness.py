"""The demo's robustness phase: its findings point to the attack and graded pages, and it refuses to
run without its transfer target."""

import pytest

from imsim_lab.analysis.attacks import AttackConfig, SuiteConfig, run_attack_suite
from imsim_lab.analysis.report import discover_runs
from imsim_lab.analysis.report.guide import Finding, robustness_findings
from imsim_lab.analysis.robustness import GradedConfig, run_graded
from imsim_lab.errors import ImsimError
from support import FAST, make_runs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_robust")
    bench, a, b = make_runs(root)
    return root, bench, a, b


def test_findings_point_to_the_robustness_pages(results):
    root, bench, a, b = results
    runs, _ = discover_runs(root / "runs")
    assert robustness_findings(runs, "b") == []  # nothing run yet: nothing to point to
    run_graded(a, GradedConfig(families=("rotate", "crop"), strengths=(0.0, 1.0), sample=3), opts=FAST)
    run_attack_suite(a, SuiteConfig(AttackConfig("fgsm", "linf"), eps=(0.0, 16 / 255), sample=3, n_examples=1),
                     [b], opts=FAST)
    runs, _ = discover_runs(root / "runs")
    found = robustness_findings(runs, "bench-x")
    assert [f.page for f in found] == ["adversarial", "families"]
    adv, graded = found
    assert "white-box" in adv.text and "transfer" in adv.text and "clean:" in adv.text
    assert graded.params["gfam"] in ("rotate", "crop") and "weakest" in graded.text
    assert adv.url("http://h").startswith("http://h/adversarial?bench=bench-x")
    assert isinstance(graded, Finding) and graded.url("http://h").startswith("http://h/families?")


def test_phase_needs_its_target_run(tmp_path):
    from imsim_lab.cli.demo_robustness import robustness_phase

    (tmp_path / "runs").mkdir()
    with pytest.raises(ImsimError, match="needs the demo's sscd run"):
        robustness_phase(tmp_path / "bench", tmp_path / "runs", tmp_path, "sscd")
