"""The command line as a newcomer meets it: fast help, every option explained, clear errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from clip_support import two_tower_checkpoints
from freqmerge_viz.cli import build_parser, main


def _actions(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{prefix}{name} ")
        else:
            yield prefix.strip(), action


def test_every_option_and_argument_has_help_text():
    missing = [f"{where}: {action.option_strings or action.dest}" for where, action in _actions(build_parser())
               if action.help is None and action.dest != "help"]
    assert missing == []


def test_help_imports_no_heavy_library():
    """`freqmerge-viz --help` answers without importing torch, pandas, plotly or matplotlib
    (importing the package is lazy); this is what makes it fast."""
    probe = ("import sys, contextlib, io\n"
             "from freqmerge_viz.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'pandas', 'plotly', 'matplotlib', 'numpy') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_package_attributes_load_on_first_use():
    probe = ("import sys, freqmerge_viz as f\n"
             "before = 'torch' in sys.modules\n"
             "f.load_state; f.CutoffExplorer; f.zoo.load; f.evaluate; f.merge_to_disk; f.__version__\n"
             "print(before, 'torch' in sys.modules, 'analysis' in dir(f))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False", "True", "True"]


def test_figures_writes_to_out_by_default():
    args = build_parser().parse_args(["figures"])
    assert args.out == "out"


def test_unknown_attribute_is_an_attribute_error():
    import freqmerge_viz

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        freqmerge_viz.nope  # noqa: B018


def test_merge_errors_exit_2_without_traceback(tmp_path, capsys):
    status = main(["merge", "--method", "fr", "--pretrained", str(tmp_path / "missing"), "--finetuned",
                   str(tmp_path / "a"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def figures_calls(monkeypatch):
    """What `freqmerge-viz figures` passes to figures.write_all (which is not run)."""
    import types

    import freqmerge_viz.cli as cli
    import freqmerge_viz.figures as figures

    calls = []

    def record(study, out, **options):
        calls.append({"out": out, **options})
        return {"topics": {}}

    monkeypatch.setattr(figures, "write_all", record)
    monkeypatch.setattr(cli, "_open_study", lambda *args: types.SimpleNamespace(name="stub", kind="zoo", tasks=["a"]))
    return calls


def test_figures_html_js_and_progress_reach_write_all(figures_calls, tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path / "a"), "--html-js", "cdn", "--progress"]) == 0
    assert main(["figures", "--out", str(tmp_path / "b"), "--html-js", "inline"]) == 0
    assert main(["figures", "--out", str(tmp_path / "c")]) == 0
    assert [(c["html_js"], c["progress_bars"]) for c in figures_calls] == [("cdn", True), ("inline", None),
                                                                             ("shared", None)]
    with pytest.raises(SystemExit) as exit_info:
        main(["figures", "--html-js", "embedded"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "embedded" in err and all(c in err for c in ("shared", "inline", "cdn"))


def test_html_js_choices_are_the_library_s():
    from freqmerge_viz.plots.core import HTML_JS

    parser = build_parser()
    for command in ("figures", "report"):
        assert parser.parse_args([command]).html_js == "shared"
        choices = [a.choices for where, a in _actions(parser) if where == command and a.dest == "html_js"]
        assert choices == [list(HTML_JS)]


def test_interference_on_a_two_tower_clip_checkpoint_uses_the_image_tower(tmp_path, capsys):
    pre, fts = two_tower_checkpoints(tmp_path)
    assert main(["interference", "--pretrained", pre, "--finetuned", *fts]) == 0
    captured = capsys.readouterr()
    assert "holds both CLIP towers; analysing the image tower only (model.visual.*: 3 of 6 keys)" in captured.err
    default = json.loads(captured.out)["rows"]
    assert main(["interference", "--pretrained", pre, "--finetuned", *fts, "--include", "model.visual.*"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"] == default and "CLIP towers" not in captured.err
    assert main(["interference", "--pretrained", pre, "--finetuned", *fts, "--include", "*"]) == 0
    everything = json.loads(capsys.readouterr().out)["rows"]
    # the text tower's zero task vectors dilute the mean over matrices (3 image matrices of 2+ dims
    # against 3 more text ones)
    assert everything[0]["all_bins"] < default[0]["all_bins"]
