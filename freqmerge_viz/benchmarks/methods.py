"""``methods``: merge time of every registered plain method, against task arithmetic, same run.

K seeded synthetic task vectors with the 2-D block weights of the first ``layers`` CLIP
ViT-B/32 layers (attention in-projection 2304×768, out-projection 768×768, MLP 3072×768 and
768×3072; :func:`~freqmerge_viz.benchmarks.filter.synthetic_states`), held in memory in
float32, are merged by each method of :func:`~freqmerge_viz.list_methods` that is not routed,
at its registered defaults (every key computed once, results dropped). Each time is the best
of ``repeats`` full merges (for a method with a floor, alternated with the floor's repeats);
``over_task_arithmetic`` is its ratio to task arithmetic's time in the same run. Routed
methods (FREE, EMR, Twin) build experts rather than one state and are timed by the ``costs``
figure topic instead.

Floors (:data:`FLOORS`): where a method's result has a small plain-torch computation (task
arithmetic, weight averaging, FR's paper preset, TIES and TSV-M at their registered defaults:
the functions ``floor_*`` of :mod:`~freqmerge_viz.benchmarks.filter`), it is timed the same way
and the method's row gets ``floor_seconds``, ``x_floor`` (its time over the floor's),
``floor_max_relative_difference`` (the two merged states compared, relative to the floor's
merged delta) and ``floor_identical`` (every merged tensor equal, ``torch.equal``); every other
method's row says ``floor: null`` and why (``floor_reason``).

``--files``: the same merges from a pretrained and K fine-tuned safetensors files written to a
temporary folder (each task vector made lazily key by key, every key computed, nothing
written): ``files_seconds``, ``files_over_task_arithmetic`` and, for a method with a floor,
``files_floor_seconds`` and ``files_x_floor`` (:func:`floor_from_files`: every file read whole,
then the floor).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Sequence

import torch

from ..backend import resolve_device
from ..errors import ParameterError
from ..methods import get_method, list_methods, merge
from ..taskvector import TaskVector
from .filter import (_compute_all, _relative_difference, _with_threads, best_time, clip_b32_shapes, floor_fr_paper,
                     floor_task_arithmetic, floor_ties, floor_tsv, synthetic_states)

BASELINE = "task_arithmetic"

FLOORS = {
    "task_arithmetic": ("θ_pre + 0.3 Σ v_i per key (add_ with alpha)",
                        lambda pre, raw: floor_task_arithmetic(pre, raw, 0.3)),
    "weight_averaging": ("θ_pre + (1/K) Σ v_i per key (add_ with alpha)",
                         lambda pre, raw: floor_task_arithmetic(pre, raw, 1.0 / len(raw))),
    "fr": ("λ pass (v.abs().sum()), Σ λ_i v_i, rfft2 · cached half mask · irfft2 of the sum, + θ_pre per key",
           lambda pre, raw: floor_fr_paper(pre, raw)),
    "ties": ("per key and task: kthvalue of |v| at ⌊0.2 n⌋ (ties to the lower flat index), the trimmed copy "
             "(torch.where); votes Σ trimmed, per task the agreeing mask (torch.where of > 0 / < 0), Σ agreeing / "
             "their count (at least 1), + θ_pre",
             lambda pre, raw: floor_ties(pre, raw)),
    "tsv": ("per matrix: each task's thin SVD (torch.linalg.svd) cut to k = int(r/K), concatenated; Û and V̂ᵀ "
            "replaced by their polar factors U Vᵀ (one thin SVD each); P(Û) diag(ŝ) P(V̂ᵀ) + θ_pre",
            lambda pre, raw: floor_tsv(pre, raw)),
}
"""Method → (what its floor computes, ``floor(pretrained, task_vectors) -> merged state``)."""

_SPARSE = ("no simple floor: per-task magnitude trims (top-k or thresholds), sign election and the method's own "
           "rescaling; a plain torch version is a re-implementation of its rules, not a smaller computation (its "
           "lower bound is task arithmetic's read-and-sum)")
_RANDOM = ("no simple floor: a random drop mask; a plain version gives the same result only by re-implementing the "
           "method's random stream, and its lower bound is task arithmetic's read-and-sum")
_SVD = ("no simple floor: one or more SVDs per matrix (torch.linalg.svd) dominate and the selection and "
        "reconstruction rules around them are the method itself")
NO_FLOOR = {"magnitude_prune": _SPARSE, "breadcrumbs": _SPARSE, "consensus": _SPARSE,
            "pcb": _SPARSE + "; PCB adds pairwise balancing scores", "dare_linear": _RANDOM, "dare_ties": _RANDOM,
            "fr_ties": "no simple floor: FR's filter on every task vector (no linearity before the trim), then TIES: "
                       + _SPARSE,
            "fr_breadcrumbs": "no simple floor: FR's filter on every task vector (no linearity before the trim), "
                              "then Breadcrumbs: " + _SPARSE,
            "cart": _SVD, "iso_c": _SVD, "iso_cts": _SVD,
            "wudi": "no simple floor: 300 Adam steps per matrix; the optimisation is the method"}
"""Method → why its row has no floor."""


def run(quick: bool = False, layers: int | None = None, k: int = 8, repeats: int = 2, device=None,
        threads: int | None = 1, seed: int = 0, methods: Sequence[str] | None = None, files: bool = False) -> dict:
    """Seconds per full merge of each method and its ratio to task arithmetic (see the module docstring)."""
    return _with_threads(threads, lambda: _run(quick, layers, k, repeats, device, seed, methods, threads, files))


def _alternated(work, floor, repeats: int, device) -> tuple[float, float]:
    """Best seconds of `work` and of `floor` over `repeats` alternated calls of each."""
    best = best_floor = math.inf
    for _ in range(repeats):  # alternated, so that a change of load meets both alike
        best = min(best, best_time(work, 1, device))
        best_floor = min(best_floor, best_time(floor, 1, device))
    return best, best_floor


def floor_from_files(floor, pretrained_path, finetuned_paths) -> dict:
    """A floor of :data:`FLOORS` from safetensors files in the least plain torch: every file read
    whole (``safetensors.torch.load_file``), ``v_i = θ_i − θ_pre`` per key in place, then
    ``floor(θ_pre, [v_i])``."""
    from safetensors.torch import load_file

    pretrained = load_file(str(pretrained_path))
    vectors = []
    for path in finetuned_paths:
        state = load_file(str(path))
        vectors.append({key: state[key].sub_(pretrained[key]) for key in pretrained})
    return floor(pretrained, vectors)


def _from_files(names, pretrained: dict, raw: list, repeats: int, device) -> dict:
    """Method → seconds of its merge from a pretrained and K fine-tuned safetensors files (written
    to a temporary folder first; every key computed, nothing written), and of its floor from the
    same files (:func:`floor_from_files`, on the CPU), alternated."""
    import tempfile
    from pathlib import Path

    from ..io import save_state

    out = {}
    with tempfile.TemporaryDirectory(prefix="fmv-bench-methods-") as folder:
        pre_path = Path(folder) / "pre.safetensors"
        save_state(pretrained, pre_path)
        paths = []
        for i, vector in enumerate(raw):
            paths.append(Path(folder) / f"ft{i}.safetensors")
            save_state({key: pretrained[key] + vector[key] for key in pretrained}, paths[-1])
        for name in names:
            def work(name=name):
                _compute_all(merge(name, pre_path, paths, device=device))

            if name in FLOORS and device.type == "cpu":
                floor = FLOORS[name][1]
                seconds, floor_seconds = _alternated(work, lambda floor=floor: floor_from_files(floor, pre_path, paths),
                                                     repeats, device)
                out[name] = {"files_seconds": round(seconds, 4), "files_floor_seconds": round(floor_seconds, 4),
                             "files_x_floor": round(seconds / floor_seconds, 2)}
            else:
                out[name] = {"files_seconds": round(best_time(work, repeats, device), 4)}
    return out


def _run(quick, layers, k, repeats, device, seed, methods, threads, files=False) -> dict:
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
    load_at_start = list(os.getloadavg())
    seconds, floor_seconds = {}, {}
    for name in names:
        def work(name=name):
            _compute_all(merge(name, pretrained, vectors, device=target))

        if name not in FLOORS:
            seconds[name] = best_time(work, repeats, target)
            continue
        floor = FLOORS[name][1]
        seconds[name], floor_seconds[name] = _alternated(work, lambda floor=floor: floor(pretrained, raw), repeats,
                                                         target)
    base = seconds[BASELINE]
    rows = {name: {"seconds": round(t, 4), "over_task_arithmetic": round(t / base, 2)} for name, t in seconds.items()}
    for name, row in rows.items():
        if name in FLOORS:
            what, floor = FLOORS[name]
            toolkit, expected = merge(name, pretrained, vectors, device=target), floor(pretrained, raw)
            toolkit = {key: toolkit[key] for key in shapes}
            row.update({"floor": what, "floor_seconds": round(floor_seconds[name], 6),
                        "x_floor": round(seconds[name] / floor_seconds[name], 2),
                        "floor_max_relative_difference": _relative_difference(toolkit, expected, pretrained,
                                                                              list(shapes)),
                        "floor_identical": all(torch.equal(toolkit[key], expected[key]) for key in shapes)})
        else:
            row.update({"floor": None, "floor_reason": NO_FLOOR.get(name, "no simple floor: not analysed"),
                        "x_floor": None})
    if files:
        for name, timings in _from_files(names, pretrained, raw, repeats, target).items():
            rows[name].update(timings)
            rows[name]["files_over_task_arithmetic"] = round(
                timings["files_seconds"] / max(rows[BASELINE]["files_seconds"], 1e-9), 2)
    return {"benchmark": "methods", "device": str(target), "threads": threads, "k": k, "layers": layers,
            "shapes": sorted({str(list(s)) for s in shapes.values()}), "repeats": repeats,
            "torch": torch.__version__, "load_average_at_start": load_at_start,
            "load_average": list(os.getloadavg()), "methods": rows}


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
    parser.add_argument("--files", action="store_true",
                        help="also merge from safetensors files written to a temporary folder (files_* fields)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, layers=args.layers, k=args.k, repeats=args.repeats, device=args.device,
                 threads=args.threads, seed=args.seed, methods=args.methods, files=args.files)
    print(json.dumps(result))
    return result
