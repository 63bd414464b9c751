"""Device and dtype rules shared by every numerical function."""

from __future__ import annotations

import contextlib

import torch

from .errors import ParameterError

BLOCK_ENTRIES = 2**16
"""Entries that blockwise steps (entrywise merge steps, the column and row passes of
:func:`~freqmerge_viz.spectral.filter_matrix_`) handle at a time, bounding their temporaries."""


def default_device() -> torch.device:
    """CUDA when a GPU is present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` means :func:`default_device`; anything else is passed to ``torch.device``."""
    if device is None:
        return default_device()
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"not a device: {device!r} ({exc})") from None


def available_device(device: str | torch.device | None) -> torch.device:
    """:func:`resolve_device`, checked: a :class:`ParameterError` (instead of a torch error at the
    first tensor) when it names a CUDA device this machine does not have."""
    target = resolve_device(device)
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count or (target.index is not None and target.index >= count):
            raise ParameterError(f"device {str(target)!r} is not available here ({count} CUDA device(s) seen by "
                                 f"torch {torch.__version__}); use --device cpu")
    return target


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_compute_tensor(x: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """`x` as a real floating tensor in its compute dtype, on `device` (default: its own)."""
    if not isinstance(x, torch.Tensor):
        raise ParameterError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise ParameterError(f"expected a real floating tensor, got dtype {x.dtype}")
    return x.to(device=device if device is not None else x.device, dtype=compute_dtype(x.dtype))


@contextlib.contextmanager
def torch_threads(n: int | None = 1):
    """Run with `n` torch intra-op threads, restoring the previous count after (also a decorator);
    ``None`` leaves torch's setting alone.

    The toolkit's small models and matrices run many small ops; on a busy 2-core machine two
    threads mostly wait on each other and were measured 5–8× slower than one. The setting is
    process-wide while it lasts.
    """
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
