"""From fitted standards to one calibration vector.

Three pure stages, lazy on dask-backed exposures:

- :func:`scale_to_photometry` — the absolute level of each star's model from
  its catalogue photometry;
- :func:`star_calibrations` — each star's calibration ``F_model / C_obs``
  with its variance and validity;
- :func:`combine_calibrations` — their robust inverse-variance mean,
  interpolated across masked bands, optionally smoothed, with the RMS across
  stars as QC.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.signal import savgol_coeffs, savgol_filter

from .errors import CalibrationError
from .io import add_history
from .maskbits import bit
from .regions import in_regions
from .standards import standard_index

__all__ = [
    "standards_used",
    "standard_reasons",
    "scale_to_photometry",
    "star_calibrations",
    "combine_calibrations",
    "STELLAR_LINES",
    "MAG_ERROR_FLOOR",
]

#: smallest photometric error used in the weights (mag): zero-point and
#: bandpass uncertainties of the catalogue bands
MAG_ERROR_FLOOR = 0.01

#: strong stellar lines whose cores are masked in the per-star calibrations
#: (vacuum Å, half-width Å): templates rarely match their cores to 1 %
STELLAR_LINES = (
    (3934.8, 12.0),  # Ca II K
    (3969.6, 12.0),  # Ca II H / Hε
    (4102.9, 14.0),  # Hδ
    (4341.7, 14.0),  # Hγ
    (4862.7, 16.0),  # Hβ
    (5891.6, 6.0),  # Na D
    (6564.6, 18.0),  # Hα
    (8500.4, 8.0),  # Ca triplet
    (8544.4, 8.0),
    (8664.5, 8.0),
)

_LN10_04 = 0.4 * np.log(10.0)


def standards_used(ds: xr.Dataset, /) -> xr.DataArray:
    """Which standards the calibration uses (lazy-safe): matched, fitted and scaled."""
    used = ds["standard_reason"] == ""
    if "fit_status" in ds:  # 3 = no colours: the spectrum alone set Teff, still usable
        used = used & ((ds["fit_status"] == 0) | (ds["fit_status"] == 3))
    if "scale" in ds:
        used = used & np.isfinite(ds["scale"])
    return used


def standard_reasons(ds: xr.Dataset, /) -> np.ndarray:
    """Why each standard is not used ('' when it is), from computed values."""
    from .fitting import FIT_STATUS

    reasons = np.asarray(ds["standard_reason"].values).astype(object)
    status = np.asarray(ds["fit_status"].values) if "fit_status" in ds else None
    scale = np.asarray(ds["scale"].values) if "scale" in ds else None
    for k, reason in enumerate(reasons):
        if reason:
            continue
        if status is not None and status[k] not in (0, 3):
            reasons[k] = "template fit failed: " + FIT_STATUS[int(status[k])].replace("_", " ")
        elif scale is not None and not np.isfinite(scale[k]):
            reasons[k] = "no photometric scale (no catalogue band covered by the grid)"
    return reasons.astype(str)


def scale_to_photometry(ds: xr.Dataset, /, *, error_floor: float = MAG_ERROR_FLOOR) -> xr.Dataset:
    """Scale each star's model to its catalogue photometry.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.fit_standards` (``model_mag``, ``std_mag``,
        ``std_mag_err``).
    error_floor : float
        Added in quadrature to every catalogue error (mag).

    Returns
    -------
    xr.Dataset
        Adds ``scale`` and ``scale_err`` (standard), ``phot_residual``
        (standard, band: m_obs − m_syn − Δ̄) and ``phot_nbands``.

    Notes
    -----
    ``Δ̄ = Σ w_b (m_obs,b − m_syn,b) / Σ w_b`` with ``w_b = 1/σ_b²``;
    ``scale = 10**(−0.4·Δ̄)``, ``σ_scale = scale · 0.4 ln10 · σ_Δ̄`` with
    ``σ_Δ̄ = max(1/√Σw, rms of the residuals/√(n−1))`` so that photometry
    that disagrees with the model beyond its errors widens the error.
    """
    delta = ds["std_mag"] - ds["model_mag"]
    err2 = ds["std_mag_err"] ** 2 + error_floor**2
    w = (1.0 / err2).where(np.isfinite(delta))
    n = w.notnull().sum("band")
    wsum = w.sum("band")
    mean = (w * delta).sum("band") / wsum
    resid = delta - mean
    formal = 1.0 / np.sqrt(wsum)
    scatter = np.sqrt((w * resid**2).sum("band") / wsum / np.maximum(n - 1, 1))
    sigma = xr.where(n > 1, np.maximum(formal, scatter), formal)
    scale = (10 ** (-0.4 * mean)).where(n > 0)
    out = ds.assign(
        scale=scale.assign_attrs(
            units="1", long_name="model-to-photometry scale (dilution factor)"
        ),
        scale_err=(scale * _LN10_04 * sigma).assign_attrs(units="1"),
        phot_residual=resid.assign_attrs(units="mag", long_name="m_obs - m_syn - mean offset"),
        phot_nbands=n.astype("int16").assign_attrs(units="1"),
    )
    return add_history(out, "scale_to_photometry: weighted mean offset over the catalogue bands")


def _line_mask(wavelength: np.ndarray, rv: np.ndarray) -> np.ndarray:
    """(S, P) True inside the (RV-shifted) cores of the strong stellar lines."""
    shift = 1.0 + np.asarray(rv, dtype=float)[:, None] / 299_792.458
    out = np.zeros((shift.shape[0], wavelength.size), dtype=bool)
    for centre, half in STELLAR_LINES:
        out |= np.abs(wavelength[None, :] - centre * shift) <= half
    return out


def star_calibrations(
    ds: xr.Dataset,
    /,
    *,
    mask_regions="telluric_default",
    mask_lines: bool = True,
) -> xr.Dataset:
    """Each standard's calibration: scaled model over observed counts.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`scale_to_photometry`.
    mask_regions : str, path, pairs or None
        Telluric / bad bands where the calibration is not measured.
    mask_lines : bool
        Mask the cores of strong stellar lines (Balmer, Ca II, Na D, Ca
        triplet), where template mismatch is largest.

    Returns
    -------
    xr.Dataset
        Adds ``std_calibration``, ``std_calibration_variance`` and
        ``std_calibration_mask`` on (``standard``, ``wavelength``).

    Notes
    -----
    ``Cal = s·M / C``, ``Var(Cal) = Cal²·[Var(s·M)/(s·M)² + Var(C)/C²]`` with
    ``Var(s·M) = (M·σ_s)²``.  Invalid (``CALIB_INVALID``) where not finite
    or not positive, or where the star is not used; ``TELLURIC`` and
    ``STELLAR_LINE`` bits mark the masked bands.
    """
    idx = xr.DataArray(standard_index(ds), dims="standard")
    counts = ds["flux"].isel(fiber=idx)
    var_counts = ds["variance"].isel(fiber=idx)
    pixmask = ds["mask"].isel(fiber=idx)
    model = ds["model_flux"] * ds["scale"]
    positive = counts.where(counts > 0)  # Cal is undefined where no counts were measured
    cal = model / positive
    var = cal**2 * ((ds["scale_err"] / ds["scale"]) ** 2 + var_counts / positive**2)

    wave = np.asarray(ds["wavelength"].values, dtype=float)
    telluric = xr.DataArray(in_regions(wave, mask_regions), dims="wavelength")
    lines = (
        xr.apply_ufunc(
            _line_mask,
            ds["wavelength"],
            ds["fit_rv"],
            input_core_dims=[["wavelength"], ["standard"]],
            output_core_dims=[["standard", "wavelength"]],
            dask="parallelized",
            output_dtypes=[bool],
        )
        if mask_lines
        else xr.zeros_like(cal, dtype=bool)
    )
    used = standards_used(ds)
    invalid = (
        ~np.isfinite(cal) | (cal <= 0) | ~np.isfinite(var) | (var <= 0) | (pixmask != 0) | ~used
    )
    flags = (
        invalid.astype("int32") * bit("CALIB_INVALID")
        + telluric.astype("int32") * bit("TELLURIC")
        + lines.astype("int32") * bit("STELLAR_LINE")
    )
    out = ds.assign(
        std_calibration=cal.assign_attrs(units=_cal_units(ds), long_name="per-star calibration"),
        std_calibration_variance=var.assign_attrs(units=f"({_cal_units(ds)})2"),
        std_calibration_mask=flags.transpose("standard", "wavelength").assign_attrs(
            units="1", long_name="per-star calibration bitmask (see mask)"
        ),
    )
    return add_history(out, "star_calibrations: Cal = scale*model/counts")


def _cal_units(ds: xr.Dataset) -> str:
    counts = ds["flux"].attrs.get("units", "count")
    return f"erg/cm2/s/A/{counts}"


def _interp_gaps(values, variance, valid, wavelength):
    """Fill invalid pixels by linear interpolation in λ (NumPy, last axis)."""
    out_v, out_var = values.copy(), variance.copy()
    ok = valid & np.isfinite(values)
    if np.count_nonzero(ok) >= 2:
        out_v[~ok] = np.interp(wavelength[~ok], wavelength[ok], values[ok])
        out_var[~ok] = np.interp(wavelength[~ok], wavelength[ok], variance[ok])
    return out_v, out_var


def _savgol_with_variance(values, variance, *, window: int, order: int):
    """Savitzky–Golay smoothing and the variance of the smoothed values.

    The filter is linear, ``y_i = Σ_k c_k x_{i+k}``, so for independent pixels
    ``Var(y_i) = Σ_k c_k² Var(x_{i+k})`` (interior coefficients, the variance
    extended flat beyond the ends: a close approximation there).
    """
    window = min(window, values.shape[-1] - (1 - values.shape[-1] % 2))
    smoothed = savgol_filter(values, window, order, mode="interp", axis=-1)
    coeffs = savgol_coeffs(window, order)
    half = window // 2
    var = np.apply_along_axis(
        lambda v: np.convolve(np.pad(v, half, mode="edge"), coeffs**2, mode="valid"),
        -1,
        np.nan_to_num(variance),
    )
    return smoothed, np.where(np.isfinite(variance), var, np.nan)


def _clipped_mean(cal, var, usable, *, sigma: float, iterations: int):
    """Inverse-variance mean over stars (axis 0) with iterative σ-clipping (NumPy kernel).

    Returns the mean, its variance, the fractional RMS of the kept stars about
    it and the (S, P) mask of kept values.  A star is clipped at a pixel only
    while more than two stars remain there.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(usable, 1.0 / var, 0.0)
        data = np.where(usable, cal, 0.0)
        keep = usable
        for _ in range(iterations):
            w = np.where(keep, inv, 0.0)
            wsum = w.sum(axis=0)
            mean = (w * data).sum(axis=0) / wsum
            pull = np.abs(cal - mean) / np.sqrt(var + 1.0 / wsum)
            keep = usable & ((pull <= sigma) | (keep.sum(axis=0) <= 2))
        w = np.where(keep, inv, 0.0)
        wsum = w.sum(axis=0)
        mean = np.where(wsum > 0, (w * data).sum(axis=0) / wsum, np.nan)
        mean_var = np.where(wsum > 0, 1.0 / wsum, np.nan)
        n = keep.sum(axis=0)
        rel = np.where(keep, cal / mean - 1.0, 0.0)
        rms = np.where(n > 1, np.sqrt((rel**2).sum(axis=0) / np.maximum(n - 1, 1)), np.nan)
    return mean, mean_var, rms, keep


