"""The ``open_clip`` study kind (freqmerge_viz.study.clip).

Built with nothing downloaded (tests/clip_support.py): task_vectors-style pickles of small
open_clip models and of a real ViT-B-32 at random init, Hugging Face CLIP folders, generated
ImageFolder data. Checked: the functional forward against open_clip's and transformers' own
modules, the engine's numbers against a plain ``model.eval()`` loop, every StudySpecError
before any model runs, and the text tower never among the merged keys.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import freqmerge_viz
from freqmerge_viz.errors import StudySpecError
from freqmerge_viz.io import KeyMapState, load_state
from freqmerge_viz.study import evaluate_on_study, load_study
from freqmerge_viz.study import clip as clip_kind
from freqmerge_viz.study.clip import (CompletedState, OpenClipStudy, find_text_tower, find_tower, image_features, normalise_images,
                                      preprocess_image, text_features)

from clip_support import (ClassificationHead, hf_clip, hf_output, import_open_clip, make_clip_study,
                          make_image_folder, tiny_clip, vit_b_32)

ATOL = 1e-4


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def tiny_study_file(tmp_path_factory):
    import_open_clip()
    return make_clip_study(tmp_path_factory.mktemp("tiny"), "tiny", "files", tasks=3)


@pytest.fixture(scope="session")
def hf_study_file(tmp_path_factory):
    import_open_clip()  # zero-shot heads read open_clip's tokenizer
    return make_clip_study(tmp_path_factory.mktemp("hf"), "tiny", "zeroshot", hf=True, tasks=2)


@pytest.fixture(scope="session")
def vit_study_file(tmp_path_factory):
    import_open_clip()
    return make_clip_study(tmp_path_factory.mktemp("vit"), "ViT-B-32", "files", tasks=2, classes=2, per_class=2)


@pytest.fixture
def no_forward(monkeypatch):
    """Fails the test if anything decodes an image or runs the image or text tower."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model forward or image decode ran while opening the study")

    for name in ("image_features", "text_features", "preprocess_image"):
        monkeypatch.setattr(clip_kind, name, refuse)


