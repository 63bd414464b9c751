"""Study files of kind ``open_clip`` built on disk with nothing downloaded (for tests and benchmarks).

:func:`make_clip_study` writes, under a folder, what a task_vectors user has. With open_clip
checkpoints (``arch="tiny"``, a small open_clip config: image 32, patch 8, width 64, 2 layers;
or ``arch="ViT-B-32"``, open_clip's real ViT-B-32 at random init, about 600 MB per checkpoint,
text tower included) it is the library's
:func:`freqmerge_viz.study.examples.make_open_clip_example` (pickled ``ImageEncoder`` and
``ClassificationHead`` modules whose class is absent at load, generated ImageFolder data, the
study YAML; see there), with absolute paths in the YAML. ``hf=True`` writes Hugging Face
checkpoints instead, from the same pieces: a ``CLIPModel`` folder as the pretrained and
``CLIPVisionModel`` folders as the fine-tuned ones (FusionBench's layout); ``hf="prefixed"``
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
from pathlib import Path

import pytest
import torch

from freqmerge_viz.io import save_state
from freqmerge_viz.study import examples
from freqmerge_viz.study.clip import classification_logits, image_features, normalise_images
from freqmerge_viz.study.examples import (TASKS, TINY_EMBED, TINY_TEXT, TINY_VISION, finetune, fit_head,  # noqa: F401
                                          head_fields, load_images, make_image_folder, make_open_clip_example,
                                          perturbed, randomise_norms, write_image_data, write_study_file)


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
    """A small open_clip CLIP (random weights, eval mode): the example study's."""
    import_open_clip()
    return examples.tiny_clip(quick_gelu, seed)


def vit_b_32(seed: int = 0):
    """open_clip's ViT-B-32 at random init (nothing downloaded), eval mode."""
    open_clip = import_open_clip()
    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    randomise_norms(model, seed)
    return model.eval()


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
    randomise_norms(model, seed)
    return model.eval()


def ClassificationHead(weight: torch.Tensor, bias: torch.Tensor | None = None, normalize: bool = True):
    """The test's stand-in for task_vectors' head, as a module (for reference forwards)."""
    return examples.task_vectors_classes().ClassificationHead(normalize, weight, bias)


# ----------------------------------------------------------------------------- study

def make_clip_study(tmp_path, arch: str = "tiny", heads: str = "files", hf: bool | str = False, *,
                    tasks: int | list[str] = 3, classes: int = 3, per_class: int = 4, split_rule: bool = False,
                    quick_gelu: bool = False, finetune_scale: float = 0.02, finetune_steps: int = 15,
                    limit: int | None = None, seed: int = 0) -> Path:
    """Write a study of kind ``open_clip`` under `tmp_path` and return its YAML file (absolute paths).

    `arch`: ``"tiny"`` or ``"ViT-B-32"``; `heads`: ``"files"`` (pickled ClassificationHeads
    fitted on the fine-tuned models), ``"zeroshot"`` or ``"linear_probe"``; `hf`: Hugging Face
    checkpoints (tiny only), see the module docstring. `tasks`: a count (names from
    :data:`TASKS`) or names; each task gets `classes` classes (task i: classes + i % 2) with
    `per_class` images per split (train, val, test folders, or with `split_rule` one tree of
    3 x `per_class` images per class split by rule). The YAML's ``limit`` is `limit` (omitted:
    the kind's default).
    """
    if arch not in ("tiny", "ViT-B-32"):
        raise ValueError(f"arch must be 'tiny' or 'ViT-B-32', got {arch!r}")
    if hf and arch != "tiny":
        raise ValueError("Hugging Face checkpoints are built for arch='tiny' only")
    if not hf:
        import_open_clip()  # a skip, not the library's error, where open_clip is missing
        return make_open_clip_example(tmp_path, tasks=tasks, classes=classes, per_class=per_class, heads=heads,
                                      arch=arch, quick_gelu=quick_gelu, split_rule=split_rule,
                                      finetune_scale=finetune_scale,
                                      finetune_steps=finetune_steps if arch == "tiny" else 0, limit=limit,
                                      seed=seed, absolute_paths=True)
    root = Path(tmp_path)
    names = list(TASKS[:tasks]) if isinstance(tasks, int) else list(tasks)
    counts = {task: classes + i % 2 for i, task in enumerate(names)}
    data = write_image_data(root, counts, per_class, split_rule=split_rule, seed=seed)
    model = hf_clip(seed)
    pre_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tower = [k for k in pre_state if k.startswith("vision_model.")]
    states, fitted = {}, {}
    for i, task in enumerate(names):
        train = load_images(data[task]["root"] if split_rule else data[task]["train"], TINY_VISION["image_size"])
        start = perturbed(pre_state, tower, finetune_scale, seed + 100 + i)
        states[task], *fitted[task] = finetune(model, start, tower, *train, counts[task], steps=finetune_steps,
                                               embed=_hf_embed)
    model.load_state_dict(pre_state)
    folder = root / "checkpoints" / "clip-hf"
    model.save_pretrained(folder / "pretrained")
    spec = {"kind": "open_clip", "name": f"tiny-hf-{len(names)}-tasks", "pretrained": folder / "pretrained",
            "finetuned": {}}
    for i, task in enumerate(names):
        _save_hf_vision(model.config, states[task], folder / task,
                        prefixed=hf == "prefixed" or (i % 2 == 1 and hf is True))
        spec["finetuned"][task] = folder / task
    spec["head_width"] = TINY_VISION["head_width"]
    spec.update(head_fields(folder, fitted, heads))
    spec["data"] = data
    if limit is not None:
        spec["limit"] = limit
    return write_study_file(root, spec, absolute_paths=True)


def _hf_embed(model, x: torch.Tensor) -> torch.Tensor:
    return hf_output(model.get_image_features(pixel_values=x))


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


def two_tower_checkpoints(tmp_path: Path) -> tuple[str, list[str]]:
    """A tiny checkpoint named like task_vectors' ImageEncoder (model.visual.* and a text tower);
    the fine-tuned copies change the image tower only, as an image fine-tune does."""
    g = torch.Generator().manual_seed(11)
    pre = {"model.visual.conv1.weight": torch.randn(8, 3, 2, 2, generator=g),
           "model.visual.class_embedding": torch.randn(8, generator=g),
           "model.visual.transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8, generator=g),
           "model.transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8, generator=g),
           "model.token_embedding.weight": torch.randn(16, 8, generator=g),
           "model.positional_embedding": torch.randn(6, 8, generator=g)}
    save_state(pre, tmp_path / "pre.safetensors")
    paths = []
    for t in range(2):
        ft = {k: v + (0.1 * torch.randn(v.shape, generator=g) if ".visual." in k else 0) for k, v in pre.items()}
        save_state(ft, tmp_path / f"ft{t}.safetensors")
        paths.append(str(tmp_path / f"ft{t}.safetensors"))
    return str(tmp_path / "pre.safetensors"), paths
