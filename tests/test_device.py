"""The CUDA path gives the CPU's numbers (skipped where no GPU is present)."""

from __future__ import annotations

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.synthetic import make_model_set

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_default_device_follows_availability():
    assert fmv.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_functions_follow_the_input_device():
    x = torch.randn(3, 8, 6, device=fmv.default_device())
    assert fmv.frequency_filter(x, 0.2).device == x.device
    assert fmv.amplitude_spectrum(x).device == x.device
    assert fmv.radial_profile(x).values.device == x.device


@cuda
def test_filters_and_spectra_on_cuda_match_cpu():
    x = torch.randn(2, 33, 20, dtype=torch.float64)
    for spec in (fmv.FilterSpec(0.2), fmv.FilterSpec(0.7, convention="official"),
                 fmv.FilterSpec(0.3, kind="butterworth", band="low")):
        torch.testing.assert_close(spec(x.cuda()).cpu(), spec(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fmv.amplitude_spectrum(x.cuda()).cpu(), fmv.amplitude_spectrum(x))


@cuda
def test_amplitude_variance_and_task_vectors_on_cuda_match_cpu():
    models = make_model_set(3, seed=2, width=16, depth=1)
    vectors = [fmv.TaskVector.from_states(models.pretrained, s) for s in models.finetuned.values()]
    on_gpu = [fmv.TaskVector.from_states(models.pretrained, s, device="cuda") for s in models.finetuned.values()]
    assert on_gpu[0][next(iter(on_gpu[0]))].device.type == "cuda"
    cpu = fmv.amplitude_variance(vectors, device="cpu").mean
    gpu = fmv.amplitude_variance(on_gpu, device="cuda").mean
    assert gpu == pytest.approx(cpu, rel=1e-5)
