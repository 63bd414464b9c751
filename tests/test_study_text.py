"""The transformers study kinds (hf_classification, causal_lm) on tiny models built here
(tests/text_support.py: nothing downloaded): loading, numbers equal to a plain model.eval()
loop, tied embeddings, features, and every study-file error raised before any model runs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("transformers")

from freqmerge_viz.backend import torch_threads  # noqa: E402
from freqmerge_viz.errors import StudySpecError  # noqa: E402
from freqmerge_viz.io import load_state, save_state  # noqa: E402
from freqmerge_viz.study import evaluate_on_study, kind_table, load_study  # noqa: E402
from freqmerge_viz.taskvector import TaskVector  # noqa: E402
from text_support import (BLOCK_SIZE, CAUSAL_TASKS, CLASSIFICATION_TASKS, MAX_LENGTH, TOPIC_LABEL2ID,  # noqa: E402
                          make_text_study, write_yaml)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one torch thread is faster than two on a busy 2-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def cls_path(tmp_path_factory) -> Path:
    return make_text_study(tmp_path_factory.mktemp("text-cls"), "hf_classification")


@pytest.fixture(scope="session")
def lm_path(tmp_path_factory) -> Path:
    return make_text_study(tmp_path_factory.mktemp("text-lm"), "causal_lm")


@pytest.fixture(scope="session")
def cls_study(cls_path):
    return load_study(cls_path)


@pytest.fixture(scope="session")
def lm_study(lm_path):
    return load_study(lm_path)


@pytest.fixture()
def no_forward(monkeypatch):
    """Any module call (a model forward) fails the test."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a forward of {type(self).__name__} ran while opening the study")

    monkeypatch.setattr(torch.nn.Module, "__call__", refuse)


def variant(path: Path, target: Path, **changes) -> Path:
    """The study file `path` with fields changed (``None`` removes one), written at `target`
    (in the same folder, so relative paths still resolve)."""
    fields = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return write_yaml(target, fields)


# ----------------------------------------------------------------------------- hf_classification

def test_classification_study_loads(cls_study, cls_path):
    study = cls_study
    assert (study.kind, study.unit, study.metric, study.default_limit) == ("hf_classification", "texts", "accuracy", 64)
    assert study.tasks == list(CLASSIFICATION_TASKS) and study.name == "tiny-bert"
    keys = study.backbone_keys()
    assert keys and all(k.startswith("bert.") for k in keys) and "bert.pooler.dense.weight" in keys
    # pretrained is a base BertModel (keys without "bert."): read under the prefixed names
    assert "embeddings.word_embeddings.weight" in load_state(cls_path.parent / "models" / "pretrained")
    assert list(study.pretrained) == keys
    for task in study.tasks:
        assert list(study.finetuned[task]) == keys
        assert sorted(study.head(task)) == ["classifier.bias", "classifier.weight"]
    assert [study.num_classes(t) for t in study.tasks] == [3, 2, 2]
    # class names: the topic config's label2id, integer labels, sorted names
    assert study.classes == {"topic": ["sport", "animals", "food"], "sentiment": ["0", "1"], "pairs": ["no", "yes"]}
    inputs, labels = study.data("topic", "test")
    assert inputs.dtype == torch.long and inputs.shape[:2] == (40, 3) and inputs.shape[2] <= MAX_LENGTH
    assert study.channels == ("input_ids", "attention_mask", "token_type_ids")
    rows = [json.loads(line) for line in (cls_path.parent / "data" / "topic" / "test.jsonl").read_text().splitlines()]
    assert labels.tolist() == [TOPIC_LABEL2ID[r["category"]] for r in rows]
    pairs = study.data("pairs", "val")[0]
    assert bool((pairs[:, 2] == 1).any())  # token type ids of the second texts
    assert study.data("topic", "test")[0] is inputs  # cached
    origins = study.origins
    assert str(cls_path.parent / "data" / "topic" / "val.jsonl") in origins
    assert any(o.endswith("models/sentiment/model.safetensors") for o in origins)
    # task vectors (what every analysis merges) are made of the backbones alone
    vector = TaskVector.from_states(study.pretrained, study.finetuned["topic"])
    assert sorted(vector.keys()) == sorted(keys)
    assert "3 tasks" in study.describe()


