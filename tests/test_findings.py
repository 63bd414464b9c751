"""The README's findings are written from a figures run's CSV tables (freqmerge_viz.findings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from freqmerge_viz import figures, findings
from freqmerge_viz.cli import main
from freqmerge_viz.errors import FreqMergeError

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ROOT / "docs" / "findings.json"
QUICK_NUMBERS = ROOT / "docs" / "findings_quick.json"


def test_the_readme_findings_are_the_rendering_of_the_recorded_run():
    """docs/findings.json holds the numbers of the full run the README quotes (written by
    `freqmerge-viz findings OUT --json docs/findings.json --readme README.md`); the README's block
    is exactly their rendering, so no sentence can outlive its numbers."""
    numbers = json.loads(NUMBERS.read_text(encoding="utf-8"))
    assert numbers["run"]["quick"] is False
    assert set(numbers) - {"run"} == set(findings.EXTRACTORS), "the recorded run lacks a topic"
    assert findings.readme_block(ROOT / "README.md") == findings.render(numbers)


@pytest.fixture(scope="module")
def quick_run(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("findings_quick")
    figures.write_all(zoo, out, quick=True, formats=("png",))
    return out


def test_a_fresh_quick_run_gives_numbers_equal_to_its_csvs(quick_run):
    numbers = findings.extract(quick_run)
    assert set(numbers) == {"run", *findings.EXTRACTORS}
    assert numbers["run"]["quick"] is True
    table1 = pd.read_csv(quick_run / "table1" / "table1.csv").set_index("label")
    assert numbers["table1"]["fr_kept_pct"] == round(100 * table1.loc["FR", "kept_fraction"], 1)
    assert numbers["table1"]["change_pct"]["TIES"] == round(table1.loc["TIES", "change_all_pct"])
    sweep = pd.read_csv(quick_run / "cutoff_sweep" / "cutoff_sweep.csv")
    ideal0 = sweep[(sweep["kind"] == "ideal") & (sweep["cutoff"] == 0)]
    assert numbers["cutoff_sweep"]["points"]["ideal@0"]["pct"] == round(100 * ideal0["accuracy_fraction"].mean(), 1)
    markdown = findings.render(numbers)
    assert markdown.count("\n- ") == len(findings.RENDERERS)
    assert f"keeps {numbers['table1']['fr_kept_pct']}% of the bins" in markdown
    assert "(--quick)" in markdown


def test_the_code_still_gives_the_recorded_numbers(quick_run):
    """A fresh quick run gives the numbers recorded in docs/findings_quick.json (times aside). When
    a change alters what the figures compute, this fails: re-run `freqmerge-viz figures --quick`
    and `freqmerge-viz findings OUT --json docs/findings_quick.json`, and the full run that writes
    the README's findings (`freqmerge-viz figures`, then `findings out --json docs/findings.json
    --readme README.md`), so that the README never quotes numbers the code no longer gives."""
    recorded = json.loads(QUICK_NUMBERS.read_text(encoding="utf-8"))
    assert findings.deterministic(findings.extract(quick_run)) == findings.deterministic(recorded)


def test_standard_error_by_hand():
    # two tasks at 0.5 and 0.9 on 100 and 400 images: sqrt(0.25/100 + 0.09/400) / 2 = 0.02610
    frame = pd.DataFrame({"accuracy_fraction": [0.5, 0.9], "n_images": [100, 400]})
    value = findings._mean_with_se(frame)
    assert value == {"pct": 70.0, "se": round(100 * math.sqrt(0.0025 + 0.000225) / 2, 1), "images": 100, "tasks": 2}
    assert value["se"] == 2.6


def _router_folder(tmp_path: Path, rows) -> Path:
    (tmp_path / "router_robustness").mkdir(parents=True)
    pd.DataFrame(rows, columns=["method", "p", "task", "accuracy_fraction", "n_images"]).to_csv(
        tmp_path / "router_robustness" / "router_robustness.csv", index=False)
    (tmp_path / "index.json").write_text(json.dumps({"study": "s", "quick": False,
                                                     "topics": {"router_robustness": {"seconds": 1.0}}}))
    return tmp_path


def test_free_is_ahead_only_where_it_beats_every_other_method(tmp_path):
    rows = [(m, p, t, acc, 100) for m, accs in {"FREE": (0.6, 0.6, 0.6), "EMR": (0.5, 0.7, 0.9)}.items()
            for p, acc in zip((0.0, 0.5, 1.0), accs) for t in ("a", "b")]
    numbers = findings.extract(_router_folder(tmp_path, rows))
    assert numbers["router_robustness"]["free_ahead_up_to_p"] == 0.0
    text = findings.render(numbers)
    assert "FREE from 60.0% (router always right) to 60.0% (always wrong)" in text
    assert "right on 0% of inputs or fewer" in text


def test_negative_numbers_get_minus_signs_and_words_keep_hyphens():
    assert findings._minus_signs("r = -0.82, 2-core, blocks.1-2, (-1.00 to -0.99)") == \
        "r = −0.82, 2-core, blocks.1-2, (−1.00 to −0.99)"


def test_update_readme_replaces_only_the_block_and_refuses_a_file_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{findings.START}\nold\n{findings.END}\ntail\n", encoding="utf-8")
    assert findings.update_readme(readme, "new\n") is True
    assert readme.read_text(encoding="utf-8") == f"head\n{findings.START}\nnew\n{findings.END}\ntail\n"
    assert findings.update_readme(readme, "new\n") is False
    assert findings.readme_block(readme) == "new\n"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(FreqMergeError, match="bare.md has no"):
        findings.update_readme(bare, "x")


def test_cli_writes_json_and_readme(quick_run, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"{findings.START}\n{findings.END}\n", encoding="utf-8")
    assert main(["findings", str(quick_run), "--json", str(tmp_path / "n.json"), "--readme", str(readme)]) == 0
    numbers = json.loads((tmp_path / "n.json").read_text(encoding="utf-8"))
    assert findings.readme_block(readme) == findings.render(numbers)
    assert main(["findings", str(tmp_path / "nothing")]) == 2
    assert "holds no index.json" in capsys.readouterr().err


def test_profile_shapes_by_hand():
    from freqmerge_viz.analysis import profile_shapes

    profiles = pd.DataFrame({"key": ["k"] * 3 + ["flat"] * 3, "task": ["t"] * 6,
                             "radius": [0.5, 0.1, 0.9] * 2, "amplitude": [2.0, 1.0, 3.0, 4.0, 4.0, 4.0]})
    shapes = profile_shapes(profiles).set_index("key")
    # k: shells 1, 2, 3 by radius; mean 2
    assert shapes.loc["k", ["deviation", "dc_over_mean", "corner_over_dc"]].tolist() == [0.5, 0.5, 3.0]
    assert shapes.loc["flat", ["deviation", "dc_over_mean", "corner_over_dc"]].tolist() == [0.0, 1.0, 1.0]
