"""Cost table (paper Table 9): storage, merge and inference time, and accuracy of each merge."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.costs import cost_table
from .core import QUICK_LIMIT, new_figure, scope, torch_threads, write_all

LIMIT = 300
"""Test images per task for the accuracies."""
SHOWN = {"method": "method", "extra_values": "extra numbers stored", "extra_pct_of_model": "extra bytes (% model)",
         "merge_seconds": "merge (s)", "inference_seconds_per_1000": "inference /1000 (s)",
         "mean_accuracy": "mean accuracy"}


def _cells(table: pd.DataFrame) -> list[list[str]]:
    return [[str(r["method"]), f"{int(r['extra_values']):,}", f"{r['extra_pct_of_model']:.1f}",
             f"{r['merge_seconds']:.3f}", f"{r['inference_seconds_per_1000']:.3f}", f"{100 * r['mean_accuracy']:.1f}"]
            for _, r in table.iterrows()]


def costs_figure(table: pd.DataFrame, title: str = ""):
    """Matplotlib: the table itself, beside accuracy against extra storage (one labelled point per method)."""
    fig, axes = new_figure(1, 2, (13.0, 0.32 * len(table) + 2.6), width_ratios=(1.5, 1.0))
    left, right = axes[0]
    left.axis("off")
    grid = left.table(cellText=_cells(table), colLabels=list(SHOWN.values()), loc="center", cellLoc="right")
    grid.auto_set_font_size(False)
    grid.set_fontsize(7)
    grid.scale(1.0, 1.25)
    left.set_title(f"measured on {table['device'].iloc[0]}", fontsize=7)
    shifted = table["extra_pct_of_model"].clip(lower=0.01)
    right.scatter(shifted, table["mean_accuracy"], s=18)
    for x, (_, r) in zip(shifted, table.iterrows()):
        right.annotate(r["method"], (x, r["mean_accuracy"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    right.set_xscale("log")
    right.set_xlabel("extra bytes stored, % of one model (0 drawn at 0.01)", fontsize=8)
    right.set_ylabel("mean test accuracy", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def costs_plotly(table: pd.DataFrame, title: str = ""):
    """Plotly table of the same columns."""
    import plotly.graph_objects as go

    columns = list(zip(*_cells(table)))
    fig = go.Figure(go.Table(header={"values": list(SHOWN.values())}, cells={"values": columns, "align": "right"}))
    fig.update_layout(title=f"{title}<br><sup>measured on {table['device'].iloc[0]}</sup>", template="plotly_white")
    return fig


@torch_threads(1)
def write_figures(zoo, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Table 9 on the zoo as ``costs.*``: every row of :data:`~freqmerge_viz.analysis.costs.ROWS` with
    settings chosen on validation (200 images per task), accuracies on the first :data:`LIMIT` test
    images per task, timings over 1000 inputs (median of 3) on this machine's CPU. ``quick``: three
    tasks, first candidate settings, 48 images, timings over 200 inputs once.
    """
    tasks = scope(zoo, quick)
    table = cost_table(zoo, tasks=tasks, limit=QUICK_LIMIT if quick else LIMIT,
                       validation_limit=QUICK_LIMIT if quick else 200, quick=quick,
                       timing_inputs=200 if quick else 1000, repeats=1 if quick else 3)
    title = f"Storage, time and accuracy of each merge ({len(tasks)} zoo tasks; times are this run's, not portable)"
    return write_all(Path(out_dir) / "costs", table, costs_figure(table, title), costs_plotly(table, title),
                     "table9-costs", formats)


__all__ = ["costs_figure", "costs_plotly", "write_figures"]
