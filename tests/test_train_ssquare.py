"""S-square: ArcFace against a from-scratch version and pytorch-metric-learning, the growing class
matrix, the plateau rule against torch's, the query augmentation, drip training (new rows from the
embeddings, resume, refusals), the whitened ensemble, the method ``ssquare`` and the command."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imsim_lab.cli import main
from imsim_lab.errors import ImsimError
from imsim_lab.train.arcface import ArcFaceHead, arcface_loss, margin_degrees
from imsim_lab.train.schedules import epoch_losses, plateau_lr
from support import make_bench

TINY = ["--backbone", "test_resnet", "--size", "32", "--dim", "16", "--batch-size", "4", "--workers", "0"]


def _scratch_arcface(x, W, y, m, s):
    """ArcFace written out per sample with numpy (module docstring of imsim_lab.train.arcface)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(x)):
        cos = W @ x[i]
        logits = s * cos
        logits[y[i]] = s * math.cos(math.acos(np.clip(cos[y[i]], -1, 1)) + m)
        total += -(logits[y[i]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    return total / len(x)


def test_arcface_equals_scratch_and_pytorch_metric_learning():
    from pytorch_metric_learning.losses import ArcFaceLoss

    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(12, 8, generator=g), torch.randn(20, 8, generator=g)
    y = torch.randint(0, 20, (12,), generator=g)
    ours = arcface_loss(x, W, y, 0.4, 40.0)
    assert math.isclose(float(ours), _scratch_arcface(x.numpy(), W.numpy(), y.numpy(), 0.4, 40.0), rel_tol=1e-4)
    ref = ArcFaceLoss(20, 8, margin=margin_degrees(0.4), scale=40.0)
    with torch.no_grad():
        ref.W.copy_(W.T)
    assert torch.allclose(ours, ref(x, y), rtol=1e-4)
    # the margin makes the own class harder: the loss is above the plain softmax's
    assert float(ours) > float(F.cross_entropy(40 * F.normalize(x) @ F.normalize(W).T, y))


def test_grown_head_keeps_the_old_rows_and_takes_the_embeddings_as_new_ones():
    head = ArcFaceHead(5, 4, seed=3)
    assert torch.equal(head.weight, ArcFaceHead(5, 4, seed=3).weight)  # the same on every rank
    emb = torch.randn(3, 4)
    big = head.grown(emb)
    assert big.n_classes == 8
    assert torch.allclose(F.normalize(big.weight[:5]), F.normalize(head.weight.detach()))
    assert torch.allclose(big.weight[5:], F.normalize(emb))
    with pytest.raises(ValueError):
        ArcFaceHead(3, 4, init=torch.zeros(2, 4))


def test_plateau_rule_equals_torch_reduce_lr_on_plateau():
    losses = [5, 4, 4.5, 4.2, 4.1, 3.9, 4, 4, 4, 4, 4, 3.0, 3.5]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.9, patience=2, threshold=0.0)
    for k, v in enumerate(losses):
        sched.step(v)
        assert math.isclose(plateau_lr(1e-3, losses[:k + 1]), opt.param_groups[0]["lr"], rel_tol=1e-9), k
    hist = [{"step": s, "loss": float(s % 3)} for s in range(1, 8)]  # 3 steps an epoch, epoch 3 unfinished
    assert epoch_losses(hist, 3) == [1.0, 1.0]


def test_query_view_is_a_function_of_its_generator_and_intensity_scales_the_ops():
    from imsim_lab.data.augment import synthetic_image
    from imsim_lab.train.ssquare_data import QUERY_OPS, query_view

    img = synthetic_image("synth:1")
    a, oa = query_view(img, 48, 0.7, np.random.default_rng(4))
    b, ob = query_view(img, 48, 0.7, np.random.default_rng(4))
    assert oa == ob and np.array_equal(np.asarray(a), np.asarray(b)) and a.size == (48, 48)
    fixed = {o.family for o in QUERY_OPS if not o.scaled}
    for seed in range(30):  # at intensity 0 only the ops that do not scale can fire
        assert set(query_view(img, 32, 0.0, np.random.default_rng(seed))[1]) <= fixed
    counts = [sum(len(query_view(img, 32, i, np.random.default_rng(s))[1]) for s in range(40)) for i in (0.0, 1.0)]
    assert counts[1] > counts[0]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("ssq") / "b", n_train=16)


