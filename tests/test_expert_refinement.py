"""Progressive accuracy in the expert explorer: the fast estimate at a density, refined in the background.

Driven headless with a fake clock (each ``advance(0)`` runs the refinement step queued), so every
step is counted and nothing depends on timing. Four tasks, one expert kind and two routed merges
keep each explorer small; the split is cut at ``LIMIT`` images per task where a test runs to its end.
"""

import time

import numpy as np
import pytest
import torch

from freqmerge_viz.analysis.evaluation import (evaluate_per_task, finetuned_subset, individual_accuracies, materialize,
                                               study_task_vectors)
from freqmerge_viz.analysis.experts_curves import build_experts, expert_state
from freqmerge_viz.analysis.router_robustness import (correctness, draw_routes, robustness_table, routed_outcomes,
                                                       state_outcomes)
from freqmerge_viz.methods import routed_merge
from freqmerge_viz.routing import RandomRouter
from freqmerge_viz.widgets import ExpertExplorer
from freqmerge_viz.widgets import experts as experts_module

FIRST = 8
CHUNK = 16
LIMIT = 40
TASKS = ("digits", "textures", "signs", "scenes")
SMALL = dict(tasks=TASKS, kinds=("topk",), methods=("free", "emr"), eval_per_task=FIRST, refine_chunk=CHUNK)


def make(zoo, clock, **options):
    return ExpertExplorer(zoo, schedule=clock.schedule, **{**SMALL, **options})


def run_steps(clock, explorer, steps):
    for _ in range(steps):
        if not explorer.refiner.running:
            return
        clock.advance(0.0)


def routed_direct(zoo, explorer, method, n, ps, draw):
    """Routed accuracies per p and task, straight from correctness on the first n images."""
    outcomes = correctness(zoo, explorer.routed(method), list(TASKS), split="val", limit=n)
    table = robustness_table({"m": outcomes}, list(TASKS), ps, explorer.seed, draw=draw)
    return {p: dict(zip(rows["task"], rows["accuracy"])) for p, rows in table.groupby("p")}


# ----------------------------------------------------------------------------- nested routes

def test_routes_drawn_for_a_fixed_count_nest_and_the_default_is_unchanged():
    k, seed = 5, 3
    for p in (0.0, 0.37, 1.0):
        full = draw_routes(k, p, seed, 50, draw=50)
        for n in (1, 10, 33):
            assert all(torch.equal(a, b[:n]) for a, b in zip(draw_routes(k, p, seed, n, draw=50), full))
        router = RandomRouter(k, p, seed)   # the routes robustness_table always drew: n inputs per task, in order
        old = [router.route(None, torch.full((10,), t, dtype=torch.long)) for t in range(k)]
        assert all(torch.equal(a, b) for a, b in zip(draw_routes(k, p, seed, 10), old))
    with pytest.raises(Exception, match="cannot route"):
        draw_routes(k, 0.5, seed, 20, draw=10)
    generator = torch.Generator().manual_seed(0)
    correct = torch.rand(k, k, 50, generator=generator) < 0.6
    tasks = [f"t{i}" for i in range(k)]
    for n in (12, 50):
        table = robustness_table({"m": correct[..., :n]}, tasks, [0.4], seed, draw=50)
        routes = draw_routes(k, 0.4, seed, 50, draw=50)
        for t, task in enumerate(tasks):
            expected = routed_outcomes(correct[..., :n], routes[t][:n], t).double().mean()
            assert float(table.set_index("task").loc[task, "accuracy"]) == pytest.approx(float(expected))
    old_table = robustness_table({"m": correct}, tasks, [0.4], seed)
    assert old_table.equals(robustness_table({"m": correct}, tasks, [0.4], seed, draw=None))


def test_outcomes_from_an_offset_are_the_same_images_outcomes(zoo):
    tasks = list(TASKS)
    emr = routed_merge("emr", zoo.pretrained, finetuned_subset(zoo, tasks))
    whole = correctness(zoo, emr, tasks, split="val", limit=24)
    assert torch.equal(correctness(zoo, emr, tasks, split="val", limit=24, start=10), whole[..., 10:])
    state = materialize(emr.task_state(2))
    assert torch.equal(state_outcomes(zoo, state, tasks[1], split="val", start=5, stop=24), whole[2, 1, 5:])


# ----------------------------------------------------------------------------- refinement

