"""Topic ``generalisation`` (Fig. 3): θ_pre + τ_source on every target, plain and filtered, and the difference."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.generalisation import generalisation_difference, generalisation_matrix
from ..outputs import write_atomically
from ..plots.core import check_html_js, save_figure, save_html
from ..plots.generalisation import generalisation_figure, generalisation_plotly
from . import scope_label, topic_limit


def write_figures(study, out_dir, *, quick: bool = False, formats: Sequence[str] = ("png", "svg"),
                  filtered=True, tasks: Sequence[str] | None = None, progress: bool | None = False,
                  html_js: str = "shared", js_dir=None) -> list[Path]:
    """Fig. 3 on the study: heatmaps of the unfiltered and filtered matrices and their difference
    (matplotlib in `formats`, plotly HTML) and CSV tables, in `out_dir`.

    Defaults: all eight tasks, full task vectors (scaling 1, as in the paper), FR-Merging's
    default high-pass (cutoff 0.1 normalised); 1,000 test images per target (quick: the
    first four tasks, 32 images). 17 models × 8 tasks × 1,000 images: about a minute on 2
    busy CPU cores.
    """
    check_html_js(html_js)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick and tasks is None:
        tasks = list(study.tasks)[:4]
    table = generalisation_matrix(study, tasks=tasks, filtered=filtered,
                                  limit=topic_limit(study, quick, 1000, quick_limit=32), progress=progress)
    title = (f"θ_pre + τ_source on each target ({scope_label(study, table.attrs['n_images'], table.attrs['limit'], table.attrs['split'])}); "
             f"filter: {table.attrs['filter']}")
    written: list[Path] = []
    fig = generalisation_figure(table, title=title)
    written += save_figure(fig, out / "generalisation", formats)
    import matplotlib.pyplot as plt

    plt.close(fig)
    written.append(save_html(generalisation_plotly(table, title=title), out / "generalisation.html",
                             div_id="freqmerge-generalisation", html_js=html_js, js_dir=js_dir))
    pretrained = pd.DataFrame({"target": list(table.attrs["pretrained"]),
                               "accuracy_fraction": list(table.attrs["pretrained"].values())})
    difference = generalisation_difference(table).reset_index()
    difference.insert(1, "unit", "accuracy fraction, filtered − unfiltered")
    accuracies = table.rename(columns={"accuracy": "accuracy_fraction"})
    accuracies["n_images"] = accuracies["target"].map(table.attrs["n_images"])
    pretrained["n_images"] = pretrained["target"].map(table.attrs["n_images"])
    tables = {"generalisation.csv": accuracies,
              "generalisation_difference.csv": difference,
              "generalisation_pretrained.csv": pretrained}
    for name, frame in tables.items():
        target = out / name
        write_atomically(target, lambda tmp, frame=frame: frame.to_csv(tmp, index=False, float_format="%.6g"))
        written.append(target)
    return written
