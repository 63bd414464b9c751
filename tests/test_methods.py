"""Merge methods: registry, hand-computed cases, peft cross-checks, FR presets, memory.

The official presets against the authors' code: test_fidelity.py."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import freqmerge_viz as fmv
from freqmerge_viz.cli import main
from freqmerge_viz.methods.sparse import dare_mask, kth_largest
from freqmerge_viz.synthetic import make_model_set
from memory_support import peak_over_start, write_matrix_models

EXPECTED = {"weight_averaging", "task_arithmetic", "magnitude_prune", "ties", "dare_linear", "dare_ties",
            "breadcrumbs", "fr", "fr_ties", "fr_breadcrumbs"}


def merged(name, tasks, pre=None, **params):
    pre = pre if pre is not None else {k: torch.zeros_like(v) for k, v in tasks[0].items()}
    state = fmv.merge(name, pre, tasks, **params)
    return {k: state[k] for k in state}


T1 = {"w": torch.tensor([3.0, -1.0, 0.5, 2.0])}
T2 = {"w": torch.tensor([-2.0, -4.0, 1.0, 1.0])}


# ----------------------------------------------------------------------------- registry
def test_every_method_is_registered_and_documented():
    assert EXPECTED <= set(fmv.list_methods())
    for name in fmv.list_methods():
        method = fmv.get_method(name)
        assert method.summary and name in method.doc()
        for param in method.params:
            assert param.doc, (name, param.name)


@pytest.mark.parametrize("name, params, message", [
    ("ties", dict(density=1.3), r"ties: parameter 'density' must lie in \(0.0, 1.0\], got 1.3"),
    ("ties", dict(density=0.0), r"must lie in \(0.0, 1.0\], got 0.0"),
    ("ties", dict(convention="other"), r"'convention' must be one of \['peft', 'mergekit'\]"),
    ("task_arithmetic", dict(weights=[1.0]), r"1 weight given for 2 tasks"),
    ("task_arithmetic", dict(lambda_=1), r"unknown parameter\(s\) \['lambda_'\]"),
    ("fr", dict(preset="mine"), r"unknown preset 'mine'"),
    ("breadcrumbs", dict(density=0.95, gamma=0.1), r"density \+ gamma must be at most 1"),
    ("nope", {}, r"unknown merge method 'nope'; registered: .*task_arithmetic"),
])
def test_bad_parameters_are_errors_not_clamps(name, params, message):
    with pytest.raises(fmv.ParameterError, match=message):
        fmv.merge(name, {"w": torch.zeros(4)}, [T1, T2], **params)


def test_merge_does_not_touch_its_inputs():
    pre = {"w": torch.zeros(4)}
    for name in EXPECTED:
        fmv.merge(name, pre, [T1, T2])["w"]
    assert torch.equal(pre["w"], torch.zeros(4))
    assert torch.equal(T1["w"], torch.tensor([3.0, -1.0, 0.5, 2.0]))
    assert torch.equal(T2["w"], torch.tensor([-2.0, -4.0, 1.0, 1.0]))


# ----------------------------------------------------------------------------- hand-computed
def test_ties_conventions_on_the_issue_example():
    peft = merged("ties", [T1, T2], density=0.5, weights=[2.0, 1.0], convention="peft")["w"]
    mergekit = merged("ties", [T1, T2], density=0.5, weights=[2.0, 1.0], convention="mergekit")["w"]
    assert peft.tolist() == [6.0, -4.0, 0.0, 4.0]
    assert mergekit.tolist() == [3.0, -4.0, 0.0, 2.0]


def test_linear_methods_by_hand():
    pre = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    a = {"w": pre["w"] + T1["w"]}
    b = {"w": pre["w"] + T2["w"]}
    assert merged("weight_averaging", [a, b], pre)["w"].tolist() == [1.5, -1.5, 1.75, 2.5]
    assert merged("task_arithmetic", [a, b], pre, scaling=0.5, weights=[1.0, 2.0])["w"].tolist() == \
        [1 + 0.5 * (3 - 4), 1 + 0.5 * (-1 - 8), 1 + 0.5 * (0.5 + 2), 1 + 0.5 * (2 + 2)]


def test_magnitude_prune_and_breadcrumbs_by_hand():
    assert merged("magnitude_prune", [T1, T2], density=0.5)["w"].tolist() == [3 - 2, -4, 0, 2]
    v = {"w": torch.tensor([10.0, -1.0, 5.0, 0.1, -3.0, 0.2, 2.0, -0.05, 0.3, 4.0])}
    # drop the largest 10% (10.0), keep the next 40% (5, 4, -3, 2), zero the rest
    out = merged("breadcrumbs", [v], density=0.4, gamma=0.1, scaling=1.0)["w"]
    assert out.tolist() == [0, 0, 5.0, 0, -3.0, 0, 2.0, 0, 0, 4.0]


def test_dare_is_seeded_unbiased_and_density_one_is_identity():
    v = {"w": torch.linspace(-1, 1, 20000)}
    a = merged("dare_linear", [v], density=0.3, seed=7, scaling=1.0)["w"]
    b = merged("dare_linear", [v], density=0.3, seed=7, scaling=1.0)["w"]
    c = merged("dare_linear", [v], density=0.3, seed=8, scaling=1.0)["w"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = (a != 0).float().mean().item()
    assert abs(kept - 0.3) < 4 * (0.3 * 0.7 / 20000) ** 0.5
    torch.testing.assert_close(a[a != 0], v["w"][a != 0] / 0.3)
    assert torch.equal(merged("dare_linear", [v], density=1.0, scaling=1.0)["w"], v["w"])


# ----------------------------------------------------------------------------- peft cross-checks
peft_merge = pytest.importorskip("peft.utils.merge_utils", reason="peft not installed")


@pytest.fixture()
def random_tasks():
    g = torch.Generator().manual_seed(3)
    return [{"w": torch.randn(12, 10, generator=g)} for _ in range(3)]


def test_task_arithmetic_and_magnitude_prune_match_peft(random_tasks):
    tensors = [t["w"] for t in random_tasks]
    weights = torch.tensor([0.5, 1.0, 2.0])
    ours = merged("task_arithmetic", random_tasks, weights=weights.tolist(), scaling=1.0)["w"]
    torch.testing.assert_close(ours, peft_merge.task_arithmetic(tensors, weights))
    ours = merged("magnitude_prune", random_tasks, weights=weights.tolist(), density=0.3)["w"]
    torch.testing.assert_close(ours, peft_merge.magnitude_prune(tensors, weights, 0.3))


@pytest.mark.parametrize("block_entries", [2**16, 7])
@pytest.mark.parametrize("majority", ["total", "frequency"])
def test_ties_peft_convention_matches_peft(random_tasks, majority, block_entries, monkeypatch):
    # 120 entries per tensor: one block, or 18 blocks of 7 entries (the last one shorter).
    monkeypatch.setattr("freqmerge_viz.methods.sparse.BLOCK_ENTRIES", block_entries)
    tensors = [t["w"] for t in random_tasks]
    weights = torch.tensor([0.5, 1.0, 2.0])
    ours = merged("ties", random_tasks, weights=weights.tolist(), density=0.4, majority=majority)["w"]
    torch.testing.assert_close(ours, peft_merge.ties(tensors, weights, 0.4, majority))


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_matches_peft_with_the_same_masks(random_tasks, name, monkeypatch):
    tensors = [t["w"] for t in random_tasks]
    weights = torch.tensor([0.5, 1.0, 2.0])
    ours = merged(name, random_tasks, weights=weights.tolist(), density=0.6, seed=11)["w"]
    masks = iter([dare_mask((12, 10), 0.6, 11, "w", task) for task in range(3)])
    monkeypatch.setattr(torch, "bernoulli", lambda probabilities: next(masks))
    reference = getattr(peft_merge, name)(tensors, weights, 0.6)
    torch.testing.assert_close(ours, reference)


# ----------------------------------------------------------------------------- FR presets
@pytest.fixture(scope="module")
def vit_like():
    models = make_model_set(3, seed=4, width=12, depth=1)
    return models.pretrained, list(models.finetuned.values())


def test_fr_paper_preset_is_eq_1_to_3(vit_like):
    pre, fts = vit_like
    keys = [k for k in pre if pre[k].is_floating_point()]
    vectors = [{k: ft[k].double() - pre[k].double() for k in keys} for ft in fts]
    energy = [sum(float(v[k].abs().sum()) for k in keys) / sum(v[k].numel() for k in keys) for v in vectors]
    lambdas = [e / sum(energy) for e in energy]
    state = fmv.merge("fr", pre, fts, cutoff=0.2)
    assert state.statistics["lambda"] == pytest.approx(lambdas, rel=1e-5)
    for key in keys:
        expected = pre[key].double().clone()
        for lam, v in zip(lambdas, vectors):
            in_layers = key.startswith("blocks.") and v[key].ndim >= 2  # layer_matrices: not the patch embedding
            filtered = fmv.filter_parameter(v[key], fmv.FilterSpec(0.2)) if in_layers else v[key]
            expected += lam * filtered
        torch.testing.assert_close(state[key].double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(state["pos_embed_index"], pre["pos_embed_index"])


def test_fr_with_cutoff_zero_is_weighted_task_arithmetic(vit_like):
    pre, fts = vit_like
    fr = fmv.merge("fr", pre, fts, cutoff=0.0, coefficients="none", scaling=0.3)
    ta = fmv.merge("task_arithmetic", pre, fts, scaling=0.3)
    for key in pre:
        torch.testing.assert_close(fr[key], ta[key], rtol=1e-5, atol=1e-6)


def test_fr_ties_filters_before_trimming(vit_like):
    pre, fts = vit_like
    direct = fmv.merge("fr_ties", pre, fts, cutoff=0.3, density=0.5)
    vectors = [fmv.TaskVector.from_states(pre, ft).map(  # the default scope filters the blocks' matrices only
        lambda key, t: fmv.filter_parameter(t, fmv.FilterSpec(0.3)) if key.startswith("blocks.") else t,
        with_key=True) for ft in fts]
    reference = fmv.merge("ties", pre, vectors, density=0.5)
    for key in pre:
        torch.testing.assert_close(direct[key], reference[key], rtol=1e-5, atol=1e-6)


def test_method_transform_feeds_interference_metrics(vit_like):
    pre, fts = vit_like
    vectors = [fmv.TaskVector.from_states(pre, ft).materialize() for ft in fts]
    plain = fmv.amplitude_variance(vectors).mean
    assert fmv.amplitude_variance(vectors, transform=fmv.method_transform("task_arithmetic")).mean == \
        pytest.approx(plain)
    fr = fmv.amplitude_variance(vectors, transform=fmv.method_transform("fr", cutoff=0.2)).mean
    ties = fmv.amplitude_variance(vectors, transform=fmv.method_transform("ties", density=0.2)).mean
    assert fr < plain and ties != pytest.approx(plain)


# ----------------------------------------------------------------------------- laziness, CLI, memory
def test_merge_reads_only_the_key_asked_for(tmp_path):
    models = make_model_set(2, seed=0, width=8, depth=2)
    paths = models.save(tmp_path)
    pre = fmv.load_state(paths["pretrained"])
    fts = [fmv.load_state(paths[n]) for n in ("task0", "task1")]
    state = fmv.merge("ties", pre, fts)
    key = "blocks.1.mlp.fc1.weight"
    state[key]
    size = models.pretrained[key].numel() * 4
    assert [s.bytes_read for s in [pre, *fts]] == [3 * size, size, size]


def test_merge_cli_round_trips(tmp_path):
    paths = make_model_set(2, seed=0, width=8, depth=1).save(tmp_path / "in")
    config = tmp_path / "merge.yaml"
    config.write_text(f"method: fr\npreset: official\npretrained: {paths['pretrained']}\n"
                      f"finetuned: [{paths['task0']}, {paths['task1']}]\nparameters: {{scaling: 0.5}}\n")
    assert main(["merge", "--config", str(config), "--out", str(tmp_path / "out"), "--param", "cutoff=0.5",
                 "--max-shard-size", "4KB"]) == 0
    record = json.loads((tmp_path / "out" / "merge.json").read_text())
    assert record["parameters"]["scaling"] == 0.5 and record["parameters"]["cutoff"] == 0.5
    assert record["parameters"]["filter_convention"] == "official"
    assert len(record["inputs"]["finetuned"][0]["sha256"]) == 64 and len(record["files"]) > 2
    written = fmv.load_state(tmp_path / "out")
    expected = fmv.merge("fr", paths["pretrained"], [paths["task0"], paths["task1"]], preset="official",
                         scaling=0.5, cutoff=0.5)
    assert set(written) == set(expected)
    for key in expected:
        assert torch.equal(written[key], expected[key]), key


# Peak RSS while every key of the merged state is computed (tests/memory_support.py).
MEMORY_SCRIPT = """
    directory, method = sys.argv[1], sys.argv[2]
    params = {"preset": sys.argv[3]} if len(sys.argv) > 3 else {}
    if method == "wudi":
        params["steps"] = 3      # memory does not grow with the Adam steps; 300 take minutes on 64 matrices
    warm = fmv.merge(method, {"a.attn.weight": torch.zeros(8, 8)}, [{"a.attn.weight": torch.ones(8, 8)}] * 3,
                     **params)
    warm["a.attn.weight"]
    state = fmv.merge(method, f"{directory}/pre.safetensors", [f"{directory}/ft{t}.safetensors" for t in range(3)],
                      **params)
    def work():
        for key in state:
            tensor = state[key]
            del tensor
    measure(work)
