"""A real-browser test of the cutoff explorer (issue #6).

Starts JupyterLab on 127.0.0.1 (random port and token) over a temporary copy of
``notebooks/``, opens ``03_fr_merging.ipynb`` in headless Chromium driven by Playwright, runs
all cells from the Run menu, moves the cutoff slider with the keyboard and checks that the
shown accuracy and the plotly figure change. Screenshots go to ``tests/artifacts/`` and are
copied to ``docs/screenshots/`` for the README.

Needs Debian's chromium (``/usr/bin/chromium``) and the pip package ``playwright`` (its driver
only: Playwright's own browser download is not used); ``scripts/browser_deps.sh`` installs
both. Without them the test is skipped, unless ``FREQMERGE_REQUIRE_BROWSER=1`` (then it fails).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "03_fr_merging.ipynb"
CHROMIUM = os.environ.get("FREQMERGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "tests" / "artifacts"
SCREENSHOTS = REPO / "docs" / "screenshots"
REQUIRE = os.environ.get("FREQMERGE_REQUIRE_BROWSER") == "1"

SERVER_START_S = 60
RUN_ALL_S = int(os.environ.get("FREQMERGE_BROWSER_RUN_ALL_MS", 120_000))  # ms: every cell, the sweep included
UPDATE_S = 60_000         # ms: one slider move until the shown accuracy changes
PAGE_UP_PRESSES = 4       # 4 × PageUp = 4 × 5 steps of 0.005: cutoff 0.300 → 0.400


def _missing(reason: str):
    if REQUIRE:
        pytest.fail(f"{reason} (FREQMERGE_REQUIRE_BROWSER=1; run scripts/browser_deps.sh)")
    pytest.skip(f"{reason}; run scripts/browser_deps.sh to install it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sync_playwright():
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the python package playwright is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def lab(tmp_path_factory, sync_playwright):
    """A JupyterLab server over a temporary copy of notebooks/: (base url, token, log path)."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _missing("jupyterlab is not installed")
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    shutil.copytree(REPO / "notebooks", root,
                    ignore=shutil.ignore_patterns("out", ".ipynb_checkpoints", "__pycache__"))
    settings = tmp / "settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    # no news / update toasts over the screenshots (and no attempt to reach the internet)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               IPYTHONDIR=str(tmp / "ipython"), JUPYTER_DATA_DIR=str(tmp / "data"),
               JUPYTER_PLATFORM_DIRS="1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "jupyterlab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         # nothing that reaches the internet: no update check, no PyPI extension manager
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s; see {log_path}")
            time.sleep(0.3)
        yield base, token, log_path
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and whatever it started (kernels share its process group)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # jupyter's clean shutdown: it stops its kernels
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture()
def page(lab, sync_playwright, tmp_path):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1500, "height": 1000})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            try:  # what the page showed last, pass or fail
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=ARTIFACTS / "last_page.png", timeout=10_000)
            except Exception:  # noqa: BLE001 -- a failed screenshot must not hide the test's result
                pass
            context.close()


# plot state read from the plotly graph div: traces (mask z, accuracy bars y) and the drawn bars
PLOT_STATE = """
root => {
  const gd = root.querySelector('.js-plotly-plot');
  if (!gd || !gd.data || gd.data.length < 4) return null;
  const flat = z => Array.from(z || [], row => Array.from(row)).flat();
  const mask = flat(gd.data[1].z);
  return {
    maskKept: mask.filter(v => v > 0.5).length,
    maskSum: mask.reduce((a, b) => a + b, 0),
    accuracyY: Array.from(gd.data[3].y || []),
    accuracyX: gd.layout.xaxis3 && gd.layout.xaxis3.ticktext ? JSON.stringify(gd.layout.xaxis3.ticktext) : null,
    varianceX: gd.layout.xaxis2 && gd.layout.xaxis2.ticktext ? JSON.stringify(gd.layout.xaxis2.ticktext) : null,
    barPaths: Array.from(gd.querySelectorAll('.barlayer path'), p => p.getAttribute('d')),
  };
}
"""


def _shown(explorer) -> dict:
    mean = explorer.locator(".fmv-summary .fmv-accuracy .fmv-mean-accuracy[data-value]")
    tasks = explorer.locator(".fmv-summary .fmv-task-accuracy[data-task][data-value]")
    return {"mean": mean.get_attribute("data-value"), "mean_text": mean.text_content().strip(),
            "tasks": {t.get_attribute("data-task"): t.get_attribute("data-value") for t in tasks.all()},
            "cutoff": explorer.locator(".fmv-cutoff .widget-readout").text_content().strip(),
            "plot": explorer.evaluate(PLOT_STATE)}


