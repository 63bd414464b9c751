"""Every per-key analysis of the report in one pass over the keys.

The report measures interference (:func:`~freqmerge_viz.analysis.interference_table`), cosine
similarity, sign conflicts, low-frequency energy, radial profiles and one key's spectra. Run
one by one, each reads every checkpoint again; :func:`scan` reads each key's K entries once,
compares them block by block (cosine and sign conflicts compare tasks entry by entry), then
transforms each task's matrix once (``rfft2``), dropping the entry, and feeds that half spectrum
to every spectral measure. Each table equals what its own function gives. Memory: one key's K
entries, one task's half spectrum and the interference accumulators (two float64 half spectra),
and the entries go as the spectra are made: at most about K + 3 tensors of the largest key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..backend import resolve_device
from ..errors import EmptyInputError
from ..metrics import (AmplitudeMoments, SignConflictResult, add_sign_counts, cosine_table, energy_row, key_gram,
                       key_sign_counts, matrix_shape, sign_conflict_result, spectral_energy)
from ..progress import track
from ..spectral import FilterSpec, half_amplitudes
from ..taskvector import TaskVectors, common_keys, entry_shape, key_entries, task_names
from .interference import FilterSetting, interference_from_keys, key_interference
from .spectra import RadialProfileMean, spectra_of_stack


@dataclass
class ScanResult:
    """What :func:`scan` measured: each field is what the named function returns."""

    interference: pd.DataFrame
    """:func:`~freqmerge_viz.analysis.interference_table`."""
    cosine: pd.DataFrame
    """:func:`~freqmerge_viz.cosine_similarity_matrix` (global)."""
    conflicts: SignConflictResult
    """:func:`~freqmerge_viz.sign_conflicts`."""
    energy: pd.DataFrame
    """:func:`~freqmerge_viz.low_frequency_energy` at the scan's energy cutoff."""
    profiles: pd.DataFrame
    """:func:`~freqmerge_viz.analysis.radial_profiles_table` over the keys of two or more dimensions."""
    spectra: np.ndarray | None
    """:func:`~freqmerge_viz.analysis.spectra_of_key` of the spectrum key (``None`` when none was asked for)."""


def scan(task_vectors: TaskVectors, settings: Sequence[FilterSetting], energy_cutoff: float,
         spectrum_key: str | None = None, profile_bins: int = 24, include=None, exclude=None,
         device: torch.device | str | None = None, progress: bool | None = False) -> ScanResult:
    """Measure every table of the report in one pass over the keys (module docstring).

    `settings`: the interference table's filters; `energy_cutoff`: the low-frequency energy's
    normalised cutoff (ideal low-pass, paper convention); `spectrum_key`: the key whose centred
    log spectra are returned; `profile_bins`: radial shells. Keys of one dimension are skipped
    by the spectral measures (``one_d="skip"``), as by each function's default.
    """
    keys = common_keys(task_vectors, include, exclude)
    names = task_names(task_vectors)
    target = resolve_device(device)
    low_pass = FilterSpec(energy_cutoff, band="low")
    gram = torch.zeros(len(names), len(names), dtype=torch.float64)
    counts = None
    interference, energy, spectra = [], [], None
    profiles = RadialProfileMean(len(names), profile_bins)
    for key in track(keys, "report", progress):
        entries = key_entries(task_vectors, key, target)
        gram += key_gram(entries)
        counts = add_sign_counts(counts, key_sign_counts(entries))
        shape = matrix_shape(entry_shape(task_vectors[0], key))
        if shape is None:
            continue
        if key == spectrum_key:
            spectra = spectra_of_stack(entries, key)
        moments, task = None, 0  # a counter, not enumerate: its result tuple would keep the last amplitude alive
        for amplitude in half_amplitudes(_taken(entries, shape)):
            energy.append(energy_row(names[task], key, *spectral_energy(amplitude, shape, low_pass)))
            profiles.add(task, amplitude, shape)
            moments = moments or AmplitudeMoments(shape, amplitude.dtype)
            moments.add(amplitude)
            del amplitude
            task += 1
        interference.append(key_interference(moments, settings))
        del moments
    if not energy:
        raise EmptyInputError("none of the selected keys is a matrix (2-D or more)")
    return ScanResult(interference_from_keys(interference, settings), cosine_table(gram, names),
                      sign_conflict_result(counts, names), pd.DataFrame(energy), profiles.table(names), spectra)


def _taken(entries: list[torch.Tensor], shape: tuple[int, int]):
    """Each entry as an ``H × W`` matrix, taken out of `entries` as it is handed on, so that an
    entry is freed once its spectrum is made."""
    while entries:
        yield entries.pop(0).view(shape)
