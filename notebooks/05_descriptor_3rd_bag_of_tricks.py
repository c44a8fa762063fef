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
# # 5. Bag of Tricks (descriptor track, 3rd): a strong baseline built trick by trick
#
# Wang, Zhang, Sun, Yang (VisionForce), *Bag of Tricks and A Strong Baseline for Image Copy
# Detection*, arXiv 2111.08004; code WangWenhao0716/ISC-Track2-Submission. The same team's
# training recipe, without the 256-d head, gives the backbones of D2LV, the matching-track winner
# (lesson 6).
#
# **What you will learn**
#
# * the network piece by piece: a ResNet with the last stride set to 1, WaveBlocks (shown on a
#   feature map), GeM with a learnable p, the 2c → 4c projector and the 256-d "matrix" head;
# * the loss: label-smoothed cross-entropy on two heads, distillation between them (T = 2) and a
#   batch-hard soft triplet, each written from scratch and checked against the library, weighted
#   10 / 1 / 2 / 1;
# * one class per training image with K views per batch (PK sampling);
# * Barlow Twins initialisation of the trunk against random initialisation;
# * multi-scale descriptors, PCA to 256;
# * the overlay crop of the queries: an overlay detector trained here, a query replaced by its crop when
#   the detector is confident (`-p queries.crops=`), its threshold chosen on one half of the queries and
#   reported on the other, against the recorded boxes of disc-synth (the upper bound of any detector);
# * descriptor stretching (its factor tuned on one half of the queries and reported on the other);
# * µAP per family with paired bootstrap intervals, and the calibration pictures.
#
# **What it costs** (measured, `notebooks/README.md`): `smoke` about a minute; `cpu` (a ResNet-18
# trained **from random weights** and from a short Barlow Twins pretraining, at 64 px, on the
# `small` benchmark) at most 15 minutes on 2 cores (measured: 9 min 54 s with one torch thread at load
# 1.2-2.6, 667 CPU s), of which the overlay crop (training the small detector, detecting, embedding the
# crops, the threshold sweep and two runs) about 35 CPU s;
# `full` (the published recipe on DISC21, 4 GPUs) not run here: its commands are printed and tested
# at toy size.

# %% tags=["parameters"]
profile = "smoke"        # "smoke" | "cpu" | "full"
results_dir = None       # default: $IMSIM_LAB_RESULTS or <repository>/results
disc21_root = None       # profile "full": a DISC21 folder in the benchmark format
n_gpus = 4               # profile "full": processes of torchrun
barlow_weights = None    # profile "full": the released Barlow Twins resnet50.pth (path or URL)
barlow_sha256 = None     # profile "full": its sha256
seed = 0

# %%
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.express as px
import torch
import torch.nn.functional as F
from IPython.display import display
from PIL import ImageDraw

from imsim_lab.analysis.calibration import calibration_figure, calibration_table, failure_gallery, pr_curves, sweep_halves
from imsim_lab.analysis.intervals import family_interval_table, interval_table, paired_differences
from imsim_lab.analysis.report.figures import pr_figure
from imsim_lab.features import ExtractConfig
from imsim_lab.features import detector as D
from imsim_lab.features.dataset import ImageSource
from imsim_lab.features.models import create_model, get_config
from imsim_lab.features.models.bot import BoTNet, MultiScalePreprocess, WaveBlock, scaled_scales
from imsim_lab.features.models.weights import sha256_file
from imsim_lab.features.query_crops import BOT_THRESHOLD, box_query_descriptors, detected_boxes
from imsim_lab.features.views import View, apply_view
from imsim_lab.features.store import load_features
from imsim_lab.lessons import check_profile, contact_sheet, copy_pairs_sheet, evaluate_prepared, lesson_benchmark, query_halves, run_dir
from imsim_lab.methods import get_method, prepare
from imsim_lab.runfolder import read_predictions
from imsim_lab.runner import RunOptions, run_method
from imsim_lab.train.barlow import BarlowConfig, barlow_twins_loss, train_barlow
from imsim_lab.train.bot import PUBLISHED_TRAIN, BoTConfig, schedule_steps, train_bot
from imsim_lab.train.bot_data import KViewImages
from imsim_lab.train.bot_losses import BoTLoss, batch_hard_soft_triplet, distillation, label_smoothed_ce
from imsim_lab.train.trainer import lr_at

check_profile(profile)
NOTEBOOK = "05_descriptor_3rd_bag_of_tricks"
torch.manual_seed(seed)


def cpu_seconds():
    """CPU seconds (user + system) of this kernel and of its finished children (the loader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


t_notebook, c_notebook = time.perf_counter(), cpu_seconds()
cost = {}  # phase -> wall and CPU seconds, shown at the end


class timed:
    """``with timed("phase"):`` records the block's wall and CPU seconds in ``cost``."""

    def __init__(self, phase):
        self.phase = phase

    def __enter__(self):
        self.t, self.c = time.perf_counter(), cpu_seconds()

    def __exit__(self, *exc):
        cost[self.phase] = {"wall s": time.perf_counter() - self.t, "CPU s": cpu_seconds() - self.c}
        print(f"{self.phase}: {cost[self.phase]['wall s']:.0f} s wall, {cost[self.phase]['CPU s']:.0f} CPU s")

