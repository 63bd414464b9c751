"""Loss landscape on the plane of two task vectors: coordinates, projections, evaluation
against independent computations, caching, a user's own model, and the figure files."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import freqmerge_viz as fmv
from freqmerge_viz import engine as E
from freqmerge_viz.zoo import evaluation as ZE
from freqmerge_viz.analysis import landscape as L
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.zoo.model import backbone_forward, head_forward

A, B, C = "landcover", "textures", "digits"
LIMIT = 40


@pytest.fixture(scope="module")
def flat(zoo):
    """The task vectors flattened into single vectors: an independent check of the per-key maths."""
    keys = ZE.zoo_backbone_keys(zoo)
    pre = torch.cat([zoo.pretrained[k].double().reshape(-1) for k in keys])
    return {t: torch.cat([zoo.finetuned[t][k].double().reshape(-1) for k in keys]) - pre for t in (A, B, C)}


def _direct(zoo, state, task=A, limit=LIMIT):
    """Loss and accuracy of a backbone through the zoo model's own forward."""
    images, labels = zoo.data(task, "test")
    images, labels = images[:limit], labels[:limit]
    logits = head_forward(zoo.head(task), backbone_forward(state, images, zoo.model_config))
    accuracy = zoo.evaluate(state, task, "test", limit=limit)[task]
    return float(F.cross_entropy(logits, labels)), accuracy


def _at(frame, alpha, beta):
    row = frame[np.isclose(frame["alpha"], alpha) & np.isclose(frame["beta"], beta)]
    assert len(row) == 1
    return row.iloc[0]


def test_grid_corners_are_the_pretrained_and_finetuned_models(zoo):
    frame = L.landscape(zoo, A, B, grid=([0.0, 1.0], [0.0, 1.0]), limit=LIMIT)
    assert list(frame.columns) == ["alpha", "beta", "loss", "accuracy"] and len(frame) == 4
    loss, accuracy = _direct(zoo, zoo.pretrained)
    assert _at(frame, 0, 0)["loss"] == pytest.approx(loss, abs=1e-5)
    assert _at(frame, 0, 0)["accuracy"] == pytest.approx(accuracy)
    loss, accuracy = _direct(zoo, zoo.finetuned[A])
    assert _at(frame, 1, 0)["loss"] == pytest.approx(loss, abs=1e-4)
    assert _at(frame, 1, 0)["accuracy"] == pytest.approx(accuracy)
    assert _at(frame, 1, 0)["loss"] < _at(frame, 0, 0)["loss"]
    assert frame.attrs["task_a"] == A and frame.attrs["eval_task"] == A and frame.attrs["samples"] == LIMIT


def test_plane_geometry_matches_flattened_vectors(zoo, flat):
    study = L.plane_study(zoo, A, B, limit=LIMIT)
    plane = study.plane
    a, b = flat[A], flat[B]
    assert plane.norm_a == pytest.approx(float(a.norm()), rel=1e-6)
    assert plane.b_alpha == pytest.approx(float(a @ b / (a @ a)), rel=1e-5)
    perp = b - (a @ b / (a @ a)) * a
    assert plane.norm_b_perp == pytest.approx(float(perp.norm()), rel=1e-5)
    assert plane.cosine == pytest.approx(float(a @ b / (a.norm() * b.norm())), rel=1e-5)
    alpha, beta, distance = plane.project(zoo.finetuned[B])
    assert alpha == pytest.approx(plane.b_alpha, abs=1e-5) and beta == pytest.approx(1.0, abs=1e-5)
    assert distance < 1e-5 * plane.norm_b


