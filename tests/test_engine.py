"""The batched evaluation engine: vmap and loop agree, stacked and list inputs agree, the
auto mode falls back where vmap cannot run, and the zoo forward matches the model's."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from freqmerge_viz import engine as E
from freqmerge_viz.zoo import evaluation as ZE
from freqmerge_viz.errors import MissingKeysError, ParameterError, ShapeMismatchError


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = TinyNet().eval()
    base = {k: v.detach().clone() for k, v in net.named_parameters()}
    states = [{k: v + 0.3 * torch.randn_like(v) for k, v in base.items()} for _ in range(7)]
    inputs = torch.randn(53, 6)
    labels = torch.randint(0, 4, (53,))
    return E.module_forward(net), states, inputs, labels


def _direct(forward, state, inputs, labels):
    logits = forward(state, inputs)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def test_vmap_and_loop_agree_and_match_direct_forward(tiny):
    forward, states, inputs, labels = tiny
    vmapped = E.evaluate_params(forward, states, inputs, labels, mode="vmap", chunk=3, batch_size=20, device="cpu")
    looped = E.evaluate_params(forward, states, inputs, labels, mode="loop", batch_size=20, device="cpu")
    assert vmapped.mode == "vmap" and vmapped.chunk == 3 and looped.mode == "loop"
    np.testing.assert_allclose(vmapped.loss, looped.loss, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(vmapped.accuracy, looped.accuracy)
    for i, state in enumerate(states):
        loss, accuracy = _direct(forward, state, inputs, labels)
        assert vmapped.loss[i] == pytest.approx(loss, abs=1e-5)
        assert vmapped.accuracy[i] == pytest.approx(accuracy)
    assert len(set(np.round(vmapped.loss, 4))) == len(states)


def test_stacked_input_agrees_with_list(tiny):
    forward, states, inputs, labels = tiny
    listed = E.evaluate_params(forward, states, inputs, labels, device="cpu")
    as_dict = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    for source in (E.StackedStates(as_dict), as_dict, E.StackedStates.from_states(states)):
        stacked = E.evaluate_params(forward, source, inputs, labels, device="cpu")
        np.testing.assert_allclose(stacked.loss, listed.loss, atol=1e-6)
        np.testing.assert_array_equal(stacked.accuracy, listed.accuracy)
    looped = E.evaluate_params(forward, E.StackedStates(as_dict), inputs, labels, mode="loop", device="cpu")
    np.testing.assert_allclose(looped.loss, listed.loss, atol=1e-5)


def test_affine_stacked_states_build_the_grid(tiny):
    forward, states, inputs, labels = tiny
    origin, u, v = states[0], states[1], states[2]
    coefficients = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, -2.0], [-1.5, 0.25]])
    stacked = E.StackedStates.affine(origin, [u, v], coefficients)
    assert len(stacked) == 4 and stacked.keys() == list(origin)
    for i, (a, b) in enumerate(coefficients):
        expected = {k: origin[k] + a * u[k] + b * v[k] for k in origin}
        for key in origin:
            torch.testing.assert_close(stacked[i][key], expected[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(stacked[0]["fc1.weight"], origin["fc1.weight"], atol=0, rtol=0)
    chunk = stacked.chunk(1, 3, ["fc2.bias"])
    assert list(chunk) == ["fc2.bias"] and chunk["fc2.bias"].shape == (2, 4)
    partial = E.StackedStates.affine(origin, [{"fc2.bias": torch.ones(4)}], [[2.0], [3.0]])
    torch.testing.assert_close(partial[1]["fc2.bias"], origin["fc2.bias"] + 3.0)
    torch.testing.assert_close(partial[1]["fc1.weight"], origin["fc1.weight"])
    listed = E.evaluate_params(forward, [stacked[i] for i in range(4)], inputs, labels, device="cpu")
    direct = E.evaluate_params(forward, stacked, inputs, labels, device="cpu")
    np.testing.assert_allclose(direct.loss, listed.loss, atol=1e-6)


def test_stacked_states_reject_bad_input(tiny):
    _, states, _, _ = tiny
    with pytest.raises(ParameterError, match="leading dimension"):
        E.StackedStates(states[0])
    with pytest.raises(ParameterError, match="non-empty"):
        E.StackedStates({})
    with pytest.raises(ParameterError, match=r"\[S, D\]"):
        E.StackedStates.affine(states[0], [states[1]], np.zeros((3, 2)))
    with pytest.raises(ShapeMismatchError, match="fc1.bias"):
        E.StackedStates.affine(states[0], [{"fc1.bias": torch.zeros(3)}], np.zeros((2, 1)))
    stacked = E.StackedStates.from_states(states)
    with pytest.raises(MissingKeysError, match="nope"):
        stacked.chunk(0, 2, ["nope"])
    with pytest.raises(IndexError):
        stacked[len(states)]


def test_bad_arguments_name_what_is_wrong(tiny):
    forward, states, inputs, labels = tiny
    with pytest.raises(ParameterError, match="mode"):
        E.evaluate_params(forward, states, inputs, labels, mode="fast")
    with pytest.raises(ParameterError, match="chunk"):
        E.evaluate_params(forward, states, inputs, labels, chunk=0)
    with pytest.raises(MissingKeysError, match="fc9.weight"):
        E.evaluate_params(forward, states, inputs, labels, keys=["fc9.weight"])
    with pytest.raises(ParameterError, match="labels"):
        E.evaluate_params(forward, states, inputs, labels[:-1])
    with pytest.raises(ParameterError, match="logits"):
        E.evaluate_params(lambda p, x: (p["fc2.bias"] * 0).sum() + x.sum(), states, inputs, labels, mode="loop")


def test_auto_falls_back_to_loop_where_vmap_cannot_run(tiny):
    forward, states, inputs, labels = tiny

    def branching(params, x):
        logits = forward(params, x)
        if logits.sum() > 0:
            return logits
        return logits * 1.0

    looped = E.evaluate_params(forward, states, inputs, labels, mode="loop", device="cpu")
    with pytest.warns(E.VmapFallbackWarning, match="data-dependent"):
        fallback = E.evaluate_params(branching, states, inputs, labels, mode="auto", device="cpu")
    assert fallback.mode == "loop" and fallback.chunk is None
    np.testing.assert_allclose(fallback.loss, looped.loss, atol=1e-6)
    with pytest.raises(ParameterError, match="mode='vmap' cannot run"):
        E.evaluate_params(branching, states, inputs, labels, mode="vmap", device="cpu")

    def in_place(params, x):
        x = x.clone()
        x.add_(params["fc1.bias"][:6])
        return forward(params, x)

    with pytest.warns(E.VmapFallbackWarning):
        assert E.evaluate_params(in_place, states, inputs, labels, device="cpu").mode == "loop"


def test_a_genuine_forward_error_is_not_swallowed(tiny):
    _, states, inputs, labels = tiny

    def broken(params, x):
        return x @ params["fc1.weight"]  # [N, 6] @ [16, 6] fails with and without vmap

    with warnings.catch_warnings():
        warnings.simplefilter("error", E.VmapFallbackWarning)
        with pytest.raises(RuntimeError):
            E.evaluate_params(broken, states, inputs, labels, device="cpu")


def test_chunk_follows_the_memory_budget(tiny):
    forward, states, inputs, labels = tiny
    assert E.auto_chunk(100, 1000, 10, 100, 10_000) == 5
    assert E.auto_chunk(3, 1000, 10, 100, 10**9) == 3
    assert E.auto_chunk(100, 10**9, 10, 100, 10) == 1
    param_bytes = 4 * sum(v.numel() for v in states[0].values())
    per_set = param_bytes + 20 * 1000
    forward.activation_bytes = 1000
    try:
        result = E.evaluate_params(forward, states, inputs, labels, batch_size=20, memory_budget=2 * per_set,
                                   device="cpu")
    finally:
        del forward.activation_bytes
    assert result.chunk == 2 and result.mode == "vmap"
    forward.activation_bytes = 1000
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            one = E.evaluate_params(forward, states, inputs, labels, batch_size=20, memory_budget=per_set,
                                    device="cpu")
        forced = E.evaluate_params(forward, states, inputs, labels, batch_size=20, memory_budget=per_set,
                                   mode="vmap", device="cpu")
    finally:
        del forward.activation_bytes
    assert one.mode == "loop" and forced.mode == "vmap" and forced.chunk == 1
    np.testing.assert_allclose(one.loss, forced.loss, atol=1e-5)


def test_zoo_forward_matches_the_model_and_zoo_evaluate(zoo):
    keys = ZE.zoo_backbone_keys(zoo)
    images, labels = ZE.zoo_data(zoo, "signs", "val", 96)
    states = [zoo.pretrained, zoo.finetuned["signs"], zoo.finetuned["digits"]]
    fast = ZE.zoo_forward(zoo, "signs")
    reference = ZE.zoo_forward(zoo, "signs", reference=True)
    for state in states:
        params = {k: state[k].float() for k in keys}
        torch.testing.assert_close(fast(params, images), reference(params, images), atol=1e-4, rtol=1e-4)
    vmapped = E.evaluate_params(fast, states, images, labels, keys, mode="vmap", device="cpu")
    looped = E.evaluate_params(reference, states, images, labels, keys, mode="loop", device="cpu")
    np.testing.assert_allclose(vmapped.loss, looped.loss, atol=1e-5)
    np.testing.assert_array_equal(vmapped.accuracy, looped.accuracy)
    for i, state in enumerate(states):
        assert vmapped.accuracy[i] == pytest.approx(zoo.evaluate(state, "signs", "val", limit=96)["signs"])
    assert vmapped.accuracy[1] > vmapped.accuracy[0]


def test_evaluate_on_zoo_table(zoo):
    states = [zoo.pretrained, zoo.finetuned["digits"]]
    table = ZE.evaluate_on_zoo(zoo, states, ["digits", "textures"], split="val", limit=40, device="cpu")
    assert list(table.columns) == ["state", "task", "loss", "accuracy"] and len(table) == 4
    stacked = E.StackedStates.from_states(states, ZE.zoo_backbone_keys(zoo))
    again = ZE.evaluate_on_zoo(zoo, stacked, ["digits", "textures"], split="val", limit=40, device="cpu",
                              mode="loop")
    np.testing.assert_allclose(table["loss"], again["loss"], atol=1e-5)
    np.testing.assert_array_equal(table["accuracy"], again["accuracy"])
    digits = table[table["task"] == "digits"].set_index("state")["accuracy"]
    assert digits[1] == pytest.approx(zoo.evaluate(zoo.finetuned["digits"], "digits", "val", limit=40)["digits"])


def test_evaluator_fingerprint_tracks_data_and_head(zoo):
    first = ZE.zoo_evaluator(zoo, "digits", "val", 16)
    assert first.fingerprint() == ZE.zoo_evaluator(zoo, "digits", "val", 16).fingerprint()
    assert first.fingerprint() != ZE.zoo_evaluator(zoo, "digits", "val", 17).fingerprint()
    assert first.fingerprint() != ZE.zoo_evaluator(zoo, "housenum", "val", 16).fingerprint()
    result = first([zoo.finetuned["digits"]])
    assert result.accuracy.shape == (1,) and 0 <= result.loss[0]


def test_workers_split_chunks_without_changing_results(zoo):
    keys = ZE.zoo_backbone_keys(zoo)
    images, labels = ZE.zoo_data(zoo, "digits", "val", 32)
    origin = {k: zoo.pretrained[k] for k in keys}
    direction = {k: zoo.finetuned["digits"][k] - zoo.pretrained[k] for k in keys}
    stacked = E.StackedStates.affine(origin, [direction], np.linspace(-0.5, 1.5, 9)[:, None])
    forward = ZE.zoo_forward(zoo, "digits")
    assert forward.thread_safe and not ZE.zoo_forward(zoo, "digits", reference=True).thread_safe
    threads = torch.get_num_threads()
    single = E.evaluate_params(forward, stacked, images, labels, keys, chunk=2, workers=1, device="cpu")
    for mode in ("vmap", "loop"):
        split = E.evaluate_params(forward, stacked, images, labels, keys, mode=mode, chunk=2, workers=3,
                                  device="cpu")
        assert split.workers == 3 and torch.get_num_threads() == threads
        np.testing.assert_allclose(split.loss, single.loss, atol=1e-5)
        np.testing.assert_array_equal(split.accuracy, single.accuracy)
    assert single.workers == 1 and single.chunk == 2
    assert E.default_workers(torch.device("cpu"), forward) == threads
    assert E.default_workers(torch.device("cpu"), E.module_forward(TinyNet())) == 1
