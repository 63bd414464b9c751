"""Training the zoo, in phases: data, pretraining, heads, fine-tuning, evaluation, files.

``build_zoo(out_dir)`` regenerates every file of ``data/zoo`` from seeds; each phase is one
function of this module:

1. :func:`generate_data`: every task's train / val / test split, and the pretraining pool:
   the ``shapes64`` pretext plus ``config.pretrain_task_images`` images of each task's
   domain (its ``"pretrain"`` stream, disjoint from its splits), labelled with the task's
   classes as *concepts* (as CLIP's web data holds digits, signs and cars with captions).
2. :func:`pretrain_backbone`: the ViT and one classifier over every concept (pretext
   classes, then each task's classes) plus the pretext's two auxiliary labels, AdamW,
   summed cross-entropies.
3. :func:`zero_shot_heads` (``config.heads == "zero_shot"``): task t's head is the rows of
   the pretraining classifier for t's concepts, as CLIP's heads are its text embeddings of
   the class names; or :func:`fit_probes` (``"probe"``, the first zoo): linear probes on the
   pretrained features. The heads stay frozen while the backbone is fine-tuned (unless
   ``config.finetune_head``), so ``heads == probe_heads``: "pretrained + heads" is the
   no-merge baseline.
4. :func:`finetune_backbones`: one copy of the pretrained backbone per task.
5. :func:`measure`: fine-tuned models, pretrained + heads, task arithmetic over the
   backbone with λ picked on val, weight averaging; :data:`QUALITY_BARS`.
6. :func:`write_zoo`: the states (float32 safetensors), ``manifest.json`` (sha256 of every
   file, the configuration, the accuracies) and ``build_log.json`` (timings; not part of
   the deterministic output).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError
from ..io import save_state, write_text_atomically
from ..outputs import staged_folder
from ..stats import best_on_validation
from ..methods import merge
from .config import DEFAULT_CONFIG, TrainConfig, ZooConfig
from .core import FORMAT, MANIFEST, Zoo, _sha256, mean_accuracy, normalized_accuracy, task_data_uint8
from .model import ViT, ViTConfig, parameter_count
from .tasks import PRETEXT, PRETRAIN_STREAM, generate, get_task

__all__ = ["build_zoo", "QUALITY_BARS", "BuildData", "Pretrained", "concept_offsets", "generate_data",
           "pretrain_backbone", "zero_shot_heads", "fit_probes", "finetune_backbones", "measure", "write_zoo"]

QUALITY_BARS = {"finetuned_mean_min": 0.90, "finetuned_task_min": 0.75, "probe_gap_min": 0.25,
                "task_arithmetic_gain_min": 0.08, "task_arithmetic_gap_min": 0.08,
                "task_arithmetic_scaling_min": 0.2}
"""What the shipped zoo must satisfy on the test split (accuracies as fractions): fine-tuned
mean and lowest task; ``probe_gap``: fine-tuned − pretrained + heads (no merge);
``task_arithmetic_gain``: task arithmetic − pretrained + heads; ``task_arithmetic_gap``:
fine-tuned − task arithmetic (interference visible); the λ chosen on val."""

IGNORE = -100
"""Label of a missing auxiliary label (task images have no pretext background or cell)."""

Log = Callable[[str], None]
Head = dict[str, torch.Tensor]


@contextlib.contextmanager
def _torch_settings(threads: int):
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _seed(config_seed: int, *purpose: str) -> int:
    """A 63-bit seed for one training run, derived from the config seed and its purpose."""
    words = [int(config_seed)] + [zlib.crc32(str(p).encode()) for p in purpose]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _train(backbone: ViT, head: nn.Linear, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
           seed: int, train_head: bool, log: Log, what: str, loss_fn: Callable | None = None,
           frozen_rows: int = 0) -> dict:
    """Minimise ``loss_fn(head(backbone(x)), y)`` (default cross-entropy) on uint8 `images`.

    Mini-batches without replacement (a new permutation per pass), the learning rate of
    :func:`_lr_at`, gradient-norm clipping. ``frozen_rows``: the head's first rows (weight
    and bias) keep their values (fixed concept codes).
    """
    if loss_fn is None:
        def loss_fn(logits, target):
            return F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
    generator = torch.Generator().manual_seed(seed)
    params = list(backbone.parameters()) + (list(head.parameters()) if train_head else [])
    head.requires_grad_(train_head)
    hooks = []
    if train_head and frozen_rows:
        def zero_rows(grad):
            grad = grad.clone()
            grad[:frozen_rows] = 0
            return grad
        hooks = [head.weight.register_hook(zero_rows), head.bias.register_hook(zero_rows)]
    fixed = {id(head.weight)} if train_head and frozen_rows else set()
    decay = [p for p in params if p.ndim >= 2 and id(p) not in fixed]
    no_decay = [p for p in params if p.ndim < 2 or id(p) in fixed]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    backbone.train()
    order = torch.randperm(len(labels), generator=generator)
    cursor, losses = 0, []
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(labels), generator=generator), 0
        index = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        x = images[index].float().div_(255.0)
        loss = loss_fn(head(backbone(x)), labels[index])
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        optimizer.step()
        losses.append(loss.detach().item())
        if (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"  {what}: step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.3f}")
    for hook in hooks:
        hook.remove()
    backbone.eval()
    head.requires_grad_(True)
    return {"final_loss": float(np.mean(losses[-50:]))}


@torch.no_grad()
def _features(backbone: ViT, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    backbone.eval()
    return torch.cat([backbone(images[lo:lo + batch_size].float().div_(255.0))
                      for lo in range(0, len(images), batch_size)])


def _backbone_state(module: ViT) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- 1. data

@dataclass
class BuildData:
    """What the build trains and measures on (uint8 images ``[N, 3, S, S]``).

    ``splits[task][split]``: ``(images, labels [N])``; ``pretrain``: the pooled pretraining
    images and labels ``[N, 3]`` (concept index, pretext background, pretext cell; the
    last two :data:`IGNORE` for task images); ``pretext_val``: the pretext's val split
    (labels ``[N, 3]``, main label a concept index)."""

    splits: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]
    pretrain: tuple[torch.Tensor, torch.Tensor]
    pretext_val: tuple[torch.Tensor, torch.Tensor]


def concept_offsets(config: ZooConfig) -> dict[str, int]:
    """Index of each source's first concept in the pretraining classifier: the pretext's
    classes first (offset 0), then each task's classes in ``config.tasks`` order (only when
    the pretraining sees the tasks' domains, ``config.pretrain_task_images > 0``)."""
    offsets = {PRETEXT.name: 0}
    if config.pretrain_task_images:
        position = PRETEXT.num_classes
        for task in config.tasks:
            offsets[task] = position
            position += get_task(task).num_classes
    return offsets


