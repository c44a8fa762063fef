"""imgFp's local branch and its visual-word alternative, as matchers, and the three methods.

imgFp (Sun et al., "A Global and Local Dual Retrieval Solution", arXiv 2112.02373; docs/methods.md;
sun-xl/ISC2021) recalls pairs with three branches and scores every recalled pair by counting SIFT
matches, summed over the branches:

* **local**: every query RootSIFT keypoint is searched among all reference keypoints
  (:mod:`imsim_lab.features.keypoint_search`), votes for the image owning its neighbour, and the
  top reference is accepted by :class:`~imsim_lab.features.keypoint_search.VoteRules`;
* **global**: the nearest reference of a global descriptor (here: rank 0 of the candidate run);
* **crop-local**: the local branch on the query views cut by the overlay detector
  (:mod:`imsim_lab.features.detector`; ``imgfp``'s parameter ``detector``: a checkpoint path);
* **pair scoring**: 2-NN ratio matching on squared distances (``1.8 d1^2 < d2^2``), again with the
  query's descriptors re-ordered as if the image were mirrored; the count is the larger of the two
  (:func:`flip_descriptors`, :func:`pair_counts`).

The clean functions :func:`vote_pairs` and :func:`bow_pairs` generate a branch's own pairs from the
features alone. The three methods take every reference as a candidate (``candidates.k = "all"``):
their matchers search the references themselves (``own_search``) and return the pairs their
branches recalled (:class:`~imsim_lab.methods.matchers.MatchResult` ``pairs``), so no all-pairs
list is built; ``imgfp`` also gets the candidate run's top ``global_k`` references per query (its
global branch). Given an explicit candidate list (an integer ``candidates.k``), they rescore it
instead: a pair their branches did not recall gets 0.0, the lowest score.
"""

from __future__ import annotations

import time

import numpy as np

from ..features.extract import ExtractConfig
from ..features.keypoint_search import VoteRules, build_ann, exact_knn, keypoint_owner, vote
from ..features.local import create_local_model
from ..features.localmatch import ransac_inliers, verify_pairs
from ..features.localstore import extract_local
from ..features.vocabulary import InvertedFile, Vocabulary, WordSet, train_vocabulary, word_matches
from .matchers import MATCHERS, CandidatePairs, MatchContext, Matcher, MatchResult, found_pairs
from .spec import ALL, METHODS, MethodSpec

#: imgFp's ratio test ``1.8 d1^2 < d2^2`` as Lowe's ratio on distances
IMGFP_RATIO = float(1.0 / np.sqrt(1.8))
_PAPER = "Sun et al., A Global and Local Dual Retrieval Solution, arXiv 2112.02373"


def flip_descriptors(d: np.ndarray) -> np.ndarray:
    """SIFT descriptors (k, 128) as the same keypoints would give on the mirrored image: the 4 x 4
    spatial grid is reflected along the keypoint frame's y axis and the 8 orientation bins negated
    (bin o -> (8 - o) mod 8), in OpenCV's layout (row, column, orientation)."""
    x = np.asarray(d).reshape(-1, 4, 4, 8)[:, ::-1][:, :, :, (8 - np.arange(8)) % 8]
    return np.ascontiguousarray(x.reshape(-1, 128))


class _Flipped:
    """A feature set whose descriptors are mirrored (:func:`flip_descriptors`), for verify_pairs."""

    def __init__(self, fs):
        self.fs = fs

    def features(self, i):
        f = self.fs.features(i)
        return type(f)(f.geometry, flip_descriptors(f.descriptors), f.shape)


def pair_counts(fq, fb, qpos, bpos, ratio: float = IMGFP_RATIO, flip: bool = True, progress=None) -> np.ndarray:
    """(n,) int64 imgFp pair score: ratio-test matches, the max with the mirrored query when ``flip``."""
    n = verify_pairs(fq, fb, qpos, bpos, ratio, progress=progress).n_matches
    if flip:
        n = np.maximum(n, verify_pairs(_Flipped(fq), fb, qpos, bpos, ratio).n_matches)
    return n


