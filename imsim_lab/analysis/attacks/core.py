"""White-box attacks on torch descriptor models: FGSM and PGD under L-inf and L2 budgets.

The attack works in pixel space: an image is a tensor ``x`` (b, 3, H, W) in [0, 1] at its own
resolution, and the model is reached through :class:`DifferentiableDescriptor`, which replays
the model's preprocessing (resize rule, grayscale, mean/std of its frozen config) with
differentiable torch operations. So the perturbation lives on the uploaded image, as a real
adversary's would, and the evaluation later runs each method's own (PIL) preprocessing on the
saved image.

Objective, with ``a`` the anchor descriptor and f the model (unit-norm descriptors)::

    untargeted: maximise J(x') =  ||f(x') - a||^2     a = descriptor of the query's original
    targeted:   maximise J(x') = -||f(x') - a||^2     a = descriptor of another reference

    FGSM  L-inf: x' = clip(x + eps * sign(grad J), 0, 1)                (Goodfellow et al. 2015)
    FGSM  L2   : x' = clip(x + eps * grad J / ||grad J||_2, 0, 1)
    PGD        : x_0 = x (+ uniform noise in the ball with ``random_start``), then ``steps`` times
                 x_{t+1} = Proj_{B(x, eps)} clip(x_t + alpha * s(grad J), 0, 1) with s = sign (L-inf)
                 or g / ||g||_2 (L2); the iterate with the best J is returned  (Madry et al. 2018)

L2 budgets are stated for a 224 x 224 x 3 image and scaled by sqrt(n / (3 * 224 * 224)) for an
image of n values, so that one epsilon means the same per-pixel energy at every image size.
When the query's descriptor equals the anchor the gradient is zero (a maximum of the distance's
opposite): FGSM then leaves the image unchanged and PGD's random start is what moves it; in the
suite the anchor is the original reference, never the query itself. Clipping to [0, 1] after a projection only shrinks the perturbation, so results stay inside
both the budget and the valid range. :func:`quantize` turns a result into 8-bit pixels without
leaving the budget; :func:`jpeg_roundtrip` re-encodes it as an upload would.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np

from ...errors import ImsimError

NORMS = ("linf", "l2")
METHODS = ("fgsm", "pgd")
L2_REFERENCE_SIZE = 3 * 224 * 224
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}


class AttackError(ImsimError):
    """An attack cannot run on this model or with these settings."""


@dataclass(frozen=True)
class AttackConfig:
    """One attack.

    Attributes:
        method: ``fgsm`` or ``pgd``. norm: ``linf`` or ``l2``.
        eps: the budget, in [0, 1] pixel units (L-inf: 8/255 is the usual "8"); L2: the norm for a
            224 x 224 x 3 image (scaled with the image size, see the module docstring).
        steps: PGD iterations. step_size: PGD step alpha in eps units (alpha = step_size * eps).
        random_start: start PGD at a random point of the ball.
        targeted: pull towards the anchor (another reference) instead of pushing away from it.
        jpeg_quality: re-encode the 8-bit result as JPEG at this quality (None: no re-encoding).
        seed: of the random start.
    """

    method: str = "pgd"
    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float = 0.25
    random_start: bool = True
    targeted: bool = False
    jpeg_quality: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise AttackError(f"attack method must be one of {METHODS}, not {self.method!r}")
        if self.norm not in NORMS:
            raise AttackError(f"norm must be one of {NORMS}, not {self.norm!r}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise AttackError(f"eps must be a finite number >= 0, got {self.eps}")
        if self.steps < 1 or self.step_size <= 0:
            raise AttackError("steps must be >= 1 and step_size > 0")
        if self.jpeg_quality is not None and not 1 <= int(self.jpeg_quality) <= 100:
            raise AttackError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def name(self) -> str:
        """Short name: ``pgd-linf``, ``fgsm-l2-targeted``, ``pgd-linf-jpeg75``..."""
        parts = [self.method, self.norm] + (["targeted"] if self.targeted else [])
        if self.jpeg_quality is not None:
            parts.append(f"jpeg{int(self.jpeg_quality)}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


class DifferentiableDescriptor:
    """A :class:`~imsim_lab.features.models.base.TorchDescriptorModel` as a differentiable function of
    pixels: (b, 3, H, W) in [0, 1] -> (b, d) unit descriptors, with the model's preprocessing.

    The resize is ``F.interpolate(antialias=True)``, which follows PIL's resampling filters; the
    8-bit rounding of PIL is not replayed (it has no useful gradient).

    Raises:
        AttackError: the model is not a torch model with a float NCHW input (SSCD through
            onnxruntime, GIST, PDQ): use it as a transfer target instead.
    """

    def __init__(self, model):
        from ...features.models.base import TorchDescriptorModel

        if not isinstance(model, TorchDescriptorModel) or model.config.layout != "nchw_float":
            raise AttackError(f"model {model.config.name!r} ({type(model).__name__}) is not differentiable here; "
                              "white-box attacks need a torch descriptor model (use it as a transfer target)")
        import torch

        self.model = model
        self.config = model.config
        self.device = model.device
        self._mean = torch.tensor(self.config.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.config.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        c = self.config
        if c.grayscale:  # PIL "L": ITU-R 601-2 luma, then back to 3 channels
            w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        h, wd = x.shape[-2:]
        ow, oh = self.model.preprocess.output_size(int(wd), int(h))
        if (oh, ow) != (h, wd):
            x = F.interpolate(x, size=(oh, ow), mode=_MODES.get(c.interpolation, "bilinear"), antialias=True,
                              align_corners=False).clamp(0.0, 1.0)
        y = self.model.module((x - self._mean) / self._std)
        return F.normalize(y.float(), dim=-1)


def _budget(cfg: AttackConfig, x) -> float:
    """The absolute budget for a batch of images shaped like ``x``."""
    if cfg.norm == "linf":
        return float(cfg.eps)
    n = x[0].numel()
    return float(cfg.eps) * math.sqrt(n / L2_REFERENCE_SIZE)


def _flat_norm(t):
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def project(delta, x, cfg: AttackConfig, eps_abs: float):
    """Project a perturbation onto the budget ball, then into the valid range (x + delta in [0, 1])."""
    import torch

    if cfg.norm == "linf":
        delta = delta.clamp(-eps_abs, eps_abs)
    else:
        delta = delta * torch.clamp(eps_abs / _flat_norm(delta), max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


def _step(g, cfg: AttackConfig):
    return g.sign() if cfg.norm == "linf" else g / _flat_norm(g)


def attack(f, x, anchor, cfg: AttackConfig):
    """Attack a batch of images.

    Args:
        f: a differentiable descriptor function (:class:`DifferentiableDescriptor`).
        x: (b, 3, H, W) float tensor in [0, 1] (the clean queries, all of one size).
        anchor: (b, d) float tensor, the descriptors to move away from (or towards, targeted).
        cfg: the attack.

    Returns:
        (b, 3, H, W) float tensor in [0, 1], within ``cfg.eps`` of ``x`` in ``cfg.norm``; equal
        to ``x`` when eps is 0.
    """
    import torch

    x = x.detach().float()
    if cfg.eps == 0:
        return x.clone()
    anchor = anchor.detach().to(x.device).float()
    sign = -1.0 if cfg.targeted else 1.0
    eps_abs = _budget(cfg, x)
    params = list(f.model.module.parameters())
    flags = [p.requires_grad for p in params]

    def objective(xa):
        return sign * ((f(xa) - anchor) ** 2).sum(1)

    try:
        for p in params:  # only the input needs a gradient
            p.requires_grad_(False)
        with torch.enable_grad():
            if cfg.method == "fgsm":
                xa = x.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(objective(xa).sum(), xa)
                return x + project(eps_abs * _step(g, cfg), x, cfg, eps_abs)
            gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
            delta = torch.zeros_like(x)
            if cfg.random_start:
                if cfg.norm == "linf":
                    delta = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps_abs
                else:
                    d = torch.randn(x.shape, generator=gen).to(x.device)
                    r = torch.rand((len(x),) + (1,) * (x.ndim - 1), generator=gen).to(x.device)
                    delta = d / _flat_norm(d) * r * eps_abs
                delta = project(delta, x, cfg, eps_abs)
            best = x.clone()
            best_j = torch.full((len(x),), -float("inf"), device=x.device)
            alpha = cfg.step_size * eps_abs
            for _ in range(cfg.steps + 1):
                xa = (x + delta).requires_grad_(True)
                j = objective(xa)
                better = j.detach() > best_j
                best[better] = xa.detach()[better]
                best_j = torch.where(better, j.detach(), best_j)
                if _ == cfg.steps:
                    break
                (g,) = torch.autograd.grad(j.sum(), xa)
                delta = project(delta + alpha * _step(g, cfg), x, cfg, eps_abs)
            return best
    finally:
        for p, fl in zip(params, flags):
            p.requires_grad_(fl)


def quantize(x_adv: np.ndarray, x_clean: np.ndarray, cfg: AttackConfig) -> np.ndarray:
    """8-bit image of an attack result that stays inside the budget.

    Args:
        x_adv: (H, W, 3) or (3, H, W) float in [0, 1]; x_clean: the same shape, uint8.

    Returns:
        uint8 array shaped like ``x_clean``: rounded to the nearest level, then (L-inf) clipped to
        the largest whole number of levels inside eps, or (L2) truncated towards the clean pixel
        when rounding would exceed the norm.
    """
    xc = x_clean.astype(np.float64)
    d = x_adv.astype(np.float64) * 255.0 - xc
    q = np.rint(d)
    if cfg.norm == "linf":
        lim = math.floor(cfg.eps * 255.0 + 1e-6)
        q = np.clip(q, -lim, lim)
    else:
        eps_abs = cfg.eps * math.sqrt(d.size / L2_REFERENCE_SIZE) * 255.0
        if np.linalg.norm(q) > eps_abs + 1e-9:
            q = np.trunc(d + np.sign(d) * 1e-3)
            if np.linalg.norm(q) > eps_abs + 1e-9:
                q = np.trunc(d)
    return np.clip(xc + q, 0, 255).astype(np.uint8)


def jpeg_roundtrip(img_uint8: np.ndarray, quality: int) -> np.ndarray:
    """Encode an (H, W, 3) uint8 image as JPEG and decode it (what an upload does)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img_uint8, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def perturbation_image(clean: np.ndarray, adv: np.ndarray, amplify: float | None = None) -> np.ndarray:
    """The perturbation made visible: 128 + amplify * (adv - clean), uint8 (H, W, 3).

    ``amplify`` None: scale so that the largest change reaches the edge of the range.
    """
    d = adv.astype(np.float64) - clean.astype(np.float64)
    if amplify is None:
        m = float(np.abs(d).max())
        amplify = 127.0 / m if m > 0 else 1.0
    return np.clip(128.0 + amplify * d, 0, 255).astype(np.uint8)
