"""imgFp's matchers and methods: the flip check, pair scoring, the local voting branch from the features,
visual words on the same keypoints, the merge, and the three methods run end to end on a toy benchmark."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from imsim_lab.errors import ImsimError
from imsim_lab.features import ExtractConfig
from imsim_lab.features.local import create_local_model
from imsim_lab.features.localmatch import ratio_matches
from imsim_lab.features.localstore import extract_local
from imsim_lab.features.vocabulary import train_vocabulary
from imsim_lab.methods import get_method, list_methods
from imsim_lab.methods.imgfp import IMGFP_RATIO, flip_descriptors, pair_counts, vote_pairs
from imsim_lab.methods.imgfp import vote_pairs as F_vote
from imsim_lab.runfolder import read_candidates
from imsim_lab.runner import RunOptions, run_method
from support import make_bench

FAST = RunOptions(device="cpu", extract=ExtractConfig(batch_size=4, num_workers=0, shard_size=8, streams=1))
ONE = ExtractConfig(batch_size=4, num_workers=0, shard_size=8, streams=1)


def smooth(seed, h=180, w=240):
    import cv2

    a = cv2.GaussianBlur(np.random.default_rng(seed).random((h, w)).astype(np.float32), (0, 0), 3)
    return Image.fromarray((255 * (a - a.min()) / np.ptp(a)).astype(np.uint8)).convert("RGB")


def test_flip_descriptors_match_the_mirrored_image():
    m = create_local_model("rootsift", dtype="float16")
    im = smooth(0)
    f, g = m.detect(m.preprocess(im)), m.detect(m.preprocess(ImageOps.mirror(im)))
    plain = len(ratio_matches(f.descriptors, g.descriptors, IMGFP_RATIO)[0])
    flipped = len(ratio_matches(flip_descriptors(f.descriptors), g.descriptors, IMGFP_RATIO)[0])
    assert flipped > 0.5 * len(f) and flipped > 10 * max(plain, 1)
    np.testing.assert_array_equal(flip_descriptors(flip_descriptors(f.descriptors)), f.descriptors)
    assert IMGFP_RATIO == pytest.approx(1 / 1.8 ** 0.5)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """References: 6 textures; queries: 0 mirrored, 1 cropped, 2 an unrelated texture, 3 flat grey."""
    root = tmp_path_factory.mktemp("stores")
    refs = [smooth(s) for s in range(6)]
    queries = [ImageOps.mirror(refs[0]), refs[1].crop((20, 10, 200, 160)), smooth(99),
               Image.new("RGB", (120, 90), (128, 128, 128))]
    paths = {}
    for side, ims in (("reference", refs), ("query", queries)):
        paths[side] = []
        for i, im in enumerate(ims):
            p = root / f"{side}{i}.png"
            im.save(p)
            paths[side].append(p)
    m = create_local_model("rootsift")
    fb = extract_local(m, paths["reference"], [f"R{i}" for i in range(6)], root, "reference", ONE)
    fq = extract_local(m, paths["query"], [f"Q{i}" for i in range(4)], root, "query", ONE)
    return fq, fb


def test_vote_pairs_recall_the_copies_and_skip_empty_images(stores):
    fq, fb = stores
    v = vote_pairs(fq, fb)
    got = dict(zip(v["query_ids"].tolist(), v["reference_ids"].tolist()))
    assert got.get("Q1") == "R1"  # the crop: its keypoints vote for its original
    assert "Q2" not in got and "Q3" not in got  # unrelated; no keypoints (skipped, counted)
    assert v["skipped"]["query"] == 1 and v["skipped"]["reference"] == 0
    assert all(n > 3 for n in v["votes"]) and all(d < 8000 for d in v["mean_distance"])
    for search in ("ivf", "hnsw"):
        a = vote_pairs(fq, fb, search=search, ann={"nlist": 4, "nprobe": 4})
        assert dict(zip(a["query_ids"].tolist(), a["reference_ids"].tolist())).get("Q1") == "R1"


def test_pair_counts_with_flip(stores):
    fq, fb = stores
    qpos, bpos = fq.positions(["Q0", "Q0", "Q3"]), fb.positions(["R0", "R1", "R0"])
    plain = pair_counts(fq, fb, qpos, bpos, flip=False)
    both = pair_counts(fq, fb, qpos, bpos, flip=True)
    assert both[0] > 10 * max(plain[0], 1) and both[1] < 0.1 * both[0] and both[2] == 0
    assert (both >= plain).all()


def test_vocabulary_of_another_feature_type_is_refused(stores, tmp_path):
    fq, fb = stores
    voc = train_vocabulary(np.asarray(fb.descriptors), 16, niter=5, meta=fb.meta)
    assert len(voc.assign_set(fq).words) == len(fq.descriptors)
    ids = ["R0", "R1"]
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    smooth(0).save(paths[0])
    smooth(1).save(paths[1])
    other = extract_local(create_local_model("sift"), paths, ids, tmp_path, "reference", ONE)
    with pytest.raises(ImsimError, match="vocabulary trained on 'rootsift'"):
        voc.assign_set(other)


def test_methods_registered():
    assert {"sift_vote", "bow_tfidf", "imgfp"} <= set(list_methods(track="matching"))
    p = get_method("sift_vote").params
    assert (p["min_votes"], p["single_min_votes"], p["max_mean_distance"], p["min_keypoints"]) == (3, 5, 8000.0, 10)
    assert get_method("imgfp").params["candidates.method"] == "sscd"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The toy benchmark of tests/support.py with larger images (SIFT needs more than 72 x 96 pixels)."""
    root = make_bench(tmp_path_factory.mktemp("ibench") / "b", n_ref=8, n_train=2, n_pos=5, n_neg=2)
    edits = [lambda im: im.crop((20, 15, 225, 165)), ImageOps.mirror, lambda im: im.rotate(8),
             lambda im: ImageOps.grayscale(im).convert("RGB"), lambda im: im.resize((150, 112))]
    for i in range(8):
        smooth(i).save(root / "references" / f"R{i:06d}.jpg", quality=95)
    for q in range(7):
        im = edits[q](smooth(q)) if q < 5 else smooth(100 + q)
        im.save(root / "queries" / f"Q{q:05d}.jpg", quality=90)
    return root


