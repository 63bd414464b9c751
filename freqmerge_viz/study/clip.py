"""The ``open_clip`` study kind: image classification with CLIP image towers.

::

    kind: open_clip
    name: vit-b-32-8-tasks
    pretrained: checkpoints/ViT-B-32/zeroshot.pt          # task_vectors pickle, state dict, safetensors, HF folder
    finetuned:
      mnist: checkpoints/ViT-B-32/MNIST/finetuned.pt
      svhn: checkpoints/ViT-B-32/SVHN/finetuned.pt
    data:
      mnist: {val: data/mnist/val, test: data/mnist/test}  # ImageFolder trees <dir>/<class>/*.png
      svhn: {root: data/svhn, split: {val: 0.5, seed: 0}}  # one tree, split by a rule
    heads:                                                  # or zeroshot: / linear_probe: (see below)
      mnist: checkpoints/ViT-B-32/head_MNIST.pt
      svhn: checkpoints/ViT-B-32/head_SVHN.pt
    limit: 64

**Checkpoints.** Every format the toolkit reads (:func:`~freqmerge_viz.io.load_state` with
``pickled_modules=True``): task_vectors' pickled ``ImageEncoder`` modules (keys
``model.visual.*``; read without running their code), open_clip state dicts (``visual.*``),
safetensors of either, and Hugging Face ``CLIPVisionModel`` / ``CLIPModel`` folders as
FusionBench publishes them (``vision_model.embeddings.patch_embedding.weight``, ...,
``vision_model.post_layernorm.*``, ``visual_projection.weight`` when present; transformers
5 saves a ``CLIPVisionModel`` without the ``vision_model.`` prefix, which is read too).
The layout is recognised from key names (:func:`find_tower`). :meth:`OpenClipStudy.backbone_keys`
are the image tower's keys only (never the text tower). Every fine-tuned checkpoint must have
the pretrained's image-tower tensors with the same shapes (under its own prefix: a
fine-tuned ``visual.*`` state dict goes with a ``model.visual.*`` pickle); otherwise
:class:`~freqmerge_viz.errors.StudySpecError` names the file and ``finetuned.<task>``.
Where the fine-tuned checkpoints hold other keys or prefixes than the pretrained (FusionBench's
``CLIPVisionModel`` fine-tunes of a ``CLIPModel``), each is presented under the pretrained's
names: its image tower, and the pretrained's other tensors (:class:`CompletedState`), so that
merges line up and carry the text tower along.
A projection (``visual.proj`` / ``visual_projection.weight``) the pretrained has and the
fine-tuned checkpoints lack (FusionBench: ``CLIPVisionModel`` fine-tunes of a ``CLIPModel``)
is taken from the pretrained and not merged.

**Forward.** :func:`image_features` is the image tower in plain functional ops (vmap-able,
thread safe, checked against open_clip's and transformers' own modules): patchify, class
token, positions, ``ln_pre``, pre-norm residual blocks (multi-head attention written out,
GELU or QuickGELU MLP), the final norm on the class token, the projection. The task head
follows as task_vectors' ``ClassificationHead`` does: L2-normalise the embedding, then
``weight [C, D]`` and ``bias [C]``. Attention heads: open_clip checkpoints do not record
them; ``head_width`` (default 64, every open_clip and OpenAI ViT) gives ``width //
head_width``; a Hugging Face folder's ``config.json`` gives them. The MLP activation:
``quick_gelu`` (OpenAI-pretrained weights, hence task_vectors' checkpoints, use QuickGELU;
open_clip's own ViT-B-32 config uses GELU) is detected where the checkpoint says it (a
pickled module naming ``QuickGELU``, a Hugging Face config's ``hidden_act``, which defaults
to ``quick_gelu``) and is ``false`` otherwise; the field overrides the detection.

**Data.** ImageFolder trees (``<dir>/<class name>/**/*.png|jpg|...``), classes in sorted
folder-name order as torchvision's ``ImageFolder``. Per task either a folder per split
(``{val: dir, test: dir}``, ``train: dir`` optional; every split must have the same class
folders) or one tree and a rule ``{root: dir, split: {train: a, val: b, test: c, seed: s}}``:
each class's image files (sorted by path) are shuffled with ``random.Random(f"{seed}:{class}")``
(``seed`` default 0) and cut in the order train | val | test at ``round(n·a)``, ``round(n·(a+b))``
(halves up), ``test`` taking the rest unless given; ``train`` defaults to 0. Within a split
the samples go round-robin over the classes (first image of every class, then the second,
...), so that the first ``limit`` images cover the classes evenly. Images are decoded with
Pillow as open_clip's evaluation transform does (RGB, shortest side resized to the tower's
image size, bicubic, centre crop) and cached in memory per (task, split) as ``uint8
[N, 3, S, S]``: :meth:`OpenClipStudy.data` returns those, and the forward scales them by
1/255 and normalises with CLIP's mean and std (floating inputs are taken as already
normalised). A split is decoded whole on first use; ``max_images`` caps what is read.

**Heads**, per task, from one or more of (the first given of ``heads``, ``zeroshot``,
``linear_probe`` is the ``"finetuned"`` head every analysis uses; each is also available by
its own name ``"files"``, ``"zeroshot"``, ``"probe"``):

- ``heads: {task: file}``: task_vectors' pickled ``ClassificationHead`` (keys ``weight``,
  ``bias``; its ``normalize`` flag is honoured) or a state dict / safetensors with a
  ``weight [C, D]`` (and optional ``bias [C]``; one ``*weight`` matrix under any prefix);
- ``zeroshot: {templates: [...], classnames: {task: [...]}, logit_scale: true}``: class
  names from the folder names (underscores as spaces) unless given; each ``template.format``
  (``"a photo of a {}."`` by default) goes through the pretrained checkpoint's own text
  tower with open_clip's tokenizer; per class the mean of the L2-normalised prompt
  embeddings, normalised again (task_vectors' recipe), times ``exp(logit_scale)`` from the
  checkpoint when ``logit_scale`` is true (the default, as task_vectors does: it scales the
  loss, not the accuracy), bias zero;
- ``linear_probe: {split: train, steps: 100, weight_decay: 0.0001}``: a logistic regression
  on the L2-normalised pretrained image embeddings of the task's ``split`` (full-batch
  L-BFGS from zero, deterministic), applied as a ``ClassificationHead``.

A head whose class count differs from the task's class folders, or whose input size differs
from the tower's embedding size, is a :class:`StudySpecError` naming the file and
``heads.<task>``. Every field, path, split, class list, head and checkpoint header is checked
when the study is opened, before any model runs; zero-shot and probe heads are computed on
first use.

open_clip itself is not needed to read checkpoints or run the forward; zero-shot heads need
its tokenizer (``pip install freqmerge-viz[open_clip]``; on a CPU-only torch run
``scripts/open_clip_deps.sh``, see there).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine import Forward, tensor_digest
from ..errors import CheckpointError, FreqMergeError, ParameterError, StudySpecError
from ..io import KeyMapState, LazyState, PickledModuleState, load_state
from .base import SPLITS, Study
from .spec import Field, Spec, register_kind

__all__ = ["OpenClipStudy", "CompletedState", "Tower", "TextTower", "find_tower", "find_text_tower", "image_features",
           "text_features", "classification_logits", "preprocess_image", "normalise_images", "clip_tokenizer",
           "CLIP_MEAN", "CLIP_STD", "IMAGE_EXTENSIONS", "INSTALL_HINT"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""Image file suffixes read (torchvision's ImageFolder's list), case-insensitive."""
