"""Measure the instrument resolution (FWHM) from the standard stars themselves.

Real 2dfdr frames carry no ``SPECFWHM``, and a wrong one passes unnoticed
unless something checks it.  After :func:`kspec_xr.fit_standards`, each
standard's model at its fitted parameters and velocity is rebuilt from the
grid prepared at a FWHM sharper than any instrument's (:func:`sharp_fwhm`) and
blurred by Gaussians until it matches the star best
(:mod:`kspec_xr.kernels.lsf`): the FWHM of that blur, in the whole spectrum and
in a few wavelength segments, is the star's measurement.
:func:`measured_fwhm` combines the stars (median, robust error).
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from .._base.errors import CalibrationError
from .._base.instruments import nominal_resolution
from .._base.maskbits import bit
from .._base.provenance import primary_header
from .._base.regions import in_regions
from .._base.schema import StandardStatus, bare, stage, standard_index
from .._base.threads import stage_threads
from ..kernels.lsf import combine_fwhm
from ..kernels.template_fit import FwhmBlock, fwhm_block
from ..templates import PreparedTemplates, open_bosz, resolve_templates
from .medium import as_vacuum, resolve_medium

__all__ = ["measure_resolution", "measured_fwhm", "nominal_fwhm", "sharp_fwhm"]


def nominal_fwhm(ds: xr.Dataset) -> tuple[float, str] | None:
    """``(FWHM in Å, description)`` from the header's grating, or None if the set-up is unknown.

    The published resolving power of the set-up
    (:data:`kspec_xr._base.instruments.RESOLVING_POWER`) at the grating's
    central wavelength (``LAMBDAC``, else the middle of the spectrum).
    """
    header = primary_header(ds)
    found = nominal_resolution(header)
    if found is None:
        return None
    power, description = found
    centre = header.get("LAMBDAC")
    if not isinstance(centre, int | float) or isinstance(centre, bool) or not centre > 0:
        centre = float(np.median(np.asarray(ds["wavelength"].values, dtype=float)))
    return float(centre) / power, description


def _grid_of(templates) -> xr.DataArray:
    if isinstance(templates, PreparedTemplates):
        raise CalibrationError(
            "measuring the instrument FWHM needs the template grid itself (a path, None for the "
            "bundled grid, or kx.open_bosz(...)), not a grid already prepared for one FWHM; "
            "or give the FWHM (fwhm=..., CLI --fwhm)"
        )
    if templates is None or not isinstance(templates, xr.DataArray):
        return open_bosz(templates)
    return templates


def sharp_fwhm(wavelength, templates=None) -> float:
    """The FWHM (Å) the grid is prepared at for measuring: sharper than any instrument's.

    Half a pixel, but at least 1.15× the grid's own FWHM (λ/R) at the red end.
    """
    wave = np.asarray(wavelength, dtype=float)
    resolution = float(_grid_of(templates).attrs.get("resolution", np.inf))
    step = float(np.median(np.diff(wave)))
    return float(max(0.5 * step, 1.15 * wave[-1] / resolution))


@stage
def measure_resolution(
    ds: xr.Dataset,
    /,
    templates=None,
    *,
    segments: int = 3,
    mask_regions="telluric_default",
    cache=True,
    wavelength_medium=None,
) -> xr.Dataset:
    """The instrument FWHM measured on every fitted standard star.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.fit_standards` (at any FWHM: only the fitted
        parameters and velocities are used).
    templates : None, path or xr.DataArray
        The template grid of the fit (``None``: the bundled stand-in grid).
    segments : int
        Wavelength segments measured separately (equal widths), for a FWHM
        that changes along the spectrum.
    mask_regions, cache, wavelength_medium
        As for :func:`kspec_xr.fit_standards` (the medium: what the fit used).

    Returns
    -------
    xr.Dataset
        ``ds`` plus ``std_fwhm`` and ``std_fwhm_err`` (Å) on ``standard`` (NaN
        where a standard has no fit or the best FWHM lies outside the trials),
        ``std_fwhm_segment`` and ``std_fwhm_segment_err`` on (``standard``,
        ``fwhm_segment``) with the segments' central wavelengths, and the attr
        ``fwhm_sharp`` (the model FWHM the blur starts from).  Lazy on a
        dask-backed exposure.
    """
    for name in ("fit_teff", "fit_rv"):
        if name not in ds:
            raise CalibrationError(
                f"no {name} on this Dataset; run ds.pipe(kx.fit_standards, ...) first"
            )
    if int(segments) < 1:
        raise ValueError(f"segments must be a positive integer, not {segments!r}")
    medium, _ = resolve_medium(ds, wavelength_medium)
    vacuum = as_vacuum(ds["wavelength"], medium)  # the templates and bands are in vacuum
    wave = np.asarray(vacuum.values, dtype=float)
    grid = _grid_of(templates)
    fwhm0 = sharp_fwhm(wave, grid)
    prepared = resolve_templates(grid, wave, fwhm0, cache=cache)
    # the [α/M] of the fit, from its attributes (the stage stays lazy)
    inputs = prepared.kernel_inputs(float(ds.attrs.get("template_alpha", 0.0)))
    arrays = inputs["arrays"]

    fibers = xr.DataArray(standard_index(ds), dims="standard")
    good = (ds["mask"].isel(fiber=fibers) & ~bit("TELLURIC")) == 0
    good = good & ~xr.DataArray(in_regions(wave, mask_regions), dims="wavelength")
    usable = ds["standard_status"] == StandardStatus.OK
    params = [ds[f"fit_{p}"].where(usable) for p in ("teff", "logg", "mh", "rv")]
    edges = np.linspace(wave[0], wave[-1], int(segments) + 1)
    results = xr.apply_ufunc(
        fwhm_block,
        ds["flux"].isel(fiber=fibers),
        ds["variance"].isel(fiber=fibers),
        good,
        *params,
        vacuum,
        *arrays.values(),
        input_core_dims=[["wavelength"]] * 3
        + [[]] * 4
        + [["wavelength"]]
        + [list(a.dims) for a in arrays.values()],
        output_core_dims=[[], [], ["fwhm_segment"], ["fwhm_segment"]],
        kwargs={
            "pairs": inputs["pairs"],
            "fwhm0": fwhm0,
            "edges": edges,
            "threads": stage_threads(ds["flux"], fibers.size),
        },
        dask="parallelized",
        output_dtypes=[float] * 4,
        dask_gufunc_kwargs={"allow_rechunk": True, "output_sizes": {"fwhm_segment": segments}},
        keep_attrs=False,
    )
    fitted = dict(zip(FwhmBlock._fields, (bare(r) for r in results), strict=True))
    centres = 0.5 * (edges[:-1] + edges[1:])
    new = {
        "std_fwhm": fitted["fwhm"].assign_attrs(
            units="Angstrom", long_name="instrument FWHM measured on the star"
        ),
        "std_fwhm_err": fitted["fwhm_err"].assign_attrs(units="Angstrom"),
        "std_fwhm_segment": fitted["segment_fwhm"].assign_attrs(
            units="Angstrom", long_name="instrument FWHM measured in a wavelength segment"
        ),
        "std_fwhm_segment_err": fitted["segment_err"].assign_attrs(units="Angstrom"),
    }
    out = ds.assign(new).assign_coords(
        fwhm_segment=("fwhm_segment", centres, {"units": "Angstrom", "long_name": "segment centre"})
    )
    return out.assign_attrs(fwhm_sharp=fwhm0)


def measured_fwhm(ds: xr.Dataset, /) -> dict:
    """The stars' measurements combined (computes them): median FWHM and its robust error.

    Returns ``fwhm``, ``fwhm_err`` (Å; NaN when no star gave a value), ``n``
    (stars with a value), ``scatter`` and ``reliable``
    (:func:`kspec_xr.kernels.lsf.combine_fwhm`), ``segments`` (median per segment, Å) and
    ``segment_wavelength``.
    """
    estimate = combine_fwhm(ds["std_fwhm"].values, ds["std_fwhm_err"].values)
    segment_values = np.asarray(ds["std_fwhm_segment"].values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a segment no star measured
        segments = np.nanmedian(segment_values, axis=0)
    return {
        "fwhm": estimate.fwhm,
        "fwhm_err": estimate.err,
        "n": estimate.n,
        "scatter": estimate.scatter,
        "reliable": estimate.reliable,
        "segments": np.asarray(segments, dtype=float),
        "segment_wavelength": np.asarray(ds["fwhm_segment"].values, dtype=float),
    }
