"""Figure topics: one module per topic of ``freqmerge-viz figures``, named as the topic.

A topic module's ``write_figures(study, out_dir, *, quick, formats, progress, html_js, js_dir)
-> list[Path]`` asks :mod:`freqmerge_viz.analysis` for its tables and :mod:`freqmerge_viz.plots`
for its figures, and writes both (CSV, PNG/SVG/PDF, HTML) under ``out_dir``. ``progress``
(default False; :mod:`freqmerge_viz.progress`) shows a tqdm bar over each of its long loops (methods,
cutoff points, task pairs, planes, ...), named ``"<what>: <items>"``; ``html_js`` and ``js_dir``
say where its HTML pages get plotly.js (:func:`freqmerge_viz.plots.core.save_html`; default: one
shared ``plotly.min.js`` in ``out_dir``). This is the only floor that imports both analysis and
plots; they never import each other.
"""

from __future__ import annotations

TOPICS: dict[str, str] = {
    "spectra": "Fig. 2a: centred log-amplitude spectra per task, radial profiles per matrix",
    "table1": "Table 1: amplitude variance across tasks after each method's per-task step",
    "interference_vs_performance": "Fig. 2b: amplitude variance against merged accuracy over task pairs",
    "generalisation": "Fig. 3: θ_pre + τ_source on every target, plain and filtered",
    "disentanglement": "weight disentanglement of a task pair; others' vectors on each task",
    "landscape": "Fig. 4: loss and accuracy on the plane of two task vectors",
    "cutoff_sweep": "FR accuracy and amplitude variance along the cutoff",
    "expert_sparsity": "Fig. 5b: expert-only accuracy against density",
    "router_robustness": "Fig. 5c: routed merges under a random router",
    "costs": "Table 9: storage, time and accuracy of each merge",
    "singular_vs_fourier": "beyond the paper: Fourier and singular interference per layer, and as predictors over pairs",
    "layers": "beyond the paper: task vectors layer by layer, and LiNeS per-layer scaling",
    "adaptive_cutoffs": "beyond the paper: FR's cutoff chosen per matrix from its spectrum, against the fixed one",
}
"""Topic name (= module name) -> what it shows, in the paper's figure order."""

QUICK_TASKS = 3
"""Tasks (the study's first ones) that ``quick=True`` runs use."""
QUICK_LIMIT = 48
"""Images per task and split that ``quick=True`` runs evaluate."""

MIN_TASKS: dict[str, tuple[int, str]] = {
    "interference_vs_performance": (2, "it merges pairs of tasks"),
    "generalisation": (2, "it applies each task's vector to the other tasks"),
    "disentanglement": (2, "it measures a pair of tasks"),
    "landscape": (2, "it draws the plane of two tasks' vectors"),
    "router_robustness": (2, "a router chooses between at least two tasks"),
    "singular_vs_fourier": (2, "it measures interference between tasks and merges pairs"),
    "table1": (2, "an across-task variance needs two tasks"),
    "layers": (2, "it measures interference between tasks"),
    "adaptive_cutoffs": (2, "the variance rule needs an across-task variance"),
}
"""Topics that need more than one task, with the reason shown when a study has fewer."""


def scope(study, quick: bool) -> list[str]:
    """The tasks a topic analyses: all of the study's, or its first :data:`QUICK_TASKS` when quick."""
    return list(study.tasks[:QUICK_TASKS] if quick else study.tasks)


def not_applicable(study, topic: str) -> str | None:
    """Why `topic` cannot run on `study` (``None`` when it can)."""
    needed, why = MIN_TASKS.get(topic, (1, ""))
    if len(study.tasks) < needed:
        return (f"topic {topic!r} needs at least {needed} tasks ({why}); study "
                f"{getattr(study, 'name', 'study')!r} has {len(study.tasks)}")
    return None


def topic_limit(study, quick: bool, full: int | None, quick_limit: int = QUICK_LIMIT) -> int | None:
    """Samples per task a topic evaluates: `full` (or `quick_limit` when quick), never more than
    the study's ``default_limit`` (a real model on a CPU evaluates a few dozen inputs per point
    unless the study file says otherwise)."""
    wanted = quick_limit if quick else full
    cap = getattr(study, "default_limit", None)
    if cap is None:
        return wanted
    return cap if wanted is None else min(int(wanted), int(cap))


def scope_label(study, tasks, limit: int | None = None, split: str | None = None) -> str:
    """What a figure rests on, for its title: the study, its tasks and (with `limit`) the
    samples per task and point of `split`, e.g. ``demo zoo, 3 tasks, 48 test images per task and
    point``."""
    tasks = list(tasks)
    label = f"{getattr(study, 'name', 'study')}, {len(tasks)} task{'s' if len(tasks) != 1 else ''}"
    if split:
        from ..study import sample_count, study_data

        def span(values) -> str:
            values = sorted(set(values))
            return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"

        samples = span(len(study_data(study, t, split, limit)[1]) for t in tasks)
        label += f", {samples} {split} {getattr(study, 'unit', 'images')} per task and point"
        if study_data(study, tasks[0], split, 1)[1].ndim == 2:
            label += f" ({span(sample_count(study, t, split, limit) for t in tasks)} scored tokens; " \
                     f"{getattr(study, 'metric', 'accuracy')})"
    return label


def topic_module(name: str):
    """The module of topic `name` (imported on first use)."""
    import importlib

    return importlib.import_module(f"{__name__}.{name}")
