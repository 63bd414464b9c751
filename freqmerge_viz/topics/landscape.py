"""Topic ``landscape`` (Fig. 4): loss and accuracy on the plane of two task vectors, merged points, interpolations."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import time

import pandas as pd

from ..analysis.landscape import DEFAULT_METHODS, default_pair, filter_label, merged_states, plane_study
from ..outputs import write_atomically
from ..plots.core import check_html_js, save_figure, save_html
from ..plots.landscape import interpolation_figure, interpolation_plotly, landscape_figure, landscape_plotly
from ..progress import track
from . import scope_label, topic_limit


REAL_MODEL_GRID = 9
"""Grid points per axis (and curve points) of a study with a ``default_limit`` (see write_figures)."""


def write_figures(study, out_dir, *, quick: bool = False, formats: Sequence[str] = ("png", "svg"),
                  task_a: str | None = None, task_b: str | None = None, eval_task: str | None = None,
                  filtered=True, cache_dir=None, progress: bool | None = False, html_js: str = "shared",
                  js_dir=None) -> list[Path]:
    """Fig. 4 on the study: loss/accuracy landscapes unfiltered and filtered, merged points,
    interpolation curves; matplotlib (`formats`), plotly HTML and CSV tables in `out_dir`.

    Defaults on the demo zoo: tasks ``landcover`` and ``textures``, its stand-ins for the paper's
    EuroSAT and DTD, evaluated on landcover (another study: its first two tasks). Their task vectors interfere: nearly orthogonal
    (cosine 0.09), ``θ_pre + τ_textures`` drops landcover to 34% and Task Arithmetic of the
    two (scaling 0.5) scores below θ_pre there (loss 0.30 against 0.15, accuracy 91% against
    96%; model A: 99.6%; 256 test images). The filter is FR-Merging's default high-pass
    (``filtered=True``, cutoff 0.1 normalised); merged points Task Arithmetic (scaling 0.5),
    FR-Merging and TIES, merged once and projected onto both planes. Full: a 21 × 21 grid
    per plane, 256 test images per point, 21 points per curve (1,020 models, 261,000 image
    forward passes; under a minute to two on 2 busy CPU cores). Quick: 5 × 5, 32 images,
    3 points per curve, Task Arithmetic only. A study with a ``default_limit`` (a real model: an
    open_clip, transformers or python study file's ``limit``) gets a :data:`REAL_MODEL_GRID`-point
    grid and curves on at most that many images (ViT-B-32 on 2 CPU cores: about ten minutes);
    ``--device cuda`` or an executor for more. `cache_dir` (default: none) caches every
    evaluation.
    """
    check_html_js(html_js)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if task_a is None or task_b is None:
        task_a, task_b = default_pair(study)
    grid, limit, n_curve = (5, 32, 3) if quick else (21, 256, 21)
    if not quick and getattr(study, "default_limit", None) is not None:
        grid, n_curve = REAL_MODEL_GRID, REAL_MODEL_GRID
    limit = topic_limit(study, quick, limit, quick_limit=limit)
    methods = {k: v for k, v in DEFAULT_METHODS.items() if not quick or k == "task_arithmetic"}
    settings = {"unfiltered": None, filter_label(filtered): filtered}
    grids, points, curves, planes = {}, {}, [], []
    merged = None
    start = time.perf_counter()
    for label, setting in track(list(settings.items()), "landscape: planes (grid, points, curves)", progress,
                                unit="plane"):
        plane = plane_study(study, task_a, task_b, eval_task=eval_task, filtered=setting, split="test",
                            limit=limit, cache_dir=cache_dir)
        if merged is None:
            merged = merged_states(methods, plane.pretrained, plane.finetuned_a, plane.finetuned_b, plane.names,
                                   list(plane.plane.origin))
        grids[label] = plane.grid(grid)
        points[label] = plane.points({}, merged)
        curve = plane.curves(n_curve)
        curve.insert(0, "setting", label)
        curves.append(curve)
        planes.append({"setting": label, **plane.plane.metadata(), "task_a": task_a, "task_b": task_b,
                       "eval_task": plane.info["eval_task"], "samples": len(plane.evaluator.labels),
                       "mode": grids[label].attrs["mode"], "cache_hit": grids[label].attrs["cache_hit"]})
    evaluated = time.perf_counter() - start
    evaluated_on = planes[0]["eval_task"]
    written: list[Path] = []
    fig = landscape_figure(grids, points, metric=("loss", "accuracy"),
                           title=f"{evaluated_on} ({scope_label(study, [evaluated_on], limit, 'test')}) on the plane of "
                                 f"τ_{task_a} and τ_{task_b}")
    written += save_figure(fig, out / "landscape", formats)
    _close(fig)
    for metric in ("loss", "accuracy"):
        title = f"{metric} on {evaluated_on}: plane of τ_{task_a} and τ_{task_b}"
        written.append(save_html(landscape_plotly(grids, points, metric=metric, title=title),
                                 out / f"landscape_{metric}.html", div_id=f"freqmerge-landscape-{metric}",
                                 html_js=html_js, js_dir=js_dir))
    table = pd.concat(curves, ignore_index=True)
    fig = interpolation_figure(table, title=f"interpolation, evaluated on {evaluated_on}",
                               n_images=planes[0]["samples"])
    written += save_figure(fig, out / "landscape_curves", formats)
    _close(fig)
    written.append(save_html(interpolation_plotly(table, title=f"interpolation, evaluated on {evaluated_on}"),
                             out / "landscape_curves.html", div_id="freqmerge-landscape-curves", html_js=html_js,
                             js_dir=js_dir))
    tables = {
        "landscape_grid.csv": pd.concat([g.assign(setting=k) for k, g in grids.items()], ignore_index=True)[
            ["setting", "alpha", "beta", "loss", "accuracy"]].rename(columns={"accuracy": "accuracy_fraction"}),
        "landscape_points.csv": pd.concat([p.assign(setting=k) for k, p in points.items()], ignore_index=True)[
            ["setting", "method", "alpha", "beta", "off_plane_distance", "loss", "accuracy"]].rename(
            columns={"accuracy": "accuracy_fraction"}),
        "landscape_curves.csv": table.rename(columns={"accuracy": "accuracy_fraction"}),
        "landscape_planes.csv": pd.DataFrame(planes).assign(evaluation_seconds=round(evaluated, 1)),
    }
    for name, frame in tables.items():
        target = out / name
        write_atomically(target, lambda tmp, frame=frame: frame.to_csv(tmp, index=False, float_format="%.6g"))
        written.append(target)
    return written


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
