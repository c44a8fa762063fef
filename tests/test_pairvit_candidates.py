"""Issue 15, second part: crop candidates through the runner (``candidates.views``), their recall per list
and per family, the NT-Xent candidate descriptor (``train ntxent``, method ``ntxent``), held-out ROC and the
attention across the seam of the pair classifier."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from imsim_lab.errors import ImsimError
from imsim_lab.features.pair_candidates import (SIZES, MergedCandidates, ViewNeighbours, cut_merged, list_recall,
                                                recall_at_k)
from imsim_lab.features.views import VIEWS
from imsim_lab.methods import get_method
from imsim_lab.methods.matchers import matcher_params
from imsim_lab.methods.spec import CandidateSource
from imsim_lab.train.pairvit import PairViT, PairViTConfig, roc, seam_attention

TINY = dict(backbone="vit_tiny_patch16_224", height=32, width=16, depth=1, embed_dim=32, num_heads=2)
NTX = {"backbone": "vit_tiny_patch16_224", "input_size": 32, "dim": 16,
       "timm_kwargs": {"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2}}


# --- the candidate source ---------------------------------------------------------------------------

def test_candidate_source_views_is_an_optional_parameter_with_the_old_default():
    assert CandidateSource.from_params({"candidates.method": "sscd", "candidates.k": 10}).views is None
    assert "candidates.views" not in CandidateSource("sscd", 10).to_params()  # old configs stay as they were
    src = CandidateSource("sscd", None, None, "cpu")
    assert src.to_params()["candidates.views"] == "cpu"
    with pytest.raises(ValueError, match="candidates.views must be None or one of full, cpu, smoke"):
        CandidateSource("sscd", 10, None, "huge")
    with pytest.raises(ValueError, match="candidates.k or candidates.budget"):
        CandidateSource("sscd", None, None, None)
    # a matching method without the key accepts it as an override; it is not a matcher parameter
    _, params = get_method("sift_verify").resolve({"candidates.views": "smoke"})
    assert params["candidates.views"] == "smoke" and "candidates.views" not in matcher_params(params)
    with pytest.raises(KeyError):
        get_method("sscd").resolve({"candidates.views": "smoke"})


def merged(q, r, s, lists):
    q, r, s = np.array(q), np.array(r), np.array(s, float)
    ranks = np.zeros(len(q), np.int64)
    for u in np.unique(q):
        idx = np.flatnonzero(q == u)
        ranks[idx[np.argsort(-s[idx], kind="stable")]] = np.arange(len(idx))
    return MergedCandidates(q, r, s, ranks, np.array(lists), np.array(["whole"] * len(q)), np.ones(len(q), np.int64))


def test_cut_merged_keeps_the_k_best_per_query_then_the_budget_overall():
    m = merged(["Q1", "Q1", "Q1", "Q2", "Q2"], ["R1", "R2", "R3", "R1", "R4"], [0.9, 0.5, 0.7, 0.8, 0.1],
               ["whole"] * 5)
    c = cut_merged(m, k=2)
    assert sorted(zip(c.query_ids, c.reference_ids)) == [("Q1", "R1"), ("Q1", "R3"), ("Q2", "R1"), ("Q2", "R4")]
    c = cut_merged(m, k=2, budget=3)
    assert sorted(zip(c.query_ids, c.reference_ids)) == [("Q1", "R1"), ("Q1", "R3"), ("Q2", "R1")]
    assert len(cut_merged(m)) == 5


def queries_table():
    return pd.DataFrame({"query_id": ["Q1", "Q2", "Q3", "Q4"], "has_match": [True, True, True, False],
                         "reference_id": ["R1", "R2", "R3", ""], "family": ["crop", "crop", "text", "none"]})


def test_list_recall_counts_what_each_list_adds_against_brute_force():
    whole = ViewNeighbours("whole", np.array(["Q1", "Q2", "Q3", "Q4"]), np.array(["whole"] * 4),
                           np.array([["R1", "R9"], ["R8", "R9"], ["R7", "R3"], ["R1", "R2"]]), np.ones((4, 2)))
    strips = ViewNeighbours("strips", np.array(["Q2", "Q2", "Q3"]), np.array(["vstrip0", "hstrip0", "vstrip0"]),
                            np.array([["R9"], ["R2"], ["R3"]]), np.ones((3, 1)))
    t = list_recall([whole, strips], queries_table(), {"whole": 1, "strips": 1}).set_index(["family", "list"])
    # whole at k=1 finds Q1 only (Q3's original is its second neighbour); strips find Q2 and Q3
    assert t.loc[("all", "whole"), "found"] == 1 and t.loc[("all", "strips"), "found"] == 2
    assert t.loc[("all", "strips"), "added"] == 2 and t.loc[("all", "strips"), "cumulative"] == 1.0
    assert t.loc[("crop", "whole"), "recall"] == 0.5 and t.loc[("text", "strips"), "cumulative"] == 1.0
    t2 = list_recall([whole], queries_table(), {"whole": 2}).set_index(["family", "list"])
    assert t2.loc[("all", "whole"), "found"] == 2


def test_recall_at_k_uses_the_rank_of_the_original():
    q = ["Q1", "Q1", "Q2", "Q2", "Q3", "Q4"]
    r = ["R5", "R1", "R2", "R6", "R7", "R1"]
    t = recall_at_k(q, r, [0, 1, 0, 1, 0, 0], queries_table(), ks=(1, 2)).set_index(["family", "k"])
    assert t.loc[("all", 1), "recall"] == pytest.approx(1 / 3) and t.loc[("all", 2), "recall"] == pytest.approx(2 / 3)
    assert t.loc[("crop", 2), "recall"] == 1.0 and t.loc[("text", 2), "recall"] == 0.0


# --- crop candidates through the runner ----------------------------------------------------------------

def test_a_matching_run_with_view_candidates_records_the_view_and_reuses_the_descriptors(tmp_path):
    from imsim_lab.features import ExtractConfig
    from imsim_lab.runfolder import read_candidates
    from imsim_lab.runner import RunOptions, run_method
    from support import make_bench
    from test_pairvit import save_weights

    bench = make_bench(tmp_path / "bench", n_ref=6, n_pos=3, n_neg=1)
    w = save_weights(tmp_path / "w.pt")
    opts = RunOptions(device="cpu", extract=ExtractConfig(batch_size=16, num_workers=0, shard_size=64),
                      feature_cache=str(tmp_path / "cache"))
    over = {**TINY, "weights_path": str(w), "candidates.method": "pdq", "candidates.k": None,
            "candidates.views": "smoke", "top": 2}
    res = run_method("pairvit", bench, tmp_path / "run", over, opts=opts)
    cand = res.config["candidates"]
    assert cand["views"] == "smoke" and cand["sizes"] == SIZES["smoke"].as_dict()
    table = read_candidates(tmp_path / "run")
    assert {"candidate_list", "candidate_view", "candidate_n_lists"} <= set(table.columns)
    assert set(table.candidate_list) <= {"whole", "strips", "half_grid", "third_grid", "reference_crops"}
    assert len(table) == cand["pairs"] == cand["merged_pairs"] == sum(cand["pairs_by_list"].values())
    per_q = table.groupby("query_id").size()
    assert (per_q >= 1).all() and (per_q <= 5 + 6 * 2 + 9 + 25 + 1).all()
    # the whole-query list gives each query its 5 best whole references (pdq: 6 references)
    assert (table[table.candidate_list == "whole"].candidate_view == "whole").all()
    cache = list((tmp_path / "cache").glob("views-pdq-*/*/query/third_grid.npy"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    # another matcher setting on the same images: the view descriptors are read back, not made again
    res2 = run_method("pairvit", bench, tmp_path / "run2", {**over, "best_only": False}, opts=opts)
    assert cache[0].stat().st_mtime_ns == stamp
    t2 = read_candidates(tmp_path / "run2")
    assert (t2[["query_id", "reference_id", "candidate_list"]].values == table[
        ["query_id", "reference_id", "candidate_list"]].values).all()
    assert res2.config["matcher_report"]["best_only"] is False
    # a run folder of the plain k-NN is another configuration
    with pytest.raises(ImsimError, match="another configuration"):
        run_method("pairvit", bench, tmp_path / "run", {**over, "candidates.views": None, "candidates.k": 3},
                   opts=opts)


# --- NT-Xent candidate descriptor -----------------------------------------------------------------------

def test_group_views_give_a_clean_and_an_edited_view_of_each_group_member(tmp_path):
    from imsim_lab.features.models import create_model
    from imsim_lab.train.ntxent import GroupViews, NTXentError
    from imsim_lab.train.pairvit import random_groups
    from test_pairvit import tiny_training

    bench = tiny_training(tmp_path)
    model = create_model("ntxent_vit", device="cpu", **NTX)
    assert model.config.grayscale and model.config.extra["head"] == "linear_nobias"
    groups = random_groups(6, 3)
    ds = GroupViews([bench.image_path(i) for i in bench.training_ids], groups, model.preprocess, seed=0,
                    families=("crop", "blur"), ids=list(bench.training_ids))
    x, y = ds[(2, 0)]
    assert x.shape == (6, 3, 32, 32) and list(y) == [int(j) for j in groups[2] for _ in range(2)]
    mean, std = np.array(model.config.mean)[:, None, None], np.array(model.config.std)[:, None, None]
    raw = x * std + mean  # grayscale input: the three channels are equal before normalisation
    assert np.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and np.allclose(raw[:, 1], raw[:, 2], atol=1e-5)
    assert not np.allclose(x[0], x[1])  # the edited view differs from the clean one
    x2, _ = ds[(2, 0)]
    assert np.array_equal(x, x2)  # a pure function of (seed, epoch, index)
    with pytest.raises(NTXentError, match="row i starting with i"):
        GroupViews([bench.image_path(i) for i in bench.training_ids], groups[::-1], model.preprocess)


def test_train_ntxent_command_gives_weights_the_ntxent_method_runs_with(tmp_path, capsys):
    from imsim_lab.cli import main
    from imsim_lab.features import ExtractConfig
    from imsim_lab.runner import RunOptions, run_method
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=6, n_train=6, n_pos=3, n_neg=1)
    out = tmp_path / "ntx"
    argv = ["train", "ntxent", "--bench", str(bench), "--out", str(out), "--profile", "cpu", "--size", "32",
            "--dim", "16", "--max-steps", "2", "--batch-size", "2", "--group-size", "3", "--lr", "1e-3",
            "--workers", "0", "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (out / "weights.pt").is_file() and "imsim-lab run ntxent" in text
    info = json.loads((out / "train_config.json").read_text())["run"]
    assert info["recipe"] == "ntxent" and info["groups"] == "init" and info["group_size"] == 3
    assert info["config"]["tau"] == 0.1 and info["model"]["grayscale"] is True
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 2 and all(np.isfinite(h["loss"]) for h in hist)
    margs = {"backbone": "vit_tiny_patch16_224", "input_size": 32, "dim": 16,
             "timm_kwargs": {"img_size": 32, "depth": 2}, "weights_path": str(out / "weights.pt")}
    opts = RunOptions(device="cpu", extract=ExtractConfig(batch_size=8, num_workers=0))
    res = run_method("ntxent", bench, tmp_path / "eval", {f"model.{k}": v for k, v in margs.items()}, opts=opts)
    assert 0 <= res.metrics["isc2021"]["micro_ap"] <= 1
    # the weights of another shape are refused before any training, naming the file
    assert main(argv[:-2] + ["--out", str(tmp_path / "ntx2"), "--dim", "24", "--init", str(out / "weights.pt")]) == 2
    err = capsys.readouterr().err
    assert "weights.pt" in err and "does not fit" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ntx2").exists()
    assert main(argv[:-2] + ["--groups", "nearest"]) == 2
    assert "no training.npy" in capsys.readouterr().err
    # weights trained on grayscale input, asked in colour (or at another size): one line naming the file
    assert main(argv[:-2] + ["--out", str(tmp_path / "ntx3"), "--color", "--init", str(out / "weights.pt")]) == 2
    err = capsys.readouterr().err
    assert "weights.pt: trained on 32 px grayscale input" in err and "asks 32 px colour" in err
    with pytest.raises(ImsimError, match="trained on 32 px grayscale input .* asks 32 px colour"):
        run_method("ntxent", bench, tmp_path / "eval_colour",
                   {**{f"model.{k}": v for k, v in margs.items()}, "model.grayscale": False}, opts=opts)


# --- the classifier's ROC and attention --------------------------------------------------------------------

def test_gray_halves_are_the_resized_three_channel_gray_image_and_decode_luma():
    from PIL import Image

    from imsim_lab.methods.pairvit import _Halves
    from imsim_lab.train.pairvit import pair_half

    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (57, 83, 3), dtype=np.uint8))
    cfg = PairViTConfig(**TINY)
    want = np.array(img.convert("L").convert("RGB").resize((16, 32), Image.BILINEAR))
    assert np.array_equal(pair_half(img, cfg), want)
    assert _Halves(cfg).decode_mode == "L" and _Halves(PairViTConfig(**{**TINY, "gray": False})).decode_mode == "RGB"
    assert _Halves(cfg, VIEWS.get("pairvit_query")((1, 1)))(img).shape == (8, 32, 16, 3)


def test_reduced_decoding_keeps_every_view_a_reduction_and_the_halves_close(tmp_path):
    from PIL import Image

    from imsim_lab.features.dataset import ImageSource, read_image
    from imsim_lab.features.views import WHOLE, View, apply_view, parent_size_for, view_size
    from imsim_lab.methods.pairvit import _Halves

    views = VIEWS.get("pairvit_query")((1, 1))
    # 112 x 56 halves: a half of the width must keep 56 px, a rotated half of the height 112 px
    assert parent_size_for(views, 56, 112) == (112, 112)
    assert parent_size_for([WHOLE], 56, 112) == (56, 112)
    assert parent_size_for([View("r", (0, 0, 1, 0.5), 90)], 56, 112) == (112, 112)
    assert parent_size_for([View("c", (0.25, 0.25, 0.75, 0.75))], 30, 10) == (60, 20)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
    jpg, png = tmp_path / "a.jpg", tmp_path / "a.png"
    photo.save(jpg, quality=92)
    photo.save(png)
    need = parent_size_for(views, 56, 112)
    small = read_image(jpg, mode="L", decode_size=lambda w, h: need)
    assert small.size == (160, 120) and small.mode == "L"  # 1/4: both sides still >= 112
    assert read_image(jpg, decode_size=lambda w, h: (200, 200)).size == (320, 240)  # 1/2
    assert read_image(png, decode_size=lambda w, h: need).size == (640, 480)  # not a JPEG: in full
    assert read_image(jpg, mode="L").size == (640, 480)
    for v in views:  # no view is enlarged from the reduced image to its 56 x 112 half
        w, h = view_size(v, small.size)
        assert w >= 56 and h >= 112 and apply_view(small, v).size == (w, h), v.name
    # the matcher's halves from the reduced decode are within a few grey levels of the full one
    cfg = PairViTConfig("vit_tiny_patch16_224", 112, 56, depth=1)
    src = ImageSource.files(["a"], [jpg], "q")
    got = {}
    for reduced in (True, False):
        h = _Halves(cfg, views, reduced)
        assert (getattr(h, "decode_size", None) is not None) == reduced
        _, arr, err = src.dataset(h, ["a"])[0]
        assert err is None and arr.shape == (8, 112, 56, 3)
        got[reduced] = arr.astype(float)
    diff = np.abs(got[True] - got[False])
    assert 0 < diff.mean() < 2 and np.percentile(diff, 99) <= 12


def test_roc_area_is_the_mann_whitney_probability():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: ties
    fpr, tpr, auc = roc(y, s)
    pos, neg = s[y], s[~y]
    want = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert auc == pytest.approx(want) and fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    with pytest.raises(ImsimError, match="positive and negative"):
        roc(np.ones(3), np.zeros(3))


def test_seam_attention_matches_a_manual_softmax_of_the_last_block():
    torch.manual_seed(0)
    cfg = PairViTConfig(**TINY)
    net = PairViT(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    out = seam_attention(net, x)
    blk = net.backbone.blocks[-1]
    with torch.no_grad():  # the last block's input by hand: patch embedding, tokens, earlier blocks
        t = net.backbone.patch_embed(x)
        t = net.backbone._pos_embed(t)
        t = net.backbone.norm_pre(t)
        for b in net.backbone.blocks[:-1]:
            t = b(t)
        h = blk.norm1(t)
        qkv = blk.attn.qkv(h).reshape(2, t.shape[1], 3, 2, 16).permute(2, 0, 3, 1, 4)
        a = (qkv[0] @ qkv[1].transpose(-2, -1) / 4.0).softmax(-1).mean(1)
    g = out["grid"]
    assert g == (2, 1) and out["cls_map"].shape == (2, 2, 2)
    np.testing.assert_allclose(out["cls_map"].reshape(2, -1), a[:, 0, 1:].numpy(), atol=1e-5)
    p = a[:, 1:, 1:].reshape(2, 2, 2, 2, 2)[:, :, 1:]  # from query patches (column 1)
    want = (p[..., :1].sum((-1, -2)) / p.sum((-1, -2))).mean((1, 2)).numpy()
    np.testing.assert_allclose(out["cross"], want, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("IMSIM_REQUIRE_GPU") != "1", reason="needs CUDA")
def test_ntxent_training_with_amp_on_cuda(tmp_path):
    from imsim_lab.train.ntxent import NTXentConfig, train_ntxent
    from imsim_lab.train.trainer import TrainConfig
    from test_pairvit import tiny_training

    bench = tiny_training(tmp_path / "b")
    for amp in ("bf16", "fp16"):
        cfg = NTXentConfig(model_args=NTX, group_size=3, families=("crop", "blur"),
                           train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=2, max_steps=2, amp=amp,
                                             device="cuda", checkpoint_every=0))
        res = train_ntxent(bench, tmp_path / amp, cfg, groups="random")
        assert res.steps == 2 and all(np.isfinite(h["loss"]) for h in res.history)


def test_the_published_schedules_run_at_toy_size(tmp_path, capsys):
    """The ``full`` profile's commands (each recipe's published steps) run as written, with the data, the
    output and the size replaced by toy ones (later options override earlier ones)."""
    from imsim_lab.cli import main
    from imsim_lab.train.recipes import get_recipe
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=4, n_train=6, n_pos=2, n_neg=1)
    desc = tmp_path / "desc" / "features"  # a descriptor run's training features, for --groups
    desc.mkdir(parents=True)
    np.save(desc / "training.npy", np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32))
    np.save(desc / "training_ids.npy", np.array([f"T{i:06d}" for i in range(6)]))
    toy = {"ntxent": ["--profile", "cpu", "--size", "32", "--dim", "16", "--group-size", "3"],
           "pairvit": ["--profile", "cpu", "--height", "32", "--width", "16", "--group-size", "2"]}
    ran = 0
    for name in ("ntxent", "pairvit"):
        for k, step in enumerate(get_recipe(name).schedule()):
            if not step.argv:
                continue
            argv = list(step.argv[step.argv.index("train"):])
            assert argv[:2] == ["train", name] and "--pretrained" in argv
            argv.remove("--pretrained")  # timm hub weights: no internet here
            argv[argv.index("--bench") + 1] = str(bench)
            argv[argv.index("--out") + 1] = str(tmp_path / f"{name}{k}")
            argv[argv.index("--groups") + 1] = str(tmp_path / "desc")
            assert main(argv + toy[name] + ["--max-steps", "1", "--batch-size", "2", "--workers", "0",
                                            "--device", "cpu"]) == 0, capsys.readouterr().err
            assert (tmp_path / f"{name}{k}" / "weights.pt").is_file()
            ran += 1
    assert ran == 2


def test_auc_interval_holds_the_auc_and_narrows_with_more_pairs():
    from imsim_lab.train.pairvit import auc_interval

    rng = np.random.default_rng(1)
    y = np.r_[np.ones(50), np.zeros(150)].astype(bool)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)
    auc, lo, hi = auc_interval(y, s, n_boot=300)
    assert auc == pytest.approx(roc(y, s)[2]) and lo < auc < hi
    y4, s4 = np.tile(y, 4), np.round(rng.normal(np.tile(y, 4) * 0.7, 1.0), 1)
    a4, lo4, hi4 = auc_interval(y4, s4, n_boot=300)
    assert hi4 - lo4 < hi - lo


# --- the full profile's hard-negative groups: the trained descriptor's neighbours over the training set -----

def test_full_profile_groups_are_the_trained_descriptors_neighbours_over_the_training_images(tmp_path, capsys):
    """Notebook 07's ``full`` commands at toy size: ``train ntxent``, the ``ntxent+training`` run of its
    weights (features/training.npy), then ``train pairvit --groups RUN --holdout N``: the groups are each
    trained image's nearest trained images under that descriptor, in the benchmark's order."""
    from imsim_lab.cli import main
    from imsim_lab.runner import run_method
    from imsim_lab.train.pairvit import PairGroups, hard_negative_groups
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=4, n_train=7, n_pos=2, n_neg=1)
    toy = ["--device", "cpu", "--workers", "0", "--max-steps", "1", "--batch-size", "1"]
    assert main(["train", "ntxent", "--bench", str(bench), "--out", str(tmp_path / "ntx"), "--profile", "cpu",
                 "--size", "32", "--dim", "16", "--group-size", "3"] + toy) == 0, capsys.readouterr().err
    margs = json.loads((tmp_path / "ntx" / "train_config.json").read_text())["run"]["config"]["model_args"]
    over = {f"model.{k}": v for k, v in margs.items()}
    run = run_method("ntxent+training", bench, tmp_path / "desc",
                     dict(over, **{"model.weights_path": str(tmp_path / "ntx" / "weights.pt")}))
    xt = np.load(run.out / "features" / "training.npy")
    tid = np.load(run.out / "features" / "training_ids.npy").astype(str)
    assert xt.shape[0] == 7 and sorted(tid) == [f"T{i:06d}" for i in range(7)]
    captured = {}
    orig = PairGroups.__init__

    def spy(self, paths, groups, *a, **k):
        captured["groups"], captured["paths"] = np.asarray(groups), [str(p) for p in paths]
        orig(self, paths, groups, *a, **k)

    PairGroups.__init__ = spy
    try:
        assert main(["train", "pairvit", "--bench", str(bench), "--out", str(tmp_path / "pv"), "--profile", "cpu",
                     "--height", "32", "--width", "16", "--groups", str(run.out), "--group-size", "3",
                     "--holdout", "2"] + toy) == 0, capsys.readouterr().err
    finally:
        PairGroups.__init__ = orig
    info = json.loads((tmp_path / "pv" / "train_config.json").read_text())["run"]
    assert info["groups"] == str(run.out) and info["group_size"] == 3 and info["held_out"] == 2
    order = np.argsort(tid)  # the run's rows in the benchmark's (sorted) order; the last 2 are held out
    x5 = xt[order][:5].astype(np.float32)
    x5 /= np.linalg.norm(x5, axis=1, keepdims=True)
    assert (captured["groups"] == hard_negative_groups(x5, 3, backend="numpy")).all()
    assert len(captured["paths"]) == 5
