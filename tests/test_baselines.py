"""TSV-M, Iso-C, Iso-CTS, consensus (TALL masks), WUDI and CART: hand-computed cases, properties the
papers imply, transcriptions of the authors' code (reference.py), fusion-bench, progress, memory.

Definitions: docs/methods.md ("Singular-value and mask baselines") and each module's docstring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.cli import main
from freqmerge_viz.methods.isotropic import iso_cts_dimensions
from freqmerge_viz.methods.wudi import wudi_optimise_, wudi_terms
from reference import (cart_reference, consensus_reference, iso_c_reference, iso_cts_reference, tall_masks_reference,
                       tsv_reference, wudi_reference)

NEW = ("tsv", "iso_c", "iso_cts", "consensus", "wudi", "cart")


def merged(name, tasks, pre=None, **params):
    pre = pre if pre is not None else {k: torch.zeros_like(v) for k, v in tasks[0].items()}
    state = fmv.merge(name, pre, tasks, **params)
    return {k: state[k] for k in state}


def w(*rows):
    return {"w": torch.tensor(rows, dtype=torch.float64)}


# ----------------------------------------------------------------------------- registry
def test_registered_with_documented_parameters_and_presets():
    assert set(NEW) <= set(fmv.list_methods())
    for name in NEW:
        method = fmv.get_method(name)
        assert not method.routed and method.summary
        for param in method.params:
            assert param.doc and param.describe().startswith(param.name), (name, param.name)
    assert fmv.get_method("cart").resolve({"preset": "official"})["rank_ratio"] == 0.12
    assert fmv.get_method("wudi").resolve({"preset": "fusion_bench"})["steps"] == 400
    assert fmv.get_method("consensus").resolve({"preset": "ties"})["base"] == "ties"


@pytest.mark.parametrize("name, params, message", [
    ("tsv", dict(rank_fraction=0.0), r"'rank_fraction' must lie in \(0.0, 1.0\]"),
    ("iso_cts", dict(common_fraction=1.5), r"'common_fraction' must lie in \[0.0, 1.0\]"),
    ("consensus", dict(base="median"), r"'base' must be one of \['task_arithmetic', 'ties'\]"),
    ("consensus", dict(min_tasks=-1), r"'min_tasks' must be ≥ 0, got -1"),
    ("wudi", dict(steps=-1), r"'steps' must be ≥ 0, got -1"),
    ("wudi", dict(lr=0.0), r"'lr' must be > 0.0, got 0.0"),
    ("wudi", dict(progress="yes"), r"'progress' must be true or false"),
    ("cart", dict(matrix_scope="rows"), r"unknown key scope 'rows'"),
])
def test_bad_parameters_are_errors(name, params, message):
    with pytest.raises(fmv.ParameterError, match=message):
        fmv.merge(name, {"w": torch.zeros(2, 2)}, [{"w": torch.ones(2, 2)}] * 2, **params)


# ----------------------------------------------------------------------------- hand-computed cases
def test_tsv_by_hand_orthogonalises_overlapping_directions():
    # r = 2, K = 2: one direction each. τ1 = 2·e1e1ᵀ, τ2 = 2·uuᵀ with u = (1, 1)/√2. Û = [e1 | u] = V̂ᵀ,
    # so the result is P diag(2, 2) Pᵀ with P = polar(Û) orthogonal (2 × 2): 2·I. TA gives [[3, 1], [1, 1]].
    out = merged("tsv", [w([2, 0], [0, 0]), w([1, 1], [1, 1])])["w"]
    torch.testing.assert_close(out, 2 * torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)
    half = merged("tsv", [w([2, 0], [0, 0]), w([1, 1], [1, 1])], scaling=0.5)["w"]
    torch.testing.assert_close(half, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_iso_c_and_iso_cts_by_hand():
    # Iso-C: Σ τ = diag(3, 1), singular values 3 and 1, mean 2: 2·I.
    out = merged("iso_c", [w([3, 0], [0, 0]), w([0, 0], [0, 1])])["w"]
    torch.testing.assert_close(out, 2 * torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)
    # Iso-CTS, r = 4, K = 2, f = 0.5: c = 2, d = 1. Σ = diag(8, 2, 2.5, 3): common e1 (8), e4 (3);
    # residuals diag(0, 2, 1, 0) → e2 (2) and diag(0, 0, 1.5, 0) → e3 (1.5); mean(2, 1.5, 8, 3) = 3.625.
    t1, t2 = torch.diag(torch.tensor([4, 2, 1, 0.0])), torch.diag(torch.tensor([4, 0, 1.5, 3.0]))
    cts = merged("iso_cts", [{"w": t1.double()}, {"w": t2.double()}], common_fraction=0.5)["w"]
    torch.testing.assert_close(cts, 3.625 * torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    iso = merged("iso_c", [{"w": t1.double()}, {"w": t2.double()}])["w"]
    torch.testing.assert_close(iso, 3.875 * torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)  # 15.5 / 4


def test_iso_cts_dimensions_follow_the_authors_rounding():
    assert iso_cts_dimensions(768, 8, 0.8) == (768 - 8 * 19, 19)  # int(614.4) = 614; round(154 / 8) = 19
    assert iso_cts_dimensions(4, 2, 0.5) == (2, 1)
    assert iso_cts_dimensions(2, 2, 0.5) == (2, 0)  # round(0.5) = 0 (half to even): no task directions
    assert iso_cts_dimensions(12, 8, 0.0) == (4, 1)  # round(1.5) = 2 would need 16 > 12 slots: capped at 12 // 8


def test_cart_by_hand():
    # τ̄ = diag(2/3, 1); centred: diag(4/3, −1), diag(−2/3, −1), diag(−2/3, 2); rank 1 each (ρ = 0.5 of r = 2):
    # diag(4/3, 0), diag(0, −1), diag(0, 2), summing to diag(4/3, 1). λ = 1: diag(2, 2); λ = 2: diag(10/3, 3).
    tasks = [w([2, 0], [0, 0]), w([0, 0], [0, 0]), w([0, 0], [0, 3])]
    for scaling, expected in ((1.0, [2.0, 2.0]), (2.0, [10 / 3, 3.0])):
        out = merged("cart", tasks, rank_ratio=0.5, scaling=scaling, matrix_scope="two_d")["w"]
        torch.testing.assert_close(out, torch.diag(torch.tensor(expected, dtype=torch.float64)), rtol=0, atol=1e-12)


CONSENSUS_TASKS = [{"w": torch.tensor([1.0, 0, 2, -1])}, {"w": torch.tensor([1.0, 3, 0, 1])},
                   {"w": torch.tensor([1.0, 0, 0, 0.5])}]


def test_consensus_task_arithmetic_by_hand():
    # Σ τ = [3, 3, 2, .5]. λ = 0.4: m_1 = [1 > .8, 0 > 1.2, 2 > 0, 1 > .6] = [T, F, T, T],
    # m_2 = [1 > .8, 3 > 0, 0 > .8, 1 > .2] = [T, T, F, T], m_3 = [1 > .8, 0 > 1.2, 0 > .8, .5 > 0] = [T, F, F, T];
    # counts [3, 1, 1, 3] ≥ 2 keep entries 0 and 3.
    assert merged("consensus", CONSENSUS_TASKS, tall_lambda=0.4, scaling=1.0)["w"].tolist() == [3.0, 0.0, 0.0, 0.5]
    # λ = 0.5: counts [0, 1, 1, 3] (each task holds a third of entry 0: 1 > 0.5·2 fails).
    assert merged("consensus", CONSENSUS_TASKS, tall_lambda=0.5, scaling=1.0)["w"].tolist() == [0.0, 0.0, 0.0, 0.5]
    # one mask is enough: task arithmetic (all entries), times α
    assert merged("consensus", CONSENSUS_TASKS, tall_lambda=0.4, min_tasks=1, scaling=0.5)["w"].tolist() == \
        [1.5, 1.5, 1.0, 0.25]


def test_consensus_ties_by_hand():
    # README's TIES example, density 0.5: trimmed τ1 = [3, 0, 0, 2], τ2 = [−2, −4, 0, 0]; votes [1, −4, 0, 2]
    # elect [+, −, +, +]; agreeing: [3, 0, 0, 2] and [0, −4, 0, 0]; dis-sum τ_MTL = [3, −4, 0, 2].
    # λ = 0.5: m1 = [3 > 0, 1 > 1.5, .5 > .25, 2 > 0] = [T, F, T, T]; m2 = [2 > 2.5, 4 > 0, 1 > .5, 1 > .5]
    # = [F, T, T, T]; counts [1, 1, 2, 2]: keep entries 2 and 3.
    tasks = [{"w": torch.tensor([3.0, -1, 0.5, 2])}, {"w": torch.tensor([-2.0, -4, 1, 1])}]
    out = merged("consensus", tasks, base="ties", density=0.5, tall_lambda=0.5, scaling=1.0)["w"]
    assert out.tolist() == [0.0, 0.0, 0.0, 2.0]
    # disjoint mean: τ_MTL the same here (one agreeing task per entry)
    out = merged("consensus", tasks, base="ties", density=0.5, tall_lambda=0.5, scaling=1.0, ties_aggregate="mean")
    assert out["w"].tolist() == [0.0, 0.0, 0.0, 2.0]


def test_wudi_one_adam_step_by_hand():
    # τ1 = [[1, 0], [0, 0]], τ2 = [[1, 1], [0, 0]] (‖τ2‖² = 2); M0 = [[2, 1], [0, 0]].
    # ∇L = 2 Σ_t (M0 − τ_t) τ_tᵀ τ_t / ‖τ_t‖² = 2 ([[1, 0], [0, 0]] + [[1, 1], [0, 0]] / 2) = [[3, 1], [0, 0]].
    # Adam's first step moves each entry by lr·g/(|g| + ε) ≈ lr·sign(g), and not where g = 0.
    tasks = [w([1, 0], [0, 0]), w([1, 1], [0, 0])]
    out = merged("wudi", tasks, steps=1, lr=0.1)["w"]
    torch.testing.assert_close(out, torch.tensor([[1.9, 0.9], [0, 0]], dtype=torch.float64), rtol=0, atol=1e-8)
    start = merged("wudi", tasks, steps=0)["w"]
    assert start.tolist() == [[2.0, 1.0], [0.0, 0.0]]


@pytest.mark.parametrize("name, params, factor", [("tsv", dict(scaling=0.5), 0.5), ("iso_c", dict(scaling=2.0), 2.0),
                                                  ("iso_cts", {}, 1.0), ("wudi", dict(steps=3), 1.0),
                                                  ("cart", dict(scaling=5.0), 1.0)])
def test_keys_that_are_not_matrices_get_the_scaled_mean(name, params, factor):
    tasks = [{"w": torch.eye(3), "bias": torch.tensor([1.0, 2.0]), "conv": torch.ones(2, 1, 2, 2)},
             {"w": torch.eye(3), "bias": torch.tensor([3.0, 4.0]), "conv": 3 * torch.ones(2, 1, 2, 2)}]
    out = merged(name, tasks, **params)
    assert out["bias"].tolist() == [2.0 * factor, 3.0 * factor]
    assert torch.equal(out["conv"], torch.full((2, 1, 2, 2), 2.0 * factor))


def test_matrix_scope_decides_which_matrices_get_the_matrix_rule():
    tasks = [{"blocks.0.attn.qkv.weight": torch.diag(torch.tensor([3.0, 0])), "pos_embed": torch.diag(torch.tensor([3.0, 0]))},
             {"blocks.0.attn.qkv.weight": torch.diag(torch.tensor([0.0, 1])), "pos_embed": torch.diag(torch.tensor([0.0, 1]))}]
    out = merged("iso_c", tasks, matrix_scope="layer_matrices")
    assert out["blocks.0.attn.qkv.weight"].tolist() == [[2.0, 0.0], [0.0, 2.0]]
    assert out["pos_embed"].tolist() == [[1.5, 0.0], [0.0, 0.5]]  # an embedding: the mean


# ----------------------------------------------------------------------------- what the papers imply
def orthogonal_tasks(k=4, m=12, n=10, rank=2, seed=0):
    """K task matrices of rank `rank` whose column spaces and row spaces are mutually orthogonal."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, k * rank, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, k * rank, generator=g, dtype=torch.float64))[0]
    s = torch.rand(k * rank, generator=g, dtype=torch.float64) + 0.5
    return [{"w": (u[:, t * rank:(t + 1) * rank] * s[t * rank:(t + 1) * rank]) @ v[:, t * rank:(t + 1) * rank].T}
            for t in range(k)]


