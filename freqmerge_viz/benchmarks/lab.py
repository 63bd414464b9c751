"""Drive the explorers in a real JupyterLab page: server, headless Chromium, what a page draws.

Shared by the real-browser test (``tests/test_browser.py``) and the ``browser`` benchmark.
JupyterLab runs on 127.0.0.1 with a random port and token over a temporary copy of the
notebooks, with its own config, data and settings folders (nothing reaches the internet);
Debian's Chromium (``/usr/bin/chromium``) is driven by the pip package ``playwright`` (its
driver only). :func:`explorer_state` reads what the page's plot holds (the plotly graph's
trace data) beside the explorer's readout (the trace data the kernel computed, sent through
a separate widget), and :func:`trace_mismatches` compares them.
"""

from __future__ import annotations

import contextlib
import json
import math
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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

CHROMIUM = os.environ.get("FREQMERGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 90
EXPLORERS = {"cutoff": ".fmv-cutoff-explorer", "expert": ".fmv-expert-explorer", "landscape": ".fmv-landscape-viewer"}
"""CSS class of each explorer's root element."""


class BrowserUnavailable(RuntimeError):
    """Chromium, playwright or JupyterLab is missing (the message says which and how to install it)."""


def check_tools() -> None:
    """:class:`BrowserUnavailable` unless Chromium, playwright and JupyterLab can be used."""
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserUnavailable(f"no chromium at {CHROMIUM}; run scripts/browser_deps.sh")
    for module, name in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            raise BrowserUnavailable(f"the python package {name} is not installed; run scripts/browser_deps.sh") \
                from None


@dataclass
class Lab:
    """A running JupyterLab: base URL, token, the notebook folder it serves and its log."""

    base: str
    token: str
    root: Path
    log: Path

    def url(self, notebook: str) -> str:
        """The notebook's page, with a fresh workspace (no tabs left open by an earlier page)."""
        return f"{self.base}/lab/tree/{notebook}?reset&token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(notebooks: Path, workdir: Path, repo: Path) -> Iterator[Lab]:
    """JupyterLab over a copy of `notebooks` in `workdir`, importing freqmerge_viz from `repo`."""
    root = workdir / "notebooks"
    shutil.copytree(notebooks, root, ignore=shutil.ignore_patterns("out", ".ipynb_checkpoints", "__pycache__"))
    settings = workdir / "settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # every cell rendered (JupyterLab 4 otherwise renders only the cells near the viewport)
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
               JUPYTER_CONFIG_DIR=str(workdir / "config"), JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(workdir / "workspaces"),
               IPYTHONDIR=str(workdir / "ipython"), JUPYTER_DATA_DIR=str(workdir / "data"),
               JUPYTER_PLATFORM_DIRS="1")
    log_path = workdir / "jupyterlab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + SERVER_START_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited with {proc.returncode}; see {log_path}")
                with contextlib.suppress(urllib.error.URLError, OSError):
                    with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_S} s; see {log_path}")
                time.sleep(0.3)
            yield Lab(base, token, root, log_path)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and what it started (kernels share its process group)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
            break
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def chromium_page(profile: Path, width: int = 1500, height: int = 1000):
    """A headless Chromium page (Playwright) with its own profile folder."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_FLAGS,
                                                       viewport={"width": width, "height": height})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            context.close()


def kernel_ready(page, timeout_s: float = 90) -> None:
    """Accept JupyterLab's kernel dialog if it asks; wait until the kernel is idle."""
    idle = page.locator(".jp-StatusBar-Widget", has_text="| Idle")
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    deadline = time.monotonic() + timeout_s
    while not idle.count():
        if dialog.count():
            dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        if time.monotonic() > deadline:
            raise AssertionError(f"the notebook's kernel did not become idle within {timeout_s} s")
        page.wait_for_timeout(250)


def open_notebook(page, lab: Lab, notebook: str) -> None:
    page.goto(lab.url(notebook))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    kernel_ready(page)


