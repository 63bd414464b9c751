"""Streaming analyses (issue #17): interference, spectra, radial profiles and the report, key by
key with bounded memory, equal to the stacked computations they replace."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.analysis import FilterSetting, interference_table, radial_profiles_table, spectra_of_key
from freqmerge_viz.analysis.scan import scan
from freqmerge_viz.analysis.spectra import spectrum_key
from freqmerge_viz.metrics import (AmplitudeMoments, amplitude_variance, cosine_similarity_matrix, key_moments,
                                   low_frequency_energy, moment_measure, sign_conflicts)
from freqmerge_viz.spectral import (FilterSpec, amplitude_spectrum, filter_stack, half_amplitude, half_amplitudes,
                                    half_radial_profile, half_spectrum_weights, radial_frequency, radial_profile)
from freqmerge_viz.synthetic import make_model_set
from memory_support import peak_over_start, write_matrix_models

SPECS = [FilterSpec(0.3), FilterSpec(0.2, band="low"), FilterSpec((0.1, 0.5), band="band"),
         FilterSpec(0.3, kind="butterworth"), FilterSpec(0.25, kind="butterworth", band="low", order=3),
         FilterSpec(0.3, kind="gaussian"), FilterSpec((0.1, 0.4), kind="gaussian", band="band"),
         FilterSpec(2, units="bins"), FilterSpec(1.5, units="bins", band="low"),
         FilterSpec(0.7, convention="official"), FilterSpec(0.05, convention="official"),
         FilterSpec(0.7, convention="official", band="low"), FilterSpec(0.3, convention="official", ring="once")]
"""Every kind and band, both units, and the official convention (its doubled ring, its low-pass
complement with gain -1 there, the disc kept below ratio 0.1, ring once)."""

SHAPES = {"odd": (9, 7), "even": (8, 10), "square": (12, 12), "conv": (5, 6, 3), "row": (1, 9),
          "column": (7, 1), "thin": (20, 3), "bias": (11,)}
"""Odd, even, square and non-square matrices, a conv kernel, one-row and one-column matrices, a 1-D key."""


def random_tasks(k: int, dtype: torch.dtype, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{key: torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for key, shape in SHAPES.items()}
            for _ in range(k)]


def stacked_interference(tasks, settings, one_d: str) -> pd.DataFrame:
    """interference_table as it was before streaming: amplitude_variance with the filter as transform."""
    common = dict(one_d=one_d, device="cpu")
    base = amplitude_variance(tasks, **common).mean
    rows = [{"setting": "unfiltered", "all_bins": base, "kept_bins": base, "unfiltered_kept_bins": base,
             "normalized": amplitude_variance(tasks, normalize=True, **common).mean}]
    for setting in settings:
        def transform(stack, key, spec=setting.spec):
            return filter_stack(stack, spec, one_d, path="fft")  # the paths agree; "auto" plans per shape (slow)

        rows.append({"setting": setting.label,
                     "all_bins": amplitude_variance(tasks, transform=transform, **common).mean,
                     "kept_bins": amplitude_variance(tasks, transform=transform, within=setting.spec, **common).mean,
                     "unfiltered_kept_bins": amplitude_variance(tasks, within=setting.spec, **common).mean,
                     "normalized": amplitude_variance(tasks, transform=transform, normalize=True, **common).mean})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- half-spectrum building blocks
@pytest.mark.parametrize("shape", [(9, 7), (8, 10), (1, 9), (7, 1), (6, 5), (1, 1)])
def test_half_spectrum_sums_equal_full_spectrum_sums(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full = torch.fft.fft2(x).abs()
    half = half_amplitude(x)
    torch.testing.assert_close(half, full[:, : shape[1] // 2 + 1], rtol=1e-12, atol=1e-12)
    weights = half_spectrum_weights(shape[1])
    assert float((half * weights).sum()) == pytest.approx(float(full.sum()), rel=1e-12)
    assert float(weights.sum()) * shape[0] == shape[0] * shape[1]
    for spec in SPECS:
        counted = spec.mask(shape, centered=False) >= 0.5
        counts = spec.half_counts(shape).to(torch.float64)
        assert float(counts.sum()) == int(counted.sum()), spec
        assert float((half * counts).sum()) == pytest.approx(float(full[counted].sum()), rel=1e-12, abs=1e-12), spec


def test_official_kept_set_on_odd_shapes_is_not_point_symmetric_and_the_counts_follow_it():
    # kept: the disc d <= 0.2·21 around index (10, 11); its mirror is a disc around (11, 12)
    spec = FilterSpec(0.2, convention="official", band="low")
    counted = spec.mask((21, 23), centered=False) >= 0.5
    mirrored = torch.roll(counted.flip(0).flip(1), shifts=(1, 1), dims=(0, 1))
    assert not torch.equal(counted, mirrored)
    counts = spec.half_counts((21, 23))
    assert set(counts.unique().tolist()) == {0, 1, 2}
    assert int(counts.sum()) == int(counted.sum())


def test_half_amplitudes_of_a_stack_one_at_a_time():
    x = torch.randn(3, 6, 11, generator=torch.Generator().manual_seed(2))
    got = list(half_amplitudes(iter(x)))
    assert len(got) == 3
    for task in range(3):
        torch.testing.assert_close(got[task], half_amplitude(x)[task], rtol=0, atol=0)
        torch.testing.assert_close(got[task], amplitude_spectrum(x[task], centered=False)[:, :6], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("units", ["normalized", "bins"])
@pytest.mark.parametrize("shape", [(9, 7), (8, 10), (1, 12), (5, 1)])
def test_radial_profile_from_the_half_spectrum_equals_the_full_spectrum_one(shape, units):
    x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    amplitude = amplitude_spectrum(x)  # centred, full
    radius = radial_frequency(shape, units)
    top = 1.0 if units == "normalized" else (float(radius.max()) or 1.0)
    edges = np.linspace(0.0, top * (1 + 1e-9), 8)
    expected = np.zeros((2, 7))
    for n in range(7):
        inside = ((radius >= edges[n]) & (radius < edges[n + 1])).numpy()
        expected[:, n] = amplitude.numpy()[:, inside].mean(axis=1) if inside.any() else 0.0
    got = radial_profile(x, n_bins=7, units=units).values.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    profile = half_radial_profile(half_amplitude(x[1]), shape, n_bins=7, units=units)
    np.testing.assert_allclose(profile.values.numpy(), expected[1], rtol=1e-12, atol=1e-12)


def test_welford_moments_equal_the_stacked_mean_and_variance():
    x = torch.randn(5, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3 + 10
    moments = AmplitudeMoments((9, 7), torch.float64)
    for amplitude in half_amplitudes(iter(x)):
        moments.add(amplitude)
    stacked = half_amplitude(x)
    assert moments.count == 5 and moments.mean.dtype == torch.float64
    torch.testing.assert_close(moments.mean, stacked.mean(dim=0), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(moments.variance(), stacked.var(dim=0, unbiased=False), rtol=1e-11, atol=1e-11)
    with pytest.raises(fmv.FreqMergeError, match="half spectrum"):
        moments.add(torch.zeros(9, 7))


# --------------------------------------------------------------------------- equality with the stacked measure
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("one_d", ["skip", "fft"])
def test_streaming_interference_equals_amplitude_variance_with_the_filter(dtype, rtol, one_d):
    tasks = random_tasks(4, dtype, seed=5)
    settings = [FilterSetting(repr(spec), spec) for spec in SPECS]
    got = interference_table(tasks, settings, one_d=one_d, device="cpu")
    expected = stacked_interference(tasks, settings, one_d)
    assert got["setting"].tolist() == expected["setting"].tolist()
    for column in ("all_bins", "kept_bins", "unfiltered_kept_bins", "normalized"):
        np.testing.assert_allclose(got[column], expected[column], rtol=rtol, err_msg=column)
    np.testing.assert_allclose(got["change_all_pct"], 100 * (expected["all_bins"] / expected.loc[0, "all_bins"] - 1),
                               rtol=rtol, atol=rtol)
    # the ideal filters of the paper convention leave the bins they keep as they were (the official
    # one does not: its doubled ring, and on odd shapes a kept set whose mirror is not kept)
    ideal = [i + 1 for i, spec in enumerate(SPECS) if spec.kind == "ideal" and spec.convention == "paper"]
    assert got.loc[ideal, "change_kept_pct"].abs().max() < (1e-9 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_each_matrix_row_equals_amplitude_variance(spec):
    tasks = random_tasks(3, torch.float64, seed=6)
    for key, shape in SHAPES.items():
        moments = key_moments(tasks, key, "fft", "cpu")

        def transform(stack, key):
            return filter_stack(stack, spec, "fft", path="fft")

        for within in (None, spec):
            for gain, kwargs in ((None, {}), (spec, {"transform": transform})):
                row = amplitude_variance(tasks, within=within, include=key, one_d="fft", device="cpu",
                                         **kwargs).per_matrix.iloc[0]
                got = moment_measure(moments, gain=gain, within=within)
                assert got["bins"] == row["bins"] and got["kept_fraction"] == row["kept_fraction"]
                for column in ("variance", "mean_amplitude"):
                    if np.isnan(row[column]):
                        assert np.isnan(got[column])
                    else:
                        assert got[column] == pytest.approx(row[column], rel=1e-6, abs=1e-12), (key, column)


def test_streaming_interference_on_the_synthetic_set_and_empty_input():
    models = make_model_set(3, seed=1)
    vectors = [fmv.TaskVector.from_states(models.pretrained, ft, name=name) for name, ft in models.finetuned.items()]
    settings = [FilterSetting("paper", FilterSpec(0.1)),
                FilterSetting("official", FilterSpec(0.7, convention="official"))]
    got = interference_table(vectors, settings, device="cpu")
    expected = stacked_interference(vectors, settings, "skip")
    for column in ("all_bins", "kept_bins", "unfiltered_kept_bins", "normalized"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-4)
    with pytest.raises(fmv.EmptyInputError):
        interference_table([{"b": torch.ones(3)}, {"b": torch.zeros(3)}], settings, device="cpu")


def test_interference_makes_one_row_transform_per_task_and_matrix_and_no_other_fft(monkeypatch):
    """One task's spectrum at a time: K row-wise rfft calls per matrix, each on one [H, W] matrix
    (never on a [K, H, W] stack), and no full fft2, inverse transform or filter."""
    tasks = random_tasks(3, torch.float32, seed=7)
    calls = []
    original_rfft = torch.fft.rfft

    def rfft(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return original_rfft(x, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a full-spectrum or inverse transform was made")

    monkeypatch.setattr(torch.fft, "rfft", rfft)
    for name in ("fft2", "rfft2", "ifft2", "irfft2", "irfft"):
        monkeypatch.setattr(torch.fft, name, forbidden)
    interference_table(tasks, [FilterSetting(repr(s), s) for s in SPECS], device="cpu")
    matrices = {key: shape for key, shape in SHAPES.items() if len(shape) >= 2}
    expected = [(shape[0], int(np.prod(shape[1:]))) for shape in matrices.values() for _ in range(3)]
    assert sorted(calls) == sorted(expected)


# Peak RSS of one interference table or report scan (tests/memory_support.py).
MEMORY_SCRIPT = """
    from freqmerge_viz.analysis import FilterSetting, interference_table
    from freqmerge_viz.analysis.scan import scan
    directory, k, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    vectors = [fmv.TaskVector.from_states(f"{directory}/pre.safetensors", f"{directory}/ft{t}.safetensors",
                                          device="cpu") for t in range(k)]
    settings = [FilterSetting("paper", fmv.FilterSpec(0.1))]
    def run(tasks):
        if what == "interference":
            interference_table(tasks, settings, device="cpu")
        else:
            scan(tasks, settings, 0.1, spectrum_key="none", device="cpu")
    run([{"blocks.0.attn.weight": torch.randn(8, 6)} for _ in range(k)])
    measure(lambda: run(vectors))
