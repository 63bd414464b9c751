"""Storage, time and accuracy of each merge (paper Table 9) on the study.

Timings are wall-clock seconds measured here (``time.perf_counter``), labelled with the device
they ran on; they depend on the machine and its load and are reported, never asserted.
Storage is counted from the objects themselves: :func:`~freqmerge_viz.storage_table` for
sparse and low-rank experts, the routed merges' own byte counts for everything they store.
"""

from __future__ import annotations

import json
import math
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..study import evaluate_on_study
from ..errors import check_positive_int
from ..experts import storage_table
from ..progress import track
from ..methods import EMRMerging, RoutedMerge
from .evaluation import (backbone_numel, device_label, evaluate_per_task, image_counts, individual_accuracies,
                         materialize, study_tasks)
from .selection import VALIDATION_LIMIT, build_chosen, choose

ROWS = ("weight_averaging", "task_arithmetic", "ties", "dare", "breadcrumbs", "pcb", "fr_paper", "tsv", "iso_c",
        "iso_cts", "consensus", "wudi", "cart", "emr", "twin", "free_oracle")
"""Rows of the study comparison in the cost table (after ``individual``: one fine-tuned model per task)."""
FLOAT_BYTES = 4


def extra_storage(routed: RoutedMerge | None, model_numel: int, n_tasks: int) -> tuple[int, int]:
    """``(values, bytes)`` stored beyond one backbone: 0 for a plain merge, the experts' kept numbers
    (:func:`~freqmerge_viz.storage_table`) for FREE and Twin, one mask entry per parameter and task
    plus each rescaler for EMR; bytes are the merge's own count (indices and 1-bit masks included).
    """
    if routed is None:
        return 0, 0
    stored_bytes = int(sum(routed.storage_bytes_per_task()))
    if isinstance(routed, EMRMerging):
        mask_entries = sum(mask[0].numel() for mask in routed.masks.values())
        return n_tasks * (mask_entries + 1), stored_bytes
    return int(storage_table(routed.experts, model_numel)["parameters_kept"].sum()), stored_bytes


