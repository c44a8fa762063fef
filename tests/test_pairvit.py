"""SeungKee Jeon's pair ViT: merged crop candidates, the pair classifier (layout, refusals, training on the
shared trainer), the ``pairvit`` matcher against a brute-force scoring, and the ``train pairvit`` recipe."""

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imsim_lab.errors import ImsimError
from imsim_lab.features.dataset import ImageSource
from imsim_lab.features.pair_candidates import (SIZES, CandidateError, CandidateSizes, ViewNeighbours,
                                                merge_candidates, view_neighbours)
from imsim_lab.features.views import VIEWS, apply_view
from imsim_lab.methods import MATCHERS, CandidatePairs, MatchContext, create_matcher, get_method
from imsim_lab.methods.pairvit import UNSCORED, best_only_scores, top_per_query
from imsim_lab.train.pairvit import (PairBCE, PairGroups, PairTrainConfig, PairViT, PairViTConfig, PairViTError,
                                     hard_negative_groups, load_pairvit, pair_half, pair_tensor, random_groups,
                                     train_pairvit)
from imsim_lab.train.trainer import TrainConfig

TINY = dict(backbone="vit_tiny_patch16_224", height=32, width=16, depth=1, embed_dim=32, num_heads=2)


def tiny_config(**kw) -> PairViTConfig:
    return PairViTConfig(**{**TINY, **kw})


def save_weights(path: Path, seed: int = 0, **kw) -> Path:
    torch.manual_seed(seed)
    torch.save(PairViT(tiny_config(**kw)).state_dict(), path)
    return path


# --- candidates -----------------------------------------------------------------------------------

def random_lists(rng, nq=4, nr=7):
    qids, rids = [f"Q{i:05d}" for i in range(nq)], [f"R{i:06d}" for i in range(nr)]
    lists = []
    for name, views, k in (("whole", ["whole"], 5), ("strips", ["vstrip0", "hstrip1"], 3),
                           ("half_grid", ["hg3_0_0"], 2)):
        q = np.repeat(qids, len(views))
        v = np.tile(views, nq)
        r = np.array([[rids[j] for j in rng.choice(nr, k, replace=False)] for _ in q])
        s = np.sort(rng.integers(0, 6, (len(q), k)).astype(float), 1)[:, ::-1]  # integer scores: ties
        r[0, -1] = ""  # a missing neighbour
        lists.append(ViewNeighbours(name, q, v, r, s))
    return qids, rids, lists


def brute_merge(lists, sizes):
    best = {}
    for li, nb in enumerate(lists):
        k = sizes.get(nb.name, nb.reference_ids.shape[1])
        for row in range(len(nb.query_ids)):
            for c in range(min(k, nb.reference_ids.shape[1])):
                r = nb.reference_ids[row, c]
                if r == "":
                    continue
                key = (nb.query_ids[row], r)
                cand = (-nb.scores[row, c], li, row, nb.name, nb.view_names[row])
                old = best.get(key)
                best[key] = (min(old[0], cand), old[1] | {li}) if old else (cand, {li})
    return best


def test_merged_candidates_agree_with_a_brute_force_merge():
    rng = np.random.default_rng(0)
    for trial in range(5):
        qids, rids, lists = random_lists(rng)
        sizes = {"whole": 4, "strips": 2}
        m = merge_candidates(lists, sizes, qids, rids)
        want = brute_merge(lists, sizes)
        assert len(m) == len(want) and len(set(zip(m.query_ids, m.reference_ids))) == len(m)
        for q, r, s, li, v, n in zip(m.query_ids, m.reference_ids, m.scores, m.lists, m.views, m.n_lists):
            (neg, _, _, name, view), used = want[(q, r)]
            assert (s, li, v, n) == (-neg, name, view, len(used))
        for q in qids:  # sorted by decreasing score inside a query, ranks 0..
            mine = m.query_ids == q
            assert np.all(np.diff(m.scores[mine]) <= 0) and list(m.ranks[mine]) == list(range(mine.sum()))
    p = m.pairs()
    assert isinstance(p, CandidatePairs) and len(p) == len(m)


