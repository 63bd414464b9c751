"""Singular spectra of task-vector matrices and the singular-subspace interference measures.

The Fourier view (:mod:`freqmerge_viz.metrics`) asks how the tasks' DFT amplitudes differ bin by
bin; this module asks how their singular directions overlap. Every function works on one matrix
(``[H, W]``, as :func:`~freqmerge_viz.spectral.as_matrix` views a parameter) or on one key's
stack of K matrices, in the matrices' compute dtype; singular values are in the weights' units.

Per matrix and task
    :func:`singular_values` (σ_1 ≥ … ≥ σ_r, r = min(H, W)); :func:`effective_rank`, the entropy
    effective rank of Roy & Vetterli (2007): ``exp(−Σ p_i ln p_i)`` with ``p_i = σ_i / Σ_j σ_j``
    (1 for a rank-1 matrix, r when all σ are equal). The *stable rank* ``Σσ² / σ_1²``
    (:func:`stable_rank`) is the other common definition: it counts energy, not entropy, and is
    dominated by the largest direction; the tables report the entropy one. :func:`energy_share`:
    ``Σ_{i≤k} σ_i² / Σ_i σ_i²``, the share of ``‖Δ‖_F²`` the best rank-k approximation keeps
    (Eckart–Young).

Across tasks: Task Singular Vectors (Gargiulo et al., CVPR 2025)
    Each task's matrix is cut to its top-k singular triplets ``Δ_i ≈ U_i Σ_i V_iᵀ``. With
    ``U = [U_1 … U_K]`` and ``V = [V_1 … V_K]`` side by side and ``Σ`` the block-diagonal of the
    ``Σ_i``, their *singular task interference* is the entrywise L1 norm
    ``STI = ‖(UᵀU − I) Σ (VᵀV − I)‖₁`` (:func:`singular_task_interference`). Within one task
    ``U_iᵀU_i = I``, so only products of different tasks' singular vectors count: STI is 0 when
    every task's top-k left (or right) directions are orthogonal to every other task's, and grows
    with the singular values carried along shared directions. For K identical matrices it is
    ``(K − 1)² Σ_i ‖Σ_i‖₁``; :func:`normalized_sti` divides by that, so identical tasks give 1.
    It is not an upper bound: the norm is entrywise, and the product of two unrelated subspaces
    is a dense matrix whose entries add up to more than its trace (two random Gaussian 64 × 64
    matrices give about 2.3 at k = 32). Compare STI only between matrices of the same shape and k.
    k defaults to TSV-Merge's budget ``⌊min(H, W) / K⌋`` (at least 1).

    :func:`subspace_overlap` is a bounded, pairwise companion: ``‖U_aᵀU_b‖_F² / k`` (the mean
    squared cosine of the principal angles between the two top-k left subspaces), the same on the
    right, and their geometric mean: 1 for identical subspaces, 0 when either side is orthogonal
    (as STI, it needs both input and output directions shared); ``k / min(H, W)`` is what two
    random subspaces give on average.

Across tasks: Iso-C (Marczak et al., ICML 2025)
    The *subspace alignment ratio* of a task against a merged matrix M,
    ``SAR(Δ_t, M) = ‖Π_{k_M} Δ_t‖_F / ‖Δ_t‖_F`` with ``Π_{k_M} = U_{k_M} U_{k_M}ᵀ`` the projection
    onto M's top ``k_M`` left singular vectors (:func:`alignment_ratio`): 1 when the task lives in
    the merge's dominant subspace, 0 when it is orthogonal to it. ``k_M`` is the smallest k whose
    rank-k approximation keeps a share 0.95 of M's Frobenius norm, ``‖Π_k M‖_F ≥ 0.95 ‖M‖_F``
    (:func:`rank_for_norm_share`; the authors' ``fig_3a.py`` takes the 0-based position of that
    direction as the count, one direction fewer). Iso-C flattens M's spectrum to its mean; how
    far a spectrum is from flat is measured here by :func:`isotropy`, the effective rank over r
    (1 exactly for a flat spectrum; Iso-C itself defines no such number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import torch

from .backend import as_compute_tensor, resolve_device
from .errors import EmptyInputError, ParameterError
from .keys import Patterns
from .metrics import StackTransform, key_matrices
from .taskvector import TaskVectors, common_keys

NORM_SHARE = 0.95
"""Iso-C's share of the merged matrix's Frobenius norm its top ``k_M`` directions must keep."""


# --------------------------------------------------------------------------- one matrix
def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """σ_1 ≥ … ≥ σ_r (r = min(H, W)) of a real ``[H, W]`` matrix, float64, weight units."""
    if matrix.ndim != 2:
        raise ParameterError(f"singular values need a [H, W] matrix, got shape {tuple(matrix.shape)}")
    return torch.linalg.svdvals(as_compute_tensor(matrix)).to(torch.float64)


def effective_rank(values: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(H(p))`` of singular values `values`, ``p = σ / Σσ``
    (a count of directions, between 1 and r; 0 for a zero matrix)."""
    s = values.to(torch.float64).clamp_min(0)
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(values: torch.Tensor) -> float:
    """Stable rank ``Σσ² / σ_1²`` of singular values `values` (0 for a zero matrix)."""
    s = values.to(torch.float64)
    top = float(s.max()) if s.numel() else 0.0
    return float((s * s).sum()) / top**2 if top > 0 else 0.0


