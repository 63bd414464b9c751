"""ExpertExplorer: what a task expert of a given density does alone, and what routing errors cost.

Two sliders, expert density ``d`` (fraction of each tensor's entries an expert keeps) and
router accuracy ``p`` (share of inputs a :class:`~freqmerge_viz.routing.RandomRouter` sends to
their own task), and three panels updated in place:

(a) expert-only accuracy ``θ_pre + e_t`` on task ``t`` at ``d``, for the experts of
    :func:`~freqmerge_viz.analysis.experts_curves.build_experts` (top-k, top-k with Eq. 4's μ,
    Bernoulli, SVD at the top-k expert's storage), with the fine-tuned and pretrained models;
(b) mean accuracy of FREE (its experts at ``d``), EMR and Twin routed by ``RandomRouter(K, p, seed)``
    over the p grid, the current p marked: :func:`~freqmerge_viz.analysis.router_robustness.robustness_table`
    over per-input outcomes from :func:`~freqmerge_viz.analysis.router_robustness.correctness`;
(c) extra storage per task at ``d`` (each expert's bytes, % of one float32 model).

What the sliders do not change is computed once: task vectors, evaluation images, SVD
storage by rank, EMR's and Twin's per-input outcomes. Outcomes, expert accuracies and
storage are kept per density, so a p change is only a re-draw of routes (a gather) and a
density walked back is not recomputed.

Measured on the demo zoo (2 busy CPU cores, 1 torch thread, 16 val images per task, the
default kinds): a p change takes 30–50 ms; a new density 1.2–1.8 s (experts of 4 kinds
about 0.5–1 s, FREE rebuilt and its 8 × 8 × 16 outcomes about 0.7–1 s); construction about
9 s (SVD storage by rank, EMR and Twin outcomes) plus the first update.
"""

from __future__ import annotations

import os
import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..study import as_study, is_study
from ..errors import ParameterError, check_choice, check_positive_int
from ..experts import check_density, storage_table
from ..methods import list_routed_methods, routed_merge
from ..analysis.evaluation import (backbone_numel, evaluate_per_task, finetuned_subset, individual_accuracies,
                                   materialize, study_task_vectors, study_tasks)
from ..analysis.experts_curves import KINDS, build_experts, expert_state, svd_storage_by_rank
from ..analysis.router_robustness import ROUTER_ACCURACIES, ROUTED_ROWS, correctness, robustness_table
from ..backend import torch_threads
from ..methods import merge
from ..plots.scales import as_percent, binomial_se, mean_se
from .base import DEBOUNCE_S, Explorer, Schedule

DENSITY_STEPS = tuple(sorted({float(f"{10 ** (k / 10 - 3):.2g}") for k in range(27)} | {0.5}))
"""The density slider's stops: 10 per decade from 0.001 to 0.5 (fractions of entries kept)."""
DEFAULT_KINDS = ("topk", "topk_rescaled", "bernoulli_rescaled", "svd")
KIND_LABELS = {"topk": "top-k", "topk_rescaled": "top-k + μ (Eq. 4)", "bernoulli": "Bernoulli",
               "bernoulli_rescaled": "Bernoulli ÷ d (DARE)", "svd": "SVD, matched storage"}
METHOD_LABELS = {"free": "FREE", "emr": "EMR", "twin": "Twin"}
DEFAULT_ROUTED_PARAMS = {"free": {"preset": "paper"}, "emr": {}, "twin": {"rank": 8}}
"""Routed merges' parameters when ``routed_params`` is not given (FREE's ``density`` comes from the slider)."""
SHORT_LABELS = {"top-k + μ (Eq. 4)": "top-k+μ", "Bernoulli ÷ d (DARE)": "Bern.÷d", "SVD, matched storage": "SVD"}
"""Storage-axis names short enough not to collide at a 1000 px notebook width."""
COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2")


