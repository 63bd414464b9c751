"""Interactive explorers for Jupyter (ipywidgets + plotly ``FigureWidget``), drivable from Python.

Each explorer is a thin stateful object over the library's pure functions: ``explorer.set(**values)``
applies settings through the same path as its controls, ``explorer.shown()`` returns the
numbers on display, ``explorer.export(path)`` writes PNG/SVG/PDF (matplotlib) or HTML (plotly). :class:`Dashboard`
shows the three of one study in tabs (``freqmerge-viz serve`` serves it as a web app).
"""

from .base import DEBOUNCE_S, Debouncer, Explorer, default_schedule
from .cutoff import CutoffExplorer, CutoffView, cutoff_methods
from .dashboard import Dashboard
from .experts import ExpertExplorer, ExpertView
from .landscape import LandscapeView, LandscapeViewer, method_choices

__all__ = ["DEBOUNCE_S", "CutoffExplorer", "CutoffView", "Dashboard", "Debouncer", "ExpertExplorer", "ExpertView", "Explorer",
           "LandscapeView", "LandscapeViewer", "cutoff_methods", "default_schedule", "method_choices"]
