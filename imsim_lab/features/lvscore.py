"""D2LV's local verification on view descriptors: from candidate image pairs to scored view pairs
and back, as pure functions on arrays.

D2LV (Wang, Sun, Zhang, Yang, arXiv 2111.07090; ``docs/methods.md``, "D2LV (matching track, 1st)"; their
``Test/final/combine.py``) compares sub-images, in two directions:

* **AQ+OR** (augmented queries, original references): every view of the query (rotations, centre
  crop, overlapping halves, detected overlays) against the whole reference;
* **OQ+AR** (original queries, augmented references): the whole query against every split of
  the reference (the 19 views of ``d2lv_reference``).

Here the view pairs are those of given candidate image pairs (:func:`view_pairs`). Each backbone
scores every view pair (inner product of unit descriptors) and *predicts* only its global top
``budget`` view pairs of each direction (D2LV's searches return a bounded list per model: one
million results for 50,000 queries); a view pair is kept when at least ``k`` backbones predict it
(the vote, :func:`~imsim_lab.features.viewscore.vote`) and then scores the maximum of their
scores. Query views with a short side under ``min_query_side`` pixels are dropped (the small-crop
filter; the whole query is never dropped), query views other than the whole image and the detector's boxes lose 0.05, and an image
pair scores the maximum over its kept view pairs and directions
(:func:`~imsim_lab.features.viewscore.aggregate`). :func:`verify` does it all; it also keeps, per
view family, the best score that family gave (what the notebook's per-family study reads).

Vocabulary: a *table* is a :class:`~imsim_lab.features.viewstore.ViewSet` (or anything with
``parent_ids``, ``view_names``, ``boxes`` and ``sizes``) whose rows every backbone's descriptors
follow (``xq[b]`` has one row per row of the query table, NaN where backbone b has no descriptor).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .viewscore import AggregateConfig, aggregate, vote
from .views import ViewError

DIRECTIONS = ("aq_or", "oq_ar")
#: query views that keep their score: the original and the overlay boxes (D2LV: ``_0`` and YOLO's ``_1000..``)
OFFSET_EXEMPT = ("whole", "det*", "oracle*")
#: query view families (besides the whole query): view-name patterns of each
QUERY_FAMILIES = {"rotations": ("rot*",), "center": ("center",), "halves": ("half_*",), "detector": ("det*",),
                  "oracle": ("oracle*",), "selective_search": ("ss*",)}
#: the family of an OQ+AR view pair whose reference view is not the whole reference
REFERENCE_FAMILY = "reference_splits"


def query_family(name: str) -> str:
    """The family of a query view name (``"whole"`` for the original)."""
    for fam, pats in QUERY_FAMILIES.items():
        if any(fnmatch.fnmatchcase(name, p) for p in pats):
            return fam
    return "whole" if name == "whole" else "other"


@dataclass(frozen=True)
class LVConfig:
    """The rules of :func:`verify`.

    Attributes:
        directions: a subset of :data:`DIRECTIONS`.
        offset: added to the score of query views not matched by ``offset_exempt`` (D2LV: -0.05).
        min_query_side: the small-crop filter, in pixels of the query (D2LV: 100, 150 or 200 by set).
        vote_k: a view pair is kept when at least ``min(vote_k, backbones)`` backbones predict it.
        budget: view pairs each backbone predicts per direction, best first over all queries
            (None: every view pair).
    """

    directions: tuple[str, ...] = DIRECTIONS
    offset: float = -0.05
    offset_exempt: tuple[str, ...] = OFFSET_EXEMPT
    min_query_side: int = 100
    vote_k: int = 2
    budget: int | None = None

    def __post_init__(self):
        d = (self.directions,) if isinstance(self.directions, str) else tuple(self.directions)
        object.__setattr__(self, "directions", d)
        object.__setattr__(self, "offset_exempt", tuple(self.offset_exempt))
        bad = [x for x in d if x not in DIRECTIONS]
        if bad or not d:
            raise ViewError(f"directions must be a non-empty subset of {DIRECTIONS}, got {list(d)}")
        if int(self.vote_k) < 1:
            raise ViewError(f"vote_k must be >= 1, got {self.vote_k}")
        if self.budget is not None and int(self.budget) < 1:
            raise ViewError(f"budget must be >= 1 view pairs or None, got {self.budget}")
        if int(self.min_query_side) < 0:
            raise ViewError(f"min_query_side must be >= 0 pixels, got {self.min_query_side}")


def vote_rule(vote_k: int, n_backbones: int) -> str:
    """What the vote does with ``n_backbones`` backbones, in words (for the run's report)."""
    k = min(int(vote_k), n_backbones)
    if n_backbones == 1:
        return "off: one backbone, every view pair it predicts is kept"
    if k == n_backbones:
        return f"{k} of {n_backbones}: a view pair is kept only when every backbone predicts it"
    return f"{k} of {n_backbones}: a view pair is kept when at least {k} backbones predict it"


def _rows_by_parent(table, parents: np.ndarray, whole_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """``order``: the table rows (only the whole views when ``whole_only``) sorted by parent id, and
    for each id of ``parents`` its (start, count) in ``order``."""
    pid = np.asarray(table.parent_ids).astype(str)
    rows = np.arange(len(pid))
    if whole_only:
        rows = rows[np.asarray(table.view_names).astype(str) == "whole"]
    order = rows[np.argsort(pid[rows], kind="stable")]
    sp = pid[order]
    start = np.searchsorted(sp, parents, side="left")
    end = np.searchsorted(sp, parents, side="right")
    return order, np.stack([start, end - start], 1).astype(np.int64)


def _expand(order: np.ndarray, sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, rows): for each i, the rows ``order[s_i : s_i + c_i]``, owner i repeated."""
    s, c = sc[:, 0], sc[:, 1]
    owner = np.repeat(np.arange(len(s)), c)
    first = np.repeat(np.cumsum(c) - c, c)
    return owner, order[np.repeat(s, c) + np.arange(int(c.sum())) - first]


def view_pairs(query_ids, reference_ids, qtab, rtab, direction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The view pairs of candidate image pairs in one direction.

    Args:
        query_ids, reference_ids: (n,) the candidate pairs.
        qtab, rtab: the query and reference view tables.
        direction: ``"aq_or"`` (every query view x the whole reference) or ``"oq_ar"`` (the whole
            query x every reference view).

    Returns:
        (pair, q_row, r_row), each (p,) int64: the candidate pair of each view pair and its table
        rows. A pair whose image has no view in a table (unreadable, or its whole view too small)
        has none.
    """
    q = np.asarray(query_ids).astype(str)
    r = np.asarray(reference_ids).astype(str)
    if direction not in DIRECTIONS:
        raise ViewError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "aq_or":
        order, sc = _rows_by_parent(qtab, q, False)
        worder, wsc = _rows_by_parent(rtab, r, True)
    else:
        order, sc = _rows_by_parent(rtab, r, False)
        worder, wsc = _rows_by_parent(qtab, q, True)
    has = wsc[:, 1] > 0
    owner, rows = _expand(order, sc * has[:, None])
    whole = np.full(len(q), -1, np.int64)
    whole[has] = worder[wsc[has, 0]]
    other = whole[owner]
    return (owner, rows, other) if direction == "aq_or" else (owner, other, rows)


def pair_scores(xq: np.ndarray, xr: np.ndarray, q_row: np.ndarray, r_row: np.ndarray, chunk: int = 65536
                ) -> np.ndarray:
    """(p,) float64 inner products ``xq[q_row[k]] . xr[r_row[k]]`` (NaN where a row is NaN)."""
    out = np.empty(len(q_row), np.float64)
    for a in range(0, len(q_row), chunk):
        qa, ra = xq[q_row[a:a + chunk]], xr[r_row[a:a + chunk]]
        out[a:a + chunk] = np.einsum("ij,ij->i", np.asarray(qa, np.float32), np.asarray(ra, np.float32))
    return out


def budget_mask(scores: np.ndarray, budget: int | None) -> np.ndarray:
    """(p,) bool: the ``budget`` best finite scores (ties: the earlier row), or every finite one."""
    s = np.asarray(scores, np.float64)
    ok = np.isfinite(s)
    if budget is None or ok.sum() <= budget:
        return ok
    order = np.argsort(np.where(ok, -s, np.inf), kind="stable")[: int(budget)]
    keep = np.zeros(len(s), bool)
    keep[order] = True
    return keep


@dataclass(frozen=True, eq=False)
class Verified:
    """Local verification of n candidate pairs. Shapes (n,): ``scores`` (NaN: no view pair kept),
    ``q_row``, ``r_row`` (table rows of the best view pair, -1 when none), ``direction`` (of the
    best view pair: ``aq_or``, ``oq_ar`` or ``whole`` when both views are whole), ``n_agree``
    (backbones that predicted the best view pair), ``n_view_pairs`` (view pairs kept);
    ``family``: family name -> (n,) best score of its view pairs (NaN: none); ``counts``: JSON-able."""

    scores: np.ndarray
    q_row: np.ndarray
    r_row: np.ndarray
    direction: np.ndarray
    n_agree: np.ndarray
    n_view_pairs: np.ndarray
    family: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


def _key(q, r) -> np.ndarray:
    return np.char.add(np.char.add(np.asarray(q).astype(str), "\t"), np.asarray(r).astype(str))


def verify(query_ids, reference_ids, qtab, rtab, xq: Sequence[np.ndarray], xr: Sequence[np.ndarray],
           config: LVConfig = LVConfig(), bq: Sequence[np.ndarray] | None = None,
           br: Sequence[np.ndarray] | None = None) -> Verified:
    """Score candidate image pairs by local verification (see the module docstring).

    Args:
        query_ids, reference_ids: (n,) candidate pairs, each (query, reference) once.
        qtab, rtab: view tables of the queries and references.
        xq, xr: one array per backbone, (len(qtab), d_b) and (len(rtab), d_b), unit rows aligned
            to the tables (NaN rows: no descriptor).
        config: :class:`LVConfig`.
        bq, br: None, or one array per backbone, (len(qtab),) and (len(rtab),): D2LV's score
            normalisation terms of the query views and of the reference views. A view pair then
            scores ``q.r - bq[q]`` in AQ+OR (the term of the query view) and ``q.r - br[r]`` in
            OQ+AR (the term of the reference view, D2LV's ``score_normalization_reverse.py``),
            before the budget, the vote and the offset.

    Returns:
        :class:`Verified`.
    """
    n_b = len(xq)
    if n_b == 0 or len(xr) != n_b:
        raise ViewError(f"verify: {len(xq)} query and {len(xr)} reference descriptor arrays (one per backbone)")
    q = np.asarray(query_ids).astype(str)
    r = np.asarray(reference_ids).astype(str)
    n = len(q)
    for name, bias, tab in (("bq", bq, qtab), ("br", br, rtab)):
        if bias is not None and (len(bias) != n_b or any(len(x) != len(tab.parent_ids) for x in bias)):
            raise ViewError(f"verify: {name} needs one array per backbone with one term per row of its view table")
    k = min(int(config.vote_k), n_b)
    counts: dict = {"n_backbones": n_b, "vote_k": k, "view_pairs": {}, "predicted": {}, "voted": {}}
    parts = []  # (pair, q_row, r_row, score, n_agree, direction code)
    for code, d in enumerate(config.directions):
        pair, qr, rr = view_pairs(q, r, qtab, rtab, d)
        S = np.stack([pair_scores(xq[b], xr[b], qr, rr) for b in range(n_b)]) if len(pair) else np.zeros((n_b, 0))
        bias, rows = (bq, qr) if d == "aq_or" else (br, rr)
        if bias is not None and len(pair):
            S = S - np.stack([np.asarray(bias[b], np.float64)[rows] for b in range(n_b)])
        counts["view_pairs"][d] = int(len(pair))
        j = np.arange(len(pair))
        lists = []
        for b in range(n_b):
            m = budget_mask(S[b], config.budget)
            lists.append((j[m], np.zeros(int(m.sum()), np.int64), S[b][m]))
        counts["predicted"][d] = [int(len(t[0])) for t in lists]
        v = vote(lists, k)
        sel = v.q.astype(np.int64)
        counts["voted"][d] = int(len(sel))
        parts.append((pair[sel], qr[sel], rr[sel], np.nanmax(v.scores, axis=1) if len(sel) else np.zeros(0),
                      v.n_agree, np.full(len(sel), code)))
    pair, qr, rr, s, agree, dcode = (np.concatenate([p[i] for p in parts]) for i in range(6))
    qn = np.asarray(qtab.view_names).astype(str)
    rn = np.asarray(rtab.view_names).astype(str)
    # the small-crop filter, on sub-images of the query only (never on the whole query)
    qsizes = np.asarray(qtab.sizes).reshape(-1, 2)
    small = (qsizes.min(1)[qr] < config.min_query_side) & (qn[qr] != "whole") if len(qr) else np.zeros(0, bool)
    counts["small_query_views_dropped"] = int(small.sum())
    pair, qr, rr, s, agree, dcode = (a[~small] for a in (pair, qr, rr, s, agree, dcode))
    agg = AggregateConfig("max", 0, 0, float(config.offset), config.offset_exempt)
    key_all = _key(q, r)
    index = {kk: i for i, kk in enumerate(key_all)}
    if len(index) != n:
        raise ViewError("verify: a candidate (query, reference) pair is given twice")

    def to_pairs(pp) -> np.ndarray:
        return np.fromiter((index[kk] for kk in _key(pp.query_ids, pp.reference_ids)), np.int64, count=len(pp))

    best = aggregate(qtab, rtab, qr, rr, s, agg)
    at = to_pairs(best)
    scores = np.full(n, np.nan)
    q_row, r_row = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    n_view = np.zeros(n, np.int64)
    scores[at], q_row[at], r_row[at], n_view[at] = best.scores, best.q_row, best.r_row, best.n_pairs
    # agreement of the best view pair (a whole x whole pair is in both directions: the larger count)
    vp = qr.astype(np.int64) * max(len(rtab.parent_ids), 1) + rr
    best_vp = q_row * max(len(rtab.parent_ids), 1) + r_row
    n_agree = np.zeros(n, np.int64)
    if len(vp):
        o = np.argsort(vp, kind="stable")
        u, start = np.unique(vp[o], return_index=True)
        mx = np.maximum.reduceat(agree[o], start)
        pos = np.clip(np.searchsorted(u, best_vp), 0, len(u) - 1)
        hit = (best_vp >= 0) & (u[pos] == best_vp)
        n_agree[hit] = mx[pos[hit]]
    direction = np.full(n, "", dtype=object)
    ok = q_row >= 0
    direction[ok] = np.where(qn[q_row[ok]] != "whole", "aq_or", np.where(rn[r_row[ok]] != "whole", "oq_ar", "whole"))
    # per family: the best score of the family's view pairs (after the same filter and offset)
    is_oq = dcode == (config.directions.index("oq_ar") if "oq_ar" in config.directions else -1)
    uq, inv = np.unique(qn[qr], return_inverse=True)
    qfam = np.array([query_family(x) for x in uq], dtype=object)[inv] if len(qr) else np.zeros(0, object)
    fam_of = np.where(is_oq, np.where(rn[rr] == "whole", "whole", REFERENCE_FAMILY), qfam)
    family = {}
    for fam in [*QUERY_FAMILIES, REFERENCE_FAMILY, "whole"]:
        m = fam_of == fam
        if not m.any():
            continue
        got = aggregate(qtab, rtab, qr[m], rr[m], s[m], agg)
        col = np.full(n, np.nan)
        col[to_pairs(got)] = got.scores
        family[fam] = col
    counts["pairs_verified"] = int(np.isfinite(scores).sum())
    counts["pairs_unverified"] = int(n - counts["pairs_verified"])
    return Verified(scores, q_row, r_row, direction.astype(str), n_agree, n_view, family, counts)


def combine_sets(results: Sequence[Verified]) -> tuple[Verified, np.ndarray]:
    """D2LV's combination of its training sets (their ``combine.py``): the union of every set's
    predictions, each candidate pair scoring the max over the sets that kept a view pair of it.

    Args:
        results: one :class:`Verified` per set, of the same candidate pairs and view tables.

    Returns:
        (combined, won): the best view pair (rows, direction, agreement, view pairs) of the winning
        set per pair (ties: the earlier set), ``family`` the max over the sets per family, ``counts``
        per set under ``"sets"``; ``won`` (n,) int64 the winning set (-1: no set kept a view pair).
    """
    if not results:
        raise ViewError("combine_sets: no set to combine")
    if len(results) == 1:
        v = results[0]
        return v, np.where(np.isfinite(v.scores), 0, -1).astype(np.int64)
    n = len(results[0].scores)
    if any(len(v.scores) != n for v in results):
        raise ViewError("combine_sets: the sets scored different candidate pairs")
    S = np.stack([np.where(np.isfinite(v.scores), v.scores, -np.inf) for v in results])
    win = S.argmax(0)
    ok = np.isfinite(S.max(0))
    at = lambda name: np.choose(win, [getattr(v, name) for v in results])  # noqa: E731
    scores = np.where(ok, S.max(0), np.nan)
    q_row, r_row = np.where(ok, at("q_row"), -1), np.where(ok, at("r_row"), -1)
    direction = np.where(ok, np.choose(win, [v.direction.astype(object) for v in results]), "").astype(str)
    n_agree, n_view = np.where(ok, at("n_agree"), 0), np.where(ok, at("n_view_pairs"), 0)
    family = {}
    for f in sorted({f for v in results for f in v.family}):
        family[f] = np.fmax.reduce(np.stack([v.family.get(f, np.full(n, np.nan)) for v in results]), axis=0)
    counts = {"sets": [v.counts for v in results], "pairs_verified": int(ok.sum()),
              "pairs_unverified": int(n - ok.sum())}
    return (Verified(scores, q_row.astype(np.int64), r_row.astype(np.int64), direction, n_agree.astype(np.int64),
                     n_view.astype(np.int64), family, counts), np.where(ok, win, -1).astype(np.int64))