def test_candidate_lists_naming_unknown_images_are_refused_with_the_first_id():
    qids, rids, lists = random_lists(np.random.default_rng(1))
    lists[0] = ViewNeighbours("whole", lists[0].query_ids, lists[0].view_names,
                              np.where(lists[0].reference_ids == "R000003", "R000006", lists[0].reference_ids),
                              lists[0].scores)
    first = next(r for r in lists[1].reference_ids.ravel() if r in ("R000003", "R000009"))
    lists[1].reference_ids[lists[1].reference_ids == first] = "R000009" if first == "R000003" else first
    with pytest.raises(CandidateError, match="'strips' names an unknown reference 'R000009'"):
        merge_candidates(lists, None, qids, rids)
    with pytest.raises(CandidateError, match="unknown query 'Q00000'"):
        merge_candidates(lists, None, qids[1:], rids)
    with pytest.raises(CandidateError, match="integer >= 0"):
        CandidateSizes(whole=-1)
    with pytest.raises(CandidateError, match="disagree"):
        ViewNeighbours("whole", np.array(["Q1"]), np.array(["whole"]), np.array([["R1"]]), np.zeros((1, 2)))
    assert SIZES["full"] == CandidateSizes(100, 20, 10, 5, 10) and SIZES["cpu"].whole < 100


def test_view_neighbours_against_reference_crops_keep_distinct_parents():
    rng = np.random.default_rng(2)
    xq = rng.normal(size=(3, 8)).astype(np.float32)
    xb = rng.normal(size=(12, 8)).astype(np.float32)
    parents = np.repeat([f"R{i}" for i in range(4)], 3)  # 3 crops per reference
    nb = view_neighbours("reference_crops", ["Q0", "Q1", "Q2"], ["whole"] * 3, xq, parents, xb, k=2, backend="numpy")
    sim = xq @ xb.T
    for i in range(3):
        best = {p: sim[i, parents == p].max() for p in np.unique(parents)}
        want = sorted(best, key=lambda p: -best[p])[:2]
        assert list(nb.reference_ids[i]) == want
        assert np.allclose(nb.scores[i], [best[p] for p in want], atol=1e-5)


def test_hard_negative_groups_start_with_the_image_then_its_nearest():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = hard_negative_groups(x, 3, backend="numpy")
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    assert (g[:, 0] == np.arange(6)).all() and (g[:, 1:] == np.argsort(-sim, 1)[:, :2]).all()
    r = random_groups(6, 4)
    assert (r[:, 0] == np.arange(6)).all() and all(len(set(row)) == 4 for row in r)
    with pytest.raises(PairViTError, match="not in 1..6"):
        hard_negative_groups(x, 7)


def test_top_per_query_and_best_only_against_brute_force():
    rng = np.random.default_rng(4)
    q = rng.integers(0, 3, 20)
    s = rng.integers(0, 5, 20).astype(float)
    valid = rng.random(20) > 0.2
    keep, ranks = top_per_query(q, s, 2, valid)
    for i in range(20):
        mates = [j for j in range(20) if q[j] == q[i]]
        order = sorted(mates, key=lambda j: (not valid[j], -s[j] if valid[j] else 0, j))
        assert ranks[i] == order.index(i) and keep[i] == (valid[i] and order.index(i) < 2)
    b = best_only_scores(q, s)
    for qq in np.unique(q):
        mine = np.flatnonzero(q == qq)
        top = mine[np.argmax(s[mine])]
        assert b[top] == s[top] and np.allclose(b[mine[mine != top]], s[mine[mine != top]] - 1)


# --- the classifier ---------------------------------------------------------------------------------

def test_pair_input_is_reference_left_query_right_normalised():
    cfg = tiny_config()
    a = Image.fromarray(np.full((40, 30, 3), (200, 10, 10), np.uint8))
    b = Image.fromarray(np.full((20, 50, 3), (10, 10, 200), np.uint8))
    ha, hb = pair_half(a, cfg), pair_half(b, cfg)
    assert ha.shape == (32, 16, 3) and (ha[..., 0] == ha[..., 2]).all()  # grayscale in 3 channels
    x = pair_tensor(torch.from_numpy(ha)[None], torch.from_numpy(hb)[None], cfg)
    assert x.shape == (1, 3, 32, 32)
    want = (ha[0, 0, 0] / 255 - cfg.mean[0]) / cfg.std[0]
    assert torch.allclose(x[0, 0, :, :16], torch.tensor(want, dtype=torch.float32), atol=1e-5)
    assert not torch.allclose(x[0, 0, :, 16:], x[0, 0, :, :16])
    colour = pair_half(a, tiny_config(gray=False))
    assert tuple(colour[0, 0]) == (200, 10, 10)


