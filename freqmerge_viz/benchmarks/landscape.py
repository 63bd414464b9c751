"""``landscape``: a loss-landscape grid on the demo zoo, batched engine against a plain loop.

The grid is the plane of ``τ_landcover`` and ``τ_textures`` (the Fig. 4 defaults of
:mod:`freqmerge_viz.analysis.landscape`), ``grid × grid`` points, each scored on the first
``limit`` test images of landcover. Two ways, alternated per repeat so that both see the
same machine load, each the best of ``repeats``:

``batched_s``
    :meth:`~freqmerge_viz.analysis.landscape.PlaneStudy.grid` without a cache: the points
    built as one :class:`~freqmerge_viz.engine.StackedStates` and evaluated by the engine
    with its defaults (``mode="auto"``, i.e. vmap over chunks of points, the chunk from the
    memory budget; on CPU the chunks spread over torch's thread count of single-threaded
    workers, see :mod:`freqmerge_viz.engine`).
``loop_s``
    the plain loop the issue names: for each point, build its state dict
    (``θ_pre + α·τ_A + β·τ_B⊥`` key by key) and call ``zoo.evaluate(state, task, split,
    limit=limit)`` (the zoo's own evaluation: one model at a time, batches of 500 images,
    the module forward).
``floor_s``
    the least computation that gives the same accuracies: for each point, its parameters by plain
    arithmetic (``θ_pre + α·τ_A + β·τ_B⊥`` on the plane's keys) and one call of the zoo's
    functional forward (:meth:`~freqmerge_viz.zoo.Zoo.functional_forward`: the backbone and the
    task's head) on all ``limit`` images at once under ``torch.no_grad``, then ``argmax``; no
    engine, no workers, no chunking. ``x_floor`` is ``batched_s / floor_s`` (and
    ``loop_x_floor`` the plain loop's); ``floor_max_accuracy_difference`` checks its accuracies.
``engine_vmap_s``, ``engine_loop_s`` (``--modes``)
    the engine forced to ``mode="vmap"`` and ``mode="loop"`` on the same stacked points
    (same workers): separates what vmap brings from what the engine's forward, workers and
    data handling bring. On CPU, ``"auto"`` runs the loop path when the memory budget leaves
    one point per chunk (256 images per point do), since vmap over one set is slower.

``max_accuracy_difference`` checks that both ways give the same accuracies. On a CPU
shared with other processes the torch thread count matters more than anything measured
here (``--threads``); the JSON records it, the load average before and after, and the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ..errors import ParameterError

DEFAULTS = {"grid": 21, "limit": 256, "repeats": 3}
QUICK = {"grid": 5, "limit": 32, "repeats": 1}


def _device_label(device) -> str:
    target = torch.device(device)
    if target.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(target)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine() or 'unknown'})"


def run(quick: bool = False, grid: int | None = None, limit: int | None = None, repeats: int | None = None,
        task_a: str = "landcover", task_b: str = "textures", eval_task: str | None = None, split: str = "test",
        threads: int | None = None, modes: bool = False, chunk: int | None = None,
        memory_budget: int | None = None, zoo=None) -> dict:
    """Time the batched engine and the plain loop on one grid; see the module docstring.

    `threads` sets ``torch.set_num_threads`` for the run (restored afterwards); the engine
    runs on CPU, as ``zoo.evaluate`` does.
    """
    from ..analysis.landscape import grid_axes, plane_study
    from ..zoo import load

    chosen = {**(QUICK if quick else DEFAULTS)}
    chosen.update({k: v for k, v in {"grid": grid, "limit": limit, "repeats": repeats}.items() if v is not None})
    for name, value in chosen.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        zoo = zoo or load()
        load_before = list(os.getloadavg())
        study = plane_study(zoo, task_a, task_b, eval_task=eval_task, split=split, limit=chosen["limit"],
                            device="cpu", chunk=chunk, memory_budget=memory_budget)
        evaluated = study.info["eval_task"]
        plane = study.plane
        alphas, betas = grid_axes(chosen["grid"], plane)
        coordinates = [(a, b) for b in betas for a in alphas]

        def plain_loop() -> np.ndarray:
            accuracies = []
            for alpha, beta in coordinates:
                state = dict(plane.origin)
                for key in plane.keys:
                    state[key] = plane.origin[key] + alpha * plane.tau_a[key] + beta * plane.tau_b_perp[key]
                accuracies.append(zoo.evaluate(state, evaluated, split, limit=chosen["limit"])[evaluated])
            return np.asarray(accuracies)

        forward = zoo.functional_forward(evaluated)
        images, labels = zoo.data(evaluated, split)
        images, labels = images[:chosen["limit"]], labels[:chosen["limit"]]

        def floor() -> np.ndarray:
            accuracies = []
            with torch.no_grad():
                for alpha, beta in coordinates:
                    params = dict(plane.origin)
                    for key in plane.keys:
                        params[key] = plane.origin[key] + alpha * plane.tau_a[key] + beta * plane.tau_b_perp[key]
                    accuracies.append(float((forward(params, images).argmax(1) == labels).float().mean()))
            return np.asarray(accuracies)

        attrs = {}

        def batched() -> np.ndarray:
            frame = study.grid((alphas, betas))
            attrs.update(frame.attrs)
            return frame["accuracy"].to_numpy()

        def forced(mode: str):
            evaluator = replace(study.evaluator, mode=mode)
            return lambda: evaluator(plane.states(np.asarray(coordinates))).accuracy

        runs = {"batched": batched, "loop": plain_loop, "floor": floor}
        if modes:
            runs.update(engine_vmap=forced("vmap"), engine_loop=forced("loop"))
        timings: dict[str, list[float]] = {name: [] for name in runs}
        results = {}
        for _ in range(chosen["repeats"]):
            for name, fn in runs.items():
                start = time.perf_counter()
                results[name] = fn()
                timings[name].append(time.perf_counter() - start)
        mode, workers, used_chunk = attrs["mode"], attrs["workers"], attrs["chunk"]
        batched_s, loop_s, floor_s = min(timings["batched"]), min(timings["loop"]), min(timings["floor"])
        out = {
            "benchmark": "landscape",
            "batched_s": round(batched_s, 3),
            "loop_s": round(loop_s, 3),
            "ratio": round(loop_s / batched_s, 2),
            "floor_s": round(floor_s, 3),
            "x_floor": round(batched_s / floor_s, 2),
            "loop_x_floor": round(loop_s / floor_s, 2),
            "floor": "per point: plain θ_pre + α·τ_A + β·τ_B⊥ on the plane's keys, one "
                     "zoo.functional_forward call on all the images (torch.no_grad), argmax; in this process "
                     "with its torch threads",
            "grid": [len(alphas), len(betas)],
            "device": _device_label("cpu"),
            "points": len(coordinates),
            "samples_per_point": int(len(study.evaluator.labels)),
            "tasks": [task_a, task_b],
            "eval_task": evaluated,
            "split": split,
            "batched": f"engine, mode 'auto' ran {mode!r}"
                       + (f" with {used_chunk} point(s) per vmap call" if used_chunk else "")
                       + f" on {workers} single-threaded worker(s)",
            "loop": "plain loop: build each state dict, zoo.evaluate(state, task, split, limit)",
            "repeats": chosen["repeats"],
            "all_batched_s": [round(t, 3) for t in timings["batched"]],
            "all_loop_s": [round(t, 3) for t in timings["loop"]],
            "max_accuracy_difference": float(np.max(np.abs(results["batched"] - results["loop"]))),
            "floor_max_accuracy_difference": float(np.max(np.abs(results["batched"] - results["floor"]))),
            "all_floor_s": [round(t, 3) for t in timings["floor"]],
            "threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
        }
        if modes:
            out["engine_vmap_s"] = round(min(timings["engine_vmap"]), 3)
            out["engine_loop_s"] = round(min(timings["engine_loop"]), 3)
        return out
    finally:
        torch.set_num_threads(previous)


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench landscape``: print :func:`run`'s result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench landscape", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 × 5 grid, 32 images, 1 repeat (for tests)")
    parser.add_argument("--grid", type=int, default=None, help="points per axis (default 21)")
    parser.add_argument("--limit", type=int, default=None, help="test images per point (default 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats; the best counts (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--chunk", type=int, default=None, help="points per vmap call (default: from the budget)")
    parser.add_argument("--modes", action="store_true", help="also time the engine forced to vmap and to loop")
    parser.add_argument("--task-a", default="landcover")
    parser.add_argument("--task-b", default="textures")
    parser.add_argument("--eval-task", default=None, help="task the points are scored on (default: task A)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, grid=args.grid, limit=args.limit, repeats=args.repeats, threads=args.threads,
                 chunk=args.chunk, modes=args.modes, task_a=args.task_a, task_b=args.task_b,
                 eval_task=args.eval_task)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
