"""Evaluate many parameter settings of one architecture on one data set.

The analyses (loss landscapes, generalisation matrices, sweeps) all ask the same question:
"loss and accuracy of these S parameter sets on these inputs". :func:`evaluate_params`
answers it for any ``forward(params, inputs) -> logits`` (any model ``functional_call`` can
run: :func:`module_forward`); :class:`Evaluator` binds a forward to its data. Nothing here
knows a particular architecture: the demo zoo's forward and evaluation service live in
:mod:`freqmerge_viz.zoo.evaluation`.

Parameter sets come as a sequence of mappings ``{name: tensor}`` (lazy states work), or as
one :class:`StackedStates` ``{name: tensor [S, *shape]}`` (a plain dict of stacked tensors is
accepted as shorthand), which analyses build in one tensor op, e.g. a grid
``θ_pre + α·u + β·v`` with :meth:`StackedStates.affine`, computed chunk by chunk.

Modes
-----
``"vmap"``
    ``torch.func.vmap(forward, in_dims=(0, None))`` over chunks of parameter sets: one call
    runs ``chunk`` sets on a data batch at once.
``"loop"``
    one parameter set at a time (read in ranges of at most a quarter of each worker's
    share of the sets, and no more sets than the memory budget holds).
``"auto"``
    vmap, and the loop where vmap cannot run the forward: Python control flow on tensor
    values (``if x.sum() > 0``), ``.item()``/``.tolist()``, operators with dynamic output
    shapes (``nonzero``), in-place writes into tensors that are not batched, reading data
    pointers (``.numpy()``). The fallback warns (:class:`VmapFallbackWarning`, once per
    forward by Python's default filter) and the result says ``mode="loop"``. Also the loop,
    without a warning, when the memory budget leaves one set per chunk: vmap over a single
    set does the loop's work plus the batching overhead (15 to 30% slower on CPU).

Memory budget, chunk and workers
--------------------------------
In vmap mode one call holds ``chunk`` parameter sets and their activations on
``batch`` samples (``batch = min(batch_size, N)``). With ``workers`` threads running calls
at once, each gets ``memory_budget / workers``: the engine takes the largest ``chunk``
(at most ``ceil(S / workers)``) with ``chunk · (parameter bytes of one set + batch ·
activation bytes per sample) <= memory_budget / workers``; ``chunk=`` overrides it.
Activation bytes per sample are the forward's ``activation_bytes`` attribute when it has
one (the zoo's forward sets it from its ViT's size), else :data:`ACTIVATION_FACTOR` times
the bytes of one input sample. The budget defaults to :data:`CPU_BUDGET` on CPU and to
:data:`CUDA_BUDGET_SHARE` of the free memory on a GPU, read at each call.

On CPU, a forward marked ``forward.thread_safe = True`` (the zoo's) has its chunks spread
over ``workers`` threads (default: torch's thread count), each running torch with one
intra-op thread. For a small model this beats splitting every operator over the cores,
which waits at a barrier after each of its many short operators: on the zoo's ViT on 2
cores shared with other jobs, 1.5 to 4 times faster than two intra-op threads, depending
on the other load; it is the engine's main gain on CPU, where vmap itself runs about as
fast per thread as the loop (vmap pays off where per-operator launch costs dominate, as on
GPUs; not measured here). During such a call ``torch.set_num_threads(1)`` is in effect
process-wide and the previous value is restored afterwards. Other forwards, and parameter
sets over :data:`LARGE_SET_BYTES` (a CLIP ViT-B/32 image tower: 350 MB), run one set at a
time with torch's intra-op threads unless ``workers=`` says otherwise (``functional_call`` on
a shared module is not thread safe; a large model's matrix products split well over cores).

Nothing is cached between calls; the only state kept is what the caller holds (a
:class:`StackedStates`, an :class:`Evaluator`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .backend import resolve_device, torch_threads
from .errors import MissingKeysError, ParameterError, ShapeMismatchError, check_choice, check_positive_int

Forward = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]
"""``forward(params, inputs) -> logits [N, C]`` for one parameter set ``{name: tensor}``."""

MODES = ("auto", "vmap", "loop")
CPU_BUDGET = 64 * 2**20
"""Default memory budget of the vmap calls running at once on CPU, in bytes. Small on purpose:
on CPU a working set near the caches runs faster than a large one, and on the zoo's ViT
(2 cores) chunks of more than a few sets were no faster per image."""
CUDA_BUDGET_SHARE = 0.5
"""Default memory budget on a GPU: this share of the device's free memory at call time."""
STACK_LIMIT = 2**30
"""zoo.evaluation.evaluate_on_zoo reads a list of states once into a :class:`StackedStates` (instead of once
per task) when all of it takes at most this many bytes (float32)."""
ACTIVATION_FACTOR = 64
"""Activation bytes per (parameter set, sample) assumed for a forward without an
``activation_bytes`` attribute, as a multiple of one input sample's bytes."""