def test_tsv_on_orthogonal_task_vectors_is_task_arithmetic():
    tasks = orthogonal_tasks()  # rank 2 ≤ k = ⌊10 / 4⌋ = 2 directions per task
    torch.testing.assert_close(merged("tsv", tasks)["w"], merged("task_arithmetic", tasks, scaling=1.0)["w"],
                               rtol=0, atol=1e-12)
    # overlapping full-rank task vectors are not: TSV-M then differs from task arithmetic
    tasks = random_tasks(k=4, shape=(12, 10))
    assert float((merged("tsv", tasks)["w"] - merged("task_arithmetic", tasks, scaling=1.0)["w"]).abs().max()) > 0.5


def random_tasks(k=3, shape=(9, 7), seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(shape, generator=g, dtype=dtype)} for _ in range(k)]


def test_iso_spectra_are_flat_and_iso_cts_with_no_task_subspace_is_iso_c():
    tasks = random_tasks()
    total = sum(t["w"] for t in tasks)
    iso = merged("iso_c", tasks, scaling=0.7)["w"]
    values = torch.linalg.svdvals(iso)
    torch.testing.assert_close(values, torch.full_like(values, 0.7 * float(torch.linalg.svdvals(total).mean())))
    cts = merged("iso_cts", tasks)["w"]
    cts_values = torch.linalg.svdvals(cts)
    torch.testing.assert_close(cts_values, torch.full_like(cts_values, float(cts_values[0])))
    torch.testing.assert_close(merged("iso_cts", tasks, common_fraction=1.0, scaling=0.7)["w"], iso)
    assert not torch.allclose(cts, merged("iso_c", tasks)["w"], atol=1e-3)


