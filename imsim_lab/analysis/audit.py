"""A ground-truth audit: copies the ground truth does not list.

The organisers of ISC2021 found that DISC21 was not de-duplicated enough: participants' models
retrieved copies the ground truth did not list, some genuine (bursts of a camera, the same object
shot twice), some in a grey zone (Papakipos et al., "Results and findings of the 2021 Image
Similarity Challenge", PMLR 176, 2022, section 5). This module looks for the same two symptoms in
any benchmark folder, with one descriptor run and local verification:

1. **near-duplicate pairs** among the references, and between references and training images:
   each reference's ``k`` nearest neighbours by cosine similarity of the run's descriptors
   (``features/``), the ``max_pairs`` most similar pairs of each kind verified with SIFT matches that
   pass Lowe's ratio test (the local features and ratio test of the ``sift`` matcher:
   :mod:`imsim_lab.features.local`, :mod:`imsim_lab.features.localmatch`, short side 300) and agree
   with one homography (OpenCV's RANSAC); a pair with at least
   ``min_matches`` such matches is *confirmed*;
2. **suspect false positives**: the run's confident false positives (a wrong top-1 scored at or
   above its P90 threshold) whose retrieved reference is a confirmed near-duplicate of the true
   reference, or, verified directly, of the query's source image (the original a query without a
   match was made from).

On disc-synth the truth of (1) is known: references of one ``sibling_group`` (another shot of a
scene, planted on purpose) are the near-duplicates the audit should find, and a query without a
match made from a sibling of a reference (a *hard negative*) is the suspect false positive it
should flag. :func:`score_against_siblings` measures precision and recall against them.

Functions take arrays and the benchmark; nothing is printed and nothing is written except by
:func:`write_suspects`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

SUSPECT_COLUMNS = ("kind", "image_a", "image_b", "similarity", "n_matches", "evidence", "query_id", "planted")


@dataclass(frozen=True)
class AuditConfig:
    """Settings of the audit (module docstring).

    Attributes:
        k: neighbours mined per reference. max_pairs: descriptor candidates verified per kind.
        min_similarity: cosine below which a candidate is not verified.
        ratio: Lowe's ratio. min_matches: RANSAC-consistent SIFT matches that confirm a pair (on disc-synth
            `tiny` unrelated references reach at most 12, planted siblings 99 to 848).
        training: also mine reference-training pairs. max_false_positives: confident false
            positives verified (most confident first).
    """

    k: int = 3
    max_pairs: int = 200
    min_similarity: float = 0.3
    ratio: float = 0.8
    min_matches: int = 25
    training: bool = True
    max_false_positives: int = 200


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def mine_pairs(xb: np.ndarray, rids, xt: np.ndarray | None = None, tids=None, k: int = 3,
               max_pairs: int = 200, min_similarity: float = 0.3) -> pd.DataFrame:
    """Candidate near-duplicate pairs by cosine similarity of descriptors.

    Shapes: ``xb`` (nb, d) with ids ``rids``; ``xt`` (nt, d) with ``tids`` (optional).
    Returns columns kind ("reference-reference" | "reference-training"), image_a, image_b (a
    reference; a < b for two references), similarity; at most ``max_pairs`` of each kind, most
    similar first.
    """
    from ..search import knn_numpy

    rids = np.asarray(rids, dtype=object)
    xb = _unit(xb)
    parts = []
    if len(xb) > 1:
        D, I = knn_numpy(xb, xb, min(k + 1, len(xb)), metric="ip")
        a = np.repeat(np.arange(len(xb)), I.shape[1])
        b, s = I.ravel(), D.ravel()
        ok = (b >= 0) & (a != b)
        lo, hi = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
        df = pd.DataFrame({"a": lo, "b": hi, "similarity": s[ok]}).drop_duplicates(["a", "b"])
        parts.append(pd.DataFrame({"kind": "reference-reference", "image_a": rids[df["a"]], "image_b": rids[df["b"]],
                                   "similarity": df["similarity"].to_numpy(float)}))
    if xt is not None and len(xt) and len(xb):
        D, I = knn_numpy(xb, _unit(xt), min(k, len(xt)), metric="ip")
        a = np.repeat(np.arange(len(xb)), I.shape[1])
        parts.append(pd.DataFrame({"kind": "reference-training", "image_a": rids[a],
                                   "image_b": np.asarray(tids, dtype=object)[I.ravel()],
                                   "similarity": D.ravel().astype(float)}))
    if not parts:
        return pd.DataFrame(columns=["kind", "image_a", "image_b", "similarity"])
    df = pd.concat(parts, ignore_index=True)
    df = df[df["similarity"] >= min_similarity].sort_values("similarity", ascending=False, kind="stable")
    return df.groupby("kind", sort=False).head(max_pairs).reset_index(drop=True)


class LocalVerifier:
    """SIFT match counts of image pairs; each image's keypoints are computed once."""

    def __init__(self, path_of: Callable[[str], Path], ratio: float = 0.8):
        self.path_of, self.ratio = path_of, ratio
        self._feats: dict[str, tuple] = {}

    def features(self, image_id: str):
        if image_id not in self._feats:
            from PIL import Image

            from .report.pairs import local_features

            try:
                with Image.open(self.path_of(image_id)) as im:
                    self._feats[image_id] = local_features(im)
            except (OSError, ValueError, KeyError):
                self._feats[image_id] = (np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
        return self._feats[image_id]

    def n_matches(self, a: str, b: str) -> int:
        """Ratio-test matches of (a, b) that one homography explains (RANSAC, 4-pixel threshold on
        the images at short side 300): unrelated textured images pass the ratio test by chance
        tens of times, but those matches agree with no single geometry."""
        import cv2

        from ..features.localmatch import ratio_matches

        (xa, da), (xb, db) = self.features(a), self.features(b)
        ia, ib = ratio_matches(da, db, self.ratio)
        if len(ia) < 4:
            return 0
        _, mask = cv2.findHomography(xa[ia], xb[ib], cv2.RANSAC, 4.0)
        return int(mask.sum()) if mask is not None else 0


def verify_pairs(pairs: pd.DataFrame, verifier: LocalVerifier, min_matches: int,
                 progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """``pairs`` with ``n_matches`` and ``confirmed`` (n_matches >= min_matches)."""
    out = pairs.copy()
    counts = []
    for a, b in zip(out["image_a"], out["image_b"]):
        counts.append(verifier.n_matches(a, b))
        if progress:
            progress(1)
    out["n_matches"] = np.array(counts, np.int64)
    out["confirmed"] = out["n_matches"] >= min_matches
    return out


def planted_siblings(bench) -> set[frozenset]:
    """Pairs of images of one ``sibling_group`` (references.parquet, originals.parquet): the
    near-duplicates disc-synth plants. Empty for a benchmark that records none."""
    frames = []
    if bench.references is not None and "sibling_group" in bench.references:
        frames.append(bench.references[["reference_id", "sibling_group"]].rename(columns={"reference_id": "image_id"}))
    orig = Path(bench.root) / "originals.parquet"
    if orig.is_file():
        o = pd.read_parquet(orig)
        if "sibling_group" in o:
            frames.append(o[["image_id", "sibling_group"]])
    if not frames:
        return set()
    df = pd.concat(frames, ignore_index=True)
    df = df[df["sibling_group"].fillna("") != ""]
    out = set()
    for _, g in df.groupby("sibling_group"):
        ids = sorted(g["image_id"])
        out |= {frozenset((x, y)) for i, x in enumerate(ids) for y in ids[i + 1:]}
    return out


def suspect_false_positives(per_query: pd.DataFrame, source_of: dict, threshold: float | None,
                            confirmed: set[frozenset], verifier: LocalVerifier, min_matches: int,
                            max_rows: int = 200) -> pd.DataFrame:
    """The run's confident false positives (wrong top-1 scored >= ``threshold``; every wrong top-1
    when the threshold was never reached), most confident first, at most ``max_rows``, each with
    the evidence that its retrieved reference is a near-duplicate of the truth or of the query's
    source. Columns: :data:`SUSPECT_COLUMNS` minus planted, plus ``suspect`` (bool)."""
    pq = per_query
    wrong = (pq["top_reference_id"] != "") & (pq["top_reference_id"] != pq["reference_id"])
    if threshold is not None:
        wrong &= pq["top_score"] >= threshold
    fp = pq[wrong].sort_values("top_score", ascending=False, kind="stable").head(max_rows)
    rows = []
    for _, r in fp.iterrows():
        got = r["top_reference_id"]
        if r["has_match"]:
            other, what = r["reference_id"], "true reference"
        else:
            other, what = source_of.get(r["query_id"], "") or r["query_id"], "query's source"
        listed = frozenset((other, got)) in confirmed
        n = verifier.n_matches(other, got)
        rows.append({"kind": f"false positive ({what})", "image_a": other, "image_b": got,
                     "similarity": float(r["top_score"]), "n_matches": n,
                     "evidence": "confirmed near-duplicate pair" if listed else f"{n} SIFT matches",
                     "query_id": r["query_id"], "suspect": listed or n >= min_matches})
    cols = [c for c in SUSPECT_COLUMNS if c != "planted"] + ["suspect"]
    return pd.DataFrame(rows, columns=cols)


def score_against_siblings(found: pd.DataFrame, planted: set[frozenset], kinds=("reference-reference",),
                           universe: set[str] | None = None) -> dict:
    """Precision and recall of confirmed pairs against the planted siblings of the searched kinds.

    Args:
        found: :func:`verify_pairs` output (``confirmed`` column).
        planted: :func:`planted_siblings`. universe: the image ids searched (a planted pair
            counts towards recall only when both images were searched).

    Returns ``{"confirmed", "planted", "true_positives", "precision", "recall",
    "candidates_recall"}`` (NaN where undefined); candidates_recall is the share of planted pairs
    that the descriptor mining proposed at all.
    """
    f = found[found["kind"].isin(kinds)]
    pairs = [frozenset((a, b)) for a, b in zip(f["image_a"], f["image_b"])]
    conf = {p for p, c in zip(pairs, f["confirmed"]) if c}
    target = {p for p in planted if universe is None or p <= universe}
    tp = len(conf & target)
    return {"confirmed": len(conf), "planted": len(target), "true_positives": tp,
            "precision": tp / len(conf) if conf else float("nan"),
            "recall": tp / len(target) if target else float("nan"),
            "candidates_recall": len(set(pairs) & target) / len(target) if target else float("nan")}


@dataclass
class AuditResult:
    """What :func:`run_audit` found: verified pairs, suspect false positives, scores (when the
    benchmark plants siblings), the settings."""

    pairs: pd.DataFrame
    false_positives: pd.DataFrame
    scores: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def suspects(self) -> pd.DataFrame:
        """The rows to review, as one table (:data:`SUSPECT_COLUMNS`): confirmed pairs and suspect
        false positives; ``planted`` says whether disc-synth planted the pair (None: unknown)."""
        p = self.pairs[self.pairs["confirmed"]].assign(evidence=lambda d: d["n_matches"].astype(str) + " SIFT matches",
                                                        query_id="")
        f = self.false_positives[self.false_positives["suspect"]] if len(self.false_positives) else self.false_positives
        df = pd.concat([p, f], ignore_index=True)
        planted = self.config.get("_planted")
        df["planted"] = ([frozenset((a, b)) in planted for a, b in zip(df["image_a"], df["image_b"])]
                         if planted else None)
        return df[list(SUSPECT_COLUMNS)]


def run_audit(xb, rids, bench, per_query: pd.DataFrame | None = None, threshold: float | None = None,
              xt=None, tids=None, cfg: AuditConfig = AuditConfig(),
              progress: Callable[[int], None] | None = None) -> AuditResult:
    """The whole audit on one descriptor run's reference (and training) descriptors and, when
    given, its per-query table (for the false positives)."""
    verifier = LocalVerifier(bench.image_path, cfg.ratio)
    cand = mine_pairs(xb, rids, xt if cfg.training else None, tids, cfg.k, cfg.max_pairs, cfg.min_similarity)
    pairs = verify_pairs(cand, verifier, cfg.min_matches, progress)
    confirmed = {frozenset((a, b)) for a, b, c in zip(pairs["image_a"], pairs["image_b"], pairs["confirmed"]) if c}
    fps = pd.DataFrame(columns=[*SUSPECT_COLUMNS[:-1], "suspect"])
    if per_query is not None:
        source_of = dict(zip(bench.queries["query_id"], bench.queries["source_id"]))
        fps = suspect_false_positives(per_query, source_of, threshold, confirmed, verifier, cfg.min_matches,
                                      cfg.max_false_positives)
    planted = planted_siblings(bench)
    scores = {}
    if planted:
        scores["references"] = score_against_siblings(pairs, planted, universe=set(map(str, rids)))
        if len(fps):
            fl = fps["kind"] == "false positive (query's source)"
            is_pl = [frozenset((a, b)) in planted for a, b in zip(fps["image_a"], fps["image_b"])]
            sus = fps["suspect"].to_numpy(bool)
            pl = np.array(is_pl, bool)
            scores["false_positives"] = {
                "checked": int(len(fps)), "from_sources": int(fl.sum()), "suspects": int(sus.sum()),
                "planted": int(pl.sum()), "true_positives": int((sus & pl).sum()),
                "precision": float((sus & pl).sum() / sus.sum()) if sus.sum() else float("nan"),
                "recall": float((sus & pl).sum() / pl.sum()) if pl.sum() else float("nan")}
    return AuditResult(pairs, fps, scores, {**asdict(cfg), "_planted": planted})


def write_suspects(result: AuditResult, path: str | Path) -> Path:
    """The suspected pairs as CSV (:data:`SUSPECT_COLUMNS`), to review and fix a ground truth."""
    from ..atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, result.suspects().to_csv(index=False))
    return path
