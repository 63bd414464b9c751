"""Tests of freqmerge_viz.taskvector: construction, errors, algebra and apply_to."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz import TaskVector
from freqmerge_viz.errors import MissingKeysError, NonFiniteError, ShapeMismatchError


def states(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pre = {
        "enc.attn.weight": torch.randn(4, 6, generator=g),
        "enc.attn.bias": torch.randn(6, generator=g),
        "enc.mlp.weight": torch.randn(3, 2, 2, 2, generator=g),
        "head.weight": torch.randn(5, 3, generator=g),
        "half": torch.randn(3, 3, generator=g).half(),
        "brain": torch.randn(2, 4, generator=g).bfloat16(),
        "steps": torch.tensor([7, 9]),
        "flags": torch.tensor([True, False]),
    }
    ft = {}
    for key, value in pre.items():
        if value.is_floating_point():
            ft[key] = (value.float() + 0.1 * torch.randn(value.shape, generator=g)).to(value.dtype)
        else:
            ft[key] = value + 1 if value.dtype != torch.bool else ~value
    return pre, ft


FLOAT_KEYS = ["enc.attn.weight", "enc.attn.bias", "enc.mlp.weight", "head.weight", "half", "brain"]


def tv_pair(seed_a=0, seed_b=1):
    pre, ft_a = states(seed_a)
    _, ft_b = states(seed_b)
    ft_b = {k: (v.float() + 0.3).to(v.dtype) if v.is_floating_point() else v for k, v in ft_b.items()}
    a = TaskVector.from_states(pre, ft_a, name="a")
    b = TaskVector.from_states(pre, ft_b, name="b")
    return pre, a, b


# --------------------------------------------------------------------------- construction
def test_from_states_values_dtypes_and_skipped():
    pre, ft = states()
    tv = TaskVector.from_states(pre, ft, name="demo")
    assert tv.name == "demo"
    assert list(tv) == FLOAT_KEYS and len(tv) == len(FLOAT_KEYS)
    assert set(tv.skipped) == {"steps", "flags"}
    assert "int64" in tv.skipped["steps"] and "bool" in tv.skipped["flags"]
    for key in FLOAT_KEYS:
        got = tv[key]
        assert got.dtype == torch.float32, key  # float16/bfloat16 computed in float32
        assert got.shape == pre[key].shape and tv.shape_of(key) == tuple(pre[key].shape)
        expected = ft[key].float() - pre[key].float()
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # the difference is taken in float32, not in float16 (which would round it)
    exact16 = ft["half"].double() - pre["half"].double()
    torch.testing.assert_close(tv["half"].double(), exact16, rtol=0, atol=1e-7)
    assert tv.numel() == sum(pre[k].numel() for k in FLOAT_KEYS)
    assert "steps" not in tv and "half" in tv
    with pytest.raises(MissingKeysError, match="steps"):
        tv["steps"]


def test_from_states_float64_and_mixed_precision():
    pre = {"w": torch.randn(3, 3, dtype=torch.float64), "m": torch.randn(2, 2).half()}
    ft = {"w": pre["w"] + 1e-12, "m": torch.randn(2, 2, dtype=torch.float64)}
    tv = TaskVector.from_states(pre, ft)
    assert tv["w"].dtype == torch.float64
    torch.testing.assert_close(tv["w"], ft["w"] - pre["w"], rtol=0, atol=0)
    assert tv["m"].dtype == torch.float64  # float16 vs float64 promotes to float64
    torch.testing.assert_close(tv["m"], ft["m"] - pre["m"].double(), rtol=0, atol=0)


def test_include_exclude_globs():
    pre, ft = states()
    tv = TaskVector.from_states(pre, ft, include=["enc.*"], exclude="*.bias")
    assert list(tv) == ["enc.attn.weight", "enc.mlp.weight"]
    assert tv.skipped == {}
    tv = TaskVector.from_states(pre, ft, include="*weight")
    assert list(tv) == ["enc.attn.weight", "enc.mlp.weight", "head.weight"]
    tv = TaskVector.from_states(pre, ft, exclude=["half", "brain", "s*"])
    assert list(tv) == ["enc.attn.weight", "enc.attn.bias", "enc.mlp.weight", "head.weight"]
    assert set(tv.skipped) == {"flags"}
    # a key missing from the fine-tuned side is fine when the globs exclude it
    ft_less = {k: v for k, v in ft.items() if k != "head.weight"}
    assert "head.weight" not in TaskVector.from_states(pre, ft_less, exclude="head.*")


def test_from_safetensors_files_reads_lazily(tmp_path):
    pre, ft = states()
    fmv.save_state(pre, tmp_path / "pre.safetensors")
    fmv.save_state(ft, tmp_path / "finetuned_task.safetensors")
    pre_state = fmv.load_state(tmp_path / "pre.safetensors")
    ft_state = fmv.load_state(tmp_path / "finetuned_task.safetensors")
    tv = TaskVector.from_states(pre_state, ft_state)
    assert tv.name == "finetuned_task"
    assert pre_state.bytes_read == 0 and ft_state.bytes_read == 0  # metadata only
    assert set(tv) == set(FLOAT_KEYS) and set(tv.skipped) == {"steps", "flags"}
    got = tv["head.weight"]
    assert pre_state.bytes_read == pre["head.weight"].nbytes == 5 * 3 * 4
    assert ft_state.bytes_read == ft["head.weight"].nbytes
    torch.testing.assert_close(got, ft["head.weight"] - pre["head.weight"], rtol=0, atol=0)
    half = tv["half"]
    assert pre_state.bytes_read == pre["head.weight"].nbytes + pre["half"].nbytes
    torch.testing.assert_close(half, ft["half"].float() - pre["half"].float(), rtol=0, atol=0)
    assert str(tmp_path / "pre.safetensors") in tv.source_of("half")
    # paths work too
    tv2 = TaskVector.from_states(str(tmp_path / "pre.safetensors"), tmp_path / "finetuned_task.safetensors")
    for key in FLOAT_KEYS:
        torch.testing.assert_close(tv2[key], tv[key], rtol=0, atol=0)


# --------------------------------------------------------------------------- errors
def test_missing_key_in_finetuned():
    pre, ft = states()
    del ft["head.weight"]
    with pytest.raises(MissingKeysError, match=r"missing from <dict>: head\.weight") as info:
        TaskVector.from_states(pre, ft)
    assert info.value.missing == ["head.weight"]
    assert isinstance(info.value, KeyError)


def test_extra_key_in_finetuned():
    pre, ft = states()
    ft["new.weight"] = torch.zeros(2, 2)
    with pytest.raises(MissingKeysError, match=r"new\.weight"):
        TaskVector.from_states(pre, ft)


def test_shape_mismatch(tmp_path):
    pre, ft = states()
    ft["head.weight"] = torch.zeros(3, 5)
    with pytest.raises(ShapeMismatchError, match=re.escape("'head.weight'")) as info:
        TaskVector.from_states(pre, ft)
    assert info.value.shape_a == (5, 3) and info.value.shape_b == (3, 5)
    assert "(5, 3)" in str(info.value) and "(3, 5)" in str(info.value)
    fmv.save_state(pre, tmp_path / "p.safetensors")
    fmv.save_state(ft, tmp_path / "f.safetensors")
    pre_state = fmv.load_state(tmp_path / "p.safetensors")
    with pytest.raises(ShapeMismatchError, match=re.escape(str(tmp_path / "f.safetensors"))):
        TaskVector.from_states(pre_state, tmp_path / "f.safetensors")
    assert pre_state.bytes_read == 0  # checked from metadata


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["pre", "ft"])
def test_non_finite_raises_on_access(bad, side):
    pre, ft = states()
    target = pre if side == "pre" else ft
    target["head.weight"] = target["head.weight"].clone()
    target["head.weight"][1, 2] = bad
    tv = TaskVector.from_states(pre, ft)  # construction reads nothing
    torch.testing.assert_close(tv["enc.attn.weight"], ft["enc.attn.weight"] - pre["enc.attn.weight"])
    with pytest.raises(NonFiniteError, match=re.escape("'head.weight'")) as info:
        tv["head.weight"]
    assert info.value.key == "head.weight"
    assert "1 NaN/Inf" in str(info.value)
    # derived vectors raise too
    with pytest.raises(NonFiniteError, match="head"):
        (2 * tv)["head.weight"]
    unchecked = TaskVector.from_states(pre, ft, check_values=False)
    assert not bool(torch.isfinite(unchecked["head.weight"]).all())


def test_non_finite_in_half_precision_source():
    pre, ft = states()
    ft["half"] = ft["half"].clone()
    ft["half"][0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="'half'"):
        TaskVector.from_states(pre, ft)["half"]


# --------------------------------------------------------------------------- algebra
def test_addition_subtraction_scaling():
    _, a, b = tv_pair()
    s = a + b
    d = a - b
    assert list(s) == list(a)
    for key in a:
        torch.testing.assert_close(s[key], a[key] + b[key], rtol=0, atol=0)
        torch.testing.assert_close(d[key], a[key] - b[key], rtol=0, atol=0)
        assert torch.equal((a - a)[key], torch.zeros_like(a[key]))
        torch.testing.assert_close((2 * a)[key], (a + a)[key], rtol=0, atol=0)
        torch.testing.assert_close((a * 2)[key], (a + a)[key], rtol=0, atol=0)
        torch.testing.assert_close((a * 0.5)[key], a[key] / 2, rtol=0, atol=0)
        torch.testing.assert_close((-a)[key], -a[key], rtol=0, atol=0)
    assert (-a).norm() == pytest.approx(a.norm())
    assert (a - a).norm() == 0.0
    assert isinstance(a + b, TaskVector)


def test_scalar_multiplication_rejects_non_numbers():
    _, a, _ = tv_pair()
    with pytest.raises(TypeError):
        a * "2"
    with pytest.raises(TypeError):
        a * True
    with pytest.raises(TypeError):
        a + 1.0


def test_mismatched_keys_raise():
    _, a, b = tv_pair()
    c = b.select(exclude="half")
    with pytest.raises(MissingKeysError, match="half"):
        a + c
    with pytest.raises(MissingKeysError, match="half"):
        c - a
    with pytest.raises(MissingKeysError, match="half"):
        a.cosine(c)


def test_map_and_select():
    _, a, _ = tv_pair()
    signs = a.map(torch.sign, name="signs")
    assert signs.name == "signs"
    for key in a:
        assert torch.equal(signs[key], torch.sign(a[key]))
    keyed = a.map(lambda k, v: v * len(k), with_key=True)
    for key in a:
        torch.testing.assert_close(keyed[key], a[key] * len(key), rtol=0, atol=0)
    picked = a.select(include="enc.*", exclude="*.bias")
    assert list(picked) == ["enc.attn.weight", "enc.mlp.weight"]
    assert torch.equal(picked["enc.mlp.weight"], a["enc.mlp.weight"])
    with pytest.raises(MissingKeysError):
        picked["head.weight"]


def test_materialize_equals_lazy_and_computes_once():
    calls = []
    data = {"x": torch.randn(3, 4), "y": torch.randn(5)}

    def compute(key):
        calls.append(key)
        return data[key] * 3

    tv = TaskVector(list(data), compute, {k: v.shape for k, v in data.items()}, name="lazy")
    lazy_x = tv["x"]
    tv["x"]
    assert calls == ["x", "x"]  # lazy: recomputed on each access
    calls.clear()
    stored = tv.materialize()
    assert sorted(calls) == ["x", "y"]
    for _ in range(3):
        for key in data:
            assert torch.equal(stored[key], tv[key] if key != "x" else lazy_x)
    calls.clear()
    stored["x"], stored["y"]
    assert calls == []


def test_norm_and_cosine_against_numpy():
    _, a, b = tv_pair()
    flat_a = np.concatenate([a[k].double().numpy().ravel() for k in a])
    flat_b = np.concatenate([b[k].double().numpy().ravel() for k in b])
    assert a.norm() == pytest.approx(np.linalg.norm(flat_a), rel=1e-6)
    for key, value in a.norms().items():
        assert value == pytest.approx(np.linalg.norm(a[key].double().numpy()), rel=1e-6)
    expected = flat_a @ flat_b / (np.linalg.norm(flat_a) * np.linalg.norm(flat_b))
    assert a.cosine(b) == pytest.approx(expected, rel=1e-5)
    assert a.cosine(a) == pytest.approx(1.0, abs=1e-6)
    assert a.cosine(-a) == pytest.approx(-1.0, abs=1e-6)
    assert a.cosine(3.0 * a) == pytest.approx(1.0, abs=1e-6)
    per_key = a.cosine_per_key(b)
    assert list(per_key) == list(a)
    for key, value in per_key.items():
        x, y = a[key].double().numpy().ravel(), b[key].double().numpy().ravel()
        assert value == pytest.approx(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), rel=1e-5)
    dots = a.dot_per_key(b)
    assert sum(dots.values()) == pytest.approx(flat_a @ flat_b, rel=1e-5)
    assert math.isnan(a.cosine(a - a))
    assert all(math.isnan(v) for v in a.cosine_per_key(a * 0).values())


def test_cosine_orthogonal():
    a = TaskVector.from_tensors({"w": torch.tensor([[1.0, 0.0]]), "v": torch.tensor([0.0, 2.0])})
    b = TaskVector.from_tensors({"w": torch.tensor([[0.0, 5.0]]), "v": torch.tensor([3.0, 0.0])})
    assert a.cosine(b) == 0.0
    assert a.cosine_per_key(b) == {"w": 0.0, "v": 0.0}


def test_from_tensors():
    tv = TaskVector.from_tensors({"w": torch.ones(2, 2).half(), "i": torch.tensor([1, 2])}, name="t")
    assert list(tv) == ["w"] and set(tv.skipped) == {"i"}
    assert tv["w"].dtype == torch.float32


# --------------------------------------------------------------------------- apply_to
def test_apply_to_reproduces_finetuned():
    pre, ft = states()
    tv = TaskVector.from_states(pre, ft)
    merged = tv.apply_to(pre)
    assert list(merged) == list(pre)
    for key in pre:
        got = merged[key]
        assert got.dtype == pre[key].dtype, key
        assert merged.dtype_of(key) == pre[key].dtype and merged.shape_of(key) == tuple(pre[key].shape)
        if key in tv:
            tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(pre[key].dtype, 1e-6)
            torch.testing.assert_close(got.float(), ft[key].float(), rtol=0, atol=tol)
        else:
            assert torch.equal(got, pre[key]), key  # integer/bool buffers pass through
    zero = tv.apply_to(pre, scale=0.0)
    for key in pre:
        assert torch.equal(zero[key], pre[key]), key
    half = tv.apply_to(pre, scale=0.5)
    expected = pre["head.weight"] + 0.5 * (ft["head.weight"] - pre["head.weight"])
    torch.testing.assert_close(half["head.weight"], expected)


def test_apply_to_float16_pretrained_keeps_dtype():
    g = torch.Generator().manual_seed(3)
    pre = {"w": torch.randn(4, 4, generator=g).half(), "n": torch.tensor([3])}
    ft = {"w": (pre["w"].float() + 0.01 * torch.randn(4, 4, generator=g)).half(), "n": torch.tensor([4])}
    tv = TaskVector.from_states(pre, ft)
    out = tv.apply_to(pre)
    assert out["w"].dtype == torch.float16 and out.dtype_of("w") == torch.float16
    assert torch.equal(out["w"], ft["w"])  # f16 + exact f32 delta rounds back to ft
    assert torch.equal(out["n"], pre["n"])
    as32 = tv.apply_to(pre, dtype=torch.float32)
    assert as32["w"].dtype == torch.float32 and as32.dtype_of("w") == torch.float32
    assert as32["n"].dtype == torch.int64 and as32.dtype_of("n") == torch.int64


def test_apply_to_safetensors_round_trip(tmp_path):
    pre, ft = states()
    fmv.save_state(pre, tmp_path / "pre.safetensors")
    fmv.save_state(ft, tmp_path / "ft.safetensors")
    tv = TaskVector.from_states(tmp_path / "pre.safetensors", tmp_path / "ft.safetensors")
    fmv.save_state(tv.apply_to(tmp_path / "pre.safetensors"), tmp_path / "rebuilt.safetensors")
    rebuilt = fmv.load_state(tmp_path / "rebuilt.safetensors")
    for key in pre:
        assert rebuilt.dtype_of(key) == pre[key].dtype
        if key in tv:
            tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(pre[key].dtype, 1e-6)
            torch.testing.assert_close(rebuilt[key].float(), ft[key].float(), rtol=0, atol=tol)
        else:
            assert torch.equal(rebuilt[key], pre[key])


def test_apply_to_key_missing_from_pretrained():
    pre, ft = states()
    tv = TaskVector.from_tensors({"head.weight": torch.ones(5, 3), "ghost.weight": torch.ones(2)},
                                 name="ghosty")
    with pytest.raises(MissingKeysError, match=r"ghost\.weight") as info:
        tv.apply_to(pre)
    assert info.value.missing == ["ghost.weight"]
    wrong_shape = TaskVector.from_tensors({"head.weight": torch.ones(3, 5)})
    with pytest.raises(ShapeMismatchError, match=re.escape("'head.weight'")):
        wrong_shape.apply_to(pre)


def test_apply_sum_of_task_vectors():
    pre, a, b = tv_pair()
    merged = (a + b).apply_to(pre, scale=0.5)
    for key in a:
        expected = (pre[key].float() + 0.5 * (a[key] + b[key])).to(pre[key].dtype)
        torch.testing.assert_close(merged[key], expected, rtol=0, atol=0)
