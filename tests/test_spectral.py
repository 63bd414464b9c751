"""Tests of freqmerge_viz.spectral: masks, filters, spectra and profiles.

Reference values are computed here independently with numpy (never with library helpers).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import freqmerge_viz as fmv
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.spectral import (FilterSpec, amplitude_spectrum, angular_profile, as_matrix,
                                    band_energy_fraction, clear_mask_cache, filter_parameter, fourier_transform,
                                    frequency_filter, frequency_mask, power_spectrum, radial_frequency,
                                    radial_profile)
from freqmerge_viz.spectral.masks import _cached_half_mask, _cached_mask

KINDS = ("ideal", "butterworth", "gaussian")
SHAPES = [(8, 8), (6, 10), (10, 6), (7, 9), (9, 9), (15, 5)]
CUTOFF_BY_UNITS = {"normalized": 0.4, "bins": 2.5}


def rand(*shape, dtype=torch.float64, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal(shape)).to(dtype)


# --------------------------------------------------------------------------- independent references
def np_centred_freqs(n: int) -> np.ndarray:
    """Row/column frequency of each index of a centred spectrum: i - n//2."""
    return np.arange(n) - n // 2


def np_bins_radius_centred(h: int, w: int) -> np.ndarray:
    eta = np_centred_freqs(h)[:, None]
    gamma = np_centred_freqs(w)[None, :]
    return np.sqrt(eta**2 + gamma**2)


def np_normalized_radius_centred(h: int, w: int) -> np.ndarray:
    eta = np_centred_freqs(h)[:, None] / (h / 2)
    gamma = np_centred_freqs(w)[None, :] / (w / 2)
    return np.sqrt((eta**2 + gamma**2) / 2) * np.ones((h, w))


def checkerboard(h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None, :]
    return ((-1.0) ** (i + j)).to(dtype)


# --------------------------------------------------------------------------- identities
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("units", ["normalized", "bins"])
@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (2, 3, 9, 5), (4, 1, 6)])
def test_cutoff_zero_high_pass_is_identity(kind, units, shape):
    x = rand(*shape, seed=1)
    out = frequency_filter(x, 0.0, kind=kind, units=units)
    assert out.shape == x.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    mask = frequency_mask(shape, 0.0, kind=kind, units=units)
    assert torch.equal(mask, torch.ones(shape[-2:]))
    low = frequency_filter(x, 0.0, kind=kind, band="low", units=units)
    assert float(low.abs().max()) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("units", ["normalized", "bins"])
@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (3, 15, 5)])
def test_low_plus_high_is_input(kind, units, shape):
    x = rand(*shape, seed=2)
    cutoff = CUTOFF_BY_UNITS[units]
    high = frequency_filter(x, cutoff, kind=kind, band="high", units=units)
    low = frequency_filter(x, cutoff, kind=kind, band="low", units=units)
    torch.testing.assert_close(low + high, x, rtol=0, atol=1e-10)
    # and the split is not trivial: both parts carry energy
    assert float(high.abs().max()) > 1e-3 and float(low.abs().max()) > 1e-3


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (2, 12, 20)])
def test_low_plus_high_is_input_official(shape):
    x = rand(*shape, seed=3)
    high = frequency_filter(x, 0.3, convention="official")
    low = frequency_filter(x, 0.3, band="low", convention="official")
    torch.testing.assert_close(low + high, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("units,lo,hi", [("normalized", 0.2, 0.6), ("bins", 1.0, 3.5)])
@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (9, 7)])
def test_ideal_band_pass_is_difference_of_high_passes(units, lo, hi, shape):
    x = rand(*shape, seed=4)
    band = frequency_filter(x, (lo, hi), band="band", units=units)
    expected = (frequency_filter(x, lo, units=units) - frequency_filter(x, hi, units=units))
    torch.testing.assert_close(band, expected, rtol=0, atol=1e-10)
    assert float(band.abs().max()) > 1e-3


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (3, 12, 20)])
def test_parseval(shape):
    x = rand(*shape, seed=5)
    power = power_spectrum(x)
    h, w = shape[-2:]
    torch.testing.assert_close(power.sum(dim=(-2, -1)), h * w * (x**2).sum(dim=(-2, -1)),
                               rtol=1e-12, atol=0)
    # independent cross-check of the spectrum itself
    np.testing.assert_allclose(power_spectrum(x, centered=False).numpy(),
                               np.abs(np.fft.fft2(x.numpy())) ** 2, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(amplitude_spectrum(x).numpy(),
                               np.abs(np.fft.fftshift(np.fft.fft2(x.numpy()), axes=(-2, -1))),
                               rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- real output
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("units", ["normalized", "bins"])
@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (15, 5)])
def test_filter_of_real_input_is_real_and_matches_full_fft(kind, units, shape):
    x = rand(*shape, seed=6)
    cutoff = CUTOFF_BY_UNITS[units]
    spec = FilterSpec(cutoff, kind=kind, units=units)
    out = frequency_filter(x, cutoff, kind=kind, units=units)
    assert not out.is_complex() and out.dtype == torch.float64
    mask = spec.mask(shape, dtype=torch.float64, centered=False)
    full = torch.fft.ifft2(torch.fft.fft2(x) * mask)
    assert float(full.imag.abs().max()) < 1e-12
    torch.testing.assert_close(out, full.real, rtol=0, atol=1e-12)
    # the unshifted mask is the centred mask shifted back
    assert torch.equal(torch.fft.ifftshift(spec.mask(shape, dtype=torch.float64)), mask)


