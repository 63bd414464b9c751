"""PCB-Merging: Parameter Competition Balancing (Du et al. 2024, NeurIPS).

Every entry of every task vector δ_i gets a balancing score β_i = β_intra,i ⊙ β_inter,i:
how large the entry is within its own task (intra) times how well it agrees with all tasks
(inter). Per task, the entries with the lowest scores are dropped (mask m_i), and the merge
is the score-weighted mean of what is kept::

    δ_m = Σ_i w_i ⊙ λ_i δ_i / Σ_i w_i,        θ = θ_pre + scaling · δ_m

with w_i = m_i ⊙ β_i (paper) or the min-max rescaled scores (official), λ_i the optional
``weights`` (default 1). The per-task step (:meth:`PCBMerging.transform`, what
interference metrics measure) is m_i ⊙ δ_i, after clamping where ``clamp`` > 0.

Units. Everything is per tensor (key) and per task: with n the tensor's number of entries
and N = K the number of tasks, ``Norm`` is min-max normalisation over the n entries of one
task's tensor (one pair of tasks' for the inter term), ``Softmax`` runs over those n
entries, and the kept fraction r (``density``) counts entries of that tensor. A constant
input normalises to 0 (not 0/0). Two readings, as presets; each row is a parameter:

=============  ===========================================  ===========================================
parameter      ``preset="paper"`` (default)                 ``preset="official"`` (authors' code)
=============  ===========================================  ===========================================
clamp          0: no clamping                               1e-4: |δ_i| clamped to [s[⌊c·n⌋],
                                                            s[⌊(1−c)·n − 1⌋]] (s = |δ_i| sorted
                                                            ascending), signs kept
intra_norm     ``square_then_norm``: Norm(δ_i ⊙ δ_i)        ``norm_then_square``: Norm(|δ_i|)²
intra_act      ``softmax``: Softmax(N · Norm(…))            ``exp``: exp(N · Norm(…)), no denominator
inter          ``softmax``: Σ_j Softmax(Norm(δ_i ⊙ δ_j))    ``tanh``: tanh(δ_i ⊙ Σ_j δ_j), unnormalised
rescale        ``mask``: m_i = β_i ≥ the ⌊r·n⌋-th largest   ``minmax``: t_i = s[⌊(1−r)·n⌋] (β_i sorted
               β_i (ties kept; k = ⌊r·n⌋ as in              ascending); w_i = (max(β_i, t_i) − t_i) /
               :mod:`.sparse`); w_i = m_i ⊙ β_i; entries    (max β_i − t_i), so m_i = β_i > t_i; the
               no task keeps merge to 0                     sum of w is floored at 1e-12
density, r     0.1                                          0.1 (``pcb_ratio`` default)
scaling, λ     1.0                                          1.0
=============  ===========================================  ===========================================

The official column is ``PCB_merge`` in ``pcb-merging.py`` of github.com/duguodong7/pcb-merging
(the file its README names as the method's details): ``clamp(torch.abs(...), min_ratio=0.0001,
max_ratio=0.0001)`` and ``sign · clamped`` give the clamp row and the merged values;
``normalize(all_checks_abs, 1)**2`` then ``torch.exp(n * ...)`` the intra rows (``normalize``
is min-max along dim 1, i.e. over one task's entries); ``act(all_checks * torch.sum(all_checks,
dim=0))`` with ``act = tanh`` the inter row, on the *unclamped* δ; ``normalize(clamp(task_pcb,
1 - pcb_ratio, 0), dim=1)`` the rescale row; ``sum(tvs * scale) / clamp(sum(scale), min=1e-12)``
the merge. The inter term sees the unclamped δ here too, whatever the preset. Variants in
the same repository, as parameter values: ``clamp=0.01`` is ``task_para_att_merge`` in
``nlp_source_code/utils/merge_utils.py`` (the NLP experiments); ``clamp=0.01,
inter="tanh_pairwise"`` (Σ_j tanh(n̂_i ⊙ n̂_j), n̂ = sign(δ)·Norm(clamped |δ|)) is ``PCB`` in
``vision_source_code/pcb_ES.py``; the per-task λ_i = 1.2 of the vision scripts are
``weights`` (they multiply δ_i inside the weighted mean, as there).

Not reproduced: the authors flatten the whole model into one vector, so their clamp
quantiles, min-max ranges, softmax sums and the top-r threshold run over all of a model's
parameters at once; here over each tensor (which also makes ``clamp=1e-4`` clamp the
largest |δ| of every tensor under 10,000 entries to the second largest). Their
``normalize`` gives NaN for a constant input, here 0. ``vision_source_code/pcb.py``'s inter
term tanh(δ_i ⊙ Σ_j n̂_j) is not offered.

Numerics: the softmaxes are computed as n·Softmax, i.e. exp(v − max v) / mean(exp(v − max v))
with max v = N (intra) or 1 (inter), and ``exp`` as exp(N·(x − 1)); this multiplies every
task's β by the same constant, which changes neither the masks nor the merge, and keeps the
values finite for any N and n.

Memory: one key's merge holds the ``[K, n]`` stack (which becomes the masked stack, K
tensors), one n-entry buffer in the computation dtype (each task's scores while its
threshold is found, then the merged delta) and block temporaries of a few times
:data:`BLOCK_ENTRIES` entries (about 1 MB in float32) whatever the tensor's size: a peak of
K + 1 tensors plus those blocks (measured K + 1.3 on 2 MB tensors, K = 3, both presets,
where task arithmetic measures K + 1.0). Thresholds and clamp bounds are exact order
statistics found by bisection over bit patterns (:func:`kth_smallest_`), not
``kthvalue``/``topk``, which copy the tensor and an int64 index (K + 4 at that moment).
Time: O(K² · n) for ``inter="softmax"`` (each pair of tasks is normalised on its own: K(K+1)/2
pair passes for the statistics, K² pair terms per entry for the thresholds and again for
the merge), O(K · n) per pass otherwise, plus 32 (float32) or 64 (float64) counting passes
per threshold; about 0.6 s for K = 8 and a 1024 × 1024 tensor on two CPU cores.

:meth:`PCBMerging.transform` gives the masked (and clamped) task vectors ``m_i ⊙ δ_i`` that
interference metrics measure; the merge itself (:meth:`PCBMerging.merge_key`) also needs the
scores β, which depend on other tasks' dropped values and on whole-tensor ranges and sums and
so cannot be recomputed from the masked stack: it does both steps at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..backend import BLOCK_ENTRIES
from ..errors import ParameterError
from .base import MergeMethod, Param, register
from .linear import WEIGHTS
from .sparse import DENSITY, SCALING, kth_smallest_

PCB_PARAMS = (
    replace(DENSITY, default=0.1, doc="r: fraction of each task's entries kept (those with the highest "
                                      "scores β), counted per tensor"),
    replace(SCALING, doc="λ on the merged delta: θ = θ_pre + scaling · δ_m"),
    replace(WEIGHTS, doc="per-task factors λ_i on δ_i inside the weighted mean (the authors' vision "
                         "scripts use 1.2 each); default all 1"),
    Param("clamp", 0.0, "fraction c of each task's entries, per tensor, at each end of the sorted "
                        "|δ_i| to which the magnitudes are clamped (signs kept); 0: off; the inter "
                        "term always sees unclamped values", low=0.0, high=0.5),
    Param("intra_norm", "square_then_norm", "intra input: square_then_norm = Norm(δ_i ⊙ δ_i) (paper); "
                                            "norm_then_square = Norm(|δ_i|)² (official); Norm is min-max "
                                            "over the task's entries of the tensor",
          choices=("square_then_norm", "norm_then_square")),
    Param("intra_act", "softmax", "intra activation: softmax = Softmax over the tensor's entries of "
                                  "N · input (paper); exp = exp(N · input) (official)", choices=("softmax", "exp")),
    Param("inter", "softmax", "inter term: softmax = Σ_j Softmax(Norm(δ_i ⊙ δ_j)) (paper); tanh = "
                              "tanh(δ_i ⊙ Σ_j δ_j) (official); tanh_pairwise = Σ_j tanh(n_i ⊙ n_j), "
                              "n = sign(δ)·Norm(|δ|) (authors' vision pcb_ES.py)",
          choices=("softmax", "tanh", "tanh_pairwise")),
    Param("rescale", "mask", "drop and rescale: mask = keep β_i ≥ its floor(r·n)-th largest, weight m ⊙ β "
                             "(paper); minmax = weight (max(β, t) − t)/(max β − t), t the "
                             "floor((1−r)·n)-th smallest β_i (official)", choices=("mask", "minmax")),
)

OFFICIAL = {"clamp": 1e-4, "intra_norm": "norm_then_square", "intra_act": "exp", "inter": "tanh",
            "rescale": "minmax"}


def normalize_(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Min-max normalisation, in place, given the range: (x − low) / (high − low); 0 if high == low."""
    x.sub_(low)
    return x.div_(high - low) if high > low else x.zero_()


