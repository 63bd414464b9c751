"""Expert sparsity curves (paper Fig. 5b): expert-only accuracy against stored share of the model."""

from __future__ import annotations


import pandas as pd

from .core import accuracy_summary, add_caption, draw_references, new_figure, plotly_references
from .scales import sample_note

LABELS = {"topk": "top-k (μ = 1)", "topk_rescaled": "top-k + Eq. 4 rescale", "bernoulli": "Bernoulli (not ÷d)",
          "bernoulli_rescaled": "Bernoulli ÷ d (DARE)", "svd": "SVD (rank matched to storage)"}


def mean_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over tasks per kind and density: ``kind, density, stored_fraction, accuracy, individual``."""
    curves = table[table["kind"] != "pretrained"]
    return (curves.groupby(["kind", "density"], sort=False)[["stored_fraction", "accuracy", "individual"]]
            .mean().reset_index())


ARTEFACTS = {"topk_rescaled": 1.0}
"""Kind -> density whose point is fixed by construction, not measured: Eq. 4's μ is proportional to
ln d, so at d = 1 the rescaled top-k expert is multiplied by 0 and the point is θ_pre."""
ARTEFACT_NOTE = ("Hollow marker: top-k + Eq. 4 at d = 1 has μ ∝ −ln 1 = 0, so the expert adds nothing and the "
                 "point is θ_pre by construction; not joined to its curve")


def artefacts(frame: pd.DataFrame):
    """Boolean mask of the rows of `frame` (columns ``kind, density``) that are :data:`ARTEFACTS`."""
    return frame.apply(lambda r: r["kind"] in ARTEFACTS and r["density"] >= ARTEFACTS[r["kind"]], axis=1).astype(bool)


def curve_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind and density: mean stored share and :func:`~freqmerge_viz.plots.core.accuracy_summary`
    (mean accuracy over tasks and ±1 SE, percent); ``artefact`` marks the :data:`ARTEFACTS`."""
    curves = table[table["kind"] != "pretrained"]
    stored = curves.groupby(["kind", "density"], sort=False)["stored_fraction"].mean().reset_index()
    out = stored.merge(accuracy_summary(curves, ["kind", "density"]), on=["kind", "density"])
    out["artefact"] = artefacts(out) if len(out) else []
    return out


def references_of(table: pd.DataFrame) -> pd.DataFrame:
    """The curves' references in :func:`~freqmerge_viz.analysis.evaluation.reference_accuracies`
    form, from the table itself: the bare backbone (``pretrained`` rows) and the fine-tuned models
    (``individual``), on the same images."""
    per_task = table.groupby("task", sort=False).first().reset_index()
    n = per_task["n_images"] if "n_images" in per_task.columns else float("nan")
    pre = table[table["kind"] == "pretrained"]
    frames = [pd.DataFrame({"reference": "pretrained", "task": pre["task"], "accuracy": pre["accuracy"],
                            "n_images": pre["n_images"] if "n_images" in pre.columns else float("nan")}),
              pd.DataFrame({"reference": "finetuned", "task": per_task["task"], "accuracy": per_task["individual"],
                            "n_images": n})]
    return pd.concat(frames, ignore_index=True)


REFERENCE_LABELS = {"pretrained": "no expert (θ_pre + heads)", "finetuned": "fine-tuned (individual)"}


def experts_figure(table: pd.DataFrame, title: str = ""):
    """Matplotlib: mean expert-only accuracy (%) against stored share (log x), one line per kind with
    ±1 SE bars, the fine-tuned models and the bare pretrained backbone as reference lines with ±1 SE
    bands. Points fixed by construction (:data:`ARTEFACTS`) are hollow and not joined."""
    summary = curve_summary(table)
    fig, axes = new_figure(1, 1, (10.0, 5.0))
    ax = axes[0, 0]
    draw_references(ax, references_of(table), REFERENCE_LABELS)
    for kind, group in summary.groupby("kind", sort=False):
        measured, fixed = group[~group["artefact"]], group[group["artefact"]]
        bars = ax.errorbar(measured["stored_fraction"], measured["accuracy_pct"], yerr=measured["se_pct"], marker="o",
                           ms=3, lw=1.3, capsize=2, label=LABELS.get(kind, kind))
        if len(fixed):
            colour = bars.lines[0].get_color()
            ax.errorbar(fixed["stored_fraction"], fixed["accuracy_pct"], yerr=fixed["se_pct"], ls="none", marker="o",
                        ms=7, mfc="white", mec=colour, mew=1.5, color=colour, capsize=2,
                        label=f"{LABELS.get(kind, kind)} at d = 1: θ_pre by construction")
    ax.set_xscale("log")
    ax.set_xlabel("numbers stored per expert / parameters of one backbone")
    ax.set_ylabel("expert-only accuracy (%), mean over tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    notes = []
    if "n_images" in table.columns:
        counts = table.groupby("task")["n_images"].first()
        notes.append(sample_note(len(counts), counts.to_numpy(), bars="bars and bands"))
    if summary["artefact"].any():
        notes.append(ARTEFACT_NOTE)
    add_caption(fig, ". ".join(notes))
    ax.set_title(title, fontsize=9)
    return fig


def experts_plotly(table: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`experts_figure` (hover: density asked for, accuracy ± SE)."""
    import plotly.colors
    import plotly.graph_objects as go

    summary = curve_summary(table)
    palette = plotly.colors.qualitative.Plotly
    fig = go.Figure()
    for i, (kind, group) in enumerate(summary.groupby("kind", sort=False)):
        colour = palette[i % len(palette)]
        for fixed, part in ((False, group[~group["artefact"]]), (True, group[group["artefact"]])):
            if part.empty:
                continue
            fig.add_trace(go.Scatter(
                x=part["stored_fraction"], y=part["accuracy_pct"], mode="markers" if fixed else "lines+markers",
                name=f"{LABELS.get(kind, kind)} at d = 1 (θ_pre by construction)" if fixed else LABELS.get(kind, kind),
                line={"color": colour}, marker={"color": colour, "symbol": "circle-open" if fixed else "circle",
                                                "size": 10 if fixed else 6},
                error_y={"type": "data", "array": part["se_pct"], "visible": True},
                customdata=part[["density", "se_pct"]],
                hovertemplate="d=%{customdata[0]:g}, stored %{x:.3%}<br>%{y:.1f}% ± %{customdata[1]:.1f}"
                              + ("<br>μ = 0 at d = 1: θ_pre by construction" if fixed else "") + "<extra></extra>"))
    plotly_references(fig, references_of(table), REFERENCE_LABELS)
    note = []
    if "n_images" in table.columns:
        counts = table.groupby("task")["n_images"].first()
        note.append(sample_note(len(counts), counts.to_numpy()))
    if summary["artefact"].any():
        note.append(ARTEFACT_NOTE)
    fig.update_layout(title={"text": title + "".join(f"<br><sup>{n}</sup>" for n in note)}, template="plotly_white",
                      xaxis_type="log", margin={"t": 120}, xaxis_title="stored share of one backbone",
                      yaxis_title="expert-only accuracy (%), mean over tasks")
    return fig


__all__ = ["ARTEFACTS", "LABELS", "artefacts", "curve_summary", "experts_figure", "experts_plotly", "mean_curves",
           "references_of"]
