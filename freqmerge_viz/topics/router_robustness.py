"""Topic ``router_robustness`` (Fig. 5c): routed merges under a random router of accuracy p."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import json

from ..analysis.router_robustness import (ROUTER_ACCURACIES, chosen_routed_merges, robustness_references,
                                          router_robustness)
from ..plots.core import check_html_js, fraction_names, save_csv, write_all
from ..plots.robustness import robustness_figure, robustness_plotly
from . import scope, scope_label, topic_limit

LIMIT = 300
"""Test images per task."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """Fig. 5c on the study as ``router_robustness.*``: FREE, EMR and Twin with the settings the study
    comparison chooses on validation (200 images per task, oracle routes), then a seeded
    ``RandomRouter`` (seed 0) at p = 0, 0.1, …, 1 on the first :data:`LIMIT` test images per task,
    beside no merge (θ_pre + heads), task arithmetic (its validation-chosen scaling) and the
    fine-tuned models on the same images (``router_robustness_references.csv``).
    ``quick``: three tasks, each row's first candidate setting, p ∈ {0, 0.5, 1}, 48 images.
    """
    check_html_js(html_js)
    tasks = scope(study, quick)
    validation_limit = topic_limit(study, quick, 200)
    limit = topic_limit(study, quick, LIMIT)
    routed = chosen_routed_merges(study, tasks=tasks, quick=quick, validation_limit=validation_limit, progress=progress)
    table = router_robustness(study, routed, tasks=tasks, ps=(0.0, 0.5, 1.0) if quick else ROUTER_ACCURACIES,
                              seed=0, limit=limit, progress=progress)
    table["settings"] = table["method"].map({name: json.dumps(merge.settings, sort_keys=True, default=str)
                                             for name, merge in routed.items()})
    references = robustness_references(study, tasks=tasks, quick=quick, validation_limit=validation_limit, limit=limit,
                                       progress=progress)
    title = f"Routed merges under a random router ({scope_label(study, tasks, table.attrs['limit'], 'test')})"
    out = Path(out_dir)
    written = write_all(out / "router_robustness", table, robustness_figure(table, title, references),
                        robustness_plotly(table, title, references), "fig5c-router-robustness", formats,
                        fractions=("accuracy", "router_accuracy"), html_js=html_js, js_dir=js_dir)
    written.append(save_csv(fraction_names(references, ["accuracy"]), out / "router_robustness_references.csv"))
    return written
