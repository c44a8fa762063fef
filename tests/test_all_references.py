"""``candidates.k = "all"``: every reference a candidate of every query, validated and recorded; a
matcher that searches the references itself gets only its shortlist and returns the pairs it found
(no all-pairs list), any other matcher gets the dense list."""

import json

import numpy as np
import pytest

from imsim_lab.cli import main
from imsim_lab.features import ExtractConfig
from imsim_lab.methods import MATCHERS, METHODS, CandidatePairs, Matcher, MatchResult, MethodSpec, get_method, prepare
from imsim_lab.methods.matchers import found_pairs
from imsim_lab.methods.matching import candidate_pairs, rescore, shortlist_for
from imsim_lab.methods.spec import ALL, CandidateSource
from imsim_lab.runfolder import read_candidates, read_predictions
from imsim_lab.runner import RunOptions, run_method
from support import make_bench

FAST = RunOptions(device="cpu", extract=ExtractConfig(batch_size=4, num_workers=0, shard_size=8))


class NameMatcher(Matcher):
    """Searches the references itself: each query's 'found' reference is the one whose number equals
    the query's modulo the reference count; the shortlist pairs get -1."""

    own_search = True

    def __init__(self, shortlist: int = 0):
        self.shortlist = int(shortlist)

    def score(self, pairs, ctx):
        NameMatcher.last_given = pairs
        if not pairs.all_references:
            return MatchResult(np.zeros(len(pairs)))
        refs = ctx.references.ids
        q = pairs.queries()
        r = [refs[int(x[1:]) % len(refs)] for x in q]
        out = found_pairs(pairs, q, r)
        found = {(a, b) for a, b in zip(q, r)}
        s = np.array([10.0 if (a, b) in found else -1.0 for a, b in zip(out.query_ids, out.reference_ids)])
        return MatchResult(s, {"found": s > 0}, {"found": len(found)}, out)


class LyingMatcher(Matcher):
    """Returns pairs of its own although it was given a list."""

    def score(self, pairs, ctx):
        return MatchResult(np.zeros(1), pairs=CandidatePairs(np.array(["Q"]), np.array(["R"]), np.zeros(1),
                                                                np.zeros(1, np.int64)))


MATCHERS.add("test_names", NameMatcher, overwrite=True)
MATCHERS.add("test_lying", LyingMatcher, overwrite=True)
for name, matcher, extra in [("test_all_names", "test_names", {"shortlist": 0}),
                             ("test_all_names_short", "test_names", {"shortlist": 2})]:
    METHODS.add(name, MethodSpec(name, track="matching", matcher=matcher,
                                 params={"candidates.method": "pdq", "candidates.k": ALL, "candidates.budget": None,
                                         **extra}), overwrite=True)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("allbench") / "b")


def test_the_source_is_validated():
    src = CandidateSource("pdq", "all")
    assert src.all_references and not CandidateSource("pdq", 3).all_references
    with pytest.raises(ValueError, match="takes no candidates.budget"):
        CandidateSource("pdq", "all", 10)
    with pytest.raises(ValueError, match="'all' for candidates.k"):
        CandidateSource("pdq", "every")
    assert get_method("sift_vote").candidate_source().all_references
    assert get_method("imgfp").candidate_source().all_references
    _, params = get_method("test_all_names").resolve({"candidates.k": 5})
    assert params["candidates.k"] == 5


def test_candidate_pairs_never_list_all_pairs_for_a_searching_matcher():
    rng = np.random.default_rng(0)
    xq, xb = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(9, 8)).astype(np.float32)
    prep = prepare(get_method("gist"), xq, xb, None, {})
    qids, rids = [f"Q{i:05d}" for i in range(4)], [f"R{i:06d}" for i in range(9)]
    src = CandidateSource("gist", "all")
    dense = candidate_pairs(prep, qids, rids, src)
    assert len(dense) == 36 and not dense.all_references
    none = candidate_pairs(prep, qids, rids, src, shortlist=0)
    assert len(none) == 0 and none.queries().tolist() == qids
    two = candidate_pairs(prep, qids, rids, src, shortlist=2)
    assert len(two) == 8 and set(two.ranks.tolist()) == {0, 1} and two.all_references
    assert shortlist_for("test_names", {"shortlist": 3}) == 3 and shortlist_for("sift", {}) is None
    assert shortlist_for("imgfp", {"global_k": 1}) == 1 and shortlist_for("sift_vote", {}) == 0
    u = found_pairs(two, ["Q00000", "Q00001"], [two.reference_ids[0], "R000008"])
    assert len(u) == 8 + (1 if ("Q00001", "R000008") not in set(zip(two.query_ids, two.reference_ids)) else 0)
    assert np.isnan(u.scores[8:]).all() and (u.ranks[8:] == -1).all()


def test_a_searching_matcher_returns_its_own_pairs(bench, tmp_path):
    res = run_method("test_all_names", bench, tmp_path / "m", opts=FAST)
    given = NameMatcher.last_given
    assert given.all_references and len(given) == 0  # no all-pairs list was built
    cand = read_candidates(tmp_path / "m")
    q = json.loads((tmp_path / "m" / "config.json").read_text())
    nq = res.config["benchmark"]["counts"]["queries"]
    assert len(cand) == nq and (cand.candidate_rank == -1).all() and cand.candidate_score.isna().all()
    assert q["candidates"]["k"] == "all" and q["candidates"]["shortlist"] == {"per_query": 0, "pairs": 0}
    assert q["candidates"]["pairs"] == nq and q["matcher_report"]["shortlist_pairs"] == 0
    assert len(read_predictions(tmp_path / "m")) == nq
    short = run_method("test_all_names_short", bench, tmp_path / "s", opts=FAST)
    cand = read_candidates(tmp_path / "s")
    assert len(NameMatcher.last_given) == 2 * nq and nq <= len(cand) <= 3 * nq
    assert (cand.candidate_rank >= 0).sum() == 2 * nq and short.config["candidates"]["shortlist"]["pairs"] == 2 * nq


def test_a_rescoring_matcher_gets_the_dense_list(bench, tmp_path):
    import test_matching_track  # noqa: F401 - registers test_pixel_verify

    res = run_method("test_pixel_verify", bench, tmp_path / "d", overrides={"candidates.k": "all"}, opts=FAST)
    counts = res.config["benchmark"]["counts"]
    assert len(read_candidates(tmp_path / "d")) == counts["queries"] * counts["references"]
    assert "shortlist" not in res.config["candidates"]


def test_own_pairs_are_refused_under_a_listed_source(tmp_path):
    pairs = CandidatePairs(np.array(["Q1"]), np.array(["R1"]), np.zeros(1), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="returned pairs of its own"):
        rescore("test_lying", {}, pairs, None)


def test_cli_takes_all_and_refuses_a_budget_with_it(bench, tmp_path, capsys):
    base = ["run", "test_all_names", "--bench", str(bench), "--workers", "0", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "a"), "-p", "candidates.budget=5"]) == 2
    err = capsys.readouterr().err
    assert "takes no candidates.budget" in err and len(err.strip().splitlines()) == 1
