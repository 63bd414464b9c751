"""TSV-M: Task Singular Vectors merge (Gargiulo et al., CVPR 2025).

For a matrix key of shape m × n (rank at most r = min(m, n)) and K tasks, each task keeps
k = ⌊f·r⌋ of its own singular directions (f = ``rank_fraction``, by default 1/K, so that the K
tasks share the r available directions): ``τ_t ≈ U_t,k diag(s_t,k) V_t,kᵀ``. The K bases are put
side by side, ``Û = [U_1,k | … | U_K,k]`` (m × K·k) and ``V̂ = [V_1,k | … | V_K,k]``, zero-padded
to r columns when K·k < r, with the singular values ``ŝ`` in the same order. Where two tasks'
directions overlap they interfere; TSV-M removes that by replacing each basis with its
orthogonal polar factor (the nearest matrix with orthonormal columns: ``P(X) = U_X V_Xᵀ`` from
``X = U_X Σ_X V_Xᵀ``). The merged delta is

    δ = α · P(Û) diag(ŝ) P(V̂)ᵀ

and every other key gets ``α · mean_t τ_t`` (:class:`~.subspace.MatrixMerge`).

If the tasks' kept directions are already mutually orthogonal (on both sides), the polar
factors leave them unchanged and δ = α · Σ_t (rank-k part of τ_t); in particular task vectors
of rank ≤ k with orthogonal row and column spaces merge to task arithmetic (tested). A key
with r < K keeps no direction (k = 0, δ = 0), as in the authors' code.

α (``scaling``) defaults to 1.0, fusion-bench's default; the authors' evaluation picks α on
validation data from 0.1, 0.2, …, 3.0. fusion-bench's ``TaskSingularVectorMerging`` with a
single ``alpha`` is this method with ``matrix_scope="two_d"`` (the default); with a list of
alphas it scales each task vector before the SVDs, which is ``weights`` here.

Memory: the K entries are read one at a time (each task's SVD is taken and dropped), so a key
holds Û, V̂, one task's entry and one SVD's factors and LAPACK workspace: about 6 tensors of
the key whatever K (measured in tests/test_methods.py; the README states the bound).
"""

from __future__ import annotations

import torch

from .base import Param, register
from .subspace import MATRIX_SCOPE, SCALING, MatrixMerge, polar, top_triplets

RANK_FRACTION = Param("rank_fraction", None, "f: fraction of r = min(m, n) singular directions each task keeps, "
                                             "k = floor(f·r) per task (default 1/K)", low=0.0, high=1.0,
                      low_open=True, optional=True)


def tsv_rank(r: int, n_tasks: int, fraction: float | None) -> int:
    """Directions each task keeps: ``⌊r/K⌋`` (``fraction`` None, the authors' choice; computed as
    ``int(r · (1/K))``, as their code does) or ``⌊fraction · r⌋``."""
    return int(r * (1.0 / n_tasks if fraction is None else fraction))


def tsv_merge(read, n_tasks: int, fraction: float | None = None, weights=None) -> torch.Tensor:
    """TSV-M of one matrix from its K task entries (``read(t)``, each m × n), before α."""
    first = read(0)
    m, n = first.shape
    r = min(m, n)
    k = tsv_rank(r, n_tasks, fraction)
    width = max(r, n_tasks * k)
    u_hat = first.new_zeros((m, width))
    v_hat = first.new_zeros((width, n))
    s_hat = first.new_zeros(width)
    del first
    for t in range(n_tasks):
        entry = read(t)
        if weights is not None:
            entry = entry * float(weights[t])
        u, s, vh = top_triplets(entry, k)
        del entry
        u_hat[:, t * k:(t + 1) * k] = u
        s_hat[t * k:(t + 1) * k] = s
        v_hat[t * k:(t + 1) * k] = vh
        del u, s, vh
    left = polar(u_hat)
    del u_hat
    right = polar(v_hat)
    del v_hat
    return left.mul_(s_hat) @ right


@register
class TaskSingularVectors(MatrixMerge):
    name = "tsv"
    summary = ("TSV-M (Gargiulo et al. 2025): each task keeps its top 1/K singular directions per matrix; the "
               "stacked bases are orthogonalised (polar factors) before summing; other keys are averaged")
    params = (SCALING, RANK_FRACTION, MATRIX_SCOPE,
              Param("weights", None, "per-task factors on τ_t before the SVDs (fusion-bench's list-valued "
                                     "alpha), on every key; default all 1",
                    kind=list, optional=True))

    def matrix_delta(self, read, n_tasks, key, ctx):
        p = ctx.params
        return tsv_merge(read, n_tasks, p["rank_fraction"], p.get("weights")).mul_(p["scaling"])

    def transform(self, stack, key, ctx):
        """Per task: its rank-k truncation on matrices of the scope (what TSV-C stores), the
        entry itself elsewhere."""
        if not self.is_matrix(key, stack.shape[1:], ctx):
            return stack
        r = min(stack.shape[1:])
        k = tsv_rank(r, stack.shape[0], ctx.params["rank_fraction"])
        for t in range(stack.shape[0]):
            u, s, vh = top_triplets(stack[t], k)
            stack[t] = (u * s) @ vh
        return stack

    def vector_delta(self, read, n_tasks, key, ctx):
        weights = ctx.params.get("weights") or [1.0] * n_tasks
        total = read(0).mul(float(weights[0]))
        for t in range(1, n_tasks):
            total.add_(read(t), alpha=float(weights[t]))
        return total.mul_(ctx.params["scaling"] / n_tasks)
