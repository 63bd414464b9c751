"""Key scopes: which tensors of a checkpoint are attention, MLP and layer matrices, embeddings.

Everything here reads key names and numbers of dimensions only (no tensor data), so it runs
on a checkpoint's header. A *scope* is a key predicate ``(key, ndim) -> bool`` with a name;
methods take scope names in their ``*_scope`` parameters, and ``a+b`` is the union of two.

=================  =====================================================================
scope              selects
=================  =====================================================================
``attention``      attention matrices: a key matching an attention pattern of
                   :data:`ARCHITECTURES` (any row of the table), 2+ dimensions
``mlp``            MLP matrices: an MLP pattern of the table, 2+ dimensions
``layer_matrices`` the weight matrices of the transformer layers: every tensor of 2+
                   dimensions except embeddings (below), output heads and projections
                   outside the numbered layers (a name part ``lm_head``, ``head(s)``,
                   ``classifier``, ``pooler``, ``fc``, ``score``, ``qa_outputs``, ``cls``,
                   ``pre_logits``, ``*proj``, ``*projection``), norms, biases, masks and
                   ``*_ids`` buffers. In a model without numbered layers every other
                   matrix counts (``w``, ``fc1.weight``)
``embeddings``     token, patch and position embeddings, class tokens, relative-position
                   tables and ``lm_head`` (any number of dimensions; not their biases
                   or norms)
``all_matrices``   every tensor of 2+ dimensions
``two_d``          every tensor of exactly 2 dimensions (the authors' LLM code)
``official``       the authors' predicate verbatim: ``'weight' in key and ('attn' in key
                   or 'mlp' in key)`` (written for open_clip names)
``attn_mlp``       the authors' merge predicate verbatim: ``'attn' in key or 'mlp' in key``
``all``            every key (a filter then acts as :func:`~freqmerge_viz.as_matrix` says:
                   1-D keys only with ``one_d="fft"``)
=================  =====================================================================

Older names: ``matrices`` is ``all`` (FR's former default, so a former setting behaves the
same, ``one_d`` included); ``attn_mlp_weights`` is ``official``.

An architecture is recognised (:func:`detect_architecture`) as the row of the table whose
attention and MLP patterns match the most keys, if any attention pattern matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from .errors import ParameterError


@dataclass(frozen=True)
class Architecture:
    """One row of the table: how a family names its attention and MLP weight matrices.

    ``attention`` and ``mlp`` are regular expressions matched against the end of a key, starting
    at a dotted component. ``transposed``: the matrices are stored ``in × out`` (GPT-2's
    ``Conv1D``), not ``out × in`` as ``nn.Linear`` stores them.
    """

    name: str
    label: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    transposed: bool = False

    def attention_keys(self, keys: Iterable[str]) -> list[str]:
        """The keys this family's attention patterns match, in order."""
        pattern = _compile(self.attention)
        return [k for k in keys if pattern.search(k)]

    def mlp_keys(self, keys: Iterable[str]) -> list[str]:
        """The keys this family's MLP patterns match, in order."""
        pattern = _compile(self.mlp)
        return [k for k in keys if pattern.search(k)]


