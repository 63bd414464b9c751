"""The singular view beside the Fourier one: per-layer interference, predictors of merged accuracy
over task pairs, layer-wise profiles of task vectors, and adaptive cutoffs per layer.

Every function draws the tidy table it is given (see :mod:`freqmerge_viz.analysis.singular_views`
and :mod:`freqmerge_viz.analysis.adaptive` for the columns); nothing is computed here but means.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .core import accuracy_summary, add_caption, label_points, new_figure
from .interference import X_LABELS, Y_LABEL, _label, normalized_se
from .scales import as_percent, sample_note

MEASURE_LABELS = {
    "amplitude_variance": "Fourier: across-task variance of |F| (units of |F|²)",
    "normalized_variance": "Fourier: amplitude variance / mean amplitude",
    "sti": "singular: TSV interference STI (weight units)",
    "sti_normalized": "singular: STI / its value for identical tasks",
    "overlap": "singular: top-k subspace overlap (0–1)",
    "alignment": "singular: Iso-C alignment SAR (0–1)",
    "merged_isotropy": "singular: isotropy of the merged spectrum",
    "norm": "task-vector norm (weight units)",
    "cosine": "mean pairwise cosine between tasks",
}
"""Axis labels of the measures (units in brackets)."""
LAYER_PANELS = ("normalized_variance", "sti_normalized", "overlap", "alignment")
"""The panels of :func:`layer_views_figure`: one Fourier measure, three singular ones."""
PROFILE_PANELS = ("norm", "cosine", "normalized_variance", "sti_normalized", "alignment")
"""The panels of :func:`layer_profile_figure`."""


def _layer_axis(ax, layers) -> None:
    ax.set_xticks(sorted(set(int(v) for v in layers)))
    ax.set_xlabel("layer (0 = first)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _stack_suffix(table: pd.DataFrame, stack) -> str:
    return f" ({stack})" if table["layer_stack"].nunique() > 1 else ""


def layer_views_figure(per_layer: pd.DataFrame, title: str = "", panels=LAYER_PANELS):
    """Matplotlib: each of `panels` (a measure's mean over a layer's matrices) against the layer
    index, one line per method ``label`` (and per layer stack when there are several)."""
    fig, axes = new_figure(1, len(panels), (3.4 * len(panels), 3.6))
    for ax, column in zip(axes[0], panels):
        for (label, stack), group in per_layer.groupby(["label", "layer_stack"], sort=False):
            ax.plot(group["layer"], group[column], marker="o", ms=3, lw=1.3,
                    label=f"{label}{_stack_suffix(per_layer, stack)}")
        if column == "overlap" and "chance_overlap" in per_layer.columns:
            chance = float(per_layer["chance_overlap"].mean())
            ax.axhline(chance, color="grey", ls=":", lw=1)
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, chance - 0.05 * (high - low)), high)
        ax.set_title(MEASURE_LABELS.get(column, column), fontsize=8)
        _layer_axis(ax, per_layer["layer"])
    axes[0, 0].legend(fontsize=7, title="per-task step of", title_fontsize=7)
    chance = (f"; dotted: the overlap of random subspaces of the same k (k / min(H, W), "
              f"{float(per_layer['chance_overlap'].mean()):.3f})" if "chance_overlap" in per_layer.columns
              and "overlap" in panels else "")
    add_caption(fig, "each point: mean over the layer's matrices; Fourier panel = the paper's Table 1 measure per "
                     "layer; singular panels: TSV (Gargiulo et al. 2025) and Iso-C (Marczak et al. 2025)" + chance)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def layer_views_plotly(per_layer: pd.DataFrame, title: str = "", panels=LAYER_PANELS):
    """The plotly version of :func:`layer_views_figure`."""
    return _layer_panels_plotly(per_layer, title, panels, ["label", "layer_stack"],
                                lambda key: (f"{key[0]}{_stack_suffix(per_layer, key[1])}", str(key[0])))


def layer_profile_figure(profile: pd.DataFrame, title: str = "", panels=PROFILE_PANELS):
    """Matplotlib: the layer-wise profile of task vectors (one panel per measure of `panels` against
    the layer index; one line per layer stack)."""
    fig, axes = new_figure(1, len(panels), (3.0 * len(panels), 3.4))
    for ax, column in zip(axes[0], panels):
        for stack, group in profile.groupby("layer_stack", sort=False):
            ax.plot(group["layer"], group[column], marker="o", ms=3, lw=1.3, label=str(stack))
        ax.set_title(MEASURE_LABELS.get(column, column), fontsize=8)
        _layer_axis(ax, profile["layer"])
    if profile["layer_stack"].nunique() > 1:
        axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def layer_profile_plotly(profile: pd.DataFrame, title: str = "", panels=PROFILE_PANELS):
    """The plotly version of :func:`layer_profile_figure`."""
    return _layer_panels_plotly(profile, title, panels, "layer_stack", lambda stack: (str(stack), str(stack)))


def _layer_panels_plotly(frame: pd.DataFrame, title: str, panels, by, names):
    """One panel per column of `panels` against ``layer``, one line per group of `by`;
    ``names(group key) -> (trace name, legend group)``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[MEASURE_LABELS.get(c, c) for c in panels])
    for i, column in enumerate(panels, start=1):
        for key, group in frame.groupby(by, sort=False):
            name, legend = names(key)
            fig.add_trace(go.Scatter(x=group["layer"], y=group[column], mode="lines+markers", name=name,
                                     legendgroup=legend, showlegend=i == 1), row=1, col=i)
        fig.update_xaxes(title_text="layer", row=1, col=i)
    fig.update_layout(title=title, template="plotly_white", font={"size": 11})
    return fig


