"""imsim_lab.data.augment: every family on odd inputs, exact replay, seeds, JSON, errors, assets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imsim_lab.data.augment import (
    FAMILIES, MAX_SIDE, OPS, AssetError, Assets, AugmentError, Op, apply_family, apply_ops,
    op_to_dict, ops_from_json, ops_to_json, sample_chain, sample_ops, synthetic_image, to_rgb,
)
from imsim_lab.errors import ImsimError

STRENGTHS = (0.0, 0.5, 1.0)


def _rgb(w, h, seed=0, noise=20):
    rng = np.random.default_rng(seed)
    # smooth content plus texture, so that edits change pixels measurably
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
    noise = rng.integers(-noise, noise + 1, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _odd_inputs():
    img = _rgb(64, 48)
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    return {
        "tiny": _rgb(8, 8, 1),
        "wide": _rgb(2000, 50, 2),
        "gray": img.convert("L"),
        "palette": img.convert("P"),
        "rgba": rgba,
        "la": rgba.convert("LA"),
    }


ODD = _odd_inputs()


def _arr(img):
    return np.asarray(img)


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_on_odd_inputs_gives_rgb_and_replays_exactly(family):
    for kind, img in ODD.items():
        for s in STRENGTHS:
            rng = np.random.default_rng(11)
            out, ops = apply_family(img, family, s, rng)
            assert out.mode == "RGB", (family, kind, s)
            assert out.width >= 1 and out.height >= 1
            if not any(op.name == "scale" for op in ops):
                assert max(out.size) <= MAX_SIDE, (family, kind, s, out.size)
            replay = apply_ops(img, ops_from_json(ops_to_json(ops)))
            assert np.array_equal(_arr(replay), _arr(out)), (family, kind, s)


@pytest.mark.parametrize("family", [n for n in FAMILIES.names() if FAMILIES.get(n).identity_at_zero])
def test_strength_zero_is_identity(family):
    img = _rgb(96, 64, 3)
    for seed in range(3):
        out, _ = apply_family(img, family, 0.0, np.random.default_rng(seed))
        assert out.size == img.size, family
        diff = np.abs(_arr(out).astype(int) - _arr(img).astype(int))
        if family == "jpeg":  # quality 95: near-identity only (on a smooth image)
            smooth = _rgb(96, 64, 3, noise=0)
            out, _ = apply_family(smooth, family, 0.0, np.random.default_rng(seed))
            assert np.abs(_arr(out).astype(int) - _arr(smooth).astype(int)).mean() < 2.0
        else:
            assert diff.max() == 0, (family, seed, diff.max())


@pytest.mark.parametrize("family", [n for n in FAMILIES.names() if FAMILIES.get(n).identity_at_zero])
def test_strength_one_changes_the_image(family):
    img = _rgb(96, 64, 4)
    out, _ = apply_family(img, family, 1.0, np.random.default_rng(5))
    assert out.size != img.size or not np.array_equal(_arr(out), _arr(img)), family


@pytest.mark.parametrize("family", FAMILIES.names())
def test_same_seed_same_ops_and_json_round_trip(family):
    size = (640, 480)
    a = sample_ops(family, 0.7, np.random.default_rng(42), size)
    b = sample_ops(family, 0.7, 42, size)
    assert a == b
    assert ops_from_json(ops_to_json(a)) == a
    for op in a:
        assert json.loads(json.dumps(op_to_dict(op))) == op.to_dict()
        assert op.name in OPS


def test_different_seeds_give_different_ops():
    drawn = {ops_to_json(sample_ops("crop", 0.5, seed, (100, 100))) for seed in range(20)}
    assert len(drawn) == 20
    drawn = {ops_to_json(sample_ops("chain", 0.5, seed, (100, 100))) for seed in range(20)}
    assert len(drawn) == 20


def test_op_normalises_params_to_json_types():
    op = Op("pad", {"sides": (np.float32(0.25), 0.1, np.int64(0), 0), "color": np.array([1, 2, 3]).tolist()})
    assert op.params["sides"] == [0.25, 0.1, 0, 0]
    assert isinstance(op.params["sides"][2], int)
    assert Op.from_dict(json.loads(json.dumps(op.to_dict()))) == op
    with pytest.raises(AugmentError, match="not JSON-able"):
        Op("pad", {"sides": object()})
    with pytest.raises(AugmentError, match="finite"):
        Op("blur", {"radius": float("nan")})
    with pytest.raises(AugmentError):
        Op("", {})


def test_ops_from_json_rejects_malformed_text():
    with pytest.raises(AugmentError, match="parsed"):
        ops_from_json("[{")
    with pytest.raises(AugmentError, match="list"):
        ops_from_json('{"name": "crop"}')
    with pytest.raises(AugmentError, match="name"):
        ops_from_json('[{"params": {}}]')


def test_apply_ops_accepts_dicts_and_empty_lists():
    img = _rgb(40, 30)
    ops = sample_ops("crop", 0.5, 0, img.size)
    assert np.array_equal(_arr(apply_ops(img, [o.to_dict() for o in ops])), _arr(apply_ops(img, ops)))
    assert np.array_equal(_arr(apply_ops(img.convert("RGB"), [])), _arr(img))


def test_errors_name_the_family_op_and_problem():
    img = _rgb(40, 30)
    with pytest.raises(AugmentError, match="unknown transformation family 'nope'"):
        sample_ops("nope", 0.5, 0, img.size)
    with pytest.raises(AugmentError, match=r"strength must be in \[0, 1\]"):
        sample_ops("crop", 1.5, 0, img.size)
    with pytest.raises(AugmentError, match="size"):
        sample_ops("crop", 0.5, 0, (0, 10))
    with pytest.raises(AugmentError, match="unknown augmentation op 'warp'"):
        apply_ops(img, [Op("warp", {})])
    # an AugLy failure is reported with the op's name, the library and the params
    with pytest.raises(AugmentError, match=r"op 'jpeg' \(AugLy .*quality"):
        apply_ops(img, [Op("jpeg", {"quality": 500})])
    with pytest.raises(AugmentError, match="op 'crop'.*KeyError"):
        apply_ops(img, [Op("crop", {})])
    assert issubclass(AugmentError, ImsimError)


def test_to_rgb_handles_unusual_modes():
    a = (np.arange(12 * 10, dtype=np.uint16).reshape(10, 12) * 500)
    assert to_rgb(Image.fromarray(a)).mode == "RGB"
    p = Image.new("P", (5, 5), 0)
    p.info["transparency"] = 0
    assert _arr(to_rgb(p))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"
    with pytest.raises(AugmentError):
        to_rgb(np.zeros((3, 3)))


def test_chain_is_two_to_four_distinct_families_concatenated():
    for seed in range(15):
        names, ops = sample_chain(0.6, np.random.default_rng(seed), (200, 150), Assets.default())
        assert 2 <= len(names) <= 4 and len(set(names)) == len(names)
        assert "chain" not in names
        assert len(ops) >= len(names)
    img = _rgb(80, 60)
    out, ops = apply_family(img, "chain", 0.8, np.random.default_rng(3))
    assert np.array_equal(_arr(apply_ops(img, ops)), _arr(out))


def test_families_have_groups_and_descriptions():
    groups = {"geometric", "photometric", "quality", "overlay", "frame", "composite", "airgap", "chain"}
    for name in FAMILIES.names():
        fam = FAMILIES.get(name)
        assert fam.group in groups and fam.description and fam.name == name
    needed = {"crop", "scale", "aspect_ratio", "pad", "rotate", "hflip", "vflip", "perspective", "skew",
              "brightness", "contrast", "saturation", "color_jitter", "grayscale", "opacity", "channels",
              "blur", "noise", "jpeg", "pixelize", "sharpen", "shuffle_pixels", "text", "emoji", "stripes",
              "screenshot", "meme", "paste", "overlay_image", "combine", "airgap", "chain"}
    assert needed <= set(FAMILIES.names())


# -- assets -------------------------------------------------------------------------------------


def test_assets_image_provider_mapping_callable_and_errors(tmp_path):
    good = tmp_path / "a.png"
    _rgb(30, 20).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image")
    assets = Assets(images={"A": good, "B": bad, "C": _rgb(10, 10)})
    assert assets.image_ids == ("A", "B", "C")
    assert assets.image("A").size == (30, 20)
    with pytest.raises(AssetError, match=r"b\.jpg.*'B'"):
        assets.image("B")
    with pytest.raises(AssetError, match="'Z'"):
        assets.image("Z")
    out, ops = apply_family(_rgb(40, 30), "paste", 0.5, np.random.default_rng(0), Assets(images={"C": _rgb(50, 50)}))
    assert ops[0].params["background"] == "C"
    called = []
    fn_assets = Assets(images=lambda i: called.append(i) or _rgb(20, 20), image_ids=("x1", "x2"))
    apply_family(_rgb(40, 30), "combine", 1.0, np.random.default_rng(0), fn_assets)
    assert called and set(called) <= {"x1", "x2"}
    with pytest.raises(AugmentError, match="no image provider"):
        apply_ops(_rgb(10, 10), [Op("paste", {"background": "R1", "size": 0.5, "x": 0, "y": 0})], Assets())


def test_synthetic_images_are_deterministic_and_distinct():
    a, b = synthetic_image("synth:0-1"), synthetic_image("synth:0-1")
    assert np.array_equal(_arr(a), _arr(b))
    assert not np.array_equal(_arr(a.resize((64, 64))), _arr(synthetic_image("synth:0-2").resize((64, 64))))
    assert Assets(seed=5).image_ids[0] == "synth:5-0"


def test_works_without_fonts_or_emoji_folders():
    bare = Assets()  # no AugLy folders: PIL's default font and drawn emoji
    assert all(e.startswith("builtin:") for e in bare.emojis)
    img = _rgb(120, 90)
    for fam in ("text", "emoji", "meme", "chain"):
        out, ops = apply_family(img, fam, 1.0, np.random.default_rng(1), bare)
        assert out.mode == "RGB"
        assert np.array_equal(_arr(apply_ops(img, ops, bare)), _arr(out))
    # the screenshot family falls back to the drawn frame without templates
    _, ops = apply_family(img, "screenshot", 0.5, np.random.default_rng(2), bare)
    assert ops[0].name == "feed_frame"
    with pytest.raises(AugmentError, match="screenshot"):
        apply_ops(img, [Op("screenshot", {"template": "web.png", "crop": False})], bare)


def test_default_assets_use_augly_fonts_emoji_and_templates():
    d = Assets.default()
    assert "Impact.ttf" in d.fonts
    assert len(d.emojis) > 100 and all(e.endswith(".png") for e in d.emojis)
    assert (d.screenshot_dir / "bboxes.json").is_file()
    out = apply_ops(_rgb(200, 150), [Op("screenshot", {"template": "mobile.png", "crop": True})])
    assert out.size == (414, 736)


def test_every_augly_function_used_runs_with_installed_versions():
    from imsim_lab.data.augment._augly import REPLACED, USED, augly_status

    status = augly_status()
    assert set(status) == set(USED)
    broken = {k: v for k, v in status.items() if v is not None}
    assert not broken, broken
    assert set(REPLACED) == {"perspective_transform", "meme_format"}


def test_assets_pickle_without_their_cache():
    import pickle

    a = Assets.from_augly(images={"A": _rgb(10, 10)}, seed=3)
    a.font("Impact.ttf", 12)
    b = pickle.loads(pickle.dumps(a))
    assert b.fonts == a.fonts and b.image_ids == ("A",) and b._cache == {}
    assert b.font("Impact.ttf", 12) is not None


def test_huge_inputs_are_capped_before_the_edits():
    big = Image.new("RGB", (3000, 1500), (10, 20, 30))
    out, ops = apply_family(big, "crop", 0.0, np.random.default_rng(0))
    assert out.size == (MAX_SIDE, MAX_SIDE // 2)


def test_describe_families_lists_every_family():
    from imsim_lab.data.augment import describe_families

    rows = describe_families()
    assert [r["family"] for r in rows] == FAMILIES.names()
    assert all(r["description"] and r["group"] for r in rows)
