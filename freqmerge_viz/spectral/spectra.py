"""Spectra of matrices: Fourier transforms, amplitude and power, radial and angular profiles.

Every function takes a real tensor ``x[..., H, W]`` and works on its device, in the compute dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from ..backend import as_compute_tensor
from ..errors import ParameterError, check_choice
from .masks import frequency_indices, radial_frequency


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
    values = _spectrum_values(x, spectrum)
    radius = radial_frequency(x.shape, units, device=values.device)
    top = 1.0 if units == "normalized" else (float(radius.max()) or 1.0)
    edges = torch.linspace(0.0, top * (1 + 1e-9), n_bins + 1, dtype=torch.float64, device=values.device)
    centers = (0.5 * (edges[1:] + edges[:-1])).to(values.dtype)
    return Profile(centers, _binned_mean(values, radius, edges))


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

    `edges` are increasing radii in `units`; band i is ``[e_i, e_i+1)``, the last band also
    includes its upper edge, so edges ``[0, …, 1]`` (normalised) cover every bin and the
    shares sum to 1 (for a non-zero input; an all-zero input gives zeros).
    Returns ``[..., len(edges) - 1]``.
    """
    values = _spectrum_values(x, "power")
    edge_list = [float(e) for e in edges]
    if len(edge_list) < 2 or any(b <= a for a, b in zip(edge_list, edge_list[1:])):
        raise ParameterError(f"edges must be at least two increasing radii, got {edge_list}")
    radius = radial_frequency(values.shape, units, device=values.device)
    fractions = []
    total = values.sum(dim=(-2, -1))
    last = len(edge_list) - 2
    for i, (lower, upper) in enumerate(zip(edge_list[:-1], edge_list[1:])):
        below_upper = (radius <= upper) if i == last else (radius < upper)
        inside = ((radius >= lower) & below_upper).to(values.dtype)
        fractions.append((values * inside).sum(dim=(-2, -1)))
    stacked = torch.stack(fractions, dim=-1)
    return torch.where(total[..., None] > 0, stacked / total.clamp_min(torch.finfo(values.dtype).tiny)[..., None],
                       torch.zeros_like(stacked))


def _spectrum_values(x: torch.Tensor, spectrum: str) -> torch.Tensor:
    check_choice("spectrum", spectrum, ("amplitude", "power"))
    return amplitude_spectrum(x) if spectrum == "amplitude" else power_spectrum(x)