def _interval(ax, y, value, low, high, colour) -> None:
    ax.errorbar([value], [y], xerr=[[max(value - low, 0.0)], [max(high - value, 0.0)]], fmt="o", ms=4,
                color=colour, capsize=3, lw=1.2)


def predictor_figure(comparison: pd.DataFrame, title: str = ""):
    """Matplotlib, two panels over the measures of a
    :func:`~freqmerge_viz.analysis.singular_views.predictor_comparison` table: each measure's
    Spearman ρ with the merged accuracy (bootstrap interval), and ``|ρ| − |ρ_reference|`` (paired
    bootstrap interval; right of 0 = predicts better than the reference)."""
    n = len(comparison)
    fig, axes = new_figure(1, 2, (10.0, 1.2 + 0.55 * n), sharey=True)
    rho, gain = axes[0]
    y = np.arange(n)[::-1]
    for position, (_, row) in zip(y, comparison.iterrows()):
        colour = "tab:blue" if row["x"] in ("amplitude_variance", "normalized_variance") else "tab:orange"
        _interval(rho, position, row["spearman"], row["spearman_low"], row["spearman_high"], colour)
        _interval(gain, position, row["abs_spearman_gain"], row["gain_low"], row["gain_high"], colour)
    rho.set_yticks(y, [MEASURE_LABELS.get(x, x) for x in comparison["x"]], fontsize=7)
    for ax in (rho, gain):
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(axis="x", labelsize=7)
    rho.set_xlabel("Spearman ρ with the merged pairs' normalised score", fontsize=8)
    reference = MEASURE_LABELS.get(comparison.attrs.get("reference", ""), comparison.attrs.get("reference", ""))
    gain.set_xlabel("|ρ| − |ρ| of the reference", fontsize=8)
    level = 100 * float(comparison["level"].iloc[0]) if len(comparison) else 95
    add_caption(fig, f"{level:.0f}% percentile bootstrap intervals over {comparison.attrs.get('pairs', '?')} pairs of "
                     f"{comparison.attrs.get('tasks', '?')} tasks (right panel: same resamples for both measures; "
                     f"reference: {reference}). Pairs sharing a task are not independent, so the intervals are too "
                     "narrow. Blue: Fourier measures; orange: singular ones.")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def predictor_plotly(comparison: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`predictor_figure`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = [MEASURE_LABELS.get(x, x) for x in comparison["x"]]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=["Spearman ρ with the merged pairs' normalised score",
                                        "|ρ| − |ρ| of the reference"])
    for col, (value, low, high) in enumerate((("spearman", "spearman_low", "spearman_high"),
                                              ("abs_spearman_gain", "gain_low", "gain_high")), start=1):
        fig.add_trace(go.Scatter(x=comparison[value], y=labels, mode="markers", showlegend=False,
                                 error_x={"type": "data", "symmetric": False,
                                          "array": (comparison[high] - comparison[value]).clip(lower=0),
                                          "arrayminus": (comparison[value] - comparison[low]).clip(lower=0)}),
                      row=1, col=col)
        fig.add_vline(x=0.0, line_dash="dot", line_color="grey", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", font={"size": 11})
    return fig


def pair_scatter_figure(pairs: pd.DataFrame, correlations: pd.DataFrame, title: str = "", cols: int = 2):
    """Matplotlib: each pair's merged accuracy (% of the fine-tuned models', ±1 SE) against each
    measure of `correlations` (rows of a correlation table, column ``x``), on a grid of `cols`
    columns, least-squares line, correlations in each panel's title. Titles and caption are laid
    out first, then pair names are placed where they fit without overlapping."""
    n = len(correlations)
    rows = int(np.ceil(n / cols))
    fig, axes = new_figure(rows, cols, (5.4 * cols, 4.3 * rows))
    y = as_percent(pairs["normalized_accuracy"].to_numpy(float))
    se = as_percent(normalized_se(pairs))
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (_, row) in zip(axes.flat, correlations.iterrows()):
        x = pairs[row["x"]].to_numpy(float)
        ax.errorbar(x, y, yerr=None if np.isnan(se).all() else se, ls="none", marker="o", ms=4, color="tab:blue",
                    elinewidth=0.8, alpha=0.85, capsize=1.5)
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 2)
        ax.plot(grid, slope * grid + intercept, color="tab:red", lw=1)
        ax.set_xlabel(X_LABELS.get(row["x"], MEASURE_LABELS.get(row["x"], row["x"])), fontsize=8)
        ax.set_ylabel(Y_LABEL, fontsize=7)
        ax.set_title(_label(row), fontsize=7, loc="left")
        ax.grid(alpha=0.3)
    counts = sorted(set(pairs.get("n_images_a", [])) | set(pairs.get("n_images_b", [])))
    shown = "" if not counts else (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}")
    add_caption(fig, (f"bars ±1 SE (binomial, {shown} {pairs.attrs.get('split', 'test')} images per task); " if shown
                      else "") + "pair names only where they fit without overlapping (every pair is in the CSV and "
                                 "the HTML hover); pairs sharing a task are not independent, so the bootstrap "
                                 "intervals are too narrow")
    if title:
        fig.suptitle(title, fontsize=9)
    names = [f"{a[:4]}+{b[:4]}" for a, b in zip(pairs["task_a"], pairs["task_b"])]
    for ax, (_, row) in zip(axes.flat, correlations.iterrows()):
        extreme = np.argsort(-np.abs(y - np.median(y)))
        label_points(ax, pairs[row["x"]].to_numpy(float), y, names, fontsize=5.5, priority=extreme)
    return fig


