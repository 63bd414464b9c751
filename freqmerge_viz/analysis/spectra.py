"""Spectra of task vectors as arrays and tidy tables.

An exactly-zero η = 0 row. On the demo study the matrices that write into the residual stream
(``attn.proj`` and ``mlp.fc2``) have a zero η = 0 row in every task vector's centred spectrum:
each column of their task vector sums to zero to float32 precision (the DFT's η = 0 row is the
DFT of the column sums), while ``attn.qkv`` and ``mlp.fc1`` show no such row. A plausible
mechanism, not verified here: every reader of the residual stream is a LayerNorm, whose
backward pass gives gradients with zero mean over the features, and the study fine-tunes with
SGD without weight decay, so the summed updates keep that zero mean. Pictures
(:func:`freqmerge_viz.plots.spectra_grid`, :mod:`freqmerge_viz.plots.spectra`) therefore draw
numerically zero bins grey, outside the colour scale
(:func:`~freqmerge_viz.plots.scales.spectrum_image`), and say so in their caption.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..backend import resolve_device
from ..errors import EmptyInputError, ParameterError
from ..metrics import matrix_shape, task_matrix
from ..progress import track
from ..taskvector import TaskVectors, entry_shape, key_entries, stack_key, task_names
from ..taskvector import TaskVector
from ..spectral import (as_matrix, half_amplitudes, half_radial_profile, log_amplitude_spectrum, radial_profile,
                        radial_shells)


def spectra_of_key(task_vectors: TaskVectors, key: str, device: torch.device | str | None = None,
                   one_d: str = "skip") -> np.ndarray:
    """Centred log amplitude ``ln|F(v)|`` of entry `key` for every task: ``[K, H, W]`` (numpy)."""
    return spectra_of_stack(key_entries(task_vectors, key, device), key, one_d)


def spectra_of_stack(stack: torch.Tensor | Sequence[torch.Tensor], key: str, one_d: str = "skip") -> np.ndarray:
    """:func:`spectra_of_key` from the key's entries already in hand: a ``stack[K, *shape]`` or K tensors."""
    matrices = [as_matrix(entry, one_d) for entry in stack]
    if not matrices or matrices[0] is None:
        shape = tuple(stack[0].shape) if len(stack) else ()
        raise ParameterError(f"{key!r} has shape {shape}: not a matrix")
    out = np.empty((len(matrices), *matrices[0].shape), dtype=np.float64 if stack[0].dtype == torch.float64 else np.float32)
    for task, matrix in enumerate(matrices):
        out[task] = log_amplitude_spectrum(matrix).cpu().numpy()
    return out


class RadialProfileMean:
    """Each task's radial amplitude profile, averaged over matrices, added one task and matrix at a time.

    :meth:`add` takes one task's half-spectrum amplitude of one matrix
    (:func:`~freqmerge_viz.spectral.half_amplitude`); :meth:`table` gives
    :func:`radial_profiles_table`'s table.
    """

    def __init__(self, n_tasks: int, n_bins: int):
        self.n_bins = n_bins
        self.totals: list = [None] * n_tasks
        self.centers = None
        self.matrices = 0
        self.shells = None

    def add(self, task: int, amplitude: torch.Tensor, shape: tuple[int, int]) -> None:
        """Add task `task`'s profile of one ``H × W`` matrix (`shape`); task 0 counts the matrix."""
        if self.shells is None or self.shells.shape != tuple(shape) or self.shells.index.device != amplitude.device:
            self.shells = radial_shells(shape, self.n_bins, device=amplitude.device)
        profile = half_radial_profile(amplitude, shape, n_bins=self.n_bins, shells=self.shells)
        total = self.totals[task]
        self.totals[task] = profile.values if total is None else total + profile.values
        self.centers = profile.centers
        self.matrices += task == 0

    def table(self, names) -> pd.DataFrame:
        """Columns ``task``, ``radius`` (shell centre, normalised units), ``amplitude`` (mean ``|F|``)."""
        if not self.matrices:
            raise EmptyInputError("none of the given keys is a matrix")
        centers = self.centers.cpu().numpy()
        return pd.DataFrame([{"task": name, "radius": float(r), "amplitude": float(a)}
                             for name, total in zip(names, self.totals)
                             for r, a in zip(centers, (total / self.matrices).cpu().numpy())])


def radial_profiles_table(task_vectors: TaskVectors, keys, n_bins: int = 24,
                          device: torch.device | str | None = None, progress: bool | None = False) -> pd.DataFrame:
    """Mean amplitude in normalised radial shells, averaged over `keys`, per task.

    Columns: ``task``, ``radius`` (shell centre, normalised units), ``amplitude``.
    Matrices of different shapes are comparable because radii are normalised. Streamed: one
    task's entry and half spectrum at a time.
    """
    target = resolve_device(device)
    profiles = RadialProfileMean(len(task_vectors), n_bins)
    for key in track(list(keys), "radial profiles", progress):
        shape = matrix_shape(entry_shape(task_vectors[0], key))
        if shape is None:
            continue
        task = 0  # a counter, not enumerate: its result tuple would keep the last amplitude alive
        for amplitude in half_amplitudes(task_matrix(tv, key, "skip", target) for tv in task_vectors):
            profiles.add(task, amplitude, shape)
            del amplitude
            task += 1
    return profiles.table(task_names(task_vectors))


