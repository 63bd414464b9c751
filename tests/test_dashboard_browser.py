"""The dashboard (``freqmerge-viz serve``) in a real browser: what each tab draws is what the kernel computed.

``freqmerge-viz serve`` on the demo zoo (127.0.0.1, a free port, a fresh token; its Jupyter
folders in a temporary folder) and headless Chromium driven by Playwright
(``freqmerge_viz.benchmarks.lab``). One page for the module (each page load starts a kernel):
the status line must come first and the cutoff explorer must be drawn while the other two are
still being built; then, tab by tab, every control of each explorer is changed (sliders by
keyboard, dropdowns, the toggle, the checkbox, the multiple selection), and after each change
every trace on the page (x, y, text, customdata, error bars, z) must equal the explorer's
readout (the trace data computed in the kernel) of the same revision (explorers refine their
numbers in the background; the cutoff explorer's first refinement must run to its end).
Finally the layout at 1500 and 1000 px: no plot, control row or tab title cut off, nothing
scrolling sideways. Screenshots go to ``tests/artifacts/``, and to the folder named by
``FREQMERGE_DASHBOARD_SCREENSHOTS`` (``docs/screenshots`` for the README's) when it is set.

Needs Debian's chromium, the pip packages playwright and voila (``scripts/browser_deps.sh``,
the ``dashboard`` extra); without them the test is skipped, unless
``FREQMERGE_REQUIRE_BROWSER=1`` (then it fails).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

from freqmerge_viz.benchmarks import browser as bench_browser
from freqmerge_viz.benchmarks import lab as harness

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
REQUIRE = os.environ.get("FREQMERGE_REQUIRE_BROWSER") == "1"
SCREENSHOTS = os.environ.get("FREQMERGE_DASHBOARD_SCREENSHOTS")
BUILD_MS = int(os.environ.get("FREQMERGE_DASHBOARD_BUILD_MS", 180_000))
TABS = {"cutoff": "Cutoff", "expert": "Experts", "landscape": "landscape"}
"""Each explorer's tab, by a part of its title."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        harness.check_tools()
        if importlib.util.find_spec("voila") is None:
            raise harness.BrowserUnavailable("the python package voila is not installed; pip install -e '.[dashboard]'")
    except harness.BrowserUnavailable as exc:
        if REQUIRE:
            pytest.fail(f"{exc} (FREQMERGE_REQUIRE_BROWSER=1)")
        pytest.skip(str(exc))
    with harness.dashboard_server(tmp_path_factory.mktemp("serve"), REPO) as running:
        yield running


@pytest.fixture(scope="module")
def opened(server, tmp_path_factory):
    """The dashboard's page, and when (s after navigating) its status line and its first explorer appeared."""
    with harness.chromium_page(tmp_path_factory.mktemp("profile"), width=1500, height=1000) as page:
        start = time.monotonic()
        page.goto(server.url, wait_until="commit")
        status = page.locator(".fmv-dashboard-status")
        status.wait_for(timeout=BUILD_MS)
        timeline = {"status_s": time.monotonic() - start, "first_status": status.inner_text()}
        cutoff = page.locator(harness.EXPLORERS["cutoff"]).first
        cutoff.wait_for(timeout=BUILD_MS)
        harness.wait_drawn(page, cutoff, timeout_ms=BUILD_MS)
        timeline.update(cutoff_drawn_s=time.monotonic() - start, status_at_cutoff=status.inner_text(),
                        landscape_at_cutoff=page.locator(harness.EXPLORERS["landscape"]).count())
        page.locator(".fmv-dashboard-ok, .fmv-dashboard-error").first.wait_for(timeout=BUILD_MS)
        timeline["all_built_s"] = time.monotonic() - start
        print(f"dashboard timeline: {timeline}")
        try:
            yield page, timeline
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            try:  # what the page showed last, pass or fail
                page.screenshot(path=ARTIFACTS / "dashboard_last_page.png", timeout=10_000)
            except Exception:  # noqa: BLE001 -- a failed screenshot must not hide the test's result
                pass


def assert_page_matches(state: dict, what: str) -> None:
    problems = harness.page_mismatches(state)
    assert not problems, f"{what}:\n" + "\n".join(problems)
    assert state["width"] > 300, f"{what}: the plot is {state['width']} px wide"


