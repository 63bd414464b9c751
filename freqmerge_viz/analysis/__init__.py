"""The paper's analyses as tidy tables (pandas).

One module per analysis. They compute and return tables; they draw nothing (figures are
:mod:`freqmerge_viz.plots`, and :mod:`freqmerge_viz.topics` puts the two together for
``freqmerge-viz figures``). The functions named like their module stay in it
(``analysis.landscape.landscape``, ``analysis.table1.table1``), so that ``analysis.landscape``
is always the module.
"""

from .correlation import correlation_table, correlation_with_ci, pair_interference_table
from .costs import cost_table
from .experts_curves import expert_curves
from .generalisation import generalisation_difference, generalisation_matrix, generalisation_pivot
from .interference import FilterSetting, interference_table
from .landscape import Plane, PlaneStudy, interpolation_curves, make_plane, plane_study, project_points
from .router_robustness import robustness_table, router_robustness
from .spectra import profile_shapes, radial_profiles_by_key, radial_profiles_table, spectra_of_key, spectra_table
from .sweeps import SweepPoint, cutoff_sweep, run_point, sweep_points
from .table1 import MethodSetting

__all__ = [
    "correlation_table", "correlation_with_ci", "pair_interference_table", "cost_table", "expert_curves",
    "generalisation_difference", "generalisation_matrix", "generalisation_pivot", "FilterSetting",
    "interference_table", "Plane", "PlaneStudy", "interpolation_curves", "make_plane",
    "plane_study", "project_points", "robustness_table", "router_robustness", "radial_profiles_by_key",
    "profile_shapes", "radial_profiles_table", "spectra_of_key", "spectra_table", "SweepPoint", "cutoff_sweep", "run_point",
    "sweep_points", "MethodSetting",
]
