"""The frozen configuration that travels with every descriptor model, and the preprocessing
derived from it (and from nothing else).

A model's config says how an image becomes the array the model eats:

* ``resize``: ``"square"`` (resize to ``input_size`` ignoring the aspect, lyakaap / BoT / D2LV),
  ``"short_side"`` (the short side to ``short_side`` keeping the aspect, SSCD's 288 rule),
  ``"long_side"`` (the long side to ``long_side`` keeping the aspect: fit in a box, MultiGrain,
  PDQ) or ``"none"``;
* ``layout``: ``"nchw_float"`` (normalised with ``mean``/``std``, torch models), ``"nhwc_uint8"``
  (raw bytes, SSCD ONNX) or ``"hwc_float"`` (GIST, values in [0, 1]);
* ``interpolation``: PIL filter name.

Weights: ``weights_url`` and ``weights_sha256`` (the checksum is checked before a byte is
loaded), or a local ``weights_path`` given as an override.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RULES = ("square", "short_side", "long_side", "none")
LAYOUTS = ("nchw_float", "nhwc_uint8", "hwc_float")
_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model and its preprocessing.

    Attributes:
        name: registry name.
        dim: descriptor dimension d.
        input_size: (h, w) for ``resize="square"``.
        resize: one of :data:`RESIZE_RULES`.
        short_side: target of the short side for ``resize="short_side"``.
        max_long_side: optional cap of the long side under ``short_side`` (memory safety).
        long_side: target of the long side for ``resize="long_side"``.
        mean, std: per-channel normalisation (``nchw_float``).
        interpolation: ``bilinear``, ``bicubic``, ...
        layout: one of :data:`LAYOUTS`.
        grayscale: convert to grayscale (3 identical channels) before anything else.
        weights: ``"random"``, ``"url"``, ``"path"``, ``"timm"`` (timm's hub) or ``"bundled"``.
        weights_url, weights_sha256, weights_path: where the weights come from and their checksum.
        metric: how descriptors compare: ``"l2"`` (L2-normalised, any of L2 / IP), ``"hamming"``.
        paper: the reference (arXiv id or venue).
        extra: model-specific settings (backbone name, GeM p, ...), JSON-able.
    """

    name: str
    dim: int
    input_size: tuple[int, int] = (224, 224)
    resize: str = "square"
    short_side: int = 288
    max_long_side: int | None = None
    long_side: int = 512
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    layout: str = "nchw_float"
    grayscale: bool = False
    weights: str = "random"
    weights_url: str | None = None
    weights_sha256: str | None = None
    weights_path: str | None = None
    metric: str = "l2"
    paper: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize must be one of {RESIZE_RULES}, not {self.resize!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")
        if self.interpolation not in _FILTERS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(_FILTERS)}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def with_overrides(self, **overrides) -> "ModelConfig":
        """A copy with some fields replaced; unknown keys go into ``extra`` only if already there."""
        known = {k: v for k, v in overrides.items() if k in self.__dataclass_fields__}
        extra_keys = {k: v for k, v in overrides.items() if k not in self.__dataclass_fields__}
        bad = [k for k in extra_keys if k not in self.extra]
        if bad:
            raise TypeError(f"model {self.name!r} has no setting {bad[0]!r}; settings: "
                            f"{sorted(set(self.__dataclass_fields__) | set(self.extra))}")
        if extra_keys:
            known["extra"] = {**self.extra, **extra_keys}
        if "input_size" in known and isinstance(known["input_size"], int):
            known["input_size"] = (known["input_size"], known["input_size"])
        return replace(self, **known)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def fingerprint(self) -> str:
        """A short hash of everything that changes the descriptors (not where weights live)."""
        d = self.to_dict()
        d.pop("paper", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Preprocess:
    """PIL image -> model input array, derived from a :class:`ModelConfig` only.

    Picklable (DataLoader workers receive it). Returns ``float32 (3, h, w)`` for
    ``nchw_float``, ``uint8 (h, w, 3)`` for ``nhwc_uint8`` and ``float32 (h, w, 3)`` in [0, 1]
    for ``hwc_float``.
    """

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self._mean = np.asarray(cfg.mean, np.float32)[:, None, None]
        self._std = np.asarray(cfg.std, np.float32)[:, None, None]

    def output_size(self, w: int, h: int) -> tuple[int, int]:
        """(w, h) after the resize rule, for an input of (w, h)."""
        c = self.cfg
        if c.resize == "square":
            return c.input_size[1], c.input_size[0]
        if c.resize == "none":
            return w, h
        if c.resize == "long_side":
            s = c.long_side / max(w, h)
            return max(1, round(w * s)), max(1, round(h * s))
        s = c.short_side / min(w, h)
        if c.max_long_side:
            s = min(s, c.max_long_side / max(w, h))
        return max(1, round(w * s)), max(1, round(h * s))

    def __call__(self, img) -> np.ndarray:
        c = self.cfg
        if c.grayscale:
            img = img.convert("L").convert("RGB")
        elif img.mode != "RGB":
            img = img.convert("RGB")
        size = self.output_size(*img.size)
        if size != img.size:
            img = img.resize(size, resample=_FILTERS[c.interpolation])
        a = np.asarray(img, dtype=np.uint8)
        if c.layout == "nhwc_uint8":
            return np.ascontiguousarray(a)
        if c.layout == "hwc_float":
            return a.astype(np.float32) / 255.0
        x = a.transpose(2, 0, 1).astype(np.float32) / 255.0
        return (x - self._mean) / self._std
