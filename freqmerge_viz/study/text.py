"""The transformers study kinds: ``hf_classification`` (sequence classification) and
``causal_lm`` (causal language modelling), on Hugging Face model folders.

Both need the ``transformers`` extra (``pip install freqmerge-viz[transformers]``); this module
imports without it and a study of these kinds then fails with a
:class:`~freqmerge_viz.errors.StudySpecError` saying what to install. Nothing is downloaded:
configs, weights and tokenizers are read from the folders given (``local_files_only``).

``kind: hf_classification``
---------------------------
::

    kind: hf_classification
    pretrained: models/bert-base        # HF folder: a sequence-classification model or a base encoder
    finetuned:                          # task -> HF folder of that task's fine-tuned model (its own head)
      sst2: models/bert-sst2
      topic: models/bert-topic
    data:                               # task -> {val: file, test: file}, or a folder with val.* and test.*
      sst2: {val: data/sst2/val.csv, test: data/sst2/test.csv}
      topic: data/topic                 #   (CSV, TSV, JSONL, or JSON records)
    text_column: text                   # or {task: column}
    pair_column: null                   # second text of sentence-pair tasks (or {task: column})
    label_column: label                 # or {task: column}
    labels: {topic: [world, sports]}    # optional class names in class order, per task
    max_length: 128
    limit: 64

* **Backbone and heads.** :meth:`HFClassificationStudy.backbone_keys` are the parameters of
  the model's base (``bert.*``, ``roberta.*``, ...: every parameter under the architecture's
  ``base_model_prefix``) that the pretrained checkpoint holds; every fine-tuned checkpoint
  must hold them with the same shapes. ``pretrained`` and ``finetuned[task]`` expose exactly
  these keys (what task vectors and merges are made of). Everything else the module needs,
  the classifier head (``classifier.*``, ``score.*``, ``pre_classifier.*``) and a pooler the
  pretrained checkpoint lacks, is the task's own and is read from ``finetuned.<task>``'s
  folder (:meth:`HFClassificationStudy.head`): a merged backbone is scored with each task's
  own fine-tuned head, as task_vectors keeps heads apart. A base-encoder checkpoint
  (``BertModel``, keys without the ``bert.`` prefix) is read under the prefixed names.
* **Labels.** Per task, in this order: integer labels (or strings of digits) are class
  indices; with a ``labels`` list, names map to their position in it; else, when the
  fine-tuned ``config.json`` has a ``label2id`` other than the default ``LABEL_0, LABEL_1,
  ...``, names map through it; else the sorted unique names of the val and test splits
  together are classes 0, 1, ... The data's class count (largest index + 1 for integers, the
  names' count otherwise) must equal the number of outputs of the task's head.
* **Inputs.** :meth:`~HFClassificationStudy.data` gives ``inputs [N, K, T]`` int64 whose
  channels are ``input_ids``, ``attention_mask`` and, when the tokenizer gives them,
  ``token_type_ids`` (:attr:`HFClassificationStudy.channels`), and ``labels [N]``. Texts are
  tokenised by the model folder's own tokenizer (``tokenizer`` field, default the pretrained
  folder), truncated to ``max_length`` tokens and right-padded to the split's longest
  sequence (the attention mask marks padding, so the logits do not depend on it).
* **Features** (for an MLP router): the mean of the pretrained model's last hidden states
  over the non-padding tokens, ``[N, hidden]``.

``kind: causal_lm``
-------------------
::

    kind: causal_lm
    pretrained: models/gpt2
    finetuned: {code: models/gpt2-code, law: models/gpt2-law}
    data:                               # task -> {val: .txt file or folder of .txt, test: ...},
      code: {val: data/code/val.txt, test: data/code/test}
      law: data/law                     #   or a folder holding val(.txt) and test(.txt)
    block_size: 128
    limit: 64

* Every ``.txt`` file is one document (a folder: its ``*.txt`` files, sorted by name). Each
  document is tokenised with the tokenizer's special tokens (e.g. a BOS) and followed by the
  EOS token when the tokenizer has one; the documents' tokens, concatenated in order, are cut
  into windows of ``block_size`` tokens. The last window, if shorter, is right-padded.
* :meth:`~CausalLMStudy.data` gives ``inputs [N, T]`` token ids and ``labels [N, T]``: the
  next token, :data:`~freqmerge_viz.engine.IGNORE_INDEX` (-100) at each window's last position
  and on padding. The engine then reports the mean next-token cross-entropy over the scored
  tokens as ``loss`` (nats; perplexity = ``exp(loss)``) and next-token accuracy as
  ``accuracy``.
* :meth:`~CausalLMStudy.backbone_keys` is every parameter of the model, one name per group of
  tied parameters: with tied embeddings (GPT-2's ``lm_head.weight`` is
  ``transformer.wte.weight``), the token embedding only, so that merges see it once and
  ``functional_call`` uses it for the output layer too, as the tied model does. A checkpoint
  may hold either name of a tied group (or both); one without the base-model prefix (the
  original ``gpt2``: ``h.0...`` for ``transformer.h.0...``) is read under the prefixed names.
* **Features**: the mean of the pretrained model's last hidden states over every position of
  the window (the padded tail of a split's last window included), ``[N, hidden]``.

Both kinds
----------
Every check (paths, splits, columns, class counts, configs, architectures from
``config.json`` and the checkpoints' headers, tokenizer vocabulary against the embedding)
runs when the study is opened, before any model runs; a problem raises
:class:`~freqmerge_viz.errors.StudySpecError` naming the file and the field
(``finetuned.<task>``, ``data.<task>.<split>``, ...). Tokenisation happens on the first
:meth:`data` call of each split and is cached. The forward is
``torch.func.functional_call`` on one module (loaded once, from the first fine-tuned folder
for classification and from the pretrained folder for language models, with eager attention
so that ``torch.func.vmap`` batches it; its parameters then dropped), in eval mode; it is not
thread safe. ``limit`` (default 64) is the number of samples (texts or windows) per task and
split the analyses use by default.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..engine import IGNORE_INDEX, tensor_digest
from ..errors import FreqMergeError, ParameterError
from ..io import KeyMapState, LazyState, load_state
from .base import SPLITS, Study
from .spec import Field, Spec, register_kind

__all__ = ["HFClassificationStudy", "CausalLMStudy", "build_hf_classification", "build_causal_lm",
           "DEFAULT_LIMIT", "TABLE_SUFFIXES"]

DEFAULT_LIMIT = 64
"""Samples (texts or token windows) per task and split the analyses use by default."""
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
"""Data files of ``hf_classification`` tasks."""
INSTALL_HINT = "pip install freqmerge-viz[transformers]"
FEATURE_BATCH = 64
POSITION_TABLES = ("position_embeddings", "wpe", "embed_positions")
"""Names of learned position-embedding modules (whose rows bound ``max_length`` / ``block_size``)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


