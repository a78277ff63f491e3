"""The whole flux calibration in one call, and the reference pipeline's entry point."""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from .apply import apply_calibration
from .calibration import combine_calibrations, scale_to_photometry, star_calibrations
from .errors import CalibrationError
from .fitting import fit_standards
from .gating import GATE_DEFAULTS, gate_standards
from .standards import associate_catalog, select_standards

__all__ = ["flux_calibrate", "apply_fluxcal"]


def flux_calibrate(
    ds: xr.Dataset,
    /,
    *,
    catalog,
    templates=None,
    fwhm=None,
    metric: str = "chi2",
    smooth: bool = False,
    match: str = "position",
    radius: float = 2.0,
    mask_regions="telluric_default",
    mask_lines="stellar_lines_default",
    gating=None,
    sigma: float = 3.0,
    min_stars: int = 2,
    cache=True,
) -> xr.Dataset:
    """Flux-calibrate an exposure with its standard stars.

    The chain ``select_standards → associate_catalog → fit_standards →
    scale_to_photometry → star_calibrations → gate_standards →
    combine_calibrations → apply_calibration``; every stage is public, so a
    script can stop, inspect and re-run any step.

    Parameters
    ----------
    ds : xr.Dataset
        An exposure from :func:`kspec_xr.open_red` (eager or chunked).
    catalog : path, pandas.DataFrame, astropy.table.Table or xr.Dataset
        Standard-star catalogue (ATLAS-RefCat2 CSV, a table with its columns,
        or :func:`read_catalog` output).
    templates : None, path, xr.DataArray or xr.Dataset
        Template grid (``None``: the bundled stand-in grid) or a prepared grid.
    fwhm : float, optional
        Instrument FWHM in Å (default: ``SPECFWHM`` from the header).
    metric : {"chi2", "huber"}
    smooth : bool
        Savitzky–Golay smoothing of the combined calibration.
    match : {"position", "order"}
        How standards are associated with catalogue rows (``"order"`` only
        for a catalogue of exactly one row per standard, in fiber order).
    radius : float
        Match radius (arcsec).
    mask_regions : str, path, pairs or None
        Telluric / bad bands (default: the bundled telluric bands).
    mask_lines : str, path, pairs or None
        Stellar lines left out of the per-star calibrations.
    gating : mapping, optional
        Thresholds of :func:`kspec_xr.gate_standards` to change from their
        defaults (:data:`kspec_xr.gating.GATE_DEFAULTS`), e.g.
        ``{"zp_limit": 0.2}``.
    sigma : float
        Clipping threshold when combining the stars.
    min_stars : int
        Fewest agreeing stars that make a pixel of the calibration.
    cache : bool or path
        Cache of prepared template grids.

    Returns
    -------
    xr.Dataset
        The calibrated exposure with every intermediate product.

    Examples
    --------
    >>> out = kx.open_red("run1_red.fits").pipe(
    ...     kx.flux_calibrate, catalog="standards.csv")          # doctest: +SKIP
    """
    gating = dict(gating or {})
    unknown = sorted(set(gating) - set(GATE_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown gating option(s) {', '.join(unknown)}; known: {', '.join(GATE_DEFAULTS)}"
        )
    return (
        ds.pipe(select_standards)
        .pipe(associate_catalog, catalog, method=match, radius=radius)
        .pipe(
            fit_standards,
            templates,
            fwhm=fwhm,
            metric=metric,
            mask_regions=mask_regions,
            cache=cache,
        )
        .pipe(scale_to_photometry)
        .pipe(star_calibrations, mask_regions=mask_regions, mask_lines=mask_lines)
        .pipe(gate_standards, **gating)
        .pipe(combine_calibrations, sigma=sigma, smooth=smooth, min_stars=min_stars)
        .pipe(apply_calibration)
    )


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "yes", "y", "on")
    return bool(value)


def apply_fluxcal(red_filename: str | os.PathLike, args: dict) -> bool:
    """The reference pipeline's entry point: calibrate a RED file in place.

    Parameters
    ----------
    red_filename : path
        RED file, replaced atomically by its calibrated version.
    args : dict
        ``CALIBFLUX`` (do nothing unless true), ``CALIBFLUX_CATALOG`` (path,
        required), ``CALIBFLUX_FWHM`` (Å; falls back to ``SPECFWHM``),
        ``CALIBFLUX_METRIC`` (``chi2`` | ``huber``), ``CALIBFLUX_SMOOTH``,
        and optionally ``CALIBFLUX_TEMPLATES`` (grid path).

    Returns
    -------
    bool
        True when the file was calibrated, False when ``CALIBFLUX`` is off.
    """
    from .io import open_red, write_red

    if not _truthy(args.get("CALIBFLUX", False)):
        return False
    catalog = args.get("CALIBFLUX_CATALOG")
    if not catalog:
        raise CalibrationError(
            "CALIBFLUX is set but CALIBFLUX_CATALOG is not: give the standard-star catalogue path"
        )
    fwhm = args.get("CALIBFLUX_FWHM")
    fwhm = float(fwhm) if fwhm not in (None, "", 0, "0") else None
    path = Path(red_filename)
    out = flux_calibrate(
        open_red(path).load(),
        catalog=catalog,
        templates=args.get("CALIBFLUX_TEMPLATES"),
        fwhm=fwhm,
        metric=str(args.get("CALIBFLUX_METRIC", "chi2")).lower(),
        smooth=_truthy(args.get("CALIBFLUX_SMOOTH", False)),
    ).compute()
    write_red(out, path, overwrite=True)
    return True
