"""The low-band filter path: same results as the full-spectrum path, its band, its cost model.

Every comparison is between two independent computations: the full 2-D FFT path (the
reference, itself tested against numpy in test_spectral.py) and the low-band path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import freqmerge_viz.spectral as spectral
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.spectral import (FilterSpec, LowbandPlan, apply_filter, clear_mask_cache, fft_path_cost,
                                    filter_costs, filter_path, filter_stack, lowband_plans, lowband_terms)
from reference import authors_disc_and_band

SHAPES = [(7, 5), (33, 17), (64, 48), (96, 384), (127, 255), (300, 21), (19, 310), (5, 1), (2, 2)]
SPECS = {
    "paper-normalized": [FilterSpec(c) for c in (0.05, 0.2, 0.5)],
    "paper-bins": [FilterSpec(c, units="bins") for c in (1.5, 4.0, 10.0)],
    "official": [FilterSpec(c, convention="official") for c in (0.7, 0.5, 0.3)],
}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def rand(*shape, dtype=torch.float64, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def relative_error(result: torch.Tensor, expected: torch.Tensor) -> float:
    return float((result.double() - expected.double()).norm() / expected.double().norm())


def both_paths(x: torch.Tensor, spec: FilterSpec, path, inplace: bool) -> torch.Tensor:
    if inplace:
        return filter_stack(x.clone(), spec, inplace=True, path=path)
    return filter_stack(x, spec, path=path)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("convention", sorted(SPECS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
def test_lowband_path_equals_fft_path(shape, convention, dtype, inplace):
    x = rand(3, *shape, dtype=dtype, seed=shape[0] * 1000 + shape[1])
    for spec in SPECS[convention]:
        expected = filter_stack(x, spec, path="fft")
        if float(expected.norm()) < 1e-3 * float(x.norm()):
            continue
        result = both_paths(x, spec, "lowband", inplace)
        assert result.dtype == dtype and result.shape == x.shape
        assert relative_error(result, expected) <= TOLERANCE[dtype], spec


@pytest.mark.parametrize("shape", [(64, 48), (48, 64), (127, 255), (33, 17)], ids=str)
@pytest.mark.parametrize("spec", [FilterSpec(0.2), FilterSpec(3.0, units="bins"),
                                  FilterSpec(0.6, convention="official"), FilterSpec(0.15, band="low"),
                                  FilterSpec((0.1, 0.3), band="band"),
                                  FilterSpec(0.4, band="low", convention="official")], ids=repr)
def test_every_lowband_plan_equals_fft_path(shape, spec):
    # Both modes (subtract/direct), both orientations and every fft/dft choice per axis;
    # float64, so any indexing or symmetry slip shows far above rounding.
    x = rand(2, *shape, seed=7)
    expected = filter_stack(x, spec, path="fft")
    plans = lowband_plans(shape, spec, dtype=torch.float64, bounded=False)
    assert len({(p.mode, p.transposed, p.first, p.second) for p in plans}) == 12
    for plan in plans:
        for inplace in (False, True):
            result = both_paths(x, spec, plan, inplace)
            assert float((result - expected).norm()) <= 1e-10 * float(x.norm()), plan


def test_row_vectors_of_one_d_parameters():
    # as_matrix(one_d="fft") sees a 1-D parameter as a 1 x N row.
    stack = rand(4, 257, seed=3)
    for spec in (FilterSpec(0.1), FilterSpec(5.0, units="bins"), FilterSpec(0.3, convention="official")):
        expected = filter_stack(stack, spec, one_d="fft", path="fft")
        for inplace in (False, True):
            result = filter_stack(stack.clone(), spec, one_d="fft", inplace=inplace, path="lowband")
            assert relative_error(result, expected) <= 1e-10
        assert filter_path((1, 257), spec) in ("fft", "lowband")


def test_conv_kernels_use_their_matrix_view():
    stack = rand(2, 8, 3, 5, 5, seed=4)
    spec = FilterSpec(0.2)
    expected = filter_stack(stack, spec, path="fft")
    result = filter_stack(stack.clone(), spec, inplace=True, path="lowband")
    assert result.shape == stack.shape and relative_error(result, expected) <= 1e-10


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("spec", [FilterSpec(0.0), FilterSpec(0.0, units="bins"), FilterSpec(0.0, kind="gaussian"),
                                  FilterSpec(0.0, kind="butterworth")], ids=repr)
def test_cutoff_zero_is_the_identity(spec, inplace):
    x = rand(2, 40, 24, seed=5)
    (best, *_) = lowband_plans((40, 24), spec, dtype=torch.float64)
    assert best.half_bins == 0 and filter_path((40, 24), spec) == "lowband"
    result = both_paths(x, spec, "auto", inplace)
    assert torch.equal(result, x)


def test_low_pass_with_cutoff_zero_is_zero():
    x = rand(1, 16, 12, seed=6)
    assert torch.equal(filter_stack(x, FilterSpec(0.0, band="low"), path="lowband"), torch.zeros_like(x))


def test_direct_mode_overwrites_the_matrix():
    x = rand(1, 32, 32, seed=8)
    spec = FilterSpec(0.1, band="low")
    plans = lowband_plans((32, 32), spec, dtype=torch.float64)
    plan = next(p for p in plans if p.mode == "direct" and p.first == "dft")
    expected = filter_stack(x, spec, path="fft")
    torch.testing.assert_close(filter_stack(x.clone(), spec, inplace=True, path=plan), expected, rtol=0, atol=1e-12)


def test_blocks_cross_matrix_and_row_boundaries(monkeypatch):
    for floor in (spectral.masks, spectral.fastpath, spectral.filters):
        monkeypatch.setattr(floor, "BLOCK_ENTRIES", 64)
    clear_mask_cache()
    try:
        x = rand(3, 37, 29, seed=9)
        for spec in (FilterSpec(0.2), FilterSpec(0.5, convention="official"), FilterSpec(0.2, band="low")):
            expected = torch.fft.irfft2(torch.fft.rfft2(x) * spec.half_mask((37, 29), dtype=torch.float64), s=(37, 29))
            plans = lowband_plans((37, 29), spec, dtype=torch.float64, bounded=False)
            # transposed plans with column-wise FFTs are never proposed (slow), but work when forced
            forced = [p._replace(first="fft") for p in plans if p.transposed and p.first == "dft"]
            for plan in [p for p in plans if p.first == "fft"] + forced:
                result = filter_stack(x.clone(), spec, inplace=True, path=plan)
                torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)
            small = rand(40, 3, 2, seed=10)
            torch.testing.assert_close(filter_stack(small, spec, path="lowband"), filter_stack(small, spec, path="fft"),
                                       rtol=0, atol=1e-12)
    finally:
        clear_mask_cache()


def _support_counts(gain: np.ndarray) -> tuple[int, int]:
    """Rows of the full spectrum and columns of its half (0..W/2) holding a bin of gain ≠ 1,
    after symmetrising the gain over (k, l) -> (-k, -l)."""
    h, w = gain.shape
    symmetric = 0.5 * (gain + gain[(-np.arange(h)) % h][:, (-np.arange(w)) % w])
    band = symmetric != 1
    return int(band.any(axis=1).sum()), int(band[:, : w // 2 + 1].any(axis=0).sum())


@pytest.mark.parametrize("shape", [(768, 768), (2304, 768), (3072, 768), (45, 31), (31, 45)], ids=str)
@pytest.mark.parametrize("ratio", [0.7, 0.6, 0.45])
@pytest.mark.parametrize("ring", ["twice", "once"])
def test_official_band_is_the_corner_rectangle(shape, ratio, ring):
    # Removed bins lie farther than ratio·min(H, W) from index (H//2, W//2), i.e. near the
    # corners of the unshifted spectrum (near DC): row i holds one iff
    # (i - H//2)² + (W//2)² > (ratio·min)², and the same for columns with the roles swapped.
    # The authors' doubled ring d = min(H, W)//10 (gain 2) adds its rows and columns.
    h, w = shape
    radius = ratio * min(h, w)
    disc, band = authors_disc_and_band(h, w, ratio)
    gain = disc.astype(float) + band if ring == "twice" else (disc | band).astype(float)
    rows, half_cols = _support_counts(gain)
    row_formula = int(((np.arange(h) - h // 2) ** 2 + (w // 2) ** 2 > radius**2).sum())
    assert rows >= row_formula
    spec = FilterSpec(ratio, convention="official", ring=ring)
    subtract = [p for p in lowband_plans(shape, spec) if p.mode == "subtract"]
    assert {(p.full_bins, p.half_bins) for p in subtract if not p.transposed} == {(rows, half_cols)}


def test_official_band_of_a_square_is_tiny_and_of_a_tall_matrix_is_not():
    # docs/methods.md: at ratio 0.7 the authors' filter removes 0.02% of a 768x768 matrix, 58% of
    # 2304x768. On 768x768 the band is the 15 rows x 8 half columns around DC plus the doubled
    # ring's rows 308, 384, 460 and half columns 308, 384.
    best = lowband_plans((768, 768), FilterSpec(0.7, convention="official"))[0]
    assert (best.mode, best.full_bins, best.half_bins) == ("subtract", 18, 10)
    once = lowband_plans((768, 768), FilterSpec(0.7, convention="official", ring="once"))[0]
    assert (once.mode, once.full_bins, once.half_bins) == ("subtract", 15, 8)
    assert filter_path((768, 768), FilterSpec(0.7, convention="official")) == "lowband"
    # 2304x768: both the removed and the kept set reach every column of the half spectrum,
    # so no band saves a transform and the full spectrum is cheapest whatever the constants.
    spec = FilterSpec(0.7, convention="official")
    assert all(p.half_bins == 385 for p in lowband_plans((2304, 768), spec) if not p.transposed)
    assert filter_path((2304, 768), spec) == "fft"


@pytest.mark.parametrize("shape", [(2304, 768), (64, 48), (127, 255)], ids=str)
@pytest.mark.parametrize("cutoff", [0.1, 0.37])
def test_paper_band_is_the_disc_bounding_box(shape, cutoff):
    h, w = shape
    eta = np.fft.fftfreq(h, 1 / h)[:, None] / (h / 2)
    gamma = np.fft.fftfreq(w, 1 / w)[None, :] / (w / 2)
    gain = (np.sqrt((eta**2 + gamma**2) / 2) >= cutoff).astype(float)
    rows, half_cols = _support_counts(gain)
    assert rows == 2 * math.ceil(cutoff * math.sqrt(2) * h / 2 - 1e-12) - 1 or rows == h
    plans = [p for p in lowband_plans(shape, FilterSpec(cutoff)) if p.mode == "subtract" and not p.transposed]
    assert {(p.full_bins, p.half_bins) for p in plans} == {(rows, half_cols)}


def test_auto_picks_the_low_band_for_a_small_cutoff_on_a_big_matrix():
    for shape in [(2304, 768), (3072, 768), (768, 3072), (4096, 4096)]:
        spec = FilterSpec(0.02)
        costs = filter_costs(shape, spec)
        assert costs["lowband"] < 0.5 * costs["fft"], shape
        assert filter_path(shape, spec) == "lowband"
    assert filter_path((2048, 2048), FilterSpec(2.0, units="bins")) == "lowband"


def test_auto_picks_the_fft_for_a_large_cutoff():
    # At the single-axis Nyquist radius 1/sqrt(2) the removed disc touches every row and
    # column, and the kept corners too: neither band is smaller than the spectrum.
    for shape in [(2304, 768), (768, 768), (128, 256)]:
        spec = FilterSpec(math.sqrt(0.5))
        costs = filter_costs(shape, spec)
        assert costs["lowband"] > costs["fft"], shape
        assert filter_path(shape, spec) == "fft"


def test_auto_keeps_the_fft_for_soft_filters_even_when_the_band_is_small():
    spec = FilterSpec(0.001, kind="gaussian")
    best = lowband_plans((2304, 768), spec)[0]
    assert best.half_bins < 10 and best.cost < fft_path_cost((2304, 768))
    assert filter_path((2304, 768), spec) == "fft"


def test_cost_model_grows_with_the_band_and_the_matrix():
    costs = [filter_costs((2304, 768), FilterSpec(c))["lowband"] for c in (0.01, 0.03, 0.1, 0.3)]
    assert costs == sorted(costs) and costs[0] < costs[-1] / 3
    assert fft_path_cost((1024, 1024)) < fft_path_cost((2048, 1024)) < fft_path_cost((2048, 2048))
    for first in ("fft", "dft"):
        for second in ("fft", "dft"):
            terms = [lowband_terms(512, 512, c, 2 * c - 1, first, second) for c in (4, 16, 64)]
            assert all(sum(a) < sum(b) for a, b in zip(terms, terms[1:]))
    assert lowband_terms(512, 512, 0, 0, "dft", "dft")[:4] == (0.0, 0.0, 0.0, 0.0)
    # a DFT matrix costs work proportional to the band; an FFT does not
    small, large = (lowband_terms(4096, 4096, c, 9, "dft", "fft")[2] for c in (5, 50))
    assert large == pytest.approx(10 * small, rel=0.05)


def test_plans_are_sorted_and_bounded_in_memory():
    plans = lowband_plans((2304, 768), FilterSpec(0.3, convention="official"))
    assert [p.cost for p in plans] == sorted(p.cost for p in plans)
    assert len(plans) < len(lowband_plans((2304, 768), FilterSpec(0.3, convention="official"), bounded=False))
    for plan in plans:
        n0, n1 = (768, 2304) if plan.transposed else (2304, 768)
        if plan.first == "dft":
            assert 4 * n1 * plan.half_bins <= n0 * n1
        if plan.second == "dft":
            assert 4 * n0 * plan.full_bins <= n0 * n1


def test_unknown_path_and_foreign_plan_raise():
    x = rand(1, 8, 8)
    with pytest.raises(ParameterError, match="path"):
        apply_filter(x, FilterSpec(0.2), path="fast")
    foreign = LowbandPlan("subtract", False, "fft", "fft", 99, 5, 0.0)
    with pytest.raises(ParameterError, match="does not belong"):
        apply_filter(x, FilterSpec(0.2), path=foreign)


def test_plan_and_dft_caches_are_cleared():
    clear_mask_cache()
    spec = FilterSpec(0.05)
    filter_stack(rand(1, 64, 64), spec, path="lowband")
    assert spectral.fastpath._lowband_plans.cache_info().currsize >= 1
    assert spectral.fastpath._lowband_tensors.cache_info().currsize >= 1
    assert spectral.fastpath._band_support.cache_info().currsize >= 1
    clear_mask_cache()
    assert spectral.fastpath._lowband_plans.cache_info().currsize == 0
    assert spectral.fastpath._lowband_tensors.cache_info().currsize == 0
    assert spectral.fastpath._band_support.cache_info().currsize == 0


def test_float32_input_of_other_dtypes_is_filtered_in_float32():
    x = rand(2, 40, 30, seed=11).half()
    result = apply_filter(x, FilterSpec(0.1), path="lowband")
    assert result.dtype == torch.float32
    assert relative_error(result, apply_filter(x, FilterSpec(0.1), path="fft")) <= 1e-5


def test_apply_filter_does_not_modify_its_input():
    x = rand(2, 30, 20, seed=12)
    before = x.clone()
    apply_filter(x, FilterSpec(0.1), path="lowband")
    assert torch.equal(x, before)


SPEC_STRATEGY = st.one_of(
    st.builds(FilterSpec, st.floats(0.0, 1.0), band=st.sampled_from(["high", "low"])),
    st.builds(FilterSpec, st.floats(0.0, 40.0), units=st.just("bins"), band=st.sampled_from(["high", "low"])),
    st.builds(FilterSpec, st.floats(0.0, 1.2), convention=st.just("official"), band=st.sampled_from(["high", "low"])),
)


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), spec=SPEC_STRATEGY, data=st.data())
def test_property_every_plan_equals_the_fft_path(h, w, spec, data):
    x = rand(2, h, w, seed=h * 100 + w)
    expected = filter_stack(x, spec, path="fft")
    plans = lowband_plans((h, w), spec, dtype=torch.float64, bounded=False)
    plan = data.draw(st.sampled_from(plans))
    inplace = data.draw(st.booleans())
    result = both_paths(x, spec, plan, inplace)
    assert float((result - expected).norm()) <= 1e-10 * max(float(x.norm()), 1e-300)
    auto = both_paths(x, spec, "auto", inplace)
    assert float((auto - expected).norm()) <= 1e-10 * max(float(x.norm()), 1e-300)
