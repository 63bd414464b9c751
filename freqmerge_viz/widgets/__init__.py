"""Interactive explorers for Jupyter (ipywidgets + plotly ``FigureWidget``), drivable from Python.

Each explorer is a thin stateful object over the library's pure functions: ``explorer.set(**values)``
applies settings through the same path as its controls, ``explorer.shown()`` returns the
numbers on display, ``explorer.export(path)`` writes PNG/SVG/PDF (matplotlib) or HTML (plotly).
"""

from .base import DEBOUNCE_S, Debouncer, Explorer, default_schedule
from .cutoff import CutoffExplorer, CutoffView, cutoff_methods

__all__ = ["DEBOUNCE_S", "CutoffExplorer", "CutoffView", "Debouncer", "Explorer", "cutoff_methods",
           "default_schedule"]