# The official convention against the authors' filter: test_fidelity.py.


def test_official_odd_shape_drops_an_imaginary_part():
    # documented quirk: with odd sizes the kept set is not conjugate-symmetric
    x = rand(7, 9, seed=8)
    mask = FilterSpec(0.3, convention="official").mask((7, 9), dtype=torch.float64, centered=False)
    full = torch.fft.ifft2(torch.fft.fft2(x) * mask)
    assert float(full.imag.abs().max()) > 1e-3
    torch.testing.assert_close(frequency_filter(x, 0.3, convention="official"), full.real,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape,removed", [((768, 768), 0.0002), ((2304, 768), 0.58),
                                           ((3072, 768), 0.68)])
def test_official_removal_shares_from_the_paper(shape, removed):
    mask = frequency_mask(shape, 0.7, convention="official")
    share = 1.0 - float(mask.double().mean())
    assert abs(share - removed) <= 0.005
    clear_mask_cache()


# --------------------------------------------------------------------------- paper convention
@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (9, 9), (15, 5), (1, 12)])
@pytest.mark.parametrize("d0", [0.5, 1.0, 2.0, 2.5, 3.0, 5.0])
def test_bins_mask_is_literal_indicator(shape, d0):
    expected = (np_bins_radius_centred(*shape) >= d0).astype(np.float32)
    got = frequency_mask(shape, d0, units="bins")
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_allclose(radial_frequency(shape, units="bins").numpy(),
                               np_bins_radius_centred(*shape), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (9, 9), (15, 5)])
def test_normalized_radius_matches_definition(shape):
    np.testing.assert_allclose(radial_frequency(shape).numpy(), np_normalized_radius_centred(*shape),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (15, 5)])
