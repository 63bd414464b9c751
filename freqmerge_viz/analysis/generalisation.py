"""Generalisation matrix (the paper's Fig. 3): one task vector added to θ_pre, every task tested.

Source task i's vector ``τ_i`` (unfiltered, and filtered by a high-pass) is added to the
pretrained backbone, ``θ_pre + scaling·τ_i``, and the model is scored on every target task
j with task j's own head. The paper reads the diagonal as task performance (it drops a
little when filtered) and the off-diagonal as generalisation (it rises when filtered).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ..engine import StackedStates
from ..study import evaluate_on_study
from ..errors import EmptyInputError, ParameterError
from ..progress import track
from ..tables import generalisation_difference, generalisation_pivot  # noqa: F401  (part of this analysis' API)
from .evaluation import image_counts
from .landscape import filter_label, filter_step

COLUMNS = ["source", "target", "filtered", "accuracy", "loss"]


def source_states(study, tasks: Sequence[str], filtered=True, scaling: float = 1.0,
                  progress: bool | None = False) -> StackedStates:
    """Stacked backbones: θ_pre, then ``θ_pre + scaling·τ_i`` per task, then the filtered ones
    ``θ_pre + scaling·G(τ_i)`` (``1 + 2K`` sets; `filtered` as in
    :func:`~freqmerge_viz.analysis.landscape.filter_step`). `progress`: a bar over the keys
    (:mod:`freqmerge_viz.progress`)."""
    step, _ = filter_step(filtered)
    if step is None:
        raise ParameterError("the generalisation matrix compares a filter with no filter; give filtered=")
    keys = study.backbone_keys()
    stacked = {}
    for key in track(keys, "generalisation: filtered vectors", progress):
        base = study.pretrained[key].detach().to(torch.float32)
        deltas = torch.stack([study.finetuned[t][key].detach().to(torch.float32) - base for t in tasks])
        filtered_deltas = step(deltas.clone(), key)
        stacked[key] = torch.cat([base[None], base + scaling * deltas, base + scaling * filtered_deltas])
    return StackedStates(stacked)


def generalisation_matrix(study, *, tasks: Sequence[str] | None = None, filtered=True, scaling: float = 1.0,
                          split: str = "test", limit: int | None = None, head: str = "finetuned",
                          mode: str = "auto", chunk: int | None = None, device=None,
                          progress: bool | None = False) -> pd.DataFrame:
    """Tidy ``source, target, filtered, accuracy, loss``: ``θ_pre + scaling·τ_source`` (``filtered``
    False) or with the filtered vector (True) on `target`'s first `limit` samples of `split`.

    ``df.attrs``: ``pretrained`` (θ_pre's accuracy per target), ``filter`` (label), ``scaling``,
    ``split``, ``limit``, ``n_images`` (images per target). With ``scaling=1`` the unfiltered diagonal is the fine-tuned models.
    `progress`: a bar over the keys while the source states are built (the evaluation's own bar
    over the targets follows the study's ``progress``).
    """
    chosen = list(study.tasks) if tasks is None else list(tasks)
    if not chosen:
        raise EmptyInputError("need at least one task")
    for task in chosen:
        study.check_task(task)
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise ParameterError(f"scaling must be a number, got {scaling!r}")
    states = source_states(study, chosen, filtered, float(scaling), progress=progress)
    table = evaluate_on_study(study, states, chosen, split=split, limit=limit, head=head, mode=mode, chunk=chunk,
                            device=device)
    k = len(chosen)
    pretrained = table[table["state"] == 0]
    rows = table[table["state"] > 0].copy()
    rows["filtered"] = rows["state"] > k
    rows["source"] = [chosen[(s - 1) % k] for s in rows["state"]]
    rows = rows.rename(columns={"task": "target"})
    frame = rows[COLUMNS].sort_values(["filtered", "source", "target"], key=_task_order(chosen)).reset_index(drop=True)
    frame.attrs.update(pretrained=dict(zip(pretrained["task"], pretrained["accuracy"].astype(float))),
                       filter=filter_label(filtered), scaling=float(scaling), split=split, limit=limit, tasks=chosen,
                       n_images=image_counts(study, chosen, split=split, limit=limit))
    return frame


def _task_order(tasks: Sequence[str]):
    position = {t: i for i, t in enumerate(tasks)}

    def key(column: pd.Series) -> pd.Series:
        return column.map(position) if column.name in ("source", "target") else column

    return key


