"""The method registry: every merge is a per-task transform followed by a combine step.

A method sees one key at a time: the ``[K, *shape]`` stack of the K task vectors' entries.
``transform`` returns the stack after the per-task step (filter, trim, drop, ...), which
is also what interference metrics measure; ``combine`` reduces it to the merged delta
``[*shape]`` that is added to the pretrained tensor. A method may first make one pass
over all keys (``statistics``) for quantities such as the mean magnitude of each task.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from ..backend import as_compute_tensor, resolve_device
from ..errors import EmptyInputError, MissingKeysError, ParameterError, ScopeWarning, ShapeMismatchError, counted
from ..io import LazyState, load_state
from ..keys import Patterns
from ..scopes import SCOPE_NAMES, scope_parts, scope_warning
from ..taskvector import DerivedState, TaskVector, common_keys, names_from_sources, stack_key


@dataclass(frozen=True)
class Param:
    """A method parameter: default, allowed range or choices, and what it means (with units)."""

    name: str
    default: Any
    doc: str
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple | None = None
    optional: bool = False

    def validate(self, value: Any, method: str) -> Any:
        """`value` converted to the parameter's kind, or :class:`ParameterError` naming it."""
        where = f"{method}: parameter {self.name!r}"
        if value is None and self.optional:
            return None
        if self.choices is not None:
            if value not in self.choices:
                raise ParameterError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        if self.kind is dict:
            if not isinstance(value, Mapping):
                raise ParameterError(f"{where} must be a mapping of names to values, got {value!r}")
            return dict(value)
        if self.kind in (list, tuple):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                raise ParameterError(f"{where} must be a list, got {value!r}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ParameterError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ParameterError(f"{where} must be a name (a string), got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"{where} must be a number, got {value!r}")
        value = self.kind(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ParameterError(f"{where} must be finite, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            verb = "lie" if self.low is not None and self.high is not None else "be"
            raise ParameterError(f"{where} must {verb} {self._range_text()}, got {value!r}")
        return value

    def _range_text(self) -> str:
        """The allowed range in words: ``in [a, b]``, ``> a``, ``≥ a`` or ``≤ b``."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {self.low}"
        return f"≤ {self.high}"

    def describe(self) -> str:
        """One line for docs and ``--help``: name, default, allowed values, meaning."""
        parts = [f"default {self.default!r}"]
        if self.choices:
            parts.append(f"one of {list(self.choices)}")
        elif self.low is not None or self.high is not None:
            parts.append(self._range_text())
        return f"{self.name} ({'; '.join(parts)}): {self.doc}"


@dataclass(frozen=True)
class ScopeParam(Param):
    """A key scope (:mod:`freqmerge_viz.scopes`): one of ``choices`` or a ``+``-union of them.

    ``suggestion`` is the scope a :class:`~freqmerge_viz.errors.ScopeWarning` proposes when this
    one misses a model's layers.
    """

    kind: type = str
    choices: tuple | None = SCOPE_NAMES
    suggestion: str = "layer_matrices"

    def validate(self, value: Any, method: str) -> Any:
        try:
            parts = scope_parts(value)
        except ParameterError as error:
            raise ParameterError(f"{method}: parameter {self.name!r}: {error}") from None
        if not set(parts) <= {scope_parts(choice)[0] for choice in self.choices}:
            raise ParameterError(f"{method}: parameter {self.name!r} must be one of {list(self.choices)} or a "
                                 f"'+'-union of them, got {value!r}")
        return value

    def describe(self) -> str:
        return (f"{self.name} (default {self.default!r}; one of {list(self.choices)} or a '+'-union of them): "
                f"{self.doc}")


@dataclass
class MergeContext:
    """What a method knows while merging: resolved parameters, task names, global statistics."""

    params: dict
    task_names: list[str]
    statistics: dict = field(default_factory=dict)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)


def resolve_params(owner: str, params: Sequence[Param], presets: Mapping[str, Mapping[str, Any]],
                   given: Mapping[str, Any], n_tasks: int | None = None) -> dict:
    """Parameter values of `owner`: defaults, then preset ``given["preset"]``'s, then `given`.

    Every value is validated by its :class:`Param`; unknown names, unknown presets and a
    ``weights`` list whose length is not `n_tasks` are :class:`ParameterError`.
    """
    known = {p.name: p for p in params}
    given = dict(given)
    preset = given.pop("preset", None)
    if preset is not None and preset not in presets:
        raise ParameterError(f"{owner}: unknown preset {preset!r}; "
                             f"available: {sorted(presets) or 'none'}")
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ParameterError(f"{owner}: unknown parameter(s) {unknown}; "
                             f"accepted: {sorted(known)}")
    values = {p.name: p.default for p in params}
    values.update(presets.get(preset, {}) if preset else {})
    values.update(given)
    resolved = {name: known[name].validate(value, owner) for name, value in values.items()}
    weights = resolved.get("weights")
    if weights is not None and n_tasks is not None and len(weights) != n_tasks:
        raise ParameterError(f"{owner}: {counted(len(weights), 'weight')} given for {counted(n_tasks, 'task')}")
    if preset:
        resolved["preset"] = preset
    return resolved


class MergeMethod:
    """Base of every registered method; subclasses set ``name``, ``summary``, ``params``.

    ``routed`` methods (FREE, EMR, Twin: :class:`~freqmerge_viz.methods.routed.RoutedMethod`)
    give one state per task instead of one merged state; the others are plain merges.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    routed: ClassVar[bool] = False

    def resolve(self, given: Mapping[str, Any], n_tasks: int | None = None) -> dict:
        """Defaults, then the chosen preset's values, then `given`; all validated, together too
        (:meth:`check`), so that a bad setting fails before any tensor is read."""
        resolved = resolve_params(self.name, self.params, self.presets, given, n_tasks)
        self.check(resolved)
        return resolved

    def check(self, params: dict) -> None:
        """Checks that need several parameters at once (e.g. a cutoff's range depends on its
        units); :class:`ParameterError` if they fail. Default: none."""

    def resolved(self, given: Mapping[str, Any], n_tasks: int | None = None) -> ResolvedMethod:
        """This method with `given` resolved once (:meth:`resolve`), ready to merge or transform."""
        return ResolvedMethod(self, self.resolve(given, n_tasks), n_tasks)

    def filter_spec(self, params: Mapping[str, Any]):
        """The frequency filter the resolved `params` describe (methods that filter), else None."""
        return None

    def merges_key(self, key: str, ctx: MergeContext, ndim: int | None = None) -> bool:
        """Whether `key` (a tensor of `ndim` dimensions) is merged; other keys keep their pretrained values."""
        return True

    def scope_settings(self, params: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """``parameter -> (scope, suggested scope)`` for every :class:`ScopeParam` in `params`."""
        return {p.name: (params[p.name], p.suggestion) for p in self.params if isinstance(p, ScopeParam)}

    def statistics(self, task_vectors: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str],
                   ctx: MergeContext, device: torch.device) -> dict:
        """A pass over all keys before merging (default: none)."""
        return {}

    def transform(self, stack: torch.Tensor, key: str, ctx: MergeContext) -> torch.Tensor:
        """The per-task step on ``stack[K, *shape]`` (default: identity)."""
        return stack

    def combine(self, stack: torch.Tensor, key: str, ctx: MergeContext) -> torch.Tensor:
        """Reduce the transformed ``stack[K, *shape]`` to the merged delta ``[*shape]``."""
        raise NotImplementedError

    def merge_key(self, stack: torch.Tensor, key: str, ctx: MergeContext) -> torch.Tensor:
        """The merged delta of one key: ``combine(transform(stack))``.

        A method whose combine step needs more than the transformed stack (PCB's balancing
        scores) overrides this to do both steps at once; its ``transform`` still gives the
        per-task vectors that interference metrics measure.
        """
        return self.combine(self.transform(stack, key, ctx), key, ctx)

    def key_delta(self, task_vectors: Sequence[Mapping[str, torch.Tensor]], key: str, ctx: MergeContext,
                  device: torch.device) -> torch.Tensor:
        """The merged delta of one key from the task vectors: :meth:`merge_key` of their stack.

        A method that needs no stack (a weighted sum, read one task at a time) overrides this
        to hold less than K tensors at once. A key that no task changed (every entry zero: a
        CLIP checkpoint's text tower when only the image tower was fine-tuned) has a zero delta
        without the method's work; every registered method gives exactly that (tested).
        """
        stack = stack_key(task_vectors, key, device)
        if not bool(stack.any()):
            return stack[0]
        return self.merge_key(stack, key, ctx)

    def doc(self) -> str:
        """Summary plus one line per parameter."""
        lines = [f"{self.name}: {self.summary}"] + [f"  {p.describe()}" for p in self.params]
        if self.presets:
            lines.append(f"  presets: {', '.join(sorted(self.presets))}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ResolvedMethod:
    """A method with its parameters resolved once: what widgets and analyses pass around.

    ``params`` are the validated values (defaults, preset, given); ``filter_spec`` is the
    frequency filter they describe (None for methods that do not filter).
    """

    method: MergeMethod
    params: dict
    n_tasks: int | None = None

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def filter_spec(self):
        return self.method.filter_spec(self.params)

    def transform(self, stack: torch.Tensor, key: str) -> torch.Tensor:
        """The per-task step on one key's ``stack[K, *shape]`` (identity on keys the method does not merge)."""
        _refuse_routed(self.method, "method_transform")
        ctx = MergeContext(self.params, [f"task{i}" for i in range(stack.shape[0])])
        merged = self.method.merges_key(key, ctx, stack.ndim - 1)
        return self.method.transform(stack, key, ctx) if merged else stack

    def merge(self, pretrained, finetuned_or_task_vectors, **options) -> LazyState:
        """:func:`merge` with these parameters (`options`: include, exclude, device, dtype)."""
        return merge(self.method.name, pretrained, finetuned_or_task_vectors, _resolved=self, **options)


def _refuse_routed(method: MergeMethod, what: str) -> None:
    if method.routed:
        raise ParameterError(f"{method.name!r} is a routed merge (one state per task, chosen per input by a "
                             f"router); it has no single {what}: use routed_merge({method.name!r}, ...)")


_REGISTRY: dict[str, MergeMethod] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} missing or already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def list_methods() -> list[str]:
    """Names of every registered merge method, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> MergeMethod:
    """The registered method called `name` (:class:`ParameterError` listing the names if unknown)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(f"unknown merge method {name!r}; registered: {', '.join(list_methods())}") from None


def method_transform(name: str, n_tasks: int | None = None, **params) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """The per-task step of method `name` as a ``(stack, key) -> stack`` function.

    This is what :func:`~freqmerge_viz.amplitude_variance` takes as ``transform``; methods
    that need global statistics (e.g. FR's coefficients) do not need them for this step.
    """
    method = get_method(name)
    _refuse_routed(method, "per-task transform")
    transform = method.resolved(params, n_tasks).transform
    return transform


def as_task_vectors(pretrained: LazyState, finetuned_or_task_vectors, include: Patterns,
                    exclude: Patterns, device: torch.device) -> list[TaskVector]:
    """Task vectors from a list of fine-tuned models or task vectors, or a ``{task: model}`` mapping.

    Names come from the mapping's keys, else from the task vectors or files (their folders' names
    when the file names collide, as in ``<task>/finetuned.pt``); models held in memory without a
    name are called ``task0, task1, …``.
    """
    names = None
    items = finetuned_or_task_vectors
    if isinstance(items, Mapping):
        if any(isinstance(value, torch.Tensor) for value in items.values()):
            raise ParameterError("got a single state (name -> tensor); give a list of fine-tuned models "
                                 "or task vectors, or a {task: model} mapping")
        names, items = [str(name) for name in items], list(items.values())
    items = list(items)
    if not items:
        raise EmptyInputError("merge needs at least one fine-tuned model or task vector")
    if all(isinstance(item, TaskVector) for item in items):
        vectors = [tv.select(include, exclude) for tv in items]
    elif any(isinstance(item, TaskVector) for item in items):
        raise ParameterError("give either fine-tuned models or task vectors, not a mix")
    else:
        vectors = [TaskVector.from_states(pretrained, item, include=include, exclude=exclude, device=device)
                   for item in items]
    names = names or names_from_sources(items)
    for i, tv in enumerate(vectors):
        if names is not None:
            tv.name = names[i]
        elif tv.name.startswith("<"):
            tv.name = f"task{i}"
    return vectors


def warn_about_scopes(owner: str, scopes: Mapping[str, tuple[str, str]], shapes: Mapping[str, Sequence[int]],
                      stacklevel: int = 3) -> None:
    """One :class:`~freqmerge_viz.errors.ScopeWarning` if `scopes` (``parameter -> (scope,
    suggestion)``) miss the model of `shapes` (:func:`~freqmerge_viz.scopes.scope_warning`)."""
    message = scope_warning(owner, scopes, shapes)
    if message:
        warnings.warn(message, ScopeWarning, stacklevel=stacklevel)


def merge(name: str, pretrained, finetuned_or_task_vectors, *, include: Patterns = None,
          exclude: Patterns = None, device: str | torch.device | None = "cpu",
          dtype: torch.dtype | None = None, _resolved: ResolvedMethod | None = None,
          _check_scopes: bool = True, **params) -> LazyState:
    """Merge with method `name`; returns a lazy state ``key -> tensor`` over every pretrained key.

    `finetuned_or_task_vectors` holds fine-tuned models (anything :func:`load_state` reads)
    or :class:`TaskVector` objects. Keys outside the include/exclude globs, non-floating
    keys and keys the method does not merge keep their pretrained values. Each merged key
    is computed when read, from one key's K tensors, in float32 (float64 sources stay
    float64), and returned in `dtype` (default: the pretrained tensor's dtype). A method's key
    scopes that miss the model's layers give one :class:`~freqmerge_viz.errors.ScopeWarning`.
    """
    method = get_method(name)
    _refuse_routed(method, "merged state")
    pre = load_state(pretrained)
    target = resolve_device(device)
    vectors = as_task_vectors(pre, finetuned_or_task_vectors, include, exclude, target)
    keys = common_keys(vectors)
    missing = [k for k in keys if k not in pre]
    if missing:
        raise MissingKeysError(missing, where=pre.name, reference="the task vectors")
    for key in keys:
        if tuple(pre.shape_of(key)) != tuple(vectors[0].shape_of(key)):
            raise ShapeMismatchError(key, pre.shape_of(key), vectors[0].shape_of(key), pre.source_of(key),
                                     "the task vectors")
    names = [getattr(v, "name", f"task{i}") for i, v in enumerate(vectors)]
    if _resolved is None:
        resolved_params = method.resolve(params, len(vectors))
    elif _resolved.n_tasks == len(vectors):
        resolved_params = dict(_resolved.params)
    else:
        resolved_params = method.resolve(_resolved.params, len(vectors))
    ctx = MergeContext(resolved_params, names)
    shapes = {k: tuple(pre.shape_of(k)) for k in keys}
    if _check_scopes:
        warn_about_scopes(name, method.scope_settings(resolved_params), shapes)
    merged_keys = {k for k in keys if method.merges_key(k, ctx, len(shapes[k]))}
    ctx.statistics = method.statistics(vectors, sorted(merged_keys, key=keys.index), ctx, target)

    def load(key: str) -> torch.Tensor:
        if key not in merged_keys:
            return pre[key]
        delta = method.key_delta(vectors, key, ctx, target)
        base = pre[key]
        merged = delta.reshape(base.shape).add_(as_compute_tensor(base, target))
        return merged.to(dtype or base.dtype)

    def out_dtype(key: str) -> torch.dtype:
        return dtype if (dtype is not None and key in merged_keys) else pre.dtype_of(key)

    origins = pre.origins + tuple(path for tv in vectors for path in getattr(tv, "origins", ()))
    state = DerivedState(f"{name}({pre.name})", list(pre), load, pre.shape_of, out_dtype, pre.source_of,
                         origins=origins)
    state.method = name
    state.params = dict(ctx.params)
    state.statistics = ctx.statistics
    return state