def test_consensus_limits():
    tasks = random_tasks(k=4, shape=(40,), seed=2)
    ta = merged("task_arithmetic", tasks, scaling=0.3)["w"]
    assert torch.equal(merged("consensus", tasks, tall_lambda=0.0)["w"], ta)  # λ → 0: every mask holds everything
    assert torch.equal(merged("consensus", tasks, min_tasks=0)["w"], ta)
    assert torch.equal(merged("consensus", tasks, tall_lambda=1e6)["w"], torch.zeros(40, dtype=torch.float64))
    kept = merged("consensus", tasks)["w"] != 0
    assert 0 < int(kept.sum()) < 40
    # the per-task step (what interference metrics measure) sums to the merge, before α
    steps = fmv.method_transform("consensus", scaling=0.3)(torch.stack([t["w"] for t in tasks]), "w")
    torch.testing.assert_close(0.3 * steps.sum(dim=0), merged("consensus", tasks)["w"])


def test_cart_full_rank_or_no_scaling_is_weight_averaging():
    tasks = random_tasks(k=4)
    average = merged("weight_averaging", tasks)["w"]
    for params in (dict(rank_ratio=1.0), dict(rank_ratio=1.0, scaling=7.0), dict(scaling=0.0), dict(rank_ratio=0.0)):
        torch.testing.assert_close(merged("cart", tasks, matrix_scope="two_d", **params)["w"], average,
                                   rtol=0, atol=1e-12)
    truncated = merged("cart", tasks, matrix_scope="two_d", rank_ratio=0.3)["w"]
    assert float((truncated - average).abs().max()) > 0.1


