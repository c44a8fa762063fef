"""Small layers: GeM pooling and L2 normalisation.

GeM (Radenović et al., "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018,
eq. 3):  f_c = ( mean_{h,w} max(x_chw, eps)^p )^(1/p).  p = 1 is average pooling, p -> inf max
pooling; SSCD uses p = 3, lyakaap p = 1, BoT p = 3 (``docs/methods.md``, "GeM pooling").
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """GeM pooling of (b, c, h, w) feature maps -> (b, c)."""
    if not torch.is_tensor(p) and p == 1.0:
        return x.clamp(min=eps).mean(dim=(-2, -1))
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling with a fixed or learnable exponent ``p``.

    Shapes: (b, c, h, w) -> (b, c).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False):
        super().__init__()
        self.eps = eps
        if learnable:
            self.p = nn.Parameter(torch.tensor(float(p)))
        else:
            self.register_buffer("p", torch.tensor(float(p)), persistent=False)
        self.learnable = learnable
        self._p_fixed = float(p)  # read without a device sync (float() of a CUDA tensor waits for the GPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pow in float32: fp16 overflows for p = 3 on large activations under autocast
        p = self.p if self.learnable else self._p_fixed
        return gem(x.float(), p, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()):.2f}, eps={self.eps}, learnable={self.learnable}"


class L2Norm(nn.Module):
    """Divide each row by its L2 norm. Shapes: (b, d) -> (b, d)."""

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, eps=self.eps)
