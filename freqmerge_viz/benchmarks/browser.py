"""``browser``: key press on an explorer's slider → plot visibly updated, in a real JupyterLab page.

JupyterLab and headless Chromium as in the real-browser test (:mod:`.lab`). Each tutorial
notebook with an explorer (03 cutoff, 04 experts, 05 landscape) is run top to bottom; then
for each slider, `n` key presses, one at a time. A press is timed in the page: from the
``keydown`` event on the slider handle to the first animation frame after ``Plotly.react``
has drawn the figure the kernel sent back (debounce, computation in the kernel, transfer and
drawing included). Every press moves to a value not shown before (no cached result), except
where a slider has fewer stops. Prints JSON: per slider ``p50_ms``, ``p95_ms``, ``max_ms``, the
target where the issue set one, and the kernel's own time per update (``kernel_p50_ms``, from
the explorer's status line). Sliders of an explorer that refines its numbers (all three:
:data:`REFINING`) are then pressed a few more times, each time waiting for the refinement to stop
(``refinement``): ms from the press to the first estimate and to the settled numbers (the SE the
explorer targets at most 1 point, or the whole split), and the images and SE behind each. With ``--screenshots DIR`` it also writes each explorer before
and after its first slider's moves, with the notebook column 1500 and 1000 px wide (the
README's pictures).

No floor (``floor: null`` and ``floor_reason``): a press's latency is JupyterLab's and
Chromium's round trip around the kernel's update; the kernel's part is ``kernel_p50_ms``,
whose computations have their floors in the ``slider``'s stages and the ``filter``,
``landscape`` and ``interference --in-memory`` benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

from . import lab as harness

REPO = Path(__file__).resolve().parents[2]

SLIDERS = {
    "cutoff": ("03_fr_merging.ipynb", [("cutoff", "ArrowRight", None, 300.0), ("scaling", "ArrowRight", None, None)]),
    "expert": ("04_experts_router.ipynb", [("router-accuracy", "ArrowLeft", None, 200.0),
                                            ("density", "ArrowRight", "Home", 1500.0)]),
    "landscape": ("05_loss_landscape.ipynb", [("grid", "ArrowRight", None, None)]),
}
"""explorer -> (notebook, [(slider class, key, key pressed once before timing, target p50 in ms)])."""


def latency_target(explorer: str, slider: str) -> float | None:
    """The p50 latency target (ms) of `slider` (its class without ``fmv-``) of `explorer`, or ``None``."""
    return next(target for css, _, _, target in SLIDERS[explorer][1] if css == slider)


REFINING = {"cutoff": 5, "expert": 2, "landscape": 1}
"""Explorers that refine their numbers in the background -> how many presses of each slider are also
timed to the settled refinement (``refinement``; a landscape grid, or an expert density, takes tens of
seconds to settle);
the others keep their first estimate (``refinement: null``)."""

SETTLE_TIMEOUT_MS = 900_000
"""Longest wait for one setting's refinement to settle (a fine landscape grid takes minutes)."""

KEY_TIME_JS = """
root => {
  const handles = root.querySelectorAll('.noUi-handle');
  handles.forEach(h => h.addEventListener('keydown', () => { window.__fmvKeyAt = performance.now(); },
                                          {capture: true}));
  return handles.length;
}
"""


REFINEMENT_JS = """
root => {
  const gd = root.querySelector('.fmv-plot');
  const basis = root.querySelector('.fmv-refinement');
  const summary = basis && basis.closest('[data-revision]');
  if (!gd || !gd.data || !summary || !basis) return null;
  const merged = gd.data.find(t => t.name === 'merged');
  const bars = Array.from((merged && merged.error_y && merged.error_y.array) || []);
  return {revision: Number(gd.dataset.revision || -1), summaryRevision: Number(summary.dataset.revision),
          drawnAt: Number(gd.dataset.drawnAt || 0), state: basis.dataset.state,
          total: Number(basis.dataset.total), fewest: Number(basis.dataset.fewest), se: Number(basis.dataset.se),
          meanBar: merged ? bars.reduce((a, b) => a + b, 0) / Math.max(1, bars.length) : null,
          meanSe: merged ? Math.sqrt(bars.reduce((a, b) => a + b * b, 0)) / Math.max(1, bars.length) : null};
}
"""
"""What an explorer's page shows of its refinement: the state, image counts and standard error
(``se``, percentage points) from its ``.fmv-refinement`` element, the bars' mean ±1 SE and the
mean's SE from the trace named 'merged' (the cutoff explorer; null for an explorer without that
trace), with the plot's revision and the summary's (the element around ``.fmv-refinement`` that
carries a ``data-revision``; equal when both show the same update)."""


