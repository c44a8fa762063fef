"""The ``pairvit`` matcher: candidate pairs re-scored by SeungKee Jeon's pair classifier (matching track
2nd, arXiv 2111.09113; ``docs/methods.md``, "SeungKee Jeon (matching track, 2nd)"; the classifier is
:mod:`imsim_lab.train.pairvit`).

1. **first pass**: every candidate pair is scored with the query's whole image and its vertical halves
   (``first_views``: the paper scores whole-image candidates with the whole query and crop
   candidates with the half they came from; here every pair gets all of them), the models are
   averaged per view and the maximum over the views is the pair's first score;
2. **re-scoring**: the ``top`` best pairs of each query by first score (published: 100) are scored
   again with the 8 query views of :func:`~imsim_lab.features.views.pairvit_query` (whole, rotated 90,
   three vertical and three horizontal halves); each model takes its maximum over the views, the
   models are averaged;
3. **best only** (``best_only``, as published): the best reference of each query keeps its score; every
   other pair of the query gets its score minus 1, below every kept pair (a matcher scores every pair
   it is given, so "dropped" means "ranked after all best pairs").

A pair outside the ``top`` keeps its first score (the 8 views include the first views, so a re-scored
pair never scores below its first score). A pair with an unreadable image scores :data:`UNSCORED`.
Each image is decoded once per query chunk: a query once, as all its views. On CUDA the next chunk is
decoded on a background thread while the current one is scored (``prefetch``); on a CPU it is not: the
decoding threads would take the cores the classifier's own threads compute on (the trainer's loader
makes the same choice, :func:`imsim_lab.train.trainer.resolve_loader`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Sequence

import numpy as np

from ..errors import ImsimError
from ..features.views import VIEWS, apply_view
from .matchers import MATCHERS, CandidatePairs, MatchContext, Matcher, MatchResult
from .spec import METHODS, MethodSpec

#: the score of a pair whose query or reference cannot be read (below every score given)
UNSCORED = -2.0
PREFETCH_MODES = ("auto", "on", "off")
FIRST_VIEWS = ("whole", "left", "right", "vcenter")


def _paths(weights_path) -> list[str]:
    if isinstance(weights_path, (list, tuple)):
        return [str(p) for p in weights_path if str(p)]
    return [p.strip() for p in str(weights_path or "").split(",") if p.strip()]


def top_per_query(query_codes: np.ndarray, scores: np.ndarray, top: int, valid: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` best pairs of each query, and every pair's 0-based rank inside its query.

    Shapes: query_codes (n,) int, scores (n,), valid (n,) bool -> keep (n,) bool, ranks (n,) int64
    (ties: the earlier pair first; an invalid pair is ranked after the valid ones and never kept).
    """
    n = len(scores)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    s = np.where(valid, np.asarray(scores, np.float64), -np.inf)
    order = np.lexsort((np.arange(n), -s, query_codes))
    qs = np.asarray(query_codes)[order]
    start = np.flatnonzero(np.r_[True, qs[1:] != qs[:-1]]) if n else np.zeros(0, np.int64)
    ranks = np.empty(n, np.int64)
    ranks[order] = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    return (ranks < top) & valid, ranks


