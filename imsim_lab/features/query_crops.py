"""The overlay detector's crop as the query of a global descriptor search (imgFp's global branch).

imgFp (Sun et al., arXiv 2112.02373; sun-xl/ISC2021 ``preprocess/preprocessing_global.py``) embeds,
for its global branch, the crop of the single box its detector keeps on the query (confidence over
**0.55**, the box filter of :func:`~imsim_lab.features.detector.keep_boxes`), or the whole query when
no box is kept, and searches the references with that one descriptor. The local branch uses its
own, lower threshold (0.50) on the same kind of detector (:mod:`imsim_lab.methods.imgfp`).

:func:`crop_query_descriptors` makes those descriptors with any descriptor model, through the view
pipeline (:func:`~imsim_lab.features.viewstore.extract_views`: the crop is a view of the query made
on the fly, embedded with the model's own preprocessing, stored resumably under a split named after
the detector checkpoint's sha256, the threshold and the query listing), and puts each crop's
descriptor in place of its query's row. A matching method asks for it with
``-p candidates.crops=DETECTOR.pt`` (and ``candidates.crops_threshold``, default 0.55); the runner
records the detector, its sha256, the threshold and the counts in ``config.json`` (``candidates``)
and the view each query searched with in ``candidates.parquet`` (``candidate_view``).

Bag of Tricks (Wang et al., arXiv 2111.08004; WangWenhao0716/ISC-Track2-Submission ``Test/yolov5``)
does the same in the descriptor track: a query on which its overlay detector finds a box with a
confidence over **0.90** (:data:`BOT_THRESHOLD`) is *replaced* by that crop before the multi-scale
extraction. A descriptor method asks for it with ``-p queries.crops=DETECTOR.pt`` (and
``queries.crops_threshold``, default 0.90); the runner (``imsim_lab/runner.py``) calls
:func:`crop_query_descriptors` on the run's query descriptors, so the crop goes through the method's
own preprocessing (every scale of a multi-scale model), and records the detector, its sha256, the
threshold and the number of queries replaced in ``config.json`` (``query_crops``). Two differences
from the published step, both small: the box is cut from the query as it is (BoT cuts the same
fraction of the image resized so that its long side is 640: the region is the same, only the
resampling before the model's own resize differs), and the box also passes imgFp's area and
aspect filter (:func:`~imsim_lab.features.detector.keep_boxes`), which only removes boxes that
nearly fill the query or are thin strips.

:func:`box_query_descriptors` is the same replacement with boxes given by the caller (for instance
disc-synth's recorded boxes, :func:`~imsim_lab.features.detector.bench_boxes`: the upper bound of
any detector).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

#: imgFp's threshold of the global branch's detector (its local branch: 0.50)
GLOBAL_THRESHOLD = 0.55
#: Bag of Tricks' threshold: a query is replaced by the crop of a box with a confidence over 0.90
BOT_THRESHOLD = 0.90
#: a kept box whose crop has a short side under this many pixels is not embedded (the whole query is)
MIN_SIDE = 8


def detected_boxes(det, source, ids: Sequence[str], threshold: float = GLOBAL_THRESHOLD):
    """(boxes (n, 4) fractions, NaN where no box is kept; confidences (n,)) of the images ``ids`` of
    an :class:`~imsim_lab.features.dataset.ImageSource`, after imgFp's filter at ``threshold``."""
    from . import detector as D

    ids = [str(i) for i in ids]
    boxes, conf, sizes = D.detect_source(det, source, ids)
    ok = ~np.isnan(boxes).any(1)
    keep = np.zeros(len(ids), bool)
    if ok.any():
        keep[ok] = D.keep_boxes(boxes[ok], conf[ok], threshold, sizes[ok])
    return np.where(keep[:, None], boxes, np.nan), conf, sizes