def _cfg(stages, **kw):
    from dataclasses import replace

    from imsim_lab.train.ssquare import PUBLISHED_TRAIN, SSquareConfig

    return SSquareConfig(backbone="test_resnet", size=32, dim=16, stages=stages,
                         train=replace(PUBLISHED_TRAIN, batch_size=4, checkpoint_every=0, **kw))


def _paths(bench):
    from imsim_lab.data.benchmark import load_benchmark

    b = load_benchmark(bench)
    return [b.image_path(i) for i in b.training_ids]


def test_drip_grows_the_classes_and_initialises_new_rows_from_embeddings(bench, tmp_path, monkeypatch):
    import imsim_lab.train.ssquare as sq

    seen = []
    real = sq.train

    def spy(net, head, ds, tc, folder, **kw):
        seen.append((head.n_classes, len(ds), head.weight.detach().clone()))
        if head.n_classes == 16 and not (folder / "checkpoint.pt").is_file():  # rows 8..15: embeddings of images 8..15
            emb = sq.embed_paths(net, ds.paths[8:16], 32, ds.mean, ds.std)
            assert torch.allclose(head.weight[8:], F.normalize(emb), atol=1e-5)
        return real(net, head, ds, tc, folder, **kw)

    monkeypatch.setattr(sq, "train", spy)
    stages = (sq.DripStage(8, 1, 0.5), sq.DripStage(16, 1, 0.7))
    res = sq.train_drip(_paths(bench), tmp_path / "run", _cfg(stages, max_steps=2))
    assert [s[0] for s in seen] == [8, 16] and [s[1] for s in seen] == [8, 16]
    assert res.classes == [8, 16] and res.weights.is_file()
    ck = torch.load(tmp_path / "run" / "stage1" / "checkpoint.pt", weights_only=True)
    assert torch.allclose(seen[1][2][:8], F.normalize(ck["criterion"]["weight"]), atol=1e-6)  # old rows kept
    rows = sq.drip_history(tmp_path / "run")
    assert [r["classes"] for r in rows] == [8, 8, 16, 16] and all(np.isfinite(r["loss"]) for r in rows)
    drip = json.loads((tmp_path / "run" / "drip.json").read_text())
    assert [d["classes"] for d in drip] == [8, 16]
    net = sq.ssquare_net("test_resnet", 32, 16, weights_path=res.weights)  # the weights load as the model
    assert net.config.extra["gem_learnable"] and net.module.gem.p.requires_grad

    # a rerun resumes: nothing is trained again
    seen.clear()
    again = sq.train_drip(_paths(bench), tmp_path / "run", _cfg(stages, max_steps=2))
    assert all(r.steps == r.resumed_from for r in again.stages)
    # another class count where a checkpoint is: refused before anything is written
    before = (tmp_path / "run" / "stage2" / "checkpoint.pt").read_bytes()
    with pytest.raises(ImsimError, match="holds 16 ArcFace classes"):
        sq.train_drip(_paths(bench), tmp_path / "run", _cfg((sq.DripStage(8, 1), sq.DripStage(12, 1)), max_steps=2))
    assert (tmp_path / "run" / "stage2" / "checkpoint.pt").read_bytes() == before


def test_too_few_images_for_the_classes_is_refused(bench, tmp_path):
    import imsim_lab.train.ssquare as sq

    with pytest.raises(ImsimError, match="16 training images, but the drip schedule asks for 40 classes"):
        sq.train_drip(_paths(bench), tmp_path / "r", _cfg((sq.DripStage(8, 1), sq.DripStage(40, 1))))
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError):
        _cfg((sq.DripStage(16, 1), sq.DripStage(8, 1)))


