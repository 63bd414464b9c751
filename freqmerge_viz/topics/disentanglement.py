"""Topic ``disentanglement``: the weight-disentanglement error of a task pair and the others' vectors table."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..analysis.disentanglement import DEFAULT_ALPHAS, zoo_disentanglement_error, zoo_others_table
from ..outputs import write_atomically
from ..plots.core import save_figure, save_html
from ..plots.disentanglement import disentanglement_figure, disentanglement_plotly, others_figure, others_plotly


def write_figures(zoo, out_dir, *, quick: bool = False, formats: Sequence[str] = ("png", "svg"),
                  pair: Sequence[str] | None = None) -> list[Path]:
    """The disentanglement error of the zoo's first two tasks (or `pair`) over
    :data:`DEFAULT_ALPHAS` and the others'-vectors table at scalings 0.1 to 1.0, as matplotlib
    figures in `formats`, plotly HTML and CSV tables in `out_dir`. 300 validation images per
    task (quick: 32 images, a 3 × 3 grid, scalings 0.3 and 1.0)."""
    import matplotlib.pyplot as plt


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pair = list(zoo.tasks)[:2] if pair is None else list(pair)
    limit = 32 if quick else 300
    alphas = (0.0, 0.5, 1.0) if quick else DEFAULT_ALPHAS
    scalings = (0.3, 1.0) if quick else (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    grid = zoo_disentanglement_error(zoo, pair, alphas=alphas, limit=limit)
    others = zoo_others_table(zoo, scalings=scalings, limit=limit)
    written: list[Path] = []
    title = f"weight disentanglement of {pair[0]} and {pair[1]} (val, {limit} images per task)"
    fig = disentanglement_figure(grid, title=title)
    written += save_figure(fig, out / "disentanglement", formats)
    plt.close(fig)
    written.append(save_html(disentanglement_plotly(grid, title=title), out / "disentanglement.html",
                             div_id="freqmerge-disentanglement"))
    title = f"others' task vectors on each task (val, {limit} images per task)"
    fig = others_figure(others, title=title)
    written += save_figure(fig, out / "others_vectors", formats)
    plt.close(fig)
    written.append(save_html(others_plotly(others, title=title), out / "others_vectors.html",
                             div_id="freqmerge-others-vectors"))
    for name, frame in {"disentanglement.csv": grid, "others_vectors.csv": others}.items():
        target = out / name
        frame = frame.rename(columns={"accuracy": "accuracy_fraction"})
        write_atomically(target, lambda tmp, frame=frame: frame.to_csv(tmp, index=False, float_format="%.6g"))
        written.append(target)
    return written
