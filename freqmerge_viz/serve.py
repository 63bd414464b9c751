"""``freqmerge-viz serve``: the dashboard of a study as a web app, served by Voila.

:func:`prepare` checks everything before a server starts: the study reference opens (a study
file is checked field by field before any model runs), Voila can be imported, the port is free,
and the working folder lies outside the study's inputs. It then writes into the working folder
a one-cell notebook that calls :func:`freqmerge_viz.widgets.dashboard.show`, and a kernel
specification that runs this Python (so the page's kernel imports this freqmerge_viz).
:func:`voila_command` is the command that serves that notebook: bound to 127.0.0.1 unless asked
otherwise, behind a token (passed in the environment, not on the command line), sources stripped
(no code on the page), no other port tried.
:func:`serve` runs it until Ctrl-C (or SIGTERM), then stops Voila and its kernels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import FreqMergeError, OutputError
from .outputs import check_output, make_folder, source_paths, write_text_atomically

DEFAULT_PORT = 8866
"""Voila's own default port."""
DEFAULT_IP = "127.0.0.1"
"""Only this machine can reach the server unless ``--ip`` says otherwise."""
NOTEBOOK_NAME = "dashboard.ipynb"
KERNEL_NAME = "freqmerge-viz-dashboard"
"""The kernel specification :func:`prepare` writes (it runs ``sys.executable``)."""
STOP_TIMEOUT_S = 15.0
"""Seconds Voila gets to stop its kernels after SIGTERM before it is killed."""


class ServeError(FreqMergeError):
    """The dashboard server cannot start as asked (port in use, Voila missing, ...); nothing
    has been started when it is raised."""


@dataclass
class Served:
    """What :func:`prepare` made ready: the study reference the notebook opens, where it
    serves, the working folder and whether :func:`serve` removes it afterwards."""

    study_ref: str
    study_name: str
    ip: str
    port: int
    token: str
    workdir: Path
    temporary: bool
    notebook: Path = field(init=False)

    def __post_init__(self):
        self.notebook = self.workdir / NOTEBOOK_NAME

    @property
    def url(self) -> str:
        """The page's address, token included (what to open in a browser)."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        if self.ip in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/?token={self.token}"


def check_voila() -> None:
    """:class:`ServeError` unless Voila can be imported by this Python."""
    if importlib.util.find_spec("voila") is None:
        raise ServeError("Voila is not installed in this Python environment; install the dashboard extra: "
                         "pip install 'freqmerge-viz[dashboard]' (or pip install 'voila>=0.5')")


def is_loopback(ip: str) -> bool:
    """Whether `ip` (an address or ``localhost``) is reachable from this machine only."""
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def check_port(ip: str, port: int) -> None:
    """:class:`ServeError` naming the port unless a server can listen on `ip`:`port` now."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ServeError(f"--port must be an integer in [1, 65535], got {port!r}")
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as tornado binds: a port left in TIME_WAIT by an earlier server counts as free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            reason = "is already in use" if exc.errno in (98, 48, 10048) else f"cannot be used ({exc.strerror or exc})"
            raise ServeError(f"port {port} on {ip} {reason}; choose another with --port "
                             f"(e.g. --port {port + 1})") from None


def protected_inputs(study) -> list[Path]:
    """What the working folder must stay out of: the study's inputs (files and folders), the
    folders holding its input files, and its study file with the folder holding it."""
    inputs = source_paths([study])
    source_file = getattr(study, "source_path", None)
    if source_file:
        inputs.append(Path(source_file))
    protected = []
    for path in inputs:
        protected.append(path)
        if path.is_file():
            protected.append(path.parent)
    return list(dict.fromkeys(protected))


def notebook_json(study_ref: str) -> dict:
    """The generated dashboard notebook (nbformat 4): one code cell that shows the dashboard
    of `study_ref` with the library; its kernel is :data:`KERNEL_NAME`."""
    code = ("from freqmerge_viz.widgets import dashboard\n"
            f"board = dashboard.show({study_ref!r})")
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": KERNEL_NAME, "display_name": "freqmerge-viz dashboard",
                                    "language": "python"},
                     "language_info": {"name": "python"}, "title": "freqmerge-viz dashboard"},
        "cells": [{"cell_type": "code", "id": "freqmerge-dashboard", "metadata": {}, "execution_count": None,
                   "outputs": [], "source": code}],
    }


