"""``filter``: the toolkit's FR merge against a per-matrix FFT reference and task arithmetic.

K seeded synthetic task vectors with the 2-D block weights of CLIP ViT-B/32 (per layer:
attention in-projection 2304×768, out-projection 768×768, MLP 3072×768 and 768×3072), held
in memory in float32, are merged three ways on one device, each timed as the best of a few
repeats of a full merge (every key computed once, results dropped):

``fr_s``
    ``freqmerge_viz.merge("fr", ...)`` with the paper preset (ideal centred high-pass at a
    normalised radius of 0.1, ``λ_i = E(v_i) / Σ E(v_j)``).
``reference_s``
    the same merge written the way the published code filters, one matrix at a time:
    complex ``fft2``, ``fftshift``, a mask built per call with ``meshgrid``, the product,
    ``ifftshift``, ``ifft2`` and ``.real`` (:func:`reference_filter`).
``task_arithmetic_s``
    ``freqmerge_viz.merge("task_arithmetic", ...)``: reading the K task vectors and summing
    them, the floor any merge of these vectors pays.
``fr_files_s`` / ``task_arithmetic_files_s``
    the same two merges as a user runs them: from a pretrained and K fine-tuned safetensors
    files (written to a temporary folder first), each task vector computed lazily key by key;
    ``fr_over_task_arithmetic_files`` is the ratio the target (≤ 1.3) is about.
``fr_official_s`` / ``authors_official_s``
    the ``official`` preset (the authors' code: unshifted spectrum, disc plus band, per-key
    ``align``, scaling 0.7) against a transcription of the published code, one task matrix at
    a time (:func:`authors_official_merge_key`).

``filter_auto_s`` / ``filter_fft_s`` time only the filter of every task matrix (in place,
as the merge does) on the path ``"auto"`` picks and on the full-spectrum path.
``calibrate`` fits :data:`freqmerge_viz.spectral.FILTER_COST` from timings of every path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..backend import resolve_device
from ..errors import ParameterError
from ..methods import merge
from ..spectral import (COST_TERMS, FilterSpec, fft_path_terms, filter_path, filter_stack, lowband_plans,
                        lowband_terms)
from ..taskvector import TaskVector, stack_key

CLIP_B32_BLOCKS = (("attn.in_proj_weight", (2304, 768)), ("attn.out_proj.weight", (768, 768)),
                   ("mlp.c_fc.weight", (3072, 768)), ("mlp.c_proj.weight", (768, 3072)))
"""Name (after ``visual.transformer.resblocks.{i}.``) and shape of each 2-D block weight of
a CLIP ViT-B/32 visual transformer layer."""

PAPER_CUTOFF = 0.1
"""The FR paper preset's default cutoff (normalised radius); see :mod:`freqmerge_viz.methods.fr`."""


def clip_b32_shapes(layers: int) -> dict[str, tuple[int, int]]:
    """Key → shape of the block weights of the first `layers` CLIP ViT-B/32 layers."""
    return {f"visual.transformer.resblocks.{i}.{name}": shape
            for i in range(layers) for name, shape in CLIP_B32_BLOCKS}


