"""Weight averaging and task arithmetic."""

from __future__ import annotations

import torch

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


@register
class WeightAveraging(MergeMethod):
    name = "weight_averaging"
    summary = "θ = mean of the fine-tuned models, i.e. θ_pre + (1/K) Σ v_i"

    def combine(self, stack, key, ctx):
        return stack.mean(dim=0)


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "θ = θ_pre + scaling · Σ_i w_i v_i (Ilharco et al. 2023)"
    params = (Param("scaling", 0.3, "λ on the sum (0.3 is the usual choice for 8 tasks; tune on "
                                    "validation data)", low=0.0), WEIGHTS)

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx).mul_(ctx.params["scaling"])
