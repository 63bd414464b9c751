"""A small example study of kind ``open_clip``, built on disk with nothing downloaded.

:func:`make_open_clip_example` writes under a folder the files a task_vectors user has, and
the study YAML that declares them::

    study.yaml
    checkpoints/tiny/zeroshot.pt               # pretrained: a pickled ImageEncoder (open_clip CLIP inside)
    checkpoints/tiny/MNIST/finetuned.pt        # one fine-tuned ImageEncoder per task
    checkpoints/tiny/head_MNIST.pt             # one pickled ClassificationHead per task
    data/mnist/{train,val,test}/class_0/000.png ...   # ImageFolder trees

The ``ImageEncoder`` and ``ClassificationHead`` classes live in a throwaway module that exists
only while the files are written, so, as in a fresh process on a task_vectors checkpoint, the
classes are absent when the study loads them (the toolkit reads such pickles without their code).
Unlike task_vectors' encoders, which drop the text transformer, these keep the whole CLIP, so
that ``heads="zeroshot"`` can build heads from the pretrained text tower.
Paths in the YAML are relative to its folder, so the folder can be moved.

The models are an open_clip CLIP at **random init** (``arch="tiny"``: image 32, patch 8, width
64, 2 layers; or any open_clip architecture name, e.g. ``"ViT-B-32"``, also at random init). The
images are generated noise, tinted and striped by class. Each fine-tuned model starts from the
pretrained with every image-tower tensor moved by seeded noise (``finetune_scale`` of its
standard deviation), gets a head fitted (L-BFGS logistic regression) on its embeddings of the
task's ``train`` images, then ``finetune_steps`` full-batch Adam steps on the image tower and
the head together; the head files hold those heads. Numbers measured on this study show that
the toolkit runs end to end; they say nothing about real CLIP models.

Deterministic: fixed seeds, one torch thread while building, the caller's random state left
untouched; a second call with the same arguments writes the same models, heads, images and YAML.
Needs open_clip (``bash scripts/open_clip_deps.sh PYTHON`` installs it), imported on call only.
This module is not imported by ``import freqmerge_viz``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..backend import torch_threads
from ..errors import FreqMergeError, ParameterError
from .clip import classification_logits, normalise_images, preprocess_image

__all__ = ["make_open_clip_example", "TASKS", "TINY_VISION", "TINY_TEXT", "TINY_EMBED", "import_open_clip",
           "tiny_clip", "randomise_norms", "task_vectors_classes", "save_pickled", "make_image_folder",
           "write_image_data", "load_images", "fit_head", "perturbed", "finetune", "head_fields", "write_study_file"]

TASKS = ("mnist", "svhn", "cars", "dtd", "eurosat", "gtsrb", "resisc45", "sun397")
"""Task names used in order (task_vectors' eight; only names here: the data is generated)."""
TINY_VISION = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, mlp_ratio=4.0)
TINY_TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=1, layers=1)
TINY_EMBED = 32
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 220], [230, 200, 40], [160, 60, 200], [40, 200, 200]])
MODULE = "freqmerge_example_task_vectors.modeling"
"""Where the pickled classes say they live (a module that exists only while writing)."""
HEADS = ("files", "zeroshot", "linear_probe")
ZEROSHOT_TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}."]

Embed = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def import_open_clip():
    """open_clip, or :class:`FreqMergeError` saying how to install it."""
    try:
        import open_clip
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision's RuntimeError on a CPU torch
        raise FreqMergeError(f"the example open_clip study needs open_clip, which does not import "
                             f"({type(exc).__name__}: {exc}); `bash scripts/open_clip_deps.sh PYTHON` "
                             "installs it (PYTHON: the interpreter of this environment)") from exc
    return open_clip


# ----------------------------------------------------------------------------- models

def tiny_clip(quick_gelu: bool = False, seed: int = 0) -> nn.Module:
    """A small open_clip CLIP (:data:`TINY_VISION`, :data:`TINY_TEXT`), random init, eval mode.
    Seeds torch's global generator with `seed` (wrap in ``torch.random.fork_rng`` to keep yours)."""
    open_clip = import_open_clip()
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=TINY_EMBED, vision_cfg=CLIPVisionCfg(**TINY_VISION),
                           text_cfg=CLIPTextCfg(**TINY_TEXT), quick_gelu=quick_gelu)
    randomise_norms(model, seed)
    return model.eval()


