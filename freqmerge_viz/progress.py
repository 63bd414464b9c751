"""Progress bars for long work (merges, interference, reports): tqdm on stderr, or nothing.

``progress=False`` (the library's default) shows nothing; ``True`` always shows a bar;
``None`` shows one only when stderr is a terminal (what the command line does unless
``--progress`` is given), so captured or redirected output never holds one.
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def shows_progress(progress: bool | None) -> bool:
    """Whether a bar is shown: `progress` itself, or for ``None`` whether stderr is a terminal."""
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    return bool(progress)


class _Silent:
    """The part of tqdm's interface the toolkit uses, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(total: int | None, desc: str, progress: bool | None = False, unit: str = "key",
                 leave: bool = True):
    """A tqdm bar of `total` steps on stderr when :func:`shows_progress`, else a silent stand-in
    (``update``, ``set_postfix_str``, ``close``, and a context manager). ``leave=False`` clears
    the bar when done (for the many short evaluations inside one figure topic)."""
    if not shows_progress(progress):
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=leave)


def track(items: Iterable[T], desc: str, progress: bool | None = False, total: int | None = None,
          unit: str = "key", leave: bool = True) -> Iterator[T]:
    """`items`, one at a time, advancing a :func:`progress_bar` after each."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with progress_bar(total, desc, progress, unit, leave) as bar:
        for item in items:
            yield item
            bar.update(1)
