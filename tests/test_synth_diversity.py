"""diversity_stats against a brute-force computation."""

from __future__ import annotations

import numpy as np
import pytest

from imsim_lab.synth.diversity import diversity_stats


def test_diversity_stats_brute_force():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((12, 8)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    groups = np.array(["", "g1", "g1", "", "", "g2", "g2", "g2", "", "", "", ""])
    scenes = np.array(["a", "b"] * 6)
    s = diversity_stats(xb, groups, scenes)
    pairs, maxes = [], []
    for i in range(12):
        row = [float(xb[i] @ xb[j]) for j in range(12) if j != i and not (groups[i] and groups[i] == groups[j])]
        pairs += row
        maxes.append(max(row))
    assert s.n == 12
    assert s.mean_cos == pytest.approx(np.mean(pairs), abs=1e-4)
    assert s.median_max_cos == pytest.approx(np.median(maxes), abs=1e-4)
    assert set(s.per_scene) == {"a", "b"} and s.per_scene["a"]["n"] == 6
    # identical descriptors are maximally similar unless they are siblings of one group
    same = np.repeat(xb[:1], 3, axis=0)
    assert diversity_stats(same).median_max_cos == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        diversity_stats(xb[:1])
