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

Pairs of tasks
    :func:`pair_singular_interference` gives, per matrix and pair of tasks, what
    :func:`key_singular` gives for the pair's two matrices alone (STI, its normalised form, the
    overlap, the alignment against the pair's sum, with a pair's k = ⌊min(H, W) / 2⌋), streamed key
    by key with each task decomposed once for all its pairs (:func:`key_pair_singular`); it prints
    an estimate of its time first when that is long (:func:`pair_singular_estimate`).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import torch

from .backend import as_compute_tensor, compute_dtype, resolve_device
from .errors import EmptyInputError, ParameterError, check_choice
from .keys import Patterns
from .metrics import StackTransform, key_matrices, matrix_shape
from .progress import progress_bar
from .spectral import as_matrix
from .taskvector import TaskVectors, common_keys, entry_shape, task_names

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


# --------------------------------------------------------------------------- pairs of tasks, streamed
PAIR_COLUMNS = ("k", "sti", "sti_normalized", "overlap", "alignment", "merged_rank")
"""Columns of :func:`pair_singular_interference` after ``key, shape, task_a, task_b``: what
:func:`key_singular` gives for the two tasks' matrices alone (K = 2; ``alignment`` the mean of
the two tasks' SAR against their sum)."""

SOLVERS = ("gram", "svd")
"""How :func:`key_pair_singular` decomposes the matrices (see there)."""

GRAM_FLOOR = 1e-4
"""The ``gram`` solver hands a pair to the exact SVD path when a singular value it divides by
(a task's k-th, or the merged matrix's ``k_M``-th) is below this share of the matrix's largest."""

ESTIMATE_SECONDS = 10.0
"""With ``estimate=None``, :func:`pair_singular_interference` prints its estimate when the job
is expected to take longer than this many seconds."""


def _pair_row(measures: KeySingular) -> dict:
    alignment = measures.alignment
    return {"k": measures.k, "sti": measures.sti, "sti_normalized": measures.sti_normalized,
            "overlap": measures.overlap, "alignment": float(sum(alignment) / len(alignment)),
            "merged_rank": measures.merged_rank}


def _exact_pair(matrices: torch.Tensor, a: int, b: int, k: int, norm_share: float,
                dtype: torch.dtype | None = None) -> dict:
    """The pair's measures as :func:`key_singular` of its two matrices (in `dtype`) gives them."""
    return _pair_row(key_singular(matrices[[a, b]].to(dtype or matrices.dtype), k, norm_share=norm_share))


