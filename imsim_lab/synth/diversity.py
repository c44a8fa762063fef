"""How different are the originals of a benchmark, as a copy-detection descriptor sees them?

A synthetic benchmark is only useful when its distinct originals are as far apart as distinct
photographs are. Measured with SSCD (cosine of 512-d unit descriptors), natural photos have a
mean cosine of about 0.02-0.03 between distinct originals and a median "max cosine to another
original" of about 0.12-0.16; naive procedural images give 0.32 / 0.47. :func:`diversity_stats`
computes both figures (and per scene family) from descriptors; :func:`measure_originals` runs a
model over a benchmark's references. The figures of disc-synth are in ``data_manifests/disc-synth.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DiversityStats:
    """Cosine statistics of distinct originals (siblings of one group are not compared).

    Attributes:
        n: number of originals.
        mean_cos: mean cosine over every pair of distinct originals.
        median_max_cos: median over originals of the largest cosine to another original.
        p90_max_cos: 90th percentile of the same.
        per_scene: {scene: {"n", "mean_cos" (to every other original), "median_max_cos"}}.
    """

    n: int
    mean_cos: float
    median_max_cos: float
    p90_max_cos: float
    per_scene: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"n": self.n, "mean_cos": self.mean_cos, "median_max_cos": self.median_max_cos,
                "p90_max_cos": self.p90_max_cos, "per_scene": self.per_scene}


def diversity_stats(xb: np.ndarray, groups=None, scenes=None) -> DiversityStats:
    """Cosine statistics of a set of L2-normalised descriptors.

    Args:
        xb: (n, d) float32, unit rows (cosine = inner product).
        groups: (n,) sibling group per original ("" = none); members of one group are not
            distinct originals and are left out of each other's statistics.
        scenes: (n,) scene family per original, for the per-scene breakdown.

    Returns:
        :class:`DiversityStats`.
    """
    xb = np.asarray(xb, np.float32)
    n = len(xb)
    if n < 2:
        raise ValueError("need at least two originals")
    S = xb @ xb.T
    mask = ~np.eye(n, dtype=bool)
    if groups is not None:
        g = np.asarray(groups).astype(str)
        same = (g[:, None] == g[None, :]) & (g[:, None] != "")
        mask &= ~same
    cnt = mask.sum(1)
    row_mean = np.where(cnt > 0, (S * mask).sum(1) / np.maximum(cnt, 1), np.nan)
    row_max = np.where(mask, S, -np.inf).max(1)
    mean_cos = float((S * mask).sum() / mask.sum())
    per_scene = {}
    if scenes is not None:
        sc = np.asarray(scenes).astype(str)
        for s in sorted(set(sc)):
            m = sc == s
            per_scene[s] = {"n": int(m.sum()), "mean_cos": round(float(np.nanmean(row_mean[m])), 4),
                            "median_max_cos": round(float(np.median(row_max[m])), 4)}
    return DiversityStats(n, round(mean_cos, 4), round(float(np.median(row_max)), 4),
                          round(float(np.percentile(row_max, 90)), 4), per_scene)


def measure_originals(bench, model_name: str = "sscd_disc_mixup_onnx", max_images: int | None = None,
                      batch_size: int = 32, progress=None) -> DiversityStats:
    """Embed the references of a benchmark with a model and return their :class:`DiversityStats`.

    Args:
        bench: a :class:`~imsim_lab.benchmark.Benchmark`.
        model_name: a name of :func:`imsim_lab.models.create_model` (default: SSCD, bundled ONNX).
        max_images: the first N references only (None: all).
        progress: ``progress(done, total)``.
    """
    from ..models import create_model

    model = create_model(model_name, device="cpu")
    prep = model.preprocess
    ids = list(bench.reference_ids[:max_images] if max_images else bench.reference_ids)
    xs = []
    for i in range(0, len(ids), batch_size):
        xs.append(model.embed([prep(bench.load_image(r)) for r in ids[i:i + batch_size]]))
        if progress:
            progress(min(i + batch_size, len(ids)), len(ids))
    xb = np.concatenate(xs)
    refs = bench.references
    groups = scenes = None
    if refs is not None:
        r = refs.set_index("reference_id").loc[ids]
        groups, scenes = r["sibling_group"].to_numpy(), r["scene"].to_numpy()
    return diversity_stats(xb, groups, scenes)
