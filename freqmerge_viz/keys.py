"""Selecting parameters by name with glob patterns."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Sequence

from .errors import MissingKeysError

Patterns = str | Sequence[str] | None


def _as_patterns(patterns: Patterns) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def key_selected(key: str, include: Patterns = None, exclude: Patterns = None) -> bool:
    """True when `key` matches an `include` glob (or there is none) and no `exclude` glob.

    Globs are matched case-sensitively against the whole name (``"*.attn.*"``, ``"blocks.0.*"``).
    """
    wanted = _as_patterns(include)
    if wanted and not any(fnmatchcase(key, p) for p in wanted):
        return False
    return not any(fnmatchcase(key, p) for p in _as_patterns(exclude))


def select_keys(keys: Iterable[str], include: Patterns = None, exclude: Patterns = None) -> list[str]:
    """The keys that :func:`key_selected` accepts, in their original order."""
    return [k for k in keys if key_selected(k, include, exclude)]


def require_same_keys(first: Iterable[str], second: Iterable[str], first_name: str,
                      second_name: str) -> None:
    """Raise :class:`MissingKeysError` listing the keys one side has and the other lacks."""
    a, b = set(first), set(second)
    if a - b:
        raise MissingKeysError(a - b, where=second_name, reference=first_name)
    if b - a:
        raise MissingKeysError(b - a, where=first_name, reference=second_name)