def test_refined_numbers_equal_an_evaluation_on_the_first_n_images(zoo, clock):
    explorer = make(zoo, clock, target_se=1e-6, refine_limit=LIMIT)
    explorer.set(density=0.02, router_accuracy=0.6)
    # part way: the routed numbers on the first n images are those of a direct run on them (routes nest)
    while explorer.shown()["routed_counts"]["FREE"]["digits"] == FIRST:
        clock.advance(0.0)
    shown = explorer.shown()
    n = shown["routed_counts"]["FREE"]["digits"]
    assert FIRST < n < LIMIT
    direct = routed_direct(zoo, explorer, "free", n, [0.6], LIMIT)[0.6]
    assert shown["routed_accuracy"]["FREE"] == pytest.approx(direct, abs=1e-12)
    # to the end of the (cut) split
    shown = explorer.refine()
    assert shown["refinement"]["state"] == "whole split"
    assert set(shown["eval_counts"].values()) == {LIMIT}
    for method, label in (("free", "FREE"), ("emr", "EMR")):
        direct = routed_direct(zoo, explorer, method, LIMIT, list(explorer.ps) + [0.6], LIMIT)
        assert shown["routed_accuracy"][label] == pytest.approx(direct[0.6], abs=1e-12), label
        curve = [np.mean([direct[q][t] for t in TASKS]) for q in explorer.ps]
        assert shown["routed_curve"][label] == pytest.approx(curve, abs=1e-12), label
    pretrained = materialize(zoo.pretrained)
    experts = build_experts(study_task_vectors(zoo, list(TASKS)), "topk", 0.02, explorer.seed)
    states = {t: [expert_state(pretrained, e)] for t, e in zip(TASKS, experts)}
    measured = evaluate_per_task(zoo, states, split="val", limit=LIMIT).set_index("task")["accuracy"]
    assert shown["expert_accuracy"]["topk"] == pytest.approx(measured.to_dict(), abs=1e-12)
    assert shown["finetuned_accuracy"] == pytest.approx(
        individual_accuracies(zoo, list(TASKS), split="val", limit=LIMIT), abs=1e-12)
    measured = evaluate_per_task(zoo, {t: [pretrained] for t in TASKS}, split="val", limit=LIMIT)
    assert shown["pretrained_accuracy"] == pytest.approx(measured.set_index("task")["accuracy"].to_dict(), abs=1e-12)
    bars = explorer.figure.data[explorer._trace[("expert", "topk")]].error_y.array
    assert max(bars) < 100 * 0.5 / np.sqrt(LIMIT) + 1e-9, "error bars rest on the refined counts"


def test_refinement_stops_at_the_target_standard_error(zoo, clock):
    target = 3.0
    explorer = make(zoo, clock, target_se=target)
    shown = explorer.refine()
    assert shown["refinement"]["state"] == "settled"
    assert shown["refinement"]["largest_se_percent"] <= target
    for group in ("routed_mean_se_percent", "expert_mean_se_percent", "reference_mean_se_percent"):
        assert max(shown[group].values()) <= target, group
    for label in ("FREE", "EMR"):
        counts = set(shown["routed_counts"][label].values())
        assert len(counts) == 1 and FIRST < counts.pop() < 500, "tasks grow level, and stop before the split's end"
    errors = [explorer._curve_errors(explorer._view, label) for label in ("FREE", "EMR")]
    assert max(max(e) for e in errors) <= target, "the whole p grid is refined, not only the p shown"
    # the stop is the first level that meets the target: one chunk fewer did not
    for method, label in (("free", "FREE"), ("emr", "EMR")):
        n = shown["routed_counts"][label]["digits"]
        direct = routed_direct(zoo, explorer, method, n - CHUNK, sorted(set(explorer.ps) | {1.0}), 500)
        fewer = max(explorer.model.mean_with_error(acc, n - CHUNK)[1] for acc in direct.values())
        assert fewer > target, label


def test_a_control_change_cancels_the_refinement_and_a_density_keeps_its_refined_numbers(zoo, clock):
    explorer = make(zoo, clock, target_se=1e-6, refine_limit=LIMIT)
    run_steps(clock, explorer, 40)
    old = explorer.model._at_density(0.01)
    grown = {k: dict(t.counts) for k, t in old.experts.items()}
    free_filled = old.free.filled.copy()
    assert free_filled.sum() > FIRST * free_filled.size or sum(grown["topk"].values()) > FIRST * len(TASKS)
    steps = explorer.refiner.steps
    queued = [job for job in clock.jobs if not job.cancelled]
    explorer.controls["density"].value = 0.02        # a person moves the slider: drawn at once ...
    assert all(job.cancelled for job in queued), "the old setting's queued step was dropped"
    assert explorer.values["density"] == 0.02 and explorer.refiner.steps == steps
    shown = explorer.shown()
    assert set(shown["expert_counts"]["topk"].values()) == {FIRST}, "... with its fast estimate"
    assert set(shown["routed_counts"]["FREE"].values()) == {FIRST}
    run_steps(clock, explorer, 2000)                  # the new density refines to its end
    assert explorer.shown()["refinement"]["state"] == "whole split"
    assert {k: dict(t.counts) for k, t in old.experts.items()} == grown, "the old density was not refined behind"
    assert np.array_equal(old.free.filled, free_filled)
    settled = explorer.shown()
    explorer.set(density=0.01)                        # walking back shows the numbers it had
    assert explorer.shown()["expert_counts"] == grown
    run_steps(clock, explorer, 2000)
    refined = explorer.shown()
    steps = explorer.model.cache_stats["refinement_steps"]
    explorer.set(density=0.02)                        # a refined density comes back whole, with no work
    assert explorer.shown() == settled
    run_steps(clock, explorer, 10)
    assert explorer.model.cache_stats["refinement_steps"] == steps and not explorer.refiner.running
    explorer.set(density=0.01)
    assert explorer.shown() == refined


