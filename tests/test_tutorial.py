"""Helpers of the tutorial notebooks (freqmerge_viz.tutorial)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz import tutorial


def test_percent_rounds_and_recomputes_mean():
    out = tutorial.percent({"a": 0.6712, "b": 0.98, "mean": 0.1})
    assert out == {"a": 67.1, "b": 98.0, "mean": 82.6}
    assert tutorial.percent({"a": 0.5}, mean=False) == {"a": 50.0}


def test_rounded_walks_containers():
    value = {"x": 0.123456, "y": [np.float32(0.98765), (1, "s", True)], "z": float("nan"), "n": None}
    out = tutorial.rounded(value, 2)
    assert out["x"] == 0.12 and out["y"][0] == 0.99 and out["y"][1] == (1, "s", True)
    assert math.isnan(out["z"]) and out["n"] is None
    frame = tutorial.rounded(pd.DataFrame({"a": [0.12345], "b": ["t"]}), 3)
    assert frame["a"].iloc[0] == 0.123 and frame["b"].iloc[0] == "t"
    assert np.array_equal(tutorial.rounded(np.array([0.1234]), 2), np.array([0.12]))


def test_setup_sets_threads_and_creates_dir(tmp_path):
    before = torch.get_num_threads()
    try:
        out = tutorial.setup(tmp_path / "nb", threads=1, seed=3)
        assert out.is_dir() and torch.get_num_threads() == 1
        assert tutorial.setup() is None
    finally:
        torch.set_num_threads(before)


def test_removed_table_matches_masks():
    table = tutorial.removed_table({"paper": fmv.FilterSpec(0.1),
                                    "official": fmv.FilterSpec(0.7, convention="official")},
                                   [(64, 64), (192, 64)])
    assert list(table.columns) == ["64×64", "192×64"]
    expected = 100.0 * float((fmv.FilterSpec(0.1).mask((192, 64)) < 0.5).double().mean())
    assert table.loc["paper", "192×64"] == pytest.approx(expected, abs=0.01)
    # the official filter removes almost nothing of a square matrix, more than half of a 3:1 one
    assert table.loc["official", "64×64"] < 1 and table.loc["official", "192×64"] > 50


def test_masks_figure_and_show(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    tv = {"a.weight": torch.randn(12, 8), "b.weight": torch.randn(8, 8)}
    fig = tutorial.masks_figure(tv, ["a.weight", "b.weight"], {"0.1": fmv.FilterSpec(0.1), "0.5": fmv.FilterSpec(0.5)},
                                title="t")
    assert len(fig.axes) >= 4
    written = tutorial.show(fig, tmp_path / "masks")
    assert [p.name for p in written] == ["masks.png"] and written[0].stat().st_size > 0


def test_pick_keeps_order_and_names_missing_keys():
    assert tutorial.pick({"a": 1, "b": 2, "c": 3}, ["c", "a"]) == {"c": 3, "a": 1}
    with pytest.raises(KeyError, match="'z'"):
        tutorial.pick({"a": 1}, ["a", "z"])


def test_storage_comparison_one_column_per_merge():
    class Fake:
        def __init__(self, sizes):
            self.sizes = sizes

        def storage_table(self):
            return pd.DataFrame({"name": ["t1", "t2"], "storage_bytes": self.sizes,
                                 "percent_of_model": [s / 10.0 for s in self.sizes]})

    table = tutorial.storage_comparison({"A": Fake([10, 30]), "B": Fake([5, 5])})
    assert list(table.columns) == ["A", "B"] and list(table.index) == ["t1", "t2", "mean"]
    assert table.loc["mean", "A"] == pytest.approx(2.0) and table.loc["t2", "B"] == pytest.approx(0.5)


def test_labelled_stacks_with_a_label_column():
    a = pd.DataFrame({"t": [0.0, 1.0]})
    a.attrs["x"] = 1
    table = tutorial.labelled({"plain": a, "filtered": pd.DataFrame({"t": [0.5]})})
    assert list(table["setting"]) == ["plain", "plain", "filtered"] and list(table.index) == [0, 1, 2]
    assert table.attrs == {} and "setting" not in a.columns
    with pytest.raises(ValueError):
        tutorial.labelled({})