"""


@pytest.fixture(scope="module")
def sixty_four_matrices(tmp_path_factory):
    directory = tmp_path_factory.mktemp("memory")
    return directory, write_matrix_models(directory, layers=32, k=3)


SVD_METHODS = {"tsv", "iso_c", "iso_cts", "cart"}


def _peak_in_tensors(directory, method, tensor_bytes, preset=None) -> float:
    return peak_over_start(MEMORY_SCRIPT, directory, method, *([preset] if preset else [])) / tensor_bytes


@pytest.mark.parametrize("method, preset", [(m, None) for m in fmv.list_methods()
                                            if not fmv.get_method(m).routed] + [("fr", "official"),
                                                                                      ("pcb", "official")])
def test_every_merge_stays_within_k_plus_2_tensors(sixty_four_matrices, method, preset):
    # K = 3 models of 64 tensors each: merging the whole models at once would need 256 tensors.
    # The 0.35 of a tensor above K + 2 covers the allocator, block temporaries (at most
    # 2**16 entries each) and, for FR, the cached half-spectrum mask (H x (W/2+1) floats).
    # Methods built on an SVD of each key (TSV, Iso-C, Iso-CTS, CART) also hold the factors
    # U, S, Vh of a matrix and of their concatenations and LAPACK's workspace: measured 6.8
    # (Iso-C) to 9.1 (CART) tensors, still per key and independent of the model's size.
    directory, tensor_bytes = sixty_four_matrices
    svd_extra = 5 if method in SVD_METHODS else 0
    assert _peak_in_tensors(directory, method, tensor_bytes, preset) <= 3 + 2 + svd_extra + 0.35


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.25, 1e-30, 7e20]) | st.floats(0, 1e6),
                       min_size=1, max_size=50),
       dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_kth_largest_equals_sorting(values, dtype, data):
    magnitude = torch.tensor(values, dtype=dtype)
    k = data.draw(st.integers(1, len(values)))
    assert kth_largest(magnitude, k) == torch.sort(magnitude, descending=True).values[k - 1]
