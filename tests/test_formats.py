"""Every bad-file case of the official formats, and a round trip of each format."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from imsim_lab.errors import FormatError
from imsim_lab.eval.formats import (
    DescriptorSubmission, GroundTruth, Predictions, read_descriptors, read_ground_truth, read_predictions,
    read_split_vectors, write_descriptors, write_ground_truth, write_predictions, write_split_vectors,
)


def write(tmp_path, text, name="f.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------------------------
# ground truth


def test_ground_truth_round_trip(tmp_path):
    gt = GroundTruth.from_pairs([("Q00000", "R000010"), ("Q00001", None), ("Q00002", "R000003")])
    p = tmp_path / "gt.csv"
    write_ground_truth(p, gt)
    assert p.read_text() == "query_id,reference_id\nQ00000,R000010\nQ00001,\nQ00002,R000003\n"
    back = read_ground_truth(p)
    assert back.query_ids.tolist() == ["Q00000", "Q00001", "Q00002"]
    assert back.reference_ids.tolist() == ["R000010", "", "R000003"]
    assert back.n_positives == 2


@pytest.mark.parametrize("text, match, where", [
    ("", "empty file", "row 1"),
    ("query,reference\nQ00000,R000000\n", "wrong header", "row 1"),
    ("query_id,reference_id\n", "no rows", None),
    ("query_id,reference_id\nQ00000,R000000\nX1,R000001\n", "unknown query id format", "row 3"),
    ("query_id,reference_id\nQ00000,R000000\nQ00001,ref1\n", "unknown reference id format", "row 3"),
    ("query_id,reference_id\nQ00000,R000000\nQ00000,R000000\n", "duplicate row", "row 3"),
    ("query_id,reference_id\nQ00000,\nQ00000,R000000\n", "both without a match and with one", "row 3"),
    ("query_id,reference_id\n,R000000\n", "empty query_id", "row 2"),
])
def test_ground_truth_errors(tmp_path, text, match, where):
    p = write(tmp_path, text)
    with pytest.raises(FormatError, match=match) as e:
        read_ground_truth(p)
    assert str(p) in str(e.value)
    if where:
        assert where in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="file not found"):
        read_ground_truth(tmp_path / "nope.csv")
    with pytest.raises(FormatError, match="file not found"):
        read_predictions(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------
# matching-track predictions


def test_predictions_round_trip_keeps_full_precision(tmp_path):
    preds = Predictions.from_triples([("Q00000", "R000001", 0.1 + 0.2), ("Q00001", "R000002", -1e-17)])
    p = tmp_path / "sub.csv"
    write_predictions(p, preds)
    back = read_predictions(p)
    assert back.scores.tolist() == preds.scores.tolist()
    assert back.query_ids.tolist() == ["Q00000", "Q00001"]


@pytest.mark.parametrize("body, match, where", [
    ("Q00000,R000000,abc\n", "non-numeric score", "row 2"),
    ("Q00000,R000000,0.5\nQ00001,R000000,nan\n", "NaN score", "row 3"),
    ("Q00000,R000000,inf\n", "infinite score", "row 2"),
    ("Q00000,R000000,\n", "empty score", "row 2"),
    ("Q00000,R000000,1\nQ00000,R000000,2\n", "duplicate prediction", "row 3"),
    ("Q0,R000000,1\n", "unknown query id format", "row 2"),
    ("Q00000,R000000,1\nQ00001,T000000,1\n", "unknown reference id format", "row 3"),
    ("Q00000,,1\n", "empty reference_id", "row 2"),
    ("Q00000,R000000,1\nQ00001,R000000,1\nQ00002,R000000,1,5\n", "expected 3 fields per row, found 4", "row 4"),
])
def test_prediction_errors(tmp_path, body, match, where):
    p = write(tmp_path, "query_id,reference_id,score\n" + body)
    with pytest.raises(FormatError, match=match) as e:
        read_predictions(p)
    assert str(p) in str(e.value) and where in str(e.value)


def test_prediction_header_and_columns(tmp_path):
    with pytest.raises(FormatError, match="wrong header"):
        read_predictions(write(tmp_path, "query_id,reference_id\nQ00000,R000000\n"))
    with pytest.raises(FormatError, match="expected 3 fields per row, found 4"):
        read_predictions(write(tmp_path, "query_id,reference_id,score\nQ00000,R000000,1,7\n"))


def test_prediction_row_cap(tmp_path):
    rows = "".join(f"Q{i:05d},R000000,1\n" for i in range(11))
    p = write(tmp_path, "query_id,reference_id,score\n" + rows)
    with pytest.raises(FormatError, match="more than the limit of 10") as e:
        read_predictions(p, max_rows=10)
    assert "row 12" in str(e.value)
    assert len(read_predictions(p)) == 11


def test_duplicates_allowed_on_request(tmp_path):
    p = write(tmp_path, "query_id,reference_id,score\nQ00000,R000000,1\nQ00000,R000000,2\n")
    assert len(read_predictions(p, allow_duplicates=True)) == 2


def test_empty_submission_is_valid(tmp_path):
    assert len(read_predictions(write(tmp_path, "query_id,reference_id,score\n"))) == 0


# ---------------------------------------------------------------------------------------------
# descriptor HDF5


def make_sub(nq=4, nr=5, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return DescriptorSubmission(
        np.array([f"Q{i:05d}" for i in range(nq)], object), rng.normal(size=(nq, d)).astype("f4"),
        np.array([f"R{i:06d}" for i in range(nr)], object), rng.normal(size=(nr, d)).astype("f4"))


def test_descriptor_round_trip_sorts_ids(tmp_path):
    sub = make_sub()
    shuffled = DescriptorSubmission(sub.query_ids[::-1], sub.xq[::-1], sub.reference_ids, sub.xb)
    p = tmp_path / "d.h5"
    write_descriptors(p, shuffled)
    back = read_descriptors(p)
    assert back.query_ids.tolist() == sub.query_ids.tolist()
    np.testing.assert_array_equal(back.xq, sub.xq)
    np.testing.assert_array_equal(back.xb, sub.xb)
    with h5py.File(p) as f:
        assert f["query"].dtype == np.float32 and f["query_ids"][0] == b"Q00000"


def raw_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


def ids(prefix, n, width):
    return np.array([f"{prefix}{i:0{width}d}".encode() for i in range(n)])


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("reference_ids"), "missing dataset"),
    (lambda d: d.update(query=np.zeros((4, 300), "f4"), reference=np.zeros((5, 300), "f4")), "more than 256"),
    (lambda d: d.update(reference=np.zeros((5, 6), "f4")), "query dimension 8 differs from reference dimension 6"),
    (lambda d: d.update(query_ids=ids("Q", 4, 5)[::-1]), "not sorted"),
    (lambda d: d.update(query_ids=np.array([b"Q00000", b"Q00000", b"Q00001", b"Q00002"])), "not unique"),
    (lambda d: d.update(reference_ids=np.array([b"R000000", b"R000001", b"img2", b"R000003", b"R000004"])),
     "unknown reference id format"),
    (lambda d: d.update(query=np.zeros((3, 8), "f4")), "3 vectors for 4 ids"),
    (lambda d: d.update(query=np.full((4, 8), np.nan, "f4")), "non-finite"),
    (lambda d: d.update(query=np.zeros((4, 8), "i4")), "expected float32"),
])
def test_descriptor_errors(tmp_path, mutate, match):
    d = dict(query=np.zeros((4, 8), "f4"), reference=np.zeros((5, 8), "f4"),
             query_ids=ids("Q", 4, 5), reference_ids=ids("R", 5, 6))
    mutate(d)
    p = raw_h5(tmp_path / "bad.h5", **d)
    with pytest.raises(FormatError, match=match) as e:
        read_descriptors(p)
    assert str(p) in str(e.value)


def test_not_hdf5(tmp_path):
    p = write(tmp_path, "hello", "x.h5")
    with pytest.raises(FormatError, match="not a readable HDF5"):
        read_descriptors(p)


def test_split_vectors_round_trip_strips_paths(tmp_path):
    p = tmp_path / "refs.h5"
    x = np.arange(12, dtype="f4").reshape(3, 4)
    write_split_vectors(p, ["a/R000001.jpg", "R000002.png", "R000003"], x)
    names, back = read_split_vectors(p)
    assert names.tolist() == ["R000001", "R000002", "R000003"]
    np.testing.assert_array_equal(back, x)


def test_blank_lines_and_spaces_are_tolerated_and_rows_stay_exact(tmp_path):
    p = write(tmp_path, "query_id,reference_id,score\nQ00000, R000000 , 0.5\n\nQ00001,R000001,x\n")
    with pytest.raises(FormatError, match="non-numeric score 'x'") as e:
        read_predictions(p)
    assert "row 4" in str(e.value)
    p = write(tmp_path, "query_id,reference_id,score\r\nQ00000, R000000 , 0.5\r\n\r\nQ00001,R000001,2\r\n", "crlf.csv")
    preds = read_predictions(p)
    assert preds.reference_ids.tolist() == ["R000000", "R000001"] and preds.scores.tolist() == [0.5, 2.0]


def test_not_utf8(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("query_id,reference_id,score\nQ00000,R000000,0.5\xe9\n".encode("latin-1"))
    with pytest.raises(FormatError):
        read_predictions(p)


# ---------------------------------------------------------------------------------------------
# the two paths of the CSV reader


def _plain_read(path):
    """Reference: the csv module, stripped fields, float() scores (what the reader must return)."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f)][1:]
    rows = [r for r in rows if r]
    return [r[0].strip() for r in rows], [r[1].strip() for r in rows], [float(r[2]) for r in rows]


