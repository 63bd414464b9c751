"""WUDI-Merging: "Whoever Started the Interference Should End It" (Cheng et al. 2025).

Data-free: for a linear layer's weight, the interference a merged delta M causes on task t's
inputs is measured through the task vector itself (the rows of τ_t span, to first order, the
inputs the task moved the layer for), so the merged matrix is fitted to the task vectors alone:

    L(M) = Σ_t ‖(M − τ_t) τ_tᵀ‖²_F / ‖τ_t‖²_F

starting from task arithmetic's M₀ = Σ_t τ_t, by ``steps`` steps of Adam (learning rate ``lr``,
β = (0.9, 0.999), ε = 1e-8, no weight decay), as the paper and fusion-bench do. Every other key
(not 2-D, or outside ``matrix_scope``) gets ``mean_t τ_t``; everything is then multiplied by
``scaling`` (1.0: the paper adds M as it is). A task whose entry is all zero adds nothing to L
(the authors' code would divide by zero).

How it is computed here (the same iterates, far less memory and time than back-propagating
through the K products each step): the gradient is ``∇L = 2 (M G − B)`` with

    G = Σ_t τ_tᵀ τ_t / ‖τ_t‖²  (n × n),      B = Σ_t τ_t τ_tᵀ τ_t / ‖τ_t‖²  (m × n),

both accumulated once, one task at a time. A row of ∇L depends only on the same row of M, and
Adam updates every entry from its own gradient, so the rows evolve independently: the
optimisation runs block of rows by block of rows (about :data:`~freqmerge_viz.backend.BLOCK_ENTRIES`
entries on the CPU, the whole matrix on other devices), each block through all its steps with
block-sized Adam moments. The Adam update is torch's, written out (``exp_avg.lerp_``,
``exp_avg_sq``, bias corrections, ``addcdiv_``), and gives fusion-bench's result to rounding
(tests/test_baselines.py). Nothing is random: the result is deterministic for a given device.

Cost per matrix: m·n² multiply-adds per step (one ``M G`` product) plus K·(m·n·min(m, n)) once.
Memory: M, B and G (n²/(m·n) = n/m tensors of the key) plus one task's entry and its smaller
Gram matrix while accumulating: 3 + n/m + min(m, n)/max(m, n) tensors at most, whatever K
(4 for a tall 2:1 matrix; 7.25 for CLIP's 768 × 3072 ``c_proj``).

``progress`` shows a tqdm bar per matrix over its optimisation steps on stderr (None: only when
stderr is a terminal); the merge runs on the ``device`` it is given (``--device``).
"""

from __future__ import annotations

import math
import sys

import torch

from ..backend import BLOCK_ENTRIES
from .base import Param, register
from .subspace import MATRIX_SCOPE, SCALING, MatrixMerge

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

WUDI_PARAMS = (
    Param("steps", 300, "Adam steps per matrix (the paper: 300; fusion-bench's configuration: 400)", kind=int, low=0),
    Param("lr", 1e-5, "Adam learning rate (units of the weights per step)", low=0.0, low_open=True),
    SCALING,
    MATRIX_SCOPE,
    Param("progress", None, "a tqdm bar over each matrix's steps on stderr: true, false, or null = only when stderr "
                            "is a terminal", kind=bool, optional=True),
)


def wudi_terms(read, n_tasks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Σ_t τ_t, G, B)`` of one matrix, reading the K entries one at a time (see the module docstring)."""
    first = read(0)
    m, n = first.shape
    total = torch.zeros_like(first)
    target = torch.zeros_like(first)
    gram = first.new_zeros((n, n))
    del first
    for t in range(n_tasks):
        tau = read(t)
        total.add_(tau)
        squared = float(torch.linalg.vector_norm(tau)) ** 2
        if squared == 0.0:
            continue
        if n <= m:
            small = tau.T @ tau
            gram.add_(small, alpha=1.0 / squared)
            target.addmm_(tau, small, alpha=1.0 / squared)
        else:
            small = tau @ tau.T
            gram.addmm_(tau.T, tau, alpha=1.0 / squared)
            target.addmm_(small, tau, alpha=1.0 / squared)
        del tau, small
    return total, gram, target


def _bar(total: int, desc: str, progress: bool | None):
    show = progress if progress is not None else bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)


def wudi_optimise_(merged: torch.Tensor, gram: torch.Tensor, target: torch.Tensor, steps: int, lr: float,
                   rows: int | None = None, progress: bool | None = False, desc: str = "wudi") -> torch.Tensor:
    """Adam on L(M) from `merged` (M₀, overwritten with the result and returned), gradient
    ``2 (M G − B)`` (G = `gram`, B = `target`), `rows` rows at a time (default: all)."""
    m = merged.shape[0]
    rows = m if rows is None else max(1, min(rows, m))
    beta1, beta2 = ADAM_BETAS
    bar = _bar(steps * math.ceil(m / rows), desc, progress)
    try:
        for start in range(0, m, rows):
            param = merged[start:start + rows]
            fixed = target[start:start + rows]
            grad = torch.empty_like(param)
            denom = torch.empty_like(param)
            exp_avg = torch.zeros_like(param)
            exp_avg_sq = torch.zeros_like(param)
            for step in range(1, steps + 1):
                torch.mm(param, gram, out=grad)
                grad.sub_(fixed).mul_(2.0)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                correction2 = (1 - beta2 ** step) ** 0.5
                torch.sqrt(exp_avg_sq, out=denom)
                denom.div_(correction2).add_(ADAM_EPS)
                param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** step))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return merged


def block_rows(shape, device: torch.device) -> int:
    """Rows per optimisation block: about :data:`BLOCK_ENTRIES` entries on the CPU, all rows elsewhere."""
    m, n = shape
    return max(1, BLOCK_ENTRIES // max(n, 1)) if device.type == "cpu" else m


@register
class Wudi(MatrixMerge):
    name = "wudi"
    summary = ("WUDI-Merging (Cheng et al. 2025): per matrix, Adam from Σ τ_t on Σ_t ‖(M − τ_t) τ_tᵀ‖² / ‖τ_t‖² "
               "(no data); other keys are averaged")
    params = WUDI_PARAMS
    presets = {"paper": {}, "fusion_bench": {"steps": 400}}

    def matrix_delta(self, read, n_tasks, key, ctx):
        p = ctx.params
        merged, gram, target = wudi_terms(read, n_tasks)
        wudi_optimise_(merged, gram, target, p["steps"], p["lr"], block_rows(merged.shape, merged.device),
                       p["progress"], desc=f"wudi {key}")
        return merged.mul_(p["scaling"])