# The plan of each profile. CPU plan: a small trunk from random weights (or a five-epoch Barlow Twins
# pretraining on the same training images), 64 px, P = 16 classes x K = 4 views, three epochs over
# all 1,000 training images as classes (186 steps), three test scales. Measured on the shared
# 2-core machine with one torch thread: about 0.9 CPU s per step of 64 views for either training,
# about 45 CPU s per evaluation run at three scales (3,000 images): about 800 CPU s in all
# (the table at the end of the notebook has each phase).
PLAN = {
    "smoke": dict(trunk="test_resnet", size=32, k=2, p=4, epochs=1, classes=None, bt_epochs=1, bt_batch=8, workers=0,
                  scales=None),
    "cpu": dict(trunk="resnet18", size=64, k=4, p=16, epochs=3, classes=None, bt_epochs=5, bt_batch=32, workers=1,
                scales=[48, 64, 80]),
    "full": dict(trunk="resnet50", size=256, k=4, p=32 // n_gpus, epochs=25, classes=None, bt_epochs=0, bt_batch=0,
                 workers=8, scales=None),
}[profile]
# the test scales: 200/256/320/400 at 256 px, the same ratios at other sizes (cpu: three of them, for time)
SCALES = PLAN["scales"] or scaled_scales(PLAN["size"])

# %% [markdown]
# ## The data
#
# Bag of Tricks trains on the benchmark's *training* images only, each one its own class; the
# queries and references are never seen in training. Here: the disc-synth benchmark of the
# profile (DISC21 for `full`, where the authors used 100,000 of the 1M training images).

# %%
bench = lesson_benchmark(profile, results_dir, seed, disc21_root)
display(pd.Series(bench.counts(), name=bench.name).to_frame().T)
train_paths = [bench.image_path(i) for i in bench.training_ids]
display(copy_pairs_sheet(bench))

# %% [markdown]
# ## Step 1: the network, piece by piece
#
# **Last stride 1.** The first block of the last ResNet stage normally halves the feature map;
# setting its stride to 1 keeps twice the resolution (4× the positions) for GeM to pool, at the
# same number of weights. The published trunk is ResNet-50 (D2LV also used ResNet-50-IBN-a, which
# timm does not provide); here `PLAN["trunk"]`.

# %%
import timm

stock = timm.create_model(PLAN["trunk"], num_classes=0, global_pool="").eval()
net = BoTNet(PLAN["trunk"]).eval()
x = torch.randn(1, 3, 128, 128)
with torch.no_grad():
    print("128-px input; stock last feature map:", tuple(stock.forward_features(x).shape),
          "| last stride 1:", tuple(net.forward_features(x).shape))
    assert net.forward_features(x).shape[-1] == 2 * stock.forward_features(x).shape[-1]

# %% [markdown]
# **WaveBlock** (Wang et al., "Attentive WaveBlock", arXiv 2006.06525), after `layer2` and
# `layer3`, in training only: a random horizontal band of 30 % of the height is kept and
# everything outside it is multiplied by 1.5, so the network cannot rely on one region of the
# image. On the `layer2` feature map of a training image (mean over channels), three draws:

# %%
img = bench.load_image(str(bench.training_ids[0])).resize((PLAN["size"] * 2, PLAN["size"] * 2))
prep = MultiScalePreprocess(get_config("bot_net", backbone=PLAN["trunk"], scales=[PLAN["size"] * 2]))
xi = torch.from_numpy(prep(img))[None]
t = net.trunk
with torch.no_grad():
    fmap = t.layer2(t.layer1(t.maxpool(t.act1(t.bn1(t.conv1(xi))))))
wb = WaveBlock().train()
torch.manual_seed(seed)
maps = [fmap.mean(1)[0]] + [wb(fmap).mean(1)[0] for _ in range(3)]
fig = px.imshow(torch.stack(maps).numpy(), facet_col=0, color_continuous_scale="viridis",
                title="layer2 feature map (channel mean): as is, then three WaveBlock draws")
fig.for_each_annotation(lambda a: a.update(text=["as is", "draw 1", "draw 2", "draw 3"][int(a.text.split("=")[1])]))
fig.show()
band = (wb.mask(fmap.shape[-2], start=2)[:, 0] == 1).nonzero().flatten().tolist()
print(f"rows kept at 1 when the band starts at row 2 (height {fmap.shape[-2]}): {band}; the rest x {wb.factor}")
assert torch.equal(WaveBlock().eval()(fmap), fmap)

# %% [markdown]
# **GeM, projector, head.** GeM pools with a learnable p (initialised at 3; the published test
# code pools with p = 3). The projector c → 2c → BN → LeakyReLU(0.2) → 4c → BN (no shift) gives the
# wide feature (8,192-d for ResNet-50: D2LV's descriptor); the matrix head BN → LeakyReLU → 256 →
# BN (no shift) gives BoT's descriptor. By hand, in eval mode, against the library:

# %%
x = torch.randn(2, 3, PLAN["size"], PLAN["size"])
with torch.no_grad():
    f = net.forward_features(x)
    g = f.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    wide = net.projector(g)
    by_hand = F.normalize(net.head(wide), dim=1)
    assert torch.allclose(net(x), by_hand, atol=1e-5)
print(f"GeM p (learnable) = {net.gem.p.item():.1f}; widths (GeM, wide, head) = {net.dims}; forward by hand == library")

# %% [markdown]
# ## Step 2: the loss, term by term
#
# With z_w, z_h the logits of two bias-free classifiers (one class per training image) on the
# wide and the head feature, and g the GeM feature:
#
# $$L = 10\,\mathrm{CE}_\varepsilon(z_w, y) + 1\,\mathrm{CE}_\varepsilon(z_h, y) + 2\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(z_w/T)\,\|\,\mathrm{softmax}(z_h/T)\big) + 1\,\operatorname{mean}_i \log\big(1 + e^{d_{ap}(i) - d_{an}(i)}\big)$$
#
# with label smoothing ε = 0.1 (target (1 − ε) one-hot + ε/K), T = 2 (the wide classifier is the
# teacher and gets no gradient from this term), and for each anchor its farthest positive and
# nearest negative in the batch (batch-hard, soft margin). From scratch, against the library:

