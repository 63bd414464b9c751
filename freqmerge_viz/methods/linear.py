"""Weight averaging and task arithmetic."""

from __future__ import annotations

import torch

from ..backend import as_compute_tensor
from .base import MergeContext, MergeMethod, Param, register

WEIGHTS = Param("weights", None, "per-task weights, one per task (default: all 1)", kind=list, optional=True)


def weighted_sum(stack: torch.Tensor, ctx: MergeContext, coefficients=None) -> torch.Tensor:
    """``Σ_i c_i · stack[i]``, accumulated task by task; ``c`` = `coefficients` or the weights."""
    if coefficients is None:
        coefficients = ctx.params.get("weights") or [1.0] * stack.shape[0]
    total = torch.zeros(stack.shape[1:], dtype=stack.dtype, device=stack.device)
    for task in range(stack.shape[0]):
        total.add_(stack[task], alpha=float(coefficients[task]))
    return total


def streamed_sum(task_vectors, key: str, coefficients, device) -> torch.Tensor:
    """``Σ_i c_i · v_i[key]`` read one task's entry at a time: no ``[K, *shape]`` stack, so the
    sum holds two tensors of the key, whatever K (compute dtype, on `device`)."""
    total = None
    for vector, coefficient in zip(task_vectors, coefficients):
        entry = as_compute_tensor(vector[key], device)
        if total is None:
            total = entry.mul(float(coefficient))
        else:
            if entry.dtype != total.dtype:
                total = total.to(torch.promote_types(total.dtype, entry.dtype))
            total.add_(entry, alpha=float(coefficient))
        del entry
    return total


@register
class WeightAveraging(MergeMethod):
    name = "weight_averaging"
    summary = "θ = mean of the fine-tuned models, i.e. θ_pre + (1/K) Σ v_i"

    def combine(self, stack, key, ctx):
        return stack.mean(dim=0)

    def key_delta(self, task_vectors, key, ctx, device):
        return streamed_sum(task_vectors, key, [1.0 / len(task_vectors)] * len(task_vectors), device)


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "θ = θ_pre + scaling · Σ_i w_i v_i (Ilharco et al. 2023)"
    params = (Param("scaling", 0.3, "λ on the sum (0.3 is the usual choice for 8 tasks; tune on "
                                    "validation data)", low=0.0), WEIGHTS)

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx).mul_(ctx.params["scaling"])

    def key_delta(self, task_vectors, key, ctx, device):
        weights = ctx.params.get("weights") or [1.0] * len(task_vectors)
        return streamed_sum(task_vectors, key, weights, device).mul_(ctx.params["scaling"])
