"""Sub-image views: geometry of the registered sets, apply_view against numpy crops, oracle boxes
of disc-synth queries, view extraction through the pipeline, aggregation against brute force."""

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from imsim_lab.data.augment import Assets, apply_ops
from imsim_lab.features.extract import ExtractConfig
from imsim_lab.features.models import create_model
from imsim_lab.features.oracle import bench_source_box, image_size, trace_source_box
from imsim_lab.features.views import (VIEWS, View, ViewError, apply_view, boxes, make_views, oracle_boxes,
                                      pixel_box, too_small)
from imsim_lab.features.viewscore import AggregateConfig, aggregate, vote
from imsim_lab.features.viewstore import ViewConfig, extract_views, load_views

COUNTS = {"identity": 1, "rotations": 3, "center": 1, "grid2x2": 4, "grid3x3": 9, "d2lv_query": 9,
          "d2lv_reference": 19, "half_strips": 6, "half_grid": 9, "third_grid": 25, "pairvit_query": 8}


# -- geometry -------------------------------------------------------------------------------------
def test_every_registered_set_has_its_count_unique_names_and_boxes_inside_the_image():
    assert set(COUNTS) <= set(VIEWS.names())
    for name, n in COUNTS.items():
        views = VIEWS.get(name)((300, 200))
        assert len(views) == n, name
        assert len({v.name for v in views}) == n, name
        for v in views:
            x0, y0, x1, y1 = v.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, (name, v)
    ref = VIEWS.get("d2lv_reference")((10, 10))
    assert ref[0].is_whole and sum(v.name.startswith("g2") for v in ref) == 4
    assert sum(v.name.startswith("g3") for v in ref) == 9 and sum(v.name.startswith("half") for v in ref) == 4
    q = VIEWS.get("d2lv_query")((10, 10))
    assert sorted(v.rotation for v in q if v.rotation) == [90, 180, 270]
    assert View("center", (0.25, 0.25, 0.75, 0.75)) in q


def test_halves_and_strided_grids_overlap_as_specified():
    halves = [v for v in VIEWS.get("d2lv_query")((1, 1)) if v.name.startswith("half")]
    xs = sorted({(v.box[0], v.box[2]) for v in halves})
    assert np.allclose(xs, [(1 / 12, 7 / 12), (5 / 12, 11 / 12)])  # size 1/2, centres 1/3 and 2/3
    assert np.isclose(xs[0][1] - xs[1][0], 1 / 6)  # overlap
    hg = VIEWS.get("half_grid")((1, 1))
    assert np.allclose(sorted({v.box[0] for v in hg}), [0, 0.25, 0.5])
    assert all(np.isclose(v.box[2] - v.box[0], 0.5) and np.isclose(v.box[3] - v.box[1], 0.5) for v in hg)
    tg = VIEWS.get("third_grid")((1, 1))
    assert np.allclose(sorted({v.box[1] for v in tg}), np.arange(5) / 6)
    assert all(np.isclose(v.box[2] - v.box[0], 1 / 3) for v in tg)
    strips = VIEWS.get("half_strips")((1, 1))
    assert [v.box for v in strips[:3]] == [(0, 0, 0.5, 1), (0.25, 0, 0.75, 1), (0.5, 0, 1, 1)]
    assert [v.box for v in strips[3:]] == [(0, 0, 1, 0.5), (0, 0.25, 1, 0.75), (0, 0.5, 1, 1)]
    pv = {v.name: v for v in VIEWS.get("pairvit_query")((1, 1))}
    assert pv["top"].rotation == 90 and pv["left"].rotation == 0 and pv["rot90"].box == (0, 0, 1, 1)


def test_a_tiling_grid_covers_every_pixel_exactly_once():
    for size in [(101, 77), (13, 7)]:
        cover = np.zeros(size[::-1], int)
        for v in VIEWS.get("grid3x3")(size):
            x0, y0, x1, y1 = pixel_box(v, size)
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()


