"""Adaptive per-layer cutoffs (:mod:`freqmerge_viz.cutoff_rules`) against FR's fixed cutoff on a study:
which cutoff each matrix gets, and the merged accuracy of each rule at its own validation-chosen
scaling."""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from ..methods import merge
from ..progress import track
from ..scopes import depth_fractions, layer_position
from .evaluation import finetuned_subset, study_tasks
from .singular_views import role_of
from .sweeps import SCALINGS, SweepPoint, run_point

RULES: dict[str, dict] = {"fixed": {}, "energy": {"cutoff_rule": "energy"}, "variance": {"cutoff_rule": "variance"}}
"""The FR settings compared by default: the paper's fixed cutoff (ideal high-pass, normalised radius
0.1) and the two adaptive rules at their registered defaults (energy: keep 90% of each matrix's
spectral energy; variance: grid up to 0.5)."""


def chosen_cutoffs(study, params: Mapping | None = None, *, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """The cutoff FR with `params` (an adaptive ``cutoff_rule``) gives each filtered matrix of the
    study's task vectors: ``key, layer_stack, layer, depth, role, cutoff`` (the cutoff's units,
    normalised radius by default), from the merge's ``statistics["cutoffs"]`` (nothing is evaluated)."""
    params = dict(params or {})
    state = merge("fr", study.pretrained, finetuned_subset(study, tasks), **params)
    cutoffs = state.statistics.get("cutoffs", {})
    depth = depth_fractions(cutoffs)
    rows = []
    for key, cutoff in cutoffs.items():
        position = layer_position(key)
        rows.append({"key": key, "layer_stack": position[0] if position else None,
                     "layer": position[1] if position else None, "depth": depth[key], "role": role_of(key),
                     "cutoff": float(cutoff)})
    table = pd.DataFrame(rows, columns=["key", "layer_stack", "layer", "depth", "role", "cutoff"])
    table.attrs.update({"params": params, "rule": state.params.get("cutoff_rule"),
                        "fixed_cutoff": state.params["cutoff"]})
    return table


def rule_comparison(study, rules: Mapping[str, Mapping] = RULES, *, kind: str = "ideal", cutoff: float = 0.1,
                    scalings: Sequence[float] = SCALINGS, tasks: Sequence[str] | None = None, limit: int | None = 300,
                    validation_limit: int | None = 150, progress: bool | None = False) -> pd.DataFrame:
    """FR under each cutoff rule, each at its own scaling: the best of `scalings` by mean accuracy on
    the first `validation_limit` validation images per task (a single scaling: used as is), then
    accuracy on the first `limit` test images (:func:`~freqmerge_viz.analysis.sweeps.run_point`).

    One row per rule and task: ``rule``, then run_point's columns (``scaling``, ``validation_mean``,
    ``task``, ``accuracy`` as a fraction, ``n_images``, ...). `cutoff` is the fixed rule's cutoff
    (the adaptive rules choose their own per matrix; their rows still carry it in ``cutoff``).
    `progress`: a bar over the rules (:mod:`freqmerge_viz.progress`).
    """
    chosen = tuple(study_tasks(study, tasks))
    frames = []
    for name, params in track(list(rules.items()), "adaptive cutoffs: rules", progress, unit="rule"):
        point = SweepPoint(kind, float(cutoff), dict(params), scalings=tuple(scalings), tasks=chosen, limit=limit,
                           validation_limit=validation_limit)
        frame = run_point(study, point)
        frame.insert(0, "rule", name)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.attrs.update({"scalings": list(scalings), "limit": limit, "validation_limit": validation_limit,
                        "tasks": list(chosen)})
    return table
