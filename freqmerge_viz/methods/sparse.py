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

import math

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


SELECT_DIGITS = {4: (12, 12, 8), 8: (16, 16, 16, 16)}
"""Bits of the integer keys that each histogram pass of :func:`_select_key` resolves (the most
significant first), for 4-byte (float32) and 8-byte (float64) entries."""

SELECT_FINISH = 2**16
"""Candidates that :func:`_select_key` ranks directly instead of taking another histogram pass."""


def _blocks_of(flat: torch.Tensor) -> list[torch.Tensor]:
    return [flat[start:start + BLOCK_ENTRIES] for start in range(0, flat.numel(), BLOCK_ENTRIES)]


def _select_key(blocks: list[torch.Tensor], k: int, width: int) -> tuple[int, int, int]:
    """Radix selection of the `k`-th smallest (1-based) of signed integer keys split in `blocks`.

    Returns ``(key, below, equal)``: the k-th smallest key, how many keys are smaller and how
    many equal it. Each pass histograms (``bincount``, block by block) the next digits of the
    keys that share the digits resolved so far; once at most :data:`SELECT_FINISH` keys are left,
    they are gathered and ranked (``kthvalue``). About two to three passes over the data, all
    temporaries block-sized, instead of one count per bit.
    """
    bits = 8 * width
    shift = bits
    prefix = None  # the resolved most significant digits: key >> shift for every candidate
    below = 0
    remaining = k
    for digits in SELECT_DIGITS[width]:
        shift -= digits
        histogram = torch.zeros(2**digits, dtype=torch.int64, device=blocks[0].device)
        for block in blocks:
            if prefix is None:  # top digits of signed keys: offset to be non-negative
                values = (block >> shift) + 2 ** (digits - 1)
            else:
                values = (block[(block >> (shift + digits)) == prefix] >> shift) & (2**digits - 1)
            histogram += torch.bincount(values.reshape(-1), minlength=2**digits)
        cumulative = histogram.cumsum(0)
        digit = int(torch.searchsorted(cumulative, torch.tensor([remaining], device=cumulative.device)))
        before = int(cumulative[digit - 1]) if digit > 0 else 0
        below += before
        remaining -= before
        count = int(histogram[digit])
        prefix = digit - 2 ** (digits - 1) if prefix is None else (prefix << digits) | digit
        if shift > 0 and count <= SELECT_FINISH:
            break
    else:
        return prefix, below, count  # every digit resolved: the candidates all equal the key
    candidates = torch.cat([block[(block >> shift) == prefix] for block in blocks])
    key = int(candidates.kthvalue(remaining).values)
    return key, below + int(torch.count_nonzero(candidates < key)), int(torch.count_nonzero(candidates == key))


def _float_of(key: int, dtype: torch.dtype) -> float:
    """The float whose order-preserving integer key is `key` (see :func:`kth_smallest_`)."""
    bits = torch.tensor(key, dtype=torch.int32 if dtype == torch.float32 else torch.int64)
    shift = 8 * bits.element_size() - 1
    bits ^= (bits >> shift) & ((1 << shift) - 1)
    return bits.view(dtype).item()


def kth_smallest_(values: torch.Tensor, k: int) -> float:
    """The `k`-th smallest entry (1-based) of a 1-D float32 or float64 tensor, exactly.

    Radix selection over order-preserving integer keys of the entries' bit patterns (negative
    floats have their magnitude bits flipped; :func:`_select_key`): two or three histogram
    passes with block-sized temporaries, instead of the three to four copies that ``kthvalue``
    or ``topk`` make on the CPU. Overwrites the negative entries of `values` with their keys
    (non-negative entries are their own keys and stay as they are).
    """
    bits = values.view(torch.int32 if values.dtype == torch.float32 else torch.int64)
    shift = 8 * bits.element_size() - 1
    flip = (1 << shift) - 1
    blocks = _blocks_of(bits)
    for block in blocks:
        block.bitwise_xor_((block >> shift) & flip)
    return _float_of(_select_key(blocks, k, bits.element_size())[0], values.dtype)


def _kth_largest_magnitude(flat: torch.Tensor, k: int) -> tuple[float, int, int]:
    """``(t, greater, equal)``: the `k`-th largest of the non-negative 1-D `flat` (unchanged), how
    many entries exceed it and how many equal it. Non-negative floats are their own keys."""
    bits = flat.view(torch.int32 if flat.dtype == torch.float32 else torch.int64)
    key, below, equal = _select_key(_blocks_of(bits), flat.numel() - k + 1, bits.element_size())
    return _float_of(key, flat.dtype), flat.numel() - below - equal, equal


def kth_largest(magnitude: torch.Tensor, k: int) -> float:
    """The `k`-th largest entry (1-based) of a tensor of non-negative floats, which stays unchanged."""
    return _kth_largest_magnitude(magnitude.reshape(-1), k)[0]


