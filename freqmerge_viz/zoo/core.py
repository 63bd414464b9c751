"""Loading the zoo, its task data, and evaluating any backbone state with a task's head."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, MissingKeysError, ParameterError, counted
from ..io import LazyState, load_state
from ..stats import mean_accuracy, normalized_accuracy
from ..study.base import Study
from .config import ZooConfig
from .model import ViTConfig, backbone_forward, head_forward
from .tasks import canonical_split, generate, get_task

__all__ = ["Zoo", "load", "task_data", "clear_data_cache", "forward", "evaluate",
           "normalized_accuracy", "mean_accuracy", "DEFAULT_PATH", "MANIFEST", "FORMAT",
           "default_zoo_path", "ZOO_ENV", "describe"]

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "data" / "zoo"
"""Where the shipped zoo lives in a source checkout (``data/zoo`` in the repository)."""
ZOO_ENV = "FREQMERGE_ZOO"
INSTALLED_PATH = Path(sys.prefix) / "share" / "freqmerge-viz" / "zoo"
"""Where a wheel (non-editable) install puts the zoo's files (pyproject's data-files)."""


def default_zoo_path() -> Path:
    """The zoo :func:`load` opens when given no path: ``$FREQMERGE_ZOO`` if set, else the
    checkout's ``data/zoo``, else the copy a wheel install placed under ``sys.prefix``."""
    if os.environ.get(ZOO_ENV):
        return Path(os.environ[ZOO_ENV])
    if (DEFAULT_PATH / MANIFEST).is_file() or not (INSTALLED_PATH / MANIFEST).is_file():
        return DEFAULT_PATH
    return INSTALLED_PATH
MANIFEST = "manifest.json"
FORMAT = "freqmerge-viz-zoo/1"

Head = Mapping[str, torch.Tensor]

# ----------------------------------------------------------------------------- data

_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_CACHE_LOCK = threading.Lock()


