"""The matching track in the one harness: candidates from a descriptor run, a registered matcher
rescoring them, the run folder of a matching run, its refusals, and the robustness suites."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imsim_lab.cli import main
from imsim_lab.errors import ImsimError
from imsim_lab.eval.metrics import evaluate
from imsim_lab.features import ExtractConfig
from imsim_lab.features.dataset import ImageSource
from imsim_lab.methods import (MATCHERS, METHODS, CandidatePairs, Matcher, MatchResult, MethodSpec, get_method,
                               list_methods, prepare)
from imsim_lab.methods.matching import candidate_pairs
from imsim_lab.methods.spec import CandidateSource
from imsim_lab.runfolder import CANDIDATES, PER_QUERY_COLUMNS, read_candidates, read_per_query, read_predictions
from imsim_lab.runner import RunOptions, run_method
from support import make_bench

FAST = RunOptions(device="cpu", extract=ExtractConfig(batch_size=4, num_workers=0, shard_size=8))


class PixelMatcher(Matcher):
    """Scores a pair by minus the mean absolute difference of 16x16 grey thumbnails (a toy matcher that
    looks at the images through the MatchContext, with a per-side cache in ctx.folder)."""

    def __init__(self, size: int = 16, invert: bool = False):
        self.size, self.invert = size, invert

    def _thumbs(self, source, ids, folder: Path):
        pre = lambda im: np.asarray(im.convert("L").resize((self.size, self.size)), np.float32)  # noqa: E731
        ds = source.dataset(pre, ids)
        out = {}
        for k, i in enumerate(ids):
            _, arr, err = ds[k]
            out[i] = arr
        (folder / "count.txt").write_text(str(len(ids)))
        return out

    def score(self, pairs, ctx):
        qs = self._thumbs(ctx.queries, sorted(set(pairs.query_ids)), ctx.folder("query"))
        rs = self._thumbs(ctx.references, sorted(set(pairs.reference_ids)), ctx.folder("reference"))
        s = np.array([-np.abs(qs[q] - rs[r]).mean() for q, r in zip(pairs.query_ids, pairs.reference_ids)])
        if self.invert:
            s = -s
        return MatchResult(s, extras={"mad": -s}, report={"thumbnails": len(qs) + len(rs)})


MATCHERS.add("test_pixels", PixelMatcher, overwrite=True)
for name, params in [("test_pixel_verify", {}), ("test_pixel_invert", {"invert": True})]:
    METHODS.add(name, MethodSpec(name, track="matching", matcher="test_pixels",
                                 params={"candidates.method": "pdq", "candidates.k": 4, "candidates.budget": None,
                                         "size": 16, **params}), overwrite=True)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("mbench") / "b")


@pytest.fixture(scope="module")
def pdq_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("pdq") / "pdq"
    run_method("pdq", bench, out, opts=FAST)
    return out


def test_specs_and_listing():
    assert get_method("sscd").track == "descriptor" and get_method("sift_verify").track == "matching"
    assert "sift_verify" in list_methods(track="matching") and "sift_verify" not in list_methods(track="descriptor")
    src = get_method("sift_verify").candidate_source()
    assert src == CandidateSource("sscd", 10, None)
    with pytest.raises(ValueError, match="candidates.k or candidates.budget"):
        CandidateSource("sscd", None, None)
    with pytest.raises(ValueError, match="positive integer"):
        get_method("test_pixel_verify").resolve({"candidates.k": 0})
    with pytest.raises(KeyError, match="no model of its own"):
        get_method("test_pixel_verify").resolve({"model.weights_path": "x"})
    with pytest.raises(ValueError, match="needs a matcher"):
        MethodSpec("bad", track="matching", params={"candidates.method": "pdq", "candidates.k": 1,
                                                     "candidates.budget": None})


def test_cli_methods_track(capsys):
    assert main(["methods", "--track", "matching"]) == 0
    out = capsys.readouterr().out
    assert "sift_verify" in out and "matching" in out and "\nsscd " not in "\n" + out
    assert main(["methods", "sscd", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["track"] == "descriptor"


def test_candidate_pairs_k_and_budget():
    rng = np.random.default_rng(0)
    xq, xb = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(9, 8)).astype(np.float32)
    prep = prepare(get_method("gist"), xq, xb, None, {})
    qids, rids = [f"Q{i:05d}" for i in range(5)], [f"R{i:06d}" for i in range(9)]
    p = candidate_pairs(prep, qids, rids, CandidateSource("gist", 3, None))
    assert len(p) == 15 and sorted(set(p.ranks.tolist())) == [0, 1, 2]
    d = -((xq[:, None] - xb[None]) ** 2).sum(-1)
    for q, r, s, k in zip(p.query_ids, p.reference_ids, p.scores, p.ranks):
        row = d[int(q[1:])]
        assert np.isclose(s, row[int(r[1:])], atol=1e-4) and int((row > s + 1e-4).sum()) == k
    b = candidate_pairs(prep, qids, rids, CandidateSource("gist", 3, 7))
    assert len(b) == 7 and np.all(np.sort(b.scores)[::-1] >= np.sort(p.scores)[::-1][:7] - 1e-9)
    g = candidate_pairs(prep, qids, rids, CandidateSource("gist", None, 6))
    assert len(g) == 6 and np.isclose(np.sort(g.scores)[0], np.sort(d.ravel())[::-1][5], atol=1e-4)


def test_matching_run_folder(bench, pdq_run, tmp_path):
    out = tmp_path / "m"
    res = run_method("test_pixel_verify", bench, out, opts=RunOptions(**{**FAST.__dict__, "candidates": str(pdq_run)}))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["track"] == "matching" and cfg["matcher"] == "test_pixels"
    assert cfg["candidates"]["method"] == "pdq" and cfg["candidates"]["k"] == 4
    assert cfg["candidates"]["run"] == str(pdq_run.resolve()) and cfg["candidates"]["pairs"] == 8 * 4
    assert cfg["matcher_report"]["thumbnails"] > 0 and cfg["matcher_report"]["pairs"] == 32
    assert not (out / "descriptors.h5").exists() and not (out / "features").exists()
    table = read_candidates(out)
    assert list(table.columns[:5]) == ["query_id", "reference_id", "candidate_score", "candidate_rank", "score"]
    assert "mad" in table.columns and len(table) == 32
    preds = read_predictions(out)
    assert len(preds) == 32 and np.all(np.diff(preds.scores) <= 0)
    # the final scores are the matcher's, and the metrics are those of the rescored predictions
    s = dict(zip(zip(table.query_id, table.reference_id), table.score))
    assert all(np.isclose(s[(q, r)], v) for q, r, v in zip(preds.query_ids, preds.reference_ids, preds.scores))
    bench_gt = __import__("imsim_lab.data.benchmark", fromlist=["load_benchmark"]).load_benchmark(bench).gt
    assert res.metrics["isc2021"]["micro_ap"] == pytest.approx(evaluate(bench_gt, preds, "isc2021").micro_ap)
    # the per-query table is computed from the final (rescored) predictions
    pq = read_per_query(out)
    assert list(pq.columns) == list(PER_QUERY_COLUMNS)
    for r in pq[pq.has_match].itertuples():
        mine = table[table.query_id == r.query_id].sort_values("score", ascending=False)
        if r.reference_id in set(mine.reference_id):
            ts = float(mine.loc[mine.reference_id == r.reference_id, "score"].iloc[0])
            assert r.true_score == pytest.approx(ts) and r.true_rank == int((mine.score >= ts).sum()) - 1
        else:
            assert r.true_rank == -1
        assert r.top_reference_id == mine.reference_id.iloc[0]
    # re-running reuses; the matcher's caches live in the run folder
    again = run_method("test_pixel_verify", bench, out, opts=RunOptions(**{**FAST.__dict__,
                                                                          "candidates": str(pdq_run)}))
    assert again.reused and (out / "matcher" / "query" / "count.txt").is_file()


def test_rescoring_changes_the_ranking(bench, pdq_run, tmp_path):
    opts = RunOptions(**{**FAST.__dict__, "candidates": str(pdq_run)})
    good = run_method("test_pixel_verify", bench, tmp_path / "g", opts=opts)
    bad = run_method("test_pixel_invert", bench, tmp_path / "b", opts=opts)
    rg, rb = read_per_query(tmp_path / "g"), read_per_query(tmp_path / "b")
    pos = rg.has_match
    # pixel differences find these copies; the inverted matcher pushes the truth down its list
    assert (rg.true_rank[pos] == 0).mean() > (rb.true_rank[pos] == 0).mean()
    assert good.metrics["isc2021"]["micro_ap"] > bad.metrics["isc2021"]["micro_ap"]


def test_candidates_run_into_the_run_folder_when_not_given(bench, tmp_path):
    res = run_method("test_pixel_verify", bench, tmp_path / "m", opts=FAST)
    assert (tmp_path / "m" / "candidates" / "metrics.json").is_file()
    assert res.config["candidates"]["run"] == str((tmp_path / "m" / "candidates").resolve())


def test_bad_candidate_sources_are_one_line_exit_2(bench, pdq_run, tmp_path, capsys):
    base = ["run", "test_pixel_verify", "--bench", str(bench), "--workers", "0"]
    assert main(base + ["--out", str(tmp_path / "a"), "--candidates", str(tmp_path / "nothing")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err
    gist = tmp_path / "gist"
    run_method("gist", bench, gist, opts=FAST)
    assert main(base + ["--out", str(tmp_path / "b"), "--candidates", str(gist)]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "gist" in err and len(err.strip().splitlines()) == 1
    other = make_bench(tmp_path / "other", seed=5)
    assert main(["run", "test_pixel_verify", "--bench", str(other), "--workers", "0", "--out", str(tmp_path / "c"),
                 "--candidates", str(pdq_run)]) == 2
    assert "another benchmark" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "d"), "-p", "candidates.method=nosuch"]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "e"), "-p", "candidates.method=test_pixel_invert"]) == 2
    assert "is a matching method" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "f"), "-p", "nosuch=1"]) == 2
    assert "no parameter 'nosuch'" in capsys.readouterr().err


def test_graded_suite_reruns_the_matcher(bench, pdq_run, tmp_path):
    from imsim_lab.analysis.robustness import GradedConfig, run_graded

    out = tmp_path / "m"
    run_method("test_pixel_verify", bench, out, opts=RunOptions(**{**FAST.__dict__, "candidates": str(pdq_run)}))
    cfg = GradedConfig(families=("hflip",), strengths=(0.0,), sample=3, seed=0)
    table = run_graded(out, cfg, opts=FAST)
    assert set(table.protocol) == {"isc2021", "drivendata"} and len(table) == 2
    cells = list((out / "robustness" / "graded" / "cells").glob("*_matcher"))
    assert len(cells) == 1 and (cells[0] / "query" / "count.txt").read_text() == "3"
    # the references' thumbnails are the run's own (one cache for the references)
    assert not (cells[0] / "reference").exists()
    pq = pd.read_parquet(out / "robustness" / "graded" / "per_query.parquet")
    assert len(pq) == 3 and set(pq.family) == {"hflip"}


def test_two_runs_on_one_folder_are_refused_while_one_runs(bench, tmp_path):
    """A second process on the same --out while the first holds the lock gets one line, exit 2."""
    out = tmp_path / "r"
    out.mkdir()
    import fcntl

    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = subprocess.run([sys.executable, "-m", "imsim_lab", "run", "pdq", "--bench", str(bench), "--out", str(out),
                            "--workers", "0"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert p.returncode == 2 and "another imsim-lab run is writing this folder" in p.stderr
    assert not (out / "metrics.json").exists() and not (out / "features").exists()
    assert main(["run", "pdq", "--bench", str(bench), "--out", str(out), "--workers", "0"]) == 0


def test_image_source_positions_and_unknown_ids(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(p)
        paths.append(p)
    src = ImageSource.files(["a", "b", "c"], paths, "k")
    ds = src.dataset(lambda im: np.asarray(im)[0, 0, 0], ["c", "a"])
    assert [ds[0][1], ds[1][1]] == [80, 0]
    with pytest.raises(ValueError, match="no image 'zz'"):
        src.positions(["a", "zz"])
    with pytest.raises(ValueError, match="repeated ids"):
        ImageSource(["a", "a"], lambda pos, pre: None, "k")
    pairs = CandidatePairs.from_predictions(type("P", (), {"query_ids": np.array(["q2", "q1", "q2"]),
                                                             "reference_ids": np.array(["r1", "r1", "r2"]),
                                                             "scores": np.array([0.5, 0.1, 0.9])})())
    assert dict(zip(zip(pairs.query_ids, pairs.reference_ids), pairs.ranks.tolist())) == {
        ("q2", "r1"): 1, ("q1", "r1"): 0, ("q2", "r2"): 0}


def test_a_matching_run_is_an_attack_transfer_target_not_a_surrogate(bench, pdq_run, tmp_path):
    from imsim_lab.analysis.attacks import AttackConfig, AttackError, SuiteConfig, run_attack_suite

    m = run_method("test_pixel_verify", bench, tmp_path / "m",
                   opts=RunOptions(**{**FAST.__dict__, "candidates": str(pdq_run)})).out
    sur = run_method("timm_random", bench, tmp_path / "t", {"model.input_size": 64}, FAST).out
    cfg = SuiteConfig(AttackConfig("fgsm", "linf"), eps=(0.0, 8 / 255), sample=2, n_examples=0)
    curves = run_attack_suite(sur, cfg, [m], opts=FAST)
    tr = curves[(curves.kind == "transfer") & (curves.protocol == "isc2021")].set_index("eps")
    assert tr.loc[0.0, "eval_method"] == "test_pixel_verify" and tr.loc[0.0, "n_positives"] == 2
    # the matcher ran again on the adversarial images (their own work folder), not on the clean ones
    assert list((sur / "robustness" / "attacks" / "fgsm-linf" / "matcher").rglob("count.txt"))
    with pytest.raises(AttackError, match="cannot be a surrogate"):
        run_attack_suite(m, cfg, opts=FAST)
