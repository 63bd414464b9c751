"""The widget layer without a browser: CutoffExplorer driven through its Python API and controls."""

import asyncio
import json
import math
import threading

import numpy as np
import pandas as pd
import pytest

import freqmerge_viz as fmv
from freqmerge_viz.errors import ParameterError
from freqmerge_viz.widgets import CutoffExplorer, Debouncer, cutoff_methods
from freqmerge_viz.widgets.cutoff import ACCURACY, GAIN, NO_FILTER, NO_MERGE, SPECTRUM, VARIANCE_RAW

N_EVAL = 8


@pytest.fixture(scope="module")
def explorer(zoo, clock):
    return CutoffExplorer(zoo, eval_per_task=N_EVAL, device="cpu", schedule=clock.schedule)


def independent_accuracy(zoo, merged):
    return zoo.evaluate(merged, split="val", limit=N_EVAL)


def test_controls_come_from_the_registry(explorer):
    methods = cutoff_methods()
    assert "fr" in methods and "task_arithmetic" not in methods
    assert all(any(p.name == "cutoff" for p in fmv.get_method(m).params) for m in methods)
    assert list(explorer.controls["method"].options) == methods
    cutoff = explorer.controls["cutoff"]
    assert "normalised radius" in cutoff.description
    assert "fmv-cutoff" in cutoff._dom_classes
    assert "fmv-summary" in explorer.summary._dom_classes
    assert "on 8 val images per task" in explorer.summary.value
    assert explorer.figure.layout.yaxis4.title.text == "accuracy (%)"
    assert all(len(explorer._vectors[0].shape_of(k)) >= 2 for k in explorer.controls["key"].options)
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()


def test_cutoff_change_updates_numbers_and_figure_in_place(explorer):
    explorer.set(method="fr", kind="ideal", band="high", scaling=1.0, cutoff=0.1)
    figure, traces = explorer.figure, list(explorer.figure.data)
    before = explorer.shown()
    accuracy_before = np.array(traces[ACCURACY].y, dtype=float)
    mask_before = np.array(traces[GAIN].z, dtype=float)
    spectrum_before = np.array(traces[SPECTRUM].z, dtype=float)
    explorer.set(cutoff=0.6)
    after = explorer.shown()
    assert explorer.figure is figure and list(explorer.figure.data) == traces
    assert all(a is b for a, b in zip(explorer.figure.data, traces))
    assert after["cutoff"] == 0.6 and explorer.controls["cutoff"].value == 0.6
    assert after["accuracy"] != before["accuracy"]
    assert not np.array_equal(np.array(traces[ACCURACY].y, dtype=float), accuracy_before)
    assert [100 * a for a in after["accuracy"].values()] == list(np.array(traces[ACCURACY].y, dtype=float))
    assert not np.array_equal(np.array(traces[GAIN].z, dtype=float), mask_before)
    assert set(np.unique(np.array(traces[GAIN].z, dtype=float))) == {0.0, 1.0}
    assert np.array_equal(np.array(traces[SPECTRUM].z, dtype=float), spectrum_before, equal_nan=True)
    assert after["kept_fraction"] < before["kept_fraction"]
    variance = after["amplitude_variance"]
    assert variance["all_bins"] < variance["unfiltered"]
    assert [variance["all_bins"], variance["kept_bins"]] == list(np.array(traces[VARIANCE_RAW].customdata, dtype=float))
    change = 100 * (variance["all_bins"] / variance["unfiltered"] - 1)
    assert traces[VARIANCE_RAW].y[0] == pytest.approx(change)
    assert f'data-value="{after["mean_accuracy"]:.6f}"' in explorer.summary.value


def test_shown_accuracy_equals_an_independent_merge(explorer, zoo):
    explorer.set(method="fr", kind="butterworth", band="high", cutoff=0.35, scaling=0.8)
    merged = fmv.merge("fr", zoo.pretrained, zoo.finetuned_list(), cutoff=0.35, kind="butterworth", scaling=0.8)
    assert explorer.shown()["accuracy"] == independent_accuracy(zoo, merged)


def test_cutoff_zero_is_task_arithmetic_with_fr_coefficients(explorer, zoo):
    explorer.set(method="fr", kind="ideal", band="high", cutoff=0.0, scaling=1.0)
    fr = fmv.merge("fr", zoo.pretrained, zoo.finetuned_list(), cutoff=0.0)
    weights = fr.statistics["lambda"]
    assert abs(sum(weights) - 1) < 1e-9 and len(set(np.round(weights, 6))) > 1
    ta = fmv.merge("task_arithmetic", zoo.pretrained, zoo.finetuned_list(), weights=weights, scaling=1.0)
    shown = explorer.shown()
    assert shown["accuracy"] == independent_accuracy(zoo, ta)
    assert shown["kept_fraction"] == 1.0
    assert shown["amplitude_variance"]["all_bins"] == pytest.approx(shown["amplitude_variance"]["unfiltered"])


