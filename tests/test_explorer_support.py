"""Shared helpers of the explorer and report tests (no test here).

* :func:`make_mini_bench`: a small benchmark folder written with the project's writers, with a
  sibling group and a hard negative, fast (tiny images);
* :func:`write_run`: a run folder (docs/CONTRACTS.md) from given predictions, its metrics computed
  by the official ``evaluate``;
* the ``demo_results`` fixture: a ``tiny`` benchmark and real runs made by ``imsim-lab demo``
  (once per test session, shared between xdist workers through a file lock).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imsim_lab.data.benchmark import write_tables
from imsim_lab.eval.formats import Predictions
from imsim_lab.eval.metrics import evaluate
from imsim_lab.runfolder import per_query_from_predictions, write_outputs

FAMILIES = ["rotate", "blur", "text"]
DEMO_METHODS = "pdq,sscd,sscd+sn"


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
    from imsim_lab.data.benchmark import sha256_file

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


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory):
    """(results folder, benchmark folder) made by the real ``imsim-lab demo --preset tiny``."""
    from filelock import FileLock

    from imsim_lab.cli import main

    reuse = os.environ.get("IMSIM_TEST_DEMO_DIR")  # a finished demo folder, to iterate on the pages quickly
    if reuse:
        return Path(reuse) / "runs", Path(reuse) / "bench"
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base
    out = shared / "explorer-demo"
    with FileLock(str(shared / "explorer-demo.lock")):
        if not (out / "done").exists():
            rc = main(["demo", "--preset", "tiny", "--out", str(out), "--methods", DEMO_METHODS, "--no-serve",
                       "--no-robustness", "--workers", "0"])
            assert rc == 0
            (out / "done").write_text("ok")
    return out / "runs", out / "bench"
