"""The adversarial suite: attack a sample of queries on a surrogate run, evaluate every method.

    SURROGATE_RUN/robustness/attacks/<attack name>/
        attack.json        configuration, sample, timings (seconds per attacked query and epsilon)
        queries.parquet    the attacked queries: query_id, reference_id, target_id (targeted)
        images/eps_<e>/    the adversarial queries as files (PNG, or JPEG when re-encoded)
        examples/eps_<e>/  the amplified perturbation of the first few queries
        features/<run>/    descriptors of the adversarial queries per evaluated method (resumable)
        curves.parquet     one row per evaluated run, epsilon and protocol: µAP, R@P90, R@1 ...
        curves.json        the same rows, with the configuration
        per_query.parquet  per evaluated run and epsilon: rank of the original, top-1 before/after

The surrogate run is evaluated first (white-box); every other run folder of the same benchmark is
a transfer target (SSCD through onnxruntime included: it only has to read the image files).
Queries without a match stay clean distractors, and the references are the full reference set of
each run (:func:`imsim_lab.analysis.runcontext.evaluate_query_set`). Every image and descriptor file is
written atomically; a re-run reuses them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...atomic import atomic_path, atomic_write_json, atomic_write_parquet
from ..runcontext import RobustnessError, evaluate_query_set, open_run
from .core import AttackConfig, AttackError, DifferentiableDescriptor, attack, perturbation_image, quantize

DEFAULT_EPS_LINF = (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
DEFAULT_EPS_L2 = (0.0, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class SuiteConfig:
    """Attack settings (``attack.eps`` is replaced by each value of ``eps``) and the sample.

    Attributes:
        attack: the attack; eps: the budgets of the curve (0 = the clean queries).
        sample: how many queries with a match to attack (seeded), None = all.
        seed: of the sample and of the targets. n_examples: queries whose perturbation is saved.
        batch_size: images of one size attacked together.
    """

    attack: AttackConfig = field(default_factory=AttackConfig)
    eps: tuple[float, ...] = DEFAULT_EPS_LINF
    sample: int | None = 100
    seed: int = 0
    n_examples: int = 4
    batch_size: int = 8

    def __post_init__(self):
        object.__setattr__(self, "eps", tuple(sorted({float(e) for e in self.eps})))
        if any(e < 0 for e in self.eps):
            raise RobustnessError(f"epsilons must be >= 0, got {list(self.eps)}")


def eps_label(eps: float, norm: str) -> str:
    """``8/255`` for L-inf budgets (in levels when whole), ``L2 1.0`` otherwise."""
    if norm == "linf":
        v = eps * 255
        return f"{round(v)}/255" if abs(v - round(v)) < 1e-6 else f"{v:.2f}/255"
    return f"L2 {eps:g}"


def _eps_dir(eps: float) -> str:
    return f"eps_{eps:.6f}"


def sample_queries(bench, n: int | None, seed: int = 0) -> list[str]:
    """A seeded sample of the queries with a match (sorted); all of them when n is None."""
    q = bench.queries
    ids = sorted(q.loc[q["has_match"].astype(bool), "query_id"].astype(str))
    if n is None or n >= len(ids):
        return ids
    pick = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return sorted(ids[i] for i in pick)


def choose_targets(query_refs: Sequence[str], reference_ids: Sequence[str], seed: int = 0) -> list[str]:
    """One other reference per query (never its own match), seeded."""
    refs = np.asarray(reference_ids, dtype=str)
    rng = np.random.default_rng(seed + 7919)
    out = []
    for r in query_refs:
        while True:
            t = str(refs[rng.integers(len(refs))])
            if t != r or len(refs) == 1:
                break
        out.append(t)
    return out


def _load_rgb(path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError) as e:
        raise RobustnessError(f"{path}: cannot read the image ({e})") from None


def _save(img: np.ndarray, path: Path, jpeg_quality: int | None) -> None:
    from PIL import Image

    with atomic_path(path, suffix=path.suffix) as tmp:
        if jpeg_quality is None:
            Image.fromarray(img, "RGB").save(tmp, format="PNG")
        else:  # the re-encoded file IS the upload: bytes of jpeg_roundtrip at this quality
            Image.fromarray(img, "RGB").save(tmp, format="JPEG", quality=int(jpeg_quality), subsampling=2)


def make_adversarial(ctx, qids: list[str], anchors: np.ndarray, cfg: SuiteConfig, eps: float, folder: Path,
                     device: str | None = None, examples: Sequence[str] = (),
                     progress: Callable[[int], None] | None = None) -> tuple[list[Path], float]:
    """Attack ``qids`` at budget ``eps`` on the run's model; write the images into ``folder``.

    Images already there are kept (resume). Returns (paths in the order of ``qids``, seconds per
    newly attacked query, NaN when none was new).
    """
    import torch

    acfg = replace(cfg.attack, eps=eps)
    ext = ".png" if acfg.jpeg_quality is None else ".jpg"
    paths = [folder / f"{q}{ext}" for q in qids]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if not todo:
        return paths, float("nan")
    f = DifferentiableDescriptor(ctx.create_model(device))
    clean = {i: _load_rgb(ctx.bench.image_path(qids[i])) for i in todo}
    by_size: dict[tuple, list[int]] = {}
    for i in todo:
        by_size.setdefault(clean[i].shape, []).append(i)
    t0 = time.perf_counter()
    for idx in by_size.values():
        for b in range(0, len(idx), cfg.batch_size):
            chunk = idx[b:b + cfg.batch_size]
            x = torch.from_numpy(np.stack([clean[i] for i in chunk])).permute(0, 3, 1, 2).float().div(255.0)
            a = torch.from_numpy(np.asarray(anchors[chunk], np.float32))
            xa = attack(f, x.to(f.device), a.to(f.device), acfg).cpu().permute(0, 2, 3, 1).numpy()
            for j, i in enumerate(chunk):
                adv = quantize(xa[j], clean[i], acfg)
                if acfg.jpeg_quality is not None:
                    _save(adv, paths[i], acfg.jpeg_quality)
                    adv = _load_rgb(paths[i])
                else:
                    _save(adv, paths[i], None)
                if qids[i] in examples:
                    _save(perturbation_image(clean[i], adv), folder.parent.parent / "examples" / folder.name
                          / f"{qids[i]}_diff.png", None)
            if progress:
                progress(len(chunk))
    return paths, (time.perf_counter() - t0) / len(todo)


def _run_key(ctx) -> str:
    h = hashlib.sha256(str(ctx.path.resolve()).encode()).hexdigest()[:8]
    return f"{ctx.spec.name}-{h}"


def _meta(ctx, cfg: SuiteConfig, qids: list[str]) -> dict:
    a = cfg.attack.to_dict()
    a.pop("eps")
    return {"surrogate_model": ctx.model_fingerprint(), "attack": a,
            "seed": cfg.seed, "queries": hashlib.sha256("\n".join(qids).encode()).hexdigest()[:16]}


def run_attack_suite(surrogate: str | Path, cfg: SuiteConfig = SuiteConfig(), eval_runs: Sequence[str | Path] = (),
                     bench=None, opts=None, device: str | None = None, force: bool = False,
                     progress: Callable[[str, int], Callable[[int], None]] | None = None):
    """Attack a sample of queries on the surrogate run's model and evaluate the surrogate
    (white-box) and every run of ``eval_runs`` (transfer) at each epsilon.

    Args:
        surrogate: a finished run folder of a torch descriptor method.
        cfg: the attack, epsilons and sample. eval_runs: transfer targets (run folders of the
            same benchmark). bench: the benchmark (default: the surrogate run's).
        opts: :class:`~imsim_lab.runner.RunOptions`. device: for the models.
        force: drop cached images made with other settings.
        progress: ``progress(what, total) -> update(n)``; None: silent.

    Returns:
        The curves table (DataFrame), also written to ``curves.parquet``.

    Raises:
        RobustnessError: bad runs, or a cache of other settings (use ``force``).
        AttackError: the surrogate's model is not differentiable.
    """
    import pandas as pd

    from ...features import ExtractConfig, extract_split
    from ...features.dataset import ImageSource

    sur = open_run(surrogate, bench)
    if sur.spec.track != "descriptor":
        raise AttackError(f"{sur.path}: a run of the matching method {sur.spec.name!r} cannot be a surrogate (attacks "
                          "follow the gradient of a descriptor); use it as a transfer target")
    DifferentiableDescriptor(sur.create_model("cpu"))  # fail early on a non-differentiable surrogate
    others = [open_run(r, sur.bench) for r in eval_runs]
    acfg = cfg.attack
    out = sur.path / "robustness" / "attacks" / acfg.name
    qids = sample_queries(sur.bench, cfg.sample, cfg.seed)
    q = sur.bench.queries.set_index("query_id")
    truth = [str(q.loc[i, "reference_id"]) for i in qids]
    targets = choose_targets(truth, sur.rids, cfg.seed) if acfg.targeted else [""] * len(qids)
    rpos = {r: i for i, r in enumerate(sur.rids)}
    missing = [r for r in (targets if acfg.targeted else truth) if r not in rpos]
    if missing:
        raise RobustnessError(f"{sur.path}: no descriptor for references {missing[:3]} (failed extraction?)")
    anchors = np.asarray(sur.xb[[rpos[r] for r in (targets if acfg.targeted else truth)]], np.float32)
    meta = _meta(sur, cfg, qids)
    jpath = out / "attack.json"
    if jpath.is_file() and json.loads(jpath.read_text()).get("meta") != meta:
        if not force:
            raise RobustnessError(f"{out}: holds adversarial images made with other settings; pass force to remake "
                                  "them")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(out / "queries.parquet", pd.DataFrame({"query_id": qids, "reference_id": truth,
                                                          "target_id": targets}))
    examples = qids[:cfg.n_examples]
    timings: dict[str, float] = {}
    old = json.loads(jpath.read_text()).get("seconds_per_query", {}) if jpath.is_file() else {}
    paths_of: dict[float, list[Path]] = {}
    for e in cfg.eps:
        if e == 0:
            paths_of[e] = [sur.bench.image_path(i) for i in qids]
            continue
        upd = progress(f"attack {eps_label(e, acfg.norm)}", len(qids)) if progress else None
        paths_of[e], spq = make_adversarial(sur, qids, anchors, cfg, e, out / "images" / _eps_dir(e), device,
                                            examples, upd)
        key = eps_label(e, acfg.norm)
        timings[key] = round(spq, 4) if spq == spq else old.get(key)
    info = {"suite": "attack", "attack": acfg.name, "config": {**acfg.to_dict(), "eps": list(cfg.eps)},
            "sample": cfg.sample, "seed": cfg.seed, "n_queries": len(qids), "surrogate": str(sur.path),
            "surrogate_method": sur.spec.name, "benchmark": sur.bench.name, "meta": meta,
            "seconds_per_query": {**old, **{k: v for k, v in timings.items() if v is not None}},
            "device": device or "auto", "examples": examples}
    atomic_write_json(jpath, info)

    rows, pqs = [], []
    for ctx in [sur] + others:
        kind = "white-box" if ctx is sur else "transfer"
        qpos = {i: k for k, i in enumerate(ctx.qids)}
        if any(i not in qpos for i in qids):
            raise RobustnessError(f"{ctx.path}: lacks descriptors of some attacked queries (failed extraction?)")
        clean = np.asarray(ctx.xq[[qpos[i] for i in qids]], np.float32)
        rp = {r: i for i, r in enumerate(ctx.rids)}
        orig = np.asarray(ctx.xb[[rp[r] for r in truth]], np.float32)
        model = None
        for e in cfg.eps:
            if e == 0:
                x = clean
            else:
                model = model or ctx.create_model(device)
                fdir = out / "features" / _run_key(ctx) / _eps_dir(e)
                upd = progress(f"{ctx.spec.name} {eps_label(e, acfg.norm)}", len(qids)) if progress else None
                fs = extract_split(model, paths_of[e], qids, fdir, "query", ExtractConfig(num_workers=0), upd)
                if fs.failed:
                    raise RobustnessError(f"{fdir}: unreadable adversarial images: {fs.failed[:2]}")
                x = np.asarray(fs.x, np.float32)
            images = ImageSource.files(qids, paths_of[e], f"attack/{meta['queries']}/{acfg.name}/{_eps_dir(e)}") \
                if ctx.spec.track == "matching" else None
            metrics, pq = evaluate_query_set(ctx, qids, x, truth, opts,
                                             extra={"target_id": targets, "eps": [e] * len(qids)}, images=images,
                                             work=out / "matcher" / _run_key(ctx) / _eps_dir(e))
            pq.insert(0, "eval_label", ctx.label)
            pq.insert(1, "kind", kind)
            pqs.append(pq)
            shift = float(np.linalg.norm(x - clean, axis=1).mean()) if len(x) else float("nan")
            dist = float(np.linalg.norm(x - orig, axis=1).mean()) if len(x) else float("nan")
            hit = float((pq["top_reference_id"].to_numpy() == np.asarray(targets)).mean()) if acfg.targeted \
                else float("nan")
            for protocol, m in metrics.items():
                rows.append({"attack": acfg.name, "surrogate": sur.spec.name, "eval_label": ctx.label,
                             "eval_method": ctx.spec.name, "eval_run": str(ctx.path), "kind": kind, "eps": e,
                             "eps_label": eps_label(e, acfg.norm), "protocol": protocol,
                             "micro_ap": m["micro_ap"], "recall_at_p90": m["recall_at_p90"],
                             "recall_at_rank1": m["recall_at_rank1"], "n_positives": m["n_positives"],
                             "descriptor_shift": shift, "distance_to_original": dist, "target_top1_rate": hit})
    curves = pd.DataFrame(rows)
    atomic_write_parquet(out / "curves.parquet", curves)
    atomic_write_parquet(out / "per_query.parquet", pd.concat(pqs, ignore_index=True))
    atomic_write_json(out / "curves.json", {**info, "rows": json.loads(curves.to_json(orient="records"))})
    return curves