# ----------------------------------------------------------------------------- shared plumbing

def _transformers(spec: Spec):
    """The transformers package, or a StudySpecError saying how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise spec.error("kind", f"study kind {spec.kind.name!r} needs the transformers package, which cannot be "
                                 f"imported ({exc}): {INSTALL_HINT}") from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' progress bars and info logging off (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _config(spec: Spec, folder: Path, label: str):
    """The transformers config of model folder `folder` (field `label`)."""
    from transformers import AutoConfig

    file = folder / "config.json"
    if not file.is_file():
        raise spec.error(label, f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise spec.error(label, f"{file} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or not raw.get("model_type"):
        raise spec.error(label, f"{file} has no model_type: not a Hugging Face model config")
    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise spec.error(label, f"transformers cannot read {file} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _template(spec: Spec, auto_class, config, label: str) -> torch.nn.Module:
    """The architecture of `config` as `auto_class` on the meta device (no memory, no weights)."""
    try:
        with _quiet_transformers(), torch.device("meta"):
            return auto_class.from_config(config, attn_implementation="eager")
    except Exception as exc:  # noqa: BLE001
        raise spec.error(label, f"model_type {config.model_type!r} has no {auto_class.__name__} class "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _state(spec: Spec, folder: Path, label: str) -> LazyState:
    try:
        return load_state(folder)
    except FreqMergeError as exc:
        raise spec.error(label, str(exc)) from None


def _tie_groups(module: torch.nn.Module) -> dict[str, list[str]]:
    """``{canonical name: [canonical name, tied names...]}`` of `module`'s parameters."""
    names_of: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    canonical = {id(p): n for n, p in module.named_parameters()}
    return {canonical[i]: sorted(names, key=lambda n: n != canonical[i]) for i, names in names_of.items()}


_LEGACY_NORM = re.compile(r"((?:LayerNorm|layer_norm|layernorm)\.)(weight|bias)$")
"""Layer norms of old checkpoints (the original BERT's) are ``gamma``/``beta``, read as ``weight``/``bias``."""


def _source_keys(state: LazyState, names: Mapping[str, list[str]], prefix: str) -> tuple[dict[str, str], list[str]]:
    """Where `state` holds each module parameter: ``({name: key in state}, [missing names])``.

    A parameter is found under its own name, a name tied to it, either without the base-model
    `prefix` (``bert.``, ``transformer.``) when the state has no key under it, or a layer norm's
    legacy ``gamma``/``beta`` name.
    """
    strip = bool(prefix) and not any(k.startswith(prefix) for k in state)
    found, missing = {}, []
    for name, group in names.items():
        candidates = list(group)
        if strip:
            candidates += [n[len(prefix):] for n in group if n.startswith(prefix)]
        candidates += [_LEGACY_NORM.sub(lambda m: m.group(1) + {"weight": "gamma", "bias": "beta"}[m.group(2)], c)
                       for c in candidates if _LEGACY_NORM.search(c)]
        key = next((c for c in candidates if c in state), None)
        if key is None:
            missing.append(name)
        else:
            found[name] = key
    return found, missing


def _shown(keys: Sequence[str], limit: int = 4) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_keys(spec: Spec, label: str, state: LazyState, found: Mapping[str, str], missing: Sequence[str],
                shapes: Mapping[str, tuple[int, ...]], reference: str) -> None:
    """StudySpecError naming `label` unless `state` holds every parameter, with the shapes of `reference`."""
    if missing:
        raise spec.error(label, f"{state.name} lacks {len(missing)} parameter(s) of {reference} "
                                f"({_shown(list(missing))}): a checkpoint of another architecture")
    wrong = [f"{name} {tuple(state.shape_of(found[name]))} (expected {shapes[name]})"
             for name in found if tuple(state.shape_of(found[name])) != tuple(shapes[name])]
    if wrong:
        raise spec.error(label, f"{state.name} holds parameter(s) of other shapes than {reference}: "
                                f"{_shown(wrong, 3)}: a checkpoint of another architecture")


def _same_architecture(spec: Spec, label: str, config, reference_config, reference: str) -> None:
    if config.model_type != reference_config.model_type:
        raise spec.error(label, f"model_type {config.model_type!r} differs from {reference}'s "
                                f"{reference_config.model_type!r}: a checkpoint of another architecture")
    for field in ("num_attention_heads", "n_head", "num_key_value_heads", "hidden_act", "activation_function",
                  "position_embedding_type"):
        a, b = getattr(config, field, None), getattr(reference_config, field, None)
        if a is not None and b is not None and a != b:
            raise spec.error(label, f"config.json {field}={a!r} differs from {reference}'s {b!r}: "
                                    "a checkpoint of another architecture")


