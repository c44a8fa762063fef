"""TwoViewImages(hard_only=True): both views hard, deterministic, the default unchanged."""

import numpy as np
from PIL import Image

from imsim_lab.train.data import TwoViewImages
from imsim_lab.train.views import STAGES


def _images(tmp_path, n=4):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"T{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_hard_only_draws_two_hard_views_and_keeps_the_default(tmp_path):
    paths = _images(tmp_path)
    st = STAGES.get("v98").scaled(size=32)
    plain = TwoViewImages(paths, st, (0.5,) * 3, (0.5,) * 3, seed=0)
    hard = TwoViewImages(paths, st, (0.5,) * 3, (0.5,) * 3, seed=0, hard_only=True)
    (_, sa), (_, sb) = plain.views(1, 0)
    (_, ha), (_, hb) = hard.views(1, 0)
    assert sb == hb                    # the second (hard) view is the same draw
    assert sa != ha                    # the first view is no longer the moderate one
    x1, y1 = hard[(1, 0)]
    x2, y2 = hard[(1, 0)]
    assert x1.shape == (2, 3, 32, 32) and np.array_equal(x1, x2) and list(y1) == [1, 1]
    xp, _ = plain[(1, 0)]
    assert np.array_equal(xp[1], x1[1]) and not np.array_equal(xp[0], x1[0])
