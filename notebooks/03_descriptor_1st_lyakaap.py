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
# # 3. Descriptor track, 1st place: contrastive learning with a large memory bank (lyakaap)
#
# Yokoo, *Contrastive Learning with Large Memory Bank and Negative Embedding Subtraction for
# Accurate Copy Detection*, arXiv 2112.04323; code lyakaap/ISC21-Descriptor-Track-1st.
# Final µAP 0.6354 on the phase-2 queries of DISC21 (descriptor track, 256-d).
#
# **What you will learn**
#
# * the model: an EfficientNetV2 trunk, GeM pooling with p = 1 (average pooling), a linear
#   projection to 256 dimensions without bias, batch normalisation and L2 normalisation;
# * the two views of every training image (one moderate, one hard) and the progressive schedule
#   that raises resolution and augmentation strength together (256 → 384 → 512 px);
# * the contrastive loss with a cross-batch memory of 20,000 embeddings: written from scratch,
#   checked against pytorch-metric-learning, and why a large memory of negatives helps;
# * reference images as extra negatives, and the optional fine-tune on ground-truth pairs;
# * extraction, DBA + NES with the training images, and evaluation per transformation family.
#
# Profiles: `smoke` (tiny benchmark, a few training steps: it checks that the lesson runs),
# `cpu` (the lesson: a ResNet-18 trained from scratch on the `small` benchmark's 1,000 training
# images; 6.5 minutes measured on an idle 2-core machine, budget 15), `full` (the published
# recipe on DISC21 with `torchrun`, several GPUs).

# %% tags=["parameters"]
profile = "smoke"        # "smoke" | "cpu" | "full"
results_dir = None       # default: $IMSIM_LAB_RESULTS or <repository>/results
disc21_root = None       # profile "full": a DISC21 folder in the benchmark format
n_gpus = 8               # profile "full": processes of torchrun
seed = 0

# %%
import shutil
import time

import numpy as np
import pandas as pd
import plotly.express as px
import torch
import torch.nn.functional as F
from IPython.display import display

from imsim_lab.features import ExtractConfig
from imsim_lab.eval.formats import read_predictions
from imsim_lab.eval.metrics import evaluate
from imsim_lab.methods import MethodSpec
from imsim_lab.runner import RunOptions, run_method
from imsim_lab.train import (LYAKAAP_SCHEDULE, STAGES, ScheduleStep, TrainConfig, XBMContrastiveLoss,
                             contrastive_loss, hard_view, moderate_view, view_rng)
from imsim_lab.train.data import to_array
from imsim_lab.lessons import check_profile, contact_sheet, family_metrics, lesson_benchmark, run_dir
from imsim_lab.train.lyakaap import (PUBLISHED_BACKBONE, StageConfig, finetune_pairs, iscnet, model_args,
                                     split_queries, torchrun_command, train_stage)

check_profile(profile)
NOTEBOOK = "03_descriptor_1st_lyakaap"
torch.manual_seed(seed)
t_notebook = time.perf_counter()

# The plan of each profile. "full" is the published schedule (LYAKAAP_SCHEDULE); the CPU plans
# keep its shape (moderate-magnitude stage, then the strongest stage with reference negatives and
# a linearly decaying learning rate) at laptop scale, from random initialisation (no model hub).
PLAN = {
    "smoke": dict(backbone="resnet18", eval_size=64, workers=0, stages=[
        (ScheduleStep("v83", 1, 0.05, 8, memory_size=128), 64),
        (ScheduleStep("v98", 1, 0.05, 8, memory_size=128, lr_schedule="linear", reference_negatives=1), 64)],
        finetune=dict(epochs=1, batch_size=2, memory_size=32)),
    "cpu": dict(backbone="resnet18", eval_size=128, workers=2, stages=[
        (ScheduleStep("v83", 3, 0.05, 32, memory_size=2048), 112),
        (ScheduleStep("v98", 2, 0.05, 32, memory_size=2048, lr_schedule="linear", reference_negatives=1), 128)],
        finetune=dict(epochs=3, batch_size=8, memory_size=256)),
    "full": dict(backbone=PUBLISHED_BACKBONE, eval_size=512, workers=8,
                 stages=[(s, STAGES.get(s.stage).size) for s in LYAKAAP_SCHEDULE],
                 finetune=dict(epochs=10, batch_size=1, memory_size=1000)),
}[profile]
backbone = PLAN["backbone"]

