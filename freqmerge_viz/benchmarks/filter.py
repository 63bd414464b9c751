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

Floors: the least plain torch that gives the same merged state, from the same in-memory
task vectors (each has its ``*_x_floor``, the toolkit's time over the floor's):

``fr_floor_s`` (:func:`floor_fr_paper`)
    FR's paper preset: the λ pass (one ``v.abs().sum()`` per task and key,
    λ_i = E(v_i)/Σ E(v_j)), then per key the weighted sum ``Σ λ_i v_i``, one high-pass of the
    sum (``rfft2``, times a cached half mask, ``irfft2``: the filter is linear) and θ_pre added;
    ``fr_floor_stages_s`` splits it into λ, sum and filter (+ θ_pre).
``fr_official_floor_s`` (:func:`floor_fr_official`)
    the official preset: per key, every task matrix filtered (``rfft2``, the cached
    conjugate-symmetric half of the authors' disc + band mask, ``irfft2``), the ``align``
    coefficients from each filtered matrix's mean |·|, the weighted sum, times 0.7, plus θ_pre.
``task_arithmetic_floor_s``
    ``θ_pre + 0.3 Σ v_i`` per key (``add_`` with ``alpha``).
``fr_files_floor_s`` / ``task_arithmetic_files_floor_s``
    the same from the safetensors files (``safe_open``; the pretrained state loaded once,
    ``v_i = θ_i − θ_pre`` per key): the λ pass reads every fine-tuned file once and the merge
    pass once more.

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


_FLOOR_MASKS: dict = {}


def floor_paper_half_mask(h: int, w: int, cutoff: float, device) -> torch.Tensor:
    """The paper high-pass on the ``rfft2`` half spectrum of an ``H × W`` matrix (1 where the
    centred normalised radius ``sqrt(((η/(H/2))² + (γ/(W/2))²)/2)`` is ``>= cutoff``, else 0),
    float32, cached per shape: the floors' mask."""
    key = ("paper", h, w, cutoff, str(device))
    if key not in _FLOOR_MASKS:
        eta = torch.fft.fftfreq(h, dtype=torch.float64) * 2.0
        gamma = torch.fft.rfftfreq(w, dtype=torch.float64) * 2.0
        radius = torch.sqrt((eta[:, None] ** 2 + gamma[None, :] ** 2) / 2)
        _FLOOR_MASKS[key] = (radius >= cutoff).to(device=device, dtype=torch.float32)
    return _FLOOR_MASKS[key]


def floor_official_half_mask(h: int, w: int, ratio: float, device) -> torch.Tensor:
    """The authors' disc + band gain (:func:`authors_official_filter`: 0, 1, or 2 on the ring
    ``d = min(H, W)//10``) made conjugate-symmetric, ``(g(k) + g(−k))/2``, on the ``rfft2``
    half spectrum (what ``ifft2(fft2(x)·g).real`` applies to a real x), float32, cached."""
    key = ("official", h, w, ratio, str(device))
    if key not in _FLOOR_MASKS:
        rows = torch.arange(h).view(-1, 1) - h // 2
        cols = torch.arange(w).view(1, -1) - w // 2
        distance = torch.sqrt((rows**2 + cols**2).to(torch.float32))
        inner, outer = min(h, w) // 10, ratio * min(h, w)
        gain = (distance <= inner).to(torch.float32) + ((distance >= inner) & (distance <= outer)).to(torch.float32)
        mirror = torch.roll(torch.flip(gain, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # g(-k)
        _FLOOR_MASKS[key] = ((gain + mirror) / 2)[:, :w // 2 + 1].contiguous().to(device)
    return _FLOOR_MASKS[key]


def floor_fr_paper(pretrained: dict, vectors: Sequence[dict], cutoff: float = PAPER_CUTOFF,
                   stages: dict | None = None) -> dict:
    """FR's paper merge in the least plain torch (every key of these benchmarks is a layer
    matrix): λ_i = E(v_i)/Σ E(v_j), E = mean |v| over every entry; per key
    ``θ_pre + irfft2(rfft2(Σ λ_i v_i) · mask)``. `stages` (optional) accumulates the seconds of
    the λ pass (``lambda``), the sums (``sum``) and the filters with θ_pre added (``filter``)."""
    start = time.perf_counter()
    keys = list(pretrained)
    count = sum(pretrained[key].numel() for key in keys)
    energies = [sum(float(vector[key].abs().sum()) for key in keys) / count for vector in vectors]
    lambdas = [energy / sum(energies) for energy in energies]
    spent = {"lambda": time.perf_counter() - start, "sum": 0.0, "filter": 0.0}
    merged = {}
    for key in keys:
        start = time.perf_counter()
        total = vectors[0][key] * lambdas[0]
        for coefficient, vector in zip(lambdas[1:], vectors[1:]):
            total.add_(vector[key], alpha=coefficient)
        middle = time.perf_counter()
        h, w = total.shape
        spectrum = torch.fft.rfft2(total)
        spectrum.mul_(floor_paper_half_mask(h, w, cutoff, total.device))
        merged[key] = torch.fft.irfft2(spectrum, s=(h, w)).add_(pretrained[key])
        end = time.perf_counter()
        spent["sum"] += middle - start
        spent["filter"] += end - middle
    if stages is not None:
        for name, seconds in spent.items():
            stages[name] = stages.get(name, 0.0) + seconds
    return merged


def floor_fr_official(pretrained: dict, vectors: Sequence[dict], ratio: float = 0.7, scaling: float = 0.7) -> dict:
    """FR's official merge in the least plain torch (every key here is an attn/mlp weight
    matrix): per key, each task's ``irfft2(rfft2(v_i) · mask)``, ``c_i = max_j m_j / m_i`` with
    ``m_i`` its mean |·|, ``θ_pre + scaling · Σ c_i G(v_i)``."""
    merged = {}
    for key in pretrained:
        h, w = pretrained[key].shape
        mask = floor_official_half_mask(h, w, ratio, pretrained[key].device)
        filtered = []
        for vector in vectors:
            spectrum = torch.fft.rfft2(vector[key])
            filtered.append(torch.fft.irfft2(spectrum.mul_(mask), s=(h, w)))
        means = [float(f.abs().mean()) for f in filtered]
        largest = max(means)
        coefficients = [largest / m if m > 0 else 0.0 for m in means]
        total = filtered[0].mul_(coefficients[0])
        for coefficient, f in zip(coefficients[1:], filtered[1:]):
            total.add_(f, alpha=coefficient)
        merged[key] = total.mul_(scaling).add_(pretrained[key])
    return merged


def floor_task_arithmetic(pretrained: dict, vectors: Sequence[dict], scaling: float = 0.3) -> dict:
    """Task arithmetic in the least plain torch: per key ``θ_pre + scaling · Σ v_i``."""
    merged = {}
    for key in pretrained:
        total = vectors[0][key] * scaling
        for vector in vectors[1:]:
            total.add_(vector[key], alpha=scaling)
        merged[key] = total.add_(pretrained[key])
    return merged


def floor_top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Which entries of `values` are its `k` (0 ≤ k ≤ n) largest magnitudes, ties at the k-th
    largest to the lower flat index (the toolkit's ranking rule), in the least plain torch: one
    ``kthvalue`` of the magnitudes, one comparison, and a look at the ties only when they
    overflow the k (never, with continuous random entries)."""
    magnitude = values.abs().reshape(-1)
    n = magnitude.numel()
    if k == 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    threshold = magnitude.kthvalue(n - k + 1).values
    keep = magnitude >= threshold
    excess = int(keep.sum()) - k
    if excess > 0:  # drop the ties with the highest flat indices
        keep[torch.nonzero(magnitude == threshold)[-excess:, 0]] = False
    return keep.view(values.shape)


def floor_ties(pretrained: dict, vectors: Sequence[dict], density: float = 0.2, scaling: float = 1.0) -> dict:
    """TIES at the registry's defaults (peft convention: per task and key the top
    ``⌊density·n⌋`` magnitudes, ties to the lower flat index; sign elected by the summed trimmed
    values, a vote of 0 going to +; the mean over the entries agreeing with it, 0 where none
    does; times `scaling`) in the least plain torch: per key and task a :func:`floor_top_k_mask`
    and one trimmed copy, then two passes over the K trimmed tensors (votes, then the agreeing
    sum and count), summed in task order as the toolkit sums them."""
    merged = {}
    for key, base in pretrained.items():
        k = int(density * base.numel())
        trimmed = [torch.where(floor_top_k_mask(vector[key], k), vector[key], 0.0) for vector in vectors]
        votes = trimmed[0].clone()
        for entry in trimmed[1:]:
            votes.add_(entry)
        positive = votes >= 0
        total = torch.zeros_like(base)
        count = torch.zeros_like(base)
        for entry in trimmed:
            agree = torch.where(positive, entry > 0, entry < 0)
            total.add_(entry.mul_(agree))
            count.add_(agree)
        merged[key] = total.div_(count.clamp_min_(1.0)).mul_(scaling).add_(base)
    return merged


def floor_tsv(pretrained: dict, vectors: Sequence[dict], scaling: float = 1.0) -> dict:
    """TSV-M at the registry's defaults (every key a matrix, each task keeping ``k = int(r·(1/K))``
    of its r = min(m, n) singular directions; :mod:`freqmerge_viz.methods.tsv`) in the least
    plain torch, one matrix at a time: each task's thin SVD cut to its top k, the K bases and
    singular values concatenated, each basis replaced by its polar factor ``U Vᵀ`` (one thin SVD
    each), ``θ_pre + scaling · P(Û) diag(ŝ) P(V̂ᵀ)``. (No zero padding to r columns when
    ``K·k < r``: padded columns would meet zero singular values.)"""
    merged = {}
    for key, base in pretrained.items():
        k = int(min(base.shape) * (1.0 / len(vectors)))
        if k == 0:
            merged[key] = base.clone()
            continue
        factors = [torch.linalg.svd(vector[key], full_matrices=False) for vector in vectors]
        u_hat = torch.cat([u[:, :k] for u, _, _ in factors], dim=1)
        s_hat = torch.cat([s[:k] for _, s, _ in factors])
        vh_hat = torch.cat([vh[:k] for _, _, vh in factors], dim=0)
        del factors
        u, _, vh = torch.linalg.svd(u_hat, full_matrices=False)
        left = u @ vh
        u, _, vh = torch.linalg.svd(vh_hat, full_matrices=False)
        merged[key] = (left.mul_(s_hat) @ (u @ vh)).mul_(scaling).add_(base)
    return merged

def floor_from_files(pretrained_path, finetuned_paths, method: str, cutoff: float = PAPER_CUTOFF,
                     scaling: float = 0.3) -> dict:
    """FR's paper merge (``method="fr"``) or task arithmetic from safetensors files in the least
    plain torch: the pretrained state loaded once, each fine-tuned file opened with
    ``safe_open`` and ``v_i = θ_i − θ_pre`` made per key; FR's λ pass reads every fine-tuned
    file once before the merge pass. (A tensor that ``safe_open`` hands out may share memory
    with the next read of the same key: it is never written in place here.)"""
    from safetensors import safe_open
    from safetensors.torch import load_file

    pretrained = load_file(str(pretrained_path))
    files = [safe_open(str(path), "pt") for path in finetuned_paths]
    keys = list(pretrained)
    if method == "fr":
        count = sum(pretrained[key].numel() for key in keys)
        energies = [sum(float((f.get_tensor(key) - pretrained[key]).abs_().sum()) for key in keys)
                    / count for f in files]
        coefficients = [energy / sum(energies) for energy in energies]
    else:
        coefficients = [scaling] * len(files)
    merged = {}
    for key in keys:
        base = pretrained[key]
        total = (files[0].get_tensor(key) - base).mul_(coefficients[0])
        for coefficient, f in zip(coefficients[1:], files[1:]):
            total.add_(f.get_tensor(key) - base, alpha=coefficient)
        if method == "fr":
            h, w = total.shape
            total = torch.fft.irfft2(torch.fft.rfft2(total).mul_(floor_paper_half_mask(h, w, cutoff, total.device)),
                                     s=(h, w))
        merged[key] = total.add_(base)
    return merged


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


def _from_files(pretrained: dict, vectors: Sequence[dict], repeats: int, device: torch.device) -> dict:
    """Seconds of an FR and a task-arithmetic merge read from safetensors files, as a user runs them,
    and of their floors (:func:`floor_from_files`, on the CPU); the largest difference of each
    floor's merged state from the toolkit's, relative to the largest merged delta."""
    import tempfile
    from pathlib import Path

    from ..io import save_state

    with tempfile.TemporaryDirectory(prefix="fmv-bench-filter-") as folder:
        save_state(pretrained, Path(folder) / "pre.safetensors")
        paths = []
        for i, vector in enumerate(vectors):
            paths.append(Path(folder) / f"ft{i}.safetensors")
            save_state({key: pretrained[key] + vector[key] for key in pretrained}, paths[-1])
        pre_path = Path(folder) / "pre.safetensors"

        def run(name: str):
            return lambda: _compute_all(merge(name, pre_path, paths, device=device))

        out = {"fr_files_s": best_time(run("fr"), repeats, device),
               "task_arithmetic_files_s": best_time(run("task_arithmetic"), repeats, device)}
        if device.type == "cpu":
            for name, label in (("fr", "fr_files"), ("task_arithmetic", "task_arithmetic_files")):
                out[f"{label}_floor_s"] = best_time(lambda name=name: floor_from_files(pre_path, paths, name),
                                                    repeats, device)
                floor = floor_from_files(pre_path, paths, name)
                toolkit = merge(name, pre_path, paths, device=device)
                out[f"{label}_floor_max_relative_difference"] = _relative_difference(toolkit, floor, pretrained,
                                                                                    list(floor)[:4])
        return out


def _relative_difference(state, expected: dict, pretrained: dict, keys) -> float:
    """The largest over `keys` of ``‖state − expected‖ / ‖expected − θ_pre‖`` (Frobenius norms, as
    ``reference_max_relative_difference``)."""
    worst = 0.0
    for key in keys:
        delta = float((expected[key] - pretrained[key]).norm())
        worst = max(worst, float((state[key].to(expected[key].device) - expected[key]).norm()) / max(delta, 1e-30))
    return worst


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

    def fr_floor():
        floor_fr_paper(pretrained, raw_vectors, stages=stages.setdefault("current", {}))

    def official_floor():
        floor_fr_official(pretrained, raw_vectors)

    def task_arithmetic_floor():
        floor_task_arithmetic(pretrained, raw_vectors)

    stages: dict = {}
    toolkit_fr()
    fr_floor()
    files = _from_files(pretrained, raw_vectors, repeats, target)
    fr_s = best_time(toolkit_fr, repeats, target)
    fr_floor_s, fr_floor_stages = math.inf, {}
    for _ in range(repeats):  # best of repeats, keeping that repeat's stages
        stages["current"] = {}
        seconds = best_time(fr_floor, 1, target)
        if seconds < fr_floor_s:
            fr_floor_s, fr_floor_stages = seconds, dict(stages["current"])
    reference_s = best_time(reference_fr, repeats, target)
    task_arithmetic_s = best_time(task_arithmetic, repeats, target)
    task_arithmetic_floor_s = best_time(task_arithmetic_floor, repeats, target)
    fr_official_s = best_time(toolkit_official, repeats, target)
    fr_official_floor_s = best_time(official_floor, repeats, target)
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
    floors = {"fr": floor_fr_paper({k: pretrained[k] for k in checked}, [{k: v[k] for k in checked}
                                                                          for v in raw_vectors]),
              "official": floor_fr_official({k: pretrained[k] for k in checked},
                                            [{k: v[k] for k in checked} for v in raw_vectors]),
              "task_arithmetic": floor_task_arithmetic({k: pretrained[k] for k in checked},
                                                       [{k: v[k] for k in checked} for v in raw_vectors])}
    # the λ of the floor above pools only the checked keys: compare with the toolkit's merge of those keys
    subset = {k: pretrained[k] for k in checked}
    subset_vectors = [TaskVector.from_tensors({k: v[k] for k in checked}, name=f"task{i}")
                      for i, v in enumerate(raw_vectors)]
    floor_differences = {
        "fr": _relative_difference(merge("fr", subset, subset_vectors, device=target), floors["fr"], subset, checked),
        "official": _relative_difference(official, floors["official"], pretrained, checked),
        "task_arithmetic": _relative_difference(merge("task_arithmetic", pretrained, vectors, device=target),
                                                floors["task_arithmetic"], pretrained, checked)}
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
        "fr_floor_s": fr_floor_s,
        "fr_x_floor": fr_s / fr_floor_s,
        "fr_floor_stages_s": fr_floor_stages,
        "fr_floor": "λ pass (v.abs().sum() per task and key) + per key Σ λ_i v_i (add_) + rfft2 · cached "
                    "half mask · irfft2 of the sum + θ_pre",
        "reference_s": reference_s,
        "task_arithmetic_s": task_arithmetic_s,
        "task_arithmetic_floor_s": task_arithmetic_floor_s,
        "task_arithmetic_x_floor": task_arithmetic_s / task_arithmetic_floor_s,
        "reference_over_fr": reference_s / fr_s,
        "fr_over_task_arithmetic": fr_s / task_arithmetic_s,
        "fr_files_s": files["fr_files_s"],
        "task_arithmetic_files_s": files["task_arithmetic_files_s"],
        "fr_over_task_arithmetic_files": files["fr_files_s"] / files["task_arithmetic_files_s"],
        "fr_files_floor_s": files.get("fr_files_floor_s"),
        "fr_files_x_floor": files["fr_files_s"] / files["fr_files_floor_s"] if "fr_files_floor_s" in files else None,
        "task_arithmetic_files_floor_s": files.get("task_arithmetic_files_floor_s"),
        "task_arithmetic_files_x_floor": files["task_arithmetic_files_s"] / files["task_arithmetic_files_floor_s"]
        if "task_arithmetic_files_floor_s" in files else None,
        "fr_official_s": fr_official_s,
        "fr_official_floor_s": fr_official_floor_s,
        "fr_official_x_floor": fr_official_s / fr_official_floor_s,
        "fr_official_floor": "per key: each task matrix rfft2 · cached symmetric half of the authors' mask · irfft2, "
                             "align coefficients from G(v_i).abs().mean(), Σ c_i G(v_i) · 0.7 + θ_pre",
        "authors_official_s": authors_official_s,
        "authors_over_fr_official": authors_official_s / fr_official_s,
        "filter_auto_s": filter_auto_s,
        "filter_fft_s": filter_fft_s,
        "filter_paths": {"x".join(map(str, shape)): filter_path(shape, spec, target)
                         for _, shape in CLIP_B32_BLOCKS},
        "reference_keys_checked": len(checked),
        "reference_max_relative_difference": difference,
        "authors_official_max_relative_difference": official_difference,
        "floor_max_relative_difference": floor_differences,
        "files_floor_max_relative_difference": {
            name: files.get(f"{name}_files_floor_max_relative_difference") for name in ("fr", "task_arithmetic")},
        "targets_met": {"fr_at_most_1.15_floor": fr_s <= 1.15 * fr_floor_s,
                        "fr_official_at_most_1.3_floor": fr_official_s <= 1.3 * fr_official_floor_s,
                        "reference_over_fr_at_least_8": reference_s / fr_s >= 8,
                        "fr_over_task_arithmetic_files_at_most_1.3":
                            files["fr_files_s"] / files["task_arithmetic_files_s"] <= 1.3,
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
