"""Iso-C and Iso-CTS: isotropic merging (Marczak et al., ICML 2025, "No Task Left Behind").

Task arithmetic's sum of a layer's task matrices has a few dominant singular values: the
directions shared by many tasks, while directions that only one task uses are small and get
drowned. Both methods flatten the spectrum of the merged matrix (all singular values equal),
so every kept direction counts the same.

**Iso-C** (``iso_c``), for a matrix key: with ``Σ_t τ_t = U diag(s) Vᵀ`` (thin SVD, r = min(m, n)
values),

    δ = α · s̄ · U Vᵀ,      s̄ = (1/r) Σ_i s_i,

i.e. the sum's orthogonal polar factor times its mean singular value; the singular values of
δ are all α·s̄ (tested), its singular vectors those of the sum.

**Iso-CTS** (``iso_cts``) keeps only the top c directions of the sum (the common subspace,
``U_c``, ``V_c``, ``s_c``) and fills the remaining r − c with d directions per task taken
from what the common subspace misses: per task, ``R_t = τ_t − U_c U_cᵀ τ_t`` and its top d
singular triplets. With c₀ = ⌊f·r⌋ (f = ``common_fraction``), d = round((r − c₀)/K) (Python's
round, half to even, as the authors' code) and c = r − K·d, so that every slot is filled;
where K·d would exceed r (a small f with r not a multiple of K; the authors' code then slices
with a negative index) d is lowered to ⌊r/K⌋. The r directions ``Û = [U_1,d … U_K,d | U_c]``
and ``V̂`` likewise are orthogonalised (polar factors, as in TSV-M) and given one singular value,
the mean of the r collected ones ``ŝ = [s_1,d … s_K,d, s_c]``:

    δ = α · mean(ŝ) · P(Û) P(V̂)ᵀ

With f = 1 (no task-specific directions) Iso-CTS is Iso-C (tested).

Every other key gets ``α · mean_t τ_t``. α (``scaling``) defaults to 1.0 (fusion-bench's
``scaling_factor``); the authors pick α on validation data. The authors' code and fusion-bench
0.2.33's ``iso_c`` / ``iso_cts`` compute exactly this with ``matrix_scope="two_d"``.

Memory: Iso-C holds the sum and its SVD (factors and LAPACK workspace); Iso-CTS also the
common basis, Û, V̂ and one task's residual and its SVD; the K entries are read one at a time
(Iso-CTS reads each twice: for the sum, then for its residual).
"""

from __future__ import annotations

import torch

from .base import Param, register
from .subspace import MATRIX_SCOPE, SCALING, MatrixMerge, polar, sum_of


def iso_c_merge(total: torch.Tensor) -> torch.Tensor:
    """Iso-C of one matrix from the sum of its task entries (before α): ``mean(s) · U Vᵀ``."""
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return (u @ vh).mul_(s.mean())


def iso_cts_dimensions(r: int, n_tasks: int, fraction: float) -> tuple[int, int]:
    """``(c, d)``: common directions and directions per task for a rank-`r` matrix, c + K·d = r."""
    start = int(r * fraction)
    per_task = min(round((r - start) / n_tasks), r // n_tasks)
    return r - n_tasks * per_task, per_task


def iso_cts_merge(read, n_tasks: int, fraction: float) -> torch.Tensor:
    """Iso-CTS of one matrix from its K task entries (before α)."""
    total = sum_of(read, n_tasks)
    m, n = total.shape
    r = min(m, n)
    common, per_task = iso_cts_dimensions(r, n_tasks, fraction)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    del total
    u_hat = u.new_empty(u.shape)
    v_hat = vh.new_empty(vh.shape)
    s_hat = s.new_empty(s.shape)
    tail = n_tasks * per_task
    u_hat[:, tail:] = u[:, :common]
    v_hat[tail:] = vh[:common]
    s_hat[tail:] = s[:common]
    del u, s, vh
    basis = u_hat[:, tail:]
    for t in range(n_tasks):
        entry = read(t)
        residual = entry - basis @ (basis.T @ entry)
        del entry
        ut, st, vht = torch.linalg.svd(residual, full_matrices=False)
        del residual
        u_hat[:, t * per_task:(t + 1) * per_task] = ut[:, :per_task]
        v_hat[t * per_task:(t + 1) * per_task] = vht[:per_task]
        s_hat[t * per_task:(t + 1) * per_task] = st[:per_task]
        del ut, st, vht
    del basis
    left = polar(u_hat)
    del u_hat
    right = polar(v_hat)
    del v_hat
    return (left @ right).mul_(s_hat.mean())


@register
class IsoC(MatrixMerge):
    name = "iso_c"
    summary = ("Iso-C (Marczak et al. 2025): per matrix, the sum of the task vectors with all its singular "
               "values set to their mean; other keys are averaged")
    params = (SCALING, MATRIX_SCOPE)

    def matrix_delta(self, read, n_tasks, key, ctx):
        return iso_c_merge(sum_of(read, n_tasks)).mul_(ctx.params["scaling"])


@register
class IsoCTS(MatrixMerge):
    name = "iso_cts"
    summary = ("Iso-CTS (Marczak et al. 2025): the sum's top common directions plus each task's own top "
               "directions outside them, orthogonalised, all with one singular value; other keys are averaged")
    params = (SCALING, Param("common_fraction", 0.8, "f: fraction of r = min(m, n) directions taken from the sum "
                                                     "(the common subspace); the rest is shared equally by the "
                                                     "tasks", low=0.0, high=1.0), MATRIX_SCOPE)

    def matrix_delta(self, read, n_tasks, key, ctx):
        return iso_cts_merge(read, n_tasks, ctx.params["common_fraction"]).mul_(ctx.params["scaling"])