def synthetic_states(shapes: dict[str, tuple[int, ...]], k: int, seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[dict, list[dict]]:
    """A pretrained state (entries ~ N(0, 0.02²)) and `k` task vectors (task i: entries
    ~ N(0, (1e-3·(1 + i/k))²), so that the tasks' λ differ), float32, seeded."""
    generator = torch.Generator().manual_seed(seed)
    pretrained = {key: (0.02 * torch.randn(shape, generator=generator)).to(device) for key, shape in shapes.items()}
    vectors = [{key: (1e-3 * (1 + i / k) * torch.randn(shape, generator=generator)).to(device)
                for key, shape in shapes.items()} for i in range(k)]
    return pretrained, vectors


def reference_filter(matrix: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Ideal centred high-pass of one real ``[H, W]`` matrix (H, W > 1), keeping normalised
    radii ``>= cutoff``, computed the way the published code does it (complex throughout)."""
    h, w = matrix.shape
    spectrum = torch.fft.fftshift(torch.fft.fft2(matrix))
    eta = (torch.arange(h, dtype=torch.float64, device=matrix.device) - h // 2) / (h / 2)
    gamma = (torch.arange(w, dtype=torch.float64, device=matrix.device) - w // 2) / (w / 2)
    rows, cols = torch.meshgrid(eta, gamma, indexing="ij")
    mask = torch.sqrt((rows**2 + cols**2) / 2) >= cutoff
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask)).real


def reference_coefficients(vectors: Sequence[dict]) -> list[float]:
    """FR's ``λ_i = E(v_i) / Σ_j E(v_j)``, E = mean |v| over every entry of the task vector."""
    energies = [sum(float(v.abs().sum()) for v in tv.values()) / sum(v.numel() for v in tv.values())
                for tv in vectors]
    return [e / sum(energies) for e in energies]


def reference_merge_key(pretrained: dict, vectors: Sequence[dict], key: str, coefficients: Sequence[float],
                        cutoff: float = PAPER_CUTOFF) -> torch.Tensor:
    """``θ_pre + Σ_i λ_i G(v_i)`` of one key, with :func:`reference_filter` as G."""
    total = pretrained[key].clone()
    for coefficient, tv in zip(coefficients, vectors):
        total += coefficient * reference_filter(tv[key], cutoff)
    return total


def authors_official_filter(matrix: torch.Tensor, ratio: float) -> torch.Tensor:
    """The published code's filter of one matrix (merge_vit): ``fft2`` without shift, distance
    ``d`` from the array index ``(H//2, W//2)``, a disc ``d ≤ min(H, W)//10`` and a band
    ``min(H, W)//10 ≤ d ≤ ratio·min(H, W)`` filtered separately (``ifft2(...).real``) and added."""
    h, w = matrix.shape
    spectrum = torch.fft.fft2(matrix)
    rows = torch.arange(h, device=matrix.device).view(-1, 1) - h // 2
    cols = torch.arange(w, device=matrix.device).view(1, -1) - w // 2
    distance = torch.sqrt((rows**2 + cols**2).to(torch.float32))
    inner, outer = min(h, w) // 10, ratio * min(h, w)
    disc = distance <= inner
    band = (distance >= inner) & (distance <= outer)
    return torch.fft.ifft2(spectrum * disc).real + torch.fft.ifft2(spectrum * band).real


def authors_official_merge_key(pretrained: dict, vectors: Sequence[dict], key: str, ratio: float = 0.7,
                               scaling: float = 0.7) -> torch.Tensor:
    """One attn/mlp weight merged as the published code does: filter every task's matrix, rescale
    each to the largest mean |filtered| ("align"), sum, times `scaling`, plus θ_pre."""
    filtered = [authors_official_filter(tv[key], ratio) for tv in vectors]
    means = [float(f.abs().mean()) for f in filtered]
    largest = max(means)
    total = sum(f * (largest / m) for f, m in zip(filtered, means))
    return pretrained[key] + scaling * total


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(work: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Shortest wall time (s) of `repeats` calls of `work`."""
    best = math.inf
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        work()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _compute_all(state) -> None:
    for key in state:
        state[key]


def _filter_every_matrix(vectors: Sequence[TaskVector], spec: FilterSpec, path: str, device: torch.device) -> float:
    """Seconds spent in :func:`filter_stack` (in place) over every key's K-task stack."""
    spent = 0.0
    for key in vectors[0]:
        stack = stack_key(vectors, key, device)
        _synchronize(device)
        start = time.perf_counter()
        filter_stack(stack, spec, inplace=True, path=path)
        _synchronize(device)
        spent += time.perf_counter() - start
    return spent


def _from_files(pretrained: dict, vectors: Sequence[dict], repeats: int, device: torch.device) -> tuple[float, float]:
    """Seconds of an FR and a task-arithmetic merge read from safetensors files, as a user runs them."""
    import tempfile
    from pathlib import Path

    from ..io import save_state

    with tempfile.TemporaryDirectory(prefix="fmv-bench-filter-") as folder:
        save_state(pretrained, Path(folder) / "pre.safetensors")
        paths = []
        for i, vector in enumerate(vectors):
            paths.append(Path(folder) / f"ft{i}.safetensors")
            save_state({key: pretrained[key] + vector[key] for key in pretrained}, paths[-1])

        def run(name: str):
            return lambda: _compute_all(merge(name, Path(folder) / "pre.safetensors", paths, device=device))

        return best_time(run("fr"), repeats, device), best_time(run("task_arithmetic"), repeats, device)


def _with_threads(threads: int | None, work: Callable[[], dict]) -> dict:
    """`work()` with torch using `threads` CPU threads (``None``: as set), restored afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return work()
    finally:
        torch.set_num_threads(before)


def run(quick: bool = False, layers: int | None = None, k: int = 8, repeats: int = 3, device=None,
        threads: int | None = None, seed: int = 0) -> dict:
    """Time FR (toolkit), the per-matrix reference and task arithmetic; see the module docstring."""
    return _with_threads(threads, lambda: _run(quick, layers, k, repeats, device, seed))


def _run(quick: bool, layers: int | None, k: int, repeats: int, device, seed: int) -> dict:
    layers = layers if layers is not None else (2 if quick else 12)
    if layers < 1 or k < 1 or repeats < 1:
        raise ParameterError(f"layers, k and repeats must be >= 1, got {layers}, {k}, {repeats}")
    target = resolve_device(device)
    shapes = clip_b32_shapes(layers)
    pretrained, raw_vectors = synthetic_states(shapes, k, seed, target)
    vectors = [TaskVector.from_tensors(tv, name=f"task{i}") for i, tv in enumerate(raw_vectors)]
    spec = FilterSpec(PAPER_CUTOFF)

    def toolkit_fr():
        _compute_all(merge("fr", pretrained, vectors, device=target))

    def reference_fr():
        coefficients = reference_coefficients(raw_vectors)
        for key in shapes:
            reference_merge_key(pretrained, raw_vectors, key, coefficients)

    def task_arithmetic():
        _compute_all(merge("task_arithmetic", pretrained, vectors, device=target))

    def toolkit_official():
        _compute_all(merge("fr", pretrained, vectors, device=target, preset="official"))

    def authors_official():
        for key in shapes:
            authors_official_merge_key(pretrained, raw_vectors, key)

    toolkit_fr()
    fr_files_s, task_arithmetic_files_s = _from_files(pretrained, raw_vectors, repeats, target)
    fr_s = best_time(toolkit_fr, repeats, target)
    reference_s = best_time(reference_fr, repeats, target)
    task_arithmetic_s = best_time(task_arithmetic, repeats, target)
    fr_official_s = best_time(toolkit_official, repeats, target)
    authors_official_s = best_time(authors_official, repeats, target)
    filter_auto_s = min(_filter_every_matrix(vectors, spec, "auto", target) for _ in range(repeats))
    filter_fft_s = min(_filter_every_matrix(vectors, spec, "fft", target) for _ in range(repeats))

    checked = list(shapes) if quick else [key for key in shapes if ".resblocks.0." in key]
    state = merge("fr", pretrained, vectors, device=target)
    coefficients = reference_coefficients(raw_vectors)
    official = merge("fr", pretrained, vectors, device=target, preset="official")
    difference = official_difference = 0.0
    for key in checked:
        expected = reference_merge_key(pretrained, raw_vectors, key, coefficients)
        delta = (expected - pretrained[key]).norm()
        difference = max(difference, float((state[key] - expected).norm() / delta))
        expected = authors_official_merge_key(pretrained, raw_vectors, key)
        delta = (expected - pretrained[key]).norm()
        official_difference = max(official_difference, float((official[key] - expected).norm() / delta))
    return {
        "benchmark": "filter",
        "device": str(target),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "k": k,
        "layers": layers,
        "shapes": {name: list(shape) for name, shape in CLIP_B32_BLOCKS},
        "dtype": "float32",
        "preset": "paper",
        "cutoff": PAPER_CUTOFF,
        "repeats": repeats,
        "parameters": sum(math.prod(shape) for shape in shapes.values()),
        "fr_s": fr_s,
        "reference_s": reference_s,
        "task_arithmetic_s": task_arithmetic_s,
        "reference_over_fr": reference_s / fr_s,
        "fr_over_task_arithmetic": fr_s / task_arithmetic_s,
        "fr_files_s": fr_files_s,
        "task_arithmetic_files_s": task_arithmetic_files_s,
        "fr_over_task_arithmetic_files": fr_files_s / task_arithmetic_files_s,
        "fr_official_s": fr_official_s,
        "authors_official_s": authors_official_s,
        "authors_over_fr_official": authors_official_s / fr_official_s,
        "filter_auto_s": filter_auto_s,
        "filter_fft_s": filter_fft_s,
        "filter_paths": {"x".join(map(str, shape)): filter_path(shape, spec, target)
                         for _, shape in CLIP_B32_BLOCKS},
        "reference_keys_checked": len(checked),
        "reference_max_relative_difference": difference,
        "authors_official_max_relative_difference": official_difference,
        "targets_met": {"reference_over_fr_at_least_8": reference_s / fr_s >= 8,
                        "fr_over_task_arithmetic_files_at_most_1.3": fr_files_s / task_arithmetic_files_s <= 1.3,
                        "authors_over_fr_official_at_least_7": authors_official_s / fr_official_s >= 7},
    }


CALIBRATION_SHAPES = ((768, 768), (2304, 768), (3072, 768), (768, 3072), (1024, 512), (4096, 1024),
                      (256, 256), (96, 384), (2048, 5632))
CALIBRATION_SPECS = (FilterSpec(0.01), FilterSpec(0.03), FilterSpec(0.1), FilterSpec(0.3), FilterSpec(4, units="bins"),
                     FilterSpec(0.7, convention="official"), FilterSpec(0.05, band="low"))


def calibrate(shapes: Sequence[tuple[int, int]] = CALIBRATION_SHAPES, specs: Sequence[FilterSpec] = CALIBRATION_SPECS,
              repeats: int = 5, threads: int | None = 1, device=None, seed: int = 0, details: bool = False) -> dict:
    """Fit the filter cost model's constants (seconds per unit of each term in
    :data:`freqmerge_viz.spectral.COST_TERMS`) to timings of the full-spectrum path and of
    every low-band plan, by least squares on the relative error; report the fit's error and
    how often the model's choice was within 10% of the fastest measured path (``details``:
    also every choice and every measurement with its terms)."""
    return _with_threads(threads, lambda: _calibrate(shapes, specs, repeats, device, seed, details))


def _calibrate(shapes, specs, repeats: int, device, seed: int, details: bool) -> dict:
    target = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    rows, times, cases = [], [], []
    for shape in shapes:
        x = torch.randn((1, *shape), generator=generator).to(target)
        work = x.clone()
        copy_time = best_time(lambda: work.copy_(x), repeats, target)

        def timed(spec, path):
            return max(best_time(lambda: filter_stack(work.copy_(x), spec, inplace=True, path=path), repeats, target)
                       - copy_time, 1e-7)

        fft_time = timed(specs[0], "fft")
        for spec in specs:
            measured = {"fft": fft_time}
            terms = {"fft": fft_path_terms(*shape)}
            for plan in lowband_plans(shape, spec, target):
                n0, n1 = (shape[1], shape[0]) if plan.transposed else shape
                name = f"{plan.mode}/{'T' if plan.transposed else 'N'}/{plan.first}/{plan.second}"
                terms[name] = lowband_terms(n0, n1, plan.half_bins, plan.full_bins, plan.first, plan.second)
                measured[name] = timed(spec, plan)
            for name in measured:
                rows.append(terms[name])
                times.append(measured[name])
            cases.append((shape, spec, measured, terms))
    design = np.array(rows, dtype=float) / np.array(times)[:, None]
    constants, *_ = np.linalg.lstsq(design, np.ones(len(times)), rcond=None)
    constants = np.clip(constants, 1e-14, None)
    predicted = np.array(rows) @ constants
    errors = np.abs(predicted / np.array(times) - 1)
    good_choices, table = 0, []
    for shape, spec, measured, terms in cases:
        model = {name: float(np.dot(terms[name], constants)) for name in measured}
        allowed = [name for name in model if name == "fft" or spec.kind == "ideal"]
        chosen = min(allowed, key=model.get)
        fastest = min(allowed, key=measured.get)
        good_choices += measured[chosen] <= 1.1 * measured[fastest]
        table.append({"shape": list(shape), "spec": repr(spec), "chosen": chosen, "chosen_s": measured[chosen],
                      "fastest": fastest, "fastest_s": measured[fastest], "fft_s": measured["fft"]})
    result = {"device": str(target), "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
              "constants": dict(zip(COST_TERMS, map(float, constants))),
              "median_relative_error": float(np.median(errors)), "max_relative_error": float(errors.max()),
              "cases": len(cases), "choice_within_10_percent": good_choices / len(cases), "measurements": len(times)}
    if details:
        result["choices"] = table
        result["samples"] = [{"terms": list(map(float, row)), "seconds": t} for row, t in zip(rows, times)]
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench filter``: print :func:`run`'s result (or :func:`calibrate`'s) as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench filter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12 (for tests)")
    parser.add_argument("--layers", type=int, default=None, help="CLIP layers (default 12, 2 with --quick)")
    parser.add_argument("--k", type=int, default=8, help="number of task vectors (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best counts (default 3)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", action="store_true",
                        help="fit the filter cost model's constants instead (single-threaded unless --threads)")
    args = parser.parse_args(argv)
    if args.calibrate:
        result = calibrate(repeats=max(args.repeats, 1), threads=args.threads or 1, device=args.device, seed=args.seed)
    else:
        result = run(quick=args.quick, layers=args.layers, k=args.k, repeats=args.repeats, device=args.device,
                     threads=args.threads, seed=args.seed)
    print(json.dumps(result))
    return result