def _reference_classification(folder: Path, tokenizer_folder: Path, state, texts, pairs, labels):
    """Loss and accuracy of `state`'s backbone with the head of the fine-tuned model in
    `folder`, by transformers' own model in eval mode on texts tokenised here."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    result = model.load_state_dict({k: state[k].float() for k in state}, strict=False)
    assert not result.unexpected_keys
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
    args = (texts,) if pairs is None else (texts, pairs)
    batch = tokenizer(*args, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    target = torch.tensor(labels)
    return float(F.cross_entropy(logits, target)), float((logits.argmax(-1) == target).double().mean())


def _rows(cls_path: Path, task: str, split: str = "test") -> list[dict]:
    folder = cls_path.parent / "data" / task
    if task == "topic":
        return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
    import pandas as pd

    return pd.read_csv(folder / f"{split}.csv", keep_default_na=False).to_dict("records")


def test_classification_numbers_equal_a_plain_eval_loop(cls_study, cls_path):
    study = cls_study
    states = [study.pretrained] + [study.finetuned[t] for t in study.tasks]
    table = evaluate_on_study(study, states, split="test", mode="vmap")
    looped = evaluate_on_study(study, states, ["sentiment"], split="test", mode="loop")
    root = cls_path.parent
    for task in study.tasks:
        rows = _rows(cls_path, task)
        if task == "topic":
            texts, pairs, labels = [r["sentence"] for r in rows], None, [TOPIC_LABEL2ID[r["category"]] for r in rows]
        elif task == "sentiment":
            texts, pairs, labels = [r["text"] for r in rows], None, [int(r["label"]) for r in rows]
        else:
            texts, pairs = [r["text"] for r in rows], [r["text2"] for r in rows]
            labels = [("no", "yes").index(r["label"]) for r in rows]
        for i, state in enumerate(states):
            loss, accuracy = _reference_classification(root / "models" / task, root / "models" / "pretrained", state,
                                                       texts, pairs, labels)
            row = table[(table.task == task) & (table.state == i)].iloc[0]
            assert row.loss == pytest.approx(loss, abs=1e-5), (task, i)
            assert row.accuracy == pytest.approx(accuracy, abs=1e-9), (task, i)
    fine = table[table.state == table.task.map({t: i + 1 for i, t in enumerate(study.tasks)})]
    assert fine.set_index("task").loc["sentiment", "accuracy"] > 0.8  # the fine-tuned models learned something
    assert looped.loss.tolist() == pytest.approx(table[table.task == "sentiment"].loss.tolist(), abs=1e-5)
    # a merged backbone (task arithmetic, in memory) is scored with each task's own head
    merged = {k: study.pretrained[k] + 0.5 * sum(study.finetuned[t][k] - study.pretrained[k] for t in study.tasks)
              for k in study.backbone_keys()}
    scores = study.task_accuracies(merged, limit=16)
    assert set(scores) == set(study.tasks) and all(0.0 <= v <= 1.0 for v in scores.values())
    one = study.forward(study.finetuned["topic"], study.data("topic", "test")[0][:5], "topic")
    assert one.shape == (5, 3)


def test_classification_legacy_names_and_a_pooler_per_task(cls_study, cls_path, tmp_path):
    """A pretrained checkpoint with the original BERT's ``gamma``/``beta`` layer-norm names and
    no pooler: read under the module's names; the pooler then comes with each task's head."""
    root = cls_path.parent
    old = tmp_path / "old-bert"
    shutil.copytree(root / "models" / "pretrained", old)
    state = load_state(old)
    tensors = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): state[k]
               for k in state if not k.startswith("pooler.")}
    (old / "model.safetensors").unlink()
    save_state(tensors, old / "model.safetensors")
    study = load_study(variant(cls_path, root / "legacy.yaml", pretrained=str(old)))
    assert "bert.pooler.dense.weight" not in study.backbone_keys()
    assert set(study.backbone_keys()) == set(cls_study.backbone_keys()) - {"bert.pooler.dense.weight",
                                                                             "bert.pooler.dense.bias"}
    assert "bert.pooler.dense.weight" in study.head("topic") and "bert.embeddings.LayerNorm.weight" in study.pretrained
    table = evaluate_on_study(study, [study.pretrained, study.finetuned["topic"]], ["topic"])
    reference = evaluate_on_study(cls_study, [cls_study.pretrained, cls_study.finetuned["topic"]], ["topic"])
    assert table.loss[1] == pytest.approx(reference.loss[1], abs=1e-6)  # the fine-tuned model, unchanged
    rows = _rows(cls_path, "topic")
    loss, _ = _reference_classification(root / "models" / "topic", old, study.pretrained,
                                        [r["sentence"] for r in rows], None,
                                        [TOPIC_LABEL2ID[r["category"]] for r in rows])
    assert table.loss[0] == pytest.approx(loss, abs=1e-5)  # pretrained encoder, the task's pooler and classifier


def test_classification_features(cls_study):
    inputs = cls_study.data("sentiment", "val")[0]
    features = cls_study.features(inputs)
    assert cls_study.has_features and features.shape == (24, 32) and torch.isfinite(features).all()
    # masked mean: padding does not change a text's features
    padded = torch.cat([inputs, torch.zeros_like(inputs[:, :, :3])], dim=2)
    padded[:, 0, -3:] = cls_study.pad_id
    assert torch.allclose(cls_study.features(padded), features, atol=1e-5)


# ----------------------------------------------------------------------------- causal_lm

def _windows(tokenizer, files: list[Path]) -> list[int]:
    stream = []
    for file in files:
        stream += tokenizer(file.read_text())["input_ids"] + [tokenizer.eos_token_id]
    return stream


def test_causal_study_loads_and_cuts_windows(lm_study, lm_path):
    from transformers import AutoTokenizer

    study = lm_study
    assert (study.kind, study.unit, study.metric) == ("causal_lm", "token windows", "next-token accuracy")
    keys = study.backbone_keys()
    # tied embeddings: one name (the token embedding) for the tied pair
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys and len(keys) == 28
    assert list(study.pretrained) == keys and all(list(study.finetuned[t]) == keys for t in study.tasks)
    tokenizer = AutoTokenizer.from_pretrained(lm_path.parent / "models" / "pretrained", local_files_only=True)
    folder = lm_path.parent / "data" / "animals"
    stream = _windows(tokenizer, [folder / "test" / "part1.txt", folder / "test" / "part2.txt"])
    inputs, labels = study.data("animals", "test")
    assert inputs.shape == (math.ceil(len(stream) / BLOCK_SIZE), BLOCK_SIZE) == labels.shape
    assert inputs.reshape(-1)[:len(stream)].tolist() == stream
    assert (labels[:, -1] == -100).all()
    assert labels[:, :-1].reshape(-1)[:10].tolist() == inputs[:, 1:].reshape(-1)[:10].tolist()
    scored = int((labels != -100).sum())
    assert scored == len(stream) - len(inputs)  # every token but each window's first has a label


def test_causal_numbers_equal_a_plain_eval_loop(lm_study, lm_path):
    from transformers import AutoModelForCausalLM

    study = lm_study
    states = [study.pretrained] + [study.finetuned[t] for t in study.tasks]
    table = evaluate_on_study(study, states, split="test", mode="vmap")
    model = AutoModelForCausalLM.from_pretrained(lm_path.parent / "models" / "pretrained", local_files_only=True).eval()
    for task in study.tasks:
        inputs, labels = study.data(task, "test")
        for i, state in enumerate(states):
            model.load_state_dict({k: state[k].float() for k in state}, strict=False)
            assert model.lm_head.weight is model.transformer.wte.weight
            # transformers' own loss: labels = inputs with padding ignored (it shifts them itself)
            target = torch.where(torch.cat([torch.ones_like(labels[:, :1], dtype=torch.bool), labels[:, :-1] != -100],
                                           1), inputs, torch.full_like(inputs, -100))
            with torch.no_grad():
                out = model(input_ids=inputs, labels=target)
            predicted = out.logits[:, :-1].argmax(-1)
            scored = target[:, 1:] != -100
            accuracy = float((predicted == target[:, 1:])[scored].double().mean())
            row = table[(table.task == task) & (table.state == i)].iloc[0]
            assert row.loss == pytest.approx(float(out.loss), abs=1e-5), (task, i)
            assert row.accuracy == pytest.approx(accuracy, abs=1e-9), (task, i)
    own = [table[(table.task == t) & (table.state == i + 1)].loss.item() for i, t in enumerate(study.tasks)]
    others = [table[(table.task == t) & (table.state != i + 1) & (table.state > 0)].loss.mean()
              for i, t in enumerate(study.tasks)]
    assert sum(own) < sum(others)  # each domain's model is best on its own domain, on average
    features = study.features(study.data("food", "val")[0])
    assert features.shape[1] == 32 and torch.isfinite(features).all()


def test_causal_tied_and_unprefixed_checkpoints(lm_study, lm_path, tmp_path):
    """A checkpoint holding lm_head.weight beside the embedding, and one saved without the
    ``transformer.`` prefix (as the original gpt2 is), give the same keys and numbers."""
    root = lm_path.parent
    both = tmp_path / "both"
    shutil.copytree(root / "models" / "food", both)
    state = load_state(both)
    tensors = {k: state[k] for k in state}
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    (both / "model.safetensors").unlink()
    save_state(tensors, both / "model.safetensors")
    bare = tmp_path / "bare"
    shutil.copytree(root / "models" / "pretrained", bare)
    pre = load_state(bare)
    tensors = {k.removeprefix("transformer."): pre[k] for k in pre}
    (bare / "model.safetensors").unlink()
    save_state(tensors, bare / "model.safetensors")
    path = variant(lm_path, root / "tied.yaml", pretrained=str(bare),
                   finetuned={"food": str(both), "sport": "models/sport"}, data={"food": "data/food",
                                                                                  "sport": "data/sport"})
    study = load_study(path)
    assert study.backbone_keys() == lm_study.backbone_keys()
    assert study.pretrained.source_of("transformer.wte.weight").endswith("bare/model.safetensors")
    table = evaluate_on_study(study, [study.pretrained, study.finetuned["food"]], ["food"], limit=8)
    reference = evaluate_on_study(lm_study, [lm_study.pretrained, lm_study.finetuned["food"]], ["food"], limit=8)
    assert table.loss.tolist() == pytest.approx(reference.loss.tolist(), abs=1e-6)


# ----------------------------------------------------------------------------- errors, before any forward

def _check_error(path: Path, field: str, *words: str) -> StudySpecError:
    with pytest.raises(StudySpecError) as caught:
        load_study(path)
    error = caught.value
    assert error.field == field, str(error)
    assert str(path) in str(error) and f"field {field!r}" in str(error)
    for word in words:
        assert word in str(error), str(error)
    return error


def test_classification_errors_name_file_and_field(cls_path, lm_path, no_forward):
    root = cls_path.parent
    finetuned = {t: f"models/{t}" for t in CLASSIFICATION_TASKS}
    _check_error(variant(cls_path, root / "e1.yaml", finetuned={**finetuned, "topic": "models/absent"}),
                 "finetuned.topic", "does not exist")
    data = yaml.safe_load(cls_path.read_text())["data"]
    _check_error(variant(cls_path, root / "e2.yaml", data={**data, "sentiment": {"val": "data/sentiment/val.csv"}}),
                 "data.sentiment.test", "missing split")
    _check_error(variant(cls_path, root / "e3.yaml", data={**data, "sentiment": {**data["sentiment"], "train": "x"}}),
                 "data.sentiment.train", "unknown split")
    # class count: three classes of data on the two-class sentiment head
    three = root / "data" / "three"
    three.mkdir(exist_ok=True)
    for split in ("val", "test"):
        text = (root / "data" / "sentiment" / f"{split}.csv").read_text()
        (three / f"{split}.csv").write_text(text.rstrip("\n").rsplit("\n", 1)[0] + "\ngood cat,2\n")
    _check_error(variant(cls_path, root / "e4.yaml", data={**data, "sentiment": "data/three"}),
                 "data.sentiment", "3 classes", "2 outputs")
    _check_error(variant(cls_path, root / "e5.yaml", labels={"pairs": ["no", "yes", "maybe"]}),
                 "labels.pairs", "3 classes", "2 outputs")
    # checkpoints of another architecture: a GPT-2, and a BERT of another width
    gpt = lm_path.parent / "models" / "food"
    _check_error(variant(cls_path, root / "e6.yaml", finetuned={**finetuned, "pairs": str(gpt)}),
                 "finetuned.pairs", "another architecture")
    wide = root / "models" / "wide"
    if not wide.exists():
        from transformers import BertConfig, BertForSequenceClassification

        config = json.loads((root / "models" / "sentiment" / "config.json").read_text())
        config = BertConfig(**{**config, "hidden_size": 48, "intermediate_size": 64})
        BertForSequenceClassification(config).save_pretrained(wide)
    _check_error(variant(cls_path, root / "e7.yaml", finetuned={**finetuned, "sentiment": str(wide)}),
                 "finetuned.sentiment", "another architecture", "bert.embeddings")
    _check_error(variant(cls_path, root / "e8.yaml", max_lenght=8), "max_lenght", "unknown field")
    _check_error(variant(cls_path, root / "e9.yaml", text_column="body"), "data.topic.val", "no column 'body'")
    _check_error(variant(cls_path, root / "e10.yaml", max_length=100), "max_length", "positions")
    _check_error(variant(cls_path, root / "e11.yaml", data={**data, "extra": "data/topic"}), "data.extra",
                 "not a task")
    _check_error(variant(cls_path, root / "e12.yaml", pretrained="data"), "pretrained", "no config.json")


def test_causal_errors_name_file_and_field(lm_path, cls_path, no_forward):
    root = lm_path.parent
    finetuned = {t: f"models/{t}" for t in CAUSAL_TASKS}
    data = yaml.safe_load(lm_path.read_text())["data"]
    _check_error(variant(lm_path, root / "e1.yaml", data={**data, "food": "data/nowhere"}), "data.food",
                 "does not exist")
    (root / "data" / "half").mkdir(exist_ok=True)
    (root / "data" / "half" / "val.txt").write_text("the cat .")
    _check_error(variant(lm_path, root / "e2.yaml", data={**data, "food": "data/half"}), "data.food.test",
                 "missing split")
    (root / "data" / "blank").mkdir(exist_ok=True)
    (root / "data" / "blank" / "val.txt").write_text("  \n")
    (root / "data" / "blank" / "test.txt").write_text("the cat .")
    _check_error(variant(lm_path, root / "e3.yaml", data={**data, "food": "data/blank"}), "data.food.val",
                 "no text")
    bert = cls_path.parent / "models" / "topic"
    _check_error(variant(lm_path, root / "e4.yaml", finetuned={**finetuned, "sport": str(bert)}),
                 "finetuned.sport", "another architecture")
    _check_error(variant(lm_path, root / "e5.yaml", block_size=65), "block_size", "positions")
    _check_error(variant(lm_path, root / "e6.yaml", max_length=8), "max_length", "unknown field")
    _check_error(variant(lm_path, root / "e7.yaml", tokenizer=str(cls_path.parent / "data")), "tokenizer",
                 "cannot load a tokenizer")


def test_without_transformers(cls_path, monkeypatch):
    """The module imports without transformers; a study of its kinds says what to install."""
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from freqmerge_viz.study import kind_table\n"
            "import freqmerge_viz.study.text\n"
            "assert 'kind: causal_lm' in kind_table() and 'freqmerge-viz[transformers]' in kind_table()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    monkeypatch.setitem(sys.modules, "transformers", None)
    _check_error(cls_path, "kind", "pip install freqmerge-viz[transformers]")


def test_kind_table_documents_both_kinds():
    table = kind_table()
    for kind in ("hf_classification", "causal_lm"):
        assert f"**`kind: {kind}`**" in table
    for field in ("max_length", "block_size", "text_column", "label_column", "pair_column"):
        assert f"| `{field}` |" in table
