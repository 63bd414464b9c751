"""Amplitude variance of filtered task vectors beside unfiltered ones (Table 1 analogue), streamed
key by key and task by task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from ..errors import EmptyInputError
from ..keys import Patterns
from ..metrics import AmplitudeMoments, key_moments, mean_over_matrices, measure_value, moment_measure
from ..progress import track
from ..spectral import FilterSpec
from ..taskvector import TaskVectors, common_keys

MEASURES = ("all_bins", "kept_bins", "unfiltered_kept_bins", "normalized")
"""The per-setting measures of :func:`interference_table`, each a mean over matrices."""


@dataclass(frozen=True)
class FilterSetting:
    """A named filter to compare against the unfiltered task vectors."""

    label: str
    spec: FilterSpec


def key_interference(moments: AmplitudeMoments, settings: Sequence[FilterSetting]) -> list[dict]:
    """One matrix's :data:`MEASURES` for the unfiltered task vectors and for each setting, from
    the moments of their unfiltered spectra (:func:`~freqmerge_viz.metrics.moment_measure`:
    every filter row comes from the same one transform per task)."""
    base = moment_measure(moments)
    rows = [{"all_bins": base["variance"], "kept_bins": base["variance"], "unfiltered_kept_bins": base["variance"],
             "normalized": measure_value(base["variance"], base["mean_amplitude"], True)}]
    for setting in settings:
        filtered = moment_measure(moments, gain=setting.spec)
        rows.append({"all_bins": filtered["variance"],
                     "kept_bins": moment_measure(moments, gain=setting.spec, within=setting.spec)["variance"],
                     "unfiltered_kept_bins": moment_measure(moments, within=setting.spec)["variance"],
                     "normalized": measure_value(filtered["variance"], filtered["mean_amplitude"], True)})
    return rows


def interference_from_keys(per_key: Sequence[list[dict]], settings: Sequence[FilterSetting]) -> pd.DataFrame:
    """:func:`interference_table`'s table from :func:`key_interference` of every matrix: each
    measure is the unweighted mean over matrices (NaN ones left out), as in
    :func:`~freqmerge_viz.amplitude_variance`."""
    if not per_key:
        raise EmptyInputError("none of the selected keys is a matrix (2-D or more)")
    labels = ["unfiltered"] + [s.label for s in settings]
    rows = []
    for i, label in enumerate(labels):
        means = {m: mean_over_matrices(key_rows[i][m] for key_rows in per_key) for m in MEASURES}
        rows.append({"setting": label, **means,
                     "change_all_pct": 100.0 * (means["all_bins"] / rows[0]["all_bins"] - 1.0) if rows else 0.0,
                     "change_kept_pct": 100.0 * (means["kept_bins"] / means["unfiltered_kept_bins"] - 1.0)
                     if rows else 0.0})
    return pd.DataFrame(rows)


def interference_table(task_vectors: TaskVectors, settings: Sequence[FilterSetting],
                       include: Patterns = None, exclude: Patterns = None, one_d: str = "skip",
                       device: torch.device | str | None = None, progress: bool | None = False) -> pd.DataFrame:
    """One row per setting, the first being the unfiltered task vectors (``"unfiltered"``).

    Columns: ``setting``; ``all_bins`` (Table 1's measure); ``kept_bins`` (the same over the
    bins the filter keeps); ``unfiltered_kept_bins`` (unfiltered vectors over those same
    bins, the fair comparison for ``kept_bins``); ``normalized`` (``all_bins`` divided by the
    mean amplitude); ``change_all_pct`` and ``change_kept_pct`` (relative to the unfiltered
    vectors over the same bins, in percent). Variances are in units of ``|F|²`` (squared weight
    units), equal to :func:`~freqmerge_viz.amplitude_variance` with the filter as transform.

    Streamed: key by key, one task's entry and its ``rfft2`` half spectrum at a time, with two
    float64 accumulators per key (:func:`~freqmerge_viz.metrics.key_moments`); one transform
    per task and key serves every row. `progress` shows a bar over keys
    (:mod:`freqmerge_viz.progress`).
    """
    keys = common_keys(task_vectors, include, exclude)
    per_key = []
    for key in track(keys, "interference", progress):
        moments = key_moments(task_vectors, key, one_d, device)
        if moments is not None:
            per_key.append(key_interference(moments, settings))
        del moments
    return interference_from_keys(per_key, settings)
