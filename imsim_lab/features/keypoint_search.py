"""Keypoint search: every query keypoint against every reference keypoint, then imgFp's vote.

imgFp's local branch (Sun et al., arXiv 2112.02373; docs/methods.md; sun-xl/ISC2021
``local_fea/faiss_search/db_search.py``) finds, for each query RootSIFT descriptor, its nearest
descriptor among all reference keypoints (k = 1, squared L2), and each such neighbour votes for the
reference image that owns it. This module holds the search and the vote as functions on arrays:

* :func:`exact_knn`: exact k-NN in blocks of the database (numpy, torch, or faiss on CPU / on the GPUs
  sharded over devices), float16 or float32 arithmetic;
* :func:`build_ann` / :class:`AnnIndex`: approximate search (faiss ``IVF``, ``HNSW``, ``IVFPQ``),
  its bytes per database vector, and :func:`nn_recall`, the fraction of queries whose exact nearest
  neighbour it finds;
* :func:`shard_bounds`, :func:`merge_knn`, :func:`distributed_knn`: past one machine each
  ``torchrun`` rank searches one shard of the database and rank 0 merges the neighbours;
* :func:`keypoint_owner` and :func:`vote` with :class:`VoteRules` (the published defaults).

Vocabulary: ``xq`` (mq, d) query keypoint descriptors, ``xb`` (mb, d) database keypoint descriptors,
``D, I`` (mq, k) squared L2 distances (ascending) and database rows (-1 = none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ImsimError, MissingDependencyError

BACKENDS = ("numpy", "torch", "faiss")
ANN_KINDS = ("ivf", "hnsw", "ivfpq")
#: distances held at once by the numpy path (query rows x database rows of one block)
ENTRIES = 1 << 23


def _as(x: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x), dtype=np.float16 if dtype == "float16" else np.float32)


def _merge_topk(D0, I0, D1, I1, k):
    D, I = np.concatenate([D0, D1], axis=1), np.concatenate([I0, I1], axis=1)
    D = np.where(I < 0, np.inf, D)
    o = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, o, 1), np.take_along_axis(I, o, 1)


def exact_knn(xq: np.ndarray, xb: np.ndarray, k: int = 1, backend: str = "numpy", dtype: str = "float32",
              block: int = 1 << 16, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest database rows of every query row, by squared L2, the database in blocks.

    Args:
        xq: (mq, d); xb: (mb, d) (any numeric dtype; uint8 RootSIFT as imgFp stores it).
        k: neighbours per query (cut to mb).
        backend: ``numpy`` (BLAS), ``torch`` (``device``: None = CUDA when present) or ``faiss``
            (``IndexFlatL2``; on CUDA, one index per GPU with the database sharded over them, as
            imgFp's ``shard=True, useFloat16=True``).
        dtype: ``float16`` computes the products in half precision where the backend can (torch on
            CUDA, faiss GPU); on the CPU the descriptors are *stored* as float16 and upcast per block.
        block: database rows per block; queries are blocked too, so at most :data:`ENTRIES`
            distances are held at once.

    Returns:
        D (mq, k) float32 squared distances, ascending; I (mq, k) int64 rows of ``xb`` (-1 past mb).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    xq, xb = _as(xq, dtype), _as(xb, dtype)
    mq, mb = len(xq), len(xb)
    k = int(k)
    D = np.full((mq, k), np.inf, np.float32)
    I = np.full((mq, k), -1, np.int64)
    if mq == 0 or mb == 0:
        return D, I
    if backend == "faiss":
        return _faiss_exact(xq, xb, k, dtype, device, D, I)
    if backend == "torch":
        return _torch_exact(xq, xb, k, dtype, device, block, D, I)
    qstep = max(1, ENTRIES // min(block, mb))  # query rows per block: distances stay at ENTRIES floats
    bn = np.empty(mb, np.float32)
    for a in range(0, mb, block):
        b = xb[a:a + block].astype(np.float32)
        bn[a:a + len(b)] = np.einsum("ij,ij->i", b, b)
    for s in range(0, mq, qstep):
        q = xq[s:s + qstep].astype(np.float32)
        qn = np.einsum("ij,ij->i", q, q)
        Ds, Is = D[s:s + qstep], I[s:s + qstep]
        for a in range(0, mb, block):
            b = xb[a:a + block].astype(np.float32)
            dist = q @ b.T
            dist *= -2.0
            dist += bn[None, a:a + len(b)]
            dist += qn[:, None]
            np.maximum(dist, 0.0, out=dist)
            kk = min(k, len(b))
            if kk == 1:
                j = dist.argmin(axis=1)[:, None]
            elif kk < len(b):
                j = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
            else:
                j = np.tile(np.arange(len(b)), (len(q), 1))
            Ds, Is = _merge_topk(Ds, Is, np.take_along_axis(dist, j, 1), j + a, k)
        D[s:s + qstep], I[s:s + qstep] = Ds, Is
    return D.astype(np.float32), I


def _torch_exact(xq, xb, k, dtype, device, block, D, I):
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    half = dtype == "float16" and dev.type == "cuda"
    tdt = torch.float16 if half else torch.float32
    q = torch.from_numpy(xq.astype(np.float32)).to(dev)
    qn = (q * q).sum(1, keepdim=True)
    qh = q.to(tdt)
    for a in range(0, len(xb), block):
        b = torch.from_numpy(xb[a:a + block].astype(np.float32)).to(dev)
        dist = (qn - 2.0 * (qh @ b.to(tdt).T).float() + (b * b).sum(1)[None, :]).clamp_min_(0)
        kk = min(k, len(b))
        d, j = torch.topk(dist, kk, dim=1, largest=False)
        D, I = _merge_topk(D, I, d.cpu().numpy(), j.cpu().numpy().astype(np.int64) + a, k)
    return D.astype(np.float32), I


def _faiss_exact(xq, xb, k, dtype, device, D, I):
    faiss = _faiss()
    d = xb.shape[1]
    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") and device != "cpu" else 0
    index = faiss.IndexFlatL2(d)
    if ngpu > 0:
        co = faiss.GpuMultipleClonerOptions()
        co.shard, co.useFloat16 = True, dtype == "float16"
        index = faiss.index_cpu_to_all_gpus(index, co=co)
    index.add(xb.astype(np.float32))
    kk = min(k, len(xb))
    d_, i_ = index.search(xq.astype(np.float32), kk)
    D[:, :kk], I[:, :kk] = np.maximum(d_, 0), i_
    return D, I


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a core dependency
        raise MissingDependencyError("faiss-cpu", "keypoint search", "search") from None
    return faiss


@dataclass
class AnnIndex:
    """An approximate keypoint index (faiss) and what it costs.

    Attributes:
        kind: ``ivf``, ``hnsw`` or ``ivfpq``; index: the faiss index; n: database vectors;
        bytes_per_vector: the index's storage per database vector (codes, links and list ids).
    """

    kind: str
    index: object
    n: int
    bytes_per_vector: float

    def search(self, xq: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(D, I) as :func:`exact_knn` (approximate; PQ distances are estimates)."""
        kk = max(1, min(int(k), self.n))
        D, I = self.index.search(np.ascontiguousarray(xq, np.float32), kk)
        return np.maximum(D, 0).astype(np.float32), I.astype(np.int64)


