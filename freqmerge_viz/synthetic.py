"""A small synthetic model set: one "pretrained" state and K "fine-tuned" variants.

The layout mimics a tiny ViT (``blocks.{i}.attn.qkv.weight``, ``…mlp.fc1.weight``, norms,
biases, an integer buffer). Each task vector is built from two parts, by construction:

* a smooth, task-specific component (low spatial frequencies) whose strength differs
  strongly between tasks, and
* unstructured noise of equal strength for every task (spread over all frequencies).

So the across-task amplitude variance sits in the low frequencies *because the generator
puts it there*. This set exercises the toolkit end to end; it is no evidence for or
against the paper's claims. The demo zoo (trained models) is the place for that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import save_state
from .spectral import frequency_filter

DEFAULT_WIDTH = 32
DEFAULT_DEPTH = 4


def model_layout(width: int = DEFAULT_WIDTH, depth: int = DEFAULT_DEPTH, mlp_ratio: int = 4) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the synthetic ViT-like model."""
    hidden = mlp_ratio * width
    layout: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (width, 3, 4, 4),
                                          "patch_embed.proj.bias": (width,)}
    for i in range(depth):
        p = f"blocks.{i}."
        layout.update({
            p + "norm1.weight": (width,), p + "norm1.bias": (width,),
            p + "attn.qkv.weight": (3 * width, width), p + "attn.qkv.bias": (3 * width,),
            p + "attn.proj.weight": (width, width), p + "attn.proj.bias": (width,),
            p + "norm2.weight": (width,), p + "norm2.bias": (width,),
            p + "mlp.fc1.weight": (hidden, width), p + "mlp.fc1.bias": (hidden,),
            p + "mlp.fc2.weight": (width, hidden), p + "mlp.fc2.bias": (width,),
        })
    layout["norm.weight"] = (width,)
    layout["norm.bias"] = (width,)
    return layout


@dataclass
class SyntheticModelSet:
    """States of a synthetic pretrained model and its fine-tuned variants (in memory)."""

    pretrained: dict[str, torch.Tensor]
    finetuned: dict[str, dict[str, torch.Tensor]]

    def save(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write every state as ``<name>.safetensors`` under `directory`; returns name -> path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"pretrained": directory / "pretrained.safetensors"}
        save_state(self.pretrained, paths["pretrained"])
        for name, state in self.finetuned.items():
            paths[name] = directory / f"{name}.safetensors"
            save_state(state, paths[name])
        return paths


def make_model_set(n_tasks: int = 4, seed: int = 0, width: int = DEFAULT_WIDTH,
                   depth: int = DEFAULT_DEPTH, smooth_cutoff: float = 0.15,
                   noise_scale: float = 0.01) -> SyntheticModelSet:
    """Generate the set deterministically from `seed` (CPU, float32).

    Task ``k``'s smooth component has amplitude ``0.02 · 4^(k/(K-1))`` (a 4× spread across
    tasks), low-passed at the normalised radius `smooth_cutoff`; the noise has standard
    deviation `noise_scale` for every task.
    """
    generator = torch.Generator().manual_seed(seed)
    layout = model_layout(width, depth)
    pretrained = {k: 0.05 * torch.randn(shape, generator=generator) for k, shape in layout.items()}
    pretrained["pos_embed_index"] = torch.arange(16, dtype=torch.int64)
    finetuned = {}
    for task in range(n_tasks):
        strength = 0.02 * 4.0 ** (task / max(n_tasks - 1, 1))
        state = {}
        for key, shape in layout.items():
            noise = noise_scale * torch.randn(shape, generator=generator)
            if len(shape) >= 2:
                matrix = torch.randn(shape[0], int(torch.tensor(shape[1:]).prod()), generator=generator)
                smooth = frequency_filter(matrix, smooth_cutoff, band="low")
                smooth = smooth / smooth.std().clamp_min(1e-12)
                delta = strength * smooth.reshape(shape) + noise
            else:
                delta = noise
            state[key] = pretrained[key] + delta
        state["pos_embed_index"] = pretrained["pos_embed_index"].clone()
        finetuned[f"task{task}"] = state
    return SyntheticModelSet(pretrained, finetuned)
