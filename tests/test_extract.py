"""Extraction: equality with direct embedding, failures by id, atomic shards and resumption,
float16 storage, official HDF5, and a two-process gloo torchrun run."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imsim_lab.errors import ImsimError
from imsim_lab.features import ExtractConfig, export_split_hdf5, extract_split, load_features
from imsim_lab.features import extract as extract_mod
from imsim_lab.features.dataset import ordered_threads
from imsim_lab.features.store import shard_path
from imsim_lab.eval.formats import read_split_vectors
from imsim_lab.features.models import create_model
from support import Streamed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths, ids = [], []
    for i in range(13):
        p = d / f"T{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 56, 3), dtype=np.uint8)).save(p)
        paths.append(p)
        ids.append(p.stem)
    return paths, ids


@pytest.fixture(scope="module")
def model():
    return create_model("resnet18_gem", input_size=48, dim=32, device="cpu")


def direct(model, paths):
    return model.embed([model.preprocess(Image.open(p).convert("RGB")) for p in paths])


@pytest.mark.parametrize("workers", [0, 2])
def test_extraction_equals_direct_embedding(images, model, tmp_path, workers):
    paths, ids = images
    seen = []
    fs = extract_split(model, paths, ids, tmp_path, "training",
                       ExtractConfig(batch_size=4, num_workers=workers, shard_size=5), progress=seen.append)
    assert list(fs.ids) == ids and fs.failed == []
    np.testing.assert_allclose(fs.x, direct(model, paths), atol=1e-5)
    assert sum(seen) == 13
    assert isinstance(load_features(tmp_path, "training").x, np.memmap)
    assert not (tmp_path / "shards").exists()  # work files removed after the merge


def test_unreadable_images_are_reported_by_id(images, model, tmp_path):
    paths, ids = list(images[0]), list(images[1])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x89PNG broken")
    paths[3] = bad
    paths[7] = tmp_path / "missing.jpg"
    fs = extract_split(model, paths, ids, tmp_path / "o", "query", ExtractConfig(batch_size=4, num_workers=0, shard_size=5))
    assert len(fs.ids) == 11 and ids[3] not in fs.ids and ids[7] not in fs.ids
    assert {f["id"] for f in fs.failed} == {ids[3], ids[7]}
    assert any("FileNotFoundError" in f["error"] for f in fs.failed)
    on_disk = json.loads((tmp_path / "o" / "query_failed.json").read_text())
    assert on_disk == fs.failed


def test_killed_extraction_resumes_without_recomputing(images, model, tmp_path, monkeypatch):
    paths, ids = images
    cfg = ExtractConfig(batch_size=2, num_workers=0, shard_size=4)
    calls = {"n": 0}
    real = extract_mod.write_shard

    def dying(shard_dir, s, *a, **k):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while shard 2 is being written
        calls["n"] += 1
        real(shard_dir, s, *a, **k)

    monkeypatch.setattr(extract_mod, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_split(model, paths, ids, tmp_path, "reference", cfg)
    sd = tmp_path / "shards" / "reference"
    assert shard_path(sd, 0).is_file() and shard_path(sd, 1).is_file() and not shard_path(sd, 2).is_file()
    assert not (tmp_path / "reference.npy").exists()
    assert not list(sd.glob(".*tmp*"))  # no half-written file
    before = shard_path(sd, 0).stat().st_mtime_ns
    monkeypatch.setattr(extract_mod, "write_shard", real)
    embedded = []
    orig_embed = model.embed
    monkeypatch.setattr(model, "embed", lambda b: embedded.append(len(b)) or orig_embed(b))
    fs = extract_split(model, paths, ids, tmp_path, "reference", cfg)
    assert sum(embedded) == 13 - 8  # only the shards that were missing
    np.testing.assert_allclose(fs.x, direct(model, paths), atol=1e-5)
    assert not sd.exists() or shard_path(sd, 0).stat().st_mtime_ns == before


def test_other_settings_do_not_mix_with_unfinished_shards(images, model, tmp_path, monkeypatch):
    paths, ids = images
    monkeypatch.setattr(extract_mod, "write_shard", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        extract_split(model, paths, ids, tmp_path, "x", ExtractConfig(num_workers=0, shard_size=4))
    monkeypatch.undo()
    other = create_model("resnet18_gem", input_size=40, dim=32, device="cpu")
    with pytest.raises(ImsimError, match="other settings"):
        extract_split(other, paths, ids, tmp_path, "x", ExtractConfig(num_workers=0, shard_size=4))


def test_float16_storage_and_official_hdf5(images, model, tmp_path):
    paths, ids = images
    fs = extract_split(model, paths[:5], ids[:5], tmp_path, "training",
                       ExtractConfig(num_workers=0, dtype="float16"))
    assert fs.x.dtype == np.float16
    np.testing.assert_allclose(fs.x.astype(np.float32), direct(model, paths[:5]), atol=2e-3)
    export_split_hdf5(fs, tmp_path / "t.h5")
    got_ids, x = read_split_vectors(tmp_path / "t.h5")
    assert list(got_ids) == ids[:5] and x.dtype == np.float32 and x.shape == (5, 32)


def test_a_finished_split_is_reused(images, model, tmp_path, monkeypatch):
    paths, ids = images
    extract_split(model, paths[:3], ids[:3], tmp_path, "q", ExtractConfig(num_workers=0))
    monkeypatch.setattr(model, "embed", lambda b: pytest.fail("recomputed a finished split"))
    assert len(extract_split(model, paths[:3], ids[:3], tmp_path, "q", ExtractConfig(num_workers=0))) == 3


def test_streams_path_equals_direct_embedding_and_reports_failures(images, model, tmp_path):
    paths, ids = list(images[0]), list(images[1])
    paths[4] = tmp_path / "missing.jpg"
    m = Streamed(model)
    seen = []
    fs = extract_split(m, paths, ids, tmp_path, "reference",
                       ExtractConfig(batch_size=2, num_workers=2, shard_size=5), progress=seen.append)
    keep = [i for i in range(13) if i != 4]
    assert list(fs.ids) == [ids[i] for i in keep] and [f["id"] for f in fs.failed] == [ids[4]]
    np.testing.assert_allclose(fs.x, direct(model, [paths[i] for i in keep]), atol=1e-5)
    assert sum(seen) == 13 and m.calls == 12
    assert m.threads and all(t.startswith("imsim-stream") for t in m.threads)


def test_streams_path_resumes_after_a_kill(images, model, tmp_path, monkeypatch):
    paths, ids = images
    cfg = ExtractConfig(batch_size=2, shard_size=4)
    real = extract_mod.write_shard
    written = []

    def dying(shard_dir, s, *a, **k):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(s)
        real(shard_dir, s, *a, **k)

    monkeypatch.setattr(extract_mod, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_split(Streamed(model), paths, ids, tmp_path, "reference", cfg)
    monkeypatch.setattr(extract_mod, "write_shard", real)
    m = Streamed(model)
    fs = extract_split(m, paths, ids, tmp_path, "reference", cfg)
    assert written == [0, 1] and m.calls == 13 - 8
    np.testing.assert_allclose(fs.x, direct(model, paths), atol=1e-5)


def test_the_number_of_streams(model):
    assert ExtractConfig().streams_for(model) == 1  # torch models parallelise inside a call
    assert ExtractConfig(streams=4).streams_for(model) == 1  # never forced on a model without streams
    assert ExtractConfig().streams_for(Streamed(model)) == 3
    assert ExtractConfig(streams=1).streams_for(Streamed(model)) == 1  # the DataLoader path
    with pytest.raises(ValueError, match="streams"):
        ExtractConfig(streams=0)


def test_ordered_threads_keeps_order_bounds_the_work_ahead_and_stops_cleanly():
    started, lock = [], threading.Lock()

    def slow(i):
        with lock:
            started.append(i)
        time.sleep(0.02 * ((7 * i) % 5))  # finish out of order
        if i == 13:
            raise ValueError("item 13")
        return i * i

    gen = ordered_threads(slow, range(100), threads=3, ahead=5)
    assert [next(gen) for _ in range(10)] == [i * i for i in range(10)]
    assert len(started) <= 10 + 5  # never more than `ahead` beyond what was consumed
    gen.close()  # the consumer stops: nothing new starts
    n = len(started)
    time.sleep(0.1)
    assert len(started) == n < 100
    with pytest.raises(ValueError, match="item 13"):
        list(ordered_threads(slow, range(20), threads=2, ahead=4))


def _torchrun(tmp_path, images, nproc, extra_env=None, extra_args=()):
    paths, ids = images
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{i}\t{p}\n" for i, p in zip(ids, paths)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "imsim_lab.features.torchrun_extract", "--model", "resnet18_gem",
           "--model-args", json.dumps({"input_size": 48, "dim": 32}), "--images", str(lst),
           "--out", str(tmp_path / "out"), "--name", "reference", "--shard-size", "3", "--batch-size", "2",
           "--workers", "0", *extra_args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return load_features(tmp_path / "out", "reference")


@pytest.mark.slow
def test_torchrun_two_gloo_processes_merge_to_the_single_process_result(images, model, tmp_path):
    fs = _torchrun(tmp_path, images, 2)
    assert list(fs.ids) == images[1]
    np.testing.assert_allclose(fs.x, direct(model, images[0]), atol=1e-5)


# scripts/gpu_checks.sh sets IMSIM_REQUIRE_GPU=1: a gpu test without CUDA then fails instead of skipping
cuda = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("IMSIM_REQUIRE_GPU") != "1",
                          reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_torchrun_nccl_on_the_gpus(images, model, tmp_path):
    # one rank per GPU (NCCL refuses two on one GPU): on a one-GPU machine a world of one
    n = min(2, torch.cuda.device_count())
    fs = _torchrun(tmp_path, images, n, extra_args=("--backend", "nccl"))  # nccl or a failure, no fallback
    assert list(fs.ids) == images[1]
    assert (fs.x * direct(model, images[0])).sum(1).min() > 0.999


@pytest.mark.gpu
@cuda
def test_cuda_extraction_with_amp_matches_cpu(images, model, tmp_path):
    gpu = create_model("resnet18_gem", input_size=48, dim=32, device="cuda")
    cfg = ExtractConfig(batch_size=4, num_workers=2)
    assert cfg.streams_for(gpu) == 1 and extract_mod.make_loader(gpu, [], [], cfg).pin_memory
    fs = extract_split(gpu, images[0], images[1], tmp_path, "q", cfg)  # workers, pinned batches, AMP
    assert list(fs.ids) == images[1]
    assert (fs.x * direct(model, images[0])).sum(1).min() > 0.999
