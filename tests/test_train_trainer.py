"""The shared trainer: exact resume after an interruption, accumulation, refusals, DDP with gloo,
AMP on CUDA (marked ``gpu``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from imsim_lab.train import TrainConfig, TrainError, XBMContrastiveLoss, load_checkpoint, lr_at, train
from imsim_lab.train.trainer import resolve_amp, rng_state, set_rng_state

REQUIRE_GPU = os.environ.get("IMSIM_REQUIRE_GPU") == "1"  # scripts/gpu_checks.sh: no silent skip
cuda = pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRE_GPU, reason="needs CUDA")

# A BN-free net and an array dataset shared (as source) with the torchrun worker below.
COMMON = '''
import numpy as np, torch
from torch import nn

class Items:
    """(index, epoch) -> two noisy views of a fixed random 'image' (the noise depends on the epoch)."""
    def __init__(self, n=32, size=8):
        self.n, self.size = n, size
    def __len__(self):
        return self.n
    def __getitem__(self, key):
        i, e = key
        base = np.random.default_rng(i).standard_normal((3, self.size, self.size)).astype(np.float32)
        g = np.random.default_rng([i, e])
        views = np.stack([base + 0.3 * g.standard_normal(base.shape).astype(np.float32) for _ in range(2)])
        return views, np.array([i, i], np.int64)

def make_net(dropout=0.0):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(dropout), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 16))
'''
ns: dict = {}
exec(COMMON, ns)
Items, make_net = ns["Items"], ns["make_net"]


def _weights(path):
    return torch.load(path, weights_only=True)


def _run(out, cfg, interrupt_at=None, dropout=0.1):
    net = make_net(dropout)
    loss = XBMContrastiveLoss(16, 40)

    def stop(rec):
        if interrupt_at is not None and rec["step"] == interrupt_at:
            raise KeyboardInterrupt("simulated kill")

    return train(net, loss, Items(), cfg, out, on_step=stop)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.05, checkpoint_every=3, seed=1)  # 8 steps / epoch
    full = _run(tmp_path / "full", cfg)
    assert full.steps == full.total_steps == 24
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", cfg, interrupt_at=11)  # last checkpoint at step 9, mid-epoch 2
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["step"] == 9 and int(state["criterion"]["ptr"]) > 0
    assert not (tmp_path / "cut" / "weights.pt").exists()
    resumed = _run(tmp_path / "cut", cfg)
    assert resumed.resumed_from == 9 and resumed.steps == 24
    a, b = _weights(full.weights), _weights(resumed.weights)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]
    # a finished run resumed again does nothing
    again = _run(tmp_path / "cut", cfg)
    assert again.resumed_from == 24 and again.steps == 24


def test_a_resume_may_change_the_loader_workers(tmp_path):
    """The worker count is how a run executes, not what it computes: a run cut at step 5 with no
    worker resumes with one and ends with the weights of the uninterrupted run."""
    from dataclasses import replace

    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.05, checkpoint_every=5, seed=1)
    full = _run(tmp_path / "full", cfg)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", cfg, interrupt_at=6)
    resumed = _run(tmp_path / "cut", replace(cfg, num_workers=1))
    assert resumed.resumed_from == 5 and resumed.steps == full.steps
    a, b = _weights(full.weights), _weights(resumed.weights)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # what it computes is still refused, and the message names the field
    with pytest.raises(TrainError, match=r"train\.lr differ"):
        _run(tmp_path / "cut", replace(cfg, lr=0.01))


def test_sync_loader_gives_the_batches_of_the_in_process_loader(tmp_path):
    """loader="sync" (two forked processes make each batch between the steps) trains exactly the
    network that the in-process loader trains, and "auto" picks it on a CPU with two workers."""
    from dataclasses import replace

    from imsim_lab.train.trainer import resolve_loader

    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.05, checkpoint_every=0, seed=1)
    inline = _run(tmp_path / "inline", cfg)
    sync = _run(tmp_path / "sync", replace(cfg, num_workers=2, loader="sync"))
    a, b = _weights(inline.weights), _weights(sync.weights)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in inline.history] == [r["loss"] for r in sync.history]
    assert resolve_loader("auto", "cpu", 2) == "sync" and resolve_loader("auto", "cpu", 1) == "overlap"
    assert resolve_loader("auto", "cuda", 4) == "overlap" and resolve_loader("sync", "cpu", 0) == "inline"
    with pytest.raises(ValueError, match="loader"):
        TrainConfig(loader="threads")


def test_sync_loader_names_a_bad_item_and_leaves_no_process(tmp_path):
    import multiprocessing

    from imsim_lab.train.data import TrainDataError

    class Broken(Items):
        def __getitem__(self, key):
            if key[0] == 5:
                raise TrainDataError("/data/T000005.jpg: unreadable training image (OSError: truncated)")
            return super().__getitem__(key)

    with pytest.raises(TrainDataError, match="T000005.jpg: unreadable"):
        train(make_net(), XBMContrastiveLoss(16, 40), Broken(), TrainConfig(batch_size=4, num_workers=2, loader="sync",
                                                                          checkpoint_every=0), tmp_path / "r")
    assert not multiprocessing.active_children()


def test_other_configuration_is_refused(tmp_path):
    _run(tmp_path / "r", TrainConfig(epochs=1, batch_size=4, max_steps=2))
    with pytest.raises(TrainError, match="another configuration"):
        _run(tmp_path / "r", TrainConfig(epochs=1, batch_size=4, max_steps=2, lr=0.01))


def test_corrupt_checkpoint_is_named(tmp_path):
    out = tmp_path / "r"
    _run(out, TrainConfig(epochs=1, batch_size=4, max_steps=2))
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="checkpoint.pt: unreadable checkpoint"):
        _run(out, TrainConfig(epochs=1, batch_size=4, max_steps=2))


def test_gradient_accumulation_matches_a_large_batch(tmp_path):
    class MeanNorm(nn.Module):  # a per-sample loss: accumulation of 2 x 4 == one batch of 8
        def forward(self, x, y):
            return (x ** 2).sum(1).mean()

    res = {}
    for name, cfg in {"big": TrainConfig(batch_size=8, max_steps=3, lr=0.01, seed=3),
                      "acc": TrainConfig(batch_size=4, accum_steps=2, max_steps=3, lr=0.01, seed=3)}.items():
        net = make_net()
        train(net, MeanNorm(), Items(), cfg, tmp_path / name)
        res[name] = {k: v.clone() for k, v in net.state_dict().items()}
    for k in res["big"]:
        assert torch.allclose(res["big"][k], res["acc"][k], atol=1e-6), k


def test_learning_rate_schedules():
    c = TrainConfig(lr=0.1, lr_schedule="linear")
    assert lr_at(0, 10, c) == pytest.approx(0.1) and lr_at(5, 10, c) == pytest.approx(0.05)
    c = TrainConfig(lr=0.1, lr_schedule="cosine", warmup_steps=2)
    assert lr_at(0, 10, c) == pytest.approx(0.05) and lr_at(1, 10, c) == pytest.approx(0.1)
    assert lr_at(9, 10, c) < 0.01
    assert lr_at(7, 10, TrainConfig(lr=0.3)) == 0.3
    assert resolve_amp("auto", "cpu") is None and resolve_amp("bf16", "cpu") is None
    with pytest.raises(ValueError):
        TrainConfig(amp="fp8")


def test_checkpoint_holds_only_safe_types(tmp_path):
    _run(tmp_path / "r", TrainConfig(epochs=1, batch_size=4, max_steps=2))
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)  # raises on pickled objects
    assert {"model", "criterion", "optimizer", "rng", "step", "history"} <= set(state)
    json.loads(state["config"])
    assert json.loads((tmp_path / "r" / "history.json").read_text())[-1]["step"] == 2


WORKER = COMMON + '''
import sys
from imsim_lab.distributed import init_distributed
from imsim_lab.train import TrainConfig, XBMContrastiveLoss, train
rank, world = init_distributed()
out, batch = sys.argv[1], int(sys.argv[2])
res = train(make_net(), XBMContrastiveLoss(16, 40), Items(), TrainConfig(epochs=2, batch_size=batch, lr=0.05,
            checkpoint_every=2, seed=5), out)
from imsim_lab.distributed import destroy_distributed
destroy_distributed()
# the group is freed, and gloo's threads joined, before the interpreter ends: a thread left running
# into finalisation aborts the process when it releases a tensor (exit -6 after the work is saved)
import os
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
assert not [t for t in threads if "gloo" in t], threads
'''


def _ddp_and_one_process(tmp_path, worker: str, port_base: int) -> None:
    """Run ``worker`` under torchrun with 2 gloo processes of batch 4 into tmp_path/ddp, then as
    one process of batch 8 into tmp_path/one."""
    script = tmp_path / "worker.py"
    script.write_text(worker)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for cmd in (["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                 str(port_base + os.getpid() % 1000), str(script), str(tmp_path / "ddp"), "4"],
                [str(script), str(tmp_path / "one"), "8"]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_one_process_with_the_global_batch(tmp_path):
    _ddp_and_one_process(tmp_path, WORKER, 29500)
    cfg = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert cfg["world_size"] == 2
    a, b = _weights(tmp_path / "ddp" / "weights.pt"), _weights(tmp_path / "one" / "weights.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    ha = json.loads((tmp_path / "ddp" / "history.json").read_text())
    hb = json.loads((tmp_path / "one" / "history.json").read_text())
    assert np.allclose([h["loss"] for h in ha], [h["loss"] for h in hb], atol=1e-5)


CRITERION_WORKER = COMMON + '''
import sys
from imsim_lab.distributed import init_distributed
from imsim_lab.train import TrainConfig, XBMContrastiveLoss, train

class WithParam(nn.Module):
    """The XBM loss plus a learnable term whose gradient depends on this rank's own embeddings."""
    def __init__(self):
        super().__init__()
        self.inner = XBMContrastiveLoss(16, 40)
        self.w = nn.Parameter(torch.ones(16))
    def forward(self, e, y):
        return self.inner(e, y) + (self.w * e).mean(0).sum()

