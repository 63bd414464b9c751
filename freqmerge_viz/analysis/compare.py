"""Every merge method on a study: settings chosen on validation, accuracy measured on test.

:func:`compare_methods` gives the table behind ``freqmerge-viz eval`` (and ``zoo eval``): per method, the
accuracy per task and the mean on the test split (fractions in [0, 1]) and the settings
that scored the best validation mean among its candidates (:data:`CANDIDATES`). Routed
merges (FREE, EMR, Twin) run each input with the state of the task its router picks; the
classification head is always that of the task being evaluated.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from ..errors import FreqMergeError, ParameterError
from ..methods import merge
from ..methods import RoutedMerge, routed_merge
from ..stats import best_on_validation, mean_accuracy
from ..routing import MLPRouter, OracleRouter, Router
from ..study import sample_count, study_data


def grid(**axes: Sequence[Any]) -> list[dict]:
    """Every combination of the given values, as a list of settings dicts."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


@dataclass(frozen=True)
class Candidate:
    """One row of the comparison: how to build it and which settings to try on validation."""

    name: str
    method: str
    settings: list[dict] = field(default_factory=lambda: [{}])
    routed: bool = False
    router: str = "oracle"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""
    needs: tuple[str, ...] = ()
    """Rows whose chosen settings this one builds on (they must come earlier)."""


SCALINGS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("weight_averaging", "weight_averaging"),
    Candidate("task_arithmetic", "task_arithmetic", grid(scaling=SCALINGS)),
    Candidate("ties", "ties", grid(density=(0.1, 0.2, 0.4), scaling=(0.2, 0.3, 0.5, 0.7, 1.0))),
    Candidate("dare", "dare_linear", grid(density=(0.3, 0.5), scaling=(0.05, 0.1, 0.2, 0.3, 0.5))),
    Candidate("breadcrumbs", "breadcrumbs", grid(density=(0.8, 0.9), scaling=(0.05, 0.1, 0.2, 0.3, 0.5))),
    Candidate("pcb", "pcb", grid(density=(0.1, 0.2), scaling=(0.2, 0.3, 0.5, 0.7, 1.0))),
    Candidate("fr_paper", "fr", grid(cutoff=(0.1, 0.2, 0.3, 0.5), scaling=(0.3, 0.5, 1.0, 2.0)),
              fixed={"preset": "paper"}),
    Candidate("fr_official", "fr", grid(scaling=(0.05, 0.1, 0.2, 0.3, 0.5)), fixed={"preset": "official"}),
    Candidate("fr_ties", "fr_ties", grid(cutoff=(0.1, 0.2), density=(0.2, 0.4), scaling=(0.3, 0.5, 0.7, 1.0)),
              fixed={"preset": "paper"}),
    Candidate("tsv", "tsv", grid(scaling=(0.3, 0.5, 0.7, 1.0, 1.5))),
    Candidate("iso_c", "iso_c", grid(scaling=(0.3, 0.5, 1.0, 1.5, 2.0))),
    Candidate("iso_cts", "iso_cts", grid(scaling=(0.3, 0.5, 1.0, 1.5, 2.0))),
    Candidate("consensus", "consensus", grid(scaling=(0.1, 0.2, 0.3, 0.5, 0.7)), fixed={"preset": "ta"}),
    Candidate("wudi", "wudi", grid(scaling=(0.5, 1.0, 1.5))),
    Candidate("cart", "cart", grid(rank_ratio=(0.04, 0.08, 0.16), scaling=(0.5, 1.0, 2.0))),
    Candidate("emr", "emr", routed=True, doc="masks and rescalers chosen by the true task (oracle), as in "
                                             "the EMR paper"),
    Candidate("twin", "twin", grid(rank=(4, 8)), routed=True, needs=("task_arithmetic",),
              doc="oracle routes; shared part = task arithmetic with its chosen scaling"),
    Candidate("free_oracle", "free", grid(expert_scale=(0.25, 0.5, 1.0)), routed=True, fixed={"preset": "paper"},
              doc="paper preset, backbone = the validation-chosen fr_paper settings", needs=("fr_paper",)),
    Candidate("free_mlp_router", "free", routed=True, router="mlp", fixed={"preset": "paper"},
              doc="free_oracle's settings, routes from an MLP on pretrained features", needs=("free_oracle",)),
)
"""The comparison's rows, in order; ``individual`` and ``pretrained_probe`` come first."""