"""


@pytest.fixture(scope="module")
def eight_matrices(tmp_path_factory):
    directory = tmp_path_factory.mktemp("interference_memory")
    return directory, write_matrix_models(directory, layers=4, k=8)


def _peak_in_tensors(directory, k: int, what: str, tensor_bytes: int) -> float:
    return peak_over_start(MEMORY_SCRIPT, directory, k, what) / tensor_bytes


@pytest.mark.parametrize("k", [3, 8])
def test_interference_stays_within_5_5_tensors_whatever_k(eight_matrices, k):
    # Held at the peak (reading a task's entry): the two float64 half-spectrum accumulators (2),
    # the pretrained and fine-tuned entries being subtracted (2), the cached half mask and counts
    # of the filter (0.6) and blocks: about 4.9 tensors measured, whatever K; stacking the K
    # spectra would need 2K + 2 (8 for K = 3).
    directory, tensor_bytes = eight_matrices
    assert _peak_in_tensors(directory, k, "interference", tensor_bytes) <= 5.5


@pytest.mark.parametrize("k", [3, 8])
def test_report_scan_stays_within_k_plus_4_tensors(eight_matrices, k):
    # Held at the peak (the first task's transform): the key's other entries (K - 1), the half
    # spectrum (1), the accumulators (2), the cached half masks of the filter and of the energy's
    # low-pass (2 x 0.5), the filter's counts and the radial shells (2 x 0.125) and blocks of
    # about 2**16 entries: K + 3.25 and blocks (K + 3.5 measured). Keeping the key's [K, ...]
    # stack until its spectra were done, as the scan did, came to K + 4.9; holding the task
    # vectors whole would need 8·K tensors here.
    directory, tensor_bytes = eight_matrices
    assert _peak_in_tensors(directory, k, "scan", tensor_bytes) <= k + 4


# --------------------------------------------------------------------------- the report in one pass
def _check_scan_equals_individual(vectors, rtol, stacked_settings=None):
    """scan's tables equal each analysis run on its own; the interference table equals the
    stacked measure for `stacked_settings` of the settings (all by default) and the streaming
    interference_table for all."""
    settings = [FilterSetting(f"paper {c}", FilterSpec(c)) for c in (0.05, 0.2)]
    settings.append(FilterSetting("official", FilterSpec(0.7, convention="official")))
    key = spectrum_key(vectors[0])
    result = scan(vectors, settings, 0.05, spectrum_key=key, device="cpu")
    checked = settings[:stacked_settings]
    stacked = stacked_interference(vectors, checked, "skip")
    streamed = interference_table(vectors, settings, device="cpu")
    for column in ("all_bins", "kept_bins", "unfiltered_kept_bins", "normalized"):
        np.testing.assert_allclose(result.interference[column][:len(checked) + 1], stacked[column], rtol=rtol)
        np.testing.assert_allclose(result.interference[column], streamed[column], rtol=1e-12)
    matrix_keys = [k for k in vectors[0] if len(vectors[0].shape_of(k)) >= 2]
    pd.testing.assert_frame_equal(result.cosine, cosine_similarity_matrix(vectors, device="cpu"), rtol=1e-12)
    conflicts = sign_conflicts(vectors, device="cpu")
    pd.testing.assert_frame_equal(result.conflicts.pairwise, conflicts.pairwise, rtol=0, atol=0)
    assert result.conflicts.overall == conflicts.overall
    pd.testing.assert_frame_equal(result.energy, low_frequency_energy(vectors, 0.05, device="cpu"), rtol=1e-12)
    pd.testing.assert_frame_equal(result.profiles, radial_profiles_table(vectors, matrix_keys, device="cpu"),
                                  rtol=1e-12)
    np.testing.assert_array_equal(result.spectra, spectra_of_key(vectors, key, device="cpu"))


def test_report_scan_equals_each_analysis_on_the_synthetic_set():
    models = make_model_set(3, seed=2)
    vectors = [fmv.TaskVector.from_states(models.pretrained, ft, name=name) for name, ft in models.finetuned.items()]
    _check_scan_equals_individual(vectors, rtol=1e-4)


def test_report_scan_equals_each_analysis_on_the_demo_zoo(zoo):
    vectors = [fmv.TaskVector.from_states(zoo.pretrained, ft, name=task)
               for task, ft in zip(zoo.tasks, zoo.finetuned_list())]
    _check_scan_equals_individual(vectors, rtol=1e-4, stacked_settings=1)  # the stacked measure is slow (~20 s)


def test_the_report_reads_each_checkpoint_once(tmp_path):
    import math

    from freqmerge_viz import report

    paths = make_model_set(3, seed=3, width=16, depth=2).save(tmp_path / "in")
    states = {name: fmv.load_state(path) for name, path in paths.items()}
    names = [n for n in states if n != "pretrained"]
    inputs = report.ReportInputs(states["pretrained"], [states[n] for n in names], names)
    summary = report.run_report(inputs, tmp_path / "out", cutoffs=(0.1, 0.3), device="cpu", formats=("png",),
                                html=False)
    floating = {name: sum(math.prod(state.shape_of(k)) * state.dtype_of(k).itemsize
                          for k in state if state.dtype_of(k).is_floating_point) for name, state in states.items()}
    for name in names:
        assert states[name].bytes_read == floating[name], name
    assert states["pretrained"].bytes_read == 3 * floating["pretrained"]  # once per task vector
    assert summary["tasks"] == names and len(summary["interference"]) == 4


# --------------------------------------------------------------------------- command line: progress and device
@pytest.fixture()
def two_models(tmp_path):
    return make_model_set(2, seed=0, width=8, depth=1).save(tmp_path / "in")


def _interference_args(paths, *extra):
    return ["interference", "--pretrained", str(paths["pretrained"]), "--finetuned", str(paths["task0"]),
            str(paths["task1"]), "--device", "cpu", *extra]


def test_interference_command_streams_and_shows_a_bar_only_when_asked(two_models, capsys, monkeypatch):
    from freqmerge_viz import cli, taskvector

    def no_materialize(self):
        raise AssertionError("the interference command materialised a task vector")

    monkeypatch.setattr(taskvector.TaskVector, "materialize", no_materialize)
    assert cli.main(_interference_args(two_models)) == 0
    quiet = capsys.readouterr()
    assert "interference" not in quiet.err and json.loads(quiet.out)["device"] == "cpu"
    assert cli.main(_interference_args(two_models, "--progress")) == 0
    shown = capsys.readouterr()
    assert "interference" in shown.err and "key" in shown.err
    assert json.loads(shown.out)["rows"] == json.loads(quiet.out)["rows"]


def test_the_device_reaches_every_step_and_a_missing_gpu_is_an_input_error(two_models, capsys, monkeypatch):
    from freqmerge_viz import backend, cli
    from freqmerge_viz.analysis import interference

    seen = []
    original = interference.key_moments

    def key_moments(task_vectors, key, one_d, device):
        seen.append(str(device))
        return original(task_vectors, key, one_d, "cpu")

    monkeypatch.setattr(interference, "key_moments", key_moments)
    monkeypatch.setattr(backend.torch.cuda, "is_available", lambda: False)
    assert cli.main(_interference_args(two_models)[:-2] + ["--device", "cuda"]) == 2
    assert "'cuda' is not available" in capsys.readouterr().err
    assert cli.main(_interference_args(two_models)) == 0
    assert seen and set(seen) == {"cpu"}
    capsys.readouterr()
    # with a GPU reported, "cuda" is what reaches the task vectors and the measure
    monkeypatch.setattr(backend.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend.torch.cuda, "device_count", lambda: 1)
    built = []
    monkeypatch.setattr(cli, "_open_inputs", lambda args: (args.pretrained, args.finetuned))
    from freqmerge_viz import taskvector

    original_from_states = taskvector.TaskVector.from_states.__func__

    def from_states(cls, pre, ft, device="cpu", **kwargs):
        built.append(str(device))
        return original_from_states(cls, pre, ft, device="cpu", **kwargs)

    monkeypatch.setattr(taskvector.TaskVector, "from_states", classmethod(from_states))
    seen.clear()
    assert cli.main(_interference_args(two_models)[:-2] + ["--device", "cuda:0"]) == 0
    assert set(built) == {"cuda:0"} and set(seen) == {"cuda:0"}
    assert json.loads(capsys.readouterr().out)["device"] == "cuda:0"


def test_merge_and_report_commands_show_a_bar_with_progress(two_models, tmp_path, capsys):
    from freqmerge_viz.cli import main

    args = ["merge", "--method", "fr", "--pretrained", str(two_models["pretrained"]), "--finetuned",
            str(two_models["task0"]), str(two_models["task1"]), "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "quiet")]) == 0
    assert "merge fr" not in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "shown"), "--progress"]) == 0
    err = capsys.readouterr().err
    n_keys = len(fmv.load_state(two_models["pretrained"]))
    assert "merge fr" in err and f"/{n_keys}" in err
    written = fmv.load_state(tmp_path / "shown")
    quiet = fmv.load_state(tmp_path / "quiet")
    assert all(torch.equal(written[k], quiet[k]) for k in quiet)
    assert main(["report", "--synthetic", "--tasks", "2", "--out", str(tmp_path / "report"), "--formats", "png",
                 "--no-html", "--device", "cpu", "--progress"]) == 0
    assert "report" in capsys.readouterr().err


def test_progress_is_off_in_the_library_and_follows_the_terminal_when_unset(monkeypatch):
    from freqmerge_viz import progress

    assert not progress.shows_progress(False) and progress.shows_progress(True)
    monkeypatch.setattr(sys, "stderr", type("Tty", (), {"isatty": lambda self: True, "write": print,
                                                         "flush": lambda self: None})())
    assert progress.shows_progress(None)
    monkeypatch.setattr(sys, "stderr", type("Pipe", (), {"isatty": lambda self: False})())
    assert not progress.shows_progress(None)
    assert list(progress.track([1, 2, 3], "x", None)) == [1, 2, 3]
