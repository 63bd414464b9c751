"""Reading the weights of a pickled whole module (``torch.save(model)``) without running its code.

A checkpoint saved as a whole module (task_vectors' and FREE-Merging's released
``ImageEncoder``/``ClassificationHead`` files) names its classes in the pickle; loading it
with ``torch.load(weights_only=False)`` imports and runs them, and anything else the file
names (``os.system`` included). :class:`RestrictedUnpickler` imports and calls nothing of
the file's choosing: it allows only plain containers, dtypes and torch's tensor-rebuild
steps (replaced by its own, which only record a tensor's storage, offset, shape and
stride), and turns every other global into an :class:`InertRecord` that stores the
arguments and state it receives and never calls the real class. The module tree is then
walked as ``module.state_dict()`` would walk it (parameters, persistent buffers, child
modules, dotted names), so a task_vectors checkpoint gives names such as
``model.visual.transformer.resblocks.0.attn.in_proj_weight``.

Formats: the zip format of ``torch.save`` (torch >= 1.6) and the legacy stream format
(``_use_new_zipfile_serialization=False``); the pre-0.4 tar format and TorchScript archives
are refused with a clear error. Tensor data is read lazily: on :meth:`PickledCheckpoint.read`,
one tensor at a time by seek + read of just the bytes it spans (no memory map).
Quantized, sparse, meta and subclass-only tensors are not supported (an error names the key);
``get_extra_state`` and state-dict hooks are code, so they are not run.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError

__all__ = ["InertRecord", "RestrictedUnpickler", "StorageRef", "TensorRef", "PickledCheckpoint",
           "open_pickled", "restricted_load", "foreign_globals", "refusal_reason", "torch_error_text", "strip_ansi",
           "TORCH_WRAPPER_KEYS"]

TORCH_WRAPPER_KEYS = ("state_dict", "model_state_dict")
"""Keys of a checkpoint dict whose value is the state dict (or module); sibling entries are ignored."""

MAX_KEYS = 1_000_000
"""Most names (and module visits) a module tree may give: a guard against a crafted graph that
shares modules exponentially."""

MAX_DEPTH = 256
"""Deepest module nesting followed."""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
_HARMLESS_TAGS = {("torch", "Tensor"), ("torch.nn.parameter", "Parameter"), ("torch._tensor", "Tensor")}
"""Globals torch's own weights-only loader allows that only tag a type here (kept inert)."""

_SUSPICIOUS_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
                       "ctypes", "pickle", "_pickle", "marshal", "code", "webbrowser", "commands", "multiprocessing"}
_SUSPICIOUS_BUILTINS = {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals",
                        "locals", "vars", "input", "breakpoint"}
"""What no model checkpoint needs: functions that run commands or code, or reach files and modules."""


def strip_ansi(text: str) -> str:
    """`text` without terminal escape sequences (colour codes such as ``\\x1b[1m``)."""
    return _ANSI.sub("", text)


class _RecordType(type):
    def __repr__(cls) -> str:
        return f"<inert record class {cls.module}.{cls.qualname}>"


class InertRecord(metaclass=_RecordType):
    """Stands in for a global the restricted unpickler does not allow; the real one is never
    imported or called. ``module``/``qualname`` name it; ``args``/``kwargs`` hold what a call
    or ``__new__`` received, ``state`` what ``__setstate__`` (pickle's BUILD) received."""

    module: str = ""
    qualname: str = ""

    def __new__(cls, *args, **kwargs):
        record = object.__new__(cls)
        record.args, record.kwargs, record.state = args, kwargs, None
        return record

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    @classmethod
    def global_name(cls) -> str:
        return f"{cls.module}.{cls.qualname}"

    def describe(self) -> str:
        """``module.name(...)``: what the file asked to be built, without its arguments' values."""
        return f"{self.global_name()}({', '.join(type(a).__name__ for a in self.args)})"

    def is_module(self) -> bool:
        """Whether this looks like a pickled ``nn.Module`` (its state has ``_parameters`` and ``_modules``)."""
        return (isinstance(self.state, Mapping) and isinstance(self.state.get("_parameters"), Mapping)
                and isinstance(self.state.get("_modules"), Mapping))

    def __repr__(self) -> str:
        return f"<inert record of {self.describe()}>"


