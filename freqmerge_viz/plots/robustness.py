"""Router robustness (paper Fig. 5c): routed merges' accuracy against the router's accuracy p."""

from __future__ import annotations


import pandas as pd

from .core import accuracy_summary, add_caption, draw_references, new_figure, plotly_references
from .scales import as_percent, sample_note


def mean_by_p(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over tasks per method and p: ``method, p, accuracy, router_accuracy``."""
    return table.groupby(["method", "p"], sort=False)[["accuracy", "router_accuracy"]].mean().reset_index()


def p_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and p: mean measured router accuracy (percent) and
    :func:`~freqmerge_viz.plots.core.accuracy_summary` of the routed accuracy (mean over tasks, ±1 SE, percent)."""
    router = table.groupby(["method", "p"], sort=False)["router_accuracy"].mean().reset_index()
    router["router_pct"] = as_percent(router.pop("router_accuracy").to_numpy())
    return router.merge(accuracy_summary(table, ["method", "p"]), on=["method", "p"])


REFERENCE_LABELS = {"task_arithmetic": "task arithmetic (scaling chosen on val.)"}


def _notes(table: pd.DataFrame, references: pd.DataFrame | None) -> list[str]:
    notes = []
    if "n_images" in table.columns:
        counts = table.groupby("task")["n_images"].first()
        notes.append(sample_note(len(counts), counts.to_numpy(), bars="bars and bands"))
    if references is not None and not references.empty and "task_arithmetic" in set(references["reference"]):
        scaling = references.attrs.get("task_arithmetic", {}).get("scaling")
        if scaling is not None:
            notes.append(f"task arithmetic at scaling {scaling:g}")
    return notes


def robustness_figure(table: pd.DataFrame, title: str = "", references: pd.DataFrame | None = None):
    """Matplotlib: mean accuracy (%) against the measured router accuracy (%), one line per routed
    merge with ±1 SE bars, and the `references` (:func:`~freqmerge_viz.analysis.router_robustness.robustness_references`:
    no merge, task arithmetic, fine-tuned) as lines with ±1 SE bands on the same images."""
    summary = p_summary(table)
    fig, axes = new_figure(1, 1, (9.2, 4.8))
    ax = axes[0, 0]
    draw_references(ax, references, REFERENCE_LABELS)
    for method, group in summary.groupby("method", sort=False):
        ax.errorbar(group["router_pct"], group["accuracy_pct"], yerr=group["se_pct"], marker="o", ms=3, capsize=2,
                    label=method)
    ax.set_xlabel("router accuracy (%): share of inputs sent to their own task, measured")
    ax.set_ylabel("accuracy (%), mean over tasks")
    ax.set_xlim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    add_caption(fig, ". ".join(_notes(table, references)))
    ax.set_title(title, fontsize=9)
    return fig


def robustness_plotly(table: pd.DataFrame, title: str = "", references: pd.DataFrame | None = None):
    """The plotly version of :func:`robustness_figure` (hover: p asked for, accuracy ± SE)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, group in p_summary(table).groupby("method", sort=False):
        fig.add_trace(go.Scatter(x=group["router_pct"], y=group["accuracy_pct"], mode="lines+markers", name=method,
                                 error_y={"type": "data", "array": group["se_pct"], "visible": True},
                                 customdata=group[["p", "se_pct"]],
                                 hovertemplate="p=%{customdata[0]:.2f} (measured %{x:.1f}%)<br>%{y:.1f}% ± "
                                               "%{customdata[1]:.1f}<extra></extra>"))
    plotly_references(fig, references, REFERENCE_LABELS)
    notes = "".join(f"<br><sup>{n}</sup>" for n in _notes(table, references))
    fig.update_layout(title=title + notes, template="plotly_white", margin={"t": 110},
                      xaxis_title="router accuracy (%, measured)", yaxis_title="accuracy (%), mean over tasks")
    return fig


__all__ = ["mean_by_p", "p_summary", "robustness_figure", "robustness_plotly"]
