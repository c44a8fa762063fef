"""Compare two methods: per-family differences and the queries one finds and the other misses."""

import streamlit as st

import common as c
from imsim_lab.analysis.report import compare_families, found_by_one
from imsim_lab.analysis.report.failures import filter_queries, paginate
from imsim_lab.analysis.report.figures import compare_figure

st.title("Compare two methods")
runs, problems, bench_of = c.discovered()
name, infos, folder = c.select_benchmark(runs, bench_of)
protocol = c.select_protocol()
labels = [r.label for r in infos]
if len(labels) < 2:
    st.info("This benchmark has a single run; make another one to compare.")
    st.stop()
c1, c2 = st.columns(2)
la = c1.selectbox("Method A", labels, index=0, key="a", bind="query-params")
lb = c2.selectbox("Method B", labels, index=1, key="b", bind="query-params")
if la == lb:
    st.warning("Choose two different methods.")
    st.stop()
rds = c.load_runs([next(r for r in infos if r.label == x) for x in (la, lb)], folder)
if len(rds) < 2:
    st.stop()
a, b = rds
ma, mb = (r.info.metric(protocol, "micro_ap") or float("nan") for r in rds)
m1, m2, m3 = st.columns(3)
m1.metric(f"µAP {la}", f"{ma:.4f}")
m2.metric(f"µAP {lb}", f"{mb:.4f}", delta=f"{mb - ma:+.4f}")
m3.caption("Significance of the overall difference: see the tie ranks of the Leaderboard (paired bootstrap).")

cmp = compare_families(a, b, protocol)
st.subheader("Per family (B − A)")
c.figure(compare_figure(cmp, la, lb), f"compare-{la}-{lb}-{protocol}")
st.dataframe(cmp, hide_index=True, key="cmp", column_config={
    k: st.column_config.NumberColumn(format="%.4f") for k in ("micro_ap_a", "micro_ap_b", "diff")})
c.csv_download(cmp, f"compare-{la}-{lb}-{protocol}")

st.subheader("Queries one finds and the other misses")
f1, f2, f3 = st.columns([2, 2, 3])
found = {"ranked first": "rank1", "in the top-k at all": "retrieved"}[
    f1.radio("Found means", ["ranked first", "in the top-k at all"], key="found", bind="query-params")]
winner = f2.radio("Found only by", [la, lb], key="winner", bind="query-params")
fams = sorted(a.per_query["family"].unique())
chosen = f3.multiselect("Families", fams, key="cfam", bind="query-params")
diff = found_by_one(a, b, found)
only = filter_queries(diff[diff["winner"] == winner], chosen)
st.caption(f"{(diff['winner'] == la).sum()} found only by {la}, {(diff['winner'] == lb).sum()} only by {lb}.")
st.dataframe(only, hide_index=True, key="only")
c.csv_download(only, f"only-{winner}")
if only.empty or folder is None:
    st.stop()
bench = c.benchmark(str(folder))
page, per = c.pager(len(only), "cmp", 4)
part, _ = paginate(only, page, per)
for _, r in part.iterrows():
    q, t, x, y = st.columns(4)
    c.show_image(bench, r["query_id"], f"query {r['query_id']} · {r['family']} {r['strength']:.2f}", q)
    c.show_image(bench, r["reference_id"], f"true {r['reference_id']}", t)
    c.show_image(bench, r["top_a"], f"{la} top: {r['top_a']} (true rank {r['rank_a']})", x)
    c.show_image(bench, r["top_b"], f"{lb} top: {r['top_b']} (true rank {r['rank_b']})", y)
    links = [f"[{rd.label}: pair view]({pl})" for rd in (a, b)
             if (pl := c.pair_link(rd.info, r["query_id"], r["reference_id"], name))]
    if links:
        st.caption("Why the true pair scored as it did: " + " · ".join(links))
    st.divider()
