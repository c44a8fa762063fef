"""Helpers shared by several test modules (a plain module, not a test module: nothing here is collected).

Test modules import from here (``from support import make_mini_bench``); they never import each
other. The fixtures built from these helpers live in ``tests/conftest.py``.

* :data:`TINY_SEED`, :data:`TINY_WORKERS`: how the shared disc-synth ``tiny`` benchmark is built;
* :func:`make_bench`: a minimal benchmark of textures and easy edits (the runner's tests);
* :func:`make_mini_bench`: a small benchmark folder written with the project's writers, with a
  sibling group and a hard negative, fast (tiny images);
* :func:`write_run`: a run folder (docs/CONTRACTS.md) from given predictions, its metrics computed
  by the official ``evaluate``;
* :func:`scored_predictions`: every (query, reference) pair scored with noise;
* :class:`Streamed`: a model wrapper that takes the CPU-streams extraction path;
* :func:`make_robust_bench`, :func:`make_runs`, :data:`FAST`, :data:`SMALL_MODEL`: the minimal
  benchmark and the two ``timm_random`` runs of the robustness suites;
* :func:`load_script`: a script of the repository (``benchmarks/``, ``explorer/``) imported as a module;
* :func:`lv_scene`: six candidate pairs of a benchmark, their match context and ``d2lv``'s parameters
  cut to one query view (the specialists' tests).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from imsim_lab.data.benchmark import sha256_file, write_tables
from imsim_lab.eval.formats import GroundTruth, Predictions, write_ground_truth
from imsim_lab.eval.metrics import evaluate
from imsim_lab.features import ExtractConfig
from imsim_lab.runfolder import per_query_from_predictions, write_outputs
from imsim_lab.runner import RunOptions, run_method

#: the shared ``tiny_bench`` fixture: disc-synth ``tiny``, this seed, one process (no pool)
TINY_SEED = 0
TINY_WORKERS = 1

FAMILIES = ["rotate", "blur", "text"]
DEMO_METHODS = "pdq,sscd,sscd+sn"


# --- explorer and report tests ---------------------------------------------------------------------

def _img(path: Path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path, quality=90)


def make_mini_bench(root: Path, n_ref: int = 10, n_q: int = 18, seed: int = 0) -> Path:
    """Queries Q00000.. : the first 9 are copies of R00000i (3 per family), Q00009 is made from H000000,
    a sibling of R000001 (no match), the rest are distractors. Strength rises with the index."""
    rng = np.random.default_rng(seed)
    for i in range(n_ref):
        _img(root / "references" / f"R{i:06d}.jpg", rng)
    for i in range(4):
        _img(root / "training" / f"T{i:06d}.jpg", rng)
    for i in range(n_q - 9):
        _img(root / "held_out" / f"H{i:06d}.jpg", rng)
    rows = []
    for i in range(n_q):
        q = f"Q{i:05d}"
        _img(root / "queries" / f"{q}.jpg", rng)
        pos = i < 9
        fam = FAMILIES[i % 3]
        rows.append({"query_id": q, "has_match": pos, "reference_id": f"R{i:06d}" if pos else "",
                     "source_id": f"R{i:06d}" if pos else f"H{i - 9:06d}", "family": fam,
                     "ops": [{"name": fam, "params": {"amount": round(i / n_q, 3)}}],
                     "strength": round(i / n_q, 4)})
    queries = pd.DataFrame(rows)
    refs = pd.DataFrame({"reference_id": [f"R{i:06d}" for i in range(n_ref)], "scene": ["s"] * n_ref,
                         "sibling_group": ["g1" if i == 1 else "" for i in range(n_ref)],
                         "source": ["test"] * n_ref})
    write_tables(root, queries, refs, {"generator": "test", "version": "1", "name": "mini", "seed": seed,
                                       "counts": {"queries": n_q}})
    pd.DataFrame({"image_id": ["H000000"], "split": ["held_out"], "sibling_group": ["g1"]}) \
        .to_parquet(root / "originals.parquet")
    return root


def write_run(out: Path, bench, preds: Predictions, method: str) -> Path:
    """A run folder with these predictions (metrics from ``evaluate``, per-query from the predictions)."""
    config = {"method": method, "post": "none", "model_fingerprint": method.split("+")[0],
              "benchmark": {"root": str(Path(bench.root).resolve()), "name": bench.name,
                            "manifest_sha256": sha256_file(Path(bench.root) / "manifest.json"),
                            "counts": bench.counts()},
              "notes": {}}
    order = np.argsort(-preds.scores, kind="stable")
    preds = Predictions(preds.query_ids[order], preds.reference_ids[order], preds.scores[order])
    dd = Predictions(preds.query_ids[: 10 * len(bench.gt)], preds.reference_ids[: 10 * len(bench.gt)],
                     preds.scores[: 10 * len(bench.gt)])
    metrics = {"isc2021": evaluate(bench.gt, preds, "isc2021").to_dict(),
               "drivendata": evaluate(bench.gt, dd, "drivendata").to_dict()}
    write_outputs(out, config, preds, metrics, per_query_from_predictions(bench.queries, preds), {"total": 1.0})
    return out


def scored_predictions(bench, quality: float, seed: int = 0) -> Predictions:
    """Every (query, reference) pair scored with noise; the true pair gets ``quality`` more."""
    rng = np.random.default_rng(seed)
    qs, rs, ss = [], [], []
    truth = dict(zip(bench.gt.query_ids, bench.gt.reference_ids))
    for q in bench.query_ids:
        for r in bench.reference_ids:
            qs.append(q), rs.append(r)
            ss.append(rng.normal() + (quality if truth[q] == r else 0.0))
    return Predictions(np.array(qs, object), np.array(rs, object), np.round(np.array(ss), 6))


# --- extraction and robustness tests ---------------------------------------------------------------

class Streamed:
    """A model that asks for 3 CPU streams (the SSCD ONNX way), recording the threads it ran on."""

    def __init__(self, inner):
        self.inner, self.threads, self.calls = inner, set(), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def cpu_streams(self):
        return 3

    def embed(self, batch):
        pytest.fail("the streams path must call embed_stream")

    def embed_stream(self, batch):
        self.threads.add(threading.current_thread().name)
        self.calls += len(batch)
        return self.inner.embed(batch)


#: run options of the robustness suites: CPU, small batches, no DataLoader workers
FAST = RunOptions(device="cpu", extract=ExtractConfig(batch_size=8, num_workers=0, shard_size=16))
#: a 32-pixel, 32-d ``timm_random`` descriptor
SMALL_MODEL = {"model.input_size": 32, "model.dim": 32}


def _texture(rng, h=48, w=64):
    return Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)


def make_robust_bench(root: Path, n_ref=8, n_pos=4, n_neg=3, seed=0) -> Path:
    """A minimal benchmark folder: queries Q00000..Q0000{n_pos-1} are crops of R00000i, the rest distractors;
    3 training and 3 held-out images (the graded suite's assets)."""
    rng = np.random.default_rng(seed)
    for d in ("queries", "references", "training", "held_out"):
        (root / d).mkdir(parents=True)
    refs = [_texture(rng) for _ in range(n_ref)]
    for i, im in enumerate(refs):
        im.save(root / "references" / f"R{i:06d}.jpg", quality=95)
    for i in range(3):
        _texture(rng).save(root / "training" / f"T{i:06d}.jpg", quality=95)
        _texture(rng).save(root / "held_out" / f"H{i:06d}.jpg", quality=95)
    rows, pairs = [], []
    for q in range(n_pos + n_neg):
        qid = f"Q{q:05d}"
        rid = f"R{q:06d}" if q < n_pos else ""
        (refs[q].crop((4, 3, 60, 45)) if rid else _texture(rng)).save(root / "queries" / f"{qid}.jpg", quality=90)
        pairs.append((qid, rid))
        rows.append(dict(query_id=qid, has_match=bool(rid), reference_id=rid, source_id=rid or f"H{q:06d}",
                         family="crop" if rid else "none", ops="[]", strength=0.3))
    write_ground_truth(root / "ground_truth.csv", GroundTruth.from_pairs(pairs))
    pd.DataFrame(rows).to_parquet(root / "queries.parquet", index=False)
    (root / "manifest.json").write_text(json.dumps({
        "generator": "test", "version": "0", "name": "robust", "seed": seed, "preset": "unit",
        "counts": {"queries": n_pos + n_neg, "references": n_ref, "training": 3},
        "sha256": {"ground_truth.csv": sha256_file(root / "ground_truth.csv"),
                   "queries.parquet": sha256_file(root / "queries.parquet")}}))
    return root


def make_runs(root: Path):
    """A minimal benchmark and two timm_random runs of it (other seeds): (bench, run a, run b)."""
    bench = make_robust_bench(root / "bench")
    a = run_method("timm_random", bench, root / "runs" / "a", SMALL_MODEL, FAST).out
    b = run_method("timm_random", bench, root / "runs" / "b", {**SMALL_MODEL, "model.seed": 1}, FAST).out
    return bench, a, b


def texture(rng, h=72, w=96):
    """A smooth random colour image (distinct per seed, so descriptors differ)."""
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def make_bench(root: Path, n_ref=12, n_train=8, n_pos=5, n_neg=3, seed=0) -> Path:
    """A minimal benchmark folder in the format of docs/CONTRACTS.md."""
    rng = np.random.default_rng(seed)
    for d in ("queries", "references", "training"):
        (root / d).mkdir(parents=True)
    refs = []
    for i in range(n_ref):
        im = texture(rng)
        im.save(root / "references" / f"R{i:06d}.jpg", quality=95)
        refs.append(im)
    for i in range(n_train):
        texture(rng).save(root / "training" / f"T{i:06d}.jpg", quality=95)
    rows, pairs = [], []
    edits = [lambda im: im.crop((8, 6, 90, 66)), ImageOps.mirror, lambda im: im.rotate(8),
             lambda im: ImageOps.grayscale(im).convert("RGB"), lambda im: im.resize((60, 45))]
    for q in range(n_pos + n_neg):
        qid = f"Q{q:05d}"
        if q < n_pos:
            rid = f"R{q:06d}"
            edits[q % len(edits)](refs[q]).save(root / "queries" / f"{qid}.jpg", quality=90)
            fam = ["crop", "flip", "rotate", "color", "resize"][q % 5]
        else:
            rid = ""
            texture(rng).save(root / "queries" / f"{qid}.jpg", quality=90)
            fam = "none"
        pairs.append((qid, rid))
        rows.append(dict(query_id=qid, has_match=bool(rid), reference_id=rid, source_id=rid or f"H{q:06d}",
                         family=fam, ops="[]", strength=0.5))
    write_ground_truth(root / "ground_truth.csv", GroundTruth.from_pairs(pairs))
    pd.DataFrame(rows).to_parquet(root / "queries.parquet", index=False)
    manifest = {"generator": "test", "version": "0", "name": "unit", "seed": seed, "preset": "unit",
                "counts": {"queries": n_pos + n_neg, "references": n_ref, "training": n_train},
                "sha256": {"ground_truth.csv": sha256_file(root / "ground_truth.csv"),
                           "queries.parquet": sha256_file(root / "queries.parquet")}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def make_matching_run(sscd: Path, out: Path) -> Path:
    """A matching-track run folder re-scoring sscd's predictions: the truth gets a high score, every
    pair records a match count, a box and per-view scores (the columns the pair view reads)."""
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.eval.formats import Predictions
    from imsim_lab.eval.metrics import evaluate
    from imsim_lab.runfolder import per_query_from_predictions, read_config, read_predictions, write_outputs

    cfg = read_config(sscd)
    bench = load_benchmark(cfg["benchmark"]["root"], check_hashes=False)
    p = read_predictions(sscd)
    qids, rids, s = np.asarray(p.query_ids, object), np.asarray(p.reference_ids, object), np.asarray(p.scores)
    truth = dict(zip(bench.gt.query_ids, bench.gt.reference_ids))
    df = pd.DataFrame({"query_id": qids, "reference_id": rids, "candidate_score": s})
    df["candidate_rank"] = df.groupby("query_id")["candidate_score"].rank(method="first", ascending=False) - 1
    df["candidate_rank"] = df["candidate_rank"].astype(int)
    df = df[df["candidate_rank"] < 5].reset_index(drop=True)
    t = np.array([truth.get(q) == r for q, r in zip(df["query_id"], df["reference_id"])])
    df["n_matches"] = np.where(t, 80, 3)
    df["score"] = df["n_matches"] + 0.5 * (df["candidate_score"] - df["candidate_score"].min()) / \
        (np.ptp(df["candidate_score"]) or 1)
    df["box_q"] = "0.1,0.1,0.9,0.9"
    df["view_score_whole"], df["view_score_left"] = np.where(t, 0.9, 0.2), np.where(t, 0.7, 0.1)
    preds = Predictions(df["query_id"].to_numpy(object), df["reference_id"].to_numpy(object), df["score"].to_numpy())
    o = np.argsort(-preds.scores, kind="stable")
    preds = Predictions(preds.query_ids[o], preds.reference_ids[o], preds.scores[o])
    metrics = {"isc2021": evaluate(bench.gt, preds, "isc2021").to_dict(),
               "drivendata": evaluate(bench.gt, preds, "drivendata").to_dict()}
    config = {**{k: cfg[k] for k in ("benchmark",)}, "method": "sift_verify", "track": "matching", "matcher": "sift",
              "params": {"ratio": 0.8}, "candidates": {"method": "sscd", "k": 5, "run": str(sscd), "pairs": len(df)},
              "matcher_report": {"ratio": 0.8, "images_per_query": 1}, "notes": {}}
    write_outputs(out, config, preds, metrics, per_query_from_predictions(bench.queries, preds),
                  {"candidates": 0.1, "rescore": 5.0}, candidates=df)
    return out


APP = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")


def app(monkeypatch, runs_dir, page, timeout: float = 120, **params):
    """An AppTest of the explorer on ``runs_dir`` at ``page`` with these query parameters, run and
    checked to raise nothing."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("IMSIM_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.switch_page(page)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def lv_scene(bench_root: Path, work: Path):
    """(pairs, ctx, params): the first six queries paired with the first six references of the
    benchmark at ``bench_root``, a match context with the training images, and ``d2lv``'s parameters
    with only the centre query view, no budget and 8-px minimum sides."""
    import numpy as np

    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.methods import CandidatePairs, MatchContext, get_method
    from imsim_lab.runner import bench_images

    bench = load_benchmark(bench_root)
    q, r = bench.query_ids[:6], bench.reference_ids[:6]
    pairs = CandidatePairs(np.array(q), np.array(r), np.linspace(0, 1, 6), np.zeros(6, np.int64))
    ctx = MatchContext(bench_images(bench, {}, "query"), bench_images(bench, {}, "reference"), work,
                       training=bench_images(bench, {}, "training"))
    params = {**get_method("d2lv").params, "query_views": ["center"], "budget_per_query": None, "min_side": 8,
              "min_query_side": 8}
    return pairs, ctx, params


def load_script(relpath: str):
    """The repository's script ``relpath`` (e.g. ``"benchmarks/bench_train.py"``) imported as a module
    named after its file: scripts are not part of the package."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
