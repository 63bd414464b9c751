"""ExpertExplorer and LandscapeViewer without a browser: real numbers against independent evaluations."""

import numpy as np
import pytest

from freqmerge_viz.zoo.evaluation import evaluate_on_zoo
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.routing import OracleRouter, RandomRouter
from freqmerge_viz.widgets import ExpertExplorer, LandscapeViewer
from freqmerge_viz.widgets import experts as experts_module
from freqmerge_viz.widgets.experts import DENSITY_STEPS, METHOD_LABELS
from freqmerge_viz.widgets.landscape import CONTOUR, MERGED_POINTS, REFERENCE_POINTS
from freqmerge_viz.zoo.compare import evaluate_routed

N_EVAL = 8
LIMIT = 24
MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<svg", ".html": b"<html"}


@pytest.fixture(scope="module")
def experts(zoo, clock):
    # refine=False: these tests compare the first estimate with evaluate_routed's RandomRouter draws
    # (N_EVAL routes per task); a refining explorer draws nested routes, tested in test_expert_refinement.py
    return ExpertExplorer(zoo, eval_per_task=N_EVAL, schedule=clock.schedule, refine=False)


@pytest.fixture(scope="module")
def routed_at_1_percent(experts):
    return {m: experts.routed(m, density=0.01) for m in experts.methods}


@pytest.fixture(scope="module")
def viewer(zoo, clock):
    return LandscapeViewer(zoo, grid=5, grid_range=(-1.0, 1.0), limit=LIMIT, methods=("task_arithmetic",),
                           schedule=clock.schedule)


def assert_exports(explorer, tmp_path, div_id):
    for suffix, start in MAGIC.items():
        path = explorer.export(tmp_path / f"view{suffix}")
        assert path == tmp_path / f"view{suffix}" and start in path.read_bytes()[:4096], suffix
    first = (tmp_path / "view.html").read_bytes()
    explorer.export(tmp_path / "again.html")
    assert (tmp_path / "again.html").read_bytes() == first
    assert f'id="{div_id}"'.encode() in first and b'"uid"' not in first
    with pytest.raises(ParameterError):
        explorer.export(tmp_path / "view.jpg")
    numbers = (tmp_path / "view.csv").read_text(encoding="utf-8")
    assert numbers.startswith("quantity,item,value\n")
    assert "eval_counts," in numbers or "plane,samples," in numbers   # the images the numbers rest on


# ----------------------------------------------------------------------------- ExpertExplorer

def test_expert_controls(experts):
    density = experts.controls["density"]
    assert "fraction of entries kept" in density.description and "log" in density.description
    steps = np.array(DENSITY_STEPS)
    assert steps[0] == 0.001 and steps[-1] == 0.5 and 0.01 in steps
    assert np.allclose(np.diff(np.log10(steps[:-1])), 0.1, atol=0.02)
    assert "fmv-density" in density._dom_classes and "fmv-router-accuracy" in experts.controls["router_accuracy"]._dom_classes
    assert "fmv-expert-explorer" in experts.widget._dom_classes and "fmv-summary" in experts.summary._dom_classes
    assert "application/vnd.jupyter.widget-view+json" in experts._repr_mimebundle_()


def test_the_explorers_routed_merges_equal_merges_built_from_the_finetuned_models(experts, zoo):
    # the explorer builds them from the task vectors in memory, and FREE at a new density from its
    # first backbone (with_density): the states must be those of a fresh build (with the explorer's
    # torch threads, which order float sums), entry for entry
    import torch

    from freqmerge_viz.analysis.evaluation import finetuned_subset
    from freqmerge_viz.backend import torch_threads
    from freqmerge_viz.methods import routed_merge

    finetuned = finetuned_subset(zoo, experts.model.tasks)
    for method, density in (("emr", None), ("twin", None), ("free", 0.01), ("free", 0.004)):
        params = dict(experts.model.routed_params[method], **({"density": density} if density else {}))
        with torch_threads(experts.model.threads):
            shown, fresh = (experts.routed(method, density=density),
                            routed_merge(method, zoo.pretrained, finetuned, **params))
        assert shown.storage_bytes_per_task() == fresh.storage_bytes_per_task(), method
        for task in range(len(finetuned)):
            got, want = shown.task_state(task), fresh.task_state(task)
            assert all(torch.equal(got[k], want[k]) for k in want), (method, density, task)


