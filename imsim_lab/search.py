"""Nearest-neighbour search and the descriptor-track candidate generation.

Vocabulary of faiss ``contrib``: ``xq`` (nq, d) queries, ``xb`` (nb, d) database, ``k``
neighbours, ``D, I`` (nq, k) distances (or similarities) and indices; ``I == -1`` where a query
has fewer than k results. ``metric`` is ``"l2"`` (squared Euclidean, smaller = closer) or
``"ip"`` (inner product, larger = closer). Scores handed to the metrics are always "higher = more
similar": L2 distances are negated once, here, at the edge.

``backend``: ``"faiss"`` (exact flat index, CPU), ``"faiss-gpu"`` (exact flat index on every
visible GPU, the database sharded across them), ``"torch"`` (exact brute force with torch on
CUDA when present, else on the CPU: the GPU path for machines whose faiss has no GPU support),
or ``"numpy"`` (the exact reference path). ``"auto"`` picks faiss on GPU when faiss sees one,
else torch when torch sees a CUDA GPU, else faiss on CPU, else numpy (also when faiss is
installed but cannot load, e.g. ``faiss-gpu`` without its CUDA 12 wheels).
GPU resources are made once per process and device (:func:`gpu_resources`); a k above
:data:`GPU_MAX_K` (faiss's GPU limit) is searched on the CPU.

Databases larger than memory: :func:`knn_blocks` streams the database (for instance a read-only
memmap of float16 descriptors) in blocks of rows and merges the per-block results, so the peak
memory is one block plus the queries. ``knn(..., block_size=...)`` routes there.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np

METRICS = ("l2", "ip")


_FAISS: dict = {}  # {"module": faiss or None, "error": why it is unusable}


def _faiss():
    """The faiss module, or None when it cannot be imported.

    Not only ImportError: the ``faiss-gpu`` wheel raises RuntimeError at import when its CUDA 12
    wheels (``nvidia-cublas-cu12``...) are missing, which must not break the CPU fallbacks.
    """
    if "module" not in _FAISS:
        try:
            import faiss
        except Exception as e:  # noqa: BLE001 - ImportError, RuntimeError, OSError from dlopen
            _FAISS.update(module=None, error=f"{type(e).__name__}: {e}")
        else:
            _FAISS.update(module=faiss, error=None)
    return _FAISS["module"]


def faiss_error() -> str | None:
    """Why faiss cannot be imported here (None when it can)."""
    _faiss()
    return _FAISS["error"]


def _check(xq: np.ndarray, xb: np.ndarray, metric: str):
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise ValueError(f"xq {xq.shape} and xb {xb.shape} must be 2-D with the same dimension")
    return xq, xb


def _no_neighbours(nq: int, k: int, metric: str):
    """D, I (nq, k) of a search that found nothing: D = +inf ("l2") or -inf ("ip"), I = -1.
    Every path fills the columns of the neighbours it finds and leaves the rest as padding."""
    D = np.full((nq, k), np.inf if metric == "l2" else -np.inf, dtype=np.float32)
    return D, np.full((nq, k), -1, dtype=np.int64)


def knn_numpy(xq: np.ndarray, xb: np.ndarray, k: int, metric: str = "l2", block: int = 4096):
    """Exact k-NN in numpy, the reference of every other path. Returns D, I (nq, k)."""
    xq, xb = _check(xq, xb, metric)
    nq, nb = len(xq), len(xb)
    kk = min(k, nb)
    D, I = _no_neighbours(nq, k, metric)
    if kk == 0:
        return D, I
    nb2 = (xb.astype(np.float64) ** 2).sum(1)
    for i0 in range(0, nq, block):
        q = xq[i0:i0 + block].astype(np.float64)
        ip = q @ xb.T.astype(np.float64)
        if metric == "l2":
            dist = (q ** 2).sum(1)[:, None] + nb2[None, :] - 2 * ip
            np.maximum(dist, 0, out=dist)
            key = dist
        else:
            dist = ip
            key = -ip
        part = np.argpartition(key, kk - 1, axis=1)[:, :kk] if kk < nb else np.tile(np.arange(nb), (len(q), 1))
        pk = np.take_along_axis(key, part, 1)
        o = np.lexsort((part, pk), axis=1)  # by distance, then index (deterministic ties)
        sel = np.take_along_axis(part, o, 1)
        D[i0:i0 + block, :kk] = np.take_along_axis(dist, sel, 1)
        I[i0:i0 + block, :kk] = sel
    return D, I


BACKENDS = ("auto", "faiss", "faiss-gpu", "torch", "numpy")
#: largest k that faiss's GPU k-selection supports (GPU_MAX_SELECTION_K); larger k runs on the CPU
GPU_MAX_K = 2048


def num_gpus() -> int:
    """GPUs that faiss can use (0 without a GPU build of faiss or without CUDA)."""
    faiss = _faiss()
    try:
        return int(faiss.get_num_gpus()) if faiss is not None and hasattr(faiss, "get_num_gpus") else 0
    except RuntimeError:  # pragma: no cover - driver problems
        return 0


def resolve_backend(backend: str = "auto") -> str:
    """The concrete backend of ``backend`` on this machine."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if backend == "auto":
        if _faiss() is not None and num_gpus() > 0:
            return "faiss-gpu"
        if torch_cuda():
            return "torch"
        return "numpy" if _faiss() is None else "faiss"
    if backend in ("faiss", "faiss-gpu") and _faiss() is None:
        raise ImportError(f"backend {backend!r}: faiss cannot be imported ({faiss_error()})")
    if backend == "faiss-gpu" and num_gpus() == 0:
        raise RuntimeError("backend 'faiss-gpu' asked for, but faiss sees no GPU")
    return backend


