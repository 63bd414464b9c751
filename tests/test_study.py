"""Studies: a study file of each built-in kind opens with every check before any model runs,
every figure topic runs on a study that is not the zoo, and the comparison, the explorers and
the command line take one (the open_clip and transformers kinds: test_study_clip.py,
test_study_text.py)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import freqmerge_viz as fmv
from freqmerge_viz.engine import evaluate_params
from freqmerge_viz.errors import FreqMergeError, ParameterError, StudySpecError
from freqmerge_viz.study import FunctionalStudy, as_study, evaluate_on_study, kind_table, load_study
from freqmerge_viz.topics import TOPICS

sys.path.insert(0, str(Path(__file__).parent))
from study_support import tiny_study  # noqa: E402

SUPPORT = Path(__file__).parent / "study_support.py"


def study_file(folder: Path, text: str, name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny():
    return tiny_study(tasks=4, per_split=24)


def test_a_python_study_file_runs_every_topic(tmp_path):
    from freqmerge_viz.figures import write_all

    path = study_file(tmp_path, f"kind: python\nname: my-mlp\nfunction: {SUPPORT}:tiny_study\n"
                                "args: {tasks: 3, per_split: 24}\nlimit: 16\n")
    study = load_study(path)
    assert study.name == "my-mlp" and study.default_limit == 16 and study.source_path == str(path.resolve())
    index = write_all(path, tmp_path / "out", quick=True, formats=("png",))
    assert index["study"] == "my-mlp" and index["kind"] == "python"
    assert list(index["topics"]) == list(TOPICS)
    for topic, entry in index["topics"].items():
        assert entry["files"], topic
        assert all((tmp_path / "out" / f).is_file() for f in entry["files"])
    # every evaluated figure says what it rests on: the study and its samples per task and point
    sweep = (tmp_path / "out" / "cutoff_sweep" / "cutoff_sweep.html").read_text(encoding="utf-8")
    assert "my-mlp, 3 tasks, 16 test images per task and point" in sweep
    grid = (tmp_path / "out" / "generalisation" / "generalisation.csv")
    assert grid.is_file()


def test_topics_that_cannot_apply_say_why(tmp_path, tiny):
    from freqmerge_viz.figures import write_all

    one = FunctionalStudy(tiny.pretrained, {"task0": tiny.finetuned["task0"]}, tiny.data, tiny._forward,
                          name="single", thread_safe=True)
    index = write_all(one, tmp_path / "out", quick=True, formats=("png",),
                      topics=["spectra", "router_robustness", "landscape", "cutoff_sweep"])
    topics = index["topics"]
    assert "not_applicable" not in topics["spectra"] and "not_applicable" not in topics["cutoff_sweep"]
    assert "needs at least 2 tasks" in topics["router_robustness"]["not_applicable"]
    assert "'single' has 1" in topics["landscape"]["not_applicable"] and topics["landscape"]["files"] == []


def test_the_issue_repro_gets_a_clear_error_not_an_attribute_error(tiny):
    from freqmerge_viz.analysis.experts_curves import expert_curves

    with pytest.raises(ParameterError, match="FunctionalStudy"):
        expert_curves((tiny.pretrained, tiny.finetuned, lambda state: {}))
    with pytest.raises(ParameterError, match="expected a study"):
        as_study(42)


def test_every_analysis_the_issue_names_runs_on_a_study(tiny):
    from freqmerge_viz.analysis.correlation import pair_interference_table
    from freqmerge_viz.analysis.experts_curves import expert_curves
    from freqmerge_viz.analysis.generalisation import generalisation_matrix
    from freqmerge_viz.analysis.singular_views import pair_singular_table

    curves = expert_curves(tiny, kinds=("topk",), densities=(0.1, 1.0), limit=8)
    assert set(curves["task"]) == set(tiny.tasks)
    full = curves[curves["density"] == 1.0]
    # density 1 keeps the whole task vector: the expert is the fine-tuned model
    assert (full["accuracy"].to_numpy() == full["individual"].to_numpy()).all()
    matrix = generalisation_matrix(tiny, tasks=tiny.tasks[:2], limit=8)
    assert len(matrix) > 0
    assert len(pair_interference_table(tiny, tasks=tiny.tasks[:3], limit=8)) == 3
    assert len(pair_singular_table(tiny, tasks=tiny.tasks[:3], limit=8)) == 3


def test_the_comparison_on_a_study_without_probe_heads_or_features(tiny):
    from freqmerge_viz.analysis.compare import compare_methods, with_needs

    plain = FunctionalStudy(tiny.pretrained, tiny.finetuned, tiny.data, tiny._forward, name="plain")
    result = compare_methods(plain, with_needs(["task_arithmetic", "free_mlp_router"]), limit=8)
    assert list(result["methods"])[:2] == ["individual", "pretrained"]
    assert "free_mlp_router" not in result["methods"]
    assert "no pretrained features" in result["skipped"]["free_mlp_router"]
    assert result["samples"] == 8 and result["study"] == "plain"
    # the pretrained row is θ_pre with each task's own head, on the same samples
    pre = plain.task_accuracies(plain.pretrained, limit=8)
    assert result["methods"]["pretrained"]["per_task"] == pytest.approx(pre)


def test_evaluate_on_study_matches_a_plain_loop(tiny):
    merged = fmv.merge("task_arithmetic", tiny.pretrained, tiny.finetuned, scaling=0.3)
    table = evaluate_on_study(tiny, [merged, tiny.pretrained], split="val", limit=10)
    for task in tiny.tasks:
        x, y = tiny.data(task, "val")
        for index, state in enumerate([merged, tiny.pretrained]):
            logits = tiny._forward({k: state[k] for k in tiny.pretrained}, x[:10], task)
            row = table[(table["task"] == task) & (table["state"] == index)].iloc[0]
            assert row["accuracy"] == pytest.approx(float((logits.argmax(1) == y[:10]).float().mean()))
            assert row["loss"] == pytest.approx(float(F.cross_entropy(logits, y[:10])), rel=1e-5)


def test_token_labels_score_mean_token_loss_and_accuracy():
    torch.manual_seed(0)
    vocab, width = 11, 6
    params = {"embed": torch.randn(vocab, width), "out": torch.randn(vocab, width)}

    def forward(p, ids):
        return F.linear(p["embed"][ids], p["out"])

    ids = torch.randint(0, vocab, (5, 7))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    labels[0, :3] = -100
    states = [params, {k: v * 0.5 for k, v in params.items()}]
    for mode in ("loop", "vmap"):
        result = evaluate_params(forward, states, ids, labels, mode=mode, batch_size=2)
        for i, state in enumerate(states):
            logits = forward(state, ids)
            scored = labels != -100
            expected_loss = F.cross_entropy(logits[scored], labels[scored])
            expected_acc = (logits.argmax(-1)[scored] == labels[scored]).float().mean()
            assert result.loss[i] == pytest.approx(float(expected_loss), rel=1e-5)
            assert result.accuracy[i] == pytest.approx(float(expected_acc))
    with pytest.raises(ParameterError, match=r"logits \[N, T, vocabulary\]"):
        evaluate_params(lambda p, x: forward(p, x)[:, 0], states, ids, labels, mode="loop")


@pytest.mark.parametrize("text, field, words", [
    ("name: x\n", "kind", "is required"),
    ("kind: nonsense\n", "kind", "unknown study kind 'nonsense'"),
    ("kind: python\nfunction: m:f\nlimt: 3\n", "limt", "unknown field"),
    ("kind: python\n", "function", "is required"),
    ("kind: python\nfunction: no_colon_here\n", "function", "module:function"),
    ("kind: python\nfunction: missing_file.py:f\n", "function", "does not exist"),
    ("kind: python\nfunction: freqmerge_viz_no_such_module:f\n", "function", "cannot import module"),
    ("kind: python\nfunction: math:nope\n", "function", "has no function 'nope'"),
    ("kind: python\nfunction: math:sqrt\nargs: {x: 4}\n", "function", "math:sqrt(**args) raised TypeError"),
    ("kind: python\nfunction: math:pi\n", "function", "has no function 'pi'"),
    ("kind: python\nfunction: fractions:Fraction\n", "function", "returned a Fraction, not a Study"),
    ("kind: python\nfunction: m:f\nlimit: 0\n", "function", "cannot import"),
    ("kind: zoo\npath: no/such/zoo\n", "path", "does not exist"),
    ("kind: python\nfunction: [unclosed\n", "-", "not valid YAML at line 3"),
    ("- a list\n", "-", "must be a YAML mapping"),
])
def test_a_bad_study_file_names_the_file_and_the_field(tmp_path, text, field, words):
    path = study_file(tmp_path, text)
    with pytest.raises(StudySpecError) as caught:
        load_study(path)
    message = str(caught.value)
    assert str(path) in message and f"field {field!r}" in message and words in message, message
    assert isinstance(caught.value, FreqMergeError)


def test_a_python_study_limit_must_be_positive(tmp_path):
    path = study_file(tmp_path, f"kind: python\nfunction: {SUPPORT}:tiny_study\nargs: {{tasks: 2}}\nlimit: 0\n")
    with pytest.raises(StudySpecError, match="field 'limit': must be an integer >= 1"):
        load_study(path)


def test_a_missing_study_file_and_the_zoo_shortcuts(tmp_path):
    with pytest.raises(StudySpecError, match="study file does not exist"):
        load_study(tmp_path / "absent.yaml")
    zoo = load_study("zoo")
    assert zoo.kind == "zoo" and zoo.head_kinds == ("finetuned", "probe")
    assert as_study(zoo) is zoo
    assert zoo.backbone_keys()[0] == "cls_token" and math.prod(zoo.pretrained.shape_of("cls_token")) > 0
    path = study_file(tmp_path, "kind: zoo\n")
    assert load_study(path).tasks == zoo.tasks


def test_kind_table_lists_every_kind_and_field():
    table = kind_table()
    for kind in ("zoo", "python"):
        assert f"**`kind: {kind}`**" in table
    assert "| `function` | yes |" in table


def test_the_command_line_runs_figures_and_eval_on_a_study_file(tmp_path, capsys):
    from freqmerge_viz.cli import main

    path = study_file(tmp_path, f"kind: python\nname: cli-mlp\nfunction: {SUPPORT}:tiny_study\n"
                                "args: {tasks: 1, per_split: 16}\n")
    assert main(["figures", "--study", str(path), "--out", str(tmp_path / "out"), "--quick", "--formats", "png",
                 "--only", "table1", "cutoff_sweep"]) == 0
    out = capsys.readouterr()
    assert "table1" in out.out and "not applicable: topic 'table1' needs at least 2 tasks" in out.out
    assert (tmp_path / "out" / "cutoff_sweep" / "cutoff_sweep.csv").is_file()
    assert main(["eval", "--study", str(path), "--methods", "task_arithmetic", "--json", "--limit", "8"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["study"] == "cli-mlp" and result["samples"] == 8 and "task_arithmetic" in result["methods"]
    assert "estimate:" in out.err and "sample forward passes" in out.err
    assert main(["study", "show", str(path)]) == 0
    assert "study 'cli-mlp' (python): 1 tasks" in capsys.readouterr().out
    assert main(["figures", "--study", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o2")]) == 2
    assert "study file does not exist" in capsys.readouterr().err


def test_the_explorers_take_a_study(tiny):
    from freqmerge_viz.widgets import CutoffExplorer
    from freqmerge_viz.widgets.experts import ExpertExplorer
    from freqmerge_viz.widgets.landscape import LandscapeViewer

    cutoff = CutoffExplorer(tiny, eval_per_task=8, refine=False)  # its first estimate, not a refinement in flight
    merged = fmv.merge("fr", tiny.pretrained, tiny.finetuned, **cutoff.method_params())
    expected = tiny.task_accuracies(merged, split="val", limit=8)
    assert cutoff.shown()["accuracy"] == pytest.approx(expected)
    viewer = LandscapeViewer(tiny, grid=3, limit=8, refine=False)
    assert (viewer.values["task_a"], viewer.values["task_b"]) == ("task0", "task1")
    experts = ExpertExplorer(tiny, methods=("free",), kinds=("topk",), eval_per_task=8, ps=(0.0, 1.0))
    assert set(experts.shown()["expert_accuracy"]["topk"]) == set(tiny.tasks)


@pytest.mark.parametrize("kind", ["hf_classification", "causal_lm"])
def test_a_transformers_study_runs_every_topic(tmp_path, kind):
    pytest.importorskip("transformers")
    from text_support import make_text_study

    from freqmerge_viz.figures import write_all

    path = make_text_study(tmp_path, kind)
    index = write_all(path, tmp_path / "out", quick=True, formats=("png",))
    assert index["kind"] == kind and list(index["topics"]) == list(TOPICS)
    for topic, entry in index["topics"].items():
        assert entry["files"] and "not_applicable" not in entry, topic
    sweep = (tmp_path / "out" / "cutoff_sweep" / "cutoff_sweep.html").read_text(encoding="utf-8")
    unit = "token windows per task and point" if kind == "causal_lm" else "texts per task and point"
    assert unit in sweep


@pytest.mark.parametrize("heads, hf", [("files", False), ("zeroshot", False), ("linear_probe", True)])
def test_an_open_clip_study_runs_every_topic(tmp_path, heads, hf):
    from clip_support import import_open_clip, make_clip_study

    from freqmerge_viz.figures import write_all

    import_open_clip()
    path = make_clip_study(tmp_path, "tiny", heads=heads, hf=hf, tasks=3, per_class=6)
    index = write_all(path, tmp_path / "out", quick=True, formats=("png",))
    assert index["kind"] == "open_clip" and list(index["topics"]) == list(TOPICS)
    for topic, entry in index["topics"].items():
        assert entry["files"] and "not_applicable" not in entry, topic
    study = load_study(path)
    text_tower = ("transformer.", "model.transformer.", "text_model.", "token_embedding", "model.token_embedding",
                  "positional_embedding", "model.positional_embedding", "ln_final", "model.ln_final")
    assert not any(k.startswith(text_tower) for k in study.backbone_keys())
    import pandas as pd

    analysed = set(pd.read_csv(tmp_path / "out" / "spectra" / "radial_profiles_by_key.csv")["key"])
    assert analysed and not any(k.startswith(text_tower) for k in analysed)


def test_the_readme_lists_every_study_kind_as_the_code_declares_it():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- study-kinds:start -->\n", 1)[1].split("<!-- study-kinds:end -->", 1)[0]
    assert kind_table().rstrip() in block
    for kind in ("zoo", "python", "open_clip", "hf_classification", "causal_lm"):
        assert f"**`kind: {kind}`**" in block
