"""Adaptive per-matrix cutoffs (freqmerge_viz.cutoff_rules) and FR's cutoff_rule option: hand-checked
spectra where the chosen radius is known, the fixed rule equal to FR as it was, and the merge's
record of each key's cutoff."""

from __future__ import annotations

import math

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz import cutoff_rules as cr
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.methods import fr

F64 = torch.float64


def constant_and_checker(constant: float, checker: float) -> torch.Tensor:
    """A 4×4 matrix whose spectrum has DC = 16·constant and the corner bin (η, γ) = (−2, −2) =
    16·checker, nothing else (normalised radius 0 and 1)."""
    i = torch.arange(4, dtype=F64)
    return constant + checker * (-1.0) ** (i[:, None] + i[None, :])


# normalised radii of a 4×4 spectrum: sqrt((η² + γ²) / 8) for |η|, |γ| in {0, 1, 2}
RADII_4x4 = sorted({math.sqrt((a * a + b * b) / 8) for a in (0, 1, 2) for b in (0, 1, 2)})


def test_radius_shells_of_a_4x4_spectrum():
    radii, shell = cr.radius_shells((4, 4))
    assert radii.tolist() == pytest.approx(RADII_4x4)
    assert shell[0, 0] == 0 and float(radii[shell[2, 2]]) == pytest.approx(1.0)


def test_energy_rule_by_hand():
    # energy: DC (16·1)² = 256 and corner (16·2)² = 1024, of 1280: keeping 80% removes DC and every
    # radius below the corner's, so the cutoff is the midpoint under radius 1
    matrix = constant_and_checker(1.0, 2.0)
    below_corner = 0.5 * (math.sqrt(5 / 8) + 1.0)
    assert cr.choose_cutoff([matrix], "energy", share=0.8) == pytest.approx(below_corner)
    assert cr.choose_cutoff([matrix], "energy", share=0.81) == 0.0  # removing DC would keep 80% < 81%
    assert cr.choose_cutoff([matrix], "energy", share=1.0) == 0.0
    # at most 0.6: the midpoint under 0.707 is 0.604, so the last allowed is the one under 0.5
    assert cr.choose_cutoff([matrix], "energy", share=0.8, largest=0.6) == pytest.approx(0.5 * (math.sqrt(1 / 8) + 0.5))
    # two tasks: the energy adds up over tasks (256 + 1024 and 0 + 1024 of 2304: DC holds 11.1%)
    other = constant_and_checker(0.0, 2.0)
    assert cr.choose_cutoff([matrix, other], "energy", share=0.88) == pytest.approx(below_corner)
    assert cr.choose_cutoff([matrix, other], "energy", share=0.89) == 0.0


def test_variance_rule_by_hand():
    # DC conflicting (16 and 0), corner agreeing (32 and 32): the spread of the whole spectrum is
    # 64 / (64 + 1024) > 0; removing DC gives 0, first reached at the grid's first cutoff 0.05
    a, b = constant_and_checker(1.0, 2.0), constant_and_checker(0.0, 2.0)
    assert cr.choose_cutoff([a, b], "variance", largest=0.5) == pytest.approx(0.05)
    assert cr.choose_cutoff([a, b], "variance", largest=1.0) == pytest.approx(0.1)
    # DC agreeing, corner conflicting: keeping everything has the lowest spread
    c, d = constant_and_checker(1.0, 2.0), constant_and_checker(1.0, 0.0)
    assert cr.choose_cutoff([c, d], "variance", largest=0.5) == 0.0
    with pytest.raises(ParameterError):
        cr.choose_cutoff([a, b], "variance", largest=None)


def test_bad_rules_and_shares_are_parameter_errors():
    with pytest.raises(ParameterError):
        cr.choose_cutoff([torch.zeros(4, 4)], "fixed")
    with pytest.raises(ParameterError):
        cr.choose_cutoff([torch.zeros(4, 4)], "energy", share=0.0)
    with pytest.raises(ParameterError):
        cr.spectrum_sums([torch.zeros(4, 4), torch.zeros(4, 5)])
    with pytest.raises(ParameterError):
        fmv.get_method("fr").resolve({"cutoff_rule": "energy", "preset": "official"})
    with pytest.raises(ParameterError):
        fmv.get_method("fr").resolve({"cutoff_rule": "energy", "band": "low"})
    with pytest.raises(ParameterError):
        fmv.get_method("fr").resolve({"cutoff_rule": "energy", "cutoff_max": 1.5})
    with pytest.raises(ParameterError):
        fmv.get_method("fr").resolve({"cutoff_rule": "median"})


