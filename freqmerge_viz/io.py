"""Lazy checkpoint loading and atomic, optionally sharded, safetensors saving.

``load_state`` turns a module, a dict, a file or a checkpoint directory into a
``LazyState``: a read-only mapping ``name -> torch.Tensor`` whose shapes and dtypes are
known without reading tensor data, and whose safetensors tensors are read from disk one
at a time, on access. ``save_state`` writes any such mapping back as safetensors.
A pickled whole module (``torch.save(model)``) is read, on request only
(``pickled_modules=True``), by :mod:`freqmerge_viz.pickled` without running its code.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import torch

from .errors import CheckpointError, MissingKeysError, ParameterError
from .pickled import TORCH_WRAPPER_KEYS, foreign_globals, open_pickled, refusal_reason, torch_error_text
from .outputs import prepare_file_output, staged_folder, write_atomically, write_text_atomically

__all__ = [
    "LazyState", "SafetensorsState", "ShardedState", "TorchFileState", "InMemoryState",
    "PickledModuleState", "PickledObjectError", "KeyMapState", "strip_prefix", "load_state", "save_state",
    "parse_size", "write_safetensors", "ShardPlan", "plan_shards",
    "write_shards", "write_file", "write_atomically", "write_text_atomically", "is_own_weight_file",
]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
for _code, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_code] = getattr(torch, _attr)

MAX_HEADER_BYTES = 100_000_000
TORCH_SUFFIXES = (".pt", ".pth", ".bin")

_OWN_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json")


class LazyState(Mapping):
    """Read-only mapping ``key -> torch.Tensor`` (CPU, stored dtype) that reads on access.

    Keys iterate in a fixed order. ``shape_of``/``dtype_of`` never read tensor data.
    ``bytes_read`` counts bytes of tensor data read from disk so far.
    """

    fresh_tensors: bool = False
    """True when every read returns a new tensor that nothing else refers to (safe to modify)."""

    def __init__(self, name: str, keys: Sequence[str], origins: Iterable[str | os.PathLike] = ()):
        self.name = name
        self._keys = tuple(keys)
        self._key_set = frozenset(self._keys)
        self._bytes_read = 0
        self._origins = tuple(Path(p) for p in origins)

    @property
    def origins(self) -> tuple[Path, ...]:
        """Every path this state reads from (files, shards, index, the folder given), in order.

        Writers refuse an output that overlaps any of them (:func:`freqmerge_viz.outputs.check_output`).
        """
        return tuple(dict.fromkeys(self._origins + self._file_origins()))

    def with_origins(self, *paths: str | os.PathLike) -> LazyState:
        """This state, also claiming `paths` as origins (e.g. the folder it was opened from)."""
        self._origins = tuple(Path(p) for p in paths) + self._origins
        return self

    def _file_origins(self) -> tuple[Path, ...]:
        return ()

    @property
    def bytes_read(self) -> int:
        return self._bytes_read

    def __getitem__(self, key: str) -> torch.Tensor:
        self._require(key)
        return self._load(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._key_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} keys)"

    def shape_of(self, key: str) -> tuple[int, ...]:
        self._require(key)
        return self._shape(key)

    def dtype_of(self, key: str) -> torch.dtype:
        self._require(key)
        return self._dtype(key)

    def source_of(self, key: str) -> str:
        """Path of the file that holds ``key`` (``self.name`` for in-memory states)."""
        self._require(key)
        return self._source(key)

    def shared_keys(self) -> list[tuple[str, ...]]:
        """Groups of keys that are one tensor in the source (same storage, offset, shape and
        stride: tied weights); empty where the format cannot share (safetensors)."""
        return []

    def _require(self, key: str) -> None:
        if key not in self:
            raise MissingKeysError([str(key)], where=self.name)

    @abstractmethod
    def _load(self, key: str) -> torch.Tensor: ...

    @abstractmethod
    def _shape(self, key: str) -> tuple[int, ...]: ...

    @abstractmethod
    def _dtype(self, key: str) -> torch.dtype: ...

    def _source(self, key: str) -> str:
        return self.name


@dataclass(frozen=True)
class _TensorEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsState(LazyState):
    """One ``.safetensors`` file; the header is parsed at open, each tensor read by seek+read.

    No file handle stays open. Keys iterate in sorted order. ``metadata`` holds the
    header's ``__metadata__`` (str -> str).
    """

    fresh_tensors = True

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._entries, self.metadata, self._data_start, self._stat = _parse_safetensors_header(self.path)
        super().__init__(str(self.path), sorted(self._entries))

    def _file_origins(self) -> tuple[Path, ...]:
        return (self.path,)

    def _shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key].shape

    def _dtype(self, key: str) -> torch.dtype:
        return self._entries[key].dtype

    def _load(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        nbytes = entry.end - entry.begin
        if nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        buffer = bytearray(nbytes)
        try:
            with open(self.path, "rb") as handle:
                if _stat_signature(os.fstat(handle.fileno())) != self._stat:
                    raise CheckpointError(self.path, "file changed on disk since it was opened")
                handle.seek(self._data_start + entry.begin)
                got = handle.readinto(buffer)
        except OSError as exc:
            raise CheckpointError(self.path, f"cannot read tensor {key!r}: {exc}") from exc
        if got != nbytes:
            raise CheckpointError(self.path, f"truncated while reading {key!r}: "
                                             f"expected {nbytes} bytes, got {got}")
        self._bytes_read += nbytes
        return torch.frombuffer(buffer, dtype=entry.dtype).reshape(entry.shape)


def _stat_signature(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _parse_safetensors_header(path: Path):
    """Return (entries, metadata, byte offset of the data section, stat signature)."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(path, f"file is truncated: {stat.st_size} bytes, "
                                            "shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(path, f"not a safetensors file: header length "
                                            f"{header_len} bytes is implausible")
            if 8 + header_len > stat.st_size:
                raise CheckpointError(path, f"file is truncated: header needs {8 + header_len} "
                                            f"bytes but the file has {stat.st_size}")
            raw_header = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(path, str(exc)) from exc
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "__metadata__ is not a JSON object")
    entries = {key: _parse_entry(path, key, spec) for key, spec in header.items()}
    data_start = 8 + header_len
    expected_size = data_start + max((e.end for e in entries.values()), default=0)
    if expected_size > stat.st_size:
        raise CheckpointError(path, f"file is truncated: header describes {expected_size} "
                                    f"bytes but the file has {stat.st_size}")
    return entries, dict(metadata), data_start, _stat_signature(stat)


