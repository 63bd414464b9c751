"""What the singular-value merges share: which keys are matrices, reading a key's task entries,
thin SVDs and orthogonalisation.

TSV-M, Iso-C, Iso-CTS, CART and WUDI (modules :mod:`.tsv`, :mod:`.isotropic`, :mod:`.cart`,
:mod:`.wudi`) treat a key in one of two ways: a *matrix* (exactly two dimensions and selected by
the method's ``matrix_scope``) gets the method's own rule; every other key (biases, norms,
class tokens, convolution kernels, matrices outside the scope) gets the mean of the task
vectors, as the authors' code and fusion-bench do, times the method's ``scaling`` where it has
one. A merge reads a key's K entries one task at a time (:func:`task_reader`) instead of
holding a ``[K, *shape]`` stack; readers return tensors the caller must not modify (a
materialised task vector hands out its own storage).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..backend import as_compute_tensor
from ..scopes import selects
from ..taskvector import entry_shape
from .base import MergeContext, MergeMethod, Param, ScopeParam

Reader = Callable[[int], torch.Tensor]
"""``read(t)``: task t's entry of one key in the compute dtype; never modified in place."""

MATRIX_SCOPE = ScopeParam(
    "matrix_scope", "two_d",
    "which 2-D keys get the method's matrix rule (freqmerge_viz.scopes); two_d = every 2-D key, as the authors' "
    "code and fusion-bench (the authors also leave out CLIP's text_projection); keys outside it, and every key "
    "that is not 2-D, get the mean of the task vectors", suggestion="two_d")
SCALING = Param("scaling", 1.0, "α: factor on the merged delta of every key, θ = θ_pre + α·δ (no unit)", low=0.0)


def task_reader(task_vectors: Sequence, key: str, device: torch.device) -> Reader:
    """A :data:`Reader` of `key` over `task_vectors`, each entry read when asked, on `device`."""
    return lambda t: as_compute_tensor(task_vectors[t][key], device)


def stack_reader(stack: torch.Tensor) -> Reader:
    """A :data:`Reader` over the rows of a ``[K, *shape]`` stack."""
    return lambda t: stack[t]


def mean_of(read: Reader, n_tasks: int) -> torch.Tensor:
    """``(1/K) Σ_t read(t)``, summed one task at a time (two tensors of the key at once)."""
    total = read(0).clone()
    for t in range(1, n_tasks):
        total.add_(read(t))
    return total.div_(n_tasks)


def sum_of(read: Reader, n_tasks: int) -> torch.Tensor:
    """``Σ_t read(t)``, summed one task at a time."""
    total = read(0).clone()
    for t in range(1, n_tasks):
        total.add_(read(t))
    return total


def polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``U Vᵀ`` of ``matrix = U Σ Vᵀ`` (thin SVD): the matrix with
    orthonormal columns (or rows, if wider than tall) nearest to `matrix` in Frobenius norm.
    Directions of zero singular values are completed arbitrarily, as the SVD chooses them."""
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def top_triplets(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `k` leading singular triplets ``(U_k [m×k], s_k [k], Vᵀ_k [k×n])`` of `matrix` (thin SVD)."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :k].clone(), s[:k].clone(), vh[:k].clone()


def low_rank(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """The best rank-`k` approximation ``U_k diag(s_k) Vᵀ_k`` of `matrix` (Eckart–Young)."""
    u, s, vh = top_triplets(matrix, k)
    return (u * s) @ vh


class MatrixMerge(MergeMethod):
    """A merge with its own rule for the matrices of ``matrix_scope`` (:meth:`matrix_delta`) and
    the scaled mean of the task vectors for every other key (:meth:`vector_delta`)."""

    def is_matrix(self, key: str, shape: Sequence[int], ctx: MergeContext) -> bool:
        """Whether `key` of `shape` gets the matrix rule: exactly 2-D and in ``matrix_scope``."""
        return len(shape) == 2 and selects(ctx.params["matrix_scope"], key, 2)

    def matrix_delta(self, read: Reader, n_tasks: int, key: str, ctx: MergeContext) -> torch.Tensor:
        """The merged delta of one matrix key from its K task entries."""
        raise NotImplementedError

    def vector_delta(self, read: Reader, n_tasks: int, key: str, ctx: MergeContext) -> torch.Tensor:
        """Every other key: ``scaling · mean_t τ_t``."""
        return mean_of(read, n_tasks).mul_(ctx.params.get("scaling", 1.0))

    def delta(self, read: Reader, n_tasks: int, shape: Sequence[int], key: str, ctx: MergeContext) -> torch.Tensor:
        if self.is_matrix(key, shape, ctx):
            return self.matrix_delta(read, n_tasks, key, ctx)
        return self.vector_delta(read, n_tasks, key, ctx)

    def key_delta(self, task_vectors, key, ctx, device):
        """As :meth:`MergeMethod.key_delta`, reading one task at a time; a key no task changed
        (every entry zero) gives a zero delta without its SVDs (its entries are read once more
        to tell, stopping at the first nonzero one)."""
        shape = entry_shape(task_vectors[0], key)
        read = task_reader(task_vectors, key, device)
        for t in range(len(task_vectors)):
            entry = read(t)
            if bool(entry.any()):
                break
        else:
            return entry.zero_()
        del entry
        return self.delta(read, len(task_vectors), shape, key, ctx)

    def merge_key(self, stack, key, ctx):
        return self.delta(stack_reader(stack), stack.shape[0], tuple(stack.shape[1:]), key, ctx)