def _concept_count(config: ZooConfig) -> int:
    offsets = concept_offsets(config)
    return PRETEXT.num_classes + sum(get_task(t).num_classes for t in offsets if t != PRETEXT.name)


def generate_data(config: ZooConfig) -> BuildData:
    """Phase 1: every split of every task (cached in memory by :func:`task_data_uint8`) and
    the pretraining pool, all from ``config.seed``."""
    splits = {task: {split: task_data_uint8(task, split, config) for split in ("train", "val", "test")}
              for task in config.tasks}
    images, labels = task_data_uint8(PRETEXT.name, "train", config)
    pool_images, pool_labels = [images], [labels]
    offsets = concept_offsets(config)
    for task in config.tasks if config.pretrain_task_images else ():
        x, y = generate(task, PRETRAIN_STREAM, config.pretrain_task_images, seed=config.seed,
                        size=config.model.image_size)
        aux = torch.full((len(y), len(PRETEXT.aux_classes)), IGNORE, dtype=torch.long)
        pool_images.append(torch.from_numpy(x))
        pool_labels.append(torch.cat([torch.from_numpy(y)[:, None] + offsets[task], aux], dim=1))
    pool = (torch.cat(pool_images), torch.cat(pool_labels)) if len(pool_images) > 1 else (images, labels)
    return BuildData(splits=splits, pretrain=pool, pretext_val=task_data_uint8(PRETEXT.name, "val", config))


# ----------------------------------------------------------------------------- 2. pretraining

@dataclass
class Pretrained:
    """The pretrained backbone state, the concept classifier (``weight [concepts, width]``,
    ``bias [concepts]``; auxiliary outputs dropped) and a summary for the manifest."""

    state: dict[str, torch.Tensor]
    classifier: Head
    summary: dict


def _pretraining_loss(sizes: tuple[int, ...]):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = logits.split(sizes, dim=1)
        total = F.cross_entropy(parts[0], target[:, 0])
        for i, part in enumerate(parts[1:], start=1):
            if bool((target[:, i] != IGNORE).any()):
                total = total + F.cross_entropy(part, target[:, i], ignore_index=IGNORE)
        return total
    return loss


