"""``methods``: merge time of every registered plain method, against task arithmetic, same run.

K seeded synthetic task vectors with the 2-D block weights of the first ``layers`` CLIP
ViT-B/32 layers (attention in-projection 2304×768, out-projection 768×768, MLP 3072×768 and
768×3072; :func:`~freqmerge_viz.benchmarks.filter.synthetic_states`), held in memory in
float32, are merged by each method of :func:`~freqmerge_viz.list_methods` that is not routed,
at its registered defaults (every key computed once, results dropped). Each time is the best
of ``repeats`` full merges; ``over_task_arithmetic`` is its ratio to task arithmetic's time
in the same run. Routed methods (FREE, EMR, Twin) build experts rather than one state and are
timed by the ``costs`` figure topic instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

import torch

from ..backend import resolve_device
from ..errors import ParameterError
from ..methods import get_method, list_methods, merge
from ..taskvector import TaskVector
from .filter import _compute_all, _with_threads, best_time, clip_b32_shapes, synthetic_states

BASELINE = "task_arithmetic"


def run(quick: bool = False, layers: int | None = None, k: int = 8, repeats: int = 2, device=None,
        threads: int | None = 1, seed: int = 0, methods: Sequence[str] | None = None) -> dict:
    """Seconds per full merge of each method and its ratio to task arithmetic (see the module docstring)."""
    return _with_threads(threads, lambda: _run(quick, layers, k, repeats, device, seed, methods, threads))


def _run(quick, layers, k, repeats, device, seed, methods, threads) -> dict:
    layers = layers if layers is not None else 1
    if layers < 1 or k < 1 or repeats < 1:
        raise ParameterError(f"layers, k and repeats must be >= 1, got {layers}, {k}, {repeats}")
    names = [m for m in (methods or list_methods()) if not get_method(m).routed]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    target = resolve_device(device)
    shapes = clip_b32_shapes(layers)
    if quick:
        shapes = {key: (shape[0] // 16, shape[1] // 16) for key, shape in shapes.items()}
    pretrained, raw = synthetic_states(shapes, k, seed, target)
    vectors = [TaskVector.from_tensors(tv, name=f"task{i}") for i, tv in enumerate(raw)]
    seconds = {}
    for name in names:
        def work(name=name):
            _compute_all(merge(name, pretrained, vectors, device=target))

        seconds[name] = best_time(work, repeats, target)
    base = seconds[BASELINE]
    return {"benchmark": "methods", "device": str(target), "threads": threads, "k": k, "layers": layers,
            "shapes": sorted({str(list(s)) for s in shapes.values()}), "repeats": repeats,
            "torch": torch.__version__,
            "methods": {name: {"seconds": round(t, 4), "over_task_arithmetic": round(t / base, 2)}
                        for name, t in seconds.items()}}


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench methods``: print :func:`run`'s result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench methods", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="matrices 16 times smaller on each side (for tests)")
    parser.add_argument("--layers", type=int, default=None, help="CLIP layers (default 1)")
    parser.add_argument("--k", type=int, default=8, help="number of task vectors (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats; the best counts (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (task arithmetic always runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, layers=args.layers, k=args.k, repeats=args.repeats, device=args.device,
                 threads=args.threads, seed=args.seed, methods=args.methods)
    print(json.dumps(result))
    return result
