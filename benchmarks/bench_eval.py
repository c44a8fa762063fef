"""Benchmark of the evaluation: prints figures, asserts nothing about time.

Data: 500,000 predictions over 50,000 queries, 10,000 of which have a match (the DISC21 dev
shape), scores with ties. Compares, in the same run:

* the vectorised :func:`imsim_lab.eval.metrics.evaluate` (isc2021 protocol, rank recall included);
* a straightforward reference: Python sort over (score, not-correct) tuples and a per-query
  dictionary for the ranks, the way isc2021's ``isc/metrics.py`` computes them;
* reading the 500,000-row CSV with validation;
* the whole ``imsim-lab eval --json`` process against a plain-Python reference process
  (:data:`PLAIN_REFERENCE`: csv-module parse, a list sort of tuples and the µAP loop), each the
  best of a few runs in this same run, and their ratio (target >= 3x).

Run: ``.venv/bin/python benchmarks/bench_eval.py`` (``make bench``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from imsim_lab.eval.formats import GroundTruth, Predictions, read_ground_truth, read_predictions, write_ground_truth, write_predictions
from imsim_lab.eval.metrics import evaluate


def make_data(seed=0, nq=50_000, n_pos=10_000, n_preds=500_000, nr=1_000_000):
    rng = np.random.default_rng(seed)
    qids = np.array([f"Q{i:05d}" for i in range(nq)], dtype=object)
    pos_q = rng.choice(nq, n_pos, replace=False)
    refs = rng.choice(nr, n_pos, replace=False)
    gt_r = np.full(nq, "", dtype=object)
    gt_r[pos_q] = [f"R{r:06d}" for r in refs]
    gt = GroundTruth(qids, gt_r)
    # 10 predictions per query; the true reference among them for 70 % of the positives
    q = np.repeat(np.arange(nq), n_preds // nq)
    r = rng.integers(0, nr, len(q))
    first = np.arange(0, len(q), n_preds // nq)
    hit = pos_q[rng.random(n_pos) < 0.7]
    # place the true reference of each hit query at its first slot
    ref_of = dict(zip(pos_q.tolist(), refs.tolist()))
    r[first[hit]] = [ref_of[h] for h in hit.tolist()]
    s = np.round(rng.normal(size=len(q)), 2)  # rounding makes many ties
    s[first[hit]] += 1.5
    # a repeated random pair would be refused by isc2021: keep the first of each pair
    _, first_of_pair = np.unique(q.astype(np.int64) * nr + r, return_index=True)
    keep = np.sort(first_of_pair)
    preds = Predictions(qids[q[keep]], np.array([f"R{x:06d}" for x in r[keep]], dtype=object), s[keep])
    return gt, preds


@dataclass
class GTMatch:
    query: str
    db: str


@dataclass
class PredictedMatch:
    query: str
    db: str
    score: float


def to_records(gt: GroundTruth, preds: Predictions):
    """The input form of isc2021's evaluate(): lists of small dataclass records (not timed)."""
    gt_matches = [GTMatch(q, r) for q, r in zip(*gt.positives)]
    predictions = [PredictedMatch(q, r, s) for q, r, s in zip(preds.query_ids, preds.reference_ids, preds.scores)]
    return gt_matches, predictions


def reference_evaluate(gt_matches: list[GTMatch], predictions: list[PredictedMatch]):
    """The straightforward algorithm of isc2021's ``isc/metrics.py``, re-written for this benchmark.

    A set of (query, db) tuples for the duplicate check and the labels, a Python ``sorted`` over
    (score, not correct) tuples, and for each positive a small numpy array of its query's
    results for the rank. This is the named baseline ("sort of tuples").
    """
    if len({(p.query, p.db) for p in predictions}) != len(predictions):
        raise ValueError("duplicates")
    gt_set = {astuple(g) for g in gt_matches}
    scores = np.array([p.score for p in predictions])
    y = np.array([(p.query, p.db) in gt_set for p in predictions], dtype=bool)
    keyed = list(zip(scores, ~y))
    order = sorted(range(len(keyed)), key=keyed.__getitem__)[::-1]
    ntp = np.cumsum(y[order])
    prec = ntp / np.arange(1, len(order) + 1)
    rec = ntp / len(gt_matches)
    ap = float(((rec - np.concatenate([[0], rec[:-1]])) * prec).sum())
    by_q = defaultdict(list)
    for p in predictions:
        by_q[p.query].append(p)
    ranks = []
    for m in gt_matches:
        res = np.array([(p.score, p.db == m.db) for p in by_q.get(m.query, [])]).reshape(-1, 2)
        hit = np.flatnonzero(res[:, 1] == 1)
        ranks.append((res[:, 0] >= res[hit[0], 0]).sum() - 1 if len(hit) else 1 << 35)
    ranks = np.array(ranks)
    return ap, float((ranks == 0).mean())


