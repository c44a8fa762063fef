"""Pair-classifier re-scoring throughput: the ``pairvit`` matcher (files -> decode once per image -> the
query's views and the reference resized to halves -> [reference | query] batches -> ViT) against the
classifier's forward pass alone on the same number of pairs, preloaded as input tensors.

    .venv/bin/python benchmarks/bench_pairvit.py [--queries 4] [--refs 8] [--top 8] [--size 224x112]
                                                 [--depth 12] [--batch 32] [--threads 2] [--repeats 5]
                                                 [--prefetch auto|on|off] [--query-chunk 64] [--full-decode]
                                                 [--device cpu|cuda]

Target: the matcher keeps at least 90 % of the forward-only throughput (classifier pairs per second).
Both are also given per CPU second of the process (``cpu_ratio``): on a shared machine wall time
measures the neighbours too. The matcher's classifiers are loaded once per matcher (the warm-up call),
as in a run, where ``score`` is called once for all the pairs.
The classifier is a ViT-Tiny with random weights (throughput does not depend on the weights), by default
with its 12 blocks at the published half size 224 x 112 (the published ViT-L/16 costs far more per pair,
so decoding weighs even less there); the lesson's classifier is ``--size 64x32 --depth 2 --refs 20 --top 5``
(its ``cpu`` candidate lists), a middle one ``--size 112x56 --depth 4 --queries 16``. Images are
synthetic JPEGs of DISC21-like sizes (long side 640) in a temp folder. The workload has the method's shape: every candidate is re-scored (``top`` = candidates per query, as the
published 100 of 100) and every candidate is a reference of its own, as at DISC21 scale where two queries
of a chunk rarely share one: about one image decoded per 10 classifier pairs, as in a run. The matcher
runs with the method's defaults (decoding threads, prefetch, query chunk) unless told otherwise.
``--device cuda``: both sides on the GPU under the matcher's autocast (``amp=auto``), the forward's
inputs preloaded there; the matcher then decodes the next chunk while the GPU scores the current one. Both
sides run with the same torch threads, interleaved, and keep the best of ``--repeats`` passes; each
round's own ratio (the matcher, then the forward pass, back to back) is printed with their median.
``bound_same_cores`` is the forward alone's time over its sum with the time of decoding the same images
alone (as the matcher decodes them): on a CPU, where both use the same cores, no pipeline can keep more.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imsim_lab.features.dataset import ImageSource
from imsim_lab.methods import CandidatePairs, MatchContext, create_matcher, get_method
from imsim_lab.methods.pairvit import PREFETCH_MODES
from imsim_lab.train.pairvit import PairViT, PairViTConfig

SIZES = [(640, 480), (480, 640), (640, 427), (640, 640)]
DEFAULTS = get_method("pairvit").params


def make_images(folder: Path, prefix: str, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        p = folder / f"{prefix}{i:06d}.jpg"
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(p, quality=90)
        out.append(p)
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def forward_only(net, cfg: PairViTConfig, n_pairs: int, batch: int, repeats: int = 3, device: str = "cpu",
                 amp: str = "auto") -> tuple[float, float]:
    """Classifier pairs per second on preloaded (batch, 3, h, 2w) inputs on ``device`` (sigmoid and the
    copy of the scores to the host included, under the matcher's autocast): (per wall second, per CPU
    second of the process), the best of ``repeats``."""
    from imsim_lab.train.trainer import resolve_amp

    dtype = resolve_amp(amp, device)
    x = torch.randn(batch, 3, cfg.height, 2 * cfg.width, device=device)
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype or torch.float32,
                                                enabled=dtype is not None):
        net(x[:2])  # warm-up
        best, best_cpu = 0.0, 0.0
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            done = 0
            while done < n_pairs:
                torch.sigmoid(net(x[: min(batch, n_pairs - done)]).float()).cpu().numpy()
                done += batch
            best = max(best, n_pairs / (time.perf_counter() - t))
            best_cpu = max(best_cpu, n_pairs / max(time.process_time() - c, 1e-9))
    return best, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--refs", type=int, default=8, help="candidates per query")
    ap.add_argument("--top", type=int, default=8, help="pairs per query re-scored with the 8 views")
    ap.add_argument("--size", default="224x112", help="half size, height x width (published: 224x112)")
    ap.add_argument("--depth", type=int, default=12, help="ViT-Tiny blocks (timm's own: 12)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="decoding threads of the matcher")
    ap.add_argument("--prefetch", choices=PREFETCH_MODES, default=DEFAULTS["prefetch"])
    ap.add_argument("--query-chunk", type=int, default=DEFAULTS["query_chunk"])
    ap.add_argument("--full-decode", action="store_true", help="decode every JPEG in full (reduced_decode=False)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the matcher's amp=auto on both sides)")
    ap.add_argument("--repeats", type=int, default=5, help="passes of each, interleaved (best kept, and the "
                                                           "median of the rounds' own ratios)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    cfg = PairViTConfig("vit_tiny_patch16_224", h, w, depth=args.depth)
    torch.manual_seed(0)
    net = PairViT(cfg).eval()
    device = args.device
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "weights.pt"
        torch.save(net.state_dict(), weights)
        qp = make_images(tmp, "Q", args.queries, 0)
        rp = make_images(tmp, "R", args.queries * args.refs, 1)
        qids, rids = [p.stem for p in qp], [p.stem for p in rp]
        rng = np.random.default_rng(0)
        pq = np.repeat(qids, args.refs)
        pr = np.array(rids)[rng.permutation(len(rids))]  # each candidate a reference of its own
        pairs = CandidatePairs(pq, pr, rng.random(len(pq)), np.tile(np.arange(args.refs), len(qids)))
        ctx = MatchContext(ImageSource.files(qids, qp, "q"), ImageSource.files(rids, rp, "r"), tmp / "work",
                           device=device)
        m = create_matcher("pairvit", {"weights_path": str(weights), "backbone": cfg.backbone, "height": h,
                                       "width": w, "depth": args.depth, "top": args.top, "batch_size": args.batch,
                                       "threads": args.threads, "prefetch": args.prefetch,
                                       "query_chunk": args.query_chunk, "reduced_decode": not args.full_decode})
        m.score(CandidatePairs(pq[:1], pr[:1], pairs.scores[:1], pairs.ranks[:1]), ctx)  # warm-up
        net_dev = net.to(device)
        seconds, cpu_seconds, fwd_pps, fwd_cpu_pps = np.inf, np.inf, 0.0, 0.0
        rounds = []  # each round's own ratio: the matcher and the forward pass measured back to back
        for _ in range(args.repeats):  # interleaved, best of each: a loaded machine is noisy
            t, c = time.perf_counter(), time.process_time()
            res = m.score(pairs, ctx)
            dt = time.perf_counter() - t
            seconds = min(seconds, dt)
            cpu_seconds = min(cpu_seconds, time.process_time() - c)
            f, fc = forward_only(net_dev, cfg, res.report["classifier_pairs"], args.batch, repeats=1, device=device)
            fwd_pps, fwd_cpu_pps = max(fwd_pps, f), max(fwd_cpu_pps, fc)
            rounds.append(res.report["classifier_pairs"] / dt / f)
        # decoding alone, as the matcher decodes (its chunks, threads and reduced scale), best of the rounds
        qu = np.unique(pq)
        chunks = [(qu[c:c + args.query_chunk], np.unique(pr[np.isin(pq, qu[c:c + args.query_chunk])]))
                  for c in range(0, len(qu), args.query_chunk)]
        decode_s = min(_timed(lambda: [m._load_chunk(ctx, cq, cr) for cq, cr in chunks]) for _ in range(args.repeats))
    n_cls = res.report["classifier_pairs"]
    forward_s = n_cls / fwd_pps
    matcher_pps = n_cls / seconds
    matcher_cpu_pps = n_cls / max(cpu_seconds, 1e-9)
    print(json.dumps({"classifier": f"vit_tiny depth {args.depth}, halves {h}x{w}", "pairs": len(pairs),
                      "classifier_pairs": n_cls, "matcher_pairs_per_second": round(matcher_pps, 1),
                      "forward_pairs_per_second": round(fwd_pps, 1), "ratio": round(matcher_pps / fwd_pps, 3),
                      "ratio_median_of_rounds": round(float(np.median(rounds)), 3),
                      "ratio_rounds": [round(float(r), 3) for r in rounds],
                      "matcher_pairs_per_cpu_second": round(matcher_cpu_pps, 1),
                      "forward_pairs_per_cpu_second": round(fwd_cpu_pps, 1),
                      "cpu_ratio": round(matcher_cpu_pps / fwd_cpu_pps, 3),
                      "images_decoded_per_query": res.report["images_decoded_per_query"],
                      "decode_alone_seconds": round(decode_s, 4), "forward_alone_seconds": round(forward_s, 4),
                      # decoding and the classifier share the same cores: no schedule beats their sum
                      "bound_same_cores": round(forward_s / (forward_s + decode_s), 3),
                      "seconds": res.report["seconds"], "prefetch": res.report["prefetch"],
                      "reduced_decode": res.report["reduced_decode"],
                      "decoding_threads": args.threads, "torch_threads": torch.get_num_threads(),
                      "device": res.report["device"]}, indent=1))


if __name__ == "__main__":
    main()
