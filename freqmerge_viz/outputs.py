"""Writing outputs without ever losing data.

Three guarantees, used by every writer of the toolkit (``save_state``, merges, reports,
figures, explorer exports):

- **Inputs are read-only.** :func:`check_output` refuses an output path that is, contains
  or lies inside any input path (files, shards, index files, folders; each taken both as
  given and with symlinks resolved), before any work is done.
- **All or nothing.** One file is written under a temporary name in its folder, flushed and
  renamed over the target (:func:`write_atomically`). A multi-file output (shards, index,
  ``merge.json``) is written into a fresh temporary sibling folder, which replaces the
  output folder only once everything in it is flushed (:func:`staged_folder`): an atomic
  exchange of the two folders where the platform has one (Linux ``renameat2``), two
  renames otherwise. A kill at any point leaves the previous output complete.
- **Nothing stale.** Temporary files and folders are named ``.<name>.tmp-<pid>-<hex>``
  (and ``.<name>.old-<pid>-<hex>`` for a folder being replaced); the next write to the same
  target removes those left by processes that no longer run (:func:`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import OutputError

__all__ = ["check_output", "protected_forms", "source_paths", "make_folder", "staged_folder", "sweep_stale", "write_atomically",
           "write_text_atomically", "ensure_space", "prepare_file_output"]

SPACE_MARGIN_BYTES = 16 * 2**20
"""Free space kept in reserve beyond an output's expected size."""

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")


def temporary_sibling(target: Path, kind: str = "tmp") -> Path:
    """A fresh name ``.<target name>.<kind>-<pid>-<8 hex>`` in `target`'s folder."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporaries of our own naming in `folder` (for target `name`, or every target)
    whose writing process no longer runs; return what was removed.

    An interrupted folder replacement (``.<name>.old-*`` present, `name` itself missing) is
    undone first: the old folder is renamed back, so the previous output reappears whole.
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise OutputError(folder, f"cannot list the folder ({exc.strerror or exc})") from exc
    removed = []
    for entry in sorted(entries, key=lambda e: e.name):
        match = _TEMPORARY.fullmatch(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if _process_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        target = folder / match["name"]
        if match["kind"] == "old" and not os.path.lexists(target):
            os.replace(path, target)
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(path: Path, exc: OSError, doing: str) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (the folder is not writable)"
    return OutputError(path, f"cannot {doing}: {reason}")


def write_atomically(target: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Write via ``write(temporary path)`` in `target`'s folder, fsync, then rename over `target`.

    Stale temporaries of earlier, killed writes of `target` are removed first. On failure
    the temporary file is removed and `target` is untouched; an ``OSError`` becomes an
    :class:`~freqmerge_viz.errors.OutputError` naming the path.
    """
    target = Path(target)
    sweep_stale(target.parent, target.name)
    temporary = temporary_sibling(target)
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(exc, OSError):
            raise _os_error(target, exc, "write it") from exc
        raise
    _fsync_path(target.parent)


