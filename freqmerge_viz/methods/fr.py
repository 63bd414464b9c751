"""FR-Merging (high-pass filtered task vectors) and its compositions with TIES and Breadcrumbs.

Three readings, as presets (definitions and every quirk of the authors' code: docs/methods.md):

=================  ==========================  ==============================  ==============================
parameter          ``preset="paper"``          ``preset="official"``           ``preset="official_lm"``
                   (default)                   (authors' ViT code)             (authors' LLM code)
=================  ==========================  ==============================  ==============================
filter_convention  ``paper``: centred ideal    ``official``: unshifted         ``official``, as for the ViT
                   high-pass, normalised       ``fft2``, keep the authors'     code (its ``fftshift`` is
                   radius                      disc + band around              commented out: the filter
                                               ``(H//2, W//2)``                is the same)
cutoff             0.1                         0.7 (``filter_ratio``)          0.9 (``high_ratio``)
ring               (no effect)                 ``twice``                       ``twice``
filter_scope       ``layer_matrices``          ``official``                    ``two_d``
merge_scope        ``all``                     ``attn_mlp``                    ``all``
sum_keys           ``all``                     ``attn_mlp_weights``: other     ``all``
                                               merged keys take the first
                                               task's term
coefficients       ``mean_abs`` (Eq. 3)        ``align`` (per key)             ``none``
consensus          ``none``                    ``none``                        ``sign`` (mergekit ``sum``
                                                                               consensus, no division)
scaling            1.0                         0.7                             0.88 (weight 0.8 × λ 1.1)
=================  ==========================  ==============================  ==============================

Key scopes (``filter_scope``, ``merge_scope``) are named in :mod:`freqmerge_viz.scopes`; one that
misses a model's layers gives a :class:`~freqmerge_viz.errors.ScopeWarning` once per merge.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..backend import as_compute_tensor
from ..cutoff_rules import CUTOFF_RULES, choose_cutoff
from ..errors import ParameterError
from ..metrics import fr_coefficients, mean_abs_per_task  # noqa: F401  (FR's λ_i, also used by the experts)
from ..scopes import is_official, selects
from ..spectral import FilterSpec, as_matrix, filter_stack
from .base import MergeContext, MergeMethod, Param, ScopeParam, register
from .linear import LAYER_SCALING, WEIGHTS, check_layer_scaling, depth_statistics, layer_factor, streamed_sum, \
    weighted_sum
from .sparse import BREADCRUMB_PARAMS, CONVENTION, COUNT, DENSITY, MAJORITY, disjoint_mean, \
    drop_largest_and_smallest_, keep_agreeing_, keep_top_magnitude_

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
    Param("ring", "twice", "official convention: twice = bins at distance min(H, W)//10 count twice, as the "
                           "authors' code adds its disc and its band; once = every kept bin once",
          choices=("twice", "once")),
    ScopeParam("filter_scope", "layer_matrices",
               "which keys are filtered (freqmerge_viz.scopes): layer_matrices = the weight matrices of the "
               "layers (no embeddings, heads, norms, biases); add embeddings with 'layer_matrices+embeddings'; "
               "all_matrices = every tensor of 2+ dimensions; attention, mlp; official = the authors' rule "
               "('weight' and 'attn'/'mlp' in the name); two_d = 2-D tensors (the authors' LLM code); "
               "all = every key (1-D ones only with one_d='fft'); matrices, attn_mlp_weights: older names of "
               "all and official", suggestion="attention+mlp"),
    Param("one_d", "skip", "1-D tensors: left unfiltered, or filtered with a 1-D FFT", choices=("skip", "fft")),
    Param("cutoff_rule", "fixed", "fixed: every filtered matrix at `cutoff`; energy: each matrix's own cutoff keeps "
                                  "a share cutoff_share of its task vectors' spectral energy Σ_i Σ|F_i|²; variance: "
                                  "each matrix's cutoff (tried on a grid up to cutoff_max) makes the kept bins' "
                                  "across-task amplitude variance over squared mean amplitude lowest "
                                  "(freqmerge_viz.cutoff_rules; paper convention, high-pass; the merge's "
                                  "statistics['cutoffs'] list each key's)", choices=CUTOFF_RULES),
    Param("cutoff_share", 0.9, "cutoff_rule='energy': share of a matrix's spectral energy the high-pass keeps",
          low=0.0, low_open=True, high=1.0),
    Param("cutoff_max", 0.5, "adaptive cutoff rules: the largest cutoff they choose, in the cutoff's units", low=0.0),
)

OFFICIAL_FILTER = {"cutoff": 0.7, "filter_convention": "official", "filter_scope": "official"}


def filter_spec(params: dict) -> FilterSpec:
    """The :class:`FilterSpec` that a method's resolved parameters describe."""
    cutoff = params["cutoff"]
    if params["band"] == "band":
        cutoff = (cutoff, params["upper_cutoff"])
    return FilterSpec(cutoff, params["kind"], params["band"], params["units"], params["filter_convention"],
                      params["order"], params["ring"])