def test_whitened_ensemble_is_pcaw_of_the_concatenation():
    from imsim_lab.methods.postprocess import fit_pca, l2_normalize
    from imsim_lab.train.ssquare import whitened_ensemble

    rng = np.random.default_rng(0)
    a = [rng.standard_normal((n, 12)).astype(np.float32) for n in (5, 7, 40)]
    b = [rng.standard_normal((n, 8)).astype(np.float32) for n in (5, 7, 40)]
    yq, yb, yt = whitened_ensemble([a[0], b[0]], [a[1], b[1]], [a[2], b[2]], dim=6)
    pca = fit_pca(np.hstack([a[2], b[2]]), 6, eigen_power=-0.5)
    assert yq.shape == (5, 6) and np.allclose(yq, l2_normalize(pca.apply(np.hstack([a[0], b[0]]))), atol=1e-5)
    assert np.allclose(np.linalg.norm(yt, axis=1), 1, atol=1e-5)
    # whitened: the training descriptors' covariance (before L2) is isotropic (faiss scales it by 1/n)
    c = np.cov(pca.apply(np.hstack([a[2], b[2]])).T, bias=True)
    assert np.allclose(c / c[0, 0], np.eye(6), atol=1e-4)


def test_method_ssquare_is_pcaw_l2_then_the_query_shift():
    from imsim_lab.methods import get_method
    from imsim_lab.methods.post import prepare
    from imsim_lab.methods.postprocess import fit_pca, l2_normalize, ssquare_shift

    rng = np.random.default_rng(1)
    xq, xb, xt = (l2_normalize(rng.standard_normal((n, 20))) for n in (6, 9, 50))
    spec = get_method("ssquare")
    _, params = spec.resolve({"dim": 8, "K": 10})
    prep = prepare(spec, xq, xb, xt, params, backend="numpy")
    pca = fit_pca(xt, 8, eigen_power=-0.5)
    yq, yb, yt = (l2_normalize(pca.apply(a)) for a in (xq, xb, xt))
    assert np.allclose(prep.xb, yb, atol=1e-5)
    assert np.allclose(prep.xq, ssquare_shift(yq, yt, 1.8, 10, 3, "numpy"), atol=1e-5)
    assert prep.notes["pca_dim"] == 8


def _cli(bench, out, *extra):
    return main(["train", "ssquare", "--bench", str(bench), "--out", str(out), *TINY, *extra])