# %%
torch.manual_seed(seed)
n_cls, y = 6, torch.tensor([0, 0, 1, 1, 5, 5])
zw, zh, gg = torch.randn(6, n_cls), torch.randn(6, n_cls), torch.randn(6, 8)
q = torch.full((6, n_cls), 0.1 / n_cls)
q[torch.arange(6), y] += 0.9
ce = -(q * F.log_softmax(zw, 1)).sum(1).mean()
p_t, p_s = F.softmax(zw / 2, 1), F.softmax(zh / 2, 1)
kd = 4 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
d = torch.cdist(gg, gg)
same = y[:, None] == y[None, :]
d_ap = torch.where(same, d, torch.zeros_like(d)).max(1).values
d_an = torch.where(~same, d, torch.full_like(d, 1e9)).min(1).values
tri = torch.log1p(torch.exp(d_ap - d_an)).mean()
print(f"CE_ε  by hand {ce:.5f}  library {label_smoothed_ce(zw, y):.5f}  torch {F.cross_entropy(zw, y, label_smoothing=0.1):.5f}")
print(f"KD    by hand {kd:.5f}  library {distillation(zh, zw):.5f}")
print(f"triplet by hand {tri:.5f}  library {batch_hard_soft_triplet(gg, y):.5f}")
assert torch.allclose(ce, label_smoothed_ce(zw, y), atol=1e-5) and torch.allclose(kd, distillation(zh, zw), atol=1e-5)
assert torch.allclose(tri, batch_hard_soft_triplet(gg, y), atol=1e-5)
crit = BoTLoss(n_cls, (8, n_cls * 2, n_cls))
out = torch.randn(6, 8 + 3 * n_cls)
terms = crit.terms(out, y)
assert torch.allclose(crit(out, y), 10 * terms["ce_wide"] + terms["ce_head"] + 2 * terms["kd"] + terms["triplet"])
display(pd.Series({k: float(v) for k, v in terms.items()}, name="terms at random weights").round(4).to_frame().T)

# %% [markdown]
# ## Step 3: one class per image, K views per batch
#
# The authors made 19 augmented copies of each training image offline (20 images per class with
# the original; `write_offline_copies`, the `full` option), then drew P classes × K = 4 images
# per batch. Here the K views are made on the fly from the lab's transformation families with
# BoT's probabilities (rotation, pixelisation, pixel shuffling, perspective, padding, an image laid
# over a small part, colour jitter, blur, grayscale, flip, emoji, text, this image pasted onto
# another), then the online flip, pad 10 and random crop. Two classes, K views each:

# %%
demo = KViewImages(train_paths, 4, 128, (0.5,) * 3, (0.25,) * 3, seed=seed)
imgs, caps = [], []
for i in range(2):
    imgs.append(bench.load_image(str(bench.training_ids[i])))
    caps.append(f"class {i}: original")
    for v, applied in demo.views(i, 0):
        imgs.append(v)
        caps.append(",".join(a for a in applied if a not in ("blur", "color_jitter"))[:28] or "jitter, blur")
display(contact_sheet(imgs, caps, size=128, cols=5, caption_height=30))

# %% [markdown]
# ## Step 4: Barlow Twins, the self-supervised initialisation
#
# The published trunk starts from Barlow Twins (Zbontar et al., arXiv 2103.03230), trained on
# ImageNet without labels: two views of each image through the trunk and a projector, and with
# the cross-correlation C of their batch-standardised embeddings,
# $L = \sum_i (1 - C_{ii})^2 + \lambda \sum_{i\ne j} C_{ij}^2$, λ = 0.0051. From scratch:

# %%
za, zb = torch.randn(32, 5), torch.randn(32, 5)
A = (za - za.mean(0)) / za.std(0, unbiased=False)
B = (zb - zb.mean(0)) / zb.std(0, unbiased=False)
C = A.T @ B / 32
bt = ((1 - C.diagonal()) ** 2).sum() + 0.0051 * (C ** 2).sum() - 0.0051 * (C.diagonal() ** 2).sum()
print(f"Barlow Twins by hand {bt:.5f}  library {barlow_twins_loss(za, zb):.5f}")
assert torch.allclose(bt, barlow_twins_loss(za, zb), atol=1e-4)

# %% [markdown]
# `full` loads the released ResNet-50 (1,000 epochs on ImageNet; a path or URL with its sha256,
# read with `weights_only`). The `cpu` lesson cannot download it, so it pretrains the same small
# trunk with Barlow Twins on the benchmark's 1,000 training images for five epochs (155 steps of
# 32 pairs; Adam instead of LARS at this batch size), and the comparison below is *this* short
# pretraining against random initialisation, not ImageNet's. The loss curve says whether the
# pretraining moved at all; the interval of Step 6 says whether it helps.

# %%
bt_out = run_dir(NOTEBOOK, "train/barlow", results_dir, profile)
if profile == "full":
    init_trunk = barlow_weights
    if not barlow_weights:
        raise ValueError("profile 'full': pass barlow_weights= the released resnet50.pth (path or URL) and barlow_sha256=")
