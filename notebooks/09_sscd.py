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
# # 9. SSCD: a self-supervised descriptor trained step by step, and does the architecture matter?
#
# Pizzi, Roy, Ravindra, Goyal, Douze, *A Self-Supervised Descriptor for Image Copy Detection*,
# CVPR 2022, arXiv 2202.10261; code facebookresearch/sscd-copy-detection. The released
# `sscd_disc_mixup` is this lab's strongest baseline (method `sscd`); here a student trains the
# recipe and compares with it. The released model is only used as the reference: never fine-tuned.
#
# **What you will learn**
#
# * the model: ResNet trunk, GeM (p 3), a linear projection, L2;
# * InfoNCE (τ 0.05, every other image of the global batch a negative) and the differential-entropy
#   (KoLeo) term, written from scratch and checked against the library and pytorch-metric-learning;
# * what the entropy term does to the distances between nearest neighbours (plotted, with and without);
# * mixup / CutMix positives: an image that shares content with another is its positive;
# * the ablation (with / without entropy, with / without mixup) at `cpu` scale, with intervals;
# * the student's model next to the released SSCD, per family;
# * whether the architecture matters: one recipe, three trunks, the same budget.
#
# **What it costs** (measured, `notebooks/README.md`): `smoke` about a minute; `cpu` (five small
# networks trained **from random weights** on the `small` benchmark, plus the released SSCD's
# extraction) at most 15 minutes on 2 cores; `full` (the published recipe: 4 nodes × 8 GPUs) not run here.

# %% tags=["parameters"]
profile = "smoke"        # "smoke" | "cpu" | "full"
results_dir = None       # default: $IMSIM_LAB_RESULTS or <repository>/results
disc21_root = None       # profile "full": a DISC21 folder in the benchmark format
n_gpus = 8               # profile "full": processes of torchrun per node
seed = 0

# %%
import subprocess
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.express as px
import torch
import torch.nn.functional as F
from IPython.display import display
from PIL import Image

from imsim_lab.analysis.intervals import family_interval_table, interval_table, paired_differences
from imsim_lab.features import ExtractConfig
from imsim_lab.features.models.weights import sha256_file
from imsim_lab.features.store import load_features
from imsim_lab.lessons import check_profile, contact_sheet, copy_pairs_sheet, feature_cache, lesson_benchmark, run_dir
from imsim_lab.methods import MethodSpec
from imsim_lab.runfolder import read_predictions
from imsim_lab.runner import RunOptions, run_method
from imsim_lab.train.infonce import LAMBDA_SMALL_BATCH, SSCDLoss, entropy_loss, infonce_loss
from imsim_lab.train.recipes.sscd import eval_short_side
from imsim_lab.train.sscd import PUBLISHED_BATCH, SSCDConfig, published_lr, sscd_net, train_sscd
from imsim_lab.train.sscd_data import AUGMENTATIONS, SSCDViews, mix_arrays, sscd_view
from imsim_lab.train.trainer import TrainConfig
from imsim_lab.train.views import view_rng

check_profile(profile)
NOTEBOOK = "09_sscd"
torch.manual_seed(seed)
t_notebook = time.perf_counter()

# The plan of each profile. CPU plans: small trunks from random weights, a few epochs at 48 px,
# λ = 10 (the SSCD docs' advice for small batches), and a larger share of mixed items (0.25
# instead of 0.05) so that mixup is seen often enough in a short run: stated next to the results.
VIT = {"dynamic_img_size": True, "dynamic_img_pad": True}
PLAN = {
    "smoke": dict(trunk="test_resnet", size=32, dim=32, batch=8, epochs=1, workers=0, mix_p=0.25,
                  trunks=[("test_resnet", {}), ("test_efficientnet", {}), ("test_vit", VIT)]),
    "cpu": dict(trunk="resnet18", size=48, dim=128, batch=32, epochs=2, workers=1, mix_p=0.25,
                trunks=[("resnet18", {}), ("efficientnet_b0", {}), ("vit_tiny_patch16_224", VIT)]),
    "full": dict(trunk="resnet50", size=224, dim=512, batch=PUBLISHED_BATCH // n_gpus, epochs=100, workers=8,
                 mix_p=0.05, trunks=[("resnet50", {}), ("efficientnet_b4", {}), ("vit_small_patch16_224", {})]),
}[profile]
LAM = 30.0 if profile == "full" else LAMBDA_SMALL_BATCH

# %% [markdown]
# ## The data
#
# SSCD is self-supervised: it trains on the benchmark's *training* images only (never matched
# by a query) and uses no ground truth. Each image gives two augmented views; the network must
# recognise the pair among all the other images of the batch.

