"""The ``sift`` matcher: candidate pairs rescored by counting SIFT matches that pass Lowe's ratio test.

It is the local-verification step of imgFp (Sun et al., arXiv 2112.02373; docs/methods.md; sun-xl/ISC2021
``local_fea/source_code/src/match_score.cpp``) without the horizontal-flip retry and the
de-duplication of matches sharing a keypoint: local features of the images that appear in the
pairs are extracted (short side 300, :mod:`imsim_lab.features.local`) into resumable stores under the
run's work folder, then every pair is verified with :func:`~imsim_lab.features.localmatch.verify_pairs`.
"""

from __future__ import annotations

import time

import numpy as np

from ..features.extract import ExtractConfig
from ..features.local import create_local_model
from ..features.localmatch import verify_pairs
from ..features.localstore import extract_local
from .matchers import MATCHERS, CandidatePairs, MatchContext, Matcher, MatchResult


def rank_tie_break(scores: np.ndarray) -> np.ndarray:
    """``0.5 * rank / n`` of each descriptor score among all pairs: in [0, 0.5), increasing with the
    score, equal for equal scores (the rank counts the strictly lower scores).

    Shapes: scores (n,) -> (n,) float64.
    """
    s = np.asarray(scores, np.float64)
    if len(s) == 0:
        return np.zeros(0)
    return 0.5 * np.searchsorted(np.sort(s), s, side="left") / len(s)


@MATCHERS.register("sift")
class SiftVerifier(Matcher):
    """Score = number of query keypoints whose nearest reference descriptor passes the ratio test
    (or, with ``ransac``, the number of those matches consistent with one homography).

    With ``tie_break`` the score is ``count + rank_tie_break(descriptor score)``: the tie-break lies
    in [0, 0.5), so it never reorders different counts, and pairs with equal counts are ordered by
    the descriptor score that proposed them. A pair that cannot be verified (an unreadable image, a
    query without keypoints, a reference with fewer than 2) scores 0.0, the lowest score given.

    Args:
        features: a local-feature model of :data:`~imsim_lab.features.local.LOCAL_MODELS`
            (``sift``, ``rootsift``).
        ratio: Lowe's ratio (``d1 < ratio * d2``), in (0, 1].
        ransac: score by RANSAC inliers instead of matches.
        tie_break: add the descriptor tie-break above.
        max_keypoints: cap on keypoints per image (None: the model's, 0 = no cap as imgFp).
    """

    def __init__(self, features: str = "sift", ratio: float = 0.8, ransac: bool = False, tie_break: bool = True,
                 max_keypoints: int | None = None):
        if not 0 < float(ratio) <= 1:
            raise ValueError(f"ratio must be in (0, 1], not {ratio}")
        over = {} if max_keypoints is None else {"max_keypoints": int(max_keypoints)}
        self.model = create_local_model(features, **over)
        self.ratio, self.ransac, self.tie_break = float(ratio), bool(ransac), bool(tie_break)

    def score(self, pairs: CandidatePairs, ctx: MatchContext) -> MatchResult:
        """Rescore ``pairs``; see the class docstring. ``extras``: ``n_matches``, ``n_inliers``
        (with RANSAC), ``query_keypoints`` and ``reference_keypoints`` (-1: unreadable image)."""
        config = ctx.extract if ctx.extract is not None else ExtractConfig()
        seconds, feats = {}, {}
        # the queries' features: only those in the pairs; the references': all of them, so that one
        # store serves every run and robustness cell over the same reference set (ctx.folder)
        for split, source, ids in (("query", ctx.queries, np.unique(np.asarray(pairs.query_ids).astype(str))),
                                   ("reference", ctx.references, None)):
            t = time.perf_counter()
            n = len(source) if ids is None else len(ids)
            feats[split] = extract_local(self.model, source, ids, ctx.folder(split), split, config,
                                         progress=ctx.bar(f"local features ({split})", n))
            seconds[f"extract_{split}"] = round(time.perf_counter() - t, 3)
        fq, fb = feats["query"], feats["reference"]
        qpos, bpos = fq.positions(pairs.query_ids), fb.positions(pairs.reference_ids)
        v = verify_pairs(fq, fb, qpos, bpos, self.ratio, self.ransac, progress=ctx.bar("verification", len(pairs)))
        seconds["verify"] = round(v.seconds, 3)
        qk = np.where(qpos >= 0, fq.counts[np.maximum(qpos, 0)] if len(fq) else 0, -1)
        bk = np.where(bpos >= 0, fb.counts[np.maximum(bpos, 0)] if len(fb) else 0, -1)
        count = (v.n_inliers if self.ransac else v.n_matches).astype(np.float64)
        can = (qk > 0) & (bk >= 2)
        scores = count + (rank_tie_break(pairs.scores) if self.tie_break else 0.0)
        scores = np.where(can, scores, 0.0)
        extras = {"n_matches": v.n_matches, "query_keypoints": qk, "reference_keypoints": bk}
        if self.ransac:
            extras["n_inliers"] = v.n_inliers
        report = {
            "features": self.model.config.name, "model": self.model.config.to_dict(),
            "ratio": self.ratio, "ransac": self.ransac, "tie_break": self.tie_break,
            "pairs": len(pairs), "pairs_unverified": int((~can).sum()),
            "pairs_per_second": round(v.pairs_per_second, 1),
            "images": {"query": len(fq) + len(fq.failed), "reference": len(fb) + len(fb.failed)},
            "without_keypoints": {"query": int((fq.counts == 0).sum()), "reference": int((fb.counts == 0).sum())},
            "failed": {"query": [f["id"] for f in fq.failed], "reference": [f["id"] for f in fb.failed]},
            "keypoints_mean": {"query": float(fq.counts.mean()) if len(fq) else 0.0,
                               "reference": float(fb.counts.mean()) if len(fb) else 0.0},
            "seconds": seconds,
        }
        return MatchResult(scores, extras, report)