def features_for(model, pairs: CandidatePairs, ctx: MatchContext, seconds: dict):
    """The local features of the queries in ``pairs`` and of every reference (resumable stores)."""
    config = ctx.extract if ctx.extract is not None else ExtractConfig()
    out = {}
    for split, source, ids in (("query", ctx.queries, pairs.queries()),
                               ("reference", ctx.references, None)):
        t = time.perf_counter()
        n = len(source) if ids is None else len(ids)
        out[split] = extract_local(model, source, ids, ctx.folder(split), split, config,
                                   progress=ctx.bar(f"local features ({split})", n))
        seconds[f"extract_{split}"] = round(time.perf_counter() - t, 3)
    return out["query"], out["reference"]


def usable(fs, min_keypoints: int) -> np.ndarray:
    """(n,) bool: the images with at least ``min_keypoints`` keypoints (imgFp skips those under 10)."""
    return fs.counts >= int(min_keypoints)


def _subset(fs, keep: np.ndarray):
    """Offsets and descriptors of the kept images only: (offsets (n' + 1,), rows (m',))."""
    counts = np.where(keep, fs.counts, 0)
    rows = np.flatnonzero(np.repeat(keep, fs.counts))
    return np.r_[0, np.cumsum(counts[keep])].astype(np.int64), rows


def kept_descriptors(fs, min_keypoints: int = 10) -> np.ndarray:
    """(m', d) descriptors of the images with at least ``min_keypoints`` keypoints, in store order."""
    return np.asarray(fs.descriptors)[_subset(fs, usable(fs, min_keypoints))[1]]


def vote_pairs(fq, fb, rules: VoteRules = VoteRules(), search: str = "exact", backend: str = "numpy",
               dtype: str = "float16", min_keypoints: int = 10, ann: dict | None = None,
               neighbours: tuple | None = None) -> dict:
    """imgFp's local branch from the features alone: the accepted (query, reference) of each query.

    Args:
        fq, fb: query and reference :class:`~imsim_lab.features.localstore.LocalFeatureSet`.
        search: ``exact`` (:func:`exact_knn` with ``backend``, ``dtype``) or an approximate kind of
            :func:`build_ann` (``ivf``, ``hnsw``, ``ivfpq``; ``ann``: its keyword arguments).
        min_keypoints: images with fewer keypoints are skipped (counted in ``skipped``).
        neighbours: (D, I) of a search already made over the kept keypoints (:func:`kept_descriptors`),
            instead of searching again.

    Returns:
        dict with ``query_ids``, ``reference_ids``, ``votes``, ``runner_up``, ``mean_distance``
        (accepted pairs only), ``skipped`` {"query", "reference"}, ``seconds`` {"search"}.
    """
    kq, kb = usable(fq, min_keypoints), usable(fb, min_keypoints)
    qoff, qrows = _subset(fq, kq)
    boff, brows = _subset(fb, kb)
    qids, bids = np.asarray(fq.ids)[kq], np.asarray(fb.ids)[kb]
    xq, xb = np.asarray(fq.descriptors)[qrows], np.asarray(fb.descriptors)[brows]
    t = time.perf_counter()
    if neighbours is not None:
        D, I = neighbours
    elif len(xq) == 0 or len(xb) == 0:
        D, I = np.zeros((len(xq), 1), np.float32), np.full((len(xq), 1), -1, np.int64)
    elif search == "exact":
        D, I = exact_knn(xq, xb, 1, backend, dtype)
    else:
        D, I = build_ann(xb, search, **(ann or {})).search(xq, 1)
    secs = time.perf_counter() - t
    v = vote(qoff, D, I, keypoint_owner(boff), rules)
    a = v.accepted
    return {"query_ids": qids[v.query[a]], "reference_ids": bids[v.reference[a]], "votes": v.votes[a],
            "runner_up": v.runner_up[a], "mean_distance": v.mean_distance[a],
            "skipped": {"query": int((~kq).sum()), "reference": int((~kb).sum())},
            "seconds": {"search": round(secs, 3)}, "keypoints": {"query": int(len(xq)), "reference": int(len(xb))}}


