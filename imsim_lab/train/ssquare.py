"""S-square's recipe (descriptor track 2nd, Papadakis & Addicam, arXiv 2112.03415) on any benchmark folder.

``docs/methods.md``, "S-square". One network = timm trunk + GeM (p from 3, trainable) + a linear neck
without bias + L2 (the registered model ``ssquare_net``), trained with ArcFace (m 0.4, s 40,
:mod:`imsim_lab.train.arcface`), one class per training image, Adam at 1e-3 with
ReduceLROnPlateau (factor 0.9, patience 2; :mod:`imsim_lab.train.schedules`), gradient clipping 1.

**Drip training** (:func:`train_drip`): a sequence of :class:`DripStage` s, each with more classes
(the first ``classes`` training images) and a higher query-augmentation intensity
(:mod:`imsim_lab.train.ssquare_data`). Between stages the ArcFace matrix keeps its rows and gets
new ones, initialised from the current model's embeddings of the new images. Each stage is one
run of the shared trainer in ``OUT/stage<k>`` (checkpoints, exact resume); ``OUT/weights.pt`` is
the last stage's network and ``OUT/drip.json`` the class count and losses per stage.

**Ensemble** (:func:`whitened_ensemble`): concatenate several models' descriptors, PCA-whiten to 256
fitted on the training images' descriptors, L2; then the query shift
(:func:`imsim_lab.methods.postprocess.ssquare_shift`) as the method ``ssquare`` does. The registered
method ``ssquare_ensemble`` is the same on run folders (its model,
:mod:`imsim_lab.features.models.ensemble`, takes the trained runs as ``members``).
Taught in ``notebooks/04_descriptor_2nd_ssquare``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ImsimError
from .arcface import MARGIN, SCALE, ArcFaceHead
from .ssquare_data import ClassImages, PlainImages
from .trainer import CHECKPOINT, WEIGHTS, TrainConfig, TrainResult, load_checkpoint, train

PUBLISHED_BACKBONE = "eca_nfnet_l1"
#: S-square's optimiser and scheduler (``docs/methods.md``, "S-square")
PUBLISHED_TRAIN = TrainConfig(optimizer="adam", lr=1e-3, lr_schedule="plateau", weight_decay=0.0, grad_clip=1.0,
                              batch_size=64)


@dataclass(frozen=True)
class DripStage:
    """One stage: train on the first ``classes`` images for ``epochs`` at query intensity ``intensity``
    (``batch_size`` None: the train config's)."""

    classes: int
    epochs: int = 1
    intensity: float = 0.5
    batch_size: int | None = None


#: test26's published drip (``docs/methods.md``): training images as classes (S-square added as many
#: ImageNet images as classes in each stage; not used here), intensity 0.5 -> 0.75, batch 200 -> 64
PUBLISHED_DRIP: tuple[DripStage, ...] = (
    DripStage(50_000, 10, 0.5, 200), DripStage(100_000, 10, 0.6, 200), DripStage(200_000, 10, 0.6, 100),
    DripStage(500_000, 10, 0.7, 100), DripStage(1_000_000, 20, 0.75, 64),
)


@dataclass(frozen=True)
class SSquareConfig:
    """What to train. ``train``: optimiser settings (epochs and batch come from each stage)."""

    backbone: str = PUBLISHED_BACKBONE
    size: int = 160
    dim: int = 384
    pretrained: bool = False
    margin: float = MARGIN
    scale: float = SCALE
    stages: tuple[DripStage, ...] = PUBLISHED_DRIP
    train: TrainConfig = field(default_factory=lambda: PUBLISHED_TRAIN)

    def __post_init__(self):
        if not self.stages:
            raise ValueError("at least one drip stage")
        counts = [s.classes for s in self.stages]
        if counts[0] < 2 or any(b < a for a, b in zip(counts, counts[1:])):
            raise ValueError(f"class counts must start at >= 2 and never shrink, not {counts}")

    def to_dict(self) -> dict:
        return asdict(self)


def ssquare_net(backbone: str = PUBLISHED_BACKBONE, size: int = 160, dim: int = 384, device: str | None = "cpu",
                weights_path: str | Path | None = None, pretrained: bool = False):
    """The registered ``ssquare_net`` (a TorchDescriptorModel; ``.module`` is the nn.Module to train)."""
    from ..features.models import create_model

    kw = {"backbone": backbone, "input_size": size, "dim": dim}
    if weights_path is not None:
        kw["weights_path"] = str(weights_path)
    elif pretrained:
        kw["weights"] = "timm"
    return create_model("ssquare_net", device=device, **kw)


def embed_paths(module, paths: Sequence[str], size: int, mean, std, batch_size: int = 64, device: str = "cpu"):
    """Embeddings (n, d) torch float32 of images resized to ``size`` (the net in eval mode, no grad)."""
    import torch

    ds = PlainImages(paths, size, mean, std)
    was = module.training
    module.eval().to(device)
    out = []
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            x = torch.from_numpy(np.stack([ds[j] for j in range(i, min(len(ds), i + batch_size))])).to(device)
            out.append(module(x).float().cpu())
    module.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


def check_classes(n_images: int, cfg: SSquareConfig, where: str | Path) -> None:
    """Refuse a schedule that asks for more classes than there are training images."""
    need = cfg.stages[-1].classes
    if need > n_images:
        raise ImsimError(f"{where}: {n_images} training images, but the drip schedule asks for {need} classes "
                         f"(one per image); lower --classes or use more training images")


def checkpoint_classes(folder: Path) -> int | None:
    """The class count of the ArcFace matrix in ``folder/checkpoint.pt`` (None: no checkpoint)."""
    ck = folder / CHECKPOINT
    if not ck.is_file():
        return None
    w = load_checkpoint(ck).get("criterion", {}).get("weight")
    return None if w is None else int(w.shape[0])


def check_resume_classes(out: str | Path, cfg: SSquareConfig) -> None:
    """Refuse a schedule whose class count differs from a stage checkpoint already in ``out``."""
    out = Path(out)
    for k, st in enumerate(cfg.stages):
        got = checkpoint_classes(out / f"stage{k + 1}")
        if got is not None and got != st.classes:
            raise ImsimError(f"{out / f'stage{k + 1}' / CHECKPOINT}: holds {got} ArcFace classes, this schedule asks "
                             f"for {st.classes} at stage {k + 1}; use another --out or the same --classes")


@dataclass(frozen=True, eq=False)
class DripResult:
    """The stages' trainer results, their class counts, and the final weights."""

    out: Path
    stages: list
    classes: list
    weights: Path | None

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.stages)