DEFAULT_LIMIT = 64
DEFAULT_HEAD_WIDTH = 64
DEFAULT_TEMPLATES = ("a photo of a {}.",)
INSTALL_HINT = ("pip install freqmerge-viz[open_clip] (on a CPU-only torch, `bash scripts/open_clip_deps.sh "
                "PYTHON` installs it keeping torch and makes torchvision importable)")
QUICK_GELU_ALPHA = 1.702


# ----------------------------------------------------------------------------- towers

@dataclass(frozen=True)
class Tower:
    """A CLIP image tower found in a checkpoint: its layout, key prefix and sizes.

    ``layout`` is ``"open_clip"`` (``conv1``, ``transformer.resblocks.i.attn.in_proj_weight``,
    ``ln_post``, ``proj``) or ``"hf"`` (``embeddings.patch_embedding``, ``encoder.layers.i.
    self_attn.q_proj``, ``post_layernorm``, ``visual_projection``); ``prefix`` what precedes
    the tower's key names (``model.visual.``, ``visual.``, ``vision_model.``, ``""``);
    ``projection`` the projection's key (``None``: the embedding is the pooled class token).
    """

    layout: str
    prefix: str
    layers: int
    width: int
    patch: int
    grid: int
    mlp: int
    heads: int = 0
    eps: float = 1e-5
    quick_gelu: bool = False
    projection: str | None = None
    out_dim: int = 0

    @property
    def image_size(self) -> int:
        return self.grid * self.patch

    @property
    def tokens(self) -> int:
        return self.grid * self.grid + 1

    @property
    def root(self) -> str:
        """The prefix of the whole model (where a text tower and ``logit_scale`` live)."""
        tail = "visual." if self.layout == "open_clip" else "vision_model."
        return self.prefix[:-len(tail)] if self.prefix.endswith(tail) else self.prefix

    def names(self) -> dict[str, str]:
        """``{role: key}`` of every tensor the forward reads except the projection; roles are
        ``patch``, ``cls``, ``pos``, ``pre.w``/``pre.b``, ``post.w``/``post.b`` and per block
        ``{i}.ln1.w``, ``{i}.qkv.w`` (open_clip) or ``{i}.q.w``... (hf), ``{i}.out.w``, ``{i}.fc1.w``, ..."""
        p = self.prefix
        if self.layout == "open_clip":
            out = {"patch": p + "conv1.weight", "cls": p + "class_embedding", "pos": p + "positional_embedding",
                   "pre.w": p + "ln_pre.weight", "pre.b": p + "ln_pre.bias"}
            for i in range(self.layers):
                out.update(_open_clip_block(f"{p}transformer.resblocks.{i}.", f"{i}."))
            out.update({"post.w": p + "ln_post.weight", "post.b": p + "ln_post.bias"})
        else:
            out = {"cls": p + "embeddings.class_embedding", "patch": p + "embeddings.patch_embedding.weight",
                   "pos": p + "embeddings.position_embedding.weight", "pre.w": p + "pre_layrnorm.weight",
                   "pre.b": p + "pre_layrnorm.bias"}
            for i in range(self.layers):
                out.update(_hf_block(f"{p}encoder.layers.{i}.", f"{i}."))
            out.update({"post.w": p + "post_layernorm.weight", "post.b": p + "post_layernorm.bias"})
        return out

    def keys(self) -> list[str]:
        """Every key of the tower the forward reads, projection included, in module order."""
        return list(self.names().values()) + ([self.projection] if self.projection else [])

    def describe(self) -> str:
        act = "QuickGELU" if self.quick_gelu else "GELU"
        proj = f", projection to {self.out_dim}" if self.projection else ", no projection"
        return (f"{self.layout} ViT (image {self.image_size}, patch {self.patch}, width {self.width}, "
                f"{self.layers} layers, {self.heads} heads, MLP {self.mlp}, {act}{proj})")


def _open_clip_block(p: str, r: str) -> dict[str, str]:
    return {r + "ln1.w": p + "ln_1.weight", r + "ln1.b": p + "ln_1.bias",
            r + "qkv.w": p + "attn.in_proj_weight", r + "qkv.b": p + "attn.in_proj_bias",
            r + "out.w": p + "attn.out_proj.weight", r + "out.b": p + "attn.out_proj.bias",
            r + "ln2.w": p + "ln_2.weight", r + "ln2.b": p + "ln_2.bias",
            r + "fc1.w": p + "mlp.c_fc.weight", r + "fc1.b": p + "mlp.c_fc.bias",
            r + "fc2.w": p + "mlp.c_proj.weight", r + "fc2.b": p + "mlp.c_proj.bias"}


def _hf_block(p: str, r: str) -> dict[str, str]:
    out = {r + "ln1.w": p + "layer_norm1.weight", r + "ln1.b": p + "layer_norm1.bias"}
    for name in ("q", "k", "v"):
        out.update({f"{r}{name}.w": f"{p}self_attn.{name}_proj.weight", f"{r}{name}.b": f"{p}self_attn.{name}_proj.bias"})
    out.update({r + "out.w": p + "self_attn.out_proj.weight", r + "out.b": p + "self_attn.out_proj.bias",
                r + "ln2.w": p + "layer_norm2.weight", r + "ln2.b": p + "layer_norm2.bias",
                r + "fc1.w": p + "mlp.fc1.weight", r + "fc1.b": p + "mlp.fc1.bias",
                r + "fc2.w": p + "mlp.fc2.weight", r + "fc2.b": p + "mlp.fc2.bias"})
    return out


class TowerError(FreqMergeError):
    """A checkpoint holds no CLIP image tower the forward can run (or an unsupported variant)."""


_IGNORED = re.compile(r"(?:^|\.)position_ids$")
"""Tower keys the forward does not need (integer buffers some transformers versions saved)."""


def _shape(state, key: str) -> tuple[int, ...]:
    shape_of = getattr(state, "shape_of", None)
    return tuple(shape_of(key)) if shape_of else tuple(state[key].shape)


