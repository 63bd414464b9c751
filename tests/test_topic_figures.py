"""Each topic module's write_figures(quick=True): CSV, PNG, SVG and HTML with a fixed div id."""

from __future__ import annotations

import importlib

import pandas as pd
import pytest

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)

TOPICS = {"spectra": ("spectra", "fig2a-spectra"), "interference": ("interference_vs_accuracy", "fig2b-interference"),
          "table1": ("table1", "table1-amplitude-variance"), "experts": ("expert_sparsity", "fig5b-expert-sparsity"),
          "robustness": ("router_robustness", "fig5c-router-robustness"), "costs": ("costs", "table9-costs"),
          "sweeps": ("cutoff_sweep", "cutoff-sweep")}


@pytest.mark.parametrize("topic", list(TOPICS))
def test_quick_figures(topic, shipped_zoo, tmp_path):
    module = importlib.import_module(f"freqmerge_viz.plots.{topic}")
    stem, div_id = TOPICS[topic]
    written = module.write_figures(shipped_zoo, tmp_path, quick=True, formats=("png", "svg"))
    names = {p.name for p in written}
    assert {f"{stem}.csv", f"{stem}.png", f"{stem}.svg", f"{stem}.html"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert f'id="{div_id}"' in (tmp_path / f"{stem}.html").read_text(encoding="utf-8")
    assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(tmp_path / f"{stem}.csv")
    assert len(table) > 0
