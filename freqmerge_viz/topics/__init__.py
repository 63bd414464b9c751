"""Figure topics: one module per topic of ``freqmerge-viz figures``, named as the topic.

A topic module's ``write_figures(zoo, out_dir, *, quick, formats) -> list[Path]`` asks
:mod:`freqmerge_viz.analysis` for its tables and :mod:`freqmerge_viz.plots` for its figures,
and writes both (CSV, PNG/SVG/PDF, HTML) under ``out_dir``. This is the only floor that
imports both analysis and plots; they never import each other.
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
"""Tasks (the zoo's first ones) that ``quick=True`` runs use."""
QUICK_LIMIT = 48
"""Images per task and split that ``quick=True`` runs evaluate."""


def scope(zoo, quick: bool) -> list[str]:
    """The tasks a topic analyses: all of the zoo's, or its first :data:`QUICK_TASKS` when quick."""
    return list(zoo.tasks[:QUICK_TASKS] if quick else zoo.tasks)


def topic_module(name: str):
    """The module of topic `name` (imported on first use)."""
    import importlib

    return importlib.import_module(f"{__name__}.{name}")
