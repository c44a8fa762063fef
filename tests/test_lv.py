"""D2LV's local verification (``imsim_lab.features.lvscore``, the ``lv`` matcher, ``sscd+lv``): the views,
the -0.05 rule, the small-crop filter, the vote, the global budget, both directions, the run end to
end on the tiny benchmark, and bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from imsim_lab.cli import main
from imsim_lab.features.lvscore import LVConfig, budget_mask, query_family, verify, view_pairs, vote_rule
from imsim_lab.features.views import View, apply_view, make_views
from imsim_lab.features.viewstore import make_plan
from imsim_lab.methods import MatchContext, create_matcher, get_method
from imsim_lab.methods.lv import FIXED_FAMILIES, UNVERIFIED
from imsim_lab.runfolder import read_candidates, read_config

#: SSCD at a short side of 96: the same code path, about 9 times cheaper than 288 (the tests' budget)
FAST = {"sscd": {"short_side": 96}}


def table(rows):
    """A view table from rows (parent, view name, (w, h) of the view)."""
    return SimpleNamespace(parent_ids=np.array([r[0] for r in rows]), view_names=np.array([r[1] for r in rows]),
                           sizes=np.array([r[2] for r in rows]).reshape(-1, 2),
                           boxes=np.tile([0.0, 0.0, 1.0, 1.0], (len(rows), 1)))


def unit(cos: float, d: int = 4) -> np.ndarray:
    """A unit vector whose inner product with e0 is ``cos``."""
    v = np.zeros(d, np.float32)
    v[0], v[1] = cos, np.sqrt(max(0.0, 1 - cos * cos))
    return v


E0 = unit(1.0)


# -- views ------------------------------------------------------------------------------------------


def test_query_and_reference_view_geometry():
    fam = {f: [v.name for v in make()] for f, make in FIXED_FAMILIES.items()}
    assert fam == {"rotations": ["rot90", "rot180", "rot270"], "center": ["center"],
                   "halves": ["half_00", "half_01", "half_10", "half_11"]}
    halves = {v.name: v.box for v in FIXED_FAMILIES["halves"]()}
    assert halves["half_00"] == pytest.approx((1 / 12, 1 / 12, 7 / 12, 7 / 12))
    assert halves["half_11"] == pytest.approx((5 / 12, 5 / 12, 11 / 12, 11 / 12))
    ref = make_views("d2lv_reference", (300, 200))
    assert len(ref) == 19 and ref[0].is_whole and len({v.name for v in ref}) == 19
    # a rotated view swaps the sides; a crop keeps its box
    from PIL import Image

    img = Image.fromarray(np.arange(200 * 300 * 3, dtype=np.uint8).reshape(200, 300, 3))
    assert apply_view(img, View("rot90", rotation=90)).size == (200, 300)
    assert apply_view(img, FIXED_FAMILIES["center"]()[0]).size == (150, 100)
    assert [query_family(n) for n in ("whole", "rot90", "center", "half_01", "det0", "oracle")] == [
        "whole", "rotations", "center", "halves", "detector", "oracle"]


def test_views_below_min_side_are_skipped_and_counted_not_upsampled():
    views = [View("whole"), *FIXED_FAMILIES["halves"](), *FIXED_FAMILIES["center"]()]
    plan = make_plan(["Q0", "Q1"], np.array([[400, 300], [60, 50]]), lambda pid, size: views, min_side=32)
    # Q1's halves and centre (30 x 25 pixels) are below 32: not made, counted by view name
    assert plan.skipped == {"half_00": 1, "half_01": 1, "half_10": 1, "half_11": 1, "center": 1}
    assert sorted(plan.view_names[plan.parent_ids == "Q1"].tolist()) == ["whole"]
    assert len(plan) == 6 + 1


# -- scoring rules ----------------------------------------------------------------------------------


def _one_pair(cosines: dict, sizes: dict | None = None, **cfg):
    """One candidate pair (Q0, R0): query views named in ``cosines`` with those inner products against
    the whole reference (one backbone)."""
    names = ["whole", *[n for n in cosines if n != "whole"]]
    qt = table([("Q0", n, (sizes or {}).get(n, (200, 200))) for n in names])
    rt = table([("R0", "whole", (200, 200))])
    xq = np.stack([unit(cosines[n]) for n in names])
    return verify(["Q0"], ["R0"], qt, rt, [xq], [E0[None]], LVConfig(directions=("aq_or",), **cfg))


def test_non_original_query_views_lose_005_and_the_max_is_taken():
    v = _one_pair({"whole": 0.80, "rot90": 0.84})           # 0.84 - 0.05 = 0.79 < 0.80: the whole query wins
    assert v.scores[0] == pytest.approx(0.80, abs=1e-6) and v.direction[0] == "whole"
    v = _one_pair({"whole": 0.80, "rot90": 0.90})
    assert v.scores[0] == pytest.approx(0.85, abs=1e-6) and v.direction[0] == "aq_or"
    assert v.family["rotations"][0] == pytest.approx(0.85, abs=1e-6)
    assert v.family["whole"][0] == pytest.approx(0.80, abs=1e-6)
    v = _one_pair({"whole": 0.80, "det0": 0.82, "oracle": 0.83})  # overlay boxes keep their score
    assert v.scores[0] == pytest.approx(0.83, abs=1e-6)
    v = _one_pair({"whole": 0.80, "rot90": 0.90}, offset=0.0)
    assert v.scores[0] == pytest.approx(0.90, abs=1e-6)


def test_small_crop_filter_drops_small_query_views():
    sizes = {"center": (90, 120)}
    v = _one_pair({"whole": 0.5, "center": 0.99}, sizes, min_query_side=100)
    assert v.scores[0] == pytest.approx(0.5, abs=1e-6) and v.counts["small_query_views_dropped"] == 1
    v = _one_pair({"whole": 0.5, "center": 0.99}, sizes, min_query_side=90)
    assert v.scores[0] == pytest.approx(0.94, abs=1e-6) and v.counts["small_query_views_dropped"] == 0


def test_vote_keeps_view_pairs_that_enough_backbones_predict():
    # two candidate pairs of one query; with a budget of 1 view pair per backbone, backbones 0 and 1
    # predict (Q0, R0) and backbone 2 predicts (Q0, R1)
    qt = table([("Q0", "whole", (200, 200))])
    rt = table([("R0", "whole", (200, 200)), ("R1", "whole", (200, 200))])
    xq = [E0[None]] * 3
    xr = [np.stack([unit(0.9), unit(0.5)]), np.stack([unit(0.8), unit(0.6)]), np.stack([unit(0.4), unit(0.7)])]
    pairs = (["Q0", "Q0"], ["R0", "R1"])
    cfg = dict(directions=("aq_or",), budget=1)
    v = verify(*pairs, qt, rt, xq, xr, LVConfig(vote_k=2, **cfg))
    assert v.scores[0] == pytest.approx(0.9, abs=1e-6) and np.isnan(v.scores[1]) and v.n_agree[0] == 2
    v = verify(*pairs, qt, rt, xq, xr, LVConfig(vote_k=3, **cfg))
    assert np.isnan(v.scores).all()
    v = verify(*pairs, qt, rt, xq, xr, LVConfig(vote_k=1, **cfg))   # union: max of the predicting backbones
    assert v.scores == pytest.approx([0.9, 0.7], abs=1e-6)
    v = verify(*pairs, qt, rt, xq[2:], xr[2:], LVConfig(vote_k=2, **cfg))  # one backbone: the vote is off
    assert np.isnan(v.scores[0]) and v.scores[1] == pytest.approx(0.7, abs=1e-6)
    assert vote_rule(2, 1).startswith("off") and vote_rule(2, 2).startswith("2 of 2") and vote_rule(2, 3).startswith(
        "2 of 3")


def test_budget_keeps_the_best_view_pairs_over_all_queries():
    s = np.array([0.1, np.nan, 0.9, 0.5, 0.5])
    assert budget_mask(s, 2).tolist() == [False, False, True, True, False]
    assert budget_mask(s, None).tolist() == [True, False, True, True, True]


def test_view_pairs_of_both_directions_equal_a_loop():
    qt = table([("Q0", "whole", (9, 9)), ("Q0", "rot90", (9, 9)), ("Q1", "whole", (9, 9)), ("Q1", "center", (9, 9))])
    rt = table([("R0", "whole", (9, 9)), ("R0", "g2_0_0", (9, 9)), ("R1", "g2_0_1", (9, 9)), ("R1", "whole", (9, 9))])
    q, r = np.array(["Q0", "Q1", "Q1", "Q2"]), np.array(["R1", "R0", "R1", "R0"])  # Q2 has no views
    for d in ("aq_or", "oq_ar"):
        pair, qr, rr = view_pairs(q, r, qt, rt, d)
        want = set()
        for i in range(len(q)):
            for a in range(4):
                for b in range(4):
                    if qt.parent_ids[a] == q[i] and rt.parent_ids[b] == r[i]:
                        whole_side = rt.view_names[b] if d == "aq_or" else qt.view_names[a]
                        if whole_side == "whole":
                            want.add((i, a, b))
        assert set(zip(pair.tolist(), qr.tolist(), rr.tolist())) == want


def test_both_directions_each_find_what_the_other_misses():
    # Q0 is a crop of R0 (its centre matches the whole R0); R1 holds Q1 in a corner (a split matches Q1)
    qt = table([("Q0", "whole", (200, 200)), ("Q0", "center", (150, 150)), ("Q1", "whole", (200, 200)),
                ("Q1", "center", (150, 150))])
    rt = table([("R0", "whole", (200, 200)), ("R0", "g2_0_0", (150, 150)), ("R1", "whole", (200, 200)),
                ("R1", "g2_0_0", (150, 150))])
    e = np.eye(4, dtype=np.float32)
    xq = np.stack([e[1], e[0], e[3], e[2]])   # Q0's centre is R0; the whole Q1 is R1's corner
    xr = np.stack([e[0], e[2], e[1], e[3]])
    q, r = ["Q0", "Q1"], ["R0", "R1"]
    both = verify(q, r, qt, rt, [xq], [xr], LVConfig(vote_k=1))
    aq = verify(q, r, qt, rt, [xq], [xr], LVConfig(directions=("aq_or",), vote_k=1))
    oq = verify(q, r, qt, rt, [xq], [xr], LVConfig(directions=("oq_ar",), vote_k=1))
    assert both.direction.tolist() == ["aq_or", "oq_ar"]
    assert both.scores == pytest.approx([0.95, 1.0], abs=1e-5)
    assert aq.scores[0] == pytest.approx(0.95, abs=1e-5) and aq.scores[1] < 0.5
    assert oq.scores[1] == pytest.approx(1.0, abs=1e-5) and oq.scores[0] < 0.5
    assert both.family["reference_splits"][1] == pytest.approx(1.0, abs=1e-5)


# -- the matcher, end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cand_run(tiny_bench, tmp_path_factory):
    """One SSCD run on tiny, the candidate source of every run of this file."""
    out = tmp_path_factory.mktemp("lv") / "sscd"
    assert main(["run", "sscd", "--bench", str(tiny_bench), "--out", str(out), "--workers", "0"]) == 0
    return out


def _run(bench, out, cand, *params):
    argv = ["run", "sscd+lv", "--bench", str(bench), "--out", str(out), "--workers", "0", "--candidates", str(cand),
            "-p", "candidates.k=3", "-p", f"backbone_args={json.dumps(FAST)}"]
    for p in params:
        argv += ["-p", p]
    return main(argv)


def test_sscd_lv_runs_end_to_end_on_tiny(tiny_bench, cand_run, tmp_path):
    from PIL import Image

    from imsim_lab.features.models import create_model

    out = tmp_path / "lv"
    assert _run(tiny_bench, out, cand_run, f"oracle={tiny_bench}") == 0
    cfg, cand = read_config(out), read_candidates(out)
    rep = cfg["matcher_report"]
    assert rep["vote"].startswith("off") and rep["query_views"] == ["whole", "rotations", "center", "halves", "oracle"]
    assert rep["oracle_boxes"] > 0 and rep["pairs"] == len(cand) == 3 * 48
    cost = rep["cost"]
    assert 9 <= cost["images_embedded_per_query"] <= 10 and 1 <= cost["images_embedded_per_reference"] <= 19
    assert cost["index_bytes_per_reference"] == pytest.approx(cost["images_embedded_per_reference"] * 512 * 4, rel=1e-3)
    assert cost["cpu_seconds_per_query"] > 0
    # verified pairs come before the others; the unverified keep the candidate order below -1.5
    ver = cand["view_q"] != ""
    assert ver.any() and (cand.loc[ver, "score"].min() > cand.loc[~ver, "score"].max() if (~ver).any() else True)
    assert (cand.loc[~ver, "score"] < UNVERIFIED + 0.5).all()
    assert {"box_q", "box_r", "direction", "n_agree", "view_score_whole", "view_score_oracle"} <= set(cand.columns)
    # the best view pair, cut and embedded by hand, gives the pair's score (offset put back)
    row = cand[ver].sort_values("score").iloc[-1]
    model = create_model("sscd_disc_mixup_onnx", short_side=96)
    from imsim_lab.analysis.report.pairs import parse_box

    def crop(image_id, box, name):
        img = Image.open(tiny_bench / ("queries" if image_id.startswith("Q") else "references") / f"{image_id}.jpg")
        rot = int(name[3:]) if name.startswith("rot") else 0
        return apply_view(img.convert("RGB"), View(name, parse_box(box) or (0, 0, 1, 1), rot))

    a = model.embed([model.preprocess(crop(row.query_id, row.box_q, row.view_q))])[0]
    b = model.embed([model.preprocess(crop(row.reference_id, row.box_r, row.view_r))])[0]
    off = 0.0 if row.view_q in ("whole", "oracle") else -0.05
    assert float(a @ b) + off == pytest.approx(row.score, abs=2e-3)
    assert json.loads((out / "metrics.json").read_text())["isc2021"]["micro_ap"] >= 0.0
    # a second run reuses the view stores of a shared cache
    cache = tmp_path / "cache"
    assert _run(tiny_bench, tmp_path / "a", cand_run, f"view_cache={cache}", "directions=[\"aq_or\"]") == 0
    t = read_config(tmp_path / "a")["matcher_report"]["seconds"]
    assert _run(tiny_bench, tmp_path / "b", cand_run, f"view_cache={cache}", "directions=[\"aq_or\"]",
                "offset=0.0") == 0
    t2 = read_config(tmp_path / "b")["matcher_report"]["seconds"]
    assert t2["extract_query_sscd"] < t["extract_query_sscd"]
    assert set(read_candidates(tmp_path / "a")["direction"]) <= {"aq_or", "whole", ""}


def test_detector_boxes_become_query_views(tiny_bench, cand_run, tmp_path):
    from imsim_lab.features.detector import DetectorConfig, OverlayNet
    from imsim_lab.runner import bench_images

    det = tmp_path / "det.pt"
    net = OverlayNet(DetectorConfig(input_size=32, width=4, head="global"))  # one linear layer decides the box
    with torch.no_grad():  # a confident box over the centre of every image
        net.net[-1].weight.zero_()
        net.net[-1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0]))
    net.save(det)
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.methods import CandidatePairs

    cfg = read_config(cand_run)

    bench = load_benchmark(tiny_bench)
    q, r = bench.query_ids[:4], bench.reference_ids[:4]
    pairs = CandidatePairs(np.array(q), np.array(r), np.zeros(4), np.zeros(4, np.int64))
    ctx = MatchContext(bench_images(bench, cfg, "query"), bench_images(bench, cfg, "reference"), tmp_path / "w",
                       training=bench_images(bench, cfg, "training"))
    params = {**get_method("sscd+lv").params, "backbone_args": FAST, "detector": str(det), "query_views": [],
              "directions": ["aq_or"]}
    res = create_matcher("lv", params).score(pairs, ctx)
    rep = res.report
    assert rep["detector_boxes"] == 4 and rep["query_views"] == ["whole", "detector"]
    b = rep["backbones"][0]
    assert b["query_views"] + sum(b["skipped_query_views"].values()) == 8 and "view_score_detector" in res.extras
    assert "det0" in set(res.extras["view_q"]) or not np.isfinite(res.extras["view_score_detector"]).any()


def test_extra_scales_repeat_aq_or_and_keep_the_best_scale(tiny_bench, tmp_path):
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.methods import CandidatePairs
    from imsim_lab.runner import bench_images

    bench = load_benchmark(tiny_bench)
    q, r = bench.query_ids[:4], bench.reference_ids[:4]
    pairs = CandidatePairs(np.array(q), np.array(r), np.zeros(4), np.zeros(4, np.int64))
    ctx = MatchContext(bench_images(bench, {}, "query"), bench_images(bench, {}, "reference"), tmp_path / "w",
                       training=bench_images(bench, {}, "training"))
    base = {**get_method("sscd+lv").params, "backbone_args": FAST, "query_views": ["center"], "budget_per_query": None}
    one = create_matcher("lv", base).score(pairs, ctx)
    two = create_matcher("lv", {**base, "scales": [64]}).score(pairs, ctx)
    assert two.report["scales"] == [64] and sum(two.report["pairs_best_at_scale"].values()) == 4
    assert set(two.extras["scale"]) <= {0, 64}
    assert np.all(two.scores >= one.scores - 1e-6)      # the max over scales never loses a scale's score
    assert any(b["backbone"] == "sscd@64" and b["reference_views"] == 4 for b in two.report["backbones"])
    with pytest.raises(Exception, match="scales"):
        create_matcher("lv", {**base, "scales": [8]})


def test_missing_or_foreign_files_give_one_line_and_exit_2(tiny_bench, cand_run, tmp_path, capsys):
    assert _run(tiny_bench, tmp_path / "a", cand_run, "detector=/nope/det.pt") == 2
    err = capsys.readouterr().err.strip()
    assert "/nope/det.pt" in err and len(err.splitlines()) == 1
    bad = tmp_path / "det.pt"
    bad.write_bytes(b"not a checkpoint")
    assert _run(tiny_bench, tmp_path / "b", cand_run, f"detector={bad}") == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and len(err.splitlines()) == 1
    argv = ["run", "d2lv", "--bench", str(tiny_bench), "--out", str(tmp_path / "c"), "--workers", "0",
            "--candidates", str(cand_run), "-p", "backbones=[\"sscd\", \"timm\"]",
            "-p", 'backbone_args={"timm": {"weights_path": "/nope/w.pt"}}']
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "/nope/w.pt" in err and len(err.splitlines()) == 1
    assert _run(tiny_bench, tmp_path / "d", cand_run, "query_views=[\"spiral\"]") == 2
    assert "spiral" in capsys.readouterr().err


def test_d2lv_is_registered_with_two_released_backbones():
    spec = get_method("d2lv")
    assert spec.track == "matching" and spec.params["backbones"] == ["sscd", "sscd_distilled"]
    m = create_matcher("lv", spec.params)
    assert vote_rule(m.config.vote_k, len(m.backbones)).startswith("2 of 2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_agree_with_cpu(tiny_bench, tmp_path):
    """The views embedded on CUDA (a torch backbone: AMP fp16, channels-last) score as on the CPU."""
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.methods import CandidatePairs
    from imsim_lab.runner import bench_images

    bench = load_benchmark(tiny_bench)
    q, r = bench.query_ids[:8], bench.reference_ids[:8]
    pairs = CandidatePairs(np.array(q), np.array(r), np.zeros(8), np.zeros(8, np.int64))
    params = {**get_method("sscd+lv").params, "backbones": ["timm_random"], "budget_per_query": None}
    out = {}
    for dev in ("cpu", "cuda"):
        ctx = MatchContext(bench_images(bench, {}, "query"), bench_images(bench, {}, "reference"), tmp_path / dev,
                           device=dev, training=bench_images(bench, {}, "training"))
        out[dev] = create_matcher("lv", params).score(pairs, ctx)
    assert out["cuda"].report["backbones"][0]["device"].startswith("cuda")
    assert np.allclose(out["cuda"].scores, out["cpu"].scores, atol=2e-2)
