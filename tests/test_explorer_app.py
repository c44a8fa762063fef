"""Every explorer page under Streamlit's AppTest, on a tiny benchmark and real runs made by the demo."""

import json

from support import app, make_mini_bench, scored_predictions, write_run

PAGES = ["views/leaderboard.py", "views/families.py", "views/failures.py", "views/compare.py", "views/browser.py",
         "views/submit.py"]
METHODS = ["pdq", "sscd", "sscd+sn"]




def frame(at, i=0):
    return at.dataframe[i].value


def charts(at):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_demo_made_real_runs(demo_results):
    runs, bench = demo_results
    assert sorted(p.name for p in runs.iterdir() if p.name != "uploads") == sorted(METHODS)  # browser test uploads
    for m in METHODS:
        cfg = json.loads((runs / m / "config.json").read_text())
        assert cfg["method"] == m and (runs / m / "per_query.parquet").is_file()
    # SSCD was extracted once: the post-processed run holds links to (or copies of) the same features
    a, b = runs / "sscd" / "features" / "query.npy", runs / "sscd+sn" / "features" / "query.npy"
    assert a.read_bytes() == b.read_bytes()


def test_leaderboard(monkeypatch, demo_results):
    runs, _ = demo_results
    at = app(monkeypatch, runs, PAGES[0])
    board = frame(at)
    assert sorted(board["label"]) == sorted(METHODS)
    assert (board["micro_ap_low"] <= board["µAP"] + 1e-9).all() and board["µAP"].between(0, 1).all()
    fig, pr = charts(at)
    assert fig["data"][0]["type"] == "scatter" and len(pr["data"]) == len(METHODS)
    dd = app(monkeypatch, runs, PAGES[0], protocol="drivendata", metric="R@1")
    assert any("R@1 is an isc2021 metric" in i.value for i in dd.info)
    assert frame(dd)["R@1"].isna().all()


def test_families_heatmap_cell_and_strength(monkeypatch, demo_results):
    runs, _ = demo_results
    at = app(monkeypatch, runs, PAGES[1])
    heat, strength = charts(at)[:2]
    assert heat["data"][0]["type"] == "heatmap" and heat["data"][1]["type"] == "scatter"
    assert heat["data"][0]["colorscale"][0][1] != heat["data"][0]["colorscale"][-1][1]  # cividis, not flat
    assert len(strength["data"]) == len(METHODS)
    # the examples of a cell chosen through the URL
    fam = at.selectbox(key="cell_family").options[0]
    at2 = app(monkeypatch, runs, PAGES[1], cell_run="sscd", cell_family=fam)
    assert at2.selectbox(key="cell_run").value == "sscd" and at2.selectbox(key="cell_family").value == fam
    assert any(f"sscd · {fam}" in m.value for m in at2.markdown) or any("no query with a match" in i.value
                                                                           for i in at2.info)


def test_families_definitions_intervals_and_grey(monkeypatch, demo_results):
    """The default heatmap is prevalence-matched (>= the restricted µAP in every cell), its hover
    carries the bootstrap interval and R@1, and a narrow width limit greys cells out."""
    runs, _ = demo_results

    def cells(at):
        heat = charts(at)[0]
        custom = heat["data"][1]["customdata"]
        return {(c[0], c[1]): c for c in custom}, heat["data"][1]["text"]

    prev = app(monkeypatch, runs, PAGES[1])
    assert prev.sidebar.radio(key="fdef").value == "prevalence"
    assert any("prevalence-matched" in m.value for m in prev.caption)
    restr = app(monkeypatch, runs, PAGES[1], fdef="restricted")
    cp, tp = cells(prev)
    cr, tr = cells(restr)
    assert cp.keys() == cr.keys()
    vals_p = [float(t) for t in tp if t != "no positive"]
    vals_r = [float(t) for t in tr if t != "no positive"]
    assert len(vals_p) == len(vals_r) > 0 and all(p >= r - 1e-9 for p, r in zip(vals_p, vals_r))
    assert sum(p > r + 1e-6 for p, r in zip(vals_p, vals_r)) > 0
    assert all(c[4].startswith("[") for c in cp.values() if c[2] > 0)  # interval on hover
    narrow = app(monkeypatch, runs, PAGES[1], fwidth="0.1")
    assert any("greyed" in c[6] for c in cells(narrow)[0].values())  # tiny: every interval is wide


def test_failures_filters_change_the_table(monkeypatch, demo_results):
    runs, _ = demo_results
    at = app(monkeypatch, runs, PAGES[2], run="pdq")
    all_rows = frame(at)
    assert len(all_rows) > 0 and len(at.image) >= 3
    fam = all_rows["family"].iloc[0]
    at2 = app(monkeypatch, runs, PAGES[2], run="pdq", fam=fam)
    sub = frame(at2)
    assert set(sub["family"]) == {fam} and len(sub) <= len(all_rows)
    fp = app(monkeypatch, runs, PAGES[2], run="pdq", view="Confident false positives")
    assert list(frame(fp).columns)[:4] == ["query_id", "family", "strength", "kind"]


def test_compare(monkeypatch, demo_results):
    runs, _ = demo_results
    at = app(monkeypatch, runs, PAGES[3], a="sscd", b="sscd+sn")
    assert charts(at)[0]["data"][0]["type"] == "bar"
    cmp = frame(at)
    assert {"family", "micro_ap_a", "micro_ap_b", "diff"} <= set(cmp.columns)
    same = app(monkeypatch, runs, PAGES[3], a="pdq", b="pdq")
    assert any("two different" in w.value for w in same.warning)


