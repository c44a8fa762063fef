"""Search engine: faiss vs the numpy reference, block search over memmaps, backends, GPU."""

import numpy as np
import pytest

from imsim_lab import search
from imsim_lab.search import global_topn, knn, knn_blocks, knn_numpy, merge_knn, resolve_backend

gpu = pytest.mark.skipif(search.num_gpus() == 0, reason="needs a GPU visible to faiss")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    xq = rng.standard_normal((40, 24)).astype(np.float32)
    xb = rng.standard_normal((700, 24)).astype(np.float32)
    return xq, xb


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_faiss_matches_numpy_reference(data, metric):
    xq, xb = data
    D0, I0 = knn_numpy(xq, xb, 15, metric)
    D1, I1 = knn(xq, xb, 15, metric, backend="faiss")
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_allclose(D0, D1, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("block", [1, 64, 699, 700, 5000])
def test_block_search_equals_full_search(data, metric, block):
    xq, xb = data
    D0, I0 = knn_numpy(xq, xb, 10, metric)
    D1, I1 = knn_blocks(xq, xb, 10, metric, block_size=block, backend="numpy")
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_allclose(D0, D1, rtol=1e-5, atol=1e-4)
    D2, I2 = knn(xq, xb, 10, metric, block_size=block)
    np.testing.assert_array_equal(I0, I2)


def test_block_search_over_a_float16_memmap(data, tmp_path):
    xq, xb = data
    path = tmp_path / "xb.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=xb.shape)
    mm[:] = xb
    mm.flush()
    ro = np.load(path, mmap_mode="r")
    D, I = knn_blocks(xq, ro, 5, "l2", block_size=128)
    D0, I0 = knn_numpy(xq, xb.astype(np.float16).astype(np.float32), 5, "l2")
    np.testing.assert_array_equal(I, I0)
    _, I_slice = knn_blocks(xq, ro[100:], 5, "l2", block_size=128)  # a slice of a memmap too
    _, I1 = knn_numpy(xq, xb[100:].astype(np.float16).astype(np.float32), 5, "l2")
    np.testing.assert_array_equal(I_slice, I1)


def test_more_neighbours_than_database_pads_with_minus_one(data):
    xq, xb = data
    D, I = knn_blocks(xq, xb[:7], 10, "l2", block_size=3)
    assert (I[:, 7:] == -1).all() and np.isinf(D[:, 7:]).all()
    assert (I[:, :7] >= 0).all()


def test_merge_breaks_ties_by_index():
    D1, I1 = np.array([[1.0, 2.0]]), np.array([[5, 9]])
    D2, I2 = np.array([[1.0, 3.0]]), np.array([[2, 4]])
    D, I = merge_knn(D1, I1, D2, I2, 3, "l2")
    np.testing.assert_array_equal(I, [[2, 5, 9]])
    D, I = merge_knn(D1, I1, D2, I2, 2, "ip")
    np.testing.assert_array_equal(I, [[4, 9]])


def test_backend_resolution():
    assert resolve_backend("numpy") == "numpy"
    assert resolve_backend("auto") in ("faiss", "faiss-gpu")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("cuda")
    if search.num_gpus() == 0:
        with pytest.raises(RuntimeError, match="no GPU"):
            resolve_backend("faiss-gpu")


def test_existing_api_still_works(data):
    xq, xb = data
    qi, bi, dist = global_topn(xq, xb, 100, "l2")
    assert len(qi) == 100 and np.all(np.diff(dist) >= 0)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_faiss_gpu_matches_cpu(data, metric):
    xq, xb = data
    D0, I0 = knn(xq, xb, 10, metric, backend="faiss")
    D1, I1 = knn(xq, xb, 10, metric, backend="faiss-gpu")
    assert (I0 == I1).mean() > 0.99
    np.testing.assert_allclose(D0, D1, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@gpu
def test_sharded_gpu_index_and_gpu_blocks(data):
    xq, xb = data
    index = search.flat_index(xb.shape[1], "l2", gpu=True, ngpu=search.num_gpus())
    index.add(xb)
    _, I = index.search(xq, 5)
    _, I0 = knn_numpy(xq, xb, 5, "l2")
    assert (I == I0).mean() > 0.99
    _, I2 = knn_blocks(xq, xb, 5, "l2", backend="faiss-gpu", block_size=100)
    assert (I2 == I0).mean() > 0.99
