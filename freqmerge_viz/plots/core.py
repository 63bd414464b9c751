"""Figures: matplotlib for static export, plotly for interactive HTML.

Every figure function takes plain arrays or tidy tables and returns a figure; the
``save_*`` helpers write files atomically (temporary name, then rename). The topic modules'
``write_figures`` (:mod:`freqmerge_viz.topics`) write each figure with :func:`write_all` (CSV +
static + HTML). Nothing here computes an analysis: every function draws what it is given.
"""

from __future__ import annotations

import functools
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import check_choice
from ..io import write_atomically

STATIC_FORMATS = ("png", "svg", "pdf")
HTML_JS = ("shared", "inline", "cdn")
"""How an HTML figure gets plotly.js: ``shared`` (the default) writes one :data:`PLOTLY_JS` into the
output folder and each page loads it by a relative path (pages of a few kB to a few hundred kB;
the folder works offline when opened or copied as a whole); ``inline`` puts plotly.js into every
page (about 4.8 MB each, every file self-contained); ``cdn`` loads it from cdn.plot.ly (small
pages that need internet access when viewed)."""
PLOTLY_JS = "plotly.min.js"
"""File name of the shared plotly.js (``html_js="shared"``)."""
_PLOTLY_JS_LOCK = threading.Lock()


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


@functools.lru_cache(maxsize=1)
def _plotly_js_bytes() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode("utf-8")


def shared_plotly_js(folder: str | os.PathLike) -> Path:
    """``folder/plotly.min.js``: the plotly.js of the installed plotly
    (:func:`plotly.offline.get_plotlyjs`), written atomically (temporary name, then rename) unless
    an identical copy is already there, so a folder gets it once however many pages load it."""
    target = Path(folder) / PLOTLY_JS
    data = _plotly_js_bytes()
    with _PLOTLY_JS_LOCK:
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, lambda tmp: tmp.write_bytes(data))
    return target


def check_html_js(html_js: str) -> str:
    """`html_js` if it is one of :data:`HTML_JS`, else :class:`~freqmerge_viz.errors.ParameterError`
    naming the allowed values."""
    check_choice("html_js", html_js, HTML_JS)
    return html_js


def save_html(fig, path: str | os.PathLike, div_id: str = "freqmerge-figure", html_js: str = "shared",
              js_dir: str | os.PathLike | None = None) -> Path:
    """Write a plotly figure as an HTML page with a fixed div id (reproducible: the same figure
    gives the same bytes).

    `html_js` (:data:`HTML_JS`) says where plotly.js comes from: ``"shared"`` writes
    :data:`PLOTLY_JS` once into `js_dir` (default: the page's own folder; give the top of an output
    tree, a folder above the page, to share one copy among its sub-folders) and the page loads it
    by a relative path (``plotly.min.js``, ``../plotly.min.js``), so the folder works offline as a
    whole; ``"inline"`` puts it into the page (self-contained, about 4.8 MB); ``"cdn"`` loads it
    from cdn.plot.ly (the page needs internet access when viewed)."""
    check_html_js(html_js)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if html_js == "shared":
        script = shared_plotly_js(target.parent if js_dir is None else js_dir)
        include = urllib.parse.quote(Path(os.path.relpath(script, target.parent)).as_posix())
    else:
        include = True if html_js == "inline" else "cdn"
    write_atomically(target, lambda tmp: fig.write_html(tmp, include_plotlyjs=include, full_html=True,
                                                        div_id=div_id))
    return target


