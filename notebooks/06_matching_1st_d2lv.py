# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Matching track, 1st place: D2LV's local verification (sub-images of queries and references)
#
# Wang, Sun, Zhang, Yang, *D²LV: A Data-Driven and Local-Verification Approach for Image Copy
# Detection*, arXiv 2111.07090; code WangWenhao0716/ISC-Track1-Submission. D2LV won the matching
# track of ISC2021 with µAP 0.8329 (phase 2, the DrivenData leaderboard), the best score of the whole
# challenge. It has two halves: 33 descriptor models trained with the Bag of Tricks recipe on
# differently augmented training sets ("data-driven"), and **local verification**: every query is
# also searched as sub-images of itself, and every reference is indexed as 19 sub-images. This lesson
# studies the second half with descriptors that exist (the released SSCD and its distilled student),
# so that the technique is measured apart from the training; its last step trains the first half at
# toy size (a baseline model and two specialists) and unites them as D2LV does.
#
# **What you will learn**
#
# * why sub-images: a crop, a paste onto another image, an overlay and a collage each hide the copy
#   inside a larger or smaller image, where one global descriptor sees mostly something else;
# * D2LV's query views (rotations, centre crop, four overlapping halves, overlay boxes) and the 19
#   reference splits, drawn, and the two directions (augmented queries against original references,
#   original queries against augmented references);
# * the rules that make the sub-image scores usable: the maximum over view pairs, −0.05 for every
#   query view that is not the original, the small-crop filter, each backbone's global budget and
#   the vote of the backbones, each rule checked by hand once;
# * what each view family and each direction contributes, and global-only against local
#   verification per family, with paired bootstrap intervals; which sub-image matched, in pictures;
# * the specialists: a baseline model and a grayscale and a blur specialist trained here, each
#   alone and the three sets united as D2LV unites them, per family with paired intervals (does a
#   specialist help on its own family?), and the published loop of 33 models as commands;
# * what the published pipeline adds that is not here (score normalisation in these runs, 30 more
#   models) and what it costs at DISC21 scale.
#
# **What it costs** (measured, `notebooks/README.md`): `smoke` about two minutes on 2 cores (the
# tests run it; figures are not measurements); `cpu` on the `small` benchmark at most 15 minutes on
# 2 cores, with the views embedded at a **short side of 112 pixels** instead of SSCD's 288 and **3
# candidates per query** (D2LV searches all references: here local verification re-scores the SSCD
# candidates); measured 8 min 23 s at load 1.0-1.7 (673 CPU s) with one torch thread from an empty
# results folder (`small` built), selective search in Step 5 included; before that step 9 min 58 s at
# load 2.6-3.9 and 7 min 57 s at load up to 2.6, of which the specialists step (three toy trainings,
# four `lv` runs) took 243 and 259 CPU seconds; `full` is DISC21 on GPUs, not run here.

# %% tags=["parameters"]
profile = "smoke"        # "smoke" | "cpu" | "full"
results_dir = None       # default: $IMSIM_LAB_RESULTS or <repository>/results
disc21_root = None       # profile "full": a DISC21 folder in the benchmark format
seed = 0
n_gpus = 4               # profile "full": processes of torchrun per specialist
d2lv_trunks = None       # profile "full": {timm trunk: [trunk weights path or URL, sha256]}, one model per set each

# %%
import subprocess
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.express as px
from IPython.display import display
from PIL import ImageDraw

from imsim_lab.analysis.calibration import (calibration_figure, calibration_table, failure_gallery, family_gains,
                                            gains_table, pr_curves, sweep_halves)
from imsim_lab.analysis.intervals import family_interval_table, paired_differences
from imsim_lab.analysis.report.figures import pr_figure
from imsim_lab.analysis.report.pairs import pair_image, parse_box
from imsim_lab.features import ExtractConfig
from imsim_lab.features import detector as D
from imsim_lab.features.models import create_model
from imsim_lab.features.views import WHOLE, apply_view, make_views
from imsim_lab.lessons import (check_profile, contact_sheet, feature_cache, lesson_benchmark, query_halves,
                               results_root, run_dir)
from imsim_lab.methods.lv import FIXED_FAMILIES
from imsim_lab.runfolder import read_candidates, read_predictions, read_timings
from imsim_lab.runner import RunOptions, run_method
from imsim_lab.train.bot import PUBLISHED_TRAIN, BoTConfig, train_bot
from imsim_lab.train.recipes.bot import bot_schedule

