"""Topic ``spectra`` (Fig. 2a): centred log-amplitude spectra of one matrix per task, radial profiles per matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..analysis.evaluation import study_task_vectors
from ..analysis.spectra import radial_profiles_by_key, spectra_of_key, spectra_table, spectrum_key
from ..analysis.table1 import reference_filter
from ..plots.core import check_html_js, spectra_grid, write_all
from ..plots.scales import spectrum_image
from ..plots.spectra import radial_profiles_dropdown, radial_profiles_grid, spectra_plotly
from . import scope

N_BINS = 16
"""Radial shells between normalised radius 0 (DC) and 1 (the spectrum's corner)."""


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """Fig. 2a on the study: ``spectra.*`` (the report's matrix, :func:`~freqmerge_viz.report.spectrum_key`,
    with FR's default ideal high-pass ρ = 0.1 outlined; bins at numerical zero grey and listed in
    the caption, the CSV's ``zero`` column marks them) and ``radial_profiles_by_key.*`` (every
    matrix, :data:`N_BINS` shells). No evaluation; ``quick`` uses the first three tasks.
    """
    check_html_js(html_js)
    import matplotlib.pyplot as plt


    out = Path(out_dir)
    vectors = study_task_vectors(study, scope(study, quick))
    key = spectrum_key(vectors[0])
    spec = reference_filter()
    table = spectra_table(vectors, [key])
    table["zero"] = spectrum_image(np.exp(table["log_amplitude"].to_numpy())).zero
    spectra = spectra_of_key(vectors, key, device="cpu")
    outline = spec.mask(spectra.shape[-2:]).numpy()
    title = (f"{key}: centred log amplitude of each task vector (cyan: FR's ideal high-pass keeps "
             f"ρ ≥ {spec.cutoffs[0]:g}, outside the outline)")
    static = spectra_grid(list(spectra), [tv.name for tv in vectors], title, masks=[outline] * len(vectors))
    interactive = spectra_plotly(table, key, f"{key}: centred log amplitude of each task vector")
    written = write_all(out / "spectra", table, static, interactive, "fig2a-spectra", formats, html_js=html_js,
                        js_dir=js_dir)
    plt.close(static)
    profiles = radial_profiles_by_key(vectors, n_bins=N_BINS, progress=progress)
    written += write_all(out / "radial_profiles_by_key", profiles,
                         radial_profiles_grid(profiles, spec.cutoffs[0], "Radial amplitude profile per layer and "
                                                                          "matrix (one line per task)"),
                         radial_profiles_dropdown(profiles, spec.cutoffs[0], "Radial amplitude profile"),
                         "fig2a-radial-profiles", formats, html_js=html_js, js_dir=js_dir)
    return written
