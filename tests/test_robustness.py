"""Robustness suites on a minimal benchmark: graded transformations (determinism, cache, identity
at strength 0, refusals) and the adversarial suite (white-box + transfer, epsilon 0 = clean run)."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imsim_lab.analysis.attacks import AttackConfig, AttackError, SuiteConfig, run_attack_suite
from imsim_lab.cli import main
from imsim_lab.analysis.robustness import (GradedConfig, bench_assets, edit_seed, extract_cell, read_graded, run_graded,
                                  sample_references)
from imsim_lab.analysis.runcontext import RobustnessError, open_run
from imsim_lab.runner import run_method
from support import FAST, Streamed, make_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("robust"))


CFG = GradedConfig(families=("rotate", "vflip"), strengths=(0.0, 1.0), sample=3, seed=0)


def test_graded_suite_table_cache_and_determinism(runs):
    bench, a, _ = runs
    t1 = run_graded(a, CFG, opts=FAST)
    assert set(t1["family"]) == {"rotate", "vflip"} and set(t1["strength"]) == {0.0, 1.0}
    assert set(t1["protocol"]) == {"isc2021", "drivendata"} and (t1["n_positives"] == 3).all()
    iso = t1[t1.protocol == "isc2021"].set_index(["family", "strength"])
    # rotate at 0 is the reference itself (re-encoded): the method finds every one first
    assert iso.loc[("rotate", 0.0), "recall_at_rank1"] == 1.0
    out = a / "robustness"
    assert (out / "graded.parquet").is_file() and (out / "graded.json").is_file()
    assert len(list((out / "graded" / "cells").glob("*.npz"))) == 4
    assert len(list((out / "graded" / "examples").glob("*.jpg"))) == 4
    cell = out / "graded" / "cells" / "rotate_1.0000.npz"
    before = cell.stat().st_mtime_ns
    t2 = run_graded(a, CFG, opts=FAST)  # cached: no cell recomputed, same table
    assert cell.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(t1, t2)
    # recomputed from scratch: the same descriptors (the suite is deterministic)
    x1 = np.load(cell)["x"]
    t3 = run_graded(a, GradedConfig(**{**CFG.__dict__}), opts=FAST, force=True)
    cell.unlink()
    run_graded(a, CFG, opts=FAST)
    np.testing.assert_allclose(np.load(cell)["x"], x1, rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(read_graded(a), t3)
    pq = pd.read_parquet(out / "graded" / "per_query.parquet")
    assert len(pq) == 12 and {"family", "strength", "true_rank", "top_reference_id"} <= set(pq.columns)


def test_graded_cells_made_in_threads_equal_the_dataloader_path(runs):
    """Edits (with assets: combine pastes other images) made concurrently stay deterministic."""
    bench_root, a, _ = runs
    ctx = open_run(a)
    model = ctx.create_model("cpu")
    refs = sample_references(ctx.bench, None)
    cfg = GradedConfig(families=("combine", "airgap", "rotate"), strengths=(0.5, 1.0), sample=None)
    assets = bench_assets(ctx.bench)
    streamed = Streamed(model)  # asks for 3 CPU streams, as SSCD ONNX does: edits made in threads
    for family in cfg.families:
        for s in cfg.strengths:
            ids0, x0, f0 = extract_cell(model, ctx.bench, refs, family, s, cfg, assets, batch_size=2)
            ids1, x1, f1 = extract_cell(streamed, ctx.bench, refs, family, s, cfg, assets, batch_size=1)
            assert list(ids0) == list(ids1) == refs and f0 == f1 == []
            np.testing.assert_allclose(x0, x1, atol=1e-5)
    assert len(streamed.threads) > 1


def test_graded_refuses_other_settings_without_force(runs):
    _, a, _ = runs
    with pytest.raises(RobustnessError, match="other settings"):
        run_graded(a, GradedConfig(families=("rotate",), strengths=(0.0,), sample=3, seed=5), opts=FAST)


def test_graded_config_and_sampling(runs):
    bench, a, _ = runs
    with pytest.raises(RobustnessError, match="unknown transformation"):
        GradedConfig(families=("warp_drive",))
    with pytest.raises(RobustnessError, match="strengths"):
        GradedConfig(strengths=(1.5,))
    ctx = open_run(a)
    assert sample_references(ctx.bench, None) == [f"R{i:06d}" for i in range(4)]
    assert sample_references(ctx.bench, 2, seed=1) == sample_references(ctx.bench, 2, seed=1)
    assert edit_seed(0, "crop", "R000001") == edit_seed(0, "crop", "R000001") != edit_seed(1, "crop", "R000001")
    with pytest.raises(RobustnessError, match="not a finished run"):
        open_run(bench)


@pytest.mark.slow
def test_attack_suite_white_box_and_transfer(runs):
    _, a, b = runs
    cfg = SuiteConfig(AttackConfig("pgd", "linf", steps=2), eps=(0.0, 16 / 255), sample=3, n_examples=1)
    curves = run_attack_suite(a, cfg, [b], opts=FAST)
    assert set(curves["kind"]) == {"white-box", "transfer"} and len(curves) == 2 * 2 * 2
    iso = curves[curves.protocol == "isc2021"].set_index(["kind", "eps"])
    # epsilon 0: the clean queries, so exactly the clean run's restricted evaluation
    assert iso.loc[("white-box", 0.0), "descriptor_shift"] == 0.0
    assert iso.loc[("white-box", 16 / 255), "descriptor_shift"] > 0
    assert iso.loc[("white-box", 16 / 255), "distance_to_original"] > iso.loc[("white-box", 0.0), "distance_to_original"]
    out = a / "robustness" / "attacks" / "pgd-linf"
    imgs = sorted((out / "images").rglob("*.png"))
    assert len(imgs) == 3
    q = pd.read_parquet(out / "queries.parquet")
    for p in imgs:  # the saved 8-bit images stay inside the budget
        clean = np.asarray(Image.open(runs[0] / "queries" / f"{p.stem}.jpg").convert("RGB"), np.int16)
        assert np.abs(np.asarray(Image.open(p), np.int16) - clean).max() <= 16
    assert len(q) == 3 and len(list((out / "examples").rglob("*_diff.png"))) == 1
    info = json.loads((out / "attack.json").read_text())
    assert info["seconds_per_query"]["16/255"] > 0
    pq = pd.read_parquet(out / "per_query.parquet")
    assert set(pq["eps"]) == {0.0, 16 / 255} and len(pq) == 3 * 2 * 2
    mtimes = [p.stat().st_mtime_ns for p in imgs]
    again = run_attack_suite(a, cfg, [b], opts=FAST)  # cached images, same curves
    assert mtimes == [p.stat().st_mtime_ns for p in imgs]
    pd.testing.assert_frame_equal(curves, again)


def test_attack_suite_refuses_a_non_differentiable_surrogate(tmp_path, runs):
    bench = runs[0]
    pdq = run_method("pdq", bench, tmp_path / "pdq", None, FAST).out
    with pytest.raises(AttackError, match="transfer target"):
        run_attack_suite(pdq, SuiteConfig(eps=(0.0,), sample=1), opts=FAST)


@pytest.mark.slow
def test_cli_robustness_and_attack(runs, capsys):
    _, a, b = runs
    assert main(["robustness", str(a), "--families", "rotate,vflip", "--strengths", "0,1", "--sample", "3",
                 "--workers", "0"]) == 0
    assert "rotate" in capsys.readouterr().out
    assert main(["attack", str(a), "--eps", "0,16/255", "--steps", "2", "--sample", "3", "--examples", "1",
                 "--transfer", str(b)]) == 0
    out = capsys.readouterr().out
    assert "white-box" in out and "transfer" in out and "16/255" in out
    assert main(["robustness", "no_such_method_or_run"]) == 2