def test_error_through_set_is_shown_and_kept(explorer):
    explorer.set(method="fr", kind="ideal", band="high", cutoff=0.2)
    before = explorer.shown()
    with pytest.raises(ParameterError, match="normalized cutoff"):
        explorer.set(cutoff=1.5)
    assert isinstance(explorer.last_error, ParameterError)
    assert "fmv-status-error" in explorer.status.value and "ParameterError" in explorer.status.value
    assert explorer.shown() == before
    assert explorer.controls["cutoff"].value == 0.2
    with pytest.raises(ParameterError, match="unknown setting"):
        explorer.set(cutof=0.3)
    explorer.set(cutoff=0.25)
    assert explorer.last_error is None and "fmv-status-ok" in explorer.status.value


def test_error_from_a_control_is_shown_not_raised(explorer, clock):
    explorer.set(method="fr", kind="ideal", band="high", cutoff=0.4, upper_cutoff=0.3)
    before = explorer.shown()
    assert explorer.controls["upper_cutoff"].disabled
    explorer.controls["band"].value = "band"
    clock.advance(1.0)
    assert isinstance(explorer.last_error, ParameterError)
    assert "lower &lt; upper" in explorer.status.value
    assert explorer.controls["band"].value == "high"
    assert explorer.shown() == before
    explorer.controls["upper_cutoff"].value = 0.7
    explorer.controls["band"].value = "band"
    clock.advance(1.0)
    assert explorer.last_error is None and explorer.values["band"] == "band"
    assert not explorer.controls["upper_cutoff"].disabled
    explorer.set(band="high")


def test_slider_burst_makes_an_immediate_update_and_one_after_it(explorer, clock):
    """The first event after a quiet period is answered at once; the rest of the burst waits for
    the slider to be still for the debounce time and then makes one update."""
    explorer.set(cutoff=0.3, kind="ideal", band="high")
    clock.advance(1.0)
    updates, calls = explorer.updates, explorer.debouncer.calls
    for value in (0.31, 0.32, 0.33, 0.34):
        explorer.controls["cutoff"].value = value
        clock.advance(0.05)
    assert explorer.updates == updates + 1 and explorer.values["cutoff"] == 0.31
    assert explorer.debouncer.pending
    clock.advance(0.2)
    assert explorer.updates == updates + 2 and explorer.debouncer.calls == calls + 2
    assert explorer.values["cutoff"] == 0.34 and explorer.shown()["cutoff"] == 0.34
    explorer.controls["cutoff"].value = 0.35
    assert explorer.updates == updates + 2, "an event right after an update waits for the quiet period"
    clock.advance(0.2)
    assert explorer.updates == updates + 3 and explorer.values["cutoff"] == 0.35


def test_leading_debouncer_on_a_fake_clock(clock):
    seen = []
    debouncer = Debouncer(lambda: seen.append(clock.now), delay=0.15, schedule=clock.schedule, leading=True)
    clock.advance(10.0)
    start = clock.now
    debouncer.trigger()
    assert seen == [start]
    for _ in range(3):
        clock.advance(0.1)
        debouncer.trigger()
    clock.advance(0.1)  # start + 0.4: the last trigger (start + 0.3) is 0.1 s old
    assert seen == [start]
    clock.advance(0.1)  # past start + 0.45 (the fake clock runs due jobs at the end of an advance)
    assert seen == [start, pytest.approx(start + 0.5)] and not debouncer.pending


def test_debouncer_ignores_a_superseded_call_that_could_not_be_cancelled():
    callbacks, seen = [], []

    class Late:
        def cancel(self):
            pass

    debouncer = Debouncer(lambda: seen.append(len(callbacks)), delay=1.0,
                          schedule=lambda delay, fn: (callbacks.append(fn), Late())[1])
    for _ in range(3):
        debouncer.trigger()
    for fn in callbacks:
        fn()
    assert seen == [3] and debouncer.calls == 1 and not debouncer.pending
    debouncer.trigger()
    assert debouncer.flush() and not debouncer.flush()
    callbacks[-1]()
    assert debouncer.calls == 2


def test_debouncer_with_a_real_timer():
    fired = threading.Event()
    seen = []
    debouncer = Debouncer(lambda: (seen.append(1), fired.set()), delay=0.3)
    for _ in range(5):
        debouncer.trigger()
    assert debouncer.pending
    assert fired.wait(10)
    threading.Event().wait(0.5)
    assert seen == [1] and not debouncer.pending


