"""CutoffExplorer: what a frequency cutoff keeps of a task vector, and what it does to the merge.

One view, built once and updated in place: the centred log-amplitude spectrum of one task
vector matrix with the filter's mask over it, the across-task amplitude variance (the
paper's Table 1 measure, over all bins and over the bins the filter keeps), and the
merged model's accuracy per task on a fixed evaluation batch.

Every number comes from the library: the merge from :func:`~freqmerge_viz.merge`, the
mask from the method's :class:`~freqmerge_viz.FilterSpec`, the variance from
:func:`~freqmerge_viz.amplitude_variance` with :func:`~freqmerge_viz.method_transform`, the
accuracies from :mod:`~freqmerge_viz.engine` evaluators. An update recomputes only what
its inputs changed: a cutoff change merges and evaluates once and redraws the mask and the
variance; the spectra of each matrix, the task vectors, the pretrained tensors and the
evaluation batches are computed once.
"""

from __future__ import annotations

import html
import math
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..backend import resolve_device, torch_threads
from ..errors import ParameterError, check_choice, check_positive_int
from ..io import load_state
from ..methods import ResolvedMethod, get_method, list_methods
from ..metrics import amplitude_variance
from ..plots.scales import ZERO_COLOR, SpectrumImage, as_percent, binomial_se, mean_se, plus_minus, spectrum_image
from ..scopes import image_tower, selects
from ..spectral import amplitude_spectrum, as_matrix
from ..taskvector import TaskVector
from .base import DEBOUNCE_S, Explorer, Schedule
from .refine import Refiner, Tally, count_range, inputs_between

CONTROLLED = ("cutoff", "upper_cutoff", "kind", "band", "scaling")
"""Method parameters that the explorer's controls set."""
FIXED_FILTER = {"units": "normalized", "filter_convention": "paper"}
"""Filter parameters the explorer holds fixed: the cutoff slider is a normalised radius (the
key scope is the method's own default, so the explorer's merge is ``fmv.merge``'s)."""
COMBINE_ONLY = ("scaling",)
"""Parameters that act on the merged sum only, not on the per-task step the variance measures."""
VARIANCE_SCOPES = ("matrix", "all")
CACHE_SIZE = 256
"""Merged accuracies and variances kept per explorer (a slider walked back is not recomputed)."""
TARGET_SE = 1.0
"""Standard error (percentage points) of the mean accuracy at which refinement stops."""
REFINE_CHUNK = 32
"""Inputs of one task that one refinement step adds (on the demo zoo about 10 ms: the longest a
control event waits behind a step)."""

SPECTRUM, GAIN, VARIANCE_RAW, VARIANCE_NORMALIZED, ACCURACY, NO_FILTER, NO_MERGE, FINETUNED = range(8)
"""Trace indices in :attr:`CutoffExplorer.figure`."""
REFERENCES = {"no_filter": "same merge, cutoff 0 (no filter)", "no_merge": "no merge (pretrained + heads)",
              "finetuned": "fine-tuned"}
SHORT_REFERENCES = {"no_filter": "vs no filter", "no_merge": "vs no merge", "finetuned": "vs fine-tuned"}
BY_CONSTRUCTION = "zeroed bins lower the all-bins value by construction"

Evaluate = Callable[[Mapping[str, torch.Tensor]], Mapping[str, float]]


def cutoff_methods() -> list[str]:
    """Registered merge methods that declare a ``cutoff`` parameter (what the explorer can show)."""
    return [name for name in list_methods() if any(p.name == "cutoff" for p in get_method(name).params)]


@dataclass(frozen=True)
class CutoffView:
    """Everything one update shows. Arrays are shared with the explorer's caches: read only.

    Variances are ``(unfiltered, filtered over all bins, filtered over kept bins)``, raw and
    divided by the mean amplitude; the kept-bins value is NaN when no bin is kept.
    Accuracies are fractions in [0, 1]; ``no_filter`` is the same merge at cutoff 0,
    ``no_merge`` the pretrained model with its heads, ``finetuned`` each task's own model.
    ``counts`` holds, for ``merged`` and each reference, the inputs per task behind it (None:
    unknown); ``refinement`` is :meth:`CutoffModel.refinement` of the setting.
    """

    key: str
    task: str
    band: str
    spectrum: SpectrumImage
    mask: np.ndarray
    variance: tuple[float, float, float]
    normalized_variance: tuple[float, float, float]
    kept_fraction: float
    accuracy: dict
    no_filter: dict
    title: str
    no_merge: dict
    finetuned: dict
    counts: dict
    refinement: dict

    @property
    def nothing_kept(self) -> bool:
        return self.kept_fraction == 0.0


