"""Search engine: faiss vs the numpy reference, block search over memmaps, backends, GPU.

The GPU logic (backend choice, resources made once, sharding, float16 flags, k above faiss's GPU
limit) is also run here on the CPU against a stand-in for faiss's GPU entry points; the tests
marked ``gpu`` run the real thing (``IMSIM_REQUIRE_GPU=1`` turns their skip into a failure).
"""

import builtins
import os
import types
import warnings

import numpy as np
import pytest

from imsim_lab import search
from imsim_lab.search import global_topn, knn, knn_blocks, knn_numpy, merge_knn, resolve_backend

REQUIRE_GPU = os.environ.get("IMSIM_REQUIRE_GPU") == "1"
gpu = pytest.mark.skipif(search.num_gpus() == 0 and not REQUIRE_GPU, reason="needs a GPU visible to faiss")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    xq = rng.standard_normal((40, 24)).astype(np.float32)
    xb = rng.standard_normal((700, 24)).astype(np.float32)
    return xq, xb


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_backend_matches_numpy_reference(data, metric, backend):
    xq, xb = data
    D0, I0 = knn_numpy(xq, xb, 15, metric)
    D1, I1 = knn(xq, xb, 15, metric, backend=backend)
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
    assert resolve_backend("numpy") == "numpy" and resolve_backend("torch") == "torch"
    assert resolve_backend("auto") in ("faiss", "faiss-gpu", "torch")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("cuda")
    if search.num_gpus() == 0:
        with pytest.raises(RuntimeError, match="no GPU"):
            resolve_backend("faiss-gpu")


def test_existing_api_still_works(data):
    xq, xb = data
    qi, bi, dist = global_topn(xq, xb, 100, "l2")
    assert len(qi) == 100 and np.all(np.diff(dist) >= 0)


# ------------------------------------------------------------------------------------------------
# the GPU logic on the CPU: faiss's GPU entry points replaced by recorders returning CPU indexes


class FakeGpuFaiss(types.SimpleNamespace):
    """The real faiss, except that it "sees" ``ngpu`` GPUs; cloning to a GPU records the call and
    returns a CPU flat index (several devices: a real ``IndexShards`` of CPU flat indexes)."""

    def __init__(self, real, ngpu):
        super().__init__(real=real, ngpu=ngpu, calls=[], resources=[])

    def __getattr__(self, name):
        return getattr(self.real, name)

    def get_num_gpus(self):
        return self.ngpu

    def StandardGpuResources(self):
        res = object()
        self.resources.append(res)
        return res

    def _cpu_copy(self, index):
        return self.real.IndexFlat(index.d, index.metric_type)

    def index_cpu_to_gpu(self, res, device, index, co=None):
        self.calls.append(("one", res, device, bool(co.useFloat16)))
        return self._cpu_copy(index)

    def index_cpu_to_gpu_multiple_py(self, resources, index, co=None, gpus=None):
        self.calls.append(("multi", list(resources), list(gpus), bool(co.shard), bool(co.useFloat16)))
        shards = self.real.IndexShards(index.d, False, True)  # successive ids, as faiss's GPU cloner
        for _ in gpus:
            shards.add_shard(self._cpu_copy(index))  # faiss keeps a reference to each shard
        return shards


@pytest.fixture
def fake_gpus(monkeypatch):
    """Install a FakeGpuFaiss seeing n GPUs: ``fake_gpus(n)`` returns it."""
    real = search._faiss()
    if real is None:
        pytest.skip("faiss cannot be imported")
    monkeypatch.setattr(search, "_GPU_RESOURCES", {})

    def make(n):
        fake = FakeGpuFaiss(real, n)
        monkeypatch.setattr(search, "_FAISS", {"module": fake, "error": None})
        return fake

    return make