def _timed(run: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def _inputs(study, tasks: Sequence[str], n: int) -> list[tuple[int, str, torch.Tensor]]:
    per_task = math.ceil(n / len(tasks))
    return [(i, t, study.data(t, "test")[0][:per_task]) for i, t in enumerate(tasks)]


@torch.no_grad()
def inference_seconds_per_1000(study, run_task: Callable[[int, str, torch.Tensor], torch.Tensor],
                               tasks: Sequence[str], n: int = 1000, repeats: int = 3) -> float:
    """Median over `repeats` of the time to classify about `n` test images (an equal share per task,
    each with its task's head), scaled to 1000 inputs; one untimed warm-up run first."""
    repeats = check_positive_int("repeats", repeats)
    batches = _inputs(study, tasks, n)
    total = sum(len(x) for _, _, x in batches)

    def run_all():
        for index, task, images in batches:
            run_task(index, task, images)

    run_all()
    times = [_timed(run_all)[1] for _ in range(repeats)]
    return float(np.median(times)) * 1000.0 / total


def cost_table(study, rows: Sequence[str] = ROWS, *, tasks: Sequence[str] | None = None, limit: int | None = 300,
               validation_limit: int | None = VALIDATION_LIMIT, quick: bool = False, timing_inputs: int = 1000,
               repeats: int = 3, progress: bool | None = False) -> pd.DataFrame:
    """One row per method: storage, merge time, inference time and mean test accuracy.

    Settings are chosen on the validation split (:mod:`.selection`; `validation_limit` images per
    task). Columns: ``method, kind`` (individual / plain / routed), ``settings`` (JSON),
    ``extra_values`` and ``total_values`` (numbers stored beyond one backbone, and in all),
    ``extra_bytes``, ``total_bytes``, ``extra_pct_of_model`` (of one float32 backbone's bytes),
    ``merge_seconds`` (building every merged state once), ``inference_seconds_per_1000``
    (routed merges: oracle routes given, no router cost), ``mean_accuracy`` (test, first `limit`
    images per task; routed merges with oracle routes; a fraction), ``accuracy_se`` (its standard
    error, binomial per task, :func:`~freqmerge_viz.plots.scales.mean_se`), ``n_images`` (per task)
    and ``device``. `progress`: bars over the rows, while choosing their settings and while
    measuring them (:mod:`freqmerge_viz.progress`).
    """
    from ..stats import mean_se

    tasks = study_tasks(study, tasks)
    k = len(tasks)
    numel = backbone_numel(study)
    counts = image_counts(study, tasks, split="test", limit=limit)

    def se(per_task: dict) -> float:
        return mean_se([per_task[t] for t in tasks], [counts[t] for t in tasks])

    device = device_label("cpu")
    choices = choose(study, list(rows), tasks=tasks, limit=validation_limit, quick=quick, progress=progress)
    individual = individual_accuracies(study, tasks, split="test", limit=limit)
    finetuned = {t: materialize(study.finetuned[t]) for t in tasks}
    records = [{"method": "individual", "kind": "individual", "settings": "{}", "extra_values": (k - 1) * numel,
                "extra_bytes": (k - 1) * numel * FLOAT_BYTES, "merge_seconds": 0.0,
                "inference_seconds_per_1000": inference_seconds_per_1000(
                    study, lambda i, t, x: study.forward(finetuned[t], x, t), tasks, timing_inputs, repeats),
                "mean_accuracy": float(np.mean(list(individual.values()))), "accuracy_se": se(individual)}]
    for name in track(rows, "costs: methods", progress, unit="method"):
        choice = choices[name]
        if choice.routed:
            def build():
                routed = build_chosen(study, choices, name, tasks)
                return routed, [routed.task_state(i) for i in range(k)]

            (routed, states), seconds = _timed(build)
            measured = evaluate_per_task(study, {t: [states[i]] for i, t in enumerate(tasks)}, split="test", limit=limit)

            def run_task(i, t, x, routed=routed):
                routes = torch.full((x.shape[0],), i, dtype=torch.long)
                return routed.predict(x, lambda state, inputs: study.forward(state, inputs, t), routes=routes)
        else:
            routed = None
            state, seconds = _timed(lambda: materialize(build_chosen(study, choices, name, tasks)))
            measured = evaluate_on_study(study, [state], tasks, split="test", limit=limit)

            def run_task(i, t, x, state=state):
                return study.forward(state, x, t)
        values, stored = extra_storage(routed, numel, k)
        records.append({"method": name, "kind": "routed" if routed is not None else "plain",
                        "settings": json.dumps(choice.params, sort_keys=True, default=str),
                        "extra_values": values, "extra_bytes": stored, "merge_seconds": seconds,
                        "inference_seconds_per_1000": inference_seconds_per_1000(study, run_task, tasks,
                                                                                 timing_inputs, repeats),
                        "mean_accuracy": float(measured["accuracy"].mean()),
                        "accuracy_se": se(dict(zip(measured["task"], measured["accuracy"])))})
    table = pd.DataFrame(records)
    table["total_values"] = table["extra_values"] + numel
    table["total_bytes"] = table["extra_bytes"] + numel * FLOAT_BYTES
    table["extra_pct_of_model"] = 100.0 * table["extra_bytes"] / (numel * FLOAT_BYTES)
    table["n_images"] = min(counts.values())
    table["device"] = device
    columns = ["method", "kind", "settings", "extra_values", "total_values", "extra_bytes", "total_bytes",
               "extra_pct_of_model", "merge_seconds", "inference_seconds_per_1000", "mean_accuracy", "accuracy_se",
               "n_images", "device"]
    table = table[columns]
    table.attrs.update({"device": device, "limit": limit, "tasks": list(tasks), "model_numel": numel})
    return table
