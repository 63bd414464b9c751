"""Cutoff sweep of FR-Merging: accuracy and amplitude variance against the normalised cutoff."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.sweeps import CUTOFFS, SCALINGS, cutoff_sweep
from ..spectral import KINDS
from .core import QUICK_LIMIT, new_figure, scope, torch_threads, write_all

LIMIT = 300
"""Test images per task."""
VALIDATION_LIMIT = 150
"""Validation images per task used to pick each point's scaling."""


def point_means(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (kind, cutoff): mean accuracy over tasks and the point's interference and scaling."""
    keep = ["scaling", "amplitude_variance", "kept_variance", "normalized_variance", "kept_fraction"]
    grouped = table.groupby(["kind", "cutoff"], sort=False)
    return grouped[keep].first().join(grouped["accuracy"].mean()).reset_index()


def sweep_figure(table: pd.DataFrame, title: str = ""):
    """Matplotlib, three panels against the cutoff: mean accuracy over tasks (per task: the CSV and
    the HTML slider), amplitude variance over all and over kept bins, and the scaling each point used."""
    means = point_means(table)
    fig, axes = new_figure(1, 3, (14.0, 4.0))
    accuracy, variance, scaling = axes[0]
    for kind, group in means.groupby("kind", sort=False):
        line, = accuracy.plot(group["cutoff"], group["accuracy"], marker="o", ms=3, lw=1.6, label=kind)
        colour = line.get_color()
        variance.plot(group["cutoff"], group["amplitude_variance"], color=colour, marker="o", ms=3,
                      label=f"{kind}, all bins")
        variance.plot(group["cutoff"], group["kept_variance"], color=colour, ls="--", lw=1, label=f"{kind}, kept bins")
        scaling.plot(group["cutoff"], group["scaling"], color=colour, marker="o", ms=3, label=kind)
    accuracy.set_ylabel("FR-merged accuracy, mean over tasks")
    variance.set_ylabel("across-task amplitude variance")
    scaling.set_ylabel("FR scaling used")
    for ax in axes[0]:
        ax.set_xlabel("cutoff (normalised radius ρ; 0 = no filter)")
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def sweep_plotly(table: pd.DataFrame, title: str = ""):
    """Plotly: mean accuracy against cutoff per kind (left) and, for the cutoff a slider selects,
    each task's accuracy per kind (right)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    means = point_means(table)
    cutoffs = sorted(table["cutoff"].unique())
    kinds = list(dict.fromkeys(table["kind"]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean accuracy against cutoff", "per task at the chosen cutoff"))
    for kind, group in means.groupby("kind", sort=False):
        fig.add_trace(go.Scatter(x=group["cutoff"], y=group["accuracy"], mode="lines+markers", name=kind,
                                 legendgroup=kind, customdata=group[["scaling", "amplitude_variance"]],
                                 hovertemplate="ρ=%{x:g}: acc %{y:.3f}<br>scaling %{customdata[0]:g}, "
                                               "amp. var %{customdata[1]:.4g}<extra>" + kind + "</extra>"),
                      row=1, col=1)
    lines = len(fig.data)
    for cutoff in cutoffs:
        for kind in kinds:
            point = table[(table["cutoff"] == cutoff) & (table["kind"] == kind)]
            fig.add_trace(go.Bar(x=point["task"], y=point["accuracy"], name=f"{kind} @ {cutoff:g}", legendgroup=kind,
                                 showlegend=False, visible=cutoff == cutoffs[0]), row=1, col=2)
    steps = []
    for i, cutoff in enumerate(cutoffs):
        visible = [True] * lines + [j // len(kinds) == i for j in range(len(cutoffs) * len(kinds))]
        steps.append({"method": "update", "label": f"{cutoff:g}", "args": [{"visible": visible}]})
    fig.update_layout(title=title, template="plotly_white", barmode="group",
                      sliders=[{"steps": steps, "currentvalue": {"prefix": "cutoff ρ = "}, "pad": {"t": 40}}])
    fig.update_xaxes(title_text="cutoff (normalised radius)", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    return fig


@torch_threads(1)
def write_figures(zoo, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), executor=None) -> list[Path]:
    """The cutoff sweep on the zoo as ``cutoff_sweep.*``: ideal, Butterworth (order 2) and Gaussian
    high-pass at :data:`~freqmerge_viz.analysis.sweeps.CUTOFFS`, FR paper reading (λ_i of Eq. 3),
    each point's scaling chosen among :data:`~freqmerge_viz.analysis.sweeps.SCALINGS` on
    :data:`VALIDATION_LIMIT` validation images per task, accuracy on :data:`LIMIT` test images.
    ``quick``: three tasks, ideal and Gaussian at cutoffs 0 and 0.3, scaling 1 only, 48 images.
    """
    tasks = tuple(scope(zoo, quick))
    if quick:
        table = cutoff_sweep(zoo, ("ideal", "gaussian"), (0.0, 0.3), executor=executor, tasks=tasks,
                             limit=QUICK_LIMIT)
    else:
        table = cutoff_sweep(zoo, KINDS, CUTOFFS, executor=executor, tasks=tasks, scalings=SCALINGS,
                             limit=LIMIT, validation_limit=VALIDATION_LIMIT)
    title = f"FR-Merging along the cutoff ({len(tasks)} zoo tasks, {LIMIT if not quick else QUICK_LIMIT} test images each)"
    return write_all(Path(out_dir) / "cutoff_sweep", table, sweep_figure(table, title), sweep_plotly(table, title),
                     "cutoff-sweep", formats)


__all__ = ["point_means", "sweep_figure", "sweep_plotly", "write_figures"]
