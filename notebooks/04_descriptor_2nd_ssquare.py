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
# # 4. Descriptor track, 2nd place: ArcFace with one class per image, grown drip by drip (S-square)
#
# Papadakis & Addicam, *Producing augmentation-invariant embeddings from real-life imagery*,
# arXiv 2112.03415; code socom20/facebook-image-similarity-challenge-2021. Final µAP 0.5905 on
# the phase-2 queries of DISC21 (descriptor track, 256-d).
#
# **What you will learn**
#
# * the model: a timm trunk, GeM pooling with a *trainable* p (from 3), a linear neck without
#   bias to the embedding, L2 normalisation;
# * ArcFace (margin 0.4 rad, scale 40) with **one class per training image**: written from
#   scratch, checked against the library and pytorch-metric-learning, and the margin drawn on the circle;
# * the query augmentation whose intensity rises during training;
# * **drip training**: the class set grows stage by stage, the new ArcFace rows start at the
#   current model's embeddings of the new images (and why that matters: the loss at the start of a stage);
# * the ensemble: several models concatenated, PCA-whitened to 256 on the training images, L2;
# * the query shift away from the training images, tuned on one half of the queries and reported on the other.
#
# **What it costs** (measured, `notebooks/README.md`): `smoke` (tiny benchmark, a few steps: it
# checks that the lesson runs) about a minute; `cpu` (two small networks trained **from random
# weights** on the `small` benchmark's 1,000 training images) at most 15 minutes on 2 cores;
# `full` (the published recipe on DISC21, `torchrun` on GPUs) not run here.

# %% tags=["parameters"]
profile = "smoke"        # "smoke" | "cpu" | "full"
results_dir = None       # default: $IMSIM_LAB_RESULTS or <repository>/results
disc21_root = None       # profile "full": a DISC21 folder in the benchmark format
n_gpus = 8               # profile "full": processes of torchrun
seed = 0

# %%
import math
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from IPython.display import display

from imsim_lab.analysis.intervals import family_interval_table, interval_table
from imsim_lab.features import ExtractConfig
from imsim_lab.features.store import load_features
from imsim_lab.lessons import check_profile, contact_sheet, copy_pairs_sheet, evaluate_prepared, lesson_benchmark, run_dir
from imsim_lab.methods import MethodSpec, get_method, prepare
from imsim_lab.methods.postprocess import ssquare_shift
from imsim_lab.runfolder import read_config, read_predictions
from imsim_lab.runner import RunOptions, run_method
from imsim_lab.train.data import to_array
from imsim_lab.train.arcface import ArcFaceHead, arcface_loss, margin_degrees
from imsim_lab.train.lyakaap import split_queries
from imsim_lab.train.ssquare import (PUBLISHED_DRIP, PUBLISHED_TRAIN, DripStage, SSquareConfig, drip_history,
                                     embed_paths, ssquare_net, train_drip, whitened_ensemble)
from imsim_lab.train.ssquare_data import query_view
from imsim_lab.train.views import view_rng

check_profile(profile)
NOTEBOOK = "04_descriptor_2nd_ssquare"
torch.manual_seed(seed)
t_notebook = time.perf_counter()

# The plan of each profile: which networks form the ensemble, at which size, and the drip. "full"
# is the published recipe (two of the eight ensemble members, test26's drip); the CPU plans keep its
# shape (classes double each stage, the intensity rises) at laptop scale, from random weights.
PLAN = {
    "smoke": dict(models=[("test_resnet", 32, 64), ("test_efficientnet", 32, 64)], batch=8, workers=0, pca=32,
                  drip=[DripStage(8, 1, 0.5), DripStage(16, 1, 0.6), DripStage(24, 1, 0.7)]),
    "cpu": dict(models=[("resnet18", 64, 128), ("mobilenetv3_large_100", 64, 128)], batch=32, workers=1, pca=128,
                drip=[DripStage(250, 2, 0.5), DripStage(500, 2, 0.6), DripStage(1000, 2, 0.7)]),
    "full": dict(models=[("eca_nfnet_l1", 160, 384), ("efficientnetv2_rw_s", 224, 384)], batch=64, workers=8,
                 pca=256, drip=list(PUBLISHED_DRIP)),
}[profile]