def find_tower(state: Mapping[str, torch.Tensor], *, head_width: int = DEFAULT_HEAD_WIDTH,
               heads: int | None = None, quick_gelu: bool = False, eps: float = 1e-5) -> Tower:
    """The CLIP image tower in `state`, recognised from key names and shapes alone.

    :class:`TowerError` when there is none, more than one, or one with tensors the forward
    would not read (an open_clip variant with layer scale, attentional pooling, ...) or lacks.
    """
    keys = list(state.keys())
    key_set = set(keys)
    found = []
    for key in keys:
        if key.endswith("conv1.weight"):
            p = key[:-len("conv1.weight")]
            if p + "class_embedding" in key_set and p + "positional_embedding" in key_set:
                found.append(("open_clip", p))
        elif key.endswith("embeddings.patch_embedding.weight"):
            found.append(("hf", key[:-len("embeddings.patch_embedding.weight")]))
    if not found:
        raise TowerError("no CLIP image tower: expected open_clip keys (`visual.conv1.weight`, "
                         "`visual.class_embedding`, ...) or Hugging Face CLIP keys "
                         "(`vision_model.embeddings.patch_embedding.weight`, ...)")
    if len(found) > 1:
        raise TowerError(f"several CLIP image towers: {', '.join(repr(p) for _, p in found)}")
    layout, prefix = found[0]
    block = re.compile(re.escape(prefix) + (r"transformer\.resblocks\.(\d+)\." if layout == "open_clip"
                                            else r"encoder\.layers\.(\d+)\."))
    indices = {int(m.group(1)) for k in keys if (m := block.match(k))}
    layers = max(indices) + 1 if indices else 0
    if layers == 0:
        raise TowerError(f"the image tower under {prefix!r} has no transformer blocks")
    probe = Tower(layout, prefix, layers, 0, 0, 0, 0)
    names = probe.names()
    missing = [k for k in names.values() if k not in key_set]
    if missing:
        raise TowerError(f"the {layout} image tower under {prefix!r} lacks {len(missing)} tensor(s) the forward "
                         f"reads: {', '.join(missing[:5])}")
    width = _shape(state, names["cls"])[0]
    patch_shape = _shape(state, names["patch"])
    pos_shape = _shape(state, names["pos"])
    if len(patch_shape) != 4 or patch_shape[0] != width or patch_shape[1] != 3 or patch_shape[2] != patch_shape[3]:
        raise TowerError(f"{names['patch']} has shape {patch_shape}, not [width {width}, 3, patch, patch]")
    grid = math.isqrt(max(pos_shape[0] - 1, 0))
    if len(pos_shape) != 2 or pos_shape[1] != width or grid * grid + 1 != pos_shape[0]:
        raise TowerError(f"{names['pos']} has shape {pos_shape}, not [1 + grid², width {width}]")
    mlp = _shape(state, names["0.fc1.w"])[0]
    if layout == "open_clip":
        root_projection = prefix + "proj"
    else:
        root = prefix[:-len("vision_model.")] if prefix.endswith("vision_model.") else prefix
        root_projection = root + "visual_projection.weight"
    projection = root_projection if root_projection in key_set else None
    out_dim = width
    if projection:
        shape = _shape(state, projection)
        if len(shape) != 2 or width not in shape:
            raise TowerError(f"{projection} has shape {shape}, not a projection from width {width}")
        out_dim = shape[1] if layout == "open_clip" else shape[0]
    n_heads = heads if heads is not None else width // head_width
    if n_heads < 1 or width % n_heads:
        raise TowerError(f"width {width} does not split into {'heads ' + str(heads) if heads else f'heads of width {head_width}'} "
                         "(set head_width)")
    tower = Tower(layout, prefix, layers, width, patch_shape[2], grid, mlp, n_heads, eps, quick_gelu, projection, out_dim)
    expected = set(tower.keys())
    extra = [k for k in keys if k.startswith(prefix) and k not in expected and not _IGNORED.search(k)
             and not (prefix == "" and layout == "hf" and k == "logit_scale")]
    if layout == "hf" and prefix == "":
        extra = [k for k in extra if not k.startswith(("text_model.", "text_projection"))]
    if extra:
        raise TowerError(f"the {layout} image tower under {prefix!r} has {len(extra)} tensor(s) this forward does "
                         f"not read (an unsupported variant?): {', '.join(extra[:5])}")
    return tower


@dataclass(frozen=True)
class TextTower:
    """A CLIP text tower (for zero-shot heads): layout, key names and sizes."""

    layout: str
    root: str
    layers: int
    width: int
    heads: int
    context: int
    vocab: int
    out_dim: int
    projection: str
    projection_linear: bool
    quick_gelu: bool = False
    eps: float = 1e-5
    logit_scale: str | None = None

    def names(self) -> dict[str, str]:
        r = self.root
        if self.layout == "open_clip":
            out = {"tok": r + "token_embedding.weight", "pos": r + "positional_embedding",
                   "final.w": r + "ln_final.weight", "final.b": r + "ln_final.bias"}
            for i in range(self.layers):
                out.update(_open_clip_block(f"{r}transformer.resblocks.{i}.", f"{i}."))
        else:
            t = r + "text_model."
            out = {"tok": t + "embeddings.token_embedding.weight", "pos": t + "embeddings.position_embedding.weight",
                   "final.w": t + "final_layer_norm.weight", "final.b": t + "final_layer_norm.bias"}
            for i in range(self.layers):
                out.update(_hf_block(f"{t}encoder.layers.{i}.", f"{i}."))
        return out


def find_text_tower(state: Mapping[str, torch.Tensor], tower: Tower, *, head_width: int = DEFAULT_HEAD_WIDTH,
                    heads: int | None = None, quick_gelu: bool | None = None, eps: float = 1e-5) -> TextTower:
    """The text tower next to image tower `tower` in `state` (:class:`TowerError` if none)."""
    keys = set(state.keys())
    root = tower.root
    if tower.layout == "open_clip":
        block = re.compile(re.escape(root) + r"transformer\.resblocks\.(\d+)\.")
        tok, proj = root + "token_embedding.weight", root + "text_projection"
    else:
        block = re.compile(re.escape(root) + r"text_model\.encoder\.layers\.(\d+)\.")
        tok, proj = root + "text_model.embeddings.token_embedding.weight", root + "text_projection.weight"
    linear = tower.layout == "hf"
    if tower.layout == "open_clip" and proj not in keys and proj + ".weight" in keys:
        proj, linear = proj + ".weight", True
    if tok not in keys or proj not in keys:
        raise TowerError(f"the checkpoint has no {tower.layout} text tower next to its image tower "
                         f"(no {tok!r} and {proj!r})")
    indices = {int(m.group(1)) for k in keys if (m := block.match(k))}
    vocab, width = _shape(state, tok)
    probe = TextTower(tower.layout, root, max(indices) + 1 if indices else 0, width, 1, 0, vocab, 0, proj, linear)
    names = probe.names()
    missing = [k for k in names.values() if k not in keys]
    if missing or not indices:
        raise TowerError(f"the text tower lacks {len(missing)} tensor(s): {', '.join(missing[:5])}")
    context = _shape(state, names["pos"])[0]
    shape = _shape(state, proj)
    out_dim = shape[0] if linear else shape[1]
    n_heads = heads if heads is not None else width // head_width
    if n_heads < 1 or width % n_heads:
        raise TowerError(f"text width {width} does not split into attention heads of width {head_width}")
    scale = root + "logit_scale"
    return replace(probe, heads=n_heads, context=context, out_dim=out_dim,
                   quick_gelu=tower.quick_gelu if quick_gelu is None else quick_gelu, eps=eps,
                   logit_scale=scale if scale in keys else None)


# ----------------------------------------------------------------------------- functional forward

