"""PCB-Merging: paper formulas by hand, the authors' code transcribed in numpy, properties, memory."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.methods.pcb import kth_smallest_

T1 = np.array([3.0, -1.0, 0.5, 2.0])
T2 = np.array([-2.0, -4.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- references
def paper_numpy(deltas: np.ndarray, density: float, weights=None):
    """The paper's equations on one tensor, float64: softmax and min-max over the n entries."""
    k_tasks, n = deltas.shape

    def norm(x):
        return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    intra = np.stack([softmax(k_tasks * norm(d * d)) for d in deltas])
    inter = np.stack([sum(softmax(norm(di * dj)) for dj in deltas) for di in deltas])
    beta = intra * inter
    kept = int(density * n)
    if kept == 0:
        mask = np.zeros_like(beta, dtype=bool)
    else:
        mask = beta >= np.sort(beta, axis=1)[:, n - kept][:, None]
    w = mask * beta
    lam = np.ones(k_tasks) if weights is None else np.asarray(weights, dtype=float)
    den = w.sum(0)
    merged = np.where(den > 0, (w * deltas * lam[:, None]).sum(0) / np.where(den > 0, den, 1), 0.0)
    return merged, mask * deltas


def _minmax_rows(x):
    low, high = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    return (x - low) / (high - low)


def _clamp_rows(x, min_ratio, max_ratio):
    d = x.shape[1]
    s = np.sort(x, axis=1)
    return np.clip(x, s[:, int(d * min_ratio)][:, None], s[:, int(d * (1 - max_ratio) - 1)][:, None])


def official_numpy(checks: np.ndarray, ratio: float, clamp_ratio=1e-4, lams=None, inter="tanh"):
    """The authors' ``PCB_merge`` (pcb-merging.py; clamp 0.01: nlp task_para_att_merge), or with
    ``inter="tanh_pairwise"`` ``PCB`` of vision pcb_ES.py, transcribed to numpy float64."""
    n, d = checks.shape
    checks_abs = _clamp_rows(np.abs(checks), clamp_ratio, clamp_ratio)
    clamped = np.sign(checks) * checks_abs
    intra = np.exp(n * _minmax_rows(checks_abs) ** 2)
    if inter == "tanh":
        cross = np.tanh(checks * checks.sum(axis=0))
    else:
        normalized = np.sign(checks) * _minmax_rows(checks_abs)
        cross = np.stack([np.tanh(normalized[i] * normalized).sum(axis=0) for i in range(n)])
    scale = _minmax_rows(_clamp_rows(intra * cross, 1 - ratio, 0))
    lams = np.ones(n) if lams is None else np.asarray(lams, dtype=float)
    merged = (clamped * lams[:, None] * scale).sum(axis=0) / np.maximum(scale.sum(axis=0), 1e-12)
    return merged, clamped * (scale > 0)


def merged(tasks, pre=None, **params):
    pre = pre if pre is not None else {k: torch.zeros_like(v) for k, v in tasks[0].items()}
    state = fmv.merge("pcb", pre, tasks, **params)
    return {k: state[k] for k in state}


