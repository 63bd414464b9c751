"""Every figure and table of the paper's analyses, for one zoo, in one call.

Each topic lives in an analysis module exposing ``write_figures(zoo, out_dir, *, quick,
formats) -> list[Path]`` (matplotlib PNG/SVG/PDF, plotly HTML, CSV tables). This module only
runs them in turn and records what each wrote and how long it took.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from .errors import ParameterError
from .io import write_text_atomically
from .outputs import check_output, make_folder, source_paths

TOPICS: dict[str, str] = {
    "spectra": "freqmerge_viz.analysis.spectra",
    "table1": "freqmerge_viz.analysis.table1",
    "interference_vs_performance": "freqmerge_viz.analysis.correlation",
    "generalisation": "freqmerge_viz.analysis.generalisation",
    "disentanglement": "freqmerge_viz.analysis.disentanglement",
    "landscape": "freqmerge_viz.analysis.landscape",
    "cutoff_sweep": "freqmerge_viz.analysis.sweeps",
    "expert_sparsity": "freqmerge_viz.analysis.experts_curves",
    "router_robustness": "freqmerge_viz.analysis.router_robustness",
    "costs": "freqmerge_viz.analysis.costs",
}
"""Topic name -> module whose ``write_figures`` draws it (paper figure order)."""

INDEX = "index.json"


def write_all(zoo, out_dir: str | Path, *, topics: Sequence[str] | None = None, quick: bool = False,
              formats: Sequence[str] = ("png", "svg"),
              progress: Callable[[str], None] | None = None) -> dict:
    """Write the figures of `topics` (default: all of :data:`TOPICS`) for `zoo` into
    ``out_dir/<topic>/``, plus ``out_dir/index.json`` listing each topic's files (relative
    paths) and its wall time in seconds. Returns that index."""
    chosen = list(TOPICS) if topics is None else list(topics)
    unknown = [t for t in chosen if t not in TOPICS]
    if unknown:
        raise ParameterError(f"unknown figure topic(s) {unknown}; choose from {list(TOPICS)}")
    out = Path(out_dir)
    check_output(out, source_paths([zoo]), what="figures folder")
    make_folder(out)
    index = {"zoo": str(zoo.path), "quick": quick, "formats": list(formats), "topics": {}}
    for topic in chosen:
        if progress:
            progress(topic)
        start = time.perf_counter()
        module = importlib.import_module(TOPICS[topic])
        files = module.write_figures(zoo, out / topic, quick=quick, formats=tuple(formats))
        index["topics"][topic] = {"seconds": round(time.perf_counter() - start, 1),
                                  "files": sorted(str(Path(f).relative_to(out)) for f in files)}
        write_text_atomically(out / INDEX, json.dumps(index, indent=1) + "\n")
    return index
