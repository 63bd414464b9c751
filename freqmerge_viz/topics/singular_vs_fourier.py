"""Topic ``singular_vs_fourier``: the Fourier and the singular view of interference side by side, per
layer and method, and as predictors of merged accuracy over task pairs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..analysis.evaluation import study_task_vectors
from ..analysis.singular_views import (DEFAULT_VIEWS, PAIR_MEASURES, interference_views, pair_singular_table, per_layer,
                                       predictor_comparison)
from ..plots.core import check_html_js, save_csv, write_all
from ..plots.interference import interference_plotly
from ..plots.singular import (layer_views_figure, layer_views_plotly, pair_scatter_figure, predictor_figure,
                              predictor_plotly)
from . import scope, scope_label, topic_limit

LIMIT = 400
"""Test images per task for the pair merges and the fine-tuned baselines (as Fig. 2b)."""
N_BOOT = 2000
"""Bootstrap resamples of the task pairs."""
MEASURES = ("amplitude_variance",) + PAIR_MEASURES
"""Measures correlated with the pairs' merged accuracy: both Fourier ones and the singular ones."""
SCATTER = PAIR_MEASURES
"""Measures drawn as scatter panels (one Fourier, three singular)."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """``singular_vs_fourier_layers.*`` (per-layer means of the Fourier and singular measures after
    each of :data:`~freqmerge_viz.analysis.singular_views.DEFAULT_VIEWS`' per-task steps; the CSV
    holds every matrix), ``singular_vs_fourier_pairs.*`` (every pair of the study's tasks merged by
    task arithmetic at its registered scaling 0.3, as Fig. 2b: merged accuracy against each
    measure) and ``singular_vs_fourier_predictors.*`` (Spearman ρ of each measure with the merged
    accuracy, and its gain over the Fourier measure, with :data:`N_BOOT` paired bootstrap resamples,
    seed 0). ``quick``: three tasks, 48 images, 200 resamples."""
    check_html_js(html_js)
    out = Path(out_dir)
    tasks = scope(study, quick)
    views = interference_views(study_task_vectors(study, tasks), DEFAULT_VIEWS, progress=progress)
    layers = per_layer(views)
    title = (f"Fourier and singular interference per layer ({scope_label(study, tasks)}; each method's per-task step at its "
             "registered defaults)")
    written = write_all(out / "singular_vs_fourier_layers", views, layer_views_figure(layers, title),
                        layer_views_plotly(layers, title), "singular-vs-fourier-layers", formats, html_js=html_js,
                        js_dir=js_dir)
    written.append(save_csv(layers, out / "singular_vs_fourier_layer_means.csv"))
    pairs = pair_singular_table(study, tasks=tasks, limit=topic_limit(study, quick, LIMIT), progress=progress)
    comparison = predictor_comparison(pairs, MEASURES, n_boot=200 if quick else N_BOOT, seed=0)
    scatter = comparison[comparison["x"].isin(SCATTER)].reset_index(drop=True)
    title = (f"{len(pairs)} pairs of tasks ({scope_label(study, tasks, topic_limit(study, quick, LIMIT), 'test')}) merged by task arithmetic (scaling 0.3, not tuned): merged accuracy "
             "against each interference measure")
    written += write_all(out / "singular_vs_fourier_pairs", pairs, pair_scatter_figure(pairs, scatter, title),
                         interference_plotly(pairs, scatter, title), "singular-vs-fourier-pairs", formats,
                         fractions=("accuracy_a", "accuracy_b", "individual_a", "individual_b"), html_js=html_js,
                         js_dir=js_dir)
    title = f"Which interference measure ranks the pairs' merged accuracy better? (as measured on {study.name})"
    written += write_all(out / "singular_vs_fourier_predictors", comparison, predictor_figure(comparison, title),
                         predictor_plotly(comparison, title), "singular-vs-fourier-predictors", formats,
                         html_js=html_js, js_dir=js_dir)
    return written
