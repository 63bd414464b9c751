"""LandscapeViewer: loss or accuracy over the plane of two task vectors, with merged points.

The plane, the grid and the projected points come from :mod:`freqmerge_viz.analysis.landscape`
(:func:`~freqmerge_viz.analysis.landscape.plane_study`, :meth:`PlaneStudy.grid`,
:meth:`PlaneStudy.points`; coordinates α, β in units of ‖τ_A‖ and ‖τ_B⊥‖, so θ_pre is (0, 0)
and model A (1, 0)). Results are kept in memory per setting (plane per task pair, evaluated
task and filter; grid per plane and size; points per plane and methods) and, with
`cache_dir`, on disk through the analysis' own ``.npz`` cache. A metric change only redraws.

Measured on the demo zoo (2 busy CPU cores, 32 test images): a new 5 × 5 grid takes 0.3–0.4 s,
11 × 11 about 0.8 s, a new plane 0.5–0.7 s, merged points 0.05–0.5 s, a metric change or a
cached setting about 10 ms; grid time grows with grid² × images. The status line reads
"computing …" while an uncached plane, grid or point set is evaluated.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..study import as_study, is_study
from ..analysis.landscape import DEFAULT_METHODS, REFERENCES, default_pair, filter_label, merged_states, plane_study
from ..errors import ParameterError, check_choice, check_positive_int
from ..methods import list_methods
from ..plots.landscape import grid_matrix
from ..stats import binomial_se
from ..study import study_evaluator
from .base import DEBOUNCE_S, Explorer, Schedule
from .refine import Refiner, count_range, inputs_between

TARGET_SE = 1.0
"""Largest ±1 binomial SE of the accuracy at any shown point (percentage points) at which
refinement stops."""
REFINE_CHUNK = 32
"""Images one refinement step adds to one grid row (or to the projected points)."""

METRICS = ("loss", "accuracy")
GRID_SIZES = (2, 41)
"""Smallest and largest grid size (points per axis) the viewer accepts."""
REFERENCE_LABELS = {"pretrained": "θ_pre", "finetuned_a": "A", "finetuned_b": "B"}
SAME_AS_A = "(task A)"
"""The "evaluated on" control's choice for ``eval_task=None`` (a dropdown cannot show a None value)."""
LOSS_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
CONTOUR, REFERENCE_POINTS, MERGED_POINTS = range(3)
"""Trace indices in :attr:`LandscapeViewer.figure`."""


def method_choices() -> list[str]:
    """Merged-point labels the viewer offers: the analysis' defaults, then every registered merge."""
    return list(DEFAULT_METHODS) + [m for m in list_methods() if m not in DEFAULT_METHODS]


def _recipe(label: str) -> dict:
    return dict(DEFAULT_METHODS.get(label, {"method": label}))


@dataclass(frozen=True)
class LandscapeView:
    """Everything one update shows (tables shared with the viewer's caches: read only)."""

    grid: pd.DataFrame
    points: pd.DataFrame
    metric: str
    title: str
    refinement: dict


