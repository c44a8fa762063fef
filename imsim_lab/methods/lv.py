"""The ``lv`` matcher: D2LV's local verification of candidate pairs, and the methods ``sscd+lv`` and ``d2lv``.

D2LV (Wang, Sun, Zhang, Yang, arXiv 2111.07090; ``docs/methods.md``, "D2LV (matching track, 1st)")
searches sub-images of the queries against the references and the queries against sub-images of
the references. Here every candidate pair (from a descriptor method, ``candidates.*``) is verified
that way:

1. **views**: each query of the pairs as its whole image plus the families of ``query_views``
   (``rotations`` 90/180/270, ``center`` [0.25, 0.75]², ``halves``: four overlapping half-size
   crops; :mod:`imsim_lab.features.views`; ``selective_search``: region proposals), the boxes of an overlay ``detector``
   (:mod:`imsim_lab.features.detector`, every box at confidence >= ``detector_threshold``; D2LV ran its
   YOLOv5 at 0.1) and, as an upper bound, the box of the source recorded in a disc-synth benchmark's
   ops (``oracle``, :mod:`imsim_lab.features.oracle`); each reference of the pairs as the 19 views of
   ``reference_views``. Views are made and embedded inside the extraction pipeline
   (:func:`~imsim_lab.features.viewstore.extract_views`), stored per side under the run's matcher
   folder (or ``view_cache``, shared between runs), keyed by the model, the images and the views. A
   view whose short side is under ``min_side`` pixels is not made (never upsampled from a few
   pixels) and is counted in the report.
2. **scoring** (:func:`imsim_lab.features.lvscore.verify`): both directions (``aq_or``, ``oq_ar``), each
   backbone's global top ``budget_per_query`` x queries view pairs per direction, the vote of
   ``vote_k`` backbones, the small-crop filter (``min_query_side``), the offset (-0.05) of query views
   other than the original and the boxes, the max over view pairs and directions; with ``scales``,
   AQ+OR again with every view embedded at each extra size, and the max over scales.
   With ``score_norm`` (D2LV's ``score_normalization.py``: factor 2, top 10, ``avg``; the preset
   ``SCORE_NORM_PRESETS["d2lv"]`` of :mod:`imsim_lab.methods.postprocess`, whose
   :func:`~imsim_lab.methods.postprocess.score_norm_bias` computes the term), each backbone also
   embeds the benchmark's training images (the background set, :attr:`MatchContext.training`) and
   every view pair scores ``q.r - factor * mean of the top n q.t`` over the training descriptors t,
   the term taken from the query view in AQ+OR and from the reference view in OQ+AR, before the
   budget and the vote.
3. A candidate pair with no view pair left scores below every verified pair: ``-2`` (``-2 - factor``
   with ``score_norm``) plus a tie-break in [0, 0.5) by its candidate score
   (:func:`~imsim_lab.methods.sift.rank_tie_break`), so D2LV's pairs come first and the rest keep
   the descriptor's order.

Selective-search proposals (D2LV's ``k = 10..``) are the query view family ``selective_search``
(:mod:`imsim_lab.features.proposals`, OpenCV's contrib module); not in the default families.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ImsimError
from ..features.lvscore import DIRECTIONS, OFFSET_EXEMPT, LVConfig, combine_sets, verify, vote_rule
from ..features.views import WHOLE, View, center, d2lv_halves, make_views, rotations
from .matchers import MATCHERS, CandidatePairs, MatchContext, Matcher, MatchResult
from .postprocess import SCORE_NORM_PRESETS, score_norm_bias
from .sift import rank_tie_break
from .spec import METHODS, MethodSpec

#: score of a candidate pair that local verification did not keep (plus a tie-break in [0, 0.5))
UNVERIFIED = -2.0
#: D2LV's score normalisation: factor 2, top 10, avg (the descriptor track's preset)
SCORE_NORM = SCORE_NORM_PRESETS["d2lv"]
#: the fixed query view families and their views
FIXED_FAMILIES = {"rotations": rotations, "center": lambda: [center()], "halves": d2lv_halves}
_PAPER = "Wang, Sun, Zhang, Yang, D2LV: A Data-Driven and Local-Verification Approach for Image Copy Detection, " \
         "arXiv 2111.07090"


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_backbone(name: str, overrides: dict | None = None) -> tuple[str, dict]:
    """(model registry name, model overrides) of a backbone given as a descriptor method (its model
    and model arguments) or a model name; ``overrides`` are applied on top."""
    from ..features.models import get_config, list_models

    if name in METHODS and METHODS.get(name).track == "descriptor":
        spec = METHODS.get(name)
        model, args = spec.model, dict(spec.model_args)
    elif name in list_models():
        model, args = name, {}
    else:
        raise ImsimError(f"lv: backbone {name!r} is neither a descriptor method nor a model (see `imsim-lab methods "
                         "--track descriptor`)")
    args.update(overrides or {})
    try:
        cfg = get_config(model, **args)
    except TypeError as e:
        raise ImsimError(f"lv: backbone {name!r}: {e}") from None
    if cfg.weights_path and not Path(cfg.weights_path).is_file():
        raise ImsimError(f"{cfg.weights_path}: weights file of backbone {name!r} not found")
    return model, args


@MATCHERS.register("lv")
class LocalVerification(Matcher):
    """D2LV's local verification (see the module docstring).

    Args:
        backbones: descriptor methods or models whose descriptors vote (D2LV: three BoT-trained
            ResNets); ``backbone_args``: backbone name -> model overrides (``weights_path``...).
        query_views: families of query views among ``rotations``, ``center``, ``halves`` (the whole
            query is always in); ``detector``: an overlay detector checkpoint (adds family
            ``detector``); ``oracle``: a disc-synth benchmark folder whose recorded ops give each
            query's source box (family ``oracle``, an upper bound of any detector).
        reference_views: a registered view set of the references (D2LV: the 19 of ``d2lv_reference``).
        directions: ``aq_or`` and/or ``oq_ar``.
        offset, offset_exempt, min_query_side, vote_k: :class:`~imsim_lab.features.lvscore.LVConfig`.
        budget_per_query: each backbone predicts this many view pairs per query and direction on
            average, best first over all queries (D2LV: one million results for 50,000 queries, 20);
            None: every view pair.
        min_side: views with a short side under this many pixels are not made (counted).
        view_cache: a folder for the view descriptors shared by runs (default: the run's matcher folder).
        selective_search_n, selective_search_side: with the query view family ``selective_search``,
            the first n proposals kept (:mod:`imsim_lab.features.proposals`: OpenCV's fast mode on
            the query resized to this long side, the small-crop rule ``min_query_side``, aspect <= 2,
            >= 2,000 pixels, NMS at IoU 0.5).
        scales: extra input sizes at which AQ+OR is repeated (the side the model's resize rule targets:
            SSCD's short side, a square model's side); each pair keeps its best scale (D2LV: 200 and
            320 besides 256, OQ+AR not repeated).
        specialists: None, or D2LV's combination of specialists: ``{set name: [member, ...]}``, each
            member a backbone of ``backbones`` or a ``train d2lv`` / ``train bot`` run folder (its
            ``train_config.json`` gives the network, its ``weights.pt`` the weights; ``imsim-lab
            train d2lv --specialist NAME``). Each set votes apart (``vote_k`` of its members), only
            the set named ``baseline`` searches OQ+AR (D2LV ran OQ+AR with the baseline models
            only), and a pair scores the max over the sets (the union of their predictions); only
            the members of the sets are embedded.
        score_norm: normalise every view pair's score against the training (background) images
            (see the module docstring; the benchmark must have training images); ``score_norm_factor``,
            ``score_norm_n``, ``score_norm_mode``: the term ``factor * reduce(top n q.t)`` with
            ``mode`` ``avg`` (D2LV) or ``min`` (the n-th similarity).
    """

    def __init__(self, backbones: Sequence[str] | str = ("sscd",), backbone_args: dict | None = None,
                 query_views: Sequence[str] | str = ("rotations", "center", "halves"),
                 reference_views: str = "d2lv_reference", directions: Sequence[str] | str = DIRECTIONS,
                 offset: float = -0.05, offset_exempt: Sequence[str] = OFFSET_EXEMPT, min_query_side: int = 100,
                 vote_k: int = 2, budget_per_query: float | None = 20.0, min_side: int = 32, detector: str = "",
                 detector_threshold: float = 0.1, oracle: str = "", view_cache: str = "",
                 scales: Sequence[int] = (), score_norm: bool = True,
                 score_norm_factor: float = SCORE_NORM["factor"], score_norm_n: int = SCORE_NORM["n"],
                 score_norm_mode: str = SCORE_NORM["mode"], selective_search_n: int = 10,
                 selective_search_side: int = 256, specialists: dict | None = None):
        from ..features.views import VIEWS

        names = [backbones] if isinstance(backbones, str) else list(backbones)
        if not names or len(set(names)) != len(names):
            raise ImsimError(f"lv: backbones must be distinct names, got {names}")
        args = dict(backbone_args or {})
        unknown = [k for k in args if k not in names]
        if unknown:
            raise ImsimError(f"lv: backbone_args names {unknown[0]!r}, which is not one of the backbones {names}")
        self.backbones = [(b, *resolve_backbone(b, args.get(b))) for b in names]
        # sets of backbones: each votes apart, the sets are combined by the max (D2LV's specialists)
        self.sets = [("all", list(range(len(self.backbones))), DIRECTIONS)]
        if specialists:
            self.backbones, self.sets = specialist_sets(specialists, self.backbones)
        fams = [query_views] if isinstance(query_views, str) else list(query_views)
        bad = [f for f in fams if f not in FIXED_FAMILIES and f != "selective_search"]
        if bad:
            raise ImsimError(f"lv: query view family {bad[0]!r} is not one of {', '.join(FIXED_FAMILIES)}, "
                             "selective_search (overlay "
                             "boxes come with detector= or oracle=)")
        self.families = fams
        self.proposals = None
        if "selective_search" in fams:
            from ..features.proposals import ProposalConfig, available

            if not available():
                raise ImsimError("lv: query view family selective_search needs OpenCV's contrib module "
                                 "(opencv-contrib-python-headless, a dependency of imsim-lab)")
            self.proposals = ProposalConfig(top_n=int(selective_search_n), side=int(selective_search_side),
                                            min_side=int(min_query_side))
        if reference_views not in VIEWS:
            raise ImsimError(f"lv: reference_views {reference_views!r} is not a view set ({', '.join(VIEWS.names())})")
        self.reference_views = reference_views
        self.config = LVConfig(tuple([directions] if isinstance(directions, str) else directions), float(offset),
                               tuple(offset_exempt), int(min_query_side), int(vote_k), None)
        if budget_per_query is not None and float(budget_per_query) <= 0:
            raise ImsimError(f"lv: budget_per_query must be > 0 or null, got {budget_per_query}")
        self.budget_per_query = None if budget_per_query is None else float(budget_per_query)
        self.min_side = int(min_side)
        if self.min_side < 1:
            raise ImsimError(f"lv: min_side must be >= 1 pixel, got {min_side}")
        self.detector_path, self.detector_threshold = str(detector or ""), float(detector_threshold)
        self.detector = None
        if self.detector_path:
            from ..features.detector import OverlayNet

            if not Path(self.detector_path).is_file():
                raise ImsimError(f"{self.detector_path}: overlay detector checkpoint not found (lv detector=)")
            self.detector = OverlayNet.load(self.detector_path)
        self.oracle_bench = None
        if oracle:
            from ..data.benchmark import load_benchmark

            self.oracle_bench = load_benchmark(oracle)
        self.view_cache = str(view_cache or "")
        self.scales = [int(x) for x in ([scales] if isinstance(scales, (int, float)) else (scales or []))]
        if any(x < 16 for x in self.scales) or len(set(self.scales)) != len(self.scales):
            raise ImsimError(f"lv: scales must be distinct sizes of at least 16 pixels, got {scales}")
        for x in self.scales:
            for _, model_name, a in self.backbones:
                _scale_args(model_name, a, x)
        if not isinstance(score_norm, bool):
            raise ImsimError(f"lv: score_norm must be true or false, got {score_norm!r}")
        self.score_norm = score_norm
        self.score_norm_factor, self.score_norm_n = float(score_norm_factor), int(score_norm_n)
        self.score_norm_mode = str(score_norm_mode)
        if self.score_norm_mode not in ("avg", "min") or self.score_norm_n < 1:
            raise ImsimError(f"lv: score_norm_mode must be avg or min and score_norm_n >= 1, got "
                             f"{score_norm_mode!r} and {score_norm_n!r}")

    # -- views ------------------------------------------------------------------------------------

    def _boxes(self, ctx: MatchContext, qids: np.ndarray, counts: dict) -> dict[str, list[View]]:
        """Image-dependent query views per query id: the detector's and the oracle's boxes, the
        selective-search proposals."""
        out: dict[str, list[View]] = {str(q): [] for q in qids}
        if self.proposals is not None and "aq_or" in self.config.directions:
            from ..features.proposals import selective_search_views
            from ..features.viewstore import keep_image

            ds = ctx.queries.dataset(keep_image, list(qids))
            made = 0
            for i in range(len(qids)):
                _, im, err = ds[i]
                if err is None:
                    vs = selective_search_views(im, self.proposals)
                    out[str(qids[i])].extend(vs)
                    made += len(vs)
            counts["selective_search_views"] = made
        if self.detector is not None:
            from ..features.detector import detect
            from ..features.viewstore import keep_image

            ds = ctx.queries.dataset(keep_image, list(qids))
            kept = 0
            for a in range(0, len(qids), 64):
                idx = list(range(a, min(a + 64, len(qids))))
                good = [(i, im) for i, (_, im, err) in zip(idx, (ds[i] for i in idx)) if err is None]
                if not good:
                    continue
                b, c = detect(self.detector, [im for _, im in good])
                for (i, _), box, conf in zip(good, b, c):
                    x0, y0, x1, y1 = (float(v) for v in box)
                    if conf >= self.detector_threshold and x1 > x0 and y1 > y0:
                        out[str(qids[i])].append(View("det0", (x0, y0, x1, y1)))
                        kept += 1
            counts["detector_boxes"] = kept
        if self.oracle_bench is not None:
            from ..features.oracle import bench_source_box
            from ..features.views import ViewError

            known = set(self.oracle_bench.queries["query_id"].astype(str))
            made, missing = 0, 0
            for q in qids:
                if str(q) not in known:
                    missing += 1
                    continue
                try:
                    box = bench_source_box(self.oracle_bench, str(q)).box
                except ViewError:
                    missing += 1
                    continue
                if box != (0.0, 0.0, 1.0, 1.0) and box[2] > box[0] and box[3] > box[1]:
                    out[str(q)].append(View("oracle", box))
                    made += 1
            counts["oracle_boxes"] = made
            counts["oracle_unavailable"] = missing
        return out

    def _norm_plan(self, ctx: MatchContext, counts: dict):
        """None (no score normalisation), or (training ids, their sizes, folder, n): what each backbone
        embeds of the background set; n is ``score_norm_n`` cut to the training set's size (noted)."""
        if not self.score_norm:
            return None
        from ..features.viewstore import parent_sizes

        src = ctx.training
        if src is None or len(src.ids) == 0:
            raise ImsimError("lv: score_norm needs the benchmark's training (background) images and the benchmark "
                             "has none; pass -p score_norm=false")
        tids = np.asarray(src.ids).astype(str)
        tsizes, tfail = parent_sizes(src, tids)
        good = len(tids) - len(tfail)
        n = self.score_norm_n
        if n > good:
            counts["score_norm_n_clamped"] = f"{n} -> {good} (only {good} readable training images)"
            n = good
        if n < 1:
            raise ImsimError("lv: score_norm: none of the benchmark's training images could be read")
        counts["score_norm_failed_training"] = [f["id"] for f in tfail]
        folder = Path(self.view_cache) / "training" if self.view_cache else ctx.folder("training")
        return tids, tsizes, folder, n

    def _extract(self, model, source, ids: np.ndarray, views, sizes, folder: Path, tag: dict, config):
        from ..features.viewstore import extract_views

        name = f"lv-{model.config.name}-" + _digest({"model": model.config.fingerprint(), "source": source.key,
                                                     "ids": _digest(list(map(str, ids))), "min_side": self.min_side,
                                                     **tag})
        return extract_views(model, source, ids, views, folder, name, config, min_side=self.min_side, sizes=sizes)

    # -- scoring ------------------------------------------------------------------------------------

    def score(self, pairs: CandidatePairs, ctx: MatchContext) -> MatchResult:
        """Verify ``pairs``. ``extras``: ``view_q``, ``view_r``, ``box_q``, ``box_r`` (the best view pair,
        "" when unverified), ``direction``, ``n_agree``, ``lv_view_pairs`` and ``view_score_<family>`` (the
        best score of each view family, NaN when it gave none); report: counts, costs, seconds."""
        from ..features.extract import ExtractConfig
        from ..features.models import create_model
        from ..features.viewstore import ViewConfig, parent_sizes

        config = ctx.extract if ctx.extract is not None else ExtractConfig()
        qall, rall = np.asarray(pairs.query_ids).astype(str), np.asarray(pairs.reference_ids).astype(str)
        qids, rids = np.unique(qall), np.unique(rall)
        for what, src, ids in (("query", ctx.queries, qids), ("reference", ctx.references, rids)):
            try:
                src.positions(ids)
            except ValueError as e:
                raise ImsimError(f"lv: the candidate pairs name an unknown {what} ({e})") from None
        counts: dict = {}
        seconds, cpu = {}, {}
        t, c = time.perf_counter(), _cpu()
        qsizes, qfail = parent_sizes(ctx.queries, qids)
        rsizes, rfail = parent_sizes(ctx.references, rids)
        boxes = self._boxes(ctx, qids, counts)
        # one store per family of views, so that a run with fewer families reuses what is embedded
        qfams = {"whole": (lambda pid, size: [WHOLE], {})}
        if "aq_or" in self.config.directions:
            for f in self.families:
                if f in FIXED_FAMILIES:
                    qfams[f] = (lambda pid, size, vs=tuple(FIXED_FAMILIES[f]()): list(vs), {})
            for f in ("det", "oracle", "ss"):
                fb = {k: [v for v in b if v.name.startswith(f)] for k, b in boxes.items()}
                if any(fb.values()):
                    qfams[f] = (lambda pid, size, fb=fb: fb.get(pid, []), {"boxes": _digest(
                        {k: [v.box for v in b] for k, b in fb.items()})})
        ref_views = self.reference_views if "oq_ar" in self.config.directions else "identity"
        seconds["views_plan"], cpu["views_plan"] = time.perf_counter() - t, _cpu() - c
        qfolder = Path(self.view_cache) / "query" if self.view_cache else ctx.folder("query")
        rfolder = Path(self.view_cache) / "reference" if self.view_cache else ctx.folder("reference")
        norm = self._norm_plan(ctx, counts)
        budget = None if self.budget_per_query is None else max(1, int(np.ceil(self.budget_per_query * len(qids))))
        per_backbone, results = [], []
        # the model's own scale with every direction, then each extra scale with AQ+OR only (D2LV)
        for scale in [None, *self.scales]:
            directions = self.config.directions if scale is None else ("aq_or",)
            rv = ref_views if scale is None else "identity"
            qsets, rsets, tsets = [], [], []
            # only the members of a set that searches OQ+AR embed the reference splits (D2LV's
            # specialists search AQ+OR: their references are the whole images)
            splits = [any(i in m and "oq_ar" in dd for _, m, dd in self.sets) for i in range(len(self.backbones))]
            for i, (label, model_name, args) in enumerate(self.backbones):
                btag = label if scale is None else f"{label}@{scale}"
                model = create_model(model_name, device=ctx.device, **{**args, **_scale_args(model_name, args, scale)})
                t, c = time.perf_counter(), _cpu()
                qs = _concat([self._extract(model, ctx.queries, qids, gen, qsizes, qfolder, {"views": f, **tag}, config)
                              for f, (gen, tag) in qfams.items()])
                seconds[f"extract_query_{btag}"], cpu[f"extract_query_{btag}"] = time.perf_counter() - t, _cpu() - c
                t, c = time.perf_counter(), _cpu()
                rparts = [("identity", ViewConfig(("identity",), self.min_side))]
                if rv != "identity" and splits[i]:
                    rparts.append((rv, lambda pid, size, rv=rv: [x for x in make_views(rv, size) if not x.is_whole]))
                rs = _concat([self._extract(model, ctx.references, rids, gen, rsizes, rfolder, {"views": name}, config)
                              for name, gen in rparts])
                seconds[f"extract_reference_{btag}"], cpu[f"extract_reference_{btag}"] = (time.perf_counter() - t,
                                                                                        _cpu() - c)
                if norm is not None:
                    t, c = time.perf_counter(), _cpu()
                    tids, tsizes, tfolder, n = norm
                    ts = self._extract(model, ctx.training, tids, ViewConfig(("identity",), self.min_side), tsizes,
                                       tfolder, {"views": "identity"}, config)
                    xt = np.asarray(ts.x, np.float32)
                    xt = xt[np.isfinite(xt).all(1)]
                    if len(xt) < n:
                        raise ImsimError(f"lv: score_norm_n={n} but only {len(xt)} training images were embedded "
                                         f"by backbone {btag!r}")
                    tsets.append(xt)
                    seconds[f"extract_training_{btag}"], cpu[f"extract_training_{btag}"] = (time.perf_counter() - t,
                                                                                          _cpu() - c)
                qsets.append(qs)
                rsets.append(rs)
                per_backbone.append({"backbone": btag, "model": model_name,
                                     "model_args": {**args, **_scale_args(model_name, args, scale)},
                                     "dim": int(model.dim), "device": model.device,
                                     "query_views": int(len(qs)), "reference_views": int(len(rs)),
                                     "reference_bytes": int(np.asarray(rs.x).nbytes),
                                     "skipped_query_views": qs.skipped, "skipped_reference_views": rs.skipped})
            t, c = time.perf_counter(), _cpu()
            # the reference table: a backbone that embeds the splits (the others' split rows are NaN, unused)
            qtab, rtab = qsets[0], max(rsets, key=len)
            xq, xr = [_aligned(qtab, x) for x in qsets], [_aligned(rtab, x) for x in rsets]
            bq = br = None
            if norm is not None:
                n = norm[3]
                bq = [background_bias(a, xt, self.score_norm_factor, n, self.score_norm_mode, ctx.backend)
                      for a, xt in zip(xq, tsets)]
                br = [background_bias(a, xt, self.score_norm_factor, n, self.score_norm_mode, ctx.backend)
                      for a, xt in zip(xr, tsets)] if "oq_ar" in directions else None
                nb = f"score_norm_mean_bias{'' if scale is None else f'@{scale}'}"
                counts[nb] = {"query_views": _mean(bq), "reference_views": _mean(br) if br is not None else None}
            verified, names = [], []
            for set_name, members, set_dirs in self.sets:
                dirs = tuple(d for d in directions if d in set_dirs)
                if not dirs:
                    continue
                cfg = LVConfig(dirs, self.config.offset, self.config.offset_exempt, self.config.min_query_side,
                               self.config.vote_k, budget)
                pick_b = lambda arrays: None if arrays is None else [arrays[i] for i in members]  # noqa: E731
                verified.append(verify(qall, rall, qtab, rtab, pick_b(xq), pick_b(xr), cfg, pick_b(bq), pick_b(br)))
                names.append(set_name)
            v, won = combine_sets(verified)
            d = _described(v, qtab, rtab)
            if len(self.sets) > 1:
                d["specialist"] = np.where(won >= 0, np.array(names, dtype=object)[np.maximum(won, 0)], "")
            results.append((scale, v, d))
            key = "verify" if scale is None else f"verify@{scale}"
            seconds[key], cpu[key] = time.perf_counter() - t, _cpu() - c
        # max over scales: each pair keeps the scale whose verification scored it best
        S = np.stack([np.where(np.isfinite(v.scores), v.scores, -np.inf) for _, v, _ in results])
        win = S.argmax(0)
        best = S.max(0)
        ok = np.isfinite(best)
        floor = UNVERIFIED - (abs(self.score_norm_factor) if norm is not None else 0.0)
        scores = np.where(ok, best, floor + rank_tie_break(pairs.scores))
        pick = lambda arrays: np.choose(win, arrays) if len(arrays) > 1 else arrays[0]  # noqa: E731
        described = [d for _, _, d in results]
        extras = {k: np.where(ok, pick([d[k] for d in described]), "" if described[0][k].dtype.kind in "OUS" else 0)
                  for k in described[0]}
        families = sorted({f for _, v, _ in results for f in v.family})
        for f in families:
            cols = [v.family.get(f, np.full(len(qall), np.nan)) for _, v, _ in results]
            extras[f"view_score_{f}"] = np.fmax.reduce(np.stack(cols), axis=0)
        for k in ("view_q", "view_r", "box_q", "box_r", "direction", "specialist"):
            if k in extras:
                extras[k] = extras[k].astype(str)
        extras["scale"] = np.where(ok, np.array([0 if s is None else int(s) for s, _, _ in results])[win], -1)
        v = results[0][1]
        nq, nr = max(len(qids), 1), max(len(rids), 1)
        total_cpu = sum(cpu.values())
        report = {
            "backbones": per_backbone, "vote": vote_rule(self.config.vote_k, len(self.backbones)),
            **({"specialists": [{"name": n, "backbones": [self.backbones[i][0] for i in m], "directions": list(dd),
                                 "vote": vote_rule(self.config.vote_k, len(m)),
                                 "pairs_won": int((extras["specialist"] == n).sum())}
                                for n, m, dd in self.sets]} if len(self.sets) > 1 else {}),
            "directions": list(self.config.directions),
            "query_views": ["whole", *self.families, *(["detector"] if self.detector is not None else []),
                            *(["oracle"] if self.oracle_bench is not None else [])],
            "reference_views": ref_views, "offset": self.config.offset,
            "offset_exempt": list(self.config.offset_exempt), "min_query_side": self.config.min_query_side,
            "min_side": self.min_side, "budget_per_query": self.budget_per_query, "budget": budget,
            "score_norm": ({"factor": self.score_norm_factor, "n": norm[3], "mode": self.score_norm_mode,
                            "training_images": int(len(norm[0])), "unverified_below": floor + 0.5}
                           if norm is not None else False),
            "scales": list(self.scales), "pairs_best_at_scale": {str(s or "model"): int(((win == i) & ok).sum())
                                                                for i, (s, _, _) in enumerate(results)},
            "detector": self.detector_path or None, "detector_threshold": self.detector_threshold if self.detector else None,
            "oracle": str(self.oracle_bench.root) if self.oracle_bench is not None else None,
            "pairs": int(len(pairs)), "queries": int(len(qids)), "references": int(len(rids)), **counts, **v.counts,
            "pairs_verified": int(ok.sum()), "pairs_unverified": int((~ok).sum()),
            "failed": {"query": [f["id"] for f in qfail], "reference": [f["id"] for f in rfail]},
            "cost": {
                "images_embedded_per_query": round(sum(b["query_views"] for b in per_backbone) / nq, 3),
                "images_embedded_per_reference": round(sum(b["reference_views"] for b in per_backbone) / nr, 3),
                "index_bytes_per_reference": round(sum(b["reference_bytes"] for b in per_backbone) / nr, 1),
                "cpu_seconds_per_query": round(total_cpu / nq, 4),
                "cpu_seconds": {k: round(x, 3) for k, x in cpu.items()},
            },
            "seconds": {k: round(x, 3) for k, x in seconds.items()},
        }
        return MatchResult(scores, extras, report)


def specialist_backbone(folder: str) -> tuple[str, dict]:
    """(model, model args) of a ``train d2lv`` / ``train bot`` run folder: the network its
    ``train_config.json`` describes with the weights of its ``weights.pt`` (and their sha256)."""
    from ..features.models.weights import sha256_file
    from ..train.bot import MODEL_OF, BoTConfig, model_config

    p = Path(folder)
    cfg_path, weights = p / "train_config.json", p / "weights.pt"
    if not cfg_path.is_file():
        raise ImsimError(f"{cfg_path}: not found; a specialist is a `imsim-lab train d2lv` run folder")
    try:
        run = json.loads(cfg_path.read_text())["run"]
        variant, c = run["recipe"], run["config"]
        bc = BoTConfig(variant=variant, backbone=str(c["backbone"]), size=int(c["size"]),
                       waveblock=bool(c.get("waveblock", True)))
    except (KeyError, TypeError, ValueError) as e:
        raise ImsimError(f"{cfg_path}: not the train_config.json of `train d2lv` or `train bot` ({e})") from None
    if not weights.is_file():
        raise ImsimError(f"{weights}: weights file of specialist {p} not found (the training has not finished)")
    mc = model_config(bc)
    # embedded at the training size, one scale (D2LV's test at its 256-px training size): the
    # descriptors' resize follows ``scales``, not ``input_size`` (features/models/bot.py)
    args = {"backbone": bc.backbone, "input_size": bc.size, "scales": [bc.size], "waveblock": bc.waveblock,
            "weights_path": str(weights.resolve()), "weights_sha256": sha256_file(weights)}
    if variant == "d2lv":
        args["dim"] = int(mc.dim)
    return MODEL_OF[variant], args


def specialist_sets(specialists: dict, backbones: list) -> tuple[list, list]:
    """(backbones, sets) of the ``specialists`` parameter (see :class:`LocalVerification`): the
    members of every set as (label, model, args), each once, and per set (name, member indices,
    directions)."""
    if not isinstance(specialists, dict) or not all(isinstance(m, (list, tuple, str)) for m in specialists.values()):
        raise ImsimError("lv: specialists must map a set name to a list of backbones or `train d2lv` run folders")
    known = {b[0]: b for b in backbones}
    used, by_key, sets = [], {}, []
    for name, members in specialists.items():
        members = [members] if isinstance(members, str) else list(members)
        if not members:
            raise ImsimError(f"lv: specialist set {name!r} has no member")
        idx = []
        for m in members:
            key = str(m) if str(m) in known else str(Path(str(m)).resolve())
            if key not in by_key:
                label = str(m) if str(m) in known else f"{name}:{Path(str(m)).name}"
                if any(u[0] == label for u in used):
                    label = f"{label}#{len(used)}"
                entry = known[key] if key in known else (label, *specialist_backbone(str(m)))
                by_key[key] = len(used)
                used.append(entry)
            idx.append(by_key[key])
        if len(set(idx)) != len(idx):
            raise ImsimError(f"lv: specialist set {name!r} names a member twice")
        sets.append((str(name), idx, DIRECTIONS if str(name) == "baseline" else ("aq_or",)))
    return used, sets


def background_bias(x: np.ndarray, xt: np.ndarray, factor: float, n: int, mode: str, backend: str = "auto"
                    ) -> np.ndarray:
    """(len(x),) float64: D2LV's normalisation term ``factor * reduce(top n x.t)`` of each row of ``x``
    against the background descriptors ``xt`` (:func:`~imsim_lab.methods.postprocess.score_norm_bias`);
    NaN for a NaN row (a view that backbone has no descriptor of)."""
    x = np.asarray(x, np.float32)
    out = np.full(len(x), np.nan)
    ok = np.isfinite(x).all(1) if x.ndim == 2 and len(x) else np.zeros(len(x), bool)
    if ok.any():
        out[ok] = score_norm_bias(x[ok], xt, factor, n, mode, backend)
    return out


def _mean(biases) -> float | None:
    vals = np.concatenate([b[np.isfinite(b)] for b in biases]) if biases else np.zeros(0)
    return round(float(vals.mean()), 6) if len(vals) else None


def _scale_args(model_name: str, args: dict, scale: int | None) -> dict:
    """The model override that embeds at ``scale`` pixels: the side its resize rule targets."""
    from ..features.models import get_config

    if scale is None:
        return {}
    cfg = get_config(model_name, **args)
    key = {"square": "input_size", "short_side": "short_side", "long_side": "long_side"}.get(cfg.resize)
    if key is None:
        raise ImsimError(f"lv: scales= needs a model that resizes its input; {model_name!r} has resize {cfg.resize!r}")
    if "scales" in cfg.extra:
        # BoT / D2LV descriptors resize to each of their own ``scales`` (features/models/bot.py)
        return {key: int(scale), "scales": [int(scale)]}
    return {key: int(scale)}


def _described(v, qtab, rtab) -> dict:
    """The per-pair columns of one verification: names and boxes of its best view pair."""
    ok = np.isfinite(v.scores)
    qn, rn = np.asarray(qtab.view_names).astype(str), np.asarray(rtab.view_names).astype(str)
    qb, rb = np.asarray(qtab.boxes), np.asarray(rtab.boxes)

    def names(n, rows):
        return np.where(ok, n[np.maximum(rows, 0)] if len(n) else "", "").astype(object)

    def box(b, rows):
        return np.array([",".join(f"{x:.4f}" for x in b[i]) if i >= 0 else "" for i in rows], dtype=object)

    return {"view_q": names(qn, v.q_row), "view_r": names(rn, v.r_row), "box_q": box(qb, v.q_row),
            "box_r": box(rb, v.r_row), "direction": v.direction.astype(object), "n_agree": v.n_agree,
            "lv_view_pairs": v.n_view_pairs}


def _concat(sets):
    """One :class:`~imsim_lab.features.viewstore.ViewSet` from several (rows in order; skipped counts summed)."""
    from ..features.viewstore import ViewSet

    if len(sets) == 1:
        return sets[0]
    skipped, failed, seen = {}, [], set()
    for vs in sets:
        for k, n in vs.skipped.items():
            skipped[k] = skipped.get(k, 0) + n
        for f in vs.failed:
            if f["id"] not in seen:
                seen.add(f["id"])
                failed.append(f)
    cat = lambda name: np.concatenate([np.asarray(getattr(vs, name)) for vs in sets])  # noqa: E731
    return ViewSet(cat("parent_ids"), cat("view_names"), cat("boxes"), cat("rotations"), cat("sizes"),
                   np.concatenate([np.asarray(vs.x, np.float32) for vs in sets]), skipped, failed)


def _aligned(table, vs) -> np.ndarray:
    """``vs.x`` reordered to the rows of ``table`` by (parent id, view name); NaN rows where ``vs`` lacks one."""
    import pandas as pd

    if vs is table:
        return np.asarray(vs.x, np.float32)
    key = lambda s: pd.Index(np.char.add(np.char.add(np.asarray(s.parent_ids).astype(str), "\t"),  # noqa: E731
                                         np.asarray(s.view_names).astype(str)))
    pos = key(vs).get_indexer(key(table))
    x = np.asarray(vs.x, np.float32)
    out = np.full((len(pos), x.shape[1]), np.nan, np.float32)
    out[pos >= 0] = x[pos[pos >= 0]]
    return out


_DEFAULTS = {"candidates.k": 10, "candidates.budget": None, "backbone_args": {},
             "query_views": ["rotations", "center", "halves"], "reference_views": "d2lv_reference",
             "directions": list(DIRECTIONS), "offset": -0.05, "offset_exempt": list(OFFSET_EXEMPT),
             "min_query_side": 100, "vote_k": 2, "budget_per_query": 20.0, "min_side": 32, "detector": "",
             "detector_threshold": 0.1, "oracle": "", "view_cache": "", "scales": [],
             "selective_search_n": 10, "selective_search_side": 256, "specialists": None, "score_norm": True, "score_norm_factor": SCORE_NORM["factor"], "score_norm_n": SCORE_NORM["n"],
             "score_norm_mode": SCORE_NORM["mode"]}

METHODS.add("sscd+lv", MethodSpec(
    "sscd+lv", track="matching", matcher="lv", needs_training=True,
    # no score normalisation by default: D2LV's factor 2, top 10 (set for its PCA-whitened 1,500-d
    # descriptors) lowered sscd+lv's µAP on disc-synth small (notebooks/README.md, README.md)
    params={"candidates.method": "sscd", **_DEFAULTS, "backbones": ["sscd"], "score_norm": False},
    description="top-k SSCD candidates verified by D2LV's local verification with the released SSCD descriptor: "
                "query views (rotations, centre, 4 overlapping halves; + detector= / oracle= boxes) vs whole "
                "references and whole queries vs the 19 reference splits, max over view pairs, -0.05 for "
                "non-original query views, small-crop filter, global budget (one backbone: no vote); score_norm=true "
                "normalises the scores against the training images (D2LV: factor 2, top 10, avg)",
    paper=_PAPER))
METHODS.add("d2lv", MethodSpec(
    "d2lv", track="matching", matcher="lv", needs_training=True,
    params={"candidates.method": "sscd", **_DEFAULTS, "backbones": ["sscd", "sscd_distilled"]},
    description="D2LV's local verification with a vote of its backbones (default: the two released descriptors "
                "SSCD and its distilled student, so 2 of 2 must agree; the published backbones are three "
                "BoT-trained ResNets: give them with backbones= and backbone_args=, or trained specialists with "
                "specialists=), scores normalised against the training images (factor 2, top 10, avg; "
                "score_norm=false turns it off)",
    paper=_PAPER))