def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 3, S, S]`` scaled to [0, 1] and normalised with CLIP's mean and std (float32);
    floating images are returned as float32, taken as normalised already."""
    if images.is_floating_point():
        return images.to(torch.float32)
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(3, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean) / std


def _act(x: torch.Tensor, quick: bool) -> torch.Tensor:
    return x * torch.sigmoid(QUICK_GELU_ALPHA * x) if quick else F.gelu(x)


def _block(x: torch.Tensor, params: Mapping[str, torch.Tensor], names: Mapping[str, str], i: int, *, heads: int,
           eps: float, quick: bool, layout: str, mask: torch.Tensor | None = None, first_only: bool = False
           ) -> torch.Tensor:
    """One pre-norm residual block (attention, MLP) on ``x [n, T, W]``; `first_only`: the
    output at token 0 only (queries and the residual stream of the first token)."""
    r = f"{i}."
    n, width = x.shape[0], x.shape[-1]
    hd = width // heads
    h = F.layer_norm(x, (width,), params[names[r + "ln1.w"]], params[names[r + "ln1.b"]], eps)
    if layout == "open_clip":
        wq, wk, wv = params[names[r + "qkv.w"]].chunk(3, dim=0)
        bq, bk, bv = params[names[r + "qkv.b"]].chunk(3, dim=0)
    else:
        wq, wk, wv = (params[names[f"{r}{c}.w"]] for c in "qkv")
        bq, bk, bv = (params[names[f"{r}{c}.b"]] for c in "qkv")
    queries = h[:, :1] if first_only else h
    q = F.linear(queries, wq, bq).reshape(n, -1, heads, hd).transpose(1, 2)
    k = F.linear(h, wk, bk).reshape(n, -1, heads, hd).transpose(1, 2)
    v = F.linear(h, wv, bv).reshape(n, -1, heads, hd).transpose(1, 2)
    scores = (q * (1.0 / math.sqrt(hd))) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(n, -1, width)
    if first_only:
        x = x[:, :1]
    x = x + F.linear(attended, params[names[r + "out.w"]], params[names[r + "out.b"]])
    h = F.layer_norm(x, (width,), params[names[r + "ln2.w"]], params[names[r + "ln2.b"]], eps)
    h = _act(F.linear(h, params[names[r + "fc1.w"]], params[names[r + "fc1.b"]]), quick)
    return x + F.linear(h, params[names[r + "fc2.w"]], params[names[r + "fc2.b"]])


def image_features(params: Mapping[str, torch.Tensor], images: torch.Tensor, tower: Tower,
                   projection: torch.Tensor | None = None) -> torch.Tensor:
    """Image embeddings ``[N, D]`` of `images` (``uint8 [N, 3, S, S]``, or normalised floats)
    under the tower's parameters `params` (keyed as in the checkpoint), in functional ops vmap
    batches over parameter sets. The same computation as open_clip's ``VisionTransformer`` and
    transformers' ``CLIPVisionModel`` (+ ``visual_projection``), with attention written out and
    the last block computed for the class token only. `projection` replaces a projection
    absent from `params` (one taken from the pretrained, not merged)."""
    names = tower.names()
    x = normalise_images(images)
    n, p, width = x.shape[0], tower.patch, tower.width
    if tuple(x.shape[1:]) != (3, tower.image_size, tower.image_size):
        raise ParameterError(f"the image tower takes images [N, 3, {tower.image_size}, {tower.image_size}], "
                             f"got {tuple(images.shape)}")
    patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(n, -1, 3 * p * p)
    x = F.linear(patches, params[names["patch"]].reshape(width, -1))
    x = torch.cat([params[names["cls"]].reshape(1, 1, width).expand(n, 1, width), x], dim=1) + params[names["pos"]]
    x = F.layer_norm(x, (width,), params[names["pre.w"]], params[names["pre.b"]], tower.eps)
    for i in range(tower.layers):
        x = _block(x, params, names, i, heads=tower.heads, eps=tower.eps, quick=tower.quick_gelu,
                   layout=tower.layout, first_only=i == tower.layers - 1)
    pooled = F.layer_norm(x[:, 0], (width,), params[names["post.w"]], params[names["post.b"]], tower.eps)
    if tower.projection is None:
        return pooled
    weight = params[tower.projection] if tower.projection in params else projection
    if weight is None:
        raise ParameterError(f"the image tower's projection {tower.projection!r} is missing")
    return pooled @ weight if tower.layout == "open_clip" else F.linear(pooled, weight)


def text_features(params: Mapping[str, torch.Tensor], tokens: torch.Tensor, text: TextTower) -> torch.Tensor:
    """Text embeddings ``[N, D]`` of token ids ``[N, context]`` (open_clip's tokenizer: the end
    token has the highest id) under the text tower's parameters: causal attention, the final
    norm, the end token's features, the projection (open_clip ``encode_text``, transformers
    ``CLIPModel.get_text_features``)."""
    names = text.names()
    n, length = tokens.shape
    x = F.embedding(tokens, params[names["tok"]]) + params[names["pos"]][:length]
    mask = torch.full((length, length), float("-inf"), device=x.device).triu(1)
    for i in range(text.layers):
        x = _block(x, params, names, i, heads=text.heads, eps=text.eps, quick=text.quick_gelu, layout=text.layout,
                   mask=mask)
    x = F.layer_norm(x, (text.width,), params[names["final.w"]], params[names["final.b"]], text.eps)
    pooled = x[torch.arange(n, device=x.device), tokens.argmax(dim=-1)]
    weight = params[text.projection]
    return F.linear(pooled, weight) if text.projection_linear else pooled @ weight


def classification_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          normalize: bool = True) -> torch.Tensor:
    """task_vectors' ``ClassificationHead``: L2-normalise the embeddings (if `normalize`), then linear."""
    if normalize:
        features = features / features.norm(dim=-1, keepdim=True)
    return F.linear(features, weight, bias)


# ----------------------------------------------------------------------------- images

def preprocess_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """``uint8 [3, size, size]``: the image at `path` as open_clip's evaluation transform takes
    it (RGB, shortest side resized to `size` with bicubic filtering, centre crop), decoded with
    Pillow, before scaling and normalisation (:func:`normalise_images`)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.reshape(size, size, 3).permute(2, 0, 1).contiguous()


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively, following links), sorted as torchvision's ImageFolder."""
    out = []
    for root, _, files in sorted(os.walk(folder, followlinks=True)):
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                out.append(Path(root) / name)
    return out


def _round_robin(per_class: Sequence[Sequence[Path]]) -> list[tuple[Path, int]]:
    out = []
    for i in range(max((len(files) for files in per_class), default=0)):
        out.extend((files[i], label) for label, files in enumerate(per_class) if i < len(files))
    return out


# ----------------------------------------------------------------------------- heads

@dataclass
class Head:
    """A task's classification head: ``weight [C, D]``, ``bias [C]``, L2-normalised inputs or not."""

    weight: torch.Tensor
    bias: torch.Tensor
    normalize: bool = True
    source: str = ""


def _read_head_file(path: Path) -> tuple[LazyState, str, str | None, bool]:
    """(state, weight key, bias key or None, normalize) of a head file, from headers only."""
    state = load_state(path, pickled_modules=True)
    matrices = [k for k in state if k.endswith("weight") and len(state.shape_of(k)) == 2]
    if len(matrices) != 1:
        raise CheckpointError(path, f"a head file must hold one `weight` matrix [classes, dim]; it holds "
                                    f"{len(matrices)} 2-D `*weight` tensors ({', '.join(matrices[:4])})")
    weight = matrices[0]
    bias = weight[:-len("weight")] + "bias"
    normalize = True
    if isinstance(state, PickledModuleState):
        from ..pickled import InertRecord, restricted_load

        top = restricted_load(path)
        if isinstance(top, InertRecord) and isinstance(top.state, Mapping) and isinstance(
                top.state.get("normalize"), bool):
            normalize = top.state["normalize"]
    return state, weight, bias if bias in state else None, normalize


