"""Visual words: local descriptors quantised to a k-means vocabulary, scored by tf-idf.

The bag-of-words alternative to imgFp's raw-descriptor search (Sivic & Zisserman, "Video Google",
ICCV 2003; Philbin et al., CVPR 2007 for the large vocabularies and spatial re-ranking): each
keypoint is replaced by the id of its nearest centroid (one int32 instead of 128 bytes), an image
by its sparse tf-idf vector, and a query is scored against every reference by one sparse product
(the inverted file). The same keypoints feed both, so a comparison with
:mod:`imsim_lab.features.keypoint_search` isolates the encoding.

    voc = train_vocabulary(fb.descriptors, k=1024, meta=fb.meta)
    inv = InvertedFile.build(voc, fb)          # references
    S, J = inv.search(voc.assign_set(fq), n=10)

``tf(w, i)`` = count of word w in image i, ``idf(w) = log(N / df(w))`` over the N references, rows
L2-normalised; the score of (q, r) is the cosine of their vectors, in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_npz
from ..errors import FormatError, ImsimError


def _model_of(meta: dict) -> dict:
    s = (meta or {}).get("settings", {})
    return {"model": s.get("model", ""), "model_name": s.get("model_name", "")}


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """k centroids (k, d) float32 and the local-feature model they were trained on (``features``:
    its fingerprint and name from the store's ``meta``)."""

    centroids: np.ndarray
    features: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def k(self) -> int:
        return len(self.centroids)

    def check(self, meta: dict, where: str = "local features") -> None:
        """Refuse features of another model (one line naming both)."""
        got = _model_of(meta)
        if self.features.get("model") and got["model"] and got["model"] != self.features["model"]:
            raise ImsimError(f"{where}: features of model {got['model_name']!r} ({got['model']}) cannot be "
                             f"encoded with a vocabulary trained on {self.features.get('model_name')!r} "
                             f"({self.features['model']})")

    def assign(self, x: np.ndarray, block: int = 1 << 15) -> np.ndarray:
        """(m,) int32 nearest-centroid id of each (m, d) descriptor (exact, faiss)."""
        import faiss

        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.centroids.shape[1]:
            raise ImsimError(f"descriptors of shape {x.shape} do not fit a vocabulary of dimension "
                             f"{self.centroids.shape[1]}")
        index = faiss.IndexFlatL2(self.centroids.shape[1])
        index.add(self.centroids)
        out = np.empty(len(x), np.int32)
        for a in range(0, len(x), block):
            out[a:a + block] = index.search(np.ascontiguousarray(x[a:a + block], np.float32), 1)[1][:, 0]
        return out

    def assign_set(self, fs) -> "WordSet":
        """The words of a :class:`~imsim_lab.features.localstore.LocalFeatureSet` (model checked)."""
        self.check(fs.meta)
        return WordSet(np.asarray(fs.ids), np.asarray(fs.offsets, np.int64), self.assign(fs.descriptors))

    def save(self, path: str | Path) -> None:
        atomic_write_npz(Path(path), centroids=self.centroids,
                         meta=np.array(json.dumps({"features": self.features, "seed": self.seed})))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        try:
            with np.load(path, allow_pickle=False) as z:
                c, meta = z["centroids"].astype(np.float32), json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError) as e:
            raise FormatError(path, f"not a vocabulary file ({e})") from None
        return cls(c, meta.get("features", {}), int(meta.get("seed", 0)))


@dataclass(frozen=True, eq=False)
class WordSet:
    """The visual words of one split. Shapes: ids (n,), offsets (n + 1,), words (m,) int32."""

    ids: np.ndarray
    offsets: np.ndarray
    words: np.ndarray

    def counts_matrix(self, k: int):
        """(n, k) scipy CSR term counts."""
        from scipy import sparse

        n = len(self.offsets) - 1
        rows = np.repeat(np.arange(n), np.diff(self.offsets))
        m = sparse.csr_matrix((np.ones(len(self.words), np.float32), (rows, self.words)), shape=(n, k))
        m.sum_duplicates()
        return m