def _spec(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _write(path: Path, spec: dict, name: str = "edited.yaml") -> Path:
    out = path.parent / name
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def _open_clip_state(model_state: dict, lazy) -> dict:
    """`lazy` (a task_vectors ImageEncoder pickle's keys ``model.*``) as the open_clip model's state dict."""
    return {k: lazy["model." + k].clone() for k in model_state}


# ----------------------------------------------------------------------------- forward equality

@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quick_gelu"])
def test_forward_matches_open_clip(quick_gelu):
    model = tiny_clip(quick_gelu, seed=3)
    state = model.state_dict()
    tower = find_tower(state, head_width=32, quick_gelu=quick_gelu)
    assert (tower.layout, tower.prefix, tower.layers, tower.heads, tower.out_dim) == ("open_clip", "visual.", 2, 2, 32)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = model.encode_image(normalise_images(images))
        got = image_features(dict(state), images, tower)
        assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()
        open_clip = import_open_clip()
        tokens = open_clip.tokenize(["a photo of a dog.", "a cat", "x"], context_length=16)
        text = find_text_tower(state, tower, head_width=32)
        assert text.heads == 1 and text.context == 16
        expected_text = model.encode_text(tokens)
        assert torch.allclose(text_features(dict(state), tokens, text), expected_text, atol=ATOL)
        wrong = image_features(dict(state), images, dataclasses.replace(tower, quick_gelu=not quick_gelu))
        assert not torch.allclose(wrong, expected, atol=ATOL)  # the activation matters at this tolerance


def test_forward_matches_transformers():
    from transformers import CLIPVisionModel

    model = hf_clip(seed=4)
    state = model.state_dict()
    tower = find_tower(state, heads=2, quick_gelu=True)
    assert (tower.layout, tower.prefix, tower.projection) == ("hf", "vision_model.", "visual_projection.weight")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    x = normalise_images(images)
    with torch.no_grad():
        expected = hf_output(model.get_image_features(pixel_values=x))
        assert torch.allclose(image_features(dict(state), images, tower), expected, atol=ATOL)
        vision = CLIPVisionModel(model.config.vision_config).eval()  # transformers 5: keys without vision_model.
        vision.load_state_dict({k: state["vision_model." + k.removeprefix("vision_model.")]
                                for k in vision.state_dict()})
        bare = find_tower(vision.state_dict(), heads=2, quick_gelu=True)
        assert bare.projection is None and bare.out_dim == 64
        assert torch.allclose(image_features(dict(vision.state_dict()), images, bare),
                              vision(pixel_values=x).pooler_output, atol=ATOL)
        open_clip = import_open_clip()
        tokens = open_clip.tokenize(["a photo of a dog.", "two cats"], context_length=16)
        text = find_text_tower(state, tower, heads=2, quick_gelu=True)
        assert torch.allclose(text_features(dict(state), tokens, text),
                              hf_output(model.get_text_features(input_ids=tokens)), atol=ATOL)


def test_preprocessing_matches_open_clip_transform(tmp_path):
    open_clip = import_open_clip()
    from PIL import Image

    make_image_folder(tmp_path, 1, 4, sizes=((40, 48), (52, 36), (32, 32), (33, 61)))
    transform = open_clip.image_transform(32, is_train=False)
    for file in sorted((tmp_path / "class_0").glob("*.png")):
        with Image.open(file) as image:
            expected = transform(image)
        got = normalise_images(preprocess_image(file, 32)[None])[0]
        assert torch.allclose(got, expected, atol=1e-5), file


# ----------------------------------------------------------------------------- a task_vectors study

def test_tiny_study_loads(tiny_study_file):
    study = load_study(tiny_study_file)
    spec = _spec(tiny_study_file)
    assert isinstance(study, OpenClipStudy) and study.kind == "open_clip" and study.unit == "images"
    assert study.tasks == ["mnist", "svhn", "cars"] and study.name == spec["name"]
    assert study.default_limit == 64 and study.head_kinds == ("finetuned", "files")
    keys = study.backbone_keys()
    assert keys and all(k.startswith("model.visual.") for k in keys)
    assert "model.visual.proj" in keys and "model.visual.conv1.weight" in keys
    assert not any(k.startswith(("model.transformer.", "model.token_embedding", "model.ln_final",
                                 "model.text_projection")) for k in keys)
    assert "model.transformer.resblocks.0.attn.in_proj_weight" in study.pretrained  # carried, not merged
    for state in study.finetuned.values():  # the same names as the pretrained: the files as read
        assert not isinstance(state, KeyMapState) and set(state) == set(study.pretrained)
    origins = set(study.origins)
    assert spec["pretrained"] in origins and all(p in origins for p in spec["finetuned"].values())
    assert all(p in origins for p in spec["heads"].values())
    assert all(str(Path(d["test"])) in origins for d in spec["data"].values())
    images, labels = study.data("svhn", "val")
    assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, 32, 32)
    assert labels.tolist()[:8] == [0, 1, 2, 3, 0, 1, 2, 3]  # round-robin over the classes
    assert study.classes("svhn") == ["class_0", "class_1", "class_2", "class_3"]
    assert study.data("svhn", "val")[0] is images  # cached
    assert "open_clip ViT" in study.describe()


