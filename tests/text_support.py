"""Tiny transformers studies built on the spot, with nothing downloaded: a word-level tokenizer
trained (``tokenizers``) on generated text, a 2-layer BERT (``hidden_size=32``) fine-tuned for a
few steps on three generated classification tasks of 3, 2 and 2 classes, and a 2-layer GPT-2
(``n_embd=32``) trained a few steps on three generated text domains; data files (JSONL, CSV,
.txt) and the study YAML written beside them.

:func:`make_text_study` writes one study and returns its YAML path. The models are trained once
per process (a few seconds on 2 cores, in one torch thread) and written again for each call.

Layout under ``root = tmp_path / kind`` (``root`` is the YAML's folder)::

    study.yaml
    models/pretrained/          pretrained folder (classification: a base BertModel, keys without ``bert.``)
    models/<task>/              fine-tuned folders (config, model.safetensors, tokenizer files)
    data/<task>/...             classification: topic/{val,test}.jsonl (columns sentence, category),
                                sentiment/{val,test}.csv (text, label: 0/1), pairs/{val,test}.csv
                                (text, text2, label: yes/no); causal: <task>/val.txt and
                                <task>/test/{part1,part2}.txt
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import torch
import yaml

from freqmerge_viz.backend import torch_threads

WORDS = {
    "animals": ["cat", "dog", "horse", "cow", "bird", "fish", "sheep", "goat"],
    "food": ["bread", "apple", "rice", "soup", "cake", "cheese", "pear", "bean"],
    "sport": ["ball", "goal", "race", "match", "team", "score", "coach", "track"],
}
MOODS = {"positive": ["good", "great", "happy", "nice", "lovely"], "negative": ["bad", "awful", "sad", "poor",
                                                                              "grim"]}
FILLERS = ["the", "a", "is", "was", "very", "and", "on", "with", "my", "this"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]

CLASSIFICATION_TASKS = ("topic", "sentiment", "pairs")
TOPIC_LABEL2ID = {"sport": 0, "animals": 1, "food": 2}
"""The topic model's config label2id (not sorted: the study must map names through it)."""
CAUSAL_TASKS = ("animals", "food", "sport")
MAX_LENGTH = 24
BLOCK_SIZE = 16
SIZES = {"train": 96, "val": 24, "test": 40}


# ----------------------------------------------------------------------------- generated text

def _sentence(rng: random.Random, topic: str, mood: str | None = None, length: int = 5) -> str:
    words = [rng.choice(WORDS[topic]) for _ in range(length - 2)] + [rng.choice(FILLERS)]
    if mood is not None:
        words.append(rng.choice(MOODS[mood]))
    else:
        words.append(rng.choice(FILLERS))
    rng.shuffle(words)
    return " ".join(words)


def classification_rows(task: str, split: str) -> list[dict]:
    """The generated rows of `task`'s `split` (deterministic)."""
    rng = random.Random(f"{task}:{split}")
    rows = []
    for _ in range(SIZES[split]):
        topic = rng.choice(sorted(WORDS))
        if task == "topic":
            rows.append({"sentence": _sentence(rng, topic), "category": topic})
        elif task == "sentiment":
            label = rng.randrange(2)
            rows.append({"text": _sentence(rng, topic, ("negative", "positive")[label]), "label": label})
        else:
            same = rng.randrange(2)
            other = topic if same else rng.choice([t for t in sorted(WORDS) if t != topic])
            rows.append({"text": _sentence(rng, topic), "text2": _sentence(rng, other), "label": ("no", "yes")[same]})
    return rows


def domain_text(domain: str, part: str, sentences: int = 12) -> str:
    """Generated text of a domain: sentences following a fixed pattern, so a tiny LM learns some of it."""
    rng = random.Random(f"{domain}:{part}")
    words = WORDS[domain]
    lines = []
    for _ in range(sentences):
        i = rng.randrange(len(words))
        lines.append(f"the {words[i]} and the {words[(i + 1) % len(words)]} is {rng.choice(FILLERS)} "
                     f"{words[(i + 2) % len(words)]}")
    return " . ".join(lines) + " ."


# ----------------------------------------------------------------------------- tokenizer

def tokenizer_for(texts, *, pair_template: bool):
    """A word-level ``PreTrainedTokenizerFast`` trained on `texts` ([CLS] ... [SEP] templates
    and token type ids with `pair_template`, for BERT; plain ids for GPT-2)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(texts), trainers.WordLevelTrainer(special_tokens=SPECIALS))
    names = ["input_ids", "attention_mask"]
    if pair_template:
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        names = ["input_ids", "token_type_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", eos_token="[EOS]", model_input_names=names,
                                   model_max_length=64)


def _all_text() -> list[str]:
    texts = [" ".join(words) for words in [*WORDS.values(), *MOODS.values(), FILLERS]] + [". ."]
    return texts * 3


# ----------------------------------------------------------------------------- models

def _quiet() -> None:
    """transformers' progress bars and warnings off (training these models triggers a few)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _train(model, batches, steps: int, lr: float = 3e-3) -> None:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@functools.lru_cache(maxsize=None)
