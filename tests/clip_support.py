"""Study files of kind ``open_clip`` built on disk with nothing downloaded (for tests and benchmarks).

:func:`make_clip_study` writes, under a folder, what a task_vectors user has: a pretrained
``zeroshot.pt`` and ``<Task>/finetuned.pt`` per task (open_clip CLIP models wrapped in an
``ImageEncoder`` whose class lives in a throwaway module, deleted before anything loads them,
so the class is absent at load as in a fresh process), heads saved apart as pickled
``ClassificationHead`` modules (``head_<Task>.pt``), generated ImageFolder data (PNG files of
a few sizes, classes told apart by colour and stripes), and the study YAML. ``arch="tiny"``
is a small open_clip config (image 32, patch 8, width 64, 2 layers); ``arch="ViT-B-32"`` is
open_clip's real ViT-B-32 at random init (about 600 MB per checkpoint, text tower included).
``hf=True`` writes Hugging Face checkpoints instead: a ``CLIPModel`` folder as the pretrained
and ``CLIPVisionModel`` folders as the fine-tuned ones (FusionBench's layout); ``hf="prefixed"``
writes the fine-tuned ones with transformers 4's ``vision_model.`` key prefix.

Fine-tuned models start from the pretrained with each image-tower tensor moved by seeded noise
(``finetune_scale`` of its standard deviation) and a head fitted (L-BFGS logistic regression)
on their embeddings of the task's train images; the tiny ones then take ``finetune_steps``
full-batch Adam steps on the image tower and the head together (through open_clip's or
transformers' own modules), the ViT-B-32 ones none (too slow on CPU). The head files hold
those heads, so that a fine-tuned model with its head beats chance on its task and merges
score in between.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from freqmerge_viz.study.clip import classification_logits, image_features, normalise_images, preprocess_image

FAKE_PACKAGE = "task_vectors_clip_fake"
FAKE_MODULE = f"{FAKE_PACKAGE}.modeling"
TINY_VISION = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, mlp_ratio=4.0)
TINY_TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=1, layers=1)
TINY_EMBED = 32
TASKS = ("mnist", "svhn", "cars", "dtd")
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 220], [230, 200, 40], [160, 60, 200], [40, 200, 200]])


def import_open_clip():
    """open_clip, or a skipped test where it is not installed (a failure when
    ``FREQMERGE_REQUIRE_OPEN_CLIP`` is set, as CI sets it after scripts/open_clip_deps.sh)."""
    try:
        import open_clip
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision's RuntimeError
        if os.environ.get("FREQMERGE_REQUIRE_OPEN_CLIP"):
            raise
        pytest.skip(f"open_clip does not import ({type(exc).__name__}: {exc}); "
                    "bash scripts/open_clip_deps.sh PYTHON installs it")
    return open_clip


# ----------------------------------------------------------------------------- models

def tiny_clip(quick_gelu: bool = False, seed: int = 0):
    """A small open_clip CLIP (random weights, eval mode)."""
    open_clip = import_open_clip()
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=TINY_EMBED, vision_cfg=CLIPVisionCfg(**TINY_VISION),
                           text_cfg=CLIPTextCfg(**TINY_TEXT), quick_gelu=quick_gelu)
    _randomise_norms(model, seed)
    return model.eval()


def vit_b_32(seed: int = 0):
    """open_clip's ViT-B-32 at random init (nothing downloaded), eval mode."""
    open_clip = import_open_clip()
    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    _randomise_norms(model, seed)
    return model.eval()


def _randomise_norms(model: nn.Module, seed: int) -> None:
    """Layer norms and biases away from 1 and 0, and a non-trivial class token (so that
    a forward that skipped one would differ)."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith(("ln_pre.weight", "ln_post.weight", "ln_1.weight", "ln_2.weight", "ln_final.weight",
                              "layer_norm1.weight", "layer_norm2.weight", "pre_layrnorm.weight",
                              "post_layernorm.weight", "final_layer_norm.weight")):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("bias") or name.endswith("class_embedding"):
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))


def hf_clip(seed: int = 0, with_text: bool = True):
    """A small transformers ``CLIPModel`` (or ``CLIPVisionModelWithProjection``), eval mode."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=16, vocab_size=49408),
                        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8),
                        projection_dim=TINY_EMBED)
    model = CLIPModel(config)
    _randomise_norms(model, seed)
    return model.eval()


def _fake_module():
    """A throwaway module holding task_vectors' ImageEncoder and ClassificationHead classes."""
    fake = types.ModuleType(FAKE_MODULE)

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
        cls.__module__, cls.__qualname__ = FAKE_MODULE, cls.__name__
        setattr(fake, cls.__name__, cls)
    return fake


def save_pickled(objects: dict[Path, object]) -> None:
    """torch.save whole modules built by `objects` (path -> function(fake module) -> module), with
    the fake module registered only while saving (so the classes are absent at load)."""
    fake = _fake_module()
    package = types.ModuleType(FAKE_PACKAGE)
    sys.modules.update({FAKE_PACKAGE: package, FAKE_MODULE: fake})
    try:
        for path, build in objects.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(build(fake), path)
    finally:
        del sys.modules[FAKE_MODULE], sys.modules[FAKE_PACKAGE]


