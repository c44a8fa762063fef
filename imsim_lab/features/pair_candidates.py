"""Candidate lists from sub-image views, merged: the first stage of SeungKee Jeon's matching-track
solution (arXiv 2111.09113; ``docs/methods.md``, "SeungKee Jeon (matching track, 2nd)").

Each query is searched as itself and as crops of itself, and against crops of the references;
every search gives its own short list, and the lists are merged into one set of candidate pairs:

=================== ============================================ ===================== ========
list                query side                                   reference side        top k
=================== ============================================ ===================== ========
``whole``           the whole query                              whole references      100
``strips``          the six half strips (``half_strips``)        whole references      20 each
``half_grid``       the 3x3 grid of half crops (``half_grid``)   whole references      10 each
``third_grid``      the 5x5 grid of third crops (``third_grid``) whole references      5 each
``reference_crops`` the whole query                              half-grid crops       10
=================== ============================================ ===================== ========

The view sets are those of :mod:`imsim_lab.features.views`. The sizes are parameters
(:class:`CandidateSizes`, :data:`SIZES`: the published ones and the ``cpu`` profile's).

* :func:`view_neighbours` turns view descriptors (a :class:`~imsim_lab.features.viewstore.ViewSet`
  or plain arrays) into one :class:`ViewNeighbours` list (the k-NN of every view row), a search
  against reference crops keeping k distinct parent references per row;
* :func:`merge_candidates` (pure, on arrays) merges lists into :class:`MergedCandidates`: each
  (query, reference) pair once, with its best score, the list and the query view that proposed it
  at that score, and its 0-based rank inside its query;
* :func:`crop_lists` / :func:`crop_candidates` make the lists from a descriptor model (view descriptors
  cached per side and view set) and merge them; :func:`cut_merged` cuts a merged list per query and
  overall. A matching method uses them with ``-p candidates.views=full|cpu|smoke``
  (:class:`~imsim_lab.methods.spec.CandidateSource`; the runner keeps the list and the view of each
  candidate in ``candidates.parquet``: ``candidate_list``, ``candidate_view``, ``candidate_n_lists``);
* :func:`list_recall` (copies found by each list and added to those before it, per family) and
  :func:`recall_at_k` (of a merged list) measure the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ImsimError

#: list name -> the registered query view set it searches with (None: the whole query)
LIST_VIEWS = {"whole": None, "strips": "half_strips", "half_grid": "half_grid", "third_grid": "third_grid",
              "reference_crops": None}


class CandidateError(ImsimError):
    """Candidate lists that cannot be merged; the message names the list and the first bad id."""


@dataclass(frozen=True)
class CandidateSizes:
    """Neighbours kept per query view in each list (see the module table)."""

    whole: int = 100
    strips: int = 20
    half_grid: int = 10
    third_grid: int = 5
    reference_crops: int = 10

    def __post_init__(self):
        for name, v in self.as_dict().items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise CandidateError(f"candidate size {name} must be an integer >= 0, not {v!r}")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in LIST_VIEWS}


#: the published sizes (``full``) and the ``cpu`` profile's, scaled to a small benchmark
SIZES = {"full": CandidateSizes(), "cpu": CandidateSizes(20, 4, 2, 1, 2), "smoke": CandidateSizes(5, 2, 1, 1, 1)}


@dataclass(frozen=True, eq=False)
class ViewNeighbours:
    """The k-NN of the query views of one list. Shapes: ``query_ids`` (m,) the parent query of each
    view row, ``view_names`` (m,), ``reference_ids`` (m, k) ("" = no neighbour), ``scores`` (m, k)
    higher = more similar, best first per row."""

    name: str
    query_ids: np.ndarray
    view_names: np.ndarray
    reference_ids: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        m = len(self.query_ids)
        r, s = np.asarray(self.reference_ids), np.asarray(self.scores)
        if len(self.view_names) != m or r.ndim != 2 or r.shape != s.shape or len(r) != m:
            raise CandidateError(f"candidate list {self.name!r}: query_ids ({m},), view_names "
                                 f"{np.shape(self.view_names)}, reference_ids {r.shape} and scores {s.shape} disagree")


@dataclass(frozen=True, eq=False)
class MergedCandidates:
    """Merged, de-duplicated candidate pairs, sorted by query id then decreasing score.

    Shapes (n,): ``query_ids``, ``reference_ids``, ``scores`` (the best score of the pair over all
    lists), ``ranks`` (0-based inside the query), ``lists`` and ``views`` (the list and the query
    view that gave that score; ties: the earlier list, then the earlier row), ``n_lists`` (how many
    lists proposed the pair).
    """

    query_ids: np.ndarray
    reference_ids: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    lists: np.ndarray
    views: np.ndarray
    n_lists: np.ndarray

    def __len__(self) -> int:
        return len(self.query_ids)

    def pairs(self):
        """As :class:`~imsim_lab.methods.matchers.CandidatePairs` (for a matcher)."""
        from ..methods.matchers import CandidatePairs

        return CandidatePairs(self.query_ids, self.reference_ids, self.scores, self.ranks)


def _check_ids(name: str, what: str, ids: np.ndarray, known: set | None) -> None:
    if known is None:
        return
    for i in ids:
        if i not in known:
            raise CandidateError(f"candidate list {name!r} names an unknown {what} {str(i)!r}")


def merge_candidates(lists: Sequence[ViewNeighbours], sizes: CandidateSizes | dict | None = None,
                     query_ids: Sequence[str] | None = None, reference_ids: Sequence[str] | None = None
                     ) -> MergedCandidates:
    """Merge view-level k-NN lists into one candidate list per query.

    Args:
        lists: one :class:`ViewNeighbours` per list; its ``name`` picks its size.
        sizes: neighbours kept per view row for each list name (default: every column given); a
            name absent from ``sizes`` keeps all its columns.
        query_ids, reference_ids: the known images; a list naming another is refused (the first
            offending id is named). None: not checked.

    Returns:
        :class:`MergedCandidates`.

    Raises:
        CandidateError: inconsistent shapes, a negative size, an unknown id.
    """
    if isinstance(sizes, CandidateSizes):
        sizes = sizes.as_dict()
    sizes = dict(sizes or {})
    kq = None if query_ids is None else {str(q) for q in query_ids}
    kr = None if reference_ids is None else {str(r) for r in reference_ids}
    q_parts, r_parts, s_parts, l_parts, v_parts, order_parts = [], [], [], [], [], []
    for li, nb in enumerate(lists):
        k = sizes.get(nb.name, np.shape(nb.reference_ids)[1])
        if k < 0:
            raise CandidateError(f"candidate list {nb.name!r}: size {k} < 0")
        qs = np.asarray(nb.query_ids).astype(str)
        rs = np.asarray(nb.reference_ids).astype(str)[:, :k]
        ss = np.asarray(nb.scores, np.float64)[:, :k]
        _check_ids(nb.name, "query", qs, kq)
        keep = (rs != "") & np.isfinite(ss)
        _check_ids(nb.name, "reference", rs[keep], kr)
        rows = np.broadcast_to(np.arange(len(qs))[:, None], rs.shape)[keep]
        q_parts.append(qs[rows])
        r_parts.append(rs[keep])
        s_parts.append(ss[keep])
        l_parts.append(np.full(len(rows), li, np.int64))
        v_parts.append(np.asarray(nb.view_names).astype(str)[rows])
        order_parts.append(rows)
    if not q_parts or not sum(len(p) for p in q_parts):
        e = np.zeros(0, str)
        z = np.zeros(0, np.int64)
        return MergedCandidates(e, e.copy(), np.zeros(0), z, e.copy(), e.copy(), z.copy())
    q, r, s = np.concatenate(q_parts), np.concatenate(r_parts), np.concatenate(s_parts)
    li, v, row = np.concatenate(l_parts), np.concatenate(v_parts), np.concatenate(order_parts)
    qu, qc = np.unique(q, return_inverse=True)
    ru, rc = np.unique(r, return_inverse=True)
    key = qc.astype(np.int64) * len(ru) + rc
    # inside each pair: best score first, ties by list then row (the earliest proposal wins)
    order = np.lexsort((row, li, -s, key))
    ks = key[order]
    start = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    best = order[start]
    n_lists = np.array([len(np.unique(li[order[a:b]])) for a, b in zip(start, np.r_[start[1:], len(order)])],
                       np.int64)
    qb, rb, sb = qu[qc[best]], ru[rc[best]], s[best]
    o = np.lexsort((rb, -sb, qb))
    qb, rb, sb, best, n_lists = qb[o], rb[o], sb[o], best[o], n_lists[o]
    first = np.flatnonzero(np.r_[True, qb[1:] != qb[:-1]])
    ranks = np.arange(len(qb)) - np.repeat(first, np.diff(np.r_[first, len(qb)]))
    names = np.array([nb.name for nb in lists], dtype=str)
    return MergedCandidates(qb, rb, sb, ranks.astype(np.int64), names[li[best]], v[best], n_lists)


def view_neighbours(name: str, query_ids: Sequence[str], view_names: Sequence[str], xq: np.ndarray,
                    reference_ids: Sequence[str], xb: np.ndarray, k: int, metric: str = "ip",
                    backend: str = "auto") -> ViewNeighbours:
    """The ``k`` nearest references of every query view row.

    Args:
        name: the list name (:data:`LIST_VIEWS`).
        query_ids, view_names: (m,) the parent query and the view of each row of ``xq`` (m, d).
        reference_ids: (nb,) the parent reference of each row of ``xb`` (nb, d); several rows may
            share a parent (reference crops): each query row then keeps ``k`` distinct parents,
            each at the best score of its crops.
        metric: ``"ip"`` (unit descriptors) or ``"l2"`` (scores are negated squared distances).

    Returns:
        :class:`ViewNeighbours` (missing neighbours: id "" and score -inf).
    """
    from ..search import knn

    rid = np.asarray([str(r) for r in reference_ids], dtype=str)
    n_parents = len(np.unique(rid)) if len(rid) else 0
    crops = len(rid) > n_parents
    kk = min(len(rid), k * max(1, -(-len(rid) // max(n_parents, 1)))) if crops else min(k, len(rid))
    D, I = knn(np.ascontiguousarray(xq, np.float32), np.ascontiguousarray(xb, np.float32), max(kk, 1), metric,
               backend)
    S = -D.astype(np.float64) if metric == "l2" else D.astype(np.float64)
    m = len(query_ids)
    out_r, out_s = np.full((m, k), "", dtype=object), np.full((m, k), -np.inf)
    for i in range(m):
        seen = []
        for j, sc in zip(I[i], S[i]):
            if j < 0 or len(seen) == k:
                break
            p = rid[j]
            if p not in seen:  # neighbours come best first: the first crop of a parent is its best
                out_r[i, len(seen)], out_s[i, len(seen)] = p, sc
                seen.append(p)
    return ViewNeighbours(name, np.asarray(query_ids, dtype=str), np.asarray(view_names, dtype=str),
                          out_r.astype(str), out_s)


def crop_lists(model, queries, references, folder, sizes: CandidateSizes = CandidateSizes(), config=None,
               min_side: int = 8, metric: str = "ip", backend: str = "auto") -> list[ViewNeighbours]:
    """The lists of the module table from a descriptor ``model``, before merging.

    Args:
        model: a :class:`~imsim_lab.features.models.base.DescriptorModel` (unit descriptors for ``"ip"``).
        queries, references: :class:`~imsim_lab.features.dataset.ImageSource` of the images.
        folder: where the view descriptors are kept, one split per side and view set (resumable,
            :func:`~imsim_lab.features.viewstore.extract_views`): a second call on the same folder
            searches the stored descriptors again and decodes no image.
        sizes: neighbours per view row of each list (a list of size 0 is neither extracted nor searched).
        config: :class:`~imsim_lab.features.extract.ExtractConfig`. min_side: smallest view made, in pixels.

    Returns:
        one :class:`ViewNeighbours` per list of non-zero size, in the order of :data:`LIST_VIEWS`.
    """
    from pathlib import Path

    from .extract import ExtractConfig
    from .viewstore import ViewConfig, extract_views

    config = config or ExtractConfig()
    folder = Path(folder)

    def views(source, side, view_set):
        return extract_views(model, source, source.ids, ViewConfig((view_set,), min_side), folder / side, view_set,
                             config)

    whole_r = views(references, "reference", "identity")
    rid, xb = whole_r.parent_ids, np.asarray(whole_r.x)
    lists = []
    for name, view_set in LIST_VIEWS.items():
        k = getattr(sizes, name)
        if k == 0:
            continue
        qv = views(queries, "query", view_set or "identity")
        if name == "reference_crops":
            crops = views(references, "reference", "half_grid")
            lists.append(view_neighbours(name, qv.parent_ids, qv.view_names, np.asarray(qv.x), crops.parent_ids,
                                         np.asarray(crops.x), k, metric, backend))
        else:
            lists.append(view_neighbours(name, qv.parent_ids, qv.view_names, np.asarray(qv.x), rid, xb, k, metric,
                                         backend))
    return lists


def crop_candidates(model, queries, references, folder, sizes: CandidateSizes = CandidateSizes(),
                    config=None, min_side: int = 8, metric: str = "ip", backend: str = "auto") -> MergedCandidates:
    """The lists of :func:`crop_lists` (same arguments), merged (:func:`merge_candidates`) over the
    ids of ``queries`` and ``references``."""
    lists = crop_lists(model, queries, references, folder, sizes, config, min_side, metric, backend)
    return merge_candidates(lists, sizes, queries.ids, references.ids)


def cut_merged(merged: MergedCandidates, k: int | None = None, budget: int | None = None) -> MergedCandidates:
    """The ``k`` best pairs of each query (by merged score; ranks kept) and/or the ``budget`` best
    pairs overall (ties: the earlier pair). None: no cut of that kind."""
    keep = np.ones(len(merged), bool)
    if k is not None:
        keep &= np.asarray(merged.ranks) < k
    if budget is not None and keep.sum() > budget:
        idx = np.flatnonzero(keep)
        best = idx[np.argsort(-np.asarray(merged.scores)[idx], kind="stable")[:budget]]
        keep = np.zeros(len(merged), bool)
        keep[best] = True
    return MergedCandidates(*(np.asarray(getattr(merged, f))[keep] for f in
                              ("query_ids", "reference_ids", "scores", "ranks", "lists", "views", "n_lists")))


# ------------------------------------------------------------------------------------------------
# candidate recall


def _truth(queries) -> dict:
    """query id -> its original (reference id) for the queries with a match; ``queries``: a
    benchmark's query table (query_id, has_match, reference_id)."""
    q = queries[queries["has_match"].astype(bool)]
    return dict(zip(q["query_id"].astype(str), q["reference_id"].astype(str)))


