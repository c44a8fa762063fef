"""SSCD: InfoNCE against pytorch-metric-learning's NT-Xent and a from-scratch version with several
positives, the entropy term from scratch, content-set positives of mixed images, LARS by hand,
the views and mixup, training and its command (resume, refusals), two gloo processes against one."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imsim_lab.cli import main
from imsim_lab.train.infonce import SSCDLoss, entropy_loss, infonce_loss, positive_mask
from support import make_bench

TINY = ["--backbone", "test_resnet", "--size", "32", "--dim", "16", "--batch-size", "8", "--workers", "0",
        "--lam", "10", "--warmup-epochs", "0"]


def _scratch(z, sets, tau):
    """InfoNCE and the entropy term with numpy loops over anchors (infonce module docstring)."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    nce, ent = [], []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        logits = np.array([z[i] @ z[j] / tau for j in others])
        lse = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
        pos = [k for k, j in enumerate(others) if sets[i] & sets[j]]
        if pos:
            nce.append(-np.mean([logits[k] - lse for k in pos]))
        negs = [np.linalg.norm(z[i] - z[j]) for j in others if not sets[i] & sets[j]]
        if negs:
            ent.append(-np.log(min(negs)))
    return float(np.mean(nce)), float(np.mean(ent))


def test_infonce_with_two_views_equals_nt_xent_of_pytorch_metric_learning():
    from pytorch_metric_learning.losses import NTXentLoss

    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g)
    y = torch.arange(8).repeat_interleave(2)
    ours = infonce_loss(z, y, 0.05)
    assert torch.allclose(ours, NTXentLoss(temperature=0.05)(z, y), rtol=1e-4)
    a, e = _scratch(z.numpy(), [{int(v)} for v in y], 0.05)
    assert math.isclose(float(ours), a, rel_tol=1e-4)
    assert math.isclose(float(entropy_loss(z, y)), e, rel_tol=1e-5)


def test_mixed_images_are_positives_of_every_image_they_show():
    y = torch.tensor([[0, -1], [0, 3], [1, -1], [3, -1], [2, 1]])
    m = positive_mask(y, y)
    assert m[1].tolist() == [True, True, False, True, False]  # {0,3} shares with 0 and 3
    assert m[4].tolist() == [False, False, True, False, True]  # {2,1} with 1
    assert not m[0, 2] and not m[2, 3]
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 6, generator=g)
    sets = [{v for v in row if v >= 0} for row in y.tolist()]
    a, e = _scratch(z.numpy(), sets, 0.1)
    assert math.isclose(float(infonce_loss(z, y, 0.1)), a, rel_tol=1e-5)
    assert math.isclose(float(entropy_loss(z, y)), e, rel_tol=1e-5)
    loss = SSCDLoss(0.1, 30.0)
    assert math.isclose(float(loss(z, y)), a + 30 * e, rel_tol=1e-5)
    assert loss.last == pytest.approx({"infonce": a, "entropy": e}, rel=1e-5)


def test_the_entropy_term_pushes_nearest_neighbours_apart():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(32, 8, generator=g)
    z[1] = z[0] + 0.01 * torch.randn(8, generator=g)  # two different images almost on top of each other
    z.requires_grad_(True)
    y = torch.arange(32)
    entropy_loss(z, y).backward()
    zz = z.detach().clone()
    step = zz - 0.01 * z.grad
    before = (F.normalize(zz[0:1]) - F.normalize(zz[1:2])).norm()
    after = (F.normalize(step[0:1]) - F.normalize(step[1:2])).norm()
    assert after > before


def test_lars_step_by_hand():
    from imsim_lab.train.lars import LARS

    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, momentum=0.9, weight_decay=0.1, trust=0.01)
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[0.0, 1.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    r = 0.01 * 5.0 / g.norm()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * r * g)
    assert torch.allclose(b.detach(), torch.tensor([0.0]))  # 1-D: plain momentum SGD, no decay, no trust ratio
    w.grad, b.grad = torch.zeros(1, 2), torch.zeros(1)
    opt.step()  # the momentum carries on
    assert torch.allclose(b.detach(), torch.tensor([-0.9]))


