"""Progressive accuracy: the cutoff explorer's fast estimate, refined in the background.

Driven headless with a fake clock (each ``advance(0)`` runs the refinement step queued), so
every step is counted and nothing depends on timing.
"""

import math

import numpy as np
import pytest

from freqmerge_viz.plots.landscape import grid_matrix
from freqmerge_viz.study import study_evaluator
from freqmerge_viz.widgets import CutoffExplorer
from freqmerge_viz.widgets.cutoff import ACCURACY, REFERENCES
from freqmerge_viz.widgets.refine import Tally

FIRST = 8
CHUNK = 16
LIMIT = 64


def make(zoo, clock, **options):
    return CutoffExplorer(zoo, eval_per_task=FIRST, refine_chunk=CHUNK, refine_limit=LIMIT, device="cpu",
                          schedule=clock.schedule, **options)


def run_steps(clock, explorer, steps):
    for _ in range(steps):
        if not explorer.refiner.running:
            return
        clock.advance(0.0)


def test_tally_joins_chunks_as_one_mean():
    tally = Tally({"a": 0.5}, {"a": 8})
    tally.add("a", 0.75, 24)
    assert tally.counts == {"a": 32} and tally.accuracy["a"] == pytest.approx((4 + 18) / 32)
    assert tally.inputs() == 32


def test_refined_numbers_equal_an_evaluation_on_the_first_n_images(zoo, clock):
    explorer = make(zoo, clock, target_se=1e-6)
    explorer.set(cutoff=0.3)
    shown = explorer.refine()
    assert shown["refinement"]["state"] == "whole split"
    assert set(shown["eval_counts"].values()) == {LIMIT}
    assert all(set(counts.values()) == {LIMIT} for counts in shown["reference_counts"].values())
    merged = explorer.model._merged_state(explorer.model.resolved("fr", explorer.method_params()))
    for task in explorer.eval_tasks:
        direct = float(study_evaluator(zoo, task, "val", LIMIT, mode="loop")([merged]).accuracy[0])
        assert shown["accuracy"][task] == pytest.approx(direct, abs=1e-12)
        pretrained = float(study_evaluator(zoo, task, "val", LIMIT, mode="loop")([zoo.pretrained]).accuracy[0])
        assert shown["no_merge_accuracy"][task] == pytest.approx(pretrained, abs=1e-12)
    errors = explorer.figure.data[ACCURACY].error_y.array
    assert list(errors) == pytest.approx([s for s in shown["accuracy_se_percent"].values()])


def test_refinement_stops_at_the_target_standard_error(zoo, clock):
    explorer = CutoffExplorer(zoo, eval_per_task=FIRST, refine_chunk=CHUNK, device="cpu", schedule=clock.schedule,
                              target_se=2.0)
    shown = explorer.refine()
    assert shown["refinement"]["state"] == "settled"
    assert shown["mean_accuracy_se_percent"] <= 2.0
    counts = set(shown["eval_counts"].values())
    assert len(counts) == 1 and FIRST < counts.pop() < 500, "tasks grow level, and stop before the whole split"
    # one chunk fewer would not have reached the target (the stop is the first level count that does)
    model = explorer.model
    tallies = {name: tally for name, (tally, _) in model._targets(explorer.values).items()}
    for tally in tallies.values():
        n = next(iter(tally.counts.values()))
        if n > FIRST:
            assert model._settled(tally)


def test_a_control_change_cancels_the_refinement_and_a_setting_keeps_its_refined_numbers(zoo, clock):
    explorer = make(zoo, clock, target_se=1e-6)
    explorer.set(cutoff=0.3)
    run_steps(clock, explorer, 12)
    before = explorer.model._targets(explorer.values)["merged"][0]
    grown = dict(before.counts)
    assert sum(grown.values()) > FIRST * len(grown), "the steps refined the merged numbers"
    steps = explorer.refiner.steps
    queued = [job for job in clock.jobs if not job.cancelled]
    explorer.controls["cutoff"].value = 0.2           # a person moves the slider: drawn at once ...
    assert all(job.cancelled for job in queued), "the old setting's queued step was dropped"
    assert explorer.values["cutoff"] == 0.2 and explorer.refiner.steps == steps
    assert set(explorer.shown()["eval_counts"].values()) == {FIRST}, "... with its fast estimate"
    run_steps(clock, explorer, 200)                    # the new setting refines to its end
    assert explorer.shown()["refinement"]["state"] == "whole split"
    assert before.counts == grown, "the old setting was not refined behind the new one"
    explorer.set(cutoff=0.3)                           # walking back shows the refined numbers at once
    assert explorer.shown()["eval_counts"] == grown


