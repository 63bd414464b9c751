"""Filtering matrices: one entry point for every path, and the batched filter of merges.

Every function takes a real ``x[..., H, W]`` and returns it filtered, same shape, same device.
"""

from __future__ import annotations

import torch

from ..backend import BLOCK_ENTRIES, as_compute_tensor
from ..errors import ParameterError
from .fastpath import LowbandPlan, _band_support, _lowband_plans, _lowband_tensors, _resolve_path, lowband_filter_
from .masks import FilterLike, _cached_half_counts, _cached_half_mask, _cached_mask, as_matrix


def clear_mask_cache() -> None:
    """Forget every cached mask, band support, filter plan and DFT matrix (e.g. to free GPU memory)."""
    _cached_mask.cache_clear()
    _cached_half_mask.cache_clear()
    _cached_half_counts.cache_clear()
    _band_support.cache_clear()
    _lowband_plans.cache_clear()
    _lowband_tensors.cache_clear()


# --------------------------------------------------------------------------- filtering
def apply_filter(x: torch.Tensor, spec: FilterLike, path: str | LowbandPlan = "auto") -> torch.Tensor:
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


def filter_parameter(tensor: torch.Tensor, spec: FilterLike, one_d: str = "skip") -> torch.Tensor:
    """Filter one model parameter of any rank by the :func:`as_matrix` rule; same shape back."""
    return filter_stack(tensor.unsqueeze(0), spec, one_d)[0]


def filter_stack(stack: torch.Tensor, spec: FilterLike, one_d: str = "skip", inplace: bool = False,
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
