"""Amplitude variance of each method's per-task step (paper Table 1), with the kept-bins caveat.

Each row measures :func:`~freqmerge_viz.amplitude_variance` of the task vectors after a
registered method's per-task step (:func:`~freqmerge_viz.method_transform`): over all bins
(the paper's measure), over the bins a reference filter keeps (``kept_bins``: every row over
the *same* bins, so a filter cannot win by zeroing the bins it removes) and normalised by
the mean amplitude. Changes are in percent of the baseline row (task arithmetic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd
import torch

from ..errors import ParameterError
from ..methods import get_method, method_transform
from ..metrics import amplitude_variances
from ..progress import track
from ..taskvector import TaskVectors
from ..methods.fr import filter_spec
from ..spectral import FilterSpec
from .evaluation import transformed


@dataclass(frozen=True)
class MethodSetting:
    """A row of Table 1: a display label, a registered method and the parameters of its step."""

    label: str
    method: str
    params: Mapping = field(default_factory=dict)


DEFAULT_ROWS = (
    MethodSetting("TA", "task_arithmetic"),
    MethodSetting("DARE", "dare_linear"),
    MethodSetting("TIES", "ties"),
    MethodSetting("Breadcrumbs", "breadcrumbs"),
    MethodSetting("PCB", "pcb"),
    MethodSetting("FR", "fr"),
    MethodSetting("FR (official)", "fr", {"preset": "official"}),
)
"""The paper's rows at each method's registered defaults (TIES/PCB density 0.2, DARE 0.5,
Breadcrumbs 0.9 with γ 0.01, FR ideal high-pass at normalised radius 0.1), plus FR's official
reading. Scalings do not enter the per-task step, so they do not matter here."""


def as_setting(row) -> MethodSetting:
    """A :class:`MethodSetting` from itself, a method name, or ``(label, method[, params])``."""
    if isinstance(row, MethodSetting):
        setting = row
    elif isinstance(row, str):
        setting = MethodSetting(row, row)
    elif isinstance(row, (tuple, list)) and len(row) in (2, 3):
        setting = MethodSetting(*row)
    else:
        raise ParameterError(f"a Table 1 row is a method name, (label, method[, params]) or MethodSetting; "
                             f"got {row!r}")
    get_method(setting.method)
    return setting


def reference_filter(params: Mapping | None = None) -> FilterSpec:
    """The filter of FR-Merging with `params` (default: its registered defaults)."""
    return filter_spec(get_method("fr").resolve(dict(params or {})))


def table1(task_vectors: TaskVectors, rows: Sequence = DEFAULT_ROWS, *, baseline: str = "TA",
           kept_within: FilterSpec | None = None, device: torch.device | str | None = "cpu",
           progress: bool | None = False) -> pd.DataFrame:
    """One row per method setting; columns ``label, method, params, all_bins, kept_bins, normalized``,
    ``change_all_pct, change_kept_pct, change_normalized_pct`` (percent against the `baseline` row)
    and ``kept_fraction`` (mean share of a matrix's bins that ``kept_bins`` counts).

    ``kept_bins`` counts, for every row, the bins where the gain of `kept_within` is at least 0.5
    (default: FR's filter at its registered defaults, an ideal high-pass at normalised radius 0.1).
    An ideal high-pass passes those bins unchanged, so FR's ``kept_bins`` equals task arithmetic's.
    `progress`: a bar over the rows (:mod:`freqmerge_viz.progress`).
    """
    settings = [as_setting(r) for r in rows]
    labels = [s.label for s in settings]
    if len(set(labels)) != len(labels):
        raise ParameterError(f"Table 1 labels must be unique, got {labels}")
    if baseline not in labels:
        raise ParameterError(f"baseline {baseline!r} is not one of the rows {labels}")
    within = kept_within or reference_filter()
    k = len(task_vectors)
    records = []
    for setting in track(settings, "table1: methods", progress, unit="method"):
        stepped = transformed(task_vectors, method_transform(setting.method, k, **dict(setting.params)))
        measured = amplitude_variances(stepped, {"all": {}, "kept": {"within": within},
                                                 "normalized": {"normalize": True}}, device=device)
        everything, kept, normalized = (measured[m] for m in ("all", "kept", "normalized"))
        records.append({"label": setting.label, "method": setting.method,
                        "params": json.dumps(dict(setting.params), sort_keys=True),
                        "all_bins": everything.mean, "kept_bins": kept.mean, "normalized": normalized.mean,
                        "kept_fraction": float(kept.per_matrix["kept_fraction"].mean())})
    table = pd.DataFrame(records)
    base = table.set_index("label").loc[baseline]
    for column in ("all_bins", "kept_bins", "normalized"):
        table[f"change_{column.replace('_bins', '')}_pct"] = 100.0 * (table[column] / base[column] - 1.0)
    table.attrs.update({"baseline": baseline, "kept_within": repr(within), "tasks": k})
    return table
