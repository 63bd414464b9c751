"""Sparsifying merges: magnitude pruning, TIES, DARE and Model Breadcrumbs.

Density is the fraction of a tensor's entries kept, in (0, 1]; exactly ``k = floor(density · n)``
entries per task and tensor, as in peft's ``merge_utils`` and mergekit (so a tiny density may
keep none). Ranking rule for every top-k here: larger magnitude first, and among equal
magnitudes the lower flat (row-major) index first, so the entries tying the k-th largest
magnitude that are kept are those with the lowest flat indices (docs/methods.md, "Density and
ties"). Helpers ending in ``_`` modify the stack they are given (the merge owns it) one task at
a time, so a key's merge needs about K + 2 tensors of memory.
"""

from __future__ import annotations


import torch

from ..backend import BLOCK_ENTRIES
from ..dropout import dare_mask, dare_seed  # noqa: F401  (part of DARE's API)
from .base import MergeContext, MergeMethod, Param, register
from .linear import WEIGHTS, weighted_sum

DENSITY = Param("density", 0.2, "fraction of each task's entries kept, per tensor", low=0.0, high=1.0,
                low_open=True)
COUNT = Param("count", "floor", "entries kept per task and tensor: floor = floor(density·n), which can be 0 "
                                "(peft); at_least_one = max(1, floor(density·n)) (mergekit 0.1.5)",
              choices=("floor", "at_least_one"))
SCALING = Param("scaling", 1.0, "factor on the merged delta", low=0.0)
CONVENTION = Param("convention", "peft", "peft: sign elected on unweighted deltas, mean over agreeing "
                                         "entries; mergekit: elected on weighted deltas, divided by the "
                                         "sum of agreeing weights", choices=("peft", "mergekit"))
MAJORITY = Param("majority", "total", "total: sign of the summed values; frequency: sign of the summed "
                                      "signs", choices=("total", "frequency"))


def kth_smallest_(values: torch.Tensor, k: int) -> float:
    """The `k`-th smallest entry (1-based) of a 1-D float32 or float64 tensor, exactly.

    Bisection over order-preserving integer keys of the entries' bit patterns (negative
    floats have their magnitude bits flipped), one count per step: 32 steps for float32,
    64 for float64, with block-sized boolean temporaries, instead of the three to four copies
    that ``kthvalue`` or ``topk`` make on the CPU. Overwrites the negative entries of `values`
    with their keys (non-negative entries are their own keys and stay as they are).
    """
    bits = values.view(torch.int32 if values.dtype == torch.float32 else torch.int64)
    shift = 8 * bits.element_size() - 1
    flip = (1 << shift) - 1
    blocks = [bits[start:start + BLOCK_ENTRIES] for start in range(0, bits.numel(), BLOCK_ENTRIES)]
    for block in blocks:
        block.bitwise_xor_((block >> shift) & flip)
    low, high = int(bits.min()), int(bits.max())
    while low < high:
        middle = (low + high) // 2
        if sum(int(torch.count_nonzero(block <= middle)) for block in blocks) >= k:
            high = middle
        else:
            low = middle + 1
    key = torch.tensor(low, dtype=bits.dtype)
    key ^= (key >> shift) & flip
    return key.view(values.dtype).item()


def kth_largest(magnitude: torch.Tensor, k: int) -> float:
    """The `k`-th largest entry (1-based) of a tensor of non-negative floats, which stays unchanged."""
    flat = magnitude.reshape(-1)
    return kth_smallest_(flat, flat.numel() - k + 1)


def top_k_boundary(magnitude: torch.Tensor, k: int) -> tuple[float, int]:
    """The top `k` (1 ≤ k ≤ n) of a tensor of non-negative floats by the ranking rule, as a pair.

    Returns ``(t, last)``: the top-k set is every entry ``> t`` plus the entries ``== t`` at flat
    index ``<= last`` (t is the k-th largest value; ``last`` the flat index of the last tie
    taken). Found with exact bisection and block-sized counts; `magnitude` stays unchanged.
    """
    flat = magnitude.reshape(-1)
    threshold = kth_largest(flat, k)
    blocks = [(start, flat[start:start + BLOCK_ENTRIES]) for start in range(0, flat.numel(), BLOCK_ENTRIES)]
    room = k - sum(int(torch.count_nonzero(block > threshold)) for _, block in blocks)
    for start, block in blocks:
        ties = block == threshold
        count = int(torch.count_nonzero(ties))
        if room <= count:
            return threshold, start + int(torch.nonzero(ties)[room - 1])
        room -= count
    raise AssertionError("the k-th largest value has fewer ties than counted")  # unreachable


