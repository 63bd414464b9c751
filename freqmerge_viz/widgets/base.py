"""What every explorer shares: debounced controls, one update path, error display, export.

An explorer holds its settings in ``values`` (name -> value) and a set of ipywidgets
``controls`` bound to those names. Moving a control queues the change; a
:class:`Debouncer` applies the queued changes once the control has been still for
``debounce`` seconds. :meth:`Explorer.set` applies changes at once through the same
:meth:`Explorer._apply`, so a script or test drives the explorer exactly as a person does.

An update first computes everything it will show (:meth:`Explorer._compute`, which must
not touch the display), then draws it (:meth:`Explorer._draw`). If either step raises, the
settings and controls go back to the last state that was shown, and the exception is shown
in the red status line and kept in ``last_error``.
"""

from __future__ import annotations

import asyncio
import html
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ParameterError
from ..outputs import check_output, source_paths
from .pane import figure_spec, plot_pane_class, readout_html, trace_readout

DEBOUNCE_S = 0.1
"""Default quiet time (seconds) after the last control event before an update runs."""
REFINE_DRAW_S = 0.4
"""Least time (seconds) between two redraws of a refinement in progress."""

STATIC_SUFFIXES = (".png", ".svg", ".pdf")
EXPORT_SUFFIXES = STATIC_SUFFIXES + (".html", ".csv")

Schedule = Callable[[float, Callable[[], None]], Any]
"""``schedule(delay_s, callback) -> handle``; the handle has ``cancel()``."""


