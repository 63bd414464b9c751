"""Topic ``cutoff_sweep``: FR accuracy and amplitude variance along the cutoff, one scaling for the whole sweep."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..analysis.sweeps import CUTOFFS, SCALINGS, choose_scaling, cutoff_sweep, sweep_references
from ..plots.core import check_html_js, fraction_names, save_csv, write_all
from ..plots.sweeps import sweep_figure, sweep_plotly
from ..spectral import KINDS
from . import scope, scope_label, topic_limit

LIMIT = 300
"""Test images per task."""
VALIDATION_LIMIT = 150
"""Validation images per task used to pick the sweep's one scaling."""
REAL_MODEL_KINDS, REAL_MODEL_CUTOFFS = ("ideal", "gaussian"), (0.0, 0.1, 0.3, 0.5)
"""The sweep of a study with a ``default_limit`` (a real model on a CPU: each point is a merge and
an evaluation of a full model)."""
DEFAULT_KIND, DEFAULT_CUTOFF = "ideal", 0.1
"""FR's paper default filter, where the sweep's scaling is chosen."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), executor=None, progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """The cutoff sweep on the study as ``cutoff_sweep.*``: ideal, Butterworth (order 2) and Gaussian
    high-pass at :data:`~freqmerge_viz.analysis.sweeps.CUTOFFS`, FR paper reading (λ_i of Eq. 3).
    One scaling for the whole sweep: the best of :data:`~freqmerge_viz.analysis.sweeps.SCALINGS`
    on :data:`VALIDATION_LIMIT` validation images per task at FR's default filter (ideal, ρ = 0.1;
    :func:`~freqmerge_viz.analysis.sweeps.choose_scaling`), held at every kind and cutoff, so the
    curve shows the cutoff alone. Accuracy on :data:`LIMIT` test images per task, beside no merge,
    task arithmetic at the same scaling and weights, and the fine-tuned models on the same images
    (``cutoff_sweep_references.csv``). ``quick``: three tasks, ideal and Gaussian at cutoffs 0 and
    0.3, scaling 1 (not chosen), 48 images. A study with a ``default_limit`` (a real model) sweeps
    :data:`REAL_MODEL_KINDS` at :data:`REAL_MODEL_CUTOFFS` on at most that many images.
    """
    check_html_js(html_js)
    tasks = tuple(scope(study, quick))
    limit = topic_limit(study, quick, LIMIT)
    if quick:
        scaling, chosen_by = 1.0, "fixed, not tuned"
        table = cutoff_sweep(study, ("ideal", "gaussian"), (0.0, 0.3), executor=executor, tasks=tasks, limit=limit,
                             progress=progress)
    else:
        scaling, _ = choose_scaling(study, DEFAULT_KIND, DEFAULT_CUTOFF, SCALINGS, tasks=tasks,
                                    validation_limit=topic_limit(study, quick, VALIDATION_LIMIT))
        chosen_by = (f"chosen once, on {VALIDATION_LIMIT} validation images per task at {DEFAULT_KIND} "
                     f"ρ = {DEFAULT_CUTOFF:g}, among {', '.join(f'{v:g}' for v in SCALINGS)}")
        real = getattr(study, "default_limit", None) is not None
        kinds, cutoffs = (REAL_MODEL_KINDS, REAL_MODEL_CUTOFFS) if real else (KINDS, CUTOFFS)
        table = cutoff_sweep(study, kinds, cutoffs, executor=executor, tasks=tasks, scalings=(scaling,), limit=limit,
                             progress=progress)
    references = sweep_references(study, scaling, tasks=tasks, limit=limit)
    title = f"FR-Merging along the cutoff ({scope_label(study, tasks, limit, 'test')}; paper reading: λ_i of Eq. 3)"
    out = Path(out_dir)
    written = write_all(out / "cutoff_sweep", table, sweep_figure(table, title, references, chosen_by),
                        sweep_plotly(table, title, references, chosen_by), "cutoff-sweep", formats,
                        fractions=("accuracy", "validation_mean"), html_js=html_js, js_dir=js_dir)
    written.append(save_csv(fraction_names(references, ["accuracy"]), out / "cutoff_sweep_references.csv"))
    return written
