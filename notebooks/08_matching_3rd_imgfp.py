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
# # 8. Matching track, 3rd place: imgFp (overlay detection, SIFT voting, the global branch) and visual words
#
# **What you will learn**
#
# * how imgFp (Sun et al., arXiv 2112.02373, the paper behind the 3rd place of the ISC2021 matching
#   track) finds copies with three recall branches: a global descriptor's nearest reference, a vote of
#   every query SIFT keypoint's nearest reference keypoint, and the same vote on the crop an overlay
#   detector cuts out of the query;
# * how a small detector trained from scratch on disc-synth's own composites finds pasted images, and
#   how well (box recall and precision at IoU 0.5, against the recorded boxes);
# * imgFp's pair score: ratio-test SIFT matches, again with the query mirrored, summed over branches;
# * **the open question** of the write-up: how much is lost by encoding the same keypoints as visual
#   words with tf-idf instead of searching the raw descriptors, in µAP, memory and time.
#
# **What it costs**: `smoke` about two minutes on 2 cores (the tests run it; its figures are not
# measurements); `cpu` is not yet measured on 2 cores (see notebooks/README.md). To fit the CPU, the
# keypoints are capped (`max_keypoints` below; imgFp keeps all of them, about 600 per image).

# %% tags=["parameters"]
profile = "smoke"        # "smoke" | "cpu" | "full"
results_dir = None       # default: $IMSIM_LAB_RESULTS or <repository>/results
disc21_root = None       # profile "full": a DISC21 folder in the benchmark format
seed = 0

# %%
import json
import time

import numpy as np
import pandas as pd
import plotly.express as px
from IPython.display import display
from PIL import Image, ImageDraw, ImageOps

from imsim_lab.eval.formats import Predictions
from imsim_lab.eval.metrics import evaluate
from imsim_lab.features import ExtractConfig
from imsim_lab.features import detector as D
from imsim_lab.features.local import create_local_model
from imsim_lab.features.localmatch import ratio_matches
from imsim_lab.features.localstore import extract_local, load_local
from imsim_lab.features.vocabulary import InvertedFile, train_vocabulary
from imsim_lab.lessons import check_profile, contact_sheet, family_metrics, lesson_benchmark, run_dir
from imsim_lab.methods import imgfp as F
from imsim_lab.runfolder import read_candidates
from imsim_lab.runner import RunOptions, run_method

check_profile(profile)
NOTEBOOK = "08_matching_3rd_imgfp"
SMOKE = profile == "smoke"
max_keypoints = 100 if profile != "full" else 0          # imgFp: no cap
words_grid = [64, 256] if SMOKE else [1024, 4096, 16384]
det_cfg = D.DetectorConfig(input_size=64, width=8) if SMOKE else D.DetectorConfig()
n_composites, det_epochs = (150, 3) if SMOKE else (1500, 8)
opts = RunOptions(extract=ExtractConfig(batch_size=16, num_workers=0, shard_size=256))
t_start = time.perf_counter()

# %% [markdown]
# ## The data
#
# The disc-synth benchmark of the profile: references, queries (copies and distractors) and training
# images. The detector learns only from the training images; the queries are held out for its test.

# %%
bench = lesson_benchmark(profile, results_dir, seed, disc21_root)
display(pd.Series(bench.counts(), name=bench.name).to_frame().T)
q = bench.queries
copies = q[q.has_match].head(6)
display(contact_sheet([Image.open(bench.image_path(i)) for i in copies.query_id]
                      + [Image.open(bench.image_path(r)) for r in copies.reference_id],
                      list(copies.family) + list(copies.reference_id), cols=6))

# %% [markdown]
# ## Step 1: overlay detection
#
# imgFp runs a YOLOv5 (AGPL, not used here) on each query and crops the single most confident box
# whose area is at most 0.85 of the image and whose aspect h/w lies in [1/4, 4]. Here a small CNN
# predicts one box and a confidence per image, trained from scratch on composites of training images
# made with disc-synth's `paste` and `combine` ops, whose recorded parameters give the true box.

# %%
t = time.perf_counter()
samples = D.make_composites([bench.image_path(i) for i in bench.training_ids], n_composites, seed=seed)
det, history = D.train_detector(samples, det_cfg, epochs=det_epochs, device="cpu")
t_det = time.perf_counter() - t
print(f"{len(samples)} composites ({sum(b is not None for _, b in samples)} with a box), "
      f"{det_epochs} epochs in {t_det:.0f} s; loss per epoch {np.round(history, 3).tolist()}")

# %% [markdown]
# Recall and precision at IoU 0.5 on the **queries** (never seen in training), against their recorded
# boxes (`bench_boxes`: the pasted source's box where it covers at most 0.85 of the query). The
# recorded boxes themselves are the upper bound: recall 1, precision 1.

