"""Attacks: identity at epsilon 0, budgets and pixel range, growth with epsilon, targeted pull,
8-bit quantisation inside the budget, preprocessing replay, refusals."""

import numpy as np
import pytest
import torch
from PIL import Image

from imsim_lab.analysis.attacks import (AttackConfig, AttackError, DifferentiableDescriptor, attack, eps_label, jpeg_roundtrip,
                               perturbation_image, quantize)
from imsim_lab.analysis.attacks.core import L2_REFERENCE_SIZE
from imsim_lab.features.models import create_model


@pytest.fixture(scope="module")
def f():
    return DifferentiableDescriptor(create_model("resnet18_gem", device="cpu", input_size=32, dim=32))


def images(n=2, h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 5, 6, 3), dtype=np.uint8)
    arr = np.stack([np.asarray(Image.fromarray(s).resize((w, h), Image.BICUBIC)) for s in small])
    return arr, torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def original_of(f, x):
    """Descriptors of the "originals" of x (the queries are edits of them): a contrast change."""
    with torch.no_grad():
        return f((x * 0.8 + 0.1).clamp(0, 1))


def l2_budget(eps, x):
    return eps * np.sqrt(x[0].numel() / L2_REFERENCE_SIZE)


CASES = [(m, n) for m in ("fgsm", "pgd") for n in ("linf", "l2")]


@pytest.mark.parametrize("method,norm", CASES)
def test_eps_zero_returns_the_clean_query(f, method, norm):
    _, x = images()
    with torch.no_grad():
        a = f(x)
    out = attack(f, x, a, AttackConfig(method, norm, eps=0.0, steps=2))
    assert torch.equal(out, x)


@pytest.mark.parametrize("method,norm", CASES)
def test_budget_and_pixel_range(f, method, norm):
    arr, x = images()
    a = original_of(f, x)
    eps = 8 / 255 if norm == "linf" else 2.0
    cfg = AttackConfig(method, norm, eps=eps, steps=3)
    out = attack(f, x, a, cfg)
    assert out.min() >= 0 and out.max() <= 1
    d = (out - x).flatten(1)
    assert not torch.equal(out, x)
    if norm == "linf":
        assert d.abs().max() <= eps + 1e-6
    else:
        assert (d.norm(dim=1) <= l2_budget(eps, x) + 1e-5).all()
    for i in range(len(arr)):  # the 8-bit image stays inside the budget too
        q = quantize(out[i].permute(1, 2, 0).numpy(), arr[i], cfg).astype(np.float64)
        dq = (q - arr[i]) / 255
        if norm == "linf":
            assert np.abs(dq).max() <= eps + 1e-9
        else:
            assert np.linalg.norm(dq) <= l2_budget(eps, x) + 1e-9


def test_descriptor_distance_grows_with_eps(f):
    _, x = images(n=1, seed=3)
    a = original_of(f, x)
    dist = []
    for e in (0, 1 / 255, 4 / 255, 16 / 255):
        out = attack(f, x, a, AttackConfig("pgd", "linf", eps=e, steps=5))
        with torch.no_grad():
            dist.append(float(((f(out) - a) ** 2).sum()))
    assert all(b > a_ for a_, b in zip(dist, dist[1:])), dist
    assert dist[-1] > 2 * dist[0], dist


def test_targeted_pulls_towards_the_target(f):
    _, x = images(n=2, seed=5)
    with torch.no_grad():
        target = f(x.flip(0))  # each image aims at the other one
        before = ((f(x) - target) ** 2).sum(1)
    out = attack(f, x, target, AttackConfig("pgd", "linf", eps=16 / 255, steps=5, targeted=True))
    with torch.no_grad():
        after = ((f(out) - target) ** 2).sum(1)
    assert (after < before).all()


def test_deterministic(f):
    _, x = images(seed=7)
    with torch.no_grad():
        a = f(x)
    cfg = AttackConfig("pgd", "l2", eps=1.0, steps=2, seed=3)
    assert torch.equal(attack(f, x, a, cfg), attack(f, x, a, cfg))


def test_model_parameters_untouched(f):
    _, x = images()
    flags = [p.requires_grad for p in f.model.module.parameters()]
    before = [p.detach().clone() for p in f.model.module.parameters()]
    attack(f, x, torch.zeros(2, 32), AttackConfig("fgsm", "linf", eps=4 / 255))
    assert flags == [p.requires_grad for p in f.model.module.parameters()]
    assert all(torch.equal(a, p) for a, p in zip(before, f.model.module.parameters()))


def test_differentiable_path_matches_the_model_pipeline(f):
    arr, x = images(n=1, h=64, w=80)
    with torch.no_grad():
        y = f(x).numpy()
    ref = f.model.embed([f.model.preprocess(Image.fromarray(arr[0]))])
    assert float((y * ref).sum()) > 0.98  # same preprocessing up to PIL's 8-bit rounding


def test_non_differentiable_models_are_refused():
    with pytest.raises(AttackError, match="transfer target"):
        DifferentiableDescriptor(create_model("pdq", device="cpu"))


def test_config_errors_and_names():
    with pytest.raises(AttackError):
        AttackConfig("cw")
    with pytest.raises(AttackError):
        AttackConfig(norm="l1")
    with pytest.raises(AttackError):
        AttackConfig(eps=-1)
    assert AttackConfig("pgd", "l2", targeted=True, jpeg_quality=75).name == "pgd-l2-targeted-jpeg75"
    assert eps_label(8 / 255, "linf") == "8/255" and eps_label(0.5, "l2") == "L2 0.5"


def test_quantize_jpeg_and_perturbation_image():
    arr, _ = images(n=1)
    clean = arr[0]
    same = quantize(clean.astype(np.float64) / 255, clean, AttackConfig(eps=2 / 255))
    assert np.array_equal(same, clean)
    # a float result 2.6 levels away is cut to the 2 whole levels an eps of 2.6/255 allows
    q = quantize(np.clip(clean / 255 + 2.6 / 255, 0, 1), clean, AttackConfig(eps=2.6 / 255))
    assert np.abs(q.astype(int) - clean).max() <= 2
    j = jpeg_roundtrip(clean, 50)
    assert j.shape == clean.shape and j.dtype == np.uint8 and not np.array_equal(j, clean)
    p = perturbation_image(clean, clean)
    assert (p == 128).all()
    d = clean.astype(int).copy()
    d[0, 0, 0] = min(255, d[0, 0, 0] + 3)
    p = perturbation_image(clean, d.astype(np.uint8))
    assert p.max() == 255 or p.min() == 1
