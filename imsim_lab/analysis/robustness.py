"""Graded robustness suite: µAP versus the strength of each transformation family.

The ISC2021 organisers found global descriptors most fragile to rotation, vertical flip, very
small crops, air-gap re-captures and combinations of several images (DISC21 paper, arXiv
2106.09672). This suite measures that for any method, family by family and strength by strength:

1. a seeded sample of the references that have a match is drawn once (the same for every cell);
2. for each family f and strength s, every sampled reference is edited with
   :func:`imsim_lab.data.augment.apply_family` (the random choices of an edit depend only on the seed,
   the family and the reference, so only the magnitude changes along a curve), re-encoded as
   JPEG like the benchmark's own queries, and embedded with the method's model;
3. the cell (f, s) is evaluated as a small benchmark: its edited queries (each matching its
   reference) plus every benchmark query without a match (the distractors stay, as in
   :func:`imsim_lab.eval.metrics.evaluate` with ``queries=``), searched against the full reference set
   with the method's post-processing and both protocols' global budgets.

Each cell's µAP is the restricted µAP of the per-family tables: its positives against every
distractor, so it depends on the sample size (fewer positives, more weight on the distractors'
best scores); R@1 does not. Compare cells and methods at the same sample.

With a run folder the reference, training and distractor descriptors are reused from
``RUN/features``: only the edited queries are extracted. Each cell's descriptors are cached in
``RUN/robustness/graded/cells/`` (atomic files), so an interrupted suite resumes and a re-run is
instant. Outputs: ``RUN/robustness/graded.parquet`` and ``graded.json`` (one row per family,
strength and protocol), ``graded/per_query.parquet`` and one example image per cell.

The run folder is opened and each cell evaluated with :mod:`imsim_lab.analysis.runcontext` (shared with
:mod:`imsim_lab.analysis.attacks`). Any method runs: a matching run's cell embeds the edited queries
with its candidate run's model, then its matcher rescores their candidates on the edited images
(made on the fly, never written to disk), with the matcher's work for them kept in
``graded/cells/<cell>_matcher/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path, atomic_write_json, atomic_write_npz, atomic_write_parquet
from .runcontext import RobustnessError, RunContext, evaluate_query_set, open_run

__all__ = ["DEFAULT_FAMILIES", "DEFAULT_STRENGTHS", "METRIC_KEYS", "GradedConfig", "bench_assets", "edit_image",
           "edit_seed", "edited_source", "extract_cell", "read_graded", "run_graded", "sample_references"]

#: the families the organisers found hardest, plus common edits as a yardstick
DEFAULT_FAMILIES = ("rotate", "vflip", "hflip", "crop", "scale", "perspective", "blur", "jpeg", "text",
                    "overlay_image", "combine", "airgap")
DEFAULT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
METRIC_KEYS = ("micro_ap", "recall_at_p90", "recall_at_rank1", "recall_at_rank10", "n_positives", "n_predictions")


@dataclass(frozen=True)
class GradedConfig:
    """What the graded suite computes.

    Attributes:
        families: names of :data:`imsim_lab.data.augment.FAMILIES`.
        strengths: values in [0, 1].
        sample: how many matched references to edit (a seeded sample); None = all of them.
        seed: seeds the sample and every edit.
        jpeg_quality: the edited queries are saved as JPEG at this quality before embedding, as
            the benchmark's own queries are (None: embed the decoded edit directly).
    """

    families: tuple[str, ...] = DEFAULT_FAMILIES
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    sample: int | None = 200
    seed: int = 0
    jpeg_quality: int | None = 90

    def __post_init__(self):
        from ..data.augment import FAMILIES

        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise RobustnessError(f"unknown transformation families {bad}; known: {', '.join(FAMILIES.names())}")
        if any(not 0.0 <= float(s) <= 1.0 for s in self.strengths):
            raise RobustnessError(f"strengths must lie in [0, 1], got {list(self.strengths)}")
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "strengths", tuple(sorted({round(float(s), 4) for s in self.strengths})))


def edit_seed(seed: int, family: str, image_id: str) -> int:
    """The seed of one edit: a function of (seed, family, image) only, not of the strength."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{family}/{image_id}".encode()).digest()[:8], "little")


def sample_references(bench, n: int | None, seed: int = 0) -> list[str]:
    """A seeded sample of the references that have a match (sorted), all of them when n is None."""
    refs = sorted(set(bench.queries.loc[bench.queries["has_match"].astype(bool), "reference_id"].astype(str)))
    if n is None or n >= len(refs):
        return refs
    pick = np.random.default_rng(seed).choice(len(refs), size=n, replace=False)
    return sorted(refs[i] for i in pick)


class _ImageFiles:
    """Picklable ``id -> RGB image`` over a dict of paths (for :class:`~imsim_lab.data.augment.Assets`)."""

    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    def __call__(self, image_id: str):
        from PIL import Image

        with Image.open(self.paths[image_id]) as im:
            return im.convert("RGB")


