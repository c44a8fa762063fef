"""A `train d2lv` specialist is embedded by the lv matcher at its training size: the BoT / D2LV
descriptors resize to their ``scales`` (imsim_lab/features/models/bot.py), which default to 256
whatever ``input_size`` says, so a 32-px specialist was embedded at 256 px before."""

from __future__ import annotations

import numpy as np
from PIL import Image

from imsim_lab.cli import main
from support import lv_scene


def test_specialist_and_extra_scales_embed_at_their_own_size(tiny_bench, tmp_path):
    from imsim_lab.features.models import create_model
    from imsim_lab.methods.lv import _scale_args, specialist_backbone

    out = tmp_path / "blur"
    assert main(["train", "d2lv", "--bench", str(tiny_bench), "--out", str(out), "--backbone", "test_resnet",
                 "--size", "32", "--k", "2", "--batch-size", "4", "--workers", "0", "--max-steps", "1",
                 "--specialist", "blur", "--device", "cpu", "--json"]) == 0
    name, args = specialist_backbone(str(out))
    img = Image.fromarray(np.full((90, 120, 3), 128, np.uint8))
    model = create_model(name, device="cpu", **args)
    assert model.preprocess(img).shape == (3, 32, 32)
    assert model.embed([model.preprocess(img)]).shape == (1, model.dim)
    # lv's scales= (AQ+OR again at another size) resizes to that size too
    extra = create_model(name, device="cpu", **{**args, **_scale_args(name, args, 48)})
    assert extra.preprocess(img).shape == (3, 48, 48)
    sscd = _scale_args("sscd_disc_mixup_onnx", {}, 160)
    assert sscd == {"short_side": 160}


def test_only_the_sets_that_search_oq_ar_embed_the_reference_splits(tiny_bench, tmp_path):
    """D2LV's specialists search AQ+OR only: their references are embedded whole, the baseline's
    19 splits are embedded for the baseline set alone, and the union is still the max of the sets."""
    from imsim_lab.methods import create_matcher

    dirs = {}
    for name in ("baseline", "grayscale"):
        dirs[name] = str(tmp_path / name)
        assert main(["train", "d2lv", "--bench", str(tiny_bench), "--out", dirs[name], "--backbone", "test_resnet",
                     "--size", "32", "--k", "2", "--batch-size", "4", "--workers", "0", "--max-steps", "1",
                     "--specialist", name, "--device", "cpu", "--json"]) == 0
    pairs, ctx, base = lv_scene(tiny_bench, tmp_path / "w")
    base["score_norm"] = False
    r = pairs.reference_ids
    both = create_matcher("lv", {**base, "specialists": {k: [v] for k, v in dirs.items()}}).score(pairs, ctx)
    per = {b["backbone"].split(":")[0]: b for b in both.report["backbones"]}
    assert per["grayscale"]["reference_views"] == len(r)            # the whole references only
    assert per["baseline"]["reference_views"] > 10 * len(r)         # the 19 splits (some too small)
    alone = {k: create_matcher("lv", {**base, "specialists": {k: [v]}}).score(pairs, ctx) for k, v in dirs.items()}
    assert np.allclose(both.scores, np.fmax(alone["baseline"].scores, alone["grayscale"].scores), atol=1e-5,
                       equal_nan=True)
    # a grayscale set listed first: the reference table still holds the baseline's splits
    rev = create_matcher("lv", {**base, "specialists": {"grayscale": [dirs["grayscale"]],
                                                        "baseline": [dirs["baseline"]]}}).score(pairs, ctx)
    assert np.allclose(rev.scores, both.scores, atol=1e-5, equal_nan=True)
