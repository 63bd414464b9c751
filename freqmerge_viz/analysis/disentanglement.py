"""Weight disentanglement (Ortiz-Jimenez et al., NeurIPS 2023): do task vectors add?

Task arithmetic works when adding task s's vector does not change what the model does on
task t's inputs. Two measurements, for any model given a forward function per task:

- :func:`disentanglement_error`: the weight-disentanglement error of Ortiz-Jimenez et al.
  over a grid of coefficients ``(α_1, α_2)`` for a pair of tasks,
  ``ξ(α_1, α_2) = Σ_{t=1,2} P_{x∼D_t}[ f_t(x; θ_pre + α_1 τ_1 + α_2 τ_2) ≠ f_t(x; θ_pre + α_t τ_t) ]``,
  the share of task t's inputs whose predicted class changes when the other task's vector
  is added (0: perfectly disentangled; at most 2).
- :func:`others_table`: per task t and scaling α, the accuracy on task t of ``θ_pre``,
  ``θ_pre + α τ_t`` (own), ``θ_pre + α Σ_{s≠t} τ_s`` (others) and ``θ_pre + α Σ_s τ_s`` (all,
  task arithmetic). With disentangled vectors "others" stays near ``θ_pre`` and "all" near
  "own".

A forward is ``forward(params, inputs) -> logits`` over a mapping ``name -> tensor`` (as
in :mod:`freqmerge_viz.engine`); each task has its own (its own head). The study wrappers
(:func:`zoo_disentanglement_error`, :func:`zoo_others_table`) supply the study's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..engine import Forward, StackedStates, evaluate_params
from ..study import study_data
from ..errors import EmptyInputError, MissingKeysError, ParameterError
from ..progress import track
from ..tables import disentanglement_pivot  # noqa: F401  (part of this analysis' API)

__all__ = ["disentanglement_error", "disentanglement_pivot", "others_table", "others_summary",
           "zoo_disentanglement_error", "zoo_others_table", "DEFAULT_ALPHAS", "KINDS"]

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
"""Coefficient grid of :func:`disentanglement_error` (both axes)."""
KINDS = ("pretrained", "own", "others", "all")
"""The states of :func:`others_table`, in order."""

Data = tuple[torch.Tensor, torch.Tensor]


def _check_inputs(forwards: Mapping[str, Forward], data: Mapping[str, Data], tasks: Sequence[str],
                  pretrained: Mapping[str, torch.Tensor], task_vectors: Mapping[str, Mapping[str, torch.Tensor]],
                  keys: Sequence[str] | None) -> list[str]:
    if not tasks:
        raise EmptyInputError("need at least one task")
    for name, table in (("forwards", forwards), ("data", data), ("task_vectors", task_vectors)):
        missing = [t for t in tasks if t not in table]
        if missing:
            raise MissingKeysError(missing, where=name)
    keys = list(pretrained.keys()) if keys is None else list(keys)
    missing = [k for k in keys if k not in pretrained]
    if missing:
        raise MissingKeysError(missing, where="the pretrained state")
    if not any(k in task_vectors[t] for t in tasks for k in keys):
        raise ParameterError("the task vectors share no key with the forward's parameters")
    return keys


def _as_alphas(alphas: Sequence[float]) -> list[float]:
    values = [float(a) for a in alphas]
    if not values or not all(np.isfinite(values)):
        raise ParameterError(f"need at least one finite coefficient, got {alphas!r}")
    return values


def _as_input(batch: torch.Tensor) -> torch.Tensor:
    """Floating inputs as float32; integer inputs (token ids) as they are."""
    return batch.float() if batch.is_floating_point() else batch


@torch.no_grad()
def _predictions(forward: Forward, states: StackedStates, inputs: torch.Tensor, keys: Sequence[str],
                 batch_size: int) -> torch.Tensor:
    """Argmax class ``[S, N]`` of each set in `states` on `inputs` (CPU, float32)."""
    out = []
    for s in range(len(states)):
        params = states.chunk(s, s + 1, keys)
        params = {k: v[0] for k, v in params.items()}
        out.append(torch.cat([forward(params, _as_input(inputs[lo:lo + batch_size])).argmax(-1).cpu()
                              for lo in range(0, len(inputs), batch_size)]))
    return torch.stack(out)


def disentanglement_error(forwards: Mapping[str, Forward], data: Mapping[str, Data],
                          pretrained: Mapping[str, torch.Tensor],
                          task_vectors: Mapping[str, Mapping[str, torch.Tensor]], pair: Sequence[str], *,
                          alphas: Sequence[float] = DEFAULT_ALPHAS, keys: Sequence[str] | None = None,
                          batch_size: int = 500, mode: str = "auto", device=None,
                          progress: bool | None = False) -> pd.DataFrame:
    """Tidy ``alpha_1, alpha_2, task, disagreement, accuracy`` over the grid `alphas` × `alphas`.

    Per cell and task t of `pair` (= (task 1, task 2)): ``disagreement``, the share of
    task t's `data` inputs whose predicted class under ``θ_pre + α_1 τ_1 + α_2 τ_2`` differs
    from that under ``θ_pre + α_t τ_t`` (fraction in [0, 1]); ``accuracy``, the combined
    model's accuracy on task t's labels. ξ of Ortiz-Jimenez et al. is the sum over the two
    tasks (:func:`disentanglement_pivot`). `keys` are the parameters the forwards need
    (default: every pretrained key; keys a task vector lacks stay at ``θ_pre``).
    ``df.attrs``: ``pair``, ``alphas``, ``samples`` (inputs per task). `progress`: a bar over the
    reference rows of the grid, per task of the pair (:mod:`freqmerge_viz.progress`).
    """
    pair = list(pair)
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ParameterError(f"pair must name two different tasks, got {pair!r}")
    keys = _check_inputs(forwards, data, pair, pretrained, task_vectors, keys)
    grid = _as_alphas(alphas)
    directions = [task_vectors[t] for t in pair]
    rows = []
    samples = {}
    for index, task in enumerate(pair):
        inputs, labels = data[task]
        if len(labels) == 0:
            raise EmptyInputError(f"no inputs for task {task!r}")
        samples[task] = int(len(labels))
        alone = np.zeros((len(grid), 2))
        alone[:, index] = grid
        references = _predictions(forwards[task], StackedStates.affine(pretrained, directions, alone, keys),
                                  inputs, keys, batch_size)
        cells = np.array([[a1, a2] for a1 in grid for a2 in grid])
        combined = StackedStates.affine(pretrained, directions, cells, keys)
        truth = evaluate_params(forwards[task], combined, inputs, labels, keys, mode=mode,
                                batch_size=batch_size, device=device).accuracy
        agreement = np.empty(len(cells))
        rows_of_grid = track(grid, f"disentanglement: grid rows ({task})", progress, unit="row")
        for r, alpha in enumerate(rows_of_grid):  # cells whose own coefficient is `alpha` share a reference
            chosen = np.flatnonzero(cells[:, index] == alpha)
            subset = StackedStates.affine(pretrained, directions, cells[chosen], keys)
            agreement[chosen] = evaluate_params(forwards[task], subset, inputs, references[r], keys, mode=mode,
                                                batch_size=batch_size, device=device).accuracy
        for c, (a1, a2) in enumerate(cells):
            rows.append({"alpha_1": float(a1), "alpha_2": float(a2), "task": task,
                         "disagreement": float(1.0 - agreement[c]), "accuracy": float(truth[c])})
    frame = pd.DataFrame(rows, columns=["alpha_1", "alpha_2", "task", "disagreement", "accuracy"])
    frame.attrs.update(pair=pair, alphas=grid, samples=samples)
    return frame


def others_table(forwards: Mapping[str, Forward], data: Mapping[str, Data], pretrained: Mapping[str, torch.Tensor],
                 task_vectors: Mapping[str, Mapping[str, torch.Tensor]], *, tasks: Sequence[str] | None = None,
                 scalings: Sequence[float] = (0.3,), keys: Sequence[str] | None = None, batch_size: int = 500,
                 mode: str = "auto", device=None, progress: bool | None = False) -> pd.DataFrame:
    """Tidy ``task, scaling, kind, accuracy, loss``: on each task t's `data`, the states
    ``θ_pre`` (kind ``pretrained``), ``θ_pre + α τ_t`` (``own``), ``θ_pre + α Σ_{s≠t} τ_s``
    (``others``) and ``θ_pre + α Σ_s τ_s`` (``all``) for each α in `scalings`. Accuracy is a
    fraction in [0, 1], loss the mean cross-entropy in nats. The vectors summed are those
    of `tasks` (default: every task of `task_vectors`). `progress`: a bar over the tasks
    (:mod:`freqmerge_viz.progress`).
    """
    tasks = list(task_vectors) if tasks is None else list(tasks)
    keys = _check_inputs(forwards, data, tasks, pretrained, task_vectors, keys)
    grid = _as_alphas(scalings)
    directions = [task_vectors[t] for t in tasks]
    k = len(tasks)
    rows = []
    for index, task in enumerate(track(tasks, "others' vectors: tasks", progress, unit="task")):
        inputs, labels = data[task]
        own = np.zeros(k)
        own[index] = 1.0
        patterns = {"pretrained": np.zeros(k), "own": own, "others": 1.0 - own, "all": np.ones(k)}
        coefficients = np.array([alpha * patterns[kind] for alpha in grid for kind in KINDS])
        result = evaluate_params(forwards[task], StackedStates.affine(pretrained, directions, coefficients, keys),
                                 inputs, labels, keys, mode=mode, batch_size=batch_size, device=device)
        for i, (alpha, kind) in enumerate((a, kd) for a in grid for kd in KINDS):
            rows.append({"task": task, "scaling": alpha, "kind": kind, "accuracy": float(result.accuracy[i]),
                         "loss": float(result.loss[i])})
    frame = pd.DataFrame(rows, columns=["task", "scaling", "kind", "accuracy", "loss"])
    frame.attrs.update(tasks=tasks, scalings=grid)
    return frame


def others_summary(table: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Scaling (rows) × kind (columns) of `value` averaged over tasks, columns in :data:`KINDS` order."""
    missing = [c for c in ("scaling", "kind", value) if c not in table.columns]
    if missing:
        raise ParameterError(f"others table lacks column(s) {missing}")
    means = table.pivot_table(index="scaling", columns="kind", values=value, aggfunc="mean")
    return means[[k for k in KINDS if k in means.columns]]


