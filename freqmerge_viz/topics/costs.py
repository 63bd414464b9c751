"""Topic ``costs`` (Table 9): storage, merge time, inference time and accuracy of each merge."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..analysis.costs import cost_table
from ..analysis.evaluation import reference_accuracies
from ..plots.core import check_html_js, write_all
from ..plots.costs import costs_figure, costs_plotly
from . import scope, scope_label, topic_limit

LIMIT = 300
"""Test images per task for the accuracies."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """Table 9 on the study as ``costs.*``: every row of :data:`~freqmerge_viz.analysis.costs.ROWS` with
    settings chosen on validation (200 images per task), accuracies on the first :data:`LIMIT` test
    images per task (with no merge, θ_pre + heads, on the same images as a reference line), timings
    over 1000 inputs (median of 3) on this machine's CPU. ``quick``: three tasks, first candidate
    settings, 48 images, timings over 200 inputs once.
    """
    check_html_js(html_js)
    tasks = scope(study, quick)
    limit = topic_limit(study, quick, LIMIT)
    table = cost_table(study, tasks=tasks, limit=limit, validation_limit=topic_limit(study, quick, 200), quick=quick,
                       timing_inputs=200 if quick else 1000, repeats=1 if quick else 3, progress=progress)
    references = reference_accuracies(study, tasks, limit=limit)
    references = references[references["reference"] == "pretrained"]
    title = f"Storage, time and accuracy of each merge ({scope_label(study, tasks, limit, 'test')}; times are this run's, not portable)"
    return write_all(Path(out_dir) / "costs", table, costs_figure(table, title, references), costs_plotly(table, title),
                     "table9-costs", formats, fractions=("mean_accuracy", "accuracy_se"), html_js=html_js,
                     js_dir=js_dir)
