"""Post-processing with a background (training) set: the winners' tricks as pure functions.

Every function takes arrays and returns new arrays (inputs are never modified); fitted state is a
small frozen dataclass. Vocabulary: ``xq`` (nq, d) queries, ``xb`` (nb, d) references, ``xt``
(nt, d) training ("background", "negative") descriptors, all L2-normalised unless said otherwise.
Neighbours in ``xt`` are found by inner product with :func:`imsim_lab.search.knn` (``backend``).
Formulas: ``docs/methods.md``, "Background-set post-processing, side by side" (and each method's section there).

=====================  ======================================================  ====================
function               formula (t_k = k-th neighbour of q in xt)                defaults (paper)
=====================  ======================================================  ====================
score_norm_bias        b(q) = f * q.t_n ("min") or f * mean_{k<=n} q.t_k       ISC f=2, n=10, min;
                       (``avg``); s'(q, r) = q.r - b(q)                         SSCD f=1, n=3, avg
dba + nes              t' = norm(sum_{j in kNN(t)} (t.t_j)^a t_j);             k=10, a=3;
                       x <- norm(x - beta * mean_{k<=K} t'_k)                  beta=0.35, K=10, 1 it.
stretch                q' = c * mean_{k<=n}(q.t_k) * q                          c=2.5, n=5
ssquare_shift          q' = q + a sqrt(mean_{k<=3} cos(q,t_k)) *                a=1.8, K=100, top 3
                            norm(mean_{k<=K} (q-t_k)/|q-t_k|)
fit_pca (whitening)    y = diag(lambda^p) V^T (x - mu), p = eigen_power         p = -0.5 (PCAW)
=====================  ======================================================  ====================

Score normalisation changes the scores but never the ranking inside one query (b depends on q
only). Taught in ``notebooks/02_background_set``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..search import knn

#: the variants of score normalisation (``docs/methods.md``, "Background-set post-processing")
SCORE_NORM_PRESETS = {
    "isc2021": dict(factor=2.0, n=10, mode="min"),   # isc2021 baseline (MultiGrain, HOW)
    "d2lv": dict(factor=2.0, n=10, mode="avg"),      # D2LV, matching track 1st
    "sscd": dict(factor=1.0, n=3, mode="avg"),       # SSCD disc_eval.py, spec 1.0[0,2]
}


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm. Shapes: (n, d) -> (n, d) float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def _topk_ip(x: np.ndarray, xt: np.ndarray, k: int, backend: str) -> tuple[np.ndarray, np.ndarray]:
    if k > len(xt):
        raise ValueError(f"{k} neighbours asked for, but the training set has {len(xt)} vectors")
    return knn(np.asarray(x, np.float32), np.asarray(xt, np.float32), k, "ip", backend)


# ------------------------------------------------------------------------------------------------
# PCA / PCA whitening


@dataclass(frozen=True, eq=False)
class PCA:
    """A fitted PCA. Shapes: ``mean`` (d,), ``components`` (d_out, d) (rows = eigenvectors,
    eigenvalue descending, already scaled by ``eigenvalues ** eigen_power``), ``eigenvalues`` (d_out,)."""

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    eigen_power: float

    @property
    def d_out(self) -> int:
        return len(self.components)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """y = components @ (x - mean). Shapes: (n, d) -> (n, d_out) float32."""
        return ((np.asarray(x, np.float64) - self.mean) @ self.components.T).astype(np.float32)


def fit_pca(xt: np.ndarray, d_out: int, eigen_power: float = 0.0, epsilon: float = 0.0,
            faiss_compatible: bool = True) -> PCA:
    """Fit a PCA on ``xt`` with the semantics of faiss ``PCAMatrix(d, d_out, eigen_power)``.

    Args:
        xt: (nt, d) training vectors.
        d_out: output dimension (<= d).
        eigen_power: 0 = plain PCA, -0.5 = whitening ("PCAW", SSCD and S-square).
        epsilon: added to the eigenvalues before the power (faiss ``PCAMatrix.epsilon``).
        faiss_compatible: faiss takes the eigenvalues of the scatter matrix
            sum (x - mu)(x - mu)^T, i.e. nt times those of the covariance, so its whitened
            vectors have variance 1/nt; True reproduces that (a global scale, irrelevant after an
            L2 normalisation), False uses the covariance (whitened variance 1).

    Returns:
        :class:`PCA`; component i is multiplied by (lambda_i + epsilon) ** eigen_power.
    """
    x = np.asarray(xt, np.float64)
    n, d = x.shape
    if d_out > d:
        raise ValueError(f"d_out={d_out} is larger than the input dimension {d}")
    if n < 2:
        raise ValueError("PCA needs at least 2 training vectors")
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / (1.0 if faiss_compatible else n)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(-w, kind="stable")[:d_out]
    w, v = np.maximum(w[order], 0.0), v[:, order]
    comp = v.T.copy()
    if eigen_power != 0:
        with np.errstate(divide="ignore"):
            scale = (w + epsilon) ** eigen_power
        comp *= np.where(np.isfinite(scale), scale, 0.0)[:, None]
    return PCA(mean, comp, w, float(eigen_power))


# ------------------------------------------------------------------------------------------------
# score normalisation (ISC baseline, D2LV, SSCD)


def score_norm_bias(xq: np.ndarray, xt: np.ndarray, factor: float = 2.0, n: int = 10, mode: str = "min",
                    backend: str = "auto") -> np.ndarray:
    """Per-query bias of score normalisation (``docs/PROTOCOLS.md`` section 6; ``docs/methods.md``).

    b(q) = factor * q.t_n (``mode="min"``: the n-th largest similarity, isc2021 baseline) or
    factor * mean_{k<=n} q.t_k (``mode="avg"``: D2LV; SSCD with factor 1, n 3).

    Returns:
        (nq,) float32 biases; the normalised score is s'(q, r) = q.r - b(q).
    """
    if mode not in ("min", "avg"):
        raise ValueError("mode must be 'min' or 'avg'")
    D, _ = _topk_ip(xq, xt, n, backend)
    ref = D[:, n - 1] if mode == "min" else D.mean(axis=1)
    return (factor * ref).astype(np.float32)


def append_bias(xq: np.ndarray, xb: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The trick of isc2021 and SSCD: q~ = [q, -b(q)], r~ = [r, 1], so that q~.r~ = q.r - b(q)
    and one inner-product search yields the normalised scores. Shapes: (nq, d+1), (nb, d+1)."""
    xq = np.asarray(xq, np.float32)
    xb = np.asarray(xb, np.float32)
    return (np.hstack([xq, -np.asarray(bias, np.float32)[:, None]]),
            np.hstack([xb, np.ones((len(xb), 1), np.float32)]))


