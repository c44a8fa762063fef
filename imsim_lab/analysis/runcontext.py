"""A finished run folder, reopened to evaluate new queries against its references.

The robustness suites (:mod:`imsim_lab.analysis.robustness`, graded transformations, and
:mod:`imsim_lab.analysis.attacks`, adversarial queries) edit or attack some queries, embed them with the
run's model and evaluate them as a small benchmark; everything else is reused from the run:

* :func:`open_run` checks a run folder of a descriptor method (``config.json``, ``metrics.json``,
  ``features/``), loads its benchmark and its query, reference and training descriptors into a
  :class:`RunContext`, which can rebuild the run's model (:meth:`RunContext.create_model`);
* :func:`evaluate_query_set` evaluates new queries (each with its true reference) together with
  the benchmark's queries without a match (the distractors stay), against the full reference set,
  with the method's post-processing and both protocols' global budgets, as a run would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
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
        xt: training descriptors (nt, d) or None.
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

    @property
    def label(self) -> str:
        return f"{self.spec.name} ({self.path.name})"

    def create_model(self, device: str | None = None):
        from ..features.models import create_model

        return create_model(self.spec.model, device=device, **self.model_args)

    def distractors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, descriptors) of the benchmark queries without a match."""
        q = self.bench.queries
        neg = set(q.loc[~q["has_match"].astype(bool), "query_id"].astype(str))
        m = np.array([i in neg for i in self.qids], bool)
        return self.qids[m], np.asarray(self.xq[m], np.float32)


def open_run(run: str | Path, bench=None) -> RunContext:
    """Open a finished run folder of a descriptor method (its ``features/`` must exist).

    Args:
        run: the run folder.
        bench: the benchmark, or None to load the one named in the run's config.

    Raises:
        RobustnessError: not a run folder, no features, or another benchmark than ``bench``.
    """
    from ..data.benchmark import load_benchmark, sha256_file
    from ..features import has_features, load_features
    from ..methods import get_method

    path = Path(run)
    if not ((path / "config.json").is_file() and (path / "metrics.json").is_file()):
        raise RobustnessError(f"{path}: not a finished run folder (needs config.json and metrics.json); "
                              f"make one with `imsim-lab run METHOD --bench DIR --out {path}`")
    config = json.loads((path / "config.json").read_text())
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
    feats = path / "features"
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
                       opts=None, extra: dict | None = None) -> tuple[dict, "object"]:
    """Evaluate new queries (each with its true reference) plus the benchmark's distractors.

    The query set is ``qids`` followed by every benchmark query without a match; the method's
    post-processing is applied to that set (as a run would), both protocols' candidates are
    drawn under their global budgets over the full reference set, and the metrics are computed.

    Args:
        ctx: an opened run. qids: (n,) new query ids (unique, not benchmark ids).
        xq: (n, d) their raw descriptors. truth: (n,) the reference each should match.
        opts: :class:`~imsim_lab.runner.RunOptions` (backend, per_query_k, max_results).
        extra: columns added to the per-query table (arrays of length n).

    Returns:
        ({"isc2021": Metrics.to_dict(), "drivendata": ...}, per-query DataFrame of the n new
        queries with true_rank, true_score, top_reference_id, top_score).
    """
    import pandas as pd

    from ..eval.candidates import descriptor_predictions
    from ..eval.formats import DescriptorSubmission, GroundTruth, Predictions
    from ..methods import prepare
    from ..eval.metrics import evaluate
    from ..runner import RunOptions, per_query_table

    opts = opts or RunOptions()
    did, dx = ctx.distractors()
    allq = np.concatenate([np.asarray(qids, dtype=object), did.astype(object)])
    x = np.concatenate([np.asarray(xq, np.float32).reshape(len(qids), -1), dx]) if len(qids) else dx
    refs = np.concatenate([np.asarray(truth, dtype=object), np.full(len(did), "", dtype=object)])
    gt = GroundTruth(allq, refs)
    prep = prepare(ctx.spec, x, ctx.xb, ctx.xt, ctx.params, opts.backend)
    sub = DescriptorSubmission(allq, prep.xq, ctx.rids.astype(object), prep.xb)
    metrics = {}
    for protocol in ("isc2021", "drivendata"):
        kw = {"max_results": opts.max_results} if protocol == "isc2021" else {}
        p = descriptor_predictions(sub, gt, protocol, metric=prep.metric, backend=opts.backend, **kw)
        if prep.score_scale != 1.0 or prep.score_offset != 0.0:
            p = Predictions(p.query_ids, p.reference_ids, prep.score_scale * p.scores + prep.score_offset)
        metrics[protocol] = evaluate(gt, p, protocol).to_dict()
    n = len(qids)
    table = pd.DataFrame({"query_id": np.asarray(qids, dtype=str), "family": "", "strength": np.nan,
                          "has_match": True, "reference_id": np.asarray(truth, dtype=str)})
    fake = SimpleNamespace(queries=table)
    pq = per_query_table(fake, allq[:n], ctx.rids, SimpleNamespace(
        xq=prep.xq[:n], xb=prep.xb, metric=prep.metric, score_scale=prep.score_scale,
        score_offset=prep.score_offset), opts) if n else table.assign(true_rank=[], true_score=[],
                                                                     top_reference_id=[], top_score=[])
    pq = pq.drop(columns=["family", "strength", "has_match"])
    for k, v in (extra or {}).items():
        pq[k] = np.asarray(v)
    return metrics, pq