def task_data_uint8(task: str, split: str = "test", config: ZooConfig | None = None, *,
                    n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached ``(images uint8 [N, 3, S, S], labels int64 [N])``; do not modify them."""
    config = config or ZooConfig()
    spec = get_task(task)
    split = canonical_split(split)
    sizes = config.pretext_sizes if spec.name == "shapes64" else config.sizes
    count = sizes.of(split) if n is None else n
    key = (spec.name, split, int(count), int(config.seed), int(config.model.image_size))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is None:
        images, labels = generate(spec.name, split, count, seed=config.seed, size=config.model.image_size)
        cached = torch.from_numpy(images), torch.from_numpy(labels)
        with _CACHE_LOCK:
            cached = _CACHE.setdefault(key, cached)
    return cached


def task_data(task: str, split: str = "test", config: ZooConfig | None = None, *,
              n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 [N, 3, S, S] in [0, 1], labels int64 [N])`` of one task's split.

    Generated from `config`'s seed and split sizes (default: the shipped zoo's), cached
    in memory (as uint8) for the life of the process. `n` overrides the split size.
    """
    images, labels = task_data_uint8(task, split, config, n=n)
    return images.float().div_(255.0), labels.clone()


def clear_data_cache() -> None:
    """Forget every generated data set."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------- forward / evaluate

def _materialize(state: Mapping[str, torch.Tensor], config: ViTConfig, device: torch.device,
                 where: str) -> dict[str, torch.Tensor]:
    """The backbone tensors of `state` (e.g. a lazy merged state) once, float32 on `device`."""
    from .model import _template

    names = [k for k, _ in _template(config).named_parameters()]
    missing = [k for k in names if k not in state]
    if missing:
        raise MissingKeysError(missing, where=where, reference="the zoo's ViT")
    return {k: state[k].detach().to(device=device, dtype=torch.float32) for k in names}


def _state_name(state) -> str:
    return getattr(state, "name", None) or f"<{type(state).__name__}>"


@torch.no_grad()
def _accuracy(tensors, head, images, labels, config, device, batch_size, where):
    head = {k: head[k].to(device=device, dtype=torch.float32) for k in ("weight", "bias")}
    correct = 0
    for lo in range(0, len(labels), batch_size):
        x = images[lo:lo + batch_size].to(device)
        logits = head_forward(head, backbone_forward(tensors, x, config, where=where))
        correct += int((logits.argmax(1).cpu() == labels[lo:lo + batch_size]).sum())
    return correct


# ----------------------------------------------------------------------------- the zoo

@dataclass(repr=False)
class Zoo(Study):
    """The demo zoo: a pretrained backbone, one fine-tuned backbone and one head per task.

    Backbone states are lazy mappings ``name -> tensor`` (:class:`~freqmerge_viz.io.LazyState`)
    that every toolkit function accepts; heads are ``{"weight": [C, D], "bias": [C]}``. The zoo
    is one :class:`~freqmerge_viz.study.Study` (kind ``zoo``) among others.
    """

    kind = "zoo"
    name = "demo zoo"
    head_kinds = ("finetuned", "probe")

    path: Path | None
    manifest: dict
    config: ZooConfig
    tasks: list[str]
    pretrained: Mapping[str, torch.Tensor]
    finetuned: dict[str, Mapping[str, torch.Tensor]]
    heads: dict[str, dict[str, torch.Tensor]]
    probe_heads: dict[str, dict[str, torch.Tensor]]
    accuracies: dict = field(default_factory=dict)

    @property
    def model_config(self) -> ViTConfig:
        return self.config.model

    def data(self, task: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """``(images float32 [N, 3, S, S] in [0, 1], labels int64 [N])``; cached in memory."""
        self._check_task(task)
        return task_data(task, split, self.config)

    def head(self, task: str, kind: str = "finetuned") -> dict[str, torch.Tensor]:
        """Task `task`'s head: ``kind="finetuned"`` (used with fine-tuned and merged
        backbones) or ``"probe"`` (the linear probe on the pretrained backbone)."""
        self._check_task(task)
        if kind not in ("finetuned", "probe"):
            raise ParameterError(f"head kind must be 'finetuned' or 'probe', got {kind!r}")
        return (self.heads if kind == "finetuned" else self.probe_heads)[task]

    def forward(self, state: Mapping[str, torch.Tensor], images: torch.Tensor, task: str,
                head: str | Head = "finetuned") -> torch.Tensor:
        """Logits ``[N, classes of task]`` of `images` under backbone `state` (any mapping,
        e.g. a merged lazy state) and the task's head, on ``images.device``."""
        if isinstance(head, str):
            head = self.head(task, head)
        features = backbone_forward(state, images.float(), self.model_config, where=_state_name(state))
        return head_forward(head, features, where=f"head of {task!r}")

    def evaluate(self, state: Mapping[str, torch.Tensor], tasks: str | Sequence[str] | None = None,
                 split: str = "test", device: str | torch.device | None = None, batch_size: int = 500,
                 head: str = "finetuned", limit: int | None = None) -> dict[str, float]:
        """Accuracy in [0, 1] per task of backbone `state` with each task's own head.

        `state` is read once (every key), moved to `device` (default CPU) as float32, and
        the data run through in batches of `batch_size`. `limit` keeps the first `limit`
        samples of each split. Adds no ``"mean"`` entry (see :func:`mean_accuracy`).
        """
        tasks = self.tasks if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
        for task in tasks:
            self._check_task(task)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        target = torch.device("cpu") if device is None else torch.device(device)
        where = _state_name(state)
        tensors = _materialize(state, self.model_config, target, where)
        out = {}
        for task in tasks:
            images, labels = self.data(task, split)
            if limit is not None:
                images, labels = images[:limit], labels[:limit]
            correct = _accuracy(tensors, self.head(task, head), images, labels, self.model_config,
                                target, batch_size, where)
            out[task] = correct / len(labels)
        return out

    # ------------------------------------------------------------------ the study interface
    def backbone_keys(self) -> list[str]:
        """Names of the backbone parameters of the zoo's ViT, in module order."""
        from .evaluation import zoo_backbone_keys

        return zoo_backbone_keys(self)

    def functional_forward(self, task: str, head: str = "finetuned"):
        """``forward(params, images) -> logits`` of the backbone and `task`'s `head` (vmap-able)."""
        from .evaluation import zoo_forward

        return zoo_forward(self, task, head)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class-token features ``[N, width]`` of `inputs` under the pretrained backbone."""
        with torch.no_grad():
            return torch.cat([backbone_forward(self.pretrained, inputs[i:i + 500], self.model_config,
                                               where="pretrained") for i in range(0, len(inputs), 500)])

    def task_accuracies(self, state, tasks=None, *, split: str = "test", limit: int | None = None,
                   head: str = "finetuned", device=None) -> dict[str, float]:
        """:meth:`evaluate` (the zoo's module forward, which its manifest's numbers were measured with)."""
        return self.evaluate(state, tasks, split=split, limit=limit, head=head,
                             device=self.device if device is None else device)

    def check_task(self, task: str) -> None:
        self._check_task(task)

    @property
    def source_path(self):
        return self.path

    @property
    def origins(self) -> list:
        return [str(self.path)] if self.path is not None else super().origins

    def __repr__(self) -> str:
        return f"<Zoo at {self.path}: {counted(len(self.tasks), 'task')}>"

    def finetuned_list(self) -> list[Mapping[str, torch.Tensor]]:
        """The fine-tuned backbones in task order (what ``freqmerge_viz.merge`` takes)."""
        return [self.finetuned[t] for t in self.tasks]

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ParameterError(f"unknown zoo task {task!r}; this zoo has: {', '.join(self.tasks)}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_heads(path: Path, tasks: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
    state = load_state(path)
    heads = {}
    for task in tasks:
        keys = [f"{task}.weight", f"{task}.bias"]
        missing = [k for k in keys if k not in state]
        if missing:
            raise MissingKeysError(missing, where=str(path), reference="the manifest's task list")
        heads[task] = {"weight": state[keys[0]], "bias": state[keys[1]]}
    return heads


def _check_backbone(state: LazyState, config: ViTConfig, path: Path) -> None:
    from .model import _template

    expected = dict(_template(config).named_parameters())
    missing = [k for k in expected if k not in state]
    if missing:
        raise MissingKeysError(missing, where=str(path), reference="the zoo's ViT")
    for key, param in expected.items():
        if tuple(state.shape_of(key)) != tuple(param.shape):
            raise CheckpointError(path, f"tensor {key!r} has shape {tuple(state.shape_of(key))}, "
                                        f"the zoo's ViT needs {tuple(param.shape)}")


_LOADED: dict[tuple[str, bool], Zoo] = {}


def load(path: str | Path | None = None, *, verify: bool = True) -> Zoo:
    """Open a zoo directory (default: the shipped ``data/zoo``).

    Checks the manifest, every file's sha256 (``verify=True``), that every backbone has
    the model's keys and shapes and every head file holds each task's head. Problems raise
    :class:`~freqmerge_viz.errors.CheckpointError` (file named) or
    :class:`~freqmerge_viz.errors.MissingKeysError` (file and keys named). Weights are
    read lazily; nothing is trained.
    """
    directory = Path(default_zoo_path() if path is None else path)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(manifest_path, "zoo manifest does not exist"
                              + (f"; set ${ZOO_ENV} to a zoo directory or build one with "
                                 "`freqmerge-viz zoo build --out DIR`" if path is None else ""))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(manifest_path, f"unreadable manifest ({type(exc).__name__}: {exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(manifest_path, f"not a zoo manifest (format is not {FORMAT!r})")
    for entry in ("config", "tasks", "files"):
        if entry not in manifest:
            raise CheckpointError(manifest_path, f"manifest lacks the entry {entry!r}")
    try:
        config = ZooConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(manifest_path, f"bad config entry ({exc})") from exc
    tasks = list(manifest["tasks"])
    if list(config.tasks) != tasks:
        raise CheckpointError(manifest_path, "task list and config.tasks disagree")
    files = manifest["files"]
    for name, entry in files.items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(file, "file listed in the zoo manifest does not exist")
        if verify and _sha256(file) != entry.get("sha256"):
            raise CheckpointError(file, "sha256 differs from the zoo manifest's (file changed or corrupt)")
    layout = manifest.get("layout", {})
    try:
        pretrained_name = layout["pretrained"]
        finetuned_names = layout["finetuned"]
        heads_name, probe_name = layout["heads"], layout["probe_heads"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(manifest_path, f"manifest layout lacks {exc}") from None
    for name in [pretrained_name, heads_name, probe_name, *finetuned_names.values()]:
        if name not in files:
            raise CheckpointError(directory / name, "file named in the zoo layout is not in the manifest's files")
    missing_tasks = [t for t in tasks if t not in finetuned_names]
    if missing_tasks:
        raise MissingKeysError(missing_tasks, where=f"{manifest_path} layout.finetuned")
    pretrained = load_state(directory / pretrained_name)
    _check_backbone(pretrained, config.model, directory / pretrained_name)
    finetuned = {}
    for task in tasks:
        file = directory / finetuned_names[task]
        finetuned[task] = load_state(file)
        _check_backbone(finetuned[task], config.model, file)
    heads = _read_heads(directory / heads_name, tasks)
    probe_heads = _read_heads(directory / probe_name, tasks)
    for task in tasks:
        classes = get_task(task).num_classes
        for kind, head in (("heads", heads), ("probe_heads", probe_heads)):
            if tuple(head[task]["weight"].shape) != (classes, config.model.width):
                raise CheckpointError(directory / layout[kind],
                                      f"head {task!r} has shape {tuple(head[task]['weight'].shape)}, "
                                      f"expected ({classes}, {config.model.width})")
    return Zoo(path=directory, manifest=manifest, config=config, tasks=tasks, pretrained=pretrained,
               finetuned=finetuned, heads=heads, probe_heads=probe_heads,
               accuracies=manifest.get("accuracy", {}))


def describe(zoo: Zoo) -> str:
    """A text table of the zoo's tasks with the test accuracies recorded in its manifest."""
    acc = zoo.accuracies
    lines = [f"zoo at {zoo.path}: {counted(len(zoo.tasks), 'task')}, backbone "
             f"{zoo.manifest['model']['backbone_parameters']} parameters",
             f"{'task':10s} {'classes':>7s} {'finetuned':>9s} {'probe':>6s} {'TA':>6s}"]
    for task in zoo.tasks + ["mean"]:
        classes = str(zoo.manifest["task_info"][task]["num_classes"]) if task != "mean" else ""
        lines.append(f"{task:10s} {classes:>7s} {acc['finetuned']['test'][task]:9.3f} "
                     f"{acc['probe']['test'][task]:6.3f} {acc['task_arithmetic']['test'][task]:6.3f}")
    lines.append(f"task arithmetic scaling (chosen on val): {acc['task_arithmetic']['scaling']}")
    return "\n".join(lines)


def _default_zoo() -> Zoo:
    key = (str(default_zoo_path()), True)
    if key not in _LOADED:
        _LOADED[key] = load()
    return _LOADED[key]


def forward(state: Mapping[str, torch.Tensor], images: torch.Tensor, task: str,
            head: str | Head = "finetuned", zoo: Zoo | None = None) -> torch.Tensor:
    """:meth:`Zoo.forward` on `zoo` (default: the shipped zoo, loaded once)."""
    return (zoo or _default_zoo()).forward(state, images, task, head=head)


def evaluate(state: Mapping[str, torch.Tensor], tasks: str | Sequence[str] | None = None,
             split: str = "test", device: str | torch.device | None = None, batch_size: int = 500,
             head: str = "finetuned", zoo: Zoo | None = None, limit: int | None = None) -> dict[str, float]:
    """:meth:`Zoo.evaluate` on `zoo` (default: the shipped zoo, loaded once)."""
    return (zoo or _default_zoo()).evaluate(state, tasks, split=split, device=device,
                                            batch_size=batch_size, head=head, limit=limit)
