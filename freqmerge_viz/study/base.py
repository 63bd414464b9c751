"""A study: a pretrained model, fine-tuned models by task, per-task data and a functional forward.

Every analysis, figure topic, explorer and the method comparison take a study. A study
answers a few questions and holds no analysis logic:

- ``tasks``, ``pretrained`` (a mapping ``key -> tensor``, lazy states welcome) and
  ``finetuned`` (``{task: mapping}``), what the merges take;
- ``data(task, split)``: ``(inputs [N, ...], labels [N])`` (or token labels ``[N, T]`` for a
  language model), cached by the study;
- ``backbone_keys()``: the parameters the forward reads (the rest of a checkpoint, e.g. a
  CLIP text tower, is carried along unmerged by the analyses' evaluations);
- ``functional_forward(task, head)``: ``forward(params, inputs) -> logits`` for the batched
  engine (:mod:`freqmerge_viz.engine`), with the task's head already bound;
- optionally ``features(inputs)``: pretrained features for an MLP router, and
  ``head_kinds`` beyond ``"finetuned"`` (the zoo also has ``"probe"``).

:class:`Study` implements the rest (checks, a one-state ``forward``, ``accuracies``, counts)
from those. :class:`FunctionalStudy` builds one from plain parts (the ``python`` study kind
and the tests use it); the demo zoo, the open_clip and transformers studies are subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable

import pandas as pd
import torch

from ..engine import (STACK_LIMIT, Evaluator, Forward, StackedStates, _param_bytes, as_stacked, check_states,
                      evaluate_params)
from ..errors import EmptyInputError, ParameterError, check_positive_int
from ..progress import track

__all__ = ["Study", "FunctionalStudy", "SPLITS", "study_data", "study_evaluator", "evaluate_on_study",
           "is_study", "sample_count"]

SPLITS = ("val", "test")
"""Splits every study has: ``val`` chooses settings, ``test`` measures."""

TaskForward = Callable[[Mapping[str, torch.Tensor], torch.Tensor, str], torch.Tensor]
"""``forward(params, inputs, task) -> logits``: a study's model with the task's head."""


class Study:
    """Models + tasks + evaluation. Subclasses set ``name``, ``tasks``, ``pretrained``,
    ``finetuned`` and implement :meth:`data`, :meth:`backbone_keys` and :meth:`functional_forward`."""

    kind = "custom"
    """The study kind (``zoo``, ``open_clip``, ``hf_classification``, ``causal_lm``, ``python``, ...)."""
    name = "study"
    unit = "images"
    """What one sample is, in figure captions (``images``, ``texts``, ``token windows``)."""
    metric = "accuracy"
    """What ``accuracy`` means for this study: ``accuracy`` (top-1) or ``next-token accuracy``."""
    head_kinds: tuple[str, ...] = ("finetuned",)
    source_path = None
    """The zoo folder or study file the study was opened from (``None``: built in memory); a
    process pool or cluster worker reopens the study from it."""
    default_limit: int | None = None
    """Samples per task and split the analyses use by default (``None``: all)."""
    device = None
    """Where evaluations run unless a call says otherwise (``None``: CUDA when present, else CPU);
    the command line's ``--device`` sets it."""
    batch_size = 1000
    """Samples per forward call the evaluations use by default (a language model with a real
    vocabulary needs far fewer: its logits take ``T × vocabulary`` floats per sample)."""
    threads: int | None = 1
    """Torch threads the figure topics run with (``None``: torch's setting). One for small models,
    whose many short operations wait at a barrier after each with more threads; the real-model
    kinds (open_clip, transformers) set ``None``."""
    progress: bool | None = False
    """Whether evaluations show a tqdm bar (``None``: on a terminal; the command line's default)."""
    tasks: list[str]
    pretrained: Mapping[str, torch.Tensor]
    finetuned: dict[str, Mapping[str, torch.Tensor]]

    # ------------------------------------------------------------------ to implement
    def data(self, task: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def backbone_keys(self) -> list[str]:
        raise NotImplementedError

    def functional_forward(self, task: str, head: str = "finetuned") -> Forward:
        raise NotImplementedError

    # ------------------------------------------------------------------ provided
    @property
    def has_features(self) -> bool:
        """Whether :meth:`features` (pretrained features, for an MLP router) is available."""
        return type(self).features is not Study.features

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Features ``[N, D]`` of `inputs` under the pretrained model (what an MLP router reads)."""
        raise ParameterError(f"study {self.name!r} ({self.kind}) gives no pretrained features; "
                             "an MLP router cannot be trained on it")

    def check_task(self, task: str) -> None:
        """:class:`ParameterError` naming the study's tasks unless `task` is one of them."""
        if task not in self.tasks:
            raise ParameterError(f"unknown task {task!r} of study {self.name!r}; it has: {', '.join(self.tasks)}")

    def check_head(self, head: str) -> None:
        if head not in self.head_kinds:
            raise ParameterError(f"study {self.name!r} has no {head!r} heads; it has: {', '.join(self.head_kinds)}")

    def forward(self, state: Mapping[str, torch.Tensor], inputs: torch.Tensor, task: str,
                head: str = "finetuned") -> torch.Tensor:
        """Logits of `inputs` under one parameter set `state` (any mapping) with `task`'s head,
        on ``inputs.device``."""
        params = {k: state[k].detach().to(device=inputs.device, dtype=torch.float32) for k in self.backbone_keys()}
        return self.functional_forward(task, head)(params, inputs)

    def task_accuracies(self, state: Mapping[str, torch.Tensor], tasks: str | Sequence[str] | None = None, *,
                   split: str = "test", limit: int | None = None, head: str = "finetuned",
                   device: torch.device | str | None = None) -> dict[str, float]:
        """``{task: accuracy}`` (fractions) of one parameter set on each task's first `limit` samples."""
        table = evaluate_on_study(self, [state], tasks, split=split, limit=limit, head=head, device=device)
        return dict(zip(table["task"], table["accuracy"].astype(float)))

    @property
    def origins(self) -> list:
        """The files and folders the study reads (which no output may overwrite): its
        checkpoints' files and whatever ``input_paths`` a subclass lists (data folders)."""
        out = list(getattr(self, "input_paths", ()) or ())
        for state in [self.pretrained, *self.finetuned.values()]:
            out += list(getattr(state, "origins", ()) or ())
        return list(dict.fromkeys(str(p) for p in out))

    def describe(self) -> str:
        """One paragraph: kind, tasks, samples per split, parameters the forward reads."""
        counts = []
        for split in SPLITS:
            try:
                counts.append(f"{split} " + "/".join(str(len(self.data(t, split)[1])) for t in self.tasks))
            except Exception as exc:  # noqa: BLE001 - describing, not computing
                counts.append(f"{split} unreadable ({exc})")
        return (f"study {self.name!r} ({self.kind}): {len(self.tasks)} tasks ({', '.join(self.tasks)}); "
                f"{self.unit} per task: {'; '.join(counts)}; forward reads {len(self.backbone_keys())} tensors")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self.tasks)} tasks>"


