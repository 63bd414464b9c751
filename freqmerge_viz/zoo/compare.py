"""The method comparison now takes any study: :mod:`freqmerge_viz.analysis.compare` (kept here
so that ``from freqmerge_viz.zoo.compare import compare_methods`` goes on working)."""

from ..analysis.compare import (CANDIDATES, SCALINGS, Candidate, compare_methods, comparison_frame,  # noqa: F401
                                evaluate_routed, features, grid, markdown_table, standard_error, train_router,
                                with_needs)

__all__ = ["CANDIDATES", "SCALINGS", "Candidate", "compare_methods", "comparison_frame", "evaluate_routed", "features",
           "grid", "markdown_table", "standard_error", "train_router", "with_needs"]
