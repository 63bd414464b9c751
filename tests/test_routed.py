"""FREE-Merging, EMR-Merging and Twin-Merging as routed merges: hand cases, presets, routing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.methods.routed import emr_elect
from freqmerge_viz.synthetic import make_model_set


@pytest.fixture(scope="module")
def vit_like():
    models = make_model_set(3, seed=7, width=12, depth=1)
    return models.pretrained, list(models.finetuned.values())


def float_keys(state):
    return [k for k in state if state[k].is_floating_point()]


def vectors64(pre, fts):
    return [{k: ft[k].double() - pre[k].double() for k in float_keys(pre)} for ft in fts]


# --------------------------------------------------------------------------- FREE-Merging
def top_mask(v: torch.Tensor, density: float, per_row: bool) -> torch.Tensor:
    """Top int(d·n) magnitudes per tensor (or per last-dimension row), by sorting."""
    rows = v.reshape(-1, v.shape[-1]) if per_row and v.ndim else v.reshape(1, -1)
    k = int(rows.shape[1] * density)
    mask = torch.zeros_like(rows, dtype=torch.bool)
    if k:
        mask.scatter_(1, rows.abs().argsort(dim=1, descending=True, stable=True)[:, :k], True)
    return mask.reshape(v.shape)


def test_free_paper_preset_is_backbone_plus_mu_times_top_d(vit_like):
    pre, fts = vit_like
    d = 0.1
    free = fmv.free_merging(pre, fts, density=d, backbone={"cutoff": 0.2})
    backbone = fmv.merge("fr", pre, fts, cutoff=0.2)
    vectors = vectors64(pre, fts)
    keys = float_keys(pre)
    n = sum(pre[k].numel() for k in keys)
    energy = [sum(float(v[k].abs().sum()) for k in keys) / n for v in vectors]
    lambdas = [e / sum(energy) for e in energy]
    for t, v in enumerate(vectors):
        kept = {k: v[k] * top_mask(v[k], d, per_row=False) for k in keys}
        kept_mean = sum(float(kept[k].abs().sum()) for k in keys) / n
        mu = -kept_mean * math.log(d) / (lambdas[t] * energy[t])
        assert free.experts[t].scale == pytest.approx(mu, rel=1e-5)
        state = free.task_state(t)
        for key in keys:
            expected = backbone[key].double() + mu * kept[key]
            torch.testing.assert_close(state[key].double(), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(state["pos_embed_index"], pre["pos_embed_index"])


def test_free_with_every_entry_replaced_is_the_finetuned_model(vit_like):
    pre, fts = vit_like
    free = fmv.free_merging(pre, fts, density=1.0, rescale="none", mode="replace")
    for t, ft in enumerate(fts):
        state = free.task_state(t)
        for key in float_keys(pre):
            torch.testing.assert_close(state[key], ft[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("params, message", [({"density": 1.3}, "density"), ({"mode": "sum"}, "mode"),
                                             ({"preset": "icml"}, "preset"), ({"cutof": 0.2}, "cutof"),
                                             ({"backbone": {"cutoff": -1}}, "cutoff")])
def test_free_parameters_are_validated(vit_like, params, message):
    pre, fts = vit_like
    with pytest.raises(ParameterError, match=message):
        fmv.free_merging(pre, fts, **params)


def test_free_storage_is_the_experts(vit_like):
    pre, fts = vit_like
    free = fmv.free_merging(pre, fts, density=0.1)
    table = free.storage_table()
    model_bytes = 4 * sum(pre[k].numel() for k in pre)
    for row, expert in zip(table.itertuples(), free.experts):
        assert row.storage_bytes == expert.storage_bytes() == 8 * expert.parameters_kept()
        assert row.percent_of_model == pytest.approx(100 * row.storage_bytes / model_bytes)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_free_with_density_equals_a_fresh_merge_at_that_density(vit_like, preset):
    pre, fts = vit_like
    first = fmv.free_merging(pre, fts, preset=preset, density=0.3, backbone={"cutoff": 0.2})
    for density in (0.05, 0.3, 1.0):
        moved = first.with_density(density)
        fresh = fmv.free_merging(pre, fts, preset=preset, density=density, backbone={"cutoff": 0.2})
        assert moved.settings == fresh.settings
        assert moved.backbone is first.backbone and all(moved.shared[k] is first.shared[k] for k in first.shared)
        assert moved.storage_bytes_per_task() == fresh.storage_bytes_per_task()
        for t in range(len(fts)):
            got, want = moved.task_state(t), fresh.task_state(t)
            assert all(torch.equal(got[k], want[k]) for k in pre)
    assert first.settings["density"] == 0.3
    with pytest.raises(ParameterError, match="density"):
        first.with_density(1.5)


# --------------------------------------------------------------------------- EMR-Merging
def test_emr_election_by_hand():
    stack = torch.tensor([[3.0, -1.0, 0.5, 2.0, 1.0], [-2.0, -4.0, 1.0, 1.0, -1.0]])
    unified, masks = emr_elect(stack)
    assert unified.tolist() == [3.0, -4.0, 1.0, 2.0, 0.0]
    assert masks.tolist() == [[True, True, True, True, False], [False, True, True, True, False]]


def test_emr_states_by_hand():
    pre = {"w": torch.zeros(5)}
    fts = [{"w": torch.tensor([3.0, -1.0, 0.5, 2.0, 1.0])}, {"w": torch.tensor([-2.0, -4.0, 1.0, 1.0, -1.0])}]
    emr = fmv.emr_merging(pre, fts)
    assert emr.rescalers == pytest.approx([7.5 / 10.0, 9.0 / 7.0])
    torch.testing.assert_close(emr.task_state(0)["w"], 0.75 * torch.tensor([3.0, -4.0, 1.0, 2.0, 0.0]))
    torch.testing.assert_close(emr.task_state(1)["w"], 9 / 7 * torch.tensor([0.0, -4.0, 1.0, 2.0, 0.0]))
    assert emr.storage_bytes_per_task() == [1 + 4, 1 + 4]


def test_emr_rescaler_keeps_each_task_magnitude(vit_like):
    pre, fts = vit_like
    emr = fmv.emr_merging(pre, fts)
    keys = float_keys(pre)
    for t, v in enumerate(vectors64(pre, fts)):
        state = emr.task_state(t)
        delta = sum(float((state[k].double() - pre[k].double()).abs().sum()) for k in keys)
        assert delta == pytest.approx(sum(float(v[k].abs().sum()) for k in keys), rel=1e-4)


# --------------------------------------------------------------------------- Twin-Merging
def test_twin_with_full_rank_recovers_each_finetuned_model(vit_like):
    pre, fts = vit_like
    twin = fmv.twin_merging(pre, fts, rank=64)
    for t, ft in enumerate(fts):
        for key in float_keys(pre):
            torch.testing.assert_close(twin.task_state(t)[key], ft[key], rtol=0, atol=1e-5)


def test_twin_residual_is_the_best_rank_r_approximation(vit_like):
    pre, fts = vit_like
    twin = fmv.twin_merging(pre, fts, rank=2, shared_params={"scaling": 0.5})
    vectors = vectors64(pre, fts)
    key = "blocks.0.mlp.fc1.weight"
    shared = 0.5 * sum(v[key] for v in vectors)
    for t, v in enumerate(vectors):
        u, s, vh = np.linalg.svd((v[key] - shared).numpy(), full_matrices=False)
        best = (u[:, :2] * s[:2]) @ vh[:2]
        expected = pre[key].double().numpy() + shared.numpy() + best
        np.testing.assert_allclose(twin.task_state(t)[key].double().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert twin.settings["shared_params"]["scaling"] == 0.5


def test_twin_rejects_unknown_shared_method(vit_like):
    pre, fts = vit_like
    with pytest.raises(ParameterError, match="shared_method"):
        fmv.twin_merging(pre, fts, shared_method="average")


# --------------------------------------------------------------------------- routing
def linear_forward(state, x):
    return x @ state["w"]


@pytest.fixture()
def linear_tasks():
    g = torch.Generator().manual_seed(3)
    pre = {"w": torch.randn(6, 4, generator=g)}
    fts = [{"w": pre["w"] + torch.randn(6, 4, generator=g)} for _ in range(3)]
    return pre, fts


@pytest.mark.parametrize("name", fmv.list_routed_methods())
def test_predict_runs_each_input_with_its_routed_task(linear_tasks, name):
    pre, fts = linear_tasks
    params = {"free": {"density": 0.25}, "twin": {"rank": 1}}.get(name, {})  # 24-entry tensors
    routed = fmv.routed_merge(name, pre, fts, router=fmv.OracleRouter(), **params)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    truth = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 0])
    out = routed.predict(x, linear_forward, task_ids=truth)
    for i in range(10):
        torch.testing.assert_close(out[i], x[i] @ routed.task_state(int(truth[i]))["w"])
    wrong = routed.predict(x, linear_forward, router=fmv.RandomRouter(3, accuracy=0.0), task_ids=truth)
    assert not torch.allclose(wrong, out)


def test_predict_needs_a_router(linear_tasks):
    pre, fts = linear_tasks
    emr = fmv.emr_merging(pre, fts)
    with pytest.raises(ParameterError, match="router"):
        emr.predict(torch.zeros(2, 6), linear_forward)


def test_task_states_are_cached_up_to_cache_size(linear_tasks):
    pre, fts = linear_tasks
    emr = fmv.emr_merging(pre, fts, cache_size=1)
    first = emr.task_state(0)
    assert emr.task_state("task0") is first
    emr.task_state(1)
    assert emr.task_state(0) is not first
    with pytest.raises(ParameterError, match="unknown task"):
        emr.task_state("mnist")


def test_unknown_routed_method():
    with pytest.raises(ParameterError, match="free"):
        fmv.routed_merge("fusion", {}, [])


def test_merge_cli_writes_one_checkpoint_per_task_for_routed_merges(tmp_path, capsys):
    from freqmerge_viz.cli import main

    paths = make_model_set(2, seed=0, width=8, depth=1).save(tmp_path / "in")
    finetuned = [str(paths["task0"]), str(paths["task1"])]
    assert main(["merge", "--method", "free", "--preset", "official", "--pretrained", str(paths["pretrained"]),
                 "--finetuned", *finetuned, "--out", str(tmp_path / "out"), "--param", "density=0.2"]) == 0
    record = json.loads((tmp_path / "out" / "merge.json").read_text())
    expected = fmv.free_merging(paths["pretrained"], finetuned, preset="official", density=0.2)
    assert record["parameters"]["mode"] == "replace" and len(record["statistics"]["storage"]) == 2
    for task in expected.task_names:
        written = fmv.load_state(tmp_path / "out" / task)
        for key in written:
            assert torch.equal(written[key], expected.task_state(task)[key]), (task, key)
    assert main(["merge", "--method", "twin", "--preset", "paper", "--pretrained", str(paths["pretrained"]),
                 "--finetuned", *finetuned, "--out", str(tmp_path / "twin")]) == 2
    assert "twin: unknown preset 'paper'; available: none" in capsys.readouterr().err
    assert main(["merge", "--method", "emr", "--preset", "official", "--pretrained", str(paths["pretrained"]),
                 "--finetuned", *finetuned, "--out", str(tmp_path / "emr")]) == 0
    record = json.loads((tmp_path / "emr" / "merge.json").read_text())
    assert record["parameters"]["rescaler"] == "per_key_mean" and record["parameters"]["zero_sign"] == "negative"
    assert main(["methods", "emr"]) == 0 and "presets: official, paper" in capsys.readouterr().out
    assert main(["methods", "twin"]) == 0 and "rank (default 8; ≥ 1): rank of each task's residual" in capsys.readouterr().out
