"""The data model's names: units, FITS bookkeeping attributes, statuses, accessors.

- Units and attribute names every layer agrees on (:data:`FLUX_UNITS`, the
  ``fits_*`` attributes with which a Dataset remembers its RED file).
- Why a standard star does or does not contribute to the calibration: every
  stage that can rule a standard out sets ``standard_status`` (a
  :class:`StandardStatus` code on the ``standard`` dimension, CF
  ``flag_values``/``flag_meanings``); the first reason found wins and later
  stages leave it alone.  ``standard_reason`` is the same information as one
  line of text per star, with the numbers behind the decision, made by
  :func:`reason_text` from the status and the diagnostics on the Dataset.
  Nothing travels as free text that is parsed back.
- Small accessors the stages share (:func:`standard_index`,
  :func:`standards_used`, :func:`bare`).
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr

from .errors import CalibrationError
from .status import (
    REASON_WIDTH,
    FitStatus,
    StandardStatus,
    fit_status_attrs,
    reason_text,
    status_attrs,
)

__all__ = [
    "FLUX_UNITS",
    "FLUX_VARIANCE_UNITS",
    "LEGACY_FLUX_UNITS",
    "is_flux_units",
    "HEADER_ATTR",
    "HDU_ATTR",
    "COLUMN_ATTR",
    "RAW_ATTR",
    "ORDER_ATTR",
    "HISTORY_ATTR",
    "MEDIA",
    "MEDIUM_ATTR",
    "MEDIUM_SOURCE_ATTR",
    "DS_MEDIUM_ATTR",
    "DS_MEDIUM_SOURCE_ATTR",
    "StandardStatus",
    "FitStatus",
    "status_attrs",
    "fit_status_attrs",
    "reason_text",
    "with_status",
    "standards_used",
    "standard_reasons",
    "standard_index",
    "source_name",
    "bare",
    "stage",
    "REASON_WIDTH",
]

#: units of calibrated flux density, as the FITS standard spells them (kspecdr and
#: earlier kspec_xr wrote "erg/cm2/s/A", which FITS readers take as per ampere)
FLUX_UNITS = "erg/(s cm2 Angstrom)"
#: units of the variance of calibrated flux density
FLUX_VARIANCE_UNITS = "erg2/(s2 cm4 Angstrom2)"
#: older spellings of :data:`FLUX_UNITS` still found in files
LEGACY_FLUX_UNITS = ("erg/cm2/s/A", "erg/s/cm2/A")


def is_flux_units(units) -> bool:
    """True if ``units`` is :data:`FLUX_UNITS` in the current or an older spelling."""
    return isinstance(units, str) and units.strip() in (FLUX_UNITS, *LEGACY_FLUX_UNITS)


# How a Dataset remembers its RED file (see kspec_xr.io): the primary header,
# the HDU and header a variable came from, the table column it holds, the raw
# column behind a converted coordinate, the order of the HDUs, the history.
HEADER_ATTR = "fits_header"
HDU_ATTR = "fits_hdu"
COLUMN_ATTR = "fits_column"
RAW_ATTR = "fits_raw_of"
ORDER_ATTR = "fits_hdu_order"
HISTORY_ATTR = "history"

# The medium of the wavelengths, "air" or "vacuum" (see kspec_xr.stages.medium):
# as the file declares it (attrs of the ``wavelength`` coordinate, set by the reader
# from CTYPEn; absent when the file does not say) and as a calibration used it
# (Dataset attrs, set by the stages, written as FCALMED).
MEDIA = ("air", "vacuum")
MEDIUM_ATTR = "medium"
MEDIUM_SOURCE_ATTR = "medium_source"
DS_MEDIUM_ATTR = "wavelength_medium"
DS_MEDIUM_SOURCE_ATTR = "wavelength_medium_source"


#: diagnostic variable on the Dataset -> key of ``reason_text``'s ``d``
_DIAGNOSTICS = {
    "catalog_sep": "catalog_sep",
    "fit_status": "fit_status",
    "std_valid_fraction": "valid_fraction",
    "std_snr": "snr",
    "std_phot_rms": "phot_rms",
    "std_chi2_ratio": "chi2_ratio",
    "std_zero_point": "zero_point",
    "std_zero_point_limit": "zp_limit",
    "std_tilt": "tilt",
    "std_tilt_limit": "tilt_limit",
    "std_clipped_fraction": "clipped",
}


def _reasons_kernel(status, *values, keys, limits):
    out = np.empty(status.shape, dtype=f"<U{REASON_WIDTH}")
    for k in np.ndindex(status.shape):
        d = {key: float(v[k]) for key, v in zip(keys, values, strict=True)}
        out[k] = reason_text(int(status[k]), d, limits)[:REASON_WIDTH]
    return out


def with_status(ds: xr.Dataset, status: xr.DataArray, /) -> xr.Dataset:
    """``ds`` with ``standard_status`` set to ``status`` and ``standard_reason`` remade.

    Lazy on dask-backed Datasets: the reasons are made when computed.
    """
    if "standard" in status.indexes and "standard" in ds.indexes:
        xr.align(status, ds["standard"], join="exact")  # as apply_ufunc on DataArrays did
    # Variables from here on: nothing to align, no coordinates to build and drop
    status = status.variable.astype("int16")
    variables = ds.variables
    names = [n for n in _DIAGNOSTICS if n in variables and variables[n].dims == ("standard",)]
    limits = {k: float(v) for k, v in ds.attrs.items() if k.startswith("gate_")}
    limits = {k.removeprefix("gate_"): v for k, v in limits.items()}
    limits["radius"] = float(ds.attrs.get("catalog_radius_arcsec", np.nan))
    values = (variables[n] for n in names)
    reason = xr.apply_ufunc(
        _reasons_kernel,
        status,
        *(v if v.dtype == np.float64 else v.astype(float) for v in values),
        kwargs={"keys": [_DIAGNOSTICS[n] for n in names], "limits": limits},
        dask="parallelized",
        output_dtypes=[np.dtype(f"<U{REASON_WIDTH}")],
        keep_attrs=False,
    )
    return ds.assign(
        standard_status=xr.Variable(status.dims, status.data, status_attrs()),
        standard_reason=xr.Variable(
            reason.dims, reason.data, {"long_name": "why a standard is not used ('' = used)"}
        ),
    )


def standards_used(ds: xr.Dataset, /) -> xr.DataArray:
    """Which standards contribute to the calibration (lazy-safe): status OK."""
    return ds["standard_status"] == StandardStatus.OK


def standard_reasons(ds: xr.Dataset, /) -> np.ndarray:
    """Why each standard is not used ('' when it is), from computed values."""
    return np.asarray(ds["standard_reason"].values).astype(str)


def source_name(ds: xr.Dataset) -> str:
    """The file an exposure came from, for messages ('this exposure' if unknown)."""
    return str(ds.encoding.get("source", "this exposure"))


def standard_index(ds: xr.Dataset) -> np.ndarray:
    """Positions along ``fiber`` of the selected standards (after select_standards)."""
    if "standard_fiber" not in ds:
        raise CalibrationError(
            "this Dataset has no standards selected; run ds.pipe(kx.select_standards) first"
        )
    return ds.indexes["fiber"].get_indexer(np.asarray(ds["standard_fiber"].values))


def bare(da: xr.DataArray) -> xr.DataArray:
    """``da`` without coordinates, so that ``ds.assign`` keeps the Dataset's own.

    ``xr.apply_ufunc(..., keep_attrs=False)`` returns coordinates without their
    attributes; assigning such a result would replace the Dataset's coordinates
    (and their units) with those bare copies.
    """
    return da.drop_vars(list(da.coords))


def stage(func):
    """Mark a pipeline stage: its arithmetic keeps no attributes, the stage sets them.

    xarray keeps (and merges) the attributes of the operands of arithmetic by
    default, so ``flag_values`` of a status would end up on a mask and
    ``system: AB`` of a magnitude on a flux; inside a stage every result
    starts bare and gets its attributes deliberately (``assign_attrs``).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with xr.set_options(keep_attrs=False):
            return func(*args, **kwargs)

    return wrapper
