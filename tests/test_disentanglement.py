"""Weight disentanglement: the error ξ(α_1, α_2) of a task pair and the others'-vectors table.

The toy model is worked out by hand: parameters θ = (a, b), θ_0 = (0, 0), τ_1 = (1, 0),
τ_2 = (0, 1); two classes, class 1 when the score s > 0. Task 1's score is
``s = x + a − b`` and task 2's ``s = x + b − 0.5 a``, so adding τ_2 shifts task 1's scores
by −α_2 and adding τ_1 shifts task 2's by −0.5 α_1.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_support import one_thread  # noqa: F401  (fixture)
from freqmerge_viz.analysis import disentanglement as D
from freqmerge_viz.errors import MissingKeysError, ParameterError

X1 = [-1.5, -0.75, -0.25, 0.5]
X2 = [-0.8, -0.3, 0.2, 0.9]
Y1 = [0, 0, 1, 1]
Y2 = [0, 1, 1, 1]


def _forward(weights):
    def forward(params, inputs):
        theta = params["theta"]
        score = inputs[:, 0] + weights[0] * theta[0] + weights[1] * theta[1]
        return torch.stack([torch.zeros_like(score), score], dim=-1)
    return forward


FORWARDS = {"one": _forward((1.0, -1.0)), "two": _forward((-0.5, 1.0))}
DATA = {"one": (torch.tensor(X1)[:, None], torch.tensor(Y1)), "two": (torch.tensor(X2)[:, None], torch.tensor(Y2))}
PRETRAINED = {"theta": torch.zeros(2)}
VECTORS = {"one": {"theta": torch.tensor([1.0, 0.0])}, "two": {"theta": torch.tensor([0.0, 1.0])}}


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_disentanglement_error_of_the_hand_checked_toy(mode):
    table = D.disentanglement_error(FORWARDS, DATA, PRETRAINED, VECTORS, ("one", "two"), alphas=(0.0, 1.0), mode=mode)
    assert list(table.columns) == ["alpha_1", "alpha_2", "task", "disagreement", "accuracy"]
    assert len(table) == 8 and table.attrs["pair"] == ["one", "two"] and table.attrs["samples"] == {"one": 4, "two": 4}
    # task 1: (0, 1) moves x − 1, one of four predictions flips; (1, 1): scores x + 1 -> x, two flip
    np.testing.assert_allclose(D.disentanglement_pivot(table, "one").to_numpy(), [[0.0, 0.25], [0.0, 0.5]])
    # task 2: (1, 0): x -> x − 0.5 flips 0.2; (1, 1): x + 1 -> x + 0.5 flips −0.8
    np.testing.assert_allclose(D.disentanglement_pivot(table, "two").to_numpy(), [[0.0, 0.0], [0.25, 0.25]])
    xi = D.disentanglement_pivot(table)
    assert list(xi.index) == [0.0, 1.0] and list(xi.columns) == [0.0, 1.0]
    np.testing.assert_allclose(xi.to_numpy(), [[0.0, 0.25], [0.25, 0.75]])
    # accuracy of the combined model on task 1's labels: predictions [0,0,0,1], [0,0,0,0], [0,1,1,1], [0,0,0,1]
    np.testing.assert_allclose(D.disentanglement_pivot(table, "one", "accuracy").to_numpy(), [[0.75, 0.5], [0.75, 0.75]])


def test_others_table_of_the_hand_checked_toy():
    table = D.others_table(FORWARDS, DATA, PRETRAINED, VECTORS, scalings=(1.0, 2.0))
    assert list(table.columns) == ["task", "scaling", "kind", "accuracy", "loss"]
    assert len(table) == 2 * 2 * 4 and table.attrs["tasks"] == ["one", "two"]
    one = table[(table["task"] == "one") & (table["scaling"] == 1.0)].set_index("kind")
    # θ_0 (0, 0): x; own (1, 0): x + 1; others (0, 1): x − 1; all (1, 1): x
    assert one["accuracy"].to_dict() == pytest.approx({"pretrained": 0.75, "own": 0.75, "others": 0.5, "all": 0.75})
    expected_loss = np.mean([math.log1p(math.exp(x)) - y * x for x, y in zip(X1, Y1)])
    assert one.loc["pretrained", "loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert one.loc["all", "loss"] == pytest.approx(expected_loss, rel=1e-6)
    two = table[(table["task"] == "two") & (table["scaling"] == 2.0)].set_index("kind")
    # others (2, 0) on task 2: x − 1 -> predictions [0,0,0,0] (one right); own (0, 2): x + 2 -> all 1
    assert two["accuracy"].to_dict() == pytest.approx({"pretrained": 0.75, "own": 0.75, "others": 0.25, "all": 0.75})
    summary = D.others_summary(table)
    assert list(summary.columns) == list(D.KINDS) and list(summary.index) == [1.0, 2.0]
    assert summary.loc[1.0, "others"] == pytest.approx((0.5 + 0.5) / 2)  # task 2, others (1, 0): x − 0.5 -> [0,0,0,1]


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(ParameterError, match="two different tasks"):
        D.disentanglement_error(FORWARDS, DATA, PRETRAINED, VECTORS, ("one", "one"))
    with pytest.raises(MissingKeysError, match="three"):
        D.disentanglement_error(FORWARDS, DATA, PRETRAINED, VECTORS, ("one", "three"))
    with pytest.raises(ParameterError, match="finite"):
        D.disentanglement_error(FORWARDS, DATA, PRETRAINED, VECTORS, ("one", "two"), alphas=(float("nan"),))
    with pytest.raises(ParameterError, match="share no key"):
        D.others_table(FORWARDS, DATA, PRETRAINED, {"one": {"other": torch.ones(2)}, "two": {"other": torch.ones(2)}})
    with pytest.raises(ParameterError, match="lacks column"):
        D.disentanglement_pivot(pd.DataFrame({"alpha_1": [0.0]}))


def test_figures_of_the_toy():
    from freqmerge_viz.plots.core import layout_overlaps
    from freqmerge_viz.plots.disentanglement import (disentanglement_figure, disentanglement_plotly, others_figure,
                                                     others_plotly)

    table = D.disentanglement_error(FORWARDS, DATA, PRETRAINED, VECTORS, ("one", "two"), alphas=(0.0, 0.5, 1.0))
    fig = disentanglement_figure(table, title="toy")
    assert len(fig.axes) == 6                                # three heatmaps and their colour bars
    assert len(disentanglement_plotly(table).data) == 3
    others = D.others_table(FORWARDS, DATA, PRETRAINED, VECTORS, scalings=(0.5, 1.0))
    fig = others_figure(others)                              # one legend, outside the mean panel's lines
    assert fig.axes[0].get_legend() is None
    assert len(fig.legends) + sum(ax.get_legend() is not None for ax in fig.axes) == 1
    assert layout_overlaps(fig) == []
    assert [trace.name for trace in others_plotly(others).data][:2] == ["θ_pre", "θ_pre + α τ_t"]


def test_zoo_wrappers_match_the_zoo_evaluation(zoo):
    pair = list(zoo.tasks[:2])
    table = D.zoo_disentanglement_error(zoo, pair, alphas=(0.0, 1.0), limit=24)
    xi = D.disentanglement_pivot(table)
    assert xi.loc[0.0, 0.0] == 0.0                            # θ_0 against itself
    both = table[(table["alpha_1"] == 1.0) & (table["alpha_2"] == 0.0) & (table["task"] == pair[0])]
    finetuned = zoo.evaluate(zoo.finetuned[pair[0]], pair[0], split="val", limit=24)[pair[0]]
    assert both["accuracy"].item() == pytest.approx(finetuned) and both["disagreement"].item() == 0.0
    others = D.zoo_others_table(zoo, tasks=pair, scalings=(1.0,), limit=24)
    own = others[(others["task"] == pair[1]) & (others["kind"] == "own")]["accuracy"].item()
    assert own == pytest.approx(zoo.evaluate(zoo.finetuned[pair[1]], pair[1], split="val", limit=24)[pair[1]])


def test_write_figures_quick(zoo, tmp_path):
    from freqmerge_viz.topics import disentanglement as topic

    files = topic.write_figures(zoo, tmp_path, quick=True)
    names = {f.name for f in files}
    assert {"disentanglement.png", "disentanglement.svg", "disentanglement.html", "disentanglement.csv",
            "others_vectors.png", "others_vectors.html", "others_vectors.csv"} <= names
    assert 'id="freqmerge-disentanglement"' in (tmp_path / "disentanglement.html").read_text(encoding="utf-8")
    table = pd.read_csv(tmp_path / "others_vectors.csv")
    assert set(table["kind"]) == set(D.KINDS)
    assert table["accuracy_fraction"].between(0, 1).all() and (table["n_images"] == 32).all()
