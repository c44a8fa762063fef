"""SeungKee Jeon's pair classifier (matching track 2nd, arXiv 2111.09113; ``docs/methods.md``, "SeungKee
Jeon (matching track, 2nd)"): a ViT that looks at ``[reference | query]`` and says "copy" or not.

* :class:`PairViTConfig` (frozen): the backbone, the size of each half (published 224 x 112, height x
  width), grayscale or colour, the normalisation; tiny overrides (``depth``, ``embed_dim``,
  ``num_heads``) for the ``cpu`` profile and the tests;
* :func:`pair_half` / :func:`pair_tensor`: a PIL image -> one (h, w, 3) uint8 half; two batches of
  halves -> the normalised (b, 3, h, 2w) input, reference on the left;
* :class:`PairViT`: timm ViT over the (h, 2w) input -> Linear(d -> 1, no bias) -> one logit. Its
  ``input_layout`` buffer (h, w, grayscale) travels in every ``state_dict``, so weights trained on
  another layout are refused by :func:`load_pairvit` with one line naming the file;
* :class:`PairGroups`: training items made on the fly from the training images with the
  transformation families of :mod:`imsim_lab.data.augment`: for clean image i and its
  hard-negative group ``groups[i]`` (i first), the pairs ``[clean i | augmented j]`` for every j of
  the group, label 1 only for j = i; :func:`hard_negative_groups` makes the groups from
  descriptors of the training images;
* :class:`PairBCE`: binary cross-entropy on the logits; :func:`train_pairvit` runs it all on the
  shared trainer (:func:`imsim_lab.train.trainer.train`: AMP, DDP, exact resume).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ImsimError
from .data import load_rgb
from .trainer import TrainConfig, TrainResult, train
from .views import view_rng

PUBLISHED_BACKBONE = "vit_large_patch16_224"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: families the training views are drawn from (everything of DISC21 but the chain of several)
TRAIN_FAMILIES = ("crop", "rotate", "hflip", "vflip", "skew", "perspective", "aspect_ratio", "scale", "pad", "blur",
                  "jpeg", "noise", "pixelize", "brightness", "contrast", "saturation", "color_jitter", "grayscale",
                  "text", "emoji", "overlay_image", "paste", "meme", "screenshot", "combine", "opacity", "stripes",
                  "shuffle_pixels", "sharpen", "channels", "airgap")


class PairViTError(ImsimError):
    """Weights or input of the pair classifier that do not fit; the message names the file."""


@dataclass(frozen=True)
class PairViTConfig:
    """What the pair classifier is; its preprocessing comes from here only.

    Attributes:
        backbone: timm ViT name (published: ``vit_large_patch16_224``, ImageNet init).
        height, width: size of each half (published 224 x 112); the input is height x 2 width.
        gray: grayscale halves (3 equal channels), as published; False: colour.
        depth, embed_dim, num_heads: overrides of the backbone (None: its own), for tiny models.
        mean, std: normalisation.
        pretrained: timm hub weights for the backbone (needs internet).
        patch_size: override of the backbone's patch size (None: its own; a 64 x 32 half cut in 16 px
            patches is only 4 x 2 tokens, too coarse to compare).
    """

    backbone: str = PUBLISHED_BACKBONE
    height: int = 224
    width: int = 112
    gray: bool = True
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    pretrained: bool = False
    patch_size: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.height < 1 or self.width < 1:
            raise PairViTError(f"pair classifier: height and width must be >= 1, not {self.height} x {self.width}")
        p = self.patch_size
        if p is not None and (p < 1 or self.height % p or self.width % p):
            raise PairViTError(f"pair classifier: patch size {p} must divide the half size "
                               f"{self.height} x {self.width}")

    @property
    def layout(self) -> tuple[int, int, int]:
        """(height, width, 1 if grayscale else 0): what :func:`load_pairvit` checks."""
        return (int(self.height), int(self.width), int(bool(self.gray)))

    def to_dict(self) -> dict:
        return asdict(self)


#: the ``cpu`` profile's classifier: a 2-block ViT-Tiny on 64 x 32 halves
CPU_CONFIG = PairViTConfig("vit_tiny_patch16_224", 64, 32, depth=2)


def layout_text(layout) -> str:
    h, w, g = (int(v) for v in layout)
    return f"{h}x{w} {'grayscale' if g else 'colour'}"


def pair_half(img, config: PairViTConfig) -> np.ndarray:
    """A PIL image as one half of the input: resized to (height, width), grayscale in 3 channels when
    ``config.gray``. Returns (height, width, 3) uint8.

    Grayscale halves are resized as one luma plane and then repeated: PIL filters every channel alike,
    so this is the same array as resizing the 3-channel gray image, for a third of the work."""
    from PIL import Image

    size = (config.width, config.height)
    if config.gray:
        luma = img if img.mode == "L" else img.convert("L")  # convert() to the same mode would copy the image
        small = np.asarray(luma.resize(size, Image.BILINEAR), np.uint8)
        return np.repeat(small[:, :, None], 3, axis=2)
    return np.array((img if img.mode == "RGB" else img.convert("RGB")).resize(size, Image.BILINEAR), np.uint8)


def pair_tensor(refs: torch.Tensor, queries: torch.Tensor, config: PairViTConfig,
                channels_first: bool = False, normalise: bool = True) -> torch.Tensor:
    """(b, h, w, 3) uint8 references and queries -> (b, 3, h, 2w) float, normalised, reference left.

    ``channels_first``: the halves are already (b, 3, h, w) uint8 (a matcher permutes each decoded
    half once instead of once per pair). One allocation: each half is copied (uint8 -> float) straight
    into its side of the output, which is then normalised in place (``(x / 255 - mean) / std`` as one
    multiply and one subtraction per channel). ``normalise=False``: the pixel values 0-255 as floats, the
    input of :func:`pixel_input`'s copy of the classifier."""
    if not channels_first:
        refs, queries = refs.permute(0, 3, 1, 2), queries.permute(0, 3, 1, 2)
    b, _, h, w = refs.shape
    x = torch.empty((b, 3, h, w + queries.shape[3]), dtype=torch.float32, device=refs.device)
    x[..., :w].copy_(refs)
    x[..., w:].copy_(queries)
    if not normalise:
        return x
    std = torch.tensor(config.std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(torch.float32).view(1, 3, 1, 1).to(x.device)
    shift = (torch.tensor(config.mean, dtype=torch.float64) / std).to(torch.float32).view(1, 3, 1, 1).to(x.device)
    return x.mul_(scale).sub_(shift)


class PairViT(nn.Module):
    """timm ViT on ``[reference | query]`` -> one logit. ``forward``: (b, 3, h, 2w) -> (b, 1)."""

    def __init__(self, config: PairViTConfig):
        super().__init__()
        import timm

        over = {k: getattr(config, k) for k in ("depth", "embed_dim", "num_heads", "patch_size")
                if getattr(config, k) is not None}
        self.config = config
        self.backbone = timm.create_model(config.backbone, pretrained=config.pretrained, num_classes=0,
                                          img_size=(config.height, 2 * config.width), **over)
        self.head = nn.Linear(self.backbone.num_features, 1, bias=False)
        self.register_buffer("input_layout", torch.tensor(config.layout, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def pixel_input(net: PairViT) -> PairViT:
    """A copy of ``net`` that takes pixel values 0-255 (``pair_tensor(..., normalise=False)``) and gives
    the same logits: the input normalisation ``(x / 255 - mean) / std`` is a per-channel affine map, and the
    ViT's first layer, the patch embedding, is a convolution without padding (one patch per stride), so the
    map is folded into its weights and bias: ``W' = W s_c``, ``b' = b - sum_c,i,j W m_c / std_c`` with
    ``s_c = 1 / (255 std_c)``. Same to float rounding; the matcher saves two passes over every batch."""
    import copy

    proj = net.backbone.patch_embed.proj
    if tuple(proj.padding) != (0, 0) or getattr(net.backbone.patch_embed, "dynamic_img_pad", False):
        raise PairViTError("pixel_input: the patch embedding pads its input; the normalisation cannot be folded")
    out = copy.deepcopy(net)
    p = out.backbone.patch_embed.proj
    std = torch.tensor(net.config.std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
    shift = (torch.tensor(net.config.mean, dtype=torch.float64) / std).view(1, 3, 1, 1)
    with torch.no_grad():
        w = p.weight.double()
        bias = (p.bias.double() if p.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64))
        bias = bias - (w * shift).sum(dim=(1, 2, 3))
        p.weight.copy_((w * scale).to(p.weight.dtype))
        if p.bias is None:
            p.bias = torch.nn.Parameter(bias.to(p.weight.dtype))
        else:
            p.bias.copy_(bias.to(p.bias.dtype))
    return out


def _read_state(path: Path) -> dict:
    if not path.is_file():
        raise PairViTError(f"{path}: pair classifier weights not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        raise PairViTError(f"{path}: not a readable weights file ({type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a trainer checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PairViTError(f"{path}: holds no state_dict of tensors (expected the weights.pt of `imsim-lab train "
                           f"pairvit`)")
    return state


def check_state(state: dict, net: PairViT, path: Path) -> None:
    """Refuse a ``state_dict`` of another input layout or shape than ``net`` (one line naming ``path``)."""
    got = state.get("input_layout")
    if got is None:
        raise PairViTError(f"{path}: no input_layout tensor: not the weights of a pair classifier")
    want = net.config.layout
    if tuple(int(v) for v in got.tolist()) != want:
        raise PairViTError(f"{path}: trained on {layout_text(got.tolist())} halves, the method asks "
                           f"{layout_text(want)} (set height=, width=, gray= as trained)")
    mine = net.state_dict()
    missing = [k for k in mine if k not in state]
    extra = [k for k in state if k not in mine]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in mine.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if shapes or missing or extra:
        what = (f"tensor {shapes[0][0]} is {shapes[0][1]}, the model's {shapes[0][2]}" if shapes else
                f"{len(missing)} tensors missing, e.g. {missing[0]}" if missing else
                f"{len(extra)} unexpected tensors, e.g. {extra[0]}")
        raise PairViTError(f"{path}: does not fit a pair classifier on {net.config.backbone} "
                           f"(depth={net.config.depth}, embed_dim={net.config.embed_dim}): {what}")


def load_pairvit(path: str | Path, config: PairViTConfig, device: str = "cpu") -> PairViT:
    """A trained classifier in eval mode; refuses weights of another layout or shape (:func:`check_state`)."""
    path = Path(path)
    state = _read_state(path)
    with torch.device("meta"):
        probe = PairViT(config)
    check_state(state, probe, path)
    net = PairViT(config)
    net.load_state_dict(state)
    return net.to(device).eval()


# ------------------------------------------------------------------------------------------------
# training


def hard_negative_groups(xt: np.ndarray, size: int, backend: str = "auto") -> np.ndarray:
    """Each training image's group: itself, then its ``size - 1`` most similar others.

    Args:
        xt: (n, d) descriptors of the training images (unit length: inner products).
        size: group size, 1 <= size <= n.

    Returns:
        (n, size) int64, row i starting with i.
    """
    from ..search import knn

    n = len(xt)
    if not 1 <= size <= n:
        raise PairViTError(f"hard-negative group size {size} is not in 1..{n} (the training images)")
    _, I = knn(np.ascontiguousarray(xt, np.float32), np.ascontiguousarray(xt, np.float32), min(n, size + 1), "ip",
               backend)
    out = np.empty((n, size), np.int64)
    for i in range(n):
        others = [int(j) for j in I[i] if j >= 0 and j != i][: size - 1]
        out[i] = [i, *others]
    return out


def random_groups(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Groups of random others (no descriptor to find hard negatives with): (n, size), row i first i."""
    if not 1 <= size <= n:
        raise PairViTError(f"group size {size} is not in 1..{n} (the training images)")
    out = np.empty((n, size), np.int64)
    for i in range(n):
        g = np.random.default_rng([seed, i])
        others = g.choice(n - 1, size=size - 1, replace=False)
        out[i] = [i, *(others + (others >= i))]
    return out


class PairGroups:
    """Training pairs of the pair classifier (map-style dataset addressed by ``(index, epoch)``).

    Item i: ``x`` (g, 3, h, 2w) float32: ``[clean i | augmented j]`` for j in ``groups[i]`` (one
    transformation family each, drawn from ``families`` at a strength in ``strength``), ``y`` (g,) int64,
    1 for j = i and 0 otherwise. The clean side is resized (and flipped half of the time).

    Args:
        paths: the training images; ``ids``: their ids (for the families that paste other images).
        groups: (n, g) indices into ``paths``, row i starting with i (:func:`hard_negative_groups`).
    """

    def __init__(self, paths: Sequence[str | Path], groups: np.ndarray, config: PairViTConfig, seed: int = 0,
                 families: Sequence[str] = TRAIN_FAMILIES, strength: tuple[float, float] = (0.2, 1.0),
                 ids: Sequence[str] | None = None, assets=None):
        from ..data.augment import FAMILIES, Assets
        from .data import _ImagesById

        self.paths = [str(p) for p in paths]
        self.groups = np.asarray(groups, np.int64)
        if self.groups.ndim != 2 or len(self.groups) != len(self.paths) or (self.groups[:, 0] != np.arange(
                len(self.paths))).any():
            raise PairViTError(f"groups must be ({len(self.paths)}, g) with row i starting with i, not "
                               f"{self.groups.shape}")
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise PairViTError(f"unknown transformation family {unknown[0]!r}; families: {', '.join(FAMILIES.names())}")
        self.config, self.seed, self.families, self.strength = config, int(seed), tuple(families), tuple(strength)
        self.ids = tuple(str(i) for i in ids) if ids is not None else tuple(Path(p).stem for p in self.paths)
        self.assets = assets or Assets.from_augly(images=_ImagesById(dict(zip(self.ids, self.paths))),
                                                  image_ids=self.ids, seed=self.seed)

    def __len__(self) -> int:
        return len(self.paths)

    def augmented(self, j: int, g: np.random.Generator):
        from ..data.augment import apply_family

        fam = self.families[int(g.integers(len(self.families)))]
        out, _ = apply_family(load_rgb(self.paths[j]), fam, float(g.uniform(*self.strength)), g, self.assets)
        return out

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        g = view_rng(self.seed, epoch, index, 0)
        clean = load_rgb(self.paths[index])
        if g.random() < 0.5:
            clean = clean.transpose(0)  # PIL FLIP_LEFT_RIGHT
        left = torch.from_numpy(pair_half(clean, self.config))[None]
        rights = [pair_half(self.augmented(int(j), g), self.config) for j in self.groups[index]]
        right = torch.from_numpy(np.stack(rights))
        x = pair_tensor(left.expand(len(rights), -1, -1, -1), right, self.config).numpy().astype(np.float32)
        return x, (self.groups[index] == index).astype(np.int64)


class PairBCE(nn.Module):
    """Binary cross-entropy on the logits: (logits (n, 1), labels (n,) 0/1) -> scalar."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1), y.float())


@dataclass(frozen=True)
class PairTrainConfig:
    """A pair-classifier training run: the classifier, the group size, the views, the trainer's settings
    (published: Adam, lr 1e-5 constant, weight decay 1e-6)."""

    model: PairViTConfig = field(default_factory=PairViTConfig)
    group_size: int = 8
    families: tuple = TRAIN_FAMILIES
    strength: tuple = (0.2, 1.0)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(optimizer="adam", lr=1e-5, weight_decay=1e-6))

    def to_dict(self) -> dict:
        return asdict(self)


def train_pairvit(bench, out: str | Path, cfg: PairTrainConfig, groups: np.ndarray | None = None,
                  init: str | Path | None = None, on_step: Callable[[dict], None] | None = None,
                  groups_source: str = "random", holdout: int = 0) -> TrainResult:
    """Train the pair classifier on the training images of ``bench`` (never a query) into ``out``.

    Args:
        groups: (n, g) hard-negative groups over the trained images (None: :func:`random_groups`).
        groups_source: what the groups were made from (kept in ``train_config.json``).
        holdout: the last ``holdout`` training images are not trained on (:func:`held_out_split`), so
            that pairs made from them measure the classifier (:func:`pair_scores`, :func:`roc`).
    """
    ids = [str(i) for i in bench.training_ids]
    if not ids:
        raise PairViTError(f"{Path(bench.root) / 'training'}: no training images")
    if holdout:
        ids = [ids[i] for i in held_out_split(len(ids), holdout)[0]]
    if groups is None:
        groups = random_groups(len(ids), min(cfg.group_size, len(ids)), cfg.train.seed)
    ds = PairGroups([bench.image_path(i) for i in ids], groups, cfg.model, cfg.train.seed, cfg.families,
                    cfg.strength, ids=ids)
    info = {"recipe": "pairvit", "config": cfg.to_dict(), "benchmark": str(bench.root), "groups": groups_source,
            "group_size": int(groups.shape[1]), "init": str(init) if init else None,
            **({"held_out": int(holdout)} if holdout else {})}
    return train(PairViT(cfg.model), PairBCE(), ds, cfg.train, out, init=init, on_step=on_step, run_info=info)


# ------------------------------------------------------------------------------------------------
# held-out pairs, ROC, attention across the seam


def held_out_split(n: int, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """(trained, held out) positions of ``n`` training images: the last ``holdout`` are held out."""
    if not 0 <= holdout < n - 1:
        raise PairViTError(f"--holdout {holdout}: keep at least 2 of the {n} training images to train on")
    return np.arange(n - holdout), np.arange(n - holdout, n)


def pair_scores(net: PairViT, dataset: "PairGroups", items: Sequence[int] | None = None, epoch: int = 0,
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and labels of the pairs of ``dataset`` items (default: all), in eval mode.

    Returns (labels (m,) int64, scores (m,) float64)."""
    items = range(len(dataset)) if items is None else items
    ys, ss = [], []
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    with torch.inference_mode():
        for i in items:
            x, y = dataset[(int(i), epoch)]
            xt = torch.from_numpy(x).to(dev)
            for a in range(0, len(xt), batch_size):
                ss.append(torch.sigmoid(net(xt[a:a + batch_size]).float()).reshape(-1).cpu().numpy())
            ys.append(y)
    net.train(was)
    return np.concatenate(ys).astype(np.int64), np.concatenate(ss).astype(np.float64)


def roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC curve and its area: (false-positive rates, true-positive rates, AUC). Ties share their rank
    (the AUC is the Mann-Whitney probability that a positive outscores a negative, ties counting half)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    npos, nneg = int(y.sum()), int((~y).sum())
    if not npos or not nneg:
        raise PairViTError("ROC needs positive and negative pairs")
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]  # the end of each run of equal scores
    tpr = np.r_[0.0, np.cumsum(ys)[last] / npos]
    fpr = np.r_[0.0, np.cumsum(~ys)[last] / nneg]
    auc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    return fpr, tpr, auc


def auc_interval(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(AUC, low, high): the :func:`roc` area with a percentile bootstrap interval, positives and
    negatives resampled separately (their counts stay those measured)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    auc = roc(y, s)[2]
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    lab = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    for b in range(n_boot):
        boot[b] = roc(lab, np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])[2]
    a = (1 - level) / 2
    return auc, float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))


def last_block_attention(net: PairViT, x: torch.Tensor) -> torch.Tensor:
    """Attention weights of the classifier's last transformer block: (b, heads, tokens, tokens),
    computed from that block's own query and key projections (the class token first, then the
    patches row by row over the (h, 2w) input: reference patches left of the seam, query right)."""
    blocks = net.backbone.blocks
    got = {}
    attn = blocks[-1].attn
    handle = attn.register_forward_pre_hook(lambda m, args: got.__setitem__("x", args[0]))
    try:
        with torch.inference_mode():
            net(x)
            t = got["x"]
            b, n, c = t.shape
            qkv = attn.qkv(t).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
            return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    finally:
        handle.remove()


def seam_attention(net: PairViT, x: torch.Tensor) -> dict:
    """What the last block looks at across the seam, for inputs ``x`` (b, 3, h, 2w).

    Returns ``cls_map`` (b, gh, 2gw): the class token's attention over the patch grid (mean over
    heads); ``cross`` (b,): the share of the query patches' attention that goes to reference patches
    (mean over heads and query patches); ``grid`` (gh, gw) patches per half.
    """
    a = last_block_attention(net, x).float().mean(1)  # (b, n, n)
    prefix = a.shape[-1] - np.prod(net.backbone.patch_embed.grid_size)
    gh, gw2 = net.backbone.patch_embed.grid_size
    patches = a[:, prefix:, prefix:].reshape(len(x), gh, gw2, gh, gw2)
    query_rows = patches[:, :, gw2 // 2:]  # attention from the query half ...
    cross = query_rows[..., : gw2 // 2].sum((-1, -2)) / query_rows.sum((-1, -2)).clamp_min(1e-12)
    cls_map = a[:, 0, prefix:].reshape(len(x), gh, gw2)
    return {"cls_map": cls_map.cpu().numpy(), "cross": cross.mean((1, 2)).cpu().numpy(), "grid": (gh, gw2 // 2)}
