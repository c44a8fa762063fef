"""Selective-search proposals as query views (``imsim_lab.features.proposals``) and the ``lv``
matcher's ``selective_search`` family."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imsim_lab.errors import ImsimError
from imsim_lab.features.proposals import ProposalConfig, filter_proposals, raw_proposals, selective_search_views


def test_filters_keep_rank_order_and_drop_small_elongated_overlapping_and_whole_boxes():
    size = (400, 300)
    px = np.array([
        [0, 0, 400, 300],        # 0 the whole image: dropped (the whole query is a view already)
        [10, 10, 60, 60],        # 1 short side 50 < 100: the small-crop rule
        [0, 0, 300, 100],        # 2 aspect 3 > 2
        [50, 50, 250, 250],      # 3 kept
        [60, 60, 260, 250],      # 4 IoU with 3 > 0.5: suppressed
        [200, 100, 400, 300],    # 5 kept (IoU with 3 = 2500 / 77500)
        [-20, 150, 150, 320],    # 6 clipped to the image (170 x 150): kept
        [100, 0, 300, 200],      # 7 over the top_n of 3
    ], float)
    keep = filter_proposals(px, size, ProposalConfig(top_n=3, min_side=100))
    assert keep.tolist() == [3, 5, 6]
    assert filter_proposals(px, size, ProposalConfig(top_n=10, min_side=100)).tolist() == [3, 5, 6, 7]
    assert 1 in filter_proposals(px, size, ProposalConfig(top_n=10, min_side=40, min_area=0)).tolist()
    with pytest.raises(ImsimError, match="top_n"):
        ProposalConfig(top_n=0)


def _scene() -> Image.Image:
    """Two flat rectangles on a flat background: the regions selective search must propose."""
    img = Image.new("RGB", (320, 240), (200, 200, 200))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 30, 150, 200], fill=(200, 30, 30))
    d.rectangle([180, 40, 300, 190], fill=(30, 30, 200))
    return img


def test_selective_search_finds_the_objects_of_a_synthetic_scene_and_is_deterministic():
    img = _scene()
    raw = raw_proposals(img, side=160)
    assert raw.shape[1] == 4 and len(raw) > 0
    assert (raw[:, 2] <= 320 + 1e-6).all() and (raw[:, 3] <= 240 + 1e-6).all()   # mapped back to the image
    area = (raw[:, 2] - raw[:, 0]) * (raw[:, 3] - raw[:, 1])
    assert (np.diff(area) <= 1e-6).all() and len(np.unique(raw, axis=0)) == len(raw)  # distinct, larger first
    views = selective_search_views(img, ProposalConfig(top_n=10, side=160, min_side=60, min_area=0))
    assert views and [v.name for v in views] == [f"ss{i}" for i in range(len(views))]
    assert views == selective_search_views(img, ProposalConfig(top_n=10, side=160, min_side=60, min_area=0))
    want = [(20 / 320, 30 / 240, 151 / 320, 201 / 240), (180 / 320, 40 / 240, 301 / 320, 191 / 240)]

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
        return w * h / (area(a) + area(b) - w * h)

    for box in want:   # each rectangle is proposed (IoU > 0.7 with one view)
        assert max(iou(box, v.box) for v in views) > 0.7
    for v in views:    # every view passes the small-crop rule in pixels of the image
        assert min((v.box[2] - v.box[0]) * 320, (v.box[3] - v.box[1]) * 240) >= 60 - 1


def test_lv_embeds_the_proposals_as_a_query_view_family(tiny_bench, tmp_path):
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.methods import CandidatePairs, MatchContext, create_matcher, get_method
    from imsim_lab.runner import bench_images

    bench = load_benchmark(tiny_bench)
    q, r = bench.query_ids[:4], bench.reference_ids[:4]
    pairs = CandidatePairs(np.array(q), np.array(r), np.zeros(4), np.zeros(4, np.int64))
    ctx = MatchContext(bench_images(bench, {}, "query"), bench_images(bench, {}, "reference"), tmp_path / "w")
    params = {**get_method("sscd+lv").params, "backbone_args": {"sscd": {"short_side": 96}},
              "query_views": ["selective_search"], "directions": ["aq_or"], "score_norm": False,
              "min_query_side": 40, "selective_search_n": 3, "budget_per_query": None}
    res = create_matcher("lv", params).score(pairs, ctx)
    rep = res.report
    n_ss = rep["selective_search_views"]
    assert rep["query_views"] == ["whole", "selective_search"] and 0 < n_ss <= 3 * 4
    b = rep["backbones"][0]
    assert b["query_views"] + sum(b["skipped_query_views"].values()) == 4 + n_ss
    assert "view_score_selective_search" in res.extras
    with pytest.raises(ImsimError, match="query view family"):
        create_matcher("lv", {**params, "query_views": ["selective"]})