def test_forward_and_evaluation_match_the_eval_loop(tiny_study_file):
    """The study's numbers (engine: vmap over parameter sets, threads) equal a plain loop over
    the open_clip module in eval mode with the head module."""
    study = load_study(tiny_study_file)
    model = tiny_clip()
    reference = model.state_dict()
    merged = freqmerge_viz.merge("task_arithmetic", study.pretrained, list(study.finetuned.values()),
                                 scaling=0.3)
    states = [study.pretrained, *study.finetuned.values(), merged]
    table = evaluate_on_study(study, states, split="test", mode="vmap", chunk=2, workers=2)
    for task in study.tasks:
        images, labels = study.data(task, "test")
        head = study.head(task)
        module = ClassificationHead(head.weight, head.bias).eval()
        for i, state in enumerate(states):
            model.load_state_dict(_open_clip_state(reference, state))
            model.eval()
            with torch.no_grad():
                logits = module(model.encode_image(normalise_images(images)))
                assert torch.allclose(study.forward(state, images, task), logits, atol=ATOL)
            row = table[(table.state == i) & (table.task == task)].iloc[0]
            assert row.accuracy == pytest.approx(int((logits.argmax(1) == labels).sum()) / len(labels), abs=1e-12)
            assert row.loss == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-4)
    own = table[table.state.between(1, 3)]
    assert {"mnist", "svhn", "cars"} == set(own.task)


def test_checkpoint_formats_mix(tiny_study_file, tmp_path):
    """An open_clip state dict (``visual.*``) and a safetensors file of the pickle's keys stand in
    for two pickled fine-tunes: the same numbers, each presented under the pretrained's names."""
    from freqmerge_viz.io import save_state

    spec = _spec(tiny_study_file)
    pickled = load_study(tiny_study_file)
    mnist = load_state(spec["finetuned"]["mnist"], pickled_modules=True)
    torch.save({k.removeprefix("model."): mnist[k] for k in mnist if k.startswith("model.")}, tmp_path / "mnist.pt")
    save_state(load_state(spec["finetuned"]["svhn"], pickled_modules=True), tmp_path / "svhn.safetensors")
    spec["finetuned"]["mnist"] = str(tmp_path / "mnist.pt")
    spec["finetuned"]["svhn"] = str(tmp_path / "svhn.safetensors")
    study = load_study(_write(tiny_study_file, spec))
    assert study.backbone_keys() == pickled.backbone_keys()
    for task in study.tasks:
        state = study.finetuned[task]
        assert isinstance(state, CompletedState) and set(state) == set(study.pretrained)
        images, _ = study.data(task, "test")
        assert torch.equal(study.forward(state, images, task), pickled.forward(pickled.finetuned[task], images, task))
    assert str(tmp_path / "mnist.pt") in study.origins
    merged = freqmerge_viz.merge("task_arithmetic", study.pretrained, list(study.finetuned.values()))
    reference = freqmerge_viz.merge("task_arithmetic", pickled.pretrained, list(pickled.finetuned.values()))
    assert all(torch.equal(merged[k], reference[k]) for k in study.backbone_keys())


def test_quick_gelu_detected_from_the_pickle(tmp_path):
    path = make_clip_study(tmp_path, "tiny", "files", tasks=1, classes=2, per_class=2, quick_gelu=True,
                           finetune_steps=0)
    spec = _spec(path)
    assert spec.pop("quick_gelu") is True
    study = load_study(_write(path, spec))
    assert study.tower.quick_gelu  # the pickle names open_clip.transformer.QuickGELU
    model = tiny_clip(quick_gelu=True)
    model.load_state_dict(_open_clip_state(model.state_dict(), study.finetuned["mnist"]))
    images, _ = study.data("mnist", "test")
    head = study.head("mnist")
    with torch.no_grad():
        expected = ClassificationHead(head.weight, head.bias)(model.encode_image(normalise_images(images)))
    assert torch.allclose(study.forward(study.finetuned["mnist"], images, "mnist"), expected, atol=ATOL)
    spec["quick_gelu"] = False  # the field overrides the detection
    assert not load_study(_write(path, spec)).tower.quick_gelu


def test_limit_and_max_images(tiny_study_file):
    study = load_study(tiny_study_file, limit=5, max_images=6)
    assert study.default_limit == 5
    images, labels = study.data("svhn", "test")
    assert len(images) == 6 and labels.tolist() == [0, 1, 2, 3, 0, 1]


def test_head_files_read_as_task_vectors_heads(tiny_study_file):
    spec = _spec(tiny_study_file)
    state = load_state(spec["heads"]["mnist"], pickled_modules=True)
    assert sorted(state) == ["bias", "weight"]
    study = load_study(tiny_study_file)
    head = study.head("mnist")
    assert head.normalize and torch.equal(head.weight, state["weight"]) and head.weight.shape == (3, 32)


def test_features_are_pretrained_embeddings(tiny_study_file):
    study = load_study(tiny_study_file)
    model = tiny_clip()
    model.load_state_dict(_open_clip_state(model.state_dict(), study.pretrained))
    images, _ = study.data("mnist", "val")
    with torch.no_grad():
        assert torch.allclose(study.features(images), model.encode_image(normalise_images(images)), atol=ATOL)
    assert study.has_features


def test_vit_b_32_study(vit_study_file):
    """A real ViT-B-32 (random init) from task_vectors-style pickles: layout, 12 heads of 64, the
    forward against open_clip's module, and the engine against the eval loop."""
    study = load_study(vit_study_file)
    tower = study.tower
    assert (tower.width, tower.layers, tower.heads, tower.patch, tower.image_size, tower.out_dim) == \
        (768, 12, 12, 32, 224, 512)
    assert not tower.quick_gelu  # open_clip's ViT-B-32 config: nn.GELU, and the pickle names no QuickGELU
    assert all(k.startswith("model.visual.") for k in study.backbone_keys())
    model = vit_b_32()
    reference = model.state_dict()
    images, labels = study.data("svhn", "test")
    states = [study.pretrained, study.finetuned["svhn"]]
    table = evaluate_on_study(study, states, "svhn", split="test")
    head = study.head("svhn")
    module = ClassificationHead(head.weight, head.bias).eval()
    for i, state in enumerate(states):
        model.load_state_dict(_open_clip_state(reference, state))
        with torch.no_grad():
            logits = module(model.eval().encode_image(normalise_images(images)))
        assert torch.allclose(study.forward(state, images, "svhn"), logits, atol=ATOL)
        assert table.accuracy[i] == pytest.approx(int((logits.argmax(1) == labels).sum()) / len(labels))
        assert table.loss[i] == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-4)


# ----------------------------------------------------------------------------- Hugging Face checkpoints

def test_hf_study(hf_study_file):
    """FusionBench's layout: a CLIPModel folder and CLIPVisionModel fine-tunes (one saved by
    transformers 5, without the vision_model. prefix; one with it, as transformers 4 saved)."""
    study = load_study(hf_study_file)
    assert study.tower.layout == "hf" and study.tower.quick_gelu and study.tower.heads == 2
    keys = study.backbone_keys()
    assert keys and all(k.startswith("vision_model.") for k in keys)
    assert "visual_projection.weight" not in keys  # the fine-tunes have none: taken from the pretrained
    assert not any(k.startswith("text_model.") for k in keys)
    for state, file in zip(study.finetuned.values(), _spec(hf_study_file)["finetuned"].values()):
        assert isinstance(state, CompletedState) and set(state) == set(study.pretrained)
        assert set(state.origins) == {Path(file) / "model.safetensors", Path(file)}
        assert torch.equal(state["text_model.final_layer_norm.weight"],
                           study.pretrained["text_model.final_layer_norm.weight"])
    model = hf_clip()
    merged = freqmerge_viz.merge("task_arithmetic", study.pretrained, list(study.finetuned.values()),
                                 scaling=0.5)
    open_clip = import_open_clip()
    for task in study.tasks:
        images, labels = study.data(task, "test")
        head = study.head(task)  # zero-shot, through transformers' text model below
        names = [c.replace("_", " ") for c in study.classes(task)]
        with torch.no_grad():
            weights = []
            for name in names:
                tokens = open_clip.tokenize([f"a photo of a {name}.", f"a blurry photo of a {name}."], 16)
                embeddings = hf_output(model.get_text_features(input_ids=tokens))
                embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
                mean = embeddings.mean(0)
                weights.append(mean / mean.norm())
            expected = torch.stack(weights) * model.logit_scale.exp()
        assert torch.allclose(head.weight, expected, atol=ATOL)
        table = evaluate_on_study(study, [study.pretrained, study.finetuned[task], merged], task)
        for i, state in enumerate([study.pretrained, study.finetuned[task], merged]):
            model.load_state_dict({k: state[k].clone() for k in model.state_dict()})
            with torch.no_grad():
                features = hf_output(model.get_image_features(pixel_values=normalise_images(images)))
                logits = ClassificationHead(head.weight, head.bias)(features)
            assert torch.allclose(study.forward(state, images, task), logits, atol=ATOL)
            assert table.accuracy[i] == pytest.approx(int((logits.argmax(1) == labels).sum()) / len(labels))


