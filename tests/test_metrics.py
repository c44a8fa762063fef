"""The metrics against PROTOCOL.md's worked examples and a plain reference written from the definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsim_lab.errors import FormatError
from imsim_lab.eval.formats import GroundTruth, Predictions
from imsim_lab.eval.metrics import evaluate

GT4 = GroundTruth.from_pairs([("Q00000", "R000000"), ("Q00001", "R000001"), ("Q00002", None), ("Q00003", None)])


# ---------------------------------------------------------------------------------------------
# a plain reference, written from the definition (sort of tuples, Python loops)


def reference_metrics(gt_pairs, preds, protocol, subset=None):
    """gt_pairs: list of (q, r or None); preds: list of (q, r, s)."""
    gt_queries = {q for q, _ in gt_pairs}
    positives = {(q, r) for q, r in gt_pairs if r}
    if subset is not None:
        pos_queries_out = {q for q, r in positives if q not in subset}
        positives = {(q, r) for q, r in positives if q in subset}
        preds = [p for p in preds if p[0] not in pos_queries_out]
    if protocol == "drivendata":
        preds = [p for p in preds if p[0] in gt_queries]
    n_gt = len(positives)
    labelled = [(s, (q, r) in positives, q, r) for q, r, s in preds]
    # score descending; inside a tie wrong first
    labelled.sort(key=lambda t: (-t[0], t[1]))
    tp = 0
    ap = 0.0
    best = None  # (recall, precision, threshold)
    prev_rec = 0.0
    for k, (s, y, _, _) in enumerate(labelled, start=1):
        tp += y
        prec = tp / k
        rec = tp / n_gt if n_gt else math.nan
        ap += (rec - prev_rec) * prec
        prev_rec = rec
        if prec >= 0.9 and (best is None or rec > best[0]):
            best = (rec, prec, s)
    out = {"micro_ap": ap if n_gt else math.nan, "n_predictions": len(labelled)}
    if best is None:
        out["recall_at_p90"] = None if protocol == "isc2021" else (0.0 if n_gt else math.nan)
        out["threshold_at_p90"] = None
    else:
        out["recall_at_p90"], out["precision_at_p90"], out["threshold_at_p90"] = best
    if protocol == "isc2021" and n_gt:
        ranks = []
        for q, r in positives:
            mine = [p for p in preds if p[0] == q]
            hit = [p for p in mine if p[1] == r]
            if not hit:
                ranks.append(math.inf)
            else:
                ranks.append(sum(p[2] >= hit[0][2] for p in mine) - 1)
        out["recall_at_rank1"] = sum(x == 0 for x in ranks) / n_gt
        out["recall_at_rank10"] = sum(x < 10 for x in ranks) / n_gt
    return out


def close(a, b):
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def check_against_reference(gt_pairs, triples, protocol, subset=None):
    gt = GroundTruth.from_pairs(gt_pairs)
    preds = Predictions.from_triples(triples) if triples else Predictions.empty()
    m = evaluate(gt, preds, protocol, queries=subset)
    ref = reference_metrics(gt_pairs, triples, protocol, subset)
    for key, v in ref.items():
        assert close(getattr(m, key), v), (key, getattr(m, key), v)


# ---------------------------------------------------------------------------------------------
# worked examples of PROTOCOL.md


@pytest.mark.parametrize("protocol", ["isc2021", "drivendata"])
def test_all_tied_one_wrong_two_right(protocol):
    preds = Predictions.from_triples([("Q00000", "R000000", 1.0), ("Q00002", "R000009", 1.0), ("Q00001", "R000001", 1.0)])
    m = evaluate(GT4, preds, protocol)
    assert m.micro_ap == pytest.approx(0.5833333333, abs=1e-9)
    # the wrong prediction comes first inside the tie
    assert m.is_correct.tolist() == [False, True, True]


def test_query_absent_from_gt_differs_between_protocols():
    preds = Predictions.from_triples([("Q00099", "R000005", 2.0), ("Q00000", "R000000", 1.0), ("Q00001", "R000001", 1.0)])
    isc = evaluate(GT4, preds, "isc2021")
    dd = evaluate(GT4, preds, "drivendata")
    assert isc.micro_ap == pytest.approx(0.5833333333, abs=1e-9)
    assert isc.recall_at_p90 is None and isc.threshold_at_p90 is None
    assert dd.micro_ap == pytest.approx(1.0)
    assert dd.recall_at_p90 == 1.0 and dd.n_dropped == 1


def test_duplicates_error_under_isc2021_counted_under_drivendata():
    preds = Predictions.from_triples([("Q00000", "R000000", 1.0), ("Q00000", "R000000", 0.9)])
    with pytest.raises(FormatError, match="duplicate"):
        evaluate(GT4, preds, "isc2021")
    m = evaluate(GT4, preds, "drivendata")
    # the true pair counted twice: (1/2)*1 + (1/2)*1 -> above the "one positive found" 0.5
    assert m.micro_ap == pytest.approx(1.0)


def test_duplicated_true_pair_can_push_drivendata_above_one():
    gt = GroundTruth.from_pairs([("Q00000", "R000000")])
    preds = Predictions.from_triples([("Q00000", "R000000", 1.0)] * 3)
    assert evaluate(gt, preds, "drivendata").micro_ap == pytest.approx(3.0)


def test_p90_point_precision_and_threshold():
    gt = GroundTruth.from_pairs([(f"Q{i:05d}", f"R{i:06d}") for i in range(10)] + [("Q00099", None)])
    # 9 right, then 1 wrong, then 1 right
    triples = [(f"Q{i:05d}", f"R{i:06d}", 1.0 - i / 100) for i in range(9)]
    triples += [("Q00099", "R000050", 0.5), ("Q00009", "R000009", 0.4)]
    m = evaluate(gt, Predictions.from_triples(triples), "isc2021")
    # prefix 11 has precision 10/11 = 0.909 >= 0.9 and recall 1.0
    assert m.recall_at_p90 == pytest.approx(1.0)
    assert m.precision_at_p90 == pytest.approx(10 / 11)
    assert m.threshold_at_p90 == pytest.approx(0.4)


def test_rank_recall_ties_count_against_you():
    gt = GroundTruth.from_pairs([("Q00000", "R000000"), ("Q00001", "R000001")])
    preds = Predictions.from_triples([
        ("Q00000", "R000005", 0.9), ("Q00000", "R000000", 0.9),  # tie -> rank 1
        ("Q00001", "R000001", 0.8), ("Q00001", "R000003", 0.1),  # rank 0
    ])
    m = evaluate(gt, preds, "isc2021")
    assert m.recall_at_rank1 == 0.5 and m.recall_at_rank10 == 1.0


def test_empty_predictions_and_no_positives():
    m = evaluate(GT4, Predictions.empty(), "isc2021")
    assert m.micro_ap == 0.0 and m.recall_at_p90 is None and m.recall_at_rank1 == 0.0
    gt = GroundTruth.from_pairs([("Q00000", None)])
    m = evaluate(gt, Predictions.from_triples([("Q00000", "R000000", 1.0)]), "isc2021")
    assert math.isnan(m.micro_ap) and m.to_dict()["micro_ap"] is None


def test_subset_keeps_the_queries_without_a_match():
    gt = GroundTruth.from_pairs([("Q00000", "R000000"), ("Q00001", "R000001"), ("Q00002", None)])
    preds = Predictions.from_triples([
        ("Q00002", "R000007", 0.95),  # distractor query: stays in every subset
        ("Q00000", "R000000", 0.9),
        ("Q00001", "R000009", 0.99),  # positive query outside the subset: removed
    ])
    m = evaluate(gt, preds, "isc2021", queries=["Q00000"])
    assert m.n_positives == 1 and m.n_predictions == 2
    assert m.micro_ap == pytest.approx(0.5)


def test_unknown_protocol():
    with pytest.raises(ValueError):
        evaluate(GT4, Predictions.empty(), "kaggle")


# ---------------------------------------------------------------------------------------------
# property tests against the reference

queries = [f"Q{i:05d}" for i in range(8)]
refs = [f"R{i:06d}" for i in range(6)]


@st.composite
def cases(draw, allow_dup):
    gt_pairs = []
    used_refs = set()
    for q in queries[:6]:
        r = draw(st.sampled_from([None] + refs))
        if r in used_refs:
            r = None
        used_refs.add(r)
        gt_pairs.append((q, r))
    n = draw(st.integers(0, 30))
    scores = st.sampled_from([0.0, 0.25, 0.5, 0.5, 1.0, -1.0, 2.0])  # many ties
    triples = []
    seen = set()
    for _ in range(n):
        q = draw(st.sampled_from(queries))  # Q00006, Q00007: absent from the GT
        r = draw(st.sampled_from(refs))
        if not allow_dup and (q, r) in seen:
            continue
        seen.add((q, r))
        triples.append((q, r, draw(scores)))
    subset = draw(st.one_of(st.none(), st.sets(st.sampled_from(queries[:6]))))
    return gt_pairs, triples, subset


@settings(max_examples=300, deadline=None)
@given(cases(allow_dup=False))
def test_isc2021_matches_reference(case):
    gt_pairs, triples, subset = case
    check_against_reference(gt_pairs, triples, "isc2021", subset)


@settings(max_examples=300, deadline=None)
@given(cases(allow_dup=True))
def test_drivendata_matches_reference(case):
    gt_pairs, triples, subset = case
    check_against_reference(gt_pairs, triples, "drivendata", subset)


def test_large_random_against_reference():
    rng = np.random.default_rng(0)
    gt_pairs = [(f"Q{i:05d}", f"R{i:06d}" if i % 5 == 0 else None) for i in range(300)]
    triples = [(f"Q{q:05d}", f"R{r:06d}", float(s)) for q, r, s in
               zip(rng.integers(0, 320, 3000), rng.integers(0, 300, 3000), rng.integers(0, 20, 3000) / 4)]
    triples = list({(q, r): (q, r, s) for q, r, s in triples}.values())
    check_against_reference(gt_pairs, triples, "isc2021")
    check_against_reference(gt_pairs, triples, "drivendata")


def test_duplicate_detection_paths_agree():
    from imsim_lab.eval.metrics import first_duplicate

    rng = np.random.default_rng(1)
    q = rng.integers(0, 50, 2000)
    r = np.array([f"R{x:06d}" for x in rng.integers(0, 60, 2000)], dtype=object)
    codes = np.unique(r, return_inverse=True)[1]
    expected = next(i for i in range(2000) if (q[i], r[i]) in {(q[j], r[j]) for j in range(i)})
    assert first_duplicate(q, r) == expected == first_duplicate(q, r, codes)
    uq = np.arange(100)
    ur = np.array([f"R{x:06d}" for x in range(100)], dtype=object)
    assert first_duplicate(uq, ur) is None


def test_multiple_matches_per_query_use_the_general_path():
    gt = GroundTruth.from_pairs([("Q00000", "R000000"), ("Q00000", "R000001"), ("Q00001", None)])
    preds = [("Q00000", "R000001", 0.9), ("Q00000", "R000002", 0.8), ("Q00000", "R000000", 0.7), ("Q00001", "R000000", 0.95)]
    check_against_reference([("Q00000", "R000000"), ("Q00000", "R000001"), ("Q00001", None)], preds, "isc2021")
    m = evaluate(gt, Predictions.from_triples(preds), "isc2021")
    assert m.n_positives == 2 and m.is_correct.sum() == 2


def test_reader_codes_give_the_same_metrics(tmp_path):
    from imsim_lab.eval.formats import read_predictions, write_predictions

    rng = np.random.default_rng(3)
    gt_pairs = [(f"Q{i:05d}", f"R{i:06d}" if i % 3 == 0 else None) for i in range(60)]
    triples = list({(f"Q{q:05d}", f"R{r:06d}"): (f"Q{q:05d}", f"R{r:06d}", float(s)) for q, r, s in
                    zip(rng.integers(0, 70, 600), rng.integers(0, 60, 600), rng.integers(0, 8, 600))}.values())
    p = tmp_path / "sub.csv"
    write_predictions(p, Predictions.from_triples(triples))
    read = read_predictions(p)
    assert read.query_codes is not None
    gt = GroundTruth.from_pairs(gt_pairs)
    for protocol in ("isc2021", "drivendata"):
        for subset in (None, ["Q00000", "Q00003", "Q00004"]):
            a = evaluate(gt, read, protocol, queries=subset).to_dict()
            b = evaluate(gt, Predictions.from_triples(triples), protocol, queries=subset).to_dict()
            assert a == b


@pytest.mark.parametrize("multi", [False, True])
def test_reference_ids_as_bytes_evaluate_identically(tmp_path, multi):
    """``read_predictions(text_ids=False)`` (what ``imsim-lab eval`` uses) keeps the reference ids
    as ASCII bytes; every protocol, a subset and a GT with several matches per query give the
    same metrics as the str ids."""
    from imsim_lab.eval.formats import GroundTruth, read_predictions, write_ground_truth

    rng = np.random.default_rng(3)
    pairs = [(f"Q{i:05d}", f"R{i:06d}" if i % 3 else "") for i in range(30)]
    if multi:
        pairs += [("Q00001", "R000500"), ("Q00002", "R000501")]
    write_ground_truth(tmp_path / "gt.csv", GroundTruth.from_pairs(pairs))
    rows = ["query_id,reference_id,score"]
    for i in range(30):
        for r in {i, 500, 501, int(rng.integers(0, 40))}:
            rows.append(f"Q{i:05d},R{r:06d},{rng.normal():.3f}")
    rows.append(rows[1])  # a duplicate: drivendata counts it again, isc2021 refuses it
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    from imsim_lab.eval.formats import read_ground_truth

    gt = read_ground_truth(tmp_path / "gt.csv")
    a = read_predictions(tmp_path / "p.csv", allow_duplicates=True)
    b = read_predictions(tmp_path / "p.csv", allow_duplicates=True, text_ids=False)
    assert b.reference_ids.dtype.kind == "S" and a.reference_ids.dtype == object
    subset = [f"Q{i:05d}" for i in range(0, 30, 2)]
    for queries in (None, subset):
        ma, mb = evaluate(gt, a, "drivendata", queries=queries), evaluate(gt, b, "drivendata", queries=queries)
        assert ma.to_dict() == mb.to_dict()
    with pytest.raises(FormatError, match=r"duplicate prediction \(Q00000, R0000"):
        evaluate(gt, b, "isc2021")