def wudi_loss(m, tasks):
    return sum(float(((m - t) @ t.T).square().sum() / t.square().sum()) for t in tasks)


def test_wudi_lowers_its_loss_and_matches_autograd_with_torch_adam():
    tasks = [t["w"] for t in random_tasks(k=4, shape=(8, 6), seed=3)]
    out = merged("wudi", [{"w": t} for t in tasks], steps=200, lr=1e-2)["w"]
    assert wudi_loss(out, tasks) < 0.5 * wudi_loss(sum(tasks), tasks)
    torch.testing.assert_close(out, wudi_reference(tasks, 200, 1e-2), rtol=0, atol=1e-10)
    again = merged("wudi", [{"w": t} for t in tasks], steps=200, lr=1e-2)["w"]
    assert torch.equal(out, again)  # nothing random: the same bits twice


def test_wudi_row_blocks_give_the_same_iterates():
    tasks = [t["w"] for t in random_tasks(k=3, shape=(10, 4), seed=4)]
    whole = wudi_optimise_(*wudi_terms(lambda t: tasks[t], 3), steps=50, lr=1e-2)
    blocks = wudi_optimise_(*wudi_terms(lambda t: tasks[t], 3), steps=50, lr=1e-2, rows=3)
    torch.testing.assert_close(blocks, whole, rtol=0, atol=1e-14)


