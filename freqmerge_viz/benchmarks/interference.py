"""``interference``: the paper's Table 1 measure on ViT-B/32 shapes, the toolkit against a plain torch loop.

A pretrained checkpoint and K = 8 fine-tuned ones with the 2-D block weights of CLIP ViT-B/32's
visual tower (12 layers: attention in-projection 2304×768, out-projection 768×768, MLP
3072×768 and 768×3072; float32; fine-tuned = pretrained + task i's N(0, (i·1e-3)²) noise) are
written as safetensors files into a temporary folder. Then, each in a child process so that its
peak memory is its own, on one device and with the same number of torch threads:

``toolkit``
    what ``freqmerge-viz interference`` computes: lazy task vectors
    (:meth:`~freqmerge_viz.TaskVector.from_states`) and
    :func:`~freqmerge_viz.analysis.interference_table` with the paper's filter (ideal high-pass
    at normalised radius 0.1): the unfiltered row and the filter row, streamed key by key.
``plain``
    the measure written as a plain torch loop over the same files (safetensors ``safe_open``):
    per key, stack the K task vectors, ``fft2``, ``abs``, population variance over the tasks,
    mean over bins; the mean over keys. The unfiltered row only.
``floor``
    the least plain torch that gives the unfiltered row, over the same files: per key, stack the
    K task vectors, ``rfft2`` (the half spectrum: a real matrix's amplitude is point-symmetric),
    ``abs``, the population variance over the tasks in the two-pass form (``mean``, then the
    mean squared deviation; ``torch.var`` over the task dimension is about 20 times slower on a
    CPU), and its mean over the full spectrum's bins (each half-spectrum column weighted by the
    bins it stands for); the mean over keys (:func:`floor_amplitude_variance`).
    ``toolkit_x_floor`` is the toolkit's time over this one.

Times are each child's work (interpreter start and imports excluded); ``*_peak_rss_mb`` is
each child's peak resident memory (``VmHWM``, MB = 10⁶ bytes), interpreter and torch
included. Both read files that were just written, from the page cache.

``--in-memory`` measures instead, in this process, the toolkit's
:func:`~freqmerge_viz.amplitude_variance` of K task vectors already in memory (CLIP ViT-B/32
block shapes, :func:`~freqmerge_viz.benchmarks.filter.synthetic_states`; no files) against
the same floor and the plain per-key ``fft2`` loop (:func:`run_in_memory`), and
:func:`~freqmerge_viz.analysis.interference_table` (unfiltered and paper rows, the streamed
path) on the same vectors.

``--sharded`` measures instead the toolkit on a synthetic sharded float16 model of about 3 GB
(:mod:`~freqmerge_viz.benchmarks.stream`'s LLM-like layout, 28 layers, hidden 2048, MLP 5632,
vocabulary 32000) with K = 3: its time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from ..backend import resolve_device
from ..errors import ParameterError
from ..io import save_state
from .filter import CLIP_B32_BLOCKS, PAPER_CUTOFF, _with_threads, best_time, clip_b32_shapes, synthetic_states
from .stream import CHILD_HEAD, llm_shapes, run_child, synthetic_checkpoint

SHARDED = {"layers": 28, "hidden": 2048, "intermediate": 5632, "vocab": 32000, "tasks": 3, "shard": "2GB"}
SHARDED_QUICK = {"layers": 2, "hidden": 64, "intermediate": 96, "vocab": 128, "tasks": 3, "shard": "40KB"}
"""Sizes of the ``--sharded`` run (about 3.0 GB per checkpoint) and of ``--sharded --quick``."""

CHILD = CHILD_HEAD + r"""
device = torch.device(args["device"])
if args["task"] in ("plain", "floor"):
    from safetensors import safe_open
    from freqmerge_viz.benchmarks.interference import floor_key_variance
else:
    import freqmerge_viz as fmv
    from freqmerge_viz.analysis import FilterSetting, interference_table
start_rss = status("VmRSS")
start = time.perf_counter()
if args["task"] == "plain":
    pre = safe_open(args["pretrained"], "pt")
    fts = [safe_open(path, "pt") for path in args["finetuned"]]
    per_key = []
    for key in pre.keys():
        base = pre.get_tensor(key).to(device)
        stack = torch.stack([ft.get_tensor(key).to(device) - base for ft in fts])
        per_key.append(torch.fft.fft2(stack).abs().var(dim=0, unbiased=False).mean().item())
    result = {"unfiltered": sum(per_key) / len(per_key)}
