"""VisionForce's training recipe: Bag of Tricks (descriptor track 3rd) and D2LV's backbones (matching 1st).

``docs/methods.md``, "Bag of Tricks" and "D2LV". One class per training image, P classes x K
views per batch (:mod:`imsim_lab.train.bot_data`), the network of
:mod:`imsim_lab.features.models.bot` and the loss of :mod:`imsim_lab.train.bot_losses`:

* ``variant="bot"``: the 256-d matrix head; 10 CE(wide) + 1 CE(head) + 2 KD(T 2) + 1 triplet;
* ``variant="d2lv"``: no head; 10 CE(wide) + 1 triplet; the descriptor is the wide feature.

Adam at 3.5e-4, the learning rate's factor a linear warm-up from 0.01 over the first 5/25 of the
run, constant until 10/25, then cosine to 0 (:func:`schedule_steps`; published: 25 epochs x
8,000 iterations, batch 128 = 32 classes x 4). The trunk starts from Barlow Twins
(:func:`imsim_lab.train.barlow.load_trunk`: a run of ``imsim-lab train barlow`` or the released
ResNet-50), timm's hub weights, or random weights. The run folder is the shared trainer's (AMP,
DDP, exact resume after a kill); ``weights.pt`` is the network only (the classifiers, one row per
class, stay in ``checkpoint.pt``). Taught in ``notebooks/05_descriptor_3rd_bag_of_tricks``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ImsimError
from .bot_losses import PUBLISHED_BOT, PUBLISHED_D2LV, BoTLoss, BoTWeights
from .trainer import CHECKPOINT, TrainConfig, TrainResult, load_checkpoint, train

VARIANTS = ("bot", "d2lv")
MODEL_OF = {"bot": "bot_net", "d2lv": "d2lv_net"}
#: published: Adam 3.5e-4; warm-up over 5 of 25 epochs from a factor 0.01, constant to epoch 10
PUBLISHED_LR, WARMUP_SHARE, HOLD_SHARE, WARMUP_START = 3.5e-4, 5 / 25, 5 / 25, 0.01
#: weight decay 5e-4: the default of the person re-identification trainers the code derives from,
#: not read in the authors' scripts
WEIGHT_DECAY = 5e-4
PUBLISHED_TRAIN = TrainConfig(optimizer="adam", lr=PUBLISHED_LR, lr_schedule="cosine", weight_decay=WEIGHT_DECAY,
                              warmup_start=WARMUP_START, batch_size=32)


@dataclass(frozen=True)
class BoTConfig:
    """One training run.

    Attributes:
        variant: ``bot`` or ``d2lv``. backbone: a timm ResNet. size: training resolution (256).
        k: views per class in a batch (4); ``train.batch_size`` is P, classes per process per step.
        weights: the four loss weights (default: the variant's published ones).
        waveblock: WaveBlocks after layer2 and layer3. families: view ops kept (None: all of BoT's).
        specialist: one of D2LV's specialists (:data:`~imsim_lab.train.bot_data.SPECIALISTS`): the views
            are made from that family only (None: BoT's views, or ``families``).
        offline: a folder of :func:`~imsim_lab.train.bot_data.write_offline_copies` (None: views on the fly).
        pretrained: timm hub weights for the trunk.
        train: the trainer's settings (warm-up and hold steps set by :func:`schedule_steps`).
    """

    variant: str = "bot"
    backbone: str = "resnet50"
    size: int = 256
    k: int = 4
    weights: BoTWeights | None = None
    waveblock: bool = True
    families: tuple[str, ...] | None = None
    specialist: str | None = None
    offline: str | None = None
    pretrained: bool = False
    train: TrainConfig = field(default_factory=lambda: PUBLISHED_TRAIN)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        if self.k < 2:
            raise ValueError("k must be >= 2 (the batch-hard triplet needs a positive)")
        if self.specialist is not None and self.families:
            raise ValueError("give --families or --specialist, not both")

    @property
    def loss_weights(self) -> BoTWeights:
        return self.weights or (PUBLISHED_BOT if self.variant == "bot" else PUBLISHED_D2LV)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = asdict(self.loss_weights)
        if self.specialist is not None:  # the ops the views were made of (train_config.json)
            from .bot_data import specialist_ops

            d["specialist_ops"] = [asdict(o) for o in specialist_ops(self.specialist)]
        return d


def schedule_steps(tc: TrainConfig, n_classes: int, world: int = 1) -> TrainConfig:
    """``tc`` with the warm-up and hold of the published schedule (5/25 and 5/25 of the run) in steps."""
    per_epoch = max(1, n_classes // (tc.batch_size * world) // tc.accum_steps)
    total = tc.epochs * per_epoch if tc.max_steps is None else min(tc.epochs * per_epoch, tc.max_steps)
    return replace(tc, warmup_steps=int(round(WARMUP_SHARE * total)), hold_steps=int(round(HOLD_SHARE * total)))


def model_config(cfg: BoTConfig, scales: Sequence[int] | None = None, **overrides):
    """The :class:`~imsim_lab.features.models.config.ModelConfig` of the network ``cfg`` trains
    (the registered ``bot_net`` / ``d2lv_net`` with its trunk, size and width)."""
    import torch

    from ..features.models import get_config
    from ..features.models.bot import BoTNet

    kw = {"backbone": cfg.backbone, "input_size": cfg.size, "scales": list(scales or [cfg.size]),
          "waveblock": cfg.waveblock, **overrides}
    if cfg.variant == "d2lv":
        with torch.device("meta"):
            kw.setdefault("dim", BoTNet(cfg.backbone, None, "wide").wide_dim)
    return get_config(MODEL_OF[cfg.variant], **kw)


def checkpoint_classes(out: Path) -> int | None:
    """The class count of the classifiers in ``out/checkpoint.pt`` (None: no checkpoint)."""
    ck = Path(out) / CHECKPOINT
    if not ck.is_file():
        return None
    w = load_checkpoint(ck).get("criterion", {}).get("cls_wide")
    return None if w is None else int(w.shape[0])


def train_bot(paths: Sequence[str | Path], out: str | Path, cfg: BoTConfig, init_trunk: str | Path | None = None,
              init_sha256: str | None = None, on_step: Callable[[dict], None] | None = None,
              run_info: dict | None = None) -> TrainResult:
    """Train the BoT (or D2LV) network on the training images ``paths`` into ``out``.

    Args:
        init_trunk: trunk weights to start from (:func:`imsim_lab.train.barlow.load_trunk`: a Barlow
            run's ``trunk.pt`` or folder, the released file, a URL with ``init_sha256``); ignored when
            resuming (the checkpoint has the weights).
        cfg.train: the warm-up and hold are set here from the run's length.

    Raises:
        ImsimError: a checkpoint of another class count in ``out``; trunk weights that do not fit.
    """
    from ..features.models.bot import build_bot_net
    from .bot_data import KViewImages, OfflineCopies
    from ..distributed import dist_info

    out = Path(out)
    paths = [str(p) for p in paths]
    got = checkpoint_classes(out)
    if got is not None and got != len(paths):
        raise ImsimError(f"{out / CHECKPOINT}: holds classifiers of {got} classes, this run has {len(paths)} training "
                         f"images (one class each); use another --out or the same images")
    mc = model_config(cfg)
    net = build_bot_net(mc, pretrained=cfg.pretrained and init_trunk is None)
    if init_trunk is not None and got is None:
        from .barlow import load_trunk

        load_trunk(net.trunk, init_trunk, init_sha256)
    if cfg.offline:
        ds = OfflineCopies(cfg.offline, cfg.k, cfg.size, mc.mean, mc.std, seed=cfg.train.seed)
        if len(ds) != len(paths):
            raise ImsimError(f"{cfg.offline}: an offline set of {len(ds)} classes for {len(paths)} training images")
    else:
        from .bot_data import specialist_ops

        ds = KViewImages(paths, cfg.k, cfg.size, mc.mean, mc.std, seed=cfg.train.seed, families=cfg.families,
                         ops=specialist_ops(cfg.specialist) if cfg.specialist is not None else None)
    loss = BoTLoss(len(paths), net.dims, cfg.loss_weights, seed=cfg.train.seed)
    tc = schedule_steps(cfg.train, len(paths), dist_info()[1])
    info = {"recipe": cfg.variant, "config": cfg.to_dict(), "init_trunk": str(init_trunk) if init_trunk else None,
            **(run_info or {})}
    return train(net, loss, ds, tc, out, on_step=on_step, run_info=info)
