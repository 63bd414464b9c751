"""Spectra, frequency masks and filters of matrices, in four floors (each imports only those above it):

:mod:`.masks`: frequency coordinates, cutoff units and mask computations (the module docstring
    explains the units and conventions);
:mod:`.spectra`: Fourier transforms, amplitude and power spectra, radial and angular profiles;
:mod:`.fastpath`: the exact low-band path of ideal filters and the cost model choosing it;
:mod:`.filters`: applying a filter to matrices (one entry point for every path);
:mod:`.spec`: :class:`FilterSpec`, the checked description of a filter, with its mask and its
    application.

Every public name is importable from here.
"""

from __future__ import annotations

from .masks import (BANDS, CONVENTIONS, KINDS, ONE_D_MODES, RINGS, UNITS, as_matrix, frequency_indices, matrix_stack, half_spectrum_weights, radial_frequency)
from .spectra import (Profile, RadialShells, amplitude_from_rows, amplitude_spectrum, angular_profile, band_energy_fraction, fourier_transform, half_amplitude, half_amplitudes, half_radial_profile, log_amplitude_spectrum, power_spectrum, radial_profile, radial_shells)
from .fastpath import (AXIS_METHODS, BAND_MODES, COST_TERMS, FILTER_COST, LowbandPlan, PATHS, fft_path_cost, fft_path_terms, filter_costs, filter_path, lowband_filter_, lowband_plans, lowband_terms)
from .filters import (apply_filter, clear_mask_cache, filter_matrix_, filter_parameter, filter_stack)
from .spec import (FilterSpec, frequency_filter, frequency_mask)

__all__ = ['AXIS_METHODS', 'BANDS', 'BAND_MODES', 'CONVENTIONS', 'COST_TERMS', 'FILTER_COST', 'FilterSpec', 'KINDS', 'LowbandPlan', 'ONE_D_MODES', 'PATHS', 'Profile', 'RINGS', 'RadialShells', 'UNITS', 'amplitude_from_rows', 'amplitude_spectrum', 'angular_profile', 'apply_filter', 'as_matrix', 'band_energy_fraction', 'clear_mask_cache', 'fft_path_cost', 'fft_path_terms', 'filter_costs', 'filter_matrix_', 'filter_parameter', 'filter_path', 'filter_stack', 'fourier_transform', 'frequency_filter', 'frequency_indices', 'frequency_mask', 'half_amplitude', 'half_amplitudes', 'half_radial_profile', 'half_spectrum_weights', 'log_amplitude_spectrum', 'lowband_filter_', 'lowband_plans', 'lowband_terms', 'matrix_stack', 'power_spectrum', 'radial_frequency', 'radial_profile', 'radial_shells']
