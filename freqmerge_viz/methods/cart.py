"""CART: Centred Arithmetic with Rank-reduced Task vectors (Choi et al. 2025, "Revisiting
weight averaging for model merging").

Weight averaging is task arithmetic around a different origin: with the average
``θ_avg = θ_pre + τ̄`` (τ̄ = mean_t τ_t), every fine-tuned model is ``θ_avg + c_t`` with the
*centred* task vector ``c_t = θ_t − θ_avg = τ_t − τ̄``, and the c_t sum to zero. CART keeps only
the top singular directions of each centred matrix and adds them back, scaled:

    θ = θ_avg + λ · Σ_t LR_k(c_t),      k = max(1, ⌊ρ · r⌋),  r = min(m, n)

for every matrix key of ``matrix_scope`` (ρ = ``rank_ratio``; ρ = 0 adds nothing). On every
other key the centred vectors are added whole, and since they sum to zero that key is the
weight average θ_avg (to rounding). Two consequences, both tested: ρ = 1 (full rank) is weight
averaging on every key, whatever λ, and so is λ = 0 or ρ = 0; only a truncation (0 < ρ < 1)
moves the merge away from the average.

Defaults: ρ = 0.08 (the paper reports ranks near 8% as best across its settings) and λ = 2.0
(``prior`` in the authors' 8-task ViT-B/32 configuration); matrices are the layers' weight
matrices (``layer_matrices``). ``preset="official"`` is the authors' configuration
``ViT-b-32_8_CART.yaml`` as their static merge uses it: ρ = 0.12 (``initial_rank_ratio``) and
the keys whose name contains ``attn`` or ``mlp`` but neither ``ln`` nor ``bias`` (on open_clip
ViTs exactly the scope ``official``). fusion-bench 0.2.33 has no CART.

Memory: the mean, the running sum of low-rank parts and one task's centred matrix with its SVD;
each task's entry is read twice (for the mean, then centred), never K at once.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .base import Param, register
from .subspace import MATRIX_SCOPE, MatrixMerge, mean_of, top_triplets


def cart_rank(r: int, ratio: float) -> int:
    """Directions kept per centred matrix: 0 for ``ratio`` 0, else ``max(1, ⌊ratio · r⌋)``."""
    return 0 if ratio == 0 else max(1, int(ratio * r))


def cart_merge(read, n_tasks: int, ratio: float, scaling: float) -> torch.Tensor:
    """CART of one matrix from its K task entries: ``τ̄ + λ Σ_t LR_k(τ_t − τ̄)`` (the delta from θ_pre)."""
    mean = mean_of(read, n_tasks)
    k = cart_rank(min(mean.shape), ratio)
    if k == 0 or scaling == 0:
        return mean
    total = torch.zeros_like(mean)
    for t in range(n_tasks):
        centred = torch.sub(read(t), mean)
        u, s, vh = top_triplets(centred, k)
        del centred
        total.addmm_(u.mul_(s), vh)
        del u, s, vh
    return mean.add_(total, alpha=scaling)


@register
class CART(MatrixMerge):
    name = "cart"
    summary = ("CART (Choi et al. 2025): the weight average plus λ times the sum of each task's rank-k "
               "approximation of its centred task vector, per matrix; other keys are the weight average")
    params = (Param("rank_ratio", 0.08, "ρ: fraction of r = min(m, n) singular directions kept of each centred "
                                        "matrix, k = max(1, floor(ρ·r)); 0 keeps none", low=0.0, high=1.0),
              Param("scaling", 2.0, "λ: factor on the sum of the low-rank centred task vectors (no unit)", low=0.0),
              replace(MATRIX_SCOPE, default="layer_matrices", suggestion="layer_matrices", doc=
                  "which 2-D keys are low-rank centred (freqmerge_viz.scopes); layer_matrices = the layers' weight "
                  "matrices; official = keys with 'weight' and 'attn'/'mlp' (the authors' rule on open_clip); "
                  "every other key is the weight average"))
    presets = {"paper": {}, "official": {"rank_ratio": 0.12, "matrix_scope": "official"}}

    def matrix_delta(self, read, n_tasks, key, ctx):
        p = ctx.params
        return cart_merge(read, n_tasks, p["rank_ratio"], p["scaling"])

    def vector_delta(self, read, n_tasks, key, ctx):
        return mean_of(read, n_tasks)

    def transform(self, stack, key, ctx):
        """Per task, its model as CART rebuilds it around the average, ``τ̄ + LR_k(τ_t − τ̄)``, on
        matrices of the scope; the entry itself elsewhere."""
        if not self.is_matrix(key, stack.shape[1:], ctx):
            return stack
        mean = stack.mean(dim=0)
        k = cart_rank(min(mean.shape), ctx.params["rank_ratio"])
        for t in range(stack.shape[0]):
            centred = stack[t] - mean
            u, s, vh = top_triplets(centred, k)
            stack[t] = torch.addmm(mean, u * s, vh)
        return stack
