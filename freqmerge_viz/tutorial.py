"""Small helpers for the tutorial notebooks in ``notebooks/``: reproducible settings and
numbers rounded for display.

The notebooks double as tests (nbval compares their stored text outputs), so what they print
must not depend on thread counts, random state or the last digits of a float sum. These
helpers keep that out of the notebook cells:

>>> from freqmerge_viz import tutorial
>>> out = tutorial.setup("out/00_quickstart")      # one torch thread, seeds, small inline figures
>>> tutorial.percent({"digits": 0.6712, "scenes": 0.98})
{'digits': 67.1, 'scenes': 98.0, 'mean': 82.6}
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

FIGURE_DPI = 80
"""Resolution of figures shown inline by the notebooks (small stored PNGs)."""


def setup(out_dir: str | os.PathLike | None = None, *, threads: int = 1, seed: int = 0,
          dpi: int = FIGURE_DPI) -> Path | None:
    """Make a notebook session reproducible; returns `out_dir` (created) or ``None``.

    Sets torch's intra-op threads to `threads` (results then do not depend on the machine's
    core count), seeds Python's, NumPy's and torch's global generators with `seed`, and sets
    matplotlib's figure resolution to `dpi` so that inline PNGs stay small. Figures exported
    by the library keep their own resolution.
    """
    import matplotlib
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    matplotlib.rcParams["figure.dpi"] = dpi
    matplotlib.rcParams["savefig.dpi"] = dpi
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def show(fig, stem: str | os.PathLike, formats=("png",), max_width: int = 640) -> list[Path]:
    """Export matplotlib `fig` as ``stem.<format>`` (:func:`freqmerge_viz.plots.save_figure`, its
    resolution) and show it once in the notebook; returns the paths written.

    The inline copy is at most `max_width` pixels wide (at most :data:`FIGURE_DPI` dpi), a PNG,
    or a JPEG where that is less than half the size (noise-like spectra), so stored notebooks
    stay small. A figure made through pyplot is closed first, so the
    inline backend does not show it a second time.
    """
    import io

    import matplotlib.pyplot as plt

    from .plots.core import save_figure

    written = save_figure(fig, stem, formats=formats)
    if plt.fignum_exists(getattr(fig, "number", -1)) and plt.figure(fig.number) is fig:
        plt.close(fig)
    width_in = float(fig.get_size_inches()[0])
    dpi = max(20, min(FIGURE_DPI, int(max_width / max(width_in, 1e-6))))
    rendered = {}
    for fmt, options in (("png", {"metadata": {"Software": None}}), ("jpeg", {"pil_kwargs": {"quality": 80}})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", **options)
        rendered[fmt] = buffer.getvalue()
    try:
        from IPython.display import Image, display
    except ImportError:  # outside IPython: exporting is all there is to do
        return written
    # line plots compress best as PNG; noise-like spectra as JPEG (well under half the bytes)
    fmt = "png" if len(rendered["png"]) <= 2 * len(rendered["jpeg"]) else "jpeg"
    display(Image(data=rendered[fmt], format=fmt))
    return written


def rounded(value: Any, digits: int = 3) -> Any:
    """`value` with every float rounded to `digits` decimals: dicts, lists, tuples, NumPy
    scalars and arrays, pandas Series and DataFrames (float columns) are walked; anything
    else is returned as is. NaN stays NaN."""
    import pandas as pd

    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isnan(value) else round(float(value), digits)
    if isinstance(value, np.ndarray):
        return np.round(value, digits) if np.issubdtype(value.dtype, np.floating) else value
    if isinstance(value, (pd.DataFrame, pd.Series)):
        return value.round(digits)
    if isinstance(value, Mapping):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(rounded(v, digits) for v in value)
    return value


def percent(accuracies: Mapping[str, float], digits: int = 1, mean: bool = True) -> dict[str, float]:
    """Accuracies in [0, 1] per task as percentages rounded to `digits` decimals, plus their
    unweighted ``"mean"`` over the tasks (computed before rounding) when `mean` is true.
    An existing ``"mean"`` entry is recomputed, not averaged in."""
    values = {k: float(v) for k, v in accuracies.items() if k != "mean"}
    out = {k: round(100.0 * v, digits) for k, v in values.items()}
    if mean and values:
        out["mean"] = round(100.0 * sum(values.values()) / len(values), digits)
    return out


def removed_table(specs: Mapping[str, Any], shapes) -> "pd.DataFrame":
    """Share of the bins (in %) that each filter sets to zero, per matrix shape.

    `specs` maps a label to a :class:`~freqmerge_viz.FilterSpec`; `shapes` are ``(H, W)``
    pairs. A bin counts as removed where the filter's gain is below 0.5 (exactly the zeroed
    bins of an ideal filter). One row per label, one column per shape (``"H×W"``).
    """
    import pandas as pd

    rows = {label: {f"{h}×{w}": round(100.0 * float((spec.mask((h, w)) < 0.5).double().mean()), 2)
                    for h, w in shapes}
            for label, spec in specs.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def masks_figure(task_vector, keys, specs: Mapping[str, Any], title: str = ""):
    """Matplotlib grid: the centred log-amplitude spectrum of each matrix `keys` of `task_vector`
    (columns) under each filter of `specs` (rows, label -> :class:`~freqmerge_viz.FilterSpec`),
    with the removed bins (gain below 0.5) painted grey and the removed share in each title.

    The official convention's mask is defined on the unshifted spectrum; :meth:`FilterSpec.mask`
    returns it centred like the picture, so both readings are drawn in the same coordinates.
    """
    import matplotlib.pyplot as plt

    from .spectral import as_matrix, log_amplitude_spectrum

    keys, labels = list(keys), list(specs)
    fig, axes = plt.subplots(len(labels), len(keys), figsize=(2.6 * len(keys) + 0.6, 2.6 * len(labels) + 0.6),
                             squeeze=False, layout="constrained")
    for c, key in enumerate(keys):
        matrix = as_matrix(task_vector[key].float(), "skip")
        spectrum = log_amplitude_spectrum(matrix).numpy()
        for r, label in enumerate(labels):
            removed = (specs[label].mask(matrix.shape) < 0.5).numpy()
            ax = axes[r][c]
            ax.imshow(spectrum, cmap="viridis", aspect="auto", interpolation="nearest")
            ax.imshow(np.ma.masked_where(~removed, removed), cmap="Greys", vmin=0, vmax=1.4, alpha=0.85,
                      aspect="auto", interpolation="nearest")
            ax.set_title(f"{key.replace('.weight', '')} {tuple(matrix.shape)}\n{label}: "
                         f"{100.0 * removed.mean():.1f}% removed", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def pick(mapping: Mapping[str, Any], keys) -> dict:
    """The entries `keys` of `mapping`, in that order (a shorter view of a widget's ``shown()``).

    A key missing from `mapping` raises ``KeyError`` naming it, so a notebook cannot silently
    print less than its prose promises.
    """
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise KeyError(f"not in the mapping: {missing}; it has {list(mapping)}")
    return {k: mapping[k] for k in keys}


def storage_comparison(routed_by_name: Mapping[str, Any]) -> "pd.DataFrame":
    """Extra storage per task of routed merges side by side, in % of one float32 model.

    `routed_by_name` maps a label to a :class:`~freqmerge_viz.RoutedMerge`; each column is that
    merge's ``storage_table()["percent_of_model"]``, one row per task, plus a ``"mean"`` row.
    """
    import pandas as pd

    columns = {label: routed.storage_table().set_index("name")["percent_of_model"]
               for label, routed in routed_by_name.items()}
    table = pd.DataFrame(columns)
    table.index.name = "task"
    table.loc["mean"] = table.mean(axis=0)
    return table


def labelled(tables: Mapping[str, "pd.DataFrame"], column: str = "setting") -> "pd.DataFrame":
    """The tables of `tables` stacked into one, each row tagged with its label in `column`
    (e.g. unfiltered and filtered interpolation curves, for one figure with a line style per
    setting). The index is renumbered; ``attrs`` are dropped."""
    import pandas as pd

    if not tables:
        raise ValueError("no tables to stack")
    parts = [table.assign(**{column: label}) for label, table in tables.items()]
    stacked = pd.concat(parts, ignore_index=True)
    stacked.attrs = {}
    return stacked


__all__ = ["FIGURE_DPI", "labelled", "masks_figure", "percent", "pick", "removed_table", "rounded", "setup", "show",
           "storage_comparison"]