elif args["task"] == "floor":
    def opened(path):  # key -> an open file holding it (one file, or every shard of a folder)
        import glob, os
        files = [path] if path.endswith(".safetensors") else sorted(glob.glob(os.path.join(path, "*.safetensors")))
        return {key: handle for handle in (safe_open(f, "pt") for f in files) for key in handle.keys()}
    pre = opened(args["pretrained"])
    fts = [opened(path) for path in args["finetuned"]]
    per_key = []
    for key in sorted(pre):
        if len(pre[key].get_slice(key).get_shape()) != 2:
            continue
        base = pre[key].get_tensor(key).to(device, torch.float32)
        stack = torch.stack([ft[key].get_tensor(key).to(device, torch.float32) - base for ft in fts])
        del base
        per_key.append(floor_key_variance(stack))
        del stack
    result = {"unfiltered": sum(per_key) / len(per_key)}
else:
    vectors = [fmv.TaskVector.from_states(args["pretrained"], path, device=device) for path in args["finetuned"]]
    table = interference_table(vectors, [FilterSetting("paper", fmv.FilterSpec(args["cutoff"]))], device=device)
    result = {"unfiltered": float(table.loc[0, "all_bins"]), "filtered": float(table.loc[1, "all_bins"]),
              "table": table.to_dict(orient="records")}
if device.type == "cuda":
    torch.cuda.synchronize(device)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss": status("VmHWM"), "start_rss": start_rss,
                  "threads": torch.get_num_threads(), **result}))
"""


def _child(task: dict) -> dict:
    return run_child(CHILD, task, "interference")


_FLOOR_WEIGHTS: dict = {}


def floor_key_variance(stack: torch.Tensor) -> float:
    """The floor's value for one key: ``stack[K, H, W]`` (float32 here; float64 works too) →
    ``rfft2``, ``abs``, the population variance over the tasks (two-pass: mean, then mean squared
    deviation), its mean over the full spectrum's ``H·W`` bins from the half spectrum (column
    weights 1 or 2, cached per width)."""
    h, w = stack.shape[-2:]
    amplitude = torch.fft.rfft2(stack).abs()
    mean = amplitude.mean(dim=0)
    variance = amplitude.sub_(mean).square_().mean(dim=0)
    where = (w, str(stack.device), stack.dtype)
    if where not in _FLOOR_WEIGHTS:
        weights = torch.full((w // 2 + 1,), 2.0, device=stack.device, dtype=stack.dtype)
        weights[0] = 1.0
        if w % 2 == 0:
            weights[-1] = 1.0
        _FLOOR_WEIGHTS[where] = weights
    return float(torch.mv(variance, _FLOOR_WEIGHTS[where]).sum(dtype=torch.float64)) / (h * w)


def floor_amplitude_variance(vectors: Sequence[dict], device: torch.device | str = "cpu") -> float:
    """The floor of :func:`~freqmerge_viz.amplitude_variance`'s ``mean`` for K in-memory task
    vectors whose entries are all matrices (``{key: [H, W] float32}``): :func:`floor_key_variance`
    of each key's stack, the mean over keys."""
    per_key = [floor_key_variance(torch.stack([vector[key].to(device) for vector in vectors]))
               for key in vectors[0]]
    return sum(per_key) / len(per_key)


def naive_amplitude_variance(vectors: Sequence[dict], device: torch.device | str = "cpu") -> float:
    """The plain per-key loop of the ``plain`` child, on in-memory task vectors: stack, complex
    ``fft2``, ``abs``, ``torch.var`` over the tasks, mean over bins; the mean over keys."""
    per_key = [torch.fft.fft2(torch.stack([vector[key].to(device) for vector in vectors])).abs()
               .var(dim=0, unbiased=False).mean().item() for key in vectors[0]]
    return sum(per_key) / len(per_key)


