"""Pickled whole-module checkpoints read without running their code (freqmerge_viz.pickled).

Malicious files: nothing they name ever runs (a marker file they would create never
appears) and loading them gives an inert record or a clear CheckpointError. A module tree
shaped like task_vectors' ImageEncoder, whose classes cannot be imported any more, loads as
exactly its ``state_dict()``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from freqmerge_viz.cli import main
from freqmerge_viz.errors import CheckpointError, OutputError
from freqmerge_viz.io import PickledModuleState, load_state, strip_prefix
from freqmerge_viz.pickled import InertRecord, TensorRef, restricted_load

FAKE_MODULE = "task_vectors_fake.modeling"


# ----------------------------------------------------------------------------- a task_vectors-style module
def _image_encoder_classes():
    """ImageEncoder -> CLIP -> VisionTransformer -> resblocks, as task_vectors and open_clip build them."""
    width = 8

    class Preprocess:  # torchvision transforms stand-in: a plain object held as an attribute
        def __init__(self):
            self.size = 224

    class ResidualAttentionBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, 2)
            self.ln_2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 2 * width)), ("gelu", nn.GELU()),
                                                  ("c_proj", nn.Linear(2 * width, width))]))

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.resblocks = nn.ModuleList([ResidualAttentionBlock() for _ in range(2)])

    class VisionTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, kernel_size=4, stride=4, bias=False)
            self.class_embedding = nn.Parameter(torch.randn(width))
            self.positional_embedding = nn.Parameter(torch.randn(5, width))
            self.ln_pre = nn.LayerNorm(width)
            self.transformer = Transformer()
            self.ln_post = nn.LayerNorm(width)
            self.proj = nn.Parameter(torch.randn(4, width).t())  # a non-contiguous parameter

    class CLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = VisionTransformer()
            self.token_embedding = nn.Embedding(10, width)
            self.head = nn.Linear(width, 10, bias=False)
            self.head.weight = self.token_embedding.weight  # a tied parameter
            self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)
            self.register_buffer("attn_mask", torch.full((3, 3), float("-inf")).triu(1), persistent=False)
            self.register_buffer("half_window", torch.arange(12, dtype=torch.float16)[2:8])  # a view at an offset
            self.norm_scale = nn.Parameter(torch.linspace(-1, 1, 6).bfloat16())

    class ImageEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = CLIP()
            self.train_preprocess = Preprocess()
            self.val_preprocess = Preprocess()
            self.cache_dir = "/data/cache"
            self.register_buffer("step", torch.tensor(7))  # an integer scalar buffer

    return [Preprocess, ResidualAttentionBlock, Transformer, VisionTransformer, CLIP, ImageEncoder]


def save_unimportable(path: Path, legacy: bool = False) -> dict[str, torch.Tensor]:
    """torch.save an ImageEncoder whose classes live in a module that is gone afterwards;
    return its state_dict (copies)."""
    torch.manual_seed(0)
    fake = types.ModuleType(FAKE_MODULE)
    classes = _image_encoder_classes()
    for cls in classes:
        cls.__module__, cls.__qualname__ = FAKE_MODULE, cls.__name__
        setattr(fake, cls.__name__, cls)
    package = types.ModuleType(FAKE_MODULE.split(".")[0])
    sys.modules.update({package.__name__: package, FAKE_MODULE: fake})
    try:
        encoder = classes[-1]()
        torch.save(encoder, path, _use_new_zipfile_serialization=not legacy)
    finally:
        del sys.modules[FAKE_MODULE], sys.modules[package.__name__]
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_task_vectors_image_encoder_loads_as_its_state_dict(tmp_path, legacy):
    path = tmp_path / "encoder.pt"
    expected = save_unimportable(path, legacy)
    with pytest.raises(ModuleNotFoundError):  # the class is gone: torch itself could not load it
        torch.load(path, weights_only=False)

    state = load_state(path, pickled_modules=True)
    assert isinstance(state, PickledModuleState) and state.bytes_read == 0
    assert list(state) == list(expected)
    assert "model.visual.transformer.resblocks.0.attn.in_proj_weight" in state
    assert "model.visual.transformer.resblocks.1.mlp.c_fc.weight" in state
    assert "model.attn_mask" not in state  # non-persistent buffers are not in a state dict
    for key, tensor in expected.items():
        assert state.shape_of(key) == tuple(tensor.shape) and state.dtype_of(key) == tensor.dtype, key
    first = "model.visual.class_embedding"
    assert torch.equal(state[first], expected[first]) and state.bytes_read == 8 * 4
    for key, tensor in expected.items():
        got = state[key]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), key
    assert state["step"].item() == 7 and state["model.half_window"].tolist() == [2, 3, 4, 5, 6, 7]
    assert state["model.visual.proj"].is_contiguous()
    assert ("model.token_embedding.weight", "model.head.weight") in state.shared_keys()
    assert state.origins == (path,)


def test_prefix_of_a_task_vectors_checkpoint_strips(tmp_path):
    path = tmp_path / "encoder.pt"
    expected = save_unimportable(path)
    stripped = strip_prefix(load_state(path, pickled_modules=True), "model.")
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in stripped and "step" in stripped
    assert torch.equal(stripped["visual.proj"], expected["model.visual.proj"])


def test_wrapped_checkpoints(tmp_path):
    module = nn.Linear(3, 2)
    torch.save({"state_dict": module.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "a.pt")
    torch.save({"model": module, "epoch": 3}, tmp_path / "b.pt")
    for name in ("a.pt", "b.pt"):
        state = load_state(tmp_path / name, pickled_modules=True)
        assert list(state) == ["weight", "bias"]
        assert torch.equal(state["weight"], module.weight.detach())


def test_unsupported_tensors_and_damaged_files_are_clear_errors(tmp_path):
    torch.save({"dense": torch.ones(2), "sparse": torch.eye(3).to_sparse(), "args": argparse.Namespace()},
               tmp_path / "sparse.pt")
    with pytest.raises(CheckpointError, match=r"sparse\.pt.*entry 'sparse' is an inert record of "
                                              r"torch\._utils\._rebuild_sparse_tensor.*not a dense tensor"):
        load_state(tmp_path / "sparse.pt", pickled_modules=True)
    path = tmp_path / "encoder.pt"
    save_unimportable(path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt"):
        load_state(tmp_path / "cut.pt", pickled_modules=True)


# ----------------------------------------------------------------------------- malicious files
class SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class SubprocessCall(SystemCall):
    def __reduce__(self):
        return subprocess.run, (["touch", str(self.marker)],)


class EvalCall(SystemCall):
    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class SetStateBomb:
    """Importable on purpose: a loader that built it would run its __setstate__."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        Path(state["marker"]).touch()


