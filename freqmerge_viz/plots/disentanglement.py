"""Weight-disentanglement figures: the error ξ(α_1, α_2) of a task pair as heatmaps, and the
"others' vectors on task t" table as accuracy against scaling. Inputs: the tidy tables of
:mod:`freqmerge_viz.analysis.disentanglement`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ParameterError
from ..tables import disentanglement_pivot
from .core import new_figure

_KIND_STYLE = {"pretrained": ("θ_pre", "#7f7f7f", ":"), "own": ("θ_pre + α τ_t", "#2ca02c", "-"),
               "others": ("θ_pre + α Σ_(s≠t) τ_s", "#d62728", "-"), "all": ("θ_pre + α Σ_s τ_s (TA)", "#1f77b4", "--")}


def _panels(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if table.empty:
        raise ParameterError("empty disentanglement table")
    pair = table.attrs.get("pair") or list(dict.fromkeys(table["task"]))
    panels = {"ξ = sum of both tasks": disentanglement_pivot(table)}
    for task in pair:
        panels[f"on {task}"] = disentanglement_pivot(table, task)
    return panels


def disentanglement_figure(table: pd.DataFrame, title: str = ""):
    """Three heatmaps over (α_1 rows, α_2 columns): ξ (in [0, 2]) and each task's share of
    changed predictions (in [0, 1]), numbers in each cell."""
    panels = _panels(table)
    size = len(next(iter(panels.values())))
    fig, axes = new_figure(1, 3, size=(3 * (0.5 * size + 1.8), 0.5 * size + 1.9))
    pair = table.attrs.get("pair") or list(dict.fromkeys(table["task"]))
    for ax, (name, matrix) in zip(axes[0], panels.items()):
        values = matrix.to_numpy(float)
        top = 2.0 if name.startswith("ξ") else 1.0
        image = ax.imshow(values, cmap="magma_r", vmin=0.0, vmax=top, origin="lower", aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if value > 0.55 * top else "black")
        ax.set_xticks(range(values.shape[1]), [f"{a:g}" for a in matrix.columns], fontsize=7)
        ax.set_yticks(range(values.shape[0]), [f"{a:g}" for a in matrix.index], fontsize=7)
        ax.set_xlabel(f"α_2 (on τ of {pair[1]})", fontsize=8)
        ax.set_ylabel(f"α_1 (on τ of {pair[0]})", fontsize=8)
        ax.set_title(name, fontsize=9)
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        bar.set_label("ξ: both tasks' shares of changed predictions, summed" if top == 2.0
                      else "share of predictions changed by adding the other τ", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def disentanglement_plotly(table: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`disentanglement_figure`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = _panels(table)
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(panels), horizontal_spacing=0.1)
    for col, (name, matrix) in enumerate(panels.items(), start=1):
        values = matrix.to_numpy(float)
        fig.add_trace(go.Heatmap(z=values, x=[f"{a:g}" for a in matrix.columns], y=[f"{a:g}" for a in matrix.index],
                                 text=[[f"{v:.2f}" for v in row] for row in values], texttemplate="%{text}",
                                 colorscale="Magma", reversescale=True, zmin=0.0,
                                 zmax=2.0 if name.startswith("ξ") else 1.0,
                                 colorbar={"x": col / 3 - 0.02, "len": 0.8, "thickness": 10},
                                 hovertemplate="α_1 %{y}, α_2 %{x}<br>%{z:.3f}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="α_2", row=1, col=col)
        fig.update_yaxes(title_text="α_1", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", height=460)
    return fig


def _check_others(table: pd.DataFrame) -> None:
    missing = [c for c in ("task", "scaling", "kind", "accuracy") if c not in table.columns]
    if missing or table.empty:
        raise ParameterError(f"others table is empty or lacks column(s) {missing}")


def others_figure(table: pd.DataFrame, title: str = ""):
    """Accuracy (%) against scaling α, mean over tasks (left) and per task (small panels),
    one line per state: θ_pre, own vector, the others' vectors, all vectors; ±1 SE bands (binomial,
    from ``n_images``) when the table has them. One legend, in the empty slot under the mean panel
    (or right of the panels when they fit in one row)."""
    from .core import accuracy_summary, add_caption
    from .scales import binomial_se, sample_note

    _check_others(table)
    tasks = list(dict.fromkeys(table["task"]))
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = new_figure(rows, cols + 1, size=(2.4 * (cols + 1), 2.2 * rows + 1.2), sharey=True)
    counted = "n_images" in table.columns
    mean = accuracy_summary(table, ["scaling", "kind"]).rename(columns={"accuracy_pct": "shown", "se_pct": "se"})
    per_task = table.assign(shown=100 * table["accuracy"],
                            se=100 * binomial_se(table["accuracy"].to_numpy(float), table["n_images"].to_numpy(float))
                            if counted else np.nan)
    panels = [("mean over tasks", mean)] + [(task, per_task[per_task["task"] == task]) for task in tasks]
    places = [(0, 0)] + [(i // cols, 1 + i % cols) for i in range(len(tasks))]
    for ax in axes.flat:
        ax.set_visible(False)
    for (name, part), (r, c) in zip(panels, places):
        ax = axes[r, c]
        ax.set_visible(True)
        for kind, (label, colour, style) in _KIND_STYLE.items():
            line = part[part["kind"] == kind].sort_values("scaling")
            if not line.empty:
                ax.plot(line["scaling"], line["shown"], style, color=colour, marker="o", ms=3, label=label)
                if counted:
                    ax.fill_between(line["scaling"], line["shown"] - line["se"], line["shown"] + line["se"],
                                    color=colour, alpha=0.15, lw=0)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("α", fontsize=7)
        ax.grid(alpha=0.3)
    for r in range(rows):
        first = axes[r, 0 if r == 0 else 1]
        first.set_ylabel("accuracy on task t (%)", fontsize=7)
        first.yaxis.set_tick_params(labelleft=True)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if rows > 1:                                  # the empty slot under the mean panel
        slot = axes[1, 0]
        slot.set_visible(True)
        slot.axis("off")
        slot.legend(handles, labels, loc="center", fontsize=7, title="state on task t", title_fontsize=7)
    else:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    if counted:
        counts = table.groupby("task")["n_images"].first()
        add_caption(fig, sample_note(len(counts), counts.to_numpy(), table.attrs.get("split", "val"), "bands")
                    + " (per-task panels: binomial on that task's images)")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def others_plotly(table: pd.DataFrame, title: str = ""):
    """Mean accuracy (%) over tasks against scaling α, one line per state (plotly)."""
    import plotly.graph_objects as go

    _check_others(table)
    means = table.groupby(["scaling", "kind"], as_index=False)["accuracy"].mean()
    fig = go.Figure()
    for kind, (label, colour, style) in _KIND_STYLE.items():
        line = means[means["kind"] == kind].sort_values("scaling")
        if not line.empty:
            fig.add_trace(go.Scatter(x=line["scaling"], y=100 * line["accuracy"], name=label, mode="lines+markers",
                                     line={"color": colour, "dash": "dash" if style == "--" else
                                           "dot" if style == ":" else "solid"}))
    fig.update_layout(title=title, template="plotly_white", height=420, xaxis_title="α",
                      yaxis_title="mean accuracy on task t (%)")
    return fig
