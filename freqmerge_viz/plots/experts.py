"""Expert sparsity curves (paper Fig. 5b): expert-only accuracy against stored share of the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.experts_curves import DENSITIES, KINDS, expert_curves
from .core import QUICK_LIMIT, new_figure, scope, torch_threads, write_all

LIMIT = 300
"""Test images per task."""
LABELS = {"topk": "top-k (μ = 1)", "topk_rescaled": "top-k + Eq. 4 rescale", "bernoulli": "Bernoulli (not ÷d)",
          "bernoulli_rescaled": "Bernoulli ÷ d (DARE)", "svd": "SVD (rank matched to storage)"}


def mean_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over tasks per kind and density: ``kind, density, stored_fraction, accuracy, individual``."""
    curves = table[table["kind"] != "pretrained"]
    return (curves.groupby(["kind", "density"], sort=False)[["stored_fraction", "accuracy", "individual"]]
            .mean().reset_index())


def experts_figure(table: pd.DataFrame, title: str = ""):
    """Matplotlib: mean expert-only accuracy against stored share (log x), one line per kind, with
    the fine-tuned models and the bare pretrained backbone as horizontal references."""
    means = mean_curves(table)
    fig, axes = new_figure(1, 1, (6.8, 4.4))
    ax = axes[0, 0]
    for kind, group in means.groupby("kind", sort=False):
        ax.plot(group["stored_fraction"], group["accuracy"], marker="o", ms=3, lw=1.3, label=LABELS.get(kind, kind))
    ax.axhline(table["individual"].groupby(table["task"]).first().mean(), color="black", ls="--", lw=0.8,
               label="fine-tuned (individual)")
    ax.axhline(table.loc[table["kind"] == "pretrained", "accuracy"].mean(), color="grey", ls=":", lw=0.8,
               label="pretrained, no expert")
    ax.set_xscale("log")
    ax.set_xlabel("numbers stored per expert / parameters of one backbone")
    ax.set_ylabel("expert-only accuracy, mean over tasks")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def experts_plotly(table: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`experts_figure` (hover: density asked for and accuracy)."""
    import plotly.graph_objects as go

    means = mean_curves(table)
    fig = go.Figure()
    for kind, group in means.groupby("kind", sort=False):
        fig.add_trace(go.Scatter(x=group["stored_fraction"], y=group["accuracy"], mode="lines+markers",
                                 name=LABELS.get(kind, kind), customdata=group["density"],
                                 hovertemplate="d=%{customdata:g}, stored %{x:.3%}<br>acc %{y:.3f}<extra></extra>"))
    fig.add_hline(y=table["individual"].groupby(table["task"]).first().mean(), line_dash="dash",
                  annotation_text="fine-tuned")
    fig.add_hline(y=table.loc[table["kind"] == "pretrained", "accuracy"].mean(), line_dash="dot",
                  annotation_text="pretrained")
    fig.update_layout(title=title, template="plotly_white", xaxis_type="log",
                      xaxis_title="stored share of one backbone", yaxis_title="expert-only accuracy (mean over tasks)")
    return fig


@torch_threads(1)
def write_figures(zoo, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Fig. 5b on the zoo as ``expert_sparsity.*``: every kind of :mod:`~freqmerge_viz.analysis.experts_curves`
    at densities :data:`~freqmerge_viz.analysis.experts_curves.DENSITIES`, Bernoulli seed 0, first
    :data:`LIMIT` test images per task. Nothing is tuned (no validation). ``quick``: three tasks,
    densities 0.01 and 1, 48 images.
    """
    tasks = scope(zoo, quick)
    table = expert_curves(zoo, kinds=KINDS, densities=(0.01, 1.0) if quick else DENSITIES, tasks=tasks,
                          limit=QUICK_LIMIT if quick else LIMIT)
    title = f"Expert-only accuracy (θ_pre + e_t on task t), {len(tasks)} zoo tasks, {table.attrs['limit']} test images each"
    return write_all(Path(out_dir) / "expert_sparsity", table, experts_figure(table, title),
                     experts_plotly(table, title), "fig5b-expert-sparsity", formats)


__all__ = ["LABELS", "experts_figure", "experts_plotly", "mean_curves", "write_figures"]
