"""Task vectors ``v = θ_finetuned − θ_pretrained``, computed key by key on demand."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from .backend import as_compute_tensor, compute_dtype, resolve_device
from .errors import EmptyInputError, MissingKeysError, NonFiniteError, ShapeMismatchError
from .io import LazyState, load_state
from .keys import Patterns, require_same_keys, select_keys


class DerivedState(LazyState):
    """A lazy state whose tensors are computed by a function of the key (a merge, ``θ_pre + v``)."""

    def __init__(self, name: str, keys: Sequence[str], load: Callable[[str], torch.Tensor],
                 shape: Callable[[str], tuple[int, ...]], dtype: Callable[[str], torch.dtype],
                 source: Callable[[str], str] | None = None, origins: Sequence = ()):
        super().__init__(name, keys, origins)
        self._load_fn, self._shape_fn, self._dtype_fn = load, shape, dtype
        self._source_fn = source

    def _load(self, key: str) -> torch.Tensor:
        return self._load_fn(key)

    def _shape(self, key: str) -> tuple[int, ...]:
        return self._shape_fn(key)

    def _dtype(self, key: str) -> torch.dtype:
        return self._dtype_fn(key)

    def _source(self, key: str) -> str:
        return self._source_fn(key) if self._source_fn else self.name


def check_finite(tensor: torch.Tensor, key: str, where: str) -> torch.Tensor:
    """`tensor` unchanged, or :class:`NonFiniteError` naming `key` and `where` if it holds NaN/Inf.

    A finite sum proves every entry finite without a tensor-sized temporary; only a
    non-finite sum (NaN/Inf, or an overflow of large finite values) gets the exact check.
    """
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
        return tensor
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise NonFiniteError(key, where=where, count=bad)
    return tensor


class TaskVector(Mapping):
    """``name -> tensor`` differences of a fine-tuned model from its pretrained model.

    Nothing is held in memory: each access recomputes the entry from its sources (lazily
    loaded checkpoints), in float32 (float64 if the sources are float64), on ``device``.
    Arithmetic (``+``, ``-``, scalar ``*``, :meth:`map`) builds new lazy task vectors.
    Use :meth:`materialize` to keep the entries in memory when they are read repeatedly.
    """

    def __init__(self, keys: Sequence[str], compute: Callable[[str], torch.Tensor],
                 shapes: Mapping[str, tuple[int, ...]], name: str = "task",
                 skipped: Mapping[str, str] | None = None,
                 sources: Mapping[str, str] | None = None, origins: Sequence = ()):
        self._keys = tuple(keys)
        self._compute = compute
        self._shapes = {k: tuple(shapes[k]) for k in self._keys}
        self.name = name
        self.skipped: dict[str, str] = dict(skipped or {})
        """Keys left out because they are not floating point, with the reason."""
        self._sources = dict(sources or {})
        self.origins: tuple = tuple(dict.fromkeys(origins))
        """Paths of the checkpoints this task vector is computed from (protected from writes)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_states(cls, pretrained, finetuned, include: Patterns = None, exclude: Patterns = None,
                    name: str | None = None, device: str | torch.device | None = "cpu",
                    check_values: bool = True) -> TaskVector:
        """``finetuned − pretrained`` over the floating-point keys selected by include/exclude globs.

        Both states may be anything :func:`load_state` reads. Keys missing from either side
        raise :class:`MissingKeysError`, shape differences :class:`ShapeMismatchError` (both
        checked from metadata, before any tensor is read); NaN/Inf raise
        :class:`NonFiniteError` when an entry is computed (``check_values=True``).
        Non-floating entries (integer buffers, masks) are skipped and listed in ``skipped``.
        """
        pre, ft = load_state(pretrained), load_state(finetuned)
        pre_keys = select_keys(pre, include, exclude)
        ft_keys = select_keys(ft, include, exclude)
        require_same_keys(pre_keys, ft_keys, pre.name, ft.name)
        keys, skipped = [], {}
        for key in pre_keys:
            pre_shape, ft_shape = pre.shape_of(key), ft.shape_of(key)
            if pre_shape != ft_shape:
                raise ShapeMismatchError(key, pre_shape, ft_shape, pre.source_of(key), ft.source_of(key))
            dtypes = (pre.dtype_of(key), ft.dtype_of(key))
            if not all(d.is_floating_point for d in dtypes):
                skipped[key] = f"not floating point ({dtypes[0]} / {dtypes[1]})"
                continue
            keys.append(key)
        target = resolve_device(device)

        def compute(key: str) -> torch.Tensor:
            a, raw = pre[key], ft[key]
            dtype = compute_dtype(torch.promote_types(a.dtype, raw.dtype))
            a = a.to(device=target, dtype=dtype)
            b = raw.to(device=target, dtype=dtype)
            if check_values:
                check_finite(a, key, pre.source_of(key))
                check_finite(b, key, ft.source_of(key))
            owned = ft.fresh_tensors or b.data_ptr() != raw.data_ptr()
            return b.sub_(a) if owned else b - a

        shapes = {k: pre.shape_of(k) for k in keys}
        sources = {k: f"{ft.source_of(k)} − {pre.source_of(k)}" for k in keys}
        return cls(keys, compute, shapes, name=name or short_name(ft.name), skipped=skipped,
                   sources=sources, origins=pre.origins + ft.origins)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], name: str = "task") -> TaskVector:
        """A task vector held in memory (entries converted to their compute dtype)."""
        state = load_state(dict(tensors))
        keys = [k for k in state if state.dtype_of(k).is_floating_point]
        skipped = {k: f"not floating point ({state.dtype_of(k)})" for k in state if k not in keys}
        stored = {k: state[k].to(compute_dtype(state.dtype_of(k))) for k in keys}
        return cls(keys, stored.__getitem__, {k: v.shape for k, v in stored.items()}, name=name,
                   skipped=skipped)

    # ------------------------------------------------------------------ mapping
    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._shapes:
            raise MissingKeysError([str(key)], where=f"task vector {self.name!r}")
        return self._compute(key)

    def __contains__(self, key: object) -> bool:
        return key in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        extra = f", {len(self.skipped)} skipped" if self.skipped else ""
        return f"TaskVector({self.name!r}, {len(self)} keys{extra})"

    def shape_of(self, key: str) -> tuple[int, ...]:
        """Shape of entry `key` without computing it."""
        if key not in self._shapes:
            raise MissingKeysError([str(key)], where=f"task vector {self.name!r}")
        return self._shapes[key]

    def source_of(self, key: str) -> str:
        """Where entry `key` comes from (files, for error messages)."""
        return self._sources.get(key, f"task vector {self.name!r}")

    def numel(self) -> int:
        """Number of scalar entries over all keys."""
        return sum(math.prod(s) for s in self._shapes.values())

    # ------------------------------------------------------------------ algebra
    def _derive(self, compute: Callable[[str], torch.Tensor], name: str,
                keys: Sequence[str] | None = None) -> TaskVector:
        keys = self._keys if keys is None else keys
        return TaskVector(keys, compute, {k: self._shapes[k] for k in keys}, name=name,
                          skipped=self.skipped, sources=self._sources, origins=self.origins)

    def _combine(self, other: TaskVector, op: Callable, symbol: str) -> TaskVector:
        require_same_keys(list(self), list(other), self.name, other.name)
        combined = self._derive(lambda k: op(self[k], other[k].to(self[k].device)),
                                f"({self.name} {symbol} {other.name})")
        combined.origins = tuple(dict.fromkeys(self.origins + other.origins))
        return combined

    def __add__(self, other):
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self._combine(other, torch.add, "+")

    def __sub__(self, other):
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self._combine(other, torch.sub, "-")

    def __mul__(self, factor):
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            return NotImplemented
        return self._derive(lambda k: self[k] * factor, f"{factor:g}·{self.name}")

    __rmul__ = __mul__

    def __neg__(self) -> TaskVector:
        return self * -1.0

    def map(self, fn: Callable, with_key: bool = False, name: str | None = None) -> TaskVector:
        """A task vector whose entries are ``fn(tensor)`` (or ``fn(key, tensor)``); shapes must stay."""
        if with_key:
            return self._derive(lambda k: fn(k, self[k]), name or self.name)
        return self._derive(lambda k: fn(self[k]), name or self.name)

    def select(self, include: Patterns = None, exclude: Patterns = None) -> TaskVector:
        """The entries whose names the include/exclude globs select."""
        return self._derive(self._compute, self.name, select_keys(self._keys, include, exclude))

    def to(self, device: str | torch.device) -> TaskVector:
        """The same task vector, computed on `device`."""
        target = resolve_device(device)
        return self._derive(lambda k: self[k].to(target), self.name)

    def materialize(self) -> TaskVector:
        """Compute every entry once and keep it in memory."""
        stored = {k: self[k] for k in self._keys}
        return self._derive(stored.__getitem__, self.name)

    def apply_to(self, pretrained, scale: float = 1.0, dtype: torch.dtype | None = None) -> LazyState:
        """The lazy state ``θ_pre + scale · v``: every key of `pretrained`, changed where ``v`` has one.

        Computed in float32 (float64 for float64 sources) and returned in `dtype`, by default
        the pretrained tensor's own dtype.
        """
        pre = load_state(pretrained)
        missing = [k for k in self._keys if k not in pre]
        if missing:
            raise MissingKeysError(missing, where=pre.name, reference=f"task vector {self.name!r}")
        for key in self._keys:
            if pre.shape_of(key) != self._shapes[key]:
                raise ShapeMismatchError(key, pre.shape_of(key), self._shapes[key], pre.source_of(key),
                                         f"task vector {self.name!r}")

        def load(key: str) -> torch.Tensor:
            base = pre[key]
            if key not in self._shapes:
                return base
            delta = self[key]
            summed = base.to(device=delta.device, dtype=delta.dtype) + scale * delta
            return summed.to(dtype or base.dtype)

        def out_dtype(key: str) -> torch.dtype:
            return dtype if (dtype is not None and key in self._shapes) else pre.dtype_of(key)

        return DerivedState(f"{pre.name} + {scale:g}·{self.name}", list(pre), load, pre.shape_of,
                            out_dtype, pre.source_of, origins=pre.origins + self.origins)

    # ------------------------------------------------------------------ geometry
    def norms(self) -> dict[str, float]:
        """L2 norm of each entry."""
        return {k: float(torch.linalg.vector_norm(self[k])) for k in self._keys}

    def norm(self) -> float:
        """Global L2 norm over all entries."""
        return math.sqrt(sum(n * n for n in self.norms().values()))

    def dot_per_key(self, other: TaskVector) -> dict[str, float]:
        """Inner product ``<self[k], other[k]>`` for every shared key."""
        require_same_keys(list(self), list(other), self.name, other.name)
        return {k: float(torch.sum(self[k] * other[k].to(self[k].device))) for k in self._keys}

    def cosine_per_key(self, other: TaskVector) -> dict[str, float]:
        """Cosine similarity per key (NaN where either entry is all zero)."""
        out = {}
        for k in self._keys:
            a, b = self[k], other[k].to(self[k].device)
            out[k] = _cosine(float(torch.sum(a * b)), float(torch.sum(a * a)), float(torch.sum(b * b)))
        return out

    def cosine(self, other: TaskVector) -> float:
        """Cosine similarity of the two task vectors seen as one long vector (NaN if one is zero)."""
        require_same_keys(list(self), list(other), self.name, other.name)
        dot = aa = bb = 0.0
        for k in self._keys:
            a, b = self[k], other[k].to(self[k].device)
            dot += float(torch.sum(a * b))
            aa += float(torch.sum(a * a))
            bb += float(torch.sum(b * b))
        return _cosine(dot, aa, bb)


