"""D2LV's local verification: what it costs here, and extrapolated to DISC21.

    .venv/bin/python benchmarks/bench_lv.py [--n 12] [--short-side 288] [--pairs-per-query 10]

1. **views through the pipeline**: the query views of ``sscd+lv`` (whole, 3 rotations, centre, 4
   halves: 9) and the 19 reference views of ``d2lv_reference``, cut from synthetic parents of DISC21
   sizes (long side 640) and embedded by the SSCD ONNX model inside the extraction pipeline
   (:func:`imsim_lab.features.viewstore.extract_views`), against the model's forward alone on the same
   views preloaded and preprocessed (the best of one call at a time, one intra-op thread, and the
   model's parallel streams). Target: the pipeline keeps at least 90 % of the forward.
2. **scoring**: :func:`imsim_lab.features.lvscore.verify` on random unit descriptors for
   ``--queries`` queries with ``--pairs-per-query`` candidate references each (both directions).
3. **extrapolation to DISC21** (50,000 queries, 1,000,000 references, 19 views per reference =
   19 million reference views): images embedded, CPU hours on this machine and index bytes, for
   ``sscd+lv`` as configured here (one 512-d backbone) and for D2LV as published (3 backbones x 11
   training sets = 33 models for AQ+OR, the 3 baseline models for OQ+AR, 1,500-d PCA-whitened
   float32 descriptors; arXiv 2111.07090, their ``Test/final/``). The published models are ResNets at
   256 x 256; their throughput is taken as this SSCD int8 ResNet-50's, which is a lower bound of their
   cost on CPU (float32 and, for one of the three, ResNet-152).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from imsim_lab.features import ExtractConfig
from imsim_lab.features.lvscore import LVConfig, verify
from imsim_lab.features.models import create_model
from imsim_lab.features.views import apply_view, make_views
from imsim_lab.features.viewstore import ViewConfig, extract_views
from imsim_lab.system import usable_cores

# the synthetic images and the forward-only timing of the views benchmark (run from benchmarks/)
from bench_views import forward_only, make_images

DISC21 = {"queries": 50_000, "references": 1_000_000}


def cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(model, paths, ids, views: str, batch_size: int, tmp: Path) -> tuple[float, float, int]:
    """(pipeline views/s, best forward views/s, views) for one view set."""
    vc = ViewConfig((views,), min_side=32)
    xs = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        xs += [model.preprocess(apply_view(img, v)) for v in make_views(vc.views, img.size)]
    fwd = [forward_only(model, xs, batch_size)]
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        fwd.append(forward_only(model, xs, batch_size))
        torch.set_num_threads(threads)
    streams = model.cpu_streams()
    if streams > 1:
        fwd.append(forward_only(model, xs, batch_size, streams))
    cfg = ExtractConfig(batch_size, 0, 4096)
    extract_views(model, paths[:2], ids[:2], vc, tmp / f"warm-{views}", "bench", cfg)
    t = time.perf_counter()
    vs = extract_views(model, paths, ids, vc, tmp / f"run-{views}", "bench", cfg)
    return len(vs) / (time.perf_counter() - t), max(fwd), len(vs)


def scoring(n_q: int, k: int, dim: int, seed: int = 0) -> float:
    """CPU seconds per query of :func:`verify` (9 query views, 19 reference views, k candidates)."""
    rng = np.random.default_rng(seed)
    qnames = ["whole", "rot90", "rot180", "rot270", "center", "half_00", "half_01", "half_10", "half_11"]
    rnames = [v.name for v in make_views("d2lv_reference", (640, 480))]
    n_r = max(k, n_q)
    qt = SimpleNamespace(parent_ids=np.repeat([f"Q{i:05d}" for i in range(n_q)], len(qnames)),
                         view_names=np.tile(qnames, n_q), sizes=np.full((n_q * len(qnames), 2), 300))
    rt = SimpleNamespace(parent_ids=np.repeat([f"R{i:06d}" for i in range(n_r)], len(rnames)),
                         view_names=np.tile(rnames, n_r), sizes=np.full((n_r * len(rnames), 2), 300))
    qt.boxes = np.tile([0.0, 0.0, 1.0, 1.0], (len(qt.parent_ids), 1))
    rt.boxes = np.tile([0.0, 0.0, 1.0, 1.0], (len(rt.parent_ids), 1))

    def unit(m):
        x = rng.standard_normal((m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    xq, xr = unit(len(qt.parent_ids)), unit(len(rt.parent_ids))
    q = np.repeat([f"Q{i:05d}" for i in range(n_q)], k)
    r = np.array([f"R{j:06d}" for i in range(n_q) for j in rng.choice(n_r, k, replace=False)])
    c = cpu()
    verify(q, r, qt, rt, [xq], [xr], LVConfig(budget=20 * n_q))
    return (cpu() - c) / n_q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="parent images per view set")
    ap.add_argument("--short-side", type=int, default=288, help="SSCD's resize of each view (288: as published)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--queries", type=int, default=200, help="queries of the scoring measurement")
    ap.add_argument("--pairs-per-query", type=int, default=10)
    a = ap.parse_args()
    model = create_model("sscd_disc_mixup_onnx", device=None, short_side=a.short_side)
    print(f"model sscd_disc_mixup_onnx (short side {a.short_side}), {usable_cores()} usable core(s), device "
          f"{model.device}, {a.n} parents of long side 640")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        paths = make_images(tmp / "img", a.n)
        ids = [p.stem for p in paths]
        for views in ("d2lv_query", "d2lv_reference"):
            p, f, m = throughput(model, paths, ids, views, a.batch_size, tmp)
            rates[views] = p
            print(f"  {views:15s} {m:4d} views: pipeline {p:6.1f} views/s, forward alone {f:6.1f} views/s: "
                  f"kept {100 * p / f:5.1f} % (target >= 90 %)")
    per_q = scoring(a.queries, a.pairs_per_query, model.dim)
    print(f"  scoring (verify, both directions, {a.pairs_per_query} candidates per query): {1000 * per_q:.2f} CPU ms "
          f"per query")
    nq, nr = DISC21["queries"], DISC21["references"]
    setups = {
        "sscd+lv here (1 backbone, 512-d float32)": {"aq_models": 1, "oq_models": 1, "dim": 512},
        "D2LV published (33 AQ+OR models, 3 OQ+AR, 1500-d)": {"aq_models": 33, "oq_models": 3, "dim": 1500},
    }
    print(f"\nextrapolated to DISC21 ({nq:,} queries, {nr:,} references; 9 query views, 19 reference views; "
          f"at this machine's pipeline rates)")
    for label, s in setups.items():
        # AQ+OR: query views x whole references; OQ+AR: whole queries x 19 reference views (whole included)
        # (a model of both directions embeds its whole query and whole reference once)
        shared = min(s["aq_models"], s["oq_models"])
        q_views = s["aq_models"] * nq * 9 + (s["oq_models"] - shared) * nq
        r_views = s["aq_models"] * nr + s["oq_models"] * nr * 19 - shared * nr
        seconds = q_views / rates["d2lv_query"] + r_views / rates["d2lv_reference"]
        index = s["oq_models"] * nr * 19 * s["dim"] * 4 + max(0, s["aq_models"] - s["oq_models"]) * nr * s["dim"] * 4
        print(f"  {label}:\n    images embedded {q_views / nq:.0f} per query, {r_views / nr:.0f} per reference "
              f"({(q_views + r_views) / 1e6:.1f} M in all); index {index / nr / 1024:.1f} KiB per reference, "
              f"{index / 1e9:.0f} GB in all; {seconds / 3600:.0f} hours of this CPU "
              f"({seconds / nq:.2f} s per query with the references' share)")


if __name__ == "__main__":
    main()