def _folders(spec: Spec) -> tuple[Path, dict[str, Path]]:
    """The pretrained folder and ``{task: fine-tuned folder}``, checked to exist."""
    pretrained = spec.existing("pretrained", folder=True)
    finetuned = {}
    for task, value in spec.mapping("finetuned").items():
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", task):
            raise spec.error(f"finetuned.{task}", "task names may hold letters, digits, '_', '-' and '.' only")
        finetuned[task] = spec.existing("finetuned", value, folder=True, label=f"finetuned.{task}")
    return pretrained, finetuned


def _split_paths(spec: Spec, tasks: Sequence[str], find) -> dict[str, dict[str, Path]]:
    """``{task: {split: path}}`` from the ``data`` field: per task a mapping ``{val: path, test:
    path}`` or a folder in which ``find(folder, split)`` finds each split (``None``: absent)."""
    data = spec.mapping("data")
    extra = [t for t in data if t not in tasks]
    if extra:
        raise spec.error(f"data.{extra[0]}", f"is not a task of finetuned (tasks: {', '.join(tasks)})")
    out = {}
    for task in tasks:
        if task not in data:
            raise spec.error(f"data.{task}", "is required: every fine-tuned task needs its data")
        entry = data[task]
        if isinstance(entry, Mapping):
            unknown = [s for s in entry if s not in SPLITS]
            if unknown:
                raise spec.error(f"data.{task}.{unknown[0]}", f"unknown split; the splits are {', '.join(SPLITS)}")
            paths = {}
            for split in SPLITS:
                if entry.get(split) is None:
                    raise spec.error(f"data.{task}.{split}", f"missing split: every task needs {' and '.join(SPLITS)}")
                paths[split] = spec.existing("data", entry[split], label=f"data.{task}.{split}")
            out[task] = paths
            continue
        folder = spec.existing("data", entry, label=f"data.{task}")
        if not folder.is_dir():
            raise spec.error(f"data.{task}", f"{folder} is not a folder; give a folder holding the splits or "
                                             f"a mapping {{{', '.join(f'{s}: path' for s in SPLITS)}}}")
        paths = {}
        for split in SPLITS:
            path = find(folder, split)
            if path is None:
                raise spec.error(f"data.{task}.{split}", f"missing split: {folder} holds no {split} data")
            if isinstance(path, str):
                raise spec.error(f"data.{task}.{split}", path)
            paths[split] = path
        out[task] = paths
    return out


def _per_task(spec: Spec, name: str, tasks: Sequence[str]) -> dict[str, object]:
    """Field `name` as ``{task: value}``: one value for every task, or a mapping by task (tasks
    it leaves out get the field's default)."""
    default = next((f.default for f in spec.kind.fields if f.name == name), None)
    value = spec.get(name)
    if isinstance(value, Mapping):
        extra = [t for t in value if t not in tasks]
        if extra:
            raise spec.error(f"{name}.{extra[0]}", f"is not a task of finetuned (tasks: {', '.join(tasks)})")
        return {t: value.get(t, default) for t in tasks}
    return {t: value for t in tasks}


