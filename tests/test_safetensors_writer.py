"""The toolkit's own safetensors writer: same bytes as safetensors', reproducible metadata."""

import safetensors
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freqmerge_viz import load_state, save_state
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.io import write_safetensors

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2]

tensor_specs = st.dictionaries(
    st.text("abcdefgh._0123", min_size=1, max_size=6),
    st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3), st.integers(0, 2**31)),
    min_size=1, max_size=8)


def _make(spec):
    out = {}
    for name, (dtype, shape, seed) in spec.items():
        g = torch.Generator().manual_seed(seed)
        out[name] = (torch.randn(shape, generator=g) * 7).to(dtype)
    return out


@settings(max_examples=60, deadline=None)
@given(tensor_specs)
def test_bytes_equal_safetensors_writer_with_one_metadata_entry(tmp_path_factory, spec):
    tensors = _make(spec)
    folder = tmp_path_factory.mktemp("w")
    safetensors.torch.save_file(tensors, folder / "theirs.safetensors", metadata={"format": "pt"})
    write_safetensors(tensors, folder / "ours.safetensors", {"format": "pt"})
    assert (folder / "ours.safetensors").read_bytes() == (folder / "theirs.safetensors").read_bytes()


def test_metadata_order_does_not_change_bytes_and_reads_back(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    entries = [("format", "pt"), ("zeta", "1"), ("alpha", "2"), ("mid", "three")]
    write_safetensors(tensors, tmp_path / "a.safetensors", dict(entries))
    write_safetensors(tensors, tmp_path / "b.safetensors", dict(reversed(entries)))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with safetensors.safe_open(tmp_path / "a.safetensors", "pt") as handle:
        assert handle.metadata() == dict(entries)
        assert torch.equal(handle.get_tensor("w"), tensors["w"])
        assert torch.equal(handle.get_tensor("b"), tensors["b"])


def test_save_state_with_several_metadata_entries_is_reproducible(tmp_path):
    state = {"layer.weight": torch.randn(4, 5, generator=torch.Generator().manual_seed(1))}
    first = save_state(state, tmp_path / "one.safetensors", metadata={"b": "2", "a": "1", "c": "3"})[0]
    second = save_state(state, tmp_path / "two.safetensors", metadata={"c": "3", "a": "1", "b": "2"})[0]
    assert first.read_bytes() == second.read_bytes()
    assert torch.equal(load_state(first)["layer.weight"], state["layer.weight"])


def test_unsupported_dtype_is_a_parameter_error(tmp_path):
    import pytest

    with pytest.raises(ParameterError, match="'z'.*complex"):
        write_safetensors({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "z.safetensors")
