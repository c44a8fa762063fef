"""Keypoint search (exact in blocks, approximate, sharded and merged) against brute force, and imgFp's vote."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imsim_lab.features.keypoint_search import (VoteRules, build_ann, distributed_knn, exact_knn, keypoint_owner,
                                                merge_knn, nn_recall, shard_bounds, vote)


def data(mq=60, mb=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    xb = rng.integers(0, 60, (mb, d)).astype(np.uint8)
    xq = np.clip(xb[rng.integers(0, mb, mq)] + rng.integers(-3, 4, (mq, d)), 0, 255).astype(np.uint8)
    return xq, xb


def brute(xq, xb, k):
    d = ((xq[:, None, :].astype(np.float64) - xb[None].astype(np.float64)) ** 2).sum(-1)
    i = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, i, 1), i


@pytest.mark.parametrize("backend", ["numpy", "torch", "faiss"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_knn_equals_brute_force(backend, dtype):
    xq, xb = data()
    D0, I0 = brute(xq, xb, 3)
    D, I = exact_knn(xq, xb, 3, backend=backend, dtype=dtype, block=77)
    np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-2)
    assert (I[:, 0] == I0[:, 0]).mean() > 0.97 and (D[:, 0] <= D0[:, 0] + 1e-2).all()


def test_exact_knn_more_neighbours_than_rows_and_empty():
    xq, xb = data(mq=4, mb=2)
    D, I = exact_knn(xq, xb, 4)
    assert (I[:, 2:] == -1).all() and np.isinf(D[:, 2:]).all() and set(I[:, :2].ravel()) == {0, 1}
    D, I = exact_knn(xq[:0], xb, 1)
    assert D.shape == (0, 1)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_recall_and_memory(kind):
    xq, xb = data(mq=200, mb=3000, d=32)
    _, I0 = exact_knn(xq, xb, 1)
    ann = build_ann(xb, kind, nlist=16, nprobe=16, m=8)
    _, I = ann.search(xq, 1)
    r = nn_recall(I0, I)
    assert r >= (0.5 if kind == "ivfpq" else 0.95)
    assert ann.bytes_per_vector < (40 if kind == "ivfpq" else 1e9)
    assert nn_recall(I0, np.full_like(I0, -1)) == 0.0


def test_shards_merge_to_one_search():
    xq, xb = data()
    D0, I0 = exact_knn(xq, xb, 4)
    b = shard_bounds(len(xb), 3)
    assert b[0] == 0 and b[-1] == len(xb)
    parts = [exact_knn(xq, xb[b[s]:b[s + 1]], 4) for s in range(3)]
    D, I = merge_knn(parts, b[:-1], 4)
    np.testing.assert_allclose(D, D0)
    np.testing.assert_array_equal(I, I0)


SCRIPT = """
import sys, numpy as np, torch.distributed as dist
from imsim_lab.distributed import destroy_distributed, init_distributed
from imsim_lab.features.keypoint_search import distributed_knn
init_distributed("gloo")
rng = np.random.default_rng(1)
xb = rng.integers(0, 50, (301, 16)).astype(np.uint8); xq = rng.integers(0, 50, (40, 16)).astype(np.uint8)
D, I = distributed_knn(xq, xb, 3)
if dist.get_rank() == 0:
    np.savez(sys.argv[1], D=D, I=I)
