"""Cost table (paper Table 9): storage, merge and inference time, and accuracy of each merge."""

from __future__ import annotations


import pandas as pd

import numpy as np

from .core import REFERENCE_STYLES, add_caption, new_figure, reference_summary
from .scales import sample_note

SHOWN = {"method": "method", "extra_values": "extra numbers stored", "extra_pct_of_model": "extra bytes (% model)",
         "merge_seconds": "merge (s)", "inference_seconds_per_1000": "inference /1000 (s)",
         "mean_accuracy": "mean accuracy (%) ± SE"}
KIND_COLOURS = {"individual": "black", "plain": "tab:blue", "routed": "tab:orange"}


def _accuracy_cell(r) -> str:
    se = r.get("accuracy_se", float("nan"))
    return f"{100 * r['mean_accuracy']:.1f}" + (f" ± {100 * se:.1f}" if se == se else "")


def _cells(table: pd.DataFrame) -> list[list[str]]:
    return [[str(r["method"]), f"{int(r['extra_values']):,}", f"{r['extra_pct_of_model']:.1f}",
             f"{r['merge_seconds']:.3f}", f"{r['inference_seconds_per_1000']:.3f}", _accuracy_cell(r)]
            for _, r in table.iterrows()]


def _storage(pct: float) -> str:
    return "no extra storage" if pct == 0 else f"+{pct:.3g}% of a model"


def costs_figure(table: pd.DataFrame, title: str = "", references: pd.DataFrame | None = None):
    """Matplotlib: the table itself, beside each method's mean accuracy (%) with ±1 SE bars, one row per
    method in table order (its extra storage in the row label, colour: individual / plain / routed),
    and the `references` (no merge: θ_pre + heads) as vertical lines with ±1 SE bands. One row per
    method, so no two labels can overlap."""
    rows = len(table)
    fig, axes = new_figure(1, 2, (14.0, 0.3 * rows + 2.4), width_ratios=(1.45, 1.0))
    left, right = axes[0]
    left.axis("off")
    grid = left.table(cellText=_cells(table), colLabels=list(SHOWN.values()), loc="upper center", cellLoc="right")
    grid.auto_set_font_size(False)
    grid.set_fontsize(7)
    grid.auto_set_column_width(list(range(len(SHOWN))))
    grid.scale(1.0, 1.25)
    left.set_title(f"measured on {table['device'].iloc[0]}", fontsize=7)
    y = np.arange(rows)[::-1]
    accuracy = 100 * table["mean_accuracy"].to_numpy(float)
    se = 100 * table["accuracy_se"].to_numpy(float) if "accuracy_se" in table.columns else None
    for kind, colour in KIND_COLOURS.items():
        chosen = (table["kind"] == kind).to_numpy()
        if chosen.any():
            right.errorbar(accuracy[chosen], y[chosen], xerr=None if se is None else se[chosen], ls="none", marker="o",
                           ms=4, capsize=2, color=colour, label=kind)
    for ref in reference_summary(references).itertuples():
        label, colour, style = REFERENCE_STYLES.get(ref.reference, (ref.reference, "grey", ":"))
        if np.isfinite(ref.se_pct):
            right.axvspan(ref.accuracy_pct - ref.se_pct, ref.accuracy_pct + ref.se_pct, color=colour, alpha=0.12, lw=0)
        right.axvline(ref.accuracy_pct, color=colour, ls=style, lw=1.1, label=f"{label}: {ref.accuracy_pct:.1f}%")
    right.set_yticks(y, [f"{m} ({_storage(p)})" for m, p in zip(table["method"], table["extra_pct_of_model"])],
                     fontsize=7)
    right.set_ylim(-0.7, rows - 0.3)
    right.set_xlabel("mean test accuracy (%)", fontsize=8)
    right.tick_params(axis="x", labelsize=7)
    right.grid(axis="x", alpha=0.3)
    right.legend(fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, frameon=False)
    if "n_images" in table.columns:
        tasks = len(table.attrs.get("tasks") or ()) or 1
        add_caption(fig, f"{sample_note(tasks, table['n_images'].iloc[0])}; routed merges with oracle routes; "
                         "times are wall-clock on this machine")
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


__all__ = ["costs_figure", "costs_plotly"]