def test_oracle_router_shows_independent_routed_accuracy(experts, zoo, routed_at_1_percent):
    experts.set(density=0.01, router_accuracy=1.0)
    shown = experts.shown()
    assert shown["measured_router_accuracy"] == 1.0
    for method in experts.methods:
        label = METHOD_LABELS[method]
        accuracy, right = evaluate_routed(zoo, routed_at_1_percent[method], OracleRouter(), split="val", limit=N_EVAL)
        assert right == 1.0
        assert shown["routed_accuracy"][label] == accuracy, label
        assert shown["routed_mean_accuracy"][label] == pytest.approx(np.mean(list(accuracy.values())))


def test_router_that_never_picks_the_true_task(experts, zoo, routed_at_1_percent):
    experts.set(density=0.01, router_accuracy=0.0)
    shown = experts.shown()
    assert shown["measured_router_accuracy"] == 0.0
    for method in experts.methods:
        label = METHOD_LABELS[method]
        router = RandomRouter(len(zoo.tasks), 0.0, seed=experts.seed)
        accuracy, right = evaluate_routed(zoo, routed_at_1_percent[method], router, split="val", limit=N_EVAL)
        assert right == 0.0
        assert shown["routed_accuracy"][label] == accuracy, label
    experts.set(router_accuracy=1.0)
    assert experts.shown()["routed_mean_accuracy"]["EMR"] > shown["routed_mean_accuracy"]["EMR"]


def test_full_density_topk_expert_is_the_finetuned_model(experts, zoo):
    experts.set(density=1.0)
    shown = experts.shown()
    assert experts.controls["density"].value == 1.0
    for task in zoo.tasks:
        finetuned = zoo.evaluate(zoo.finetuned[task], task, split="val", limit=N_EVAL)[task]
        assert shown["expert_accuracy"]["topk"][task] == finetuned, task
        assert shown["finetuned_accuracy"][task] == finetuned
    assert shown["storage_percent"]["top-k"] > 100.0
    experts.set(density=0.01)
    small = experts.shown()
    assert small["storage_percent"]["top-k"] < 5.0
    assert small["expert_parameters"]["top-k"] < shown["expert_parameters"]["top-k"] / 50


def test_router_accuracy_only_resamples_routes(experts, monkeypatch):
    experts.set(density=0.02, router_accuracy=0.5)
    figure, traces = experts.figure, list(experts.figure.data)
    before = experts.shown()
    marker = traces[experts._trace["at_p"]]
    calls = []
    monkeypatch.setattr(experts_module, "correctness", lambda *a, **k: calls.append(1))
    experts.set(router_accuracy=0.8)
    after = experts.shown()
    assert calls == [] and after["expert_accuracy"] == before["expert_accuracy"]
    assert after["routed_mean_accuracy"] != before["routed_mean_accuracy"]
    assert list(marker.x) == [0.8] * len(experts.methods)
    assert experts.figure is figure and all(a is b for a, b in zip(experts.figure.data, traces))
    assert f'data-value="{0.8:.6f}"' in experts.summary.value
    monkeypatch.undo()
    experts.set(density=0.1)
    changed = experts.shown()
    assert changed["expert_accuracy"] != after["expert_accuracy"]
    assert list(traces[experts._trace[("expert", "topk")]].y) == [100 * a for a in changed["expert_accuracy"]["topk"].values()]
    assert experts.figure is figure and all(a is b for a, b in zip(experts.figure.data, traces))


def test_expert_errors_are_shown(experts, clock):
    experts.set(density=0.01, router_accuracy=0.9)
    before = experts.shown()
    with pytest.raises(ParameterError, match="probability"):
        experts.set(router_accuracy=1.5)
    assert isinstance(experts.last_error, ParameterError)
    assert "fmv-status-error" in experts.status.value and experts.shown() == before
    assert experts.controls["router_accuracy"].value == 0.9
    with pytest.raises(ParameterError, match="density"):
        experts.set(density=0.0)
    assert experts.shown() == before
    for value in (0.3, 0.4, 0.5):
        experts.controls["router_accuracy"].value = value
        clock.advance(0.05)
    updates = experts.updates
    clock.advance(1.0)
    assert experts.updates == updates + 1 and experts.values["router_accuracy"] == 0.5
    assert experts.last_error is None and "fmv-status-ok" in experts.status.value


def test_expert_exports(experts, tmp_path):
    assert_exports(experts, tmp_path, "freqmerge-expert-explorer")


# ----------------------------------------------------------------------------- LandscapeViewer

