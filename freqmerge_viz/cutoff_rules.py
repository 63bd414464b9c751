"""Adaptive cutoffs: each matrix's high-pass cutoff chosen from its own task-vector spectra.

FR-Merging removes the same normalised radius from every matrix; the paper leaves choosing it per
layer to future work. A *cutoff rule* picks, for one key, the radius of an ideal high-pass (paper
convention, the key's ``units``) from the K task matrices' DFTs ``F_i``, before any filtering:

``"fixed"``
    the method's ``cutoff``, as FR always did.
``"energy"``
    keep a share `share` of the key's spectral energy ``E = Σ_i Σ_bins |F_i|²``: the largest
    cutoff whose removed bins (radius below it) hold at most ``(1 − share)·E``. The matrices
    whose energy sits near DC lose less, those with a flat spectrum more.
``"variance"``
    make what is kept agree across tasks: the cutoff minimising the kept bins' relative
    across-task spread ``Σ_kept var_i |F_i| / Σ_kept (mean_i |F_i|)²`` (the population variance
    of the amplitude over the squared mean amplitude, summed over the kept bins; dimensionless,
    so that removing strong bins is not rewarded for their size alone), tried on a grid of
    :data:`VARIANCE_STEPS` + 1 cutoffs from 0 to `largest`; the smallest cutoff within
    :data:`VARIANCE_TOLERANCE` of the lowest spread wins; a kept set of zero amplitude is never
    chosen.

The energy rule looks at the distinct bin radii ``r_0 = 0 < r_1 < …`` of the spectrum and returns
the midpoint ``(r_{j−1} + r_j) / 2`` below the first kept radius ``r_j`` (0 when nothing is
removed), so the ideal filter keeps exactly the bins with radius ``≥ r_j`` whatever the rounding.
Neither rule returns more than `largest`. The sums are float64 over the full spectrum, one
task's transform at a time (memory: one matrix's spectrum and two accumulators). A soft filter
kind (Butterworth, Gaussian) uses the same radius as its cutoff; the energy share then holds for
the ideal filter only.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .backend import as_compute_tensor
from .errors import EmptyInputError, ParameterError, check_choice
from .spectral import radial_frequency

CUTOFF_RULES = ("fixed", "energy", "variance")
"""The rules of :func:`choose_cutoff`."""
VARIANCE_STEPS = 10
"""The variance rule tries the cutoffs ``largest · i / VARIANCE_STEPS``, i = 0 … VARIANCE_STEPS."""
VARIANCE_TOLERANCE = 0.02
"""The variance rule takes the smallest tried cutoff whose relative spread is within this share
(2%) of the lowest: a spread that a larger cutoff lowers by less is not worth the bins it removes
(on spectra that look like noise, as the demo zoo's do, the spread is flat to about 1–3% and the
exact minimum would be chosen by chance)."""


def spectrum_sums(matrices: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(Σ_i |F_i|, Σ_i |F_i|², K)`` over real ``[H, W]`` matrices (unshifted ``fft2``; float64
    ``[H, W]`` sums in the weights' units and their square), one matrix at a time."""
    first = second = None
    count = 0
    for matrix in matrices:
        amplitude = torch.fft.fft2(as_compute_tensor(matrix)).abs().to(torch.float64)
        if first is None:
            first, second = amplitude.clone(), amplitude.square()
        else:
            if amplitude.shape != first.shape:
                raise ParameterError(f"matrices of different shapes: {tuple(first.shape)} and {tuple(amplitude.shape)}")
            first.add_(amplitude)
            second.addcmul_(amplitude, amplitude)
        count += 1
        del amplitude
    if first is None:
        raise EmptyInputError("a cutoff rule needs at least one matrix")
    return first, second, count