def ClassificationHead(weight: torch.Tensor, bias: torch.Tensor | None = None, normalize: bool = True):
    """The test's stand-in for task_vectors' head, as a module (for reference forwards)."""
    return _fake_module().ClassificationHead(normalize, weight, bias)


# ----------------------------------------------------------------------------- data

def make_image_folder(root: Path, classes: int, per_class: int, *, seed: int = 0,
                      sizes=((40, 48), (52, 36), (32, 32))) -> Path:
    """``root/class_<c>/<i>.png``: noisy images whose tint and stripe period depend on the class
    (told apart well, not perfectly, by a small random ViT)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[(c + i) % len(sizes)]
            tint = 0.15 * COLOURS[c % len(COLOURS)] + 0.85 * 128
            image = np.tile(tint, (h, w, 1)).astype(np.float64)
            period = 3 + c + int(rng.integers(0, 2))
            image[:, (np.arange(w) // period) % 2 == 0] *= 0.6
            image += rng.normal(0, 90, image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


# ----------------------------------------------------------------------------- study

def _perturbed(state: dict[str, torch.Tensor], keys, scale: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key in keys:
        tensor = state[key]
        if tensor.is_floating_point() and tensor.numel() > 1:
            noise = torch.randn(tensor.shape, generator=generator)
            out[key] = tensor + scale * float(tensor.std()) * noise
    return out


def _finetuned(model, state: dict[str, torch.Tensor], keys, images: torch.Tensor, labels: torch.Tensor,
               classes: int, *, hf: bool, steps: int, lr: float = 2e-3) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(state, head weight, head bias) after `steps` full-batch Adam steps on the image tower and
    the head (from a head fitted on `state`'s embeddings), through the library's own module."""
    model.load_state_dict(state)
    x = normalise_images(images)
    weight, bias = fit_head(_embed(model, x, hf).detach(), labels, classes)
    if steps:
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        params = [p for n, p in model.named_parameters() if n in set(keys)]
        optimiser = torch.optim.Adam(params + [weight, bias], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(classification_logits(_embed(model, x, hf), weight, bias), labels)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out, weight.detach().clone(), bias.detach().clone()


def _embed(model, x: torch.Tensor, hf: bool) -> torch.Tensor:
    return hf_output(model.get_image_features(pixel_values=x)) if hf else model.encode_image(x)


def fit_head(features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 50) -> tuple:
    """(weight, bias) of a logistic regression on L2-normalised `features` (deterministic)."""
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


def _load_images(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).glob("*.png")):
            images.append(preprocess_image(file, size))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def make_clip_study(tmp_path, arch: str = "tiny", heads: str = "files", hf: bool | str = False, *,
                    tasks: int | list[str] = 3, classes: int = 3, per_class: int = 4, split_rule: bool = False,
                    quick_gelu: bool = False, finetune_scale: float = 0.02, finetune_steps: int = 15,
                    limit: int | None = None, seed: int = 0) -> Path:
    """Write a study of kind ``open_clip`` under `tmp_path` and return its YAML file.

    `arch`: ``"tiny"`` or ``"ViT-B-32"``; `heads`: ``"files"`` (pickled ClassificationHeads
    fitted on the fine-tuned models), ``"zeroshot"`` or ``"linear_probe"``; `hf`: Hugging Face
    checkpoints (tiny only), see the module docstring. `tasks`: a count (names from
    :data:`TASKS`) or names; each task gets `classes` classes (task i: classes + i % 2) with
    `per_class` images per split (train, val, test folders, or with `split_rule` one tree of
    3 x `per_class` images per class split by rule). The YAML's ``limit`` is `limit` (omitted:
    the kind's default).
    """
    root = Path(tmp_path)
    names = list(TASKS[:tasks]) if isinstance(tasks, int) else list(tasks)
    if arch not in ("tiny", "ViT-B-32"):
        raise ValueError(f"arch must be 'tiny' or 'ViT-B-32', got {arch!r}")
    if hf and arch != "tiny":
        raise ValueError("Hugging Face checkpoints are built for arch='tiny' only")
    counts = {task: classes + i % 2 for i, task in enumerate(names)}

    # data
    data_spec = {}
    for i, task in enumerate(names):
        folder = root / "data" / task
        if split_rule:
            make_image_folder(folder, counts[task], 3 * per_class, seed=seed + 10 * i)
            data_spec[task] = {"root": str(folder), "split": {"train": 1 / 3, "val": 1 / 3, "seed": seed}}
        else:
            for j, split in enumerate(("train", "val", "test")):
                make_image_folder(folder / split, counts[task], per_class, seed=seed + 10 * i + j)
            data_spec[task] = {split: str(folder / split) for split in ("train", "val", "test")}

    # models
    if hf:
        model = hf_clip(seed)
        pre_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        tower = [k for k in pre_state if k.startswith("vision_model.")]
        size = TINY_VISION["image_size"]
    else:
        model = tiny_clip(quick_gelu, seed) if arch == "tiny" else vit_b_32(seed)
        pre_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        tower = [k for k in pre_state if k.startswith("visual.")]
        size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    train = {}
    for task in names:
        source = Path(data_spec[task]["root"] if split_rule else data_spec[task]["train"])
        train[task] = _load_images(source, size)
    states, fitted = {}, {}
    for i, task in enumerate(names):
        start = _perturbed(pre_state, tower, finetune_scale, seed + 100 + i)
        steps = finetune_steps if arch == "tiny" else 0
        states[task], *fitted[task] = _finetuned(model, start, tower, *train[task], counts[task], hf=bool(hf),
                                                 steps=steps)
    model.load_state_dict(pre_state)

    folder = root / "checkpoints" / (arch if not hf else "clip-hf")
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"kind": "open_clip", "name": f"{arch}{'-hf' if hf else ''}-{len(names)}-tasks"}
    if hf:
        model.save_pretrained(folder / "pretrained")
        spec["pretrained"] = str(folder / "pretrained")
        spec["finetuned"] = {}
        for i, task in enumerate(names):
            out = folder / task
            _save_hf_vision(model.config, states[task], out, prefixed=hf == "prefixed" or (i % 2 == 1 and hf is True))
            spec["finetuned"][task] = str(out)
    else:
        model.load_state_dict(pre_state)
        preprocess = None
        try:
            import open_clip

            preprocess = open_clip.image_transform(size, is_train=False)
        except Exception:  # noqa: BLE001 - only decoration of the pickle
            pass
        builds = {folder / "zeroshot.pt": _encoder_builder(model, pre_state, preprocess)}
        spec["pretrained"] = str(folder / "zeroshot.pt")
        spec["finetuned"] = {}
        for task in names:
            path = folder / task.upper() / "finetuned.pt"
            builds[path] = _encoder_builder(model, states[task], preprocess)
            spec["finetuned"][task] = str(path)
        save_pickled(builds)
        model.load_state_dict(pre_state)
    if quick_gelu and not hf:
        spec["quick_gelu"] = True
    if arch == "tiny":
        spec["head_width"] = TINY_VISION["head_width"]

    # heads
    if heads == "files":
        builds = {}
        spec["heads"] = {}
        for task in names:
            weight, bias = fitted[task]
            path = folder / f"head_{task.upper()}.pt"
            builds[path] = (lambda w, b: lambda fake: fake.ClassificationHead(True, w, b))(weight, bias)
            spec["heads"][task] = str(path)
        save_pickled(builds)
    elif heads == "zeroshot":
        spec["zeroshot"] = {"templates": ["a photo of a {}.", "a blurry photo of a {}."]}
    elif heads == "linear_probe":
        spec["linear_probe"] = {"split": "train", "steps": 30}
    else:
        raise ValueError(f"heads must be files, zeroshot or linear_probe, got {heads!r}")
    spec["data"] = data_spec
    if limit is not None:
        spec["limit"] = limit
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _encoder_builder(model, state, preprocess):
    def build(fake):
        model.load_state_dict(state)
        return fake.ImageEncoder(model, preprocess)

    return build


