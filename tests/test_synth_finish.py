"""The photographic finish of disc-synth 2.0: framing, photo micro-texture, tone; siblings share it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imsim_lab.data.synth.finish import photo_detail, photo_textures, reframe, tone_curve
from imsim_lab.data.synth.scenes import DEFAULT_FINISH, Finish, render_scene


def _canvas(h=60, w=80):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xx / w, yy / h, np.full_like(xx, 0.5)], -1)


def test_reframe_keeps_size_and_is_seeded():
    c = _canvas()
    a = reframe(c, np.random.default_rng(1))
    assert a.shape == c.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, reframe(c, np.random.default_rng(1)))
    # a zoomed crop of a horizontal ramp spans less than the whole ramp
    z = reframe(c, np.random.default_rng(1), max_zoom=3.0)
    assert np.ptp(z[..., 0]) < np.ptp(c[..., 0])
    assert np.allclose(reframe(c, np.random.default_rng(1), max_zoom=1.0), c, atol=1 / 255)


def test_photo_detail_adds_texture_only_from_given_photos():
    c = _canvas()
    assert photo_detail(c, np.random.default_rng(0), textures=()) is c
    tex = (np.random.default_rng(0).integers(0, 256, (50, 70)).astype(np.uint8),)
    d = photo_detail(c, np.random.default_rng(0), textures=tex)
    assert d.shape == c.shape and not np.array_equal(d, c)
    # multiplicative around 1: the local mean is kept (high-pass detail)
    assert abs(float(d.mean() - c.mean())) < 0.05
    assert np.array_equal(d, photo_detail(c, np.random.default_rng(0), textures=tex))
    assert len(photo_textures()) >= 2 and all(t.dtype == np.uint8 and t.ndim == 2 for t in photo_textures())


def test_tone_curve_is_monotone_per_channel():
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, -1)
    img = Image.fromarray(np.repeat(ramp, 4, 0), "RGB")
    out = np.asarray(tone_curve(img, np.random.default_rng(3), saturation=(1.0, 1.0)), np.int32)
    assert out.shape == (4, 256, 3)
    assert (np.diff(out[0], axis=0) >= 0).all()  # grey ramp stays non-decreasing in every channel
    assert not np.array_equal(out[0], ramp[0])


def test_finish_steps_can_be_switched_off_and_siblings_share_the_look():
    size = (96, 72)
    plain = np.asarray(render_scene("texture", 4, size, finish=Finish(False, False, False)), np.float32)
    full = np.asarray(render_scene("texture", 4, size), np.float32)
    assert DEFAULT_FINISH == Finish() and np.abs(plain - full).mean() > 2
    a = np.asarray(render_scene("still_life", 9, size), np.float32)
    s = np.asarray(render_scene("still_life", 9, size, sibling=1), np.float32)
    b = np.asarray(render_scene("still_life", 10, size), np.float32)
    assert 0 < np.abs(a - s).mean() < np.abs(a - b).mean()


@pytest.mark.parametrize("bad", [-0.5, 2.0])
def test_camera_finish_survives_out_of_range_canvases(bad):
    from imsim_lab.data.synth.render import camera_finish

    c = _canvas()
    c[:10, :10] = bad  # scenes may overshoot (light shafts) or undershoot
    img = np.asarray(camera_finish(c, np.random.default_rng(0)))
    assert img.dtype == np.uint8 and img.shape == (60, 80, 3)
    assert img[:10, :10].mean() < 40 if bad < 0 else img[:10, :10].mean() > 200