@dataclass
class Scalars:
    """Per-task and per-pair numbers that make every score an entrywise function of the K values.

    ``low``/``high``: clamp bounds on |δ_i| (None without clamping); ``abs_min``/``abs_max``:
    range of the (clamped) |δ_i|; ``intra_mean``: mean over entries of exp(N·(Norm − 1))
    (softmax denominator / n); ``pair_min``/``pair_max``/``pair_mean``: range of δ_i ⊙ δ_j and
    mean of exp(Norm − 1); ``threshold``/``top``: t_i and max β_i.
    """

    low: list[float] | None
    high: list[float] | None
    abs_min: list[float]
    abs_max: list[float]
    intra_mean: list[float] | None = None
    pair_min: list[list[float]] | None = None
    pair_max: list[list[float]] | None = None
    pair_mean: list[list[float]] | None = None
    threshold: list[float] | None = None
    top: list[float] | None = None


def _clamped_abs(values: torch.Tensor, task: int, s: Scalars) -> torch.Tensor:
    magnitude = values.abs()
    return magnitude.clamp_(s.low[task], s.high[task]) if s.low is not None else magnitude


def _intra_exp_(magnitude: torch.Tensor, task: int, s: Scalars, p: dict, n_tasks: int) -> torch.Tensor:
    """exp(N · (x − 1)), x = the intra input, on a block of one task's clamped magnitudes (overwritten)."""
    if p["intra_norm"] == "square_then_norm":
        normalize_(magnitude.square_(), s.abs_min[task] ** 2, s.abs_max[task] ** 2)
    else:
        normalize_(magnitude, s.abs_min[task], s.abs_max[task]).square_()
    return magnitude.sub_(1).mul_(n_tasks).exp_()


