"""Extraction throughput: the whole pipeline (files -> DataLoader workers -> model -> shards)
against the model's forward pass alone on preloaded, preprocessed inputs.

    .venv/bin/python benchmarks/bench_extract.py [--n 96] [--workers 1] [--models sscd resnet50]

Target: the pipeline keeps at least 90 % of the forward-only throughput. The baseline is the
best forward pass the model has: one batch after the other with all its intra-op threads, and,
for models that offer it (:meth:`cpu_streams` > 1, SSCD ONNX on CPU), as many single-threaded
calls at once as there are cores. Both extraction paths are printed: the DataLoader with
``--workers`` processes, and the default (streams where the model has them). Images are
synthetic JPEGs of DISC21-like sizes (long side 640, several aspect ratios), in a temp folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imsim_lab.features import ExtractConfig, extract_split
from imsim_lab.features.dataset import ordered_threads
from imsim_lab.features.models import create_model
from imsim_lab.system import usable_cores

SIZES = [(640, 480), (480, 640), (640, 427), (640, 640)]
MODELS = {"sscd": ("sscd_disc_mixup_onnx", {}), "resnet50": ("resnet50_gem", {"input_size": 224})}


def make_images(folder: Path, n: int, same_size: bool) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = SIZES[0] if same_size else SIZES[i % len(SIZES)]
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        p = folder / f"R{i:06d}.jpg"
        im.save(p, quality=90)
        out.append(p)
    return out


def forward_only(model, paths, batch_size: int, streams: int = 1) -> float:
    """Images per second of the model alone on preloaded, preprocessed arrays: one batch after
    the other (``streams=1``), or ``streams`` single-threaded calls at once."""
    xs = [model.preprocess(Image.open(p).convert("RGB")) for p in paths]
    batches = [xs[i:i + batch_size] for i in range(0, len(xs), batch_size)]
    if streams == 1:
        model.embed(batches[0])  # warm-up
        t = time.perf_counter()
        for b in batches:
            model.embed(b)
    else:
        list(ordered_threads(model.embed_stream, batches[:streams], streams, streams))  # warm-up
        t = time.perf_counter()
        for _ in ordered_threads(model.embed_stream, batches, streams, 2 * streams):
            pass
    return len(xs) / (time.perf_counter() - t)


def pipeline(model, paths, cfg: ExtractConfig, folder: Path) -> float:
    ids = [p.stem for p in paths]
    extract_split(model, paths[:cfg.batch_size], ids[:cfg.batch_size], folder / "warm-up", "bench", cfg)
    t = time.perf_counter()
    extract_split(model, paths, ids, folder, "bench", cfg)
    return len(paths) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the DataLoader path")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--mixed-sizes", action="store_true", help="images of 4 aspect ratios (SSCD keeps aspect)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        paths = make_images(tmp / "img", a.n, not a.mixed_sizes)
        print(f"{a.n} JPEGs {'of 4 sizes' if a.mixed_sizes else '640x480'}, batch {a.batch_size}, "
              f"{usable_cores()} usable core(s)")
        for key in a.models:
            name, kw = MODELS[key]
            model = create_model(name, device=None, **kw)
            streams = model.cpu_streams()
            fwd = {"one call at a time": forward_only(model, paths, a.batch_size)}
            if streams > 1:
                fwd[f"{streams} single-thread calls at once"] = forward_only(model, paths, a.batch_size, streams)
            best_label, best = max(fwd.items(), key=lambda kv: kv[1])
            runs = {f"DataLoader, {a.workers} worker(s)":
                    ExtractConfig(a.batch_size, a.workers, 4096, streams=1)}
            if streams > 1:
                runs[f"{streams} streams (default)"] = ExtractConfig(a.batch_size, a.workers, 4096)
            print(f"{key}:")
            for label, f in fwd.items():
                print(f"  forward only, {label:32s} {f:7.1f} img/s")
            for i, (label, cfg) in enumerate(runs.items()):
                p = pipeline(model, paths, cfg, tmp / f"{key}{i}")
                print(f"  pipeline, {label:38s} {p:7.1f} img/s   kept {100 * p / best:5.1f} % "
                      f"of the best forward ({best_label})")
            if model.device.startswith("cuda"):
                print(f"  {model.device}: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