def random_tasks(k, shapes, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [{name: (0.01 * torch.randn(shape, generator=g, dtype=dtype)) for name, shape in shapes.items()}
            for _ in range(k)]


# ----------------------------------------------------------------------------- paper reading
def test_paper_preset_by_hand_on_two_tasks():
    pre = {"w": torch.tensor([1.0, -1.0, 0.0, 2.0], dtype=torch.float64)}
    tasks = [{"w": pre["w"] + torch.tensor(T1)}, {"w": pre["w"] + torch.tensor(T2)}]
    for density in (0.5, 0.75, 1.0):
        expected, _ = paper_numpy(np.stack([T1, T2]), density)
        got = fmv.merge("pcb", pre, tasks, density=density, scaling=0.5)["w"]
        np.testing.assert_allclose(got.numpy(), pre["w"].numpy() + 0.5 * expected, rtol=1e-12, atol=1e-12)
    # density 0.5 keeps two entries per task: t1 its 3 and 2, t2 its -2 and -4; entry 2 is kept by none
    half = merged([{"w": torch.tensor(T1)}, {"w": torch.tensor(T2)}], density=0.5)["w"]
    assert half[1] == -4.0 and half[2] == 0.0 and half[3] == 2.0
    assert 2.0 < half[0] < 3.0  # β-weighted mean of 3 and -2, t1's score dominating
    np.testing.assert_allclose(half[0].item(), 2.41458, atol=5e-5)


def test_paper_preset_matches_the_equations_on_random_tensors():
    tasks = random_tasks(3, {"a": (40, 30), "b": (257,)}, seed=1)
    for density, weights in ((0.1, None), (0.37, [1.0, 0.5, 2.0])):
        got = merged(tasks, density=density, weights=weights)
        for key in ("a", "b"):
            deltas = np.stack([t[key].numpy().ravel() for t in tasks])
            expected, _ = paper_numpy(deltas, density, weights)
            np.testing.assert_allclose(got[key].numpy().ravel(), expected, rtol=1e-10, atol=1e-15)


def test_float32_merge_agrees_with_float64_equations():
    tasks = random_tasks(4, {"w": (64, 48)}, seed=2, dtype=torch.float32)
    got = merged(tasks, density=0.2)["w"]
    expected, _ = paper_numpy(np.stack([t["w"].double().numpy().ravel() for t in tasks]), 0.2)
    # float32 scores can reorder near-ties at the threshold; all but a handful of entries agree
    close = np.isclose(got.numpy().ravel(), expected, rtol=1e-4, atol=1e-7)
    assert close.mean() > 0.995


# ----------------------------------------------------------------------------- authors' code
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.3])
def test_official_preset_is_the_authors_pcb_merge(ratio):
    tasks = random_tasks(3, {"a": (50, 60), "b": (31,)}, seed=3)
    got = merged(tasks, preset="official", density=ratio)
    for key in ("a", "b"):
        checks = np.stack([t[key].numpy().ravel() for t in tasks])
        expected, _ = official_numpy(checks, ratio)
        # float64 on both sides; only the order of floating-point operations differs
        np.testing.assert_allclose(got[key].numpy().ravel(), expected, rtol=1e-9, atol=1e-15)


def test_official_variants_of_the_nlp_and_vision_scripts():
    tasks = random_tasks(4, {"w": (30, 70)}, seed=4)
    checks = np.stack([t["w"].numpy().ravel() for t in tasks])
    nlp = merged(tasks, preset="official", density=0.2, clamp=0.01)["w"].numpy().ravel()
    np.testing.assert_allclose(nlp, official_numpy(checks, 0.2, clamp_ratio=0.01)[0], rtol=1e-9, atol=1e-15)
    lams = [1.2, 1.0, 0.8, 1.3]
    vision = merged(tasks, preset="official", density=0.05, clamp=0.01, inter="tanh_pairwise", weights=lams)
    expected = official_numpy(checks, 0.05, clamp_ratio=0.01, lams=lams, inter="tanh_pairwise")[0]
    np.testing.assert_allclose(vision["w"].numpy().ravel(), expected, rtol=1e-9, atol=1e-15)


def test_official_transform_keeps_the_entries_with_a_positive_scale():
    stack = torch.stack([t["w"] for t in random_tasks(3, {"w": (20, 25)}, seed=5)])
    _, expected = official_numpy(stack.numpy().reshape(3, -1), 0.1)
    got = fmv.method_transform("pcb", preset="official", density=0.1)(stack.clone(), "w")
    np.testing.assert_allclose(got.numpy().reshape(3, -1), expected, rtol=1e-12, atol=0)
    # the authors' clamp(β, sorted[int(n(1-r))]) then min-max: n - int(n(1-r)) - 1 entries per task
    assert (got.reshape(3, -1) != 0).sum(dim=1).tolist() == [500 - int(500 * 0.9) - 1] * 3


