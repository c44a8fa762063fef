"""Local features: keypoints with their geometry and descriptors, from models in a registry.

A local-feature model has a frozen :class:`LocalConfig` (resize rule, grayscale, keypoint cap,
descriptor dtype, detector settings) from which its :attr:`~LocalModel.preprocess` derives, and
:meth:`~LocalModel.embed` / :meth:`~LocalModel.embed_stream`, which turn a batch of preprocessed
images into one :class:`LocalFeatures` per image. The interface mirrors
:class:`~imsim_lab.features.models.base.DescriptorModel`, so the extraction machinery of
:mod:`imsim_lab.features.extract` (DataLoader or CPU streams) runs it unchanged; see
:func:`imsim_lab.features.localstore.extract_local`.

    model = create_local_model("rootsift", max_keypoints=1000)
    f = model.embed([model.preprocess(img)])[0]
    f.geometry, f.descriptors          # (k, 4) float32 x, y, size, angle; (k, 128) uint8

The registered models follow imgFp's local branch (Sun et al., arXiv 2112.02373; docs/methods.md; sun-xl/ISC2021
``local_fea/source_code/src/siftfp_extract.cpp``): the short side is brought down to 300 pixels
(never up) and RootSIFT descriptors are stored quantised to bytes, ``round(255 * sqrt(|d| / sum|d|))``.
Descriptor values are on the 0..255 scale in both storage dtypes (``uint8`` rounds them).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np

from ..registry import Registry
from ..system import usable_cores

LOCAL_DTYPES = ("uint8", "float16")
#: PIL resampling filters by name ("area" is PIL's box filter); the descriptor models' ``config.py``
#: has the same table, but importing it would load torch
FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "area": 4, "hamming": 5}
_SIFT = "Lowe, Distinctive Image Features from Scale-Invariant Keypoints, IJCV 2004"
_ROOT = "Arandjelovic & Zisserman, Three things everyone should know to improve object retrieval, CVPR 2012"


@dataclass(frozen=True)
class LocalConfig:
    """Everything that decides the local features of an image.

    Attributes:
        name: registry name.
        dim: descriptor dimension d.
        short_side: the short side is downscaled to this many pixels when longer (never
            upscaled); ``None`` keeps the image size.
        interpolation: PIL filter of the downscale (``bilinear``, ``area`` = ``box``, ...).
        grayscale: the detector sees a (h, w) luma image (else (h, w, 3) RGB).
        max_keypoints: keep the strongest keypoints up to this many; 0 = no cap (imgFp).
        dtype: descriptor storage, ``uint8`` (rounded and clipped to 0..255) or ``float16``.
        root: RootSIFT: L1-normalise, square root, times 255.
        paper: the reference.
        extra: detector settings (OpenCV SIFT: ``n_octave_layers``, ``contrast_threshold``,
            ``edge_threshold``, ``sigma``), JSON-able.
    """

    name: str
    dim: int = 128
    short_side: int | None = 300
    interpolation: str = "bilinear"
    grayscale: bool = True
    max_keypoints: int = 0
    dtype: str = "uint8"
    root: bool = False
    paper: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dtype not in LOCAL_DTYPES:
            raise ValueError(f"local descriptor dtype must be one of {LOCAL_DTYPES}, not {self.dtype!r}")
        if self.interpolation not in FILTERS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(FILTERS)}")
        if self.max_keypoints < 0 or (self.short_side is not None and self.short_side < 1):
            raise ValueError("max_keypoints must be >= 0 and short_side >= 1 (or None)")

    def with_overrides(self, **overrides) -> "LocalConfig":
        """A copy with some fields replaced; other keys must be detector settings of :attr:`extra`."""
        known = {k: v for k, v in overrides.items() if k in self.__dataclass_fields__}
        rest = {k: v for k, v in overrides.items() if k not in self.__dataclass_fields__}
        bad = [k for k in rest if k not in self.extra]
        if bad:
            raise TypeError(f"local model {self.name!r} has no setting {bad[0]!r}; settings: "
                            f"{sorted(set(self.__dataclass_fields__) | set(self.extra))}")
        if rest:
            known["extra"] = {**self.extra, **rest}
        return replace(self, **known)

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """A short hash of everything that changes the features (the paper does not)."""
        d = self.to_dict()
        d.pop("paper", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LocalPreprocess:
    """PIL image -> ``uint8`` (h, w) gray array (or (h, w, 3) RGB), from a :class:`LocalConfig` only.

    Picklable (DataLoader workers receive it). Grayscale conversion comes first (PIL's ITU-R
    601-2 luma), then the downscale, so only one channel is resampled.
    """

    def __init__(self, cfg: LocalConfig):
        self.cfg = cfg
        #: read by :class:`~imsim_lab.features.dataset.ImageFiles`: decode JPEGs straight to luma
        self.decode_mode = "L" if cfg.grayscale else "RGB"

    def output_size(self, w: int, h: int) -> tuple[int, int]:
        """(w, h) after the resize rule, for an input of (w, h)."""
        s = self.cfg.short_side
        if s is None or min(w, h) <= s:
            return w, h
        f = s / min(w, h)
        return max(1, round(w * f)), max(1, round(h * f))

    def __call__(self, img) -> np.ndarray:
        c = self.cfg
        mode = "L" if c.grayscale else "RGB"
        if img.mode != mode:
            img = img.convert(mode)
        size = self.output_size(*img.size)
        if size != img.size:
            img = img.resize(size, resample=FILTERS[c.interpolation])
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


@dataclass(frozen=True, eq=False)
class LocalFeatures:
    """The local features of one image.

    Shapes: ``geometry`` (k, 4) float32 columns x, y (pixels of the preprocessed image), size
    (diameter, pixels), angle (degrees); ``descriptors`` (k, d) uint8 or float16; ``shape`` the
    (h, w) of the preprocessed image.
    """

    geometry: np.ndarray
    descriptors: np.ndarray
    shape: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.geometry)


def root_sift(d: np.ndarray) -> np.ndarray:
    """RootSIFT on the 0..255 scale: ``255 * sqrt(|d| / sum|d|)`` per row (rows of zeros stay 0).

    Args:
        d: (k, 128) SIFT descriptors.

    Returns:
        (k, 128) float32; each non-zero row has L2 norm 255 (Arandjelovic & Zisserman, CVPR 2012,
        section 3.1; the quantisation of imgFp's ``siftfp_extract.cpp`` is ``round`` of this).
    """
    d = np.abs(np.asarray(d, np.float32))
    s = d.sum(axis=1, keepdims=True)
    return 255.0 * np.sqrt(d / np.where(s > 0, s, 1.0))


def store_descriptors(d: np.ndarray, dtype: str) -> np.ndarray:
    """0..255-scale descriptors in their storage dtype (``uint8``: rounded, clipped)."""
    if dtype == "uint8":
        return np.clip(np.rint(d), 0, 255).astype(np.uint8)
    return np.asarray(d, np.float16)


def canonical_order(geometry: np.ndarray, response: np.ndarray) -> np.ndarray:
    """An order of keypoints that does not depend on how many threads the detector used:
    strongest first, then by y, x, size, angle."""
    g = geometry
    return np.lexsort((g[:, 3], g[:, 2], g[:, 0], g[:, 1], -response))


class LocalModel:
    """Base class: subclasses implement :meth:`detect` (one preprocessed image).

    ``device`` is always ``"cpu"``; :meth:`cpu_streams` is the number of cores, since the
    detectors release the GIL and run fastest as one single-threaded call per core.
    """

    device = "cpu"

    def __init__(self, config: LocalConfig):
        self.config = config

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def preprocess(self) -> LocalPreprocess:
        """PIL image -> uint8 array; derived from :attr:`config` only."""
        return LocalPreprocess(self.config)

    def detect(self, image: np.ndarray) -> LocalFeatures:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, batch) -> list[LocalFeatures]:
        """The features of each image of a batch (a stacked array (b, h, w) or a list of arrays)."""
        return [self.detect(np.asarray(a, dtype=np.uint8)) for a in _items(batch)]

    def cpu_streams(self) -> int:
        return usable_cores()

    def embed_stream(self, batch) -> list[LocalFeatures]:
        """:meth:`embed`, safe to call from several threads at once (the extraction sets OpenCV
        to one thread per call while streams run)."""
        return self.embed(batch)


def _items(batch) -> Sequence:
    if isinstance(batch, (list, tuple)):
        return batch
    a = np.asarray(batch)  # a stacked torch tensor (DataLoader collate) or array
    return list(a)


class SiftModel(LocalModel):
    """OpenCV SIFT (or RootSIFT with ``config.root``) with one detector per thread."""

    def __init__(self, config: LocalConfig):
        if not config.grayscale or config.dim != 128:
            raise ValueError("SIFT works on grayscale images and gives 128-d descriptors")
        super().__init__(config)
        self._local = threading.local()

    def __getstate__(self):
        return {"config": self.config}

    def __setstate__(self, state):
        self.__init__(state["config"])

    def _detector(self):
        det = getattr(self._local, "sift", None)
        if det is None:
            import cv2

            e = self.config.extra
            det = cv2.SIFT_create(self.config.max_keypoints, int(e["n_octave_layers"]),
                                  float(e["contrast_threshold"]), float(e["edge_threshold"]), float(e["sigma"]))
            self._local.sift = det
        return det

    def detect(self, image: np.ndarray) -> LocalFeatures:
        """SIFT keypoints and descriptors of one (h, w) uint8 image, in :func:`canonical_order`,
        at most ``max_keypoints`` of them (the strongest)."""
        kps, d = self._detector().detectAndCompute(image, None)
        shape = (int(image.shape[0]), int(image.shape[1]))
        if not kps:
            return LocalFeatures(np.zeros((0, 4), np.float32), np.zeros((0, self.dim), self.config.dtype), shape)
        geometry = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float32)
        order = canonical_order(geometry, np.array([k.response for k in kps], np.float32))
        if self.config.max_keypoints:  # OpenCV keeps the keypoints tied at its cut: make the cap exact
            order = order[:self.config.max_keypoints]
        d = d[order]
        if self.config.root:
            d = root_sift(d)
        return LocalFeatures(geometry[order], store_descriptors(d, self.config.dtype), shape)


LOCAL_MODELS: Registry = Registry("local feature model")
_SIFT_SETTINGS = {"n_octave_layers": 3, "contrast_threshold": 0.04, "edge_threshold": 10.0, "sigma": 1.6}


@LOCAL_MODELS.register("sift")
def sift(**overrides) -> SiftModel:
    """OpenCV SIFT at short side 300 (downscale only), no keypoint cap, bytes (lossless: OpenCV's
    SIFT values are integers in 0..255)."""
    cfg = LocalConfig("sift", paper=_SIFT, extra=dict(_SIFT_SETTINGS))
    return SiftModel(cfg.with_overrides(**overrides))


@LOCAL_MODELS.register("rootsift")
def rootsift(**overrides) -> SiftModel:
    """RootSIFT as imgFp stores it: short side 300, no cap, ``round(255 sqrt(|d| / sum|d|))`` bytes."""
    cfg = LocalConfig("rootsift", root=True, paper=f"{_SIFT}; {_ROOT}", extra=dict(_SIFT_SETTINGS))
    return SiftModel(cfg.with_overrides(**overrides))


def create_local_model(name: str, **overrides) -> LocalModel:
    """Build the registered local-feature model ``name`` with config overrides
    (``max_keypoints=``, ``dtype=``, ``short_side=``, detector settings).

    Raises:
        KeyError: unknown name (lists the known ones). TypeError: unknown setting.
    """
    return LOCAL_MODELS.create(name, **overrides)