check_profile(profile)
NOTEBOOK = "06_matching_1st_d2lv"
PLAN = {"smoke": {"k": 3, "short_side": 96, "n_boot": 100},
        "cpu": {"k": 3, "short_side": 112, "n_boot": 500},
        "full": {"k": 100, "short_side": 288, "n_boot": 1000}}[profile]
ARGS = {"sscd": {"short_side": PLAN["short_side"]}, "sscd_distilled": {"short_side": PLAN["short_side"]}}
t_start = time.perf_counter()

# %% [markdown]
# ## The data
#
# The disc-synth benchmark of the profile (`small` in `cpu`: 1,000 references, 1,000 queries of
# which 220 are copies, 6 or 7 per transformation family). The families local verification targets
# are those where the copy is only part of the query or the query only part of the original: `crop`,
# `paste` (the original pasted small onto another image), `overlay_image` (another image pasted onto
# the original), `combine` (a collage or a blend with other images). A query of each, next to its
# original:

# %%
bench = lesson_benchmark(profile, results_dir, seed, disc21_root)
display(pd.Series(bench.counts(), name=bench.name).to_frame().T)
q = bench.queries
TARGETS = ["crop", "paste", "overlay_image", "combine"]
shown = pd.concat([q[q.has_match & (q.family == f)].head(1) for f in TARGETS])
display(contact_sheet([bench.load_image(i) for i in shown.query_id] + [bench.load_image(r) for r in shown.reference_id],
                      [f"query ({f})" for f in shown.family] + list(shown.reference_id), cols=len(shown)))

# %% [markdown]
# ## Step 1: the views
#
# Query side (D2LV's `Test/augmentation/`): the original (`_0`), rotations by 90, 180 and 270
# degrees, the centre crop [0.25, 0.75]² and four overlapping half-size crops; D2LV adds selective-search
# proposals and YOLOv5 overlay boxes. Reference side: 19 images per reference: the original, a 2×2
# grid, the centre crop, a 3×3 grid and the same four overlapping halves. The recipe places the halves
# "at [1/6, 3/6] and [3/6, 5/6]", which a half-size crop cannot span; the library centres each half on
# the middle of those intervals (1/3 and 2/3). From scratch, the halves are two lines; they equal the
# library's views:

# %%
spans = [(c - 0.25, c + 0.25) for c in (1 / 3, 2 / 3)]
mine = [(xs[0], ys[0], xs[1], ys[1]) for ys in spans for xs in spans]
assert np.allclose(mine, [v.box for v in FIXED_FAMILIES["halves"]()])
query_views = [WHOLE] + [v for f in ("rotations", "center", "halves") for v in FIXED_FAMILIES[f]()]
qid = shown.query_id.iloc[0]
img = bench.load_image(qid)
display(contact_sheet([apply_view(img, v) for v in query_views], [v.name for v in query_views], size=120, cols=9))
ref = bench.load_image(shown.reference_id.iloc[0])
ref_views = make_views("d2lv_reference", ref.size)
sheet = ref.convert("RGB").copy()
d = ImageDraw.Draw(sheet)
w, h = sheet.size
palette = ["red", "orange", "yellow", "lime", "cyan", "magenta"]
for i, v in enumerate(ref_views[1:]):
    x0, y0, x1, y1 = v.box
    d.rectangle([x0 * w + i % 3, y0 * h + i % 3, x1 * w - 1 - i % 3, y1 * h - 1 - i % 3], outline=palette[i % 6], width=2)
print(f"{len(ref_views)} reference views: {', '.join(v.name for v in ref_views)}")
display(sheet)

# %% [markdown]
# ## Step 2: the global descriptor alone
#
# The baseline and the candidate source: the released SSCD (`sscd_disc_mixup`, int8 ONNX), one
# descriptor per image, the isc2021 global budget of 500,000 pairs. Local verification re-scores the
# best `k` references of each query from this run.

# %%
opts = RunOptions(extract=ExtractConfig(batch_size=16, num_workers=0, shard_size=1024),
                  feature_cache=feature_cache(results_dir))
sscd_run = run_dir(NOTEBOOK, "sscd", results_dir, profile)
run_method("sscd", bench.root, sscd_run, opts=opts)
runs = {"global (sscd)": read_predictions(sscd_run)}
lv_opts = RunOptions(extract=opts.extract, candidates=str(sscd_run))
view_cache = str(results_root(results_dir) / "view_cache" / bench.name)
# score_norm=False: the figures recorded in notebooks/README.md were measured without D2LV's score
# normalisation against the training images (sscd+lv's default; d2lv's default is on)
BASE = {"candidates.k": PLAN["k"], "backbone_args": {"sscd": ARGS["sscd"]}, "view_cache": view_cache,
        "score_norm": False}


