"""Filter specifications: what a frequency filter is (kind, band, cutoff and its units,
convention), checked once, and the two ways to use one: its mask, or applied to matrices.

The cutoff's units are explained in :mod:`freqmerge_viz.spectral.masks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ParameterError, check_choice
from .filters import apply_filter
from .masks import (BANDS, CONVENTIONS, KINDS, RINGS, UNITS, _as_float, _cached_half_counts, _cached_half_mask,
                    _cached_mask, _matrix_shape)


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

    def half_counts(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """For each bin of the ``[H, W//2 + 1]`` half spectrum of ``rfft2``: how many of the
        full-spectrum bins it stands for (itself and, in columns ``1 … (W-1)//2``, its conjugate
        mirror) have a gain of at least 0.5 in :meth:`mask` (0, 1 or 2; ``uint8``).

        A sum over the bins the filter counts as kept, of a real input's amplitude (or of any
        point-symmetric quantity), is the sum over the half spectrum weighted by these counts,
        even where the kept set is not point-symmetric (the official convention on odd shapes).
        The returned tensor is cached and shared: do not modify it in place.
        """
        h, w = _matrix_shape(shape)
        return _cached_half_counts(self, h, w, str(torch.device(device or "cpu")))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_filter(x, self)


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