def write_models(shapes: dict[str, tuple[int, ...]], k: int, folder: Path, seed: int = 0,
                 dtype: torch.dtype = torch.float32, shard: str | None = None) -> list[Path]:
    """Write the pretrained model and `k` fine-tuned ones into `folder` (model 0 first), key by
    key (:func:`~freqmerge_viz.benchmarks.stream.synthetic_checkpoint`); a ``.safetensors`` file
    each, or a sharded folder each when `shard` is given."""
    paths = []
    for model in range(k + 1):
        name = "pretrained" if model == 0 else f"task{model}"
        target = folder / (name if shard else f"{name}.safetensors")
        save_state(synthetic_checkpoint(shapes, model, seed, dtype), target, max_shard_size=shard)
        paths.append(target)
    return paths


def _bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _measure(shapes, k: int, tasks: Sequence[str], seed: int, dtype: torch.dtype, shard: str | None, workdir,
             keep: bool, **options) -> tuple[dict, dict]:
    """Write the models into a fresh folder, run each child task on them; return the children's
    results by task and facts about the files (``generate_s``, ``input_bytes``, ``checkpoint_bytes``,
    ``files_per_checkpoint``, ``workdir``)."""
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="freqmerge-interference-", dir=workdir))
    try:
        start = time.perf_counter()
        paths = write_models(shapes, k, base, seed, dtype, shard)
        facts = {"generate_s": time.perf_counter() - start, "input_bytes": sum(_bytes(p) for p in paths),
                 "checkpoint_bytes": _bytes(paths[0]), "workdir": str(base) if keep else None,
                 "files_per_checkpoint": 1 if paths[0].is_file() else len(list(paths[0].glob("*.safetensors")))}
        common = {"pretrained": str(paths[0]), "finetuned": [str(p) for p in paths[1:]], "cutoff": PAPER_CUTOFF,
                  **options}
        return {task: _child({"task": task, **common}) for task in tasks}, facts
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _conditions(device: torch.device, child: dict) -> dict:
    return {"device": str(device), "threads": child["threads"], "load_average": list(os.getloadavg())}


def run(quick: bool = False, layers: int | None = None, k: int = 8, threads: int | None = 1, device=None,
        seed: int = 0, workdir: str | os.PathLike | None = None, keep: bool = False) -> dict:
    """Write the ViT-B/32-shaped models, time the toolkit and the plain loop in child processes."""
    layers = layers if layers is not None else (1 if quick else 12)
    if layers < 1 or k < 2:
        raise ParameterError(f"layers must be >= 1 and k >= 2, got {layers}, {k}")
    target = resolve_device(device)
    shapes = clip_b32_shapes(layers)
    children, facts = _measure(shapes, k, ("plain", "floor", "toolkit"), seed, torch.float32, None, workdir, keep,
                               threads=threads, device=str(target))
    plain, floor, toolkit = children["plain"], children["floor"], children["toolkit"]
    return {
        "benchmark": "interference",
        **_conditions(target, toolkit),
        "k": k,
        "layers": layers,
        "shapes": {name: list(shape) for name, shape in CLIP_B32_BLOCKS},
        "dtype": "float32",
        "cutoff": PAPER_CUTOFF,
        "parameters_per_checkpoint": sum(math.prod(shape) for shape in shapes.values()),
        "input_gb": facts["input_bytes"] / 1e9,
        "generate_s": facts["generate_s"],
        "toolkit_s": toolkit["seconds"],
        "plain_s": plain["seconds"],
        "toolkit_over_plain": toolkit["seconds"] / plain["seconds"],
        "floor": "per key: stack the K task vectors read with safe_open, rfft2, abs, two-pass population variance "
                 "over the tasks, mean over the full spectrum's bins (half-spectrum column weights); mean over keys "
                 "(the unfiltered row only)",
        "floor_s": floor["seconds"],
        "toolkit_x_floor": toolkit["seconds"] / floor["seconds"],
        "plain_x_floor": plain["seconds"] / floor["seconds"],
        "toolkit_peak_rss_mb": toolkit["peak_rss"] / 1e6,
        "plain_peak_rss_mb": plain["peak_rss"] / 1e6,
        "floor_peak_rss_mb": floor["peak_rss"] / 1e6,
        "toolkit_start_rss_mb": toolkit["start_rss"] / 1e6,
        "plain_start_rss_mb": plain["start_rss"] / 1e6,
        "unfiltered": toolkit["unfiltered"],
        "filtered": toolkit["filtered"],
        "plain_unfiltered": plain["unfiltered"],
        "floor_unfiltered": floor["unfiltered"],
        "relative_difference": abs(toolkit["unfiltered"] - plain["unfiltered"]) / abs(plain["unfiltered"]),
        "floor_relative_difference": abs(toolkit["unfiltered"] - floor["unfiltered"]) / abs(floor["unfiltered"]),
        "workdir": facts["workdir"],
        "targets_met": {"toolkit_no_slower_than_plain": toolkit["seconds"] <= plain["seconds"],
                        "toolkit_peak_rss_at_most_1500_mb": toolkit["peak_rss"] <= 1.5e9},
    }