def _intra_(magnitude: torch.Tensor, task: int, s: Scalars, p: dict, n_tasks: int) -> torch.Tensor:
    """β_intra of one task on a block of its clamped magnitudes (overwritten), up to a constant."""
    magnitude = _intra_exp_(magnitude, task, s, p, n_tasks)
    return magnitude.div_(s.intra_mean[task]) if p["intra_act"] == "softmax" else magnitude


def _pair_term(block: torch.Tensor, i: int, j: int, s: Scalars) -> torch.Tensor:
    """n · Softmax(Norm(δ_i ⊙ δ_j)) on a block ``[K, b]`` of raw values."""
    product = normalize_(block[i] * block[j], s.pair_min[i][j], s.pair_max[i][j])
    return product.sub_(1).exp_().div_(s.pair_mean[i][j])


def _signed_normalized(block: torch.Tensor, s: Scalars) -> torch.Tensor:
    """n̂ = sign(δ) · Norm(clamped |δ|) of every task on a block (``tanh_pairwise``)."""
    out = torch.empty_like(block)
    for task in range(block.shape[0]):
        out[task] = normalize_(_clamped_abs(block[task], task, s), s.abs_min[task], s.abs_max[task])
        out[task].mul_(block[task].sign())
    return out


def _shared(block: torch.Tensor, s: Scalars, p: dict) -> torch.Tensor | None:
    """What the inter terms of all tasks share on a block: Σ_j δ_j (tanh) or n̂ (tanh_pairwise)."""
    if p["inter"] == "tanh":
        return block.sum(dim=0)
    if p["inter"] == "tanh_pairwise":
        return _signed_normalized(block, s)
    return None


