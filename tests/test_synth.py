"""disc-synth: determinism, the official ground truth, the plan's hard cases, the bad-source report."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imsim_lab.data.augment import FAMILIES, apply_ops, ops_from_json
from imsim_lab.data.benchmark import BenchmarkError, load_benchmark
from imsim_lab.cli import main
from imsim_lab.eval.formats import read_ground_truth
from imsim_lab.data.synth import PRESETS, BuildConfig, build_benchmark
from imsim_lab.data.synth.builder import save_jpeg
from imsim_lab.data.synth.photos import load_source_image, packaged_photos
from imsim_lab.data.synth.scenes import SCENES, render_scene
from support import TINY_SEED, TINY_WORKERS

TINY = PRESETS.get("tiny")


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "build_report.json":
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_every_scene_renders_and_siblings_differ_a_little():
    for name in SCENES.names():
        a = np.asarray(render_scene(name, 11, (160, 120)), np.float32)
        assert a.shape == (120, 160, 3) and a.std() > 3, name
        assert np.array_equal(a, np.asarray(render_scene(name, 11, (160, 120)), np.float32)), name
        b = np.asarray(render_scene(name, 12, (160, 120)), np.float32)
        assert np.abs(a - b).mean() > 5, name  # another seed, another scene
        if SCENES.get(name).sibling_ok:
            s = np.asarray(render_scene(name, 11, (160, 120), sibling=1), np.float32)
            assert 0 < np.abs(a - s).mean() < np.abs(a - b).mean(), name


def test_tiny_build_is_a_valid_benchmark(tiny_bench):
    """The shared ``tiny_bench`` fixture (tests/conftest.py) is the build under test."""
    root = tiny_bench
    b = load_benchmark(root)
    m = b.manifest
    assert m["generator"] == "disc-synth" and m["seed"] == TINY_SEED and m["preset"] == "tiny"
    assert len(b.reference_ids) == TINY.n_references and len(b.training_ids) == TINY.n_training
    assert len(b.query_ids) == TINY.n_queries and b.gt.n_positives == TINY.n_positives
    # official ground-truth format: header, every query listed once, empty reference when no match
    gt = read_ground_truth(root / "ground_truth.csv")
    lines = (root / "ground_truth.csv").read_text().splitlines()
    assert lines[0] == "query_id,reference_id" and len(lines) == TINY.n_queries + 1
    assert sorted(gt.query_ids) == b.query_ids.tolist()
    assert any(line.endswith(",") for line in lines[1:])
    # positives and negatives interleave; no reference used twice
    has = b.queries["has_match"].to_numpy()
    assert has[: len(has) // 2].any() and has[len(has) // 2:].any()
    pos_refs = b.queries.loc[b.queries["has_match"], "reference_id"]
    assert pos_refs.is_unique
    # training disjoint from references; negatives made from held-out originals only
    assert set(b.queries.loc[~b.queries["has_match"], "source_id"]) <= set(b.held_out_ids)
    refs = b.references
    assert set(refs["source"]).isdisjoint(set(pd_col(root, "training", "source")))
    assert set(b.queries["family"]) <= set(FAMILIES.names())
    assert b.queries["strength"].between(0, 1).all()
    rep = json.loads((root / "build_report.json").read_text())
    assert rep["images_written"] == 40 + 24 + 36 + 48 and rep["images_per_second"] > 0
    assert rep["timings"]["total"] > 0


def pd_col(root, split, col):
    import pandas as pd

    t = pd.read_parquet(root / "originals.parquet")
    return t.loc[t["split"] == split, col].tolist()


def test_hard_cases(tiny_bench):
    root = tiny_bench
    b = load_benchmark(root)
    refs = b.references
    groups = refs.loc[refs["sibling_group"] != "", "sibling_group"].value_counts()
    assert (groups >= 2).any()  # near-duplicate pairs both among the references
    assert b.manifest["counts"]["photos_in_references"] >= 1
    hard = b.queries[b.queries["case"] == "sibling_no_match"]
    assert len(hard) >= 1 and not hard["has_match"].any()
    import pandas as pd

    orig = pd.read_parquet(root / "originals.parquet").set_index("image_id")
    for src in hard["source_id"]:  # the source is a burst shot of a reference scene
        g = orig.loc[src, "sibling_group"]
        assert g and g in set(refs["sibling_group"])


def test_queries_replay_from_recorded_ops(tiny_bench):
    from imsim_lab.data.augment import Assets

    root = tiny_bench
    b = load_benchmark(root)
    assets = Assets.from_augly(images=lambda i: b.load_image(i), image_ids=tuple(b.held_out_ids))
    for _, row in b.queries.head(12).iterrows():
        src = b.load_image(row["source_id"])
        img = apply_ops(src, ops_from_json(row["ops"]), assets)
        buf = io.BytesIO()
        save_jpeg(img, buf, b.manifest["jpeg_quality"])
        assert buf.getvalue() == b.image_path(row["query_id"]).read_bytes()  # exactly the same file


@pytest.mark.slow
def test_same_seed_same_bytes_any_worker_count(tiny_bench, tmp_path):
    root = tiny_bench  # built with TINY_WORKERS processes; rebuilt here with another count
    build_benchmark(BuildConfig("tiny", seed=TINY_SEED, workers=2 if TINY_WORKERS == 1 else 1), tmp_path / "again")
    assert _digest(tmp_path / "again") == _digest(root)
    other = build_benchmark(BuildConfig("tiny", seed=TINY_SEED + 1, workers=1), tmp_path / "other").manifest
    assert other["sha256"] != load_benchmark(root).manifest["sha256"]


def test_resume_and_refuse_foreign_folder(tiny_bench, tiny_bench_copy):
    copy = tiny_bench_copy
    for p in list((copy / "queries").glob("*.jpg"))[:5]:
        p.unlink()  # an interrupted run
    rep = build_benchmark(BuildConfig("tiny", seed=TINY_SEED, workers=1), copy)
    assert rep.images_written == 5 and _digest(copy) == _digest(tiny_bench)
    with pytest.raises(BenchmarkError, match="not empty"):
        build_benchmark(BuildConfig("tiny", seed=TINY_SEED + 9, workers=1), copy)


def _bad_source(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / f"ok{i}.jpg")
    good = (folder / "ok0.jpg").read_bytes()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    Image.new("CMYK", (64, 48), (10, 200, 30, 0)).save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (40, 50))).astype(np.uint16)).save(folder / "deep16.png")
    Image.new("P", (50, 40)).save(folder / "palette.png")
    Image.new("RGBA", (50, 40), (255, 0, 0, 128)).save(folder / "alpha.png")
    # a decompression bomb: a tiny PNG that declares a huge size
    Image.new("1", (20000, 20000)).save(folder / "bomb.png", optimize=True)
    (folder / "notes.txt").write_text("not an image")


def test_bad_source_is_reported_not_fatal(tmp_path, capsys):
    src = tmp_path / "photos"
    _bad_source(src)
    rc = main(["bench", "build", "--preset", "tiny", "--seed", "1", "--out", str(tmp_path / "b"),
               "--source", str(src), "--workers", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rep = json.loads((tmp_path / "b" / "build_report.json").read_text())
    skipped = {s["path"]: s["reason"] for s in rep["skipped"]}
    assert set(skipped) == {"zero.jpg", "corrupt.jpg", "truncated.jpg", "bomb.png"}
    assert "0 bytes" in skipped["zero.jpg"] and "bomb" in skipped["bomb.png"]
    assert "truncated" in skipped["truncated.jpg"]
    converted = {c["path"] for c in rep["converted"]}
    assert converted == {"cmyk.jpg", "deep16.png", "palette.png", "alpha.png"}
    assert "4 skipped" in out and "images/s" in out
    b = load_benchmark(tmp_path / "b")
    used = set(b.references["source"]) | set(pd_col(tmp_path / "b", "held_out", "source")) \
        | set(pd_col(tmp_path / "b", "training", "source"))
    assert used <= {f"ok{i}.jpg" for i in range(8)} | converted
    for i in b.reference_ids:
        assert b.load_image(i).mode == "RGB"


def test_load_source_image_modes(tmp_path):
    Image.new("I;16", (40, 30)).save(tmp_path / "a.png")
    img, note = load_source_image(tmp_path / "a.png")
    assert img.mode == "RGB" and "16-bit" in note
    Image.new("RGB", (3000, 1000)).save(tmp_path / "big.jpg")
    img, note = load_source_image(tmp_path / "big.jpg", long_side=300)
    assert max(img.size) <= 300 and note == ""


def test_packaged_photos_are_offline_files():
    photos = packaged_photos()
    names = {p.name for p in photos}
    assert {"skimage:astronaut", "skimage:motorcycle_left", "sklearn:china"} <= names
    assert all(Path(p.path).is_file() for p in photos)
    pair = [p for p in photos if p.sibling_group]
    assert len(pair) == 2 and pair[0].sibling_group == pair[1].sibling_group


def test_cli_info_and_errors(tiny_bench, capsys):
    root = tiny_bench
    assert main(["bench", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "disc-synth" in out and "families" in out
    assert main(["bench", "info", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["queries"] == TINY.n_queries
    assert main(["bench", "info", str(root / "queries")]) == 2
    assert "not a benchmark" in capsys.readouterr().err
    assert main(["bench", "build", "--preset", "huge", "--out", str(root.parent / "x")]) == 2
