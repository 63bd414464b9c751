"""Figures: matplotlib for static export (PNG/SVG/PDF), plotly for interactive HTML.

Every figure function takes plain arrays or tidy tables and returns a figure; the
``save_*`` helpers write files atomically (temporary name, then rename). One module per
topic; :mod:`.core` holds the export helpers and the spectra figures.
"""

from .core import (HTML_JS, PLOTLY_JS, STATIC_FORMATS, interference_figure, radial_profiles_figure,
                   radial_profiles_plotly, save_figure, save_html, shared_plotly_js, spectra_grid)

__all__ = ["HTML_JS", "PLOTLY_JS", "STATIC_FORMATS", "interference_figure", "radial_profiles_figure",
           "radial_profiles_plotly", "save_figure", "save_html", "shared_plotly_js", "spectra_grid"]
