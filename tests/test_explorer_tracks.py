"""The explorer's pages for two tracks, costs, the pair view, the audit and imported benchmarks,
under Streamlit's AppTest, on the demo's tiny runs plus a matching run made from them."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from support import app as support_app, make_matching_run


def app(monkeypatch, runs_dir, page, **params):
    return support_app(monkeypatch, runs_dir, page, timeout=180, **params)


def charts(at):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


@pytest.fixture(scope="module")
def two_tracks(demo_results, tmp_path_factory):
    runs, bench = demo_results
    res = tmp_path_factory.mktemp("two_tracks") / "runs"
    for m in ("sscd", "pdq", "sscd+sn"):
        shutil.copytree(runs / m, res / m, symlinks=True)
    make_matching_run(res / "sscd", res / "sift_verify")
    return res, bench


def test_leaderboard_tracks_costs_and_filter(monkeypatch, two_tracks):
    res, _ = two_tracks
    at = app(monkeypatch, res, "views/leaderboard.py")
    board = at.dataframe[0].value
    assert set(board["track"]) == {"descriptor", "matching"}
    row = board.set_index("label")
    assert row.loc["sscd", "dim"] == 512 and row.loc["sscd", "bytes_per_reference"] == 2048
    assert row.loc["pdq", "bytes_per_reference"] == 32
    assert row.loc["sift_verify", "seconds_per_query"] > row.loc["sscd", "seconds_per_query"]
    assert row.loc["sift_verify", "models"] == 2 and board["written_by"].str.startswith(("imsim-lab demo", "imsim-lab run")).all()
    only = app(monkeypatch, res, "views/leaderboard.py", track="matching")
    assert list(only.dataframe[0].value["label"]) == ["sift_verify"]


def test_cost_page_pareto(monkeypatch, two_tracks):
    res, _ = two_tracks
    at = app(monkeypatch, res, "views/costs.py")
    fig = charts(at)[0]
    assert fig["layout"]["xaxis"]["type"] == "log"
    names = [t.get("name") for t in fig["data"]]
    assert {"descriptor", "matching", "Pareto front"} <= set(names)
    table = at.dataframe[0].value
    assert table["on_front"].any() and "sift_verify" in set(table["label"])
    assert any("the work per query" in m.value for m in at.markdown)
    by_bytes = app(monkeypatch, res, "views/costs.py", cost_axis="bytes per reference")
    assert "bytes" in charts(by_bytes)[0]["layout"]["xaxis"]["title"]["text"]


def test_pair_view(monkeypatch, two_tracks):
    res, bench = two_tracks
    cands = pd.read_parquet(res / "sift_verify" / "candidates.parquet")
    truth = pd.read_csv(bench / "ground_truth.csv", keep_default_na=False)
    q = truth[truth["reference_id"] != ""].iloc[0]
    at = app(monkeypatch, res, "views/pairs.py", pq=q["query_id"])
    table = at.dataframe[0].value
    assert {"candidate_rank", "final_rank", "n_matches", "is_true"} <= set(table.columns)
    assert set(table["reference_id"]) == set(cands.loc[cands["query_id"] == q["query_id"], "reference_id"])
    if q["reference_id"] in set(table["reference_id"]):
        assert at.selectbox(key="pr").value == q["reference_id"]  # the true pair is shown first
        assert any("the true pair" in m.value for m in at.markdown)
    assert len(at.image) == 1 and any("sift matches passing the ratio test" in c.value for c in at.caption)
    assert list(at.dataframe[1].value["view"]) == ["whole", "left"]


def test_pair_view_without_matching_runs(monkeypatch, demo_results):
    runs, _ = demo_results
    at = app(monkeypatch, runs, "views/pairs.py")
    assert any("No matching-track run" in i.value for i in at.info)


def test_audit_page(monkeypatch, two_tracks):
    res, _ = two_tracks
    at = app(monkeypatch, res, "views/audit.py")
    labels = [m.label for m in at.metric]
    assert "precision vs planted siblings" in labels and "recall of planted siblings" in labels
    sus = at.dataframe[0].value
    assert {"kind", "image_a", "image_b", "n_matches", "planted"} <= set(sus.columns)
    assert sus["planted"].any()  # tiny plants siblings and the audit finds some of them
    assert any(b.label.startswith("Download the suspected pairs") for b in at.get("download_button"))


def test_imported_benchmark_pages_say_no_families(monkeypatch, tmp_path):
    """A benchmark imported with `bench import` has family 'unknown': the per-family page says so,
    the leaderboard and failure pages work."""
    from PIL import Image

    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.data.import_folder import import_folder
    from support import scored_predictions, write_run

    src = tmp_path / "mine"
    rng = np.random.default_rng(0)
    for split, names in (("queries", [f"Q{i:05d}" for i in range(6)]), ("references", [f"R{i:06d}" for i in range(4)])):
        for n in names:
            (src / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / split / f"{n}.jpg")
    (src / "ground_truth.csv").write_text("query_id,reference_id\n" + "".join(
        f"Q{i:05d},{f'R{i:06d}' if i < 3 else ''}\n" for i in range(6)))
    import_folder(src, tmp_path / "bench")
    bench = load_benchmark(tmp_path / "bench")
    write_run(tmp_path / "runs" / "m", bench, scored_predictions(bench, 2.0), "m")
    fam = app(monkeypatch, tmp_path / "runs", "views/families.py")
    assert any("records no transformation family" in i.value for i in fam.info)
    app(monkeypatch, tmp_path / "runs", "views/leaderboard.py")
    app(monkeypatch, tmp_path / "runs", "views/failures.py")
