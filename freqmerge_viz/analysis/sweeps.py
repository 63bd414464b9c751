"""FR-Merging along the cutoff: accuracy per task and amplitude variance for each filter kind.

A sweep is a list of independent points (:class:`SweepPoint`: one filter kind and cutoff);
:func:`run_point` measures one, :func:`cutoff_sweep` maps it over the grid with any
``concurrent.futures``-style executor (anything with ``.map``), serially by default. A point
needs nothing from another, so the curve can be computed in any order or in parallel, and a
notebook slider can ask for a single point.

Cutoffs are normalised radii in [0, 1] (paper convention, :mod:`~freqmerge_viz.spectral`:
0 = DC, 1 = corner of the spectrum). Cutoff 0 is the identity filter for every kind, so that
point is task arithmetic with weights λ_i (or plain task arithmetic with ``coefficients="none"``).

A point given several scalings picks its own on validation; a curve whose points pick
different scalings mixes the effect of the cutoff with that of the scaling. The figure
(:mod:`freqmerge_viz.plots.sweeps`) therefore picks one scaling with :func:`choose_scaling`
and holds it along the whole sweep, with :func:`sweep_references` (no merge, task arithmetic at
that scaling, fine-tuned) on the same images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Mapping, Sequence

import pandas as pd

from ..stats import best_on_validation
from ..study import as_study, evaluate_on_study
from ..errors import ParameterError, check_choice
from ..methods import get_method, merge, method_transform
from ..methods.fr import filter_spec
from ..metrics import amplitude_variances
from ..progress import track
from ..spectral import KINDS
from .evaluation import (finetuned_subset, image_counts, materialize, reference_accuracies, transformed,
                         study_task_vectors, study_tasks)

CUTOFFS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
"""Normalised cutoff grid of the full figure."""
SCALINGS = (0.1, 0.2, 0.3, 0.5, 1.0)
"""FR scalings tried at each point on the validation split (FR's λ_i sum to 1, so 1.0 is the
λ-weighted average of the task vectors)."""


@dataclass(frozen=True)
class SweepPoint:
    """One point of a cutoff sweep: FR-Merging with filter `kind` at normalised `cutoff`.

    `params` are further FR parameters (e.g. ``{"coefficients": "none"}``); with several
    `scalings` the point picks, among them, the scaling of best mean accuracy on the first
    `validation_limit` validation images per task, then measures it on `split`.
    """

    kind: str
    cutoff: float
    params: Mapping[str, Any] = field(default_factory=dict)
    scalings: tuple[float, ...] = (1.0,)
    tasks: tuple[str, ...] | None = None
    split: str = "test"
    limit: int | None = 300
    validation_limit: int | None = 200

    def __post_init__(self):
        check_choice("kind", self.kind, KINDS)
        if "kind" in self.params or "cutoff" in self.params or "scaling" in self.params:
            raise ParameterError("a sweep point sets kind, cutoff and scaling itself; "
                                 f"remove them from params {dict(self.params)}")
        if not self.scalings:
            raise ParameterError("a sweep point needs at least one scaling")
        object.__setattr__(self, "scalings", tuple(float(s) for s in self.scalings))
        filter_spec(get_method("fr").resolve(self.fr_params(self.scalings[0])))

    def fr_params(self, scaling: float) -> dict:
        """The FR parameters of this point at `scaling`."""
        return {**self.params, "kind": self.kind, "cutoff": float(self.cutoff), "scaling": scaling}


def _load_zoo(study):
    return as_study(study) if isinstance(study, (str, os.PathLike)) else study


def run_point(study, point: SweepPoint) -> pd.DataFrame:
    """Measure one sweep point: one row per task.

    Columns: ``kind, cutoff, scaling`` (the one used), ``validation_mean`` (its validation mean
    accuracy; NaN with a single scaling), ``task, accuracy, loss`` (FR merge on the first `limit`
    images of `split`; accuracy a fraction), ``n_images`` (how many), and the interference of the filtered task vectors (same on every row of a
    point): ``amplitude_variance`` (all bins), ``kept_variance`` (bins with gain >= 0.5),
    ``normalized_variance`` (all bins, over the mean amplitude) and ``kept_fraction``.
    `study` may be a loaded study or a study directory (loaded here, e.g. in another process).
    """
    study = _load_zoo(study)
    tasks = study_tasks(study, point.tasks)
    models = finetuned_subset(study, tasks)
    validation_mean = float("nan")
    scaling = point.scalings[0]
    if len(point.scalings) > 1:
        means = validation_means(study, point)
        best = best_on_validation(means)
        scaling, validation_mean = point.scalings[best], float(means[best])
    params = point.fr_params(scaling)
    state = materialize(merge("fr", study.pretrained, models, **params))
    measured = evaluate_on_study(study, [state], tasks, split=point.split, limit=point.limit)
    filtered = transformed(study_task_vectors(study, tasks), method_transform("fr", len(tasks), **params))
    spec = filter_spec(get_method("fr").resolve(params))
    measured_variance = amplitude_variances(filtered, {"all": {}, "kept": {"within": spec},
                                                       "normalized": {"normalize": True}}, device="cpu")
    everything, kept, normalized = (measured_variance[m] for m in ("all", "kept", "normalized"))
    out = measured[["task", "accuracy", "loss"]].copy()
    out["n_images"] = out["task"].map(image_counts(study, tasks, split=point.split, limit=point.limit))
    out.insert(0, "validation_mean", validation_mean)
    out.insert(0, "scaling", scaling)
    out.insert(0, "cutoff", float(point.cutoff))
    out.insert(0, "kind", point.kind)
    out["amplitude_variance"] = everything.mean
    out["kept_variance"] = kept.mean
    out["normalized_variance"] = normalized.mean
    out["kept_fraction"] = float(kept.per_matrix["kept_fraction"].mean())
    return out


def validation_means(study, point: SweepPoint) -> list[float]:
    """Mean validation accuracy over the point's tasks (first `validation_limit` images each) of FR
    at the point's kind and cutoff, for each of its `scalings` (in that order)."""
    study = _load_zoo(study)
    tasks = study_tasks(study, point.tasks)
    models = finetuned_subset(study, tasks)
    candidates = [materialize(merge("fr", study.pretrained, models, **point.fr_params(s))) for s in point.scalings]
    scores = evaluate_on_study(study, candidates, tasks, split="val", limit=point.validation_limit)
    means = scores.groupby("state")["accuracy"].mean()
    return [float(means[i]) for i in range(len(point.scalings))]