def lv(name, method="sscd+lv", **over):
    """One local-verification run folder (the views are embedded once and shared through view_cache)."""
    out = run_dir(NOTEBOOK, name, results_dir, profile)
    res = run_method(method, bench.root, out, overrides={**BASE, **over}, opts=lv_opts)
    return out, res


# %% [markdown]
# ## Step 3: local verification with SSCD (`sscd+lv`)
#
# For every candidate pair: each query view against the whole reference (**AQ+OR**) and the whole
# query against each of the 19 reference views (**OQ+AR**); each view pair scores the inner product
# of the two descriptors. Each backbone predicts only its best `budget_per_query × queries` view
# pairs per direction over all queries (D2LV: 1,000,000 results for 50,000 queries, i.e. 20 per
# query); query views with a short side under 100 pixels are dropped; every query view other than
# the original and the overlay boxes loses 0.05; the pair scores the maximum over its view pairs.
# A pair with no view pair left scores below every verified pair, in its SSCD order.

# %%
t = time.perf_counter()
lv_run, res = lv("sscd_lv")
t_lv = time.perf_counter() - t
runs["local verification (sscd+lv)"] = read_predictions(lv_run)
rep = res.config["matcher_report"]
print(f"{t_lv:.0f} s; vote: {rep['vote']}; budget {rep['budget']} view pairs per direction")
display(pd.DataFrame({"view pairs": rep["view_pairs"], "predicted (budget)": {k: v[0] for k, v in rep["predicted"].items()}}))
display(pd.Series(rep["cost"]).drop("cpu_seconds").to_frame("cost").T)
print("views skipped as too small (not upsampled):", rep["backbones"][0]["skipped_query_views"],
      rep["backbones"][0]["skipped_reference_views"], "| query views dropped by the small-crop filter:",
      rep["small_query_views_dropped"])

# %% [markdown]
# The rule by hand, on the best-scored copy: cut its views, embed them with the same model, score every
# view pair of both directions, subtract 0.05 from the non-original query views, take the maximum.
# The budget can remove a view pair (not this one: it is the best of all), so the hand-made maximum
# equals the run's score up to the int8 model's batch-dependent rounding.

# %%
cand = read_candidates(lv_run)
truth = dict(zip(bench.gt.query_ids, bench.gt.reference_ids))
cand["is_true"] = [truth.get(a) == b for a, b in zip(cand.query_id, cand.reference_id)]
best = cand[cand.is_true & (cand.view_q != "")].sort_values("score").iloc[-1]
model = create_model("sscd_disc_mixup_onnx", **ARGS["sscd"])
qimg, rimg = bench.load_image(best.query_id), bench.load_image(best.reference_id)
qv = [v for v in query_views if min(apply_view(qimg, v).size) >= 100]
xq = model.embed([model.preprocess(apply_view(qimg, v)) for v in qv])
xr = model.embed([model.preprocess(apply_view(rimg, v)) for v in ref_views])
aq_or = max(float(x @ xr[0]) - (0.0 if v.name == "whole" else 0.05) for v, x in zip(qv, xq))
oq_ar = float((xr @ xq[0]).max())
by_hand = max(aq_or, oq_ar)
print(f"{best.query_id} -> {best.reference_id} ({best.view_q} x {best.view_r}): run {best.score:.4f}, by hand {by_hand:.4f}")
assert abs(by_hand - best.score) < 5e-3

# %% [markdown]
# ## Step 4: which sub-image matched
#
# The best view pair of a true pair of each targeted family (red: the query view, the reference view),
# with its direction and the SSCD score of the whole images next to the local score.

# %%
pics, caps = [], []
fam_of = dict(zip(q.query_id, q.family))
cand["family"] = cand.query_id.map(fam_of)
for f in TARGETS:
    rows = cand[cand.is_true & (cand.family == f) & (cand.view_q != "")]
    if rows.empty:
        continue
    r = rows.sort_values("score").iloc[-1]
    pics.append(pair_image(bench.load_image(r.query_id), bench.load_image(r.reference_id), box_q=parse_box(r.box_q),
                           box_r=parse_box(r.box_r), height=200))
    caps.append(f"{f}: {r.view_q} x {r.view_r} ({r.direction}) {r.score:.3f}, global {r.candidate_score:.3f}")
if pics:
    display(contact_sheet(pics, caps, size=400, cols=2, caption_height=16))
display(cand[cand.is_true].groupby("family").direction.value_counts().unstack(fill_value=0).loc[
    lambda t: t.index.isin(TARGETS)])

