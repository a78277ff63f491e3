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

from .errors import (
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

# public name -> module that defines it
_LAZY = {
    "open_red": "io",
    "write_red": "io",
    "open_bosz": "templates",
    "pack_bosz": "templates",
    "parse_bosz_name": "templates",
    "bosz_name": "templates",
    "standin_grid_path": "standin",
    "prepare_templates": "prepare",
    "synthetic_mags": "photometry",
    "read_catalog": "catalog",
    "teff_from_colours": "photometry",
    "read_assign": "io",
    "primary_header": "io",
    "with_header_cards": "io",
    "add_history": "io",
    "assign_fiber_types": "io",
    "select_standards": "standards",
    "associate_catalog": "standards",
    "fit_standards": "fitting",
    "scale_to_photometry": "calibration",
    "star_calibrations": "calibration",
    "gate_standards": "gating",
    "combine_calibrations": "calibration",
    "apply_calibration": "apply",
    "flux_calibrate": "pipeline",
    "apply_fluxcal": "pipeline",
    "plot_calibration": "qc",
    "calibrate_many": "distributed",
}

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
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kspec_xr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