def is_attn_mlp_weight(key: str) -> bool:
    """The authors' key rule: the name contains ``weight`` and ``attn`` or ``mlp`` (scope ``official``)."""
    return is_official(key)


def filters_key(key: str, params: dict, ndim: int) -> bool:
    """Whether `key` (a tensor of `ndim` dimensions) is filtered under ``filter_scope``."""
    return selects(params["filter_scope"], key, ndim)


def filter_step(stack: torch.Tensor, key: str, params: dict) -> torch.Tensor:
    """FR's per-task step, in place: the filter of :func:`filter_spec` on each task's tensor, where in scope
    (with an adaptive ``cutoff_rule``, at the cutoff the rule chooses from this stack)."""
    if not filters_key(key, params, stack.ndim - 1):
        return stack
    if params.get("cutoff_rule", "fixed") != "fixed" and as_matrix(stack[0], params["one_d"]) is not None:
        params = with_cutoff(params, rule_cutoff((as_matrix(task, params["one_d"]) for task in stack), params))
    return filter_stack(stack, filter_spec(params), params["one_d"], inplace=True)


def rule_cutoff(matrices, params: dict) -> float:
    """The cutoff ``params["cutoff_rule"]`` chooses from one key's task matrices (an iterable of ``[H, W]``)."""
    return choose_cutoff(matrices, params["cutoff_rule"], units=params["units"], share=params["cutoff_share"],
                         largest=params["cutoff_max"])


def with_cutoff(params: dict, cutoff: float) -> dict:
    """`params` with a fixed `cutoff` (what an adaptive rule chose for one key)."""
    return {**params, "cutoff": cutoff, "cutoff_rule": "fixed"}


def adaptive_cutoffs(task_vectors, keys, params: dict, device) -> dict:
    """``{"cutoffs": {key: cutoff}}`` for every filtered matrix among `keys` under an adaptive
    ``cutoff_rule`` (``{}`` for ``fixed``); one task's matrix at a time."""
    if params.get("cutoff_rule", "fixed") == "fixed":
        return {}
    cutoffs = {}
    for key in keys:
        shape = tuple(task_vectors[0].shape_of(key)) if hasattr(task_vectors[0], "shape_of") else \
            tuple(task_vectors[0][key].shape)
        if not filters_key(key, params, len(shape)) or as_matrix(torch.empty(shape, device="meta"),
                                                                  params["one_d"]) is None:
            continue
        cutoffs[key] = rule_cutoff((as_matrix(as_compute_tensor(tv[key], device), params["one_d"])
                                    for tv in task_vectors), params)
    return {"cutoffs": cutoffs}


def key_params(key: str, ctx: MergeContext) -> dict:
    """The parameters FR filters `key` with: ``ctx.params``, at the key's own cutoff when an adaptive
    rule chose one in the statistics pass (otherwise :func:`filter_step` chooses it from the stack)."""
    cutoffs = ctx.statistics.get("cutoffs")
    if cutoffs is not None and key in cutoffs:
        return with_cutoff(ctx.params, cutoffs[key])
    return ctx.params


def coefficients_for(stack: torch.Tensor, ctx: MergeContext) -> list[float]:
    """Per-task coefficients on the filtered stack, by the ``coefficients`` rule, times ``weights``.

    ``align`` scales each task so that its mean |G(v_i)| on this key equals the largest over
    tasks; a task whose key is all zero gets 0 (the authors' code gives NaN there).
    """
    rule = ctx.params["coefficients"]
    k = stack.shape[0]
    if rule == "mean_abs":
        values = list(ctx.statistics["lambda"])
    elif rule == "uniform":
        values = [1.0 / k] * k
    elif rule == "align":
        means = [float(stack[task].abs().mean()) for task in range(k)]
        largest = max(means)
        values = [largest / m if m > 0 else 0.0 for m in means]
    else:
        values = [1.0] * k
    weights = ctx.params.get("weights") or [1.0] * k
    return [float(c) * float(w) for c, w in zip(values, weights)]