# %% [markdown]
# ## Step 5: what each view family contributes, and both directions
#
# The same run with one family of views left out at a time (the views are in the shared view cache:
# only the scoring is redone), then one direction at a time. "whole only" keeps just the whole query
# against the whole reference: it differs from the global run only by the candidates' cut and the
# smaller resolution of the views (short side `PLAN["short_side"]`), which it isolates. The oracle row
# adds the recorded box of the source in each disc-synth query: the upper bound of any overlay detector.
# The detector row adds the boxes of a trained one instead (D2LV ran YOLOv5 at confidence 0.1): the
# small overlay detector of lesson 08 (`imsim_lab.features.detector`, its settings), trained here on
# composites of the training images only. The last row adds D2LV's selective-search proposals (regions of
# at least 2,000 pixels, aspect ratio at most 2, NMS at IoU 0.5, up to 10 per query; OpenCV's fast mode,
# `imsim_lab.features.proposals`) to the query views.

# %%
t = time.perf_counter()
det_cfg = D.DetectorConfig(input_size=64, width=8 if profile == "smoke" else 16)
n_composites, det_epochs = (150, 3) if profile == "smoke" else (1000, 4)
det, _ = D.train_detector(D.make_composites([bench.image_path(i) for i in bench.training_ids], n_composites,
                                            seed=seed), det_cfg, epochs=det_epochs, device="cpu")
det_path = run_dir(NOTEBOOK, "detector", results_dir, profile) / "detector.pt"
det_path.parent.mkdir(parents=True, exist_ok=True)
det.save(det_path)
print(f"detector: {n_composites} composites, {det_epochs} epochs in {time.perf_counter() - t:.0f} s")

# %%
ablation = {"all views, both directions": runs["local verification (sscd+lv)"]}
variants = {
    "without rotations": {"query_views": ["center", "halves"]},
    "without the centre crop": {"query_views": ["rotations", "halves"]},
    "without the halves": {"query_views": ["rotations", "center"]},
    "AQ+OR only (no reference splits)": {"directions": ["aq_or"]},
    "OQ+AR only (no query views)": {"directions": ["oq_ar"]},
    "whole only": {"query_views": [], "directions": ["aq_or"]},
    "+ oracle overlay boxes (upper bound)": {"oracle": str(bench.root)},
    "+ trained detector boxes": {"detector": str(det_path)},
    # D2LV's selective-search proposals (OpenCV's fast mode), on the query resized to a long side of 160
    # px here (256 by default: 0.16 CPU s per query against 0.06 at 160, about the same boxes)
    "+ selective search proposals": {"query_views": ["rotations", "center", "halves", "selective_search"],
                                     "selective_search_side": 160},
}
for label, over in variants.items():
    out, _ = lv("sscd_lv_" + "".join(c if c.isalnum() else "_" for c in label.lower())[:40], **over)
    ablation[label] = read_predictions(out)
tab = gains_table(bench.gt, {"global (sscd)": runs["global (sscd)"], **ablation}, baseline="all views, both directions",
                  metrics=("micro_ap",), n_boot=PLAN["n_boot"], seed=seed)
display(tab.round(4))

# %% [markdown]
# ## Step 6: the vote of the backbones
#
# D2LV keeps a view pair only when at least 2 of its 3 backbones predict it (inside their budgets).
# Two released descriptors exist here: SSCD and its distilled MobileNet student, so the method `d2lv`
# votes **2 of 2** (both must agree); `vote_k=1` is the union (each pair at the larger score).

# %%
two = {"sscd": ARGS["sscd"], "sscd_distilled": ARGS["sscd_distilled"]}
vote_runs = {"sscd alone": runs["local verification (sscd+lv)"]}
out, res2 = lv("d2lv_vote2", "d2lv", backbone_args=two)
vote_runs["2 of 2 (d2lv)"] = read_predictions(out)
out, _ = lv("d2lv_vote1", "d2lv", backbone_args=two, vote_k=1)
vote_runs["1 of 2 (union)"] = read_predictions(out)
out, _ = lv("distilled_lv", backbones=["sscd_distilled"], backbone_args={"sscd_distilled": two["sscd_distilled"]})
vote_runs["distilled alone"] = read_predictions(out)
print("d2lv:", res2.config["matcher_report"]["vote"], "| voted view pairs:", res2.config["matcher_report"]["voted"])
display(gains_table(bench.gt, vote_runs, baseline="sscd alone", metrics=("micro_ap", "recall_at_p90"),
                    n_boot=PLAN["n_boot"], seed=seed).round(4))