def test_apply_view_equals_numpy_crop_and_rot90():
    a = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    for v in make_views(["d2lv_query", "pairvit_query", "third_grid"], img.size):
        x0, y0, x1, y1 = pixel_box(v, img.size)
        np.testing.assert_array_equal(np.asarray(apply_view(img, v)), np.rot90(a[y0:y1, x0:x1], v.rotation // 90))


def test_bad_views_raise_one_line_errors():
    for box, rot in [((0.5, 0, 0.4, 1), 0), ((0, 0, 1.2, 1), 0), ((0, 0, 1, 1), 45), ((0, 0, float("nan"), 1), 0)]:
        with pytest.raises(ViewError, match="view 'v'"):
            View("v", box, rot)
    with pytest.raises(ViewError, match="grid"):
        from imsim_lab.features.views import grid
        grid(3, 0.5, 0.5)


def test_detector_boxes_are_clipped_and_empty_ones_dropped():
    vs = boxes(np.array([[10, 20, 60, 80], [-5, -5, 50, 500], [30, 30, 30, 60]]), (100, 100))
    assert [v.name for v in vs] == ["det0", "det1"]
    assert vs[0].box == (0.1, 0.2, 0.6, 0.8) and vs[1].box == (0.0, 0.0, 0.5, 1.0)


def test_min_side_rule():
    v = View("small", (0, 0, 0.1, 0.5))
    assert too_small(v, (200, 100), 32) and not too_small(v, (400, 100), 32)
    assert not too_small(View("r", (0, 0, 0.5, 0.2), 90), (200, 200), 40)


# -- oracle boxes ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench(tiny_bench):
    from imsim_lab.data.benchmark import load_benchmark

    return load_benchmark(tiny_bench)


def _mse(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("L").resize((64, 64), Image.Resampling.BILINEAR), np.float64)
    y = np.asarray(b.convert("L").resize((64, 64), Image.Resampling.BILINEAR), np.float64)
    return float(((x - y) ** 2).mean())


def test_oracle_crop_of_paste_and_collage_queries_is_closer_to_the_source_than_the_query(bench):
    q = bench.queries
    rows = q[q["family"].isin(["paste", "combine"]) & q["ops"].str.contains('"paste"|"collage"')]
    assert len(rows) >= 2
    for _, r in rows.iterrows():
        query, source = bench.load_image(r.query_id), bench.load_image(r.source_id)
        (view,) = oracle_boxes(bench, r.query_id)
        assert view.box != (0.0, 0.0, 1.0, 1.0)
        crop = apply_view(query, view)
        assert _mse(crop, source) < 0.5 * _mse(query, source), r.query_id
        assert _mse(crop, source) < 300, r.query_id


def test_oracle_predicts_every_handled_query_size_and_names_the_unhandled_op(bench):
    handled = 0
    for _, r in bench.queries.iterrows():
        ops = json.loads(r.ops)
        if any(o["name"] == "screenshot" or (o["name"] == "rotate" and o["params"].get("crop")) for o in ops):
            with pytest.raises(ViewError, match=f"query {r.query_id}: op"):
                bench_source_box(bench, r.query_id)
            continue
        sb = bench_source_box(bench, r.query_id)
        assert sb.size == image_size(bench.image_path(r.query_id)), r.query_id
        handled += 1
    assert handled >= 40


MAGENTA = (255, 0, 255)
GEOMETRY_CASES = [
    [{"name": "pad", "params": {"sides": [0.1, 0.3, 0.05, 0.2], "color": [0, 0, 0]}}],
    [{"name": "crop", "params": {"box": [0.2, 0.1, 0.9, 0.6]}}, {"name": "pad", "params": {"sides": [0.5, 0, 0, 0.2]}}],
    [{"name": "pad", "params": {"sides": [0.3, 0.1, 0, 0]}}, {"name": "hflip", "params": {}},
     {"name": "scale", "params": {"factor": 0.7}}],
    [{"name": "rotate", "params": {"degrees": 30.0, "crop": False, "fill": [0, 0, 0]}}],
    [{"name": "perspective", "params": {"corners": [[0.1, 0.05], [0.8, 0.0], [0.95, 0.9], [0.0, 0.7]]}}],
    [{"name": "paste", "params": {"background": "black", "size": 0.4, "x": 0.8, "y": 0.25, "opacity": 1.0}}],
    [{"name": "combine", "params": {"mode": "collage", "others": ["black", "black"], "split": 0.4, "split2": 0.6,
                                    "horizontal": True, "slot": 2, "gap": 0.03, "gap_color": [0, 0, 0]}}],
    [{"name": "meme", "params": {"text": "HI", "band": 0.3, "style": "band", "dark": True}},
     {"name": "aspect_ratio", "params": {"change": 1.7}}],
    [{"name": "skew", "params": {"factor": 0.4, "axis": 1}}],
]


@pytest.mark.parametrize("ops", GEOMETRY_CASES, ids=lambda ops: "+".join(o["name"] for o in ops))
def test_traced_box_is_the_box_of_a_solid_source_after_replay(ops):
    assets = Assets.from_augly(images={"black": Image.new("RGB", (400, 260))})
    src = Image.new("RGB", (180, 120), MAGENTA)
    out = np.asarray(apply_ops(src, ops, assets)).astype(int)
    mask = (out[..., 0] > 128) & (out[..., 1] < 100) & (out[..., 2] > 128)
    ys, xs = np.nonzero(mask)
    sb = trace_source_box(ops, src.size, lambda i: assets.image(i).size)
    assert sb.size == (out.shape[1], out.shape[0])
    np.testing.assert_allclose(sb.pixels, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=2.5)


# -- extraction through the pipeline --------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return create_model("resnet18_gem", input_size=32, dim=16, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(1)
    paths = []
    for i, (w, h) in enumerate([(96, 64), (64, 100), (40, 70), (120, 90)]):
        p = d / f"R{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths, [p.stem for p in paths]


def _by_hand(model, paths, views, min_side):
    rows, skipped = [], {}
    for p in paths:
        img = Image.open(p).convert("RGB")
        for v in make_views(views, img.size):
            if too_small(v, img.size, min_side):
                skipped[v.name] = skipped.get(v.name, 0) + 1
            else:
                rows.append((p.stem, v.name, model.preprocess(apply_view(img, v))))
    return rows, skipped


class Streamed:
    """Asks for 2 CPU streams (the SSCD ONNX way) and records the threads it ran on."""

    def __init__(self, inner):
        self.inner, self.threads = inner, set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def cpu_streams(self):
        return 2

    def embed_stream(self, batch):
        self.threads.add(threading.current_thread().name)
        return self.inner.embed(batch)


@pytest.mark.parametrize("path", ["loader", "workers", "streams"])
def test_view_extraction_equals_embedding_the_crops_by_hand(model, images, tmp_path, path):
    paths, ids = images
    cfg = ViewConfig(("d2lv_query", "grid3x3"), min_side=24)
    rows, skipped = _by_hand(model, paths, cfg.views, cfg.min_side)
    m = Streamed(model) if path == "streams" else model
    ec = ExtractConfig(batch_size=5, shard_size=7, num_workers=2 if path == "workers" else 0)
    vs = extract_views(m, paths, ids, cfg, tmp_path, "reference", ec)
    assert list(zip(vs.parent_ids, vs.view_names)) == [(r[0], r[1]) for r in rows]
    assert vs.skipped == skipped and sum(skipped.values()) > 0 and vs.failed == []
    np.testing.assert_allclose(vs.x, model.embed([r[2] for r in rows]), atol=1e-5)
    assert vs.boxes.shape == (len(rows), 4) and (vs.sizes.min(1) >= 24).all()
    if path == "streams":
        assert m.threads and all(t.startswith("imsim-stream") for t in m.threads)
    assert not (tmp_path / "shards").exists()
    again = load_views(tmp_path, "reference")
    np.testing.assert_array_equal(again.x, vs.x)


def test_unreadable_parent_is_reported_by_id_and_a_killed_run_resumes(model, images, tmp_path, monkeypatch):
    from imsim_lab.features import viewstore

    paths, ids = list(images[0]), list(images[1])
    paths[1] = tmp_path / "missing.png"
    cfg, ec = ViewConfig("grid2x2", min_side=8), ExtractConfig(batch_size=2, shard_size=4, num_workers=0)
    real, calls = viewstore.write_shard, []

    def dying(shard_dir, s, *a):
        calls.append(s)
        if s == 1:
            raise KeyboardInterrupt
        real(shard_dir, s, *a)

    monkeypatch.setattr(viewstore, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_views(model, paths, ids, cfg, tmp_path, "query", ec)
    monkeypatch.setattr(viewstore, "write_shard", lambda shard_dir, s, *a: (calls.append(s), real(shard_dir, s, *a)))
    vs = extract_views(model, paths, ids, cfg, tmp_path, "query", ec)
    assert calls == [0, 1, 1, 2]  # shard 0 was not recomputed
    assert [f["id"] for f in vs.failed] == [ids[1]] and ids[1] not in set(vs.parent_ids)
    rows, _ = _by_hand(model, [p for k, p in enumerate(paths) if k != 1], cfg.views, cfg.min_side)
    np.testing.assert_allclose(vs.x, model.embed([r[2] for r in rows]), atol=1e-5)


# -- aggregation ----------------------------------------------------------------------------------
def _viewset(rng, n_parents, n_views, prefix):
    m = n_parents * n_views
    names = np.array(["whole"] + [f"v{i}" for i in range(1, n_views)])
    return SimpleNamespace(parent_ids=np.repeat([f"{prefix}{i}" for i in range(n_parents)], n_views),
                           view_names=np.tile(names, n_parents), sizes=rng.integers(10, 300, (m, 2)))


def _brute(qv, rv, qr, rr, s, cfg):
    groups = {}
    for a, b, x in zip(qr, rr, s):
        if min(qv.sizes[a]) < cfg.min_query_side or min(rv.sizes[b]) < cfg.min_reference_side:
            continue
        if qv.view_names[a] not in cfg.offset_exempt:
            x += cfg.offset
        groups.setdefault((qv.parent_ids[a], rv.parent_ids[b]), []).append((x, a, b))
    out = {}
    for key, g in groups.items():
        best = max(g, key=lambda t: (t[0], -t[1], -t[2]))
        val = best[0] if cfg.reduce == "max" else sum(t[0] for t in g) / len(g)
        out[key] = (val, best[1], best[2], len(g))
    return out


@pytest.mark.parametrize("cfg", [AggregateConfig(), AggregateConfig(reduce="mean"),
                                 AggregateConfig(min_query_side=100, min_reference_side=50, offset=-0.05)])
def test_aggregate_equals_a_brute_force_loop(cfg):
    rng = np.random.default_rng(3)
    qv, rv = _viewset(rng, 7, 9, "Q"), _viewset(rng, 5, 19, "R")
    p = 800
    qr, rr = rng.integers(0, 63, p), rng.integers(0, 95, p)
    s = np.round(rng.normal(size=p), 1)  # many ties
    got = aggregate(qv, rv, qr, rr, s, cfg)
    want = _brute(qv, rv, qr, rr, s, cfg)
    assert len(got) == len(want)
    for i in range(len(got)):
        val, a, b, n = want[(got.query_ids[i], got.reference_ids[i])]
        assert np.isclose(got.scores[i], val) and (got.q_row[i], got.r_row[i], got.n_pairs[i]) == (a, b, n)
        assert got.q_view[i] == qv.view_names[a] and got.r_view[i] == rv.view_names[b]
    assert (np.diff(got.scores) <= 1e-12).all()
    assert len(got.to_predictions().scores) == len(got)


def test_vote_keeps_pairs_that_k_lists_agree_on():
    rng = np.random.default_rng(4)
    lists = [(rng.integers(0, 6, 40), rng.integers(0, 8, 40), rng.normal(size=40)) for _ in range(3)]
    for k in (1, 2, 3):
        v = vote(lists, k)
        want = {}
        for j, (q, r, s) in enumerate(lists):
            for a, b, x in zip(q, r, s):
                want.setdefault((a, b), {})
                want[(a, b)][j] = max(x, want[(a, b)].get(j, -np.inf))
        want = {key: d for key, d in want.items() if len(d) >= k}
        assert sorted(zip(v.q, v.r)) == list(zip(v.q, v.r)) == sorted(want)
        for i, key in enumerate(zip(v.q, v.r)):
            row = [want[key].get(j, np.nan) for j in range(3)]
            np.testing.assert_array_equal(v.scores[i], row)
            assert v.n_agree[i] == len(want[key])
    with pytest.raises(ViewError, match="k must be"):
        vote(lists, 4)
