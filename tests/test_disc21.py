"""DISC21 manifest, verify and subset, on a fake DISC21 tree made here (no download)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from imsim_lab.data.benchmark import load_benchmark, sha256_file
from imsim_lab.cli import main
from imsim_lab.data.disc21 import (Disc21Error, SubsetConfig, check_file, load_manifest, make_subset, split_folders,
                              verify)


def _jpeg(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path, quality=80)


def _small_manifest(tmp_path, gt_sha=None):
    """The real manifest with the id ranges shrunk to a few images per split."""
    m = load_manifest()
    m["splits"]["references"].update(first=0, last=19, count=20)
    m["splits"]["training"].update(first=0, last=9, count=10)
    m["splits"]["dev_queries"].update(first=0, last=11, count=12)
    m["splits"]["final_queries"].update(first=50000, last=50003, count=4)
    m["list_files"] = {"public_ground_truth.csv": {"sha256": gt_sha or "0" * 64, "rows": 12}}
    p = tmp_path / "disc21_small.json"
    p.write_text(json.dumps(m))
    return m, p


@pytest.fixture()
def fake_disc21(tmp_path):
    """references/ (sharded in two folders), train/, dev_queries/, a GT; one missing and one corrupt file."""
    root = tmp_path / "disc21"
    for d in ("references_0", "references_1", "train", "dev_queries"):
        (root / d).mkdir(parents=True)
    for i in range(20):
        if i == 7:
            continue  # deliberately missing
        _jpeg(root / f"references_{i % 2}" / f"R{i:06d}.jpg", i)
    for i in range(10):
        _jpeg(root / "train" / f"T{i:06d}.jpg", 100 + i)
    for i in range(12):
        _jpeg(root / "dev_queries" / f"Q{i:05d}.jpg", 200 + i)
    # corrupt: a truncated JPEG and a zero-byte file
    data = (root / "train" / "T000003.jpg").read_bytes()
    (root / "train" / "T000003.jpg").write_bytes(data[: len(data) // 2])
    (root / "dev_queries" / "Q00005.jpg").write_bytes(b"")
    (root / "dev_queries" / "notes.txt").write_text("not an image")
    (root / "dev_queries" / "Q99999.jpg").write_bytes(data)  # outside the id range
    gt = ["query_id,reference_id"] + [f"Q{i:05d},R{i:06d}" if i % 3 == 0 else f"Q{i:05d}," for i in range(12)]
    (root / "public_ground_truth.csv").write_text("\n".join(gt) + "\n")
    return root


def test_manifest_matches_protocol():
    m = load_manifest()
    assert m["splits"]["references"]["count"] == 1_000_000
    assert m["splits"]["dev_queries"]["last"] - m["splits"]["dev_queries"]["first"] + 1 == 50_000
    assert m["list_files"]["public_ground_truth.csv"]["sha256"].startswith("ba8d6188")
    for s in m["splits"].values():
        assert s["last"] - s["first"] + 1 == s["count"]


def test_check_file_levels(tmp_path):
    good, trunc, empty = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    _jpeg(good, 0)
    trunc.write_bytes(good.read_bytes()[:100])
    empty.write_bytes(b"")
    assert check_file(str(good), "magic") == "" and check_file(str(good), "decode") == ""
    assert "truncated" in check_file(str(trunc), "magic")
    assert "decode" in check_file(str(trunc), "decode")
    assert "empty" in check_file(str(empty), "magic")
    assert check_file(str(empty), "exists") == ""


def test_verify_reports_missing_unreadable_unexpected(fake_disc21, tmp_path):
    m, _ = _small_manifest(tmp_path, sha256_file(fake_disc21 / "public_ground_truth.csv"))
    rep = verify(fake_disc21, m)
    by = {s.name: s for s in rep.splits}
    assert [str(f) for f in by["references"].folders] == ["references_0", "references_1"]
    assert by["references"].found == 19 and by["references"].missing_ids == ["R000007"]
    assert by["training"].n_unreadable == 1 and "T000003" in by["training"].unreadable[0]["file"]
    assert by["dev_queries"].n_unreadable == 1 and "empty" in by["dev_queries"].unreadable[0]["problem"]
    assert by["dev_queries"].n_unexpected == 2  # notes.txt and an id outside the range
    assert not by["final_queries"].required and by["final_queries"].folders == []
    assert {f["file"]: f["status"] for f in rep.list_files} == {"public_ground_truth.csv": "ok"}
    assert not rep.complete


def test_verify_complete_copy_and_cli_exit_codes(fake_disc21, tmp_path, capsys):
    _, mpath = _small_manifest(tmp_path, sha256_file(fake_disc21 / "public_ground_truth.csv"))
    args = ["data", "verify", str(fake_disc21), "--manifest", str(mpath), "--quiet"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "R000007" in out and "T000003" in out and "NOT complete" in out
    # repair the copy: add the missing file and rewrite the corrupt ones
    _jpeg(fake_disc21 / "references_1" / "R000007.jpg", 7)
    _jpeg(fake_disc21 / "train" / "T000003.jpg", 3)
    _jpeg(fake_disc21 / "dev_queries" / "Q00005.jpg", 5)
    assert main(args) == 0
    assert "complete" in capsys.readouterr().out
    # a changed list file breaks completeness
    with open(fake_disc21 / "public_ground_truth.csv", "a") as f:
        f.write("Q00012,\n")
    assert main(args + ["--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["list_files"][0]["status"] == "sha256 differs" and rep["complete"] is False


def test_verify_streams_the_real_id_ranges(fake_disc21):
    rep = verify(fake_disc21, check="exists")  # the real manifest: one million references expected
    refs = next(s for s in rep.splits if s.name == "references")
    assert refs.expected == 1_000_000 and refs.found == 19 and refs.missing == 1_000_000 - 19
    assert len(refs.missing_ids) <= 50 and not rep.complete


def test_subset_is_deterministic_and_loads(fake_disc21, tmp_path):
    m, _ = _small_manifest(tmp_path)
    (fake_disc21 / "dev_queries" / "Q00005.jpg").unlink()
    _jpeg(fake_disc21 / "dev_queries" / "Q00005.jpg", 5)
    cfg = SubsetConfig(name="mini", references=6, negatives=3, training=4, seed=3)
    a = make_subset(fake_disc21, tmp_path / "a", cfg, m)
    b = make_subset(fake_disc21, tmp_path / "b", cfg, m)
    assert a["sha256"] == b["sha256"]
    assert (tmp_path / "a" / "ground_truth.csv").read_bytes() == (tmp_path / "b" / "ground_truth.csv").read_bytes()
    bench = load_benchmark(tmp_path / "a")
    assert bench.name == "mini" and bench.gt.n_positives == 4 and len(bench.query_ids) == 7
    pos_refs = set(bench.gt.positives[1])
    assert pos_refs <= set(bench.reference_ids) and len(bench.reference_ids) == 4 + 6
    assert len(bench.training_ids) == 4
    assert set(bench.queries["family"]) == {"unknown"} and bench.queries["strength"].isna().all()
    p = bench.image_path(bench.query_ids[0])
    assert os.path.islink(p) and os.path.realpath(p).startswith(str(fake_disc21))
    assert bench.load_image(bench.query_ids[0]).size == (32, 24)
    # another seed gives another choice of distractors
    c = make_subset(fake_disc21, tmp_path / "c", SubsetConfig(name="mini", references=6, negatives=3, training=4,
                                                              seed=4), m)
    assert load_benchmark(tmp_path / "c").reference_ids.tolist() != bench.reference_ids.tolist() or c is None


def test_subset_refuses_missing_images(fake_disc21, tmp_path):
    m, _ = _small_manifest(tmp_path)
    (tmp_path / "gt.csv").write_text("query_id,reference_id\nQ00001,R000007\nQ00002,\n")
    with pytest.raises(Disc21Error, match="R000007"):
        make_subset(fake_disc21, tmp_path / "x", SubsetConfig(name="x", ground_truth=str(tmp_path / "gt.csv")), m)
    with pytest.raises(Disc21Error, match="no ground truth"):
        (fake_disc21 / "public_ground_truth.csv").unlink()
        make_subset(fake_disc21, tmp_path / "y", SubsetConfig(name="y"), m)


def test_subset_cli_copy(fake_disc21, tmp_path, capsys):
    _, mpath = _small_manifest(tmp_path)
    rc = main(["data", "subset", str(fake_disc21), "--out", str(tmp_path / "cp"), "--manifest", str(mpath),
               "--references", "2", "--negatives", "2", "--training", "1", "--link", "copy", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert "subset cp written" in capsys.readouterr().out
    bench = load_benchmark(tmp_path / "cp")
    assert bench.manifest["linked"] == {"copy": 6 + 6 + 1}
    assert not any(os.path.islink(bench.image_path(i)) for i in bench.reference_ids)
    # an unrelated non-empty folder is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    rc = main(["data", "subset", str(fake_disc21), "--out", str(tmp_path / "other"), "--manifest", str(mpath),
               "--quiet"])
    assert rc == 2 and (tmp_path / "other" / "keep.txt").exists()


def test_split_folders_globs(tmp_path):
    (tmp_path / "references_3").mkdir()
    (tmp_path / "references_10").mkdir()
    (tmp_path / "references.txt").write_text("x")
    m = load_manifest()
    assert [f.name for f in split_folders(tmp_path, m["splits"]["references"])] == ["references_10", "references_3"]
