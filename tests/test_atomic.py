"""The shared atomic writers: complete files or none, nothing left behind on failure."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from imsim_lab.atomic import (atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_npy,
                              atomic_write_npz, atomic_write_parquet, atomic_write_text)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_writers_round_trip_and_create_folders(tmp_path):
    deep = tmp_path / "a" / "b"
    atomic_write_text(deep / "t.txt", "héllo\n")
    atomic_write_bytes(deep / "b.bin", b"\x00\x01")
    atomic_write_json(deep / "j.json", {"p": Path_like(), "n": 1})
    atomic_write_npz(deep / "cell.npz", ids=np.array(["R1", "R2"]), x=np.eye(2, dtype=np.float32))
    atomic_write_npz(deep / "no_suffix", x=np.arange(3))
    atomic_write_npy(deep / "x.npy", np.arange(4, dtype=np.float16))
    df = pd.DataFrame({"query_id": ["Q1", "Q2"], "true_rank": [0, -1]})
    atomic_write_parquet(deep / "t.parquet", df)

    assert (deep / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (deep / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((deep / "j.json").read_text()) == {"p": "as-str", "n": 1}
    with np.load(deep / "cell.npz", allow_pickle=False) as z:
        assert z["ids"].tolist() == ["R1", "R2"] and z["x"].dtype == np.float32
    with np.load(deep / "no_suffix", allow_pickle=False) as z:  # np.savez did not add ".npz" to the name
        assert z["x"].tolist() == [0, 1, 2]
    assert np.load(deep / "x.npy", mmap_mode="r").tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(pd.read_parquet(deep / "t.parquet"), df)
    assert sorted(p.name for p in deep.iterdir()) == ["b.bin", "cell.npz", "j.json", "no_suffix", "t.parquet",
                                                      "t.txt", "x.npy"]


class Path_like:  # noqa: N801 - an object json cannot encode
    def __str__(self):
        return "as-str"


def test_failure_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    dest = tmp_path / "out.parquet"
    atomic_write_text(dest, "old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            assert tmp.parent == dest.parent and tmp.name.startswith(".out.parquet.tmp")
            raise RuntimeError("interrupted")
    assert dest.read_text() == "old" and _leftovers(tmp_path) == []

    class Unwritable:
        def to_parquet(self, path, index):
            open(path, "wb").write(b"PAR1 half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_parquet(dest, Unwritable())
    assert dest.read_text() == "old" and _leftovers(tmp_path) == []


def test_failure_without_a_previous_file_leaves_nothing(tmp_path):
    class Boom:
        def __array__(self, dtype=None, copy=None):
            raise ValueError("cannot convert")

    with pytest.raises(ValueError, match="cannot convert"):
        atomic_write_npz(tmp_path / "cell.npz", ids=np.array(["R1"]), x=Boom())
    assert list(tmp_path.iterdir()) == []


def test_temporary_name_is_per_process_and_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "img.jpg", suffix=".jpg") as tmp:
        assert tmp.name == f".img.jpg.tmp{os.getpid()}.jpg" and not tmp.exists()
        tmp.write_bytes(b"x")
    assert (tmp_path / "img.jpg").read_bytes() == b"x" and _leftovers(tmp_path) == []
