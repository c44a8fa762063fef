"""Leaderboard: every run of a benchmark with µAP, R@P90 and R@1 and bootstrap intervals, its track,
its cost (descriptor size, index bytes, images and seconds per query, models) and its provenance."""

import pandas as pd
import streamlit as st

import common as c
from imsim_lab.analysis.report import leaderboard, runs_table
from imsim_lab.analysis.report.cost import cost_table
from imsim_lab.analysis.report.figures import leaderboard_figure, pr_figure
from imsim_lab.analysis.report.tables import pr_table


@st.cache_data(show_spinner="Costs…", max_entries=32)
def _costs(key: tuple, _infos) -> pd.DataFrame:
    return cost_table(_infos)


@st.cache_data(show_spinner="Bootstrapping…", max_entries=32)
def _board(key: tuple, protocol: str, n_boot: int, _runs) -> pd.DataFrame:
    return leaderboard(_runs, protocol, n_boot=n_boot, seed=0)


st.title("Leaderboard")
runs, problems, bench_of = c.discovered()
for p in problems:
    st.warning(f"`{p.path}`: {p.problem}")
name, infos, folder = c.select_benchmark(runs, bench_of)
protocol = c.select_protocol()
n_boot = st.sidebar.select_slider("Bootstrap resamples", [200, 500, 1000], value=200, key="boot",
                                  bind="query-params")
metric = c.select_metric(label="Figure metric")
rds = c.load_runs(infos, folder)
if not rds:
    st.stop()
key = tuple((str(r.info.path), r.info.path.joinpath("metrics.json").stat().st_mtime) for r in rds)
lb = _board(key, protocol, n_boot, rds).merge(_costs(key, [r.info for r in rds]), on="label", how="left")
tracks = st.sidebar.pills("Track", ["descriptor", "matching"], selection_mode="multi",
                          default=["descriptor", "matching"], key="track", bind="query-params")
lb = lb[lb["track"].isin(tracks or ["descriptor", "matching"])].reset_index(drop=True)

st.caption(f"Benchmark **{name}** · {len(lb)} runs · protocol **{protocol}** · {n_boot} resamples of the queries "
           "(95 % percentile intervals). *Tie rank* = 1 + the number of runs significantly better in a paired "
           "bootstrap; runs sharing a tie rank cannot be separated on this benchmark. Cost columns: descriptor "
           "dimension, bytes of index per reference, images embedded per query, seconds per query on the machine "
           "that ran it (query side; wall clock unless the run recorded CPU time), models in the ensemble. "
           "*Saw the evaluation queries*: tuned or trained on them, so not comparable (flagged).")
show = lb.rename(columns={"micro_ap": "µAP", "recall_at_p90": "R@P90", "recall_at_rank1": "R@1"})
fmt = st.column_config.NumberColumn(format="%.4f")
cols = {k: fmt for k in show.columns if k.startswith(("µAP", "R@", "micro_ap", "recall"))}
st.dataframe(show, hide_index=True, column_config={**cols, "tied_with_best": st.column_config.CheckboxColumn(
    "tied with best"), "threshold_at_p90": st.column_config.NumberColumn("P90 threshold", format="%.4f"),
    "saw_eval_queries": st.column_config.CheckboxColumn("saw the evaluation queries"),
    "seconds_per_query": st.column_config.NumberColumn("s / query", format="%.4f"),
    "bytes_per_reference": st.column_config.NumberColumn("index B / reference", format="%.0f")},
    column_order=["rank", "tie_rank", "label", "track", "µAP", "micro_ap_low", "micro_ap_high", "R@P90",
                  "recall_at_p90_low", "recall_at_p90_high", "R@1", "recall_at_rank1_low", "recall_at_rank1_high",
                  "tied_with_best", "dim", "bytes_per_reference", "images_per_query", "seconds_per_query",
                  "seconds_kind", "models", "written_by", "saw_eval_queries", "n_positives", "n_predictions",
                  "threshold_at_p90", "notes", "cost_notes"], key="board")
saw = lb[lb["saw_eval_queries"].fillna(False).astype(bool)]
if len(saw):
    st.warning("Tuned or trained on this benchmark's evaluation queries (not comparable with the others): "
               + ", ".join(saw["label"]))
c.csv_download(lb, f"leaderboard-{name}-{protocol}")

if metric == "recall_at_rank1" and protocol == "drivendata":
    st.info("R@1 is an isc2021 metric; switch the protocol to see it.")
else:
    c.figure(leaderboard_figure(lb, metric), f"leaderboard-{name}-{protocol}-{metric}")

st.subheader("Precision-recall")
st.caption("One step per correct prediction (µAP is the area under the steps); R@P90 is where a curve last "
           "crosses the dotted line.")
pr = pr_table(rds, protocol)
c.figure(pr_figure(pr), f"pr-{name}-{protocol}")
c.csv_download(pr, f"pr-{name}-{protocol}")

random = lb[lb["notes"].str.contains("RANDOM", na=False)]
if len(random):
    st.warning("Runs with random weights are a floor, not the method's accuracy: " + ", ".join(random["label"]))

with st.expander("Runs, timings and configuration"):
    rt = runs_table(infos)
    st.dataframe(rt, hide_index=True, key="runs")
    c.csv_download(rt, f"runs-{name}", where=st)
    tim = pd.DataFrame([{"label": r.label, **r.info.timings} for r in rds])
    st.dataframe(tim, hide_index=True, key="timings")
    c.csv_download(tim, f"timings-{name}", where=st)