def test_a_router_accuracy_change_after_refinement_uses_the_refined_outcomes(zoo, clock, monkeypatch):
    explorer = make(zoo, clock, target_se=1e-6, refine_limit=LIMIT)
    explorer.refine()
    direct = routed_direct(zoo, explorer, "free", LIMIT, [0.3], LIMIT)[0.3]

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a p change must not evaluate anything")

    for name in ("correctness", "state_outcomes", "evaluate_per_task"):
        monkeypatch.setattr(experts_module, name, no_evaluation)
    monkeypatch.setattr(experts_module.ExpertKinds, "build", no_evaluation)
    steps = explorer.model.cache_stats["refinement_steps"]
    start = time.perf_counter()
    explorer.set(router_accuracy=0.3)
    elapsed = time.perf_counter() - start
    shown = explorer.shown()
    assert set(shown["routed_counts"]["FREE"].values()) == {LIMIT}
    assert shown["routed_accuracy"]["FREE"] == pytest.approx(direct, abs=1e-12)
    run_steps(clock, explorer, 10)
    assert explorer.model.cache_stats["refinement_steps"] == steps, "refined outcomes serve every p"
    assert shown["refinement"]["state"] == "whole split"
    assert elapsed < 5.0, f"a p change took {elapsed:.1f} s"


def test_the_summary_says_what_the_numbers_rest_on_and_what_is_resolved(zoo, clock):
    explorer = make(zoo, clock, target_se=1e-6, refine_limit=LIMIT)
    first = explorer.summary.value
    assert 'class="fmv-refinement" data-state="refining"' in first and f'data-fewest="{FIRST}"' in first
    assert f'data-total="{FIRST * len(TASKS)}"' in first and f"on {FIRST} val images per task" in first
    revision = explorer.pane.revision
    shown = explorer.refine()
    summary = explorer.summary.value
    assert explorer.pane.revision > revision
    assert 'data-state="whole split"' in summary and f'data-total="{LIMIT * len(TASKS)}"' in summary
    assert f'data-se="{shown["refinement"]["largest_se_percent"]:.6f}"' in summary
    for number in ("FREE", "EMR", "topk"):
        for reference in ("task_arithmetic", "pretrained", "finetuned"):
            difference = shown["differences"][number][reference]
            assert (f'class="fmv-difference" data-of="{number}" data-name="{reference}" '
                    f'data-value="{difference["points"]:.4f}" data-resolved="{str(difference["resolved"]).lower()}"'
                    ) in summary
            assert difference["resolved"] == (abs(difference["points"]) > 2 * difference["se_points"])
    assert shown["differences"]["EMR"]["pretrained"]["resolved"], "EMR beats the bare backbone by far"


def test_without_refinement_the_first_estimate_and_the_old_routes(zoo, clock):
    explorer = make(zoo, clock, refine=False)
    explorer.set(router_accuracy=0.4)
    assert explorer.refiner is None
    shown = explorer.refine()
    assert shown["refinement"]["state"] == "fixed" and set(shown["eval_counts"].values()) == {FIRST}
    assert 'data-state="fixed"' in explorer.summary.value
    direct = routed_direct(zoo, explorer, "emr", FIRST, [0.4], None)[0.4]
    assert shown["routed_accuracy"]["EMR"] == pytest.approx(direct, abs=1e-12)


def test_refinement_steps_run_on_a_timer_thread_outside_a_kernel(zoo):
    explorer = ExpertExplorer(zoo, target_se=1e-6, refine_limit=FIRST + CHUNK, **SMALL)
    deadline = time.monotonic() + 120
    while explorer.refiner.running and time.monotonic() < deadline:
        time.sleep(0.05)
    shown = explorer.shown()
    assert shown["refinement"]["state"] == "whole split"
    assert set(shown["eval_counts"].values()) == {FIRST + CHUNK}
