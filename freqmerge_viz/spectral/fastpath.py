"""The exact fast path of ideal filters: only the band of bins where a filter acts, and a fitted
cost model choosing between it and the full FFT.

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
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch

from ..backend import BLOCK_ENTRIES, compute_dtype
from ..errors import ParameterError, check_choice
from .masks import FilterLike, _cached_half_mask, _matrix_shape


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
def _band_support(spec: FilterLike, h: int, w: int, device: str,
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
def _lowband_plans(spec: FilterLike, h: int, w: int, device: str, dtype: torch.dtype,
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


def lowband_plans(shape: Sequence[int], spec: FilterLike, device: torch.device | str | None = None,
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


def filter_costs(shape: Sequence[int], spec: FilterLike, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Model estimates (seconds per matrix) of the ``"fft"`` and ``"lowband"`` paths."""
    return {"fft": fft_path_cost(shape), "lowband": lowband_plans(shape, spec, device, dtype)[0].cost}


def filter_path(shape: Sequence[int], spec: FilterLike, device: torch.device | str | None = None,
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


def _resolve_path(spec: FilterLike, h: int, w: int, device: torch.device, dtype: torch.dtype,
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
def _lowband_tensors(spec: FilterLike, h: int, w: int, plan: LowbandPlan, device: str,
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
