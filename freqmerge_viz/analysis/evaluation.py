"""Shared study plumbing for the analyses: task vectors, materialised states, per-task evaluation.

Every plain (non-routed) evaluation goes through :func:`~freqmerge_viz.study.evaluate_on_study`;
the helpers here only arrange which states are evaluated on which tasks, so that each call
hands the engine as many states as possible at once.
"""

from __future__ import annotations

import glob
import math
import platform
from typing import Mapping, Sequence

import pandas as pd
import torch

from ..study import evaluate_on_study, is_study, sample_count
from ..errors import EmptyInputError, ParameterError, counted
from ..io import load_state
from ..taskvector import common_keys, stack_key, task_names
from ..taskvector import TaskVector


def study_tasks(study, tasks: Sequence[str] | None = None) -> list[str]:
    """`tasks` (default: all of the study's, in its order), each checked to be one of its tasks."""
    if not is_study(study):
        raise ParameterError(f"expected a study (freqmerge_viz.load_study(...), the zoo, or a FunctionalStudy), got "
                             f"a {type(study).__name__}" + (": a (pretrained, finetuned, evaluate) tuple only "
                             "works in CutoffExplorer; freqmerge_viz.study.FunctionalStudy(pretrained, finetuned, "
                             "data, forward) makes a study of it" if isinstance(study, tuple) else ""))
    chosen = list(study.tasks) if tasks is None else list(tasks)
    if not chosen:
        raise EmptyInputError("need at least one task, got none")
    unknown = [t for t in chosen if t not in study.tasks]
    if unknown:
        raise ParameterError(f"unknown task(s) {unknown}; study {getattr(study, 'name', '')!r} has: "
                             f"{', '.join(study.tasks)}")
    return chosen


TASK_VECTOR_CACHE_BYTES = 4 * 2**30
"""Task vectors of a study up to this many bytes (all tasks together) are kept on the study for
the next analysis (a cutoff sweep asks for them at every point); larger ones are read again."""


def study_task_vectors(study, tasks: Sequence[str] | None = None) -> list[TaskVector]:
    """The task vectors ``θ_t − θ_pre`` of `tasks`, named by task and held in memory (float32, CPU).

    Read once per study and task (kept on the study while they take at most
    :data:`TASK_VECTOR_CACHE_BYTES`); do not modify their tensors."""
    cache = _vector_cache(study)
    keys = analysed_keys(study)
    vectors = []
    for task in study_tasks(study, tasks):
        vector = cache.get(task) if cache is not None else None
        if vector is None:
            vector = TaskVector.from_states(study.pretrained, study.finetuned[task], include=keys, name=task,
                                            device="cpu").materialize()
            if cache is not None and _cached_bytes(cache) + _vector_bytes(vector) <= TASK_VECTOR_CACHE_BYTES:
                cache[task] = vector
        vectors.append(vector)
    return vectors


def _vector_cache(study) -> dict | None:
    try:
        return vars(study).setdefault("_task_vector_cache", {})
    except TypeError:
        return None


def _vector_bytes(vector: TaskVector) -> int:
    return sum(vector[k].numel() * vector[k].element_size() for k in vector.keys())


def _cached_bytes(cache: dict) -> int:
    return sum(_vector_bytes(v) for v in cache.values())


def analysed_keys(study) -> list[str] | None:
    """Globs selecting exactly the study's backbone keys (what its forward reads: a CLIP study's
    image tower, never its text tower), or ``None`` where that is every key of the pretrained."""
    keys = list(study.backbone_keys())
    if set(keys) == set(load_state(study.pretrained).keys()):
        return None
    return [glob.escape(k) for k in keys]


def transformed(task_vectors, step) -> list[TaskVector]:
    """The task vectors after a per-task step ``step(stack[K, *shape], key)`` (e.g.
    :func:`~freqmerge_viz.method_transform`), held in memory, so several measures share one pass."""
    keys = common_keys(task_vectors)
    names = task_names(task_vectors)
    entries: list[dict[str, torch.Tensor]] = [{} for _ in names]
    for key in keys:
        stack = step(stack_key(task_vectors, key, "cpu"), key)
        for i in range(len(names)):
            entries[i][key] = stack[i]
    return [TaskVector.from_tensors(e, name=n) for e, n in zip(entries, names)]


def finetuned_subset(study, tasks: Sequence[str] | None = None) -> dict[str, Mapping[str, torch.Tensor]]:
    """``{task: fine-tuned backbone}`` for `tasks` (what the merges take, task names kept)."""
    return {t: study.finetuned[t] for t in study_tasks(study, tasks)}