def kernel_spec() -> dict:
    """A kernel specification running this Python, with this freqmerge_viz first on its path."""
    package_root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    return {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "freqmerge-viz dashboard", "language": "python",
            "env": {"PYTHONPATH": python_path}}


def study_reference(source) -> tuple[str, object]:
    """(`source` as the notebook names it: ``"zoo"`` or an absolute path, the opened study).

    Opening checks a study file before any model runs; an unknown path raises
    :class:`~freqmerge_viz.errors.StudySpecError` naming it."""
    from .study import load_study

    if source is None or str(source) == "zoo":
        return "zoo", load_study(None)
    study = load_study(source)
    return str(Path(source).resolve()), study


def prepare(source=None, *, port: int = DEFAULT_PORT, ip: str = DEFAULT_IP, token: str | None = None,
            workdir: str | os.PathLike | None = None) -> Served:
    """Check and write everything the server needs (see the module docstring); start nothing.

    `source`: a study YAML file, a zoo folder, ``"zoo"`` or ``None`` (the demo zoo). `token`
    defaults to a fresh ``secrets.token_urlsafe(32)``. `workdir` defaults to a fresh temporary
    folder (:func:`clean_up` removes it afterwards unless the page exported files into it); a given
    one is created when missing. Refused (:class:`~freqmerge_viz.errors.OutputError`): a working
    folder inside the study's inputs, and one holding a ``dashboard.ipynb`` of someone else's."""
    study_ref, study = study_reference(source)
    check_voila()
    check_port(ip, port)
    if token is not None and not token.strip():
        raise ServeError("--token must not be empty (leave it out for a generated one)")
    token = token or secrets.token_urlsafe(32)
    protected = protected_inputs(study)
    temporary = workdir is None
    if temporary:
        folder = temporary_workdir(protected)
    else:
        folder = Path(os.path.abspath(workdir))
        check_output(folder, protected, what="working folder")
        make_folder(folder)
    served = Served(study_ref, str(getattr(study, "name", study_ref)), ip, port, token, folder, temporary)
    _check_not_foreign(served.notebook)
    kernel_folder = folder / "jupyter" / "kernels" / KERNEL_NAME
    make_folder(kernel_folder)
    write_text_atomically(kernel_folder / "kernel.json", json.dumps(kernel_spec(), indent=1))
    write_text_atomically(served.notebook, json.dumps(notebook_json(study_ref), indent=1) + "\n")
    return served


def temporary_workdir(protected: list[Path]) -> Path:
    """A fresh folder ``freqmerge-dashboard-*`` in the system's temporary folder or, when that
    holds an input (a study file in /tmp), in ``~/.cache/freqmerge-viz``; :class:`ServeError`
    when both do."""
    for parent in (Path(tempfile.gettempdir()), Path.home() / ".cache" / "freqmerge-viz"):
        try:
            check_output(parent / "freqmerge-dashboard-x", protected, what="working folder")
        except OutputError:
            continue
        make_folder(parent)
        return Path(tempfile.mkdtemp(prefix="freqmerge-dashboard-", dir=parent))
    raise ServeError("the temporary folders lie inside the study's input folders; give a working folder "
                     "elsewhere with --workdir")


def _check_not_foreign(notebook: Path) -> None:
    """:class:`~freqmerge_viz.errors.OutputError` if `notebook` exists and is not a dashboard
    notebook written by :func:`prepare` (a notebook of the user's own is never overwritten)."""
    if not notebook.exists():
        return
    try:
        ours = json.loads(notebook.read_text(encoding="utf-8"))["metadata"]["kernelspec"]["name"] == KERNEL_NAME
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise OutputError(notebook, "exists and was not written by freqmerge-viz serve; choose another --workdir")


