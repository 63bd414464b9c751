"""Interference measures across task vectors, computed key by key.

Inputs are sequences of task vectors: :class:`~freqmerge_viz.TaskVector` objects or any
mapping ``name -> tensor``. Only one key's K tensors are in memory at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch

from .backend import as_compute_tensor, resolve_device
from .errors import EmptyInputError, ParameterError, check_choice
from .keys import Patterns
from .spectral import FilterSpec, as_matrix
from .taskvector import TaskVectors, common_keys, stack_key, task_names  # noqa: F401  (re-exported)

StackTransform = Callable[[torch.Tensor, str], torch.Tensor]
"""A per-task transform over one key: ``(stack[K, *shape], key) -> stack[K, *shape]``."""


def _matrix_stack(stack: torch.Tensor, one_d: str) -> torch.Tensor | None:
    view = as_matrix(stack[0], one_d)
    if view is None:
        return None
    return stack.reshape(stack.shape[0], *view.shape)


@dataclass
class AmplitudeVarianceResult:
    """The Table 1 measure: ``mean`` over matrices and one row per matrix in ``per_matrix``.

    ``per_matrix`` columns: ``key``, ``shape`` (as analysed), ``bins`` (bins counted),
    ``kept_fraction`` (share of bins counted), ``variance`` (mean over counted bins of the
    across-task population variance), ``mean_amplitude`` (mean over tasks and counted bins)
    and ``value`` (``variance``, or ``variance / mean_amplitude`` when normalised).
    """

    mean: float
    per_matrix: pd.DataFrame
    settings: dict = field(default_factory=dict)


def amplitude_variance(task_vectors: TaskVectors, *, transform: StackTransform | None = None,
                       spectrum: str = "amplitude", within: FilterSpec | None = None,
                       normalize: bool = False, include: Patterns = None, exclude: Patterns = None,
                       one_d: str = "skip", device: torch.device | str | None = None) -> AmplitudeVarianceResult:
    """Across-task variance of the 2-D DFT amplitude, the interference measure of the paper's Table 1.

    For each matrix (see :func:`~freqmerge_viz.spectral.as_matrix`): apply `transform` to the
    ``[K, *shape]`` stack (a method's per-task step; identity for Task Arithmetic), take the
    unnormalised DFT amplitude (``spectrum="power"``: its square), the population variance
    (ddof 0) across the K tasks at each bin, and its mean over bins (only the bins where the
    gain of `within` is at least 0.5, when given). ``normalize=True`` divides that mean by the
    mean amplitude over the same bins and tasks. ``mean`` is the unweighted mean over matrices.
    """
    check_choice("spectrum", spectrum, ("amplitude", "power"))
    keys = common_keys(task_vectors, include, exclude)
    target = resolve_device(device)
    rows = []
    for key in keys:
        stack = stack_key(task_vectors, key, target)
        if transform is not None:
            stack = as_compute_tensor(transform(stack, key), target)
        matrices = _matrix_stack(stack, one_d)
        if matrices is None:
            continue
        amplitude = torch.fft.fft2(matrices).abs()
        values = amplitude**2 if spectrum == "power" else amplitude
        per_bin = values.var(dim=0, unbiased=False)
        shape = tuple(matrices.shape[-2:])
        if within is not None:
            counted = within.mask(shape, device=target, centered=False) >= 0.5
        else:
            counted = torch.ones(shape, dtype=torch.bool, device=target)
        n_counted = int(counted.sum())
        variance = float(per_bin[counted].mean()) if n_counted else float("nan")
        mean_amplitude = float(amplitude[:, counted].mean()) if n_counted else float("nan")
        value = variance / mean_amplitude if normalize and mean_amplitude > 0 else variance
        if normalize and not mean_amplitude > 0:
            value = float("nan")
        rows.append({"key": key, "shape": "×".join(map(str, shape)), "bins": n_counted,
                     "kept_fraction": n_counted / counted.numel(), "variance": variance,
                     "mean_amplitude": mean_amplitude, "value": value})
    if not rows:
        raise EmptyInputError("none of the selected keys is a matrix (2-D or more); "
                              f"selected {len(keys)} key(s), e.g. {keys[:3]}")
    table = pd.DataFrame(rows)
    settings = {"spectrum": spectrum, "normalize": normalize, "one_d": one_d,
                "within": None if within is None else repr(within),
                "transform": getattr(transform, "__name__", None) if transform else None}
    return AmplitudeVarianceResult(float(table["value"].mean(skipna=True)), table, settings)


def cosine_similarity_matrix(task_vectors: TaskVectors, include: Patterns = None,
                             exclude: Patterns = None, per_key: bool = False,
                             device: torch.device | str | None = None) -> pd.DataFrame:
    """Pairwise cosine similarity of task vectors.

    Global (``per_key=False``): a K×K DataFrame indexed by task name, each vector seen as one
    long vector over the selected keys. ``per_key=True``: a long table with columns ``key``,
    ``task_a``, ``task_b``, ``cosine`` for every key and pair ``a < b``. Zero vectors give NaN.
    """
    keys = common_keys(task_vectors, include, exclude)
    names = task_names(task_vectors)
    k = len(task_vectors)
    gram = torch.zeros(k, k, dtype=torch.float64)
    rows = []
    for key in keys:
        flat = stack_key(task_vectors, key, device).reshape(k, -1).to(torch.float64)
        key_gram = (flat @ flat.T).cpu()
        gram += key_gram
        if per_key:
            for i in range(k):
                for j in range(i + 1, k):
                    rows.append({"key": key, "task_a": names[i], "task_b": names[j],
                                 "cosine": _gram_cosine(key_gram, i, j)})
    if per_key:
        return pd.DataFrame(rows, columns=["key", "task_a", "task_b", "cosine"])
    table = [[_gram_cosine(gram, i, j) for j in range(k)] for i in range(k)]
    return pd.DataFrame(table, index=names, columns=names)


def _gram_cosine(gram: torch.Tensor, i: int, j: int) -> float:
    denominator = math.sqrt(float(gram[i, i]) * float(gram[j, j]))
    return float(gram[i, j]) / denominator if denominator > 0 else float("nan")


@dataclass
class SignConflictResult:
    """Sign disagreement between task vectors.

    ``pairwise``: K×K DataFrame; entry (a, b) is the share of coordinates where both tasks
    are non-zero and have opposite signs, among the coordinates where both are non-zero.
    ``overall``: among coordinates where at least two tasks are non-zero, the share where
    those tasks' signs are not all the same.
    """

    pairwise: pd.DataFrame
    overall: float


def sign_conflicts(task_vectors: TaskVectors, include: Patterns = None, exclude: Patterns = None,
                   device: torch.device | str | None = None) -> SignConflictResult:
    """Pairwise and overall sign-conflict rates (see :class:`SignConflictResult`)."""
    keys = common_keys(task_vectors, include, exclude)
    names = task_names(task_vectors)
    k = len(task_vectors)
    both_nonzero = torch.zeros(k, k, dtype=torch.float64)
    opposite = torch.zeros(k, k, dtype=torch.float64)
    shared = conflicted = 0
    for key in keys:
        signs = torch.sign(stack_key(task_vectors, key, device).reshape(k, -1))
        nonzero = (signs != 0).to(torch.float64)
        both_nonzero += (nonzero @ nonzero.T).cpu()
        opposite += ((signs > 0).to(torch.float64) @ (signs < 0).to(torch.float64).T).cpu()
        active = nonzero.sum(dim=0) >= 2
        mixed = (signs > 0).any(dim=0) & (signs < 0).any(dim=0)
        shared += int(active.sum())
        conflicted += int((active & mixed).sum())
    opposite = opposite + opposite.T
    rate = torch.where(both_nonzero > 0, opposite / both_nonzero.clamp_min(1), torch.nan)
    table = pd.DataFrame(rate.numpy(), index=names, columns=names)
    return SignConflictResult(table, conflicted / shared if shared else float("nan"))


def low_frequency_energy(task_vectors: TaskVectors, cutoff: float, units: str = "normalized",
                         include: Patterns = None, exclude: Patterns = None, one_d: str = "skip",
                         device: torch.device | str | None = None) -> pd.DataFrame:
    """Share of each task vector's spectral energy ``Σ|F|²`` below `cutoff` (ideal, paper convention).

    Returns one row per task and matrix: ``task``, ``key``, ``energy``, ``low_energy``,
    ``fraction``. The energy-weighted share per task is
    ``table.groupby("task")[["low_energy", "energy"]].sum()`` then the ratio; see
    :func:`low_frequency_energy_by_task`.
    """
    spec = FilterSpec(cutoff, band="low", units=units)
    keys = common_keys(task_vectors, include, exclude)
    names = task_names(task_vectors)
    target = resolve_device(device)
    rows = []
    for key in keys:
        matrices = _matrix_stack(stack_key(task_vectors, key, target), one_d)
        if matrices is None:
            continue
        power = torch.fft.fft2(matrices).abs() ** 2
        gain = spec.mask(tuple(matrices.shape[-2:]), device=target, dtype=power.dtype, centered=False)
        energy = power.sum(dim=(-2, -1))
        low = (power * gain).sum(dim=(-2, -1))
        for name, e, lo in zip(names, energy.tolist(), low.tolist()):
            rows.append({"task": name, "key": key, "energy": e, "low_energy": lo,
                         "fraction": lo / e if e > 0 else float("nan")})
    if not rows:
        raise EmptyInputError("none of the selected keys is a matrix (2-D or more)")
    return pd.DataFrame(rows)


def low_frequency_energy_by_task(table: pd.DataFrame) -> pd.Series:
    """Energy-weighted low-frequency share per task from a :func:`low_frequency_energy` table."""
    if not {"task", "energy", "low_energy"} <= set(table.columns):
        raise ParameterError("expected a table from low_frequency_energy (task, energy, low_energy)")
    sums = table.groupby("task", sort=False)[["low_energy", "energy"]].sum()
    return sums["low_energy"] / sums["energy"]


# --------------------------------------------------------------------------- FR's coefficients
def mean_abs_per_task(task_vectors, keys, device) -> list[float]:
    """``E(v_i)``: mean absolute value of each task vector over `keys` (all entries pooled)."""
    totals = [0.0] * len(task_vectors)
    count = 0
    for key in keys:
        for i, tv in enumerate(task_vectors):
            totals[i] += float(tv[key].to(device).abs().sum())
        count += task_vectors[0][key].numel()
    return [t / max(count, 1) for t in totals]


def fr_coefficients(mean_abs_values) -> list[float]:
    """FR-Merging's ``λ_i = E(v_i) / Σ_j E(v_j)`` (Eq. 3) from each task's mean |v|.

    If every task vector is zero, every λ gives the same merge and ``1/K`` is returned.
    """
    values = [float(v) for v in mean_abs_values]
    if any(v < 0 or v != v for v in values):
        raise ParameterError(f"mean absolute values must be >= 0, got {values}")
    total = sum(values)
    return [v / total for v in values] if total > 0 else [1.0 / len(values)] * len(values)