def test_error_bars_shrink_and_the_page_is_redrawn(zoo, clock):
    explorer = make(zoo, clock, target_se=1e-6)
    first = explorer.shown()
    revision = explorer.pane.revision
    explorer.refine()
    final = explorer.shown()
    assert explorer.pane.revision > revision
    assert final["mean_accuracy_se_percent"] < first["mean_accuracy_se_percent"]
    assert math.isclose(first["mean_accuracy_se_percent"] / final["mean_accuracy_se_percent"],
                        math.sqrt(LIMIT / FIRST), rel_tol=0.35)
    assert 'data-state="whole split"' in explorer.summary.value
    assert f"on {LIMIT} val images per task" in explorer.summary.value
    for name in REFERENCES:
        assert f'class="fmv-difference" data-name="{name}"' in explorer.summary.value


def test_without_refinement_and_with_a_callers_evaluator(zoo, clock):
    explorer = make(zoo, clock, refine=False)
    assert explorer.refiner is None and explorer.shown()["refinement"]["state"] == "refining"
    assert set(explorer.refine()["eval_counts"].values()) == {FIRST}
    tasks = ["digits", "signs"]
    finetuned = {t: zoo.finetuned[t] for t in tasks}
    explorer = CutoffExplorer((zoo.pretrained, finetuned, lambda state: {t: (3, 4) for t in tasks}),
                              schedule=clock.schedule)
    assert explorer.refiner is None
    shown = explorer.shown()
    assert shown["refinement"]["state"] == "fixed" and shown["eval_counts"] == {"digits": 4, "signs": 4}
    assert "on the evaluator's data (8 images in all)" in explorer.summary.value


def test_refinement_steps_run_on_a_timer_thread_outside_a_kernel(zoo):
    explorer = CutoffExplorer(zoo, eval_per_task=FIRST, refine_chunk=CHUNK, refine_limit=LIMIT, device="cpu",
                              target_se=1e-6)
    import time
    deadline = time.monotonic() + 60
    while explorer.refiner.running and time.monotonic() < deadline:
        time.sleep(0.05)
    shown = explorer.shown()
    assert shown["refinement"]["state"] == "whole split"
    assert np.all(np.isfinite(list(shown["accuracy_se_percent"].values())))


def test_landscape_refines_grid_and_points_to_a_direct_evaluation(zoo, clock):
    from freqmerge_viz.analysis.landscape import plane_study
    from freqmerge_viz.widgets.landscape import LandscapeViewer

    viewer = LandscapeViewer(zoo, grid=3, limit=FIRST, refine_limit=LIMIT, refine_chunk=CHUNK,
                             methods=("task_arithmetic",), schedule=clock.schedule)
    first = viewer.shown()
    assert first["refinement"]["state"] == "refining" and set(first["samples_per_point"]["grid"]) == {FIRST}
    revision = viewer.pane.revision
    shown = viewer.refine()
    assert shown["refinement"]["state"] == "whole split" and viewer.pane.revision > revision
    assert set(shown["samples_per_point"]["grid"]) == {LIMIT}
    assert set(shown["samples_per_point"]["points"].values()) == {LIMIT}
    study = plane_study(zoo, viewer.values["task_a"], viewer.values["task_b"], split="test", limit=LIMIT)
    direct = study.grid(3)
    _, _, values = grid_matrix(direct, "loss")
    assert np.allclose(shown["values"], values, rtol=1e-5, atol=1e-6)
    points = study.points({}, {"task_arithmetic": viewer.model._merged[(viewer.model._plane_key(viewer.values)[:2],
                                                                        "task_arithmetic")]})
    for row in points.itertuples():
        assert shown["points"][row.method]["accuracy"] == pytest.approx(row.accuracy, abs=1e-12)
        assert shown["points"][row.method]["loss"] == pytest.approx(row.loss, rel=1e-5)
    assert f"every point on {LIMIT} images" in viewer.summary.value
    assert f"({LIMIT} test images per point)" in shown["title"]


def test_landscape_control_change_cancels_and_keeps_refined_grids(zoo, clock):
    from freqmerge_viz.widgets.landscape import LandscapeViewer

    viewer = LandscapeViewer(zoo, grid=3, limit=FIRST, refine_limit=LIMIT, refine_chunk=CHUNK, methods=(),
                             schedule=clock.schedule)
    run_steps(clock, viewer, 4)
    grown = list(viewer.model._grids[(viewer.model._plane_key(viewer.values), 3)]["samples"])
    assert max(grown) > FIRST
    viewer.controls["grid"].value = 4                 # a new grid: drawn at once on the first images
    assert set(viewer.shown()["samples_per_point"]["grid"]) == {FIRST}
    run_steps(clock, viewer, 500)
    assert viewer.shown()["refinement"]["state"] == "whole split"
    assert list(viewer.model._grids[(viewer.model._plane_key(viewer.values), 3)]["samples"]) == grown
    viewer.set(grid=3)
    assert viewer.shown()["samples_per_point"]["grid"] == grown