def cached_neighbours(fq, fb, folder, backend: str = "numpy", dtype: str = "float16", min_keypoints: int = 10):
    """The exact nearest reference keypoint of every kept query keypoint, ``(D, I)`` as
    :func:`vote_pairs` takes them (``neighbours=``), kept in ``folder`` as
    ``neighbours_<key>.npz``: the key is the sha256 of the kept descriptors of both sides and the
    search settings, so a re-run of the same features (a forced re-run, a second method over the
    same matcher stores) reads the search back and another set of features never does. Returns
    ((D, I), the seconds the search took when it was made, whether it was read back now)."""
    import hashlib
    import json
    from pathlib import Path

    from ..atomic import atomic_write_npz

    xq, xb = kept_descriptors(fq, min_keypoints), kept_descriptors(fb, min_keypoints)
    h = hashlib.sha256(json.dumps(["exact", backend, dtype, int(min_keypoints), xq.shape, str(xq.dtype), xb.shape,
                                   str(xb.dtype)]).encode())
    for a in (xq, xb):
        h.update(np.ascontiguousarray(a).view(np.uint8).ravel())
    path = Path(folder) / f"neighbours_{h.hexdigest()[:24]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return (z["D"], z["I"]), float(z["seconds"]), True
    t = time.perf_counter()
    if len(xq) == 0 or len(xb) == 0:
        D, I = np.zeros((len(xq), 1), np.float32), np.full((len(xq), 1), -1, np.int64)
    else:
        D, I = exact_knn(xq, xb, 1, backend, dtype)
    secs = time.perf_counter() - t
    atomic_write_npz(path, D=np.asarray(D), I=np.asarray(I), seconds=np.float64(secs))
    return (np.asarray(D), np.asarray(I)), secs, False


def _lookup(pairs: CandidatePairs, q: np.ndarray, r: np.ndarray, values: np.ndarray, fill=0.0) -> np.ndarray:
    """(n,) value of each candidate pair found among the pairs (q, r), ``fill`` elsewhere."""
    table = {(str(a), str(b)): v for a, b, v in zip(q, r, values)}
    return np.array([table.get((str(a), str(b)), fill) for a, b in zip(pairs.query_ids, pairs.reference_ids)],
                    dtype=np.float64)


def _scored_pairs(pairs: CandidatePairs, q, r) -> CandidatePairs:
    """The pairs a matcher scores: under ``candidates.k = "all"`` the shortlist plus the pairs its
    branches recalled (``q``, ``r``), else the candidate list it was given."""
    return found_pairs(pairs, q, r) if pairs.all_references else pairs


def _own(given: CandidatePairs, scored: CandidatePairs):
    return scored if given.all_references else None


def _rules(min_votes, single_min_votes, max_mean_distance) -> VoteRules:
    return VoteRules(int(min_votes), int(single_min_votes), float(max_mean_distance))


