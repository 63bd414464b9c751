"""``mergekit``: merge time and peak memory against mergekit on a sharded Hugging Face model.

A GPT-2-small-shaped model (12 layers, width 768, vocabulary 50257: 124M parameters, float32,
about 500 MB) is written as a sharded HF folder (``config.json``, shards of 200 MB and the
index), with K fine-tuned variants (the pretrained weights plus seeded noise). Each merge
runs in its own process with one CPU thread, timed from start to exit; its peak resident
memory is the child's ``ru_maxrss``:

``freqmerge-viz merge`` (``task_arithmetic`` at scaling 1, ``ties`` with mergekit's
conventions: density 0.2, weights 1, ``preset="mergekit"``) against ``mergekit-yaml`` with
the same settings. Both outputs are compared key by key (the largest difference relative
to the largest delta). Without mergekit (``mergekit-yaml`` not on PATH and no ``--mergekit``
given) only the toolkit's merges run and the JSON says why the comparison was skipped.

Floor: task arithmetic's least plain computation, run the same way (its own one-thread
process, :data:`TASK_ARITHMETIC_FLOOR`): ``safe_open`` on every shard, per key
``θ_pre + Σ (θ_i − θ_pre)`` in float32, ``safetensors.torch.save_file`` per pretrained shard
(the index copied). ``x_floor`` is the toolkit's time over it; its output is compared with the
toolkit's. TIES has no simple floor (``floor_reason``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "vocab_size": 50257, "n_positions": 1024}


def gpt2_shapes(n_layer: int, n_embd: int, vocab_size: int, n_positions: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a GPT2LMHeadModel checkpoint (Conv1D weights stored in × out; lm_head tied, left out)."""
    shapes = {"transformer.wte.weight": (vocab_size, n_embd), "transformer.wpe.weight": (n_positions, n_embd),
              "transformer.ln_f.weight": (n_embd,), "transformer.ln_f.bias": (n_embd,)}
    for i in range(n_layer):
        prefix = f"transformer.h.{i}."
        shapes.update({prefix + "ln_1.weight": (n_embd,), prefix + "ln_1.bias": (n_embd,),
                       prefix + "attn.c_attn.weight": (n_embd, 3 * n_embd), prefix + "attn.c_attn.bias": (3 * n_embd,),
                       prefix + "attn.c_proj.weight": (n_embd, n_embd), prefix + "attn.c_proj.bias": (n_embd,),
                       prefix + "ln_2.weight": (n_embd,), prefix + "ln_2.bias": (n_embd,),
                       prefix + "mlp.c_fc.weight": (n_embd, 4 * n_embd), prefix + "mlp.c_fc.bias": (4 * n_embd,),
                       prefix + "mlp.c_proj.weight": (4 * n_embd, n_embd), prefix + "mlp.c_proj.bias": (n_embd,)})
    return shapes


def write_models(folder: Path, k: int, config: dict, seed: int = 0) -> tuple[Path, list[Path]]:
    """A pretrained GPT-2-shaped HF folder and `k` fine-tuned ones (pretrained + N(0, 1e-3²))."""
    from ..io import save_state

    generator = torch.Generator().manual_seed(seed)
    shapes = gpt2_shapes(**config)
    pretrained = {key: 0.02 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    hf_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_ctx": config["n_positions"],
                 "n_head": 12, "tie_word_embeddings": True, "torch_dtype": "float32", **config}
    folders = [folder / "pretrained"] + [folder / f"finetuned{i}" for i in range(k)]
    for index, target in enumerate(folders):
        state = pretrained if index == 0 else {key: value + 1e-3 * torch.randn(value.shape, generator=generator)
                                               for key, value in pretrained.items()}
        save_state(state, target, max_shard_size="200MB")
        (target / "config.json").write_text(json.dumps(hf_config, indent=1))
    return folders[0], folders[1:]


TASK_ARITHMETIC_FLOOR = r"""
import glob, os, shutil, sys, torch
torch.set_num_threads(1)
from safetensors import safe_open
from safetensors.torch import save_file
pretrained, out, finetuned = sys.argv[1], sys.argv[2], sys.argv[3:]
def shards(path):
    return sorted(glob.glob(os.path.join(path, "*.safetensors")))
def opened(path):
    return {key: handle for handle in (safe_open(f, "pt") for f in shards(path)) for key in handle.keys()}
pre, fts = opened(pretrained), [opened(path) for path in finetuned]
os.makedirs(out, exist_ok=True)
for shard in shards(pretrained):
    with safe_open(shard, "pt") as handle:
        keys = list(handle.keys())
    merged = {}
    for key in keys:
        base = pre[key].get_tensor(key)
        total = fts[0][key].get_tensor(key) - base
        for ft in fts[1:]:
            total.add_(ft[key].get_tensor(key) - base)
        merged[key] = total.add_(base)
    save_file(merged, os.path.join(out, os.path.basename(shard)), metadata={"format": "pt"})
for name in ("model.safetensors.index.json", "config.json"):
    if os.path.exists(os.path.join(pretrained, name)):
        shutil.copy(os.path.join(pretrained, name), os.path.join(out, name))
"""
"""Task arithmetic (scaling 1) of sharded HF folders in plain torch and safetensors: ``python -c
TASK_ARITHMETIC_FLOOR pretrained out finetuned...``."""


