"""The official presets and conventions against transcriptions of the published code.

Every comparison runs on open_clip ViT key names (or LLaMA names for the LLM path) with odd,
non-square shapes, in float32 (relative error ≤ 1e-6) and float64 (≤ 1e-12). The
transcriptions are in reference.py; docs/methods.md states each definition.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.experts import extract_experts
from reference import (authors_filter, authors_fr_lm, authors_fr_vit, authors_free_vit, emr_as_coded,
                       emr_as_in_paper, mergekit_ties, task_vectors)

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
DTYPES = [torch.float32, torch.float64]


def relative_error(ours, reference) -> float:
    ours, reference = torch.as_tensor(ours).double(), torch.as_tensor(reference).double()
    scale = float(reference.norm())
    return float((ours - reference).norm()) / scale if scale > 0 else float((ours - reference).norm())


def assert_states_close(ours, reference, dtype):
    for key in reference:
        if not reference[key].is_floating_point():
            assert torch.equal(ours[key], reference[key]), key
            continue
        assert ours[key].dtype == reference[key].dtype, key
        assert relative_error(ours[key], reference[key]) <= TOLERANCE[dtype], key


def clip_layout(width: int = 45, layers: int = 2) -> dict[str, tuple[int, ...]]:
    """open_clip ViT image-encoder key names (as in the task-vector checkpoints), odd sizes."""
    v = "model.visual."
    layout = {v + "class_embedding": (width,), v + "positional_embedding": (10, width), v + "proj": (width, 31),
              v + "conv1.weight": (width, 3, 5, 5), v + "ln_pre.weight": (width,), v + "ln_pre.bias": (width,)}
    for i in range(layers):
        b = f"{v}transformer.resblocks.{i}."
        layout.update({
            b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
            b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
            b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
            b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
            b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
            b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,)})
    layout.update({v + "ln_post.weight": (width,), v + "ln_post.bias": (width,), "model.logit_scale": ()})
    return layout


def llama_layout(width: int = 40, hidden: int = 108, vocab: int = 51) -> dict[str, tuple[int, ...]]:
    """LLaMA key names (the LLM path merges every tensor and filters the 2-D ones)."""
    p = "model.layers.0."
    return {"model.embed_tokens.weight": (vocab, width), p + "self_attn.q_proj.weight": (width, width),
            p + "self_attn.k_proj.weight": (width, width), p + "self_attn.o_proj.weight": (width, width),
            p + "mlp.gate_proj.weight": (hidden, width), p + "mlp.down_proj.weight": (width, hidden),
            p + "input_layernorm.weight": (width,), "model.norm.weight": (width,), "lm_head.weight": (vocab, width)}


def model_set(layout, n_tasks: int = 3, seed: int = 0, dtype=torch.float32, grid: float | None = None):
    """θ_pre and fine-tuned states; with `grid`, every value is a multiple of it (exact in float32),
    so that task vectors have many entries of equal magnitude (ties)."""
    g = torch.Generator().manual_seed(seed)

    def draw(shape):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        return (torch.round(x / grid) * grid if grid else x).to(dtype)

    pre = {k: draw(s) for k, s in layout.items()}
    pre["model.visual.attn_mask_index"] = torch.arange(6)  # an integer buffer stays θ_pre
    fts = [{k: (v + draw(v.shape) if v.is_floating_point() else v.clone()) for k, v in pre.items()}
           for _ in range(n_tasks)]
    return pre, fts


def materialised(state):
    return {k: state[k] for k in state}


# --------------------------------------------------------------------------- 1. filter below 0.1
def test_official_filter_below_ratio_0_1_keeps_the_disc():
    # 96×96 at ratio 0.05: ratio·min = 4.8 < min//10 = 9, so the code keeps d ≤ 9: 253 bins.
    mask = fmv.frequency_mask((96, 96), 0.05, convention="official", centered=False)
    assert int((mask > 0).sum()) == 253 and float(mask.max()) == 1.0
    x = torch.randn(96, 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert relative_error(fmv.frequency_filter(x, 0.05, convention="official"), authors_filter(x.numpy(), 0.05)) <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(96, 96), (45, 31), (31, 45), (7, 9), (135, 45), (40, 768)], ids=str)
@pytest.mark.parametrize("ratio", [0.02, 0.05, 0.1, 0.3, 0.7, 0.9])
def test_official_filter_is_the_authors_filter(shape, ratio, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)
    ours = fmv.frequency_filter(x.to(dtype), ratio, convention="official")
    assert ours.dtype == dtype
    assert relative_error(ours, authors_filter(x.numpy(), ratio)) <= TOLERANCE[dtype]


def test_ring_twice_is_the_authors_double_count_and_once_is_not():
    # 45×31: min//10 = 3; the bins at distance exactly 3 from (22, 15) are (22±3, 15), (22, 15±3).
    twice = fmv.frequency_mask((45, 31), 0.5, convention="official", centered=False)
    once = fmv.frequency_mask((45, 31), 0.5, convention="official", centered=False, ring="once")
    doubled = torch.nonzero(twice == 2).tolist()
    assert sorted(doubled) == [[19, 15], [22, 12], [22, 18], [25, 15]]
    assert torch.equal(twice - once, (twice == 2).to(twice.dtype))
    # below ratio 0.1 the band is empty and nothing counts twice
    assert float(fmv.frequency_mask((45, 31), 0.05, convention="official").max()) == 1.0


# --------------------------------------------------------------------------- FR, ViT code
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fr_official_is_the_authors_vit_code(dtype):
    pre, fts = model_set(clip_layout(), dtype=dtype)
    ours = materialised(fmv.merge("fr", pre, fts, preset="official"))
    reference = authors_fr_vit(pre, fts)
    assert_states_close(ours, reference, dtype)
    # the attn/mlp biases are the first task's aligned values, not a sum over tasks
    key = "model.visual.transformer.resblocks.0.attn.in_proj_bias"
    assert relative_error(ours[key], reference[key]) <= TOLERANCE[dtype]
    summed = materialised(fmv.merge("fr", pre, fts, preset="official", sum_keys="all"))
    assert relative_error(summed[key], reference[key]) > 0.1


def test_align_gives_a_zero_task_coefficient_where_the_code_gives_nan():
    pre, fts = model_set(clip_layout(), dtype=torch.float64)
    key = "model.visual.transformer.resblocks.1.mlp.c_fc.weight"
    fts[1][key] = pre[key].clone()
    with np.errstate(divide="ignore", invalid="ignore"):
        assert torch.isnan(authors_fr_vit(pre, fts)[key]).all()
    ours = fmv.merge("fr", pre, fts, preset="official")[key]
    without = fmv.merge("fr", pre, [fts[0], fts[2]], preset="official")[key]
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, without, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- FREE, ViT code
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_free_official_is_the_authors_vit_code(dtype):
    # values on a grid of 1/4: many equal magnitudes in every row, so torch.topk's tie choice matters
    pre, fts = model_set(clip_layout(), dtype=dtype, grid=0.25)
    free = fmv.free_merging(pre, fts, preset="official", density=0.1)
    states, mus = authors_free_vit(pre, fts, density=0.1)
    for t, (state, mu) in enumerate(zip(states, mus)):
        assert abs(free.experts[t].scale - mu) <= TOLERANCE[dtype] * abs(mu)
        assert_states_close(free.task_state(t), state, dtype)


def test_free_official_biases_are_the_first_task_backbone_and_unscaled_experts():
    pre, fts = model_set(clip_layout(), dtype=torch.float64)
    free = fmv.free_merging(pre, fts, preset="official", density=0.1)
    vectors = task_vectors(pre, fts)
    key = "model.visual.transformer.resblocks.0.mlp.c_fc.bias"
    for t in range(3):
        top = torch.zeros(vectors[t][key].shape, dtype=torch.bool)
        top[torch.topk(vectors[t][key].abs(), int(0.1 * top.numel())).indices] = True
        expected = pre[key] + 0.5 * torch.where(top, vectors[t][key], vectors[0][key])
        torch.testing.assert_close(free.task_state(t)[key], expected, rtol=1e-12, atol=1e-12)


def test_torch_topk_ties_differ_from_lowest_index_ties_on_tied_rows():
    pre, fts = model_set(clip_layout(), dtype=torch.float32, grid=0.25)
    vectors = [fmv.TaskVector.from_states(pre, ft) for ft in fts]
    by_index = extract_experts(vectors, 0.1, per_row=True, rescale=None)
    by_topk = extract_experts(vectors, 0.1, per_row=True, rescale=None, ties="torch_topk")
    key = "model.visual.transformer.resblocks.0.mlp.c_proj.weight"  # rows of 180: keep 18
    v = vectors[0][key]
    expected = torch.zeros(v.shape, dtype=torch.bool)
    expected.scatter_(1, torch.topk(v.abs(), 18).indices, True)
    assert torch.equal(torch.sort(by_topk[0].indices[key].long()).values,
                       torch.nonzero(expected.reshape(-1)).squeeze(1))
    assert not torch.equal(by_topk[0].indices[key], by_index[0].indices[key])
    # the index rule: within each row, the kept ties are the leftmost ones
    kept = torch.zeros(v.numel(), dtype=torch.bool)
    kept[by_index[0].indices[key].long()] = True
    kept = kept.reshape(v.shape)
    threshold = v.abs().topk(18, dim=1).values[:, -1:]
    ties = v.abs() == threshold
    taken = kept & ties
    for row in range(v.shape[0]):
        columns = torch.nonzero(ties[row]).squeeze(1)
        assert torch.equal(taken[row, columns], torch.arange(len(columns)) < int(taken[row].sum()))


# --------------------------------------------------------------------------- FR, LLM code
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fr_official_lm_is_the_authors_llm_path(dtype):
    pre, fts = model_set(llama_layout(), dtype=dtype)
    ours = materialised(fmv.merge("fr", pre, fts, preset="official_lm"))
    assert_states_close(ours, authors_fr_lm(pre, fts, weights=[0.8, 0.8, 0.8], lam=1.1), dtype)
    weights = [0.5, 1.0, 2.0]
    ours = materialised(fmv.merge("fr", pre, fts, preset="official_lm", weights=weights, scaling=1.1))
    assert_states_close(ours, authors_fr_lm(pre, fts, weights=weights, lam=1.1), dtype)


# --------------------------------------------------------------------------- EMR
def test_emr_zero_sum_by_hand():
    pre = {"w": torch.zeros(4, dtype=torch.float64)}
    fts = [{"w": torch.tensor([1.0, 2.0, 1.0, 0.5], dtype=torch.float64)},
           {"w": torch.tensor([-1.0, 1.0, -1.0, 0.25], dtype=torch.float64)}]
    official = fmv.emr_merging(pre, fts, preset="official")
    paper = fmv.emr_merging(pre, fts)
    assert official.shared["w"].tolist() == [-1.0, 2.0, -1.0, 0.5]
    assert paper.shared["w"].tolist() == [0.0, 2.0, 0.0, 0.5]
    # official: M_1 = [0, 1, 0, 1], M_2 = [1, 1, 1, 1]; λ_t = mean|τ_t| / mean|M_t τ_uni|
    assert official.rescalers == pytest.approx([1.125 / 0.625, 0.8125 / 1.125], rel=1e-15)
    assert paper.rescalers == pytest.approx([4.5 / 2.5, 3.25 / 2.5], rel=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("preset", ["official", "paper"])
def test_emr_presets_are_the_coded_and_the_paper_formulas(preset, dtype):
    pre, fts = model_set(clip_layout(), dtype=dtype, grid=0.5)
    fts[2] = {k: (2 * pre[k] - fts[0][k] if v.is_floating_point() else v) for k, v in fts[2].items()}
    vectors = task_vectors(pre, fts)  # τ_3 = −τ_1: the sum is 0 wherever τ_2 is
    assert any(bool((sum(v[k] for v in vectors) == 0).any()) for k in vectors[0])
    unified, masks, rescalers = (emr_as_coded if preset == "official" else emr_as_in_paper)(vectors)
    emr = fmv.emr_merging(pre, fts, preset=preset)
    assert np.allclose(emr.rescalers, rescalers, rtol=TOLERANCE[dtype], atol=0)
    for t in range(3):
        state = emr.task_state(t)
        expected = {k: pre[k] + unified[k] * masks[k][t] * rescalers[t] if k in unified else pre[k] for k in pre}
        assert_states_close(state, expected, dtype)


def test_emr_readings_differ():
    pre, fts = model_set(clip_layout(), dtype=torch.float64)
    paper, official = fmv.emr_merging(pre, fts), fmv.emr_merging(pre, fts, preset="official")
    assert max(abs(a / b - 1) for a, b in zip(paper.rescalers, official.rescalers)) > 1e-3


# --------------------------------------------------------------------------- mergekit TIES
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("majority, consensus", [("frequency", "count"), ("total", "sum")])
@pytest.mark.parametrize("weights", [[0.3, 1.0, 2.5], [1.0, -0.5, 2.0]], ids=["unequal", "negative"])
@pytest.mark.parametrize("grid", [None, 0.25], ids=["distinct", "ties"])
def test_ties_mergekit_convention_is_mergekit(majority, consensus, weights, grid, dtype):
    # distinct magnitudes: mergekit exactly; ties: its counts with the documented tie rule
    pre, fts = model_set(clip_layout(), dtype=dtype, grid=grid)
    ours = materialised(fmv.merge("ties", pre, fts, preset="mergekit", majority=majority, weights=weights,
                                  density=0.3, scaling=0.7))
    floats = {k: v for k, v in pre.items() if v.is_floating_point()}
    reference = mergekit_ties(floats, [{k: ft[k] for k in floats} for ft in fts], weights, 0.3, consensus, lam=0.7)
    assert_states_close(ours, reference, dtype)


def test_count_consensus_counts_each_task_once_whatever_its_weight():
    pre = {"w": torch.zeros(3)}
    fts = [{"w": torch.tensor([1.0, -1.0, 2.0])}, {"w": torch.tensor([-1.0, 1.0, -1.0])},
           {"w": torch.tensor([-1.0, 1.0, -1.0])}]
    # two negative votes beat one positive vote of weight 10 at entry 0: mergekit counts signs
    out = fmv.merge("ties", pre, fts, convention="mergekit", majority="frequency", weights=[10.0, 1.0, 1.0],
                    density=1.0)["w"]
    assert out.tolist() == [-1.0, 1.0, -1.0]


def test_mergekit_keeps_at_least_one_entry_and_peft_may_keep_none():
    pre = {"w": torch.zeros(3), "b": torch.zeros(())}
    fts = [{"w": torch.tensor([1.0, -3.0, 2.0]), "b": torch.tensor(0.5)}]
    peft = fmv.merge("ties", pre, fts, density=0.3)
    mergekit = fmv.merge("ties", pre, fts, preset="mergekit", density=0.3)
    assert peft["w"].tolist() == [0.0, 0.0, 0.0] and float(peft["b"]) == 0.0
    assert mergekit["w"].tolist() == [0.0, -3.0, 0.0] and float(mergekit["b"]) == 0.5


@pytest.mark.parametrize("name", ["ties", "magnitude_prune", "fr_ties"])
def test_trim_keeps_exactly_k_with_the_lowest_index_ties(name):
    # float16-like data: a 3000-entry tensor with only 17 distinct magnitudes
    g = torch.Generator().manual_seed(5)
    values = torch.randint(-8, 9, (50, 60), generator=g).float() / 8
    stack = values.unsqueeze(0)
    transform = fmv.method_transform(name, density=0.2, cutoff=0.0) if name == "fr_ties" else \
        fmv.method_transform(name, density=0.2)
    kept = transform(stack.clone(), "w")[0] != 0
    assert int(kept.sum()) == int(0.2 * 3000)
    order = np.lexsort((np.arange(3000), -values.abs().reshape(-1).numpy()))  # |v| descending, index ascending
    expected = np.zeros(3000, dtype=bool)
    expected[order[:600]] = True
    assert np.array_equal(kept.reshape(-1).numpy(), expected)


def test_breadcrumbs_keeps_exactly_its_counts_with_ties():
    values = torch.tensor([4.0, 1.0, 4.0, 2.0, 2.0, 2.0, 1.0, 3.0, 2.0, 4.0])
    # drop the top 10% (the 4 at index 0), keep the next 40%: 4, 4, 3, then the first 2 (index 3)
    out = fmv.method_transform("breadcrumbs", density=0.4, gamma=0.1)(values.unsqueeze(0).clone(), "w")[0]
    assert out.tolist() == [0.0, 0.0, 4.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0, 4.0]
