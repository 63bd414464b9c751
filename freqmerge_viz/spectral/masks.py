"""Frequency coordinates, filter specifications and masks of matrices.

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
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol, Sequence

import torch

from ..backend import BLOCK_ENTRIES
from ..errors import ParameterError, check_choice


class FilterLike(Protocol):
    """What this floor and the two above it (``fastpath``, ``filters``) read of a filter: the
    fields and methods of :class:`freqmerge_viz.spectral.FilterSpec`, which is defined on the
    floor above them (``spec.py``, built on these functions) and satisfies this protocol, so
    that no module below ``spec.py`` imports it. Cutoffs as in that class (normalised or bins,
    per ``units``)."""

    @property
    def kind(self) -> str: ...
    @property
    def band(self) -> str: ...
    @property
    def units(self) -> str: ...
    @property
    def convention(self) -> str: ...
    @property
    def order(self) -> int: ...
    @property
    def ring(self) -> str: ...
    @property
    def cutoffs(self) -> tuple[float, ...]: ...

    def half_mask(self, shape: Sequence[int], device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor: ...


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


def _official_high_gain(spec: FilterLike, h: int, w: int, rows: torch.Tensor | None = None,
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


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"cutoff must be a number, got {value!r}") from None


def _high_gain(distance: torch.Tensor, cutoff: float, spec: FilterLike) -> torch.Tensor:
    if cutoff == 0:
        return torch.ones_like(distance)
    if spec.kind == "ideal":
        return (distance >= cutoff).to(distance.dtype)
    if spec.kind == "butterworth":
        return 1.0 / (1.0 + (cutoff / distance) ** (2 * spec.order))
    return 1.0 - torch.exp(-0.5 * (distance / cutoff) ** 2)


def _unshifted_gain(spec: FilterLike, h: int, w: int, rows: torch.Tensor | None = None,
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
def _cached_mask(spec: FilterLike, h: int, w: int, device: str, dtype: torch.dtype,
                 centered: bool) -> torch.Tensor:
    gain = _unshifted_gain(spec, h, w)
    if centered:
        gain = torch.fft.fftshift(gain, dim=(-2, -1))
    return gain.to(device=device, dtype=dtype)


@lru_cache(maxsize=512)
def _cached_half_mask(spec: FilterLike, h: int, w: int, device: str,
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


def half_spectrum_weights(w: int, device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """How many bins of a ``W``-column spectrum each column of the ``rfft2`` half spectrum
    (``[W//2 + 1]``) stands for: 2 for columns ``1 … (W-1)//2`` (a bin and its conjugate mirror
    ``(-η, -γ)``, of the same amplitude for a real input), 1 for column 0 and, when W is even,
    the Nyquist column ``W/2`` (their mirrors lie in the same column). A sum over the full
    spectrum of a real input's ``|F|`` (or of any point-symmetric quantity) is the sum over the
    half spectrum weighted by these."""
    weights = torch.ones(w // 2 + 1, dtype=dtype)
    weights[1:(w - 1) // 2 + 1] = 2
    return weights.to(device) if device is not None else weights


@lru_cache(maxsize=512)
def _cached_half_counts(spec: FilterLike, h: int, w: int, device: str) -> torch.Tensor:
    # Per half-spectrum bin: is its gain >= 0.5 (as the float32 mask says), plus, in the paired
    # columns, is its mirror's; a row block at a time, like _cached_half_mask.
    cols = torch.arange(w // 2 + 1)
    mirror_cols = (-cols) % w
    paired = (cols >= 1) & (cols <= (w - 1) // 2)
    counts = torch.empty((h, cols.numel()), dtype=torch.uint8)
    rows_per_block = max(1, BLOCK_ENTRIES // cols.numel())
    for start in range(0, h, rows_per_block):
        rows = torch.arange(start, min(h, start + rows_per_block))
        own = _unshifted_gain(spec, h, w, rows, cols).to(torch.float32) >= 0.5
        mirror = _unshifted_gain(spec, h, w, (-rows) % h, mirror_cols).to(torch.float32) >= 0.5
        counts[start:start + rows.numel()] = own.to(torch.uint8) + (mirror & paired).to(torch.uint8)
    return counts.to(device)


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


def matrix_stack(stack: torch.Tensor, one_d: str = "skip") -> torch.Tensor | None:
    """A key's ``stack [K, *shape]`` as ``[K, H, W]`` matrices (each task seen as :func:`as_matrix`
    sees it), or ``None`` when the parameter is left alone (or K is 0)."""
    view = as_matrix(stack[0], one_d) if stack.shape[0] else None
    return None if view is None else stack.reshape(stack.shape[0], *view.shape)
