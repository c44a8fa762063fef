"""SSCD's loss: InfoNCE over the global batch plus a differential-entropy (KoLeo) regulariser.

Pizzi et al., "A Self-Supervised Descriptor for Image Copy Detection", CVPR 2022, arXiv 2202.10261,
section 3 (``docs/methods.md``, "SSCD"). The entropy term is the Kozachenko-Leonenko estimator
used by Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019.

Every embedding carries a set of *content ids* (the images it shows): two views of image i
carry {i}; a view mixed with image k (mixup / CutMix) carries {i, k}. Two embeddings are a
**positive pair** when their sets intersect ("shares content = positive"), and negatives otherwise.
Labels are given as a (n, c) integer array padded with -1 (a (n,) array is one id each).

For unit embeddings z (n, d), similarities s_ij = z_i · z_j, temperature τ::

    InfoNCE_i = - mean_{p in P(i)} [ s_ip / τ - log sum_{j != i} exp(s_ij / τ) ]
    entropy_i = - log( min_{j in N(i)} || z_i - z_j || )
    L = mean_i InfoNCE_i + λ · mean_i entropy_i

With one positive per anchor this is NT-Xent (SimCLR), checked against pytorch-metric-learning's
``NTXentLoss`` in ``tests/test_train_sscd.py``. Published: τ = 0.05, λ = 30 at a global batch of
4,096; the SSCD training notes advise a smaller λ (10) for small batches, where the nearest
negative is farther and the term is larger. Under ``torchrun`` the embeddings of all processes are
gathered (the local part keeps its gradient) and each process scores its own anchors against all:
every other image of the global batch is a negative. Taught in ``notebooks/09_sscd``.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .losses import gather_labels, gather_with_grad

#: published settings (``docs/methods.md``, "SSCD"); λ for small batches as the SSCD docs advise
TAU, LAMBDA, LAMBDA_SMALL_BATCH = 0.05, 30.0, 10.0


def content_sets(y: torch.Tensor) -> torch.Tensor:
    """(n,) or (n, c) labels -> (n, c) with -1 padding."""
    return y[:, None] if y.ndim == 1 else y


def positive_mask(ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """(na, nb) bool: rows of ``ya`` and ``yb`` (content sets, -1 = none) share an id."""
    a, b = content_sets(ya).long(), content_sets(yb).long()
    eq = (a[:, None, :, None] == b[None, :, None, :]) & (a[:, None, :, None] >= 0)
    return eq.flatten(2).any(-1)


def infonce_loss(z: torch.Tensor, y: torch.Tensor, tau: float = TAU, zb: torch.Tensor | None = None,
                 yb: torch.Tensor | None = None, self_index: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of anchors ``z`` (na, d) against candidates ``zb`` (nb, d) (default: ``z`` itself).

    Args:
        y, yb: content sets of the anchors and candidates (module docstring).
        tau: temperature.
        self_index: (na,) column of each anchor in ``zb`` (left out); default ``arange(na)`` when
            ``zb`` is ``z``.

    Returns:
        The mean over anchors with at least one positive (0 when none has one).
    """
    if zb is None:
        zb, yb = z, y
        self_index = torch.arange(len(z), device=z.device) if self_index is None else self_index
    z, zb = F.normalize(z.float(), dim=1), F.normalize(zb.float(), dim=1)
    logits = z @ zb.T / tau
    rows = torch.arange(len(z), device=z.device)
    pos = positive_mask(y, yb).to(z.device)
    if self_index is not None:
        logits = logits.index_put((rows, self_index), torch.tensor(float("-inf"), device=z.device))
        pos[rows, self_index] = False
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos.sum(1)
    keep = n_pos > 0
    if not keep.any():
        return (logits[torch.isfinite(logits)] * 0).sum()
    per_anchor = -(logp.masked_fill(~pos, 0.0)).sum(1)[keep] / n_pos[keep]
    return per_anchor.mean()


def entropy_loss(z: torch.Tensor, y: torch.Tensor, zb: torch.Tensor | None = None, yb: torch.Tensor | None = None,
                 self_index: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """The KoLeo term: -mean_i log(distance from z_i to its nearest non-matching candidate).

    Same arguments as :func:`infonce_loss`; anchors with no negative are left out.
    """
    if zb is None:
        zb, yb = z, y
        self_index = torch.arange(len(z), device=z.device) if self_index is None else self_index
    z, zb = F.normalize(z.float(), dim=1), F.normalize(zb.float(), dim=1)
    neg = ~positive_mask(y, yb).to(z.device)
    if self_index is not None:
        neg[torch.arange(len(z), device=z.device), self_index] = False
    d = torch.cdist(z, zb).masked_fill(~neg, float("inf"))
    nearest = d.min(1).values
    keep = torch.isfinite(nearest)
    if not keep.any():
        return (z * 0).sum()
    return -torch.log(nearest[keep] + eps).mean()


def sscd_loss(z: torch.Tensor, y: torch.Tensor, tau: float = TAU, lam: float = LAMBDA) -> tuple[torch.Tensor, dict]:
    """InfoNCE + λ · entropy on one set of embeddings. Returns (loss, {"infonce", "entropy"} floats)."""
    a, e = infonce_loss(z, y, tau), entropy_loss(z, y)
    return a + lam * e, {"infonce": float(a.detach()), "entropy": float(e.detach())}


class SSCDLoss(nn.Module):
    """The trainer's criterion: :func:`infonce_loss` + λ :func:`entropy_loss` over the global batch.

    Args:
        tau: temperature (0.05). lam: entropy weight (30 published; 10 for small batches).
        distributed: gather all processes' embeddings when ``torch.distributed`` is initialised.

    ``last`` holds the two terms of the latest call (floats), for the history of a notebook.
    Shapes: ``forward(z (b, d), y (b,) or (b, c)) -> scalar``.
    """

    def __init__(self, tau: float = TAU, lam: float = LAMBDA, distributed: bool = True):
        super().__init__()
        if tau <= 0 or lam < 0:
            raise ValueError("tau must be > 0 and lam >= 0")
        self.tau, self.lam, self.distributed = float(tau), float(lam), distributed
        self.last: dict = {}

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.to(z.device)
        zb, yb, idx = z, y, torch.arange(len(z), device=z.device)
        if self.distributed:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                zb, yb = gather_with_grad(z), gather_labels(y)
                idx = idx + dist.get_rank() * len(z)
        a = infonce_loss(z, y, self.tau, zb, yb, idx)
        e = entropy_loss(z, y, zb, yb, idx) if self.lam else z.sum() * 0
        self.last = {"infonce": float(a.detach()), "entropy": float(e.detach())}
        return a + self.lam * e

    def extra_repr(self) -> str:
        return f"tau={self.tau}, lam={self.lam}"
