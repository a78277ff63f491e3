"""A nightly transfer function: the calibrations of a night's exposures combined.

Every exposure of one instrument setup sees the same spectrograph and, up to
a grey factor (transparency, seeing losses), the same atmosphere.  Combining
their calibration vectors gives a shape measured with many more standards
than any single exposure has, a per-exposure grey factor that flags cloudy
exposures, and a calibration for an exposure whose own standards failed
(``apply_calibration`` on ``ds.assign(calibration=…)``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

import numpy as np
import xarray as xr

from ._base.errors import CalibrationError
from ._base.maskbits import bit
from .io import open_red
from .stages.medium import resolve_medium, vacuum_wavelength

__all__ = ["nightly_transfer", "NIGHTLY_NAME"]

#: file name of the nightly transfer function written by ``calibrate_many(nightly=True)``
NIGHTLY_NAME = "kspec_xr_nightly_calibration.nc"


def _calibration_of(item) -> tuple[str, xr.Dataset]:
    if isinstance(item, xr.Dataset):
        ds, name = item, str(item.encoding.get("source", "exposure"))
    else:
        ds, name = open_red(item), os.fspath(item)
    if "calibration" not in ds:
        raise CalibrationError(f"{name}: not flux-calibrated (no calibration vector)")
    keep = ["calibration", "calibration_variance", "calibration_mask"]
    return name, ds[keep].compute()


def nightly_transfer(exposures: Iterable, /, *, sigma: float = 3.0) -> xr.Dataset:
    """Combine calibrated exposures of one setup into a nightly transfer function.

    Parameters
    ----------
    exposures : iterable of paths or Datasets
        Calibrated RED files (``write_red`` output) or calibrated Datasets.
    sigma : float
        Exposures whose grey factor is more than ``sigma`` robust standard
        deviations from the median are left out of the shape (clouds).

    Returns
    -------
    xr.Dataset
        ``calibration``, ``calibration_variance``, ``calibration_rms``
        (fractional RMS across exposures) and ``calibration_mask`` on
        ``wavelength`` (the first exposure's grid, in its medium: ``medium``
        attribute; the exposures are matched on vacuum wavelengths, each in
        the medium its calibration used); ``exposure_scale`` (each
        exposure's calibration over the nightly one, median over good pixels:
        1 = typical, > 1 = less light got through), ``exposure_used`` and
        ``exposure_name`` on ``exposure``.

    Raises
    ------
    CalibrationError
        No exposure, an exposure that is not calibrated, or fewer than one
        usable exposure.

    Notes
    -----
    Each exposure's calibration is interpolated onto the first one's grid and
    divided by its grey factor ``g_e`` (median ratio to the per-pixel median
    of all); the shape is the inverse-variance mean of ``Cal_e / g_e`` over
    the exposures kept, with variance ``1/Σ(g_e²/Var_e)``.
    """
    items = [_calibration_of(e) for e in exposures]
    if not items:
        raise CalibrationError("no exposure given to combine")
    names = [n for n, _ in items]
    wave = items[0][1]["wavelength"].values
    medium, _ = resolve_medium(items[0][1])
    # exposures meet on vacuum wavelengths (one may be in air, another in vacuum)
    vacuum = vacuum_wavelength(items[0][1]).values
    cal_rows, var_rows, good_rows = [], [], []
    for _, ds in items:
        w = vacuum_wavelength(ds).values
        c = np.interp(vacuum, w, ds["calibration"].values, left=np.nan, right=np.nan)
        v = np.interp(vacuum, w, ds["calibration_variance"].values, left=np.nan, right=np.nan)
        m = np.interp(vacuum, w, ds["calibration_mask"].values, left=1, right=1)
        bad = bit("TELLURIC", "CALIB_INTERP", "CALIB_INVALID")
        cal_rows.append(c)
        var_rows.append(v)
        good_rows.append(((m.astype(int) & bad) == 0) & np.isfinite(c) & np.isfinite(v) & (v > 0))
    cal, var, good = np.array(cal_rows), np.array(var_rows), np.array(good_rows)

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: masked everywhere
        reference = np.nanmedian(np.where(good, cal, np.nan), axis=0)
        ratio = np.where(good, cal / reference, np.nan)
        scale = np.nanmedian(ratio, axis=1)
    spread = 1.4826 * np.nanmedian(np.abs(scale - np.nanmedian(scale)))
    used = np.isfinite(scale)
    if spread > 0 and used.sum() > 2:
        used &= np.abs(scale - np.nanmedian(scale)) <= sigma * spread
    if not used.any():
        raise CalibrationError("no exposure has a usable calibration to combine")

    norm = cal / scale[:, None]
    w = np.where(good & used[:, None], scale[:, None] ** 2 / var, 0.0)
    wsum = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shape = np.where(wsum > 0, (w * np.nan_to_num(norm)).sum(axis=0) / wsum, np.nan)
        shape_var = np.where(wsum > 0, 1.0 / wsum, np.nan)
        n = (w > 0).sum(axis=0)
        rel = np.where(w > 0, norm / shape - 1.0, 0.0)
        rms = np.where(n > 1, np.sqrt((rel**2).sum(axis=0) / np.maximum(n - 1, 1)), np.nan)
    gap = ~np.isfinite(shape)
    if np.count_nonzero(~gap) >= 2:
        shape[gap] = np.interp(wave[gap], wave[~gap], shape[~gap])
        shape_var[gap] = np.interp(wave[gap], wave[~gap], shape_var[~gap])
    units = items[0][1]["calibration"].attrs.get("units", "")
    return xr.Dataset(
        {
            "calibration": (
                "wavelength",
                shape,
                {"units": units, "long_name": "nightly calibration"},
            ),
            "calibration_variance": ("wavelength", shape_var, {"units": f"({units})2"}),
            "calibration_rms": (
                "wavelength",
                rms,
                {"units": "1", "long_name": "RMS across exposures"},
            ),
            "calibration_mask": (
                "wavelength",
                (gap * bit("CALIB_INTERP")).astype("int32"),
                {"units": "1"},
            ),
            "exposure_scale": (
                "exposure",
                scale,
                {"units": "1", "long_name": "exposure calibration / nightly calibration"},
            ),
            "exposure_used": ("exposure", used),
            "exposure_name": ("exposure", np.array(names, dtype=str)),
        },
        coords={"wavelength": ("wavelength", wave, {"units": "Angstrom", "medium": medium})},
        attrs={"n_exposures": int(used.sum()), "wavelength_medium": medium},
    )
