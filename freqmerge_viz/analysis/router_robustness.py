"""Routed merges under routing errors (paper Fig. 5c): accuracy against router accuracy p.

The router is :class:`~freqmerge_viz.routing.RandomRouter` (the paper's "random router"): each
input goes to its true task with probability p, otherwise to a uniformly drawn other task,
from a seeded generator. Because a route never depends on the input, each routed merge is run
once per (task state, evaluated task, image) — :func:`correctness` — and every p is then a
gather over those outcomes (:func:`robustness_table`): exactly what routing the same inputs
through the merge would give, for any number of p values. Every method sees the same routes.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ParameterError
from ..methods import RoutedMerge
from ..progress import track
from ..routing import RandomRouter
from .evaluation import reference_accuracies, study_tasks
from .selection import VALIDATION_LIMIT, build_chosen, choose

ROUTED_ROWS = {"FREE": "free_oracle", "EMR": "emr", "Twin": "twin"}
"""Display name -> row of the study comparison whose validation-chosen settings are used."""

ROUTER_ACCURACIES = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
"""p grid of the full figure (router accuracy, fraction of inputs sent to their own task)."""


@torch.no_grad()
def correctness(study, routed: RoutedMerge, tasks: Sequence[str], *, split: str = "test",
                limit: int | None = 300, batch_size: int = 500, start: int = 0) -> torch.Tensor:
    """``correct[s, t, i]``: whether `routed`'s state of task ``s`` classifies image ``i`` of task ``t``
    right (task ``t``'s head). Bool ``[K, K, N]`` over the first `limit` images (N: the fewest any
    task has). With token labels ``[N, T]`` (a language model), float: the share of input ``i``'s
    scored tokens predicted right (so a routed accuracy is a mean over windows).

    `start` skips each task's first `start` images: the outcomes of images ``start`` to `limit`
    (N: the fewest any task has there), the same as ``correctness(...)[:, :, start:limit]``, so a
    run can be extended chunk by chunk.
    """
    if routed.n_tasks != len(tasks):
        raise ParameterError(f"the routed merge has {routed.n_tasks} tasks, {len(tasks)} task names given")
    start = _check_start(start)
    data = []
    for task in tasks:
        images, labels = study.data(task, split)
        data.append((images[start:limit], labels[start:limit]) if limit is not None else
                    (images[start:], labels[start:]))
    n = min(len(labels) for _, labels in data)
    tokens = data[0][1].ndim == 2
    out = torch.zeros(len(tasks), len(tasks), n, dtype=torch.float32 if tokens else torch.bool)
    for s in range(len(tasks)):
        state = routed.task_state(s)
        for t, (task, (images, labels)) in enumerate(zip(tasks, data)):
            out[s, t] = _hits(study, state, task, images[:n], labels[:n], batch_size)
    return out


@torch.no_grad()
def state_outcomes(study, state, task: str, *, split: str = "test", start: int = 0, stop: int | None = None,
                   batch_size: int = 500) -> torch.Tensor:
    """One row of :func:`correctness`: whether `state` (one routed task state, or any parameters)
    classifies images ``start`` to `stop` of `task`'s `split` right (`task`'s head). Bool ``[n]``
    (float shares of scored tokens with token labels), the same values as ``correct[s, t, start:stop]``;
    a refinement adds one state's outcomes on one task's next images per call."""
    start = _check_start(start)
    images, labels = study.data(task, split)
    return _hits(study, state, task, images[start:stop], labels[start:stop], batch_size)


def _check_start(start) -> int:
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ParameterError(f"start must be an image index >= 0, got {start!r}")
    return int(start)


def _hits(study, state, task: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per input, whether `state` gets it right (float share of scored tokens for token labels)."""
    n = len(labels)
    tokens = labels.ndim == 2
    out = torch.zeros(n, dtype=torch.float32 if tokens else torch.bool)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        logits = study.forward(state, images[lo:hi], task)
        hits = logits.argmax(-1) == labels[lo:hi]
        if tokens:
            scored = labels[lo:hi] != -100
            hits = (hits & scored).sum(-1) / scored.sum(-1).clamp(min=1)
        out[lo:hi] = hits
    return out


def routed_outcomes(correct: torch.Tensor, routes: torch.Tensor, task: int) -> torch.Tensor:
    """Outcome of each input of task `task` sent along `routes` (``[N]`` task indices): bool ``[N]``."""
    return correct[routes, task, torch.arange(correct.shape[-1])]


