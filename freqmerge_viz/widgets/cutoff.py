"""CutoffExplorer: what a frequency cutoff keeps of a task vector, and what it does to the merge.

One view, built once and updated in place: the centred log-amplitude spectrum of one task
vector matrix with the filter's mask over it, the across-task amplitude variance (the
paper's Table 1 measure, over all bins and over the bins the filter keeps), and the
merged model's accuracy per task on a fixed evaluation batch.

Every number comes from the library: the merge from :func:`~freqmerge_viz.merge`, the
mask from the method's :class:`~freqmerge_viz.FilterSpec`, the variance from
:func:`~freqmerge_viz.amplitude_variance` with :func:`~freqmerge_viz.method_transform`, the
accuracies from :mod:`~freqmerge_viz.engine` evaluators. An update recomputes only what
its inputs changed: a cutoff change merges and evaluates once and redraws the mask and the
variance; the spectra of each matrix, the task vectors, the pretrained tensors and the
evaluation batches are computed once.
"""

from __future__ import annotations

import contextlib
import html
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..backend import resolve_device
from ..errors import ParameterError, check_choice, check_positive_int
from ..io import load_state
from ..methods import get_method, list_methods, merge, method_transform
from ..methods.fr import filter_spec
from ..metrics import amplitude_variance
from ..spectral import as_matrix, log_amplitude_spectrum
from ..taskvector import TaskVector
from .base import DEBOUNCE_S, Explorer, Schedule

CONTROLLED = ("cutoff", "upper_cutoff", "kind", "band", "scaling")
"""Method parameters that the explorer's controls set."""
FIXED_FILTER = {"units": "normalized", "filter_convention": "paper", "filter_scope": "matrices"}
"""Filter parameters the explorer holds fixed: the cutoff slider is a normalised radius."""
COMBINE_ONLY = ("scaling",)
"""Parameters that act on the merged sum only, not on the per-task step the variance measures."""
VARIANCE_SCOPES = ("matrix", "all")
CACHE_SIZE = 256
"""Merged accuracies and variances kept per explorer (a slider walked back is not recomputed)."""

SPECTRUM, MASK, VARIANCE, ACCURACY, FINETUNED = range(5)
"""Trace indices in :attr:`CutoffExplorer.figure`."""
VARIANCE_LABELS = ("unfiltered (all bins)", "filtered: all bins", "filtered: kept bins")

Evaluate = Callable[[Mapping[str, torch.Tensor]], Mapping[str, float]]