_LAYER_OUTPUT = r"layer\.\d+\.output\.dense\.weight"  # the second MLP matrix of HF ViT and BERT
ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("open_clip", "open_clip ViT (visual and text towers)",
                 (r"attn\.in_proj_weight", r"attn\.out_proj\.weight"), (r"mlp\.c_fc\.weight", r"mlp\.c_proj\.weight")),
    Architecture("timm_vit", "timm ViT (the demo zoo)",
                 (r"attn\.qkv\.weight", r"attn\.proj\.weight"), (r"mlp\.fc1\.weight", r"mlp\.fc2\.weight")),
    Architecture("hf_clip", "Hugging Face CLIP (vision and text)",
                 (r"self_attn\.(?:q|k|v|out)_proj\.weight",), (r"mlp\.fc[12]\.weight",)),
    Architecture("hf_vit", "Hugging Face ViT",
                 (r"attention\.attention\.(?:query|key|value)\.weight", r"attention\.output\.dense\.weight"),
                 (r"intermediate\.dense\.weight", _LAYER_OUTPUT)),
    Architecture("bert", "BERT / RoBERTa",
                 (r"attention\.self\.(?:query|key|value)\.weight", r"attention\.output\.dense\.weight"),
                 (r"intermediate\.dense\.weight", _LAYER_OUTPUT)),
    Architecture("gpt2", "GPT-2 (Conv1D)",
                 (r"attn\.c_attn\.weight", r"attn\.c_proj\.weight"), (r"mlp\.c_fc\.weight", r"mlp\.c_proj\.weight"),
                 transposed=True),
    Architecture("llama", "Llama / Mistral / Qwen",
                 (r"self_attn\.(?:q|k|v|o)_proj\.weight",), (r"mlp\.(?:gate|up|down)_proj\.weight",)),
    Architecture("t5", "T5",
                 (r"(?:SelfAttention|EncDecAttention)\.[qkvo]\.weight",),
                 (r"DenseReluDense\.(?:wi|wo|wi_0|wi_1)\.weight",)),
)
"""The architectures whose attention and MLP matrices the scopes know, by key name."""


def _compile(patterns: Sequence[str]) -> re.Pattern:
    return re.compile(r"(?:^|\.)(?:" + "|".join(patterns) + r")$")


_ATTENTION = _compile([p for arch in ARCHITECTURES for p in arch.attention])
_MLP = _compile([p for arch in ARCHITECTURES for p in arch.mlp])
_EMBEDDING = re.compile(
    r"(?:^|\.)[^.]*[Ee]mbed[^.]*(?:\.|$)"                      # patch_embed, pos_embed, embeddings, embed_tokens
    r"|(?:^|\.)(?:cls_token|dist_token|reg_token|mask_token|register_tokens)$"
    r"|(?:^|\.)(?:wte|wpe|lm_head|relative_attention_bias)\.weight$"   # GPT-2, lm_head, T5 positions
    r"|^(?:[^.]*\.)?shared\.weight$"                          # T5's shared token embedding
    r"|(?:^|\.)relative_position_bias_table$"
    r"|(?:^|\.)visual\.conv1\.weight$")                       # open_clip ViT's patch embedding
_NORM = re.compile(r"(?:^|\.)(?:[^.]*[Nn][Oo][Rr][Mm][^.]*|ln(?:_[^.]*|\d*))\.(?:weight|bias)$")
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|head|heads|classifier|pooler|fc|score|qa_outputs|cls|pre_logits"
                   r"|[^.]*proj|[^.]*projection)(?:\.|$)")
_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|layer|h|resblocks|block)\.\d+\.")


def is_bias(key: str) -> bool:
    """A bias (``*.bias``, ``in_proj_bias``; GPT-2's ``attn.bias`` mask buffer too)."""
    last = key.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")


def in_layer(key: str) -> bool:
    """Inside a numbered layer (``blocks.3.``, ``layers.3.``, ``layer.3.``, ``h.3.``, ``resblocks.3.``, ``block.3.``)."""
    return _LAYER.search(key) is not None


def layer_position(key: str) -> tuple[str, int] | None:
    """``(stack, index)`` of the numbered layer holding `key` (``("visual.transformer.resblocks",
    3)`` for ``visual.transformer.resblocks.3.attn.in_proj_weight``; the first number when layers
    nest, as T5's ``block.0.layer.1``), or None outside numbered layers."""
    match = _LAYER.search(key)
    if match is None:
        return None
    stack, index = key[:match.end() - 1].rsplit(".", 1)
    return stack, int(index)


def depth_fractions(keys: Iterable[str]) -> dict[str, float]:
    """Each key's depth in [0, 1]: ``l / (L − 1)`` for layer l of a stack of L numbered layers
    (each stack on its own: a vision and a text tower, an encoder and a decoder; 0 when L = 1);
    0 for the embeddings and their biases and norms (before the first layer); 1 for every other
    key outside numbered layers (final norms, heads, projections: after the last layer)."""
    keys = list(keys)
    positions = {key: layer_position(key) for key in keys}
    sizes: dict[str, int] = {}
    for position in positions.values():
        if position is not None:
            sizes[position[0]] = max(sizes.get(position[0], 0), position[1] + 1)
    out = {}
    for key, position in positions.items():
        if position is not None:
            out[key] = position[1] / (sizes[position[0]] - 1) if sizes[position[0]] > 1 else 0.0
        else:
            out[key] = 0.0 if _EMBEDDING.search(key) else 1.0
    return out


