"""Runs: the run folder of docs/CONTRACTS.md, reuse, refusals, and the CLI."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imsim_lab.data.benchmark import BenchmarkError
from imsim_lab.cli import main
from imsim_lab.errors import ImsimError
from imsim_lab.features import ExtractConfig
from imsim_lab.eval.formats import read_descriptors, read_predictions
from imsim_lab.methods import METHODS, MethodSpec, get_method, prepare
from imsim_lab.runfolder import PER_QUERY_COLUMNS, is_run_folder
from imsim_lab.runner import RunOptions, run_method
from support import make_bench


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("bench") / "b")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("feature_cache"))


FAST = RunOptions(device="cpu", extract=ExtractConfig(batch_size=4, num_workers=0, shard_size=8))


def cached(cache):
    return RunOptions(**{**FAST.__dict__, "feature_cache": cache})


def check_run_folder(out: Path, descriptor_file: bool):
    assert is_run_folder(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["benchmark"]["manifest_sha256"] and cfg["benchmark"]["name"] == "unit"
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"isc2021", "drivendata"}
    for proto in m:
        assert 0.0 <= m[proto]["micro_ap"] <= 1.0
    preds = read_predictions(out / "predictions.csv")
    assert len(preds) > 0 and np.all(np.diff(preds.scores) <= 0)
    pq = pd.read_parquet(out / "per_query.parquet")
    assert list(pq.columns) == list(PER_QUERY_COLUMNS) and len(pq) == 8
    assert (pq.loc[~pq.has_match, "true_rank"] == -1).all()
    assert pq.loc[~pq.has_match, "true_score"].isna().all()
    t = json.loads((out / "timings.json").read_text())
    assert t["total"] > 0 and "extract_query" in t
    for split in ("query", "reference"):
        assert (out / "features" / f"{split}.npy").is_file() and (out / "features" / f"{split}_ids.npy").is_file()
    assert (out / "descriptors.h5").is_file() == descriptor_file
    return cfg, m, pq, preds


def test_feature_cache_is_shared_between_methods(bench, tmp_path, cache):
    run_method("sscd+sn", bench, tmp_path / "a", opts=cached(cache))
    res = run_method("sscd+stretch", bench, tmp_path / "b", opts=cached(cache))
    assert res.timings["extract_training"] < 1.0
    a = np.load(tmp_path / "a" / "features" / "training.npy")
    np.testing.assert_array_equal(a, np.load(tmp_path / "b" / "features" / "training.npy"))


def test_sscd_run_folder_and_reuse(bench, tmp_path):
    out = tmp_path / "run"
    res = run_method("sscd", bench, out, opts=FAST)
    cfg, m, pq, _ = check_run_folder(out, descriptor_file=False)
    assert "d=512 > 256" in cfg["notes"]["descriptors.h5"]
    # real SSCD finds these easy copies
    assert (pq.loc[pq.has_match, "true_rank"] == 0).mean() >= 0.8
    assert m["isc2021"]["micro_ap"] > 0.6
    # the top score of a retrieved true pair is its true score
    hit = pq[pq.true_rank == 0]
    np.testing.assert_allclose(hit.top_score, hit.true_score, rtol=1e-4, atol=1e-4)
    mtime = (out / "features" / "query.npy").stat().st_mtime_ns
    again = run_method("sscd", bench, out, opts=FAST)
    assert again.reused and again.metrics == res.metrics
    forced = run_method("sscd", bench, out, opts=RunOptions(**{**FAST.__dict__, "force": True}))
    assert not forced.reused and (out / "features" / "query.npy").stat().st_mtime_ns == mtime
    assert forced.metrics["isc2021"]["micro_ap"] == pytest.approx(res.metrics["isc2021"]["micro_ap"])


def test_score_normalised_run_keeps_rankings_and_writes_no_hdf5_for_512(bench, tmp_path, cache):
    base = run_method("sscd", bench, tmp_path / "a", opts=cached(cache))
    sn = run_method("sscd+sn", bench, tmp_path / "b", opts=cached(cache))
    pa = pd.read_parquet(tmp_path / "a" / "per_query.parquet")
    pb = pd.read_parquet(tmp_path / "b" / "per_query.parquet")
    np.testing.assert_array_equal(pa.true_rank, pb.true_rank)
    np.testing.assert_array_equal(pa.top_reference_id, pb.top_reference_id)
    assert sn.config["notes"]["mean_bias"] > 0
    assert not (tmp_path / "b" / "descriptors.h5").exists()
    assert base.config["params"] == {}


@pytest.mark.parametrize("method", ["gist_pca", "pdq", "sscd+pcaw256"])
def test_descriptor_methods_write_the_official_hdf5(bench, tmp_path, method, cache):
    out = tmp_path / method
    run_method(method, bench, out, opts=cached(cache))
    check_run_folder(out, descriptor_file=True)
    sub = read_descriptors(out / "descriptors.h5")
    assert sub.xq.shape[1] <= 256 and len(sub.query_ids) == 8


def test_pdq_scores_are_minus_hamming(bench, tmp_path):
    out = tmp_path / "pdq"
    run_method("pdq", bench, out, opts=FAST)
    preds = read_predictions(out / "predictions.csv")
    assert np.all(preds.scores <= 0) and np.all(preds.scores == np.round(preds.scores))
    sub = read_descriptors(out / "descriptors.h5")
    qi = list(sub.query_ids).index(preds.query_ids[0])
    ri = list(sub.reference_ids).index(preds.reference_ids[0])
    hamming = int((sub.xq[qi] != sub.xb[ri]).sum())
    assert preds.scores[0] == -hamming


@pytest.mark.parametrize("method", ["sscd+nes", "sscd+stretch", "sscd+ssquare"])
def test_background_methods_run(bench, tmp_path, method, cache):
    res = run_method(method, bench, tmp_path / "r", opts=cached(cache))
    assert (tmp_path / "r" / "features" / "training.npy").is_file()
    assert 0 <= res.metrics["isc2021"]["micro_ap"] <= 1


def test_timm_random_run_notes_random_weights(bench, tmp_path):
    res = run_method("timm_random", bench, tmp_path / "t", {"model.input_size": 64}, opts=FAST)
    assert "RANDOM" in res.config["notes"]["weights"]
    check_run_folder(tmp_path / "t", descriptor_file=True)


def test_another_configuration_in_the_same_folder_is_refused(bench, tmp_path):
    run_method("pdq", bench, tmp_path / "r", opts=FAST)
    with pytest.raises(ImsimError, match="another configuration"):
        run_method("gist", bench, tmp_path / "r", opts=FAST)


def test_a_run_is_reused_with_other_execution_settings(bench, tmp_path):
    """Workers, batch size, shards and streams change the speed, not the descriptors; older
    config.json files (written before a setting existed) are reused too."""
    first = run_method("pdq", bench, tmp_path / "r", opts=FAST)
    cpath = tmp_path / "r" / "config.json"
    old = json.loads(cpath.read_text())
    del old["extract"]["streams"]  # as written before ExtractConfig.streams existed
    cpath.write_text(json.dumps(old))
    other = RunOptions(device="cpu", extract=ExtractConfig(batch_size=3, num_workers=1, shard_size=5, streams=1))
    again = run_method("pdq", bench, tmp_path / "r", opts=other)
    assert again.reused and again.metrics == first.metrics
    with pytest.raises(ImsimError, match="extract"):  # storage dtype changes the descriptors
        run_method("pdq", bench, tmp_path / "r", opts=RunOptions(device="cpu", extract=ExtractConfig(dtype="float16")))


def test_unknown_parameter_is_refused():
    with pytest.raises(KeyError, match="no parameter 'betta'"):
        get_method("sscd+nes").resolve({"betta": 1})
    assert get_method("sscd+nes").resolve({"beta": 0.2, "model.threads": 1}) == (
        {"threads": 1}, {"dba_k": 10, "dba_alpha": 3.0, "beta": 0.2, "k": 10, "n_iter": 1})


def test_not_a_benchmark_says_what_is_missing(tmp_path):
    (tmp_path / "queries").mkdir()
    with pytest.raises(BenchmarkError, match="missing"):
        run_method("pdq", tmp_path, tmp_path / "out", opts=FAST)


def test_unreadable_images_are_reported_and_skipped(tmp_path):
    b = make_bench(tmp_path / "b", seed=3)
    (b / "queries" / "Q00001.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    res = run_method("pdq", b, tmp_path / "r", opts=FAST)
    assert res.config["failed_images"] == {"query": 1}
    failed = json.loads((tmp_path / "r" / "features" / "query_failed.json").read_text())
    assert failed[0]["id"] == "Q00001" and "Error" in failed[0]["error"]
    pq = pd.read_parquet(tmp_path / "r" / "per_query.parquet")
    row = pq.set_index("query_id").loc["Q00001"]
    assert row.true_rank == -1 and row.top_reference_id == ""


def test_prepare_needs_training_vectors():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ImsimError, match="needs training"):
        prepare(get_method("sscd+sn"), x, x, None, get_method("sscd+sn").params)


def test_cli_run_and_methods(bench, tmp_path, capsys):
    assert main(["methods", "sscd*"]) == 0
    listed = capsys.readouterr().out
    for name in ("sscd", "sscd+sn", "sscd+nes", "sscd+stretch", "sscd+ssquare"):
        assert f"\n{name} " in "\n" + listed
    out = tmp_path / "cli"
    assert main(["run", "pdq", "--bench", str(bench), "--out", str(out), "--workers", "0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["reused"] is False and "micro_ap" in d["isc2021"]
    assert main(["run", "pdq", "--bench", str(bench), "--out", str(out), "--workers", "0"]) == 0
    assert "reused" in capsys.readouterr().out
    assert main(["run", "nope", "--bench", str(bench), "--out", str(out)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["run", "sscd+nes", "--bench", str(bench), "--out", str(tmp_path / "x"), "-p", "betta=1"]) == 2
    assert "no parameter" in capsys.readouterr().err


def test_registered_methods_of_the_issue():
    for name in ("gist_pca", "pdq", "sscd", "sscd+sn", "sscd+nes", "sscd+stretch", "sscd+ssquare", "timm_random",
                 "timm"):
        assert name in METHODS
    assert isinstance(get_method("sscd"), MethodSpec)


def test_feature_cache_never_serves_another_folders_images(tmp_path):
    """Two benchmark folders of the same name (a copy with corrupt images): the cache is keyed on the
    images, so the copy's run reports its own failures and µAP; repairing the images and re-running
    retries them."""
    import shutil

    a = make_bench(tmp_path / "a", seed=4)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for q in ("Q00000", "Q00001"):
        (b / "queries" / f"{q}.jpg").write_bytes(b"\xff\xd8 broken")
    cache = str(tmp_path / "cache")
    ra = run_method("pdq", a, tmp_path / "ra", opts=cached(cache))
    rb = run_method("pdq", b, tmp_path / "rb", opts=cached(cache))
    assert not ra.config["failed_images"] and rb.config["failed_images"] == {"query": 2}
    assert rb.metrics["isc2021"]["micro_ap"] < ra.metrics["isc2021"]["micro_ap"]
    # the user repairs the images: a plain re-run sees the change and retries them
    for q in ("Q00000", "Q00001"):
        shutil.copyfile(a / "queries" / f"{q}.jpg", b / "queries" / f"{q}.jpg")
    again = run_method("pdq", b, tmp_path / "rb", opts=cached(cache))
    assert not again.reused and not again.config["failed_images"]
    assert again.metrics["isc2021"]["micro_ap"] == pytest.approx(ra.metrics["isc2021"]["micro_ap"])


def test_cli_run_refuses_what_it_cannot_do_in_one_line(bench, tmp_path, capsys):
    base = ["run", "timm_random", "--bench", str(bench), "--workers", "0", "-p", "model.input_size=64"]
    assert main(base + ["--out", str(tmp_path / "a"), "-p", "model.nosuch=1"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and len(err.strip().splitlines()) == 1
    for dev in ("tpu", "cuda:x"):
        assert main(base + ["--out", str(tmp_path / "b"), "--device", dev]) == 2
        assert "--device" in capsys.readouterr().err
    from imsim_lab.search import torch_cuda

    if not torch_cuda():
        assert main(base + ["--out", str(tmp_path / "b"), "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_an_image_over_the_pixel_limit_is_skipped_and_reported(tmp_path, recwarn):
    """A 144-megapixel query (a 1-bit PNG of 12,000 x 12,000: 18 MB decoded, far more as RGB) is never
    decoded: it is listed as skipped with its size, and no Pillow warning leaks into the output."""
    b = make_bench(tmp_path / "b", seed=6)
    (b / "queries" / "Q00002.jpg").unlink()
    Image.new("1", (12_000, 12_000)).save(b / "queries" / "Q00002.jpg", format="PNG")
    res = run_method("pdq", b, tmp_path / "r", opts=FAST)
    assert res.config["failed_images"] == {"query": 1}
    failed = json.loads((tmp_path / "r" / "features" / "query_failed.json").read_text())
    assert failed[0]["id"] == "Q00002" and "144 megapixels, over the limit" in failed[0]["error"]
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("chattr"), reason="needs a non-root user or chattr")
def test_a_read_only_out_is_one_line_exit_2(bench, tmp_path, capsys):
    """A folder the run cannot write into (made immutable with chattr, which binds root too; or
    read-only for a non-root user): one line naming it, exit 2, no traceback."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this file system")
    else:
        ro.chmod(0o555)
    try:
        assert main(["run", "pdq", "--bench", str(bench), "--out", str(ro / "run"), "--workers", "0"]) == 2
        err = capsys.readouterr().err
        assert str(ro / "run") in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert main(["bench", "build", "--preset", "tiny", "--out", str(ro / "bench")]) == 2
        err = capsys.readouterr().err
        assert str(ro) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)])
        else:
            ro.chmod(0o755)
