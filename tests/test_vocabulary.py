"""Visual words: k-means vocabulary, tf-idf inverted file against a dense brute force, refusals."""

import numpy as np
import pytest

from imsim_lab.errors import FormatError, ImsimError
from imsim_lab.features.vocabulary import InvertedFile, Vocabulary, WordSet, train_vocabulary, word_matches


def words(n, k, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 20, n)
    return WordSet(np.array([f"I{i}" for i in range(n)]), np.r_[0, np.cumsum(counts)],
                   rng.integers(0, k, counts.sum()).astype(np.int32))


def dense_tfidf(ws, k, idf):
    c = np.zeros((len(ws.ids), k))
    for i in range(len(ws.ids)):
        for w in ws.words[ws.offsets[i]:ws.offsets[i + 1]]:
            c[i, w] += 1
    v = c * idf
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n > 0, n, 1)


def test_tfidf_equals_dense_brute_force():
    k = 12
    wb, wq = words(15, k, 0), words(7, k, 1)
    inv = InvertedFile.build(wb, k)
    cb = np.zeros((15, k))
    for i in range(15):
        np.add.at(cb[i], wb.words[wb.offsets[i]:wb.offsets[i + 1]], 1)
    idf = np.log(15 / np.maximum((cb > 0).sum(0), 1))
    np.testing.assert_allclose(inv.idf, idf, rtol=1e-6)
    want = dense_tfidf(wq, k, idf) @ dense_tfidf(wb, k, idf).T
    np.testing.assert_allclose(inv.scores(wq).toarray(), want, atol=1e-5)
    S, J = inv.search(wq, 3)
    for q in range(7):
        o = np.lexsort((np.arange(15), -want[q]))
        nz = [j for j in o if want[q, j] > 1e-7][:3]
        assert J[q, :len(nz)].tolist() == nz
    assert inv.nbytes > 0


def test_vocabulary_assign_save_load_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, (8, 16)).astype(np.float32)
    x = np.repeat(centers, 50, 0) + rng.normal(0, 0.1, (400, 16)).astype(np.float32)
    meta = {"settings": {"model": "abc", "model_name": "rootsift"}}
    voc = train_vocabulary(x, 8, niter=10, meta=meta)
    a = voc.assign(x)
    d = ((x[:, None] - voc.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(a, d.argmin(1))  # nearest centroid, brute force
    assert voc.k == 8 and len(np.unique(a)) >= 6  # k-means may merge two blobs, never collapse
    voc.save(tmp_path / "v.npz")
    again = Vocabulary.load(tmp_path / "v.npz")
    np.testing.assert_array_equal(again.centroids, voc.centroids)
    with pytest.raises(ImsimError, match="vocabulary trained on 'rootsift'"):
        again.check({"settings": {"model": "zzz", "model_name": "sift"}}, "features")
    with pytest.raises(ImsimError, match="do not fit"):
        voc.assign(np.zeros((3, 8)))
    with pytest.raises(ImsimError, match="at least 100"):
        train_vocabulary(x[:10], 100)
    (tmp_path / "bad.npz").write_bytes(b"no")
    with pytest.raises(FormatError, match="bad.npz"):
        Vocabulary.load(tmp_path / "bad.npz")


def test_word_matches():
    iq, ib = word_matches(np.array([5, 3, 5, 9]), np.array([9, 9, 5, 7]))
    assert sorted(zip(iq.tolist(), ib.tolist())) == [(0, 2), (3, 0)]
