"""Training throughput of each recipe: the whole trainer (files -> views -> DataLoader -> step)
against the bare forward + loss + backward + optimiser step of its model on preloaded tensors.

    .venv/bin/python benchmarks/bench_train.py [--recipes ssquare sscd] [--scales lesson published]
        [--backbone resnet18] [--size 64] [--batch-size 32] [--steps 6] [--rounds 3] [--workers N] [--loader auto]
        [--device cpu|cuda] [--amp auto]

Target: the pipeline keeps at least 80 % of the bare step's throughput (training images per
second; an SSCD image is two views). Two scales by default: ``lesson``, the ``--size`` and
``--batch-size`` given (default the CPU lessons' 64 px, batch 32), and ``published``, each recipe's
training resolution (the default ``--size`` of ``imsim-lab train ssquare`` / ``sscd``: 160 and 224 px; batch 16, 4
steps, 2 rounds to keep the run short). At 64 px a resnet18 step costs about as much CPU per image
as decoding and editing the view, so on 2 cores the lesson scale is bounded by the share of the
CPU that the views take; the figures below print that share.

Images are synthetic JPEGs of DISC21-like sizes (640 x 480) in a temp folder. The first steps of
each measurement are a warm-up (DataLoader start, allocator, cuDNN autotune) and are not counted.
On CUDA the bare step and the trainer both run with the trainer's AMP (``--amp``).

On a machine shared with other jobs the load changes within a minute, so the two are measured in
``--rounds`` alternating rounds (bare, then trainer, then bare...) and the ratio is taken per round
(the median is printed with the range). The CPU seconds per image of each (this process and its
loader workers, over the measured steps only) are printed too: they change far less with the load
than the wall time, and ``bare / trainer`` CPU per image is what the pipeline would keep on an idle
machine whose cores the bare step already fills.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WARMUP = 3


def make_images(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        p = folder / f"T{i:06d}.jpg"
        Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(p, quality=90)
        out.append(str(p))
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_step(net, criterion, x, y, cfg, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of forward + loss + backward + optimiser step on preloaded (x, y),
    medians over the steps after the warm-up."""
    from imsim_lab.train.trainer import make_optimizer, resolve_amp, resolve_channels_last, to_device

    device = cfg.device
    net.to(device).train()
    criterion.to(device)
    channels_last = resolve_channels_last(cfg.channels_last, device)  # as the trainer: on CUDA by default
    if channels_last:
        net.to(memory_format=torch.channels_last)
    x, y = to_device(x, device, channels_last), y.to(device)
    opt = make_optimizer([net, criterion], cfg)
    amp = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    times, cpu = [], []
    for s in range(WARMUP + steps):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        with torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            emb = net(x)
        loss = criterion(emb.float(), y)
        scaler.scale(loss).backward()
        if cfg.grad_clip:  # the recipe's optimiser step clips: so does the bare one (only the data path differs)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if s >= WARMUP:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return float(np.median(times)), float(np.median(cpu))


