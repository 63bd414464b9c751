"""The benchmarks run end to end at quick sizes; their JSON has the promised keys and types,
and the reference computations they time agree with the toolkit (timings are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.benchmarks import filter as filter_bench
from freqmerge_viz.benchmarks import stream as stream_bench
from freqmerge_viz.cli import main as cli_main
from freqmerge_viz.spectral import FilterSpec, apply_filter

ROOT = Path(__file__).resolve().parents[1]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def filter_result():
    return filter_bench.run(quick=True, repeats=1, device="cpu")


@pytest.fixture(scope="module")
def stream_result():
    return stream_bench.run(quick=True, device="cpu")


def test_filter_benchmark_json(filter_result):
    result = json.loads(json.dumps(filter_result))
    for key in ("fr_s", "reference_s", "task_arithmetic_s", "reference_over_fr", "fr_over_task_arithmetic",
                "filter_auto_s", "filter_fft_s", "reference_max_relative_difference"):
        assert _is_number(result[key]) and result[key] >= 0, key
    assert result["device"] == "cpu" and result["k"] == 8 and result["layers"] == 2
    assert result["shapes"] == {"attn.in_proj_weight": [2304, 768], "attn.out_proj.weight": [768, 768],
                                "mlp.c_fc.weight": [3072, 768], "mlp.c_proj.weight": [768, 3072]}
    assert result["parameters"] == 2 * (2304 * 768 + 768 * 768 + 3072 * 768 + 768 * 3072)
    assert result["reference_over_fr"] == pytest.approx(result["reference_s"] / result["fr_s"])
    assert result["fr_over_task_arithmetic"] == pytest.approx(result["fr_s"] / result["task_arithmetic_s"])
    assert set(result["filter_paths"].values()) <= {"fft", "lowband"}
    assert all(isinstance(v, bool) for v in result["targets_met"].values())


def test_filter_benchmark_reference_agrees_with_the_toolkit(filter_result):
    assert filter_result["reference_keys_checked"] == 8
    assert filter_result["reference_max_relative_difference"] < 1e-4


def test_reference_filter_is_the_paper_high_pass():
    # a small, odd and even case, against the toolkit's full-spectrum path in float64
    for shape in [(6, 10), (9, 7), (32, 24)]:
        x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape)))
        expected = apply_filter(x, FilterSpec(0.3), path="fft")
        torch.testing.assert_close(filter_bench.reference_filter(x, 0.3), expected, rtol=0, atol=1e-12)


def test_reference_merge_equals_the_toolkit_merge_on_a_small_case():
    shapes = {"visual.transformer.resblocks.0.attn.in_proj_weight": (24, 8),
              "visual.transformer.resblocks.0.mlp.c_fc.weight": (15, 9)}
    pretrained, vectors = filter_bench.synthetic_states(shapes, k=3, seed=1)
    merged = fmv.merge("fr", pretrained, [fmv.TaskVector.from_tensors(v) for v in vectors])
    coefficients = filter_bench.reference_coefficients(vectors)
    assert sum(coefficients) == pytest.approx(1.0) and len(set(coefficients)) == 3
    for key in shapes:
        expected = filter_bench.reference_merge_key(pretrained, vectors, key, coefficients)
        torch.testing.assert_close(merged[key], expected, rtol=0, atol=1e-7)
        assert not torch.allclose(expected, pretrained[key] + sum(c * v[key] for c, v in zip(coefficients, vectors)))


def test_clip_shapes_use_the_attn_mlp_names():
    shapes = filter_bench.clip_b32_shapes(12)
    assert len(shapes) == 48
    assert shapes["visual.transformer.resblocks.11.attn.in_proj_weight"] == (2304, 768)
    assert shapes["visual.transformer.resblocks.3.mlp.c_proj.weight"] == (768, 3072)
    assert all(("attn" in key or "mlp" in key) and "weight" in key for key in shapes)


def test_stream_benchmark_json(stream_result):
    result = json.loads(json.dumps(stream_result))
    for key in ("fr_gbps", "copy_gbps", "peak_rss_mb", "copy_peak_rss_mb", "input_gb", "output_gb", "fr_s",
                "copy_s", "generate_s", "fr_over_copy_throughput"):
        assert _is_number(result[key]) and result[key] > 0, key
    assert result["checkpoints"] == 4 and result["dtype"] == "float16"
    assert result["fr_gbps"] == pytest.approx(result["input_gb"] / result["fr_s"])
    assert "model.safetensors.index.json" in result["output_files"] and "merge.json" in result["output_files"]
    assert sum(name.endswith(".safetensors") for name in result["output_files"]) > 1
    assert result["peak_rss_mb"] > 10 and result["workdir"] is None
    assert all(isinstance(v, bool) for v in result["targets_met"].values())


def test_stream_benchmark_output_is_the_in_memory_merge(stream_result):
    assert stream_result["keys_checked"] == len(stream_bench.llm_shapes(2, 64, 96, 128))
    assert stream_result["max_abs_difference_vs_in_memory_merge"] <= 1e-3


def test_stream_checkpoints_are_sharded_and_reproducible(tmp_path):
    shapes = stream_bench.llm_shapes(1, 16, 24, 32)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (16, 24)
    written = fmv.save_state(stream_bench.synthetic_checkpoint(shapes, 1), tmp_path / "a", max_shard_size="1KB")
    assert written[-1].name == "model.safetensors.index.json" and len(written) > 2
    again = stream_bench.synthetic_checkpoint(shapes, 1)
    base = stream_bench.synthetic_checkpoint(shapes, 0)
    loaded = fmv.load_state(tmp_path / "a")
    for key in shapes:
        assert loaded.dtype_of(key) == torch.float16
        assert torch.equal(loaded[key], again[key])
        delta = (loaded[key].float() - base[key].float()).abs().max()
        assert 0 < float(delta) < 0.01


def test_stream_workdir_is_cleaned_up(tmp_path):
    stream_bench.run(quick=True, workdir=tmp_path, layers=1, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_cli_bench_runs_a_benchmark_and_rejects_unknown_names(capsys, tmp_path):
    assert cli_main(["bench", "stream", "--quick", "--layers", "1", "--workdir", str(tmp_path), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["benchmark"] == "stream" and printed["sizes"]["layers"] == 1
    assert cli_main(["bench", "no_such_benchmark"]) == 2
    error = capsys.readouterr().err
    assert "no_such_benchmark" in error and "filter" in error and "stream" in error


def test_bench_scripts_run_from_the_repository_root(tmp_path):
    result = subprocess.run([sys.executable, "bench/stream.py", "--quick", "--layers", "1", "--workdir", str(tmp_path),
                             "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["benchmark"] == "stream"
    help_text = subprocess.run([sys.executable, "bench/filter.py", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0 and "--quick" in help_text.stdout


def test_calibration_fits_every_plan_and_keeps_the_thread_setting():
    threads = torch.get_num_threads()
    spec = FilterSpec(0.1)
    result = filter_bench.calibrate(shapes=[(64, 48)], specs=[spec], repeats=1, threads=1, details=True)
    assert torch.get_num_threads() == threads and result["threads"] == 1
    assert len(result["samples"]) == 1 + len(fmv.spectral.lowband_plans((64, 48), spec))
    assert set(result["constants"]) == {"fft", "strided_fft", "matmul", "entry", "call"}
    assert all(value > 0 for value in result["constants"].values())
    choice = result["choices"][0]
    assert result["cases"] == 1 and 0 < choice["fastest_s"] <= choice["chosen_s"]


def test_mergekit_benchmark_runs_the_toolkit_and_says_why_mergekit_was_skipped(monkeypatch, tmp_path):
    """Without mergekit the benchmark still merges (a tiny GPT-2-shaped sharded model) and says
    in its JSON why the comparison did not run."""
    import shutil

    from freqmerge_viz.benchmarks import mergekit

    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = mergekit.run(quick=True, k=2, keep=str(tmp_path))
    assert result["mergekit"].startswith("skipped: mergekit-yaml is not on PATH")
    for method in ("task_arithmetic", "ties"):
        assert result["methods"][method]["toolkit"]["seconds"] > 0
        assert result["methods"][method]["toolkit"]["peak_rss_mb"] > 0
    assert mergekit.gpt2_shapes(1, 8, 10, 4)["transformer.h.0.attn.c_attn.weight"] == (8, 24)


def test_methods_benchmark_times_every_plain_method_against_task_arithmetic():
    from freqmerge_viz.benchmarks.methods import run

    result = run(quick=True, k=3, repeats=1, device="cpu", methods=["ties", "tsv", "wudi"])
    assert set(result["methods"]) == {"task_arithmetic", "ties", "tsv", "wudi"}
    assert result["methods"]["task_arithmetic"]["over_task_arithmetic"] == 1.0
    assert all(row["seconds"] > 0 for row in result["methods"].values())
    everything = run(quick=True, k=2, repeats=1, device="cpu")
    plain = {m for m in fmv.list_methods() if not fmv.get_method(m).routed}
    assert set(everything["methods"]) == plain


def test_stream_single_file_output_equals_the_in_memory_merge(tmp_path):
    result = stream_bench.run(quick=True, workdir=tmp_path, layers=1, device="cpu", single_file=True)
    assert result["single_file"] and result["output_files"] == ["merged.safetensors", "merged.merge.json"]
    assert result["max_abs_difference_vs_in_memory_merge"] == 0.0 and result["output_gb"] > 0
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- floors
def test_filter_benchmark_reports_its_floors_and_they_equal_the_toolkit(filter_result):
    result = json.loads(json.dumps(filter_result))
    for prefix in ("fr", "fr_official", "task_arithmetic", "fr_files", "task_arithmetic_files"):
        assert _is_number(result[f"{prefix}_floor_s"]) and result[f"{prefix}_floor_s"] > 0, prefix
        toolkit = result[f"{prefix}_s"]
        assert result[f"{prefix}_x_floor"] == pytest.approx(toolkit / result[f"{prefix}_floor_s"]), prefix
    assert set(result["fr_floor_stages_s"]) == {"lambda", "sum", "filter"}
    assert sum(result["fr_floor_stages_s"].values()) <= result["fr_floor_s"] * 1.01
    assert set(result["floor_max_relative_difference"]) == {"fr", "official", "task_arithmetic"}
    assert max(result["floor_max_relative_difference"].values()) < 1e-5
    assert max(result["files_floor_max_relative_difference"].values()) < 1e-5
    assert {"fr_at_most_1.15_floor", "fr_official_at_most_1.3_floor"} <= set(result["targets_met"])


def test_floor_masks_are_the_toolkits_half_masks():
    for shape in [(24, 8), (9, 7), (768, 3072), (33, 64)]:
        torch.testing.assert_close(filter_bench.floor_paper_half_mask(*shape, 0.1, "cpu"),
                                   FilterSpec(0.1).half_mask(shape), rtol=0, atol=0)
        torch.testing.assert_close(filter_bench.floor_official_half_mask(*shape, 0.7, "cpu"),
                                   FilterSpec(0.7, convention="official").half_mask(shape), rtol=0, atol=0)


def test_floor_merges_equal_the_toolkit_on_a_small_case():
    shapes = {"visual.transformer.resblocks.0.attn.in_proj_weight": (24, 8),
              "visual.transformer.resblocks.0.mlp.c_fc.weight": (15, 9)}
    pretrained, vectors = filter_bench.synthetic_states(shapes, k=3, seed=2)
    tvs = [fmv.TaskVector.from_tensors(v) for v in vectors]
    cases = {"fr": (fmv.merge("fr", pretrained, tvs), filter_bench.floor_fr_paper(pretrained, vectors)),
             "official": (fmv.merge("fr", pretrained, tvs, preset="official"),
                          filter_bench.floor_fr_official(pretrained, vectors)),
             "task_arithmetic": (fmv.merge("task_arithmetic", pretrained, tvs),
                                 filter_bench.floor_task_arithmetic(pretrained, vectors))}
    for name, (merged, floor) in cases.items():
        for key in shapes:
            torch.testing.assert_close(merged[key], floor[key], rtol=0, atol=1e-7, msg=f"{name} {key}")


def test_stream_benchmark_reports_its_floor(stream_result):
    result = json.loads(json.dumps(stream_result))
    assert _is_number(result["floor_s"]) and result["floor_s"] > 0 and result["floor_peak_rss_mb"] > 0
    assert result["fr_x_floor"] == pytest.approx(result["fr_s"] / result["floor_s"])
    assert result["copy_x_floor"] == pytest.approx(result["copy_s"] / result["floor_s"])
    assert result["floor_max_abs_difference"] <= 1e-3  # float16 outputs: a unit in the last place at most


def test_interference_in_memory_floor_equals_the_toolkit():
    from freqmerge_viz.benchmarks import interference

    result = json.loads(json.dumps(interference.run_in_memory(quick=True, k=3, repeats=1, device="cpu")))
    assert result["benchmark"] == "interference --in-memory" and result["k"] == 3 and result["layers"] == 1
    for name in ("toolkit", "floor", "plain", "interference_table"):
        assert _is_number(result[f"{name}_s"]) and result[f"{name}_s"] > 0, name
    assert result["toolkit_x_floor"] == pytest.approx(result["toolkit_s"] / result["floor_s"])
    assert result["floor_relative_difference"] < 1e-5 and result["plain_relative_difference"] < 1e-5
    assert result["interference_table_unfiltered"] == pytest.approx(result["unfiltered"], rel=1e-5)
    assert set(result["targets_met"]) == {"toolkit_at_most_1.2_floor", "toolkit_no_slower_than_plain"}


def test_interference_floor_equals_amplitude_variance_in_float64():
    from freqmerge_viz.benchmarks import interference

    g = torch.Generator().manual_seed(3)
    for shape in [(6, 10), (9, 7), (1, 5), (16, 16)]:
        vectors = [{"w": torch.randn(shape, dtype=torch.float64, generator=g)} for _ in range(4)]
        expected = fmv.amplitude_variance(vectors, device="cpu").mean
        assert interference.floor_amplitude_variance(vectors) == pytest.approx(expected, rel=1e-12)
        assert interference.naive_amplitude_variance(vectors) == pytest.approx(expected, rel=1e-12)


def test_interference_from_files_reports_its_floor(tmp_path):
    from freqmerge_viz.benchmarks import interference

    result = json.loads(json.dumps(interference.run(quick=True, k=2, device="cpu", workdir=tmp_path)))
    assert _is_number(result["floor_s"]) and result["floor_s"] > 0
    assert result["toolkit_x_floor"] == pytest.approx(result["toolkit_s"] / result["floor_s"])
    assert result["floor_relative_difference"] < 1e-5
    assert list(tmp_path.iterdir()) == []


def test_methods_benchmark_states_each_methods_floor():
    from freqmerge_viz.benchmarks.methods import FLOORS, NO_FLOOR, run

    result = run(quick=True, k=3, repeats=1, device="cpu", methods=["fr", "weight_averaging", "ties"])
    for name, row in result["methods"].items():
        if name in FLOORS:
            assert row["floor_seconds"] > 0 and row["x_floor"] > 0 and row["floor"]
            assert row["floor_max_relative_difference"] < 1e-5, name
        else:
            assert row["floor"] is None and row["x_floor"] is None and row["floor_reason"].startswith("no ")
    plain = {m for m in fmv.list_methods() if not fmv.get_method(m).routed}
    assert plain == set(FLOORS) | set(NO_FLOOR) and not set(FLOORS) & set(NO_FLOOR)


def test_mergekit_benchmark_times_the_task_arithmetic_floor(monkeypatch, tmp_path):
    import shutil

    from freqmerge_viz.benchmarks import mergekit

    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = mergekit.run(quick=True, k=2, keep=str(tmp_path))
    entry = result["methods"]["task_arithmetic"]
    assert entry["floor"]["seconds"] > 0 and entry["x_floor"] > 0
    assert entry["floor_outputs"]["max_difference_relative_to_delta"] <= 1e-6
    assert result["methods"]["ties"]["floor"] is None and result["methods"]["ties"]["floor_reason"]


def test_landscape_and_slider_benchmarks_report_floor_fields():
    from freqmerge_viz.benchmarks import landscape, slider

    result = landscape.run(quick=True, grid=3, limit=16, threads=1)
    assert result["floor_s"] > 0 and result["x_floor"] > 0 and result["loop_x_floor"] > 0
    assert result["floor_max_accuracy_difference"] == 0.0
    moved = slider.run(quick=True, n=2)
    assert moved["floor"] is None and moved["x_floor"] is None and "filter" in moved["floor_reason"]


def test_study_benchmark_reports_floor_fields(tmp_path):
    pytest.importorskip("open_clip")
    from freqmerge_viz.benchmarks.study import run

    result = run(quick=True, k=2, images=8, workdir=tmp_path / "work")
    assert result["merge"]["floor"] is None and result["merge"]["x_floor"] is None
    assert "toolkit" in result["merge"]["floor_reason"]
    evaluation = result["evaluation"]
    assert evaluation["floor_seconds"] > 0 and evaluation["x_floor"] > 0 and evaluation["floor"]


def test_singular_benchmark_quick_json_and_agreement():
    from freqmerge_viz.benchmarks import singular as singular_bench

    result = json.loads(json.dumps(singular_bench.run(quick=True, device="cpu")))
    assert result["benchmark"] == "singular" and result["threads"] == 1 and result["device"] == "cpu"
    assert result["tasks"] == 4 and result["pairs"] == 6 and result["matrices"] == 11
    for name in ("toolkit", "floor"):
        assert _is_number(result[f"{name}_tower_s"]) and result[f"{name}_tower_s"] > 0
    for name in ("toolkit", "floor", "toolkit_svd", "floor_svd", "old"):
        for part in ("layer", "extras"):
            assert _is_number(result[f"{name}_{part}_s"]) and result[f"{name}_{part}_s"] > 0
        assert result[f"{name}_tower_estimate_s"] == pytest.approx(
            2 * result[f"{name}_layer_s"] + result[f"{name}_extras_s"])
    assert result["toolkit_x_floor"] == pytest.approx(result["toolkit_tower_s"] / result["floor_tower_s"])
    assert result["old_over_toolkit"] == pytest.approx(result["old_tower_estimate_s"] / result["toolkit_tower_s"])
    assert result["estimate_s"] > 0 and result["estimate_line"].startswith("estimate: pair singular measures of 11")
    assert len(result["load_average_start"]) == 3 and len(result["load_average_end"]) == 3
    # every computation gives the old per-pair loop's numbers (float32 data: the Gram path to 1e-5)
    differences = result["max_relative_difference"]
    assert result["reference"] == "old"
    assert differences["toolkit_svd"] < 1e-12 and differences["floor_svd"] < 1e-12
    assert differences["toolkit"] < 1e-4 and differences["floor"] < 1e-4
    assert differences["toolkit_tower_vs_floor"] < 1e-9
    assert set(result["pair_means"]) == {"t0-t1", "t0-t2", "t0-t3", "t1-t2", "t1-t3", "t2-t3"}
    storage = result["svd_expert_storage"]
    assert storage["equal"] and storage["ranks"] == 32 and storage["matrices"] == result["matrices"]
    assert storage["seconds"] > 0 and storage["floor_seconds"] > 0


def test_svd_storage_at_every_rank_equals_the_per_rank_count():
    import numpy as np

    from freqmerge_viz.benchmarks.singular import floor_svd_storage, tower_shapes
    from freqmerge_viz.experts import svd_storage, svd_storage_by_ranks

    shapes = list(tower_shapes(layers=1).values()) + [(768,), ()]
    ranks = list(range(1, 800, 7))
    assert svd_storage_by_ranks(shapes, ranks) == [svd_storage(shapes, r) for r in ranks]
    assert floor_svd_storage(shapes, np.asarray(ranks)).tolist() == [svd_storage(shapes, r) for r in ranks]


def test_singular_floors_equal_the_old_loop_in_float64():
    from freqmerge_viz.benchmarks import singular as singular_bench

    shapes = {"a": (12, 7), "b": (6, 15), "c": (5, 2, 2, 2)}
    g = torch.Generator().manual_seed(0)
    raw = [{key: torch.randn(shape, dtype=torch.float64, generator=g) for key, shape in shapes.items()}
           for _ in range(3)]
    vectors = [fmv.TaskVector.from_tensors(v, name=f"t{i}") for i, v in enumerate(raw)]
    old = singular_bench.old_loop(vectors, list(shapes), torch.device("cpu"))
    assert singular_bench.max_relative_difference(singular_bench.floor_svd(raw, list(shapes), torch.device("cpu")),
                                                  old) < 1e-12
    assert singular_bench.max_relative_difference(singular_bench.floor_gram(raw, list(shapes), torch.device("cpu")),
                                                  old) < 1e-10
    assert singular_bench.max_relative_difference(singular_bench.toolkit(vectors, list(shapes), torch.device("cpu")),
                                                  old) < 1e-10


def test_singular_tower_shapes_are_vit_b32s_visual_matrices():
    from freqmerge_viz.benchmarks import singular as singular_bench

    shapes = singular_bench.tower_shapes()
    assert len(shapes) == 51 and shapes["visual.conv1.weight"] == (768, 3, 32, 32)
    assert shapes["visual.positional_embedding"] == (50, 768) and shapes["visual.proj"] == (768, 512)
    assert {k: v for k, v in shapes.items() if ".resblocks." in k} == filter_bench.clip_b32_shapes(12)