def run_in_memory(quick: bool = False, layers: int | None = None, k: int = 8, threads: int | None = 1, device=None,
                  seed: int = 0, repeats: int = 3) -> dict:
    """Time :func:`~freqmerge_viz.amplitude_variance` of K in-memory task vectors against its floor
    (:func:`floor_amplitude_variance`) and the plain ``fft2`` loop (:func:`naive_amplitude_variance`),
    and :func:`~freqmerge_viz.analysis.interference_table` (unfiltered and paper rows) on the same
    vectors; each the best of `repeats`, in this process with `threads` torch threads."""
    return _with_threads(threads, lambda: _run_in_memory(quick, layers, k, device, seed, repeats))


def _run_in_memory(quick: bool, layers: int | None, k: int, device, seed: int, repeats: int) -> dict:
    import freqmerge_viz as fmv
    from ..analysis import FilterSetting, interference_table

    layers = layers if layers is not None else (1 if quick else 12)
    if layers < 1 or k < 2 or repeats < 1:
        raise ParameterError(f"layers must be >= 1, k >= 2 and repeats >= 1, got {layers}, {k}, {repeats}")
    target = resolve_device(device)
    shapes = clip_b32_shapes(layers)
    _, raw = synthetic_states(shapes, k, seed, target)
    vectors = [fmv.TaskVector.from_tensors(tv, name=f"task{i}") for i, tv in enumerate(raw)]
    settings = [FilterSetting("paper", fmv.FilterSpec(PAPER_CUTOFF))]
    values: dict[str, float] = {}

    def record(name, work):
        def timed():
            values[name] = work()
        return timed

    toolkit = record("toolkit", lambda: fmv.amplitude_variance(vectors, device=target).mean)
    floor = record("floor", lambda: floor_amplitude_variance(raw, target))
    naive = record("plain", lambda: naive_amplitude_variance(raw, target))
    table = record("interference_table", lambda: float(interference_table(vectors, settings, device=target)
                                                       .loc[0, "all_bins"]))
    toolkit()  # warm-up: masks, weights and FFT plans
    seconds = {name: best_time(work, repeats, target)
               for name, work in (("floor", floor), ("toolkit", toolkit), ("plain", naive),
                                  ("interference_table", table))}
    return {
        "benchmark": "interference --in-memory",
        **_conditions(target, {"threads": torch.get_num_threads()}),
        "k": k,
        "layers": layers,
        "shapes": {name: list(shape) for name, shape in CLIP_B32_BLOCKS},
        "dtype": "float32",
        "repeats": repeats,
        "parameters_per_task": sum(math.prod(shape) for shape in shapes.values()),
        "toolkit": "freqmerge_viz.amplitude_variance(task_vectors) (TaskVector.from_tensors, in memory)",
        "toolkit_s": seconds["toolkit"],
        "floor": "per key: torch.stack of the K task vectors, rfft2, abs, two-pass population variance over the "
                 "tasks, mean over the full spectrum's bins (half-spectrum column weights); mean over keys",
        "floor_s": seconds["floor"],
        "toolkit_x_floor": seconds["toolkit"] / seconds["floor"],
        "plain": "per key: torch.stack, fft2, abs, torch.var over the tasks, mean over bins; mean over keys",
        "plain_s": seconds["plain"],
        "plain_x_floor": seconds["plain"] / seconds["floor"],
        "toolkit_over_plain": seconds["toolkit"] / seconds["plain"],
        "interference_table_s": seconds["interference_table"],
        "interference_table_x_floor": seconds["interference_table"] / seconds["floor"],
        "unfiltered": values["toolkit"],
        "floor_unfiltered": values["floor"],
        "plain_unfiltered": values["plain"],
        "interference_table_unfiltered": values["interference_table"],
        "floor_relative_difference": abs(values["toolkit"] - values["floor"]) / abs(values["floor"]),
        "plain_relative_difference": abs(values["toolkit"] - values["plain"]) / abs(values["plain"]),
        "targets_met": {"toolkit_at_most_1.2_floor": seconds["toolkit"] <= 1.2 * seconds["floor"],
                        "toolkit_no_slower_than_plain": seconds["toolkit"] <= seconds["plain"]},
    }