def energy_share(values: torch.Tensor, k: int) -> float:
    """Share of ``Σσ²`` (``‖Δ‖_F²``) in the top `k` singular values, in [0, 1]; NaN for a zero matrix."""
    if k < 0:
        raise ParameterError(f"k must be >= 0, got {k}")
    s = values.to(torch.float64)
    energy = s * s
    total = float(energy.sum())
    return float(energy[:k].sum()) / total if total > 0 else float("nan")


def rank_for_norm_share(values: torch.Tensor, share: float = NORM_SHARE) -> int:
    """Smallest k with ``sqrt(Σ_{i≤k} σ_i² / Σ σ_i²) ≥ share`` (Iso-C's ``k_M``); 0 for a zero matrix."""
    if not 0 < share <= 1:
        raise ParameterError(f"share must lie in (0, 1], got {share!r}")
    s = values.to(torch.float64)
    energy = s * s
    total = float(energy.sum())
    if total <= 0:
        return 0
    captured = (energy.cumsum(0) / total).sqrt()
    reached = torch.nonzero(captured >= share - 1e-12)
    return int(reached[0]) + 1 if reached.numel() else int(s.numel())


def isotropy(values: torch.Tensor) -> float:
    """Effective rank over the number of singular values, in (0, 1]: 1 for a flat (isotropic)
    spectrum, 1/r for rank 1; NaN for a zero matrix or no values."""
    n = values.numel()
    rank = effective_rank(values)
    return rank / n if n and rank > 0 else float("nan")


