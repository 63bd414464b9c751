"""Spectra, frequency masks and filters of matrices.

Every function takes a real tensor ``x`` of shape ``[..., H, W]`` (any number of leading
batch dimensions), works on ``x``'s device and returns a tensor on that device in the
compute dtype (float64 for float64 input, float32 otherwise).

Frequency coordinates
---------------------
Row frequency ``η`` and column frequency ``γ`` are DFT bin indices measured from DC:
``η ∈ {-(H//2), …, (H-1)//2}`` (the layout of a centred spectrum). Three radii exist:

``units="bins"``
    ``r = sqrt(η² + γ²)`` in bins: the literal ``D0`` of the paper's Eq. 2. The same value
    means a different share of the spectrum for different shapes.
``units="normalized"``
    ``ρ = sqrt(((η / (H/2))² + (γ / (W/2))²) / m)``, where ``m`` is the number of axes with
    more than one entry (2 for a matrix, 1 for a row vector). ``ρ = 0`` is DC, ``ρ = 1`` the
    Nyquist frequency along every axis at once (the corner of the spectrum); the Nyquist
    frequency of a single axis of a matrix lies at ``1/√2``. A cutoff therefore removes
    about the same share of bins whatever the shape.
``convention="official"``
    the authors' published code: distance from the array index ``(H//2, W//2)`` of the
    *unshifted* spectrum, cutoff = their ``filter_ratio`` as a fraction of ``min(H, W)``;
    bins with distance ``<= ratio * min(H, W)`` are kept. DC sits in the corners, so this is
    a high-pass, but an anisotropic one (see METHOD_NOTES.md).

Gains
-----
A mask holds the gain ``g ∈ [0, 1]`` of each bin. Low-pass gain is ``1 - high-pass gain`` of
the same specification, so low + high reproduces the input exactly (up to rounding).
Cutoff 0 gives a high-pass of gain 1 everywhere (the identity) for every kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch

from .backend import BLOCK_ENTRIES, as_compute_tensor
from .errors import ParameterError, check_choice

KINDS = ("ideal", "butterworth", "gaussian")
BANDS = ("high", "low", "band")
UNITS = ("normalized", "bins")
CONVENTIONS = ("paper", "official")
ONE_D_MODES = ("skip", "fft")


# --------------------------------------------------------------------------- coordinates
def frequency_indices(n: int) -> torch.Tensor:
    """Signed DFT frequency of each index of an unshifted length-`n` spectrum, in bins (float64)."""
    return torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)


def _radius_unshifted(shape: tuple[int, int], units: str, rows: torch.Tensor | None = None,
                      cols: torch.Tensor | None = None) -> torch.Tensor:
    """Radius of the bins ``rows × cols`` (default: all) of an unshifted spectrum, float64."""
    h, w = shape
    eta = frequency_indices(h)[rows if rows is not None else slice(None), None]
    gamma = frequency_indices(w)[None, cols if cols is not None else slice(None)]
    if units == "bins":
        return torch.sqrt(eta**2 + gamma**2)
    axes = [(eta, h), (gamma, w)]
    moving = [(f, n) for f, n in axes if n > 1]
    out_shape = (eta.shape[0], gamma.shape[1])
    if not moving:
        return torch.zeros(out_shape, dtype=torch.float64)
    total = sum((f / (n / 2.0)) ** 2 for f, n in moving)
    return torch.sqrt(total / len(moving)).expand(out_shape).clone()


def _official_distance_unshifted(shape: tuple[int, int], rows: torch.Tensor | None = None,
                                 cols: torch.Tensor | None = None) -> torch.Tensor:
    h, w = shape
    rows = torch.arange(h) if rows is None else rows
    cols = torch.arange(w) if cols is None else cols
    return torch.sqrt((rows.double()[:, None] - h // 2) ** 2 + (cols.double()[None, :] - w // 2) ** 2)


def radial_frequency(shape: Sequence[int], units: str = "normalized",
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Radius of every bin of a *centred* ``H × W`` spectrum, in `units` (float64, ``[H, W]``)."""
    check_choice("units", units, UNITS)
    h, w = _matrix_shape(shape)
    radius = torch.fft.fftshift(_radius_unshifted((h, w), units), dim=(-2, -1))
    return radius.to(device) if device is not None else radius