def test_pair_input_from_channels_first_halves_is_the_same_tensor():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 256, (3, 32, 16, 3), generator=g, dtype=torch.uint8)
    q = torch.randint(0, 256, (3, 32, 16, 3), generator=g, dtype=torch.uint8)
    cfg = tiny_config()
    a = pair_tensor(r, q, cfg)
    b = pair_tensor(r.permute(0, 3, 1, 2).contiguous(), q.permute(0, 3, 1, 2).contiguous(), cfg, channels_first=True)
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    want = (torch.cat([r, q], 2).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert a.is_contiguous() and torch.equal(a, b) and torch.allclose(a, want, atol=1e-5)


def test_pixel_input_folds_the_normalisation_into_the_patch_embedding():
    from imsim_lab.train.pairvit import PairViT, pixel_input

    torch.manual_seed(0)
    cfg = tiny_config()
    net = PairViT(cfg).eval()
    raw = pixel_input(net)
    g = torch.Generator().manual_seed(1)
    r = torch.randint(0, 256, (5, 3, cfg.height, cfg.width), dtype=torch.uint8, generator=g)
    q = torch.randint(0, 256, (5, 3, cfg.height, cfg.width), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        want = net(pair_tensor(r, q, cfg, channels_first=True))
        x = pair_tensor(r, q, cfg, channels_first=True, normalise=False)
        assert x.min() >= 0 and x.max() <= 255 and x.max() > 1  # pixel values, not normalised
        got = raw(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(net(x), want, atol=1e-2)  # the original network on raw pixels differs
    assert net.backbone.patch_embed.proj.weight.data_ptr() != raw.backbone.patch_embed.proj.weight.data_ptr()


def test_patch_size_override_changes_the_token_grid_and_is_refused_across(tmp_path):
    net = PairViT(tiny_config(patch_size=8))
    assert tuple(net.backbone.patch_embed.grid_size) == (4, 4)
    w = tmp_path / "p8.pt"
    torch.save(net.state_dict(), w)
    with pytest.raises(PairViTError, match="p8.pt: does not fit"):
        load_pairvit(w, tiny_config())
    assert load_pairvit(w, tiny_config(patch_size=8))(torch.zeros(1, 3, 32, 32)).shape == (1, 1)


def test_weights_of_another_layout_or_shape_are_refused_naming_the_file(tmp_path):
    w = save_weights(tmp_path / "w.pt")
    net = load_pairvit(w, tiny_config())
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 1)
    for kw, msg in (({"gray": False}, "trained on 32x16 grayscale halves, the method asks 32x16 colour"),
                    ({"height": 48}, "trained on 32x16 grayscale halves, the method asks 48x16 grayscale"),
                    ({"embed_dim": 64}, "tensor backbone.cls_token is (1, 1, 32), the model's (1, 1, 64)"),
                    ({"depth": 2}, "tensors missing, e.g. backbone.blocks.1")):
        with pytest.raises(PairViTError) as e:
            load_pairvit(w, tiny_config(**kw))
        assert str(e.value).startswith(f"{w}: ") and msg in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(PairViTError, match="junk.pt: not a readable weights file"):
        load_pairvit(tmp_path / "junk.pt", tiny_config())
    with pytest.raises(PairViTError, match="not found"):
        load_pairvit(tmp_path / "none.pt", tiny_config())


def texture(seed, size=(48, 40)):
    g = np.random.default_rng(seed)
    small = g.integers(0, 255, (5, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def memory_source(images: dict, key: str, broken=()):
    ids = sorted(images)

    class DS:
        def __init__(self, pos, pre):
            self.pos, self.pre = pos, pre

        def __len__(self):
            return len(self.pos)

        def __getitem__(self, i):
            name = ids[self.pos[i]]
            if name in broken:
                return i, None, "OSError: broken"
            return i, self.pre(images[name]), None

    return ImageSource(ids, lambda pos, pre: DS(pos, pre), key)


def brute_scores(nets, cfg, qimg, rimg, views):
    """Per model and view, sigmoid of the classifier on [reference | query view]: (models, views)."""
    r = torch.from_numpy(pair_half(rimg, cfg))[None].expand(len(views), -1, -1, -1)
    q = torch.from_numpy(np.stack([pair_half(apply_view(qimg, v), cfg) for v in views]))
    with torch.no_grad():
        return np.stack([torch.sigmoid(net(pair_tensor(r, q, cfg))).reshape(-1).numpy() for net in nets])


@pytest.fixture
def scene(tmp_path):
    queries = {f"Q{i:05d}": texture(i) for i in range(3)}
    refs = {f"R{i:06d}": texture(100 + i, (36, 52)) for i in range(5)}
    qs, rs = memory_source(queries, "q", broken={"Q00002"}), memory_source(refs, "r")
    pq = ["Q00000"] * 4 + ["Q00001"] * 3 + ["Q00002"] * 2
    pr = ["R000000", "R000001", "R000002", "R000003", "R000001", "R000003", "R000004", "R000000", "R000001"]
    pairs = CandidatePairs(np.array(pq), np.array(pr), np.linspace(1, 0, 9), np.array([0, 1, 2, 3, 0, 1, 2, 0, 1]))
    ctx = MatchContext(qs, rs, tmp_path / "work", device="cpu")
    w = [save_weights(tmp_path / "a.pt", 0), save_weights(tmp_path / "b.pt", 1)]
    return SimpleNamespace(queries=queries, refs=refs, pairs=pairs, ctx=ctx, weights=w)


def test_the_matcher_agrees_with_a_brute_force_scoring(scene):
    params = {**TINY, "weights_path": ",".join(map(str, scene.weights)), "top": 2, "best_only": False,
              "batch_size": 7, "query_chunk": 1}
    m = create_matcher("pairvit", params)
    res = m.score(scene.pairs, scene.ctx)
    cfg = tiny_config()
    nets = [load_pairvit(p, cfg) for p in scene.weights]
    views = VIEWS.get("pairvit_query")((1, 1))
    first_idx = [0, 2, 3, 4]  # whole, left, right, vcenter
    want_first, want_final = {}, {}
    for k, (q, r) in enumerate(zip(scene.pairs.query_ids, scene.pairs.reference_ids)):
        if q == "Q00002":
            continue
        s = brute_scores(nets, cfg, scene.queries[q], scene.refs[r], views)
        want_first[k] = s[:, first_idx].mean(0).max()
        want_final[k] = s.max(1).mean()
    assert np.allclose([res.extras["first_score"][k] for k in want_first], list(want_first.values()), atol=1e-5)
    for q in ("Q00000", "Q00001"):
        ks = [k for k in want_first if scene.pairs.query_ids[k] == q]
        top = sorted(ks, key=lambda k: -want_first[k])[:2]
        for k in ks:
            assert res.extras["rescored"][k] == (k in top)
            want = want_final[k] if k in top else want_first[k]
            assert res.scores[k] == pytest.approx(want, abs=1e-5)
            assert res.extras["first_rank"][k] == sorted(ks, key=lambda j: -want_first[j]).index(k)
        for k in top:  # the re-scoring views include the first ones: never below the first score
            assert res.scores[k] >= res.extras["first_score"][k] - 1e-6
            assert res.extras["best_view"][k] in [v.name for v in views]
            assert np.isfinite(res.extras["view_rot90"][k])
    # the unreadable query: lowest score, counted, never an exception
    assert np.all(res.scores[7:] == UNSCORED) and res.report["pairs_unscored"] == 2
    assert res.report["failed"]["query"] == ["Q00002"] and res.report["models"] == 2
    assert res.report["images_decoded"] == {"query": 3, "reference": 4 + 3 + 2}  # one chunk per query
    assert res.report["pairs_per_second"] > 0 and res.report["pairs_rescored"] == 4


def test_the_matcher_loads_its_classifiers_once_per_device(scene, monkeypatch):
    import imsim_lab.train.pairvit as tp

    calls = []
    orig = tp.load_pairvit
    monkeypatch.setattr(tp, "load_pairvit", lambda path, *a, **k: calls.append(str(path)) or orig(path, *a, **k))
    m = create_matcher("pairvit", {**TINY, "weights_path": ",".join(map(str, scene.weights)), "top": 2})
    a, b = m.score(scene.pairs, scene.ctx), m.score(scene.pairs, scene.ctx)
    assert calls == [str(w) for w in scene.weights] and np.array_equal(a.scores, b.scores)


def test_prefetching_the_next_chunk_changes_nothing_but_the_overlap(scene, monkeypatch):
    params = {**TINY, "weights_path": ",".join(map(str, scene.weights)), "top": 2, "query_chunk": 1}
    off = create_matcher("pairvit", {**params, "prefetch": "off"}).score(scene.pairs, scene.ctx)
    on = create_matcher("pairvit", {**params, "prefetch": "on"}).score(scene.pairs, scene.ctx)
    auto = create_matcher("pairvit", params).score(scene.pairs, scene.ctx)  # a CPU: no prefetch
    assert (off.report["prefetch"], on.report["prefetch"], auto.report["prefetch"]) == (False, True, False)
    assert np.array_equal(off.scores, on.scores) and np.array_equal(off.scores, auto.scores)
    for k in off.extras:
        assert np.array_equal(off.extras[k], on.extras[k], equal_nan=off.extras[k].dtype.kind == "f"), k
    for k in ("failed", "images_decoded", "classifier_pairs", "pairs_unscored"):
        assert on.report[k] == off.report[k], k
    assert on.report["failed"]["query"] == ["Q00002"]
    # an error while the next chunk is decoded reaches the caller, and no decoding thread is left
    m = create_matcher("pairvit", {**params, "prefetch": "on"})
    real = m._load_chunk

    def fails_on_the_last(ctx, cq, cr):
        if cq[0] == "Q00002":
            raise OSError("disk gone")
        return real(ctx, cq, cr)

    monkeypatch.setattr(m, "_load_chunk", fails_on_the_last)
    with pytest.raises(OSError, match="disk gone"):
        m.score(scene.pairs, scene.ctx)
    assert not [t for t in threading.enumerate() if t.name.startswith("imsim-pairvit")]
    with pytest.raises(ImsimError, match="prefetch must be one of auto, on, off, not 'yes'"):
        create_matcher("pairvit", {**params, "prefetch": "yes"})


def test_the_matcher_refuses_unknown_images_and_bad_weights(scene, tmp_path):
    params = {**TINY, "weights_path": str(scene.weights[0])}
    bad = CandidatePairs(np.array(["Q00000", "Q00009"]), np.array(["R000000", "R000000"]), np.zeros(2),
                         np.zeros(2, np.int64))
    with pytest.raises(ImsimError, match="unknown query 'Q00009'"):
        create_matcher("pairvit", params).score(bad, scene.ctx)
    bad = CandidatePairs(np.array(["Q00000"]), np.array(["R000077"]), np.zeros(1), np.zeros(1, np.int64))
    with pytest.raises(ImsimError, match="unknown reference 'R000077'"):
        create_matcher("pairvit", params).score(bad, scene.ctx)
    with pytest.raises(PairViTError, match="a.pt: trained on 32x16 grayscale halves, the method asks 32x16 colour"):
        create_matcher("pairvit", {**params, "gray": False}).score(scene.pairs, scene.ctx)
    with pytest.raises(ImsimError, match="give the classifier's weights"):
        create_matcher("pairvit", {**TINY}).score(scene.pairs, scene.ctx)
    with pytest.raises(ImsimError, match="first view 'middle' is not a view"):
        create_matcher("pairvit", {**params, "first_views": ["middle"]})
    spec = get_method("pairvit")
    assert spec.track == "matching" and "pairvit" in MATCHERS
    _, p = spec.resolve({"weights_path": "x.pt", "height": 64})
    assert p["weights_path"] == "x.pt" and p["top"] == 100 and p["best_only"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_scoring_agrees_with_cpu(scene):
    params = {**TINY, "weights_path": str(scene.weights[0]), "top": 2, "best_only": False, "amp": "fp16",
              "query_chunk": 1}
    cpu = create_matcher("pairvit", params).score(scene.pairs, scene.ctx)
    ctx = MatchContext(scene.ctx.queries, scene.ctx.references, scene.ctx.work, device="cuda")
    gpu = create_matcher("pairvit", params).score(scene.pairs, ctx)
    assert gpu.report["device"] == "cuda" and gpu.report["prefetch"]  # auto: the next chunk decoded meanwhile
    assert np.allclose(gpu.scores, cpu.scores, atol=5e-3)


# --- training -----------------------------------------------------------------------------------------

def tiny_training(tmp_path, n=6):
    d = tmp_path / "training"
    d.mkdir(parents=True)
    ids = [f"T{i:06d}" for i in range(n)]
    for i, t in enumerate(ids):
        texture(200 + i, (40, 40)).save(d / f"{t}.jpg")
    return SimpleNamespace(root=tmp_path, training_ids=np.array(ids), image_path=lambda i: d / f"{i}.jpg")


def test_training_groups_pair_each_clean_image_with_its_group(tmp_path):
    bench = tiny_training(tmp_path)
    groups = random_groups(6, 3)
    ds = PairGroups([bench.image_path(i) for i in bench.training_ids], groups, tiny_config(), seed=0,
                    families=("crop", "blur"), ids=list(bench.training_ids))
    x, y = ds[(2, 0)]
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32 and list(y) == [1, 0, 0]
    assert np.array_equal(ds[(2, 0)][0], x) and not np.array_equal(ds[(2, 1)][0], x)  # (index, epoch) decides
    assert np.array_equal(x[0, :, :, :16], x[1, :, :, :16])  # one clean image on the left of its group
    with pytest.raises(PairViTError, match="unknown transformation family 'warp'"):
        PairGroups([bench.image_path(i) for i in bench.training_ids], groups, tiny_config(), families=("warp",))
    with pytest.raises(PairViTError, match="row i starting with i"):
        PairGroups([bench.image_path(i) for i in bench.training_ids], groups[::-1], tiny_config())
    loss = PairBCE()(torch.tensor([[0.0], [2.0]]), torch.tensor([1, 0]))
    assert float(loss) == pytest.approx((np.log(2) + np.log1p(np.exp(2))) / 2, rel=1e-5)


def test_train_pairvit_on_the_shared_trainer_gives_weights_the_matcher_loads(tmp_path):
    bench = tiny_training(tmp_path / "b")
    cfg = PairTrainConfig(model=tiny_config(), group_size=3, families=("crop", "blur", "hflip"),
                          train=TrainConfig(max_steps=2, batch_size=2, optimizer="adam", lr=1e-3, checkpoint_every=1,
                                            device="cpu"))
    res = train_pairvit(bench, tmp_path / "run", cfg)
    assert res.steps == 2 and res.weights is not None and all(np.isfinite(h["loss"]) for h in res.history)
    info = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert info["run"]["recipe"] == "pairvit" and info["run"]["groups"] == "random"
    net = load_pairvit(res.weights, tiny_config())
    assert net.input_layout.tolist() == [32, 16, 1]


def test_train_pairvit_command(tmp_path, capsys):
    from imsim_lab.cli import main
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_train=4)
    out = tmp_path / "pv"
    argv = ["train", "pairvit", "--bench", str(bench), "--out", str(out), "--profile", "cpu", "--height", "32",
            "--width", "16", "--max-steps", "1", "--batch-size", "2", "--group-size", "2", "--workers", "0",
            "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (out / "weights.pt").is_file() and "imsim-lab run pairvit" in text and "height=32" in text
    load_pairvit(out / "weights.pt", PairViTConfig("vit_tiny_patch16_224", 32, 16, depth=2))
    assert main(argv[:-2] + ["--profile", "gpu"]) == 2
    assert "--profile 'gpu': unknown" in capsys.readouterr().err
    assert main(argv + ["--groups", str(tmp_path / "nothing")]) == 2
    assert "no training.npy" in capsys.readouterr().err
    assert main(argv[:-2] + ["--out", str(tmp_path / "pv2"), "--color", "--init", str(out / "weights.pt")]) == 2
    err = capsys.readouterr().err
    assert "weights.pt: trained on 32x16 grayscale halves, the method asks 32x16 colour" in err
    assert not (tmp_path / "pv2").exists()


def test_a_pairvit_run_through_the_runner_keeps_the_per_view_columns(tmp_path):
    from imsim_lab.features import ExtractConfig
    from imsim_lab.runfolder import read_candidates
    from imsim_lab.runner import RunOptions, run_method
    from support import make_bench

    bench = make_bench(tmp_path / "bench")
    w = save_weights(tmp_path / "w.pt")
    opts = RunOptions(device="cpu", extract=ExtractConfig(batch_size=4, num_workers=0, shard_size=8))
    over = {**TINY, "weights_path": str(w), "candidates.method": "pdq", "candidates.k": 3, "top": 2}
    res = run_method("pairvit", bench, tmp_path / "run", over, opts=opts)
    rep = res.config["matcher_report"]
    assert rep["pairs"] == 8 * 3 and rep["pairs_rescored"] == 8 * 2 and rep["images_decoded"]["query"] == 8
    table = read_candidates(tmp_path / "run")
    assert {"first_score", "first_rank", "rescored", "best_view", "view_rot90", "view_hcenter"} <= set(table.columns)
    kept = table[table.score >= 0]  # best only: one pair per query keeps its classifier score, the others lose 1
    assert len(kept) == 8 and kept.query_id.is_unique
    for r in kept.itertuples():
        others = table[(table.query_id == r.query_id) & (table.reference_id != r.reference_id)]
        assert (others.score + 1 <= r.score + 1e-9).all()
    assert table[~table.rescored].view_whole.isna().all()


def test_crop_candidates_merge_the_five_lists_of_a_descriptor(tmp_path):
    from imsim_lab.features import ExtractConfig
    from imsim_lab.features.models import create_model
    from imsim_lab.features.pair_candidates import crop_candidates
    from imsim_lab.features.viewstore import load_views

    queries = memory_source({f"Q{i:05d}": texture(300 + i, (64, 48)) for i in range(3)}, "cq")
    refs = memory_source({f"R{i:06d}": texture(400 + i, (48, 64)) for i in range(6)}, "cr")
    model = create_model("pdq", device="cpu")  # +-1 bits of equal norm: inner products rank as Hamming
    sizes = CandidateSizes(3, 1, 1, 0, 2)
    m = crop_candidates(model, queries, refs, tmp_path, sizes, ExtractConfig(batch_size=8, num_workers=0),
                        backend="numpy")
    xq = np.asarray(load_views(tmp_path / "query", "identity").x)
    xb = np.asarray(load_views(tmp_path / "reference", "identity").x)
    sim = xq @ xb.T
    got = set(zip(m.query_ids, m.reference_ids))
    for i, q in enumerate(queries.ids):  # the whole query's top 3 are all candidates, at least at that score
        for j in np.argsort(-sim[i])[:3]:
            k = np.flatnonzero((m.query_ids == q) & (m.reference_ids == refs.ids[j]))
            assert len(k) == 1 and m.scores[k[0]] >= sim[i, j] - 1e-5
    assert set(m.lists) <= {"whole", "strips", "half_grid", "reference_crops"} and "third_grid" not in set(m.lists)
    assert len(got) == len(m) and len(m) <= 3 * (3 + 6 + 9 + 2)
    strip = m.lists == "strips"
    assert all(v.startswith(("vstrip", "hstrip")) for v in m.views[strip])


def test_groups_from_a_descriptor_run_follow_the_benchmark_order(tmp_path):
    from imsim_lab.train.recipes.pairvit import _groups

    rng = np.random.default_rng(5)
    want = np.array([f"T{i:06d}" for i in range(6)])
    x = rng.normal(size=(6, 4)).astype(np.float32)
    perm = rng.permutation(6)  # the run stored its rows in another order
    (tmp_path / "run" / "features").mkdir(parents=True)
    np.save(tmp_path / "run" / "features" / "training.npy", x[perm])
    np.save(tmp_path / "run" / "features" / "training_ids.npy", want[perm])
    groups, source = _groups(str(tmp_path / "run"), SimpleNamespace(training_ids=want), 3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert source == str(tmp_path / "run") and (groups == hard_negative_groups(xn, 3, backend="numpy")).all()
    with pytest.raises(ImsimError, match="not this benchmark's"):
        _groups(str(tmp_path / "run"), SimpleNamespace(training_ids=want[:5]), 3)
