"""A finished run folder, reopened to evaluate new queries against its references.

The robustness suites (:mod:`imsim_lab.analysis.robustness`, graded transformations, and
:mod:`imsim_lab.analysis.attacks`, adversarial queries) edit or attack some queries, embed them with
the run's model and evaluate them as a small benchmark; everything else is reused from the run:

* :func:`open_run` checks a run folder (``config.json``, ``metrics.json``; a descriptor run's
  ``features/``; a matching run's candidate run), loads its benchmark and its query, reference and
  training descriptors into a :class:`RunContext`, which can rebuild the run's model
  (:meth:`RunContext.create_model`). For a matching run these are the descriptors of its candidate
  source (:attr:`RunContext.descriptor`), and the matcher runs again on the new queries;
* :func:`evaluate_query_set` evaluates new queries (each with its true reference) together with
  the benchmark's queries without a match (the distractors stay), against the full reference set,
  through the same path as a run (:func:`imsim_lab.runner.protocol_predictions` or the matcher, then
  :func:`imsim_lab.runner.evaluate_protocols` and the per-query table of the final predictions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ImsimError


class RobustnessError(ImsimError):
    """A robustness suite cannot run (names the folder or file and the problem)."""


@dataclass(frozen=True, eq=False)
class RunContext:
    """A finished run folder with what re-evaluating new queries needs.

    Attributes:
        path: the run folder; ``config``: its config.json.
        spec, model_args, params: the method, its resolved model overrides and parameters.
        bench: the benchmark (:class:`~imsim_lab.data.benchmark.Benchmark`).
        qids, xq: clean query descriptors (nq, d); ``rids, xb``: references (nb, d);
        xt: training descriptors (nt, d) or None. For a matching run: those of its candidate run.
        candidates: a matching run's candidate source (a descriptor :class:`RunContext`), else None.
    """

    path: Path
    config: dict
    spec: object
    model_args: dict
    params: dict
    bench: object
    qids: np.ndarray
    xq: np.ndarray
    rids: np.ndarray
    xb: np.ndarray
    xt: np.ndarray | None
    candidates: "RunContext | None" = None

    @property
    def label(self) -> str:
        return f"{self.spec.name} ({self.path.name})"

    @property
    def descriptor(self) -> "RunContext":
        """The run whose model and descriptors new queries are embedded with (self, or the candidate
        run of a matching run)."""
        return self.candidates if self.candidates is not None else self

    def create_model(self, device: str | None = None):
        from ..features.models import create_model

        d = self.descriptor
        return create_model(d.spec.model, device=device, **d.model_args)

    def model_fingerprint(self) -> str:
        from ..features.models import get_config

        d = self.descriptor
        return get_config(d.spec.model, **d.model_args).fingerprint()

    def distractors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, descriptors) of the benchmark queries without a match."""
        q = self.bench.queries
        neg = set(q.loc[~q["has_match"].astype(bool), "query_id"].astype(str))
        m = np.array([i in neg for i in self.qids], bool)
        return self.qids[m], np.asarray(self.xq[m], np.float32)


