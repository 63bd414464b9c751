"""Tests of freqmerge_viz.experts against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import freqmerge_viz as fmv
from freqmerge_viz import TaskVector
from freqmerge_viz.errors import EmptyInputError, MissingKeysError, ParameterError, ShapeMismatchError
from freqmerge_viz.experts import (Expert, extract_experts, kept_count, magnitude_prune,
                                   official_rescale, paper_rescale, storage_table, svd_experts,
                                   SVDFactors, top_magnitude_mask)


def t(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# Two tasks, two keys, six entries each (see test_paper_rescale_hand_example for the numbers).
TASK_A = {"w": t([4.0, -2.0, 1.0, 0.0]), "b": t([1.0, -3.0])}
TASK_B = {"w": t([1.0, 1.0, -1.0, 2.0]), "b": t([0.0, 2.0])}


def two_tasks():
    return [TaskVector.from_tensors(TASK_A, "a"), TaskVector.from_tensors(TASK_B, "b")]


# --------------------------------------------------------------------------- selection M(v, d)
def test_top_half_of_hand_made_vector():
    v = t([0.1, -5.0, 3.0, 0.2, -0.05, 4.0])
    assert magnitude_prune(v, 0.5).tolist() == [0.0, -5.0, 3.0, 0.0, 0.0, 4.0]
    assert top_magnitude_mask(v, 0.5).tolist() == [False, True, True, False, False, True]


def test_per_row_keeps_top_of_each_row_and_per_tensor_the_global_top():
    m = t([[1.0, -2.0, 3.0, 0.5], [4.0, 0.125, -0.25, 0.375]])
    assert magnitude_prune(m, 0.5, per_row=True).tolist() == [[0.0, -2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.375]]
    assert magnitude_prune(m, 0.5).tolist() == [[1.0, -2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]]


def test_ties_at_threshold_go_to_the_lowest_index():
    assert top_magnitude_mask(t([1.0, -1.0, 1.0, 1.0]), 0.5).tolist() == [True, True, False, False]
    assert top_magnitude_mask(t([0.5, 2.0, -1.0, 1.0, 1.0]), 0.4).tolist() == [False, True, True, False, False]
    rows = top_magnitude_mask(t([[3.0, 3.0, 3.0, 3.0], [0.0, 7.0, 7.0, 7.0]]), 0.5, per_row=True)
    assert rows.tolist() == [[True, True, False, False], [False, True, True, False]]


def test_kept_count_rules():
    assert kept_count(6, 0.5) == 3
    assert kept_count(5, 0.5) == 2
    assert kept_count(50, 0.01) == 0
    assert kept_count(768, 0.01) == 7
    assert kept_count(5, 0.5, count="ceil") == 3
    assert kept_count(100, 0.07, count="ceil") == 7
    assert kept_count(50, 0.01, count="ceil") == 1
    assert kept_count(768, 0.01, count="ceil") == 8
    assert kept_count(10, 1.0) == kept_count(10, 1.0, count="ceil") == 10


def test_experts_and_merge_methods_count_density_alike():
    # floor(d * n) in both: 0.3 of 25 entries keeps 7 (ceil would keep 8).
    v = torch.arange(1.0, 26.0).reshape(5, 5)
    pruned = fmv.merge("magnitude_prune", {"w": torch.zeros(5, 5)}, [{"w": v}], density=0.3)["w"]
    expert, = fmv.extract_experts([fmv.TaskVector.from_tensors({"w": v})], 0.3, rescale=None)
    assert int((pruned != 0).sum()) == expert.parameters_kept() == kept_count(25, 0.3) == 7
    assert torch.equal(expert.dense("w"), pruned)


def test_floor_count_can_keep_nothing_and_scalars_stay_whole():
    assert top_magnitude_mask(t([1.0, 2.0, 3.0]), 0.3, count="floor").sum() == 0
    assert top_magnitude_mask(t(5.0), 0.01, count="floor").item() is True


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=60),
       st.floats(0.01, 1.0))
def test_selection_keeps_k_entries_none_smaller_than_a_dropped_one(values, density):
    v = t(values)
    mask = top_magnitude_mask(v, density)
    assert int(mask.sum()) == kept_count(len(values), density)
    if mask.any() and (~mask).any():
        assert v[mask].abs().min() >= v[~mask].abs().max()


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.3, float("nan")])
def test_density_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ParameterError, match=repr(bad).replace(".", r"\.")):
        extract_experts(two_tasks(), bad)
    with pytest.raises(ParameterError):
        top_magnitude_mask(t([1.0, 2.0]), bad)


def test_density_one_keeps_everything_and_without_rescale_reproduces_the_task_vector():
    tasks = two_tasks()
    experts = extract_experts(tasks, 1.0, rescale=None)
    for expert, tv in zip(experts, tasks):
        assert expert.parameters_kept() == 6
        for key in tv:
            assert torch.equal(expert.dense(key), tv[key])
    assert [e.scale for e in extract_experts(tasks, 1.0, rescale="paper")] == [0.0, 0.0]


# --------------------------------------------------------------------------- rescaling μ
def test_paper_rescale_hand_example():
    experts = extract_experts(two_tasks(), 0.5, rescale="paper")
    # kept (d = 0.5: 2 of 4 in w, 1 of 2 in b): a -> 4, -2, -3; b -> 1 (tie, lowest index), 2, 2
    assert experts[0].indices["w"].tolist() == [0, 1] and experts[0].indices["b"].tolist() == [1]
    assert experts[1].indices["w"].tolist() == [0, 3] and experts[1].indices["b"].tolist() == [1]
    e_kept = [9 / 6, 5 / 6]
    e_all = [11 / 6, 7 / 6]
    lam = [11 / 18, 7 / 18]
    for i in range(2):
        expected = -e_kept[i] * math.log(0.5) / (lam[i] * e_all[i])
        assert experts[i].scale == pytest.approx(expected, rel=1e-12)
    assert experts[0].scale == pytest.approx(1.5 * math.log(2) * 108 / 121, rel=1e-12)


def test_paper_rescale_with_given_coefficients():
    experts = extract_experts(two_tasks(), 0.5, rescale="paper", coefficients=[0.5, 0.5])
    assert experts[0].scale == pytest.approx(1.5 * math.log(2) / (0.5 * 11 / 6), rel=1e-12)
    assert experts[1].scale == pytest.approx((5 / 6) * math.log(2) / (0.5 * 7 / 6), rel=1e-12)
    with pytest.raises(ParameterError, match="coefficient"):
        extract_experts(two_tasks(), 0.5, rescale="paper", coefficients=[1.0])
    with pytest.raises(ParameterError, match="paper"):
        extract_experts(two_tasks(), 0.5, rescale="official", coefficients=[0.5, 0.5])


def test_official_rescale_hand_example():
    experts = extract_experts(two_tasks(), 0.5, rescale="official")
    # per-key means of |M|: a (6/4, 3/2), b (3/4, 2/2); of |v|: a (7/4, 4/2), b (5/4, 2/2)
    kept = [(1.5 + 1.5) / 2, (0.75 + 1.0) / 2]
    full = [(1.75 + 2.0) / 2, (1.25 + 1.0) / 2]
    for i in range(2):
        expected = -math.log10(0.5) * kept[i] / (0.5 * full[i])
        assert experts[i].scale == pytest.approx(expected, rel=1e-12)
    assert experts[0].scale == pytest.approx(math.log10(2) * 1.6, rel=1e-12)


def test_no_rescale_is_one_and_scale_reference_enters_the_denominator():
    assert [e.scale for e in extract_experts(two_tasks(), 0.5, rescale=None)] == [1.0, 1.0]
    base = extract_experts(two_tasks(), 0.5, rescale="official")
    doubled = [tv * 2.0 for tv in two_tasks()]
    halved = extract_experts(two_tasks(), 0.5, rescale="official", scale_reference=doubled)
    for b, h in zip(base, halved):
        assert h.scale == pytest.approx(b.scale / 2, rel=1e-12)
        assert torch.equal(h.values["w"], b.values["w"])


def test_rescale_formulas_directly():
    assert paper_rescale(0.2, 1.0, 0.5, 0.1) == pytest.approx(0.2 * math.log(10) / 0.5)
    assert official_rescale(0.2, 1.0, 0.1) == pytest.approx(1.0 * 0.2 / 0.1)
    assert paper_rescale(0.0, 1.0, 0.5, 0.1) == 0.0


def test_invalid_arguments():
    with pytest.raises(ParameterError, match="rescale"):
        extract_experts(two_tasks(), 0.5, rescale="log2")
    with pytest.raises(ParameterError, match="selection"):
        extract_experts(two_tasks(), 0.5, selection="random")
    with pytest.raises(EmptyInputError):
        extract_experts([], 0.5)
    with pytest.raises(ParameterError, match="per_row"):
        extract_experts(two_tasks(), 0.5, selection="bernoulli", per_row=True)


def test_include_exclude_select_keys():
    experts = extract_experts(two_tasks(), 0.5, exclude="b")
    assert experts[0].keys() == ["w"] and experts[0].parameters_kept() == 2


# --------------------------------------------------------------------------- storage
def test_storage_counts_and_table():
    g = torch.Generator().manual_seed(0)
    tasks = [{"m": torch.randn(10, 10, generator=g), "v": torch.randn(7, generator=g)} for _ in range(2)]
    experts = extract_experts(tasks, 0.1, count="ceil")
    for e in experts:
        assert e.parameters_kept() == 10 + 1
        assert e.indices["m"].dtype == torch.int32 and e.values["m"].dtype == torch.float32
        assert e.storage_bytes() == 11 * 4 + 11 * 4
    table = storage_table(experts, model_numel=107)
    assert list(table.columns) == ["name", "parameters_kept", "storage_bytes", "percent_of_model"]
    assert table["percent_of_model"].tolist() == pytest.approx([11 / 107 * 100] * 2)
    assert table["name"].tolist() == ["task0", "task1"]
    with pytest.raises(ParameterError):
        storage_table(experts, 0)


def test_float64_values_stay_float64():
    experts = extract_experts([{"w": torch.arange(10, dtype=torch.float64)}], 0.2)
    assert experts[0].values["w"].dtype == torch.float64
    assert experts[0].storage_bytes() == 2 * 8 + 2 * 4


# --------------------------------------------------------------------------- bernoulli selection
def test_bernoulli_selection_is_seeded_and_keeps_about_d():
    n, d = 100_000, 0.2
    tasks = [{"w": torch.randn(n, generator=torch.Generator().manual_seed(1))}]
    first = extract_experts(tasks, d, selection="bernoulli", seed=0, rescale=None)[0]
    again = extract_experts(tasks, d, selection="bernoulli", seed=0, rescale=None)[0]
    other = extract_experts(tasks, d, selection="bernoulli", seed=1, rescale=None)[0]
    assert torch.equal(first.indices["w"], again.indices["w"])
    assert not torch.equal(first.indices["w"][:1000], other.indices["w"][:1000])
    kept = first.parameters_kept() / n
    assert abs(kept - d) < 5 * math.sqrt(d * (1 - d) / n)
    magnitude = tasks[0]["w"].abs()
    assert abs(float(magnitude[first.indices["w"].long()].mean()) - float(magnitude.mean())) < 0.02


def test_bernoulli_mask_is_dares_and_independent_of_key_selection():
    from freqmerge_viz.methods.sparse import dare_mask

    g = torch.Generator().manual_seed(6)
    tasks = [{"a": torch.randn(30, 20, generator=g), "b": torch.randn(40, generator=g)} for _ in range(2)]
    both = extract_experts(tasks, 0.3, selection="bernoulli", seed=7, rescale=None)
    only_b = extract_experts(tasks, 0.3, selection="bernoulli", seed=7, rescale=None, include="b")
    for i in range(2):
        assert torch.equal(both[i].indices["b"], only_b[i].indices["b"])
        dare = dare_mask((30, 20), 0.3, 7, "a", i).reshape(-1).nonzero().squeeze(1)
        assert torch.equal(both[i].indices["a"].long(), dare)
    assert not torch.equal(both[0].indices["a"], both[1].indices["a"])


def test_bernoulli_rescale_still_applies():
    tasks = [{"w": torch.randn(1000, generator=torch.Generator().manual_seed(2))}]
    expert = extract_experts(tasks, 0.1, selection="bernoulli", rescale="official")[0]
    kept_mean = float(expert.values["w"].abs().sum()) / 1000
    full_mean = float(tasks[0]["w"].abs().mean())
    assert expert.scale == pytest.approx(-math.log10(0.1) * kept_mean / (0.1 * full_mean), rel=1e-5)


# --------------------------------------------------------------------------- SVD experts
def test_svd_expert_reproduces_low_rank_matrices_and_counts_parameters():
    g = torch.Generator().manual_seed(3)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    rank3 = randn(6, 3) @ randn(3, 5)
    rank1 = torch.outer(randn(8), randn(4))
    bias = randn(5)
    three = svd_experts([{"m": rank3, "bias": bias}], rank=3)[0]
    assert torch.allclose(three.dense("m"), rank3, atol=1e-10)
    assert torch.equal(three.dense("bias"), bias)
    assert three.parameters_kept() == 3 * (6 + 5) + 5
    assert three.storage_bytes() == (3 * (6 + 5) + 5) * 8
    one = svd_experts([{"m": rank1}], rank=1)[0]
    assert torch.allclose(one.dense("m"), rank1, atol=1e-10)
    assert one.parameters_kept() == 8 + 4


def test_svd_truncation_error_is_the_tail_singular_energy_and_full_rank_is_dense():
    m = torch.randn(7, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    s = torch.linalg.svdvals(m)
    two = svd_experts([{"m": m}], rank=2)[0]
    assert float(((m - two.dense("m")) ** 2).sum()) == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-9)
    full = svd_experts([{"m": m}], rank=5)[0]
    assert "m" in full.dense_parts and torch.equal(full.dense("m"), m)
    assert full.parameters_kept() == 35
    with pytest.raises(ParameterError, match="rank"):
        svd_experts([{"m": m}], rank=0)


def test_svd_expert_of_a_conv_kernel_uses_the_out_by_rest_matrix():
    kernel = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expert = svd_experts([{"k": kernel}], rank=4)[0]
    assert "k" in expert.dense_parts
    expert = svd_experts([{"k": kernel}], rank=2)[0]
    assert expert.left["k"].shape == (4, 2) and expert.right["k"].shape == (2, 18)
    assert expert.dense("k").shape == kernel.shape
    assert expert.add_to("k", torch.zeros(4, 2, 3, 3)).shape == kernel.shape


def test_svd_factors_cut_to_any_rank_equal_the_svd_at_that_rank():
    g = torch.Generator().manual_seed(6)
    tasks = [{"m": torch.randn(9, 7, generator=g), "k": torch.randn(6, 2, 2, 2, generator=g),
              "bias": torch.randn(7, generator=g)} for _ in range(3)]
    factors = SVDFactors(tasks)
    for rank in (2, 5, 1, 6, 3, 7):
        cut = factors.experts(rank)
        for i, expert in enumerate(cut):
            assert expert.rank == rank and set(expert.shapes) == {"m", "k", "bias"}
            assert torch.equal(expert.dense_parts["bias"], tasks[i]["bias"])
            for key, matrix in (("m", tasks[i]["m"]), ("k", tasks[i]["k"].reshape(6, 8))):
                if min(matrix.shape) <= rank:
                    assert torch.equal(expert.dense_parts[key], tasks[i][key]) and key not in expert.left
                    continue
                u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
                torch.testing.assert_close(expert.left[key] @ expert.right[key], (u[:, :rank] * s[:rank]) @ vh[:rank])
        for got, want in zip(cut, svd_experts(tasks, rank)):
            assert got.parameters_kept() == want.parameters_kept()
            assert all(torch.equal(got.left[k], want.left[k]) and torch.equal(got.right[k], want.right[k])
                       for k in want.left)
            assert all(torch.equal(got.dense(k), want.dense(k)) for k in want.shapes)
    assert factors._factors["m"][1].shape[1] == 7 and factors._factors["k"][1].shape[1] == 6
    with pytest.raises(ParameterError, match="rank"):
        factors.experts(0)


# --------------------------------------------------------------------------- add / replace
def test_add_to_and_replace_in_hand_example():
    expert = Expert("t", {"w": torch.tensor([1, 2, 5], dtype=torch.int32)}, {"w": t([-5.0, 3.0, 4.0])},
                    {"w": (6,)}, scale=2.0, density=0.5)
    backbone = torch.ones(6)
    assert expert.dense("w").tolist() == [0.0, -10.0, 6.0, 0.0, 0.0, 8.0]
    assert expert.add_to("w", backbone, weight=0.5).tolist() == [1.0, -4.0, 4.0, 1.0, 1.0, 5.0]
    assert expert.replace_in("w", backbone, weight=0.5).tolist() == [1.0, -5.0, 3.0, 1.0, 1.0, 4.0]
    assert backbone.tolist() == [1.0] * 6


def test_replace_in_keeps_the_tensor_where_the_expert_entry_is_zero():
    expert = Expert("t", {"w": torch.tensor([0, 1], dtype=torch.int32)}, {"w": t([0.0, 2.0])}, {"w": (3,)})
    assert expert.replace_in("w", t([7.0, 7.0, 7.0])).tolist() == [7.0, 2.0, 7.0]


def test_extracted_expert_applied_to_a_matrix():
    v = t([[0.1, -5.0], [3.0, 0.2]])
    expert = extract_experts([{"w": v}], 0.5, rescale=None)[0]
    assert expert.add_to("w", torch.zeros(2, 2)).tolist() == [[0.0, -5.0], [3.0, 0.0]]
    with pytest.raises(ShapeMismatchError):
        expert.add_to("w", torch.zeros(4))
    with pytest.raises(MissingKeysError):
        expert.replace_in("x", torch.zeros(2, 2))