# ----------------------------------------------------------------------------- tokenizer

_TOKENIZER = None
_TOKENIZER_LOCK = threading.Lock()


def clip_tokenizer():
    """open_clip's tokenize function ``tokenize(texts, context_length) -> LongTensor``.

    Read from the installed open_clip's ``tokenizer.py`` and BPE vocabulary without importing
    the package (so without torchvision); :class:`FreqMergeError` with the install command
    when open_clip (or ftfy, regex) is missing."""
    global _TOKENIZER
    with _TOKENIZER_LOCK:
        if _TOKENIZER is not None:
            return _TOKENIZER
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise FreqMergeError(f"zero-shot heads need open_clip's tokenizer: {INSTALL_HINT}")
        file = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
        name = "freqmerge_viz.study._open_clip_tokenizer"
        try:
            module_spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            tokenize = module.tokenize
        except Exception as exc:  # noqa: BLE001 - a standalone read failed: try the package
            sys.modules.pop(name, None)
            try:
                import open_clip

                tokenize = open_clip.tokenize
            except Exception as again:  # noqa: BLE001
                raise FreqMergeError(f"zero-shot heads need open_clip's tokenizer, which does not load "
                                     f"({type(exc).__name__}: {exc}; importing open_clip: "
                                     f"{type(again).__name__}: {again}): {INSTALL_HINT}") from again
        _TOKENIZER = tokenize
        return tokenize


# ----------------------------------------------------------------------------- the study

@dataclass
class _TaskData:
    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]]
    folders: list[Path] = field(default_factory=list)


def _hf_config(path: Path) -> dict:
    """``{"vision": config, "text": config}`` of a Hugging Face CLIP folder (the parts it has; empty
    for anything else)."""
    file = path / "config.json" if path.is_dir() else None
    if file is None or not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(config, dict):
        return {}
    if config.get("model_type") == "clip":
        return {"vision": config.get("vision_config") or {}, "text": config.get("text_config") or {}}
    if config.get("model_type") == "clip_vision_model":
        return {"vision": config}
    if config.get("model_type") == "clip_text_model":
        return {"text": config}
    return {}


def _detected_quick_gelu(state: LazyState, hf: dict) -> bool | None:
    """QuickGELU as the checkpoint says (a pickled module naming it, a Hugging Face config), or None."""
    if isinstance(state, PickledModuleState):
        return any(name.endswith("QuickGELU") for name in state.checkpoint.foreign) or None
    act = (hf.get("vision") or {}).get("hidden_act")
    if act is not None:
        return act == "quick_gelu"
    return None


class CompletedState(LazyState):
    """A fine-tuned checkpoint's image tower (`tower`, under the pretrained's names) completed with
    the pretrained's other tensors (text tower, logit scale, ...: what fine-tuning left alone),
    so that it has the pretrained's keys, as the merges require. Only `tower`'s files are its
    origins."""

    def __init__(self, tower: LazyState, pretrained: LazyState):
        self.tower, self.pretrained = tower, pretrained
        super().__init__(tower.name, [k for k in pretrained.keys() if k not in tower] + list(tower.keys()))

    @property
    def fresh_tensors(self) -> bool:
        return self.tower.fresh_tensors and self.pretrained.fresh_tensors

    @property
    def bytes_read(self) -> int:
        return self.tower.bytes_read

    def _source_state(self, key: str) -> LazyState:
        return self.tower if key in self.tower else self.pretrained

    def _file_origins(self):
        return self.tower.origins

    def _load(self, key: str) -> torch.Tensor:
        return self._source_state(key)[key]

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._source_state(key).shape_of(key))

    def _dtype(self, key: str) -> torch.dtype:
        return self._source_state(key).dtype_of(key)

    def _source(self, key: str) -> str:
        return self._source_state(key).source_of(key)