def _save_hf_vision(config, state: dict[str, torch.Tensor], out: Path, prefixed: bool) -> None:
    """A ``CLIPVisionModel`` folder of the image tower in `state` (keys as transformers saves
    them, or with transformers 4's ``vision_model.`` prefix)."""
    from transformers import CLIPVisionModel

    from freqmerge_viz.io import write_safetensors

    vision = CLIPVisionModel(config.vision_config)
    own = vision.state_dict()
    tensors = {}
    for key in own:
        source = key if key.startswith("vision_model.") else "vision_model." + key
        tensors["vision_model." + key.removeprefix("vision_model.") if prefixed else key] = \
            state[source].contiguous()
    vision.save_pretrained(out)  # writes config.json (and weights, replaced below)
    for file in out.glob("*.safetensors"):
        file.unlink()
    write_safetensors(tensors, out / "model.safetensors")


@torch.no_grad()
def _tower_features(model, state: dict[str, torch.Tensor], images: torch.Tensor, hf: bool) -> torch.Tensor:
    """Image embeddings of uint8 `images` under `model` with weights `state` (the library's own module)."""
    model.load_state_dict(state)
    x = normalise_images(images)
    if hf:
        return hf_output(model.get_image_features(pixel_values=x))
    return model.encode_image(x)


def hf_output(out) -> torch.Tensor:
    """The embeddings of ``get_image_features``/``get_text_features`` (a tensor in transformers 4,
    an output whose ``pooler_output`` holds them in transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def reference_logits(model, state: dict[str, torch.Tensor], head, images: torch.Tensor, hf: bool = False):
    """Logits of `images` through the library's own modules: `model` with `state` loaded, then `head`."""
    return head(_tower_features(model, state, images, hf))


def functional_reference(tower, params, head_weight, head_bias, images):
    """The toolkit's forward, for side-by-side checks."""
    return classification_logits(image_features(params, images, tower), head_weight, head_bias)
