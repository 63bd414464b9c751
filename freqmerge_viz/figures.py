"""Every figure and table of the paper's analyses, for one study (the demo zoo or yours), in one call.

Each topic is a module of :mod:`freqmerge_viz.topics` exposing ``write_figures(study, out_dir, *,
quick, formats, progress, html_js, js_dir) -> list[Path]`` (matplotlib PNG/SVG/PDF, plotly HTML,
CSV tables). This module only runs them in turn, with `threads` torch threads, and records what
each wrote and how long it took.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from .backend import torch_threads
from .errors import ParameterError
from .io import write_text_atomically
from .plots.core import PLOTLY_JS, check_html_js
from .outputs import check_output, make_folder, source_paths
from .study import as_study
from .topics import TOPICS, not_applicable, topic_module

INDEX = "index.json"


def write_all(study, out_dir: str | Path, *, topics: Sequence[str] | None = None, quick: bool = False,
              formats: Sequence[str] = ("png", "svg"), progress: Callable[[str], None] | None = None,
              threads: int | None | str = "study", html_js: str = "shared",
              progress_bars: bool | None | str = "study") -> dict:
    """Write the figures of `topics` (default: all of :data:`~freqmerge_viz.topics.TOPICS`) for
    `study` (a study, the zoo, a zoo folder or a study YAML file) into ``out_dir/<topic>/``, plus
    ``out_dir/index.json`` listing each topic's files
    (relative paths) and its wall time in seconds. Returns that index.

    The topics run with `threads` torch threads; the default ``"study"`` takes the study's
    ``threads`` (1 for the demo zoo and python studies, whose many small operations were measured
    3–8× slower with two threads on a busy 2-core machine; ``None``, torch's setting, for the
    open_clip and transformers kinds, whose large matrix products use every core). The
    previous setting is restored afterwards.

    `html_js` says where the HTML pages get plotly.js (:data:`~freqmerge_viz.plots.core.HTML_JS`):
    ``"shared"`` (default) writes one ``out_dir/plotly.min.js`` that every topic's pages load by a
    relative path (``../plotly.min.js``; the folder works offline when opened or copied whole; the
    index names it under ``"plotly_js"``), ``"inline"`` puts it into every page (about 4.8 MB
    each), ``"cdn"`` loads it from cdn.plot.ly (pages need internet access when viewed).

    `progress` is called with each topic's name as it starts. `progress_bars`: tqdm bars on stderr
    over each topic's long loops (:mod:`freqmerge_viz.progress`: True, False, or None for only when
    stderr is a terminal); the default ``"study"`` takes the study's ``progress`` (False unless
    set; the command line sets None), which also drives the bars of its evaluations.
    """
    check_html_js(html_js)
    chosen = list(TOPICS) if topics is None else list(topics)
    unknown = [t for t in chosen if t not in TOPICS]
    if unknown:
        raise ParameterError(f"unknown figure topic(s) {unknown}; choose from {list(TOPICS)}")
    out = Path(out_dir)
    study = as_study(study)
    check_output(out, source_paths([study]), what="figures folder")
    make_folder(out)
    index = {"study": getattr(study, "name", "study"), "kind": getattr(study, "kind", "custom"),
             "source": str(getattr(study, "source_path", None) or ""), "quick": quick, "formats": list(formats),
             "html_js": html_js, "topics": {}}
    if getattr(study, "kind", "") == "zoo":
        index["zoo"] = str(study.path)
    if threads == "study":
        threads = getattr(study, "threads", 1)
    if progress_bars == "study":
        progress_bars = getattr(study, "progress", False)
    with torch_threads(threads):
        for topic in chosen:
            if progress:
                progress(topic)
            start = time.perf_counter()
            reason = not_applicable(study, topic)
            if reason is not None:
                index["topics"][topic] = {"seconds": 0.0, "files": [], "not_applicable": reason}
                write_text_atomically(out / INDEX, json.dumps(index, indent=1) + "\n")
                continue
            write = topic_module(topic).write_figures
            files = write(study, out / topic, quick=quick, formats=tuple(formats),
                          **_accepted(write, progress=progress_bars, html_js=html_js, js_dir=out))
            index["topics"][topic] = {"seconds": round(time.perf_counter() - start, 1),
                                      "files": sorted(str(Path(f).relative_to(out)) for f in files)}
            if html_js == "shared" and (out / PLOTLY_JS).is_file():
                index["plotly_js"] = PLOTLY_JS
            write_text_atomically(out / INDEX, json.dumps(index, indent=1) + "\n")
    return index


def _accepted(function: Callable, **options) -> dict:
    """The `options` that `function` takes (a topic written before ``progress``, ``html_js`` and
    ``js_dir`` existed still runs, with its own defaults)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    return {name: value for name, value in options.items() if name in parameters}


__all__ = ["TOPICS", "INDEX", "write_all"]
