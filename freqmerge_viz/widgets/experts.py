"""ExpertExplorer: what a task expert of a given density does alone, and what routing errors cost.

Two sliders, expert density ``d`` (fraction of each tensor's entries an expert keeps) and
router accuracy ``p`` (share of inputs a :class:`~freqmerge_viz.routing.RandomRouter` sends to
their own task), and three panels updated in place:

(a) expert-only accuracy ``θ_pre + e_t`` on task ``t`` at ``d``, for the experts of
    :class:`~freqmerge_viz.analysis.experts_curves.ExpertKinds` (top-k, top-k with Eq. 4's μ,
    Bernoulli, SVD at the top-k expert's storage), with the fine-tuned and pretrained models;
(b) mean accuracy of FREE (its experts at ``d``), EMR and Twin routed by ``RandomRouter(K, p, seed)``
    over the p grid, the current p marked: :func:`~freqmerge_viz.analysis.router_robustness.robustness_table`
    over per-input outcomes from :func:`~freqmerge_viz.analysis.router_robustness.correctness`;
(c) extra storage per task at ``d`` (each expert's bytes, % of one float32 model).

What the sliders do not change is computed once: task vectors, evaluation images, SVD
storage by rank and the SVDs themselves (cut to each density's rank), FREE's FR backbone (only
its experts are extracted per density), EMR's and Twin's per-input outcomes. Outcomes, expert
accuracies and storage are kept per density, so a p change is only a re-draw of routes (a
gather) and a density walked back is not recomputed.

Progressive accuracy (issue #23): a density is answered at once on the first ``eval_per_task``
images of each task (the fast estimate), then a :class:`~freqmerge_viz.widgets.refine.Refiner`
keeps refining the same setting in the background, one short step at a time: the next
``refine_chunk`` images of one task for the least refined unsettled number (an expert kind's or
a reference's accuracy on that task, or one routed task state's per-input outcomes on it,
:func:`~freqmerge_viz.analysis.router_robustness.state_outcomes`). Chunks follow the split's
order and tasks grow level, so estimates nest; a number stops at the first level count whose
mean's binomial standard error (:func:`~freqmerge_viz.stats.mean_se`) is at most ``target_se``
points (a routed merge: at every p of the grid and the p shown), or at the split's end. Routes
are drawn for the whole split and the first n used
(:func:`~freqmerge_viz.analysis.router_robustness.draw_routes`), so an input keeps its route as
inputs are added, and a p change routes the outcomes refined so far without evaluating anything.
A control change cancels the queued step; refined numbers stay with their density (the
references and EMR's and Twin's outcomes with the explorer). The summary says how many images
each number rests on and whether each routed merge's and expert kind's difference to each
reference is resolved (beyond 2 SE); ``refine=False`` keeps the first estimate (and the routes
earlier versions drew).

Measured on the demo zoo (2 CPU cores busy with other work, 1 torch thread, 16 val images per
task first, target 1 point, the default kinds and merges): construction about 5 s plus a first
update of about 1.9 s; a new density's first estimate 1.9–2.3 s (experts of 4 kinds about
1–1.4 s, FREE rebuilt and its 8 × 8 × 16 outcomes about 0.9–1.1 s). The first density then
settles in about 41 s of one core (2040 steps of about 20 ms: it also refines the references and
EMR's and Twin's outcomes, which later densities reuse); a later density in about 15 s (750
steps). At settle the expert kinds rest on 144–240 images per task, the routed merges on 272–304
(their accuracies near 50% at small p need the most), the references on 144–272; the largest
standard error of a shown mean goes from 3.8–3.9 points (first estimate) to at most 1.0. After
refinement a p change takes 10–16 ms (30–50 ms before, at 16 images) and a refined density
walked back 14 ms, both without evaluating anything.
"""

from __future__ import annotations

import html
import math
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..study import as_study, is_study, study_evaluator
from ..errors import ParameterError, check_choice, check_positive_int
from ..experts import check_density, storage_table
from ..methods import list_routed_methods, routed_merge
from ..analysis.evaluation import (analysed_keys, backbone_numel, evaluate_per_task, finetuned_subset,
                                   individual_accuracies, materialize, study_task_vectors, study_tasks)
from ..analysis.experts_curves import KINDS, ExpertKinds, expert_state
from ..analysis.router_robustness import (ROUTER_ACCURACIES, ROUTED_ROWS, correctness, robustness_table,
                                          state_outcomes)
from ..backend import torch_threads
from ..methods import merge
from ..plots.scales import as_percent, binomial_se, mean_se, plus_minus
from .base import DEBOUNCE_S, Explorer, Schedule
from .refine import Refiner, Tally, count_range, inputs_between

DENSITY_STEPS = tuple(sorted({float(f"{10 ** (k / 10 - 3):.2g}") for k in range(27)} | {0.5}))
"""The density slider's stops: 10 per decade from 0.001 to 0.5 (fractions of entries kept)."""
DEFAULT_KINDS = ("topk", "topk_rescaled", "bernoulli_rescaled", "svd")
KIND_LABELS = {"topk": "top-k", "topk_rescaled": "top-k + μ (Eq. 4)", "bernoulli": "Bernoulli",
               "bernoulli_rescaled": "Bernoulli ÷ d (DARE)", "svd": "SVD, matched storage"}
METHOD_LABELS = {"free": "FREE", "emr": "EMR", "twin": "Twin"}
DEFAULT_ROUTED_PARAMS = {"free": {"preset": "paper"}, "emr": {}, "twin": {"rank": 8}}
"""Routed merges' parameters when ``routed_params`` is not given (FREE's ``density`` comes from the slider)."""
SHORT_LABELS = {"top-k + μ (Eq. 4)": "top-k+μ", "Bernoulli ÷ d (DARE)": "Bern.÷d", "SVD, matched storage": "SVD"}
"""Storage-axis names short enough not to collide at a 1000 px notebook width."""
COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2")
REFERENCES = ("task_arithmetic", "pretrained", "finetuned")
"""The reference models, in the order the summary and panel (b) list them."""
SHORT_REFERENCES = {"task_arithmetic": "vs TA", "pretrained": "vs no merge", "finetuned": "vs fine-tuned"}
TARGET_SE = 1.0
"""Standard error (percentage points) of each shown mean accuracy at which refinement stops."""
REFINE_CHUNK = 32
"""Inputs one refinement step adds to one number on one task (for a routed merge: one task
state's outcomes on one task's next inputs); on the demo zoo about 15 ms, the longest a control
event waits behind a step."""
BUILT_DENSITIES = 2
"""Densities whose experts and FREE merge are kept to refine with (the rest are rebuilt when a
density is refined again; their numbers are kept for every density)."""
ROUTE_CACHE = 4096
"""Routed accuracies (per merge, density, inputs and p) kept, so a p walked back is not re-routed."""