# %% [markdown]
# ## The data
#
# Every training image is a class of its own: the network learns to recognise *that image*
# through any query-like edit. The training images are never matched by a query and the ground
# truth is not used for training. Queries, references and training images of the benchmark:

# %%
bench = lesson_benchmark(profile, results_dir, seed, disc21_root)
display(pd.Series(bench.counts(), name=bench.name).to_frame().T)
train_paths = [bench.image_path(i) for i in bench.training_ids]
display(copy_pairs_sheet(bench))

# %% [markdown]
# ## Step 1: the model
#
# `ssquare_net` is the registered model: a timm trunk, `GeM` with p a parameter (initialised at 3),
# a linear layer *without* bias to the embedding and L2 normalisation. In eval mode, by hand:

# %%
backbone0, size0, dim0 = PLAN["models"][0]
NAMES = [f"{b} {s}px" for b, s, _ in PLAN["models"]]   # an ensemble may hold one backbone at two sizes
name0 = NAMES[0]
model = ssquare_net(backbone0, size0, dim0)
net = model.module.eval()
print(net.gem, "| neck:", net.fc, "| p trainable:", net.gem.p.requires_grad)
x = torch.randn(2, 3, size0, size0)
with torch.no_grad():
    f = net.forward_features(x)
    p = net.gem.p
    g = f.clamp(min=net.gem.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)    # GeM
    by_hand = F.normalize(g @ net.fc.weight.T, dim=1)                      # neck without bias, L2
    assert torch.allclose(net(x), by_hand, atol=1e-5)
print("S-square forward by hand == library")

# %% [markdown]
# ## Step 2: ArcFace, from scratch
#
# With unit embeddings $x_i$ and unit class rows $W_j$, $\cos\theta_{ij} = x_i \cdot W_j$. ArcFace adds
# the margin $m$ to the *angle* of the own class before the softmax:
#
# $$\text{logit}_{ij} = s\cos(\theta_{ij} + m\,[j = y_i]), \qquad L = \operatorname{mean}_i \operatorname{CE}(\text{logit}_i, y_i),
# \qquad m = 0.4,\ s = 40.$$
#
# The image must sit 0.4 rad (23°) closer to its own row than a plain softmax asks. Here in a few
# lines, against `arcface_loss` and pytorch-metric-learning's `ArcFaceLoss` (margin in degrees):

# %%
from pytorch_metric_learning.losses import ArcFaceLoss

xs, Ws = torch.randn(10, 8), torch.randn(30, 8)
ys = torch.randint(0, 30, (10,))
cos = F.normalize(xs) @ F.normalize(Ws).T
logits = 40 * torch.where(F.one_hot(ys, 30).bool(), torch.cos(torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7)) + 0.4), cos)
scratch = F.cross_entropy(logits, ys)
pml = ArcFaceLoss(30, 8, margin=margin_degrees(0.4), scale=40.0)
with torch.no_grad():
    pml.W.copy_(Ws.T)
print(f"by hand {scratch:.5f}  library {arcface_loss(xs, Ws, ys):.5f}  pytorch-metric-learning {pml(xs, ys):.5f}")
assert torch.allclose(scratch, arcface_loss(xs, Ws, ys), atol=1e-4) and torch.allclose(scratch, pml(xs, ys), atol=1e-3)

# %% [markdown]
# The margin drawn on the circle: an embedding $x$ at angle θ from its class row $W_y$ is scored
# as if it were at θ + m. Its logit $s\cos(\theta + m)$ (red) is below the plain $s\cos\theta$
# (grey) everywhere, so the loss keeps pulling until the angle is well below the other rows'.

# %%
theta = np.linspace(0, math.pi - 0.4, 200)
fig = go.Figure()
t = np.linspace(0, 2 * math.pi, 200)
fig.add_scatter(x=np.cos(t), y=np.sin(t), mode="lines", line=dict(color="lightgrey"), name="unit circle")
th0 = 0.6
for ang, name, col in ((0, "W_y (own class row)", "black"), (th0, "x: θ = 0.6 rad", "blue"),
                       (th0 + 0.4, "scored as θ + m", "red"), (2.2, "W_j (another class)", "grey")):
    fig.add_scatter(x=[0, math.cos(ang)], y=[0, math.sin(ang)], mode="lines+markers", name=name, line=dict(color=col))
