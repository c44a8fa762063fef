"""How many negatives a contrastive loss actually learns from (the case for a memory bank).

With the contrastive loss of Hadsell et al. (CVPR 2006) as lyakaap uses it (arXiv 2112.04323),
a negative contributes only while it is closer to the anchor than the margin (``relu(m - D)``
> 0): it is *active*. :func:`active_negatives` counts them among the first ``s`` embeddings of
distinct images, for several ``s`` (one batch ... a memory of many batches). When few of the
candidates are active, a small batch holds few of them; a cross-batch memory (Wang et al., XBM,
CVPR 2020) of earlier embeddings supplies more at no extra forward pass.
Taught in ``notebooks/03_descriptor_1st_lyakaap``; the loss is
:class:`imsim_lab.train.losses.XBMContrastiveLoss`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def active_negatives(x, sizes: Sequence[int], margin: float = 1.0) -> pd.DataFrame:
    """Active negatives per anchor among the first ``s`` candidates.

    Args:
        x: (n, d) embeddings of n distinct images (numpy or torch; L2-normalised for the margin
            to mean what it means in the loss). Every other image is a negative of each anchor.
        sizes: candidate counts s (each at most n); the candidates of anchor i are rows 0..s-1
            other than i.
        margin: the negative margin (lyakaap: 1.0; fine-tune 1.1).

    Returns:
        DataFrame indexed by ``candidates`` with ``active_per_anchor`` (mean count over the n
        anchors) and ``active_share`` (mean share of the anchor's candidates that are active).
    """
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, np.float64)
    n = len(a)
    sq = (a * a).sum(1)
    D = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * a @ a.T, 0.0))
    np.fill_diagonal(D, np.inf)
    rows = []
    for s in sizes:
        s = int(s)
        if not 1 <= s <= n:
            raise ValueError(f"candidate count {s} outside 1..{n}")
        act = (D[:, :s] < margin).sum(1)
        n_cand = s - (np.arange(n) < s)
        share = np.where(n_cand > 0, act / np.maximum(n_cand, 1), np.nan)
        rows.append({"candidates": s, "active_per_anchor": float(act.mean()),
                     "active_share": float(np.nanmean(share)) if np.isfinite(share).any() else float("nan")})
    return pd.DataFrame(rows).set_index("candidates")
