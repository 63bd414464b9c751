"""Generalisation-matrix figures (Fig. 3): heatmaps with numbers, unfiltered, filtered and
their difference. Input: the tidy table of :func:`~freqmerge_viz.analysis.generalisation.generalisation_matrix`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ParameterError
from ..tables import generalisation_difference, generalisation_pivot


def _matrices(table: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    if table.empty:
        raise ParameterError("empty generalisation table")
    return {"unfiltered": generalisation_pivot(table, False, metric),
            "filtered": generalisation_pivot(table, True, metric),
            "filtered − unfiltered": generalisation_difference(table, metric)}


def _with_pretrained(matrix: pd.DataFrame, pretrained: dict | None) -> pd.DataFrame:
    if not pretrained:
        return matrix
    row = pd.DataFrame([[pretrained.get(t, np.nan) for t in matrix.columns]], index=["θ_pre"],
                       columns=matrix.columns)
    return pd.concat([matrix, row])


def difference_se(table: pd.DataFrame) -> pd.DataFrame | None:
    """±1 SE of each cell of the accuracy difference (filtered − unfiltered), in the units of the
    table (fractions): the two binomial SEs on the target's ``attrs["n_images"]`` images combined
    as if independent (the same images are used, so this is an upper bound). None without counts."""
    from .scales import binomial_se

    counts = table.attrs.get("n_images")
    if not counts:
        return None
    plain = _matrices(table, "accuracy")["unfiltered"]
    filtered = _matrices(table, "accuracy")["filtered"]
    n = np.array([counts.get(t, np.nan) for t in plain.columns], dtype=float)[None, :]
    se = np.sqrt(binomial_se(plain.to_numpy(float), n) ** 2 + binomial_se(filtered.to_numpy(float), n) ** 2)
    return pd.DataFrame(se, index=plain.index, columns=plain.columns)


def generalisation_figure(table: pd.DataFrame, metric: str = "accuracy", title: str = ""):
    """Matplotlib heatmaps (rows: added task vector, columns: test task) of `metric` for the
    unfiltered and filtered vectors, with θ_pre's row below when ``table.attrs`` has it, and
    their difference in percentage points (accuracy) on a diverging scale centred at 0. With
    image counts in ``table.attrs["n_images"]``, differences within ±1 SE (:func:`difference_se`)
    are printed in grey and a caption says so."""
    import matplotlib.pyplot as plt

    from .core import add_caption

    matrices = _matrices(table, metric)
    noise = difference_se(table) if metric == "accuracy" else None
    pretrained = table.attrs.get("pretrained") if metric == "accuracy" else None
    size = matrices["unfiltered"].shape[1]
    fig, axes = plt.subplots(1, 3, figsize=(3 * (0.55 * size + 1.6), 0.55 * size + 2.0), constrained_layout=True)
    percent = 100.0 if metric == "accuracy" else 1.0
    low = min(float(np.nanmin(m.to_numpy())) for k, m in matrices.items() if k != "filtered − unfiltered")
    high = max(float(np.nanmax(m.to_numpy())) for k, m in matrices.items() if k != "filtered − unfiltered")
    for ax, (name, matrix) in zip(axes, matrices.items()):
        difference = name == "filtered − unfiltered"
        shown = matrix if difference else _with_pretrained(matrix, pretrained)
        values = shown.to_numpy(float) * percent
        if difference:
            bound = max(float(np.nanmax(np.abs(values))), 1e-9)
            image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        else:
            image = ax.imshow(values, cmap="viridis", vmin=low * percent, vmax=high * percent, aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                if difference and noise is not None and abs(value) <= 100 * noise.to_numpy()[i, j]:
                    colour = "#8a8a8a"
                elif difference:
                    colour = "white" if abs(value) > 0.6 * bound else "black"
                else:
                    colour = "black" if value > (low + 0.6 * (high - low)) * percent else "white"
                ax.text(j, i, f"{value:+.1f}" if difference else f"{value:.1f}" if percent == 100 else f"{value:.2f}",
                        ha="center", va="center", fontsize=6, color=colour)
        if not difference and pretrained:
            ax.axhline(len(matrix) - 0.5, color="white", lw=2)
        ax.set_xticks(range(shown.shape[1]), shown.columns, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(shown.shape[0]), shown.index, fontsize=7)
        ax.set_xlabel("test task (its head)", fontsize=8)
        ax.set_ylabel("task vector added to θ_pre", fontsize=8)
        unit = " (percentage points)" if difference and percent == 100 else " (%)" if percent == 100 else ""
        ax.set_title(f"{name}{unit}", fontsize=9)
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        bar.ax.tick_params(labelsize=6)
    if noise is not None:
        counts = sorted(set(table.attrs["n_images"].values()))
        n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        cell_se = _matrices(table, "accuracy")["unfiltered"].to_numpy(float)
        largest = 100 * float(np.nanmax(np.sqrt(cell_se * (1 - cell_se) / max(counts[0], 1))))
        add_caption(fig, f"{n} {table.attrs.get('split', 'test')} images per target: each cell's binomial SE is at most "
                         f"{largest:.1f} points; grey numbers in the difference are within ±1 SE of the difference "
                         "(both SEs combined), i.e. not resolved by this sample")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def generalisation_plotly(table: pd.DataFrame, metric: str = "accuracy", title: str = ""):
    """The plotly version of :func:`generalisation_figure` (three heatmaps with numbers)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    matrices = _matrices(table, metric)
    pretrained = table.attrs.get("pretrained") if metric == "accuracy" else None
    percent = 100.0 if metric == "accuracy" else 1.0
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(matrices), horizontal_spacing=0.1)
    for col, (name, matrix) in enumerate(matrices.items(), start=1):
        difference = name == "filtered − unfiltered"
        shown = matrix if difference else _with_pretrained(matrix, pretrained)
        values = shown.to_numpy(float) * percent
        text = [[("" if not np.isfinite(v) else f"{v:+.1f}" if difference else f"{v:.1f}") for v in row]
                for row in values]
        bound = max(float(np.nanmax(np.abs(values))), 1e-9) if difference else None
        fig.add_trace(go.Heatmap(z=values, x=list(shown.columns), y=list(shown.index), text=text,
                                 texttemplate="%{text}", colorscale="RdBu" if difference else "Viridis",
                                 zmin=-bound if difference else None, zmax=bound if difference else None,
                                 colorbar={"x": col / 3 - 0.02, "len": 0.8, "thickness": 10},
                                 hovertemplate="added %{y}<br>tested on %{x}<br>%{z:.2f}<extra></extra>"),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", height=520)
    return fig