fig.update_layout(width=430, height=400, title="the additive angular margin", yaxis_scaleanchor="x")
fig.show()
px.line(pd.DataFrame({"θ (rad)": np.r_[theta, theta], "logit": np.r_[40 * np.cos(theta), 40 * np.cos(theta + 0.4)],
                      "": ["s cos θ"] * len(theta) + ["s cos(θ + m)"] * len(theta)}),
        x="θ (rad)", y="logit", color="", title="own-class logit with and without the margin",
        color_discrete_sequence=["grey", "red"], width=560, height=320).show()

# %% [markdown]
# ## Step 3: the query augmentation and its intensity
#
# Each op of S-square's list fires with a probability proportional to the intensity I (some ops,
# flips, JPEG, colour jitter, have fixed probabilities). The drip raises I from 0.5 to 0.75.
# One training image at three intensities:

# %%
img = bench.load_image(str(bench.training_ids[0]))
views, caps = [img], ["original"]
for inten in (0.5, 0.75, 1.0):
    for k in range(3):
        v, ops = query_view(img, 128, inten, view_rng(seed, 0, k, int(inten * 100)))
        views.append(v)
        caps.append(f"I={inten}: " + ",".join(ops[:3]))
display(contact_sheet(views, caps, size=128, cols=5, caption_height=30))

# %% [markdown]
# ## Step 4: drip training
#
# Each stage trains on the first N training images as N classes, with Adam (1e-3),
# ReduceLROnPlateau (0.9, patience 2) and gradient clipping at 1. Between stages the ArcFace
# matrix keeps its rows and gets new ones, each the current model's embedding of a new image.
# Each network of the ensemble is drip-trained the same way (every stage is a resumable run of
# the shared trainer; in `full` the whole drip is one `torchrun` command per network).

