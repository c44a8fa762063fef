"""D2LV's specialists: `train d2lv --specialist NAME` (views made from one augmentation family),
recorded in the run folder, and their combination in the `lv` matcher (each set votes apart, OQ+AR
with the baseline set only, the max over the sets)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from imsim_lab.cli import main
from imsim_lab.features.lvscore import LVConfig, Verified, combine_sets, verify

TINY = ["--backbone", "test_resnet", "--size", "32", "--k", "2", "--batch-size", "4", "--workers", "0"]


def _v(scores, q_row, direction, fam):
    n = len(scores)
    return Verified(np.array(scores, float), np.array(q_row), np.array(q_row) + 10, np.array(direction),
                    np.arange(n) + 1, np.arange(n) + 5, {"center": np.array(fam, float)}, {"n": n})


def test_combination_is_the_max_over_the_sets_with_the_winners_view_pair():
    a = _v([0.5, np.nan, 0.7, np.nan], [0, -1, 2, -1], ["aq_or", "", "whole", ""], [0.4, np.nan, 0.1, np.nan])
    b = _v([0.6, 0.2, 0.7, np.nan], [5, 6, 7, -1], ["oq_ar", "aq_or", "aq_or", ""], [np.nan, 0.2, 0.3, np.nan])
    c, won = combine_sets([a, b])
    assert np.allclose(c.scores[:3], [0.6, 0.2, 0.7]) and np.isnan(c.scores[3])
    assert won.tolist() == [1, 1, 0, -1]                       # a tie goes to the earlier set
    assert c.q_row.tolist() == [5, 6, 2, -1] and c.r_row.tolist() == [15, 16, 12, -1]
    assert c.direction.tolist() == ["oq_ar", "aq_or", "whole", ""]
    assert c.n_agree.tolist() == [1, 2, 3, 0] and c.n_view_pairs.tolist() == [5, 6, 7, 0]
    assert np.allclose(c.family["center"][:3], [0.4, 0.2, 0.3]) and np.isnan(c.family["center"][3])
    assert c.counts["sets"] == [{"n": 4}, {"n": 4}] and c.counts["pairs_verified"] == 3
    one, w1 = combine_sets([a])
    assert one is a and w1.tolist() == [0, -1, 0, -1]


def test_each_set_votes_apart_before_the_union():
    # two sets of two backbones; the view pair (Q0 centre, R0) is predicted by one backbone of each
    # set only: a 2-of-4 vote over all backbones would keep it, a 2-of-2 vote per set does not
    tab = lambda rows: SimpleNamespace(parent_ids=np.array([r[0] for r in rows]),  # noqa: E731
                                       view_names=np.array([r[1] for r in rows]),
                                       sizes=np.full((len(rows), 2), 200), boxes=np.tile([0, 0, 1, 1.0], (len(rows), 1)))
    qt, rt = tab([("Q0", "whole"), ("Q0", "center")]), tab([("R0", "whole")])
    e = np.eye(3, dtype=np.float32)
    hit, miss = np.stack([e[1], e[0]]), np.stack([e[1], e[2]])   # the centre matches R0 = e0, or not
    xr = [e[:1]] * 4
    cfg = LVConfig(directions=("aq_or",), vote_k=2, offset=0.0, budget=1)
    pooled = verify(["Q0"], ["R0"], qt, rt, [hit, miss, hit, miss], xr, cfg)
    per_set, _ = combine_sets([verify(["Q0"], ["R0"], qt, rt, [hit, miss], xr[:2], cfg),
                               verify(["Q0"], ["R0"], qt, rt, [hit, miss], xr[:2], cfg)])
    assert pooled.scores[0] == pytest.approx(1.0) and np.isnan(per_set.scores[0])


def test_specialist_views_are_made_from_that_family_only(tiny_bench):
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.train.bot_data import BOT_OPS, SPECIALISTS, KViewImages, TrainDataError, specialist_ops

    b = load_benchmark(tiny_bench)
    paths = [b.image_path(i) for i in b.training_ids[:2]]
    assert specialist_ops("baseline") == BOT_OPS
    assert {"baseline", "grayscale", "blur", "colour", "dark", "opacity", "underlay"} == set(SPECIALISTS)
    ds = KViewImages(paths, 3, 48, (0.5,) * 3, (0.25,) * 3, ops=specialist_ops("grayscale"))
    for img, applied in ds.views(0) + ds.views(1, epoch=3):
        a = np.asarray(img).astype(int)
        assert applied == ["grayscale"] and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    blur = KViewImages(paths, 2, 48, (0.5,) * 3, (0.25,) * 3, ops=specialist_ops("blur"))
    assert all(applied == ["blur"] for _, applied in blur.views(0))
    with pytest.raises(TrainDataError, match="unknown specialist"):
        specialist_ops("sepia")
    with pytest.raises(TrainDataError, match="not both"):
        KViewImages(paths, 2, 48, (0.5,) * 3, (0.25,) * 3, families=["blur"], ops=specialist_ops("blur"))


@pytest.fixture(scope="module")
def trained(tiny_bench, tmp_path_factory):
    """Two D2LV specialists trained a few steps on tiny: baseline and grayscale."""
    root = tmp_path_factory.mktemp("spec")
    out = {}
    for name in ("baseline", "grayscale"):
        out[name] = root / name
        argv = ["train", "d2lv", "--bench", str(tiny_bench), "--out", str(out[name]), *TINY, "--max-steps", "3",
                "--specialist", name, "--json"]
        assert main(argv) == 0
    return out


def test_train_d2lv_specialist_is_recorded_and_bad_names_exit_2(trained, tiny_bench, tmp_path, capsys):
    cfg = json.loads((trained["grayscale"] / "train_config.json").read_text())["run"]["config"]
    assert cfg["specialist"] == "grayscale" and cfg["specialist_ops"] == [{"family": "grayscale", "p": 1.0}]
    base = json.loads((trained["baseline"] / "train_config.json").read_text())["run"]["config"]
    assert base["specialist"] == "baseline" and len(base["specialist_ops"]) == 13
    assert (trained["grayscale"] / "weights.pt").is_file()
    capsys.readouterr()
    for extra, msg in ((["--specialist", "sepia"], "unknown specialist"),
                       (["--specialist", "blur", "--families", "blur"], "not both")):
        assert main(["train", "d2lv", "--bench", str(tiny_bench), "--out", str(tmp_path / msg[:3]), *TINY,
                     "--max-steps", "1", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err


def test_d2lv_combines_the_specialists_as_the_max_over_sets(trained, tiny_bench, tmp_path):
    from imsim_lab.errors import ImsimError
    from imsim_lab.methods import create_matcher
    from support import lv_scene

    pairs, ctx, base = lv_scene(tiny_bench, tmp_path / "w")
    both = {"baseline": [str(trained["baseline"])], "grayscale": [str(trained["grayscale"])]}
    res = create_matcher("lv", {**base, "specialists": both}).score(pairs, ctx)
    alone = {k: create_matcher("lv", {**base, "specialists": {k: v}}).score(pairs, ctx) for k, v in both.items()}
    assert np.allclose(res.scores, np.maximum(alone["baseline"].scores, alone["grayscale"].scores), atol=1e-5)
    rep = res.report
    assert [s["name"] for s in rep["specialists"]] == ["baseline", "grayscale"]
    assert rep["specialists"][0]["directions"] == ["aq_or", "oq_ar"] and rep["specialists"][1]["directions"] == ["aq_or"]
    assert sum(s["pairs_won"] for s in rep["specialists"]) == rep["pairs_verified"]
    assert {b["model"] for b in rep["backbones"]} == {"d2lv_net"} and len(rep["backbones"]) == 2
    won = res.extras["specialist"]
    assert set(won) <= {"baseline", "grayscale", ""}
    # only the baseline set searches OQ+AR: a grayscale-only combination never has an oq_ar best pair
    assert "oq_ar" not in set(alone["grayscale"].extras["direction"])
    with pytest.raises(ImsimError, match="train_config.json"):
        create_matcher("lv", {**base, "specialists": {"blur": [str(tmp_path)]}})


def test_the_published_specialist_commands_run_at_toy_size(tiny_bench, tmp_path, capsys):
    """`train d2lv --help`'s schedule: one command per specialist (offline copies, Barlow Twins trunk),
    each run here for one step with 3 copies per class and no released trunk."""
    from imsim_lab.train.bot_data import SPECIALISTS
    from imsim_lab.train.recipes.bot import bot_schedule

    steps = [s for s in bot_schedule("d2lv") if s.argv and "--specialist" in s.argv]
    assert [s.argv[s.argv.index("--specialist") + 1] for s in steps] == list(SPECIALISTS)
    for k, step in enumerate(steps):
        argv = list(step.argv[step.argv.index("train"):])
        for opt in ("--init-trunk", "--init-sha256"):   # the released Barlow Twins ResNet-50: not here
            i = argv.index(opt)
            del argv[i:i + 2]
        for opt, value in (("--bench", tiny_bench), ("--out", tmp_path / f"run{k}"), ("--offline", tmp_path / f"off{k}"),
                           ("--copies", 3), ("--batch-size", 4), ("--k", 2)):
            argv[argv.index(opt) + 1] = str(value)
        argv = [a for a in argv if a not in ("--backbone", "--size")]
        assert main(argv + ["--backbone", "test_resnet", "--size", "32", "--workers", "0", "--max-steps", "1",
                            "--device", "cpu"]) == 0, capsys.readouterr().err
        cfg = json.loads((tmp_path / f"run{k}" / "train_config.json").read_text())["run"]["config"]
        assert cfg["specialist"] == step.argv[step.argv.index("--specialist") + 1] and cfg["offline"]
        off = json.loads((tmp_path / f"off{k}" / "copies.json").read_text())
        assert off["specialist"] == cfg["specialist"] and off["copies"] == 3