class OpenClipStudy(Study):
    """A study of CLIP image towers (see the module docstring); build it with
    :func:`~freqmerge_viz.study.load_study` from a ``kind: open_clip`` file."""

    threads = None

    kind = "open_clip"
    unit = "images"
    metric = "accuracy"

    def __init__(self, spec: Spec):
        self._spec = spec
        self.name = spec.name
        self.default_limit = spec.positive_int("limit", DEFAULT_LIMIT)
        self._max_images = spec.positive_int("max_images")
        self._head_width = spec.positive_int("head_width", DEFAULT_HEAD_WIDTH)
        quick = spec.typed("quick_gelu", bool)
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._heads: dict[tuple[str, str], Head] = {}
        self._pretrained_params: dict[str, torch.Tensor] | None = None
        self._device_params: tuple[torch.device, dict[str, torch.Tensor]] | None = None
        self.input_paths: list[Path] = []

        # checkpoints
        pre_path = spec.existing("pretrained")
        self.pretrained = self._open(pre_path, "pretrained")
        hf = _hf_config(pre_path)
        vision = hf.get("vision") or {}
        detected = _detected_quick_gelu(self.pretrained, hf)
        try:
            tower = find_tower(self.pretrained, head_width=self._head_width, heads=vision.get("num_attention_heads"),
                               eps=float(vision.get("layer_norm_eps", 1e-5)))
            if tower.layout == "hf" and detected is None:
                detected = True  # CLIPVisionConfig's default hidden_act (no config, or none recorded)
            self.quick_gelu = quick if quick is not None else bool(detected)
            self.tower = replace(tower, quick_gelu=self.quick_gelu)
        except TowerError as exc:
            raise spec.error("pretrained", f"{pre_path}: {exc}") from None
        self._hf_text = hf.get("text") or {}
        finetuned = spec.mapping("finetuned")
        self.tasks = list(finetuned)
        towers = {}
        states = {}
        for task, value in finetuned.items():
            label = f"finetuned.{task}"
            path = spec.existing("finetuned", value, label=label)
            states[task] = self._open(path, label)
            towers[task] = self._check_finetuned(states[task], path, label)
        self.finetuned = self._line_up(states, towers)
        self._frozen_projection = self.tower.projection if self.tower.projection not in self._backbone else None

        # data, then heads
        self._data = self._read_data_field()
        self._sources = self._read_heads()
        self.head_kinds = ("finetuned",) + tuple(self._sources)
        self.input_paths = list(dict.fromkeys([*(f for d in self._data.values() for f in d.folders),
                                               *self.input_paths]))

    # ------------------------------------------------------------------ checkpoints
    def _open(self, path: Path, label: str) -> LazyState:
        try:
            return load_state(path, pickled_modules=True)
        except FreqMergeError as exc:
            raise self._spec.error(label, str(exc)) from None

    def _check_finetuned(self, state: LazyState, path: Path, label: str) -> Tower:
        pre = self.tower
        other = f"{path}: a checkpoint of another architecture than the pretrained {pre.describe()}"
        try:
            tower = find_tower(state, head_width=self._head_width, heads=pre.heads)
        except TowerError as exc:
            raise self._spec.error(label, f"{other}: {exc}") from None
        if tower.layout != pre.layout:
            raise self._spec.error(label, f"{other}: its image tower has the {tower.layout} layout, "
                                          f"the pretrained's the {pre.layout} layout")
        for what in ("layers", "width", "patch", "grid", "mlp"):
            if getattr(tower, what) != getattr(pre, what):
                raise self._spec.error(label, f"{other}: its image tower is a {tower.describe()}")
        mine, theirs = pre.names(), tower.names()
        for role, key in mine.items():
            if role not in theirs or theirs[role] not in state:
                raise self._spec.error(label, f"{other}: it lacks {key!r}")
            if _shape(state, theirs[role]) != _shape(self.pretrained, key):
                raise self._spec.error(label, f"{other}: {theirs[role]!r} has shape {_shape(state, theirs[role])}, "
                                              f"the pretrained's {key!r} {_shape(self.pretrained, key)}")
        if tower.projection and pre.projection and _shape(state, tower.projection) != _shape(self.pretrained,
                                                                                              pre.projection):
            raise self._spec.error(label, f"{other}: its projection {tower.projection!r} has shape "
                                          f"{_shape(state, tower.projection)}, the pretrained's "
                                          f"{_shape(self.pretrained, pre.projection)}")
        if tower.projection and not pre.projection:
            raise self._spec.error(label, f"{other}: it has a projection {tower.projection!r}, the pretrained none")
        return tower

    def _line_up(self, states: dict[str, LazyState], towers: dict[str, Tower]) -> dict[str, Mapping]:
        """The fine-tuned states as the merges take them: as read when they share the pretrained's
        names; else each as a :class:`CompletedState` (its tower under the pretrained's names)."""
        pre = self.tower
        project = pre.projection is not None and all(t.projection for t in towers.values())
        self._backbone = [k for k in pre.keys() if k != pre.projection or project]
        same = all(t.prefix == pre.prefix for t in towers.values())
        key_sets = {frozenset(s.keys()) for s in states.values()}
        if same and len(key_sets) == 1 and next(iter(key_sets)) <= set(self.pretrained.keys()) and all(
                _shape(s, k) == _shape(self.pretrained, k) for s in states.values() for k in s.keys()):
            return dict(states)
        out = {}
        for task, state in states.items():
            tower = towers[task]
            theirs = tower.names()
            mapping = {key: theirs[role] for role, key in pre.names().items()}
            if project:
                mapping[pre.projection] = tower.projection
            out[task] = CompletedState(KeyMapState(state, mapping, name=state.name), self.pretrained)
        return out

    # ------------------------------------------------------------------ data
    def _read_data_field(self) -> dict[str, _TaskData]:
        spec = self._spec
        data = spec.mapping("data")
        extra = [t for t in data if t not in self.tasks]
        if extra:
            raise spec.error(f"data.{extra[0]}", f"no fine-tuned model for task {extra[0]!r}; the tasks (from "
                                                 f"finetuned) are {', '.join(self.tasks)}")
        out = {}
        for task in self.tasks:
            label = f"data.{task}"
            entry = data.get(task)
            if entry is None:
                raise spec.error(label, "is required: {val: dir, test: dir} or {root: dir, split: {val: 0.5}}")
            if not isinstance(entry, Mapping) or not entry:
                raise spec.error(label, f"must be a mapping {{val: dir, test: dir}} or {{root: dir, split: ...}}, "
                                        f"got {entry!r}")
            entry = {str(k): v for k, v in entry.items()}
            out[task] = self._split_rule(task, entry) if "root" in entry else self._split_folders(task, entry)
        return out

    def _split_folders(self, task: str, entry: dict) -> _TaskData:
        spec, label = self._spec, f"data.{task}"
        unknown = [k for k in entry if k not in ("train", "val", "test")]
        if unknown:
            raise spec.error(f"{label}.{unknown[0]}", "unknown key; a task's data is {train: dir, val: dir, "
                                                      "test: dir} or {root: dir, split: {...}}")
        for split in SPLITS:
            if entry.get(split) is None:
                raise spec.error(f"{label}.{split}", f"is required (a folder of class folders for the {split!r} split)")
        classes, splits, folders = None, {}, []
        for split, value in entry.items():
            where = f"{label}.{split}"
            folder = spec.existing(where, value, folder=True, label=where)
            folders.append(folder)
            found = _class_folders(folder)
            if not found:
                raise spec.error(where, f"{folder} holds no class folders (<dir>/<class>/<image>)")
            if classes is None:
                classes, first = found, where
            elif found != classes:
                missing, added = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
                raise spec.error(where, f"{folder} has other class folders than {first}: "
                                        + "; ".join(filter(None, [f"missing {missing[:5]}" if missing else "",
                                                                  f"extra {added[:5]}" if added else ""])))
            per_class = [_image_files(folder / c) for c in classes]
            splits[split] = self._cap(_round_robin(per_class), where, folder)
        return _TaskData(classes, splits, folders)

    def _split_rule(self, task: str, entry: dict) -> _TaskData:
        spec, label = self._spec, f"data.{task}"
        unknown = [k for k in entry if k not in ("root", "split")]
        if unknown:
            raise spec.error(f"{label}.{unknown[0]}", "unknown key next to `root`; use {root: dir, split: "
                                                      "{train: 0.0, val: 0.5, seed: 0}}")
        folder = spec.existing(f"{label}.root", entry["root"], folder=True, label=f"{label}.root")
        rule = entry.get("split")
        if not isinstance(rule, Mapping):
            raise spec.error(f"{label}.split", f"must be a mapping such as {{val: 0.5, seed: 0}}, got {rule!r}")
        rule = {str(k): v for k, v in rule.items()}
        bad = [k for k in rule if k not in ("train", "val", "test", "seed")]
        if bad:
            raise spec.error(f"{label}.split.{bad[0]}", "unknown key; the rule takes train, val, test (fractions) "
                                                        "and seed")
        if "val" not in rule:
            raise spec.error(f"{label}.split.val", "is required (the fraction of each class's images for val)")
        fractions = {}
        for name in ("train", "val", "test"):
            value = rule.get(name, 0.0 if name == "train" else None)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise spec.error(f"{label}.split.{name}", f"must be a fraction in [0, 1], got {value!r}")
            fractions[name] = float(value)
        total = sum(fractions.values())
        if total > 1 + 1e-9:
            raise spec.error(f"{label}.split", f"the fractions add up to {total:g} > 1")
        seed = rule.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise spec.error(f"{label}.split.seed", f"must be an integer, got {seed!r}")
        classes = _class_folders(folder)
        if not classes:
            raise spec.error(f"{label}.root", f"{folder} holds no class folders (<dir>/<class>/<image>)")
        cuts: dict[str, list[list[Path]]] = {"train": [], "val": [], "test": []}
        for name in classes:
            files = _image_files(folder / name)
            random.Random(f"{seed}:{name}").shuffle(files)
            n, start, cum = len(files), 0, 0.0
            for split in ("train", "val", "test"):
                cum += fractions.get(split, 1.0 - total if split == "test" else 0.0)
                stop = n if split == "test" and "test" not in fractions else min(n, int(math.floor(n * cum + 0.5)))
                cuts[split].append(sorted(files[start:stop]))
                start = stop
        splits = {}
        for split, per_class in cuts.items():
            if split == "train" and fractions.get("train", 0.0) == 0.0:
                continue
            splits[split] = self._cap(_round_robin(per_class), f"{label}.split.{split}", folder)
        return _TaskData(classes, splits, [folder])

    def _cap(self, samples: list, where: str, folder: Path) -> list:
        if not samples:
            raise self._spec.error(where, f"no images ({', '.join(IMAGE_EXTENSIONS)}) for this split under {folder}")
        return samples[:self._max_images] if self._max_images else samples

    def classes(self, task: str) -> list[str]:
        """The task's class names (its class folders, sorted); label ``i`` is ``classes(task)[i]``."""
        self.check_task(task)
        return list(self._data[task].classes)

    def data(self, task: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """``(images uint8 [N, 3, S, S], labels [N])`` of `task`'s `split` (decoded once, cached)."""
        self.check_task(task)
        samples = self._data[task].splits.get(split)
        if samples is None:
            raise StudySpecError(self._spec.path, f"data.{task}.{split}",
                                 f"task {task!r} has no {split!r} split (it has: "
                                 f"{', '.join(self._data[task].splits)})")
        with self._lock:
            cached = self._cache.get((task, split))
        if cached is not None:
            return cached
        size = self.tower.image_size

        def decode(sample):
            try:
                return preprocess_image(sample[0], size)
            except Exception as exc:  # noqa: BLE001 - any decoding failure names the file
                raise StudySpecError(self._spec.path, f"data.{task}.{split}",
                                     f"cannot read image {sample[0]}: {type(exc).__name__}: {exc}") from exc

        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            images = list(pool.map(decode, samples))
        result = (torch.stack(images), torch.tensor([label for _, label in samples], dtype=torch.long))
        with self._lock:
            return self._cache.setdefault((task, split), result)

    # ------------------------------------------------------------------ heads
    def _read_heads(self) -> dict[str, object]:
        spec = self._spec
        sources: dict[str, object] = {}
        heads = spec.mapping("heads", required=False)
        zeroshot = spec.get("zeroshot")
        probe = spec.get("linear_probe")
        if not heads and zeroshot is None and probe is None:
            raise spec.error("heads", "a head per task is required: heads: {task: file}, zeroshot: {templates: "
                                      "[...]} or linear_probe: {split: train}")
        if heads:
            sources["files"] = self._head_files(heads)
        if zeroshot is not None:
            sources["zeroshot"] = self._zeroshot_field(zeroshot)
        if probe is not None:
            sources["probe"] = self._probe_field(probe)
        return sources

    def _head_files(self, heads: dict) -> dict[str, Head]:
        spec = self._spec
        extra = [t for t in heads if t not in self.tasks]
        if extra:
            raise spec.error(f"heads.{extra[0]}", f"no fine-tuned model for task {extra[0]!r}")
        out = {}
        for task in self.tasks:
            label = f"heads.{task}"
            if heads.get(task) is None:
                raise spec.error(label, "is required (a head file per task)")
            path = spec.existing("heads", heads[task], folder=False, label=label)
            self.input_paths.append(path)
            try:
                state, weight, bias, normalize = _read_head_file(path)
            except FreqMergeError as exc:
                raise spec.error(label, str(exc)) from None
            classes, dim = state.shape_of(weight)
            wanted = len(self._data[task].classes)
            if classes != wanted:
                raise spec.error(label, f"{path}: the head has {classes} classes, the task's data "
                                        f"{wanted} ({', '.join(self._data[task].classes[:6])}"
                                        f"{', ...' if wanted > 6 else ''})")
            if dim != self.tower.out_dim:
                raise spec.error(label, f"{path}: the head reads {dim}-dim embeddings, the image tower gives "
                                        f"{self.tower.out_dim}")
            if bias is not None and tuple(state.shape_of(bias)) != (classes,):
                raise spec.error(label, f"{path}: bias {bias!r} has shape {tuple(state.shape_of(bias))}, "
                                        f"not [{classes}]")
            w = state[weight].to(torch.float32)
            b = state[bias].to(torch.float32) if bias is not None else torch.zeros(classes)
            out[task] = Head(w, b, normalize, f"file {path}")
        return out

    def _zeroshot_field(self, value) -> dict:
        spec = self._spec
        if not isinstance(value, Mapping):
            raise spec.error("zeroshot", f"must be a mapping {{templates: [...]}}, got {value!r}")
        value = {str(k): v for k, v in value.items()}
        bad = [k for k in value if k not in ("templates", "classnames", "logit_scale")]
        if bad:
            raise spec.error(f"zeroshot.{bad[0]}", "unknown key; zeroshot takes templates, classnames, logit_scale")
        templates = value.get("templates", list(DEFAULT_TEMPLATES))
        if (not isinstance(templates, list) or not templates
                or not all(isinstance(t, str) and "{}" in t for t in templates)):
            raise spec.error("zeroshot.templates", f"must be a non-empty list of strings with `{{}}` where the "
                                                   f"class name goes, got {templates!r}")
        scale = value.get("logit_scale", True)
        if not isinstance(scale, bool):
            raise spec.error("zeroshot.logit_scale", f"must be true or false, got {scale!r}")
        names = value.get("classnames") or {}
        if not isinstance(names, Mapping):
            raise spec.error("zeroshot.classnames", f"must be a mapping {{task: [names]}}, got {names!r}")
        classnames = {}
        for task in self.tasks:
            given = names.get(task)
            wanted = len(self._data[task].classes)
            if given is None:
                classnames[task] = [c.replace("_", " ") for c in self._data[task].classes]
            elif not isinstance(given, list) or not all(isinstance(c, str) for c in given) or len(given) != wanted:
                raise spec.error(f"zeroshot.classnames.{task}", f"must be a list of {wanted} names (the task's "
                                                                f"class folders), got {given!r}")
            else:
                classnames[task] = list(given)
        extra = [t for t in names if t not in self.tasks]
        if extra:
            raise spec.error(f"zeroshot.classnames.{extra[0]}", f"no fine-tuned model for task {extra[0]!r}")
        text_cfg = self._hf_text
        try:
            text = find_text_tower(self.pretrained, self.tower, head_width=self._head_width,
                                   heads=text_cfg.get("num_attention_heads"),
                                   quick_gelu=(text_cfg["hidden_act"] == "quick_gelu") if "hidden_act" in text_cfg
                                   else None, eps=float(text_cfg.get("layer_norm_eps", 1e-5)))
        except TowerError as exc:
            raise spec.error("zeroshot", f"zero-shot heads need the pretrained's text tower: {exc}") from None
        if text.out_dim != self.tower.out_dim:
            raise spec.error("zeroshot", f"the text tower embeds in {text.out_dim} dimensions, the image tower in "
                                         f"{self.tower.out_dim}")
        if text.vocab < 49408:
            raise spec.error("zeroshot", f"the text tower's vocabulary has {text.vocab} tokens; open_clip's "
                                         "tokenizer needs 49408")
        try:
            clip_tokenizer()
        except FreqMergeError as exc:
            raise spec.error("zeroshot", str(exc)) from None
        return {"templates": list(templates), "classnames": classnames, "logit_scale": scale, "text": text}

    def _probe_field(self, value) -> dict:
        spec = self._spec
        if value is True:
            value = {}
        if not isinstance(value, Mapping):
            raise spec.error("linear_probe", f"must be a mapping {{split: train, steps: 100}}, got {value!r}")
        value = {str(k): v for k, v in value.items()}
        bad = [k for k in value if k not in ("split", "steps", "weight_decay")]
        if bad:
            raise spec.error(f"linear_probe.{bad[0]}", "unknown key; linear_probe takes split, steps, weight_decay")
        split = value.get("split", "train")
        steps = value.get("steps", 100)
        decay = value.get("weight_decay", 1e-4)
        if not isinstance(split, str):
            raise spec.error("linear_probe.split", f"must be a split name, got {split!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise spec.error("linear_probe.steps", f"must be an integer >= 1, got {steps!r}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or decay < 0:
            raise spec.error("linear_probe.weight_decay", f"must be a number >= 0, got {decay!r}")
        for task in self.tasks:
            if split not in self._data[task].splits:
                raise spec.error(f"data.{task}.{split}", f"is required: linear_probe fits on the {split!r} split")
        return {"split": split, "steps": steps, "weight_decay": float(decay)}

    def head(self, task: str, head: str = "finetuned") -> Head:
        """`task`'s head of kind `head` (``"finetuned"``: the first of files, zeroshot, probe given)."""
        self.check_task(task)
        self.check_head(head)
        kind = next(iter(self._sources)) if head == "finetuned" else head
        with self._lock:
            if (task, kind) not in self._heads:
                if kind == "files":
                    self._heads[(task, kind)] = self._sources["files"][task]
                elif kind == "zeroshot":
                    self._heads[(task, kind)] = self._zeroshot_head(task)
                else:
                    self._heads[(task, kind)] = self._probe_head(task)
            return self._heads[(task, kind)]

    def _pretrained_tensors(self, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """The pretrained tower's tensors (float32; on `device`, the last device asked for is kept)."""
        with self._lock:
            if self._pretrained_params is None:
                keys = self.tower.keys()
                self._pretrained_params = {k: self.pretrained[k].to(torch.float32) for k in keys}
            if device is None or torch.device(device).type == "cpu":
                return self._pretrained_params
            if self._device_params is None or self._device_params[0] != torch.device(device):
                self._device_params = (torch.device(device),
                                       {k: v.to(device) for k, v in self._pretrained_params.items()})
            return self._device_params[1]

    @torch.no_grad()
    def _zeroshot_head(self, task: str) -> Head:
        source = self._sources["zeroshot"]
        text = source["text"]
        params = {k: self.pretrained[k].to(torch.float32) for k in text.names().values()}
        params[text.projection] = self.pretrained[text.projection].to(torch.float32)
        tokenize = clip_tokenizer()
        rows = []
        for name in source["classnames"][task]:
            tokens = tokenize([t.replace("{}", name) for t in source["templates"]], text.context)
            embeddings = text_features(params, tokens, text)
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
            mean = embeddings.mean(dim=0)
            rows.append(mean / mean.norm())
        weight = torch.stack(rows)
        if source["logit_scale"] and text.logit_scale:
            weight = weight * self.pretrained[text.logit_scale].to(torch.float32).exp()
        return Head(weight, torch.zeros(len(rows)), True, f"zero-shot ({len(source['templates'])} templates)")

    def _probe_head(self, task: str) -> Head:
        source = self._sources["probe"]
        inputs, labels = self.data(task, source["split"])
        features = self.features(inputs)
        features = features / features.norm(dim=-1, keepdim=True)
        classes = len(self._data[task].classes)
        weight = torch.zeros(classes, features.shape[1], requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=source["steps"], history_size=20,
                                      line_search_fn="strong_wolfe")
        decay = source["weight_decay"]

        def closure():
            optimiser.zero_grad()
            loss = F.cross_entropy(F.linear(features, weight, bias), labels) + 0.5 * decay * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimiser.step(closure)
        return Head(weight.detach().clone(), bias.detach().clone(), True,
                    f"linear probe on {len(labels)} {source['split']} images")

    # ------------------------------------------------------------------ the study protocol
    def backbone_keys(self) -> list[str]:
        """The image tower's keys the forward reads (never the text tower), in module order."""
        return list(self._backbone)

    def functional_forward(self, task: str, head: str = "finetuned") -> Forward:
        """``forward(params, images) -> logits`` of the image tower and `task`'s `head` (pure,
        vmap-able, thread safe)."""
        weights = self.head(task, head)
        tower = self.tower
        frozen = self._pretrained_tensors()[self._frozen_projection] if self._frozen_projection else None

        def forward(params: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
            projection = frozen.to(images.device) if frozen is not None else None
            features = image_features(params, images, tower, projection)
            return classification_logits(features, weights.weight.to(images.device), weights.bias.to(images.device),
                                         weights.normalize)

        t, w = tower.tokens, tower.width
        forward.thread_safe = True
        forward.activation_bytes = 4 * t * (8 * w + 2 * tower.mlp + tower.heads * t)
        forward.fingerprint = "|".join([f"open_clip:{tower}", task, head, str(weights.normalize),
                                        tensor_digest(weights.weight), tensor_digest(weights.bias),
                                        tensor_digest(frozen) if frozen is not None else "-"])
        forward.__qualname__ = f"{self.name}.forward({task!r}, {head!r})"
        return forward

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, D]`` of `inputs` under the pretrained tower (projection included)."""
        params = self._pretrained_tensors(inputs.device)
        return torch.cat([image_features(params, inputs[i:i + 256], self.tower)
                          for i in range(0, len(inputs), 256)])

    def describe(self) -> str:
        heads = ", ".join(self._sources)
        return f"{super().describe()}; image tower: {self.tower.describe()}; heads: {heads}"


FIELDS = (
    Field("pretrained", "the pretrained checkpoint: a task_vectors pickle, an open_clip state dict, safetensors, or a "
                        "Hugging Face CLIP folder", required=True),
    Field("finetuned", "`{task: checkpoint}` (same formats; the tasks, in this order)", required=True),
    Field("data", "`{task: {val: dir, test: dir[, train: dir]}}` ImageFolder trees, or `{task: {root: dir, split: "
                  "{val: 0.5[, train: f, test: f, seed: 0]}}}`", required=True),
    Field("heads", "`{task: head file}`: task_vectors ClassificationHead pickles, or state dicts / safetensors with "
                   "weight [C, D] and bias [C]"),
    Field("zeroshot", "`{templates: [\"a photo of a {}.\"], classnames: {task: [...]}, logit_scale: true}`: heads "
                      "from the pretrained text tower (needs open_clip's tokenizer: `pip install freqmerge-viz[open_clip]`; nothing else does)"),
    Field("linear_probe", "`{split: train, steps: 100, weight_decay: 0.0001}`: logistic-regression heads on the "
                          "pretrained image embeddings of a split"),
    Field("quick_gelu", "the MLP activation is QuickGELU (OpenAI weights); default: as the checkpoint says "
                        "(pickled classes, HF config), else false"),
    Field("head_width", "attention head width for checkpoints that do not record heads (default 64)",
          default=DEFAULT_HEAD_WIDTH),
    Field("limit", "images per task and split the analyses use by default (default 64: real models on CPU)",
          default=DEFAULT_LIMIT),
    Field("max_images", "the most images read per task and split (default: all)"),
)


@register_kind("open_clip", "image classification with CLIP image towers (task_vectors, open_clip, FusionBench "
                            "Hugging Face checkpoints) on ImageFolder data", FIELDS)
def build_open_clip_study(spec: Spec) -> OpenClipStudy:
    return OpenClipStudy(spec)