# %%
qids = bench.query_ids
true = D.bench_boxes(bench, qids)
qims = [Image.open(bench.image_path(i)).convert("RGB") for i in qids]
boxes, conf = D.detect(det, qims)
sizes = np.array([im.size for im in qims])
det_table = pd.DataFrame([{"threshold": thr, **D.box_metrics(boxes, D.keep_boxes(boxes, conf, thr, sizes), true)}
                          for thr in (0.3, 0.5, 0.55, 0.7)])
display(det_table)
keep = D.keep_boxes(boxes, conf, 0.5, sizes)

# %% [markdown]
# Detected (red), recorded (green) and missed boxes: the first queries that have a recorded box.

# %%
pics, caps = [], []
for k in np.flatnonzero(~np.isnan(true).any(1))[:6]:
    im = qims[k].copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.rectangle([true[k, 0] * w, true[k, 1] * h, true[k, 2] * w, true[k, 3] * h], outline="lime", width=3)
    if keep[k]:
        d.rectangle([boxes[k, 0] * w, boxes[k, 1] * h, boxes[k, 2] * w, boxes[k, 3] * h], outline="red", width=3)
    iou = D.box_iou(boxes[k:k + 1], true[k:k + 1])[0]
    pics.append(im)
    caps.append(f"{q.family.iloc[k]} conf {conf[k]:.2f} IoU {iou:.2f}" + ("" if keep[k] else " missed"))
display(contact_sheet(pics, caps, cols=6))

# %% [markdown]
# ## Step 2: RootSIFT keypoints on a copy and its original
#
# Short side brought down to 300 pixels, RootSIFT `round(255 sqrt(|d| / sum|d|))`, images with fewer
# than 10 keypoints skipped.

# %%
model = create_local_model("rootsift", max_keypoints=max_keypoints)
qid, rid = copies.query_id.iloc[0], copies.reference_id.iloc[0]
pics = []
for i in (qid, rid):
    img = model.preprocess(Image.open(bench.image_path(i)))
    f = model.detect(img)
    im = Image.fromarray(img).convert("RGB")
    d = ImageDraw.Draw(im)
    for x, y, s, _ in f.geometry:
        d.ellipse([x - s / 2, y - s / 2, x + s / 2, y + s / 2], outline="yellow")
    pics.append(im)
display(contact_sheet(pics, [f"{qid}: copy", f"{rid}: original"], size=300, cols=2))

# %% [markdown]
# ## Step 3: voting, then pairwise verification
#
# Every query keypoint's nearest reference keypoint (exact, float16) votes for its image; the top
# reference is accepted with more than 3 votes, strictly more than the runner-up and a mean squared
# distance under 8000 (more than 5 votes when it is the only one). Each accepted pair is scored by
# ratio-test matches (`1.8 d1² < d2²`), also with the query mirrored. The method `sift_vote` does all
# of it; its matcher folder keeps the features that the next cells reuse.

# %%
over = {"max_keypoints": max_keypoints, "candidates.method": "pdq"}
vote_run = run_dir(NOTEBOOK, "sift_vote", results_dir, profile)
res_vote = run_method("sift_vote", bench.root, vote_run, overrides=over, opts=opts)
print(json.dumps(res_vote.config["matcher_report"], indent=1)[:1500])
fq, fb = load_local(vote_run / "matcher" / "query", "query"), load_local(vote_run / "matcher" / "reference",
                                                                        "reference")

# %% [markdown]
# The matches of one recalled copy, drawn. From scratch, the ratio test is three lines of numpy; it
# equals the library's `ratio_matches`.

# %%
i, j = fq.positions([qid])[0], fb.positions([rid])[0]
a, b = fq.features(int(i)), fb.features(int(j))
dq, db = np.asarray(a.descriptors, np.float32), np.asarray(b.descriptors, np.float32)
dist = ((dq[:, None] - db[None]) ** 2).sum(-1)
two = np.sort(dist, axis=1)[:, :2]
mine = np.flatnonzero(1.8 * two[:, 0] < two[:, 1])
lib = ratio_matches(dq, db, F.IMGFP_RATIO)[0]
assert set(mine) == set(lib), (len(mine), len(lib))
iq, ib = ratio_matches(dq, db, F.IMGFP_RATIO)
qa = Image.fromarray(model.preprocess(Image.open(bench.image_path(qid)))).convert("RGB")
ra = Image.fromarray(model.preprocess(Image.open(bench.image_path(rid)))).convert("RGB")
canvas = Image.new("RGB", (qa.width + ra.width, max(qa.height, ra.height)))
canvas.paste(qa, (0, 0))
canvas.paste(ra, (qa.width, 0))
d = ImageDraw.Draw(canvas)
for u, v in zip(iq[:60], ib[:60]):
    d.line([tuple(a.geometry[u, :2]), (b.geometry[v, 0] + qa.width, b.geometry[v, 1])], fill="cyan")
