"""Amplitude variance of filtered task vectors beside unfiltered ones (Table 1 analogue)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from ..keys import Patterns
from ..metrics import amplitude_variance
from ..taskvector import TaskVectors
from ..spectral import FilterSpec, filter_stack


@dataclass(frozen=True)
class FilterSetting:
    """A named filter to compare against the unfiltered task vectors."""

    label: str
    spec: FilterSpec


def interference_table(task_vectors: TaskVectors, settings: Sequence[FilterSetting],
                       include: Patterns = None, exclude: Patterns = None, one_d: str = "skip",
                       device: torch.device | str | None = None) -> pd.DataFrame:
    """One row per setting, the first being the unfiltered task vectors (``"unfiltered"``).

    Columns: ``setting``; ``all_bins`` (Table 1's measure); ``kept_bins`` (the same over the
    bins the filter keeps); ``unfiltered_kept_bins`` (unfiltered vectors over those same
    bins, the fair comparison for ``kept_bins``); ``normalized`` (``all_bins`` divided by the
    mean amplitude); ``change_all_pct`` and ``change_kept_pct`` (relative to the unfiltered
    vectors over the same bins, in percent).
    """
    common = dict(include=include, exclude=exclude, one_d=one_d, device=device)
    base = amplitude_variance(task_vectors, **common).mean
    base_normalized = amplitude_variance(task_vectors, normalize=True, **common).mean
    rows = [{"setting": "unfiltered", "all_bins": base, "kept_bins": base,
             "unfiltered_kept_bins": base, "normalized": base_normalized,
             "change_all_pct": 0.0, "change_kept_pct": 0.0}]
    for setting in settings:
        spec = setting.spec

        def transform(stack, key, spec=spec):
            return filter_stack(stack, spec, one_d)

        transform.__name__ = f"filter[{setting.label}]"
        filtered = amplitude_variance(task_vectors, transform=transform, **common).mean
        kept = amplitude_variance(task_vectors, transform=transform, within=spec, **common).mean
        base_kept = amplitude_variance(task_vectors, within=spec, **common).mean
        normalized = amplitude_variance(task_vectors, transform=transform, normalize=True, **common).mean
        rows.append({"setting": setting.label, "all_bins": filtered, "kept_bins": kept,
                     "unfiltered_kept_bins": base_kept, "normalized": normalized,
                     "change_all_pct": 100.0 * (filtered / base - 1.0),
                     "change_kept_pct": 100.0 * (kept / base_kept - 1.0)})
    return pd.DataFrame(rows)
