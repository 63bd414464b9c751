"""Cutoff sweep of FR-Merging: accuracy and amplitude variance against the normalised cutoff."""

from __future__ import annotations


import pandas as pd

from .core import accuracy_summary, add_caption, draw_references, new_figure, plotly_references
from .scales import as_percent, binomial_se, sample_note, within_noise


def point_means(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (kind, cutoff): mean accuracy over tasks and the point's interference and scaling."""
    keep = ["scaling", "amplitude_variance", "kept_variance", "normalized_variance", "kept_fraction"]
    grouped = table.groupby(["kind", "cutoff"], sort=False)
    return grouped[keep].first().join(grouped["accuracy"].mean()).reset_index()


def point_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (kind, cutoff): :func:`~freqmerge_viz.plots.core.accuracy_summary` (mean accuracy
    over tasks and its ±1 SE, percent) joined to the point's scaling and interference."""
    keep = ["scaling", "amplitude_variance", "kept_variance", "normalized_variance", "kept_fraction"]
    first = table.groupby(["kind", "cutoff"], sort=False)[keep].first().reset_index()
    return first.merge(accuracy_summary(table, ["kind", "cutoff"]), on=["kind", "cutoff"])


def scaling_note(table: pd.DataFrame) -> str:
    """How the sweep's scaling was set: one value held at every point, or (confounded) re-chosen."""
    scalings = sorted(table["scaling"].unique())
    if len(scalings) == 1:
        return f"FR scaling {scalings[0]:g} at every point"
    return (f"FR scaling re-chosen per point ({', '.join(f'{v:g}' for v in scalings)}): cutoff and scaling "
            "are confounded")


def noise_note(summary: pd.DataFrame) -> str:
    """Per kind, whether its whole curve lies within ±1 SE (:func:`~freqmerge_viz.plots.scales.within_noise`)."""
    flat, resolved = [], []
    for kind, group in summary.groupby("kind", sort=False):
        (flat if within_noise(group["accuracy_pct"], group["se_pct"]) else resolved).append(str(kind))
    parts = []
    if flat:
        parts.append(f"{', '.join(flat)}: every point within ±1 SE of every other (flat within noise)")
    if resolved:
        parts.append(f"{', '.join(resolved)}: some points differ by more than ±1 SE")
    return "; ".join(parts)


MIN_SPAN = 10.0
"""Smallest accuracy range (percentage points) the sweep's axis shows when no reference lines set it."""


def sweep_figure(table: pd.DataFrame, title: str = "", references: pd.DataFrame | None = None,
                 scaling_rule: str = ""):
    """Matplotlib, two panels against the cutoff: mean accuracy over tasks in percent with ±1 SE
    bars (binomial, from ``n_images``), beside the `references` (:func:`~freqmerge_viz.analysis.sweeps.sweep_references`:
    no merge, task arithmetic at the same scaling, fine-tuned; lines with ±1 SE bands), and the
    amplitude variance over all and over kept bins. The title says how the scaling was set
    (:func:`scaling_note`, then `scaling_rule`, e.g. how it was chosen);
    a caption says what the bars rest on and whether each curve is flat within ±1 SE. Without
    references the accuracy axis spans at least :data:`MIN_SPAN` points, so noise is not magnified."""
    summary = point_summary(table)
    fig, axes = new_figure(1, 2, (12.0, 4.6))
    accuracy, variance = axes[0]
    draw_references(accuracy, references, {"task_arithmetic": "task arithmetic, same scaling (= cutoff 0)"})
    for kind, group in summary.groupby("kind", sort=False):
        bars = accuracy.errorbar(group["cutoff"], group["accuracy_pct"], yerr=group["se_pct"], marker="o", ms=3,
                                 lw=1.4, capsize=2, label=f"FR, {kind}")
        colour = bars.lines[0].get_color()
        variance.plot(group["cutoff"], group["amplitude_variance"], color=colour, marker="o", ms=3,
                      label=f"{kind}, all bins")
        variance.plot(group["cutoff"], group["kept_variance"], color=colour, ls="--", lw=1, label=f"{kind}, kept bins")
    if references is None or references.empty:
        low, high = accuracy.get_ylim()
        if high - low < MIN_SPAN:
            middle = 0.5 * (low + high)
            accuracy.set_ylim(middle - MIN_SPAN / 2, middle + MIN_SPAN / 2)
    accuracy.set_ylabel("accuracy (%), mean over tasks")
    variance.set_ylabel("across-task amplitude variance")
    for ax in axes[0]:
        ax.set_xlabel("cutoff (normalised radius ρ; 0 = no filter)")
        ax.grid(alpha=0.3)
    accuracy.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(0.0, 0.62), framealpha=0.9)
    variance.legend(fontsize=6.5)
    counts = table.groupby("task")["n_images"].first() if "n_images" in table.columns else None
    if counts is not None:
        add_caption(fig, f"{sample_note(len(counts), counts.to_numpy(), bars='bars and bands')}, the same images "
                         f"at every point. {noise_note(summary)}.")
    setting = scaling_note(table) + (f" ({scaling_rule})" if scaling_rule else "")
    fig.suptitle(f"{title}\n{setting}" if title else setting, fontsize=9)
    return fig