def bench_assets(bench, max_images: int = 512):
    """Assets whose other images (overlay, paste, combine) are the benchmark's held-out originals,
    else its training images: never references, as in the benchmark builder."""
    from ..data.augment import Assets

    for folder in (Path(bench.root) / "held_out", Path(bench.root) / "training"):
        if folder.is_dir():
            paths = {p.stem: str(p) for p in sorted(folder.iterdir())
                     if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
            if paths:
                ids = tuple(sorted(paths)[:max_images])
                return Assets.from_augly(images=_ImageFiles({i: paths[i] for i in ids}), image_ids=ids)
    return Assets.from_augly()


def edit_image(img, family: str, strength: float, seed: int, image_id: str, assets=None,
               jpeg_quality: int | None = 90):
    """One graded edit of ``img``: the family's ops at ``strength``, then the JPEG re-encoding.

    Returns (PIL RGB image, list of ops)."""
    from PIL import Image

    from ..data.augment import apply_family

    out, ops = apply_family(img, family, strength, np.random.default_rng(edit_seed(seed, family, image_id)), assets)
    if jpeg_quality is not None:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(jpeg_quality), subsampling=2)
        buf.seek(0)
        out = Image.open(buf).convert("RGB")
    return out, ops


class _EditedReferences:
    """Dataset: i -> (i, preprocessed array or None, error) for DataLoader workers."""

    def __init__(self, paths, ids, family, strength, cfg: GradedConfig, assets, preprocess):
        self.paths, self.ids, self.family, self.strength = paths, ids, family, strength
        self.cfg, self.assets, self.preprocess = cfg, assets, preprocess

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as im:
                img = im.convert("RGB")
            out, _ = edit_image(img, self.family, self.strength, self.cfg.seed, self.ids[i], self.assets,
                                self.cfg.jpeg_quality)
            return i, self.preprocess(out), None
        except Exception as e:  # noqa: BLE001 - reported by id, the suite goes on
            return i, None, f"{self.paths[i]}: {type(e).__name__}: {e}"


def edited_source(bench, ref_ids: list[str], qids, family: str, strength: float, cfg: GradedConfig, assets,
                  key: str):
    """The edited references of a cell as an :class:`~imsim_lab.features.dataset.ImageSource`
    addressed by the cell's query ids (edits made on the fly for any preprocessing)."""
    from ..features.dataset import ImageSource

    paths = [str(bench.image_path(r)) for r in ref_ids]
    return ImageSource(qids, lambda pos, pre: _EditedReferences([paths[k] for k in pos], [ref_ids[k] for k in pos],
                                                               family, strength, cfg, assets, pre), f"graded/{key}")


def _cell_name(family: str, strength: float) -> str:
    return f"{family}_{strength:.4f}"


def extract_cell(model, bench, ref_ids: list[str], family: str, strength: float, cfg: GradedConfig, assets,
                 batch_size: int = 16, num_workers: int = 0, progress: Callable[[int], None] | None = None):
    """Descriptors of the edited references of one cell: (ids (m,), x (m, d), failures).

    Edits and embeddings go through the extraction's batching
    (:func:`~imsim_lab.features.embedded_batches`): ``num_workers`` DataLoader processes, or one
    thread per core for models that run best that way (SSCD ONNX on CPU).
    """
    from ..features import ExtractConfig, batches_of, embedded_batches

    ds = _EditedReferences([str(bench.image_path(r)) for r in ref_ids], ref_ids, family, strength, cfg, assets,
                           model.preprocess)
    ids, xs, failed = [], [], []
    for idx, x, failures in embedded_batches(model, ds, batches_of(len(ds), batch_size),
                                             ExtractConfig(batch_size=batch_size, num_workers=num_workers)):
        failed += [{"id": ref_ids[i], "error": err} for i, err in failures]
        if len(idx):
            xs.append(x)
            ids += [ref_ids[i] for i in idx]
        if progress:
            progress(len(idx) + len(failures))
    x = np.concatenate(xs) if xs else np.zeros((0, model.dim), np.float32)
    return np.asarray(ids, dtype=str), x.astype(np.float32), failed


def _meta(ctx: RunContext, cfg: GradedConfig, refs: list[str]) -> dict:
    meta = {"model_fingerprint": ctx.model_fingerprint(), "seed": cfg.seed, "jpeg_quality": cfg.jpeg_quality,
            "references": hashlib.sha256("\n".join(refs).encode()).hexdigest()[:16], "n_references": len(refs)}
    if ctx.spec.track == "matching":
        meta["matcher"] = {"name": ctx.spec.matcher, "params": ctx.params}
    return meta


