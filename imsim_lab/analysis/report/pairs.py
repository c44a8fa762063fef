"""The pair view of the matching track: why a (query, reference) pair matched.

A matching run's ``candidates.parquet`` (``docs/CONTRACTS.md``, "Run folder") holds every candidate
pair with its descriptor score and rank before re-scoring (``candidate_score``, ``candidate_rank``),
its final ``score`` and the matcher's own per-pair columns. The view reads them as they are and
recognises these matcher columns:

* ``n_matches`` / ``n_inliers`` (the ``sift`` matcher): counts of local matches; the matches
  themselves are not stored per pair (thousands of pairs x hundreds of keypoints) but recomputed for
  the one pair shown by :func:`local_matches` with the matcher's own local features and ratio test
  (:mod:`imsim_lab.features.local`, :mod:`imsim_lab.features.localmatch`), so the lines drawn are
  the matches it counted;
* ``box_q`` / ``box_r``: the sub-image that matched, as fractions ``x0,y0,x1,y1`` of the image (a
  views matcher's best view pair, ``imsim_lab.features.viewscore.aggregate``);
* ``view_q`` / ``view_r``: the names of those views;
* ``view_score_<name>``: a classifier's score for each query view (the pair ViT).

Nothing here imports Streamlit; :func:`pair_image` returns a PIL image the page shows.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ...runfolder import read_candidates

BASE_COLUMNS = ("query_id", "reference_id", "candidate_score", "candidate_rank", "score")


def pair_table(run, truth: dict[str, str] | None = None) -> pd.DataFrame | None:
    """The candidates of a matching run with ``is_true`` (the ground-truth pair) and ``final_rank``
    (0-based rank of the final score within the query, best first), or None for a descriptor run."""
    df = read_candidates(run)
    if df is None:
        return None
    df = df.copy()
    df["is_true"] = [truth.get(q) == r for q, r in zip(df["query_id"], df["reference_id"])] if truth else False
    df["final_rank"] = (df.groupby("query_id")["score"].rank(method="first", ascending=False) - 1).astype(int)
    return df.sort_values(["query_id", "final_rank"], kind="stable").reset_index(drop=True)


def matcher_columns(df: pd.DataFrame) -> list[str]:
    """The matcher's own per-pair columns of a :func:`pair_table`."""
    return [c for c in df.columns if c not in (*BASE_COLUMNS, "is_true", "final_rank")]


def parse_box(value) -> tuple[float, float, float, float] | None:
    """A box column value (``"x0,y0,x1,y1"``, a JSON list or a sequence of 4 fractions) or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, str):
        v = value.strip()
        vals = json.loads(v) if v.startswith("[") else [float(x) for x in v.split(",")]
    else:
        vals = list(value)
    if len(vals) != 4:
        return None
    x0, y0, x1, y1 = (float(x) for x in vals)
    return (x0, y0, x1, y1) if 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 else None


def view_scores(row: pd.Series) -> pd.DataFrame:
    """(view, score) of the ``view_score_<name>`` columns of one pair, best first."""
    items = [(c[len("view_score_"):], float(row[c])) for c in row.index if str(c).startswith("view_score_")]
    return pd.DataFrame(items, columns=["view", "score"]).sort_values("score", ascending=False, kind="stable")


def local_features(img, features: str = "sift", max_keypoints: int | None = None):
    """(xy, descriptors) of one image with the registered local-feature model the ``sift`` matcher
    uses (:mod:`imsim_lab.features.local`: gray, short side 300, OpenCV SIFT): ``xy`` (k, 2) float32
    in the pixels of the given image, ``descriptors`` (k, d)."""
    from ...features.local import create_local_model

    model = create_local_model(features, **({} if max_keypoints is None else {"max_keypoints": int(max_keypoints)}))
    arr = model.preprocess(img)
    f = model.detect(arr)
    scale = img.size[0] / max(arr.shape[1], 1)
    return np.asarray(f.geometry[:, :2], np.float32) * scale, f.descriptors


def local_matches(img_q, img_r, ratio: float = 0.8, features: str = "sift",
                  max_keypoints: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The matches of one pair as the ``sift`` matcher counts them: its local features
    (:func:`local_features`) and Lowe's ratio test
    (:func:`imsim_lab.features.localmatch.ratio_matches`).

    Returns ``(xy_q, xy_r)``: (t, 2) float32 keypoint positions in the pixels of the given images.
    """
    from ...features.localmatch import ratio_matches

    xq, dq = local_features(img_q, features, max_keypoints)
    xr, dr = local_features(img_r, features, max_keypoints)
    iq, ir = ratio_matches(dq, dr, ratio)
    return xq[iq], xr[ir]


def pair_image(img_q, img_r, xy_q=None, xy_r=None, box_q=None, box_r=None, height: int = 320,
               max_lines: int = 150):
    """The two images side by side at one height, the matches drawn as lines between them (at most
    ``max_lines``, evenly chosen) and the matched boxes (fractions) outlined."""
    from PIL import Image, ImageDraw

    def fit(im):
        w, h = im.size
        s = height / h
        return im.convert("RGB").resize((max(1, round(w * s)), height), Image.BILINEAR), s

    a, sa = fit(img_q)
    b, sb = fit(img_r)
    gap = 12
    out = Image.new("RGB", (a.width + gap + b.width, height), "white")
    out.paste(a, (0, 0))
    out.paste(b, (a.width + gap, 0))
    d = ImageDraw.Draw(out)
    colours = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9"]
    if xy_q is not None and len(xy_q):
        pick = np.unique(np.linspace(0, len(xy_q) - 1, min(max_lines, len(xy_q))).round().astype(int))
        for k, i in enumerate(pick):
            p = (float(xy_q[i][0] * sa), float(xy_q[i][1] * sa))
            q = (float(xy_r[i][0] * sb + a.width + gap), float(xy_r[i][1] * sb))
            d.line([p, q], fill=colours[k % len(colours)], width=1)
    for box, off, im in ((box_q, 0, a), (box_r, a.width + gap, b)):
        if box:
            x0, y0, x1, y1 = box
            d.rectangle([off + x0 * im.width, y0 * im.height, off + x1 * im.width, y1 * im.height],
                        outline="#D55E00", width=3)
    return out