def top_k_boundary(magnitude: torch.Tensor, k: int) -> tuple[float, int]:
    """The top `k` (1 ≤ k ≤ n) of a tensor of non-negative floats by the ranking rule, as a pair.

    Returns ``(t, last)``: the top-k set is every entry ``> t`` plus the entries ``== t`` at flat
    index ``<= last`` (t is the k-th largest value; ``last`` the flat index of the last tie
    taken, ``n − 1`` when every tie is taken). Found by exact radix selection, which also counts
    the entries above and at t; only ties that overflow the k are looked for, block by block.
    `magnitude` stays unchanged.
    """
    flat = magnitude.reshape(-1)
    threshold, greater, equal = _kth_largest_magnitude(flat, k)
    room = k - greater
    if room >= equal:
        return threshold, flat.numel() - 1
    for start, block in ((start, flat[start:start + BLOCK_ENTRIES]) for start in range(0, flat.numel(),
                                                                                        BLOCK_ENTRIES)):
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
    stable descending sort does the same; peft's ``topk`` breaks such ties its own way). With
    the boundary ``(t, last)`` of :func:`top_k_boundary`, the trim is two in-place
    ``hardshrink``s: ``|x| >= t`` up to flat index ``last``, ``|x| > t`` after it (a task with a
    NaN takes the blockwise masks of :func:`keep_top_k_`, which drop NaN entries). Extra memory:
    one task's magnitudes plus block-sized temporaries.
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
        if math.isnan(float(magnitude.sum())):  # NaN entries: the blockwise masks drop them
            keep_top_k_(flat[task], magnitude, k)
            continue
        threshold, last = top_k_boundary(magnitude, k)
        # |x| >= t (|x| > the float below t) up to flat index `last`, |x| > t after it: hardshrink, no mask
        head, tail = flat[task, :last + 1], flat[task, last + 1:]
        torch.hardshrink(head, _float_below(threshold, flat.dtype), out=head)
        torch.hardshrink(tail, threshold, out=tail)
    return stack


def _float_below(value: float, dtype: torch.dtype) -> float:
    """The largest float of `dtype` smaller than `value`."""
    return torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)).item()


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


def _votes(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """The sign election's ballot total per entry of ``stack[K, ...]`` (see :func:`elected_positive`)."""
    votes = torch.zeros(stack.shape[1:], dtype=stack.dtype, device=stack.device)
    weights = ctx.params.get("weights") or [1.0] * stack.shape[0]
    weighted = ctx.params.get("convention") == "mergekit"
    signs = sign_factors(ctx, stack.shape[0])
    for task in range(stack.shape[0]):
        if ctx.params["majority"] == "total":
            votes.add_(stack[task], alpha=weights[task] if weighted else 1.0)
        else:
            votes.add_(stack[task].sign(), alpha=signs[task])
    return votes


def elected_positive(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """Where the elected sign is +1 (boolean ``[*shape]``); ties (a vote of 0) go to +1.

    ``majority="total"`` votes with the values (weighted for ``convention="mergekit"``),
    ``"frequency"`` counts signs, each task one vote: peft counts the signs of the deltas,
    mergekit those of the weighted deltas (``count`` consensus: sign(w_t)·sign(δ_t), never
    |w_t|).
    """
    return _votes(stack, ctx) >= 0


def _has_nan(tensor: torch.Tensor) -> bool:
    """Whether `tensor` holds a NaN (or both infinities), from one float sum."""
    return math.isnan(float(tensor.sum()))


def _keep_agreeing_block_(block: torch.Tensor, ctx: MergeContext, signs: list[float]) -> None:
    """:func:`keep_agreeing_` on one ``[K, b]`` block with boolean masks (any values, NaN included)."""
    positive = elected_positive(block, ctx)
    for task in range(block.shape[0]):
        if signs[task] == 0:
            block[task].zero_()
            continue
        agrees_when_positive = block[task] > 0 if signs[task] > 0 else block[task] < 0
        agrees_when_negative = block[task] < 0 if signs[task] > 0 else block[task] > 0
        block[task].masked_fill_(~torch.where(positive, agrees_when_positive, agrees_when_negative), 0)


def keep_agreeing_(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """TIES step 2, in place: zero the entries whose sign differs from the elected one (for
    mergekit the sign of the weighted entry, so a negative weight flips it and a zero weight
    drops the task).

    Without NaN in a block (and in its votes), with e = ±1 the elected sign and c = e·sign(w_t)
    (1 for peft), an entry agrees iff ``c·x > 0`` and is kept as ``max(c·x, 0)·c``: three float
    operations per task, exact (c = ±1), instead of boolean masks; blocks with a NaN take the
    masks (:func:`_keep_agreeing_block_`). Kept and dropped entries are the same either way (a
    dropped entry may come out as −0.0 instead of 0.0).
    """
    signs = sign_factors(ctx, stack.shape[0])
    for block in entry_blocks(stack):
        votes = None if _has_nan(block) else _votes(block, ctx)
        if votes is None or _has_nan(votes):
            _keep_agreeing_block_(block, ctx, signs)
            continue
        elected = votes.sign_().add_(0.5).sign_()  # +1 where votes >= 0 (also -0.0), else -1
        factor = torch.empty_like(elected)
        for task in range(block.shape[0]):
            if signs[task] == 0:
                block[task].zero_()
                continue
            torch.mul(elected, signs[task], out=factor)
            block[task].mul_(factor).clamp_min_(0).mul_(factor)
    return stack


def disjoint_mean(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """TIES step 3: weighted sum of the agreeing (non-zero) entries divided by their count
    (peft) or by the sum of their weights (mergekit); entries no task keeps are 0. The count
    adds ``sign(|x|)`` (1 for a non-zero entry) per task, in float; a block with a NaN counts
    with ``x != 0``."""
    weights = ctx.params.get("weights") or [1.0] * stack.shape[0]
    by_weight = ctx.params["convention"] == "mergekit"
    merged = torch.empty(stack.shape[1:], dtype=stack.dtype, device=stack.device)
    start = 0
    scratch = None
    for block in entry_blocks(stack):
        total = merged.view(-1)[start:start + block.shape[1]].zero_()
        start += block.shape[1]
        divisor = torch.zeros_like(total)
        exact = _has_nan(block)
        if not exact and (scratch is None or scratch.shape != total.shape):
            scratch = torch.empty_like(total)
        for task in range(block.shape[0]):
            total.add_(block[task], alpha=weights[task])
            nonzero = block[task] != 0 if exact else torch.abs(block[task], out=scratch).sign_()
            divisor.add_(nonzero, alpha=weights[task] if by_weight else 1.0)
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