@dataclass(frozen=True)
class StorageRef:
    """One storage record of the file: its key, element dtype, size in bytes, and byte offset
    into the record (non-zero only for views in the legacy format)."""

    key: str
    dtype: torch.dtype
    nbytes: int
    byte_offset: int = 0

    def __setstate__(self, state):
        raise ValueError("the pickle tries to give a storage record a state")


@dataclass(frozen=True)
class TensorRef:
    """A tensor as the pickle describes it: a view (offset, shape, stride in elements) of a storage."""

    storage: StorageRef
    dtype: torch.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def span(self) -> int:
        """Elements of the storage the view reaches, from `offset` (0 for an empty tensor)."""
        if math.prod(self.shape) == 0:
            return 0
        return 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __setstate__(self, state):
        raise ValueError("the pickle tries to give a tensor record a state")

    def identity(self) -> tuple:
        """Equal for two names that are one tensor in the file (tied weights)."""
        return (self.storage.key, self.storage.byte_offset, self.dtype, self.offset, self.shape, self.stride)


class _StorageType:
    """Tag for a storage class named in the pickle (never a real storage class: it cannot allocate)."""

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype

    def __call__(self, *args, **kwargs):
        raise ValueError(f"the pickle calls storage type {self.name} directly, which a checkpoint never does")

    def __setstate__(self, state):
        raise ValueError(f"the pickle tries to give storage type {self.name} a state")


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError(f"tensor {what} {value!r} is not a tuple of non-negative integers")
    return tuple(value)