SHAPES = {"blocks.0.attn.qkv.weight": (12, 8), "blocks.0.mlp.fc1.weight": (16, 8), "blocks.0.attn.qkv.bias": (12,),
          "blocks.1.attn.qkv.weight": (12, 8), "head.weight": (5, 8)}


def models(seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    pre = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for _ in range(n)]
    return pre, fts


def test_the_fixed_rule_is_fr_as_it_was():
    pre, fts = models()
    spec = fmv.FilterSpec(0.1)
    lam = fr.fr_coefficients(fr.mean_abs_per_task([{k: f[k] - pre[k] for k in SHAPES} for f in fts], list(SHAPES), "cpu"))
    for settings in ({}, {"cutoff_rule": "fixed"}, {"cutoff_rule": "fixed", "filter_order": "per_task"}):
        merged = fmv.merge("fr", pre, fts, **settings)
        assert "cutoffs" not in merged.statistics
        for key in SHAPES:
            deltas = [f[key] - pre[key] for f in fts]
            filtered = [fmv.apply_filter(d, spec) if key.endswith("weight") and key.startswith("blocks") else d
                        for d in deltas]
            expected = pre[key] + sum(c * d for c, d in zip(lam, filtered))
            torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(fmv.merge("fr", pre, fts)["blocks.0.attn.qkv.weight"],
                       fmv.merge("fr", pre, fts, cutoff_rule="fixed")["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("rule, extra", [("energy", {"cutoff_share": 0.7}), ("variance", {"cutoff_max": 0.6})])
def test_an_adaptive_rule_records_each_keys_cutoff_and_filters_with_it(rule, extra):
    pre, fts = models(1)
    merged = fmv.merge("fr", pre, fts, cutoff_rule=rule, **extra)
    cutoffs = merged.statistics["cutoffs"]
    assert sorted(cutoffs) == ["blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.1.attn.qkv.weight"]
    resolved = fmv.get_method("fr").resolve({"cutoff_rule": rule, **extra})
    for key, cutoff in cutoffs.items():
        deltas = [f[key] - pre[key] for f in fts]
        assert cutoff == cr.choose_cutoff(deltas, rule, share=resolved["cutoff_share"], largest=resolved["cutoff_max"])
        fixed = fmv.merge("fr", pre, fts, cutoff=cutoff)
        torch.testing.assert_close(merged[key], fixed[key], rtol=1e-6, atol=1e-7)
    if rule == "energy":
        assert len(set(cutoffs.values())) > 1 and all(0 < c <= 0.5 for c in cutoffs.values())
    per_task = fmv.merge("fr", pre, fts, cutoff_rule=rule, filter_order="per_task", **extra)
    for key in SHAPES:
        torch.testing.assert_close(per_task[key], merged[key], rtol=1e-5, atol=1e-6)
    # the per-task step alone (no statistics pass) chooses the same cutoff from the stack
    step = fmv.method_transform("fr", 3, cutoff_rule=rule, **extra)
    key = "blocks.0.mlp.fc1.weight"
    stack = torch.stack([f[key] - pre[key] for f in fts])
    expected = fmv.apply_filter(stack, fmv.FilterSpec(cutoffs[key]))
    torch.testing.assert_close(step(stack.clone(), key), expected, rtol=1e-5, atol=1e-6)


def test_fr_ties_takes_the_rule_too():
    pre, fts = models(2)
    merged = fmv.merge("fr_ties", pre, fts, cutoff_rule="energy", cutoff_share=0.7)
    assert set(merged.statistics["cutoffs"]) == {"blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight",
                                                 "blocks.1.attn.qkv.weight"}
    assert all(torch.isfinite(merged[k]).all() for k in SHAPES)