def _matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) < 2 or any(int(n) < 1 for n in shape[-2:]):
        raise ParameterError(f"need a matrix shape [..., H, W] with H, W >= 1, got {tuple(shape)}")
    return int(shape[-2]), int(shape[-1])



# --------------------------------------------------------------------------- filter specs
@dataclass(frozen=True)
class FilterSpec:
    """A frequency filter: what :func:`frequency_filter` applies and :func:`frequency_mask` draws.

    cutoff
        One number for ``band="high"``/``"low"``; a pair ``(lower, upper)`` for ``"band"``.
        In ``units`` (``"normalized"``: ``[0, 1]``; ``"bins"``: ``>= 0``) for the paper
        convention; the authors' ``filter_ratio`` (``>= 0``, fraction of ``min(H, W)``) for
        ``convention="official"``, where ``units`` must stay ``"normalized"``.
    kind
        ``"ideal"`` (Eq. 2), ``"butterworth"`` (gain ``1 / (1 + (D0/D)^(2·order))``) or
        ``"gaussian"`` (gain ``1 - exp(-D² / (2·D0²))``). The official convention is ideal only.
    band
        ``"high"`` keeps radii ``>= cutoff``; ``"low"`` is its complement; ``"band"`` keeps
        ``lower <= radius < upper`` (the product of a high-pass and a low-pass).
    """

    cutoff: float | tuple[float, float]
    kind: str = "ideal"
    band: str = "high"
    units: str = "normalized"
    convention: str = "paper"
    order: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.cutoff, list):
            object.__setattr__(self, "cutoff", tuple(self.cutoff))
        check_choice("kind", self.kind, KINDS)
        check_choice("band", self.band, BANDS)
        check_choice("units", self.units, UNITS)
        check_choice("convention", self.convention, CONVENTIONS)
        if self.kind == "butterworth" and (not isinstance(self.order, int) or self.order < 1):
            raise ParameterError(f"butterworth order must be an integer >= 1, got {self.order!r}")
        if self.convention == "official":
            if self.kind != "ideal":
                raise ParameterError("convention='official' is the authors' ideal filter; "
                                     f"kind={self.kind!r} is not available with it")
            if self.units != "normalized":
                raise ParameterError("convention='official' takes the authors' filter_ratio as "
                                     "cutoff; units='bins' does not apply to it")
            if self.band == "band":
                raise ParameterError("convention='official' has no band-pass form")
        cutoffs = self.cutoffs
        for value in cutoffs:
            self._check_cutoff(value)
        if self.band == "band" and not cutoffs[0] < cutoffs[1]:
            raise ParameterError(f"band cutoffs must satisfy lower < upper, got {cutoffs}")

    @property
    def cutoffs(self) -> tuple[float, ...]:
        """The cutoff(s) as floats: one for high/low, ``(lower, upper)`` for band."""
        raw = self.cutoff
        if self.band == "band":
            if not isinstance(raw, (tuple, list)) or len(raw) != 2:
                raise ParameterError(f"band='band' needs cutoff=(lower, upper), got {raw!r}")
            return (_as_float(raw[0]), _as_float(raw[1]))
        if isinstance(raw, (tuple, list)):
            raise ParameterError(f"band={self.band!r} needs one cutoff, got {raw!r}")
        return (_as_float(raw),)

    def _check_cutoff(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            raise ParameterError(f"cutoff must be a finite number >= 0, got {value}")
        if self.convention == "paper" and self.units == "normalized" and value > 1:
            raise ParameterError(
                f"a normalized cutoff lies in [0, 1] (1 = corner of the spectrum), got {value}; "
                "use units='bins' for a radius in frequency bins")

    def mask(self, shape: Sequence[int], device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32, centered: bool = True) -> torch.Tensor:
        """Gain of every bin of an ``H × W`` spectrum (``[H, W]``), centred unless asked not to be.

        The returned tensor is cached and shared: do not modify it in place.
        """
        h, w = _matrix_shape(shape)
        return _cached_mask(self, h, w, str(torch.device(device or "cpu")), dtype, centered)

    def half_mask(self, shape: Sequence[int], device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Gain on the ``[H, W//2 + 1]`` half spectrum of ``rfft2``, made conjugate-symmetric.

        For a real input, ``irfft2(rfft2(x) * half_mask)`` equals ``ifft2(fft2(x) * mask).real``
        exactly: the real part of a filtered real signal only sees the symmetric part of a mask.
        """
        h, w = _matrix_shape(shape)
        return _cached_half_mask(self, h, w, str(torch.device(device or "cpu")), dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_filter(x, self)


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"cutoff must be a number, got {value!r}") from None


def _high_gain(distance: torch.Tensor, cutoff: float, spec: FilterSpec) -> torch.Tensor:
    if cutoff == 0:
        return torch.ones_like(distance)
    if spec.kind == "ideal":
        return (distance >= cutoff).to(distance.dtype)
    if spec.kind == "butterworth":
        return 1.0 / (1.0 + (cutoff / distance) ** (2 * spec.order))
    return 1.0 - torch.exp(-0.5 * (distance / cutoff) ** 2)


def _unshifted_gain(spec: FilterSpec, h: int, w: int, rows: torch.Tensor | None = None,
                    cols: torch.Tensor | None = None) -> torch.Tensor:
    """Gain (float64) of the bins ``rows × cols`` (default: all) of an unshifted ``h × w`` spectrum."""
    if spec.convention == "official":
        kept = _official_distance_unshifted((h, w), rows, cols) <= spec.cutoffs[0] * min(h, w)
        high = kept.to(torch.float64)
    else:
        distance = _radius_unshifted((h, w), spec.units, rows, cols)
        if spec.band == "band":
            lower, upper = spec.cutoffs
            return _high_gain(distance, lower, spec) * (1.0 - _high_gain(distance, upper, spec))
        high = _high_gain(distance, spec.cutoffs[0], spec)
    return high if spec.band == "high" else 1.0 - high


@lru_cache(maxsize=512)
def _cached_mask(spec: FilterSpec, h: int, w: int, device: str, dtype: torch.dtype,
                 centered: bool) -> torch.Tensor:
    gain = _unshifted_gain(spec, h, w)
    if centered:
        gain = torch.fft.fftshift(gain, dim=(-2, -1))
    return gain.to(device=device, dtype=dtype)


@lru_cache(maxsize=512)
def _cached_half_mask(spec: FilterSpec, h: int, w: int, device: str,
                      dtype: torch.dtype) -> torch.Tensor:
    # The mean of the gain at (i, j) and at its mirror (-i mod h, -j mod w), built a block of
    # rows at a time so that no full-size float64 grid is ever held.
    cols = torch.arange(w // 2 + 1)
    mirror_cols = (-cols) % w
    half = torch.empty((h, cols.numel()), dtype=dtype)
    rows_per_block = max(1, BLOCK_ENTRIES // cols.numel())
    for start in range(0, h, rows_per_block):
        rows = torch.arange(start, min(h, start + rows_per_block))
        gain = _unshifted_gain(spec, h, w, rows, cols)
        gain.add_(_unshifted_gain(spec, h, w, (-rows) % h, mirror_cols)).mul_(0.5)
        half[start:start + rows.numel()] = gain
    return half.to(device)


def clear_mask_cache() -> None:
    """Forget every cached mask (e.g. to free GPU memory)."""
    _cached_mask.cache_clear()
    _cached_half_mask.cache_clear()


# --------------------------------------------------------------------------- filtering
def apply_filter(x: torch.Tensor, spec: FilterSpec) -> torch.Tensor:
    """Filter the last two dimensions of real ``x[..., H, W]`` with `spec` (same shape)."""
    x = as_compute_tensor(x)
    if x.ndim < 2:
        raise ParameterError(f"frequency filters need [..., H, W] input, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if x.numel() == 0:
        return x.clone()
    half = spec.half_mask((h, w), device=x.device, dtype=x.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(x) * half, s=(h, w))


def frequency_filter(x: torch.Tensor, cutoff, kind: str = "ideal", band: str = "high",
                     units: str = "normalized", convention: str = "paper",
                     order: int = 2) -> torch.Tensor:
    """Filter real ``x[..., H, W]`` in the 2-D frequency domain: ``F⁻¹{H · F{x}}``.

    Parameters are those of :class:`FilterSpec` (cutoff units are explained in the module
    docstring). Returns a real tensor of ``x``'s shape, on ``x``'s device, float32 unless
    ``x`` is float64.
    """
    return apply_filter(x, FilterSpec(cutoff, kind, band, units, convention, order))


def frequency_mask(shape: Sequence[int], cutoff, kind: str = "ideal", band: str = "high",
                   units: str = "normalized", convention: str = "paper", order: int = 2,
                   device: torch.device | str | None = None, centered: bool = True) -> torch.Tensor:
    """Gain ``[H, W]`` of the filter :func:`frequency_filter` would apply (centred: DC in the middle)."""
    spec = FilterSpec(cutoff, kind, band, units, convention, order)
    return spec.mask(shape, device=device, centered=centered)


def as_matrix(tensor: torch.Tensor, one_d: str = "skip") -> torch.Tensor | None:
    """The 2-D view a parameter is filtered and analysed as, or ``None`` to leave it alone.

    2-D tensors are used as they are; ``ndim >= 3`` tensors (conv kernels ``out × in × kh × kw``)
    as ``(shape[0], prod(shape[1:]))``; 1-D tensors are skipped, or with ``one_d="fft"`` seen as
    a ``1 × N`` row (a 1-D FFT); 0-d scalars are always skipped.
    """
    check_choice("one_d", one_d, ONE_D_MODES)
    if tensor.ndim == 0 or tensor.numel() == 0:
        return None
    if tensor.ndim == 1:
        return tensor.reshape(1, -1) if one_d == "fft" else None
    if tensor.ndim == 2:
        return tensor
    return tensor.reshape(tensor.shape[0], -1)


def filter_parameter(tensor: torch.Tensor, spec: FilterSpec, one_d: str = "skip") -> torch.Tensor:
    """Filter one model parameter of any rank by the :func:`as_matrix` rule; same shape back."""
    return filter_stack(tensor.unsqueeze(0), spec, one_d)[0]


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


def filter_stack(stack: torch.Tensor, spec: FilterSpec, one_d: str = "skip",
                 inplace: bool = False) -> torch.Tensor:
    """Filter each of the K parameters in ``stack[K, *shape]`` by the :func:`as_matrix` rule.

    ``inplace=True`` overwrites `stack` (a contiguous tensor in its compute dtype) one task at
    a time, so the extra memory is one task's half spectrum; the result is the same.
    """
    view = as_matrix(stack[0], one_d) if stack.shape[0] else None
    if view is None:
        return stack if inplace else as_compute_tensor(stack)
    if not inplace:
        matrices = stack.reshape(stack.shape[0], *view.shape)
        return apply_filter(matrices, spec).reshape(stack.shape)
    matrices = stack.view(stack.shape[0], *view.shape)
    h, w = view.shape
    half = spec.half_mask((h, w), device=stack.device, dtype=stack.dtype)
    for task in range(stack.shape[0]):
        filter_matrix_(matrices[task], half)
    return stack


def filter_matrix_(matrix: torch.Tensor, half_mask: torch.Tensor) -> torch.Tensor:
    """Overwrite real ``matrix[H, W]`` with ``irfft2(rfft2(matrix) · half_mask)``.

    The 2-D transform is done axis by axis: a row-wise ``rfft`` into one half spectrum, then
    the column transforms and the row-wise inverse in blocks of about :data:`BLOCK_ENTRIES`
    entries, so the extra memory is one half spectrum (about one copy of `matrix`) plus
    the blocks, instead of the three copies of ``rfft2`` followed by ``irfft2``.
    """
    h, w = matrix.shape
    spectrum = torch.fft.rfft(matrix, dim=1)
    width = spectrum.shape[1]
    columns = max(1, BLOCK_ENTRIES // h)
    for start in range(0, width, columns):
        block = torch.fft.fft(spectrum[:, start:start + columns], dim=0)
        block.mul_(half_mask[:, start:start + columns])
        spectrum[:, start:start + columns] = torch.fft.ifft(block, dim=0)
        del block
    rows = max(1, BLOCK_ENTRIES // width)
    for start in range(0, h, rows):
        matrix[start:start + rows] = torch.fft.irfft(spectrum[start:start + rows], n=w, dim=1)
    return matrix