def fr_combine(stack: torch.Tensor, key: str, ctx: MergeContext) -> torch.Tensor:
    """FR's combine step: ``scaling · Σ c_i G(v_i)`` with the ``consensus``, ``sum_keys`` and
    ``weight_scaling`` rules (the stack may be modified)."""
    p = ctx.params
    coefficients = coefficients_for(stack, ctx)
    if p["sum_keys"] == "attn_mlp_weights" and not is_attn_mlp_weight(key):
        total = stack[0].mul(coefficients[0])
    else:
        if p["consensus"] == "sign":
            votes = MergeContext({"weights": coefficients, "convention": "mergekit", "majority": "total"},
                                 ctx.task_names)
            keep_agreeing_(stack, votes)
        total = weighted_sum(stack, ctx, coefficients)
    factor = p["scaling"] * (p["weight_scaling"] if is_attn_mlp_weight(key) else 1.0) * layer_factor(key, ctx)
    return total.mul_(factor)


def filter_sum_first(params: dict) -> bool:
    """Whether FR may filter the weighted sum instead of every task vector (see ``filter_order``):
    the coefficients must not depend on the filtered values and no entrywise consensus may run."""
    return (params.get("filter_order", "auto") == "auto" and params["coefficients"] != "align"
            and params["consensus"] == "none")


def fr_filter_sum(task_vectors, key: str, ctx: MergeContext, device) -> torch.Tensor:
    """FR's merged delta of one key as ``scaling · G(Σ c_i v_i)``: the weighted sum read one task at a
    time, then one filter (equal to :func:`fr_combine` of the filtered stack, the filter being
    linear; about the cost and memory of task arithmetic)."""
    p = ctx.params
    k = len(task_vectors)
    coefficients = coefficients_for(torch.empty(k, 0), ctx)
    tasks = [0] if p["sum_keys"] == "attn_mlp_weights" and not is_attn_mlp_weight(key) else range(k)
    total = streamed_sum([task_vectors[t] for t in tasks], key, [coefficients[t] for t in tasks], device)
    if p.get("cutoff_rule", "fixed") != "fixed" and key not in ctx.statistics.get("cutoffs", {}):
        ctx.statistics.setdefault("cutoffs", {}).update(adaptive_cutoffs(task_vectors, [key], p, device)["cutoffs"])
    filtered = filter_step(total.unsqueeze(0), key, key_params(key, ctx))[0]
    factor = p["scaling"] * (p["weight_scaling"] if is_attn_mlp_weight(key) else 1.0) * layer_factor(key, ctx)
    return filtered.mul_(factor)


class FilteredMethod(MergeMethod):
    """A method whose per-task step starts with FR's filter: its settings must describe a valid filter."""

    def check(self, params):
        filter_spec(params)
        if params.get("cutoff_rule", "fixed") != "fixed":
            if params["filter_convention"] != "paper" or params["band"] != "high":
                raise ParameterError(f"{self.name}: cutoff_rule={params['cutoff_rule']!r} chooses the radius of a "
                                     "high-pass in the paper convention; it needs filter_convention='paper' and "
                                     f"band='high', got {params['filter_convention']!r} and {params['band']!r}")
            filter_spec(with_cutoff(params, params["cutoff_max"]))
        check_layer_scaling(params)

    def filter_spec(self, params):
        return filter_spec(params)

    def statistics(self, task_vectors, keys, ctx, device):
        return adaptive_cutoffs(task_vectors, keys, ctx.params, device)