@dataclass(frozen=True)
class ExpertView:
    """Everything one update shows (numbers in [0, 1] unless named otherwise).

    ``expert_counts`` (kind -> {task: inputs}), ``routed_counts`` (method -> inputs per task) and
    ``reference_counts`` say what each number rests on; ``references`` are the reference models'
    accuracies (name of :data:`REFERENCES` -> {task: accuracy}); ``refinement`` is
    :meth:`ExpertModel.refinement` of the setting.
    """

    density: float
    router_accuracy: float
    expert_accuracy: dict          # kind -> {task: accuracy}
    expert_parameters: dict        # kind -> mean numbers stored per task
    storage_percent: dict          # label -> mean bytes per task, % of one float32 model
    routed_accuracy: dict          # method -> {task: accuracy at p}
    routed_curve: dict             # method -> [mean accuracy at each of ps]
    measured_router_accuracy: float
    ps: tuple
    routed_curve_se: dict = field(default_factory=dict)   # method -> [its standard error at each of ps]
    expert_counts: dict = field(default_factory=dict)
    routed_counts: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)
    reference_counts: dict = field(default_factory=dict)
    refinement: dict = field(default_factory=dict)


class _Outcomes:
    """Per-input outcomes ``correct[s, t, i]`` of one routed merge, grown chunk by chunk: cell
    ``(s, t)`` holds its first ``filled[s, t]`` inputs (each chunk the next inputs of task ``t``
    in the split's order); the routed numbers use the first ``level`` (all cells have them)."""

    def __init__(self, first: torch.Tensor, size: int):
        k, n = first.shape[0], first.shape[-1]
        self.size = max(int(size), n)
        self.correct = torch.zeros(k, k, self.size, dtype=first.dtype)
        self.correct[..., :n] = first
        self.filled = np.full((k, k), n, dtype=np.int64)

    @property
    def level(self) -> int:
        return int(self.filled.min())

    @property
    def even(self) -> bool:
        return int(self.filled.max()) == self.level

    def table(self) -> torch.Tensor:
        return self.correct[..., :self.level]

    def next_cell(self) -> tuple[int, int] | None:
        """The least filled cell (state-major on ties, so consecutive steps share a state)."""
        open_cells = np.argwhere(self.filled < self.size)
        if not len(open_cells):
            return None
        s, t = min(open_cells.tolist(), key=lambda c: (self.filled[c[0], c[1]], c[0], c[1]))
        return int(s), int(t)

    def add(self, s: int, t: int, values: torch.Tensor) -> None:
        lo = int(self.filled[s, t])
        self.correct[s, t, lo:lo + len(values)] = values
        self.filled[s, t] = lo + len(values)


@dataclass
class _Density:
    """What the explorer has measured at one density (kept for every density shown)."""

    experts: dict          # kind -> Tally
    parameters: dict
    storage: dict
    free: _Outcomes | None


