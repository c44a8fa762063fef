"""D2LV's score normalisation inside the ``lv`` matcher (factor 2, top 10, avg against the training
images): the rule on hand-made view tables, and the matcher on the tiny benchmark against descriptors
embedded by hand."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from imsim_lab.cli import main
from imsim_lab.errors import ImsimError
from imsim_lab.features.lvscore import LVConfig, verify
from imsim_lab.methods import CandidatePairs, MatchContext, create_matcher, get_method
from imsim_lab.methods.lv import background_bias

FAST = {"sscd": {"short_side": 96}}


def table(rows):
    return SimpleNamespace(parent_ids=np.array([r[0] for r in rows]), view_names=np.array([r[1] for r in rows]),
                           sizes=np.array([r[2] for r in rows]).reshape(-1, 2),
                           boxes=np.tile([0.0, 0.0, 1.0, 1.0], (len(rows), 1)))


def test_background_bias_is_factor_times_the_mean_of_the_top_n_similarities():
    rng = np.random.default_rng(0)
    xt = rng.normal(size=(30, 8)).astype(np.float32)
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[2] = np.nan                                    # a view this backbone has no descriptor of
    b = background_bias(x, xt, 2.0, 10, "avg", "numpy")
    sims = np.sort(x @ xt.T, axis=1)[:, ::-1]
    want = 2.0 * sims[:, :10].mean(1)
    assert np.isnan(b[2]) and np.allclose(np.delete(b, 2), np.delete(want, 2), atol=1e-5)
    assert np.allclose(np.delete(background_bias(x, xt, 2.0, 10, "min", "numpy"), 2),
                       np.delete(2.0 * sims[:, 9], 2), atol=1e-5)


def test_each_direction_subtracts_the_term_of_its_augmented_side():
    # Q0 (whole + centre) x R0 (whole + a corner); e0..e3 orthogonal
    qt = table([("Q0", "whole", (200, 200)), ("Q0", "center", (150, 150))])
    rt = table([("R0", "whole", (200, 200)), ("R0", "g2_0_0", (150, 150))])
    c = np.cos(0.5)
    xq = np.array([[c, np.sin(0.5), 0, 0], [0, 0, 1, 0]], np.float32)    # whole q . whole r = cos 0.5
    xr = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)              # whole q . corner r = sin 0.5
    bq, br = np.array([0.30, 0.10]), np.array([0.20, 0.40])
    cfg = dict(vote_k=1, offset=0.0)
    raw = verify(["Q0"], ["R0"], qt, rt, [xq], [xr], LVConfig(**cfg))
    assert raw.scores[0] == pytest.approx(c, abs=1e-6)
    # AQ+OR: whole x whole - bq[whole] = c - 0.3; centre x whole = 0 - 0.1 (the term of the query view)
    aq = verify(["Q0"], ["R0"], qt, rt, [xq], [xr], LVConfig(directions=("aq_or",), **cfg), [bq], [br])
    assert aq.scores[0] == pytest.approx(c - 0.30, abs=1e-6)
    assert aq.family["center"][0] == pytest.approx(-0.10, abs=1e-6)
    # OQ+AR: whole x whole - br[whole] = c - 0.2; whole x corner - br[corner] = sin 0.5 - 0.4 (the reference view's)
    oq = verify(["Q0"], ["R0"], qt, rt, [xq], [xr], LVConfig(directions=("oq_ar",), **cfg), [bq], [br])
    assert oq.scores[0] == pytest.approx(c - 0.20, abs=1e-6)
    assert oq.family["reference_splits"][0] == pytest.approx(np.sin(0.5) - 0.40, abs=1e-6)
    both = verify(["Q0"], ["R0"], qt, rt, [xq], [xr], LVConfig(**cfg), [bq], [br])
    assert both.scores[0] == pytest.approx(max(c - 0.3, c - 0.2, np.sin(0.5) - 0.4, -0.1), abs=1e-6)
    # the budget ranks the normalised scores: with a budget of one view pair in AQ+OR, a large term on
    # the whole query hands the pair to the centre crop
    flip = verify(["Q0"], ["R0"], qt, rt, [xq], [xr], LVConfig(directions=("aq_or",), budget=1, **cfg),
                  [np.array([1.5, 0.0])], None)
    assert flip.scores[0] == pytest.approx(0.0, abs=1e-6) and flip.direction[0] == "aq_or"
    with pytest.raises(Exception, match="one term per row"):
        verify(["Q0"], ["R0"], qt, rt, [xq], [xr], LVConfig(**cfg), [bq[:1]], [br])


@pytest.fixture(scope="module")
def tiny(tiny_bench):
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.runner import bench_images

    bench = load_benchmark(tiny_bench)
    return bench, {s: bench_images(bench, {}, s) for s in ("query", "reference", "training")}


def test_matcher_normalises_against_the_training_images_as_the_formula_says(tiny, tmp_path):
    from imsim_lab.features.models import create_model

    bench, src = tiny
    q, r = bench.query_ids[:3], bench.reference_ids[:3]
    pairs = CandidatePairs(np.array(q), np.array(r), np.zeros(3), np.zeros(3, np.int64))
    ctx = MatchContext(src["query"], src["reference"], tmp_path / "w", training=src["training"])
    # whole query x whole reference only, every view pair kept: the score is q.r, minus the term with score_norm
    base = {**get_method("sscd+lv").params, "backbone_args": FAST, "query_views": [], "directions": ["aq_or"],
            "budget_per_query": None, "score_norm": True}
    off = create_matcher("lv", {**base, "score_norm": False}).score(pairs, ctx)
    on = create_matcher("lv", base).score(pairs, ctx)
    model = create_model("sscd_disc_mixup_onnx", short_side=96)

    def emb(ids):
        return np.stack([model.embed([model.preprocess(bench.load_image(i))])[0] for i in ids])

    xq, xr, xt = emb(q), emb(r), emb(bench.training_ids)
    sims = np.sort(xq @ xt.T, axis=1)[:, ::-1]
    n = min(10, len(xt))
    want = np.einsum("ij,ij->i", xq, xr) - 2.0 * sims[:, :n].mean(1)
    assert off.scores == pytest.approx(np.einsum("ij,ij->i", xq, xr), abs=2e-3)
    assert on.scores == pytest.approx(want, abs=2e-3)
    rep = on.report["score_norm"]
    assert rep["factor"] == 2.0 and rep["n"] == n and rep["mode"] == "avg"
    assert rep["training_images"] == len(bench.training_ids) and off.report["score_norm"] is False
    # without training images the matcher says so in one line
    bare = MatchContext(src["query"], src["reference"], tmp_path / "w2")
    with pytest.raises(ImsimError, match="score_norm=false"):
        create_matcher("lv", base).score(pairs, bare)


def test_score_norm_is_recorded_in_the_run_config(tiny_bench, tmp_path):
    from imsim_lab.runfolder import read_candidates, read_config

    cand = tmp_path / "sscd"
    assert main(["run", "sscd", "--bench", str(tiny_bench), "--out", str(cand), "--workers", "0"]) == 0
    out = tmp_path / "lv"
    assert get_method("d2lv").params["score_norm"] is True and get_method("sscd+lv").params["score_norm"] is False
    argv = ["run", "sscd+lv", "--bench", str(tiny_bench), "--out", str(out), "--workers", "0", "--candidates",
            str(cand), "-p", "candidates.k=2", "-p", f"backbone_args={json.dumps(FAST)}", "-p", 'query_views=["center"]',
            "-p", "score_norm=true"]
    assert main(argv) == 0
    cfg = read_config(out)
    assert cfg["params"]["score_norm"] is True and cfg["params"]["score_norm_n"] == 10
    assert cfg["matcher_report"]["score_norm"]["mode"] == "avg" and "training" in cfg["images"]
    c = read_candidates(out)
    ver = c["view_q"] != ""
    assert ver.any() and (c.loc[~ver, "score"] < cfg["matcher_report"]["score_norm"]["unverified_below"]).all()