def radius_shells(shape: tuple[int, int], units: str = "normalized",
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(radii, shell)``: the distinct radii ``r_0 < r_1 < …`` of an unshifted ``H × W`` spectrum
    (float64, `units` as in :func:`~freqmerge_viz.radial_frequency`) and each bin's index into them."""
    radius = torch.fft.ifftshift(radial_frequency(shape, units), dim=(-2, -1))
    radii, shell = torch.unique(radius.reshape(-1), sorted=True, return_inverse=True)
    return radii.to(device) if device is not None else radii, shell.reshape(shape).to(device)


def _shell_sums(values: torch.Tensor, shell: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, shell.reshape(-1),
                                                                                values.reshape(-1))


def _cutoff_below(radii: torch.Tensor, j: int) -> float:
    """The midpoint under radius ``r_j`` (0 for j = 0): keeps exactly the bins of radius ``≥ r_j``."""
    return 0.0 if j <= 0 else float(0.5 * (radii[j - 1] + radii[j]))


def _largest_shell(radii: torch.Tensor, largest: float | None) -> int:
    """The last shell j an adaptive cutoff may start the kept set at (its midpoint at most `largest`)."""
    if largest is None:
        return radii.numel() - 1
    midpoints = torch.cat([radii.new_zeros(1), 0.5 * (radii[:-1] + radii[1:])])
    return int(torch.nonzero(midpoints <= largest).reshape(-1)[-1])


def energy_cutoff(power: torch.Tensor, radii: torch.Tensor, shell: torch.Tensor, share: float,
                  largest: float | None = None) -> float:
    """The ``"energy"`` rule on a power sum ``power [H, W]`` (``Σ_i |F_i|²``): the largest cutoff
    keeping at least `share` of the energy (module docstring)."""
    if not 0 < share <= 1:
        raise ParameterError(f"the energy share kept must lie in (0, 1], got {share!r}")
    energy = _shell_sums(power, shell, radii.numel())
    total = float(energy.sum())
    if total <= 0:
        return 0.0
    removed = torch.cat([energy.new_zeros(1), energy.cumsum(0)[:-1]])  # energy below r_j
    allowed = torch.nonzero(removed <= (1.0 - share) * total * (1 + 1e-12)).reshape(-1)
    j = min(int(allowed[-1]), _largest_shell(radii, largest))
    return _cutoff_below(radii, j)


def variance_cutoff(first: torch.Tensor, second: torch.Tensor, count: int, radii: torch.Tensor,
                    shell: torch.Tensor, largest: float, steps: int = VARIANCE_STEPS) -> float:
    """The ``"variance"`` rule from :func:`spectrum_sums`: among the cutoffs ``largest · i / steps``
    (i = 0 … steps), the smallest whose ``Σ_kept var / Σ_kept mean²`` (the amplitude across the
    `count` tasks) is within :data:`VARIANCE_TOLERANCE` of the smallest value (module docstring)."""
    if largest is None or not largest >= 0:
        raise ParameterError(f"the variance rule needs a largest cutoff >= 0, got {largest!r}")
    mean = first / count
    variance = (second / count - mean.square()).clamp_min(0)
    n = radii.numel()
    spread = _shell_sums(variance, shell, n).flip(0).cumsum(0).flip(0)  # kept = shells j, j+1, …
    size = _shell_sums(mean.square(), shell, n).flip(0).cumsum(0).flip(0)
    values = []
    for i in range(steps + 1):
        cutoff = largest * i / steps
        kept = torch.nonzero(radii >= cutoff).reshape(-1)
        if kept.numel() and float(size[int(kept[0])]) > 0:
            values.append((cutoff, float(spread[int(kept[0])]) / float(size[int(kept[0])])))
    if not values:
        return 0.0
    lowest = min(value for _, value in values)
    return next(cutoff for cutoff, value in values if value <= lowest * (1 + VARIANCE_TOLERANCE) + 1e-15)


def choose_cutoff(matrices: Iterable[torch.Tensor], rule: str, *, units: str = "normalized", share: float = 0.9,
                  largest: float | None = None, shape: tuple[int, int] | None = None) -> float:
    """The cutoff rule `rule` (``"energy"`` or ``"variance"``) on one key's K task matrices
    ``[H, W]`` (an iterable, read once): a radius in `units`. `share`: the energy share kept
    (``"energy"``); `largest`: the largest cutoff allowed (None: no bound)."""
    check_choice("cutoff rule", rule, CUTOFF_RULES[1:])
    first, second, count = spectrum_sums(matrices)
    if shape is not None and tuple(first.shape) != tuple(shape):
        raise ParameterError(f"expected matrices of shape {tuple(shape)}, got {tuple(first.shape)}")
    radii, shell = radius_shells(tuple(first.shape), units, first.device)
    if rule == "energy":
        del first
        return energy_cutoff(second, radii, shell, share, largest)
    return variance_cutoff(first, second, count, radii, shell, largest)
