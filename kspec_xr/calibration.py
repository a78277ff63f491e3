"""From fitted standards to one calibration vector.

Three pure stages, lazy on dask-backed exposures:

- :func:`scale_to_photometry` — the absolute level of each star's model from
  its catalogue photometry;
- :func:`star_calibrations` — each star's calibration ``F_model / C_obs``
  with its variance and validity;
- :func:`combine_calibrations` — their robust mean around the median,
  weighted by each star's S/N, bridged across masked bands by a robust
  B-spline, optionally smoothed, with a variance that includes the scatter
  between the stars.

Between the last two, :func:`kspec_xr.gate_standards` rejects bad stars.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._xrutil import bare
from .errors import CalibrationError
from .io import add_history
from .maskbits import bit
from .regions import in_regions, line_mask
from .robust import bridge_gaps, close_short_runs, combine_kernel, nan_running_mean, robust_sigma
from .standards import standard_index
from .status import StandardStatus, with_status

__all__ = [
    "standards_used",
    "standard_reasons",
    "scale_to_photometry",
    "star_calibrations",
    "combine_calibrations",
    "calibration_header",
    "MAG_ERROR_FLOOR",
]

#: smallest photometric error used in the weights (mag): zero-point and
#: bandpass uncertainties of the catalogue bands
MAG_ERROR_FLOOR = 0.01

_LN10_04 = 0.4 * np.log(10.0)


def standards_used(ds: xr.Dataset, /) -> xr.DataArray:
    """Which standards contribute to the calibration (lazy-safe): status OK."""
    return ds["standard_status"] == StandardStatus.OK


def standard_reasons(ds: xr.Dataset, /) -> np.ndarray:
    """Why each standard is not used ('' when it is), from computed values."""
    return np.asarray(ds["standard_reason"].values).astype(str)


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
    status = ds["standard_status"]
    no_scale = (status == StandardStatus.OK) & ~np.isfinite(scale)
    out = with_status(out, xr.where(no_scale, int(StandardStatus.NO_SCALE), status))
    return add_history(out, "scale_to_photometry: weighted mean offset over the catalogue bands")


def star_calibrations(
    ds: xr.Dataset,
    /,
    *,
    mask_regions="telluric_default",
    mask_lines="stellar_lines_default",
) -> xr.Dataset:
    """Each standard's calibration: scaled model over observed counts.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`scale_to_photometry`.
    mask_regions : str, path, pairs or None
        Telluric / bad bands where the calibration is not measured.
    mask_lines : str, path, pairs, None or bool
        Strong stellar lines (Balmer, Ca II, Na D, Ca triplet: ``centre
        half_width`` in rest-frame vacuum Å, default
        ``data/masks/stellar_lines_default.txt``) where template mismatch is
        largest; each band moves with the star's RV and is widened by the
        instrument FWHM.  ``None``/``False``: no line is masked.

    Returns
    -------
    xr.Dataset
        Adds ``std_calibration``, ``std_calibration_variance`` and
        ``std_calibration_mask`` on (``standard``, ``wavelength``).

    Notes
    -----
    ``Cal = s·M / C``, ``Var(Cal) = Cal²·[Var(s·M)/(s·M)² + Var(C)/C²]`` with
    ``Var(s·M) = (M·σ_s)²``.  Invalid (``CALIB_INVALID``) where not finite
    or not positive, or where the star was ruled out earlier
    (``standard_status``); ``TELLURIC`` and ``STELLAR_LINE`` bits mark the
    masked bands.
    """
    if mask_lines is True:
        mask_lines = "stellar_lines_default"
    elif mask_lines is False:
        mask_lines = None
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
    widen = float(ds.attrs.get("fit_fwhm_median", 0.0))
    lines = bare(
        xr.apply_ufunc(
            line_mask,
            ds["wavelength"],
            ds["fit_rv"],
            input_core_dims=[["wavelength"], ["standard"]],
            output_core_dims=[["standard", "wavelength"]],
            kwargs={"lines": mask_lines, "widen": widen},
            dask="parallelized",
            output_dtypes=[bool],
            dask_gufunc_kwargs={"allow_rechunk": True},
        )
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


def _savgol_with_variance(values, variance, *, window: int, order: int):
    """Savitzky–Golay smoothing and the variance of the smoothed values.

    The filter is linear, ``y_i = Σ_k c_k x_{i+k}``, so for independent pixels
    ``Var(y_i) = Σ_k c_k² Var(x_{i+k})`` (interior coefficients, the variance
    extended flat beyond the ends: a close approximation there).
    """
    from scipy.signal import savgol_coeffs, savgol_filter  # scipy.signal: slow to import

    window = min(window, values.shape[-1] - (1 - values.shape[-1] % 2))
    smoothed = savgol_filter(values, window, order, mode="interp", axis=-1)
    coeffs = savgol_coeffs(window, order)
    half = window // 2
    var = np.convolve(np.pad(np.nan_to_num(variance), half, mode="edge"), coeffs**2, mode="valid")
    return smoothed, np.where(np.isfinite(variance), var, np.nan)


def _combine_block(
    cal,
    var,
    usable,
    scale_relvar,
    line_band,
    telluric,
    wave,
    *,
    options,
    knot_spacing,
    min_anchor,
    smooth,
):
    """NumPy kernel of :func:`combine_calibrations` (stars on axis 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = var / cal**2 - scale_relvar[:, None]
    noise = nan_running_mean(noise, usable, options["width"])
    masked = close_short_runs(line_band | telluric, wave, min_anchor)
    line_band = line_band | (masked & ~telluric)
    clean = usable & ~line_band[None, :]
    mean, noise_rv, scatter_rv, rms, nstars, keep, dropped, clipped, tau2 = combine_kernel(
        cal, clean, noise, scale_relvar, **options
    )
    gap = ~np.isfinite(mean)
    few = gap & clean.any(axis=0)
    # the same stars with the line bands kept: coarse anchors where a gap reaches an end
    anchor, anchor_noise, anchor_scatter, *_ = combine_kernel(
        cal, usable & ~dropped[:, None], noise, scale_relvar, **options
    )
    if smooth is not None:
        # smoothing averages the noise of neighbouring pixels, not the scatter between
        # stars (smooth in λ already): only the noise part of the variance shrinks
        window, order = smooth
        filled, _ = bridge_gaps(wave, mean, noise_rv + scatter_rv, gap, knot_spacing=knot_spacing)
        mean, smooth_var = _savgol_with_variance(
            filled, filled**2 * np.where(gap, np.nan, noise_rv), window=window, order=order
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            noise_rv = smooth_var / mean**2
        mean = np.where(gap, np.nan, mean)
    filled, filled_relvar = bridge_gaps(
        wave,
        mean,
        noise_rv + scatter_rv,
        gap,
        anchor_values=anchor,
        anchor_relvar=anchor_noise + anchor_scatter,
        knot_spacing=knot_spacing,
    )
    variance = filled**2 * filled_relvar
    scatter = np.sqrt(tau2)
    return filled, variance, rms, nstars, keep, dropped, clipped, scatter, gap, few, line_band


def combine_calibrations(
    ds: xr.Dataset,
    /,
    *,
    sigma: float = 3.0,
    iterations: int = 5,
    min_stars: int = 2,
    max_clipped: float = 0.5,
    scatter_window: int = 51,
    knot_spacing: float = 40.0,
    min_anchor: float = 30.0,
    smooth: bool = False,
    smooth_window: float = 101.0,
    smooth_order: int = 3,
) -> xr.Dataset:
    """Robust mean of the per-star calibrations, with a variance that includes their scatter.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.gate_standards` (or :func:`star_calibrations`).
    sigma : float
        Clip a star at a pixel when it lies more than ``sigma`` of its
        expected scatter from the median of the kept stars there (iterated).
    iterations : int
        Clipping iterations at most.
    min_stars : int
        Fewest kept stars that make a pixel's value (at most the number of
        contributing stars); a pixel with fewer is flagged ``CALIB_FEWSTARS``
        and bridged from its neighbours, never taken from one star.
    max_clipped : float
        A star clipped at more than this fraction of its pixels is dropped
        entirely (status ``clipped``) and the combination repeated.
    scatter_window : int
        Pixels over which the weights and the star-to-star scatter are averaged.
    knot_spacing : float
        Breakpoint spacing (Å) of the B-spline that bridges the masked bands.
    min_anchor : float
        A clean stretch narrower than this (Å) between two masked bands is
        bridged too: it holds line wings, not continuum.
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
        (fractional RMS of the kept stars' shapes, their levels divided out:
        see ``std_zero_point``), ``calibration_scatter`` (τ, the
        fractional scatter between stars beyond their noise),
        ``calibration_nstars`` and ``calibration_mask`` on ``wavelength``,
        ``std_kept`` on (``standard``, ``wavelength``) and
        ``std_clipped_fraction`` on ``standard``; stars dropped by the clip
        get the status ``clipped``.

    Notes
    -----
    Each contributing star is first divided by its level against the others,
    ``exp(median_λ ln(Cal_s / median_s Cal_s))``, so that the clip judges
    shapes (the levels are the gating's business); the result sits at the
    median level.  Then at each pixel, over the stars valid there:

    - the centre is their **median**, and star ``s`` is clipped where
      ``|Cal_s/median − 1| > sigma·sqrt(v_s + τ²)`` (never the star nearest
      the median, so a pixel that had valid stars keeps one);
    - ``v_s = Var(C_s)/C_s²`` is the star's fractional variance, averaged
      over ``scatter_window`` pixels so the weights follow the star's S/N but
      not the calibration's own value;
    - ``τ²`` (the excess scatter between stars: template mismatch, chromatic
      fibre losses) is the mean of ``r_s² − v_s`` over the kept stars, with
      ``r_s = Cal_s/Cal − 1``, averaged over ``scatter_window`` pixels and
      floored at 0 (its robust, MAD-based form decides the clip);
    - ``Cal = Σ w_s Cal_s / Σ w_s`` with ``w_s = 1/(v_s + τ²)``, and
      ``Var(Cal) = Cal²·[1/Σ w_s + max(1/Σ σ_s⁻², π/2·σ_lvl²/N)]``: the
      photon noise when the stars agree, their scatter over √N when they do
      not (a random-effects mean), plus the error of the median level — the
      larger of the scale errors' ``σ_s`` formal variance and the stars'
      robust level scatter ``σ_lvl`` over √N.

    Pixels with fewer than ``min_stars`` kept stars, inside a telluric band
    or inside any contributing star's stellar-line band are bridged by a
    cubic B-spline of ``ln Cal`` fitted (with outlier rejection) to the other
    pixels, with breakpoints every ``knot_spacing`` Å except inside and next
    to the bridged bands, and flagged ``CALIB_INTERP`` (plus ``TELLURIC``,
    ``STELLAR_LINE`` or ``CALIB_FEWSTARS``); bands wider than two knots and
    those at an end of the spectrum are anchored by chunk medians of the
    stars' values inside them.  One star passes through unchanged.
    """
    if not 0 <= max_clipped <= 1:
        raise ValueError(f"max_clipped must be between 0 and 1, not {max_clipped!r}")
    if int(min_stars) < 1:
        raise ValueError(f"min_stars must be at least 1, not {min_stars!r}")
    cal = ds["std_calibration"]
    flags = ds["std_calibration_mask"]
    contributing = standards_used(ds)
    usable = (flags == 0) & contributing
    line_band = (((flags & bit("STELLAR_LINE")) != 0) & contributing).any("standard")
    telluric = ((flags & bit("TELLURIC")) != 0).any("standard")
    scale_relvar = ((ds["scale_err"] / ds["scale"]) ** 2).fillna(0.0)
    savgol = None
    if smooth:
        step = float(np.median(np.diff(ds["wavelength"].values)))
        savgol = (max(int(round(smooth_window / step)) | 1, (smooth_order + 2) | 1), smooth_order)
    options = {
        "sigma": float(sigma),
        "iterations": int(iterations),
        "min_stars": int(min_stars),
        "max_clipped": float(max_clipped),
        "width": max(int(scatter_window) | 1, 1),
    }
    (
        filled,
        variance,
        rms,
        nstars,
        keep,
        dropped,
        clipped,
        scatter,
        gap,
        few,
        line_band,
    ) = (
        bare(v)
        for v in xr.apply_ufunc(
            _combine_block,
            cal,
            ds["std_calibration_variance"],
            usable,
            scale_relvar,
            line_band,
            telluric,
            ds["wavelength"],
            input_core_dims=[["standard", "wavelength"]] * 3
            + [["standard"], ["wavelength"], ["wavelength"], ["wavelength"]],
            output_core_dims=[["wavelength"]] * 4
            + [["standard", "wavelength"], ["standard"], ["standard"]]
            + [["wavelength"]] * 4,
            kwargs={
                "options": options,
                "knot_spacing": float(knot_spacing),
                "min_anchor": float(min_anchor),
                "smooth": savgol,
            },
            dask="parallelized",
            output_dtypes=[float, float, float, int, bool, bool, float, float, bool, bool, bool],
            dask_gufunc_kwargs={"allow_rechunk": True},
            keep_attrs=False,
        )
    )
    calmask = (
        gap.astype("int32") * bit("CALIB_INTERP")
        + (~np.isfinite(filled)).astype("int32") * bit("CALIB_INVALID")
        + telluric.astype("int32") * bit("TELLURIC")
        + line_band.astype("int32") * bit("STELLAR_LINE")
        + few.astype("int32") * bit("CALIB_FEWSTARS")
    )
    units = cal.attrs.get("units", "")
    out = ds.assign(
        calibration=filled.assign_attrs(units=units, long_name="flux calibration (flux per count)"),
        calibration_variance=variance.assign_attrs(units=f"({units})2"),
        calibration_rms=rms.assign_attrs(
            units="1", long_name="fractional RMS of the standards' shapes (levels divided out)"
        ),
        calibration_scatter=scatter.assign_attrs(
            units="1", long_name="fractional scatter between standards beyond their noise (tau)"
        ),
        calibration_nstars=nstars.astype("int16").assign_attrs(units="1"),
        calibration_mask=calmask.assign_attrs(
            units="1", long_name="calibration bitmask (see mask)"
        ),
        std_kept=keep.astype("int8").assign_attrs(
            units="1", long_name="1 where the star entered the combined calibration"
        ),
        std_clipped_fraction=clipped.assign_attrs(units="1"),
    )
    status = ds["standard_status"]
    out = with_status(out, xr.where(dropped, int(StandardStatus.CLIPPED), status))
    return add_history(
        out,
        f"combine_calibrations: median-centred {sigma} sigma clip, S/N weights with "
        f"star-to-star scatter, min_stars={min_stars}, B-spline bridges every "
        f"{knot_spacing:g} A, smooth={smooth}",
    )


def calibration_header(ds: xr.Dataset, /) -> xr.Dataset:
    """Header cards and HISTORY lines that describe a finished calibration.

    ``FLUXCAL = T``, ``FCALNSTR`` (standards that contribute), ``FCALNREJ``
    (standards that do not), ``FCALRMS`` (median fractional RMS of the
    standards' shapes over unmasked pixels, NaN with one star), ``FCALZPSD``
    (robust σ of their zero points, mag), ``FCALMET`` (score),
    ``FCALGRID`` (template grid id), ``FCALWARN`` when the calibration rests
    on one or two stars, and one HISTORY line per standard (fiber, name,
    Teff, log g, [M/H], RV, scale ± error, or why it was not used).  Needs
    computed values: :func:`kspec_xr.write_red` applies it to a calibrated
    exposure as it writes.

    Raises
    ------
    CalibrationError
        No standard contributes (every one was ruled out, or the calibration
        is nowhere finite): nothing is written.
    """
    from .io import with_header_cards

    reason = standard_reasons(ds)
    used = np.asarray(ds["standard_status"].values) == StandardStatus.OK
    finite = np.isfinite(np.asarray(ds["calibration"].values))
    if not used.any() or not finite.any():
        why = "; ".join(
            f"standard {k} (fiber {int(ds['standard_fiber'].values[k])}): {r}"
            for k, r in enumerate(reason)
            if r
        )
        raise CalibrationError(
            f"{_source(ds)}: no standard star could be used, so there is no flux calibration "
            f"to write ({why or 'no finite calibration'})"
        )
    good = np.asarray(ds["calibration_mask"].values) == 0
    rms = np.asarray(ds["calibration_rms"].values)[good]
    rms = float(np.nanmedian(rms)) if np.any(np.isfinite(rms)) else float("nan")
    zp_spread = float("nan")
    if "std_zero_point" in ds and used.sum() >= 2:
        zp_spread = robust_sigma(np.asarray(ds["std_zero_point"].values, dtype=float)[used])
    cards = {
        "FLUXCAL": (True, "flux calibrated with standard stars (kspec_xr)"),
        "FCALNSTR": (int(used.sum()), "standards contributing to the calibration"),
        "FCALNREJ": (int((~used).sum()), "standard stars rejected (see HISTORY)"),
        "FCALRMS": (
            round(rms, 6) if np.isfinite(rms) else "NaN",
            "median fractional RMS of the stars' shapes",
        ),
        "FCALZPSD": (
            round(zp_spread, 4) if np.isfinite(zp_spread) else "NaN",
            "robust sigma of the stars' zero points [mag]",
        ),
        "FCALMET": (str(ds.attrs.get("fit_metric", "")), "template score (chi2|huber)"),
        "FCALGRID": (str(ds.attrs.get("template_grid_id", ""))[:60], "template grid id"),
    }
    warning = calibration_warning(ds)
    if warning:
        short = warning.split(":")[0].split(" and ")[0]
        cards["FCALWARN"] = (short[:40], "weak flux calibration (see HISTORY)")
    out = with_header_cards(ds, cards)
    lines = [f"FCAL warning: {warning}"] if warning else []
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


def calibration_warning(ds: xr.Dataset, /) -> str:
    """'' or why the calibration of a computed exposure rests on weak ground."""
    used = np.asarray(ds["standard_status"].values) == StandardStatus.OK
    n = int(used.sum())
    if n == 1:
        return "only 1 standard contributes: no check of the calibration against another star"
    if n == 2:
        if "std_zero_point" in ds:
            zp = np.asarray(ds["std_zero_point"].values, dtype=float)[used]
            limit = float(ds.attrs.get("gate_zp_limit", np.inf))
            if np.all(np.isfinite(zp)) and abs(zp[0] - zp[1]) > limit:
                return (
                    f"only 2 standards contribute and they disagree by {abs(zp[0] - zp[1]):.2f} "
                    "mag: which is right cannot be told"
                )
        return "only 2 standards contribute: no robust check of their agreement"
    return ""


def _source(ds: xr.Dataset) -> str:
    return str(ds.encoding.get("source", "this exposure"))