# %%
bench = lesson_benchmark(profile, results_dir, seed, disc21_root)
display(pd.Series(bench.counts(), name=bench.name).to_frame().T)
train_paths = [bench.image_path(i) for i in bench.training_ids]
display(copy_pairs_sheet(bench))

# %% [markdown]
# ## Step 1: the model
#
# `sscd_repro`: a timm ResNet, GeM with p = 3, a linear layer (with bias) to 512 dimensions
# (here `dim` of the plan), L2. Evaluation resizes the short side to 288 for 224-px training
# crops (here the same ratio). By hand, in eval mode:

# %%
model = sscd_net(PLAN["trunk"], PLAN["size"], PLAN["dim"])
net = model.module.eval()
x = torch.randn(2, 3, PLAN["size"], PLAN["size"])
with torch.no_grad():
    f = net.forward_features(x)
    g = f.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    assert torch.allclose(net(x), F.normalize(g @ net.fc.weight.T + net.fc.bias, dim=1), atol=1e-5)
print(net.gem, "| projection:", net.fc, "| forward by hand == library")

# %% [markdown]
# ## Step 2: InfoNCE and the entropy term, from scratch
#
# For unit embeddings $z$ with similarities $s_{ij} = z_i\cdot z_j$, positives $P(i)$ (the other
# view; any image sharing content after mixup) and negatives $N(i)$ (everything else):
#
# $$L_\text{InfoNCE} = -\operatorname{mean}_i\operatorname{mean}_{p\in P(i)}\Big[\frac{s_{ip}}{\tau} - \log\sum_{j\ne i} e^{s_{ij}/\tau}\Big],
# \qquad L_\text{entropy} = -\operatorname{mean}_i \log \min_{j\in N(i)} \lVert z_i - z_j\rVert,$$
#
# $L = L_\text{InfoNCE} + \lambda L_\text{entropy}$ with τ = 0.05 and λ = 30 at a batch of 4,096
# (the SSCD docs advise λ = 10 for small batches). In a few lines, against the library and
# pytorch-metric-learning's `NTXentLoss` (the same loss when each image has one positive):

# %%
from pytorch_metric_learning.losses import NTXentLoss

z = torch.randn(16, 8)
y = torch.arange(8).repeat_interleave(2)
zn = F.normalize(z)
sim = zn @ zn.T / 0.05
sim.fill_diagonal_(float("-inf"))
partner = torch.arange(16) ^ 1                       # the other view of the same image
nce = -(sim[torch.arange(16), partner] - torch.logsumexp(sim, dim=1)).mean()
d = torch.cdist(zn, zn)
d[y[:, None] == y[None, :]] = float("inf")            # only non-matching neighbours
ent = -torch.log(d.min(dim=1).values).mean()
print(f"InfoNCE by hand {nce:.5f}  library {infonce_loss(z, y):.5f}  pytorch-metric-learning {NTXentLoss(0.05)(z, y):.5f}")
print(f"entropy by hand {ent:.5f}  library {entropy_loss(z, y):.5f}")
assert torch.allclose(nce, infonce_loss(z, y), atol=1e-4) and torch.allclose(nce, NTXentLoss(0.05)(z, y), atol=1e-4)
assert torch.allclose(ent, entropy_loss(z, y), atol=1e-5)
assert torch.allclose(SSCDLoss(0.05, 10.0)(z, y), nce + 10 * ent, atol=1e-4)

# %% [markdown]
# ## Step 3: the views, and mixup positives
#
# The `advanced` set: flips, rot90, text and emoji overlays, free rotation, a random resized crop,
# colour jitter, grayscale, blur and JPEG. In the mixup variant some items' second view is mixed
# (mixup: a blend; CutMix: a pasted box) with another training image k and carries the content
# ids {i, k}: it is a positive of i's views *and* of k's, wherever they are in the global batch.

# %%
ds_demo = SSCDViews(train_paths, "advanced", 128, model.config.mean, model.config.std, seed=seed, mix_p=1.0)
imgs, caps = [], []
for i in range(3):
    img = bench.load_image(str(bench.training_ids[i]))
    imgs.append(img)
    caps.append(f"image {i}")
    for v in range(2):
        view, steps = sscd_view(img, AUGMENTATIONS.get("advanced"), 128, view_rng(seed, 0, i, v))
        imgs.append(view)
        caps.append(",".join(s for s in steps if s != "crop")[:30])
    a = np.asarray(imgs[-1], np.float32).transpose(2, 0, 1) / 255
    b = np.asarray(bench.load_image(str(bench.training_ids[i + 3])).resize((128, 128)), np.float32).transpose(2, 0, 1) / 255
    for sw in (0.0, 1.0):
        mixed, kind, lam = mix_arrays(a, b, np.random.default_rng(i), switch_p=sw)
        imgs.append(Image.fromarray((mixed.transpose(1, 2, 0) * 255).astype(np.uint8)))
        caps.append(f"{kind} with {i + 3}, λ={lam:.2f}")