def _top_block_mask(block: torch.Tensor, start: int, threshold: float, last: int) -> torch.Tensor:
    """Which entries of ``block`` (flat positions ``start, start+1, …``) are in a top-k set ``(t, last)``."""
    if start + block.numel() <= last + 1:
        return block >= threshold
    inside = block > threshold
    if start <= last:
        ties = block[: last - start + 1] == threshold
        inside[: last - start + 1] |= ties
    return inside


def keep_top_k_(values: torch.Tensor, magnitude: torch.Tensor, k: int, drop_top: int = 0) -> torch.Tensor:
    """Zero, in place, every entry of flat `values` outside ranks ``drop_top + 1 … k`` of `magnitude`.

    Ranks follow the module's rule (ties to the lower flat index); ``drop_top = 0`` keeps the
    top `k`. Works block by block: temporaries are block-sized booleans.
    """
    n = values.numel()
    if k <= drop_top:
        return values.zero_()
    keep = top_k_boundary(magnitude, k) if k < n else None
    drop = top_k_boundary(magnitude, drop_top) if drop_top > 0 else None
    for start in range(0, n, BLOCK_ENTRIES):
        part = values[start:start + BLOCK_ENTRIES]
        size = magnitude[start:start + BLOCK_ENTRIES]
        if keep is not None:
            part.masked_fill_(~_top_block_mask(size, start, *keep), 0)
        if drop is not None:
            part.masked_fill_(_top_block_mask(size, start, *drop), 0)
    return values


def kept_entries(n: int, density: float, count: str = "floor") -> int:
    """How many of `n` entries a top-`density` trim keeps: ``floor(density·n)``, or at least one
    (``count="at_least_one"``, mergekit 0.1.5) when ``n > 0``."""
    k = int(density * n)
    return max(1, k) if count == "at_least_one" and n > 0 else k


def keep_top_magnitude_(stack: torch.Tensor, density: float, count: str = "floor") -> torch.Tensor:
    """Zero, in place, all but exactly :func:`kept_entries` largest-magnitude entries of each ``stack[i]``.

    Among entries tying the k-th largest magnitude the lowest flat indices are kept (mergekit's
    stable descending sort does the same; peft's ``topk`` breaks such ties its own way).
    Extra memory: one task's magnitudes plus block-sized booleans.
    """
    flat = stack.view(stack.shape[0], -1)
    n = flat.shape[1]
    k = kept_entries(n, density, count)
    if k == 0:
        return stack.zero_()
    if k == n:
        return stack
    magnitude = torch.empty_like(flat[0])
    for task in range(flat.shape[0]):
        torch.abs(flat[task], out=magnitude)
        keep_top_k_(flat[task], magnitude, k)
    return stack


