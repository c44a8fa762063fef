"""Backend of the explorer without Streamlit: discovery, leaderboard and ties, per-family and
per-strength tables, comparisons, failure cases, benchmark browser, guide."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from imsim_lab.data.benchmark import load_benchmark
from imsim_lab.errors import FormatError, ImsimError
from imsim_lab.eval.formats import Predictions
from imsim_lab.eval.metrics import evaluate
from imsim_lab.analysis.report import (compare_families, discover_runs, family_table, found_by_one, leaderboard,
                              load_per_query, load_run_data, resolve_benchmark, runs_table, strength_table,
                              tie_ranks)
from imsim_lab.analysis.report.browse import query_kinds, reference_siblings, sibling_groups
from imsim_lab.analysis.report.failures import (confident_false_positives, filter_queries, missed_matches, paginate,
                                       recipe_text)
from imsim_lab.analysis.report.guide import first_look
from imsim_lab.analysis.report.runs import find_benchmarks
from imsim_lab.analysis.report.tables import cell_queries
from support import scored_predictions, write_run


@pytest.fixture(scope="module")
def world(tmp_path_factory, mini_bench):
    root = tmp_path_factory.mktemp("world")
    bench = load_benchmark(mini_bench)
    res = root / "results"
    write_run(res / "good", bench, scored_predictions(bench, 3.0, seed=1), "sscd")
    write_run(res / "deep" / "nested" / "better", bench, scored_predictions(bench, 6.0, seed=2), "sscd+sn")
    write_run(res / "bad", bench, scored_predictions(bench, 0.0, seed=3), "pdq")
    return root, bench, res


def test_discovery_labels_problems_and_table(world, tmp_path):
    root, bench, res = world
    runs, problems = discover_runs(res)
    assert sorted(r.label for r in runs) == ["pdq", "sscd", "sscd+sn"] and problems == []
    assert {r.run_id for r in runs} == {"good", "bad", "deep/nested/better"}
    t = runs_table(runs)
    assert len(t) == 3 and t["isc2021.micro_ap"].between(0, 1).all()
    # a broken run is reported, the others stay; two runs of one method get distinct labels
    other = tmp_path / "r"
    shutil.copytree(res, other)
    (other / "bad" / "metrics.json").write_text("{not json")
    shutil.copytree(other / "good", other / "again")
    runs, problems = discover_runs(other)
    assert len(problems) == 1 and "bad" in problems[0].path and "JSON" in problems[0].problem
    assert sorted(r.label for r in runs) == ["sscd [again]", "sscd [good]", "sscd+sn"]
    with pytest.raises(ImsimError, match="not a folder"):
        discover_runs(tmp_path / "missing")


def test_per_query_errors_and_benchmark_resolution(world, tmp_path):
    root, bench, res = world
    runs, _ = discover_runs(res)
    assert resolve_benchmark(runs[0]) == bench.root
    # the benchmark moved next to the results: found again by its manifest checksum
    moved = tmp_path / "moved"
    shutil.copytree(bench.root, moved / "bench")
    shutil.copytree(res / "good", moved / "runs" / "good")
    cfg = json.loads((moved / "runs" / "good" / "config.json").read_text())
    cfg["benchmark"]["root"] = str(tmp_path / "gone")
    (moved / "runs" / "good" / "config.json").write_text(json.dumps(cfg))
    (r,), _ = discover_runs(moved / "runs")
    assert resolve_benchmark(r, [moved]) == moved / "bench"
    assert find_benchmarks(moved) == [moved / "bench"]
    (moved / "runs" / "good" / "per_query.parquet").write_bytes(b"garbage")
    with pytest.raises(FormatError, match="per_query.parquet"):
        load_per_query(r)
    (moved / "runs" / "good" / "per_query.parquet").unlink()
    with pytest.raises(FormatError, match="file not found"):
        load_run_data(r)


def test_leaderboard_points_intervals_and_ties(world):
    root, bench, res = world
    runs, _ = discover_runs(res)
    rds = [load_run_data(r, bench.gt) for r in runs]
    for protocol in ("isc2021", "drivendata"):
        lb = leaderboard(rds, protocol, n_boot=300, seed=0)
        assert list(lb["label"]) == ["sscd+sn", "sscd", "pdq"]
        for _, row in lb.iterrows():
            info = next(r for r in runs if r.label == row["label"])
            assert row["micro_ap"] == pytest.approx(info.metric(protocol, "micro_ap"))
            assert row["micro_ap_low"] <= row["micro_ap"] + 1e-9 <= row["micro_ap_high"] + 2e-9
        assert lb["rank"].tolist() == [1, 2, 3]
        # pdq (random scores) is significantly worse than both others
        assert lb.set_index("label").loc["pdq", "tie_rank"] == 3
        assert lb.set_index("label").loc["sscd+sn", "tied_with_best"]
    assert math.isnan(leaderboard(rds, "drivendata", n_boot=50)["recall_at_rank1_low"][0])
    # seeded: identical again
    a = leaderboard(rds, n_boot=100, seed=4)
    b = leaderboard(rds, n_boot=100, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert leaderboard([], "isc2021").empty


def test_tie_ranks_by_hand():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.01, 400)
    reps = np.vstack([base + 0.1, base + 0.1 + rng.normal(0, 0.001, 400), base])
    assert tie_ranks(np.array([0.6, 0.6, 0.5]), reps).tolist() == [1, 1, 3]
    same = np.vstack([base, base])
    assert tie_ranks(np.array([0.5, 0.5]), same).tolist() == [1, 1]


def test_family_and_strength_tables_equal_evaluate(world):
    root, bench, res = world
    runs, _ = discover_runs(res)
    rds = [load_run_data(r, bench.gt) for r in runs]
    ft = family_table(rds, "isc2021")
    assert set(ft["family"]) == {"rotate", "blur", "text"} and (ft["n_positives"] == 3).all()
    for rd in rds:
        preds = Predictions(*(np.asarray(x) for x in _csv(rd)))
        for fam in ("rotate", "blur", "text"):
            qs = rd.per_query.loc[rd.per_query["family"] == fam, "query_id"]
            m = evaluate(bench.gt, preds, "isc2021", queries=qs)
            got = ft[(ft["label"] == rd.label) & (ft["family"] == fam)].iloc[0]
            assert got["micro_ap"] == pytest.approx(m.micro_ap, abs=1e-9)
    st = strength_table(rds, "isc2021", n_bins=3)
    assert len(st) == 9 and st.groupby("label")["n_positives"].sum().eq(9).all()
    only = strength_table(rds, "isc2021", n_bins=3, families=["blur"])
    assert only.groupby("label")["n_positives"].sum().eq(3).all()
    cells = cell_queries(rds[0], "blur")
    assert set(cells["family"]) == {"blur"} and cells["has_match"].all() and len(cells) == 3


def _csv(rd):
    from imsim_lab.eval.formats import read_predictions

    p = read_predictions(rd.info.path / "predictions.csv")
    return p.query_ids, p.reference_ids, p.scores


def test_compare_and_found_by_one(world):
    root, bench, res = world
    runs, _ = discover_runs(res)
    rd = {r.label: load_run_data(r, bench.gt) for r in runs}
    cmp = compare_families(rd["pdq"], rd["sscd+sn"])
    assert len(cmp) == 3 and (cmp["diff"] == cmp["micro_ap_b"] - cmp["micro_ap_a"]).all()
    assert cmp["diff"].is_monotonic_decreasing
    fb = found_by_one(rd["pdq"], rd["sscd+sn"])
    ra = rd["pdq"].per_query.set_index("query_id")["true_rank"]
    rb = rd["sscd+sn"].per_query.set_index("query_id")["true_rank"]
    for _, r in fb.iterrows():
        assert (ra[r["query_id"]] == 0) != (rb[r["query_id"]] == 0)
        assert r["winner"] == ("pdq" if ra[r["query_id"]] == 0 else "sscd+sn")
    n_expected = int(((ra == 0) != (rb == 0))[rd["pdq"].per_query.set_index("query_id")["has_match"]].sum())
    assert len(fb) == n_expected


def _pq():
    return pd.DataFrame({
        "query_id": ["Q00000", "Q00001", "Q00002", "Q00003", "Q00004", "Q00005"],
        "family": ["blur", "blur", "text", "text", "blur", "text"],
        "strength": [0.1, 0.5, 0.9, 0.2, 0.3, 0.7],
        "has_match": [True, True, True, False, False, True],
        "reference_id": ["R000000", "R000001", "R000002", "", "", "R000005"],
        "true_rank": [0, 3, -1, -1, -1, 0],
        "true_score": [0.9, 0.4, np.nan, np.nan, np.nan, 0.55],
        "top_reference_id": ["R000000", "R000007", "R000009", "R000004", "R000001", "R000005"],
        "top_score": [0.9, 0.8, 0.7, 0.95, 0.5, 0.55],
    })


def test_missed_matches_and_false_positives_by_hand():
    pq = _pq()
    m = missed_matches(pq)
    assert m["query_id"].tolist() == ["Q00002", "Q00001"]  # not retrieved first, then by margin
    assert m.loc[1, "margin"] == pytest.approx(0.4) and m.loc[0, "reason"] == "true reference not retrieved"
    t = missed_matches(pq, threshold=0.6, criterion="threshold")
    assert t["query_id"].tolist() == ["Q00002", "Q00001", "Q00005"]
    assert t.loc[2, "reason"] == "ranked first but below the threshold"
    sib = missed_matches(pq, groups={"R000001": "g", "R000007": "g"})
    assert sib.set_index("query_id").loc["Q00001", "retrieved_sibling"]
    with pytest.raises(ValueError):
        missed_matches(pq, criterion="nope")
    fp = confident_false_positives(pq, threshold=0.75)
    assert fp["query_id"].tolist() == ["Q00003", "Q00001"]
    assert fp["kind"].tolist() == ["no-match query", "wrong reference"]
    assert fp.loc[0, "excess"] == pytest.approx(0.2)
    assert confident_false_positives(pq, 0.75, include_wrong_reference=False)["query_id"].tolist() == ["Q00003"]
    everything = confident_false_positives(pq, None)
    assert everything["query_id"].tolist() == ["Q00003", "Q00001", "Q00002", "Q00004"]
    withsrc = pq.assign(source_id=["", "", "", "H000000", "", ""])
    fps = confident_false_positives(withsrc, 0.75, groups={"H000000": "g1", "R000004": "g1"})
    assert fps.set_index("query_id").loc["Q00003", "retrieved_sibling"]


def test_filters_pages_and_recipes():
    pq = _pq()
    assert filter_queries(pq, ["text"], (0.0, 0.75))["query_id"].tolist() == ["Q00003", "Q00005"]
    assert len(filter_queries(pq)) == 6
    part, n = paginate(pq, 2, 4)
    assert n == 2 and part["query_id"].tolist() == ["Q00004", "Q00005"]
    assert paginate(pq, 99, 4)[0]["query_id"].tolist() == ["Q00004", "Q00005"]
    assert paginate(pq.iloc[:0], 1, 4)[1] == 1
    assert recipe_text('[{"name":"rotate","params":{"angle":12.345}},{"name":"jpeg","params":{"quality":40}}]') \
        == "rotate(angle=12.3) → jpeg(quality=40)"
    assert recipe_text("[]") == "(no edit)" and recipe_text("oops") == "oops"


def test_browser_tables(world):
    root, bench, res = world
    k = query_kinds(bench)
    assert (k.loc[k["query_id"] == "Q00000", "kind"] == "copy").all()
    sib = k[k["query_id"] == "Q00009"].iloc[0]
    assert sib["kind"] == "sibling (no match)" and sib["sibling_of"] == "R000001"
    assert (k.loc[k["query_id"] == "Q00010", "kind"] == "distractor").all()
    assert k.loc[0, "recipe"].startswith("rotate(amount=")
    assert sibling_groups(bench) == {"R000001": "g1", "H000000": "g1"}
    rs = reference_siblings(bench)
    assert rs["reference_id"].tolist() == ["R000001"] and rs.loc[0, "members"] == "H000000, R000001"


def test_first_look_links(world):
    root, bench, res = world
    f = first_look(res, n_boot=50)
    assert f[0].page == "leaderboard" and "sscd+sn" in f[0].text
    fam = [x for x in f if x.page == "families"]
    assert fam and fam[0].params["cell_run"] == "sscd+sn"
    assert fam[0].url("http://127.0.0.1:8501").startswith("http://127.0.0.1:8501/families?bench=mini")
    cmp = [x for x in f if x.page == "compare"]
    assert cmp and cmp[0].params == {"bench": "mini", "protocol": "isc2021", "a": "sscd", "b": "sscd+sn"}
