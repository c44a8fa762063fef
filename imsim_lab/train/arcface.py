"""ArcFace with one class per training image, and the class matrix that grows (S-square's drip training).

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019, eq. 3;
used by S-square (Papadakis & Addicam, arXiv 2112.03415; ``docs/methods.md``, "S-square") with
margin m = 0.4 and scale s = 40, every training image its own class.

For unit embeddings ``x`` (b, d), a class matrix ``W`` (n, d) with unit rows and labels ``y`` (b,)::

    cos θ_ij = x_i · W_j
    logit_ij = s · cos(θ_ij + m)   if j = y_i       (the margin is added to the angle of the own class)
             = s · cos θ_ij        otherwise
    L        = mean_i cross_entropy(logit_i, y_i)

The margin means an image's embedding has to lie m radians closer to its own row than a plain
softmax would ask: the classes are pulled into tight caps on the sphere. ``tests/test_train_ssquare.py``
checks :func:`arcface_loss` against pytorch-metric-learning's ``ArcFaceLoss`` (margin in degrees).

**Drip training** grows the class set in stages; :meth:`ArcFaceHead.grown` appends rows for the
new images, initialised from the current model's embeddings of them (S-square's
``--build-w-matrix``), so the new classes start where the model already puts those images and
the loss does not jump back to log(n). Taught in ``notebooks/04_descriptor_2nd_ssquare``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

#: S-square's published head (``docs/methods.md``, "S-square")
MARGIN, SCALE = 0.4, 40.0


def arcface_logits(x: torch.Tensor, W: torch.Tensor, y: torch.Tensor, m: float = MARGIN,
                   s: float = SCALE) -> torch.Tensor:
    """ArcFace logits. Shapes: x (b, d), W (n, d) (both normalised here), y (b,) -> (b, n)."""
    cos = (F.normalize(x, dim=1) @ F.normalize(W, dim=1).T).clamp(-1 + 1e-7, 1 - 1e-7)
    own = F.one_hot(y.long(), W.shape[0]).bool()
    theta = torch.acos(cos)
    return s * torch.where(own, torch.cos(theta + m), cos)


def arcface_loss(x: torch.Tensor, W: torch.Tensor, y: torch.Tensor, m: float = MARGIN,
                 s: float = SCALE) -> torch.Tensor:
    """Mean cross-entropy of :func:`arcface_logits` (module docstring). Returns a scalar."""
    return F.cross_entropy(arcface_logits(x, W, y, m, s), y.long())


def margin_degrees(m: float) -> float:
    """The margin in degrees (pytorch-metric-learning's ``ArcFaceLoss(margin=...)`` unit)."""
    return math.degrees(m)


class ArcFaceHead(nn.Module):
    """The class matrix ``W`` (n_classes, dim) and the ArcFace loss, as a trainer criterion.

    Args:
        n_classes: one per training image (drip stage k: the first ``n_k`` images).
        dim: embedding size.
        m, s: margin (radians) and scale.
        init: (n_classes, dim) initial rows (e.g. embeddings of the images); default Xavier-uniform
            drawn from ``seed`` (the same on every rank: the criterion is not broadcast by DDP).

    Shapes: ``forward(x (b, dim), y (b,)) -> scalar``; labels are class indices in [0, n_classes).
    """

    def __init__(self, n_classes: int, dim: int, m: float = MARGIN, s: float = SCALE,
                 init: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        if n_classes < 1:
            raise ValueError("n_classes must be >= 1")
        self.n_classes, self.dim, self.m, self.s = int(n_classes), int(dim), float(m), float(s)
        if init is not None:
            if tuple(init.shape) != (self.n_classes, self.dim):
                raise ValueError(f"init rows {tuple(init.shape)} for {self.n_classes} classes of {self.dim}-d")
            w = F.normalize(init.detach().float().clone(), dim=1)
        else:
            bound = math.sqrt(6.0 / (self.n_classes + self.dim))
            g = torch.Generator().manual_seed(int(seed))
            w = (torch.rand(self.n_classes, self.dim, generator=g) * 2 - 1) * bound
        self.weight = nn.Parameter(w)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return arcface_loss(x.float(), self.weight, y.to(x.device), self.m, self.s)

    def grown(self, new_rows: torch.Tensor) -> "ArcFaceHead":
        """A head with ``new_rows`` (k, dim) appended as classes n..n+k-1 (normalised); the old rows kept."""
        rows = torch.cat([self.weight.detach().cpu(), F.normalize(new_rows.detach().float().cpu(), dim=1)])
        return ArcFaceHead(len(rows), self.dim, self.m, self.s, init=rows)

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, dim={self.dim}, m={self.m}, s={self.s}"