def best_only_scores(query_codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Every pair but the best of its query (ties: the earlier) lowered by 1. Shapes (n,) -> (n,)."""
    keep, _ = top_per_query(query_codes, scores, 1)
    return np.where(keep, scores, np.asarray(scores, np.float64) - 1.0)


def _at_least(need: tuple[int, int], w: int, h: int) -> tuple[int, int]:
    return need


class _Halves:
    """The matcher's preprocessing of one image: its halves (:func:`~imsim_lab.train.pairvit.pair_half`),
    of each of ``views`` (stacked, (v, h, w, 3)) or of the whole image ((h, w, 3)). A grayscale classifier
    asks for JPEGs decoded straight to luma (``decode_mode``, :func:`imsim_lab.features.dataset.read_image`):
    the chroma planes are neither decoded nor converted. With ``reduced`` a JPEG is decoded at the smallest
    DCT scale from which every view is still reduced to its half (``decode_size``,
    :func:`~imsim_lab.features.views.parent_size_for`): a 640 x 480 photo is decoded at 160 x 120 for
    112 x 56 halves, in full for the published 224 x 112."""

    def __init__(self, config, views=None, reduced: bool = True):
        self.config, self.views = config, views
        self.decode_mode = "L" if config.gray else "RGB"
        if reduced:
            from ..features.views import WHOLE, parent_size_for

            self.decode_size = partial(_at_least, parent_size_for(views or [WHOLE], config.width, config.height))

    def __call__(self, img):
        from ..train.pairvit import pair_half

        if self.views is None:
            return pair_half(img, self.config)
        return np.stack([pair_half(apply_view(img, v), self.config) for v in self.views])


class _Tally:
    """What :meth:`PairViTMatcher.score` fills chunk by chunk: per pair (first score, per-view scores,
    final score, re-scored, valid) and the run's counts (seconds per stage, images decoded, failures by
    id, classifier pairs)."""

    def __init__(self, n: int, views: int):
        self.first = np.full(n, np.nan)
        self.per_view = np.full((n, views), np.nan)
        self.final = np.full(n, UNSCORED)
        self.rescored = np.zeros(n, bool)
        self.valid = np.zeros(n, bool)
        self.seconds = {"decode": 0.0, "decode_work": 0.0, "first": 0.0, "rescore": 0.0}
        self.decoded = {"query": 0, "reference": 0}
        self.failed: dict = {"query": {}, "reference": {}}
        self.forwards = 0


@MATCHERS.register("pairvit")
class PairViTMatcher(Matcher):
    """Re-scoring by the pair classifier (see the module docstring).

    Args:
        weights_path: the ``weights.pt`` of ``imsim-lab train pairvit``; several (a list or
            comma-separated) are averaged as the published three models.
        backbone, height, width, gray, depth, embed_dim, num_heads, patch_size: the classifier
            (:class:`~imsim_lab.train.pairvit.PairViTConfig`); weights of another layout or shape are
            refused, naming the file.
        top: pairs per query re-scored with ``views`` (published 100).
        first_views: names of views of ``views`` used in the first pass.
        views: a registered view set (:data:`~imsim_lab.features.views.VIEWS`) of the re-scoring.
        best_only: keep the best reference per query (see the module docstring).
        batch_size: pairs per forward pass. amp: ``auto`` (bf16/fp16 on CUDA), ``off``, ``bf16``, ``fp16``.
        query_chunk: queries whose images are decoded together: memory is about (8 views x queries +
            their references) x height x width x 3 bytes (64 queries of 100 candidates at 224 x 112: 0.5 GB).
        threads: decoding threads.
        prefetch: ``auto`` (on with CUDA, off on a CPU), ``on`` or ``off``: decode the next query chunk
            while the current one is scored (two chunks in memory instead of one).
        reduced_decode: decode each JPEG at the smallest scale its halves need (see ``_Halves``); ``False``
            decodes every image in full (the training images are decoded in full).
    """

    def __init__(self, weights_path="", backbone: str = "vit_large_patch16_224", height: int = 224, width: int = 112,
                 gray: bool = True, depth: int | None = None, embed_dim: int | None = None,
                 num_heads: int | None = None, top: int = 100, first_views: Sequence[str] | str = FIRST_VIEWS,
                 views: str = "pairvit_query", best_only: bool = True, batch_size: int = 64, amp: str = "auto",
                 query_chunk: int = 64, threads: int = 2, patch_size: int | None = None, prefetch: str = "auto",
                 reduced_decode: bool = True):
        from ..train.pairvit import PairViTConfig

        self.paths = _paths(weights_path)
        self.config = PairViTConfig(backbone, int(height), int(width), bool(gray), depth, embed_dim, num_heads,
                                    patch_size=None if patch_size is None else int(patch_size))
        self.views = VIEWS.get(views)((1, 1))
        names = [v.name for v in self.views]
        first = [first_views] if isinstance(first_views, str) else list(first_views)
        bad = [f for f in first if f not in names]
        if bad or not first:
            raise ImsimError(f"pairvit: first view {bad[0] if bad else None!r} is not a view of {views!r} "
                             f"({', '.join(names)})")
        self.first = [names.index(f) for f in first]
        if int(top) < 1 or int(batch_size) < 1 or int(query_chunk) < 1:
            raise ImsimError("pairvit: top, batch_size and query_chunk must be >= 1")
        self.top, self.best_only, self.batch_size = int(top), bool(best_only), int(batch_size)
        self.amp, self.query_chunk, self.threads = amp, int(query_chunk), max(1, int(threads))
        if prefetch not in PREFETCH_MODES:
            raise ImsimError(f"pairvit: prefetch must be one of {', '.join(PREFETCH_MODES)}, not {prefetch!r}")
        self.prefetch, self.reduced_decode = prefetch, bool(reduced_decode)

    # -- the classifier over indexed pairs ----------------------------------------------------------

    def load(self, device: str):
        """The classifiers on ``device``, loaded once per matcher and device (a second ``score`` call
        reuses them: building and reading a ViT costs more than scoring a small batch), each taking pixel
        values 0-255 (:func:`~imsim_lab.train.pairvit.pixel_input`: the normalisation is in its weights)."""
        from ..train.pairvit import load_pairvit, pixel_input

        if not self.paths:
            raise ImsimError("pairvit: give the classifier's weights with -p weights_path=OUT/weights.pt "
                             "(made by `imsim-lab train pairvit`)")
        cache = self.__dict__.setdefault("_models", {})
        if device not in cache:
            cache.clear()
            cache[device] = [pixel_input(load_pairvit(p, self.config, device)) for p in self.paths]
        return cache[device]

    def forward(self, models, refs, qviews, r_rows: np.ndarray, q_rows: np.ndarray, device: str) -> np.ndarray:
        """Sigmoid scores of the pairs ``(refs[r_rows[k]], qviews[q_rows[k]])`` per model: (n, models).

        ``refs`` (a, 3, h, w) and ``qviews`` (b, 3, h, w): uint8 tensors on ``device``, channels first.
        """
        import torch

        from ..train.pairvit import pair_tensor
        from ..train.trainer import resolve_amp

        amp = resolve_amp(self.amp, device)
        out = np.empty((len(r_rows), len(models)), np.float32)
        ri = torch.as_tensor(np.asarray(r_rows, np.int64), device=device)
        qi = torch.as_tensor(np.asarray(q_rows, np.int64), device=device)
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=amp or torch.float32,
                                                    enabled=amp is not None):
            for a in range(0, len(r_rows), self.batch_size):
                x = pair_tensor(refs[ri[a:a + self.batch_size]], qviews[qi[a:a + self.batch_size]], self.config,
                                channels_first=True, normalise=False)
                for m, net in enumerate(models):
                    out[a:a + len(x), m] = torch.sigmoid(net(x).float()).reshape(-1).cpu().numpy()
        return out

    # -- images ---------------------------------------------------------------------------------------

    def _decode(self, source, ids, make):
        from ..features.dataset import ordered_threads

        ds = source.dataset(make, ids)
        got = list(ordered_threads(ds.__getitem__, range(len(ids)), self.threads, 4 * self.threads))
        failed = {str(ids[i]): err for i, arr, err in got if err is not None}
        return [arr for _, arr, _ in got], failed

    def _load_chunk(self, ctx: MatchContext, cq: np.ndarray, cr: np.ndarray) -> dict:
        """Decode the queries ``cq`` (all their views) and the references ``cr`` of one chunk: stacked
        uint8 arrays (a failed image is a black one, marked in ``qok``/``rok``) and the failures by id."""
        t = time.perf_counter()
        nv, h, w = len(self.views), self.config.height, self.config.width
        qarr, qfail = self._decode(ctx.queries, cq, _Halves(self.config, self.views, self.reduced_decode))
        rarr, rfail = self._decode(ctx.references, cr, _Halves(self.config, None, self.reduced_decode))
        return {"cq": cq, "cr": cr, "qfail": qfail, "rfail": rfail,
                "qok": np.array([a is not None for a in qarr], bool), "rok": np.array([a is not None for a in rarr], bool),
                "q": np.concatenate([a if a is not None else np.zeros((nv, h, w, 3), np.uint8) for a in qarr]),
                "r": np.stack([a if a is not None else np.zeros((h, w, 3), np.uint8) for a in rarr]),
                "seconds": time.perf_counter() - t}

    def _score_chunk(self, models, device, got: dict, chunk: np.ndarray, c0: int, qc: np.ndarray, rids: np.ndarray,
                     st: "_Tally", t: float) -> None:
        """Score the pairs ``chunk`` (indices into the pairs) of one decoded chunk ``got`` into ``st``:
        first pass, then the top pairs of each query with every view. ``t``: when the chunk was asked for
        (the wait for its images is ``seconds["decode"]``; the decoding itself ``seconds["decode_work"]``)."""
        import torch

        nv = len(self.views)
        first, per_view, final, seconds = st.first, st.per_view, st.final, st.seconds
        decoded, failed = st.decoded, st.failed
        decoded["query"] += len(got["cq"])
        decoded["reference"] += len(got["cr"])
        failed["query"].update(got["qfail"])
        failed["reference"].update(got["rfail"])
        # channels first once per image, not once per pair
        qv = torch.from_numpy(got["q"]).to(device).permute(0, 3, 1, 2).contiguous()
        rv = torch.from_numpy(got["r"]).to(device).permute(0, 3, 1, 2).contiguous()
        q_local = qc[chunk] - c0
        r_local = np.searchsorted(got["cr"], rids[chunk])
        ok = got["qok"][q_local] & got["rok"][r_local]
        st.valid[chunk] = ok
        seconds["decode"] += time.perf_counter() - t
        seconds["decode_work"] += got["seconds"]
        # first pass: mean over models per view, max over the first views
        t = time.perf_counter()
        sel = chunk[ok]
        nf = len(self.first)
        rr = np.repeat(r_local[ok], nf)
        qq = (np.repeat(q_local[ok], nf) * nv + np.tile(self.first, len(sel)))
        s = self.forward(models, rv, qv, rr, qq, device).mean(1).reshape(len(sel), nf)
        st.forwards += len(rr) * len(models)
        first[sel] = s.max(1)
        seconds["first"] += time.perf_counter() - t
        # re-scoring of the top pairs: max over all views per model, mean over models
        t = time.perf_counter()
        keep, _ = top_per_query(qc[chunk], np.nan_to_num(first[chunk], nan=-np.inf), self.top, ok)
        sel = chunk[keep]
        rr = np.repeat(r_local[keep], nv)
        qq = np.repeat(q_local[keep], nv) * nv + np.tile(np.arange(nv), len(sel))
        s = self.forward(models, rv, qv, rr, qq, device).reshape(len(sel), nv, len(models))
        st.forwards += len(rr) * len(models)
        per_view[sel] = s.mean(2)
        final[sel] = s.max(1).mean(1)
        st.rescored[sel] = True
        rest = chunk[ok & ~keep]
        final[rest] = first[rest]
        seconds["rescore"] += time.perf_counter() - t

    # -- scoring ----------------------------------------------------------------------------------------

    def score(self, pairs: CandidatePairs, ctx: MatchContext) -> MatchResult:
        """Score ``pairs`` (see the module docstring). ``extras``: ``first_score``, ``first_rank`` (0-based
        inside the query by first score), ``rescored``, ``best_view`` and ``view_<name>`` per view (NaN
        when not re-scored); report: ``pairs_per_second`` (classifier pairs = pairs x views x models, decoding
        included), ``candidate_pairs_per_second``, ``images_decoded_per_query``."""
        import torch

        n = len(pairs)
        qids, rids = np.asarray(pairs.query_ids).astype(str), np.asarray(pairs.reference_ids).astype(str)
        for what, src, ids in (("query", ctx.queries, qids), ("reference", ctx.references, rids)):
            try:
                src.positions(np.unique(ids))
            except ValueError:
                known = set(src.ids.tolist())
                first = next(i for i in ids if i not in known)
                raise ImsimError(f"pairvit: the candidate pairs name an unknown {what} {str(first)!r}") from None
        device = ctx.device or ("cuda" if torch.cuda.is_available() else "cpu")
        models = self.load(device)
        nv = len(self.views)
        st = _Tally(n, nv)
        qu, qc = np.unique(qids, return_inverse=True)
        bar = ctx.bar("pair classifier", len(qu))
        starts = list(range(0, len(qu), self.query_chunk))
        members = [np.flatnonzero((qc >= c0) & (qc < c0 + self.query_chunk)) for c0 in starts]  # pairs per chunk
        prefetch = self.prefetch == "on" or (self.prefetch == "auto" and device.startswith("cuda"))
        pool = ThreadPoolExecutor(1, thread_name_prefix="imsim-pairvit") if prefetch and len(starts) > 1 else None
        load = lambda k: self._load_chunk(ctx, qu[starts[k]:starts[k] + self.query_chunk],  # noqa: E731
                                          np.unique(rids[members[k]]))
        t_all = time.perf_counter()
        try:
            ahead = pool.submit(load, 0) if pool else None
            for k, c0 in enumerate(starts):
                t = time.perf_counter()
                if pool:  # this chunk was decoded while the previous one was scored; start the next one
                    got = ahead.result()
                    ahead = pool.submit(load, k + 1) if k + 1 < len(starts) else None
                else:
                    got = load(k)
                self._score_chunk(models, device, got, members[k], c0, qc, rids, st, t)
                if bar:
                    bar(len(got["cq"]))
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
        total = time.perf_counter() - t_all
        first, per_view, final, rescored, valid = st.first, st.per_view, st.final, st.rescored, st.valid
        seconds, decoded, failed, forwards = st.seconds, st.decoded, st.failed, st.forwards
        _, first_rank = top_per_query(qc, np.nan_to_num(first, nan=-np.inf), self.top, valid)
        if self.best_only:
            final = np.where(valid, best_only_scores(qc, np.where(valid, final, -np.inf)), UNSCORED)
        names = [v.name for v in self.views]
        best_view = np.where(rescored, np.array(names, dtype=object)[np.nan_to_num(per_view, nan=-1).argmax(1)], "")
        extras = {"first_score": first, "first_rank": np.where(valid, first_rank, -1), "rescored": rescored,
                  "best_view": best_view.astype(str), **{f"view_{nm}": per_view[:, k] for k, nm in enumerate(names)}}
        report = {
            "weights": self.paths, "models": len(models), "classifier": self.config.to_dict(),
            "layout": list(self.config.layout), "device": device, "top": self.top, "best_only": self.best_only,
            "first_views": [names[k] for k in self.first], "views": names, "prefetch": pool is not None,
            "reduced_decode": self.reduced_decode,
            "pairs": n, "pairs_rescored": int(rescored.sum()), "pairs_unscored": int((~valid).sum()),
            "classifier_pairs": int(forwards),
            "classifier_pairs_per_query": round(forwards / max(len(qu), 1), 2),
            "pairs_per_second": round(forwards / total, 1) if total > 0 else None,
            "candidate_pairs_per_second": round(n / total, 1) if total > 0 else None,
            "images_decoded": decoded,
            "images_decoded_per_query": round(sum(decoded.values()) / max(len(qu), 1), 2),
            "failed": {k: sorted(v) for k, v in failed.items()},
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
        }
        return MatchResult(final, extras, report)


METHODS.add("pairvit", MethodSpec(
    "pairvit", track="matching", matcher="pairvit",
    params={"candidates.method": "sscd", "candidates.k": 100, "candidates.budget": None, "candidates.views": None,
            "weights_path": "",
            "backbone": "vit_large_patch16_224", "height": 224, "width": 112, "gray": True, "depth": None,
            "embed_dim": None, "num_heads": None, "top": 100, "first_views": list(FIRST_VIEWS),
            "views": "pairvit_query", "best_only": True, "batch_size": 64, "amp": "auto", "query_chunk": 64,
            "threads": 2, "patch_size": None, "prefetch": "auto",
            "reduced_decode": True},
    description="top-k candidates of a descriptor run rescored by a ViT pair classifier on [reference | query] "
                "(each 224x112, grayscale): whole + vertical halves first, the top 100 per query again over 8 "
                "query views (max over views, mean over models), best reference per query kept; give "
                "weights_path= (imsim-lab train pairvit); crop candidates as published: -p candidates.views=full "
                "-p candidates.k=null (cpu, smoke: shorter lists)",
    paper="Jeon, 2nd Place Solution to Facebook AI Image Similarity Challenge: Matching Track, arXiv 2111.09113"))