def cutoff_methods() -> list[str]:
    """Registered merge methods that declare a ``cutoff`` parameter (what the explorer can show)."""
    return [name for name in list_methods() if any(p.name == "cutoff" for p in get_method(name).params)]


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with `threads` torch intra-op threads (``None``: leave torch's setting)."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class CutoffView:
    """Everything one update shows. Arrays are shared with the explorer's caches: read only."""

    key: str
    task: str
    band: str
    spectrum: np.ndarray
    mask: np.ndarray
    variance: tuple[float, float, float]
    normalized_variance: tuple[float, float, float]
    kept_fraction: float
    accuracy: dict
    title: str


def _frozen(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


class _LRU(OrderedDict):
    def get_or(self, key, compute: Callable[[], Any], counter: Counter, name: str):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = compute()
        counter[name] += 1
        self[key] = value
        if len(self) > CACHE_SIZE:
            self.popitem(last=False)
        return value


class CutoffExplorer(Explorer):
    """Sliders for a cutoff-based merge (FR and its compositions) over a zoo, or any models.

    `source` is a zoo (:func:`freqmerge_viz.zoo.load`) or ``(pretrained, finetuned, evaluator)``:
    ``finetuned`` a ``{task: state}`` mapping (or a list, tasks ``task0…``), ``evaluator``
    either ``{task: engine.Evaluator}`` or a function ``state -> {task: accuracy in [0, 1]}``.
    With a zoo, accuracies are measured on the first `eval_per_task` images of each task's
    `eval_split` with the engine (``evaluate_params`` + ``zoo_forward``, mode `eval_mode`).

    Settings (``values``, changed by the controls or :meth:`set`): ``cutoff`` and
    ``upper_cutoff`` (normalised radius in [0, 1]: 0 = DC, 1 = the corner of the centred
    spectrum; the upper one is used by ``band="band"`` only), ``kind``, ``band``,
    ``scaling``, ``method`` (one of :func:`cutoff_methods`), ``key`` (a matrix: a task vector
    entry with 2 or more dimensions, seen as :func:`~freqmerge_viz.as_matrix` sees it),
    ``task`` (whose spectrum is drawn) and ``variance_over`` (``"matrix"``: the chosen
    matrix; ``"all"``: the mean over every matrix, which adds about 0.4 s to each filter
    change on a busy 2-core CPU).

    `params` are fixed parameters of the method besides those (e.g. ``coefficients``,
    ``order``); the filter stays the paper's centred one in normalised units on every matrix.
    `threads` torch CPU threads run each update (default 1: an update is many small
    tensors, where a second thread costs more than it saves on a busy 2-core machine);
    ``None`` keeps torch's setting.
    """

    export_div_id = "freqmerge-cutoff-explorer"
    default_export = "cutoff_explorer.html"

    def __init__(self, source, *, key: str | None = None, task: str | None = None, method: str = "fr",
                 cutoff: float | None = None, eval_split: str = "val", eval_per_task: int = 16,
                 eval_mode: str = "loop", device: torch.device | str | None = None,
                 params: Mapping[str, Any] | None = None, threads: int | None = 1,
                 debounce: float = DEBOUNCE_S, schedule: Schedule | None = None):
        super().__init__(debounce=debounce, schedule=schedule)
        self.device = resolve_device(device)
        self.threads = threads
        self.cache_stats: Counter = Counter()
        self.methods = cutoff_methods()
        check_choice("method", method, self.methods)
        self.fixed_params = self._check_fixed(params or {})
        with torch_threads(threads):
            self._load_source(source, eval_split, eval_per_task, eval_mode)
            self._spectra: dict[str, np.ndarray] = {}
            self._unfiltered: dict[tuple, tuple] = {}
            self._accuracies = _LRU()
            self._variances = _LRU()
            self.finetuned_accuracy = {t: self._accuracy_of(self._finetuned[t], t) for t in self.eval_tasks
                                       if t in self._finetuned}
        self.matrix_keys = [k for k in self._vectors[0] if len(self._vectors[0].shape_of(k)) >= 2]
        if not self.matrix_keys:
            raise ParameterError("the task vectors hold no matrix (entry with 2 or more dimensions)")
        key = key if key is not None else self._default_key()
        task = task if task is not None else self.tasks[0]
        defaults = {p.name: p.default for p in get_method(method).params}
        self.values = {"cutoff": defaults["cutoff"] if cutoff is None else cutoff,
                       "upper_cutoff": 0.5, "kind": defaults.get("kind", "ideal"),
                       "band": defaults.get("band", "high"), "scaling": defaults.get("scaling", 1.0),
                       "method": method, "key": key, "task": task, "variance_over": "matrix"}
        self._view: CutoffView | None = None
        self._build_controls(method)
        self._build_figure()
        self._build_widget()
        self._apply({}, raise_errors=True)

    # ------------------------------------------------------------------ inputs
    def _check_fixed(self, params: Mapping[str, Any]) -> dict:
        clash = sorted(set(params) & (set(CONTROLLED) | {"method"}))
        if clash:
            raise ParameterError(f"CutoffExplorer: {clash} are set by the controls (pass them to set())")
        changed = sorted(k for k, v in FIXED_FILTER.items() if k in params and params[k] != v)
        if changed:
            raise ParameterError(f"CutoffExplorer shows the paper's filter in normalised units on every "
                                 f"matrix; it cannot change {changed}")
        return dict(params)

    def _load_source(self, source, eval_split: str, eval_per_task: int, eval_mode: str) -> None:
        from .. import engine

        if isinstance(source, tuple):
            if len(source) != 3:
                raise ParameterError("give a zoo or a tuple (pretrained, finetuned, evaluator)")
            pretrained, finetuned, evaluator = source
            if not isinstance(finetuned, Mapping):
                finetuned = {f"task{i}": state for i, state in enumerate(finetuned)}
            self.eval_description = "the evaluator's data"
            self.eval_per_task = None
        elif hasattr(source, "finetuned") and hasattr(source, "model_config"):
            check_positive_int("eval_per_task", eval_per_task)
            pretrained, finetuned = source.pretrained, dict(source.finetuned)
            evaluator = {t: engine.zoo_evaluator(source, t, eval_split, eval_per_task, mode=eval_mode,
                                                 device=self.device) for t in source.tasks}
            self.eval_description = f"first {eval_per_task} {eval_split} images of each task"
            self.eval_per_task = eval_per_task
        else:
            raise ParameterError(f"CutoffExplorer needs a zoo or (pretrained, finetuned, evaluator), "
                                 f"got {type(source).__name__}")
        if not finetuned:
            raise ParameterError("CutoffExplorer needs at least one fine-tuned model")
        if not (callable(evaluator) or isinstance(evaluator, Mapping)):
            raise ParameterError("evaluator must be {task: Evaluator} or a function state -> {task: accuracy}")
        self._sources = [source] if not isinstance(source, tuple) else [pretrained, *finetuned.values()]
        pre = load_state(pretrained)
        self.tasks = [str(t) for t in finetuned]
        self._pretrained = {k: pre[k].to(self.device) for k in pre}
        self._finetuned = {str(t): state for t, state in finetuned.items()}
        self._vectors = [TaskVector.from_states(self._pretrained, state, name=str(t), device=self.device).materialize()
                         for t, state in finetuned.items()]
        self._evaluator = evaluator
        if isinstance(evaluator, Mapping):
            self.eval_tasks = [str(t) for t in evaluator]
        else:
            self.eval_tasks = list(self._accuracy_dict(self._pretrained))

    def _default_key(self) -> str:
        for key in self.matrix_keys:
            shape = self._vectors[0].shape_of(key)
            if shape[0] > 1 and math.prod(shape[1:]) > 1:
                return key
        return self.matrix_keys[0]

    # ------------------------------------------------------------------ computations
    def _accuracy_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        if isinstance(self._evaluator, Mapping):
            return {str(t): float(ev([state]).accuracy[0]) for t, ev in self._evaluator.items()}
        return {str(t): float(a) for t, a in self._evaluator(state).items()}

    def _accuracy_of(self, state, task: str) -> float:
        if isinstance(self._evaluator, Mapping):
            return float(self._evaluator[task]([state]).accuracy[0])
        return float(self._evaluator(state)[task])

    def method_params(self, values: Mapping[str, Any] | None = None) -> dict:
        """The parameters handed to :func:`~freqmerge_viz.merge` for `values` (default: the current)."""
        values = self.values if values is None else values
        method = values["method"]
        if method not in self.methods:
            raise ParameterError(f"method must be one with a cutoff ({', '.join(self.methods)}); got {method!r}")
        declared = {p.name for p in get_method(method).params}
        params = {**{k: v for k, v in FIXED_FILTER.items() if k in declared}, **self.fixed_params}
        for name in CONTROLLED:
            if name in declared and (name != "upper_cutoff" or values["band"] == "band"):
                params[name] = values[name]
        return params

    def _spectrum(self, key: str) -> np.ndarray:
        if key not in self._spectra:
            stack = torch.stack([as_matrix(tv[key]) for tv in self._vectors])
            self._spectra[key] = log_amplitude_spectrum(stack).float().cpu().numpy()
            self.cache_stats["spectra"] += 1
        return self._spectra[key]

    def _merged_accuracy(self, method: str, params: dict) -> dict[str, float]:
        def compute():
            start = time.perf_counter()
            merged = merge(method, self._pretrained, self._vectors, device=self.device, **params)
            state = {k: merged[k] for k in merged}
            self.last_timings["merge_ms"] = 1e3 * (time.perf_counter() - start)
            start = time.perf_counter()
            accuracy = self._accuracy_dict(state)
            self.last_timings["evaluate_ms"] = 1e3 * (time.perf_counter() - start)
            return accuracy

        return self._accuracies.get_or((method, _frozen(params)), compute, self.cache_stats, "merges")

    def _variances_for(self, method: str, params: dict, spec, key: str, scope: str):
        subset = self._vectors if scope == "all" else [{key: tv[key]} for tv in self._vectors]
        where = key if scope == "matrix" else None
        if (scope, where) not in self._unfiltered:
            self._unfiltered[(scope, where)] = _summary(amplitude_variance(subset, normalize=True,
                                                                           device=self.device))
        transform_params = {k: v for k, v in params.items() if k not in COMBINE_ONLY}

        def compute():
            start = time.perf_counter()
            transform = method_transform(method, len(self._vectors), **transform_params)
            filtered = amplitude_variance(subset, transform=transform, normalize=True, device=self.device)
            kept = amplitude_variance(subset, transform=transform, within=spec, normalize=True, device=self.device)
            self.last_timings["variance_ms"] = 1e3 * (time.perf_counter() - start)
            return _summary(filtered), _summary(kept), dict(zip(kept.per_matrix["key"],
                                                                kept.per_matrix["kept_fraction"]))

        filtered, kept, fractions = self._variances.get_or((method, _frozen(transform_params), scope, where),
                                                           compute, self.cache_stats, "variances")
        return self._unfiltered[(scope, where)], filtered, kept, fractions[key]

    def _check(self, values):
        check_choice("key", values["key"], self.matrix_keys)
        check_choice("task", values["task"], self.tasks)
        check_choice("variance_over", values["variance_over"], VARIANCE_SCOPES)

    def _compute(self, values) -> CutoffView:
        with torch_threads(self.threads):
            method, key = values["method"], values["key"]
            params = self.method_params(values)
            spec = filter_spec(get_method(method).resolve(params, len(self._vectors)))
            spectra = self._spectrum(key)
            accuracy = self._merged_accuracy(method, params)
            unfiltered, filtered, kept, fraction = self._variances_for(method, params, spec, key,
                                                                       values["variance_over"])
            mask = spec.mask(spectra.shape[-2:]).cpu().numpy()
        task_index = self.tasks.index(values["task"])
        title = f"{key} · {values['task']}: ln|F(v)|, centred; kept {100 * fraction:.1f}% of bins"
        return CutoffView(key, values["task"], values["band"], spectra[task_index], mask,
                          (unfiltered[0], filtered[0], kept[0]), (unfiltered[1], filtered[1], kept[1]),
                          float(fraction), accuracy, title)

    # ------------------------------------------------------------------ display
    def _build_controls(self, method: str) -> None:
        import ipywidgets as w

        wide = {"description_width": "initial"}
        params = {p.name: p for p in get_method(method).params}
        v = self.values
        radius = "normalised radius ρ in [0, 1]: 0 = DC, 1 = corner of the centred spectrum"
        controls = {
            "cutoff": w.FloatSlider(value=v["cutoff"], min=0.0, max=1.0, step=0.005, readout_format=".3f",
                                    description="cutoff (normalised radius ρ)", tooltip=radius, style=wide,
                                    continuous_update=True, layout=w.Layout(width="420px")),
            "upper_cutoff": w.FloatSlider(value=v["upper_cutoff"], min=0.0, max=1.0, step=0.005,
                                          readout_format=".3f", description="upper cutoff ρ (band-pass)",
                                          tooltip=radius, style=wide, layout=w.Layout(width="380px")),
            "method": w.Dropdown(options=self.methods, value=v["method"], description="method"),
            "kind": w.Dropdown(options=list(params["kind"].choices), value=v["kind"], description="filter"),
            "band": w.Dropdown(options=list(params["band"].choices), value=v["band"], description="band"),
            "scaling": w.FloatSlider(value=v["scaling"], min=0.0, max=max(2.0, 2 * float(v["scaling"])),
                                     step=0.01, description="scaling", tooltip=params["scaling"].doc,
                                     readout_format=".2f"),
            "key": w.Dropdown(options=self.matrix_keys, value=v["key"], description="matrix",
                              layout=w.Layout(width="340px")),
            "task": w.Dropdown(options=self.tasks, value=v["task"], description="task"),
            "variance_over": w.Dropdown(options=[("this matrix", "matrix"), ("all matrices (slower)", "all")],
                                        value=v["variance_over"], description="variance over", style=wide),
        }
        for name, control in controls.items():
            control.add_class(f"fmv-{name.replace('_', '-')}")
            self._bind(name, control)

    def _build_figure(self) -> None:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        base = make_subplots(rows=1, cols=3, column_widths=[0.4, 0.2, 0.4], horizontal_spacing=0.12,
                             subplot_titles=("spectrum", "amplitude variance", "merged accuracy"))
        fig = base
        fig.add_trace(go.Heatmap(z=[[0.0]], colorscale="Magma", name="ln|F(v)|",
                                 colorbar=dict(orientation="h", x=0.16, xanchor="center", y=-0.34, len=0.32,
                                               thickness=10, title=dict(text="ln|F|", side="right")),
                                 hovertemplate="γ %{x}, η %{y}: ln|F| %{z:.2f}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Contour(z=[[1.0]], zmin=0.0, zmax=1.0, showscale=False, name="filter gain",
                                 contours=dict(start=0.5, end=0.5, size=1.0, coloring="fill"),
                                 colorscale=[[0.0, "rgba(20,20,20,0.55)"], [1.0, "rgba(0,0,0,0)"]],
                                 line=dict(color="cyan", width=1.5),
                                 hovertemplate="γ %{x}, η %{y}: gain %{z:.2f}<extra></extra>"), row=1, col=1)
        # Bars sit at integer x with the labels as tick text: string-valued trace arrays did not
        # reach the browser through FigureWidget (seen in the real-browser test), layout ticks do.
        n_tasks = len(self.eval_tasks)
        fig.add_trace(go.Bar(x=list(range(3)), y=[0.0] * 3, customdata=[0.0] * 3, name="variance",
                             marker_color=["#9e9e9e", "#4c78a8", "#f58518"], textposition="outside",
                             hovertemplate="%{y:.4g} (÷ mean amplitude: %{customdata:.4g})<extra></extra>"),
                      row=1, col=2)
        fig.add_trace(go.Bar(x=list(range(n_tasks)), y=[0.0] * n_tasks, name="merged",
                             marker_color="#4c78a8", textposition="outside", texttemplate="%{y:.2f}"),
                      row=1, col=3)
        fig.add_trace(go.Scatter(x=[self.eval_tasks.index(t) for t in self.finetuned_accuracy],
                                 y=list(self.finetuned_accuracy.values()),
                                 mode="markers", name="fine-tuned", marker=dict(symbol="line-ew-open", size=18,
                                                                                color="black")),
                      row=1, col=3)
        fig.update_xaxes(tickvals=list(range(3)), ticktext=list(VARIANCE_LABELS), row=1, col=2)
        fig.update_xaxes(tickvals=list(range(n_tasks)), ticktext=list(self.eval_tasks), row=1, col=3)
        fig.update_xaxes(title_text="column frequency γ (bins)", row=1, col=1)
        fig.update_yaxes(title_text="row frequency η (bins)", row=1, col=1)
        fig.update_xaxes(tickangle=30, row=1, col=2)
        fig.update_yaxes(title_text="mean variance over bins", row=1, col=2)
        fig.update_yaxes(title_text=f"accuracy, {self.eval_description}", title_font_size=10, range=[0, 1.08],
                         row=1, col=3)
        fig.update_layout(height=460, template="plotly_white", showlegend=False, bargap=0.25,
                          margin=dict(l=60, r=20, t=80, b=130), title=dict(text="", font=dict(size=12)))
        self.figure = go.FigureWidget(fig)

    def _build_widget(self) -> None:
        import ipywidgets as w

        c = self.controls
        self.summary = w.HTML(value="")
        self.summary.add_class("fmv-summary")
        self.widget = w.VBox([
            w.HBox([c["cutoff"], c["upper_cutoff"]]),
            w.HBox([c["method"], c["kind"], c["band"], c["scaling"]]),
            w.HBox([c["key"], c["task"], c["variance_over"]]),
            w.HBox([self.export_path, self.export_button]),
            self.status, self.summary, self.figure,
        ])
        self.widget.add_class("fmv-cutoff-explorer")

    def _draw(self, view: CutoffView) -> None:
        start = time.perf_counter()
        old = self._view
        d = self.figure.data
        with self.figure.batch_update():
            if old is None or old.spectrum is not view.spectrum:
                h, w = view.spectrum.shape
                x = np.arange(-(w // 2), (w + 1) // 2)
                y = np.arange(-(h // 2), (h + 1) // 2)
                for trace in (d[SPECTRUM], d[MASK]):
                    trace.x, trace.y = x, y
                d[SPECTRUM].z = view.spectrum
            if old is None or old.mask is not view.mask:
                d[MASK].z = view.mask
            if old is None or (old.variance, old.normalized_variance) != (view.variance, view.normalized_variance):
                d[VARIANCE].y = list(view.variance)
                d[VARIANCE].customdata = list(view.normalized_variance)
                d[VARIANCE].text = [f"{v:.3g}" for v in view.variance]
            if old is None or old.accuracy is not view.accuracy:
                d[ACCURACY].y = [view.accuracy[t] for t in self.eval_tasks]
            if old is None or old.title != view.title:
                self.figure.layout.title.text = html.escape(view.title)
        self.controls["upper_cutoff"].disabled = view.band != "band"
        self.summary.value = _summary_html(view, self.eval_tasks, self.eval_description)
        self._view = view
        self.last_timings["draw_ms"] = 1e3 * (time.perf_counter() - start)

    def _displayed(self) -> dict:
        d = self.figure.data
        accuracy = {str(t): float(a) for t, a in zip(self.eval_tasks, d[ACCURACY].y)}
        return {"accuracy": accuracy, "mean_accuracy": float(np.mean(list(accuracy.values()))),
                "amplitude_variance": dict(zip(("unfiltered", "all_bins", "kept_bins"), map(float, d[VARIANCE].y))),
                "normalized_amplitude_variance": dict(zip(("unfiltered", "all_bins", "kept_bins"),
                                                          map(float, d[VARIANCE].customdata))),
                "kept_fraction": self._view.kept_fraction if self._view else float("nan"),
                "finetuned_accuracy": dict(self.finetuned_accuracy)}

    def static_figure(self):
        """The current view as a matplotlib figure (what :meth:`export` writes as PNG/SVG/PDF)."""
        from ..plots.core import new_figure

        view = self._view
        fig, axes = new_figure(1, 3, size=(14.0, 4.4), width_ratios=[1.3, 0.8, 1.3])
        ax_spec, ax_var, ax_acc = axes[0]
        h, w = view.spectrum.shape
        extent = (-(w // 2) - 0.5, (w - 1) // 2 + 0.5, -(h // 2) - 0.5, (h - 1) // 2 + 0.5)
        image = ax_spec.imshow(view.spectrum, cmap="magma", origin="lower", aspect="auto", extent=extent,
                               interpolation="nearest")
        ax_spec.imshow(1.0 - view.mask, cmap="Greys", vmin=0.0, vmax=1.8, alpha=0.55 * (1.0 - view.mask),
                       origin="lower", aspect="auto", extent=extent, interpolation="nearest")
        if view.mask.min() < 0.5 < view.mask.max():
            ax_spec.contour(np.arange(-(w // 2), (w + 1) // 2), np.arange(-(h // 2), (h + 1) // 2), view.mask,
                            levels=[0.5], colors="cyan", linewidths=1.0)
        fig.colorbar(image, ax=ax_spec, label="ln |F(v)|")
        ax_spec.set_title(view.title, fontsize=8)
        ax_spec.set_xlabel("column frequency γ (bins)")
        ax_spec.set_ylabel("row frequency η (bins)")
        bars = ax_var.bar(range(3), view.variance, color=["#9e9e9e", "#4c78a8", "#f58518"])
        for bar, norm in zip(bars, view.normalized_variance):
            ax_var.annotate(f"÷mean|F| {norm:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax_var.set_xticks(range(3), [label.replace(": ", ":\n") for label in VARIANCE_LABELS], fontsize=7)
        ax_var.set_ylabel("mean across-task amplitude variance")
        scope = "this matrix" if self.values["variance_over"] == "matrix" else "mean over all matrices"
        ax_var.set_title(f"amplitude variance ({scope})", fontsize=9)
        accuracies = [view.accuracy[t] for t in self.eval_tasks]
        ax_acc.bar(range(len(accuracies)), accuracies, color="#4c78a8", label="merged")
        reference = [self.finetuned_accuracy.get(t, np.nan) for t in self.eval_tasks]
        ax_acc.scatter(range(len(reference)), reference, marker="_", s=300, color="black", label="fine-tuned")
        ax_acc.set_xticks(range(len(accuracies)), self.eval_tasks, rotation=30, ha="right", fontsize=8)
        ax_acc.set_ylim(0, 1.05)
        ax_acc.set_ylabel("accuracy")
        ax_acc.set_title(f"merged accuracy, mean {np.mean(accuracies):.3f} ({self.eval_description})", fontsize=9)
        ax_acc.legend(fontsize=7, loc="lower right")
        v = self.values
        band = f"[{v['cutoff']:.3f}, {v['upper_cutoff']:.3f})" if v["band"] == "band" else f"{v['cutoff']:.3f}"
        fig.suptitle(f"{v['method']}: {v['kind']} {v['band']}-pass, cutoff ρ = {band}, scaling {v['scaling']:.2f}",
                     fontsize=10)
        return fig


def _summary(result) -> tuple[float, float]:
    """(mean raw variance over the result's matrices, the result's normalised mean)."""
    return float(result.per_matrix["variance"].mean()), float(result.mean)


def _summary_html(view: CutoffView, tasks: Sequence[str], description: str) -> str:
    mean = float(np.mean([view.accuracy[t] for t in tasks]))
    per_task = " ".join(f'<span class="fmv-task-accuracy" data-task="{html.escape(t)}" '
                        f'data-value="{view.accuracy[t]:.6f}">{html.escape(t)} {view.accuracy[t]:.3f}</span>'
                        for t in tasks)
    return (f'<div class="fmv-accuracy"><b>mean merged accuracy <span class="fmv-mean-accuracy" '
            f'data-value="{mean:.6f}">{mean:.3f}</span></b> on the {html.escape(description)} · kept '
            f'{100 * view.kept_fraction:.1f}% of the bins of {html.escape(view.key)}<br>{per_task}</div>')
