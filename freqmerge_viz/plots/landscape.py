"""Loss-landscape figures (Fig. 4): contours on the plane of two task vectors, merged points,
interpolation curves. Inputs are the tidy tables of :mod:`freqmerge_viz.analysis.landscape`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ParameterError, check_choice

METRICS = ("loss", "accuracy")
REFERENCE_STYLE = {"pretrained": ("o", "black", "θ_pre"), "finetuned_a": ("*", "white", "A"),
                   "finetuned_b": ("*", "gold", "B")}
MERGE_MARKERS = ("D", "s", "^", "v", "P", "X", "h", "<", ">")


def _panels(tables) -> dict[str, pd.DataFrame]:
    if tables is None:
        return {}
    if isinstance(tables, pd.DataFrame):
        return {tables.attrs.get("filtered") or "unfiltered": tables}
    return dict(tables)


def grid_matrix(grid: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(alphas [A], betas [B], values [B, A])`` of a tidy grid table."""
    check_choice("metric", metric, METRICS)
    missing = [c for c in ("alpha", "beta", metric) if c not in grid.columns]
    if missing:
        raise ParameterError(f"grid table lacks column(s) {missing}")
    table = grid.pivot_table(index="beta", columns="alpha", values=metric, aggfunc="mean")
    return table.columns.to_numpy(float), table.index.to_numpy(float), table.to_numpy(float)


def _references(grid: pd.DataFrame, points: pd.DataFrame | None) -> pd.DataFrame:
    if points is not None:
        return points
    b_alpha = grid.attrs.get("b_alpha")
    rows = [("pretrained", 0.0, 0.0), ("finetuned_a", 1.0, 0.0)]
    if b_alpha is not None:
        rows.append(("finetuned_b", float(b_alpha), 1.0))
    return pd.DataFrame(rows, columns=["method", "alpha", "beta"]).assign(off_plane_distance=0.0)


def _point_label(row, grid: pd.DataFrame) -> str:
    names = {"finetuned_a": grid.attrs.get("task_a"), "finetuned_b": grid.attrs.get("task_b")}
    if row.method in REFERENCE_STYLE:
        base = REFERENCE_STYLE[row.method][2]
        return f"{base} ({names[row.method]})" if names.get(row.method) else base
    return f"{row.method} (L2 distance {row.off_plane_distance:.2g} from the plane)"


SHOWN = {"loss": "loss (log scale)", "accuracy": "accuracy (%)"}
"""Colour-bar label of each metric as drawn (accuracy in percent)."""


def shown_values(values, metric: str) -> np.ndarray:
    """`values` of `metric` as drawn: accuracy (a fraction) in percent, loss unchanged."""
    values = np.asarray(values, dtype=float)
    return values * 100.0 if metric == "accuracy" else values


def _levels(panels: dict[str, pd.DataFrame], metric: str) -> tuple[np.ndarray, bool]:
    """Contour levels: accuracy every 5 points from 0 to 100 %; loss 13 levels evenly spaced in log
    between the smallest and the largest loss on the grids (a linear scale would paint the whole
    basin, which spans decades of small losses, one colour)."""
    values = np.concatenate([g[metric].to_numpy(float) for g in panels.values()])
    values = values[np.isfinite(values)]
    if metric == "accuracy":
        return np.linspace(0.0, 100.0, 21), False
    low, high = max(float(values.min()), 1e-4), max(float(values.max()), 2e-4)
    if high <= low * 1.0001:
        high = low * 2
    return np.geomspace(low, high, 13), True