def run_graded(run: str | Path, cfg: GradedConfig = GradedConfig(), bench=None, opts=None, device: str | None = None,
               batch_size: int = 16, num_workers: int = 0, force: bool = False,
               progress: Callable[[str, int], Callable[[int], None]] | None = None):
    """Run the graded suite on a finished run folder; writes ``RUN/robustness/graded.*``.

    Args:
        run: a run folder (see :func:`open_run`). cfg: families, strengths, sample, seed.
        bench: the benchmark (default: the run's). opts: :class:`~imsim_lab.runner.RunOptions`.
        device: for the model. batch_size, num_workers: of the editing DataLoader.
        force: drop the cached cells (needed when they were made with other settings).
        progress: ``progress(cell, total) -> update(n)`` for progress bars; None: silent.

    Returns:
        The table (DataFrame): family, group, strength, protocol, :data:`METRIC_KEYS`, n_failed.

    Raises:
        RobustnessError: the cache holds cells of other settings (use ``force``).
    """
    import pandas as pd

    from ..data.augment import FAMILIES

    ctx = open_run(run, bench)
    out = ctx.path / "robustness"
    folder = out / "graded"
    cells = folder / "cells"
    refs = sample_references(ctx.bench, cfg.sample, cfg.seed)
    meta = _meta(ctx, cfg, refs)
    mpath = folder / "meta.json"
    if mpath.is_file() and json.loads(mpath.read_text()) != meta:
        if not force:
            raise RobustnessError(f"{folder}: cached cells were made with other settings (model, seed, sample or "
                                  "JPEG quality differ); pass force to recompute them")
        shutil.rmtree(cells, ignore_errors=True)
    cells.mkdir(parents=True, exist_ok=True)
    (folder / "examples").mkdir(exist_ok=True)
    atomic_write_json(mpath, meta)
    assets = bench_assets(ctx.bench)
    model = None
    rows, pqs, timings = [], [], {}
    for family in cfg.families:
        for s in cfg.strengths:
            name = _cell_name(family, s)
            path = cells / f"{name}.npz"
            t = time.perf_counter()
            if not path.is_file():
                model = model or ctx.create_model(device)
                upd = progress(name, len(refs)) if progress else None
                ids, x, failed = extract_cell(model, ctx.bench, refs, family, s, cfg, assets, batch_size,
                                              num_workers, upd)
                atomic_write_npz(path, ids=ids, x=x, failed=np.array(json.dumps(failed)))
                _save_example(ctx.bench, refs, family, s, cfg, assets, folder / "examples" / f"{name}.jpg")
                timings[name] = round(time.perf_counter() - t, 3)
            with np.load(path, allow_pickle=False) as z:
                ids, x, failed = z["ids"].astype(str), z["x"], json.loads(str(z["failed"]))
            qids = np.array([f"{family}@{s:.2f}/{r}" for r in ids], dtype=object)
            images = edited_source(ctx.bench, list(ids), qids, family, s, cfg, assets, f"{meta['references']}/{name}") \
                if ctx.spec.track == "matching" else None
            metrics, pq = evaluate_query_set(ctx, qids, x, ids, opts, extra={"family": [family] * len(ids),
                                                                             "strength": [s] * len(ids)},
                                             images=images, work=cells / f"{name}_matcher")
            pqs.append(pq)
            for protocol, m in metrics.items():
                rows.append({"family": family, "group": FAMILIES.get(family).group, "strength": s,
                             "protocol": protocol, **{k: m.get(k) for k in METRIC_KEYS},
                             "n_failed": len(failed)})
    table = pd.DataFrame(rows)
    atomic_write_parquet(out / "graded.parquet", table)
    atomic_write_parquet(folder / "per_query.parquet", pd.concat(pqs, ignore_index=True) if pqs else pd.DataFrame())
    atomic_write_json(out / "graded.json", {
        "suite": "graded", "run": str(ctx.path), "method": ctx.spec.name, "benchmark": ctx.bench.name,
        "config": asdict(cfg), "meta": meta, "seconds_per_new_cell": timings,
        "rows": json.loads(table.to_json(orient="records"))})
    return table


def _save_example(bench, refs, family, s, cfg, assets, path: Path, long_side: int = 256) -> None:
    """A thumbnail of the first sampled reference's edit (what the cell's queries look like)."""
    if not refs:
        return
    from PIL import Image

    try:
        with Image.open(bench.image_path(refs[0])) as im:
            img, _ = edit_image(im.convert("RGB"), family, s, cfg.seed, refs[0], assets, cfg.jpeg_quality)
    except Exception:  # noqa: BLE001 - the example is cosmetic; the cell already recorded failures
        return
    img.thumbnail((long_side, long_side))
    with atomic_path(path, suffix=".jpg") as tmp:
        img.save(tmp, format="JPEG", quality=85)


def read_graded(run: str | Path):
    """The graded table of a run folder (None when the suite has not been run there)."""
    import pandas as pd

    p = Path(run) / "robustness" / "graded.parquet"
    return pd.read_parquet(p) if p.is_file() else None