def test_wudi_skips_an_all_zero_task():
    tasks = [w([1, 0], [0, 0]), w([1, 1], [0, 0]), w([0, 0], [0, 0])]
    out = merged("wudi", tasks, steps=1, lr=0.1)["w"]
    torch.testing.assert_close(out, torch.tensor([[1.9, 0.9], [0, 0]], dtype=torch.float64), rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------- against the authors' code
def clip_like(width=13, layers=2, k=4, seed=5, dtype=torch.float64, scale=0.01):
    """open_clip ViT key names, odd sizes: a pretrained state and `k` fine-tuned ones."""
    shapes = {"visual.class_embedding": (width,), "visual.positional_embedding": (10, width),
              "visual.conv1.weight": (width, 3, 4, 4), "visual.ln_pre.weight": (width,), "visual.proj": (width, 7)}
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        shapes.update({b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                       b + "attn.out_proj.weight": (width, width), b + "ln_1.weight": (width,),
                       b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
                       b + "mlp.c_proj.weight": (width, 4 * width)})
    g = torch.Generator().manual_seed(seed)
    pre = {key: torch.randn(shape, generator=g, dtype=dtype) for key, shape in shapes.items()}
    fts = [{key: v + scale * torch.randn(v.shape, generator=g, dtype=dtype) for key, v in pre.items()}
           for _ in range(k)]
    return pre, fts


REFERENCES = {
    "tsv": lambda tvs: tsv_reference(tvs),
    "iso_c": lambda tvs: iso_c_reference(tvs),
    "iso_cts": lambda tvs: iso_cts_reference(tvs, 0.8),
    "cart": lambda tvs: cart_reference(tvs, 0.08, 2.0),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_singular_value_merges_match_the_transcriptions(name):
    pre, fts = clip_like()
    state = fmv.merge(name, pre, fts, matrix_scope="two_d")
    for key in pre:
        tvs = [(ft[key] - pre[key]).numpy() for ft in fts]
        expected = REFERENCES[name](tvs) if pre[key].ndim == 2 else np.mean(tvs, axis=0)
        np.testing.assert_allclose((state[key] - pre[key]).numpy(), expected, rtol=0, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("base, aggregate", [("task_arithmetic", "sum"), ("ties", "sum"), ("ties", "mean")])
def test_consensus_matches_the_transcription(base, aggregate):
    pre, fts = clip_like()
    state = fmv.merge("consensus", pre, fts, base=base, ties_aggregate=aggregate, scaling=0.4)
    for key in pre:
        tvs = [(ft[key] - pre[key]).numpy() for ft in fts]
        expected = consensus_reference(tvs, 0.6, 2, 0.4, base, 0.2, aggregate)
        np.testing.assert_allclose((state[key] - pre[key]).numpy(), expected, rtol=0, atol=1e-12, err_msg=key)


def test_cart_official_preset_low_ranks_only_the_authors_keys():
    pre, fts = clip_like()
    state = fmv.merge("cart", pre, fts, preset="official")
    for key in pre:
        tvs = [(ft[key] - pre[key]).numpy() for ft in fts]
        low_rank = ("attn" in key or "mlp" in key) and not ("ln" in key or "bias" in key)  # the authors' rule
        expected = cart_reference(tvs, 0.12, 2.0) if low_rank else np.mean(tvs, axis=0)
        np.testing.assert_allclose((state[key] - pre[key]).numpy(), expected, rtol=0, atol=1e-12, err_msg=key)


# ----------------------------------------------------------------------------- fusion-bench
try:
    import fusion_bench  # noqa: F401

    FUSION_BENCH = None
except ImportError as error:  # pragma: no cover  (CI installs it with the test extra)
    FUSION_BENCH = (f"fusion-bench is not installed ({error}); pip install 'freqmerge-viz[test]' or "
                    f"'fusion-bench' (it installs on CPU with torch pinned) to compare with it")
needs_fusion_bench = pytest.mark.skipif(FUSION_BENCH is not None, reason=FUSION_BENCH or "")
AGREEMENT = 1e-5  # largest |θ_ours − θ_fusion-bench| over every entry, float32


def _module(state):
    """An nn.Module whose state dict is `state` (buffers, so fusion-bench's arithmetic sees plain tensors)."""
    root = torch.nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_buffer(leaf, value.clone())
    return root


def _pool(pre, fts):
    from fusion_bench.modelpool import BaseModelPool

    return BaseModelPool(models={"_pretrained_": _module(pre), **{f"task{i}": _module(ft) for i, ft in enumerate(fts)}})


def _largest_difference(ours, theirs, keys):
    return max(float((ours[key] - theirs[key]).abs().max()) for key in keys)


@needs_fusion_bench
@pytest.mark.parametrize("name, params", [("tsv", {}), ("tsv", dict(scaling=0.7)),
                                          ("tsv", dict(weights=[0.5, 1.0, 1.5, 2.0])),
                                          ("iso_c", {}), ("iso_c", dict(scaling=1.3)),
                                          ("iso_cts", {}), ("iso_cts", dict(common_fraction=0.5, scaling=1.3))])
def test_agrees_with_fusion_bench_algorithms(name, params):
    from fusion_bench.method import ISO_C_Merge, ISO_CTS_Merge, TaskSingularVectorMerging

    pre, fts = clip_like(width=16, dtype=torch.float32)
    if name == "tsv":
        algorithm = TaskSingularVectorMerging(alpha=params.get("weights", params.get("scaling", 1.0)))
    elif name == "iso_c":
        algorithm = ISO_C_Merge(scaling_factor=params.get("scaling", 1.0))
    else:
        algorithm = ISO_CTS_Merge(scaling_factor=params.get("scaling", 1.0),
                                  common_space_fraction=params.get("common_fraction", 0.8))
    theirs = algorithm.run(_pool(pre, fts)).state_dict()
    ours = fmv.merge(name, pre, fts, **params)
    assert _largest_difference(ours, theirs, pre) <= AGREEMENT


@needs_fusion_bench
def test_wudi_agrees_with_fusion_bench():
    # WUDIMerging.run fails in fusion-bench 0.2.33 (its merged state mixes nn.Parameter and Tensor values and
    # state_dict_add refuses that), so this calls wudi_merging, the function run calls, and adds θ_pre as run does.
    from fusion_bench.method.wudi.wudi import wudi_merging

    pre, fts = clip_like(width=16, dtype=torch.float32)
    vectors = [{key: ft[key] - pre[key] for key in pre} for ft in fts]
    merged_vector = wudi_merging(vectors, accelerator="cpu", iter_num=300)
    theirs = {key: pre[key] + merged_vector[key].detach() for key in pre}
    assert _largest_difference(fmv.merge("wudi", pre, fts), theirs, pre) <= AGREEMENT


@needs_fusion_bench
def test_tall_masks_agree_with_fusion_bench():
    # fusion-bench's generate_task_masks (tall_mask/utils.py, the authors' rule on flattened models). Its
    # TallMaskTaskArithmeticAlgorithm is not used: in 0.2.33 it passes the task vector where the fine-tuned
    # weights belong and so compares |θ_pre − τ_t|, not |θ_pre − θ_t|, with λ·|θ_MTL − θ_t|.
    from fusion_bench.method.tall_mask.utils import generate_task_masks

    pre, fts = clip_like(width=16, dtype=torch.float32)
    keys = list(pre)
    flat = lambda state: torch.cat([state[key].reshape(-1) for key in keys])  # noqa: E731
    vectors = torch.stack([flat(ft) - flat(pre) for ft in fts])
    masks = generate_task_masks(vectors, torch.stack([flat(ft) for ft in fts]), flat(pre), tall_mask_lambda=0.6)
    keep = masks.sum(dim=0) >= 2
    expected = flat(pre) + 0.3 * vectors.sum(dim=0) * keep
    ours = fmv.merge("consensus", pre, fts)
    assert float((flat(ours) - expected).abs().max()) <= AGREEMENT
    assert 0.1 < float(keep.float().mean()) < 0.9


# ----------------------------------------------------------------------------- progress and device
def test_wudi_progress_bar_only_when_asked(capsys):
    tasks = random_tasks(k=2, shape=(6, 4), dtype=torch.float32)
    merged("wudi", tasks, steps=5)
    assert capsys.readouterr().err == ""  # None: stderr is not a terminal here
    merged("wudi", tasks, steps=5, progress=True)
    err = capsys.readouterr().err
    assert "wudi w" in err and "0/5" in err


def test_wudi_through_the_command_line_records_its_device(tmp_path):
    pre, fts = clip_like(width=8, layers=1, k=2, dtype=torch.float32)
    fmv.save_state(pre, tmp_path / "pre.safetensors")
    for i, ft in enumerate(fts):
        fmv.save_state(ft, tmp_path / f"ft{i}.safetensors")
    assert main(["merge", "--method", "wudi", "--pretrained", str(tmp_path / "pre.safetensors"), "--finetuned",
                 str(tmp_path / "ft0.safetensors"), str(tmp_path / "ft1.safetensors"), "--param", "steps=20",
                 "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "merge.json").read_text())
    assert record["method"] == "wudi" and record["parameters"]["steps"] == 20
    written = fmv.load_state(tmp_path / "out")
    expected = fmv.merge("wudi", pre, fts, steps=20)
    for key in pre:
        assert torch.equal(written[key], expected[key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_wudi_on_cuda_matches_the_cpu():  # pragma: no cover  (runs where there is a GPU)
    pre, fts = clip_like(width=16, dtype=torch.float32)
    on_gpu = fmv.merge("wudi", pre, fts, device="cuda")
    on_cpu = fmv.merge("wudi", pre, fts, device="cpu")
    for key in pre:
        torch.testing.assert_close(on_gpu[key].cpu(), on_cpu[key], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- memory
# The general bound (tests/test_methods.py) is K + 2 tensors of one key. A thin SVD of a float32 1024 × 512
# matrix alone peaks at about 8.2 tensors of it with torch's CPU LAPACK (its workspace), whatever K, so the
# methods that take SVDs have their own bounds: measured here with K = 3 (the worst case for K + 2), peaks below
# 8.4 (TSV, Iso-CTS), 6.9 (Iso-C), 9.2 (CART), each with about 0.3 of a tensor to spare; from K = 8 on they are
# inside K + 2 too. WUDI takes no SVD but 300 steps of 64 matrices would take minutes: 2 steps, the same memory.
OWN_BOUNDS = {"tsv": 8.6, "iso_cts": 8.6, "iso_c": 7.1, "cart": 9.4, "wudi": 3 + 2 + 0.35}
MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    import freqmerge_viz as fmv
    directory, method, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    def status(field):
        return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(field + ':'))
    warm = fmv.merge(method, {"a.attn.weight": torch.zeros(8, 8)}, [{"a.attn.weight": torch.ones(8, 8)}] * 3, **params)
    warm["a.attn.weight"]
    state = fmv.merge(method, f"{directory}/pre.safetensors", [f"{directory}/ft{t}.safetensors" for t in range(3)],
                      **params)
    with open('/proc/self/clear_refs', 'w') as reset:
        reset.write('5')
    start = status('VmRSS')
    for key in state:
        tensor = state[key]
        del tensor
    print(json.dumps({"peak_over_start": status('VmHWM') - start}))
""")


@pytest.fixture(scope="module")
def sixteen_matrices(tmp_path_factory):
    directory = tmp_path_factory.mktemp("baseline-memory")
    g = torch.Generator().manual_seed(0)
    pre = {f"blocks.{i}.{part}.weight": torch.randn(1024, 512, generator=g) for i in range(8) for part in ("attn", "mlp")}
    fmv.save_state(pre, directory / "pre.safetensors")
    for t in range(3):
        fmv.save_state({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in pre.items()},
                       directory / f"ft{t}.safetensors")
    return directory, 1024 * 512 * 4


@pytest.mark.parametrize("method", sorted(OWN_BOUNDS))
def test_memory_within_the_stated_bound(sixteen_matrices, method):
    directory, tensor_bytes = sixteen_matrices
    params = {"steps": 2} if method == "wudi" else {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(directory), method, json.dumps(params)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    peak = json.loads(result.stdout)["peak_over_start"] / tensor_bytes
    assert peak <= OWN_BOUNDS[method], f"{method}: {peak:.2f} tensors"
