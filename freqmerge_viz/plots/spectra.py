"""Spectra of task vectors (paper Fig. 2a): one matrix's centred log amplitude per task, and
each task's radial amplitude profile for every layer and matrix."""

from __future__ import annotations


import numpy as np
import pandas as pd

from .core import new_figure
from .scales import ZERO_COLOR, spectrum_image


def panel_rows(keys_by_layer: dict[str, list[str]]) -> list[list[str]]:
    """Rows of panels: one row per numbered block (its matrices in order), then the other keys
    packed into rows of the same width."""
    blocks = {layer: keys for layer, keys in keys_by_layer.items() if layer.split(".")[-1].isdigit()}
    width = max((len(keys) for keys in blocks.values()), default=4)
    others = [k for layer, keys in keys_by_layer.items() if layer not in blocks for k in keys]
    return list(blocks.values()) + [others[i:i + width] for i in range(0, len(others), width)]


def radial_profiles_grid(profiles: pd.DataFrame, cutoff: float | None = None, title: str = ""):
    """Matplotlib small multiples: one panel per matrix (a row per block, then the other matrices),
    one line per task.

    `profiles` columns: ``layer, key, task, radius`` (normalised), ``amplitude``.
    """
    keys_by_layer: dict[str, list[str]] = {}
    for layer, key in dict.fromkeys(zip(profiles["layer"], profiles["key"])):
        keys_by_layer.setdefault(layer, []).append(key)
    rows = panel_rows(keys_by_layer)
    cols = max(len(r) for r in rows)
    fig, axes = new_figure(len(rows), cols, (2.5 * cols + 1.6, 1.9 * len(rows) + 0.8), layout=None, sharex=True)
    fig.subplots_adjust(left=0.07, right=0.86, bottom=0.07, top=0.92, wspace=0.35, hspace=0.5)
    for r, keys in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(keys):
                ax.axis("off")
                continue
            for task, group in profiles[profiles["key"] == keys[c]].groupby("task", sort=False):
                ax.plot(group["radius"], group["amplitude"], lw=1.0, label=task)
            if cutoff is not None:
                ax.axvline(cutoff, color="grey", ls="--", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(keys[c], fontsize=7)
            ax.tick_params(which="both", labelsize=6)
            ax.xaxis.set_tick_params(labelbottom=True)
            if c == 0:
                ax.set_ylabel("mean |F(v)|", fontsize=7)
    axes[-1, 0].set_xlabel("normalised radius ρ (0 = DC, 1 = corner)", fontsize=7)
    handles, labels = next((ax.get_legend_handles_labels() for ax in axes.flat if ax.lines), ([], []))
    fig.legend(handles, labels, loc="center right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


PERCENTILES = (1.0, 99.5)
"""Percentiles of the non-zero bins' log amplitudes that bound the spectra's colour scale (as
:func:`~freqmerge_viz.plots.scales.spectrum_image`)."""


def colour_limits(log_amplitudes, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """Shared colour range of log-amplitude spectra: the given percentiles of the values, leaving out
    bins at numerical zero (:func:`~freqmerge_viz.plots.scales.spectrum_image`; e.g. the η = 0 row of
    a matrix whose columns sum to zero), which would otherwise flatten the rest of the scale."""
    picture = spectrum_image(np.exp(np.asarray(log_amplitudes, dtype=np.float64)), *percentiles)
    return picture.vmin, picture.vmax


def spectra_plotly(table: pd.DataFrame, key: str, title: str = ""):
    """Plotly heatmaps of one matrix's centred log amplitude, one panel per task, on one colour scale
    (:func:`~freqmerge_viz.plots.scales.spectrum_image`: 1st–99.5th percentile of the non-zero bins).
    Bins at numerical zero are left empty, so the plot background
    (:data:`~freqmerge_viz.plots.scales.ZERO_COLOR`) shows through; their hover text says so and a
    caption under the panels says where they are.

    `table` columns: ``key, task, eta, gamma, log_amplitude`` (from :func:`spectra_table`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = table[table["key"] == key]
    tasks = list(dict.fromkeys(data["task"]))
    grids = [data[data["task"] == task].pivot(index="eta", columns="gamma", values="log_amplitude") for task in tasks]
    picture = spectrum_image(np.exp(np.stack([g.to_numpy(np.float64) for g in grids])))
    etas, gammas = grids[0].index.to_numpy(), grids[0].columns.to_numpy()
    cols = min(4, len(tasks))
    rows = int(np.ceil(len(tasks) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=tasks, horizontal_spacing=0.03, vertical_spacing=0.08)
    for i, task in enumerate(tasks):
        values = picture.values[i]
        text = np.where(np.isnan(values), "|F| = 0 to float precision (grey, outside the colour scale)",
                        np.char.add("ln|F| = ", np.char.mod("%.2f", np.nan_to_num(values))))
        fig.add_trace(go.Heatmap(z=values, x=gammas, y=etas, zmin=picture.vmin, zmax=picture.vmax, text=text,
                                 colorscale="Magma", showscale=i == 0, colorbar={"title": "ln|F(v)|"},
                                 hoverongaps=True,
                                 hovertemplate="γ=%{x} η=%{y}<br>%{text}<extra>" + task + "</extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False)
    fig.update_xaxes(showgrid=False, zeroline=False)
    caption = "; ".join(part for part in (picture.caption(center=(len(etas) // 2, len(gammas) // 2)),
                                          f"colours: ln|F| from {picture.vmin:.2f} to {picture.vmax:.2f} "
                                          "(1st–99.5th percentile of the non-zero bins)") if part)
    fig.add_annotation(text=caption, xref="paper", yref="paper", x=0.0, y=-0.06, xanchor="left", yanchor="top",
                       showarrow=False, font={"size": 11})
    fig.update_layout(title=title, template="plotly_white", height=300 * rows + 130, plot_bgcolor=ZERO_COLOR,
                      margin={"b": 90})
    return fig


def radial_profiles_dropdown(profiles: pd.DataFrame, cutoff: float | None = None, title: str = ""):
    """Plotly radial profiles, one line per task, with a menu to pick the layer and matrix."""
    import plotly.graph_objects as go

    keys = list(dict.fromkeys(profiles["key"]))
    fig = go.Figure()
    owner = []
    for key in keys:
        for task, group in profiles[profiles["key"] == key].groupby("task", sort=False):
            fig.add_trace(go.Scatter(x=group["radius"], y=group["amplitude"], mode="lines", name=str(task),
                                     visible=key == keys[0], legendgroup=str(task)))
            owner.append(key)
    buttons = [{"label": key, "method": "update",
                "args": [{"visible": [o == key for o in owner]}, {"title": f"{title} — {key}"}]} for key in keys]
    if cutoff is not None:
        fig.add_vline(x=cutoff, line_dash="dash", line_color="grey")
    fig.update_layout(title=f"{title} — {keys[0]}", template="plotly_white", yaxis_type="log",
                      xaxis_title="normalised radius ρ (0 = DC, 1 = corner)", yaxis_title="mean |F(v)| in shell",
                      updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.15, "xanchor": "right"}])
    return fig


__all__ = ["PERCENTILES", "colour_limits", "panel_rows", "radial_profiles_dropdown", "radial_profiles_grid", "spectra_plotly"]
