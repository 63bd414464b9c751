"""The zoo's small vision transformer, and a functional forward over any state mapping.

Parameter names follow timm's ViT (``patch_embed.proj.weight``, ``cls_token``,
``pos_embed``, ``blocks.{i}.norm1``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``,
``blocks.{i}.norm2``, ``blocks.{i}.mlp.fc1``, ``blocks.{i}.mlp.fc2``, ``norm``), so the
paper's parameter selection (keys containing ``weight`` and ``attn`` or ``mlp``) picks the
2-D attention and MLP matrices unchanged. The backbone maps images ``[N, C, S, S]`` to the
final-normed class-token features ``[N, width]``; a task's head is a separate linear layer
(``weight [classes, width]``, ``bias [classes]``) that is never merged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingKeysError, ParameterError, ShapeMismatchError

__all__ = ["ViTConfig", "ViT", "backbone_forward", "head_forward", "parameter_count"]


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ParameterError(f"image_size {self.image_size} is not a multiple of "
                                 f"patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ParameterError(f"width {self.width} is not a multiple of heads {self.heads}")

    @property
    def tokens(self) -> int:
        """Patch tokens plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> ViTConfig:
        return cls(**{k: int(v) for k, v in values.items()})


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, width: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """Pre-norm ViT backbone: images ``[N, C, S, S]`` -> class-token features ``[N, width]``."""

    def __init__(self, config: ViTConfig = ViTConfig()):
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c.channels, c.width, c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.tokens, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp_ratio * c.width)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """timm-like initialisation drawn from `generator` (deterministic)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif "norm" in name:
                    p.fill_(1.0)
                elif name == "patch_embed.proj.weight":
                    bound = math.sqrt(3.0 / p[0].numel())
                    p.uniform_(-bound, bound, generator=generator)
                else:  # cls token, position embedding, every Linear weight
                    p.normal_(0.0, 0.02, generator=generator)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])


def parameter_count(config: ViTConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in ViT(config).parameters())


_TEMPLATES: dict[ViTConfig, ViT] = {}


def _template(config: ViTConfig) -> ViT:
    """A parameter-less (meta) module per config, for ``functional_call``."""
    if config not in _TEMPLATES:
        with torch.device("meta"):
            _TEMPLATES[config] = ViT(config).eval()
    return _TEMPLATES[config]


def backbone_forward(state: Mapping[str, torch.Tensor], images: torch.Tensor, config: ViTConfig,
                     where: str = "state") -> torch.Tensor:
    """Class-token features of `images` under backbone `state` (any mapping name -> tensor).

    The state's tensors are moved to ``images.device`` and ``images.dtype``; a missing or
    misshapen key raises :class:`MissingKeysError`/:class:`ShapeMismatchError` naming it
    and `where`. Keys the model does not have are ignored.
    """
    module = _template(config)
    expected = dict(module.named_parameters())
    tensors = {}
    missing = [k for k in expected if k not in state]
    if missing:
        raise MissingKeysError(missing, where=where, reference="the zoo's ViT")
    for key, param in expected.items():
        value = state[key]
        if tuple(value.shape) != tuple(param.shape):
            raise ShapeMismatchError(key, value.shape, param.shape, where, "the zoo's ViT")
        tensors[key] = value.to(device=images.device, dtype=images.dtype)
    return torch.func.functional_call(module, tensors, (images,), strict=True)


def head_forward(head: Mapping[str, torch.Tensor], features: torch.Tensor,
                 where: str = "head") -> torch.Tensor:
    """Logits ``features @ weight.T + bias`` of a head ``{"weight", "bias"}``."""
    missing = [k for k in ("weight", "bias") if k not in head]
    if missing:
        raise MissingKeysError(missing, where=where, reference="a linear head")
    weight = head["weight"].to(device=features.device, dtype=features.dtype)
    bias = head["bias"].to(device=features.device, dtype=features.dtype)
    return F.linear(features, weight, bias)
