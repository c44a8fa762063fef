"""Local features: models and preprocessing, the local-feature store (round trip, resumption,
refusal, failures), ratio-test matching against brute force, RANSAC, and the ``sift`` matcher."""

import json

import numpy as np
import pytest
from PIL import Image

from imsim_lab.errors import ImsimError
from imsim_lab.features import ExtractConfig
from imsim_lab.features import localmatch
from imsim_lab.features.dataset import ImageSource
from imsim_lab.features.local import LOCAL_MODELS, SiftModel, canonical_order, create_local_model
from imsim_lab.features.localmatch import ransac_inliers, ratio_matches, verify_pairs
from imsim_lab.features.localstore import extract_local, load_local
from imsim_lab.methods import CandidatePairs, MatchContext, create_matcher
from imsim_lab.methods.sift import rank_tie_break

ONE = ExtractConfig(batch_size=2, num_workers=0, shard_size=3, streams=1)


def blobs(rng, h, w):
    """A textured image with SIFT keypoints: smooth noise upsampled."""
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8)), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC).convert("RGB")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8 textured JPEGs of several sizes, one flat grey image (no keypoints) at position 4."""
    d = tmp_path_factory.mktemp("local")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(9):
        im = Image.new("RGB", (90, 70), (128, 128, 128)) if i == 4 else blobs(rng, 60 + 10 * i, 80 + 5 * i)
        p = d / f"R{i:06d}.jpg"
        im.save(p, quality=95)
        paths.append(p)
    return paths, [p.stem for p in paths]


def direct(model, paths):
    return [model.detect(model.preprocess(Image.open(p))) for p in paths]


def assert_same(fs, feats):
    assert list(fs.counts) == [len(f) for f in feats]
    for i, f in enumerate(feats):
        g = fs.features(i)
        np.testing.assert_array_equal(g.geometry, f.geometry)
        np.testing.assert_array_equal(g.descriptors, f.descriptors)
        assert g.shape == f.shape


def test_preprocess_downscales_the_short_side_only():
    pre = create_local_model("sift").preprocess
    assert pre.output_size(640, 480) == (400, 300) and pre.output_size(200, 120) == (200, 120)
    a = pre(Image.new("RGB", (480, 640), (10, 200, 30)))
    assert a.dtype == np.uint8 and a.shape == (400, 300)
    assert create_local_model("sift", short_side=None).preprocess.output_size(640, 480) == (640, 480)
    assert set(LOCAL_MODELS.names()) >= {"sift", "rootsift"}
    with pytest.raises(TypeError, match="no setting 'octaves'"):
        create_local_model("sift", octaves=4)


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_store_round_trip(images, tmp_path, dtype):
    paths, ids = images
    model = create_local_model("rootsift", dtype=dtype)
    seen = []
    fs = extract_local(model, paths, ids, tmp_path, "reference", ONE, progress=seen.append)
    assert sum(seen) == len(ids) and list(fs.ids) == ids and fs.failed == []
    assert fs.descriptors.dtype == np.dtype(dtype) and isinstance(fs.descriptors, np.memmap)
    assert fs.counts[4] == 0 and len(set(fs.counts.tolist())) > 3  # flat image: an empty row
    assert fs.meta["counts"]["without_keypoints"] == 1
    assert_same(fs, direct(model, paths))
    assert not (tmp_path / "shards").exists()
    again = extract_local(model, paths, ids, tmp_path, "reference", ONE)  # finished: loaded, same
    np.testing.assert_array_equal(again.descriptors, fs.descriptors)


def test_cpu_streams_equal_single_thread(images, tmp_path):
    paths, ids = images
    model = create_local_model("sift", max_keypoints=50)
    one = extract_local(model, paths, ids, tmp_path / "a", "q", ONE)
    two = extract_local(model, paths, ids, tmp_path / "b", "q", ExtractConfig(batch_size=2, shard_size=3, streams=2))
    assert one.counts.max() == 50
    for a in ("offsets", "geometry", "descriptors", "shapes"):
        np.testing.assert_array_equal(getattr(one, a), getattr(two, a))


class Dies(SiftModel):
    """SIFT that is killed at its ``limit``-th batch; counts the images it was given."""

    def __init__(self, config, limit=None):
        super().__init__(config)
        self.limit, self.calls, self.images = limit, 0, 0

    def embed(self, batch):
        self.calls += 1
        if self.limit is not None and self.calls >= self.limit:
            raise KeyboardInterrupt("killed")
        self.images += len(batch)
        return super().embed(batch)


def test_resumes_after_a_kill_without_recomputing_shards(images, tmp_path):
    paths, ids = images
    cfg = create_local_model("sift").config
    with pytest.raises(KeyboardInterrupt):
        extract_local(Dies(cfg, limit=3), paths, ids, tmp_path, "query", ONE)  # batches 0, 1 = shard 0 done
    shards = sorted((tmp_path / "shards" / "query_local").glob("*.npz"))
    assert [p.name for p in shards] == ["00000.npz"]
    assert not (tmp_path / "query_local.json").exists()
    again = Dies(cfg)
    seen = []
    fs = extract_local(again, paths, ids, tmp_path, "query", ONE, progress=seen.append)
    assert again.images == len(ids) - 3 and seen[0] == 3  # shard 0 (3 images) was not recomputed
    assert_same(fs, direct(again, paths))


def test_another_configuration_or_other_images_are_refused(images, tmp_path):
    paths, ids = images
    extract_local(create_local_model("sift"), paths, ids, tmp_path, "reference", ONE)
    with pytest.raises(ImsimError, match=f"{tmp_path}.*model") as e:
        extract_local(create_local_model("rootsift"), paths, ids, tmp_path, "reference", ONE)
    assert "\n" not in str(e.value)
    with pytest.raises(ImsimError, match="ids"):
        extract_local(create_local_model("sift"), paths[:-1], ids[:-1], tmp_path, "reference", ONE)
    with pytest.raises(ImsimError, match="key"):
        extract_local(create_local_model("sift"), paths, ids, tmp_path, "reference", ONE, key="other images")
    # unfinished shards of another configuration
    with pytest.raises(KeyboardInterrupt):
        extract_local(Dies(create_local_model("sift").config, limit=3), paths, ids, tmp_path, "other", ONE)
    with pytest.raises(ImsimError, match="shards"):
        extract_local(create_local_model("sift", max_keypoints=10), paths, ids, tmp_path, "other", ONE)


def test_unreadable_image_listed_by_id(images, tmp_path):
    paths, ids = images
    bad = tmp_path / "R999999.jpg"
    bad.write_bytes(b"not a jpeg")
    model = create_local_model("sift")
    fs = extract_local(model, [*paths[:3], bad], [*ids[:3], "R999999"], tmp_path / "f", "reference", ONE)
    assert list(fs.ids) == ids[:3] and [f["id"] for f in fs.failed] == ["R999999"]
    assert fs.failed[0]["path"] == str(bad) and fs.failed[0]["error"]
    saved = json.loads((tmp_path / "f" / "reference_local_failed.json").read_text())
    assert saved == load_local(tmp_path / "f", "reference").failed == fs.failed
    assert list(fs.positions(["R999999", ids[1]])) == [-1, 1]


def test_rootsift_equals_numpy_from_scratch(images):
    import cv2

    img = create_local_model("sift").preprocess(Image.open(images[0][0]))
    kps, raw = cv2.SIFT_create().detectAndCompute(img, None)
    geometry = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float32)
    order = canonical_order(geometry, np.array([k.response for k in kps], np.float32))
    d = np.abs(raw[order].astype(np.float64))
    expected = np.round(255 * np.sqrt(d / d.sum(axis=1, keepdims=True)))  # imgFp's quantisation
    f = create_local_model("rootsift").detect(img)
    np.testing.assert_array_equal(f.geometry, geometry[order])
    np.testing.assert_array_equal(f.descriptors, expected.astype(np.uint8))
    h = create_local_model("rootsift", dtype="float16").detect(img)
    np.testing.assert_allclose(h.descriptors.astype(np.float64), 255 * np.sqrt(d / d.sum(1, keepdims=True)),
                               rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(np.linalg.norm(h.descriptors.astype(np.float64), axis=1), 255, rtol=2e-3)


def brute_force(dq, db, ratio):
    d = np.sqrt(((dq[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1))
    s = np.sort(d, axis=1)
    ok = s[:, 0] < ratio * s[:, 1]
    return np.flatnonzero(ok), d.argmin(1)[ok]


class Flat:
    """Minimal feature set over a list of descriptor arrays (random geometry)."""

    def __init__(self, descs, rng):
        self.f = [(rng.random((len(d), 4), dtype=np.float32) * 100, d) for d in descs]

    def features(self, i):
        from imsim_lab.features.local import LocalFeatures

        return LocalFeatures(*self.f[i])


def test_ratio_test_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (40, 128))
    dq = np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
    db = np.concatenate([base, rng.integers(0, 256, (60, 128))]).astype(np.uint8)
    iq, ib = ratio_matches(dq, db, 0.8)
    eq, eb = brute_force(dq, db, 0.8)
    np.testing.assert_array_equal(iq, eq)
    np.testing.assert_array_equal(ib, eb)
    assert 10 < len(iq) <= 40
    # many pairs at once, with tiny blocks, an empty query, a 1-keypoint reference, a missing image
    qs = [rng.integers(0, 256, (n, 128)).astype(np.uint8) for n in (30, 0, 12)]
    bs = [rng.integers(0, 256, (n, 128)).astype(np.uint8) for n in (25, 1, 40, 7)]
    bs[2][:12] = np.clip(qs[2].astype(int) + 5, 0, 255)
    qpos = np.array([0, 0, 0, 1, 2, 2, 2, 0, -1, 2])
    bpos = np.array([0, 1, 2, 0, 2, 3, 0, 3, 0, -1])
    monkeypatch.setattr(localmatch, "BLOCK", 64)
    v = verify_pairs(Flat(qs, rng), Flat(bs, rng), qpos, bpos, ratio=0.7)
    want = [len(brute_force(qs[q], bs[b], 0.7)[0]) if q >= 0 and b >= 0 and len(qs[q]) and len(bs[b]) >= 2 else 0
            for q, b in zip(qpos, bpos)]
    assert v.n_matches.tolist() == want and want[4] >= 12
    assert v.scored.tolist() == [True] * 8 + [False, False] and v.pairs_per_second > 0


def test_ransac_counts_the_consistent_matches():
    rng = np.random.default_rng(2)
    xy = rng.random((60, 2)).astype(np.float32) * 200
    hom = np.array([[0.9, 0.1, 12], [-0.05, 1.1, -7], [1e-4, 0, 1]])
    p = np.c_[xy, np.ones(60)] @ hom.T
    moved = (p[:, :2] / p[:, 2:]).astype(np.float32)
    moved[40:] = rng.random((20, 2)).astype(np.float32) * 200  # 20 outliers
    assert 38 <= ransac_inliers(xy, moved) <= 42
    assert ransac_inliers(xy[:3], moved[:3]) == 0


def test_rank_tie_break():
    t = rank_tie_break(np.array([-3.0, 5.0, -3.0, 0.0]))
    assert t.tolist() == [0.0, 0.5 * 3 / 4, 0.0, 0.5 * 2 / 4]
    assert (t >= 0).all() and (t < 0.5).all()


@pytest.fixture(scope="module")
def tiny(tiny_bench):
    from imsim_lab.data.benchmark import load_benchmark

    b = load_benchmark(tiny_bench)
    qs = ImageSource.files(b.query_ids, [b.image_path(i) for i in b.query_ids], "tiny/query")
    rs = ImageSource.files(b.reference_ids, [b.image_path(i) for i in b.reference_ids], "tiny/reference")
    return b, qs, rs


def test_matcher_prefers_the_true_reference(tiny, tmp_path):
    b, qs, rs = tiny
    rng = np.random.default_rng(0)
    gt = {q: r for q, r in zip(b.gt.query_ids, b.gt.reference_ids) if r}
    q, r = [], []
    for qid, true in gt.items():
        others = [x for x in b.reference_ids if x != true]
        q += [qid, qid]
        r += [true, str(rng.choice(others))]
    pairs = CandidatePairs(np.array(q), np.array(r), rng.random(len(q)), np.tile([0, 1], len(gt)))
    m = create_matcher("sift", {"features": "rootsift", "ratio": 0.8, "ransac": True, "tie_break": True,
                                "candidates.k": 10})
    res = m.score(pairs, MatchContext(qs, rs, tmp_path))
    n = res.extras["n_matches"].reshape(-1, 2)
    assert len(gt) >= 8 and (n[:, 0] > n[:, 1]).mean() >= 0.75
    assert (res.extras["n_inliers"] <= res.extras["n_matches"]).all()
    frac = res.scores - res.extras["n_inliers"]
    assert ((frac >= 0) & (frac < 0.5)).all()
    rep = res.report
    assert rep["pairs"] == len(q) and rep["pairs_per_second"] > 0 and set(rep["seconds"]) == {
        "extract_query", "extract_reference", "verify"}
    assert (tmp_path / "query" / "query_local.json").exists() and (tmp_path / "reference" / "reference_local.json").exists()
    # the cache belongs to these images: another set of queries is refused, not mixed
    with pytest.raises(ImsimError, match="local"):
        m.score(CandidatePairs(np.array(q[:2]), np.array(r[:2]), np.ones(2), np.zeros(2)),
                MatchContext(qs, rs, tmp_path))


def test_matcher_scores_no_keypoints_and_unreadable_as_no_match(tiny, tmp_path):
    b, _, rs = tiny

    class Edited:
        """Queries made on the fly: a flat grey image, a copy of a reference, a broken one."""

        def __init__(self, pos, pre):
            self.pos, self.pre = pos, pre

        def __len__(self):
            return len(self.pos)

        def __getitem__(self, i):
            k = self.pos[i]
            if k == 2:
                return i, None, "OSError: broken"
            img = Image.new("RGB", (120, 90), (90, 90, 90)) if k == 0 else Image.open(b.image_path(rs.ids[0]))
            return i, self.pre(img), None

    qs = ImageSource(["Qflat", "Qcopy", "Qbad"], Edited, "edited")
    r0, r1 = rs.ids[0], rs.ids[1]
    pairs = CandidatePairs(np.array(["Qflat", "Qcopy", "Qcopy", "Qbad"]), np.array([r0, r0, r1, r0]),
                           np.array([9.0, 1.0, 2.0, 8.0]), np.array([0, 0, 1, 0]))
    res = create_matcher("sift", {}).score(pairs, MatchContext(qs, rs, tmp_path))
    assert res.scores[0] == 0.0 and res.scores[3] == 0.0 and res.scores[1] > res.scores[2] > 0
    assert res.extras["query_keypoints"][0] == 0 and res.extras["query_keypoints"][3] == -1
    assert res.report["without_keypoints"]["query"] == 1 and res.report["failed"]["query"] == ["Qbad"]
    assert res.report["pairs_unverified"] == 2