def write_text_atomically(target: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `target` by :func:`write_atomically`."""
    write_atomically(Path(target), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def source_paths(sources: Iterable) -> list[Path]:
    """The paths that `sources` read from: a path is itself; an object contributes its
    ``origins`` (checkpoints, task vectors, merged states) or its ``path`` (the zoo); other
    objects (tensors in memory) contribute nothing."""
    paths: list[Path] = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)):
            paths.append(Path(source))
        elif getattr(source, "origins", None):
            paths.extend(Path(p) for p in source.origins)
        elif isinstance(getattr(source, "path", None), (str, os.PathLike)):
            paths.append(Path(source.path))
    return list(dict.fromkeys(paths))


def protected_forms(path: str | os.PathLike) -> set[Path]:
    """`path` as given (made absolute, not resolved) and with every symlink resolved."""
    given = Path(os.path.abspath(os.fspath(path)))
    try:
        resolved = given.resolve()
    except (OSError, RuntimeError):
        resolved = given
    return {given, resolved}


def _relation(output: Path, protected: Path) -> str | None:
    if output == protected:
        return "is"
    if protected.is_relative_to(output):
        return "contains"
    if output.is_relative_to(protected):
        return "lies inside"
    return None


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *,
                 what: str = "output") -> None:
    """:class:`OutputError` naming both paths if `output` is, contains or lies inside an input.

    Each path is compared as given and with symlinks resolved; an existing output that is
    the same file as an input under another name (a hard link) is refused too.
    """
    output_forms = protected_forms(output)
    for source in inputs:
        for protected in protected_forms(source):
            for form in output_forms:
                relation = _relation(form, protected)
                if relation:
                    raise OutputError(output, f"the {what} {relation} the input {source}"
                                      + (f" (resolved: {protected})" if str(protected) != os.path.abspath(source)
                                         else "")
                                      + "; inputs are never written to: choose another path")
        with contextlib.suppress(OSError):
            if os.path.isfile(output) and os.path.samefile(output, source):
                raise OutputError(output, f"the {what} is the same file as the input {source}; "
                                          "choose another path")


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def ensure_space(target: Path, needed_bytes: int) -> None:
    """:class:`OutputError` unless the file system `target` goes to has `needed_bytes` plus a margin free."""
    if needed_bytes <= 0:
        return
    anchor = _existing_ancestor(Path(target).parent)
    try:
        free = shutil.disk_usage(anchor).free
    except OSError:
        return
    if free < needed_bytes + SPACE_MARGIN_BYTES:
        raise OutputError(target, f"not enough free disk space: the output needs about "
                                  f"{_human(needed_bytes)} and {anchor} has {_human(free)} free")


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1000
    return f"{nbytes} B"


def make_folder(folder: Path) -> None:
    """Create `folder` (and parents); :class:`OutputError` when that is impossible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise OutputError(folder, "exists and is not a folder") from exc
    except OSError as exc:
        raise _os_error(folder, exc, "create the folder") from exc
    if not folder.is_dir():
        raise OutputError(folder, "exists and is not a folder")


def _probe_writable(folder: Path) -> None:
    probe = temporary_sibling(folder / "probe")
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise _os_error(folder, exc, "write into it") from exc


def prepare_file_output(target: str | os.PathLike, *, protect: Iterable = (), expected_bytes: int = 0,
                        what: str = "output") -> Path:
    """Check a one-file output before any work: not an input, its folder writable, space free.

    Creates the folder when missing and removes stale temporaries of `target`.
    """
    target = Path(os.path.abspath(target))
    check_output(target, protect, what=what)
    if target.is_dir():
        raise OutputError(target, "is a folder; give a file name")
    make_folder(target.parent)
    sweep_stale(target.parent, target.name)
    _probe_writable(target.parent)
    ensure_space(target, expected_bytes)
    return target


def _renameat2_exchange() -> Callable[[Path, Path], bool]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return lambda a, b: False
    at_fdcwd, rename_exchange = -100, 2
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def exchange(a: Path, b: Path) -> bool:
        if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise OSError(code, os.strerror(code), str(b))

    return exchange


_exchange = _renameat2_exchange()


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def _swap_in(staging: Path, target: Path) -> None:
    """Put the complete folder `staging` at `target`, replacing an existing folder whole."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = temporary_sibling(target, "old")
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def foreign_entries(folder: Path, own: Callable[[str], bool]) -> list[str]:
    """Names in `folder` that `own` does not claim, ignoring our temporaries."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise _os_error(folder, exc, "list the folder") from exc
    return [n for n in names if not own(n) and not _TEMPORARY.fullmatch(n)]


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, *, protect: Iterable = (), expected_bytes: int = 0,
                  own: Callable[[str], bool] = lambda name: False, what: str = "output") -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` whole.

    Before yielding (that is, before any work): `target` must not overlap an input in
    `protect` (:func:`check_output`); an existing `target` must be a folder whose every
    entry `own` claims (a folder with anything else in it is refused, since replacing it
    would delete those files); its parent must be writable with `expected_bytes` free; stale
    temporaries of earlier, killed writes are removed. If the body raises, the temporary
    folder is removed and `target` is untouched.
    """
    target = Path(os.path.abspath(target))
    check_output(target, protect, what=what)
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(target, "exists and is not a folder (give a new folder, or a .safetensors "
                                  "file name for a single-file output)")
    make_folder(target.parent)
    sweep_stale(target.parent, target.name)
    if target.is_dir():
        foreign = foreign_entries(target, own)
        if foreign:
            shown = ", ".join(foreign[:8]) + (f" (and {len(foreign) - 8} more)" if len(foreign) > 8 else "")
            raise OutputError(target, f"holds files this toolkit did not write ({shown}); the output "
                                      "replaces its folder as a whole, so choose a new or empty folder")
        _probe_writable(target)
    ensure_space(target, expected_bytes)
    staging = temporary_sibling(target)
    try:
        staging.mkdir()
    except OSError as exc:
        raise _os_error(target.parent, exc, "create a temporary folder in it") from exc
    try:
        yield staging
        _fsync_tree(staging)
        _swap_in(staging, target)
        _fsync_path(target.parent)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _os_error(target, exc, "write the output") from exc
        raise
