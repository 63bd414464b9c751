"""The demo model zoo: a small ViT, a pretrained backbone and eight fine-tuned copies.

A stand-in for the paper's "ViT, eight vision tasks, task vectors" setting that needs no
download: eight procedural image-classification tasks (:mod:`.tasks`), a plain-torch ViT
whose block matrices are named like timm's (``blocks.0.attn.qkv.weight``,
``blocks.0.mlp.fc1.weight``, ...; :mod:`.model`), pretrained on a procedural pretext that is
none of the eight tasks, then fine-tuned once per task (:mod:`.build`). The weights ship in
``data/zoo``; the data are regenerated from seeds when needed and cached in memory.

>>> from freqmerge_viz import zoo, merge
>>> z = zoo.load()
>>> merged = merge("task_arithmetic", z.pretrained, z.finetuned_list(), scaling=0.3)
>>> acc = z.evaluate(merged)                         # {task: accuracy in [0, 1]}
>>> zoo.normalized_accuracy(acc, z.accuracies["finetuned"]["test"])
"""

from .build import QUALITY_BARS, build_zoo
from .config import DEFAULT_CONFIG, QUICK_CONFIG, ProbeConfig, SplitSizes, TrainConfig, ZooConfig
from .core import (DEFAULT_PATH, ZOO_ENV, Zoo, clear_data_cache, default_zoo_path, describe, evaluate, forward, load, mean_accuracy,
                   normalized_accuracy, task_data)
from .model import ViT, ViTConfig, backbone_forward, head_forward, parameter_count
from .tasks import PRETEXT, SPLITS, TASK_NAMES, TASKS, TaskSpec, generate, get_task

__all__ = [
    "QUALITY_BARS", "build_zoo", "DEFAULT_CONFIG", "QUICK_CONFIG", "ProbeConfig", "SplitSizes",
    "TrainConfig", "ZooConfig", "DEFAULT_PATH", "ZOO_ENV", "default_zoo_path", "describe", "Zoo", "clear_data_cache", "evaluate", "forward",
    "load", "mean_accuracy", "normalized_accuracy", "task_data", "ViT", "ViTConfig",
    "backbone_forward", "head_forward", "parameter_count", "PRETEXT", "SPLITS", "TASK_NAMES",
    "TASKS", "TaskSpec", "generate", "get_task",
]