@torch_threads(1)
def classification_assets():
    """``(tokenizer, pretrained BertModel, {task: BertForSequenceClassification})``, trained once."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    _quiet()
    torch.manual_seed(0)
    tokenizer = tokenizer_for(_all_text(), pair_template=True)
    base = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)
    pretrained = BertModel(BertConfig(**base)).eval()
    models = {}
    for task in CLASSIFICATION_TASKS:
        rows = classification_rows(task, "train")
        if task == "topic":
            id2label = {i: n for n, i in TOPIC_LABEL2ID.items()}
            config = BertConfig(**base, id2label=id2label, label2id=dict(TOPIC_LABEL2ID))
            texts, pairs, labels = [r["sentence"] for r in rows], None, [TOPIC_LABEL2ID[r["category"]] for r in rows]
        elif task == "sentiment":
            config = BertConfig(**base, num_labels=2)
            texts, pairs, labels = [r["text"] for r in rows], None, [r["label"] for r in rows]
        else:
            config = BertConfig(**base, num_labels=2)
            texts, pairs = [r["text"] for r in rows], [r["text2"] for r in rows]
            labels = [("no", "yes").index(r["label"]) for r in rows]
        torch.manual_seed(len(task))
        model = BertForSequenceClassification(config)
        model.bert.load_state_dict(pretrained.state_dict())
        batches = []
        for start in range(0, len(texts), 32):
            args = (texts[start:start + 32],) + ((pairs[start:start + 32],) if pairs else ())
            batch = dict(tokenizer(*args, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
            batch["labels"] = torch.tensor(labels[start:start + 32])
            batches.append(batch)
        _train(model, batches, steps=24)
        models[task] = model
    return tokenizer, pretrained, models


@functools.lru_cache(maxsize=None)
@torch_threads(1)
def causal_assets():
    """``(tokenizer, pretrained GPT2LMHeadModel, {task: GPT2LMHeadModel})``, trained once."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _quiet()
    torch.manual_seed(1)
    tokenizer = tokenizer_for(_all_text(), pair_template=False)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    def batches(text: str) -> list[dict]:
        ids = tokenizer(text)["input_ids"]
        windows = torch.tensor(ids[:len(ids) // BLOCK_SIZE * BLOCK_SIZE]).view(-1, BLOCK_SIZE)
        return [{"input_ids": windows[i:i + 8], "labels": windows[i:i + 8]} for i in range(0, len(windows), 8)]

    pretrained = GPT2LMHeadModel(config)
    _train(pretrained, batches(" ".join(domain_text(d, "train", 6) for d in CAUSAL_TASKS)), steps=12)
    models = {}
    for task in CAUSAL_TASKS:
        model = GPT2LMHeadModel(config)
        model.load_state_dict(pretrained.state_dict())
        _train(model, batches(domain_text(task, "train", 24)), steps=12)
        models[task] = model
    return tokenizer, pretrained, models


# ----------------------------------------------------------------------------- files

def save_model(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False)


def write_yaml(path: Path, fields: dict) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False), encoding="utf-8")
    return path


def make_text_study(tmp_path, kind: str = "hf_classification", *, tasks=None, limit: int | None = None,
                    name: str | None = None, **fields) -> Path:
    """Write a tiny transformers study of `kind` (``"hf_classification"`` or ``"causal_lm"``)
    under ``tmp_path / kind`` and return its YAML path.

    `tasks`: a subset of :data:`CLASSIFICATION_TASKS` / :data:`CAUSAL_TASKS` (default: all
    three); `limit` and `name` set those fields; other keyword arguments replace YAML fields
    (``None`` removes one), e.g. ``max_length=8``.
    """
    root = Path(tmp_path) / kind
    (root / "models").mkdir(parents=True, exist_ok=True)
    if kind == "hf_classification":
        tokenizer, pretrained, models = classification_assets()
        tasks = list(tasks or CLASSIFICATION_TASKS)
        for task in tasks:
            for split in ("val", "test"):
                suffix = ".jsonl" if task == "topic" else ".csv"
                _write_rows(root / "data" / task / f"{split}{suffix}", classification_rows(task, split))
        data = {t: (f"data/{t}" if t == "topic" else {s: f"data/{t}/{s}.csv" for s in ("val", "test")})
                for t in tasks}
        spec = {"kind": kind, "name": name or "tiny-bert", "pretrained": "models/pretrained",
                "finetuned": {t: f"models/{t}" for t in tasks}, "data": data}
        if "topic" in tasks:
            spec["text_column"] = {"topic": "sentence"}
            spec["label_column"] = {"topic": "category"}
        if "pairs" in tasks:
            spec["pair_column"] = {"pairs": "text2"}
        spec["max_length"] = MAX_LENGTH
    elif kind == "causal_lm":
        tokenizer, pretrained, models = causal_assets()
        tasks = list(tasks or CAUSAL_TASKS)
        for task in tasks:
            folder = root / "data" / task
            (folder / "test").mkdir(parents=True, exist_ok=True)
            (folder / "val.txt").write_text(domain_text(task, "val"), encoding="utf-8")
            for part in ("part1", "part2"):
                (folder / "test" / f"{part}.txt").write_text(domain_text(task, part), encoding="utf-8")
        spec = {"kind": kind, "name": name or "tiny-gpt2", "pretrained": "models/pretrained",
                "finetuned": {t: f"models/{t}" for t in tasks},
                "data": {t: (f"data/{t}" if i % 2 == 0 else {"val": f"data/{t}/val.txt", "test": f"data/{t}/test"})
                         for i, t in enumerate(tasks)},
                "block_size": BLOCK_SIZE}
    else:
        raise ValueError(f"kind must be 'hf_classification' or 'causal_lm', got {kind!r}")
    if not (root / "models" / "pretrained" / "config.json").is_file():
        save_model(pretrained, tokenizer, root / "models" / "pretrained")
    for task in tasks:
        if not (root / "models" / task / "config.json").is_file():
            save_model(models[task], tokenizer, root / "models" / task)
    if limit is not None:
        spec["limit"] = limit
    for key, value in fields.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return write_yaml(root / "study.yaml", spec)
