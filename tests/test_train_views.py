"""Two-view augmentation, its schedule, the training data sets and the epoch sampler."""

import numpy as np
import pytest
from PIL import Image

from imsim_lab.train import (LYAKAAP_SCHEDULE, NEGATIVE_OFFSET, STAGES, EpochBatches, PairImages, TrainDataError,
                             TwoViewImages, hard_view, moderate_view, view_rng)
from imsim_lab.train.views import random_erase, random_resized_crop


def _image(seed=0, w=96, h=72):
    a = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a)


def _folder(tmp_path, n=6):
    paths = []
    for i in range(n):
        p = tmp_path / f"T{i:06d}.jpg"
        _image(i).save(p)
        paths.append(p)
    return paths


def test_published_magnitudes_grow_with_resolution():
    v83, v86, v98 = (STAGES.get(n) for n in ("v83", "v86", "v98"))
    assert (v83.size, v86.size, v98.size) == (256, 384, 512)
    assert v83.jitter < v86.jitter < v98.jitter and v83.p < v86.p < v98.p
    assert v83.overlay_p < v86.overlay_p < v98.overlay_p and v83.opacity_lower > v98.opacity_lower
    assert [s.stage for s in LYAKAAP_SCHEDULE] == ["v83", "v86", "v98"]
    assert LYAKAAP_SCHEDULE[-1].reference_negatives == 2 and LYAKAAP_SCHEDULE[-1].lr_schedule == "linear"


def test_views_are_pure_functions_of_the_seed():
    st = STAGES.get("v98").scaled(size=48, p=1.0, overlay_p=0.0)  # every op of the list applied
    img = _image()
    a1, s1 = hard_view(img, st, view_rng(0, 1, 2, 1))
    a2, s2 = hard_view(img, st, view_rng(0, 1, 2, 1))
    assert s1 == s2 and np.array_equal(np.asarray(a1), np.asarray(a2))
    assert a1.size == (48, 48) and {"color_jitter", "jpeg", "text", "emoji"} <= set(s1)
    b, _ = hard_view(img, st, view_rng(0, 2, 2, 1))  # another epoch, another view
    assert not np.array_equal(np.asarray(a1), np.asarray(b))
    m, steps = moderate_view(img, st, view_rng(0, 0, 0, 0))
    assert m.size == (48, 48) and steps[0] == "crop"


def test_random_resized_crop_and_erase():
    rng = np.random.default_rng(0)
    out = random_resized_crop(_image(w=200, h=100), 32, (0.5, 1.0), rng)
    assert out.size == (32, 32)
    x = np.zeros((3, 20, 20), np.float32)
    y = random_erase(x, np.random.default_rng(1))
    assert (y != 0).any() and (x == 0).all()  # a copy, the input is untouched


def test_two_view_dataset_items(tmp_path):
    paths = _folder(tmp_path)
    st = STAGES.get("v83").scaled(size=32, overlay_p=1.0)
    ds = TwoViewImages(paths, st, (0.5,) * 3, (0.5,) * 3, seed=0, negatives=paths[:3], n_negatives=2)
    x, y = ds[(4, 0)]
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    assert y[0] == y[1] == 4 and (y[2:] >= NEGATIVE_OFFSET).all()
    x2, _ = ds[(4, 0)]
    assert np.array_equal(x, x2)
    (a, sa), (b, sb) = ds.views(1, 0)
    assert any(s.startswith("overlay") for s in sb)
    import pickle  # DataLoader workers started with "spawn" receive the data set pickled

    assert np.array_equal(pickle.loads(pickle.dumps(ds))[(4, 0)][0], x)


def test_pair_dataset(tmp_path):
    paths = _folder(tmp_path)
    ds = PairImages(paths[:2], paths[2:4], 24, (0.5,) * 3, (0.5,) * 3, negatives=paths[4:], n_negatives=1)
    x, y = ds[(1, 0)]
    assert x.shape == (3, 3, 24, 24) and list(y[:2]) == [1, 1] and y[2] >= NEGATIVE_OFFSET


def test_unreadable_image_is_named(tmp_path):
    paths = _folder(tmp_path, 2)
    paths[1].write_bytes(b"garbage")
    ds = TwoViewImages(paths, STAGES.get("v83").scaled(size=16), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(TrainDataError, match="T000001.jpg: unreadable"):
        ds[(1, 0)]
    with pytest.raises(TrainDataError, match="no training images"):
        TwoViewImages([], STAGES.get("v83"), (0.5,) * 3, (0.5,) * 3)


def test_epoch_batches_partition_the_global_batch():
    one = EpochBatches(50, 8, seed=3)
    ranks = [EpochBatches(50, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(ranks[0]) == 6
    for b_one, b0, b1 in zip(one.batches(2), ranks[0].batches(2), ranks[1].batches(2)):
        assert b_one == b0 + b1
    assert one.batches(2, start=4) == one.batches(2)[4:]
    assert one.batches(1) != one.batches(2)
    with pytest.raises(TrainDataError, match="lower the batch size"):
        EpochBatches(5, 8)
