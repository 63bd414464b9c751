"""Expert-only accuracy against storage (paper Fig. 5b): ``θ_pre + e_t`` evaluated on task ``t``.

Experts come from :func:`~freqmerge_viz.extract_experts` and :func:`~freqmerge_viz.svd_experts`
over every floating key of the backbone (per tensor, ``floor(d·n)`` entries each):

``topk``
    the top-``d`` entries by magnitude, ``μ = 1``.
``topk_rescaled``
    the same entries with Eq. 4's ``μ_i = −E(M(v_i, d))·ln d / (λ_i·E(v_i))`` (FR's λ_i); at
    ``d = 1`` this ``μ`` is 0 (ln 1 = 0), so that point is the pretrained backbone by
    construction, not a measurement of the rescale (the figure marks it and does not join it).
``bernoulli``
    each entry kept with probability ``d`` (DARE's mask for ``seed``), **not** divided by ``d``
    (``extract_experts`` with ``rescale=None``).
``bernoulli_rescaled``
    the same entries divided by ``d``, as DARE does (the paper's "Bernoulli selection [53]").
``svd``
    a truncated SVD per matrix (1-D and thin keys stored whole), the rank chosen so that the
    expert stores at most as many numbers as the top-k expert at that density (rank 1 when even
    that stores more; then ``over_budget`` is true). Its x position is its own stored share.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import pandas as pd

from ..errors import ParameterError, check_choice
from ..experts import SVDFactors, check_density, extract_experts, storage_table, svd_storage_by_ranks
from ..progress import track
from .evaluation import (backbone_numel, evaluate_per_task, image_counts, individual_accuracies, materialize,
                         study_task_vectors, study_tasks)

KINDS = ("topk", "topk_rescaled", "bernoulli", "bernoulli_rescaled", "svd")
DENSITIES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Fractions of each tensor's entries an expert keeps (the x grid of the full figure)."""


def topk_budget(task_vector, density: float) -> int:
    """Numbers a top-k expert of `task_vector` at `density` stores (the SVD experts' budget)."""
    expert = extract_experts([task_vector], density, rescale=None, device="cpu")
    return int(storage_table(expert, 1)["parameters_kept"].iloc[0])


def svd_storage_by_rank(task_vector) -> dict[int, int]:
    """Numbers a rank-r SVD expert of `task_vector` stores, for every r up to its largest matrix
    side, from the shapes alone (:func:`~freqmerge_viz.experts.svd_storage`: no SVD is computed).

    Not monotone in r: a matrix whose smaller side is ``<= r`` is stored whole.
    """
    shapes = [tuple(task_vector.shape_of(key)) for key in task_vector]
    sides = [min(s[0], math.prod(s[1:])) for s in shapes if len(s) >= 2]
    ranks = range(1, max(sides, default=1) + 1)
    return dict(zip(ranks, svd_storage_by_ranks(shapes, ranks)))


def rank_within(storage_by_rank: dict[int, int], budget: int) -> int:
    """The rank storing the most numbers without exceeding `budget` (lowest such rank on ties; 1 if none fits)."""
    fitting = [r for r, c in storage_by_rank.items() if c <= budget]
    return max(fitting, key=lambda r: (storage_by_rank[r], -r)) if fitting else 1


class ExpertKinds:
    """Experts of any kinds at any density from one set of task vectors, with what no density
    changes done once: the SVD storage by rank and the SVDs themselves
    (:class:`~freqmerge_viz.experts.SVDFactors`). `seed` seeds the Bernoulli masks;
    `svd_storage` (:func:`svd_storage_by_rank` of the first task vector) saves recomputing it.
    """

    def __init__(self, task_vectors, seed: int = 0, svd_storage: dict[int, int] | None = None):
        self.task_vectors = task_vectors
        self.seed = seed
        self._svd_storage = svd_storage
        self._svd_factors: SVDFactors | None = None

    @property
    def svd_storage(self) -> dict[int, int]:
        if self._svd_storage is None:
            self._svd_storage = svd_storage_by_rank(self.task_vectors[0])
        return self._svd_storage

    def build(self, kinds: Sequence[str], density: float) -> dict[str, list]:
        """``{kind: experts}`` (a list, one per task) at `density` (fraction of entries kept).
        Asked together, ``topk`` is ``topk_rescaled``'s selection with μ = 1 (one selection for both)."""
        for kind in kinds:
            check_choice("kind", kind, KINDS)
        density = check_density(density)
        built = {}
        for kind in sorted(kinds, key=lambda k: k != "topk_rescaled"):
            if kind == "topk" and "topk_rescaled" in built:
                built[kind] = [replace(e, scale=1.0, settings={**e.settings, "rescale": None})
                               for e in built["topk_rescaled"]]
            else:
                built[kind] = self._build(kind, density)
        return {kind: built[kind] for kind in kinds}

    def _build(self, kind: str, density: float) -> list:
        vectors = self.task_vectors
        if kind == "svd":
            if self._svd_factors is None:
                self._svd_factors = SVDFactors(vectors, device="cpu")
            return self._svd_factors.experts(rank_within(self.svd_storage, topk_budget(vectors[0], density)))
        if kind.startswith("bernoulli"):
            experts = extract_experts(vectors, density, rescale=None, selection="bernoulli", seed=self.seed,
                                      device="cpu")
            return [replace(e, scale=1.0 / density) for e in experts] if kind == "bernoulli_rescaled" else experts
        return extract_experts(vectors, density, rescale="paper" if kind == "topk_rescaled" else None, device="cpu")