class BombCarrier(nn.Module):
    def __init__(self, marker):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.payload = SetStateBomb(marker)


def write_torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None) -> None:
    """A file laid out as torch.save writes one: <archive>/data.pkl, byteorder, version, data/<key>."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)


class FakeStorage:
    pass


class FakeTensor:
    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (FakeStorage(), 0, (4,), (1,), False, OrderedDict())


def fake_storage_file(path: Path, marker: Path) -> None:
    """A storage whose persistent id names os.system as its type and a shell command as its key."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, FakeStorage):
                return ("storage", os.system, f"0; touch {marker}", "cpu", 4)
            return None

    buffer = __import__("io").BytesIO()
    Pickler(buffer, protocol=2).dump({"w": FakeTensor()})
    write_torch_zip(path, buffer.getvalue(), {"0": bytes(16)})


def handwritten_global(marker: Path) -> bytes:
    """Protocol-0 opcodes, written by hand: GLOBAL posix.system, a string, TUPLE, REDUCE, STOP."""
    return b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def _variants():
    return {
        "reduce_os_system": lambda p, m: torch.save(SystemCall(m), p),
        "reduce_subprocess_protocol4": lambda p, m: torch.save(SubprocessCall(m), p, pickle_protocol=4),
        "global_builtins_eval": lambda p, m: torch.save(EvalCall(m), p),
        "nested_in_state_dict": lambda p, m: torch.save({"w": torch.ones(2), "evil": SetStateBomb(m)}, p),
        "fake_storage": fake_storage_file,
        "handwritten_global_in_zip": lambda p, m: write_torch_zip(p, handwritten_global(m)),
        "handwritten_global_legacy": lambda p, m: p.write_bytes(handwritten_global(m)),
    }


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("variant", list(_variants()))
def test_malicious_files_run_nothing(tmp_path, variant):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _variants()[variant](path, marker)
    assert not marker.exists()

    with pytest.raises(CheckpointError) as default:
        load_state(path)
    assert "\x1b" not in str(default.value) and "evil.pt" in str(default.value)
    with pytest.raises(CheckpointError) as opted_in:
        load_state(path, pickled_modules=True)
    try:
        top = restricted_load(path)
    except CheckpointError as exc:
        top = exc
    assert not marker.exists()

    if variant in ("reduce_os_system", "reduce_subprocess_protocol4", "global_builtins_eval",
                   "handwritten_global_in_zip"):
        assert isinstance(top, InertRecord)
        name = {"reduce_subprocess_protocol4": "subprocess.run", "global_builtins_eval": "builtins.eval"}.get(
            variant, "posix.system")
        assert top.global_name() == name and str(marker) in str(top.args)
        assert f"names {name}" in str(default.value) and "may be malicious" in str(default.value)
        assert f"holds an inert record of {name}(" in str(opted_in.value)
    elif variant == "nested_in_state_dict":
        assert isinstance(top["w"], TensorRef) and isinstance(top["evil"], InertRecord)
        assert top["evil"].state == {"marker": str(marker)}  # recorded, never handed to __setstate__
        assert "entry 'evil' is an inert record of" in str(opted_in.value)
    elif variant == "fake_storage":
        assert isinstance(top, CheckpointError) and "not a torch storage" in str(top)
    else:
        assert isinstance(top, CheckpointError) and "magic number" in str(top)


