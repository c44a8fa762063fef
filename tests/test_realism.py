"""Realism statistics on hand-made descriptors (exact values), the report file, and the CLI on tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imsim_lab.analysis.realism import (RealismError, RealismReport, cosine_stats, judge, load_realism, query_gap,
                               sampled_cosine_stats, write_realism)


def _unit(*rows):
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# four unit vectors with known pairwise cosines: e1, e2, e3 and (e1 + e2)/sqrt(2)
X4 = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0])
R = 1 / np.sqrt(2)


def test_cosine_stats_exact():
    s = cosine_stats(X4)
    # pairs: (0,1)=0 (0,2)=0 (0,3)=r (1,2)=0 (1,3)=r (2,3)=0 -> mean 2r/6
    assert s.n == 4 and s.draws == 1
    assert s.mean_cos == pytest.approx(round(2 * R / 6, 4))
    # row max: r, r, 0, r -> median r, p90 r
    assert s.median_max_cos == pytest.approx(round(R, 4))
    assert s.p90_max_cos == pytest.approx(round(R, 4))


def test_groups_are_not_distinct_originals():
    # rows 0 and 3 in one group: their cosine r no longer counts
    s = cosine_stats(X4, groups=["g", "", "", "g"])
    # remaining pairs: (0,1)=0 (0,2)=0 (1,2)=0 (1,3)=r (2,3)=0 -> mean r/5; row max 0, r, 0, r
    assert s.mean_cos == pytest.approx(round(R / 5, 4))
    assert s.median_max_cos == pytest.approx(round(R / 2, 4))
    dup = _unit([1, 0], [1, 0], [0, 1])
    assert cosine_stats(dup).median_max_cos == pytest.approx(1.0)
    assert cosine_stats(dup, groups=["a", "a", ""]).median_max_cos == pytest.approx(0.0)


def test_per_group_breakdown_and_bad_input():
    s = cosine_stats(X4, labels=["a", "a", "b", "b"])
    assert s.per_group["a"]["n"] == 2 and s.per_group["b"]["median_max_cos"] == pytest.approx(round(R / 2, 4))
    with pytest.raises(ValueError):
        cosine_stats(X4[:1])
    with pytest.raises(ValueError):
        cosine_stats(X4, groups=["a"])
    with pytest.raises(ValueError):
        cosine_stats(_unit([1, 0], [1, 0]), groups=["a", "a"])  # no distinct pair left


def test_sampled_stats():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    full = cosine_stats(x)
    assert sampled_cosine_stats(x, 40).median_max_cos == full.median_max_cos  # whole set once
    s = sampled_cosine_stats(x, 10, draws=50, seed=3)
    assert s.n == 10 and s.draws == 50
    assert s.median_max_cos < full.median_max_cos  # the max over fewer originals is smaller
    lo, hi = s.spread["median_max_cos"]
    assert lo <= s.median_max_cos <= hi
    assert sampled_cosine_stats(x, 10, draws=50, seed=3) == s  # seeded
    # brute force one draw
    one = sampled_cosine_stats(x, 5, draws=1, seed=1)
    idx = np.sort(np.random.default_rng([1, 0x5A3]).choice(40, size=5, replace=False))
    assert one.mean_cos == cosine_stats(x[idx]).mean_cos
    with pytest.raises(ValueError):
        sampled_cosine_stats(x, 1)


def test_query_gap_exact():
    xb = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    xq = _unit([1, 0.5, 0], [0.2, 0, 1])  # query 0 -> ref 0, query 1 -> ref 2
    g = query_gap(xq, xb, [0, 2], families=["crop", "blur"])
    p0, n0 = 1 / np.sqrt(1.25), 0.5 / np.sqrt(1.25)
    p1, n1 = 1 / np.sqrt(1.04), 0.2 / np.sqrt(1.04)
    assert g.n_queries == 2 and g.n_references == 3 and g.top1 == 1.0
    assert g.positive == pytest.approx(round((p0 + p1) / 2, 4), abs=1e-4)
    assert g.hardest_negative == pytest.approx(round((n0 + n1) / 2, 4), abs=1e-4)
    assert g.gap == pytest.approx(round(((p0 - n0) + (p1 - n1)) / 2, 4), abs=1e-4)
    assert g.per_family["crop"]["gap"] == pytest.approx(round(p0 - n0, 4), abs=1e-4)
    # a wrong top-1 and an excluded distractor
    g2 = query_gap(xq, xb, [1, 2])
    assert g2.top1 == 0.5
    excl = np.zeros((2, 3), bool)
    excl[0, 0] = True  # ref 0 is a sibling of query 0's reference: not a distractor
    assert query_gap(xq, xb, [1, 2], exclude=excl).per_family == {}
    assert query_gap(xq, xb, [1, 2], exclude=excl).top1 == 1.0
    one = query_gap(xq, xb, [0, 2], n_distractors=1, seed=0)
    assert one.hardest_negative <= g.hardest_negative
    with pytest.raises(ValueError):
        query_gap(xq, xb, [0, 3])
    with pytest.raises(ValueError):
        query_gap(xq[:0], xb, [])


def test_judge_words():
    good = cosine_stats(_unit([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    ok, lines = judge(good)
    assert ok and "within the target" in " ".join(lines)
    bad = cosine_stats(X4)
    xb = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    hard_gap = query_gap(_unit([1, 0.9, 0]), xb, [0])
    ok, lines = judge(bad, good, hard_gap)
    text = " ".join(lines)
    assert not ok and "above the target" in text and "exaggerated" in text and "--source" in text


def test_report_roundtrip_and_bad_file(tmp_path):
    from imsim_lab.analysis.realism import SetReport

    s = cosine_stats(X4)
    g = query_gap(_unit([1, 0.5, 0]), X4[:3], [0])
    rep = RealismReport("b", SetReport("b", 4, s, s, g), SetReport("photos", 4, s, s, None), g, 4, 1, 0,
                        "sscd", {"mean_cos": 0.08, "median_max_cos": 0.3}, ("line",), False)
    assert load_realism(tmp_path) is None
    write_realism(tmp_path, rep)
    assert load_realism(tmp_path) == rep
    assert json.loads((tmp_path / "realism.json").read_text())["bench"]["gap"]["n_queries"] == 1
    (tmp_path / "realism.json").write_text("{not json")
    with pytest.raises(RealismError, match="realism.json"):
        load_realism(tmp_path)


def test_report_tables():
    from imsim_lab.analysis.realism import SetReport, report_tables

    s = cosine_stats(X4)
    g = query_gap(_unit([1, 0.5, 0]), X4[:3], [0])
    rep = RealismReport("b", SetReport("b", 4, s, s, g), SetReport("photos", 4, s, s, None), None, 4, 1, 0,
                        "sscd", {"mean_cos": 0.08, "median_max_cos": 0.3}, ("line",), False)
    sim, gap = report_tables(rep)
    assert sim["set"].tolist() == ["b: samples of 4", "photos: samples of 4", "b: all 4 references",
                                   "target (issue 8, on samples)"]
    assert sim["mean_cos"].tolist()[:3] == [s.mean_cos] * 3 and sim["median_max_cos"].iloc[3] == 0.3
    # only the gaps that were measured are listed
    assert gap["set"].tolist() == ["b: among all references"]
    assert gap["gap"].iloc[0] == g.gap and gap["queries"].iloc[0] == 1


@pytest.mark.slow
def test_cli_realism_on_tiny(tiny_bench_copy, tmp_path, capsys):
    tiny = tiny_bench_copy  # a copy: the command writes realism.json into the benchmark folder
    from PIL import Image

    from imsim_lab.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (64 + 8 * i, 80, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    assert main(["bench", "realism", str(tiny), "--against", str(folder), "--draws", "3",
                 "--max-references", "20"]) == 0
    out = capsys.readouterr().out
    assert "median max" in out and "verdict:" in out and "realism.json" in out
    rep = load_realism(tiny)
    assert rep.sample_size == 5 and rep.against.n_images == 5  # the broken file is skipped
    assert rep.bench.n_images == 20 and rep.bench.gap.n_queries == 12
    assert rep.bench_gap_sampled.n_queries == 12 and rep.against.gap.n_queries == 5
    assert 0 <= rep.bench.sampled.mean_cos <= 1 and rep.bench.gap.positive > rep.bench.gap.hardest_negative - 1
    with pytest.raises(SystemExit):
        main(["bench", "realism"])