def materialize(state: Mapping[str, torch.Tensor], keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Every key of `state` (or `keys`) read once into a plain dict, so a lazy merge is computed once."""
    return {k: state[k] for k in (state.keys() if keys is None else keys)}


def backbone_numel(study) -> int:
    """Entries of one backbone of the study (the "one model" of storage counts)."""
    pretrained = load_state(study.pretrained)
    return sum(math.prod(pretrained.shape_of(k)) for k in study.backbone_keys())


def evaluate_per_task(study, states_by_task: Mapping[str, Sequence[Mapping[str, torch.Tensor]]], *,
                      split: str = "test", limit: int | None = None) -> pd.DataFrame:
    """Each task's own list of states evaluated on that task only, one engine call per task.

    Returns columns ``task, state, loss, accuracy`` (``state``: position in that task's list;
    accuracy in [0, 1] on the first `limit` images of `split`).
    """
    frames = []
    for task, states in states_by_task.items():
        if len(states) == 0:
            continue
        frames.append(evaluate_on_study(study, list(states), [task], split=split, limit=limit))
    if not frames:
        raise EmptyInputError("no states to evaluate")
    return pd.concat(frames, ignore_index=True)[["task", "state", "loss", "accuracy"]]


def individual_accuracies(study, tasks: Sequence[str] | None = None, *, split: str = "test",
                          limit: int | None = None) -> dict[str, float]:
    """Accuracy of each fine-tuned backbone on its own task, measured on the same images as the merges."""
    table = evaluate_per_task(study, {t: [study.finetuned[t]] for t in study_tasks(study, tasks)},
                              split=split, limit=limit)
    return dict(zip(table["task"], table["accuracy"].astype(float)))


def image_counts(study, tasks: Sequence[str] | None = None, *, split: str = "test",
                 limit: int | None = None) -> dict[str, int]:
    """Images each task's accuracy rests on: the first `limit` of `split` (all when ``None``)."""
    return {t: sample_count(study, t, split, limit) for t in study_tasks(study, tasks)}


REFERENCES = ("pretrained", "task_arithmetic", "finetuned")
"""The reference states of the accuracy figures: θ_pre with each task's fine-tuned head (no
merge), task arithmetic, and each fine-tuned model on its own task."""


def reference_accuracies(study, tasks: Sequence[str] | None = None, *, split: str = "test",
                         limit: int | None = None,
                         task_arithmetic: Mapping | None = None) -> pd.DataFrame:
    """Per task, the accuracy of the references a merge should be read against, on the same
    images as the merges: ``pretrained`` (θ_pre with the task's fine-tuned head: no merge),
    ``task_arithmetic`` (merged over `tasks` with the parameters `task_arithmetic`, e.g.
    ``{"scaling": 0.3}`` or ``{"scaling": s, "weights": λ}``; left out when ``None``) and
    ``finetuned`` (the task's own fine-tuned model).

    Columns ``reference, task, accuracy`` (a fraction), ``n_images`` and ``scaling`` (task
    arithmetic's scaling on its rows, NaN on the others).
    """
    from ..methods import merge

    tasks = study_tasks(study, tasks)
    states = [materialize(study.pretrained)]
    if task_arithmetic is not None:
        states.append(materialize(merge("task_arithmetic", study.pretrained, finetuned_subset(study, tasks),
                                        **dict(task_arithmetic))))
    measured = evaluate_on_study(study, states, tasks, split=split, limit=limit)
    names = ["pretrained", "task_arithmetic"][:len(states)]
    rows = [{"reference": names[s], "task": t, "accuracy": float(a)}
            for s, t, a in zip(measured["state"], measured["task"], measured["accuracy"])]
    rows += [{"reference": "finetuned", "task": t, "accuracy": a}
             for t, a in individual_accuracies(study, tasks, split=split, limit=limit).items()]
    table = pd.DataFrame(rows)
    table["n_images"] = table["task"].map(image_counts(study, tasks, split=split, limit=limit))
    scaling = float((task_arithmetic or {}).get("scaling", float("nan")))
    table["scaling"] = [scaling if r == "task_arithmetic" else float("nan") for r in table["reference"]]
    table.attrs.update({"split": split, "limit": limit, "task_arithmetic": dict(task_arithmetic or {})})
    return table


def device_label(device: torch.device | str = "cpu") -> str:
    """What a timing was measured on: device, torch threads and processor, e.g. ``cpu (2 threads, x86_64)``."""
    target = torch.device(device)
    if target.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(target)})"
    return f"{target.type} ({counted(torch.get_num_threads(), 'thread')}, {platform.machine() or 'unknown cpu'})"


zoo_tasks = study_tasks
zoo_task_vectors = study_task_vectors
"""Former names of :func:`study_tasks` and :func:`study_task_vectors` (a zoo is a study)."""
