from __future__ import annotations

import json
import os
import struct

import pytest
import safetensors.torch
import torch

import freqmerge_viz.io

from freqmerge_viz.errors import CheckpointError, MissingKeysError, OutputError, ParameterError
from freqmerge_viz.io import LazyState, load_state, parse_size, save_state


def mixed_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.tensor([-(2**40), 0, 7, 2**62]),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 4),
    }


def assert_same(actual, expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        got = actual[key]
        assert got.dtype == tensor.dtype, key
        assert got.shape == tensor.shape, key
        assert torch.equal(got, tensor), key


def test_round_trip_preserves_values_and_dtypes(tmp_path):
    original = mixed_state()
    written = save_state(original, tmp_path / "one.safetensors")
    assert written == [tmp_path / "one.safetensors"]
    loaded = load_state(tmp_path / "one.safetensors")
    assert isinstance(loaded, LazyState)
    assert_same(loaded, original)
    assert loaded["scalar"].shape == () and loaded["scalar"].item() == 3.25
    assert loaded.metadata["format"] == "pt"


def test_reader_agrees_with_safetensors_library(tmp_path):
    original = mixed_state()
    file = tmp_path / "ref.safetensors"
    safetensors.torch.save_file(original, file, metadata={"who": "test"})
    reference = safetensors.torch.load_file(file)
    ours = load_state(str(file))
    assert list(ours) == sorted(reference)
    assert_same(ours, reference)
    for key, tensor in reference.items():
        assert ours.shape_of(key) == tuple(tensor.shape)
        assert ours.dtype_of(key) == tensor.dtype
        assert ours.source_of(key) == str(file)
    assert ours.metadata == {"who": "test"}


def test_reads_are_lazy_and_exact(tmp_path):
    tensors = {f"big{i}": torch.full((256, 256), float(i)) for i in range(4)}
    tensors["small"] = torch.arange(8.0).reshape(1, 8)
    file = tmp_path / "lazy.safetensors"
    safetensors.torch.save_file(tensors, file)
    state = load_state(file)
    assert state.bytes_read == 0
    assert state.shape_of("big2") == (256, 256) and state.dtype_of("big2") == torch.float32
    assert "big3" in state and len(state) == 5
    assert state.bytes_read == 0
    assert torch.equal(state["small"], tensors["small"])
    assert state.bytes_read == 32
    assert torch.equal(state["big1"], tensors["big1"])
    assert state.bytes_read == 32 + 256 * 256 * 4


def test_sharded_save_and_load(tmp_path):
    tensors = {f"layer{i}.weight": torch.full((10, 10), float(i)) for i in range(6)}
    tensors["huge"] = torch.arange(200.0)
    limit = 900  # each 10x10 float32 is 400 bytes -> two per shard; "huge" is 800 bytes
    written = save_state(tensors, tmp_path / "ckpt", max_shard_size=limit)
    names = [p.name for p in written]
    assert names[-1] == "model.safetensors.index.json"
    shards = names[:-1]
    assert len(shards) >= 3
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all((tmp_path / "ckpt" / n).is_file() for n in names)
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 400 + 800
    assert set(index["weight_map"]) == set(tensors)

    state = load_state(tmp_path / "ckpt")
    assert_same(state, tensors)
    for key, shard in index["weight_map"].items():
        assert state.source_of(key) == str(tmp_path / "ckpt" / shard)
        assert key in safetensors.torch.load_file(tmp_path / "ckpt" / shard)
    huge_shard = index["weight_map"]["huge"]
    assert [k for k, f in index["weight_map"].items() if f == huge_shard] == ["huge"]
    for shard in shards:
        data = sum(t.nbytes for t in safetensors.torch.load_file(tmp_path / "ckpt" / shard).values())
        assert data <= limit or shard == huge_shard


def test_unsharded_directory_save_replaces_stale_index(tmp_path):
    tensors = {f"w{i}": torch.full((10, 10), float(i)) for i in range(4)}
    save_state(tensors, tmp_path / "ckpt", max_shard_size=500)
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").exists()
    newer = {k: v + 1 for k, v in tensors.items()}
    written = save_state(newer, tmp_path / "ckpt")
    assert written == [tmp_path / "ckpt" / "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.safetensors"]
    assert_same(load_state(tmp_path / "ckpt"), newer)


def test_save_casts_floats_only_and_handles_views(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"t": base.t(), "row": base[1], "same": base, "alias": base, "ints": torch.arange(3)}
    save_state(tensors, tmp_path / "c.safetensors", dtype=torch.float16, metadata={"k": "v"})
    state = load_state(tmp_path / "c.safetensors")
    assert state.dtype_of("t") == torch.float16 and state.dtype_of("ints") == torch.int64
    assert torch.equal(state["t"], base.t().half())
    assert torch.equal(state["row"], base[1].half())
    assert torch.equal(state["alias"], base.half())
    assert state.metadata["k"] == "v"
    without_cast = save_state(tensors, tmp_path / "d.safetensors")
    assert_same(load_state(without_cast[0]), {k: v.contiguous() for k, v in tensors.items()})


def test_lazy_state_resaves_as_shards(tmp_path):
    tensors = {f"k{i}": torch.full((8, 8), float(i)) for i in range(5)}
    source = load_state(save_state(tensors, tmp_path / "src.safetensors")[0])
    save_state(source, tmp_path / "out", max_shard_size="600B")
    assert source.bytes_read == 5 * 256
    assert_same(load_state(tmp_path / "out"), tensors)


def test_hugging_face_and_torch_files(tmp_path):
    tensors = mixed_state()
    (tmp_path / "hf_bin").mkdir()
    torch.save(tensors, tmp_path / "hf_bin" / "pytorch_model.bin")
    assert_same(load_state(tmp_path / "hf_bin"), tensors)

    (tmp_path / "hf_st").mkdir()
    safetensors.torch.save_file(tensors, tmp_path / "hf_st" / "model.safetensors")
    assert_same(load_state(tmp_path / "hf_st"), tensors)

    torch.save({"state_dict": tensors, "epoch": 3}, tmp_path / "wrapped.pt")
    wrapped = load_state(tmp_path / "wrapped.pt")
    assert_same(wrapped, tensors)
    assert wrapped.bytes_read == 0
    assert wrapped.source_of("f32") == str(tmp_path / "wrapped.pt")

    torch.save(tensors, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    legacy = load_state(tmp_path / "legacy.pth")
    assert_same(legacy, tensors)
    assert legacy.bytes_read == sum(t.nbytes for t in tensors.values())


def test_sharded_torch_index(tmp_path):
    first, second = {"a": torch.ones(2)}, {"b": torch.zeros(3, dtype=torch.int32)}
    torch.save(first, tmp_path / "pytorch_model-1.bin")
    torch.save(second, tmp_path / "pytorch_model-2.bin")
    weight_map = {"a": "pytorch_model-1.bin", "b": "pytorch_model-2.bin"}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    state = load_state(tmp_path)
    assert_same(state, {**first, **second})
    assert state.source_of("b") == str(tmp_path / "pytorch_model-2.bin")


def test_duplicate_key_across_shards(tmp_path):
    safetensors.torch.save_file({"a": torch.ones(1)}, tmp_path / "s1.safetensors")
    safetensors.torch.save_file({"a": torch.ones(1), "b": torch.ones(1)}, tmp_path / "s2.safetensors")
    weight_map = {"a": "s1.safetensors", "b": "s2.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"'a' appears in two shards"):
        load_state(tmp_path)


def test_in_memory_sources():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = load_state(model)
    assert set(state) == set(model.state_dict())
    assert torch.equal(state["0.weight"], model[0].weight.detach())
    assert not state["0.weight"].requires_grad
    assert state.name == "<module Sequential>" and state.bytes_read == 0
    assert state.source_of("0.bias") == "<module Sequential>"
    assert load_state(state) is state
    assert "3 keys" in repr(load_state({"a": torch.ones(1), "b": torch.ones(1), "c": torch.ones(1)}))

    with pytest.raises(ParameterError, match=r"'bad'.*float"):
        load_state({"good": torch.ones(1), "bad": 1.5})


def test_torch_file_with_non_tensor_entry(tmp_path):
    torch.save({"w": torch.ones(2), "step": 10}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"'step' is a int"):
        load_state(tmp_path / "mixed.pt")


def test_path_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere.*does not exist"):
        load_state(tmp_path / "nowhere.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint suffix '\.npz'"):
        load_state(tmp_path / "weights.npz")
    (tmp_path / "corrupt.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=r"corrupt\.pt.*not a loadable torch file"):
        load_state(tmp_path / "corrupt.pt")
    with pytest.raises(ParameterError, match="cannot load a state from a int"):
        load_state(3)


def test_truncated_safetensors(tmp_path):
    file = tmp_path / "cut.safetensors"
    safetensors.torch.save_file({"a": torch.ones(100), "b": torch.ones(10)}, file)
    full = file.read_bytes()
    file.write_bytes(full[:-20])
    with pytest.raises(CheckpointError, match=rf"cut\.safetensors.*truncated.*{len(full)}.*{len(full) - 20}"):
        load_state(file)
    file.write_bytes(full[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state(file)


def test_garbage_headers(tmp_path):
    file = tmp_path / "junk.safetensors"
    file.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors.*header length"):
        load_state(file)
    file.write_bytes(struct.pack("<Q", 10) + b"{not json!")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_state(file)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    file.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(CheckpointError, match=r"'w'.*span 12 bytes.*needs 16"):
        load_state(file)


def test_directory_without_weights_lists_contents(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(CheckpointError, match=r"no recognised weights.*README\.md, config\.json"):
        load_state(tmp_path)


def test_single_stray_safetensors_file_is_used(tmp_path):
    safetensors.torch.save_file({"x": torch.ones(3)}, tmp_path / "weights.safetensors")
    assert torch.equal(load_state(tmp_path)["x"], torch.ones(3))


def test_index_errors(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"index\.json.*'model-00001-of-00002\.safetensors'.*does not exist"):
        load_state(tmp_path)
    index.write_text("{ broken")
    with pytest.raises(CheckpointError, match="malformed index"):
        load_state(tmp_path)


def test_unknown_key(tmp_path):
    file = save_state({"a": torch.ones(2)}, tmp_path / "a.safetensors")[0]
    state = load_state(file)
    with pytest.raises(MissingKeysError, match=r"missing from .*a\.safetensors: nope"):
        state["nope"]
    with pytest.raises(KeyError):
        state.shape_of("nope")
    assert "nope" not in state
    assert state.get("nope") is None
    assert state.bytes_read == 0


def test_size_parsing_and_bad_sizes(tmp_path):
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size(1234) == 1234
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size(" 1.5 gib ") == 3 * 2**29
    for bad in ["5 parsecs", "", "-3MB", "0", True, 2.5]:
        with pytest.raises(ParameterError):
            parse_size(bad)
    with pytest.raises(ParameterError, match="cannot parse size '12XB'"):
        save_state({"a": torch.ones(1)}, tmp_path / "out", max_shard_size="12XB")
    with pytest.raises(ParameterError, match="exceed max_shard_size"):
        save_state({"a": torch.ones(100)}, tmp_path / "x.safetensors", max_shard_size=100)
    assert not (tmp_path / "x.safetensors").exists()


def test_failed_write_leaves_destination_untouched(tmp_path, monkeypatch):
    target = tmp_path / "keep.safetensors"
    save_state({"a": torch.ones(4)}, target)
    before = target.read_bytes()

    def broken_writer(filename, layout, order, tensor_of):
        with open(filename, "wb") as handle:
            handle.write(b"\x10\x00\x00\x00partial")
        raise OSError("disk full")

    monkeypatch.setattr(freqmerge_viz.io, "_write_layout", broken_writer)
    with pytest.raises(OutputError, match="keep.safetensors: cannot write it: disk full"):
        save_state({"a": torch.zeros(4), "b": torch.ones(2)}, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.safetensors"]
    with pytest.raises(OutputError, match="disk full"):
        save_state({"a": torch.zeros(4)}, tmp_path / "dir")
    assert os.listdir(tmp_path) == ["keep.safetensors"]


def test_file_replaced_after_open_is_detected(tmp_path):
    file = save_state({"a": torch.ones(4)}, tmp_path / "a.safetensors")[0]
    state = load_state(file)
    save_state({"a": torch.zeros(4)}, file)
    with pytest.raises(CheckpointError, match="changed on disk"):
        state["a"]


def test_one_file_output_is_written_one_tensor_at_a_time(tmp_path):
    """Writing 64 tensors as one safetensors file holds about one tensor, not the 64 (VmHWM in a
    subprocess, in units of one 1024 x 512 float32 tensor), and gives the same bytes as
    safetensors' own writer would for the same tensors."""
    import subprocess
    import sys

    script = """
import json, sys, torch
from freqmerge_viz.io import load_state, save_state
from freqmerge_viz.taskvector import DerivedState
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
keys = [f"k{i:02d}" for i in range(64)]
shape = (1024, 512)
def make(key):
    return torch.full(shape, float(int(key[1:])))
state = DerivedState("synthetic", keys, make, lambda k: shape, lambda k: torch.float32)
make("k00"); save_state({"x": torch.zeros(4)}, sys.argv[1] + "/warm.safetensors")
start = status("VmRSS")
save_state(state, sys.argv[1] + "/one.safetensors")
print(json.dumps({"peak": status("VmHWM") - start}))
"""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    peak_tensors = json.loads(run.stdout)["peak"] / (1024 * 512 * 4)
    assert peak_tensors <= 2.5, peak_tensors
    written = load_state(tmp_path / "one.safetensors")
    assert len(written) == 64 and float(written["k37"][0, 0]) == 37.0
    expected = {f"k{i:02d}": torch.full((1024, 512), float(i)) for i in range(64)}
    safetensors.torch.save_file(expected, str(tmp_path / "reference.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "reference.safetensors").read_bytes()
