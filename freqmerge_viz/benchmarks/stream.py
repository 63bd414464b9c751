"""``stream``: FR-merging sharded fp16 checkpoints from disk to disk, against a plain copy.

A base and K fine-tuned checkpoints with an LLM-like layout (``model.layers.{i}`` with
``self_attn.{q,k,v,o}_proj`` of ``hidden × hidden``, ``mlp.{gate,up}_proj`` of
``intermediate × hidden`` and ``mlp.down_proj`` of ``hidden × intermediate``, two 1-D norms
per layer, an embedding and a final norm; float16) are written as safetensors shards with a
``model.safetensors.index.json`` each. Then, each in a child process so that its peak
memory is its own:

- ``fr``: :func:`freqmerge_viz.merge_job.merge_to_disk` with method ``fr`` (paper preset),
  writing a sharded merged checkpoint and ``merge.json``;
- ``copy``: :func:`freqmerge_viz.io.load_state` + :func:`freqmerge_viz.io.save_state` of
  every input checkpoint, shard by shard, with the same shard size;
- ``floor``: the same FR merge in the least plain torch (:data:`FLOOR`): ``safe_open`` on every
  shard, a λ pass (``Σ|θ_i − θ_pre|`` per task, every key read once), then per key
  ``Σ λ_i (θ_i − θ_pre)`` in float32, one high-pass of the sum (``rfft2``, a cached half mask,
  ``irfft2``) for the layers' matrices, ``θ_pre`` added, cast to float16 and written with
  ``safetensors.torch.save_file``, one output file per pretrained shard. ``fr_x_floor`` is FR's
  time over the floor's; ``floor_max_abs_difference`` compares the two outputs.

Throughput is GB (10⁹ bytes) of input checkpoint files per second of each child's work
(interpreter start and imports excluded); ``peak_rss_mb`` is the FR child's peak resident
memory (``VmHWM``, MB = 10⁶ bytes), interpreter and torch included. Both children read files
that were just written, so both read them from the page cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Sequence

import torch

from ..backend import resolve_device
from ..errors import ParameterError
from ..io import load_state, parse_size, save_state
from ..methods import merge
from ..taskvector import DerivedState

FULL = {"layers": 24, "hidden": 2048, "intermediate": 2560, "vocab": 8192, "tasks": 3, "shard": "400MB"}
QUICK = {"layers": 2, "hidden": 64, "intermediate": 96, "vocab": 128, "tasks": 3, "shard": "40KB"}
"""Sizes of the full run (about 1.6 GB per checkpoint) and of ``--quick`` (about 0.2 MB)."""

CHILD_HEAD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["root"])
import torch

def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))

if args["threads"]:
    torch.set_num_threads(args["threads"])
"""
"""The start of a benchmark child's script (:func:`run_child`): its arguments, ``status(field)``
(bytes of a ``/proc/self/status`` memory field such as ``VmHWM``) and the thread count."""

CHILD = CHILD_HEAD + r"""
from freqmerge_viz.io import load_state, save_state
from freqmerge_viz.merge_job import merge_to_disk

start_rss = status("VmRSS")
start = time.perf_counter()
if args["task"] == "floor":
    exec(args["floor"])
elif args["task"] == "fr":
    single = args["out"].endswith(".safetensors")
    merge_to_disk("fr", args["pretrained"], args["finetuned"], args["out"],
                  max_shard_size=None if single else args["shard"], device=args["device"])
else:
    for source, target in zip(args["sources"], args["targets"]):
        save_state(load_state(source), target, max_shard_size=args["shard"])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss": status("VmHWM"), "start_rss": start_rss,
                  "threads": torch.get_num_threads()}))
"""