def combine_calibrations(
    ds: xr.Dataset,
    /,
    *,
    sigma: float = 3.0,
    iterations: int = 5,
    smooth: bool = False,
    smooth_window: float = 101.0,
    smooth_order: int = 3,
) -> xr.Dataset:
    """Robust inverse-variance mean of the per-star calibrations.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`star_calibrations`.
    sigma : float
        Clip a star at a pixel when it is more than ``sigma`` standard
        deviations from the weighted mean of the others' (iterated).
    iterations : int
        Clipping iterations (a fixed number, so the stage stays lazy).
    smooth : bool
        Apply a Savitzky–Golay filter to the combined curve.
    smooth_window : float
        Savitzky–Golay window in Å.
    smooth_order : int
        Savitzky–Golay polynomial order.

    Returns
    -------
    xr.Dataset
        Adds ``calibration``, ``calibration_variance``, ``calibration_rms``
        (fractional RMS across stars), ``calibration_nstars`` and
        ``calibration_mask`` on ``wavelength``, and ``std_clipped_fraction``.

    Notes
    -----
    ``Cal = Σ w_s Cal_s / Σ w_s``, ``w_s = 1/Var(Cal_s)``, ``Var(Cal) = 1/Σ w_s``
    over the stars valid and unclipped at each pixel.  Pixels where no star is
    valid (telluric bands, line cores) are interpolated linearly in λ and
    flagged ``CALIB_INTERP``.  A single star passes through unchanged.
    """
    cal = ds["std_calibration"]
    flags = ds["std_calibration_mask"]
    usable = flags == 0
    combined, combined_var, rms, keep = xr.apply_ufunc(
        _clipped_mean,
        cal,
        ds["std_calibration_variance"],
        usable,
        input_core_dims=[["standard", "wavelength"]] * 3,
        output_core_dims=[["wavelength"]] * 3 + [["standard", "wavelength"]],
        kwargs={"sigma": float(sigma), "iterations": int(iterations)},
        dask="parallelized",
        output_dtypes=[float, float, float, bool],
    )
    nstars = keep.sum("standard")

    gap = nstars == 0
    filled, filled_var = xr.apply_ufunc(
        _interp_gaps,
        combined,
        combined_var,
        ~gap,
        ds["wavelength"],
        input_core_dims=[["wavelength"]] * 4,
        output_core_dims=[["wavelength"], ["wavelength"]],
        dask="parallelized",
        output_dtypes=[float, float],
    )
    if smooth:
        step = float(np.median(np.diff(ds["wavelength"].values)))
        window = max(int(round(smooth_window / step)) | 1, smooth_order + 2 | 1)
        filled, filled_var = xr.apply_ufunc(
            _savgol_with_variance,
            filled,
            filled_var,
            input_core_dims=[["wavelength"]] * 2,
            output_core_dims=[["wavelength"]] * 2,
            kwargs={"window": window, "order": smooth_order},
            dask="parallelized",
            output_dtypes=[float, float],
        )
    telluric = ((flags & bit("TELLURIC")) != 0).any("standard")
    calmask = (
        gap.astype("int32") * bit("CALIB_INTERP")
        + (~np.isfinite(filled)).astype("int32") * bit("CALIB_INVALID")
        + telluric.astype("int32") * bit("TELLURIC")
    )
    clipped = 1.0 - keep.sum("wavelength") / np.maximum(usable.sum("wavelength"), 1)
    units = cal.attrs.get("units", "")
    out = ds.assign(
        calibration=filled.assign_attrs(units=units, long_name="flux calibration (flux per count)"),
        calibration_variance=filled_var.assign_attrs(units=f"({units})2"),
        calibration_rms=rms.assign_attrs(units="1", long_name="fractional RMS across standards"),
        calibration_nstars=nstars.astype("int16").assign_attrs(units="1"),
        calibration_mask=calmask.assign_attrs(
            units="1", long_name="calibration bitmask (see mask)"
        ),
        std_clipped_fraction=clipped.assign_attrs(units="1"),
    )
    return add_history(
        out, f"combine_calibrations: inverse-variance mean, {sigma} sigma clip, smooth={smooth}"
    )