def with_needs(names: Sequence[str], candidates: Sequence[Candidate] = CANDIDATES) -> tuple[Candidate, ...]:
    """The candidates called `names` plus every row they build on, in table order."""
    by_name = {c.name: c for c in candidates}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ParameterError(f"unknown comparison row(s) {unknown}; available: {list(by_name)}")
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].needs)
    return tuple(c for c in candidates if c.name in wanted)


def features(study, inputs: torch.Tensor) -> torch.Tensor:
    """Features of `inputs` under the study's pretrained model (what the MLP router reads)."""
    return study.features(inputs)


def router_training_split(study) -> str:
    """``train`` where the study has it, else ``val`` (a study of the user's may have no train split)."""
    try:
        study.data(study.tasks[0], "train")
        return "train"
    except (FreqMergeError, KeyError, FileNotFoundError):
        return "val"


def train_router(study, per_task: int = 600, seed: int = 0, epochs: int = 40) -> MLPRouter:
    """An :class:`~freqmerge_viz.MLPRouter` from pretrained features of `per_task` inputs of each
    task's training split (:func:`router_training_split`) to the task's index."""
    split = router_training_split(study)
    xs, ys = [], []
    for index, task in enumerate(study.tasks):
        inputs, _ = study.data(task, split)
        xs.append(features(study, inputs[:per_task]))
        ys.append(torch.full((xs[-1].shape[0],), index, dtype=torch.long))
    x = torch.cat(xs)
    router = MLPRouter(x.shape[1], len(study.tasks), hidden=64, seed=seed)
    return router.fit(x, torch.cat(ys), epochs=epochs)


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Correct predictions and scored samples (tokens with label -100 are not scored)."""
    scored = labels != -100
    return int(((logits.argmax(-1) == labels) & scored).sum()), int(scored.sum())


def evaluate_routed(study, routed: RoutedMerge, router: Router, split: str = "test",
                    batch_size: int = 500, limit: int | None = None,
                    tasks: Sequence[str] | None = None) -> tuple[dict[str, float], float]:
    """Per-task accuracy of `routed` with routes from `router`, and the share routed right.
    `tasks` (default: the study's) are the tasks `routed` was built from, in its order."""
    accuracy, right, total = {}, 0, 0
    needs_features = not isinstance(router, OracleRouter)
    for index, task in enumerate(study.tasks if tasks is None else tasks):
        inputs, labels = study_data(study, task, split, limit)
        correct = scored = 0
        for start in range(0, len(labels), batch_size):
            x = inputs[start:start + batch_size]
            truth = torch.full((x.shape[0],), index, dtype=torch.long)
            routes = router.route(features(study, x) if needs_features else x, truth)
            with torch.no_grad():
                logits = routed.predict(x, lambda state, batch: study.forward(state, batch, task), routes=routes)
            hits, count = _hits(logits, labels[start:start + batch_size])
            correct, scored = correct + hits, scored + count
            right += int((routes.cpu() == truth).sum())
            total += x.shape[0]
        accuracy[task] = correct / max(scored, 1)
    return accuracy, right / total


def forward_passes(study, candidates: Sequence[Candidate] = CANDIDATES, *, limit: int | None = None,
                   tasks: Sequence[str] | None = None) -> int:
    """Sample forward passes :func:`compare_methods` makes: every candidate setting on every
    task's validation samples, the chosen one on its test samples, plus the reference rows."""
    tasks = list(study.tasks if tasks is None else tasks)
    val = sum(len(study_data(study, t, "val", limit)[1]) for t in tasks)
    test = sum(len(study_data(study, t, "test", limit)[1]) for t in tasks)
    return 2 * test + sum(len(c.settings) * val + test for c in candidates)


def seconds_per_forward(study, samples: int = 16) -> float:
    """Seconds one sample's forward pass takes (timed on `samples` validation samples of the first
    task under the pretrained model, after one warm-up call)."""
    import time

    inputs, _ = study_data(study, study.tasks[0], "val", samples)
    with torch.no_grad():
        study.forward(study.pretrained, inputs[:2], study.tasks[0])
        start = time.perf_counter()
        study.forward(study.pretrained, inputs, study.tasks[0])
    return (time.perf_counter() - start) / max(len(inputs), 1)


def estimate(study, candidates: Sequence[Candidate] = CANDIDATES, *, limit: int | None = None,
             tasks: Sequence[str] | None = None) -> str:
    """One line printed before a comparison: forward passes and the minutes they take on this
    device at the measured speed of one forward (merging time not included)."""
    passes = forward_passes(study, candidates, limit=limit, tasks=tasks)
    minutes = passes * seconds_per_forward(study) / 60
    return (f"estimate: {passes:,} sample forward passes on study {getattr(study, 'name', 'study')!r} "
            f"({limit if limit is not None else 'all'} samples per task and split), about {minutes:.1f} min "
            "of evaluation on this device, plus the merges")


def standard_error(per_task: Mapping[str, float], samples: int | Mapping[str, int]) -> float:
    """Standard error of the mean over tasks of per-task accuracies (fractions), each measured
    on `samples` independent test images (one count, or one per task):
    ``sqrt(Σ_t p_t (1 − p_t) / n_t) / K`` (binomial per task; fraction units)."""
    tasks = [t for t in per_task if t != "mean"]
    if not tasks:
        raise ParameterError("no accuracies to take a standard error of")
    counts = {t: samples if isinstance(samples, int) else samples[t] for t in tasks}
    if any(int(n) < 1 for n in counts.values()):
        raise ParameterError(f"sample counts must be >= 1, got {counts}")
    variance = sum(float(per_task[t]) * (1.0 - float(per_task[t])) / int(counts[t]) for t in tasks)
    return variance ** 0.5 / len(tasks)


def _result(per_task: Mapping[str, float], settings: Mapping[str, Any], samples: int, **extra) -> dict:
    return {"per_task": dict(per_task), "mean": mean_accuracy(per_task),
            "stderr": standard_error(per_task, samples), "settings": dict(settings), **extra}


def compare_methods(study, candidates: Sequence[Candidate] = CANDIDATES, *, limit: int | None = None,
                    tasks: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """The comparison table as ``{"tasks": [...], "methods": {name: {"per_task", "mean",
    "stderr", "settings"}}}``; accuracies are fractions in [0, 1] on the test split.

    Each candidate's settings are those with the best mean accuracy on the validation split.
    `limit` evaluates only the first `limit` images of every split (a quick look); `tasks`
    merges and evaluates only those tasks (default: all of the study's; the MLP router needs all).
    A study without a ``probe`` head gets a ``pretrained`` row instead of ``pretrained_probe``
    (θ_pre with each task's fine-tuned head: no merge); rows a study cannot run (the MLP router
    without pretrained features) are left out and listed under ``skipped`` with the reason.
    """
    say = progress or (lambda message: None)
    tasks = list(study.tasks if tasks is None else tasks)
    for task in tasks:
        study.check_task(task)
    if tasks != list(study.tasks) and any(c.routed and c.router == "mlp" for c in candidates):
        raise ParameterError("the MLP router is trained on every task of the study; compare a subset of tasks "
                             "without the rows that use it (free_mlp_router)")
    counts = {t: sample_count(study, t, "test", limit) for t in tasks}
    samples = next(iter(counts.values())) if len(set(counts.values())) == 1 else counts
    finetuned = {t: study.finetuned[t] for t in tasks}
    methods: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    individual = {t: study.task_accuracies(finetuned[t], t, limit=limit)[t] for t in tasks}
    methods["individual"] = _result(individual, {}, samples)
    if "probe" in getattr(study, "head_kinds", ()):
        methods["pretrained_probe"] = _result(study.task_accuracies(study.pretrained, tasks, head="probe",
                                                                    limit=limit), {}, samples)
    else:
        methods["pretrained"] = _result(study.task_accuracies(study.pretrained, tasks, limit=limit), {}, samples)
    chosen: dict[str, dict] = {}
    mlp_router = None
    for candidate in candidates:
        if any(need in skipped for need in candidate.needs):
            skipped[candidate.name] = f"builds on {', '.join(n for n in candidate.needs if n in skipped)}, skipped"
            continue
        if candidate.routed and candidate.router == "mlp" and not getattr(study, "has_features", False):
            skipped[candidate.name] = "the study gives no pretrained features for an MLP router"
            continue
        say(candidate.name)
        if candidate.routed and candidate.router == "mlp":
            if mlp_router is None:
                mlp_router = train_router(study)
            settings = chosen[candidate.needs[0]]
            built = _build(study, candidate, finetuned, settings, chosen)
            per_task, routed_right = evaluate_routed(study, built, mlp_router, "test", limit=limit)
            methods[candidate.name] = _result(per_task, _params(candidate, settings, chosen), samples,
                                              routing_accuracy=routed_right)
            continue
        means = [mean_accuracy(_accuracy(study, _build(study, candidate, finetuned, settings, chosen), candidate,
                                         "val", limit, tasks))
                 for settings in candidate.settings]
        index = best_on_validation(means)
        best, best_mean = candidate.settings[index], means[index]
        chosen[candidate.name] = best
        built = _build(study, candidate, finetuned, best, chosen)
        methods[candidate.name] = _result(_accuracy(study, built, candidate, "test", limit, tasks),
                                          _params(candidate, best, chosen), samples, validation_mean=best_mean)
    result = {"tasks": tasks, "samples": samples, "methods": methods,
              "study": getattr(study, "name", "study"), "metric": getattr(study, "metric", "accuracy")}
    if skipped:
        result["skipped"] = skipped
    return result


def _accuracy(study, built, candidate: Candidate, split: str, limit: int | None,
              tasks: Sequence[str]) -> dict[str, float]:
    if candidate.routed:
        return evaluate_routed(study, built, OracleRouter(), split, limit=limit, tasks=tasks)[0]
    return study.task_accuracies(built, tasks, split=split, limit=limit)


def _params(candidate: Candidate, settings: Mapping, chosen: Mapping) -> dict:
    """Everything `candidate` is built with: fixed values, `settings`, and the chosen
    settings of the rows it builds on."""
    params = {**candidate.fixed, **settings}
    if candidate.method == "free":
        params["backbone"] = {"preset": "paper", **chosen["fr_paper"]}
    if candidate.method == "twin":
        params["shared_params"] = dict(chosen["task_arithmetic"])
    return params


def _build(study, candidate: Candidate, finetuned: Mapping, settings: Mapping, chosen: Mapping):
    params = _params(candidate, settings, chosen)
    if candidate.routed:
        return routed_merge(candidate.method, study.pretrained, finetuned, **params)
    return merge(candidate.method, study.pretrained, finetuned, **params)


def comparison_frame(result: Mapping) -> pd.DataFrame:
    """The comparison as a table, one row per method: ``method``, ``mean`` and ``stderr``
    (fractions), ``n_images`` (test images per task), one column per task, ``settings``."""
    tasks = list(result["tasks"])
    rows = []
    for name, row in result["methods"].items():
        rows.append({"method": name, "mean": row["mean"], "stderr": row.get("stderr"),
                     "n_images": result.get("samples"), **{t: row["per_task"][t] for t in tasks},
                     "settings": ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "-"})
    return pd.DataFrame(rows)


def markdown_table(result: Mapping) -> str:
    """The comparison as a Markdown table: accuracy in % per task, the mean ± its standard
    error over the test images (when the result has one), plus the settings."""
    tasks = list(result["tasks"])
    lines = ["| method | " + " | ".join(tasks) + " | mean | settings (chosen on validation) |",
             "|---|" + "---:|" * (len(tasks) + 1) + "---|"]
    for name, row in result["methods"].items():
        mean = f"**{100 * row['mean']:.1f}**" + (f" ± {100 * row['stderr']:.1f}" if "stderr" in row else "")
        cells = [f"{100 * row['per_task'][t]:.1f}" for t in tasks] + [mean]
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "-"
        if "routing_accuracy" in row:
            settings += f"; router right on {100 * row['routing_accuracy']:.1f}% of test inputs"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {settings} |")
    return "\n".join(lines) + "\n"
