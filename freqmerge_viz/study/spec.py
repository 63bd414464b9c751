"""Study files: a small YAML file declares a study, :func:`load_study` opens it.

::

    kind: open_clip            # zoo | open_clip | hf_classification | causal_lm | python
    name: my-clip-study        # optional; shown in every figure
    ...                        # the kind's own fields (see each kind's FIELDS)

Each kind is a builder registered with :func:`register_kind`: it declares its fields
(required and optional, with a doc line) and turns a checked :class:`Spec` into a
:class:`~freqmerge_viz.study.base.Study`. Builders read headers and files lazily and run no
model before every field has been checked, so a bad study file fails at once with a
:class:`~freqmerge_viz.errors.StudySpecError` naming the file and the field. Paths are
relative to the study file's folder.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ..errors import FreqMergeError, StudySpecError

__all__ = ["Field", "Kind", "Spec", "KINDS", "register_kind", "load_study", "read_spec", "kind_table"]


@dataclass(frozen=True)
class Field:
    """One field of a study kind: its name, whether it is required, and what it means."""

    name: str
    doc: str
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str
    fields: tuple[Field, ...]
    build: Callable[["Spec"], Any]
    extra: str = ""
    """The optional dependency (pip extra) the kind needs, if any."""


KINDS: dict[str, Kind] = {}
COMMON = (Field("kind", "the study kind", required=True),
          Field("name", "a short name shown in every figure (default: the file's stem)"))


def register_kind(name: str, summary: str, fields: tuple[Field, ...], *, extra: str = ""):
    """Decorator registering ``build(spec) -> Study`` as study kind `name` with its `fields`."""

    def decorate(build):
        KINDS[name] = Kind(name, summary, tuple(fields), build, extra)
        return build

    return decorate


@dataclass
class Spec:
    """A study file's fields, checked against its kind; accessors raise :class:`StudySpecError`
    naming the file and the field."""

    path: Path
    values: dict
    kind: Kind
    name: str = field(default="study")

    @property
    def folder(self) -> Path:
        return self.path.parent

    def error(self, name: str, reason: str) -> StudySpecError:
        return StudySpecError(self.path, name, reason)

    def get(self, name: str, default: Any = None) -> Any:
        declared = {f.name: f for f in self.kind.fields}
        fallback = declared[name].default if name in declared and default is None else default
        return self.values.get(name, fallback)

    def typed(self, name: str, types: type | tuple[type, ...], default: Any = None, what: str = "") -> Any:
        value = self.get(name, default)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in
                                  (types if isinstance(types, tuple) else (types,))):
            wanted = what or (types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types))
            raise self.error(name, f"must be {wanted}, got {value!r}")
        return value

    def positive_int(self, name: str, default: int | None = None) -> int | None:
        value = self.typed(name, int, default, "an integer >= 1")
        if value is not None and value < 1:
            raise self.error(name, f"must be an integer >= 1, got {value!r}")
        return value

    def resolve(self, value: str | os.PathLike, name: str) -> Path:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise self.error(name, f"must be a path, got {value!r}")
        path = Path(os.path.expanduser(str(value)))
        return path if path.is_absolute() else self.folder / path

    def existing(self, name: str, value: Any = None, *, folder: bool | None = None, required: bool = True,
                 label: str | None = None) -> Path | None:
        """The path in field `name` (or `value` found under it), checked to exist."""
        value = self.get(name) if value is None else value
        if value is None:
            if required:
                raise self.error(label or name, "is required")
            return None
        path = self.resolve(value, label or name)
        if not path.exists():
            raise self.error(label or name, f"path {path} does not exist")
        if folder is True and not path.is_dir():
            raise self.error(label or name, f"{path} is not a folder")
        if folder is False and not path.is_file():
            raise self.error(label or name, f"{path} is not a file")
        return path

    def mapping(self, name: str, *, required: bool = True) -> dict:
        value = self.get(name)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return {}
        if not isinstance(value, Mapping) or not value:
            raise self.error(name, f"must be a non-empty mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}


def read_spec(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Spec:
    """The checked fields of study file `path` (plus `overrides`, e.g. ``{"limit": 64}``)."""
    file = Path(path)
    if not file.is_file():
        raise StudySpecError(file, "-", "study file does not exist" if not file.exists() else "is not a file")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise StudySpecError(file, "-", f"unreadable ({type(exc).__name__}: {exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise StudySpecError(file, "-", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(values, dict):
        raise StudySpecError(file, "-", "must be a YAML mapping of fields (kind: ..., ...)")
    values = {str(k): v for k, v in values.items()}
    values.update(overrides or {})
    _register_builtin_kinds()
    kind_name = values.get("kind")
    if kind_name is None:
        raise StudySpecError(file, "kind", f"is required; one of {', '.join(sorted(KINDS))}")
    if kind_name not in KINDS:
        raise StudySpecError(file, "kind", f"unknown study kind {kind_name!r}; one of {', '.join(sorted(KINDS))}")
    kind = KINDS[kind_name]
    declared = {f.name for f in COMMON + kind.fields}
    unknown = sorted(set(values) - declared)
    if unknown:
        raise StudySpecError(file, unknown[0], f"unknown field for kind {kind_name!r}; its fields are "
                                               f"{', '.join(sorted(declared))}")
    for f in kind.fields:
        if f.required and values.get(f.name) is None:
            raise StudySpecError(file, f.name, f"is required for kind {kind_name!r} ({f.doc})")
    name = values.get("name") or file.stem
    if not isinstance(name, str):
        raise StudySpecError(file, "name", f"must be a string, got {name!r}")
    return Spec(file, values, kind, name)


def load_study(path: str | os.PathLike | None = None, **overrides):
    """Open the study declared in YAML file `path` (``None`` or ``"zoo"``: the demo zoo).

    `overrides` replace fields of the file (e.g. ``limit=64``). Every field is checked, and
    every path, split, head and checkpoint header read, before any model runs; a problem
    raises :class:`~freqmerge_viz.errors.StudySpecError` naming the file and the field.
    """
    if path is None or str(path) == "zoo" or Path(path).is_dir() and (Path(path) / "manifest.json").is_file():
        _register_builtin_kinds()
        values = {"kind": "zoo", **({} if path is None or str(path) == "zoo" else {"path": str(Path(path).resolve())})}
        spec = Spec(Path("<zoo>"), values, KINDS["zoo"], "demo zoo")
    else:
        spec = read_spec(path, overrides)
    try:
        study = spec.kind.build(spec)
    except StudySpecError:
        raise
    except FreqMergeError as exc:
        raise StudySpecError(spec.path, getattr(exc, "field", "-"), str(exc)) from exc
    if spec.path.is_file() and getattr(study, "source_path", None) is None:
        study.source_path = str(spec.path.resolve())
    if spec.values.get("name") and getattr(study, "kind", "") != "zoo":
        study.name = spec.name
    return study


def kind_table() -> str:
    """Every study kind with its fields, as Markdown (the README's schema is this table)."""
    _register_builtin_kinds()
    lines = []
    modules = list(BUILTIN)
    ordered = sorted(KINDS.values(), key=lambda k: modules.index(k.build.__module__)
                     if k.build.__module__ in modules else len(modules))
    for kind in ordered:
        extra = f" (needs `pip install freqmerge-viz[{kind.extra}]`)" if kind.extra else ""
        lines.append(f"**`kind: {kind.name}`**: {kind.summary}{extra}\n")
        lines.append("| field | required | meaning |")
        lines.append("|---|---|---|")
        for f in COMMON + kind.fields:
            lines.append(f"| `{f.name}` | {'yes' if f.required else 'no'} | {f.doc} |")
        lines.append("")
    return "\n".join(lines)


BUILTIN = ("freqmerge_viz.study.kinds", "freqmerge_viz.study.clip", "freqmerge_viz.study.text")
"""Modules whose import registers the built-in kinds."""


def _register_builtin_kinds() -> None:
    for module in BUILTIN:
        importlib.import_module(module)
