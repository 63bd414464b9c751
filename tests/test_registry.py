"""One registry for every merge, plain or routed; parameters resolved once."""

from __future__ import annotations

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.cli import main
from freqmerge_viz.errors import ParameterError


def test_every_method_plain_or_routed_is_listed_with_declared_parameters():
    names = fmv.list_methods()
    assert {"free", "emr", "twin", "fr", "ties", "task_arithmetic", "pcb"} <= set(names)
    assert fmv.list_routed_methods() == ["emr", "free", "twin"]
    for name in names:
        method = fmv.get_method(name)
        assert method.params or name == "weight_averaging", name
        assert method.routed == (name in ("free", "emr", "twin"))
        assert all(p.doc for p in method.params), name


def test_methods_command_shows_each_methods_parameters(capsys):
    assert main(["methods", "twin"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("twin (routed: one state per task)")
    assert "rank (default 8" in out and "shared_method (default 'task_arithmetic'" in out
    assert main(["methods"]) == 0
    listed = [line.split(":")[0].split(" ")[0] for line in capsys.readouterr().out.splitlines()
              if line and not line.startswith(" ")]
    assert listed == fmv.list_methods()


def test_plain_and_routed_entry_points_say_which_to_use():
    with pytest.raises(ParameterError, match=r"'free' is a routed merge .* use routed_merge\('free'"):
        fmv.merge("free", {"w": torch.zeros(2)}, [{"w": torch.ones(2)}])
    with pytest.raises(ParameterError, match=r"routed_merge\('emr'"):
        fmv.method_transform("emr")
    with pytest.raises(ParameterError, match=r"'ties' is a plain merge .* use merge\('ties'"):
        fmv.routed_merge("ties", {"w": torch.zeros(2)}, [{"w": torch.ones(2)}])


def test_routed_parameters_are_validated_like_every_other():
    pre, fts = {"w": torch.zeros(3, 4)}, [{"w": torch.randn(3, 4)}, {"w": torch.randn(3, 4)}]
    with pytest.raises(ParameterError, match="twin: parameter 'rank' must be ≥ 1, got 0"):
        fmv.routed_merge("twin", pre, fts, rank=0)
    with pytest.raises(ParameterError, match="twin: shared_method 'free' is itself routed"):
        fmv.routed_merge("twin", pre, fts, shared_method="free")
    with pytest.raises(ParameterError, match=r"emr: unknown parameter\(s\) \['density'\]"):
        fmv.routed_merge("emr", pre, fts, density=0.1)
    assert fmv.routed_merge("twin", pre, fts, rank=2).settings["rank"] == 2


def test_a_resolved_method_carries_its_filter_and_merges_without_resolving_again(monkeypatch):
    method = fmv.get_method("fr")
    resolved = method.resolved({"cutoff": 0.3, "kind": "gaussian"}, n_tasks=2)
    assert resolved.filter_spec == fmv.FilterSpec(0.3, kind="gaussian")
    assert fmv.get_method("ties").resolved({}).filter_spec is None
    calls = []
    original = type(method).resolve
    monkeypatch.setattr(type(method), "resolve", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    g = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(6, 5, generator=g)}
    fts = [{"w": pre["w"] + torch.randn(6, 5, generator=g)} for _ in range(2)]
    merged = resolved.merge(pre, fts)
    assert calls == []
    expected = fmv.merge("fr", pre, fts, cutoff=0.3, kind="gaussian")
    assert torch.equal(merged["w"], expected["w"])
    stack = torch.stack([f["w"] - pre["w"] for f in fts])
    assert torch.equal(resolved.transform(stack.clone(), "w"),
                       fmv.method_transform("fr", 2, cutoff=0.3, kind="gaussian")(stack.clone(), "w"))
