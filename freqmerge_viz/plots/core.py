"""Figures: matplotlib for static export, plotly for interactive HTML.

Every figure function takes plain arrays or tidy tables and returns a figure; the
``save_*`` helpers write files atomically (temporary name, then rename). The topic modules'
``write_figures`` share :func:`write_all` (CSV + static + HTML), :func:`scope` and the quick
settings, and run with one torch thread (:func:`torch_threads`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..backend import torch_threads  # noqa: F401  (re-exported for the topic modules)
from ..io import write_atomically

STATIC_FORMATS = ("png", "svg", "pdf")


def save_figure(fig, stem: str | os.PathLike, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write a matplotlib figure as ``stem.<fmt>`` for each format; returns the paths."""
    written = []
    for fmt in formats:
        if fmt not in STATIC_FORMATS:
            from ..errors import ParameterError
            raise ParameterError(f"format must be one of {STATIC_FORMATS}, got {fmt!r}")
        target = Path(f"{stem}.{fmt}")
        target.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
        write_atomically(target, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight",
                                                         metadata=metadata))
        written.append(target)
    return written


def save_html(fig, path: str | os.PathLike, div_id: str = "freqmerge-figure") -> Path:
    """Write a plotly figure as a self-contained HTML page with a fixed div id (reproducible)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True,
                                                        div_id=div_id))
    return target


def spectra_grid(log_amplitudes: Sequence[np.ndarray], titles: Sequence[str], suptitle: str = "",
                 masks: Sequence[np.ndarray] | None = None, limits: tuple[float, float] | None = None):
    """Matplotlib grid of centred log-amplitude spectra (one panel per task), mask outline optional.

    `limits` fixes the shared colour range (default: the smallest and largest value shown).
    """
    import matplotlib.pyplot as plt

    n = len(log_amplitudes)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1.0, 3.0 * rows), squeeze=False,
                             constrained_layout=True)
    low = min(float(np.min(a)) for a in log_amplitudes) if limits is None else limits[0]
    high = max(float(np.max(a)) for a in log_amplitudes) if limits is None else limits[1]
    height, width = np.shape(log_amplitudes[0])[-2:]
    extent = (-(width // 2) - 0.5, (width - 1) // 2 + 0.5, (height - 1) // 2 + 0.5, -(height // 2) - 0.5)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        image = ax.imshow(log_amplitudes[i], cmap="magma", vmin=low, vmax=high, aspect="auto",
                          extent=extent, interpolation="nearest")
        if masks is not None:
            ax.contour(np.arange(-(width // 2), (width + 1) // 2), np.arange(-(height // 2), (height + 1) // 2),
                       masks[i], levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(titles[i], fontsize=9)
        if i // cols == rows - 1:
            ax.set_xlabel("column frequency γ (bins)", fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("row frequency η (bins)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=axes, shrink=0.8, label="ln |F(v)|")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def radial_profiles_figure(profiles: pd.DataFrame, cutoff: float | None = None, title: str = ""):
    """Matplotlib lines of mean amplitude against normalised radius, one per task.

    `profiles` columns: ``task``, ``radius`` (normalised), ``amplitude``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for task, group in profiles.groupby("task", sort=False):
        ax.plot(group["radius"], group["amplitude"], label=task, lw=1.4)
    if cutoff is not None:
        ax.axvline(cutoff, color="grey", ls="--", lw=1, label=f"cutoff {cutoff:g}")
    ax.set_yscale("log")
    ax.set_xlabel("normalised radius ρ (0 = DC, 1 = spectrum corner)")
    ax.set_ylabel("mean |F(v)| in shell")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def radial_profiles_plotly(profiles: pd.DataFrame, cutoff: float | None = None, title: str = ""):
    """The plotly version of :func:`radial_profiles_figure`."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for task, group in profiles.groupby("task", sort=False):
        fig.add_trace(go.Scatter(x=group["radius"], y=group["amplitude"], mode="lines", name=str(task)))
    if cutoff is not None:
        fig.add_vline(x=cutoff, line_dash="dash", line_color="grey")
    fig.update_layout(title=title, xaxis_title="normalised radius ρ", yaxis_title="mean |F(v)|",
                      yaxis_type="log", template="plotly_white")
    return fig


def interference_figure(table: pd.DataFrame, title: str = ""):
    """Matplotlib bars of amplitude variance per setting, all bins beside kept bins.

    `table` columns: ``setting``, ``all_bins``, ``kept_bins``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["all_bins"], width=0.4, label="all bins")
    ax.bar(x + 0.2, table["kept_bins"], width=0.4, label="bins the filter keeps")
    ax.set_xticks(x, table["setting"], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("mean across-task amplitude variance")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- shared by the topic modules
QUICK_TASKS = 3
"""Tasks (the zoo's first ones) that the topic modules' ``quick=True`` runs use."""
QUICK_LIMIT = 48
"""Images per task and split that ``quick=True`` runs evaluate."""


def scope(zoo, quick: bool) -> list[str]:
    """The tasks a topic module analyses: all of the zoo's, or its first :data:`QUICK_TASKS` when quick."""
    return list(zoo.tasks[:QUICK_TASKS] if quick else zoo.tasks)


def save_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV atomically (index kept only when it is not a plain range)."""
    from ..io import write_text_atomically

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    keep_index = not isinstance(table.index, pd.RangeIndex)
    write_text_atomically(target, table.to_csv(index=keep_index, float_format="%.6g"))
    return target


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 4.0),
               layout: str | None = "constrained", **kwargs):
    """A pyplot-free matplotlib figure (safe in threads, nothing to close) and its axes array;
    `kwargs` go to ``Figure.subplots`` (sharex, width_ratios, ...). Large grids render much faster
    with ``layout=None`` (then place them with ``fig.subplots_adjust``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout=layout)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def write_all(stem: str | os.PathLike, table: pd.DataFrame, static=None, interactive=None,
              div_id: str = "freqmerge-figure", formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """``stem.csv``, the matplotlib figure `static` as ``stem.<fmt>`` and the plotly figure
    `interactive` as ``stem.html`` (each skipped when None); returns the paths written."""
    written = [save_csv(table, f"{stem}.csv")]
    if static is not None:
        written += save_figure(static, stem, formats)
    if interactive is not None:
        written.append(save_html(interactive, f"{stem}.html", div_id=div_id))
    return written
