"""Merges that keep a little per-task knowledge and choose it per input with a router.

Each gives one state per task, ``θ_t = θ_pre + δ_t``, from one shared part and a small
per-task part:

* **FREE-Merging** (this paper): FR-Merging backbone + sparse, rescaled experts ``e_t``
  (:func:`~freqmerge_viz.extract_experts`); ``δ_t`` adds ``e_t`` to the backbone's delta
  (paper) or puts its entries in place of the backbone's (the authors' code).
* **EMR-Merging** (Huang et al. 2024): one elected vector ``τ_uni`` (sign of ``Σ τ_t``; at each
  entry the largest magnitude among the tasks that agree with it), a boolean mask
  ``M_t = (τ_t ⊙ τ_uni > 0)`` and a rescaler ``λ_t = Σ|τ_t| / Σ|M_t ⊙ τ_uni|`` per task;
  ``δ_t = λ_t · M_t ⊙ τ_uni``. Two readings (``preset="paper"``, default, or ``"official"``,
  the EMR authors' code and fusion-bench's ``emr_merge``); see docs/methods.md.
* **Twin-Merging** (Lu et al. 2024): a shared merge (task arithmetic by default, any
  registered method) plus each task's residual ``τ_t − τ_shared`` compressed to rank ``r``
  by SVD; ``δ_t = τ_shared + SVD_r(τ_t − τ_shared)``. Routing is hard (one task per input),
  as in FREE-Merging; Twin-Merging's soft mixture of experts is not reproduced.

:meth:`RoutedMerge.predict` routes each input of a batch, groups the inputs by route and
runs each group with its task's state: ``forward(state, x)``. The classification head is
the caller's (in the paper's evaluation, the head of the dataset being evaluated, whatever
the route). All three are built key by key; what they hold is the shared part (one
model's worth of deltas) plus the per-task parts.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import pandas as pd
import torch

from ..backend import as_compute_tensor, resolve_device
from ..errors import EmptyInputError, ParameterError, check_positive_int
from ..experts import Expert, LowRankExpert, extract_experts, svd_experts
from ..io import InMemoryState, LazyState, load_state
from ..keys import Patterns
from ..routing import Router, as_task_ids, routed_apply
from ..scopes import selects
from ..taskvector import TaskVector, common_keys, stack_key, task_names
from .base import MergeMethod, Param, ScopeParam, as_task_vectors, get_method, list_methods, merge, \
    method_transform, register, warn_about_scopes


class RoutedMerge:
    """Per-task states ``θ_t = θ_pre + δ_t`` over a shared delta, evaluated through a router.

    Subclasses hold the shared delta (``shared``: key → tensor, the merged part) and say
    how task ``t``'s delta is made from it (:meth:`task_delta`). Task states are built on
    first use and the last `cache_size` of them kept in memory.
    """

    method: ClassVar[str] = ""

    def __init__(self, pretrained: LazyState, shared: Mapping[str, torch.Tensor], names: Sequence[str],
                 settings: Mapping[str, Any], router: Router | None = None, cache_size: int = 8):
        self.pretrained = pretrained
        self.shared = dict(shared)
        self.task_names = list(names)
        self.settings = dict(settings)
        self.router = router
        self.cache_size = check_positive_int("cache_size", cache_size)
        self._states: OrderedDict[int, LazyState] = OrderedDict()

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def task_index(self, task: int | str) -> int:
        """Position of `task` (an index or a task name)."""
        if isinstance(task, str):
            if task not in self.task_names:
                raise ParameterError(f"{self.method}: unknown task {task!r}; tasks: {self.task_names}")
            return self.task_names.index(task)
        return int(as_task_ids([task], n_tasks=self.n_tasks)[0])

    def task_delta(self, task: int, key: str, shared: torch.Tensor) -> torch.Tensor:
        """``δ_t[key]`` from the shared delta ``shared`` (a tensor the method may modify)."""
        raise NotImplementedError

    def task_state(self, task: int | str) -> LazyState:
        """``θ_t``: every pretrained key, with ``θ_pre + δ_t`` where a delta exists (in memory)."""
        index = self.task_index(task)
        if index in self._states:
            self._states.move_to_end(index)
            return self._states[index]
        tensors = {}
        for key in self.pretrained:
            base = self.pretrained[key]
            if key in self.shared:
                target = self.shared[key].device
                delta = self.task_delta(index, key, self.shared[key].clone())
                base = (as_compute_tensor(base, target) + delta.to(target)).to(base.dtype)
            tensors[key] = base
        state = InMemoryState(tensors, name=f"{self.method}[{self.task_names[index]}]")
        state.with_origins(*self.pretrained.origins)
        self._states[index] = state
        if len(self._states) > self.cache_size:
            self._states.popitem(last=False)
        return state

    def predict(self, x: torch.Tensor, forward: Callable[[LazyState, torch.Tensor], torch.Tensor], *,
                router: Router | None = None, task_ids=None, features=None, routes=None) -> torch.Tensor:
        """Outputs ``[N, ...]`` of ``forward(θ_route(i), x[i])``, run once per routed task.

        The route of each input is `routes` if given, else ``router.route(features or x,
        task_ids)`` with `router` or the object's own; `task_ids` (the true tasks) are only read
        by routers that simulate routing (oracle, random).
        """
        if routes is None:
            router = router or self.router
            if router is None:
                raise ParameterError(f"{self.method}: give a router (or routes) to predict with")
            routes = router.route(x if features is None else features, task_ids)
        return routed_apply(x, as_task_ids(routes, int(x.shape[0]), self.n_tasks),
                            lambda task, inputs: forward(self.task_state(task), inputs))

    def storage_bytes_per_task(self) -> list[int]:
        """Bytes stored for each task beyond the shared part."""
        raise NotImplementedError

    def storage_table(self) -> pd.DataFrame:
        """Per task: ``name``, ``storage_bytes`` and ``percent_of_model`` (of one float32 model's bytes)."""
        model_bytes = 4 * sum(math.prod(self.pretrained.shape_of(k)) for k in self.pretrained)
        rows = [{"name": name, "storage_bytes": size, "percent_of_model": 100.0 * size / model_bytes}
                for name, size in zip(self.task_names, self.storage_bytes_per_task())]
        return pd.DataFrame(rows, columns=["name", "storage_bytes", "percent_of_model"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tasks={self.task_names}, settings={self.settings})"


def _shared_delta(merged: LazyState, pretrained: LazyState, keys: Sequence[str],
                  device: torch.device) -> dict[str, torch.Tensor]:
    return {k: as_compute_tensor(merged[k], device) - as_compute_tensor(pretrained[k], device) for k in keys}


# --------------------------------------------------------------------------- FREE-Merging
FREE_PARAMS = (
    Param("density", 0.01, "fraction of each task vector's entries kept in its expert", low=0.0, high=1.0,
          low_open=True),
    Param("per_row", False, "select the top entries per row (last dimension) instead of per tensor", kind=bool),
    Param("rescale", "paper", "μ of Eq. 4 (paper), the authors' μ (official), or none (μ = 1)",
          choices=("paper", "official", "none")),
    Param("scale_reference", "task_vectors", "whose mean |v| enters μ: the task vectors, or their FR-filtered "
                                             "versions (official)", choices=("task_vectors", "filtered")),
    Param("mode", "add", "add: θ_m + w·e_t (paper); replace: e_t's non-zero entries replace the backbone "
                         "delta's (official)", choices=("add", "replace")),
    Param("expert_scale", 1.0, "w, the factor on every expert entry", low=0.0),
    ScopeParam("expert_scope", "all", "keys the experts change (freqmerge_viz.scopes): all, or attn_mlp = keys "
                                      "with 'attn'/'mlp' in the name (official), or any other scope",
               suggestion="all"),
    ScopeParam("mu_scope", "all", "keys whose expert entries μ multiplies (freqmerge_viz.scopes): all, or "
                                  "official = keys with 'weight' and 'attn'/'mlp' (the other keys, e.g. attn/mlp "
                                  "biases, use μ = 1), or any other scope", suggestion="attention+mlp"),
    Param("ties", "index", "entries tying the k-th largest magnitude: lowest flat index first (index), or "
                           "as torch.topk along the last dimension picks them (torch_topk, official)",
          choices=("index", "torch_topk")),
    Param("backbone", {}, "parameters of the FR backbone merge (method 'fr'), e.g. {'cutoff': 0.2}",
          kind=dict),
)
FREE_PRESETS = {
    "paper": {},
    "official": {"per_row": True, "rescale": "official", "scale_reference": "filtered", "mode": "replace",
                 "expert_scale": 0.5, "expert_scope": "attn_mlp", "mu_scope": "official",
                 "ties": "torch_topk",
                 "backbone": {"preset": "official", "coefficients": "none", "scaling": 0.5, "weight_scaling": 0.5}},
}
"""The official backbone (config ViT-B-32_8_FREE: no align) is ``θ_pre + 0.5 · 0.5 · Σ G(v_i)`` on
attn/mlp weights (scaling_coef 0.5 applied by ``TaskVector.__mul__``, which scales only those,
and again by ``apply_to``) and ``θ_pre + 0.5 · v_0`` on attn/mlp biases (the first task's, by
the authors' task-vector addition); experts replace the backbone's entries, scaled by 0.5."""


class FreeMerging(RoutedMerge):
    """FREE-Merging: an FR backbone plus one sparse expert per task, chosen by a router."""

    method = "free"

    def __init__(self, pretrained, shared, names, settings, experts: Sequence[Expert], backbone: LazyState,
                 router=None, cache_size=8, *, sources: _ExpertSources | None = None):
        super().__init__(pretrained, shared, names, settings, router, cache_size)
        self.experts = list(experts)
        self.backbone = backbone
        self._sources = sources

    def with_density(self, density: float) -> FreeMerging:
        """This merge with its experts extracted again at `density` (fraction of entries kept):
        the same backbone, shared delta, router and other settings, so only the experts' work is
        done. Equal to :func:`free_merging` with ``density=density`` and the same parameters."""
        if self._sources is None:
            raise ParameterError("free: this merge was built without its task vectors; build it with "
                                 "free_merging(...) to change its density")
        settings = dict(self.settings, density=get_method("free").resolve({"density": density})["density"])
        experts = _free_experts(self._sources, settings)
        settings["expert_scales"] = [expert.scale for expert in experts]
        return FreeMerging(self.pretrained, self.shared, self.task_names, settings, experts, self.backbone,
                           self.router, self.cache_size, sources=self._sources)

    def task_delta(self, task, key, shared):
        expert = self.experts[task]
        if key not in expert or not selects(self.settings["expert_scope"], key, shared.ndim):
            return shared
        weight = self.settings["expert_scale"]
        scaled = selects(self.settings["mu_scope"], key, shared.ndim)
        if self.settings["mode"] == "add":
            return expert.add_to(key, shared, weight, scaled=scaled)
        return expert.replace_in(key, shared, weight, scaled=scaled)

    def storage_bytes_per_task(self):
        return [expert.storage_bytes() for expert in self.experts]


def free_merging(pretrained, finetuned_or_task_vectors, *, router: Router | None = None,
                 include: Patterns = None, exclude: Patterns = None, device: str | torch.device | None = "cpu",
                 cache_size: int = 8, **params) -> FreeMerging:
    """FREE-Merging of the fine-tuned models (or task vectors): FR backbone, experts, router.

    Parameters (``preset="paper"`` or ``"official"``, then keyword overrides) are listed in
    :data:`FREE_PARAMS`; ``backbone`` holds the FR merge's own parameters. In the paper
    preset λ_i of the experts' μ are the backbone's FR coefficients (one pass over the task
    vectors computes them); with other backbone coefficients they are recomputed from E(v_i).
    """
    settings = get_method("free").resolve(params)
    pre = load_state(pretrained)
    target = resolve_device(device)
    vectors = as_task_vectors(pre, finetuned_or_task_vectors, include, exclude, target)
    backbone = merge("fr", pre, vectors, device=target, _check_scopes=False, **settings["backbone"])
    keys = [k for k in common_keys(vectors) if k in pre]
    scopes = {f"backbone {name}": value for name, value in get_method("fr").scope_settings(backbone.params).items()}
    warn_about_scopes("free", {**scopes, **get_method("free").scope_settings(settings)},
                      {k: tuple(pre.shape_of(k)) for k in keys})
    shared = _shared_delta(backbone, pre, keys, target)
    reference = None
    if settings["scale_reference"] == "filtered":
        step = method_transform("fr", len(vectors), **settings["backbone"])
        reference = [tv.map(lambda key, x, step=step: step(x.unsqueeze(0).clone(), key)[0], with_key=True)
                     for tv in vectors]
    lambdas = backbone.statistics.get("lambda") if settings["rescale"] == "paper" else None
    sources = _ExpertSources(vectors, reference, lambdas, target)
    experts = _free_experts(sources, settings)
    settings["backbone"] = dict(backbone.params)
    settings["expert_scales"] = [expert.scale for expert in experts]
    return FreeMerging(pre, shared, task_names(vectors), settings, experts, backbone, router, cache_size,
                       sources=sources)


@dataclass(frozen=True)
class _ExpertSources:
    """What FREE's experts are extracted from, kept so :meth:`FreeMerging.with_density` need not
    merge the backbone again: the task vectors, the μ reference (FR-filtered task vectors, or
    ``None``), the backbone's λ_i (paper rescale) and the device they are extracted on."""

    vectors: list
    reference: list | None
    lambdas: Sequence[float] | None
    device: torch.device


def _free_experts(sources: _ExpertSources, settings: Mapping[str, Any]) -> list[Expert]:
    return extract_experts(sources.vectors, settings["density"], per_row=settings["per_row"],
                           rescale=None if settings["rescale"] == "none" else settings["rescale"],
                           coefficients=sources.lambdas, scale_reference=sources.reference, ties=settings["ties"],
                           device=sources.device)


# --------------------------------------------------------------------------- EMR-Merging
EMR_PARAMS = (
    Param("zero_sign", "zero", "elected sign where Σ_t τ_t = 0: zero (sign(0) = 0, so τ_uni = 0 there; EMR "
                               "paper) or negative (−1: τ_uni is the largest negative entry; authors' code, "
                               "fusion-bench)", choices=("zero", "negative")),
    Param("rescaler", "pooled", "λ_t: pooled = Σ|τ_t| / Σ|M_t ⊙ τ_uni| over every selected entry (EMR "
                                "paper); per_key_mean = Σ_keys mean|τ_t| / Σ_keys mean|M_t ⊙ τ_uni| (authors' "
                                "code, fusion-bench); 1 where the denominator is 0",
          choices=("pooled", "per_key_mean")),
)
EMR_PRESETS = {"paper": {}, "official": {"zero_sign": "negative", "rescaler": "per_key_mean"}}
"""EMR readings. The paper's is the default: its λ_t does not depend on how the entries are split
into keys (the per-key reading weighs a 768-entry bias as much as a 2.4M-entry matrix), and
negating every task vector negates the merge (the code's −1 at a zero sum breaks that
symmetry). ``preset="official"`` reproduces the published EMR numbers' code and fusion-bench."""


def emr_elect(stack: torch.Tensor, zero_sign: str = "zero") -> tuple[torch.Tensor, torch.Tensor]:
    """EMR's unified vector and masks for one key's ``stack[K, *shape]``.

    ``τ_uni = σ ⊙ max_{t: σ·τ_t > 0} |τ_t|`` with ``σ = sign(Σ_t τ_t)``; where the sum is 0, σ is 0
    (``zero_sign="zero"``) or −1 (``"negative"``, the authors' code). ``M_t = (τ_t ⊙ τ_uni > 0)``.
    Returns ``(τ_uni [*shape], masks [K, *shape] bool)``.
    """
    total = stack.sum(dim=0)
    sign = (total > 0).to(stack.dtype).mul_(2).sub_(1) if zero_sign == "negative" else total.sign_()
    magnitude = torch.zeros_like(sign)
    for task in range(stack.shape[0]):
        agrees = stack[task] * sign > 0
        magnitude = torch.where(agrees, torch.maximum(magnitude, stack[task].abs()), magnitude)
    unified = magnitude.mul_(sign)
    masks = torch.stack([stack[task] * unified > 0 for task in range(stack.shape[0])])
    return unified, masks


class EMRMerging(RoutedMerge):
    """EMR-Merging: elected unified task vector, per-task masks and rescalers."""

    method = "emr"

    def __init__(self, pretrained, shared, names, settings, masks: Mapping[str, torch.Tensor],
                 rescalers: Sequence[float], router=None, cache_size=8):
        super().__init__(pretrained, shared, names, settings, router, cache_size)
        self.masks = dict(masks)
        self.rescalers = [float(r) for r in rescalers]

    def task_delta(self, task, key, shared):
        return shared.mul_(self.masks[key][task]).mul_(self.rescalers[task])

    def storage_bytes_per_task(self):
        """One bit per entry of the mask, plus the rescaler (float32)."""
        entries = sum(mask[0].numel() for mask in self.masks.values())
        return [math.ceil(entries / 8) + 4] * self.n_tasks


def emr_merging(pretrained, finetuned_or_task_vectors, *, router: Router | None = None,
                include: Patterns = None, exclude: Patterns = None, device: str | torch.device | None = "cpu",
                cache_size: int = 8, **params) -> EMRMerging:
    """EMR-Merging (tuning-free): ``θ_t = θ_pre + λ_t · M_t ⊙ τ_uni`` over the selected keys.

    Parameters (``preset="paper"`` or ``"official"``, then keyword overrides) are listed in
    :data:`EMR_PARAMS`: the sign elected where ``Σ_t τ_t = 0`` and whether λ_t pools every
    entry (paper) or sums per-key means (the authors' code and fusion-bench).
    """
    settings = get_method("emr").resolve(params)
    pre = load_state(pretrained)
    target = resolve_device(device)
    vectors = as_task_vectors(pre, finetuned_or_task_vectors, include, exclude, target)
    keys = [k for k in common_keys(vectors) if k in pre]
    if not keys:
        raise EmptyInputError("EMR-Merging: the task vectors share no key with the pretrained model")
    per_key = settings["rescaler"] == "per_key_mean"
    shared, masks = {}, {}
    task_total = torch.zeros(len(vectors), dtype=torch.float64)
    masked_total = torch.zeros(len(vectors), dtype=torch.float64)
    for key in keys:
        stack = stack_key(vectors, key, target)
        unified, mask = emr_elect(stack, settings["zero_sign"])
        entries = max(unified.numel(), 1) if per_key else 1
        task_total += stack.abs().reshape(len(vectors), -1).sum(dim=1, dtype=torch.float64).cpu() / entries
        masked_total += (mask * unified.abs()).reshape(len(vectors), -1).sum(dim=1, dtype=torch.float64).cpu() / entries
        shared[key], masks[key] = unified, mask
        del stack
    rescalers = [float(a / b) if b > 0 else 1.0 for a, b in zip(task_total.tolist(), masked_total.tolist())]
    settings["rescalers"] = rescalers
    return EMRMerging(pre, shared, task_names(vectors), settings, masks, rescalers, router, cache_size)


# --------------------------------------------------------------------------- Twin-Merging
TWIN_PARAMS = (
    Param("rank", 8, "rank of each task's residual expert τ_t − τ_shared (SVD per matrix)", kind=int, low=1),
    Param("shared_method", "task_arithmetic", "the registered plain merge that makes τ_shared", kind=str),
    Param("shared_params", {}, "parameters of the shared merge, e.g. {'scaling': 0.3}", kind=dict),
)


class TwinMerging(RoutedMerge):
    """Twin-Merging: a shared merge plus each task's low-rank residual expert."""

    method = "twin"

    def __init__(self, pretrained, shared, names, settings, experts: Sequence[LowRankExpert],
                 router=None, cache_size=8):
        super().__init__(pretrained, shared, names, settings, router, cache_size)
        self.experts = list(experts)

    def task_delta(self, task, key, shared):
        return self.experts[task].add_to(key, shared) if key in self.experts[task] else shared

    def storage_bytes_per_task(self):
        return [expert.storage_bytes() for expert in self.experts]


def twin_merging(pretrained, finetuned_or_task_vectors, *, router: Router | None = None,
                 include: Patterns = None, exclude: Patterns = None, device: str | torch.device | None = "cpu",
                 cache_size: int = 8, **params) -> TwinMerging:
    """Twin-Merging: ``θ_t = θ_pre + τ_shared + SVD_rank(τ_t − τ_shared)``.

    Parameters (:data:`TWIN_PARAMS`): ``τ_shared`` is the delta of ``merge(shared_method, ...,
    **shared_params)`` (any registered plain method); residual matrices are kept at rank `rank`
    (1-D keys and thin matrices whole, see :func:`~freqmerge_viz.svd_experts`).
    """
    settings = get_method("twin").resolve(params)
    pre = load_state(pretrained)
    target = resolve_device(device)
    vectors = as_task_vectors(pre, finetuned_or_task_vectors, include, exclude, target)
    merged = merge(settings["shared_method"], pre, vectors, device=target, **settings["shared_params"])
    keys = [k for k in common_keys(vectors) if k in pre]
    shared = _shared_delta(merged, pre, keys, target)
    shared_vector = TaskVector.from_tensors(shared, name="shared")
    residuals = [tv - shared_vector for tv in vectors]
    experts = svd_experts(residuals, settings["rank"], device=target)
    settings["shared_params"] = dict(merged.params)
    return TwinMerging(pre, shared, task_names(vectors), settings, experts, router, cache_size)


# --------------------------------------------------------------------------- registry
class RoutedMethod(MergeMethod):
    """A registered merge that gives one state per task, chosen per input by a router.

    It declares its parameters like every method; :meth:`build` makes the
    :class:`RoutedMerge`. It has no single merged state, so :func:`~freqmerge_viz.merge` and
    :func:`~freqmerge_viz.method_transform` refuse it and say to use :func:`routed_merge`.
    """

    routed = True
    builder: ClassVar[Callable[..., RoutedMerge]]

    def build(self, pretrained, finetuned_or_task_vectors, **params) -> RoutedMerge:
        """The routed merge of the fine-tuned models (or task vectors) with `params` (its
        declared parameters, plus ``router``, ``include``, ``exclude``, ``device``, ``cache_size``)."""
        return type(self).builder(pretrained, finetuned_or_task_vectors, **params)

    def doc(self) -> str:
        return super().doc().replace(f"{self.name}: ", f"{self.name} (routed: one state per task): ", 1)


@register
class FreeMethod(RoutedMethod):
    name = "free"
    summary = "FREE-Merging: FR backbone plus one sparse, rescaled expert per task, chosen by a router"
    params = FREE_PARAMS
    presets = FREE_PRESETS
    builder = staticmethod(free_merging)


@register
class EMRMethod(RoutedMethod):
    name = "emr"
    summary = "EMR-Merging: elected unified vector, per-task masks and rescalers"
    params = EMR_PARAMS
    presets = EMR_PRESETS
    builder = staticmethod(emr_merging)


@register
class TwinMethod(RoutedMethod):
    name = "twin"
    summary = "Twin-Merging: a shared merge plus each task's low-rank residual"
    params = TWIN_PARAMS
    builder = staticmethod(twin_merging)

    def check(self, params):
        if params["shared_method"] not in list_methods():
            raise ParameterError(f"twin: unknown shared_method {params['shared_method']!r}; plain merges: "
                                 f"{[m for m in list_methods() if not get_method(m).routed]}")
        method = get_method(params["shared_method"])
        if method.routed:
            raise ParameterError(f"twin: shared_method {method.name!r} is itself routed; give a plain merge")


def list_routed_methods() -> list[str]:
    """Names of the registered merges with per-task parts and a router, sorted."""
    return [name for name in list_methods() if get_method(name).routed]


def routed_merge(name: str, pretrained, finetuned_or_task_vectors, **params) -> RoutedMerge:
    """Build routed merge `name` (``free``, ``emr``, ``twin``: :func:`list_routed_methods`) with
    its declared parameters as keywords (``freqmerge-viz methods NAME`` lists them)."""
    method = get_method(name)
    if not method.routed:
        raise ParameterError(f"{name!r} is a plain merge (one merged state): use merge({name!r}, ...); "
                             f"routed merges: {list_routed_methods()}")
    return method.build(pretrained, finetuned_or_task_vectors, **params)