# %% [markdown]
# ## The data
#
# Training uses only the benchmark's *training* images (never matched by a query) and, in the
# last stage, reference images as extra negatives. Neither uses the ground truth: the training
# is self-supervised. The optional fine-tune does use ground-truth pairs; we keep half of the
# queries out of it to evaluate fairly.

# %%
bench = lesson_benchmark(profile, results_dir, seed, disc21_root)
display(pd.Series(bench.counts(), name=bench.name).to_frame().T)

# %% [markdown]
# ## Step 1: the model (ISCNet)
#
# `iscnet` builds the registered model `isc_effnetv2m` (published trunk
# `tf_efficientnetv2_m.in21k_ft_in1k`) with another trunk for the CPU profiles. Its forward is
# `L2(BN(W · GeM_p(features)))` with p = 1 and no bias in W. From scratch, in eval mode:

# %%
model = iscnet(backbone, PLAN["stages"][0][1], device="cpu")
net = model.module.eval()
print(net.gem, "| head:", net.fc, net.bn, "| descriptor:", net.dim)
x = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    f = net.forward_features(x)                       # (b, C, h, w) feature maps
    g = f.clamp(min=1e-6).mean(dim=(2, 3))            # GeM with p = 1 is average pooling
    by_hand = F.normalize(net.bn(g @ net.fc.weight.T), dim=1)
    assert torch.allclose(net.pool(f), g, atol=1e-6)
    assert torch.allclose(net(x), by_hand, atol=1e-5)
print("ISCNet forward by hand == library")

# %% [markdown]
# ## Step 2: two views per image, and the progressive schedule
#
# Each training image gives a **moderate** view (crop of 70-100 % of the area, flip) and a
# **hard** one (rotation, an overlay with another image in either direction, a crop down to 15 %
# of the area, then a *shuffled* list of colour jitter, pixelisation, pixel shuffling, JPEG,
# grayscale, blur, perspective, text, emoji, edge enhancement, flips, and random erasing). The
# two views carry the same label; every other image is a negative.
#
# The schedule raises the resolution and the magnitudes together: below, the same image's hard
# view at the three published stages (v83: 256 px, p = 0.25; v86: 384 px, p = 0.30; v98:
# 512 px, p = 0.35).

# %%
display(pd.DataFrame([vars(STAGES.get(s)) for s in ("v83", "v86", "v98")]).set_index("name"))
ids = [str(i) for i in bench.training_ids[:3]]
imgs, caps = [], []
for i, tid in enumerate(ids):
    img = bench.load_image(tid)
    imgs.append(img)
    caps.append(tid)
    v, _ = moderate_view(img, STAGES.get("v83").scaled(size=160), view_rng(seed, 0, i, 0))
    imgs.append(v)
    caps.append("moderate")
    for st in ("v83", "v86", "v98"):
        v, steps = hard_view(img, STAGES.get(st).scaled(size=160), view_rng(seed, 0, i, 1))
        imgs.append(v)
        caps.append(f"hard {st}: " + ",".join(s for s in steps if s != "crop"))
display(contact_sheet(imgs, caps, size=160, cols=5, caption_height=30))

# %% [markdown]
# ## Step 3: the loss, from scratch
#
# With anchors $x_i$ (the current batch, both views) and a memory $M$ of earlier embeddings
# (the current batch is written into it first, without gradient), $D_{ij} = \lVert x_i - M_j\rVert$:
#
# $$L = \underset{(i,j):\,y_i = z_j,\ j \ne \text{self}}{\operatorname{mean}_{\ne 0}} \operatorname{relu}(D_{ij} - m_{pos})
#     + \underset{(i,j):\,y_i \ne z_j}{\operatorname{mean}_{\ne 0}} \operatorname{relu}(m_{neg} - D_{ij}),
#     \qquad m_{pos} = 0,\ m_{neg} = 1 .$$
#
# "mean over non-zero terms": negatives already beyond the margin do not dilute the loss. Here is
# the loss in a few lines, then the same three iterations with the library's
# `XBMContrastiveLoss` and with pytorch-metric-learning's `CrossBatchMemory(ContrastiveLoss)`.

