"""Each topic's write_figures(quick=True): CSV, PNG, SVG and HTML with a fixed div id; and every
matplotlib figure it draws has accuracy axes in percent and no overlapping titles, labels or legends."""

from __future__ import annotations


import pandas as pd
import pytest

import freqmerge_viz.plots as plots_package
import freqmerge_viz.plots.core as core
from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.topics import TOPICS as ALL_TOPICS, topic_module
from freqmerge_viz.plots.core import layout_overlaps

FILES = {"spectra": ("spectra", "fig2a-spectra"), "interference_vs_performance": ("interference_vs_accuracy", "fig2b-interference"),
         "table1": ("table1", "table1-amplitude-variance"), "expert_sparsity": ("expert_sparsity", "fig5b-expert-sparsity"),
         "router_robustness": ("router_robustness", "fig5c-router-robustness"), "costs": ("costs", "table9-costs"),
         "cutoff_sweep": ("cutoff_sweep", "cutoff-sweep"),
         "singular_vs_fourier": ("singular_vs_fourier_pairs", "singular-vs-fourier-pairs"),
         "layers": ("layer_profile", "layer-profile"), "adaptive_cutoffs": ("adaptive_cutoffs", "adaptive-cutoffs")}
"""Topics written through plots.core.write_all: their stem and HTML div id."""


@pytest.fixture
def drawn(monkeypatch):
    """Every matplotlib figure saved while the test runs."""
    figures = []
    original = core.save_figure

    def record(fig, stem, formats=("png", "svg")):
        figures.append(fig)
        return original(fig, stem, formats)

    monkeypatch.setattr(core, "save_figure", record)
    monkeypatch.setattr(plots_package, "save_figure", record)
    for topic in ALL_TOPICS:  # topics that save figures themselves hold their own reference
        module = topic_module(topic)
        if hasattr(module, "save_figure"):
            monkeypatch.setattr(module, "save_figure", record)
    return figures


def accuracy_labels(fig) -> list[str]:
    """Axis labels (colour bars included) of `fig` that name an accuracy."""
    return [label for ax in fig.axes if ax.get_visible()
            for label in (ax.get_xlabel(), ax.get_ylabel()) if "accuracy" in label.lower()]


@pytest.mark.parametrize("topic", list(ALL_TOPICS))
def test_quick_figures(topic, shipped_zoo, tmp_path, drawn, capsys):
    module = topic_module(topic)
    written = module.write_figures(shipped_zoo, tmp_path, quick=True, formats=("png", "svg"))
    assert "%|" not in capsys.readouterr().err                      # no progress bar unless asked for
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert drawn, "no matplotlib figure drawn"
    for fig in drawn:
        assert layout_overlaps(fig) == [], (topic, fig.get_suptitle())
        for label in accuracy_labels(fig):
            assert "%" in label, (topic, label)
    for path in written:
        if path.suffix == ".csv":
            columns = pd.read_csv(path, nrows=1).columns
            bare = [c for c in columns if c in ("accuracy", "mean_accuracy", "individual", "router_accuracy",
                                                "accuracy_a", "accuracy_b")]
            assert not bare, f"{path.name}: accuracy columns {bare} do not say their unit"
    if topic not in FILES:
        return
    stem, div_id = FILES[topic]
    names = {p.name for p in written}
    assert {f"{stem}.csv", f"{stem}.png", f"{stem}.svg", f"{stem}.html"} <= names
    assert f'id="{div_id}"' in (tmp_path / f"{stem}.html").read_text(encoding="utf-8")
    assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(tmp_path / f"{stem}.csv")
    assert len(table) > 0


def test_layout_overlaps_finds_colliding_titles_and_legends():
    fig, axes = core.new_figure(1, 1, (3.0, 2.0))
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set_title("a long centre title " * 2)
    ax.set_title("a long left title " * 2, loc="left")
    assert ("axes 0 title (left)", "axes 0 title (center)") in layout_overlaps(fig)
    fig, axes = core.new_figure(1, 1, (4.0, 3.0))
    axes[0, 0].plot([0, 1], [0, 1], label="a line")
    fig.legend(loc="outside lower center")
    core.add_caption(fig, "a caption")
    assert ("caption", "figure legend 0") in layout_overlaps(fig)


@pytest.mark.parametrize("topic, loop, steps", [("table1", "table1: methods", "7/7"),
                                                ("cutoff_sweep", "cutoff sweep: points", "4/4")])
def test_a_topic_shows_its_loops_with_progress_on(topic, loop, steps, shipped_zoo, tmp_path, capsys):
    topic_module(topic).write_figures(shipped_zoo, tmp_path / "on", quick=True, formats=("png",), progress=True)
    err = capsys.readouterr().err
    bars = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(f"{loop}:")]
    assert bars and steps in bars[-1], err[-2000:]


def test_figures_write_one_shared_plotly_js_and_pass_progress_on(shipped_zoo, tmp_path, capsys):
    from freqmerge_viz.figures import write_all
    from freqmerge_viz.plots.core import PLOTLY_JS

    index = write_all(shipped_zoo, tmp_path / "out", topics=["table1"], quick=True, formats=("png",),
                      progress_bars=True)
    assert index["html_js"] == "shared" and index["plotly_js"] == PLOTLY_JS
    page = tmp_path / "out" / "table1" / "table1.html"
    assert 'src="../plotly.min.js"' in page.read_text(encoding="utf-8") and page.stat().st_size < 100_000
    assert (tmp_path / "out" / PLOTLY_JS).is_file() and not (tmp_path / "out" / "table1" / PLOTLY_JS).exists()
    assert "table1: methods" in capsys.readouterr().err
    write_all(shipped_zoo, tmp_path / "quiet", topics=["table1"], quick=True, formats=("png",))
    assert "table1: methods" not in capsys.readouterr().err          # the study's default: no bars
