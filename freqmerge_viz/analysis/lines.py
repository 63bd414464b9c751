"""LiNeS-style per-layer scaling (Wang et al., ICLR 2025) against one scaling for every layer, on a study.

Task arithmetic with ``layer_scaling=[α, β]`` multiplies each layer's summed task vectors by
``α + β·d`` (d = 0 for the first layer and the embeddings, 1 for the last layer and the head side;
:func:`freqmerge_viz.scopes.depth_fractions`), so shallow layers move less than deep ones. Each
setting family picks its parameters by mean validation accuracy, then is measured on test images.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import pandas as pd

from ..stats import best_on_validation
from ..study import evaluate_on_study
from ..methods import merge
from ..progress import track
from .evaluation import finetuned_subset, image_counts, materialize, study_tasks
SCALINGS = (0.025, 0.05, 0.1, 0.2, 0.3)
"""Task arithmetic's one scaling tried (the demo study's validation optimum was at 0.1, the lower
edge of the usual grid, so the grid reaches below it)."""
ALPHAS = (0.025, 0.05, 0.1)
"""LiNeS' α (the first layer's factor) tried with task arithmetic."""
BETAS = (0.0, 0.05, 0.1, 0.2, 0.4)
"""LiNeS' β (added at the last layer) tried; β = 0 is plain task arithmetic at scaling α."""
VALIDATION_LIMIT = 150
"""Validation images per task that choose each family's parameters."""


def lines_grid(alphas: Sequence[float] = ALPHAS, betas: Sequence[float] = BETAS) -> list[dict]:
    """Task-arithmetic parameters of every (α, β): ``{"scaling": 1, "layer_scaling": [α, β]}``."""
    return [{"scaling": 1.0, "layer_scaling": [float(a), float(b)]} for a in alphas for b in betas]


def choose_on_validation(study, method: str, grid: Sequence[Mapping], *, tasks: Sequence[str] | None = None,
                         validation_limit: int | None = VALIDATION_LIMIT) -> tuple[dict, float]:
    """The parameters of `grid` (one merge each, all evaluated in one engine call) with the best
    mean accuracy over `tasks` on the first `validation_limit` validation images (ties: the
    earlier), and that mean (a fraction)."""
    chosen = study_tasks(study, tasks)
    models = finetuned_subset(study, chosen)
    if len(grid) == 1:
        return dict(grid[0]), float("nan")
    states = [materialize(merge(method, study.pretrained, models, **dict(p))) for p in grid]
    scores = evaluate_on_study(study, states, chosen, split="val", limit=validation_limit)
    means = scores.groupby("state")["accuracy"].mean()
    best = best_on_validation([means[i] for i in range(len(grid))])
    return dict(grid[best]), float(means[best])


def lines_comparison(study, *, scalings: Sequence[float] = SCALINGS, alphas: Sequence[float] = ALPHAS,
                     betas: Sequence[float] = BETAS, tasks: Sequence[str] | None = None, limit: int | None = 300,
                     validation_limit: int | None = VALIDATION_LIMIT, progress: bool | None = False) -> pd.DataFrame:
    """Task arithmetic with one scaling (best of `scalings`) against task arithmetic with LiNeS
    scaling (best of :func:`lines_grid`), each chosen on validation and measured on the first
    `limit` test images per task. One row per setting and task: ``setting, params`` (JSON),
    ``validation_mean``, ``task``, ``accuracy`` (a fraction), ``n_images``. `progress`: a bar over
    the two families while their settings are chosen (:mod:`freqmerge_viz.progress`)."""
    chosen = study_tasks(study, tasks)
    families = {"task arithmetic": [{"scaling": float(s)} for s in scalings],
                "task arithmetic + LiNeS": lines_grid(alphas, betas)}
    picks = {name: choose_on_validation(study, "task_arithmetic", grid, tasks=chosen, validation_limit=validation_limit)
             for name, grid in track(list(families.items()), "LiNeS: families on validation", progress,
                                     unit="family")}
    models = finetuned_subset(study, chosen)
    states = [materialize(merge("task_arithmetic", study.pretrained, models, **params)) for params, _ in picks.values()]
    measured = evaluate_on_study(study, states, chosen, split="test", limit=limit)
    counts = image_counts(study, chosen, split="test", limit=limit)
    names = list(picks)
    rows = [{"setting": names[s], "params": json.dumps(picks[names[s]][0], sort_keys=True),
             "validation_mean": picks[names[s]][1], "task": t, "accuracy": float(a), "n_images": counts[t]}
            for s, t, a in zip(measured["state"], measured["task"], measured["accuracy"])]
    table = pd.DataFrame(rows)
    table.attrs.update({"limit": limit, "validation_limit": validation_limit, "scalings": list(scalings),
                        "alphas": list(alphas), "betas": list(betas)})
    return table
