"""Which catalogue star each standard is, and its photometry.

:func:`associate_catalog` attaches each standard's catalogue photometry by an
RA/Dec cross-match (nearest catalogue star within a radius), or — only when the caller asks for it and the
catalogue has one row per standard — by the order of the rows, as the
reference pipeline does.  Standards without a match are kept and flagged with
the reason (``standard_status``).
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from .._base.errors import CalibrationError, CatalogError
from .._base.provenance import add_history
from .._base.schema import StandardStatus, source_name, stage, with_status
from ..io.catalog import read_catalog
from ..kernels.sky import nearest_on_sky

__all__ = ["associate_catalog"]


@stage
def associate_catalog(
    ds: xr.Dataset,
    catalog,
    /,
    *,
    method: str = "position",
    radius: float = 2.0,
    bands=None,
) -> xr.Dataset:
    """Attach each standard's catalogue photometry.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`select_standards`.
    catalog : path, pandas.DataFrame, astropy.table.Table or xr.Dataset
        ATLAS-RefCat2 CSV (or a table with its columns), or the Dataset of
        :func:`kspec_xr.read_catalog`.
    method : {"position", "order"}
        ``"position"`` (default): the nearest catalogue star within
        ``radius`` of each fibre; ``"order"``: the i-th standard (in fiber
        order) is the i-th catalogue row — only for a catalogue with exactly
        one row per standard, as the reference pipeline writes them.
    radius : float
        Match radius in arcsec.
    bands : None, str, mapping, path or BandMap
        The catalogue's band map (``bands=`` of :func:`kspec_xr.read_catalog`:
        ``None`` for RefCat2, a preset name such as ``"des"``, a
        ``{column: band spec}`` mapping, ``"COL=BAND,..."`` or a TOML file).
        Only for a catalogue that is not yet a Dataset.

    Returns
    -------
    xr.Dataset
        ``catalog_row`` (−1 when unmatched), ``catalog_sep`` (arcsec; the
        nearest star's, also when it is beyond ``radius``), ``catalog_objid``
        (int64, −1 when unmatched; for a catalogue whose ``objid`` is text,
        str, ``""`` when unmatched; the row without ``objid``), ``std_mag`` /
        ``std_mag_err`` on (``standard``, ``band``) in AB; ``std_ebv`` (mag) and
        ``std_ebv_source`` (standard): the catalogue's E(B−V) and where it
        comes from (NaN / ``""`` without a catalogue row or an E(B−V));
        ``standard_status`` / ``standard_reason`` say why a standard has no
        photometry.

    Raises
    ------
    CatalogError
        The catalogue cannot be read; position matching without positions
        (the message lists the catalogue's columns); order matching with a
        catalogue whose row count differs from the number of standards; no
        standard has a match.
    """
    if method not in ("position", "order"):
        hint = (
            " ('auto' fell back to the row order when positions were missing, which "
            "silently mismatches stars; it was removed)"
            if method == "auto"
            else ""
        )
        raise ValueError(f"method must be 'position' or 'order', not {method!r}{hint}")
    if "standard_fiber" not in ds:
        raise CalibrationError(
            f"{source_name(ds)}: no standards selected; run ds.pipe(kx.select_standards) first"
        )
    where = str(catalog) if isinstance(catalog, str | os.PathLike) else "the catalogue"
    if isinstance(catalog, xr.Dataset) and bands is not None:
        raise TypeError(
            "bands= tells read_catalog how to read a catalogue file or table; this catalogue "
            "is already a Dataset (read it with kx.read_catalog(path, bands=...) or pass the path)"
        )
    cat = catalog if isinstance(catalog, xr.Dataset) else read_catalog(catalog, bands=bands)
    where = str(cat.attrs.get("source", where))
    n_std, n_cat = ds.sizes["standard"], cat.sizes["star"]
    status = np.asarray(ds["standard_status"].values).astype("int16").copy()
    if method == "position":
        row, sep, status = _match_by_position(ds, cat, radius, status, where)
    else:
        if n_cat != n_std:
            raise CatalogError(
                f"{where}: order matching pairs the i-th standard with the i-th catalogue row, "
                f"but the catalogue has {n_cat} rows for {n_std} standards; give a catalogue "
                "with exactly one row per standard in fiber order, or match by position"
            )
        row, sep = np.arange(n_std), np.full(n_std, np.nan)
    if np.all(row < 0):
        raise CatalogError(
            f'{where}: no standard star has a catalogue match (radius {radius}"); check that '
            "the catalogue covers this field (fiber RA/Dec "
            f"{np.nanmedian(ds['standard_ra'].values):.4f}, "
            f"{np.nanmedian(ds['standard_dec'].values):.4f} deg)"
        )

    safe = np.where(row >= 0, row, 0)
    matched = xr.DataArray(row >= 0, dims="standard")
    picked = cat.isel(star=xr.DataArray(safe, dims="standard"))

    def _bare(name):
        var = picked[name].where(matched)
        return var.drop_vars([c for c in var.coords if c != "band"])

    mag, err = _bare("mag"), _bare("mag_err")
    no_phot = (row >= 0) & ~np.any(np.isfinite(mag.values), axis=1)
    status[no_phot & (status == StandardStatus.OK)] = StandardStatus.NO_PHOTOMETRY
    if "ebv" in picked:
        ebv = np.where(row >= 0, np.asarray(picked["ebv"].values, dtype=float), np.nan)
    else:
        ebv = np.full(n_std, np.nan)
    if "ebv_source" in picked:
        ebv_source = np.where(row >= 0, np.asarray(picked["ebv_source"].values, dtype=str), "")
    else:
        ebv_source = np.full(n_std, "")
    objid = np.asarray(picked["objid"].values) if "objid" in picked else safe
    if objid.dtype.kind in "iu":
        objid = np.where(row >= 0, objid, -1).astype("int64")
    elif objid.dtype.kind == "f":  # integer ids with blank cells
        objid = np.where((row >= 0) & np.isfinite(objid), np.nan_to_num(objid), -1).astype("int64")
    else:  # a text id (a Gaia "DR3 123…", a survey name) is kept as it is; "" when unmatched
        objid = np.where(row >= 0, objid.astype(str), "")
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
        catalog_objid=(
            "standard",
            objid,
            {"long_name": "catalogue objid (-1 or '': unmatched; the row number without objid)"},
        ),
        std_mag=mag.assign_attrs(units="mag", system="AB", long_name="catalogue magnitude"),
        std_mag_err=err.assign_attrs(units="mag", long_name="catalogue magnitude error"),
        std_ebv=(
            "standard",
            ebv,
            {"units": "mag", "long_name": "catalogue E(B-V) of the standard (NaN: none)"},
        ),
        std_ebv_source=(
            "standard",
            ebv_source.astype(str),
            {"long_name": "where std_ebv comes from ('': nowhere)"},
        ),
    )
    out = out.assign_attrs(catalog_match=method, catalog_radius_arcsec=float(radius))
    out = with_status(out, xr.DataArray(status, dims="standard"))
    n_ok = int(np.sum(status == StandardStatus.OK))
    return add_history(
        out,
        f"associate_catalog: {n_ok}/{n_std} standards matched by {method} in "
        f"{os.path.basename(where)}",
    )


def _match_by_position(ds, cat, radius, status, where):
    """Rows and separations of the nearest catalogue stars; statuses of the unmatched."""
    if "ra" not in cat.coords or "dec" not in cat.coords:
        columns = cat.attrs.get("columns", ", ".join(map(str, cat.data_vars)))
        raise CatalogError(
            f"{where} has no coordinate columns (recognised: RA/Dec, ra/dec, RAJ2000/DEJ2000, "
            f"RA_ICRS/DE_ICRS, ALPHA_J2000/DELTA_J2000; found: {columns}); add them, or "
            "match by row order (match='order', CLI --match order) with one row per standard"
        )
    std_ra = np.asarray(ds["standard_ra"].values, dtype=float)
    std_dec = np.asarray(ds["standard_dec"].values, dtype=float)
    has_fibre = np.isfinite(std_ra) & np.isfinite(std_dec)
    if not has_fibre.any():
        raise CatalogError(
            f"{source_name(ds)}: no standard fibre has RA/Dec in its FIBRES table, so "
            f"{where} cannot be matched by position; match by row order (match='order', "
            "CLI --match order) with a catalogue of one row per standard in fiber order"
        )
    cat_ra = np.asarray(cat["ra"].values, dtype=float)
    cat_dec = np.asarray(cat["dec"].values, dtype=float)
    n_std = std_ra.size
    row = np.full(n_std, -1)
    sep = np.full(n_std, np.nan)
    status[~has_fibre & (status == StandardStatus.OK)] = StandardStatus.NO_POSITION
    fib = np.flatnonzero(has_fibre)
    hit, dist = _nearest(std_ra[fib], std_dec[fib], cat_ra, cat_dec, radius)
    if hit.size:
        row[fib] = np.where(dist <= radius, hit, -1)
        sep[fib] = dist
        for star in np.unique(row[row >= 0]):
            claim = np.flatnonzero(row == star)
            if claim.size > 1:
                loser = claim[np.argsort(sep[claim])[1:]]
                row[loser] = -1
                status[loser[status[loser] == StandardStatus.OK]] = StandardStatus.DUPLICATE
    far = has_fibre & (row < 0) & (status == StandardStatus.OK)
    status[far] = StandardStatus.NO_MATCH
    return row, sep, status


def _box(ra, dec, cat_ra, cat_dec, margin):
    """Rows of the catalogue inside an RA/Dec box around all the fibres, ``margin`` deg wider.

    The box holds every circle of radius ``margin`` about a fibre; rows with a
    NaN position are never in it.  No RA cut near a pole or when the fibres
    span more than half the sky.
    """
    lo, hi = float(np.min(dec)) - margin, float(np.max(dec)) + margin
    keep = np.flatnonzero((cat_dec >= lo) & (cat_dec <= hi))
    keep = keep[np.isfinite(cat_ra[keep])]
    polar = max(abs(lo), abs(hi))
    if polar >= 89.0 or keep.size == 0:
        return keep
    ra0 = float(ra[0])
    offset = (np.asarray(ra) - ra0 + 180.0) % 360.0 - 180.0
    first, last = float(offset.min()), float(offset.max())
    if last - first >= 180.0:
        return keep
    # an arcsec-sized circle at declination d spans margin / cos(d) in RA (+1 % for asin)
    half = 1.01 * margin / np.cos(np.radians(polar))
    around = (cat_ra[keep] - ra0 + 180.0) % 360.0 - 180.0
    return keep[(around >= first - half) & (around <= last + half)]


def _nearest(ra, dec, cat_ra, cat_dec, radius):
    """Row of the nearest catalogue star and its separation (arcsec) for each fibre.

    The match looks only at the catalogue rows in a box around the fibres
    (:func:`_box`; a 10^6-row catalogue costs milliseconds, not a pass per
    fibre); a fibre with nothing within ``max(radius, 60")`` of it is compared
    with the whole catalogue, so the separation it reports is the true nearest
    one.  Rows whose RA or Dec is NaN are never matched.  Empty arrays when the
    catalogue has no usable position.
    """
    if ra.size == 0:
        return np.empty(0, dtype=np.intp), np.empty(0)
    reach = max(float(radius), 60.0)
    rows = _box(ra, dec, cat_ra, cat_dec, reach / 3600.0)
    hit = np.full(ra.size, -1, dtype=np.intp)
    dist = np.full(ra.size, np.inf)
    if rows.size:
        k, d = nearest_on_sky(ra, dec, cat_ra[rows], cat_dec[rows])
        hit, dist = rows[k], d
    far = np.flatnonzero(dist > reach)
    if far.size:  # nothing near: the true nearest, for the message, from every usable row
        every = np.flatnonzero(np.isfinite(cat_ra) & np.isfinite(cat_dec))
        if every.size == 0:
            return np.empty(0, dtype=np.intp), np.empty(0)
        k, d = nearest_on_sky(ra[far], dec[far], cat_ra[every], cat_dec[every])
        hit[far], dist[far] = every[k], d
    return hit, dist
