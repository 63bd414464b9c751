"""Table 1 analogue: amplitude variance per method, against task arithmetic, with kept bins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.evaluation import zoo_task_vectors
from freqmerge_viz.analysis.table1 import DEFAULT_ROWS, MethodSetting, reference_filter, table1
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.metrics import amplitude_variance
from freqmerge_viz.spectral import FilterSpec
from freqmerge_viz.taskvector import TaskVector


@pytest.fixture(scope="module")
def vectors():
    g = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (24, 16), "b.weight": (16, 40), "b.bias": (16,)}
    smooth = torch.linspace(0, 1, 24)[:, None] * torch.linspace(-1, 1, 16)[None, :]
    out = []
    for i in range(4):
        tensors = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
        tensors["a.weight"] += (i + 1) * 3.0 * smooth
        out.append(TaskVector.from_tensors(tensors, name=f"t{i}"))
    return out


def test_ta_row_is_the_baseline_and_matches_amplitude_variance(vectors):
    table = table1(vectors, DEFAULT_ROWS).set_index("label")
    assert table.loc["TA", ["change_all_pct", "change_kept_pct", "change_normalized_pct"]].tolist() == [0, 0, 0]
    assert table.loc["TA", "all_bins"] == pytest.approx(amplitude_variance(vectors, device="cpu").mean, rel=1e-6)
    kept = amplitude_variance(vectors, within=reference_filter(), device="cpu").mean
    assert table.loc["TA", "kept_bins"] == pytest.approx(kept, rel=1e-6)
    assert list(table.index) == [r.label for r in DEFAULT_ROWS]


def test_fr_at_cutoff_zero_equals_task_arithmetic(vectors):
    table = table1(vectors, ["task_arithmetic", ("FR0", "fr", {"cutoff": 0.0}),
                             ("FR0 gaussian", "fr", {"cutoff": 0.0, "kind": "gaussian"})],
                   baseline="task_arithmetic").set_index("label")
    for label in ("FR0", "FR0 gaussian"):
        for column in ("all_bins", "kept_bins", "normalized"):
            assert table.loc[label, column] == pytest.approx(table.loc["task_arithmetic", column], rel=1e-5)
        assert abs(table.loc[label, "change_all_pct"]) < 1e-3


def test_ideal_filter_lowers_all_bins_but_not_the_bins_it_keeps(vectors):
    spec = FilterSpec(0.3)
    table = table1(vectors, ["task_arithmetic", ("FR", "fr", {"cutoff": 0.3})], baseline="task_arithmetic",
                   kept_within=spec).set_index("label")
    assert table.loc["FR", "change_all_pct"] < -10
    assert table.loc["FR", "change_kept_pct"] == pytest.approx(0.0, abs=1e-3)
    assert table.loc["FR", "kept_fraction"] == pytest.approx(float((spec.mask((24, 16)) >= 0.5).float().mean()
                                                                  + (spec.mask((16, 40)) >= 0.5).float().mean()) / 2)


def test_dare_rescale_raises_variance_and_ties_trim_lowers_it(vectors):
    table = table1(vectors, ["task_arithmetic", ("DARE", "dare_linear", {"density": 0.5}),
                             ("TIES", "ties", {"density": 0.2})], baseline="task_arithmetic").set_index("label")
    assert table.loc["DARE", "change_all_pct"] > 0
    assert table.loc["TIES", "change_all_pct"] < 0


def test_rows_are_validated(vectors):
    with pytest.raises(ParameterError, match="unknown merge method"):
        table1(vectors, ["task_arithmetic", "no_such_method"], baseline="task_arithmetic")
    with pytest.raises(ParameterError, match="baseline"):
        table1(vectors, ["ties"])
    with pytest.raises(ParameterError, match="unique"):
        table1(vectors, ["ties", "ties"], baseline="ties")
    with pytest.raises(ParameterError, match="Table 1 row"):
        table1(vectors, [42], baseline="TA")
    with pytest.raises(ParameterError):
        table1(vectors, [MethodSetting("TA", "task_arithmetic"), MethodSetting("X", "ties", {"density": 2.0})])


def test_zoo_table_has_every_default_row(shipped_zoo):
    table = table1(zoo_task_vectors(shipped_zoo, shipped_zoo.tasks[:3]))
    assert len(table) == len(DEFAULT_ROWS)
    assert np.isfinite(table[["all_bins", "kept_bins", "normalized"]].to_numpy()).all()
    fr = table.set_index("label").loc["FR"]
    assert fr["change_kept_pct"] == pytest.approx(0.0, abs=1e-3)
    assert fr["change_all_pct"] < 0