def list_recall(lists: Sequence[ViewNeighbours], queries, sizes: CandidateSizes | dict | None = None) -> "pd.DataFrame":
    """How many copies each list finds, and how many it adds to the lists before it.

    Args:
        lists: :class:`ViewNeighbours` in merge order (:func:`crop_lists`).
        queries: the benchmark's query table (query_id, family, has_match, reference_id).
        sizes: neighbours kept per view row of each list (as :func:`merge_candidates`).

    Returns:
        one row per (family, list), families plus ``"all"``: ``n_copies``, ``found`` (copies whose
        original the list proposes), ``recall`` = found / n_copies, ``cumulative`` (the recall of this
        list and those before it merged), ``added`` (copies first found by this list).
    """
    import pandas as pd

    if isinstance(sizes, CandidateSizes):
        sizes = sizes.as_dict()
    sizes = dict(sizes or {})
    truth = _truth(queries)
    fam = dict(zip(queries["query_id"].astype(str), queries["family"].astype(str)))
    found_by = []
    for nb in lists:
        k = sizes.get(nb.name, np.shape(nb.reference_ids)[1])
        rs = np.asarray(nb.reference_ids).astype(str)[:, :k]
        qs = np.asarray(nb.query_ids).astype(str)
        hit = {q for q, row in zip(qs, rs) if q in truth and truth[q] in set(row)}
        found_by.append(hit)
    rows = []
    families = ["all", *sorted({fam[q] for q in truth})]
    for f in families:
        copies = {q for q in truth if f == "all" or fam[q] == f}
        seen: set = set()
        for nb, hit in zip(lists, found_by):
            h = hit & copies
            added = h - seen
            seen |= h
            n = len(copies)
            rows.append({"family": f, "list": nb.name, "n_copies": n, "found": len(h),
                         "recall": len(h) / n if n else np.nan, "cumulative": len(seen) / n if n else np.nan,
                         "added": len(added)})
    return pd.DataFrame(rows)


