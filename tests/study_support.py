"""A small study of the `python` kind, built in memory: a two-layer MLP trunk with one linear
head per task, random pretrained weights, fine-tuned copies by a few SGD steps on each task's
synthetic data. Used by tests/test_study.py (and by study files that name
``study_support.py:tiny_study``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from freqmerge_viz.study import FunctionalStudy

WIDTH, INPUT, CLASSES = 24, 16, (3, 4, 5, 3)


def _trunk(params, x):
    h = F.gelu(F.linear(x, params["layers.0.weight"], params["layers.0.bias"]))
    h = F.gelu(F.linear(h, params["layers.1.weight"], params["layers.1.bias"]))
    return F.layer_norm(h, (WIDTH,), params["norm.weight"], params["norm.bias"])


def tiny_study(tasks: int = 4, per_split: int = 40, steps: int = 30, seed: int = 0, name: str = "tiny-mlp"):
    """A :class:`FunctionalStudy` with `tasks` tasks (classes 3, 4, 5, 3, ...), `per_split`
    samples per task in each of train/val/test."""
    g = torch.Generator().manual_seed(seed)
    pre = {"layers.0.weight": torch.randn(WIDTH, INPUT, generator=g) / INPUT ** 0.5,
           "layers.0.bias": torch.zeros(WIDTH),
           "layers.1.weight": torch.randn(WIDTH, WIDTH, generator=g) / WIDTH ** 0.5,
           "layers.1.bias": torch.zeros(WIDTH),
           "norm.weight": torch.ones(WIDTH), "norm.bias": torch.zeros(WIDTH)}
    names = [f"task{i}" for i in range(tasks)]
    data, heads, finetuned = {}, {}, {}
    for i, task in enumerate(names):
        classes = CLASSES[i % len(CLASSES)]
        centres = torch.randn(classes, INPUT, generator=g) * 1.5
        splits = {}
        for split in ("train", "val", "test"):
            labels = torch.randint(0, classes, (per_split,), generator=g)
            splits[split] = (centres[labels] + torch.randn(per_split, INPUT, generator=g), labels)
        data[task] = splits
        heads[task] = {"weight": torch.randn(classes, WIDTH, generator=g) * 0.5, "bias": torch.zeros(classes)}
        params = {k: v.clone().requires_grad_(True) for k, v in pre.items()}
        optimiser = torch.optim.SGD(params.values(), lr=0.1)
        x, y = splits["train"]
        for _ in range(steps):
            optimiser.zero_grad()
            logits = F.linear(_trunk(params, x), heads[task]["weight"], heads[task]["bias"])
            F.cross_entropy(logits, y).backward()
            optimiser.step()
        finetuned[task] = {k: v.detach() for k, v in params.items()}

    def forward(params, inputs, task):
        return F.linear(_trunk(params, inputs), heads[task]["weight"], heads[task]["bias"])

    return FunctionalStudy(pre, finetuned, data, forward, name=name, thread_safe=True,
                           features=lambda x: _trunk(pre, x))
