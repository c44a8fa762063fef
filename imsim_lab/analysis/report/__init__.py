"""Presentation-side computations of the explorer: plain functions on run and benchmark folders.

The explorer (``explorer/``) only lays these out; everything it shows is computed and tested here.

* :mod:`.runs`: find and read run folders; re-attach a moved benchmark;
* :mod:`.weighted`: the official metrics under query weightings (bootstrap, subsets), in one pass;
* :mod:`.tables`: leaderboard with intervals and tie ranks, per-family and per-strength µAP, two-run
  comparisons;
* :mod:`.failures`: missed matches, confident false positives, filters, pages, recipes;
* :mod:`.browse`: benchmark browser tables (copies, distractors, siblings);
* :mod:`.submission`: evaluate an uploaded CSV or HDF5, store it, turn it into a run;
* :mod:`.figures`: colour-blind-safe plotly figures of those tables.

No Streamlit import and no caching here: the app layer caches.
"""

from .runs import RunInfo, discover_runs, load_per_query, load_predictions, read_run, resolve_benchmark, runs_table
from .tables import (RunData, compare_families, family_table, found_by_one, leaderboard, load_run_data,
                     strength_table, tie_ranks)

__all__ = ["RunInfo", "discover_runs", "load_per_query", "load_predictions", "read_run", "resolve_benchmark",
           "runs_table", "RunData", "compare_families", "family_table", "found_by_one", "leaderboard",
           "load_run_data", "strength_table", "tie_ranks"]