def is_attention(key: str, ndim: int) -> bool:
    """An attention weight matrix of some architecture of :data:`ARCHITECTURES`."""
    return ndim >= 2 and _ATTENTION.search(key) is not None


def is_mlp(key: str, ndim: int) -> bool:
    """An MLP weight matrix of some architecture of :data:`ARCHITECTURES`."""
    return ndim >= 2 and _MLP.search(key) is not None


def is_embedding(key: str, ndim: int) -> bool:
    """A token, patch or position embedding, class token, relative-position table or ``lm_head``."""
    if ndim < 1 or is_bias(key) or _NORM.search(key) or key.endswith("_ids"):
        return False
    return _EMBEDDING.search(key) is not None


def is_layer_matrix(key: str, ndim: int) -> bool:
    """A weight matrix of the layers: 2+ dimensions, not an embedding, head, norm, bias, mask or id buffer."""
    last = key.rsplit(".", 1)[-1]
    if ndim < 2 or is_bias(key) or _NORM.search(key) or last.endswith(("mask", "_ids")):
        return False
    if is_embedding(key, ndim):
        return False
    return in_layer(key) or is_attention(key, ndim) or is_mlp(key, ndim) or not _HEAD.search(key)


def is_official(key: str, ndim: int = 0) -> bool:
    """The authors' filter predicate, verbatim: ``'weight' in key and ('attn' in key or 'mlp' in key)``."""
    return "weight" in key and ("attn" in key or "mlp" in key)


def is_attn_mlp(key: str, ndim: int = 0) -> bool:
    """The authors' merge predicate, verbatim: ``'attn' in key or 'mlp' in key``."""
    return "attn" in key or "mlp" in key


SCOPES: dict[str, Callable[[str, int], bool]] = {
    "attention": is_attention,
    "mlp": is_mlp,
    "layer_matrices": is_layer_matrix,
    "embeddings": is_embedding,
    "all_matrices": lambda key, ndim: ndim >= 2,
    "two_d": lambda key, ndim: ndim == 2,
    "official": is_official,
    "attn_mlp": is_attn_mlp,
    "all": lambda key, ndim: True,
}
"""Every named scope: ``name -> (key, ndim) -> bool``."""
ALIASES = {"matrices": "all", "attn_mlp_weights": "official"}
"""Older names still accepted."""
SCOPE_NAMES = tuple(SCOPES) + tuple(ALIASES)
"""Every name a ``*_scope`` parameter accepts (a ``+``-union of them too)."""
INSPECT_SCOPES = ("attention", "mlp", "layer_matrices", "embeddings", "all_matrices", "two_d", "official",
                  "attn_mlp")
"""The scopes ``freqmerge-viz inspect`` shows a column for."""
_ATTENTION_FREE = {"mlp", "embeddings"}


def scope_parts(scope: str) -> tuple[str, ...]:
    """The canonical scope names of `scope` (``"layer_matrices+embeddings"``, aliases resolved);
    :class:`ParameterError` listing the names for an unknown one."""
    parts = tuple(part.strip() for part in scope.split("+")) if isinstance(scope, str) else ()
    unknown = [part for part in parts if part not in SCOPES and part not in ALIASES]
    if not parts or unknown or "" in parts:
        raise ParameterError(f"unknown key scope {scope!r}; use one of {', '.join(SCOPE_NAMES)} "
                             f"or a '+'-union of them (e.g. 'layer_matrices+embeddings')")
    return tuple(ALIASES.get(part, part) for part in parts)


