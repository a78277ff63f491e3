"""Which fibers are standard stars, and which catalogue star each one is.

:func:`select_standards` turns the fibers with ``TYPE == 'C'`` into a
``standard`` dimension; :func:`associate_catalog` attaches each standard's
catalogue photometry, by an RA/Dec cross-match (astropy) or — when positions
are missing — by the order of the rows, as the reference pipeline does.
Standards without a match are kept and flagged with the reason.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from .errors import CalibrationError, CatalogError
from .io import add_history

__all__ = ["select_standards", "associate_catalog", "standard_index"]


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


def select_standards(ds: xr.Dataset, /) -> xr.Dataset:
    """Make the standard-star fibers (``TYPE == 'C'``) a ``standard`` dimension.

    Parameters
    ----------
    ds : xr.Dataset
        An exposure from :func:`kspec_xr.open_red`.

    Returns
    -------
    xr.Dataset
        ``ds`` plus ``standard_fiber``, ``standard_name``, ``standard_ra``,
        ``standard_dec`` on a new ``standard`` dimension (0, 1, …, in fiber order).

    Raises
    ------
    CalibrationError
        No fiber has ``TYPE == 'C'``.

    Examples
    --------
    >>> ds.pipe(kx.select_standards).sizes["standard"]   # doctest: +SKIP
    6
    """
    if "fiber_type" not in ds.coords:
        raise CalibrationError(
            f"{source_name(ds)}: no fiber_type coordinate (FIBRES column TYPE); read the "
            "file with kx.open_red or set fiber types from the assign file"
        )
    types = np.char.strip(np.asarray(ds["fiber_type"].values).astype(str))
    idx = np.flatnonzero(types == "C")
    if idx.size == 0:
        found = ", ".join(
            f"{t!r}: {n}" for t, n in zip(*np.unique(types, return_counts=True), strict=True)
        )
        raise CalibrationError(
            f"{source_name(ds)}: no standard-star fiber (TYPE='C') in the FIBRES table "
            f"(types found: {found}); check the fiber allocation or set the types from the "
            "tile's assign file (kx.io.assign_fiber_types)"
        )

    def _coord(name, fill):
        if name in ds.coords:
            return np.asarray(ds[name].values)[idx]
        return np.full(idx.size, fill)

    out = ds.assign_coords(standard=np.arange(idx.size)).assign(
        standard_fiber=(
            "standard",
            np.asarray(ds["fiber"].values)[idx],
            {"long_name": "fiber number of the standard"},
        ),
        standard_name=(
            "standard",
            _coord("fiber_name", "").astype(str),
            {"long_name": "FIBRES NAME"},
        ),
        standard_ra=("standard", _coord("ra", np.nan).astype(float), {"units": "deg"}),
        standard_dec=("standard", _coord("dec", np.nan).astype(float), {"units": "deg"}),
    )
    return add_history(out, f"select_standards: {idx.size} standard fibers (TYPE='C')")


def associate_catalog(
    ds: xr.Dataset,
    catalog,
    /,
    *,
    method: str = "auto",
    radius: float = 2.0,
) -> xr.Dataset:
    """Attach each standard's catalogue photometry.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`select_standards`.
    catalog : path or xr.Dataset
        ATLAS-RefCat2 CSV, or the Dataset of :func:`kspec_xr.read_catalog`.
    method : {"auto", "position", "order"}
        ``"position"``: nearest catalogue star within ``radius``;
        ``"order"``: the i-th standard (in fiber order) is the i-th catalogue
        row; ``"auto"``: positions when every standard and catalogue row has
        them, the row order otherwise.
    radius : float
        Match radius in arcsec.

    Returns
    -------
    xr.Dataset
        ``catalog_row`` (−1 when unmatched), ``catalog_sep`` (arcsec),
        ``catalog_objid``, ``std_mag`` / ``std_mag_err`` on
        (``standard``, ``band``) in AB, and ``standard_reason`` ('' for a
        matched star) on ``standard``.

    Raises
    ------
    CatalogError
        The catalogue cannot be read, or no standard has a match.
    """
    from .catalog import read_catalog

    if method not in ("auto", "position", "order"):
        raise ValueError(f"method must be 'auto', 'position' or 'order', not {method!r}")
    if "standard_fiber" not in ds:
        ds = select_standards(ds)
    where = str(catalog) if isinstance(catalog, str | os.PathLike) else "the catalogue"
    cat = read_catalog(catalog) if isinstance(catalog, str | os.PathLike) else catalog
    n_std, n_cat = ds.sizes["standard"], cat.sizes["star"]
    std_ra, std_dec = ds["standard_ra"].values, ds["standard_dec"].values
    cat_ra = np.asarray(cat["ra"].values, dtype=float) if "ra" in cat else np.full(n_cat, np.nan)
    cat_dec = np.asarray(cat["dec"].values, dtype=float) if "dec" in cat else np.full(n_cat, np.nan)
    have_positions = bool(
        np.all(np.isfinite(std_ra) & np.isfinite(std_dec))
        and np.all(np.isfinite(cat_ra) & np.isfinite(cat_dec))
    )
    if method == "position" and not have_positions:
        raise CatalogError(
            f"{where}: positional matching needs RA/Dec for every standard (FIBRES RA/DEC) and "
            "every catalogue row (RA, Dec); use method='order' to match by row order"
        )
    use = "position" if method == "position" or (method == "auto" and have_positions) else "order"

    row = np.full(n_std, -1)
    sep = np.full(n_std, np.nan)
    reason = np.full(n_std, "", dtype=object)
    if use == "position":
        row, sep, reason = _match_positions(std_ra, std_dec, cat_ra, cat_dec, radius)
    else:
        n = min(n_std, n_cat)
        row[:n] = np.arange(n)
        reason[n:] = f"no catalogue row (catalogue has {n_cat} rows for {n_std} standards)"
    if np.all(row < 0):
        raise CatalogError(
            f"{where}: no standard star has a catalogue match ({use} matching, radius "
            f'{radius}"); check that the catalogue covers this field (fiber RA/Dec '
            f"{np.nanmedian(std_ra):.4f}, {np.nanmedian(std_dec):.4f} deg) or use method='order'"
        )

    safe = np.where(row >= 0, row, 0)
    matched = xr.DataArray(row >= 0, dims="standard")
    picked = cat.isel(star=xr.DataArray(safe, dims="standard"))
    mag = (
        picked["mag"]
        .where(matched)
        .drop_vars([c for c in picked["mag"].coords if c not in ("band",)])
    )
    err = (
        picked["mag_err"]
        .where(matched)
        .drop_vars([c for c in picked["mag_err"].coords if c not in ("band",)])
    )
    no_phot = (row >= 0) & ~np.any(np.isfinite(mag.values), axis=1)
    reason[no_phot] = "catalogue row has no usable photometry"
    objid = np.asarray(picked["objid"].values) if "objid" in picked else safe
    out = ds.assign(
        catalog_row=(
            "standard",
            row,
            {"long_name": "row in the standard-star catalogue (-1: none)"},
        ),
        catalog_sep=(
            "standard",
            sep,
            {"units": "arcsec", "long_name": "fiber-catalogue separation"},
        ),
        catalog_objid=("standard", np.where(row >= 0, objid, -1).astype("int64")),
        std_mag=mag.assign_attrs(units="mag", system="AB", long_name="catalogue magnitude"),
        std_mag_err=err.assign_attrs(units="mag", long_name="catalogue magnitude error"),
        standard_reason=(
            "standard",
            reason.astype(str),
            {"long_name": "why a standard is not used ('' = used)"},
        ),
    )
    out = out.assign_attrs(catalog_match=use, catalog_radius_arcsec=float(radius))
    n_ok = int(np.sum((row >= 0) & ~no_phot))
    return add_history(
        out,
        f"associate_catalog: {n_ok}/{n_std} standards matched by {use} in {os.path.basename(where)}",
    )


def _match_positions(std_ra, std_dec, cat_ra, cat_dec, radius):
    """Nearest catalogue star within ``radius``; a star claimed twice goes to the closer fiber."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    fibers = SkyCoord(std_ra * u.deg, std_dec * u.deg)
    stars = SkyCoord(cat_ra * u.deg, cat_dec * u.deg)
    nearest, separation, _ = fibers.match_to_catalog_sky(stars)
    sep = separation.to_value(u.arcsec)
    row = np.where(sep <= radius, nearest, -1)
    reason = np.where(row >= 0, "", f'no catalogue star within {radius}"').astype(object)
    for star in np.unique(row[row >= 0]):
        claim = np.flatnonzero(row == star)
        if claim.size > 1:
            loser = claim[np.argsort(sep[claim])[1:]]
            row[loser] = -1
            reason[loser] = "catalogue star already matched to a closer fiber"
    return row, sep, reason