_VMAP_MESSAGES = ("vmap:", "batching rule", "batched tensor", "doesn't have storage",
                  "does not have storage")


class VmapFallbackWarning(UserWarning):
    """``mode="auto"`` ran a forward one parameter set at a time because vmap could not run it."""


@dataclass(frozen=True)
class EvalResult:
    """Per parameter set: mean cross-entropy ``loss`` (nats) and ``accuracy`` in [0, 1], both
    ``[S]``; ``mode`` is how they were computed (``"vmap"`` or ``"loop"``), ``chunk`` the
    parameter sets per vmap call (``None`` for the loop), ``workers`` the threads used."""

    loss: np.ndarray
    accuracy: np.ndarray
    mode: str
    chunk: int | None = None
    workers: int = 1


# ----------------------------------------------------------------------------- stacked states

class StackedStates(Sequence):
    """S parameter sets of one architecture held key by key: ``{key: tensor [S, *shape]}``.

    A sequence of S states (``stacked[i]`` is ``{key: tensor [*shape]}``), so it goes
    wherever a list of states goes, plus :meth:`chunk`, which hands the engine sets
    ``start:stop`` of every key at once. Build it from stacked tensors
    (``StackedStates({key: t})``), from a list of states (:meth:`from_states`), or lazily as
    an affine family ``origin + coefficients @ directions`` (:meth:`affine`), whose tensors
    are computed per chunk and never all held at once.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        if not isinstance(tensors, Mapping) or not tensors:
            raise ParameterError("StackedStates needs a non-empty mapping {key: tensor [S, *shape]}")
        sizes = {}
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                raise ParameterError(f"stacked entry {key!r} must be a tensor [S, *shape], "
                                     f"got {type(value).__name__} of shape {tuple(getattr(value, 'shape', ()))}")
            sizes[key] = int(value.shape[0])
        if len(set(sizes.values())) > 1:
            shown = ", ".join(f"{k}: {s}" for k, s in list(sizes.items())[:6])
            raise ParameterError("stacked entries must share their leading dimension S (a single state "
                                 f"belongs in a list: [state]); got {shown}")
        stored = dict(tensors)
        self._init(next(iter(sizes.values())), {k: tuple(v.shape[1:]) for k, v in stored.items()},
                   lambda key, lo, hi: stored[key][lo:hi])

    def _init(self, size: int, shapes: dict[str, tuple[int, ...]],
              take: Callable[[str, int, int], torch.Tensor]) -> None:
        if size < 1:
            raise ParameterError(f"need at least one parameter set, got S = {size}")
        self._size, self._shapes, self._take = size, shapes, take

    @classmethod
    def _lazy(cls, size: int, shapes: dict[str, tuple[int, ...]],
              take: Callable[[str, int, int], torch.Tensor]) -> StackedStates:
        out = cls.__new__(cls)
        out._init(size, shapes, take)
        return out

    @classmethod
    def from_states(cls, states: Sequence[Mapping[str, torch.Tensor]],
                    keys: Sequence[str] | None = None) -> StackedStates:
        """`states` stacked key by key (float32, CPU); each state's entries are read once."""
        states = list(states)
        if not states:
            raise ParameterError("need at least one parameter set to stack")
        keys = list(states[0].keys()) if keys is None else list(keys)
        check_states(states, keys)
        return cls({k: torch.stack([_as_float(s[k], "cpu") for s in states]) for k in keys})

    @classmethod
    def affine(cls, origin: Mapping[str, torch.Tensor], directions: Sequence[Mapping[str, torch.Tensor]],
               coefficients, keys: Sequence[str] | None = None) -> StackedStates:
        """Sets ``origin + Σ_d coefficients[s, d] · directions[d]``, key by key, for s < S.

        `coefficients` is ``[S, D]`` (D = ``len(directions)``); a direction that lacks a
        key leaves it at `origin`. `keys` defaults to the origin's. Entries are float32 and
        computed when a chunk is asked for (the D terms added in order), never all at once.
        """
        keys = list(origin.keys()) if keys is None else list(keys)
        check_states([origin], keys, where="the origin")
        coefficients = torch.as_tensor(np.asarray(coefficients, dtype=np.float64))
        if coefficients.ndim != 2 or coefficients.shape[1] != len(directions):
            raise ParameterError(f"coefficients must be [S, D] with D = {len(directions)} directions, "
                                 f"got shape {tuple(coefficients.shape)}")
        base = {k: _as_float(origin[k], "cpu") for k in keys}
        moving: dict[str, list[torch.Tensor | None]] = {}
        for key in keys:
            if not any(key in d for d in directions):
                continue
            moving[key] = []
            for i, direction in enumerate(directions):
                value = _as_float(direction[key], "cpu") if key in direction else None
                if value is not None and tuple(value.shape) != tuple(base[key].shape):
                    raise ShapeMismatchError(key, value.shape, base[key].shape, f"direction {i}", "the origin")
                moving[key].append(value)
        weights = coefficients.to(torch.float32)

        def take(key: str, lo: int, hi: int) -> torch.Tensor:
            origin_entry = base[key]
            if key not in moving:
                return origin_entry.expand(hi - lo, *origin_entry.shape)
            shape = (hi - lo,) + (1,) * origin_entry.ndim
            out = origin_entry.expand(hi - lo, *origin_entry.shape).clone()
            for d, direction in enumerate(moving[key]):
                if direction is not None:
                    out.addcmul_(weights[lo:hi, d].view(shape), direction)
            return out

        return cls._lazy(int(coefficients.shape[0]), {k: tuple(base[k].shape) for k in keys}, take)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index):
        if isinstance(index, slice):
            raise ParameterError("use StackedStates.chunk(start, stop) for several sets")
        i = int(index)
        if i < 0:
            i += self._size
        if not 0 <= i < self._size:
            raise IndexError(f"parameter set {index} out of range for S = {self._size}")
        return {k: v[0] for k, v in self.chunk(i, i + 1).items()}

    def keys(self) -> list[str]:
        """Parameter names, in order."""
        return list(self._shapes)

    def shape_of(self, key: str) -> tuple[int, ...]:
        """Shape of one set's entry `key` (without the leading S)."""
        if key not in self._shapes:
            raise MissingKeysError([key], where="the stacked states")
        return self._shapes[key]

    def chunk(self, start: int, stop: int, keys: Sequence[str] | None = None,
              device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """``{key: tensor [stop - start, *shape]}`` of sets ``start:stop``, float32 on `device`."""
        keys = self.keys() if keys is None else list(keys)
        missing = [k for k in keys if k not in self._shapes]
        if missing:
            raise MissingKeysError(missing, where="the stacked states")
        lo, hi = max(0, int(start)), min(self._size, int(stop))
        if hi <= lo:
            raise ParameterError(f"empty chunk {start}:{stop} of {self._size} parameter sets")
        target = torch.device("cpu") if device is None else torch.device(device)
        return {k: _as_float(self._take(k, lo, hi), target) for k in keys}

    def __repr__(self) -> str:
        return f"StackedStates(S={self._size}, {len(self._shapes)} keys)"


def as_stacked(states) -> StackedStates | None:
    """`states` as :class:`StackedStates` when it is one or a mapping of stacked tensors; ``None``
    for a sequence of separate states."""
    if isinstance(states, StackedStates):
        return states
    if isinstance(states, Mapping):
        return StackedStates(states)
    return None


def check_states(states: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str],
                 where: str | None = None) -> None:
    """:class:`MissingKeysError` naming the first state that lacks some of `keys`."""
    for i, state in enumerate(states):
        missing = [k for k in keys if k not in state]
        if missing:
            raise MissingKeysError(missing, where=where or getattr(state, "name", None) or f"parameter set {i}")


