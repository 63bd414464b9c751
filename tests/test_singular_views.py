"""The Fourier and singular views side by side (analysis.singular_views), adaptive cutoffs and LiNeS
on the shipped zoo (analysis.adaptive, analysis.lines): tables, hand-checked layer profiles and the
predictor comparison's statistics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis import adaptive, lines
from freqmerge_viz.analysis import singular_views as sv
from freqmerge_viz.analysis.evaluation import zoo_task_vectors
from freqmerge_viz.errors import EmptyInputError, ParameterError
from freqmerge_viz.metrics import amplitude_variance
from freqmerge_viz.taskvector import TaskVector


def test_layer_profile_by_hand():
    # layer 0: task a = (1, 0 | 0 0), task b = (0, 1 | 0 0) orthogonal; layer 1: both (3, 4)
    a = TaskVector.from_tensors({"blocks.0.w": torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
                                 "blocks.1.b": torch.tensor([3.0, 4.0])}, "a")
    b = TaskVector.from_tensors({"blocks.0.w": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
                                 "blocks.1.b": torch.tensor([3.0, 4.0])}, "b")
    profile = sv.layer_profile([a, b], k=1)
    assert profile["layer"].tolist() == [0, 1] and profile["depth"].tolist() == [0.0, 1.0]
    assert profile["norm"].tolist() == pytest.approx([1.0, 5.0])
    assert profile["cosine"].tolist() == pytest.approx([0.0, 1.0])
    # layer 0's matrix: rank one each, u = e1 for both, v = e1 vs e2: right overlap 0
    assert profile.loc[0, "overlap"] == pytest.approx(0.0) and profile.loc[0, "sti_normalized"] == pytest.approx(0.0)
    fourier = amplitude_variance([a, b], device="cpu").per_matrix.iloc[0]
    assert profile.loc[0, "amplitude_variance"] == pytest.approx(fourier["variance"])
    assert math.isnan(profile.loc[1, "amplitude_variance"])  # a 1-D key is not a matrix


def test_interference_views_side_by_side_on_the_zoo(shipped_zoo):
    vectors = zoo_task_vectors(shipped_zoo, shipped_zoo.tasks[:3])
    views = sv.interference_views(vectors, (("TA", "task_arithmetic"), ("FR", "fr", {"cutoff": 0.3})))
    assert set(views["label"]) == {"TA", "FR"} and views["shape"].notna().all()
    assert set(sv.FOURIER + sv.SINGULAR) <= set(views.columns)
    ta = views[views["label"] == "TA"].set_index("key")
    reference = amplitude_variance(vectors, device="cpu").per_matrix.set_index("key")
    assert ta["amplitude_variance"].to_dict() == pytest.approx(reference["variance"].to_dict())
    assert ta["normalized_variance"].to_dict() == pytest.approx(
        (reference["variance"] / reference["mean_amplitude"]).to_dict())
    layers = sv.per_layer(views)
    assert len(layers) == 2 * 4 and (layers["matrices"] == 4).all()
    fr_rows = layers[layers["label"] == "FR"].set_index("layer")
    ta_rows = layers[layers["label"] == "TA"].set_index("layer")
    assert (fr_rows["amplitude_variance"] < ta_rows["amplitude_variance"]).all()  # the filter removes bins
    with pytest.raises(ParameterError):
        sv.interference_views(vectors, (("A", "task_arithmetic"), ("A", "fr")))
    with pytest.raises(EmptyInputError):
        sv.per_layer(views[views["layer"].isna()])


def test_predictor_comparison_on_hand_made_pairs():
    rng = np.random.default_rng(0)
    y = np.linspace(0.5, 1.0, 12)
    pairs = pd.DataFrame({"task_a": [f"t{i}" for i in range(12)], "task_b": [f"u{i}" for i in range(12)],
                          "normalized_accuracy": y, "perfect": -y, "noisy": -y + rng.normal(0, 0.3, 12)})
    table = sv.predictor_comparison(pairs, ("noisy", "perfect"), reference="noisy", n_boot=300)
    rows = table.set_index("x")
    assert rows.loc["perfect", "spearman"] == pytest.approx(-1.0)
    assert rows.loc["noisy", "abs_spearman_gain"] == 0.0 and rows.loc["noisy", "gain_low"] == 0.0
    gain = rows.loc["perfect", "abs_spearman_gain"]
    assert gain == pytest.approx(1.0 - abs(rows.loc["noisy", "spearman"]))
    assert 0.0 <= rows.loc["perfect", "gain_low"] <= gain <= rows.loc["perfect", "gain_high"]
    assert table.attrs["reference"] == "noisy" and table.attrs["pairs"] == 12


def test_pair_singular_table_keeps_the_fig2b_columns(shipped_zoo):
    pairs = sv.pair_singular_table(shipped_zoo, tasks=shipped_zoo.tasks[:3], limit=24)
    assert len(pairs) == 3
    assert {"amplitude_variance", "normalized_variance", "sti", "sti_normalized", "overlap", "alignment",
            "normalized_accuracy", "n_images_a"} <= set(pairs.columns)
    assert pairs[["sti_normalized", "overlap", "alignment"]].notna().all().all()
    assert ((pairs["overlap"] >= 0) & (pairs["overlap"] <= 1)).all()


def test_pair_singular_table_equals_the_old_per_pair_loop(shipped_zoo, capsys):
    from freqmerge_viz.analysis.evaluation import study_task_vectors
    from freqmerge_viz.singular import singular_interference

    tasks = shipped_zoo.tasks[:3]
    pairs = sv.pair_singular_table(shipped_zoo, tasks=tasks, limit=16, include="*.1.*", exclude="*.bias",
                                   device="cpu", estimate=True)
    assert "estimate: pair singular measures of" in capsys.readouterr().err
    vectors = {tv.name: tv for tv in study_task_vectors(shipped_zoo, tasks)}
    assert pairs.attrs["singular_keys"] == len(singular_interference(list(vectors.values())[:2], include="*.1.*",
                                                                      exclude="*.bias"))
    for row in pairs.to_dict(orient="records"):
        # what pair_singular_table computed before: singular_interference of each pair, its means
        old = singular_interference([vectors[row["task_a"]], vectors[row["task_b"]]], include="*.1.*",
                                    exclude="*.bias", device="cpu")
        for column in sv.SINGULAR_PAIR_COLUMNS:
            assert row[column] == pytest.approx(float(old[column].mean()), rel=1e-5), column


def test_chosen_cutoffs_and_rule_comparison(shipped_zoo):
    tasks = shipped_zoo.tasks[:3]
    cutoffs = adaptive.chosen_cutoffs(shipped_zoo, {"cutoff_rule": "energy"}, tasks=tasks)
    assert len(cutoffs) == 16 and set(cutoffs["role"]) == {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    assert cutoffs["layer"].tolist() == sorted(cutoffs["layer"].tolist())
    assert ((cutoffs["cutoff"] > 0) & (cutoffs["cutoff"] <= 0.5)).all()
    assert adaptive.chosen_cutoffs(shipped_zoo, {}, tasks=tasks).empty  # the fixed rule records none
    results = adaptive.rule_comparison(shipped_zoo, {"fixed": {}, "energy": {"cutoff_rule": "energy"}}, tasks=tasks,
                                       scalings=(1.0,), limit=16, validation_limit=16)
    assert results.groupby("rule").size().to_dict() == {"energy": 3, "fixed": 3}
    assert results["accuracy"].between(0, 1).all() and (results["n_images"] == 16).all()


def test_lines_comparison_picks_on_validation(shipped_zoo):
    table = lines.lines_comparison(shipped_zoo, tasks=shipped_zoo.tasks[:2], scalings=(0.1, 0.3), alphas=(0.1,),
                                   betas=(0.0, 0.5), limit=16, validation_limit=16)
    assert table["setting"].unique().tolist() == ["task arithmetic", "task arithmetic + LiNeS"]
    assert len(table) == 4 and (table["n_images"] == 16).all()
    assert lines.lines_grid((0.1,), (0.0, 0.5)) == [{"scaling": 1.0, "layer_scaling": [0.1, 0.0]},
                                                     {"scaling": 1.0, "layer_scaling": [0.1, 0.5]}]