print(f"{len(iq)} matches between {qid} and {rid}")
display(canvas)

# %% [markdown]
# ## Step 4: the crop-local branch and the merge
#
# The detector's crops become query views: their keypoints vote too (crop-local branch). `imgfp` merges
# the global top-1 (SSCD candidates) with the local vote, each recalled pair scored by its match count
# times the number of branches that recalled it; here the crop-local branch is computed from the
# library functions and added to that sum.

# %%
crop_dir = vote_run.parent / "crops"
crop_dir.mkdir(parents=True, exist_ok=True)
crop_ids = [qids[k] for k in np.flatnonzero(keep)]
for k in np.flatnonzero(keep):
    D.crop(qims[k], boxes[k]).save(crop_dir / f"{qids[k]}.jpg", quality=95)
fc = extract_local(model, [crop_dir / f"{c}.jpg" for c in crop_ids], crop_ids, crop_dir, "crops", opts.extract)
crop_vote = F.vote_pairs(fc, fb) if len(crop_ids) else {"query_ids": [], "reference_ids": []}
print(f"{len(crop_ids)} crops, {len(crop_vote['query_ids'])} accepted by the crop-local vote")

imgfp_run = run_dir(NOTEBOOK, "imgfp", results_dir, profile)
res_imgfp = run_method("imgfp", bench.root, imgfp_run, overrides={"max_keypoints": max_keypoints}, opts=opts)
cand = read_candidates(imgfp_run)
crop_key = set(zip(crop_vote["query_ids"], crop_vote["reference_ids"]))
crop_hit = np.array([(a, b) in crop_key for a, b in zip(cand.query_id, cand.reference_id)])
if crop_hit.any():
    pc = F.pair_counts(fc, fb, fc.positions(cand.query_id[crop_hit]), fb.positions(cand.reference_id[crop_hit]))
    cand.loc[crop_hit, "score"] += pc
rows = {}
for name, col in (("global", cand["global"]), ("local", cand["local"]), ("crop-local", crop_hit)):
    s = np.where(col, cand.n_matches, 0.0)
    rows[name] = s
rows["merged (3 branches)"] = cand.score.to_numpy()
summary, preds_of = [], {}
for name, s in rows.items():
    m = s > 0
    p = Predictions(cand.query_id[m].to_numpy(object), cand.reference_id[m].to_numpy(object), s[m].astype(float))
    preds_of[name] = p
    mm = evaluate(bench.gt, p, "isc2021")
    summary.append({"branch": name, "pairs": int(m.sum()), "micro_ap": mm.micro_ap,
                    "recall_at_p90": mm.recall_at_p90 or 0.0, "recall_at_rank1": mm.recall_at_rank1})
display(pd.DataFrame(summary))

# %% [markdown]
# ## Step 5: what local features rescue that the global descriptor misses, per family

# %%
fam = pd.concat({n: family_metrics(bench, preds_of[n]).set_index("family")["micro_ap"]
                 for n in ("global", "local", "merged (3 branches)")}, axis=1).fillna(0.0)
fam["local - global"] = fam["local"] - fam["global"]
display(fam.sort_values("local - global"))

# %% [markdown]
# ## Step 6: the open question — visual words against raw descriptors
#
# The same keypoints as the vote, encoded as visual words (faiss k-means on the reference keypoints),
# tf-idf, the top reference per query by cosine. Both branches recall at most one reference per query and
# are scored by their own score (votes, cosine) and, to compare recall alone, by imgFp's pair score.
# Memory per reference: float16 descriptors for the raw search (imgFp's GPU index), the CSR index
# (word id and weight per distinct word) for the words. Time: search per query.

# %%
gtq = bench.gt
kb, kq = F.usable(fb, 10), F.usable(fq, 10)
t = time.perf_counter()
raw = F.vote_pairs(fq, fb)
t_raw = (time.perf_counter() - t) / len(fq)
raw_bytes = float(fb.counts[kb].sum() * 128 * 2 / max(kb.sum(), 1))
curve = []


def _row(name, words, q_, r_, s_, secs, bytes_):  # noqa: the only helper: a table row, used in this cell only
    c = F.pair_counts(fq, fb, fq.positions(q_), fb.positions(r_)) if len(q_) else np.zeros(0)
    out = {"encoding": name, "words": words, "ms_per_query": 1000 * secs, "bytes_per_reference": bytes_}
    for tag, sc in (("", s_), (" verified", c)):
        p = Predictions(np.asarray(q_, object), np.asarray(r_, object), np.asarray(sc, float))
        m = evaluate(gtq, p, "isc2021")
        out[f"micro_ap{tag}"], out[f"recall_at_p90{tag}"] = m.micro_ap, m.recall_at_p90 or 0.0
    return out


