"""Expert sparsity curves (Fig. 5b): expert-only accuracy against density."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.evaluation import individual_accuracies, zoo_task_vectors
from freqmerge_viz.analysis.experts_curves import (build_experts, expert_curves, expert_state, rank_within,
                                                   svd_storage_by_rank, topk_budget)
from freqmerge_viz.zoo.evaluation import evaluate_on_zoo
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.experts import storage_table
from freqmerge_viz.taskvector import TaskVector

LIMIT = 48


@pytest.fixture(scope="module")
def curves(shipped_zoo):
    return expert_curves(shipped_zoo, densities=(0.02, 1.0), tasks=shipped_zoo.tasks[:2], limit=LIMIT)


def test_topk_at_density_one_is_the_finetuned_model(shipped_zoo, curves):
    individual = individual_accuracies(shipped_zoo, shipped_zoo.tasks[:2], limit=LIMIT)
    full = curves[(curves["kind"] == "topk") & (curves["density"] == 1.0)].set_index("task")
    for task, accuracy in individual.items():
        assert full.loc[task, "accuracy"] == accuracy
        assert full.loc[task, "individual"] == accuracy
        assert full.loc[task, "stored_fraction"] == pytest.approx(1.0)


def test_rescaled_topk_at_density_one_is_the_pretrained_backbone(curves):
    pre = curves[curves["kind"] == "pretrained"].set_index("task")["accuracy"]
    rescaled = curves[(curves["kind"] == "topk_rescaled") & (curves["density"] == 1.0)].set_index("task")
    assert (rescaled["scale"] == 0).all()
    assert rescaled["accuracy"].equals(pre.loc[rescaled.index])


def test_pretrained_rows_are_the_bare_backbone(shipped_zoo, curves):
    direct = evaluate_on_zoo(shipped_zoo, [shipped_zoo.pretrained], shipped_zoo.tasks[:2], limit=LIMIT)
    rows = curves[curves["kind"] == "pretrained"]
    assert rows["accuracy"].tolist() == direct["accuracy"].tolist()


def test_storage_and_scales(curves):
    sparse = curves[curves["kind"].isin(["topk", "topk_rescaled"]) & (curves["density"] == 0.02)]
    assert np.allclose(sparse["stored_fraction"], 0.02, atol=0.002)
    bern = curves[(curves["kind"] == "bernoulli_rescaled") & (curves["density"] == 0.02)]
    assert np.allclose(bern["scale"], 50.0)
    assert (curves.loc[curves["kind"] == "bernoulli", "scale"] == 1.0).all()
    svd = curves[curves["kind"] == "svd"]
    topk = curves[curves["kind"] == "topk"].set_index(["task", "density"])["parameters"]
    for row in svd.itertuples():
        assert row.over_budget == (row.parameters > topk[(row.task, row.density)])
        assert row.rank >= 1


def test_rank_within_picks_the_largest_storage_under_the_budget():
    storage = {1: 100, 2: 200, 3: 300, 4: 250}
    assert rank_within(storage, 260) == 4
    assert rank_within(storage, 310) == 3
    assert rank_within(storage, 50) == 1
    assert rank_within({1: 10, 2: 10}, 10) == 1


def test_svd_storage_counts_are_storage_table_counts(shipped_zoo):
    vector = zoo_task_vectors(shipped_zoo, shipped_zoo.tasks[:1])[0]
    storage = svd_storage_by_rank(vector)
    assert len(storage) == shipped_zoo.model_config.width                # ranks 1 .. min(H, W) = width
    budget = topk_budget(vector, 0.2)
    experts = build_experts([vector], "svd", 0.2, svd_storage=storage)
    kept = int(storage_table(experts, 1)["parameters_kept"].iloc[0])
    assert kept <= budget and kept == storage[experts[0].rank]


def test_expert_state_adds_the_expert_to_every_key_it_covers():
    pre = {"w": torch.ones(3, 4), "b": torch.zeros(4)}
    tv = TaskVector.from_tensors({"w": torch.arange(12.0).reshape(3, 4)}, name="t")
    expert = build_experts([tv], "topk", 0.25)[0]
    state = expert_state(pre, expert)
    assert torch.equal(state["b"], pre["b"])
    assert torch.equal(state["w"], 1.0 + torch.where(torch.arange(12.0).reshape(3, 4) >= 9,
                                                     torch.arange(12.0).reshape(3, 4), torch.tensor(0.0)))


def test_bad_kind_and_densities(shipped_zoo):
    with pytest.raises(ParameterError, match="kind"):
        expert_curves(shipped_zoo, kinds=("topk", "random"), tasks=shipped_zoo.tasks[:1], limit=8)
    with pytest.raises(ParameterError, match="density"):
        expert_curves(shipped_zoo, kinds=("topk",), densities=(0.0,), tasks=shipped_zoo.tasks[:1], limit=8)


def test_svd_storage_from_shapes_equals_the_experts_own_count():
    from freqmerge_viz.experts import svd_experts, svd_storage

    g = torch.Generator().manual_seed(2)
    tensors = {"w": torch.randn(12, 7, generator=g), "conv": torch.randn(6, 2, 3, 3, generator=g),
               "thin": torch.randn(1, 9, generator=g), "b": torch.randn(7, generator=g), "s": torch.tensor(0.5)}
    vector = TaskVector.from_tensors(tensors)
    shapes = [tuple(vector.shape_of(k)) for k in vector]
    for rank in (1, 2, 5, 6, 7, 12, 20):
        assert svd_storage(shapes, rank) == svd_experts([vector], rank)[0].parameters_kept(), rank
    # by hand at rank 2: w 2·(12 + 7), conv (6 × 18) 2·(6 + 18), thin whole (9), b 7, s 1
    assert svd_storage(shapes, 2) == 38 + 48 + 9 + 7 + 1