else:
    bcfg = BarlowConfig(backbone=PLAN["trunk"], size=PLAN["size"], train=replace(
        BarlowConfig().train, optimizer="adam", lr=1e-3, weight_decay=1.5e-6, batch_size=PLAN["bt_batch"],
        epochs=PLAN["bt_epochs"], num_workers=PLAN["workers"], checkpoint_every=50, seed=seed))
    with timed("Barlow Twins pretraining"):
        bres = train_barlow(train_paths, bt_out, bcfg)
    init_trunk = bt_out / "trunk.pt"
    bt_hist = pd.DataFrame(bres.history)
    bt_hist["mean of the last 10 steps"] = bt_hist["loss"].rolling(10, min_periods=1).mean()
    px.line(bt_hist, x="step", y=["loss", "mean of the last 10 steps"], title="Barlow Twins loss per step").show()
    n10 = min(10, len(bt_hist))
    first, last = bt_hist["loss"].head(n10).mean(), bt_hist["loss"].tail(n10).mean()
    print(f"Barlow Twins: {len(bt_hist)} steps of {PLAN['bt_batch']} image pairs; loss, mean of the first {n10} steps "
          f"{first:.0f}, of the last {n10} {last:.0f} ({100 * (last - first) / first:+.0f} %)")

# %% [markdown]
# ## Step 5: training, from random weights and from the Barlow Twins trunk
#
# Adam at 3.5e-4; the learning rate's factor warms up linearly from 0.01 over the first 5/25 of
# the run, stays at 1 until 10/25, then follows a cosine to 0 (published: 25 epochs of 8,000
# iterations of 128 images). The same schedule, scaled to this run's length:

# %%
tc = replace(PUBLISHED_TRAIN, batch_size=PLAN["p"], epochs=PLAN["epochs"], num_workers=PLAN["workers"],
             checkpoint_every=50, seed=seed)
