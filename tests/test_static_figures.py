"""Static figures that tell the truth (issue #13), checked on the shipped zoo with real numbers:
references measured on the same images, error bars equal to the binomial SE of the images they
rest on, one scaling along a cutoff sweep, the d = 1 rescale artefact not joined, percent axes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.evaluation import individual_accuracies, reference_accuracies
from freqmerge_viz.analysis.experts_curves import expert_curves
from freqmerge_viz.analysis.router_robustness import (chosen_routed_merges, robustness_references,
                                                      router_robustness)
from freqmerge_viz.analysis.selection import choose
from freqmerge_viz.analysis.sweeps import (SweepPoint, choose_scaling, cutoff_sweep, sweep_references,
                                           task_arithmetic_equivalent, validation_means)
from freqmerge_viz.zoo.evaluation import evaluate_on_zoo
from freqmerge_viz.methods import merge
from freqmerge_viz.plots.core import accuracy_summary, fraction_names, label_points, layout_overlaps, new_figure
from freqmerge_viz.plots.experts import experts_figure
from freqmerge_viz.plots.interference import normalized_se
from freqmerge_viz.plots.robustness import robustness_figure
from freqmerge_viz.plots.scales import binomial_se, mean_se
from freqmerge_viz.plots.sweeps import MIN_SPAN, sweep_figure

LIMIT = 48


@pytest.fixture(scope="module")
def tasks(shipped_zoo):
    return tuple(shipped_zoo.tasks[:3])


def bar_halfwidths(container) -> np.ndarray:
    """Half-lengths of the vertical error bars of a matplotlib ErrorbarContainer."""
    segments = container.lines[2][0].get_segments()
    return np.array([abs(s[1][1] - s[0][1]) / 2 for s in segments])


def test_reference_accuracies_are_the_states_on_the_same_images(shipped_zoo, tasks):
    table = reference_accuracies(shipped_zoo, tasks, limit=LIMIT, task_arithmetic={"scaling": 0.3})
    by = table.set_index(["reference", "task"])["accuracy"]
    pre = evaluate_on_zoo(shipped_zoo, [shipped_zoo.pretrained], list(tasks), limit=LIMIT).set_index("task")["accuracy"]
    ta = merge("task_arithmetic", shipped_zoo.pretrained, {t: shipped_zoo.finetuned[t] for t in tasks}, scaling=0.3)
    ta = evaluate_on_zoo(shipped_zoo, [ta], list(tasks), limit=LIMIT).set_index("task")["accuracy"]
    for task in tasks:
        assert by[("pretrained", task)] == pre[task]
        assert by[("task_arithmetic", task)] == ta[task]
        assert by[("finetuned", task)] == individual_accuracies(shipped_zoo, [task], limit=LIMIT)[task]
    assert (table["n_images"] == LIMIT).all()


def test_accuracy_summary_is_percent_with_the_binomial_se_of_the_mean():
    table = pd.DataFrame({"kind": ["a", "a", "b"], "accuracy": [0.5, 0.9, 0.7], "n_images": [100, 400, 50]})
    summary = accuracy_summary(table, ["kind"]).set_index("kind")
    assert summary.loc["a", "accuracy_pct"] == pytest.approx(70.0)
    assert summary.loc["a", "se_pct"] == pytest.approx(100 * math.sqrt(0.25 / 100 + 0.09 / 400) / 2)
    assert summary.loc["b", "se_pct"] == pytest.approx(100 * binomial_se(0.7, 50))
    renamed = fraction_names(table.rename(columns={"accuracy": "individual"}), ["individual", "missing"])
    assert list(renamed.columns) == ["kind", "individual_accuracy_fraction", "n_images"]
    assert list(fraction_names(table, ["accuracy"]).columns) == ["kind", "accuracy_fraction", "n_images"]


# ----------------------------------------------------------------------------- cutoff sweep
@pytest.fixture(scope="module")
def fixed_sweep(shipped_zoo, tasks):
    scaling, means = choose_scaling(shipped_zoo, "ideal", 0.1, (0.3, 1.0), tasks=tasks, validation_limit=32)
    table = cutoff_sweep(shipped_zoo, ("ideal", "gaussian"), (0.0, 0.2, 0.5), tasks=tasks, scalings=(scaling,),
                         limit=LIMIT)
    references = sweep_references(shipped_zoo, scaling, tasks=tasks, limit=LIMIT)
    return scaling, means, table, references


def test_the_scaling_is_chosen_once_on_validation(shipped_zoo, tasks, fixed_sweep):
    scaling, means, table, _ = fixed_sweep
    direct = validation_means(shipped_zoo, SweepPoint("ideal", 0.1, scalings=(0.3, 1.0), tasks=tasks,
                                                      validation_limit=32))
    assert list(means.values()) == direct
    assert scaling == (0.3, 1.0)[int(np.argmax(direct))]
    assert set(table["scaling"]) == {scaling}                 # the same scaling at every kind and cutoff
    assert (table["n_images"] == LIMIT).all()


def test_task_arithmetic_reference_is_the_unfiltered_point(shipped_zoo, tasks, fixed_sweep):
    scaling, _, table, references = fixed_sweep
    ta = references[references["reference"] == "task_arithmetic"].set_index("task")["accuracy"]
    for kind in ("ideal", "gaussian"):
        zero = table[(table["kind"] == kind) & (table["cutoff"] == 0.0)].set_index("task")["accuracy"]
        assert zero.to_dict() == ta.to_dict()
    params = task_arithmetic_equivalent(shipped_zoo, scaling, tasks=tasks)
    assert params["scaling"] == scaling and sum(params["weights"]) == pytest.approx(1.0)
    assert task_arithmetic_equivalent(shipped_zoo, scaling, {"coefficients": "align"}, tasks=tasks) is None


def test_sweep_figure_states_the_scaling_and_draws_binomial_bars(fixed_sweep):
    scaling, _, table, references = fixed_sweep
    fig = sweep_figure(table, "sweep", references, "chosen once")
    assert f"FR scaling {scaling:g} at every point (chosen once)" in fig.get_suptitle()
    accuracy = fig.axes[0]
    assert "%" in accuracy.get_ylabel()
    for container in accuracy.containers:
        kind = container.get_label().removeprefix("FR, ")
        for cutoff, half in zip(sorted(table["cutoff"].unique()), bar_halfwidths(container)):
            point = table[(table["kind"] == kind) & (table["cutoff"] == cutoff)]
            assert half == pytest.approx(100 * mean_se(point["accuracy"], point["n_images"]))
    finetuned = 100 * references.loc[references["reference"] == "finetuned", "accuracy"].mean()
    low, high = accuracy.get_ylim()
    plotted = 100 * table.groupby(["kind", "cutoff"])["accuracy"].mean()   # the curves draw means over tasks
    assert low <= plotted.min() and high >= finetuned      # the curves and the references set the scale, no zoom
    caption = fig._supxlabel.get_text().replace("\n", " ")
    assert f"{len(set(table['task']))} tasks × {LIMIT} test images" in caption and "±1 SE" in caption
    assert layout_overlaps(fig) == []


def test_a_sweep_with_per_point_scalings_says_they_are_confounded(fixed_sweep):
    _, _, table, _ = fixed_sweep
    mixed = table.copy()
    mixed.loc[mixed["cutoff"] == 0.5, "scaling"] = 9.0
    assert "confounded" in sweep_figure(mixed, "sweep").get_suptitle()


def test_without_references_a_flat_curve_is_not_magnified(fixed_sweep):
    _, _, table, _ = fixed_sweep
    flat = table.assign(accuracy=0.6)
    low, high = sweep_figure(flat, "sweep").axes[0].get_ylim()
    assert high - low >= MIN_SPAN
    caption = sweep_figure(flat, "sweep")._supxlabel.get_text().replace("\n", " ")
    assert "flat within noise" in caption


# ----------------------------------------------------------------------------- expert sparsity
def test_rescaled_topk_at_density_one_is_marked_not_joined(shipped_zoo, tasks):
    table = expert_curves(shipped_zoo, kinds=("topk", "topk_rescaled"), densities=(0.02, 0.2, 1.0), tasks=tasks,
                          limit=LIMIT)
    fig = experts_figure(table, "experts")
    ax = fig.axes[0]
    lines = {c.get_label(): c for c in ax.containers}
    joined = lines["top-k + Eq. 4 rescale"].lines[0]
    assert max(joined.get_xdata()) < 0.5                       # the curve stops before d = 1
    marked = [c for label, c in lines.items() if "by construction" in label]
    assert len(marked) == 1
    point = marked[0].lines[0]
    assert point.get_linestyle() == "None" and point.get_markerfacecolor() == "white"
    rescaled_one = table[(table["kind"] == "topk_rescaled") & (table["density"] == 1.0)]
    pretrained = table[table["kind"] == "pretrained"]
    assert point.get_ydata()[0] == pytest.approx(100 * rescaled_one["accuracy"].mean())
    assert rescaled_one["accuracy"].tolist() == pretrained["accuracy"].tolist()     # θ_pre by construction
    topk = table[(table["kind"] == "topk")]
    halves = bar_halfwidths(lines["top-k (μ = 1)"])
    for density, half in zip((0.02, 0.2, 1.0), halves):
        rows = topk[topk["density"] == density]
        assert half == pytest.approx(100 * mean_se(rows["accuracy"], rows["n_images"]))
    assert "μ ∝ −ln 1 = 0" in fig._supxlabel.get_text().replace("\n", " ")
    assert "%" in ax.get_ylabel() and layout_overlaps(fig) == []


# ----------------------------------------------------------------------------- router robustness
def test_router_robustness_has_its_baselines(shipped_zoo, tasks):
    routed = chosen_routed_merges(shipped_zoo, tasks=tasks, quick=True, validation_limit=16)
    table = router_robustness(shipped_zoo, routed, tasks=tasks, ps=(0.0, 1.0), limit=LIMIT)
    references = robustness_references(shipped_zoo, tasks=tasks, quick=True, validation_limit=16, limit=LIMIT)
    chosen = choose(shipped_zoo, ["task_arithmetic"], tasks=tasks, limit=16, quick=True)["task_arithmetic"]
    assert references.attrs["task_arithmetic"] == chosen.params
    fig = robustness_figure(table, "routed", references)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    for reference in ("no merge", "task arithmetic", "fine-tuned"):
        assert any(label.startswith(reference) for label in labels), reference
    pre = 100 * references.loc[references["reference"] == "pretrained", "accuracy"].mean()
    assert any(np.allclose(line.get_ydata(), pre) for line in ax.get_lines())
    for container in ax.containers:
        rows = table[table["method"] == container.get_label()]
        for p, half in zip((0.0, 1.0), bar_halfwidths(container)):
            at = rows[rows["p"] == p]
            assert half == pytest.approx(100 * mean_se(at["accuracy"], at["n_images"]))
    assert "%" in ax.get_xlabel() and "%" in ax.get_ylabel() and layout_overlaps(fig) == []


# ----------------------------------------------------------------------------- labels
def test_point_labels_never_overlap():
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=40), rng.normal(size=40)
    fig, axes = new_figure(1, 1, (4.0, 3.0))
    ax = axes[0, 0]
    ax.scatter(xs, ys)
    kept = label_points(ax, xs, ys, [f"point {i}" for i in range(40)])
    assert 0 < len(kept) < 40
    assert layout_overlaps(fig) == []


def test_normalized_se_of_a_pair():
    pairs = pd.DataFrame({"accuracy_a": [0.8], "accuracy_b": [0.5], "individual_a": [0.9], "individual_b": [1.0],
                          "n_images_a": [400], "n_images_b": [100]})
    expected = 0.5 * math.sqrt((binomial_se(0.8, 400) / 0.9) ** 2 + (binomial_se(0.5, 100) / 1.0) ** 2)
    assert normalized_se(pairs)[0] == pytest.approx(expected)


def test_spectrum_colour_limits_leave_out_the_zero_row(shipped_zoo, tasks):
    from freqmerge_viz.analysis.evaluation import zoo_task_vectors
    from freqmerge_viz.analysis.spectra import spectra_of_key
    from freqmerge_viz.plots import spectra_grid
    from freqmerge_viz.plots.spectra import colour_limits

    import torch

    import freqmerge_viz as fmv

    # task vectors whose columns sum to zero (as the first zoo's attn.proj under SGD) have a zero η = 0 row
    vectors = zoo_task_vectors(shipped_zoo, tasks)
    key = "blocks.0.attn.proj.weight"
    assert spectra_of_key(vectors, key, device="cpu").shape[-2:] == tuple(vectors[0][key].shape)
    centred = [tv[key].double() - tv[key].double().mean(dim=0, keepdim=True) for tv in vectors]
    spectra = torch.stack([fmv.log_amplitude_spectrum(m) for m in centred]).float().numpy()
    low, high = colour_limits(spectra)
    center = spectra.shape[-2] // 2
    assert spectra[:, center, :].max() < low - 5                 # the η = 0 row lies far below the scale
    nonzero = np.delete(spectra, center, axis=1)
    assert (low, high) == pytest.approx(tuple(np.percentile(nonzero, [1.0, 99.5])))
    fig = spectra_grid(list(spectra), list(tasks))
    image = fig.axes[0].images[0]
    assert np.isnan(image.get_array().filled(np.nan)[center]).all()   # drawn in the 'bad' (grey) colour
    assert image.get_clim() == pytest.approx((low, high))
    assert "η = 0 row" in fig._supxlabel.get_text()


# ----------------------------------------------------------------------------- HTML: where plotly.js comes from
def small_plotly_figure():
    import plotly.graph_objects as go

    return go.Figure(go.Scatter(x=[0.0, 0.5, 1.0], y=[3.0, 1.0, 2.0], name="a line"))


def script_sources(page) -> list[str]:
    import re

    return re.findall(r'<script[^>]*\ssrc="([^"]+)"', page.read_text(encoding="utf-8"))


def test_shared_html_pages_load_one_plotly_js_written_once(tmp_path, monkeypatch):
    import freqmerge_viz.plots.core as core
    from plotly.offline import get_plotlyjs

    writes = []
    original = core.write_atomically

    def counting(target, write):
        writes.append(Path(target).name)
        return original(target, write)

    monkeypatch.setattr(core, "write_atomically", counting)
    first = core.save_html(small_plotly_figure(), tmp_path / "first.html", div_id="first")
    second = core.save_html(small_plotly_figure(), tmp_path / "second.html", div_id="second")
    script = tmp_path / core.PLOTLY_JS
    assert writes.count(core.PLOTLY_JS) == 1                      # once per folder, however many pages
    assert script.read_bytes() == get_plotlyjs().encode("utf-8")
    for page in (first, second):
        assert script_sources(page) == ["plotly.min.js"]          # relative: the folder works as a whole
        assert (page.parent / script_sources(page)[0]).resolve() == script.resolve()
        assert page.stat().st_size < 100_000                       # the inlined page was about 4.8 MB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.html", core.PLOTLY_JS, "second.html"]
    again = core.save_html(small_plotly_figure(), tmp_path / "again.html", div_id="first")
    assert again.read_bytes() == first.read_bytes()                # deterministic: fixed div id, same bytes
    script.write_text("// stale copy", encoding="utf-8")           # a wrong copy is replaced
    core.save_html(small_plotly_figure(), tmp_path / "third.html")
    assert script.read_bytes() == get_plotlyjs().encode("utf-8") and writes.count(core.PLOTLY_JS) == 2


def test_shared_html_in_a_sub_folder_points_to_the_top_copy(tmp_path):
    import freqmerge_viz.plots.core as core

    table = pd.DataFrame({"x": [0.0, 1.0], "y": [1.0, 2.0]})
    written = core.write_all(tmp_path / "topic" / "deeper" / "figure", table, interactive=small_plotly_figure(),
                             js_dir=tmp_path)
    page = tmp_path / "topic" / "deeper" / "figure.html"
    assert page in written and tmp_path / core.PLOTLY_JS not in written
    assert script_sources(page) == ["../../plotly.min.js"]
    assert (page.parent / "../../plotly.min.js").resolve() == (tmp_path / core.PLOTLY_JS).resolve()
    assert not (tmp_path / "topic" / core.PLOTLY_JS).exists() and not (page.parent / core.PLOTLY_JS).exists()


def test_inline_and_cdn_html_write_no_script_file(tmp_path):
    import freqmerge_viz.plots.core as core
    from plotly.offline import get_plotlyjs

    inline = core.save_html(small_plotly_figure(), tmp_path / "inline.html", html_js="inline")
    assert get_plotlyjs() in inline.read_text(encoding="utf-8") and script_sources(inline) == []
    cdn = core.save_html(small_plotly_figure(), tmp_path / "cdn.html", html_js="cdn")
    assert len(script_sources(cdn)) == 1 and script_sources(cdn)[0].startswith("https://cdn.plot.ly/")
    assert cdn.stat().st_size < 100_000
    assert not (tmp_path / core.PLOTLY_JS).exists()


def test_an_unknown_html_js_names_the_choices(tmp_path, shipped_zoo):
    import freqmerge_viz.plots.core as core
    from freqmerge_viz.errors import ParameterError
    from freqmerge_viz.figures import write_all

    with pytest.raises(ParameterError, match="html_js must be one of shared, inline, cdn; got 'embedded'"):
        core.save_html(small_plotly_figure(), tmp_path / "page.html", html_js="embedded")
    with pytest.raises(ParameterError, match="shared, inline, cdn"):
        write_all(shipped_zoo, tmp_path / "out", topics=["table1"], quick=True, html_js="embedded")
    assert not (tmp_path / "page.html").exists() and not (tmp_path / "out").exists()   # refused before any work