def pretrain_backbone(config: ZooConfig, data: BuildData, log: Log) -> Pretrained:
    """Phase 2: the ViT and a concept classifier trained together on the pretraining pool
    (``config.pretrain``): cross-entropy over every concept plus the pretext's auxiliary
    labels. ``config.concept_codes == "random"`` fixes the classifier's concept rows at
    random unit vectors times ``config.code_scale`` / √width (a frozen "text tower")."""
    mc = config.model
    torch.manual_seed(_seed(config.seed, "torch-global"))
    backbone = ViT(mc)
    backbone.reset_parameters(torch.Generator().manual_seed(_seed(config.seed, "init")))
    concepts = _concept_count(config)
    sizes = (concepts, *PRETEXT.aux_classes)
    head = nn.Linear(mc.width, sum(sizes))
    with torch.no_grad():
        head.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(_seed(config.seed, "phead")))
        head.bias.zero_()
        if config.concept_codes == "random":
            codes = torch.randn(concepts, mc.width, generator=torch.Generator().manual_seed(_seed(config.seed, "codes")))
            head.weight[:concepts] = codes / codes.norm(dim=1, keepdim=True) * (config.code_scale / math.sqrt(mc.width))
    frozen = concepts if config.concept_codes == "random" else 0
    summary = _train(backbone, head, *data.pretrain, config.pretrain, _seed(config.seed, "pretrain"), True, log,
                     "pretrain", loss_fn=_pretraining_loss(sizes), frozen_rows=frozen)
    images, labels = data.pretext_val
    with torch.no_grad():
        logits = F.linear(_features(backbone, images, config.eval_batch_size), head.weight, head.bias)
    parts = logits.split(sizes, dim=1)
    pretext_logits = parts[0][:, :PRETEXT.num_classes]
    summary["val_accuracy"] = [float((part.argmax(1) == labels[:, i]).float().mean())
                               for i, part in enumerate((pretext_logits, *parts[1:]))]
    classifier = {"weight": head.weight.detach()[:concepts].clone(), "bias": head.bias.detach()[:concepts].clone()}
    return Pretrained(state=_backbone_state(backbone), classifier=classifier, summary=summary)


# ----------------------------------------------------------------------------- 3. heads

def zero_shot_heads(classifier: Mapping[str, torch.Tensor], config: ZooConfig) -> dict[str, Head]:
    """Phase 3 (``heads="zero_shot"``): each task's head is the pretraining classifier's rows
    (weight and bias) for the task's concepts, in class order."""
    offsets = concept_offsets(config)
    missing = [t for t in config.tasks if t not in offsets]
    if missing:
        raise ParameterError(f"zero-shot heads need the tasks' concepts in the pretraining "
                             f"(pretrain_task_images > 0); no concepts for {missing}")
    heads = {}
    for task in config.tasks:
        lo, hi = offsets[task], offsets[task] + get_task(task).num_classes
        heads[task] = {"weight": classifier["weight"][lo:hi].clone().contiguous(),
                       "bias": classifier["bias"][lo:hi].clone().contiguous()}
    return heads