def crop_query_descriptors(model, det, digest: str, threshold: float, source, query_ids: Sequence[str],
                           xq: np.ndarray, folder: str | Path, config=None):
    """The query descriptors of a global search with the detector's crops.

    Args:
        model: the descriptor model of ``xq`` (:class:`~imsim_lab.features.models.base.DescriptorModel`).
        det: an :class:`~imsim_lab.features.detector.OverlayNet`; ``digest``: its checkpoint's sha256.
        threshold: the detector's confidence threshold (imgFp's global branch: 0.55).
        source: the queries as an :class:`~imsim_lab.features.dataset.ImageSource`.
        query_ids, xq: (n,) ids and (n, d) descriptors of the whole queries.
        folder: where the crops' descriptors are kept (resumable; a split per checkpoint, threshold
            and list of queries). config: :class:`~imsim_lab.features.extract.ExtractConfig`.

    Returns:
        (xq' (n, d) float32: the crop's descriptor where a box was kept and embedded, the whole
        query's elsewhere; views (n,) ``"detector"`` or ``"whole"``; boxes (n, 4), NaN for
        ``"whole"``; a JSON-able record: detector sha256, threshold, queries, crops, seconds).
    """
    t = time.perf_counter()
    qids = np.asarray([str(q) for q in query_ids], dtype=str)
    if len(xq) != len(qids):
        raise ValueError(f"query crops: {len(qids)} query ids for {len(xq)} descriptor rows")
    boxes, _, sizes = detected_boxes(det, source, qids, threshold)
    seconds = round(time.perf_counter() - t, 3)
    out, views, boxes, record = box_query_descriptors(model, boxes, sizes, f"{digest[:16]}-t{float(threshold):g}",
                                                      source, qids, xq, folder, config)
    record = {"sha256": digest, "threshold": float(threshold), **record}
    record["seconds"] = {"detect": seconds, **record["seconds"]}
    return out, views, boxes, record


def box_query_descriptors(model, boxes: np.ndarray, sizes: np.ndarray | None, key: str, source,
                          query_ids: Sequence[str], xq: np.ndarray, folder: str | Path, config=None,
                          view: str = "detector"):
    """:func:`crop_query_descriptors` with the boxes given: ``boxes`` (n, 4) fractions of each query
    (a NaN row: the whole query is kept), ``sizes`` (n, 2) the queries' (w, h) (None: read by
    :func:`~imsim_lab.features.viewstore.extract_views`); ``key`` names where the boxes come from in
    the cached split's name (a detector's digest and threshold, or ``"recorded"``); ``view`` is the
    name of a replaced query's view. Returns (xq', views, boxes, record) as that function, the record
    without the detector's sha256 and threshold."""
    from .extract import ExtractConfig
    from .views import View
    from .viewstore import extract_views

    qids = np.asarray([str(q) for q in query_ids], dtype=str)
    xq = np.asarray(xq, np.float32)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(xq) != len(qids) or len(boxes) != len(qids):
        raise ValueError(f"query crops: {len(qids)} query ids for {len(xq)} descriptor rows and {len(boxes)} boxes")
    keep = ~np.isnan(boxes).any(1)
    seconds = {}
    by_id = {q: tuple(float(v) for v in b) for q, b, k in zip(qids, boxes, keep) if k}
    listing = hashlib.sha256(json.dumps([source.key, qids.tolist()]).encode()).hexdigest()[:16]
    name = f"global_crops-{model.config.name}-{key}-{listing}"
    out = xq.copy()
    views = np.full(len(qids), "whole", dtype=object)
    made = 0
    if keep.any():
        t = time.perf_counter()
        vs = extract_views(model, source, qids[keep], lambda pid, size: [View(view, by_id[str(pid)])],
                           Path(folder), name, config or ExtractConfig(), min_side=MIN_SIDE,
                           sizes=None if sizes is None else np.asarray(sizes).reshape(-1, 2)[keep])
        seconds["embed"] = round(time.perf_counter() - t, 3)
        pos = {q: i for i, q in enumerate(qids)}
        rows = np.array([pos[str(p)] for p in vs.parent_ids], np.int64)
        if len(rows):
            out[rows] = np.asarray(vs.x, np.float32)
            views[rows] = view
        made = int(len(rows))
    boxes = np.where((views == view)[:, None], boxes, np.nan)
    record = {"queries": int(len(qids)), "kept_boxes": int(keep.sum()), "crops": made,
              "too_small": int(keep.sum()) - made, "seconds": seconds}
    return out, views.astype(str), boxes, record