n_classes = len(train_paths[:PLAN["classes"]])
sched = schedule_steps(tc, n_classes)
total = PLAN["epochs"] * (n_classes // PLAN["p"])
px.line(x=list(range(total)), y=[lr_at(s, total, sched) for s in range(total)],
        labels={"x": "step", "y": "learning rate"}, title="warm-up, constant, cosine").show()

# %%
weights, hist = {}, []
for name, init in (("from random", None), ("from Barlow Twins", init_trunk)):
    out = run_dir(NOTEBOOK, f"train/{'random_init' if init is None else 'barlow_init'}", results_dir, profile)
    cfg = BoTConfig(backbone=PLAN["trunk"], size=PLAN["size"], k=PLAN["k"], train=tc)
    if profile == "full":
        cmd = ["torchrun", "--standalone", "--nproc_per_node", str(n_gpus), "-m", "imsim_lab", "train", "bot",
               "--bench", str(bench.root), "--out", str(out), "--batch-size", str(PLAN["p"]), "--k", str(PLAN["k"]),
               "--epochs", str(PLAN["epochs"]), "--offline", str(run_dir(NOTEBOOK, "train/offline", results_dir, profile))]
        if init is not None:
            cmd += ["--init-trunk", str(init), "--init-sha256", str(barlow_sha256)]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
        weights[name] = out / "weights.pt"
        continue
    with timed(f"training {name}"):
        res = train_bot(train_paths[:PLAN["classes"]], out, cfg, init_trunk=init)
    weights[name] = res.weights
    hist += [dict(r, run=name) for r in res.history]
if hist:
    px.line(pd.DataFrame(hist), x="step", y="loss", color="run", title="10 CE + CE + 2 KD + triplet per step").show()

# %% [markdown]
# ## Step 6: evaluation: random weights, the two trainings, single- against multi-scale
#
# Run folders through `imsim-lab run`'s path (the extraction pipeline, the method's
# post-processing): the same network with **random weights** (the floor), the trained networks at
# one scale and at four scales (200/256/320/400 for 256-px training; the same ratios at this
# profile's size, printed below), each followed by PCA to 256 fitted on the training images
# (method `bot`); the Barlow-initialised network also with descriptor stretching at the published
# c = 2.5 (method `bot+stretch`: same model, so its features come from the feature cache, not a
# second extraction; a random-weights run and a trained one cannot share).

# %%
opts = RunOptions(extract=ExtractConfig(batch_size=32, num_workers=PLAN["workers"]),
                  feature_cache=str(run_dir(NOTEBOOK, "feature_cache", results_dir, profile)),
                  provenance={"writer": f"notebook {NOTEBOOK} ({profile})", "saw_eval_queries": False})
base = dict(backbone=PLAN["trunk"], input_size=PLAN["size"])
print(f"training at {PLAN['size']} px; test scales {SCALES}")
runs, results = {}, {}


def _run(label, folder, method, params=None, **model):
    spec = get_method(method)
    over = {**{f"model.{k}": v for k, v in {**base, **model}.items()}, **(params or {})}
    with timed(f"run {label}"):
        res = run_method(spec, bench.root, run_dir(NOTEBOOK, folder, results_dir, profile), overrides=over, opts=opts)
    runs[label], results[label] = read_predictions(res.out), res
    return res


def _w(name):
    return {"weights_path": str(weights[name]), "weights_sha256": sha256_file(weights[name])}


_run("random weights (multi-scale)", "random", "bot", scales=SCALES)
_run("trained from random, one scale", "trained_one_scale", "bot", scales=[PLAN["size"]], **_w("from random"))
_run("trained from random (multi-scale)", "trained", "bot", scales=SCALES, **_w("from random"))
_run("trained from Barlow Twins (multi-scale)", "trained_barlow", "bot", scales=SCALES, **_w("from Barlow Twins"))
_run("trained from Barlow Twins + stretch", "trained_barlow_stretch", "bot+stretch", scales=SCALES,
     **_w("from Barlow Twins"))
table = interval_table(bench.gt, runs, baseline="random weights (multi-scale)")
display(table.round(4))
gain = table.loc["trained from random (multi-scale)"]
print(f"µAP trained - random weights = {gain['Δ µAP']:+.4f} [{gain['Δ lo']:+.4f}, {gain['Δ hi']:+.4f}]")
if profile == "cpu":
    assert gain["Δ lo"] > 0, "the cpu lesson must show learning above random weights"

# %% [markdown]
# Each trick as a paired difference (same resamples): an interval that holds 0 means the trick is
# not separable on this benchmark at this budget.

# %%
pairs = {"multi-scale (trained from random)": ("trained from random (multi-scale)", "trained from random, one scale"),
         "Barlow Twins init vs random init": ("trained from Barlow Twins (multi-scale)", "trained from random (multi-scale)"),
         "stretching (Barlow init)": ("trained from Barlow Twins + stretch", "trained from Barlow Twins (multi-scale)")}
abl = paired_differences(bench.gt, runs, pairs)
display(abl.round(4))
for what, r in abl.iterrows():
    verdict = "a gain (interval above 0)" if r["lo"] > 0 else "a loss (interval below 0)" if r["hi"] < 0 else \
        "not separable at this budget (the interval holds 0)"
    print(f"{what}: {r['Δ µAP']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]: {verdict}")

# %% [markdown]
# ## Step 7: the overlay crop of the queries
#
# Before the multi-scale extraction, BoT runs an overlay detector (YOLOv5x, trained on training
# images with overlays pasted in and labelled automatically) on every query and, when a box has a
# confidence over **0.90**, *replaces* the query by that crop: a query that is a small copy pasted on
# another picture becomes the copy alone. The crop then goes through the same multi-scale
# extraction. The references are never cropped.
#
# The lab has no YOLOv5 (AGPL). The detector here is the small one of lessons 06 and 08
# (`imsim_lab.features.detector`: a CNN with an anchor-free grid head, FCOS-style), trained from
# scratch on composites of the *training* images made with disc-synth's `paste`, `combine`, `pad`
# and `airgap` ops, whose recorded parameters give the true box; with their `cpu` settings (64-px
# inputs, 1,000 composites, 4 epochs). The option `queries.crops=DETECTOR.pt` of a descriptor
# method does the replacement inside `imsim-lab run` (`imsim_lab/features/query_crops.py`, the same
# code as the matching track's `candidates.crops`): the crop is a view of the query made on the
# fly and embedded with the method's own preprocessing (all the test scales), and the run records
# the detector, its sha256, the threshold and how many queries were replaced (`config.json`,
# `query_crops`).

# %%
DET = {"smoke": dict(size=64, width=8, composites=150, epochs=3),
       "cpu": dict(size=64, width=16, composites=1000, epochs=4),
       "full": dict(size=128, width=32, composites=20000, epochs=20)}[profile]
det_dir = run_dir(NOTEBOOK, "train/detector", results_dir, profile)
det_path = det_dir / "detector.pt"
with timed("overlay detector training"):
    if profile == "full":
        cmd = [sys.executable, "-m", "imsim_lab", "train", "detector", "--bench", str(bench.root), "--out", str(det_dir),
               "--size", str(DET["size"]), "--width", str(DET["width"]), "--composites", str(DET["composites"]),
               "--epochs", str(DET["epochs"])]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
    else:
        det_cfg = D.DetectorConfig(input_size=DET["size"], width=DET["width"], seed=seed)
        det, det_hist = D.train_detector(D.make_composites(train_paths, DET["composites"], seed=seed), det_cfg,
                                         epochs=DET["epochs"], device="cpu")
        det_dir.mkdir(parents=True, exist_ok=True)
        det.save(det_path)
        print(f"detector: {DET['composites']} composites, {DET['epochs']} epochs; loss per epoch "
              f"{np.round(det_hist, 3).tolist()}")
det = D.OverlayNet.load(det_path)

# %% [markdown]
# The detector on every query (it never saw one), and the boxes disc-synth recorded when it made them
# (`bench_boxes`: where the source image lies in the query, when it covers at most 0.85 of it). How
# many queries each threshold would replace, and how many of those boxes are right (IoU ≥ 0.5 with
# the recorded box):

# %%
feat = run_dir(NOTEBOOK, "trained_barlow", results_dir, profile) / "features"
fq, fb, ft = (load_features(feat, s) for s in ("query", "reference", "training"))
xq, xb, xt = (np.asarray(f.x, np.float32) for f in (fq, fb, ft))
qids, rids = [str(q) for q in fq.ids], list(fb.ids)
qsrc = ImageSource.files(qids, [bench.image_path(q) for q in qids], f"{bench.root}/query")
LOW = 0.3  # the lowest threshold tried below: the crops of every box over it are embedded once
with timed("overlay detection"):
    det_boxes, det_conf, det_sizes = detected_boxes(det, qsrc, qids, LOW)
recorded = D.bench_boxes(bench, qids) if "ops" in bench.queries.columns else np.full((len(qids), 4), np.nan)
has_rec = ~np.isnan(recorded).any(1)
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def replaced(t):
    """(n,) bool: the queries whose detected box passes the threshold t (and imgFp's area/aspect filter)."""
    return ~np.isnan(det_boxes).any(1) & (det_conf > t)


det_table = pd.DataFrame([{"threshold": t, "queries replaced": int(replaced(t).sum()),
                           **D.box_metrics(det_boxes, replaced(t), recorded)} for t in THRESHOLDS])
display(det_table.round(3))
n90 = int(replaced(BOT_THRESHOLD).sum())
print(f"at BoT's threshold {BOT_THRESHOLD}: {n90} of {len(qids)} queries replaced; "
      f"{int(has_rec.sum())} queries have a recorded box")
if n90 < 0.1 * has_rec.sum():
    print("this small detector is rarely that confident: a lower threshold is chosen below on one half of the "
          "queries and reported on the other")

# %% [markdown]
# The most confident detections: each query with the detected box (red) and the recorded one (green),
# then the crop that replaces it.

# %%
pics, caps = [], []
fam_of = bench.queries.set_index("query_id")["family"].astype(str)
for k in np.argsort(-np.where(replaced(LOW), det_conf, -1))[:4]:
    if not replaced(LOW)[k]:
        break
    im = bench.load_image(qids[k]).convert("RGB")
    w, h = im.size
    shown_im = im.copy()
    d = ImageDraw.Draw(shown_im)
    if has_rec[k]:
        d.rectangle(list(recorded[k] * [w, h, w, h]), outline="lime", width=3)
    d.rectangle(list(det_boxes[k] * [w, h, w, h]), outline="red", width=3)
    pics += [shown_im, apply_view(im, View("detector", tuple(det_boxes[k])))]  # the view the library embeds
    caps += [f"{qids[k]} {fam_of.get(qids[k], '')} conf {det_conf[k]:.2f}", "the crop that replaces it"]
if pics:
    display(contact_sheet(pics, caps, size=160, cols=4))

# %% [markdown]
# **The threshold, on one half.** The crops of every box over the lowest threshold are embedded once
# with the Barlow-initialised network at the test scales (`box_query_descriptors`, the library's
# code); each threshold then replaces the rows of the queries it passes, and PCA (fitted on the
# training images, so untouched by the queries) and the search follow as in method `bot`. The
# threshold is chosen on the tuning half and reported on the other, next to no crop on the same two
# halves. The same replacement at the recorded boxes is the upper bound of any detector.

# %%
model_b = create_model("bot_net", device="cpu" if profile != "full" else None,
                       **get_method("bot").resolve({f"model.{k}": v for k, v in
                                                    {**base, "scales": SCALES, **_w("from Barlow Twins")}.items()})[0])
crop_dir = run_dir(NOTEBOOK, "query_crops", results_dir, profile)
with timed("crop descriptors (the threshold sweep)"):
    x_det, v_det, _, rec_det = box_query_descriptors(model_b, det_boxes, det_sizes, f"detector-t{LOW:g}", qsrc, qids,
                                                     xq, crop_dir, opts.extract)
    x_rec, v_rec, _, rec_rec = box_query_descriptors(model_b, recorded, det_sizes, "recorded", qsrc, qids, xq,
                                                     crop_dir, opts.extract, view="recorded")
spec_b = get_method("bot")
params_b = spec_b.resolve({})[1]


def crop_predictions(rows, x_crop):
    x = xq.copy()
    x[rows] = x_crop[rows]
    return evaluate_prepared(bench, qids, rids, prepare(spec_b, x, xb, xt, params_b))[1]


tune_q, report_q = query_halves(bench.gt.query_ids, seed)
with timed("threshold sweep"):
    sw_crop = sweep_halves(bench.gt, THRESHOLDS, lambda t: crop_predictions(replaced(t) & (v_det == "detector"), x_det),
                           tune_q, report_q)
    no_crop = sweep_halves(bench.gt, ["no crop"], lambda _: runs["trained from Barlow Twins (multi-scale)"],
                           tune_q, report_q)
sw_crop.table.insert(1, "queries replaced", [int((replaced(t) & (v_det == "detector")).sum()) for t in THRESHOLDS])
display(pd.concat([no_crop.table, sw_crop.table], ignore_index=True).round(4))
T_CROP = float(sw_crop.chosen)
print(f"threshold chosen on the tuning half: {T_CROP} (µAP {sw_crop.tuned:.4f}); on the reporting half µAP "
      f"{sw_crop.reported:.4f} against {no_crop.reported:.4f} without the crop (the reporting half alone would pick "
      f"{sw_crop.best_on_report})")
if sw_crop.tuned <= no_crop.tuned:
    print("on the tuning half no threshold beats no crop: the chosen one is kept below only to measure it on the "
          "reporting half")

# %% [markdown]
# The same through `imsim-lab run` (`-p queries.crops=DETECTOR.pt`, and `queries.crops_threshold` at
# BoT's 0.90 and at the threshold chosen above): the features come from the feature cache, only the
# crops are embedded. What the run records:

# %%
crop_runs = {BOT_THRESHOLD: "trained from Barlow Twins + overlay crop at 0.90"}
if T_CROP != BOT_THRESHOLD:
    crop_runs[T_CROP] = f"trained from Barlow Twins + overlay crop at {T_CROP:g} (chosen on the tuning half)"
for t, label in crop_runs.items():
    r = _run(label, f"trained_barlow_crop_t{t:g}", "bot", params={"queries.crops": str(det_path),
                                                                 "queries.crops_threshold": t},
             scales=SCALES, **_w("from Barlow Twins"))
    qc = r.config["query_crops"]
    print(json.dumps({k: qc[k] for k in ("sha256", "threshold", "replaced")}))
    assert qc["replaced"] == int((replaced(t) & (v_det == "detector")).sum())  # the library's rows are the sweep's
runs["recorded boxes (upper bound)"] = crop_predictions(v_rec == "recorded", x_rec)
print(f"recorded boxes: {rec_rec['crops']} queries replaced")

# %% [markdown]
# **With and without the crop**, as paired differences (same resamples), on all queries for what was
# not tuned (BoT's 0.90 and the recorded boxes) and on the reporting half for the chosen threshold;
# then on the target: the copies with a recorded box (a source that covers at most 0.85 of its
# query: `paste`, `pad`, `combine`, `meme`, `airgap`, some `chain`, `screenshot`, `perspective`)
# plus every query without a match.

# %%
plain_label = "trained from Barlow Twins (multi-scale)"
pos = np.asarray(bench.gt.positive_mask, bool)
gq = np.asarray(bench.gt.query_ids).astype(str)
rec_of = dict(zip(qids, has_rec))
target_q = [q for q, p in zip(gq, pos) if not p or rec_of.get(q, False)]
report_set = set(report_q)
crop_pairs = {"crop at 0.90": (crop_runs[BOT_THRESHOLD], plain_label),
              "recorded boxes (upper bound)": ("recorded boxes (upper bound)", plain_label)}
chosen_pair = {f"crop at {T_CROP:g} (chosen on the tuning half)": (crop_runs[T_CROP], plain_label)}
crop_abl = pd.concat([
    paired_differences(bench.gt, runs, crop_pairs).assign(queries="all"),
    paired_differences(bench.gt, runs, crop_pairs, queries=target_q).assign(queries="targets"),
    paired_differences(bench.gt, runs, chosen_pair, queries=report_q).assign(queries="reporting half"),
    paired_differences(bench.gt, runs, chosen_pair, queries=[q for q in target_q if q in report_set]).assign(
        queries="targets, reporting half")]).dropna(subset=["Δ µAP"])  # a subset without copies has no µAP
display(crop_abl.round(4))
for (what, r) in crop_abl.iterrows():
    verdict = "a gain (interval above 0)" if r["lo"] > 0 else "a loss (interval below 0)" if r["hi"] < 0 else \
        "not separable at this budget (the interval holds 0)"
    if r["separable"] and abs(r["Δ µAP"]) < 1e-3:
        verdict += f", but of {r['Δ µAP']:+.1e} µAP: no practical change"
    print(f"{what} [{r['queries']}]: {r['Δ µAP']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]: {verdict}")

# %% [markdown]
# Per family (the family's copies plus every query without a match), the families an overlay crop is
# for, with paired intervals against no crop: BoT's 0.90 and the recorded boxes on all queries.
# About seven copies a family in `small`: read the intervals before the points.

# %%
CROP_FAMILIES = ["paste", "overlay_image", "combine", "pad", "meme", "airgap"]
fam_rows = []
for f in CROP_FAMILIES:
    fq_ids = [q for q, p in zip(gq, pos) if not p or fam_of.get(q) == f]
    if not any(fam_of.get(q) == f and p for q, p in zip(gq, pos)):
        continue
    t = paired_differences(bench.gt, runs, crop_pairs, queries=fq_ids)
    fam_rows += [{"family": f, "trick": k, "positives": int(sum(fam_of.get(q) == f and p for q, p in zip(gq, pos))),
                  **r[["Δ µAP", "lo", "hi"]].to_dict()} for k, r in t.iterrows()]
fam_crop = pd.DataFrame(fam_rows)
if len(fam_crop):
    display(fam_crop.round(3))
    px.bar(fam_crop, x="family", y="Δ µAP", color="trick", barmode="group", error_y=fam_crop["hi"] - fam_crop["Δ µAP"],
           error_y_minus=fam_crop["Δ µAP"] - fam_crop["lo"],
           title="µAP with the crop minus without, per family (95 % paired bootstrap intervals)").show()

# %% [markdown]
# **Verdict.** In the `cpu` run recorded in `notebooks/README.md` (load 2.9-3.7) the detector, trained
# for 12 s, is almost never as confident as BoT's YOLOv5x: **1 query of 1,000 passes 0.90** (5 pass
# 0.8, 20 pass 0.7, 126 pass 0.5; its box recall at IoU 0.5 is 0.006 at 0.90 and 0.38 at 0.5), so the
# published threshold changes nothing here (Δ 0.0000). The threshold chosen on the tuning half, 0.7
# (µAP 0.4630 against 0.4627 without the crop), replaces 20 queries and on the reporting half gives
# 0.3655 against 0.3655: a difference of −4.5e-5, no practical change (the reporting half alone would
# have picked 0.6, at 0.3769). The recorded boxes say how much room there is: replacing the 170
# queries that have one gives **+0.136 [+0.094, +0.187]** µAP on all queries and +0.683 [+0.541,
# +0.817] on the target copies; per family `paste` +0.725 [+0.375, +1.000], `combine` +0.691,
# `pad` +0.857, `meme` +1.000, while `overlay_image` (the source is the background, so it has no
# box) and `airgap` do not move. With the right box the crop is a large gain on the families it is
# for; at this budget the missing piece is the detector, not the crop, and the recorded boxes are the
# ceiling a better detector could approach.


# %% [markdown]
# ## Step 8: descriptor stretching, tuned on one half and reported on the other
#
# q' = c · (mean of the n = 5 largest q·t over the training descriptors) · q, references unchanged:
# for a unit reference, ‖q' − r‖² = ‖q'‖² − 2 q'·r + 1, so a query that resembles many training
# images gets a longer vector and larger distances to everything. The factor c (published 2.5,
# 2.0 and 3.0 tried) is chosen on one seeded half of the queries and reported on the other, next to
# the same network without stretching on the same two halves. The published factor was set for a
# ResNet-50 trained for 25 epochs; with a small network whose queries all sit close to many
# training images, the penalty may rank queries by noise: the first row of the table says whether
# any factor beats no stretching here.

# %%
spec = get_method("bot+stretch")  # the features and the two halves of Step 7
predict = lambda c: evaluate_prepared(bench, qids, rids, prepare(spec, xq, xb, xt, spec.resolve({"c": c})[1]))[1]  # noqa: E731
sw = sweep_halves(bench.gt, [0.5, 1.0, 2.0, 2.5, 3.0, 4.0], predict, tune_q, report_q)
plain = sweep_halves(bench.gt, ["no stretching"], lambda _: runs["trained from Barlow Twins (multi-scale)"],
                     tune_q, report_q)
display(pd.concat([plain.table, sw.table], ignore_index=True).round(4))
print(f"c chosen on the tuning half: {sw.chosen} (µAP {sw.tuned:.4f}); on the reporting half: µAP {sw.reported:.4f} "
      f"(the reporting half alone would pick {sw.best_on_report}); without stretching on the reporting half: "
      f"µAP {plain.reported:.4f}, so the tuned stretching {'helps' if sw.reported > plain.reported else 'does not help'} "
      f"at this budget")

# %% [markdown]
# ## Step 9: per family, and the calibration pictures
#
# µAP per transformation family (its copies plus every query without a match) with 95 %
# bootstrap intervals:

# %%
shown = {k: runs[k] for k in ("random weights (multi-scale)", "trained from random (multi-scale)",
                              "trained from Barlow Twins (multi-scale)", "trained from Barlow Twins + stretch")}
fam = family_interval_table(bench, shown)
px.bar(fam, x="family", y="micro_ap", color="run", barmode="group", error_y=fam["hi"] - fam["micro_ap"],
       error_y_minus=fam["micro_ap"] - fam["lo"], title="µAP per family (95 % bootstrap intervals)").show()

# %% [markdown]
# The score of each query's true pair against its best wrong pair, before and after stretching
# (method `bot+stretch`, the published c = 2.5), the precision-recall curves, then the missed
# copies and the most confident false positives of the best run of Step 6.

# %%
two = {k: runs[k] for k in ("trained from Barlow Twins (multi-scale)", "trained from Barlow Twins + stretch")}
cal = calibration_table(bench.gt, two)
calibration_figure(cal, cols=2).show()
pr_figure(pr_curves(bench.gt, two)).show()
best = table["µAP"].idxmax()  # the best run of Step 6's table
print(f"failures of the best run: {best}")
sheet, cases = failure_gallery(bench, runs[best], results[best].metrics["isc2021"]["threshold_at_p90"], n=3)
display(cases.round(3))
if sheet is not None:
    display(sheet)

# %% [markdown]
# Where the time went: each phase's wall and CPU seconds (user + system, this kernel and its
# finished loader workers). On a shared machine wall time depends on the load; CPU seconds less so.

# %%
cost["whole notebook"] = {"wall s": time.perf_counter() - t_notebook, "CPU s": cpu_seconds() - c_notebook}
display(pd.DataFrame(cost).T.round(0))

# %% [markdown]
# ## What the paper reported, and why it differs here
#
# | | data | µAP | source |
# |---|---|---|---|
# | Bag of Tricks, final submission | DISC21 phase 2 (final queries, 1M references) | 0.5788 | DrivenData leaderboard (`drivendataorg/image-similarity-challenge` README) |
# | per-trick ablations (Barlow Twins, WaveBlock, multi-scale, overlay crop, stretching) | DISC21 phase 1 | in the paper's tables (arXiv 2111.08004), not read here | – |
# | this notebook | the tables above | measured here | – |
#
# The published model is a ResNet-50 initialised from Barlow Twins on ImageNet (1,000 epochs),
# trained for 25 epochs of 8,000 iterations (batch 128, 4 GPUs) on 100,000 training images with
# 20 offline copies each, at 256 px, plus a YOLOv5x overlay detector on the queries (a query whose box
# has a confidence over 0.90 is replaced by the crop, cut from the query resized to a long side of
# 640; here the same fraction of the query as it is, the same region before the model's own resize)
# and multi-scale at 200-400 px. Here the detector is a small CNN trained for a few seconds on 1,000
# composites of the training images: it rarely reaches 0.90, so its threshold is chosen on one half
# of the queries, and the recorded boxes of disc-synth stand for a detector that finds every overlay
# (Step 7). The `cpu` lesson trains a
# ResNet-18 **from random weights**, or from a five-epoch Barlow Twins pretraining on the same
# 1,000 images, for three epochs over all 1,000 of them as classes (186 steps of 16 classes x 4
# views) at 64 px, with views made on the fly, and three test scales instead of four. The floor is
# not zero: random convolutions, GeM and a PCA fitted on the training images already find the
# mildly edited copies, which is why the lesson compares against that floor rather than against
# chance, and the notebook stops if the trained network's gain over it has an interval reaching 0.
# The verdicts printed under the ablation table are this run's: a trick whose interval holds 0 is
# not separable at this budget (five epochs of Barlow Twins on 1,000 images are not 1,000 epochs
# on ImageNet, and a short curve that barely moves gives little to start from), and
# disc-synth's absolute µAP is not comparable with DISC21's (1,000 references instead of 1M).
#
# ## Exercises
#
# 1. Train without the WaveBlocks (`BoTConfig(waveblock=False)`). Expect a small change, possibly
#    inside its interval at this budget; check which families move.
# 2. Drop the distillation term (`weights=BoTWeights(10, 1, 0, 1)`): does the 256-d head lose
#    against the wide feature (`model.output=wide`, `dim=` 4c, and PCA to 256)?
# 3. Use the offline layout (`--offline DIR --copies 5` on the command line, or
#    `write_offline_copies` + `BoTConfig(offline=...)`): fewer distinct views per class. Expect a
#    lower µAP at the same number of steps.
# 4. Pretrain Barlow Twins for twice the epochs (`PLAN["bt_epochs"]`). Does the loss fall further, and does
#    the initialisation gain leave its interval?
# 5. Try the stretching factors 2.0 and 3.0 the authors submitted: compare them on the reporting
#    half with the chosen one.
# 6. Train the overlay detector longer (`DET["composites"] = 3000`, `DET["epochs"] = 8` in Step 7).
#    How many queries pass 0.90 now, how far does its box recall move towards the recorded boxes'
#    gain on `paste` and `pad`, and does the threshold chosen on the tuning half change?