def _as_float(tensor: torch.Tensor, device) -> torch.Tensor:
    return tensor.detach().to(device=device, dtype=torch.float32)


# ----------------------------------------------------------------------------- evaluation

def memory_budget_bytes(device: torch.device, memory_budget: int | None = None) -> int:
    """`memory_budget` if given, else the default for `device` (see the module docstring)."""
    if memory_budget is not None:
        return check_positive_int("memory_budget", memory_budget)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free * CUDA_BUDGET_SHARE))
    return CPU_BUDGET


def auto_chunk(n_sets: int, param_bytes: int, batch: int, activation_bytes: int, budget: int) -> int:
    """Largest chunk ``c <= n_sets`` with ``c · (param_bytes + batch · activation_bytes) <= budget`` (>= 1)."""
    per_set = param_bytes + batch * activation_bytes
    return max(1, min(n_sets, budget // max(per_set, 1)))


def _activation_bytes(forward: Forward, inputs: torch.Tensor) -> int:
    given = getattr(forward, "activation_bytes", None)
    if given is not None:
        return int(given)
    per_sample = inputs[0].numel() * max(inputs.element_size(), 4)
    return ACTIVATION_FACTOR * per_sample


def _is_vmap_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in _VMAP_MESSAGES)


IGNORE_INDEX = -100
"""A label that is not scored (padding in token labels ``[N, T]``), as in ``F.cross_entropy``."""


def _checked_logits(logits, sets: int | None, labels: torch.Tensor, where: str) -> torch.Tensor:
    expected = tuple(labels.shape) if sets is None else (sets, *labels.shape)
    if not isinstance(logits, torch.Tensor) or logits.ndim != len(expected) + 1 \
            or tuple(logits.shape[:-1]) != expected:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        wanted = "[N, classes]" if labels.ndim == 1 else "[N, T, vocabulary]"
        raise ParameterError(f"forward must return logits {wanted}; {where} gave {shape} "
                             f"for labels of shape {tuple(labels.shape)}")
    return logits


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and hits per parameter set of ``logits [..., *labels.shape, C]``
    (labels :data:`IGNORE_INDEX` count neither)."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    target = labels.reshape(-1)
    repeats = flat.shape[0] // target.shape[0]
    loss = F.cross_entropy(flat, target.repeat(repeats), reduction="none",
                           ignore_index=IGNORE_INDEX).view(*logits.shape[:-1])
    hits = (logits.argmax(-1) == labels).to(torch.float64)
    dims = tuple(range(logits.ndim - 1 - labels.ndim, logits.ndim - 1))
    return loss.to(torch.float64).sum(dims), hits.sum(dims)


def _param_bytes(states, stacked: StackedStates | None, keys: Sequence[str]) -> int:
    """float32 bytes of one parameter set over `keys`, from shapes where the state knows them."""
    first = stacked if stacked is not None else states[0]
    shape_of = getattr(first, "shape_of", None)
    return 4 * sum(math.prod(shape_of(k)) if shape_of else first[k].numel() for k in keys)


def _range_params(states, stacked, keys, lo: int, hi: int, target) -> dict[str, torch.Tensor]:
    """``{key: tensor [hi - lo, *shape]}`` of sets ``lo:hi``, float32 on `target`."""
    if stacked is not None:
        return stacked.chunk(lo, hi, keys, target)
    return {k: torch.stack([_as_float(states[i][k], target) for i in range(lo, hi)]) for k in keys}


def _score_range(forward, batched, params, inputs, labels, batch_size: int, lo: int, hi: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Summed loss and hits of sets ``lo:hi`` (``params`` stacked), by vmap when `batched` is given."""
    losses, hits = np.zeros(hi - lo), np.zeros(hi - lo)
    for start in range(0, len(labels), batch_size):
        x, y = inputs[start:start + batch_size], labels[start:start + batch_size]
        if batched is not None:
            logits = _checked_logits(batched(params, x), hi - lo, y, f"parameter sets {lo}:{hi}")
            loss, hit = _scores(logits, y)
            losses += loss.cpu().numpy()
            hits += hit.cpu().numpy()
            continue
        for i in range(hi - lo):
            one = {k: v[i] for k, v in params.items()}
            logits = _checked_logits(forward(one, x), None, y, f"parameter set {lo + i}")
            loss, hit = _scores(logits, y)
            losses[i] += float(loss)
            hits[i] += float(hit)
    return losses, hits


def _run(forward, states, stacked, inputs, labels, keys, batch_size, target, *, vmapped: bool, chunk: int,
         workers: int) -> EvalResult:
    """Every set scored in ranges of `chunk` sets, spread over `workers` threads."""
    count = len(stacked) if stacked is not None else len(states)
    batched = torch.func.vmap(forward, in_dims=(0, None)) if vmapped else None
    ranges = [(lo, min(count, lo + chunk)) for lo in range(0, count, chunk)]

    reading = threading.Lock()

    def work(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = bounds
        with torch.no_grad():
            with reading:
                params = _range_params(states, stacked, keys, lo, hi, target)
            return _score_range(forward, batched, params, inputs, labels, batch_size, lo, hi)

    if workers > 1 and len(ranges) > 1:
        with torch_threads(1):
            pool = ThreadPoolExecutor(min(workers, len(ranges)), thread_name_prefix="freqmerge-eval")
            try:
                results = list(pool.map(work, ranges))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    else:
        results = [work(bounds) for bounds in ranges]
    n = max(1, int((labels != IGNORE_INDEX).sum()))
    losses = np.concatenate([r[0] for r in results]) / n
    accuracy = np.concatenate([r[1] for r in results]) / n
    return EvalResult(losses, accuracy, "vmap" if vmapped else "loop", chunk if vmapped else None,
                      min(workers, len(ranges)))


def _forward_name(forward) -> str:
    return getattr(forward, "__qualname__", None) or type(forward).__name__


@torch.no_grad()
def evaluate_params(forward: Forward, states, inputs: torch.Tensor, labels: torch.Tensor,
                    keys: Sequence[str] | None = None, *, mode: str = "auto", chunk: int | None = None,
                    batch_size: int = 1000, device: torch.device | str | None = None,
                    memory_budget: int | None = None, workers: int | None = None) -> EvalResult:
    """Loss and accuracy of every parameter set in `states` on ``(inputs [N, ...], labels [N])``.

    Token labels ``[N, T]`` (a language model's next tokens, :data:`IGNORE_INDEX` for padding)
    take logits ``[N, T, vocabulary]``; loss and accuracy are then means over the scored tokens.

    `states`: a sequence of S mappings ``{key: tensor}``, or one :class:`StackedStates` /
    mapping ``{key: tensor [S, *shape]}``. `keys` are the parameters `forward` needs (default:
    all of the first state's); each is read as float32 on `device` (default: CUDA if present).
    Floating `inputs` are cast to float32. `batch_size` samples go through per forward call;
    `chunk` parameter sets per vmap call (default: from `memory_budget` in bytes) and
    `workers` threads (default: torch's thread count on CPU, 1 on a GPU); see the module
    docstring. Results are per set, in order; ``mode`` as in the module docstring.
    """
    check_choice("mode", mode, MODES)
    check_positive_int("batch_size", batch_size)
    if chunk is not None:
        check_positive_int("chunk", chunk)
    stacked = as_stacked(states)
    if stacked is None:
        states = list(states)
        if not states:
            raise ParameterError("need at least one parameter set to evaluate")
        keys = list(states[0].keys()) if keys is None else list(keys)
        check_states(states, keys)
    else:
        keys = stacked.keys() if keys is None else list(keys)
        missing = [k for k in keys if k not in stacked.keys()]
        if missing:
            raise MissingKeysError(missing, where="the stacked states")
    if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ParameterError("inputs and labels must be tensors")
    if inputs.ndim == 0 or labels.ndim not in (1, 2) or len(inputs) != len(labels) or len(labels) == 0:
        raise ParameterError(f"need inputs [N, ...] and labels [N] (or token labels [N, T]) with N >= 1; "
                             f"got {tuple(inputs.shape)} "
                             f"and {tuple(labels.shape)}")
    target = resolve_device(device)
    param_bytes = _param_bytes(states, stacked, keys)
    workers = (default_workers(target, forward, param_bytes) if workers is None
               else check_positive_int("workers", workers))
    inputs = inputs.to(target, torch.float32) if inputs.is_floating_point() else inputs.to(target)
    labels = labels.to(target, torch.long)
    common = (forward, states, stacked, inputs, labels, keys, batch_size, target)
    count = len(stacked) if stacked is not None else len(states)
    budget = memory_budget_bytes(target, memory_budget) // workers
    loop_chunk = max(1, min(-(-count // (4 * workers)), budget // max(param_bytes, 1)))
    if mode == "loop":
        return _run(*common, vmapped=False, chunk=loop_chunk, workers=workers)
    size = chunk or min(-(-count // workers), auto_chunk(count, param_bytes, min(batch_size, len(labels)),
                                                          _activation_bytes(forward, inputs), budget))
    if mode == "auto" and size == 1:
        return _run(*common, vmapped=False, chunk=loop_chunk, workers=workers)
    try:
        return _run(*common, vmapped=True, chunk=size, workers=workers)
    except RuntimeError as exc:
        if not _is_vmap_failure(exc):
            try:
                _probe(forward, states, stacked, inputs, labels, keys, target)
            except Exception:
                raise exc from None
        if mode == "vmap":
            raise ParameterError(f"mode='vmap' cannot run {_forward_name(forward)} ({exc}); "
                                 "use mode='auto' or mode='loop'") from exc
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warnings.warn(f"vmap cannot run {_forward_name(forward)} ({first_line}); evaluating one "
                      "parameter set at a time", VmapFallbackWarning, stacklevel=3)
        return _run(*common, vmapped=False, chunk=loop_chunk, workers=workers)


LARGE_SET_BYTES = 64 * 2**20
"""Parameter sets larger than this (float32 bytes) are scored one at a time with torch's own
intra-op threads rather than one set per thread: their matrix products split well over the
cores, and a few sets over a few threads leave threads idle (5 ViT-B/32 sets on 2 threads:
one thread idle for a third of the time)."""


def default_workers(device: torch.device, forward: Forward | None = None, param_bytes: int = 0) -> int:
    """Threads the engine spreads chunks over by default: torch's intra-op thread count on CPU
    for a forward marked ``thread_safe`` whose parameter sets take at most :data:`LARGE_SET_BYTES`,
    else 1 (a GPU, a forward that may not be thread safe, or a large model)."""
    if device.type != "cpu" or not getattr(forward, "thread_safe", False) or param_bytes > LARGE_SET_BYTES:
        return 1
    return max(1, torch.get_num_threads())


def _probe(forward, states, stacked, inputs, labels, keys, target) -> None:
    """One un-batched forward call on the first set and sample (raises what the forward raises)."""
    if stacked is not None:
        params = {k: v[0] for k, v in stacked.chunk(0, 1, keys, target).items()}
    else:
        params = {k: _as_float(states[0][k], target) for k in keys}
    _checked_logits(forward(params, inputs[:1]), None, labels[:1], "parameter set 0")


@dataclass(frozen=True, eq=False)
class Evaluator:
    """A forward bound to one data set: ``evaluator(states) -> EvalResult``.

    `keys` are the parameters `forward` needs; `name` identifies the model and data in
    cache keys and titles (:meth:`fingerprint` adds the data's content and the forward's
    ``fingerprint`` attribute when it has one, but not the forward's code: give a new
    `name` when the forward changes). The other fields are passed to :func:`evaluate_params`.
    """

    forward: Forward
    inputs: torch.Tensor
    labels: torch.Tensor
    keys: tuple[str, ...]
    name: str = "model"
    mode: str = "auto"
    chunk: int | None = None
    batch_size: int = 1000
    device: torch.device | str | None = None
    memory_budget: int | None = None
    workers: int | None = None

    def __call__(self, states) -> EvalResult:
        return evaluate_params(self.forward, states, self.inputs, self.labels, list(self.keys), mode=self.mode,
                               chunk=self.chunk, batch_size=self.batch_size, device=self.device,
                               memory_budget=self.memory_budget, workers=self.workers)

    def fingerprint(self) -> str:
        """sha256 (hex) of `name`, `keys`, the forward's ``fingerprint`` attribute, inputs and labels."""
        digest = hashlib.sha256()
        for part in (self.name, "\0".join(self.keys), str(getattr(self.forward, "fingerprint", ""))):
            digest.update(part.encode())
            digest.update(b"\1")
        for tensor in (self.inputs, self.labels):
            digest.update(tensor_digest(tensor).encode())
        return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 (hex) of a tensor's dtype, shape and bytes."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def module_forward(module: torch.nn.Module) -> Forward:
    """``forward(params, inputs)`` calling `module` with `params` in place of its parameters
    (``torch.func.functional_call``; buffers not in `params` are the module's own). Put the
    module in eval mode first if it has dropout or batch norm. Not thread safe
    (``functional_call`` swaps the module's attributes), so the engine runs it in one thread."""

    def forward(params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, dict(params), (inputs,))

    forward.__qualname__ = f"module_forward({type(module).__name__})"
    return forward