def test_auto_backend_follows_what_faiss_sees(fake_gpus, monkeypatch):
    monkeypatch.setattr(search, "torch_cuda", lambda: False)
    fake_gpus(0)
    assert resolve_backend("auto") == "faiss"
    with pytest.raises(RuntimeError, match="no GPU"):
        resolve_backend("faiss-gpu")
    fake_gpus(1)
    assert resolve_backend("auto") == "faiss-gpu" and resolve_backend("faiss") == "faiss"


def test_auto_backend_takes_torch_on_cuda_when_faiss_has_no_gpu(fake_gpus, monkeypatch):
    monkeypatch.setattr(search, "torch_cuda", lambda: True)
    fake_gpus(0)  # faiss-cpu (or a faiss-gpu that sees no GPU) beside a CUDA torch
    assert resolve_backend("auto") == "torch"
    fake_gpus(1)
    assert resolve_backend("auto") == "faiss-gpu"


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia"), reason="a machine with an NVIDIA driver")
def test_auto_backend_does_not_load_torch_on_a_machine_without_nvidia_driver(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PATH": str(tmp_path)}  # no nvidia-smi either
    code = ("import sys; from imsim_lab.search import knn, resolve_backend; import numpy as np; "
            "b = resolve_backend('auto'); knn(np.zeros((1, 4), np.float32), np.ones((3, 4), np.float32), 2); "
            "print(b, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["faiss", "False"]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_torch_backend_in_query_batches_and_global_topn(data, metric):
    xq, xb = data
    _, I0 = knn_numpy(xq, xb, 15, metric)
    _, I2 = search.knn_torch(xq, xb, 15, metric, device="cpu", max_scores=3 * len(xb))  # 3 queries a batch
    np.testing.assert_array_equal(I0, I2)
    qi, bi, _ = global_topn(xq, xb, 120, metric, backend="torch")
    qj, bj, _ = global_topn(xq, xb, 120, metric, backend="numpy")
    assert set(zip(qi, bi)) == set(zip(qj, bj))


def test_torch_backend_pads_and_reads_float16_memmaps(data, tmp_path):
    xq, xb = data
    D, I = knn(xq, xb[:7], 10, "l2", backend="torch")
    assert (I[:, 7:] == -1).all() and np.isinf(D[:, 7:]).all() and (I[:, :7] >= 0).all()
    path = tmp_path / "xb.npy"
    np.save(path, xb.astype(np.float16))
    ro = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning from torch
        _, I = knn_blocks(xq, ro, 5, "l2", backend="torch", block_size=128)
    np.testing.assert_array_equal(I, knn_numpy(xq, xb.astype(np.float16).astype(np.float32), 5, "l2")[1])


def test_faiss_that_cannot_load_falls_back_to_numpy(monkeypatch, data):
    """faiss-gpu without its CUDA 12 wheels raises RuntimeError (not ImportError) at import."""
    real_import = builtins.__import__

    def broken(name, *a, **k):
        if name == "faiss":
            raise RuntimeError("faiss-gpu: failed to load libcublas.so.12")
        return real_import(name, *a, **k)

    monkeypatch.setattr(search, "_FAISS", {})
    monkeypatch.setattr(search, "torch_cuda", lambda: False)  # a CPU machine
    monkeypatch.setattr(builtins, "__import__", broken)
    assert search._faiss() is None and "libcublas" in search.faiss_error()
    assert search.num_gpus() == 0 and resolve_backend("auto") == "numpy"
    with pytest.raises(ImportError, match="libcublas"):
        resolve_backend("faiss")
    xq, xb = data
    np.testing.assert_array_equal(knn(xq, xb, 5)[1], knn_numpy(xq, xb, 5)[1])


def test_gpu_devices_choice():
    assert search.gpu_devices(available=2) == [0, 1]
    assert search.gpu_devices(ngpu=1, available=2) == [0]
    assert search.gpu_devices(gpus=[0, 0], available=1) == [0, 0]
    for kw, msg in ((dict(available=0), "no GPU"), (dict(ngpu=3, available=2), "3 GPUs"),
                    (dict(gpus=[1], available=1), r"\[1\]"), (dict(ngpu=0, available=2), "no GPU")):
        with pytest.raises(RuntimeError, match=msg):
            search.gpu_devices(**kw)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_one_gpu_clone_and_resources_made_once(fake_gpus, data, metric):
    fake = fake_gpus(1)
    xq, xb = data
    D0, I0 = knn_numpy(xq, xb, 7, metric)
    D, I = knn(xq, xb, 7, metric, backend="faiss-gpu")
    D2, I2 = knn_blocks(xq, xb, 7, metric, backend="faiss-gpu", block_size=100)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_array_equal(I2, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-4)
    assert len(fake.calls) == 1 + 7 and {c[0] for c in fake.calls} == {"one"}  # 1 search + 7 blocks
    assert len(fake.resources) == 1 and all(c[1] is fake.resources[0] and c[2] == 0 for c in fake.calls)
    search.flat_index(24, metric, gpu=True, float16=True)
    assert fake.calls[-1][3] is True and not any(c[3] for c in fake.calls[:-1])


@pytest.mark.parametrize("gpus", [None, [0, 0]])
def test_sharded_index_over_two_devices_gives_global_ids(fake_gpus, data, gpus):
    fake = fake_gpus(2 if gpus is None else 1)
    xq, xb = data
    index = search.flat_index(24, "l2", gpu=True, gpus=gpus, float16=True)
    index.add(xb)
    _, I = index.search(xq, 10)
    np.testing.assert_array_equal(I, knn_numpy(xq, xb, 10)[1])
    kind, res, devices, shard, f16 = fake.calls[-1]
    assert kind == "multi" and shard and f16 and devices == ([0, 1] if gpus is None else [0, 0])
    assert len(res) == 2 and res[0] is not res[1]  # one resource object per shard, never shared by threads
    assert {len(fake.resources)} == {2}
    search.flat_index(24, "l2", gpu=True, gpus=gpus)
    assert len(fake.resources) == 2  # made once per (device, slot)


def test_k_above_the_gpu_limit_and_the_database_size(fake_gpus, data, monkeypatch):
    fake = fake_gpus(1)
    monkeypatch.setattr(search, "GPU_MAX_K", 8)
    xq, xb = data
    D, I = knn(xq, xb, 9, "ip", backend="faiss-gpu")  # above the limit: faiss on the CPU
    assert fake.calls == []
    np.testing.assert_array_equal(I, knn_numpy(xq, xb, 9, "ip")[1])
    D, I = knn(xq, xb[:5], 7, "l2", backend="faiss-gpu")  # more neighbours than vectors: padding
    assert len(fake.calls) == 1
    assert (I[:, 5:] == -1).all() and np.isinf(D[:, 5:]).all() and (D[:, 5:] > 0).all()
    np.testing.assert_array_equal(I[:, :5], knn_numpy(xq, xb[:5], 5)[1])
    qi, bi, dist = global_topn(xq, xb, 500, "l2", backend="faiss-gpu", k0=4)  # re-searches with k up to 32
    q0, b0, d0 = global_topn(xq, xb, 500, "l2", backend="numpy", k0=4)
    np.testing.assert_array_equal(qi, q0)
    np.testing.assert_array_equal(bi, b0)


# ------------------------------------------------------------------------------------------------
# the real GPU (run by scripts/gpu_checks.sh)


def _faiss_gpu_recall(I, I0):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I, I0)])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_faiss_gpu_matches_cpu(data, metric):
    xq, xb = data
    D0, I0 = knn(xq, xb, 10, metric, backend="faiss")
    D1, I1 = knn(xq, xb, 10, metric, backend="faiss-gpu")  # raises if faiss sees no GPU
    assert (I0 == I1).mean() > 0.99
    # float32 on both sides; faiss's cuBLAS handle disallows reduced-precision (TF32) products
    np.testing.assert_allclose(D0, D1, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_index_types_float16_and_resources_reuse(data):
    import faiss

    xq, xb = data
    index = search.flat_index(xb.shape[1], "l2", gpu=True, gpus=[0])
    assert isinstance(faiss.downcast_index(index), faiss.GpuIndexFlat)
    assert search.gpu_resources(0) is search.gpu_resources(0)
    half = search.flat_index(xb.shape[1], "l2", gpu=True, gpus=[0], float16=True)
    half.add(xb)
    D, I = half.search(xq, 10)
    D0, I0 = knn_numpy(xq, xb.astype(np.float16).astype(np.float32), 10, "l2")
    assert _faiss_gpu_recall(I, I0) > 0.95  # float16 vectors (and queries) on the GPU
    np.testing.assert_allclose(D, D0, rtol=1e-2, atol=0.1)


@pytest.mark.gpu
@gpu
def test_sharded_gpu_index_and_gpu_blocks(data):
    import faiss

    xq, xb = data
    # two shards on GPU 0 when there is one GPU: the sharding and merging code of faiss runs anyway
    gpus = list(range(search.num_gpus())) if search.num_gpus() > 1 else [0, 0]
    index = faiss.downcast_index(search.flat_index(xb.shape[1], "l2", gpu=True, gpus=gpus))
    assert isinstance(index, faiss.IndexShards) and index.count() == len(gpus)
    index.add(xb)
    n = len(gpus)
    shards = [faiss.downcast_index(index.at(i)) for i in range(n)]
    assert all(isinstance(s, faiss.GpuIndexFlat) for s in shards)
    assert [s.ntotal for s in shards] == [700 * (i + 1) // n - 700 * i // n for i in range(n)]
    _, I = index.search(xq, 5)
    _, I0 = knn_numpy(xq, xb, 5, "l2")
    assert (I == I0).mean() > 0.99
    _, I2 = knn_blocks(xq, xb, 5, "l2", backend="faiss-gpu", block_size=100)
    assert (I2 == I0).mean() > 0.99


@pytest.mark.gpu
@gpu
def test_gpu_k_limit_padding_and_global_topn():
    rng = np.random.default_rng(3)
    xq = rng.standard_normal((30, 16)).astype(np.float32)
    xb = rng.standard_normal((3000, 16)).astype(np.float32)
    k = search.GPU_MAX_K + 100  # above faiss's GPU limit: searched on the CPU, same result
    _, I = knn(xq, xb, k, "ip", backend="faiss-gpu")
    _, I0 = knn(xq, xb, k, "ip", backend="faiss")
    assert (I == I0).mean() > 0.99
    D, I = knn(xq, xb[:7], 10, "l2", backend="faiss-gpu")
    assert (I[:, 7:] == -1).all() and np.isinf(D[:, 7:]).all() and (I[:, :7] >= 0).all()
    qi, bi, _ = global_topn(xq, xb, 3000, "l2", backend="faiss-gpu", k0=8)
    q0, b0, _ = global_topn(xq, xb, 3000, "l2", backend="numpy", k0=8)
    assert len(qi) == 3000 and len(set(zip(qi, bi)) & set(zip(q0, b0))) / 3000 > 0.99


torch_gpu = pytest.mark.skipif(not search.torch_cuda() and not REQUIRE_GPU, reason="needs CUDA for torch")


@pytest.mark.gpu
@torch_gpu
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_torch_backend_on_cuda_matches_numpy(data, metric):
    xq, xb = data
    D0, I0 = knn_numpy(xq, xb, 10, metric)
    D1, I1 = search.knn_torch(xq, xb, 10, metric, device="cuda")  # raises without CUDA
    assert (I0 == I1).mean() > 0.99  # float32 products on the GPU (TF32 off)
    np.testing.assert_allclose(D0, D1, rtol=1e-4, atol=1e-3)
    _, I2 = knn_blocks(xq, xb, 10, metric, backend="torch", block_size=100)
    assert (I2 == I0).mean() > 0.99