def build_experts(task_vectors, kind: str, density: float, seed: int = 0,
                  svd_storage: dict[int, int] | None = None):
    """The experts of one curve point: a list (one per task) of sparse or low-rank experts
    (:class:`ExpertKinds` keeps what several points share).

    `svd_storage` (:func:`svd_storage_by_rank` of the first task vector) saves recomputing it.
    """
    return ExpertKinds(task_vectors, seed, svd_storage).build([kind], density)[kind]


def expert_state(pretrained, expert) -> dict:
    """``θ_pre + e`` as a dict over every pretrained key (keys the expert lacks stay at θ_pre)."""
    return {k: expert.add_to(k, pretrained[k]) if k in expert else pretrained[k] for k in pretrained}


def expert_curves(study, *, kinds: Sequence[str] = KINDS, densities: Sequence[float] = DENSITIES,
                  tasks: Sequence[str] | None = None, seed: int = 0, split: str = "test",
                  limit: int | None = 300, progress: bool | None = False) -> pd.DataFrame:
    """Expert-only accuracy for every kind and density, per task.

    Columns: ``kind, density`` (fraction asked for), ``task, accuracy`` (in [0, 1], first `limit`
    images of `split`), ``n_images`` (how many), ``parameters`` (numbers the task's expert stores), ``stored_fraction``
    (``parameters`` over one backbone's entries), ``rank`` (SVD only), ``scale`` (μ, sparse
    only), ``over_budget`` and ``individual`` (the fine-tuned model on the same images). Rows
    with ``kind="pretrained"`` (no expert) are the floor, at density 0. `progress`: a bar over the
    (kind, density) points while their experts are built (:mod:`freqmerge_viz.progress`).
    """
    tasks = study_tasks(study, tasks)
    for kind in kinds:
        check_choice("kind", kind, KINDS)
    if not densities:
        raise ParameterError("need at least one density")
    vectors = study_task_vectors(study, tasks)
    numel = backbone_numel(study)
    pre = materialize(study.pretrained)
    points, states = [], {t: [pre] for t in tasks}
    source = ExpertKinds(vectors, seed)
    grid = [(kind, density) for kind in kinds for density in densities]
    for kind, density in track(grid, "expert sparsity: points", progress, unit="point"):
        experts = source.build([kind], density)[kind]
        table = storage_table(experts, numel)
        budget = topk_budget(vectors[0], density) if kind == "svd" else None
        for i, (task, expert) in enumerate(zip(tasks, experts)):
            states[task].append(expert_state(pre, expert))
            points.append({"kind": kind, "density": float(density), "task": task, "position": len(states[task]) - 1,
                           "parameters": int(table["parameters_kept"].iloc[i]),
                           "stored_fraction": float(table["percent_of_model"].iloc[i]) / 100.0,
                           "rank": getattr(expert, "rank", None), "scale": float(expert.scale),
                           "over_budget": budget is not None and int(table["parameters_kept"].iloc[i]) > budget})
    measured = evaluate_per_task(study, states, split=split, limit=limit)
    accuracy = {(t, s): a for t, s, a in zip(measured["task"], measured["state"], measured["accuracy"])}
    individual = individual_accuracies(study, tasks, split=split, limit=limit)
    rows = [{"kind": "pretrained", "density": 0.0, "task": t, "accuracy": accuracy[(t, 0)], "parameters": 0,
             "stored_fraction": 0.0, "rank": None, "scale": 0.0, "over_budget": False} for t in tasks]
    for point in points:
        position = point.pop("position")
        rows.append({**point, "accuracy": accuracy[(point["task"], position)]})
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("accuracy") + 1, "n_images",
                 table["task"].map(image_counts(study, tasks, split=split, limit=limit)))
    table["individual"] = table["task"].map(individual)
    table.attrs.update({"split": split, "limit": limit, "seed": seed, "model_numel": numel})
    return table
