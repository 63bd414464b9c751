"""freqmerge-viz: study model merging in the frequency domain.

The core is a set of pure functions over ``[..., H, W]`` tensors (:mod:`.spectral`,
:mod:`.metrics`) with a few thin stateful objects on top: lazily loaded checkpoints
(:func:`load_state`) and task vectors (:class:`TaskVector`).
"""

from .backend import default_device
from .errors import (CheckpointError, EmptyInputError, FreqMergeError, MissingKeysError,
                     NonFiniteError, ParameterError, ShapeMismatchError)
from .experts import Expert, LowRankExpert, extract_experts, storage_table, svd_experts
from .io import LazyState, load_state, parse_size, save_state
from .keys import select_keys
from .metrics import (AmplitudeVarianceResult, SignConflictResult, amplitude_variance,
                      cosine_similarity_matrix, low_frequency_energy, low_frequency_energy_by_task,
                      sign_conflicts)
from .spectral import (FilterSpec, Profile, amplitude_spectrum, angular_profile, apply_filter,
                       as_matrix, band_energy_fraction, clear_mask_cache, filter_parameter,
                       filter_stack, fourier_transform, frequency_filter, frequency_mask,
                       log_amplitude_spectrum, power_spectrum, radial_frequency, radial_profile)
from .methods import MergeMethod, Param, get_method, list_methods, merge, method_transform
from .routed import (EMRMerging, FreeMerging, RoutedMerge, TwinMerging, emr_merging, free_merging,
                     list_routed_methods, routed_merge, twin_merging)
from .routing import MLPRouter, OracleRouter, RandomRouter, Router, group_by_route, routed_apply
from .taskvector import TaskVector
from . import analysis, zoo
from .engine import EvalResult, StackedStates, evaluate_on_zoo, evaluate_params
from .widgets import CutoffExplorer
from .zoo import evaluate, mean_accuracy, normalized_accuracy

__version__ = "0.1.0"

__all__ = [
    "AmplitudeVarianceResult", "CheckpointError", "EmptyInputError", "FilterSpec", "FreqMergeError",
    "LazyState", "MissingKeysError", "NonFiniteError", "ParameterError", "Profile",
    "ShapeMismatchError", "SignConflictResult", "TaskVector", "amplitude_spectrum",
    "amplitude_variance", "angular_profile", "apply_filter", "as_matrix", "band_energy_fraction",
    "clear_mask_cache", "cosine_similarity_matrix", "default_device", "filter_parameter",
    "filter_stack", "fourier_transform", "frequency_filter", "frequency_mask", "load_state",
    "log_amplitude_spectrum", "low_frequency_energy", "low_frequency_energy_by_task",
    "parse_size", "power_spectrum", "radial_frequency", "radial_profile", "save_state",
    "select_keys", "sign_conflicts", "MergeMethod", "Param", "get_method", "list_methods", "merge",
    "method_transform", "Expert", "LowRankExpert", "extract_experts", "storage_table", "svd_experts",
    "EMRMerging", "FreeMerging", "RoutedMerge", "TwinMerging", "emr_merging", "free_merging",
    "list_routed_methods", "routed_merge", "twin_merging", "MLPRouter", "OracleRouter", "RandomRouter", "Router", "group_by_route", "routed_apply",
    "zoo", "evaluate", "mean_accuracy", "normalized_accuracy", "analysis", "EvalResult", "StackedStates",
    "evaluate_on_zoo", "evaluate_params", "CutoffExplorer",
]
