"""FR-Merging along the cutoff: accuracy per task and amplitude variance for each filter kind.

A sweep is a list of independent points (:class:`SweepPoint`: one filter kind and cutoff);
:func:`run_point` measures one, :func:`cutoff_sweep` maps it over the grid with any
``concurrent.futures``-style executor (anything with ``.map``), serially by default. A point
needs nothing from another, so the curve can be computed in any order or in parallel, and a
notebook slider can ask for a single point.

Cutoffs are normalised radii in [0, 1] (paper convention, :mod:`~freqmerge_viz.spectral`:
0 = DC, 1 = corner of the spectrum). Cutoff 0 is the identity filter for every kind, so that
point is task arithmetic with weights λ_i (or plain task arithmetic with ``coefficients="none"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Mapping, Sequence

import pandas as pd

from ..engine import evaluate_on_zoo
from ..errors import ParameterError, check_choice
from ..methods import get_method, merge, method_transform
from ..methods.fr import filter_spec
from ..metrics import amplitude_variance
from ..spectral import KINDS
from .evaluation import finetuned_subset, materialize, transformed, zoo_task_vectors, zoo_tasks

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


def _load_zoo(zoo):
    if isinstance(zoo, (str, os.PathLike)):
        from ..zoo import load

        return load(zoo)
    return zoo


def run_point(zoo, point: SweepPoint) -> pd.DataFrame:
    """Measure one sweep point: one row per task.

    Columns: ``kind, cutoff, scaling`` (the one used), ``validation_mean`` (its validation mean
    accuracy; NaN with a single scaling), ``task, accuracy, loss`` (FR merge on the first `limit`
    images of `split`), and the interference of the filtered task vectors (same on every row of a
    point): ``amplitude_variance`` (all bins), ``kept_variance`` (bins with gain >= 0.5),
    ``normalized_variance`` (all bins, over the mean amplitude) and ``kept_fraction``.
    `zoo` may be a loaded zoo or a zoo directory (loaded here, e.g. in another process).
    """
    zoo = _load_zoo(zoo)
    tasks = zoo_tasks(zoo, point.tasks)
    models = finetuned_subset(zoo, tasks)
    validation_mean = float("nan")
    scaling = point.scalings[0]
    if len(point.scalings) > 1:
        candidates = [materialize(merge("fr", zoo.pretrained, models, **point.fr_params(s))) for s in point.scalings]
        scores = evaluate_on_zoo(zoo, candidates, tasks, split="val", limit=point.validation_limit)
        means = scores.groupby("state")["accuracy"].mean()
        best = max(range(len(point.scalings)), key=lambda i: (means[i], -i))
        scaling, validation_mean = point.scalings[best], float(means[best])
    params = point.fr_params(scaling)
    state = materialize(merge("fr", zoo.pretrained, models, **params))
    measured = evaluate_on_zoo(zoo, [state], tasks, split=point.split, limit=point.limit)
    filtered = transformed(zoo_task_vectors(zoo, tasks), method_transform("fr", len(tasks), **params))
    spec = filter_spec(get_method("fr").resolve(params))
    everything = amplitude_variance(filtered, device="cpu")
    kept = amplitude_variance(filtered, within=spec, device="cpu")
    normalized = amplitude_variance(filtered, normalize=True, device="cpu")
    out = measured[["task", "accuracy", "loss"]].copy()
    out.insert(0, "validation_mean", validation_mean)
    out.insert(0, "scaling", scaling)
    out.insert(0, "cutoff", float(point.cutoff))
    out.insert(0, "kind", point.kind)
    out["amplitude_variance"] = everything.mean
    out["kept_variance"] = kept.mean
    out["normalized_variance"] = normalized.mean
    out["kept_fraction"] = float(kept.per_matrix["kept_fraction"].mean())
    return out


def sweep_points(kinds: Sequence[str] = KINDS, cutoffs: Sequence[float] = CUTOFFS, **point_fields) -> list[SweepPoint]:
    """Every (kind, cutoff) point of the grid, kinds outermost; `point_fields` go to each :class:`SweepPoint`."""
    return [SweepPoint(kind, float(c), **point_fields) for kind in kinds for c in cutoffs]


def cutoff_sweep(zoo, kinds: Sequence[str] = KINDS, cutoffs: Sequence[float] = CUTOFFS, *, executor=None,
                 **point_fields) -> pd.DataFrame:
    """The sweep over `kinds` × `cutoffs` as one tidy table (rows of :func:`run_point`, grid order).

    `executor` is anything with ``map(fn, iterable)`` (a thread or process pool, a dask
    ``client.get_executor()``); default: serial. For other processes or machines give `zoo` as
    a directory path they can read: each point then loads it where it runs (a loaded zoo
    pickles too, but sends its manifest, heads and lazy file readers with every point).
    """
    points = sweep_points(kinds, cutoffs, **point_fields)
    run = partial(run_point, zoo)
    results = list(executor.map(run, points)) if executor is not None else [run(p) for p in points]
    return pd.concat(results, ignore_index=True)


def write_figures(zoo, out_dir, *, quick: bool = False, formats=("png", "svg"), executor=None):
    """Draw the cutoff sweep on `zoo` into `out_dir` (points mapped with `executor`, default serial):
    :func:`freqmerge_viz.plots.sweeps.write_figures` (its docstring states the settings); returns
    the paths written."""
    from ..plots.sweeps import write_figures as draw

    return draw(zoo, out_dir, quick=quick, formats=formats, executor=executor)
