"""The contrastive loss with cross-batch memory against pytorch-metric-learning (the reference)."""

import pytest
import torch
import torch.nn.functional as F

from imsim_lab.train import XBMContrastiveLoss, contrastive_loss

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning.losses import ContrastiveLoss, CrossBatchMemory  # noqa: E402


def _batch(seed, b=12, d=16, n_labels=6):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g), dim=1)
    y = torch.randint(0, n_labels, (b,), generator=g)
    return x, y


@pytest.mark.parametrize("margins", [(0.0, 1.0), (0.1, 1.1), (0.0, 0.5)])
def test_batch_loss_equals_pml(margins):
    x, y = _batch(0)
    ref = ContrastiveLoss(pos_margin=margins[0], neg_margin=margins[1])(x, y)
    mine = contrastive_loss(x, y, pos_margin=margins[0], neg_margin=margins[1])
    assert torch.allclose(mine, ref, atol=1e-6), (mine, ref)


def test_gradient_equals_pml():
    x, y = _batch(1)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ContrastiveLoss(0.0, 1.0)(xa, y).backward()
    contrastive_loss(xb, y).backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6)


def test_memory_equals_pml_over_iterations_with_wraparound():
    d, m = 16, 30  # 12-row batches: the ring buffer wraps on the third call
    ref = CrossBatchMemory(ContrastiveLoss(0.0, 1.0), embedding_size=d, memory_size=m)
    mine = XBMContrastiveLoss(d, m, 0.0, 1.0)
    for it in range(6):
        x, y = _batch(10 + it)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        la, lb = ref(xa, y), mine(xb, y)
        la.backward()
        lb.backward()
        assert torch.allclose(la, lb, atol=1e-6), (it, la, lb)
        assert torch.allclose(xa.grad, xb.grad, atol=1e-6)
        assert mine.size == (m if ref.has_been_filled else ref.queue_idx)
        assert torch.equal(mine.embeddings, ref.embedding_memory)


def test_memory_is_in_state_dict_and_resumes():
    a = XBMContrastiveLoss(8, 20)
    for s in range(3):
        a(*_batch(s, b=8, d=8))
    b = XBMContrastiveLoss(8, 20)
    b.load_state_dict(a.state_dict())
    x, y = _batch(99, b=8, d=8)
    assert torch.equal(a(x, y), b(x, y))
    assert int(a.ptr) == int(b.ptr) and bool(a.filled) == bool(b.filled)


def test_larger_memory_sees_more_negatives():
    # the point of the memory: hard negatives from earlier batches enter the loss
    x0, y0 = _batch(0, b=8)
    near = F.normalize(x0 + 0.05 * torch.randn_like(x0), dim=1)
    loss_mem = XBMContrastiveLoss(16, 64)
    loss_mem(x0, y0)
    with_mem = loss_mem(near, y0 + 100)  # other labels: the old rows are close negatives
    assert with_mem > contrastive_loss(near, y0 + 100) - 1e-6


def test_errors():
    with pytest.raises(ValueError):
        XBMContrastiveLoss(4, 0)
    with pytest.raises(ValueError):
        XBMContrastiveLoss(4, 3).enqueue(torch.zeros(5, 4), torch.zeros(5, dtype=torch.long))