def _frozen(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


def _share(fraction: float) -> str:
    """A fraction as a percentage a person reads right: 0%, <0.1%, or one decimal."""
    if fraction == 0:
        return "0%"
    if fraction < 0.001:
        return "<0.1%"
    return f"{100 * fraction:.1f}%"


def _change_percent(value: float, reference: float) -> float:
    if not (math.isfinite(value) and reference):
        return float("nan")
    return 100.0 * (value / reference - 1.0)


class _LRU(OrderedDict):
    def get_or(self, key, compute: Callable[[], Any], counter: Counter, name: str):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = compute()
        counter[name] += 1
        self[key] = value
        if len(self) > CACHE_SIZE:
            self.popitem(last=False)
        return value


class CutoffModel:
    """What the cutoff explorer computes, without any widget: sources, caches, references and
    :meth:`compute` of one :class:`CutoffView` per setting (tests drive it headless).

    Arguments as :class:`CutoffExplorer`'s; `params` are fixed method parameters.
    """

    def __init__(self, source, *, method: str = "fr", eval_split: str = "val", eval_per_task: int = 16,
                 eval_mode: str = "loop", device: torch.device | str | None = None,
                 params: Mapping[str, Any] | None = None, threads: int | None = 1,
                 refine_limit: int | None = None, refine_chunk: int = REFINE_CHUNK, target_se: float = TARGET_SE):
        self.device = resolve_device(device)
        self.threads = threads
        self.timings: dict[str, float] = {}
        self.cache_stats: Counter = Counter()
        self.methods = cutoff_methods()
        check_choice("method", method, self.methods)
        self.fixed_params = self._check_fixed(params or {})
        self.source = source
        if not target_se > 0:
            raise ParameterError(f"target_se must be > 0 percentage points, got {target_se!r}")
        self.target_se = float(target_se)
        self.refine_chunk = check_positive_int("refine_chunk", refine_chunk)
        with torch_threads(threads):
            self._load_source(source, eval_split, eval_per_task, eval_mode, refine_limit)
            self._amplitudes: dict[str, np.ndarray] = {}
            self._images: dict[tuple[str, int], SpectrumImage] = {}
            self._unfiltered: dict[tuple, tuple] = {}
            self._accuracies = _LRU()
            self._variances = _LRU()
            self._resolved = _LRU()
            self._states: OrderedDict = OrderedDict()
            finetuned = {t: self._accuracy_of(self._finetuned[t], t) for t in self.eval_tasks if t in self._finetuned}
            self._references = {"no_merge": self._tally_of(self._pretrained),
                                "finetuned": Tally(finetuned, {t: self.eval_counts.get(t) for t in finetuned})}
        self.matrix_keys = [k for k in self._vectors[0] if len(self._vectors[0].shape_of(k)) >= 2]
        if not self.matrix_keys:
            raise ParameterError("the task vectors hold no matrix (entry with 2 or more dimensions)")

    def default_values(self, method: str, *, key: str | None = None, task: str | None = None,
                       cutoff: float | None = None, scaling: float | None = None) -> dict:
        """The settings an explorer starts from (see :class:`CutoffExplorer`)."""
        defaults = {p.name: p.default for p in get_method(method).params}
        self.scaling_note = "the method's default"
        if scaling is None:
            scaling, self.scaling_note = self._default_scaling(self.source, defaults.get("scaling", 1.0))
        return {"cutoff": defaults["cutoff"] if cutoff is None else cutoff,
                "upper_cutoff": 0.5, "kind": defaults.get("kind", "ideal"),
                "band": defaults.get("band", "high"), "scaling": scaling, "method": method,
                "key": key if key is not None else self._default_key(method),
                "task": task if task is not None else self.tasks[0], "variance_over": "matrix"}

    # ------------------------------------------------------------------ inputs
    def _check_fixed(self, params: Mapping[str, Any]) -> dict:
        clash = sorted(set(params) & (set(CONTROLLED) | {"method"}))
        if clash:
            raise ParameterError(f"CutoffExplorer: {clash} are set by the controls (pass them to set())")
        changed = sorted(k for k, v in FIXED_FILTER.items() if k in params and params[k] != v)
        if changed:
            raise ParameterError(f"CutoffExplorer shows the paper's filter in normalised units; it cannot "
                                 f"change {changed}")
        return dict(params)

    def _default_scaling(self, source, method_default: float) -> tuple[float, str]:
        """The zoo's validation-chosen task-arithmetic coefficient × K (FR's λ_i sum to 1, so at
        cutoff 0 FR then adds what the best task arithmetic adds), else the method's default."""
        manifest = getattr(source, "manifest", None) or {}
        chosen = manifest.get("accuracy", {}).get("task_arithmetic", {}).get("scaling")
        coefficients = self.fixed_params.get("coefficients", "mean_abs")
        if chosen is None or coefficients != "mean_abs":
            return float(method_default), "the method's default"
        k = len(self._vectors)
        return round(float(chosen) * k, 4), (f"{k} × {float(chosen):g}, the task-arithmetic coefficient "
                                              "chosen on validation when the zoo was built")

    @property
    def no_merge_accuracy(self) -> dict[str, float]:
        """The pretrained model's accuracy per task (fractions), refined so far."""
        return dict(self._references["no_merge"].accuracy)

    @property
    def finetuned_accuracy(self) -> dict[str, float]:
        """Each task's fine-tuned model on its own task (fractions), refined so far."""
        return dict(self._references["finetuned"].accuracy)

    @property
    def refinable(self) -> bool:
        """Whether the explorer can add inputs to its estimates (a study's splits; an evaluator
        given by the caller has fixed data)."""
        return bool(self._full_evaluators)

    def _load_source(self, source, eval_split: str, eval_per_task: int, eval_mode: str,
                     refine_limit: int | None) -> None:
        from ..analysis.evaluation import analysed_keys
        from ..study import as_study, is_study, study_evaluator

        if isinstance(source, (str, os.PathLike)):
            source = as_study(source)
        self._full_evaluators: dict = {}
        self.split_sizes: dict[str, int] = {}
        self.unit = "images"
        if isinstance(source, tuple):
            if len(source) != 3:
                raise ParameterError("give a zoo or a tuple (pretrained, finetuned, evaluator)")
            pretrained, finetuned, evaluator = source
            if not isinstance(finetuned, Mapping):
                finetuned = {f"task{i}": state for i, state in enumerate(finetuned)}
            self.eval_description = "the evaluator's data"
            self.eval_per_task = None
            include = None
        elif is_study(source):
            check_positive_int("eval_per_task", eval_per_task)
            pretrained, finetuned = source.pretrained, dict(source.finetuned)
            limit = getattr(source, "default_limit", None) if refine_limit is None else refine_limit
            if limit is not None:
                check_positive_int("refine_limit", limit)
            self._full_evaluators = {t: study_evaluator(source, t, eval_split, max(limit, eval_per_task) if limit
                                                        else None, mode=eval_mode, device=self.device)
                                     for t in source.tasks}
            evaluator = {t: inputs_between(full, 0, eval_per_task) for t, full in self._full_evaluators.items()}
            self.split_sizes = {t: len(full.labels) for t, full in self._full_evaluators.items()}
            self.unit = getattr(source, "unit", "images")
            self.eval_description = f"{eval_split} {self.unit}"
            self.eval_per_task = eval_per_task
            include = analysed_keys(source)
        else:
            raise ParameterError(f"CutoffExplorer needs a study (or the zoo, or a study file) or "
                                 f"(pretrained, finetuned, evaluator), "
                                 f"got {type(source).__name__}")
        if not finetuned:
            raise ParameterError("CutoffExplorer needs at least one fine-tuned model")
        if not (callable(evaluator) or isinstance(evaluator, Mapping)):
            raise ParameterError("evaluator must be {task: Evaluator} or a function state -> {task: accuracy}")
        self._sources = [source] if not isinstance(source, tuple) else [pretrained, *finetuned.values()]
        pre = load_state(pretrained)
        self.tasks = [str(t) for t in finetuned]
        self._pretrained = {k: pre[k].to(self.device) for k in pre}
        self._finetuned = {str(t): state for t, state in finetuned.items()}
        tower = image_tower(self._pretrained) if include is None else None
        self.scope_note = ""
        """Which keys the explorer covers when it chose them itself (a two-tower CLIP checkpoint)."""
        if tower:
            include = list(tower)
            self.scope_note = (f"Image tower only ({', '.join(tower)}): the checkpoints hold both CLIP towers; "
                               "pass include= to choose the keys.")
        self._vectors = [TaskVector.from_states(self._pretrained, state, include=include, name=str(t),
                                                device=self.device).materialize()
                         for t, state in finetuned.items()]
        self._evaluator = evaluator
        if isinstance(evaluator, Mapping):
            self.eval_tasks = [str(t) for t in evaluator]
            self.eval_counts = {str(t): int(len(getattr(ev, "labels", ()))) or None for t, ev in evaluator.items()}
        else:
            self.eval_counts = {}
            self.eval_tasks = list(self._accuracy_dict(self._pretrained))
            self.eval_counts = {t: self.eval_counts.get(t) for t in self.eval_tasks}

    def _default_key(self, method: str = "fr") -> str:
        """The first proper matrix (more than one row and column) the method's ``filter_scope``
        filters (a CLIP study's first attention matrix, not its positional embedding), else the
        first proper matrix, else the first one."""
        scope = get_method(method).resolve({}).get("filter_scope")
        proper = [k for k in self.matrix_keys
                  if self._vectors[0].shape_of(k)[0] > 1 and math.prod(self._vectors[0].shape_of(k)[1:]) > 1]
        filtered = [k for k in proper if scope is None or selects(scope, k, len(self._vectors[0].shape_of(k)))]
        return (filtered or proper or self.matrix_keys)[0]

    # ------------------------------------------------------------------ computations
    def _tally_of(self, state: Mapping[str, torch.Tensor]) -> Tally:
        accuracy = self._accuracy_dict(state)
        return Tally(accuracy, {t: self.eval_counts.get(t) for t in accuracy})

    def _accuracy_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        if isinstance(self._evaluator, Mapping):
            return {str(t): float(ev([state]).accuracy[0]) for t, ev in self._evaluator.items()}
        return {str(t): self._fraction(str(t), a) for t, a in self._evaluator(state).items()}

    def _accuracy_of(self, state, task: str) -> float:
        if isinstance(self._evaluator, Mapping):
            return float(self._evaluator[task]([state]).accuracy[0])
        return self._fraction(task, self._evaluator(state)[task])

    def _fraction(self, task: str, value) -> float:
        """An evaluator function's answer for `task` as a fraction: an accuracy, or a pair
        ``(correct, total)``, whose total becomes the task's image count (its standard error is
        unknown otherwise)."""
        if isinstance(value, (tuple, list)):
            if len(value) != 2 or not value[1] or value[1] < 0:
                raise ParameterError(f"the evaluator's answer for task {task!r} must be an accuracy or "
                                     f"(correct, total) with total > 0, got {value!r}")
            self.eval_counts[task] = int(value[1])
            return float(value[0]) / float(value[1])
        return float(value)

    def method_params(self, values: Mapping[str, Any]) -> dict:
        """The parameters handed to :func:`~freqmerge_viz.merge` for the settings `values`."""
        method = values["method"]
        if method not in self.methods:
            raise ParameterError(f"method must be one with a cutoff ({', '.join(self.methods)}); got {method!r}")
        declared = {p.name for p in get_method(method).params}
        params = {**{k: v for k, v in FIXED_FILTER.items() if k in declared}, **self.fixed_params}
        for name in CONTROLLED:
            if name in declared and (name != "upper_cutoff" or values["band"] == "band"):
                params[name] = values[name]
        return params

    def _spectrum_image(self, key: str, task_index: int) -> SpectrumImage:
        if key not in self._amplitudes:
            stack = torch.stack([as_matrix(tv[key]) for tv in self._vectors])
            self._amplitudes[key] = amplitude_spectrum(stack).double().cpu().numpy()
            self.cache_stats["spectra"] += 1
        if (key, task_index) not in self._images:
            self._images[(key, task_index)] = spectrum_image(self._amplitudes[key][task_index])
        return self._images[(key, task_index)]

    def resolved(self, method: str, params: Mapping[str, Any]) -> ResolvedMethod:
        """`method` with `params` resolved once (cached: a slider walked back is not re-resolved)."""
        return self._resolved.get_or((method, _frozen(params)),
                                     lambda: get_method(method).resolved(params, len(self._vectors)),
                                     self.cache_stats, "resolutions")

    def _merged_state(self, resolved: ResolvedMethod) -> dict[str, torch.Tensor]:
        """The merged parameters of `resolved` (the last two kept for refinement)."""
        key = (resolved.name, _frozen(resolved.params))
        if key in self._states:
            self._states.move_to_end(key)
            return self._states[key]
        start = time.perf_counter()
        merged = resolved.merge(self._pretrained, self._vectors, device=self.device)
        state = {k: merged[k] for k in merged}
        self.timings["merge_ms"] = self.timings.get("merge_ms", 0.0) + 1e3 * (time.perf_counter() - start)
        self._states[key] = state
        if len(self._states) > 2:
            self._states.popitem(last=False)
        return state

    def _merged_accuracy(self, resolved: ResolvedMethod) -> Tally:
        def compute():
            state = self._merged_state(resolved)
            start = time.perf_counter()
            tally = self._tally_of(state)
            self.timings["evaluate_ms"] = (self.timings.get("evaluate_ms", 0.0)
                                                + 1e3 * (time.perf_counter() - start))
            return tally

        return self._accuracies.get_or((resolved.name, _frozen(resolved.params)), compute, self.cache_stats, "merges")

    def _targets(self, values: Mapping[str, Any]) -> dict[str, tuple[Tally, Callable[[str], Mapping]]]:
        """What a setting shows, by name (``merged``, ``no_filter``, ``no_merge``, ``finetuned``):
        its tally and the parameters to evaluate for a task."""
        resolved, unfiltered = self._resolved_pair(values)
        return {"merged": (self._merged_accuracy(resolved), lambda task: self._merged_state(resolved)),
                "no_filter": (self._merged_accuracy(unfiltered), lambda task: self._merged_state(unfiltered)),
                "no_merge": (self._references["no_merge"], lambda task: self._pretrained),
                "finetuned": (self._references["finetuned"], lambda task: self._finetuned[task])}

    def _resolved_pair(self, values: Mapping[str, Any]) -> tuple[ResolvedMethod, ResolvedMethod]:
        """The setting's merge and the same merge at cutoff 0 (no filter)."""
        method, params = values["method"], self.method_params(values)
        unfiltered = {k: v for k, v in params.items() if k != "upper_cutoff"}
        return (self.resolved(method, params),
                self.resolved(method, {**unfiltered, "cutoff": 0.0, "band": "high"}))

    def _settled(self, tally: Tally) -> bool:
        """Whether `tally` needs no more inputs: its mean's standard error is at most
        ``target_se`` points, or it holds every input of each task's split (or cannot grow)."""
        if not self.refinable or all(tally.counts[t] >= self.split_sizes[t] for t in tally.counts):
            return True
        if len({c for t, c in tally.counts.items() if c < self.split_sizes[t]}) > 1:
            return False
        tasks = list(tally.counts)
        return as_percent(mean_se([tally.accuracy[t] for t in tasks], [tally.counts[t] for t in tasks])) \
            <= self.target_se

    def refinement(self, values: Mapping[str, Any]) -> dict:
        """Where refinement of the setting `values` stands: ``state`` (``"refining"``,
        ``"settled"``: standard error of the mean at most ``target_se_percent`` points,
        ``"whole split"``, or ``"fixed"``: the caller's evaluator, whose data cannot grow), the
        fewest inputs per task behind any shown number and the most the split offers."""
        tallies = [tally for tally, _ in self._targets(values).values()]
        fewest = min((c for tally in tallies for c in tally.counts.values() if c is not None), default=None)
        if not self.refinable:
            state = "fixed"
        elif not all(self._settled(tally) for tally in tallies):
            state = "refining"
        elif all(c >= self.split_sizes[t] for tally in tallies for t, c in tally.counts.items()):
            state = "whole split"
        else:
            state = "settled"
        return {"state": state, "fewest_per_task": fewest, "split_per_task": max(self.split_sizes.values(), default=None),
                "target_se_percent": self.target_se}

    def refine_step(self, values: Mapping[str, Any]) -> bool:
        """Add the next chunk of inputs of one task to the least refined unsettled number of the
        setting `values` (``refine_chunk`` inputs; tasks take turns, so a number's tasks grow
        together and refinement stops only when they are level); returns whether any
        number of the setting is still unsettled."""
        with torch_threads(self.threads):
            open_targets = [(tally, state_of) for tally, state_of in self._targets(values).values()
                            if not self._settled(tally)]
            if not open_targets:
                return False
            tally, state_of = min(open_targets, key=lambda target: target[0].inputs())
            task = min((t for t in tally.counts if tally.counts[t] < self.split_sizes[t]),
                       key=lambda t: tally.counts[t])
            done = tally.counts[task]
            evaluator = inputs_between(self._full_evaluators[task], done,
                                        min(done + self.refine_chunk, self.split_sizes[task]))
            accuracy = float(evaluator([state_of(task)]).accuracy[0])
            tally.add(task, accuracy, len(evaluator.labels))
            self.cache_stats["refinement_steps"] += 1
            return len(open_targets) > 1 or not self._settled(tally)

    def _variances_for(self, resolved: ResolvedMethod, key: str, scope: str):
        subset = self._vectors if scope == "all" else [{key: tv[key]} for tv in self._vectors]
        where = key if scope == "matrix" else None
        if (scope, where) not in self._unfiltered:
            self._unfiltered[(scope, where)] = _summary(amplitude_variance(subset, normalize=True,
                                                                           device=self.device))
        transform_params = {k: v for k, v in resolved.params.items() if k not in COMBINE_ONLY}

        def compute():
            start = time.perf_counter()
            transform, spec = resolved.transform, resolved.filter_spec
            filtered = amplitude_variance(subset, transform=transform, normalize=True, device=self.device)
            kept = amplitude_variance(subset, transform=transform, within=spec, normalize=True, device=self.device)
            self.timings["variance_ms"] = 1e3 * (time.perf_counter() - start)
            return _summary(filtered), _summary(kept), dict(zip(kept.per_matrix["key"],
                                                                kept.per_matrix["kept_fraction"]))

        filtered, kept, fractions = self._variances.get_or((resolved.name, _frozen(transform_params), scope, where),
                                                           compute, self.cache_stats, "variances")
        return self._unfiltered[(scope, where)], filtered, kept, fractions[key]

    def check(self, values):
        check_choice("key", values["key"], self.matrix_keys)
        check_choice("task", values["task"], self.tasks)
        check_choice("variance_over", values["variance_over"], VARIANCE_SCOPES)

    def compute(self, values) -> CutoffView:
        self.timings = {}
        with torch_threads(self.threads):
            key = values["key"]
            resolved, _ = self._resolved_pair(values)
            task_index = self.tasks.index(values["task"])
            image = self._spectrum_image(key, task_index)
            tallies = {name: tally for name, (tally, _) in self._targets(values).items()}
            unfiltered, filtered, kept, fraction = self._variances_for(resolved, key, values["variance_over"])
            mask = resolved.filter_spec.mask(image.values.shape[-2:]).cpu().numpy()
        if fraction == 0.0:
            kept = (float("nan"), float("nan"))
        title = (f"{key} · task {values['task']} · kept {_share(fraction)} of this matrix's bins"
                 f" · scaling {values['scaling']:.2f}")
        if fraction == 0.0:
            title += " — this matrix's merged delta is zero"
        return CutoffView(key, values["task"], values["band"], image, mask,
                          (unfiltered[0], filtered[0], kept[0]), (unfiltered[1], filtered[1], kept[1]),
                          float(fraction), dict(tallies["merged"].accuracy), dict(tallies["no_filter"].accuracy),
                          title, dict(tallies["no_merge"].accuracy), dict(tallies["finetuned"].accuracy),
                          {name: dict(tally.counts) for name, tally in tallies.items()}, self.refinement(values))

    # ------------------------------------------------------------------ numbers shown
    def _errors(self, accuracy: Mapping[str, float], counts: Mapping[str, int | None]) -> list[float]:
        """±1 binomial standard error per evaluation task, in percent (NaN when n is unknown)."""
        return [float(as_percent(binomial_se(accuracy[t], counts.get(t) or 0))) for t in self.eval_tasks]

    def mean_with_error(self, accuracy: Mapping[str, float],
                        counts: Mapping[str, int | None] | None = None) -> tuple[float, float]:
        """(mean accuracy over the evaluation tasks, its standard error), both in percent;
        `counts`: inputs per task behind `accuracy` (default: the first estimate's)."""
        counts = self.eval_counts if counts is None else counts
        values = [accuracy[t] for t in self.eval_tasks]
        return float(as_percent(np.mean(values))), float(as_percent(mean_se(values, [counts.get(t) or 0
                                                                                      for t in self.eval_tasks])))

    def unfiltered_note(self, values: Mapping[str, Any]) -> str:
        """What the filter never touches under the settings `values` (1-D parameters unless
        ``one_d="fft"``, matrices outside ``filter_scope``), or ''."""
        resolved = self.resolved(values["method"], self.method_params(values)).params
        scope, one_d = resolved["filter_scope"], resolved.get("one_d", "skip") != "skip"
        shapes = {k: self._vectors[0].shape_of(k) for k in self._vectors[0]}
        flat = [k for k, shape in shapes.items() if len(shape) < 2 and not (one_d and selects(scope, k, len(shape)))]
        outside = [k for k, shape in shapes.items() if len(shape) >= 2 and not selects(scope, k, len(shape))]
        if not flat and not outside:
            return ""
        share = sum(math.prod(shapes[k]) for k in flat + outside) / sum(math.prod(s) for s in shapes.values())
        parts = ([f"{len(flat)} one-dimensional parameters (biases, norms)"] if flat else []) + \
            ([f"{len(outside)} matrices outside filter_scope={scope!r} ({', '.join(outside[:3])}"
              f"{', …' if len(outside) > 3 else ''})"] if outside else [])
        return f"{' and '.join(parts)}, {_share(share)} of the entries, are not filtered at any cutoff: " \
               "they are merged in full."


class CutoffExplorer(Explorer):
    """Sliders for a cutoff-based merge (FR and its compositions) over a zoo, or any models.

    `source` is a zoo (:func:`freqmerge_viz.zoo.load`) or ``(pretrained, finetuned, evaluator)``:
    ``finetuned`` a ``{task: state}`` mapping (or a list, tasks ``task0…``), ``evaluator``
    either ``{task: engine.Evaluator}`` or a function ``state -> {task: accuracy in [0, 1]}``.
    With a zoo, accuracies are measured on the first `eval_per_task` images of each task's
    `eval_split` with the engine (``evaluate_params`` + :func:`~freqmerge_viz.zoo.evaluation.zoo_forward`, mode `eval_mode`).

    Settings (``values``, changed by the controls or :meth:`set`): ``cutoff`` and
    ``upper_cutoff`` (normalised radius in [0, 1]: 0 = DC, 1 = the corner of the centred
    spectrum; the upper one is used by ``band="band"`` only), ``kind``, ``band``,
    ``scaling``, ``method`` (one of :func:`cutoff_methods`), ``key`` (a matrix: a task vector
    entry with 2 or more dimensions, seen as :func:`~freqmerge_viz.as_matrix` sees it),
    ``task`` (whose spectrum is drawn) and ``variance_over`` (``"matrix"``: the chosen
    matrix; ``"all"``: the mean over every matrix, which adds about 0.4 s to each filter
    change on a busy 2-core CPU).

    `params` are fixed parameters of the method besides those (e.g. ``coefficients``,
    ``order``); the filter stays the paper's centred one in normalised units, on the method's own key scope.
    `threads` torch CPU threads run each update (default 1: an update is many small
    tensors, where a second thread costs more than it saves on a busy 2-core machine);
    ``None`` keeps torch's setting.
    """

    export_div_id = "freqmerge-cutoff-explorer"
    default_export = "cutoff_explorer.html"

    def __init__(self, source, *, key: str | None = None, task: str | None = None, method: str = "fr",
                 cutoff: float | None = None, scaling: float | None = None, eval_split: str = "val",
                 eval_per_task: int = 16, eval_mode: str = "loop", device: torch.device | str | None = None,
                 params: Mapping[str, Any] | None = None, threads: int | None = 1,
                 refine: bool = True, target_se: float = TARGET_SE, refine_limit: int | None = None,
                 refine_chunk: int = REFINE_CHUNK, debounce: float = DEBOUNCE_S, schedule: Schedule | None = None):
        super().__init__(debounce=debounce, schedule=schedule)
        self.model = CutoffModel(source, method=method, eval_split=eval_split, eval_per_task=eval_per_task,
                                 eval_mode=eval_mode, device=device, params=params, threads=threads,
                                 refine_limit=refine_limit, refine_chunk=refine_chunk, target_se=target_se)
        self.values = self.model.default_values(method, key=key, task=task, cutoff=cutoff, scaling=scaling)
        self._view: CutoffView | None = None
        if refine and self.model.refinable:
            self.refiner = Refiner(self._refine_step, self._lock, schedule)
        self._start(method)

    def method_params(self, values: Mapping[str, Any] | None = None) -> dict:
        """The parameters handed to :func:`~freqmerge_viz.merge` for `values` (default: the current)."""
        return self.model.method_params(self.values if values is None else values)

    # ------------------------------------------------------------------ display
    def _build_controls(self, method: str) -> None:
        import ipywidgets as w

        wide = {"description_width": "initial"}
        params = {p.name: p for p in get_method(method).params}
        v = self.values
        radius = "normalised radius ρ in [0, 1]: 0 = DC, 1 = corner of the centred spectrum"
        controls = {
            "cutoff": w.FloatSlider(value=v["cutoff"], min=0.0, max=1.0, step=0.005, readout_format=".3f",
                                    description="cutoff (normalised radius ρ)", tooltip=radius, style=wide,
                                    continuous_update=True, layout=w.Layout(width="420px")),
            "upper_cutoff": w.FloatSlider(value=v["upper_cutoff"], min=0.0, max=1.0, step=0.005,
                                          readout_format=".3f", description="upper cutoff ρ (band-pass)",
                                          tooltip=radius, style=wide, layout=w.Layout(width="380px")),
            "method": w.Dropdown(options=self.methods, value=v["method"], description="method"),
            "kind": w.Dropdown(options=list(params["kind"].choices), value=v["kind"], description="filter"),
            "band": w.Dropdown(options=list(params["band"].choices), value=v["band"], description="band"),
            "scaling": w.FloatSlider(value=v["scaling"], min=0.0, max=max(2.0, 2 * float(v["scaling"])),
                                     step=0.01, description="scaling", readout_format=".2f",
                                     tooltip=f"{params['scaling'].doc} Default: {self.scaling_note}."),
            "key": w.Dropdown(options=self.matrix_keys, value=v["key"], description="matrix",
                              layout=w.Layout(width="340px")),
            "task": w.Dropdown(options=self.tasks, value=v["task"], description="task"),
            "variance_over": w.Dropdown(options=[("this matrix", "matrix"), ("all matrices (slower)", "all")],
                                        value=v["variance_over"], description="variance over", style=wide),
        }
        for name, control in controls.items():
            control.add_class(f"fmv-{name.replace('_', '-')}")
            self._bind(name, control)

    def _build_figure(self) -> None:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.2,
                            column_widths=[0.5, 0.5],
                            subplot_titles=("(a) filter gain H: white kept, black removed",
                                            "(b) spectrum ln|F(v)| of the task vector, centred",
                                            "(c) across-task amplitude variance, change vs unfiltered",
                                            "(d) merged accuracy per task (±1 SE)"))
        fig.add_trace(go.Heatmap(z=[[0.0]], colorscale="Magma", name="ln|F(v)|",
                                 colorbar=dict(len=0.42, y=1.0, yanchor="top", thickness=12, title=dict(text="ln|F|")),
                                 hovertemplate="γ %{x}, η %{y}: ln|F| %{z:.2f}<extra></extra>"), row=1, col=2)
        fig.add_trace(go.Heatmap(z=[[1.0]], zmin=0.0, zmax=1.0, colorscale="Greys", reversescale=True,
                                 name="filter gain", showscale=False,
                                 hovertemplate="γ %{x}, η %{y}: gain %{z:.2f}<extra></extra>"), row=1, col=1)
        groups = [0, 1]
        fig.add_trace(go.Bar(x=groups, y=[0.0, 0.0], customdata=[0.0, 0.0], name="raw", marker_color="#4c78a8",
                             texttemplate="%{y:+.1f}%", textposition="outside",
                             hovertemplate="raw: %{customdata:.4g} (%{y:+.1f}% vs unfiltered)<extra></extra>"),
                      row=2, col=1)
        fig.add_trace(go.Bar(x=groups, y=[0.0, 0.0], customdata=[0.0, 0.0], name="÷ mean amplitude",
                             marker_color="#f58518", texttemplate="%{y:+.1f}%", textposition="outside",
                             hovertemplate="÷ mean amplitude: %{customdata:.4g} (%{y:+.1f}% vs unfiltered)"
                                           "<extra></extra>"), row=2, col=1)
        n_tasks = len(self.eval_tasks)
        task_x = list(range(n_tasks))
        fig.add_trace(go.Bar(x=task_x, y=[0.0] * n_tasks, name="merged", marker_color="#54a24b",
                             error_y=dict(type="data", array=[0.0] * n_tasks, visible=True, thickness=1.2,
                                          color="#333"),
                             hovertemplate="merged: %{y:.1f}%<extra></extra>"), row=2, col=2)
        styles = {"no_filter": ("circle-open", "#e45756", 10), "no_merge": ("x-thin-open", "#222", 10),
                  "finetuned": ("line-ew-open", "#222", 18)}
        for name, (symbol, colour, size) in styles.items():
            fig.add_trace(go.Scatter(x=task_x, y=[0.0] * n_tasks, mode="markers", name=REFERENCES[name],
                                     marker=dict(symbol=symbol, size=size, color=colour, line=dict(width=2)),
                                     hovertemplate=f"{REFERENCES[name]}: %{{y:.1f}}%<extra></extra>"),
                          row=2, col=2)
        for col in (1, 2):
            fig.update_xaxes(title_text="column frequency γ (bins)", row=1, col=col)
            fig.update_yaxes(title_text="row frequency η (bins)", row=1, col=col)
        fig.update_xaxes(tickvals=groups, ticktext=["all bins", "kept bins"], row=2, col=1)
        fig.update_yaxes(title_text="change vs unfiltered (%)", zeroline=True, zerolinecolor="#888", row=2, col=1)
        fig.update_xaxes(tickvals=task_x, ticktext=list(self.eval_tasks), tickangle=30, row=2, col=2)
        fig.update_yaxes(title_text="accuracy (%)", range=[0, 105], row=2, col=2)
        fig.update_layout(height=820, template="plotly_white", barmode="group", bargap=0.25,
                          legend=dict(orientation="h", x=0.0, xanchor="left", y=-0.2, font=dict(size=11)),
                          margin=dict(l=60, r=30, t=90, b=120), title=dict(text="", font=dict(size=13)))
        self.figure = fig

    def _build_widget(self) -> None:
        import ipywidgets as w

        c = self.controls
        self.summary = w.HTML(value="")
        self.summary.add_class("fmv-summary")
        self.widget = w.VBox([
            w.HBox([c["cutoff"], c["upper_cutoff"]]),
            w.HBox([c["method"], c["kind"], c["band"], c["scaling"]]),
            w.HBox([c["key"], c["task"], c["variance_over"]]),
            w.HBox([self.export_path, self.export_button]),
            *self._display_parts(),
        ], layout=w.Layout(width="100%"))
        self.widget.add_class("fmv-cutoff-explorer")

    def _notes(self, view: CutoffView) -> tuple[str, str]:
        """(variance panel note, spectrum caption)."""
        variance = BY_CONSTRUCTION
        if view.nothing_kept:
            variance = "no bin kept: the kept-bins value is undefined; " + variance
        return variance, view.spectrum.caption(center=(view.spectrum.values.shape[0] // 2,
                                                       view.spectrum.values.shape[1] // 2))

    def _draw(self, view: CutoffView) -> None:
        start = time.perf_counter()
        old = self._view
        d = self.figure.data
        with self.figure.batch_update():
            if old is None or old.spectrum is not view.spectrum:
                h, w = view.spectrum.values.shape
                x = np.arange(-(w // 2), (w + 1) // 2)
                y = np.arange(-(h // 2), (h + 1) // 2)
                for trace in (d[SPECTRUM], d[GAIN]):
                    trace.x, trace.y = x, y
                d[SPECTRUM].z = view.spectrum.values
                d[SPECTRUM].zmin, d[SPECTRUM].zmax = view.spectrum.vmin, view.spectrum.vmax
            if old is None or old.mask is not view.mask:
                d[GAIN].z = view.mask
            change = [_change_percent(view.variance[i], view.variance[0]) for i in (1, 2)]
            change_normalized = [_change_percent(view.normalized_variance[i], view.normalized_variance[0])
                                 for i in (1, 2)]
            d[VARIANCE_RAW].y, d[VARIANCE_RAW].customdata = change, list(view.variance[1:])
            d[VARIANCE_NORMALIZED].y = change_normalized
            d[VARIANCE_NORMALIZED].customdata = list(view.normalized_variance[1:])
            finite = [v for v in change + change_normalized if math.isfinite(v)] + [0.0]
            pad = 0.15 * max(max(finite) - min(finite), 1.0)
            self.figure.layout.yaxis3.range = [min(finite) - pad, max(finite) + pad]
            d[ACCURACY].y = [float(as_percent(view.accuracy[t])) for t in self.eval_tasks]
            d[ACCURACY].error_y.array = self._errors(view.accuracy, view.counts["merged"])
            for index, name in ((NO_FILTER, "no_filter"), (NO_MERGE, "no_merge"), (FINETUNED, "finetuned")):
                values = getattr(view, name)
                d[index].y = [float(as_percent(values.get(t, np.nan))) for t in self.eval_tasks]
                d[index].error_y = dict(type="data", array=self._errors_or_nan(values, view.counts[name]),
                                        visible=True, thickness=1, width=3, color=d[index].marker.color)
            variance_note, caption = self._notes(view)
            self.figure.layout.annotations = self.figure.layout.annotations[:4] + (
                dict(text=f"<i>{html.escape(variance_note)}</i>", xref="x3 domain", yref="y3 domain", x=0.5,
                     y=-0.3, showarrow=False, font=dict(size=10, color="#555")),
                dict(text=f"<i>{html.escape(caption or 'no bin of this spectrum is zero')}</i>",
                     xref="x2 domain", yref="y2 domain", x=0.5, y=-0.3, showarrow=False,
                     font=dict(size=10, color="#555")))
            self.figure.layout.shapes = (dict(type="rect", xref="x2 domain", yref="y2 domain", x0=0, x1=1, y0=0,
                                              y1=1, fillcolor=ZERO_COLOR, line=dict(width=0), layer="below"),)
            self.figure.layout.title.text = html.escape(view.title)
        self.controls["upper_cutoff"].disabled = view.band != "band"
        self.summary.value = self._summary_html(view)
        self._view = view
        self.last_timings["draw_ms"] = 1e3 * (time.perf_counter() - start)

    def _errors_or_nan(self, values: Mapping[str, float], counts: Mapping[str, int | None]) -> list[float]:
        """Per-task ±1 SE (percent) of a reference; NaN for a task it does not cover."""
        return [float(as_percent(binomial_se(values[t], counts.get(t) or 0))) if t in values else float("nan")
                for t in self.eval_tasks]

    def _displayed(self) -> dict:
        d = self.figure.data
        view = self._view
        accuracy = {t: float(view.accuracy[t]) for t in self.eval_tasks}
        mean, error = self.mean_with_error(accuracy, view.counts["merged"])

        def nan_to_none(value: float):
            return None if value is None or not math.isfinite(value) else float(value)

        return {"accuracy": accuracy, "mean_accuracy": float(np.mean(list(accuracy.values()))),
                "mean_accuracy_percent": mean, "mean_accuracy_se_percent": nan_to_none(error),
                "accuracy_se_percent": dict(zip(self.eval_tasks, map(nan_to_none, d[ACCURACY].error_y.array))),
                "eval_counts": dict(view.counts["merged"]),
                "reference_counts": {name: dict(view.counts[name]) for name in REFERENCES},
                "refinement": dict(view.refinement),
                "amplitude_variance": dict(zip(("unfiltered", "all_bins", "kept_bins"),
                                               map(nan_to_none, view.variance))),
                "normalized_amplitude_variance": dict(zip(("unfiltered", "all_bins", "kept_bins"),
                                                          map(nan_to_none, view.normalized_variance))),
                "kept_fraction": view.kept_fraction, "nothing_kept": view.nothing_kept,
                "no_filter_accuracy": dict(view.no_filter), "no_merge_accuracy": dict(view.no_merge),
                "finetuned_accuracy": dict(view.finetuned),
                "spectrum_limits": [view.spectrum.vmin, view.spectrum.vmax],
                "spectrum_zero_fraction": view.spectrum.zero_fraction}

    def _summary_html(self, view: CutoffView) -> str:
        tasks = self.eval_tasks
        mean, error = self.mean_with_error(view.accuracy, view.counts["merged"])
        references, differences = [], []
        for name in REFERENCES:
            values = getattr(view, name)
            if not all(t in values for t in tasks):
                continue
            ref_mean, ref_error = self.mean_with_error(values, view.counts[name])
            references.append(f'<span class="fmv-reference" data-name="{name}" data-value="{ref_mean / 100:.6f}">'
                              f'{html.escape(REFERENCES[name])} {ref_mean:.1f}{plus_minus(ref_error)}%</span>')
            delta, spread = mean - ref_mean, math.hypot(error, ref_error)
            verdict = ("noise unknown" if not math.isfinite(spread) else
                       "not resolved: within 2 SE" if not abs(delta) > 2 * spread else "resolved: beyond 2 SE")
            differences.append(f'<span class="fmv-difference" data-name="{name}" data-value="{delta:.4f}" '
                               f'data-resolved="{str(verdict.startswith("resolved")).lower()}">'
                               f'{SHORT_REFERENCES[name]} {delta:+.1f}{plus_minus(spread)} points ({verdict})</span>')
        per_task = " ".join(f'<span class="fmv-task-accuracy" data-task="{html.escape(t)}" '
                            f'data-value="{view.accuracy[t]:.6f}">{html.escape(t)} {100 * view.accuracy[t]:.1f}%'
                            f'</span>' for t in tasks)
        nothing = (f'<br><b class="fmv-nothing-kept">No bin of {html.escape(view.key)} is kept: its merged delta '
                   'is zero.</b>') if view.nothing_kept else ""
        unfiltered = self.model.unfiltered_note(self.values)
        return (f'<div class="fmv-accuracy" data-revision="{self.pane.revision + 1}"><b>mean merged accuracy '
                f'<span class="fmv-mean-accuracy" data-value="{np.mean([view.accuracy[t] for t in tasks]):.6f}">'
                f'{mean:.1f}{plus_minus(error)}%</span></b> {self._basis_html(view, error)}'
                f'<br>merged − reference: {" · ".join(differences)}'
                f'<br>references: {" · ".join(references)}<br>{per_task} · kept '
                f'{_share(view.kept_fraction)} of the bins of {html.escape(view.key)}{nothing}'
                f'{"<br>" + html.escape(unfiltered) if unfiltered else ""}'
                f'{"<br>" + html.escape(self.scope_note) if self.scope_note else ""}</div>')

    def _basis_html(self, view: CutoffView, error: float) -> str:
        """What the shown numbers rest on (inputs per task, ±1 binomial SE) and where refinement stands."""
        counts = [c for c in view.counts["merged"].values() if c is not None]
        state = view.refinement["state"]
        if state == "fixed":
            if math.isfinite(error):
                return f"on the evaluator's data ({sum(counts)} {self.unit} in all), ±1 binomial SE"
            return html.escape("on the evaluator's data; standard error unknown: it gave accuracies without image "
                               "counts (return {task: (correct, total)} to have them)")
        fewest = view.refinement["fewest_per_task"]
        text = {"refining": f"refining towards ±{self.target_se:g} point…",
                "settled": f"settled: SE ≤ {self.target_se:g} point",
                "whole split": "the whole split"}[state]
        return (f'<span class="fmv-refinement" data-state="{state}" data-fewest="{fewest}" data-se="{error:.6f}" '
                f'data-total="{sum(counts)}">on {count_range(counts)} {html.escape(self.eval_description)} per task '
                f'({sum(counts)} in all; references on ≥ {fewest} per task), ±1 binomial SE · <b>{text}</b></span>')

    def static_figure(self):
        """The current view as a matplotlib figure (what :meth:`export` writes as PNG/SVG/PDF)."""
        import matplotlib

        from ..plots.core import new_figure

        view = self._view
        fig, axes = new_figure(2, 2, size=(13.0, 9.0))
        (ax_spec, ax_gain), (ax_var, ax_acc) = axes
        h, w = view.spectrum.values.shape
        extent = (-(w // 2) - 0.5, (w - 1) // 2 + 0.5, -(h // 2) - 0.5, (h - 1) // 2 + 0.5)
        cmap = matplotlib.colormaps["magma"].with_extremes(bad=ZERO_COLOR)
        image = ax_spec.imshow(np.ma.masked_invalid(view.spectrum.values), cmap=cmap, origin="lower",
                               aspect="auto", extent=extent, interpolation="nearest",
                               vmin=view.spectrum.vmin, vmax=view.spectrum.vmax)
        if view.mask.min() < 0.5 < view.mask.max():
            ax_spec.contour(np.arange(-(w // 2), (w + 1) // 2), np.arange(-(h // 2), (h + 1) // 2), view.mask,
                            levels=[0.5], colors="cyan", linewidths=1.0)
        fig.colorbar(image, ax=ax_spec, label="ln |F(v)| (1st–99.5th percentile)")
        variance_note, caption = self._notes(view)
        ax_spec.set_title(f"(a) {view.key}, task {view.task}" + (f"\n{caption}" if caption else ""), fontsize=8)
        ax_spec.set_xlabel("column frequency γ (bins)")
        ax_spec.set_ylabel("row frequency η (bins)")
        gain = ax_gain.imshow(view.mask, cmap="Greys_r", vmin=0.0, vmax=1.0, origin="lower", aspect="auto",
                              extent=extent, interpolation="nearest")
        fig.colorbar(gain, ax=ax_gain, label="filter gain H")
        ax_gain.set_title(f"(b) filter gain, kept {_share(view.kept_fraction)} of bins", fontsize=9)
        ax_gain.set_xlabel("column frequency γ (bins)")
        x = np.arange(2)
        for offset, (label, values, colour) in zip((-0.2, 0.2), (
                ("raw", view.variance, "#4c78a8"), ("÷ mean amplitude", view.normalized_variance, "#f58518"))):
            changes = [_change_percent(values[i], values[0]) for i in (1, 2)]
            bars = ax_var.bar(x + offset, np.nan_to_num(changes), 0.4, color=colour, label=label)
            for bar, change in zip(bars, changes):
                ax_var.annotate("n/a" if not math.isfinite(change) else f"{change:+.1f}%",
                                (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                                va="bottom" if bar.get_height() >= 0 else "top", fontsize=8)
        ax_var.axhline(0, color="#888", lw=0.8)
        ax_var.set_xticks(x, ["all bins", "kept bins"])
        ax_var.set_ylabel("change vs unfiltered (%)")
        scope = "this matrix" if self.values["variance_over"] == "matrix" else "mean over all matrices"
        ax_var.set_title(f"(c) amplitude variance ({scope})\n{variance_note}", fontsize=8)
        ax_var.legend(fontsize=8)
        xs = np.arange(len(self.eval_tasks))
        accuracy = as_percent([view.accuracy[t] for t in self.eval_tasks])
        ax_acc.bar(xs, accuracy, color="#54a24b", label="merged", yerr=self._errors(view.accuracy, view.counts["merged"]),
                   ecolor="#333", capsize=2)
        for name, values, marker, colour in (("no_filter", view.no_filter, "o", "#e45756"),
                                             ("no_merge", view.no_merge, "x", "#222"),
                                             ("finetuned", view.finetuned, "_", "#222")):
            ax_acc.scatter(xs, as_percent([values.get(t, np.nan) for t in self.eval_tasks]), marker=marker,
                           s=200 if marker == "_" else 40, color=colour if marker != "o" else "none",
                           edgecolors=colour if marker == "o" else None, label=REFERENCES[name], zorder=3)
            ax_acc.errorbar(xs, as_percent([values.get(t, np.nan) for t in self.eval_tasks]),
                            yerr=self._errors_or_nan(values, view.counts[name]), fmt="none", ecolor=colour,
                            elinewidth=0.8, capsize=2, zorder=3)
        ax_acc.set_xticks(xs, self.eval_tasks, rotation=30, ha="right", fontsize=8)
        ax_acc.set_ylim(0, 105)
        ax_acc.set_ylabel("accuracy (%)")
        mean, error = self.mean_with_error(view.accuracy, view.counts["merged"])
        counts = [c for c in view.counts["merged"].values() if c is not None]
        fewest = view.refinement["fewest_per_task"]
        basis = (f"{count_range(counts)} {self.eval_description} per task, references on ≥ {fewest}" if counts
                 else "evaluator's data")
        ax_acc.set_title(f"(d) merged accuracy, mean {mean:.1f}{plus_minus(error)}% ({basis})", fontsize=9)
        ax_acc.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        v = self.values
        band = f"[{v['cutoff']:.3f}, {v['upper_cutoff']:.3f})" if v["band"] == "band" else f"{v['cutoff']:.3f}"
        fig.suptitle(f"{v['method']}: {v['kind']} {v['band']}-pass, cutoff ρ = {band}, scaling {v['scaling']:.2f}"
                     + (" — no bin of this matrix kept" if view.nothing_kept else ""), fontsize=10)
        return fig


def _summary(result) -> tuple[float, float]:
    """(mean raw variance over the result's matrices, the result's normalised mean)."""
    return float(result.per_matrix["variance"].mean()), float(result.mean)


