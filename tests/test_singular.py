"""Singular spectra of task-vector matrices and the singular-subspace interference measures
(freqmerge_viz.singular): identities and hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch

from freqmerge_viz import singular as sg
from freqmerge_viz.errors import EmptyInputError, FreqMergeError, ParameterError
from freqmerge_viz.taskvector import TaskVector

F64 = torch.float64


def orthonormal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    return q


def low_rank(h: int, w: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(h, rank, dtype=F64, generator=g) @ torch.randn(rank, w, dtype=F64, generator=g)


def test_a_rank_r_matrix_has_exactly_r_nonzero_singular_values():
    for rank in (1, 3, 5):
        values = sg.singular_values(low_rank(12, 7, rank, seed=rank))
        assert values.numel() == 7 and values.dtype == F64
        assert int((values > 1e-9 * values[0]).sum()) == rank
        assert torch.all(values[:-1] >= values[1:])


def test_energy_shares_and_ranks_on_hand_checked_spectra():
    values = torch.tensor([2.0, 1.0, 1.0], dtype=F64)  # energies 4, 1, 1 of 6
    assert sg.energy_share(values, 0) == 0.0
    assert sg.energy_share(values, 1) == pytest.approx(4 / 6)
    assert sg.energy_share(values, 3) == pytest.approx(1.0) == sg.energy_share(values, 10)
    assert sg.stable_rank(values) == pytest.approx(6 / 4)
    p = torch.tensor([0.5, 0.25, 0.25], dtype=F64)
    assert sg.effective_rank(values) == pytest.approx(math.exp(-float((p * p.log()).sum())))
    # sqrt of the captured energy share: 0.816, 0.913, 1
    assert sg.rank_for_norm_share(values, 0.95) == 3
    assert sg.rank_for_norm_share(values, 0.9) == 2
    assert sg.rank_for_norm_share(values, 0.8) == 1
    flat, one = torch.ones(5, dtype=F64), torch.tensor([3.0, 0, 0, 0], dtype=F64)
    assert sg.effective_rank(flat) == pytest.approx(5.0) and sg.isotropy(flat) == pytest.approx(1.0)
    assert sg.effective_rank(one) == pytest.approx(1.0) and sg.isotropy(one) == pytest.approx(0.25)
    assert sg.stable_rank(flat) == pytest.approx(5.0)
    zero = torch.zeros(3, dtype=F64)
    assert sg.effective_rank(zero) == 0.0 and sg.rank_for_norm_share(zero) == 0 and math.isnan(sg.energy_share(zero, 1))
    with pytest.raises(ParameterError):
        sg.rank_for_norm_share(values, 1.5)


def test_the_energy_share_of_all_directions_is_one():
    values = sg.singular_values(torch.randn(9, 6, dtype=F64, generator=torch.Generator().manual_seed(3)))
    assert sg.energy_share(values, values.numel()) == pytest.approx(1.0, abs=1e-12)


def rank_one(u: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    return sigma * torch.outer(u, v)


def test_sti_of_two_rank_one_tasks_by_hand():
    # Δ1 = 2·e1 e1ᵀ, Δ2 = 3·u vᵀ with cos(u, e1) = a, cos(v, e1) = b; with k = 1 and two tasks the
    # only nonzero blocks are U1ᵀU2 Σ2 V2ᵀV1 = a·3·b and U2ᵀU1 Σ1 V1ᵀV2 = a·2·b: STI = |ab|·(2 + 3)
    theta, phi = 0.3, 1.1
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    u = torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=F64)
    v = torch.tensor([math.cos(phi), 0.0, math.sin(phi)], dtype=F64)
    tops = [sg.top_singular(rank_one(e1, e1, 2.0), 1), sg.top_singular(rank_one(u, v, 3.0), 1)]
    a, b = math.cos(theta), math.cos(phi)
    sti = sg.singular_task_interference(tops)
    assert sti == pytest.approx(abs(a * b) * 5.0)
    assert sg.normalized_sti(sti, tops) == pytest.approx(abs(a * b))  # (K − 1)² Σσ = 5
    assert sg.subspace_overlap(*tops) == pytest.approx(abs(a * b))  # sqrt(a² · b²)


def test_identical_tasks_have_maximal_overlap_and_orthogonal_ones_none():
    matrix = low_rank(10, 8, 4, seed=1)
    same = sg.key_singular(torch.stack([matrix] * 3), k=4)
    values = sg.singular_values(matrix)[:4]
    assert same.sti == pytest.approx(4 * 3 * float(values.sum()), rel=1e-9)  # (K−1)² Σ_i ‖Σ_i‖₁ = 4 · 3‖Σ‖₁
    assert same.sti_normalized == pytest.approx(1.0, rel=1e-9)
    assert same.overlap == pytest.approx(1.0, rel=1e-9)
    # the merged matrix is 3Δ: its top k_M directions keep sqrt(share) >= 0.95 of each task's norm
    kept = math.sqrt(sg.energy_share(sg.singular_values(matrix), same.merged_rank))
    assert kept >= 0.95 and same.alignment == pytest.approx([kept] * 3, rel=1e-9)
    assert same.energy_top_k == pytest.approx([1.0] * 3)
    left, right = orthonormal(10, 2), orthonormal(8, 3)
    sigma = torch.diag(torch.tensor([3.0, 2.0], dtype=F64))
    a = left[:, :2] @ sigma @ right[:, :2].T
    b = left[:, 2:4] @ sigma @ right[:, 2:4].T
    apart = sg.key_singular(torch.stack([a, b]), k=2)
    assert apart.sti == pytest.approx(0.0, abs=1e-12)
    assert apart.overlap == pytest.approx(0.0, abs=1e-12)
    # orthogonal on the left only: STI and the overlap vanish too (both sides must be shared)
    c = left[:, 2:4] @ sigma @ right[:, :2].T
    assert sg.key_singular(torch.stack([a, c]), k=2).sti == pytest.approx(0.0, abs=1e-12)


def test_alignment_ratio_by_hand():
    basis = torch.tensor([[1.0], [0.0]], dtype=F64)
    assert sg.alignment_ratio(torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64), basis) == pytest.approx(1.0)
    assert sg.alignment_ratio(torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=F64), basis) == pytest.approx(0.0)
    assert sg.alignment_ratio(torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64), basis) == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(sg.alignment_ratio(torch.zeros(2, 2, dtype=F64), basis))
    # merged = Δ1 + Δ2, σ = 3 along e1 and 1 along e2: one direction keeps sqrt(9/10) = 0.9487 of the norm
    d1 = torch.diag(torch.tensor([3.0, 0.0], dtype=F64))
    d2 = torch.diag(torch.tensor([0.0, 1.0], dtype=F64))
    measures = sg.key_singular(torch.stack([d1, d2]), k=1)
    assert measures.merged_rank == 2 and measures.alignment == pytest.approx([1.0, 1.0])
    measures = sg.key_singular(torch.stack([d1, d2]), k=1, norm_share=0.9)
    assert measures.merged_rank == 1 and measures.alignment == pytest.approx([1.0, 0.0])


def test_default_rank_is_tsv_merges_budget():
    assert sg.default_rank((64, 256), 8) == 8
    assert sg.default_rank((3, 5), 8) == 1
    assert sg.key_singular(torch.randn(4, 6, 10, dtype=F64)).k == 1
    assert sg.key_singular(torch.randn(2, 6, 10, dtype=F64)).chance_overlap == pytest.approx(3 / 6)


def test_singular_interference_streams_matrices_of_task_vectors():
    g = torch.Generator().manual_seed(5)
    vectors = [TaskVector.from_tensors({"blocks.0.w": torch.randn(6, 4, generator=g), "bias": torch.randn(6, generator=g),
                                        "conv": torch.randn(3, 2, 2, 2, generator=g)}, name=f"t{i}") for i in range(3)]
    table = sg.singular_interference(vectors, k=2)
    assert list(table["key"]) == ["blocks.0.w", "conv"]
    assert list(table["shape"]) == ["6×4", "3×8"]
    assert set(sg.SINGULAR_COLUMNS) <= set(table.columns)
    assert table[["sti", "overlap", "alignment", "effective_rank"]].notna().all().all()
    doubled = sg.singular_interference(vectors, k=2, transform=lambda stack, key: stack * 2)
    assert doubled["sti"].to_list() == pytest.approx((2 * table["sti"]).to_list())  # weight units
    assert doubled["overlap"].to_list() == pytest.approx(table["overlap"].to_list())  # scale-free
    with pytest.raises(EmptyInputError):
        sg.singular_interference(vectors, include="bias")


def test_bad_inputs_are_typed_errors():
    with pytest.raises(ParameterError):
        sg.singular_values(torch.zeros(3))
    with pytest.raises(ParameterError):
        sg.key_singular(torch.zeros(3, 3))
    with pytest.raises(ParameterError):
        sg.top_singular(torch.zeros(3, 3), 0)
    with pytest.raises(FreqMergeError):
        sg.singular_task_interference([])
