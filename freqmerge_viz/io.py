"""Lazy checkpoint loading and atomic, optionally sharded, safetensors saving.

``load_state`` turns a module, a dict, a file or a checkpoint directory into a
``LazyState``: a read-only mapping ``name -> torch.Tensor`` whose shapes and dtypes are
known without reading tensor data, and whose safetensors tensors are read from disk one
at a time, on access. ``save_state`` writes any such mapping back as safetensors.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import struct
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import torch

from .errors import CheckpointError, MissingKeysError, ParameterError

__all__ = [
    "LazyState", "SafetensorsState", "ShardedState", "TorchFileState", "InMemoryState",
    "load_state", "save_state", "parse_size", "write_safetensors",
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
TORCH_WRAPPER_KEYS = ("state_dict", "model_state_dict")
"""Keys of a torch checkpoint dict whose value is the state dict; sibling entries are ignored."""

_OWN_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json")


class LazyState(Mapping):
    """Read-only mapping ``key -> torch.Tensor`` (CPU, stored dtype) that reads on access.

    Keys iterate in a fixed order. ``shape_of``/``dtype_of`` never read tensor data.
    ``bytes_read`` counts bytes of tensor data read from disk so far.
    """

    fresh_tensors: bool = False
    """True when every read returns a new tensor that nothing else refers to (safe to modify)."""

    def __init__(self, name: str, keys: Sequence[str]):
        self.name = name
        self._keys = tuple(keys)
        self._key_set = frozenset(self._keys)
        self._bytes_read = 0

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

    def _load(self, key: str) -> torch.Tensor:
        return self._shard_of[key][key]

    def _shape(self, key: str) -> tuple[int, ...]:
        return self._shard_of[key].shape_of(key)

    def _dtype(self, key: str) -> torch.dtype:
        return self._shard_of[key].dtype_of(key)

    def _source(self, key: str) -> str:
        return self._shard_of[key].source_of(key)


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
        if not mapped:
            self._bytes_read = sum(t.nbytes for t in tensors.values())


def _torch_load(path: Path) -> tuple[object, bool]:
    """Load with mmap if the format allows; return (object, whether it is memory-mapped)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
    except Exception:
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False), False
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise CheckpointError(path, f"not a loadable torch file ({type(exc).__name__}: "
                                    f"{message[:300]})") from exc


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


def load_state(source) -> LazyState:
    """Open ``source`` lazily: a LazyState (returned as is), an ``nn.Module``, a mapping of
    tensors, a ``.safetensors``/``.pt``/``.pth``/``.bin`` file, or a checkpoint directory."""
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
        raise CheckpointError(path, "path does not exist")
    if path.is_dir():
        return _load_directory(path)
    return _load_file(path)


def _load_file(path: Path) -> LazyState:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsState(path)
    if suffix in TORCH_SUFFIXES:
        return TorchFileState(path)
    raise CheckpointError(path, f"unknown checkpoint suffix {path.suffix!r} (expected "
                                f".safetensors, {', '.join(TORCH_SUFFIXES)})")


