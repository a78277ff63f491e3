"""Standard-star catalogue reader (ATLAS-RefCat2 CSV, or any survey through a band map).

:func:`read_catalog` turns a RefCat2 CSV (Tonry et al. 2018, ApJ 867, 105) --
as written by the MAST/CasJobs or ATLAS query services, with a header line and
decimal values -- into an :class:`xarray.Dataset` on a ``star`` dimension with
the photometry as AB magnitudes on a ``band`` dimension named after the
speclite filter curves (see :mod:`kspec_xr._base.bands`).

RefCat2 photometry: ``Gaia BP RP`` are Gaia DR2 (Vega), ``g r i z`` are
Pan-STARRS1 (AB), ``J H K`` are 2MASS (Vega).  The Vega -> AB offsets come
from :data:`kspec_xr._base.bands.VEGA_TO_AB` and are recorded per band in the
``ab_offset`` coordinate.  (MAST's copy of RefCat2 carried J values in the H
column until June 2022; files retrieved before then have a wrong H.)

The scaled-integer tiles of the original distribution (``rrr+dd.rc2``, no
header, millimag / 1e-8 deg units) are not read: convert them first.

Other surveys (DES, SDSS, Pan-STARRS1 DR2, Gaia DR3, Gaia XP synthetic
photometry, Legacy Surveys, 2MASS, …) are read through a band map
(``bands=``: a preset name, a ``{column: band spec}`` mapping, a
``COL=BAND,...`` string or a TOML file; see :mod:`kspec_xr._base.bandmap`).
Every catalogue also gets a per-star E(B−V) (``ebv``, ``ebv_source``) when it
has one (an E(B−V) column, or RefCat2's ``Ag`` / ``AGaia``).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from .._base.bandmap import (
    EBV_COLUMNS,
    MAG_PER_SNR,
    PRESETS,
    BandMap,
    BandSpec,
    resolve_bands,
    with_options,
)
from .._base.dust import EBV_MAX, band_ratio
from .._base.errors import CatalogError, KspecWarning

__all__ = [
    "REFCAT2_COLUMNS",
    "REFCAT2_PHOTOMETRY",
    "COORDINATE_COLUMNS",
    "read_catalog",
    "catalog_bands",
]

#: Columns of an ATLAS-RefCat2 query result, in their usual order.
REFCAT2_COLUMNS: tuple[str, ...] = (
    "dstDegrees", "objid", "RA", "Dec", "plx", "dplx", "pmra", "dpmra", "pmdec", "dpmdec",
    "Gaia", "dGaia", "BP", "dBP", "RP", "dRP", "Teff", "AGaia", "dupvar", "Ag", "rp1", "r1",
    "r10", "g", "dg", "gchi", "gcontrib", "r", "dr", "rchi", "rcontrib", "i", "di", "ichi",
    "icontrib", "z", "dz", "zchi", "zcontrib", "nstat", "J", "dJ", "H", "dH", "K", "dK",
)  # fmt: skip

#: (magnitude column, error column, speclite band), in the order of the ``band`` dim
#: (the band map of preset ``refcat2``, :data:`kspec_xr._base.bandmap.PRESETS`).
REFCAT2_PHOTOMETRY: tuple[tuple[str, str, str], ...] = tuple(
    (s.column, str(s.error), s.band) for s in PRESETS["refcat2"].layouts[0].bands
)

#: (RA, Dec) column pairs recognised as positions, in order of preference; names
#: match case-insensitively.  Values in degrees, or sexagesimal strings (RA in hours).
COORDINATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("RA", "Dec"),
    ("RAJ2000", "DEJ2000"),
    ("_RAJ2000", "_DEJ2000"),
    ("RA_ICRS", "DE_ICRS"),
    ("ALPHA_J2000", "DELTA_J2000"),
    ("RAdeg", "DEdeg"),
    ("RA_deg", "Dec_deg"),
    ("raMean", "decMean"),
)

#: A magnitude at or above this, or an error at or above ``ERR_SENTINEL``, means "missing".
MAG_SENTINEL = 99.0
ERR_SENTINEL = 9.0

# Units of the RefCat2 columns that are kept as plain variables (Tonry et al.
# 2018, Table 4); unknown extra columns get no units attribute.
_UNITS = {
    "dstDegrees": "deg",
    "plx": "mas",
    "dplx": "mas",
    "pmra": "mas/yr",
    "dpmra": "mas/yr",
    "pmdec": "mas/yr",
    "dpmdec": "mas/yr",
    "Teff": "K",
    "AGaia": "mag",
    "Ag": "mag",
    "rp1": "arcsec",
    "r1": "arcsec",
    "r10": "arcsec",
    "dupvar": "1",
    "nstat": "1",
    **{f"{b}chi": "1" for b in "griz"},
    **{f"{b}contrib": "1" for b in "griz"},
}
_CASE_EXACT = {c for b in "grizJHK" for c in (b, f"d{b}")}
_RESERVED = {
    "star", "band", "mag", "mag_err", "ra", "dec", "objid", "ab_offset", "source_column",
    "error_column", "mag_system", "mag_err_default", "ebv", "ebv_source",
}  # fmt: skip
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf)$", re.IGNORECASE)
_INTEGER = re.compile(r"^[+-]?\d+$")


# --------------------------------------------------------------------------
# Reading the text
# --------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.exists():
        raise CatalogError(
            f"catalogue file {str(path)!r} does not exist; pass the path of an ATLAS-RefCat2 CSV"
        )
    if path.is_dir():
        raise CatalogError(f"catalogue path {str(path)!r} is a directory; pass the CSV file itself")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise CatalogError(f"cannot read catalogue file {str(path)!r}: {exc}") from exc
    if b"\x00" in raw[:65536]:
        raise CatalogError(f"catalogue file {str(path)!r} is binary, not a CSV text file")
    return raw.decode("utf-8", errors="replace")


def _split(line: str, sep: str | None) -> list[str]:
    fields = line.split(sep) if sep else line.split()
    return [f.strip().strip("'\"").strip() for f in fields]


def _parse_table(text: str, where: str) -> pd.DataFrame:
    """DataFrame of strings from a delimited text with a (possibly commented) header."""
    lines = text.splitlines()
    comments: list[str] = []
    body: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if not body:
                comments.append(stripped.lstrip("#").strip())
            continue
        body.append(line)
    if not body:
        raise CatalogError(f"catalogue {where} has no rows (no header or data line)")
    sep = "," if "," in body[0] else None
    header = _split(body[0], sep)
    if all(_NUMBER.match(f) or not f for f in header):
        # Data without a header line: accept a commented header ("# RA, Dec, ...").
        commented = _split(comments[-1], sep) if comments else []
        if (
            commented
            and len(commented) == len(header)
            and not any(_NUMBER.match(f) for f in commented)
        ):
            header = commented
        else:
            raise CatalogError(
                f"catalogue {where} has no header line (its first line is numbers); add "
                "the RefCat2 column names as the first line, e.g. "
                f"'{','.join(REFCAT2_COLUMNS[:6])},...'"
            )
    else:
        body = body[1:]
    if not body:
        raise CatalogError(f"catalogue {where} has a header but zero rows; it lists no star")
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise CatalogError(f"catalogue {where} repeats column(s) {dupes}; keep one of each")
    try:
        frame = pd.read_csv(
            io.StringIO("\n".join(body)),
            sep="," if sep else r"\s+",
            header=None,
            names=header,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            engine="python",
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise CatalogError(
            f"catalogue {where} is not a well-formed table ({exc}); every row needs the "
            f"{len(header)} columns of the header"
        ) from exc
    return frame


def _canonical_names(columns: list[str]) -> dict[str, str]:
    """Map file columns to RefCat2 spelling when they differ only in case.

    Single-letter band columns (and their errors) must match exactly: ``G``
    is not PS1 ``g`` and ``k`` is not 2MASS ``K``.
    """
    lower: dict[str, list[str]] = {}
    for col in columns:
        lower.setdefault(col.lower(), []).append(col)
    mapping = {}
    for name in REFCAT2_COLUMNS:
        if name in columns or name in _CASE_EXACT:
            continue
        candidates = lower.get(name.lower(), [])
        if len(candidates) == 1 and candidates[0] not in REFCAT2_COLUMNS:
            mapping[candidates[0]] = name
    return mapping


# --------------------------------------------------------------------------
# Column conversion
# --------------------------------------------------------------------------


def _text(series: pd.Series) -> pd.Series:
    """The cells as stripped strings ('' for missing), whatever the column's dtype."""
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        return series.map(lambda v: "" if v is None or v is pd.NA else str(v).strip())
    return series.map(lambda v: "" if pd.isna(v) else repr(v.item() if hasattr(v, "item") else v))


