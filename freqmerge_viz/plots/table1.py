"""Table 1 analogue: amplitude variance after each method's per-task step, all bins beside kept bins."""

from __future__ import annotations


import numpy as np
import pandas as pd

from .core import new_figure

MEASURES = {"change_all_pct": "all bins (paper's measure)", "change_kept_pct": "bins the reference filter keeps",
            "change_normalized_pct": "all bins / mean amplitude"}


def table1_bars(table: pd.DataFrame, title: str = ""):
    """Matplotlib grouped bars: % change against the baseline row, per method and measure,
    with each row's absolute all-bins value under its name."""
    fig, axes = new_figure(1, 1, (1.1 * len(table) + 3.0, 4.0))
    ax = axes[0, 0]
    x = np.arange(len(table))
    width = 0.8 / len(MEASURES)
    for i, (column, label) in enumerate(MEASURES.items()):
        ax.bar(x + (i - (len(MEASURES) - 1) / 2) * width, table[column], width=width, label=label)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, [f"{r['label']}\n{r['all_bins']:.3g}" for _, r in table.iterrows()], fontsize=7)
    ax.set_xlabel("method (below: its all-bins amplitude variance)", fontsize=7)
    ax.set_ylabel(f"% change against {table.attrs.get('baseline', 'the baseline')}")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def table1_plotly(table: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`table1_bars` (hover gives the absolute values)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    absolute = {"change_all_pct": "all_bins", "change_kept_pct": "kept_bins", "change_normalized_pct": "normalized"}
    for column, label in MEASURES.items():
        fig.add_trace(go.Bar(x=table["label"], y=table[column], name=label, customdata=table[absolute[column]],
                             hovertemplate="%{x}: %{y:+.1f}% (value %{customdata:.4g})<extra>" + label + "</extra>"))
    fig.update_layout(title=title, barmode="group", template="plotly_white",
                      yaxis_title=f"% change against {table.attrs.get('baseline', 'the baseline')}")
    return fig


__all__ = ["MEASURES", "table1_bars", "table1_plotly"]