def test_merged_points_project_and_reconstruct(zoo, flat):
    third = {k: zoo.pretrained[k] + (zoo.finetuned[C][k] - zoo.pretrained[k]) for k in zoo.pretrained}
    points = L.project_points(zoo, A, B, limit=LIMIT,
                              methods={"ta": {"method": "task_arithmetic", "scaling": 0.4}},
                              points={"third": third})
    assert list(points.columns) == ["method", "alpha", "beta", "off_plane_distance", "loss", "accuracy"]
    assert list(points["method"]) == ["pretrained", "finetuned_a", "finetuned_b", "ta", "third"]
    rows = points.set_index("method")
    b_alpha = float(flat[A] @ flat[B] / (flat[A] @ flat[A]))
    assert rows.loc["pretrained", ["alpha", "beta", "off_plane_distance"]].tolist() == pytest.approx([0, 0, 0], abs=1e-6)
    assert rows.loc["finetuned_a", ["alpha", "beta"]].tolist() == pytest.approx([1, 0], abs=1e-5)
    assert rows.loc["finetuned_b", ["alpha", "beta"]].tolist() == pytest.approx([b_alpha, 1], abs=1e-5)
    assert rows.loc["finetuned_b", "off_plane_distance"] < 1e-4
    ta = rows.loc["ta"]
    assert [ta["alpha"], ta["beta"]] == pytest.approx([0.4 * (1 + b_alpha), 0.4], abs=1e-5)
    assert ta["off_plane_distance"] < 1e-4
    on_plane = L.landscape(zoo, A, B, grid=([ta["alpha"]], [ta["beta"]]), limit=LIMIT)
    assert on_plane["loss"].iloc[0] == pytest.approx(ta["loss"], abs=1e-4)
    assert on_plane["accuracy"].iloc[0] == pytest.approx(ta["accuracy"])
    basis = torch.stack([flat[A], flat[B]], dim=1)
    coefficients = torch.linalg.lstsq(basis, flat[C][:, None]).solution
    residual = float((flat[C][:, None] - basis @ coefficients).norm())
    assert rows.loc["third", "off_plane_distance"] == pytest.approx(residual, rel=1e-4)
    assert residual > 0.5
    assert rows.loc["finetuned_a", "loss"] == pytest.approx(_direct(zoo, zoo.finetuned[A])[0], abs=1e-4)


def test_filtered_plane_uses_filtered_task_vectors(zoo):
    spec = fmv.FilterSpec(0.3)
    frame = L.landscape(zoo, A, B, grid=([1.0], [0.0]), filtered=spec, limit=LIMIT)
    plain = L.plane_study(zoo, A, B, limit=LIMIT).plane
    assert frame.attrs["norm_a"] < plain.norm_a
    assert frame.attrs["filtered"] == repr(spec)
    expected = {k: zoo.pretrained[k] + fmv.filter_parameter(zoo.finetuned[A][k] - zoo.pretrained[k], spec)
                for k in zoo.pretrained}
    loss, accuracy = _direct(zoo, expected)
    assert frame["loss"].iloc[0] == pytest.approx(loss, abs=1e-4)
    assert frame["accuracy"].iloc[0] == pytest.approx(accuracy)
    every_matrix = L.plane_study(zoo, A, B, filtered={"cutoff": 0.3, "filter_scope": "all_matrices"},
                                 limit=LIMIT).plane
    assert every_matrix.norm_a == pytest.approx(frame.attrs["norm_a"], rel=1e-5)
    # FR's paper scope (layer_matrices) leaves the patch embedding unfiltered, so more of τ_A stays
    paper_scope = L.plane_study(zoo, A, B, filtered={"cutoff": 0.3}, limit=LIMIT).plane
    assert frame.attrs["norm_a"] < paper_scope.norm_a < plain.norm_a