def _open_clip_model(arch: str, quick_gelu: bool, seed: int) -> nn.Module:
    if arch == "tiny":
        return tiny_clip(quick_gelu, seed)
    open_clip = import_open_clip()
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
    randomise_norms(model, seed)
    return model.eval()


def randomise_norms(model: nn.Module, seed: int) -> None:
    """Move layer-norm weights away from 1 and biases (and the class token) away from 0, so that
    a forward that skipped one of them would give other numbers (open_clip and transformers names)."""
    generator = torch.Generator().manual_seed(seed + 1)
    norms = ("ln_pre.weight", "ln_post.weight", "ln_1.weight", "ln_2.weight", "ln_final.weight",
             "layer_norm1.weight", "layer_norm2.weight", "pre_layrnorm.weight", "post_layernorm.weight",
             "final_layer_norm.weight")
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith(norms):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("bias") or name.endswith("class_embedding"):
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))


def task_vectors_classes(module: str = MODULE) -> types.ModuleType:
    """A new module object `module` holding task_vectors' ``ImageEncoder`` (``model``,
    ``train_preprocess``, ``val_preprocess``, ``cache_dir``) and ``ClassificationHead(normalize,
    weights, biases)``; it is not registered in ``sys.modules``."""
    fake = types.ModuleType(module)

    class ImageEncoder(nn.Module):
        def __init__(self, model, preprocess=None):
            super().__init__()
            self.model = model
            self.train_preprocess = preprocess
            self.val_preprocess = preprocess
            self.cache_dir = "/data/cache"

        def forward(self, images):
            return self.model.encode_image(images)

    class ClassificationHead(nn.Linear):
        def __init__(self, normalize, weights, biases=None):
            output_size, input_size = weights.shape
            super().__init__(input_size, output_size)
            self.normalize = normalize
            self.weight = nn.Parameter(weights.clone())
            self.bias = nn.Parameter(biases.clone() if biases is not None else torch.zeros_like(self.bias))

        def forward(self, inputs):
            if self.normalize:
                inputs = inputs / inputs.norm(dim=-1, keepdim=True)
            return super().forward(inputs)

    for cls in (ImageEncoder, ClassificationHead):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(fake, cls.__name__, cls)
    return fake


@contextlib.contextmanager
def classes_importable(module: str = MODULE):
    """Inside the block, :func:`task_vectors_classes` is importable as `module` (as when
    task_vectors' code is installed: what ``torch.load(..., weights_only=False)`` of such a
    file needs); whatever was registered under those names before comes back afterwards."""
    fake = task_vectors_classes(module)
    package = module.rsplit(".", 1)[0]
    before = {name: sys.modules.get(name) for name in (package, module)}
    sys.modules.update({package: types.ModuleType(package), module: fake})
    try:
        yield fake
    finally:
        for name, previous in before.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def save_pickled(objects: dict[Path, Callable[[types.ModuleType], nn.Module]], module: str = MODULE) -> None:
    """``torch.save`` the whole module ``build(classes)`` at each ``path: build`` of `objects` (in
    order), with :func:`task_vectors_classes` importable as `module` only while saving."""
    with classes_importable(module) as fake:
        for path, build in objects.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(build(fake), path)


# ----------------------------------------------------------------------------- data

def make_image_folder(root: Path, classes: int, per_class: int, *, seed: int = 0,
                      sizes=((40, 48), (52, 36), (32, 32))) -> Path:
    """``root/class_<c>/<i>.png``: noisy images of a few `sizes` whose tint and stripe period
    depend on the class (told apart well, not perfectly, by a small random ViT)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = Path(root) / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[(c + i) % len(sizes)]
            tint = 0.15 * COLOURS[c % len(COLOURS)] + 0.85 * 128
            image = np.tile(tint, (h, w, 1)).astype(np.float64)
            period = 3 + c + int(rng.integers(0, 2))
            image[:, (np.arange(w) // period) % 2 == 0] *= 0.6
            image += rng.normal(0, 90, image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return Path(root)


def write_image_data(root: Path, counts: dict[str, int], per_class: int, *, split_rule: bool = False,
                     seed: int = 0) -> dict:
    """ImageFolder trees under ``root/data/<task>`` for ``{task: classes}`` `counts`; returns the
    study file's ``data`` field (paths as :class:`Path`): ``train``/``val``/``test`` folders of
    `per_class` images per class, or with `split_rule` one tree of 3 × `per_class` per class cut
    in thirds by the study's split rule."""
    spec = {}
    for i, (task, classes) in enumerate(counts.items()):
        folder = Path(root) / "data" / task
        if split_rule:
            make_image_folder(folder, classes, 3 * per_class, seed=seed + 10 * i)
            spec[task] = {"root": folder, "split": {"train": 1 / 3, "val": 1 / 3, "seed": seed}}
        else:
            for j, split in enumerate(("train", "val", "test")):
                make_image_folder(folder / split, classes, per_class, seed=seed + 10 * i + j)
            spec[task] = {split: folder / split for split in ("train", "val", "test")}
    return spec