def landscape_figure(grids, points=None, *, metric: str | tuple[str, ...] = "loss", title: str = ""):
    """Matplotlib contours over each plane: one column per grid, one row per metric.

    `grids`: one tidy grid (``alpha, beta, loss, accuracy``) or ``{panel title: grid}``;
    `points`: the matching :func:`~freqmerge_viz.analysis.landscape.project_points` tables
    (same keys, or one table for all) or ``None`` to mark θ_pre, A and B from the grids'
    attrs. `metric`: ``"loss"``, ``"accuracy"`` or both as a tuple. Loss has logarithmic
    levels, accuracy is in percent; each row shares its colours across panels. One legend for
    the marked points, under the panels (inside a panel it would cover the contours).
    """
    import matplotlib.pyplot as plt

    panels = _panels(grids)
    if not panels:
        raise ParameterError("no grid to draw")
    marks = _marks(panels, points)
    metrics = (metric,) if isinstance(metric, str) else tuple(metric)
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(4.6 * len(panels) + 1.2, 4.0 * len(metrics)),
                             squeeze=False, constrained_layout=True)
    for row, name in enumerate(metrics):
        image = None
        levels, logarithmic = _levels(panels, name)
        for ax, (panel, grid) in zip(axes[row], panels.items()):
            image = _contour(ax, grid, name, levels, logarithmic) or image
            _mark(ax, grid, marks.get(panel))
            norm_a, norm_b = grid.attrs.get("norm_a"), grid.attrs.get("norm_b_perp")
            ax.set_xlabel("α  (units of ‖τ_A‖" + (f" = {norm_a:.3g})" if norm_a else ")"), fontsize=8)
            ax.set_ylabel("β  (units of ‖τ_B⊥‖" + (f" = {norm_b:.3g})" if norm_b else ")"), fontsize=8)
            ax.set_title(f"{panel}: {SHOWN[name]}", fontsize=9)
            ax.tick_params(labelsize=7)
        if image is not None:
            bar = fig.colorbar(image, ax=list(axes[row]), shrink=0.9, ticks=levels[::2], format="%.3g",
                               label=SHOWN[name])
            bar.ax.minorticks_off()
            bar.ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 3), fontsize=7,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _marks(panels: dict[str, pd.DataFrame], points) -> dict[str, pd.DataFrame]:
    if points is None:
        return {}
    if isinstance(points, pd.DataFrame):
        return dict.fromkeys(panels, points)
    return dict(points)


def _contour(ax, grid: pd.DataFrame, metric: str, levels: np.ndarray, logarithmic: bool):
    from matplotlib.colors import LogNorm

    alphas, betas, values = grid_matrix(grid, metric)
    if len(alphas) < 2 or len(betas) < 2:
        return None
    shown = np.clip(shown_values(values, metric), levels[0], levels[-1])
    norm = LogNorm(levels[0], levels[-1]) if logarithmic else None
    image = ax.contourf(alphas, betas, shown, levels=levels, cmap="viridis" if logarithmic else "magma", norm=norm)
    image.set_rasterized(True)
    ax.contour(alphas, betas, shown, levels=levels[::2], colors="k", linewidths=0.3, alpha=0.5, norm=norm)
    return image


def _mark(ax, grid: pd.DataFrame, points: pd.DataFrame | None) -> None:
    merge_index = 0
    for row in _references(grid, points).itertuples():
        if row.method in REFERENCE_STYLE:
            marker, colour, _ = REFERENCE_STYLE[row.method]
            size = 70 if marker == "o" else 160
        else:
            marker, colour, size = MERGE_MARKERS[merge_index % len(MERGE_MARKERS)], f"C{merge_index + 1}", 55
            merge_index += 1
        ax.scatter([row.alpha], [row.beta], marker=marker, s=size, c=colour, edgecolors="k", linewidths=0.8,
                   label=_point_label(row, grid), zorder=3)