def _random_predictions(rng, n):
    q = [f"Q{int(i):0{int(w)}d}" for i, w in zip(rng.integers(0, 300, n), rng.choice([5, 5, 5, 6], n))]
    r = [f"R{int(i):0{int(w)}d}" for i, w in zip(rng.integers(0, 10**6, n), rng.choice([6, 6, 7, 17], n))]
    s = rng.normal(size=n)
    texts = [repr(float(x)) if i % 3 else f"{x:.3e}" if i % 2 else f"{x:.2f}" for i, x in enumerate(s)]
    odd = ["+1", "-.5", "5.", "1E3", "0", "-0.0", "123456789012345678", "1e-320"]
    for j, i in enumerate(range(0, n, 7)):
        texts[i] = odd[j % len(odd)]
    return q, r, texts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_and_csv_paths_read_the_same_values(tmp_path, seed, monkeypatch):
    """A plain file takes the vectorised path; the same rows with a space take the csv-module path.
    Both give the values of a plain csv-module reference, bit for bit, and consistent codes."""
    from imsim_lab.eval import csvread

    general = []
    monkeypatch.setattr(csvread, "_general", lambda *a, _g=csvread._general: general.append(a[0].name) or _g(*a))
    rng = np.random.default_rng(seed)
    q, r, s = _random_predictions(rng, 3000)
    seen, rows = set(), []
    for row in zip(q, r, s):
        if row[:2] not in seen:
            seen.add(row[:2])
            rows.append(row)
    body = "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    fast = write(tmp_path, "query_id,reference_id,score\n" + body, "fast.csv")
    slow = write(tmp_path, "query_id,reference_id,score\n" + body.replace("\n", " \n", 1), "slow.csv")
    ref_q, ref_r, ref_s = _plain_read(fast)
    for path in (fast, slow):
        p = read_predictions(path)
        assert p.query_ids.tolist() == ref_q and p.reference_ids.tolist() == ref_r
        assert np.array_equal(p.scores, np.array(ref_s)) and p.scores.dtype == np.float64
        assert p.query_vocab[p.query_codes].tolist() == ref_q
        # equal codes for equal ids, and only for them
        for ids, codes in ((ref_q, p.query_codes), (ref_r, p.reference_codes)):
            pairs = set(zip(ids, codes.tolist()))
            assert len(pairs) == len(set(ids)) == len(set(codes.tolist()))
    assert general == ["slow.csv"]  # 17-digit ids and odd scores stay on the fast path