def open_tab(page, name: str):
    """Show explorer `name`'s tab; its root, drawn and checked against its readout."""
    harness.dashboard_tab(page, TABS[name])
    root = page.locator(harness.EXPLORERS[name]).first
    root.wait_for(timeout=BUILD_MS)
    harness.wait_drawn(page, root, timeout_ms=BUILD_MS)
    state = harness.consistent_state(page, root, timeout_ms=BUILD_MS, attempts=20)
    assert root.locator(".fmv-status-error").count() == 0, root.locator(".fmv-status").first.inner_text()
    assert_page_matches(state, f"{name} tab opened")
    return root, state


def change(page, root, state: dict, action, what: str, control: str, value=None) -> dict:
    """Do `action` on `control` (a setting's name), wait until the plot draws the revision computed
    for `value` (default: the value the control now shows), check it against the readout."""
    action()
    if value is None:
        value = harness.control_value(root, f".fmv-{control.replace('_', '-')}")
    harness.wait_drawn(page, root, after_revision=state["revision"], settings={control: value})
    new = harness.consistent_state(page, root, timeout_ms=BUILD_MS, attempts=20)
    assert root.locator(".fmv-status-error").count() == 0, root.locator(".fmv-status").first.inner_text()
    assert_page_matches(new, what)
    return new


def keys(root, control: str, key: str, times: int = 1):
    """An action pressing `key` `times` times on the slider `control`'s handle."""
    def press():
        handle = harness.slider_handle(root, f".fmv-{control.replace('_', '-')}")
        handle.focus()
        for _ in range(times):
            handle.press(key)
    return press


def pick(root, control: str, option=None, *, index: int | None = None, label: str | None = None):
    """An action selecting `option` (a value), the option at `index`, or `label`, in dropdown `control`."""
    select = root.locator(f".fmv-{control.replace('_', '-')} select").first
    if index is not None:
        return lambda: select.select_option(index=index)
    return lambda: select.select_option(label=label) if label is not None else select.select_option(option)


def test_status_first_then_the_cutoff_explorer_while_the_others_build(opened):
    page, timeline = opened
    assert timeline["status_s"] < timeline["cutoff_drawn_s"]
    assert "building" in timeline["first_status"] or "opening" in timeline["first_status"], timeline
    # the first explorer was usable before the last one existed: built one after another, shown when ready
    assert timeline["landscape_at_cutoff"] == 0, timeline
    assert "ready: Cutoff" in timeline["status_at_cutoff"], timeline
    assert page.locator(".fmv-dashboard-ok").count() == 1, page.locator(".fmv-dashboard-status").inner_text()
    assert "demo zoo" in page.locator(".fmv-dashboard-study").inner_text()
    assert page.locator(".jp-InputArea, .jp-CodeMirrorEditor, .cm-editor").count() == 0, "code on the page"


def test_cutoff_tab_every_control(opened):
    page, _ = opened
    root, state = open_tab(page, "cutoff")
    # its background refinement (the fast estimate's images grown to a 1-point SE) finishes in the dashboard too
    assert root.locator(".fmv-refinement").count() == 1
    bench_browser.wait_refinement(page, root, "s.state !== 'refining'", timeout_ms=BUILD_MS)
    state = harness.consistent_state(page, root, timeout_ms=BUILD_MS, attempts=20)
    state = change(page, root, state, keys(root, "cutoff", "PageUp", 2), "cutoff slider moved", "cutoff")
    state = change(page, root, state, pick(root, "band", "band"), "band-pass chosen", "band")
    state = change(page, root, state, keys(root, "upper_cutoff", "PageDown"), "upper cutoff moved", "upper_cutoff")
    state = change(page, root, state, pick(root, "kind", "butterworth"), "filter kind changed", "kind")
    state = change(page, root, state, keys(root, "scaling", "ArrowLeft", 3), "scaling moved", "scaling")
    state = change(page, root, state, pick(root, "key", index=1), "matrix changed", "key")
    state = change(page, root, state, pick(root, "task", index=2), "spectrum task changed", "task")
    state = change(page, root, state, pick(root, "variance_over", label="all matrices (slower)"),
                   "variance over all matrices", "variance_over", "all")
    state = change(page, root, state, pick(root, "method", "fr_ties"), "method changed", "method")
    root.screenshot(path=ARTIFACTS / "dashboard_cutoff_after.png")