def build_ann(xb: np.ndarray, kind: str = "ivf", nlist: int | None = None, nprobe: int = 8, m: int = 16,
              nbits: int = 8, hnsw_m: int = 32, ef_search: int = 64, train_size: int = 100_000,
              seed: int = 0) -> AnnIndex:
    """An approximate index of the database keypoints.

    Args:
        xb: (mb, d) descriptors. kind: ``ivf`` (IVF-Flat), ``hnsw`` (HNSW-Flat) or ``ivfpq``
            (IVF with product quantisation to ``m`` codes of ``nbits`` bits).
        nlist: inverted lists (default ``4 sqrt(mb)``, at least 1); nprobe: lists visited per query.
        hnsw_m, ef_search: HNSW links per node and search breadth.
        train_size: database rows sampled (seeded) to train the coarse quantiser and PQ.
    """
    if kind not in ANN_KINDS:
        raise ValueError(f"kind must be one of {ANN_KINDS}, not {kind!r}")
    faiss = _faiss()
    x = np.ascontiguousarray(xb, np.float32)
    mb, d = x.shape
    if mb == 0:
        raise ValueError("cannot build an approximate index of an empty database")
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m)
        index.hnsw.efSearch = ef_search
        index.add(x)
        return AnnIndex(kind, index, mb, 4.0 * d + 2 * hnsw_m * 4 * 1.0 + 8)
    nlist = int(nlist or max(1, min(mb // 39, round(4 * np.sqrt(mb)))))
    quant = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quant, d, nlist) if kind == "ivf" else faiss.IndexIVFPQ(quant, d, nlist, m, nbits)
    rng = np.random.default_rng(seed)
    xt = x[np.sort(rng.choice(mb, min(mb, train_size), replace=False))]
    index.cp.seed = seed
    index.train(xt)
    index.add(x)
    index.nprobe = min(nprobe, nlist)
    per = (4.0 * d if kind == "ivf" else m * nbits / 8.0) + 8  # codes + the 64-bit id of each list entry
    return AnnIndex(kind, index, mb, per)


def nn_recall(I_exact: np.ndarray, I_approx: np.ndarray) -> float:
    """Fraction of queries whose exact nearest neighbour ``I_exact[:, 0]`` is among ``I_approx``'s.

    Shapes: I_exact (mq, >=1), I_approx (mq, k').
    """
    if len(I_exact) == 0:
        return 1.0
    return float((np.asarray(I_approx) == np.asarray(I_exact)[:, :1]).any(axis=1).mean())


def shard_bounds(mb: int, world: int) -> np.ndarray:
    """(world + 1,) row bounds of ``world`` near-equal contiguous shards of a database of ``mb`` rows."""
    return np.linspace(0, mb, int(world) + 1).round().astype(np.int64)


def merge_knn(results: list[tuple[np.ndarray, np.ndarray]], starts: np.ndarray, k: int):
    """Merge per-shard (D, I) into the global k-NN: shard s's rows are offset by ``starts[s]``.

    Ties keep the lower shard first, so the result equals one search over the whole database.
    """
    if not results:
        raise ValueError("no shard results to merge")
    mq = len(results[0][0])
    D, I = np.full((mq, k), np.inf, np.float32), np.full((mq, k), -1, np.int64)
    for (d, i), s in zip(results, starts):
        D, I = _merge_topk(D, I, d, np.where(i >= 0, i + int(s), -1), k)
    return D, I


def distributed_knn(xq: np.ndarray, xb: np.ndarray, k: int = 1, backend: str = "numpy", dtype: str = "float32",
                    block: int = 1 << 16):
    """:func:`exact_knn` over ``torch.distributed``: rank r searches shard r of ``xb`` (every rank
    passes the whole ``xq`` and ``xb``, or memmaps of them); rank 0 returns the merged (D, I), the
    other ranks (None, None). Without an initialised process group it is :func:`exact_knn`.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return exact_knn(xq, xb, k, backend, dtype, block)
    rank, world = dist.get_rank(), dist.get_world_size()
    bounds = shard_bounds(len(xb), world)
    part = exact_knn(xq, xb[bounds[rank]:bounds[rank + 1]], k, backend, dtype, block)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(part, gathered, dst=0)
    if rank != 0:
        return None, None
    return merge_knn(gathered, bounds[:-1], k)


def keypoint_owner(offsets: np.ndarray) -> np.ndarray:
    """(m,) int64 image row of each keypoint, from a store's (n + 1,) ``offsets``."""
    off = np.asarray(offsets, np.int64)
    return np.repeat(np.arange(len(off) - 1), np.diff(off))


@dataclass(frozen=True)
class VoteRules:
    """imgFp's acceptance rules (sun-xl/ISC2021 ``local_fea/faiss_search/db_search.py``), the
    published defaults: the top-voted reference is accepted when it has more than ``min_votes``
    votes, strictly more than the runner-up and a mean squared distance of its votes under
    ``max_mean_distance``; when it is the only reference voted for, it needs more than
    ``single_min_votes``. Distances are on the 0..255 RootSIFT scale (squared)."""

    min_votes: int = 3
    single_min_votes: int = 5
    max_mean_distance: float = 8000.0


@dataclass(frozen=True, eq=False)
class VoteResult:
    """One row per query with votes. Shapes (nv,): ``query`` rows of the query image, ``reference``
    its top-voted reference image, ``votes``, ``runner_up`` (votes of the second, 0 if none),
    ``n_voted`` (references voted for), ``mean_distance``, ``accepted`` (the rules)."""

    query: np.ndarray
    reference: np.ndarray
    votes: np.ndarray
    runner_up: np.ndarray
    n_voted: np.ndarray
    mean_distance: np.ndarray
    accepted: np.ndarray


def vote(query_offsets: np.ndarray, D: np.ndarray, I: np.ndarray, reference_owner: np.ndarray,
         rules: VoteRules = VoteRules()) -> VoteResult:
    """imgFp's vote: each query keypoint's nearest reference keypoint votes for its image.

    Args:
        query_offsets: (nq + 1,) offsets of the query keypoints (rows of D and I).
        D, I: (mq, >=1) the keypoint search (only column 0 votes); I = -1 does not vote.
        reference_owner: (mb,) reference image of each database keypoint (:func:`keypoint_owner`).

    Returns:
        :class:`VoteResult`; the top reference is the most voted, ties to the lower row.
    """
    qown = keypoint_owner(query_offsets)
    i0 = np.asarray(I)[:, 0] if len(I) else np.zeros(0, np.int64)
    ok = i0 >= 0
    q, r, d = qown[ok], np.asarray(reference_owner, np.int64)[i0[ok]], np.asarray(D, np.float64)[ok, 0]
    nr = int(reference_owner.max()) + 1 if len(reference_owner) else 1
    key = q * nr + r
    uk, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    dsum = np.bincount(inv, weights=d, minlength=len(uk))
    uq, ur = uk // nr, uk % nr
    o = np.lexsort((ur, -cnt, uq))  # per query: most votes first, then the lower reference
    uq, ur, cnt, dsum = uq[o], ur[o], cnt[o], dsum[o]
    first = np.r_[True, uq[1:] != uq[:-1]] if len(uq) else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    n_voted = np.diff(np.r_[starts, len(uq)])
    second = np.where(n_voted > 1, cnt[np.minimum(starts + 1, len(cnt) - 1)], 0)
    votes, mean = cnt[starts], dsum[starts] / np.maximum(cnt[starts], 1)
    acc = np.where(n_voted > 1, (votes > rules.min_votes) & (votes > second), votes > rules.single_min_votes)
    acc &= mean < rules.max_mean_distance
    return VoteResult(uq[starts], ur[starts], votes, second, n_voted, mean, acc)


def check_descriptors(meta_a: dict, meta_b: dict, where: str) -> None:
    """Refuse to search keypoints of two feature configurations against each other (one line)."""
    a, b = (m.get("settings", {}).get("model") for m in (meta_a, meta_b))
    if a and b and a != b:
        raise ImsimError(f"{where}: query and reference local features come from different models ({a} vs {b})")