# %%
def loss_by_hand(x, y, mem_x, mem_y, self_slots, m_pos=0.0, m_neg=1.0):
    D = torch.cdist(F.normalize(x, dim=1), F.normalize(mem_x, dim=1))
    same = y[:, None] == mem_y[None, :]
    pos_mask = same.clone()
    pos_mask[torch.arange(len(x)), self_slots] = False
    pos, neg = F.relu(D[pos_mask] - m_pos), F.relu(m_neg - D[~same])
    return (pos[pos > 0].mean() if (pos > 0).any() else 0 * D.sum()) + (neg[neg > 0].mean() if (neg > 0).any() else 0)


from pytorch_metric_learning.losses import ContrastiveLoss, CrossBatchMemory

mem_size, d = 20, 16
ours, pml = XBMContrastiveLoss(d, mem_size), CrossBatchMemory(ContrastiveLoss(0.0, 1.0), d, memory_size=mem_size)
mem_x, mem_y, ptr = torch.zeros(0, d), torch.zeros(0, dtype=torch.long), 0
for it in range(3):
    xb_ = F.normalize(torch.randn(8, d), dim=1)
    yb_ = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]) + 4 * it
    mem_x, mem_y = torch.cat([mem_x, xb_])[-mem_size:], torch.cat([mem_y, yb_])[-mem_size:]
    slots = torch.arange(len(mem_x) - 8, len(mem_x))
    # our ring buffer writes slot (ptr + i) % size; the by-hand memory is the same set of rows
    a, b, c = loss_by_hand(xb_, yb_, mem_x, mem_y, slots), ours(xb_, yb_), pml(xb_, yb_)
    print(f"iteration {it}: by hand {a:.5f}  library {b:.5f}  pytorch-metric-learning {c:.5f}")
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(b, c, atol=1e-5)

# %% [markdown]
# (The by-hand memory keeps the rows in arrival order; the library's ring buffer in slot order.
# Both hold the same rows, so the loss is the same.) Why a *large* memory helps is measured
# after training, below.
#
# %% [markdown]
# ## Step 4: training, stage by stage
#
# `train_stage` builds the views, the memory-bank loss and calls the shared trainer
# (`imsim_lab.train.train`: AMP on GPU, gradient accumulation, `torchrun` DDP, checkpoints that
# resume exactly after a kill). Each stage starts from the previous stage's weights. In `full`,
# each stage is a `torchrun` command on `n_gpus` processes.

# %%
train_runs = []
init = None
t_train = time.perf_counter()
for k, (step, size) in enumerate(PLAN["stages"]):
    out = run_dir(NOTEBOOK, f"train/stage{k + 1}_{step.stage}", results_dir, profile)
    if profile == "full":
        import subprocess

        cmd = torchrun_command(bench.root, out, step, n_gpus, backbone, init=init)
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
        init = out / "weights.pt"
        continue
    cfg = StageConfig(stage=step.stage, size=size, backbone=backbone, memory_size=step.memory_size,
                      reference_negatives=step.reference_negatives,
                      train=TrainConfig(epochs=step.epochs, lr=step.lr, lr_schedule=step.lr_schedule,
                                        batch_size=step.batch_size, num_workers=PLAN["workers"],
                                        checkpoint_every=10, seed=seed))
    res = train_stage(bench, out, cfg, init=init)
    train_runs += [dict(r, stage=f"{k + 1}: {step.stage} @ {size}px") for r in res.history]
    init = res.weights
train_seconds = time.perf_counter() - t_train
weights = init
print(f"training: {train_seconds:.0f} s; weights: {weights}")
if train_runs:
    hist = pd.DataFrame(train_runs)
    hist["global_step"] = np.arange(1, len(hist) + 1)
    px.line(hist, x="global_step", y="loss", color="stage", title="training loss (contrastive + memory)").show()