class LandscapeModel:
    """What the landscape viewer computes, without any widget: planes, grids and projected points
    per setting, kept in memory, and :meth:`compute` of one :class:`LandscapeView` (tests drive
    it headless). Arguments as :class:`LandscapeViewer`'s; `busy(what)` is told before each
    uncached computation (the viewer shows it in its status line).
    """

    def __init__(self, zoo, *, limit: int | None = 64, split: str = "test",
                 grid_range: tuple[float, float] | None = None, filter=True, cache_dir=None,
                 busy: Callable[[str], None] | None = None, refine_limit: int | None = None,
                 refine_chunk: int = REFINE_CHUNK, target_se: float = TARGET_SE):
        if isinstance(zoo, (str, os.PathLike)):
            zoo = as_study(zoo)
        if not is_study(zoo):
            raise ParameterError(f"LandscapeViewer needs a study (freqmerge_viz.load_study(...) or the zoo), "
                                 f"got {type(zoo).__name__}")
        if filter is None or filter is False:
            raise ParameterError("filter is what filtered=True applies; give FR parameters or True")
        self.zoo = zoo
        self.tasks = list(zoo.tasks)
        self.limit = limit
        self.split = split
        self.filter = filter
        self.cache_dir = cache_dir
        self.busy = busy or (lambda what: None)
        if grid_range is not None:
            low, high = (float(v) for v in grid_range)
            if not low < high:
                raise ParameterError(f"grid_range must be (low, high) with low < high, got {grid_range!r}")
            grid_range = (low, high)
        self.grid_range = grid_range
        self.method_options = method_choices()
        self.timings: dict[str, float] = {}
        self._studies: dict[tuple, object] = {}
        self._grids: dict[tuple, pd.DataFrame] = {}
        self._points: dict[tuple, pd.DataFrame] = {}
        self._merged: dict[tuple, dict] = {}
        if not target_se > 0:
            raise ParameterError(f"target_se must be > 0 percentage points, got {target_se!r}")
        self.target_se = float(target_se)
        self.refine_chunk = check_positive_int("refine_chunk", refine_chunk)
        self.refine_limit = getattr(zoo, "default_limit", None) if refine_limit is None else \
            check_positive_int("refine_limit", refine_limit)
        self._full_evaluators: dict[str, object] = {}

    # ------------------------------------------------------------------ computations
    def check(self, values) -> None:
        for name in ("task_a", "task_b"):
            check_choice(name, values[name], self.tasks)
        if values["task_a"] == values["task_b"]:
            raise ParameterError(f"task A and task B must differ (both {values['task_a']!r}): no plane")
        if values["eval_task"] is not None:
            check_choice("eval_task", values["eval_task"], self.tasks)
        size = values["grid"]
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not \
                GRID_SIZES[0] <= size <= GRID_SIZES[1]:
            raise ParameterError(f"grid must be an integer in [{GRID_SIZES[0]}, {GRID_SIZES[1]}] (points per "
                                 f"axis), got {size!r}")
        if not isinstance(values["filtered"], (bool, np.bool_)):
            raise ParameterError(f"filtered must be True or False, got {values['filtered']!r}")
        check_choice("metric", values["metric"], METRICS)
        methods = values["methods"]
        if isinstance(methods, str) or not isinstance(methods, Sequence):
            raise ParameterError(f"methods must be a sequence of labels, got {methods!r}")
        unknown = sorted(set(methods) - set(self.method_options))
        if unknown:
            raise ParameterError(f"unknown merged-point method(s) {unknown}; available: {self.method_options}")

    def _plane_key(self, values) -> tuple:
        return (values["task_a"], values["task_b"], values["eval_task"] or values["task_a"], bool(values["filtered"]))

    def study(self, values: Mapping):
        """The :class:`~freqmerge_viz.analysis.landscape.PlaneStudy` of the settings `values`."""
        key = self._plane_key(values)
        if key not in self._studies:
            self.busy("plane")
            start = time.perf_counter()
            self._studies[key] = plane_study(self.zoo, key[0], key[1], eval_task=key[2],
                                             filtered=self.filter if key[3] else None, split=self.split,
                                             limit=self.limit, cache_dir=self.cache_dir)
            self.timings["plane_ms"] = 1e3 * (time.perf_counter() - start)
        return self._studies[key]

    def compute(self, values) -> LandscapeView:
        self.timings = {}
        study = self.study(values)
        plane = self._plane_key(values)
        size = int(values["grid"])
        if (plane, size) not in self._grids:
            self.busy(f"{size} × {size} grid")
            start = time.perf_counter()
            grid = study.grid((size, self.grid_range) if self.grid_range else size)
            grid["samples"] = int(grid.attrs["samples"])
            self._grids[(plane, size)] = grid
            self.timings["grid_ms"] = 1e3 * (time.perf_counter() - start)
        methods = tuple(values["methods"])
        if (plane, methods) not in self._points:
            self.busy("merged points")
            start = time.perf_counter()
            pair = plane[:2]
            missing = [m for m in methods if (pair, m) not in self._merged]
            if missing:
                made = merged_states({m: _recipe(m) for m in missing}, study.pretrained, study.finetuned_a,
                                     study.finetuned_b, study.names, list(study.plane.origin))
                self._merged.update({(pair, m): s for m, s in made.items()})
            points = study.points({}, {m: self._merged[(pair, m)] for m in methods})
            points["samples"] = int(len(study.evaluator.labels))
            self._points[(plane, methods)] = points
            self.timings["points_ms"] = 1e3 * (time.perf_counter() - start)
        grid, points = self._grids[(plane, size)].copy(), self._points[(plane, methods)].copy()
        counts = _counts(grid) + _counts(points)
        grid.attrs["samples"] = min(counts)
        setting = filter_label(self.filter) if values["filtered"] else "unfiltered"
        shown = count_range(counts)
        title = (f"{values['metric']} on {plane[2]} ({shown} {self.split} images per point) · plane of "
                 f"τ_{plane[0]} and τ_{plane[1]} · {setting}")
        return LandscapeView(grid, points, values["metric"], title, self.refinement(values))

    # ------------------------------------------------------------------ refinement
    def _full_evaluator(self, task: str):
        """`task`'s evaluator on its whole `split` (or ``refine_limit`` images), sliced per chunk."""
        if task not in self._full_evaluators:
            self._full_evaluators[task] = study_evaluator(self.zoo, task, self.split, self.refine_limit)
        return self._full_evaluators[task]

    def _open(self, values) -> tuple[str, list[pd.DataFrame], int]:
        """(evaluated task, the setting's grid and points tables, images its split offers)."""
        plane = self._plane_key(values)
        tables = [self._grids[(plane, int(values["grid"]))], self._points[(plane, tuple(values["methods"]))]]
        return plane[2], tables, len(self._full_evaluator(plane[2]).labels)

    def _settled(self, table: pd.DataFrame, size: int) -> bool:
        counts = _counts(table)
        if min(counts) >= size:
            return True
        if min(counts) != max(counts):
            return False
        se = binomial_se(table["accuracy"].to_numpy(float), np.asarray(counts, dtype=np.float64))
        return float(np.max(100.0 * se)) <= self.target_se

    def refinement(self, values) -> dict:
        """Where refinement of `values` stands, as the cutoff explorer's: ``state`` (``refining``,
        ``settled``: every shown accuracy's ±1 SE at most ``target_se_percent`` points, or
        ``whole split``), the fewest images per point and the most the split offers."""
        _, tables, size = self._open(values)
        counts = [c for table in tables for c in _counts(table)]
        state = ("whole split" if min(counts) >= size else
                 "settled" if all(self._settled(t, size) for t in tables) else "refining")
        return {"state": state, "fewest_per_point": min(counts), "split_per_task": size,
                "target_se_percent": self.target_se}

    def refine_step(self, values) -> bool:
        """Add the next ``refine_chunk`` images to one grid row (the least refined) or to the
        projected points; returns whether any number of `values` is still unsettled."""
        task, tables, size = self._open(values)
        open_tables = [t for t in tables if not self._settled(t, size)]
        if not open_tables:
            return False
        table = min(open_tables, key=lambda t: min(_counts(t)))
        counts = np.asarray(_counts(table))
        done = int(counts.min())
        rows = np.flatnonzero(counts == done)
        if "method" not in table:
            rows = rows[np.isclose(table["beta"].to_numpy()[rows], table["beta"].to_numpy()[rows[0]])]
        study = self.study(values)
        evaluator = inputs_between(self._full_evaluator(task), done, min(done + self.refine_chunk, size))
        n = len(evaluator.labels)
        if "method" in table:
            pair = self._plane_key(values)[:2]
            states = [study.pretrained, study.finetuned_a, study.finetuned_b] + \
                [self._merged[(pair, m)] for m in values["methods"]]
            rows = np.arange(len(table))
        else:
            states = study.plane.states(table[["alpha", "beta"]].to_numpy(np.float64)[rows])
        result = evaluator(states)
        loss, accuracy = np.asarray(result.loss, float), np.asarray(result.accuracy, float)
        weight = counts[rows] / (counts[rows] + n)
        for column, fresh_values in (("loss", loss), ("accuracy", accuracy)):
            column_index = table.columns.get_loc(column)
            old = table.iloc[rows, column_index].to_numpy(float)
            table.iloc[rows, column_index] = weight * old + (1 - weight) * fresh_values
        table.iloc[rows, table.columns.get_loc("samples")] = counts[rows] + n
        return len(open_tables) > 1 or not self._settled(table, size)


