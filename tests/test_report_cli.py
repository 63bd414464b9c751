"""The main job and the command line, end to end on the synthetic set."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.analysis import FilterSetting, interference_table
from freqmerge_viz.cli import COMMANDS, main
from freqmerge_viz.synthetic import make_model_set


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", "--synthetic", "--out", str(out), "--tasks", "3", "--cutoffs", "0.1", "0.3",
                 "--formats", "png", "--device", "cpu"]) == 0
    return out


def test_report_writes_tables_figures_and_json(report_dir):
    for name in ("report.json", "report.md", "interference.csv", "interference.png", "spectra.png",
                 "radial_profiles.png", "radial_profiles.html", "cosine_similarity.csv",
                 "sign_conflicts.csv", "low_frequency_energy.csv", "radial_profiles.csv"):
        assert (report_dir / name).stat().st_size > 0, name
    assert not list(report_dir.glob(".*tmp*")), "temporary files left behind"
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["tasks"] == ["task0", "task1", "task2"]
    assert summary["keys_skipped"] == {"pos_embed_index": "not floating point (torch.int64 / torch.int64)"}
    assert [r["setting"] for r in summary["interference"]] == ["unfiltered", "paper ρ≥0.1", "paper ρ≥0.3",
                                                                 "official ratio 0.7"]


def test_report_numbers_match_a_direct_computation(report_dir):
    paths = {p.stem: p for p in (report_dir / "synthetic").glob("*.safetensors")}
    vectors = [fmv.TaskVector.from_states(paths["pretrained"], paths[f"task{k}"]) for k in range(3)]
    table = pd.read_csv(report_dir / "interference.csv")
    direct = fmv.amplitude_variance(vectors).mean
    assert table.loc[0, "all_bins"] == pytest.approx(direct, rel=1e-5)
    spec = fmv.FilterSpec(0.1)
    filtered = fmv.amplitude_variance(vectors, transform=lambda s, k: fmv.filter_stack(s, spec)).mean
    assert table.loc[1, "all_bins"] == pytest.approx(filtered, rel=1e-5)
    assert table.loc[1, "change_all_pct"] == pytest.approx(100 * (filtered / direct - 1), rel=1e-4)


def test_ideal_filter_leaves_kept_bins_unchanged_but_soft_filters_do_not(report_dir):
    table = pd.read_csv(report_dir / "interference.csv").set_index("setting")
    assert table["change_kept_pct"].drop("official ratio 0.7").abs().max() < 1e-3
    # the authors' filter counts its ring d = min(H, W)//10 twice (docs/methods.md): gain 2 there
    assert 1e-3 < abs(table.loc["official ratio 0.7", "change_kept_pct"]) < 1.0
    vectors = [fmv.TaskVector.from_tensors(s) for s in make_model_set(3, seed=1).finetuned.values()]
    rows = interference_table(vectors, [FilterSetting("gauss", fmv.FilterSpec(0.1, kind="gaussian")),
                                        FilterSetting("once", fmv.FilterSpec(0.7, convention="official", ring="once"))])
    assert rows.loc[1, "change_kept_pct"] < -1.0
    assert abs(rows.loc[2, "change_kept_pct"]) < 1e-3


def test_synthetic_set_is_deterministic_and_plants_low_frequency_differences():
    a, b = make_model_set(3, seed=5), make_model_set(3, seed=5)
    assert all(torch.equal(a.finetuned["task2"][k], b.finetuned["task2"][k]) for k in a.pretrained)
    vectors = [fmv.TaskVector.from_states(a.pretrained, s) for s in a.finetuned.values()]
    low = fmv.amplitude_variance(vectors, within=fmv.FilterSpec(0.1, band="low")).mean
    high = fmv.amplitude_variance(vectors, within=fmv.FilterSpec(0.3)).mean
    assert low > 10 * high


def test_inspect_reads_no_tensor_data(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    fmv.save_state({"w": torch.ones(3, 4), "b": torch.zeros(2, dtype=torch.float16)}, path)
    assert main(["inspect", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["keys"]
    assert {r["key"]: (r["shape"], r["dtype"]) for r in rows} == {"w": ([3, 4], "float32"),
                                                                 "b": ([2], "float16")}


def test_interference_command_prints_json(tmp_path, capsys):
    paths = make_model_set(2, seed=0, width=8, depth=1).save(tmp_path)
    assert main(["interference", "--pretrained", str(paths["pretrained"]), "--finetuned",
                 str(paths["task0"]), str(paths["task1"]), "--cutoff", "0.2", "--device", "cpu",
                 "--include", "*attn*"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tasks"] == ["task0", "task1"]
    assert result["rows"][1]["all_bins"] < result["rows"][0]["all_bins"]


def test_input_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    paths = make_model_set(2, seed=0, width=8, depth=1).save(tmp_path)
    code = main(["interference", "--pretrained", str(paths["pretrained"]), "--finetuned",
                 str(paths["task0"]), "--cutoff", "1.5"])
    assert code == 2
    assert "normalized cutoff lies in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_subcommand_has_help(command):
    args = [sys.executable, "-m", "freqmerge_viz"] + ([command] if command else []) + ["--help"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: freqmerge-viz" in result.stdout


def test_figures_command_writes_every_format_and_an_index(tmp_path, capsys):
    from freqmerge_viz.figures import INDEX, TOPICS

    assert main(["figures", "--quick", "--only", "table1", "--out", str(tmp_path)]) == 0
    index = json.loads((tmp_path / INDEX).read_text())
    files = index["topics"]["table1"]["files"]
    assert {name.rsplit(".", 1)[1] for name in files} >= {"png", "svg", "html", "csv"}
    for name in files:
        assert (tmp_path / name).stat().st_size > 0
    assert "table1" in capsys.readouterr().out
    assert main(["figures", "--only", "nonsense", "--out", str(tmp_path)]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert len(TOPICS) == 13
