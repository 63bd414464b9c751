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
    the authors' published code: distance ``d`` from the array index ``(H//2, W//2)`` of the
    *unshifted* spectrum, cutoff = their ``filter_ratio`` as a fraction of ``min(H, W)``. The
    code adds a disc ``d <= min(H, W)//10`` and a band ``min(H, W)//10 <= d <= ratio·min(H, W)``,
    so it keeps ``d <= max(min(H, W)//10, ratio·min(H, W))`` (the disc whatever the ratio), and
    with ``ring="twice"`` (default) the bins at ``d = min(H, W)//10`` count twice whenever the
    band is not empty. Distances are computed as the code does: the float32 square root of
    the integer squared distance, compared with ``ratio·min(H, W)`` in float32. DC sits in the
    corners, so this is a high-pass, but an anisotropic one (docs/methods.md).

Gains
-----
A mask holds the gain ``g`` of each bin, in ``[0, 1]`` except the official convention's doubled
ring (gain 2). Low-pass gain is ``1 - high-pass gain`` of the same specification, so
low + high reproduces the input exactly (up to rounding); the official low-pass therefore
has gain −1 on that ring. Cutoff 0 gives a high-pass of gain 1 everywhere (the identity)
for every kind.

Filter paths
------------
For a real input only the point-symmetric part of a mask acts, so every filter is applied
with the symmetrised half mask of ``rfft2``. Two exact ways to apply it
(:func:`apply_filter`, :func:`filter_stack`, ``path=``):

``"fft"``
    the whole spectrum: a real FFT of every row, FFTs of every half-spectrum column, the
    mask, and back.
``"lowband"``
    only the band where the filter acts (:class:`LowbandPlan`): ``x − F⁻¹{(1 − g)·F{x}}``
    when few bins have ``g < 1`` (a high-pass with a small cutoff), or ``F⁻¹{g·F{x}}`` when
    few have ``g > 0``. The band's bins fill a rectangle: rows ``R`` (symmetric under
    ``k → −k``) by half-spectrum columns ``C``. For the paper's ideal high-pass it is the
    bounding box of the removed disc, ``|η| < D0·√m·H/2`` by ``|γ| < D0·√m·W/2`` (normalised;
    ``|η|, |γ| < D0`` in bins). For the official convention the removed bins lie farther than
    ``R = max(min(H, W)//10, ratio·min(H, W))`` from index ``(H//2, W//2)``, i.e. around the
    corners of the unshifted spectrum (around DC): row ``i`` holds one iff
    ``(i − H//2)² + (W//2)² > R²`` (plus the mirrored rows, as the symmetrised mask also has
    the bins ``(−i, −j)``), the columns likewise; the doubled ring ``d = min(H, W)//10``
    (gain 2, so ``1 − g ≠ 0``) adds its few rows and columns; when ``R < max(H, W)//2``
    every row or column holds a removed bin and the band is the whole spectrum. Each axis of
    the rectangle is transformed either by the FFT along it, cut to the band, or by a product
    with its ``|R|``- or ``|C|``-row DFT matrix (cosine/sine pairs for the real first axis;
    real-input symmetry halves the columns).
``"auto"``
    :func:`filter_path`: the cheaper by a cost model (:data:`FILTER_COST`, fitted to
    timings) for ideal filters, whose band is a set of whole bins; the FFT for soft ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch

from .backend import BLOCK_ENTRIES, as_compute_tensor, compute_dtype
from .errors import ParameterError, check_choice

KINDS = ("ideal", "butterworth", "gaussian")
BANDS = ("high", "low", "band")
UNITS = ("normalized", "bins")
CONVENTIONS = ("paper", "official")
RINGS = ("twice", "once")
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
    """Distance of bins ``rows × cols`` from index ``(H//2, W//2)``, float32 as the authors' code
    computes it: the float32 square root of the integer squared distance."""
    h, w = shape
    rows = torch.arange(h) if rows is None else rows
    cols = torch.arange(w) if cols is None else cols
    squared = (rows.long()[:, None] - h // 2) ** 2 + (cols.long()[None, :] - w // 2) ** 2
    return squared.to(torch.float32).sqrt()


def _official_high_gain(spec: FilterSpec, h: int, w: int, rows: torch.Tensor | None = None,
                        cols: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' kept set as a gain (float64): disc ``d <= min//10`` plus band
    ``min//10 <= d <= ratio·min``; the ring ``d = min//10`` has gain 2 with ``ring="twice"``
    when the band is not empty, 1 with ``ring="once"``."""
    distance = _official_distance_unshifted((h, w), rows, cols)
    inner = min(h, w) // 10
    outer = torch.tensor(spec.cutoffs[0] * min(h, w), dtype=torch.float32)
    disc = distance <= inner
    band = (distance >= inner) & (distance <= outer)
    if spec.ring == "twice":
        return disc.to(torch.float64) + band.to(torch.float64)
    return (disc | band).to(torch.float64)


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
    ring
        Official convention only: ``"twice"`` (the authors' code, default) counts the bins at
        distance exactly ``min(H, W)//10`` twice when ``ratio·min(H, W) >= min(H, W)//10``,
        because the code adds its disc and its band; ``"once"`` keeps every bin once.
    """

    cutoff: float | tuple[float, float]
    kind: str = "ideal"
    band: str = "high"
    units: str = "normalized"
    convention: str = "paper"
    order: int = 2
    ring: str = "twice"

    def __post_init__(self) -> None:
        if isinstance(self.cutoff, list):
            object.__setattr__(self, "cutoff", tuple(self.cutoff))
        check_choice("kind", self.kind, KINDS)
        check_choice("band", self.band, BANDS)
        check_choice("units", self.units, UNITS)
        check_choice("convention", self.convention, CONVENTIONS)
        check_choice("ring", self.ring, RINGS)
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

        In ``[0, 1]``, except the bins the official convention counts twice (``ring="twice"``):
        gain 2 for a high-pass, −1 for its low-pass complement.

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
        high = _official_high_gain(spec, h, w, rows, cols)
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
    """Forget every cached mask, band support, filter plan and DFT matrix (e.g. to free GPU memory)."""
    _cached_mask.cache_clear()
    _cached_half_mask.cache_clear()
    _band_support.cache_clear()
    _lowband_plans.cache_clear()
    _lowband_tensors.cache_clear()


# --------------------------------------------------------------------------- filtering
def apply_filter(x: torch.Tensor, spec: FilterSpec, path: str | LowbandPlan = "auto") -> torch.Tensor:
    """Filter the last two dimensions of real ``x[..., H, W]`` with `spec` (same shape).

    ``path="fft"`` transforms the whole spectrum; ``"lowband"`` transforms only the band of
    bins where the filter acts (:class:`LowbandPlan`, the cheapest by the model); ``"auto"``
    takes :func:`filter_path`'s choice; a :class:`LowbandPlan` from :func:`lowband_plans`
    forces that plan. Every path gives the same result up to rounding.
    """
    x = as_compute_tensor(x)
    if x.ndim < 2:
        raise ParameterError(f"frequency filters need [..., H, W] input, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if x.numel() == 0:
        return x.clone()
    plan = _resolve_path(spec, h, w, x.device, x.dtype, path)
    if plan is None:
        half = spec.half_mask((h, w), device=x.device, dtype=x.dtype)
        return torch.fft.irfft2(torch.fft.rfft2(x) * half, s=(h, w))
    out = x.clone(memory_format=torch.contiguous_format)
    tensors = _lowband_tensors(spec, h, w, plan, str(x.device), x.dtype)
    lowband_filter_(out.view(-1, h, w), plan, tensors)
    return out


def frequency_filter(x: torch.Tensor, cutoff, kind: str = "ideal", band: str = "high",
                     units: str = "normalized", convention: str = "paper",
                     order: int = 2, ring: str = "twice") -> torch.Tensor:
    """Filter real ``x[..., H, W]`` in the 2-D frequency domain: ``F⁻¹{H · F{x}}``.

    Parameters are those of :class:`FilterSpec` (cutoff units are explained in the module
    docstring). Returns a real tensor of ``x``'s shape, on ``x``'s device, float32 unless
    ``x`` is float64.
    """
    return apply_filter(x, FilterSpec(cutoff, kind, band, units, convention, order, ring))


def frequency_mask(shape: Sequence[int], cutoff, kind: str = "ideal", band: str = "high",
                   units: str = "normalized", convention: str = "paper", order: int = 2,
                   device: torch.device | str | None = None, centered: bool = True,
                   ring: str = "twice") -> torch.Tensor:
    """Gain ``[H, W]`` of the filter :func:`frequency_filter` would apply (centred: DC in the middle)."""
    spec = FilterSpec(cutoff, kind, band, units, convention, order, ring)
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


# --------------------------------------------------------------------------- filter paths
PATHS = ("auto", "fft", "lowband")
AXIS_METHODS = ("fft", "dft")
BAND_MODES = ("subtract", "direct")
COST_TERMS = ("fft", "strided_fft", "matmul", "entry", "call")

FILTER_COST = {"fft": 2.1e-10, "strided_fft": 4.1e-10, "matmul": 3.3e-11, "entry": 3.0e-11, "call": 2.8e-6}
"""Constants of the filter cost model, in seconds: ``fft`` per ``n·log2(n)`` of one complex
length-``n`` transform along contiguous memory or of a small array (a real transform costs
half), ``strided_fft`` the same along the strided axis of a matrix or band (its columns),
``matmul`` per real multiply-add of a matrix product (a complex one is four), ``entry`` per
real number an elementwise pass reads or writes, ``call`` per torch call. Fitted with
:func:`freqmerge_viz.benchmarks.filter.calibrate` (least squares on the relative error of
480 timings: 9 shapes from 96×384 to 2048×5632, 7 filters, every plan) single-threaded on a
2-core AMD EPYC (AVX-512, MKL) shared with other jobs; median error 35%. Only the ratios
matter for the choice, and only large differences decide it: small bands (DFT matrices)
against narrow bands (FFT along the rows) against the full spectrum."""


class LowbandPlan(NamedTuple):
    """One way to filter a matrix through the small band of bins where the filter acts.

    ``mode="subtract"`` computes ``x − F⁻¹{(1 − g) · F{x}}`` (a high-pass that removes few
    bins); ``"direct"`` computes ``F⁻¹{g · F{x}}`` (a filter that keeps few bins). Only the
    bins of a rectangle are transformed: ``half_bins`` bins of the half spectrum of the
    *first* axis (the columns' axis W, or the rows' axis H when ``transposed``) and
    ``full_bins`` bins of the other, *second* axis. Each axis is transformed by ``"fft"``
    (a full FFT whose output is cut to the band) or ``"dft"`` (a product with the DFT
    matrix restricted to the band). ``cost`` is the model's estimate in seconds per matrix.
    """

    mode: str
    transposed: bool
    first: str
    second: str
    half_bins: int
    full_bins: int
    cost: float


class _LowbandTensors(NamedTuple):
    half_index: torch.Tensor | slice
    forward: torch.Tensor | None
    inverse: torch.Tensor | None
    to_band: torch.Tensor | None
    from_band: torch.Tensor | None
    gain: torch.Tensor


def _fft_units(n: int, transforms: int, real: bool = False) -> float:
    return transforms * n * math.log2(n) * (0.5 if real else 1.0) if n > 1 else 0.0


def _seconds(terms: tuple[float, ...]) -> float:
    return sum(FILTER_COST[name] * amount for name, amount in zip(COST_TERMS, terms))


def fft_path_terms(h: int, w: int) -> tuple[float, ...]:
    """Work of the full-spectrum path on one ``h × w`` matrix, per :data:`COST_TERMS` (see
    :data:`FILTER_COST`): two real FFTs per row, two strided complex FFTs per half-spectrum
    column, about seven passes over the half spectrum and one over the matrix, one call per block."""
    half = w // 2 + 1
    blocks = math.ceil(h * half / BLOCK_ENTRIES)
    return (2 * _fft_units(w, h, real=True), 2 * _fft_units(h, half), 0.0, 14 * h * half + 2 * h * w,
            6 * blocks + 2)


def lowband_terms(n0: int, n1: int, half_bins: int, full_bins: int, first: str,
                  second: str) -> tuple[float, ...]:
    """Work of a :class:`LowbandPlan` per :data:`COST_TERMS`, for a matrix whose first axis
    (transformed first, real input) has length ``n1`` and whose second axis has length ``n0``.

    First axis, forward and back: ``"fft"`` is two real FFTs per line (contiguous rows)
    plus passes to cut out the band, zero-fill the half spectrum and subtract; ``"dft"`` is
    two products with the ``n1 × 2c`` cosine/sine matrix (``4·n0·n1·c`` multiply-adds).
    Second axis (along the
    strided axis of the ``n0 × c`` band): ``"fft"`` is two complex FFTs per kept column;
    ``"dft"`` two complex products with the ``r × n0`` restricted DFT matrix (``8·r·n0·c``).
    """
    c, r = half_bins, full_bins
    if c == 0 or r == 0:
        return (0.0, 0.0, 0.0, 0.0, 1.0)
    half = n1 // 2 + 1
    terms = [0.0, 0.0, 0.0, 0.0, 0.0]
    if first == "fft":
        terms[0] = 2 * _fft_units(n1, n0, real=True)
        terms[3] = 8 * n0 * half + 4 * n0 * c + 3 * n0 * n1
        terms[4] = 7 * math.ceil(n0 * n1 / BLOCK_ENTRIES) + 3
    else:
        terms[2] = 4 * n0 * n1 * c
        terms[3] = 2 * n0 * n1
        terms[4] = 6
    column_blocks = math.ceil(n0 * c / BLOCK_ENTRIES)
    if second == "fft":
        terms[1] += 2 * _fft_units(n0, c)
        terms[3] += 10 * n0 * c
    else:
        terms[2] += 8 * r * n0 * c
        terms[3] += 4 * r * c + 6 * n0 * c
    terms[4] += 4 * column_blocks
    return tuple(terms)


def fft_path_cost(shape: Sequence[int]) -> float:
    """Model estimate (seconds) of the full-spectrum path on one ``H × W`` matrix."""
    return _seconds(fft_path_terms(*_matrix_shape(shape)))


@lru_cache(maxsize=512)
def _band_support(spec: FilterSpec, h: int, w: int, device: str,
                  dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per mode, the rows ``[h]`` and columns ``[w]`` (bool, CPU) of the full unshifted spectrum
    that hold a bin where the band gain (``1 − g`` to subtract, ``g`` direct) is not zero.

    The symmetrised gain is point-symmetric, so both sets are symmetric under ``k → −k``.
    """
    half = _cached_half_mask(spec, h, w, device, dtype)
    mirror_rows = (-torch.arange(h)) % h
    columns = torch.arange(w)
    support = {}
    for mode in BAND_MODES:
        band = half != 1 if mode == "subtract" else half != 0
        rows = band.any(dim=1).cpu()
        half_columns = band.any(dim=0).cpu()
        support[mode] = (rows | rows[mirror_rows], half_columns[torch.minimum(columns, w - columns)])
    return support


@lru_cache(maxsize=512)
def _lowband_plans(spec: FilterSpec, h: int, w: int, device: str, dtype: torch.dtype,
                   bounded: bool) -> tuple[LowbandPlan, ...]:
    plans = []
    for mode in BAND_MODES:
        rows, columns = _band_support(spec, h, w, device, dtype)[mode]
        for transposed in (False, True):
            n0, n1 = (w, h) if transposed else (h, w)
            first_support, second_support = (rows, columns) if transposed else (columns, rows)
            c = int(first_support[: n1 // 2 + 1].sum())
            r = int(second_support.sum())
            budget = max(n0 * n1, BLOCK_ENTRIES) if bounded else math.inf
            for first in AXIS_METHODS:
                if (first == "dft" and 4 * n1 * c > budget) or (first == "fft" and transposed):
                    continue
                for second in AXIS_METHODS:
                    if second == "dft" and 4 * n0 * r > budget:
                        continue
                    plans.append(LowbandPlan(mode, transposed, first, second, c, r,
                                             _seconds(lowband_terms(n0, n1, c, r, first, second))))
    return tuple(sorted(plans, key=lambda plan: plan.cost))


def lowband_plans(shape: Sequence[int], spec: FilterSpec, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, bounded: bool = True) -> tuple[LowbandPlan, ...]:
    """Every :class:`LowbandPlan` for an ``H × W`` matrix under `spec`, cheapest first.

    Transposed plans transform the columns first with DFT matrices only: column-wise FFTs
    over a whole matrix were up to 2× slower than the full-spectrum path (strided access;
    4096×1024: 152 ms against 78 ms). With `bounded`, plans whose DFT matrices hold more
    numbers than the matrix itself (or than ``BLOCK_ENTRIES``, whichever is larger) are left
    out, so that cached matrices stay small; ``bounded=False`` lists them too (12
    combinations), e.g. to test them.
    """
    h, w = _matrix_shape(shape)
    return _lowband_plans(spec, h, w, str(torch.device(device or "cpu")), compute_dtype(dtype), bounded)


def filter_costs(shape: Sequence[int], spec: FilterSpec, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Model estimates (seconds per matrix) of the ``"fft"`` and ``"lowband"`` paths."""
    return {"fft": fft_path_cost(shape), "lowband": lowband_plans(shape, spec, device, dtype)[0].cost}


def filter_path(shape: Sequence[int], spec: FilterSpec, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> str:
    """The path ``path="auto"`` takes for an ``H × W`` matrix: ``"lowband"`` or ``"fft"``.

    The low band is taken when the model says it is cheaper and the filter is ideal (its
    band is a set of whole bins); any filter whose band is empty (cutoff 0) is the identity
    or zero and takes it too. Soft filters keep the FFT: their band covers every bin except
    where rounding makes a gain exactly 0 or 1, which depends on the dtype.
    """
    best = lowband_plans(shape, spec, device, dtype)[0]
    eligible = spec.kind == "ideal" or best.half_bins == 0 or best.full_bins == 0
    return "lowband" if eligible and best.cost < fft_path_cost(shape) else "fft"


def _resolve_path(spec: FilterSpec, h: int, w: int, device: torch.device, dtype: torch.dtype,
                  path: str | LowbandPlan) -> LowbandPlan | None:
    if isinstance(path, LowbandPlan):
        return path
    check_choice("path", path, PATHS)
    if path == "fft" or (path == "auto" and filter_path((h, w), spec, device, dtype) == "fft"):
        return None
    return lowband_plans((h, w), spec, device, dtype)[0]


def _dft_angles(frequencies: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
    """``2π (k·p mod n) / n`` for every frequency k (rows) and position p (columns), float64."""
    return ((frequencies[:, None] * positions[None, :]) % n).double() * (2 * math.pi / n)


def _band_gain(half: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Gain ``[len(rows), len(columns)]`` of full-spectrum bins, read from the symmetric half mask."""
    i, j = rows[:, None], columns[None, :]
    upper = j > w // 2
    return half[torch.where(upper, (-i) % h, i), torch.where(upper, w - j, j)]


@lru_cache(maxsize=256)
def _lowband_tensors(spec: FilterSpec, h: int, w: int, plan: LowbandPlan, device: str,
                     dtype: torch.dtype) -> _LowbandTensors:
    rows, columns = _band_support(spec, h, w, device, dtype)[plan.mode]
    n0, n1 = (w, h) if plan.transposed else (h, w)
    first_support, second_support = (rows, columns) if plan.transposed else (columns, rows)
    half_bins = torch.nonzero(first_support[: n1 // 2 + 1]).flatten()
    full_bins = torch.nonzero(second_support).flatten()
    if half_bins.numel() != plan.half_bins or full_bins.numel() != plan.full_bins:
        raise ParameterError(f"{plan} does not belong to a {h}×{w} matrix under {spec}")
    second_bins = full_bins if plan.second == "dft" else torch.arange(n0)
    half = _cached_half_mask(spec, h, w, device, dtype).cpu()
    if plan.transposed:
        gain = _band_gain(half, half_bins, second_bins, h, w).T
    else:
        gain = _band_gain(half, second_bins, half_bins, h, w)
    if plan.mode == "subtract":
        gain = 1 - gain
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    forward = inverse = to_band = from_band = None
    if plan.first == "dft":
        angles = _dft_angles(half_bins, torch.arange(n1), n1)
        weights = torch.where((half_bins == 0) | (2 * half_bins == n1), 1.0, 2.0).double() / n1
        forward = torch.stack((angles.T.cos(), -angles.T.sin()), dim=-1).reshape(n1, -1)
        inverse = (torch.stack((angles.cos(), -angles.sin()), dim=1) * weights[:, None, None]).reshape(-1, n1)
        if plan.transposed:
            forward, inverse = forward.T, inverse.T
        forward = forward.to(device, dtype).contiguous()
        inverse = inverse.to(device, dtype).contiguous()
    if plan.second == "dft":
        angles = _dft_angles(full_bins, torch.arange(n0), n0)
        to_band = torch.polar(torch.ones_like(angles), -angles)
        from_band = (to_band.conj().T / n0).contiguous().to(device, complex_dtype)
        to_band = to_band.to(device, complex_dtype)
    start = int(half_bins[0]) if len(half_bins) else 0
    contiguous = torch.equal(half_bins, torch.arange(start, start + len(half_bins)))
    index = slice(start, start + len(half_bins)) if contiguous else half_bins.to(device)
    return _LowbandTensors(index, forward, inverse, to_band, from_band, gain.to(device, dtype).contiguous())


def _blocks(batch: int, rows: int, cols: int):
    """``(matrix slice, row slice)`` pairs that cover ``[batch, rows, cols]`` in about
    :data:`BLOCK_ENTRIES` entries each (whole matrices when they are that small)."""
    per_matrix = rows * cols
    if per_matrix <= BLOCK_ENTRIES:
        step = max(1, BLOCK_ENTRIES // max(per_matrix, 1))
        for start in range(0, batch, step):
            yield slice(start, start + step), slice(None)
        return
    step = max(1, BLOCK_ENTRIES // cols)
    for matrix in range(batch):
        for start in range(0, rows, step):
            yield slice(matrix, matrix + 1), slice(start, start + step)


def lowband_filter_(matrices: torch.Tensor, plan: LowbandPlan, tensors: _LowbandTensors) -> torch.Tensor:
    """Overwrite real ``matrices[B, H, W]`` with their filtered values, computed by `plan`.

    The band spectrum (``B × second axis × half_bins`` complex numbers, at most about one
    copy of the matrices) and blocks of about :data:`BLOCK_ENTRIES` entries are the only
    temporaries.
    """
    view = matrices.mT if plan.transposed else matrices
    batch, n0, n1 = view.shape
    c = plan.half_bins
    if c == 0 or plan.full_bins == 0:
        return matrices.zero_() if plan.mode == "direct" else matrices
    if plan.first == "dft" and plan.transposed:
        lines = torch.matmul(tensors.forward, matrices).view(batch, c, 2, n0)
        band = torch.view_as_complex(lines.permute(0, 3, 1, 2).contiguous())
        del lines
    elif plan.first == "dft":
        band = torch.view_as_complex(torch.matmul(view, tensors.forward).view(batch, n0, c, 2))
    else:
        band = torch.empty((batch, n0, c), dtype=torch.complex128 if view.dtype == torch.float64
                           else torch.complex64, device=view.device)
        for part, rows in _blocks(batch, n0, n1):
            band[part, rows] = torch.fft.rfft(view[part, rows], dim=-1)[..., tensors.half_index]
    step = max(1, BLOCK_ENTRIES // n0)
    for start in range(0, c, step):
        columns = slice(start, start + step)
        if plan.second == "dft":
            spectrum = torch.matmul(tensors.to_band, band[..., columns]).mul_(tensors.gain[:, columns])
            band[..., columns] = torch.matmul(tensors.from_band, spectrum)
        else:
            spectrum = torch.fft.fft(band[..., columns], dim=1).mul_(tensors.gain[:, columns])
            band[..., columns] = torch.fft.ifft(spectrum, dim=1)
    subtract = plan.mode == "subtract"
    if plan.first == "dft":
        pairs = torch.view_as_real(band).view(batch, n0, 2 * c)
        beta, alpha = (1.0, -1.0) if subtract else (0.0, 1.0)
        for matrix in range(batch):
            if plan.transposed:
                matrices[matrix].addmm_(tensors.inverse, pairs[matrix].T, beta=beta, alpha=alpha)
            else:
                matrices[matrix].addmm_(pairs[matrix], tensors.inverse, beta=beta, alpha=alpha)
        return matrices
    for part, rows in _blocks(batch, n0, n1):
        values = band[part, rows]
        spectrum = torch.zeros((*values.shape[:-1], n1 // 2 + 1), dtype=band.dtype, device=band.device)
        spectrum[..., tensors.half_index] = values
        wave = torch.fft.irfft(spectrum, n=n1, dim=-1)
        if subtract:
            view[part, rows] -= wave
        else:
            view[part, rows] = wave
    return matrices


def filter_stack(stack: torch.Tensor, spec: FilterSpec, one_d: str = "skip", inplace: bool = False,
                 path: str | LowbandPlan = "auto") -> torch.Tensor:
    """Filter each of the K parameters in ``stack[K, *shape]`` by the :func:`as_matrix` rule.

    ``inplace=True`` overwrites `stack` (a contiguous tensor in its compute dtype) one task at
    a time, so the extra memory is one task's half spectrum (``"fft"`` path) or band
    (``"lowband"``); the result is the same. `path` is as in :func:`apply_filter`.
    """
    view = as_matrix(stack[0], one_d) if stack.shape[0] else None
    if view is None:
        return stack if inplace else as_compute_tensor(stack)
    if not inplace:
        matrices = stack.reshape(stack.shape[0], *view.shape)
        return apply_filter(matrices, spec, path).reshape(stack.shape)
    matrices = stack.view(stack.shape[0], *view.shape)
    h, w = view.shape
    plan = _resolve_path(spec, h, w, stack.device, stack.dtype, path)
    if plan is None:
        half = spec.half_mask((h, w), device=stack.device, dtype=stack.dtype)
        for task in range(stack.shape[0]):
            filter_matrix_(matrices[task], half)
        return stack
    tensors = _lowband_tensors(spec, h, w, plan, str(stack.device), stack.dtype)
    for task in range(stack.shape[0]):
        lowband_filter_(matrices[task:task + 1], plan, tensors)
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
