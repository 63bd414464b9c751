"""The zoo's build configuration (what ``build_zoo`` trains, and how), stored in the manifest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from ..errors import ParameterError
from .model import ViTConfig
from .tasks import TASK_NAMES

__all__ = ["SplitSizes", "TrainConfig", "ProbeConfig", "ZooConfig", "DEFAULT_CONFIG", "FIRST_ZOO_CONFIG", "QUICK_CONFIG"]


@dataclass(frozen=True)
class SplitSizes:
    train: int = 6000
    val: int = 1000
    test: int = 2000

    def of(self, split: str) -> int:
        return getattr(self, split)


@dataclass(frozen=True)
class TrainConfig:
    """Mini-batch training: linear warm-up then cosine decay to zero, cross-entropy,
    gradient-norm clipping; weight decay on matrices only (not biases, norms, embeddings
    of one dimension)."""

    steps: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    clip: float = 1.0
    label_smoothing: float = 0.0
    optimizer: str = "adamw"
    """``"adamw"`` or ``"sgd"`` (with Nesterov-free heavy-ball `momentum`)."""
    momentum: float = 0.9

    def __post_init__(self):
        if self.optimizer not in ("adamw", "sgd"):
            raise ParameterError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")


@dataclass(frozen=True)
class ProbeConfig:
    """Multinomial logistic regression on frozen features, full batch L-BFGS, one run per
    weight decay; the weight decay with the best validation accuracy is kept."""

    weight_decays: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    max_iter: int = 200


@dataclass(frozen=True)
class ZooConfig:
    seed: int = 0
    """Seed of the data (each task's splits derive from it) and of every training run."""
    threads: int = 2
    """``torch.set_num_threads`` during the build (results are bitwise reproducible only
    for the same thread count, torch build and CPU)."""
    tasks: tuple[str, ...] = TASK_NAMES
    model: ViTConfig = ViTConfig()
    sizes: SplitSizes = SplitSizes()
    pretext_sizes: SplitSizes = SplitSizes(train=40000, val=2000, test=2000)
    pretrain: TrainConfig = TrainConfig(steps=5000, lr=1e-3, weight_decay=0.05, warmup=200)
    finetune: TrainConfig = TrainConfig(steps=500, lr=0.03, weight_decay=0.0, warmup=50, optimizer="sgd")
    finetune_head: bool = False
    """False: the head (zero-shot or probe, see `heads`) stays frozen while the backbone is
    fine-tuned (as the paper's CLIP heads are), so ``heads`` equal ``probe_heads``."""
    pretrain_task_images: int = 0
    """Images of each task's domain (its ``"pretrain"`` stream, disjoint from its splits) in
    the pretraining pool, labelled with the task's classes as concepts; 0: the pretext only."""
    heads: str = "probe"
    """``"zero_shot"``: each task's head is the pretraining classifier's rows for its
    concepts (needs ``pretrain_task_images > 0``); ``"probe"``: a linear probe per task
    fitted on the pretrained features (the first zoo)."""
    concept_codes: str = "learned"
    """``"learned"``: the pretraining classifier is trained; ``"random"``: its concept rows
    are fixed random unit vectors times ``code_scale / sqrt(width)``."""
    code_scale: float = 10.0
    probe: ProbeConfig = ProbeConfig()
    ta_scalings: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    eval_batch_size: int = 500

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown or not self.tasks:
            raise ParameterError(f"unknown or no zoo tasks {unknown}; tasks: {', '.join(TASK_NAMES)}")
        if self.heads not in ("zero_shot", "probe"):
            raise ParameterError(f"heads must be 'zero_shot' or 'probe', got {self.heads!r}")
        if self.heads == "zero_shot" and self.pretrain_task_images < 1:
            raise ParameterError("zero-shot heads need the tasks' concepts in the pretraining: "
                                 "pretrain_task_images must be >= 1")
        if self.concept_codes not in ("learned", "random"):
            raise ParameterError(f"concept_codes must be 'learned' or 'random', got {self.concept_codes!r}")

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping) -> ZooConfig:
        nested = {"model": ViTConfig, "sizes": SplitSizes, "pretext_sizes": SplitSizes,
                  "pretrain": TrainConfig, "finetune": TrainConfig, "probe": ProbeConfig}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParameterError(f"unknown zoo config entries {unknown}")
        kwargs = {}
        for key, value in values.items():
            if key in nested:
                sub = nested[key]
                names = {f.name for f in fields(sub)}
                kwargs[key] = sub(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in value.items() if k in names})
            elif isinstance(value, list):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


FIRST_ZOO_CONFIG = ZooConfig()
"""The first shipped zoo (width 64, pretext-only pretraining, linear-probe heads, SGD
fine-tuning): merging barely beat the heads alone on it (docs/zoo_research.md)."""

DEFAULT_CONFIG = ZooConfig(
    model=ViTConfig(width=128, depth=4, heads=4),
    sizes=SplitSizes(train=2000, val=500, test=1000),
    pretext_sizes=SplitSizes(train=40000, val=2000, test=2000),
    pretrain=TrainConfig(steps=10000, batch_size=128, lr=1e-3, weight_decay=0.05, warmup=200),
    pretrain_task_images=150,
    heads="zero_shot",
    finetune=TrainConfig(steps=300, batch_size=64, lr=2e-4, weight_decay=0.0, warmup=30, optimizer="adamw"),
    ta_scalings=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)
"""The configuration of the shipped zoo (v2): width 128, concept pretraining on the pretext
plus 150 images of each task's domain, zero-shot heads from the pretraining classifier, AdamW
fine-tuning of the backbone with the heads frozen (configuration e20 of docs/zoo_research.md)."""

QUICK_CONFIG = ZooConfig(
    sizes=SplitSizes(train=1500, val=300, test=500),
    pretext_sizes=SplitSizes(train=4000, val=500, test=500),
    pretrain=TrainConfig(steps=150, warmup=20),
    finetune=TrainConfig(steps=40, lr=0.03, weight_decay=0.0, warmup=5, optimizer="sgd"),
    probe=ProbeConfig(weight_decays=(1e-4, 1e-2), max_iter=50),
    ta_scalings=(0.3, 0.6),
)
"""A small configuration for smoke tests of ``build_zoo`` (about a minute on 2 cores)."""
