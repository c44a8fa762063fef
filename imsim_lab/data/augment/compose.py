"""``chain``: 2-4 random edits in sequence, as most DISC21 queries are made.

The chain's ops are the concatenation of the ops of the families it drew, so a chained query
replays like any other; ``chain_families`` recovers which families were drawn.
"""

from __future__ import annotations

import numpy as np

from .core import FAMILIES, Op, register_family

#: Families never drawn inside a chain (itself), and the relative weight of the others.
_EXCLUDED = ("chain",)
_WEIGHTS = {"hflip": 2.0, "crop": 2.0, "scale": 1.5, "text": 1.5, "emoji": 1.5, "jpeg": 1.5,
            "color_jitter": 1.5, "combine": 0.5, "screenshot": 0.5, "airgap": 0.5, "meme": 0.5}


def chain_candidates() -> tuple[list[str], np.ndarray]:
    """Families a chain draws from and their probabilities."""
    names = [n for n in FAMILIES.names() if n not in _EXCLUDED]
    w = np.array([_WEIGHTS.get(n, 1.0) for n in names])
    return names, w / w.sum()


def sample_chain(s: float, rng: np.random.Generator, size, assets, n: int | None = None
                 ) -> tuple[list[str], list[Op]]:
    """Draw ``n`` (default 2-4) distinct families and their ops, each at strength ``s``."""
    names, prob = chain_candidates()
    n = int(rng.integers(2, 5)) if n is None else int(n)
    picked = [names[int(i)] for i in rng.choice(len(names), size=min(n, len(names)), replace=False, p=prob)]
    ops: list[Op] = []
    for name in picked:
        ops.extend(FAMILIES.get(name)(s, rng, size, assets))
    return picked, ops


@register_family("chain", group="chain", identity_at_zero=False)
def chain_family(s, rng, size, assets):
    """2-4 different edits one after the other, each at this strength."""
    return sample_chain(s, rng, size, assets)[1]