# %% [markdown]
# ## Step 7: the offset, chosen on one half of the queries and reported on the other
#
# −0.05 is D2LV's value for phase 2. Here it is swept on a seeded half of the queries and the chosen
# value is reported on the other half.

# %%
tune, report = query_halves(bench.query_ids, seed)
offsets = [0.0, -0.025, -0.05, -0.1]


def with_offset(v):
    out, _ = lv(f"sscd_lv_offset{abs(v):.3f}".replace(".", "_"), offset=v)
    return read_predictions(out)


sweep = sweep_halves(bench.gt, offsets, with_offset, tune, report)
display(sweep.table.round(4))
print(f"chosen on the tuning half: {sweep.chosen} (µAP {sweep.tuned:.4f}); reported on the other half: "
      f"{sweep.reported:.4f}; the reporting half alone would pick {sweep.best_on_report}")

# %% [markdown]
# ## Step 8: global-only against local verification, per family, with paired intervals
#
# The gain of local verification over the global descriptor in each family (its copies plus every
# query without a match; paired percentile bootstrap over queries). With 6 or 7 copies per family in
# `small`, most intervals are wide: a gain whose interval holds 0 is not separable here.

# %%
fam = family_gains(bench.gt, bench.queries, {"global (sscd)": runs["global (sscd)"],
                                             "local verification": runs["local verification (sscd+lv)"],
                                             "+ oracle boxes": ablation["+ oracle overlay boxes (upper bound)"]},
                   baseline="global (sscd)", n_boot=PLAN["n_boot"], seed=seed)
display(fam[fam.label == "local verification"].sort_values("gain", ascending=False).round(3).head(12))
display(fam[fam.family.isin(TARGETS)].round(3))
px.bar(fam, x="family", y="gain", color="label", barmode="group", error_y=fam["high"] - fam["gain"],
       error_y_minus=fam["gain"] - fam["low"], title="µAP gain over the global descriptor (95 % paired intervals)").show()

# %% [markdown]
# The calibration pictures: for each query, the score of its true pair against its best wrong pair,
# before and after local verification, then the precision-recall curves and the failures that remain.

# %%
cal = calibration_table(bench.gt, {k: runs[k] for k in runs})
calibration_figure(cal).show()
print("share of true pairs at or below the median best wrong pair:", {k: round(v, 3) for k, v in cal.attrs["overlap"].items()})
pr_figure(pr_curves(bench.gt, runs)).show()
sheet, cases = failure_gallery(bench, runs["local verification (sscd+lv)"],
                               res.metrics["isc2021"]["threshold_at_p90"], n=3)
if sheet is not None:
    display(sheet)
display(cases)

# %% [markdown]
# ## Step 9: the specialists, trained and combined as D2LV combines them
#
# D2LV's "data-driven" half trains the same body (a ResNet trunk with last stride 1, WaveBlocks,
# GeM, the 4c-d projector; 10 label-smoothed CE + 1 SoftTriplet) on eleven differently augmented
# copies of the training set: baseline, grayscale (`_bw`), blur, blur_bw, colour, colour_bw, dark,
# faces, faces_bw, opacity and underlay, for each of three self-supervised trunks: 33 models. Each
# set votes apart (2 of its 3 trunks), every set searches AQ+OR, only the baseline set also searches
# OQ+AR, and the sets are united: a pair keeps its best score over the sets.
#
# The library trains one specialist with `imsim-lab train d2lv --specialist NAME` (the views of
# every class are made from that family only; `baseline` is Bag of Tricks' whole list) and the `lv`
# matcher combines them with `specialists={set: [run folders]}` (`imsim_lab/methods/lv.py`). Here:
# a **baseline** model and two specialists, **grayscale** and **blur**, chosen because `small` has
# both families (7 copies each). `cpu` trains each from random weights at toy size (ResNet-18 at 48
# pixels, 256 classes, 3 epochs of P 16 x K 4: 48 steps), a few percent of one published model's
# compute, so the question is only whether a specialist helps on its own family at this size. The
# candidates and every rule are those of Step 3; the specialists' references are embedded whole
# (AQ+OR), the baseline's also as the 19 splits (OQ+AR).

# %%
SPEC = {"smoke": dict(trunk="test_resnet", size=32, k=2, p=4, epochs=1, classes=16),
        "cpu": dict(trunk="resnet18", size=48, k=4, p=16, epochs=3, classes=256),
        "full": dict(trunk="resnet50", size=256, k=4, p=32, epochs=25, classes=None)}[profile]
SETS = ["baseline", "grayscale", "blur"]
spec_root = run_dir(NOTEBOOK, "specialists", results_dir, profile)


