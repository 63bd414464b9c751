"""Generalisation matrix (the paper's Fig. 3): one task vector added to θ_pre, every task tested.

Source task i's vector ``τ_i`` (unfiltered, and filtered by a high-pass) is added to the
pretrained backbone, ``θ_pre + scaling·τ_i``, and the model is scored on every target task
j with task j's own head. The paper reads the diagonal as task performance (it drops a
little when filtered) and the off-diagonal as generalisation (it rises when filtered).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from ..engine import StackedStates, evaluate_on_zoo, zoo_backbone_keys
from ..errors import EmptyInputError, ParameterError
from ..io import write_atomically
from .evaluation import image_counts
from .landscape import filter_label, filter_step

COLUMNS = ["source", "target", "filtered", "accuracy", "loss"]


def source_states(zoo, tasks: Sequence[str], filtered=True, scaling: float = 1.0) -> StackedStates:
    """Stacked backbones: θ_pre, then ``θ_pre + scaling·τ_i`` per task, then the filtered ones
    ``θ_pre + scaling·G(τ_i)`` (``1 + 2K`` sets; `filtered` as in
    :func:`~freqmerge_viz.analysis.landscape.filter_step`)."""
    step, _ = filter_step(filtered)
    if step is None:
        raise ParameterError("the generalisation matrix compares a filter with no filter; give filtered=")
    keys = zoo_backbone_keys(zoo)
    stacked = {}
    for key in keys:
        base = zoo.pretrained[key].detach().to(torch.float32)
        deltas = torch.stack([zoo.finetuned[t][key].detach().to(torch.float32) - base for t in tasks])
        filtered_deltas = step(deltas.clone(), key)
        stacked[key] = torch.cat([base[None], base + scaling * deltas, base + scaling * filtered_deltas])
    return StackedStates(stacked)


def generalisation_matrix(zoo, *, tasks: Sequence[str] | None = None, filtered=True, scaling: float = 1.0,
                          split: str = "test", limit: int | None = None, head: str = "finetuned",
                          mode: str = "auto", chunk: int | None = None, device=None) -> pd.DataFrame:
    """Tidy ``source, target, filtered, accuracy, loss``: ``θ_pre + scaling·τ_source`` (``filtered``
    False) or with the filtered vector (True) on `target`'s first `limit` samples of `split`.

    ``df.attrs``: ``pretrained`` (θ_pre's accuracy per target), ``filter`` (label), ``scaling``,
    ``split``, ``limit``, ``n_images`` (images per target). With ``scaling=1`` the unfiltered diagonal is the fine-tuned models.
    """
    chosen = list(zoo.tasks) if tasks is None else list(tasks)
    if not chosen:
        raise EmptyInputError("need at least one task")
    for task in chosen:
        zoo._check_task(task)
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise ParameterError(f"scaling must be a number, got {scaling!r}")
    states = source_states(zoo, chosen, filtered, float(scaling))
    table = evaluate_on_zoo(zoo, states, chosen, split=split, limit=limit, head=head, mode=mode, chunk=chunk,
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
                       n_images=image_counts(zoo, chosen, split=split, limit=limit))
    return frame


def _task_order(tasks: Sequence[str]):
    position = {t: i for i, t in enumerate(tasks)}

    def key(column: pd.Series) -> pd.Series:
        return column.map(position) if column.name in ("source", "target") else column

    return key


def generalisation_pivot(table: pd.DataFrame, filtered: bool, metric: str = "accuracy") -> pd.DataFrame:
    """Source × target matrix of `metric` for the filtered or unfiltered rows, in task order."""
    missing = [c for c in ("source", "target", "filtered", metric) if c not in table.columns]
    if missing:
        raise ParameterError(f"generalisation table lacks column(s) {missing}")
    part = table[table["filtered"] == bool(filtered)]
    order = list(dict.fromkeys(part["source"]))
    targets = list(dict.fromkeys(part["target"]))
    return part.pivot(index="source", columns="target", values=metric).loc[order, targets]


def generalisation_difference(table: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Source × target matrix of filtered − unfiltered `metric` (positive: the filter helps)."""
    return generalisation_pivot(table, True, metric) - generalisation_pivot(table, False, metric)


def write_figures(zoo, out_dir, *, quick: bool = False, formats: Sequence[str] = ("png", "svg"),
                  filtered=True, tasks: Sequence[str] | None = None) -> list[Path]:
    """Fig. 3 on the zoo: heatmaps of the unfiltered and filtered matrices and their difference
    (matplotlib in `formats`, plotly HTML) and CSV tables, in `out_dir`.

    Defaults: all eight tasks, full task vectors (scaling 1, as in the paper), FR-Merging's
    default high-pass (cutoff 0.1 normalised); 1,000 test images per target (quick: the
    first four tasks, 32 images). 17 models × 8 tasks × 1,000 images: about a minute on 2
    busy CPU cores.
    """
    from ..plots import save_figure, save_html
    from ..plots.generalisation import generalisation_figure, generalisation_plotly

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick and tasks is None:
        tasks = list(zoo.tasks)[:4]
    table = generalisation_matrix(zoo, tasks=tasks, filtered=filtered, limit=32 if quick else 1000)
    title = (f"θ_pre + τ_source on each target ({table.attrs['split']}, {table.attrs['limit']} images); "
             f"filter: {table.attrs['filter']}")
    written: list[Path] = []
    fig = generalisation_figure(table, title=title)
    written += save_figure(fig, out / "generalisation", formats)
    import matplotlib.pyplot as plt

    plt.close(fig)
    written.append(save_html(generalisation_plotly(table, title=title), out / "generalisation.html",
                             div_id="freqmerge-generalisation"))
    pretrained = pd.DataFrame({"target": list(table.attrs["pretrained"]),
                               "accuracy_fraction": list(table.attrs["pretrained"].values())})
    difference = generalisation_difference(table).reset_index()
    difference.insert(1, "unit", "accuracy fraction, filtered − unfiltered")
    tables = {"generalisation.csv": table.rename(columns={"accuracy": "accuracy_fraction"}),
              "generalisation_difference.csv": difference,
              "generalisation_pretrained.csv": pretrained}
    for name, frame in tables.items():
        target = out / name
        write_atomically(target, lambda tmp, frame=frame: frame.to_csv(tmp, index=False, float_format="%.6g"))
        written.append(target)
    return written
