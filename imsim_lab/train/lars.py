"""LARS: SGD with momentum and a per-layer trust ratio (You, Gitman, Ginsburg, arXiv 1708.03888).

SSCD trains with LARS (momentum 0.9, weight decay 1e-6, trust coefficient 0.001) at a learning
rate of 0.3 per 256 images with a linear warm-up and cosine decay (Pizzi et al., arXiv
2202.10261; ``docs/methods.md``, "SSCD"). For each weight matrix or kernel ``w`` with gradient
``g``::

    g' = g + wd · w
    r  = η · ||w|| / ||g'||        (1 when either norm is 0)
    v  = μ · v + r · g'
    w  = w - lr · v

Biases and normalisation parameters (1-D tensors) are neither decayed nor adapted, as in SimCLR
and SSCD. ``optimizer="lars"`` of :class:`~imsim_lab.train.trainer.TrainConfig` selects it.
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """LARS over parameter groups (``lr``, ``momentum``, ``weight_decay``, ``trust``)."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust: float = 0.001):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust <= 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0 and trust > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    wn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where((wn > 0) & (gn > 0), group["trust"] * wn / gn, torch.ones_like(wn))
                    g = g * ratio
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss
