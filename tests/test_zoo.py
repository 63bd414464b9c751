"""The demo zoo: task data, the ViT and its functional forward, the shipped checkpoints.

Nothing here trains the shipped zoo; one test builds a tiny throw-away zoo (a few steps).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz import zoo
from freqmerge_viz.errors import CheckpointError, FreqMergeError, MissingKeysError, OutputError, ParameterError
from freqmerge_viz.zoo.config import ProbeConfig, SplitSizes, TrainConfig, ZooConfig

ALL_TASKS = list(zoo.TASK_NAMES) + [zoo.PRETEXT.name]


# ----------------------------------------------------------------------------- data

@pytest.mark.parametrize("task", ALL_TASKS)
def test_task_data_deterministic_shapes_labels(task):
    spec = zoo.get_task(task)
    n = 2 * spec.num_classes + 3
    images, labels = zoo.generate(task, "train", n, seed=0)
    again_images, again_labels = zoo.generate(task, "train", n, seed=0)
    assert images.dtype == np.uint8 and images.shape == (n, 3, 32, 32)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    assert labels.dtype == np.int64 and labels.shape == ((n,) if not spec.aux_classes else (n, 1 + len(spec.aux_classes)))
    if spec.aux_classes:  # the pretext's auxiliary labels (background kind, object cell)
        for column, classes in enumerate(spec.aux_classes, start=1):
            assert 0 <= labels[:, column].min() and labels[:, column].max() < classes
        labels = labels[:, 0]
    assert labels.min() >= 0 and labels.max() < spec.num_classes
    assert set(labels.tolist()) == set(range(spec.num_classes))       # every class present
    assert np.bincount(labels).max() - np.bincount(labels).min() <= 1  # balanced
    assert images.std() > 5                                            # not blank

    other_split, _ = zoo.generate(task, "test", n, seed=0)
    other_seed, _ = zoo.generate(task, "train", n, seed=1)
    train_rows = {row.tobytes() for row in images}
    assert not train_rows & {row.tobytes() for row in other_split}    # splits share no image
    assert not train_rows & {row.tobytes() for row in other_seed}


def test_task_data_is_cached_float_copy():
    config = ZooConfig(sizes=SplitSizes(train=30, val=20, test=24))
    images, labels = zoo.task_data("signs", "val", config)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape == (20, 3, 32, 32) and 0.0 <= images.min() and images.max() <= 1.0
    images.zero_()
    labels.zero_()
    again, again_labels = zoo.task_data("signs", "validation", config)   # alias of "val"
    assert again.max() > 0 and again_labels.max() > 0                   # the cache was not modified
    assert zoo.task_data("signs", "val", config)[0].shape == (20, 3, 32, 32)


def test_unknown_task_and_split():
    with pytest.raises(ParameterError, match="nope"):
        zoo.generate("nope", "train", 4)
    with pytest.raises(ParameterError, match="holdout"):
        zoo.generate("digits", "holdout", 4)


# ----------------------------------------------------------------------------- model

def _model(seed=0, config=zoo.ViTConfig()):
    model = zoo.ViT(config)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()


def test_block_matrices_follow_the_paper_selection():
    config = zoo.ViTConfig()
    state = _model().state_dict()
    selected = [k for k in state if "weight" in k and ("attn" in k or "mlp" in k)]
    expected = {f"blocks.{i}.{name}.weight" for i in range(config.depth)
                for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert set(selected) == expected
    assert all(state[k].ndim == 2 for k in selected)
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * config.width, config.width)
    assert state["blocks.0.mlp.fc1.weight"].shape == (config.mlp_ratio * config.width, config.width)
    for key in ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight", "blocks.0.norm1.weight"):
        assert key in state
    assert zoo.parameter_count(config) == sum(v.numel() for v in state.values())


def test_functional_forward_equals_module_forward():
    model = _model(3)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
    got = zoo.backbone_forward(model.state_dict(), images, zoo.ViTConfig())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    lazy = fmv.load_state(model)                                      # any mapping works
    torch.testing.assert_close(zoo.backbone_forward(lazy, images, zoo.ViTConfig()), expected, rtol=0, atol=1e-6)


def test_functional_forward_of_a_merged_lazy_state():
    pre, a, b = (_model(s).state_dict() for s in (0, 1, 2))
    merged = fmv.merge("task_arithmetic", pre, [a, b], scaling=0.5)
    module = zoo.ViT(zoo.ViTConfig())
    module.load_state_dict({k: merged[k] for k in merged})
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = module.eval()(images)
    torch.testing.assert_close(zoo.backbone_forward(merged, images, zoo.ViTConfig()), expected,
                               rtol=0, atol=1e-6)


def test_functional_forward_names_missing_and_misshapen_keys():
    state = dict(_model().state_dict())
    del state["blocks.1.mlp.fc2.weight"]
    with pytest.raises(MissingKeysError) as info:
        zoo.backbone_forward(state, torch.zeros(1, 3, 32, 32), zoo.ViTConfig(), where="my-state")
    assert "blocks.1.mlp.fc2.weight" in str(info.value) and "my-state" in str(info.value)
    state = dict(_model().state_dict())
    state["norm.bias"] = torch.zeros(7)
    with pytest.raises(FreqMergeError, match="norm.bias"):
        zoo.backbone_forward(state, torch.zeros(1, 3, 32, 32), zoo.ViTConfig())


# ----------------------------------------------------------------------------- the shipped zoo

@pytest.fixture(scope="module")
def shipped():
    return zoo.load()


def test_shipped_zoo_loads_and_matches_its_manifest(shipped):
    manifest = shipped.manifest
    assert shipped.tasks == list(zoo.TASK_NAMES)
    assert manifest["total_bytes"] < 40_000_000
    for name, entry in manifest["files"].items():        # load() verified these; check independently
        import hashlib
        assert hashlib.sha256((shipped.path / name).read_bytes()).hexdigest() == entry["sha256"]
    assert set(shipped.finetuned) == set(shipped.tasks)
    for task in shipped.tasks:
        classes = zoo.get_task(task).num_classes
        assert shipped.heads[task]["weight"].shape == (classes, shipped.config.model.width)
        assert shipped.probe_heads[task]["bias"].shape == (classes,)
        assert shipped.finetuned[task].dtype_of("blocks.0.attn.qkv.weight") == torch.float32
    assert set(shipped.pretrained) == set(shipped.finetuned["digits"])
    assert not any(k.startswith("head") for k in shipped.pretrained)


def test_shipped_zoo_meets_its_quality_bars_but_the_one_the_readme_declares(shipped):
    quality = shipped.manifest["quality"]
    acc = shipped.accuracies
    ft = acc["finetuned"]["test"]
    # Issue #15's bars; the shipped zoo misses the task-arithmetic gain (+6.0 of 8 points), which the
    # README and docs/zoo_research.md state with the search behind it. Any other miss is a regression.
    assert quality["missed"] == ["task_arithmetic_gain"] and not quality["passes"]
    gain = math.floor(1000 * quality["task_arithmetic_gain"] + 0.5) / 10          # points, rounded half up
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"+{gain:.1f} points over the heads" in readme and "missed by" in readme
    assert ft["mean"] >= 0.85 and min(v for k, v in ft.items() if k != "mean") >= 0.70
    assert ft["mean"] - acc["probe"]["test"]["mean"] >= 0.15
    assert ft["mean"] - acc["task_arithmetic"]["test"]["mean"] >= 0.08
    assert acc["task_arithmetic"]["scaling"] in shipped.config.ta_scalings


def test_shipped_finetuned_model_reproduces_manifest_accuracy(shipped):
    task = "textures"                                     # fast to generate
    images, labels = shipped.data(task, "test")
    assert images.shape == (shipped.config.sizes.test, 3, 32, 32)
    acc = shipped.evaluate(shipped.finetuned[task], task, split="test", batch_size=1000)
    counts = shipped.manifest["test_counts"][task]
    assert abs(acc[task] * counts["n"] - counts["correct"]) <= 2   # exact on the build machine
    with torch.no_grad():
        logits = zoo.forward(shipped.finetuned[task], images[:64], task, zoo=shipped)
    assert logits.shape == (64, zoo.get_task(task).num_classes)
    assert (logits.argmax(1) == labels[:64]).float().mean() > 0.5


def test_evaluate_follows_device_and_merged_states(shipped):
    merged = fmv.merge("task_arithmetic", shipped.pretrained, shipped.finetuned_list(), scaling=0.3)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = [shipped.evaluate(merged, ["digits", "signs"], split="val", device=d, limit=100, batch_size=64)
               for d in devices]
    for result in results:
        assert set(result) == {"digits", "signs"} and all(0.0 <= v <= 1.0 for v in result.values())
    if len(results) == 2:
        assert abs(results[0]["digits"] - results[1]["digits"]) <= 0.02
    norm = zoo.normalized_accuracy(results[0], shipped.accuracies["finetuned"]["val"])
    assert norm["mean"] == pytest.approx(np.mean([norm["digits"], norm["signs"]]))


def test_evaluate_rejects_unknown_task_and_bad_batch(shipped):
    with pytest.raises(ParameterError, match="mnist"):
        shipped.evaluate(shipped.pretrained, "mnist")
    with pytest.raises(ParameterError, match="batch_size"):
        shipped.evaluate(shipped.pretrained, "digits", batch_size=0)


# ----------------------------------------------------------------------------- bad zoo directories

@pytest.fixture()
def zoo_copy(tmp_path, shipped):
    target = tmp_path / "zoo"
    shutil.copytree(shipped.path, target)
    return target


def _rewrite_sha(directory, name):
    import hashlib
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_load_missing_file_names_it(zoo_copy):
    (zoo_copy / "finetuned" / "signs.safetensors").unlink()
    with pytest.raises(CheckpointError, match="signs.safetensors") as info:
        zoo.load(zoo_copy)
    assert isinstance(info.value, FreqMergeError)


def test_load_missing_manifest_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="manifest.json"):
        zoo.load(tmp_path)


def test_load_corrupt_file_fails_the_checksum(zoo_copy):
    path = zoo_copy / "heads.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="heads.safetensors.*sha256|sha256.*heads.safetensors"):
        zoo.load(zoo_copy)


def test_load_wrong_key_names_key_and_file(zoo_copy):
    name = "finetuned/counting.safetensors"
    state = {k: v.clone() for k, v in fmv.load_state(zoo_copy / name).items()}
    state["blocks.2.attn.proj.wieght"] = state.pop("blocks.2.attn.proj.weight")
    fmv.save_state(state, zoo_copy / name)
    _rewrite_sha(zoo_copy, name)
    with pytest.raises(MissingKeysError) as info:
        zoo.load(zoo_copy)
    assert "blocks.2.attn.proj.weight" in str(info.value) and "counting.safetensors" in str(info.value)


def test_load_missing_head_names_task_and_file(zoo_copy):
    name = "probe_heads.safetensors"
    state = {k: v.clone() for k, v in fmv.load_state(zoo_copy / name).items() if not k.startswith("vehicles.")}
    fmv.save_state(state, zoo_copy / name)
    _rewrite_sha(zoo_copy, name)
    with pytest.raises(MissingKeysError, match="vehicles.weight") as info:
        zoo.load(zoo_copy)
    assert "probe_heads.safetensors" in str(info.value)


# ----------------------------------------------------------------------------- a tiny build

def test_tiny_build_round_trip(tmp_path):
    config = ZooConfig(tasks=("digits", "signs"), sizes=SplitSizes(train=48, val=24, test=24),
                       pretext_sizes=SplitSizes(train=128, val=64, test=64),
                       model=zoo.ViTConfig(width=16, depth=1, heads=2, mlp_ratio=2),
                       pretrain=TrainConfig(steps=3, batch_size=16, warmup=1),
                       finetune=TrainConfig(steps=2, batch_size=16, warmup=1),
                       probe=ProbeConfig(weight_decays=(1e-3,), max_iter=5), ta_scalings=(0.5,))
    threads = torch.get_num_threads()
    manifest = zoo.build_zoo(tmp_path / "tiny", config, log=lambda message: None)
    assert torch.get_num_threads() == threads                       # restored
    loaded = zoo.load(tmp_path / "tiny")
    assert loaded.config == config and loaded.tasks == ["digits", "signs"]
    assert loaded.manifest == manifest
    acc = loaded.evaluate(loaded.finetuned["signs"], "signs")
    assert acc["signs"] * 24 == pytest.approx(manifest["test_counts"]["signs"]["correct"], abs=0.5)
    assert set(manifest["accuracy"]["task_arithmetic"]["test"]) == {"digits", "signs", "mean"}
    # a rebuild replaces the folder whole; a folder holding other files is refused before any training
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tiny").iterdir()}
    (tmp_path / "tiny" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        zoo.build_zoo(tmp_path / "tiny", config, log=lambda message: pytest.fail(f"trained: {message}"))
    (tmp_path / "tiny" / "notes.txt").unlink()
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tiny").iterdir()} == before
    again = zoo.build_zoo(tmp_path / "tiny", config, log=lambda message: None)
    assert again["files"] == manifest["files"]                                   # byte-identical weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]                # no temporary left behind


def test_tiny_zero_shot_build_takes_heads_from_the_pretraining_classifier(tmp_path):
    from freqmerge_viz.zoo import build

    config = ZooConfig(tasks=("digits", "signs"), sizes=SplitSizes(train=48, val=24, test=24),
                       pretext_sizes=SplitSizes(train=128, val=64, test=64),
                       model=zoo.ViTConfig(width=16, depth=1, heads=2, mlp_ratio=2),
                       pretrain=TrainConfig(steps=3, batch_size=16, warmup=1),
                       finetune=TrainConfig(steps=2, batch_size=16, warmup=1),
                       ta_scalings=(0.5,), pretrain_task_images=20, heads="zero_shot")
    assert build.concept_offsets(config) == {"shapes64": 0, "digits": 64, "signs": 74}
    data = build.generate_data(config)
    images, labels = data.pretrain
    assert images.shape == (128 + 2 * 20, 3, 32, 32) and labels.shape == (168, 3)
    assert sorted(set(labels[128:148, 0].tolist())) == list(range(64, 74))        # digits' concepts
    assert (labels[128:, 1:] == build.IGNORE).all() and (labels[:128, 1:] >= 0).all()
    train = {row.tobytes() for row in data.splits["digits"]["train"][0].numpy()}
    assert not train & {row.tobytes() for row in images[128:148].numpy()}        # a stream of its own
    manifest = zoo.build_zoo(tmp_path / "zs", config, log=lambda message: None)
    loaded = zoo.load(tmp_path / "zs")
    with build._torch_settings(config.threads):                                      # same seeds: same weights
        pretrained = build.pretrain_backbone(config, data, lambda message: None)
    torch.testing.assert_close(loaded.heads["signs"]["weight"], pretrained.classifier["weight"][74:86])
    torch.testing.assert_close(loaded.probe_heads["digits"]["bias"], pretrained.classifier["bias"][64:74])
    assert manifest["pretext"]["concepts"]["count"] == 86 and "zero-shot" in manifest["training"]["heads"]
    assert set(manifest["quality"]) >= {"passes", "missed", "probe_gap", "task_arithmetic_gain"}
    with pytest.raises(ParameterError, match="pretrain_task_images"):
        ZooConfig(heads="zero_shot")


def test_freqmerge_zoo_variable_chooses_the_default_zoo(tmp_path, monkeypatch):
    from freqmerge_viz.errors import CheckpointError
    from freqmerge_viz.zoo import ZOO_ENV, default_zoo_path, load

    monkeypatch.setenv(ZOO_ENV, str(tmp_path / "elsewhere"))
    assert default_zoo_path() == tmp_path / "elsewhere"
    with pytest.raises(CheckpointError, match=r"elsewhere.*manifest\.json.*FREQMERGE_ZOO"):
        load()
    monkeypatch.delenv(ZOO_ENV)
    assert (default_zoo_path() / "manifest.json").is_file()


def test_zoo_show_and_module_entry_point_print_the_manifest_accuracies(shipped):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "freqmerge_viz.zoo", "show"], capture_output=True, text=True,
                         check=True).stdout
    assert "8 tasks" in out and f"{shipped.manifest['model']['backbone_parameters']} parameters" in out
    assert out.count("\n") == 12
