"""Descriptor-track post-processing: from raw descriptors to the vectors that are searched, and
from those vectors to scored pairs.

``prepare(spec, xq, xb, xt, params)`` applies a method's post-processing (:data:`POST` registry over
the pure functions of :mod:`imsim_lab.methods.postprocess`) and returns a :class:`Prepared`: the
vectors to search, the metric (``l2`` for the descriptor track, ``ip`` for score-normalised outputs),
how similarities map to scores, and the vectors for the official descriptor HDF5 (or why not).

:func:`prepared_predictions` is the one place where a prepared method becomes scored pairs: the
search (:func:`imsim_lab.eval.candidates.descriptor_predictions`, which negates L2 distances once)
followed by the method's score scaling. Runs, robustness suites, lessons and the candidate source of
matching methods all call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from . import postprocess as pp
from ..eval.formats import MAX_DESCRIPTOR_DIM
from ..registry import Registry


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


@POST.register("pca_ssquare")
def _pca_ssquare(xq, xb, xt, p, backend) -> Prepared:
    # S-square's inference: PCA whitening fitted on the training descriptors + L2, then the query shift
    k = _n_components(p["dim"], xq.shape[1], len(xt))
    pca = pp.fit_pca(xt, k, eigen_power=p["eigen_power"])
    yq, yb, yt = (pp.l2_normalize(pca.apply(a)) for a in (xq, xb, xt))
    prep = _ssquare(yq, yb, yt, {k2: p[k2] for k2 in ("a", "K", "top")}, backend)
    return replace(prep, notes={**prep.notes, "pca_dim": k, "pca_fit_on": len(xt)})


@POST.register("pca_stretch")
def _pca_stretch(xq, xb, xt, p, backend) -> Prepared:
    # Bag of Tricks: PCA (fitted on the training descriptors) + L2, then the queries stretched
    k = _n_components(p["dim"], xq.shape[1], len(xt))
    pca = pp.fit_pca(xt, k, eigen_power=p["eigen_power"])
    yq, yb, yt = (pp.l2_normalize(pca.apply(a)) for a in (xq, xb, xt))
    prep = _stretch(yq, yb, yt, {"c": p["c"], "n": p["n"]}, backend)
    return replace(prep, notes={**prep.notes, "pca_dim": k, "pca_fit_on": len(xt)})


def prepare(spec, xq, xb, xt, params: dict, backend: str = "auto") -> Prepared:
    """Apply the post-processing of ``spec`` (pure: inputs unchanged)."""
    xq = np.asarray(xq, np.float32)
    xb = np.asarray(xb, np.float32)
    xt = None if xt is None else np.asarray(xt, np.float32)
    if spec.needs_training and (xt is None or len(xt) == 0):
        from ..errors import ImsimError

        raise ImsimError(f"method {spec.name!r} needs training (background) images; the benchmark has none")
    fn: Callable = POST.get(spec.post)
    return fn(xq, xb, xt, params, backend)



def prepared_predictions(prep: Prepared, query_ids, reference_ids, gt=None, protocol: str = "isc2021",
                         knn: int | None = None, max_results: int | None = None, backend: str = "auto"):
    """Scored pairs of a prepared method: the search, then ``score_scale * similarity + score_offset``.

    Args:
        prep: from :func:`prepare`. query_ids: (nq,), reference_ids: (nb,) rows of ``prep.xq``, ``prep.xb``.
        gt, protocol, knn, max_results, backend: as :func:`imsim_lab.eval.candidates.descriptor_predictions`
            (the protocol's global budget unless ``knn`` neighbours per query are asked for).

    Returns:
        :class:`~imsim_lab.eval.formats.Predictions`, sorted by score descending.
    """
    from ..eval.candidates import descriptor_predictions
    from ..eval.formats import DescriptorSubmission, Predictions

    sub = DescriptorSubmission(np.asarray(query_ids, dtype=object), prep.xq, np.asarray(reference_ids, dtype=object),
                               prep.xb)
    preds = descriptor_predictions(sub, gt, protocol, knn=knn, max_results=max_results, metric=prep.metric,
                                   backend=backend)
    if prep.score_scale == 1.0 and prep.score_offset == 0.0:
        return preds
    # an affine map with a positive scale keeps the order: the id codes stay valid
    return Predictions(preds.query_ids, preds.reference_ids, prep.score_scale * preds.scores + prep.score_offset,
                       reference_codes=preds.reference_codes, query_codes=preds.query_codes,
                       query_vocab=preds.query_vocab, pairs_checked_unique=preds.pairs_checked_unique)
