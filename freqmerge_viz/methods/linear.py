"""Weight averaging and task arithmetic."""

from __future__ import annotations

import math

import torch

from ..backend import as_compute_tensor
from ..errors import ParameterError
from ..scopes import depth_fractions
from .base import MergeContext, MergeMethod, Param, register

WEIGHTS = Param("weights", None, "per-task weights, one per task (default: all 1)", kind=list, optional=True)
LAYER_SCALING = Param("layer_scaling", None,
                      "LiNeS (Wang et al., ICLR 2025): [α, β] multiplies each key's merged delta by α + β·d, "
                      "d = l/(L−1) its layer's depth (0 for the first numbered layer and the embeddings, 1 for the "
                      "last and for heads and final norms; freqmerge_viz.scopes.depth_fractions), on top of "
                      "`scaling` (set scaling 1 for LiNeS' own parametrisation); default: off",
                      kind=list, optional=True)


def check_layer_scaling(params: dict) -> None:
    """:class:`ParameterError` unless ``layer_scaling`` is None or two finite numbers ``[α, β]`` with
    α >= 0 and α + β >= 0 (no negative factor at any depth)."""
    pair = params.get("layer_scaling")
    if pair is None:
        return
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)):
        raise ParameterError(f"layer_scaling must be two numbers [alpha, beta], got {pair!r}")
    alpha, beta = (float(v) for v in pair)
    if alpha < 0 or alpha + beta < 0:
        raise ParameterError(f"layer_scaling [alpha, beta] must give factors >= 0 at every depth "
                             f"(alpha >= 0 and alpha + beta >= 0), got {list(pair)}")


def depth_statistics(keys, params: dict) -> dict:
    """``{"depth_fraction": {key: d}}`` for a merge with ``layer_scaling`` (else ``{}``)."""
    return {"depth_fraction": depth_fractions(keys)} if params.get("layer_scaling") is not None else {}


def layer_factor(key: str, ctx: MergeContext) -> float:
    """LiNeS' ``α + β·d`` of `key` (1 without ``layer_scaling``)."""
    pair = ctx.params.get("layer_scaling")
    if pair is None:
        return 1.0
    depth = ctx.statistics.get("depth_fraction")
    d = depth[key] if depth is not None and key in depth else depth_fractions([key])[key]
    return float(pair[0]) + float(pair[1]) * d


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
                                    "validation data)", low=0.0), WEIGHTS, LAYER_SCALING)

    def check(self, params):
        check_layer_scaling(params)

    def statistics(self, task_vectors, keys, ctx, device):
        return depth_statistics(keys, ctx.params)

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx).mul_(ctx.params["scaling"] * layer_factor(key, ctx))

    def key_delta(self, task_vectors, key, ctx, device):
        weights = ctx.params.get("weights") or [1.0] * len(task_vectors)
        return streamed_sum(task_vectors, key, weights, device).mul_(ctx.params["scaling"] * layer_factor(key, ctx))
