"""The pair singular measures streamed over keys (freqmerge_viz.singular.pair_singular_interference):
each task decomposed once per key for all its pairs, equal to the old per-pair
``singular_interference`` loop; the estimate, key selection, bar and memory bound."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import torch

from freqmerge_viz import singular as sg
from freqmerge_viz.errors import EmptyInputError, ParameterError
from freqmerge_viz.taskvector import TaskVector

from memory_support import peak_over_start, write_matrix_models

MEASURES = ("sti", "sti_normalized", "overlap", "alignment")
SHAPES = {"blocks.0.attn.w": (14, 9), "blocks.0.mlp.w": (8, 20), "blocks.1.attn.w": (10, 10), "conv": (6, 2, 2, 2),
          "bias": (6,)}


def task_vectors(dtype=torch.float64, k: int = 4, seed: int = 0, degenerate: bool = False) -> list[TaskVector]:
    """K tasks sharing a rank-3 part (so that the pairs differ), plus their own noise; with
    `degenerate`, task 1's attn matrix is zero and task 2's mlp matrix has rank 1."""
    g = torch.Generator().manual_seed(seed)
    shared = {key: torch.randn(shape, dtype=torch.float64, generator=g) for key, shape in SHAPES.items()}
    out = []
    for t in range(k):
        entries = {}
        for key, shape in SHAPES.items():
            noise = torch.randn(shape, dtype=torch.float64, generator=g)
            if len(shape) >= 2:
                h = shape[0]
                w = math.prod(shape[1:])
                part = (torch.randn(h, 3, dtype=torch.float64, generator=g)
                        @ torch.randn(3, w, dtype=torch.float64, generator=g)).reshape(shape)
                noise = noise + (1 + t) * part + 0.5 * shared[key]
            entries[key] = noise
        if degenerate and t == 1:
            entries["blocks.0.attn.w"] = torch.zeros(SHAPES["blocks.0.attn.w"], dtype=torch.float64)
        if degenerate and t == 2:
            entries["blocks.0.mlp.w"] = torch.outer(torch.randn(8, dtype=torch.float64, generator=g),
                                                    torch.randn(20, dtype=torch.float64, generator=g))
        out.append(TaskVector.from_tensors({key: v.to(dtype) for key, v in entries.items()}, name=f"t{t}"))
    return out


def old_pair_table(vectors, pairs, **options) -> pd.DataFrame:
    """What pair_singular_table computed before: singular_interference of each pair alone."""
    rows = []
    for a, b in pairs:
        measured = sg.singular_interference([vectors[a], vectors[b]], device="cpu", **options)
        for row in measured.to_dict(orient="records"):
            rows.append({"key": row["key"], "task_a": vectors[a].name, "task_b": vectors[b].name,
                         **{m: row[m] for m in (*MEASURES, "k", "merged_rank")}})
    return pd.DataFrame(rows)


def assert_same(new: pd.DataFrame, old: pd.DataFrame, rtol: float) -> None:
    merged = new.merge(old, on=["key", "task_a", "task_b"], suffixes=("", "_old"))
    assert len(merged) == len(new) == len(old)
    assert (merged["k"] == merged["k_old"]).all() and (merged["merged_rank"] == merged["merged_rank_old"]).all()
    for m in MEASURES:
        both_nan = merged[m].isna() & merged[f"{m}_old"].isna()
        ok = both_nan | ((merged[m] - merged[f"{m}_old"]).abs() <= rtol * merged[f"{m}_old"].abs())
        assert ok.all(), (m, merged.loc[~ok, ["key", "task_a", "task_b", m, f"{m}_old"]])


PAIRS = list(itertools.combinations(range(4), 2))


@pytest.mark.parametrize("solver, rtol", [("gram", 1e-10), ("svd", 1e-12)])
def test_streamed_pairs_equal_the_old_per_pair_loop_in_float64(solver, rtol):
    vectors = task_vectors(degenerate=True)
    new = sg.pair_singular_interference(vectors, solver=solver, device="cpu")
    assert list(new["key"].unique()) == ["blocks.0.attn.w", "blocks.0.mlp.w", "blocks.1.attn.w", "conv"]
    assert len(new) == 4 * 6 and list(new.columns[:4]) == ["key", "shape", "task_a", "task_b"]
    assert new.loc[new["key"] == "conv", "shape"].iloc[0] == "6×8"
    assert_same(new, old_pair_table(vectors, PAIRS), rtol)
    # the zero matrix gives NaN alignments, as before; the rest is finite
    zero = new[(new["key"] == "blocks.0.attn.w") & ((new["task_a"] == "t1") | (new["task_b"] == "t1"))]
    assert zero["alignment"].isna().all() and new[list(MEASURES[:3])].notna().all().all()


def test_gram_solver_hands_degenerate_pairs_to_the_exact_path(monkeypatch):
    calls = []
    exact = sg._exact_pair
    monkeypatch.setattr(sg, "_exact_pair",
                        lambda m, a, b, *rest: calls.append((m.shape, a, b)) or exact(m, a, b, *rest))
    sg.pair_singular_interference(task_vectors(degenerate=True), device="cpu")
    # task 1's zero attn matrix: its 3 pairs; task 2's rank-1 mlp matrix: its 3 pairs; nothing else
    assert sorted((tuple(s), a, b) for s, a, b in calls) == sorted(
        [((4, 14, 9), 0, 1), ((4, 14, 9), 1, 2), ((4, 14, 9), 1, 3),
         ((4, 8, 20), 0, 2), ((4, 8, 20), 1, 2), ((4, 8, 20), 2, 3)])


def test_gram_solver_on_float32_matches_the_old_float32_svds():
    vectors = task_vectors(torch.float32, seed=3)
    new = sg.pair_singular_interference(vectors, device="cpu")
    assert_same(new, old_pair_table(vectors, PAIRS), 1e-4)


def test_pair_means_equal_the_old_pair_singular_table_means():
    vectors = task_vectors(degenerate=True, seed=1)
    means = sg.pair_means(sg.pair_singular_interference(vectors, device="cpu"))
    for (a, b), row in zip(PAIRS, means.to_dict(orient="records")):
        old = sg.singular_interference([vectors[a], vectors[b]], device="cpu")
        assert (row["task_a"], row["task_b"]) == (f"t{a}", f"t{b}")
        for m in MEASURES:
            assert row[m] == pytest.approx(float(old[m].mean()), rel=1e-10)


def test_pairs_by_name_k_and_key_selection():
    vectors = task_vectors(seed=2)
    chosen = sg.pair_singular_interference(vectors, [("t3", "t0"), (1, 2)], k=2, include="blocks.*",
                                           exclude="*.mlp.*", device="cpu")
    assert list(chosen["key"].unique()) == ["blocks.0.attn.w", "blocks.1.attn.w"]
    assert list(zip(chosen["task_a"], chosen["task_b"]))[:2] == [("t3", "t0"), ("t1", "t2")]
    assert (chosen["k"] == 2).all()
    assert_same(chosen, old_pair_table(vectors, [(3, 0), (1, 2)], k=2, include="blocks.*", exclude="*.mlp.*"), 1e-10)
    with pytest.raises(ParameterError):
        sg.pair_singular_interference(vectors, [("t0", "nope")])
    with pytest.raises(ParameterError):
        sg.pair_singular_interference(vectors, [(0, 0)])
    with pytest.raises(ParameterError):
        sg.pair_singular_interference(vectors, solver="lanczos")
    with pytest.raises(EmptyInputError):
        sg.pair_singular_interference(vectors, include="bias")


def test_each_task_is_decomposed_once_per_key(monkeypatch):
    counted = []
    real = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda x: counted.append(tuple(x.shape)) or real(x))
    sg.pair_singular_interference(task_vectors(seed=4), include="blocks.1.*", device="cpu")
    # one batched eigh of the 4 task Grams, then the 6 pairs' merged Grams, K / 2 = 2 at a time
    assert counted == [(4, 10, 10), (2, 10, 10), (2, 10, 10), (2, 10, 10)]


def test_the_estimate_is_printed_first_and_a_bar_follows(capsys):
    table = sg.pair_singular_interference(task_vectors(seed=5), device="cpu", estimate=True, progress=True)
    err = capsys.readouterr().err
    assert err.index("estimate: pair singular measures of 4 matrices") < err.index("pair singular measures:")
    assert "4 tasks and 6 pairs: 10 float64 Gram products and eigh per matrix" in err and "timed on one" in err
    assert table.attrs["estimate_s"] > 0 and table.attrs["solver"] == "gram"
    sg.pair_singular_interference(task_vectors(seed=5), device="cpu")  # small: no estimate, no bar
    assert capsys.readouterr().err == ""


def test_the_estimate_scales_the_timed_matrix_to_the_others():
    seconds, line = sg.pair_singular_estimate([(256, 64), (64, 64), (64, 256)], 4, 6, device="cpu")
    assert seconds > 0 and "3 matrices" in line and "timed on one 256×64 matrix" in line
    svd_seconds, svd_line = sg.pair_singular_estimate([(64, 64)], 3, 3, solver="svd", device="cpu")
    assert svd_seconds > 0 and "6 SVDs per matrix" in svd_line
    assert sg.pair_singular_estimate([], 4, 6)[0] == 0.0


MEMORY_SCRIPT = """
    import sys
    folder = sys.argv[1]
    vectors = [fmv.TaskVector.from_states(f"{folder}/pre.safetensors", f"{folder}/ft{t}.safetensors", name=f"t{t}")
               for t in range(4)]
    from freqmerge_viz.singular import pair_singular_interference
    warm = [fmv.TaskVector.from_tensors({"w": torch.randn(64, 32)}, name=f"w{t}") for t in range(4)]
    pair_singular_interference(warm, device="cpu", estimate=False)  # libraries loaded before the measure
    measure(lambda: pair_singular_interference(vectors, device="cpu", estimate=False))
"""


def test_memory_is_one_keys_work_whatever_the_number_of_keys(tmp_path):
    # 4 tasks, keys of 1024×512 float32 (one "unit", 2 MB): one key's work is its float64 stack
    # (8 units), the 4 Gram matrices (n × n float64, n = 512: 4 units), their batched eigh (input
    # copy, vectors, workspace) and top vectors, then 2 pairs' cross and merged Gram matrices at a
    # time (measured: about 29 units); it does not grow with the keys
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    unit = write_matrix_models(small, layers=1, k=4)
    write_matrix_models(large, layers=6, k=4)
    few, many = peak_over_start(MEMORY_SCRIPT, small), peak_over_start(MEMORY_SCRIPT, large)
    assert many < few + 3 * unit, (few / unit, many / unit)
    assert many < 32 * unit < 48 * unit, many / unit  # 48 units: the 12 keys' task matrices
