"""The stages of the flux calibration: each a pure ``Dataset -> Dataset`` function.

In order: :func:`select_standards`, :func:`associate_catalog`,
:func:`fit_standards`, :func:`scale_to_photometry`,
:func:`star_calibrations`, :func:`gate_standards`,
:func:`combine_calibrations`, :func:`apply_calibration`; plus
:func:`synthetic_mags` and :func:`teff_from_colors` for spectra and colors.
One stage per module; they do not import each other (``medium``, the
air/vacuum helpers they share, is not a stage).
"""

from .apply import apply_calibration
from .associate import associate_catalog
from .combine import combine_calibrations
from .fit import fit_standards, header_fwhm, teff_from_colors
from .gate import GATE_DEFAULTS, gate_standards
from .medium import DEFAULT_MEDIUM, resolve_medium, vacuum_wavelength
from .photometry import band_weights, synthetic_mags
from .resolution import measure_resolution, measured_fwhm, nominal_fwhm, sharp_fwhm
from .scale import MAG_ERROR_FLOOR, scale_to_photometry
from .select import select_standards
from .star_calibrations import star_calibrations

__all__ = [
    "select_standards",
    "associate_catalog",
    "fit_standards",
    "scale_to_photometry",
    "star_calibrations",
    "gate_standards",
    "combine_calibrations",
    "apply_calibration",
    "synthetic_mags",
    "band_weights",
    "teff_from_colors",
    "header_fwhm",
    "measure_resolution",
    "measured_fwhm",
    "nominal_fwhm",
    "sharp_fwhm",
    "GATE_DEFAULTS",
    "vacuum_wavelength",
    "resolve_medium",
    "DEFAULT_MEDIUM",
    "MAG_ERROR_FLOOR",
]