def torch_cuda() -> bool:
    """Whether torch is importable and sees a CUDA GPU.

    Without an NVIDIA driver on the machine (and torch not already loaded) the answer is no
    without importing torch, whose CUDA libraries would add hundreds of MB to a CPU-only search.
    """
    if "torch" not in sys.modules and not (os.path.exists("/proc/driver/nvidia") or shutil.which("nvidia-smi")):
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - core dependency
        return False
    return bool(torch.cuda.is_available())


def knn_torch(xq: np.ndarray, xb: np.ndarray, k: int, metric: str = "l2", device: str | None = None,
              max_scores: int = 1 << 26):
    """Exact k-NN with torch (float32 matrix products, ``torch.topk``), on ``device`` (None:
    CUDA when present, else CPU). The database is moved once; queries go in batches whose score
    matrix holds at most ``max_scores`` floats (256 MiB). TF32 is off for these products, so the
    result matches :func:`knn_numpy` up to float32 rounding. Returns D, I (nq, k) as numpy."""
    import torch

    xq, xb = _check(xq, xb, metric)
    nq, nb = len(xq), len(xb)
    kk = min(k, nb)
    D, I = _no_neighbours(nq, k, metric)
    if kk == 0 or nq == 0:
        return D, I
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            b = _tensor(xb).to(dev)
            b2 = (b * b).sum(1) if metric == "l2" else None
            step = max(1, max_scores // nb)
            for i0 in range(0, nq, step):
                q = _tensor(xq[i0:i0 + step]).to(dev)
                s = q @ b.T
                if metric == "l2":  # ||q||^2 + ||b||^2 - 2 q.b, the smallest first
                    s = ((q * q).sum(1, keepdim=True) + b2[None, :] - 2 * s).clamp_(min=0)
                vals, idx = torch.topk(s, kk, dim=1, largest=metric == "ip", sorted=True)
                D[i0:i0 + len(q), :kk] = vals.cpu().numpy()
                I[i0:i0 + len(q), :kk] = idx.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return D, I


def _tensor(x: np.ndarray):
    """A torch view of a float32 array, read-only ones (memmaps) included: never written to."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(x)


def gpu_devices(ngpu: int | None = None, gpus=None, available: int | None = None) -> list[int]:
    """The GPU ids an index is spread over: ``gpus`` (ids; one may repeat, e.g. ``[0, 0]`` for two
    shards on one GPU), else the first ``ngpu``, else every visible GPU."""
    n = num_gpus() if available is None else available
    if gpus is not None:
        devices = [int(g) for g in gpus]
    else:
        if ngpu is not None and ngpu > n:
            raise RuntimeError(f"{ngpu} GPUs asked for, faiss sees {n}")
        devices = list(range(n if ngpu is None else ngpu))
    if not devices:
        raise RuntimeError("no GPU to put the index on (faiss sees none)")
    bad = [g for g in devices if not 0 <= g < n]
    if bad:
        raise RuntimeError(f"GPU ids {bad} asked for, faiss sees {n} GPU(s)")
    return devices


_GPU_RESOURCES: dict = {}


def gpu_resources(device: int = 0, slot: int = 0):
    """A ``faiss.StandardGpuResources`` for (``device``, ``slot``), made once per process.

    Each one reserves about 1.5 GiB of temporary GPU memory, 256 MiB of pinned host memory and a
    cuBLAS handle: making one per search would cost more than a small search. A resource object is
    not thread-safe, so two shards on one GPU (searched in parallel threads) take two slots.
    """
    key = (int(device), int(slot))
    if key not in _GPU_RESOURCES:
        _GPU_RESOURCES[key] = _faiss().StandardGpuResources()
    return _GPU_RESOURCES[key]


def flat_index(d: int, metric: str = "l2", gpu: bool = False, ngpu: int | None = None,
               float16: bool = False, gpus=None):
    """An exact (flat) faiss index, empty.

    On GPU (``gpu=True``) it is cloned to the devices of :func:`gpu_devices` (``gpus`` ids or the
    first ``ngpu``, all by default); with more than one device the database is sharded, each
    holding a contiguous part of it (ids stay global). ``float16`` stores the vectors in float16
    on the GPU (half the memory, distances to about 1e-3 relative).
    """
    faiss = _faiss()
    if faiss is None:
        raise ImportError(f"faiss cannot be imported ({faiss_error()})")
    index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    if not gpu:
        return index
    devices = gpu_devices(ngpu, gpus)
    if len(devices) == 1:
        co = faiss.GpuClonerOptions()
        co.useFloat16 = float16
        return faiss.index_cpu_to_gpu(gpu_resources(devices[0]), devices[0], index, co)
    co = faiss.GpuMultipleClonerOptions()
    co.shard = True
    co.useFloat16 = float16
    resources = [gpu_resources(g, devices[:i].count(g)) for i, g in enumerate(devices)]
    return faiss.index_cpu_to_gpu_multiple_py(resources, index, co, devices)


def knn(xq: np.ndarray, xb: np.ndarray, k: int, metric: str = "l2", backend: str = "auto",
        block_size: int | None = None):
    """Exact k nearest neighbours of each query.

    Args:
        xq: (nq, d) queries. xb: (nb, d) database (any float dtype, may be a memmap).
        k: neighbours per query.
        metric: "l2" (squared distances, ascending) or "ip" (similarities, descending).
        backend: "auto", "faiss", "faiss-gpu", "torch" or "numpy" (see module docstring); with
            faiss on GPU a k above :data:`GPU_MAX_K` is searched by faiss on the CPU (same exact
            result).
        block_size: search the database in blocks of this many rows (:func:`knn_blocks`).

    Returns:
        D, I: (nq, k) float32 and int64; I == -1 (and D = ±inf) past the database size.
    """
    if block_size is not None and len(xb) > block_size:
        return knn_blocks(xq, xb, k, metric, backend, block_size)
    xq, xb = _check(xq, xb, metric)
    backend = resolve_backend(backend)
    kk = min(k, len(xb))  # faiss is only asked for neighbours that exist; the rest is padding
    if backend == "numpy" or kk == 0:
        return knn_numpy(xq, xb, k, metric)
    if backend == "torch":
        return knn_torch(xq, xb, k, metric)
    faiss = _faiss()
    if backend == "faiss" or kk > GPU_MAX_K:
        # brute force without copying xb into an index: one copy less of the database in memory
        D, I = faiss.knn(xq, xb, kk, metric=faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    else:
        index = flat_index(xb.shape[1], metric, gpu=True)
        index.add(xb)
        D, I = index.search(xq, kk)
        del index  # frees its GPU memory now
    if kk < k:  # padding for the neighbours that do not exist (no copy otherwise: k may be large)
        D_all, I_all = _no_neighbours(len(xq), k, metric)
        D_all[:, :kk], I_all[:, :kk] = D, I
        D, I = D_all, I_all
    D[I < 0] = np.inf if metric == "l2" else -np.inf  # faiss pads with -1 too
    return D, I


def merge_knn(D1, I1, D2, I2, k: int, metric: str = "l2"):
    """Merge two k-NN results of the same queries (ties: smaller index first, as knn_numpy)."""
    D = np.concatenate([D1, D2], axis=1)
    I = np.concatenate([I1, I2], axis=1)
    key = D.astype(np.float64) if metric == "l2" else -D.astype(np.float64)
    key = np.where(I < 0, np.inf, key)
    idx = np.where(I < 0, np.iinfo(np.int64).max, I)
    o = np.lexsort((idx, key), axis=1)[:, :k]
    return np.take_along_axis(D, o, 1), np.take_along_axis(I, o, 1)


def iter_blocks(xb: np.ndarray, block_size: int):
    """Yield (offset, float32 block) over the rows of ``xb``.

    A whole-file memmap (``np.load(..., mmap_mode="r")``) is read through a fresh mapping per
    block that is closed right after the copy, so pages already searched do not stay resident.
    """
    import mmap

    # only a memmap that owns its mapping (not a slice of one: its offset would be stale)
    whole_file = (isinstance(xb, np.memmap) and getattr(xb, "filename", None) and xb.flags.c_contiguous
                  and xb.ndim == 2 and isinstance(xb.base, mmap.mmap))
    for i0 in range(0, len(xb), block_size):
        rows = min(block_size, len(xb) - i0)
        if whole_file:
            part = np.memmap(xb.filename, dtype=xb.dtype, mode="r", shape=(rows, xb.shape[1]),
                             offset=xb.offset + i0 * xb.shape[1] * xb.dtype.itemsize)
            block = np.array(part, dtype=np.float32)
            del part
        else:
            block = np.ascontiguousarray(xb[i0:i0 + rows], dtype=np.float32)
        yield i0, block


def knn_blocks(xq: np.ndarray, xb: np.ndarray, k: int, metric: str = "l2", backend: str = "auto",
               block_size: int = 65536):
    """Exact k-NN over a database read in blocks of ``block_size`` rows.

    Peak memory: one float32 block, the queries and 2 x (nq, k) results; ``xb`` can be a
    read-only memmap of float16 descriptors far larger than memory. Same output as :func:`knn`.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nq = len(xq)
    D, I = _no_neighbours(nq, k, metric)
    for i0, block in iter_blocks(xb, block_size):
        Db, Ib = knn(xq, block, min(k, len(block)), metric, backend)
        Ib = np.where(Ib >= 0, Ib + i0, -1)
        D, I = merge_knn(D, I, Db, Ib, k, metric)
    return D, I


def global_topn(xq: np.ndarray, xb: np.ndarray, n: int, metric: str = "l2", backend: str = "auto",
                k0: int | None = None):
    """The n closest (query, database) pairs over ALL queries: one global budget of pairs.

    This is the organisers' candidate generation (``docs/PROTOCOLS.md`` section 5): a query can get no
    pair and another more than 10. Exact: a k-NN with k0 neighbours per query is taken first;
    any query whose k0-th neighbour still lies inside the cut is searched again with a larger k
    until no query can hide more pairs inside the cut. Ties at the cut are broken by (query,
    rank), deterministically.

    Returns:
        (qi, bi, dist): (m,) query indices, database indices and distances (or similarities
        for "ip"), m = min(n, nq * nb), sorted closest first.
    """
    xq, xb = _check(xq, xb, metric)
    nq, nb = len(xq), len(xb)
    n = int(min(n, nq * nb))
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    sign = 1.0 if metric == "l2" else -1.0  # key: smaller = closer
    k = min(nb, k0 or max(10, 2 * (n // max(nq, 1)) + 1))
    D, I = knn(xq, xb, k, metric, backend)
    groups = [(np.arange(nq), D, I)]  # (query rows, D, I); a later group supersedes earlier rows
    owner = np.zeros(nq, np.int64)  # which group holds each query's current result
    while True:
        parts = []
        lastkey = np.empty(nq)
        for g, (rows, Dg, Ig) in enumerate(groups):
            mine = owner[rows] == g
            rows, Dg, Ig = rows[mine], Dg[mine], Ig[mine]
            kg = Ig.shape[1]
            parts.append((sign * Dg.astype(np.float64).ravel(), np.repeat(rows, kg), Ig.ravel(),
                          np.tile(np.arange(kg), len(rows))))
            lastkey[rows] = sign * Dg[:, -1].astype(np.float64)
        key, qi, bi, rk = (np.concatenate([p[j] for p in parts]) for j in range(4))
        order = np.lexsort((rk, qi, key))[:n]
        cut = key[order[-1]]
        # a query whose farthest retrieved neighbour is still inside the cut may hide more pairs
        klen = np.array([groups[g][2].shape[1] for g in owner])
        suspect = np.flatnonzero((lastkey <= cut) & (klen < nb))
        if len(suspect) == 0:
            break
        newk = int(min(nb, 2 * klen[suspect].max()))
        Ds, Is = knn(xq[suspect], xb, newk, metric, backend)
        groups.append((suspect, Ds, Is))
        owner[suspect] = len(groups) - 1
    return qi[order], bi[order], (sign * key[order]).astype(np.float32)