display(contact_sheet(imgs, caps, size=128, cols=5, caption_height=30))
x_item, y_item = ds_demo[(0, 0)]
print("content ids of item 0's two views (mix_p = 1):", y_item.tolist())

# %% [markdown]
# ## Step 4: training, and the ablation
#
# LARS (momentum 0.9, weight decay 1e-6) at 0.3 per 256 images, linear warm-up then cosine.
# Three runs of the same trunk and budget: the full recipe (entropy + mixup), and each trick taken
# out once (no entropy; no mixup). The fourth corner of the 2 × 2 (neither) is exercise 6.
# (`full`: one `torchrun` command per run on one node of `n_gpus` GPUs with the published global
# batch of 4,096; the published runs used 4 nodes × 8 GPUs.)

# %%
def_cfg = dict(backbone=PLAN["trunk"], size=PLAN["size"], dim=PLAN["dim"], pretrained=profile == "full")
steps_per_epoch = max(1, len(train_paths) // PLAN["batch"])
tc = TrainConfig(optimizer="lars", lr=published_lr(PLAN["batch"]), lr_schedule="cosine", weight_decay=1e-6,
                 warmup_steps=max(1, steps_per_epoch // 4) if profile != "full" else 5 * steps_per_epoch,
                 epochs=PLAN["epochs"], batch_size=PLAN["batch"], num_workers=PLAN["workers"], checkpoint_every=50,
                 seed=seed)
ABLATION = {"entropy + mixup": (LAM, PLAN["mix_p"]), "no entropy + mixup": (0.0, PLAN["mix_p"]),
            "entropy, no mixup": (LAM, 0.0)}
FOLDER = {"entropy + mixup": "entropy_mixup", "entropy, no mixup": "entropy_nomixup",
          "no entropy + mixup": "noentropy_mixup", "no entropy, no mixup": "noentropy_nomixup"}
t_train = time.perf_counter()
weights, hist = {}, []
for name, (lam, mix_p) in ABLATION.items():
    out = run_dir(NOTEBOOK, f"train/{FOLDER[name]}", results_dir, profile)
    cfg = SSCDConfig(**def_cfg, lam=lam, mix_p=mix_p, train=tc)
    if profile == "full":  # the published run is 4 nodes x 8 GPUs; here one node with the same global batch
        cmd = ["torchrun", "--standalone", "--nproc_per_node", str(n_gpus), "-m", "imsim_lab", "train", "sscd",
               "--bench", str(bench.root), "--out", str(out), "--pretrained", "--epochs", str(PLAN["epochs"]),
               "--batch-size", str(PLAN["batch"]), "--lam", str(lam), "--mix-p", str(mix_p)]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
        weights[name] = out / "weights.pt"
        continue
    res = train_sscd(train_paths, out, cfg)
    weights[name] = res.weights
    hist += [dict(r, run=name) for r in res.history]
train_seconds = time.perf_counter() - t_train
print(f"training (ablation): {train_seconds:.0f} s")
if hist:
    px.line(pd.DataFrame(hist), x="step", y="loss", color="run", title="InfoNCE + λ entropy per step").show()

# %% [markdown]
# ## Step 5: evaluation: the ablation, the random floor, the released SSCD
#
# Run folders: each ablation run, the same network with **random weights** (the floor:
# random convolutional features already match mild edits), and the released `sscd_disc_mixup`
# (method `sscd`: ResNet-50 trained on the 1M DISC21 training images; the reference a student's
# run is compared with).

# %%
# a shared feature cache: the same model on the same images is extracted once for all run folders
opts = RunOptions(extract=ExtractConfig(batch_size=64, num_workers=PLAN["workers"]),
                  feature_cache=str(run_dir(NOTEBOOK, "feature_cache", results_dir, profile)))
ss = eval_short_side(PLAN["size"])
runs = {}
floor = MethodSpec("sscd_repro_random", "sscd_repro", model_args=dict(backbone=PLAN["trunk"], input_size=PLAN["size"],
                   short_side=ss, dim=PLAN["dim"]), description="SSCD architecture, RANDOM weights (floor)")
out = run_dir(NOTEBOOK, "random", results_dir, profile)
run_method(floor, bench.root, out, opts=opts)
runs["random weights"] = read_predictions(out)
for name, w in weights.items():
    spec = MethodSpec("sscd_repro", "sscd_repro", model_args=dict(backbone=PLAN["trunk"], input_size=PLAN["size"],
                      short_side=ss, dim=PLAN["dim"], weights_path=str(w),
                                      weights_sha256=sha256_file(w)), description=f"SSCD trained here: {name}")
    out = run_dir(NOTEBOOK, FOLDER[name], results_dir, profile)
    run_method(spec, bench.root, out, opts=opts)
    runs[name] = read_predictions(out)
out = run_dir(NOTEBOOK, "released_sscd", results_dir, profile)
# the lessons' shared cache: notebooks 1 and 2 extract the released SSCD on the same images
run_method("sscd", bench.root, out, opts=replace(opts, feature_cache=feature_cache(results_dir)))
runs["released SSCD (sscd_disc_mixup)"] = read_predictions(out)
table = interval_table(bench.gt, runs, baseline="random weights")
display(table.round(4))
gain = table.loc["entropy + mixup"]
print(f"µAP trained (entropy + mixup) - random = {gain['Δ µAP']:+.4f} [{gain['Δ lo']:+.4f}, {gain['Δ hi']:+.4f}]")
if profile == "cpu":
    assert gain["Δ lo"] > 0, "the cpu lesson must show learning above random weights"

# %% [markdown]
# The two ablations as paired differences (same resamples): an interval that contains 0 means
# the trick is not separable on this benchmark at this budget.

# %%
pairs = {"entropy term (with mixup)": ("entropy + mixup", "no entropy + mixup"),
         "mixup (with entropy)": ("entropy + mixup", "entropy, no mixup")}
display(paired_differences(bench.gt, runs, pairs).round(4))

# %% [markdown]
# ## Step 6: what the entropy term does to nearest-neighbour distances
#
# The term pushes every descriptor away from its nearest non-matching neighbour, spreading the
# descriptors over the sphere. The distance from each reference descriptor to its nearest other
# reference, with and without the term (both with mixup):

# %%
nn_rows = []
for name in ("entropy + mixup", "no entropy + mixup"):
    xb = np.asarray(load_features(run_dir(NOTEBOOK, FOLDER[name], results_dir, profile) / "features", "reference").x)
    D = np.sqrt(np.maximum(2 - 2 * xb @ xb.T, 0))
    np.fill_diagonal(D, np.inf)
    nn_rows += [{"run": name, "nearest-neighbour distance": v} for v in D.min(1)]
nn_df = pd.DataFrame(nn_rows)
display(nn_df.groupby("run")["nearest-neighbour distance"].describe().round(3))
px.histogram(nn_df, x="nearest-neighbour distance", color="run", barmode="overlay", nbins=40,
             title="reference descriptors: distance to the nearest other reference").show()

# %% [markdown]
# ## Step 7: the student's model next to the released SSCD, per family

# %%
fam = family_interval_table(bench, {k: runs[k] for k in ("random weights", "entropy + mixup",
                                                          "released SSCD (sscd_disc_mixup)")})
px.bar(fam, x="family", y="micro_ap", color="run", barmode="group", error_y=fam["hi"] - fam["micro_ap"],
       error_y_minus=fam["micro_ap"] - fam["lo"], title="µAP per family (95 % bootstrap intervals)").show()

# %% [markdown]
# ## Step 8: does the architecture matter?
#
# The SSCD paper argues that once the training procedure is tuned, the choice of pretraining and
# architecture matters little. Here: the same recipe (entropy + mixup, the same epochs, batch and
# resolution) on three trunks: a small CNN (ResNet), an EfficientNet and a small ViT (class token
# instead of GeM), each also with random weights. The question on this benchmark is whether the
# *gain over random weights* differs between trunks beyond the intervals.

# %%
arch_runs, arch_rows = {}, []
t_arch = time.perf_counter()
for trunk, kw in PLAN["trunks"]:
    if trunk == PLAN["trunk"]:
        w = weights["entropy + mixup"]
    else:
        out = run_dir(NOTEBOOK, f"train/arch_{trunk}", results_dir, profile)
        cfg = SSCDConfig(backbone=trunk, size=PLAN["size"], dim=PLAN["dim"], pretrained=profile == "full", lam=LAM,
                         mix_p=PLAN["mix_p"], timm_kwargs=kw, train=tc)
        if profile == "full":
            if kw:
                raise NotImplementedError("full: a ViT trunk needs timm_kwargs, which the command does not take yet")
            cmd = ["torchrun", "--standalone", "--nproc_per_node", str(n_gpus), "-m", "imsim_lab", "train", "sscd",
                   "--bench", str(bench.root), "--out", str(out), "--backbone", trunk, "--pretrained", "--epochs",
                   str(PLAN["epochs"]), "--batch-size", str(PLAN["batch"]), "--lam", str(LAM), "--mix-p", str(PLAN["mix_p"])]
            subprocess.run(cmd, check=True)
            w = out / "weights.pt"
        else:
            w = train_sscd(train_paths, out, cfg).weights
    for label, wp in (("random", None), ("trained", w)):
        args = dict(backbone=trunk, input_size=PLAN["size"], short_side=ss, dim=PLAN["dim"], timm_kwargs=kw,
                    **({"weights_path": str(wp), "weights_sha256": sha256_file(wp)} if wp else {}))
        out = run_dir(NOTEBOOK, f"arch_{trunk}_{label}", results_dir, profile)
        run_method(MethodSpec(f"sscd_{trunk}", "sscd_repro", model_args=args), bench.root, out, opts=opts)
        arch_runs[f"{trunk} {label}"] = read_predictions(out)
arch_seconds = time.perf_counter() - t_arch
for trunk, _ in PLAN["trunks"]:
    t = interval_table(bench.gt, {f"{trunk} random": arch_runs[f"{trunk} random"],
                                  f"{trunk} trained": arch_runs[f"{trunk} trained"]}, baseline=f"{trunk} random")
    r = t.loc[f"{trunk} trained"]
    arch_rows.append({"trunk": trunk, "µAP": r["µAP"], "µAP lo": r["µAP lo"], "µAP hi": r["µAP hi"],
                      "gain over random": r["Δ µAP"], "gain lo": r["Δ lo"], "gain hi": r["Δ hi"]})
arch = pd.DataFrame(arch_rows).set_index("trunk")
display(arch.round(4))
print(f"architecture runs: {arch_seconds:.0f} s; notebook time: {time.perf_counter() - t_notebook:.0f} s")

# %% [markdown]
# Read the table the way the question asks: if the trained µAP intervals of the trunks overlap,
# the architecture is not separable *on this benchmark at this budget*, which is consistent with
# the paper's claim but does not prove it (our budget is tiny and every trunk starts from random
# weights, while the claim concerns tuned training from pretrained weights).
#
# ## What the paper reported, and why it differs here
#
# | | data | µAP | µAP with score normalisation | R@P90 | source |
# |---|---|---|---|---|---|
# | `sscd_disc_mixup`, raw descriptors | DISC21 dev queries, 1M references | 0.6094 | 0.7180 | 0.3766 / 0.6251 | sscd-copy-detection `docs/Evaluation.md` |
# | `sscd_disc_mixup`, PCAW 512 + L2 | same | 0.6143 | 0.7243 | 0.3825 / 0.6308 | same |
# | paper, Table 2 (as quoted in the docs) | same | 61.5 % | 72.5 % | | same |
# | this notebook | the tables above | | | | measured here |
#
# The published model is a ResNet-50 from ImageNet weights, trained 100 epochs on the 1M DISC21
# training images with a global batch of 4,096 on 32 GPUs. The `cpu` lesson trains small trunks
# **from random weights** for a few epochs on 1,000 images at 48 px, with batches of 32 (so few
# negatives per step and λ = 10) and a mixup share of 0.25 instead of 0.05. Expect the student's
# model far below the released one on every family, the training clearly above its random floor,
# and each trick read against its interval: with batches of 32 the entropy term is what keeps the
# descriptors apart (see the nearest-neighbour distances), while mixup, seen in a quarter of the
# items of a 2-epoch run, need not help at all; the paper's gains come from 4,096-image batches
# and 100 epochs. disc-synth has far fewer distractors than DISC21, so absolute values are not comparable.
#
# ## Exercises
#
# 1. Set `LAM = 30` (the published weight) in `cpu`: the SSCD docs advise lowering it for small
#    batches. Expect the loss to be dominated by the entropy term and µAP not to improve.
# 2. Use the `strong_blur` augmentations instead of `advanced`: which families lose?
# 3. Set `mix_p` to the published 0.05: how many mixed items does a 2-epoch run see?
# 4. Double the epochs for one trunk only. Does the architecture table change order, and is the
#    change outside the intervals?
# 5. Score-normalise the student's run (`sscd+sn` in lesson 2) and compare the gain with the
#    released model's.
# 6. Add the fourth arm, `"no entropy, no mixup": (0.0, 0.0)`, to `ABLATION` and the pairs
#    "entropy term (no mixup)" and "mixup (no entropy)": is each trick's effect the same without
#    the other (an interaction shows as two different differences)?