@dataclass
class TopSingular:
    """The top-k singular triplets of one matrix: ``u [H, k]``, ``s [k]``, ``v [W, k]`` (``Δ ≈ u diag(s) vᵀ``)."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    values: torch.Tensor = field(repr=False, default=None)
    """Every singular value (float64), for the per-task spectra."""


def top_singular(matrix: torch.Tensor, k: int) -> TopSingular:
    """The top `k` singular triplets of real ``matrix [H, W]`` (k clipped to min(H, W))."""
    if k < 1:
        raise ParameterError(f"k must be >= 1, got {k}")
    u, s, vh = torch.linalg.svd(as_compute_tensor(matrix), full_matrices=False)
    k = min(k, s.numel())
    return TopSingular(u[:, :k].clone(), s[:k].clone(), vh[:k].T.clone(), s.to(torch.float64))


def default_rank(shape: Sequence[int], n_tasks: int) -> int:
    """TSV-Merge's per-task budget: ``⌊min(H, W) / K⌋`` directions, at least 1."""
    return max(1, min(int(shape[-2]), int(shape[-1])) // max(1, n_tasks))


# --------------------------------------------------------------------------- across tasks
def singular_task_interference(tops: Sequence[TopSingular]) -> float:
    """TSV's ``STI = ‖(UᵀU − I) Σ (VᵀV − I)‖₁`` (entrywise L1, weight units) of the tasks'
    top-k triplets `tops` (see the module docstring)."""
    if not tops:
        raise EmptyInputError("STI needs at least one task")
    u = torch.cat([t.u for t in tops], dim=1).to(torch.float64)
    v = torch.cat([t.v for t in tops], dim=1).to(torch.float64)
    s = torch.cat([t.s for t in tops]).to(torch.float64)
    eye = torch.eye(s.numel(), dtype=torch.float64, device=s.device)
    left = u.T @ u - eye
    right = v.T @ v - eye
    return float((left * s[None, :]).matmul(right).abs().sum())


def normalized_sti(sti: float, tops: Sequence[TopSingular]) -> float:
    """`sti` over ``(K − 1)² Σ_i ‖Σ_i‖₁``, its value for K identical matrices (no unit); NaN for
    K < 2 or zero matrices."""
    k = len(tops)
    mass = sum(float(t.s.to(torch.float64).sum()) for t in tops)
    return sti / ((k - 1) ** 2 * mass) if k >= 2 and mass > 0 else float("nan")


def subspace_overlap(a: TopSingular, b: TopSingular) -> float:
    """Geometric mean of the left and right overlaps ``‖U_aᵀU_b‖_F² / k`` (k the smaller of the
    two ranks) of two tasks' top-k subspaces, in [0, 1]."""
    k = min(a.s.numel(), b.s.numel())
    if k == 0:
        return float("nan")
    left = float((a.u.T.to(torch.float64) @ b.u.to(torch.float64)).square().sum()) / k
    right = float((a.v.T.to(torch.float64) @ b.v.to(torch.float64)).square().sum()) / k
    return math.sqrt(max(left, 0.0) * max(right, 0.0))


def alignment_ratio(matrix: torch.Tensor, basis: torch.Tensor) -> float:
    """Iso-C's ``SAR = ‖U_k U_kᵀ Δ‖_F / ‖Δ‖_F`` of ``matrix [H, W]`` against the orthonormal
    columns ``basis [H, k]`` (a merged matrix's top left singular vectors); in [0, 1], NaN for a
    zero matrix."""
    m = as_compute_tensor(matrix).to(torch.float64)
    norm = float(m.norm())
    if norm <= 0:
        return float("nan")
    return float((basis.to(torch.float64).T @ m).norm()) / norm


@dataclass
class KeySingular:
    """The singular measures of one key's K matrices (see :func:`key_singular`).

    Per task (lists of K floats): ``effective_rank``, ``stable_rank``, ``energy_top_k`` (share of
    ``‖Δ_i‖_F²`` in the top k directions) and ``alignment`` (SAR against the merged matrix).
    Across tasks: ``k``, ``sti`` (weight units), ``sti_normalized``, ``overlap`` (mean
    :func:`subspace_overlap` over pairs), ``chance_overlap`` (``k / min(H, W)``, the mean overlap
    of two random k-dimensional subspaces), ``merged_rank`` (``k_M``) and ``merged_isotropy``.
    """

    k: int
    effective_rank: list[float]
    stable_rank: list[float]
    energy_top_k: list[float]
    alignment: list[float]
    sti: float
    sti_normalized: float
    overlap: float
    chance_overlap: float
    merged_rank: int
    merged_isotropy: float


def key_singular(matrices: torch.Tensor, k: int | None = None, merged: torch.Tensor | None = None,
                 norm_share: float = NORM_SHARE) -> KeySingular:
    """Singular measures of one key's ``matrices [K, H, W]`` (module docstring).

    `k`: directions per task (default :func:`default_rank`). `merged`: the merged matrix SAR and
    isotropy refer to (default the sum of the K matrices, task arithmetic's direction; SAR and
    isotropy do not depend on its scale). One SVD per task at a time; the memory is the stack,
    the tasks' top-k factors (at most one matrix in all with the default k) and the merged matrix.
    """
    if matrices.ndim != 3 or matrices.shape[0] == 0:
        raise ParameterError(f"expected a [K, H, W] stack of matrices, got shape {tuple(matrices.shape)}")
    n_tasks = matrices.shape[0]
    k = default_rank(matrices.shape, n_tasks) if k is None else int(k)
    tops = [top_singular(matrices[i], k) for i in range(n_tasks)]
    merged = matrices.sum(dim=0) if merged is None else as_compute_tensor(merged, matrices.device)
    u, s, _ = torch.linalg.svd(merged, full_matrices=False)
    merged_values = s.to(torch.float64)
    k_m = rank_for_norm_share(merged_values, norm_share)
    basis = u[:, :k_m]
    del u, merged
    sti = singular_task_interference(tops)
    pairs = [subspace_overlap(tops[a], tops[b]) for a in range(n_tasks) for b in range(a + 1, n_tasks)]
    return KeySingular(
        k=tops[0].s.numel(),
        effective_rank=[effective_rank(t.values) for t in tops],
        stable_rank=[stable_rank(t.values) for t in tops],
        energy_top_k=[energy_share(t.values, k) for t in tops],
        alignment=[alignment_ratio(matrices[i], basis) if k_m else float("nan") for i in range(n_tasks)],
        sti=sti, sti_normalized=normalized_sti(sti, tops),
        overlap=float(sum(pairs) / len(pairs)) if pairs else float("nan"),
        chance_overlap=tops[0].s.numel() / min(matrices.shape[1:]),
        merged_rank=k_m, merged_isotropy=isotropy(merged_values))


SINGULAR_COLUMNS = ("k", "sti", "sti_normalized", "overlap", "chance_overlap", "alignment", "merged_rank",
                    "merged_isotropy",
                    "effective_rank", "stable_rank", "energy_top_k")
"""Columns of :func:`singular_interference`'s table after ``key`` and ``shape``."""


def singular_row(key_measures: KeySingular) -> dict:
    """One row of :func:`singular_interference`: the across-task numbers and the per-task ones averaged."""
    m = key_measures
    mean = lambda values: float(sum(values) / len(values)) if values else float("nan")  # noqa: E731
    return {"k": m.k, "sti": m.sti, "sti_normalized": m.sti_normalized, "overlap": m.overlap,
            "chance_overlap": m.chance_overlap,
            "alignment": mean(m.alignment), "merged_rank": m.merged_rank, "merged_isotropy": m.merged_isotropy,
            "effective_rank": mean(m.effective_rank), "stable_rank": mean(m.stable_rank),
            "energy_top_k": mean(m.energy_top_k)}


def singular_interference(task_vectors: TaskVectors, *, transform: StackTransform | None = None,
                          k: int | None = None, include: Patterns = None, exclude: Patterns = None,
                          one_d: str = "skip", device: torch.device | str | None = None) -> pd.DataFrame:
    """One row per matrix of the task vectors (after `transform`, a method's per-task step):
    ``key``, ``shape`` and :data:`SINGULAR_COLUMNS` (per-task values averaged over the tasks).

    Streamed like :func:`~freqmerge_viz.amplitude_variance`: one key's ``[K, *shape]`` stack at a time.
    """
    target = resolve_device(device)
    rows = []
    keys = common_keys(task_vectors, include, exclude)
    for key, matrices in key_matrices(task_vectors, keys, transform, one_d, target):
        rows.append({"key": key, "shape": "×".join(map(str, matrices.shape[1:])),
                     **singular_row(key_singular(matrices, k))})
        del matrices
    if not rows:
        raise EmptyInputError(f"none of the selected keys is a matrix (2-D or more); selected {len(keys)} key(s)")
    return pd.DataFrame(rows)