def sweep_plotly(table: pd.DataFrame, title: str = "", references: pd.DataFrame | None = None,
                 scaling_rule: str = ""):
    """Plotly: mean accuracy (%) against cutoff per kind with ±1 SE bars and the references (left)
    and, for the cutoff a slider selects, each task's accuracy per kind with its ±1 SE (right)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    import plotly.colors

    summary = point_summary(table)
    cutoffs = sorted(table["cutoff"].unique())
    kinds = list(dict.fromkeys(table["kind"]))
    palette = plotly.colors.qualitative.Plotly
    colour = {kind: palette[i % len(palette)] for i, kind in enumerate(kinds)}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean accuracy against cutoff", "per task at the chosen cutoff"))
    for kind, group in summary.groupby("kind", sort=False):
        fig.add_trace(go.Scatter(x=group["cutoff"], y=group["accuracy_pct"], mode="lines+markers", name=f"FR, {kind}",
                                 line={"color": colour[kind]}, legendgroup=kind,
                                 error_y={"type": "data", "array": group["se_pct"], "visible": True},
                                 customdata=group[["scaling", "amplitude_variance", "se_pct"]],
                                 hovertemplate="ρ=%{x:g}: %{y:.1f}% ± %{customdata[2]:.1f}<br>scaling %{customdata[0]:g}, "
                                               "amp. var %{customdata[1]:.4g}<extra>" + kind + "</extra>"),
                      row=1, col=1)
    plotly_references(fig, references, {"task_arithmetic": "task arithmetic, same scaling"}, row=1, col=1)
    lines = len(fig.data)
    for cutoff in cutoffs:
        for kind in kinds:
            point = table[(table["cutoff"] == cutoff) & (table["kind"] == kind)]
            se = (as_percent(binomial_se(point["accuracy"].to_numpy(), point["n_images"].to_numpy()))
                  if "n_images" in point.columns else None)
            fig.add_trace(go.Bar(x=point["task"], y=as_percent(point["accuracy"].to_numpy()), name=f"{kind} @ {cutoff:g}",
                                 legendgroup=kind, showlegend=False, visible=cutoff == cutoffs[0],
                                 marker={"color": colour[kind]},
                                 error_y=None if se is None else {"type": "data", "array": se, "visible": True},
                                 hovertemplate="%{x}: %{y:.1f}%<extra>" + f"{kind} @ {cutoff:g}" + "</extra>"),
                          row=1, col=2)
    steps = []
    for i, cutoff in enumerate(cutoffs):
        visible = [True] * lines + [j // len(kinds) == i for j in range(len(cutoffs) * len(kinds))]
        steps.append({"method": "update", "label": f"{cutoff:g}", "args": [{"visible": visible}]})
    counts = table.groupby("task")["n_images"].first() if "n_images" in table.columns else None
    note = (scaling_note(table) + (f" ({scaling_rule})" if scaling_rule else "")
            + ("<br>" + sample_note(len(counts), counts.to_numpy()) if counts is not None else ""))
    fig.update_layout(title={"text": f"{title}<br><sup>{note}</sup>", "y": 0.97, "yanchor": "top"},
                      template="plotly_white", barmode="group", margin={"t": 150}, height=560,
                      sliders=[{"steps": steps, "currentvalue": {"prefix": "cutoff ρ = "}, "pad": {"t": 40}}])
    fig.update_xaxes(title_text="cutoff (normalised radius)", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100], row=1, col=2)
    return fig


__all__ = ["point_means", "point_summary", "sweep_figure", "sweep_plotly"]
