"""Interference against performance (Fig. 2b): the correlation function and the pair table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.correlation import (average_ranks, correlation_table, correlation_with_ci,
                                                pair_interference_table, task_pairs)
from freqmerge_viz.analysis.evaluation import zoo_task_vectors
from freqmerge_viz.errors import EmptyInputError, ParameterError
from freqmerge_viz.metrics import amplitude_variance

try:
    from scipy import stats as scipy_stats
except ImportError:  # pragma: no cover - scipy is in the dev environment
    scipy_stats = None


def planted(rho: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return x, y


@pytest.mark.parametrize("rho", [0.6, -0.45])
def test_recovers_a_planted_correlation_and_its_interval_covers_it(rho):
    x, y = planted(rho, 400, seed=3)
    out = correlation_with_ci(x, y, n_boot=1000, seed=0, level=0.95)
    se = (1 - rho**2) / math.sqrt(400)
    assert abs(out["pearson"] - rho) < 4 * se
    assert out["pearson_low"] <= rho <= out["pearson_high"]
    assert out["pearson_low"] < out["pearson"] < out["pearson_high"]
    assert 2 * se < out["pearson_high"] - out["pearson_low"] < 6 * se
    spearman_of_normal = 6 / math.pi * math.asin(rho / 2)
    assert out["spearman_low"] <= spearman_of_normal <= out["spearman_high"]
    assert out["n"] == 400 and out["n_boot_valid"] == 1000


def test_interval_coverage_over_repeated_samples():
    rho, covered = 0.5, 0
    for seed in range(40):
        x, y = planted(rho, 60, seed)
        out = correlation_with_ci(x, y, n_boot=400, seed=seed, level=0.9)
        covered += out["pearson_low"] <= rho <= out["pearson_high"]
    assert covered >= 30


def test_no_correlation_interval_spans_zero():
    rng = np.random.default_rng(5)
    out = correlation_with_ci(rng.standard_normal(300), rng.standard_normal(300), n_boot=800, seed=1)
    assert out["pearson_low"] < 0 < out["pearson_high"]
    assert out["spearman_low"] < 0 < out["spearman_high"]


def test_matches_scipy_or_pandas_with_ties():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 6, 50).astype(float)
    y = x + rng.integers(0, 4, 50)
    out = correlation_with_ci(x, y, n_boot=50, seed=0)
    if scipy_stats is not None:
        assert out["pearson"] == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-12)
        assert out["spearman"] == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-12)
        assert np.allclose(average_ranks(x), scipy_stats.rankdata(x))
    import pandas as pd

    frame = pd.DataFrame({"x": x, "y": y})
    assert out["pearson"] == pytest.approx(frame["x"].corr(frame["y"]), abs=1e-12)
    ranks = frame.rank()  # pandas' own average ranks; its corr(method="spearman") needs scipy
    assert out["spearman"] == pytest.approx(ranks["x"].corr(ranks["y"]), abs=1e-12)


def test_seeded_and_pure():
    x, y = planted(0.3, 80, 9)
    a = correlation_with_ci(x, y, n_boot=300, seed=4)
    b = correlation_with_ci(list(x), list(y), n_boot=300, seed=4)
    c = correlation_with_ci(x, y, n_boot=300, seed=5)
    assert a == b
    assert a["pearson"] == c["pearson"] and a["pearson_low"] != c["pearson_low"]


def test_rejects_bad_input():
    with pytest.raises(ParameterError, match="same length"):
        correlation_with_ci([1, 2, 3], [1, 2], n_boot=10)
    with pytest.raises(EmptyInputError, match="at least 3"):
        correlation_with_ci([1, 2], [1, 2], n_boot=10)
    with pytest.raises(ParameterError, match="finite"):
        correlation_with_ci([1, 2, np.nan], [1, 2, 3], n_boot=10)
    with pytest.raises(ParameterError, match="level"):
        correlation_with_ci([1, 2, 3], [1, 2, 4], n_boot=10, level=1.5)
    with pytest.raises(ParameterError, match="n_boot"):
        correlation_with_ci([1, 2, 3], [1, 2, 4], n_boot=0)


def test_constant_variable_gives_nan_not_an_error():
    out = correlation_with_ci([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], n_boot=20)
    assert math.isnan(out["pearson"]) and out["n_boot_valid"] == 0


def test_task_pairs():
    tasks = list("abcde")
    assert task_pairs(tasks) == [("a", "b"), ("a", "c"), ("a", "d"), ("a", "e"), ("b", "c"), ("b", "d"),
                                 ("b", "e"), ("c", "d"), ("c", "e"), ("d", "e")]
    subset = task_pairs(tasks, n_pairs=4, seed=1)
    assert len(subset) == 4 and set(subset) <= set(task_pairs(tasks))
    assert subset == task_pairs(tasks, n_pairs=4, seed=1)
    assert task_pairs(tasks, n_pairs=50) == task_pairs(tasks)


def test_pair_table_on_the_zoo(shipped_zoo):
    tasks = shipped_zoo.tasks[:3]
    pairs = pair_interference_table(shipped_zoo, tasks=tasks, limit=40)
    assert list(zip(pairs["task_a"], pairs["task_b"])) == task_pairs(tasks)
    vectors = {tv.name: tv for tv in zoo_task_vectors(shipped_zoo, tasks)}
    first = pairs.iloc[0]
    direct = amplitude_variance([vectors[first["task_a"]], vectors[first["task_b"]]], device="cpu").mean
    assert first["amplitude_variance"] == pytest.approx(direct, rel=1e-6)
    assert np.allclose(pairs["normalized_a"], pairs["accuracy_a"] / pairs["individual_a"])
    assert np.allclose(pairs["normalized_accuracy"], (pairs["normalized_a"] + pairs["normalized_b"]) / 2)
    assert ((pairs["accuracy_a"] >= 0) & (pairs["accuracy_a"] <= 1)).all()
    table = correlation_table(pairs, n_boot=50)
    assert list(table["x"]) == ["amplitude_variance", "normalized_variance"]
    assert table["n"].tolist() == [3, 3]