def trainer_step(net, criterion, ds, cfg, steps: int, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds per step of the shared trainer on ``ds``: the wall time is the median step
    after the warm-up; the CPU time (this process and its loader workers, read at every step) is the
    mean over those steps, so that neither the start of the workers nor the final checkpoint counts."""
    from imsim_lab.train.trainer import train

    marks = []
    res = train(net, criterion, ds, replace(cfg, max_steps=WARMUP + steps, checkpoint_every=0), out,
                on_step=lambda rec: marks.append(process_tree_cpu()))
    t = [h["seconds"] for h in res.history]
    return float(np.median(np.diff(t[WARMUP - 1:]))), (marks[-1] - marks[WARMUP - 1]) / steps


def process_tree_cpu() -> float:
    """CPU seconds (user + system) of this process and of its live children (the loader workers)."""
    import multiprocessing
    import os

    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):  # a worker that just ended, or no /proc
            pass
    return total


def setups(recipe: str, paths, a, cfg):
    """(net, criterion, dataset, preloaded x, y, images per step) of a recipe at ``a.size``, batch ``a.batch_size``."""
    if recipe == "ssquare":
        from imsim_lab.train.arcface import ArcFaceHead
        from imsim_lab.train.ssquare import ssquare_net
        from imsim_lab.train.ssquare_data import ClassImages

        m = ssquare_net(a.backbone, a.size, a.dim)
        ds = ClassImages(paths, a.size, 0.7, m.config.mean, m.config.std)
        x = torch.randn(a.batch_size, 3, a.size, a.size)
        y = torch.arange(a.batch_size)
        return m.module, ArcFaceHead(len(paths), a.dim), ds, x, y, a.batch_size
    from imsim_lab.train.infonce import SSCDLoss
    from imsim_lab.train.sscd import sscd_net
    from imsim_lab.train.sscd_data import SSCDViews

    m = sscd_net(a.backbone, a.size, a.dim)
    ds = SSCDViews(paths, "advanced", a.size, m.config.mean, m.config.std, mix_p=0.05)
    x = torch.randn(2 * a.batch_size, 3, a.size, a.size)
    y = torch.stack([torch.arange(a.batch_size).repeat_interleave(2), torch.full((2 * a.batch_size,), -1)], 1)
    return m.module, SSCDLoss(0.05, 10.0), ds, x, y, a.batch_size


def _load() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


def published_size(recipe: str) -> int:
    """The recipe's default training resolution (its ``--size``)."""
    from imsim_lab.train.recipes import sscd, ssquare

    return {"ssquare": ssquare.TRAIN_SIZE, "sscd": sscd.TRAIN_SIZE}[recipe]


def view_seconds(ds, n: int) -> float:
    """CPU seconds of one item of ``ds`` in this process (decode + views + normalisation), median of 3."""
    times = []
    for r in range(3):
        c = time.process_time()
        for i in range(n):
            ds[(i, r)]
        times.append((time.process_time() - c) / n)
    return float(np.median(times))


def measure(recipe: str, paths, a, d: Path) -> None:
    """Alternating rounds of the bare step and the trainer for one recipe at ``a.size``; prints the figures."""
    from imsim_lab.train.trainer import TrainConfig

    opt = {"ssquare": dict(optimizer="adam", lr=1e-3, lr_schedule="plateau", weight_decay=0.0, grad_clip=1.0),
           "sscd": dict(optimizer="lars", lr=0.3 * a.batch_size / 256, lr_schedule="cosine", weight_decay=1e-6)}
    cfg = TrainConfig(batch_size=a.batch_size, num_workers=a.workers, loader=a.loader, amp=a.amp, device=a.device,
                      seed=0, **opt[recipe])
    bare, full, cpu_b, cpu_f = [], [], [], []
    for r in range(a.rounds):
        net, crit, ds, x, y, per_step = setups(recipe, paths, a, cfg)
        t, c = bare_step(net, crit, x, y, cfg, a.steps)
        bare.append(per_step / t)
        cpu_b.append(c / per_step)
        net, crit, ds, x, y, per_step = setups(recipe, paths, a, cfg)
        t, c = trainer_step(net, crit, ds, cfg, a.steps, d / f"run_{recipe}_{a.size}_{r}")
        full.append(per_step / t)
        cpu_f.append(c / per_step)
    view = view_seconds(ds, min(len(paths), 64))
    kept = [100 * f / b for f, b in zip(full, bare)]
    print(f"{recipe} at {a.size} px, batch {a.batch_size}:")
    print(f"  bare forward + backward + step on preloaded tensors {np.median(bare):8.1f} img/s   "
          f"{1000 * np.median(cpu_b):6.1f} ms CPU/img")
    print(f"  whole trainer (files -> views -> loader -> step)    {np.median(full):8.1f} img/s   "
          f"{1000 * np.median(cpu_f):6.1f} ms CPU/img")
    print(f"  the views alone (decode + edits + normalise, one process)           {1000 * view:6.1f} ms CPU/img; "
          f"with no loss to contention the trainer could keep "
          f"{100 * np.median(cpu_b) / (np.median(cpu_b) + view):5.1f} %")
    print(f"  kept {np.median(kept):5.1f} % (rounds {min(kept):.1f}-{max(kept):.1f} %; target 80 %); "
          f"by CPU per image {100 * np.median(cpu_b) / np.median(cpu_f):5.1f} %; "
          f"load now {' '.join(f'{v:.2f}' for v in _load())}", flush=True)


def main() -> None:
    from imsim_lab.train.trainer import LOADER_MODES, resolve_loader

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["ssquare", "sscd"], choices=["ssquare", "sscd"])
    ap.add_argument("--scales", nargs="+", default=["lesson", "published"], choices=["lesson", "published"])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=64, help="the lesson scale's resolution")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32, help="the lesson scale's batch (published: 16)")
    ap.add_argument("--steps", type=int, default=6, help="measured steps per round (after 3 of warm-up; published: 4)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of bare and trainer measurements "
                                                          "(published: 2)")
    ap.add_argument("--workers", type=int, default=None, help="default: the recipes' default (the usable cores, "
                                                              "at most 4)")
    ap.add_argument("--loader", default="auto", choices=LOADER_MODES, help="the trainer's loader")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="auto")
    a = ap.parse_args()
    if a.workers is None:
        from imsim_lab.train.recipes.base import default_workers

        a.workers = default_workers()
    print(f"{a.backbone}, {a.workers} worker(s), loader {resolve_loader(a.loader, a.device, a.workers)}, "
          f"{a.device}, amp {a.amp}; {torch.get_num_threads()} torch threads; "
          f"each round the median of its steps after {WARMUP} of warm-up; load average "
          f"{' '.join(f'{v:.2f}' for v in _load())}")
    if a.device.startswith("cuda"):
        print(f"  GPU: {torch.cuda.get_device_name()}")
    runs = []
    for scale in a.scales:
        for recipe in a.recipes:
            if scale == "lesson":
                runs.append((recipe, a))
            else:
                runs.append((recipe, argparse.Namespace(**{**vars(a), "size": published_size(recipe), "batch_size": 16,
                                                           "steps": min(a.steps, 4), "rounds": min(a.rounds, 2)})))
    n = max(r.batch_size * (WARMUP + r.steps + 1) for _, r in runs)
    with tempfile.TemporaryDirectory() as d:
        paths = make_images(Path(d), n)
        for recipe, r in runs:
            measure(recipe, paths[: r.batch_size * (WARMUP + r.steps + 1)], r, Path(d))


if __name__ == "__main__":
    main()