def test_dc_is_at_centre(shape):
    h, w = shape
    mask = frequency_mask(shape, 0.5, units="bins")
    zeros = (mask == 0).nonzero().tolist()
    assert zeros == [[h // 2, w // 2]]
    c = 1.75
    amp = amplitude_spectrum(torch.full(shape, c, dtype=torch.float64))
    assert float(amp[h // 2, w // 2]) == pytest.approx(h * w * c, rel=1e-12)
    rest = amp.clone()
    rest[h // 2, w // 2] = 0
    assert float(rest.abs().max()) < 1e-10
    spectrum = fourier_transform(torch.full(shape, c, dtype=torch.float64))
    assert spectrum.is_complex()
    assert abs(complex(spectrum[h // 2, w // 2]) - h * w * c) < 1e-10


# --------------------------------------------------------------------------- normalized units
def test_normalized_removal_share_is_shape_independent():
    shares = [1.0 - float(frequency_mask(s, 0.3).double().mean())
              for s in [(64, 64), (128, 32), (31, 97)]]
    # ellipse area pi * 0.18 / 4 = 0.1414 in normalized coordinates
    for share in shares:
        assert share == pytest.approx(math.pi * 0.18 / 4, abs=0.01)
    assert max(shares) - min(shares) < 0.01
    # in bins the same number means very different shares
    bins = [1.0 - float(frequency_mask(s, 10.0, units="bins").double().mean())
            for s in [(64, 64), (32, 32)]]
    assert bins[0] != pytest.approx(bins[1], abs=0.01)


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (2, 16)])
def test_even_corner_has_radius_one(shape):
    radius = radial_frequency(shape)
    assert float(radius[0, 0]) == 1.0
    assert float(radius.max()) == 1.0
    h, w = shape
    assert float(radius[h // 2, w // 2]) == 0.0
    # Nyquist of a single axis at 1/sqrt(2)
    assert float(radius[0, w // 2]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_odd_shape_radius_below_one():
    assert float(radial_frequency((7, 9)).max()) < 1.0


def test_row_vector_normalized_radius_uses_one_axis():
    radius = radial_frequency((1, 8))
    np.testing.assert_allclose(radius.numpy()[0], np.abs(np.arange(8) - 4) / 4, atol=1e-12)


# --------------------------------------------------------------------------- parameter errors
@pytest.mark.parametrize("kwargs,pattern", [
    (dict(cutoff=1.01), "1.01"),
    (dict(cutoff=-0.1), "-0.1"),
    (dict(cutoff=-1.0, units="bins"), "-1.0"),
    (dict(cutoff=float("nan")), "nan"),
    (dict(cutoff=(0.5, 0.5), band="band"), "lower < upper"),
    (dict(cutoff=(0.6, 0.2), band="band"), "lower < upper"),
    (dict(cutoff=0.3, band="band"), "cutoff=\\(lower, upper\\)"),
    (dict(cutoff=(0.1, 0.3), band="high"), "one cutoff"),
    (dict(cutoff=0.7, kind="gaussian", convention="official"), "gaussian"),
    (dict(cutoff=0.7, kind="butterworth", convention="official"), "butterworth"),
    (dict(cutoff=0.7, units="bins", convention="official"), "bins"),
    (dict(cutoff=0.7, convention="official", band="band"), "band"),
    (dict(cutoff=0.3, kind="triangle"), "'triangle'"),
    (dict(cutoff=0.3, band="notch"), "'notch'"),
    (dict(cutoff=0.3, units="hertz"), "'hertz'"),
    (dict(cutoff=0.3, convention="mine"), "'mine'"),
    (dict(cutoff=0.3, kind="butterworth", order=0), "order"),
    (dict(cutoff="abc"), "'abc'"),
])
def test_bad_parameters_raise(kwargs, pattern):
    with pytest.raises(ParameterError, match=pattern):
        frequency_filter(rand(8, 8), **kwargs)
    with pytest.raises(ParameterError, match=pattern):
        FilterSpec(**kwargs)


def test_valid_edge_parameters_accepted():
    FilterSpec(1.0)
    FilterSpec(5.0, units="bins")
    FilterSpec(1.5, convention="official")  # a ratio, not a normalized radius


@pytest.mark.parametrize("x", [torch.ones(4, 4, dtype=torch.int64), torch.ones(4, 4, dtype=torch.int32),
                               torch.ones(4, 4, dtype=torch.bool),
                               torch.ones(4, 4, dtype=torch.complex64)])
def test_non_real_float_input_raises(x):
    with pytest.raises(ParameterError, match=re.escape(str(x.dtype))):
        frequency_filter(x, 0.3)
    with pytest.raises(ParameterError):
        power_spectrum(x)


def test_one_d_input_to_filter_raises():
    with pytest.raises(ParameterError, match="H, W"):
        frequency_filter(torch.ones(5), 0.3)


# --------------------------------------------------------------------------- mask cache
def test_masks_are_cached_and_clearable():
    clear_mask_cache()
    spec = FilterSpec(0.3, kind="butterworth")
    a = spec.mask((8, 12))
    assert spec.mask((8, 12)) is a
    assert FilterSpec(0.3, kind="butterworth").mask((8, 12)) is a  # equal spec, same entry
    assert frequency_mask((8, 12), 0.3, kind="butterworth") is a
    assert spec.mask((12, 8)) is not a
    assert spec.mask((8, 12), centered=False) is not a
    assert spec.mask((8, 12), dtype=torch.float64) is not a
    assert FilterSpec(0.4, kind="butterworth").mask((8, 12)) is not a
    assert _cached_mask.cache_info().currsize >= 5
    spec.half_mask((8, 12))
    assert _cached_half_mask.cache_info().currsize >= 1
    clear_mask_cache()
    assert _cached_mask.cache_info().currsize == 0
    assert _cached_half_mask.cache_info().currsize == 0
    b = spec.mask((8, 12))
    assert b is not a and torch.equal(a, b)


def test_band_cutoff_as_list_works_like_tuple():
    x = rand(8, 8, seed=9)
    expected = frequency_filter(x, (0.2, 0.6), band="band")
    torch.testing.assert_close(frequency_filter(x, [0.2, 0.6], band="band"), expected)


# --------------------------------------------------------------------------- gains
def test_butterworth_gain_at_cutoff_is_half():
    # bin (3, 4) from DC has radius exactly 5
    for order in (1, 2, 3):
        mask = frequency_mask((16, 16), 5.0, kind="butterworth", units="bins", order=order)
        assert float(mask[8 + 3, 8 + 4]) == 0.5
        assert float(mask[8 - 5, 8]) == 0.5
        low = frequency_mask((16, 16), 5.0, kind="butterworth", band="low", units="bins", order=order)
        assert float(low[8 + 4, 8 - 3]) == 0.5


@pytest.mark.parametrize("order", [1, 2, 4])
def test_butterworth_mask_matches_formula(order):
    shape = (9, 12)
    d = np_bins_radius_centred(*shape)
    with np.errstate(divide="ignore"):
        expected = np.where(d > 0, 1.0 / (1.0 + (3.0 / np.where(d > 0, d, 1)) ** (2 * order)), 0.0)
    got = frequency_mask(shape, 3.0, kind="butterworth", units="bins", order=order)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


def test_gaussian_gain_at_cutoff():
    mask = frequency_mask((16, 16), 5.0, kind="gaussian", units="bins")
    assert float(mask[8 + 3, 8 + 4]) == pytest.approx(1 - math.exp(-0.5), abs=1e-7)
    assert float(mask[8, 8]) == 0.0
    low = frequency_mask((16, 16), 5.0, kind="gaussian", band="low", units="bins")
    assert float(low[8 + 3, 8 + 4]) == pytest.approx(math.exp(-0.5), abs=1e-7)
    d = np_bins_radius_centred(16, 16)
    np.testing.assert_allclose(mask.numpy(), 1 - np.exp(-d**2 / 50.0), atol=1e-6)


def test_mask_gains_in_unit_interval_and_monotone_in_radius():
    for kind in KINDS:
        mask = frequency_mask((11, 14), 0.5, kind=kind).double()
        assert float(mask.min()) >= 0 and float(mask.max()) <= 1
        radius = radial_frequency((11, 14)).flatten()
        order = torch.argsort(radius)
        gains = mask.flatten()[order]
        assert bool((gains.diff() >= -1e-7).all())


# --------------------------------------------------------------------------- as_matrix / filter_parameter
def test_as_matrix_rules():
    v = torch.arange(6.0)
    assert as_matrix(v) is None
    assert as_matrix(v, one_d="fft").shape == (1, 6)
    assert torch.equal(as_matrix(v, one_d="fft")[0], v)
    assert as_matrix(torch.tensor(2.0)) is None
    assert as_matrix(torch.tensor(2.0), one_d="fft") is None
    m = torch.randn(3, 4)
    assert as_matrix(m) is m
    k = torch.randn(5, 3, 2, 4)
    view = as_matrix(k)
    assert view.shape == (5, 24)
    assert torch.equal(view[2, 8:16], k[2, 1].flatten())
    assert as_matrix(torch.randn(5, 3, 7)).shape == (5, 21)
    with pytest.raises(ParameterError, match="one_d"):
        as_matrix(v, one_d="bogus")


def test_filter_parameter_conv_kernel_filters_its_matrix_view():
    k = rand(6, 3, 3, 3, seed=10)
    spec = FilterSpec(0.3)
    got = filter_parameter(k, spec)
    assert got.shape == k.shape
    expected = frequency_filter(k.reshape(6, 27), 0.3).reshape(k.shape)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(got, k)


def test_filter_parameter_one_d():
    v = rand(10, seed=11)
    spec = FilterSpec(0.3)
    torch.testing.assert_close(filter_parameter(v, spec), v, rtol=0, atol=0)
    got = filter_parameter(v, spec, one_d="fft")
    assert got.shape == (10,)
    expected = frequency_filter(v.reshape(1, 10), 0.3)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # 1-D FFT reference: keep |gamma| / (N/2) >= 0.3
    freqs = np.abs(np.fft.fftfreq(10, d=0.1)) / 5
    ref = np.fft.ifft(np.fft.fft(v.numpy()) * (freqs >= 0.3)).real
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)


def test_filter_parameter_matrix():
    m = rand(7, 9, seed=12)
    spec = FilterSpec(0.25, kind="gaussian")
    torch.testing.assert_close(filter_parameter(m, spec), spec(m), rtol=0, atol=0)


# --------------------------------------------------------------------------- profiles and band energy
def test_radial_profile_cosine_lands_in_expected_shell():
    h = w = 32
    j = torch.arange(w, dtype=torch.float64)
    x = torch.cos(2 * math.pi * 8 * j / w)[None, :].expand(h, w).clone()
    # energy at (eta, gamma) = (0, +-8): rho = sqrt((8/16)^2 / 2) = 0.35355
    prof = radial_profile(x, n_bins=10, spectrum="power")
    assert prof.centers.shape == (10,) and prof.values.shape == (10,)
    np.testing.assert_allclose(prof.centers.numpy(), np.arange(10) / 10 + 0.05, atol=1e-9)
    nonzero = (prof.values > 1e-6 * float(prof.values.max())).nonzero().flatten().tolist()
    assert nonzero == [3]
    rho = np_normalized_radius_centred(h, w)
    n_shell = int(((rho >= 0.3) & (rho < 0.4)).sum())
    expected = 2 * (h * w / 2) ** 2 / n_shell
    assert float(prof.values[3]) == pytest.approx(expected, rel=1e-9)


def test_radial_profile_batch_and_bins_units():
    x = rand(3, 10, 12, seed=13)
    prof = radial_profile(x, n_bins=5, units="bins")
    assert prof.values.shape == (3, 5)
    for b in range(3):
        single = radial_profile(x[b], n_bins=5, units="bins")
        torch.testing.assert_close(prof.values[b], single.values)
    # mean amplitude in shells, independently
    amp = np.abs(np.fft.fftshift(np.fft.fft2(x[0].numpy())))
    d = np_bins_radius_centred(10, 12)
    edges = np.linspace(0, d.max() * (1 + 1e-9), 6)
    for n in range(5):
        inside = (d >= edges[n]) & (d < edges[n + 1])
        assert float(prof.values[0, n]) == pytest.approx(amp[inside].mean(), rel=1e-9)


def test_radial_profile_float32_keeps_corner():
    x = checkerboard(8, 8)
    prof32 = radial_profile(x, n_bins=4, spectrum="power")
    prof64 = radial_profile(x.double(), n_bins=4, spectrum="power")
    assert float(prof64.values[-1]) > 0  # float64 counts the corner
    torch.testing.assert_close(prof32.values.double(), prof64.values, rtol=1e-5, atol=1e-3)


def test_angular_profile_column_cosine_is_at_angle_zero():
    j = torch.arange(16, dtype=torch.float64)
    x = torch.cos(2 * math.pi * 3 * j / 16)[None, :].expand(8, 16).clone()
    prof = angular_profile(x, n_bins=4)
    assert float(prof.values[0]) > 0
    assert float(prof.values[1:].abs().max()) < 1e-9
    i = torch.arange(16, dtype=torch.float64)
    y = torch.cos(2 * math.pi * 3 * i / 16)[:, None].expand(16, 8).clone()
    prof = angular_profile(y, n_bins=4)  # energy along the rows' axis: angle pi/2
    assert float(prof.values[[0, 3]].abs().max()) < 1e-9
    assert float(prof.values[1] + prof.values[2]) > 0


@pytest.mark.parametrize("shape", [(7, 9), (9, 9), (15, 5), (2, 11, 13)])
def test_band_energy_fraction_covering_bands_sum_to_one(shape):
    x = rand(*shape, seed=14)
    frac = band_energy_fraction(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert frac.shape == (*shape[:-2], 4)
    torch.testing.assert_close(frac.sum(-1), torch.ones(shape[:-2], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # independent computation of the first band
    power = np.abs(np.fft.fftshift(np.fft.fft2(x.numpy()), axes=(-2, -1))) ** 2
    rho = np_normalized_radius_centred(*shape[-2:])
    inside = (rho >= 0) & (rho < 0.25)
    ref = (power * inside).sum(axis=(-2, -1)) / power.sum(axis=(-2, -1))
    np.testing.assert_allclose(frac[..., 0].numpy(), ref, rtol=1e-10)


def test_band_energy_fraction_even_shape_with_top_edge_above_one():
    x = rand(8, 12, seed=15)
    frac = band_energy_fraction(x, [0.0, 0.5, 1.01])
    assert float(frac.sum()) == pytest.approx(1.0, abs=1e-12)
    assert band_energy_fraction(torch.zeros(4, 4), [0, 1]).tolist() == [0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_band_energy_fraction_edges_zero_to_one_cover_even_spectrum(dtype):
    frac = band_energy_fraction(checkerboard(8, 8, dtype), [0.0, 0.5, 1.0])
    torch.testing.assert_close(frac.double(), torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_band_energy_fraction_bad_edges():
    with pytest.raises(ParameterError, match="increasing"):
        band_energy_fraction(rand(4, 4), [0.5, 0.2])
    with pytest.raises(ParameterError, match="increasing"):
        band_energy_fraction(rand(4, 4), [0.5])


@settings(max_examples=30, deadline=None)
@given(h=st.integers(2, 24), w=st.integers(2, 24), cutoff=st.floats(0.05, 0.95),
       seed=st.integers(0, 2**31 - 1))
def test_property_high_pass_leaves_no_energy_below_cutoff(h, w, cutoff, seed):
    x = rand(h, w, seed=seed)
    y = frequency_filter(x, cutoff)
    below = band_energy_fraction(y, [0.0, cutoff])
    total_y = float(power_spectrum(y).sum())
    if total_y > 0:
        assert float(below[0]) < 1e-12
    # energy at or above the cutoff is untouched
    rho = radial_frequency((h, w))
    keep = rho >= cutoff
    torch.testing.assert_close(power_spectrum(y)[keep], power_spectrum(x)[keep],
                               rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(2, 20),
       cutoff=st.one_of(st.just(0.0), st.floats(1e-300, 1.0)),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31 - 1))
def test_property_low_plus_high_and_energy_split(h, w, cutoff, kind, seed):
    x = rand(h, w, seed=seed)
    high = frequency_filter(x, cutoff, kind=kind)
    low = frequency_filter(x, cutoff, kind=kind, band="low")
    torch.testing.assert_close(high + low, x, rtol=0, atol=1e-10)
    if kind == "ideal":  # disjoint supports: energies add up (Pythagoras)
        assert float((high**2).sum() + (low**2).sum()) == pytest.approx(float((x**2).sum()), rel=1e-9)


@pytest.mark.parametrize("kind,cutoff,order", [("butterworth", 1e-160, 2), ("butterworth", 1e-3, 60),
                                               ("gaussian", 1e-200, 2)])
def test_tiny_cutoff_soft_filters_stay_finite(kind, cutoff, order):
    x = rand(4, 6, seed=17)
    out = frequency_filter(x, cutoff, kind=kind, order=order)
    # limit cutoff -> 0+: DC gain 0, every other gain -> 1, i.e. x minus its mean
    torch.testing.assert_close(out, x - x.mean(), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- dtype rules
@pytest.mark.parametrize("dtype,expected", [(torch.float16, torch.float32),
                                            (torch.bfloat16, torch.float32),
                                            (torch.float32, torch.float32),
                                            (torch.float64, torch.float64)])
def test_dtype_rules(dtype, expected):
    x = rand(6, 10, seed=16, dtype=torch.float32).to(dtype)
    out = frequency_filter(x, 0.3)
    assert out.dtype == expected
    ref = frequency_filter(x.to(expected), 0.3)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert power_spectrum(x).dtype == expected
    assert amplitude_spectrum(x).dtype == expected
    assert fourier_transform(x).dtype == (torch.complex128 if expected == torch.float64
                                          else torch.complex64)
    assert radial_profile(x).values.dtype == expected
    assert band_energy_fraction(x, [0, 0.5, 1.01]).dtype == expected


def test_top_level_exports():
    assert fmv.frequency_filter is frequency_filter
    assert fmv.FilterSpec is FilterSpec


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), cutoff=st.floats(0.0, 1.0),
       convention=st.sampled_from(["paper", "official"]), kind=st.sampled_from(["ideal", "gaussian"]))
def test_in_place_blockwise_filter_equals_rfft2_path(h, w, cutoff, convention, kind):
    # filter_stack(inplace=True) transforms axis by axis in blocks of BLOCK_ENTRIES; shapes up
    # to 300 x 300 span one block and several column and row blocks.
    spec = fmv.FilterSpec(cutoff, "ideal" if convention == "official" else kind, "high", "normalized", convention)
    stack = torch.randn(2, h, w, generator=torch.Generator().manual_seed(h * 1000 + w), dtype=torch.float64)
    expected = torch.fft.ifft2(torch.fft.fft2(stack) * spec.mask((h, w), dtype=torch.float64, centered=False)).real
    result = fmv.spectral.filter_stack(stack.clone(), spec, inplace=True)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


def test_blockwise_filter_crosses_block_boundaries(monkeypatch):
    import freqmerge_viz.spectral as spectral
    for floor in (spectral.masks, spectral.fastpath, spectral.filters):
        monkeypatch.setattr(floor, "BLOCK_ENTRIES", 64)
    spec = fmv.FilterSpec(0.3)
    x = torch.randn(1, 37, 29, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.fft.ifft2(torch.fft.fft2(x) * spec.mask((37, 29), dtype=torch.float64, centered=False)).real
    torch.testing.assert_close(spectral.filter_stack(x.clone(), spec, inplace=True), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("h, w, cutoff", [(6, 6, 1 / 3), (4, 4, 0.5), (8, 8, 0.25), (12, 12, 0.5)])
def test_bands_and_filters_share_one_boundary_rule(h, w, cutoff):
    """A bin at exactly the cutoff is kept by the high-pass and lies in the band [cutoff, …):
    the high-pass leaves no energy in [0, cutoff), the low-pass none in [cutoff, 1]
    (shapes where some bin sits exactly on the cutoff; the rule the hypothesis test found)."""
    rho = radial_frequency((h, w))
    assert bool((rho == cutoff).any())
    x = rand(h, w, seed=21)
    high = frequency_filter(x, cutoff)
    low = frequency_filter(x, cutoff, band="low")
    assert float(band_energy_fraction(high, [0.0, cutoff])[0]) < 1e-12
    assert float(band_energy_fraction(high, [0.0, cutoff, 1.0])[0]) < 1e-12
    assert float(band_energy_fraction(low, [cutoff, 1.0])[0]) < 1e-12
