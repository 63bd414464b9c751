"""Consensus merging with TALL masks (Wang et al., ICML 2024, "Localizing Task Information for
Improved Model Merging and Compression").

A multi-task vector τ_MTL is built first, by task arithmetic (Σ_t τ_t, ``base="task_arithmetic"``)
or by TIES (``base="ties"``). Task t's *TALL mask* marks the entries where the multi-task
vector is closer to the fine-tuned model than the pretrained one is, by a margin λ:

    m_t = |τ_t| > λ · |τ_MTL − τ_t|      (|θ_pre − θ_t| against λ · |θ_MTL − θ_t|, θ_MTL = θ_pre + τ_MTL)

An entry that no task's mask holds is "catastrophic", one held by a single task "selfish";
consensus merging keeps only the entries at least ``min_tasks`` masks hold (the authors use 2):

    δ = α · τ_MTL ⊙ 1[Σ_t m_t ≥ min_tasks]

applied to every key alike (the masks are entrywise, so biases and norms go through the same
rule). λ → 0 keeps every entry some task changes, so with ``min_tasks`` ≤ K (or 0) consensus is
the base merge (tested); a large λ keeps nothing.

What is underneath is a parameter: ``base="task_arithmetic"`` (default; Consensus TA, the
paper's main result) or ``base="ties"`` (Consensus TIES): each task keeps its top ``density``
entries by magnitude per tensor (exactly ⌊d·n⌋, ties to the lower index, as :mod:`.sparse`), a
sign is elected per entry from the sum of the trimmed values (0 elects +), and the agreeing
entries are summed (``ties_aggregate="sum"``, the authors' ``dis-sum``) or averaged
(``"mean"``, the TIES paper's disjoint mean). The TIES merge is also the τ_MTL of the masks.

Defaults and differences from the authors' code (``nik-dim/tall_masks``): λ = 0.6, one value for
all tasks (the authors choose λ per task from 0.2 … 0.6 on validation data; 0.6 is also
fusion-bench's ``tall_mask_lambda``); α = 0.3, as task arithmetic here (the authors choose it on
validation data); their TIES trims over the whole model flattened (top 20%) and breaks a zero
vote by the majority sign of the whole model, here per tensor and +. The masks use ``>`` as
their code does. fusion-bench 0.2.33 has TALL masks (``TallMaskTaskArithmeticAlgorithm``, one
model per task: θ_pre + m_t ⊙ Σ τ) but no consensus merge; the tests compare the masks.

Memory: the ``[K, *shape]`` stack (the masks need every task's raw entry) plus the merged delta;
trimming thresholds are found one task at a time and everything else runs on blocks of
:data:`~freqmerge_viz.backend.BLOCK_ENTRIES` entries: K + 1 tensors.
"""

from __future__ import annotations

import torch

from ..backend import BLOCK_ENTRIES
from .base import MergeMethod, Param, register
from .sparse import _top_block_mask, kept_entries, top_k_boundary

CONSENSUS_PARAMS = (
    Param("base", "task_arithmetic", "the multi-task vector τ_MTL: task_arithmetic = Σ τ_t; ties = TIES (trim to "
                                     "density, elect signs, ties_aggregate)", choices=("task_arithmetic", "ties")),
    Param("tall_lambda", 0.6, "λ of the TALL masks m_t = |τ_t| > λ·|τ_MTL − τ_t| (no unit; one value for every "
                              "task)", low=0.0),
    Param("min_tasks", 2, "keep the entries at least this many tasks' masks hold (2 drops selfish and catastrophic "
                          "weights; 0 keeps all)", kind=int, low=0),
    Param("scaling", 0.3, "α on the masked multi-task vector (no unit)", low=0.0),
    Param("density", 0.2, "base=ties: fraction of each task's entries kept per tensor before the sign election",
          low=0.0, high=1.0, low_open=True),
    Param("ties_aggregate", "sum", "base=ties: sum (the authors' dis-sum) or mean (the TIES paper's disjoint mean) "
                                   "of the agreeing entries", choices=("sum", "mean")),
)