def published_commands(trunks: dict) -> list[list[str]]:
    """D2LV's loop as commands: every specialist of `imsim-lab train d2lv --help`'s schedule, once per
    trunk (``{timm trunk: (trunk weights path or URL, sha256)}``); the schedule is run at toy size by
    tests/test_specialists.py."""
    cmds = []
    for step in bot_schedule("d2lv", n_gpus):
        if not step.argv or "--specialist" not in step.argv:
            continue
        name = step.argv[step.argv.index("--specialist") + 1]
        for trunk, (weights, sha) in trunks.items():
            argv = list(step.argv)
            for opt, value in (("--bench", bench.root), ("--out", spec_root / f"{trunk}_{name}"),
                               ("--init-trunk", weights), ("--init-sha256", sha),
                               ("--offline", spec_root / f"offline_{name}")):
                argv[argv.index(opt) + 1] = str(value)
            cmds.append(argv + ["--backbone", trunk])
    return cmds


trunks = d2lv_trunks or {"resnet50": ("BARLOW_RESNET50.pth", "SHA256")}
cmds = published_commands(trunks)
print(f"the published loop here: {len(cmds)} commands ({len(cmds) // len(trunks)} sets x {len(trunks)} trunk(s)); "
      f"the first:\n{' '.join(cmds[0])}")
spec_dirs: dict[str, list[str]] = {}
spec_cost = {}
if profile == "full":
    if not d2lv_trunks:
        raise ValueError("profile 'full': pass d2lv_trunks= {timm trunk: [weights path or URL, sha256]} (D2LV: "
                         "ResNet-50 Barlow Twins, ResNet-152 and ResNet-50-IBN-a Momentum2 Teacher)")
    for argv in cmds:
        subprocess.run(argv, check=True)
    for argv in cmds:
        spec_dirs.setdefault(argv[argv.index("--specialist") + 1], []).append(argv[argv.index("--out") + 1])
else:
    train_paths = [bench.image_path(i) for i in bench.training_ids][:SPEC["classes"]]
    tc = replace(PUBLISHED_TRAIN, batch_size=SPEC["p"], epochs=SPEC["epochs"], num_workers=0, checkpoint_every=1000,
                 seed=seed, device="cpu")
    spec_hist = []
    for name in SETS:
        t, c = time.perf_counter(), time.process_time()
        cfg = BoTConfig(variant="d2lv", backbone=SPEC["trunk"], size=SPEC["size"], k=SPEC["k"], specialist=name, train=tc)
        r = train_bot(train_paths, spec_root / name, cfg)
        spec_cost[f"train {name}"] = (time.perf_counter() - t, time.process_time() - c)
        spec_hist += [dict(h, model=name) for h in r.history]
        spec_dirs[name] = [str(spec_root / name)]
    px.line(pd.DataFrame(spec_hist), x="step", y="loss", color="model",
            title="10 CE + soft triplet per step, one model per training set").show()
print({k: v for k, v in spec_dirs.items()})

# %% [markdown]
# Each model alone (one set: the baseline with both directions, a specialist with AQ+OR), then the
# three sets united. A set of one model has no vote (`vote_k` is at most the set's size); with
# three trunks per set (`full`) each set votes 2 of 3 as D2LV did. The union is computed from the
# same view stores: it costs only the scoring.

# %%
spec_runs, spec_res = {}, {}
combos = {f"{n} alone": {n: spec_dirs[n]} for n in SETS}
combos["union (baseline + grayscale + blur)"] = {n: spec_dirs[n] for n in SETS}
for label, sets in combos.items():
    t, c = time.perf_counter(), time.process_time()
    out, r = lv("spec_" + "_".join(sets), specialists=sets)
    spec_cost[f"lv {label}"] = (time.perf_counter() - t, time.process_time() - c)
    spec_runs[label], spec_res[label] = read_predictions(out), r
u = spec_res["union (baseline + grayscale + blur)"].config["matcher_report"]
display(pd.DataFrame(u["specialists"]).set_index("name"))
display(pd.DataFrame([{"backbone": b["backbone"], "query views": b["query_views"], "reference views": b["reference_views"]}
                      for b in u["backbones"]]).set_index("backbone"))
display(pd.DataFrame(spec_cost, index=["wall s", "CPU s"]).T.round(1))

# %% [markdown]
# Does a specialist help on its own family, and what does the union give against the baseline
# alone? Paired bootstrap over queries: overall (every query), then per family (its copies plus every
# query without a match), with the released SSCD's global run as the reference point.