def _load_directory(directory: Path) -> LazyState:
    if (directory / "model.safetensors.index.json").is_file():
        return _load_index(directory / "model.safetensors.index.json", SafetensorsState, True)
    if (directory / "model.safetensors").is_file():
        return SafetensorsState(directory / "model.safetensors")
    if (directory / "pytorch_model.bin.index.json").is_file():
        return _load_index(directory / "pytorch_model.bin.index.json", TorchFileState, False)
    if (directory / "pytorch_model.bin").is_file():
        return TorchFileState(directory / "pytorch_model.bin")
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
    return ShardedState(list(shards.values()), name=str(index_path.parent), sort_keys=sort_keys)


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
               dtype: torch.dtype | None = None,
               metadata: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``state`` as safetensors; return the files written (shards, then the index).

    ``path`` ending in ``.safetensors`` is one file; otherwise a directory receiving
    ``model.safetensors`` or, when the data exceeds ``max_shard_size`` (bytes of tensor
    data per shard), ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.
    ``dtype`` casts floating tensors only. Each file is written atomically; tensors are read
    one shard at a time. Saving into a directory removes stale ``model*.safetensors`` files
    and index left by an earlier save there.
    """
    if not isinstance(state, LazyState):
        if not isinstance(state, (Mapping, torch.nn.Module)):
            raise ParameterError(f"cannot save a {type(state).__name__}; expected a mapping of tensors")
        state = load_state(state)
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ParameterError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    file_metadata = {"format": "pt"}
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ParameterError("metadata must be a dict of str -> str")
        file_metadata.update(metadata)

    sizes = {key: _saved_nbytes(state, key, dtype) for key in state}
    shards = _plan_shards(list(state), sizes, limit)
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        if len(shards) > 1 or (limit is not None and sum(sizes.values()) > limit):
            raise ParameterError(f"{sum(sizes.values())} bytes of tensors exceed max_shard_size "
                                 f"{limit} for single file {path}; save to a directory to shard")
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_shard(state, list(state), path, dtype, file_metadata)
        return [path]

    if path.exists() and not path.is_dir():
        raise ParameterError(f"{path} exists and is not a directory (use a .safetensors suffix "
                             "to write a single file)")
    path.mkdir(parents=True, exist_ok=True)
    if len(shards) <= 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    written = []
    for keys, name in zip(shards or [[]], names):
        _write_shard(state, keys, path / name, dtype, file_metadata)
        written.append(path / name)
    if len(names) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())},
                 "weight_map": {key: name for keys, name in zip(shards, names) for key in keys}}
        index_path = path / "model.safetensors.index.json"
        write_atomically(index_path, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n"))
        written.append(index_path)
    for stale in path.iterdir():
        if _OWN_WEIGHT_FILE.fullmatch(stale.name) and stale not in written:
            stale.unlink()
    return written


def _saved_nbytes(state: LazyState, key: str, dtype: torch.dtype | None) -> int:
    stored = state.dtype_of(key)
    itemsize = (dtype if dtype is not None and stored.is_floating_point else stored).itemsize
    return math.prod(state.shape_of(key)) * itemsize


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
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for key in keys:
        tensor = state[key].detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        storage = tensor.untyped_storage()
        shares = storage.data_ptr() in seen_storages or storage.nbytes() != tensor.nbytes
        tensor = tensor.clone(memory_format=torch.contiguous_format) if shares else tensor.contiguous()
        if tensor.numel():
            seen_storages.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    write_atomically(target, lambda tmp: write_safetensors(tensors, tmp, metadata))


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_SAFETENSORS_RANK = [torch.bool, torch.uint8, torch.int8, torch.float8_e5m2, torch.float8_e4m3fn, torch.int16,
                     torch.float16, torch.bfloat16, torch.int32, torch.float32, torch.float64, torch.int64]


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write contiguous CPU `tensors` as a safetensors file whose bytes depend only on the input.

    The layout is the one ``safetensors.torch.save_file`` writes (tensors ordered by dtype as
    safetensors ranks them, highest first, then by name; header padded with spaces to 8
    bytes), except that the
    metadata entries are sorted by key: safetensors keeps them in a hash map, so with more
    than one entry its byte order changes from process to process.
    """
    for key, tensor in tensors.items():
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise ParameterError(f"tensor {key!r} has dtype {tensor.dtype}, which safetensors cannot store")
    order = sorted(tensors, key=lambda k: (-_SAFETENSORS_RANK.index(tensors[k].dtype), k))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    offset = 0
    for key in order:
        tensor = tensors[key]
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for key in order:
            tensor = tensors[key]
            if tensor.numel():
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Write via ``write(temporary path)`` in the same directory, fsync, then rename over
    ``target``; on failure the temporary file is removed and ``target`` is untouched."""
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def write_text_atomically(target: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `target` by :func:`write_atomically`."""
    write_atomically(Path(target), lambda tmp: tmp.write_text(text, encoding="utf-8"))
