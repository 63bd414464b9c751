"""Analyses that turn task vectors into tidy tables (pandas) ready to plot."""

from .interference import FilterSetting, interference_table
from .spectra import radial_profiles_table, spectra_of_key

__all__ = ["FilterSetting", "interference_table", "radial_profiles_table", "spectra_of_key"]
