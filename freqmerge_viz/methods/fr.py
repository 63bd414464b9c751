"""FR-Merging (high-pass filtered task vectors) and its compositions with TIES and Breadcrumbs.

Two readings, as presets (METHOD_NOTES.md):

========================  ===============================  =====================================
parameter                 ``preset="paper"`` (default)     ``preset="official"`` (authors' code)
========================  ===============================  =====================================
filter                    ideal high-pass, centred,        unshifted ``fft2``, keep distance from
                          normalised radius ``cutoff``     ``(H//2, W//2)`` ≤ ratio·min(H, W)
cutoff                    0.1 (normalised radius)          0.7 (``filter_ratio``)
filtered keys             every matrix                     keys with ``weight`` and ``attn``/``mlp``
merged keys               every selected key               keys with ``attn`` or ``mlp``
coefficients              ``mean_abs``: λ_i = E(v_i)/ΣE    ``align``: per key, each task scaled so
                          (Eq. 3, E = mean |v| over the    its mean |G(v_i)| equals the largest
                          task vector)                     over tasks
scaling                   1.0                              0.7
========================  ===============================  =====================================

Not reproduced: in the authors' sum, attn/mlp biases take the first task's values only.
"""

from __future__ import annotations

import torch

from ..errors import ParameterError
from ..spectral import FilterSpec, filter_stack
from .base import MergeContext, MergeMethod, Param, register
from .linear import weighted_sum
from .sparse import BREADCRUMB_PARAMS, CONVENTION, DENSITY, MAJORITY, disjoint_mean, drop_largest_and_smallest_, \
    keep_agreeing_, keep_top_magnitude_

ATTN_MLP = ("attn", "mlp")

FILTER_PARAMS = (
    Param("cutoff", 0.1, "filter cutoff: a normalised radius in [0, 1] (units='normalized'), bins "
                         "(units='bins'), or the authors' filter_ratio (filter_convention='official')", low=0.0),
    Param("kind", "ideal", "filter shape", choices=("ideal", "butterworth", "gaussian")),
    Param("band", "high", "high-pass (FR), or low / band for ablations", choices=("high", "low", "band")),
    Param("upper_cutoff", None, "upper cutoff of a band-pass, same units", low=0.0, optional=True),
    Param("order", 2, "Butterworth order", kind=int, low=1),
    Param("units", "normalized", "cutoff units", choices=("normalized", "bins")),
    Param("filter_convention", "paper", "paper: centred isotropic filter; official: the authors' code",
          choices=("paper", "official")),
    Param("filter_scope", "matrices", "which keys are filtered: every matrix, or only keys with "
                                      "'weight' and 'attn'/'mlp' (official)", choices=("matrices", "attn_mlp_weights")),
    Param("one_d", "skip", "1-D tensors: left unfiltered, or filtered with a 1-D FFT", choices=("skip", "fft")),
)

OFFICIAL_FILTER = {"cutoff": 0.7, "filter_convention": "official", "filter_scope": "attn_mlp_weights"}


def filter_spec(params: dict) -> FilterSpec:
    """The :class:`FilterSpec` that a method's resolved parameters describe."""
    cutoff = params["cutoff"]
    if params["band"] == "band":
        cutoff = (cutoff, params["upper_cutoff"])
    return FilterSpec(cutoff, params["kind"], params["band"], params["units"], params["filter_convention"],
                      params["order"])


def filters_key(key: str, params: dict) -> bool:
    """Whether `key` is filtered under the ``filter_scope`` parameter."""
    if params["filter_scope"] == "matrices":
        return True
    return "weight" in key and any(part in key for part in ATTN_MLP)


def filter_step(stack: torch.Tensor, key: str, params: dict) -> torch.Tensor:
    """FR's per-task step, in place: the filter of :func:`filter_spec` on each task's tensor, where in scope."""
    if not filters_key(key, params):
        return stack
    return filter_stack(stack, filter_spec(params), params["one_d"], inplace=True)


def mean_abs_per_task(task_vectors, keys, device) -> list[float]:
    """``E(v_i)``: mean absolute value of each task vector over `keys` (all entries pooled)."""
    totals = [0.0] * len(task_vectors)
    count = 0
    for key in keys:
        for i, tv in enumerate(task_vectors):
            totals[i] += float(tv[key].to(device).abs().sum())
        count += task_vectors[0][key].numel()
    return [t / max(count, 1) for t in totals]


