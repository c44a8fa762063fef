"""Failure cases: missed matches and confident false positives, filtered and paginated."""

import math

import streamlit as st

import common as c
from imsim_lab.analysis.report.browse import query_kinds, sibling_groups
from imsim_lab.analysis.report.failures import (confident_false_positives, filter_queries, missed_matches, paginate,
                                       recipe_text)

st.title("Failure cases")
runs, problems, bench_of = c.discovered()
name, infos, folder = c.select_benchmark(runs, bench_of)
protocol = c.select_protocol()
labels = [r.label for r in infos]
run_label = st.sidebar.selectbox("Method", labels, key="run", bind="query-params")
info = next(r for r in infos if r.label == run_label)
rd = c.load_runs([info], folder)
if not rd:
    st.stop()
rd = rd[0]
bench = c.benchmark(str(folder)) if folder else None
groups = sibling_groups(bench) if bench is not None else {}
pq = rd.per_query
if bench is not None:
    kinds = query_kinds(bench)[["query_id", "kind", "source_id", "recipe"]]
    pq = pq.merge(kinds, on="query_id", how="left")

view = st.segmented_control("Show", ["Missed matches", "Confident false positives"], default="Missed matches",
                            key="view", bind="query-params", required=True) or "Missed matches"
fams = sorted(pq["family"].unique())
f1, f2, f3 = st.columns([3, 2, 2])
chosen = f1.multiselect("Families", fams, key="fam", bind="query-params")
lo, hi = f2.slider("Strength", 0.0, 1.0, (0.0, 1.0), step=0.05, key="strength", bind="query-params")
thr = info.metric(protocol, "threshold_at_p90")
thr_txt = "not reached" if thr is None else f"{thr:.4f}"
sub = filter_queries(pq, chosen, (lo, hi))
if view == "Missed matches":
    crit = {"not ranked first": "rank1", "not reported at P90": "threshold"}[
        f3.radio("Missed means", ["not ranked first", "not reported at P90"], key="crit", bind="query-params")]
    table = missed_matches(sub, thr, crit, groups)
    st.caption(f"Positive queries whose true reference is {'not ranked first' if crit == 'rank1' else 'not ranked first or scored below the P90 threshold'} "
               f"(threshold {thr_txt}, {protocol}). Worst first: not retrieved at all, then by how far the truth "
               "trails what was retrieved instead.")
else:
    f3.caption(f"P90 threshold: {thr_txt}")
    table = confident_false_positives(sub, thr, groups)
    st.caption("Wrong top predictions the system would report (scored at or above the P90 threshold): queries "
               "without a match, and queries matched to the wrong reference. A retrieved *sibling* is another "
               "shot of the same scene: similar, but not a copy.")
st.metric("cases", len(table))
st.dataframe(table, hide_index=True, key="cases")
c.csv_download(table, f"{'missed' if view == 'Missed matches' else 'false-positives'}-{run_label}-{protocol}")
if table.empty:
    st.success("No case with these filters.")
    st.stop()
if bench is None:
    st.info("The benchmark folder of this run was not found: images cannot be shown.")
    st.stop()

page, per = c.pager(len(table), "fail", 8)
part, _ = paginate(table, page, per)
recipes = dict(zip(bench.queries["query_id"], bench.queries["ops"]))
for _, r in part.iterrows():
    recipe = recipe_text(recipes.get(r["query_id"], "[]"))
    a, b, d = st.columns(3)
    c.show_image(bench, r["query_id"], f"query {r['query_id']} · {r['family']} {r['strength']:.2f}", a)
    if view == "Missed matches":
        rank = "not retrieved" if r["true_rank"] < 0 else f"rank {int(r['true_rank'])}"
        ts = "n/a" if math.isnan(r["true_score"]) else f"{r['true_score']:.4f}"
        c.show_image(bench, r["reference_id"], f"true {r['reference_id']} · {rank} · score {ts}", b)
        sib = " · SIBLING of the truth (not a copy)" if r["retrieved_sibling"] else ""
        c.show_image(bench, r["top_reference_id"], f"retrieved instead {r['top_reference_id']} · score "
                     f"{r['top_score']:.4f}{sib}", d)
    else:
        c.show_image(bench, r["top_reference_id"], f"matched to {r['top_reference_id']} · score "
                     f"{r['top_score']:.4f}" + ("" if math.isnan(r["excess"]) else f" (+{r['excess']:.4f})"), b)
        if r["kind"] == "wrong reference":
            c.show_image(bench, r["reference_id"], f"true {r['reference_id']}", d)
        else:
            note = "made from a sibling of the matched reference" if r["retrieved_sibling"] else "no match exists"
            d.info(f"{r['kind']}: {note}")
    pl = c.pair_link(info, r["query_id"], r["top_reference_id"], name)
    st.caption(f"recipe: {recipe}" + (f" · [why this pair matched (pair view)]({pl})" if pl else ""))
    st.divider()