ROLE_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def cutoff_rules_figure(cutoffs: pd.DataFrame, results: pd.DataFrame, title: str = "",
                        fixed_cutoff: float | None = None):
    """Matplotlib, two panels: the cutoff each adaptive rule gave each matrix against its layer
    (`cutoffs`: columns ``rule, layer, role, cutoff``; one colour per rule, one marker per matrix
    role, the fixed cutoff dashed), and each rule's test accuracy in percent, mean over tasks with
    ±1 SE bars (`results`: rows of :func:`~freqmerge_viz.analysis.adaptive.rule_comparison`),
    labelled with the scaling each chose on validation."""
    fig, axes = new_figure(1, 2, (12.0, 4.4), width_ratios=(1.5, 1.0))
    left, right = axes[0]
    rules = list(dict.fromkeys(cutoffs["rule"]))
    roles = list(dict.fromkeys(cutoffs["role"]))
    colours = {rule: f"C{i + 1}" for i, rule in enumerate(rules)}
    offsets = np.linspace(-0.25, 0.25, max(1, len(roles))) if len(roles) > 1 else [0.0]
    for rule in rules:
        for role, offset, marker in zip(roles, offsets, ROLE_MARKERS * 4):
            group = cutoffs[(cutoffs["rule"] == rule) & (cutoffs["role"] == role)]
            left.plot(group["layer"].astype(float) + offset, group["cutoff"], ls="none", marker=marker, ms=5,
                      color=colours[rule], alpha=0.85)
    handles = [left.plot([], [], ls="none", marker="o", color=colours[r], label=f"rule: {r}")[0] for r in rules]
    handles += [left.plot([], [], ls="none", marker=m, color="grey", label=role)[0]
                for role, m in zip(roles, ROLE_MARKERS * 4)]
    if fixed_cutoff is not None:
        handles.append(left.axhline(fixed_cutoff, color="C0", ls="--", lw=1, label=f"fixed cutoff {fixed_cutoff:g}"))
    left.legend(handles=handles, fontsize=7, ncol=2, loc="best")
    left.set_ylabel("chosen cutoff (normalised radius ρ)", fontsize=8)
    _layer_axis(left, cutoffs["layer"].dropna())
    left.set_title("cutoff per matrix (markers side by side within a layer)", fontsize=8)
    summary = accuracy_summary(results, ["rule", "scaling"])
    x = np.arange(len(summary))
    bar_colours = ["C0" if rule == "fixed" else colours.get(rule, "grey") for rule in summary["rule"]]
    right.bar(x, summary["accuracy_pct"], yerr=summary["se_pct"], color=bar_colours, alpha=0.8, capsize=4)
    right.set_xticks(x, [f"{r}\nscaling {s:g}" for r, s in zip(summary["rule"], summary["scaling"])], fontsize=7)
    low = float((summary["accuracy_pct"] - summary["se_pct"]).min())
    high = float((summary["accuracy_pct"] + summary["se_pct"]).max())
    span = max(10.0, high - low)
    right.set_ylim(max(0.0, 0.5 * (low + high) - span), min(100.0, 0.5 * (low + high) + span / 2 + 2))
    for position, (value, se) in enumerate(zip(summary["accuracy_pct"], summary["se_pct"])):
        right.annotate(f"{value:.1f}", (position, value + (se if np.isfinite(se) else 0)), xytext=(0, 3),
                       textcoords="offset points", ha="center", fontsize=7)
    right.set_ylabel("test accuracy (%), mean over tasks", fontsize=8)
    right.set_title("FR under each rule, scaling chosen on validation", fontsize=8)
    right.grid(alpha=0.3, axis="y")
    counts = results.groupby("task")["n_images"].first() if "n_images" in results.columns else pd.Series([np.nan])
    add_caption(fig, sample_note(int(results["task"].nunique()), counts.to_numpy(), "test"))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def cutoff_rules_plotly(cutoffs: pd.DataFrame, results: pd.DataFrame, title: str = "",
                        fixed_cutoff: float | None = None):
    """The plotly version of :func:`cutoff_rules_figure` (hover names each matrix)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                        subplot_titles=["cutoff per matrix", "test accuracy (%), scaling chosen on validation"])
    for rule, group in cutoffs.groupby("rule", sort=False):
        fig.add_trace(go.Scatter(x=group["layer"], y=group["cutoff"], mode="markers", name=f"rule: {rule}",
                                 text=group["key"], hovertemplate="%{text}<br>cutoff %{y:.3f}<extra></extra>"),
                      row=1, col=1)
    if fixed_cutoff is not None:
        fig.add_hline(y=fixed_cutoff, line_dash="dash", row=1, col=1)
    summary = accuracy_summary(results, ["rule", "scaling"])
    fig.add_trace(go.Bar(x=[f"{r} (scaling {s:g})" for r, s in zip(summary["rule"], summary["scaling"])],
                         y=summary["accuracy_pct"], error_y={"type": "data", "array": summary["se_pct"]},
                         showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_yaxes(title_text="cutoff (normalised radius)", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white", font={"size": 11})
    return fig


def _params_label(params: str) -> str:
    import json

    values = json.loads(params)
    if "layer_scaling" in values:
        alpha, beta = values["layer_scaling"]
        return f"α {alpha:g}, β {beta:g}"
    return ", ".join(f"{k} {v:g}" for k, v in values.items() if isinstance(v, (int, float)))


def lines_figure(table: pd.DataFrame, title: str = ""):
    """Matplotlib bars: test accuracy in percent (mean over tasks, ±1 SE) of each setting of a
    :func:`~freqmerge_viz.analysis.lines.lines_comparison` table, labelled with its chosen parameters."""
    summary = accuracy_summary(table, ["setting", "params"])
    fig, axes = new_figure(1, 1, (6.0, 4.0))
    ax = axes[0, 0]
    x = np.arange(len(summary))
    ax.bar(x, summary["accuracy_pct"], yerr=summary["se_pct"], color=[f"C{i}" for i in x], alpha=0.8, capsize=4)
    ax.set_xticks(x, [f"{s}\n{_params_label(p)}" for s, p in zip(summary["setting"], summary["params"])], fontsize=7)
    for position, (value, se) in enumerate(zip(summary["accuracy_pct"], summary["se_pct"])):
        ax.annotate(f"{value:.1f}", (position, value + (se if np.isfinite(se) else 0)), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=7)
    middle = float(summary["accuracy_pct"].mean())
    ax.set_ylim(max(0.0, middle - 10.0), min(100.0, middle + 6.0))
    ax.set_ylabel("test accuracy (%), mean over tasks", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    counts = table.groupby("task")["n_images"].first()
    add_caption(fig, sample_note(int(table["task"].nunique()), counts.to_numpy(), "test")
                + "; parameters chosen on validation images")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def lines_plotly(table: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`lines_figure`."""
    import plotly.graph_objects as go

    summary = accuracy_summary(table, ["setting", "params"])
    fig = go.Figure(go.Bar(x=[f"{s} ({_params_label(p)})" for s, p in zip(summary["setting"], summary["params"])],
                           y=summary["accuracy_pct"], error_y={"type": "data", "array": summary["se_pct"]}))
    fig.update_layout(title=title, yaxis_title="test accuracy (%)", template="plotly_white", font={"size": 11})
    return fig
