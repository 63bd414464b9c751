"""Settings of the study comparison's rows chosen on the validation split, shared by the analyses.

The rows and their candidate grids are those of :data:`freqmerge_viz.study.compare.CANDIDATES`
(what ``freqmerge-viz study eval`` uses); here plain merges are scored with the batched engine
(all of a row's candidates in one call) and routed ones with oracle routes (task ``t``'s state
on task ``t``). Results are cached per study object (while it lives), task list, `limit` and
`quick`, so the cost table and the router analysis choose once.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Sequence

from ..progress import track
from ..stats import best_on_validation
from ..study import evaluate_on_study
from .compare import Candidate, _build, _params, with_needs
from .evaluation import evaluate_per_task, finetuned_subset, materialize, study_tasks

VALIDATION_LIMIT = 200
"""Validation images per task used to score candidate settings (the split has 1000)."""


@dataclass(frozen=True)
class Choice:
    """A comparison row with its chosen settings: ``params`` is what its merge is built with."""

    name: str
    method: str
    routed: bool
    settings: dict
    params: dict
    validation_mean: float
    candidates: int


_CACHE: dict[tuple, tuple[weakref.ref, Choice]] = {}
_LOCK = threading.Lock()


def candidate(name: str) -> Candidate:
    """The comparison row called `name` (:class:`~freqmerge_viz.errors.ParameterError` if unknown)."""
    return with_needs([name])[-1]


def _score(study, row: Candidate, grid: list[dict], chosen: dict, tasks: list[str], limit: int | None) -> list[float]:
    if row.routed:
        built = [_build(study, row, finetuned_subset(study, tasks), s, chosen) for s in grid]
        table = evaluate_per_task(study, {t: [b.task_state(i) for b in built] for i, t in enumerate(tasks)},
                                  split="val", limit=limit)
    else:
        states = [materialize(_build(study, row, finetuned_subset(study, tasks), s, chosen)) for s in grid]
        table = evaluate_on_study(study, states, tasks, split="val", limit=limit)
    means = table.groupby("state")["accuracy"].mean()
    return [float(means[i]) for i in range(len(grid))]


def choose(study, names: Sequence[str], *, tasks: Sequence[str] | None = None,
           limit: int | None = VALIDATION_LIMIT, quick: bool = False,
           progress: bool | None = False) -> dict[str, Choice]:
    """Each row in `names` and the rows it builds on (keys of the result, in table order) with the
    settings of best validation mean.

    Ties go to the earlier candidate, as in the comparison. A row with one candidate is not
    evaluated (``validation_mean`` NaN). ``quick=True`` tries only each row's first candidate.
    `progress`: a bar over the rows (:mod:`freqmerge_viz.progress`).
    """
    tasks = study_tasks(study, tasks)
    rows = [r for r in with_needs(names) if not (r.routed and r.router != "oracle")]
    chosen_settings: dict[str, dict] = {}
    out: dict[str, Choice] = {}
    for row in track(rows, "settings on validation: methods", progress, unit="method"):
        key = (id(study), tuple(tasks), limit, quick, row.name)
        with _LOCK:
            owner, cached = _CACHE.get(key, (None, None))
        if cached is None or owner() is not study:
            grid = list(row.settings[:1] if quick else row.settings)
            means = _score(study, row, grid, chosen_settings, tasks, limit) if len(grid) > 1 else [float("nan")]
            best = best_on_validation(means)
            cached = Choice(row.name, row.method, row.routed, dict(grid[best]),
                            _params(row, grid[best], chosen_settings), means[best], len(grid))
            with _LOCK:
                _CACHE[key] = (weakref.ref(study), cached)
        chosen_settings[row.name] = cached.settings
        out[row.name] = cached
    return out


def build_chosen(study, choices: dict[str, Choice], name: str, tasks: Sequence[str] | None = None):
    """The merge of row `name` with its chosen settings (rows it builds on must be in `choices`)."""
    chosen = {n: c.settings for n, c in choices.items()}
    return _build(study, candidate(name), finetuned_subset(study, tasks), choices[name].settings, chosen)


def clear_cache() -> None:
    """Forget every cached choice."""
    with _LOCK:
        _CACHE.clear()