def layer_and_matrix(key: str) -> tuple[str, str]:
    """``("blocks.0", "attn.qkv.weight")`` from ``"blocks.0.attn.qkv.weight"``; keys outside numbered
    blocks split at their first dot (``("patch_embed", "proj.weight")``)."""
    parts = key.split(".")
    if len(parts) > 2 and parts[1].isdigit():
        return ".".join(parts[:2]), ".".join(parts[2:])
    return (parts[0], ".".join(parts[1:]) or parts[0])


def matrix_keys(task_vectors: TaskVectors, one_d: str = "skip") -> list[str]:
    """The keys of the first task vector that are analysed as matrices (see :func:`~freqmerge_viz.as_matrix`)."""
    first = task_vectors[0]
    return [k for k in first if matrix_shape(entry_shape(first, k), one_d) is not None]


def spectra_table(task_vectors: TaskVectors, keys=None, device: torch.device | str | None = "cpu",
                  one_d: str = "skip") -> pd.DataFrame:
    """Centred log amplitude ``ln|F(v)|`` of every bin, per matrix and task, as a long table.

    Columns: ``layer, matrix, key, task, eta, gamma`` (row and column frequency in bins from DC,
    DC at 0) and ``log_amplitude``. One row per bin and task, so pass few `keys` for big models
    (default: every matrix).
    """
    names = task_names(task_vectors)
    frames = []
    for key in matrix_keys(task_vectors, one_d) if keys is None else list(keys):
        spectra = spectra_of_key(task_vectors, key, device=device, one_d=one_d)
        k, h, w = spectra.shape
        eta = np.arange(h) - h // 2
        gamma = np.arange(w) - w // 2
        layer, matrix = layer_and_matrix(key)
        frames.append(pd.DataFrame({"layer": layer, "matrix": matrix, "key": key,
                                    "task": np.repeat(names, h * w),
                                    "eta": np.tile(np.repeat(eta, w), k), "gamma": np.tile(gamma, h * k),
                                    "log_amplitude": spectra.reshape(-1)}))
    if not frames:
        raise EmptyInputError("none of the given keys is a matrix")
    return pd.concat(frames, ignore_index=True)


def radial_profiles_by_key(task_vectors: TaskVectors, keys=None, n_bins: int = 16,
                           device: torch.device | str | None = "cpu", one_d: str = "skip",
                           progress: bool | None = False) -> pd.DataFrame:
    """Mean DFT amplitude of each task vector in normalised radial shells, per matrix.

    Columns: ``layer, matrix, key, task, radius`` (shell centre, normalised: 0 = DC, 1 = the
    spectrum's corner) and ``amplitude`` (mean unnormalised ``|F(v)|`` in the shell; 0 for a
    shell with no bin). Default `keys`: every matrix. `progress`: a bar over the keys
    (:mod:`freqmerge_viz.progress`).
    """
    names = task_names(task_vectors)
    rows = []
    chosen = matrix_keys(task_vectors, one_d) if keys is None else list(keys)
    for key in track(chosen, "radial profiles by key: keys", progress):
        stack = stack_key(task_vectors, key, device)
        view = as_matrix(stack[0], one_d)
        if view is None:
            raise ParameterError(f"{key!r} has shape {tuple(stack.shape[1:])}: not a matrix")
        profile = radial_profile(stack.reshape(stack.shape[0], *view.shape), n_bins=n_bins)
        layer, matrix = layer_and_matrix(key)
        centers = profile.centers.cpu().numpy()
        for name, values in zip(names, profile.values.cpu().numpy()):
            rows += [{"layer": layer, "matrix": matrix, "key": key, "task": name, "radius": float(r),
                      "amplitude": float(a)} for r, a in zip(centers, values)]
    if not rows:
        raise EmptyInputError("none of the given keys is a matrix")
    return pd.DataFrame(rows)

def profile_shapes(profiles: pd.DataFrame) -> pd.DataFrame:
    """How flat each radial profile of :func:`radial_profiles_by_key` is: one row per ``key, task``
    with ``deviation`` (largest distance of a shell's amplitude from the profile's mean, as a
    fraction of that mean), ``dc_over_mean`` (the innermost shell over the mean) and
    ``corner_over_dc`` (the outermost shell over the innermost). A flat spectrum gives 0, 1 and 1;
    the paper's low-frequency concentration gives ``dc_over_mean`` well above 1."""
    rows = []
    for (key, task), group in profiles.groupby(["key", "task"], sort=False):
        amplitude = group.sort_values("radius")["amplitude"].to_numpy(float)
        mean = amplitude.mean()
        rows.append({"key": key, "task": task, "deviation": float(np.max(np.abs(amplitude - mean)) / mean),
                     "dc_over_mean": float(amplitude[0] / mean), "corner_over_dc": float(amplitude[-1] / amplitude[0])})
    return pd.DataFrame(rows, columns=["key", "task", "deviation", "dc_over_mean", "corner_over_dc"])


def spectrum_key(task_vector: TaskVector) -> str:
    """The matrix the report draws: the first attention weight matrix, else the first matrix."""
    matrices = [k for k in task_vector if len(task_vector.shape_of(k)) >= 2]
    if not matrices:
        raise EmptyInputError(f"task vector {task_vector.name!r} has no matrix to draw")
    preferred = [k for k in matrices if "attn" in k and k.endswith("weight")]
    return (preferred or matrices)[0]
