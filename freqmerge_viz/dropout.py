"""Seeded random keep-masks, as DARE draws them: the same mask for a key and a task on every
device and in every key order (the generator is seeded by seed, key and task alone)."""

from __future__ import annotations

import zlib

import torch


def dare_seed(seed: int, key: str, task: int) -> int:
    """The generator seed of task `task`'s DARE mask for `key`."""
    return (seed * 1_000_003 + zlib.crc32(key.encode()) * 101 + task) % (2**63)


def dare_mask(shape, density: float, seed: int, key: str, task: int,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DARE's keep mask (1 = kept, probability `density`) of task `task` for `key`, on the CPU.

    Seeded by (seed, key, task) alone, so a merge gives the same masks on every device and
    in every key order.
    """
    generator = torch.Generator().manual_seed(dare_seed(seed, key, task))
    return torch.empty(shape, dtype=dtype).bernoulli_(density, generator=generator)