def draw_routes(n_tasks: int, p: float, seed: int, n: int, draw: int | None = None) -> list[torch.Tensor]:
    """The routes :func:`robustness_table` uses at router accuracy `p`: for each task ``t`` in
    order, ``RandomRouter(n_tasks, p, seed)`` routes `draw` inputs of task ``t`` (default `n`),
    and the first `n` routes are kept. With a fixed `draw` the routes nest: the first `n`
    inputs keep their routes whatever `n` (up to `draw`) is, so numbers refined by adding
    inputs are estimates on one growing sample. ``draw=None`` gives the routes of earlier
    versions (the stream then depends on `n`)."""
    draw = n if draw is None else int(draw)
    if draw < n:
        raise ParameterError(f"routes drawn for {draw} inputs per task cannot route {n}")
    router = RandomRouter(n_tasks, float(p), seed)
    return [router.route(None, torch.full((draw,), t, dtype=torch.long))[:n] for t in range(n_tasks)]


def robustness_table(correct_by_method: Mapping[str, torch.Tensor], tasks: Sequence[str],
                     ps: Sequence[float] = ROUTER_ACCURACIES, seed: int = 0, draw: int | None = None) -> pd.DataFrame:
    """Per method, p and task: accuracy of the routed merge, and the measured router accuracy.

    For each p one ``RandomRouter(K, p, seed)`` routes the inputs of every task in task order
    (the same routes for every method). Columns ``method, p, task, accuracy, router_accuracy``
    (``router_accuracy``: share of that task's inputs sent to their own task; both fractions) and
    ``n_images`` (inputs per task). `draw`: routes are drawn for that many inputs per task and
    the first N used (:func:`draw_routes`), so the table over the first N inputs of a longer
    sample uses the same routes for them as the table over more; ``None`` draws N.
    """
    k = len(tasks)
    if not correct_by_method:
        raise ParameterError("need the outcomes of at least one routed merge")
    n = next(iter(correct_by_method.values())).shape[-1]
    for method, correct in correct_by_method.items():
        if tuple(correct.shape) != (k, k, n):
            raise ParameterError(f"{method}: outcomes of shape {tuple(correct.shape)}, expected {(k, k, n)} "
                                 f"({k} tasks, {n} inputs each)")
    rows = []
    for p in ps:
        routes = draw_routes(k, float(p), seed, n, draw)
        for method, correct in correct_by_method.items():
            for t, task in enumerate(tasks):
                outcome = routed_outcomes(correct, routes[t], t)
                rows.append({"method": method, "p": float(p), "task": task,
                             "accuracy": float(outcome.double().mean()),
                             "router_accuracy": float((routes[t] == t).double().mean()), "n_images": int(n)})
    return pd.DataFrame(rows)


def router_robustness(study, routed_by_method: Mapping[str, RoutedMerge], *, tasks: Sequence[str] | None = None,
                      ps: Sequence[float] = ROUTER_ACCURACIES, seed: int = 0, split: str = "test",
                      limit: int | None = 300, progress: bool | None = False) -> pd.DataFrame:
    """:func:`robustness_table` of the given routed merges (built over `tasks`, in that order) on the study;
    `progress`: a bar over the merges while each is run on every task (:mod:`freqmerge_viz.progress`)."""
    tasks = study_tasks(study, tasks)
    outcomes = {name: correctness(study, routed, tasks, split=split, limit=limit)
                for name, routed in track(list(routed_by_method.items()), "router robustness: methods", progress,
                                          unit="method")}
    table = robustness_table(outcomes, tasks, ps, seed)
    table.attrs.update({"split": split, "limit": limit, "seed": seed})
    return table


def chosen_routed_merges(study, *, tasks: Sequence[str] | None = None, quick: bool = False,
                         validation_limit: int | None = VALIDATION_LIMIT,
                         progress: bool | None = False) -> dict[str, RoutedMerge]:
    """FREE, EMR and Twin over `tasks` with the settings the study comparison chooses on validation
    (oracle routes; :mod:`.selection`): FREE's FR backbone and expert scale, Twin's rank and
    task-arithmetic scaling; EMR has no settings. `progress`: a bar over the rows while choosing."""
    tasks = study_tasks(study, tasks)
    choices = choose(study, list(ROUTED_ROWS.values()), tasks=tasks, limit=validation_limit, quick=quick,
                     progress=progress)
    return {label: build_chosen(study, choices, row, tasks) for label, row in ROUTED_ROWS.items()}


def robustness_references(study, *, tasks: Sequence[str] | None = None, quick: bool = False,
                          validation_limit: int | None = VALIDATION_LIMIT, split: str = "test",
                          limit: int | None = 300, progress: bool | None = False) -> pd.DataFrame:
    """:func:`~freqmerge_viz.analysis.evaluation.reference_accuracies` for the routed merges, on the
    images they are scored on: no merge (θ_pre + heads), task arithmetic with the scaling the study
    comparison chooses on validation (the shared part Twin adds its experts to) and the fine-tuned models.
    `progress`: a bar while choosing its scaling."""
    tasks = study_tasks(study, tasks)
    ta = choose(study, ["task_arithmetic"], tasks=tasks, limit=validation_limit, quick=quick,
                progress=progress)["task_arithmetic"]
    return reference_accuracies(study, tasks, split=split, limit=limit, task_arithmetic=ta.params)
