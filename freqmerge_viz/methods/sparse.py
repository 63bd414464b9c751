"""Sparsifying merges: magnitude pruning, TIES, DARE and Model Breadcrumbs.

Density is the fraction of a tensor's entries kept, in (0, 1]; ``k = floor(density · n)``
entries per task and tensor, as in peft's ``merge_utils`` (so a tiny density may keep none).
"""

from __future__ import annotations

import zlib

import torch

from .base import MergeContext, MergeMethod, Param, register
from .linear import WEIGHTS, weighted_sum

DENSITY = Param("density", 0.2, "fraction of each task's entries kept, per tensor", low=0.0, high=1.0,
                low_open=True)
SCALING = Param("scaling", 1.0, "factor on the merged delta", low=0.0)
CONVENTION = Param("convention", "peft", "peft: sign elected on unweighted deltas, mean over agreeing "
                                         "entries; mergekit: elected on weighted deltas, divided by the "
                                         "sum of agreeing weights", choices=("peft", "mergekit"))
MAJORITY = Param("majority", "total", "total: sign of the summed values; frequency: sign of the summed "
                                      "signs", choices=("total", "frequency"))


def keep_top_magnitude(stack: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ``floor(density · n)`` largest-magnitude entries of each ``stack[i]``."""
    flat = stack.reshape(stack.shape[0], -1)
    k = int(density * flat.shape[1])
    mask = torch.zeros_like(flat)
    if k > 0:
        mask.scatter_(1, flat.abs().topk(k, dim=1).indices, 1.0)
    return (flat * mask).reshape(stack.shape)


def drop_largest_and_smallest(stack: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs' mask: per task, drop the ``floor(gamma·n)`` largest-magnitude entries,
    keep the next ``floor(density·n)``, zero the rest."""
    flat = stack.reshape(stack.shape[0], -1)
    n = flat.shape[1]
    top, kept = int(gamma * n), int(density * n)
    order = flat.abs().argsort(dim=1, descending=True, stable=True)
    mask = torch.zeros_like(flat)
    mask.scatter_(1, order[:, top:top + kept], 1.0)
    return (flat * mask).reshape(stack.shape)


def random_drop(stack: torch.Tensor, density: float, seed: int, key: str, rescale: bool) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (seeded per key and task), divide by it."""
    kept = torch.empty_like(stack)
    for task in range(stack.shape[0]):
        generator = torch.Generator().manual_seed(dare_seed(seed, key, task))
        mask = torch.bernoulli(torch.full(stack.shape[1:], density, dtype=stack.dtype), generator=generator)
        kept[task] = stack[task] * mask.to(stack.device)
    return kept / density if rescale else kept


def dare_seed(seed: int, key: str, task: int) -> int:
    """The generator seed of task `task`'s DARE mask for `key`: independent of key order."""
    return (seed * 1_000_003 + zlib.crc32(key.encode()) * 101 + task) % (2**63)


def elect_sign(stack: torch.Tensor, majority: str = "total") -> torch.Tensor:
    """The elected sign (+1/−1) of each entry over the tasks of ``stack[K, …]``; ties go to +1."""
    votes = stack.sum(dim=0) if majority == "total" else stack.sign().sum(dim=0)
    return torch.where(votes >= 0, 1.0, -1.0).to(stack.dtype)


def keep_agreeing(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """Zero the entries whose sign differs from the elected one (TIES step 2)."""
    voters = stack * ctx.task_weights(stack) if ctx.params["convention"] == "mergekit" else stack
    sign = elect_sign(voters, ctx.params["majority"])
    return stack * (stack.sign() == sign)


def disjoint_mean(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """TIES step 3: weighted sum of the agreeing entries divided by their count (peft) or by
    the sum of their weights (mergekit); entries no task keeps are 0."""
    weights = ctx.task_weights(stack)
    agreeing = (stack != 0).to(stack.dtype)
    if ctx.params["convention"] == "mergekit":
        divisor = (weights * agreeing).sum(dim=0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        divisor = agreeing.sum(dim=0).clamp_min(1.0)
    return (stack * weights).sum(dim=0) / divisor


@register
class MagnitudePrune(MergeMethod):
    name = "magnitude_prune"
    summary = "keep each task's top-density entries by magnitude, then a weighted sum (peft's magnitude_prune)"
    params = (DENSITY, WEIGHTS, SCALING)

    def transform(self, stack, key, ctx):
        return keep_top_magnitude(stack, ctx.params["density"])

    def combine(self, stack, key, ctx):
        return ctx.params["scaling"] * weighted_sum(stack, ctx)


@register
class Ties(MergeMethod):
    name = "ties"
    summary = "TIES-Merging (Yadav et al. 2023): trim to the top density, elect signs, disjoint mean"
    params = (DENSITY, WEIGHTS, SCALING, CONVENTION, MAJORITY)

    def transform(self, stack, key, ctx):
        return keep_agreeing(keep_top_magnitude(stack, ctx.params["density"]), ctx)

    def combine(self, stack, key, ctx):
        return ctx.params["scaling"] * disjoint_mean(stack, ctx)


DARE_PARAMS = (Param("density", 0.5, "probability of keeping each entry", low=0.0, high=1.0, low_open=True),
               Param("rescale", True, "divide kept entries by the density", kind=bool),
               Param("seed", 0, "seed of the drop masks", kind=int, low=0), WEIGHTS, SCALING)


@register
class DareLinear(MergeMethod):
    name = "dare_linear"
    summary = "DARE (Yu et al. 2024): random drop and rescale, then a weighted sum"
    params = DARE_PARAMS

    def transform(self, stack, key, ctx):
        p = ctx.params
        return random_drop(stack, p["density"], p["seed"], key, p["rescale"])

    def combine(self, stack, key, ctx):
        return ctx.params["scaling"] * weighted_sum(stack, ctx)


@register
class DareTies(MergeMethod):
    name = "dare_ties"
    summary = "DARE drop and rescale, then TIES sign election and disjoint mean"
    params = DARE_PARAMS + (CONVENTION, MAJORITY)

    def transform(self, stack, key, ctx):
        p = ctx.params
        return keep_agreeing(random_drop(stack, p["density"], p["seed"], key, p["rescale"]), ctx)

    def combine(self, stack, key, ctx):
        return ctx.params["scaling"] * disjoint_mean(stack, ctx)


BREADCRUMB_PARAMS = (Param("density", 0.9, "fraction of entries kept after the largest are dropped",
                           low=0.0, high=1.0, low_open=True),
                     Param("gamma", 0.01, "fraction of largest-magnitude entries dropped", low=0.0, high=1.0),
                     WEIGHTS, Param("scaling", 0.3, "factor on the merged delta", low=0.0))


@register
class Breadcrumbs(MergeMethod):
    name = "breadcrumbs"
    summary = "Model Breadcrumbs (Davari & Belilovsky 2024): drop the largest and smallest entries, then sum"
    params = BREADCRUMB_PARAMS

    def resolve(self, given, n_tasks=None):
        resolved = super().resolve(given, n_tasks)
        if resolved["density"] + resolved["gamma"] > 1:
            from ..errors import ParameterError
            raise ParameterError(f"breadcrumbs: density + gamma must be at most 1, got "
                                 f"{resolved['density']} + {resolved['gamma']}")
        return resolved

    def transform(self, stack, key, ctx):
        return drop_largest_and_smallest(stack, ctx.params["density"], ctx.params["gamma"])

    def combine(self, stack, key, ctx):
        return ctx.params["scaling"] * weighted_sum(stack, ctx)