@MATCHERS.register("sift_vote")
class VoteMatcher(Matcher):
    """imgFp's local branch: keypoint search over all references, the vote, then pair scoring.

    A pair gets the imgFp pair score (ratio-test matches, max with the mirrored query) when the vote
    accepted it, else 0.0; with ``verify=False`` it gets its votes instead.

    Args:
        features, max_keypoints: the local-feature model (``rootsift`` as imgFp; 0 = no cap).
        search: ``exact`` or ``ivf`` / ``hnsw`` / ``ivfpq``; backend, dtype: of the exact search.
        min_votes, single_min_votes, max_mean_distance: :class:`VoteRules`.
        min_keypoints: images with fewer are skipped. ratio, flip: the pair scoring.
    """

    def __init__(self, features: str = "rootsift", max_keypoints: int = 0, search: str = "exact",
                 backend: str = "numpy", dtype: str = "float16", min_votes: int = 3, single_min_votes: int = 5,
                 max_mean_distance: float = 8000.0, min_keypoints: int = 10, verify: bool = True,
                 ratio: float = IMGFP_RATIO, flip: bool = True):
        self.model = create_local_model(features, max_keypoints=int(max_keypoints))
        self.rules = _rules(min_votes, single_min_votes, max_mean_distance)
        self.search, self.backend, self.dtype = search, backend, dtype
        self.min_keypoints, self.verify, self.ratio, self.flip = int(min_keypoints), bool(verify), float(ratio), flip

    own_search = True

    def score(self, pairs: CandidatePairs, ctx: MatchContext) -> MatchResult:
        seconds: dict = {}
        fq, fb = features_for(self.model, pairs, ctx, seconds)
        v = vote_pairs(fq, fb, self.rules, self.search, self.backend, self.dtype, self.min_keypoints)
        seconds.update(v["seconds"])
        given = pairs
        pairs = _scored_pairs(pairs, v["query_ids"], v["reference_ids"])
        votes = _lookup(pairs, v["query_ids"], v["reference_ids"], v["votes"])
        scores = votes.copy()
        counts = np.zeros(len(pairs), np.int64)
        rec = votes > 0
        if self.verify and rec.any():
            t = time.perf_counter()
            idx = np.flatnonzero(rec)
            counts[idx] = pair_counts(fq, fb, fq.positions(pairs.query_ids[idx]),
                                      fb.positions(pairs.reference_ids[idx]), self.ratio, self.flip)
            seconds["verify"] = round(time.perf_counter() - t, 3)
            scores = np.where(rec, counts.astype(np.float64), 0.0)
        report = {"features": self.model.config.name, "rules": vars(self.rules), "search": self.search,
                  "accepted": int(len(v["votes"])), "recalled_pairs": int(rec.sum()), "skipped": v["skipped"],
                  "keypoints": v["keypoints"], "seconds": seconds}
        return MatchResult(scores, {"votes": votes.astype(np.int64), "n_matches": counts}, report,
                           _own(given, pairs))


def bow_pairs(voc: Vocabulary, inv: InvertedFile, wq, top: int = 1) -> dict:
    """The ``top`` references of each query by tf-idf cosine: ``query_ids``, ``reference_ids``, ``scores``."""
    S, J = inv.search(wq, top)
    qi, c = np.nonzero(J >= 0)
    return {"query_ids": np.asarray(wq.ids)[qi], "reference_ids": np.asarray(inv.ids)[J[qi, c]],
            "scores": S[qi, c].astype(np.float64)}


def spatial_scores(wq, wb, fq, fb, q_ids, r_ids, threshold: float = 4.0) -> np.ndarray:
    """(n,) RANSAC inliers of the word matches (:func:`word_matches`) of each pair (q_ids, r_ids)."""
    qp, bp = fq.positions(q_ids), fb.positions(r_ids)
    out = np.zeros(len(qp), np.int64)
    for n, (i, j) in enumerate(zip(qp, bp)):
        if i < 0 or j < 0:
            continue
        a = slice(wq.offsets[i], wq.offsets[i + 1])
        b = slice(wb.offsets[j], wb.offsets[j + 1])
        iq, ib = word_matches(wq.words[a], wb.words[b])
        out[n] = ransac_inliers(fq.features(int(i)).geometry[iq, :2], fb.features(int(j)).geometry[ib, :2],
                                threshold)
    return out