def run_all_cells(page, timeout_ms: int) -> float:
    """Run every cell from the Run menu and wait until each has run; return the seconds it took."""
    start = time.monotonic()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(
        """() => {
          const prompts = Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'));
          const busy = prompts.some(p => /\\[\\*\\]/.test(p.textContent));
          const failed = Array.from(document.querySelectorAll('.jp-OutputArea-output'))
              .some(o => /Traceback/.test(o.textContent));
          if (failed && !busy) return true;
          return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", timeout=timeout_ms, polling=250)
    errors = page.locator(".jp-OutputArea-output", has_text="Traceback")
    if errors.count():
        raise AssertionError(f"a cell failed:\n{errors.first.inner_text()[-2000:]}")
    return time.monotonic() - start


def save_notebook(page) -> None:
    """Save the open notebook (Ctrl+S) and wait until JupyterLab says it is saved."""
    page.locator(".jp-Notebook").first.click()
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000, polling=200)


STATE_JS = """
root => {
  const gd = root.querySelector('.fmv-plot');
  const holder = root.querySelector('.fmv-readout');
  if (!gd || !holder || !gd.data) return null;
  const list = v => (v === undefined || v === null) ? undefined
      : (ArrayBuffer.isView(v) ? Array.from(v) : (Array.isArray(v) ? v.map(e => ArrayBuffer.isView(e) ? Array.from(e) : e) : v));
  const readout = JSON.parse(holder.getAttribute('data-json'));
  const page = gd.data.map((t, i) => {
    const row = {name: t.name === undefined ? null : t.name, type: t.type};
    for (const f of ['x', 'y', 'text', 'customdata']) {
      const v = list(t[f]);
      if (v !== undefined && Array.isArray(v)) row[f] = v;
    }
    const bars = t.error_y && list(t.error_y.array);
    if (Array.isArray(bars)) row.error_y = bars;
    const z = list(t.z);
    if (Array.isArray(z) && z.length && Array.isArray(z[0])) {
      const flat = z.flat();
      const want = (readout.traces[i] && readout.traces[i].z && readout.traces[i].z.picks) || [];
      const finite = flat.filter(v => v !== null && Number.isFinite(v));
      row.z = {shape: [z.length, z[0].length], nan: flat.length - finite.length,
               sum: finite.reduce((a, b) => a + b, 0), picks: want,
               values: want.map(k => (flat[k] === null || !Number.isFinite(flat[k])) ? null : flat[k])};
    } else if (Array.isArray(z)) {
      row.z = {values: z};
    }
    return row;
  });
  return {revision: Number(gd.dataset.revision || -1), readoutRevision: readout.revision,
          drawnAt: Number(gd.dataset.drawnAt || 0), readout: readout.traces, page: page,
          drawnTraces: (gd._fullData || []).length, width: gd.getBoundingClientRect().width};
}
"""


def explorer_state(root) -> dict | None:
    """What the explorer under `root` (a Playwright locator) shows: the plot's traces
    (``page``), the kernel's readout of them (``readout``), both revisions, and when the
    plot was last drawn (``drawnAt``, ms of the page's clock)."""
    return root.evaluate(STATE_JS)


def wait_drawn(page, root, after_revision: int = -1, timeout_ms: int = 60_000, settings: dict | None = None) -> dict:
    """Wait until the plot under `root` has drawn the readout's revision (newer than
    `after_revision`) and, with `settings` (``{name: value}``; numbers compared to 1e-6), until
    that revision was computed for them: the last of several control events has been answered."""
    page.wait_for_function(
        """([root, after, settings]) => {
          const gd = root.querySelector('.fmv-plot');
          const holder = root.querySelector('.fmv-readout');
          if (!gd || !holder || !gd.dataset.revision) return false;
          const want = Number(holder.getAttribute('data-revision'));
          if (!(want > after && Number(gd.dataset.revision) === want)) return false;
          const values = JSON.parse(holder.getAttribute('data-json')).values || {};
          return Object.entries(settings || {}).every(([k, v]) =>
            (typeof v === 'number') ? Math.abs(Number(values[k]) - v) < 1e-6 : String(values[k]) === String(v));
        }""", arg=[root.element_handle(), after_revision, settings or {}], timeout=timeout_ms, polling=50)
    return explorer_state(root)


def control_value(root, css: str):
    """What the control with class `css` under `root` shows now: a slider's readout (a number
    when it reads as one), a dropdown's selected value, or a toggle's pressed button."""
    control = root.locator(css).first
    readout = control.locator(".widget-readout")
    if readout.count():
        text = readout.first.inner_text().strip()
        try:
            return float(text)
        except ValueError:
            return text
    select = control.locator("select")
    if select.count():
        return select.first.input_value()
    return control.locator("button.mod-active").first.inner_text().strip()


def _close(a, b, tolerance: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=tolerance, abs_tol=tolerance)
    return a == b


def _same_list(a, b, tolerance: float) -> bool:
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        return False
    return all(_same_list(x, y, tolerance) if isinstance(x, list) else _close(x, y, tolerance) for x, y in zip(a, b))


def trace_mismatches(state: dict, tolerance: float = 1e-9) -> list[str]:
    """Every difference between the page's traces and the readout (empty when they agree)."""
    problems = []
    page, readout = state["page"], state["readout"]
    if len(page) != len(readout):
        return [f"{len(page)} traces on the page, {len(readout)} computed"]
    for i, (drawn, computed) in enumerate(zip(page, readout)):
        label = f"trace {i} ({computed.get('name')!r})"
        for field in ("x", "y", "text", "customdata", "error_y"):
            if field in computed and not _same_list(drawn.get(field), computed[field], tolerance):
                problems.append(f"{label}: {field} differs: page {str(drawn.get(field))[:120]} vs computed "
                                f"{str(computed[field])[:120]}")
        if "z" in computed:
            want, got = computed["z"], drawn.get("z") or {}
            for part in ("shape", "nan", "values"):
                if part in want and not _same_list(got.get(part) if isinstance(got.get(part), list) else
                                                   [got.get(part)], want[part] if isinstance(want[part], list)
                                                   else [want[part]], tolerance):
                    problems.append(f"{label}: z {part} differs: page {got.get(part)} vs computed {want[part]}")
            if "sum" in want and not _close(got.get("sum"), want["sum"], 1e-7):
                problems.append(f"{label}: z sum differs: page {got.get('sum')} vs computed {want['sum']}")
    return problems


def page_mismatches(state: dict | None) -> list[str]:
    """Every way a snapshot (:func:`explorer_state`) shows something other than what was computed:
    no plot, plot and readout at different revisions, traces that differ, traces not drawn."""
    if state is None:
        return ["the plot did not render"]
    problems = []
    if state["revision"] != state["readoutRevision"]:
        problems.append("plot and readout disagree on the revision")
    problems += trace_mismatches(state)
    if state["drawnTraces"] != len(state["readout"]):
        problems.append(f"plotly drew {state['drawnTraces']} traces, {len(state['readout'])} computed")
    return problems


def consistent_state(page, root, timeout_ms: int = 60_000, attempts: int = 50) -> dict:
    """One snapshot in which the plot shows the readout's revision. While an explorer refines in
    the background, plot and readout are updated by two messages, so a snapshot taken between
    them is retaken."""
    for _ in range(attempts):
        state = wait_drawn(page, root, timeout_ms=timeout_ms)
        if state is not None and state["revision"] == state["readoutRevision"]:
            return state
    raise AssertionError("the plot never caught up with the readout")


def slider_handle(root, css: str):
    """The noUiSlider handle of the ipywidgets slider with class `css` under `root`."""
    return root.locator(f"{css} .noUi-handle").first


# ------------------------------------------------------------------ the dashboard (freqmerge-viz serve)
@dataclass
class DashboardServer:
    """A running ``freqmerge-viz serve``: base URL, token, the serve process and its log."""

    base: str
    token: str
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        """The dashboard's page with the token."""
        return f"{self.base}/?token={self.token}"


def http_status(url: str, timeout_s: float = 5) -> int | None:
    """The HTTP status `url` answers with (redirects not followed), ``None`` when nothing answers."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


@contextlib.contextmanager
def dashboard_server(workdir: Path, repo: Path, study: str = "zoo", timeout_s: float = SERVER_START_S
                     ) -> Iterator[DashboardServer]:
    """``freqmerge-viz serve --study study`` on a free port with a fresh token, importing
    freqmerge_viz from `repo`, Jupyter's own folders in `workdir`; yielded once the server answers
    (a request without the token, which starts no kernel), stopped with SIGINT (Ctrl-C) after."""
    port, token = _free_port(), secrets.token_urlsafe(16)
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
               JUPYTER_CONFIG_DIR=str(workdir / "config"), JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
               IPYTHONDIR=str(workdir / "ipython"), JUPYTER_DATA_DIR=str(workdir / "data"),
               JUPYTER_PLATFORM_DIRS="1")
    log_path = workdir / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "freqmerge_viz.cli", "serve", "--study", study,
                                 "--port", str(port), f"--token={token}"],
                                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while http_status(f"{base}/", timeout_s=2) is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"freqmerge-viz serve exited with {proc.returncode}: "
                                       f"{log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"freqmerge-viz serve did not answer within {timeout_s} s; see {log_path}")
                time.sleep(0.2)
            yield DashboardServer(base, token, proc, log_path)
        finally:
            _stop(proc)


def dashboard_tab(page, title: str) -> None:
    """Click the dashboard's tab whose title contains `title` and wait until it is the current one."""
    tab = page.locator(".fmv-dashboard-tabs .lm-TabBar-tab", has_text=title).first
    tab.click()
    page.wait_for_function("tab => tab.classList.contains('lm-mod-current')", arg=tab.element_handle(),
                           timeout=10_000, polling=50)


def selected_labels(root, css: str) -> list[str]:
    """The selected options' labels of the (multiple) select control with class `css` under `root`."""
    return root.locator(f"{css} select").first.evaluate("s => Array.from(s.selectedOptions).map(o => o.value)")
