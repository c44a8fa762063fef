"""What each run costs, and who made it: the leaderboard's cost and provenance columns, and the
µAP-against-cost Pareto front.

Everything is derived from the run folder (``docs/CONTRACTS.md``, "Run folder"): ``config.json``,
``timings.json`` and the shapes of ``features/`` (read as memory maps, never loaded). Per run:

* ``track``: descriptor or matching;
* ``dim``: the dimension of the searched descriptor (``descriptors.h5`` when written, else the
  reference features, else the model config's ``dim``);
* ``bytes_per_reference``: the index size per reference: ``dim`` x the stored dtype's size (float32
  or float16), ``dim / 8`` for binary hashes compared with Hamming distance (PDQ); a matching
  run adds what its matcher keeps per reference when the matcher reports it
  (``matcher_report["bytes_per_reference"]``);
* ``images_per_query``: images embedded for one query: 1 for a descriptor method; a matching run
  adds the matcher's (``matcher_report["images_per_query"]``, else 1: the query's local features);
* ``seconds_per_query``: query-side work (query extraction + post-processing + search; a matching
  run adds its candidate run's and ``rescore`` / queries) on the machine that ran it. The runner
  records wall-clock phases (``timings.json``); where it also records process CPU time as
  ``cpu_<phase>`` those are used and ``seconds_kind`` says "cpu". A run that reused another run's
  extracted features (the feature cache: ``extract_query`` about 0) is charged the extraction time
  of the run of the same model fingerprint that did extract, named in ``cost_notes``;
* ``models``: models in the ensemble (``config["ensemble"]`` when given, else 1 per descriptor
  model; a matching run counts its candidate model and its matcher).

Provenance: ``written_by`` (a notebook and profile from the ``notebooks/<notebook>/<profile>/``
layout of :func:`imsim_lab.lessons.run_dir`, an upload, or the ``imsim-lab run`` command) and
``saw_eval_queries``: True when the run says it tuned or trained anything on the benchmark's
evaluation queries (``config["provenance"]["saw_eval_queries"]``), False for the registered methods
with published or random weights and for models trained on ``training/`` images, None (unknown)
for an upload. Such runs are flagged, the way a leaderboard flags a model that saw the test set.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ...runfolder import CANDIDATE_RUN, FEATURES

COST_COLUMNS = ("track", "dim", "bytes_per_reference", "images_per_query", "seconds_per_query", "seconds_kind",
                "models", "written_by", "saw_eval_queries", "cost_notes")
QUERY_PHASES = ("extract_query", "postprocess", "search")
#: an extraction shorter than this per image was a reuse of cached features, not a real one
REUSED_SECONDS_PER_IMAGE = 1e-3


def _shape_dtype(path: Path) -> tuple[tuple, np.dtype] | None:
    try:
        a = np.load(path, mmap_mode="r")
        return a.shape, a.dtype
    except Exception:  # noqa: BLE001 - absent or unreadable: fall back to the config
        return None


def _h5_dim(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return int(f["reference"].shape[1])
    except Exception:  # noqa: BLE001
        return None


def _n_queries(config: dict) -> int:
    counts = (config.get("benchmark") or {}).get("counts") or {}
    return int(counts.get("queries") or 0)


def _phase(timings: dict, name: str) -> tuple[float, bool]:
    """(seconds, is CPU time) of a phase."""
    if f"cpu_{name}" in timings:
        return float(timings[f"cpu_{name}"]), True
    return float(timings.get(name, 0.0) or 0.0), False


def _provenance(run: Path, config: dict, results_root: Path | None) -> tuple[str, bool | None]:
    prov = config.get("provenance") or {}
    parts = run.resolve().parts
    written = prov.get("writer")
    if not written and "notebooks" in parts:
        i = len(parts) - 1 - parts[::-1].index("notebooks")
        if i + 2 < len(parts):
            written = f"notebook {parts[i + 1]} (profile {parts[i + 2]})"
    sub = config.get("submission")
    if not written and sub:
        written = f"upload ({sub.get('kind', '?')})"
    if not written:
        written = f"imsim-lab run {config.get('method', '?')}"
    if "saw_eval_queries" in prov:
        return written, bool(prov["saw_eval_queries"])
    if sub:
        return written, None
    return written, False


def descriptor_cost(run: Path, config: dict, timings: dict) -> dict:
    """The cost fields of one descriptor run (module docstring); ``_extract_per_query`` is the
    query extraction in seconds per image (None when it was a reuse)."""
    model = config.get("model") or {}
    nq = max(_n_queries(config), 1)
    feats = _shape_dtype(run / FEATURES / "reference.npy")
    dim = _h5_dim(run / "descriptors.h5") or (int(feats[0][1]) if feats and len(feats[0]) == 2 else None) \
        or model.get("dim")
    itemsize = feats[1].itemsize if feats else 4
    binary = model.get("metric") == "hamming" or config.get("post") == "hamming"
    bpr = (dim / 8 if binary else dim * itemsize) if dim else math.nan
    secs, cpu = 0.0, True
    for ph in QUERY_PHASES:
        s, c = _phase(timings, ph)
        secs += s
        cpu &= c
    ext, _ = _phase(timings, "extract_query")
    per_image = ext / nq
    return {"track": "descriptor", "dim": dim, "bytes_per_reference": float(bpr), "images_per_query": 1.0,
            "seconds_per_query": secs / nq, "seconds_kind": "cpu" if cpu else "wall",
            "models": int(len(config.get("ensemble") or []) or 1), "cost_notes": "",
            "_extract_per_query": per_image if per_image >= REUSED_SECONDS_PER_IMAGE else None,
            "_fingerprint": config.get("model_fingerprint")}


def run_cost(info, results_root: Path | None = None) -> dict:
    """Cost and provenance of one run (:class:`.runs.RunInfo`)."""
    from ...runfolder import read_config, read_timings

    config, timings, path = info.config, info.timings, Path(info.path)
    if config.get("track") == "matching":
        cand = config.get("candidates") or {}
        cpath = Path(cand.get("run") or path / CANDIDATE_RUN)
        try:
            cc = descriptor_cost(cpath, read_config(cpath), read_timings(cpath))
        except Exception:  # noqa: BLE001 - the candidate run moved: count the matcher alone
            cc = {"dim": None, "bytes_per_reference": math.nan, "images_per_query": 1.0, "seconds_per_query": math.nan,
                  "seconds_kind": "wall", "models": 1, "cost_notes": f"candidate run {cpath} not found",
                  "_extract_per_query": None, "_fingerprint": None}
        rep = config.get("matcher_report") or {}
        nq = max(_n_queries(config), 1)
        rescore, cpu = _phase(timings, "rescore")
        out = {**cc, "track": "matching",
               "bytes_per_reference": cc["bytes_per_reference"] + float(rep.get("bytes_per_reference", 0.0)),
               "images_per_query": cc["images_per_query"] + float(rep.get("images_per_query", 1.0)),
               "seconds_per_query": cc["seconds_per_query"] + rescore / nq,
               "seconds_kind": "cpu" if cpu and cc["seconds_kind"] == "cpu" else "wall",
               "models": int(cc["models"]) + 1, "_extract_per_query": None, "_fingerprint": None,
               "cost_notes": "; ".join(x for x in [cc["cost_notes"], f"rescore {rescore / nq:.4f} s per query, "
                                                   f"{int(cand.get('pairs', 0))} pairs"] if x)}
    else:
        out = descriptor_cost(path, config, timings)
    out["written_by"], out["saw_eval_queries"] = _provenance(path, config, results_root)
    return out


def cost_table(infos, results_root: Path | None = None) -> pd.DataFrame:
    """One row per run (``label`` + :data:`COST_COLUMNS`). A run whose query extraction was a reuse
    of cached features is charged the extraction of a run of the same model that did extract."""
    rows = [{"label": i.label, **run_cost(i, results_root)} for i in infos]
    donors = {}
    for r in rows:
        if r["_extract_per_query"] is not None and r["_fingerprint"]:
            donors.setdefault(r["_fingerprint"], (r["label"], r["_extract_per_query"]))
    for r in rows:
        if r["_extract_per_query"] is None and r["_fingerprint"] in donors:
            label, per = donors[r["_fingerprint"]]
            if label != r["label"]:
                r["seconds_per_query"] += per
                r["cost_notes"] = "; ".join(x for x in [r["cost_notes"], f"query extraction timed in run {label} "
                                                        "(features reused)"] if x)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["label", *COST_COLUMNS])
    return df[["label", *COST_COLUMNS]]


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """(n,) bool: the points no other point dominates (at most the cost and at least the value, one
    of them strictly). NaNs are never on the front."""
    c, v = np.asarray(cost, float), np.asarray(value, float)
    ok = ~(np.isnan(c) | np.isnan(v))
    front = np.zeros(len(c), bool)
    for i in np.flatnonzero(ok):
        dom = ok & (c <= c[i]) & (v >= v[i]) & ((c < c[i]) | (v > v[i]))
        front[i] = not dom.any()
    return front


def cost_figure(df: pd.DataFrame, x: str = "seconds_per_query", metric: str = "micro_ap"):
    """µAP (``metric``) against a cost column on a log axis, one marker per run (descriptor circles,
    matching diamonds; runs that saw the evaluation queries hollow), the Pareto front as a step line."""
    import plotly.graph_objects as go

    from .figures import METRIC_LABELS, OKABE_ITO

    d = df[df[x].notna() & (df[x] > 0) & df[metric].notna()].copy()
    d["front"] = pareto_front(d[x].to_numpy(), d[metric].to_numpy())
    fig = go.Figure()
    for i, (track, g) in enumerate(d.groupby("track", sort=True)):
        saw = g["saw_eval_queries"].fillna(False).astype(bool).to_numpy()
        fig.add_trace(go.Scatter(
            x=g[x], y=g[metric], mode="markers+text", name=track, text=g["label"], textposition="top center",
            marker={"size": 13, "symbol": "diamond" if track == "matching" else "circle",
                    "color": [("white" if s else OKABE_ITO[i]) for s in saw],
                    "line": {"color": OKABE_ITO[i], "width": 2}},
            customdata=np.stack([g["label"], g["dim"].astype(str), g["bytes_per_reference"],
                                 g["seconds_per_query"], g["images_per_query"]], 1),
            hovertemplate="%{customdata[0]}<br>" + METRIC_LABELS.get(metric, metric) + " %{y:.3f}<br>"
                          "%{customdata[3]:.4f} s per query, %{customdata[2]:.0f} B per reference<br>"
                          "dim %{customdata[1]}, %{customdata[4]} images per query<extra></extra>"))
    f = d[d["front"]].sort_values(x)
    if len(f):
        fig.add_trace(go.Scatter(x=f[x], y=f[metric], mode="lines", name="Pareto front",
                                 line={"color": "#555", "dash": "dot", "shape": "hv"}, hoverinfo="skip"))
    names = {"seconds_per_query": "seconds per query (log)", "bytes_per_reference": "bytes of index per reference (log)"}
    fig.update_layout(xaxis={"type": "log", "title": names.get(x, x)}, yaxis_title=METRIC_LABELS.get(metric, metric),
                      height=460, margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": -0.2})
    return fig