# %% [markdown]
# ### Why a large memory helps
#
# Only negatives closer than the margin (1.0) contribute to the loss. Count these *active*
# negatives per anchor among the first n training images, for n = one batch ... all of them,
# with random weights and with the trained weights. With random weights everything is close
# (all negatives are active). Once the network has learned, an anchor has few hard negatives
# left, and a batch rarely contains them: a memory of thousands of recent embeddings keeps
# supplying them at no extra forward pass (a batch of 20,000 would fit on no GPU).

# %%
n_probe = min(len(bench.training_ids), 512)
probe_size = PLAN["stages"][-1][1]
probe_stage = STAGES.get("v83").scaled(size=probe_size)
arr = np.stack([to_array(moderate_view(bench.load_image(t), probe_stage, view_rng(seed, 0, i, 0))[0],
                         model.config.mean, model.config.std) for i, t in enumerate(bench.training_ids[:n_probe])])
sizes = sorted({s for s in (8, 32, 128, 512) if s <= n_probe} | {n_probe})
active = []
for label, w in (("random weights", None), ("trained", weights)):
    with torch.no_grad():
        emb = iscnet(backbone, probe_size, device="cpu", weights_path=w).module.eval()(torch.from_numpy(arr))
    Dm = torch.cdist(emb, emb)
    Dm.fill_diagonal_(float("inf"))
    for s_ in sizes:
        active.append({"weights": label, "candidates": s_,
                       "active negatives per anchor": float((Dm[:, :s_] < 1.0).sum(1).float().mean())})
display(pd.DataFrame(active).pivot(index="candidates", columns="weights", values="active negatives per anchor"))

# %% [markdown]
# ## Step 5 (optional): fine-tune on ground-truth pairs
#
# lyakaap's last step (v107) trains on the phase-1 ground-truth pairs (query, reference) with a
# larger margin (1.1), a memory of 1,000 and no augmentation. It was evaluated on phase-2 queries.
# We mimic that: fine-tune on the pairs of half of the queries, evaluate on the other half.

# %%
tune_q, heldout_q = split_queries(bench.gt.query_ids, 0.5, seed)
ft = PLAN["finetune"]
ft_out = run_dir(NOTEBOOK, "train/finetune_pairs", results_dir, profile)
ft_res = finetune_pairs(bench, ft_out, weights, tune_q, backbone, PLAN["eval_size"],
                        TrainConfig(epochs=ft["epochs"], batch_size=ft["batch_size"], lr=0.05 if profile != "full" else 0.5,
                                    lr_schedule="linear", num_workers=PLAN["workers"], seed=seed),
                        memory_size=ft["memory_size"])
n_pairs = int(bench.queries.set_index("query_id").loc[tune_q, "has_match"].sum())
print(f"fine-tuned on {n_pairs} pairs ({len(heldout_q)} queries held out); weights: {ft_res.weights}")

# %% [markdown]
# ## Step 6: extraction, DBA + NES, evaluation
#
# Four run folders (the explorer shows them side by side), all at the evaluation resolution:
#
# * `random`: the same network with random weights: the floor that training must beat;
# * `trained`: after the self-supervised stages, raw descriptors;
# * `trained+nes`: with DBA on the training descriptors (k = 10, α = 3) and negative embedding
#   subtraction (β = 0.35, k = 10, 1 iteration) on queries and references;
# * `finetuned+nes`: after the fine-tune on ground-truth pairs.

