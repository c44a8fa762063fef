"""Ground-truth audit: near-duplicate pairs the ground truth does not list (mined with a run's
descriptors, confirmed by SIFT verification) and confident false positives that are probably
copies; measured against disc-synth's planted siblings; exported as CSV."""

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import common as c
from imsim_lab.analysis.audit import AuditConfig, run_audit
from imsim_lab.analysis.report.failures import paginate
from imsim_lab.runfolder import read_per_query


@st.cache_resource(show_spinner="Mining and verifying pairs (SIFT)…", max_entries=8)
def _audit(path: str, mtime: float, bench_root: str, cfg: AuditConfig, threshold):
    feats = Path(path) / "features"
    xb = np.load(feats / "reference.npy", mmap_mode="r")
    rids = np.load(feats / "reference_ids.npy", allow_pickle=True)
    xt = tids = None
    if (feats / "training.npy").is_file():
        xt, tids = np.load(feats / "training.npy", mmap_mode="r"), np.load(feats / "training_ids.npy", allow_pickle=True)
    return run_audit(np.asarray(xb), rids, c.benchmark(bench_root), read_per_query(path), threshold, xt, tids, cfg)


st.title("Ground-truth audit")
runs, problems, bench_of = c.discovered()
name, infos, folder = c.select_benchmark(runs, bench_of)
usable = [r for r in infos if (r.path / "features" / "reference.npy").is_file()]
if not usable or folder is None:
    st.info("The audit needs a descriptor run with its reference descriptors (`features/`) and the benchmark "
            "folder, e.g. `imsim-lab run sscd --bench BENCH --out RUNS/sscd`.")
    st.stop()
labels = [r.label for r in usable]
run_label = st.sidebar.selectbox("Descriptor run", labels, index=labels.index("sscd") if "sscd" in labels else 0,
                                 key="arun", bind="query-params")
info = next(r for r in usable if r.label == run_label)
k = st.sidebar.select_slider("Neighbours per reference", [1, 2, 3, 5, 10], value=3, key="ak", bind="query-params")
max_pairs = st.sidebar.select_slider("Pairs verified per kind", [50, 100, 200, 400, 800], value=200, key="an",
                                     bind="query-params")
min_matches = st.sidebar.select_slider("Matches that confirm a pair", [10, 15, 25, 40, 60, 100], value=25,
                                       key="am", bind="query-params")
cfg = AuditConfig(k=int(k), max_pairs=int(max_pairs), min_matches=int(min_matches))
res = _audit(str(info.path), (info.path / "metrics.json").stat().st_mtime, str(folder), cfg,
             info.metric("isc2021", "threshold_at_p90"))
st.caption(f"Descriptor **{run_label}**: each reference's {k} nearest references and training images (cosine of "
           f"its descriptors, at least {cfg.min_similarity}), the {max_pairs} most similar pairs of each kind checked "
           f"by SIFT (ratio {cfg.ratio}) with a homography (RANSAC); a pair with at least {min_matches} consistent "
           "matches is *confirmed*. False positives: the run's wrong top-1 predictions above its P90 threshold "
           "(most confident first), checked against the true reference or the query's source image.")
sc = res.scores.get("references")
if sc:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("confirmed reference pairs", sc["confirmed"])
    m2.metric("precision vs planted siblings", "n/a" if np.isnan(sc["precision"]) else f"{sc['precision']:.2f}")
    m3.metric("recall of planted siblings", "n/a" if np.isnan(sc["recall"]) else f"{sc['recall']:.2f}",
              help=f"{sc['true_positives']} of {sc['planted']} planted pairs; the mining proposed "
                   f"{sc['candidates_recall']:.0%} of them")
    fp = res.scores.get("false_positives")
    if fp:
        m4.metric("suspect false positives", fp["suspects"], help=f"of {fp['checked']} checked; {fp['true_positives']} "
                  f"of {fp['planted']} planted hard negatives flagged (precision "
                  f"{fp['precision']:.2f}, recall {fp['recall']:.2f})")
    st.caption("disc-synth plants *siblings* (another shot of a scene, objects moved): the near-duplicates a "
               "real data set holds without saying so. A confirmed pair that is not planted is what the organisers "
               "called the grey zone: look at it.")
else:
    st.caption("This benchmark records no planted siblings: the audit's precision cannot be measured here; review "
               "the pairs by eye.")
sus = res.suspects()
st.subheader(f"Suspected pairs ({len(sus)})")
kinds = sorted(sus["kind"].unique())
chosen = st.multiselect("Kinds", kinds, key="akind", bind="query-params")
show = sus[sus["kind"].isin(chosen)] if chosen else sus
st.dataframe(show, hide_index=True, key="suspects")
c.csv_download(show, f"audit-suspects-{name}-{run_label}", label="Download the suspected pairs (CSV)")
with st.expander(f"Every verified candidate pair ({len(res.pairs)})"):
    st.dataframe(res.pairs, hide_index=True, key="apairs")
    c.csv_download(res.pairs, f"audit-pairs-{name}-{run_label}", where=st)
if show.empty:
    st.success("No suspected pair with these settings.")
    st.stop()
bench = c.benchmark(str(folder))
page, per = c.pager(len(show), "audit", 4)
part, _ = paginate(show.reset_index(drop=True), page, per)
for _, r in part.iterrows():
    a, b = st.columns(2)
    c.show_image(bench, r["image_a"], f"{r['image_a']}", a)
    c.show_image(bench, r["image_b"], f"{r['image_b']}", b)
    planted = "" if pd.isna(r["planted"]) else (" · planted sibling" if r["planted"] else " · not planted")
    st.caption(f"{r['kind']} · {r['evidence']} · score {r['similarity']:.3f}"
               + (f" · query {r['query_id']}" if r["query_id"] else "") + planted)
    st.divider()