rank, world = init_distributed()
train(make_net(), WithParam(), Items(), TrainConfig(epochs=1, batch_size=int(sys.argv[2]), lr=0.05, seed=5),
      sys.argv[1])
from imsim_lab.distributed import destroy_distributed
destroy_distributed()
'''


@pytest.mark.slow
def test_ddp_averages_the_criterion_gradients_too(tmp_path):
    """DDP averages the model's gradients only: the criterion's parameters would drift per rank."""
    _ddp_and_one_process(tmp_path, CRITERION_WORKER, 30500)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("ddp", "one"))
    assert not torch.allclose(a["criterion"]["w"], torch.ones(16))  # it did learn
    assert torch.allclose(a["criterion"]["w"], b["criterion"]["w"], atol=1e-5)
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k


def test_cuda_rng_state_is_the_current_devices(monkeypatch):
    """Checkpoints hold one CUDA generator state, the current GPU's; older ones held one per GPU."""
    got = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": got.append(int(state[0])))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("touched every GPU"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("touched every GPU"))
    state = rng_state()
    assert [int(t[0]) for t in state["cuda"]] == [7]
    set_rng_state(state)
    set_rng_state({**state, "cuda": [torch.tensor([5], dtype=torch.uint8), torch.tensor([6], dtype=torch.uint8)]})
    assert got == [7, 6]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_cuda_training_with_amp(tmp_path, amp):
    """On the GPU: autocast (bf16, or fp16 with the GradScaler), pinned batches, CUDA RNG in the
    checkpoint; the losses follow the CPU run of the same data and initial weights."""
    cfg = dict(epochs=1, batch_size=8, lr=0.05, checkpoint_every=2, seed=1)
    ref = _run(tmp_path / "cpu", TrainConfig(**cfg, device="cpu", amp="off"), dropout=0.0)
    res = _run(tmp_path / amp, TrainConfig(**cfg, device="cuda", amp=amp), dropout=0.0)
    losses, ref_losses = [r["loss"] for r in res.history], [r["loss"] for r in ref.history]
    assert res.steps == 4 and np.isfinite(losses).all()
    state = load_checkpoint(tmp_path / amp / "checkpoint.pt")
    assert len(state["rng"]["cuda"]) == 1
    assert bool(state["scaler"]) == (amp == "fp16")  # the GradScaler runs for fp16 only
    w, w0 = _weights(res.weights), make_net().state_dict()
    assert all(torch.isfinite(v).all() for v in w.values())
    assert any(not torch.equal(w[k].cpu(), w0[k]) for k in w)  # it trained
    if amp != "fp16":  # fp16 may skip the first steps while the GradScaler finds its scale
        # TF32 convolutions (off) and bf16 (about 3 digits) keep the losses within a few percent
        np.testing.assert_allclose(losses, ref_losses, rtol=0.05, atol=0.02)


def _train_net(out, cfg):
    net = make_net()
    res = train(net, XBMContrastiveLoss(16, 40), Items(), cfg, out)
    return net, res


def test_channels_last_trains_the_same_network_and_keeps_the_layout(tmp_path):
    """channels_last="on" (the CUDA default, forced here on the CPU) keeps the conv weights and the
    4-D batches channels-last; the run follows the contiguous one to float rounding."""
    cfg = dict(epochs=1, batch_size=8, lr=0.05, checkpoint_every=0, seed=1, device="cpu")
    net_on, on = _train_net(tmp_path / "on", TrainConfig(**cfg, channels_last="on"))
    net_off, off = _train_net(tmp_path / "off", TrainConfig(**cfg, channels_last="off"))
    assert net_on[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not net_off[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose([r["loss"] for r in on.history], [r["loss"] for r in off.history], rtol=1e-4, atol=1e-5)
    a, b = _weights(on.weights), _weights(off.weights)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)
    # "auto" is contiguous on the CPU, and the layout is not part of what a resume must match
    net_auto, _ = _train_net(tmp_path / "off", TrainConfig(**cfg))
    assert not net_auto[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig(channels_last="yes")


@pytest.mark.gpu
@cuda
def test_cuda_trains_channels_last_by_default_with_amp(tmp_path):
    """On the GPU the trainer's default is channels-last (with bf16 autocast): the weights stay in
    that layout and the losses follow the contiguous GPU run."""
    cfg = dict(epochs=1, batch_size=8, lr=0.05, checkpoint_every=0, seed=1, device="cuda", amp="bf16")
    net, res = _train_net(tmp_path / "auto", TrainConfig(**cfg))
    _, ref = _train_net(tmp_path / "off", TrainConfig(**cfg, channels_last="off"))
    assert net[0].weight.is_cuda and net[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose([r["loss"] for r in res.history], [r["loss"] for r in ref.history], rtol=0.05,
                               atol=0.02)


KILLABLE = COMMON + '''
import sys, time
from imsim_lab.train import TrainConfig, XBMContrastiveLoss, train

class SlowItems(Items):
    def __getitem__(self, key):
        time.sleep(0.03)
        return super().__getitem__(key)

train(make_net(0.1), XBMContrastiveLoss(16, 40), SlowItems(), TrainConfig(epochs=3, batch_size=4, lr=0.05,
      checkpoint_every=2, seed=2), sys.argv[1])
'''


@pytest.mark.slow
def test_resume_after_a_real_kill(tmp_path):
    import signal
    import time

    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (out / "checkpoint.pt").is_file() and load_checkpoint(out / "checkpoint.pt")["step"] >= 6:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "weights.pt").exists()
    for target in (out, tmp_path / "whole"):
        r = subprocess.run([sys.executable, str(script), str(target)], env=env, capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(out / "weights.pt"), _weights(tmp_path / "whole" / "weights.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