def _parse_entry(path: Path, key: str, spec: object) -> _TensorEntry:
    def bad(reason: str) -> CheckpointError:
        return CheckpointError(path, f"malformed header entry {key!r}: {reason}")

    if not isinstance(spec, dict):
        raise bad("not a JSON object")
    code, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if code not in SAFETENSORS_DTYPES:
        raise bad(f"unsupported dtype {code!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise bad(f"data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
    dtype = SAFETENSORS_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != expected:
        raise bad(f"data_offsets span {offsets[1] - offsets[0]} bytes but shape {shape} "
                  f"of {code} needs {expected}")
    return _TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


class ShardedState(LazyState):
    """Union of several per-file states (one per shard); a key may live in one shard only.

    Keys iterate sorted if ``sort_keys`` else shard by shard. ``bytes_read`` sums the shards.
    """

    @property
    def fresh_tensors(self) -> bool:
        return all(shard.fresh_tensors for shard in self.shards)

    def __init__(self, shards: Sequence[LazyState], name: str, sort_keys: bool = True):
        self.shards = tuple(shards)
        self._shard_of: dict[str, LazyState] = {}
        for shard in self.shards:
            for key in shard:
                if key in self._shard_of:
                    raise CheckpointError(name, f"key {key!r} appears in two shards: "
                                                f"{self._shard_of[key].name} and {shard.name}")
                self._shard_of[key] = shard
        keys = sorted(self._shard_of) if sort_keys else list(self._shard_of)
        super().__init__(name, keys)

    @property
    def bytes_read(self) -> int:
        return sum(shard.bytes_read for shard in self.shards)

    def _file_origins(self) -> tuple[Path, ...]:
        return tuple(path for shard in self.shards for path in shard.origins)

    def _load(self, key: str) -> torch.Tensor:
        return self._shard_of[key][key]

    def _shape(self, key: str) -> tuple[int, ...]:
        return self._shard_of[key].shape_of(key)

    def _dtype(self, key: str) -> torch.dtype:
        return self._shard_of[key].dtype_of(key)

    def _source(self, key: str) -> str:
        return self._shard_of[key].source_of(key)

    def shared_keys(self) -> list[tuple[str, ...]]:
        return [group for shard in self.shards for group in shard.shared_keys()]


class InMemoryState(LazyState):
    """Tensors already in memory (a dict or a module's ``state_dict``); returned as stored
    (no copy, sharing storage with the source). ``bytes_read`` stays 0."""

    def __init__(self, tensors: Mapping, name: str = "<dict>"):
        for key, value in tensors.items():
            if not isinstance(key, str):
                raise ParameterError(f"state key {key!r} in {name} is a {type(key).__name__}, not a str")
            if not isinstance(value, torch.Tensor):
                raise ParameterError(f"state entry {key!r} in {name} is a "
                                     f"{type(value).__name__}, not a torch.Tensor")
        self._tensors = dict(tensors)
        super().__init__(name, list(self._tensors))

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> InMemoryState:
        tensors = {k: v.detach() if isinstance(v, torch.Tensor) else v
                   for k, v in module.state_dict().items()}
        return cls(tensors, name=f"<module {type(module).__name__}>")

    def _load(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def _dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def shared_keys(self) -> list[tuple[str, ...]]:
        groups: dict[tuple, list[str]] = {}
        for key, tensor in self._tensors.items():
            if tensor.numel() and not tensor.is_meta:
                view = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype,
                        tuple(tensor.shape), tensor.stride())
                groups.setdefault(view, []).append(key)
        return [tuple(keys) for keys in groups.values() if len(keys) > 1]


class TorchFileState(InMemoryState):
    """A ``torch.save`` file loaded with ``weights_only=True`` and ``mmap=True``.

    Lazy through the memory map only: the OS pages data in when a tensor is touched, so
    ``bytes_read`` stays 0. Legacy (non-zip) files cannot be mapped and are read whole at
    open; then ``bytes_read`` is the total tensor size from the start.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        loaded, mapped = _torch_load(self.path)
        tensors = _unwrap_torch_checkpoint(self.path, loaded)
        super().__init__(tensors, name=str(self.path))
        self._origins = (self.path,)
        if not mapped:
            self._bytes_read = sum(t.nbytes for t in tensors.values())


class PickledObjectError(CheckpointError):
    """A torch file holds pickled Python objects (a whole module, custom classes), which the
    default, weights-only loader refuses; ``pickled_modules=True`` reads such a module's weights."""


def _torch_load(path: Path) -> tuple[object, bool]:
    """Load with mmap if the format allows; return (object, whether it is memory-mapped)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
    except Exception:
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False), False
    except Exception as exc:
        foreign = foreign_globals(path) if isinstance(exc, pickle.UnpicklingError) else None
        if foreign:
            raise PickledObjectError(path, refusal_reason(foreign, torch_error_text(exc, 200))) from None
        raise CheckpointError(path, f"not a loadable torch file ({type(exc).__name__}: "
                                    f"{torch_error_text(exc)})") from exc


class PickledModuleState(LazyState):
    """A pickled whole module (``torch.save(model)``) read without running its code
    (:mod:`freqmerge_viz.pickled`): keys as ``model.state_dict()`` names them, shapes and
    dtypes known at open, each tensor read from the file on access (seek + read)."""

    fresh_tensors = True

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.checkpoint = open_pickled(self.path)
        super().__init__(str(self.path), list(self.checkpoint.tensors))

    def _file_origins(self) -> tuple[Path, ...]:
        return (self.path,)

    @property
    def bytes_read(self) -> int:
        return self.checkpoint.bytes_read

    def _load(self, key: str) -> torch.Tensor:
        return self.checkpoint.read(key)

    def _shape(self, key: str) -> tuple[int, ...]:
        return self.checkpoint.tensors[key].shape

    def _dtype(self, key: str) -> torch.dtype:
        return self.checkpoint.tensors[key].dtype

    def shared_keys(self) -> list[tuple[str, ...]]:
        return self.checkpoint.shared_groups()


class KeyMapState(LazyState):
    """`base` under other names: key ``k`` reads ``base[mapping[k]]``. Several keys may read
    one base key (tied weights); base keys not in the mapping's values are left out."""

    def __init__(self, base: LazyState, mapping: Mapping[str, str], name: str | None = None):
        missing = [source for source in mapping.values() if source not in base]
        if missing:
            raise MissingKeysError(missing, where=base.name)
        self.base, self._mapping = base, dict(mapping)
        super().__init__(name or base.name, list(self._mapping))

    @property
    def fresh_tensors(self) -> bool:
        return self.base.fresh_tensors

    @property
    def bytes_read(self) -> int:
        return self.base.bytes_read

    def _file_origins(self) -> tuple[Path, ...]:
        return self.base.origins

    def _load(self, key: str) -> torch.Tensor:
        return self.base[self._mapping[key]]

    def _shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape_of(self._mapping[key])

    def _dtype(self, key: str) -> torch.dtype:
        return self.base.dtype_of(self._mapping[key])

    def _source(self, key: str) -> str:
        return self.base.source_of(self._mapping[key])


def strip_prefix(state, prefix: str) -> KeyMapState:
    """`state` (anything :func:`load_state` reads) with `prefix` removed from the keys that
    start with it, e.g. ``"model."`` from a task_vectors ``ImageEncoder`` checkpoint."""
    state = load_state(state)
    mapping: dict[str, str] = {}
    for key in state:
        short = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if short in mapping:
            raise ParameterError(f"stripping {prefix!r} from {state.name} gives key {short!r} twice "
                                 f"({mapping[short]!r} and {key!r})")
        mapping[short] = key
    return KeyMapState(state, mapping)


def _unwrap_torch_checkpoint(path: Path, loaded: object) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise CheckpointError(path, f"holds a {type(loaded).__name__}, not a state dict")
    state = loaded
    for wrapper in TORCH_WRAPPER_KEYS:
        if isinstance(loaded.get(wrapper), Mapping):
            state = loaded[wrapper]
            break
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor")
    return {str(key): value for key, value in state.items()}


def load_state(source, *, pickled_modules: bool = False) -> LazyState:
    """Open ``source`` lazily: a LazyState (returned as is), an ``nn.Module``, a mapping of
    tensors, a ``.safetensors``/``.pt``/``.pth``/``.bin`` file, or a checkpoint directory.

    Torch files load with ``weights_only=True``. With ``pickled_modules=True``, one that
    torch refuses because it holds a pickled whole module (``torch.save(model)``) is read
    by the restricted unpickler of :mod:`freqmerge_viz.pickled`, which runs none of the
    file's code: a :class:`PickledModuleState` keyed as ``model.state_dict()`` would be.
    """
    if isinstance(source, LazyState):
        return source
    if isinstance(source, torch.nn.Module):
        return InMemoryState.from_module(source)
    if isinstance(source, Mapping):
        name = "<dict>" if isinstance(source, dict) else f"<{type(source).__name__}>"
        return InMemoryState(source, name=name)
    if not isinstance(source, (str, os.PathLike)):
        raise ParameterError(f"cannot load a state from a {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise CheckpointError(path, _why_missing(path))
    if path.is_dir():
        return _load_directory(path, pickled_modules).with_origins(path)
    return _load_file(path, pickled_modules)


def _why_missing(path: Path) -> str:
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return "symlink loop (the link points back to itself)"
        except OSError as exc:
            if exc.errno == 40:
                return "symlink loop (the link points back to itself)"
            return f"dangling symlink to {os.readlink(path)}"
    return "path does not exist"


def _load_file(path: Path, pickled_modules: bool = False) -> LazyState:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsState(path)
    if suffix in TORCH_SUFFIXES:
        return _load_torch_file(path, pickled_modules)
    raise CheckpointError(path, f"unknown checkpoint suffix {path.suffix!r} (expected "
                                f".safetensors, {', '.join(TORCH_SUFFIXES)})")


def _load_torch_file(path: Path, pickled_modules: bool = False) -> LazyState:
    """A torch file: weights-only first; a pickled module through the restricted unpickler if allowed."""
    try:
        return TorchFileState(path)
    except PickledObjectError:
        if not pickled_modules:
            raise
    return PickledModuleState(path)


def _load_directory(directory: Path, pickled_modules: bool = False) -> LazyState:
    open_torch = lambda path: _load_torch_file(path, pickled_modules)  # noqa: E731
    if (directory / "model.safetensors.index.json").is_file():
        return _load_index(directory / "model.safetensors.index.json", SafetensorsState, True)
    if (directory / "model.safetensors").is_file():
        return SafetensorsState(directory / "model.safetensors")
    if (directory / "pytorch_model.bin.index.json").is_file():
        return _load_index(directory / "pytorch_model.bin.index.json", open_torch, False)
    if (directory / "pytorch_model.bin").is_file():
        return open_torch(directory / "pytorch_model.bin")
    names = sorted(p.name for p in directory.iterdir())
    candidates = [n for n in names if n.endswith(".safetensors") and not n.startswith(".")]
    if len(candidates) == 1:
        return SafetensorsState(directory / candidates[0])
    listing = ", ".join(names[:10]) + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")
    raise CheckpointError(directory, "directory holds no recognised weights (model.safetensors, "
                                     "pytorch_model.bin or an index); it contains: "
                                     + (listing or "nothing"))


def _load_index(index_path: Path, open_shard: Callable[[Path], LazyState],
                sort_keys: bool) -> ShardedState:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(index_path, f"malformed index ({type(exc).__name__}: {exc})") from exc
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(index_path, "malformed index: weight_map is not {key: filename}")
    shards: dict[str, LazyState] = {}
    for filename in dict.fromkeys(weight_map.values()):
        shard_path = index_path.parent / filename
        if not shard_path.is_file():
            raise CheckpointError(index_path, f"index names shard {filename!r}, which does not exist")
        shards[filename] = open_shard(shard_path)
    for key, filename in weight_map.items():
        if key not in shards[filename]:
            raise CheckpointError(index_path, f"index maps {key!r} to {filename!r}, "
                                              "which does not hold it")
    return ShardedState(list(shards.values()), name=str(index_path.parent),
                        sort_keys=sort_keys).with_origins(index_path)


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Size in bytes from a positive int or a string such as "500MB", "1.5GiB", "1234".

    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024; units are case-insensitive.
    """
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise ParameterError(f"size must be an int or a string like '500MB', got {size!r}")
    if isinstance(size, int):
        nbytes = size
    else:
        match = _SIZE_PATTERN.fullmatch(size)
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ParameterError(f"cannot parse size {size!r} (use e.g. '500MB', '2GiB' or bytes)")
        nbytes = int(Fraction(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if nbytes <= 0:
        raise ParameterError(f"size must be positive, got {size!r}")
    return nbytes


def save_state(state, path: str | os.PathLike, *, max_shard_size: int | str | None = None,
               dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None,
               protect: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Write ``state`` as safetensors; return the files written (shards, then the index).

    ``path`` ending in ``.safetensors`` is one file; otherwise a folder receiving
    ``model.safetensors`` or, when the data exceeds ``max_shard_size`` (bytes of tensor
    data per shard), ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.
    ``dtype`` casts floating tensors only. Tensors are read one shard at a time.

    Nothing is lost (see :mod:`freqmerge_viz.outputs`): `path` may not be, contain or lie
    inside any file the state reads from (``state.origins``) or any path in `protect`; a
    folder output is written into a temporary sibling folder that replaces `path` whole
    once complete, so a folder from an earlier save is either kept or fully replaced, and
    an existing folder holding anything but weight files of our naming is refused. Both
    checks, and free space, are made before any tensor is read.
    """
    state = _as_state(state)
    plan = plan_shards(state, max_shard_size, dtype)
    file_metadata = _file_metadata(metadata)
    path = Path(path)
    guard = [*state.origins, *protect]
    if path.suffix.lower() == ".safetensors":
        plan.require_single_file(path)
        prepare_file_output(path, protect=guard, expected_bytes=plan.total_bytes)
        _write_shard(state, plan.shards[0] if plan.shards else [], path, plan.dtype, file_metadata)
        return [path]
    with staged_folder(path, protect=guard, expected_bytes=plan.total_bytes,
                       own=lambda name: is_own_weight_file(name) or name == "merge.json") as staging:
        names = write_shards(state, plan, staging, file_metadata)
    return [path / name for name in names]


def is_own_weight_file(name: str) -> bool:
    """Whether `name` is one of the weight or index file names :func:`save_state` writes."""
    return _OWN_WEIGHT_FILE.fullmatch(name) is not None


def _as_state(state) -> LazyState:
    if isinstance(state, LazyState):
        return state
    if not isinstance(state, (Mapping, torch.nn.Module)):
        raise ParameterError(f"cannot save a {type(state).__name__}; expected a mapping of tensors")
    return load_state(state)


def _file_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    file_metadata = {"format": "pt"}
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ParameterError("metadata must be a dict of str -> str")
        file_metadata.update(metadata)
    return file_metadata


@dataclass(frozen=True)
class ShardPlan:
    """Which keys go to which file of a safetensors output, and the bytes each needs."""

    shards: tuple[tuple[str, ...], ...]
    sizes: Mapping[str, int]
    limit: int | None
    dtype: torch.dtype | None

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data in the whole output (headers not counted)."""
        return sum(self.sizes.values())

    @property
    def names(self) -> list[str]:
        """File names in a folder output: ``model.safetensors`` or ``model-0000i-of-0000N...``."""
        if len(self.shards) <= 1:
            return ["model.safetensors"]
        return [f"model-{i:05d}-of-{len(self.shards):05d}.safetensors" for i in range(1, len(self.shards) + 1)]

    def require_single_file(self, path: Path) -> None:
        """:class:`ParameterError` if the data does not fit one file under the shard limit."""
        if len(self.shards) > 1 or (self.limit is not None and self.total_bytes > self.limit):
            raise ParameterError(f"{self.total_bytes} bytes of tensors exceed max_shard_size "
                                 f"{self.limit} for single file {path}; save to a folder to shard")


def plan_shards(state: LazyState, max_shard_size: int | str | None = None,
                dtype: torch.dtype | None = None) -> ShardPlan:
    """Plan a safetensors output of `state` from shapes and dtypes alone (no tensor is read)."""
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ParameterError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    sizes = {key: _saved_nbytes(state, key, dtype) for key in state}
    shards = tuple(tuple(keys) for keys in _plan_shards(list(state), sizes, limit))
    return ShardPlan(shards, sizes, limit, dtype)


def write_shards(state: LazyState, plan: ShardPlan, folder: Path,
                 metadata: Mapping[str, str] | None = None) -> list[str]:
    """Write `plan`'s files (and index, when sharded) into the existing `folder`; return their names.

    Each file is written atomically; together they are not: use :func:`save_state`, or
    write into a :func:`~freqmerge_viz.outputs.staged_folder`, for an all-or-nothing output.
    """
    file_metadata = dict(metadata) if metadata is not None else {"format": "pt"}
    names = plan.names
    for keys, name in zip(plan.shards or ((),), names):
        _write_shard(state, list(keys), folder / name, plan.dtype, file_metadata)
    if len(names) > 1:
        index = {"metadata": {"total_size": plan.total_bytes},
                 "weight_map": {key: name for keys, name in zip(plan.shards, names) for key in keys}}
        write_text_atomically(folder / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        names = names + ["model.safetensors.index.json"]
    return names


def write_file(state: LazyState, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write every tensor of `state` into one safetensors file, atomically (no other checks:
    :func:`save_state` makes them)."""
    _write_shard(state, list(state), Path(path), None, dict(metadata) if metadata is not None else {"format": "pt"})


def _saved_nbytes(state: LazyState, key: str, dtype: torch.dtype | None) -> int:
    return math.prod(state.shape_of(key)) * _saved_dtype(state, key, dtype).itemsize


def _plan_shards(keys: list[str], sizes: dict[str, int], limit: int | None) -> list[list[str]]:
    """Fill shards greedily in key order; a tensor over ``limit`` gets a shard of its own."""
    shards: list[list[str]] = []
    filled = 0
    for key in keys:
        if not shards or (limit is not None and filled + sizes[key] > limit and shards[-1]):
            shards.append([])
            filled = 0
        shards[-1].append(key)
        filled += sizes[key]
    return shards


def _write_shard(state: LazyState, keys: list[str], target: Path,
                 dtype: torch.dtype | None, metadata: dict[str, str]) -> None:
    """Write `keys` of `state` as one safetensors file, atomically, one tensor in memory at a time.

    The header is laid out from the keys' shapes and dtypes before any tensor is read; then each
    tensor is read, checked against its header entry and written, and dropped. So writing a
    whole model as one file needs one tensor's memory, not the model's.
    """
    specs = {key: (_saved_dtype(state, key, dtype), tuple(state.shape_of(key))) for key in keys}
    layout, order = _safetensors_layout(specs, metadata)

    def tensor_of(key: str) -> torch.Tensor:
        tensor = state[key].detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if (tensor.dtype, tuple(tensor.shape)) != specs[key]:
            raise CheckpointError(state.name, f"tensor {key!r} came out as {tensor.dtype} "
                                              f"{tuple(tensor.shape)}, but its header entry says "
                                              f"{specs[key][0]} {specs[key][1]}")
        return tensor

    write_atomically(target, lambda tmp: _write_layout(tmp, layout, order, tensor_of))


def _saved_dtype(state: LazyState, key: str, dtype: torch.dtype | None) -> torch.dtype:
    stored = state.dtype_of(key)
    return dtype if dtype is not None and stored.is_floating_point else stored


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_SAFETENSORS_RANK = [torch.bool, torch.uint8, torch.int8, torch.float8_e5m2, torch.float8_e4m3fn, torch.int16,
                     torch.float16, torch.bfloat16, torch.int32, torch.float32, torch.float64, torch.int64]


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write CPU `tensors` as a safetensors file whose bytes depend only on the input.

    The layout is the one ``safetensors.torch.save_file`` writes (tensors ordered by dtype as
    safetensors ranks them, highest first, then by name; header padded with spaces to 8
    bytes), except that the
    metadata entries are sorted by key: safetensors keeps them in a hash map, so with more
    than one entry its byte order changes from process to process.
    """
    layout, order = _safetensors_layout({k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}, metadata)
    _write_layout(path, layout, order, tensors.__getitem__)


def _safetensors_layout(specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                        metadata: Mapping[str, str] | None) -> tuple[bytes, list[str]]:
    """(the file's first bytes: length + JSON header, the keys in data order) from dtypes and shapes."""
    for key, (dtype, _) in specs.items():
        if dtype not in _SAFETENSORS_DTYPES:
            raise ParameterError(f"tensor {key!r} has dtype {dtype}, which safetensors cannot store")
    order = sorted(specs, key=lambda k: (-_SAFETENSORS_RANK.index(specs[k][0]), k))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    offset = 0
    for key in order:
        dtype, shape = specs[key]
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded, order


def _write_layout(path, layout: bytes, order: Sequence[str], tensor_of: Callable[[str], torch.Tensor]) -> None:
    """Write `layout`, then each tensor of `order` (asked for one at a time) as raw bytes."""
    with open(path, "wb") as handle:
        handle.write(layout)
        for key in order:
            tensor = tensor_of(key)
            if tensor.numel():
                handle.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del tensor