class LandscapeViewer(Explorer):
    """Loss/accuracy landscape on the plane of two task vectors of a study (see the module docstring).

    Settings (``values``): ``task_a``, ``task_b`` (the study's tasks spanning the plane; default: the zoo's landcover and
    textures, another study's first two), ``eval_task``
    (the task evaluated, ``None``: task A), ``grid`` (points per axis), ``filtered`` (both task
    vectors through `filter` first: FR-Merging's parameters, ``True`` for its defaults),
    ``metric`` (``"loss"``: mean cross-entropy, or ``"accuracy"`` in [0, 1]) and ``methods``
    (labels of :func:`method_choices` merged from A and B and projected). Data: the first
    `limit` images of `split`. `grid_range` ``(low, high)`` puts both axes on that range
    (default: the analysis' axes around θ_pre, A and B).
    """

    export_div_id = "freqmerge-landscape-viewer"
    default_export = "landscape_viewer.html"


    def __init__(self, zoo, *, task_a: str | None = None, task_b: str | None = None, eval_task: str | None = None,
                 grid: int = 11, filtered: bool = False, metric: str = "loss",
                 methods: Sequence[str] = tuple(DEFAULT_METHODS), limit: int | None = 64, split: str = "test",
                 grid_range: tuple[float, float] | None = None, filter=True, cache_dir=None,
                 refine: bool = True, target_se: float = TARGET_SE, refine_limit: int | None = None,
                 refine_chunk: int = REFINE_CHUNK, debounce: float = DEBOUNCE_S, schedule: Schedule | None = None):
        super().__init__(debounce=debounce, schedule=schedule)
        self.model = LandscapeModel(zoo, limit=limit, split=split, grid_range=grid_range, filter=filter,
                                    cache_dir=cache_dir, busy=self._busy, refine_limit=refine_limit,
                                    refine_chunk=refine_chunk, target_se=target_se)
        self._view: LandscapeView | None = None
        if refine:
            self.refiner = Refiner(self._refine_step, self._lock, schedule)
        if task_a is None or task_b is None:
            task_a, task_b = default_pair(self.model.zoo)
        self.values = {"task_a": task_a, "task_b": task_b, "eval_task": eval_task, "grid": grid,
                       "filtered": filtered, "metric": metric, "methods": tuple(methods)}
        self.model.check(self.values)
        self._start()

    def study(self, values: Mapping | None = None):
        """The :class:`~freqmerge_viz.analysis.landscape.PlaneStudy` of `values` (default: the current)."""
        return self.model.study(self.values if values is None else values)

    def _busy(self, what: str) -> None:
        self.status.value = f'<span class="fmv-status-busy" style="color:#a60">computing {html.escape(what)}…</span>'

    def _on_control(self, name: str, value) -> None:
        super()._on_control(name, None if (name, value) == ("eval_task", SAME_AS_A) else value)

    def _sync_controls(self, values) -> None:
        super()._sync_controls({**values, "eval_task": values.get("eval_task") or SAME_AS_A})


    # ------------------------------------------------------------------ display
    def _build_controls(self) -> None:
        import ipywidgets as w

        v = self.values
        wide = {"description_width": "initial"}
        controls = {
            "task_a": w.Dropdown(options=self.tasks, value=v["task_a"], description="task A (α axis)", style=wide),
            "task_b": w.Dropdown(options=self.tasks, value=v["task_b"], description="task B (β axis)", style=wide),
            "eval_task": w.Dropdown(options=[SAME_AS_A] + self.tasks, value=v["eval_task"] or SAME_AS_A,
                                    description="evaluated on", style=wide),
            "grid": w.IntSlider(value=v["grid"], min=GRID_SIZES[0], max=GRID_SIZES[1], step=1, style=wide,
                                description="grid (points per axis; slow)", continuous_update=False),
            "filtered": w.Checkbox(value=v["filtered"], description=f"filtered ({filter_label(self.filter)})",
                                   indent=False),
            "metric": w.ToggleButtons(options=list(METRICS), value=v["metric"], description="metric"),
            "methods": w.SelectMultiple(options=self.method_options, value=tuple(v["methods"]), rows=4,
                                        description="merged points", style=wide),
        }
        for name, control in controls.items():
            control.add_class(f"fmv-{name.replace('_', '-')}")
            self._bind(name, control)

    def _build_figure(self) -> None:
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_trace(go.Contour(x=[0.0, 1.0], y=[0.0, 1.0], z=[[0.0, 0.0], [0.0, 0.0]], colorscale="Viridis",
                                 contours=dict(coloring="heatmap"), line=dict(width=0.5), name="landscape",
                                 colorbar=dict(title="loss"),
                                 hovertemplate="α %{x:.3f}<br>β %{y:.3f}<br>%{customdata}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers+text", name="θ_pre, A, B", textposition="top center",
                                 marker=dict(size=12, color="white", symbol="star", line=dict(width=1.5, color="black")),
                                 hoverinfo="text"))
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers+text", name="merged", textposition="bottom center",
                                 marker=dict(size=10, color="#e45756", symbol="diamond",
                                             line=dict(width=1, color="black")), hoverinfo="text"))
        fig.update_xaxes(title_text="α (units of ‖τ_A‖)")
        fig.update_yaxes(title_text="β (units of ‖τ_B⊥‖)")
        fig.update_layout(height=560, template="plotly_white", showlegend=False,
                          title=dict(text="", font=dict(size=12)), margin=dict(l=60, r=20, t=70, b=60))
        self.figure = fig

    def _build_widget(self) -> None:
        import ipywidgets as w

        c = self.controls
        self.summary = w.HTML(value="")
        self.summary.add_class("fmv-summary")
        self.widget = w.VBox([
            w.HBox([c["task_a"], c["task_b"], c["eval_task"]]),
            w.HBox([c["grid"], c["filtered"], c["metric"]]),
            c["methods"],
            w.HBox([self.export_path, self.export_button]),
            *self._display_parts(),
        ], layout=w.Layout(width="100%"))
        self.widget.add_class("fmv-landscape-viewer")

    @staticmethod
    def _hover(row) -> str:
        return (f"{row.method}<br>α {row.alpha:.3f}, β {row.beta:.3f}, off-plane {row.off_plane_distance:.3g}"
                f"<br>loss {row.loss:.4f}, accuracy {row.accuracy:.3f}")

    def _draw(self, view: LandscapeView) -> None:
        start = time.perf_counter()
        alphas, betas, values = grid_matrix(view.grid, view.metric)
        references = view.points[view.points["method"].isin(REFERENCES)]
        merged = view.points[~view.points["method"].isin(REFERENCES)]
        d = self.figure.data
        with self.figure.batch_update():
            contour = d[CONTOUR]
            contour.x, contour.y = alphas, betas
            contour.z, contour.customdata, colorbar = _colour_values(values, view.metric)
            contour.colorscale = "Viridis" if view.metric == "loss" else "Magma"
            contour.colorbar.update(colorbar)
            for trace, table, labels in ((d[REFERENCE_POINTS], references, REFERENCE_LABELS),
                                         (d[MERGED_POINTS], merged, {})):
                trace.x = table["alpha"].to_numpy(float)
                trace.y = table["beta"].to_numpy(float)
                trace.text = [labels.get(m, m) for m in table["method"]]
                trace.hovertext = [self._hover(r) for r in table.itertuples()]
                trace.customdata = table[["loss", "accuracy"]].to_numpy(float)
            self.figure.layout.title.text = html.escape(view.title, quote=False)
        self.summary.value = _summary_html(view, self.pane.revision + 1)
        self._view = view
        self.last_timings["draw_ms"] = 1e3 * (time.perf_counter() - start)

    def _displayed(self) -> dict:
        contour = self.figure.data[CONTOUR]
        points = {}
        for index in (REFERENCE_POINTS, MERGED_POINTS):
            trace = self.figure.data[index]
            methods = self._view.points["method"]
            methods = methods[methods.isin(REFERENCES) == (index == REFERENCE_POINTS)]
            for method, x, y, (loss, accuracy) in zip(methods, trace.x, trace.y, np.asarray(trace.customdata)
                                                      .reshape(-1, 2)):
                points[str(method)] = {"alpha": float(x), "beta": float(y), "loss": float(loss),
                                       "accuracy": float(accuracy)}
        _, _, values = grid_matrix(self._view.grid, self._view.metric)
        return {"alphas": [float(a) for a in contour.x], "betas": [float(b) for b in contour.y],
                "values": np.asarray(values, dtype=float).tolist(), "points": points,
                "plane": {k: self._view.grid.attrs[k] for k in ("norm_a", "norm_b", "norm_b_perp", "b_alpha",
                                                                 "cosine", "samples")},
                "title": self._view.title, "refinement": dict(self._view.refinement),
                "samples_per_point": {"grid": _counts(self._view.grid), "points": dict(zip(
                    self._view.points["method"].astype(str), _counts(self._view.points)))}}

    def value_at(self, alpha: float, beta: float) -> float:
        """The displayed metric at grid node (α, β) (:class:`ParameterError` if it is not a node)."""
        shown = self.shown()
        columns = [i for i, a in enumerate(shown["alphas"]) if abs(a - alpha) < 1e-9]
        rows = [i for i, b in enumerate(shown["betas"]) if abs(b - beta) < 1e-9]
        if not columns or not rows:
            raise ParameterError(f"({alpha}, {beta}) is not a node of the shown grid")
        return shown["values"][rows[0]][columns[0]]

    def static_figure(self):
        """The current view as a matplotlib figure (:func:`~freqmerge_viz.plots.landscape.landscape_figure`)."""
        from ..plots.landscape import landscape_figure

        view = self._view
        return landscape_figure(view.grid, view.points, metric=view.metric, title=view.title)


