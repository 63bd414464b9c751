"""Interference measures across task vectors, computed key by key.

Inputs are sequences of task vectors: :class:`~freqmerge_viz.TaskVector` objects or any
mapping ``name -> tensor``. Only one key's K tensors are in memory at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import pandas as pd
import torch

from .backend import BLOCK_ENTRIES, as_compute_tensor, resolve_device
from .errors import EmptyInputError, ParameterError, check_choice
from .keys import Patterns
from .progress import track
from .spectral import FilterSpec, as_matrix, half_amplitudes, half_spectrum_weights, matrix_stack
from .taskvector import TaskVectors, common_keys, entry_shape, stack_key, task_names  # noqa: F401  (re-exported)

StackTransform = Callable[[torch.Tensor, str], torch.Tensor]
"""A per-task transform over one key: ``(stack[K, *shape], key) -> stack[K, *shape]``."""


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

    Computed on the ``rfft2`` half spectrum, each bin weighted by the full-spectrum bins it
    stands for (:func:`half_spectrum_moments`, :func:`weighted_bin_sums`): the same numbers as
    the full ``fft2`` spectrum for half the transform; one key's ``[K, *shape]`` stack and half
    of it again are held at a time.
    """
    return amplitude_variances(task_vectors, {"measure": {"within": within, "normalize": normalize}},
                               transform=transform, spectrum=spectrum, include=include, exclude=exclude,
                               one_d=one_d, device=device)["measure"]


def amplitude_variances(task_vectors: TaskVectors, measures: dict[str, dict], *,
                        transform: StackTransform | None = None, spectrum: str = "amplitude",
                        include: Patterns = None, exclude: Patterns = None, one_d: str = "skip",
                        device: torch.device | str | None = None) -> dict[str, AmplitudeVarianceResult]:
    """Several :func:`amplitude_variance` measures of the same task vectors from one DFT per
    matrix: `measures` maps a name to its ``within`` (a :class:`FilterSpec` or ``None``) and
    ``normalize``; returns ``{name: AmplitudeVarianceResult}``, each equal to its own call."""
    check_choice("spectrum", spectrum, ("amplitude", "power"))
    for name, options in measures.items():
        unknown = set(options) - {"within", "normalize"}
        if unknown:
            raise ParameterError(f"measure {name!r}: unknown option(s) {sorted(unknown)}; use within, normalize")
    keys = common_keys(task_vectors, include, exclude)
    target = resolve_device(device)
    rows: dict[str, list] = {name: [] for name in measures}
    for key, matrices in key_matrices(task_vectors, keys, transform, one_d, target):
        shape = (int(matrices.shape[-2]), int(matrices.shape[-1]))
        variance, mean_amplitude = half_spectrum_moments(matrices, spectrum)
        del matrices
        for name, options in measures.items():
            within, normalize = options.get("within"), bool(options.get("normalize", False))
            sums = weighted_bin_sums(variance, mean_amplitude, shape, within)
            n_counted = sums["bins"]
            variance_mean = sums["variance_sum"] / n_counted if n_counted else float("nan")
            amplitude_mean = sums["amplitude_sum"] / n_counted if n_counted else float("nan")
            rows[name].append({"key": key, "shape": "×".join(map(str, shape)), "bins": n_counted,
                               "kept_fraction": n_counted / (shape[0] * shape[1]), "variance": variance_mean,
                               "mean_amplitude": amplitude_mean,
                               "value": measure_value(variance_mean, amplitude_mean, normalize)})
    if measures and not next(iter(rows.values())):
        raise EmptyInputError("none of the selected keys is a matrix (2-D or more); "
                              f"selected {len(keys)} key(s), e.g. {keys[:3]}")
    out = {}
    for name, options in measures.items():
        table = pd.DataFrame(rows[name])
        within = options.get("within")
        settings = {"spectrum": spectrum, "normalize": bool(options.get("normalize", False)), "one_d": one_d,
                    "within": None if within is None else repr(within),
                    "transform": getattr(transform, "__name__", None) if transform else None}
        out[name] = AmplitudeVarianceResult(mean_over_matrices(table["value"]), table, settings)
    return out


