"""Evaluate a submission: a matching CSV or a descriptor HDF5 against a benchmark's ground truth."""

from pathlib import Path

import streamlit as st

import common as c
from imsim_lab.errors import ImsimError
from imsim_lab.eval.protocols import protocol_names
from imsim_lab.analysis.report import family_table
from imsim_lab.analysis.report.runs import find_benchmarks
from imsim_lab.analysis.report.submission import (MAX_UPLOAD_BYTES, evaluate_submission, save_as_run, store_upload,
                                         submission_run_data)

MAX_MB = MAX_UPLOAD_BYTES // 2**20

st.title("Evaluate a submission")
runs, problems, bench_of = c.discovered()
root = c.runs_dir()
folders = {str(f) for f in bench_of.values() if f is not None} | {str(f) for f in find_benchmarks(root)}
if not folders:
    st.info("No benchmark folder found next to the results; a submission is evaluated against a benchmark's "
            "ground truth.")
    st.stop()
names = {f"{Path(f).name}  ({f})": f for f in sorted(folders)}
choice = st.selectbox("Benchmark", list(names), key="sbench", bind="query-params")
bench = c.benchmark(names[choice])
st.caption(f"Matching track: CSV `query_id,reference_id,score` (higher = more similar, at most 500,000 rows). "
           f"Descriptor track: HDF5 with `query`, `reference`, `query_ids`, `reference_ids` (d ≤ 256, L2). "
           f"At most {MAX_MB} MiB. The file is kept in `{root}/uploads/`; nothing is written elsewhere.")
up = st.file_uploader("Submission file", type=["csv", "h5", "hdf5"], key="upload", max_upload_size=MAX_MB)
knn = st.number_input("Descriptors: neighbours per query (0 = the official global budgets)", 0, 1000, 0,
                      key="knn")
if up is None:
    st.stop()
path = None
try:
    path = store_upload(up, up.name, root)  # the size is checked before the content is read
    with st.spinner("Evaluating…"):
        res = evaluate_submission(path, bench, knn=int(knn) or None)
except (ImsimError, OSError) as e:
    if path is not None:  # a rejected upload is not kept
        path.unlink(missing_ok=True)
    st.error(f"This file {'cannot be evaluated' if isinstance(e, ImsimError) else 'could not be read'}: {e}")
    st.stop()

st.success(f"{res.kind.upper()} submission evaluated against {bench.name}.")
for proto in protocol_names():
    if proto in res.errors:
        st.error(f"{proto}: {res.errors[proto]}")
        continue
    m = res.metrics[proto]
    cols = st.columns(4)
    cols[0].metric(f"µAP ({proto})", f"{m['micro_ap']:.4f}" if m["micro_ap"] is not None else "n/a")
    cols[1].metric("R@P90", "not reached" if m["recall_at_p90"] is None else f"{m['recall_at_p90']:.4f}")
    cols[2].metric("R@1", "n/a" if m["recall_at_rank1"] is None else f"{m['recall_at_rank1']:.4f}")
    cols[3].metric("predictions", f"{m['n_predictions']} ({m['n_dropped']} dropped)")

label = Path(up.name).stem
rd = submission_run_data(res, bench, label)
proto = next(p for p in protocol_names() if p in rd.scored)
ft = family_table([rd], proto)
st.subheader(f"Per family ({proto})")
st.dataframe(ft, hide_index=True, key="sub_families")
c.csv_download(ft, f"families-{label}")

st.subheader("Join the leaderboard")
name = st.text_input("Run name", value=label, key="runname")
if st.button("Save as a run", disabled=bool(res.errors)):
    try:
        out = save_as_run(res, bench, root, name)
    except ImsimError as e:
        st.error(str(e))
    else:
        st.cache_resource.clear()
        st.success(f"Saved to `{out}`; it now appears on the other pages.")
