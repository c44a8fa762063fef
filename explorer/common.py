"""App layer shared by the pages: where the results are, cached loading, shared controls, exports.

Caching lives here (never in the library): ``st.cache_resource`` for the loaded runs and
benchmarks (large, read-only, not copied), ``st.cache_data`` for the tables (small, copied). A
cache key includes the modification time of each run's ``metrics.json``, so a re-run or a new
upload is picked up. Filter widgets are bound to the URL (``bind="query-params"``) so that a
view can be shared as a link.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from imsim_lab.analysis.report import discover_runs, load_run_data, resolve_benchmark
from imsim_lab.eval.protocols import get_protocol, protocol_names

PROTOCOLS = list(protocol_names())
METRICS = {"micro_ap": "µAP", "recall_at_p90": "R@P90", "recall_at_rank1": "R@1"}
PLOTLY_CONFIG = {"displaylogo": False,
                 "toImageButtonOptions": {"format": "svg", "filename": "imsim-lab-figure"}}


def runs_dir() -> Path:
    """The results folder: ``IMSIM_RUNS_DIR``, else the first argument after ``--``, else ./results."""
    env = os.environ.get("IMSIM_RUNS_DIR")
    if env:
        return Path(env)
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    return Path(args[0]) if args else Path("results")


def _stamp(root: Path) -> tuple:
    """Changes when a run is added or finished (the modification times of the metrics files)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("features", "queries", "references", "training", "held_out")
                       and not d.startswith(".")]
        if "metrics.json" in filenames:
            out.append((dirpath, os.path.getmtime(os.path.join(dirpath, "metrics.json"))))
    return tuple(sorted(out))


@st.cache_resource(show_spinner=False, max_entries=8)
def _discover(root: str, stamp: tuple):
    runs, problems = discover_runs(root)
    r = Path(root)
    search = [r, r.parent, r.parent.parent]
    bench_of = {str(x.path): resolve_benchmark(x, search) for x in runs}
    return runs, problems, bench_of


def discovered():
    """(runs, problems, {run path: benchmark folder or None}) of the results folder."""
    root = runs_dir()
    if not root.is_dir():
        st.error(f"Results folder `{root}` not found. Start the explorer with `imsim-lab explore RESULTS_DIR` "
                 "(or set IMSIM_RUNS_DIR).")
        st.stop()
    return _discover(str(root), _stamp(root))


@st.cache_resource(show_spinner="Loading the benchmark…", max_entries=4)
def benchmark(root: str):
    from imsim_lab.data.benchmark import load_benchmark

    return load_benchmark(root, check_hashes=False)


@st.cache_resource(show_spinner="Loading runs…", max_entries=64)
def run_data(path: str, mtime: float, bench_root: str | None, _info):
    gt = benchmark(bench_root).gt if bench_root else None
    return load_run_data(_info, gt)


def benchmarks_of(runs, bench_of) -> dict[str, list]:
    """benchmark name -> its runs."""
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.bench_name, []).append(r)
    return out


def select_benchmark(runs, bench_of, where=st.sidebar):
    """The benchmark selector (URL key ``bench``); returns (name, its runs, its folder or None)."""
    by = benchmarks_of(runs, bench_of)
    if not by:
        st.info(f"No run folder under `{runs_dir()}` yet. Make one with `imsim-lab run METHOD --bench BENCH --out "
                f"{runs_dir()}/NAME`, or run `make demo`.")
        st.stop()
    names = sorted(by)
    name = where.selectbox("Benchmark", names, key="bench", bind="query-params")
    folders = [bench_of.get(str(r.path)) for r in by[name]]
    folder = next((f for f in folders if f is not None), None)
    return name, by[name], folder


def select_metric(where=st.sidebar, label: str = "Metric") -> str:
    """µAP / R@P90 / R@1 (URL key ``metric``, readable values); returns the column name."""
    names = {v: k for k, v in METRICS.items()}
    return names[where.radio(label, list(names), key="metric", bind="query-params")]


