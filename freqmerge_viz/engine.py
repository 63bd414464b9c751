"""Evaluate many parameter settings of one architecture on one batch of data.

The analyses (loss landscapes, generalisation matrices, sweeps) all ask the same question:
"loss and accuracy of these S parameter sets on these inputs". :func:`evaluate_params`
answers it for any ``forward(params, inputs) -> logits``; :func:`evaluate_on_zoo` for the
demo zoo's backbones with each task's head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .backend import resolve_device
from .errors import MissingKeysError, ParameterError, check_choice

Forward = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]
"""``forward(params, inputs) -> logits [N, C]`` for one parameter set ``{name: tensor}``."""

MODES = ("auto", "vmap", "loop")


@dataclass(frozen=True)
class EvalResult:
    """Per parameter set: mean cross-entropy ``loss`` (nats) and ``accuracy`` in [0, 1]."""

    loss: np.ndarray
    accuracy: np.ndarray
    mode: str


def _checked_states(states: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str]) -> None:
    if len(states) == 0:
        raise ParameterError("need at least one parameter set to evaluate")
    for i, state in enumerate(states):
        missing = [k for k in keys if k not in state]
        if missing:
            raise MissingKeysError(missing, where=getattr(state, "name", None) or f"parameter set {i}")


@torch.no_grad()
def evaluate_params(forward: Forward, states: Sequence[Mapping[str, torch.Tensor]], inputs: torch.Tensor,
                    labels: torch.Tensor, keys: Sequence[str] | None = None, *, mode: str = "auto",
                    chunk: int | None = None, batch_size: int = 1000,
                    device: torch.device | str | None = None) -> EvalResult:
    """Loss and accuracy of every parameter set in `states` on ``(inputs, labels)``.

    `keys` are the parameters `forward` needs (default: those of ``states[0]``); each is read
    as float32 on `device`. ``mode="loop"`` runs one set at a time.
    """
    check_choice("mode", mode, MODES)
    keys = list(states[0].keys()) if keys is None and len(states) else list(keys or [])
    _checked_states(states, keys)
    target = resolve_device(device)
    inputs = inputs.to(target, torch.float32)
    labels = labels.to(target)
    losses, correct = [], []
    for state in states:
        params = {k: state[k].detach().to(target, torch.float32) for k in keys}
        loss_sum, hits = 0.0, 0
        for lo in range(0, len(labels), batch_size):
            logits = forward(params, inputs[lo:lo + batch_size])
            y = labels[lo:lo + batch_size]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            hits += int((logits.argmax(-1) == y).sum())
        losses.append(loss_sum / len(labels))
        correct.append(hits / len(labels))
    return EvalResult(np.asarray(losses), np.asarray(correct), "loop")


def zoo_forward(zoo, task: str, head: str = "finetuned") -> Forward:
    """``forward(params, images)`` of the zoo's ViT backbone followed by `task`'s head."""
    from .zoo.model import backbone_forward, head_forward

    weights = zoo.head(task, head)

    def forward(params: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        features = backbone_forward(params, images, zoo.model_config, where="parameter set")
        return head_forward(weights, features, where=f"head of {task!r}")

    return forward


def zoo_backbone_keys(zoo) -> list[str]:
    """Names of the backbone parameters of the zoo's ViT, in module order."""
    from .zoo.model import _template

    return [k for k, _ in _template(zoo.model_config).named_parameters()]


def evaluate_on_zoo(zoo, states: Sequence[Mapping[str, torch.Tensor]], tasks: str | Sequence[str] | None = None,
                    *, split: str = "test", limit: int | None = None, head: str = "finetuned",
                    mode: str = "auto", chunk: int | None = None,
                    device: torch.device | str | None = None) -> pd.DataFrame:
    """Tidy table (columns ``state, task, loss, accuracy``) of backbones `states` on zoo tasks.

    ``state`` is the index into `states`; `limit` keeps the first `limit` samples of each
    split; each task is evaluated with its own `head` (``"finetuned"`` or ``"probe"``).
    """
    tasks = zoo.tasks if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    keys = zoo_backbone_keys(zoo)
    rows = []
    for task in tasks:
        images, labels = zoo.data(task, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        result = evaluate_params(zoo_forward(zoo, task, head), states, images, labels, keys,
                                 mode=mode, chunk=chunk, device=device)
        for i in range(len(states)):
            rows.append({"state": i, "task": task, "loss": float(result.loss[i]),
                         "accuracy": float(result.accuracy[i])})
    return pd.DataFrame(rows, columns=["state", "task", "loss", "accuracy"])