def is_study(obj) -> bool:
    """Whether `obj` can be used as a study (a :class:`Study`, or anything with its methods)."""
    return isinstance(obj, Study) or all(hasattr(obj, a) for a in ("tasks", "pretrained", "finetuned", "data",
                                                                    "backbone_keys", "functional_forward"))


class FunctionalStudy(Study):
    """A study from plain parts.

    `pretrained` and `finetuned` (``{task: state}``) are mappings of tensors; `data` is
    ``{task: {split: (inputs, labels)}}`` or a function ``data(task, split) -> (inputs,
    labels)``; `forward` is ``forward(params, inputs, task) -> logits`` where `params` holds
    the `keys` (default: every key of `pretrained`). `features` optionally gives pretrained
    features for an MLP router. `thread_safe` says whether the engine may run `forward` in
    several threads at once (a pure function: yes; ``functional_call`` on a shared module: no).
    """

    kind = "python"

    def __init__(self, pretrained: Mapping[str, torch.Tensor], finetuned: Mapping[str, Mapping[str, torch.Tensor]],
                 data, forward: TaskForward, *, keys: Sequence[str] | None = None, name: str = "study",
                 features: Callable[[torch.Tensor], torch.Tensor] | None = None, thread_safe: bool = False,
                 unit: str = "images", metric: str = "accuracy", default_limit: int | None = None,
                 activation_bytes: int | None = None, fingerprint: str = ""):
        if not finetuned:
            raise EmptyInputError(f"study {name!r} has no fine-tuned models")
        self.name, self.unit, self.metric, self.default_limit = name, unit, metric, default_limit
        self.pretrained = pretrained
        self.finetuned = dict(finetuned)
        self.tasks = list(self.finetuned)
        self._data = data
        self._forward = forward
        self._features = features
        self._keys = list(pretrained.keys()) if keys is None else list(keys)
        self._thread_safe = bool(thread_safe)
        self._activation_bytes = activation_bytes
        self._fingerprint = fingerprint

    def data(self, task: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        self.check_task(task)
        if callable(self._data):
            return self._data(task, split)
        splits = self._data.get(task)
        if splits is None or split not in splits:
            raise ParameterError(f"study {self.name!r} has no {split!r} split for task {task!r}")
        return splits[split]

    def backbone_keys(self) -> list[str]:
        return list(self._keys)

    def functional_forward(self, task: str, head: str = "finetuned") -> Forward:
        self.check_task(task)
        self.check_head(head)
        forward_of = self._forward

        def forward(params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            return forward_of(params, inputs, task)

        forward.thread_safe = self._thread_safe
        if self._activation_bytes is not None:
            forward.activation_bytes = self._activation_bytes
        forward.fingerprint = f"{self.kind}:{self.name}:{self._fingerprint}:{task}:{head}"
        forward.__qualname__ = f"{self.name}.forward({task!r})"
        return forward

    @property
    def has_features(self) -> bool:
        return self._features is not None

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._features is None:
            return super().features(inputs)
        return self._features(inputs)


# ----------------------------------------------------------------------------- evaluation

def study_data(study, task: str, split: str = "test", limit: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of `task`'s `split`, the first `limit` samples (all if ``None``)."""
    inputs, labels = study.data(task, split)
    if limit is not None:
        check_positive_int("limit", limit)
        inputs, labels = inputs[:limit], labels[:limit]
    return inputs, labels


def sample_count(study, task: str, split: str = "test", limit: int | None = None) -> int:
    """Samples a task's accuracy rests on (scored tokens for token labels)."""
    _, labels = study_data(study, task, split, limit)
    return int(len(labels)) if labels.ndim == 1 else int((labels != -100).sum())


def study_evaluator(study, task: str, split: str = "test", limit: int | None = None, head: str = "finetuned",
                    **options) -> Evaluator:
    """:class:`~freqmerge_viz.engine.Evaluator` of `study`'s parameter sets on `task` (its
    `head`), the first `limit` samples of `split`; `options` are Evaluator fields."""
    inputs, labels = study_data(study, task, split, limit)
    kind = getattr(study, "kind", "study")
    prefix = kind if kind == "zoo" else f"{kind}:{getattr(study, 'name', '')}"
    return Evaluator(study.functional_forward(task, head), inputs, labels, tuple(study.backbone_keys()),
                     name=f"{prefix}:{task}:{split}:{len(labels)}:{head}", **options)


def evaluate_on_study(study, states, tasks: str | Sequence[str] | None = None,
                      *, split: str = "test", limit: int | None = None, head: str = "finetuned",
                      mode: str = "auto", chunk: int | None = None,
                      device: torch.device | str | None = None, batch_size: int | None = None,
                      memory_budget: int | None = None, workers: int | None = None) -> pd.DataFrame:
    """Tidy table (columns ``state, task, loss, accuracy``) of parameter sets `states` on `study`'s tasks.

    ``state`` is the index into `states` (a list of states or a :class:`StackedStates`);
    `limit` keeps the first `limit` samples of each split; each task is evaluated with its
    own `head`. With several tasks, a list of (lazy) states is read once into a
    :class:`StackedStates` when it fits :data:`~freqmerge_viz.engine.STACK_LIMIT`.
    """
    tasks = study.tasks if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    for task in tasks:
        study.check_task(task)
    device = getattr(study, "device", None) if device is None else device
    batch_size = getattr(study, "batch_size", 1000) if batch_size is None else batch_size
    keys = study.backbone_keys()
    stacked = as_stacked(states)
    if stacked is None:
        states = list(states)
        if not states:
            raise ParameterError("need at least one parameter set to evaluate")
        check_states(states, keys)
        if len(tasks) > 1 and len(states) * _param_bytes(states, None, keys) <= STACK_LIMIT:
            stacked = StackedStates.from_states(states, keys)
    source = stacked if stacked is not None else states
    rows = []
    label = f"{getattr(study, 'name', 'study')}: {len(source)} model{'s' if len(source) != 1 else ''} on {split}"
    for task in track(tasks, label, getattr(study, "progress", False), unit="task", leave=False):
        inputs, labels = study_data(study, task, split, limit)
        result = evaluate_params(study.functional_forward(task, head), source, inputs, labels, keys, mode=mode,
                                 chunk=chunk, batch_size=batch_size, device=device, memory_budget=memory_budget,
                                 workers=workers)
        for i in range(len(source)):
            rows.append({"state": i, "task": task, "loss": float(result.loss[i]),
                         "accuracy": float(result.accuracy[i])})
    return pd.DataFrame(rows, columns=["state", "task", "loss", "accuracy"])