def test_landscape_corners_are_pretrained_and_finetuned_a(viewer, zoo):
    viewer.set(filtered=False, metric="loss")
    task = viewer.values["task_a"]
    losses = evaluate_on_zoo(zoo, [zoo.pretrained, zoo.finetuned[task]], task, split="test", limit=LIMIT)["loss"]
    assert viewer.value_at(0.0, 0.0) == pytest.approx(losses[0], rel=1e-5)
    assert viewer.value_at(1.0, 0.0) == pytest.approx(losses[1], rel=1e-4)
    assert viewer.value_at(1.0, 0.0) < viewer.value_at(0.0, 0.0)
    points = viewer.shown()["points"]
    assert points["pretrained"]["loss"] == pytest.approx(losses[0], rel=1e-5)
    assert points["finetuned_a"]["alpha"] == pytest.approx(1.0) and abs(points["finetuned_a"]["beta"]) < 1e-6
    viewer.set(metric="accuracy")
    assert viewer.value_at(0.0, 0.0) == zoo.evaluate(zoo.pretrained, task, limit=LIMIT)[task]
    assert viewer.value_at(1.0, 0.0) == zoo.evaluate(zoo.finetuned[task], task, limit=LIMIT)[task]
    viewer.set(metric="loss")


def test_landscape_filtered_toggle_and_in_place_updates(viewer):
    viewer.set(filtered=False, metric="loss", grid=5)
    figure, traces = viewer.figure, list(viewer.figure.data)
    unfiltered = viewer.shown()
    viewer.set(filtered=True)
    filtered = viewer.shown()
    assert viewer.figure is figure and all(a is b for a, b in zip(viewer.figure.data, traces))
    assert not np.allclose(filtered["values"], unfiltered["values"])
    assert np.array_equal(np.asarray(traces[CONTOUR].z, dtype=float), np.log10(filtered["values"]))  # log colour scale
    assert filtered["plane"]["norm_a"] < unfiltered["plane"]["norm_a"]
    assert "FR filter" in filtered["title"]
    assert viewer.value_at(0.0, 0.0) == pytest.approx(unfiltered["values"][2][2])
    viewer.set(methods=("task_arithmetic", "fr"))
    assert set(viewer.shown()["points"]) == {"pretrained", "finetuned_a", "finetuned_b", "task_arithmetic", "fr"}
    assert list(traces[MERGED_POINTS].text) == ["task_arithmetic", "fr"]
    assert list(traces[REFERENCE_POINTS].text) == ["θ_pre", "A", "B"]
    viewer.set(filtered=False, methods=("task_arithmetic",))
    assert viewer.shown()["values"] == unfiltered["values"]


def test_landscape_grid_change_shows_computing(viewer):
    seen = []
    viewer.status.observe(lambda change: seen.append(change["new"]), names="value")
    viewer.set(grid=3)
    assert any("computing 3 × 3 grid" in s and "fmv-status-busy" in s for s in seen)
    assert "fmv-status-ok" in viewer.status.value
    assert len(viewer.shown()["alphas"]) == 3 and np.asarray(viewer.shown()["values"]).shape == (3, 3)
    seen.clear()
    viewer.set(grid=5)
    assert not any("computing" in s for s in seen)


def test_landscape_errors_are_shown(viewer, clock):
    viewer.set(task_b="textures", grid=5)
    before = viewer.shown()
    with pytest.raises(ParameterError, match="must differ"):
        viewer.set(task_b=viewer.values["task_a"])
    assert isinstance(viewer.last_error, ParameterError) and "fmv-status-error" in viewer.status.value
    assert viewer.shown() == before and viewer.controls["task_b"].value == "textures"
    with pytest.raises(ParameterError, match="unknown merged-point"):
        viewer.set(methods=("nope",))
    viewer.controls["task_b"].value = viewer.values["task_a"]
    clock.advance(1.0)
    assert isinstance(viewer.last_error, ParameterError) and viewer.controls["task_b"].value == "textures"
    with pytest.raises(ParameterError, match="grid"):
        viewer.set(grid=1)
    viewer.set(metric="accuracy")
    assert viewer.last_error is None and "fmv-landscape-viewer" in viewer.widget._dom_classes


def test_landscape_disk_cache(zoo, tmp_path):
    first = LandscapeViewer(zoo, grid=3, limit=8, methods=(), cache_dir=tmp_path, refine=False)
    second = LandscapeViewer(zoo, grid=3, limit=8, methods=(), cache_dir=tmp_path, refine=False)
    assert not first._view.grid.attrs["cache_hit"] and second._view.grid.attrs["cache_hit"]
    assert second.shown()["values"] == first.shown()["values"]


def test_landscape_exports(viewer, tmp_path):
    assert_exports(viewer, tmp_path, "freqmerge-landscape-viewer")
