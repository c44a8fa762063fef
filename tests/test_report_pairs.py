"""The pair view's backend (imsim_lab.analysis.report.pairs): candidates with ranks before and after
re-scoring, matcher columns, boxes, and SIFT matches recomputed for one pair."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imsim_lab.analysis.report.pairs import (local_matches, matcher_columns, pair_image, pair_table, parse_box,
                                             view_scores)


def textured(seed, size=(320, 240)):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.NEAREST)


def test_pair_table_ranks_and_columns(tmp_path):
    df = pd.DataFrame({"query_id": ["Q1", "Q1", "Q1", "Q2"], "reference_id": ["R1", "R2", "R3", "R1"],
                       "candidate_score": [0.9, 0.8, 0.7, 0.5], "candidate_rank": [0, 1, 2, 0],
                       "score": [3.1, 9.2, 0.4, 1.0], "n_matches": [3, 9, 0, 1],
                       "box_q": ["0,0,0.5,1", "", "", ""], "view_score_whole": [0.1, 0.9, 0.2, 0.3]})
    df.to_parquet(tmp_path / "candidates.parquet")
    t = pair_table(tmp_path, {"Q1": "R2", "Q2": ""})
    q1 = t[t["query_id"] == "Q1"]
    assert list(q1["reference_id"]) == ["R2", "R1", "R3"] and list(q1["final_rank"]) == [0, 1, 2]
    assert list(q1["candidate_rank"]) == [1, 0, 2]
    assert t["is_true"].sum() == 1 and t.loc[t["is_true"], "reference_id"].item() == "R2"
    assert matcher_columns(t) == ["n_matches", "box_q", "view_score_whole"]
    assert pair_table(tmp_path / "nothing") is None


def test_parse_box_and_view_scores():
    assert parse_box("0.1,0.2,0.5,0.9") == (0.1, 0.2, 0.5, 0.9)
    assert parse_box("[0, 0, 1, 1]") == (0, 0, 1, 1)
    assert parse_box((0.5, 0, 0.2, 1)) is None and parse_box("") is None and parse_box(float("nan")) is None
    row = pd.Series({"score": 1.0, "view_score_left": 0.2, "view_score_whole": 0.7})
    vs = view_scores(row)
    assert list(vs["view"]) == ["whole", "left"] and list(vs["score"]) == [0.7, 0.2]


def test_local_matches_copy_versus_unrelated():
    a = textured(1)
    crop = a.crop((40, 30, 280, 210))  # a copy: part of the same image
    other = textured(2)
    xq, xr = local_matches(crop, a)
    assert len(xq) >= 20 and xq.shape == xr.shape
    # matched positions agree with the crop offset (most matches are right)
    err = np.abs(xr - (xq + np.array([40, 30]))).max(axis=1)
    assert (err < 3).mean() > 0.8
    assert len(local_matches(crop, other)[0]) < len(xq) / 4
    # the same count as the matcher's own verification of the pair
    from imsim_lab.features.local import create_local_model
    from imsim_lab.features.localmatch import ratio_matches

    m = create_local_model("sift")
    fa, fb = m.detect(m.preprocess(crop)), m.detect(m.preprocess(a))
    assert len(ratio_matches(fa.descriptors, fb.descriptors, 0.8)[0]) == len(xq)
    img = pair_image(crop, a, xq, xr, box_q=(0, 0, 0.5, 0.5), height=200)
    assert img.height == 200 and img.width > 300