def choose_scaling(study, kind: str = "ideal", cutoff: float = 0.1, scalings: Sequence[float] = SCALINGS,
                   **point_fields) -> tuple[float, dict[float, float]]:
    """The one scaling a fixed-scaling sweep uses: the best mean validation accuracy of FR at
    `kind` and `cutoff` (default FR's paper default, ideal high-pass at 0.1) among `scalings`
    (ties: the earlier). Returns it and ``{scaling: validation mean}``. `point_fields` go to the
    :class:`SweepPoint` (tasks, params, validation_limit)."""
    point = SweepPoint(kind, float(cutoff), scalings=tuple(scalings), **point_fields)
    means = validation_means(study, point) if len(point.scalings) > 1 else [float("nan")]
    best = best_on_validation(means)
    return point.scalings[best], dict(zip(point.scalings, means))


def task_arithmetic_equivalent(study, scaling: float, params: Mapping[str, Any] | None = None,
                               tasks: Sequence[str] | None = None) -> dict | None:
    """Task-arithmetic parameters of FR with `params` at cutoff 0 and `scaling` (the identity
    filter): ``{"scaling": s, "weights": c_i · w_i}`` with FR's per-task coefficients c_i (λ_i of
    Eq. 3 by default, 1/K for ``uniform``, 1 for ``none``) and the given ``weights`` w_i. None for
    FR readings with no task-arithmetic equivalent (per-key ``align`` coefficients, sign consensus,
    partial key scopes)."""
    study = _load_zoo(study)
    tasks = study_tasks(study, tasks)
    resolved = get_method("fr").resolve({**dict(params or {}), "cutoff": 0.0, "scaling": float(scaling)})
    if (resolved["coefficients"] == "align" or resolved["consensus"] != "none" or resolved["sum_keys"] != "all"
            or resolved["merge_scope"] != "all" or resolved["weight_scaling"] != 1.0):
        return None
    k = len(tasks)
    if resolved["coefficients"] == "mean_abs":
        coefficients = list(merge("fr", study.pretrained, finetuned_subset(study, tasks), **resolved).statistics["lambda"])
    else:
        coefficients = [1.0 / k if resolved["coefficients"] == "uniform" else 1.0] * k
    weights = resolved.get("weights") or [1.0] * k
    return {"scaling": float(scaling), "weights": [float(c) * float(w) for c, w in zip(coefficients, weights)]}


def sweep_references(study, scaling: float, params: Mapping[str, Any] | None = None, *,
                     tasks: Sequence[str] | None = None, split: str = "test", limit: int | None = 300) -> pd.DataFrame:
    """:func:`~freqmerge_viz.analysis.evaluation.reference_accuracies` of a sweep held at `scaling`:
    no merge (θ_pre + heads), task arithmetic at the same scaling and weights
    (:func:`task_arithmetic_equivalent`: what the sweep's cutoff 0 is), fine-tuned; same images."""
    study = _load_zoo(study)
    ta = task_arithmetic_equivalent(study, scaling, params, tasks)
    return reference_accuracies(study, tasks, split=split, limit=limit, task_arithmetic=ta)


def sweep_points(kinds: Sequence[str] = KINDS, cutoffs: Sequence[float] = CUTOFFS, **point_fields) -> list[SweepPoint]:
    """Every (kind, cutoff) point of the grid, kinds outermost; `point_fields` go to each :class:`SweepPoint`."""
    return [SweepPoint(kind, float(c), **point_fields) for kind in kinds for c in cutoffs]


def cutoff_sweep(study, kinds: Sequence[str] = KINDS, cutoffs: Sequence[float] = CUTOFFS, *, executor=None,
                 progress: bool | None = False, **point_fields) -> pd.DataFrame:
    """The sweep over `kinds` × `cutoffs` as one tidy table (rows of :func:`run_point`, grid order).

    `executor` is anything with ``map(fn, iterable)`` (a thread or process pool, a dask
    ``client.get_executor()``); default: serial. For other processes or machines give `study` as
    a directory path they can read: each point then loads it where it runs (a loaded study
    pickles too, but sends its manifest, heads and lazy file readers with every point).
    `progress`: a bar over the points, advanced as each result arrives (:mod:`freqmerge_viz.progress`).
    """
    points = sweep_points(kinds, cutoffs, **point_fields)
    run = partial(run_point, study)
    results = executor.map(run, points) if executor is not None else map(run, points)
    results = list(track(results, "cutoff sweep: points", progress, total=len(points), unit="point"))
    return pd.concat(results, ignore_index=True)
