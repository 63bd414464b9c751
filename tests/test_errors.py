"""One exception hierarchy, with messages that name the file, key and shape involved."""

from __future__ import annotations

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz import errors


def test_every_toolkit_error_is_a_freqmerge_error_and_every_warning_a_freqmerge_warning():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    problems = [c for c in classes if not issubclass(c, Warning)]
    warnings = [c for c in classes if issubclass(c, Warning)]
    assert len(problems) >= 7 and errors.ScopeWarning in warnings
    assert all(issubclass(c, fmv.FreqMergeError) for c in problems)
    assert all(issubclass(c, errors.FreqMergeWarning) for c in warnings)


def test_missing_keys_error_lists_keys_and_is_a_key_error():
    error = fmv.MissingKeysError([f"k{i}" for i in range(13)], where="ft.safetensors", reference="pre")
    text = str(error)
    assert "13 key(s) that pre has missing from ft.safetensors" in text
    assert "k0, k1" in text and "(and 3 more)" in text
    assert isinstance(error, KeyError)


def test_shape_mismatch_names_key_and_both_shapes_and_files(tmp_path):
    fmv.save_state({"blocks.0.attn.qkv.weight": torch.zeros(6, 2)}, tmp_path / "pre.safetensors")
    fmv.save_state({"blocks.0.attn.qkv.weight": torch.zeros(6, 3)}, tmp_path / "ft.safetensors")
    with pytest.raises(fmv.ShapeMismatchError, match=r"'blocks\.0\.attn\.qkv\.weight': \(6, 2\) in .*pre\."
                                                     r"safetensors but \(6, 3\) in .*ft\.safetensors"):
        fmv.TaskVector.from_states(tmp_path / "pre.safetensors", tmp_path / "ft.safetensors")


def test_non_finite_values_name_key_and_file(tmp_path):
    bad = torch.zeros(4, 4)
    bad[1, 2] = float("inf")
    fmv.save_state({"w": torch.zeros(4, 4)}, tmp_path / "pre.safetensors")
    fmv.save_state({"w": bad}, tmp_path / "ft.safetensors")
    vector = fmv.TaskVector.from_states(tmp_path / "pre.safetensors", tmp_path / "ft.safetensors")
    with pytest.raises(fmv.NonFiniteError, match=r"key 'w' \(from .*ft\.safetensors\) holds 1 NaN/Inf"):
        vector["w"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(cutoff=1.2), r"normalized cutoff lies in \[0, 1\]"),
    (dict(cutoff=-1, units="bins"), r"cutoff must be a finite number >= 0, got -1"),
    (dict(cutoff=float("nan")), "finite"),
    (dict(cutoff=(0.3, 0.2), band="band"), "lower < upper"),
    (dict(cutoff=0.2, kind="box"), "kind must be one of ideal, butterworth, gaussian; got 'box'"),
    (dict(cutoff=0.2, convention="official", units="bins"), "filter_ratio"),
])
def test_bad_filter_parameters(kwargs, message):
    with pytest.raises(fmv.ParameterError, match=message):
        fmv.frequency_filter(torch.zeros(4, 4), **kwargs)


def test_empty_task_lists():
    with pytest.raises(fmv.EmptyInputError, match="at least one task vector"):
        fmv.amplitude_variance([])
    with pytest.raises(fmv.EmptyInputError, match="at least one task vector"):
        fmv.cosine_similarity_matrix([])