def open_run(run: str | Path, bench=None) -> RunContext:
    """Open a finished run folder of either track.

    Args:
        run: the run folder.
        bench: the benchmark, or None to load the one named in the run's config.

    Raises:
        RobustnessError: not a run folder, no features, or another benchmark than ``bench``.
    """
    from ..data.benchmark import load_benchmark, sha256_file
    from ..features import has_features, load_features
    from ..methods import get_method
    from ..runfolder import FEATURES, read_config, require_run

    path = Path(run)
    try:
        require_run(path)
    except ImsimError as e:
        raise RobustnessError(str(e)) from None
    config = read_config(path)
    try:
        spec = get_method(config["method"])
    except KeyError as e:
        raise RobustnessError(f"{path}/config.json: {e.args[0]}") from None
    model_args, params = config.get("model_args", {}), config.get("params", {})
    if bench is None:
        root = (config.get("benchmark") or {}).get("root")
        if not root or not Path(root).is_dir():
            raise RobustnessError(f"{path}: its benchmark {root!r} is not there; pass --bench")
        bench = load_benchmark(root, check_hashes=False)
    else:
        want = (config.get("benchmark") or {}).get("manifest_sha256")
        mpath = Path(bench.root) / "manifest.json"
        if want and mpath.is_file() and sha256_file(mpath) != want:
            raise RobustnessError(f"{path}: was run on another benchmark than {bench.root} (manifest differs)")
    if spec.track == "matching":
        from ..runfolder import CANDIDATE_RUN

        crun = (config.get("candidates") or {}).get("run")
        if (not crun or not Path(crun).is_dir()) and (path / CANDIDATE_RUN).is_dir():
            crun = str(path / CANDIDATE_RUN)  # the run folder moved with its own candidate run
        if not crun or not Path(crun).is_dir():
            raise RobustnessError(f"{path}: its candidate run {crun!r} is not there (re-run the method)")
        c = open_run(crun, bench)
        return RunContext(path, config, spec, {}, dict(params), bench, c.qids, c.xq, c.rids, c.xb, c.xt, c)
    feats = path / FEATURES
    need = ["query", "reference"] + (["training"] if spec.needs_training else [])
    missing = [n for n in need if not has_features(feats, n)]
    if missing:
        raise RobustnessError(f"{feats}: no {', '.join(missing)} descriptors (the run did not finish its "
                              "extraction, or the method has no descriptors)")
    fq, fr = load_features(feats, "query"), load_features(feats, "reference")
    xt = load_features(feats, "training").x if spec.needs_training else None
    return RunContext(path, config, spec, dict(model_args), dict(params), bench, fq.ids.astype(str), fq.x,
                      fr.ids.astype(str), fr.x, None if xt is None else np.asarray(xt, np.float32))


def evaluate_query_set(ctx: RunContext, qids: Sequence[str], xq: np.ndarray, truth: Sequence[str],
                       opts=None, extra: dict | None = None, images=None,
                       work: str | Path | None = None) -> tuple[dict, "object"]:
    """Evaluate new queries (each with its true reference) plus the benchmark's distractors.

    The query set is ``qids`` followed by every benchmark query without a match. A descriptor run
    applies its post-processing to that set and draws each protocol's candidates under its global
    budget over the full reference set; a matching run draws the new queries' candidates from its
    candidate run, rescores them with its matcher (the distractors keep the final scores of the run,
    ``candidates.parquet``) and evaluates the rescored pairs.

    Args:
        ctx: an opened run. qids: (n,) new query ids (unique, not benchmark ids).
        xq: (n, d) their raw descriptors (from :meth:`RunContext.create_model`).
        truth: (n,) the reference each should match.
        opts: :class:`~imsim_lab.runner.RunOptions` (backend, max_results, extraction settings).
        extra: columns added to the per-query table (arrays of length n).
        images: matching runs: an :class:`~imsim_lab.features.dataset.ImageSource` of the new queries.
        work: matching runs: a folder for what the matcher computes for the new queries.

    Returns:
        ({protocol: Metrics.to_dict()}, per-query DataFrame of the n new queries with true_rank,
        true_score, top_reference_id, top_score, then the ``extra`` columns).
    """
    import pandas as pd

    from ..eval.formats import GroundTruth
    from ..methods import prepare
    from ..runfolder import per_query_from_predictions
    from ..runner import RunOptions, evaluate_protocols, protocol_predictions

    opts = opts or RunOptions()
    n = len(qids)
    q_new = np.asarray(qids, dtype=object)
    x_new = np.asarray(xq, np.float32).reshape(n, -1) if n else np.zeros((0, ctx.xq.shape[1]), np.float32)
    did, dx = ctx.distractors()
    allq = np.concatenate([q_new, did.astype(object)])
    gt = GroundTruth(allq, np.concatenate([np.asarray(truth, dtype=object), np.full(len(did), "", dtype=object)]))
    if ctx.spec.track == "matching":
        preds = _matching_predictions(ctx, q_new, x_new, set(map(str, did)), images, work, opts)
    else:
        if ctx.config.get("query_crops"):  # the new queries would need the detector's crops as well: not made here
            raise RobustnessError(f"{ctx.path}: a run with queries.crops (the overlay crop replaces the query) cannot "
                                  "be re-evaluated by the robustness suites; run one without it")
        prep = prepare(ctx.spec, np.concatenate([x_new, dx]), ctx.xb, ctx.xt, ctx.params, opts.backend)
        preds = protocol_predictions(prep, allq, ctx.rids.astype(object), gt, opts)
    metrics = evaluate_protocols(gt, preds)
    table = pd.DataFrame({"query_id": np.asarray(qids, dtype=str), "family": "", "strength": np.nan,
                          "has_match": True, "reference_id": np.asarray(truth, dtype=str)})
    pq = per_query_from_predictions(table, preds["isc2021"]).drop(columns=["family", "strength", "has_match"])
    for k, v in (extra or {}).items():
        pq[k] = np.asarray(v)
    return metrics, pq