@register
class FRMerging(FilteredMethod):
    name = "fr"
    summary = "FR-Merging: high-pass filter each task vector, then θ_pre + scaling · Σ λ_i G(v_i)"
    params = FILTER_PARAMS + (
        Param("coefficients", "mean_abs", "mean_abs: λ_i of Eq. 3; uniform: 1/K; align: the authors' "
                                          "per-key alignment (a task whose key is all zero gets 0); none: 1",
              choices=("mean_abs", "uniform", "align", "none")),
        replace(WEIGHTS, doc="per-task factors multiplying the coefficients (default: all 1); the "
                             "consensus votes with the weighted filtered vectors"),
        Param("consensus", "none", "none: sum every entry; sign: keep only entries whose sign agrees with "
                                   "the sign of Σ c_i G(v_i) (0 counts as +), no division (the authors' LLM "
                                   "code: mergekit's sum consensus with normalize off)", choices=("none", "sign")),
        Param("sum_keys", "all", "all: every merged key sums its tasks; attn_mlp_weights: only keys with "
                                 "'weight' and 'attn'/'mlp' do, other merged keys (the attn/mlp biases) take "
                                 "the first task's term (the authors' TaskVector addition)",
              choices=("all", "attn_mlp_weights")),
        Param("scaling", 1.0, "global factor on the merged sum", low=0.0),
        Param("weight_scaling", 1.0, "extra factor on keys with 'weight' and 'attn'/'mlp' only (the authors' "
                                     "TaskVector multiplication scales only those)", low=0.0),
        LAYER_SCALING,
        ScopeParam("merge_scope", "all", "keys merged (freqmerge_viz.scopes), the others keep θ_pre: all, or "
                                         "attn_mlp = keys with 'attn' or 'mlp' in the name (the authors' rule), "
                                         "or any other scope", suggestion="all"),
        Param("filter_order", "auto", "auto: when the coefficients are per-task numbers that do not depend on "
                                      "the filtered values (not align, no consensus), filter the weighted sum "
                                      "once per key: G is linear, so Σ c_i G(v_i) = G(Σ c_i v_i), at the cost "
                                      "of task arithmetic plus one filter; per_task: filter every task vector, "
                                      "then sum (Eq. 3's literal order; same result to float rounding)",
              choices=("auto", "per_task")),
    )
    presets = {"paper": {},
               "official": {**OFFICIAL_FILTER, "coefficients": "align", "scaling": 0.7, "merge_scope": "attn_mlp",
                            "sum_keys": "attn_mlp_weights"},
               "official_lm": {"cutoff": 0.9, "filter_convention": "official", "filter_scope": "two_d",
                               "coefficients": "none", "consensus": "sign", "scaling": 0.88}}

    def merges_key(self, key, ctx, ndim=None):
        scope = ctx.params["merge_scope"]
        return scope == "all" or selects(scope, key, ndim)

    def statistics(self, task_vectors, keys, ctx, device):
        out = {**super().statistics(task_vectors, keys, ctx, device), **depth_statistics(keys, ctx.params)}
        if ctx.params["coefficients"] != "mean_abs":
            return out
        energies = mean_abs_per_task(task_vectors, keys, device)
        return {**out, "mean_abs": energies, "lambda": fr_coefficients(energies)}

    def transform(self, stack, key, ctx):
        return filter_step(stack, key, key_params(key, ctx))

    def combine(self, stack, key, ctx):
        return fr_combine(stack, key, ctx)

    def key_delta(self, task_vectors, key, ctx, device):
        if not filter_sum_first(ctx.params):
            return super().key_delta(task_vectors, key, ctx, device)
        return fr_filter_sum(task_vectors, key, ctx, device)


@register
class FRTies(FilteredMethod):
    name = "fr_ties"
    summary = "FR filter on each task vector, then TIES (trim, elect sign, disjoint mean); paper Table 8"
    params = FILTER_PARAMS + (DENSITY, Param("weights", None, "per-task weights", kind=list, optional=True),
                              Param("scaling", 1.0, "factor on the merged delta", low=0.0), CONVENTION, MAJORITY,
                              COUNT)
    presets = {"paper": {}, "official": OFFICIAL_FILTER}

    def transform(self, stack, key, ctx):
        filtered = filter_step(stack, key, key_params(key, ctx))
        return keep_agreeing_(keep_top_magnitude_(filtered, ctx.params["density"], ctx.params["count"]), ctx)

    def combine(self, stack, key, ctx):
        return disjoint_mean(stack, ctx).mul_(ctx.params["scaling"])


@register
class FRBreadcrumbs(FilteredMethod):
    name = "fr_breadcrumbs"
    summary = "FR filter on each task vector, then Model Breadcrumbs; paper Table 8"
    params = FILTER_PARAMS + BREADCRUMB_PARAMS
    presets = {"paper": {}, "official": OFFICIAL_FILTER}

    def transform(self, stack, key, ctx):
        filtered = filter_step(stack, key, key_params(key, ctx))
        return drop_largest_and_smallest_(filtered, ctx.params["density"], ctx.params["gamma"])

    def combine(self, stack, key, ctx):
        return weighted_sum(stack, ctx).mul_(ctx.params["scaling"])