def load_images(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images [N, 3, size, size], labels [N])`` of an ImageFolder tree, classes in
    sorted folder order, decoded as the study decodes them."""
    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((Path(folder) / name).glob("*.png")):
            images.append(preprocess_image(file, size))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


# ----------------------------------------------------------------------------- fine-tuning

def fit_head(features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 50) -> tuple:
    """``(weight, bias)`` of a logistic regression on L2-normalised `features` (L-BFGS from zero)."""
    x = features / features.norm(dim=-1, keepdim=True)
    weight = torch.zeros(classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(F.linear(x, weight, bias), labels) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return weight.detach(), bias.detach()


def perturbed(state: dict[str, torch.Tensor], keys: Sequence[str], scale: float, seed: int) -> dict:
    """`state` with each floating tensor of `keys` (more than one entry) plus seeded Gaussian
    noise of `scale` times its standard deviation."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key in keys:
        tensor = state[key]
        if tensor.is_floating_point() and tensor.numel() > 1:
            out[key] = tensor + scale * float(tensor.std()) * torch.randn(tensor.shape, generator=generator)
    return out


def _encode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.encode_image(x)


def finetune(model: nn.Module, state: dict, keys: Sequence[str], images: torch.Tensor, labels: torch.Tensor,
             classes: int, *, steps: int, lr: float = 2e-3, embed: Embed = _encode) -> tuple[dict, torch.Tensor,
                                                                                          torch.Tensor]:
    """``(state, head weight, head bias)``: `model` loaded with `state`, a head fitted on its
    embeddings (``embed(model, normalised images)``), then `steps` full-batch Adam steps on the
    tensors `keys` and the head together. Leaves `model` holding the returned state."""
    model.load_state_dict(state)
    x = normalise_images(images)
    weight, bias = fit_head(embed(model, x).detach(), labels, classes)
    if steps:
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        wanted = set(keys)
        params = [p for n, p in model.named_parameters() if n in wanted]
        optimiser = torch.optim.Adam(params + [weight, bias], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(classification_logits(embed(model, x), weight, bias), labels)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out, weight.detach().clone(), bias.detach().clone()


# ----------------------------------------------------------------------------- the study file

def head_fields(folder: Path, fitted: dict[str, tuple[torch.Tensor, torch.Tensor]], heads: str) -> dict:
    """The study file's head fields: with ``heads="files"`` writes ``folder/head_<TASK>.pt``
    (task_vectors ``ClassificationHead`` pickles of the `fitted` ``{task: (weight, bias)}``) and
    returns ``{"heads": {task: path}}``; ``"zeroshot"`` and ``"linear_probe"`` return those fields."""
    if heads == "files":
        builds, paths = {}, {}
        for task, (weight, bias) in fitted.items():
            paths[task] = Path(folder) / f"head_{task.upper()}.pt"
            builds[paths[task]] = (lambda w, b: lambda classes: classes.ClassificationHead(True, w, b))(weight, bias)
        save_pickled(builds)
        return {"heads": paths}
    if heads == "zeroshot":
        return {"zeroshot": {"templates": list(ZEROSHOT_TEMPLATES)}}
    if heads == "linear_probe":
        return {"linear_probe": {"split": "train", "steps": 30}}
    raise ParameterError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")


def write_study_file(root: Path, spec: dict, *, absolute_paths: bool = False) -> Path:
    """``root/study.yaml`` from `spec`, each :class:`Path` in it written relative to `root` (or absolute)."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value) if absolute_paths else Path(os.path.relpath(value, root)).as_posix()
        return value

    path = Path(root) / "study.yaml"
    path.write_text(yaml.safe_dump(plain(spec), sort_keys=False), encoding="utf-8")
    return path


def make_open_clip_example(folder: str | os.PathLike, *, tasks: int | Sequence[str] = 3, classes: int = 3,
                           per_class: int = 4, heads: str = "files", arch: str = "tiny", quick_gelu: bool = False,
                           split_rule: bool = False, finetune_scale: float = 0.02, finetune_steps: int = 15,
                           limit: int | None = None, seed: int = 0, absolute_paths: bool = False) -> Path:
    """Write an example ``open_clip`` study under `folder` (created) and return its YAML file.

    `tasks`: a count (the first names of :data:`TASKS`) or names; task *i* has ``classes + i % 2``
    classes, with `per_class` images per class in each of ``train``, ``val`` and ``test`` (with
    `split_rule`, one tree of 3 × `per_class` per class, cut by the study's split rule). `heads`:
    ``"files"`` (pickled heads fitted with each fine-tuned model), ``"zeroshot"`` (from the
    pretrained text tower; needs open_clip's tokenizer at load) or ``"linear_probe"``. `arch`:
    ``"tiny"`` or an open_clip architecture (random init, nothing downloaded). `limit` is written
    as the study's ``limit`` (omitted: the kind's default, 64). See the module docstring.
    """
    import_open_clip()
    root = Path(folder)
    names = list(TASKS[:tasks]) if isinstance(tasks, int) else [str(t) for t in tasks]
    if not names or isinstance(tasks, int) and not 1 <= tasks <= len(TASKS):
        raise ParameterError(f"tasks must be 1 to {len(TASKS)} or a list of names, got {tasks!r}")
    if heads not in HEADS:
        raise ParameterError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
    counts = {task: classes + i % 2 for i, task in enumerate(names)}
    with torch.random.fork_rng(devices=[]), torch_threads(1):  # the caller's random state and threads kept
        return _write_example(root, names, counts, per_class=per_class, heads=heads, arch=arch,
                              quick_gelu=quick_gelu, split_rule=split_rule, finetune_scale=finetune_scale,
                              finetune_steps=finetune_steps, limit=limit, seed=seed, absolute_paths=absolute_paths)


def _write_example(root: Path, names: list[str], counts: dict[str, int], *, per_class: int, heads: str, arch: str,
                   quick_gelu: bool, split_rule: bool, finetune_scale: float, finetune_steps: int,
                   limit: int | None, seed: int, absolute_paths: bool) -> Path:
    data = write_image_data(root, counts, per_class, split_rule=split_rule, seed=seed)
    checkpoints = root / "checkpoints" / arch
    model = _open_clip_model(arch, quick_gelu, seed)
    pre_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tower = [k for k in pre_state if k.startswith("visual.")]
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    states, fitted = {}, {}
    for i, task in enumerate(names):
        train = load_images(data[task]["root"] if split_rule else data[task]["train"], size)
        start = perturbed(pre_state, tower, finetune_scale, seed + 100 + i)
        states[task], *fitted[task] = finetune(model, start, tower, *train, counts[task], steps=finetune_steps)
    preprocess = import_open_clip().image_transform(size, is_train=False)  # what task_vectors' encoders hold

    def encoder(state):
        def build(classes):
            model.load_state_dict(state)
            return classes.ImageEncoder(model, preprocess)
        return build

    finetuned = {task: checkpoints / task.upper() / "finetuned.pt" for task in names}
    save_pickled({checkpoints / "zeroshot.pt": encoder(pre_state),
                  **{finetuned[task]: encoder(states[task]) for task in names}})
    model.load_state_dict(pre_state)
    spec = {"kind": "open_clip", "name": f"{arch}-{len(names)}-tasks", "pretrained": checkpoints / "zeroshot.pt",
            "finetuned": finetuned}
    if quick_gelu:
        spec["quick_gelu"] = True
    if arch == "tiny":
        spec["head_width"] = TINY_VISION["head_width"]
    spec.update(head_fields(checkpoints, fitted, heads))
    spec["data"] = data
    if limit is not None:
        spec["limit"] = limit
    return write_study_file(root, spec, absolute_paths=absolute_paths)