def test_zeroshot_heads_follow_task_vectors(tmp_path):
    path = make_clip_study(tmp_path, "tiny", "zeroshot", tasks=1, classes=2, per_class=2)
    study = load_study(path)
    model = tiny_clip()
    open_clip = import_open_clip()
    head = study.head("mnist")
    assert study.head("mnist", "zeroshot") is head
    with torch.no_grad():
        rows = []
        for name in ("class 0", "class 1"):
            e = model.encode_text(open_clip.tokenize([f"a photo of a {name}.", f"a blurry photo of a {name}."], 16))
            e = e / e.norm(dim=-1, keepdim=True)
            rows.append(e.mean(0) / e.mean(0).norm())
        expected = torch.stack(rows) * model.logit_scale.exp()
    assert torch.allclose(head.weight, expected, atol=ATOL) and not head.bias.any()
    spec = _spec(path)
    spec["zeroshot"]["logit_scale"] = False
    spec["zeroshot"]["classnames"] = {"mnist": ["zero", "one"]}
    unscaled = load_study(_write(path, spec)).head("mnist").weight
    assert torch.allclose(unscaled.norm(dim=1), torch.ones(2), atol=1e-5)


def test_linear_probe_heads(tmp_path):
    path = make_clip_study(tmp_path, "tiny", "linear_probe", tasks=2, split_rule=True, finetune_steps=0)
    study = load_study(path)
    assert study.head_kinds == ("finetuned", "probe")
    images, labels = study.data("svhn", "train")
    head = study.head("svhn")
    assert head.weight.shape == (4, 32)
    logits = study.forward(study.pretrained, images, "svhn")
    assert int((logits.argmax(1) == labels).sum()) / len(labels) >= 0.9  # fits its training split
    again = load_study(path).head("svhn")
    assert torch.equal(again.weight, head.weight)  # deterministic


def test_split_rule_is_deterministic_and_disjoint(tmp_path):
    path = make_clip_study(tmp_path, "tiny", "files", tasks=1, split_rule=True, per_class=4, finetune_steps=0)
    study = load_study(path)
    splits = study._data["mnist"].splits
    files = {s: [str(p) for p, _ in samples] for s, samples in splits.items()}
    assert sorted(files) == ["test", "train", "val"]
    assert [len(files[s]) for s in ("train", "val", "test")] == [12, 12, 12]  # 12 images/class, thirds
    assert not set(files["train"]) & set(files["val"]) and not set(files["val"]) & set(files["test"])
    assert load_study(path)._data["mnist"].splits == splits


# ----------------------------------------------------------------------------- errors, before any forward

def _expect(path: Path, field: str, *words: str):
    with pytest.raises(StudySpecError) as info:
        load_study(path)
    message = str(info.value)
    assert info.value.field == field, message
    assert str(path) in message and all(w in message for w in words), message
    return message


def test_bad_paths(tiny_study_file, no_forward):
    spec = _spec(tiny_study_file)
    spec["finetuned"]["svhn"] = "nowhere/finetuned.pt"
    _expect(_write(tiny_study_file, spec), "finetuned.svhn", "does not exist")
    spec = _spec(tiny_study_file)
    spec["heads"]["cars"] = "nowhere/head.pt"
    _expect(_write(tiny_study_file, spec), "heads.cars", "does not exist")
    spec = _spec(tiny_study_file)
    spec["data"]["mnist"]["val"] = "nowhere"
    _expect(_write(tiny_study_file, spec), "data.mnist.val", "does not exist")


