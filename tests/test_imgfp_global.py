"""imgFp's global branch (issue 14): the EsViT Swin-B descriptor of the ``full`` profile and the overlay
detector's crop as the query of the global search (``candidates.crops``).

The EsViT tests build a narrow Swin (the published Swin-B is 88 M parameters) and make every
checkpoint here (random initialisation saved to a temporary file); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from imsim_lab.errors import ImsimError  # noqa: E402
from imsim_lab.features.models import create_model, get_config  # noqa: E402
from imsim_lab.features.models.esvit import EsViTDescriptorNet, esvit_to_timm  # noqa: E402
from imsim_lab.features.models.weights import WeightsError  # noqa: E402

#: a narrow Swin with the published layout of stages (the last 4 blocks span stages 3 and 4)
NARROW = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 1, 2, 2)}


def narrow_model(**kw):
    return create_model("esvit_swinb", device="cpu", dim=16, timm_kwargs=NARROW, **kw)


def images(n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, 224, 224)).astype(np.float32)


def test_the_published_configuration_and_what_is_pooled():
    cfg = get_config("esvit_swinb")
    assert (cfg.dim, cfg.input_size, cfg.resize, cfg.interpolation) == (256, (224, 224), "square", "bicubic")
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.extra["backbone"] == "swin_base_patch4_window7_224" and cfg.extra["window_size"] == 14
    with torch.device("meta"):  # Swin-B itself, without memory: window 14 in stages 1-3, 7 in the last
        net = EsViTDescriptorNet()
    assert [tuple(layer.blocks[0].window_size) for layer in net.backbone.layers] == [(14, 14)] * 3 + [(7, 7)]
    assert net.feature_dim == 2 * 512 + 2 * 1024 and net.fc.in_features == 3072 and net.fc.out_features == 256
    small = EsViTDescriptorNet(dim=16, timm_kwargs=NARROW).eval()
    x = torch.from_numpy(images(2))
    with torch.no_grad():
        f = small.block_features(x)
        # widths of the last 4 blocks: stage 2 (32), stage 3 (64, 64), stage 4 (128)
        assert f.shape == (2, 32 + 64 + 64 + 128)
        # the last block's part is the trunk's own output (after its final norm), averaged over tokens
        assert torch.allclose(f[:, -128:], small.backbone.forward_features(x).mean((1, 2)), atol=1e-5)
        y = small(x)
    assert y.shape == (2, 16) and torch.allclose(y.norm(dim=1), torch.ones(2), atol=1e-5)


def test_weights_from_a_path_with_the_checksum_checked(tmp_path):
    a = narrow_model(seed=1)
    p = tmp_path / "esvit.pt"
    torch.save(a.module.state_dict(), p)
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    b = narrow_model(seed=2, weights_path=str(p), weights_sha256=sha)
    x = images()
    assert np.allclose(a.embed(x), b.embed(x), atol=1e-5)
    assert not np.allclose(narrow_model(seed=2).embed(x), a.embed(x), atol=1e-3)  # the load did something
    with pytest.raises(WeightsError, match=r"esvit\.pt: wrong sha256"):
        narrow_model(weights_path=str(p), weights_sha256="0" * 64)
    with pytest.raises(WeightsError, match=r"missing\.pt: weights file not found"):
        narrow_model(weights_path=str(tmp_path / "missing.pt"))
    other = tmp_path / "other.pt"  # a 32-d head: another shape
    torch.save(EsViTDescriptorNet(dim=32, timm_kwargs=NARROW).state_dict(), other)
    with pytest.raises(WeightsError, match=r"other\.pt: shape mismatch .*fc\.weight"):
        narrow_model(weights_path=str(other))


def esvit_layout(net: EsViTDescriptorNet) -> dict:
    """A checkpoint in EsViT's released layout made from ``net``'s trunk: the original Swin names
    (patch merging at the end of a stage), ``module.backbone.`` prefixes, DINO heads, the buffers the
    original code saves, inside ``teacher`` and ``student``."""
    sd = {}
    for k, v in net.backbone.state_dict().items():
        k = k.replace(".downsample.", ".DS.")
        if ".DS." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.DS.", f"layers.{i - 1}.downsample.")
        sd["module.backbone." + k] = v.clone()
    sd["module.backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(7, dtype=torch.long)
    sd["module.head.mlp.0.weight"] = torch.zeros(8, 8)
    sd["module.head_dense.last_layer.weight"] = torch.zeros(8, 8)
    student = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in sd.items()}
    return {"teacher": sd, "student": student, "epoch": 300}


def test_esvit_released_layout_is_mapped_explicitly(tmp_path):
    src = EsViTDescriptorNet(dim=16, timm_kwargs=NARROW)
    torch.nn.init.normal_(src.backbone.layers[1].downsample.reduction.weight)
    ck = esvit_layout(src)
    mapped = esvit_to_timm(ck)
    assert "backbone.layers.1.downsample.reduction.weight" in mapped  # stage 0's merge opens stage 1 in timm
    assert torch.equal(mapped["backbone.layers.1.downsample.reduction.weight"],
                       src.backbone.layers[1].downsample.reduction.weight)
    assert not any(k.startswith(("backbone.head", "head")) or k.endswith("relative_position_index") for k in mapped)
    p = tmp_path / "esvit_release.pth"
    torch.save(ck, p)
    m = narrow_model(seed=5, weights_path=str(p), weights_layout="esvit")
    for k, v in src.backbone.state_dict().items():  # the teacher's trunk, not the student's zeros
        assert torch.equal(m.module.backbone.state_dict()[k], v), k
    # the 256-d head is not in EsViT's release: it keeps the seeded initialisation
    assert torch.equal(m.module.fc.weight, narrow_model(seed=5).module.fc.weight)
    x = torch.from_numpy(images(2))
    with torch.no_grad():
        assert torch.allclose(m.module.block_features(x), src.eval().block_features(x), atol=1e-5)
    # the same release of a wider Swin, and one with a trunk tensor missing: one line naming the file
    wide = tmp_path / "wide.pth"
    torch.save(esvit_layout(EsViTDescriptorNet(dim=16, timm_kwargs={**NARROW, "embed_dim": 32})), wide)
    with pytest.raises(WeightsError, match=r"wide\.pth: shape mismatch .* EsViT layout"):
        narrow_model(weights_path=str(wide), weights_layout="esvit")
    del ck["teacher"]["module.backbone.norm.weight"]
    torch.save(ck, p)
    with pytest.raises(WeightsError, match=r"esvit_release\.pth: not an EsViT Swin checkpoint of this shape: 1 miss"):
        narrow_model(weights_path=str(p), weights_layout="esvit")
    with pytest.raises(WeightsError, match="weights_layout must be one of"):
        narrow_model(weights_layout="swin")


def test_a_run_of_esvit_with_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    from imsim_lab.cli import main
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=3, n_pos=1, n_neg=1)
    rc = main(["run", "esvit", "--bench", str(bench), "--out", str(tmp_path / "run"), "--device", "cpu",
               "-p", f"model.weights_path={tmp_path / 'absent.pt'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "absent.pt" in err[0] and "not found" in err[0]


# --- the detector's crop as the query of the global search ---------------------------------------------

def _detector(path: Path, seed: int = 0) -> Path:
    from imsim_lab.features.detector import DetectorConfig, OverlayNet

    OverlayNet(DetectorConfig(input_size=32, width=4, seed=seed)).save(path)
    return path


def _opts():
    from imsim_lab.features import ExtractConfig
    from imsim_lab.runner import RunOptions

    return RunOptions(device="cpu", extract=ExtractConfig(batch_size=16, num_workers=0, shard_size=64))


def test_the_source_takes_a_detector_and_a_threshold():
    from imsim_lab.methods import get_method
    from imsim_lab.methods.matchers import matcher_params
    from imsim_lab.methods.spec import CandidateSource

    assert "candidates.crops" not in CandidateSource("sscd", 10).to_params()  # old configs stay as they were
    src = CandidateSource("sscd", "all", crops="det.pt")
    assert src.crops_threshold == 0.55 and src.to_params()["candidates.crops_threshold"] == 0.55
    with pytest.raises(ValueError, match="candidates.crops .* takes no candidates.views"):
        CandidateSource("sscd", 10, views="cpu", crops="det.pt")
    with pytest.raises(ValueError, match="crops_threshold must be a confidence"):
        CandidateSource("sscd", 10, crops="det.pt", crops_threshold=1.5)
    _, params = get_method("imgfp").resolve({"candidates.crops": "det.pt"})
    assert params["candidates.crops"] == "det.pt" and "candidates.crops" not in matcher_params(params)


def test_queries_search_with_the_crop_and_the_run_records_the_detector(tmp_path):
    from imsim_lab.features import detector as D
    from imsim_lab.features.models import create_model
    from imsim_lab.runfolder import read_candidates
    from imsim_lab.runner import run_method
    from imsim_lab.search import knn
    from PIL import Image
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=6, n_pos=3, n_neg=1)
    det = _detector(tmp_path / "det.pt")
    over = {"candidates.method": "timm_random", "candidates.k": 3, "candidates.crops": str(det),
            "candidates.crops_threshold": 0.0}
    res = run_method("sift_verify", bench, tmp_path / "run", over, opts=_opts())
    cand = res.config["candidates"]
    assert cand["crops"] == str(det) and cand["crops_threshold"] == 0.0
    assert cand["crops_sha256"] == D.checkpoint_digest(det) == cand["crops_report"]["sha256"]
    assert cand["crops_report"]["queries"] == 4 and cand["crops_report"]["crops"] == 4
    table = read_candidates(tmp_path / "run")
    assert (table.candidate_view == "detector").all()
    # by hand: each query's crop embedded with the candidate model, searched among the references
    qids = sorted(table.query_id.unique())
    net = D.OverlayNet.load(det)
    qims = [Image.open(bench / "queries" / f"{q}.jpg").convert("RGB") for q in qids]
    boxes, _ = D.detect(net, qims)
    from imsim_lab.methods import get_method

    spec = get_method("timm_random")
    m = create_model(spec.model, device="cpu", **spec.model_args)
    xq = m.embed([m.preprocess(D.crop(im, b)) for im, b in zip(qims, boxes)])
    rids = np.array(sorted(p.stem for p in (bench / "references").glob("*.jpg")))
    xb = m.embed([m.preprocess(Image.open(bench / "references" / f"{r}.jpg").convert("RGB")) for r in rids])
    _, idx = knn(xq, xb, 3, "l2", "numpy")
    for q, row in zip(qids, idx):
        got = table[table.query_id == q].sort_values("candidate_rank").reference_id.tolist()
        assert got == rids[row].tolist(), q
    whole = run_method("sift_verify", bench, tmp_path / "whole", {**over, "candidates.crops": None}, opts=_opts())
    assert "crops" not in whole.config["candidates"]
    assert "candidate_view" not in read_candidates(tmp_path / "whole").columns
    # the robustness suites cannot make the new queries' crops: refused in one line, never a silent whole query
    from imsim_lab.analysis.runcontext import RobustnessError, _matching_predictions, open_run

    ctx = open_run(tmp_path / "run", bench)
    with pytest.raises(RobustnessError, match="candidates.crops"):
        _matching_predictions(ctx, ctx.descriptor.qids, ctx.descriptor.xq, set(), images=ctx, work=tmp_path / "w",
                              opts=_opts())
    # the same folder with another detector is another configuration; the same one is reused
    assert run_method("sift_verify", bench, tmp_path / "run", over, opts=_opts()).reused
    _detector(det, seed=1)
    with pytest.raises(ImsimError, match="another configuration"):
        run_method("sift_verify", bench, tmp_path / "run", over, opts=_opts())


def test_a_high_threshold_keeps_the_whole_query(tmp_path):
    from imsim_lab.features import ExtractConfig
    from imsim_lab.features.dataset import ImageSource
    from imsim_lab.features.query_crops import crop_query_descriptors
    from imsim_lab.features.detector import OverlayNet
    from imsim_lab.features.models import create_model
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=2, n_pos=2, n_neg=1)
    ids = sorted(p.stem for p in (bench / "queries").glob("*.jpg"))
    src = ImageSource.files(ids, [bench / "queries" / f"{i}.jpg" for i in ids], "q")
    model = create_model("pdq", device="cpu")
    xq = np.random.default_rng(0).normal(size=(len(ids), model.dim)).astype(np.float32)
    det = OverlayNet.load(_detector(tmp_path / "det.pt"))  # fresh head: confidence about 0.01
    cfg = ExtractConfig(batch_size=8, num_workers=0)
    out, views, boxes, rec = crop_query_descriptors(model, det, "ab" * 32, 0.55, src, ids, xq, tmp_path / "c", cfg)
    assert np.array_equal(out, xq) and (views == "whole").all() and np.isnan(boxes).all() and rec["crops"] == 0
    out, views, boxes, rec = crop_query_descriptors(model, det, "ab" * 32, 0.0, src, ids, xq, tmp_path / "c", cfg)
    assert (views == "detector").all() and not np.allclose(out, xq) and rec["crops"] == len(ids)


@pytest.mark.parametrize("bad", ["missing", "shape"])
def test_a_bad_detector_checkpoint_is_one_line_before_the_run_folder(tmp_path, capsys, bad):
    from imsim_lab.cli import main
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=3, n_pos=1, n_neg=1)
    ck = tmp_path / "det.pt"
    if bad == "shape":
        torch.save({"config": {"input_size": 32}, "state": {"w": torch.zeros(3)}}, ck)
    rc = main(["run", "sift_verify", "--bench", str(bench), "--out", str(tmp_path / "run"), "--device", "cpu",
               "-p", "candidates.method=pdq", "-p", f"candidates.crops={ck}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(ck) in err[0]
    assert not (tmp_path / "run" / "config.json").exists()


_CUDA = pytest.mark.skipif(not torch.cuda.is_available() and __import__("os").environ.get("IMSIM_REQUIRE_GPU") != "1",
                           reason="needs CUDA")


@pytest.mark.gpu
@_CUDA
def test_esvit_on_cuda_agrees_with_the_cpu():
    x = images(4)
    a = narrow_model(seed=3).embed(x)
    b = create_model("esvit_swinb", device="cuda", dim=16, timm_kwargs=NARROW, seed=3).embed(x)  # fp16 autocast
    assert b.dtype == np.float32 and ((a * b).sum(1) > 0.99).all()
    full = create_model("esvit_swinb", device="cuda")  # the published Swin-B, window 14, random weights
    y = full.embed(images(8))
    assert y.shape == (8, 256) and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-3)


def test_the_full_profile_commands_at_toy_size(tmp_path):
    """notebooks/08's ``full`` path: an ``esvit`` run with weights from a path, then ``imgfp`` with it as
    the global branch (``candidates.method=esvit``, ``--candidates``), the detector's crops in both branches."""
    from dataclasses import replace

    from imsim_lab.runfolder import read_candidates
    from imsim_lab.runner import run_method
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=5, n_pos=3, n_neg=1)
    w = tmp_path / "esvit.pt"
    torch.save(narrow_model(seed=4).module.state_dict(), w)
    sha = hashlib.sha256(w.read_bytes()).hexdigest()
    model = {"model.dim": 16, "model.timm_kwargs": NARROW, "model.weights_path": str(w), "model.weights_sha256": sha}
    g = run_method("esvit", bench, tmp_path / "esvit", model, opts=_opts())
    assert g.config["weights"] == f"path:{w}" and g.config["model"]["extra"]["window_size"] == 14
    det = _detector(tmp_path / "det.pt")
    over = {"candidates.method": "esvit", "detector": str(det), "candidates.crops": str(det),
            "candidates.crops_threshold": 0.0, "crop_threshold": 0.0}
    opts = replace(_opts(), candidates=str(tmp_path / "esvit"))
    res = run_method("imgfp", bench, tmp_path / "imgfp", over, opts=opts)
    cand = res.config["candidates"]
    assert cand["method"] == "esvit" and cand["run"] == str((tmp_path / "esvit").resolve())
    assert cand["model_fingerprint"] == g.config["model_fingerprint"] and cand["crops_report"]["crops"] == 4
    table = read_candidates(tmp_path / "imgfp")
    shortlisted = table[table.candidate_rank >= 0]
    assert len(shortlisted) == 4 and (shortlisted.candidate_view == "detector").all()
    assert (table[table.candidate_rank < 0].candidate_view == "").all()
    assert table["global"].sum() == 4 and res.config["matcher_report"]["crops"]["crops"] == 4
    # the finished run keeps the candidate model's fingerprint: the same command finds it finished
    again = run_method("imgfp", bench, tmp_path / "imgfp", over, opts=opts)
    assert again.reused


