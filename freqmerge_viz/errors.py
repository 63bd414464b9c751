"""One exception hierarchy for everything the toolkit rejects.

Every error names what it is about (file, key, shapes) so that a user can find the
offending input without a traceback into the library.
"""

from __future__ import annotations

from typing import Iterable, Sequence


class FreqMergeError(Exception):
    """Root of every error the toolkit raises on purpose."""


class CheckpointError(FreqMergeError):
    """A checkpoint file or directory cannot be read (missing, truncated, malformed)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read checkpoint {self.path}: {reason}")


class OutputError(FreqMergeError):
    """An output cannot be written where asked (it would touch an input, the folder is not
    writable, the disk is full, ...). Nothing has been written when it is raised."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot write {self.path}: {reason}")


class MissingKeysError(FreqMergeError, KeyError):
    """Keys present in one state are absent from another (also a KeyError, for Mapping)."""

    def __init__(self, missing: Iterable[str], where: str, reference: str = "", limit: int = 10):
        self.missing = sorted(missing)
        self.where = where
        shown = ", ".join(self.missing[:limit])
        more = f" (and {len(self.missing) - limit} more)" if len(self.missing) > limit else ""
        ref = f" that {reference} has" if reference else ""
        super().__init__(
            f"{len(self.missing)} key(s){ref} missing from {where}: {shown}{more}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class ShapeMismatchError(FreqMergeError):
    """The same key has different shapes in two states."""

    def __init__(self, key: str, shape_a: Sequence[int], shape_b: Sequence[int],
                 where_a: str = "first", where_b: str = "second"):
        self.key = key
        self.shape_a = tuple(shape_a)
        self.shape_b = tuple(shape_b)
        super().__init__(
            f"shape mismatch for key {key!r}: {self.shape_a} in {where_a} "
            f"but {self.shape_b} in {where_b}"
        )


class NonFiniteError(FreqMergeError):
    """A tensor holds NaN or Inf values."""

    def __init__(self, key: str, where: str = "", count: int | None = None):
        self.key = key
        self.where = where
        n = f"{count} " if count is not None else ""
        src = f" (from {where})" if where else ""
        super().__init__(f"key {key!r}{src} holds {n}NaN/Inf value(s)")


class ParameterError(FreqMergeError, ValueError):
    """A parameter is out of range or of the wrong kind (cutoff, density, units, ...)."""


class EmptyInputError(FreqMergeError, ValueError):
    """An operation that needs at least one task (or key) was given none."""


class StudySpecError(FreqMergeError, ValueError):
    """A study file (YAML) asks for something the toolkit cannot give: an unknown field, a path
    that does not exist, a missing split, a head that does not fit the data, a checkpoint of
    another architecture. Raised before any model runs; names the file and the field."""

    def __init__(self, path, field: str, reason: str):
        self.path = str(path)
        self.field = field
        self.reason = reason
        super().__init__(f"study {self.path}, field {field!r}: {reason}")


class FreqMergeWarning(UserWarning):
    """Root of every warning the toolkit gives on purpose (something ran, but look at this)."""


class ScopeWarning(FreqMergeWarning):
    """A method's key scope misses a model's layers: it selects no key, or none of the attention
    matrices of a recognised architecture (:func:`freqmerge_viz.scopes.scope_warning`)."""


def check_choice(name: str, value, allowed: Sequence) -> None:
    """:class:`ParameterError` naming `name` and the allowed values unless `value` is one of them."""
    if value not in allowed:
        raise ParameterError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_positive_int(name: str, value) -> int:
    """`value` if it is an integer >= 1 (not a bool), else :class:`ParameterError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 task"``, ``"3 tasks"``: `n` and the noun in the number it takes (`plural` defaults to noun + "s")."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
