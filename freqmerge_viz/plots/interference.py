"""Interference against performance (paper Fig. 2b): one point per pair of tasks."""

from __future__ import annotations


import numpy as np
import pandas as pd

from .core import add_caption, label_points, new_figure
from .scales import as_percent, binomial_se

X_LABELS = {"amplitude_variance": "amplitude variance of the pair (all bins)",
            "normalized_variance": "amplitude variance / mean amplitude",
            "sti_normalized": "singular task interference (STI / STI of identical tasks)",
            "overlap": "overlap of the top-k singular subspaces (0–1)",
            "alignment": "Iso-C subspace alignment ratio (0–1)"}


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


Y_LABEL = "merged accuracy, % of the fine-tuned model's (mean of the pair)"


def normalized_se(pairs: pd.DataFrame) -> np.ndarray:
    """Standard error of each pair's ``normalized_accuracy`` from its images: the merge's binomial SE
    on each task over that task's fine-tuned accuracy, combined for the mean of two (fine-tuned
    accuracies taken as exact). A fraction; NaN without ``n_images_a/b`` columns."""
    if not {"n_images_a", "n_images_b"} <= set(pairs.columns):
        return np.full(len(pairs), np.nan)
    se_a = binomial_se(pairs["accuracy_a"].to_numpy(float), pairs["n_images_a"].to_numpy(float))
    se_b = binomial_se(pairs["accuracy_b"].to_numpy(float), pairs["n_images_b"].to_numpy(float))
    return 0.5 * np.sqrt((se_a / pairs["individual_a"].to_numpy(float)) ** 2
                         + (se_b / pairs["individual_b"].to_numpy(float)) ** 2)


def interference_scatter(pairs: pd.DataFrame, correlations: pd.DataFrame, title: str = ""):
    """Matplotlib: normalised accuracy (% of fine-tuned) of each pair's merge with ±1 SE bars against
    each interference measure (one panel per row of `correlations`), least-squares line,
    correlations as measured. Pair names label the points where they fit without overlapping."""
    fig, axes = new_figure(1, len(correlations), (5.6 * len(correlations), 4.8))
    y = as_percent(pairs["normalized_accuracy"].to_numpy(float))
    se = as_percent(normalized_se(pairs))
    names = [f"{a[:4]}+{b[:4]}" for a, b in zip(pairs["task_a"], pairs["task_b"])]
    labelled = []
    for ax, (_, row) in zip(axes[0], correlations.iterrows()):
        x = pairs[row["x"]].to_numpy(float)
        ax.errorbar(x, y, yerr=None if np.isnan(se).all() else se, ls="none", marker="o", ms=4, color="tab:blue",
                    ecolor="tab:blue", elinewidth=0.8, alpha=0.85, capsize=1.5)
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 2)
        ax.plot(grid, slope * grid + intercept, color="tab:red", lw=1)
        ax.set_xlabel(X_LABELS.get(row["x"], row["x"]), fontsize=8)
        ax.set_ylabel(Y_LABEL, fontsize=8)
        ax.set_title(_label(row), fontsize=7, loc="left")
        ax.grid(alpha=0.3)
        extreme = np.argsort(-np.abs(y - np.median(y)))
        labelled.append(len(label_points(ax, x, y, names, fontsize=5.5, priority=extreme)))
    notes = []
    if not np.isnan(se).all():
        counts = sorted(set(pairs["n_images_a"]) | set(pairs["n_images_b"]))
        shown = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        notes.append(f"bars ±1 SE (binomial, {shown} {pairs.attrs.get('split', 'test')} images per task)")
    if min(labelled, default=len(pairs)) < len(pairs):
        shown = " and ".join(str(n) for n in labelled)
        notes.append(f"pair names only where they fit without overlapping ({shown} of the {len(pairs)} pairs, "
                     "panel by panel); every pair is in the CSV and the HTML hover")
    add_caption(fig, "; ".join(notes))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def interference_plotly(pairs: pd.DataFrame, correlations: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`interference_scatter` (hover shows the pair and its accuracies in %)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(correlations), subplot_titles=[_label(r).replace("\n", "<br>")
                                                                       for _, r in correlations.iterrows()])
    text = [f"{a} + {b}<br>merged {100 * x:.1f}% / {100 * y:.1f}%" for a, b, x, y in
            zip(pairs["task_a"], pairs["task_b"], pairs["accuracy_a"], pairs["accuracy_b"])]
    se = as_percent(normalized_se(pairs))
    for i, (_, row) in enumerate(correlations.iterrows(), start=1):
        fig.add_trace(go.Scatter(x=pairs[row["x"]], y=as_percent(pairs["normalized_accuracy"].to_numpy(float)),
                                 mode="markers", text=text,
                                 error_y=None if np.isnan(se).all() else {"type": "data", "array": se, "visible": True},
                                 hovertemplate="%{text}<br>x=%{x:.4g}<br>normalised %{y:.1f}% of fine-tuned"
                                               "<extra></extra>",
                                 showlegend=False), row=1, col=i)
        fig.update_xaxes(title_text=X_LABELS.get(row["x"], row["x"]), row=1, col=i)
    fig.update_yaxes(title_text="merged accuracy, % of fine-tuned")
    fig.update_layout(title=title, template="plotly_white", margin={"t": 140}, font={"size": 11})
    return fig


__all__ = ["interference_plotly", "interference_scatter"]