def _cosine(dot: float, aa: float, bb: float) -> float:
    if aa == 0 or bb == 0:
        return float("nan")
    return dot / math.sqrt(aa * bb)


def short_name(name: str) -> str:
    """A checkpoint's name without its folders and weight-file suffix (``a/b/ft.safetensors`` → ``ft``)."""
    tail = name.rstrip("/").split("/")[-1]
    for suffix in (".safetensors", ".pt", ".pth", ".bin"):
        if tail.endswith(suffix):
            return tail[: -len(suffix)]
    return tail


# ------------------------------------------------------------------ stacks of task vectors
TaskVectors = Sequence[Mapping[str, torch.Tensor]]


NAME_LEVELS = 3
"""Folders above a checkpoint that :func:`names_from_sources` looks at for a distinct name."""


def names_from_sources(sources: Sequence) -> list[str] | None:
    """Task names for checkpoint paths whose names collide: the nearest enclosing folder level at
    which the names are distinct (task_vectors' ``<task>/finetuned.pt`` gives ``<task>``; per-task
    Hugging Face folders ``<task>/model/`` give ``<task>``), looking at most :data:`NAME_LEVELS`
    folders up; ``None`` when the names do not collide or no level tells them apart."""
    paths = [Path(s) for s in sources if isinstance(s, (str, os.PathLike))]
    if len(paths) != len(sources) or len(paths) < 2:
        return None
    stems = [short_name(str(p)) for p in paths]
    if len(set(stems)) == len(stems):
        return None
    folders = [(p.parent if p.is_file() or p.suffix else p).resolve() for p in paths]
    for level in range(NAME_LEVELS):
        names = [_ancestor(folder, level).name for folder in folders]
        if all(names) and len(set(names)) == len(names):
            return names
    return None


