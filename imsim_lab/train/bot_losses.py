"""The losses of Bag of Tricks and D2LV (VisionForce; arXiv 2111.08004, 2111.07090).

``docs/methods.md``, "Bag of Tricks". With z_w = W_w f_wide and z_h = W_h f_head the logits of
two bias-free classifiers (one class per training image) on the wide (4c-d) and the head
(256-d) feature, and g the GeM feature:

    L_BoT  = 10 CE_ε(z_w, y) + 1 CE_ε(z_h, y) + 2 KD_T(z_w -> z_h) + 1 ST(g, y)
    L_D2LV = 10 CE_ε(z_w, y) + 1 ST(g, y)

* CE_ε: cross-entropy with label smoothing ε = 0.1 (Szegedy et al., "Rethinking the Inception
  Architecture", arXiv 1512.00567, sec. 7): the target is (1 - ε) one-hot + ε / K.
* KD_T: knowledge distillation (Hinton, Vinyals, Dean, arXiv 1503.02531) from the wide
  classifier (the teacher, no gradient) to the head's: T² KL(softmax(z_w / T) ‖ softmax(z_h / T)),
  averaged over the batch, T = 2.
* ST: the batch-hard soft-margin triplet loss (Hermans, Beyer, Leibe, "In Defense of the Triplet
  Loss", arXiv 1703.07737; with margin 0 as in Ge et al.'s Mutual Mean-Teaching, arXiv
  2001.01526): for each anchor its farthest positive and nearest negative in the batch (Euclidean
  on g), loss = softplus(d_ap - d_an). Not Qian et al.'s SoftTriple.

:class:`BoTLoss` holds the two classifiers, so the trainer optimises and checkpoints them with the
network; the model's training output is ``cat([g, f_wide, f_head])``
(:class:`~imsim_lab.features.models.bot.BoTNet`). Taught in ``notebooks/05_descriptor_3rd_bag_of_tricks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

#: published: ε, T and the weights of CE(wide), CE(head), KD, triplet
EPSILON, TEMPERATURE = 0.1, 2.0


@dataclass(frozen=True)
class BoTWeights:
    """The weights of the four terms (published: 10 / 1 / 2 / 1; D2LV: 10 / 0 / 0 / 1)."""

    ce_wide: float = 10.0
    ce_head: float = 1.0
    kd: float = 2.0
    triplet: float = 1.0


PUBLISHED_BOT, PUBLISHED_D2LV = BoTWeights(), BoTWeights(10.0, 0.0, 0.0, 1.0)


def label_smoothed_ce(logits: torch.Tensor, y: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """Mean of -Σ_k q_k log softmax(logits)_k with q = (1 - ε) onehot(y) + ε / K. Shapes: (n, K), (n,)."""
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    return ((1 - eps) * nll - eps * logp.mean(dim=1)).mean()


def distillation(student: torch.Tensor, teacher: torch.Tensor, T: float = TEMPERATURE) -> torch.Tensor:
    """T² KL(softmax(teacher / T) ‖ softmax(student / T)), mean over rows; the teacher gets no gradient."""
    p = F.softmax(teacher.detach().float() / T, dim=1)
    logq = F.log_softmax(student.float() / T, dim=1)
    return (T * T) * (p * (torch.log(p.clamp_min(1e-30)) - logq)).sum(dim=1).mean()


def batch_hard_soft_triplet(g: torch.Tensor, y: torch.Tensor, gb: torch.Tensor | None = None,
                            yb: torch.Tensor | None = None, idx: torch.Tensor | None = None) -> torch.Tensor:
    """mean_i softplus(max_{p: y_p = y_i, p != i} d_ip - min_{n: y_n != y_i} d_in), Euclidean d.

    The anchors are the rows of ``g`` (labels ``y``); the positives and negatives are searched
    among ``gb`` (labels ``yb``; default: the anchors themselves), where anchor i is row ``idx[i]``
    (default i). Under DDP ``gb`` is the global batch, so every rank mines as one process would.
    Anchors without a positive or a negative in the batch are left out (0 when none is left).
    """
    g = g.float()
    gb = g if gb is None else gb.float()
    yb = y if yb is None else yb
    idx = torch.arange(len(y), device=g.device) if idx is None else idx
    d = torch.cdist(g, gb).clamp_min(0)
    same = y[:, None] == yb[None, :]
    eye = torch.zeros(len(y), len(yb), dtype=torch.bool, device=g.device)
    eye[torch.arange(len(y), device=g.device), idx] = True
    pos, neg = same & ~eye, ~same
    ok = pos.any(1) & neg.any(1)
    if not ok.any():
        return g.sum() * 0.0
    d_ap = d.masked_fill(~pos, float("-inf")).max(1).values
    d_an = d.masked_fill(~neg, float("inf")).min(1).values
    return F.softplus(d_ap[ok] - d_an[ok]).mean()


class BoTLoss(nn.Module):
    """The weighted sum of the module docstring, with the two classifiers (no bias) as parameters.

    Args:
        n_classes: training images (one class each). dims: the widths of the model's training
            output, (c, 4c) or (c, 4c, head) (:attr:`BoTNet.dims`).
        weights: :class:`BoTWeights`. eps, T: label smoothing and temperature.
        distributed: under ``torch.distributed`` with several processes, the triplet's positives and
            negatives come from the global batch (gathered, the local part keeping its gradient, as
            :class:`~imsim_lab.train.infonce.SSCDLoss` does): with equal halves, two processes then
            give the loss and gradients of one process with the whole batch (the CE and KD terms
            are means over rows, which the trainer's gradient averaging already makes global).

    ``forward(out (n, sum dims), y (n,)) -> scalar``; :meth:`terms` gives each unweighted term.
    """

    def __init__(self, n_classes: int, dims: tuple[int, ...], weights: BoTWeights = PUBLISHED_BOT,
                 eps: float = EPSILON, T: float = TEMPERATURE, seed: int = 0, distributed: bool = True):
        super().__init__()
        self.distributed = bool(distributed)
        if len(dims) not in (2, 3):
            raise ValueError(f"dims must be (gem, wide) or (gem, wide, head), not {dims}")
        if len(dims) == 2 and (weights.ce_head or weights.kd):
            raise ValueError("the head's CE and the distillation need a model with a head (3 dims)")
        self.dims, self.weights, self.eps, self.T = tuple(int(d) for d in dims), weights, float(eps), float(T)
        g = torch.Generator().manual_seed(seed)
        self.cls_wide = nn.Parameter(torch.randn(n_classes, dims[1], generator=g) * 0.001)
        self.cls_head = nn.Parameter(torch.randn(n_classes, dims[2], generator=g) * 0.001) if len(dims) == 3 else None

    def split(self, out: torch.Tensor) -> list[torch.Tensor]:
        if out.shape[1] != sum(self.dims):
            raise ValueError(f"model output of width {out.shape[1]}, expected {sum(self.dims)} = {self.dims}")
        return list(torch.split(out, self.dims, dim=1))

    def terms(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = self.split(out)
        g, wide = parts[0], parts[1]
        z_w = wide.float() @ self.cls_wide.T
        t = {"ce_wide": label_smoothed_ce(z_w, y, self.eps), "triplet": self._triplet(g, y)}
        if self.cls_head is not None:
            z_h = parts[2].float() @ self.cls_head.T
            t["ce_head"] = label_smoothed_ce(z_h, y, self.eps)
            t["kd"] = distillation(z_h, z_w, self.T)
        return t

    def _triplet(self, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                from .losses import gather_labels, gather_with_grad

                idx = torch.arange(len(y), device=g.device) + dist.get_rank() * len(y)
                return batch_hard_soft_triplet(g, y, gather_with_grad(g), gather_labels(y), idx)
        return batch_hard_soft_triplet(g, y)

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.weights
        t = self.terms(out, y)
        total = w.ce_wide * t["ce_wide"] + w.triplet * t["triplet"]
        if "ce_head" in t:
            total = total + w.ce_head * t["ce_head"] + w.kd * t["kd"]
        return total
