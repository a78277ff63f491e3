"""One calibration from many standards: a robust mean with an honest variance.

:func:`combine_calibrations` combines the per-star calibrations of the
contributing standards around their median, weighted by each star's S/N,
bridges the masked bands with a robust B-spline, optionally smooths, and
gives a variance that includes the scatter between the stars.  The NumPy
work is :func:`kspec_xr.kernels.robust.combine_block`.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .._base.maskbits import bit, flag_attrs
from .._base.options import bounded, flag, positive_int, positive_number
from .._base.provenance import add_history
from .._base.schema import StandardStatus, bare, stage, standards_used, with_status
from ..kernels.robust import combine_block

__all__ = ["combine_calibrations", "check_combine_options"]


def check_combine_options(*, sigma, min_stars, smooth) -> tuple[float, int, bool]:
    """The options of :func:`combine_calibrations` a driver checks before any work.

    ``sigma`` at least 1 (a tighter clip rejects good stars), ``min_stars`` a
    whole number of at least 1, ``smooth`` True or False; else
    :class:`~kspec_xr._base.errors.OptionError`.
    """
    return (
        bounded("sigma", sigma, 1.0, why=" (a tighter clip rejects good stars)"),
        positive_int("min_stars", min_stars),
        flag("smooth", smooth),
    )


@stage
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
    sigma, min_stars, smooth = check_combine_options(
        sigma=sigma, min_stars=min_stars, smooth=smooth
    )
    iterations = positive_int("iterations", iterations)
    max_clipped = bounded("max_clipped", max_clipped, 0.0, 1.0)
    scatter_window = positive_int("scatter_window", scatter_window)
    knot_spacing = positive_number("knot_spacing", knot_spacing)
    min_anchor = positive_number("min_anchor", min_anchor)
    if smooth:
        smooth_window = positive_number("smooth_window", smooth_window)
        smooth_order = positive_int("smooth_order", smooth_order)
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
            combine_block,
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
            flag_attrs(), long_name="calibration bitmask (0 = good)"
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