def test_expert_tab_every_control(opened):
    page, _ = opened
    root, state = open_tab(page, "expert")
    state = change(page, root, state, keys(root, "router_accuracy", "PageDown", 3), "router accuracy moved",
                   "router_accuracy")
    state = change(page, root, state, keys(root, "density", "ArrowRight"), "expert density moved", "density")
    root.screenshot(path=ARTIFACTS / "dashboard_expert_after.png")


def test_landscape_tab_every_control(opened):
    page, _ = opened
    root, state = open_tab(page, "landscape")
    state = change(page, root, state, lambda: root.locator(".fmv-metric button", has_text="accuracy").click(),
                   "metric toggled", "metric")
    state = change(page, root, state, keys(root, "grid", "ArrowLeft", 4), "grid slider moved", "grid")
    state = change(page, root, state, lambda: root.locator(".fmv-filtered input[type=checkbox]").click(),
                   "filtered ticked", "filtered", True)
    state = change(page, root, state, pick(root, "eval_task", "digits"), "evaluated task changed", "eval_task")
    state = change(page, root, state, pick(root, "task_a", "signs"), "task A changed", "task_a")
    state = change(page, root, state, pick(root, "task_b", "counting"), "task B changed", "task_b")
    chosen = harness.selected_labels(root, ".fmv-methods")[:1]
    state = change(page, root, state, lambda: root.locator(".fmv-methods select").select_option(chosen),
                   "merged points changed", "methods", ",".join(chosen))
    root.screenshot(path=ARTIFACTS / "dashboard_landscape_after.png")


LAYOUT_JS = """
root => {
  const out = [];
  const right = document.documentElement.clientWidth;
  for (const el of root.querySelectorAll('.fmv-plot, .widget-hbox, .widget-slider, .widget-dropdown')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0) continue;
    if (box.right > right + 1) out.push(`${el.className.split(' ')[0]} ends at ${Math.round(box.right)} px > ${right}`);
    if (el.scrollWidth > el.clientWidth + 1 && !el.classList.contains('fmv-plot'))
      out.push(`${el.className.split(' ')[0]} overflows: ${el.scrollWidth} > ${el.clientWidth} px`);
  }
  for (const el of document.querySelectorAll('.fmv-dashboard, .fmv-dashboard .widget-tab-contents'))
    if (el.scrollWidth > el.clientWidth + 1) out.push(`${el.className.split(' ').pop()} scrolls sideways: ${el.scrollWidth} > ${el.clientWidth} px`);
  for (const label of document.querySelectorAll('.fmv-dashboard-tabs .lm-TabBar-tabLabel'))
    if (label.scrollWidth > label.clientWidth + 1) out.push(`tab title cut off: ${label.textContent}`);
  return out;
}
"""


@pytest.mark.parametrize("width", [1500, 1000])
def test_layout_and_screenshots(opened, width):
    page, _ = opened
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in ("expert", "landscape", "cutoff"):
        page.set_viewport_size({"width": width, "height": 1000})
        root, state = open_tab(page, name)
        if name == "cutoff":  # the README's picture: refined numbers
            bench_browser.wait_refinement(page, root, "s.state !== 'refining'", timeout_ms=BUILD_MS)
        board = page.locator(".fmv-dashboard").first
        height = int(board.evaluate("el => el.scrollHeight")) + 60
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(800)  # the plot follows its container's new width (ResizeObserver)
        problems = root.evaluate(LAYOUT_JS)
        assert not problems, f"{name} at {width} px:\n" + "\n".join(problems)
        plot = root.locator(".fmv-plot").first.bounding_box()
        assert plot["width"] > 0.6 * width - 100 and plot["height"] > 300, (name, width, plot)
        board.screenshot(path=ARTIFACTS / f"dashboard_{name}_{width}.png")
    if SCREENSHOTS:  # the cutoff tab, shown first
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.locator(".fmv-dashboard").first.screenshot(path=Path(SCREENSHOTS) / f"dashboard_{width}.png")
