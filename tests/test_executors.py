"""Landscape grids and cutoff sweeps through other executors: a process pool (fresh ``spawn``
processes, so every task really pickles) and a dask ``LocalCluster``; each table equals the
serial one exactly."""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.sweeps import cutoff_sweep
from freqmerge_viz.errors import ParameterError

L = importlib.import_module("freqmerge_viz.analysis.landscape")

A, B = "landcover", "textures"
LIMIT = 16
GRID = ([0.0, 0.5, 1.0], [0.0, 1.0, 1.5])
SWEEP = {"kinds": ("ideal",), "cutoffs": (0.0, 0.25), "limit": LIMIT, "params": {"coefficients": "none"},
         "scalings": (0.1,)}


class CountingExecutor:
    """Runs ``map`` serially and records how many tasks it was given."""

    def __init__(self):
        self.tasks = 0

    def map(self, fn, iterable):
        items = list(iterable)
        self.tasks += len(items)
        return map(fn, items)


@pytest.fixture(scope="module")
def pool():
    # one torch thread in the workers, as in the serial run (one_thread): with the zoo's 128-wide matrices
    # torch splits reductions over threads, and a different split changes the last bits of a sum
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as executor:
        yield executor


@pytest.fixture(scope="module")
def serial_grid(shipped_zoo):
    return L.landscape(shipped_zoo, A, B, grid=GRID, limit=LIMIT)


@pytest.fixture(scope="module")
def serial_sweep(shipped_zoo):
    return cutoff_sweep(shipped_zoo, tasks=(A, B), **SWEEP)


def test_grid_blocks_are_rows_and_pickle(shipped_zoo, serial_grid):
    counting = CountingExecutor()
    frame = L.landscape(shipped_zoo, A, B, grid=GRID, limit=LIMIT, executor=counting, rows_per_block=2)
    assert counting.tasks == 2 and frame.attrs["blocks"] == 2 and serial_grid.attrs["blocks"] == 1
    pd.testing.assert_frame_equal(frame, serial_grid, check_exact=True)
    study = L.plane_study(shipped_zoo, A, B, limit=LIMIT)
    block = study.blocks(np.array([[0.5, 1.0], [1.0, 1.0]]), 5)[0]
    assert block.evaluator.forward is None and block.zoo_recipe == (str(shipped_zoo.path), A, "finetuned")
    copy = pickle.loads(pickle.dumps(block))
    arrays = L.evaluate_block(copy)
    assert arrays["loss"].tolist() == serial_grid["loss"].iloc[4:6].tolist()
    with pytest.raises(ParameterError, match="rows_per_block"):
        L.landscape(shipped_zoo, A, B, grid=GRID, limit=LIMIT, executor=counting, rows_per_block=0)


def test_grid_in_a_process_pool_equals_the_serial_grid(shipped_zoo, serial_grid, pool):
    frame = L.landscape(shipped_zoo, A, B, grid=GRID, limit=LIMIT, executor=pool)
    assert frame.attrs["blocks"] == 3
    pd.testing.assert_frame_equal(frame, serial_grid, check_exact=True)


def test_a_users_evaluator_runs_in_a_thread_pool(shipped_zoo, serial_grid):
    study = L.plane_study(shipped_zoo, A, B, limit=LIMIT)
    own = L.plane_study(study.evaluator, shipped_zoo.finetuned[A], shipped_zoo.finetuned[B],
                        pretrained=shipped_zoo.pretrained)
    assert own.zoo_recipe is None
    with ThreadPoolExecutor(max_workers=2) as threads:
        frame = own.grid(GRID, executor=threads)
    assert frame.attrs["blocks"] == 3
    pd.testing.assert_frame_equal(frame, serial_grid, check_exact=True)


def test_sweep_in_a_process_pool_equals_the_serial_sweep(shipped_zoo, serial_sweep, pool):
    parallel = cutoff_sweep(str(shipped_zoo.path), tasks=(A, B), executor=pool, **SWEEP)
    pd.testing.assert_frame_equal(parallel, serial_sweep, check_exact=True)


def test_dask_local_cluster_runs_a_sweep_and_a_grid(shipped_zoo, serial_sweep, serial_grid):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        executor = client.get_executor()
        with distributed.get_task_stream(client) as stream:
            sweep = cutoff_sweep(str(shipped_zoo.path), tasks=(A, B), executor=executor, **SWEEP)
            grid = L.landscape(shipped_zoo, A, B, grid=GRID, limit=LIMIT, executor=executor)
    pd.testing.assert_frame_equal(sweep, serial_sweep, check_exact=True)
    pd.testing.assert_frame_equal(grid, serial_grid, check_exact=True)
    assert len(stream.data) == len(SWEEP["cutoffs"]) + len(GRID[1]) == 5


def test_a_study_file_sweeps_and_grids_in_a_process_pool(pool, tmp_path):
    """A study of the user's (here a python study file) given as its path: each worker reopens it
    and the tables equal the serial ones."""
    from pathlib import Path

    from freqmerge_viz.study import load_study

    support = Path(__file__).parent / "study_support.py"
    path = tmp_path / "study.yaml"
    path.write_text(f"kind: python\nfunction: {support}:tiny_study\nargs: {{tasks: 2, per_split: 16}}\n")
    study = load_study(path)
    sweep = {**SWEEP, "limit": 8}
    serial = cutoff_sweep(study, tasks=tuple(study.tasks), **sweep)
    pooled = cutoff_sweep(str(path), tasks=tuple(study.tasks), executor=pool, **sweep)
    pd.testing.assert_frame_equal(serial, pooled)
    grid = ([0.0, 1.0], [0.0, 0.5])
    serial_grid = L.landscape(study, "task0", "task1", grid=grid, limit=8)
    pooled_grid = L.landscape(study, "task0", "task1", grid=grid, limit=8, executor=pool, rows_per_block=1)
    pd.testing.assert_frame_equal(serial_grid, pooled_grid)