def _trim_bounds(flat: torch.Tensor, density: float) -> list:
    """Per task, the top-⌊d·n⌋ set as :func:`~.sparse.top_k_boundary`'s ``(t, last)``, ``None``
    when every entry is kept, ``()`` when none is."""
    n = flat.shape[1]
    k = kept_entries(n, density)
    if k >= n:
        return [None] * flat.shape[0]
    if k == 0:
        return [()] * flat.shape[0]
    return [top_k_boundary(flat[t].abs(), k) for t in range(flat.shape[0])]


def _base_step(block: torch.Tensor, start: int, bounds: list | None) -> torch.Tensor:
    """The base merge's per-task step on one ``[K, b]`` block: the block itself (task arithmetic),
    or a trimmed, sign-elected copy (TIES; disagreeing entries zeroed)."""
    if bounds is None:
        return block
    trimmed = block.clone()
    for t, bound in enumerate(bounds):
        if bound == ():
            trimmed[t].zero_()
        elif bound is not None:
            trimmed[t].masked_fill_(~_top_block_mask(block[t].abs(), start, *bound), 0)
    positive = trimmed.sum(dim=0) >= 0
    return trimmed.mul_(torch.where(positive, trimmed > 0, trimmed < 0))


def _aggregate(steps: torch.Tensor, mean: bool) -> torch.Tensor:
    total = steps.sum(dim=0)
    if mean:
        total.div_((steps != 0).sum(dim=0).clamp_min_(1))
    return total


def consensus_keep(raw: torch.Tensor, multi_task: torch.Tensor, tall_lambda: float, min_tasks: int) -> torch.Tensor:
    """Boolean ``[b]``: where at least `min_tasks` TALL masks ``|τ_t| > λ·|τ_MTL − τ_t|`` hold, for
    one block of raw task entries ``raw[K, b]`` and the multi-task vector's block."""
    count = torch.zeros(raw.shape[1:], dtype=torch.int32, device=raw.device)
    for t in range(raw.shape[0]):
        count += raw[t].abs() > (multi_task - raw[t]).abs_().mul_(tall_lambda)
    return count >= min_tasks


def consensus(stack: torch.Tensor, params: dict, per_task: bool = False) -> torch.Tensor:
    """Consensus merge of one key from ``stack[K, *shape]`` (left unchanged unless `per_task`):
    the delta ``α · τ_MTL ⊙ keep``, or with `per_task` the stack overwritten by each task's base
    step masked by ``keep`` (the per-task vectors whose base merge is τ_MTL ⊙ keep)."""
    flat = stack.view(stack.shape[0], -1)
    ties = params["base"] == "ties"
    bounds = _trim_bounds(flat, params["density"]) if ties else None
    mean = ties and params["ties_aggregate"] == "mean"
    merged = None if per_task else torch.empty(flat.shape[1], dtype=stack.dtype, device=stack.device)
    for start in range(0, flat.shape[1], BLOCK_ENTRIES):
        block = flat[:, start:start + BLOCK_ENTRIES]
        steps = _base_step(block, start, bounds)
        multi_task = _aggregate(steps, mean)
        keep = consensus_keep(block, multi_task, params["tall_lambda"], params["min_tasks"])
        if per_task:
            block.copy_(steps.mul(keep))
        else:
            merged[start:start + block.shape[1]] = multi_task.mul_(keep).mul_(params["scaling"])
    return stack if per_task else merged.view(stack.shape[1:])


@register
class Consensus(MergeMethod):
    name = "consensus"
    summary = ("Consensus merging (Wang et al. 2024): task arithmetic (or TIES) restricted to the entries at least "
               "min_tasks TALL masks |τ_t| > λ·|τ_MTL − τ_t| hold")
    params = CONSENSUS_PARAMS
    presets = {"ta": {}, "ties": {"base": "ties"}}

    def merge_key(self, stack, key, ctx):
        return consensus(stack, ctx.params)

    def transform(self, stack, key, ctx):
        return consensus(stack, ctx.params, per_task=True)
