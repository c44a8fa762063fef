"""VisionForce's recipe (Bag of Tricks, D2LV backbones, Barlow Twins): the network piece by piece,
the losses against direct computations and torch, the K-view data and the offline set, the
schedule, exact resume, refusals of weights that do not fit, the commands and the methods."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imsim_lab.cli import main
from imsim_lab.errors import ImsimError
from support import make_bench

TINY = ["--backbone", "test_resnet", "--size", "32", "--k", "2", "--batch-size", "4", "--workers", "0"]
REQUIRE_GPU = os.environ.get("IMSIM_REQUIRE_GPU") == "1"
cuda = pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRE_GPU, reason="needs CUDA")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("bot") / "b", n_train=8)


def _paths(bench):
    from imsim_lab.data.benchmark import load_benchmark

    b = load_benchmark(bench)
    return [b.image_path(i) for i in b.training_ids]


def _one_line(e) -> str:
    s = str(e.value)
    assert len(s.splitlines()) == 1, s
    return s


# ------------------------------------------------------------------------------------------------
# the network


def test_waveblock_keeps_one_band_and_scales_the_rest_in_training_only():
    from imsim_lab.features.models.bot import WaveBlock

    wb = WaveBlock()
    x = torch.ones(2, 3, 10, 4)
    torch.manual_seed(0)
    y = wb.train()(x)
    rows = y[0, 0, :, 0]
    kept = (rows == 1.0).nonzero().flatten()
    assert len(kept) == 3 and kept.tolist() == list(range(int(kept[0]), int(kept[0]) + 3))  # 30 % of 10, contiguous
    assert torch.all(rows[rows != 1.0] == 1.5)
    assert torch.equal(wb.eval()(x), x)
    assert torch.equal(wb.mask(10, start=2)[:, 0], torch.tensor([1.5, 1.5, 1, 1, 1, 1.5, 1.5, 1.5, 1.5, 1.5]))


def test_last_stride_one_doubles_the_last_feature_map():
    import timm

    from imsim_lab.features.models.bot import BoTNet

    stock = timm.create_model("test_resnet", num_classes=0, global_pool="")
    net = BoTNet("test_resnet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert stock.forward_features(x).shape[-1] == 2
        assert net.forward_features(x).shape[-1] == 4


def test_bot_net_outputs_its_parts_in_training_and_the_unit_descriptor_in_eval():
    from imsim_lab.features.models.bot import BoTNet

    torch.manual_seed(0)
    net = BoTNet("test_resnet")
    c = net.channels
    assert net.dims == (c, 4 * c, 256) and net.projector[-1].bias.requires_grad is False
    x = torch.randn(4, 3, 32, 32)
    out = net.train()(x)
    assert out.shape == (4, c + 4 * c + 256)
    net.eval()
    with torch.no_grad():
        y = net(x)
        f = net.forward_features(x)
        g = f.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)  # eval: GeM with p = 3 fixed
        assert torch.allclose(y, F.normalize(net.head(net.projector(g)), dim=1), atol=1e-5)
    assert torch.allclose(y.norm(dim=1), torch.ones(4), atol=1e-5)
    wide = BoTNet("test_resnet", None, "wide").eval()
    assert wide.dims == (c, 4 * c) and wide(x).shape == (4, 4 * c)


def test_multiscale_descriptor_is_the_normalised_mean_of_the_unit_single_scale_ones():
    from PIL import Image

    from imsim_lab.features.models import create_model

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    multi = create_model("bot_net", backbone="test_resnet", input_size=40, scales=[32, 40, 48], device="cpu")
    got = multi.embed([multi.preprocess(img)])[0]
    singles = []
    for s in (32, 40, 48):
        m = create_model("bot_net", backbone="test_resnet", input_size=s, scales=[s], device="cpu")
        assert m.preprocess(img).shape == (3, s, s)
        singles.append(m.embed([m.preprocess(img)])[0])
    mean = np.mean(singles, axis=0)
    assert np.allclose(got, mean / np.linalg.norm(mean), atol=1e-5)
    assert multi.preprocess.output_size(70, 50) == (40, 40)


def test_registered_models_and_a_width_that_does_not_fit():
    from imsim_lab.features.models import create_model, get_config, list_models
    from imsim_lab.features.models.bot import scaled_scales

    assert {"bot_net", "d2lv_net"} <= set(list_models())
    assert get_config("bot_net").dim == 256 and get_config("bot_net").extra["scales"] == [200, 256, 320, 400]
    assert get_config("d2lv_net").dim == 8192
    assert scaled_scales(256) == [200, 256, 320, 400] and scaled_scales(96) == [75, 96, 120, 150]
    with pytest.raises(ImsimError) as e:
        create_model("d2lv_net", backbone="test_resnet", device="cpu")
    assert "pass dim=384" in _one_line(e)
    assert create_model("d2lv_net", backbone="test_resnet", dim=384, device="cpu").dim == 384


# ------------------------------------------------------------------------------------------------
# the losses


def test_label_smoothed_ce_equals_torch():
    from imsim_lab.train.bot_losses import label_smoothed_ce

    z, y = torch.randn(6, 5), torch.tensor([0, 1, 4, 2, 2, 3])
    assert torch.allclose(label_smoothed_ce(z, y, 0.1), F.cross_entropy(z, y, label_smoothing=0.1), atol=1e-6)
    assert torch.allclose(label_smoothed_ce(z, y, 0.0), F.cross_entropy(z, y), atol=1e-6)


def test_distillation_equals_torch_kl_div_times_t_squared_and_leaves_the_teacher_alone():
    from imsim_lab.train.bot_losses import distillation

    s, t = torch.randn(4, 7, requires_grad=True), torch.randn(4, 7, requires_grad=True)
    ref = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
    got = distillation(s, t, 2.0)
    assert torch.allclose(got, ref, atol=1e-6)
    got.backward()
    assert t.grad is None and s.grad is not None


def test_batch_hard_soft_triplet_equals_a_direct_computation():
    from imsim_lab.train.bot_losses import batch_hard_soft_triplet

    g = torch.randn(6, 3)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    total = 0.0
    for i in range(6):
        dp = max(float(torch.dist(g[i], g[j])) for j in range(6) if j != i and y[j] == y[i])
        dn = min(float(torch.dist(g[i], g[j])) for j in range(6) if y[j] != y[i])
        total += math.log(1 + math.exp(dp - dn))
    assert abs(float(batch_hard_soft_triplet(g, y)) - total / 6) < 1e-5
    assert float(batch_hard_soft_triplet(g, torch.arange(6))) == 0.0  # no positive anywhere


def test_total_is_the_published_weighted_sum_of_the_terms():
    from imsim_lab.train.bot_losses import PUBLISHED_BOT, PUBLISHED_D2LV, BoTLoss, BoTWeights

    assert (PUBLISHED_BOT.ce_wide, PUBLISHED_BOT.ce_head, PUBLISHED_BOT.kd, PUBLISHED_BOT.triplet) == (10, 1, 2, 1)
    loss = BoTLoss(5, (3, 12, 4))
    out, y = torch.randn(6, 19), torch.tensor([0, 0, 1, 1, 4, 4])
    t = loss.terms(out, y)
    assert torch.allclose(loss(out, y), 10 * t["ce_wide"] + t["ce_head"] + 2 * t["kd"] + t["triplet"])
    d2 = BoTLoss(5, (3, 12), PUBLISHED_D2LV)
    t2 = d2.terms(out[:, :15], y)
    assert set(t2) == {"ce_wide", "triplet"}
    assert torch.allclose(d2(out[:, :15], y), 10 * t2["ce_wide"] + t2["triplet"])
    with pytest.raises(ValueError, match="need a model with a head"):
        BoTLoss(5, (3, 12), BoTWeights())


# ------------------------------------------------------------------------------------------------
# the data


def test_k_views_per_class_are_a_function_of_index_and_epoch(bench):
    from imsim_lab.train.bot_data import KViewImages
    from imsim_lab.train.data import EpochBatches, collate

    ds = KViewImages(_paths(bench), 3, 32, (0.5,) * 3, (0.25,) * 3, seed=1)
    x, y = ds[(2, 0)]
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [2, 2, 2]
    assert np.array_equal(x, ds[(2, 0)][0]) and not np.array_equal(x, ds[(2, 1)][0])
    assert not np.array_equal(x[0], x[1])
    batch = EpochBatches(len(ds), 4, seed=0).batches(0)[0]   # P = 4 classes x K = 3 views
    xb, yb = collate([ds[k] for k in batch])
    assert xb.shape == (12, 3, 32, 32) and len(set(yb.tolist())) == 4 and np.bincount(yb.numpy()).max() == 3
    with pytest.raises(ImsimError, match="unknown view family 'nope'"):
        KViewImages(_paths(bench), 2, 32, (0.5,) * 3, (0.25,) * 3, families=["nope"])


def test_offline_copies_are_written_once_and_read_back(bench, tmp_path):
    from imsim_lab.train.bot_data import OfflineCopies, write_offline_copies

    paths = _paths(bench)[:3]
    root = write_offline_copies(paths, tmp_path / "off", copies=3, size=32, seed=0)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(folders) == 3 and all(sorted(f.name for f in d.iterdir()) == ["00.jpg", "01.jpg", "02.jpg"]
                                     for d in folders)
    before = (folders[0] / "01.jpg").read_bytes()
    # an interrupted set (one class missing) is finished; what exists is kept
    import shutil

    shutil.rmtree(folders[2])
    with pytest.raises(ImsimError, match="class folder missing"):
        OfflineCopies(root, 2, 32, (0.5,) * 3, (0.25,) * 3)
    write_offline_copies(paths, root, copies=3, size=32, seed=0)
    assert (folders[0] / "01.jpg").read_bytes() == before and folders[2].is_dir()
    ds = OfflineCopies(root, 2, 32, (0.5,) * 3, (0.25,) * 3)
    x, y = ds[(1, 0)]
    assert len(ds) == 3 and x.shape == (2, 3, 32, 32) and y.tolist() == [1, 1]
    with pytest.raises(ImsimError, match="other settings"):
        write_offline_copies(paths, root, copies=4, size=32, seed=0)


# ------------------------------------------------------------------------------------------------
# schedule, training, resume, refusals


def test_warmup_from_one_percent_then_constant_then_cosine():
    from imsim_lab.train.bot import PUBLISHED_TRAIN, schedule_steps
    from imsim_lab.train.trainer import TrainConfig, lr_at

    from dataclasses import replace

    tc = schedule_steps(replace(PUBLISHED_TRAIN, epochs=25, batch_size=1), 4)
    total = 100
    assert (tc.warmup_steps, tc.hold_steps) == (20, 20)
    lrs = [lr_at(s, total, tc) for s in range(total)]
    assert math.isclose(lrs[0], 3.5e-4 * (0.01 + 0.99 / 20)) and math.isclose(lrs[19], 3.5e-4)
    assert all(math.isclose(v, 3.5e-4) for v in lrs[20:40])
    assert math.isclose(lrs[70], 3.5e-4 * 0.5 * (1 + math.cos(math.pi * 30 / 60)))
    assert lrs[99] < 1e-3 * 3.5e-4
    # the fields added for this schedule are not recorded at their defaults (older run folders resume)
    assert "hold_steps" not in TrainConfig().to_dict() and "hold_steps" in tc.to_dict()


def _cfg(**kw):
    from dataclasses import replace

    from imsim_lab.train.bot import PUBLISHED_TRAIN, BoTConfig

    variant = kw.pop("variant", "bot")
    return BoTConfig(variant=variant, backbone="test_resnet", size=32, k=2,
                     train=replace(PUBLISHED_TRAIN, batch_size=4, epochs=2, device="cpu", **kw))


def test_resume_after_interruption_gives_the_same_weights(bench, tmp_path):
    from imsim_lab.train.bot import train_bot

    paths = _paths(bench)
    cfg = _cfg(checkpoint_every=2)  # 8 classes / P 4 = 2 steps per epoch, 4 steps
    full = train_bot(paths, tmp_path / "full", cfg)
    assert full.steps == 4 and all(np.isfinite(h["loss"]) for h in full.history)

    def stop(rec):
        if rec["step"] == 3:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train_bot(paths, tmp_path / "cut", cfg, on_step=stop)
    resumed = train_bot(paths, tmp_path / "cut", cfg)
    assert resumed.resumed_from == 2
    a, b = (torch.load(r.weights, weights_only=True) for r in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    # weights.pt is the network only, loadable by the registered model
    from imsim_lab.features.models import create_model

    m = create_model("bot_net", backbone="test_resnet", input_size=32, scales=[32], weights_path=str(full.weights),
                     device="cpu")
    assert m.embed([np.zeros((3, 32, 32), np.float32)]).shape == (1, 256)
    # a checkpoint of another class count: one line
    with pytest.raises(ImsimError) as e:
        train_bot(paths[:4], tmp_path / "full", cfg)
    assert "holds classifiers of 8 classes" in _one_line(e)


def test_barlow_twins_loss_equals_a_direct_computation():
    from imsim_lab.train.barlow import BarlowLoss, barlow_twins_loss

    za, zb = torch.randn(8, 3), torch.randn(8, 3)
    A = (za - za.mean(0)) / za.std(0, unbiased=False)
    B = (zb - zb.mean(0)) / zb.std(0, unbiased=False)
    total = 0.0
    for i in range(3):
        for j in range(3):
            c = float((A[:, i] * B[:, j]).sum() / 8)
            total += (1 - c) ** 2 if i == j else 0.0051 * c * c
    assert abs(float(barlow_twins_loss(za, zb)) - total) < 1e-3
    # perfectly correlated, decorrelated features: the minimum 0
    z = torch.linalg.qr(torch.randn(64, 4))[0] * 8
    assert float(barlow_twins_loss(z, z)) < 1e-3
    inter = torch.stack([za, zb], 1).reshape(16, 3)
    assert torch.allclose(BarlowLoss()(inter, torch.arange(8).repeat_interleave(2)), barlow_twins_loss(za, zb))


def test_barlow_trunk_initialises_bot_and_foreign_weights_are_one_line(bench, tmp_path):
    from dataclasses import replace

    from imsim_lab.features.models.bot import BoTNet
    from imsim_lab.features.models.weights import sha256_file
    from imsim_lab.train.barlow import BarlowConfig, load_trunk, train_barlow
    from imsim_lab.train.bot import train_bot

    cfg = BarlowConfig(backbone="test_resnet", size=32, train=replace(BarlowConfig().train, batch_size=4, epochs=1,
                                                                      optimizer="adam", lr=1e-3, device="cpu"))
    res = train_barlow(_paths(bench), tmp_path / "barlow", cfg)
    trunk = tmp_path / "barlow" / "trunk.pt"
    assert res.steps == 2 and trunk.is_file()
    net = BoTNet("test_resnet")
    load_trunk(net.trunk, tmp_path / "barlow", sha256_file(trunk))
    saved = torch.load(trunk, weights_only=True)
    assert all(torch.equal(net.trunk.state_dict()[k], v) for k, v in saved.items())
    # a BoT run starts from it
    out = train_bot(_paths(bench), tmp_path / "bot", _cfg(max_steps=1), init_trunk=trunk)
    assert out.steps == 1
    # wrong checksum, a URL without one, weights of another trunk: one line each
    with pytest.raises(ImsimError) as e:
        load_trunk(net.trunk, trunk, "0" * 64)
    assert "wrong sha256" in _one_line(e)
    with pytest.raises(ImsimError) as e:
        load_trunk(net.trunk, "https://example.org/resnet50.pth")
    assert "needs their sha256" in _one_line(e)
    import timm

    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), other)
    with pytest.raises(ImsimError) as e:
        load_trunk(net.trunk, other, sha256_file(other))
    assert "do not fit" in _one_line(e) and "resnet18.pth" in str(e.value)


def test_released_layout_loads_with_weights_only(tmp_path):
    """The released file has torchvision's names without fc; timm's ResNet shares them."""
    import timm

    from imsim_lab.features.models.bot import BoTNet
    from imsim_lab.features.models.weights import sha256_file
    from imsim_lab.train.barlow import load_trunk

    src = timm.create_model("test_resnet", num_classes=0).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(src, path)
    net = BoTNet("test_resnet")
    assert load_trunk(net.trunk, path, sha256_file(path)) == path
    assert all(torch.equal(net.trunk.state_dict()[k], v) for k, v in src.items())
    path.write_bytes(b"\x80\x04not torch")
    with pytest.raises(ImsimError) as e:
        load_trunk(net.trunk, path, sha256_file(path))
    assert "not a readable weights file" in _one_line(e)


# ------------------------------------------------------------------------------------------------
# the commands and the methods


def _cli(recipe, bench, out, *extra):
    return main(["train", recipe, "--bench", str(bench), "--out", str(out), *TINY, *extra])


def test_commands_train_print_the_evaluation_and_refuse_bad_input(bench, tmp_path, capsys):
    assert _cli("bot", bench, tmp_path / "bot", "--max-steps", "2", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["steps"] == 2 and s["weights"].endswith("weights.pt") and s["model"] == "bot_net"
    assert s["evaluate"].startswith(f"imsim-lab run bot --bench {bench}") and "model.scales=[25, 32, 40, 50]" in s["evaluate"]
    assert _cli("d2lv", bench, tmp_path / "d2lv", "--max-steps", "1", "--families", "blur,rotate", "--json") == 0
    assert json.loads(capsys.readouterr().out)["model"] == "d2lv_net"
    off = tmp_path / "off"
    assert _cli("bot", bench, tmp_path / "botoff", "--max-steps", "1", "--offline", str(off), "--copies", "3") == 0
    assert len([p for p in off.iterdir() if p.is_dir()]) == 8
    capsys.readouterr()
    assert main(["train", "barlow", "--bench", str(bench), "--out", str(tmp_path / "bt"), "--backbone", "test_resnet",
                 "--size", "32", "--batch-size", "4", "--epochs", "1", "--optimizer", "adam", "--warmup-epochs", "0",
                 "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trunk"].endswith("trunk.pt")
    for recipe, extra, msg in (("bot", ["--batch-size", "16"], "cannot fill one global batch"),
                               ("bot", ["--backbone", "nope_net"], "not a timm model"),
                               ("bot", ["--init-trunk", str(tmp_path / "missing.pt")], "trunk weights file not found"),
                               ("bot", ["--init-trunk", "https://example.org/r50.pth"], "needs their sha256"),
                               ("d2lv", ["--families", "nope"], "unknown view family")):
        fresh = tmp_path / f"bad{len(os.listdir(tmp_path))}"
        assert _cli(recipe, bench, fresh, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err


def test_methods_bot_and_stretch_run_on_trained_weights(bench, tmp_path):
    from imsim_lab.features.models.weights import sha256_file
    from imsim_lab.methods import get_method
    from imsim_lab.methods.post import prepare
    from imsim_lab.methods.postprocess import fit_pca, l2_normalize, stretch
    from imsim_lab.runner import RunOptions, run_method
    from imsim_lab.features import ExtractConfig
    from imsim_lab.train.bot import train_bot

    res = train_bot(_paths(bench), tmp_path / "w", _cfg(max_steps=1))
    args = {"model.backbone": "test_resnet", "model.input_size": 32, "model.scales": [25, 32, 40],
            "model.weights_path": str(res.weights), "model.weights_sha256": sha256_file(res.weights)}
    opts = RunOptions(device="cpu", extract=ExtractConfig(batch_size=4, num_workers=0))
    for name in ("bot", "bot+stretch"):
        r = run_method(name, bench, tmp_path / name, overrides=args, opts=opts)
        assert 0.0 <= r.metrics["isc2021"]["micro_ap"] <= 1.0
        assert r.config["model"]["extra"]["scales"] == [25, 32, 40]
    # bot+stretch = PCA + L2, then stretching of the queries only
    rng = np.random.default_rng(0)
    xq, xb, xt = (l2_normalize(rng.standard_normal((n, 16)).astype(np.float32)) for n in (5, 6, 20))
    prep = prepare(get_method("bot+stretch"), xq, xb, xt, {"dim": 8, "eigen_power": 0.0, "c": 2.5, "n": 5})
    pca = fit_pca(xt, 8)
    yq, yb, yt = (l2_normalize(pca.apply(a)) for a in (xq, xb, xt))
    assert np.allclose(prep.xq, stretch(yq, yt, 2.5, 5), atol=1e-5) and np.allclose(prep.xb, yb, atol=1e-5)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_training_with_amp_and_multiscale_extraction(bench, tmp_path, amp):
    from imsim_lab.features.models import create_model
    from imsim_lab.train.bot import train_bot

    cfg = _cfg(max_steps=2, amp=amp)
    from dataclasses import replace

    cfg = replace(cfg, train=replace(cfg.train, device="cuda"))
    res = train_bot(_paths(bench), tmp_path / amp, cfg)
    assert res.weights.is_file() and all(np.isfinite(h["loss"]) for h in res.history)
    m = create_model("bot_net", backbone="test_resnet", input_size=32, scales=[25, 32, 40],
                     weights_path=str(res.weights), device="cuda")
    from PIL import Image

    img = Image.new("RGB", (50, 40), (120, 30, 200))
    y = m.embed([m.preprocess(img)] * 2)
    assert y.shape == (2, 256) and np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-3)


@pytest.mark.slow
def test_two_process_gloo_run_of_the_command(bench, tmp_path):
    """``torchrun`` with 2 gloo processes: each rank trains on its half of every batch of classes, rank 0
    writes the run (DDP is not equal to one process here: on the CPU, without SyncBatchNorm, BatchNorm
    sees a rank's own half; the losses alone are, tests/test_train_bot_ddp.py)."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(31500 + os.getpid() % 1000), "-m", "imsim_lab.train", "bot", "--bench", str(bench), "--out", str(out),
           *TINY[:-4], "--batch-size", "2", "--workers", "0", "--max-steps", "2", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["train"]["batch_size"] == 2
    hist = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2] and (out / "weights.pt").is_file()