def select_protocol(where=st.sidebar) -> str:
    return where.segmented_control("Protocol", PROTOCOLS, default=PROTOCOLS[0], key="protocol", bind="query-params",
                                   required=True, help="; ".join(f"{p}: {protocol_help(p)}" for p in PROTOCOLS)) \
        or PROTOCOLS[0]


def protocol_help(name: str) -> str:
    """One line on a protocol, from its registered definition."""
    p = get_protocol(name)
    budget = (f"{p.max_results:,} descriptor-track pairs" if p.max_results is not None
              else f"{p.per_query_budget} descriptor-track pairs per query")
    return (f"{p.source}; duplicates {'refused' if p.duplicates == 'error' else 'counted again'}, "
            f"{'R@1 included' if p.rank_recalls else 'no R@1'}, {budget}")


def load_runs(infos, bench_folder):
    """RunData of each run (cached); a run that cannot be read is reported and skipped."""
    out = []
    for r in infos:
        try:
            out.append(run_data(str(r.path), os.path.getmtime(r.path / "metrics.json"),
                                str(bench_folder) if bench_folder else None, r))
        except Exception as e:  # noqa: BLE001 - show which run is broken, keep the others
            st.warning(f"Run `{r.run_id}` skipped: {e}")
    return out


def csv_download(df: pd.DataFrame, name: str, label: str = "Download CSV", where=st) -> None:
    where.download_button(label, df.to_csv(index=False).encode("utf-8"), file_name=f"{name}.csv",
                          mime="text/csv", key=f"csv-{name}", on_click="ignore", icon=":material/download:")


@st.cache_data(show_spinner="Rendering the image…", max_entries=32)
def _figure_bytes(spec: str, fmt: str) -> bytes:
    import plotly.io as pio

    return pio.from_json(spec).to_image(format=fmt, scale=2 if fmt == "png" else 1)


def figure(fig, name: str, selectable: bool = False, key: str | None = None):
    """Show a plotly figure with its SVG export (toolbar camera) and a PNG/SVG file on request
    (rendered by kaleido with the system's Chromium). Returns the selection state when
    ``selectable``."""
    kw = {"on_select": "rerun", "selection_mode": "points", "key": key} if selectable else {}
    width = "content" if fig.layout.width else "stretch"
    state = st.plotly_chart(fig, config=PLOTLY_CONFIG, width=width, **kw)
    with st.popover("Export figure", icon=":material/image:"):
        fmt = st.radio("Format", ["svg", "png"], horizontal=True, key=f"fmt-{name}")
        if st.button("Prepare file", key=f"prep-{name}"):
            try:
                data = _figure_bytes(fig.to_json(), fmt)
                st.download_button(f"Download {name}.{fmt}", data, file_name=f"{name}.{fmt}",
                                   mime="image/svg+xml" if fmt == "svg" else "image/png", key=f"dl-{name}",
                                   on_click="ignore")
            except Exception as e:  # noqa: BLE001 - kaleido needs a browser; the toolbar export still works
                st.error(f"Static export failed ({type(e).__name__}: {e}); use the camera icon of the figure "
                         "toolbar (SVG) instead.")
    return state


def show_image(bench, image_id: str, caption: str, where=st) -> None:
    """One image of the benchmark with a caption (a clear message when it is missing)."""
    if not image_id:
        where.caption(f"{caption}\n\n(none)")
        return
    try:
        where.image(str(bench.image_path(image_id)), caption=caption, width=220)
    except Exception as e:  # noqa: BLE001
        where.warning(f"{image_id}: {e}")


def pager(n_rows: int, key: str, per_page_default: int = 8) -> tuple[int, int]:
    """(page, per page) controls under a table (URL keys ``<key>_page``, ``<key>_n``)."""
    c1, c2 = st.columns([1, 4])
    per = c1.selectbox("Per page", [4, 8, 16, 32], index=[4, 8, 16, 32].index(per_page_default), key=f"{key}_n",
                       bind="query-params")
    n_pages = max(1, -(-n_rows // per))
    with c2:
        page = st.pagination(n_pages, key=f"{key}_page", bind="query-params") if n_pages > 1 else 1
    return int(page), int(per)
