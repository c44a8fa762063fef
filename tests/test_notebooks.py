"""The teaching notebooks: committed without outputs, in sync with their py:percent pair, one
shape, and every notebook runs end to end with ``profile="smoke"`` (papermill, tiny benchmark)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
jupytext = pytest.importorskip("jupytext")


def _ids(paths):
    return [p.stem for p in paths]


def test_there_are_numbered_notebooks():
    # the lessons are numbered by the plan (01-03 foundation, 04-09 one per method), so a number may
    # be missing while its lesson is written; each number is used once and 01-03 exist
    numbers = [p.stem[:2] for p in NOTEBOOKS]
    assert all(n.isdigit() for n in numbers) and len(set(numbers)) == len(numbers)
    assert numbers[:3] == ["01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: cell {i} has outputs; clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_paired_script_is_in_sync(path):
    script = path.with_suffix(".py")
    assert script.is_file(), f"{path.name} has no py:percent pair {script.name}"
    a, b = jupytext.read(path), jupytext.read(script)
    assert "py:percent" in a.metadata.get("jupytext", {}).get("formats", ""), f"{path.name} is not paired"
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert cells(a) == cells(b), f"{path.name} and {script.name} differ: run `jupytext --sync {script}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_notebook_has_the_lesson_shape(path):
    nb = jupytext.read(path)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'profile = "smoke"' in params[0].source and "results_dir" in params[0].source
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("What you will learn", "## The data", "paper", "## Exercises"):
        assert heading.lower() in text.lower(), f"{path.name}: no section {heading!r}"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "run_dir(" in code, f"{path.name} must write a run folder for the explorer"
    assert "os.chdir" not in code and "Path.cwd" not in code and '"results/' not in code


def test_readme_lists_every_notebook():
    readme = (NB_DIR / "README.md").read_text()
    for p in NOTEBOOKS:
        assert p.stem in readme, f"notebooks/README.md does not list {p.stem}"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_with_the_smoke_profile(path, results, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters={"profile": "smoke", "results_dir": str(results)},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    runs = [p.parent for p in (results / "notebooks" / path.stem / "smoke").rglob("metrics.json")]
    assert runs, f"{path.name} wrote no run folder"
    for run in runs:
        assert (run / "config.json").is_file() and (run / "per_query.parquet").is_file()
        m = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= m["isc2021"]["micro_ap"] <= 1.0
    assert not list(tmp_path.glob("results")), "a notebook wrote into its working directory"