def test_debouncer_uses_the_running_event_loop():
    seen = []

    async def main():
        debouncer = Debouncer(lambda: seen.append(threading.get_ident()), delay=0.05)
        for _ in range(3):
            debouncer.trigger()
        await asyncio.sleep(0.3)
        return debouncer.calls

    assert asyncio.run(main()) == 1
    assert seen == [threading.get_ident()]


def test_caches_are_hit(explorer):
    """A cutoff change merges once (the unfiltered reference at the same scaling is cached); a
    scaling change merges twice (the merge and its unfiltered reference); nothing walked back
    is recomputed."""
    keys = explorer.matrix_keys
    explorer.set(method="fr", kind="ideal", band="high", cutoff=0.15, key=keys[0], task=explorer.tasks[0])
    stats = dict(explorer.cache_stats)
    explorer.set(cutoff=0.45)
    assert explorer.cache_stats["merges"] == stats["merges"] + 1
    explorer.set(task=explorer.tasks[1], scaling=0.9)
    assert explorer.cache_stats["spectra"] == stats["spectra"]
    assert explorer.cache_stats["merges"] == stats["merges"] + 3
    assert explorer.cache_stats["variances"] == stats["variances"] + 1
    explorer.set(key=keys[1])
    assert explorer.cache_stats["spectra"] == stats["spectra"] + 1
    assert explorer.cache_stats["merges"] == stats["merges"] + 3
    explorer.set(key=keys[0], cutoff=0.15, scaling=1.0)
    assert explorer.cache_stats["spectra"] == stats["spectra"] + 1
    assert explorer.cache_stats["merges"] == stats["merges"] + 3
    explorer.set(method="fr_ties")
    assert explorer.cache_stats["merges"] == stats["merges"] + 5
    assert explorer.cache_stats["spectra"] == stats["spectra"] + 1
    explorer.set(method="fr")


def test_export_formats_and_reproducible_html(explorer, tmp_path):
    explorer.set(cutoff=0.3, kind="gaussian", band="high")
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<svg", ".html": b"<html"}
    for suffix, start in magic.items():
        path = explorer.export(tmp_path / f"view{suffix}")
        assert path == tmp_path / f"view{suffix}"
        head = path.read_bytes()[:4096]
        assert start in head, suffix
    first = (tmp_path / "view.html").read_bytes()
    explorer.export(tmp_path / "again.html")
    assert (tmp_path / "again.html").read_bytes() == first
    assert b'id="freqmerge-cutoff-explorer"' in first and b'"uid"' not in first
    with pytest.raises(ParameterError):
        explorer.export(tmp_path / "view.jpg")
    explorer.export_path.value = str(tmp_path / "button.svg")
    explorer.export_button.click()
    assert (tmp_path / "button.svg").is_file() and "exported" in explorer.status.value
    assert (tmp_path / "button.csv").is_file()


def test_every_export_writes_the_numbers_shown_with_their_image_counts(explorer, tmp_path):
    explorer.set(cutoff=0.3, kind="ideal", band="high")
    shown = explorer.shown()
    explorer.export(tmp_path / "view.png")
    table = pd.read_csv(tmp_path / "view.csv", keep_default_na=False)
    assert list(table.columns) == ["quantity", "item", "value"]
    accuracy = table[table["quantity"] == "accuracy"].set_index("item")["value"].astype(float)
    assert accuracy.to_dict() == pytest.approx(shown["accuracy"])
    counts = table[table["quantity"] == "eval_counts"].set_index("item")["value"].astype(int)
    assert counts.to_dict() == shown["eval_counts"]
    assert float(table[table["quantity"] == "cutoff"]["value"].iloc[0]) == 0.3
    assert explorer.export(tmp_path / "only.csv") == tmp_path / "only.csv"
    assert (tmp_path / "only.csv").read_text() == (tmp_path / "view.csv").read_text()


