"""What the teaching notebooks share: profiles, where results go, the lesson's benchmark,
evaluation of in-memory descriptors, per-family tables and image sheets.

Notebooks narrate; every piece of logic they need lives here or elsewhere in the library.

* :data:`PROFILES`: ``smoke`` (the ``tiny`` disc-synth benchmark, a minute or two; what the
  tests run), ``cpu`` (the ``small`` benchmark, the real lesson on a laptop), ``full`` (DISC21 on
  GPUs: the published recipe).
* :func:`results_root`: ``results_dir`` argument, else ``$IMSIM_LAB_RESULTS``, else
  ``<repository>/results`` (never relative to the working directory).
* :func:`lesson_benchmark`: builds the profile's disc-synth benchmark once under the results
  folder (``results/benchmarks/``) and loads it; ``full`` loads the DISC21 folder you give.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


from .errors import ImsimError

PROFILES = ("smoke", "cpu", "full")
#: disc-synth preset of each profile (``full`` uses DISC21)
PRESET_OF = {"smoke": "tiny", "cpu": "small"}


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ImsimError(f"profile must be one of {PROFILES}, not {profile!r}")
    return profile


def results_root(results_dir: str | Path | None = None) -> Path:
    """The folder that holds benchmarks and run folders of the lessons (created)."""
    if results_dir:
        root = Path(results_dir)
    elif os.environ.get("IMSIM_LAB_RESULTS"):
        root = Path(os.environ["IMSIM_LAB_RESULTS"])
    else:
        pkg = Path(__file__).resolve().parents[1]
        root = (pkg / "results") if (pkg / "pyproject.toml").is_file() else Path.home() / "imsim-lab-results"
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def lesson_benchmark(profile: str, results_dir: str | Path | None = None, seed: int = 0,
                     disc21_root: str | Path | None = None):
    """The benchmark of a profile, built on first use (``smoke``: tiny, ``cpu``: small).

    ``full`` needs ``disc21_root``: a DISC21 folder in the benchmark format (docs/CONTRACTS.md).
    """
    from .data.benchmark import BenchmarkError, is_benchmark, load_benchmark

    check_profile(profile)
    if profile == "full":
        if not disc21_root:
            raise BenchmarkError("profile 'full' runs on DISC21: pass disc21_root= a DISC21 folder in the benchmark "
                                 "format (queries/, references/, training/, ground_truth.csv, queries.parquet)")
        return load_benchmark(disc21_root)
    preset = PRESET_OF[profile]
    root = results_root(results_dir) / "benchmarks" / f"disc-synth-{preset}-s{seed}"
    if not is_benchmark(root):
        from .data.synth import BuildConfig, build_benchmark

        build_benchmark(BuildConfig(preset=preset, seed=seed), root)
    return load_benchmark(root)


def run_dir(notebook: str, name: str, results_dir: str | Path | None = None, profile: str = "smoke") -> Path:
    """``<results>/notebooks/<notebook>/<profile>/<name>``: a run folder the explorer finds."""
    return results_root(results_dir) / "notebooks" / notebook / profile / name


# ------------------------------------------------------------------------------------------------
# evaluation of descriptors held in memory


def evaluate_prepared(bench, query_ids, reference_ids, prep, protocol: str = "isc2021", backend: str = "auto"):
    """Predictions and metrics of a :class:`~imsim_lab.methods.Prepared` (as ``imsim-lab run``
    computes them, through :func:`imsim_lab.methods.prepared_predictions`, without writing a run
    folder). Returns (Metrics, Predictions)."""
    from .eval.metrics import evaluate
    from .methods import prepared_predictions

    preds = prepared_predictions(prep, query_ids, reference_ids, bench.gt, protocol, backend=backend)
    return evaluate(bench.gt, preds, protocol), preds


def family_metrics(bench, preds, protocol: str = "isc2021", queries: Sequence[str] | None = None):
    """µAP and R@P90 per transformation family (the family's positives plus every query without
    a match, as ``evaluate(queries=...)`` defines a subset). ``queries`` restricts first.

    Returns a DataFrame: family, n_positives, micro_ap, recall_at_p90.
    """
    import pandas as pd

    from .eval.metrics import evaluate

    q = bench.queries
    if queries is not None:
        q = q[q["query_id"].isin(set(map(str, queries)))]
    negatives = q.loc[~q["has_match"], "query_id"].astype(str).tolist()
    rows = []
    for fam, part in q[q["has_match"]].groupby("family", sort=True):
        m = evaluate(bench.gt, preds, protocol, queries=part["query_id"].astype(str).tolist() + negatives)
        rows.append({"family": str(fam), "n_positives": len(part), "micro_ap": m.micro_ap,
                     "recall_at_p90": m.recall_at_p90 or 0.0})
    return pd.DataFrame(rows, columns=["family", "n_positives", "micro_ap", "recall_at_p90"])


# ------------------------------------------------------------------------------------------------
# pictures


def contact_sheet(images: Sequence, captions: Sequence[str] = (), size: int = 160, cols: int | None = None,
                  caption_height: int = 28):
    """A grid of images (PIL) with a caption under each, as one PIL image (for notebooks)."""
    from PIL import Image, ImageDraw

    n = len(images)
    cols = cols or min(n, 6)
    rows = max(1, -(-n // cols))
    sheet = Image.new("RGB", (cols * size, rows * (size + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, img in enumerate(images):
        im = img.convert("RGB").copy()
        im.thumbnail((size, size))
        x, y = (k % cols) * size, (k // cols) * (size + caption_height)
        sheet.paste(im, (x + (size - im.width) // 2, y + (size - im.height) // 2))
        if k < len(captions):
            text = str(captions[k])
            for line_no, part in enumerate([text[i:i + size // 7] for i in range(0, len(text), size // 7)][:2]):
                draw.text((x + 3, y + size + 2 + 12 * line_no), part, fill="black")
    return sheet


def copy_pairs_sheet(bench, n: int = 4, size: int = 140):
    """The first ``n`` queries with a match next to their originals (:func:`contact_sheet`, captions
    ``query ID`` / ``original ID``): what a copy is, the opening picture of a lesson."""
    pos = bench.queries[bench.queries["has_match"]].head(n)
    pairs = list(zip(pos["query_id"], pos["reference_id"]))
    return contact_sheet([im for q, r in pairs for im in (bench.load_image(q), bench.load_image(r))],
                         [c for q, r in pairs for c in (f"query {q}", f"original {r}")], size=size, cols=2 * n)


# ------------------------------------------------------------------------------------------------
# shared features and query halves


def feature_cache(results_dir: str | Path | None = None) -> str:
    """``<results>/feature_cache``: the :class:`~imsim_lab.runner.RunOptions` ``feature_cache`` the
    lessons share, so that every run of one model on one benchmark extracts its features once
    (SSCD in notebooks 1 and 2, the trained ISCNet with and without NES in notebook 3)."""
    return str(results_root(results_dir) / "feature_cache")


def query_halves(query_ids: Sequence[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Two disjoint seeded halves of the queries (tune, report): a sweep chooses on the first and
    reports the second (:func:`imsim_lab.analysis.calibration.sweep_halves`). The same split as
    notebook 3's fine-tune (:func:`imsim_lab.train.lyakaap.split_queries`): fine-tune half, held-out half."""
    from .train.lyakaap import split_queries

    return split_queries(query_ids, 0.5, seed)
