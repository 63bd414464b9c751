"""Topic ``layers``: layer-wise profiles of the task vectors, and LiNeS-style per-layer scaling."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..analysis.evaluation import zoo_task_vectors
from ..analysis.lines import VALIDATION_LIMIT, lines_comparison
from ..analysis.singular_views import layer_profile
from ..plots.core import write_all
from ..plots.singular import layer_profile_figure, layer_profile_plotly, lines_figure, lines_plotly
from . import QUICK_LIMIT, scope

LIMIT = 300
"""Test images per task for the LiNeS comparison."""


def write_figures(zoo, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """``layer_profile.*``: per numbered layer, the task vectors' norm, mean pairwise cosine, Fourier
    and singular interference (no evaluation); ``lines.*``: task arithmetic with one scaling against
    task arithmetic with LiNeS' α + β·depth, each chosen on :data:`~freqmerge_viz.analysis.lines.VALIDATION_LIMIT`
    validation images per task, measured on :data:`LIMIT` test images. ``quick``: three tasks, 48
    images, two candidates per family."""
    out = Path(out_dir)
    tasks = scope(zoo, quick)
    profile = layer_profile(zoo_task_vectors(zoo, tasks))
    title = f"Task vectors layer by layer ({len(tasks)} zoo tasks)"
    written = write_all(out / "layer_profile", profile, layer_profile_figure(profile, title),
                        layer_profile_plotly(profile, title), "layer-profile", formats)
    options = dict(scalings=(0.1, 0.3), alphas=(0.1,), betas=(0.0, 0.2), validation_limit=QUICK_LIMIT,
                   limit=QUICK_LIMIT) if quick else dict(limit=LIMIT, validation_limit=VALIDATION_LIMIT)
    table = lines_comparison(zoo, tasks=tasks, **options)
    title = f"LiNeS per-layer scaling against one scaling (task arithmetic, {len(tasks)} zoo tasks)"
    written += write_all(out / "lines", table, lines_figure(table, title), lines_plotly(table, title), "lines",
                         formats, fractions=("accuracy", "validation_mean"))
    return written