def _scores(block: torch.Tensor, task: int, shared, s: Scalars, p: dict) -> torch.Tensor:
    """β_i on a block ``[K, b]`` of raw values (computation dtype), up to a task-independent factor."""
    n_tasks = block.shape[0]
    beta = _intra_(_clamped_abs(block[task], task, s), task, s, p, n_tasks)
    if p["inter"] == "tanh":
        return beta.mul_(torch.tanh(block[task] * shared))
    if p["inter"] == "tanh_pairwise":
        return beta.mul_(torch.tanh(shared[task] * shared).sum(dim=0))
    inter = torch.zeros_like(beta)
    for other in range(n_tasks):
        inter.add_(_pair_term(block, task, other, s))
    return beta.mul_(inter)


def _blocks(n: int, n_tasks: int):
    width = max(1024, BLOCK_ENTRIES // n_tasks)
    return [slice(start, min(start + width, n)) for start in range(0, n, width)]


def _range(x: torch.Tensor) -> tuple[float, float]:
    low, high = torch.aminmax(x)
    return low.item(), high.item()


def pcb_scalars(flat: torch.Tensor, buffer: torch.Tensor, p: dict) -> Scalars:
    """Passes over the raw ``flat[K, n]`` (unchanged) for the clamp bounds, ranges and softmax
    denominators; `buffer` (n entries, computation dtype) is the only scratch."""
    n_tasks, n = flat.shape
    c = p["clamp"]
    low = high = None
    if c > 0:
        low, high = [], []
        for task in range(n_tasks):
            low.append(kth_smallest_(buffer.copy_(flat[task]).abs_(), int(n * c) + 1))
            high.append(kth_smallest_(buffer.copy_(flat[task]).abs_(), int(n * (1 - c) - 1) + 1))
    s = Scalars(low, high, [], [])
    for task in range(n_tasks):
        a_min, a_max = _range(buffer.copy_(flat[task]).abs_())
        if c > 0:  # the range of the clamped magnitudes: clamping is monotone
            a_min, a_max = (min(max(v, low[task]), high[task]) for v in (a_min, a_max))
        s.abs_min.append(a_min)
        s.abs_max.append(a_max)
    if p["intra_act"] == "softmax":
        s.intra_mean = []
        for task in range(n_tasks):
            buffer.copy_(flat[task]).abs_()
            if c > 0:
                buffer.clamp_(low[task], high[task])
            s.intra_mean.append(_intra_exp_(buffer, task, s, p, n_tasks).mean().item())
    if p["inter"] == "softmax":
        s.pair_min, s.pair_max, s.pair_mean = ([[0.0] * n_tasks for _ in range(n_tasks)] for _ in range(3))
        for i in range(n_tasks):
            for j in range(i, n_tasks):
                buffer.copy_(flat[i]).mul_(flat[j])
                lo, hi = _range(buffer)
                mean = normalize_(buffer, lo, hi).sub_(1).exp_().mean().item()
                for a, b in ((i, j), (j, i)):
                    s.pair_min[a][b], s.pair_max[a][b], s.pair_mean[a][b] = lo, hi, mean
    return s


def pcb_thresholds(flat: torch.Tensor, buffer: torch.Tensor, s: Scalars, p: dict, density: float) -> None:
    """Per task, β_i into `buffer` block by block, then its threshold t_i (and max, for minmax)."""
    n_tasks, n = flat.shape
    s.threshold, s.top = [], []
    if p["rescale"] == "mask":
        k = int(density * n)
        if k == 0 or k == n:  # keep nothing / everything: no scores needed
            s.threshold = [float("inf") if k == 0 else float("-inf")] * n_tasks
            return
        rank = n - k + 1
    else:
        rank = int(n * (1 - density)) + 1
    blocks = _blocks(n, n_tasks)
    for task in range(n_tasks):
        for index in blocks:
            block = flat[:, index].to(buffer.dtype)
            buffer[index] = _scores(block, task, _shared(block, s, p), s, p)
        s.top.append(buffer.max().item())
        s.threshold.append(kth_smallest_(buffer, rank))


def pcb_merge_(stack: torch.Tensor, p: dict, weights=None) -> torch.Tensor:
    """PCB on ``stack[K, *shape]``: the stack becomes m_i ⊙ (clamped) δ_i in place; returns the
    merged delta δ_m ``[*shape]`` (before ``scaling``), in float64 for float64 input, else float32."""
    n_tasks = stack.shape[0]
    flat = stack.view(n_tasks, -1)  # a contiguous stack: PCBMerging.transform makes sure of it
    n = flat.shape[1]
    dtype = torch.float64 if stack.dtype == torch.float64 else torch.float32
    buffer = torch.empty(n, dtype=dtype, device=stack.device)
    if n == 0:
        return buffer.view(stack.shape[1:])
    s = pcb_scalars(flat, buffer, p)
    pcb_thresholds(flat, buffer, s, p, p["density"])
    weights = weights or [1.0] * n_tasks
    mask_rescale = p["rescale"] == "mask"
    for index in _blocks(n, n_tasks):
        block = flat[:, index].to(dtype)
        shared = _shared(block, s, p)
        w = torch.empty_like(block)
        for task in range(n_tasks):
            w[task] = _scores(block, task, shared, s, p)
        total = torch.zeros_like(w[0])
        norm = torch.zeros_like(w[0])
        for task in range(n_tasks):
            t = s.threshold[task]
            if mask_rescale:
                keep = w[task] >= t
                w[task].mul_(keep)
            elif s.top[task] > t:
                w[task].clamp_(min=t).sub_(t).div_(s.top[task] - t)
                keep = w[task] > 0
            else:  # all scores equal the threshold: nothing is kept (the authors' code gives 0/0)
                w[task].zero_()
                keep = torch.zeros_like(w[task], dtype=torch.bool)
            norm.add_(w[task])
            if s.low is None:
                total.addcmul_(w[task], block[task], value=float(weights[task]))
                flat[task, index].masked_fill_(keep.logical_not_(), 0)
            else:
                values = _clamped_abs(block[task], task, s).mul_(block[task].sign())
                total.addcmul_(w[task], values, value=float(weights[task]))
                flat[task, index] = values.masked_fill_(keep.logical_not_(), 0)
        if mask_rescale:
            buffer[index] = torch.where(norm != 0, total / torch.where(norm != 0, norm, 1), 0)
        else:
            buffer[index] = total.div_(norm.clamp_(min=1e-12))
    return buffer.view(stack.shape[1:])


@register
class PCBMerging(MergeMethod):
    name = "pcb"
    summary = ("PCB-Merging (Du et al. 2024): intra × inter balancing scores β, keep each task's top-density "
               "β, β-weighted mean")
    params = PCB_PARAMS
    presets = {"paper": {}, "official": OFFICIAL}

    def transform(self, stack, key, ctx):
        stack = stack.contiguous()
        pcb_merge_(stack, ctx.params, ctx.params.get("weights"))
        return stack

    def merge_key(self, stack, key, ctx):
        return pcb_merge_(stack.contiguous(), ctx.params, ctx.params.get("weights")).mul_(ctx.params["scaling"])

    def combine(self, stack, key, ctx):
        raise ParameterError("pcb: the combine step needs the balancing scores β of the unmasked task "
                             "vectors, not only the transformed stack; merge_key does both steps")