def _kernel_ready(page) -> None:
    """Accept JupyterLab's kernel dialog if it asks (it may, on a fresh profile), wait for an idle kernel."""
    idle = page.locator(".jp-StatusBar-Widget", has_text="| Idle")
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    deadline = time.monotonic() + 60
    while not idle.count():
        if dialog.count():
            dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        if time.monotonic() > deadline:
            raise AssertionError("the notebook's kernel did not become idle within 60 s")
        page.wait_for_timeout(250)
    page.wait_for_timeout(300)
    assert not dialog.count(), "a kernel dialog is still open"


def _run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _wait_idle(page) -> None:
    """Every code cell executed: each prompt shows a number, none is queued ([*])."""
    page.wait_for_function(
        """() => {
          const prompts = Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'));
          return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", timeout=RUN_ALL_S, polling=250)


def _save(shot: Path, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOTS / name)


def test_cutoff_slider_changes_accuracy_and_plot(lab, page):
    base, token, log_path = lab
    page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    _kernel_ready(page)
    start = time.monotonic()
    _run_all_cells(page)

    explorer = page.locator(".fmv-cutoff-explorer").first
    explorer.wait_for(timeout=RUN_ALL_S)
    explorer.locator(".fmv-mean-accuracy[data-value]").wait_for(timeout=RUN_ALL_S)
    _wait_idle(page)
    run_all_s = time.monotonic() - start
    page.wait_for_timeout(500)  # the last comm messages (explorer.set in later cells) render

    errors = page.locator(".jp-OutputArea-output", has_text="Traceback")
    assert errors.count() == 0, errors.first.inner_text()
    assert explorer.locator(".fmv-status-error").count() == 0
    explorer.locator(".js-plotly-plot .barlayer path").first.wait_for()

    explorer.scroll_into_view_if_needed()  # (cells off screen are not rendered)
    page.wait_for_timeout(300)
    before = _shown(explorer)
    assert before["plot"] is not None, "the plotly figure did not render"
    assert before["mean"] is not None and before["tasks"] and before["mean_text"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "notebook_after_run_all.png")
    explorer.screenshot(path=ARTIFACTS / "cutoff_explorer_before.png")

    handle = explorer.locator(".fmv-cutoff .noUi-handle").first
    handle.focus()
    for _ in range(PAGE_UP_PRESSES):
        handle.press("PageUp")
    page.wait_for_function(
        """([root, old]) => {
          const el = root.querySelector('.fmv-mean-accuracy[data-value]');
          return el && el.getAttribute('data-value') !== old;
        }""", arg=[explorer.element_handle(), before["mean"]], timeout=UPDATE_S, polling=100)
    page.wait_for_function(
        """([root, old]) => {
          const gd = root.querySelector('.js-plotly-plot');
          return gd && gd.data && JSON.stringify(Array.from(gd.data[3].y || [])) !== old;
        }""", arg=[explorer.element_handle(), json.dumps(before["plot"]["accuracyY"])],
        timeout=UPDATE_S, polling=100)
    page.wait_for_timeout(400)  # plotly's redraw settles
    after = _shown(explorer)
    explorer.screenshot(path=ARTIFACTS / "cutoff_explorer_after.png")
    page.screenshot(path=ARTIFACTS / "notebook_after_slider.png")
    (ARTIFACTS / "browser_values.json").write_text(json.dumps(
        {"run_all_s": round(run_all_s, 1), "before": before, "after": after}, indent=1))

    assert explorer.locator(".fmv-status-error").count() == 0
    assert float(after["cutoff"]) > float(before["cutoff"])
    assert after["mean"] != before["mean"] and after["mean_text"] != before["mean_text"]
    assert after["tasks"] != before["tasks"]
    assert set(after["tasks"]) == set(before["tasks"])
    assert after["plot"]["accuracyY"] != before["plot"]["accuracyY"]
    assert (after["plot"]["maskKept"], after["plot"]["maskSum"]) != (before["plot"]["maskKept"],
                                                                    before["plot"]["maskSum"])
    assert after["plot"]["barPaths"] != before["plot"]["barPaths"]
    assert json.loads(after["plot"]["accuracyX"] or "null") == list(after["tasks"]), \
        "the accuracy axis is not labelled by task in the page"
    mean_of_bars = sum(after["plot"]["accuracyY"]) / len(after["plot"]["accuracyY"])
    assert abs(mean_of_bars - float(after["mean"])) < 1e-4

    _save(ARTIFACTS / "cutoff_explorer_before.png", "cutoff_explorer_before.png")
    _save(ARTIFACTS / "cutoff_explorer_after.png", "cutoff_explorer_after.png")
