"""``freqmerge-viz serve`` and the dashboard it serves, without a browser.

What is checked before a server starts (an unknown study, a port in use, a working folder
inside the study's inputs, Voila missing), the generated notebook and kernel specification,
the Voila command line (127.0.0.1, token, no other port, sources stripped), the
:class:`~freqmerge_viz.widgets.Dashboard` built headless on a study that is not the zoo, and one
real server on the zoo: the page needs the token, shows no code, writes nothing into data/, and
Ctrl-C stops Voila and its kernel.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from freqmerge_viz import serve as serving
from freqmerge_viz.benchmarks import lab as harness
from freqmerge_viz.cli import main
from freqmerge_viz.errors import OutputError, StudySpecError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SUPPORT = Path(__file__).parent / "study_support.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_study_file(folder: Path) -> Path:
    path = folder / "study.yaml"
    path.write_text(f"kind: python\nname: my-mlp\nfunction: {SUPPORT}:tiny_study\nargs: {{tasks: 3, per_split: 16, steps: 5}}\n",
                    encoding="utf-8")
    return path


@pytest.fixture()
def no_voila_start(monkeypatch):
    """Any attempt to start Voila fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("Voila was started")
    monkeypatch.setattr(serving, "start_voila", refuse)


def test_an_unknown_study_path_is_refused_before_voila_starts(tmp_path, no_voila_start, capsys):
    missing = tmp_path / "nowhere" / "study.yaml"
    with pytest.raises(StudySpecError, match=re.escape(str(missing))):
        serving.serve(missing, port=free_port())
    assert main(["serve", "--study", str(missing), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("freqmerge-viz serve: error:") and str(missing) in err and "does not exist" in err


def test_a_port_in_use_is_named_with_the_way_out(no_voila_start, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(serving.ServeError, match=f"port {port} on 127.0.0.1 is already in use; choose another "
                                                     f"with --port"):
            serving.prepare("zoo", port=port)
        assert main(["serve", "--port", str(port)]) == 2
    assert f"port {port}" in capsys.readouterr().err


def test_without_voila_the_error_names_the_extra(monkeypatch, no_voila_start):
    real = serving.importlib.util.find_spec
    monkeypatch.setattr(serving.importlib.util, "find_spec", lambda name, *a: None if name == "voila" else real(name, *a))
    with pytest.raises(serving.ServeError, match=re.escape("freqmerge-viz[dashboard]")):
        serving.prepare("zoo", port=free_port())


def test_the_working_folder_never_lies_inside_the_study_inputs(tmp_path, no_voila_start):
    zoo = DATA / "zoo"
    with pytest.raises(OutputError, match="working folder lies inside the input"):
        serving.prepare("zoo", port=free_port(), workdir=zoo / "dashboard")
    assert not (zoo / "dashboard").exists()
    with pytest.raises(OutputError, match="working folder is the input"):
        serving.prepare(str(zoo), port=free_port(), workdir=zoo)
    # a study file: the folder holding it (and its inputs) is an input folder too
    study = tiny_study_file(tmp_path)
    with pytest.raises(OutputError, match=re.escape(str(tmp_path))):
        serving.prepare(study, port=free_port(), workdir=tmp_path / "dashboard")
    assert not (tmp_path / "dashboard").exists()
    assert main(["serve", "--workdir", str(zoo / "x"), "--port", str(free_port())]) == 2
    assert not (zoo / "x").exists()


def test_a_study_file_in_the_temporary_folder_moves_the_working_folder_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(serving.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    study = tiny_study_file(tmp_path / "tmp")  # /tmp/study.yaml: /tmp holds an input
    served = serving.prepare(study, port=free_port())
    assert served.workdir.parent == tmp_path / "home" / ".cache" / "freqmerge-viz"
    assert serving.clean_up(served) == [] and not served.workdir.exists()
    with pytest.raises(serving.ServeError, match="--workdir"):
        serving.temporary_workdir([tmp_path])


def test_the_generated_notebook_calls_the_library_and_runs_this_python(tmp_path, no_voila_start):
    (tmp_path / "models").mkdir()
    study = tiny_study_file(tmp_path / "models")
    served = serving.prepare(study, port=free_port(), workdir=tmp_path / "work")
    notebook = json.loads(served.notebook.read_text())
    assert served.notebook.parent == tmp_path / "work" and not served.temporary
    assert [cell["cell_type"] for cell in notebook["cells"]] == ["code"]
    assert notebook["cells"][0]["source"] == ("from freqmerge_viz.widgets import dashboard\n"
                                              f"board = dashboard.show({str(study.resolve())!r})")
    assert notebook["metadata"]["kernelspec"]["name"] == serving.KERNEL_NAME
    kernel = json.loads((tmp_path / "work" / "jupyter" / "kernels" / serving.KERNEL_NAME / "kernel.json").read_text())
    assert kernel["argv"][:3] == [sys.executable, "-m", "ipykernel_launcher"]
    assert kernel["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert served.study_name == "my-mlp"
    zoo = serving.prepare(None, port=free_port())
    try:
        assert zoo.temporary and zoo.study_ref == "zoo" and "show('zoo')" in zoo.notebook.read_text()
        assert not zoo.workdir.resolve().is_relative_to(DATA.resolve())
    finally:
        import shutil

        shutil.rmtree(zoo.workdir)


def test_a_notebook_of_the_user_s_is_never_overwritten_and_exports_are_kept(tmp_path, no_voila_start):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / serving.NOTEBOOK_NAME).write_text('{"cells": []}')
    with pytest.raises(OutputError, match="was not written by freqmerge-viz serve"):
        serving.prepare("zoo", port=free_port(), workdir=mine)
    assert (mine / serving.NOTEBOOK_NAME).read_text() == '{"cells": []}'
    again = serving.prepare("zoo", port=free_port(), workdir=tmp_path / "ours")
    assert serving.prepare("zoo", port=free_port(), workdir=tmp_path / "ours").notebook == again.notebook
    temporary = serving.prepare("zoo", port=free_port())
    (temporary.workdir / "cutoff_explorer.html").write_text("exported")
    assert serving.clean_up(temporary) == [temporary.workdir / "cutoff_explorer.html"]
    assert sorted(p.name for p in temporary.workdir.iterdir()) == ["cutoff_explorer.html"]
    (temporary.workdir / "cutoff_explorer.html").unlink()
    assert serving.clean_up(temporary) == [] and not temporary.workdir.exists()


def test_the_server_listens_on_loopback_behind_a_fresh_token(tmp_path, no_voila_start):
    port = free_port()
    first = serving.prepare("zoo", port=port, workdir=tmp_path / "a")
    second = serving.prepare("zoo", port=port, workdir=tmp_path / "b")
    assert first.token != second.token and len(first.token) >= 32
    assert first.url == f"http://127.0.0.1:{port}/?token={first.token}"
    command = serving.voila_command(first)
    assert command[:3] == [sys.executable, "-m", "voila"]
    for option in ("--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", "--Voila.auto_token=True",
                   "--Voila.port_retries=0", "--strip_sources=True"):
        assert option in command
    assert not [part for part in command if first.token in part], "the token on a command line (ps shows it)"
    assert serving.voila_environment(first)["JUPYTER_TOKEN"] == first.token
    given = serving.prepare("zoo", port=port, workdir=tmp_path / "c", token="my-token")
    assert given.url.endswith("?token=my-token")
    with pytest.raises(serving.ServeError, match="--token must not be empty"):
        serving.prepare("zoo", port=port, workdir=tmp_path / "d", token=" ")
    assert serving.voila_environment(first)["JUPYTER_PATH"].split(os.pathsep)[0] == str(tmp_path / "a" / "jupyter")


def test_a_token_that_starts_with_a_dash_reaches_the_server(tmp_path, monkeypatch):
    # secrets.token_urlsafe starts with "-" once in 64 draws: the browser tests' harness passes
    # --token=VALUE, since "--token -x" is an option to argparse, not a value
    started = []

    def record(served, **kwargs):
        started.append(served.token)
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "start_voila", record)
    try:
        main(["serve", "--token=-a_b-c", "--port", str(free_port()), "--workdir", str(tmp_path / "w")])
    except KeyboardInterrupt:
        pass
    assert started == ["-a_b-c"]


def test_another_address_is_served_with_a_warning(tmp_path, monkeypatch):
    class Finished:
        returncode = 0

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(serving, "start_voila", lambda served, **kwargs: Finished())
    said = []
    assert serving.serve("zoo", port=free_port(), ip="0.0.0.0", workdir=tmp_path / "w", say=said.append) == 0
    assert said[0].startswith("warning: listening on 0.0.0.0: other machines can reach the dashboard")
    assert "127.0.0.1" in said[1] and "?token=" in said[1]
    assert serving.is_loopback("127.0.0.1") and serving.is_loopback("::1") and serving.is_loopback("localhost")
    assert not serving.is_loopback("0.0.0.0") and not serving.is_loopback("192.168.1.2")


def test_the_dashboard_builds_on_any_study_and_says_what_it_builds():
    sys.path.insert(0, str(SUPPORT.parent))
    try:
        from study_support import tiny_study
    finally:
        sys.path.remove(str(SUPPORT.parent))
    from freqmerge_viz.widgets import Dashboard

    board = Dashboard(tiny_study(tasks=3, per_split=24))
    assert "waiting" in board.status.value and not board.explorers
    seen = []
    board.status.observe(lambda change: seen.append(change["new"]), names="value")
    board.build()
    assert board.errors == {} and sorted(board.explorers) == ["cutoff", "expert", "landscape"]
    assert [s for s in seen if "building" in s][0].count("the cutoff explorer") == 1
    assert any("building the expert explorer (SVD storage, EMR and Twin outcomes" in s for s in seen)
    assert "all 3 explorers ready" in board.status.value and "tiny-mlp" in board.header.value
    for name, slot in board.slots.items():
        assert slot.children[-1] is board.explorers[name].widget
    assert board.tabs.titles == ("Cutoff (FR-Merging)", "Experts and routing", "Loss landscape")


def test_explorers_built_in_another_thread_call_back_on_the_kernel_s_loop():
    import asyncio
    import threading

    from freqmerge_viz.widgets.dashboard import loop_schedule

    loop = asyncio.new_event_loop()
    ran: list[tuple[str, int]] = []
    try:
        schedule = loop_schedule(loop)
        here = schedule(0.0, lambda: ran.append(("here", threading.get_ident())))
        assert here is not None
        dropped = []

        def from_a_thread():
            schedule(0.01, lambda: ran.append(("thread", threading.get_ident())))
            dropped.append(schedule(0.01, lambda: ran.append(("cancelled", threading.get_ident()))))
            dropped[0].cancel()

        worker = threading.Thread(target=from_a_thread)
        worker.start()
        worker.join()
        loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        loop.close()
    assert sorted(name for name, _ in ran) == ["here", "thread"]
    assert {ident for _, ident in ran} == {threading.get_ident()}, "a callback ran outside the loop's thread"


def test_a_study_that_cannot_open_is_said_on_the_page(tmp_path):
    from freqmerge_viz.widgets import Dashboard

    board = Dashboard(tmp_path / "missing.yaml").build()
    assert isinstance(board.errors["study"], StudySpecError) and not board.explorers
    assert "cannot open the study" in board.status.value and "missing.yaml" in board.status.value


def fetch(url: str) -> tuple[int, str, str]:
    """(status, Location header, body) of a GET of `url`, redirects not followed."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        return response.status, response.getheader("Location") or "", response.read().decode(errors="replace")
    finally:
        connection.close()


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def cpu_ticks(pids) -> int:
    total = 0
    for pid in pids:
        try:
            total += sum(int(v) for v in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
        except (OSError, IndexError, ValueError):
            pass
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_real_server_needs_its_token_writes_nothing_into_data_and_stops_on_ctrl_c(tmp_path):
    pytest.importorskip("voila")
    before = tree(DATA)
    with harness.dashboard_server(tmp_path, REPO) as server:
        # without the token (or with a wrong one) every page sends to the login form: no kernel, no dashboard
        for path in ("/", "/?token=wrong", "/api/kernels", f"/voila/render/{serving.NOTEBOOK_NAME}"):
            status, location, body = fetch(f"{server.base}{path}")
            assert status == 302 and location.startswith("/login?"), (path, status, location)
        status, _, login = fetch(f"{server.base}/login")
        assert status == 200 and "token" in login.lower() and "widget-view" not in login
        import urllib.request

        with urllib.request.urlopen(server.url, timeout=60) as response:  # runs the notebook's cell
            assert response.status == 200
            page = response.read().decode()
        assert "dashboard.show" not in page and "from freqmerge_viz" not in page, "code on the page"
        assert "application/vnd.jupyter.widget-view+json" in page
        log = server.log.read_text()
        assert f"127.0.0.1:{server.base.rsplit(':', 1)[1]}/?token={server.token}" in log
        workdir = Path(re.search(r"working folder (\S+) ", log)[1])
        assert workdir.is_dir() and not workdir.resolve().is_relative_to(DATA.resolve())
        # the kernel builds the three explorers in a thread: wait until it is idle (or 30 s)
        below = descendants(server.process.pid)
        assert below, "no voila or kernel process"
        start = time.monotonic()
        deadline, last = start + 30, cpu_ticks(below)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = cpu_ticks(below)
            if now - last < 10:  # under 10 % of one core for a second (ticks of 10 ms)
                break
            last = now
        print(f"the kernel was busy for {time.monotonic() - start:.1f} s after the page")
        server.process.send_signal(signal.SIGINT)  # Ctrl-C
        assert server.process.wait(timeout=30) == 0
        time.sleep(0.5)
        assert not [pid for pid in below if Path(f"/proc/{pid}").exists()
                    and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]]
        assert "stopping the dashboard server" in server.log.read_text()
        assert not workdir.exists(), "the temporary working folder is left behind"
    assert tree(DATA) == before