def normalize_scores(scores: np.ndarray, query_index: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """s'(q, r) = s(q, r) - b(q) for flat predictions (``query_index`` (m,) into ``bias`` (nq,))."""
    return np.asarray(scores, np.float64) - np.asarray(bias, np.float64)[np.asarray(query_index)]


# ------------------------------------------------------------------------------------------------
# lyakaap: DBA on the negative set + negative embedding subtraction


def dba(xt: np.ndarray, k: int = 10, alpha: float = 3.0, backend: str = "auto") -> np.ndarray:
    """Database-side augmentation of the negative set (lyakaap, Yokoo, arXiv 2112.04323; ``docs/methods.md``, "lyakaap").

    t'_i = normalise( sum_{j in kNN(t_i)} (t_i.t_j)^alpha t_j ), neighbours by inner product,
    t_i itself among them. Shapes: (nt, d) -> (nt, d).
    """
    xt = np.asarray(xt, np.float32)
    D, I = _topk_ip(xt, xt, k, backend)
    w = np.power(D.astype(np.float64), alpha)
    out = np.einsum("nk,nkd->nd", w, xt[I].astype(np.float64))
    return l2_normalize(out)


def nes(x: np.ndarray, xt_neg: np.ndarray, beta: float = 0.35, k: int = 10, n_iter: int = 1,
        backend: str = "auto") -> np.ndarray:
    """Negative embedding subtraction (Yokoo, arXiv 2112.04323; ``docs/methods.md``, "lyakaap"), for queries or references.

    Repeat ``n_iter`` times: x <- x - beta * mean_{j in kNN_{T'}(x)} t'_j ; x <- x / |x|.
    ``xt_neg`` is T' (usually :func:`dba` of the training descriptors). Shapes: (n, d) -> (n, d).
    """
    x = np.asarray(x, np.float32)
    xt_neg = np.asarray(xt_neg, np.float32)
    for _ in range(n_iter):
        _, I = _topk_ip(x, xt_neg, k, backend)
        x = l2_normalize(x - beta * xt_neg[I].mean(axis=1))
    return x


# ------------------------------------------------------------------------------------------------
# Bag of Tricks: descriptor stretching; S-square: query shift


def stretch(xq: np.ndarray, xt: np.ndarray, c: float = 2.5, n: int = 5, backend: str = "auto") -> np.ndarray:
    """Descriptor stretching of Bag of Tricks (Wang et al., arXiv 2111.08004): q' = c * mean_{k<=n}(q.t_k) * q.

    Queries alike many distractors get longer vectors, hence larger L2 distances to every
    reference. References are left unchanged. Shapes: (nq, d) -> (nq, d).
    """
    D, _ = _topk_ip(xq, xt, n, backend)
    s = D.astype(np.float64).mean(axis=1)
    return (c * s[:, None] * np.asarray(xq, np.float64)).astype(np.float32)


def ssquare_shift(xq: np.ndarray, xt: np.ndarray, a: float = 1.8, K: int = 100, top: int = 3,
                  backend: str = "auto") -> np.ndarray:
    """S-square's train-set query shift (Papadakis & Addicam, arXiv 2112.03415).

    With t_1..t_K the K nearest training vectors of q (unit vectors), c_k = 1 - |q - t_k|^2 / 2,
    u_k = (q - t_k) / |q - t_k|, d = normalise(mean_k u_k):
    q' = q + a * sqrt(mean_{k<=top} c_k) * d   (no renormalisation; references unchanged).
    A negative mean cosine is clipped to 0 (no shift). Shapes: (nq, d) -> (nq, d).
    """
    xq = np.asarray(xq, np.float32)
    xt = np.asarray(xt, np.float32)
    _, I = _topk_ip(xq, xt, K, backend)
    q = xq.astype(np.float64)[:, None, :]
    diff = q - xt[I].astype(np.float64)                       # (nq, K, d)
    dist = np.linalg.norm(diff, axis=2)                       # (nq, K)
    cos = 1.0 - 0.5 * dist ** 2
    u = diff / np.maximum(dist, 1e-12)[:, :, None]
    dvec = u.mean(axis=1)
    dvec /= np.maximum(np.linalg.norm(dvec, axis=1, keepdims=True), 1e-12)
    mag = a * np.sqrt(np.clip(cos[:, :top].mean(axis=1), 0.0, None))
    return (xq + mag[:, None] * dvec).astype(np.float32)
