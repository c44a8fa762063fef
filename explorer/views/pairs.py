"""Pair view (matching track): why a pair matched. The query's candidates before and after
re-scoring, the two images with the local matches drawn between them, the sub-image boxes and the
per-view scores a matcher recorded (``candidates.parquet``)."""

import pandas as pd
import streamlit as st

import common as c
from imsim_lab.analysis.report.pairs import local_matches, matcher_columns, pair_image, pair_table, parse_box, \
    view_scores


@st.cache_data(show_spinner="Reading the candidates…", max_entries=8)
def _pairs(path: str, mtime: float, truth: tuple) -> pd.DataFrame:
    return pair_table(path, dict(truth))


@st.cache_data(show_spinner="Matching local features…", max_entries=64)
def _matches(q_path: str, r_path: str, ratio: float, features: str, max_keypoints):
    from PIL import Image

    with Image.open(q_path) as a, Image.open(r_path) as b:
        return local_matches(a, b, ratio, features, max_keypoints or None)


st.title("Pair view")
runs, problems, bench_of = c.discovered()
name, infos, folder = c.select_benchmark(runs, bench_of)
matching = [r for r in infos if r.config.get("track") == "matching"]
if not matching:
    st.info("No matching-track run on this benchmark: the pair view explains re-scored pairs (for example "
            "`imsim-lab run sift_verify --bench BENCH --out RUNS/sift_verify`).")
    st.stop()
if folder is None:
    st.warning("The benchmark folder of these runs was not found: images cannot be shown.")
    st.stop()
bench = c.benchmark(str(folder))
labels = [r.label for r in matching]
run_label = st.sidebar.selectbox("Matching run", labels, key="prun", bind="query-params")
info = next(r for r in matching if r.label == run_label)
truth = tuple(zip(bench.gt.query_ids.astype(str), bench.gt.reference_ids.astype(str)))
df = _pairs(str(info.path), (info.path / "candidates.parquet").stat().st_mtime, truth)
queries = list(dict.fromkeys(df["query_id"]))
only_true = st.sidebar.toggle("Queries with a match only", value=False, key="ptrue")
if only_true:
    queries = [q for q in queries if dict(truth).get(q)] or queries
query = st.selectbox("Query", queries, key="pq", bind="query-params")
cands = df[df["query_id"] == query]
extra = matcher_columns(df)
report = info.config.get("matcher_report") or {}
st.caption(f"Run **{run_label}** · matcher `{info.config.get('matcher', '?')}` · candidates from "
           f"`{(info.config.get('candidates') or {}).get('method', '?')}` (k = "
           f"{(info.config.get('candidates') or {}).get('k', '?')}). *candidate_rank*: the rank by descriptor score "
           "before re-scoring; *final_rank*: after. The true pair is ticked.")
st.dataframe(cands[["reference_id", "is_true", "candidate_rank", "candidate_score", "final_rank", "score", *extra]],
             hide_index=True, key="pcands", column_config={"is_true": st.column_config.CheckboxColumn("true pair")})
c.csv_download(cands, f"pairs-{run_label}-{query}")
refs = list(cands["reference_id"])
true_ref = dict(truth).get(query, "")
default = refs.index(true_ref) if true_ref in refs else 0
ref = st.selectbox("Reference", refs, index=default, key="pr", bind="query-params")
row = cands[cands["reference_id"] == ref].iloc[0]
moved = int(row["candidate_rank"]) - int(row["final_rank"])
st.markdown(f"**{query} → {ref}**{' (the true pair)' if row['is_true'] else ''}: candidate rank "
            f"{int(row['candidate_rank'])} (descriptor score {row['candidate_score']:.4f}) → final rank "
            f"{int(row['final_rank'])} (score {row['score']:.4f}); " + (f"moved up {moved}" if moved > 0 else
                                                                       f"moved down {-moved}" if moved < 0 else
                                                                       "same rank") + ".")
box_q, box_r = parse_box(row.get("box_q")), parse_box(row.get("box_r"))
xy_q = xy_r = None
if "n_matches" in row.index or info.config.get("matcher") == "sift":
    ratio = float(report.get("ratio", (info.config.get("params") or {}).get("ratio", 0.8)))
    feats = str(report.get("features", (info.config.get("params") or {}).get("features", "sift")))
    cap = (report.get("model") or {}).get("max_keypoints")
    xy_q, xy_r = _matches(str(bench.image_path(query)), str(bench.image_path(ref)), ratio, feats, cap)
    stored = f", the run recorded {int(row['n_matches'])}" if "n_matches" in row.index else ""
    st.caption(f"Lines: {len(xy_q)} {feats} matches passing the ratio test ({ratio}), recomputed for this pair with "
               f"the matcher's features{stored}.")
if box_q or box_r:
    st.caption(f"Boxes: the sub-images that matched ({row.get('view_q', '')} / {row.get('view_r', '')}).")
from PIL import Image  # noqa: E402 - only this page draws

with Image.open(bench.image_path(query)) as qi, Image.open(bench.image_path(ref)) as ri:
    st.image(pair_image(qi, ri, xy_q, xy_r, box_q, box_r), caption=f"query {query} (left), reference {ref} (right)")
vs = view_scores(row)
if len(vs):
    st.subheader("Classifier score per query view")
    st.dataframe(vs, hide_index=True, key="pviews")