def _matching_predictions(ctx: RunContext, q_new, x_new, distractors: set, images, work, opts) -> dict:
    """Each protocol's predictions of a matching run on new queries plus the run's distractors."""
    from ..eval.formats import Predictions
    from ..eval.protocols import get_protocol, protocol_names
    from ..methods import MatchContext, prepare
    from ..methods.matching import candidate_pairs, rescore, shortlist_for
    from ..runfolder import read_candidates
    from ..runner import bench_images

    if images is None or work is None:
        raise RobustnessError(f"{ctx.path}: a matching run re-runs its matcher on the new queries: it needs their "
                              "images and a work folder")
    d = ctx.descriptor
    prep = prepare(d.spec, x_new, d.xb, d.xt, d.params, opts.backend)
    source = ctx.spec.candidate_source(ctx.params)
    if source.crops is not None:  # the new queries would need the detector's crops as well: not made here
        raise RobustnessError(f"{ctx.path}: a run with candidates.crops (the detector's crop as the query) cannot be "
                              "re-evaluated by the robustness suites; run one without it")
    shortlist = shortlist_for(ctx.spec.matcher, ctx.params) if source.all_references else None
    pairs = candidate_pairs(prep, q_new, d.rids.astype(object), source, opts.backend, shortlist)
    mctx = MatchContext(queries=images, references=bench_images(ctx.bench, ctx.config, "reference"), work=Path(work), device=opts.device, extract=opts.extract,
                        backend=opts.backend, folders={"reference": ctx.path / "matcher" / "reference",
                                                       "training": ctx.path / "matcher" / "training"},
                        training=bench_images(ctx.bench, ctx.config, "training") if len(ctx.bench.training_ids)
                        else None)
    new, _, _ = rescore(ctx.spec.matcher, ctx.params, pairs, mctx)
    table = read_candidates(ctx.path)
    if table is None:
        raise RobustnessError(f"{ctx.path}: a matching run without candidates.parquet (re-run the method)")
    old = table[table["query_id"].astype(str).isin(distractors)]
    q = np.concatenate([np.asarray(new.query_ids, dtype=object), old["query_id"].to_numpy(dtype=object)])
    r = np.concatenate([np.asarray(new.reference_ids, dtype=object), old["reference_id"].to_numpy(dtype=object)])
    s = np.concatenate([np.asarray(new.scores, np.float64), old["score"].to_numpy(np.float64)])
    order = np.argsort(-s, kind="stable")[: get_protocol("isc2021").max_rows]
    final = Predictions(q[order], r[order], s[order], pairs_checked_unique=True)
    return {p: final for p in protocol_names()}
