"""Keys no task changed (a CLIP checkpoint's text tower when only the image tower was tuned)."""

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.methods import base, get_method, list_methods, subspace

PLAIN = [m for m in list_methods() if not getattr(get_method(m), "routed", False)]


@pytest.fixture(scope="module")
def models():
    generator = torch.Generator().manual_seed(0)
    pre = {"tuned.weight": torch.randn(48, 40, generator=generator),
           "untouched.weight": torch.randn(48, 40, generator=generator),
           "tuned.bias": torch.randn(40, generator=generator)}
    finetuned = [{"tuned.weight": pre["tuned.weight"] + 0.01 * torch.randn(48, 40, generator=generator),
                  "untouched.weight": pre["untouched.weight"].clone(),
                  "tuned.bias": pre["tuned.bias"] + 0.01 * torch.randn(40, generator=generator)} for _ in range(3)]
    return pre, finetuned


def _without_shortcut(self, task_vectors, key, ctx, device):
    return self.merge_key(base.stack_key(task_vectors, key, device), key, ctx)


def _matrix_without_shortcut(self, task_vectors, key, ctx, device):
    shape = subspace.entry_shape(task_vectors[0], key)
    return self.delta(subspace.task_reader(task_vectors, key, device), len(task_vectors), shape, key, ctx)


@pytest.mark.parametrize("name", PLAIN)
def test_an_untouched_key_skips_the_methods_work_and_changes_nothing(name, models, monkeypatch):
    pre, finetuned = models
    method = get_method(name)
    with monkeypatch.context() as patch:
        patch.setattr(base.MergeMethod, "key_delta", _without_shortcut)
        patch.setattr(subspace.MatrixMerge, "key_delta", _matrix_without_shortcut)
        own = fmv.merge(name, pre, finetuned)
        own = {k: own[k] for k in pre}
    assert torch.equal(own["untouched.weight"], pre["untouched.weight"]), "the method's own zero delta"
    calls = []
    hook = "delta" if isinstance(method, subspace.MatrixMerge) else "merge_key"
    step = getattr(method, hook)
    monkeypatch.setattr(method, hook, lambda *args: (calls.append(args[-2]), step(*args))[1])
    merged = fmv.merge(name, pre, finetuned)
    for key in pre:
        assert torch.equal(merged[key], own[key]), key
    if type(method).key_delta in (base.MergeMethod.key_delta, subspace.MatrixMerge.key_delta):
        assert "untouched.weight" not in calls and "tuned.weight" in calls
