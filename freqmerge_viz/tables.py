"""Tidy-table reshaping shared by the analyses (which return the tables) and the figures
(which draw them): pivots of the long tables into matrices. Pure pandas, no computation."""

from __future__ import annotations

import pandas as pd

from .errors import ParameterError


def generalisation_pivot(table: pd.DataFrame, filtered: bool, metric: str = "accuracy") -> pd.DataFrame:
    """Source × target matrix of `metric` for the filtered or unfiltered rows, in task order."""
    missing = [c for c in ("source", "target", "filtered", metric) if c not in table.columns]
    if missing:
        raise ParameterError(f"generalisation table lacks column(s) {missing}")
    part = table[table["filtered"] == bool(filtered)]
    order = list(dict.fromkeys(part["source"]))
    targets = list(dict.fromkeys(part["target"]))
    return part.pivot(index="source", columns="target", values=metric).loc[order, targets]


def generalisation_difference(table: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Source × target matrix of filtered − unfiltered `metric` (positive: the filter helps)."""
    return generalisation_pivot(table, True, metric) - generalisation_pivot(table, False, metric)


def disentanglement_pivot(table: pd.DataFrame, task: str | None = None, value: str = "disagreement") -> pd.DataFrame:
    """α_1 (rows) × α_2 (columns) matrix of `value`: one task's, or summed over both tasks
    (``task=None``; for ``disagreement`` that is ξ, in [0, 2])."""
    missing = [c for c in ("alpha_1", "alpha_2", "task", value) if c not in table.columns]
    if missing:
        raise ParameterError(f"disentanglement table lacks column(s) {missing}")
    part = table if task is None else table[table["task"] == task]
    if part.empty:
        raise ParameterError(f"no rows for task {task!r}")
    return part.pivot_table(index="alpha_1", columns="alpha_2", values=value, aggfunc="sum")