def _ancestor(folder: Path, level: int) -> Path:
    """`folder` itself (level 0) or the folder `level` steps above it (the root past the top)."""
    return folder if level == 0 else folder.parents[min(level, len(folder.parents)) - 1]


def task_names(task_vectors: TaskVectors) -> list[str]:
    """Each task's ``name`` attribute, or ``task0, task1, …``; duplicates get a ``#i`` suffix."""
    names = [getattr(tv, "name", None) or f"task{i}" for i, tv in enumerate(task_vectors)]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def common_keys(task_vectors: TaskVectors, include: Patterns = None, exclude: Patterns = None) -> list[str]:
    """Keys of the first task selected by the globs; every task must have the same keys."""
    if len(task_vectors) == 0:
        raise EmptyInputError("need at least one task vector, got an empty list")
    names = task_names(task_vectors)
    first = list(task_vectors[0])
    for tv, name in zip(task_vectors[1:], names[1:]):
        require_same_keys(first, list(tv), names[0], name)
    return select_keys(first, include, exclude)


def entry_shape(task_vector: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """Shape of entry `key`, from metadata where the mapping knows it (``shape_of``: a
    :class:`TaskVector` or a lazy state), so that nothing is read or computed."""
    if hasattr(task_vector, "shape_of"):
        return tuple(task_vector.shape_of(key))
    return tuple(task_vector[key].shape)


def key_entries(task_vectors: TaskVectors, key: str, device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Entry `key` of every task, each in the compute dtype on `device`: :func:`stack_key`'s
    numbers as K separate tensors, so that a caller can drop each task's entry once done with it."""
    target = resolve_device(device)
    return [as_compute_tensor(tv[key], target) for tv in task_vectors]


def stack_key(task_vectors: TaskVectors, key: str, device: torch.device | str | None = None) -> torch.Tensor:
    """``[K, *shape]`` stack of entry `key` of every task, in the compute dtype, on `device`.

    Filled one task at a time, so that building it holds the stack plus one task's entry.
    """
    target = resolve_device(device)
    first = as_compute_tensor(task_vectors[0][key], target)
    stack = torch.empty((len(task_vectors), *first.shape), dtype=first.dtype, device=target)
    stack[0] = first
    del first
    for i, tv in enumerate(task_vectors[1:], start=1):
        entry = as_compute_tensor(tv[key], target)
        if entry.dtype != stack.dtype:
            stack = stack.to(torch.promote_types(stack.dtype, entry.dtype))
        stack[i] = entry
        del entry
    return stack