def train_vocabulary(xt: np.ndarray, k: int, niter: int = 20, max_train: int = 200_000, seed: int = 0,
                     meta: dict | None = None, gpu: bool = False) -> Vocabulary:
    """k-means (faiss) on at most ``max_train`` seeded rows of ``xt`` (m, d).

    ``meta``: the store's meta of the features, kept so other features are refused later.
    """
    import faiss

    x = np.asarray(xt)
    if len(x) < k:
        raise ImsimError(f"a vocabulary of {k} words needs at least {k} training descriptors, got {len(x)}")
    rng = np.random.default_rng(seed)
    if len(x) > max_train:
        x = x[np.sort(rng.choice(len(x), max_train, replace=False))]
    x = np.ascontiguousarray(x, np.float32)
    km = faiss.Kmeans(x.shape[1], int(k), niter=niter, seed=seed, gpu=gpu, max_points_per_centroid=1 << 20)
    km.train(x)
    return Vocabulary(np.ascontiguousarray(km.centroids, np.float32), _model_of(meta or {}), seed)


@dataclass(frozen=True, eq=False)
class InvertedFile:
    """The references' tf-idf vectors (CSR (n, k), rows L2-normalised), their ``idf`` (k,) and ids.

    ``nbytes`` is what the index holds: the CSR data, column indices and row pointers.
    """

    ids: np.ndarray
    matrix: object
    idf: np.ndarray
    k: int

    @classmethod
    def build(cls, words: WordSet, k: int) -> "InvertedFile":
        c = words.counts_matrix(k)
        n = max(1, c.shape[0])
        df = np.bincount(c.indices, minlength=k)
        idf = np.log(n / np.maximum(df, 1)).astype(np.float32)
        return cls(np.asarray(words.ids), _tfidf(c, idf), idf, k)

    @property
    def nbytes(self) -> int:
        m = self.matrix
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)

    def encode(self, words: WordSet):
        """(nq, k) CSR tf-idf vectors of query words (this file's idf)."""
        return _tfidf(words.counts_matrix(self.k), self.idf)

    def scores(self, words: WordSet):
        """(nq, n) CSR cosine similarities of every query to every reference (sparse product)."""
        return (self.encode(words) @ self.matrix.T).tocsr()

    def search(self, words: WordSet, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best references per query: S (nq, n) float32 cosine (descending), J (nq, n)
        int64 reference rows (-1 = fewer than n references share a word with the query)."""
        s = self.scores(words)
        nq = s.shape[0]
        S, J = np.zeros((nq, n), np.float32), np.full((nq, n), -1, np.int64)
        for i in range(nq):
            a, b = s.indptr[i], s.indptr[i + 1]
            if a == b:
                continue
            v, c = s.data[a:b], s.indices[a:b]
            o = np.lexsort((c, -v))[:n]
            S[i, :len(o)], J[i, :len(o)] = v[o], c[o]
        return S, J


def _tfidf(counts, idf):
    from scipy import sparse

    m = counts.multiply(idf[None, :]).tocsr().astype(np.float32)
    norm = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    m = sparse.diags(1.0 / np.where(norm > 0, norm, 1.0)).astype(np.float32) @ m
    m.eliminate_zeros()
    return m.tocsr()


def word_matches(wq: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tentative matches of two images by shared visual words: for each word present in both, the
    first query keypoint of that word paired with the first reference keypoint of it (one match per
    shared word, so bursts of a repeated word do not dominate).

    Shapes: wq (kq,), wb (kb,) words -> (iq, ib) (t,) int64 keypoint rows.
    """
    uq, iq = np.unique(np.asarray(wq), return_index=True)
    ub, ib = np.unique(np.asarray(wb), return_index=True)
    _, a, b = np.intersect1d(uq, ub, assume_unique=True, return_indices=True)
    return iq[a].astype(np.int64), ib[b].astype(np.int64)