def refinement_state(root) -> dict | None:
    """:data:`REFINEMENT_JS` on the explorer under `root`."""
    return root.evaluate(REFINEMENT_JS)


def wait_refinement(page, root, condition_js: str, timeout_ms: int = 120_000) -> dict:
    """Wait until the page's refinement state ``s`` (as :func:`refinement_state`, with plot and
    summary at the same revision) satisfies the JavaScript expression `condition_js`."""
    page.wait_for_function(
        f"""root => {{ const s = ({REFINEMENT_JS.strip()})(root);
                      return s !== null && s.revision === s.summaryRevision && ({condition_js}); }}""",
        arg=root.element_handle(), timeout=timeout_ms, polling=50)
    return refinement_state(root)


def time_to_settle(page, root, css: str, key: str, n: int) -> dict:
    """Press `key` `n` times on slider `css`, each time waiting until the refinement stops:
    ms from the key press to the first estimate drawn and to the last refinement drawn (mean's
    SE at the target, or the whole split), with the images behind each."""
    handle = harness.slider_handle(root, f".fmv-{css}")
    handle.focus()
    first, settled, images, ses = [], [], [], []
    state = wait_refinement(page, root, "s.state !== 'refining'", timeout_ms=SETTLE_TIMEOUT_MS)
    for _ in range(n):
        handle.press(key)
        pressed = state["revision"]
        start = wait_refinement(page, root, f"s.revision > {pressed}")
        first.append(start["drawnAt"] - page.evaluate("() => window.__fmvKeyAt"))
        state = wait_refinement(page, root, "s.state !== 'refining'", timeout_ms=SETTLE_TIMEOUT_MS)
        settled.append(state["drawnAt"] - page.evaluate("() => window.__fmvKeyAt"))
        images.append([start["total"], state["total"]])
        ses.append([round(start["se"], 2), round(state["se"], 2)])
    return {"n": len(first), "first_estimate_p50_ms": round(statistics.median(first), 1),
            "settled_p50_ms": round(statistics.median(settled), 1), "settled_max_ms": round(max(settled), 1),
            "images_first_and_settled": images, "se_points_first_and_settled": ses,
            "final_state": state["state"]}


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _kernel_ms(root) -> float | None:
    text = root.locator(".fmv-status").inner_text()
    match = re.search(r"total (\d+) ms", text)
    return float(match.group(1)) if match else None


