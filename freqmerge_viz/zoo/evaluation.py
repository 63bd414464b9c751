"""The demo zoo's evaluation service: its ViT as a functional forward, batched evaluation of
many backbones on its tasks (through the architecture-agnostic :mod:`freqmerge_viz.engine`).

:func:`zoo_forward` gives ``forward(params, images) -> logits`` of the zoo's backbone followed
by a task's head; :func:`zoo_evaluator` binds it to a task's data; :func:`evaluate_on_zoo`
scores many backbones on many tasks in one tidy table. Every analysis, widget and figure that
scores zoo backbones goes through here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from ..engine import Evaluator, Forward, tensor_digest
from ..errors import MissingKeysError, ShapeMismatchError
from ..study import evaluate_on_study, study_data, study_evaluator
from .model import _template, backbone_forward, head_forward

__all__ = ["zoo_forward", "zoo_backbone_keys", "zoo_data", "zoo_evaluator", "evaluate_on_zoo"]


def _vit_features(params: Mapping[str, torch.Tensor], images: torch.Tensor, config) -> torch.Tensor:
    """The zoo ViT's class-token features ``[N, width]``, in plain functional ops that vmap batches.

    The same computation as :class:`~freqmerge_viz.zoo.model.ViT` (tested to agree), with two
    shortcuts: attention is written out (scaled dot product, softmax) instead of the fused
    kernel, which has no batching rule on CPU, and the last block computes the residual
    stream of the class token only, the only token the output reads.
    """
    c = config
    n, patch, width, heads = images.shape[0], c.patch_size, c.width, c.heads
    head_dim = width // heads
    patches = images.unfold(2, patch, patch).unfold(3, patch, patch).permute(0, 2, 3, 1, 4, 5)
    patches = patches.reshape(n, -1, c.channels * patch * patch)
    x = F.linear(patches, params["patch_embed.proj.weight"].reshape(width, -1), params["patch_embed.proj.bias"])
    x = torch.cat([params["cls_token"].expand(n, -1, -1), x], dim=1) + params["pos_embed"]
    scale = 1.0 / math.sqrt(head_dim)
    for i in range(c.depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), params[p + "norm1.weight"], params[p + "norm1.bias"])
        qkv = F.linear(h, params[p + "attn.qkv.weight"], params[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(n, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        if i == c.depth - 1:
            q, x = q[:, :, :1], x[:, :1]
        attended = torch.softmax((q * scale) @ k.transpose(-1, -2), dim=-1) @ v
        attended = attended.transpose(1, 2).reshape(n, -1, width)
        x = x + F.linear(attended, params[p + "attn.proj.weight"], params[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), params[p + "norm2.weight"], params[p + "norm2.bias"])
        h = F.gelu(F.linear(h, params[p + "mlp.fc1.weight"], params[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, params[p + "mlp.fc2.weight"], params[p + "mlp.fc2.bias"])
    return F.layer_norm(x[:, 0], (width,), params["norm.weight"], params["norm.bias"])


def _expected_vit_keys(config) -> list[str]:
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    return (["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
            + [f"blocks.{i}.{name}" for i in range(config.depth) for name in block]
            + ["norm.weight", "norm.bias"])


def zoo_forward(zoo, task: str, head: str = "finetuned", *, reference: bool = False) -> Forward:
    """``forward(params, images) -> logits`` of the zoo's ViT backbone followed by `task`'s head.

    By default the backbone is :func:`_vit_features` (fast under vmap); ``reference=True``
    (or a model whose parameters are not the expected ViT's) uses the model module itself
    through :func:`~freqmerge_viz.zoo.model.backbone_forward`. The function carries
    ``activation_bytes`` (per sample, for the chunk size), ``fingerprint`` (task, head and
    the head's content, for cache keys) and ``thread_safe`` (true for the fast path; the
    module path swaps a shared module's parameters and must run in one thread).
    """

    config = zoo.model_config
    weights = zoo.head(task, head)
    shapes = {k: tuple(p.shape) for k, p in _template_parameters(config)}
    fast = not reference and sorted(shapes) == sorted(_expected_vit_keys(config))

    def forward(params: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        if fast:
            for key, shape in shapes.items():
                if key not in params:
                    raise MissingKeysError([key], where="parameter set", reference="the zoo's ViT")
                if tuple(params[key].shape) != shape:
                    raise ShapeMismatchError(key, params[key].shape, shape, "parameter set", "the zoo's ViT")
            features = _vit_features(params, images, config)
        else:
            features = backbone_forward(params, images, config, where="parameter set")
        return head_forward(weights, features, where=f"head of {task!r}")

    tokens, width = config.tokens, config.width
    forward.thread_safe = fast
    forward.activation_bytes = 4 * tokens * (8 * width + 2 * config.mlp_ratio * width + config.heads * tokens)
    forward.fingerprint = "|".join([f"zoo-vit:{config.to_dict()}", task, head,
                                    tensor_digest(weights["weight"]), tensor_digest(weights["bias"])])
    forward.__qualname__ = f"zoo_forward({task!r}, {head!r}{', reference' if not fast else ''})"
    return forward


def _template_parameters(config):

    return list(_template(config).named_parameters())


def zoo_backbone_keys(zoo) -> list[str]:
    """Names of the backbone parameters of the zoo's ViT, in module order."""
    return [k for k, _ in _template_parameters(zoo.model_config)]


def zoo_data(zoo, task: str, split: str = "test", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of `task`'s `split`, the first `limit` samples (all if ``None``);
    :func:`~freqmerge_viz.study.study_data` on the zoo."""
    return study_data(zoo, task, split, limit)


def zoo_evaluator(zoo, task: str, split: str = "test", limit: int | None = None, head: str = "finetuned",
                  **options) -> Evaluator:
    """:func:`~freqmerge_viz.study.study_evaluator` on the zoo (named ``zoo:task:split:n:head``)."""
    return study_evaluator(zoo, task, split, limit, head, **options)


def evaluate_on_zoo(zoo, states, tasks: str | Sequence[str] | None = None, **options) -> pd.DataFrame:
    """:func:`~freqmerge_viz.study.evaluate_on_study` on the zoo (the zoo is a study): columns
    ``state, task, loss, accuracy``; keyword options as there (split, limit, head, mode, ...)."""
    return evaluate_on_study(zoo, states, tasks, **options)