@MATCHERS.register("bow_tfidf")
class BowMatcher(Matcher):
    """Visual words (faiss k-means on the reference keypoints) and a tf-idf inverted file: the
    ``top`` references of each query by cosine, optionally re-ranked by the RANSAC inliers of their
    shared words (``spatial``: score = inliers + cosine, the cosine in [0, 1] breaking ties).

    Args:
        features, max_keypoints, min_keypoints: as ``sift_vote`` (the same keypoints).
        words: vocabulary size k; niter, max_train, seed: the k-means.
        top: references kept per query; spatial: re-rank them by spatial verification.
    """

    def __init__(self, features: str = "rootsift", max_keypoints: int = 0, min_keypoints: int = 10,
                 words: int = 1024, niter: int = 20, max_train: int = 200_000, seed: int = 0, top: int = 1,
                 spatial: bool = False):
        self.model = create_local_model(features, max_keypoints=int(max_keypoints))
        self.min_keypoints, self.words, self.niter = int(min_keypoints), int(words), int(niter)
        self.max_train, self.seed, self.top, self.spatial = int(max_train), int(seed), int(top), bool(spatial)

    own_search = True

    def vocabulary(self, fb, folder) -> Vocabulary:
        """Trained once per reference store and vocabulary setting, cached in ``folder``."""
        name = (f"{self.model.config.fingerprint()}_k{self.words}_s{self.seed}_i{self.niter}_t{self.max_train}"
                f"_m{self.min_keypoints}")
        path = folder / f"vocabulary_{name}.npz"
        if path.is_file():
            voc = Vocabulary.load(path)
            voc.check(fb.meta, str(path))
            return voc
        keep = np.repeat(usable(fb, self.min_keypoints), fb.counts)
        voc = train_vocabulary(np.asarray(fb.descriptors)[keep], self.words, self.niter, self.max_train, self.seed,
                               fb.meta)
        voc.save(path)
        return voc

    def score(self, pairs: CandidatePairs, ctx: MatchContext) -> MatchResult:
        seconds: dict = {}
        fq, fb = features_for(self.model, pairs, ctx, seconds)
        t = time.perf_counter()
        voc = self.vocabulary(fb, ctx.folder("reference"))
        seconds["vocabulary"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        wq, wb = voc.assign_set(fq), voc.assign_set(fb)
        kq, kb = usable(fq, self.min_keypoints), usable(fb, self.min_keypoints)
        wb_kept = _keep_words(wb, kb)
        inv = InvertedFile.build(wb_kept, voc.k)
        res = bow_pairs(voc, inv, _keep_words(wq, kq), self.top)
        seconds["search"] = round(time.perf_counter() - t, 3)
        given = pairs
        pairs = _scored_pairs(pairs, res["query_ids"], res["reference_ids"])
        cos = _lookup(pairs, res["query_ids"], res["reference_ids"], res["scores"], fill=-1.0)
        rec = cos >= 0
        scores = np.where(rec, cos, 0.0)
        inl = np.zeros(len(pairs), np.int64)
        if self.spatial and rec.any():
            idx = np.flatnonzero(rec)
            inl[idx] = spatial_scores(wq, wb, fq, fb, pairs.query_ids[idx], pairs.reference_ids[idx])
            scores = np.where(rec, inl + np.clip(cos, 0, 1) * 0.999, 0.0)
        report = {"features": self.model.config.name, "words": voc.k, "top": self.top, "spatial": self.spatial,
                  "recalled_pairs": int(rec.sum()), "index_bytes": inv.nbytes,
                  "skipped": {"query": int((~kq).sum()), "reference": int((~kb).sum())}, "seconds": seconds}
        return MatchResult(scores, {"cosine": np.maximum(cos, 0.0), "inliers": inl}, report, _own(given, pairs))


def _keep_words(ws, keep: np.ndarray):
    counts = np.diff(ws.offsets)
    rows = np.repeat(keep, counts)
    return WordSet(np.asarray(ws.ids)[keep], np.r_[0, np.cumsum(counts[keep])].astype(np.int64), ws.words[rows])


def crop_features(model, ctx: MatchContext, query_ids, det, digest: str, threshold: float, seconds: dict):
    """The overlay detector's crops of the queries as a local-feature set (crop-local branch).

    The detector ``det`` (an :class:`~imsim_lab.features.detector.OverlayNet`; ``digest``: its
    checkpoint's sha256, :func:`~imsim_lab.features.detector.checkpoint_digest`) runs on every
    query; imgFp's filter (:func:`~imsim_lab.features.detector.keep_boxes`, confidence over
    ``threshold``) keeps at most one box per query, and the kept crops' features are extracted into
    the query folder (a split named after the checkpoint's sha256 and the threshold: resumable, never
    mixed with another detector's). Returns (features of the crops, ids are the query ids; the
    (n, 4) kept boxes, NaN where none; detection counts).
    """
    from ..features import detector as D

    t = time.perf_counter()
    qids = np.asarray(query_ids).astype(str)
    boxes, conf, sizes = D.detect_source(det, ctx.queries, qids)
    ok = ~np.isnan(boxes).any(1)
    keep = np.zeros(len(qids), bool)
    if ok.any():
        keep[ok] = D.keep_boxes(boxes[ok], conf[ok], threshold, sizes[ok])
    seconds["detect"] = round(time.perf_counter() - t, 3)
    tag = f"{digest[:16]}_t{float(threshold):g}"
    config = ctx.extract if ctx.extract is not None else ExtractConfig()
    src = D.crop_source(ctx.queries, qids[keep], boxes[keep], tag)
    t = time.perf_counter()
    fc = extract_local(model, src, None, ctx.folder("query"), f"crops_{tag}", config,
                       progress=ctx.bar("local features (crops)", int(keep.sum())))
    seconds["extract_crops"] = round(time.perf_counter() - t, 3)
    kept = np.where(keep[:, None], boxes, np.nan)
    return fc, kept, {"queries": int(len(qids)), "crops": int(keep.sum()), "sha256": digest,
                      "threshold": float(threshold)}


@MATCHERS.register("imgfp")
class ImgfpMatcher(VoteMatcher):
    """imgFp's merge of its three recall branches (``match_score/merge_score.py``):

    * **global**: the candidate run's top ``global_k`` reference(s) of each query (imgFp: 1);
    * **local**: the accepted vote of the query's keypoints (:func:`vote_pairs`);
    * **crop-local** (when ``detector`` names a checkpoint of
      :class:`~imsim_lab.features.detector.OverlayNet`): the same vote on the detector's crop of the
      query (``crop_threshold``: imgFp's 0.50 for its local branch).

    A recalled pair's score is the sum over the branches that recalled it of its pair score
    (ratio-test matches with the flip check): the original query's features for the global and
    local branches, the crop's for the crop-local branch. Pairs recalled by no branch score 0.0.
    """

    def __init__(self, global_k: int = 1, detector: str = "", crop_threshold: float = 0.5, **kw):
        super().__init__(**kw)
        self.global_k = int(global_k)
        self.detector, self.crop_threshold = str(detector or ""), float(crop_threshold)
        self.shortlist = self.global_k
        self._det = self._digest = None
        if self.detector:  # a checkpoint that is missing or of another shape: one line, before any work
            from ..features.detector import OverlayNet, checkpoint_digest

            self._digest = checkpoint_digest(self.detector)
            self._det = OverlayNet.load(self.detector)

    def _vote(self, fq, fb, ctx: MatchContext, cached: dict, name: str) -> dict:
        """:func:`vote_pairs`; an exact search is kept in the query folder (:func:`cached_neighbours`):
        ``seconds.search`` is then the time the search took when it was made, and ``cached[name]``
        says whether it was read back."""
        if self.search != "exact":
            return vote_pairs(fq, fb, self.rules, self.search, self.backend, self.dtype, self.min_keypoints)
        nb, secs, cached[name] = cached_neighbours(fq, fb, ctx.folder("query"), self.backend, self.dtype,
                                                   self.min_keypoints)
        v = vote_pairs(fq, fb, self.rules, self.search, self.backend, self.dtype, self.min_keypoints, neighbours=nb)
        v["seconds"]["search"] = round(secs, 3)
        return v

    def score(self, pairs: CandidatePairs, ctx: MatchContext) -> MatchResult:
        seconds: dict = {}
        cached: dict = {}
        fq, fb = features_for(self.model, pairs, ctx, seconds)
        v = self._vote(fq, fb, ctx, cached, "local")
        seconds["search"] = v["seconds"]["search"]
        fc, crop_report, crop_box = None, None, {}
        cq, cr = np.zeros(0, str), np.zeros(0, str)
        if self.detector:
            fc, kept, crop_report = crop_features(self.model, ctx, pairs.queries(), self._det, self._digest,
                                               self.crop_threshold, seconds)
            vc = self._vote(fc, fb, ctx, cached, "crop_local")
            seconds["search_crops"] = vc["seconds"]["search"]
            cq, cr = vc["query_ids"], vc["reference_ids"]
            crop_box = {q: ",".join(f"{v:.4f}" for v in b) for q, b in zip(pairs.queries(), kept)
                        if not np.isnan(b).any()}
            crop_report |= {"accepted": int(len(cq)), "skipped": vc["skipped"]["query"]}
        given = pairs
        pairs = _scored_pairs(pairs, np.r_[v["query_ids"].astype(str), cq.astype(str)],
                              np.r_[v["reference_ids"].astype(str), cr.astype(str)])
        local = _lookup(pairs, v["query_ids"], v["reference_ids"], np.ones(len(v["votes"]))) > 0
        crop_local = _lookup(pairs, cq, cr, np.ones(len(cq))) > 0
        ranks = np.asarray(pairs.ranks)
        glob = (ranks >= 0) & (ranks < self.global_k)
        t = time.perf_counter()
        counts = np.zeros(len(pairs), np.int64)
        idx = np.flatnonzero(glob | local)
        if len(idx):
            counts[idx] = pair_counts(fq, fb, fq.positions(pairs.query_ids[idx]),
                                      fb.positions(pairs.reference_ids[idx]), self.ratio, self.flip)
        crop_counts = np.zeros(len(pairs), np.int64)
        idx = np.flatnonzero(crop_local)
        if len(idx):
            crop_counts[idx] = pair_counts(fc, fb, fc.positions(pairs.query_ids[idx]),
                                           fb.positions(pairs.reference_ids[idx]), self.ratio, self.flip)
        seconds["verify"] = round(time.perf_counter() - t, 3)
        scores = (counts * (glob.astype(np.int64) + local) + crop_counts).astype(np.float64)
        report = {"features": self.model.config.name, "rules": vars(self.rules), "global_k": self.global_k,
                  "recalled": {"global": int(glob.sum()), "local": int(local.sum()),
                               "crop_local": int(crop_local.sum()), "both": int((glob & local).sum())},
                  "skipped": v["skipped"], "keypoints": v["keypoints"], "crops": crop_report, "seconds": seconds,
                  "search_read_back": cached}
        votes = _lookup(pairs, v["query_ids"], v["reference_ids"], v["votes"]).astype(np.int64)
        extras = {"n_matches": counts, "global": glob, "local": local, "votes": votes}
        if self.detector:
            # the explorer's pair view draws the crop (the query view of the crop-local branch)
            box_q = np.array([crop_box.get(q, "") if c else "" for q, c in zip(pairs.query_ids, crop_local)], object)
            extras |= {"crop_local": crop_local, "n_matches_crop": crop_counts, "box_q": box_q}
        return MatchResult(scores, extras, report, _own(given, pairs))


def _cands(method: str) -> dict:
    return {"candidates.method": method, "candidates.k": ALL, "candidates.budget": None}


_VOTE = {"features": "rootsift", "max_keypoints": 0, "search": "exact", "backend": "numpy", "dtype": "float16",
         "min_votes": 3, "single_min_votes": 5, "max_mean_distance": 8000.0, "min_keypoints": 10,
         "ratio": IMGFP_RATIO, "flip": True}
METHODS.add("sift_vote", MethodSpec(
    "sift_vote", track="matching", matcher="sift_vote", params={**_cands("pdq"), **_VOTE, "verify": True},
    description="imgFp's local branch: every RootSIFT keypoint (short side 300) searched among all reference "
                "keypoints, votes accepted by imgFp's rules, accepted pairs scored by ratio-test matches with "
                "the flip check; every reference is a candidate (candidates.k='all'; candidates.method is not "
                "used for recall)",
    paper=_PAPER))
METHODS.add("bow_tfidf", MethodSpec(
    "bow_tfidf", track="matching", matcher="bow_tfidf",
    params={**_cands("pdq"), "features": "rootsift", "max_keypoints": 0, "min_keypoints": 10, "words": 1024,
            "niter": 20, "max_train": 200_000, "seed": 0, "top": 1, "spatial": False},
    description="the same keypoints as sift_vote encoded as visual words (faiss k-means), top reference per "
                "query by tf-idf cosine, optional RANSAC on shared words",
    paper="Sivic & Zisserman, Video Google, ICCV 2003; open question of " + _PAPER))
METHODS.add("imgfp", MethodSpec(
    "imgfp", track="matching", matcher="imgfp",
    params={**_cands("sscd"), **_VOTE, "global_k": 1, "detector": "", "crop_threshold": 0.5},
    description="imgFp: global top-1 (candidates.method, SSCD), local voting and, with detector= an overlay "
                "detector checkpoint, crop-local voting on its crops; each recalled pair scored by ratio-test "
                "matches (flip) summed over the branches",
    paper=_PAPER))