def test_the_exact_keypoint_search_is_kept_and_read_back_only_for_the_same_features(tmp_path):
    from dataclasses import replace

    from imsim_lab.features.keypoint_search import exact_knn
    from imsim_lab.features.localstore import load_local
    from imsim_lab.methods.imgfp import cached_neighbours, kept_descriptors
    from imsim_lab.runfolder import read_candidates
    from imsim_lab.runner import run_method
    from support import make_bench

    bench = make_bench(tmp_path / "bench", n_ref=5, n_pos=3, n_neg=1)
    over = {"candidates.method": "pdq", "max_keypoints": 60}
    first = run_method("imgfp", bench, tmp_path / "run", over, opts=_opts())
    assert first.config["matcher_report"]["search_read_back"] == {"local": False}
    a = read_candidates(tmp_path / "run")
    again = run_method("imgfp", bench, tmp_path / "run", over, opts=replace(_opts(), force=True))
    rep = again.config["matcher_report"]
    assert rep["search_read_back"] == {"local": True}
    assert rep["seconds"]["search"] == first.config["matcher_report"]["seconds"]["search"]  # when it was made
    assert a.equals(read_candidates(tmp_path / "run")) and again.metrics == first.metrics
    fq = load_local(tmp_path / "run" / "matcher" / "query", "query")
    fb = load_local(tmp_path / "run" / "matcher" / "reference", "reference")
    (D, I), _, back = cached_neighbours(fq, fb, tmp_path / "run" / "matcher" / "query")
    D0, I0 = exact_knn(kept_descriptors(fq), kept_descriptors(fb), 1, "numpy", "float16")
    assert back and np.array_equal(I, I0) and np.allclose(D, D0)
    # other features (the references as queries) are another key: searched, not read back
    (_, I2), _, back2 = cached_neighbours(fb, fb, tmp_path / "run" / "matcher" / "query")
    assert not back2 and (I2[:, 0] == np.arange(len(I2))).mean() > 0.9
