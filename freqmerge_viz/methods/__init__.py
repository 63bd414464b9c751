"""Merge methods, found by name in one registry (see :mod:`.base`)."""

from . import fr, linear, pcb, sparse  # noqa: F401  (registers the methods)
from .base import MergeContext, MergeMethod, Param, get_method, list_methods, merge, method_transform, register

__all__ = ["MergeContext", "MergeMethod", "Param", "get_method", "list_methods", "merge", "method_transform",
           "register"]
