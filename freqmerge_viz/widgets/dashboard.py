"""Dashboard: the three explorers of one study in one page, one tab each, built one after another.

A :class:`Dashboard` shows at once a header (the study and what each tab shows), a status
line and three tabs holding placeholders; :meth:`Dashboard.build` then opens the study and
builds the cutoff explorer, the expert explorer and the landscape viewer in that order, each
put into its tab as soon as it is ready, the status line saying what is being built.
:func:`show` displays a dashboard and builds it in a background thread, so the page (a
notebook, or ``freqmerge-viz serve``'s Voila app) shows the status line first and the cutoff
tab is usable while the other two are built. An explorer that fails to build shows its error
in its tab (kept in :attr:`Dashboard.errors`); the others are built all the same.
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ParameterError, counted
from .base import Schedule


@dataclass(frozen=True)
class Part:
    """One tab of the dashboard: its explorer's `name`, tab `title`, what it `shows` (one
    sentence) and what its build computes (`building`, for the status line)."""

    name: str
    title: str
    shows: str
    building: str


PARTS = (
    Part("cutoff", "Cutoff (FR-Merging)",
         "what a frequency cutoff keeps of a task vector's spectrum, the across-task amplitude variance it "
         "leaves, and the merged model's accuracy per task",
         "the cutoff explorer (task vectors, spectra, reference accuracies, the first merge)"),
    Part("expert", "Experts and routing",
         "what a task expert of a given density does alone, its storage, and what routing errors cost "
         "FREE, EMR and Twin",
         "the expert explorer (SVD storage, EMR and Twin outcomes, the first experts)"),
    Part("landscape", "Loss landscape",
         "loss or accuracy over the plane of two task vectors, with merged models projected onto it",
         "the landscape viewer (the plane of two task vectors, its first grid)"),
)
"""The dashboard's tabs, in the order they are built."""
PAGE_STYLE = (".fmv-dashboard-tabs { --jp-widgets-horizontal-tab-width: 220px; } "
              ".fmv-dashboard .widget-hbox { flex-wrap: wrap; }")
"""Tabs wide enough for their titles (ipywidgets' default, 144 px, cut them off); a row of controls
too wide for the page wraps instead of squeezing its sliders to a few pixels."""


def _explorer_classes() -> dict[str, Callable]:
    from .cutoff import CutoffExplorer
    from .experts import ExpertExplorer
    from .landscape import LandscapeViewer

    return {"cutoff": CutoffExplorer, "expert": ExpertExplorer, "landscape": LandscapeViewer}


class _LoopCall:
    """`callback` run on `loop` after `delay` seconds, scheduled from any thread; ``cancel()``
    from any thread (the call then does nothing)."""

    def __init__(self, loop, delay: float, callback: Callable[[], None], in_loop_thread: bool):
        self._callback = callback
        self._cancelled = False
        if in_loop_thread:
            loop.call_later(delay, self._run)
        else:
            loop.call_soon_threadsafe(loop.call_later, delay, self._run)

    def _run(self) -> None:
        if not self._cancelled:
            self._callback()

    def cancel(self) -> None:
        self._cancelled = True


def loop_schedule(loop) -> Schedule:
    """An explorer's ``schedule`` that runs every callback on `loop` (a kernel's event loop, run
    by the calling thread), also when asked from another thread: explorers built in the
    dashboard's build thread then debounce and refine on the kernel's loop, as in a notebook."""
    loop_thread = threading.get_ident()

    def schedule(delay: float, callback: Callable[[], None]) -> _LoopCall:
        return _LoopCall(loop, delay, callback, threading.get_ident() == loop_thread)

    return schedule


def study_label(source) -> str:
    """How the header names a study reference before it is opened (``"the demo zoo"``, a path)."""
    if source is None or str(source) == "zoo":
        return "the demo zoo"
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return repr(source)


