"""plots.scales: robust spectrum limits with exact zeros as NaN, binomial standard errors, percent,
the "within noise" test and the sample note that accuracy figures print."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis_support import shipped_zoo  # noqa: F401  (fixture)
from freqmerge_viz.plots.scales import (ZERO_RELATIVE, as_percent, binomial_se, mean_se, sample_note,
                                        spectrum_image, within_noise)


def test_binomial_se_is_sqrt_p_q_over_n():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.9, 400) == pytest.approx(math.sqrt(0.9 * 0.1 / 400))
    assert binomial_se(1.0, 50) == 0.0
    assert math.isnan(binomial_se(0.5, 0))
    np.testing.assert_allclose(binomial_se(np.array([0.5, 0.8]), np.array([100, 25])), [0.05, 0.08])


def test_mean_se_of_independent_tasks():
    # two tasks at p = 0.5 on 100 images: each SE 0.05, the mean's SE sqrt(2 · 0.05²) / 2
    assert mean_se([0.5, 0.5], [100, 100]) == pytest.approx(math.sqrt(2) * 0.05 / 2)
    assert mean_se([0.9, 0.5], [400, 100]) == pytest.approx(math.sqrt(0.9 * 0.1 / 400 + 0.25 / 100) / 2)


def test_as_percent():
    assert as_percent(0.657) == pytest.approx(65.7)
    np.testing.assert_allclose(as_percent([0.1, 1.0]), [10.0, 100.0])


def test_within_noise_is_overlap_of_every_bar():
    assert within_noise([0.65, 0.66, 0.655], [0.01, 0.01, 0.01])
    assert not within_noise([0.60, 0.66], [0.01, 0.01])
    assert within_noise([0.60, 0.62], [0.01, 0.01])          # touching bars overlap
    assert within_noise([0.5, np.nan], [0.01, np.nan])
    assert not within_noise([0.5, 0.6], [np.nan, np.nan])    # no error: any difference counts


def test_sample_note():
    assert sample_note(8, 300) == "mean over 8 tasks × 300 test images; bars ±1 SE (binomial)"
    assert sample_note(8, [150, 300, 300], split="val", bars="bands") == \
        "mean over 8 tasks × 150–300 val images; bands ±1 SE (binomial)"
    assert sample_note(1, 256) == "256 test images; bars ±1 SE (binomial)"


def test_spectrum_image_marks_a_zero_row_and_keeps_it_out_of_the_limits():
    rng = np.random.default_rng(0)
    amplitude = rng.uniform(0.5, 2.0, size=(2, 8, 6))
    amplitude[:, 4, :] = 1e-7                      # the centred η = 0 row, numerically zero
    image = spectrum_image(amplitude)
    assert image.zero_rows == (4,) and image.zero_cols == ()
    assert np.isnan(image.values[:, 4, :]).all() and np.isfinite(image.values[:, :4]).all()
    assert np.log(0.5) <= image.vmin < image.vmax <= np.log(2.0)
    assert image.zero_fraction == pytest.approx(1 / 8)
    caption = image.caption(center=(4, 3))
    assert "η = 0 row" in caption and "12.5% of bins" in caption
    assert spectrum_image(amplitude[:, :4]).caption() == ""


def test_a_zero_eta_row_is_found_and_the_shipped_zoo_has_none(shipped_zoo):
    """What the spectra caption reports: a matrix whose columns sum to zero (as the first zoo's
    residual writers did under SGD fine-tuning) has an exactly zero η = 0 row, which
    spectrum_image names; the shipped zoo's task vectors (AdamW fine-tuning) have no such row."""
    import torch

    import freqmerge_viz as fmv
    from freqmerge_viz.analysis.evaluation import zoo_task_vectors
    from freqmerge_viz.analysis.spectra import spectra_of_key

    vectors = zoo_task_vectors(shipped_zoo, shipped_zoo.tasks[:3])
    for key in ("blocks.0.attn.proj.weight", "blocks.1.mlp.fc2.weight", "blocks.0.attn.qkv.weight"):
        spectra = spectra_of_key(vectors, key, device="cpu")
        assert spectrum_image(np.exp(spectra)).zero_rows == (), key
        tau = vectors[0][key].double()
        centred = tau - tau.mean(dim=0, keepdim=True)                 # every column sums to zero
        amplitude = torch.exp(fmv.log_amplitude_spectrum(centred)).numpy()
        image = spectrum_image(amplitude)
        center = amplitude.shape[-2] // 2
        assert image.zero_rows == (center,), key
        assert amplitude[center].max() <= ZERO_RELATIVE * amplitude.max()


def test_best_on_validation_takes_the_highest_mean_and_the_earlier_on_ties():
    from freqmerge_viz.stats import best_on_validation

    assert best_on_validation([0.5, 0.7, 0.6]) == 1
    assert best_on_validation([0.7, 0.5, 0.7]) == 0
    assert best_on_validation([float("nan"), 0.2, 0.2]) == 1
    assert best_on_validation([float("nan")]) == 0
    with pytest.raises(ValueError):
        best_on_validation([])


def test_every_chooser_uses_the_one_rule():
    # the comparison, the selection cache, the sweeps, LiNeS and the zoo build all choose with stats.best_on_validation
    import inspect

    from freqmerge_viz.analysis import compare, lines, selection, sweeps
    from freqmerge_viz.zoo import build

    for module in (compare, selection, sweeps, lines, build):
        source = inspect.getsource(module)
        assert "best_on_validation(" in source, module.__name__
        assert "key=lambda i: (means[i], -i)" not in source, module.__name__