def selects(scope: str, key: str, ndim: int) -> bool:
    """Whether `scope` (a name or ``+``-union) selects `key`, a tensor of `ndim` dimensions."""
    return any(SCOPES[part](key, ndim) for part in scope_parts(scope))


def select(scope: str, shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """The keys of ``shapes`` (key → shape) that `scope` selects, in order."""
    parts = scope_parts(scope)
    return [k for k, shape in shapes.items() if any(SCOPES[p](k, len(shape)) for p in parts)]


def detect_architecture(keys: Iterable[str]) -> Architecture | None:
    """The row of :data:`ARCHITECTURES` whose patterns match the most `keys` (the first on a tie),
    or None if no attention pattern of any row matches."""
    keys = list(keys)
    best, best_score = None, 0
    for arch in ARCHITECTURES:
        attention = len(arch.attention_keys(keys))
        score = attention + len(arch.mlp_keys(keys))
        if attention and score > best_score:
            best, best_score = arch, score
    return best


def scope_warning(owner: str, scopes: Mapping[str, tuple[str, str]],
                  shapes: Mapping[str, Sequence[int]], shown: int = 3) -> str | None:
    """What a user should hear about `owner`'s scopes on a model, or None if nothing.

    `scopes` maps a parameter's name to ``(scope, suggested scope)``; `shapes` holds the model's
    keys and shapes. A scope is reported when it selects no key, or when the architecture is
    recognised and the scope, unless it is made of attention-free scopes only (``mlp``,
    ``embeddings``), selects none of its attention matrices. Models without any tensor of 2+
    dimensions are not checked.
    """
    if not any(len(shape) >= 2 for shape in shapes.values()):
        return None
    arch = detect_architecture(shapes)
    attention = arch.attention_keys(shapes) if arch else []
    problems, missed = [], False
    for param, (scope, suggestion) in scopes.items():
        chosen = set(select(scope, shapes))
        wants_attention = not set(scope_parts(scope)) <= _ATTENTION_FREE
        if not chosen:
            problems.append(f"{param}={scope!r} selects no key (use {suggestion!r})")
        elif attention and wants_attention and not chosen & set(attention):
            problems.append(f"{param}={scope!r} selects no attention matrix (use {suggestion!r})")
        else:
            continue
        missed = missed or wants_attention
    if not problems:
        return None
    where = f"this {arch.label} checkpoint (recognised from its key names)" if arch else \
        "this checkpoint (architecture not recognised)"
    text = f"{owner}: on {where}, " + "; ".join(problems) + "."
    if attention and missed:
        listed = ", ".join(repr(k) for k in attention[:shown])
        text += f" Attention matrices skipped: {listed}" + (f" and {len(attention) - shown} more" if
                                                             len(attention) > shown else "") + "."
    return text + (" 'official' and 'attn_mlp' are the authors' name rules for open_clip; 'attention', 'mlp' and "
                   "'layer_matrices' know the architectures listed by freqmerge_viz.scopes.ARCHITECTURES.")


_TEXT_TOWER = ("transformer.", "token_embedding.", "text_projection", "ln_final.", "positional_embedding")


def image_tower(keys: Iterable[str]) -> tuple[str, ...] | None:
    """Include globs selecting the image tower of a checkpoint that holds both CLIP towers
    (open_clip names, task_vectors' ``model.visual.*`` included, or Hugging Face ``CLIPModel``),
    or ``None`` when the keys are not such a checkpoint. Reads key names only."""
    keys = list(keys)
    for key in keys:
        if key.endswith("visual.conv1.weight"):
            prefix = key[:-len("conv1.weight")]
            root = prefix[:-len("visual.")]
            if any(k.startswith(root + part) for k in keys for part in _TEXT_TOWER):
                return (prefix + "*",)
        elif key.endswith("vision_model.embeddings.patch_embedding.weight"):
            prefix = key[:-len("embeddings.patch_embedding.weight")]
            root = prefix[:-len("vision_model.")]
            if any(k.startswith(root + "text_model.") for k in keys):
                projection = [k for k in keys if k.startswith(root + "visual_projection.")]
                return (prefix + "*",) + ((root + "visual_projection.*",) if projection else ())
    return None
