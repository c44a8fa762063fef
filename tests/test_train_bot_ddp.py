"""Bag of Tricks under DDP: two gloo processes on the CPU, each with half of the batch (its own
classes, P/2 x K views), give the loss and the gradients of one process with the whole batch
(the classifiers' CE, the KD and the batch-hard triplet mined over the global batch), and the
trainer's weights after a few steps match."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = '''
import sys
import numpy as np, torch
from torch import nn
from imsim_lab.distributed import destroy_distributed, dist_info, init_distributed, all_reduce_grads
from imsim_lab.train import TrainConfig, train
from imsim_lab.train.bot_losses import PUBLISHED_BOT, BoTLoss

P, K, DIMS = 8, 2, (4, 16, 8)          # 8 classes x 2 views; output (gem 4, wide 16, head 8)

class Views:
    """Class i: K noisy views of one vector (the layout of KViewImages: item -> (K views, [i] * K))."""
    def __init__(self):
        g = np.random.default_rng(0)
        self.x = g.standard_normal((P, 12)).astype(np.float32)
        self.noise = g.standard_normal((P, K, 12)).astype(np.float32) * 0.5
    def __len__(self):
        return P
    def __getitem__(self, key):
        i, e = key if isinstance(key, tuple) else (key, 0)
        return self.x[i][None] + self.noise[i], np.full(K, i, np.int64)

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, sum(DIMS))), BoTLoss(P, DIMS, PUBLISHED_BOT, seed=1)

out = sys.argv[1]
init_distributed()
rank, world = dist_info()
# 1. one step by hand: rank r holds classes [r P / world, (r + 1) P / world)
net, crit = make()
ds = Views()
mine = range(rank * P // world, (rank + 1) * P // world)
x = torch.from_numpy(np.concatenate([ds[i][0] for i in mine]))
y = torch.from_numpy(np.concatenate([ds[i][1] for i in mine]))
model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
loss = crit(model(x), y)
loss.backward()
if world > 1:
    import torch.distributed as dist
    all_reduce_grads(crit, world)
    total = loss.detach().clone()
    dist.all_reduce(total)
    total /= world
else:
    total = loss.detach()
grads = {**{f"net.{k}": p.grad for k, p in net.named_parameters()}, **{f"crit.{k}": p.grad for k, p in crit.named_parameters()}}
if rank == 0:
    torch.save({"loss": total, "grads": grads}, f"{out}/step.pt")
# 2. the trainer: 2 epochs of P / (batch x world) steps; SGD, as Adam would blow the rounding noise of
# gradients that are exactly 0 (the triplet's distances do not move with the GeM part's bias) up to lr
net, crit = make()
train(net, crit, ds, TrainConfig(epochs=2, batch_size=int(sys.argv[2]), lr=0.05, optimizer="sgd", lr_schedule="constant",
      seed=3, checkpoint_every=0), f"{out}/run")
destroy_distributed()
'''


@pytest.mark.slow
def test_two_gloo_processes_with_half_the_batch_each_equal_one_process_with_all(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for name, cmd in (("ddp", ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                               str(32500 + os.getpid() % 1000), str(script)]), ("one", [str(script)])):
        (tmp_path / name).mkdir()
        batch = "2" if name == "ddp" else "4"   # classes per process: 2 x 2 = 1 x 4
        r = subprocess.run([sys.executable, *cmd, str(tmp_path / name), batch], capture_output=True, text=True,
                           env=env, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "ddp" / "step.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "step.pt", weights_only=True)
    assert torch.allclose(a["loss"], b["loss"], atol=1e-6), (a["loss"], b["loss"])
    assert set(a["grads"]) == set(b["grads"]) and any(k.startswith("crit.") for k in a["grads"])
    for k in a["grads"]:
        assert torch.allclose(a["grads"][k], b["grads"][k], atol=1e-6), k
    wa = torch.load(tmp_path / "ddp" / "run" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "one" / "run" / "weights.pt", weights_only=True)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), (k, float((wa[k] - wb[k]).abs().max()), float(wa[k].abs().max()))