def test_mixup_and_cutmix():
    from imsim_lab.train.sscd_data import mix_arrays

    a, b = np.zeros((3, 20, 20), np.float32), np.ones((3, 20, 20), np.float32)
    out, kind, lam = mix_arrays(a, b, np.random.default_rng(0), switch_p=0.0)
    assert kind == "mixup" and np.allclose(out, 1 - lam)
    out, kind, lam = mix_arrays(a, b, np.random.default_rng(0), switch_p=1.0)
    assert kind == "cutmix" and set(np.unique(out)) <= {0.0, 1.0} and math.isclose(out.mean(), 1 - lam, abs_tol=1e-6)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("sscd") / "b", n_train=16)


def _paths(bench):
    from imsim_lab.data.benchmark import load_benchmark

    b = load_benchmark(bench)
    return [b.image_path(i) for i in b.training_ids]


def test_views_are_reproducible_and_mixed_items_carry_both_ids(bench):
    from imsim_lab.train.sscd_data import SSCDViews

    ds = SSCDViews(_paths(bench), "advanced", 32, (0.5,) * 3, (0.5,) * 3, seed=1, mix_p=1.0)
    x, y = ds[(3, 2)]
    x2, y2 = ds[(3, 2)]
    assert x.shape == (2, 3, 32, 32) and np.array_equal(x, x2) and np.array_equal(y, y2)
    assert y[0].tolist() == [3, -1] and y[1, 0] == 3 and 0 <= y[1, 1] < 16 and y[1, 1] != 3
    plain = SSCDViews(_paths(bench), "strong_blur", 32, (0.5,) * 3, (0.5,) * 3, seed=1)
    assert plain[(3, 2)][1].tolist() == [[3, -1], [3, -1]]
    assert not np.array_equal(plain[(3, 2)][0][0], plain[(3, 3)][0][0])  # another epoch, another view


def _cli(bench, out, *extra):
    return main(["train", "sscd", "--bench", str(bench), "--out", str(out), *TINY, *extra])


