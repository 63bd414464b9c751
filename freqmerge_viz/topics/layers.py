"""Topic ``layers``: layer-wise profiles of the task vectors, and LiNeS-style per-layer scaling."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..analysis.evaluation import study_task_vectors
from ..analysis.lines import VALIDATION_LIMIT, lines_comparison
from ..analysis.singular_views import layer_profile
from ..plots.core import check_html_js, write_all
from ..plots.singular import layer_profile_figure, layer_profile_plotly, lines_figure, lines_plotly
from . import scope, scope_label, topic_limit

LIMIT = 300
"""Test images per task for the LiNeS comparison."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """``layer_profile.*``: per numbered layer, the task vectors' norm, mean pairwise cosine, Fourier
    and singular interference (no evaluation); ``lines.*``: task arithmetic with one scaling against
    task arithmetic with LiNeS' α + β·depth, each chosen on :data:`~freqmerge_viz.analysis.lines.VALIDATION_LIMIT`
    validation images per task, measured on :data:`LIMIT` test images. ``quick``: three tasks, 48
    images, two candidates per family."""
    check_html_js(html_js)
    out = Path(out_dir)
    tasks = scope(study, quick)
    profile = layer_profile(study_task_vectors(study, tasks), progress=progress)
    title = f"Task vectors layer by layer ({scope_label(study, tasks)})"
    written = write_all(out / "layer_profile", profile, layer_profile_figure(profile, title),
                        layer_profile_plotly(profile, title), "layer-profile", formats, html_js=html_js, js_dir=js_dir)
    options = dict(scalings=(0.1, 0.3), alphas=(0.1,), betas=(0.0, 0.2), validation_limit=topic_limit(study, quick, LIMIT),
                   limit=topic_limit(study, quick, LIMIT)) if quick else dict(limit=topic_limit(study, quick, LIMIT),
                                                             validation_limit=topic_limit(study, quick, VALIDATION_LIMIT))
    table = lines_comparison(study, tasks=tasks, progress=progress, **options)
    title = f"LiNeS per-layer scaling against one scaling (task arithmetic; {scope_label(study, tasks, topic_limit(study, quick, LIMIT), 'test')})"
    written += write_all(out / "lines", table, lines_figure(table, title), lines_plotly(table, title), "lines",
                         formats, fractions=("accuracy", "validation_mean"), html_js=html_js, js_dir=js_dir)
    return written