def _counts(table: pd.DataFrame) -> list[int]:
    """Images behind each row of a grid or points table."""
    return [int(c) for c in table["samples"]]


def _colour_values(values: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(what the colours encode, hover text per node, colour bar settings) for a grid of `metric`.

    Loss is drawn on a log10 scale (a landscape's loss spans orders of magnitude; on a linear
    scale its basin is one colour), labelled in loss units; accuracy in percent.
    """
    values = np.asarray(values, dtype=float)
    if metric == "loss":
        logged = np.log10(np.clip(values, 1e-6, None))
        finite = logged[np.isfinite(logged)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        ticks = [t for t in LOSS_TICKS if low - 0.05 <= np.log10(t) <= high + 0.05] or [float(10 ** low)]
        hover = np.vectorize(lambda v: f"loss {v:.4f}")(values)
        return logged, hover, dict(title=dict(text="loss (log scale)"), tickvals=[float(np.log10(t)) for t in ticks],
                                   ticktext=[f"{t:g}" for t in ticks])
    percent = 100.0 * values
    hover = np.vectorize(lambda v: f"accuracy {v:.1f}%")(percent)
    return percent, hover, dict(title=dict(text="accuracy (%)"), tickvals=None, ticktext=None)


def _summary_html(view: LandscapeView, revision: int) -> str:
    rows = " ".join(
        f'<span class="fmv-point" data-method="{html.escape(str(r.method))}" data-alpha="{r.alpha:.6f}" '
        f'data-beta="{r.beta:.6f}" data-value="{getattr(r, view.metric):.6f}">'
        f'{html.escape(REFERENCE_LABELS.get(r.method, str(r.method)))} {getattr(r, view.metric):.3f}'
        f'{f" ± {100 * binomial_se(r.accuracy, r.samples):.1f}%" if view.metric == "accuracy" else ""}</span>'
        for r in view.points.itertuples())
    counts = _counts(view.grid) + _counts(view.points)
    accuracy = np.concatenate([view.grid["accuracy"].to_numpy(float), view.points["accuracy"].to_numpy(float)])
    worst = float(np.max(100.0 * binomial_se(accuracy, np.asarray(counts, dtype=np.float64))))
    refinement = view.refinement
    text = {"refining": f"refining towards ±{refinement['target_se_percent']:g} point…",
            "settled": f"settled: every accuracy's SE ≤ {refinement['target_se_percent']:g} point",
            "whole split": "the whole split"}[refinement["state"]]
    shown = count_range(counts)
    basis = (f'<span class="fmv-refinement" data-state="{refinement["state"]}" data-fewest="{min(counts)}" '
             f'data-se="{worst:.6f}" '
             f'data-total="{sum(counts)}">every point on {shown} images; accuracy ±1 binomial SE up to '
             f'{worst:.1f} points (loss has no SE here) · <b>{text}</b></span>')
    return (f'<div class="fmv-landscape-summary" data-revision="{revision}">{html.escape(view.metric)} at the points '
            f'({html.escape(view.title)}):'
            f'<br>{rows}<br>{basis}</div>')
