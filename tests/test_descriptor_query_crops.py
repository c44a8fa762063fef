"""The overlay crop of the queries in the descriptor track (Bag of Tricks' test pipeline, issue 13):
``-p queries.crops=DETECTOR.pt`` on a descriptor method replaces each query whose detected box passes
``queries.crops_threshold`` (default 0.90) by the crop's descriptor, made with the method's own
(multi-scale) preprocessing by ``imsim_lab.features.query_crops.crop_query_descriptors``.

The detector's boxes are set by monkeypatching ``detector.detect_source`` (the one place the
query-crop code asks for them), so which queries pass the threshold is known; every checkpoint is
made here (a fresh ``OverlayNet`` saved to a temporary file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from imsim_lab.errors import ImsimError  # noqa: E402

#: a small multi-scale Bag of Tricks net (random weights: what is tested is where the rows come from)
BOT = {"model.backbone": "test_resnet", "model.input_size": 32, "model.scales": [25, 32, 40]}
BOX = (0.1, 0.15, 0.75, 0.8)


def _detector(path: Path, seed: int = 0) -> Path:
    from imsim_lab.features.detector import DetectorConfig, OverlayNet

    OverlayNet(DetectorConfig(input_size=32, width=4, seed=seed)).save(path)
    return path


def _opts(**kw):
    from imsim_lab.features import ExtractConfig
    from imsim_lab.runner import RunOptions

    return RunOptions(device="cpu", extract=ExtractConfig(batch_size=8, num_workers=0, shard_size=64), **kw)


def _fake_detections(monkeypatch, conf_of: dict, calls: list | None = None):
    """``detect_source`` returns the box :data:`BOX` on every image, with the confidence ``conf_of[id]``."""
    from imsim_lab.features import detector as D

    real = D.detect_source

    def detect_source(det, source, ids, batch=64):
        if calls is not None:
            calls.append(list(ids))
        _, _, sizes = real(det, source, ids, batch)  # the real pass (it reads the images and their sizes)
        ids = [str(i) for i in ids]
        return np.tile(np.array(BOX, np.float64), (len(ids), 1)), np.array([conf_of[i] for i in ids]), sizes

    monkeypatch.setattr(D, "detect_source", detect_source)


@pytest.fixture()
def bench(tmp_path):
    from support import make_bench

    return make_bench(tmp_path / "bench", n_ref=6, n_train=8, n_pos=4, n_neg=2)


def _qids(bench):
    return sorted(p.stem for p in (bench / "queries").glob("*.jpg"))


def test_the_parameters_and_their_default_threshold():
    from imsim_lab.features.query_crops import BOT_THRESHOLD
    from imsim_lab.methods import get_method

    spec = get_method("bot")
    assert BOT_THRESHOLD == 0.9 and "queries.crops" not in spec.params  # old configurations stay as they were
    _, p = spec.resolve({"queries.crops": "det.pt"})
    assert p["queries.crops"] == "det.pt" and p["queries.crops_threshold"] == 0.9
    _, p = spec.resolve({"queries.crops": "det.pt", "queries.crops_threshold": 0.5})
    assert p["queries.crops_threshold"] == 0.5
    _, p = spec.resolve({"queries.crops": None, "queries.crops_threshold": 0.5})  # no detector: a plain run
    assert p == spec.params
    with pytest.raises(ValueError, match="queries.crops_threshold must be a confidence"):
        spec.resolve({"queries.crops": "det.pt", "queries.crops_threshold": 1.5})
    with pytest.raises(KeyError, match="no parameter 'queries.crops'"):  # a matching method has its own
        get_method("sift_verify").resolve({"queries.crops": "det.pt"})


def test_replaced_rows_are_exactly_the_queries_over_the_threshold(bench, tmp_path, monkeypatch):
    from PIL import Image

    from imsim_lab.features import detector as D
    from imsim_lab.features.models import create_model
    from imsim_lab.features.store import load_features
    from imsim_lab.methods import get_method, prepare
    from imsim_lab.eval.formats import read_descriptors
    from imsim_lab.runner import QUERY_CROPS, run_method

    qids = _qids(bench)
    # over 0.90: replaced; 0.90 itself and below: kept whole (BoT's test is conf > 0.90)
    conf = dict(zip(qids, [0.97, 0.5, 0.9, 0.95, 0.1, 0.91]))
    want = {q for q, c in conf.items() if c > 0.9}
    _fake_detections(monkeypatch, conf)
    det = _detector(tmp_path / "det.pt")
    res = run_method("bot", bench, tmp_path / "run", {**BOT, "queries.crops": str(det)}, opts=_opts())
    rec = res.config["query_crops"]
    assert rec["detector"] == str(det.resolve()) and rec["sha256"] == D.checkpoint_digest(det)
    assert rec["threshold"] == 0.9 and rec["replaced"] == len(want) == 3
    assert rec["report"]["queries"] == len(qids) and rec["report"]["crops"] == 3
    z = np.load(tmp_path / "run" / QUERY_CROPS)
    views = dict(zip(z["query_ids"].astype(str), z["views"].astype(str)))
    assert {q for q, v in views.items() if v == "detector"} == want
    assert np.allclose(z["boxes"][z["views"] == "detector"], BOX) and np.isnan(z["boxes"][z["views"] == "whole"]).all()
    # by hand: the crop through the model's own multi-scale preprocessing replaces the query's row, then PCA
    spec = get_method("bot")
    model_args, params = spec.resolve(BOT)
    m = create_model(spec.model, device="cpu", **model_args)
    fq, fb, ft = (load_features(tmp_path / "run" / "features", s) for s in ("query", "reference", "training"))
    assert m.preprocess(Image.new("RGB", (40, 30))).size == 3 * (25 ** 2 + 32 ** 2 + 40 ** 2)  # all three scales
    xq = np.array(fq.x, np.float32)
    for i, q in enumerate(fq.ids.astype(str)):
        if q in want:
            im = Image.open(bench / "queries" / f"{q}.jpg").convert("RGB")
            w, h = im.size  # the view's pixel box: rounded edges (imsim_lab/features/views.py pixel_box)
            crop = im.crop((round(BOX[0] * w), round(BOX[1] * h), round(BOX[2] * w), round(BOX[3] * h)))
            xq[i] = m.embed([m.preprocess(crop)])[0]
    prep = prepare(spec, xq, fb.x, ft.x, params)
    sub = read_descriptors(tmp_path / "run" / "descriptors.h5")
    assert list(sub.query_ids) == list(fq.ids.astype(str))
    assert np.allclose(sub.xq, prep.hdf5[0], atol=1e-4)
    whole = prepare(spec, fq.x, fb.x, ft.x, params).hdf5[0]
    changed = {q for q, a, b in zip(fq.ids.astype(str), sub.xq, whole) if not np.allclose(a, b, atol=1e-4)}
    assert changed == want  # the whole queries' rows are what a plain run gives (PCA is fitted on training)
    plain = run_method("bot", bench, tmp_path / "plain", {**BOT, "queries.crops": None}, opts=_opts())
    assert "query_crops" not in plain.config and "queries.crops" not in plain.config["params"]
    assert not (tmp_path / "plain" / QUERY_CROPS).exists()


def test_a_rerun_reuses_the_stored_crops_and_another_detector_is_another_configuration(bench, tmp_path, monkeypatch):
    from imsim_lab.features import viewstore
    from imsim_lab.runner import run_method

    qids = _qids(bench)
    calls = []
    _fake_detections(monkeypatch, dict(zip(qids, [0.95] * 3 + [0.2] * 3)), calls)
    det = _detector(tmp_path / "det.pt")
    over = {**BOT, "queries.crops": str(det)}
    cache = tmp_path / "cache"
    first = run_method("bot", bench, tmp_path / "run", over, opts=_opts(feature_cache=str(cache)))
    assert first.config["query_crops"]["replaced"] == 3 and "embed" in first.config["query_crops"]["report"]["seconds"]
    folder = Path(first.config["query_crops"]["report"]["cache"])
    assert folder.is_relative_to(cache) and any(folder.glob("global_crops-*.npy"))
    assert run_method("bot", bench, tmp_path / "run", over, opts=_opts(feature_cache=str(cache))).reused
    # forced, or in another folder sharing the cache: the crops' descriptors are read back, not embedded again

    def no_embedding(*a, **k):
        raise AssertionError("the stored crops were embedded again")

    monkeypatch.setattr(viewstore, "embedded_batches", no_embedding)
    again = run_method("bot", bench, tmp_path / "run", over, opts=_opts(feature_cache=str(cache), force=True))
    other = run_method("bot", bench, tmp_path / "other", over, opts=_opts(feature_cache=str(cache)))
    assert again.metrics == first.metrics == other.metrics
    assert other.config["query_crops"]["replaced"] == 3
    # the same path holding another checkpoint: another configuration, refused in the finished folder
    _detector(det, seed=1)
    with pytest.raises(ImsimError, match="another configuration"):
        run_method("bot", bench, tmp_path / "run", over, opts=_opts(feature_cache=str(cache)))


@pytest.mark.parametrize("bad", ["missing", "shape"])
def test_a_bad_detector_file_is_one_line_through_the_cli(bench, tmp_path, capsys, bad):
    from imsim_lab.cli import main

    ck = tmp_path / "det.pt"
    if bad == "shape":
        torch.save({"config": {"input_size": 32}, "state": {"w": torch.zeros(3)}}, ck)
    rc = main(["run", "bot", "--bench", str(bench), "--out", str(tmp_path / "run"), "--device", "cpu",
               "-p", "model.backbone=test_resnet", "-p", "model.input_size=32", "-p", f"queries.crops={ck}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(ck) in err[0], err
    assert ("not found" if bad == "missing" else "not an overlay detector checkpoint") in err[0]
    assert not (tmp_path / "run" / "config.json").exists()


def test_recorded_boxes_through_the_same_code(bench, tmp_path):
    """box_query_descriptors: the boxes given (disc-synth's recorded ones in notebook 05), NaN rows kept whole."""
    from imsim_lab.features import ExtractConfig
    from imsim_lab.features.dataset import ImageSource
    from imsim_lab.features.models import create_model
    from imsim_lab.features.query_crops import box_query_descriptors

    ids = _qids(bench)
    src = ImageSource.files(ids, [bench / "queries" / f"{i}.jpg" for i in ids], "q")
    m = create_model("bot_net", device="cpu", backbone="test_resnet", input_size=32, scales=[25, 32, 40])
    xq = np.zeros((len(ids), m.dim), np.float32)
    boxes = np.full((len(ids), 4), np.nan)
    boxes[[0, 2]] = BOX
    out, views, got, rec = box_query_descriptors(m, boxes, None, "recorded", src, ids, xq, tmp_path / "c",
                                                 ExtractConfig(batch_size=4, num_workers=0), view="recorded")
    assert views.tolist() == ["recorded", "whole", "recorded"] + ["whole"] * (len(ids) - 3)
    assert rec["crops"] == 2 and (out[[1, 3, 4, 5]] == 0).all() and np.allclose(np.linalg.norm(out[[0, 2]], axis=1), 1,
                                                                                 atol=1e-4)
    with pytest.raises(ValueError, match="boxes"):
        box_query_descriptors(m, boxes[:2], None, "recorded", src, ids, xq, tmp_path / "c")


def test_the_robustness_suites_refuse_a_run_with_query_crops(bench, tmp_path, monkeypatch):
    from imsim_lab.analysis.runcontext import RobustnessError, evaluate_query_set, open_run
    from imsim_lab.runner import run_method

    _fake_detections(monkeypatch, {q: 0.95 for q in _qids(bench)})
    det = _detector(tmp_path / "det.pt")
    run_method("bot", bench, tmp_path / "run", {**BOT, "queries.crops": str(det)}, opts=_opts())
    ctx = open_run(tmp_path / "run")
    with pytest.raises(RobustnessError, match="queries.crops"):
        evaluate_query_set(ctx, ["new"], ctx.xq[:1], ["R000000"], opts=_opts())


_CUDA = pytest.mark.skipif(not torch.cuda.is_available() and __import__("os").environ.get("IMSIM_REQUIRE_GPU") != "1",
                           reason="needs CUDA")


@pytest.mark.gpu
@_CUDA
def test_the_crops_on_cuda_replace_the_same_rows_as_on_the_cpu(bench, tmp_path, monkeypatch):
    from dataclasses import replace

    from imsim_lab.eval.formats import read_descriptors
    from imsim_lab.runner import QUERY_CROPS, run_method

    qids = _qids(bench)
    _fake_detections(monkeypatch, dict(zip(qids, [0.97, 0.5, 0.9, 0.95, 0.1, 0.91])))
    det = _detector(tmp_path / "det.pt")
    over = {**BOT, "queries.crops": str(det)}
    cpu = run_method("bot", bench, tmp_path / "cpu", over, opts=_opts())
    gpu = run_method("bot", bench, tmp_path / "gpu", over, opts=replace(_opts(), device="cuda"))
    assert gpu.config["query_crops"]["replaced"] == cpu.config["query_crops"]["replaced"] == 3
    a, b = (np.load(tmp_path / d / QUERY_CROPS)["views"] for d in ("cpu", "gpu"))
    assert np.array_equal(a, b)
    xa, xb = (read_descriptors(tmp_path / d / "descriptors.h5").xq for d in ("cpu", "gpu"))
    assert ((xa * xb).sum(1) > 0.98).all()  # the GPU embeds with autocast: close, not bit-identical
