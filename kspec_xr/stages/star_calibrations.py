"""Each standard's calibration: its scaled model over its observed counts."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .._base.maskbits import bit, flag_attrs
from .._base.provenance import add_history
from .._base.regions import in_regions, line_mask
from .._base.schema import bare, stage, standard_index, standards_used
from .medium import as_vacuum, medium_note, resolve_medium, with_medium

__all__ = ["star_calibrations"]


@stage
def star_calibrations(
    ds: xr.Dataset,
    /,
    *,
    mask_regions="telluric_default",
    mask_lines="stellar_lines_default",
    wavelength_medium=None,
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
    wavelength_medium : {None, "air", "vacuum"}
        Medium of the exposure's wavelengths; None: the one
        :func:`fit_standards` used (``attrs["wavelength_medium"]``), else the
        file's, else air.  Both kinds of band are placed on the pixels'
        vacuum wavelengths.

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

    medium, medium_source = resolve_medium(ds, wavelength_medium)
    vacuum = as_vacuum(ds["wavelength"], medium)  # the bands are tabulated in vacuum
    telluric = xr.DataArray(in_regions(vacuum.values, mask_regions), dims="wavelength")
    widen = float(ds.attrs.get("fit_fwhm_median", 0.0))
    lines = bare(
        xr.apply_ufunc(
            line_mask,
            vacuum,
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
        std_calibration_mask=xr.DataArray(flags)
        .transpose("standard", "wavelength")
        .assign_attrs(flag_attrs(), long_name="per-star calibration bitmask (0 = good)"),
    )
    out = with_medium(out, medium, medium_source)
    return add_history(
        out, f"star_calibrations: Cal = scale*model/counts, {medium_note(medium, medium_source)}"
    )


def _cal_units(ds: xr.Dataset) -> str:
    counts = ds["flux"].attrs.get("units", "count")
    return f"erg/cm2/s/A/{counts}"
