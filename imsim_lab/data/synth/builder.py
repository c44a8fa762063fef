"""Build a disc-synth benchmark folder: plan, originals, queries, tables (in that order).

    from imsim_lab.data.synth import BuildConfig, build_benchmark
    report = build_benchmark(BuildConfig(preset="tiny", seed=0), "bench/tiny")

Every image has its own seed derived from (global seed, role, index), and the workers only execute
the plan (:mod:`.plan`), so the bytes do not depend on the number of processes. Images are
written atomically (temporary file + rename) and a build that stops is resumed by running it
again: finished images are kept and only their query ops are re-derived (cheap). Nothing here
prints; the caller passes ``progress(phase, done, total)`` to follow it.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ... import __version__
from ...atomic import atomic_path, atomic_write_text
from ..benchmark import SPLITS, BenchmarkError, write_parquet, write_tables
from ...system import usable_cores
from .photos import SourceImageError, fit_long_side, load_source_image, packaged_photos, scan_source
from .plan import Original, Plan, QuerySpec, plan_from_files, plan_synthetic
from .presets import PRESETS, Preset

GENERATOR = "disc-synth"
#: bump when the same seed would give other images (scenes, plan or query sampling changed)
VERSION = "2.0"
STATE_FILE = ".disc-synth-build.json"
#: held-out originals and training images: image_id, split, scene, sibling_group, source, ...
ORIGINALS_TABLE = "originals.parquet"
PHOTO_LONG_SIDE = 512
USER_LONG_SIDE = 1024

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BuildConfig:
    """What to build.

    Attributes:
        preset: a name of :data:`PRESETS` or a :class:`Preset`.
        seed: the global seed.
        source: a folder of the user's photos to use as originals instead of drawn scenes.
        workers: processes (None: every CPU this process may use; 1: no pool).
        name: the benchmark name (default ``disc-synth-<preset>-s<seed>``).
    """

    preset: str | Preset = "small"
    seed: int = 0
    source: str | None = None
    workers: int | None = None
    name: str | None = None

    def resolved_preset(self) -> Preset:
        return self.preset if isinstance(self.preset, Preset) else PRESETS.get(self.preset)


@dataclass
class BuildReport:
    """What a build did: the manifest, timings per phase, throughput and the source-file report."""

    root: str
    manifest: dict
    timings: dict = field(default_factory=dict)
    images_written: int = 0
    images_reused: int = 0
    images_per_second: float = 0.0
    workers: int = 1
    skipped: list = field(default_factory=list)    # [{"path", "reason"}]
    converted: list = field(default_factory=list)  # [{"path", "note"}]

    def to_dict(self) -> dict:
        return asdict(self)


#: worker processes of a build when none are given: one per usable core
default_workers = usable_cores


# --------------------------------------------------------------------------------------------
# worker side (module level so that the process pool can pickle it)

_W: dict = {}


def _init_worker(root: str, quality: int, asset_ids: tuple[str, ...]) -> None:
    _W.clear()
    _W.update(root=Path(root), quality=quality, asset_ids=asset_ids, assets=None)


def _path(image_id: str) -> Path:
    letter = image_id[0]
    folder = next(f for f, l in SPLITS.values() if l == letter)
    return _W["root"] / folder / f"{image_id}.jpg"


def save_jpeg(img: Image.Image, path, quality: int) -> None:
    """Deterministic JPEG (fixed quality and subsampling, no optimisation pass).

    ``path`` is a file path (written atomically: temporary file, then rename) or a binary buffer.
    """
    opts = dict(format="JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    if not isinstance(path, (str, os.PathLike)):
        img.convert("RGB").save(path, **opts)
        return
    with atomic_path(path) as tmp:
        img.convert("RGB").save(tmp, **opts)


def _done_size(path: Path) -> tuple[int, int] | None:
    """Size of an image already written by an earlier (interrupted) run, else None."""
    if not path.exists():
        return None
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError):
        return None


def _make_original(o: Original) -> tuple[str, int, int, bool]:
    from .scenes import render_scene

    path = _path(o.image_id)
    done = _done_size(path)
    if done is not None:
        return o.image_id, done[0], done[1], True
    if o.kind == "scene":
        img = render_scene(o.scene, o.seed, o.size, o.sibling)
    elif o.kind == "photo":
        with Image.open(o.path) as im:
            img = fit_long_side(im.convert("RGB"), PHOTO_LONG_SIDE)
    else:
        raise BenchmarkError(f"{o.image_id}: user images are staged, not made by a worker")
    save_jpeg(img, path, _W["quality"])
    return o.image_id, img.width, img.height, False


def _assets():
    from ..augment import Assets

    if _W.get("assets") is None:
        _W["assets"] = Assets.from_augly(images=lambda i: _load(i), image_ids=_W["asset_ids"])
    return _W["assets"]


def _load(image_id: str) -> Image.Image:
    path = _path(image_id)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as e:
        raise BenchmarkError(f"{path}: cannot read ({e})") from None


def _make_query(q: QuerySpec) -> tuple[str, str, int, int, bool]:
    from ..augment import apply_ops, ops_to_json, sample_ops

    path = _path(q.query_id)
    src = _load(q.source_id)
    rng = np.random.default_rng(q.seed)
    ops = sample_ops(q.family, q.strength, rng, src.size, _assets())
    done = _done_size(path)
    if done is not None:
        return q.query_id, ops_to_json(ops), done[0], done[1], True
    img = apply_ops(src, ops, _assets())
    save_jpeg(img, path, _W["quality"])
    return q.query_id, ops_to_json(ops), img.width, img.height, False


def _stage_user(args: tuple[int, str, str]) -> tuple[int, str, str]:
    """Check and convert one user file into the staging folder: (index, status, detail)."""
    index, path, staging = args
    try:
        img, note = load_source_image(path, USER_LONG_SIDE)
    except SourceImageError as e:
        return index, "skipped", e.reason
    save_jpeg(img, Path(staging) / f"{index:08d}.jpg", _W["quality"])
    return index, "converted" if note else "ok", note


# --------------------------------------------------------------------------------------------
# orchestration


class _Runner:
    """Runs a function over jobs in order, in-process or with a forkserver pool."""

    def __init__(self, workers: int, initargs: tuple):
        self.workers = workers
        self.initargs = initargs
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(["imsim_lab.data.synth.builder", "imsim_lab.data.synth.scenes", "imsim_lab.data.augment"])
            self.pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=self.initargs)
        _init_worker(*self.initargs)
        return self

    def map(self, fn, jobs, phase: str, progress: Progress | None):
        total = len(jobs)
        if progress:
            progress(phase, 0, total)
        it = (map(fn, jobs) if self.pool is None
              else self.pool.imap(fn, jobs, chunksize=max(1, min(16, total // (self.workers * 8) or 1))))
        out = []
        for r in it:
            out.append(r)
            if progress:
                progress(phase, len(out), total)
        return out

    def __exit__(self, *exc):
        if self.pool is not None:
            if exc[0] is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()


def _state_of(cfg: BuildConfig, preset: Preset) -> dict:
    return json.loads(json.dumps({"generator": GENERATOR, "version": VERSION, "seed": int(cfg.seed), "preset": asdict(preset),
            "source": str(Path(cfg.source).resolve()) if cfg.source else None}))


def _prepare_out(out: Path, state: dict, overwrite: bool) -> None:
    sf = out / STATE_FILE
    if out.exists() and any(out.iterdir()):
        same = sf.exists() and json.loads(sf.read_text(encoding="utf-8")) == state
        if not same:
            if not overwrite:
                raise BenchmarkError(f"{out}: folder is not empty and holds no build of these settings; "
                                     "choose another --out or pass --overwrite")
            for name in [*(f for f, _ in SPLITS.values()), "_staging"]:
                shutil.rmtree(out / name, ignore_errors=True)
            for f in out.iterdir():
                if f.is_file():
                    f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for folder, _ in SPLITS.values():
        (out / folder).mkdir(exist_ok=True)
    sf.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")


def build_benchmark(config: BuildConfig, out: str | Path, overwrite: bool = False,
                    progress: Progress | None = None) -> BuildReport:
    """Build (or resume) a disc-synth benchmark in ``out``.

    Args:
        config: preset, seed, optional source folder, workers, name.
        out: the benchmark folder to write.
        overwrite: replace a folder that holds something else (default: refuse).
        progress: called as ``progress(phase, done, total)``.

    Returns:
        The :class:`BuildReport` (also written to ``build_report.json``, the only file that differs
        between two builds with the same seed: it holds timings).
    """
    from ..augment import FAMILIES
    from .scenes import SCENES, scene_weights

    preset = config.resolved_preset()
    out = Path(out)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    workers = config.workers or default_workers()
    _prepare_out(out, _state_of(config, preset), overwrite)
    families = FAMILIES.names()
    quality = preset.jpeg_quality
    report = BuildReport(str(out), {}, workers=workers)

    t = time.perf_counter()
    user_files: list[Path] = []
    if config.source:
        src = Path(config.source)
        if not src.is_dir():
            raise BenchmarkError(f"{src}: --source is not a folder")
        user_files = scan_source(src)
        if not user_files:
            raise BenchmarkError(f"{src}: no image files found (looked for {', '.join(sorted({'.jpg', '.png', '.webp'}))} ...)")
    timings["plan"] = 0.0
    reused = written = 0
    staging = out / "_staging"
    with _Runner(workers, (str(out), quality, ())) as run:
        if config.source:
            staging.mkdir(exist_ok=True)
            jobs = [(i, str(p), str(staging)) for i, p in enumerate(user_files)]
            res = run.map(_stage_user, jobs, "check source", progress)
            usable = []
            for i, status, detail in res:
                rel = user_files[i].relative_to(src).as_posix()
                if status == "skipped":
                    report.skipped.append({"path": rel, "reason": detail})
                else:
                    usable.append(i)
                    if status == "converted":
                        report.converted.append({"path": rel, "note": detail})
            if len(usable) < 3:
                raise BenchmarkError(f"{src}: only {len(usable)} usable images (need at least 3); "
                                     f"{len(report.skipped)} skipped")
            plan, order = plan_from_files(preset, config.seed, len(usable), families)
            timings["check source"] = round(time.perf_counter() - t, 3)
            for o, k in zip(plan.originals, order):
                fi = usable[k]
                dst = out / SPLITS[_split(o.image_id)][0] / f"{o.image_id}.jpg"
                if (staging / f"{fi:08d}.jpg").exists():
                    os.replace(staging / f"{fi:08d}.jpg", dst)
            plan = _name_user_files(plan, order, usable, user_files, src)
            sizes = {o.image_id: _done_size(out / SPLITS[_split(o.image_id)][0] / f"{o.image_id}.jpg")
                     for o in plan.originals}
            written += len(plan.originals)
        else:
            plan = plan_synthetic(preset, config.seed, scene_weights(),
                                  {n for n in SCENES.names() if SCENES.get(n).sibling_ok},
                                  packaged_photos(), families)
            timings["plan"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            res = run.map(_make_original, plan.originals, "originals", progress)
            sizes = {i: (w, h) for i, w, h, _ in res}
            reused += sum(r[3] for r in res)
            written += sum(not r[3] for r in res)
            timings["originals"] = round(time.perf_counter() - t, 3)
        shutil.rmtree(staging, ignore_errors=True)
    asset_ids = tuple(o.image_id for o in plan.held_out)
    t = time.perf_counter()
    with _Runner(workers, (str(out), quality, asset_ids)) as run:
        qres = run.map(_make_query, plan.queries, "queries", progress)
    timings["queries"] = round(time.perf_counter() - t, 3)
    reused += sum(r[4] for r in qres)
    written += sum(not r[4] for r in qres)

    t = time.perf_counter()
    manifest = _write_tables(out, config, preset, plan, qres, sizes, families, report)
    timings["tables"] = round(time.perf_counter() - t, 3)
    total = time.perf_counter() - t_all
    timings["total"] = round(total, 3)
    report.manifest = manifest
    report.timings = timings
    report.images_written, report.images_reused = written, reused
    report.images_per_second = round(written / max(total, 1e-9), 2)
    atomic_write_text(out / "build_report.json", json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return report


def _split(image_id: str) -> str:
    return {"Q": "query", "R": "reference", "T": "training", "H": "held_out"}[image_id[0]]


def _name_user_files(plan: Plan, order: list[int], usable: list[int], files: list[Path], src: Path) -> Plan:
    """Replace the file indices of a user plan by the relative paths of the files."""
    def named(o: Original, k: int) -> Original:
        rel = files[usable[k]].relative_to(src).as_posix()
        return Original(o.image_id, "user", "user", source=rel)

    n_r, n_h = len(plan.references), len(plan.held_out)
    all_o = [named(o, k) for o, k in zip(plan.originals, order)]
    return Plan(all_o[:n_r], all_o[n_r:n_r + n_h], all_o[n_r + n_h:], plan.queries)


def _versions() -> dict:
    import PIL

    out = {"imsim_lab": __version__, "numpy": np.__version__, "pillow": PIL.__version__}
    try:
        import augly

        out["augly"] = getattr(augly, "__version__", "1.0.0")
    except ImportError:  # pragma: no cover
        pass
    return out


def _write_tables(out: Path, cfg: BuildConfig, preset: Preset, plan: Plan, qres, sizes, families, report) -> dict:
    import pandas as pd

    ops = {r[0]: r[1] for r in qres}
    qsize = {r[0]: (r[2], r[3]) for r in qres}
    by_id = {o.image_id: o for o in plan.originals}
    queries = pd.DataFrame({
        "query_id": [q.query_id for q in plan.queries],
        "has_match": [bool(q.reference_id) for q in plan.queries],
        "reference_id": [q.reference_id for q in plan.queries],
        "source_id": [q.source_id for q in plan.queries],
        "family": [q.family for q in plan.queries],
        "ops": [ops[q.query_id] for q in plan.queries],
        "strength": [q.strength for q in plan.queries],
        "case": [q.case for q in plan.queries],
        "source_scene": [by_id[q.source_id].scene for q in plan.queries],
        "width": [qsize[q.query_id][0] for q in plan.queries],
        "height": [qsize[q.query_id][1] for q in plan.queries],
    })

    def table(originals: list[Original], id_col: str) -> pd.DataFrame:
        return pd.DataFrame({
            id_col: [o.image_id for o in originals],
            "scene": [o.scene for o in originals],
            "sibling_group": [o.sibling_group for o in originals],
            "source": [o.source for o in originals],
            "kind": [o.kind for o in originals],
            "sibling": [o.sibling for o in originals],
            "width": [sizes[o.image_id][0] for o in originals],
            "height": [sizes[o.image_id][1] for o in originals],
        })

    refs = table(plan.references, "reference_id")
    others = table(plan.held_out + plan.training, "image_id")
    others.insert(1, "split", ["held_out" if o.image_id[0] == "H" else "training" for o in plan.held_out + plan.training])
    write_parquet(out / ORIGINALS_TABLE, others, {"image_id": "string"})
    n_pos = int(queries["has_match"].sum())
    pairs = refs.loc[refs["sibling_group"] != "", "sibling_group"].value_counts()
    manifest = {
        "generator": GENERATOR,
        "version": VERSION,
        "name": cfg.name or f"{GENERATOR}-{preset.name}-s{cfg.seed}",
        "seed": int(cfg.seed),
        "preset": preset.name,
        "preset_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(preset).items()},
        "counts": {"queries": len(queries), "positives": n_pos, "negatives": len(queries) - n_pos,
                   "references": len(plan.references), "training": len(plan.training),
                   "held_out": len(plan.held_out),
                   "hard_negatives": int((queries["case"] == "sibling_no_match").sum()),
                   "sibling_groups_in_references": int((pairs >= 2).sum()),
                   "photos_in_references": int((refs["kind"] == "photo").sum())},
        "families": families,
        "scenes": {str(k): int(v) for k, v in refs["scene"].value_counts().sort_index().items()},
        "source": None if not cfg.source else {"folder": Path(cfg.source).name, "skipped": len(report.skipped),
                                               "converted": len(report.converted)},
        "jpeg_quality": preset.jpeg_quality,
        "versions": _versions(),
        "match_rate": round(n_pos / max(len(queries), 1), 4),
        "strength": "uniform 0..1 per query",
        "ground_truth_note": "queries of case sibling_no_match are made from a near-duplicate of a reference "
                             "and have NO match",
    }
    if not math.isfinite(manifest["match_rate"]):  # pragma: no cover
        manifest["match_rate"] = 0.0
    return write_tables(out, queries, refs, manifest)
