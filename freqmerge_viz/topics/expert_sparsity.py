"""Topic ``expert_sparsity`` (Fig. 5b): expert-only accuracy against density for each kind of expert."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..analysis.experts_curves import DENSITIES, KINDS, expert_curves
from ..plots.core import check_html_js, write_all
from ..plots.experts import experts_figure, experts_plotly
from . import scope, scope_label, topic_limit

LIMIT = 300
"""Test images per task."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """Fig. 5b on the study as ``expert_sparsity.*``: every kind of :mod:`~freqmerge_viz.analysis.experts_curves`
    at densities :data:`~freqmerge_viz.analysis.experts_curves.DENSITIES`, Bernoulli seed 0, first
    :data:`LIMIT` test images per task. Nothing is tuned (no validation). ``quick``: three tasks,
    densities 0.01 and 1, 48 images.
    """
    check_html_js(html_js)
    tasks = scope(study, quick)
    table = expert_curves(study, kinds=KINDS, densities=(0.01, 1.0) if quick else DENSITIES, tasks=tasks,
                          limit=topic_limit(study, quick, LIMIT), progress=progress)
    title = f"Expert-only accuracy (θ_pre + e_t on task t), {scope_label(study, tasks, table.attrs['limit'], 'test')}"
    return write_all(Path(out_dir) / "expert_sparsity", table, experts_figure(table, title),
                     experts_plotly(table, title), "fig5b-expert-sparsity", formats,
                     fractions=("accuracy", "individual"), html_js=html_js, js_dir=js_dir)
