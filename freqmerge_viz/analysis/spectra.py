"""Spectra of task vectors as arrays and tidy tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import EmptyInputError, ParameterError
from ..metrics import TaskVectors, stack_key, task_names
from ..spectral import as_matrix, log_amplitude_spectrum, radial_profile


def spectra_of_key(task_vectors: TaskVectors, key: str, device: torch.device | str | None = None,
                   one_d: str = "skip") -> np.ndarray:
    """Centred log amplitude ``ln|F(v)|`` of entry `key` for every task: ``[K, H, W]`` (numpy)."""
    stack = stack_key(task_vectors, key, device)
    view = as_matrix(stack[0], one_d)
    if view is None:
        raise ParameterError(f"{key!r} has shape {tuple(stack.shape[1:])}: not a matrix")
    return log_amplitude_spectrum(stack.reshape(stack.shape[0], *view.shape)).cpu().numpy()


def radial_profiles_table(task_vectors: TaskVectors, keys, n_bins: int = 24,
                          device: torch.device | str | None = None) -> pd.DataFrame:
    """Mean amplitude in normalised radial shells, averaged over `keys`, per task.

    Columns: ``task``, ``radius`` (shell centre, normalised units), ``amplitude``.
    Matrices of different shapes are comparable because radii are normalised.
    """
    names = task_names(task_vectors)
    total = None
    centers = None
    counted = 0
    for key in keys:
        stack = stack_key(task_vectors, key, device)
        view = as_matrix(stack[0])
        if view is None:
            continue
        profile = radial_profile(stack.reshape(stack.shape[0], *view.shape), n_bins=n_bins)
        total = profile.values if total is None else total + profile.values
        centers = profile.centers
        counted += 1
    if total is None:
        raise EmptyInputError("none of the given keys is a matrix")
    mean = (total / counted).cpu().numpy()
    rows = [{"task": name, "radius": float(r), "amplitude": float(a)}
            for name, values in zip(names, mean) for r, a in zip(centers.cpu().numpy(), values)]
    return pd.DataFrame(rows)
