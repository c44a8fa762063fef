"""Robustness results of run folders, for the explorer: graded-suite curves (AP versus strength)
and adversarial curves (µAP versus epsilon, white-box and transfer) with their example images.

Reads what :mod:`imsim_lab.analysis.robustness` and :mod:`imsim_lab.analysis.attacks` write::

    RUN/robustness/graded.parquet                       one row per family, strength, protocol
    RUN/robustness/graded/examples/<family>_<s>.jpg     what a cell's queries look like
    RUN/robustness/attacks/<attack>/curves.parquet      one row per evaluated run, epsilon, protocol
    RUN/robustness/attacks/<attack>/per_query.parquet   top-1 before / after per query and epsilon
    RUN/robustness/attacks/<attack>/images|examples/    adversarial queries, amplified perturbations

Plain functions, no Streamlit and no caching (the app layer caches).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import METRIC_LABELS, style

KIND_DASH = {"white-box": "solid", "transfer": "dash"}


def graded_table(runs) -> pd.DataFrame:
    """The graded-suite rows of every run that has them, with the run's ``label``.

    Args:
        runs: :class:`~imsim_lab.analysis.report.runs.RunInfo` objects.

    Returns:
        Columns: label, family, group, strength, protocol, micro_ap, recall_at_p90, ... (empty
        when no run has a graded suite).
    """
    parts = []
    for r in runs:
        p = Path(r.path) / "robustness" / "graded.parquet"
        if p.is_file():
            parts.append(pd.read_parquet(p).assign(label=r.label, run=str(r.path)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["label", "run", "family", "group", "strength", "protocol", "micro_ap", "recall_at_p90"])


def graded_example(run_path: str | Path, family: str, strength: float) -> Path | None:
    """The example image of a graded cell, or None."""
    p = Path(run_path) / "robustness" / "graded" / "examples" / f"{family}_{float(strength):.4f}.jpg"
    return p if p.is_file() else None


@dataclass(frozen=True, eq=False)
class AttackSuite:
    """One attack folder of a surrogate run."""

    path: Path
    surrogate_label: str
    name: str
    info: dict
    curves: pd.DataFrame

    @property
    def key(self) -> str:
        return f"{self.surrogate_label} · {self.name}"


def find_attacks(runs) -> list[AttackSuite]:
    """Every finished attack suite (``curves.parquet`` present) under the runs, in run order."""
    out = []
    for r in runs:
        root = Path(r.path) / "robustness" / "attacks"
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if (p / "curves.parquet").is_file()):
            info = json.loads((d / "attack.json").read_text()) if (d / "attack.json").is_file() else {}
            cur = pd.read_parquet(d / "curves.parquet").assign(surrogate_label=r.label, suite=f"{r.label} · {d.name}")
            out.append(AttackSuite(d, r.label, d.name, info, cur))
    return out


def attack_curves(suites: list[AttackSuite], protocol: str = "isc2021") -> pd.DataFrame:
    """Long table of every suite's curves under ``protocol``: suite, attack, kind, eval_label, eps..."""
    if not suites:
        return pd.DataFrame(columns=["suite", "attack", "kind", "eval_label", "eps", "eps_label", "micro_ap"])
    df = pd.concat([s.curves for s in suites], ignore_index=True)
    return df[df["protocol"] == protocol].sort_values(["suite", "kind", "eval_label", "eps"],
                                                        ascending=[True, False, True, True]).reset_index(drop=True)