def test_missing_split(tiny_study_file, no_forward):
    spec = _spec(tiny_study_file)
    del spec["data"]["svhn"]["test"]
    _expect(_write(tiny_study_file, spec), "data.svhn.test", "required")
    spec = _spec(tiny_study_file)
    del spec["data"]["cars"]
    _expect(_write(tiny_study_file, spec), "data.cars", "required")
    spec = _spec(tiny_study_file)
    del spec["data"]["svhn"]["train"]
    del spec["heads"]
    spec["linear_probe"] = {"split": "train"}
    _expect(_write(tiny_study_file, spec), "data.svhn.train", "linear_probe")


def test_missing_split_at_use(tiny_study_file):
    spec = _spec(tiny_study_file)
    del spec["data"]["svhn"]["train"]
    study = load_study(_write(tiny_study_file, spec))
    with pytest.raises(StudySpecError) as info:
        study.data("svhn", "train")
    assert info.value.field == "data.svhn.train"


def test_head_class_count_mismatch(tiny_study_file, no_forward):
    spec = _spec(tiny_study_file)
    spec["heads"]["mnist"], spec["heads"]["svhn"] = spec["heads"]["svhn"], spec["heads"]["mnist"]
    message = _expect(_write(tiny_study_file, spec), "heads.mnist", "4 classes", "3")
    assert spec["heads"]["mnist"] in message


def test_classes_differ_between_splits(tiny_study_file, no_forward, tmp_path):
    spec = _spec(tiny_study_file)
    make_image_folder(tmp_path / "other", 2, 1)
    spec["data"]["mnist"]["val"] = str(tmp_path / "other")
    _expect(_write(tiny_study_file, spec), "data.mnist.val", "class folders", "missing")


def test_checkpoint_of_another_architecture(tiny_study_file, no_forward, tmp_path):
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    open_clip = import_open_clip()
    other = open_clip.CLIP(32, CLIPVisionCfg(image_size=32, patch_size=16, width=64, layers=2, head_width=32),
                           CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=1, layers=1))
    torch.save(other.state_dict(), tmp_path / "patch16.pt")
    spec = _spec(tiny_study_file)
    spec["finetuned"]["svhn"] = str(tmp_path / "patch16.pt")
    message = _expect(_write(tiny_study_file, spec), "finetuned.svhn", "another architecture")
    assert str(tmp_path / "patch16.pt") in message
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "mlp.pt")
    spec["finetuned"]["svhn"] = str(tmp_path / "mlp.pt")
    _expect(_write(tiny_study_file, spec), "finetuned.svhn", "another architecture", "no CLIP image tower")
    spec = _spec(tiny_study_file)
    spec["pretrained"] = str(tmp_path / "mlp.pt")
    _expect(_write(tiny_study_file, spec), "pretrained", "no CLIP image tower")


def test_unknown_keys(tiny_study_file, no_forward):
    spec = _spec(tiny_study_file)
    spec["image_size"] = 224
    _expect(_write(tiny_study_file, spec), "image_size", "unknown field")
    spec = _spec(tiny_study_file)
    spec["data"]["mnist"]["validation"] = spec["data"]["mnist"]["val"]
    _expect(_write(tiny_study_file, spec), "data.mnist.validation", "unknown key")
    spec = _spec(tiny_study_file)
    spec["zeroshot"] = {"template": ["{}"]}
    _expect(_write(tiny_study_file, spec), "zeroshot.template", "unknown key")
    spec = _spec(tiny_study_file)
    spec["data"]["imagenet"] = spec["data"]["mnist"]
    _expect(_write(tiny_study_file, spec), "data.imagenet", "no fine-tuned model")
    spec = _spec(tiny_study_file)
    del spec["heads"]
    _expect(_write(tiny_study_file, spec), "heads", "required")


