"""Post-processing: each trick on small hand-checked arrays, then properties on random data."""

import numpy as np
import pytest

from imsim_lab.methods import postprocess as pp
from imsim_lab.search import knn_numpy


def unit(*rows):
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def rand_unit(rng, n, d=8):
    return pp.l2_normalize(rng.standard_normal((n, d)))


# ---- hand-checked values -------------------------------------------------------------------


def test_score_norm_bias_min_and_avg_by_hand():
    xq = unit([1, 0])
    xt = np.array([[0.9, 0.0], [0.5, 0.0], [0.1, 0.0], [-1, 0]], np.float32)  # sims 0.9, 0.5, 0.1, -1
    assert pp.score_norm_bias(xq, xt, factor=2, n=3, mode="min")[0] == pytest.approx(0.2)
    assert pp.score_norm_bias(xq, xt, factor=1, n=3, mode="avg")[0] == pytest.approx(0.5)
    assert pp.score_norm_bias(xq, xt, factor=2, n=2, mode="avg")[0] == pytest.approx(1.4)


def test_append_bias_gives_normalised_inner_product():
    xq, xb = unit([1, 0], [0, 1]), unit([1, 1], [1, 0])
    bias = np.array([0.25, 0.5], np.float32)
    q2, b2 = pp.append_bias(xq, xb, bias)
    assert q2.shape == (2, 3) and b2.shape == (2, 3)
    np.testing.assert_allclose(q2 @ b2.T, xq @ xb.T - bias[:, None], atol=1e-6)
    np.testing.assert_allclose(pp.normalize_scores([1.0, 1.0], [0, 1], bias), [0.75, 0.5])


def test_dba_by_hand():
    # three unit vectors at 0, 60 and 180 degrees; k=2: own vector + nearest one
    t = unit([1, 0], [0.5, np.sqrt(3) / 2], [-1, 0])
    out = pp.dba(t, k=2, alpha=3, backend="numpy")
    # t0: 1^3 t0 + 0.5^3 t1 = (1.0625, 0.10825) -> normalised
    e0 = np.array([1 + 0.125 * 0.5, 0.125 * np.sqrt(3) / 2])
    np.testing.assert_allclose(out[0], e0 / np.linalg.norm(e0), atol=1e-6)
    # t2: its 2nd neighbour is t1 (sim -0.5): weight (-0.5)^3 = -0.125 pushes away from t1
    e2 = np.array([-1 - 0.125 * 0.5, -0.125 * np.sqrt(3) / 2])
    np.testing.assert_allclose(out[2], e2 / np.linalg.norm(e2), atol=1e-6)


def test_nes_by_hand():
    x = unit([1, 0])
    neg = unit([0, 1], [0, -1], [1, 0])  # nearest 2 by IP to x: [1,0] (1.0) then a tie at 0
    out = pp.nes(x, neg, beta=0.5, k=1, n_iter=1, backend="numpy")
    # x - 0.5 [1, 0] = [0.5, 0] -> [1, 0]
    np.testing.assert_allclose(out, [[1, 0]], atol=1e-6)
    neg2 = unit([1, 1])
    out2 = pp.nes(x, neg2, beta=0.5, k=1, backend="numpy")
    e = np.array([1, 0]) - 0.5 * np.array([1, 1]) / np.sqrt(2)
    np.testing.assert_allclose(out2[0], e / np.linalg.norm(e), atol=1e-6)
    out3 = pp.nes(x, neg2, beta=0.5, k=1, n_iter=2, backend="numpy")
    e3 = out2[0] - 0.5 * np.array([1, 1]) / np.sqrt(2)
    np.testing.assert_allclose(out3[0], e3 / np.linalg.norm(e3), atol=1e-6)


def test_stretch_by_hand():
    xq = unit([1, 0])
    xt = np.array([[0.8, 0], [0.4, 0], [0.0, 1], [-0.5, 0]], np.float32)  # sims 0.8 0.4 0 -0.5
    out = pp.stretch(xq, xt, c=2.5, n=2, backend="numpy")
    np.testing.assert_allclose(out, [[2.5 * 0.6, 0]], atol=1e-6)
    assert np.linalg.norm(pp.stretch(xq, xt, c=2.0, n=3, backend="numpy")) == pytest.approx(2 * 0.4)


