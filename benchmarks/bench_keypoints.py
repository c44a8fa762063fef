"""imgFp's keypoint search against its approximations and against visual words, on one benchmark.

    .venv/bin/python benchmarks/bench_keypoints.py [--bench DIR] [--queries 300] [--max-keypoints 200]
        [--words 1024 4096 16384] [--kinds ivf hnsw ivfpq]

Every configuration sees the same RootSIFT keypoints (short side 300, the ``max_keypoints`` strongest,
images under 10 keypoints skipped) of a seeded subset of the queries and of all references, and
recalls at most one reference per query:

* **exact**: every query keypoint's nearest reference keypoint (numpy blocks, float16 storage), imgFp's
  vote (the baseline: memory = float16 descriptors, as imgFp's GPU index);
* **ivf / hnsw / ivfpq**: the same vote on faiss approximate neighbours, with their recall of the exact
  nearest neighbour;
* **bow k**: visual words (faiss k-means on the reference keypoints), tf-idf cosine, top-1.

For each: seconds per query of the search, peak memory of building and searching the index (the
rise of the process's peak resident set over its size before, Linux ``VmHWM`` reset through
``/proc/self/clear_refs``, so faiss's allocations count too; tracemalloc of numpy's buffers where
that file cannot be written), bytes per reference, µAP and
R@P90 (isc2021, the subset's ground truth) of the recalled pairs scored by the branch's own score
(votes, cosine) and after imgFp's pair scoring (ratio-test matches with the flip check). The last
lines extrapolate memory and time to DISC21 (1M references, about 600 keypoints each) next to imgFp's
165 GB of float16 on 8 V100s, and say whether a configuration reaches 95 % of exact voting's µAP with
at most a tenth of its memory per reference. Ratios are against exact voting in the same run.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from imsim_lab.data.benchmark import load_benchmark
from imsim_lab.eval.formats import GroundTruth, Predictions
from imsim_lab.eval.metrics import evaluate
from imsim_lab.features import ExtractConfig
from imsim_lab.features.dataset import ImageSource
from imsim_lab.features.keypoint_search import build_ann, exact_knn, nn_recall
from imsim_lab.features.local import create_local_model
from imsim_lab.features.localstore import extract_local
from imsim_lab.features.vocabulary import InvertedFile, train_vocabulary
from imsim_lab.lessons import lesson_benchmark, results_root
from imsim_lab.methods.imgfp import _keep_words, _subset, bow_pairs, pair_counts, usable, vote_pairs

DISC21_REFS, DISC21_KP, IMGFP_GB = 1_000_000, 600, 165.0


def _status_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """``with PeakMemory() as m: ...``; ``m.bytes``: how far the peak resident set rose above the
    resident set at entry (every allocator), or tracemalloc's peak where the peak cannot be reset."""

    def __enter__(self):
        self.rss = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            self.rss = _status_kb("VmRSS")
        except OSError:
            pass
        if self.rss is None:
            tracemalloc.start()
        return self

    def __exit__(self, *exc):
        if self.rss is not None:
            self.bytes = max(0, (_status_kb("VmHWM") or self.rss) - self.rss) * 1024
            self.how = "VmHWM"
        else:
            self.bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            self.how = "tracemalloc"
        return False