def half_spectrum_moments(matrices: torch.Tensor, spectrum: str = "amplitude") -> tuple[torch.Tensor, torch.Tensor]:
    """Per bin of the ``rfft2`` half spectrum (``[H, W//2 + 1]``) of K real matrices
    ``[K, H, W]``: the population variance (ddof 0) across the K tasks of the DFT amplitude
    (``spectrum="power"``: of its square) and the mean amplitude over the tasks, in the
    matrices' dtype.

    A real matrix's amplitude is point-symmetric, so these half-spectrum values stand for the
    whole spectrum (:func:`weighted_bin_sums` weighs them). One task's complex half spectrum
    at a time is made (``rfft2``) and its amplitude (``hypot``) written into one ``[K, H,
    W//2 + 1]`` buffer: the extra memory is half the stack plus one task's spectrum. The
    variance is the two-pass form, shifted by the first task (the mean deviation from it, then
    the mean squared deviation from that, a task at a time): about 20 times faster on a CPU
    than ``torch.var`` over the task dimension, as accurate, and exactly 0 for equal tasks.
    """
    k, h, w = matrices.shape
    amplitude = torch.empty((k, h, w // 2 + 1), dtype=matrices.dtype, device=matrices.device)
    for task in range(k):
        half = torch.fft.rfft2(matrices[task])
        torch.hypot(half.real, half.imag, out=amplitude[task])
        del half
    if spectrum == "power":
        mean_amplitude = amplitude.mean(dim=0)
        values = amplitude.square_()
    else:
        values = amplitude
    # two passes over the deviations from the first task (identical tasks give exactly 0)
    reference = values[0]
    deviation = torch.empty_like(reference)
    shift = torch.zeros_like(reference)
    for task in range(1, k):
        shift.add_(torch.sub(values[task], reference, out=deviation))
    shift.div_(k)
    variance = torch.zeros_like(reference)
    for task in range(k):
        torch.sub(values[task], reference, out=deviation).sub_(shift)
        variance.addcmul_(deviation, deviation)
    if spectrum != "power":
        mean_amplitude = shift.add_(reference)
    return variance.div_(k), mean_amplitude


def weighted_bin_sums(variance: torch.Tensor, mean_amplitude: torch.Tensor, shape: tuple[int, int],
                      within: FilterSpec | None = None) -> dict:
    """Full-spectrum sums of two half-spectrum quantities of an ``H × W`` real matrix
    (:func:`half_spectrum_moments`): ``variance_sum`` and ``amplitude_sum`` over every bin, or
    over the bins where the gain of `within` is at least 0.5 (``within.half_counts``), and
    ``bins``, the number of full-spectrum bins counted. Each half bin counts for the bins it
    stands for (``half_spectrum_weights``); sums are float64."""
    h, w = shape
    if within is None:
        columns = half_spectrum_weights(w, variance.device, variance.dtype)
        variance_sum = torch.mv(variance, columns).sum(dtype=torch.float64)
        amplitude_sum = torch.mv(mean_amplitude, columns).sum(dtype=torch.float64)
        bins = h * w
    else:
        counts = within.half_counts((h, w), device=variance.device)
        weights = counts.to(variance.dtype)
        variance_sum = (variance * weights).sum(dtype=torch.float64)
        amplitude_sum = (mean_amplitude * weights).sum(dtype=torch.float64)
        bins = int(counts.sum(dtype=torch.int64))
    return {"variance_sum": float(variance_sum), "amplitude_sum": float(amplitude_sum), "bins": bins}


def key_matrices(task_vectors: TaskVectors, keys, transform: StackTransform | None, one_d: str,
                 device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Each of `keys` with its K task matrices ``[K, H, W]`` on `device`, after `transform` (a
    method's per-task step) when given; one key's stack at a time; keys that are not matrices
    (:func:`~freqmerge_viz.spectral.matrix_stack`) are skipped."""
    for key in keys:
        stack = stack_key(task_vectors, key, device)
        if transform is not None:
            stack = as_compute_tensor(transform(stack, key), device)
        matrices = matrix_stack(stack, one_d)
        if matrices is not None:
            yield key, matrices


def measure_value(variance: float, mean_amplitude: float, normalize: bool) -> float:
    """A matrix's Table 1 value: `variance`, or ``variance / mean_amplitude`` when normalised
    (NaN where the mean amplitude is not positive)."""
    if not normalize:
        return variance
    return variance / mean_amplitude if mean_amplitude > 0 else float("nan")


def mean_over_matrices(values) -> float:
    """The unweighted mean of per-matrix values, NaNs (matrices with no counted bin) left out."""
    return float(pd.Series(list(values), dtype=float).mean(skipna=True))


# --------------------------------------------------------------------------- streaming spectral moments
def matrix_shape(shape, one_d: str = "skip") -> tuple[int, int] | None:
    """``(H, W)`` of the matrix an entry of `shape` is analysed as (:func:`~freqmerge_viz.spectral.as_matrix`),
    or ``None`` when it is not analysed; from the shape alone."""
    view = as_matrix(torch.empty(tuple(shape), device="meta"), one_d)
    return None if view is None else (int(view.shape[0]), int(view.shape[1]))


def task_matrix(task_vector, key: str, one_d: str = "skip", device: torch.device | None = None) -> torch.Tensor:
    """Entry `key` of one task vector as its ``[H, W]`` matrix, in its compute dtype, on `device`."""
    entry = as_compute_tensor(task_vector[key], device)
    view = as_matrix(entry, one_d)
    if view is None:
        raise ParameterError(f"{key!r} has shape {tuple(entry.shape)}: not a matrix (one_d={one_d!r})")
    return view


@dataclass
class AmplitudeMoments:
    """Across-task moments of one matrix's DFT amplitude ``|F|``, kept on the ``rfft2`` half spectrum.

    ``shape``: the full spectrum's ``(H, W)``; ``dtype``: the dtype the matrices were transformed
    in; ``count``: tasks added. ``mean`` and ``m2`` (float64, ``[H, W//2 + 1]``, on the matrices'
    device): per bin, the mean amplitude over the tasks so far and the sum of squared deviations
    from it (Welford's update, one task at a time), in the matrices' units. The population
    variance across tasks is ``m2 / count`` (:meth:`variance`).
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    count: int = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def add(self, amplitude: torch.Tensor) -> None:
        """Add one task's half-spectrum amplitude ``[H, W//2 + 1]`` (:func:`~freqmerge_viz.spectral.half_amplitude`)."""
        h, w = self.shape
        if tuple(amplitude.shape) != (h, w // 2 + 1):
            raise ParameterError(f"expected a half spectrum of shape {(h, w // 2 + 1)}, got {tuple(amplitude.shape)}")
        self.count += 1
        if self.mean is None:
            self.mean = amplitude.to(torch.float64, memory_format=torch.contiguous_format, copy=True)
            self.m2 = torch.zeros_like(self.mean)
            return
        rows = max(1, BLOCK_ENTRIES // self.mean.shape[1])
        for start in range(0, h, rows):  # Welford's update, a block of rows at a time
            block = slice(start, start + rows)
            delta = amplitude[block].to(torch.float64).sub_(self.mean[block])
            self.mean[block].add_(delta, alpha=1.0 / self.count)
            self.m2[block].addcmul_(delta, delta, value=(self.count - 1) / self.count)

    def variance(self) -> torch.Tensor:
        """Population variance (ddof 0) of the amplitude across the tasks, per half-spectrum bin."""
        return self.m2 / self.count


def key_moments(task_vectors: TaskVectors, key: str, one_d: str = "skip",
                device: torch.device | str | None = None) -> AmplitudeMoments | None:
    """:class:`AmplitudeMoments` of entry `key` over the tasks, or ``None`` when it is not a matrix.

    Reads one task's entry at a time and transforms it with ``rfft2``: the memory is one entry,
    its half spectrum and the two float64 accumulators, whatever the number of tasks.
    """
    shape = matrix_shape(entry_shape(task_vectors[0], key), one_d)
    if shape is None:
        return None
    target = resolve_device(device)
    moments = None
    for amplitude in half_amplitudes(task_matrix(tv, key, one_d, target) for tv in task_vectors):
        moments = moments or AmplitudeMoments(shape, amplitude.dtype)
        moments.add(amplitude)
        del amplitude
    return moments


def moment_measure(moments: AmplitudeMoments, gain: FilterSpec | None = None,
                   within: FilterSpec | None = None) -> dict:
    """One matrix's row of :func:`amplitude_variance` from its moments, for the task vectors as
    they are (``gain=None``) or filtered by `gain`, over every bin or the bins `within` keeps.

    Returns ``bins`` (full-spectrum bins counted), ``kept_fraction``, ``variance`` (mean over the
    counted bins of the across-task population variance of ``|F|``, units of ``|F|²``) and
    ``mean_amplitude`` (mean over tasks and counted bins, units of ``|F|``). A filter multiplies
    each bin of a real matrix's DFT by its conjugate-symmetric gain g (``FilterSpec.half_mask``,
    exactly what :func:`~freqmerge_viz.spectral.apply_filter` applies), so a filtered bin has
    variance ``g²·var`` and mean amplitude ``|g|·mean``: no inverse transform is needed. Sums run
    over the half spectrum, each bin weighted by the full-spectrum bins it stands for
    (``half_spectrum_weights``, or ``within.half_counts``), a block of rows at a time.
    """
    h, w = moments.shape
    device = moments.mean.device
    columns = half_spectrum_weights(w, device)
    gains = None if gain is None else gain.half_mask((h, w), device=device, dtype=moments.dtype)
    counts = None if within is None else within.half_counts((h, w), device=device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    rows = max(1, BLOCK_ENTRIES // columns.numel())
    for start in range(0, h, rows):
        block = slice(start, start + rows)
        weight = columns.expand(moments.mean[block].shape) if counts is None else counts[block].to(torch.float64)
        variance = moments.m2[block] / moments.count
        mean = moments.mean[block]
        if gains is not None:
            factor = gains[block].to(torch.float64)
            variance = variance * factor.square()
            mean = mean * factor.abs()
        totals += torch.stack(((weight * variance).sum(), (weight * mean).sum(), weight.sum()))
    variance_sum, amplitude_sum, bins = totals.tolist()
    bins = int(round(bins))
    return {"bins": bins, "kept_fraction": bins / (h * w),
            "variance": variance_sum / bins if bins else float("nan"),
            "mean_amplitude": amplitude_sum / bins if bins else float("nan")}


def cosine_similarity_matrix(task_vectors: TaskVectors, include: Patterns = None,
                             exclude: Patterns = None, per_key: bool = False,
                             device: torch.device | str | None = None,
                             progress: bool | None = False) -> pd.DataFrame:
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
    for key in track(keys, "cosine", progress):
        per_key_gram = key_gram(stack_key(task_vectors, key, device))
        gram += per_key_gram
        if per_key:
            for i in range(k):
                for j in range(i + 1, k):
                    rows.append({"key": key, "task_a": names[i], "task_b": names[j],
                                 "cosine": _gram_cosine(per_key_gram, i, j)})
    if per_key:
        return pd.DataFrame(rows, columns=["key", "task_a", "task_b", "cosine"])
    return cosine_table(gram, names)


def _entry_blocks(stack: torch.Tensor | Sequence[torch.Tensor]):
    """Column blocks ``[K, b]`` of one key's flattened entries, ``K·b`` <= :data:`BLOCK_ENTRIES`:
    views of a ``stack[K, *shape]``, or small copies gathered from a sequence of K tensors."""
    if isinstance(stack, torch.Tensor):
        flat = stack.reshape(stack.shape[0], -1)
        step = max(1, BLOCK_ENTRIES // max(1, flat.shape[0]))
        for start in range(0, flat.shape[1], step):
            yield flat[:, start:start + step]
        return
    flats = [entry.reshape(-1) for entry in stack]
    step = max(1, BLOCK_ENTRIES // max(1, len(flats)))
    for start in range(0, flats[0].numel(), step):
        yield torch.stack([flat[start:start + step] for flat in flats])


def key_gram(stack: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``G[i, j] = Σ stack[i]·stack[j]`` over the entries of one key's ``stack[K, *shape]`` or K
    tensors of one shape (float64, on the CPU; squared weight units), a block of entries at a time."""
    k = len(stack)
    gram = torch.zeros(k, k, dtype=torch.float64, device=stack[0].device)
    for block in _entry_blocks(stack):
        block = block.to(torch.float64)
        gram += block @ block.T
    return gram.cpu()


def cosine_table(gram: torch.Tensor, names) -> pd.DataFrame:
    """The K×K cosine similarities (NaN for a zero vector) from a Gram matrix (:func:`key_gram`, summed over keys)."""
    k = len(names)
    table = [[_gram_cosine(gram, i, j) for j in range(k)] for i in range(k)]
    return pd.DataFrame(table, index=list(names), columns=list(names))


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
                   device: torch.device | str | None = None, progress: bool | None = False) -> SignConflictResult:
    """Pairwise and overall sign-conflict rates (see :class:`SignConflictResult`)."""
    keys = common_keys(task_vectors, include, exclude)
    counts = None
    for key in track(keys, "sign conflicts", progress):
        counts = add_sign_counts(counts, key_sign_counts(stack_key(task_vectors, key, device)))
    return sign_conflict_result(counts, task_names(task_vectors))


def key_sign_counts(stack: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Sign counts of one key's ``stack[K, *shape]`` (or K tensors), a block of entries at a time: the K×K
    numbers of coordinates where tasks i and j are both non-zero, and where i is positive and
    j negative (float64, CPU); the coordinates where at least two tasks are non-zero; and those
    among them whose signs are not all the same."""
    k = len(stack)
    both_nonzero = torch.zeros(k, k, dtype=torch.float64, device=stack[0].device)
    opposite = torch.zeros(k, k, dtype=torch.float64, device=stack[0].device)
    shared = conflicted = 0
    for block in _entry_blocks(stack):  # 0/1 products summed over a block are exact in float32
        positive, negative = (block > 0).to(torch.float32), (block < 0).to(torch.float32)
        nonzero = positive + negative
        both_nonzero += (nonzero @ nonzero.T).to(torch.float64)
        opposite += (positive @ negative.T).to(torch.float64)
        active = nonzero.sum(dim=0) >= 2
        mixed = (positive.amax(dim=0) > 0) & (negative.amax(dim=0) > 0)
        shared += int(active.sum())
        conflicted += int((active & mixed).sum())
    return both_nonzero.cpu(), opposite.cpu(), shared, conflicted


def add_sign_counts(total, counts):
    """The sum of two :func:`key_sign_counts` results (`total` may be ``None``)."""
    return counts if total is None else tuple(a + b for a, b in zip(total, counts))


def sign_conflict_result(counts, names) -> SignConflictResult:
    """:class:`SignConflictResult` from :func:`key_sign_counts` summed over keys (:func:`add_sign_counts`)."""
    k = len(names)
    both_nonzero, opposite, shared, conflicted = counts or (torch.zeros(k, k, dtype=torch.float64),
                                                            torch.zeros(k, k, dtype=torch.float64), 0, 0)
    opposite = opposite + opposite.T
    rate = torch.where(both_nonzero > 0, opposite / both_nonzero.clamp_min(1), torch.nan)
    table = pd.DataFrame(rate.numpy(), index=list(names), columns=list(names))
    return SignConflictResult(table, conflicted / shared if shared else float("nan"))


def low_frequency_energy(task_vectors: TaskVectors, cutoff: float, units: str = "normalized",
                         include: Patterns = None, exclude: Patterns = None, one_d: str = "skip",
                         device: torch.device | str | None = None, progress: bool | None = False) -> pd.DataFrame:
    """Share of each task vector's spectral energy ``Σ|F|²`` below `cutoff` (ideal, paper convention).

    Returns one row per task and matrix: ``task``, ``key``, ``energy``, ``low_energy``,
    ``fraction``. The energy-weighted share per task is
    ``table.groupby("task")[["low_energy", "energy"]].sum()`` then the ratio; see
    :func:`low_frequency_energy_by_task`. Streamed: one task's entry and half spectrum at a time.
    """
    spec = FilterSpec(cutoff, band="low", units=units)
    keys = common_keys(task_vectors, include, exclude)
    names = task_names(task_vectors)
    target = resolve_device(device)
    rows = []
    for key in track(keys, "low-frequency energy", progress):
        shape = matrix_shape(entry_shape(task_vectors[0], key), one_d)
        if shape is None:
            continue
        task = 0  # a counter, not zip/enumerate: their result tuple would keep the last amplitude alive
        for amplitude in half_amplitudes(task_matrix(tv, key, one_d, target) for tv in task_vectors):
            rows.append(energy_row(names[task], key, *spectral_energy(amplitude, shape, spec)))
            del amplitude
            task += 1
    if not rows:
        raise EmptyInputError("none of the selected keys is a matrix (2-D or more)")
    return pd.DataFrame(rows)


def spectral_energy(amplitude: torch.Tensor, shape: tuple[int, int], spec: FilterSpec) -> tuple[float, float]:
    """``(Σ|F|², Σ g·|F|²)`` over the full spectrum of a real ``H × W`` matrix (`shape`) from its
    half-spectrum amplitude (:func:`~freqmerge_viz.spectral.half_amplitude`), g the gain of
    `spec` (units of ``|F|²``; summed in float64). A real matrix's power is point-symmetric, so
    the gain and its symmetrised half mask give the same sum."""
    weights = half_spectrum_weights(shape[1], amplitude.device)
    gain = spec.half_mask(shape, device=amplitude.device, dtype=amplitude.dtype)
    totals = torch.zeros(2, dtype=torch.float64, device=amplitude.device)
    rows = max(1, BLOCK_ENTRIES // weights.numel())
    for start in range(0, shape[0], rows):
        power = amplitude[start:start + rows].to(torch.float64).square_()
        totals[0] += torch.mv(power, weights).sum()
        totals[1] += torch.mv(power.mul_(gain[start:start + rows]), weights).sum()
    energy, low = totals.tolist()
    return energy, low


def energy_row(task: str, key: str, energy: float, low: float) -> dict:
    """One row of :func:`low_frequency_energy`."""
    return {"task": task, "key": key, "energy": energy, "low_energy": low,
            "fraction": low / energy if energy > 0 else float("nan")}


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