def fr_coefficients(mean_abs_values) -> list[float]:
    """FR-Merging's ``λ_i = E(v_i) / Σ_j E(v_j)`` (Eq. 3) from each task's mean |v|.

    If every task vector is zero, every λ gives the same merge and ``1/K`` is returned.
    """
    values = [float(v) for v in mean_abs_values]
    if any(v < 0 or v != v for v in values):
        raise ParameterError(f"mean absolute values must be >= 0, got {values}")
    total = sum(values)
    return [v / total for v in values] if total > 0 else [1.0 / len(values)] * len(values)


def coefficients_for(stack: torch.Tensor, ctx: MergeContext) -> list[float]:
    """Per-task coefficients on the filtered stack, by the ``coefficients`` rule."""
    rule = ctx.params["coefficients"]
    k = stack.shape[0]
    if rule == "mean_abs":
        return list(ctx.statistics["lambda"])
    if rule == "uniform":
        return [1.0 / k] * k
    if rule == "align":
        means = [float(stack[task].abs().mean()) for task in range(k)]
        largest = max(means)
        return [largest / m if m > 0 else 0.0 for m in means]
    return [1.0] * k


@register
class FRMerging(MergeMethod):
    name = "fr"
    summary = "FR-Merging: high-pass filter each task vector, then θ_pre + scaling · Σ λ_i G(v_i)"
    params = FILTER_PARAMS + (
        Param("coefficients", "mean_abs", "mean_abs: λ_i of Eq. 3; uniform: 1/K; align: the authors' "
                                          "per-key alignment; none: 1", choices=("mean_abs", "uniform", "align", "none")),
        Param("scaling", 1.0, "global factor on the merged sum", low=0.0),
        Param("merge_scope", "all", "all selected keys, or only keys with 'attn'/'mlp' (official); "
                                    "others keep θ_pre", choices=("all", "attn_mlp")),
    )
    presets = {"paper": {},
               "official": {**OFFICIAL_FILTER, "coefficients": "align", "scaling": 0.7, "merge_scope": "attn_mlp"}}

    def merges_key(self, key, ctx):
        return ctx.params["merge_scope"] == "all" or any(part in key for part in ATTN_MLP)

    def statistics(self, task_vectors, keys, ctx, device):
        if ctx.params["coefficients"] != "mean_abs":
            return {}
        energies = mean_abs_per_task(task_vectors, keys, device)
        return {"mean_abs": energies, "lambda": fr_coefficients(energies)}

    def transform(self, stack, key, ctx):
        return filter_step(stack, key, ctx.params)

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx, coefficients_for(stack, ctx)).mul_(ctx.params["scaling"])


@register
class FRTies(MergeMethod):
    name = "fr_ties"
    summary = "FR filter on each task vector, then TIES (trim, elect sign, disjoint mean); paper Table 8"
    params = FILTER_PARAMS + (DENSITY, Param("weights", None, "per-task weights", kind=list, optional=True),
                              Param("scaling", 1.0, "factor on the merged delta", low=0.0), CONVENTION, MAJORITY)
    presets = {"paper": {}, "official": OFFICIAL_FILTER}

    def transform(self, stack, key, ctx):
        filtered = filter_step(stack, key, ctx.params)
        return keep_agreeing_(keep_top_magnitude_(filtered, ctx.params["density"]), ctx)

    def combine(self, stack, key, ctx):
        return disjoint_mean(stack, ctx).mul_(ctx.params["scaling"])


@register
class FRBreadcrumbs(MergeMethod):
    name = "fr_breadcrumbs"
    summary = "FR filter on each task vector, then Model Breadcrumbs; paper Table 8"
    params = FILTER_PARAMS + BREADCRUMB_PARAMS
    presets = {"paper": {}, "official": OFFICIAL_FILTER}

    def transform(self, stack, key, ctx):
        filtered = filter_step(stack, key, ctx.params)
        return drop_largest_and_smallest_(filtered, ctx.params["density"], ctx.params["gamma"])

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx).mul_(ctx.params["scaling"])