def time_slider(page, root, css: str, key: str, n: int, prepare: str | None) -> dict:
    """Press `key` `n` times on slider `css` under `root`; latency of each press to the drawn plot."""
    handle = harness.slider_handle(root, f".fmv-{css}")
    handle.focus()
    state = harness.explorer_state(root)
    setting = css.replace("-", "_")
    if prepare:
        handle.press(prepare)
        state = harness.wait_drawn(page, root, after_revision=state["revision"], timeout_ms=120_000,
                                   settings={setting: harness.control_value(root, f".fmv-{css}")})
    latencies, kernel = [], []
    for _ in range(n):
        handle.press(key)
        try:  # the draw computed for the value the slider now shows, not a background refinement's redraw
            state = harness.wait_drawn(page, root, after_revision=state["revision"], timeout_ms=120_000,
                                       settings={setting: harness.control_value(root, f".fmv-{css}")})
        except Exception:  # noqa: BLE001 -- the end of the slider: nothing changes any more
            break
        latencies.append(state["drawnAt"] - page.evaluate("() => window.__fmvKeyAt"))
        kernel.append(_kernel_ms(root))
    kernel = [k for k in kernel if k is not None]
    return {"n": len(latencies), "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
            "p95_ms": round(_percentile(latencies, 95), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None,
            "kernel_p50_ms": round(statistics.median(kernel), 1) if kernel else None}


def screenshot_explorer(page, root, path: Path, width: int) -> None:
    """Screenshot the explorer with its notebook column `width` px wide (the page is widened by
    what JupyterLab's side bars and margins take), tall enough to hold it whole."""
    page.set_viewport_size({"width": 1500, "height": 3000})
    page.wait_for_timeout(500)
    chrome = 1500 - root.bounding_box()["width"]
    page.set_viewport_size({"width": int(width + chrome), "height": 3000})
    page.wait_for_timeout(800)
    root.scroll_into_view_if_needed()
    harness.wait_drawn(page, root, after_revision=-1)
    page.wait_for_timeout(300)
    root.screenshot(path=path)


def run(n: int = 20, explorers: Sequence[str] = tuple(SLIDERS), screenshots: Path | None = None) -> dict:
    """Time `n` presses of each slider of `explorers` (see the module docstring)."""
    harness.check_tools()
    result = {"n_per_slider": n, "explorers": {}, "floor": None, "x_floor": None,
              "floor_reason": "no plain computation: the time is JupyterLab's and Chromium's round trip around the "
                              "kernel's update (kernel_p50_ms); the update's computations have their floors in the "
                              "filter, landscape and interference --in-memory benchmarks",
              "load_average_start": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
              "cpu": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory(prefix="fmv-browser-bench-") as tmp, \
            harness.jupyter_lab(REPO / "notebooks", Path(tmp), REPO) as server:
        for explorer in explorers:
            notebook, sliders = SLIDERS[explorer]
            with harness.chromium_page(Path(tmp) / f"profile-{explorer}") as page:
                start = time.monotonic()
                harness.open_notebook(page, server, notebook)
                harness.run_all_cells(page, 600_000)
                root = page.locator(harness.EXPLORERS[explorer]).first
                root.scroll_into_view_if_needed()
                harness.wait_drawn(page, root)
                root.evaluate(KEY_TIME_JS)
                entry = {"notebook": notebook, "run_all_s": round(time.monotonic() - start, 1), "sliders": {}}
                for index, (css, key, prepare, target) in enumerate(sliders):
                    if screenshots is not None and index == 0:
                        for width in (1500, 1000):
                            screenshot_explorer(page, root, screenshots / f"{explorer}_before_{width}px.png",
                                                width)
                        page.set_viewport_size({"width": 1500, "height": 1000})
                        root.scroll_into_view_if_needed()
                    refinement = None
                    if explorer in REFINING:  # first, while a landscape grid is still small
                        refinement = time_to_settle(page, root, css, key, max(1, min(n, REFINING[explorer])))
                    timing = time_slider(page, root, css, key, n, prepare)
                    timing["target_p50_ms"] = target
                    timing["met"] = None if target is None or timing["p50_ms"] is None else timing["p50_ms"] <= target
                    timing["refinement"] = refinement
                    entry["sliders"][css] = timing
                    if screenshots is not None and index == 0:
                        for width in (1500, 1000):
                            screenshot_explorer(page, root, screenshots / f"{explorer}_after_{width}px.png",
                                                width)
                        page.set_viewport_size({"width": 1500, "height": 1000})
                        root.scroll_into_view_if_needed()
                result["explorers"][explorer] = entry
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench browser``: print :func:`run`'s result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench browser", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="key presses per slider (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 presses per slider (for tests)")
    parser.add_argument("--explorers", nargs="+", default=list(SLIDERS), choices=list(SLIDERS),
                        help="which explorers (default: all three)")
    parser.add_argument("--screenshots", default=None, metavar="DIR",
                        help="also write each explorer before/after its first slider's moves, 1500 and 1000 px wide")
    args = parser.parse_args(argv)
    folder = None
    if args.screenshots:
        folder = Path(args.screenshots)
        folder.mkdir(parents=True, exist_ok=True)
    result = run(n=3 if args.quick else args.n, explorers=args.explorers, screenshots=folder)
    print(json.dumps(result))
    return result