def _to_float(series: pd.Series) -> np.ndarray:
    """Numbers; empty cells and non-numeric junk -> NaN."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(_text(series), errors="coerce").to_numpy(dtype=np.float64)


def _to_best(series: pd.Series) -> np.ndarray:
    """int64 when every cell is an integer, float when numeric (blanks -> NaN), else str."""
    if pd.api.types.is_integer_dtype(series.dtype) and not series.isna().any():
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    cells = _text(series)
    filled = cells[cells != ""]
    if len(filled) == len(cells) and filled.str.match(_INTEGER).all():
        try:
            return filled.astype(np.int64).to_numpy()
        except (OverflowError, ValueError):
            pass
    if filled.str.match(_NUMBER).all():
        return _to_float(series)
    return cells.to_numpy(dtype=str)


def _resolve(columns: list[str], name: str | None, fold: bool = True) -> str | None:
    """The column called ``name``: exact, else (``fold``) the only one equal to it ignoring case."""
    if name is None:
        return None
    if name in columns or not fold:
        return name if name in columns else None
    matches = [c for c in columns if c.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _found(columns: list[str]) -> str:
    return ", ".join(map(repr, columns[:30])) + (", ..." if len(columns) > 30 else "")


def _choose_layout(
    columns: list[str], layouts: tuple[BandMap, ...], where: str, fold: bool = True
) -> BandMap | None:
    """The first layout whose columns are there (a user's map: all of them, or an error)."""
    for bm in layouts:
        if bm.require_all:
            for spec in bm.bands:
                for col in spec.columns():
                    if _resolve(columns, col, fold) is None:
                        raise CatalogError(
                            f"catalogue {where} has no column {col!r} (band map {bm.name!r}, "
                            f"band {spec.band}); columns found: {_found(columns)}"
                        )
            return bm
        if any(_resolve(columns, s.column, fold) for s in bm.bands):
            return bm
    return None


def _sigma(spec: BandSpec, err: np.ndarray, flux: np.ndarray | None) -> np.ndarray:
    """1σ magnitude errors from an error column of kind ``spec.error_kind`` (NaN: none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if spec.error_kind == "mag":
            return err
        if spec.error_kind == "snr":
            return np.where(err > 0, MAG_PER_SNR / err, np.nan)
        if flux is None:  # BandSpec names a flux column for ivar / flux_error
            return np.full(err.shape, np.nan)
        ok = (err > 0) & (flux > 0)
        if spec.error_kind == "ivar":
            return np.where(ok, MAG_PER_SNR / (flux * np.sqrt(np.where(ok, err, 1.0))), np.nan)
        return np.where(ok, MAG_PER_SNR * err / flux, np.nan)  # flux_error


class _Photometry(NamedTuple):
    bands: list[str]
    sources: list[str]
    errors: list[str]
    offsets: list[float]
    systems: list[str]
    mag: np.ndarray
    err: np.ndarray
    default: np.ndarray
    consumed: set[str]


def _photometry(frame: pd.DataFrame, where: str, bm: BandMap, fold: bool = True) -> _Photometry:
    """AB magnitudes, errors and default-error flags (star, band) through the band map.

    ``fold``: match column names ignoring case (not for RefCat2, whose ``g``
    and ``G`` differ; its case variants are renamed beforehand).
    """
    columns = [str(c) for c in frame.columns]
    n = len(frame)
    empty = np.empty((n, 0))
    out = _Photometry([], [], [], [], [], empty, empty, empty, set())
    mags, errs, defaults = [], [], []
    for spec in bm.bands:
        for name in spec.columns():
            found = _resolve(columns, name, fold)
            if found is not None:
                out.consumed.add(found)
        col = _resolve(columns, spec.column, fold)
        if col is None:
            continue  # a preset's band this catalogue does not have
        err_col = _resolve(columns, spec.error, fold)
        flux_col = _resolve(columns, spec.flux_column, fold)
        if spec.error is not None and (err_col is None or (spec.flux_column and flux_col is None)):
            absent = spec.error if err_col is None else str(spec.flux_column)
            if bm.default_error is None:
                raise CatalogError(
                    f"catalogue {where} has magnitude column {col!r} but no error column "
                    f"{absent!r}; add {absent!r} ({bm.name} layout) or remove {col!r}"
                )
            err_col = None  # a preset's error column the catalogue lacks: the default error
        raw = _to_float(frame[col])
        if spec.unit == "nanomaggy":
            good = np.isfinite(raw) & (raw > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                mag = 22.5 - 2.5 * np.log10(np.where(good, raw, 1.0))
        else:
            mag = raw
            good = np.isfinite(mag) & (np.abs(mag) < MAG_SENTINEL)
            if bm.zero_missing:
                good &= mag != 0
        if err_col is not None:
            flux = None if flux_col is None else _to_float(frame[flux_col])
            sigma = _sigma(spec, _to_float(frame[err_col]), flux)
        else:
            sigma = np.full(n, np.nan)
        finite = np.isfinite(sigma)
        has_err = finite & ((sigma > 0) if bm.zero_missing else (sigma >= 0))
        worthless = finite & (sigma >= ERR_SENTINEL)  # the survey's "no measurement"
        good &= ~worthless
        has_err &= ~worthless
        if bm.default_error is None:
            good &= has_err
            default = np.zeros(n, dtype=bool)
        else:
            default = good & ~has_err
            sigma = np.where(default, bm.default_error, sigma)
        mags.append(np.where(good, mag + spec.offset, np.nan))
        errs.append(np.where(good, sigma, np.nan))
        defaults.append(default)
        out.bands.append(spec.band)
        out.sources.append(col)
        out.errors.append(err_col or "")
        out.offsets.append(spec.offset)
        out.systems.append(spec.system)
    if not mags:
        return out
    return out._replace(
        mag=np.stack(mags, axis=-1), err=np.stack(errs, axis=-1), default=np.stack(defaults, -1)
    )


def _reddening(frame: pd.DataFrame, where: str, bm: BandMap) -> tuple[np.ndarray, np.ndarray]:
    """Per-star E(B−V) (mag, NaN: none) and where each came from ('' : nowhere).

    In order, per star: the E(B−V) column (``bm.ebv_column``, else the first
    of :data:`EBV_COLUMNS` present), RefCat2's ``Ag`` / band_ratio(PS1 g),
    ``AGaia`` / band_ratio(Gaia DR2 G).  Values below 0, non-finite, |v| ≥ 99
    or above :data:`kspec_xr._base.dust.EBV_MAX` are not taken (the next
    source is tried); those above EBV_MAX are named in a warning.  RefCat2
    writes Ag = AGaia = 0 where it gives no extinction: both zero (or one zero,
    the other blank) is "none".
    """
    columns = [str(c) for c in frame.columns]
    n = len(frame)
    ebv = np.full(n, np.nan)
    source = np.full(n, "", dtype=object)
    high = np.zeros(n, dtype=bool)

    def clean(values: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(values) & (np.abs(values) < MAG_SENTINEL), values, np.nan)

    def take(values: np.ndarray, label: str) -> None:
        open_ = np.isnan(ebv)
        high[open_ & (values > EBV_MAX)] = True
        ok = open_ & (values >= 0) & (values <= EBV_MAX)
        ebv[ok] = values[ok]
        source[ok] = label

    if bm.ebv_column is not None:
        column = _resolve(columns, bm.ebv_column)
        if column is None:
            raise CatalogError(
                f"catalogue {where} has no E(B-V) column {bm.ebv_column!r} (ebv_column); "
                f"columns found: {_found(columns)}"
            )
    else:
        column = next(
            (c for c in (_resolve(columns, name) for name in EBV_COLUMNS) if c is not None), None
        )
    if column is not None:
        take(clean(_to_float(frame[column])), f"ebv column {column!r}")
    ag = clean(_to_float(frame["Ag"])) if "Ag" in columns else np.full(n, np.nan)
    agaia = clean(_to_float(frame["AGaia"])) if "AGaia" in columns else np.full(n, np.nan)
    zero_ag, zero_agaia = ag == 0, agaia == 0
    none_given = (zero_ag | np.isnan(ag)) & (zero_agaia | np.isnan(agaia)) & (zero_ag | zero_agaia)
    ag[none_given] = np.nan
    agaia[none_given] = np.nan
    if np.isfinite(ag).any():
        take(ag / band_ratio("panstarrs-g"), "RefCat2 Ag (PS1 g)")
    if np.isfinite(agaia).any():
        take(agaia / band_ratio("gaiadr2-G"), "RefCat2 AGaia (Gaia G)")
    rows = np.flatnonzero(high)
    if rows.size:
        shown = ", ".join(str(int(r)) for r in rows[:10]) + (" …" if rows.size > 10 else "")
        warnings.warn(
            f"catalogue {where}: {rows.size} row(s) ({shown}) have an E(B-V) above {EBV_MAX} "
            "mag (kspec_xr._base.dust.EBV_MAX); it is not used (the next source, if any, is "
            "tried; else E(B-V) is NaN)",
            KspecWarning,
            stacklevel=3,
        )
    return ebv, np.asarray(source, dtype=str)


def _coordinate_columns(frame: pd.DataFrame, where: str) -> tuple[str | None, str | None]:
    """The (RA, Dec) columns of the table (first recognised pair), or (None, None)."""
    lower = {str(c).lower(): c for c in frame.columns}
    for ra_name, dec_name in COORDINATE_COLUMNS:
        ra, dec = lower.get(ra_name.lower()), lower.get(dec_name.lower())
        if ra is not None and dec is not None:
            return ra, dec
        if (ra is None) != (dec is None):
            have, missing = (ra, dec_name) if ra is not None else (dec, ra_name)
            raise CatalogError(
                f"catalogue {where} has {have} but no {missing!r} column; give both "
                "(degrees, or sexagesimal with RA in hours) or neither"
            )
    return None, None


def _sexagesimal(cells: pd.Series) -> bool:
    filled = cells[cells != ""]
    return bool(len(filled)) and bool(filled.str.contains(r"[:hdms ]|\d\s+\d", regex=True).any())


def _angles(frame: pd.DataFrame, column: str, *, hours: bool) -> np.ndarray:
    """Degrees from a column of degrees or of sexagesimal strings (NaN where unreadable)."""
    if pd.api.types.is_numeric_dtype(frame[column].dtype):
        return _to_float(frame[column])
    cells = _text(frame[column])
    if not _sexagesimal(cells):
        return _to_float(frame[column])
    from astropy import units as u
    from astropy.coordinates import Angle

    out = np.full(len(cells), np.nan)
    for k, cell in enumerate(cells):
        if not cell:
            continue
        try:
            out[k] = Angle(cell, unit=u.hourangle if hours else u.deg).to_value(u.deg)
        except (ValueError, TypeError):
            pass
    return out


def _positions(frame: pd.DataFrame, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """RA and Dec in degrees, or None without coordinate columns.

    Out-of-range values are an error; rows with a blank or unreadable cell get
    NaN (they cannot be matched by position) and a warning names them.
    """
    ra_col, dec_col = _coordinate_columns(frame, where)
    if ra_col is None or dec_col is None:
        return None
    ra = _angles(frame, ra_col, hours=True)
    dec = _angles(frame, dec_col, hours=False)
    for column, values, lo, hi in ((ra_col, ra, 0.0, 360.0), (dec_col, dec, -90.0, 90.0)):
        outside = np.flatnonzero(np.isfinite(values) & ((values < lo) | (values > hi)))
        if outside.size:
            row = int(outside[0])
            raise CatalogError(
                f"catalogue {where}: column {column!r} has {float(values[row])!r} in data row "
                f"{row} (and {outside.size - 1} more) outside [{lo:g}, {hi:g}]; it must be in "
                "degrees (or sexagesimal, RA in hours)"
            )
    bad = np.flatnonzero(~(np.isfinite(ra) & np.isfinite(dec)))
    if bad.size:
        shown = ", ".join(str(int(r)) for r in bad[:10]) + (" …" if bad.size > 10 else "")
        warnings.warn(
            f"catalogue {where}: {bad.size} row(s) ({shown}) have a blank or unreadable "
            f"{ra_col}/{dec_col}; they cannot be matched by position and are left out",
            KspecWarning,
            stacklevel=3,
        )
    return ra, dec


def _frame_of(source) -> tuple[pd.DataFrame, str, str]:
    """(table, name for messages, source attribute) of a path, DataFrame or astropy Table."""
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index(drop=True)
        frame.columns = [str(c).strip() for c in frame.columns]
        return frame, "(DataFrame)", "pandas.DataFrame"
    table_type = type(source).__module__.startswith("astropy.table")
    if table_type and hasattr(source, "to_pandas"):
        multi = [n for n in source.colnames if len(source[n].shape) > 1]
        if multi:
            raise CatalogError(
                f"catalogue (astropy Table) has multidimensional column(s) {multi}; give one "
                "value per row and column"
            )
        frame = source.to_pandas(index=False)
        frame.columns = [str(c).strip() for c in frame.columns]
        return frame, "(astropy Table)", "astropy.table.Table"
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            "catalog must be a path, a pandas DataFrame, an astropy Table or the Dataset of "
            f"kx.read_catalog, not {type(source).__name__}"
        )
    file = Path(source)
    where = f"file {str(file)!r}"
    return _parse_table(_read_text(file), where), where, str(file)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def read_catalog(
    source,
    /,
    *,
    bands=None,
    default_error: float | bool | None = None,
    ebv_column: str | None = None,
) -> xr.Dataset:
    """Read a catalogue of standard stars (ATLAS-RefCat2, or any survey's) into a Dataset.

    Parameters
    ----------
    source : str, os.PathLike, pandas.DataFrame or astropy.table.Table
        A CSV (optionally gzip-compressed) with a header line of RefCat2
        column names -- any subset of :data:`REFCAT2_COLUMNS`, in any order,
        plus any extra columns -- or a table with such columns (with
        ``bands``: the columns the band map names).  Lines
        starting with ``#`` are comments; a commented header (``# RA,Dec,...``)
        is accepted.  Column names are stripped of blanks and matched
        case-insensitively when unambiguous.  Whitespace-separated tables
        work too.  Positions may come under any name of
        :data:`COORDINATE_COLUMNS` (``RA``/``Dec``, ``RAJ2000``/``DEJ2000``,
        ``RA_ICRS``/``DE_ICRS``, ``ALPHA_J2000``/``DELTA_J2000``, …), in
        degrees or as sexagesimal strings (RA in hours).
    bands : None, str, mapping, os.PathLike or BandMap
        Which columns are which bands (:mod:`kspec_xr._base.bandmap`):
        ``None`` -- ATLAS-RefCat2; a preset name (``"des"``, ``"des_psf"``,
        ``"ozdes"``, ``"sdss"``, ``"panstarrs"``, ``"gaiadr3"``,
        ``"gaia_xp"``, ``"legacy"``, ``"legacy_north"``, ``"twomass"``,
        ``"refcat2"``); ``{column: band}``, ``{column: (band, system)}`` or
        ``{column: (band, system, error_column)}`` with ``system`` ``"AB"``,
        ``"Vega"`` or a number (m_AB − m_catalogue); the string
        ``"COL=BAND[:SYSTEM[:ERROR]],..."``; or a ``.toml`` file.
    default_error : float, False or None
        Error (mag) given to magnitudes the catalogue gives no error for
        (flagged in ``mag_err_default``); ``False``: leave such magnitudes
        out; ``None``: the band map's (0.03 mag; 0.02 for ``ozdes``; none
        for RefCat2).
    ebv_column : str, optional
        The column of E(B−V) (default: the band map's, else the first of
        :data:`kspec_xr._base.bandmap.EBV_COLUMNS` present).

    Returns
    -------
    xarray.Dataset
        Dims ``star`` (0..n-1, the file's row order) and ``band``.

        * ``mag``, ``mag_err`` (star, band): AB magnitudes and 1σ errors
          (``units='mag'``, ``system='AB'``).  Sentinels (\\|mag\\| ≥ 99, error ≥ 9,
          negative error; outside RefCat2 also mag = 0 and error = 0), empty
          cells and non-numeric junk give NaN in both -- except a missing
          error with a band map's default error, which gives that error.
        * ``mag_err_default`` (star, band, bool): ``mag_err`` is the default
          error (``mag_err.attrs['default_error']``), not the catalogue's.
        * ``ebv`` (star, mag) and ``ebv_source`` (star, str): E(B−V) from
          an E(B−V) column, else RefCat2 ``Ag`` / A_g/E(B−V), else ``AGaia`` /
          A_G/E(B−V) (:func:`kspec_xr._base.dust.band_ratio`); NaN and ``""``
          without one.  Values < 0 or > :data:`kspec_xr._base.dust.EBV_MAX`
          are not taken; RefCat2's Ag = AGaia = 0 means "none given".
        * ``band`` coordinate: speclite filter names (``gaiadr2-G``,
          ``gaiadr2-BP``, ``gaiadr2-RP``, ``panstarrs-g`` … ``panstarrs-z``,
          ``twomass-J``, ``twomass-H``, ``twomass-Ks`` for RefCat2), only those
          whose column is in the file; with ``source_column`` (the catalogue
          column), ``error_column`` (``""``: none, the default error),
          ``mag_system`` (``AB``, ``Vega`` or ``offset``) and
          ``ab_offset`` (m_AB − m_catalogue added, mag) along ``band``.
        * ``ra``, ``dec`` (star) coordinates in degrees, when the table has
          positions (NaN for a row whose cell is blank or unreadable: it is
          left out of position matching, with a warning); ``objid`` (star) coordinate when it has ``objid``
          (int64, or str if not all integers).
        * every other column as a ``star`` variable under its own name
          (``Teff``, ``Ag``, ``AGaia``, ``plx``, ``dstDegrees``, …; int64 when
          all integers, float with NaN for blanks when numeric, else str),
          with ``units`` for the RefCat2 ones.  A name clashing with the
          layout above gets a ``_catalog`` suffix.

    Raises
    ------
    CatalogError
        Missing, unreadable or binary file; no header line; zero rows; no
        photometric column at all; a magnitude column without its error column
        (RefCat2: no default error is assumed); only one of RA/Dec; RA or Dec outside
        the range of degrees; malformed rows; a band map naming an unknown
        band (the message lists the known ones), a band twice or a column
        the catalogue lacks (the message lists the columns found); an unknown
        preset, or one speclite has no curves for (``skymapper``).  The
        message names the file and column.
    TypeError
        ``source`` is not a path, DataFrame or Table; ``bands`` of another type.

    Warns
    -----
    KspecWarning
        Rows whose RA or Dec is blank or unreadable, rows whose E(B−V) is
        above EBV_MAX (named in the message).

    Notes
    -----
    ``mag = m_catalogue + ab_offset(band)`` with ``ab_offset`` from
    :data:`kspec_xr._base.bands.VEGA_TO_AB`: +0.1001 / +0.0373 / +0.3535 for
    Gaia DR2 G / BP / RP (Evans et al. 2018), +0.91 / +1.39 / +1.85 for 2MASS
    J / H / Ks (Blanton & Roweis 2007), 0 for Pan-STARRS1.  Without RA/Dec the
    stars can still be associated with fibres by row order.  Other band maps
    add their own offsets (``ab_offset``); fluxes in nanomaggies become
    m = 22.5 − 2.5 log10 f; errors given as S/N, inverse variance or flux
    error become σ_m = 1.0857 σ_f / f.

    Examples
    --------
    >>> cat = read_catalog("standards.csv")             # doctest: +SKIP
    >>> cat.mag.sel(band="gaiadr2-BP")                   # doctest: +SKIP
    >>> des = read_catalog("des.csv", bands="des")       # doctest: +SKIP
    >>> mine = read_catalog("stars.csv", bands={"g": "decam2014-g", "r": ("decam2014-r", "AB", "err_r")})  # doctest: +SKIP
    """
    layouts, map_name = resolve_bands(bands)
    frame, where, origin = _frame_of(source)
    refcat2 = layouts == PRESETS["refcat2"].layouts
    if refcat2:
        frame = frame.rename(columns=_canonical_names(list(frame.columns)))
    columns = [str(c) for c in frame.columns]

    bm = _choose_layout(columns, layouts, where, fold=not refcat2)
    if bm is None:
        raise _no_photometry(frame, columns, layouts, map_name, where, refcat2)
    if default_error is not None:
        bm = with_options(bm, default_error=None if default_error is False else default_error)
    if ebv_column is not None:
        bm = with_options(bm, ebv_column=ebv_column)
    phot = _photometry(frame, where, bm, fold=not refcat2)
    if not phot.bands:  # pragma: no cover - _choose_layout found a magnitude column
        raise _no_photometry(frame, columns, layouts, map_name, where, refcat2)
    ebv, ebv_source = _reddening(frame, where, bm)
    ra_col, dec_col = _coordinate_columns(frame, where)
    positions = _positions(frame, where)

    n = len(frame)
    coords: dict[str, object] = {
        "star": ("star", np.arange(n), {"long_name": "catalogue row"}),
        "band": ("band", np.array(phot.bands), {"long_name": "speclite filter name"}),
        "source_column": ("band", np.array(phot.sources), {"long_name": "catalogue column"}),
        "error_column": (
            "band",
            np.array(phot.errors),
            {"long_name": "catalogue error column ('': none, the default error)"},
        ),
        "mag_system": (
            "band",
            np.array(phot.systems),
            {"long_name": "catalogue magnitude system (AB, Vega, or an explicit offset)"},
        ),
        "ab_offset": (
            "band",
            np.array(phot.offsets, dtype=float),
            {"units": "mag", "long_name": "m_AB - m_catalogue added to the catalogue value"},
        ),
    }
    if positions is not None:
        coords["ra"] = ("star", positions[0], {"units": "deg", "source_column": str(ra_col)})
        coords["dec"] = ("star", positions[1], {"units": "deg", "source_column": str(dec_col)})
    if "objid" in frame:
        coords["objid"] = ("star", _to_best(frame["objid"]), {"long_name": "RefCat2 object id"})

    consumed = {ra_col, dec_col, "objid", *phot.consumed}
    err_attrs: dict[str, object] = {
        "units": "mag",
        "long_name": "catalogue magnitude error (1 sigma)",
    }
    if bm.default_error is not None:
        err_attrs["default_error"] = float(bm.default_error)
    data_vars: dict[str, object] = {
        "mag": (
            ("star", "band"),
            phot.mag,
            {"units": "mag", "system": "AB", "long_name": "catalogue AB magnitude"},
        ),
        "mag_err": (("star", "band"), phot.err, err_attrs),
        "mag_err_default": (
            ("star", "band"),
            phot.default.astype(bool),
            {"long_name": "mag_err is the band map's default error, not the catalogue's"},
        ),
        "ebv": (
            "star",
            ebv,
            {"units": "mag", "long_name": "E(B-V) from the catalogue (NaN: none)"},
        ),
        "ebv_source": (
            "star",
            ebv_source,
            {"long_name": "where ebv comes from ('': nowhere)", "ebv_max": float(EBV_MAX)},
        ),
    }
    for column in frame.columns:
        if column in consumed:
            continue
        attrs = {"units": _UNITS[column]} if column in _UNITS else {}
        name = f"{column}_catalog" if column in _RESERVED else column
        if name != column:
            attrs["original_name"] = column
        data_vars[name] = ("star", _to_best(frame[column]), attrs)

    return xr.Dataset(
        data_vars,
        coords=coords,
        attrs={
            "title": "standard-star catalogue",
            "catalog": "ATLAS-RefCat2" if refcat2 else bm.name,
            "band_map": bm.name,
            "source": origin,
            "columns": ", ".join(map(str, frame.columns)),
            "mag_system": "AB",
        },
    )


def _no_photometry(frame, columns, layouts, map_name, where, refcat2) -> CatalogError:
    """The error for a catalogue without any magnitude column of its band map."""
    others = [
        name
        for name, preset in PRESETS.items()
        if name != "refcat2"
        and not preset.unavailable
        and any(_resolve(columns, s.column) for bm in preset.layouts for s in bm.bands)
    ]
    hint = (
        f" Its columns fit preset(s) {', '.join(map(repr, others))}: pass bands={others[0]!r} "
        "(CLI --bands)."
        if others
        else ""
    )
    found = ", ".join(map(repr, columns[:12])) + (", ..." if len(columns) > 12 else "")
    if refcat2:
        has_any = _coordinate_columns(frame, where)[0] is not None
        what = "none of the" if has_any else "neither RA/Dec nor any"
        return CatalogError(
            f"catalogue {where} has {what} photometric columns "
            f"({', '.join(c for c, _, _ in REFCAT2_PHOTOMETRY)}); found {found}. "
            "Is it an ATLAS-RefCat2 CSV with a header line? Other surveys need a band map "
            "(bands=...)." + hint
        )
    expected = " or ".join(", ".join(bm.magnitude_columns()) for bm in layouts)
    return CatalogError(
        f"catalogue {where} has none of the magnitude columns of {map_name!r} ({expected}); "
        f"found {found}." + hint
    )


def catalog_bands(ds: xr.Dataset, /) -> tuple[str, ...]:
    """Bands of a catalogue Dataset that hold at least one finite magnitude.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`read_catalog` (or any Dataset with ``mag(star, band)``).

    Returns
    -------
    tuple of str
        speclite band names, in the Dataset's band order.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "mag" not in ds or "band" not in ds["mag"].dims:
        raise CatalogError("the Dataset has no mag(star, band) variable; read it with read_catalog")
    has = np.asarray(ds["mag"].notnull().any([d for d in ds["mag"].dims if d != "band"]))
    return tuple(str(b) for b, ok in zip(ds["band"].values, has, strict=True) if ok)