def _svd_pairs(matrices: torch.Tensor, pairs, k: int, norm_share: float) -> list[dict]:
    """``svd`` solver: one batched SVD of the K task matrices, one batched SVD of up to K / 2 pair
    sums at a time; the pair products as :func:`singular_task_interference` and
    :func:`subspace_overlap` compute them (the numbers of :func:`key_singular`)."""
    u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    kk = min(k, s.shape[-1])
    tops = [TopSingular(u[i, :, :kk], s[i, :kk], vh[i, :kk].T, s[i].to(torch.float64)) for i in range(len(matrices))]
    del u, vh
    rows = []
    chunk_size = max(1, len(matrices) // 2)
    for start in range(0, len(pairs), chunk_size):
        chunk = pairs[start:start + chunk_size]
        merged = torch.stack([matrices[a] + matrices[b] for a, b in chunk])
        mu, ms, _ = torch.linalg.svd(merged, full_matrices=False)
        del merged
        for (a, b), basis_all, values in zip(chunk, mu, ms):
            merged_values = values.to(torch.float64)
            k_m = rank_for_norm_share(merged_values, norm_share)
            basis = basis_all[:, :k_m]
            pair = [tops[a], tops[b]]
            sti = singular_task_interference(pair)
            alignment = [alignment_ratio(matrices[t], basis) if k_m else float("nan") for t in (a, b)]
            rows.append({"k": kk, "sti": sti, "sti_normalized": normalized_sti(sti, pair),
                         "overlap": subspace_overlap(tops[a], tops[b]), "alignment": float(sum(alignment) / 2),
                         "merged_rank": k_m})
        del mu
    return rows


def _gram_pairs(stack: torch.Tensor, pairs, k: int, norm_share: float, exact_dtype: torch.dtype) -> list[dict]:
    """``gram`` solver (see :func:`key_pair_singular`) on a float64 ``stack [K, H, W]``; a pair
    handed to the exact path is measured on the stack in `exact_dtype` (the compute dtype)."""
    transposed = stack.shape[1] < stack.shape[2]
    tall = stack.mT if transposed else stack  # [K, m, n], m >= n (a view)
    n = tall.shape[2]
    kk = min(k, n)
    grams = tall.mT @ tall  # [K, n, n]: Δ_iᵀΔ_i on the small side
    values, vectors = torch.linalg.eigh(grams)  # ascending: the top kk are the last columns
    sigma = values.clamp_min(0).sqrt()
    top_s, top_v = sigma[:, n - kk:], vectors[:, :, n - kk:].clone()
    del values, vectors
    usable = (top_s[:, 0] > GRAM_FLOOR * sigma[:, -1]).tolist()
    norms = grams.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt().tolist()  # ‖Δ_i‖_F
    rows: list[dict | None] = [None] * len(pairs)
    exact = lambda a, b: _exact_pair(stack, a, b, k, norm_share, exact_dtype)  # noqa: E731
    todo = [(i, a, b) for i, (a, b) in enumerate(pairs) if usable[a] and usable[b]]
    for i, (a, b) in enumerate(pairs):
        if not (usable[a] and usable[b]):
            rows[i] = exact(a, b)
    chunk_size = max(1, len(stack) // 2)  # pairs per batched eigh: 3 n×n matrices each
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        crosses = [tall[a].mT @ tall[b] for _, a, b in chunk]  # Δ_aᵀΔ_b
        merged_values, merged_vectors = torch.linalg.eigh(
            torch.stack([grams[a] + grams[b] + x + x.T for (_, a, b), x in zip(chunk, crosses)]))
        merged_sigma = merged_values.flip(-1).clamp_min(0).sqrt()  # descending
        for (i, a, b), x, m_sigma, m_vectors in zip(chunk, crosses, merged_sigma, merged_vectors):
            k_m = rank_for_norm_share(m_sigma, norm_share)
            if k_m and not transposed and not float(m_sigma[k_m - 1]) > GRAM_FLOOR * float(m_sigma[0]):
                rows[i] = exact(a, b)
                continue
            # U_aᵀU_b = Σ_a⁻¹ V_aᵀ (Δ_aᵀΔ_b) V_b Σ_b⁻¹ and V_aᵀV_b: the cross blocks of UᵀU − I and VᵀV − I
            # (the columns in ascending order of σ: every sum below is the same in any consistent order)
            cross_u = (top_v[a].T @ x @ top_v[b]) / (top_s[a][:, None] * top_s[b][None, :])
            cross_v = top_v[a].T @ top_v[b]
            sti = float(((cross_u * top_s[b]) @ cross_v.T).abs().sum()
                        + ((cross_u.T * top_s[a]) @ cross_v).abs().sum())
            mass = float(top_s[a].sum() + top_s[b].sum())
            left = float(cross_u.square().sum()) / kk
            right = float(cross_v.square().sum()) / kk
            basis = m_vectors[:, n - k_m:]  # the merged matrix's top k_M directions on the small side
            alignment = []
            for t, along in ((a, grams[a] + x.T), (b, grams[b] + x)):  # along = Δ_Mᵀ Δ_t
                if not k_m or norms[t] <= 0:
                    alignment.append(float("nan"))
                elif transposed:  # the left side is the small side: the basis is M's eigenvectors
                    alignment.append(math.sqrt(max(float((basis * (grams[t] @ basis)).sum()), 0.0)) / norms[t])
                else:  # U_M = Δ_M V_M Σ_M⁻¹, so U_Mᵀ Δ_t = Σ_M⁻¹ V_Mᵀ Δ_Mᵀ Δ_t
                    projected = (basis.T @ along) / m_sigma[:k_m].flip(0)[:, None]  # basis in ascending order
                    alignment.append(float(projected.norm()) / norms[t])
            rows[i] = {"k": kk, "sti": sti, "sti_normalized": sti / mass if mass > 0 else float("nan"),
                       "overlap": math.sqrt(max(left, 0.0) * max(right, 0.0)),
                       "alignment": float(sum(alignment) / 2), "merged_rank": k_m}
        del crosses, merged_vectors
    return rows


def key_pair_singular(matrices: torch.Tensor, pairs: Sequence[tuple[int, int]], k: int | None = None, *,
                      solver: str = "gram", norm_share: float = NORM_SHARE) -> list[dict]:
    """:data:`PAIR_COLUMNS` of each pair ``(a, b)`` (task indices) of one key's ``matrices [K, H, W]``:
    the numbers :func:`key_singular` gives for ``matrices[[a, b]]`` alone, with `k` directions per
    task (default :func:`default_rank` with K = 2, a pair's budget), each task decomposed once for
    every pair it is in.

    ``solver="svd"``: one batched ``torch.linalg.svd`` of the K matrices (compute dtype, as
    :func:`key_singular`), and one of each pair's sum (batched, K / 2 at a time): the same LAPACK
    work as :func:`key_singular` minus the repeats, the same numbers.

    ``solver="gram"`` (the default; about twice as fast on a CPU on ViT-B/32 shapes), in float64:
    each task's Gram matrix on the smaller side ``G_i = Δ_iᵀΔ_i`` and its ``eigh`` (σ² and V, the
    K tasks batched), and per pair the cross Gram ``Δ_aᵀΔ_b``, from which
    ``U_aᵀU_b = Σ_a⁻¹V_aᵀΔ_aᵀΔ_bV_bΣ_b⁻¹`` and the merged Gram ``G_a + G_b + Δ_aᵀΔ_b + Δ_bᵀΔ_a``
    (its ``eigh``, K / 2 pairs batched, gives k_M and the projections); U is never formed. STI
    is the block form of ``‖(UᵀU − I)Σ(VᵀV − I)‖₁`` for two tasks, ``‖C Σ_b Dᵀ‖₁ + ‖Cᵀ Σ_a D‖₁``
    (C, D the cross blocks ``U_aᵀU_b``, ``V_aᵀV_b``), leaving out the diagonal blocks
    ``U_iᵀU_i − I``, which are rounding. Equal to the SVD path within 1e-10 relative on float64
    matrices and 1e-4 on float32 ones (tested; about 2e-6 seen, the float32 SVD's own rounding).
    A pair whose decomposition would divide by a singular value below :data:`GRAM_FLOOR` of the
    largest (a zero or nearly rank-deficient matrix) is computed by :func:`key_singular` instead.
    """
    check_choice("solver", solver, SOLVERS)
    if matrices.ndim != 3 or matrices.shape[0] == 0:
        raise ParameterError(f"expected a [K, H, W] stack of matrices, got shape {tuple(matrices.shape)}")
    n_tasks = matrices.shape[0]
    pairs = [(int(a), int(b)) for a, b in pairs]
    for a, b in pairs:
        if not (0 <= a < n_tasks and 0 <= b < n_tasks) or a == b:
            raise ParameterError(f"pair ({a}, {b}) must name two different tasks of {n_tasks}")
    k = default_rank(matrices.shape, 2) if k is None else int(k)
    if k < 1:
        raise ParameterError(f"k must be >= 1, got {k}")
    if not pairs:
        return []
    if solver == "svd":
        return _svd_pairs(as_compute_tensor(matrices), pairs, k, norm_share)
    exact_dtype = compute_dtype(matrices.dtype)
    return _gram_pairs(matrices.to(torch.float64), pairs, k, norm_share, exact_dtype)


def _key_stack(task_vectors: TaskVectors, key: str, one_d: str, device: torch.device,
               dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.dtype]:
    """Entry `key` of every task as one ``[K, H, W]`` stack on `device` (in `dtype`, default the
    compute dtype), filled one task's entry at a time; and the entries' compute dtype."""
    first = as_compute_tensor(task_vectors[0][key], device)
    view = as_matrix(first, one_d)
    entry_dtype = first.dtype
    stack = torch.empty((len(task_vectors), *view.shape), dtype=dtype or entry_dtype, device=device)
    stack[0] = view
    del first, view
    for i, tv in enumerate(task_vectors[1:], start=1):
        entry = as_compute_tensor(tv[key], device)
        entry_dtype = torch.promote_types(entry_dtype, entry.dtype)
        if dtype is None and entry_dtype != stack.dtype:
            stack = stack.to(entry_dtype)
        stack[i] = entry.reshape(stack.shape[1:])
        del entry
    return stack, entry_dtype


def _decompositions(solver: str, shape: tuple[int, int], n_tasks: int, n_pairs: int) -> dict:
    """The dominant steps of one matrix for :func:`pair_singular_interference`: (step, count)."""
    if solver == "svd":
        return {"svd": n_tasks + n_pairs}
    return {"gram": n_tasks + n_pairs, "eigh": n_tasks + n_pairs}


def _step_scale(step: str, shape: tuple[int, int]) -> float:
    """How a step's cost grows with the matrix: ``m n²`` for a Gram product or an SVD, ``n³`` for
    an ``eigh`` (m ≥ n the matrix's sides)."""
    m, n = max(shape), min(shape)
    return float(n) ** 3 if step == "eigh" else float(m) * n * n


def _time_steps(solver: str, shape: tuple[int, int], device: torch.device) -> dict[str, float]:
    """Seconds of each dominant step on one random ``shape`` matrix on `device` (after a warm-up)."""
    m, n = max(shape), min(shape)
    generator = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *args: None)

    def timed(work) -> float:
        work()  # warm-up (first call of a solver on a device, allocations)
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        return time.perf_counter() - start

    if solver == "svd":
        matrix = torch.randn(shape, generator=generator).to(device)
        return {"svd": timed(lambda: torch.linalg.svd(matrix, full_matrices=False))}
    tall = torch.randn((m, n), generator=generator, dtype=torch.float64).to(device)
    gram = tall.T @ tall
    return {"gram": timed(lambda: tall.T @ tall), "eigh": timed(lambda: torch.linalg.eigh(gram))}


def pair_singular_estimate(shapes: Sequence[tuple[int, int]], n_tasks: int, n_pairs: int, *,
                           solver: str = "gram", device: torch.device | str | None = None) -> tuple[float, str]:
    """Seconds :func:`pair_singular_interference` should take on `device` for matrices of `shapes`
    (``[H, W]`` each), `n_tasks` tasks and `n_pairs` pairs, and the line it prints: the dominant
    steps (per matrix K + P Gram products and ``eigh``, or K + P SVDs) timed once on the most
    expensive shape and scaled to the others (``m n²`` and ``n³``), plus 10% for the pair products.
    A rough figure: the timing of one matrix on a busy machine varies by tens of percent."""
    check_choice("solver", solver, SOLVERS)
    target = resolve_device(device)
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if not shapes or n_pairs < 1:
        return 0.0, f"estimate: nothing to decompose ({len(shapes)} matrices, {n_pairs} pairs)"
    reference = max(shapes, key=lambda s: _step_scale("gram", s))
    timed = _time_steps(solver, reference, target)
    seconds = 1.1 * sum(timed[step] * count * _step_scale(step, shape) / _step_scale(step, reference)
                        for shape in shapes
                        for step, count in _decompositions(solver, shape, n_tasks, n_pairs).items())
    counts: dict[tuple[int, int], int] = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    listed = ", ".join(f"{c} × {h}×{w}" for (h, w), c in sorted(counts.items(), key=lambda kv: -kv[1]))
    what = "float64 Gram products and eigh" if solver == "gram" else "SVDs"
    threads = f", {torch.get_num_threads()} torch thread(s)" if target.type == "cpu" else ""
    one = " + ".join(f"{step} {value:.3g} s" for step, value in timed.items())
    return seconds, (f"estimate: pair singular measures of {len(shapes)} matrices ({listed}) for {n_tasks} tasks "
                     f"and {n_pairs} pairs: {n_tasks + n_pairs} {what} per matrix, about {seconds:.0f} s on "
                     f"{target}{threads} (timed on one {reference[0]}×{reference[1]} matrix: {one})")


def as_pairs(pairs, names: Sequence[str]) -> list[tuple[int, int]]:
    """`pairs` (``(a, b)`` of task names or indices; None: every pair in order) as index pairs."""
    if pairs is None:
        return list(itertools.combinations(range(len(names)), 2))
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ParameterError(f"a pair names two tasks, got {pair!r}")
        index = []
        for task in pair:
            if isinstance(task, str):
                if task not in names:
                    raise ParameterError(f"unknown task {task!r}; tasks: {', '.join(names)}")
                index.append(names.index(task))
            else:
                index.append(int(task))
        out.append(tuple(index))
    return out


def pair_singular_interference(task_vectors: TaskVectors, pairs=None, *, k: int | None = None,
                               include: Patterns = None, exclude: Patterns = None, one_d: str = "skip",
                               device: torch.device | str | None = None, solver: str = "gram",
                               norm_share: float = NORM_SHARE, progress: bool | None = False,
                               estimate: bool | None = None) -> pd.DataFrame:
    """One row per matrix and pair of tasks: ``key, shape, task_a, task_b`` and :data:`PAIR_COLUMNS`,
    the numbers :func:`singular_interference` gives for the pair's two task vectors alone.

    `pairs`: ``(a, b)`` by task name or index (default every pair). Streamed key by key: one key's
    ``[K, H, W]`` stack of the tasks in some pair on `device` (default CUDA when present), each task
    decomposed once for all its pairs (:func:`key_pair_singular`, `solver`); the memory is that
    stack (in float64 for the ``gram`` solver) and a few ``n × n`` Gram matrices (n the smaller
    side). `include` / `exclude`: globs restricting the keys (:mod:`freqmerge_viz.keys`), e.g.
    ``include="*.resblocks.11.*"`` for the last block. `progress`: a bar over the matrices.
    `estimate`: print :func:`pair_singular_estimate`'s line to stderr first (None: only when the
    job looks longer than :data:`ESTIMATE_SECONDS`); its seconds are in ``attrs["estimate_s"]``.
    """
    check_choice("solver", solver, SOLVERS)
    target = resolve_device(device)
    names = task_names(task_vectors)
    index_pairs = as_pairs(pairs, names)
    for a, b in index_pairs:
        if not (0 <= a < len(names) and 0 <= b < len(names)) or a == b:
            raise ParameterError(f"pair ({a}, {b}) must name two different tasks of {len(names)}")
    used = sorted({t for pair in index_pairs for t in pair})
    position = {t: i for i, t in enumerate(used)}
    local_pairs = [(position[a], position[b]) for a, b in index_pairs]
    vectors = [task_vectors[t] for t in used]
    keys = common_keys(task_vectors, include, exclude)
    shapes = {key: matrix_shape(entry_shape(task_vectors[0], key), one_d) for key in keys}
    matrices_keys = [key for key in keys if shapes[key] is not None]
    if not matrices_keys:
        raise EmptyInputError(f"none of the selected keys is a matrix (2-D or more); selected {len(keys)} key(s)")
    seconds = None
    if estimate or estimate is None:
        work = [shapes[key] for key in matrices_keys]
        flops = sum((len(used) + len(local_pairs)) * (2 * max(s) * min(s) ** 2 + 10 * min(s) ** 3) for s in work)
        if estimate or flops > 2e10:
            seconds, line = pair_singular_estimate(work, len(used), len(local_pairs), solver=solver, device=target)
            if estimate or seconds > ESTIMATE_SECONDS:
                print(line, file=sys.stderr, flush=True)
    rows = []
    with progress_bar(len(matrices_keys), "pair singular measures", progress, unit="matrix") as bar:
        for key in matrices_keys:
            shape = "×".join(map(str, shapes[key]))
            bar.set_postfix_str(shape)
            # the gram solver reads the entries straight into a float64 stack (no second copy)
            stack, entry_dtype = _key_stack(vectors, key, one_d, target, torch.float64 if solver == "gram" else None)
            kk = default_rank(stack.shape, 2) if k is None else int(k)
            if kk < 1:
                raise ParameterError(f"k must be >= 1, got {kk}")
            if solver == "gram":
                measured = _gram_pairs(stack, local_pairs, kk, norm_share, entry_dtype)
            else:
                measured = _svd_pairs(stack, local_pairs, kk, norm_share)
            del stack
            for (a, b), values in zip(index_pairs, measured):
                rows.append({"key": key, "shape": shape, "task_a": names[a], "task_b": names[b], **values})
            bar.update(1)
    out = pd.DataFrame(rows, columns=["key", "shape", "task_a", "task_b", *PAIR_COLUMNS])
    out.attrs.update({"solver": solver, "device": str(target), "k": k, "estimate_s": seconds})
    return out


def pair_means(table: pd.DataFrame, columns: Sequence[str] = ("sti", "sti_normalized", "overlap", "alignment")
               ) -> pd.DataFrame:
    """Per pair (``task_a, task_b``, in first-seen order): the means of `columns` over the matrices
    of :func:`pair_singular_interference`'s `table`, NaNs left out (as :func:`singular_interference`'s
    table averaged column by column)."""
    means = table.groupby(["task_a", "task_b"], sort=False)[list(columns)].mean()
    return means.reset_index()
