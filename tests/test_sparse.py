"""The TIES steps' float paths (hardshrink trims, sign-factor agreement, float counts) keep and
drop exactly the entries that their boolean-mask paths do, and the radix selection is exact."""

from __future__ import annotations

import pytest
import torch

from freqmerge_viz.methods import sparse
from freqmerge_viz.methods.base import MergeContext


def _stacks(dtype):
    """[K, 9, 13] stacks: continuous values, small integers (ties at every threshold), NaN,
    both infinities, −0.0 and subnormals."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 9, 13, generator=g, dtype=dtype)
    ints = torch.randint(-2, 3, (4, 9, 13), generator=g).to(dtype)
    nan = x.clone()
    nan.view(4, -1)[:, ::9] = float("nan")
    inf = x.clone()
    inf.view(4, -1)[:, ::7] = float("inf")
    inf.view(4, -1)[:, 3::11] = -float("inf")
    signed_zero = ints.clone()
    signed_zero[signed_zero == 0] = -0.0
    tiny = x * torch.finfo(dtype).tiny / 8
    return {"randn": x, "ints": ints, "nan": nan, "inf": inf, "signed_zero": signed_zero, "subnormal": tiny}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


def _masked_trim(stack: torch.Tensor, k: int) -> torch.Tensor:
    flat = stack.clone().view(stack.shape[0], -1)
    for task in range(flat.shape[0]):
        sparse.keep_top_k_(flat[task], flat[task].abs(), k)
    return flat.view(stack.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.2, 0.5, 0.9])
def test_hardshrink_trim_keeps_the_masked_top_k(dtype, density):
    for name, stack in _stacks(dtype).items():  # a task with a NaN takes the masks itself
        k = sparse.kept_entries(stack[0].numel(), density)
        assert _same(sparse.keep_top_magnitude_(stack.clone(), density), _masked_trim(stack, k)), name


def _contexts(k):
    for convention in ("peft", "mergekit"):
        for majority in ("total", "frequency"):
            for weights in (None, [1.5, -0.5, 0.0, 2.0][:k]):
                yield MergeContext({"convention": convention, "majority": majority, "weights": weights},
                                   [f"t{i}" for i in range(k)])


def _masked_agreeing(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    out = stack.clone()
    signs = sparse.sign_factors(ctx, out.shape[0])
    for block in sparse.entry_blocks(out):
        sparse._keep_agreeing_block_(block, ctx, signs)
    return out


def _masked_mean(stack: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    weights = ctx.params.get("weights") or [1.0] * stack.shape[0]
    by_weight = ctx.params["convention"] == "mergekit"
    total = torch.zeros(stack.shape[1:], dtype=stack.dtype)
    divisor = torch.zeros_like(total)
    for task in range(stack.shape[0]):
        total.add_(stack[task], alpha=weights[task])
        divisor.add_(stack[task] != 0, alpha=weights[task] if by_weight else 1.0)
    divisor = divisor.masked_fill_(divisor == 0, 1.0) if by_weight else divisor.clamp_min_(1.0)
    return total.div_(divisor)


@pytest.mark.parametrize("block_entries", [2**16, 10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_agreement_and_mean_equal_the_masks(dtype, block_entries, monkeypatch):
    # 117 entries per task: one block, or 12 blocks of 10 (those holding a NaN take the masks)
    monkeypatch.setattr(sparse, "BLOCK_ENTRIES", block_entries)
    for name, stack in _stacks(dtype).items():
        for ctx in _contexts(stack.shape[0]):
            expected = _masked_agreeing(stack, ctx)
            agreeing = sparse.keep_agreeing_(stack.clone(), ctx)
            assert _same(agreeing, expected), (name, ctx.params)
            assert _same(sparse.disjoint_mean(agreeing, ctx), _masked_mean(expected, ctx)), (name, ctx.params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("finish", [sparse.SELECT_FINISH, 3])
def test_radix_selection_is_exact_at_every_depth(dtype, finish, monkeypatch):
    # finish = 3: every histogram pass runs (12 + 12 + 8 bits, or 4 × 16) before the last few are ranked
    monkeypatch.setattr(sparse, "SELECT_FINISH", finish)
    monkeypatch.setattr(sparse, "BLOCK_ENTRIES", 1000)
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(4000, generator=g, dtype=dtype), torch.zeros(50, dtype=dtype),
                   -torch.zeros(20, dtype=dtype), torch.full((30,), 0.125, dtype=dtype),
                   torch.tensor([float("inf"), -float("inf"), 1e-310 if dtype == torch.float64 else 1e-40],
                                dtype=dtype)])
    for k in (1, 2, 1000, 2011, 2035, 2050, x.numel() - 1, x.numel()):
        assert sparse.kth_smallest_(x.clone(), k) == x.kthvalue(k).values.item(), k
    magnitude = x.abs()
    order = torch.sort(magnitude, descending=True, stable=True).indices
    index = torch.arange(x.numel())
    for k in (1, 1000, 4040, 4060, 4100):
        threshold, last = sparse.top_k_boundary(magnitude, k)
        chosen = (magnitude > threshold) | ((magnitude == threshold) & (index <= last))
        expected = torch.zeros(x.numel(), dtype=torch.bool)
        expected[order[:k]] = True
        assert torch.equal(chosen, expected), k
