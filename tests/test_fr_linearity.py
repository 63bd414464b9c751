"""FR by linearity: Σ c_i G(v_i) = G(Σ c_i v_i) for per-task scalar coefficients, so FR filters the
weighted sum once per key instead of every task vector."""

from __future__ import annotations

import pytest
import torch

import freqmerge_viz as fmv
import freqmerge_viz.methods.fr as fr

SHAPES = {"blocks.0.attn.qkv.weight": (18, 6), "blocks.0.attn.proj.weight": (6, 6), "blocks.0.attn.proj.bias": (6,),
          "blocks.0.mlp.fc1.weight": (11, 7), "patch_embed.proj.weight": (6, 3, 2, 2)}


def models(dtype, seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    pre = {key: torch.randn(shape, generator=g, dtype=dtype) for key, shape in SHAPES.items()}
    fts = [{key: v + 0.1 * torch.randn(v.shape, generator=g, dtype=dtype) for key, v in pre.items()} for _ in range(k)]
    return pre, fts


SETTINGS = [
    {}, {"kind": "gaussian", "cutoff": 0.3}, {"kind": "butterworth", "cutoff": 0.2, "order": 3},
    {"band": "low", "cutoff": 0.4}, {"band": "band", "cutoff": 0.1, "upper_cutoff": 0.6},
    {"units": "bins", "cutoff": 2.0}, {"coefficients": "uniform", "scaling": 0.7},
    {"coefficients": "none", "weights": [1.0, 0.5, 2.0]},
    {"filter_convention": "official", "cutoff": 0.7, "coefficients": "mean_abs"},
    {"filter_convention": "official", "cutoff": 0.05, "ring": "once"},
    {"preset": "official", "coefficients": "none", "sum_keys": "attn_mlp_weights", "weight_scaling": 0.5},
    {"one_d": "fft", "cutoff": 0.3},
]


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "paper")
def test_filtering_the_sum_equals_summing_the_filtered(settings, dtype, rtol):
    pre, fts = models(dtype)
    assert fr.filter_sum_first(fmv.get_method("fr").resolve(settings, 3))
    once = fmv.merge("fr", pre, fts, **settings)
    per_task = fmv.merge("fr", pre, fts, filter_order="per_task", **settings)
    for key in SHAPES:
        torch.testing.assert_close(once[key], per_task[key], rtol=rtol, atol=rtol * float(per_task[key].abs().max()))


def test_the_paper_preset_filters_once_per_key_and_align_filters_every_task(monkeypatch):
    pre, fts = models(torch.float32)
    counts = []
    original = fr.filter_step
    monkeypatch.setattr(fr, "filter_step", lambda stack, key, params: counts.append(stack.shape[0]) or
                        original(stack, key, params))
    merged = fmv.merge("fr", pre, fts)
    _ = [merged[k] for k in SHAPES]
    assert counts == [1] * len(SHAPES)
    counts.clear()
    merged = fmv.merge("fr", pre, fts, preset="official")
    _ = [merged[k] for k in merged]
    assert counts and set(counts) == {3}
    assert not fr.filter_sum_first(fmv.get_method("fr").resolve({"preset": "official_lm"}))
    assert not fr.filter_sum_first(fmv.get_method("fr").resolve({"filter_order": "per_task"}))
