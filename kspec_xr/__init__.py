"""kspec_xr: flux calibration of K-SPEC fiber spectra with xarray and dask.

The public names are imported lazily (on first use) so that ``import
kspec_xr`` and the command line start fast.

>>> import kspec_xr as kx
>>> ds = kx.open_red("run1_red.fits")                       # doctest: +SKIP
>>> out = ds.pipe(kx.flux_calibrate, catalog="stars.csv")   # doctest: +SKIP
>>> kx.write_red(out, "run1_red_fcal.fits")                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from ._base.errors import (
    CalibrationError,
    CatalogError,
    KspecError,
    KspecWarning,
    OutputExistsError,
    RedFileError,
    TemplateError,
)

try:
    __version__ = version("kspec_xr")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "open_red": "io",
    "write_red": "io",
    "read_catalog": "io",
    "read_assign": "io",
    "assign_fiber_types": "io",
    "primary_header": "_base.provenance",
    "with_header_cards": "_base.provenance",
    "add_history": "_base.provenance",
    "StandardStatus": "_base.schema",
    "FitStatus": "_base.schema",
    "with_status": "_base.schema",
    "open_bosz": "templates",
    "pack_bosz": "templates",
    "parse_bosz_name": "templates",
    "bosz_name": "templates",
    "standin_grid_path": "templates",
    "prepare_templates": "templates",
    "PreparedTemplates": "templates",
    "synthetic_mags": "stages",
    "vacuum_wavelength": "stages",
    "air_to_vacuum": "kernels.air",
    "vacuum_to_air": "kernels.air",
    "teff_from_colors": "stages",
    "select_standards": "stages",
    "associate_catalog": "stages",
    "fit_standards": "stages",
    "scale_to_photometry": "stages",
    "star_calibrations": "stages",
    "gate_standards": "stages",
    "combine_calibrations": "stages",
    "apply_calibration": "stages",
    "flux_calibrate": "pipeline",
    "calibrate_file": "pipeline",
    "apply_fluxcal": "pipeline",
    "plot_calibration": "qc",
    "calibrate_many": "batch",
}

# modules reachable as attributes under a short name (``kx.maskbits.bit``)
_MODULES = {"maskbits": "_base.maskbits", "errors": "_base.errors", "schema": "_base.schema"}

__all__ = [
    "__version__",
    "KspecError",
    "RedFileError",
    "CatalogError",
    "TemplateError",
    "CalibrationError",
    "OutputExistsError",
    "KspecWarning",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(f".{_MODULES[name]}", __name__)
    elif name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'kspec_xr' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
