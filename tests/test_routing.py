"""Tests of freqmerge_viz.routing: routers, grouping and routed application."""

from __future__ import annotations

import math

import pytest
import torch

from freqmerge_viz.errors import EmptyInputError, ParameterError
from freqmerge_viz.routing import (MLPRouter, OracleRouter, RandomRouter, group_by_route,
                                   routed_apply)


def true_tasks(n: int, n_tasks: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, n_tasks, (n,), generator=torch.Generator().manual_seed(seed))


def blobs(per_class: int, n_tasks: int = 4, n_features: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(n_tasks, n_features, generator=torch.Generator().manual_seed(123))
    labels = torch.arange(n_tasks).repeat_interleave(per_class)
    points = centres[labels] + torch.randn(len(labels), n_features, generator=g)
    return 50.0 * points + 1000.0, labels


# --------------------------------------------------------------------------- oracle
def test_oracle_returns_the_true_tasks():
    ids = torch.tensor([2, 0, 1])
    routes = OracleRouter().route(torch.zeros(3, 5), ids)
    assert routes.dtype == torch.int64 and routes.tolist() == [2, 0, 1]
    with pytest.raises(ParameterError, match="task_ids"):
        OracleRouter().route(torch.zeros(3, 5))
    with pytest.raises(ParameterError, match="3"):
        OracleRouter().route(torch.zeros(4, 5), ids)


# --------------------------------------------------------------------------- random router
def test_random_router_extremes():
    truth = true_tasks(5000, 5)
    assert torch.equal(RandomRouter(5, accuracy=1.0).route(None, truth), OracleRouter().route(None, truth))
    assert not (RandomRouter(5, accuracy=0.0).route(None, truth) == truth).any()


def test_random_router_accuracy_matches_p():
    n, p = 20_000, 0.7
    truth = true_tasks(n, 8)
    routes = RandomRouter(8, accuracy=p, seed=3).route(torch.zeros(n, 2), truth)
    observed = float((routes == truth).double().mean())
    assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert int(routes.min()) >= 0 and int(routes.max()) < 8


def test_random_router_spreads_wrong_routes_over_the_other_tasks():
    n = 20_000
    routes = RandomRouter(4, accuracy=0.0, seed=1).route(None, torch.zeros(n, dtype=torch.long))
    counts = torch.bincount(routes, minlength=4).double() / n
    assert counts[0] == 0
    sd = math.sqrt((1 / 3) * (2 / 3) / n)
    assert all(abs(float(c) - 1 / 3) < 5 * sd for c in counts[1:])


def test_random_router_is_deterministic_per_seed_and_advances_per_call():
    truth = true_tasks(1000, 4)
    first, same, other = (RandomRouter(4, 0.5, seed=s) for s in (0, 0, 1))
    a = first.route(None, truth)
    assert torch.equal(a, same.route(None, truth))
    assert not torch.equal(a, other.route(None, truth))
    b = first.route(None, truth)
    assert not torch.equal(a, b)
    first.reset()
    assert torch.equal(first.route(None, truth), a)


@pytest.mark.parametrize("accuracy", [-0.1, 1.5, float("nan")])
def test_random_router_rejects_accuracy_outside_unit_interval(accuracy):
    with pytest.raises(ParameterError, match="accuracy"):
        RandomRouter(4, accuracy=accuracy)


def test_random_router_checks_task_ids():
    with pytest.raises(ParameterError, match="< n_tasks"):
        RandomRouter(3, 0.5).route(None, torch.tensor([0, 3]))
    with pytest.raises(ParameterError, match="single task"):
        RandomRouter(1, 0.5)


# --------------------------------------------------------------------------- MLP router
def test_mlp_router_learns_gaussian_blobs_deterministically():
    train_x, train_y = blobs(200, seed=0)
    test_x, test_y = blobs(100, seed=1)
    router = MLPRouter(8, 4, hidden=32, seed=0).fit(train_x, train_y, epochs=10)
    assert router.accuracy(test_x, test_y) > 0.95
    assert router.history[-1] < router.history[0]
    twin = MLPRouter(8, 4, hidden=32, seed=0).fit(train_x, train_y, epochs=10)
    assert torch.equal(router.logits(test_x), twin.logits(test_x))
    assert torch.equal(router.route(test_x), twin.route(test_x))
    refit = router.fit(train_x, train_y, epochs=10)
    assert torch.equal(refit.logits(test_x), twin.logits(test_x))
    other = MLPRouter(8, 4, hidden=32, seed=1).fit(train_x, train_y, epochs=10)
    assert not torch.equal(router.logits(test_x), other.logits(test_x))


def test_mlp_router_stores_training_standardisation_and_routes_int64():
    x, y = blobs(20)
    router = MLPRouter(8, 4).fit(x, y, epochs=2)
    assert torch.allclose(router.mean, x.mean(dim=0))
    assert torch.allclose(router.std, x.std(dim=0, unbiased=False))
    routes = router.route(x)
    assert routes.dtype == torch.int64 and routes.shape == (80,)


def test_mlp_router_errors():
    x, y = blobs(10)
    with pytest.raises(ParameterError, match="not fitted"):
        MLPRouter(8, 4).route(x)
    with pytest.raises(ParameterError, match="8 features"):
        MLPRouter(8, 4).fit(x[:, :5], y)
    with pytest.raises(ParameterError, match="lr"):
        MLPRouter(8, 4).fit(x, y, lr=0.0)


# --------------------------------------------------------------------------- grouping
def test_group_by_route():
    groups = group_by_route(torch.tensor([2, 0, 2, 1, 0]))
    assert list(groups) == [0, 1, 2]
    assert {k: v.tolist() for k, v in groups.items()} == {0: [1, 4], 1: [3], 2: [0, 2]}


def test_routed_apply_restores_input_order():
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    routes = torch.tensor([2, 0, 1, 0, 2, 1])
    calls = []

    def run_task(task: int, batch: torch.Tensor) -> torch.Tensor:
        calls.append(task)
        return batch * (task + 1)

    out = routed_apply(x, routes, run_task)
    assert torch.equal(out, x * (routes + 1).unsqueeze(1).float())
    assert calls == [0, 1, 2]


def test_routed_apply_changes_output_shape_and_checks_it():
    x = torch.randn(5, 3)
    routes = torch.tensor([1, 1, 0, 1, 0])
    out = routed_apply(x, routes, lambda task, b: b.sum(dim=1, keepdim=True) + task)
    assert torch.allclose(out[:, 0], x.sum(dim=1) + routes.float())
    with pytest.raises(ParameterError, match="one output row per input"):
        routed_apply(x, routes, lambda task, b: b[:1])
    with pytest.raises(ParameterError, match="differ in shape"):
        routed_apply(x, routes, lambda task, b: b[:, : task + 1])
    with pytest.raises(ParameterError, match="one per input"):
        routed_apply(x, routes[:4], lambda task, b: b)
    with pytest.raises(EmptyInputError):
        routed_apply(x[:0], routes[:0], lambda task, b: b)