def train_drip(paths: Sequence[str | Path], out: str | Path, cfg: SSquareConfig, init: str | Path | None = None,
               on_step: Callable[[dict], None] | None = None, on_stage: Callable[[int, DripStage], None] | None = None,
               run_info: dict | None = None) -> DripResult:
    """Drip-train one S-square network on the training images ``paths`` into ``out`` (module docstring).

    Args:
        init: network weights to start from (another run's ``weights.pt``); ignored on resume.
        on_step: the trainer's per-step callback; on_stage: called with (k, stage) before stage k.

    Raises:
        ImsimError: fewer images than classes; a stage folder whose checkpoint has another class
            count (another schedule was run there); another configuration in ``out``.
    """
    import torch

    out = Path(out)
    paths = [str(p) for p in paths]
    check_classes(len(paths), cfg, out)
    check_resume_classes(out, cfg)
    model = ssquare_net(cfg.backbone, cfg.size, cfg.dim, pretrained=cfg.pretrained and init is None)
    net, mc = model.module, model.config
    if init is not None:
        from .initcheck import read_state

        net.load_state_dict(read_state(init))
    head, results, prev = None, [], None
    device = cfg.train.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for k, st in enumerate(cfg.stages):
        folder = out / f"stage{k + 1}"
        if on_stage:
            on_stage(k, st)
        if (folder / CHECKPOINT).is_file():
            # a resume: the rows come from the checkpoint
            head = ArcFaceHead(st.classes, cfg.dim, cfg.margin, cfg.scale, seed=cfg.train.seed)
        elif head is None:
            head = ArcFaceHead(st.classes, cfg.dim, cfg.margin, cfg.scale, seed=cfg.train.seed)
        else:
            n_old = head.n_classes
            new = embed_paths(net, paths[n_old:st.classes], cfg.size, mc.mean, mc.std, device=device)
            head = head.grown(new) if len(new) else head
        ds = ClassImages(paths[:st.classes], cfg.size, st.intensity, mc.mean, mc.std, seed=cfg.train.seed + k,
                         overlay_paths=paths[st.classes:] or paths)
        tc = replace(cfg.train, epochs=st.epochs, batch_size=st.batch_size or cfg.train.batch_size)
        info = {"recipe": "ssquare", "stage": k + 1, "drip": asdict(st), "config": cfg.to_dict(),
                "init": str(init) if init else None, **(run_info or {})}
        res = train(net, head, ds, tc, folder, on_step=on_step, run_info=info)
        results.append(res)
        prev = res
    weights = None
    if prev is not None and prev.weights is not None:
        from ..atomic import atomic_path

        with atomic_path(out / WEIGHTS) as tmp:
            shutil.copyfile(prev.weights, tmp)
        weights = out / WEIGHTS
        summary = [{"stage": k + 1, "classes": st.classes, "intensity": st.intensity, "epochs": st.epochs,
                    "steps": r.steps, "loss_first": r.history[0]["loss"] if r.history else None,
                    "loss_last": r.history[-1]["loss"] if r.history else None}
                   for k, (st, r) in enumerate(zip(cfg.stages, results))]
        from ..atomic import atomic_write_text

        atomic_write_text(out / "drip.json", json.dumps(summary, indent=1))
    return DripResult(out, results, [s.classes for s in cfg.stages], weights)


