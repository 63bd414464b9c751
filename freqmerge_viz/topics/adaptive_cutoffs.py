"""Topic ``adaptive_cutoffs``: each matrix's cutoff chosen from its spectrum against FR's fixed cutoff."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.adaptive import RULES, chosen_cutoffs, rule_comparison
from ..analysis.sweeps import SCALINGS
from ..plots.core import check_html_js, save_csv, write_all
from ..progress import track
from ..plots.singular import cutoff_rules_figure, cutoff_rules_plotly
from . import scope, scope_label, topic_limit

LIMIT = 300
"""Test images per task."""
VALIDATION_LIMIT = 150
"""Validation images per task used to choose each rule's scaling."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """``adaptive_cutoffs.*``: the cutoff each adaptive rule of
    :data:`~freqmerge_viz.analysis.adaptive.RULES` gives each matrix (``adaptive_cutoffs_chosen.csv``)
    and FR's test accuracy under each rule, each at the scaling of
    :data:`~freqmerge_viz.analysis.sweeps.SCALINGS` it does best with on :data:`VALIDATION_LIMIT`
    validation images per task, on :data:`LIMIT` test images. ``quick``: three tasks, 48 images,
    scaling 1 (not chosen)."""
    check_html_js(html_js)
    out = Path(out_dir)
    tasks = scope(study, quick)
    frames = []
    for rule, params in track(list(RULES.items()), "adaptive cutoffs: chosen per matrix", progress, unit="rule"):
        if rule != "fixed":
            frame = chosen_cutoffs(study, params, tasks=tasks)
            frame.insert(0, "rule", rule)
            frames.append(frame)
    cutoffs = pd.concat(frames, ignore_index=True)
    results = rule_comparison(study, RULES, tasks=tasks, scalings=(1.0,) if quick else SCALINGS,
                              limit=topic_limit(study, quick, LIMIT),
                              validation_limit=topic_limit(study, quick, VALIDATION_LIMIT), progress=progress)
    fixed = float(results.loc[results["rule"] == "fixed", "cutoff"].iloc[0])
    title = f"FR with adaptive per-matrix cutoffs against the fixed cutoff ({scope_label(study, tasks, topic_limit(study, quick, LIMIT), 'test')})"
    written = write_all(out / "adaptive_cutoffs", results, cutoff_rules_figure(cutoffs, results, title, fixed),
                        cutoff_rules_plotly(cutoffs, results, title, fixed), "adaptive-cutoffs", formats,
                        fractions=("accuracy", "validation_mean"), html_js=html_js, js_dir=js_dir)
    written.append(save_csv(cutoffs, out / "adaptive_cutoffs_chosen.csv"))
    return written
