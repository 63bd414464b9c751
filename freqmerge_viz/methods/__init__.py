"""Merge methods, plain and routed, found by name in one registry (see :mod:`.base`)."""

from . import fr, linear, pcb, sparse  # noqa: F401  (registers the plain methods)
from . import cart, consensus, isotropic, tsv, wudi  # noqa: F401  (the singular-value and mask baselines)
from . import routed  # noqa: F401  (registers free, emr, twin)
from .base import (MergeContext, MergeMethod, Param, ResolvedMethod, get_method, list_methods, merge,
                   method_transform, register)
from .routed import (EMRMerging, FreeMerging, RoutedMerge, RoutedMethod, TwinMerging, emr_merging, free_merging,
                     list_routed_methods, routed_merge, twin_merging)

__all__ = ["MergeContext", "MergeMethod", "Param", "ResolvedMethod", "get_method", "list_methods", "merge",
           "method_transform", "register", "EMRMerging", "FreeMerging", "RoutedMerge", "RoutedMethod", "TwinMerging",
           "emr_merging", "free_merging", "list_routed_methods", "routed_merge", "twin_merging"]