#: The named baseline of the whole-process figure: a plain-Python evaluation of the matching CSV,
#: run as its own process (``python -c PLAIN_REFERENCE GT CSV``). It parses both files with the
#: csv module, refuses duplicate pairs, sorts a list of (-score, correct) tuples (wrong first
#: inside a tie) and sums µAP in a loop; it prints µAP.
PLAIN_REFERENCE = """
import csv, sys

positives, n_gt = set(), 0
with open(sys.argv[1], newline="") as f:
    rows = csv.reader(f)
    next(rows)
    for q, r in rows:
        if r:
            positives.add((q, r))
            n_gt += 1
preds, seen = [], set()
with open(sys.argv[2], newline="") as f:
    rows = csv.reader(f)
    next(rows)
    for q, r, s in rows:
        if (q, r) in seen:
            sys.exit(f"duplicate prediction ({q}, {r})")
        seen.add((q, r))
        preds.append((-float(s), (q, r) in positives))
preds.sort()
tp, ap = 0, 0.0
for k, (_, correct) in enumerate(preds, start=1):
    if correct:
        tp += 1
        ap += (tp / k) / n_gt
print(ap)
"""


def whole_process(gt_p: Path, sub_p: Path, repeat: int = 5) -> tuple[float, float, float, float]:
    """Best wall time of ``imsim-lab eval --json`` and of the plain reference process, alternated.

    Returns (cli seconds, reference seconds, cli µAP, reference µAP).
    """
    cli = [sys.executable, "-m", "imsim_lab", "eval", "--gt", str(gt_p), "--predictions", str(sub_p), "--json"]
    ref = [sys.executable, "-c", PLAIN_REFERENCE, str(gt_p), str(sub_p)]
    best = {"cli": float("inf"), "ref": float("inf")}
    out = {}
    for _ in range(repeat):
        for name, cmd in (("cli", cli), ("ref", ref)):
            t0 = time.perf_counter()
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            best[name] = min(best[name], time.perf_counter() - t0)
            out[name] = done.stdout
    return best["cli"], best["ref"], json.loads(out["cli"])["micro_ap"], float(out["ref"])


def timed(fn, repeat=3):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    gt, preds = make_data()
    print(f"data: {len(preds):,} predictions, {len(gt):,} queries, {gt.n_positives:,} positives")

    t_vec, m = timed(lambda: evaluate(gt, preds, "isc2021"))
    records = to_records(gt, preds)
    t_ref, (ap_ref, r1_ref) = timed(lambda: reference_evaluate(*records), repeat=1)
    assert abs(m.micro_ap - ap_ref) < 1e-12 and abs(m.recall_at_rank1 - r1_ref) < 1e-12
    print(f"evaluate (vectorised, isc2021, with ranks): {t_vec:.3f} s   µAP {m.micro_ap:.5f}")
    print(f"reference (isc2021's algorithm: records, sort of tuples): {t_ref:.3f} s   µAP {ap_ref:.5f}")
    print(f"speed-up: {t_ref / t_vec:.1f}x (target >= 15x)")

    with tempfile.TemporaryDirectory() as d:
        gt_p, sub_p = Path(d) / "gt.csv", Path(d) / "sub.csv"
        write_ground_truth(gt_p, gt)
        write_predictions(sub_p, preds)
        t_read, read_back = timed(lambda: read_predictions(sub_p))
        t_vec2, _ = timed(lambda: evaluate(gt, read_back, "isc2021"))
        print(f"evaluate on the predictions read from the CSV (reader's id codes reused): {t_vec2:.3f} s"
              f"   speed-up {t_ref / t_vec2:.1f}x")
        t_gt, _ = timed(lambda: read_ground_truth(gt_p))
        print(f"read + validate the {len(preds):,}-row CSV: {t_read:.3f} s; the ground truth: {t_gt:.3f} s")
        t_cli, t_plain, ap_cli, ap_plain = whole_process(gt_p, sub_p)
        assert abs(ap_cli - ap_plain) < 1e-9, (ap_cli, ap_plain)
        print(f"whole process, `imsim-lab eval --json` on the CSV: {t_cli:.3f} s   µAP {ap_cli:.5f}")
        print(f"whole process, plain-Python reference (csv module, sort of tuples, µAP loop): {t_plain:.3f} s"
              f"   µAP {ap_plain:.5f}")
        print(f"whole-process speed-up: {t_plain / t_cli:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