destroy_distributed()
"""


def test_two_gloo_processes_equal_one(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    out = tmp_path / "o.npz"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29631",
                    str(script), str(out)], check=True, env=env, capture_output=True, timeout=120)
    z = np.load(out)
    rng = np.random.default_rng(1)
    xb = rng.integers(0, 50, (301, 16)).astype(np.uint8)
    xq = rng.integers(0, 50, (40, 16)).astype(np.uint8)
    D0, I0 = distributed_knn(xq, xb, 3)  # no process group: one search
    np.testing.assert_allclose(z["D"], D0)
    np.testing.assert_array_equal(z["I"], I0)


def brute_vote(qoff, D, I, owner, rules):
    out = {}
    for q in range(len(qoff) - 1):
        votes = {}
        for row in range(qoff[q], qoff[q + 1]):
            if I[row, 0] >= 0:
                votes.setdefault(int(owner[I[row, 0]]), []).append(float(D[row, 0]))
        if not votes:
            continue
        ranked = sorted(votes, key=lambda r: (-len(votes[r]), r))
        top, n = ranked[0], len(votes[ranked[0]])
        second = len(votes[ranked[1]]) if len(ranked) > 1 else 0
        mean = np.mean(votes[top])
        ok = (n > rules.single_min_votes) if len(ranked) == 1 else (n > rules.min_votes and n > second)
        out[q] = (top, n, second, bool(ok and mean < rules.max_mean_distance))
    return out


def test_vote_equals_brute_force_and_rules():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 14, 30)
    qoff = np.r_[0, np.cumsum(counts)]
    owner = keypoint_owner(np.r_[0, np.cumsum(rng.integers(1, 5, 6))])
    m = qoff[-1]
    I = np.where(rng.random((m, 1)) < 0.9, rng.integers(0, len(owner), (m, 1)), -1)
    I[qoff[0]:qoff[1], 0] = 0 if counts[0] else I[qoff[0]:qoff[1], 0]
    D = rng.uniform(0, 12000, (m, 1)).astype(np.float32)
    for rules in (VoteRules(), VoteRules(1, 2, 1e9)):
        v = vote(qoff, D, I, owner, rules)
        want = brute_vote(qoff, D, I, owner, rules)
        assert sorted(v.query.tolist()) == sorted(want)
        for q, r, n, s, a in zip(v.query, v.reference, v.votes, v.runner_up, v.accepted):
            assert want[q] == (r, n, s, bool(a))
    assert VoteRules() == VoteRules(3, 5, 8000.0)


def test_vote_single_candidate_needs_more_than_five():
    owner = np.array([0, 0, 1])
    qoff = np.array([0, 5, 11, 15])
    I = np.array([[0]] * 5 + [[1]] * 6 + [[0], [0], [0], [2]])
    D = np.full((15, 1), 100.0)
    v = vote(qoff, D, I, owner)
    assert v.accepted.tolist() == [False, True, False]  # 5 alone, 6 alone, 3 against 1 (needs > 3)
    D[5:11] = 9000.0
    assert vote(qoff, D, I, owner).accepted.tolist() == [False, False, False]


def _cuda():
    import torch

    return torch.cuda.is_available() or os.environ.get("IMSIM_REQUIRE_GPU") == "1"


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_torch_keypoint_search_on_cuda_float16_matches_numpy():
    xq, xb = data(mq=300, mb=5000, d=128)
    D0, I0 = exact_knn(xq, xb, 2)
    D, I = exact_knn(xq, xb, 2, backend="torch", dtype="float16", device="cuda", block=1024)
    assert (I[:, 0] == I0[:, 0]).mean() > 0.97
    np.testing.assert_allclose(D[:, 0], D0[:, 0], rtol=2e-2, atol=2.0)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_faiss_gpu_sharded_float16_keypoint_search_matches_numpy():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        if os.environ.get("IMSIM_REQUIRE_GPU") == "1":
            pytest.fail("faiss sees no GPU")
        pytest.skip("faiss CPU build")
    xq, xb = data(mq=300, mb=5000, d=128)
    D0, I0 = exact_knn(xq, xb, 1)
    D, I = exact_knn(xq, xb, 1, backend="faiss", dtype="float16", device="cuda")
    assert (I[:, 0] == I0[:, 0]).mean() > 0.97


def test_benchmark_peak_memory_counts_faiss_allocations():
    """benchmarks/bench_keypoints.py's PeakMemory sees memory that faiss allocates (tracemalloc does not)."""
    import faiss
    from support import load_script

    bench = load_script("benchmarks/bench_keypoints.py")
    x = np.random.default_rng(0).random((100_000, 128), dtype=np.float32)  # 51 MB, allocated before
    with bench.PeakMemory() as pm:
        index = faiss.IndexFlatL2(128)
        index.add(x)  # faiss copies the vectors into its own buffer
    if pm.how != "VmHWM":
        pytest.skip("the peak resident set cannot be reset here (/proc/self/clear_refs)")
    assert pm.bytes >= 40e6, pm.bytes
    del index