def spectra_grid(log_amplitudes: Sequence[np.ndarray], titles: Sequence[str], suptitle: str = "",
                 masks: Sequence[np.ndarray] | None = None, limits: tuple[float, float] | None = None):
    """Matplotlib grid of centred log-amplitude spectra (one panel per task), mask outline optional.

    Bins at numerical zero (:func:`~freqmerge_viz.plots.scales.spectrum_image`: amplitude at most
    1e-4 of the largest, e.g. the η = 0 row of a matrix whose columns sum to zero) are drawn in
    :data:`~freqmerge_viz.plots.scales.ZERO_COLOR`, outside the colour scale, and a caption under
    the panels says where they are. `limits` fixes the shared colour range (default: the 1st and
    99.5th percentiles of the other bins).
    """
    import matplotlib.pyplot as plt

    from .scales import ZERO_COLOR, spectrum_image

    n = len(log_amplitudes)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1.0, 3.0 * rows + 0.3), squeeze=False,
                             constrained_layout=True)
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in log_amplitudes])
    picture = spectrum_image(np.exp(stack))
    low, high = (picture.vmin, picture.vmax) if limits is None else limits
    cmap = plt.get_cmap("magma").with_extremes(bad=ZERO_COLOR)
    height, width = stack.shape[-2:]
    extent = (-(width // 2) - 0.5, (width - 1) // 2 + 0.5, (height - 1) // 2 + 0.5, -(height // 2) - 0.5)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        image = ax.imshow(picture.values[i], cmap=cmap, vmin=low, vmax=high, aspect="auto",
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
    fig.colorbar(image, ax=axes, shrink=0.8, label="ln |F(v)|", extend="both")
    caption = picture.caption(center=(height // 2, width // 2))
    limits_note = (f"colours: ln|F| from {low:.2f} to {high:.2f} (1st–99.5th percentile of the non-zero bins; "
                   "beyond them the end colours)" if limits is None else f"colours: ln|F| from {low:.2f} to {high:.2f}")
    add_caption(fig, "; ".join(part for part in (caption, limits_note) if part))
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


# ----------------------------------------------------------------------------- shared by the topic modules


def save_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV atomically (index kept only when it is not a plain range)."""
    from ..io import write_text_atomically

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    keep_index = not isinstance(table.index, pd.RangeIndex)
    write_text_atomically(target, table.to_csv(index=keep_index, float_format="%.6g"))
    return target


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 4.0),
               layout: str | None = "constrained", **kwargs):
    """A pyplot-free matplotlib figure (safe in threads, nothing to close) and its axes array;
    `kwargs` go to ``Figure.subplots`` (sharex, width_ratios, ...). Large grids render much faster
    with ``layout=None`` (then place them with ``fig.subplots_adjust``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout=layout)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def write_all(stem: str | os.PathLike, table: pd.DataFrame, static=None, interactive=None,
              div_id: str = "freqmerge-figure", formats: Sequence[str] = ("png", "svg"),
              fractions: Sequence[str] = (), html_js: str = "shared",
              js_dir: str | os.PathLike | None = None) -> list[Path]:
    """``stem.csv``, the matplotlib figure `static` as ``stem.<fmt>`` and the plotly figure
    `interactive` as ``stem.html`` (each skipped when None); returns the paths written.

    `fractions`: columns holding accuracies as fractions in [0, 1], named with a ``_fraction``
    suffix in the CSV (:func:`fraction_names`). `html_js` and `js_dir`: where the page gets
    plotly.js (:func:`save_html`; the shared :data:`PLOTLY_JS` is not in the list returned)."""
    check_html_js(html_js)
    written = [save_csv(fraction_names(table, fractions), f"{stem}.csv")]
    if static is not None:
        written += save_figure(static, stem, formats)
    if interactive is not None:
        written.append(save_html(interactive, f"{stem}.html", div_id=div_id, html_js=html_js, js_dir=js_dir))
    return written


def fraction_names(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`table` with each of `columns` (accuracies as fractions in [0, 1]) renamed ``<name>_fraction``
    (or ``<name>_accuracy_fraction`` when the name does not say accuracy), so a CSV says its unit;
    figures show percent. Columns not in the table are skipped."""
    renamed = {c: f"{c}_fraction" if "accuracy" in c else f"{c}_accuracy_fraction"
               for c in columns if c in table.columns}
    out = table.rename(columns=renamed)
    out.attrs.update(table.attrs)
    return out


# ----------------------------------------------------------------------------- captions and labels
def add_caption(fig, text: str, fontsize: float = 7.0):
    """A caption under every panel of a constrained-layout figure (it takes its own space, so it
    never overlaps tick labels); long captions wrap at about 150 characters. Returns the text artist."""
    import textwrap

    if not text:
        return None
    width = max(60, int(fig.get_size_inches()[0] * 16))
    return fig.supxlabel("\n".join(textwrap.wrap(text, width)), fontsize=fontsize, color="#333333")


def _renderer(fig):
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def label_points(ax, xs, ys, texts, fontsize: float = 5.5, priority=None, marker_radius: float = 3.0) -> list[int]:
    """Annotate points with `texts` where a label fits: each label tries eight spots around its point
    and is dropped when every spot overlaps a label already placed, any point's marker (a square of
    `marker_radius` points around it) or leaves the axes. `priority` (default: order given) sets who
    goes first. Returns the indices of the labelled points (say in a caption that the others are
    left out)."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = _renderer(fig)
    frame = ax.get_window_extent(renderer)
    radius = marker_radius * fig.dpi / 72.0
    centres = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    markers = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in centres]
    placed, kept = [], []
    order = list(range(len(texts))) if priority is None else list(priority)
    spots = (((4, 2), "left", "bottom"), ((4, -2), "left", "top"), ((-4, 2), "right", "bottom"),
             ((-4, -2), "right", "top"), ((0, 5), "center", "bottom"), ((0, -5), "center", "top"),
             ((5, 0), "left", "center"), ((-5, 0), "right", "center"))
    for i in order:
        for offset, ha, va in spots:
            label = ax.annotate(texts[i], (xs[i], ys[i]), xytext=offset, textcoords="offset points", ha=ha, va=va,
                                fontsize=fontsize, alpha=0.85)
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed + markers):
                placed.append(box)
                kept.append(i)
                label.set_in_layout(False)
                break
            label.remove()
    return sorted(kept)


def layout_overlaps(fig, pad: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of text elements of a matplotlib figure that overlap once drawn: figure title and
    caption, figure legends, and per visible axes its titles, axis labels, legend and point labels
    (:func:`label_points`), each against all the others; tick labels against the other tick labels
    of the same axis. Returns ``(name, name)`` pairs (empty when the layout is clean); `pad` pixels
    of slack."""
    renderer = _renderer(fig)
    named = []

    def add(name, artist):
        if artist is not None and artist.get_visible() and (not hasattr(artist, "get_text") or artist.get_text()):
            box = artist.get_window_extent(renderer)
            if box.width > 0 and box.height > 0:
                named.append((name, box.expanded(1.0, 1.0).padded(-pad)))

    add("suptitle", getattr(fig, "_suptitle", None))
    add("caption", getattr(fig, "_supxlabel", None))
    for i, legend in enumerate(fig.legends):
        add(f"figure legend {i}", legend)
    ticks = []
    for a, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        for loc, title in (("left", ax._left_title), ("center", ax.title), ("right", ax._right_title)):
            add(f"axes {a} title ({loc})", title)
        if ax.axison:
            add(f"axes {a} xlabel", ax.xaxis.label)
            add(f"axes {a} ylabel", ax.yaxis.label)
        add(f"axes {a} legend", ax.get_legend())
        for t, text in enumerate(ax.texts):
            if type(text).__name__ == "Annotation":
                add(f"axes {a} label {text.get_text()!r}", text)
        if ax.axison:
            for axis_name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                boxes = [label.get_window_extent(renderer).padded(-pad) for label in axis.get_ticklabels()
                         if label.get_visible() and label.get_text()]
                ticks.append((f"axes {a} {axis_name} tick labels", boxes))
    overlaps = [(n1, n2) for i, (n1, b1) in enumerate(named) for n2, b2 in named[i + 1:] if b1.overlaps(b2)]
    for name, boxes in ticks:
        if any(b1.overlaps(b2) for i, b1 in enumerate(boxes) for b2 in boxes[i + 1:]):
            overlaps.append((name, name))
    return overlaps


# ----------------------------------------------------------------------------- accuracy: percent, bars, references
REFERENCE_STYLES = {"pretrained": ("no merge (θ_pre + heads)", "#7f7f7f", ":"),
                    "task_arithmetic": ("task arithmetic", "#8c564b", "-."),
                    "finetuned": ("fine-tuned", "black", "--")}
"""Label, colour and line style of each reference of
:func:`~freqmerge_viz.analysis.evaluation.reference_accuracies`."""


def accuracy_summary(table: pd.DataFrame, by: Sequence[str], accuracy: str = "accuracy",
                     n: str = "n_images") -> pd.DataFrame:
    """Mean accuracy over the rows (tasks) of each group of `by`, with its standard error
    (:func:`~freqmerge_viz.plots.scales.mean_se`, binomial per task on its `n` images; NaN
    without an `n` column), both in percent. Columns: `by`, ``accuracy_pct, se_pct, tasks, n_min, n_max``."""
    from .scales import as_percent, mean_se

    rows = []
    for key, group in table.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        values = group[accuracy].to_numpy(float)
        counts = group[n].to_numpy(float) if n in group.columns else np.full(len(values), np.nan)
        se = mean_se(values, counts) if n in group.columns else float("nan")
        rows.append({**dict(zip(by, key)), "accuracy_pct": as_percent(float(values.mean())),
                     "se_pct": as_percent(se), "tasks": len(values),
                     "n_min": float(np.nanmin(counts)) if np.isfinite(counts).any() else float("nan"),
                     "n_max": float(np.nanmax(counts)) if np.isfinite(counts).any() else float("nan")})
    return pd.DataFrame(rows)


def reference_summary(references: pd.DataFrame | None) -> pd.DataFrame:
    """:func:`accuracy_summary` of a :func:`~freqmerge_viz.analysis.evaluation.reference_accuracies`
    table, one row per reference (empty without one)."""
    if references is None or references.empty:
        return pd.DataFrame(columns=["reference", "accuracy_pct", "se_pct", "tasks", "n_min", "n_max"])
    return accuracy_summary(references, ["reference"])


def draw_references(ax, references: pd.DataFrame | None, labels: dict | None = None, alpha: float = 0.12) -> None:
    """Horizontal reference lines (percent) with ±1 SE bands on a matplotlib axis, styled by
    :data:`REFERENCE_STYLES` (labels overridable per reference), each labelled with its value."""
    for row in reference_summary(references).itertuples():
        label, colour, style = REFERENCE_STYLES.get(row.reference, (row.reference, "grey", ":"))
        label = (labels or {}).get(row.reference, label)
        if np.isfinite(row.se_pct):
            ax.axhspan(row.accuracy_pct - row.se_pct, row.accuracy_pct + row.se_pct, color=colour, alpha=alpha, lw=0)
        ax.axhline(row.accuracy_pct, color=colour, ls=style, lw=1.1, label=f"{label}: {row.accuracy_pct:.1f}%")


def plotly_references(fig, references: pd.DataFrame | None, labels: dict | None = None, row=None, col=None,
                      showlegend: bool = True) -> None:
    """The plotly version of :func:`draw_references`: a line and a ±1 SE band per reference, named
    with its value in the legend (not as text on the plot, where close references would collide)."""
    import plotly.graph_objects as go

    colours = {"#7f7f7f": "rgba(127,127,127,0.15)", "#8c564b": "rgba(140,86,75,0.15)", "black": "rgba(0,0,0,0.10)"}
    where = {} if row is None else {"row": row, "col": col}
    for ref in reference_summary(references).itertuples():
        label, colour, style = REFERENCE_STYLES.get(ref.reference, (ref.reference, "grey", ":"))
        label = (labels or {}).get(ref.reference, label)
        dash = {"--": "dash", ":": "dot", "-.": "dashdot"}.get(style, "solid")
        if np.isfinite(ref.se_pct):
            fig.add_hrect(y0=ref.accuracy_pct - ref.se_pct, y1=ref.accuracy_pct + ref.se_pct, line_width=0,
                          fillcolor=colours.get(colour, "rgba(127,127,127,0.15)"), layer="below", **where)
        fig.add_hline(y=ref.accuracy_pct, line_color=colour, line_width=1, line_dash=dash, **where)
        se = f" ± {ref.se_pct:.1f}" if np.isfinite(ref.se_pct) else ""
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": colour, "dash": dash, "width": 1},
                                 name=f"{label}: {ref.accuracy_pct:.1f}%{se}", showlegend=showlegend,
                                 legendgroup=f"reference-{ref.reference}"), **where)
