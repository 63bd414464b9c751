"""Topic ``interference_vs_performance`` (Fig. 2b): amplitude variance against merged accuracy over task pairs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..analysis.correlation import correlation_table, pair_interference_table
from ..methods import get_method
from ..plots.core import check_html_js, save_csv, write_all
from ..plots.interference import interference_plotly, interference_scatter
from . import scope, scope_label, topic_limit

LIMIT = 400
"""Test images per task for the pair merges and the fine-tuned baselines."""
N_BOOT = 2000
"""Bootstrap resamples of the task pairs for the correlations' intervals."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """Fig. 2b on the study: ``interference_vs_accuracy.*`` (one row per pair) and
    ``interference_correlation.csv``.

    Every pair of the study's tasks is merged by task arithmetic at its registered scaling 0.3
    (fixed, not tuned: the paper's figure varies the models, not the merge) and evaluated on the
    first :data:`LIMIT` test images of both tasks; correlations carry :data:`N_BOOT` seeded
    bootstrap resamples (seed 0). ``quick``: three tasks (three pairs), 48 images, 200 resamples.
    """
    check_html_js(html_js)
    out = Path(out_dir)
    pairs = pair_interference_table(study, tasks=scope(study, quick), limit=topic_limit(study, quick, LIMIT),
                                    progress=progress)
    correlations = correlation_table(pairs, n_boot=200 if quick else N_BOOT, seed=0)
    scaling = get_method("task_arithmetic").resolve({})["scaling"]
    title = (f"{len(pairs)} pairs of tasks ({scope_label(study, scope(study, quick), topic_limit(study, quick, LIMIT), 'test')}) "
             f"merged by task arithmetic (scaling {scaling:g}); correlations as measured on {study.name}")
    written = write_all(out / "interference_vs_accuracy", pairs, interference_scatter(pairs, correlations, title),
                        interference_plotly(pairs, correlations, title), "fig2b-interference", formats,
                        fractions=("accuracy_a", "accuracy_b", "individual_a", "individual_b"), html_js=html_js,
                        js_dir=js_dir)
    written.append(save_csv(correlations, out / "interference_correlation.csv"))
    return written
