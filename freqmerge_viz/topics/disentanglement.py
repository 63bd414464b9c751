"""Topic ``disentanglement``: the weight-disentanglement error of a task pair and the others' vectors table."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..analysis.disentanglement import DEFAULT_ALPHAS, zoo_disentanglement_error, zoo_others_table
from ..plots.core import check_html_js, write_all
from ..plots.disentanglement import disentanglement_figure, disentanglement_plotly, others_figure, others_plotly
from . import scope_label, topic_limit


def write_figures(study, out_dir, *, quick: bool = False, formats: Sequence[str] = ("png", "svg"),
                  pair: Sequence[str] | None = None, progress: bool | None = False, html_js: str = "shared",
                  js_dir=None) -> list[Path]:
    """The disentanglement error of the study's first two tasks (or `pair`) over
    :data:`DEFAULT_ALPHAS` and the others'-vectors table at scalings 0.1 to 1.0, as matplotlib
    figures in `formats`, plotly HTML and CSV tables in `out_dir`. 300 validation images per
    task (quick: 32 images, a 3 × 3 grid, scalings 0.3 and 1.0)."""
    check_html_js(html_js)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pair = list(study.tasks)[:2] if pair is None else list(pair)
    limit = topic_limit(study, quick, 300, quick_limit=32)
    alphas = (0.0, 0.5, 1.0) if quick else DEFAULT_ALPHAS
    scalings = (0.3, 1.0) if quick else (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    grid = zoo_disentanglement_error(study, pair, alphas=alphas, limit=limit, progress=progress)
    others = zoo_others_table(study, scalings=scalings, limit=limit, progress=progress)
    title = f"weight disentanglement of {pair[0]} and {pair[1]} ({scope_label(study, pair, limit, 'val')})"
    fig = disentanglement_figure(grid, title=title)
    written = write_all(out / "disentanglement", grid, fig, disentanglement_plotly(grid, title=title),
                        "freqmerge-disentanglement", formats, fractions=("accuracy",), html_js=html_js, js_dir=js_dir)
    plt.close(fig)
    title = f"others' task vectors on each task ({scope_label(study, study.tasks, limit, 'val')})"
    fig = others_figure(others, title=title)
    written += write_all(out / "others_vectors", others, fig, others_plotly(others, title=title),
                         "freqmerge-others-vectors", formats, fractions=("accuracy",), html_js=html_js,
                         js_dir=js_dir)
    plt.close(fig)
    return written
