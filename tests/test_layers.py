"""Layer depth from key names (scopes.depth_fractions) and LiNeS-style per-layer scaling as a merge
option of task arithmetic and FR, on hand-checked cases."""

from __future__ import annotations

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.scopes import depth_fractions, layer_position


def test_depth_fractions_by_key_name():
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed",
            "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.bias", "blocks.2.norm1.weight", "norm.weight", "head.weight"]
    assert depth_fractions(keys) == {"patch_embed.proj.weight": 0.0, "patch_embed.proj.bias": 0.0, "cls_token": 0.0,
                                     "pos_embed": 0.0, "blocks.0.attn.qkv.weight": 0.0, "blocks.1.mlp.fc1.bias": 0.5,
                                     "blocks.2.norm1.weight": 1.0, "norm.weight": 1.0, "head.weight": 1.0}
    # two towers, each on its own depth scale; T5's nested numbering takes the block
    towers = depth_fractions(["visual.transformer.resblocks.0.attn.in_proj_weight",
                              "visual.transformer.resblocks.4.attn.in_proj_weight",
                              "transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.1.mlp.c_fc.weight",
                              "encoder.block.0.layer.1.DenseReluDense.wi.weight"])
    assert list(towers.values()) == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert layer_position("encoder.block.3.layer.1.DenseReluDense.wi.weight") == ("encoder.block", 3)
    assert layer_position("model.layers.31.mlp.up_proj.weight") == ("model.layers", 31)
    assert layer_position("bert.embeddings.LayerNorm.weight") is None


KEYS = {"patch_embed.proj.weight": (4, 3), "blocks.0.w": (4, 4), "blocks.1.w": (4, 4), "blocks.2.w": (4, 4),
        "head.weight": (2, 4)}


def toy():
    pre = {k: torch.zeros(s) for k, s in KEYS.items()}
    return pre, [{k: torch.full(s, 1.0) for k, s in KEYS.items()}, {k: torch.full(s, 2.0) for k, s in KEYS.items()}]


def test_task_arithmetic_with_lines_by_hand():
    pre, fts = toy()
    merged = fmv.merge("task_arithmetic", pre, fts, scaling=0.5, layer_scaling=[0.2, 0.6])
    # 0.5 · (α + β·d) · (1 + 2), d = 0 (embedding), 0, 0.5, 1 (layers), 1 (head)
    expected = {"patch_embed.proj.weight": 0.3, "blocks.0.w": 0.3, "blocks.1.w": 0.75, "blocks.2.w": 1.2,
                "head.weight": 1.2}
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], torch.full(KEYS[key], value))
    assert merged.statistics["depth_fraction"]["blocks.1.w"] == 0.5
    # the stacked path (combine) gives the same
    method = fmv.get_method("task_arithmetic")
    ctx = fmv.methods.base.MergeContext(method.resolve({"scaling": 0.5, "layer_scaling": [0.2, 0.6]}), ["a", "b"],
                                        {"depth_fraction": merged.statistics["depth_fraction"]})
    stack = torch.stack([fts[0]["blocks.1.w"], fts[1]["blocks.1.w"]])
    torch.testing.assert_close(method.combine(stack, "blocks.1.w", ctx), torch.full((4, 4), 0.75))
    plain = fmv.merge("task_arithmetic", pre, fts, scaling=0.5)
    assert "depth_fraction" not in plain.statistics
    torch.testing.assert_close(plain["blocks.1.w"], torch.full((4, 4), 1.5))


def test_fr_with_lines_scales_each_keys_delta():
    pre, fts = toy()
    g = torch.Generator().manual_seed(0)
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in ft.items()} for ft in fts]
    plain = fmv.merge("fr", pre, fts, filter_scope="all_matrices")
    lines = fmv.merge("fr", pre, fts, filter_scope="all_matrices", layer_scaling=[0.5, 1.0])
    for key, factor in {"patch_embed.proj.weight": 0.5, "blocks.0.w": 0.5, "blocks.1.w": 1.0, "blocks.2.w": 1.5,
                        "head.weight": 1.5}.items():
        torch.testing.assert_close(lines[key], plain[key] * factor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [[1.0], [1.0, "a"], [-0.1, 0.5], [0.2, -0.5], [float("nan"), 0.0], 0.3])
def test_bad_layer_scalings_are_parameter_errors(bad):
    for method in ("task_arithmetic", "fr"):
        with pytest.raises(ParameterError):
            fmv.get_method(method).resolve({"layer_scaling": bad})
