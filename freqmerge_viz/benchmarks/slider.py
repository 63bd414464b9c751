"""``slider``: how long a :class:`~freqmerge_viz.widgets.CutoffExplorer` takes to answer a cutoff change.

On the demo zoo, an explorer (method ``fr``, ideal high-pass) is driven through its Python
API: ``explorer.set(cutoff=v)`` for `n` distinct cutoffs that walk up and back down
between 0.05 and 0.55 (no value twice, so no cached result is reused). Each change is timed
from the call to its return, when the new per-task accuracies (and the mask and variance)
are on display: the same update a slider runs after its debounce, without the debounce
delay. ``p50_ms``/``p95_ms`` are percentiles of the `n` changes of the best of `repeats`
sweeps (the sweep with the lowest median; each sweep uses new values); ``stages_ms`` are the
medians of that sweep's per-stage timings (merge, evaluate, variance, draw).

No floor (``floor: null`` and ``floor_reason``): an update is four different computations (an
FR merge of the backbone, one forward per task on its validation images, two amplitude
variances, a drawing) behind the explorer's caches; their floors are measured by the
``filter``, ``landscape`` and ``interference --in-memory`` benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Sequence

import numpy as np
import torch

from ..errors import check_positive_int


def cutoff_walk(n: int, low: float = 0.05, high: float = 0.55, offset: float = 0.0) -> list[float]:
    """`n` distinct cutoffs: up from `low` to `high`, then back down between the upward steps."""
    up = (n + 1) // 2
    step = (high - low) / max(up, 1)
    ascending = [low + offset + step * i for i in range(up)]
    descending = [low + offset + step * (i + 0.5) for i in reversed(range(n - up))]
    return [round(v, 6) for v in ascending + descending]


def run(quick: bool = False, n: int | None = None, repeats: int | None = None, eval_per_task: int | None = None,
        method: str = "fr", kind: str = "ideal", key: str | None = None, device=None, threads: int | None = 1,
        zoo_path=None) -> dict:
    """Time `n` cutoff changes of a CutoffExplorer on the zoo (see the module docstring)."""
    from .. import zoo as zoo_module
    from ..widgets import CutoffExplorer

    n = check_positive_int("n", n if n is not None else (6 if quick else 50))
    repeats = check_positive_int("repeats", repeats if repeats is not None else (1 if quick else 3))
    eval_per_task = eval_per_task if eval_per_task is not None else (8 if quick else None)
    sizing = {} if eval_per_task is None else {"eval_per_task": eval_per_task}
    z = zoo_module.load(zoo_path)
    explorer = CutoffExplorer(z, key=key, method=method, device=device, threads=threads, **sizing)
    explorer.set(kind=kind, band="high")
    explorer.set(cutoff=0.6)
    best = None
    for sweep in range(repeats):
        values = cutoff_walk(n, offset=0.001 * sweep)
        times, stages = [], []
        for value in values:
            start = time.perf_counter()
            explorer.set(cutoff=value)
            times.append(1e3 * (time.perf_counter() - start))
            stages.append(dict(explorer.last_timings))
        if best is None or np.median(times) < np.median(best[0]):
            best = (times, stages, values)
    times, stages, values = best
    names = sorted({name for stage in stages for name in stage})
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "max_ms": round(float(np.max(times)), 2),
        "n": n, "repeats": repeats, "device": str(explorer.device),
        "stages_ms": {name: round(float(np.median([s[name] for s in stages if name in s])), 2) for name in names},
        "eval_per_task": explorer.eval_per_task, "tasks": len(explorer.eval_tasks), "method": method, "kind": kind,
        "key": explorer.values["key"], "cutoffs": [min(values), max(values)],
        "threads": threads, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "cpu": platform.processor() or platform.machine(), "quick": quick,
        "accuracy_cache_misses": explorer.cache_stats["merges"],
        "floor": None, "x_floor": None,
        "floor_reason": "no single plain computation: an update is an FR merge of the backbone, a forward per task "
                        "on its validation images, two amplitude variances and a drawing (stages_ms); their floors "
                        "are the filter, landscape and interference --in-memory benchmarks'",
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench slider``: print :func:`run`'s result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench slider", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 changes, 8 images per task, 1 sweep (for tests)")
    parser.add_argument("--n", type=int, default=None, help="cutoff changes per sweep (default 50)")
    parser.add_argument("--repeats", type=int, default=None, help="sweeps; the best counts (default 3)")
    parser.add_argument("--eval-per-task", type=int, default=None,
                        help="validation images per task (default: the explorer's, 8 with --quick)")
    parser.add_argument("--method", default="fr", help="a merge method with a cutoff (default fr)")
    parser.add_argument("--kind", default="ideal", help="ideal, butterworth or gaussian (default ideal)")
    parser.add_argument("--key", default=None, help="matrix whose spectrum is shown (default: the explorer's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per update (default 1; 0: torch's)")
    parser.add_argument("--zoo", default=None, help="zoo directory (default: the shipped one)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, n=args.n, repeats=args.repeats, eval_per_task=args.eval_per_task,
                 method=args.method, kind=args.kind, key=args.key, device=args.device,
                 threads=args.threads or None, zoo_path=args.zoo)
    print(json.dumps(result))
    return result