def test_ssquare_shift_by_hand():
    xq = unit([1, 0])
    t1, t2 = unit([0, 1])[0], unit([0.6, 0.8])[0]  # cosines 0 and 0.6
    xt = np.stack([t1, t2])
    out = pp.ssquare_shift(xq, xt, a=1.8, K=2, top=2, backend="numpy")
    u1 = (xq[0] - t1) / np.linalg.norm(xq[0] - t1)
    u2 = (xq[0] - t2) / np.linalg.norm(xq[0] - t2)
    d = (u1 + u2) / np.linalg.norm(u1 + u2)
    expect = xq[0] + 1.8 * np.sqrt((0.0 + 0.6) / 2) * d
    np.testing.assert_allclose(out[0], expect, atol=1e-5)
    # top=1: only the nearest (t2, cos 0.6) sets the length
    out1 = pp.ssquare_shift(xq, xt, a=1.0, K=2, top=1, backend="numpy")
    np.testing.assert_allclose(np.linalg.norm(out1[0] - xq[0]), np.sqrt(0.6), atol=1e-5)


def test_pca_by_hand_and_against_faiss(rng):
    # variance 4 along x, 1 along y: whitening gives unit variance on both
    xt = np.array([[2, 1], [-2, 1], [2, -1], [-2, -1]], np.float32) + 3
    p = pp.fit_pca(xt, 2, eigen_power=-0.5, faiss_compatible=False)
    np.testing.assert_allclose(p.eigenvalues, [4, 1], atol=1e-9)
    np.testing.assert_allclose(pp.fit_pca(xt, 2).eigenvalues, [16, 4], atol=1e-9)  # faiss: scatter
    y = p.apply(xt)
    np.testing.assert_allclose(y.var(0), [1, 1], atol=1e-6)
    np.testing.assert_allclose(np.abs(y[0]), [1, 1], atol=1e-6)
    import faiss

    x = rng.standard_normal((500, 16)).astype(np.float32) * np.linspace(0.2, 3, 16).astype(np.float32)
    for power in (0.0, -0.5):
        mine = pp.fit_pca(x, 6, eigen_power=power)
        ref = faiss.PCAMatrix(16, 6, power)
        ref.train(x)
        a, b = mine.apply(x[:50]), ref.apply(x[:50])
        # eigenvector signs are arbitrary: compare the Gram matrices
        np.testing.assert_allclose(a @ a.T, b @ b.T, rtol=1e-3, atol=1e-3)


def test_pca_rejects_bad_dims(rng):
    with pytest.raises(ValueError, match="larger"):
        pp.fit_pca(rng.standard_normal((10, 4)), 5)


# ---- properties -----------------------------------------------------------------------------


def test_score_normalisation_never_changes_the_ranking_inside_a_query(rng):
    xq, xb, xt = rand_unit(rng, 20), rand_unit(rng, 60), rand_unit(rng, 40)
    for preset in pp.SCORE_NORM_PRESETS.values():
        bias = pp.score_norm_bias(xq, xt, backend="numpy", **preset)
        q2, b2 = pp.append_bias(xq, xb, bias)
        _, I0 = knn_numpy(xq, xb, 60, "ip")
        D1, I1 = knn_numpy(q2, b2, 60, "ip")
        np.testing.assert_array_equal(I0, I1)
        # ...but it does change the order across queries
        assert not np.allclose(D1, (xq @ xb.T)[np.arange(20)[:, None], I1])


def test_functions_do_not_modify_inputs(rng):
    xq, xt = rand_unit(rng, 5), rand_unit(rng, 30)
    keep_q, keep_t = xq.copy(), xt.copy()
    pp.nes(xq, pp.dba(xt, backend="numpy"), backend="numpy")
    pp.stretch(xq, xt, backend="numpy")
    pp.ssquare_shift(xq, xt, K=20, backend="numpy")
    np.testing.assert_array_equal(xq, keep_q)
    np.testing.assert_array_equal(xt, keep_t)


def test_nes_and_dba_outputs_are_unit(rng):
    xt = rand_unit(rng, 50)
    t2 = pp.dba(xt, backend="numpy")
    np.testing.assert_allclose(np.linalg.norm(t2, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pp.nes(rand_unit(rng, 4), t2, backend="numpy"), axis=1), 1, atol=1e-5)


def test_stretching_lengthens_queries_near_the_background(rng):
    xt = rand_unit(rng, 50)
    near = pp.l2_normalize(xt[:1] + 0.05 * rng.standard_normal((1, 8)))
    far = -near
    out = pp.stretch(np.vstack([near, far]), xt, backend="numpy")
    assert np.linalg.norm(out[0]) > np.linalg.norm(out[1])


def test_too_many_neighbours_is_an_error(rng):
    with pytest.raises(ValueError, match="training set has 3"):
        pp.stretch(rand_unit(rng, 2), rand_unit(rng, 3), n=5)