def metrics(gt, qids, rids, scores):
    if len(qids) == 0:
        return 0.0, 0.0
    p = Predictions(np.asarray(qids, object), np.asarray(rids, object), np.asarray(scores, np.float64))
    m = evaluate(gt, p, "isc2021")
    return m.micro_ap, (m.recall_at_p90 or 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=None, help="benchmark folder (default: the lessons' small disc-synth)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--max-keypoints", type=int, default=200)
    ap.add_argument("--words", type=int, nargs="*", default=[1024, 4096, 16384])
    ap.add_argument("--kinds", nargs="*", default=["ivf", "hnsw", "ivfpq"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    bench = load_benchmark(a.bench) if a.bench else lesson_benchmark("cpu")
    rng = np.random.default_rng(a.seed)
    qids = np.sort(rng.choice(bench.query_ids, min(a.queries, len(bench.query_ids)), replace=False))
    gt_all = dict(zip(bench.gt.query_ids, bench.gt.reference_ids))
    gt = GroundTruth(np.asarray(qids, object), np.asarray([gt_all.get(q, "") for q in qids], object))
    model = create_local_model("rootsift", max_keypoints=a.max_keypoints, dtype="float16")
    work = results_root() / "bench_keypoints" / f"{bench.name}-k{a.max_keypoints}"
    cfg = ExtractConfig(batch_size=16, shard_size=256)
    t = time.perf_counter()
    src_q = ImageSource.files(bench.query_ids, [bench.image_path(i) for i in bench.query_ids], key=str(bench.root))
    src_b = ImageSource.files(bench.reference_ids, [bench.image_path(i) for i in bench.reference_ids],
                              key=str(bench.root))
    fq = extract_local(model, src_q, qids, work / f"q{a.seed}-{a.queries}", "query", cfg)
    fb = extract_local(model, src_b, None, work, "reference", cfg)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min) on {os.cpu_count()} cores")
    print(f"benchmark {bench.name}: {len(qids)} queries ({int((gt.reference_ids != '').sum())} with a match), "
          f"{len(fb)} references; RootSIFT at short side 300, at most {a.max_keypoints} keypoints; "
          f"extraction {time.perf_counter() - t:.1f} s (cached after the first run)")
    kb = usable(fb, 10)
    n_ref_used = int(kb.sum())
    mb = int(fb.counts[kb].sum())
    mq = int(fq.counts[usable(fq, 10)].sum())
    print(f"keypoints: {mq} query, {mb} reference ({mb / max(n_ref_used, 1):.0f} per reference); "
          f"skipped under 10: {int((~usable(fq, 10)).sum())} queries, {int((~kb).sum())} references")
    rows = []

    def record(name, secs, peak, bpr, q, r, s, recall=None):
        ap0, r90 = metrics(gt, q, r, s)
        qpos, bpos = fq.positions(q), fb.positions(r)
        c = pair_counts(fq, fb, qpos, bpos) if len(q) else np.zeros(0)
        ap1, r91 = metrics(gt, q, r, c)
        rows.append(dict(name=name, s_per_query=secs / len(qids), peak_mb=peak / 2 ** 20, bytes_per_ref=bpr,
                         uap=ap0, r90=r90, uap_verified=ap1, r90_verified=r91, recall=recall, pairs=len(q)))

    # exact voting (float16 storage, numpy blocks)
    _, rows_b = _subset(fb, kb)
    _, rows_q = _subset(fq, usable(fq, 10))
    xq, xb = np.asarray(fq.descriptors)[rows_q], np.asarray(fb.descriptors)[rows_b]
    with PeakMemory() as pm:
        t = time.perf_counter()
        D0, I0 = exact_knn(xq, xb, 1, "numpy", "float16", block=1 << 14)
        secs = time.perf_counter() - t
    peak = pm.bytes
    v = vote_pairs(fq, fb, neighbours=(D0, I0))
    bpr_exact = mb * 128 * 2 / max(n_ref_used, 1)
    record("exact (float16)", secs, peak, bpr_exact, v["query_ids"], v["reference_ids"], v["votes"], 1.0)
    for kind in a.kinds:
        with PeakMemory() as pm:
            t = time.perf_counter()
            ann = build_ann(xb, kind, nprobe=16, m=16)
            build = time.perf_counter() - t
            t = time.perf_counter()
            DA, I = ann.search(xq, 1)
            secs = time.perf_counter() - t
        v = vote_pairs(fq, fb, neighbours=(DA, I))
        bpv = ann.bytes_per_vector
        del ann  # the next configuration's peak starts without this index
        record(f"{kind} (build {build:.0f} s)", secs, pm.bytes, bpv * mb / max(n_ref_used, 1),
               v["query_ids"], v["reference_ids"], v["votes"], nn_recall(I0, I))
    for k in a.words:
        if k > mb:
            print(f"bow {k}: skipped, only {mb} reference keypoints to train on")
            continue
        t = time.perf_counter()
        voc = train_vocabulary(np.asarray(fb.descriptors)[rows_b], k, niter=10, meta=fb.meta, seed=a.seed)
        build = time.perf_counter() - t
        with PeakMemory() as pm:
            wq, wb = voc.assign_set(fq), voc.assign_set(fb)
            inv = InvertedFile.build(_keep_words(wb, kb), voc.k)
            t = time.perf_counter()  # the reference side is indexing, not search
            res = bow_pairs(voc, inv, _keep_words(wq, usable(fq, 10)), 1)
            secs = time.perf_counter() - t
        peak = pm.bytes
        record(f"bow {k} (k-means {build:.0f} s)", secs, peak, inv.nbytes / max(n_ref_used, 1),
               res["query_ids"], res["reference_ids"], res["scores"])
    base = rows[0]
    print(f"\npeak MB: build + search, measured by {pm.how}")
    print(f"{'configuration':28} {'ms/query':>9} {'peak MB':>8} {'B/ref':>9} {'mem x':>6} {'NN rec':>6} "
          f"{'uAP':>6} {'R@P90':>6} {'uAP ver':>7} {'R@P90v':>6} {'uAP/ex':>6} {'pairs':>5}")
    for r in rows:
        rec = "" if r["recall"] is None else f"{r['recall']:.3f}"
        print(f"{r['name']:28} {1000 * r['s_per_query']:9.2f} {r['peak_mb']:8.1f} {r['bytes_per_ref']:9.0f} "
              f"{r['bytes_per_ref'] / base['bytes_per_ref']:6.3f} {rec:>6} {r['uap']:6.3f} {r['r90']:6.3f} "
              f"{r['uap_verified']:7.3f} {r['r90_verified']:6.3f} "
              f"{r['uap_verified'] / max(base['uap_verified'], 1e-9):6.3f} {r['pairs']:5d}")
    scale = DISC21_REFS * DISC21_KP / max(mb, 1) * (DISC21_KP / max(mq / len(qids), 1))
    print(f"\nDISC21 extrapolation ({DISC21_REFS:,} references x {DISC21_KP} keypoints; imgFp: {IMGFP_GB:.0f} GB "
          f"float16 on 8 V100s): memory = bytes per keypoint x 600M, exact time per query x {scale:,.0f} "
          f"(database and query keypoints both grow; approximate and word search grow more slowly)")
    for r in rows:
        per_kp = r["bytes_per_ref"] / max(mb / max(n_ref_used, 1), 1)
        print(f"  {r['name']:28} {per_kp * DISC21_REFS * DISC21_KP / 1e9:8.1f} GB")
    hours = base["s_per_query"] * scale / 3600
    print(f"  exact voting on {os.cpu_count()} CPU cores: about {hours:,.1f} hours per query")
    ok = [r for r in rows[1:] if r["uap_verified"] >= 0.95 * base["uap_verified"]
          and r["bytes_per_ref"] <= 0.1 * base["bytes_per_ref"]]
    print("goal (>= 95 % of exact voting's verified uAP at <= 1/10 of its memory per reference): "
          + (", ".join(r["name"] for r in ok) if ok else "no configuration here"))


if __name__ == "__main__":
    main()