def timed_child(command: Sequence[str], env: dict) -> dict:
    """Wall seconds and peak RSS (MB) of `command` run alone in a child of a fresh interpreter."""
    probe = ("import resource, subprocess, sys, time\n"
             "start = time.perf_counter()\n"
             "code = subprocess.run(sys.argv[1:]).returncode\n"
             "print(code, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    run = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, env=env)
    code, seconds, peak_kb = run.stdout.strip().splitlines()[-1].split()
    if int(code) != 0:
        raise RuntimeError(f"{command[0]} failed ({code}): {run.stderr[-2000:]}")
    return {"seconds": round(float(seconds), 2), "peak_rss_mb": round(int(peak_kb) / 1024, 1)}


def compare_outputs(a: Path, b: Path, pretrained: Path) -> dict:
    """How two merges differ: the largest |a − b| relative to the largest merged delta |a − θ_pre|
    of its key, and the share of entries differing by more than 1e-6 of that delta."""
    from ..io import load_state

    first, second, base = load_state(a), load_state(b), load_state(pretrained)
    worst, differing, total = 0.0, 0, 0
    for key in first:
        if key in second and key in base and first.dtype_of(key).is_floating_point:
            x, y = first[key].double(), second[key].double()
            scale = float((x - base[key].double()).abs().max().clamp_min(1e-30))
            gap = (x - y).abs()
            worst = max(worst, float(gap.max()) / scale)
            differing += int((gap > 1e-6 * scale).sum())
            total += x.numel()
    return {"max_difference_relative_to_delta": worst, "differing_share": differing / max(total, 1)}


def run(quick: bool = False, k: int = 3, mergekit: str | None = None, keep: str | None = None) -> dict:
    """Merge with the toolkit and with mergekit; see the module docstring."""
    config = {"n_layer": 2, "n_embd": 256, "vocab_size": 4096, "n_positions": 256} if quick else GPT2_SMALL
    mergekit = mergekit or shutil.which("mergekit-yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    result = {"benchmark": "mergekit", "k": k, "config": config, "threads": 1,
              "load_average": [round(x, 2) for x in os.getloadavg()], "methods": {}}
    with tempfile.TemporaryDirectory(prefix="fmv-bench-mergekit-", dir=keep) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        pretrained, finetuned = write_models(folder, k, config)
        result["write_seconds"] = round(time.perf_counter() - start, 1)
        result["model_mb"] = round(sum(p.stat().st_size for p in pretrained.glob("*.safetensors")) / 1e6, 1)
        settings = {"task_arithmetic": ({"scaling": 1.0}, {}), "ties": ({"density": 0.2, "preset": "mergekit"},
                                                                        {"density": 0.2})}
        for method, (ours, theirs) in settings.items():
            out = folder / f"out-{method}-toolkit"
            params = [f"{name}={value}" for name, value in ours.items() if name != "preset"]
            preset = ["--preset", ours["preset"]] if "preset" in ours else []
            command = [sys.executable, "-m", "freqmerge_viz", "merge", "--method", method, "--pretrained",
                       str(pretrained), "--finetuned", *map(str, finetuned), "--out", str(out),
                       "--max-shard-size", "500MB", *preset, *(["--param", *params] if params else [])]
            entry = {"toolkit": timed_child(command, env)}
            if method == "task_arithmetic":
                floor_out = folder / "out-task_arithmetic-floor"
                entry["floor"] = timed_child([sys.executable, "-c", TASK_ARITHMETIC_FLOOR, str(pretrained),
                                              str(floor_out), *map(str, finetuned)], env)
                entry["floor"]["what"] = ("plain torch + safetensors: per key θ_pre + Σ (θ_i − θ_pre), save_file "
                                          "per shard, one thread, own process")
                entry["x_floor"] = round(entry["toolkit"]["seconds"] / entry["floor"]["seconds"], 2)
                entry["floor_outputs"] = compare_outputs(out, floor_out, pretrained)
            else:
                entry["floor"] = None
                entry["x_floor"] = None
                entry["floor_reason"] = ("no simple floor: TIES' trim (top density by magnitude per task), sign "
                                         "election and disjoint mean are the method; its lower bound is task "
                                         "arithmetic's floor")
            if mergekit:
                yaml = folder / f"{method}.yml"
                models = "\n".join(f"  - model: {path}\n    parameters: {{weight: 1.0"
                                   + "".join(f", {n}: {v}" for n, v in theirs.items()) + "}" for path in finetuned)
                yaml.write_text(f"merge_method: {method}\nbase_model: {pretrained}\ndtype: float32\n"
                                f"parameters: {{normalize: {'true' if method == 'ties' else 'false'}}}\n"
                                f"models:\n{models}\n")
                theirs_out = folder / f"out-{method}-mergekit"
                entry["mergekit"] = timed_child([mergekit, str(yaml), str(theirs_out), "--out-shard-size", "500M",
                                                 "--lazy-unpickle"], env)
                entry["time_ratio_mergekit_over_toolkit"] = round(entry["mergekit"]["seconds"]
                                                                  / entry["toolkit"]["seconds"], 2)
                entry["rss_ratio_toolkit_over_mergekit"] = round(entry["toolkit"]["peak_rss_mb"]
                                                                 / entry["mergekit"]["peak_rss_mb"], 2)
                entry["outputs"] = compare_outputs(out, theirs_out, pretrained)
            result["methods"][method] = entry
    if not mergekit:
        result["mergekit"] = "skipped: mergekit-yaml is not on PATH (pip install mergekit, or --mergekit PATH)"
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench mergekit``: print :func:`run`'s result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench mergekit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny GPT-2-shaped model (for tests)")
    parser.add_argument("--k", type=int, default=3, help="fine-tuned models (default 3)")
    parser.add_argument("--mergekit", default=None, help="path of mergekit-yaml (default: the one on PATH)")
    parser.add_argument("--workdir", default=None, help="folder for the temporary models (default: the system's)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, k=args.k, mergekit=args.mergekit, keep=args.workdir)
    print(json.dumps(result))
    return result