def test_an_evaluator_without_image_counts_shows_its_error_as_unknown(zoo):
    tasks = ["digits", "signs"]
    finetuned = {t: zoo.finetuned[t] for t in tasks}

    def accuracies(state):
        return zoo.evaluate(state, tasks=tasks, split="val", limit=4)

    explorer = CutoffExplorer((zoo.pretrained, finetuned, accuracies), cutoff=0.3, key="blocks.1.mlp.fc1.weight")
    shown = explorer.shown()
    assert shown["mean_accuracy_se_percent"] is None and shown["eval_counts"] == {"digits": None, "signs": None}
    summary = explorer.summary.value
    assert "± ?" in summary and "± 0.0" not in summary and "standard error unknown" in summary
    assert "noise unknown" in summary

    def counted(state):
        return {t: (round(a * 4), 4) for t, a in accuracies(state).items()}

    explorer = CutoffExplorer((zoo.pretrained, finetuned, counted), cutoff=0.3, key="blocks.1.mlp.fc1.weight")
    shown = explorer.shown()
    assert shown["eval_counts"] == {"digits": 4, "signs": 4}
    assert shown["mean_accuracy_se_percent"] > 0 and "± ?" not in explorer.summary.value
    with pytest.raises(ParameterError, match="must be an accuracy or \\(correct, total\\)"):
        CutoffExplorer((zoo.pretrained, finetuned, lambda state: {t: (1, 0) for t in tasks}))


def test_on_a_two_tower_clip_checkpoint_the_explorer_covers_the_image_tower_and_says_so(tmp_path):
    from clip_support import two_tower_checkpoints

    pre, fts = two_tower_checkpoints(tmp_path)
    explorer = CutoffExplorer((pre, {"a": fts[0], "b": fts[1]}, lambda state: {"a": (3, 4), "b": (2, 4)}))
    assert all(key.startswith("model.visual.") for key in explorer.matrix_keys)
    assert explorer.shown()["key"] == "model.visual.transformer.resblocks.0.attn.in_proj_weight"
    assert "Image tower only (model.visual.*)" in explorer.summary.value


def test_any_models_with_an_evaluator_function(zoo):
    tasks = ["digits", "signs"]
    finetuned = {t: zoo.finetuned[t] for t in tasks}

    def evaluate(state):
        return zoo.evaluate(state, tasks=tasks, split="val", limit=4)

    explorer = CutoffExplorer((zoo.pretrained, finetuned, evaluate), cutoff=0.3, key="blocks.1.mlp.fc1.weight",
                              params={"coefficients": "uniform"})
    shown = explorer.shown()
    merged = fmv.merge("fr", zoo.pretrained, list(finetuned.values()), cutoff=0.3, coefficients="uniform")
    assert shown["accuracy"] == evaluate(merged)
    assert explorer.tasks == tasks and shown["key"] == "blocks.1.mlp.fc1.weight"
    assert json.loads(json.dumps(shown)) == shown
    with pytest.raises(ParameterError, match="set by the controls"):
        CutoffExplorer((zoo.pretrained, finetuned, evaluate), params={"cutoff": 0.2})
    with pytest.raises(ParameterError, match="method"):
        CutoffExplorer((zoo.pretrained, finetuned, evaluate), method="task_arithmetic")


def test_slider_benchmark_quick(monkeypatch, capsys):
    from freqmerge_viz.benchmarks import slider

    values = slider.cutoff_walk(50)
    assert len(set(values)) == 50 and values[24] > values[0] and values[-1] < values[25]
    result = slider.main(["--quick", "--n", "3"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == result
    assert {"p50_ms", "p95_ms", "n", "device"} <= set(result) and result["n"] == 3
    assert result["accuracy_cache_misses"] >= 3


def test_explorer_models_run_headless_without_ipywidgets():
    """Each explorer's computation is a model class that needs no widget library."""
    import subprocess
    import sys

    probe = ("import sys\n"
             "import freqmerge_viz as fmv\n"
             "from freqmerge_viz.widgets.cutoff import CutoffModel\n"
             "from freqmerge_viz.widgets.landscape import LandscapeModel\n"
             "z = fmv.zoo.load()\n"
             "m = CutoffModel(z, eval_per_task=4)\n"
             "view = m.compute({**m.default_values('fr'), 'cutoff': 0.3})\n"
             "lm = LandscapeModel(z, limit=8)\n"
             "lv = lm.compute({'task_a': 'landcover', 'task_b': 'textures', 'eval_task': None, 'grid': 3,\n"
             "                 'filtered': False, 'metric': 'loss', 'methods': ('task_arithmetic',)})\n"
             "print(len(view.accuracy), 0 < view.kept_fraction < 1, len(lv.grid), 'ipywidgets' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["8", "True", "9", "False"]


def test_a_cutoff_change_resolves_the_method_once(explorer, monkeypatch):
    explorer.set(method="fr", kind="ideal", band="high", scaling=1.0, cutoff=0.2)
    method = fmv.get_method("fr")
    calls = []
    original = type(method).resolve
    monkeypatch.setattr(type(method), "resolve", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    explorer.set(cutoff=0.2345)
    assert len(calls) == 1
