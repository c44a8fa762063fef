"""Plotly figures of the explorer, built from the tables of :mod:`imsim_lab.analysis.report.tables`.

Colour-blind-safe throughout: the Okabe-Ito palette (with distinct marker symbols and dashes as a
second cue) for categories, "cividis" for sequential values and blue/orange for signed differences.
Clicking a cell of a plain heatmap returns no selection in Streamlit (streamlit issue 8760), a
scatter point does: the heatmap carries one invisible square marker per cell whose ``customdata``
names the cell.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: Okabe & Ito (2008), reordered so that the first colours are the most distinct on white
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
SEQUENTIAL = "Cividis"
POSITIVE, NEGATIVE = "#0072B2", "#D55E00"
METRIC_LABELS = {"micro_ap": "µAP", "recall_at_p90": "R@P90", "recall_at_rank1": "R@1"}


def _go():
    import plotly.graph_objects as go

    return go


def style(i: int) -> dict:
    """Colour, marker symbol and dash of the i-th category."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "symbol": SYMBOLS[i % len(SYMBOLS)],
            "dash": DASHES[(i // len(OKABE_ITO)) % len(DASHES)]}


def leaderboard_figure(lb: pd.DataFrame, metric: str = "micro_ap"):
    """Points with bootstrap intervals, one row per run (best at the top); runs tied with the best
    are drawn filled, the others hollow."""
    go = _go()
    df = lb.iloc[::-1]
    name = METRIC_LABELS.get(metric, metric)
    v = df[metric].to_numpy(float)
    lo, hi = df[f"{metric}_low"].to_numpy(float), df[f"{metric}_high"].to_numpy(float)
    tied = df["tied_with_best"].to_numpy(bool) if "tied_with_best" in df else np.zeros(len(df), bool)
    fig = go.Figure(go.Scatter(
        x=v, y=df["label"], mode="markers",
        error_x={"type": "data", "symmetric": False, "array": np.nan_to_num(hi - v),
                 "arrayminus": np.nan_to_num(v - lo), "color": "#555", "thickness": 1.5},
        marker={"size": 12, "color": [POSITIVE if t else "white" for t in tied],
                "line": {"color": POSITIVE, "width": 2}, "symbol": "circle"},
        customdata=np.stack([lo, hi, df["tie_rank"].to_numpy() if "tie_rank" in df else np.zeros(len(df))], 1),
        hovertemplate=f"%{{y}}<br>{name} %{{x:.4f}} [%{{customdata[0]:.4f}}, %{{customdata[1]:.4f}}]"
                      "<br>tie rank %{customdata[2]}<extra></extra>", name=name))
    fig.update_layout(xaxis_title=f"{name} (95 % bootstrap interval)", height=120 + 36 * len(df),
                      margin={"l": 10, "r": 10, "t": 30, "b": 40}, showlegend=False,
                      title="filled: statistically tied with the best")
    fig.update_xaxes(range=[max(0.0, float(np.nanmin(lo, initial=1.0)) - 0.05),
                            min(1.0, float(np.nanmax(hi, initial=0.0)) + 0.05)] if len(df) else None)
    return fig


def family_heatmap(ft: pd.DataFrame, metric: str = "micro_ap", family_order: list[str] | None = None,
                   label_order: list[str] | None = None, max_width: float | None = None):
    """Runs x transformation families coloured by ``metric`` (cividis, 0..1; blank = no positive).

    Drawn as a heatmap (it scales with the page) under a layer of invisible square markers, one
    per cell, which is what a click selects: each marker's ``customdata`` is (label, family,
    n_positives, group, low, high, R@1). With the interval columns of
    :func:`.families.family_metrics` (``{metric}_low``/``_high``), the hover shows the bootstrap
    interval and, given ``max_width``, a cell whose interval is wider is greyed out (drawn without
    colour, its value in parentheses): too few positives to read it.
    """
    go = _go()
    fams = family_order or list(ft.sort_values(["group", "family"])["family"].drop_duplicates())
    labels = label_order or list(ft["label"].drop_duplicates())
    df = ft.set_index(["label", "family"])
    z = np.full((len(labels), len(fams)), np.nan)
    npos = np.zeros((len(labels), len(fams)), int)
    grey = np.zeros((len(labels), len(fams)), bool)
    xs, ys, custom, text = [], [], [], []
    for i, lab in enumerate(labels):
        for j, f in enumerate(fams):
            if (lab, f) not in df.index:
                continue
            r = df.loc[(lab, f)]
            z[i, j], npos[i, j] = float(r[metric]), int(r["n_positives"])
            lo, hi = float(r.get(f"{metric}_low", np.nan)), float(r.get(f"{metric}_high", np.nan))
            grey[i, j] = max_width is not None and not math.isnan(hi - lo) and hi - lo > max_width
            r1 = float(r.get("recall_at_rank1", np.nan))
            xs.append(f), ys.append(lab)
            custom.append([lab, f, int(r["n_positives"]), str(r.get("group", "")),
                           "" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]",
                           "n/a" if math.isnan(r1) else f"{r1:.3f}", "  (interval too wide: greyed)" if grey[i, j]
                           else ""])
            text.append("no positive" if math.isnan(z[i, j]) else f"{z[i, j]:.3f}")
    name = METRIC_LABELS.get(metric, metric)
    cells = [["" if math.isnan(v) else (f"({v:.2f})" if g else f"{v:.2f}") for v, g in zip(row, grow)]
             for row, grow in zip(z, grey)]
    z = np.where(grey, np.nan, z)
    fig = go.Figure(go.Heatmap(
        z=z, x=fams, y=labels, colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0, xgap=2, ygap=2, hoverinfo="skip",
        text=cells, texttemplate="%{text}", textfont={"size": 9}, colorbar={"title": name, "thickness": 12}))
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers", text=text, customdata=custom, showlegend=False,
        marker={"symbol": "square", "size": 18, "color": "rgba(0,0,0,0.01)"},
        selected={"marker": {"color": "rgba(0,0,0,0.01)"}}, unselected={"marker": {"opacity": 1}},
        hovertemplate="%{customdata[0]}<br>%{customdata[1]} (%{customdata[3]})<br>" + name
                      + " %{text} %{customdata[4]}%{customdata[6]}<br>R@1 %{customdata[5]}<br>"
                      "%{customdata[2]} positives<extra>click to see the queries</extra>"))
    fig.update_layout(height=max(260, 150 + 34 * len(labels)), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      plot_bgcolor="#eeeeee",
                      xaxis={"type": "category", "categoryorder": "array", "categoryarray": fams, "tickangle": -50,
                             "side": "top", "showgrid": False},
                      yaxis={"type": "category", "categoryorder": "array", "categoryarray": labels[::-1],
                             "showgrid": False},
                      clickmode="event+select", dragmode=False)
    return fig