def test_a_module_carrying_a_payload_gives_its_weights_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    module = BombCarrier(marker)
    torch.save(module, tmp_path / "carrier.pt")
    state = load_state(tmp_path / "carrier.pt", pickled_modules=True)
    assert list(state) == ["linear.weight", "linear.bias"]
    assert torch.equal(state["linear.weight"], module.linear.weight.detach())
    assert not marker.exists()


# ----------------------------------------------------------------------------- what a user reads
def test_refusal_is_reworded_without_colour_codes(tmp_path, capsys):
    path = tmp_path / "encoder.pt"
    save_unimportable(path)
    with pytest.raises(CheckpointError) as refused:
        load_state(path)
    message = str(refused.value)
    assert "\x1b" not in message and "Weights only load failed" not in message
    assert f"names {FAKE_MODULE}.ImageEncoder" in message and "holds pickled Python objects" in message
    for way in ("pickled_modules=True", "--pickled-modules", "freqmerge-viz convert"):
        assert way in message
    assert "malicious" not in message

    assert main(["inspect", str(path)]) == 2
    assert "--pickled-modules" in capsys.readouterr().err
    assert main(["inspect", str(path), "--pickled-modules"]) == 0
    listing = capsys.readouterr().out
    assert "model.visual.transformer.resblocks.0.attn.in_proj_weight\t24×8\tfloat32" in listing


def test_convert_writes_safetensors_and_never_over_its_input(tmp_path, capsys):
    path = tmp_path / "encoder.pt"
    expected = save_unimportable(path)
    out = tmp_path / "encoder.safetensors"
    assert main(["convert", str(path), str(out), "--pickled-modules", "--strip-prefix", "model.",
                 "--dtype", "float16"]) == 0
    converted = load_state(out)
    assert set(converted) == {k.removeprefix("model.") for k in expected}
    assert converted["visual.proj"].dtype == torch.float16 and converted["step"].dtype == torch.int64
    assert torch.equal(converted["visual.proj"], expected["model.visual.proj"].half())
    assert torch.equal(converted["head.weight"], converted["token_embedding.weight"])
    capsys.readouterr()
    before = path.read_bytes()
    assert main(["convert", str(path), str(path), "--pickled-modules"]) == 2
    assert "inputs are never written to" in capsys.readouterr().err
    assert path.read_bytes() == before
    with pytest.raises(OutputError):
        from freqmerge_viz.io import save_state
        save_state(load_state(path, pickled_modules=True), path)


def test_interference_reads_pickled_modules_as_their_converted_weights(tmp_path, capsys):
    """The same numbers from the pickled modules (--pickled-modules) as from their safetensors copies."""
    torch.manual_seed(1)
    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    paths = {"pre": tmp_path / "pre.pt"}
    torch.save(base, paths["pre"])
    for i in range(2):
        tuned = pickle.loads(pickle.dumps(base))
        with torch.no_grad():
            for parameter in tuned.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        paths[f"ft{i}"] = tmp_path / f"ft{i}.pt"
        torch.save(tuned, paths[f"ft{i}"])
    for name, path in paths.items():
        assert main(["convert", str(path), str(tmp_path / f"{name}.safetensors"), "--pickled-modules"]) == 0
    capsys.readouterr()

    def interference(suffix, *flags):
        args = ["interference", "--pretrained", str(tmp_path / f"pre{suffix}"), "--finetuned",
                *(str(tmp_path / f"ft{i}{suffix}") for i in range(2)), "--names", "a", "b", "--device", "cpu", *flags]
        assert main(args) == 0
        return json.loads(capsys.readouterr().out)

    pickled = interference(".pt", "--pickled-modules")
    converted = interference(".safetensors")
    assert pickled["rows"] == converted["rows"] and len(pickled["rows"]) > 0
    assert main(["interference", "--pretrained", str(paths["pre"]), "--finetuned", str(paths["ft0"])]) == 2
    assert "--pickled-modules" in capsys.readouterr().err
