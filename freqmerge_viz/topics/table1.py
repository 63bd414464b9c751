"""Topic ``table1`` (Table 1): the across-task amplitude variance after each method's per-task step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..analysis.evaluation import study_task_vectors
from ..analysis.table1 import DEFAULT_ROWS, table1
from ..plots.core import check_html_js, write_all
from ..plots.table1 import table1_bars, table1_plotly
from . import scope, scope_label


def write_figures(study, out_dir: str | os.PathLike, *, quick: bool = False,
                  formats: Sequence[str] = ("png", "svg"), progress: bool | None = False,
                  html_js: str = "shared", js_dir: str | os.PathLike | None = None) -> list[Path]:
    """Table 1 on the study's task vectors as ``table1.*``: :data:`~freqmerge_viz.analysis.table1.DEFAULT_ROWS`
    (registered defaults of each method's per-task step), kept bins = those of FR's default ideal
    high-pass (ρ ≥ 0.1). No evaluation; ``quick`` uses the first three tasks.
    """
    check_html_js(html_js)
    table = table1(study_task_vectors(study, scope(study, quick)), DEFAULT_ROWS, progress=progress)
    fr = table.set_index("label").loc["FR"]
    title = (f"Across-task amplitude variance after each method's step ({scope_label(study, scope(study, quick))}); "
             f"FR: {round(fr['change_all_pct'], 1) + 0.0:+.1f}% over all bins, "
             f"{round(fr['change_kept_pct'], 1) + 0.0:+.1f}% over the "
             f"{100 * fr['kept_fraction']:.1f}% of bins it keeps")
    return write_all(Path(out_dir) / "table1", table, table1_bars(table, title), table1_plotly(table, title),
                     "table1-amplitude-variance", formats, html_js=html_js, js_dir=js_dir)