@dataclass(frozen=True)
class ExpertView:
    """Everything one update shows (numbers in [0, 1] unless named otherwise)."""

    density: float
    router_accuracy: float
    expert_accuracy: dict          # kind -> {task: accuracy}
    expert_parameters: dict        # kind -> mean numbers stored per task
    storage_percent: dict          # label -> mean bytes per task, % of one float32 model
    routed_accuracy: dict          # method -> {task: accuracy at p}
    routed_curve: dict             # method -> [mean accuracy at each of ps]
    measured_router_accuracy: float
    ps: tuple


class ExpertModel:
    """What the expert explorer computes, without any widget: experts per density, routed merges'
    per-input outcomes, references, and :meth:`compute` of one :class:`ExpertView` per setting
    (tests drive it headless). Arguments as :class:`ExpertExplorer`'s.
    """

    def __init__(self, zoo, *, density: float = 0.01, methods: Sequence[str] = ("free", "emr", "twin"),
                 kinds: Sequence[str] = DEFAULT_KINDS, eval_split: str = "val", eval_per_task: int = 16, seed: int = 0,
                 tasks: Sequence[str] | None = None, routed_params: Mapping[str, Mapping] | str | None = None,
                 ps: Sequence[float] = ROUTER_ACCURACIES, threads: int | None = 1):
        if isinstance(zoo, (str, os.PathLike)):
            zoo = as_study(zoo)
        if not is_study(zoo):
            raise ParameterError(f"ExpertExplorer needs a study (freqmerge_viz.load_study(...) or the zoo), "
                                 f"got {type(zoo).__name__}")
        for kind in kinds:
            check_choice("kind", kind, KINDS)
        for method in methods:
            check_choice("method", method, list_routed_methods())
        if not kinds and not methods:
            raise ParameterError("ExpertExplorer needs at least one expert kind or routed method")
        self.zoo = zoo
        self.kinds = list(kinds)
        self.methods = list(methods)
        self.default_density = density
        self.eval_split = eval_split
        self.eval_per_task = check_positive_int("eval_per_task", eval_per_task)
        self.seed = seed
        self.threads = threads
        self.ps = tuple(sorted({float(p) for p in ps}))
        self.eval_description = f"first {eval_per_task} {eval_split} images of each task"
        self.timings: dict[str, float] = {}
        start = time.perf_counter()
        with torch_threads(threads):
            self.tasks = study_tasks(zoo, tasks)
            self._vectors = study_task_vectors(zoo, self.tasks)
            self._pretrained = materialize(zoo.pretrained)
            self._numel = backbone_numel(zoo)
            self._model_bytes = 4 * self._numel
            self._svd_storage = svd_storage_by_rank(self._vectors[0]) if "svd" in self.kinds else None
            self.routed_params = self._routed_params(routed_params)
            self.finetuned_accuracy = individual_accuracies(zoo, self.tasks, split=eval_split, limit=eval_per_task)
            self.pretrained_accuracy = evaluate_per_task(zoo, {t: [self._pretrained] for t in self.tasks},
                                                         split=eval_split, limit=eval_per_task
                                                         ).set_index("task")["accuracy"].astype(float).to_dict()
            self.ta_scaling = self._ta_scaling(zoo)
            ta_state = materialize(merge("task_arithmetic", zoo.pretrained, finetuned_subset(zoo, self.tasks),
                                         scaling=self.ta_scaling))
            self.task_arithmetic_accuracy = evaluate_per_task(
                zoo, {t: [ta_state] for t in self.tasks}, split=eval_split, limit=eval_per_task
            ).set_index("task")["accuracy"].astype(float).to_dict()
            self.eval_counts = {t: len(zoo.data(t, eval_split)[1][:eval_per_task]) for t in self.tasks}
            self._fixed_outcomes = {m: self._outcomes(m, None)[0] for m in self.methods if m != "free"}
            self._fixed_storage = {m: self._storage_of(m) for m in self.methods if m != "free"}
        self.timings["init_ms"] = 1e3 * (time.perf_counter() - start)
        self._by_density: dict[float, tuple] = {}

    # ------------------------------------------------------------------ computations
    @staticmethod
    def _ta_scaling(zoo) -> float:
        """The zoo's validation-chosen task-arithmetic coefficient (manifest), else 0.3."""
        chosen = (getattr(zoo, "manifest", None) or {}).get("accuracy", {}).get("task_arithmetic", {}).get("scaling")
        return float(chosen) if chosen is not None else 0.3

    def reference_means(self) -> dict[str, tuple[float, float]]:
        """Mean accuracy over tasks with its standard error (percent) of the reference models."""
        counts = [self.eval_counts[t] for t in self.tasks]
        out = {}
        for label, values in ((f"task arithmetic (λ = {self.ta_scaling:g})", self.task_arithmetic_accuracy),
                              ("no merge (pretrained + heads)", self.pretrained_accuracy),
                              ("fine-tuned", self.finetuned_accuracy)):
            accuracies = [values[t] for t in self.tasks]
            out[label] = (float(as_percent(np.mean(accuracies))), float(as_percent(mean_se(accuracies, counts))))
        return out

    def settings_label(self, method: str) -> str:
        """The routed merge's settings, short, for its legend entry (FREE's density is the slider's)."""
        params = {k: v for k, v in self.routed_params[method].items() if k != "density"}
        return ", ".join(f"{k} {v}" for k, v in params.items()) or "defaults"

    def _routed_params(self, given) -> dict[str, dict]:
        if given == "chosen":
            from ..analysis.selection import choose

            rows = {m: ROUTED_ROWS[METHOD_LABELS[m]] for m in self.methods}
            choices = choose(self.zoo, [rows[m] for m in self.methods], tasks=self.tasks)
            return {m: dict(choices[rows[m]].params) for m in self.methods}
        if given is not None and not isinstance(given, Mapping):
            raise ParameterError(f"routed_params must be {{method: parameters}} or 'chosen', got {given!r}")
        params = {m: dict(DEFAULT_ROUTED_PARAMS.get(m, {})) for m in self.methods}
        for method, extra in (given or {}).items():
            check_choice("routed_params method", method, self.methods)
            params[method].update(extra)
        if "density" in params.get("free", {}):
            raise ParameterError("FREE's density is the explorer's density slider; leave it out of routed_params")
        return params

    def routed(self, method: str, density: float | None = None):
        """The routed merge `method` as the explorer builds it (FREE with experts at `density`)."""
        params = dict(self.routed_params[method])
        if method == "free":
            params["density"] = self.default_density if density is None else density
        return routed_merge(method, self.zoo.pretrained, finetuned_subset(self.zoo, self.tasks), **params)

    def _outcomes(self, method: str, density: float | None):
        routed = self.routed(method, density)
        return correctness(self.zoo, routed, self.tasks, split=self.eval_split, limit=self.eval_per_task), routed

    def _storage_of(self, method: str, routed=None) -> float:
        routed = routed or self.routed(method)
        return float(np.mean(routed.storage_bytes_per_task())) / self._model_bytes * 100.0

    def _at_density(self, density: float) -> tuple:
        """``(expert accuracy, expert parameters, storage %, FREE outcomes)`` at `density` (cached)."""
        if density in self._by_density:
            return self._by_density[density]
        start = time.perf_counter()
        states, parameters, storage = {t: [] for t in self.tasks}, {}, {}
        for kind in self.kinds:
            experts = build_experts(self._vectors, kind, density, self.seed, self._svd_storage)
            table = storage_table(experts, self._numel)
            parameters[KIND_LABELS[kind]] = float(table["parameters_kept"].mean())
            storage[KIND_LABELS[kind]] = float(table["storage_bytes"].mean()) / self._model_bytes * 100.0
            for task, expert in zip(self.tasks, experts):
                states[task].append(expert_state(self._pretrained, expert))
        accuracy = {kind: {} for kind in self.kinds}
        if self.kinds:
            measured = evaluate_per_task(self.zoo, states, split=self.eval_split, limit=self.eval_per_task)
            for task, position, value in zip(measured["task"], measured["state"], measured["accuracy"]):
                accuracy[self.kinds[position]][task] = float(value)
        self.timings["experts_ms"] = 1e3 * (time.perf_counter() - start)
        free = None
        if "free" in self.methods:
            start = time.perf_counter()
            free, routed = self._outcomes("free", density)
            storage[METHOD_LABELS["free"]] = self._storage_of("free", routed)
            self.timings["free_ms"] = 1e3 * (time.perf_counter() - start)
        for method in self.methods:
            if method != "free":
                storage[METHOD_LABELS[method]] = self._fixed_storage[method]
        self._by_density[density] = (accuracy, parameters, storage, free)
        return self._by_density[density]

    def check(self, values):
        check_density(values["density"])
        p = values["router_accuracy"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ParameterError(f"router_accuracy must be a probability in [0, 1], got {p!r}")

    def compute(self, values) -> ExpertView:
        self.timings = {}
        density, p = float(values["density"]), float(values["router_accuracy"])
        with torch_threads(self.threads):
            accuracy, parameters, storage, free = self._at_density(density)
        start = time.perf_counter()
        outcomes = {METHOD_LABELS[m]: free if m == "free" else self._fixed_outcomes[m] for m in self.methods}
        routed, curve, measured = {}, {}, float("nan")
        if outcomes:
            table = robustness_table(outcomes, self.tasks, sorted(set(self.ps) | {p}), self.seed)
            means = table.groupby(["method", "p"], sort=False)["accuracy"].mean()
            curve = {m: [float(means[(m, q)]) for q in self.ps] for m in outcomes}
            at_p = table[table["p"] == p]
            routed = {m: dict(zip(rows["task"], rows["accuracy"].astype(float)))
                      for m, rows in at_p.groupby("method", sort=False)}
            first = at_p[at_p["method"] == next(iter(outcomes))]
            measured = float(first["router_accuracy"].mean())
        self.timings["routes_ms"] = 1e3 * (time.perf_counter() - start)
        return ExpertView(density, p, accuracy, parameters, storage, routed, curve, measured, self.ps)

    def _curve_errors(self, view: ExpertView, method: str) -> list[float]:
        counts = [self.eval_counts[t] for t in self.tasks]
        return [float(as_percent(mean_se([m] * len(counts), counts))) for m in view.routed_curve[method]]


class ExpertExplorer(Explorer):
    """Expert density and router accuracy sliders over a study (see the module docstring).

    Settings (``values``): ``density`` (fraction of entries kept, in (0, 1]; the slider walks
    :data:`DENSITY_STEPS`, :meth:`set` takes any fraction) and ``router_accuracy`` ``p`` in [0, 1].
    Accuracies are on the first `eval_per_task` images of each task's `eval_split`.
    `kinds` are expert kinds of :mod:`~freqmerge_viz.analysis.experts_curves`; `methods` routed
    merges; `routed_params` ``{method: parameters}`` (default :data:`DEFAULT_ROUTED_PARAMS`) or
    ``"chosen"`` for the zoo comparison's validation-chosen settings
    (:func:`~freqmerge_viz.analysis.selection.choose`, slow on first use). `seed` seeds the
    Bernoulli masks and the router; `ps` is the p grid of panel (b).
    """

    export_div_id = "freqmerge-expert-explorer"
    default_export = "expert_explorer.html"


    def __init__(self, zoo, *, density: float = 0.01, router_accuracy: float = 1.0,
                 methods: Sequence[str] = ("free", "emr", "twin"), kinds: Sequence[str] = DEFAULT_KINDS,
                 eval_split: str = "val", eval_per_task: int = 16, seed: int = 0, tasks: Sequence[str] | None = None,
                 routed_params: Mapping[str, Mapping] | str | None = None, ps: Sequence[float] = ROUTER_ACCURACIES,
                 threads: int | None = 1, debounce: float = DEBOUNCE_S, schedule: Schedule | None = None):
        super().__init__(debounce=debounce, schedule=schedule)
        self.model = ExpertModel(zoo, density=density, methods=methods, kinds=kinds, eval_split=eval_split,
                                 eval_per_task=eval_per_task, seed=seed, tasks=tasks, routed_params=routed_params,
                                 ps=ps, threads=threads)
        self._view: ExpertView | None = None
        self.values = {"density": density, "router_accuracy": router_accuracy}
        self._start()

    def routed(self, method: str, density: float | None = None):
        """The routed merge `method` as the explorer builds it (FREE's experts at the shown density)."""
        return self.model.routed(method, self.values["density"] if density is None else density)

    # ------------------------------------------------------------------ display
    def _build_controls(self) -> None:
        import ipywidgets as w

        wide = {"description_width": "initial"}
        density = w.SelectionSlider(options=self._density_options(self.values["density"]),
                                    value=self.values["density"], continuous_update=True, style=wide,
                                    description="expert density d (fraction of entries kept, log steps)",
                                    tooltip="fraction of each tensor's entries an expert keeps; stops are "
                                            "log-spaced, 10 per decade, 0.001 to 0.5",
                                    layout=w.Layout(width="560px"))
        router = w.FloatSlider(value=self.values["router_accuracy"], min=0.0, max=1.0, step=0.01,
                               readout_format=".2f", continuous_update=True, style=wide,
                               description="router accuracy p (share routed to own task)",
                               tooltip="RandomRouter: each input goes to its own task with probability p, "
                                       "else to a uniformly drawn other task",
                               layout=w.Layout(width="480px"))
        for name, control in (("density", density), ("router_accuracy", router)):
            control.add_class(f"fmv-{name.replace('_', '-')}")
            self._bind(name, control)

    @staticmethod
    def _density_options(density) -> list:
        values = set(DENSITY_STEPS)
        if isinstance(density, (int, float)) and not isinstance(density, bool):
            values.add(float(density))
        return [(f"{d:g}", d) for d in sorted(values)]

    def _sync_controls(self, values) -> None:
        slider = self.controls.get("density")
        density = values.get("density")
        if slider is not None and density not in [v for _, v in slider.options]:
            self._syncing = True
            try:
                slider.options = self._density_options(density)
            finally:
                self._syncing = False
        super()._sync_controls(values)

    def _build_figure(self) -> None:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], column_widths=[0.62, 0.38],
                            horizontal_spacing=0.1, vertical_spacing=0.15,
                            subplot_titles=("(a) expert only: θ_pre + e_t on task t",
                                            "(b) routed merges vs router accuracy p",
                                            "(c) extra storage per task"))
        self._trace = {}
        task_x = list(range(len(self.tasks)))
        errors = dict(type="data", array=[0.0] * len(self.tasks), visible=True, thickness=1, color="#333")
        for i, kind in enumerate(self.kinds):
            fig.add_trace(go.Bar(x=task_x, y=[0.0] * len(self.tasks), name=KIND_LABELS[kind],
                                 marker_color=COLOURS[i % len(COLOURS)], legendgroup="experts", error_y=errors,
                                 hovertemplate=f"{KIND_LABELS[kind]}: %{{y:.1f}}%<extra></extra>"),
                          row=1, col=1)
            self._trace[("expert", kind)] = len(fig.data) - 1
        for name, reference, symbol in (("fine-tuned", self.finetuned_accuracy, "line-ew-open"),
                                        ("no merge (pretrained + heads)", self.pretrained_accuracy, "x-thin-open")):
            fig.add_trace(go.Scatter(x=task_x, y=[float(as_percent(reference[t])) for t in self.tasks],
                                     mode="markers", name=name, legendgroup="experts",
                                     marker=dict(symbol=symbol, size=16, color="black", line=dict(width=2)),
                                     hovertemplate=f"{name}: %{{y:.1f}}%<extra></extra>"), row=1, col=1)
        ps = list(self.ps)
        for (label, (mean, _)), dash in zip(self.reference_means().items(), ("dot", "dash", "solid")):
            fig.add_trace(go.Scatter(x=[ps[0], ps[-1]], y=[mean, mean], mode="lines", name=f"{label}, mean",
                                     line=dict(color="#555", dash=dash, width=1.2), legendgroup="references",
                                     hovertemplate=f"{label}: %{{y:.1f}}%<extra></extra>"), row=2, col=1)
        for i, method in enumerate(self.methods):
            label, colour = METHOD_LABELS[method], COLOURS[(i + 3) % len(COLOURS)]
            fig.add_trace(go.Scatter(x=ps, y=[0.0] * len(ps), mode="lines+markers",
                                     name=f"{label} ({self.settings_label(method)})",
                                     line=dict(color=colour), marker=dict(size=5), legendgroup="routed",
                                     error_y=dict(type="data", array=[0.0] * len(ps), visible=True, thickness=1,
                                                  width=2, color=colour),
                                     hovertemplate=f"{label}, p %{{x:.2f}}: mean %{{y:.1f}}%<extra></extra>"),
                          row=2, col=1)
            self._trace[("curve", method)] = len(fig.data) - 1
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="at p", showlegend=False,
                                 marker=dict(size=12, symbol="diamond", color="black"),
                                 hovertemplate="%{text} at p %{x:.2f}: %{y:.1f}%<extra></extra>"), row=2, col=1)
        self._trace["at_p"] = len(fig.data) - 1
        fig.add_trace(go.Bar(x=[], y=[], name="storage", marker_color="#9e9e9e", showlegend=False,
                             texttemplate="%{y:.2f}%", textposition="outside",
                             hovertemplate="%{customdata}: %{y:.3f}% of one float32 model<extra></extra>"),
                      row=2, col=2)
        self._trace["storage"] = len(fig.data) - 1
        fig.update_yaxes(title_text="accuracy (%)", range=[0, 105], row=1, col=1)
        fig.update_xaxes(tickvals=task_x, ticktext=list(self.tasks), row=1, col=1)
        fig.update_xaxes(title_text="router accuracy p", range=[-0.03, 1.03], row=2, col=1)
        fig.update_yaxes(title_text="mean accuracy (%)", range=[0, 105], row=2, col=1)
        fig.update_xaxes(tickangle=25, row=2, col=2)
        fig.update_yaxes(title_text="% of one float32 model", rangemode="tozero", row=2, col=2)
        fig.update_layout(height=820, template="plotly_white", barmode="group", bargap=0.2,
                          margin=dict(l=60, r=30, t=80, b=90), legend=dict(font=dict(size=11), x=1.02, y=1.0),
                          title=dict(text="", font=dict(size=13)))
        self.figure = fig

    def _build_widget(self) -> None:
        import ipywidgets as w

        c = self.controls
        self.summary = w.HTML(value="")
        self.summary.add_class("fmv-summary")
        self.widget = w.VBox([c["density"], c["router_accuracy"], w.HBox([self.export_path, self.export_button]),
                              *self._display_parts()], layout=w.Layout(width="100%"))
        self.widget.add_class("fmv-expert-explorer")

    def _title(self, view: ExpertView) -> str:
        return (f"expert density d = {view.density:g} · router accuracy p = {view.router_accuracy:.2f} "
                f"(measured {view.measured_router_accuracy:.3f}) · {self.eval_description}, ±1 SE")


    def _draw(self, view: ExpertView) -> None:
        start = time.perf_counter()
        d = self.figure.data
        with self.figure.batch_update():
            for kind in self.kinds:
                values = [view.expert_accuracy[kind][t] for t in self.tasks]
                trace = d[self._trace[("expert", kind)]]
                trace.y = [float(v) for v in as_percent(values)]
                trace.error_y.array = [float(as_percent(binomial_se(v, self.eval_counts[t])))
                                       for v, t in zip(values, self.tasks)]
            labels = list(view.storage_percent)
            d[self._trace["storage"]].x = list(range(len(labels)))
            d[self._trace["storage"]].y = [view.storage_percent[k] for k in labels]
            self.figure.layout.xaxis3.tickvals = list(range(len(labels)))
            self.figure.layout.xaxis3.ticktext = [SHORT_LABELS.get(k, k) for k in labels]
            d[self._trace["storage"]].customdata = labels
            for method in self.methods:
                label = METHOD_LABELS[method]
                trace = d[self._trace[("curve", method)]]
                trace.y = [float(v) for v in as_percent(view.routed_curve[label])]
                trace.error_y.array = self._curve_errors(view, label)
            labels = [METHOD_LABELS[m] for m in self.methods]
            marker = d[self._trace["at_p"]]
            marker.x = [view.router_accuracy] * len(labels)
            marker.y = [float(as_percent(np.mean(list(view.routed_accuracy[m].values())))) for m in labels]
            marker.text = labels
            self.figure.layout.title.text = html.escape(self._title(view), quote=False)
        self.summary.value = _summary_html(view, self.tasks, self.reference_means(), self.pane.revision + 1)
        self._view = view
        self.last_timings["draw_ms"] = 1e3 * (time.perf_counter() - start)

    def _displayed(self) -> dict:
        d = self.figure.data
        view = self._view
        expert = {kind: {t: float(view.expert_accuracy[kind][t]) for t in self.tasks} for kind in self.kinds}
        marker = d[self._trace["at_p"]]
        storage = d[self._trace["storage"]]
        return {"expert_accuracy": expert,
                "expert_mean_accuracy": {k: float(np.mean(list(v.values()))) for k, v in expert.items()},
                "expert_parameters": dict(view.expert_parameters),
                "routed_mean_accuracy": {str(m): float(np.mean(list(view.routed_accuracy[m].values())))
                                         for m in (marker.text or ())},
                "routed_accuracy": {m: dict(v) for m, v in view.routed_accuracy.items()},
                "routed_curve": {m: list(v) for m, v in view.routed_curve.items()}, "ps": list(view.ps),
                "measured_router_accuracy": view.measured_router_accuracy,
                "storage_percent": {str(k): float(v) for k, v in zip(storage.customdata, storage.y)},
                "finetuned_accuracy": dict(self.finetuned_accuracy),
                "pretrained_accuracy": dict(self.pretrained_accuracy),
                "task_arithmetic_accuracy": dict(self.task_arithmetic_accuracy),
                "task_arithmetic_scaling": self.ta_scaling, "eval_counts": dict(self.eval_counts)}

    def static_figure(self):
        """The current view as a matplotlib figure (what :meth:`export` writes as PNG/SVG/PDF)."""
        from ..plots.core import new_figure

        view = self._view
        fig, axes = new_figure(2, 2, size=(14.0, 9.0), width_ratios=[1.5, 1.0])
        gs = axes[0, 0].get_gridspec()
        for ax in axes[0]:
            ax.remove()
        ax_e = fig.add_subplot(gs[0, :])
        ax_r, ax_s = axes[1]
        x = np.arange(len(self.tasks))
        width = 0.8 / max(1, len(self.kinds))
        for i, kind in enumerate(self.kinds):
            values = [view.expert_accuracy[kind][t] for t in self.tasks]
            errors = [as_percent(binomial_se(v, self.eval_counts[t])) for v, t in zip(values, self.tasks)]
            ax_e.bar(x + (i - (len(self.kinds) - 1) / 2) * width, as_percent(values), width, yerr=errors,
                     color=COLOURS[i % len(COLOURS)], label=KIND_LABELS[kind], ecolor="#333", capsize=1.5)
        ax_e.scatter(x, as_percent([self.finetuned_accuracy[t] for t in self.tasks]), marker="_", s=300,
                     color="black", label="fine-tuned", zorder=3)
        ax_e.scatter(x, as_percent([self.pretrained_accuracy[t] for t in self.tasks]), marker="x", s=30,
                     color="black", label="no merge (pretrained + heads)", zorder=3)
        ax_e.set_xticks(x, self.tasks, fontsize=8)
        ax_e.set_ylim(0, 105)
        ax_e.set_ylabel("accuracy (%)")
        ax_e.set_title(f"(a) expert only at d = {view.density:g} ({self.eval_description}, ±1 SE)", fontsize=9)
        ax_e.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        for (label, (mean, _)), style in zip(self.reference_means().items(), (":", "--", "-")):
            ax_r.axhline(mean, color="#555", lw=1.0, ls=style, label=f"{label} {mean:.1f}%")
        for i, method in enumerate(self.methods):
            label = METHOD_LABELS[method]
            colour = COLOURS[(i + 3) % len(COLOURS)]
            ax_r.errorbar(view.ps, as_percent(view.routed_curve[label]), yerr=self._curve_errors(view, label),
                          marker=".", color=colour, label=label, capsize=2)
            at_p = float(as_percent(np.mean(list(view.routed_accuracy[label].values()))))
            ax_r.scatter([view.router_accuracy], [at_p], marker="D", color=colour, edgecolors="black", zorder=3)
        ax_r.axvline(view.router_accuracy, color="grey", lw=0.8, ls=":")
        ax_r.set_xlim(-0.03, 1.03)
        ax_r.set_ylim(0, 105)
        ax_r.set_xlabel("router accuracy p")
        ax_r.set_ylabel("mean accuracy over tasks (%)")
        ax_r.set_title(f"(b) routed merges, p = {view.router_accuracy:.2f}", fontsize=9)
        ax_r.legend(fontsize=7, loc="lower right")
        labels = list(view.storage_percent)
        bars = ax_s.bar(range(len(labels)), [view.storage_percent[k] for k in labels], color="#9e9e9e")
        for bar in bars:
            ax_s.annotate(f"{bar.get_height():.2f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
        ax_s.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax_s.set_ylabel("% of one float32 model")
        ax_s.set_title("(c) extra storage per task", fontsize=9)
        fig.suptitle(self._title(view), fontsize=10)
        return fig


def _summary_html(view: ExpertView, tasks: Sequence[str], references: Mapping[str, tuple[float, float]],
                  revision: int) -> str:
    routed = " ".join(
        f'<span class="fmv-routed-accuracy" data-method="{html.escape(m)}" '
        f'data-value="{np.mean(list(a.values())):.6f}">{html.escape(m)} {100 * np.mean(list(a.values())):.1f}%</span>'
        for m, a in view.routed_accuracy.items())
    experts = " ".join(
        f'<span class="fmv-expert-accuracy" data-kind="{html.escape(k)}" '
        f'data-value="{np.mean([a[t] for t in tasks]):.6f}">{html.escape(KIND_LABELS[k])} '
        f'{100 * np.mean([a[t] for t in tasks]):.1f}%</span>' for k, a in view.expert_accuracy.items())
    storage = " ".join(
        f'<span class="fmv-storage" data-label="{html.escape(k)}" data-value="{v:.6f}">{html.escape(k)} '
        f'{v:.2f}%</span>' for k, v in view.storage_percent.items())
    refs = " · ".join(f"{html.escape(label)} {mean:.1f} ± {error:.1f}%" for label, (mean, error) in references.items())
    return (f'<div class="fmv-expert-summary" data-revision="{revision}">at d = <span class="fmv-density-value" '
            f'data-value="{view.density:g}">{view.density:g}</span>, p = <span class="fmv-router-accuracy-value" '
            f'data-value="{view.router_accuracy:.6f}">{view.router_accuracy:.2f}</span> (measured '
            f'{view.measured_router_accuracy:.3f})<br><b>routed, mean accuracy:</b> {routed}<br>'
            f'<b>expert only, mean accuracy:</b> {experts}<br><b>references:</b> {refs}<br>'
            f'<b>extra storage per task:</b> {storage}</div>')
