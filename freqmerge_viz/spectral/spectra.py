"""Spectra of matrices: Fourier transforms, amplitude and power, radial and angular profiles.

Every function takes a real tensor ``x[..., H, W]`` and works on its device, in the compute dtype.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch

from ..backend import BLOCK_ENTRIES, as_compute_tensor
from ..errors import ParameterError, check_choice
from .masks import UNITS, _matrix_shape, _radius_unshifted, frequency_indices, half_spectrum_weights, radial_frequency


# --------------------------------------------------------------------------- spectra
def fourier_transform(x: torch.Tensor, centered: bool = True) -> torch.Tensor:
    """Complex 2-D DFT of ``x[..., H, W]`` (unnormalised), centred (DC at ``(H//2, W//2)``) by default."""
    x = as_compute_tensor(x)
    if x.ndim < 2:
        raise ParameterError(f"spectra need [..., H, W] input, got shape {tuple(x.shape)}")
    spectrum = torch.fft.fft2(x)
    return torch.fft.fftshift(spectrum, dim=(-2, -1)) if centered else spectrum


def amplitude_spectrum(x: torch.Tensor, centered: bool = True) -> torch.Tensor:
    """``|F{x}|`` of ``x[..., H, W]``: unnormalised DFT amplitude, DC in the middle by default."""
    return fourier_transform(x, centered).abs()


def power_spectrum(x: torch.Tensor, centered: bool = True) -> torch.Tensor:
    """``|F{x}|²`` of ``x[..., H, W]`` (unnormalised; sums to ``H·W·Σx²`` by Parseval)."""
    return amplitude_spectrum(x, centered) ** 2


def half_amplitude(x: torch.Tensor) -> torch.Tensor:
    """``|F{x}|`` of real ``x[..., H, W]`` on the ``rfft2`` half spectrum ``[..., H, W//2 + 1]``
    (unnormalised, DC at ``[0, 0]``, not centred); every other bin mirrors one of these
    (:func:`~freqmerge_viz.spectral.masks.half_spectrum_weights`). Half the work of
    :func:`amplitude_spectrum`; the extra memory is one half spectrum (about one copy of `x`).
    """
    x = as_compute_tensor(x)
    if x.ndim < 2:
        raise ParameterError(f"spectra need [..., H, W] input, got shape {tuple(x.shape)}")
    return amplitude_from_rows(torch.fft.rfft(x, dim=-1)).contiguous()


def amplitude_from_rows(rows: torch.Tensor) -> torch.Tensor:
    """:func:`half_amplitude` of ``x`` from ``rows = torch.fft.rfft(x, dim=-1)``, written over
    `rows` (which is consumed): the column transforms and ``|·|`` run a block of columns at a
    time (about :data:`~freqmerge_viz.backend.BLOCK_ENTRIES` entries), and each block's
    amplitude goes into the real parts of the block's columns of `rows`. Returns that real view
    (``rows.real``, strided), so the only full-size memory is `rows` itself. Lets a caller free
    ``x`` before this step."""
    h = rows.shape[-2]
    per_column = h * max(1, rows[..., 0, 0].numel())
    out = rows.real
    columns = max(1, BLOCK_ENTRIES // per_column)
    for start in range(0, rows.shape[-1], columns):
        block = torch.fft.fft(rows[..., start:start + columns], dim=-2)
        out[..., start:start + columns] = torch.hypot(block.real, block.imag)
        del block
    return out


def half_amplitudes(matrices: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """:func:`half_amplitude` of each real ``[H, W]`` matrix of `matrices`, one at a time.

    Each matrix is dropped after its row transforms, so with a lazy iterable (one task's entry
    read per step) the memory is one matrix's half spectrum, not one per task. Each amplitude is
    a strided view over its half spectrum's memory (:func:`amplitude_from_rows`); drop it before
    asking for the next.
    """
    for matrix in matrices:
        rows = torch.fft.rfft(as_compute_tensor(matrix), dim=-1)
        del matrix
        amplitude = amplitude_from_rows(rows)
        del rows
        yield amplitude
        del amplitude


def log_amplitude_spectrum(x: torch.Tensor, centered: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """``ln(|F{x}| + eps)`` of ``x[..., H, W]``: the usual picture of a spectrum."""
    return torch.log(amplitude_spectrum(x, centered) + eps)


class Profile(NamedTuple):
    """A spectrum averaged over shells or sectors: ``values[..., n]`` at ``centers[n]``."""

    centers: torch.Tensor
    values: torch.Tensor


def _binned_mean(values: torch.Tensor, coordinate: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    n = edges.numel() - 1
    index = torch.bucketize(coordinate.reshape(-1), edges, right=True) - 1
    inside = (index >= 0) & (index < n)
    index = torch.where(inside, index, torch.full_like(index, n))
    flat = values.reshape(*values.shape[:-2], -1)
    sums = torch.zeros(*flat.shape[:-1], n + 1, dtype=flat.dtype, device=flat.device)
    sums.index_add_(-1, index, flat)
    counts = torch.bincount(index, minlength=n + 1).to(flat.dtype)
    return (sums / counts.clamp_min(1))[..., :n]


def radial_profile(x: torch.Tensor, n_bins: int = 32, units: str = "normalized",
                   spectrum: str = "amplitude") -> Profile:
    """Mean amplitude (or power) of ``x[..., H, W]`` in ``n_bins`` equal-width radial shells.

    Shells span radius 0 to 1 in normalised units (the same shells for every shape), or 0 to
    the largest radius of the shape in bins; empty shells are 0.
    Returns ``Profile(centers[n_bins], values[..., n_bins])``.
    """
    check_choice("spectrum", spectrum, ("amplitude", "power"))
    values = half_amplitude(x)
    return half_radial_profile(values**2 if spectrum == "power" else values, x.shape, n_bins, units)


class RadialShells(NamedTuple):
    """Which radial shell each bin of an ``H × W`` spectrum's ``rfft2`` half lies in
    (:func:`radial_shells`): ``index[H, W//2 + 1]`` (``n_bins`` for a bin outside every shell;
    uint8 or int16), ``counts[n_bins + 1]`` (full-spectrum bins per shell, float64), ``edges``
    (``n_bins + 1`` radii, float64) and ``shape``."""

    index: torch.Tensor
    counts: torch.Tensor
    edges: torch.Tensor
    shape: tuple[int, int]


def radial_shells(shape: Sequence[int], n_bins: int = 32, units: str = "normalized",
                  device: torch.device | str | None = None) -> RadialShells:
    """The equal-width radial shells of :func:`radial_profile` for an ``H × W`` matrix, on its half
    spectrum; radii are computed a block of rows at a time."""
    check_choice("units", units, UNITS)
    h, w = _matrix_shape(shape)
    cols = torch.arange(w // 2 + 1)
    corner = _radius_unshifted((h, w), units, torch.tensor([h // 2]), torch.tensor([w // 2]))
    top = 1.0 if units == "normalized" else (float(corner) or 1.0)
    edges = torch.linspace(0.0, top * (1 + 1e-9), n_bins + 1, dtype=torch.float64)
    weights = half_spectrum_weights(w)
    index = torch.empty((h, cols.numel()), dtype=torch.uint8 if n_bins < 255 else torch.int16)
    counts = torch.zeros(n_bins + 1, dtype=torch.float64)
    rows_per_block = max(1, BLOCK_ENTRIES // cols.numel())
    for start in range(0, h, rows_per_block):
        rows = torch.arange(start, min(h, start + rows_per_block))
        shell = torch.bucketize(_radius_unshifted((h, w), units, rows, cols), edges, right=True) - 1
        shell = torch.where((shell >= 0) & (shell < n_bins), shell, torch.full_like(shell, n_bins))
        index[start:start + rows.numel()] = shell
        counts.index_add_(0, shell.reshape(-1), weights.expand(rows.numel(), -1).reshape(-1))
    return RadialShells(index.to(device), counts.to(device), edges.to(device), (h, w))


def half_radial_profile(values: torch.Tensor, shape: Sequence[int], n_bins: int = 32,
                        units: str = "normalized", shells: RadialShells | None = None) -> Profile:
    """:func:`radial_profile` of a real ``H × W`` input (`shape`) from a point-symmetric quantity
    on its ``rfft2`` half spectrum, ``values[..., H, W//2 + 1]`` (e.g. :func:`half_amplitude`):
    the mean over the full spectrum's bins of each shell, every half bin weighted by the number
    of bins it stands for. `shells` (:func:`radial_shells` of the same shape, bins and units)
    saves computing them again for every input of one shape. Works a block of rows at a time.
    """
    h, w = _matrix_shape(shape)
    if tuple(values.shape[-2:]) != (h, w // 2 + 1):
        raise ParameterError(f"expected half-spectrum values [..., {h}, {w // 2 + 1}] for shape {h}×{w}, "
                             f"got {tuple(values.shape)}")
    device, dtype = values.device, values.dtype
    if shells is None or shells.shape != (h, w) or shells.edges.numel() != n_bins + 1:
        shells = radial_shells((h, w), n_bins, units, device)
    weights = half_spectrum_weights(w, device, dtype)
    sums = torch.zeros(*values.shape[:-2], n_bins + 1, dtype=dtype, device=device)
    rows_per_block = max(1, BLOCK_ENTRIES // (weights.numel() * max(1, values[..., 0, 0].numel())))
    for start in range(0, h, rows_per_block):
        index = shells.index[start:start + rows_per_block].reshape(-1).long()
        sums.index_add_(-1, index, (values[..., start:start + rows_per_block, :] * weights).flatten(-2))
    centers = (0.5 * (shells.edges[1:] + shells.edges[:-1])).to(dtype)
    return Profile(centers, (sums / shells.counts.to(dtype).clamp_min(1))[..., :n_bins])


def angular_profile(x: torch.Tensor, n_bins: int = 36, spectrum: str = "amplitude") -> Profile:
    """Mean amplitude (or power) of ``x[..., H, W]`` in ``n_bins`` direction sectors, DC excluded.

    The direction is ``atan2(η/(H/2), γ/(W/2))`` folded into ``[0, π)`` (a real input's spectrum
    is point-symmetric): 0 = along the columns' frequency axis, π/2 = along the rows'.
    Centers are in radians.
    """
    values = _spectrum_values(x, spectrum)
    h, w = values.shape[-2:]
    eta = torch.fft.fftshift(frequency_indices(h))[:, None] / (h / 2.0)
    gamma = torch.fft.fftshift(frequency_indices(w))[None, :] / (w / 2.0)
    angle = torch.remainder(torch.atan2(eta.expand(h, w), gamma.expand(h, w)), math.pi)
    angle[h // 2, w // 2] = -1.0
    edges = torch.linspace(0.0, math.pi, n_bins + 1, dtype=torch.float64)
    centers = 0.5 * (edges[1:] + edges[:-1])
    device, dtype = values.device, values.dtype
    means = _binned_mean(values, angle.to(device), edges.to(device))
    return Profile(centers.to(device, dtype), means)


def band_energy_fraction(x: torch.Tensor, edges: Sequence[float], units: str = "normalized") -> torch.Tensor:
    """Share of the spectral energy ``Σ|F|²`` of ``x[..., H, W]`` in each radius band.

    `edges` are increasing radii in `units`; band i is ``[e_i, e_i+1)``, the filters' rule (a
    high-pass at cutoff ρ keeps the bins at radius ≥ ρ, so ``[0, ρ)`` is what it removes). The
    last band also includes its upper edge when that edge reaches the largest radius present,
    so edges ``[0, …, 1]`` (normalised) cover every bin and the shares sum to 1 (for a
    non-zero input; an all-zero input gives zeros). Returns ``[..., len(edges) - 1]``.
    """
    values = _spectrum_values(x, "power")
    edge_list = [float(e) for e in edges]
    if len(edge_list) < 2 or any(b <= a for a, b in zip(edge_list, edge_list[1:])):
        raise ParameterError(f"edges must be at least two increasing radii, got {edge_list}")
    radius = radial_frequency(values.shape, units, device=values.device)
    fractions = []
    total = values.sum(dim=(-2, -1))
    last = len(edge_list) - 2
    top = float(radius.max())
    for i, (lower, upper) in enumerate(zip(edge_list[:-1], edge_list[1:])):
        below_upper = (radius <= upper) if i == last and upper >= top else (radius < upper)
        inside = ((radius >= lower) & below_upper).to(values.dtype)
        fractions.append((values * inside).sum(dim=(-2, -1)))
    stacked = torch.stack(fractions, dim=-1)
    return torch.where(total[..., None] > 0, stacked / total.clamp_min(torch.finfo(values.dtype).tiny)[..., None],
                       torch.zeros_like(stacked))


def _spectrum_values(x: torch.Tensor, spectrum: str) -> torch.Tensor:
    check_choice("spectrum", spectrum, ("amplitude", "power"))
    return amplitude_spectrum(x) if spectrum == "amplitude" else power_spectrum(x)