def _fit_probe(train_f, train_y, val_f, val_y, classes: int, weight_decays, max_iter: int):
    """Logistic regression per weight decay (L-BFGS); the best on val (ties: smaller decay)."""
    best = None
    scores = {}
    for wd in weight_decays:
        weight = torch.zeros(classes, train_f.shape[1], requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(F.linear(train_f, weight, bias), train_y) + 0.5 * wd * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            acc = float((F.linear(val_f, weight, bias).argmax(1) == val_y).float().mean())
        scores[repr(float(wd))] = acc
        if best is None or acc > best[0]:
            best = (acc, float(wd), weight.detach().clone(), bias.detach().clone())
    return {"weight": best[2], "bias": best[3]}, best[1], scores


def fit_probes(config: ZooConfig, pretrained: Mapping[str, torch.Tensor], data: BuildData) -> tuple[dict, dict]:
    """Phase 3 (``heads="probe"``): a linear probe per task on the frozen pretrained
    features of the train split, weight decay picked on val; returns heads and info."""
    backbone = ViT(config.model)
    backbone.load_state_dict(pretrained)
    heads, info = {}, {}
    for task in config.tasks:
        (train_x, train_y), (val_x, val_y) = data.splits[task]["train"], data.splits[task]["val"]
        head, wd, scores = _fit_probe(_features(backbone, train_x, config.eval_batch_size), train_y,
                                      _features(backbone, val_x, config.eval_batch_size), val_y,
                                      get_task(task).num_classes, config.probe.weight_decays, config.probe.max_iter)
        heads[task] = head
        info[task] = {"weight_decay": wd, "val_accuracy_by_weight_decay": scores}
    return heads, info


# ----------------------------------------------------------------------------- 4. fine-tuning

def finetune_backbones(config: ZooConfig, pretrained: Mapping[str, torch.Tensor], heads: Mapping[str, Head],
                       data: BuildData, log: Log) -> tuple[dict, dict, dict, dict]:
    """Phase 4: per task, a copy of the pretrained backbone trained on the task's train
    split through the task's head (frozen unless ``config.finetune_head``). Returns the
    backbone states, the heads after fine-tuning, per-task info and seconds."""
    finetuned, final_heads, info, seconds = {}, {}, {}, {}
    for task in config.tasks:
        model = ViT(config.model)
        model.load_state_dict(pretrained)
        head = nn.Linear(config.model.width, get_task(task).num_classes)
        with torch.no_grad():
            head.weight.copy_(heads[task]["weight"])
            head.bias.copy_(heads[task]["bias"])
        start = time.perf_counter()
        info[task] = _train(model, head, *data.splits[task]["train"], config.finetune,
                            _seed(config.seed, "ft", task), config.finetune_head, log, f"finetune {task}")
        seconds[task] = round(time.perf_counter() - start, 2)
        finetuned[task] = _backbone_state(model)
        final_heads[task] = ({"weight": head.weight.detach().clone(), "bias": head.bias.detach().clone()}
                             if config.finetune_head else heads[task])
    return finetuned, final_heads, info, seconds


# ----------------------------------------------------------------------------- 5. evaluation

def _with_mean(acc: Mapping[str, float]) -> dict[str, float]:
    out = {k: float(v) for k, v in acc.items()}
    out["mean"] = mean_accuracy(acc)
    return out


def _normalized(acc: Mapping[str, float], individual: Mapping[str, float]) -> dict | None:
    """Normalised accuracy, or None where an individual accuracy is 0 (only in toy builds)."""
    try:
        return normalized_accuracy({k: v for k, v in acc.items() if k != "mean"}, individual)
    except ParameterError:
        return None


def measure(config: ZooConfig, zoo: Zoo) -> tuple[dict, dict, dict]:
    """Phase 5: accuracies (fractions) of the fine-tuned models, pretrained + heads, task
    arithmetic (λ from ``config.ta_scalings`` chosen on val) and weight averaging; the
    test counts of the fine-tuned models; the quality figures against :data:`QUALITY_BARS`."""
    bs = config.eval_batch_size
    accuracy: dict = {"finetuned": {}, "probe": {}}
    for split in ("val", "test"):
        accuracy["finetuned"][split] = _with_mean({task: zoo.evaluate(zoo.finetuned[task], task, split=split,
                                                                      batch_size=bs)[task] for task in zoo.tasks})
        accuracy["probe"][split] = _with_mean(zoo.evaluate(zoo.pretrained, split=split, batch_size=bs, head="probe"))
    n = config.sizes.test
    counts = {task: {"n": n, "correct": int(round(accuracy["finetuned"]["test"][task] * n))} for task in zoo.tasks}
    ta_val = {}
    for scaling in config.ta_scalings:
        merged = merge("task_arithmetic", zoo.pretrained, zoo.finetuned_list(), scaling=scaling)
        ta_val[repr(float(scaling))] = _with_mean(zoo.evaluate(merged, split="val", batch_size=bs))
    best = config.ta_scalings[best_on_validation([ta_val[repr(float(s))]["mean"] for s in config.ta_scalings])]
    merged = merge("task_arithmetic", zoo.pretrained, zoo.finetuned_list(), scaling=best)
    ta_test = _with_mean(zoo.evaluate(merged, split="test", batch_size=bs))
    wa_test = _with_mean(zoo.evaluate(merge("weight_averaging", zoo.pretrained, zoo.finetuned_list()),
                                      split="test", batch_size=bs))
    individual = accuracy["finetuned"]["test"]
    accuracy["task_arithmetic"] = {"scaling": float(best), "val_by_scaling": ta_val, "test": ta_test,
                                   "normalized_test": _normalized(ta_test, individual)}
    accuracy["weight_averaging"] = {"test": wa_test, "normalized_test": _normalized(wa_test, individual)}
    accuracy["probe"]["normalized_test"] = _normalized(accuracy["probe"]["test"], individual)
    probe = accuracy["probe"]["test"]["mean"]
    quality = {
        "finetuned_mean": individual["mean"],
        "finetuned_task_min": min(v for k, v in individual.items() if k != "mean"),
        "probe_gap": individual["mean"] - probe,
        "task_arithmetic_gain": ta_test["mean"] - probe,
        "task_arithmetic_gap": individual["mean"] - ta_test["mean"],
        "task_arithmetic_scaling": float(best),
    }
    bars = QUALITY_BARS
    checks = {"finetuned_mean": quality["finetuned_mean"] >= bars["finetuned_mean_min"],
              "finetuned_task_min": quality["finetuned_task_min"] >= bars["finetuned_task_min"],
              "probe_gap": quality["probe_gap"] >= bars["probe_gap_min"],
              "task_arithmetic_gain": quality["task_arithmetic_gain"] >= bars["task_arithmetic_gain_min"],
              "task_arithmetic_gap": quality["task_arithmetic_gap"] >= bars["task_arithmetic_gap_min"],
              "task_arithmetic_scaling": best >= bars["task_arithmetic_scaling_min"]}
    quality["missed"] = [name for name, ok in checks.items() if not ok]
    quality["passes"] = not quality["missed"]
    quality["bars"] = dict(bars)
    return accuracy, counts, quality


# ----------------------------------------------------------------------------- 6. files

def _round(value, digits: int = 6):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _heads_state(heads: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{task}.{name}": tensor.contiguous() for task, head in heads.items() for name, tensor in head.items()}


def _heads_note(config: ZooConfig) -> str:
    if config.finetune_head:
        return "fine-tuned with the backbone"
    if config.heads == "zero_shot":
        return ("zero-shot: the pretraining classifier's rows for each task's concepts, frozen during "
                "fine-tuning (heads == probe_heads)")
    return "the linear probes, frozen during fine-tuning (heads == probe_heads)"


def write_zoo(out: Path, config: ZooConfig, zoo: Zoo, pretrained: Pretrained, training: dict, accuracy: dict,
              counts: dict, quality: dict) -> dict:
    """Phase 6: the weight files into the (new, empty) folder `out`, then ``manifest.json``;
    returns the manifest."""
    mc: ViTConfig = config.model
    # No extra safetensors metadata: safetensors writes a multi-entry __metadata__ in a
    # per-process random order, which would make the files differ from build to build.
    layout = {"pretrained": "pretrained.safetensors",
              "finetuned": {task: f"finetuned/{task}.safetensors" for task in config.tasks},
              "heads": "heads.safetensors", "probe_heads": "probe_heads.safetensors"}
    save_state(zoo.pretrained, out / layout["pretrained"])
    (out / "finetuned").mkdir(exist_ok=True)
    for task in config.tasks:
        save_state(zoo.finetuned[task], out / layout["finetuned"][task])
    save_state(_heads_state(zoo.heads), out / layout["heads"])
    save_state(_heads_state(zoo.probe_heads), out / layout["probe_heads"])
    names = [layout["pretrained"], *layout["finetuned"].values(), layout["heads"], layout["probe_heads"]]
    files = {name: {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size} for name in names}
    pretext = {**PRETEXT.info(), "split_sizes": {s: config.pretext_sizes.of(s) for s in ("train", "val")},
               **_round(pretrained.summary)}
    if config.pretrain_task_images:
        pretext["task_images_per_task"] = config.pretrain_task_images
        pretext["concepts"] = {"count": int(pretrained.classifier["weight"].shape[0]),
                               "offsets": concept_offsets(config), "codes": config.concept_codes}
    manifest = {
        "format": FORMAT,
        "description": "freqmerge-viz demo zoo: a small ViT pretrained on a procedural pretext"
                       + (" and the tasks' domains (concepts = class names)" if config.pretrain_task_images else "")
                       + ", fine-tuned on eight procedural image tasks standing in for the paper's eight "
                         "vision tasks (see freqmerge_viz/zoo/tasks.py)",
        "tasks": list(config.tasks),
        "layout": layout,
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "config": config.to_dict(),
        "task_info": {task: {**get_task(task).info(), "image_shape": [mc.channels, mc.image_size, mc.image_size],
                             "split_sizes": {s: config.sizes.of(s) for s in ("train", "val", "test")}}
                      for task in config.tasks},
        "pretext": pretext,
        "model": {"architecture": "ViT (pre-norm, class token, learned position embedding, GELU MLP)",
                  "config": mc.to_dict(), "tokens": mc.tokens,
                  "backbone_parameters": parameter_count(mc),
                  "head_parameters": {t: (get_task(t).num_classes) * (mc.width + 1) for t in config.tasks}},
        "training": {**training, "heads": _heads_note(config)},
        "accuracy": _round(accuracy),
        "test_counts": counts,
        "quality": _round(quality),
        "environment": {"torch": torch.__version__, "numpy": np.__version__,
                        "python": platform.python_version(), "threads": config.threads},
    }
    write_text_atomically(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return manifest


# ----------------------------------------------------------------------------- the build

_ZOO_ENTRIES = {MANIFEST, "build_log.json", "pretrained.safetensors", "finetuned", "heads.safetensors",
                "probe_heads.safetensors"}


def _is_zoo_entry(name: str) -> bool:
    return name in _ZOO_ENTRIES


def build_zoo(out_dir: str | Path, config: ZooConfig = DEFAULT_CONFIG, *, log: Log | None = None) -> dict:
    """Train and write the whole zoo into `out_dir`; returns the manifest (as written).

    Deterministic: data and every training run derive from ``config.seed``; torch runs with
    ``config.threads`` threads and deterministic algorithms (restored afterwards). The zoo
    is written into a temporary folder beside `out_dir` that replaces it only when complete
    (a killed build leaves the previous zoo whole); an existing `out_dir` holding anything
    but zoo files is refused before any training. ``build_log.json`` records each phase's
    seconds.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if config.heads not in ("zero_shot", "probe"):
        raise ParameterError(f"heads must be 'zero_shot' or 'probe', got {config.heads!r}")
    out = Path(out_dir)
    files = 1 + len(config.tasks)
    expected = files * parameter_count(config.model) * 4 + (1 << 20)
    target = staged_folder(out, own=_is_zoo_entry, expected_bytes=expected, what="zoo")
    timings: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        log(f"{name}: {timings[name]:.1f}s")
        return now

    with _torch_settings(config.threads), target as folder:
        t = time.perf_counter()
        data = generate_data(config)
        t = lap("generate_data", t)
        pretrained = pretrain_backbone(config, data, log)
        t = lap("pretrain", t)
        log(f"pretext val accuracy (main, aux...) {[round(a, 3) for a in pretrained.summary['val_accuracy']]}")
        if config.heads == "zero_shot":
            heads, head_info = zero_shot_heads(pretrained.classifier, config), {}
        else:
            heads, head_info = fit_probes(config, pretrained.state, data)
        t = lap("heads", t)
        finetuned, final_heads, ft_info, ft_seconds = finetune_backbones(config, pretrained.state, heads, data, log)
        t = lap("finetune", t)
        zoo = Zoo(path=None, manifest={}, config=config, tasks=list(config.tasks), pretrained=pretrained.state,
                  finetuned=finetuned, heads=final_heads, probe_heads=heads)
        accuracy, counts, quality = measure(config, zoo)
        t = lap("evaluate", t)
        individual = accuracy["finetuned"]["test"]
        log("fine-tuned test " + ", ".join(f"{k} {v:.3f}" for k, v in individual.items()))
        log(f"pretrained + heads mean {accuracy['probe']['test']['mean']:.3f}; task arithmetic "
            f"(λ={accuracy['task_arithmetic']['scaling']}) mean {accuracy['task_arithmetic']['test']['mean']:.3f}; "
            f"weight averaging mean {accuracy['weight_averaging']['test']['mean']:.3f}; passes: {quality['passes']}"
            + (f" (misses {', '.join(quality['missed'])})" if quality["missed"] else ""))
        training = {"finetune": _round(ft_info)}
        if head_info:
            training["probe"] = _round(head_info, 8)
        manifest = write_zoo(folder, config, zoo, pretrained, training, accuracy, counts, quality)
        lap("write", t)
        timings["total"] = round(time.perf_counter() - start, 2)
        timings["process_cpu"] = round(time.process_time() - cpu_start, 2)
        log_info = {"timings_seconds": timings, "finetune_seconds": ft_seconds,
                    "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                "threads": config.threads}}
        write_text_atomically(folder / "build_log.json", json.dumps(log_info, indent=1) + "\n")
        log(f"zoo written to {out} in {timings['total']:.0f}s ({manifest['total_bytes'] / 1e6:.2f} MB)")
    return manifest