def drop_largest_and_smallest_(stack: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs' mask, in place: per task, drop the ``floor(gamma·n)`` largest-magnitude
    entries, keep exactly the next ``floor(density·n)``, zero the rest (ranks as in
    :func:`keep_top_magnitude_`: ties to the lower flat index)."""
    flat = stack.view(stack.shape[0], -1)
    n = flat.shape[1]
    top, kept = int(gamma * n), int(density * n)
    if kept == 0:
        return stack.zero_()
    magnitude = torch.empty_like(flat[0])
    for task in range(flat.shape[0]):
        torch.abs(flat[task], out=magnitude)
        keep_top_k_(flat[task], magnitude, min(n, top + kept), drop_top=top)
    return stack


def random_drop_(stack: torch.Tensor, density: float, seed: int, key: str, rescale: bool) -> torch.Tensor:
    """DARE, in place: keep each entry with probability `density`, divide the kept by it."""
    for task in range(stack.shape[0]):
        stack[task].mul_(dare_mask(stack.shape[1:], density, seed, key, task, stack.dtype).to(stack.device))
    return stack.div_(density) if rescale else stack


def entry_blocks(stack: torch.Tensor):
    """Column views ``[K, b]`` of the flattened ``stack[K, *shape]``, ``b`` ≤ :data:`BLOCK_ENTRIES`.

    Entrywise steps run block by block so that their boolean and float temporaries are the
    size of a block, not of the tensor.
    """
    flat = stack.view(stack.shape[0], -1)
    for start in range(0, flat.shape[1], BLOCK_ENTRIES):
        yield flat[:, start:start + BLOCK_ENTRIES]


def sign_factors(ctx: MergeContext, n_tasks: int) -> list[float]:
    """The sign each task's ballot is multiplied by: sign(w_t) for ``convention="mergekit"``
    (mergekit votes and compares with the signs of the weighted deltas), 1 for peft."""
    if ctx.params.get("convention") != "mergekit":
        return [1.0] * n_tasks
    weights = ctx.params.get("weights") or [1.0] * n_tasks
    return [float((w > 0) - (w < 0)) for w in weights]


def elected_positive(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """Where the elected sign is +1 (boolean ``[*shape]``); ties (a vote of 0) go to +1.

    ``majority="total"`` votes with the values (weighted for ``convention="mergekit"``),
    ``"frequency"`` counts signs, each task one vote: peft counts the signs of the deltas,
    mergekit those of the weighted deltas (``count`` consensus: sign(w_t)·sign(δ_t), never
    |w_t|).
    """
    votes = torch.zeros(stack.shape[1:], dtype=stack.dtype, device=stack.device)
    weights = ctx.params.get("weights") or [1.0] * stack.shape[0]
    weighted = ctx.params.get("convention") == "mergekit"
    signs = sign_factors(ctx, stack.shape[0])
    for task in range(stack.shape[0]):
        if ctx.params["majority"] == "total":
            votes.add_(stack[task], alpha=weights[task] if weighted else 1.0)
        else:
            votes.add_(stack[task].sign(), alpha=signs[task])
    return votes >= 0


def keep_agreeing_(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """TIES step 2, in place: zero the entries whose sign differs from the elected one (for
    mergekit the sign of the weighted entry, so a negative weight flips it and a zero weight
    drops the task)."""
    signs = sign_factors(ctx, stack.shape[0])
    for block in entry_blocks(stack):
        positive = elected_positive(block, ctx)
        for task in range(block.shape[0]):
            if signs[task] == 0:
                block[task].zero_()
                continue
            agrees_when_positive = block[task] > 0 if signs[task] > 0 else block[task] < 0
            agrees_when_negative = block[task] < 0 if signs[task] > 0 else block[task] > 0
            block[task].masked_fill_(~torch.where(positive, agrees_when_positive, agrees_when_negative), 0)
    return stack


def disjoint_mean(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """TIES step 3: weighted sum of the agreeing (non-zero) entries divided by their count
    (peft) or by the sum of their weights (mergekit); entries no task keeps are 0."""
    weights = ctx.params.get("weights") or [1.0] * stack.shape[0]
    by_weight = ctx.params["convention"] == "mergekit"
    merged = torch.empty(stack.shape[1:], dtype=stack.dtype, device=stack.device)
    start = 0
    for block in entry_blocks(stack):
        total = merged.view(-1)[start:start + block.shape[1]].zero_()
        start += block.shape[1]
        divisor = torch.zeros_like(total)
        for task in range(block.shape[0]):
            total.add_(block[task], alpha=weights[task])
            divisor.add_(block[task] != 0, alpha=weights[task] if by_weight else 1.0)
        if by_weight:
            divisor.masked_fill_(divisor == 0, 1.0)
        else:
            divisor.clamp_min_(1.0)
        total.div_(divisor)
    return merged


@register
class MagnitudePrune(MergeMethod):
    name = "magnitude_prune"
    summary = "keep each task's top-density entries by magnitude, then a weighted sum (peft's magnitude_prune)"
    params = (DENSITY, WEIGHTS, SCALING, COUNT)

    def transform(self, stack, key, ctx):
        return keep_top_magnitude_(stack, ctx.params["density"], ctx.params["count"])

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx).mul_(ctx.params["scaling"])


@register
class Ties(MergeMethod):
    name = "ties"
    summary = "TIES-Merging (Yadav et al. 2023): trim to the top density, elect signs, disjoint mean"
    params = (DENSITY, WEIGHTS, SCALING, CONVENTION, MAJORITY, COUNT)
    presets = {"peft": {}, "mergekit": {"convention": "mergekit", "count": "at_least_one"}}

    def transform(self, stack, key, ctx):
        return keep_agreeing_(keep_top_magnitude_(stack, ctx.params["density"], ctx.params["count"]), ctx)

    def combine(self, stack, key, ctx):
        return disjoint_mean(stack, ctx).mul_(ctx.params["scaling"])


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
        return random_drop_(stack, p["density"], p["seed"], key, p["rescale"])

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx).mul_(ctx.params["scaling"])


@register
class DareTies(MergeMethod):
    name = "dare_ties"
    summary = "DARE drop and rescale, then TIES sign election and disjoint mean"
    params = DARE_PARAMS + (CONVENTION, MAJORITY)

    def transform(self, stack, key, ctx):
        p = ctx.params
        return keep_agreeing_(random_drop_(stack, p["density"], p["seed"], key, p["rescale"]), ctx)

    def combine(self, stack, key, ctx):
        return disjoint_mean(stack, ctx).mul_(ctx.params["scaling"])


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
        return drop_largest_and_smallest_(stack, ctx.params["density"], ctx.params["gamma"])

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx).mul_(ctx.params["scaling"])