class ExpertModel:
    """What the expert explorer computes, without any widget: experts per density, routed merges'
    per-input outcomes, references, :meth:`compute` of one :class:`ExpertView` per setting and
    :meth:`refine_step` (tests drive it headless). Arguments as :class:`ExpertExplorer`'s;
    `refine` False keeps the first estimate (and draws routes as :func:`robustness_table` always
    did, for exactly the first `eval_per_task` inputs).
    """

    def __init__(self, zoo, *, density: float = 0.01, methods: Sequence[str] = ("free", "emr", "twin"),
                 kinds: Sequence[str] = DEFAULT_KINDS, eval_split: str = "val", eval_per_task: int = 16, seed: int = 0,
                 tasks: Sequence[str] | None = None, routed_params: Mapping[str, Mapping] | str | None = None,
                 ps: Sequence[float] = ROUTER_ACCURACIES, threads: int | None = 1, refine: bool = True,
                 target_se: float = TARGET_SE, refine_limit: int | None = None, refine_chunk: int = REFINE_CHUNK):
        if isinstance(zoo, (str, os.PathLike)):
            zoo = as_study(zoo)
        if not is_study(zoo):
            raise ParameterError(f"ExpertExplorer needs a study (freqmerge_viz.load_study(...) or the zoo), "
                                 f"got {type(zoo).__name__}")
        for kind in kinds:
            check_choice("kind", kind, KINDS)
        for method in methods:
            check_choice("method", method, list_routed_methods())
        if not kinds and not methods:
            raise ParameterError("ExpertExplorer needs at least one expert kind or routed method")
        if not target_se > 0:
            raise ParameterError(f"target_se must be > 0 percentage points, got {target_se!r}")
        self.zoo = zoo
        self.kinds = list(kinds)
        self.methods = list(methods)
        self.default_density = density
        self.eval_split = eval_split
        self.eval_per_task = check_positive_int("eval_per_task", eval_per_task)
        self.seed = seed
        self.threads = threads
        self.refinable = bool(refine)
        self.target_se = float(target_se)
        self.refine_chunk = check_positive_int("refine_chunk", refine_chunk)
        self.ps = tuple(sorted({float(p) for p in ps}))
        self.unit = getattr(zoo, "unit", "images")
        self.timings: dict[str, float] = {}
        self.cache_stats: dict[str, int] = {"refinement_steps": 0, "rebuilt_experts": 0, "rebuilt_free": 0}
        start = time.perf_counter()
        with torch_threads(threads):
            self.tasks = study_tasks(zoo, tasks)
            self._split_data(refine_limit)
            self._vectors = study_task_vectors(zoo, self.tasks)
            self._pretrained = materialize(zoo.pretrained)
            self._numel = backbone_numel(zoo)
            self._model_bytes = 4 * self._numel
            self._experts = ExpertKinds(self._vectors, seed)
            self._merge_inputs = self._vectors if analysed_keys(zoo) is None else finetuned_subset(zoo, self.tasks)
            """What the routed merges take: the task vectors in memory where they hold every key of the
            models, else the fine-tuned models (as the method comparison builds them)."""
            self._free = None
            self.routed_params = self._routed_params(routed_params)
            self.ta_scaling = self._ta_scaling(zoo)
            self._ta_state = materialize(merge("task_arithmetic", zoo.pretrained, finetuned_subset(zoo, self.tasks),
                                               scaling=self.ta_scaling))
            finetuned = individual_accuracies(zoo, self.tasks, split=eval_split, limit=eval_per_task)
            pretrained = self._evaluate({t: [self._pretrained] for t in self.tasks})
            task_arithmetic = self._evaluate({t: [self._ta_state] for t in self.tasks})
            self.eval_counts = {t: len(zoo.data(t, eval_split)[1][:eval_per_task]) for t in self.tasks}
            """Inputs per task of the first estimate (what a setting shows at once)."""
            self._references = {name: Tally(values, dict(self.eval_counts)) for name, values in
                                (("task_arithmetic", task_arithmetic), ("pretrained", pretrained),
                                 ("finetuned", finetuned))}
            self._fixed_routed = {m: self.routed(m) for m in self.methods if m != "free"}
            self._fixed_outcomes = {m: _Outcomes(self._first_outcomes(routed), self.routed_size)
                                    for m, routed in self._fixed_routed.items()}
            self._fixed_storage = {m: self._storage_of(m, routed) for m, routed in self._fixed_routed.items()}
        self.timings["init_ms"] = 1e3 * (time.perf_counter() - start)
        self._by_density: dict[float, _Density] = {}
        self._built: OrderedDict = OrderedDict()
        self._state_slot: tuple = (None, None)
        self._route_cache: OrderedDict = OrderedDict()

    # ------------------------------------------------------------------ inputs
    def _split_data(self, refine_limit: int | None) -> None:
        """Evaluators over each task's split (up to the refinement limit) and the split sizes."""
        limit = getattr(self.zoo, "default_limit", None) if refine_limit is None else refine_limit
        if limit is not None:
            check_positive_int("refine_limit", limit)
            limit = max(limit, self.eval_per_task)
        options = {"batch_size": getattr(self.zoo, "batch_size", 1000), "device": getattr(self.zoo, "device", None)}
        self._evaluators = {t: study_evaluator(self.zoo, t, self.eval_split, limit, **options) for t in self.tasks}
        self.split_sizes = {t: len(ev.labels) for t, ev in self._evaluators.items()}
        self.routed_size = min(self.split_sizes.values())
        """Inputs per task the routed merges can be refined to (the fewest any task has)."""
        self.route_draw = self.routed_size if self.refinable else None
        """Routes are drawn for this many inputs per task and the first n used, so they nest
        as inputs are added (:func:`~freqmerge_viz.analysis.router_robustness.draw_routes`)."""

    @staticmethod
    def _ta_scaling(zoo) -> float:
        """The zoo's validation-chosen task-arithmetic coefficient (manifest), else 0.3."""
        chosen = (getattr(zoo, "manifest", None) or {}).get("accuracy", {}).get("task_arithmetic", {}).get("scaling")
        return float(chosen) if chosen is not None else 0.3

    def _evaluate(self, states_by_task) -> dict[str, float]:
        return evaluate_per_task(self.zoo, states_by_task, split=self.eval_split, limit=self.eval_per_task
                                 ).set_index("task")["accuracy"].astype(float).to_dict()

    @property
    def finetuned_accuracy(self) -> dict[str, float]:
        """Each task's fine-tuned model on its own task (fractions), refined so far."""
        return dict(self._references["finetuned"].accuracy)

    @property
    def pretrained_accuracy(self) -> dict[str, float]:
        """The pretrained backbone with each task's head (fractions), refined so far."""
        return dict(self._references["pretrained"].accuracy)

    @property
    def task_arithmetic_accuracy(self) -> dict[str, float]:
        """Task arithmetic at :attr:`ta_scaling` (fractions), refined so far."""
        return dict(self._references["task_arithmetic"].accuracy)

    def reference_labels(self) -> dict[str, str]:
        return {"task_arithmetic": f"task arithmetic (λ = {self.ta_scaling:g})",
                "pretrained": "no merge (pretrained + heads)", "finetuned": "fine-tuned"}

    def reference_means(self) -> dict[str, tuple[float, float]]:
        """Mean accuracy over tasks with its standard error (percent) of the reference models, refined so far."""
        labels = self.reference_labels()
        return {labels[name]: self.mean_with_error(self._references[name].accuracy, self._references[name].counts)
                for name in REFERENCES}

    def mean_with_error(self, accuracy: Mapping[str, float], counts: Mapping[str, int] | int) -> tuple[float, float]:
        """(mean over tasks, its standard error), both in percent; `counts`: inputs per task
        (one number when every task has the same)."""
        values = [accuracy[t] for t in self.tasks]
        n = [counts if isinstance(counts, (int, np.integer)) else counts[t] for t in self.tasks]
        return float(as_percent(np.mean(values))), float(as_percent(mean_se(values, n)))

    def settings_label(self, method: str) -> str:
        """The routed merge's settings, short, for its legend entry (FREE's density is the slider's)."""
        params = {k: v for k, v in self.routed_params[method].items() if k != "density"}
        return ", ".join(f"{k} {v}" for k, v in params.items()) or "defaults"

    def _routed_params(self, given) -> dict[str, dict]:
        if given == "chosen":
            from ..analysis.selection import choose

            rows = {m: ROUTED_ROWS[METHOD_LABELS[m]] for m in self.methods}
            choices = choose(self.zoo, [rows[m] for m in self.methods], tasks=self.tasks)
            return {m: dict(choices[rows[m]].params) for m in self.methods}
        if given is not None and not isinstance(given, Mapping):
            raise ParameterError(f"routed_params must be {{method: parameters}} or 'chosen', got {given!r}")
        params = {m: dict(DEFAULT_ROUTED_PARAMS.get(m, {})) for m in self.methods}
        for method, extra in (given or {}).items():
            check_choice("routed_params method", method, self.methods)
            params[method].update(extra)
        if "density" in params.get("free", {}):
            raise ParameterError("FREE's density is the explorer's density slider; leave it out of routed_params")
        return params

    def routed(self, method: str, density: float | None = None):
        """The routed merge `method` as the explorer builds it (FREE with experts at `density`),
        from the task vectors held in memory; FREE's backbone is merged once and only its
        experts are extracted again per density (:meth:`~freqmerge_viz.methods.routed.FreeMerging.with_density`)."""
        density = self.default_density if density is None else density
        if method == "free" and self._free is not None:
            return self._free.with_density(density)
        params = dict(self.routed_params[method])
        if method == "free":
            params["density"] = density
        built = routed_merge(method, self.zoo.pretrained, self._merge_inputs, **params)
        if method == "free":
            self._free = built
        return built

    def _first_outcomes(self, routed) -> torch.Tensor:
        return correctness(self.zoo, routed, self.tasks, split=self.eval_split, limit=self.eval_per_task)

    def _storage_of(self, method: str, routed=None) -> float:
        routed = routed or self.routed(method)
        return float(np.mean(routed.storage_bytes_per_task())) / self._model_bytes * 100.0

    # ------------------------------------------------------------------ first estimate per density
    def _at_density(self, density: float) -> _Density:
        """Expert tallies, parameters, storage and FREE's outcomes at `density` (measured once, then refined)."""
        if density in self._by_density:
            return self._by_density[density]
        start = time.perf_counter()
        states, parameters, storage, built = {t: [] for t in self.tasks}, {}, {}, {}
        for kind, experts in self._experts.build(self.kinds, density).items():
            built[kind] = experts
            table = storage_table(experts, self._numel)
            parameters[KIND_LABELS[kind]] = float(table["parameters_kept"].mean())
            storage[KIND_LABELS[kind]] = float(table["storage_bytes"].mean()) / self._model_bytes * 100.0
            for task, expert in zip(self.tasks, experts):
                states[task].append(expert_state(self._pretrained, expert))
        accuracy = {kind: {} for kind in self.kinds}
        if self.kinds:
            measured = evaluate_per_task(self.zoo, states, split=self.eval_split, limit=self.eval_per_task)
            for task, position, value in zip(measured["task"], measured["state"], measured["accuracy"]):
                accuracy[self.kinds[position]][task] = float(value)
        del states
        self.timings["experts_ms"] = 1e3 * (time.perf_counter() - start)
        free = None
        if "free" in self.methods:
            start = time.perf_counter()
            routed = self.routed("free", density)
            built["free"] = routed
            free = _Outcomes(self._first_outcomes(routed), self.routed_size)
            storage[METHOD_LABELS["free"]] = self._storage_of("free", routed)
            self.timings["free_ms"] = 1e3 * (time.perf_counter() - start)
        for method in self.methods:
            if method != "free":
                storage[METHOD_LABELS[method]] = self._fixed_storage[method]
        self._keep_built(density, built)
        entry = _Density({k: Tally(accuracy[k], dict(self.eval_counts)) for k in self.kinds}, parameters, storage, free)
        self._by_density[density] = entry
        return entry

    def _keep_built(self, density: float, built: dict) -> None:
        self._built[density] = built
        self._built.move_to_end(density)
        while len(self._built) > BUILT_DENSITIES:
            self._built.popitem(last=False)

    def _built_at(self, density: float) -> dict:
        """The experts (kind -> list) and FREE merge at `density`, rebuilt when no longer kept
        (they are deterministic: the same seed gives the same experts)."""
        if density not in self._built:
            self._keep_built(density, {})
        self._built.move_to_end(density)
        return self._built[density]

    def _expert_state(self, density: float, kind: str, task: str):
        key = ("expert", density, kind, task)
        if self._state_slot[0] != key:
            built = self._built_at(density)
            if kind not in built:
                built[kind] = self._experts.build([kind], density)[kind]
                self.cache_stats["rebuilt_experts"] += 1
            self._state_slot = (key, expert_state(self._pretrained, built[kind][self.tasks.index(task)]))
        return self._state_slot[1]

    def _routed_state(self, method: str, density: float | None, s: int):
        key = ("routed", method, density, s)
        if self._state_slot[0] != key:
            if method == "free":
                built = self._built_at(density)
                if "free" not in built:
                    built["free"] = self.routed("free", density)
                    self.cache_stats["rebuilt_free"] += 1
                routed = built["free"]
            else:
                routed = self._fixed_routed[method]
            self._state_slot = (key, materialize(routed.task_state(s)))
        return self._state_slot[1]

    def _reference_state(self, name: str, task: str):
        if name == "task_arithmetic":
            return self._ta_state
        return self._pretrained if name == "pretrained" else self.zoo.finetuned[task]

    # ------------------------------------------------------------------ routes
    def _routed_numbers(self, method: str, density: float | None, outcomes: _Outcomes, qs) -> dict:
        """``{q: ({task: accuracy}, measured router accuracy)}`` of `method`'s outcomes at their
        level, for each router accuracy in `qs` (cached: a p walked back is not routed again)."""
        label, n = METHOD_LABELS[method], outcomes.level
        keys = {q: (method, density, n, float(q)) for q in qs}
        missing = sorted({q for q, key in keys.items() if key not in self._route_cache})
        if missing:
            table = robustness_table({label: outcomes.table()}, self.tasks, missing, self.seed, draw=self.route_draw)
            for q, rows in table.groupby("p", sort=False):
                self._route_cache[(method, density, n, float(q))] = (
                    dict(zip(rows["task"], rows["accuracy"].astype(float))), float(rows["router_accuracy"].mean()))
            while len(self._route_cache) > ROUTE_CACHE:
                self._route_cache.popitem(last=False)
        return {q: self._route_cache[key] for q, key in keys.items()}

    def _routed_se(self, method: str, density: float | None, outcomes: _Outcomes, p: float) -> float:
        """The largest standard error (percent) of the routed merge's mean over the p grid and `p`."""
        numbers = self._routed_numbers(method, density, outcomes, sorted(set(self.ps) | {p}))
        return max(self.mean_with_error(accuracy, outcomes.level)[1] for accuracy, _ in numbers.values())

    # ------------------------------------------------------------------ refinement
    def _targets(self, density: float) -> list[tuple]:
        """What a density shows, each ``(kind, name, tally or outcomes, density key)``: the
        expert kinds, the routed merges (FREE at `density`) and the references."""
        entry = self._at_density(density)
        targets = [("expert", kind, entry.experts[kind], density) for kind in self.kinds]
        for method in self.methods:
            targets.append(("routed", method, entry.free, density) if method == "free"
                           else ("routed", method, self._fixed_outcomes[method], None))
        targets += [("reference", name, self._references[name], None) for name in REFERENCES]
        return targets

    def _tally_settled(self, tally: Tally) -> bool:
        """Whether `tally` needs no more inputs: the whole split, or its tasks level with the
        mean's standard error at most ``target_se`` points."""
        if not self.refinable or all(tally.counts[t] >= self.split_sizes[t] for t in self.tasks):
            return True
        if len({c for t, c in tally.counts.items() if c < self.split_sizes[t]}) > 1:
            return False
        return self.mean_with_error(tally.accuracy, tally.counts)[1] <= self.target_se

    def _settled(self, target: tuple, p: float) -> bool:
        kind, name, held, density = target
        if kind != "routed":
            return self._tally_settled(held)
        if not self.refinable or held.level >= held.size:
            return True
        return held.even and self._routed_se(name, density, held, p) <= self.target_se

    @staticmethod
    def _progress(target: tuple) -> float:
        held = target[2]
        return float(held.filled.mean()) if isinstance(held, _Outcomes) else held.inputs() / len(held.counts)

    def refinement(self, values: Mapping) -> dict:
        """Where refinement of the setting `values` stands: ``state`` (``"refining"``,
        ``"settled"``: every shown mean's standard error at most ``target_se_percent`` points,
        ``"whole split"``, or ``"fixed"``: refinement off), the fewest inputs per task behind any
        shown number, the most the split offers, and the largest standard error of a shown mean."""
        density, p = float(values["density"]), float(values["router_accuracy"])
        targets = self._targets(density)
        counts = [c for _, _, held, _ in targets for c in self._counts(held).values()]
        if not self.refinable:
            state = "fixed"
        elif not all(self._settled(target, p) for target in targets):
            state = "refining"
        elif all(c >= self.split_sizes[t] for _, _, held, _ in targets for t, c in self._counts(held).items()):
            state = "whole split"
        else:
            state = "settled"
        return {"state": state, "fewest_per_task": min(counts), "split_per_task": max(self.split_sizes.values()),
                "target_se_percent": self.target_se}

    def _counts(self, held) -> dict[str, int]:
        if isinstance(held, _Outcomes):
            return {t: held.level for t in self.tasks}
        return dict(held.counts)

    def refine_step(self, values: Mapping) -> bool:
        """Add the next chunk of inputs (``refine_chunk``) of one task to the least refined
        unsettled number of the setting `values` (an expert kind's or a reference's accuracy on
        that task, or one routed task state's outcomes on it); tasks take turns, so a number
        stops only when its tasks are level. Returns whether any number is still unsettled."""
        density, p = float(values["density"]), float(values["router_accuracy"])
        with torch_threads(self.threads):
            open_targets = [t for t in self._targets(density) if not self._settled(t, p)]
            if not open_targets:
                return False
            target = min(open_targets, key=self._progress)
            kind, name, held, key = target
            if kind == "routed":
                s, t = held.next_cell()
                lo = int(held.filled[s, t])
                values_ = state_outcomes(self.zoo, self._routed_state(name, key, s), self.tasks[t],
                                         split=self.eval_split, start=lo, stop=min(lo + self.refine_chunk, held.size))
                held.add(s, t, values_)
            else:
                task = min((t for t in self.tasks if held.counts[t] < self.split_sizes[t]),
                           key=lambda t: held.counts[t])
                state = (self._expert_state(density, name, task) if kind == "expert"
                         else self._reference_state(name, task))
                done = held.counts[task]
                evaluator = inputs_between(self._evaluators[task], done,
                                            min(done + self.refine_chunk, self.split_sizes[task]))
                held.add(task, float(evaluator([state]).accuracy[0]), len(evaluator.labels))
            self.cache_stats["refinement_steps"] += 1
            return len(open_targets) > 1 or not self._settled(target, p)

    # ------------------------------------------------------------------ settings -> view
    def check(self, values):
        check_density(values["density"])
        p = values["router_accuracy"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ParameterError(f"router_accuracy must be a probability in [0, 1], got {p!r}")

    def compute(self, values) -> ExpertView:
        self.timings = {}
        density, p = float(values["density"]), float(values["router_accuracy"])
        with torch_threads(self.threads):
            entry = self._at_density(density)
        start = time.perf_counter()
        routed, curve, curve_se, counts, measured = {}, {}, {}, {}, float("nan")
        for method in self.methods:
            label = METHOD_LABELS[method]
            outcomes = entry.free if method == "free" else self._fixed_outcomes[method]
            numbers = self._routed_numbers(method, density if method == "free" else None, outcomes,
                                           sorted(set(self.ps) | {p}))
            curve[label] = [float(np.mean([numbers[q][0][t] for t in self.tasks])) for q in self.ps]
            curve_se[label] = [self.mean_with_error(numbers[q][0], outcomes.level)[1] / 100.0 for q in self.ps]
            routed[label] = dict(numbers[p][0])
            counts[label] = outcomes.level
            if math.isnan(measured):
                measured = numbers[p][1]
        self.timings["routes_ms"] = 1e3 * (time.perf_counter() - start)
        return ExpertView(density, p, {k: dict(tally.accuracy) for k, tally in entry.experts.items()},
                          dict(entry.parameters), dict(entry.storage), routed, curve, measured, self.ps,
                          routed_curve_se=curve_se,
                          expert_counts={k: dict(tally.counts) for k, tally in entry.experts.items()},
                          routed_counts=counts,
                          references={name: dict(self._references[name].accuracy) for name in REFERENCES},
                          reference_counts={name: dict(self._references[name].counts) for name in REFERENCES},
                          refinement=self.refinement(values))

    def _curve_errors(self, view: ExpertView, method: str) -> list[float]:
        """±1 SE (percent) of the routed merge's mean at each p of the grid (from its per-task accuracies)."""
        if method in view.routed_curve_se:
            return [float(as_percent(se)) for se in view.routed_curve_se[method]]
        counts = [self.eval_counts[t] for t in self.tasks]
        return [float(as_percent(mean_se([m] * len(counts), counts))) for m in view.routed_curve[method]]




class ExpertExplorer(Explorer):
    """Expert density and router accuracy sliders over a study (see the module docstring).

    Settings (``values``): ``density`` (fraction of entries kept, in (0, 1]; the slider walks
    :data:`DENSITY_STEPS`, :meth:`set` takes any fraction) and ``router_accuracy`` ``p`` in [0, 1].
    A density is answered at once with accuracies on the first `eval_per_task` images of each
    task's `eval_split`; then, with `refine`, the same density is refined in the background
    (``refine_chunk`` more images of one task per step, in the split's order) until every shown
    mean's standard error is at most `target_se` points or the split (at most `refine_limit`
    images per task) is used. A p change uses the outcomes refined so far.
    `kinds` are expert kinds of :mod:`~freqmerge_viz.analysis.experts_curves`; `methods` routed
    merges; `routed_params` ``{method: parameters}`` (default :data:`DEFAULT_ROUTED_PARAMS`) or
    ``"chosen"`` for the zoo comparison's validation-chosen settings
    (:func:`~freqmerge_viz.analysis.selection.choose`, slow on first use). `seed` seeds the
    Bernoulli masks and the router; `ps` is the p grid of panel (b).
    """

    export_div_id = "freqmerge-expert-explorer"
    default_export = "expert_explorer.html"

    def __init__(self, zoo, *, density: float = 0.01, router_accuracy: float = 1.0,
                 methods: Sequence[str] = ("free", "emr", "twin"), kinds: Sequence[str] = DEFAULT_KINDS,
                 eval_split: str = "val", eval_per_task: int = 16, seed: int = 0, tasks: Sequence[str] | None = None,
                 routed_params: Mapping[str, Mapping] | str | None = None, ps: Sequence[float] = ROUTER_ACCURACIES,
                 threads: int | None = 1, refine: bool = True, target_se: float = TARGET_SE,
                 refine_limit: int | None = None, refine_chunk: int = REFINE_CHUNK, debounce: float = DEBOUNCE_S,
                 schedule: Schedule | None = None):
        super().__init__(debounce=debounce, schedule=schedule)
        self.model = ExpertModel(zoo, density=density, methods=methods, kinds=kinds, eval_split=eval_split,
                                 eval_per_task=eval_per_task, seed=seed, tasks=tasks, routed_params=routed_params,
                                 ps=ps, threads=threads, refine=refine, target_se=target_se,
                                 refine_limit=refine_limit, refine_chunk=refine_chunk)
        self._view: ExpertView | None = None
        self.values = {"density": density, "router_accuracy": router_accuracy}
        if refine:
            self.refiner = Refiner(self._refine_step, self._lock, schedule)
        self._start()

    def routed(self, method: str, density: float | None = None):
        """The routed merge `method` as the explorer builds it (FREE's experts at the shown density)."""
        return self.model.routed(method, self.values["density"] if density is None else density)

    # ------------------------------------------------------------------ display
    def _build_controls(self) -> None:
        import ipywidgets as w

        wide = {"description_width": "initial"}
        density = w.SelectionSlider(options=self._density_options(self.values["density"]),
                                    value=self.values["density"], continuous_update=True, style=wide,
                                    description="expert density d (fraction of entries kept, log steps)",
                                    tooltip="fraction of each tensor's entries an expert keeps; stops are "
                                            "log-spaced, 10 per decade, 0.001 to 0.5",
                                    layout=w.Layout(width="560px"))
        router = w.FloatSlider(value=self.values["router_accuracy"], min=0.0, max=1.0, step=0.01,
                               readout_format=".2f", continuous_update=True, style=wide,
                               description="router accuracy p (share routed to own task)",
                               tooltip="RandomRouter: each input goes to its own task with probability p, "
                                       "else to a uniformly drawn other task",
                               layout=w.Layout(width="480px"))
        for name, control in (("density", density), ("router_accuracy", router)):
            control.add_class(f"fmv-{name.replace('_', '-')}")
            self._bind(name, control)

    @staticmethod
    def _density_options(density) -> list:
        values = set(DENSITY_STEPS)
        if isinstance(density, (int, float)) and not isinstance(density, bool):
            values.add(float(density))
        return [(f"{d:g}", d) for d in sorted(values)]

    def _sync_controls(self, values) -> None:
        slider = self.controls.get("density")
        density = values.get("density")
        if slider is not None and density not in [v for _, v in slider.options]:
            self._syncing = True
            try:
                slider.options = self._density_options(density)
            finally:
                self._syncing = False
        super()._sync_controls(values)

    def _build_figure(self) -> None:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], column_widths=[0.62, 0.38],
                            horizontal_spacing=0.1, vertical_spacing=0.15,
                            subplot_titles=("(a) expert only: θ_pre + e_t on task t",
                                            "(b) routed merges vs router accuracy p",
                                            "(c) extra storage per task"))
        self._trace = {}
        task_x = list(range(len(self.tasks)))
        errors = dict(type="data", array=[0.0] * len(self.tasks), visible=True, thickness=1, color="#333")
        for i, kind in enumerate(self.kinds):
            fig.add_trace(go.Bar(x=task_x, y=[0.0] * len(self.tasks), name=KIND_LABELS[kind],
                                 marker_color=COLOURS[i % len(COLOURS)], legendgroup="experts", error_y=errors,
                                 hovertemplate=f"{KIND_LABELS[kind]}: %{{y:.1f}}%<extra></extra>"),
                          row=1, col=1)
            self._trace[("expert", kind)] = len(fig.data) - 1
        for name, label, symbol in (("finetuned", "fine-tuned", "line-ew-open"),
                                    ("pretrained", "no merge (pretrained + heads)", "x-thin-open")):
            fig.add_trace(go.Scatter(x=task_x, y=[0.0] * len(self.tasks), mode="markers", name=label,
                                     legendgroup="experts",
                                     marker=dict(symbol=symbol, size=16, color="black", line=dict(width=2)),
                                     error_y=dict(type="data", array=[0.0] * len(self.tasks), visible=True,
                                                  thickness=1, width=3, color="#555"),
                                     hovertemplate=f"{label}: %{{y:.1f}}%<extra></extra>"), row=1, col=1)
            self._trace[("reference", name)] = len(fig.data) - 1
        ps = list(self.ps)
        labels = self.model.reference_labels()
        for name, dash in zip(REFERENCES, ("dot", "dash", "solid")):
            fig.add_trace(go.Scatter(x=[ps[0], ps[-1]], y=[0.0, 0.0], mode="lines", name=f"{labels[name]}, mean",
                                     line=dict(color="#555", dash=dash, width=1.2), legendgroup="references",
                                     hovertemplate=f"{labels[name]}: %{{y:.1f}}%<extra></extra>"), row=2, col=1)
            self._trace[("reference_mean", name)] = len(fig.data) - 1
        for i, method in enumerate(self.methods):
            label, colour = METHOD_LABELS[method], COLOURS[(i + 3) % len(COLOURS)]
            fig.add_trace(go.Scatter(x=ps, y=[0.0] * len(ps), mode="lines+markers",
                                     name=f"{label} ({self.settings_label(method)})",
                                     line=dict(color=colour), marker=dict(size=5), legendgroup="routed",
                                     error_y=dict(type="data", array=[0.0] * len(ps), visible=True, thickness=1,
                                                  width=2, color=colour),
                                     hovertemplate=f"{label}, p %{{x:.2f}}: mean %{{y:.1f}}%<extra></extra>"),
                          row=2, col=1)
            self._trace[("curve", method)] = len(fig.data) - 1
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="at p", showlegend=False,
                                 marker=dict(size=12, symbol="diamond", color="black"),
                                 hovertemplate="%{text} at p %{x:.2f}: %{y:.1f}%<extra></extra>"), row=2, col=1)
        self._trace["at_p"] = len(fig.data) - 1
        fig.add_trace(go.Bar(x=[], y=[], name="storage", marker_color="#9e9e9e", showlegend=False,
                             texttemplate="%{y:.2f}%", textposition="outside",
                             hovertemplate="%{customdata}: %{y:.3f}% of one float32 model<extra></extra>"),
                      row=2, col=2)
        self._trace["storage"] = len(fig.data) - 1
        fig.update_yaxes(title_text="accuracy (%)", range=[0, 105], row=1, col=1)
        fig.update_xaxes(tickvals=task_x, ticktext=list(self.tasks), row=1, col=1)
        fig.update_xaxes(title_text="router accuracy p", range=[-0.03, 1.03], row=2, col=1)
        fig.update_yaxes(title_text="mean accuracy (%)", range=[0, 105], row=2, col=1)
        fig.update_xaxes(tickangle=25, row=2, col=2)
        fig.update_yaxes(title_text="% of one float32 model", rangemode="tozero", row=2, col=2)
        fig.update_layout(height=820, template="plotly_white", barmode="group", bargap=0.2,
                          margin=dict(l=60, r=30, t=80, b=90), legend=dict(font=dict(size=11), x=1.02, y=1.0),
                          title=dict(text="", font=dict(size=13)))
        self.figure = fig

    def _build_widget(self) -> None:
        import ipywidgets as w

        c = self.controls
        self.summary = w.HTML(value="")
        self.summary.add_class("fmv-summary")
        self.widget = w.VBox([c["density"], c["router_accuracy"], w.HBox([self.export_path, self.export_button]),
                              *self._display_parts()], layout=w.Layout(width="100%"))
        self.widget.add_class("fmv-expert-explorer")

    def _basis(self, view: ExpertView) -> str:
        """``16 val images per task`` (or a range), what the view's numbers rest on."""
        counts = _all_counts(view)
        return f"{count_range(counts)} {self.eval_split} {self.unit} per task"

    def _title(self, view: ExpertView) -> str:
        return (f"expert density d = {view.density:g} · router accuracy p = {view.router_accuracy:.2f} "
                f"(measured {view.measured_router_accuracy:.3f}) · {self._basis(view)}, ±1 SE")

    def _draw(self, view: ExpertView) -> None:
        start = time.perf_counter()
        d = self.figure.data
        with self.figure.batch_update():
            for kind in self.kinds:
                values = [view.expert_accuracy[kind][t] for t in self.tasks]
                trace = d[self._trace[("expert", kind)]]
                trace.y = [float(v) for v in as_percent(values)]
                trace.error_y.array = _task_errors(view.expert_accuracy[kind], view.expert_counts[kind], self.tasks)
            for name in ("finetuned", "pretrained"):
                trace = d[self._trace[("reference", name)]]
                trace.y = [float(as_percent(view.references[name][t])) for t in self.tasks]
                trace.error_y.array = _task_errors(view.references[name], view.reference_counts[name], self.tasks)
            for name in REFERENCES:
                mean, _ = self.model.mean_with_error(view.references[name], view.reference_counts[name])
                d[self._trace[("reference_mean", name)]].y = [mean, mean]
            labels = list(view.storage_percent)
            d[self._trace["storage"]].x = list(range(len(labels)))
            d[self._trace["storage"]].y = [view.storage_percent[k] for k in labels]
            self.figure.layout.xaxis3.tickvals = list(range(len(labels)))
            self.figure.layout.xaxis3.ticktext = [SHORT_LABELS.get(k, k) for k in labels]
            d[self._trace["storage"]].customdata = labels
            for method in self.methods:
                label = METHOD_LABELS[method]
                trace = d[self._trace[("curve", method)]]
                trace.y = [float(v) for v in as_percent(view.routed_curve[label])]
                trace.error_y.array = self._curve_errors(view, label)
            labels = [METHOD_LABELS[m] for m in self.methods]
            marker = d[self._trace["at_p"]]
            marker.x = [view.router_accuracy] * len(labels)
            marker.y = [float(as_percent(np.mean(list(view.routed_accuracy[m].values())))) for m in labels]
            marker.text = labels
            self.figure.layout.title.text = html.escape(self._title(view), quote=False)
        self.summary.value = self._summary_html(view, self.pane.revision + 1)
        self._view = view
        self.last_timings["draw_ms"] = 1e3 * (time.perf_counter() - start)

    # ------------------------------------------------------------------ numbers shown
    def _means(self, view: ExpertView) -> dict[str, dict[str, tuple[float, float]]]:
        """(mean %, its SE %) of every shown mean: ``routed`` (at p), ``expert`` and ``reference``."""
        model = self.model
        return {"routed": {m: model.mean_with_error(a, view.routed_counts[m]) for m, a in view.routed_accuracy.items()},
                "expert": {k: model.mean_with_error(a, view.expert_counts[k]) for k, a in view.expert_accuracy.items()},
                "reference": {name: model.mean_with_error(view.references[name], view.reference_counts[name])
                              for name in REFERENCES}}

    def _differences(self, view: ExpertView) -> dict[str, dict[str, dict]]:
        """Per routed merge (at p) and expert kind, its mean minus each reference's (points), the
        difference's standard error and whether it is resolved (beyond 2 SE)."""
        means = self._means(view)
        out = {}
        for group in ("routed", "expert"):
            for name, (mean, error) in means[group].items():
                out[name] = {}
                for reference, (ref_mean, ref_error) in means["reference"].items():
                    delta, spread = mean - ref_mean, math.hypot(error, ref_error)
                    out[name][reference] = {"points": delta, "se_points": spread,
                                            "resolved": bool(math.isfinite(spread) and abs(delta) > 2 * spread)}
        return out

    def _displayed(self) -> dict:
        d = self.figure.data
        view = self._view
        expert = {kind: {t: float(view.expert_accuracy[kind][t]) for t in self.tasks} for kind in self.kinds}
        marker = d[self._trace["at_p"]]
        storage = d[self._trace["storage"]]
        means = self._means(view)
        fewest = {t: min(c[t] for c in _count_maps(view, self.tasks)) for t in self.tasks}
        return {"expert_accuracy": expert,
                "expert_mean_accuracy": {k: float(np.mean(list(v.values()))) for k, v in expert.items()},
                "expert_parameters": dict(view.expert_parameters),
                "routed_mean_accuracy": {str(m): float(np.mean(list(view.routed_accuracy[m].values())))
                                         for m in (marker.text or ())},
                "routed_accuracy": {m: dict(v) for m, v in view.routed_accuracy.items()},
                "routed_curve": {m: list(v) for m, v in view.routed_curve.items()}, "ps": list(view.ps),
                "measured_router_accuracy": view.measured_router_accuracy,
                "storage_percent": {str(k): float(v) for k, v in zip(storage.customdata, storage.y)},
                "finetuned_accuracy": dict(view.references["finetuned"]),
                "pretrained_accuracy": dict(view.references["pretrained"]),
                "task_arithmetic_accuracy": dict(view.references["task_arithmetic"]),
                "task_arithmetic_scaling": self.ta_scaling, "eval_counts": fewest,
                "expert_counts": {k: dict(v) for k, v in view.expert_counts.items()},
                "routed_counts": {m: {t: int(n) for t in self.tasks} for m, n in view.routed_counts.items()},
                "reference_counts": {k: dict(v) for k, v in view.reference_counts.items()},
                "routed_mean_se_percent": {m: se for m, (_, se) in means["routed"].items()},
                "expert_mean_se_percent": {k: se for k, (_, se) in means["expert"].items()},
                "reference_mean_accuracy": {k: mean / 100.0 for k, (mean, _) in means["reference"].items()},
                "reference_mean_se_percent": {k: se for k, (_, se) in means["reference"].items()},
                "differences": self._differences(view),
                "refinement": {**view.refinement, "largest_se_percent": _largest_se(means)}}

    def _summary_html(self, view: ExpertView, revision: int) -> str:
        means = self._means(view)
        differences = self._differences(view)
        labels = self.model.reference_labels()

        def mean_span(css: str, attribute: str, key: str, label: str, accuracy: Mapping[str, float],
                      count: str) -> str:
            mean, error = means["routed" if css == "fmv-routed-accuracy" else "expert"][key]
            return (f'<span class="{css}" data-{attribute}="{html.escape(key)}" '
                    f'data-value="{np.mean([accuracy[t] for t in self.tasks]):.6f}" data-se="{error:.4f}" '
                    f'data-n="{html.escape(count)}">{html.escape(label)} {mean:.1f}{plus_minus(error)}% '
                    f'<small>(n {html.escape(count)})</small></span>')

        def verdicts(key: str, label: str) -> str:
            parts = []
            for reference, diff in differences[key].items():
                verdict = ("noise unknown" if not math.isfinite(diff["se_points"]) else
                           "resolved" if diff["resolved"] else "not resolved")
                parts.append(f'<span class="fmv-difference" data-of="{html.escape(key)}" data-name="{reference}" '
                             f'data-value="{diff["points"]:.4f}" data-resolved="{str(diff["resolved"]).lower()}">'
                             f'{SHORT_REFERENCES[reference]} {diff["points"]:+.1f}{plus_minus(diff["se_points"])} '
                             f'({verdict})</span>')
            return f'{html.escape(label)}: {", ".join(parts)}'

        routed = " · ".join(mean_span("fmv-routed-accuracy", "method", m, m, a, str(view.routed_counts[m]))
                            for m, a in view.routed_accuracy.items())
        experts = " · ".join(mean_span("fmv-expert-accuracy", "kind", k, KIND_LABELS[k], a,
                                       count_range(view.expert_counts[k].values()))
                             for k, a in view.expert_accuracy.items())
        storage = " ".join(
            f'<span class="fmv-storage" data-label="{html.escape(k)}" data-value="{v:.6f}">{html.escape(k)} '
            f'{v:.2f}%</span>' for k, v in view.storage_percent.items())
        refs = " · ".join(
            f'<span class="fmv-reference" data-name="{name}" data-value="{mean / 100:.6f}">{html.escape(labels[name])} '
            f'{mean:.1f}{plus_minus(error)}% <small>(n {count_range(view.reference_counts[name].values())})'
            f'</small></span>' for name, (mean, error) in means["reference"].items())
        compared = "<br>".join([verdicts(m, m) for m in view.routed_accuracy] +
                               [verdicts(k, KIND_LABELS[k]) for k in view.expert_accuracy])
        return (f'<div class="fmv-expert-summary" data-revision="{revision}">at d = <span class="fmv-density-value" '
                f'data-value="{view.density:g}">{view.density:g}</span>, p = <span class="fmv-router-accuracy-value" '
                f'data-value="{view.router_accuracy:.6f}">{view.router_accuracy:.2f}</span> (measured '
                f'{view.measured_router_accuracy:.3f}) · {self._basis_html(view, means)}'
                f'<br><b>routed, mean accuracy:</b> {routed}<br>'
                f'<b>expert only, mean accuracy:</b> {experts}<br><b>references:</b> {refs}<br>'
                f'<b>mean − reference</b> (points, ±1 SE; resolved: beyond 2 SE):<br>{compared}<br>'
                f'<b>extra storage per task:</b> {storage}</div>')

    def _basis_html(self, view: ExpertView, means) -> str:
        """What the shown numbers rest on (images per task, ±1 binomial SE) and where refinement stands."""
        refinement = view.refinement
        state = refinement["state"]
        maps = _count_maps(view, self.tasks)
        total = sum(min(c[t] for c in maps) for t in self.tasks)
        largest = _largest_se(means)
        text = {"refining": f"refining towards ±{self.model.target_se:g} point…",
                "settled": f"settled: every mean's SE ≤ {self.model.target_se:g} point",
                "whole split": "the whole split", "fixed": "refinement off"}[state]
        return (f'<span class="fmv-refinement" data-state="{state}" data-fewest="{refinement["fewest_per_task"]}" '
                f'data-total="{total}" data-se="{largest:.6f}">on {self._basis(view)} '
                f'(every number on ≥ {refinement["fewest_per_task"]} per task, {total} in all), ±1 binomial SE '
                f'(largest {largest:.2f} points) · <b>{text}</b></span>')

    def static_figure(self):
        """The current view as a matplotlib figure (what :meth:`export` writes as PNG/SVG/PDF)."""
        from ..plots.core import new_figure

        view = self._view
        fig, axes = new_figure(2, 2, size=(14.0, 9.0), width_ratios=[1.5, 1.0])
        gs = axes[0, 0].get_gridspec()
        for ax in axes[0]:
            ax.remove()
        ax_e = fig.add_subplot(gs[0, :])
        ax_r, ax_s = axes[1]
        x = np.arange(len(self.tasks))
        width = 0.8 / max(1, len(self.kinds))
        for i, kind in enumerate(self.kinds):
            values = [view.expert_accuracy[kind][t] for t in self.tasks]
            errors = _task_errors(view.expert_accuracy[kind], view.expert_counts[kind], self.tasks)
            ax_e.bar(x + (i - (len(self.kinds) - 1) / 2) * width, as_percent(values), width, yerr=errors,
                     color=COLOURS[i % len(COLOURS)], label=KIND_LABELS[kind], ecolor="#333", capsize=1.5)
        ax_e.scatter(x, as_percent([view.references["finetuned"][t] for t in self.tasks]), marker="_", s=300,
                     color="black", label="fine-tuned", zorder=3)
        ax_e.scatter(x, as_percent([view.references["pretrained"][t] for t in self.tasks]), marker="x", s=30,
                     color="black", label="no merge (pretrained + heads)", zorder=3)
        ax_e.set_xticks(x, self.tasks, fontsize=8)
        ax_e.set_ylim(0, 105)
        ax_e.set_ylabel("accuracy (%)")
        basis = count_range([c for counts in view.expert_counts.values() for c in counts.values()] or [0])
        ax_e.set_title(f"(a) expert only at d = {view.density:g} ({basis} {self.eval_split} {self.unit} per task, "
                       f"±1 SE)", fontsize=9)
        ax_e.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        labels = self.model.reference_labels()
        for name, style in zip(REFERENCES, (":", "--", "-")):
            mean, _ = self.model.mean_with_error(view.references[name], view.reference_counts[name])
            ax_r.axhline(mean, color="#555", lw=1.0, ls=style, label=f"{labels[name]} {mean:.1f}%")
        for i, method in enumerate(self.methods):
            label = METHOD_LABELS[method]
            colour = COLOURS[(i + 3) % len(COLOURS)]
            ax_r.errorbar(view.ps, as_percent(view.routed_curve[label]), yerr=self._curve_errors(view, label),
                          marker=".", color=colour, label=f"{label} (n {view.routed_counts[label]})", capsize=2)
            at_p = float(as_percent(np.mean(list(view.routed_accuracy[label].values()))))
            ax_r.scatter([view.router_accuracy], [at_p], marker="D", color=colour, edgecolors="black", zorder=3)
        ax_r.axvline(view.router_accuracy, color="grey", lw=0.8, ls=":")
        ax_r.set_xlim(-0.03, 1.03)
        ax_r.set_ylim(0, 105)
        ax_r.set_xlabel("router accuracy p")
        ax_r.set_ylabel("mean accuracy over tasks (%)")
        ax_r.set_title(f"(b) routed merges, p = {view.router_accuracy:.2f}", fontsize=9)
        ax_r.legend(fontsize=7, loc="lower right")
        labels = list(view.storage_percent)
        bars = ax_s.bar(range(len(labels)), [view.storage_percent[k] for k in labels], color="#9e9e9e")
        for bar in bars:
            ax_s.annotate(f"{bar.get_height():.2f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
        ax_s.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax_s.set_ylabel("% of one float32 model")
        ax_s.set_title("(c) extra storage per task", fontsize=9)
        fig.suptitle(self._title(view), fontsize=10)
        return fig


def _task_errors(accuracy: Mapping[str, float], counts: Mapping[str, int], tasks: Sequence[str]) -> list[float]:
    """±1 binomial SE per task, in percent."""
    return [float(as_percent(binomial_se(accuracy[t], counts[t]))) for t in tasks]


def _count_maps(view: ExpertView, tasks: Sequence[str]) -> list[dict]:
    """{task: inputs} behind each number of `view` (expert kinds, routed merges, references)."""
    return ([dict(c) for c in view.expert_counts.values()]
            + [{t: n for t in tasks} for n in view.routed_counts.values()]
            + [dict(c) for c in view.reference_counts.values()])


def _all_counts(view: ExpertView) -> list[int]:
    counts = [c for m in view.expert_counts.values() for c in m.values()] + list(view.routed_counts.values())
    counts += [c for m in view.reference_counts.values() for c in m.values()]
    return counts or [0]


def _largest_se(means) -> float:
    return max((error for group in means.values() for _, error in group.values()), default=float("nan"))