def test_heads_checked_against_the_embedding(tiny_study_file, no_forward, tmp_path):
    torch.save({"weight": torch.zeros(3, 7), "bias": torch.zeros(3)}, tmp_path / "head.pt")
    spec = _spec(tiny_study_file)
    spec["heads"]["mnist"] = str(tmp_path / "head.pt")
    _expect(_write(tiny_study_file, spec), "heads.mnist", "7-dim", "32")


def test_loading_runs_no_model(tiny_study_file, no_forward):
    spec = _spec(tiny_study_file)
    del spec["heads"]
    spec["zeroshot"] = {"templates": ["a {}"]}
    spec["linear_probe"] = {}
    study = load_study(_write(tiny_study_file, spec))
    assert study.head_kinds == ("finetuned", "zeroshot", "probe")


def test_imports_without_open_clip(tiny_study_file):
    """The module imports and reads task_vectors studies without open_clip; zero-shot heads say
    how to install it."""
    spec = _spec(tiny_study_file)
    del spec["heads"]
    spec["zeroshot"] = {}
    zeroshot = _write(tiny_study_file, spec, "zeroshot.yaml")
    code = f"""
import sys
sys.modules["open_clip"] = None  # not installed
from freqmerge_viz.study import load_study
from freqmerge_viz.errors import StudySpecError
study = load_study({str(tiny_study_file)!r})
print(len(study.backbone_keys()))
try:
    load_study({str(zeroshot)!r})
except StudySpecError as exc:
    print(exc.field, "pip install freqmerge-viz[open_clip]" in str(exc))
assert "torchvision" not in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [str(5 + 12 * 2 + 3), "zeroshot", "True"]


# ----------------------------------------------------------------------------- the benchmark

def test_benchmark_quick(tmp_path):
    import_open_clip()
    from freqmerge_viz.benchmarks.study import main

    out = tmp_path / "bench.json"
    result = main(["--quick", "--k", "2", "--images", "8", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["merge"]["toolkit_seconds"] > 0 and saved["merge"]["plain_seconds"] > 0
    assert saved["merge"]["max_abs_difference"] <= 1e-6
    assert saved["evaluation"]["toolkit_images_per_second"] > 0
    assert saved["evaluation"]["accuracy_difference"] == 0


def test_vit_b_32_task_vectors_files_analyse_the_image_tower_and_name_tasks_by_folder(vit_study_file, capsys):
    """#24 on the layout task_vectors releases: ViT-B-32 ImageEncoder pickles (class absent at
    load, text tower included), every fine-tuned file named finetuned.pt in its task's folder."""
    from freqmerge_viz.cli import main
    from freqmerge_viz.widgets import CutoffExplorer

    spec = _spec(vit_study_file)
    pretrained = str(spec["pretrained"])
    finetuned = [str(path) for path in spec["finetuned"].values()]
    assert all(Path(path).name == "finetuned.pt" for path in finetuned)
    folders = [Path(path).parent.name for path in finetuned]
    keys = list(load_state(pretrained, pickled_modules=True))
    assert any(k.startswith("model.transformer.") for k in keys), "the text tower is in the checkpoint"

    assert main(["interference", "--pretrained", pretrained, "--finetuned", *finetuned, "--pickled-modules"]) == 0
    captured = capsys.readouterr()
    assert "holds both CLIP towers; analysing the image tower only (model.visual.*" in captured.err
    assert json.loads(captured.out)["rows"]

    states = {name: load_state(path, pickled_modules=True) for name, path in zip(folders, finetuned)}
    explorer = CutoffExplorer((load_state(pretrained, pickled_modules=True), states,
                               lambda state: {name: (1, 2) for name in folders}), refine=False)
    assert all(key.startswith("model.visual.") for key in explorer.matrix_keys)
    assert explorer.shown()["key"] == "model.visual.transformer.resblocks.0.attn.in_proj_weight"
    assert "Image tower only (model.visual.*)" in explorer.summary.value

    from freqmerge_viz.taskvector import names_from_sources

    assert names_from_sources(finetuned) == folders  # what merge and routed merges name the tasks by