# %%
t_train = time.perf_counter()
trained, drip_rows = {}, []
for backbone, size, dim in PLAN["models"]:
    out = run_dir(NOTEBOOK, f"train/{backbone}_{size}", results_dir, profile)
    cfg = SSquareConfig(backbone=backbone, size=size, dim=dim, pretrained=profile == "full", stages=tuple(PLAN["drip"]),
                        train=replace(PUBLISHED_TRAIN, batch_size=PLAN["batch"], num_workers=PLAN["workers"],
                                      checkpoint_every=20, seed=seed))
    if profile == "full":
        import subprocess

        st = PLAN["drip"]
        cmd = ["torchrun", "--standalone", "--nproc_per_node", str(n_gpus), "-m", "imsim_lab", "train", "ssquare",
               "--bench", str(bench.root), "--out", str(out), "--backbone", backbone, "--size", str(size),
               "--dim", str(dim), "--pretrained", "--classes", ",".join(str(s.classes) for s in st),
               "--epochs", ",".join(str(s.epochs) for s in st), "--intensity", ",".join(str(s.intensity) for s in st),
               "--batch-size", str(max(1, PLAN["batch"] // n_gpus))]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
    else:
        train_drip(train_paths, out, cfg)
    trained[f"{backbone} {size}px"] = out / "weights.pt"
    drip_rows += [dict(r, model=f"{backbone} {size}px") for r in drip_history(out)]
train_seconds = time.perf_counter() - t_train
hist = pd.DataFrame(drip_rows)
hist["stage"] = hist["stage"].astype(str) + ": " + hist["classes"].astype(str) + " classes"
print(f"training: {train_seconds:.0f} s")
px.line(hist, x="step", y="loss", color="stage", facet_col="model", title="ArcFace loss per step, by drip stage").show()
display(hist.groupby(["model", "stage"])["loss"].agg(["first", "last", "count"]).round(3))

# %% [markdown]
# ### Why the new rows start at the embeddings
#
# At a stage boundary the new classes need rows. Random rows point anywhere: each new image's
# own logit is then no larger than the others' and the loss jumps back to about log(N) + the
# margin's share. Rows set to the model's embedding of each new image start at θ ≈ 0 for clean
# images, so only the augmentation has to be learned. The ArcFace loss of the first model's
# last stage's new images (query-augmented views), with the model *before* that stage, both ways:

# %%
backbone, size, dim = PLAN["models"][0]
first = run_dir(NOTEBOOK, f"train/{backbone}_{size}", results_dir, profile)
k_last = len(PLAN["drip"])
prev = first / f"stage{k_last - 1}"
n_old, n_new = PLAN["drip"][-2].classes, PLAN["drip"][-1].classes
m_prev = ssquare_net(backbone, size, dim, weights_path=prev / "weights.pt")
ck = torch.load(prev / "checkpoint.pt", map_location="cpu", weights_only=True)
old_rows = ck["criterion"]["weight"]
new_paths = train_paths[n_old:n_new]
emb_rows = embed_paths(m_prev.module, new_paths, size, m_prev.config.mean, m_prev.config.std)
views = torch.from_numpy(np.stack([to_array(query_view(bench.load_image(str(bench.training_ids[n_old + i])), size,
                                                       PLAN["drip"][-1].intensity, view_rng(seed, 0, i, 9))[0],
                                            m_prev.config.mean, m_prev.config.std) for i in range(len(new_paths))]))
with torch.no_grad():
    z = m_prev.module.eval()(views)
labels = torch.arange(n_old, n_new)
boundary = {}
for name, rows in (("rows = embeddings of the new images", emb_rows),
                   ("random rows", ArcFaceHead(n_new - n_old, dim, seed=seed + 1).weight.detach())):
    head = ArcFaceHead(n_old, dim, init=old_rows).grown(rows)
    boundary[name] = float(arcface_loss(z, head.weight.detach(), labels))
display(pd.Series(boundary, name=f"ArcFace loss of the {n_new - n_old} new classes at the start of stage {k_last}").round(3))

# %% [markdown]
# ## Step 5: single models, the whitened ensemble, the query shift
#
# The ensemble is the registered method `ssquare_ensemble`: its model runs every trained network
# (its *members*, named by their training folders) on each image and puts the descriptors side by
# side; its post-processing is PCA whitening fitted on the training images (256 dimensions; here
# the `pca` of the plan), L2, then the query shift (`a`; `a = 0` turns it off). On the command line:
# `imsim-lab run ssquare_ensemble --bench B --out R -p 'model.members=["RUN1", "RUN2"]'`.
#
# Each member's descriptors are a slice of the ensemble's features (its part of the concatenation,
# exactly what the network gives alone), so the single models are evaluated from the same run
# without extracting again: raw, and through the method `ssquare` (one network + PCAW + L2 + shift).
# The floor is the first network with **random weights** (random convolutional features already
# match mild edits).

# %%
# a shared feature cache: the same model on the same images is extracted once for all run folders
opts = RunOptions(extract=ExtractConfig(batch_size=64, num_workers=PLAN["workers"]),
                  feature_cache=str(run_dir(NOTEBOOK, "feature_cache", results_dir, profile)))
t_eval = time.perf_counter()
runs = {}
floor = MethodSpec("ssquare_random", "ssquare_net", "none", model_args=dict(backbone=backbone0, input_size=size0, dim=dim0),
                   description="S-square net, RANDOM weights (floor)")
out = run_dir(NOTEBOOK, "random", results_dir, profile)
run_method(floor, bench.root, out, opts=opts)
runs[f"{name0} random weights"] = read_predictions(out)
members = [str(trained[n].parent) for n in NAMES]
ens_params = {"model.members": members, "dim": PLAN["pca"]}
ens_out = run_dir(NOTEBOOK, "ensemble_pcaw", results_dir, profile)
run_method("ssquare_ensemble", bench.root, ens_out, {**ens_params, "a": 0.0}, opts=opts)
out = run_dir(NOTEBOOK, "ensemble_pcaw_shift", results_dir, profile)     # features from the cache
run_method("ssquare_ensemble", bench.root, out, {**ens_params, "a": 1.8}, opts=opts)
runs["ensemble PCAW + L2 + shift a=1.8 (run folder)"] = read_predictions(out)
eval_seconds = time.perf_counter() - t_eval

fs = {s: load_features(ens_out / "features", s) for s in ("query", "reference", "training")}
qids, rids = fs["query"].ids, fs["reference"].ids
dims = [d for _, _, d in PLAN["models"]]
edges = np.cumsum([0] + dims)
feats = {n: {s: np.asarray(fs[s].x[:, lo:hi]) for s in fs} for n, lo, hi in zip(NAMES, edges, edges[1:])}
print(f"ensemble: {' + '.join(map(str, dims))} = {sum(dims)} dims -> PCAW {read_config(ens_out)['notes']['pca_dim']} "
      f"+ L2; evaluation runs {eval_seconds:.0f} s")
raw = MethodSpec("raw", "ssquare_net", "none")
for b in feats:
    _, runs[f"{b} trained"] = evaluate_prepared(bench, qids, rids, prepare(raw, feats[b]["query"], feats[b]["reference"], None, {}))
ssq = get_method("ssquare")
_, p_ssq = ssq.resolve({"dim": PLAN["pca"]})
f0 = feats[name0]
_, runs[f"{name0} + PCAW + shift (method ssquare)"] = evaluate_prepared(
    bench, qids, rids, prepare(ssq, f0["query"], f0["reference"], f0["training"], p_ssq))
runs["ensemble PCAW + L2"] = read_predictions(ens_out)
table = interval_table(bench.gt, runs, baseline=f"{name0} random weights")
display(table.round(4))

# %% [markdown]
# Did the networks learn? Each trained row against the random-weights floor, with the paired
# bootstrap interval of the difference (`Δ lo`, `Δ hi`): a difference whose interval contains 0
# is not separable on this benchmark.

# %%
gain = table.loc[f"{name0} trained", "Δ µAP"]
print(f"µAP trained - random ({name0}) = {gain:+.4f} [{table.loc[f'{name0} trained', 'Δ lo']:+.4f}, "
      f"{table.loc[f'{name0} trained', 'Δ hi']:+.4f}]")
if profile == "cpu":
    assert table.loc[f"{name0} trained", "Δ lo"] > 0, "the cpu lesson must show learning above random weights"

# %% [markdown]
# ## Step 6: the query shift, tuned on one half and reported on the other
#
# $q' = q + a\,\sqrt{\operatorname{mean}_{k\le3} q\cdot t_k}\;\operatorname{norm}\big(\operatorname{mean}_{k\le K}(q - t_k)/\lVert q - t_k\rVert\big)$
# with the K = 100 nearest training descriptors $t_k$; queries in dense regions of the training
# distribution move farther from everything. The factor a (published 1.8) is picked on one seeded
# half of the queries and the result reported on the other half, on the whitened ensemble.
# From scratch for one query first:

# %%
ens = get_method("ssquare_ensemble")
_, p_ens = ens.resolve({"dim": PLAN["pca"], "a": 0.0})
plain = prepare(ens, fs["query"].x, fs["reference"].x, fs["training"].x, p_ens)      # whitened, no shift
yq, yb = plain.xq, plain.xb
wq, wb, yt = whitened_ensemble([feats[b]["query"] for b in feats], [feats[b]["reference"] for b in feats],
                               [feats[b]["training"] for b in feats], dim=PLAN["pca"])
assert np.allclose(yq, wq, atol=1e-4) and np.allclose(yb, wb, atol=1e-4)   # the method == the library function
K = min(100, len(yt))
q0 = yq[0]
d2 = ((yt - q0) ** 2).sum(1)
nn = np.argsort(d2)[:K]
u = (q0 - yt[nn]) / np.linalg.norm(q0 - yt[nn], axis=1, keepdims=True)
dvec = u.mean(0) / np.linalg.norm(u.mean(0))
c = 1 - d2[nn] / 2
by_hand = q0 + 1.8 * math.sqrt(max(c[:3].mean(), 0)) * dvec
assert np.allclose(by_hand, ssquare_shift(yq[:1], yt, 1.8, K, 3, "numpy")[0], atol=1e-4)
print("query shift by hand == library")
tune_q, report_q = split_queries(bench.gt.query_ids, 0.5, seed)
sweep, shifted = [], {}
for a in (0.0, 0.5, 1.0, 1.5, 1.8, 2.5, 3.5):
    _, pa = ens.resolve({"dim": PLAN["pca"], "a": a, "K": K})
    _, preds = evaluate_prepared(bench, qids, rids, prepare(ens, fs["query"].x, fs["reference"].x, fs["training"].x, pa))
    shifted[a] = preds
    m = interval_table(bench.gt, {a: preds}, n_boot=1, queries=tune_q)
    sweep.append({"a": a, "µAP (tuning half)": m.loc[a, "µAP"]})
sweep = pd.DataFrame(sweep)
best_a = float(sweep.loc[sweep["µAP (tuning half)"].idxmax(), "a"])
display(sweep.round(4))
held = interval_table(bench.gt, {"ensemble PCAW + L2": runs["ensemble PCAW + L2"],
                                 f"+ query shift a={best_a} (tuned)": shifted[best_a],
                                 "+ query shift a=1.8 (published)": shifted[1.8]},
                      baseline="ensemble PCAW + L2", queries=report_q)
print(f"a picked on the tuning half: {best_a}; reported on the other half ({len(report_q)} queries):")
display(held.round(4))

# %% [markdown]
# ## Step 7: per transformation family, with intervals

# %%
fam = family_interval_table(bench, {k: runs[k] for k in (f"{name0} random weights", f"{name0} trained",
                                                          "ensemble PCAW + L2")} | {"+ shift (published a)": shifted[1.8]})
fig = px.bar(fam, x="family", y="micro_ap", color="run", barmode="group", error_y=fam["hi"] - fam["micro_ap"],
             error_y_minus=fam["micro_ap"] - fam["lo"], title="µAP per family (95 % bootstrap intervals)")
fig.show()
print(f"notebook time: {time.perf_counter() - t_notebook:.0f} s (training {train_seconds:.0f} s)")

# %% [markdown]
# ## What the paper reported, and why it differs here
#
# | | data | µAP | R@P90 | source |
# |---|---|---|---|---|
# | S-square final submission | DISC21 phase 2 | 0.5905 | – | drivendataorg/image-similarity-challenge README |
# | best single model (eca_nfnet_l1, 160 px) | DISC21 phase 1, public GT | 0.6642 | 0.5548 | `phase2_scripts/submissions_v9.ipynb` outputs |
# | 8-model concatenation + PCAW 256 + L2 | same | 0.6869 | 0.5742 | same |
# | + query shift (a 1.8, K 100, top 3) | same | 0.7267 | 0.6522 | same |
# | this notebook | the tables above | | | measured here |
#
# Why the numbers differ: the published networks start from ImageNet weights, are 20-100×
# larger, train on up to 1M classes (plus ImageNet images as extra classes) for tens of epochs at
# 160-512 px on GPUs, and the ensemble has eight members. The `cpu` lesson trains two small
# networks **from random weights** (no model hub here) on 1,000 classes for a few epochs at 64 px;
# its ensemble has two members. Expect the *direction* of each published step to be what can carry
# over: training above the random floor, the ensemble at or above its best member, and the shift
# helping most where queries resemble the training distribution; and read each difference against
# its interval: on 1,000 queries several of these steps are not separable. disc-synth also has far
# fewer distractors than DISC21, so the absolute values are not comparable.
#
# ## Exercises
#
# 1. Train with one stage of all classes instead of the drip (`PLAN["drip"] = [DripStage(1000, 8, 0.7)]`
#    in `cpu`): does the drip buy anything at this scale? Expect a higher starting loss and a
#    result inside the drip's interval.
# 2. Initialise the new rows randomly (`ArcFaceHead(...).grown(random rows)`): the boundary table
#    above predicts the loss jump; measure the final µAP.
# 3. Raise the intensity to 1.0 in every stage (S-square's test25). Which families change?
# 4. Add a third network (e.g. `efficientnet_b0`) to the ensemble. Does PCAW-256 of three
#    beat the best of two outside the interval?
# 5. Sweep K of the query shift (10, 30, 100) on the tuning half; report on the other half.
