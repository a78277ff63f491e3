"""Reject bad standard stars before they are combined, each with its reason.

:func:`gate_standards` sits between :func:`kspec_xr.star_calibrations` and
:func:`kspec_xr.combine_calibrations`.  It measures every standard against
absolute limits (is there a star in the fibre at all?) and against the other
standards with robust statistics (median and MAD, never mean and σ), and
rules out the ones a survey astronomer would not trust: a dead or
mis-allocated fibre, a wrong catalogue row, a binary or a variable whose
colours no template matches, a template that does not fit.  The kernels are
in :mod:`kspec_xr.kernels.robust`.
"""

from __future__ import annotations

import math

import xarray as xr

from .._base.errors import CalibrationError, OptionError
from .._base.maskbits import bit
from .._base.options import bounded
from .._base.provenance import add_history
from .._base.schema import bare, stage, standard_index, with_status
from ..kernels.robust import gate_kernel

__all__ = ["gate_standards", "check_gating", "GATE_DEFAULTS"]

#: the thresholds of :func:`gate_standards` and their defaults
GATE_DEFAULTS: dict[str, float] = {
    "min_valid_fraction": 0.5,
    "min_snr": 2.0,
    "max_phot_rms": 0.1,
    "max_chi2_ratio": 5.0,
    "zp_limit": 0.15,
    "zp_nsigma": 4.0,
    "tilt_limit": 0.2,
    "tilt_nsigma": 4.0,
}

_OUTPUTS = (
    ("std_valid_fraction", "1", "fraction of the fibre's pixels valid with positive counts"),
    ("std_snr", "1", "median S/N per pixel of the standard's counts"),
    ("std_phot_rms", "mag", "RMS of the photometric residuals after scaling"),
    ("std_chi2_ratio", "1", "template fit chi2/dof over the median standard's"),
    ("std_zero_point", "mag", "2.5 log10(Cal_star / Cal_median): overall level vs the others"),
    ("std_zero_point_limit", "mag", "zero-point limit applied: max(zp_limit, zp_nsigma MAD-sigma)"),
    ("std_tilt", "mag", "red-minus-blue difference of 2.5 log10(Cal_star / Cal_median)"),
    ("std_tilt_limit", "mag", "tilt limit applied: max(tilt_limit, tilt_nsigma MAD-sigma)"),
)


def check_gating(thresholds) -> dict[str, float]:
    """Gating thresholds checked: known names, numbers >= 0 (a fraction for ``min_valid_fraction``).

    Raises
    ------
    OptionError
        An unknown name or a value out of range.
    """
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(GATE_DEFAULTS))
    if unknown:
        raise OptionError(
            f"unknown gating option(s) {', '.join(unknown)}; known: {', '.join(GATE_DEFAULTS)}"
        )
    return {
        name: bounded(name, value, 0.0, 1.0 if name == "min_valid_fraction" else math.inf)
        for name, value in thresholds.items()
    }


