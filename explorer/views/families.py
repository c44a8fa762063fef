"""Per-augmentation AP: methods x transformation families (prevalence-matched µAP by default, R@1
beside it, bootstrap intervals on hover), AP versus strength, and the examples behind a cell."""

import pandas as pd
import streamlit as st

import common as c
from imsim_lab.analysis.report import strength_table
from imsim_lab.analysis.report.failures import paginate, recipe_text
from imsim_lab.analysis.report.families import DEFINITION_TEXT, DEFINITIONS, family_metrics
from imsim_lab.analysis.report.figures import family_heatmap, strength_figure
from imsim_lab.analysis.report.tables import cell_queries
from imsim_lab.analysis.report.robustness import graded_figure, graded_table


@st.cache_data(show_spinner="Per-family metrics and their bootstrap…", max_entries=32)
def _families(key: tuple, protocol: str, definition: str, n_boot: int, _runs) -> pd.DataFrame:
    return family_metrics(_runs, protocol, definition, n_boot=n_boot, seed=0)


@st.cache_data(show_spinner="AP versus strength…", max_entries=64)
def _strength(key: tuple, protocol: str, n_bins: int, fams: tuple, _runs) -> pd.DataFrame:
    return strength_table(_runs, protocol, n_bins, list(fams) or None)


st.title("Per-augmentation AP")
runs, problems, bench_of = c.discovered()
name, infos, folder = c.select_benchmark(runs, bench_of)
protocol = c.select_protocol()
metric = c.select_metric()
definition = st.sidebar.radio("Per-family µAP", DEFINITIONS, key="fdef", bind="query-params",
                              format_func={"prevalence": "prevalence-matched", "restricted": "restricted"}.get)
max_width = st.sidebar.select_slider("Grey out intervals wider than", [0.1, 0.2, 0.3, 0.4, 0.5, 1.0], value=0.3,
                                     key="fwidth", bind="query-params")
rds = c.load_runs(infos, folder)
if not rds:
    st.stop()
if all((r.per_query["family"] == "unknown").all() for r in rds):
    st.info("This benchmark records no transformation family per query (an imported benchmark: family "
            "'unknown'), so there is no per-family view. The leaderboard, failure cases and the audit still apply.")
    st.stop()
key = tuple((str(r.info.path), r.info.path.joinpath("metrics.json").stat().st_mtime) for r in rds)
ft = _families(key, protocol, definition, 200, rds)
labels = [r.label for r in rds]
st.caption(f"**µAP per family, {DEFINITION_TEXT[definition]}.** The other definition is in the sidebar. R@1 does "
           "not depend on the distractors (metric switch). Hover a cell for its 95 % bootstrap interval (200 "
           f"resamples of the queries), R@1 and its number of positives; cells whose interval is wider than "
           f"{max_width} are greyed out (value in parentheses). Click a cell to see its queries.")

fig = family_heatmap(ft, metric, label_order=labels, max_width=max_width)
state = c.figure(fig, f"families-{name}-{protocol}-{metric}", selectable=True, key="heatmap")
points = (state.selection.points if state is not None and hasattr(state, "selection") else []) or []
if points and points[0].get("customdata"):
    clicked = tuple(points[0]["customdata"][:2])
    if st.session_state.get("_clicked") != clicked:  # apply a new click once, then let the selects rule
        st.session_state["_clicked"] = clicked
        st.session_state["cell_run"], st.session_state["cell_family"] = clicked

wide = ft.pivot_table(index="label", columns="family", values=metric, aggfunc="first").reindex(labels)
with st.expander("Table (runs x families)"):
    st.dataframe(wide, key="family_wide")
    c.csv_download(ft, f"families-{name}-{protocol}", where=st)

st.subheader("AP versus edit strength")
fams = sorted(ft["family"].unique())
col1, col2 = st.columns([3, 1])
chosen = col1.multiselect("Families (none = all)", fams, key="sfam", bind="query-params")
n_bins = col2.select_slider("Bins", [3, 4, 5, 8, 10], value=5, key="bins", bind="query-params")
stt = _strength(key, protocol, n_bins, tuple(chosen), rds)
c.figure(strength_figure(stt, metric if metric != "recall_at_rank1" else "micro_ap"),
         f"strength-{name}-{protocol}")
c.csv_download(stt, f"strength-{name}-{protocol}")

graded = graded_table(infos)
graded = graded[graded["protocol"] == protocol] if len(graded) else graded
if len(graded):  # controlled edits of imsim-lab robustness: one family, one strength at a time
    st.subheader("Graded suite: AP versus strength (controlled edits)")
    st.caption("`imsim-lab robustness RUN`: the same sampled references edited by one family at each strength, "
               "distractors kept, full reference set.")
    g1, g2 = st.columns([3, 1])
    gfam = g1.multiselect("Families", sorted(graded["family"].unique()), key="gfam", bind="query-params")
    gby = g2.radio("One line per", ["family", "label"], key="gby", horizontal=True)
    part = graded[graded["family"].isin(gfam)] if gfam else graded
    gmetric = metric if metric in part and part[metric].notna().any() else "micro_ap"
    c.figure(graded_figure(part, gmetric, gby), f"graded-{name}-{protocol}")
    c.csv_download(part, f"graded-{name}-{protocol}")

st.subheader("Examples behind a cell")
c1, c2 = st.columns(2)
run_label = c1.selectbox("Run", labels, key="cell_run", bind="query-params")
family = c2.selectbox("Family", fams, key="cell_family", bind="query-params")
rd = next(r for r in rds if r.label == run_label)
rows = cell_queries(rd, family)
cell = ft[(ft["label"] == run_label) & (ft["family"] == family)]
if len(cell):
    v = cell.iloc[0]
    st.markdown(f"**{run_label} · {family}**: µAP {v['micro_ap']:.3f} [{v['micro_ap_low']:.3f}, "
                f"{v['micro_ap_high']:.3f}] ({definition}), R@1 {v['recall_at_rank1']:.3f}, {int(v['n_positives'])} "
                f"positives ({int(v['n_queries'])} queries of the family). Worst first.")
c.csv_download(rows, f"cell-{run_label}-{family}", label="Download these queries")
if rows.empty:
    st.info("This family has no query with a match on this benchmark.")
else:
    bench = c.benchmark(str(folder)) if folder else None
    page, per = c.pager(len(rows), "cell", 4)
    part, _ = paginate(rows, page, per)
    recipes = dict(zip(bench.queries["query_id"], bench.queries["ops"])) if bench else {}
    for _, r in part.iterrows():
        rank = "not retrieved" if r["true_rank"] < 0 else f"rank {int(r['true_rank'])}"
        st.markdown(f"`{r['query_id']}` · strength {r['strength']:.2f} · true reference {rank} · "
                    f"{recipe_text(recipes.get(r['query_id'], '[]'))}")
        if bench is None:
            continue
        a, b, d = st.columns(3)
        c.show_image(bench, r["query_id"], f"query {r['query_id']}", a)
        c.show_image(bench, r["reference_id"], f"true {r['reference_id']} (score {r['true_score']:.3f})", b)
        if r["top_reference_id"] != r["reference_id"]:
            c.show_image(bench, r["top_reference_id"], f"retrieved {r['top_reference_id']} "
                         f"(score {r['top_score']:.3f})", d)
        else:
            d.success("found at rank 1")