def drip_history(out: str | Path) -> list[dict]:
    """Every step of every stage of a drip run in ``out``: records with ``stage``, ``classes``,
    ``step`` (counted over all stages), ``loss``, ``lr``."""
    out = Path(out)
    rows, offset = [], 0
    k = 1
    while (out / f"stage{k}" / "history.json").is_file():
        cfg = json.loads((out / f"stage{k}" / "train_config.json").read_text())
        for rec in json.loads((out / f"stage{k}" / "history.json").read_text()):
            rows.append({"stage": k, "classes": cfg["run"]["drip"]["classes"], "step": offset + rec["step"],
                         "loss": rec["loss"], "lr": rec["lr"]})
        offset = rows[-1]["step"] if rows else offset
        k += 1
    return rows


# ------------------------------------------------------------------------------------------------
# the ensemble


def whitened_ensemble(xqs: Sequence[np.ndarray], xbs: Sequence[np.ndarray], xts: Sequence[np.ndarray],
                      dim: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S-square's ensemble: concatenate each model's descriptors, PCA-whiten to ``dim`` (eigen power
    -0.5, fitted on the training descriptors), L2.

    Args:
        xqs, xbs, xts: per model (nq, d_m), (nb, d_m), (nt, d_m) descriptors, same rows for every model.

    Returns:
        (yq, yb, yt) of (n, min(dim, sum d_m, nt - 1)) unit rows.
    """
    from ..methods.postprocess import fit_pca, l2_normalize

    xq, xb, xt = (np.concatenate([np.asarray(a, np.float32) for a in xs], axis=1) for xs in (xqs, xbs, xts))
    k = int(min(dim, xq.shape[1], max(len(xt) - 1, 1)))
    pca = fit_pca(xt, k, eigen_power=-0.5)
    return l2_normalize(pca.apply(xq)), l2_normalize(pca.apply(xb)), l2_normalize(pca.apply(xt))
