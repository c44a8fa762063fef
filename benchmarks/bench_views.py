"""View extraction throughput: sub-image views made on the fly inside the pipeline (files ->
DataLoader workers or CPU streams -> crop + preprocess -> model -> shards) against the model's
forward pass alone on the same views, preloaded and preprocessed.

    .venv/bin/python benchmarks/bench_views.py [--n 16] [--views d2lv_reference] [--workers 1]
                                               [--model resnet18|sscd] [--repeats 3]

Target: the pipeline keeps at least 90 % of the forward-only throughput (views per second). The
default model is ``resnet18_gem`` at 112 px (random weights: throughput does not depend on them);
``--model sscd`` uses the SSCD ONNX model, whose forward baseline is the better of one call at a
time and as many single-threaded calls at once as it asks for (as ``bench_extract.py`` does); on
CPU the one-call baseline is also timed with a single intra-op thread (on a loaded machine it can
be several times faster than all threads) and the best forward is the reference.
Parents are synthetic JPEGs of DISC21-like sizes (long side 640) in a temp folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imsim_lab.features import ExtractConfig
from imsim_lab.features.dataset import ordered_threads
from imsim_lab.features.models import create_model
from imsim_lab.features.views import apply_view, make_views
from imsim_lab.features.viewstore import ViewConfig, extract_views
from imsim_lab.system import usable_cores

SIZES = [(640, 480), (480, 640), (640, 427), (640, 640)]
MODELS = {"resnet18": ("resnet18_gem", {"input_size": 112}), "sscd": ("sscd_disc_mixup_onnx", {})}


def make_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        p = folder / f"R{i:06d}.jpg"
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(p, quality=90)
        out.append(p)
    return out


def forward_only(model, xs: list, batch_size: int, streams: int = 1) -> float:
    """Views per second of the model alone on preprocessed arrays."""
    batches = [xs[i:i + batch_size] for i in range(0, len(xs), batch_size)]
    if streams == 1:
        model.embed(batches[0])  # warm-up
        t = time.perf_counter()
        for b in batches:
            model.embed(b)
    else:
        list(ordered_threads(model.embed_stream, batches[:streams], streams, streams))
        t = time.perf_counter()
        for _ in ordered_threads(model.embed_stream, batches, streams, 2 * streams):
            pass
    return len(xs) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="parent images")
    ap.add_argument("--views", nargs="+", default=["d2lv_reference"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", default="resnet18", choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=3, help="tries of each forward variant and pipeline, best kept")
    a = ap.parse_args()
    name, kw = MODELS[a.model]
    model = create_model(name, device=None, **kw)
    vc = ViewConfig(tuple(a.views), min_side=32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        paths = make_images(tmp / "img", a.n)
        ids = [p.stem for p in paths]
        xs = []
        for p in paths:
            img = Image.open(p).convert("RGB")
            xs += [model.preprocess(apply_view(img, v)) for v in make_views(vc.views, img.size)]
        print(f"{a.n} parents x {len(xs) // a.n} views ({'+'.join(vc.views)}) = {len(xs)} views, "
              f"batch {a.batch_size}, model {name}, {usable_cores()} usable core(s), device {model.device}")
        streams = model.cpu_streams()
        threads = torch.get_num_threads()
        variants = {f"one call at a time, {threads} thread(s)": (threads, 1)}
        if threads > 1 and not model.device.startswith("cuda"):
            # on a shared machine one intra-op thread can beat several: the baseline is the best
            variants["one call at a time, 1 thread"] = (1, 1)
        if streams > 1:
            variants[f"{streams} single-thread calls at once"] = (threads, streams)
        runs = {f"DataLoader, {a.workers} worker(s)": ExtractConfig(a.batch_size, a.workers, 4096, streams=1)}
        if streams > 1:
            runs[f"{streams} streams (default)"] = ExtractConfig(a.batch_size, a.workers, 4096)
        for i, cfg in enumerate(runs.values()):
            extract_views(model, paths[:2], ids[:2], vc, tmp / f"warm{i}", "bench", cfg)
        # every forward variant and every pipeline `--repeats` times, interleaved, the best of each kept:
        # the pipeline gets as many tries as each forward variant (a single try against the best of
        # several would measure the noise)
        fwd = {k: 0.0 for k in variants}
        pipe = {k: 0.0 for k in runs}
        for rep in range(a.repeats):
            for label, (nt, st) in variants.items():
                torch.set_num_threads(nt)
                fwd[label] = max(fwd[label], forward_only(model, xs, a.batch_size, st))
                torch.set_num_threads(threads)
            for i, (label, cfg) in enumerate(runs.items()):
                t = time.perf_counter()
                vs = extract_views(model, paths, ids, vc, tmp / f"run{i}_{rep}", "bench", cfg)
                pipe[label] = max(pipe[label], len(vs) / (time.perf_counter() - t))
        best_label, best = max(fwd.items(), key=lambda kv: kv[1])
        for label, f in fwd.items():
            print(f"  forward only, {label:34s} {f:7.1f} views/s")
        for label, p in pipe.items():
            print(f"  pipeline, {label:38s} {p:7.1f} views/s   kept {100 * p / best:5.1f} % "
                  f"of the best forward ({best_label}); best of {a.repeats} each")

if __name__ == "__main__":
    main()
