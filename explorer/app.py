"""imsim-lab explorer: start with ``imsim-lab explore RESULTS_DIR`` (or
``IMSIM_RUNS_DIR=RESULTS_DIR streamlit run explorer/app.py``).

This file only declares the navigation; each page is a thin layout over the tested functions of
``imsim_lab.report`` (see ``explorer/common.py`` for caching and shared controls).
"""

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # pages import explorer/common.py
    sys.path.insert(0, str(HERE))

st.set_page_config(page_title="imsim-lab explorer", page_icon=":material/content_copy:", layout="wide")

PAGES = {
    "Results": [
        st.Page("pages/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
        st.Page("pages/families.py", title="Per-augmentation AP", icon=":material/grid_on:"),
        st.Page("pages/failures.py", title="Failure cases", icon=":material/report:"),
        st.Page("pages/compare.py", title="Compare two methods", icon=":material/compare:"),
    ],
    "Data": [
        st.Page("pages/browser.py", title="Benchmark browser", icon=":material/photo_library:"),
        st.Page("pages/submit.py", title="Evaluate a submission", icon=":material/upload_file:"),
    ],
}

nav = st.navigation(PAGES)
st.sidebar.caption("Copy detection finds the original of an *edited* image; another photo of the same "
                   "scene is **not** a match.")
nav.run()