@stage
def gate_standards(
    ds: xr.Dataset,
    /,
    *,
    min_valid_fraction: float = GATE_DEFAULTS["min_valid_fraction"],
    min_snr: float = GATE_DEFAULTS["min_snr"],
    max_phot_rms: float = GATE_DEFAULTS["max_phot_rms"],
    max_chi2_ratio: float = GATE_DEFAULTS["max_chi2_ratio"],
    zp_limit: float = GATE_DEFAULTS["zp_limit"],
    zp_nsigma: float = GATE_DEFAULTS["zp_nsigma"],
    tilt_limit: float = GATE_DEFAULTS["tilt_limit"],
    tilt_nsigma: float = GATE_DEFAULTS["tilt_nsigma"],
) -> xr.Dataset:
    """Reject the standards that would make the calibration wrong, with their reasons.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.star_calibrations`.
    min_valid_fraction : float
        Reject a star whose fibre has fewer valid pixels with positive counts
        than this fraction of its pixels outside the telluric bands (a dead
        or unplugged fibre, a fibre off the detector).
    min_snr : float
        Reject a star whose median S/N per pixel is below this: its counts
        are consistent with no star (a fibre typed ``C`` on empty sky).
    max_phot_rms : float
        Reject a star whose catalogue photometry, after scaling, departs from
        the fitted model by more than this RMS (mag) over two or more bands:
        no template matches its colours (a binary, a variable, a wrong row).
    max_chi2_ratio : float
        Reject a star whose template fit has a χ²/dof more than this many
        times the median standard's.
    zp_limit, zp_nsigma : float
        Reject a star whose overall level (zero point, the median over λ of
        ``2.5 log10(Cal_star / Cal_median)``) lies further from the
        standards' median than ``max(zp_limit, zp_nsigma · σ)`` mag, with σ
        = 1.4826 · MAD of the zero points: wrong photometry, a wrong or
        mis-allocated fibre, a fibre that collected light of another star.
    tilt_limit, tilt_nsigma : float
        Reject a star whose tilt (the red-minus-blue difference of the same
        ratio, from a straight line across the spectrum) departs from the
        median tilt by more than ``tilt_nsigma`` robust σ **and** more than
        ``tilt_limit`` mag.  Part of the star-to-star tilt is real (chromatic
        fibre losses across the field), so only extreme tilts are rejected.

    Returns
    -------
    xr.Dataset
        ``standard_status`` (:class:`kspec_xr.status.StandardStatus`) and
        ``standard_reason`` updated, plus on ``standard``:
        ``std_valid_fraction``, ``std_snr``, ``std_phot_rms``,
        ``std_chi2_ratio``, ``std_zero_point``, ``std_zero_point_limit``,
        ``std_tilt``, ``std_tilt_limit``; the thresholds as ``gate_*`` attrs.

    Notes
    -----
    The absolute rules (valid pixels, S/N, photometric residuals) come first;
    the relative rules (fit quality, zero point, tilt) compare the stars that
    pass them, against the pixel-by-pixel median of their calibrations, and
    need at least three such stars.  The median of three or more is never
    the outlier's, so the relative rules never reject every star; the
    absolute ones can, and then :func:`kspec_xr.write_red` refuses to write a
    calibration.  The first rule a star fails is its reason.

    Examples
    --------
    >>> out = ds.pipe(kx.gate_standards, zp_limit=0.2)           # doctest: +SKIP
    >>> out[["standard_status", "standard_reason"]].to_dataframe()  # doctest: +SKIP
    """
    limits = check_gating(
        {
            "min_valid_fraction": min_valid_fraction,
            "min_snr": min_snr,
            "max_phot_rms": max_phot_rms,
            "max_chi2_ratio": max_chi2_ratio,
            "zp_limit": zp_limit,
            "zp_nsigma": zp_nsigma,
            "tilt_limit": tilt_limit,
            "tilt_nsigma": tilt_nsigma,
        }
    )
    if "std_calibration" not in ds:
        raise CalibrationError(
            "no per-star calibrations on this Dataset; run ds.pipe(kx.star_calibrations) first"
        )
    idx = xr.DataArray(standard_index(ds), dims="standard")
    flags = ds["std_calibration_mask"]
    telluric = (flags & bit("TELLURIC")) != 0
    counts = ds["flux"].isel(fiber=idx)
    considered = ~telluric
    pixel_ok = ds["mask"].isel(fiber=idx) == 0
    outputs = xr.apply_ufunc(
        gate_kernel,
        counts.where(pixel_ok),
        ds["variance"].isel(fiber=idx),
        considered,
        ds["std_calibration"],
        flags == 0,
        ds["phot_residual"],
        ds["fit_chi2_red"],
        ds["standard_status"],
        ds["wavelength"],
        input_core_dims=[["standard", "wavelength"]] * 5
        + [["standard", "band"], ["standard"], ["standard"], ["wavelength"]],
        output_core_dims=[["standard"]] * 9,
        kwargs=limits,
        dask="parallelized",
        output_dtypes=["int16"] + [float] * 8,
        dask_gufunc_kwargs={"allow_rechunk": True},
        keep_attrs=False,
    )
    status, *values = outputs
    new = {
        name: bare(value).assign_attrs(units=units, long_name=long_name)
        for (name, units, long_name), value in zip(_OUTPUTS, values, strict=True)
    }
    out = ds.assign(new).assign_attrs({f"gate_{k}": v for k, v in limits.items()})
    out = with_status(out, bare(status))
    rules = ", ".join(f"{k}={v:g}" for k, v in limits.items())
    return add_history(out, f"gate_standards: {rules}")
