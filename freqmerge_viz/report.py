"""The main job: a spectra + interference report for a pretrained model and its variants."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .analysis import FilterSetting
from .analysis.scan import scan
from .analysis.spectra import spectrum_key
from .backend import resolve_device
from .errors import EmptyInputError, counted
from .io import load_state, write_text_atomically
from .outputs import check_output, make_folder, source_paths
from .keys import Patterns
from .metrics import low_frequency_energy_by_task
from .spectral import FilterSpec
from .taskvector import TaskVector

DEFAULT_CUTOFFS = (0.05, 0.1, 0.2, 0.3)
OFFICIAL_RATIO = 0.7


@dataclass
class ReportInputs:
    """What the report analyses: checkpoint paths (or states) and task names."""

    pretrained: object
    finetuned: Sequence[object]
    names: Sequence[str] | None = None
    include: Patterns = None
    exclude: Patterns = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    generated: bool = False
    """True for inputs the report generated itself into its output folder (the synthetic set);
    all others are protected: the output may not be, contain or lie inside them."""


def synthetic_inputs(directory: str | os.PathLike, n_tasks: int = 4, seed: int = 0) -> ReportInputs:
    """Generate the synthetic model set of :mod:`.synthetic` into `directory` and describe it."""
    from .synthetic import make_model_set

    paths = make_model_set(n_tasks=n_tasks, seed=seed).save(directory)
    names = [n for n in paths if n != "pretrained"]
    return ReportInputs(paths["pretrained"], [paths[n] for n in names], names,
                        description=f"synthetic model set (seed {seed}, {counted(n_tasks, 'task')}); its "
                                    "low-frequency task differences are planted by the generator",
                        extra={"seed": seed}, generated=True)


def zoo_inputs(path: str | os.PathLike | None = None) -> ReportInputs:
    """The bundled demo zoo (``data/zoo``, or `path`): pretrained backbone and eight fine-tuned ones."""
    from . import zoo

    loaded = zoo.load(path)
    return ReportInputs(loaded.pretrained, loaded.finetuned_list(), loaded.tasks,
                        description=f"demo zoo at {loaded.path} (eight procedural tasks, small ViT)",
                        extra={"zoo": str(loaded.path)})


def _write_csv(table, path: Path) -> None:
    keep_index = not isinstance(table.index, pd.RangeIndex)
    write_text_atomically(path, table.to_csv(index=keep_index, float_format="%.6g"))


def run_report(inputs: ReportInputs, out: str | os.PathLike, cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
               device: str | torch.device | None = None, formats: Sequence[str] = ("png", "svg"),
               html: bool = True, comparison: dict | None = None, progress: bool | None = False,
               html_js: str = "shared") -> dict:
    """Analyse `inputs` and write tables (CSV), figures and ``report.json`` under `out`.

    Cutoffs are normalised radii (paper convention, ideal high-pass); the authors' official
    filter at ``filter_ratio = 0.7`` is added for comparison. `comparison` (the result of
    :func:`~freqmerge_viz.zoo.compare.compare_methods`) adds the merge accuracy table.
    Every table comes from one pass over the keys (:func:`~freqmerge_viz.analysis.scan.scan`:
    each key's K entries read once, memory at most about K + 3.5 tensors of the largest key); `progress`
    shows a bar over the keys. `html_js`: where the HTML figure gets plotly.js
    (:func:`~freqmerge_viz.plots.core.save_html`: one shared ``plotly.min.js`` in `out` by
    default, ``"inline"`` or ``"cdn"``). Returns the JSON summary.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plots

    plots.core.check_html_js(html_js)
    out = Path(out)
    if not inputs.generated:
        check_output(out, source_paths([inputs.pretrained, *inputs.finetuned]), what="report folder")
    make_folder(out)
    target = resolve_device(device)
    pretrained = load_state(inputs.pretrained)
    names = list(inputs.names) if inputs.names else None
    task_vectors = [TaskVector.from_states(pretrained, ft, include=inputs.include, exclude=inputs.exclude,
                                           name=names[i] if names else None, device=target)
                    for i, ft in enumerate(inputs.finetuned)]
    if not task_vectors:
        raise EmptyInputError("the report needs at least one fine-tuned model")
    first = task_vectors[0]

    settings = [FilterSetting(f"paper ρ≥{c:g}", FilterSpec(c)) for c in cutoffs]
    settings.append(FilterSetting(f"official ratio {OFFICIAL_RATIO:g}",
                                  FilterSpec(OFFICIAL_RATIO, convention="official")))
    key = spectrum_key(first)
    tables = scan(task_vectors, settings, cutoffs[0], spectrum_key=key, device=target, progress=progress)
    names = [tv.name for tv in task_vectors]

    interference = tables.interference
    _write_csv(interference, out / "interference.csv")
    fig = plots.interference_figure(interference, "Across-task amplitude variance (Table 1 measure)")
    plots.save_figure(fig, out / "interference", formats)
    plt.close(fig)

    cosine = tables.cosine
    _write_csv(cosine, out / "cosine_similarity.csv")
    conflicts = tables.conflicts
    _write_csv(conflicts.pairwise, out / "sign_conflicts.csv")
    energy = tables.energy
    _write_csv(energy, out / "low_frequency_energy.csv")
    energy_by_task = low_frequency_energy_by_task(energy)

    spectra = tables.spectra
    shown = settings[len(cutoffs) // 2]
    outline = shown.spec.mask(spectra.shape[-2:]).numpy()
    fig = plots.spectra_grid(list(spectra), names, f"{key}: centred log amplitude (cyan: {shown.label})",
                             masks=[outline] * len(names))
    plots.save_figure(fig, out / "spectra", formats)
    plt.close(fig)

    profiles = tables.profiles
    _write_csv(profiles, out / "radial_profiles.csv")
    fig = plots.radial_profiles_figure(profiles, cutoffs[0], "Radial amplitude profile, mean over matrices")
    plots.save_figure(fig, out / "radial_profiles", formats)
    plt.close(fig)
    if html:
        plots.save_html(plots.radial_profiles_plotly(profiles, cutoffs[0], "Radial amplitude profile"),
                        out / "radial_profiles.html", div_id="radial-profiles", html_js=html_js)

    summary = {
        "inputs": {"description": inputs.description, "pretrained": str(inputs.pretrained),
                   "finetuned": [str(f) for f in inputs.finetuned], **inputs.extra},
        "tasks": names,
        "device": str(target),
        "keys_analysed": len(first),
        "keys_skipped": first.skipped,
        "spectrum_key": key,
        "interference": interference.to_dict(orient="records"),
        "sign_conflict_overall": conflicts.overall,
        "low_frequency_share": {"cutoff": cutoffs[0], "per_task": energy_by_task.to_dict()},
        "mean_pairwise_cosine": float(np.nanmean(cosine.to_numpy()[~np.eye(len(names), dtype=bool)]))
        if len(names) > 1 else None,
    }
    if comparison is not None:
        summary["comparison"] = comparison
    write_text_atomically(out / "report.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(out / "report.md", render_markdown(summary))
    return summary


def render_markdown(summary: dict) -> str:
    """A short human-readable account of a report summary, numbers as measured."""
    lines = ["# freqmerge-viz report", "", f"Inputs: {summary['inputs']['description'] or 'user checkpoints'}",
             f"Tasks: {', '.join(summary['tasks'])}; device: {summary['device']}; "
             f"{summary['keys_analysed']} keys analysed, {len(summary['keys_skipped'])} skipped.", "",
             "## Amplitude variance across tasks (Table 1 measure)", "",
             "| setting | all bins | Δ% | kept bins | unfiltered, same bins | Δ% (kept) | normalised |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["interference"]:
        lines.append(f"| {row['setting']} | {row['all_bins']:.4g} | {row['change_all_pct']:+.1f} | "
                     f"{row['kept_bins']:.4g} | {row['unfiltered_kept_bins']:.4g} | {row['change_kept_pct']:+.1f} | "
                     f"{row['normalized']:.4g} |")
    lines += ["", "A filter that zeroes bins lowers the all-bins mean by construction; the kept-bins "
              "columns compare filtered and unfiltered task vectors over the same bins. An ideal filter "
              "passes its kept bins with gain 1, so there the variance cannot change: all of its "
              "reduction comes from the bins it sets to zero. 'normalised' divides the all-bins value "
              "by the mean amplitude over the same bins and tasks.", "",
              f"Sign conflicts (share of shared non-zero coordinates whose signs disagree): "
              f"{summary['sign_conflict_overall']:.3f}"]
    share = summary["low_frequency_share"]
    lines.append(f"Share of spectral energy below ρ = {share['cutoff']:g}: " +
                 ", ".join(f"{t} {v:.3f}" for t, v in share["per_task"].items()))
    if "comparison" in summary:
        from .analysis.compare import markdown_table

        lines += ["", "## Merge methods on the zoo (test accuracy, %)", "",
                  markdown_table(summary["comparison"]).rstrip(), "",
                  "Each method's settings scored the best mean accuracy on the validation split; "
                  "the order of the rows is as measured, whatever it says about the paper's claims."]
    return "\n".join(lines) + "\n"
