"""How fast does each explorer page render on a large run? (the 50,000-query target)

    .venv/bin/python explorer/bench_render.py [--queries 50000] [--runs 4] [--out /tmp/imsim-render]

Writes a synthetic benchmark (every image a hard link to a few small JPEGs: only the tables matter
here) and ``--runs`` run folders of ``--queries`` queries with 10 predictions each (500,000 rows
for 50,000 queries, metrics from the official ``evaluate``), then renders every page with
Streamlit's AppTest: once cold (loading, bootstrap and tables computed) and once more in a fresh
session (what a second visitor, or a return to the page, costs once cached). Prints one line per
page with both times in seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
PAGES = ["views/leaderboard.py", "views/families.py", "views/failures.py", "views/compare.py", "views/browser.py",
         "views/submit.py"]


def make_bench(root: Path, nq: int, nref: int, seed: int = 0):
    """A benchmark folder with nq queries (20 % with a match) and nref references."""
    from PIL import Image

    from imsim_lab.data.augment import FAMILIES
    from imsim_lab.data.benchmark import load_benchmark, make_ids, write_tables

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n_links = 0

    def source() -> Path:  # a file system caps the links of one file (ext4: 65,000)
        p = root / f"source{n_links // 20_000}.jpg"
        if not p.exists():
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p, quality=80)
        return p

    qids, rids, tids = make_ids("Q", nq), make_ids("R", nref), make_ids("T", 100)
    for folder, ids in (("queries", qids), ("references", rids), ("training", tids)):
        (root / folder).mkdir(exist_ok=True)
        for i in ids:
            p = root / folder / f"{i}.jpg"
            if not p.exists():
                os.link(source(), p)
                n_links += 1
    has = rng.random(nq) < 0.2
    ref = np.where(has, np.array(rids, object)[rng.integers(0, nref, nq)], "")
    # one match per reference at most, as in DISC21
    seen = set()
    for i in np.flatnonzero(has):
        while ref[i] in seen:
            ref[i] = rids[rng.integers(0, nref)]
        seen.add(ref[i])
    fams = np.array(FAMILIES.names(), object)[rng.integers(0, len(FAMILIES.names()), nq)]
    q = pd.DataFrame({"query_id": qids, "has_match": has, "reference_id": ref,
                      "source_id": np.where(has, ref, "H000000"), "family": fams,
                      "ops": [f'[{{"name":"{f}","params":{{}}}}]' for f in fams],
                      "strength": np.round(rng.random(nq), 4)})
    write_tables(root, q, None, {"generator": "bench_render", "version": "1", "name": f"render-{nq}", "seed": seed})
    return load_benchmark(root, check_hashes=False)


def make_run(out: Path, bench, skill: float, seed: int, k: int = 10) -> None:
    """A run folder: k predictions per query; the true reference is among them with a score
    boosted by ``skill`` (higher = a better method)."""
    from imsim_lab.data.benchmark import sha256_file
    from imsim_lab.eval.formats import GroundTruth, Predictions
    from imsim_lab.eval.metrics import evaluate
    from imsim_lab.eval.protocols import protocol_names
    from imsim_lab.runfolder import per_query_from_predictions, write_outputs

    rng = np.random.default_rng(seed)
    gt: GroundTruth = bench.gt
    nq, rids = len(gt), np.asarray(bench.reference_ids, object)
    nref = len(rids)
    ri = (rng.integers(0, nref, nq)[:, None] + max(1, nref // k) * np.arange(k)[None, :]) % nref  # distinct per row
    has = gt.reference_ids != ""
    idx = {r: i for i, r in enumerate(rids)}
    truth = np.array([idx.get(r, -1) for r in gt.reference_ids])
    keep_true = has & (rng.random(nq) < 0.9)
    rows = np.flatnonzero(keep_true)
    where = ri[rows] == truth[rows, None]
    inside = where.any(axis=1)
    ri[rows[inside], where[inside].argmax(axis=1)] = ri[rows[inside], 0]  # move the truth to column 0
    ri[rows, 0] = truth[rows]
    s = rng.normal(size=(nq, k))
    s[keep_true, 0] += skill * rng.random(int(keep_true.sum())) * 3
    order = np.argsort(-s.ravel(), kind="stable")
    preds = Predictions(np.repeat(gt.query_ids, k)[order], rids[ri.ravel()][order], np.round(s.ravel()[order], 6))
    cfg = {"method": out.name, "post": "none", "benchmark": {"root": str(bench.root.resolve()), "name": bench.name,
                                                             "manifest_sha256": sha256_file(bench.root / "manifest.json")}}
    m = {p: evaluate(gt, preds, p).to_dict() for p in protocol_names()}
    write_outputs(out, cfg, preds, m, per_query_from_predictions(bench.queries, preds), {})


def render_times(runs_dir: Path, pages=PAGES, timeout: float = 600) -> list[dict]:
    """[{page, cold_s, cached_s, cold_cpu_s, cached_cpu_s}] from AppTest (a fresh session per measure,
    one process). The CPU seconds of this process say what a render costs when the machine is shared."""
    from streamlit.testing.v1 import AppTest

    os.environ["IMSIM_RUNS_DIR"] = str(runs_dir)
    out = []
    for page in pages:
        row = {"page": page}
        for what in ("cold_s", "cached_s"):
            at = AppTest.from_file(str(HERE / "app.py"), default_timeout=timeout)
            at.switch_page(page)
            t, c = time.perf_counter(), time.process_time()
            at.run()
            row[what] = round(time.perf_counter() - t, 2)
            row[what.replace("_s", "_cpu_s")] = round(time.process_time() - c, 2)
            if at.exception:
                raise RuntimeError(f"{page}: {at.exception[0].value}")
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--references", type=int, default=None, help="default: as many as queries")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--out", default="/tmp/imsim-render")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t = time.perf_counter()
    bench = make_bench(out / "bench", args.queries, args.references or args.queries)
    for i in range(args.runs):
        run = out / "runs" / f"method{i}"
        if not (run / "metrics.json").exists():
            make_run(run, bench, skill=1.0 + i, seed=i)
    print(f"data: {args.queries} queries, {args.runs} runs of {args.queries * 10} predictions, "
          f"made in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    for r in render_times(out / "runs"):
        print(f"{r['page']:<22} first render {r['cold_s']:6.2f} s (cpu {r['cold_cpu_s']:5.2f})   "
              f"once cached {r['cached_s']:6.2f} s (cpu {r['cached_cpu_s']:5.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
