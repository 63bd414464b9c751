"""freqmerge-viz: study model merging in the frequency domain.

The core is a set of pure functions over ``[..., H, W]`` tensors (:mod:`.spectral`,
:mod:`.metrics`) with a few thin stateful objects on top: lazily loaded checkpoints
(:func:`load_state`) and task vectors (:class:`TaskVector`).
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "backend": ["default_device"],
    "errors": ["CheckpointError", "EmptyInputError", "FreqMergeError", "MissingKeysError", "NonFiniteError",
               "OutputError", "ParameterError", "ScopeWarning", "ShapeMismatchError"],
    "experts": ["Expert", "LowRankExpert", "SVDFactors", "extract_experts", "storage_table", "svd_experts"],
    "io": ["LazyState", "load_state", "parse_size", "save_state"],
    "keys": ["select_keys"],
    "scopes": ["detect_architecture"],
    "metrics": ["AmplitudeVarianceResult", "SignConflictResult", "amplitude_variance", "cosine_similarity_matrix",
                "low_frequency_energy", "low_frequency_energy_by_task", "sign_conflicts"],
    "spectral": ["FilterSpec", "Profile", "amplitude_spectrum", "angular_profile", "apply_filter", "as_matrix",
                 "band_energy_fraction", "clear_mask_cache", "filter_parameter", "filter_stack",
                 "fourier_transform", "frequency_filter", "frequency_mask", "log_amplitude_spectrum",
                 "power_spectrum", "radial_frequency", "radial_profile"],
    "methods": ["MergeMethod", "Param", "ResolvedMethod", "get_method", "list_methods", "merge", "method_transform",
                "EMRMerging", "FreeMerging", "RoutedMerge", "TwinMerging", "emr_merging", "free_merging",
                "list_routed_methods", "routed_merge", "twin_merging"],
    "routing": ["MLPRouter", "OracleRouter", "RandomRouter", "Router", "group_by_route", "routed_apply"],
    "taskvector": ["TaskVector"],
    "engine": ["EvalResult", "StackedStates", "evaluate_params"],
    "zoo.evaluation": ["evaluate_on_zoo"],
    "study": ["FunctionalStudy", "Study", "StudySpecError", "as_study", "evaluate_on_study", "load_study"],
    "widgets": ["CutoffExplorer"],
    "zoo": ["evaluate", "mean_accuracy", "normalized_accuracy"],
    "merge_job": ["merge_to_disk", "verify_merge"],
}
"""Public names and the module each comes from. They are imported on first use (PEP 562), so
``import freqmerge_viz`` and the command line's ``--help`` do not pay for torch, pandas or plotly."""
_SUBMODULES = ("analysis", "zoo", "plots", "widgets", "tutorial", "methods", "io", "outputs", "spectral",
               "metrics", "taskvector", "engine", "routing", "experts", "errors", "backend",
               "merge_job", "figures", "report", "keys", "scopes", "benchmarks", "synthetic", "topics", "tables", "stats", "study")
_ORIGIN = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_ORIGIN) + ["analysis", "zoo", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _ORIGIN:
        value = getattr(importlib.import_module(f".{_ORIGIN[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'freqmerge_viz' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
