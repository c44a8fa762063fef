"""Adversarial robustness: µAP versus epsilon per method and attack (white-box and transfer), and
examples: clean query, adversarial query, amplified perturbation, top-1 before and after."""

import streamlit as st

import common as c
from imsim_lab.analysis.report.robustness import attack_curves, attack_examples, attack_figure, find_attacks


@st.cache_resource(show_spinner="Reading attack suites…", max_entries=16)
def _suites(key: tuple, _infos):
    return find_attacks(_infos)


st.title("Adversarial robustness")
runs, problems, bench_of = c.discovered()
name, infos, folder = c.select_benchmark(runs, bench_of)
protocol = c.select_protocol()
metric = st.sidebar.radio("Curve metric", ["µAP", "R@P90", "R@1"], key="adv_metric", bind="query-params")
col = {"µAP": "micro_ap", "R@P90": "recall_at_p90", "R@1": "recall_at_rank1"}[metric]
key = tuple(str(r.path) for r in infos)
suites = _suites(key, infos)
if not suites:
    st.info("No attack suite on this benchmark yet. Make one with `imsim-lab attack RUN --transfer OTHER_RUN ...` "
            "(RUN: a torch descriptor method, the surrogate; OTHER_RUN: any run of the same benchmark, SSCD "
            "included).")
    st.stop()

st.caption("Each suite attacks a seeded sample of the queries that have a match on its surrogate's model "
           "(white-box, solid lines) and hands the same adversarial files to the other runs (transfer, dashed). "
           "Queries without a match stay clean distractors; ε 0 is the clean sample. For L-inf budgets the unit "
           "is one 8-bit level (8/255); for L2 the norm of the perturbation of a 224×224 image.")
keys = [s.key for s in suites]
chosen = st.multiselect("Attack suites", keys, default=keys, key="suites", bind="query-params")
sel = [s for s in suites if s.key in chosen]
curves = attack_curves(sel, protocol)
if curves.empty:
    st.stop()
if col == "recall_at_rank1" and protocol == "drivendata":
    st.info("R@1 is an isc2021 metric; switch the protocol to see it.")
else:
    c.figure(attack_figure(curves, col), f"adversarial-{name}-{protocol}-{col}")
show = curves[["suite", "kind", "eval_label", "eps_label", "micro_ap", "recall_at_p90", "recall_at_rank1",
               "descriptor_shift", "distance_to_original", "target_top1_rate", "n_positives"]]
st.dataframe(show, hide_index=True, key="curves", column_config={
    k: st.column_config.NumberColumn(format="%.4f") for k in ("micro_ap", "recall_at_p90", "recall_at_rank1",
                                                              "descriptor_shift", "distance_to_original",
                                                              "target_top1_rate")})
c.csv_download(curves, f"adversarial-{name}-{protocol}")
with st.expander("Attack settings and time per attacked query"):
    for s in sel:
        st.markdown(f"**{s.key}**: {s.info.get('n_queries', '?')} queries, seconds per attacked query "
                    f"{s.info.get('seconds_per_query', {})} (device {s.info.get('device', '?')})")
        st.json(s.info.get("config", {}), expanded=False)

st.subheader("Examples")
c1, c2, c3 = st.columns(3)
suite = next(s for s in sel if s.key == c1.selectbox("Suite", [s.key for s in sel], key="ex_suite",
                                                      bind="query-params"))
labels = list(suite.curves["eval_label"].drop_duplicates())
label = c2.selectbox("Evaluated run", labels, key="ex_run", bind="query-params")
eps_opts = sorted(e for e in suite.curves["eps"].unique() if e > 0)
if not eps_opts:
    st.info("This suite has no epsilon above 0.")
    st.stop()
lab = dict(zip(suite.curves["eps"], suite.curves["eps_label"]))
eps = c3.selectbox("ε", eps_opts, format_func=lambda e: lab.get(e, f"{e:g}"), index=len(eps_opts) - 1, key="ex_eps")
bench = c.benchmark(str(folder)) if folder else None
ex = attack_examples(suite, label, eps, bench)
if ex.empty:
    st.info("No example saved for this suite (run with --examples N).")
for _, r in ex.iterrows():
    lost = r["rank_after"] != 0 and r["rank_before"] == 0
    st.markdown(f"`{r['query_id']}` · true {r['reference_id']} · rank before {r['rank_before']} → after "
                f"{r['rank_after']}" + (" · **lost**" if lost else "") +
                (f" · target {r['target_id']}" if r["target_id"] else ""))
    cols = st.columns(5)
    for where, path, cap in ((cols[0], r["clean"], "clean query"), (cols[1], r["adversarial"], "adversarial query"),
                             (cols[2], r["perturbation"], "perturbation (amplified)")):
        if path:
            where.image(path, caption=cap, width=200)
        else:
            where.caption(f"{cap}: not available")
    if bench is not None:
        c.show_image(bench, r["top_before"], f"top-1 before: {r['top_before']} ({r['score_before']:.3f})", cols[3])
        c.show_image(bench, r["top_after"], f"top-1 after: {r['top_after']} ({r['score_after']:.3f})", cols[4])
