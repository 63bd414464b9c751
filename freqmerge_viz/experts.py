"""Task experts of FREE-Merging: small, rescaled parts of task vectors added back at inference.

Paper, Eq. 4: ``e_i = μ_i · M(v_i, d)`` where ``M(v, d)`` keeps the top-``d`` fraction of the
entries of ``v`` by magnitude and zeroes the rest, and

* ``rescale="paper"``: ``μ_i = −E(M(v_i, d)) · ln(d) / (λ_i · E(v_i))``, E the mean absolute
  value over *all* entries of the selected keys (the zeros of ``M`` included), λ_i the
  FR-Merging coefficient ``E(v_i) / Σ_j E(v_j)``. The paper does not name the log; natural.
* ``rescale="official"``: the authors' code, ``μ_i = −log10(d) · Ē(M(v_i, d)) / (d · Ē(v_i))``
  where ``Ē`` is the mean over keys of each key's mean absolute value; no λ_i.
* ``rescale=None``: ``μ_i = 1``.

Both formulas give ``μ = 0`` at ``d = 1`` (``log 1 = 0``). Density ``d`` is always a fraction in
``(0, 1]``. Ties at the k-th largest magnitude go to the lowest flat index (``ties="index"``), or
are broken by ``torch.topk`` along the last dimension exactly as the authors' code calls it
(``ties="torch_topk"``; agrees entry for entry with ``torch.topk`` on the same device).
Definitions: docs/methods.md. Experts are extracted key by key: only one key's K tensors are in memory at once,
in float32 (float64 stays float64). For comparison (paper Fig. 5b) experts can also be drawn
at random (``selection="bernoulli"``) or as truncated SVDs (:func:`svd_experts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pandas as pd
import torch

from .backend import as_compute_tensor, resolve_device
from .errors import EmptyInputError, MissingKeysError, ParameterError, ShapeMismatchError, check_choice, check_positive_int
from .keys import Patterns
from .dropout import dare_mask
from .metrics import fr_coefficients
from .taskvector import TaskVectors, common_keys, stack_key, task_names

RESCALES = ("paper", "official", None)
SELECTIONS = ("topk", "bernoulli")
COUNT_RULES = ("ceil", "floor")
TIE_RULES = ("index", "torch_topk")


# --------------------------------------------------------------------------- validation
def check_density(density) -> float:
    """`density` as a float, or :class:`ParameterError` unless it is a fraction in ``(0, 1]``."""
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise ParameterError(f"density must be a fraction in (0, 1], got {density!r}")
    value = float(density)
    if not (0.0 < value <= 1.0):
        raise ParameterError(f"density must be a fraction in (0, 1] (0.01 keeps 1%), got {density!r}")
    return value




# --------------------------------------------------------------------------- selection M(v, d)
def kept_count(n: int, density: float, count: str = "floor") -> int:
    """How many of `n` entries the top-`density` selection keeps.

    ``count="floor"`` (default): ``int(n·d)``, the rule of the merge methods' density, peft's
    ``merge_utils`` and the authors' code; it can be 0 (a row of 50 at d = 0.01 keeps nothing).
    ``count="ceil"``: ``⌈d·n⌉`` clamped to ``[1, n]`` (``d·n`` is rounded to 6 decimals first,
    so 0.07 of 100 keeps 7, not 8), so that every tensor or row keeps at least one entry.
    """
    density = check_density(density)
    check_choice("count", count, COUNT_RULES)
    if n <= 0:
        return 0
    if count == "floor":
        return int(n * density)
    return min(n, max(1, math.ceil(round(density * n, 6))))


def _top_rows_mask(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the `k` largest entries of each row of ``magnitude[..., n]``.

    Ties at the k-th largest value go to the entries with the lowest index in the row.
    """
    n = magnitude.shape[-1]
    if k <= 0:
        return torch.zeros_like(magnitude, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(magnitude, dtype=torch.bool)
    threshold = torch.topk(magnitude, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    above = magnitude > threshold
    at = magnitude == threshold
    room = k - above.sum(dim=-1, keepdim=True)
    return above | (at & (torch.cumsum(at, dim=-1) <= room))


def _as_rows(stack: torch.Tensor, per_row: bool) -> torch.Tensor:
    """``[K, *shape]`` as ``[K, rows, n]``: one row per tensor, or its last-dimension rows."""
    k = stack.shape[0]
    if per_row and stack.ndim >= 2:
        return stack.reshape(k, -1, stack.shape[-1])
    return stack.reshape(k, 1, -1)


def _torch_topk_mask(tensor: torch.Tensor, k: int, per_row: bool) -> torch.Tensor:
    """The authors' selection: ``torch.topk(|x|, k)`` along the last dimension of `tensor` in its
    own shape (flattened first unless `per_row`), scattered into a boolean mask."""
    values = tensor if per_row else tensor.reshape(-1)
    mask = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    if k > 0:
        mask.scatter_(-1, torch.topk(values.abs(), k).indices, True)
    return mask.reshape(tensor.shape)


def _stack_top_mask(stack: torch.Tensor, density: float, per_row: bool, count: str,
                    ties: str = "index") -> torch.Tensor:
    if stack.ndim == 1:
        return torch.ones_like(stack, dtype=torch.bool)
    if stack[0].numel() == 0:
        return torch.zeros_like(stack, dtype=torch.bool)
    rows = _as_rows(stack, per_row)
    k = kept_count(rows.shape[-1], density, count)
    if ties == "torch_topk":
        return torch.stack([_torch_topk_mask(stack[task], k, per_row) for task in range(stack.shape[0])])
    mask = _top_rows_mask(rows.abs(), k)
    return mask.reshape(stack.shape)


def top_magnitude_mask(tensor: torch.Tensor, density: float, per_row: bool = False,
                       count: str = "floor", ties: str = "index") -> torch.Tensor:
    """Boolean mask (same shape) of the top-`density` fraction of `tensor`'s entries by magnitude.

    Per tensor by default; ``per_row=True`` keeps that fraction of each row along the last
    dimension (the authors' code; a 1-D tensor is one row). The count per tensor or row is
    :func:`kept_count`. Ties at the threshold go to the lowest flat (row-major) index
    (``ties="index"``) or wherever ``torch.topk`` puts them (``"torch_topk"``, the authors'
    code). 0-d scalars are kept whole.
    """
    check_density(density)
    check_choice("ties", ties, TIE_RULES)
    return _stack_top_mask(as_compute_tensor(tensor).unsqueeze(0), density, per_row, count, ties)[0]


def magnitude_prune(tensor: torch.Tensor, density: float, per_row: bool = False,
                    count: str = "floor", ties: str = "index") -> torch.Tensor:
    """``M(v, d)``: `tensor` (compute dtype) with all but its top-`density` entries zeroed."""
    x = as_compute_tensor(tensor)
    return torch.where(top_magnitude_mask(x, density, per_row, count, ties), x, torch.zeros_like(x))


def bernoulli_mask(shape: Sequence[int], density: float, seed: int, key: str, task: int) -> torch.Tensor:
    """Boolean CPU mask of `shape` keeping each entry independently with probability `density`.

    The same draw as DARE's mask for (`seed`, `key`, `task`): independent of key order and device.
    """
    density = check_density(density)
    return dare_mask(tuple(shape), density, seed, key, task) > 0


def mean_abs(tensor: torch.Tensor) -> float:
    """``E(x)``: mean absolute value over all entries (NaN for an empty tensor)."""
    x = as_compute_tensor(tensor)
    return float(x.abs().mean()) if x.numel() else float("nan")


# --------------------------------------------------------------------------- rescaling μ
def paper_rescale(kept_mean_abs: float, mean_abs_value: float, coefficient: float, density: float) -> float:
    """Eq. 4, natural log: ``μ = −E(M(v, d)) · ln(d) / (λ · E(v))``.

    `kept_mean_abs` is ``E(M(v, d))`` averaged over all entries, zeros of M included. An empty
    expert (``E(M) = 0``) gets ``μ = 0``.
    """
    density = check_density(density)
    if kept_mean_abs == 0:
        return 0.0
    denominator = coefficient * mean_abs_value
    if not denominator > 0:
        raise ParameterError(f"paper rescale needs λ·E(v) > 0, got λ={coefficient!r}, E(v)={mean_abs_value!r}")
    return -kept_mean_abs * math.log(density) / denominator + 0.0


def official_rescale(kept_mean_abs: float, mean_abs_value: float, density: float) -> float:
    """The authors' code: ``μ = −log10(d) · Ē(M(v, d)) / (d · Ē(v))``.

    Ē is the mean over keys of each key's mean absolute value. An empty expert gets ``μ = 0``.
    """
    density = check_density(density)
    if kept_mean_abs == 0:
        return 0.0
    if not mean_abs_value > 0:
        raise ParameterError(f"official rescale needs mean |v| > 0, got {mean_abs_value!r}")
    return -math.log10(density) * kept_mean_abs / (density * mean_abs_value) + 0.0


# --------------------------------------------------------------------------- expert objects
def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class _ExpertBase:
    """What sparse and low-rank experts share: key checks and ``add_to``."""

    name: str
    shapes: dict[str, tuple[int, ...]]
    scale: float

    def keys(self) -> list[str]:
        """The keys this expert changes."""
        return list(self.shapes)

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def numel(self) -> int:
        """Entries of the keys this expert covers (the dense size)."""
        return sum(math.prod(shape) for shape in self.shapes.values())

    def _target(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key not in self.shapes:
            raise MissingKeysError([str(key)], where=f"expert {self.name!r}")
        out = as_compute_tensor(tensor)
        if tuple(out.shape) != self.shapes[key]:
            raise ShapeMismatchError(key, tuple(out.shape), self.shapes[key], "the tensor given",
                                     f"expert {self.name!r}")
        return out.clone(memory_format=torch.contiguous_format)

    def dense(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def add_to(self, key: str, tensor: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """``tensor + weight · e[key]`` (the paper's Alg. 1, line 8), in `tensor`'s compute dtype."""
        out = self._target(key, tensor)
        return out + weight * self.dense(key).to(out)


@dataclass
class Expert(_ExpertBase):
    """A sparse expert ``e = scale · M(v, d)``, stored per key as flat indices and values.

    ``indices[key]``: ascending row-major flat positions, int32 (int64 for keys of 2**31 or more
    entries). ``values[key]``: the task vector's entries there (unscaled, compute dtype), on the
    device they were extracted on. ``scale`` is μ; ``density`` the fraction asked for (the kept
    share is ``parameters_kept() / numel()``).
    """

    name: str
    indices: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    scale: float = 1.0
    density: float = 1.0
    settings: dict = field(default_factory=dict)

    def parameters_kept(self) -> int:
        """Number of stored entries over all keys."""
        return sum(v.numel() for v in self.values.values())

    def storage_bytes(self) -> int:
        """Bytes of the stored values plus indices (the scale, one float, is not counted)."""
        return sum(_tensor_bytes(self.values[k]) + _tensor_bytes(self.indices[k]) for k in self.shapes)

    def dense(self, key: str) -> torch.Tensor:
        """``scale · M(v, d)[key]`` as a dense tensor of the key's shape."""
        if key not in self.shapes:
            raise MissingKeysError([str(key)], where=f"expert {self.name!r}")
        values = self.values[key]
        out = torch.zeros(self.shapes[key], dtype=values.dtype, device=values.device)
        out.view(-1)[self.indices[key].long()] = self.scale * values
        return out

    def add_to(self, key: str, tensor: torch.Tensor, weight: float = 1.0, scaled: bool = True) -> torch.Tensor:
        """``tensor + weight · scale · M(v, d)[key]`` ("add", paper), in `tensor`'s compute dtype
        (without ``scale`` when ``scaled=False``)."""
        out = self._target(key, tensor)
        index = self.indices[key].to(out.device, torch.int64)
        out.view(-1).index_add_(0, index, (weight * (self.scale if scaled else 1.0)) * self.values[key].to(out))
        return out

    def replace_in(self, key: str, tensor: torch.Tensor, weight: float = 1.0, scaled: bool = True) -> torch.Tensor:
        """`tensor` with the expert's entries put in place of its own ("replace", official code).

        At every stored position whose scaled value ``scale · value`` is non-zero the result is
        ``weight · scale · value``; elsewhere it is `tensor` (compute dtype). As in the authors'
        code, a zero expert entry leaves the tensor's entry alone. ``scaled=False`` uses the
        values without ``scale`` (the authors' code applies μ to attn/mlp weights only).
        """
        out = self._target(key, tensor)
        entries = (self.scale if scaled else 1.0) * self.values[key].to(out)
        nonzero = entries != 0
        index = self.indices[key].to(out.device, torch.int64)[nonzero]
        out.view(-1)[index] = weight * entries[nonzero]
        return out


@dataclass
class LowRankExpert(_ExpertBase):
    """A rank-``rank`` expert: per matrix key ``left[key] @ right[key]`` (``[m, r] @ [r, n]``).

    ``left`` holds ``U·S`` (singular values folded in), ``right`` holds ``Vᴴ``. Keys that are not
    matrices (0-d, 1-D) and matrices whose smaller side is ``<= rank`` are in ``dense_parts``
    whole. Tensors of 3 or more dimensions are factorised as ``(shape[0], prod(shape[1:]))``.
    """

    name: str
    rank: int
    left: dict[str, torch.Tensor]
    right: dict[str, torch.Tensor]
    dense_parts: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    scale: float = 1.0

    def parameters_kept(self) -> int:
        """Stored numbers: ``r·(m + n)`` per factorised key plus every dense key's entries."""
        factors = sum(self.left[k].numel() + self.right[k].numel() for k in self.left)
        return factors + sum(t.numel() for t in self.dense_parts.values())

    def storage_bytes(self) -> int:
        """Bytes of the factors and dense parts."""
        factors = sum(_tensor_bytes(self.left[k]) + _tensor_bytes(self.right[k]) for k in self.left)
        return factors + sum(_tensor_bytes(t) for t in self.dense_parts.values())

    def dense(self, key: str) -> torch.Tensor:
        """``scale ·`` the rank-r approximation of entry `key`, in the key's shape."""
        if key not in self.shapes:
            raise MissingKeysError([str(key)], where=f"expert {self.name!r}")
        if key in self.dense_parts:
            return self.scale * self.dense_parts[key]
        return self.scale * (self.left[key] @ self.right[key]).reshape(self.shapes[key])


# --------------------------------------------------------------------------- extraction
def _reference_stack(reference: TaskVectors, key: str, shape: tuple[int, ...], names: list[str],
                     target: torch.device) -> torch.Tensor:
    for tv, name in zip(reference, names):
        if key not in tv:
            raise MissingKeysError([key], where=f"scale reference {name!r}")
    stack = stack_key(reference, key, target)
    if tuple(stack.shape[1:]) != shape:
        raise ShapeMismatchError(key, tuple(stack.shape[1:]), shape, "scale reference", "task vectors")
    return stack


def extract_experts(task_vectors: TaskVectors, density: float, *, per_row: bool = False,
                    rescale: str | None = "paper", selection: str = "topk", seed: int = 0,
                    include: Patterns = None, exclude: Patterns = None,
                    coefficients: Sequence[float] | None = None,
                    scale_reference: TaskVectors | None = None, count: str = "floor",
                    ties: str = "index", device: torch.device | str | None = None) -> list[Expert]:
    """One sparse expert per task vector: ``μ_i · M(v_i, d)`` over the selected keys.

    density
        fraction of entries kept, in ``(0, 1]`` (0.01 keeps 1%); :func:`kept_count` per tensor
        (or per row with ``per_row=True``; ``count="floor"`` is the authors' ``int(n·d)``).
    selection
        ``"topk"``: largest magnitudes (:func:`top_magnitude_mask`); ``"bernoulli"``: each entry
        kept independently with probability d (:func:`bernoulli_mask`: DARE's mask for `seed`,
        the key and the task's position, so the same entries DARE keeps with that seed).
    rescale
        ``"paper"``, ``"official"`` or ``None`` (μ = 1); see the module docstring.
    coefficients
        λ_i for the paper rescale, one per task (default: FR coefficients from E(v_i)).
    scale_reference
        task vectors whose mean |v| enters μ (and λ) instead of `task_vectors`', one per task,
        same keys and shapes. The authors' code uses the FR-filtered task vectors here.
    ties
        ``"index"``: entries tying the k-th largest magnitude are taken lowest flat index
        first; ``"torch_topk"``: ``torch.topk`` of each task's tensor along its last dimension
        decides, as in the authors' code (selection ``"topk"`` only).
    """
    density = check_density(density)
    check_choice("rescale", rescale, RESCALES)
    check_choice("selection", selection, SELECTIONS)
    check_choice("count", count, COUNT_RULES)
    check_choice("ties", ties, TIE_RULES)
    if selection == "bernoulli" and per_row:
        raise ParameterError("per_row applies to selection='topk' only; bernoulli selection is per entry")
    keys = common_keys(task_vectors, include, exclude)
    names = task_names(task_vectors)
    n_tasks = len(task_vectors)
    if coefficients is not None:
        if rescale != "paper":
            raise ParameterError(f"coefficients (λ_i) only enter rescale='paper', not {rescale!r}")
        coefficients = [float(c) for c in coefficients]
        if len(coefficients) != n_tasks:
            raise ParameterError(f"need one coefficient per task ({n_tasks}), got {len(coefficients)}")
    if scale_reference is not None and len(scale_reference) != n_tasks:
        raise ParameterError(f"scale_reference needs one task vector per task ({n_tasks}), "
                             f"got {len(scale_reference)}")
    reference_names = task_names(scale_reference) if scale_reference is not None else names
    target = resolve_device(device)

    indices: list[dict[str, torch.Tensor]] = [{} for _ in range(n_tasks)]
    values: list[dict[str, torch.Tensor]] = [{} for _ in range(n_tasks)]
    shapes: dict[str, tuple[int, ...]] = {}
    kept_abs = torch.zeros(n_tasks, dtype=torch.float64)
    total_abs = torch.zeros(n_tasks, dtype=torch.float64)
    kept_key_means, total_key_means = [], []
    entries = 0
    for key in keys:
        stack = stack_key(task_vectors, key, target)
        shape = tuple(stack.shape[1:])
        shapes[key] = shape
        n = math.prod(shape)
        if selection == "bernoulli":
            mask = torch.stack([bernoulli_mask(shape, density, seed, key, i) for i in range(n_tasks)]).to(target)
        else:
            mask = _stack_top_mask(stack, density, per_row, count, ties)
        flat, flat_mask = stack.reshape(n_tasks, -1), mask.reshape(n_tasks, -1)
        for i in range(n_tasks):
            position = flat_mask[i].nonzero().squeeze(1)
            indices[i][key] = position.to(_index_dtype(n))
            values[i][key] = flat[i, position]
        reference = stack if scale_reference is None else _reference_stack(
            scale_reference, key, shape, reference_names, target)
        key_kept = (flat.abs() * flat_mask).sum(dim=1, dtype=torch.float64).cpu()
        key_total = reference.reshape(n_tasks, -1).abs().sum(dim=1, dtype=torch.float64).cpu()
        kept_abs += key_kept
        total_abs += key_total
        entries += n
        if n:
            kept_key_means.append(key_kept / n)
            total_key_means.append(key_total / n)
        del stack, mask, flat, flat_mask, reference

    scales = _scales(rescale, density, kept_abs, total_abs, entries, kept_key_means,
                     total_key_means, coefficients)
    settings = {"per_row": per_row, "rescale": rescale, "selection": selection, "count": count, "ties": ties,
                "seed": seed if selection == "bernoulli" else None}
    return [Expert(names[i], indices[i], values[i], dict(shapes), scales[i], density, dict(settings))
            for i in range(n_tasks)]


def _scales(rescale, density, kept_abs, total_abs, entries, kept_key_means, total_key_means,
            coefficients) -> list[float]:
    n_tasks = len(kept_abs)
    if rescale is None:
        return [1.0] * n_tasks
    if rescale == "official":
        if not kept_key_means:
            return [0.0] * n_tasks
        kept_mean = torch.stack(kept_key_means).mean(dim=0).tolist()
        total_mean = torch.stack(total_key_means).mean(dim=0).tolist()
        return [official_rescale(kept_mean[i], total_mean[i], density) for i in range(n_tasks)]
    if entries == 0:
        return [0.0] * n_tasks
    kept_mean = (kept_abs / entries).tolist()
    total_mean = (total_abs / entries).tolist()
    lambdas = coefficients if coefficients is not None else fr_coefficients(total_mean)
    return [paper_rescale(kept_mean[i], total_mean[i], lambdas[i], density) for i in range(n_tasks)]


def svd_storage(shapes: Iterable[Sequence[int]], rank: int) -> int:
    """Numbers a rank-`rank` :func:`svd_experts` expert stores for parameters of these shapes,
    from the shapes alone: ``rank·(m + n)`` per matrix (``m = shape[0]``, ``n = prod(shape[1:])``)
    whose smaller side exceeds the rank, every entry of the other matrices and of 0-d and 1-D keys."""
    rank = check_positive_int("rank", rank)
    total = 0
    for shape in shapes:
        shape = tuple(shape)
        if len(shape) < 2:
            total += math.prod(shape)
            continue
        m, n = shape[0], math.prod(shape[1:])
        total += m * n if min(m, n) <= rank else rank * (m + n)
    return total


def svd_storage_by_ranks(shapes: Iterable[Sequence[int]], ranks: Sequence[int]) -> list[int]:
    """:func:`svd_storage` at every rank of `ranks` at once (one array expression over ranks × matrices)."""
    import numpy as np

    shapes = [tuple(shape) for shape in shapes]
    ranks = np.asarray(ranks, dtype=np.int64).reshape(-1, 1)
    if ranks.size and ranks.min() < 1:
        raise ParameterError(f"ranks must be integers >= 1, got {int(ranks.min())}")
    matrices = np.array([(s[0], math.prod(s[1:])) for s in shapes if len(s) >= 2], dtype=np.int64).reshape(-1, 2)
    m, n = matrices[:, 0][None, :], matrices[:, 1][None, :]
    flat = sum(math.prod(s) for s in shapes if len(s) < 2)
    return (np.where(np.minimum(m, n) <= ranks, m * n, ranks * (m + n)).sum(axis=1) + flat).tolist()


def svd_experts(task_vectors: TaskVectors, rank: int, include: Patterns = None,
                exclude: Patterns = None, device: torch.device | str | None = None) -> list[LowRankExpert]:
    """One rank-`rank` truncated-SVD expert per task vector (Twin-Merging style; paper Fig. 5b).

    Each matrix key (2-D; ``ndim >= 3`` as ``(shape[0], prod(shape[1:]))``) is stored as its best
    rank-r approximation ``U_r S_r · V_rᴴ`` (exact SVD, compute dtype). 0-d and 1-D keys, and
    matrices with ``min(m, n) <= rank`` (where factors would not be smaller), are stored dense.
    No rescaling: ``scale = 1``. :class:`SVDFactors` gives the same experts at many ranks.
    """
    return SVDFactors(task_vectors, include, exclude, device).experts(rank)


class SVDFactors:
    """The task vectors' SVDs, computed once and cut to any rank: ``experts(rank)`` equals
    :func:`svd_experts` at that rank, entry for entry.

    Each matrix key's factors are kept up to twice the highest rank asked for so far: a higher
    rank computes that key's SVD again, so a rank growing step by step (a density slider moved
    up) recomputes it a logarithmic number of times, and the factors hold at most about twice
    as many numbers as the largest expert given out. Dense parts are read from the task vectors
    when an expert is made.
    """

    def __init__(self, task_vectors: TaskVectors, include: Patterns = None, exclude: Patterns = None,
                 device: torch.device | str | None = None):
        self.task_vectors = task_vectors
        self.keys = common_keys(task_vectors, include, exclude)
        self.names = task_names(task_vectors)
        self.device = resolve_device(device)
        self.shapes = {key: tuple(task_vectors[0].shape_of(key)) if hasattr(task_vectors[0], "shape_of")
                       else tuple(task_vectors[0][key].shape) for key in self.keys}
        self._factors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _factors_of(self, key: str, matrix_shape: tuple[int, int], rank: int):
        held = self._factors.get(key)
        if held is None or held[1].shape[1] < rank:
            stack = stack_key(self.task_vectors, key, self.device)
            u, s, vh = torch.linalg.svd(stack.reshape(len(self.names), *matrix_shape), full_matrices=False)
            kept = 2 * rank
            held = (u[:, :, :kept].contiguous(), s[:, :kept].contiguous(), vh[:, :kept].contiguous())
            self._factors[key] = held
        return held

    def experts(self, rank: int) -> list[LowRankExpert]:
        """One rank-`rank` expert per task vector (see :func:`svd_experts`)."""
        rank = check_positive_int("rank", rank)
        n_tasks = len(self.names)
        left: list[dict] = [{} for _ in range(n_tasks)]
        right: list[dict] = [{} for _ in range(n_tasks)]
        dense: list[dict] = [{} for _ in range(n_tasks)]
        for key, shape in self.shapes.items():
            matrix_shape = (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else None
            if matrix_shape is None or min(matrix_shape) <= rank:
                stack = stack_key(self.task_vectors, key, self.device)
                for i in range(n_tasks):
                    dense[i][key] = stack[i].clone()
                continue
            u, s, vh = self._factors_of(key, matrix_shape, rank)
            for i in range(n_tasks):
                left[i][key] = (u[i, :, :rank] * s[i, :rank]).contiguous()
                right[i][key] = vh[i, :rank].contiguous()
        return [LowRankExpert(self.names[i], rank, left[i], right[i], dense[i], dict(self.shapes))
                for i in range(n_tasks)]


# --------------------------------------------------------------------------- reporting
def storage_table(experts: Sequence[Expert | LowRankExpert], model_numel: int) -> pd.DataFrame:
    """Storage cost per expert: ``name``, ``parameters_kept``, ``storage_bytes``, ``percent_of_model``.

    ``percent_of_model = parameters_kept / model_numel · 100`` (`model_numel`: entries of one model).
    """
    if isinstance(model_numel, bool) or not isinstance(model_numel, int) or model_numel < 1:
        raise ParameterError(f"model_numel must be a positive integer, got {model_numel!r}")
    if len(experts) == 0:
        raise EmptyInputError("need at least one expert, got an empty list")
    rows = [{"name": e.name, "parameters_kept": e.parameters_kept(), "storage_bytes": e.storage_bytes(),
             "percent_of_model": e.parameters_kept() / model_numel * 100.0} for e in experts]
    return pd.DataFrame(rows, columns=["name", "parameters_kept", "storage_bytes", "percent_of_model"])