FLOOR = r"""
import glob, os
from safetensors import safe_open
from safetensors.torch import save_file

def shards(path):
    return sorted(glob.glob(os.path.join(path, "*.safetensors"))) if os.path.isdir(path) else [path]

def opened(path):  # key -> the open shard holding it
    return {key: handle for handle in (safe_open(f, "pt") for f in shards(path)) for key in handle.keys()}

pre, fts = opened(args["pretrained"]), [opened(path) for path in args["finetuned"]]
keys = list(pre)
count, energies = 0, [0.0] * len(fts)
for key in keys:  # the lambda pass: every fine-tuned key read once
    base = pre[key].get_tensor(key).float()
    count += base.numel()
    for i, ft in enumerate(fts):
        energies[i] += float((ft[key].get_tensor(key).float() - base).abs_().sum())
lambdas = [e / sum(energies) for e in energies]
masks = {}
os.makedirs(args["out"], exist_ok=True)
for shard in shards(args["pretrained"]):
    merged = {}
    with safe_open(shard, "pt") as handle:
        shard_keys = list(handle.keys())
    for key in shard_keys:
        base = pre[key].get_tensor(key)
        total = (fts[0][key].get_tensor(key).float() - base.float()).mul_(lambdas[0])
        for coefficient, ft in zip(lambdas[1:], fts[1:]):
            total.add_(ft[key].get_tensor(key).float() - base.float(), alpha=coefficient)
        if key.startswith("model.layers.") and total.ndim == 2:  # the paper preset filters the layers' matrices
            h, w = total.shape
            if (h, w) not in masks:
                eta = torch.fft.fftfreq(h, dtype=torch.float64) * 2.0
                gamma = torch.fft.rfftfreq(w, dtype=torch.float64) * 2.0
                masks[(h, w)] = (torch.sqrt((eta[:, None] ** 2 + gamma[None, :] ** 2) / 2) >= 0.1).float()
            total = torch.fft.irfft2(torch.fft.rfft2(total).mul_(masks[(h, w)]), s=(h, w))
        merged[key] = total.add_(base.float()).to(base.dtype)
    save_file(merged, os.path.join(args["out"], os.path.basename(shard)))
    del merged
index = os.path.join(args["pretrained"], "model.safetensors.index.json")
if os.path.exists(index):  # the same key -> shard map as the pretrained checkpoint
    with open(index) as source, open(os.path.join(args["out"], os.path.basename(index)), "w") as target:
        target.write(source.read())
"""
"""The ``floor`` child's work (run in :data:`CHILD` with its ``args``): FR's paper merge of the
input checkpoints to ``args["out"]`` in plain torch and safetensors (module docstring)."""


