"""The methods benchmark's floors for TIES and TSV-M give the registered methods' merged states
(exactly where the rules are discrete), and the benchmark reports them, also from files."""

from __future__ import annotations

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.benchmarks import methods as methods_bench
from freqmerge_viz.benchmarks.filter import _relative_difference, floor_ties, floor_tsv, synthetic_states
from freqmerge_viz.taskvector import TaskVector

SHAPES = {"a.attn.in_proj_weight": (36, 12), "a.mlp.c_proj.weight": (12, 48), "b.attn.out_proj.weight": (10, 10)}


def _states(k, integers=False, seed=0):
    pretrained, vectors = synthetic_states(SHAPES, k, seed)
    if integers:  # entries in {-2e-3, …, 2e-3}: many ties at every magnitude threshold and zero votes
        g = torch.Generator().manual_seed(seed)
        vectors = [{key: 1e-3 * torch.randint(-2, 3, shape, generator=g).float() for key, shape in SHAPES.items()}
                   for _ in range(k)]
    return pretrained, vectors


def _merge(name, pretrained, vectors, **params):
    tasks = [TaskVector.from_tensors(vector, name=f"task{i}") for i, vector in enumerate(vectors)]
    return fmv.merge(name, pretrained, tasks, **params)


@pytest.mark.parametrize("integers", [False, True])
@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize("params", [{}, {"density": 0.5, "scaling": 0.7}, {"density": 0.01}])
def test_ties_floor_is_the_registered_merge_exactly(k, integers, params):
    pretrained, vectors = _states(k, integers)
    merged = _merge("ties", pretrained, vectors, **params)
    floor = floor_ties(pretrained, vectors, **params)
    for key in SHAPES:
        assert torch.equal(merged[key], floor[key]), key


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_tsv_floor_is_the_registered_merge(k):
    # r = 10 with K = 3 keeps 3 directions each, 9 < r: the method pads Û to r columns, the floor does not
    pretrained, vectors = _states(k, seed=k)
    merged = _merge("tsv", pretrained, vectors)
    floor = floor_tsv(pretrained, vectors)
    assert _relative_difference(merged, floor, pretrained, list(SHAPES)) < 1e-5
    padded = {key for key, shape in SHAPES.items() if k * int(min(shape) / k) < min(shape)}
    for key in set(SHAPES) - padded:
        assert torch.equal(merged[key], floor[key]), key
    scaled = _merge("tsv", pretrained, vectors, scaling=0.4)
    assert _relative_difference(scaled, floor_tsv(pretrained, vectors, scaling=0.4), pretrained, list(SHAPES)) < 1e-5


def test_methods_benchmark_reports_the_ties_and_tsv_floors_in_memory_and_from_files():
    result = methods_bench.run(quick=True, k=3, repeats=1, device="cpu", methods=["ties", "tsv"], files=True)
    rows = result["methods"]
    for name in ("task_arithmetic", "ties", "tsv"):
        row = rows[name]
        assert row["floor"] and row["floor_seconds"] > 0 and row["x_floor"] > 0, name
        assert row["floor_max_relative_difference"] < 1e-5, name
        assert row["files_seconds"] > 0 and row["files_floor_seconds"] > 0 and row["files_x_floor"] > 0, name
    assert rows["ties"]["floor_identical"] and rows["ties"]["floor_max_relative_difference"] == 0.0
    assert rows["task_arithmetic"]["files_over_task_arithmetic"] == 1.0
    assert "ties" not in methods_bench.NO_FLOOR and "tsv" not in methods_bench.NO_FLOOR
    assert len(result["load_average_at_start"]) == 3 and len(result["load_average"]) == 3