def test_command_trains_resumes_prints_the_evaluation_and_refuses_bad_input(bench, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(bench, out, "--epochs", "2", "--max-steps", "2", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["steps"] == 2 and s["weights"].endswith("weights.pt")
    assert s["evaluate"].startswith(f"imsim-lab run sscd_repro --bench {bench}")
    assert "model.short_side=41" in s["evaluate"]
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["train"]["optimizer"] == "lars" and cfg["train"]["lr"] == pytest.approx(0.3 * 8 / 256)
    assert cfg["run"]["config"]["lam"] == 10 and cfg["run"]["config"]["mix_p"] == 0.05
    assert _cli(bench, out, "--epochs", "2", "--max-steps", "3", "--json") == 2  # another configuration
    capsys.readouterr()
    assert _cli(bench, out, "--epochs", "2", "--max-steps", "2", "--json") == 0  # the same: nothing to redo
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 2
    for extra, msg in ((["--init", str(out / "weights.pt"), "--dim", "32"], "does not fit"),
                       (["--init", str(out / "weights.pt"), "--backbone", "test_efficientnet"], "does not fit"),
                       (["--batch-size", "32"], "cannot fill one global batch"),
                       (["--aug", "nope"], "aug must be one of")):
        fresh = tmp_path / f"bad{len(os.listdir(tmp_path))}"
        args = [*TINY, *extra]
        assert main(["train", "sscd", "--bench", str(bench), "--out", str(fresh), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
        assert not fresh.exists()


WORKER = '''
import sys
import numpy as np, torch
from torch import nn
from imsim_lab.distributed import init_distributed
from imsim_lab.train import TrainConfig, train
from imsim_lab.train.infonce import SSCDLoss

class Items:
    """Two noisy copies of 16 vectors; item 5 is mixed with item 9 (content ids {5, 9})."""
    def __init__(self):
        g = np.random.default_rng(0)
        self.x = g.standard_normal((16, 12)).astype(np.float32)
        self.noise = g.standard_normal((16, 2, 12)).astype(np.float32) * 0.1
    def __len__(self):
        return 16
    def __getitem__(self, key):
        i, e = key
        x = self.x[i][None] + self.noise[i]
        y = np.array([[i, -1], [i, 9 if i == 5 else -1]], np.int64)
        return x[:, :, None, None].repeat(2, 2).repeat(2, 3), y

torch.manual_seed(0)
net = nn.Sequential(nn.Flatten(), nn.Linear(48, 8))
init_distributed()
train(net, SSCDLoss(0.1, 5.0), Items(), TrainConfig(epochs=2, batch_size=int(sys.argv[2]), lr=0.5, optimizer="lars",
      lr_schedule="cosine", warmup_steps=1, seed=3), sys.argv[1])
from imsim_lab.distributed import destroy_distributed
destroy_distributed()
'''


@pytest.mark.slow
def test_two_gloo_processes_score_against_the_global_batch(tmp_path):
    """Each rank's anchors meet every image of the global batch: 2 x 4 images train as 1 x 8 do."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for cmd in (["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                 str(31500 + os.getpid() % 1000), str(script), str(tmp_path / "ddp"), "4"],
                [str(script), str(tmp_path / "one"), "8"]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "ddp" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "weights.pt", weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("IMSIM_REQUIRE_GPU") != "1", reason="needs CUDA")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_training_with_amp_and_the_loss_on_the_gpu(bench, tmp_path, amp):
    from imsim_lab.train.sscd import SSCDConfig, train_sscd
    from imsim_lab.train.trainer import TrainConfig

    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(24, 16, generator=g), torch.arange(12).repeat_interleave(2)
    loss = SSCDLoss(0.05, 10.0)
    assert torch.allclose(loss(z.cuda(), y.cuda()).cpu(), loss(z, y), rtol=1e-4)
    cfg = SSCDConfig(backbone="test_resnet", size=32, dim=16, lam=10, mix_p=0.5,
                     train=TrainConfig(optimizer="lars", lr=0.3, lr_schedule="cosine", batch_size=8, max_steps=2,
                                       amp=amp, device="cuda", checkpoint_every=0))
    res = train_sscd(_paths(bench), tmp_path / amp, cfg)
    assert res.weights.is_file() and all(np.isfinite(h["loss"]) for h in res.history)


def test_jpegs_decode_at_the_resolution_the_views_need(tmp_path):
    from PIL import Image

    from imsim_lab.errors import ImsimError
    from imsim_lab.train.ssquare_data import load_for_size

    p = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(p)
    small, full = load_for_size(p, 32), load_for_size(p, 200)
    assert min(small.size) >= 128 and small.size[0] < 640 and small.mode == "RGB"  # DCT scaling: 1/2 or less
    assert full.size == (640, 480)
    with pytest.raises(ImsimError, match="not found"):
        load_for_size(tmp_path / "missing.jpg", 32)


def test_each_dataset_decodes_no_more_than_its_smallest_crop_needs(tmp_path, monkeypatch):
    """S-square's first crop keeps >= 80 % of the area, so a 640 x 480 JPEG for 64 px views decodes at
    1/4 (160 x 120: the smallest crop's short side 107 >= 64); SSCD's crops go down to 8 % and keep
    the 1/2 scale (240 >= 64 x 3.54). Neither upscales its smallest crop."""
    import math

    from PIL import Image

    import imsim_lab.train.ssquare_data as sq
    from imsim_lab.train.sscd_data import SSCDViews
    from imsim_lab.train.ssquare_data import ClassImages, crop_factor

    assert crop_factor(1.0) == 1.0 and crop_factor(0.25) == 2.0
    with pytest.raises(ValueError):
        crop_factor(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"T{i}.jpg"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    seen = []
    real = sq.load_for_size

    def spy(path, size, factor=4):
        im = real(path, size, factor)
        seen.append((factor, im.size))
        return im

    monkeypatch.setattr(sq, "load_for_size", spy)
    ClassImages(paths, 64, 0.7, (0.5,) * 3, (0.5,) * 3)[(0, 0)]
    (factor, (w, h)), = seen
    assert (w, h) == (160, 120) and math.sqrt(0.8) * h >= 64
    seen.clear()
    import imsim_lab.train.sscd_data as sd

    monkeypatch.setattr(sd, "load_for_size", spy)
    SSCDViews(paths, "advanced", 64, (0.5,) * 3, (0.5,) * 3)[(0, 0)]
    (factor, (w, h)), = seen
    assert (w, h) == (320, 240) and math.sqrt(0.08) * h >= 64