def clean_up(served: Served) -> list[Path]:
    """Remove what :func:`prepare` wrote into a temporary working folder, and the folder when
    nothing else is left; return what is left (files exported from the page, kept)."""
    if not served.temporary:
        return []
    with contextlib.suppress(FileNotFoundError):
        served.notebook.unlink()
    for generated in ("jupyter", ".ipynb_checkpoints"):
        shutil.rmtree(served.workdir / generated, ignore_errors=True)
    left = sorted(served.workdir.iterdir()) if served.workdir.is_dir() else []
    if not left:
        with contextlib.suppress(OSError):
            served.workdir.rmdir()
    return left


def voila_command(served: Served) -> list[str]:
    """The Voila command line serving `served`'s notebook (no browser opened, no other port
    tried, sources stripped, a token required). The token itself is not on it (a command line
    is visible to every user of the machine): Voila reads it from ``JUPYTER_TOKEN``
    (:func:`voila_environment`)."""
    return [sys.executable, "-m", "voila", str(served.notebook), "--no-browser", f"--port={served.port}",
            f"--Voila.ip={served.ip}", "--Voila.auto_token=True", "--Voila.port_retries=0",
            "--strip_sources=True", "--show_tracebacks=False"]


def voila_environment(served: Served) -> dict[str, str]:
    """This process's environment with the token in ``JUPYTER_TOKEN`` and the working folder's
    kernel specification found first."""
    jupyter_path = os.pathsep.join(filter(None, [str(served.workdir / "jupyter"), os.environ.get("JUPYTER_PATH")]))
    environment = dict(os.environ, JUPYTER_PATH=jupyter_path, JUPYTER_TOKEN=served.token)
    environment.pop("JUPYTER_TOKEN_FILE", None)
    return environment


def start_voila(served: Served, *, log=None) -> subprocess.Popen:
    """Start Voila for `served` (its output to `log`, a file, or inherited) in a session of its
    own: a Ctrl-C in the terminal reaches this process only, which then stops Voila once."""
    return subprocess.Popen(voila_command(served), cwd=served.workdir, env=voila_environment(served),
                            stdout=log, stderr=subprocess.STDOUT if log is not None else None,
                            start_new_session=True)


def stop_voila(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Ask Voila to stop (one SIGTERM: it shuts its kernels down), kill its process group after
    `timeout_s` seconds; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if hasattr(os, "killpg"):
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            process.wait(timeout=5)
    return process.returncode


def serve(source=None, *, port: int = DEFAULT_PORT, ip: str = DEFAULT_IP, token: str | None = None,
          workdir: str | os.PathLike | None = None, say: Callable[[str], None] = print) -> int:
    """Serve the dashboard of `source` (arguments as :func:`prepare`) until Ctrl-C or SIGTERM;
    `say` receives what is happening (the URL first). Returns Voila's exit status (0 after Ctrl-C)."""
    served = prepare(source, port=port, ip=ip, token=token, workdir=workdir)
    if not is_loopback(ip):
        say(f"warning: listening on {ip}: other machines can reach the dashboard (the token still guards it)")
    say(f"dashboard of {served.study_name} ({served.study_ref}) at:\n  {served.url}")
    say(f"working folder {served.workdir} (what the page exports is written there); the page builds the "
        "cutoff explorer first, then the expert explorer and the landscape viewer; Ctrl-C stops the server")

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    handled = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {s: signal.signal(s, on_signal) for s in handled} if threading_main() else {}
    process = None
    try:
        process = start_voila(served)
        status = process.wait()
        if status != 0:
            raise ServeError(f"voila exited with status {status} (its messages are above)")
        return status
    except KeyboardInterrupt:
        say("stopping the dashboard server…")
        if process is not None:
            stop_voila(process)
        return 0
    finally:
        if process is not None and process.poll() is None:
            stop_voila(process)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        left = clean_up(served)
        if left:
            say(f"kept {served.workdir}: it holds what the page exported ({', '.join(p.name for p in left)})")


def threading_main() -> bool:
    """Whether this is the main thread (only it may install signal handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()
