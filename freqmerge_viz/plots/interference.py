"""Interference against performance (paper Fig. 2b): one point per pair of tasks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..methods import get_method
from ..analysis.correlation import correlation_table, pair_interference_table
from .core import QUICK_LIMIT, new_figure, save_csv, scope, torch_threads, write_all

X_LABELS = {"amplitude_variance": "amplitude variance of the pair (all bins)",
            "normalized_variance": "amplitude variance / mean amplitude"}
LIMIT = 400
"""Test images per task for the pair merges and the fine-tuned baselines."""
N_BOOT = 2000


def _verdict(row) -> str:
    if row["pearson_low"] > 0 and row["spearman_low"] > 0:
        return "positive (both intervals above 0)"
    if row["pearson_high"] < 0 and row["spearman_high"] < 0:
        return "negative (both intervals below 0)"
    return "no clear sign (an interval spans 0)"


def _label(row) -> str:
    return (f"Pearson r = {row['pearson']:+.2f} [{row['pearson_low']:+.2f}, {row['pearson_high']:+.2f}]\n"
            f"Spearman ρ = {row['spearman']:+.2f} [{row['spearman_low']:+.2f}, {row['spearman_high']:+.2f}]\n"
            f"{100 * row['level']:.0f}% bootstrap, n = {row['n']}: {_verdict(row)}")


def interference_scatter(pairs: pd.DataFrame, correlations: pd.DataFrame, title: str = ""):
    """Matplotlib: normalised accuracy of each pair's merge against each interference measure
    (one panel per row of `correlations`), least-squares line, correlations as measured."""
    fig, axes = new_figure(1, len(correlations), (5.0 * len(correlations), 4.2))
    for ax, (_, row) in zip(axes[0], correlations.iterrows()):
        x, y = pairs[row["x"]].to_numpy(), pairs[row["y"]].to_numpy()
        ax.scatter(x, y, s=22, color="tab:blue")
        for _, pair in pairs.iterrows():
            ax.annotate(f"{pair['task_a'][:4]}+{pair['task_b'][:4]}", (pair[row["x"]], pair[row["y"]]),
                        fontsize=5, alpha=0.7, xytext=(2, 2), textcoords="offset points")
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 2)
        ax.plot(grid, slope * grid + intercept, color="tab:red", lw=1)
        ax.set_xlabel(X_LABELS.get(row["x"], row["x"]), fontsize=8)
        ax.set_ylabel("normalised accuracy of the merge (mean of the pair)", fontsize=8)
        ax.set_title(_label(row), fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def interference_plotly(pairs: pd.DataFrame, correlations: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`interference_scatter` (hover shows the pair and its accuracies)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(correlations), subplot_titles=[_label(r).replace("\n", "<br>")
                                                                       for _, r in correlations.iterrows()])
    text = [f"{a} + {b}<br>acc {x:.3f} / {y:.3f}" for a, b, x, y in
            zip(pairs["task_a"], pairs["task_b"], pairs["accuracy_a"], pairs["accuracy_b"])]
    for i, (_, row) in enumerate(correlations.iterrows(), start=1):
        fig.add_trace(go.Scatter(x=pairs[row["x"]], y=pairs[row["y"]], mode="markers", text=text,
                                 hovertemplate="%{text}<br>x=%{x:.4g}<br>normalised=%{y:.3f}<extra></extra>",
                                 showlegend=False), row=1, col=i)
        fig.update_xaxes(title_text=X_LABELS.get(row["x"], row["x"]), row=1, col=i)
    fig.update_yaxes(title_text="normalised accuracy of the merge")
    fig.update_layout(title=title, template="plotly_white", margin={"t": 140}, font={"size": 11})
    return fig


@torch_threads(1)
def write_figures(zoo, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Fig. 2b on the zoo: ``interference_vs_accuracy.*`` (one row per pair) and
    ``interference_correlation.csv``.

    Every pair of the zoo's tasks is merged by task arithmetic at its registered scaling 0.3
    (fixed, not tuned: the paper's figure varies the models, not the merge) and evaluated on the
    first :data:`LIMIT` test images of both tasks; correlations carry :data:`N_BOOT` seeded
    bootstrap resamples (seed 0). ``quick``: three tasks (three pairs), 48 images, 200 resamples.
    """
    out = Path(out_dir)
    pairs = pair_interference_table(zoo, tasks=scope(zoo, quick), limit=QUICK_LIMIT if quick else LIMIT)
    correlations = correlation_table(pairs, n_boot=200 if quick else N_BOOT, seed=0)
    scaling = get_method("task_arithmetic").resolve({})["scaling"]
    title = (f"{len(pairs)} pairs of zoo tasks merged by task arithmetic (scaling {scaling:g}); "
             "correlations as measured on this zoo")
    written = write_all(out / "interference_vs_accuracy", pairs, interference_scatter(pairs, correlations, title),
                        interference_plotly(pairs, correlations, title), "fig2b-interference", formats)
    written.append(save_csv(correlations, out / "interference_correlation.csv"))
    return written


__all__ = ["interference_plotly", "interference_scatter", "write_figures"]