def test_ids_of_other_widths_stay_distinct_and_long_ids_are_read(tmp_path):
    p = write(tmp_path, "query_id,reference_id,score\nQ00001,R000001,1\nQ000001,R0000001,2\n"
                        "Q00001,R0000001,3\nQ00002,R123456789012345678901,4\n")
    preds = read_predictions(p)
    assert preds.query_ids.tolist() == ["Q00001", "Q000001", "Q00001", "Q00002"]
    assert preds.reference_ids.tolist() == ["R000001", "R0000001", "R0000001", "R123456789012345678901"]
    assert len(set(preds.query_codes.tolist())) == 3 and preds.query_codes[0] == preds.query_codes[2]
    assert preds.reference_codes[1] == preds.reference_codes[2] != preds.reference_codes[0]


@pytest.mark.parametrize("body, match, row", [
    ("Q00000,R000000,0.5\nQ0000,R000000,0.5\n", "unknown query id format 'Q0000'", 3),
    ("Q00000,R000000,0.5\nQ00001,X000000,0.5\n", "unknown reference id format 'X000000'", 3),
    ("Q00000,R000000,0.5\n,R000001,0.5\n", "empty query_id", 3),
    ("Q00000,R000000,0.5\nQ00001,R000001,\n", "empty score", 3),
    ("Q00000,R000000,0.5\nQ00001,R000001,0.5,1\n", "expected 3 fields per row, found 4", 3),
    ("Q00000,R000000,0.5\nQ00001,R000001,-inf\n", "infinite score '-inf'", 3),
    ("Q00000,R000000,0.5\nQ00001,R000001,1e5x\n", "non-numeric score '1e5x'", 3),
])
def test_fast_path_errors_name_the_row(tmp_path, body, match, row):
    for name, text in (("fast.csv", body), ("slow.csv", body.replace("\n", "\r\n"))):
        p = write(tmp_path, "query_id,reference_id,score\n" + text, name)
        with pytest.raises(FormatError, match=match) as e:
            read_predictions(p)
        assert f"row {row}" in str(e.value)


@pytest.mark.parametrize("sort", [False, True])
def test_factorize_keys_matches_numpy_unique(sort):
    from imsim_lab.eval.csvread import factorize_keys

    key = np.random.default_rng(3).integers(-1, 50, 400)
    key = np.sort(key) if sort else key
    codes, where = factorize_keys(key)
    uniq, inverse = np.unique(key, return_inverse=True)
    assert np.array_equal(codes, inverse.ravel()) and np.array_equal(key[where], uniq)
