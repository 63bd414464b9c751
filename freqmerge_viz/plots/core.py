"""Figures: matplotlib for static export, plotly for interactive HTML.

Every figure function takes plain arrays or tidy tables and returns a figure; the
``save_*`` helpers write files atomically (temporary name, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

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
                 masks: Sequence[np.ndarray] | None = None):
    """Matplotlib grid of centred log-amplitude spectra (one panel per task), mask outline optional."""
    import matplotlib.pyplot as plt

    n = len(log_amplitudes)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1.0, 3.0 * rows), squeeze=False,
                             constrained_layout=True)
    low = min(float(np.min(a)) for a in log_amplitudes)
    high = max(float(np.max(a)) for a in log_amplitudes)
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