def run_sharded(quick: bool = False, threads: int | None = 1, device=None, seed: int = 0,
                workdir: str | os.PathLike | None = None, keep: bool = False, **sizes) -> dict:
    """The toolkit's interference on a synthetic sharded float16 model (:data:`SHARDED` sizes,
    overridable by keyword), K = ``tasks``, in a child process: time and peak memory."""
    chosen = dict(SHARDED_QUICK if quick else SHARDED)
    chosen.update({name: value for name, value in sizes.items() if value is not None})
    target = resolve_device(device)
    shapes = llm_shapes(chosen["layers"], chosen["hidden"], chosen["intermediate"], chosen["vocab"])
    children, facts = _measure(shapes, chosen["tasks"], ("floor", "toolkit"), seed, torch.float16, chosen["shard"],
                               workdir, keep, threads=threads, device=str(target))
    floor, toolkit = children["floor"], children["toolkit"]
    largest = max(shapes.values(), key=math.prod)
    return {
        "benchmark": "interference --sharded",
        **_conditions(target, toolkit),
        "sizes": chosen,
        "dtype": "float16",
        "parameters_per_checkpoint": sum(math.prod(s) for s in shapes.values()),
        "checkpoint_gb": facts["checkpoint_bytes"] / 1e9,
        "shards_per_checkpoint": facts["files_per_checkpoint"],
        "largest_key": list(largest),
        "largest_key_float32_mb": math.prod(largest) * 4 / 1e6,
        "generate_s": facts["generate_s"],
        "toolkit_s": toolkit["seconds"],
        "toolkit_peak_rss_mb": toolkit["peak_rss"] / 1e6,
        "toolkit_start_rss_mb": toolkit["start_rss"] / 1e6,
        "floor": "per 2-D key: stack the K task vectors (float32) read from the shards with safe_open, rfft2, abs, "
                 "two-pass population variance over the tasks, mean over the full spectrum's bins; mean over keys "
                 "(the unfiltered row only; it holds K + 1 float32 copies of the key)",
        "floor_s": floor["seconds"],
        "toolkit_x_floor": toolkit["seconds"] / floor["seconds"],
        "floor_peak_rss_mb": floor["peak_rss"] / 1e6,
        "unfiltered": toolkit["unfiltered"],
        "floor_unfiltered": floor["unfiltered"],
        "floor_relative_difference": abs(toolkit["unfiltered"] - floor["unfiltered"]) / abs(floor["unfiltered"]),
        "filtered": toolkit["filtered"],
        "workdir": facts["workdir"],
        "targets_met": {"toolkit_peak_rss_at_most_2000_mb": toolkit["peak_rss"] <= 2e9},
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench interference``: print :func:`run`'s (or :func:`run_sharded`'s) result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench interference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 layer instead of 12 (tiny sizes with --sharded)")
    parser.add_argument("--layers", type=int, default=None, help="CLIP layers (default 12, 1 with --quick)")
    parser.add_argument("--k", type=int, default=8, help="number of fine-tuned models (default 8)")
    parser.add_argument("--sharded", action="store_true",
                        help="the ~3 GB sharded float16 model with K = 3 instead (toolkit and floor)")
    parser.add_argument("--in-memory", action="store_true",
                        help="amplitude_variance of task vectors already in memory (no files), against its floor "
                             "and the plain fft2 loop, in this process")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--in-memory: timed repeats, the best counts (default 3)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the children (default 1)")
    parser.add_argument("--workdir", default=None, help="directory for the checkpoints (a fresh subdirectory, "
                                                        "removed afterwards; default: the system's temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    common = dict(quick=args.quick, threads=args.threads, device=args.device, seed=args.seed, workdir=args.workdir,
                  keep=args.keep)
    if args.in_memory:
        result = run_in_memory(quick=args.quick, layers=args.layers, k=args.k, threads=args.threads,
                               device=args.device, seed=args.seed, repeats=args.repeats)
    elif args.sharded:
        result = run_sharded(**common)
    else:
        result = run(layers=args.layers, k=args.k, **common)
    print(json.dumps(result))
    return result