class Dashboard:
    """The cutoff explorer, the expert explorer and the landscape viewer of one study, one tab
    each, under a header and a status line (see the module docstring).

    `study` is a study, ``"zoo"`` or ``None`` (the demo zoo), a zoo folder or a study YAML file;
    a reference is opened by :meth:`build`, not here. `options` maps an explorer's name
    (``"cutoff"``, ``"expert"``, ``"landscape"``) to keyword arguments of its constructor.
    `schedule` is given to every explorer that `options` gives none (see :func:`loop_schedule`).
    The constructor computes nothing: ``widget`` can be displayed before :meth:`build`.
    """

    def __init__(self, study="zoo", *, options: Mapping[str, Mapping[str, Any]] | None = None,
                 schedule: Schedule | None = None):
        import ipywidgets as w

        names = [part.name for part in PARTS]
        unknown = sorted(set(options or {}) - set(names))
        if unknown:
            raise ParameterError(f"Dashboard: unknown explorer(s) {unknown} in options; the explorers are {names}")
        self.source = study
        self.study = None
        self.options = {name: dict((options or {}).get(name, {})) for name in names}
        if schedule is not None:
            for given in self.options.values():
                given.setdefault("schedule", schedule)
        self.explorers: dict[str, Any] = {}
        """Each built explorer by name."""
        self.errors: dict[str, BaseException] = {}
        """What stopped the study (``"study"``) or an explorer (by name) from being built."""
        self.seconds: dict[str, float] = {}
        """Wall-clock seconds each step of :meth:`build` took (``"study"`` and each explorer)."""
        self.finished = threading.Event()
        """Set when :meth:`build` has finished (whatever failed)."""
        self.header = w.HTML(value=self._header_html())
        self.header.add_class("fmv-dashboard-header")
        self.status = w.HTML(value="", layout=w.Layout(min_height="1.6em"))
        self.status.add_class("fmv-dashboard-status")
        self.slots = {part.name: w.VBox([w.HTML(value=self._placeholder(part, "waiting"))],
                                        layout=w.Layout(width="100%"))
                      for part in PARTS}
        for name, slot in self.slots.items():
            slot.add_class(f"fmv-dashboard-{name}")
        self.tabs = w.Tab(children=[self.slots[part.name] for part in PARTS],
                          titles=[part.title for part in PARTS])
        self.tabs.add_class("fmv-dashboard-tabs")
        self.widget = w.VBox([self.header, self.status, self.tabs], layout=w.Layout(width="100%"))
        self.widget.add_class("fmv-dashboard")
        self._say("waiting to open the study", "busy")

    # ------------------------------------------------------------------ building
    def build(self) -> "Dashboard":
        """Open the study, then build each explorer in :data:`PARTS` order, putting each into its
        tab when it is ready and saying in the status line what is being built. Never raises for
        a failed step: its error is shown (status line and tab) and kept in :attr:`errors`."""
        try:
            self._open_study()
            if self.study is not None:
                classes = _explorer_classes()
                for index, part in enumerate(PARTS):
                    self._build_part(part, index, classes[part.name])
            self._say_done()
        finally:
            self.finished.set()
        return self

    def start(self) -> threading.Thread:
        """:meth:`build` in a daemon thread (started and returned): the page stays responsive
        and a built tab is usable while the next is being built."""
        thread = threading.Thread(target=self.build, name="freqmerge-dashboard-build", daemon=True)
        thread.start()
        return thread

    def _open_study(self) -> None:
        from ..study import as_study

        self._say(f"opening the study {html.escape(study_label(self.source))}…", "busy")
        start = time.perf_counter()
        try:
            self.study = as_study(self.source)
        except Exception as exc:  # noqa: BLE001 - shown on the page, kept in errors
            self.errors["study"] = exc
            self._say(f"cannot open the study: {html.escape(f'{type(exc).__name__}: {exc}')}", "error")
            for part in PARTS:
                self.slots[part.name].children = [self._html(self._placeholder(part, "no study"))]
            return
        self.seconds["study"] = time.perf_counter() - start
        self.header.value = self._header_html()

    def _build_part(self, part: Part, index: int, cls: Callable) -> None:
        import ipywidgets as w

        ready = [p.title for p in PARTS if p.name in self.explorers]
        done = f"ready: {', '.join(ready)}; " if ready else ""
        self._say(f"{done}building {part.building}… ({index + 1} of {len(PARTS)})", "busy")
        self.slots[part.name].children = [self._html(self._placeholder(part, "building"))]
        start = time.perf_counter()
        try:
            explorer = cls(self.study, **self.options[part.name])
        except Exception as exc:  # noqa: BLE001 - shown in the tab, kept in errors
            self.errors[part.name] = exc
            message = html.escape(f"{type(exc).__name__}: {exc}")
            self.slots[part.name].children = [self._html(
                f'<p class="fmv-dashboard-error" style="color:#c00">{html.escape(part.title)} could not be '
                f"built on this study: {message}</p>")]
            return
        self.seconds[part.name] = time.perf_counter() - start
        self.explorers[part.name] = explorer
        about = w.HTML(value=f'<p style="margin:0.2em 0 0.6em 0;color:#333">Shows {html.escape(part.shows)}.</p>')
        self.slots[part.name].children = [about, explorer.widget]

    # ------------------------------------------------------------------ what the page says
    def _header_html(self) -> str:
        study = self.study
        if study is None:
            named = f"study: {html.escape(study_label(self.source))}"
        else:
            tasks = list(study.tasks)
            named = (f"study <b>{html.escape(str(getattr(study, 'name', '') or study_label(self.source)))}</b> "
                     f"({html.escape(str(getattr(study, 'kind', type(study).__name__)))}): "
                     f"{counted(len(tasks), 'task')} ({html.escape(', '.join(map(str, tasks)))})")
        items = "".join(f"<li><b>{html.escape(p.title)}</b>: {html.escape(p.shows)}</li>" for p in PARTS)
        return (f"<style>{PAGE_STYLE}</style>"
                f'<div style="line-height:1.45"><h3 style="margin:0.2em 0">freqmerge-viz dashboard</h3>'
                f'<div class="fmv-dashboard-study">{named}</div>'
                f'<ul style="margin:0.3em 0 0.3em 1.2em;padding:0">{items}</ul>'
                f'<div style="color:#555">Every number is computed by the library when a control changes; '
                f'each tab says which images its accuracies rest on.</div></div>')

    @staticmethod
    def _placeholder(part: Part, state: str) -> str:
        text = {"waiting": f"{part.title} is built after the tabs before it…",
                "building": f"building {part.building}…",
                "no study": "the study could not be opened (see the status line above)"}[state]
        return f'<p class="fmv-dashboard-placeholder" style="color:#777;font-style:italic">{html.escape(text)}</p>'

    @staticmethod
    def _html(value: str):
        import ipywidgets as w

        return w.HTML(value=value)

    def _say(self, text: str, state: str) -> None:
        """The status line: `text` (HTML) in the colour of `state` (busy, ok or error)."""
        colour = {"busy": "#a60", "ok": "#555", "error": "#c00"}[state]
        self.status.value = f'<span class="fmv-dashboard-{state}" style="color:{colour}">{text}</span>'

    def _say_done(self) -> None:
        if "study" in self.errors:
            return
        times = ", ".join(f"{p.title} {self.seconds[p.name]:.1f} s" for p in PARTS if p.name in self.seconds)
        failed = [p.title for p in PARTS if p.name in self.errors]
        if failed:
            self._say(f"built: {html.escape(times) or 'nothing'}; could not build {html.escape(', '.join(failed))} "
                      "(the tab says why)", "error")
        else:
            self._say(f"all {len(PARTS)} explorers ready (built in: {html.escape(times)})", "ok")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def show(study="zoo", *, options: Mapping[str, Mapping[str, Any]] | None = None, background: bool = True) -> Dashboard:
    """Display a :class:`Dashboard` of `study` (see :class:`Dashboard`) and build it: in a
    background thread by default (the page shows the status line at once, each tab when it is
    ready), else before returning. In a kernel the explorers' callbacks run on its event loop
    (:func:`loop_schedule`). Returns the dashboard."""
    import asyncio

    from IPython.display import display

    try:
        schedule = loop_schedule(asyncio.get_running_loop())
    except RuntimeError:
        schedule = None
    board = Dashboard(study, options=options, schedule=schedule)
    display(board.widget)
    if background:
        board.start()
    else:
        board.build()
    return board