def strength_figure(st: pd.DataFrame, metric: str = "micro_ap"):
    """AP versus edit strength: one line per run (colour, symbol and dash distinguish them)."""
    go = _go()
    fig = go.Figure()
    for i, (lab, d) in enumerate(st.groupby("label", sort=False)):
        s = style(i)
        fig.add_trace(go.Scatter(
            x=d["strength_mid"], y=d[metric], name=lab, mode="lines+markers",
            line={"color": s["color"], "dash": s["dash"]}, marker={"symbol": s["symbol"], "size": 9},
            customdata=np.stack([d["strength_low"], d["strength_high"], d["n_positives"]], 1),
            hovertemplate=f"{lab}<br>strength %{{customdata[0]:.1f}}-%{{customdata[1]:.1f}}<br>"
                          f"{METRIC_LABELS.get(metric, metric)} %{{y:.3f}}<br>%{{customdata[2]}} positives<extra></extra>"))
    fig.update_layout(xaxis_title="edit strength (bin centre)", yaxis_title=METRIC_LABELS.get(metric, metric),
                      yaxis_range=[0, 1.02], xaxis_range=[0, 1], height=420, margin={"t": 30, "b": 40},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def compare_figure(cmp: pd.DataFrame, label_a: str, label_b: str):
    """Per-family µAP difference (b − a): blue where b is better, orange where a is."""
    go = _go()
    df = cmp.iloc[::-1]
    d = df["diff"].to_numpy(float)
    fig = go.Figure(go.Bar(
        x=np.nan_to_num(d), y=df["family"], orientation="h",
        marker={"color": [POSITIVE if v > 0 else NEGATIVE for v in np.nan_to_num(d)]},
        customdata=np.stack([df["micro_ap_a"], df["micro_ap_b"], df["n_positives"]], 1),
        hovertemplate=f"%{{y}}<br>{label_a} %{{customdata[0]:.3f}}<br>{label_b} %{{customdata[1]:.3f}}"
                      "<br>%{customdata[2]} positives<extra></extra>"))
    fig.update_layout(xaxis_title=f"µAP of {label_b} − µAP of {label_a}", height=140 + 22 * len(df),
                      margin={"t": 30, "b": 40}, xaxis_range=[-1, 1])
    return fig


def pr_figure(pr: pd.DataFrame):
    """Precision-recall curves (one per run) with the 90 % precision line of R@P90."""
    go = _go()
    fig = go.Figure()
    for i, (lab, d) in enumerate(pr.groupby("label", sort=False)):
        s = style(i)
        fig.add_trace(go.Scatter(x=d["recall"], y=d["precision"], name=lab, mode="lines",
                                 line={"color": s["color"], "dash": s["dash"], "shape": "hv"},
                                 hovertemplate=f"{lab}<br>recall %{{x:.3f}}<br>precision %{{y:.3f}}<extra></extra>"))
    fig.add_hline(y=0.9, line={"color": "#777", "dash": "dot"}, annotation_text="P90", annotation_position="bottom left")
    fig.update_layout(xaxis_title="recall", yaxis_title="precision", xaxis_range=[0, 1], yaxis_range=[0, 1.02],
                      height=420, margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": -0.2})
    return fig