# %%
NES = {"dba_k": 10, "dba_alpha": 3.0, "beta": 0.35, "k": 10, "n_iter": 1}
size = PLAN["eval_size"]
specs = {
    "random": MethodSpec("lyakaap_random", "isc_effnetv2m", "none", model_args=model_args(backbone, size),
                         description="ISCNet, random weights (floor)"),
    "trained+nes": MethodSpec("lyakaap+nes", "isc_effnetv2m", "nes", model_args=model_args(backbone, size, weights_path=weights),
                              params=NES, needs_training=True, description="+ DBA and NES (training images)"),
    "trained": MethodSpec("lyakaap", "isc_effnetv2m", "none", model_args=model_args(backbone, size, weights_path=weights),
                          description="ISCNet after self-supervised training"),
    "finetuned+nes": MethodSpec("lyakaap_ft+nes", "isc_effnetv2m", "nes",
                                model_args=model_args(backbone, size, weights_path=ft_res.weights), params=NES,
                                needs_training=True, description="+ fine-tune on half of the GT pairs, DBA, NES"),
}
opts = RunOptions(extract=ExtractConfig(batch_size=64, num_workers=PLAN["workers"]))
results, rows = {}, []
for name, spec in specs.items():
    out = run_dir(NOTEBOOK, name, results_dir, profile)
    if name == "trained" and not (out / "features").exists():  # same model: reuse the extracted features
        shutil.copytree(run_dir(NOTEBOOK, "trained+nes", results_dir, profile) / "features", out / "features")
    results[name] = run_method(spec, bench.root, out, opts=opts)
    preds = read_predictions(out / "predictions.csv")
    held = evaluate(bench.gt, preds, "isc2021", queries=heldout_q)
    m = results[name].metrics["isc2021"]
    rows.append({"run": name, "µAP": m["micro_ap"], "R@P90": m["recall_at_p90"], "R@1": m["recall_at_rank1"],
                 "µAP held-out half": held.micro_ap, "R@P90 held-out half": held.recall_at_p90})
table = pd.DataFrame(rows).set_index("run")
display(table.round(4))

# %% [markdown]
# Did the network learn? The floor is the same architecture with random weights (random
# convolutional features already match mild edits, so the floor is not zero).

# %%
gain = table.loc["trained", "µAP"] - table.loc["random", "µAP"]
print(f"µAP trained - random = {gain:+.4f}")
if profile == "cpu":
    assert gain > 0.05, "the cpu lesson must show learning: trained µAP clearly above random weights"

# %% [markdown]
# ## Step 7: per transformation family

# %%
fam = pd.concat([family_metrics(bench, read_predictions(run_dir(NOTEBOOK, n, results_dir, profile) / "predictions.csv"),
                                "isc2021").assign(run=n) for n in ("random", "trained", "trained+nes", "finetuned+nes")])
fig = px.bar(fam, x="family", y="micro_ap", color="run", barmode="group", title="µAP per family")
fig.show()
print(f"notebook time: {time.perf_counter() - t_notebook:.0f} s (training {train_seconds:.0f} s)")

# %% [markdown]
# ## What the paper reported, and why it differs here
#
# | | data | µAP | R@P90 |
# |---|---|---|---|
# | lyakaap final submission (leaderboard) | DISC21 phase 2 | 0.6354 | – |
# | v107 + DBA + NES, phase-1 public GT (trained on those pairs!) | DISC21 phase 1 | 0.9479 | 0.9193 |
# | per-stage and NES ablations | paper tables | not verified | |
# | this notebook | the table above | | |
#
# Why the numbers here are far from the paper's: the published model starts from an
# ImageNet-21k EfficientNetV2-M and sees 1M training images for 20 epochs at up to 512 px on 8
# GPUs; the `cpu` lesson trains a ResNet-18 **from random weights** on 1,000 images for a few
# epochs at about 100 px. What carries over is the *shape* of the result: training beats the
# random floor, NES with the background set changes the global ranking, and the fine-tune on
# pairs helps most on the families that self-supervised views do not cover. disc-synth also has
# far fewer distractors than DISC21.
#
# ## Exercises
#
# 1. Set the memory to one batch (`memory_size = 2 * batch_size`) in the `cpu` plan: how much
#    µAP does the memory bank buy here?
# 2. Train the first stage with hard views only at the v98 magnitudes. Better or worse?
# 3. Drop the reference negatives from the last stage. Which families change?
# 4. Kill the kernel in the middle of a stage and run the cell again: it resumes from
#    `checkpoint.pt`. Compare the final weights with an uninterrupted run.
# 5. Sweep NES's β on the trained descriptors (lesson 2 shows how).