curve.append(_row("raw descriptors", 0, raw["query_ids"], raw["reference_ids"], raw["votes"], t_raw, raw_bytes))
rows_b = np.flatnonzero(np.repeat(kb, fb.counts))
for k in words_grid:
    voc = train_vocabulary(np.asarray(fb.descriptors)[rows_b], k, niter=10, meta=fb.meta, seed=seed)
    inv = InvertedFile.build(F._keep_words(voc.assign_set(fb), kb), voc.k)
    wq = F._keep_words(voc.assign_set(fq), kq)
    t = time.perf_counter()
    bw = F.bow_pairs(voc, inv, wq, 1)
    secs = (time.perf_counter() - t) / len(fq)
    curve.append(_row("visual words", k, bw["query_ids"], bw["reference_ids"], bw["scores"], secs,
                      inv.nbytes / max(kb.sum(), 1)))
curve = pd.DataFrame(curve)
display(curve)
words_only = curve[curve.encoding == "visual words"]
display(px.line(words_only, x="words", y=["micro_ap", "micro_ap verified"], log_x=True, markers=True,
                title="visual words: µAP as the vocabulary grows (dashed: raw descriptors)")
        .add_hline(y=curve.micro_ap.iloc[0], line_dash="dash")
        .add_hline(y=curve["micro_ap verified"].iloc[0], line_dash="dot"))
display(px.scatter(curve, x="bytes_per_reference", y="micro_ap verified", color="encoding", log_x=True,
                   hover_data=["words", "ms_per_query"], title="µAP (verified) against memory per reference"))

# %% [markdown]
# Per family: µAP (pair score) of the largest vocabulary against the raw descriptors.

# %%
big = curve.iloc[-1]
c_bw = F.pair_counts(fq, fb, fq.positions(bw["query_ids"]), fb.positions(bw["reference_ids"]))
c_raw = F.pair_counts(fq, fb, fq.positions(raw["query_ids"]), fb.positions(raw["reference_ids"]))
per_fam = pd.concat({
    "raw": family_metrics(bench, Predictions(np.asarray(raw["query_ids"], object),
                                             np.asarray(raw["reference_ids"], object), c_raw.astype(float)))
    .set_index("family")["micro_ap"],
    f"words {int(big.words)}": family_metrics(bench, Predictions(np.asarray(bw["query_ids"], object),
                                                                 np.asarray(bw["reference_ids"], object),
                                                                 c_bw.astype(float))).set_index("family")["micro_ap"],
}, axis=1).fillna(0.0)
display(per_fam)

# %% [markdown]
# **The answer on this benchmark** (read the two tables above; the numbers change with the profile):
# the µAP ratio of the largest vocabulary to the raw descriptors, after the same pair scoring, and the
# ratio of their memory per reference, printed here.

# %%
r = curve.iloc[-1]
raw_ap = curve["micro_ap verified"].iloc[0]
print(f"words {int(r.words)}: µAP verified {r['micro_ap verified']:.3f} against raw {raw_ap:.3f} "
      f"({r['micro_ap verified'] / max(raw_ap, 1e-9):.2f} of it) with "
      f"{r.bytes_per_reference / raw_bytes:.3f} of its memory per reference; "
      f"lesson time so far {time.perf_counter() - t_start:.0f} s")

# %% [markdown]
# ## What the paper published, and why it differs here
#
# imgFp's final phase-2 µAP is 0.7682 (DrivenData leaderboard, matching track; the paper's branch
# ablations could not be read). Differences here, each pushing this lesson's number in a direction:
# disc-synth `small` instead of DISC21 (fewer distractors: higher µAP); at most `max_keypoints` keypoints
# per image instead of all of them (fewer votes: lower recall of the local branch); SSCD instead of the
# team's fine-tuned EsViT Swin-B (stronger off-the-shelf: a better global branch than random weights, but
# not trained on DISC21); a CNN trained for minutes instead of a fine-tuned YOLOv5 (fewer and looser
# crops: a weaker crop-local branch). No bootstrap intervals are shown: a difference of a few queries is
# not separable on this benchmark.
#
# ## Exercises
#
# 1. Lower `max_mean_distance` to 4000 (`run_method("sift_vote", ..., overrides={"max_mean_distance":
#    4000.0, ...})`): fewer accepted pairs, higher precision; expect R@P90 to move less than µAP.
# 2. Run `bow_tfidf` with `spatial=True`: the RANSAC inliers of shared words re-rank the short-list;
#    expect µAP to approach the verified column of the table above.
# 3. Replace the exact search by `search="ivfpq"`: memory per keypoint falls to 24 bytes; expect the
#    neighbour recall printed by `benchmarks/bench_keypoints.py` to fall and µAP to fall less.
