"""Router robustness (Fig. 5c): routed merges under a random router of accuracy p."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.router_robustness import (chosen_routed_merges, correctness, robustness_table,
                                                      router_robustness)
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.routing import OracleRouter
from freqmerge_viz.zoo.compare import evaluate_routed

LIMIT = 40


@pytest.fixture(scope="module")
def small(shipped_zoo):
    tasks = shipped_zoo.tasks[:3]
    routed = chosen_routed_merges(shipped_zoo, tasks=tasks, quick=True, validation_limit=16)
    return shipped_zoo, tasks, routed


def zoo_subset(zoo, tasks):
    """The zoo seen as having only `tasks` (what evaluate_routed iterates over)."""
    return replace(zoo, tasks=list(tasks))


def test_p_one_is_the_oracle_routed_accuracy(small):
    zoo, tasks, routed = small
    table = router_robustness(zoo, routed, tasks=tasks, ps=(1.0,), limit=LIMIT)
    for name, merge in routed.items():
        sub = zoo_subset(zoo, tasks)
        expected, right = evaluate_routed(sub, merge, OracleRouter(), limit=LIMIT)
        got = table[table["method"] == name].set_index("task")["accuracy"]
        assert right == 1.0
        for task in tasks:
            assert got[task] == pytest.approx(expected[task], abs=1e-12)
    assert (table["router_accuracy"] == 1.0).all()


def test_p_zero_sends_no_input_to_its_own_task(small):
    zoo, tasks, routed = small
    table = router_robustness(zoo, {"EMR": routed["EMR"]}, tasks=tasks, ps=(0.0,), limit=LIMIT)
    assert (table["router_accuracy"] == 0.0).all()
    k = len(tasks)
    own = torch.zeros(k, k, 50, dtype=torch.bool)
    for t in range(k):
        own[t, t] = True
    planted = robustness_table({"own-only": own}, tasks, ps=(0.0,), seed=3)
    assert (planted["accuracy"] == 0.0).all()


def test_accuracy_of_a_planted_outcome_tensor_tracks_the_router():
    k, n = 8, 4000
    own = torch.zeros(k, k, n, dtype=torch.bool)
    for t in range(k):
        own[t, t] = True
    everything = torch.ones(k, k, n, dtype=torch.bool)
    tasks = [f"t{i}" for i in range(k)]
    table = robustness_table({"own": own, "all": everything}, tasks, ps=(0.0, 0.3, 0.7, 1.0), seed=1)
    for p, group in table.groupby("p"):
        own_rows = group[group["method"] == "own"]
        assert (own_rows["accuracy"].to_numpy() == own_rows["router_accuracy"].to_numpy()).all()
        assert (group.loc[group["method"] == "all", "accuracy"] == 1.0).all()
        measured = own_rows["router_accuracy"].mean()
        assert abs(measured - p) <= 5 * math.sqrt(max(p * (1 - p), 1e-12) / (k * n)) + 1e-12
    first, second = (robustness_table({"own": own}, tasks, ps=(0.5,), seed=s) for s in (2, 2))
    assert first.equals(second)


def test_correctness_matches_the_zoo_forward(small):
    zoo, tasks, routed = small
    correct = correctness(zoo, routed["Twin"], tasks, limit=8)
    images, labels = zoo.data(tasks[1], "test")
    logits = zoo.forward(routed["Twin"].task_state(2), images[:8], tasks[1])
    assert torch.equal(correct[2, 1], logits.argmax(1) == labels[:8])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ParameterError, match="expected"):
        robustness_table({"a": torch.zeros(2, 2, 5, dtype=torch.bool), "b": torch.zeros(2, 2, 6, dtype=torch.bool)},
                         ["x", "y"])