# %%
BASE_RUN = "baseline alone"
pairs_ = {f"{k} - {BASE_RUN}": (k, BASE_RUN) for k in spec_runs if k != BASE_RUN}
pairs_["union - blur alone"] = ("union (baseline + grayscale + blur)", "blur alone")
display(paired_differences(bench.gt, spec_runs, pairs_, n_boot=PLAN["n_boot"], seed=seed).round(4))
spec_fam = family_gains(bench.gt, bench.queries, {**spec_runs, "global (sscd)": runs["global (sscd)"]},
                        baseline=BASE_RUN, n_boot=PLAN["n_boot"], seed=seed)
own = spec_fam[spec_fam.family.isin(["grayscale", "blur"])]
display(own.round(3))
for name in ("grayscale", "blur"):
    row = own[(own.family == name) & (own.label == f"{name} alone")].iloc[0]
    un = own[(own.family == name) & (own.label == "union (baseline + grayscale + blur)")].iloc[0]
    print(f"{name} specialist on the {name} family: {row.baseline:.3f} -> {row.value:.3f}, "
          f"Δ {row.gain:+.3f} [{row.low:+.3f}, {row.high:+.3f}] ({row.verdict}); the union: Δ {un.gain:+.3f} "
          f"[{un.low:+.3f}, {un.high:+.3f}] ({un.verdict})")
display(family_interval_table(bench, spec_runs, n_boot=PLAN["n_boot"], seed=seed)
        .pivot(index="family", columns="run", values="micro_ap").round(3))

# %% [markdown]
# One query of each specialist's family with each model's best view pair (red: the query view and
# the reference view) and its score; the union's caption names the set that won the pair.

# %%
pics, caps = [], []
spec_cand = {k: read_candidates(r.out) for k, r in spec_res.items()}
for f in ("grayscale", "blur"):
    rows = q[q.has_match & (q.family == f)]
    if rows.empty:
        continue
    qid_, rid_ = rows.query_id.iloc[0], rows.reference_id.iloc[0]
    qi, ri = bench.load_image(qid_), bench.load_image(rid_)
    for label, cd in spec_cand.items():
        hit = cd[(cd.query_id == qid_) & (cd.reference_id == rid_)]
        if hit.empty:
            caps.append(f"{f}: {label}: not a candidate")
            pics.append(pair_image(qi, ri, height=160))
            continue
        h = hit.iloc[0]
        won = f", won by {h.specialist}" if "specialist" in hit and h.specialist else ""
        pics.append(pair_image(qi, ri, box_q=parse_box(h.box_q), box_r=parse_box(h.box_r), height=160))
        caps.append(f"{f}: {label.split(' (')[0]}: {h.view_q or '-'} x {h.view_r or '-'} {h.score:.3f}{won}")
if pics:
    display(contact_sheet(pics, caps, size=320, cols=len(spec_cand), caption_height=30))

# %% [markdown]
# **The verdict at this size** (the `cpu` run recorded in `notebooks/README.md`; read the printed
# lines above for the run in front of you; 500 paired bootstrap draws): the three toy models
# re-score SSCD's candidates at µAP 0.539 (baseline), 0.543 (grayscale), 0.585 (blur) and 0.549
# (the union), all far below SSCD's own local verification (0.734: Step 3), which is expected of
# 48 steps at 48 pixels from random weights.
#
# * **grayscale on its own family**: 0.152 → 0.163, +0.011 [−0.001, +0.049]: **not separable**
#   (7 copies), and overall +0.004 [−0.014, +0.023].
# * **blur on its own family**: 0.287 → 0.384, +0.097 [+0.006, +0.256]: better, with an interval
#   that barely excludes 0; but the blur specialist is also better overall, +0.047 [+0.027, +0.068],
#   and on families it never saw (text 0.563 → 0.723, perspective, skew, vflip). One reading (not
#   tested here): at this budget a network trained on one mild edit learns faster than on Bag of
#   Tricks' thirteen, so its gain is not the specialisation D2LV sought.
# * **the union** is above the baseline alone, +0.011 [+0.001, +0.021] (separable, small), but
#   below its best member, −0.036 [−0.052, −0.020] against the blur specialist alone: the max over
#   sets also lifts a wrong pair whenever any set scores it high, and with three sets of one weak
#   model each (no vote inside a set) that costs more than it gains. On the two families the union
#   moves inside its intervals (+0.006 grayscale, +0.035 blur). Whether specialists help *as
#   specialists* cannot be separated at this size; the evidence for them is D2LV's 33 models on
#   DISC21 (the `combine.py` comments quoted below, a reading not confirmed by the authors).