def calibration_header(ds: xr.Dataset, /) -> xr.Dataset:
    """Header cards and HISTORY lines that describe a finished calibration.

    ``FLUXCAL = T``, ``FCALNSTR`` (standards used), ``FCALRMS`` (median
    fractional RMS across standards over unmasked pixels, NaN with one star),
    ``FCALMET`` (score), ``FCALGRID`` (template grid id), and one HISTORY line
    per standard (fiber, name, Teff, log g, [M/H], RV, scale ± error, or why it
    was not used).  Needs computed values: :func:`kspec_xr.write_red` applies
    it to a calibrated exposure as it writes.

    Raises
    ------
    CalibrationError
        No standard could be used (every fit or scale failed): nothing is
        written.
    """
    from .io import with_header_cards

    reason = standard_reasons(ds)
    used = reason == ""
    if not used.any():
        raise CalibrationError(
            "no standard star could be used, so there is no flux calibration to write ("
            + "; ".join(f"standard {k}: {r}" for k, r in enumerate(reason))
            + ")"
        )
    good = np.asarray(ds["calibration_mask"].values) == 0
    rms = np.asarray(ds["calibration_rms"].values)[good]
    rms = float(np.nanmedian(rms)) if np.any(np.isfinite(rms)) else float("nan")
    out = with_header_cards(
        ds,
        FLUXCAL=(True, "flux calibrated with standard stars (kspec_xr)"),
        FCALNSTR=(int(used.sum()), "standard stars used in the flux calibration"),
        FCALRMS=(
            round(rms, 6) if np.isfinite(rms) else "NaN",
            "median fractional RMS across stars",
        ),
        FCALMET=(str(ds.attrs.get("fit_metric", "")), "template score (chi2|huber)"),
        FCALGRID=(str(ds.attrs.get("template_grid_id", ""))[:60], "template grid id"),
    )
    lines = []
    for k in range(ds.sizes["standard"]):
        head = f"FCAL std {k}: fiber {int(ds['standard_fiber'].values[k])} {ds['standard_name'].values[k]}"
        if not used[k]:
            lines.append(f"{head} not used: {reason[k]}")
            continue
        scale = float(ds["scale"].values[k])
        err = float(ds["scale_err"].values[k])
        lines.append(
            f"{head} Teff {float(ds['fit_teff'].values[k]):.0f} logg "
            f"{float(ds['fit_logg'].values[k]):.2f} [M/H] {float(ds['fit_mh'].values[k]):+.2f} "
            f"RV {float(ds['fit_rv'].values[k]):+.1f} km/s scale {scale:.4e} +- {err:.2e}"
        )
    return add_history(out, "\n".join(lines))