def test_command_trains_prints_the_evaluation_and_refuses_bad_input(bench, tmp_path, capsys):
    out = tmp_path / "cli"
    assert _cli(bench, out, "--classes", "8,16", "--max-steps", "1", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == [8, 16] and summary["steps"] == 2 and summary["weights"].endswith("weights.pt")
    assert summary["evaluate"].startswith(f"imsim-lab run ssquare --bench {bench}")
    assert "model.dim=16" in summary["evaluate"]
    # too many classes, another embedding size, another architecture: one line, exit 2, nothing written
    for extra, msg in ((["--classes", "8,40"], "asks for 40 classes"),
                       (["--classes", "8", "--init", str(out / "weights.pt"), "--dim", "32"], "does not fit"),
                       (["--classes", "8", "--init", str(out / "weights.pt"), "--backbone", "test_efficientnet"],
                        "does not fit test_efficientnet"),
                       (["--classes", "8,16", "--epochs", "1,1,1"], "need 1 or 2 values")):
        fresh = tmp_path / f"bad{len(os.listdir(tmp_path))}"
        assert _cli(bench, fresh, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
        assert not fresh.exists()
    # the class count of a checkpoint at resume: refused, and nothing of the run is rewritten
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert _cli(bench, out, "--classes", "8,12", "--max-steps", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds 16 ArcFace classes" in err, err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("IMSIM_REQUIRE_GPU") != "1", reason="needs CUDA")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_drip_with_amp(bench, tmp_path, amp):
    import imsim_lab.train.ssquare as sq

    stages = (sq.DripStage(8, 1, 0.5), sq.DripStage(16, 1, 0.7))
    res = sq.train_drip(_paths(bench), tmp_path / amp, _cfg(stages, max_steps=2, amp=amp, device="cuda"))
    assert res.weights.is_file() and all(np.isfinite(r["loss"]) for r in sq.drip_history(tmp_path / amp))


def test_interval_tables_agree_with_evaluate_and_pair_the_resamples():
    from imsim_lab.analysis.intervals import family_interval_table, interval_table, paired_differences
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.eval.metrics import evaluate
    from support import scored_predictions

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        b = load_benchmark(make_bench(Path(d) / "b", n_pos=12, n_neg=6))
        runs = {"good": scored_predictions(b, 0.9), "bad": scored_predictions(b, 0.3, seed=1)}
        t = interval_table(b.gt, runs, n_boot=50, baseline="bad")
        for name, p in runs.items():
            m = evaluate(b.gt, p, "isc2021")
            assert math.isclose(t.loc[name, "µAP"], m.micro_ap, abs_tol=1e-9)
            assert t.loc[name, "µAP lo"] <= m.micro_ap <= t.loc[name, "µAP hi"]
        assert t.loc["bad", "Δ µAP"] == 0 and t.loc["bad", "Δ lo"] == t.loc["bad", "Δ hi"] == 0  # paired
        half = [str(q) for q in b.gt.query_ids[::2]]
        th = interval_table(b.gt, runs, n_boot=20, queries=half)
        assert math.isclose(th.loc["good", "µAP"], evaluate(b.gt, runs["good"], "isc2021", queries=half).micro_ap,
                            abs_tol=1e-9)
        f = family_interval_table(b, runs, n_boot=20)
        assert set(f["run"]) == {"good", "bad"} and (f["lo"] <= f["micro_ap"] + 1e-12).all()
        # the lessons' ablation table: each pair's row is the paired Δ of interval_table with the same resamples
        abl = paired_differences(b.gt, runs, {"good over bad": ("good", "bad"), "bad over itself": ("bad", "bad")},
                                 n_boot=50)
        row = abl.loc["good over bad"]
        assert (row["Δ µAP"], row["lo"], row["hi"]) == (t.loc["good", "Δ µAP"], t.loc["good", "Δ lo"],
                                                       t.loc["good", "Δ hi"])
        assert row["separable"] == (not row["lo"] <= 0 <= row["hi"])
        assert not abl.loc["bad over itself", "separable"] and abl.loc["bad over itself", "Δ µAP"] == 0


@pytest.mark.parametrize("name", ["ssquare", "sscd"])
def test_the_published_commands_parse_and_configure(name, bench, tmp_path):
    """The ``full`` commands of ``--help``: parsed by the recipe, configured; then the same command
    with the data and sizes swapped for toy ones trains (the published sizes need GPUs)."""
    import argparse

    from imsim_lab.train.recipes import get_recipe

    recipe = get_recipe(name)
    argv = [s for s in recipe.schedule() if s.argv][-1].argv
    assert argv[:2] == ("torchrun", argv[1]) and argv[argv.index("train") + 1] == name
    args = list(argv[argv.index(name) + 1:])
    p = argparse.ArgumentParser()
    recipe.add_arguments(p)
    parsed = p.parse_args(args)
    mod = __import__(f"imsim_lab.train.recipes.{name}", fromlist=["config"])
    cfg = mod.config(parsed)
    if name == "ssquare":
        assert [s.classes for s in cfg.stages] == [50_000, 100_000, 200_000, 500_000, 1_000_000]
        assert cfg.train.optimizer == "adam" and cfg.train.lr_schedule == "plateau"
        toy = ["--classes", "8,16", "--epochs", "1", "--dim", "16"]
    else:
        assert cfg.train.optimizer == "lars" and cfg.lam == 30 and cfg.mix_p == 0.05 and cfg.train.epochs == 100
        toy = ["--epochs", "1", "--dim", "16", "--lam", "10", "--warmup-epochs", "0"]
    swap = {"--bench": str(bench), "--out": str(tmp_path / "run"), "--batch-size": "8"}
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a in swap:
            out += [a, swap[a]]
            i += 2
        elif a in ("--classes", "--epochs", "--intensity", "--lam", "--mix-p"):
            i += 2
        elif a == "--pretrained":
            i += 1  # no model hub here
        else:
            out.append(a)
            i += 1
    assert main(["train", name, *out, *toy, "--backbone", "test_resnet", "--size", "32", "--workers", "0",
                 "--max-steps", "1"]) == 0
    assert (tmp_path / "run" / "weights.pt").is_file()
