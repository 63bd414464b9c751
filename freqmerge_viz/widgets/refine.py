"""Background refinement of an explorer's numbers, one short step at a time.

An explorer answers a control change at once with a fast estimate (a few images per task),
then a :class:`Refiner` keeps adding images to the *same* setting in short steps until its
``step()`` says there is nothing left to do. Steps are scheduled with the explorer's
``schedule`` (:func:`~freqmerge_viz.widgets.base.default_schedule`): in a Jupyter kernel each
step is a callback on the kernel's event loop, so control events are handled between steps
and nothing runs in another thread; elsewhere a timer thread runs them, under the explorer's
lock. A new control change calls :meth:`Refiner.cancel`: the step already queued finds its
generation stale and returns without work, so an old setting is never refined behind the new one.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import Callable

from .base import Schedule, default_schedule

class Refiner:
    """Run ``step() -> more`` repeatedly in the background, one scheduled call per step.

    ``restart()`` starts a run (cancelling any other); ``cancel()`` stops it before its next
    step; ``finish()`` runs the remaining steps now, in the caller's thread. ``steps`` counts
    the steps run, ``stale_calls`` the scheduled calls that found their run cancelled (they do
    nothing), ``running`` says whether a step is queued.
    """

    def __init__(self, step: Callable[[], bool], lock: threading.RLock, schedule: Schedule | None = None):
        self._step = step
        self._lock = lock
        self._schedule = schedule or default_schedule
        self._generation = 0
        self._handle = None
        self._active = False
        self.steps = 0
        self.stale_calls = 0
        self.busy_s = 0.0

    @property
    def running(self) -> bool:
        """Whether a run is under way (a step queued or running)."""
        return self._active

    def restart(self) -> None:
        with self._lock:
            self.cancel()
            _LIVE.add(self)
            self._active = True
            self._queue(self._generation)

    def cancel(self) -> None:
        """Stop the run: the queued step is dropped, and a step already running (in another
        thread) finishes first, since steps hold the lock."""
        with self._lock:
            self._generation += 1
            self._active = False
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    def finish(self, timeout_s: float | None = None) -> bool:
        """Run the remaining steps now (at most `timeout_s` seconds); returns whether it finished."""
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        with self._lock:
            self.cancel()
            while self._run_step():
                if deadline is not None and time.perf_counter() > deadline:
                    self._active = True
                    self._queue(self._generation)
                    return False
            return True

    def _queue(self, generation: int) -> None:
        self._handle = self._schedule(0.0, lambda: self._scheduled(generation))

    def _scheduled(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                self.stale_calls += 1
                return
            self._handle = None
            if self._run_step():
                self._queue(generation)
            else:
                self._active = False

    def _run_step(self) -> bool:
        start = time.perf_counter()
        more = self._step()
        self.steps += 1
        self.busy_s += time.perf_counter() - start
        return bool(more)


def count_range(counts) -> str:
    """Inputs behind several numbers: ``272`` when every count is 272, else ``240–336``."""
    counts = list(counts)
    return f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"


_LIVE: "weakref.WeakSet[Refiner]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """At exit, stop every refiner and wait for a step in flight (a timer thread inside torch
    when the interpreter finalises aborts the process)."""
    for refiner in list(_LIVE):
        refiner.cancel()


class Tally:
    """Accuracy per task of one model on the first ``counts[task]`` inputs of each task's split,
    grown chunk by chunk (each chunk the next inputs in the split's order, so estimates nest).
    Accuracies are fractions; a count of ``None`` is unknown (its standard error is too)."""

    def __init__(self, accuracy: dict[str, float], counts: dict[str, int | None]):
        self.accuracy = dict(accuracy)
        self.counts = dict(counts)

    def add(self, task: str, accuracy: float, count: int) -> None:
        """Join `accuracy` measured on the next `count` inputs of `task`."""
        before = self.counts[task] or 0
        total = before + count
        self.accuracy[task] = (self.accuracy[task] * before + accuracy * count) / total
        self.counts[task] = total

    def inputs(self) -> int:
        """Inputs behind the tally, all tasks together (unknown counts as 0)."""
        return sum(c or 0 for c in self.counts.values())


def inputs_between(evaluator, start: int, stop: int):
    """`evaluator` (an :class:`~freqmerge_viz.engine.Evaluator`) on inputs ``start:stop`` of its data only."""
    import dataclasses

    return dataclasses.replace(evaluator, inputs=evaluator.inputs[start:stop], labels=evaluator.labels[start:stop],
                               name=f"{evaluator.name}[{start}:{stop}]")