def _tensor_ref(storage, storage_offset, size, stride, dtype=None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise ValueError(f"a tensor's storage is a {type(storage).__name__}, not a storage record of the file")
    if type(storage_offset) is not int or storage_offset < 0:
        raise ValueError(f"tensor storage offset {storage_offset!r} is not a non-negative integer")
    dtype = storage.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"tensor dtype {dtype!r} is not a torch dtype")
    shape, strides = _ints(size, "shape"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise ValueError(f"tensor shape {shape} and stride {strides} differ in length")
    ref = TensorRef(storage, dtype, storage_offset, shape, strides)
    if ref.span and (ref.offset + ref.span) * dtype.itemsize > storage.nbytes:
        raise ValueError(f"tensor of shape {shape} (offset {storage_offset}, stride {strides}) reaches past "
                         f"its storage {storage.key!r} of {storage.nbytes} bytes")
    return ref


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_ref(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _tensor_ref(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    return _tensor_ref(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, TensorRef):
        raise ValueError(f"a parameter's data is a {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not (func in _REBUILDS.values() or (isinstance(func, type) and issubclass(func, InertRecord))):
        raise ValueError(f"a tensor subclass is rebuilt with {func!r}, which is not a tensor rebuild step")
    return func(*args)


def _encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol 2 uses it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("the pickle calls _codecs.encode other than for bytes")
    return text.encode("latin-1")


def _bytearray(data=b"", encoding=None):
    """``bytearray`` as pickle uses it: from bytes, or from a str with the latin-1 codec."""
    if isinstance(data, str) and encoding in ("latin1", "latin-1"):
        return bytearray(data, "latin-1")
    if not isinstance(data, bytes) or encoding is not None:
        raise ValueError("the pickle calls bytearray other than with bytes")
    return bytearray(data)


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 objects): only for inert records."""
    if not (isinstance(cls, type) and issubclass(cls, InertRecord)):
        raise ValueError(f"copyreg._reconstructor is asked to build {cls!r}")
    return cls(base, state)


class _Step:
    """A function the unpickler hands to the pickle in place of torch's or Python's own;
    pickle's BUILD opcode cannot give it attributes (no ``__dict__``)."""

    __slots__ = ("name", "function")

    def __init__(self, name: str, function: Callable):
        self.name, self.function = name, function

    def __call__(self, *args):
        return self.function(*args)

    def __setstate__(self, state):
        raise ValueError(f"the pickle tries to give {self.name} a state")

    def __repr__(self) -> str:
        return f"<safe {self.name}>"


def _steps(functions: Mapping[tuple[str, str], Callable]) -> dict[tuple[str, str], _Step]:
    return {key: _Step(".".join(key), function) for key, function in functions.items()}


_REBUILDS = _steps({
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
})
_ALLOWED = {
    **_REBUILDS,
    **_steps({("builtins", "bytearray"): _bytearray, ("_codecs", "encode"): _encode,
              ("copyreg", "_reconstructor"): _reconstructor}),
    # built-in types: immutable, and harmless to call with any arguments the pickle can build
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
    ("torch", "Size"): torch.Size, ("torch", "device"): torch.device,
}
_RENAMED_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles without importing or calling anything the file chooses.

    `storage` maps a persistent id (``('storage', type, key, location, numel[, view])``) to a
    :class:`StorageRef`. ``foreign`` (`named` if given) lists, in order of first use, the
    globals the file names that became :class:`InertRecord` classes (``module.name``).
    """

    def __init__(self, file, storage: Callable[[tuple], object], named: list[str] | None = None):
        super().__init__(file, encoding="utf-8")
        self._storage = storage
        self._classes: dict[tuple[str, str], type] = {}
        self.foreign: list[str] = [] if named is None else named

    def find_class(self, module: str, name: str):
        module = _RENAMED_MODULES.get(module, module)
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if key not in self._classes:
            self._classes[key] = type(name.rpartition(".")[2] or "Record", (InertRecord,),
                                      {"module": module, "qualname": name})
            if key not in _HARMLESS_TAGS:
                self.foreign.append(f"{module}.{name}")
        return self._classes[key]

    def persistent_load(self, pid):
        return self._storage(pid)


def _decode(value):
    return value.decode("ascii") if isinstance(value, bytes) else value


def _storage_ref(pid, key, storage_type, numel) -> StorageRef:
    if not isinstance(storage_type, _StorageType):
        raise ValueError(f"persistent id {_short(pid)} names storage type {storage_type!r}, not a torch storage")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise ValueError(f"malformed storage persistent id {_short(pid)}")
    return StorageRef(key, storage_type.dtype, numel * storage_type.dtype.itemsize)


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ----------------------------------------------------------------------------- file formats
class _ZipStorages:
    """Storage records of a ``torch.save`` zip: ``<archive>/data/<key>``, read by offset."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str):
        self.path, self.prefix = path, prefix
        self.records: dict[str, StorageRef] = {}
        self._infos = {info.filename: info for info in archive.infolist()}
        self._starts: dict[str, int] = {}
        order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip() if prefix + "byteorder" in self._infos else "little"
        if order not in ("little", "big"):
            raise CheckpointError(path, f"unknown byte order {order!r} in {prefix}byteorder")
        self.big_endian = order == "big"

    def load(self, pid) -> StorageRef:
        if not isinstance(pid, tuple) or len(pid) != 5 or _decode(pid[0]) != "storage":
            raise ValueError(f"unexpected persistent id {_short(pid)} (a torch checkpoint stores only storages)")
        _, storage_type, key, _location, numel = pid
        ref = _storage_ref(pid, _decode(key), storage_type, numel)
        if ref.key in self.records:
            return self.records[ref.key]
        info = self._infos.get(f"{self.prefix}data/{ref.key}")
        if info is None:
            raise ValueError(f"the pickle names storage {ref.key!r}, which the archive does not hold")
        if info.file_size < ref.nbytes:
            raise ValueError(f"storage {ref.key!r} needs {ref.nbytes} bytes but its record holds {info.file_size}")
        self.records[ref.key] = ref
        return ref

    def read(self, key: str, begin: int, nbytes: int) -> bytearray:
        info = self._infos[f"{self.prefix}data/{key}"]
        with open(self.path, "rb") as handle:
            if info.compress_type != zipfile.ZIP_STORED:
                with zipfile.ZipFile(handle) as archive:
                    return bytearray(archive.read(info)[begin:begin + nbytes])
            if key not in self._starts:
                handle.seek(info.header_offset)
                local = handle.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise CheckpointError(self.path, f"zip record {info.filename} has no local header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                self._starts[key] = info.header_offset + 30 + name_len + extra_len
            handle.seek(self._starts[key] + begin)
            return _read_exactly(handle, nbytes, self.path, key)


class _LegacyStorages:
    """Storages of the legacy stream format: after the pickles, each one as an int64 element
    count followed by its bytes, in the order of the storage-key list."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, StorageRef] = {}
        self.roots: dict[str, StorageRef] = {}
        self._starts: dict[str, int] = {}

    def load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise ValueError(f"unexpected persistent id {_short(pid)}")
        kind = _decode(pid[0])
        if kind == "module" and len(pid) == 4:
            return pid[1]  # the module's class (an inert record class); its saved source is ignored
        if kind != "storage" or len(pid) != 6:
            raise ValueError(f"unexpected persistent id {_short(pid)}")
        _, storage_type, root_key, _location, numel, view = pid
        root = _storage_ref(pid, _decode(root_key), storage_type, numel)
        root = self.roots.setdefault(root.key, root)
        if view is None:
            return root
        if (not isinstance(view, tuple) or len(view) != 3 or not isinstance(_decode(view[0]), str)
                or not all(type(v) is int and v >= 0 for v in view[1:])):
            raise ValueError(f"malformed storage view {_short(view)}")
        view_key, offset, size = _decode(view[0]), view[1] * root.dtype.itemsize, view[2] * root.dtype.itemsize
        if offset + size > root.nbytes:
            raise ValueError(f"storage view {view_key!r} reaches past its storage {root.key!r}")
        return self.records.setdefault(view_key, StorageRef(root.key, root.dtype, size, offset))

    def locate(self, handle, keys) -> None:
        """Find each storage's bytes after the key list; `handle` stands just after it."""
        if not isinstance(keys, list) or not all(isinstance(_decode(k), str) for k in keys):
            raise CheckpointError(self.path, "malformed legacy checkpoint: the storage key list is not a list of str")
        size = os.fstat(handle.fileno()).st_size
        position = handle.tell()
        for key in map(_decode, keys):
            root = self.roots.get(key)
            if root is None:
                raise CheckpointError(self.path, f"legacy storage {key!r} is listed but no tensor uses it")
            header = handle.read(8)
            if len(header) < 8:
                raise CheckpointError(self.path, f"file is truncated at storage {key!r}")
            (count,) = struct.unpack("<q", header)
            if count * root.dtype.itemsize != root.nbytes:
                raise CheckpointError(self.path, f"legacy storage {key!r} holds {count} elements, "
                                                 f"the pickle says {root.nbytes // root.dtype.itemsize}")
            self._starts[key] = position + 8
            position += 8 + root.nbytes
            if position > size:
                raise CheckpointError(self.path, f"file is truncated: storage {key!r} ends at byte {position} "
                                                 f"but the file has {size}")
            handle.seek(position)
        missing = sorted(set(self.roots) - set(self._starts))
        if missing:
            raise CheckpointError(self.path, f"legacy storages {missing[:5]} are used but not stored")

    def read(self, key: str, begin: int, nbytes: int) -> bytearray:
        with open(self.path, "rb") as handle:
            handle.seek(self._starts[key] + begin)
            return _read_exactly(handle, nbytes, self.path, key)


def _no_storage(pid):
    raise ValueError(f"unexpected persistent id {_short(pid)} in a header pickle")


def _read_exactly(handle, nbytes: int, path: Path, key: str) -> bytearray:
    buffer = bytearray(nbytes)
    got = handle.readinto(buffer)
    if got != nbytes:
        raise CheckpointError(path, f"truncated while reading storage {key!r}: expected {nbytes} bytes, got {got}")
    return buffer


def _unpickle(path: Path, file, storage, named: list[str]) -> object:
    unpickler = RestrictedUnpickler(file, storage, named)
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # malformed or hostile pickle data: nothing of it has run
        raise CheckpointError(path, f"cannot unpickle it safely ({type(exc).__name__}: "
                                    f"{strip_ansi(' '.join(str(exc).split()))[:300]})") from exc


def _open_zip(path: Path, named: list[str]):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if any(n.split("/", 1)[-1].startswith("code/") for n in names) or any(
                n.endswith("/constants.pkl") for n in names):
            raise CheckpointError(path, "is a TorchScript archive (torch.jit.save), not a pickled module; "
                                        "it is not supported")
        if len(pickles) != 1:
            raise CheckpointError(path, "zip file without exactly one <archive>/data.pkl: not a torch.save checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        storages = _ZipStorages(path, archive, prefix)
        with archive.open(pickles[0]) as stream:
            top = _unpickle(path, stream, storages.load, named)
    return top, storages


def _open_legacy(path: Path, named: list[str]):
    storages = _LegacyStorages(path)
    with open(path, "rb") as handle:
        head = handle.read(512)
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise CheckpointError(path, "is a pre-0.4 torch checkpoint (tar format), which is not supported")
        handle.seek(0)
        magic = _unpickle(path, handle, _no_storage, named)
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(path, "is neither a torch zip checkpoint nor a legacy torch file "
                                        "(the legacy magic number is missing)")
        protocol = _unpickle(path, handle, _no_storage, named)
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(path, f"legacy torch protocol {protocol!r} is not supported")
        sys_info = _unpickle(path, handle, _no_storage, named)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError(path, "is a big-endian legacy checkpoint, which is not supported")
        top = _unpickle(path, handle, storages.load, named)
        keys = _unpickle(path, handle, _no_storage, named)
        storages.locate(handle, keys)
    return top, storages


def _open_any(path: Path, named: list[str] | None = None):
    """(top-level object, storages) of a torch file; `named` receives the globals that stayed inert."""
    named = [] if named is None else named
    try:
        if zipfile.is_zipfile(path):
            return _open_zip(path, named)
        return _open_legacy(path, named)
    except OSError as exc:
        raise CheckpointError(path, str(exc)) from exc
    except zipfile.BadZipFile as exc:
        raise CheckpointError(path, f"damaged zip archive ({exc})") from exc


def restricted_load(path: str | os.PathLike) -> object:
    """The file's top-level object as the restricted unpickler rebuilds it: containers,
    :class:`InertRecord` objects for every class or function the file names, and
    :class:`TensorRef` for tensors (no tensor data is read). Nothing of the file runs."""
    return _open_any(Path(path))[0]


# ----------------------------------------------------------------------------- the state dict
def _describe(value) -> str:
    if isinstance(value, InertRecord):
        return f"an inert record of {value.describe()}"
    if isinstance(value, Mapping):
        keys = [str(k) for k in list(value)[:8]]
        return f"a {type(value).__name__} with keys {keys}{' ...' if len(value) > 8 else ''}"
    return f"a {type(value).__name__}"


class _Collector:
    def __init__(self, path: Path):
        self.path = path
        self.tensors: dict[str, TensorRef] = {}
        self.visits = 0

    def add(self, key: str, value, kind: str) -> None:
        if not isinstance(value, TensorRef):
            raise CheckpointError(self.path, f"{kind} {key!r} is {_describe(value)}, not a dense tensor "
                                             "(quantized, sparse, meta and subclass tensors are not supported)")
        if len(self.tensors) >= MAX_KEYS:
            raise CheckpointError(self.path, f"the module tree gives more than {MAX_KEYS} names")
        self.tensors[key] = value

    def module(self, record: InertRecord, prefix: str, ancestry: tuple[int, ...]) -> None:
        """Names as ``nn.Module.state_dict`` gives them: parameters, persistent buffers, children."""
        self.visits += 1
        if len(ancestry) > MAX_DEPTH or self.visits > MAX_KEYS:
            raise CheckpointError(self.path, f"module tree nested deeper than {MAX_DEPTH} or with more than "
                                             f"{MAX_KEYS} modules, at {prefix!r}")
        state = record.state
        for name, value in state["_parameters"].items():
            if value is not None:
                self.add(prefix + str(name), value, "parameter")
        skipped = state.get("_non_persistent_buffers_set") or ()
        if not isinstance(skipped, (set, frozenset, list, tuple)):
            raise CheckpointError(self.path, f"module {prefix or '<top>'!r}: _non_persistent_buffers_set "
                                             f"is {_describe(skipped)}")
        buffers = state.get("_buffers") or {}
        if not isinstance(buffers, Mapping):
            raise CheckpointError(self.path, f"module {prefix or '<top>'!r}: _buffers is {_describe(buffers)}")
        for name, value in buffers.items():
            if value is not None and name not in skipped:
                self.add(prefix + str(name), value, "buffer")
        for name, child in state["_modules"].items():
            if child is None:
                continue
            where = prefix + str(name)
            if not (isinstance(child, InertRecord) and child.is_module()):
                raise CheckpointError(self.path, f"submodule {where!r} is {_describe(child)}, not a module")
            if id(child) in ancestry:
                raise CheckpointError(self.path, f"submodule {where!r} contains itself")
            self.module(child, where + ".", ancestry + (id(child),))

    def top(self, value, where: str = "the file") -> None:
        if isinstance(value, InertRecord) and value.is_module():
            return self.module(value, "", (id(value),))
        if not isinstance(value, Mapping):
            raise CheckpointError(self.path, f"{where} holds {_describe(value)}, neither a module nor a state dict")
        for wrapper in TORCH_WRAPPER_KEYS:
            if wrapper in value and isinstance(value[wrapper], (Mapping, InertRecord)):
                return self.top(value[wrapper], f"its {wrapper!r} entry")
        modules = [k for k, v in value.items() if isinstance(v, InertRecord) and v.is_module()]
        if len(modules) == 1 and not any(isinstance(v, TensorRef) for v in value.values()):
            return self.module(value[modules[0]], "", (id(value[modules[0]]),))
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(self.path, f"{where} holds a state dict key {key!r} that is not a str")
            self.add(key, item, "entry")


class PickledCheckpoint:
    """The tensors of a pickled checkpoint, by state-dict name; data read on :meth:`read`.

    ``tensors`` maps each name to its :class:`TensorRef` (shape, dtype, where it lives),
    known without reading tensor data; ``foreign`` lists the globals the file names that
    stayed inert records; ``bytes_read`` counts bytes of tensor data read so far.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        stat = os.stat(self.path)
        self._stat = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        named: list[str] = []
        top, self._storages = _open_any(self.path, named)
        self.foreign = list(dict.fromkeys(named))
        collector = _Collector(self.path)
        collector.top(top)
        self.tensors: dict[str, TensorRef] = collector.tensors
        self.bytes_read = 0

    def read(self, key: str) -> torch.Tensor:
        """Tensor `key` (CPU, stored dtype, contiguous, a fresh copy)."""
        ref = self.tensors[key]
        if ref.span == 0:
            return torch.empty(ref.shape, dtype=ref.dtype)
        stat = os.stat(self.path)
        if (stat.st_ino, stat.st_size, stat.st_mtime_ns) != self._stat:
            raise CheckpointError(self.path, "file changed on disk since it was opened")
        itemsize = ref.dtype.itemsize
        begin = ref.storage.byte_offset + ref.offset * itemsize
        try:
            buffer = self._storages.read(ref.storage.key, begin, ref.span * itemsize)
        except (OSError, zipfile.BadZipFile, NotImplementedError) as exc:
            raise CheckpointError(self.path, f"cannot read tensor {key!r}: {exc}") from exc
        self.bytes_read += len(buffer)
        flat = torch.frombuffer(buffer, dtype=torch.uint8)
        if getattr(self._storages, "big_endian", False) and itemsize > 1:
            flat = flat.view(-1, itemsize).flip(1).reshape(-1)
        return flat.view(ref.dtype).as_strided(ref.shape, ref.stride).contiguous()

    def shared_groups(self) -> list[tuple[str, ...]]:
        """Groups of names that are one tensor in the file (tied weights), in state-dict order."""
        groups: dict[tuple, list[str]] = {}
        for key, ref in self.tensors.items():
            if ref.span:
                groups.setdefault(ref.identity(), []).append(key)
        return [tuple(keys) for keys in groups.values() if len(keys) > 1]


def open_pickled(path: str | os.PathLike) -> PickledCheckpoint:
    """Open a ``torch.save`` file holding a whole module (or a dict with one) without running its code."""
    return PickledCheckpoint(path)


_TORCH_ADVICE = re.compile("|".join((
    r"Weights only load failed\.", r"This file can still be loaded.*?checkpoint\.", r"\(1\)\s*",
    r"In PyTorch 2\.6.*?trusted source\.", r"\(2\).*?error message\.", r"Please file an issue.*?use case:",
    r"WeightsUnpickler error:", r"Please use `torch\.serialization.*?class/function\.",
    r"Check the documentation of torch\.load.*")), re.S)


def torch_error_text(exc: BaseException, limit: int = 300) -> str:
    """torch's error message in one line, without colour codes, without its advice to load
    with ``weights_only=False`` and without its allowlisting instructions."""
    text = " ".join(strip_ansi(str(exc)).split())
    core = " ".join(_TORCH_ADVICE.sub(" ", text).split()) or text
    return core if len(core) <= limit else core[:limit] + "..."


def foreign_globals(path: str | os.PathLike) -> list[str]:
    """The classes and functions a torch file's pickles name beyond tensors and plain
    containers, found without running any (up to where a damaged or hostile file stops)."""
    named: list[str] = []
    with contextlib.suppress(CheckpointError):
        _open_any(Path(path), named)
    return list(dict.fromkeys(named))


def refusal_reason(foreign: list[str], torch_detail: str) -> str:
    """Why a file naming the globals `foreign` cannot load weights-only, with the way forward.

    Flags globals no model needs (``os.system`` and the like).
    """
    shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
    text = (f"holds pickled Python objects, not a plain state dict: it names {shown}, "
            f"which torch's safe (weights-only) loader refuses ({torch_detail.rstrip('.')}). ")
    suspicious = [name for name in foreign if name.split(".")[0] in _SUSPICIOUS_MODULES
                  or name in {f"builtins.{n}" for n in _SUSPICIOUS_BUILTINS}]
    if suspicious:
        text += f"No model needs {', '.join(suspicious[:4])}: the file may be malicious. "
    return text + ("torch.load(weights_only=False) would run code from the file. To read a pickled module's "
                   "weights without running anything, pass pickled_modules=True to load_state "
                   "(--pickled-modules on the command line), or convert it once: "
                   "freqmerge-viz convert IN OUT.safetensors --pickled-modules")
