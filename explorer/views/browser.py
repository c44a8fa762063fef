"""Benchmark browser: queries next to their originals with the recorded recipe; copies,
distractors and near-duplicate siblings shown as such."""

from pathlib import Path

import streamlit as st

import common as c
from imsim_lab.errors import ImsimError
from imsim_lab.analysis.realism import load_realism, report_tables
from imsim_lab.analysis.report.browse import query_kinds, reference_siblings
from imsim_lab.analysis.report.failures import filter_queries, paginate
from imsim_lab.analysis.report.runs import find_benchmarks


@st.cache_data(show_spinner=False, max_entries=8)
def _kinds(root: str):
    return query_kinds(c.benchmark(root))


st.title("Benchmark browser")
runs, problems, bench_of = c.discovered()
folders = {str(f) for f in bench_of.values() if f is not None}
root = c.runs_dir()
folders |= {str(f) for f in find_benchmarks(root)} | {str(f) for f in find_benchmarks(root.parent, 2)}
if not folders:
    st.info(f"No benchmark folder found for the runs of `{root}`. Build one with `imsim-lab bench build "
            "--preset tiny --out DIR`.")
    st.stop()
names = {f"{Path(f).name}  ({f})": f for f in sorted(folders)}
choice = st.sidebar.selectbox("Benchmark folder", list(names), key="bfolder", bind="query-params")
bench = c.benchmark(names[choice])
s = bench.summary()
k = s["counts"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("queries", k["queries"])
m2.metric("with a match", k["positives"])
m3.metric("references", k["references"])
m4.metric("training", k["training"])

kinds = _kinds(names[choice])
st.caption("**copy**: an edited copy of a reference (the match to find) · **distractor**: made from an image "
           "outside the references (no match) · **sibling (no match)**: made from another shot of a "
           "reference's scene: similar, yet NOT a copy, so it has no match.")
f1, f2, f3 = st.columns([2, 3, 2])
kind = f1.multiselect("Kind", ["copy", "distractor", "sibling (no match)"], key="kind", bind="query-params")
fam = f2.multiselect("Families", sorted(kinds["family"].unique()), key="bfam", bind="query-params")
lo, hi = f3.slider("Strength", 0.0, 1.0, (0.0, 1.0), step=0.05, key="bstrength", bind="query-params")
view = filter_queries(kinds, fam, (lo, hi))
if kind:
    view = view[view["kind"].isin(kind)]
st.dataframe(view, hide_index=True, key="queries")
c.csv_download(view, f"queries-{bench.name}")

page, per = c.pager(len(view), "browse", 8)
part, _ = paginate(view, page, per)
for _, r in part.iterrows():
    a, b, d = st.columns(3)
    c.show_image(bench, r["query_id"], f"query {r['query_id']} · {r['kind']}", a)
    if r["kind"] == "copy":
        c.show_image(bench, r["reference_id"], f"original = reference {r['reference_id']} (the match)", b)
    else:
        c.show_image(bench, r["source_id"], f"made from {r['source_id']} (not a reference)", b)
    if r["kind"] == "sibling (no match)":
        first = r["sibling_of"].split(", ")[0]
        c.show_image(bench, first, f"reference {first}: same scene, another shot: NOT a match", d)
    st.caption(f"{r['family']} ({r['group']}) · strength {r['strength']:.2f} · {r['recipe']}")
    st.divider()

with st.expander("How photo-like is this benchmark to a copy detector? (SSCD realism report)"):
    try:
        rep = load_realism(names[choice])
    except ImsimError as e:
        rep = None
        st.error(str(e))
    if rep is None:
        st.info("No realism report yet. Measure it with `imsim-lab bench realism "
                f"{names[choice]}` (a few minutes on 2 cores): it compares how close distinct originals "
                "look to SSCD with natural photographs, and how far an edited copy stands above its "
                "hardest distractor.")
    else:
        (st.success if rep.meets_targets else st.warning)("\n\n".join(rep.verdict))
        sim, gap = report_tables(rep)
        st.caption("Cosine similarity of SSCD descriptors between distinct originals (lower = more varied).")
        st.dataframe(sim, hide_index=True, key="realism_sim")
        c.csv_download(sim, f"realism-{bench.name}", where=st)
        st.caption("An edited copy against its hardest distractor (medians over the queries with a match).")
        st.dataframe(gap, hide_index=True, key="realism_gap")
        c.csv_download(gap, f"realism-gap-{bench.name}", where=st)
with st.expander("References with near-duplicate siblings"):
    sib = reference_siblings(bench)
    st.caption("A query made from one member of a group matches only that member; the other members are "
               "hard negatives.")
    st.dataframe(sib, hide_index=True, key="siblings")
    c.csv_download(sib, f"siblings-{bench.name}", where=st)
with st.expander("Manifest"):
    st.json(bench.manifest, expanded=False)