def recall_at_k(query_ids, reference_ids, ranks, queries, ks: Sequence[int] = (1, 5, 10, 20, 50, 100),
                by_family: bool = True) -> "pd.DataFrame":
    """Candidate recall@k of a merged candidate list (a matching run's ``candidates.parquet``: its
    ``query_id``, ``reference_id`` and ``candidate_rank`` columns): the share of copies whose
    original is among their query's ``k`` best candidates.

    Returns:
        columns family (``"all"`` and each family when ``by_family``), k, n_copies, recall.
    """
    import pandas as pd

    truth = _truth(queries)
    fam = dict(zip(queries["query_id"].astype(str), queries["family"].astype(str)))
    q, r = np.asarray(query_ids).astype(str), np.asarray(reference_ids).astype(str)
    rk = np.asarray(ranks, np.int64)
    best: dict = {}  # copy -> rank of its original among its candidates
    for qi, ri, k in zip(q, r, rk):
        if truth.get(qi) == ri:
            best[qi] = min(best.get(qi, k), k)
    families = ["all", *sorted({fam[x] for x in truth})] if by_family else ["all"]
    rows = []
    for f in families:
        copies = [x for x in truth if f == "all" or fam[x] == f]
        for k in ks:
            got = sum(1 for x in copies if x in best and best[x] < k)
            rows.append({"family": f, "k": int(k), "n_copies": len(copies),
                         "recall": got / len(copies) if copies else np.nan})
    return pd.DataFrame(rows)