@pytest.mark.parametrize("method,over", [("sift_vote", {}), ("bow_tfidf", {"words": 512, "spatial": True}),
                                         ("imgfp", {"candidates.method": "pdq"})])
def test_methods_run_end_to_end(bench, tmp_path, method, over):
    res = run_method(method, bench, tmp_path / method, overrides={"max_keypoints": 300, **over}, opts=FAST)
    cand = read_candidates(tmp_path / method)
    q = pd.read_parquet(bench / "queries.parquet")
    # every reference is a candidate (candidates.k = "all"), yet only the recalled pairs are listed
    assert res.config["candidates"]["k"] == "all" and len(cand) < len(q) * 8
    assert len(cand) == res.config["candidates"]["pairs"] and len(cand) <= (2 if method == "imgfp" else 1) * len(q)
    best = cand.sort_values("score", ascending=False).groupby("query_id").head(1)
    truth = dict(zip(q.query_id, q.reference_id))
    hits = sum(truth[a] == b for a, b, s in zip(best.query_id, best.reference_id, best.score) if s > 0)
    assert hits >= 3, best
    assert res.metrics["isc2021"]["micro_ap"] > 0.4
    report = res.config["matcher_report"]
    assert "seconds" in report and "skipped" in report
    if method == "imgfp":
        assert report["recalled"]["global"] == len(q) and report["crops"] is None
        assert res.config["candidates"]["shortlist"] == {"per_query": 1, "pairs": len(q)}
    else:
        assert (cand.candidate_rank == -1).all()  # found by the matcher's own search


def test_explicit_candidates_are_rescored(bench, tmp_path):
    """With an integer candidates.k the matcher rescores the given list; unrecalled pairs get 0."""
    res = run_method("sift_vote", bench, tmp_path / "k3", opts=FAST,
                     overrides={"max_keypoints": 300, "candidates.k": 3})
    cand = read_candidates(tmp_path / "k3")
    assert len(cand) == 7 * 3 and "shortlist" not in res.config["candidates"] and (cand.score == 0).any()