def default_schedule(delay: float, callback: Callable[[], None]):
    """``loop.call_later`` on the running asyncio loop (a Jupyter kernel's), else a started
    daemon ``threading.Timer`` (the callback then runs in the timer's thread)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        timer = threading.Timer(delay, callback)
        timer.daemon = True
        timer.start()
        return timer
    return loop.call_later(delay, callback)


class Debouncer:
    """Run `fn()` once, `delay` seconds after the last :meth:`trigger` of a burst.

    Each trigger cancels the call scheduled by the one before; a call whose turn comes
    after a newer trigger does nothing, so a late timer can never run a superseded update.
    With `leading`, a trigger that comes after a quiet period (no call pending, none run in the
    last `delay` seconds) runs `fn` at once instead, so a single slider step is answered
    without waiting; the rest of a burst still makes one call after it. `schedule` defaults to
    :func:`default_schedule`; tests pass a fake clock's. ``calls`` counts the runs of `fn`.
    """

    def __init__(self, fn: Callable[[], None], delay: float = DEBOUNCE_S, schedule: Schedule | None = None,
                 leading: bool = False):
        if not delay >= 0:
            raise ParameterError(f"debounce delay must be >= 0 seconds, got {delay!r}")
        self.fn = fn
        self.delay = float(delay)
        self.leading = leading
        self.calls = 0
        self._schedule = schedule or default_schedule
        self._lock = threading.Lock()
        self._generation = 0
        self._handle = None
        self._quiet_handle = None

    @property
    def pending(self) -> bool:
        """Whether a call is scheduled and has not run."""
        return self._handle is not None

    def trigger(self) -> None:
        """(Re)start the quiet period; `fn` runs when it ends (or now, see `leading`)."""
        with self._lock:
            run_now = self.leading and self._handle is None and self._quiet_handle is None
            if run_now:
                self._start_quiet_period()
            else:
                if self._handle is not None:
                    self._handle.cancel()
                self._generation += 1
                generation = self._generation
                self._handle = self._schedule(self.delay, lambda: self._fire(generation))
        if run_now:
            self._run()

    def flush(self) -> bool:
        """Run a pending call now (returns whether there was one)."""
        with self._lock:
            if self._handle is None:
                return False
            self._handle.cancel()
            self._generation += 1
            self._handle = None
        self._run()
        return True

    def cancel(self) -> None:
        """Drop a pending call."""
        with self._lock:
            if self._handle is not None:
                self._handle.cancel()
            self._generation += 1
            self._handle = None

    def _start_quiet_period(self) -> None:
        if self._quiet_handle is not None:
            self._quiet_handle.cancel()
        self._quiet_handle = self._schedule(self.delay, self._end_quiet_period)

    def _end_quiet_period(self) -> None:
        with self._lock:
            self._quiet_handle = None

    def _fire(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._handle = None
            if self.leading:
                self._start_quiet_period()
        self._run()

    def _run(self) -> None:
        self.calls += 1
        self.fn()


class Explorer:
    """Base of the interactive explorers (see the module docstring).

    Subclasses hold a headless ``model`` (its ``check(values)``, ``compute(values)`` and
    ``timings`` serve :meth:`_check` and :meth:`_compute`, and its other attributes read through
    the explorer), fill ``values`` and ``controls`` (via :meth:`_bind`), build ``figure`` (a
    plotly ``go.Figure``: the model of what is drawn) and ``widget`` (with
    :meth:`_display_parts`) in ``_build_controls``, ``_build_figure`` and ``_build_widget``
    (:meth:`_start` runs them and the first draw), and implement :meth:`_draw` (changing
    ``figure`` in place), :meth:`_displayed` and :meth:`static_figure`. After each successful draw the
    figure is sent whole to ``pane`` (a :class:`~freqmerge_viz.widgets.pane.PlotPane`, which
    every browser view redraws in place, also after a page reload) and its trace data to a
    hidden ``readout`` element, so a page can be checked against what was computed.
    """

    export_div_id = "freqmerge-explorer"
    default_export = "explorer.html"
    refiner = None
    """A :class:`~freqmerge_viz.widgets.refine.Refiner` when the explorer refines its numbers in
    the background (a control change cancels it; a shown setting restarts it)."""

    def __init__(self, *, debounce: float = DEBOUNCE_S, schedule: Schedule | None = None):
        import ipywidgets as w

        self.values: dict[str, Any] = {}
        self.controls: dict[str, Any] = {}
        self.last_error: BaseException | None = None
        self.last_timings: dict[str, float] = {}
        self.updates = 0
        self.figure = None
        self._pending: dict[str, Any] = {}
        self._syncing = False
        self._lock = threading.RLock()
        self._debouncer = Debouncer(self._apply_pending, debounce, schedule, leading=True)
        self.status = w.HTML(value="", layout=w.Layout(min_height="1.6em"))
        self.status.add_class("fmv-status")
        self.export_path = w.Text(value=self.default_export, description="file", tooltip=(
            "export target: .png / .svg / .pdf (static) or .html (interactive)"))
        self.export_path.add_class("fmv-export-path")
        self.export_button = w.Button(description="Export", icon="download",
                                      tooltip="write the current view to the file named beside")
        self.export_button.add_class("fmv-export")
        self.export_button.on_click(lambda _: self._export_clicked())
        self.pane = plot_pane_class()()
        self.pane.add_class("fmv-pane")
        self._last_refine_draw = 0.0
        self.readout = w.HTML(value="", layout=w.Layout(display="none"))
        self.readout.add_class("fmv-readout-holder")

    def __getattr__(self, name: str):
        """The attributes of the explorer's headless ``model`` (tasks, references, caches), read
        through the explorer."""
        if name.startswith("__") or name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def _start(self, *control_args) -> None:
        """Build the controls (``_build_controls(*control_args)``), the figure and the widget,
        then compute and draw the first view, raising any error."""
        self._build_controls(*control_args)
        self._build_figure()
        self._build_widget()
        self._apply({}, raise_errors=True)

    # ------------------------------------------------------------------ public API
    def set(self, **values) -> None:
        """Apply `values` (names of ``values``) now, without debounce, through the controls' update path.

        Raises what the update raised (after showing it in the status line); the explorer
        then keeps showing, and its controls hold, the last good settings.
        """
        unknown = sorted(set(values) - set(self.values))
        if unknown:
            raise ParameterError(f"{type(self).__name__}: unknown setting(s) {unknown}; "
                                 f"settable: {sorted(self.values)}")
        self._apply(values, raise_errors=True)

    def shown(self, traces: bool = False) -> dict:
        """The settings and the numbers currently displayed; with `traces`, also ``traces``: every
        trace's data (:func:`~freqmerge_viz.widgets.pane.trace_readout`), which the page must draw."""
        with self._lock:
            shown = {**self.values, **self._displayed()}
            if traces:
                shown["traces"] = trace_readout(figure_spec(self.figure))
            return shown

    def flush(self) -> bool:
        """Apply queued control changes now (returns whether there were any)."""
        return self._debouncer.flush()

    def refine(self, timeout_s: float | None = None) -> dict:
        """Finish refining the shown setting now, in the caller's thread (at most `timeout_s`
        seconds), then return :meth:`shown`. Without a refiner, just :meth:`shown`."""
        if self.refiner is not None:
            self.refiner.finish(timeout_s)
        return self.shown()

    @property
    def debouncer(self) -> Debouncer:
        return self._debouncer

    def export(self, path: str | os.PathLike, html_js: str = "inline") -> Path:
        """Write the current view: ``.png``/``.svg``/``.pdf`` as a matplotlib rendering
        (:meth:`static_figure`), ``.html`` as the plotly figure with a fixed div id and no random
        trace ids (the same view gives the same bytes), ``.csv`` as :meth:`shown_table`. A figure
        comes with ``<stem>.csv`` beside it, the numbers it shows with their image counts, so a
        picture is never the only record. `html_js`: where the page gets plotly.js
        (:func:`~freqmerge_viz.plots.core.save_html`): ``"inline"`` (default: one self-contained
        file), ``"shared"`` (a ``plotly.min.js`` beside it) or ``"cdn"``. Returns the path asked for."""
        from ..io import write_atomically
        from ..plots.core import check_html_js, save_figure, save_html

        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in EXPORT_SUFFIXES:
            raise ParameterError(f"export to {', '.join(EXPORT_SUFFIXES)}; got {str(path)!r}")
        check_html_js(html_js)
        numbers = target.with_suffix(".csv")
        check_output(target, self.input_paths(), what="export")
        check_output(numbers, self.input_paths(), what="export")
        with self._lock:
            table = self.shown_table()
            if suffix == ".html":
                save_html(self.plotly_figure(), target, div_id=self.export_div_id, html_js=html_js)
            elif suffix != ".csv":
                figure = self.static_figure()
                written = save_figure(figure, target.with_suffix(""), formats=(suffix[1:],))[0]
                if written != target:
                    os.replace(written, target)
        write_atomically(numbers, lambda tmp: table.to_csv(tmp, index=False))
        return target

    def shown_table(self):
        """:meth:`shown` as a tidy table, one row per number: ``quantity`` (the field, nested names
        joined by ``.``), ``item`` (a task, method or index; empty for a single value) and
        ``value``. Accuracies are fractions unless the field says percent; ``eval_counts`` (or
        the plane's ``samples``) says how many images each rests on."""
        import pandas as pd

        rows: list[dict] = []

        def walk(path: list[str], value) -> None:
            if isinstance(value, Mapping):
                for key, inner in value.items():
                    walk(path + [str(key)], inner)
            elif isinstance(value, (list, tuple)):
                for index, inner in enumerate(value):
                    walk(path + [f"[{index}]"], inner)
            else:
                quantity = path[0] + "".join(part if part.startswith("[") else f".{part}" for part in path[1:-1])
                rows.append({"quantity": quantity, "item": path[-1] if len(path) > 1 else "", "value": value})

        for quantity, value in self.shown().items():
            walk([quantity], value)
        return pd.DataFrame(rows, columns=["quantity", "item", "value"])

    def input_paths(self) -> list[Path]:
        """Files and folders the explorer reads (its zoo or checkpoints); exports never touch them."""
        return source_paths(getattr(self, "_sources", None) or [getattr(self, "zoo", None)])

    def plotly_figure(self):
        """A copy (``go.Figure``) of the displayed figure."""
        import plotly.graph_objects as go

        return go.Figure(figure_spec(self.figure))

    def _display_parts(self) -> list:
        """Status line, summary (when the explorer has one), plot and its readout, in order."""
        return [self.status, *([self.summary] if hasattr(self, "summary") else []), self.pane, self.readout]

    def _publish(self, values: Mapping[str, Any]) -> None:
        spec = figure_spec(self.figure)
        self.pane.show(spec)
        self.readout.value = readout_html(self.pane.revision, trace_readout(spec), values)
        self._last_refine_draw = time.perf_counter()

    def _refine_step(self) -> bool:
        """One step of the model's ``refine_step`` for the shown setting (what a :class:`Refiner`
        runs); redraws from the model's caches at most every :data:`REFINE_DRAW_S` seconds, and when
        the setting is done."""
        more = self.model.refine_step(self.values)
        if not more or time.perf_counter() - self._last_refine_draw >= REFINE_DRAW_S:
            self._draw(self.model.compute(self.values))
            self._publish(self.values)
        return more

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ subclass hooks
    def _check(self, values: Mapping[str, Any]) -> None:
        """Raise :class:`ParameterError` if `values` cannot be shown (the model's cheap checks)."""
        self.model.check(values)

    def _compute(self, values: Mapping[str, Any]):
        """Everything to show for `values` (no display change), computed by the model and passed
        to :meth:`_draw`; the model's step timings join ``last_timings``."""
        view = self.model.compute(values)
        self.last_timings.update(self.model.timings)
        return view

    def _draw(self, view) -> None:
        """Show `view` (update figure data in place)."""
        raise NotImplementedError

    def _displayed(self) -> dict:
        """The numbers on display, read back from the figure."""
        raise NotImplementedError

    def static_figure(self):
        """A matplotlib figure of the current view."""
        raise NotImplementedError

    # ------------------------------------------------------------------ update path
    def _bind(self, name: str, control) -> None:
        self.controls[name] = control
        control.observe(lambda change: self._on_control(name, change["new"]), names="value")

    def _on_control(self, name: str, value) -> None:
        if self._syncing:
            return
        if self.refiner is not None:
            self.refiner.cancel()
        with self._lock:
            self._pending[name] = value
        self._debouncer.trigger()

    def _apply_pending(self) -> None:
        with self._lock:
            changes, self._pending = self._pending, {}
        if changes:
            self._apply(changes, raise_errors=False)

    def _apply(self, changes: Mapping[str, Any], raise_errors: bool) -> None:
        with self._lock:
            if self.refiner is not None:
                self.refiner.cancel()
            start = time.perf_counter()
            candidate = {**self.values, **changes}
            self.last_timings = {}
            try:
                self._check(candidate)
                view = self._compute(candidate)
                self._draw(view)
                start_publish = time.perf_counter()
                self._publish(candidate)
                self.last_timings["publish_ms"] = 1e3 * (time.perf_counter() - start_publish)
            except Exception as exc:
                self._sync_controls(self.values)
                self._show_error(exc)
                self._restart_refinement()
                if raise_errors:
                    raise
                return
            self.values = candidate
            self._sync_controls(candidate)
            self.updates += 1
            self.last_error = None
            self.last_timings["total_ms"] = 1e3 * (time.perf_counter() - start)
            self._show_ok()
            self._restart_refinement()

    def _restart_refinement(self) -> None:
        if self.refiner is not None and self._view_shown():
            self.refiner.restart()

    def _view_shown(self) -> bool:
        """Whether a view has been drawn (refinement has a setting to work on)."""
        return self.updates > 0

    def _sync_controls(self, values: Mapping[str, Any]) -> None:
        self._syncing = True
        try:
            for name, control in self.controls.items():
                value = values.get(name)
                if name not in values or control.value == value:
                    continue
                if isinstance(value, (int, float)) and hasattr(control, "max"):
                    control.max = max(control.max, value)
                    control.min = min(control.min, value)
                control.value = value
        finally:
            self._syncing = False

    def _show_ok(self) -> None:
        parts = ", ".join(f"{k.removesuffix('_ms')} {v:.0f} ms" for k, v in self.last_timings.items())
        self.status.value = f'<span class="fmv-status-ok" style="color:#555">updated ({parts})</span>'

    def _show_error(self, exc: BaseException) -> None:
        self.last_error = exc
        message = html.escape(f"{type(exc).__name__}: {exc}")
        self.status.value = f'<span class="fmv-status-error" style="color:#c00">{message}</span>'

    def _export_clicked(self) -> None:
        try:
            target = self.export(self.export_path.value)
        except Exception as exc:
            self._show_error(exc)
            return
        self.status.value = (f'<span class="fmv-status-ok" style="color:#555">exported '
                             f'{html.escape(str(target))}</span>')