def _tokenizer(spec: Spec, pretrained: Path, finetuned: Mapping[str, Path]):
    """The tokenizer: the ``tokenizer`` field's folder, else the pretrained folder's, else the
    first fine-tuned folder's that has one."""
    from transformers import AutoTokenizer

    given = spec.existing("tokenizer", folder=True, required=False)
    if given is not None:
        candidates = [("tokenizer", given)]
    else:
        candidates = [("pretrained", pretrained)] + [(f"finetuned.{t}", f) for t, f in finetuned.items()]
        candidates = [(label, f) for label, f in candidates if any((f / n).is_file() for n in TOKENIZER_FILES)]
        if not candidates:
            raise spec.error("tokenizer", f"no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) in {pretrained} "
                                          "or the fine-tuned folders; give a tokenizer folder")
    label, folder = candidates[0]
    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(folder, local_files_only=True), folder
    except Exception as exc:  # noqa: BLE001
        raise spec.error(label, f"transformers cannot load a tokenizer from {folder} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _check_vocabulary(spec: Spec, tokenizer, folder: Path, rows: int) -> None:
    if len(tokenizer) > rows:
        raise spec.error("tokenizer", f"the tokenizer of {folder} has {len(tokenizer)} tokens but the model's "
                                      f"embedding has {rows} rows: a tokenizer of another model")


def _check_length(spec: Spec, field: str, value: int, template: torch.nn.Module, tokenizer, folder: Path) -> None:
    """StudySpecError unless sequences of `value` tokens fit the model's learned position
    embeddings (rotary and other computed positions have no table to overflow) and the
    tokenizer's ``model_max_length``."""
    for name, sub in template.named_modules():
        if isinstance(sub, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_TABLES:
            offset = getattr(sub, "offset", 0) or (sub.padding_idx + 1 if sub.padding_idx is not None else 0)
            if value + offset > sub.num_embeddings:
                raise spec.error(field, f"{value} tokens exceed the model's {sub.num_embeddings - offset} positions "
                                        f"({name})")
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**6 and value > limit:
        raise spec.error(field, f"{value} exceeds the tokenizer's model_max_length {limit} ({folder})")


def _pad_id(tokenizer, config) -> int:
    for value in (tokenizer.pad_token_id, getattr(config, "pad_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def _config_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16]


def _meta_free(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Replace `module`'s parameters by meta tensors (ties kept: one per tensor) and return its buffers."""
    memo: dict[int, torch.nn.Parameter] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = memo.setdefault(
                    id(param), torch.nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=False))
    return {name: buffer for name, buffer in module.named_buffers()}


class _TransformersStudy(Study):
    """What both kinds share: folders, exposed states, the one module, the forward."""

    threads = None

    head_kinds = ("finetuned",)
    auto_class_name = ""

    def __init__(self, *, name: str, path: Path, pretrained_folder: Path, finetuned_folders: Mapping[str, Path],
                 module_folder: Path, pretrained: LazyState, finetuned: Mapping[str, LazyState],
                 keys: Sequence[str], tokenizer, tokenizer_folder: Path, config, input_paths: Sequence[Path],
                 limit: int, pad_id: int):
        self.name = name
        self.path = path
        self.pretrained_folder = pretrained_folder
        self.finetuned_folders = dict(finetuned_folders)
        self.tasks = list(self.finetuned_folders)
        self.pretrained = pretrained
        self.finetuned = dict(finetuned)
        self._keys = list(keys)
        self.tokenizer = tokenizer
        self.tokenizer_folder = tokenizer_folder
        self.config = config
        self.input_paths = list(dict.fromkeys(str(p) for p in input_paths))
        self.default_limit = limit
        self.pad_id = pad_id
        self._module_folder = module_folder
        self._module = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._on_device: dict[tuple, dict[str, torch.Tensor]] = {}
        self._data: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._features_params: dict[str, torch.Tensor] | None = None
        self._digest = _config_digest(pretrained_folder)

    # -------------------------------------------------------------- module
    def module(self) -> torch.nn.Module:
        """The model module the forward runs (loaded on first use, eval mode, parameters on the
        meta device: every parameter comes from the parameter set the forward is given)."""
        if self._module is None:
            import transformers

            auto_class = getattr(transformers, self.auto_class_name)
            with _quiet_transformers():
                module = auto_class.from_pretrained(self._module_folder, local_files_only=True,
                                                    attn_implementation="eager", dtype=torch.float32)
            module.eval()
            self._buffers = {k: v.detach().float() if v.is_floating_point() else v.detach()
                             for k, v in _meta_free(module).items()}
            self._module = module
        return self._module

    def _extras(self, device: torch.device, task: str | None, tensors: Mapping[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        """The module's buffers and `tensors` (a head), float32 on `device`, cached."""
        key = (str(device), task)
        if key not in self._on_device:
            self.module()
            moved = {k: v.to(device) for k, v in self._buffers.items()}
            moved.update({k: v.detach().to(device=device, dtype=torch.float32) for k, v in tensors.items()})
            self._on_device[key] = moved
        return self._on_device[key]

    @staticmethod
    def _ids(inputs: torch.Tensor) -> torch.Tensor:
        """`inputs` as integers (a caller may have cast the token ids to float; they are exact
        in float32 below 2**24)."""
        return inputs.long() if inputs.is_floating_point() else inputs

    def _call(self, params: Mapping[str, torch.Tensor], kwargs: Mapping[str, torch.Tensor], **options):
        module = self.module()
        return torch.func.functional_call(module, dict(params), (), {**kwargs, **options}, strict=False)

    def backbone_keys(self) -> list[str]:
        return list(self._keys)

    def data(self, task: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        self.check_task(task)
        if split not in SPLITS:
            raise ParameterError(f"study {self.name!r} has no {split!r} split; its splits are {', '.join(SPLITS)}")
        if (task, split) not in self._data:
            self._data[(task, split)] = self._tokenise(task, split)
        return self._data[(task, split)]

    def _tokenise(self, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _dims(self) -> tuple[int, int, int, int]:
        c = self.config
        hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) or 768
        inner = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None) or 12
        return int(hidden), int(inner), int(heads), int(getattr(c, "vocab_size", 0) or 0)

    def _features_of(self, inputs: torch.Tensor, kwargs_of, mask_of) -> torch.Tensor:
        if self._features_params is None:
            self._features_params = {k: self.pretrained[k].detach().float() for k in self._keys}
        device = inputs.device
        params = {**self._extras(device, self._feature_task(), self._feature_head()),
                  **{k: v.to(device) for k, v in self._features_params.items()}}
        out = []
        with torch.no_grad():
            for start in range(0, len(inputs), FEATURE_BATCH):
                batch = inputs[start:start + FEATURE_BATCH]
                result = self._call(params, kwargs_of(batch), output_hidden_states=True, return_dict=True)
                hidden = result.hidden_states[-1].float()
                mask = mask_of(batch).to(hidden.dtype).unsqueeze(-1)
                out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        return torch.cat(out) if out else torch.zeros(0, self._dims()[0], device=device)

    def _feature_task(self) -> str | None:
        return None

    def _feature_head(self) -> Mapping[str, torch.Tensor]:
        return {}


# ----------------------------------------------------------------------------- hf_classification

class HFClassificationStudy(_TransformersStudy):
    """Sequence classification on Hugging Face models (study kind ``hf_classification``); see
    the module docstring for the conventions (backbone vs heads, labels, inputs)."""

    batch_size = 64

    kind = "hf_classification"
    unit = "texts"
    metric = "accuracy"
    auto_class_name = "AutoModelForSequenceClassification"

    def __init__(self, *, head_keys: Mapping[str, Mapping[str, str]], raw_finetuned: Mapping[str, LazyState],
                 texts: Mapping[str, Mapping[str, tuple[list[str], list[str] | None]]],
                 labels: Mapping[str, Mapping[str, torch.Tensor]], classes: Mapping[str, list],
                 max_length: int, channels: Sequence[str], **common):
        super().__init__(**common)
        self._head_keys = {t: dict(m) for t, m in head_keys.items()}
        self._raw_finetuned = dict(raw_finetuned)
        self._texts = texts
        self._labels = labels
        self.classes = dict(classes)
        """``{task: class names in class order}`` (indices as strings for integer labels)."""
        self.max_length = max_length
        self.channels = tuple(channels)
        """The channels of the inputs ``[N, K, T]``: ``input_ids``, ``attention_mask`` (and ``token_type_ids``)."""
        self._heads: dict[str, dict[str, torch.Tensor]] = {}

    def head(self, task: str, head: str = "finetuned") -> dict[str, torch.Tensor]:
        """The parameters `task`'s forward takes from its fine-tuned folder (classifier, and a
        pooler the pretrained checkpoint lacks), float32, under the module's names."""
        self.check_task(task)
        self.check_head(head)
        if task not in self._heads:
            state = self._raw_finetuned[task]
            self._heads[task] = {name: state[key].detach().float() for name, key in self._head_keys[task].items()}
        return self._heads[task]

    def num_classes(self, task: str) -> int:
        self.check_task(task)
        return len(self.classes[task])

    def _tokenise(self, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        texts, pairs = self._texts[task][split]
        args = (texts,) if pairs is None else (texts, pairs)
        encoded = self.tokenizer(*args, truncation=True, max_length=self.max_length, padding=False)
        rows = [encoded[c] if c in encoded else None for c in self.channels]
        length = max(1, max(len(ids) for ids in encoded["input_ids"]))
        out = torch.zeros(len(texts), len(self.channels), length, dtype=torch.long)
        out[:, 0] = self.pad_id
        for i in range(len(texts)):
            n = len(encoded["input_ids"][i])
            for c, values in enumerate(rows):
                if self.channels[c] == "attention_mask":
                    out[i, c, :n] = 1 if values is None else torch.tensor(values[i], dtype=torch.long)
                elif values is not None:
                    out[i, c, :n] = torch.tensor(values[i], dtype=torch.long)
        return out, self._labels[task][split].clone()

    def _kwargs(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = self._ids(inputs)
        return {name: inputs[:, i] for i, name in enumerate(self.channels)}

    def functional_forward(self, task: str, head: str = "finetuned"):
        self.check_task(task)
        self.check_head(head)
        weights = self.head(task, head)
        self.module()  # loaded here, not inside the engine's vmap
        study = self

        def forward(params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            full = {**study._extras(inputs.device, task, weights), **params}
            out = study._call(full, study._kwargs(inputs), return_dict=True)
            return out.logits

        hidden, inner, heads, _ = self._dims()
        t = self.max_length
        forward.thread_safe = False
        forward.activation_bytes = 4 * t * (6 * hidden + inner + heads * t)
        forward.fingerprint = "|".join([self.kind, self._digest, task, head, ",".join(self.channels)]
                                       + [tensor_digest(weights[k]) for k in sorted(weights)])
        forward.__qualname__ = f"{self.name}.forward({task!r})"
        return forward

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean of the pretrained model's last hidden states over the non-padding tokens, ``[N, hidden]``."""
        return self._features_of(inputs, self._kwargs, lambda batch: batch[:, self.channels.index("attention_mask")])

    def _feature_task(self) -> str | None:
        return self.tasks[0]

    def _feature_head(self) -> Mapping[str, torch.Tensor]:
        return self.head(self.tasks[0])


def _find_table(folder: Path, split: str):
    found = [folder / f"{split}{s}" for s in TABLE_SUFFIXES if (folder / f"{split}{s}").is_file()]
    if len(found) > 1:
        return f"{folder} holds several {split} files ({', '.join(p.name for p in found)}); keep one"
    return found[0] if found else None


def _read_table(spec: Spec, path: Path, label: str):
    import pandas as pd

    suffix = path.suffix.lower()
    if not path.is_file():
        raise spec.error(label, f"{path} is not a file")
    try:
        if suffix in (".csv", ".tsv"):
            table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False,
                                dtype=str)
        elif suffix == ".jsonl":
            table = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".json":
            text = path.read_text(encoding="utf-8").lstrip()
            table = pd.read_json(path, lines=not text.startswith("["), dtype=False)
        else:
            raise spec.error(label, f"{path}: unknown data format {path.suffix!r} (expected "
                                    f"{', '.join(TABLE_SUFFIXES)})")
    except FreqMergeError:
        raise
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        raise spec.error(label, f"{path} is unreadable ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if len(table) == 0:
        raise spec.error(label, f"{path} holds no rows")
    return table


def _column(spec: Spec, table, path: Path, label: str, column, field: str) -> list:
    if not isinstance(column, str) or not column:
        raise spec.error(field, f"must be a column name, got {column!r}")
    if column not in table.columns:
        raise spec.error(label, f"{path} has no column {column!r} (its columns: "
                                f"{', '.join(map(str, table.columns))}); set {field}")
    return table[column].tolist()


def _texts(spec: Spec, values: list, path: Path, label: str) -> list[str]:
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise spec.error(label, f"{path}: row {bad[0] + 1} has a text that is not a string ({values[bad[0]]!r})")
    return values


def _as_label(value):
    """An int for integral numbers and digit strings, a str for other strings, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        return int(text) if re.fullmatch(r"-?\d+", text) else text if text else None
    try:  # numpy scalars
        import numpy as np

        if isinstance(value, np.integer):
            return int(value)
    except ImportError:  # pragma: no cover
        pass
    return None


def _default_label2id(config) -> bool:
    mapping = dict(getattr(config, "label2id", None) or {})
    return not mapping or mapping == {f"LABEL_{i}": i for i in range(len(mapping))}


def _class_map(spec: Spec, task: str, raw: Mapping[str, list], paths: Mapping[str, Path], config,
               names, outputs: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``({split: labels [N]}, class names)`` of `task` (the rule in the module docstring)."""
    values = {}
    for split, column in raw.items():
        converted = [_as_label(v) for v in column]
        bad = [i for i, v in enumerate(converted) if v is None]
        if bad:
            raise spec.error(f"data.{task}.{split}", f"{paths[split]}: row {bad[0] + 1} has label "
                                                     f"{column[bad[0]]!r}, neither a class index nor a class name")
        values[split] = converted
    everything = [v for vs in values.values() for v in vs]
    integers = all(isinstance(v, int) for v in everything)
    if not integers and any(isinstance(v, int) for v in everything):
        raise spec.error(f"data.{task}", "labels mix class indices and class names")
    where = f"the head of finetuned.{task}"
    index: dict[str, int] | None = None
    if names is not None:
        if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names) \
                or len(set(map(str, names))) != len(names):
            raise spec.error(f"labels.{task}", f"must be a list of distinct class names, got {names!r}")
        names = [str(n) for n in names]
        if len(names) != outputs:
            raise spec.error(f"labels.{task}", f"lists {len(names)} classes but {where} has {outputs} outputs")
        if not integers:
            index = {n: i for i, n in enumerate(names)}
    elif integers:
        names = [str(i) for i in range(max(everything) + 1)]
    elif not _default_label2id(config):
        index = {str(k): int(v) for k, v in config.label2id.items()}
        names = [n for n, _ in sorted(index.items(), key=lambda item: item[1])]
    else:
        names = sorted({str(v) for v in everything})
        index = {n: i for i, n in enumerate(names)}
    out = {}
    for split, vs in values.items():
        label = f"data.{task}.{split}"
        if index is None:
            if min(vs) < 0:
                raise spec.error(label, f"{paths[split]} has a negative class index {min(vs)}")
            if max(vs) >= len(names):
                raise spec.error(label, f"{paths[split]} has class index {max(vs)} but {where} has {outputs} "
                                        f"outputs (classes {_shown(names, 6)})")
            ids = vs
        else:
            unknown = sorted({str(v) for v in vs if str(v) not in index})
            if unknown:
                raise spec.error(label, f"{paths[split]} has label(s) {_shown(unknown)} that are not classes of "
                                        f"task {task!r} ({_shown(list(index), 8)})")
            ids = [index[str(v)] for v in vs]
        out[split] = torch.tensor(ids, dtype=torch.long)
    if len(names) != outputs:
        what = (f"class indices up to {len(names) - 1} ({len(names)} classes)" if integers
                else f"{len(names)} classes ({_shown(names, 6)})")
        raise spec.error(f"data.{task}", f"has {what} but {where} ({config.num_labels} labels in its config.json) "
                                         f"has {outputs} outputs")
    return out, names


CLASSIFICATION_FIELDS = (
    Field("pretrained", "Hugging Face model folder of the pretrained model: a sequence-classification model or a "
                        "base encoder (its tokenizer tokenises the texts)", required=True),
    Field("finetuned", "mapping task -> Hugging Face folder of the task's fine-tuned sequence-classification "
                       "model (its own classifier head)", required=True),
    Field("data", "mapping task -> {val: file, test: file} (CSV, TSV, JSONL or JSON records), or a folder holding "
                  "val.* and test.*", required=True),
    Field("text_column", "column of the texts (or a mapping task -> column)", default="text"),
    Field("pair_column", "column of the second texts of sentence-pair tasks (or a mapping task -> column)"),
    Field("label_column", "column of the labels: class indices or names (or a mapping task -> column)",
          default="label"),
    Field("labels", "optional mapping task -> list of class names in class order (default: the fine-tuned "
                    "config's label2id, else the sorted names)"),
    Field("max_length", "tokens per text at most (longer texts are truncated)", default=128),
    Field("tokenizer", "folder of the tokenizer (default: the pretrained folder)"),
    Field("limit", f"texts per task and split the analyses use by default (default {DEFAULT_LIMIT})",
          default=DEFAULT_LIMIT),
)


@register_kind("hf_classification", "sequence classification with Hugging Face transformers: a pretrained encoder, "
               "one fine-tuned model (with its own head) per task, text/label files per task",
               CLASSIFICATION_FIELDS, extra="transformers")
def build_hf_classification(spec: Spec) -> HFClassificationStudy:
    transformers = _transformers(spec)
    auto = transformers.AutoModelForSequenceClassification
    max_length = spec.positive_int("max_length")
    limit = spec.positive_int("limit")
    pretrained_folder, finetuned_folders = _folders(spec)
    tasks = list(finetuned_folders)
    data_paths = _split_paths(spec, tasks, _find_table)
    columns = {name: _per_task(spec, name, tasks) for name in ("text_column", "pair_column", "label_column")}
    if spec.get("labels") is not None and not isinstance(spec.get("labels"), Mapping):
        raise spec.error("labels", "must be a mapping task -> list of class names")
    names = _per_task(spec, "labels", tasks)

    # architectures, from configs and checkpoint headers
    pre_config = _config(spec, pretrained_folder, "pretrained")
    template = _template(spec, auto, pre_config, "pretrained")
    prefix = template.base_model_prefix + "." if template.base_model_prefix else ""
    groups = _tie_groups(template)
    shapes = {n: tuple(p.shape) for n, p in template.named_parameters()}
    base_names = [n for n in groups if prefix and n.startswith(prefix)]
    if not base_names:
        raise spec.error("pretrained", f"cannot tell the base model's parameters of {type(template).__name__}")
    pre_state = _state(spec, pretrained_folder, "pretrained")
    found, missing = _source_keys(pre_state, {n: groups[n] for n in base_names}, prefix)
    allowed = [n for n in missing if ".pooler." in n or n.startswith(prefix + "pooler.")]
    if len(allowed) < len(missing) or not found:
        lacking = [n for n in missing if n not in allowed] or missing
        raise spec.error("pretrained", f"{pre_state.name} lacks {len(lacking)} parameter(s) of "
                                       f"{type(template).__name__} ({_shown(lacking)}): a checkpoint of another "
                                       "architecture")
    _check_keys(spec, "pretrained", pre_state, found, [], shapes, f"its config.json ({pre_config.model_type})")
    keys = list(found)

    finetuned, raw_finetuned, head_keys, outputs = {}, {}, {}, {}
    for task, folder in finetuned_folders.items():
        label = f"finetuned.{task}"
        config = _config(spec, folder, label)
        _same_architecture(spec, label, config, pre_config, "the pretrained model")
        task_template = _template(spec, auto, config, label)
        task_groups = _tie_groups(task_template)
        task_shapes = {n: tuple(p.shape) for n, p in task_template.named_parameters()}
        state = _state(spec, folder, label)
        back, lost = _source_keys(state, {n: task_groups.get(n, [n]) for n in keys}, prefix)
        _check_keys(spec, label, state, back, lost, {n: tuple(pre_state.shape_of(found[n])) for n in keys},
                    f"the pretrained model {pre_state.name}")
        own = {n: g for n, g in task_groups.items() if n not in keys}
        head, lost = _source_keys(state, own, prefix)
        if lost:
            raise spec.error(label, f"{state.name} lacks {len(lost)} parameter(s) of its own "
                                    f"{type(task_template).__name__} head ({_shown(lost)})")
        wrong = [f"{n} {tuple(state.shape_of(k))} (its config.json implies {task_shapes[n]})"
                 for n, k in head.items() if tuple(state.shape_of(k)) != task_shapes[n]]
        if wrong:
            raise spec.error(label, f"{state.name}: head parameter(s) of other shapes than its config.json "
                                    f"(num_labels={config.num_labels}) implies: {_shown(wrong, 3)}")
        if config.num_labels < 2 or getattr(config, "problem_type", None) in ("regression",
                                                                               "multi_label_classification"):
            raise spec.error(label, f"a head of {config.num_labels} output(s), problem_type "
                                    f"{getattr(config, 'problem_type', None)!r}: only single-label classification "
                                    "(2 classes or more) is supported")
        finetuned[task] = KeyMapState(state, {n: back[n] for n in keys})
        raw_finetuned[task] = state
        head_keys[task] = head
        outputs[task] = (config, config.num_labels)

    # data: columns, labels, class counts (tokenised later)
    texts, labels, classes = {}, {}, {}
    for task in tasks:
        raw, texts[task] = {}, {}
        for split, path in data_paths[task].items():
            label = f"data.{task}.{split}"
            table = _read_table(spec, path, label)
            text = _texts(spec, _column(spec, table, path, label, columns["text_column"][task], "text_column"),
                          path, label)
            pair_column = columns["pair_column"][task]
            pair = None if pair_column is None else _texts(
                spec, _column(spec, table, path, label, pair_column, "pair_column"), path, label)
            raw[split] = _column(spec, table, path, label, columns["label_column"][task], "label_column")
            texts[task][split] = (text, pair)
        config, count = outputs[task]
        labels[task], classes[task] = _class_map(spec, task, raw, data_paths[task], config, names[task], count)

    tokenizer, tokenizer_folder = _tokenizer(spec, pretrained_folder, finetuned_folders)
    embeddings = [n for n in keys if n.endswith("word_embeddings.weight") or n.endswith("embed_tokens.weight")
                  or n.endswith("wte.weight") or n.endswith("shared.weight")]
    if embeddings:
        _check_vocabulary(spec, tokenizer, tokenizer_folder, pre_state.shape_of(found[embeddings[0]])[0])
    _check_length(spec, "max_length", max_length, template, tokenizer, tokenizer_folder)
    channels = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()) \
            and "token_type_ids" in inspect.signature(template.forward).parameters:
        channels.append("token_type_ids")
    first = finetuned_folders[tasks[0]]
    inputs = [p for paths in data_paths.values() for p in paths.values()] + [tokenizer_folder]
    return HFClassificationStudy(
        name=spec.name, path=spec.path, pretrained_folder=pretrained_folder, finetuned_folders=finetuned_folders,
        module_folder=first, pretrained=KeyMapState(pre_state, {n: found[n] for n in keys}), finetuned=finetuned,
        keys=keys, tokenizer=tokenizer, tokenizer_folder=tokenizer_folder, config=pre_config, input_paths=inputs,
        limit=limit, pad_id=_pad_id(tokenizer, outputs[tasks[0]][0]), head_keys=head_keys,
        raw_finetuned=raw_finetuned, texts=texts, labels=labels, classes=classes, max_length=max_length,
        channels=channels)


# ----------------------------------------------------------------------------- causal_lm

class CausalLMStudy(_TransformersStudy):
    """Causal language modelling on Hugging Face models (study kind ``causal_lm``); see the
    module docstring for the conventions (windows, labels, tied embeddings)."""

    batch_size = 8
    """Windows per forward call: the logits of one window take ``block_size × vocabulary`` floats
    (128 × 50257 × 4 bytes = 26 MB for GPT-2)."""

    kind = "causal_lm"
    unit = "token windows"
    metric = "next-token accuracy"
    auto_class_name = "AutoModelForCausalLM"

    def __init__(self, *, documents: Mapping[str, Mapping[str, list[Path]]], block_size: int, **common):
        super().__init__(**common)
        self._documents = documents
        self.block_size = block_size

    def _tokenise(self, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        eos = self.tokenizer.eos_token_id
        stream: list[int] = []
        for file in self._documents[task][split]:
            with _quiet_transformers():  # no "longer than the maximum sequence length" warnings
                ids = list(self.tokenizer(file.read_text(encoding="utf-8"), add_special_tokens=True)["input_ids"])
            if isinstance(eos, int) and (not ids or ids[-1] != eos):
                ids.append(eos)
            stream += ids
        t = self.block_size
        count = max(1, math.ceil(len(stream) / t))
        inputs = torch.full((count, t), self.pad_id, dtype=torch.long)
        flat = torch.tensor(stream, dtype=torch.long)
        inputs.view(-1)[:len(flat)] = flat
        real = torch.zeros(count * t, dtype=torch.bool)
        real[:len(flat)] = True
        real = real.view(count, t)
        labels = torch.full((count, t), IGNORE_INDEX, dtype=torch.long)
        scored = real[:, 1:]
        labels[:, :-1] = torch.where(scored, inputs[:, 1:], torch.full_like(inputs[:, 1:], IGNORE_INDEX))
        keep = (labels != IGNORE_INDEX).any(1)
        if not bool(keep.any()):
            raise ParameterError(f"task {task!r} of study {self.name!r}: the {split} split has "
                                 f"{len(stream)} token(s), too few for one next-token prediction")
        return inputs[keep], labels[keep]

    def functional_forward(self, task: str, head: str = "finetuned"):
        self.check_task(task)
        self.check_head(head)
        self.module()  # loaded here, not inside the engine's vmap
        study = self

        def forward(params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            full = {**study._extras(inputs.device, None, {}), **params}
            return study._call(full, study._kwargs(inputs), use_cache=False, return_dict=True).logits

        hidden, inner, heads, vocab = self._dims()
        t = self.block_size
        forward.thread_safe = False
        forward.activation_bytes = 4 * t * (6 * hidden + inner + heads * t + 2 * vocab)
        forward.fingerprint = "|".join([self.kind, self._digest, task, head, str(t)])
        forward.__qualname__ = f"{self.name}.forward({task!r})"
        return forward

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean of the pretrained model's last hidden states over the window's positions, ``[N, hidden]``."""
        return self._features_of(inputs, lambda batch: {**self._kwargs(batch), "use_cache": False},
                                 lambda batch: torch.ones_like(batch))

    def _kwargs(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        # an all-ones mask: right padding (a split's last window) cannot reach earlier positions
        # of a causal model; passing the mask keeps transformers from warning about padding
        inputs = self._ids(inputs)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(inputs)}


def _text_files(path: Path) -> list[Path] | str:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob("*.txt") if p.is_file())
    return files or f"{path} holds no .txt file"


def _find_text(folder: Path, split: str):
    for candidate in (folder / f"{split}.txt", folder / split):
        if candidate.exists():
            return candidate
    return None


CAUSAL_FIELDS = (
    Field("pretrained", "Hugging Face folder of the pretrained causal language model (its tokenizer tokenises the "
                        "text)", required=True),
    Field("finetuned", "mapping task -> Hugging Face folder of the task's fine-tuned causal language model",
          required=True),
    Field("data", "mapping task -> {val: path, test: path}, each a .txt file or a folder of .txt files (one document "
                  "each), or a folder holding val(.txt) and test(.txt)", required=True),
    Field("block_size", "tokens per window (the documents' tokens are cut into windows of this length)",
          default=128),
    Field("tokenizer", "folder of the tokenizer (default: the pretrained folder)"),
    Field("limit", f"token windows per task and split the analyses use by default (default {DEFAULT_LIMIT})",
          default=DEFAULT_LIMIT),
)


@register_kind("causal_lm", "causal language models (Hugging Face transformers): next-token loss and accuracy of a "
               "pretrained model, one fine-tuned model per text domain, and their merges", CAUSAL_FIELDS,
               extra="transformers")
def build_causal_lm(spec: Spec) -> CausalLMStudy:
    transformers = _transformers(spec)
    auto = transformers.AutoModelForCausalLM
    block_size = spec.positive_int("block_size")
    limit = spec.positive_int("limit")
    pretrained_folder, finetuned_folders = _folders(spec)
    tasks = list(finetuned_folders)
    data_paths = _split_paths(spec, tasks, _find_text)
    documents: dict[str, dict[str, list[Path]]] = {}
    for task, paths in data_paths.items():
        documents[task] = {}
        for split, path in paths.items():
            label = f"data.{task}.{split}"
            files = _text_files(path)
            if isinstance(files, str):
                raise spec.error(label, files)
            empty = True
            for file in files:
                try:
                    text = file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise spec.error(label, f"{file} is unreadable as UTF-8 text ({type(exc).__name__}: {exc})") \
                        from None
                empty = empty and not text.strip()
            if empty:
                raise spec.error(label, f"{path} holds no text")
            documents[task][split] = files

    pre_config = _config(spec, pretrained_folder, "pretrained")
    template = _template(spec, auto, pre_config, "pretrained")
    prefix = template.base_model_prefix + "." if template.base_model_prefix else ""
    groups = _tie_groups(template)
    shapes = {n: tuple(p.shape) for n, p in template.named_parameters()}
    pre_state = _state(spec, pretrained_folder, "pretrained")
    found, missing = _source_keys(pre_state, groups, prefix)
    _check_keys(spec, "pretrained", pre_state, found, missing, shapes,
                f"{type(template).__name__} ({pre_config.model_type}, from its config.json)")
    keys = list(found)
    finetuned = {}
    for task, folder in finetuned_folders.items():
        label = f"finetuned.{task}"
        config = _config(spec, folder, label)
        _same_architecture(spec, label, config, pre_config, "the pretrained model")
        if bool(getattr(config, "tie_word_embeddings", False)) != bool(getattr(pre_config, "tie_word_embeddings",
                                                                               False)):
            raise spec.error(label, f"tie_word_embeddings={getattr(config, 'tie_word_embeddings', None)} differs "
                                    "from the pretrained model's: a checkpoint of another architecture")
        state = _state(spec, folder, label)
        back, lost = _source_keys(state, groups, prefix)
        _check_keys(spec, label, state, back, lost, shapes, f"the pretrained model {pre_state.name}")
        finetuned[task] = KeyMapState(state, {n: back[n] for n in keys})

    tokenizer, tokenizer_folder = _tokenizer(spec, pretrained_folder, finetuned_folders)
    embedding = template.get_input_embeddings()
    names = [n for n, p in template.named_parameters() if embedding is not None and p is embedding.weight]
    rows = shapes[names[0]][0] if names else getattr(pre_config, "vocab_size", None)
    if isinstance(rows, int):
        _check_vocabulary(spec, tokenizer, tokenizer_folder, rows)
    _check_length(spec, "block_size", block_size, template, tokenizer, tokenizer_folder)
    inputs = [p for paths in data_paths.values() for p in paths.values()] + [tokenizer_folder]
    return CausalLMStudy(
        name=spec.name, path=spec.path, pretrained_folder=pretrained_folder, finetuned_folders=finetuned_folders,
        module_folder=pretrained_folder, pretrained=KeyMapState(pre_state, {n: found[n] for n in keys}),
        finetuned=finetuned, keys=keys, tokenizer=tokenizer, tokenizer_folder=tokenizer_folder, config=pre_config,
        input_paths=inputs, limit=limit, pad_id=_pad_id(tokenizer, pre_config), documents=documents,
        block_size=block_size)
