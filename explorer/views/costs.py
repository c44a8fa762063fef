"""Accuracy against cost: µAP of every run against its seconds per query or bytes of index per
reference (log axis), with the Pareto front: what each point of accuracy costs."""

import pandas as pd
import streamlit as st

import common as c
from imsim_lab.analysis.report import leaderboard
from imsim_lab.analysis.report.cost import cost_figure, cost_table, pareto_front


@st.cache_data(show_spinner="Costs…", max_entries=32)
def _table(key: tuple, protocol: str, _runs) -> pd.DataFrame:
    lb = leaderboard(_runs, protocol, n_boot=1, seed=0)  # point figures only: no interval shown here
    return lb.merge(cost_table([r.info for r in _runs]), on="label", how="left")


st.title("Accuracy against cost")
runs, problems, bench_of = c.discovered()
name, infos, folder = c.select_benchmark(runs, bench_of)
protocol = c.select_protocol()
metric = c.select_metric(label="Accuracy")
axis = st.sidebar.radio("Cost axis", ["seconds per query", "bytes per reference"], key="cost_axis",
                        bind="query-params")
x = {"seconds per query": "seconds_per_query", "bytes per reference": "bytes_per_reference"}[axis]
rds = c.load_runs(infos, folder)
if not rds:
    st.stop()
if metric == "recall_at_rank1" and protocol == "drivendata":
    st.info("R@1 is an isc2021 metric; switch the protocol to see it.")
    st.stop()
key = tuple((str(r.info.path), r.info.path.joinpath("metrics.json").stat().st_mtime) for r in rds)
df = _table(key, protocol, rds)
st.caption("One marker per run (circles: descriptor track, diamonds: matching track; hollow: tuned or trained "
           "on the evaluation queries). The dotted steps join the runs that no other run beats on both axes (the "
           "Pareto front). Seconds are the query side (query extraction, post-processing, search, and for a "
           "matching run its candidates plus the re-scoring) measured on the machine that ran each run, so "
           "compare runs made on one machine.")
c.figure(cost_figure(df, x, metric), f"cost-{name}-{protocol}-{x}")
df["on_front"] = pareto_front(df[x].where(df[x] > 0).to_numpy(float), df[metric].to_numpy(float))
show = df[["label", "track", metric, x, "seconds_per_query", "bytes_per_reference", "images_per_query", "dim",
           "models", "on_front", "written_by", "saw_eval_queries", "cost_notes"]].drop_duplicates(subset="label")
show = show.loc[:, ~show.columns.duplicated()].sort_values(x, kind="stable")
st.dataframe(show, hide_index=True, key="costs")
c.csv_download(show, f"costs-{name}-{protocol}")
desc = df[df["track"] == "descriptor"].sort_values(metric, ascending=False).head(1)
match = df[df["track"] == "matching"].sort_values(metric, ascending=False).head(1)
if len(desc) and len(match):
    d, m = desc.iloc[0], match.iloc[0]
    ratio = m["seconds_per_query"] / d["seconds_per_query"] if d["seconds_per_query"] > 0 else float("nan")
    st.markdown(f"Best matching run **{m['label']}**: {c.METRICS[metric]} {m[metric]:.3f} at "
                f"{m['seconds_per_query']:.4f} s per query; best descriptor run **{d['label']}**: {d[metric]:.3f} at "
                f"{d['seconds_per_query']:.4f} s per query ({ratio:.1f}x the work per query for "
                f"{m[metric] - d[metric]:+.3f}).")
