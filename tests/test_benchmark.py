"""The benchmark folder format: loader checks, deterministic writers, summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imsim_lab.data.benchmark import (BenchmarkError, load_benchmark, make_ids, read_query_table, split_of,
                                 write_query_table, write_tables)


def _bench(root, n_q=6, n_r=5):
    for d in ("queries", "references", "training"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, q in enumerate(make_ids("Q", n_q)):
        Image.new("RGB", (16, 12), (i * 30, 0, 0)).save(root / "queries" / f"{q}.jpg")
    for i, r in enumerate(make_ids("R", n_r)):
        Image.new("RGB", (16, 12), (0, i * 30, 0)).save(root / "references" / f"{r}.jpg")
    Image.new("RGB", (8, 8)).save(root / "training" / "T000000.jpg")
    q = make_ids("Q", n_q)
    refs = ["R000001", "", "R000003", "", "", ""][:n_q]
    df = pd.DataFrame({"query_id": q, "has_match": [r != "" for r in refs], "reference_id": refs,
                       "source_id": [r or f"H{i:06d}" for i, r in enumerate(refs)], "family": ["crop", "blur"] * (n_q // 2),
                       "ops": [[{"name": "crop", "params": {"x": 0.1}}]] * n_q, "strength": np.linspace(0, 1, n_q),
                       "case": ["copy" if r else "no_match" for r in refs]})
    return write_tables(root, df, pd.DataFrame({"reference_id": make_ids("R", n_r), "scene": "x",
                                                "sibling_group": "", "source": "s"}),
                        {"generator": "test", "name": "t", "seed": 0})


def test_ids_and_splits():
    assert make_ids("Q", 2) == ["Q00000", "Q00001"]
    assert make_ids("R", 1, start=123456) == ["R123456"]
    assert make_ids("Q", 1, start=123456) == ["Q123456"]  # more digits when a split outgrows them
    assert split_of("T000001") == "training" and split_of("H000000") == "held_out"
    with pytest.raises(BenchmarkError):
        split_of("X1")


def test_load_roundtrip(tmp_path):
    m = _bench(tmp_path)
    b = load_benchmark(tmp_path)
    assert b.name == "t" and b.manifest["sha256"] == m["sha256"]
    assert b.query_ids.tolist() == make_ids("Q", 6) and len(b.reference_ids) == 5 and len(b.training_ids) == 1
    assert b.gt.n_positives == 2 and b.queries["query_id"].tolist() == b.gt.query_ids.tolist()
    assert b.image_path("R000002").name == "R000002.jpg" and b.load_image("Q00001").size == (16, 12)
    assert b.ops_of("Q00000") == [{"name": "crop", "params": {"x": 0.1}}]
    s = b.summary()
    assert s["families"] == {"blur": {"queries": 3, "positives": 0}, "crop": {"queries": 3, "positives": 2}}
    assert s["counts"]["positives"] == 2 and json.dumps(s)
    assert (tmp_path / "ground_truth.csv").read_text().splitlines()[:3] == [
        "query_id,reference_id", "Q00000,R000001", "Q00001,"]


def test_writers_are_byte_deterministic(tmp_path):
    _bench(tmp_path / "a")
    _bench(tmp_path / "b")
    for f in ("ground_truth.csv", "queries.parquet", "references.parquet", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "manifest.json").unlink(), "missing manifest.json"),
    (lambda r: (r / "queries" / "Q00003.jpg").unlink(), "no image in queries/"),
    (lambda r: (r / "references" / "R000003.jpg").unlink(), "no image in references/"),
    (lambda r: (r / "ground_truth.csv").write_text("query_id,reference_id\nQ00000,R000001\n"), "sha256 differs"),
    (lambda r: (r / "manifest.json").write_text("{nope"), "not readable JSON"),
    (lambda r: (r / "references" / "R000001.png").write_bytes(b"x"), "two images for the id R000001"),
])
def test_load_errors_say_what_is_wrong(tmp_path, breakage, message):
    _bench(tmp_path)
    breakage(tmp_path)
    with pytest.raises(BenchmarkError, match=message):
        load_benchmark(tmp_path)


def test_gt_and_table_must_agree(tmp_path):
    _bench(tmp_path)
    (tmp_path / "ground_truth.csv").write_text("query_id,reference_id\nQ00000,R000002\nQ00001,\nQ00002,R000003\n"
                                               "Q00003,\nQ00004,\nQ00005,\n")
    with pytest.raises(BenchmarkError, match="disagree on the reference of Q00000"):
        load_benchmark(tmp_path, check_hashes=False)
    with pytest.raises(BenchmarkError, match="not a folder"):
        load_benchmark(tmp_path / "nothing")


def test_query_table_validation(tmp_path):
    df = pd.DataFrame({"query_id": ["Q00000"], "has_match": [True], "reference_id": [""], "source_id": ["R000000"],
                       "family": ["crop"], "ops": ["[]"], "strength": [0.5]})
    write_query_table(tmp_path / "q.parquet", df)
    with pytest.raises(BenchmarkError, match="has_match disagrees"):
        read_query_table(tmp_path / "q.parquet")
    with pytest.raises(ValueError, match="outside 0..1"):
        write_query_table(tmp_path / "q.parquet", df.assign(strength=[1.5]))
    with pytest.raises(ValueError, match="lacks column"):
        write_query_table(tmp_path / "q.parquet", df.drop(columns=["ops"]))
    write_query_table(tmp_path / "q.parquet", df.assign(has_match=[False], strength=[None]))
    t = read_query_table(tmp_path / "q.parquet")
    assert math.isnan(t["strength"][0])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(BenchmarkError, match="not a readable parquet"):
        read_query_table(tmp_path / "bad.parquet")
