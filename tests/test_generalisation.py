"""Generalisation matrix: θ_pre + τ_source evaluated on every target task."""

import numpy as np
import pandas as pd
import pytest

import freqmerge_viz as fmv
from freqmerge_viz.analysis import generalisation as G
from freqmerge_viz.errors import ParameterError

TASKS = ["digits", "textures", "landcover"]
LIMIT = 48


@pytest.fixture(scope="module")
def table(zoo):
    return G.generalisation_matrix(zoo, tasks=TASKS, filtered=fmv.FilterSpec(0.3), limit=LIMIT)


def test_table_shape_and_columns(table):
    assert list(table.columns) == ["source", "target", "filtered", "accuracy", "loss"]
    assert len(table) == 2 * len(TASKS) ** 2
    assert table.groupby("filtered").size().tolist() == [9, 9]
    assert list(table["source"].iloc[:3]) == [TASKS[0]] * 3 and list(table["target"].iloc[:3]) == TASKS
    assert table["accuracy"].between(0, 1).all() and (table["loss"] > 0).all()


def test_unfiltered_diagonal_is_the_finetuned_models(zoo, table):
    unfiltered = G.generalisation_pivot(table, filtered=False)
    for task in TASKS:
        individual = zoo.evaluate(zoo.finetuned[task], task, "test", limit=LIMIT)[task]
        assert unfiltered.loc[task, task] == pytest.approx(individual)
    pretrained = zoo.evaluate(zoo.pretrained, TASKS, "test", limit=LIMIT)
    assert table.attrs["pretrained"] == pytest.approx(pretrained)
    assert np.mean(np.diag(unfiltered)) > np.mean(list(pretrained.values()))


def test_difference_is_filtered_minus_unfiltered(table):
    difference = G.generalisation_difference(table)
    assert list(difference.index) == TASKS and list(difference.columns) == TASKS
    filtered = G.generalisation_pivot(table, True)
    unfiltered = G.generalisation_pivot(table, False)
    np.testing.assert_allclose(difference.to_numpy(), filtered.to_numpy() - unfiltered.to_numpy())
    assert np.abs(difference.to_numpy()).max() > 0


def test_identity_filter_changes_nothing(zoo):
    frame = G.generalisation_matrix(zoo, tasks=TASKS[:2], filtered=fmv.FilterSpec(0.0), limit=16)
    np.testing.assert_allclose(G.generalisation_difference(frame).to_numpy(), 0.0)
    np.testing.assert_allclose(G.generalisation_difference(frame, "loss").to_numpy(), 0.0, atol=1e-5)


def test_scaling_and_bad_arguments(zoo):
    with pytest.raises(ParameterError):
        G.generalisation_matrix(zoo, tasks=TASKS[:1], filtered=None, limit=8)
    with pytest.raises(ParameterError, match="unknown zoo task"):
        G.generalisation_matrix(zoo, tasks=["nope"], limit=8)
    half = G.generalisation_matrix(zoo, tasks=TASKS[:1], scaling=0.0, filtered=True, limit=16)
    pretrained = zoo.evaluate(zoo.pretrained, TASKS[0], "test", limit=16)[TASKS[0]]
    assert half["accuracy"].tolist() == pytest.approx([pretrained, pretrained])


def test_write_figures_quick(zoo, tmp_path):
    from freqmerge_viz.topics import generalisation as topic

    files = topic.write_figures(zoo, tmp_path, quick=True)
    names = {f.name for f in files}
    assert {"generalisation.png", "generalisation.svg", "generalisation.html", "generalisation.csv",
            "generalisation_difference.csv", "generalisation_pretrained.csv"} <= names
    assert 'id="freqmerge-generalisation"' in (tmp_path / "generalisation.html").read_text(encoding="utf-8")
    table = pd.read_csv(tmp_path / "generalisation.csv")
    assert list(table.columns) == ["source", "target", "filtered", "accuracy_fraction", "loss", "n_images"]
    assert len(table) == 2 * len(set(table["source"])) ** 2
    assert set(table["n_images"]) == {32}   # quick: the first 32 test images of each target
    assert set(pd.read_csv(tmp_path / "generalisation_pretrained.csv")["n_images"]) == {32}
