"""Contrastive loss with a cross-batch memory of negatives (lyakaap, descriptor track 1st).

Yokoo, "Contrastive Learning with Large Memory Bank and NES", arXiv 2112.04323 (``docs/methods.md``,
"lyakaap"): pytorch-metric-learning's ``ContrastiveLoss(pos_margin=0, neg_margin=1)`` wrapped in
``CrossBatchMemory`` (Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020) with
20,000 embeddings. This module is the same computation written out, so that it can be read,
checkpointed and distributed; ``tests/test_train_losses.py`` checks it against the library.

For anchors ``x`` (b, d) with labels ``y`` (b,) and a memory ``M`` (m, d) with labels ``z`` (m,)::

    D_ij   = || x_i / |x_i| - M_j / |M_j| ||_2                      (L2 of normalised rows)
    pos    = {(i, j): y_i = z_j, j not the slot of x_i itself}
    neg    = {(i, j): y_i != z_j}
    L_pos  = mean of the non-zero relu(D_ij - m_pos) over pos      (0 if none is non-zero)
    L_neg  = mean of the non-zero relu(m_neg - D_ij) over neg
    L      = L_pos + L_neg

Before the loss, the batch is written (detached) into the ring buffer ``M``, so the current
batch is its own first set of negatives and the memory holds the last ``m`` embeddings of the
previous iterations: many more negatives than one batch gives on one GPU, at no extra forward
cost. Gradients flow through the anchors only. "Averaging over non-zero terms" means that easy
negatives (already beyond the margin) do not dilute the loss as the memory grows.

Taught in ``notebooks/03_descriptor_1st_lyakaap``.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def pair_distances(x: torch.Tensor, xm: torch.Tensor) -> torch.Tensor:
    """L2 distances between normalised rows. Shapes: (b, d), (m, d) -> (b, m)."""
    return torch.cdist(F.normalize(x, dim=1), F.normalize(xm, dim=1))


def _mean_nonzero(v: torch.Tensor) -> torch.Tensor:
    nz = v[v > 0]
    return nz.mean() if nz.numel() else (v * 0).sum()


def contrastive_loss(x: torch.Tensor, y: torch.Tensor, xm: torch.Tensor | None = None,
                     ym: torch.Tensor | None = None, pos_margin: float = 0.0, neg_margin: float = 1.0,
                     self_index: torch.Tensor | None = None) -> torch.Tensor:
    """The contrastive loss between anchors and a reference set (the batch itself by default).

    Args:
        x: (b, d) anchor embeddings; y: (b,) integer labels (same label = same image).
        xm, ym: (m, d) and (m,) reference embeddings and labels; default ``x``, ``y``.
        pos_margin, neg_margin: positives are pulled below ``pos_margin``, negatives pushed
            beyond ``neg_margin`` (lyakaap: 0 and 1.0; 1.1 for the fine-tune on GT pairs).
        self_index: (b,) column of each anchor's own copy in ``xm`` (excluded from the
            positives); default: ``arange(b)`` when the reference set is the batch, none otherwise.

    Returns:
        A scalar: mean of the non-zero positive terms + mean of the non-zero negative terms.
    """
    if xm is None:
        xm, ym = x, y
        if self_index is None:
            self_index = torch.arange(len(x), device=x.device)
    D = pair_distances(x, xm)
    same = y[:, None] == ym[None, :]
    pos_mask = same.clone()
    if self_index is not None:
        pos_mask[torch.arange(len(x), device=x.device), self_index] = False
    pos = F.relu(D[pos_mask] - pos_margin)
    neg = F.relu(neg_margin - D[~same])
    return _mean_nonzero(pos) + _mean_nonzero(neg)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (rank order), keeping the gradient of the local part.

    Without ``torch.distributed`` initialised, returns ``x``. This is what pytorch-metric-learning's
    ``DistributedLossWrapper`` does for lyakaap: every rank sees the global batch, so the memory
    bank is identical on all ranks.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_labels(y: torch.Tensor) -> torch.Tensor:
    """Labels of every process, in rank order (no gradient)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return y
    out = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(out, y.contiguous())
    return torch.cat(out)


class XBMContrastiveLoss(nn.Module):
    """Contrastive loss over a cross-batch memory (ring buffer of the last ``memory_size`` embeddings).

    The memory is a set of buffers (``embeddings``, ``labels``, ``ptr``, ``filled``): saved in
    the module's ``state_dict``, so a checkpoint resumes with the same negatives. Under
    ``torchrun`` the global batch is gathered first (``distributed=True``) and every rank holds
    the same memory; each rank's loss is computed for the global batch's anchors, as in
    pytorch-metric-learning's ``DistributedLossWrapper`` (gradients are summed by DDP).

    Args:
        dim: embedding size d.
        memory_size: m (lyakaap: 20,000; 1,000 for the fine-tune on ground-truth pairs).
        pos_margin, neg_margin: see :func:`contrastive_loss`.
        distributed: gather the batch from all processes when ``torch.distributed`` is initialised.

    Shapes: ``forward(x (b, d), y (b,)) -> scalar``.
    """

    def __init__(self, dim: int, memory_size: int = 20_000, pos_margin: float = 0.0, neg_margin: float = 1.0,
                 distributed: bool = True):
        super().__init__()
        if memory_size < 1:
            raise ValueError("memory_size must be >= 1")
        self.dim, self.memory_size = int(dim), int(memory_size)
        self.pos_margin, self.neg_margin = float(pos_margin), float(neg_margin)
        self.distributed = distributed
        self.register_buffer("embeddings", torch.zeros(self.memory_size, self.dim))
        self.register_buffer("labels", torch.zeros(self.memory_size, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))

    @property
    def size(self) -> int:
        """How many slots hold an embedding."""
        return self.memory_size if bool(self.filled) else int(self.ptr)

    def reset(self) -> None:
        self.embeddings.zero_()
        self.labels.zero_()
        self.ptr.zero_()
        self.filled.fill_(False)

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Write a batch into the ring buffer; returns the (b,) slots it went to."""
        b = len(x)
        if b > self.memory_size:
            raise ValueError(f"a batch of {b} embeddings does not fit a memory of {self.memory_size}")
        p = int(self.ptr)
        slots = (torch.arange(p, p + b, device=self.embeddings.device) % self.memory_size)
        self.embeddings[slots] = x.detach().to(self.embeddings.dtype)
        self.labels[slots] = y.to(self.labels.device)
        new = (p + b) % self.memory_size
        if new <= p:
            self.filled.fill_(True)
        self.ptr.fill_(new)
        return slots

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            x, y = gather_with_grad(x), gather_labels(y)
        y = y.to(x.device).long()
        if self.embeddings.device != x.device:
            self.to(x.device)
        slots = self.enqueue(x.float(), y)
        n = self.size
        return contrastive_loss(x.float(), y, self.embeddings[:n], self.labels[:n], self.pos_margin,
                                self.neg_margin, self_index=slots)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, memory_size={self.memory_size}, pos_margin={self.pos_margin}, "
                f"neg_margin={self.neg_margin}")
