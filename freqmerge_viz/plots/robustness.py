"""Router robustness (paper Fig. 5c): routed merges' accuracy against the router's accuracy p."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.router_robustness import ROUTER_ACCURACIES, chosen_routed_merges, router_robustness
from .core import QUICK_LIMIT, new_figure, scope, torch_threads, write_all

LIMIT = 300
"""Test images per task."""


def mean_by_p(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over tasks per method and p: ``method, p, accuracy, router_accuracy``."""
    return table.groupby(["method", "p"], sort=False)[["accuracy", "router_accuracy"]].mean().reset_index()


def robustness_figure(table: pd.DataFrame, title: str = ""):
    """Matplotlib: mean accuracy against the measured router accuracy, one line per routed merge."""
    means = mean_by_p(table)
    fig, axes = new_figure(1, 1, (6.0, 4.2))
    ax = axes[0, 0]
    for method, group in means.groupby("method", sort=False):
        ax.plot(group["router_accuracy"], group["accuracy"], marker="o", ms=3, label=method)
    ax.set_xlabel("router accuracy (share of inputs sent to their own task, measured)")
    ax.set_ylabel("accuracy, mean over tasks")
    ax.set_xlim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def robustness_plotly(table: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`robustness_figure` (hover: p asked for)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, group in mean_by_p(table).groupby("method", sort=False):
        fig.add_trace(go.Scatter(x=group["router_accuracy"], y=group["accuracy"], mode="lines+markers", name=method,
                                 customdata=group["p"],
                                 hovertemplate="p=%{customdata:.2f} (measured %{x:.3f})<br>acc %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, template="plotly_white", xaxis_title="router accuracy (measured)",
                      yaxis_title="accuracy (mean over tasks)")
    return fig


@torch_threads(1)
def write_figures(zoo, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Fig. 5c on the zoo as ``router_robustness.*``: FREE, EMR and Twin with the settings the zoo
    comparison chooses on validation (200 images per task, oracle routes), then a seeded
    ``RandomRouter`` (seed 0) at p = 0, 0.1, …, 1 on the first :data:`LIMIT` test images per task.
    ``quick``: three tasks, each row's first candidate setting, p ∈ {0, 0.5, 1}, 48 images.
    """
    tasks = scope(zoo, quick)
    routed = chosen_routed_merges(zoo, tasks=tasks, quick=quick, validation_limit=QUICK_LIMIT if quick else 200)
    table = router_robustness(zoo, routed, tasks=tasks, ps=(0.0, 0.5, 1.0) if quick else ROUTER_ACCURACIES,
                              seed=0, limit=QUICK_LIMIT if quick else LIMIT)
    table["settings"] = table["method"].map({name: json.dumps(merge.settings, sort_keys=True, default=str)
                                             for name, merge in routed.items()})
    title = f"Routed merges under a random router ({len(tasks)} zoo tasks, {table.attrs['limit']} test images each)"
    return write_all(Path(out_dir) / "router_robustness", table, robustness_figure(table, title),
                     robustness_plotly(table, title), "fig5c-router-robustness", formats)


__all__ = ["mean_by_p", "robustness_figure", "robustness_plotly", "write_figures"]
