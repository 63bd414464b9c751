"""``singular``: the pair singular measures (TSV's STI, subspace overlap, Iso-C's alignment) over a
ViT-B/32 visual tower, the toolkit against the old per-pair loop and against the floor.

K = 4 seeded synthetic task vectors (:func:`~freqmerge_viz.benchmarks.filter.synthetic_states`,
float32, in memory) with the shapes of every matrix of open_clip ViT-B-32's visual tower
(:func:`tower_shapes`: the 48 block weights of the 12 layers, ``conv1`` seen as 768×3072,
the positional embedding 50×768 and the projection 768×512; 51 matrices), all 6 pairs of
tasks, on one device with the same number of torch threads (one by default). Each timing is the
best of ``repeats`` full passes, taken in rounds over every computation (a burst of load then
hits one round of each, not every repeat of one); every result is the per-pair mean of each measure over the
matrices, and the JSON says how far the computations agree.

``toolkit``
    :func:`~freqmerge_viz.singular.pair_singular_interference` (default ``gram`` solver):
    streamed key by key, each task decomposed once for all its pairs.
``toolkit_svd``
    the same with ``solver="svd"`` (batched ``torch.linalg.svd``, the old numbers exactly).
``old``
    the loop ``pair_singular_table`` ran before: per pair,
    :func:`~freqmerge_viz.singular.singular_interference` of the pair's two task vectors (both
    tasks' SVDs again for every pair, plus the merged matrix's, and every per-task spectrum
    measure of :func:`~freqmerge_viz.singular.key_singular`). Too slow for the whole tower on a
    2-core CPU, so it runs on a subset and is extrapolated (below).
``floor_svd`` (:func:`floor_svd`)
    the least plain torch giving the old numbers with SVDs: per matrix one ``torch.linalg.svd``
    per task, and per pair one SVD of the pair's sum (Iso-C's alignment is measured against the
    merged matrix's own top singular subspace, so every pair needs that decomposition) and the
    pair products (``UᵀU``, ``VᵀV`` in float64, STI, overlap, projections).
``floor`` (:func:`floor_gram`)
    the least plain torch known to give the same numbers (to 1e-5 relative on float32 data): the
    toolkit's float64 Gram algorithm without its bookkeeping: per matrix one Gram product and
    one ``eigh`` per task, and per pair one cross Gram product, one ``eigh`` of the merged Gram
    and the small ``k × n`` products. ``toolkit_x_floor`` is the toolkit's time over this one.

Timings: the whole tower (``tower``: 51 matrices) for ``toolkit`` and ``floor``; every method
on a subset, split in ``layer`` (layer 0's four block weights) and ``extras`` (conv1, the
positional embedding and the projection), from which ``*_tower_estimate_s`` = 12 × layer +
extras (the tower is 12 such layers and the extras; checked against the measured tower for
the toolkit and the floor). ``estimate_s`` is what the toolkit prints before the whole tower
(:func:`~freqmerge_viz.singular.pair_singular_estimate`, from timing one matrix).
``--quick``: a tower 24 times narrower (width 32) with 2 layers, every method on all of it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from typing import Sequence

import numpy as np
import torch

from ..backend import resolve_device
from ..errors import ParameterError
from ..singular import pair_means, pair_singular_estimate, pair_singular_interference, rank_for_norm_share
from ..singular import singular_interference
from ..taskvector import TaskVector
from .filter import _synchronize, _with_threads, synthetic_states

MEASURES = ("sti", "sti_normalized", "overlap", "alignment")
"""The per-pair means the analysis uses (``pair_singular_table``)."""


def tower_shapes(layers: int = 12, width: int = 768, patch: int = 32, positions: int = 50,
                 embedding: int = 512) -> dict[str, tuple[int, ...]]:
    """Key → shape of every matrix (2-D or more) of an open_clip ViT visual tower: ``conv1``
    (``width × 3 × patch × patch``), the positional embedding, each layer's attention in- and
    out-projection and MLP weights, and the output projection. ViT-B-32 by default (51 matrices)."""
    shapes: dict[str, tuple[int, ...]] = {"visual.conv1.weight": (width, 3, patch, patch),
                                          "visual.positional_embedding": (positions, width)}
    blocks = (("attn.in_proj_weight", (3 * width, width)), ("attn.out_proj.weight", (width, width)),
              ("mlp.c_fc.weight", (4 * width, width)), ("mlp.c_proj.weight", (width, 4 * width)))
    for i in range(layers):
        shapes.update({f"visual.transformer.resblocks.{i}.{name}": shape for name, shape in blocks})
    shapes["visual.proj"] = (width, embedding)
    return shapes


QUICK = {"layers": 2, "width": 32, "patch": 4, "positions": 5, "embedding": 16}
"""The ``--quick`` tower."""


def _matrix(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.ndim == 2 else tensor.reshape(tensor.shape[0], -1)


# --------------------------------------------------------------------------- floors
def floor_svd(vectors: Sequence[dict], keys: Sequence[str], device: torch.device,
              share: float = 0.95) -> dict[tuple[int, int], dict[str, float]]:
    """Per pair, the means over `keys` of :data:`MEASURES` with SVDs: one ``torch.linalg.svd`` per
    task and matrix, one of each pair's sum, the pair products in float64 (k = ⌊min(H, W)/2⌋)."""
    pairs = list(itertools.combinations(range(len(vectors)), 2))
    sums = {pair: dict.fromkeys(MEASURES, 0.0) for pair in pairs}
    counts = {pair: dict.fromkeys(MEASURES, 0) for pair in pairs}
    for key in keys:
        mats = [_matrix(v[key]).to(device) for v in vectors]
        k = max(1, min(mats[0].shape) // 2)
        svds = [torch.linalg.svd(m, full_matrices=False) for m in mats]
        tops = [(u[:, :k].double(), s[:k].double(), vh[:k].T.double()) for u, s, vh in svds]
        del svds
        for a, b in pairs:
            (ua, sa, va), (ub, sb, vb) = tops[a], tops[b]
            u, v, s = torch.cat([ua, ub], 1), torch.cat([va, vb], 1), torch.cat([sa, sb])
            eye = torch.eye(2 * k, dtype=torch.float64, device=device)
            sti = float(((u.T @ u - eye) * s).matmul(v.T @ v - eye).abs().sum())
            mass = float(s.sum())
            overlap = math.sqrt(max(float((ua.T @ ub).square().sum()) / k, 0.0)
                                * max(float((va.T @ vb).square().sum()) / k, 0.0))
            mu, ms, _ = torch.linalg.svd(mats[a] + mats[b], full_matrices=False)
            k_m = rank_for_norm_share(ms.double(), share)
            basis = mu[:, :k_m].double()
            alignment = [float((basis.T @ mats[t].double()).norm()) / float(mats[t].double().norm()) if k_m
                         else math.nan for t in (a, b)]
            for name, value in (("sti", sti), ("sti_normalized", sti / mass if mass > 0 else math.nan),
                                ("overlap", overlap), ("alignment", sum(alignment) / 2)):
                if not math.isnan(value):
                    sums[(a, b)][name] += value
                    counts[(a, b)][name] += 1
    return {p: {m: sums[p][m] / counts[p][m] if counts[p][m] else math.nan for m in MEASURES} for p in pairs}


def floor_gram(vectors: Sequence[dict], keys: Sequence[str], device: torch.device,
               share: float = 0.95) -> dict[tuple[int, int], dict[str, float]]:
    """Per pair, the means over `keys` of :data:`MEASURES` by the float64 Gram algorithm: per task
    one Gram product and one ``eigh``, per pair one cross Gram, one ``eigh`` of the merged Gram and
    the ``k × n`` products (see :func:`~freqmerge_viz.singular.key_pair_singular`)."""
    pairs = list(itertools.combinations(range(len(vectors)), 2))
    sums = {pair: dict.fromkeys(MEASURES, 0.0) for pair in pairs}
    for key in keys:
        stack = torch.stack([_matrix(v[key]).to(device) for v in vectors]).double()
        transposed = stack.shape[1] < stack.shape[2]
        tall = stack.mT if transposed else stack
        del stack
        grams = tall.mT @ tall
        values, vecs = torch.linalg.eigh(grams)
        sigma, vecs = values.flip(-1).clamp_min(0).sqrt(), vecs.flip(-1)
        k = max(1, sigma.shape[-1] // 2)
        top_s, top_v = sigma[:, :k], vecs[:, :, :k]
        norms = grams.diagonal(dim1=-2, dim2=-1).sum(-1).sqrt()
        crosses = [tall[a].mT @ tall[b] for a, b in pairs]
        m_values, m_vecs = torch.linalg.eigh(torch.stack([grams[a] + grams[b] + x + x.T
                                                          for (a, b), x in zip(pairs, crosses)]))
        m_sigma, m_vecs = m_values.flip(-1).clamp_min(0).sqrt(), m_vecs.flip(-1)
        for (a, b), x, ms, mv in zip(pairs, crosses, m_sigma, m_vecs):
            cu = (top_v[a].T @ x @ top_v[b]) / (top_s[a][:, None] * top_s[b][None, :])
            cv = top_v[a].T @ top_v[b]
            sti = float(((cu * top_s[b]) @ cv.T).abs().sum() + ((cu.T * top_s[a]) @ cv).abs().sum())
            k_m = rank_for_norm_share(ms, share)
            basis = mv[:, :k_m]
            if transposed:
                alignment = [float((basis * (grams[t] @ basis)).sum().sqrt() / norms[t]) for t in (a, b)]
            else:
                alignment = [float(((basis.T @ along) / ms[:k_m, None]).norm() / norms[t])
                             for t, along in ((a, grams[a] + x.T), (b, grams[b] + x))]
            sums[(a, b)]["sti"] += sti
            sums[(a, b)]["sti_normalized"] += sti / float(top_s[a].sum() + top_s[b].sum())
            sums[(a, b)]["overlap"] += math.sqrt(float(cu.square().sum()) / k * float(cv.square().sum()) / k)
            sums[(a, b)]["alignment"] += sum(alignment) / 2
    return {p: {m: sums[p][m] / len(keys) for m in MEASURES} for p in pairs}


# --------------------------------------------------------------------------- the compared computations
def _as_pairs(table, names: Sequence[str]) -> dict[tuple[int, int], dict[str, float]]:
    index = {name: i for i, name in enumerate(names)}
    return {(index[r["task_a"]], index[r["task_b"]]): {m: float(r[m]) for m in MEASURES}
            for r in table.to_dict(orient="records")}


def toolkit(vectors: Sequence[TaskVector], keys: Sequence[str], device: torch.device, solver: str = "gram"):
    """Per-pair means by :func:`~freqmerge_viz.singular.pair_singular_interference`."""
    table = pair_singular_interference(vectors, include=list(keys), device=device, solver=solver, estimate=False)
    return _as_pairs(pair_means(table, MEASURES), [tv.name for tv in vectors])


def old_loop(vectors: Sequence[TaskVector], keys: Sequence[str], device: torch.device):
    """Per-pair means as ``pair_singular_table`` computed them before: one
    :func:`~freqmerge_viz.singular.singular_interference` per pair."""
    out = {}
    for a, b in itertools.combinations(range(len(vectors)), 2):
        measured = singular_interference([vectors[a], vectors[b]], include=list(keys), device=device)
        out[(a, b)] = {m: float(measured[m].mean()) for m in MEASURES}
    return out


def max_relative_difference(result: dict, expected: dict) -> float:
    """Largest ``|x − y| / |y|`` over every pair and measure (NaN where both are NaN counts as equal)."""
    worst = 0.0
    for pair, measures in expected.items():
        for name, y in measures.items():
            x = result[pair][name]
            if math.isnan(x) and math.isnan(y):
                continue
            worst = max(worst, abs(x - y) / max(abs(y), 1e-30)) if not (math.isnan(x) or math.isnan(y)) else math.inf
    return worst


def _timed(work, repeats: int, device: torch.device) -> tuple[float, dict]:
    best, result = math.inf, None
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        result = work()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def run(quick: bool = False, layers: int | None = None, tasks: int = 4, repeats: int = 1, device=None,
        threads: int | None = 1, seed: int = 0, skip_old: bool = False) -> dict:
    """Time the toolkit, the old loop and the floors; see the module docstring."""
    return _with_threads(threads, lambda: _run(quick, layers, tasks, repeats, device, seed, skip_old))


def _run(quick, layers, tasks, repeats, device, seed, skip_old) -> dict:
    sizes = dict(QUICK) if quick else {"layers": 12, "width": 768, "patch": 32, "positions": 50, "embedding": 512}
    if layers is not None:
        sizes["layers"] = layers
    if sizes["layers"] < 1 or tasks < 2 or repeats < 1:
        raise ParameterError(f"layers >= 1, tasks >= 2 and repeats >= 1 needed, got {sizes['layers']}, {tasks}, "
                             f"{repeats}")
    target = resolve_device(device)
    shapes = tower_shapes(**sizes)
    _, raw = synthetic_states(shapes, tasks, seed=seed)
    vectors = [TaskVector.from_tensors(v, name=f"t{i}") for i, v in enumerate(raw)]
    keys = list(shapes)
    layer = [key for key in keys if ".resblocks.0." in key]
    extras = [key for key in keys if ".resblocks." not in key]
    n_pairs = tasks * (tasks - 1) // 2
    load_start = [round(x, 2) for x in os.getloadavg()]
    matrix_shapes = [tuple(_matrix(torch.empty(s, device="meta")).shape) for s in shapes.values()]
    start = time.perf_counter()
    estimate_s, estimate_line = pair_singular_estimate(matrix_shapes, tasks, n_pairs, device=target)
    estimate_cost = time.perf_counter() - start
    result = {"benchmark": "singular", "device": str(target), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "load_average_start": load_start, "quick": quick, "sizes": sizes,
              "tasks": tasks, "pairs": n_pairs, "matrices": len(keys), "subset": {"layer": layer, "extras": extras},
              "repeats": repeats, "estimate_s": estimate_s, "estimate_line": estimate_line,
              "estimate_cost_s": estimate_cost}
    computations = {"toolkit": lambda ks: toolkit(vectors, ks, target),
                    "floor": lambda ks: floor_gram(raw, ks, target),
                    "toolkit_svd": lambda ks: toolkit(vectors, ks, target, "svd"),
                    "floor_svd": lambda ks: floor_svd(raw, ks, target)}
    if not skip_old:
        computations["old"] = lambda ks: old_loop(vectors, ks, target)
    parts = {"layer": layer, "extras": extras}
    plan = [(name, "tower", keys) for name in ("toolkit", "floor")]
    plan += [(name, part, part_keys) for name in computations for part, part_keys in parts.items()]
    best: dict[tuple[str, str], float] = {}
    outputs: dict[tuple[str, str], dict] = {}
    for _ in range(repeats):  # rounds over every computation, so that a load spike hits one round
        for name, part, part_keys in plan:
            seconds, outputs[(name, part)] = _timed(lambda: computations[name](part_keys), 1, target)
            best[(name, part)] = min(seconds, best.get((name, part), math.inf))
    for (name, part), seconds in best.items():
        result[f"{name}_{part}_s"] = seconds
    results = {name: outputs[(name, "tower")] for name in ("toolkit", "floor")}
    for name in computations:
        result[f"{name}_tower_estimate_s"] = sizes["layers"] * result[f"{name}_layer_s"] + result[f"{name}_extras_s"]
        results[f"{name}_subset"] = {part: outputs[(name, part)] for part in parts}
    tower = lambda name: result.get(f"{name}_tower_s", result[f"{name}_tower_estimate_s"])  # noqa: E731
    result["toolkit_x_floor"] = result["toolkit_tower_s"] / result["floor_tower_s"]
    result["toolkit_x_floor_svd"] = result["toolkit_tower_s"] / result["floor_svd_tower_estimate_s"]
    result["toolkit_svd_x_floor_svd"] = result["toolkit_svd_tower_estimate_s"] / result["floor_svd_tower_estimate_s"]
    if not skip_old:
        result["old_over_toolkit"] = result["old_tower_estimate_s"] / tower("toolkit")
        result["old_over_toolkit_subset"] = ((result["old_layer_s"] + result["old_extras_s"])
                                             / (result["toolkit_layer_s"] + result["toolkit_extras_s"]))
    result["estimate_over_measured"] = estimate_s / result["toolkit_tower_s"]
    reference = "old_subset" if not skip_old else "toolkit_svd_subset"
    differences = {}
    for name in computations:
        if f"{name}_subset" != reference:
            differences[name] = max(max_relative_difference(results[f"{name}_subset"][part],
                                                            results[reference][part]) for part in parts)
    differences["toolkit_tower_vs_floor"] = max_relative_difference(results["toolkit"], results["floor"])
    result["reference"] = reference.removesuffix("_subset")
    result["max_relative_difference"] = differences
    result["pair_means"] = {f"t{a}-t{b}": v for (a, b), v in results["toolkit"].items()}
    result["svd_expert_storage"] = svd_storage_timing(list(shapes.values()), repeats)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets_met"] = {"tower_within_5_min": result["toolkit_tower_s"] <= 300,
                             "svd_storage_within_1_min": result["svd_expert_storage"]["seconds"] <= 60}
    return result


def floor_svd_storage(shapes: Sequence[tuple[int, ...]], ranks: np.ndarray) -> np.ndarray:
    """The numbers a rank-r SVD expert stores, for every r in `ranks` at once (numpy): per matrix
    ``m·n`` where ``min(m, n) <= r``, else ``r·(m + n)``, plus every entry of the 0-d and 1-D keys."""
    matrices = np.array([(s[0], math.prod(s[1:])) for s in shapes if len(s) >= 2], dtype=np.int64).reshape(-1, 2)
    flat = sum(math.prod(s) for s in shapes if len(s) < 2)
    m, n = matrices[:, 0][None, :], matrices[:, 1][None, :]
    r = ranks[:, None]
    return np.where(np.minimum(m, n) <= r, m * n, r * (m + n)).sum(axis=1) + flat


def svd_storage_timing(shapes: Sequence[tuple[int, ...]], repeats: int = 1) -> dict:
    """Time of the SVD expert's storage at every rank up to the largest matrix side (what the
    expert-sparsity curves size their SVD experts by: :func:`~freqmerge_viz.experts.svd_storage_by_ranks`,
    from shapes, no SVD), best of `repeats`, against :func:`floor_svd_storage` (a plain numpy
    expression of the same counts)."""
    from ..experts import svd_storage_by_ranks

    sides = [min(s[0], math.prod(s[1:])) for s in shapes if len(s) >= 2]
    ranks = np.arange(1, max(sides, default=1) + 1)
    toolkit_s, floor_s = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        counts = svd_storage_by_ranks(shapes, ranks)
        toolkit_s = min(toolkit_s, time.perf_counter() - start)
        start = time.perf_counter()
        floor = floor_svd_storage(shapes, ranks)
        floor_s = min(floor_s, time.perf_counter() - start)
    return {"ranks": int(len(ranks)), "matrices": len(sides), "seconds": toolkit_s, "floor_seconds": floor_s,
            "x_floor": toolkit_s / floor_s if floor_s > 0 else None, "equal": bool(np.array_equal(counts, floor))}


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench singular``: print :func:`run`'s result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench singular", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tower of width 32 with 2 layers (for tests)")
    parser.add_argument("--layers", type=int, default=None, help="transformer layers (default 12, 2 with --quick)")
    parser.add_argument("--tasks", type=int, default=4, help="number of task vectors (default 4: 6 pairs)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats; the best counts (default 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-old", action="store_true", help="leave out the old per-pair loop (the slowest)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, layers=args.layers, tasks=args.tasks, repeats=args.repeats, device=args.device,
                 threads=args.threads, seed=args.seed, skip_old=args.skip_old)
    print(json.dumps(result))
    return result