def test_browser_kinds(monkeypatch, demo_results):
    runs, _ = demo_results
    at = app(monkeypatch, runs, PAGES[4])
    q = frame(at)
    assert {"copy", "distractor"} <= set(q["kind"]) and len(at.image) >= 2
    only = app(monkeypatch, runs, PAGES[4], kind="copy")
    assert set(frame(only)["kind"]) == {"copy"}


def test_submit_page_and_empty_results(monkeypatch, demo_results, tmp_path):
    runs, _ = demo_results
    at = app(monkeypatch, runs, PAGES[5])
    assert at.selectbox(key="sbench").value and not at.error
    empty = tmp_path / "empty"
    empty.mkdir()
    for page in PAGES[:4]:
        e = app(monkeypatch, empty, page)
        assert any("No run folder" in i.value for i in e.info)
    missing = app(monkeypatch, tmp_path / "nope", PAGES[0])
    assert any("not found" in x.value for x in missing.error)


def test_synthetic_runs_and_broken_run(monkeypatch, tmp_path, mini_bench):
    """Pages on hand-made runs, one of them broken: the others are shown, the broken one named."""
    from imsim_lab.data.benchmark import load_benchmark

    bench = load_benchmark(mini_bench)
    res = tmp_path / "results"
    write_run(res / "a", bench, scored_predictions(bench, 3.0, 1), "sscd")
    write_run(res / "b", bench, scored_predictions(bench, 0.5, 2), "pdq")
    write_run(res / "c", bench, scored_predictions(bench, 1.0, 3), "gist")
    (res / "c" / "metrics.json").write_text("[]")
    at = app(monkeypatch, res, PAGES[0])
    assert sorted(frame(at)["label"]) == ["pdq", "sscd"]
    assert any("expected a JSON object" in w.value for w in at.warning)
    for page in PAGES[1:]:
        app(monkeypatch, res, page)


def test_demo_rerun_reuses_and_prints_phases(demo_results, capsys):
    from imsim_lab.cli import main

    runs, bench = demo_results
    out = runs.parent
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--methods", "pdq,sscd", "--no-serve",
                 "--no-robustness", "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "already built" in text and text.count("(reused)") == 3  # the benchmark and both runs
    for phase in ("1/3 benchmark", "2/3 runs", "3/3 findings", "demo ready in"):
        assert phase in text
    assert "what to look at first" in text and "Leaderboard: best" in text


def test_cli_errors(tmp_path, capsys):
    from imsim_lab.cli import main

    assert main(["explore", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["demo", "--preset", "tiny", "--out", str(tmp_path / "d"), "--methods", "nope", "--no-serve"]) == 2
    err = capsys.readouterr().err
    assert "unknown method(s) nope" in err and not (tmp_path / "d").exists()


def test_upload_bad_and_good_files(monkeypatch, tmp_path):
    """AppTest uploads: a bad file gives the reader's message; a good one is evaluated, saved as a run,
    and then listed on the leaderboard. Nothing is written outside the results folder."""
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.eval.formats import write_predictions

    # its own benchmark inside tmp_path (not the shared ``mini_bench``): the test checks that the upload
    # writes nothing outside the results folder, the benchmark folder included
    bench = load_benchmark(make_mini_bench(tmp_path / "bench"))
    res = tmp_path / "results"
    write_run(res / "a", bench, scored_predictions(bench, 3.0, 1), "sscd")
    before = {p for p in tmp_path.rglob("*") if "results" not in p.parts}
    at = app(monkeypatch, res, PAGES[5])
    at.file_uploader(key="upload").set_value(("bad.csv", b"query_id,reference_id,score\nQ00000,R000000,x\n",
                                              "text/csv"))
    at.run()
    assert not at.exception
    assert any("cannot be evaluated" in e.value and "non-numeric score" in e.value and "row 2" in e.value
               for e in at.error)
    at.file_uploader(key="upload").set_value(("notes.csv", b"hello\n", "text/csv"))
    at.run()
    assert any("not a submission" in e.value for e in at.error)
    good = tmp_path / "good.csv"
    write_predictions(good, scored_predictions(bench, 5.0, 7))
    at.file_uploader(key="upload").set_value(("team.csv", good.read_bytes(), "text/csv"))
    at.run()
    assert not at.error and any("evaluated against mini" in s.value for s in at.success)
    assert set(frame(at)["family"]) == {"rotate", "blur", "text"}
    at.button[0].click().run()
    assert any("Saved to" in s.value for s in at.success)
    assert (res / "uploads" / "team" / "metrics.json").is_file()
    good.unlink()
    after = {p for p in tmp_path.rglob("*") if "results" not in p.parts}
    assert after == before
    lb = app(monkeypatch, res, PAGES[0])
    assert sorted(frame(lb)["label"]) == ["sscd", "upload:team"]


def test_browser_shows_the_realism_report(monkeypatch, demo_results):
    import numpy as np

    from imsim_lab.analysis.realism import RealismReport, SetReport, cosine_stats, query_gap, write_realism

    runs, bench = demo_results
    at = app(monkeypatch, runs, PAGES[4])
    assert any("bench realism" in i.value for i in at.info)  # no report yet: how to make one
    x = np.eye(4, dtype=np.float32)
    s, g = cosine_stats(x), query_gap(x[:1], x, [0])
    rep = RealismReport("b", SetReport("b", 4, s, s, g), SetReport("photos", 4, s, s, g), g, 4, 1, 0, "sscd",
                        {"mean_cos": 0.08, "median_max_cos": 0.3}, ("A plain-words verdict.",), True)
    path = write_realism(bench, rep)
    try:
        at = app(monkeypatch, runs, PAGES[4])
        assert any("plain-words verdict" in m.value for m in at.success)
        tables = [d.value for d in at.dataframe]
        assert any("median_max_cos" in t.columns for t in tables) and any("hardest_negative" in t.columns for t in tables)
    finally:
        path.unlink()
