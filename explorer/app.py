"""imsim-lab explorer: start with ``imsim-lab explore RESULTS_DIR`` (or
``IMSIM_RUNS_DIR=RESULTS_DIR streamlit run explorer/app.py``).

This file only declares the navigation; each page (``explorer/views/``) is a thin layout over the
tested functions of ``imsim_lab.analysis.report`` (see ``explorer/common.py`` for caching and shared controls).
The pages are not in a folder named ``pages/``: Streamlit treats such a folder as the older
multipage layout whenever the first visit of a fresh server opens a page other than the main one
(the page then runs without this file: no navigation, no wide layout).
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
        st.Page("views/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
        st.Page("views/families.py", title="Per-augmentation AP", icon=":material/grid_on:"),
        st.Page("views/failures.py", title="Failure cases", icon=":material/report:"),
        st.Page("views/compare.py", title="Compare two methods", icon=":material/compare:"),
        st.Page("views/costs.py", title="Accuracy against cost", icon=":material/speed:"),
        st.Page("views/pairs.py", title="Pair view (matching)", icon=":material/join_inner:"),
        st.Page("views/adversarial.py", title="Adversarial robustness", icon=":material/security:"),
    ],
    "Data": [
        st.Page("views/browser.py", title="Benchmark browser", icon=":material/photo_library:"),
        st.Page("views/audit.py", title="Ground-truth audit", icon=":material/fact_check:"),
        st.Page("views/submit.py", title="Evaluate a submission", icon=":material/upload_file:"),
    ],
}

nav = st.navigation(PAGES)
st.sidebar.caption("Copy detection finds the original of an *edited* image; another photo of the same "
                   "scene is **not** a match.")
nav.run()
