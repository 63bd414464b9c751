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

Times are each child's work (interpreter start and imports excluded); ``*_peak_rss_mb`` is
each child's peak resident memory (``VmHWM``, MB = 10⁶ bytes), interpreter and torch
included. Both read files that were just written, from the page cache.

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
from .filter import CLIP_B32_BLOCKS, PAPER_CUTOFF, clip_b32_shapes
from .stream import CHILD_HEAD, llm_shapes, run_child, synthetic_checkpoint

SHARDED = {"layers": 28, "hidden": 2048, "intermediate": 5632, "vocab": 32000, "tasks": 3, "shard": "2GB"}
SHARDED_QUICK = {"layers": 2, "hidden": 64, "intermediate": 96, "vocab": 128, "tasks": 3, "shard": "40KB"}
"""Sizes of the ``--sharded`` run (about 3.0 GB per checkpoint) and of ``--sharded --quick``."""

CHILD = CHILD_HEAD + r"""
device = torch.device(args["device"])
if args["task"] == "plain":
    from safetensors import safe_open
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
    children, facts = _measure(shapes, k, ("plain", "toolkit"), seed, torch.float32, None, workdir, keep,
                               threads=threads, device=str(target))
    plain, toolkit = children["plain"], children["toolkit"]
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
        "toolkit_peak_rss_mb": toolkit["peak_rss"] / 1e6,
        "plain_peak_rss_mb": plain["peak_rss"] / 1e6,
        "toolkit_start_rss_mb": toolkit["start_rss"] / 1e6,
        "plain_start_rss_mb": plain["start_rss"] / 1e6,
        "unfiltered": toolkit["unfiltered"],
        "filtered": toolkit["filtered"],
        "plain_unfiltered": plain["unfiltered"],
        "relative_difference": abs(toolkit["unfiltered"] - plain["unfiltered"]) / abs(plain["unfiltered"]),
        "workdir": facts["workdir"],
        "targets_met": {"toolkit_no_slower_than_plain": toolkit["seconds"] <= plain["seconds"],
                        "toolkit_peak_rss_at_most_1500_mb": toolkit["peak_rss"] <= 1.5e9},
    }


def run_sharded(quick: bool = False, threads: int | None = 1, device=None, seed: int = 0,
                workdir: str | os.PathLike | None = None, keep: bool = False, **sizes) -> dict:
    """The toolkit's interference on a synthetic sharded float16 model (:data:`SHARDED` sizes,
    overridable by keyword), K = ``tasks``, in a child process: time and peak memory."""
    chosen = dict(SHARDED_QUICK if quick else SHARDED)
    chosen.update({name: value for name, value in sizes.items() if value is not None})
    target = resolve_device(device)
    shapes = llm_shapes(chosen["layers"], chosen["hidden"], chosen["intermediate"], chosen["vocab"])
    children, facts = _measure(shapes, chosen["tasks"], ("toolkit",), seed, torch.float16, chosen["shard"], workdir,
                               keep, threads=threads, device=str(target))
    toolkit = children["toolkit"]
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
        "unfiltered": toolkit["unfiltered"],
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
                        help="the ~3 GB sharded float16 model with K = 3 instead (toolkit only)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the children (default 1)")
    parser.add_argument("--workdir", default=None, help="directory for the checkpoints (a fresh subdirectory, "
                                                        "removed afterwards; default: the system's temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    common = dict(quick=args.quick, threads=args.threads, device=args.device, seed=args.seed, workdir=args.workdir,
                  keep=args.keep)
    result = run_sharded(**common) if args.sharded else run(layers=args.layers, k=args.k, **common)
    print(json.dumps(result))
    return result