# ----------------------------------------------------------------------------- properties
def test_density_one_keeps_every_entry_and_weights_all_of_them():
    stack = torch.stack([t["w"] for t in random_tasks(3, {"w": (10, 12)}, seed=6)])
    out = fmv.method_transform("pcb", density=1.0)(stack.clone(), "w")
    assert torch.equal(out, stack)
    tasks = [{"w": row} for row in stack]
    got = merged(tasks, density=1.0)["w"].numpy().ravel()
    expected, _ = paper_numpy(stack.numpy().reshape(3, -1), 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # every task takes part everywhere: the merge lies between the tasks' values at each entry
    assert (got >= stack.reshape(3, -1).min(0).values.numpy() - 1e-15).all()
    assert (got <= stack.reshape(3, -1).max(0).values.numpy() + 1e-15).all()


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_identical_task_vectors_merge_to_that_vector(preset):
    v = random_tasks(1, {"w": (16, 16)}, seed=7)[0]
    three = [dict(v), dict(v), dict(v)]
    if preset == "paper":  # β_i are equal and cancel in Σ β δ / Σ β
        torch.testing.assert_close(merged(three, density=1.0)["w"], v["w"], rtol=1e-12, atol=0)
    got = merged(three, preset=preset, density=0.3)["w"]
    masked = fmv.method_transform("pcb", preset=preset, density=0.3)(torch.stack([v["w"]] * 3), "w")
    torch.testing.assert_close(got, masked[0], rtol=1e-12, atol=0)
    assert torch.equal(masked[0], masked[2]) and 0 < masked[0].count_nonzero() < v["w"].numel()


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_negating_every_task_vector_negates_the_merge(preset):
    tasks = random_tasks(3, {"w": (24, 20)}, seed=8)
    negated = [{"w": -t["w"]} for t in tasks]
    torch.testing.assert_close(merged(negated, preset=preset)["w"], -merged(tasks, preset=preset)["w"],
                               rtol=1e-12, atol=0)


def test_paper_preset_is_scale_equivariant_official_is_not():
    tasks = random_tasks(3, {"w": (24, 20)}, seed=9)
    scaled = [{"w": 40.0 * t["w"]} for t in tasks]
    # Norm is min-max, so every term of β is invariant to a common factor on all δ
    torch.testing.assert_close(merged(scaled, density=0.3)["w"], 40.0 * merged(tasks, density=0.3)["w"],
                               rtol=1e-10, atol=0)
    # the authors' tanh(δ_i ⊙ Σ_j δ_j) is not normalised: a common factor changes the scores
    official, official_scaled = (merged(t, preset="official", density=0.3)["w"] for t in (tasks, scaled))
    assert not torch.allclose(official_scaled, 40.0 * official, rtol=1e-6)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_task_order_does_not_matter_and_scaling_is_a_factor(preset):
    tasks = random_tasks(4, {"w": (18, 9)}, seed=10)
    base = merged(tasks, preset=preset, density=0.25)["w"]
    torch.testing.assert_close(merged(tasks[::-1], preset=preset, density=0.25)["w"], base, rtol=1e-12, atol=0)
    torch.testing.assert_close(merged(tasks, preset=preset, density=0.25, scaling=0.3)["w"], 0.3 * base,
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(merged(tasks, preset=preset, density=0.25, weights=[0.3] * 4)["w"], 0.3 * base,
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_all_zero_inputs_give_a_finite_zero_merge(preset):
    zeros = [{"w": torch.zeros(6, 5), "b": torch.zeros(5)} for _ in range(3)]
    for density in (0.1, 0.5, 1.0):
        out = merged(zeros, preset=preset, density=density)
        assert all(torch.equal(out[k], torch.zeros_like(out[k])) for k in out)
    # one all-zero task among others: finite, and the zero task's entries do not pull toward 0 at
    # density 1 (paper), where every entry of the non-zero tasks is kept
    tasks = random_tasks(2, {"w": (6, 5)}, seed=11, dtype=torch.float32) + [{"w": torch.zeros(6, 5)}]
    out = merged(tasks, preset=preset, density=0.4)["w"]
    assert torch.isfinite(out).all() and out.count_nonzero() > 0


def test_a_density_below_one_entry_keeps_nothing():
    tasks = random_tasks(2, {"w": (3, 3)}, seed=12)
    assert torch.equal(merged(tasks, density=0.1)["w"], torch.zeros(3, 3, dtype=torch.float64))


def test_paper_masks_keep_floor_density_n_entries_per_task():
    stack = torch.stack([t["w"] for t in random_tasks(3, {"w": (33, 31)}, seed=13)])
    out = fmv.method_transform("pcb", density=0.2)(stack.clone(), "w")
    _, expected = paper_numpy(stack.numpy().reshape(3, -1), 0.2)
    np.testing.assert_array_equal(out.numpy().reshape(3, -1), expected)
    assert (out.reshape(3, -1) != 0).sum(dim=1).tolist() == [int(0.2 * 33 * 31)] * 3


def test_method_transform_returns_the_masked_vectors():
    stack = torch.stack([torch.tensor(T1), torch.tensor(T2)]).float()
    out = fmv.method_transform("pcb", density=0.5)(stack.clone(), "w")
    assert out.tolist() == [[3.0, 0.0, 0.0, 2.0], [-2.0, -4.0, 0.0, 0.0]]
    assert fmv.amplitude_variance([{"w": torch.randn(8, 8)} for _ in range(3)],
                                  transform=fmv.method_transform("pcb", density=0.5)).mean >= 0


def test_merge_does_not_touch_its_inputs():
    pre = {"w": torch.zeros(4)}
    tasks = [{"w": torch.tensor(T1, dtype=torch.float32)}, {"w": torch.tensor(T2, dtype=torch.float32)}]
    for preset in ("paper", "official"):
        fmv.merge("pcb", pre, tasks, preset=preset, density=0.5)["w"]
    assert torch.equal(pre["w"], torch.zeros(4))
    assert tasks[0]["w"].tolist() == T1.tolist() and tasks[1]["w"].tolist() == T2.tolist()


def test_merge_key_is_the_merge_and_transform_the_masked_vectors():
    method = fmv.get_method("pcb")
    ctx = fmv.methods.MergeContext(method.resolve({"density": 0.5}), ["a", "b"])
    stack = torch.tensor(np.stack([T1, T2]), dtype=torch.float32)
    merged = method.merge_key(stack.clone(), "w", ctx)
    states = [{"w": stack[0].clone()}, {"w": stack[1].clone()}]
    assert torch.equal(merged, fmv.merge("pcb", {"w": torch.zeros(4)}, states, density=0.5)["w"])
    masked = method.transform(stack.clone(), "w", ctx)
    assert ((masked == 0) | (masked == stack)).all() and int((masked != 0).sum()) == 4
    with pytest.raises(fmv.ParameterError, match="balancing scores"):
        method.combine(masked, "w", ctx)


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("params, message", [
    (dict(density=1.3), r"pcb: parameter 'density' must lie in \(0.0, 1.0\], got 1.3"),
    (dict(density=0), r"pcb: parameter 'density' must lie in \(0.0, 1.0\], got 0"),
    (dict(clamp=0.6), r"parameter 'clamp' must lie in \[0.0, 0.5\]"),
    (dict(inter="relu"), r"parameter 'inter' must be one of \['softmax', 'tanh', 'tanh_pairwise'\]"),
    (dict(weights=[1.0]), r"1 weight given for 2 tasks"),
    (dict(preset="authors"), r"unknown preset 'authors'"),
])
def test_bad_parameters_raise_naming_them(params, message):
    with pytest.raises(fmv.ParameterError, match=message):
        fmv.merge("pcb", {"w": torch.zeros(4)}, [{"w": torch.tensor(T1)}, {"w": torch.tensor(T2)}], **params)


def test_presets_and_defaults():
    method = fmv.get_method("pcb")
    paper = method.resolve({})
    assert paper["density"] == 0.1 and paper["scaling"] == 1.0 and paper["clamp"] == 0.0
    official = method.resolve({"preset": "official", "density": 0.2})
    assert (official["clamp"], official["intra_norm"], official["intra_act"], official["inter"],
            official["rescale"], official["density"]) == (1e-4, "norm_then_square", "exp", "tanh", "minmax", 0.2)
    assert "pcb" in fmv.list_methods() and "presets: official, paper" in method.doc()


# ----------------------------------------------------------------------------- helpers, memory
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_smallest_is_exact_on_signed_values_with_ties(dtype):
    g = torch.Generator().manual_seed(14)
    x = torch.cat([torch.randn(3001, generator=g, dtype=dtype), torch.zeros(7, dtype=dtype),
                   -torch.zeros(3, dtype=dtype), torch.full((5,), -0.25, dtype=dtype),
                   torch.tensor([float("inf"), -float("inf")], dtype=dtype)])
    for k in (1, 2, 5, 1500, 1510, x.numel() - 1, x.numel()):
        assert kth_smallest_(x.clone(), k) == x.kthvalue(k).values.item(), k