def test_vote_pairs_reuses_a_search(stores):
    from imsim_lab.features.keypoint_search import exact_knn
    from imsim_lab.methods.imgfp import kept_descriptors

    fq, fb = stores
    D, I = exact_knn(kept_descriptors(fq), kept_descriptors(fb), 1, dtype="float16")
    a, b = F_vote(fq, fb), F_vote(fq, fb, neighbours=(D, I))
    assert a["query_ids"].tolist() == b["query_ids"].tolist() and a["votes"].tolist() == b["votes"].tolist()


def _fixed_box_detector(path, box):
    """An OverlayNet whose output ignores the image: ``box`` with confidence ~1 (a detector of known output)."""
    import torch

    from imsim_lab.features.detector import DetectorConfig, OverlayNet

    det = OverlayNet(DetectorConfig(input_size=32, width=4, head="global"))
    last = det.net[-1]
    x0, y0, x1, y1 = box
    logit = lambda v: float(np.log(v / (1 - v)))  # noqa: E731
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([8.0, logit((x0 + x1) / 2), logit((y0 + y1) / 2), logit(x1 - x0),
                                      logit(y1 - y0)]))
    det.save(path)
    return path


@pytest.fixture(scope="module")
def paste_bench(tmp_path_factory):
    """The toy benchmark with query 0 a half-size copy of R0 pasted in the middle of another texture."""
    root = make_bench(tmp_path_factory.mktemp("pbench") / "b", n_ref=8, n_train=2, n_pos=5, n_neg=2)
    for i in range(8):
        smooth(i).save(root / "references" / f"R{i:06d}.jpg", quality=95)
    for q in range(7):
        if q == 0:
            im = smooth(200)
            im.paste(smooth(0).resize((120, 90)), (60, 45))  # box (0.25, 0.25, 0.75, 0.75)
        else:
            im = smooth(q).rotate(8) if q < 5 else smooth(100 + q)
        im.save(root / "queries" / f"Q{q:05d}.jpg", quality=90)
    return root


def test_crop_local_branch(paste_bench, tmp_path):
    det = _fixed_box_detector(tmp_path / "det.pt", (0.25, 0.25, 0.75, 0.75))
    over = {"max_keypoints": 300, "candidates.method": "pdq", "detector": str(det)}
    res = run_method("imgfp", paste_bench, tmp_path / "crop", overrides=over, opts=FAST)
    rep = res.config["matcher_report"]
    assert rep["crops"]["crops"] == 7 and rep["recalled"]["crop_local"] >= 1
    cand = read_candidates(tmp_path / "crop").set_index(["query_id", "reference_id"])
    row = cand.loc[("Q00000", "R000000")]
    assert row.crop_local and row.n_matches_crop > 0
    assert ((cand.votes > 3) == cand.local).all()  # the local branch's votes are kept per pair
    # the merge: each branch that recalled the pair adds its pair score (the crop's for crop-local)
    want = cand.n_matches * (cand["global"].astype(int) + cand.local.astype(int)) + cand.n_matches_crop
    np.testing.assert_array_equal(cand.score.to_numpy(), want.to_numpy())
    assert list((tmp_path / "crop" / "matcher" / "query").glob("crops_*_local.json"))
    # the crop is what voted: the same method without the detector has no crop-local column
    plain = run_method("imgfp", paste_bench, tmp_path / "plain", overrides={**over, "detector": ""}, opts=FAST)
    assert plain.config["matcher_report"]["crops"] is None
    assert "crop_local" not in read_candidates(tmp_path / "plain").columns


def test_crop_local_refuses_a_detector_of_another_shape(paste_bench, tmp_path, capsys):
    import torch

    from imsim_lab.cli import main

    ck = torch.load(_fixed_box_detector(tmp_path / "d.pt", (0.2, 0.2, 0.8, 0.8)), weights_only=True)
    ck["config"]["width"] = 8
    torch.save(ck, tmp_path / "bad.pt")
    argv = ["run", "imgfp", "--bench", str(paste_bench), "--out", str(tmp_path / "r"), "--workers", "0",
            "--device", "cpu", "-p", "candidates.method=pdq", "-p", "max_keypoints=100", "-p",
            f"detector={tmp_path / 'bad.pt'}"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "not an overlay detector" in line]
    assert len(err) == 1 and "bad.pt: not an overlay detector checkpoint of this shape" in err[0]
    assert "Traceback" not in err[0]
