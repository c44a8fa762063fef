"""Extraction throughput: the whole pipeline (files -> DataLoader workers -> model -> shards)
against the model's forward pass alone on preloaded, preprocessed inputs.

    .venv/bin/python benchmarks/bench_extract.py [--n 96] [--workers 1] [--models sscd resnet50]

Target: the pipeline keeps at least 90 % of the forward-only throughput. Images are synthetic
JPEGs of DISC21-like sizes (long side 640, several aspect ratios), written to a temp folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imsim_lab.extraction import ExtractConfig, extract_split
from imsim_lab.models import create_model

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


def forward_only(model, paths, batch_size: int) -> float:
    xs = [model.preprocess(Image.open(p).convert("RGB")) for p in paths]
    model.embed(xs[:batch_size])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(xs), batch_size):
        model.embed(xs[i:i + batch_size])
    return len(xs) / (time.perf_counter() - t)


def pipeline(model, paths, cfg: ExtractConfig, folder: Path) -> float:
    ids = [p.stem for p in paths]
    model.embed([model.preprocess(Image.open(paths[0]).convert("RGB"))])  # same warm-up as above
    t = time.perf_counter()
    extract_split(model, paths, ids, folder, "bench", cfg)
    return len(paths) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--mixed-sizes", action="store_true", help="images of 4 aspect ratios (SSCD keeps aspect)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        paths = make_images(tmp / "img", a.n, not a.mixed_sizes)
        print(f"{a.n} JPEGs {'of 4 sizes' if a.mixed_sizes else '640x480'}, batch {a.batch_size}, "
              f"{a.workers} worker(s)")
        for key in a.models:
            name, kw = MODELS[key]
            model = create_model(name, device=None, **kw)
            f = forward_only(model, paths, a.batch_size)
            p = pipeline(model, paths, ExtractConfig(a.batch_size, a.workers, 4096), tmp / key)
            print(f"{key:10s} forward only {f:7.1f} img/s   pipeline {p:7.1f} img/s   kept {100 * p / f:5.1f} %")
            if key == "sscd":
                xs = [model.preprocess(Image.open(q).convert("RGB")) for q in paths[:16]]
                t = time.perf_counter()
                for x in xs:
                    model.embed([x])
                one = 16 / (time.perf_counter() - t)
                print(f"{'':10s} SSCD one image per call: {one:7.1f} img/s (batched by shape above)")


if __name__ == "__main__":
    main()
