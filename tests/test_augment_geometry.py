"""imsim_lab.data.augment: the project's own geometry (perspective, meme, frames, collage) and monotone strength."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imsim_lab.data.augment import (
    Assets, AugmentError, Op, apply_family, apply_ops, feed_frame, meme, perspective, perspective_coeffs,
    sample_ops,
)
from imsim_lab.data.augment.composite import collage, collage_layout
from imsim_lab.data.augment.geometric import crop_box_pixels


def _img(w=120, h=80, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _arr(img):
    return np.asarray(img).astype(int)


# -- perspective --------------------------------------------------------------------------------


def test_perspective_identity_corners_is_identity():
    img = _img()
    out = perspective(img, [[0, 0], [1, 0], [1, 1], [0, 1]])
    assert np.array_equal(_arr(out), _arr(img))
    # a numerically identical solve (not the shortcut) reproduces the pixels too
    coeffs = perspective_coeffs([(0, 0), (120, 0), (120, 80), (0, 80)], [(0, 0), (120, 0), (120, 80), (0, 80)])
    assert np.allclose(coeffs, [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-9)


def test_perspective_coeffs_map_each_destination_to_its_source():
    dst = [(10.0, 5.0), (90.0, 12.0), (100.0, 70.0), (3.0, 60.0)]
    src = [(0.0, 0.0), (120.0, 0.0), (120.0, 80.0), (0.0, 80.0)]
    a, b, c, d, e, f, g, h = perspective_coeffs(dst, src)
    for (x, y), (u, v) in zip(dst, src):
        den = g * x + h * y + 1
        assert (a * x + b * y + c) / den == pytest.approx(u, abs=1e-6)
        assert (d * x + e * y + f) / den == pytest.approx(v, abs=1e-6)
    with pytest.raises(AugmentError, match="degenerate"):
        perspective_coeffs([(0, 0), (1, 1), (2, 2), (3, 3)], src)


def test_perspective_corners_land_where_asked():
    w, h = 200, 160
    img = Image.new("RGB", (w, h), (0, 0, 0))
    marks = {(0, 0): (255, 0, 0), (1, 0): (0, 255, 0), (1, 1): (0, 0, 255), (0, 1): (255, 255, 0)}
    for (cx, cy), col in marks.items():  # a 12 px coloured square in each corner
        x0, y0 = (w - 12) * cx, (h - 12) * cy
        img.paste(col, (x0, y0, x0 + 12, y0 + 12))
    corners = [[0.2, 0.1], [0.9, 0.25], [0.75, 0.95], [0.05, 0.7]]
    out = _arr(perspective(img, corners, fill=(0, 0, 0)))
    for ((cx, cy), col), (fx, fy) in zip(marks.items(), corners):
        # the pixel just inside the requested corner position carries that corner's colour
        x = int(fx * w + (3 if cx == 0 else -3))
        y = int(fy * h + (3 if cy == 0 else -3))
        assert np.abs(out[y, x] - np.array(col)).max() < 60, ((cx, cy), out[y, x])
    # outside the warped quad the fill colour shows
    assert out[2, 2].tolist() == [0, 0, 0]


def test_perspective_family_keeps_size_and_fill():
    img = _img(100, 100)
    out, ops = apply_family(img, "perspective", 1.0, np.random.default_rng(3))
    assert out.size == img.size and ops[0].name == "perspective"
    assert len(ops[0].params["corners"]) == 4


# -- meme and frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("dark", [False, True])
def test_meme_band_is_added_above_the_unchanged_picture(dark):
    img = _img(200, 100)
    out = meme(img, Assets.default(), "HELLO WORLD", "Impact.ttf", band=0.3, style="band", dark=dark)
    assert out.size == (200, 130)
    assert np.array_equal(_arr(out)[30:], _arr(img))
    band = _arr(out)[:30]
    bg = 0 if dark else 255
    assert (band == bg).mean() > 0.5  # mostly background ...
    assert (band != bg).any()  # ... with the caption drawn in it
    # classic style: same size, text drawn on the picture's top
    out2 = meme(img, Assets.default(), "HI", "Impact.ttf", band=0.3, style="impact")
    assert out2.size == img.size and not np.array_equal(_arr(out2), _arr(img))
    assert np.array_equal(_arr(out2)[40:], _arr(img)[40:])


def test_meme_op_replays_and_grows_with_strength():
    img = _img(100, 100)
    seed = next(i for i in range(50) if sample_ops("meme", 0.5, i, img.size)[0].params["style"] == "band")
    heights = []
    for s in (0.0, 0.5, 1.0):
        ops = sample_ops("meme", s, np.random.default_rng(seed), img.size)
        heights.append(apply_ops(img, ops).height)
    assert heights == sorted(heights) and heights[0] > 100 and heights[-1] > heights[0]


def test_feed_frame_contains_the_picture_unchanged():
    img = _img(160, 120)
    out = feed_frame(img, Assets.default(), "anna_12", "nice day", "OpenSans-Bold.ttf", 0.2, False, [200, 0, 0])
    a = _arr(out)
    assert out.width > img.width and out.height > img.height
    pad = max(1, round(0.2 * 160) // 4)
    header = round(0.2 * 160)
    assert np.array_equal(a[pad + header:pad + header + 120, pad:pad + 160], _arr(img))
    assert (a[:pad + header] == 255).mean() > 0.5  # light theme header


# -- crop, collage ------------------------------------------------------------------------------


def test_crop_box_pixels_is_never_empty():
    assert crop_box_pixels([0.5, 0.5, 0.5, 0.5], (8, 8)) == (4, 4, 5, 5)
    assert crop_box_pixels([0.99, 0.99, 1.0, 1.0], (8, 8)) == (7, 7, 8, 8)
    assert crop_box_pixels([0.0, 0.0, 1.0, 1.0], (8, 8)) == (0, 0, 8, 8)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_collage_tiles_cover_the_canvas_and_hold_the_query(n):
    tiles = collage_layout(n, 0.4, 0.6, horizontal=False)
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in tiles)
    assert area == pytest.approx(1.0)
    img = Image.new("RGB", (60, 40), (255, 0, 0))
    others = [Image.new("RGB", (50, 50), (0, 0, 255)) for _ in range(n - 1)]
    out = _arr(collage(img, others, tiles, slot=n - 1, gap=0.0, gap_color=(0, 0, 0)))
    red = (out[..., 0] > 200) & (out[..., 2] < 50)
    x0, y0, x1, y1 = tiles[n - 1]
    H, W = red.shape
    assert red[int((y0 + y1) / 2 * H), int((x0 + x1) / 2 * W)]
    assert red.mean() == pytest.approx((x1 - x0) * (y1 - y0), abs=0.05)
    with pytest.raises(ValueError):
        collage_layout(5, 0.5, 0.5, False)


# -- strength is monotone where measurable -----------------------------------------------------


def _param_series(family, key, seed=7, strengths=(0.0, 0.25, 0.5, 0.75, 1.0)):
    return [sample_ops(family, s, np.random.default_rng(seed), (400, 300))[0].params[key] for s in strengths]


def test_parameters_move_monotonically_with_strength():
    for seed in range(5):
        areas = []
        for s in (0.0, 0.25, 0.5, 0.75, 1.0):
            x0, y0, x1, y1 = sample_ops("crop", s, np.random.default_rng(seed), (400, 300))[0].params["box"]
            areas.append((x1 - x0) * (y1 - y0))
        assert all(a > b for a, b in zip(areas, areas[1:])), areas
        assert areas[-1] < 0.07
        assert _param_series("jpeg", "quality", seed) == sorted(_param_series("jpeg", "quality", seed), reverse=True)
        for fam, key in [("blur", "radius"), ("noise", "std"), ("shuffle_pixels", "fraction")]:
            series = _param_series(fam, key, seed)
            assert series == sorted(series) and series[0] == 0 and series[-1] > 0
        for fam, key in [("pixelize", "ratio"), ("opacity", "level"), ("paste", "size")]:
            series = _param_series(fam, key, seed)
            assert series == sorted(series, reverse=True)
        deg = [abs(d) for d in _param_series("rotate", "degrees", seed)]
        assert deg == sorted(deg) and deg[-1] == 180


@pytest.mark.parametrize("family", ["blur", "noise", "brightness", "contrast", "pixelize", "airgap",
                                    "stripes", "channels", "opacity", "shuffle_pixels"])
def test_measured_change_grows_with_strength(family):
    img = _img(96, 72, 1).resize((96, 72))
    smooth = Image.fromarray(np.asarray(img.resize((12, 9)).resize((96, 72), Image.Resampling.BICUBIC)))
    for seed in range(3):
        diffs = []
        for s in (0.0, 0.3, 0.6, 1.0):
            out, _ = apply_family(smooth, family, s, np.random.default_rng(seed))
            ref = _arr(smooth.resize(out.size)) if out.size != smooth.size else _arr(smooth)
            diffs.append(np.abs(_arr(out) - ref).mean())
        assert diffs[0] <= diffs[1] <= diffs[2] <= diffs[3] + 1e-9, (family, seed, diffs)
        assert diffs[3] > diffs[0]


def test_airgap_records_every_stage_and_replays():
    img = _img(80, 60)
    out, ops = apply_family(img, "airgap", 1.0, np.random.default_rng(0))
    p = ops[0].params
    assert {"moire", "bezel", "margin", "jitter", "gain", "gamma", "vignette", "blur", "noise", "seed"} <= set(p)
    assert out.width > img.width  # bezel and background margin around the picture
    assert np.array_equal(np.asarray(apply_ops(img, [Op.from_dict(ops[0].to_dict())])), np.asarray(out))
