"""Search: the overhead of imsim_lab.search.knn against raw faiss, and a simulated
1,000,000 x 256 float16 database searched in blocks from disk with its peak memory.

    .venv/bin/python benchmarks/bench_search.py [--nb 1000000] [--nq 1000]

Where faiss sees a GPU, the overhead is measured on the CPU and on the GPU, and the block search
runs on the GPU (backend "auto"); the backend used is printed. The large search runs in a child
process so that its peak resident memory (VmHWM) is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def overhead(nb: int, nq: int, d: int, k: int, reps: int = 5, gpu: bool = False) -> dict[str, float]:
    """Best-of-``reps`` seconds of raw faiss and of :func:`imsim_lab.search.knn` on the same data.

    CPU: two raw baselines, a flat index (``IndexFlatL2`` + ``add`` + ``search``) and
    ``faiss.knn`` (the brute-force call without an index, which the wrapper itself uses: the
    fair baseline for its own overhead). ``gpu``: both on the GPU (raw: one GPU flat index with
    resources made once, as a careful faiss user would; ours: ``backend="faiss-gpu"``, which
    builds its index per call).
    """
    import faiss

    from imsim_lab.search import gpu_resources, knn

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((nb, d)).astype(np.float32)
    xq = rng.standard_normal((nq, d)).astype(np.float32)

    def raw():
        index = faiss.IndexFlatL2(d)
        if gpu:
            index = faiss.index_cpu_to_gpu(res, 0, index)
        index.add(xb)
        return index.search(xq, k)

    def ours():
        return knn(xq, xb, k, "l2", backend="faiss-gpu" if gpu else "faiss")

    def raw_knn():
        return faiss.knn(xq, xb, k, metric=faiss.METRIC_L2)

    if gpu:
        res = faiss.StandardGpuResources()
        raw(), ours()  # warm-up: CUDA context, cuBLAS handles, the cached resources of knn
        gpu_resources(0)
        fns = {"raw faiss GPU flat index": raw, "ours": ours}
    else:
        fns = {"raw faiss flat index": raw, "raw faiss.knn": raw_knn, "ours": ours}
        for f in fns.values():
            f()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):  # interleaved, best of reps: the CPU is shared
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def child(path: str, nq: int, k: int, block: int) -> None:
    from imsim_lab.search import knn, knn_blocks, resolve_backend

    knn(np.zeros((1, 4), np.float32), np.zeros((2, 4), np.float32), 1)  # load faiss (and the GPU) first
    base = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmRSS")).split()[1]) / 1024
    xb = np.load(path, mmap_mode="r")
    xq = np.random.default_rng(1).standard_normal((nq, xb.shape[1])).astype(np.float32)
    t = time.perf_counter()
    D, I = knn_blocks(xq, xb, k, "l2", backend="auto", block_size=block)
    dt = time.perf_counter() - t
    # VmHWM: the peak of this process image (ru_maxrss would carry the parent's peak across exec)
    status = Path("/proc/self/status").read_text()
    peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
    # exactness on a sample of queries: the same neighbours as a float32 numpy search of the blocks
    sample = np.arange(0, nq, max(1, nq // 8))[:8]
    _, I0 = knn_blocks(xq[sample], xb, k, "l2", backend="numpy", block_size=block)
    print(json.dumps({"seconds": dt, "peak_rss_mib": peak, "base_rss_mib": base, "shape": list(xb.shape),
                      "valid": bool((I >= 0).all()), "backend": resolve_backend("auto"),
                      "sample_agreement": float((I[sample] == I0).mean())}))


def make_db(path: Path, nb: int, d: int, chunk: int = 100_000) -> None:
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(nb, d))
    rng = np.random.default_rng(0)
    for i in range(0, nb, chunk):
        x = rng.standard_normal((min(chunk, nb - i), d)).astype(np.float32)
        mm[i:i + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    mm.flush()
    del mm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nb", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--block", type=int, default=65_536)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), int(a.child[2]), int(a.child[3]))
        return
    from imsim_lab.search import faiss_error, num_gpus, resolve_backend

    if faiss_error():
        raise SystemExit(f"bench_search: faiss cannot be imported ({faiss_error()})")
    print(f"search backend 'auto' here: {resolve_backend('auto')} (faiss sees {num_gpus()} GPU(s))")
    for gpu in ([False, True] if num_gpus() else [False]):
        t = overhead(100_000, a.nq, 256, 10, gpu=gpu)
        ours = t.pop("ours")
        print(f"knn 100,000 x 256, {a.nq} queries, k=10, {'GPU' if gpu else 'CPU'}: imsim_lab.search.knn "
              f"{ours * 1e3:.1f} ms; " + "; ".join(f"{name} {v * 1e3:.1f} ms (overhead {100 * (ours / v - 1):+.1f} %)"
                                                 for name, v in t.items()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "xb.npy"
        t = time.perf_counter()
        make_db(path, a.nb, 256)
        size = path.stat().st_size / 2 ** 20
        print(f"database {a.nb:,} x 256 float16 on disk: {size:.0f} MiB (written in {time.perf_counter() - t:.1f} s)")
        r = subprocess.run([sys.executable, __file__, "--child", str(path), str(a.nq), "10", str(a.block)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench_search: the block search failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"block search ({a.block:,} rows a block, backend {res['backend']}), {a.nq} queries, k=10: "
              f"{res['seconds']:.1f} s, peak resident memory {res['peak_rss_mib']:.0f} MiB, of which "
              f"{res['base_rss_mib']:.0f} MiB is the interpreter with numpy and faiss loaded (database "
              f"{size:.0f} MiB; as float32 in memory it would be {2 * size:.0f} MiB); neighbours equal to "
              f"numpy's on sampled queries: {100 * res['sample_agreement']:.1f} %")
        if not res["valid"]:
            raise SystemExit("bench_search: some queries got fewer than k neighbours")


if __name__ == "__main__":
    main()
