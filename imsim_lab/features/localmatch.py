"""Pairwise verification of local features: 2-NN matching, Lowe's ratio test, optional RANSAC.

For a (query, reference) pair, every query descriptor looks for its two nearest reference
descriptors (L2); it matches when ``d1 < ratio * d2`` (Lowe, IJCV 2004, section 7.1; imgFp's
``match_score.cpp`` uses ``1.8 d1^2 < d2^2``, about ratio 0.745). The score of the pair is the number
of matches, or, with RANSAC, the number of matches consistent with one homography
(``cv2.findHomography``; 0 when fewer than 4 matches).

:func:`verify_pairs` scores many pairs at once: pairs are grouped by query, each query's
descriptors are converted once, and the distances to all its candidate references come from one
matrix product per block of references (BLAS), so a query with k candidates costs one pass.

    v = verify_pairs(fq, fb, qpos, bpos, ratio=0.8)
    v.n_matches, v.pairs_per_second
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

#: distances of at most this many (query keypoint, reference keypoint) entries are held at once
BLOCK = 1 << 23


@dataclass(frozen=True, eq=False)
class Verification:
    """Shapes: ``n_matches`` (n,) int64; ``n_inliers`` (n,) int64 or None (no RANSAC);
    ``scored`` (n,) bool: both images were readable (a pair with an unreadable image, or an
    image without keypoints, has 0 matches)."""

    n_matches: np.ndarray
    n_inliers: np.ndarray | None
    scored: np.ndarray
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return len(self.n_matches) / self.seconds if self.seconds > 0 else float("inf")


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _top2(dq: np.ndarray, qn: np.ndarray, db: np.ndarray, bn: np.ndarray, counts: np.ndarray):
    """Squared distances of each query descriptor to its nearest and second-nearest descriptor in
    each segment of ``db`` (consecutive segments of ``counts`` rows, each >= 2).

    Shapes: dq (kq, d), db (m, d) float32; returns d1, d2, j1 each (kq, len(counts)); ``j1`` the
    row of the nearest inside its segment.
    """
    part = dq @ db.T  # |q - b|^2 = |q|^2 + (|b|^2 - 2 q.b): the row constant |q|^2 is added at the end
    part *= -2.0
    part += bn[None, :]
    s = len(counts)
    d1, d2 = np.empty((len(dq), s), np.float32), np.empty((len(dq), s), np.float32)
    j1 = np.empty((len(dq), s), np.int64)
    rows = np.arange(len(dq))
    a = 0
    for c, n in enumerate(counts):
        seg = part[:, a:a + n]
        j = seg.argmin(axis=1)
        j1[:, c], d1[:, c] = j, seg[rows, j]
        seg[rows, j] = np.inf  # the nearest out of the way (a tied twin stays: d2 = d1, no match)
        d2[:, c] = seg.min(axis=1)
        a += n
    np.maximum(d1 + qn[:, None], 0.0, out=d1)
    np.maximum(d2 + qn[:, None], 0.0, out=d2)
    return d1, d2, j1


def ratio_matches(dq: np.ndarray, db: np.ndarray, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """The matches of one pair: query rows whose nearest reference row passes the ratio test.

    Args:
        dq: (kq, d) query descriptors; db: (kb, d) reference descriptors (any dtype).
        ratio: Lowe's ratio, ``d1 < ratio * d2`` on L2 distances.

    Returns:
        (iq, ib): (t,) int64 rows of the matched query and reference keypoints, in query order.
        Empty when either side has fewer than 1 (query) or 2 (reference) keypoints.
    """
    if len(dq) == 0 or len(db) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    q, b = np.asarray(dq, np.float32), np.asarray(db, np.float32)
    d1, d2, j1 = _top2(q, _sq_norms(q), b, _sq_norms(b), np.array([len(b)]))
    ok = d1[:, 0] < (ratio * ratio) * d2[:, 0]
    iq = np.flatnonzero(ok)
    return iq, j1[iq, 0]


def ransac_inliers(xy_q: np.ndarray, xy_b: np.ndarray, threshold: float = 4.0) -> int:
    """Matches consistent with one homography (``cv2.findHomography`` RANSAC; 0 under 4 matches).

    Args:
        xy_q, xy_b: (t, 2) matched keypoint positions in the query and the reference.
        threshold: reprojection error in pixels of the preprocessed images.
    """
    if len(xy_q) < 4:
        return 0
    import cv2

    h, mask = cv2.findHomography(np.asarray(xy_q, np.float32), np.asarray(xy_b, np.float32), cv2.RANSAC,
                                 threshold, maxIters=2000, confidence=0.995)
    return 0 if h is None or mask is None else int(mask.sum())


def verify_pairs(fq, fb, qpos: np.ndarray, bpos: np.ndarray, ratio: float = 0.8, ransac: bool = False,
                 ransac_threshold: float = 4.0, progress: Callable[[int], None] | None = None) -> Verification:
    """Match counts (and RANSAC inliers) of many pairs, reusing each query's features once.

    Args:
        fq, fb: the query and reference :class:`~imsim_lab.features.localstore.LocalFeatureSet`
            (anything with ``features(i)``).
        qpos, bpos: (n,) rows of each pair's query in ``fq`` and reference in ``fb``; -1 = the
            image has no features (unreadable): the pair gets 0 and ``scored`` False.
        ratio: Lowe's ratio. ransac: also count RANSAC inliers. ransac_threshold: pixels.
        progress: called with the number of pairs finished after each query.

    Returns:
        :class:`Verification` in the order of the pairs.
    """
    t0 = time.perf_counter()
    qpos, bpos = np.asarray(qpos, np.int64), np.asarray(bpos, np.int64)
    n = len(qpos)
    n_matches = np.zeros(n, np.int64)
    n_inliers = np.zeros(n, np.int64) if ransac else None
    scored = (qpos >= 0) & (bpos >= 0)
    order = np.argsort(qpos, kind="stable")
    order = order[scored[order]]
    starts = np.flatnonzero(np.r_[True, qpos[order][1:] != qpos[order][:-1]]) if len(order) else []
    bounds = np.r_[starts, len(order)].astype(np.int64)
    r2 = ratio * ratio
    for g in range(len(bounds) - 1):
        rows = order[bounds[g]:bounds[g + 1]]
        q = fq.features(int(qpos[rows[0]]))
        if len(q) > 0:
            dq = np.asarray(q.descriptors, np.float32)
            qn = _sq_norms(dq)
            refs = [fb.features(int(bpos[r])) for r in rows]
            keep = [k for k, f in enumerate(refs) if len(f) >= 2]
            for block in _blocks(keep, [len(refs[k]) for k in keep], max(1, BLOCK // len(dq))):
                db = np.concatenate([np.asarray(refs[k].descriptors, np.float32) for k in block])
                counts = np.array([len(refs[k]) for k in block])
                d1, d2, j1 = _top2(dq, qn, db, _sq_norms(db), counts)
                ok = d1 < r2 * d2
                n_matches[rows[block]] = ok.sum(axis=0)
                if ransac:
                    for c, k in enumerate(block):
                        iq = np.flatnonzero(ok[:, c])
                        n_inliers[rows[k]] = ransac_inliers(q.geometry[iq, :2], refs[k].geometry[j1[iq, c], :2],
                                                            ransac_threshold)
        if progress:
            progress(len(rows))
    if progress and (~scored).any():
        progress(int((~scored).sum()))
    return Verification(n_matches, n_inliers, scored, time.perf_counter() - t0)


def _blocks(items: list[int], sizes: list[int], budget: int):
    """Consecutive groups of ``items`` whose ``sizes`` sum to at most ``budget`` (or one item)."""
    cur, total = [], 0
    for k, s in zip(items, sizes):
        if cur and total + s > budget:
            yield cur
            cur, total = [], 0
        cur.append(k)
        total += s
    if cur:
        yield cur