# ----------------------------------------------------------------------------- the study

def _zoo_inputs(study, tasks: Sequence[str], split: str, limit: int | None, head: str):
    from ..taskvector import TaskVector

    for task in tasks:
        study.check_task(task)
    forwards = {t: study.functional_forward(t, head) for t in tasks}
    data = {t: study_data(study, t, split, limit) for t in tasks}
    vectors = {t: TaskVector.from_states(study.pretrained, study.finetuned[t], name=t) for t in tasks}
    return forwards, data, vectors, study.backbone_keys()


def zoo_disentanglement_error(study, pair: Sequence[str], *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                              split: str = "val", limit: int | None = 500, head: str = "finetuned",
                              **options) -> pd.DataFrame:
    """:func:`disentanglement_error` of the study's task vectors for `pair`, on the first `limit`
    images of `split` of each task (``df.attrs`` adds ``split``)."""
    forwards, data, vectors, keys = _zoo_inputs(study, list(pair), split, limit, head)
    frame = disentanglement_error(forwards, data, study.pretrained, vectors, pair, alphas=alphas, keys=keys, **options)
    frame.attrs["split"] = split
    return frame


def zoo_others_table(study, *, tasks: Sequence[str] | None = None, scalings: Sequence[float] = (0.3,),
                     split: str = "val", limit: int | None = 500, head: str = "finetuned",
                     **options) -> pd.DataFrame:
    """:func:`others_table` over the study's tasks (default all), the first `limit` images of `split`
    (``n_images``: how many, per task)."""
    chosen = list(study.tasks) if tasks is None else list(tasks)
    forwards, data, vectors, keys = _zoo_inputs(study, chosen, split, limit, head)
    frame = others_table(forwards, data, study.pretrained, vectors, tasks=chosen, scalings=scalings, keys=keys,
                         **options)
    frame["n_images"] = frame["task"].map({t: int(len(data[t][1])) for t in chosen})
    frame.attrs["split"] = split
    return frame


