"""Spectra of task vectors (Fig. 2a): long tables per matrix and task, radial profiles per key."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.evaluation import zoo_task_vectors
from freqmerge_viz.analysis.spectra import (layer_and_matrix, matrix_keys, radial_profiles_by_key, spectra_of_key,
                                            spectra_table)
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.spectral import radial_frequency
from freqmerge_viz.taskvector import TaskVector


def wave(h: int, w: int, fr: int, fc: int) -> torch.Tensor:
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.cos(2 * math.pi * (fr * rows / h + fc * cols / w))


@pytest.mark.parametrize("shape, freq", [((64, 64), (6, 0)), ((48, 96), (3, 20)), ((64, 32), (20, 10))])
def test_radial_profile_of_a_pure_frequency_peaks_at_it(shape, freq):
    h, w = shape
    vector = TaskVector.from_tensors({"m.weight": wave(h, w, *freq)}, name="wave")
    profile = radial_profiles_by_key([vector], n_bins=16)
    rho = math.sqrt(((freq[0] / (h / 2)) ** 2 + (freq[1] / (w / 2)) ** 2) / 2)
    assert float(radial_frequency((h, w))[h // 2 + freq[0], w // 2 + freq[1]]) == pytest.approx(rho)
    peak = profile.loc[profile["amplitude"].idxmax()]
    width = 1.0 / 16
    assert abs(peak["radius"] - rho) <= width / 2 + 1e-9
    assert (profile["amplitude"] > 1e-6 * peak["amplitude"]).sum() == 1


def test_spectra_table_is_the_long_form_of_spectra_of_key(shipped_zoo):
    vectors = zoo_task_vectors(shipped_zoo, shipped_zoo.tasks[:2])
    key = "blocks.1.attn.qkv.weight"
    table = spectra_table(vectors, [key])
    cube = spectra_of_key(vectors, key, device="cpu")
    assert len(table) == cube.size
    h, w = vectors[0].shape_of(key)                                  # 3·width × width
    assert table["eta"].min() == -(h // 2) and table["eta"].max() == h - h // 2 - 1
    assert table["gamma"].min() == -(w // 2)
    row = table[(table["task"] == vectors[1].name) & (table["eta"] == 5) & (table["gamma"] == -7)]
    assert float(row["log_amplitude"].iloc[0]) == pytest.approx(float(cube[1, h // 2 + 5, w // 2 - 7]))
    assert set(table["layer"]) == {"blocks.1"} and set(table["matrix"]) == {"attn.qkv.weight"}


def test_profiles_cover_every_matrix_and_task(shipped_zoo):
    vectors = zoo_task_vectors(shipped_zoo, shipped_zoo.tasks[:2])
    profiles = radial_profiles_by_key(vectors, n_bins=8)
    keys = matrix_keys(vectors)
    assert len(profiles) == len(keys) * 2 * 8
    assert "blocks.0.norm1.weight" not in keys and "patch_embed.proj.weight" in keys
    assert np.isfinite(profiles["amplitude"]).all()


def test_layer_and_matrix():
    assert layer_and_matrix("blocks.3.mlp.fc1.weight") == ("blocks.3", "mlp.fc1.weight")
    assert layer_and_matrix("patch_embed.proj.weight") == ("patch_embed", "proj.weight")
    assert layer_and_matrix("cls_token") == ("cls_token", "cls_token")


def test_a_vector_key_is_not_a_matrix():
    vector = TaskVector.from_tensors({"b": torch.ones(5)}, name="t")
    with pytest.raises(ParameterError, match="not a matrix"):
        radial_profiles_by_key([vector], keys=["b"])
