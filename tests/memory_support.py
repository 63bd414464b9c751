"""Peak memory of code run in a fresh interpreter, for the tests that bound it.

The measure is VmHWM (this address space's peak resident memory), reset to the current RSS
just before the measured part: ru_maxrss would also count the parent's memory, inherited
through fork and exec. Allocations of 64 KiB or more are mapped (MALLOC_MMAP_THRESHOLD_), so
freed tensors leave the resident set at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import json, os, sys, torch
    torch.set_num_threads(1)
    import freqmerge_viz as fmv
    def status(field):
        line = next(l for l in open('/proc/self/status') if l.startswith(field + ':'))
        return int(line.split()[1]) * 1024
    def measure(work):
        with open('/proc/self/clear_refs', 'w') as reset:
            reset.write('5')
        start = status('VmRSS')
        work()
        print(json.dumps({"peak_over_start": status('VmHWM') - start}))
""")
"""What every script gets first: one torch thread, ``fmv``, ``status(field)`` and ``measure(work)``,
which prints the peak over the start of calling ``work()``."""


def peak_over_start(script: str, *args) -> int:
    """Bytes of resident memory above the start that `script` (after :data:`PRELUDE`; it calls
    ``measure`` once) reached, run with `args` as ``sys.argv[1:]``."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script), *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["peak_over_start"]


def write_matrix_models(directory, layers: int, k: int, shape=(1024, 512)) -> int:
    """A pretrained ``pre.safetensors`` with an ``attn`` and an ``mlp`` float32 matrix of `shape`
    per layer, and `k` fine-tuned ``ft{t}.safetensors`` (pretrained + 0.01·noise), seeded; returns
    the bytes of one matrix (the unit of the memory bounds)."""
    import torch

    import freqmerge_viz as fmv

    g = torch.Generator().manual_seed(0)
    pre = {f"blocks.{i}.{part}.weight": torch.randn(shape, generator=g)
           for i in range(layers) for part in ("attn", "mlp")}
    fmv.save_state(pre, directory / "pre.safetensors")
    for t in range(k):
        fmv.save_state({key: v + 0.01 * torch.randn(shape, generator=g) for key, v in pre.items()},
                       directory / f"ft{t}.safetensors")
    return shape[0] * shape[1] * 4