def landscape_plotly(grids, points=None, *, metric: str = "loss", title: str = ""):
    """The plotly version of :func:`landscape_figure` (loss drawn as log10)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = _panels(grids)
    if not panels:
        raise ParameterError("no grid to draw")
    marks = _marks(panels, points)
    logarithmic = metric == "loss"
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), horizontal_spacing=0.08)
    for col, (name, grid) in enumerate(panels.items(), start=1):
        alphas, betas, values = grid_matrix(grid, metric)
        z = np.log10(np.clip(values, 1e-6, None)) if logarithmic else shown_values(values, metric)
        shown = "log10 loss" if logarithmic else SHOWN[metric]
        fig.add_trace(go.Contour(x=alphas, y=betas, z=z, coloraxis="coloraxis", name=name,
                                 contours={"coloring": "heatmap"}, line={"width": 0.5},
                                 hovertemplate=f"α %{{x:.3f}}<br>β %{{y:.3f}}<br>{shown} %{{z:.4f}}<extra></extra>"),
                      row=1, col=col)
        table = _references(grid, marks.get(name))
        hover = [f"{_point_label(r, grid)}<br>α {r.alpha:.3f}, β {r.beta:.3f}"
                 + (f"<br>loss {r.loss:.4f}, accuracy {100 * r.accuracy:.1f}%" if hasattr(r, "loss") else "")
                 for r in table.itertuples()]
        fig.add_trace(go.Scatter(x=table["alpha"], y=table["beta"], mode="markers+text",
                                 text=[_point_label(r, grid).split(" (")[0] for r in table.itertuples()],
                                 textposition=_text_positions(table), hovertext=hover, hoverinfo="text",
                                 textfont={"color": "black", "shadow": "0px 0px 3px white"},
                                 marker={"size": 10, "color": "white", "line": {"width": 1.5, "color": "black"}},
                                 showlegend=False), row=1, col=col)
        fig.update_xaxes(title_text="α (units of ‖τ_A‖)", row=1, col=col)
        fig.update_yaxes(title_text="β (units of ‖τ_B⊥‖)", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white",
                      coloraxis={"colorscale": "Viridis" if logarithmic else "Magma",
                                 "colorbar": {"title": "log10 loss" if logarithmic else SHOWN[metric]}})
    return fig


MERGE_TEXT_POSITIONS = ("bottom right", "top left", "top right", "bottom left", "middle right", "middle left")


def _text_positions(points: pd.DataFrame) -> list[str]:
    """Where each point's name goes in the plotly landscape: above θ_pre, A and B; merged points
    (often close together) take turns around their markers so neighbouring names do not collide."""
    positions, merged = [], 0
    for method in points["method"]:
        if method in REFERENCE_STYLE:
            positions.append("top center")
        else:
            positions.append(MERGE_TEXT_POSITIONS[merged % len(MERGE_TEXT_POSITIONS)])
            merged += 1
    return positions


PATH_STYLES = {"pretrained→A": "C0", "pretrained→B": "C1", "A→B": "C2"}


def interpolation_figure(curves: pd.DataFrame, title: str = "", n_images: int | None = None):
    """Matplotlib loss (log scale) and accuracy (%) along the interpolation paths (columns ``path, t,
    loss, accuracy``, optional ``setting``: one line style per setting). With `n_images` (the
    images each point is scored on) accuracy gets ±1 SE bands (binomial) and a caption says so."""
    import matplotlib.pyplot as plt

    from .core import add_caption
    from .scales import binomial_se, sample_note

    missing = [c for c in ("path", "t", "loss", "accuracy") if c not in curves.columns]
    if missing:
        raise ParameterError(f"curve table lacks column(s) {missing}")
    settings = list(dict.fromkeys(curves["setting"])) if "setting" in curves.columns else [None]
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), constrained_layout=True)
    for s_index, setting in enumerate(settings):
        part = curves if setting is None else curves[curves["setting"] == setting]
        for p_index, (path, group) in enumerate(part.groupby("path", sort=False)):
            colour = PATH_STYLES.get(path, f"C{p_index + 3}")
            label = path if setting is None else f"{path}, {setting}"
            for ax, metric in zip(axes, METRICS):
                ax.plot(group["t"], shown_values(group[metric], metric), ls=styles[s_index % len(styles)],
                        color=colour, lw=1.4, marker="o", ms=2.5, label=label)
            if n_images:
                accuracy = group["accuracy"].to_numpy(float)
                se = binomial_se(accuracy, n_images)
                axes[1].fill_between(group["t"], 100 * (accuracy - se), 100 * (accuracy + se), color=colour,
                                     alpha=0.12, lw=0)
    axes[0].set_yscale("log")
    for ax, metric in zip(axes, METRICS):
        ax.set_xlabel("t (0 = start of the path, 1 = its end)", fontsize=8)
        ax.set_ylabel(SHOWN[metric], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if n_images:
        add_caption(fig, sample_note(1, n_images, bars="bands"))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def interpolation_plotly(curves: pd.DataFrame, title: str = ""):
    """The plotly version of :func:`interpolation_figure`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    settings = list(dict.fromkeys(curves["setting"])) if "setting" in curves.columns else [None]
    dashes = ["solid", "dash", "dot", "dashdot"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[SHOWN[m] for m in METRICS])
    for s_index, setting in enumerate(settings):
        part = curves if setting is None else curves[curves["setting"] == setting]
        for path, group in part.groupby("path", sort=False):
            name = path if setting is None else f"{path}, {setting}"
            for col, metric in enumerate(METRICS, start=1):
                fig.add_trace(go.Scatter(x=group["t"], y=shown_values(group[metric], metric), mode="lines+markers", name=name,
                                         legendgroup=name, showlegend=col == 1,
                                         line={"dash": dashes[s_index % len(dashes)]}), row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="t")
    fig.update_layout(title=title, template="plotly_white")
    return fig
