"""Cutoff sweep of FR-Merging: independent points, any executor, cutoff 0 = task arithmetic."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.evaluation import zoo_task_vectors
from freqmerge_viz.analysis.sweeps import SweepPoint, cutoff_sweep, run_point, sweep_points
from freqmerge_viz.zoo.evaluation import evaluate_on_zoo
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.methods import merge
from freqmerge_viz.metrics import amplitude_variance

LIMIT = 32


@pytest.fixture(scope="module")
def tasks(shipped_zoo):
    return tuple(shipped_zoo.tasks[:3])


@pytest.fixture(scope="module")
def serial(shipped_zoo, tasks):
    return cutoff_sweep(shipped_zoo, ("ideal", "gaussian"), (0.0, 0.25), tasks=tasks, limit=LIMIT,
                        params={"coefficients": "none"}, scalings=(0.1,))


def test_cutoff_zero_is_task_arithmetic(shipped_zoo, tasks, serial):
    models = {t: shipped_zoo.finetuned[t] for t in tasks}
    ta = evaluate_on_zoo(shipped_zoo, [merge("task_arithmetic", shipped_zoo.pretrained, models, scaling=0.1)],
                         list(tasks), limit=LIMIT).set_index("task")["accuracy"]
    for kind in ("ideal", "gaussian"):
        point = serial[(serial["kind"] == kind) & (serial["cutoff"] == 0.0)].set_index("task")
        assert point["accuracy"].to_dict() == ta.to_dict()
        unfiltered = amplitude_variance(zoo_task_vectors(shipped_zoo, tasks), device="cpu").mean
        assert point["amplitude_variance"].iloc[0] == pytest.approx(unfiltered, rel=1e-5)
        assert point["kept_fraction"].iloc[0] == 1.0


def test_default_lambda_weights_at_cutoff_zero_are_weighted_task_arithmetic(shipped_zoo, tasks):
    point = run_point(shipped_zoo, SweepPoint("butterworth", 0.0, tasks=tasks, limit=LIMIT))
    fr = merge("fr", shipped_zoo.pretrained, {t: shipped_zoo.finetuned[t] for t in tasks}, cutoff=0.0)
    ta = merge("task_arithmetic", shipped_zoo.pretrained, {t: shipped_zoo.finetuned[t] for t in tasks},
               scaling=1.0, weights=fr.statistics["lambda"])
    expected = evaluate_on_zoo(shipped_zoo, [ta], list(tasks), limit=LIMIT)
    assert point["accuracy"].tolist() == expected["accuracy"].tolist()


def test_thread_pool_gives_the_serial_table(shipped_zoo, tasks, serial):
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = cutoff_sweep(shipped_zoo, ("ideal", "gaussian"), (0.0, 0.25), executor=pool, tasks=tasks,
                                limit=LIMIT, params={"coefficients": "none"}, scalings=(0.1,))
    pd.testing.assert_frame_equal(parallel, serial)


def test_points_are_independent(shipped_zoo, tasks, serial):
    alone = run_point(shipped_zoo, SweepPoint("gaussian", 0.25, {"coefficients": "none"}, (0.1,), tasks, limit=LIMIT))
    rows = serial[(serial["kind"] == "gaussian") & (serial["cutoff"] == 0.25)].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, rows)
    filtered = serial[serial["cutoff"] == 0.25]
    assert (filtered["amplitude_variance"] < serial.loc[serial["cutoff"] == 0.0, "amplitude_variance"].iloc[0]).all()
    assert (filtered["kept_variance"] >= filtered["amplitude_variance"]).all()


def test_scaling_is_chosen_on_validation(shipped_zoo, tasks):
    point = SweepPoint("ideal", 0.2, scalings=(0.2, 3.0), tasks=tasks, limit=LIMIT, validation_limit=24)
    rows = run_point(shipped_zoo, point)
    models = {t: shipped_zoo.finetuned[t] for t in tasks}
    scores = evaluate_on_zoo(shipped_zoo, [merge("fr", shipped_zoo.pretrained, models, **point.fr_params(s))
                                           for s in point.scalings], list(tasks), split="val", limit=24)
    means = scores.groupby("state")["accuracy"].mean()
    assert rows["scaling"].iloc[0] == point.scalings[int(np.argmax(means.to_numpy()))]
    assert rows["validation_mean"].iloc[0] == pytest.approx(means.max())


def test_grid_and_validation():
    points = sweep_points(("ideal", "gaussian"), (0.0, 0.5))
    assert [(p.kind, p.cutoff) for p in points] == [("ideal", 0.0), ("ideal", 0.5), ("gaussian", 0.0),
                                                    ("gaussian", 0.5)]
    with pytest.raises(ParameterError, match="kind"):
        SweepPoint("box", 0.1)
    with pytest.raises(ParameterError, match="normalized cutoff"):
        SweepPoint("ideal", 1.5)
    with pytest.raises(ParameterError, match="sets kind, cutoff and scaling"):
        SweepPoint("ideal", 0.1, {"scaling": 2.0})
    with pytest.raises(ParameterError, match="unknown parameter"):
        SweepPoint("ideal", 0.1, {"no_such": 1})
