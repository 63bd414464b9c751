"""A merged Hugging Face folder is usable as it is: config, generation and tokenizer files
copied (and recorded, and verified), tied weights kept tied under the pretrained keys.

The folders are written here by hand (no downloads; transformers is not needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.cli import main
from freqmerge_viz.io import load_state, save_state
from freqmerge_viz.merge_job import HF_SIDE_FILES, merge_to_disk, tie_groups, verify_merge

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
SIDE = {
    "generation_config.json": '{"bos_token_id": 1, "eos_token_id": 2}\n',
    "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}\n',
    "tokenizer_config.json": '{"model_max_length": 64}\n',
    "special_tokens_map.json": '{"eos_token": "</s>"}\n',
    "added_tokens.json": '{"<extra>": 16}\n',
    "preprocessor_config.json": '{"do_resize": false}\n',
    "vocab.json": '{"a": 0, "b": 1}\n',
    "merges.txt": "#version: 0.2\na b\n",
    "tokenizer.model": "\x00sentencepiece-bytes\x01",
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights(seed: int, base: dict | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if base is None:
        return {EMBED: torch.randn(16, 8, generator=g), "model.norm.weight": torch.ones(8),
                "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g)}
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}


def hf_folder(folder: Path, state: dict, *, tie: bool = True, head: str = "omit", side: bool = True) -> Path:
    """A model folder as save_pretrained writes one. `head`: omit lm_head (tied, HF's safetensors
    way), "copy" it as a separate tensor, or "share" its storage with the embedding (a .bin)."""
    state = dict(state)
    if head == "copy":
        state[HEAD] = state[EMBED].clone()
    if head == "share":
        state[HEAD] = state[EMBED]
        folder.mkdir()
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_state(state, folder)
    config = {"model_type": "llama", "tie_word_embeddings": tie, "torch_dtype": "float32", "vocab_size": 16}
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    if side:
        for name, text in SIDE.items():
            (folder / name).write_text(text, encoding="latin-1")
    (folder / "README.md").write_text("model card\n")
    (folder / "training_args.bin").write_bytes(b"not copied")
    return folder


@pytest.fixture()
def models(tmp_path):
    pre = weights(0)
    fts = [weights(i, pre) for i in (1, 2)]
    return tmp_path, pre, fts


def test_side_files_are_copied_recorded_and_verified(models, capsys):
    root, pre, fts = models
    pre_dir = hf_folder(root / "pre", pre)
    ft_dirs = [hf_folder(root / f"ft{i}", ft, side=False) for i, ft in enumerate(fts)]
    out = root / "merged"
    record = merge_to_disk("task_arithmetic", pre_dir, ft_dirs, out, parameters={"scaling": 0.5})

    copied = ["config.json", *SIDE]
    assert sorted(p.name for p in out.iterdir()) == sorted([*copied, "model.safetensors", "merge.json"])
    for name in copied:
        assert (out / name).read_bytes() == (pre_dir / name).read_bytes(), name
    assert sorted(record["files"]) == sorted(["model.safetensors", *copied])
    assert {o["path"]: o["sha256"] for o in record["outputs"] if o["path"] != "model.safetensors"} == {
        name: sha(pre_dir / name) for name in copied}
    merged = load_state(out)
    assert list(merged) == list(load_state(pre_dir)) and HEAD not in merged  # the pretrained keys, no more
    expected = pre[EMBED] + 0.5 * ((fts[0][EMBED] - pre[EMBED]) + (fts[1][EMBED] - pre[EMBED]))
    assert torch.allclose(merged[EMBED], expected, atol=1e-6)

    assert all(row["status"] == "ok" for row in verify_merge(out))
    (out / "tokenizer.json").write_text('{"changed": true}\n')
    rows = {Path(r["path"]).name: r["status"] for r in verify_merge(out) if r["role"] == "output"}
    assert rows["tokenizer.json"] == "changed" and rows["config.json"] == "ok"

    # merging again into the same folder replaces it whole, side files included
    record = merge_to_disk("task_arithmetic", pre_dir, ft_dirs, out, dtype="bfloat16")
    assert (out / "tokenizer.json").read_bytes() == (pre_dir / "tokenizer.json").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] is True and config["vocab_size"] == 16
    assert load_state(out).dtype_of(EMBED) == torch.bfloat16
    assert main(["verify", str(out)]) == 0
    assert "files match the record" in capsys.readouterr().out


def test_side_file_patterns_cover_the_tokenizer_files():
    from fnmatch import fnmatch

    for name in ["config.json", *SIDE, "vocab.txt", "spiece.model", "sentencepiece.bpe.model"]:
        assert any(fnmatch(name, pattern) for pattern in HF_SIDE_FILES), name
    for name in ["model.safetensors", "pytorch_model.bin", "README.md", "training_args.bin", "merge.json"]:
        assert not any(fnmatch(name, pattern) for pattern in HF_SIDE_FILES), name


def test_shared_storage_ties_survive_a_random_merge(models):
    """DARE draws its drop masks per key, so lm_head and the embedding would come out
    different if each were merged on its own; the output keeps them one value."""
    root, pre, fts = models
    pre_dir = hf_folder(root / "pre", pre, head="share", tie=False)
    ft_dirs = [hf_folder(root / f"ft{i}", ft, head="share", tie=False) for i, ft in enumerate(fts)]
    assert tie_groups(load_state(pre_dir)) == [[EMBED, HEAD]]

    untied = fmv.merge("dare_linear", pre_dir, ft_dirs, density=0.5, seed=3)
    assert not torch.equal(untied[EMBED], untied[HEAD])

    out = root / "merged"
    record = merge_to_disk("dare_linear", pre_dir, ft_dirs, out, parameters={"density": 0.5, "seed": 3})
    merged = load_state(out)
    assert sorted(merged) == sorted(load_state(pre_dir))
    assert torch.equal(merged[HEAD], merged[EMBED]) and torch.equal(merged[EMBED], untied[EMBED])
    assert record["ties"] == {"groups": [[EMBED, HEAD]], "left_out": {}}
    assert not torch.equal(merged[EMBED], pre[EMBED])


def test_config_ties_separately_stored_embeddings(models):
    root, pre, fts = models
    pre_dir = hf_folder(root / "pre", pre, head="copy")
    ft_dirs = [hf_folder(root / f"ft{i}", ft, head="copy") for i, ft in enumerate(fts)]
    merge_to_disk("dare_linear", pre_dir, ft_dirs, root / "merged", parameters={"density": 0.5})
    merged = load_state(root / "merged")
    assert torch.equal(merged[HEAD], merged[EMBED]) and HEAD in merged
    untied_dir = hf_folder(root / "pre_untied", pre, head="copy", tie=False)
    merge_to_disk("dare_linear", untied_dir, ft_dirs, root / "untied", parameters={"density": 0.5})
    untied = load_state(root / "untied")
    assert not torch.equal(untied[HEAD], untied[EMBED])  # untied weights stay independent


def test_a_finetuned_tied_copy_the_pretrained_omits_is_left_out(models):
    root, pre, fts = models
    pre_dir = hf_folder(root / "pre", pre)                                   # lm_head omitted
    ft_dirs = [hf_folder(root / f"ft{i}", ft, head="share") for i, ft in enumerate(fts)]  # lm_head stored
    record = merge_to_disk("ties", pre_dir, ft_dirs, root / "merged", parameters={"density": 0.5})
    assert HEAD not in load_state(root / "merged")
    assert record["ties"]["left_out"] == {"finetuned[0]": [HEAD], "finetuned[1]": [HEAD]}


def test_routed_merge_gives_each_task_folder_its_side_files_and_ties(models):
    root, pre, fts = models
    pre_dir = hf_folder(root / "pre", pre, head="copy")
    ft_dirs = [hf_folder(root / f"ft{i}", ft, head="copy", side=False) for i, ft in enumerate(fts)]
    record = merge_to_disk("emr", pre_dir, ft_dirs, root / "routed")
    tasks = sorted(p for p in (root / "routed").iterdir() if p.is_dir())
    assert len(tasks) == 2
    for task in tasks:
        assert (task / "tokenizer.model").read_bytes() == (pre_dir / "tokenizer.model").read_bytes()
        state = load_state(task)
        assert torch.equal(state[HEAD], state[EMBED])
        assert f"{task.name}/config.json" in record["files"]
    assert all(row["status"] == "ok" for row in verify_merge(root / "routed"))
