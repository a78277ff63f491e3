"""Apply the combined flux calibration to every fiber, with full variance propagation."""

from __future__ import annotations

import xarray as xr

from .._base.errors import CalibrationError
from .._base.maskbits import bit
from .._base.provenance import add_history
from .._base.schema import FLUX_UNITS, FLUX_VARIANCE_UNITS, is_flux_units, stage

__all__ = ["apply_calibration"]


@stage
def apply_calibration(ds: xr.Dataset, /) -> xr.Dataset:
    """Calibrate every fiber: ``F = C·Cal`` and ``Var = Var_C·Cal² + C²·Var_Cal``.

    Parameters
    ----------
    ds : xr.Dataset
        An exposure with ``calibration``, ``calibration_variance`` and
        ``calibration_mask`` along ``wavelength`` (from
        :func:`combine_calibrations`, or from another exposure's output).

    Returns
    -------
    xr.Dataset
        ``flux`` and ``variance`` in erg/(s cm2 Angstrom) and its square; ``mask``
        gains the calibration's bits (``TELLURIC``, ``CALIB_INTERP``,
        ``CALIB_INVALID``).  Pixels are flagged, never zeroed.

    Raises
    ------
    CalibrationError
        The Dataset has no calibration, or is calibrated already.
    """
    if "calibration" not in ds:
        raise CalibrationError(
            "no calibration on this Dataset; run combine_calibrations first (or "
            "ds.assign(calibration=..., calibration_variance=..., calibration_mask=...))"
        )
    if is_flux_units(ds["flux"].attrs.get("units")):
        raise CalibrationError(
            f"this exposure is flux-calibrated already (flux units {FLUX_UNITS})"
        )
    cal = ds["calibration"]
    var_cal = ds["calibration_variance"]
    counts, var_counts = ds["flux"], ds["variance"]
    flux = counts * cal
    variance = var_counts * cal**2 + counts**2 * var_cal
    calmask = (
        ds["calibration_mask"] if "calibration_mask" in ds else xr.zeros_like(cal, dtype="int32")
    )
    carried = calmask & (bit("TELLURIC") | bit("CALIB_INTERP") | bit("CALIB_INVALID"))
    out = ds.assign(
        # float64: a calibrated variance (~1e-36) would underflow float32's normal range
        flux=flux.astype("float64").assign_attrs(counts.attrs, units=FLUX_UNITS),
        variance=variance.astype("float64").assign_attrs(
            var_counts.attrs, units=FLUX_VARIANCE_UNITS
        ),
        mask=(ds["mask"] | carried).astype(ds["mask"].dtype).assign_attrs(ds["mask"].attrs),
    )
    return add_history(out, "apply_calibration: F = C*Cal, Var = VarC*Cal^2 + C^2*VarCal")