# %% [markdown]
# ## What the paper reported, and why it differs here
#
# * D2LV, phase 2: µAP **0.8329** (DrivenData leaderboard, `drivendataorg/image-similarity-challenge`),
#   with 33 models, 50,000 queries against 1,000,000 references and all 19 million reference views
#   searched, selective search and YOLOv5 boxes, score normalisation against the training set and the
#   500,000 best pairs. The inline comments of their `Test/final/combine.py` read as phase 1 µAP going
#   from 0.828 (OQ+AR of the baseline models) to 0.876 as the sets are added; that reading is not
#   confirmed by the authors.
# * Here: one or two released descriptors for Steps 2-8 and, in Step 9, three toy models trained
#   from random weights (ResNet-18, 48 px, 48 steps: baseline, grayscale, blur) instead of 33,
#   1,000 references, 3 candidates per query from SSCD (local verification cannot find a reference
#   SSCD did not propose), views at a short side of 112 pixels, selective search on the query at a long
#   side of 160 pixels (its own step in Step 5), no score normalisation (`score_norm` came after the
#   recorded figures; see `imsim_lab/methods/lv.py`). With a thousand references the global descriptor
#   already ranks most copies first (R@1 0.92 for SSCD on `small`), so the room for a gain is the
#   calibration across queries.
#   In the `cpu` run recorded in `notebooks/README.md` that is where the gain went: +0.042 µAP
#   [+0.012, +0.073] over SSCD alone, the separable per-family gains in photometric and quality families
#   (pixelize, shuffle_pixels, noise, sharpen, scale, blur, contrast), the share of true pairs at or
#   below the median best wrong pair falling from 0.105 to 0.057; the sub-image families (crop,
#   paste, overlay_image, combine, 7 copies each) moved inside their intervals, and only the recorded
#   overlay boxes lifted paste (+0.285, interval touching 0): the room D2LV's detector filled. The
#   reference splits (OQ+AR) lowered µAP slightly here (AQ+OR alone +0.009 [+0.001, +0.017]), the
#   vote of two released backbones was not separable from SSCD alone, and the offset chosen on the
#   tuning half was 0.0, not −0.05 (the reporting half would pick −0.025): these are measurements
#   of this small benchmark with these descriptors, not of D2LV's 33 models on DISC21.
# * The specialists (Step 9): D2LV's `combine.py` comments read as phase-1 µAP 83.7 (the baseline,
#   OQ+AR, face-cleaned) → 87.6 as the ten specialist sets are added (+3.9 points); here the union of two toy specialists and a toy
#   baseline gave +0.011 [+0.001, +0.021] over the baseline alone and stayed below the blur
#   specialist alone, and neither specialist's gain on its own family was a specialisation that
#   this size can separate. The sets `_bw`, `faces` and the 2-of-3 vote inside a set (three
#   trunks) are not run here; `full` runs the loop of `train d2lv --help`'s schedule (7 sets here)
#   for every trunk given in `d2lv_trunks`.
#
# What it costs at DISC21 scale, extrapolated from this machine's measured throughput: run
# `benchmarks/bench_lv.py` (it prints views per second through the pipeline, the index bytes per
# reference, and the hours and bytes of 19 million reference views).

# %%
elapsed = time.perf_counter() - t_start
timing = read_timings(lv_run)
print(f"notebook: {elapsed:.0f} s ({profile}); sscd+lv rescoring {timing.get('rescore', float('nan')):.0f} s wall, "
      f"{timing.get('cpu_rescore', float('nan')):.0f} s CPU = {rep['cost']['cpu_seconds_per_query']:.3f} CPU s per query "
      f"(matcher), {rep['cost']['images_embedded_per_query']} views per query, "
      f"{rep['cost']['images_embedded_per_reference']} per reference, {rep['cost']['index_bytes_per_reference']:.0f} "
      f"bytes of index per reference")
if profile == "cpu":
    print("15-minute budget:", "met" if elapsed <= 900 else "NOT met", f"({elapsed / 60:.1f} min)")

# %% [markdown]
# ## Exercises
#
# 1. Raise the small-crop filter to D2LV's strictest value: `lv("ex_min200", min_query_side=200)`.
#    The halves of small queries disappear; expect the `crop` and `paste` families to lose part of
#    their gain, the others to move inside their intervals.
# 2. Remove the budget: `lv("ex_nobudget", budget_per_query=None)`. Every view pair is then a
#    prediction; expect more wrong pairs lifted by a lucky sub-image, hence a lower R@P90.
# 3. Give more candidates: `lv("ex_k10", **{"candidates.k": 10})` (the views of the new references are
#    embedded once). Expect the recall at rank 1 to rise slightly and the run time to roughly double.
