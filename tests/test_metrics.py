"""Tests of freqmerge_viz.metrics against hand-computed cases and plain numpy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freqmerge_viz import TaskVector
from freqmerge_viz.errors import EmptyInputError, MissingKeysError, ParameterError
from freqmerge_viz.metrics import (amplitude_variance, cosine_similarity_matrix, low_frequency_energy,
                                   low_frequency_energy_by_task, sign_conflicts, task_names)
from freqmerge_viz.spectral import FilterSpec


def t(values, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def random_tasks(k: int, shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    return [{key: torch.from_numpy(rng.standard_normal(shape)).to(dtype) for key, shape in shapes.items()}
            for _ in range(k)]


def numpy_amplitude_variance(tasks, one_d="skip", power=False) -> tuple[float, dict[str, float]]:
    per_key = {}
    for key in tasks[0]:
        arrays = [np.asarray(tv[key], dtype=np.float64) for tv in tasks]
        a = arrays[0]
        if a.ndim == 0:
            continue
        if a.ndim == 1:
            if one_d != "fft":
                continue
            arrays = [x.reshape(1, -1) for x in arrays]
        elif a.ndim > 2:
            arrays = [x.reshape(x.shape[0], -1) for x in arrays]
        amps = np.stack([np.abs(np.fft.fft2(x)) for x in arrays])
        values = amps**2 if power else amps
        per_key[key] = float(values.var(axis=0, ddof=0).mean())
    return float(np.mean(list(per_key.values()))), per_key


SHAPES = {"a.weight": (4, 6), "b.weight": (5, 5), "conv.weight": (3, 2, 2, 2), "bias": (7,)}


# --------------------------------------------------------------------------- amplitude variance
def test_amplitude_variance_hand_example_2x2():
    tasks = [{"w": t([[1, 0], [0, 0]])}, {"w": t([[1, 1], [1, 1]])}]
    # amplitudes [1,1,1,1] and [4,0,0,0]; per-bin variance [2.25, .25, .25, .25]
    result = amplitude_variance(tasks, device="cpu")
    assert result.mean == pytest.approx(0.75, abs=1e-12)
    row = result.per_matrix.iloc[0]
    assert row["key"] == "w" and row["shape"] == "2×2"
    assert row["bins"] == 4 and row["kept_fraction"] == 1.0
    assert row["variance"] == pytest.approx(0.75, abs=1e-12)
    assert row["mean_amplitude"] == pytest.approx(1.0, abs=1e-12)  # (4 + 4) / 8
    assert row["value"] == pytest.approx(0.75, abs=1e-12)
    # normalised by the mean amplitude 1.0: unchanged
    assert amplitude_variance(tasks, normalize=True, device="cpu").mean == pytest.approx(0.75)
    # power: [1,1,1,1] and [16,0,0,0] -> variances [56.25, .25, .25, .25] -> mean 14.25
    assert amplitude_variance(tasks, spectrum="power", device="cpu").mean == pytest.approx(14.25)
    # only the bins a high-pass keeps: radii 1/sqrt2, 1/sqrt2, 1 (DC dropped) -> 0.25
    kept = amplitude_variance(tasks, within=FilterSpec(0.5), device="cpu")
    assert kept.mean == pytest.approx(0.25, abs=1e-12)
    assert kept.per_matrix.iloc[0]["bins"] == 3
    assert kept.per_matrix.iloc[0]["kept_fraction"] == pytest.approx(0.75)
    # mean amplitude over those bins: (1+1+1+0+0+0)/6 = 0.5 -> normalised 0.25/0.5
    kept_norm = amplitude_variance(tasks, within=FilterSpec(0.5), normalize=True, device="cpu")
    assert kept_norm.mean == pytest.approx(0.5, abs=1e-12)


def test_amplitude_variance_hand_example_1x2_and_mean_over_matrices():
    # [[1, 2]] -> DFT [3, -1] -> amplitudes [3, 1]; [[3, -1]] -> DFT [2, 4] -> [2, 4]
    # variances: bin0 (3, 2) -> 0.25, bin1 (1, 4) -> 2.25; mean 1.25
    tasks = [{"r": t([[1, 2]])}, {"r": t([[3, -1]])}]
    assert amplitude_variance(tasks, device="cpu").mean == pytest.approx(1.25, abs=1e-12)
    # normalised: mean amplitude (3+1+2+4)/4 = 2.5 -> 0.5
    assert amplitude_variance(tasks, normalize=True, device="cpu").mean == pytest.approx(0.5, abs=1e-12)
    # power: (9, 4) -> 6.25, (1, 16) -> 56.25; mean 31.25
    assert amplitude_variance(tasks, spectrum="power", device="cpu").mean == pytest.approx(31.25)
    # row vector: normalised radius of bin 1 is 1 -> cutoff 0.5 keeps only bin 1
    kept = amplitude_variance(tasks, within=FilterSpec(0.5), normalize=True, device="cpu")
    row = kept.per_matrix.iloc[0]
    assert row["bins"] == 1 and row["kept_fraction"] == 0.5
    assert row["variance"] == pytest.approx(2.25)
    assert row["mean_amplitude"] == pytest.approx(2.5)  # (1 + 4) / 2
    assert row["value"] == pytest.approx(0.9)
    # unweighted mean over matrices: 2x2 example (0.75) and this one (1.25)
    both = [{"w": t([[1, 0], [0, 0]]), "r": t([[1, 2]])}, {"w": t([[1, 1], [1, 1]]), "r": t([[3, -1]])}]
    result = amplitude_variance(both, device="cpu")
    assert result.mean == pytest.approx(1.0, abs=1e-12)
    table = result.per_matrix.set_index("key")
    assert table.loc["w", "value"] == pytest.approx(0.75)
    assert table.loc["r", "value"] == pytest.approx(1.25)
    assert table.loc["r", "shape"] == "1×2"


def test_amplitude_variance_three_tasks_2x1():
    # columns [a, b] -> DFT [a+b, a-b]
    tasks = [{"c": t([[1], [1]])}, {"c": t([[2], [0]])}, {"c": t([[0], [-3]])}]
    # amplitudes: [2, 0], [2, 2], [3, 3]
    # bin0: (2, 2, 3) mean 7/3 var ((1/3)^2*2 + (2/3)^2)/3 = (2/9 + 4/9)/3 = 2/9
    # bin1: (0, 2, 3) mean 5/3 var ((25 + 1 + 16)/9)/3 = 42/27 = 14/9
    expected = (2 / 9 + 14 / 9) / 2
    assert amplitude_variance(tasks, device="cpu").mean == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_amplitude_variance_matches_numpy(k):
    tasks = random_tasks(k, SHAPES, seed=k)
    result = amplitude_variance(tasks, device="cpu")
    expected_mean, per_key = numpy_amplitude_variance(tasks)
    assert set(result.per_matrix["key"]) == {"a.weight", "b.weight", "conv.weight"}
    assert result.mean == pytest.approx(expected_mean, rel=1e-10)
    for _, row in result.per_matrix.iterrows():
        assert row["value"] == pytest.approx(per_key[row["key"]], rel=1e-10)
    assert result.per_matrix.set_index("key").loc["conv.weight", "shape"] == "3×8"
    # 1-D keys as rows
    with_fft = amplitude_variance(tasks, one_d="fft", device="cpu")
    expected_fft, per_key_fft = numpy_amplitude_variance(tasks, one_d="fft")
    assert "bias" in set(with_fft.per_matrix["key"])
    assert with_fft.mean == pytest.approx(expected_fft, rel=1e-10)
    # power spectrum
    power = amplitude_variance(tasks, spectrum="power", device="cpu")
    assert power.mean == pytest.approx(numpy_amplitude_variance(tasks, power=True)[0], rel=1e-10)


def test_amplitude_variance_float32_and_taskvectors():
    tasks = random_tasks(3, SHAPES, seed=11, dtype=torch.float32)
    tvs = [TaskVector.from_tensors(tv, name=f"t{i}") for i, tv in enumerate(tasks)]
    result = amplitude_variance(tvs, device="cpu")
    assert result.mean == pytest.approx(numpy_amplitude_variance(tasks)[0], rel=1e-5)


def test_include_exclude():
    tasks = random_tasks(2, SHAPES, seed=3)
    only_a = amplitude_variance(tasks, include="a.*", device="cpu")
    assert list(only_a.per_matrix["key"]) == ["a.weight"]
    assert only_a.mean == pytest.approx(numpy_amplitude_variance(tasks)[1]["a.weight"], rel=1e-10)
    no_conv = amplitude_variance(tasks, exclude=["conv.*"], device="cpu")
    assert set(no_conv.per_matrix["key"]) == {"a.weight", "b.weight"}


def test_identical_task_vectors_have_zero_variance():
    task = random_tasks(1, SHAPES, seed=4)[0]
    tasks = [task, {k: v.clone() for k, v in task.items()}, task]
    result = amplitude_variance(tasks, device="cpu")
    assert result.mean == 0.0
    assert (result.per_matrix["variance"] == 0).all()


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.01, 100.0).flatmap(lambda s: st.sampled_from([s, -s])),
       seed=st.integers(0, 2**31 - 1))
def test_scaling_scales_variance(scale, seed):
    tasks = random_tasks(3, {"a": (4, 5), "b": (3, 3)}, seed=seed)
    scaled = [{k: v * scale for k, v in tv.items()} for tv in tasks]
    base = amplitude_variance(tasks, device="cpu").mean
    assert amplitude_variance(scaled, device="cpu").mean == pytest.approx(base * scale**2, rel=1e-9)
    base_p = amplitude_variance(tasks, spectrum="power", device="cpu").mean
    got_p = amplitude_variance(scaled, spectrum="power", device="cpu").mean
    assert got_p == pytest.approx(base_p * scale**4, rel=1e-9)
    # normalised variance scales like s (variance s^2 over mean amplitude |s|)
    base_n = amplitude_variance(tasks, normalize=True, device="cpu").mean
    got_n = amplitude_variance(scaled, normalize=True, device="cpu").mean
    assert got_n == pytest.approx(base_n * abs(scale), rel=1e-9)


def test_transform_is_applied():
    tasks = random_tasks(3, SHAPES, seed=5)
    seen = []

    def zero(stack, key):
        seen.append((key, tuple(stack.shape)))
        return torch.zeros_like(stack)

    result = amplitude_variance(tasks, transform=zero, device="cpu")
    assert result.mean == 0.0
    assert result.settings["transform"] == "zero"
    assert ("a.weight", (3, 4, 6)) in seen and ("conv.weight", (3, 3, 2, 2, 2)) in seen

    def double(stack, key):
        return 2 * stack

    base = amplitude_variance(tasks, device="cpu").mean
    assert amplitude_variance(tasks, transform=double, device="cpu").mean == pytest.approx(4 * base)

    def only_first(stack, key):  # task-dependent step: keep task 0 only
        out = torch.zeros_like(stack)
        out[0] = stack[0]
        return out

    expected = numpy_amplitude_variance([tasks[0]] + [{k: np.zeros_like(v) for k, v in tasks[0].items()}] * 2)[0]
    assert amplitude_variance(tasks, transform=only_first, device="cpu").mean == pytest.approx(expected, rel=1e-10)


def test_filter_transform_lowers_variance_in_kept_bins_only_by_rounding():
    # an ideal high-pass leaves kept bins untouched: variance over kept bins is unchanged
    tasks = random_tasks(3, {"a": (8, 8), "b": (6, 10)}, seed=6)
    spec = FilterSpec(0.4)

    def fr(stack, key):
        return spec(stack)

    plain = amplitude_variance(tasks, within=spec, device="cpu").mean
    filtered = amplitude_variance(tasks, transform=fr, within=spec, device="cpu").mean
    assert filtered == pytest.approx(plain, rel=1e-9)
    assert amplitude_variance(tasks, transform=fr, device="cpu").mean < amplitude_variance(tasks, device="cpu").mean


def test_one_d_keys_and_empty_inputs():
    tasks = [{"v": t([1.0, 2.0, 3.0]), "m": t([[1.0, 0.0]])}, {"v": t([0.0, 2.0, 1.0]), "m": t([[0.0, 1.0]])}]
    assert list(amplitude_variance(tasks, device="cpu").per_matrix["key"]) == ["m"]
    assert set(amplitude_variance(tasks, one_d="fft", device="cpu").per_matrix["key"]) == {"v", "m"}
    only_1d = [{"v": t([1.0, 2.0])}, {"v": t([3.0, 4.0])}]
    with pytest.raises(EmptyInputError, match="matrix"):
        amplitude_variance(only_1d, device="cpu")
    with pytest.raises(EmptyInputError):
        amplitude_variance([], device="cpu")
    with pytest.raises(EmptyInputError):
        amplitude_variance(tasks, include="nothing*", device="cpu")


def test_different_keys_raise_missing_keys():
    a = {"x": t([[1.0, 2.0]]), "yolk": t([[1.0, 2.0]])}
    b = {"x": t([[1.0, 2.0]])}
    with pytest.raises(MissingKeysError, match=r"missing from task1: yolk") as info:
        amplitude_variance([a, b], device="cpu")
    assert info.value.missing == ["yolk"]
    with pytest.raises(MissingKeysError, match=r"missing from task0: yolk"):
        amplitude_variance([b, a], device="cpu")
    c = {"x": t([[1.0, 2.0]]), "zzz": t([[1.0, 2.0]])}
    with pytest.raises(MissingKeysError, match="yolk"):
        cosine_similarity_matrix([a, c])
    with pytest.raises(MissingKeysError, match="yolk"):
        sign_conflicts([a, b])
    with pytest.raises(MissingKeysError, match="yolk"):
        low_frequency_energy([a, b], 0.5)


def test_bad_spectrum_raises():
    with pytest.raises(ParameterError, match="'phase'"):
        amplitude_variance([{"x": t([[1.0]])}], spectrum="phase", device="cpu")


# --------------------------------------------------------------------------- cosine
def test_cosine_similarity_matrix_matches_numpy():
    tasks = random_tasks(4, SHAPES, seed=7)
    table = cosine_similarity_matrix(tasks, device="cpu")
    assert list(table.index) == ["task0", "task1", "task2", "task3"]
    assert list(table.columns) == list(table.index)
    flat = np.stack([np.concatenate([tv[k].numpy().ravel() for k in SHAPES]) for tv in tasks])
    norms = np.linalg.norm(flat, axis=1)
    expected = flat @ flat.T / np.outer(norms, norms)
    np.testing.assert_allclose(table.to_numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.diag(table.to_numpy()), 1.0, atol=1e-12)


def test_cosine_per_key_matches_numpy():
    tasks = random_tasks(3, SHAPES, seed=8)
    table = cosine_similarity_matrix(tasks, per_key=True, device="cpu")
    assert list(table.columns) == ["key", "task_a", "task_b", "cosine"]
    assert len(table) == len(SHAPES) * 3
    for _, row in table.iterrows():
        i, j = int(row["task_a"][-1]), int(row["task_b"][-1])
        assert i < j
        a = tasks[i][row["key"]].numpy().ravel()
        b = tasks[j][row["key"]].numpy().ravel()
        assert row["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-10)


def test_cosine_orthogonal_zero_and_names():
    a = TaskVector.from_tensors({"w": t([[1.0, 0.0], [0.0, 0.0]]), "b": t([1.0, 0.0])}, name="alpha")
    b = TaskVector.from_tensors({"w": t([[0.0, 3.0], [0.0, 0.0]]), "b": t([0.0, -2.0])}, name="beta")
    z = TaskVector.from_tensors({"w": torch.zeros(2, 2), "b": torch.zeros(2)}, name="zero")
    table = cosine_similarity_matrix([a, b, z], device="cpu")
    assert list(table.index) == ["alpha", "beta", "zero"]
    assert table.loc["alpha", "beta"] == 0.0
    assert table.loc["alpha", "alpha"] == pytest.approx(1.0)
    assert math.isnan(table.loc["alpha", "zero"]) and math.isnan(table.loc["zero", "zero"])
    per_key = cosine_similarity_matrix([a, b, z], per_key=True, device="cpu")
    assert per_key[(per_key.task_a == "alpha") & (per_key.task_b == "beta")]["cosine"].tolist() == [0.0, 0.0]
    assert per_key[per_key.task_b == "zero"]["cosine"].isna().all()


def test_cosine_opposite_vectors():
    a = {"w": t([[1.0, -2.0], [3.0, 0.5]])}
    b = {"w": -2.5 * a["w"]}
    table = cosine_similarity_matrix([a, b], device="cpu")
    assert table.loc["task0", "task1"] == pytest.approx(-1.0, abs=1e-12)


def test_task_names_deduplicate():
    a = TaskVector.from_tensors({"w": t([[1.0]])}, name="same")
    b = TaskVector.from_tensors({"w": t([[2.0]])}, name="same")
    assert task_names([a, b, {"w": t([[3.0]])}]) == ["same#0", "same#1", "task2"]


# --------------------------------------------------------------------------- sign conflicts
def test_sign_conflicts_hand_example():
    # coordinates: 0..3 in key "m" (2x2), 4..6 in key "v" (1-D)
    t0 = [1, -1, 2, 0, 3, 0, 4]
    t1 = [1, 1, 0, -1, -2, 2, 0]
    t2 = [1, 1, 0, 0, -5, 3, -1]

    def split(v):
        return {"m": t([v[:2], v[2:4]]), "v": t(v[4:])}

    result = sign_conflicts([split(t0), split(t1), split(t2)], device="cpu")
    # pair (0,1): both non-zero at {0,1,4}, opposite at {1,4} -> 2/3
    # pair (0,2): both non-zero at {0,1,4,6}, opposite at {1,4,6} -> 3/4
    # pair (1,2): both non-zero at {0,1,4,5}, opposite nowhere -> 0
    expected = np.array([[0, 2 / 3, 3 / 4], [2 / 3, 0, 0], [3 / 4, 0, 0]])
    np.testing.assert_allclose(result.pairwise.to_numpy(), expected, atol=1e-12)
    assert list(result.pairwise.index) == ["task0", "task1", "task2"]
    # >= 2 non-zero at {0,1,4,5,6}; mixed signs at {1,4,6} -> 3/5
    assert result.overall == pytest.approx(0.6, abs=1e-12)
    # restricted to one key: "m" only -> coords 0..3: shared {0,1}, mixed {1}
    only_m = sign_conflicts([split(t0), split(t1), split(t2)], include="m", device="cpu")
    assert only_m.overall == pytest.approx(0.5)
    np.testing.assert_allclose(only_m.pairwise.to_numpy(),
                               [[0, 0.5, 0.5], [0.5, 0, 0], [0.5, 0, 0]], atol=1e-12)


def test_sign_conflicts_no_overlap_is_nan():
    result = sign_conflicts([{"v": t([1.0, 0.0])}, {"v": t([0.0, -1.0])}], device="cpu")
    assert math.isnan(result.overall)
    assert math.isnan(result.pairwise.loc["task0", "task1"])


# --------------------------------------------------------------------------- low-frequency energy
def test_low_frequency_energy_constant_and_checkerboard():
    h, w = 6, 8
    const = torch.full((h, w), 0.5, dtype=torch.float64)
    i, j = torch.arange(h)[:, None], torch.arange(w)[None, :]
    checker = ((-1.0) ** (i + j)).to(torch.float64)
    tasks = [{"c": const, "k": checker}, {"c": 2 * const, "k": 3 * checker}]
    for cutoff in (0.01, 0.5, 0.9, 1.0):
        table = low_frequency_energy(tasks, cutoff, device="cpu")
        assert list(table.columns) == ["task", "key", "energy", "low_energy", "fraction"]
        c_rows = table[table.key == "c"]
        assert np.allclose(c_rows["fraction"], 1.0)
        k_rows = table[table.key == "k"]
        assert np.allclose(k_rows["fraction"], 0.0)
    table = low_frequency_energy(tasks, 0.9, device="cpu")
    energies = table.set_index(["task", "key"])["energy"]
    # constant c: DC amplitude H*W*c -> energy (H*W*c)^2 ; checkerboard: corner amplitude H*W
    assert energies[("task0", "c")] == pytest.approx((h * w * 0.5) ** 2)
    assert energies[("task1", "k")] == pytest.approx((h * w * 3) ** 2)
    by_task = low_frequency_energy_by_task(table)
    assert list(by_task.index) == ["task0", "task1"]
    assert by_task["task0"] == pytest.approx(0.25 / 1.25)  # (24^2)/(24^2 + 48^2)
    assert by_task["task1"] == pytest.approx(1.0 / 10.0)   # (48^2)/(48^2 + 144^2)


def test_low_frequency_energy_matches_numpy_and_skips_1d():
    tasks = random_tasks(2, SHAPES, seed=9)
    table = low_frequency_energy(tasks, 0.5, device="cpu")
    assert set(table.key) == {"a.weight", "b.weight", "conv.weight"}
    for _, row in table.iterrows():
        x = tasks[int(row["task"][-1])][row["key"]].numpy()
        x = x.reshape(x.shape[0], -1)
        h, w = x.shape
        power = np.abs(np.fft.fftshift(np.fft.fft2(x))) ** 2
        eta = (np.arange(h) - h // 2)[:, None] / (h / 2)
        gamma = (np.arange(w) - w // 2)[None, :] / (w / 2)
        rho = np.sqrt((eta**2 + gamma**2) / 2)
        assert row["energy"] == pytest.approx(power.sum(), rel=1e-10)
        assert row["low_energy"] == pytest.approx(power[rho < 0.5].sum(), rel=1e-10)
    assert "bias" in set(low_frequency_energy(tasks, 0.5, one_d="fft", device="cpu").key)
    with pytest.raises(EmptyInputError):
        low_frequency_energy([{"v": t([1.0, 2.0])}], 0.5, device="cpu")
    with pytest.raises(ParameterError):
        low_frequency_energy_by_task(pd.DataFrame({"task": ["a"], "energy": [1.0]}))


def test_low_frequency_energy_zero_matrix_is_nan():
    table = low_frequency_energy([{"z": torch.zeros(4, 4)}], 0.5, device="cpu")
    assert math.isnan(table["fraction"].iloc[0])


def test_several_measures_from_one_pass_equal_their_own_calls():
    import freqmerge_viz as fmv
    from freqmerge_viz.metrics import amplitude_variances

    g = torch.Generator().manual_seed(3)
    vectors = [{"a": torch.randn(6, 10, generator=g, dtype=torch.float64),
                "b": torch.randn(4, 3, 5, generator=g, dtype=torch.float64)} for _ in range(3)]
    spec = fmv.FilterSpec(0.3)
    together = amplitude_variances(vectors, {"all": {}, "kept": {"within": spec}, "norm": {"normalize": True}})
    for name, options in (("all", {}), ("kept", {"within": spec}), ("norm", {"normalize": True})):
        alone = fmv.amplitude_variance(vectors, **options)
        assert together[name].mean == alone.mean
        pd.testing.assert_frame_equal(together[name].per_matrix, alone.per_matrix)
        assert together[name].settings == alone.settings