def test_interpolation_curves_end_at_the_models(zoo):
    curves = L.interpolation_curves(zoo, A, B, n=3, limit=LIMIT)
    assert list(curves.columns) == ["path", "t", "alpha", "beta", "loss", "accuracy"]
    assert set(curves["path"]) == {"pretrained→A", "pretrained→B", "A→B"} and len(curves) == 9
    by = curves.set_index(["path", "t"])
    pretrained, finetuned_a, finetuned_b = (_direct(zoo, s)[0] for s in
                                            (zoo.pretrained, zoo.finetuned[A], zoo.finetuned[B]))
    assert by.loc[("pretrained→A", 0.0), "loss"] == pytest.approx(pretrained, abs=1e-5)
    assert by.loc[("pretrained→A", 1.0), "loss"] == pytest.approx(finetuned_a, abs=1e-4)
    assert by.loc[("A→B", 0.0), "loss"] == pytest.approx(finetuned_a, abs=1e-4)
    assert by.loc[("A→B", 1.0), "loss"] == pytest.approx(finetuned_b, abs=1e-4)
    assert by.loc[("pretrained→B", 1.0), "loss"] == pytest.approx(finetuned_b, abs=1e-4)


def test_cache_hit_loads_identical_arrays_without_evaluating(zoo, tmp_path):
    calls = []
    inner = ZE.zoo_forward(zoo, A)

    def counting(params, images):
        calls.append(images.shape[0])
        return inner(params, images)

    counting.fingerprint = inner.fingerprint
    images, labels = ZE.zoo_data(zoo, A, "test", 24)
    evaluator = E.Evaluator(counting, images, labels, tuple(ZE.zoo_backbone_keys(zoo)), name="counting zoo")
    args = (evaluator, zoo.finetuned[A], zoo.finetuned[B])
    first = L.landscape(*args, pretrained=zoo.pretrained, grid=3, cache_dir=tmp_path)
    assert calls and not first.attrs["cache_hit"]
    assert len(list(tmp_path.glob("grid-*.npz"))) == 1
    calls.clear()
    second = L.landscape(*args, pretrained=zoo.pretrained, grid=3, cache_dir=tmp_path)
    assert calls == [] and second.attrs["cache_hit"]
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    third = L.landscape(*args, pretrained=zoo.pretrained, grid=4, cache_dir=tmp_path)
    assert calls and not third.attrs["cache_hit"]
    calls.clear()
    L.landscape(*args, pretrained=zoo.pretrained, grid=3, cache_dir=tmp_path, filtered=fmv.FilterSpec(0.2))
    assert calls
    points = L.project_points(*args, pretrained=zoo.pretrained, methods=["task_arithmetic"], cache_dir=tmp_path)
    calls.clear()
    again = L.project_points(*args, pretrained=zoo.pretrained, methods=["task_arithmetic"], cache_dir=tmp_path)
    assert calls == [] and again.attrs["cache_hit"]
    pd.testing.assert_frame_equal(points, again, check_exact=True)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 12)
        self.fc2 = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def test_a_users_own_model(tmp_path):
    torch.manual_seed(1)
    net = TinyNet()
    pretrained = {k: v.detach().clone() for k, v in net.named_parameters()}
    model_a = {k: v + 0.5 * torch.randn_like(v) for k, v in pretrained.items()}
    model_b = {k: v + 0.5 * torch.randn_like(v) for k, v in pretrained.items()}
    inputs, labels = torch.randn(64, 5), torch.randint(0, 3, (64,))
    forward = E.module_forward(net)
    evaluator = E.Evaluator(forward, inputs, labels, tuple(pretrained), name="tiny")
    frame = L.landscape(evaluator, model_a, model_b, pretrained=pretrained, grid=([0.0, 1.0], [0.0, 1.0]),
                        include="fc1.*")
    assert frame.attrs["plane_keys"] == 2
    expected_b = {**pretrained, **{k: model_a[k] for k in ("fc1.weight", "fc1.bias")}}
    for (alpha, state) in ((0.0, pretrained), (1.0, expected_b)):
        logits = forward(state, inputs)
        assert _at(frame, alpha, 0)["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-5)
    points = L.project_points(evaluator, model_a, model_b, pretrained=pretrained, include="fc1.*", methods=[])
    moved = sum(float((model_a[k] - pretrained[k]).pow(2).sum()) for k in ("fc2.weight", "fc2.bias")) ** 0.5
    assert points.set_index("method").loc["finetuned_a", "off_plane_distance"] == pytest.approx(moved, rel=1e-5)
    with pytest.raises(ParameterError, match="pretrained="):
        L.landscape(evaluator, model_a, model_b)


def test_grid_arguments():
    plane = L.Plane({}, {}, {}, (), 1.0, 1.0, 1.0, 2.0, 0.0)
    alphas, betas = L.grid_axes(5, plane)
    assert alphas[0] == pytest.approx(-0.5) and alphas[-1] == pytest.approx(2.5) and len(betas) == 5
    alphas, betas = L.grid_axes((3, (-1, 1)), plane)
    assert alphas.tolist() == betas.tolist() == [-1.0, 0.0, 1.0]
    alphas, betas = L.grid_axes(([0, 1], [2]), plane)
    assert alphas.tolist() == [0, 1] and betas.tolist() == [2]
    for bad in ((3, (1, 1)), "big", ([], [1]), 0):
        with pytest.raises(ParameterError):
            L.grid_axes(bad, plane)


def test_parallel_or_zero_task_vectors_are_rejected(zoo):
    keys = ZE.zoo_backbone_keys(zoo)
    doubled = {k: zoo.pretrained[k] + 2 * (zoo.finetuned[A][k] - zoo.pretrained[k]) for k in keys}
    with pytest.raises(ParameterError, match="parallel"):
        L.make_plane(zoo.pretrained, zoo.finetuned[A], doubled, keys)
    with pytest.raises(ParameterError, match="zero"):
        L.make_plane(zoo.pretrained, zoo.pretrained, zoo.finetuned[B], keys)
    with pytest.raises(ParameterError, match="select none"):
        L.make_plane(zoo.pretrained, zoo.finetuned[A], zoo.finetuned[B], keys, include="nothing.*")


def test_write_figures_quick(zoo, tmp_path):
    from freqmerge_viz.topics import landscape as topic

    files = topic.write_figures(zoo, tmp_path, quick=True, formats=("png", "svg"))
    names = {f.name for f in files}
    assert {"landscape.png", "landscape.svg", "landscape_loss.html", "landscape_accuracy.html",
            "landscape_curves.png", "landscape_curves.svg", "landscape_curves.html", "landscape_grid.csv",
            "landscape_points.csv", "landscape_curves.csv", "landscape_planes.csv"} <= names
    assert all(f.stat().st_size > 0 for f in files)
    assert 'id="freqmerge-landscape-loss"' in (tmp_path / "landscape_loss.html").read_text(encoding="utf-8")
    grid = pd.read_csv(tmp_path / "landscape_grid.csv")
    assert set(grid["setting"]) == {"unfiltered", L.filter_label(True)} and len(grid) == 2 * 25
    points = pd.read_csv(tmp_path / "landscape_points.csv")
    assert "task_arithmetic" in set(points["method"])


def test_an_evaluator_landscape_names_its_tasks_by_file_or_by_names(zoo, tmp_path):
    images, labels = ZE.zoo_data(zoo, A, "test", 8)
    evaluator = E.Evaluator(ZE.zoo_forward(zoo, A), images, labels, tuple(ZE.zoo_backbone_keys(zoo)), name="zoo")
    files = [zoo.path / "finetuned" / f"{task}.safetensors" for task in (A, B)]
    assert all(f.is_file() for f in files)
    grid = L.landscape(evaluator, *files, pretrained=zoo.pretrained, grid=2)
    assert (grid.attrs["task_a"], grid.attrs["task_b"]) == (A, B)          # file names, not paths
    named = L.landscape(evaluator, *files, pretrained=zoo.pretrained, grid=2, names=("left", "right"))
    assert (named.attrs["task_a"], named.attrs["task_b"]) == ("left", "right")