def llm_shapes(layers: int, hidden: int, intermediate: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Key → shape of an LLM-like checkpoint (see the module docstring)."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{prefix}.self_attn.{name}.weight"] = (hidden, hidden)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def synthetic_checkpoint(shapes: dict[str, tuple[int, ...]], model: int, seed: int = 0,
                         dtype: torch.dtype = torch.float16) -> DerivedState:
    """A lazy state in `dtype` (float16 by default): model 0 is the base (entries ~ N(0, 0.02²),
    norms 1), model i > 0 the base plus i-scaled N(0, (1e-3)²) noise; every tensor is generated
    when read, seeded by its key, so that states of any size can be written shard by shard."""

    def generate(key: str, which: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{which}:{key}".encode()))
        shape = shapes[key]
        if len(shape) == 1 and which == 0:
            return torch.ones(shape)
        return torch.randn(shape, generator=generator).mul_(0.02 if which == 0 else 1e-3 * which)

    def load(key: str) -> torch.Tensor:
        tensor = generate(key, 0)
        if model:
            tensor += generate(key, model)
        return tensor.to(dtype)

    return DerivedState(f"synthetic{model}", list(shapes), load, shapes.__getitem__, lambda key: dtype)


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_child(script: str, task: dict, benchmark: str = "stream") -> dict:
    """Run `script` (:data:`CHILD_HEAD` + a body printing one JSON line) in a fresh interpreter with
    `task` (plus the checkout's root) as its arguments; return that JSON."""
    root = str(Path(__file__).resolve().parents[2])
    result = subprocess.run([sys.executable, "-c", script, json.dumps({"root": root, **task})],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{benchmark} benchmark child ({task['task']}) failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child(task: dict) -> dict:
    return run_child(CHILD, task)


def _largest_difference(written, expected, keys: Sequence[str]) -> float:
    return max(float((written[key].float() - expected[key].float()).abs().max()) for key in keys)


def run(quick: bool = False, workdir: str | os.PathLike | None = None, keep: bool = False, layers: int | None = None,
        hidden: int | None = None, intermediate: int | None = None, vocab: int | None = None,
        tasks: int | None = None, shard: str | None = None, threads: int | None = None, device: str | None = None,
        seed: int = 0, single_file: bool = False) -> dict:
    """Write the checkpoints, time the FR merge and the copy in child processes; see the module docstring.
    `single_file`: the merge writes one ``merged.safetensors`` (streamed tensor by tensor) instead of shards."""
    sizes = dict(QUICK if quick else FULL)
    for name, value in (("layers", layers), ("hidden", hidden), ("intermediate", intermediate), ("vocab", vocab),
                        ("tasks", tasks), ("shard", shard)):
        if value is not None:
            sizes[name] = value
    if min(sizes[n] for n in ("layers", "hidden", "intermediate", "vocab", "tasks")) < 1:
        raise ParameterError(f"sizes must be >= 1, got {sizes}")
    parse_size(sizes["shard"])
    shapes = llm_shapes(sizes["layers"], sizes["hidden"], sizes["intermediate"], sizes["vocab"])
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="freqmerge-stream-", dir=workdir))
    try:
        start = time.perf_counter()
        inputs = []
        for model in range(sizes["tasks"] + 1):
            target = base / ("base" if model == 0 else f"task{model}")
            save_state(synthetic_checkpoint(shapes, model, seed), target, max_shard_size=sizes["shard"])
            inputs.append(target)
        generate_s = time.perf_counter() - start
        input_bytes = sum(_directory_bytes(path) for path in inputs)
        common = {"shard": sizes["shard"], "threads": threads, "device": device}
        copy = _child({"task": "copy", "sources": [str(p) for p in inputs],
                       "targets": [str(base / "copy" / p.name) for p in inputs], **common})
        shutil.rmtree(base / "copy")
        floor = _child({"task": "floor", "pretrained": str(inputs[0]), "finetuned": [str(p) for p in inputs[1:]],
                        "out": str(base / "floor"), "floor": FLOOR, **common})
        out = base / "merged.safetensors" if single_file else base / "merged"
        fr = _child({"task": "fr", "pretrained": str(inputs[0]), "finetuned": [str(p) for p in inputs[1:]],
                     "out": str(out), **common})
        merged = load_state(out)
        output_files = [out.name, out.name.replace(".safetensors", ".merge.json")] if single_file else sorted(
            p.name for p in out.iterdir())
        checked = [key for key in shapes if quick or ".layers.0." in key or "embed" in key]
        expected = merge("fr", str(inputs[0]), [str(p) for p in inputs[1:]], device=device)
        difference = _largest_difference(merged, expected, checked)
        floor_difference = _largest_difference(merged, load_state(base / "floor"), checked)
        output_bytes = out.stat().st_size if single_file else _directory_bytes(out)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    fr_gbps = input_bytes / fr["seconds"] / 1e9
    copy_gbps = input_bytes / copy["seconds"] / 1e9
    return {
        "benchmark": "stream",
        "device": str(resolve_device(device)),
        "threads": fr["threads"],
        "load_average": list(os.getloadavg()),
        "sizes": sizes,
        "dtype": "float16",
        "parameters_per_checkpoint": sum(math.prod(s) for s in shapes.values()),
        "checkpoints": len(inputs),
        "input_gb": input_bytes / 1e9,
        "output_gb": output_bytes / 1e9,
        "output_files": output_files,
        "single_file": single_file,
        "generate_s": generate_s,
        "fr_s": fr["seconds"],
        "copy_s": copy["seconds"],
        "fr_gbps": fr_gbps,
        "copy_gbps": copy_gbps,
        "fr_over_copy_throughput": fr_gbps / copy_gbps,
        "floor": "plain torch + safetensors: a lambda pass over every key, then per key the weighted sum of "
                 "(theta_i - theta_pre) in float32, rfft2 * cached mask * irfft2 for the layers' matrices, "
                 "+ theta_pre, float16, save_file per pretrained shard",
        "floor_s": floor["seconds"],
        "fr_x_floor": fr["seconds"] / floor["seconds"],
        "copy_x_floor": copy["seconds"] / floor["seconds"],
        "floor_peak_rss_mb": floor["peak_rss"] / 1e6,
        "floor_max_abs_difference": floor_difference,
        "peak_rss_mb": fr["peak_rss"] / 1e6,
        "peak_rss_over_start_mb": (fr["peak_rss"] - fr["start_rss"]) / 1e6,
        "copy_peak_rss_mb": copy["peak_rss"] / 1e6,
        "keys_checked": len(checked),
        "max_abs_difference_vs_in_memory_merge": difference,
        "workdir": str(base) if keep else None,
        "targets_met": {"peak_rss_below_1500_mb": fr["peak_rss"] < 1.5e9,
                        "fr_at_least_half_copy_throughput": fr_gbps >= copy_gbps / 2},
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench stream``: print :func:`run`'s result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny checkpoints (for tests)")
    parser.add_argument("--workdir", default=None,
                        help="directory for the checkpoints (a fresh subdirectory, removed afterwards; "
                             "default: the system's temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    for name in ("layers", "hidden", "intermediate", "vocab", "tasks"):
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"default {FULL[name]} ({QUICK[name]} with --quick)")
    parser.add_argument("--shard", default=None, help=f"max shard size (default {FULL['shard']})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the children (default: torch's)")
    parser.add_argument("--device", default=None, help="device of the merge (default: cuda if present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single-file", action="store_true",
                        help="the merge writes one merged.safetensors instead of shards (the copy stays sharded)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, workdir=args.workdir, keep=args.keep, layers=args.layers, hidden=args.hidden,
                 intermediate=args.intermediate, vocab=args.vocab, tasks=args.tasks, shard=args.shard,
                 threads=args.threads, device=args.device, seed=args.seed, single_file=args.single_file)
    print(json.dumps(result))
    return result
