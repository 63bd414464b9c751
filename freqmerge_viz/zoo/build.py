"""Training the zoo: pretext pretraining, linear probes, fine-tuning, task arithmetic, files.

``build_zoo(out_dir)`` regenerates every file of ``data/zoo`` from seeds. Steps:

1. Pretrain the ViT backbone on the ``shapes64`` pretext (AdamW; a throw-away linear head
   with 64 + 6 + 9 outputs for the pretext's main and two auxiliary labels, summed losses).
2. Per task, fit a linear probe (multinomial logistic regression, full-batch L-BFGS) on
   the frozen pretrained features of the train split; pick the weight decay on val.
3. Per task, fine-tune a copy of the backbone from the pretrained one (SGD with momentum
   in the shipped configuration), the head starting from the probe and frozen unless
   ``config.finetune_head``.
4. Measure: fine-tuned models, pretrained + probes, task arithmetic over the backbone
   with λ picked on val (heads per task), weight averaging.
5. Write the states (float32 safetensors), ``manifest.json`` (sha256 of every file, the
   configuration, the accuracies) and ``build_log.json`` (timings; not part of the
   deterministic output).
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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError
from ..io import save_state, write_text_atomically
from ..methods import merge
from .config import DEFAULT_CONFIG, TrainConfig, ZooConfig
from .core import FORMAT, MANIFEST, Zoo, _sha256, mean_accuracy, normalized_accuracy, task_data_uint8
from .model import ViT, ViTConfig, parameter_count
from .tasks import PRETEXT, get_task

__all__ = ["build_zoo", "QUALITY_BARS"]

QUALITY_BARS = {"finetuned_mean_min": 0.85, "finetuned_task_min": 0.70,
                "probe_gap_min": 0.15, "task_arithmetic_gap_min": 0.08}
"""What the shipped zoo must satisfy on the test split (accuracies as fractions)."""


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
           seed: int, train_head: bool, log: Callable[[str], None], what: str,
           loss_fn: Callable | None = None) -> dict:
    """Minimise ``loss_fn(head(backbone(x)), y)`` (default cross-entropy) on uint8 `images`."""
    if loss_fn is None:
        def loss_fn(logits, target):
            return F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
    generator = torch.Generator().manual_seed(seed)
    params = list(backbone.parameters()) + (list(head.parameters()) if train_head else [])
    head.requires_grad_(train_head)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
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
    backbone.eval()
    head.requires_grad_(True)
    return {"final_loss": float(np.mean(losses[-50:]))}


@torch.no_grad()
def _features(backbone: ViT, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    backbone.eval()
    return torch.cat([backbone(images[lo:lo + batch_size].float().div_(255.0))
                      for lo in range(0, len(images), batch_size)])


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


def _backbone_state(module: ViT) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _with_mean(acc: Mapping[str, float]) -> dict[str, float]:
    out = {k: float(v) for k, v in acc.items()}
    out["mean"] = mean_accuracy(acc)
    return out


def _round(value, digits: int = 6):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _normalized(acc: Mapping[str, float], individual: Mapping[str, float]) -> dict | None:
    """Normalised accuracy, or None where an individual accuracy is 0 (only in toy builds)."""
    try:
        return normalized_accuracy({k: v for k, v in acc.items() if k != "mean"}, individual)
    except ParameterError:
        return None


def _heads_state(heads: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{task}.{name}": tensor.contiguous() for task, head in heads.items() for name, tensor in head.items()}


def build_zoo(out_dir: str | Path, config: ZooConfig = DEFAULT_CONFIG, *,
              log: Callable[[str], None] | None = None) -> dict:
    """Train and write the whole zoo into `out_dir`; returns the manifest (as written).

    Deterministic: data and every training run derive from ``config.seed``; torch runs with
    ``config.threads`` threads and deterministic algorithms (restored afterwards). Files
    are written atomically; the manifest last.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    cpu_start = time.process_time()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        return now

    with _torch_settings(config.threads):
        mc: ViTConfig = config.model
        bs = config.eval_batch_size
        # ---------------------------------------------------------------- data
        t = time.perf_counter()
        data = {}
        for task in config.tasks:
            data[task] = {split: task_data_uint8(task, split, config) for split in ("train", "val", "test")}
        pre_train = task_data_uint8(PRETEXT.name, "train", config)
        pre_val = task_data_uint8(PRETEXT.name, "val", config)
        t = lap("generate_data", t)
        log(f"data generated in {timings['generate_data']:.1f}s")

        # ---------------------------------------------------------------- pretraining
        torch.manual_seed(_seed(config.seed, "torch-global"))
        backbone = ViT(mc)
        backbone.reset_parameters(torch.Generator().manual_seed(_seed(config.seed, "init")))
        sizes = (PRETEXT.num_classes, *PRETEXT.aux_classes)
        pretext_head = nn.Linear(mc.width, sum(sizes))
        with torch.no_grad():
            pretext_head.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(_seed(config.seed, "phead")))
            pretext_head.bias.zero_()

        def pretext_loss(logits, target):
            parts = logits.split(sizes, dim=1)
            return sum(F.cross_entropy(part, target[:, i]) for i, part in enumerate(parts))

        pre_summary = _train(backbone, pretext_head, *pre_train, config.pretrain, _seed(config.seed, "pretrain"),
                             True, log, "pretrain", loss_fn=pretext_loss)
        with torch.no_grad():
            pre_logits = F.linear(_features(backbone, pre_val[0], bs), pretext_head.weight, pretext_head.bias)
        pre_summary["val_accuracy"] = [float((part.argmax(1) == pre_val[1][:, i]).float().mean())
                                       for i, part in enumerate(pre_logits.split(sizes, dim=1))]
        pretrained = _backbone_state(backbone)
        t = lap("pretrain", t)
        log(f"pretrained in {timings['pretrain']:.1f}s, pretext val accuracy (main, aux...) "
            f"{[round(a, 3) for a in pre_summary['val_accuracy']]}")

        # ---------------------------------------------------------------- probes
        probe_heads, probe_info = {}, {}
        for task in config.tasks:
            classes = get_task(task).num_classes
            train_f = _features(backbone, data[task]["train"][0], bs)
            val_f = _features(backbone, data[task]["val"][0], bs)
            head, wd, scores = _fit_probe(train_f, data[task]["train"][1], val_f, data[task]["val"][1], classes,
                                          config.probe.weight_decays, config.probe.max_iter)
            probe_heads[task] = head
            probe_info[task] = {"weight_decay": wd, "val_accuracy_by_weight_decay": scores}
        t = lap("probes", t)
        log(f"probes fitted in {timings['probes']:.1f}s")

        # ---------------------------------------------------------------- fine-tuning
        finetuned, heads, ft_info, ft_seconds = {}, {}, {}, {}
        for task in config.tasks:
            model = ViT(mc)
            model.load_state_dict(pretrained)
            head = nn.Linear(mc.width, get_task(task).num_classes)
            with torch.no_grad():
                head.weight.copy_(probe_heads[task]["weight"])
                head.bias.copy_(probe_heads[task]["bias"])
            tt = time.perf_counter()
            ft_info[task] = _train(model, head, *data[task]["train"], config.finetune, _seed(config.seed, "ft", task),
                                   config.finetune_head, log, f"finetune {task}")
            ft_seconds[task] = round(time.perf_counter() - tt, 2)
            finetuned[task] = _backbone_state(model)
            heads[task] = ({"weight": head.weight.detach().clone(), "bias": head.bias.detach().clone()}
                           if config.finetune_head else probe_heads[task])
        t = lap("finetune", t)
        log(f"fine-tuned in {timings['finetune']:.1f}s")

        # ---------------------------------------------------------------- evaluation
        zoo = Zoo(path=None, manifest={}, config=config, tasks=list(config.tasks), pretrained=pretrained,
                  finetuned=finetuned, heads=heads, probe_heads=probe_heads)
        accuracy: dict = {"finetuned": {}, "probe": {}}
        counts = {}
        for split in ("val", "test"):
            ft = {task: zoo.evaluate(finetuned[task], task, split=split, batch_size=bs)[task]
                  for task in config.tasks}
            accuracy["finetuned"][split] = _with_mean(ft)
            accuracy["probe"][split] = _with_mean(zoo.evaluate(pretrained, split=split, batch_size=bs, head="probe"))
        for task in config.tasks:
            n = config.sizes.test
            counts[task] = {"n": n, "correct": int(round(accuracy["finetuned"]["test"][task] * n))}
        ta_val = {}
        for scaling in config.ta_scalings:
            merged = merge("task_arithmetic", pretrained, zoo.finetuned_list(), scaling=scaling)
            ta_val[repr(float(scaling))] = _with_mean(zoo.evaluate(merged, split="val", batch_size=bs))
        best = max(config.ta_scalings, key=lambda s: (ta_val[repr(float(s))]["mean"], -s))
        merged = merge("task_arithmetic", pretrained, zoo.finetuned_list(), scaling=best)
        ta_test = _with_mean(zoo.evaluate(merged, split="test", batch_size=bs))
        avg = merge("weight_averaging", pretrained, zoo.finetuned_list())
        wa_test = _with_mean(zoo.evaluate(avg, split="test", batch_size=bs))
        individual = accuracy["finetuned"]["test"]
        accuracy["task_arithmetic"] = {"scaling": float(best), "val_by_scaling": ta_val, "test": ta_test,
                                       "normalized_test": _normalized(ta_test, individual)}
        accuracy["weight_averaging"] = {"test": wa_test, "normalized_test": _normalized(wa_test, individual)}
        accuracy["probe"]["normalized_test"] = _normalized(accuracy["probe"]["test"], individual)
        t = lap("evaluate", t)
        quality = {
            "finetuned_mean": individual["mean"],
            "finetuned_task_min": min(v for k, v in individual.items() if k != "mean"),
            "probe_gap": individual["mean"] - accuracy["probe"]["test"]["mean"],
            "task_arithmetic_gap": individual["mean"] - ta_test["mean"],
        }
        quality["passes"] = bool(quality["finetuned_mean"] >= QUALITY_BARS["finetuned_mean_min"]
                                 and quality["finetuned_task_min"] >= QUALITY_BARS["finetuned_task_min"]
                                 and quality["probe_gap"] >= QUALITY_BARS["probe_gap_min"]
                                 and quality["task_arithmetic_gap"] >= QUALITY_BARS["task_arithmetic_gap_min"])
        quality["bars"] = dict(QUALITY_BARS)
        log("fine-tuned test " + ", ".join(f"{k} {v:.3f}" for k, v in individual.items()))
        log(f"probe mean {accuracy['probe']['test']['mean']:.3f}; task arithmetic (λ={best}) mean "
            f"{ta_test['mean']:.3f}; weight averaging mean {wa_test['mean']:.3f}; passes: {quality['passes']}")

        # ---------------------------------------------------------------- files
        # No extra safetensors metadata: safetensors writes a multi-entry __metadata__ in a
        # per-process random order, which would make the files differ from build to build.
        layout = {"pretrained": "pretrained.safetensors",
                  "finetuned": {task: f"finetuned/{task}.safetensors" for task in config.tasks},
                  "heads": "heads.safetensors", "probe_heads": "probe_heads.safetensors"}
        save_state(pretrained, out / layout["pretrained"])
        (out / "finetuned").mkdir(exist_ok=True)
        for task in config.tasks:
            save_state(finetuned[task], out / layout["finetuned"][task])
        for stale in (out / "finetuned").glob("*.safetensors"):
            if f"finetuned/{stale.name}" not in layout["finetuned"].values():
                stale.unlink()
        save_state(_heads_state(heads), out / layout["heads"])
        save_state(_heads_state(probe_heads), out / layout["probe_heads"])
        names = [layout["pretrained"], *layout["finetuned"].values(), layout["heads"], layout["probe_heads"]]
        files = {name: {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size} for name in names}
        manifest = {
            "format": FORMAT,
            "description": "freqmerge-viz demo zoo: a small ViT pretrained on a procedural pretext and "
                           "fine-tuned on eight procedural image tasks standing in for the paper's eight "
                           "vision tasks (see freqmerge_viz/zoo/tasks.py)",
            "tasks": list(config.tasks),
            "layout": layout,
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files.values()),
            "config": config.to_dict(),
            "task_info": {task: {**get_task(task).info(), "image_shape": [mc.channels, mc.image_size, mc.image_size],
                                 "split_sizes": {s: config.sizes.of(s) for s in ("train", "val", "test")}}
                          for task in config.tasks},
            "pretext": {**PRETEXT.info(), "split_sizes": {s: config.pretext_sizes.of(s) for s in ("train", "val")},
                        **_round(pre_summary)},
            "model": {"architecture": "ViT (pre-norm, class token, learned position embedding, GELU MLP)",
                      "config": mc.to_dict(), "tokens": mc.tokens,
                      "backbone_parameters": parameter_count(mc),
                      "head_parameters": {t: (get_task(t).num_classes) * (mc.width + 1) for t in config.tasks}},
            "training": {"probe": _round(probe_info, 8), "finetune": _round(ft_info),
                         "heads": "fine-tuned with the backbone" if config.finetune_head
                                  else "the linear probes, frozen during fine-tuning (heads == probe_heads)"},
            "accuracy": _round(accuracy),
            "test_counts": counts,
            "quality": _round(quality),
            "environment": {"torch": torch.__version__, "numpy": np.__version__,
                            "python": platform.python_version(), "threads": config.threads},
        }
        write_text_atomically(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
        lap("write", t)
        timings["total"] = round(time.perf_counter() - start, 2)
        timings["process_cpu"] = round(time.process_time() - cpu_start, 2)
        log_info = {"timings_seconds": timings, "finetune_seconds": ft_seconds,
                    "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                "threads": config.threads}}
        write_text_atomically(out / "build_log.json", json.dumps(log_info, indent=1) + "\n")
        log(f"zoo written to {out} in {timings['total']:.0f}s ({manifest['total_bytes'] / 1e6:.2f} MB)")
    return manifest