def attack_examples(suite: AttackSuite, eval_label: str, eps: float, bench=None) -> pd.DataFrame:
    """The example queries of a suite at one epsilon, for one evaluated run: image paths (clean,
    adversarial, amplified perturbation) and what was retrieved before (epsilon 0) and after.

    Columns: query_id, reference_id, target_id, clean, adversarial, perturbation, rank_before,
    top_before, score_before, rank_after, top_after, score_after.
    """
    pq = pd.read_parquet(suite.path / "per_query.parquet")
    pq = pq[pq["eval_label"] == eval_label]
    examples = suite.info.get("examples") or list(pq["query_id"].drop_duplicates()[:4])
    eps_dir = f"eps_{float(eps):.6f}"
    before = pq[pq["eps"] == 0.0].set_index("query_id")
    after = pq[np.isclose(pq["eps"], eps)].set_index("query_id")
    rows = []
    for q in examples:
        if q not in after.index:
            continue
        a = after.loc[q]
        b = before.loc[q] if q in before.index else None
        adv = next((p for p in (suite.path / "images" / eps_dir / f"{q}{ext}" for ext in (".png", ".jpg"))
                    if p.is_file()), None)
        diff = suite.path / "examples" / eps_dir / f"{q}_diff.png"
        rows.append({"query_id": q, "reference_id": a["reference_id"], "target_id": a.get("target_id", ""),
                     "clean": str(bench.image_path(q)) if bench is not None else None,
                     "adversarial": str(adv) if adv is not None else (str(bench.image_path(q)) if bench is not None
                                                                      and eps == 0 else None),
                     "perturbation": str(diff) if diff.is_file() else None,
                     "rank_before": int(b["true_rank"]) if b is not None else None,
                     "top_before": b["top_reference_id"] if b is not None else None,
                     "score_before": float(b["top_score"]) if b is not None else None,
                     "rank_after": int(a["true_rank"]), "top_after": a["top_reference_id"],
                     "score_after": float(a["top_score"])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# figures (colour-blind-safe: Okabe-Ito colours plus marker symbols and dashes)


def graded_figure(df: pd.DataFrame, metric: str = "micro_ap", by: str = "family"):
    """Lines of ``metric`` versus strength, one per ``by`` value (family, or run label)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, g) in enumerate(df.sort_values("strength").groupby(by, sort=True)):
        s = style(i)
        fig.add_trace(go.Scatter(x=g["strength"], y=g[metric], mode="lines+markers", name=str(name),
                                 line={"color": s["color"], "dash": s["dash"]},
                                 marker={"symbol": s["symbol"], "size": 8},
                                 customdata=np.stack([g.get("label", pd.Series([""] * len(g))).astype(str),
                                                      g["family"].astype(str)], 1),
                                 hovertemplate="%{customdata[0]} · %{customdata[1]}<br>strength %{x:.2f}<br>"
                                               f"{METRIC_LABELS.get(metric, metric)} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(xaxis_title="edit strength (0 = identity, 1 = hardest DISC21 setting)",
                      yaxis_title=METRIC_LABELS.get(metric, metric), yaxis_range=[0, 1.02], height=420,
                      margin={"l": 10, "r": 10, "t": 30, "b": 40}, legend_title=by)
    return fig


def attack_figure(curves: pd.DataFrame, metric: str = "micro_ap"):
    """µAP (or R@P90) versus epsilon: one line per suite and evaluated run; white-box solid,
    transfer dashed."""
    import plotly.graph_objects as go

    fig = go.Figure()
    groups = list(curves.groupby(["suite", "kind", "eval_label"], sort=False))
    for i, ((suite, kind, label), g) in enumerate(groups):
        s = style(i)
        g = g.sort_values("eps")
        fig.add_trace(go.Scatter(x=g["eps_label"], y=g[metric], mode="lines+markers",
                                 name=f"{label} ({kind}) · {suite.split(' · ')[-1]}",
                                 line={"color": s["color"], "dash": KIND_DASH.get(kind, "dot")},
                                 marker={"symbol": s["symbol"], "size": 9},
                                 hovertemplate=f"{label} · {kind}<br>surrogate {suite}<br>ε %{{x}}<br>"
                                               f"{METRIC_LABELS.get(metric, metric)} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(xaxis_title="attack budget ε", yaxis_title=METRIC_LABELS.get(metric, metric),
                      yaxis_range=[0, 1.02], height=440, margin={"l": 10, "r": 10, "t": 30, "b": 40},
                      legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(type="category")
    return fig
