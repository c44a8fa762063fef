"""Reliability of the readers and of ``imsim-lab eval``: every bad input gives one line naming the
file and the problem, and exit code 2 (no traceback, no silent acceptance, no huge read)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from imsim_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEADER = "query_id,reference_id,score\n"
GT = "query_id,reference_id\nQ00000,R000000\nQ00001,\nQ00002,R000002\n"


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{5 if prefix == 'Q' else 6}d}".encode() for i in range(n)])


def _h5(path: Path, **datasets) -> None:
    """Write an HDF5 file: a value is an array, a ("group",) marker, or (shape, dtype) for a
    chunked dataset that is declared but never written (a tiny file with a huge shape)."""
    with h5py.File(path, "w") as f:
        for name, v in datasets.items():
            if isinstance(v, tuple) and v == ("group",):
                f.create_group(name)
            elif isinstance(v, tuple):
                shape, dtype = v
                f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1024,) + tuple(shape[1:]))
            else:
                f.create_dataset(name, data=v)


def _descriptors(path: Path, xq=None, xb=None, qids=None, rids=None) -> Path:
    rng = np.random.default_rng(0)
    _h5(path,
        query=rng.normal(size=(3, 8)).astype(np.float32) if xq is None else xq,
        reference=rng.normal(size=(3, 8)).astype(np.float32) if xb is None else xb,
        query_ids=_ids("Q", 3) if qids is None else qids,
        reference_ids=_ids("R", 3) if rids is None else rids)
    return path


def _write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# case -> (what the predictions file holds, expected exit code, fragment of stdout or stderr)
CSV_CASES = {
    "one row, no final newline": (HEADER + "Q00000,R000000,0.9", 0, '"n_predictions": 1'),
    "header only, no newline": (HEADER.rstrip("\n"), 0, '"n_predictions": 0'),
    "non-ASCII digits in an id": (HEADER + "Q00000,R٠٠٠٠٠٠,0.9\n", 2, "row 2: unknown reference id format"),
    "binary, no newline": (bytes(b for b in range(256) if b != 10) * 2600, 2, "row 1: binary data, not CSV text"),
    "one long line": ("x" * 700_000, 2, "(700,000 characters)"),
    "gzip file": (gzip.compress((HEADER + "Q00000,R000000,0.9\n").encode()), 2, "gzip-compressed file"),
    "NaN score": (HEADER + "Q00000,R000000,0.5\nQ00001,R000001,nan\n", 2, "row 3: NaN score 'nan'"),
    "infinite score": (HEADER + "Q00000,R000000,1e999\n", 2, "row 2: infinite score"),
    "non-numeric score, csv path": (HEADER + 'Q00000,R000000,"1,5"\n', 2, "row 2: non-numeric score '1,5'"),
    "too few fields": (HEADER + "Q00000,R000000,0.5\nQ00001,R000001\n", 2, "row 3: expected 3 fields per row, found 2"),
    "duplicate pair": (HEADER + "Q00000,R000000,0.5\nQ00000,R000000,0.4\n", 2, "row 3: duplicate prediction"),
    "wrong header": ("q,r,s\nQ00000,R000000,1\n", 2, "row 1: wrong header 'q,r,s'"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_eval_csv_inputs(case, tmp_path, capsys):
    content, code, fragment = CSV_CASES[case]
    gt = _write(tmp_path / "gt.csv", GT)
    sub = _write(tmp_path / "p.csv", content)
    assert main(["eval", "--gt", str(gt), "--predictions", str(sub), "--json"]) == code
    out = capsys.readouterr()
    text = out.out if code == 0 else out.err
    assert fragment in text, text[:500]
    if code:
        assert len(out.err.strip().splitlines()) == 1 and str(sub) in out.err and len(out.err) < 400


def test_one_row_ground_truth_without_newline(tmp_path, capsys):
    gt = _write(tmp_path / "gt.csv", "query_id,reference_id\nQ00000,R000000")
    sub = _write(tmp_path / "p.csv", HEADER + "Q00000,R000000,0.9\n")
    assert main(["eval", "--gt", str(gt), "--predictions", str(sub), "--json"]) == 0
    assert '"micro_ap": 1.0' in capsys.readouterr().out


# case -> (datasets given to _descriptors, eval arguments, fragment of the error)
H5_CASES = {
    "group instead of a dataset": ({"xq": ("group",)}, [], "dataset 'query': is a group, expected a dataset"),
    "0-dimensional descriptors": ({"xq": np.zeros((3, 0), np.float32), "xb": np.zeros((3, 0), np.float32)}, [],
                                  "dataset 'query': 0-dimensional descriptors"),
    "declared 100M x 64": ({"xq": ((100_000_000, 64), "f4"), "qids": ((100_000_000,), "S6")}, [],
                           "dataset 'query': declares 100,000,000 x 64 values"),
    "vectors and ids disagree": ({"xq": ((50_000_000, 64), "f4")}, [], "dataset 'query': 50000000 vectors for 3 ids"),
    "ids not strings": ({"qids": np.arange(3)}, [], "dataset 'query_ids': dtype int64, expected ASCII strings"),
    "--knn -1": ({}, ["--knn", "-1"], "--knn must be at least 1, not -1"),
    "--knn 0": ({}, ["--knn", "0"], "--knn must be at least 1, not 0"),
    "--max-results 0": ({}, ["--max-results", "0"], "--max-results must be at least 1, not 0"),
}


@pytest.mark.parametrize("case", list(H5_CASES))
def test_eval_hdf5_inputs(case, tmp_path, capsys):
    datasets, extra, fragment = H5_CASES[case]
    gt = _write(tmp_path / "gt.csv", GT)
    h5 = _descriptors(tmp_path / "d.h5", **datasets)
    assert main(["eval", "--gt", str(gt), "--descriptors", str(h5), *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_knn_options_refused_for_csv(tmp_path, capsys):
    gt = _write(tmp_path / "gt.csv", GT)
    sub = _write(tmp_path / "p.csv", HEADER + "Q00000,R000000,0.9\n")
    assert main(["eval", "--gt", str(gt), "--predictions", str(sub), "--knn", "0"]) == 2
    assert "apply to --descriptors only" in capsys.readouterr().err


def test_descriptor_predictions_refuses_bad_budgets():
    from imsim_lab.errors import ImsimError
    from imsim_lab.eval.candidates import descriptor_predictions
    from imsim_lab.eval.formats import DescriptorSubmission

    x = np.eye(3, dtype=np.float32)
    sub = DescriptorSubmission(np.array(["Q00000", "Q00001", "Q00002"], object), x,
                               np.array(["R000000", "R000001", "R000002"], object), x)
    for kw in ({"knn": 0}, {"knn": -1}, {"max_results": 0}):
        with pytest.raises(ImsimError, match="at least 1"):
            descriptor_predictions(sub, **kw)
    assert len(descriptor_predictions(sub, knn=1)) == 3


def test_huge_declared_hdf5_fails_cleanly_under_a_memory_limit(tmp_path):
    """A 5 KB file declaring 100M x 64 float32 (24 GiB): with 1.5 GiB of address space the CLI must
    refuse it from the metadata (exit 2, one line), not try to read it (MemoryError or killed)."""
    gt = _write(tmp_path / "gt.csv", GT)
    h5 = _descriptors(tmp_path / "huge.h5", xq=((100_000_000, 64), "f4"), qids=((100_000_000,), "S6"))
    assert h5.stat().st_size < 100_000
    limit = 1536 * 2**20
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
            "from imsim_lab.cli import main; sys.exit(main(sys.argv[1:]))" % (limit, limit))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, "eval", "--gt", str(gt), "--descriptors", str(h5)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "dataset 'query': declares 100,000,000 x 64 values" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_closed_stdout_ends_quietly(tmp_path):
    """``imsim-lab eval ... | head -2`` after head has gone: no BrokenPipeError traceback."""
    gt = _write(tmp_path / "gt.csv", GT)
    sub = _write(tmp_path / "p.csv", HEADER + "Q00000,R000000,0.9\n")
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run([sys.executable, "-m", "imsim_lab", "eval", "--gt", str(gt), "--predictions", str(sub)],
                              stdout=w, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(w)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141
