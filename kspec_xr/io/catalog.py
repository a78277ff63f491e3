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
import stat
import warnings
import zlib
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
    "check_catalog",
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
#: Catalogue magnitudes outside (MAG_MIN, MAG_MAX) are missing: no star is brighter than
#: -5 or fainter than 40 mag, and the sentinels (99, 99.99, -99, -999, -9999) are outside.
MAG_MIN, MAG_MAX = -5.0, 40.0

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


_GZIP_MAGIC = b"\x1f\x8b"
_BOM_UTF8 = b"\xef\xbb\xbf"
# (byte-order mark, codec) of the Unicode encodings other than UTF-8 a table may come in;
# UTF-32 first: its little-endian mark starts with UTF-16's.
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_UNICODE_MINUS = "\u2212".encode()
# A line of the body the fast reader cannot take as it is: a comment, a blank line
# (and, added per file, one that starts like the header: :func:`_irregular`).
_IRREGULAR = rb"\n[ \t\r]*(?:#|\n)|\n[ \t\r]+\Z"


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _check_file(path: Path) -> Path:
    """``path``, after checking that it names a readable regular file.

    A FIFO, socket or device is refused before it is opened: reading a FIFO
    blocks until a writer comes, a device (``/dev/zero``) never ends.
    """
    try:
        mode = path.stat().st_mode  # follows symbolic links, as open() does
    except (FileNotFoundError, NotADirectoryError):
        raise CatalogError(
            f"catalogue file {str(path)!r} does not exist; pass the path of an ATLAS-RefCat2 CSV"
        ) from None
    except OSError as exc:
        raise CatalogError(
            f"cannot read catalogue file {str(path)!r} ({exc.strerror or exc}); check the path "
            "and its permissions"
        ) from None
    if stat.S_ISDIR(mode):
        raise CatalogError(f"catalogue path {str(path)!r} is a directory; pass the CSV file itself")
    if not stat.S_ISREG(mode):
        raise CatalogError(
            f"catalogue path {str(path)!r} is {_file_kind(mode)}, not a regular file; save the "
            "catalogue to a file and pass that file's path"
        )
    if not os.access(path, os.R_OK):
        raise CatalogError(
            f"cannot read catalogue file {str(path)!r}: permission denied; check its permissions"
        )
    return path


def _normalise(raw: bytes, where: str, *, partial: bool = False) -> bytes:
    """UTF-8 bytes with ``\\n`` line ends: BOM removed, UTF-16/32 transcoded, U+2212 → '-'.

    ``partial``: ``raw`` is the first part of the file (a character may be cut at its end).
    """
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                raw = raw.decode(codec, errors="replace" if partial else "strict").encode("utf-8")
            except UnicodeDecodeError as exc:
                raise CatalogError(
                    f"catalogue {where} starts with a {codec.upper()} byte-order mark but is not "
                    f"valid {codec.upper()} ({exc.reason} at byte {exc.start}); save it as UTF-8"
                ) from None
            break
    if raw.startswith(_BOM_UTF8):
        raw = raw[len(_BOM_UTF8) :]
    if b"\x00" in raw[:65536]:
        raise CatalogError(
            f"catalogue {where} is binary, not a CSV text file (or UTF-16/32 text without a "
            "byte-order mark: save it as UTF-8)"
        )
    if b"\n" not in raw and b"\r" in raw:  # classic Mac OS line ends
        raw = raw.replace(b"\r", b"\n")
    if raw.find(_UNICODE_MINUS[:1]) >= 0 and _UNICODE_MINUS in raw:  # a typeset minus (−30.5)
        raw = raw.replace(_UNICODE_MINUS, b"-")
    return raw


def _read_bytes(path: Path, where: str) -> bytes:
    """The file's bytes (gunzipped), normalised (:func:`_normalise`)."""
    _check_file(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise CatalogError(f"cannot read catalogue file {str(path)!r}: {exc}") from exc
    return _normalise(raw, where)


def _split(line: str, sep: str | None) -> list[str]:
    fields = line.split(sep) if sep else line.split()
    return [f.strip().strip("'\"").strip() for f in fields]


class _Header(NamedTuple):
    columns: list[str]
    sep: str | None  # "," or None (blanks)
    start: int  # offset of the first data line
    first_line: int  # its line number (1-based)


def _header(raw: bytes, where: str, *, whole: bool = True) -> _Header:
    """The header line (or a commented header) of a delimited text, and where the data start.

    ``whole``: ``raw`` is the whole file (else its first part, for a header check).
    """
    pos, line_no, comments = 0, 0, []
    size = len(raw)
    while pos < size:
        end = raw.find(b"\n", pos)
        end = size if end < 0 else end
        line_no += 1
        text = raw[pos:end].decode("utf-8", errors="replace").strip()
        if not text or text.startswith("#"):
            if text:
                comments.append(text.lstrip("#").strip())
            pos = end + 1
            continue
        sep = "," if "," in text else None
        header = _split(text, sep)
        if all(_NUMBER.match(f) or not f for f in header):
            # Data without a header line: accept a commented header ("# RA, Dec, ...").
            commented = _split(comments[-1], sep) if comments else []
            if (
                commented
                and len(commented) == len(header)
                and not any(_NUMBER.match(f) for f in commented)
            ):
                return _Header(commented, sep, pos, line_no)
            raise CatalogError(
                f"catalogue {where} has no header line (its first line is numbers); add "
                "the RefCat2 column names as the first line, e.g. "
                f"'{','.join(REFCAT2_COLUMNS[:6])},...'"
            )
        if end == size and not whole:
            raise CatalogError(
                f"catalogue {where}: its header line is longer than {size} bytes; is it a "
                "CSV table with one row per line?"
            )
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise CatalogError(f"catalogue {where} repeats column(s) {dupes}; keep one of each")
        return _Header(header, sep, end + 1, line_no + 1)
    raise CatalogError(f"catalogue {where} has no rows (no header or data line)")


class _Rows:
    """How the messages name data rows: as in the file (1-based, with line numbers) or table."""

    def __init__(self, first_line: int | None = None, lines: np.ndarray | None = None) -> None:
        self.first_line, self.lines = first_line, lines

    @property
    def in_file(self) -> bool:
        return self.first_line is not None or self.lines is not None

    def line(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return self.lines[rows] if self.lines is not None else rows + int(self.first_line or 0)

    def __call__(self, rows, limit: int = 10) -> str:
        """``data rows 3, 7 (lines 5, 9)`` in a file, ``rows 2, 6`` (0-based) in a table."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        more = ", …" if rows.size > limit else ""
        shown = rows[:limit]
        plural = "s" if rows.size > 1 else ""
        if not self.in_file:
            return f"row{plural} {', '.join(map(str, shown))}{more} (0-based)"
        data = ", ".join(str(int(r) + 1) for r in shown)
        lines = ", ".join(str(int(n)) for n in self.line(shown))
        return f"data row{plural} {data}{more} (line{plural} {lines}{more})"

    def summary(self, rows, limit: int = 10) -> str:
        """``data rows 3, 7; lines 5, 9`` in a file, ``2, 6`` (0-based positions) in a table."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        more = ", …" if rows.size > limit else ""
        shown = rows[:limit]
        if not self.in_file:
            return ", ".join(map(str, shown)) + more
        plural = "s" if rows.size > 1 else ""
        data = ", ".join(str(int(r) + 1) for r in shown)
        lines = ", ".join(str(int(n)) for n in self.line(shown))
        return f"data row{plural} {data}{more}; line{plural} {lines}{more}"


def _is_header_line(line: bytes, head: _Header) -> bool:
    """A data line that repeats the header (a CSV concatenated from two queries)."""
    first = head.columns[0].encode("utf-8", errors="replace")
    if not line.lstrip(b" \t\"'").startswith(first):
        return False
    fields = _split(line.decode("utf-8", errors="replace"), head.sep)
    same = sum(f == h for f, h in zip(fields, head.columns, strict=False))
    return same >= max(1, (len(head.columns) + 1) // 2)


def _clean_body(raw: bytes, head: _Header) -> tuple[bytes, np.ndarray, list[int]]:
    """The data lines without comments, blank lines and repeated headers; their line numbers."""
    kept: list[bytes] = []
    numbers: list[int] = []
    headers: list[int] = []
    for k, line in enumerate(raw[head.start :].split(b"\n")):
        stripped = line.strip()
        if not stripped or stripped.startswith(b"#"):
            continue
        if _is_header_line(stripped, head):
            headers.append(head.first_line + k)
            continue
        kept.append(line)
        numbers.append(head.first_line + k)
    return b"\n".join(kept) + b"\n", np.asarray(numbers, dtype=np.int64), headers


def _irregular(raw: bytes, head: _Header) -> bool:
    """Whether the data lines hold a comment, a blank line or a repeated header (one scan)."""
    first = re.escape(head.columns[0].encode("utf-8", errors="replace"))
    repeat = rb"\n[ \t]*[\"']?" + first + rb"[\"']?(?:[ \t,\r\n]|\Z)"
    pattern = re.compile(_IRREGULAR + b"|" + repeat)
    return pattern.search(raw, max(head.start - 1, 0)) is not None


def _parse_table(raw: bytes, where: str) -> tuple[pd.DataFrame, _Rows]:
    """The table of a delimited text with a (possibly commented) header, and its row names.

    Numbers are parsed by pandas' C reader; columns with any other text are
    strings.  Comment and blank lines are skipped, repeated header lines
    dropped (with a warning).
    """
    head = _header(raw, where)
    headers: list[int] = []
    skip = 0
    if _irregular(raw, head):
        body, numbers, headers = _clean_body(raw, head)
        rows = _Rows(lines=numbers)
    elif b'"' in raw[: head.start]:  # pandas' skiprows would honour quotes in the preamble
        body, rows = raw[head.start :], _Rows(first_line=head.first_line)
    else:  # the fast path: no copy, the C reader skips the header lines itself
        body, rows, skip = raw, _Rows(first_line=head.first_line), head.first_line - 1
    del raw
    empty = CatalogError(f"catalogue {where} has a header but zero rows; it lists no star")

    def read(nrows=None, dtype=None):
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            return pd.read_csv(
                io.BytesIO(body),  # shares the bytes, no copy
                sep="," if head.sep else r"\s+",
                header=None,
                names=head.columns,
                skiprows=skip,
                nrows=nrows,
                dtype=dtype,
                index_col=False,
                keep_default_na=False,
                na_values=[""],
                skipinitialspace=True,
                skip_blank_lines=True,
                encoding="utf-8",
                encoding_errors="replace",
                engine="c",
                low_memory=True,  # parse in chunks; a column mixing types comes back as objects
            )

    try:
        # Columns that are text in the first rows are read as text (pandas would turn
        # "TRUE" into True); the others are parsed as numbers by the C reader.
        sample = read(nrows=2000)
        text = [
            c
            for c in sample.columns
            if not pd.api.types.is_numeric_dtype(sample[c].dtype)
            or pd.api.types.is_bool_dtype(sample[c].dtype)
        ]
        if len(sample) < 2000 and not text:
            frame = sample  # the whole table
        else:
            frame = read(dtype=dict.fromkeys(text, str) or None)
    except pd.errors.EmptyDataError:
        raise empty from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError) as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        found = re.search(r"[Ll]ine (\d+)", message)
        at = ""
        if isinstance(exc, pd.errors.ParserWarning):  # pandas checks the first data line
            message = "the first data line has more fields than the header"
            at = f" at line {int(rows.line(np.array([0]))[0])}"
        elif found:
            k = int(found.group(1)) - 1 - skip  # pandas counts the lines it reads from 1
            if k >= 0 and (rows.lines is None or k < rows.lines.size):
                at = f" at line {int(rows.line(np.array([k]))[0])}"
        raise CatalogError(
            f"catalogue {where} is not a well-formed table{at} ({message}); every row needs "
            f"the {len(head.columns)} columns of the header"
        ) from exc
    if frame.empty:
        raise empty
    if headers:
        shown = ", ".join(map(str, headers[:10])) + (", …" if len(headers) > 10 else "")
        warnings.warn(
            f"catalogue {where}: line(s) {shown} repeat the header line (a CSV concatenated "
            "from two queries?); they are dropped",
            KspecWarning,
            stacklevel=4,
        )
    return frame, rows


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
    """The cells as stripped strings ('' for missing), whatever the column's dtype (vectorised)."""
    missing = series.isna().to_numpy()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        cells = series.astype(str).str.strip()
    else:
        cells = series.astype(str)
    if missing.any():
        cells = cells.where(~missing, "")
    return cells


def _to_float(series: pd.Series) -> np.ndarray:
    """Numbers; empty cells and non-numeric junk -> NaN."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    values = pd.to_numeric(_text(series), errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _to_best(series: pd.Series) -> np.ndarray:
    """int64 when every cell is an integer, float when numeric (blanks -> NaN), else str."""
    if pd.api.types.is_integer_dtype(series.dtype) and not series.isna().any():
        if series.dtype == np.uint64 and len(series) and series.max() > np.iinfo(np.int64).max:
            return series.astype(str).to_numpy(dtype=str)
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    cells = _text(series)
    filled = cells[cells != ""]
    if len(filled) == len(cells) and filled.str.match(_INTEGER).all():
        try:
            return filled.astype(np.int64).to_numpy(dtype=np.int64)
        except (OverflowError, ValueError, TypeError):
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


def _layout_of(frame: pd.DataFrame, layouts, map_name, where: str):
    """``(frame, band map, is RefCat2)``: RefCat2's columns renamed to their canonical names,
    and the layout of the band map the columns fit; else the error that says what is missing."""
    refcat2 = layouts == PRESETS["refcat2"].layouts
    if refcat2:
        frame = frame.rename(columns=_canonical_names(list(frame.columns)))
    columns = [str(c) for c in frame.columns]
    bm = _choose_layout(columns, layouts, where, fold=not refcat2)
    if bm is None:
        raise _no_photometry(frame, columns, layouts, map_name, where, refcat2)
    return frame, bm, refcat2


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
            good = np.isfinite(mag)
            if bm.zero_missing:
                good &= mag != 0
        good &= (mag > MAG_MIN) & (mag < MAG_MAX)  # sentinels (99, -999, …) and nonsense
        if err_col is not None:
            flux = None if flux_col is None else _to_float(frame[flux_col])
            sigma = _sigma(spec, _to_float(frame[err_col]), flux)
        else:
            sigma = np.full(n, np.nan)
        finite = np.isfinite(sigma)
        has_err = finite & (sigma > 0)  # an error of 0 (or < 0) is no error: never a weight
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


def _reddening(
    frame: pd.DataFrame, where: str, bm: BandMap, rows: _Rows | None = None
) -> tuple[np.ndarray, np.ndarray]:
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
    above = np.flatnonzero(high)
    if above.size:
        warnings.warn(
            f"catalogue {where}: {above.size} row(s) ({(rows or _Rows()).summary(above)}) have "
            f"an E(B-V) above {EBV_MAX} "
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


# Sexagesimal angles: "12:34:56.7", "12 34 56.7", "12h34m56.7s", "-30d12m34s", "-30:12" …
_SEXAGESIMAL = re.compile(
    r"^([+-]?)\s*(\d+(?:\.\d*)?)\s*(?:[:hHdD\u00b0]\s*|\s+)(\d+(?:\.\d*)?)\s*"
    r"(?:[:mM'\u2032]\s*|\s+)?(?:(\d+(?:\.\d*)?)\s*[sS\"\u2033]?)?$"
)


def _angles(frame: pd.DataFrame, column: str, *, hours: bool) -> np.ndarray:
    """Degrees from a column of degrees and/or sexagesimal strings (NaN where unreadable).

    Each cell on its own: a plain number is degrees, a sexagesimal string is
    hours (RA) or degrees (Dec); one unreadable cell does not change how the
    others are read.
    """
    series = frame[column]
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series):
        return _to_float(series)
    cells = _text(series)
    out = np.array(pd.to_numeric(cells, errors="coerce"), dtype=np.float64)  # a writable copy
    todo = np.isnan(out) & (cells != "").to_numpy()
    if not todo.any():
        return out
    rest = cells[todo]
    parts = rest.str.extract(_SEXAGESIMAL)
    whole, minutes = (pd.to_numeric(parts[k], errors="coerce").to_numpy(float) for k in (1, 2))
    seconds = pd.to_numeric(parts[3], errors="coerce").fillna(0.0).to_numpy(float)
    sign = np.where(parts[0].to_numpy(dtype=object) == "-", -1.0, 1.0)
    ok = np.isfinite(whole) & np.isfinite(minutes) & (minutes < 60) & (seconds < 60)
    with np.errstate(invalid="ignore"):
        value = sign * (whole + minutes / 60.0 + seconds / 3600.0) * (15.0 if hours else 1.0)
    value = np.where(ok, value, np.nan)
    # other forms astropy knows ("12.5h", "30.5d"): cell by cell, only those left
    left = ~ok & rest.str.contains(r"\d", regex=True).to_numpy(dtype=bool)
    if left.any():
        from astropy import units as u
        from astropy.coordinates import Angle

        unit = u.hourangle if hours else u.deg
        for k in np.flatnonzero(left):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value[k] = Angle(str(rest.iloc[k]), unit=unit).to_value(u.deg)
            except (ValueError, TypeError, u.UnitsError):
                pass
    out[todo] = value
    return out


def _positions(
    frame: pd.DataFrame, where: str, rows: _Rows | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """RA and Dec in degrees, or None without coordinate columns.

    Out-of-range values are an error; rows with a blank or unreadable cell get
    NaN (they cannot be matched by position) and one warning names them, with
    the column of each.
    """
    rows = rows or _Rows()
    ra_col, dec_col = _coordinate_columns(frame, where)
    if ra_col is None or dec_col is None:
        return None
    ra = _angles(frame, ra_col, hours=True)
    dec = _angles(frame, dec_col, hours=False)
    for column, values, lo, hi in ((ra_col, ra, 0.0, 360.0), (dec_col, dec, -90.0, 90.0)):
        outside = np.flatnonzero(np.isfinite(values) & ((values < lo) | (values > hi)))
        if outside.size:
            row = int(outside[0])
            more = f" (and {outside.size - 1} more)" if outside.size > 1 else ""
            raise CatalogError(
                f"catalogue {where}: column {column!r} has {float(values[row])!r} in "
                f"{rows(outside[:1])}{more} outside [{lo:g}, {hi:g}]; it must be in degrees "
                "(or sexagesimal, RA in hours)"
            )
    bad_ra, bad_dec = ~np.isfinite(ra), ~np.isfinite(dec)
    bad = np.flatnonzero(bad_ra | bad_dec)
    if bad.size:
        if np.array_equal(bad_ra, bad_dec):
            detail = f"{ra_col!r} and {dec_col!r} in {rows(bad)}"
        else:
            detail = "; ".join(
                f"{column!r} in {rows(np.flatnonzero(mask))}"
                for column, mask in ((ra_col, bad_ra), (dec_col, bad_dec))
                if mask.any()
            )
        warnings.warn(
            f"catalogue {where}: {bad.size} row(s) ({rows.summary(bad)}) have a blank or "
            f"unreadable position ({detail}); they cannot be matched by position and are left "
            "out (the other stars are unaffected)",
            KspecWarning,
            stacklevel=3,
        )
    return ra, dec


def _frame_of(source) -> tuple[pd.DataFrame, str, str, _Rows]:
    """(table, name for messages, source attribute, row names) of a path, DataFrame or Table."""
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index(drop=True)
        frame.columns = [str(c).strip() for c in frame.columns]
        return frame, "(DataFrame)", "pandas.DataFrame", _Rows()
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
        return frame, "(astropy Table)", "astropy.table.Table", _Rows()
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            "catalog must be a path, a pandas DataFrame, an astropy Table or the Dataset of "
            f"kx.read_catalog, not {type(source).__name__}"
        )
    file = Path(source)
    where = f"file {str(file)!r}"
    frame, rows = _parse_table(_read_bytes(file, where), where)
    return frame, where, str(file), rows


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
        starting with ``#`` are comments, blank lines are skipped, a line
        repeating the header (two query results concatenated) is dropped with
        a warning; a commented header (``# RA,Dec,...``) is accepted.  UTF-8
        (a byte-order mark is ignored; other bytes become U+FFFD), or UTF-16/32
        with a byte-order mark; LF, CRLF or CR line ends; a typeset minus
        (U+2212) reads as ``-``.  Only a regular file is opened (a FIFO or
        device is refused).  Column names are stripped of blanks and matched
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
          (``units='mag'``, ``system='AB'``).  Magnitudes outside −5 < m < 40
          (the 99, 99.99, −99, −999, −9999 sentinels), exactly 0, blank or
          non-numeric, and errors ≥ 9, give NaN in both; an error that is
          blank, 0 or negative is missing -- the magnitude gets the band
          map's default error (flagged in ``mag_err_default``), or, without
          one (RefCat2 unless ``default_error`` is given), is left out.
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
          left out of position matching, with one warning naming the data
          rows, line numbers and column; the other rows are read as they
          are); ``objid`` (star) coordinate when it has ``objid`` (int64, or
          str -- the text as written -- if not all integers).
        * every other column as a ``star`` variable under its own name
          (``Teff``, ``Ag``, ``AGaia``, ``plx``, ``dstDegrees``, …; int64 when
          all integers, float with NaN for blanks when numeric, else str),
          with ``units`` for the RefCat2 ones.  A name clashing with the
          layout above gets a ``_catalog`` suffix.

    Raises
    ------
    CatalogError
        Missing, unreadable or binary file, a directory, FIFO or device; no
        header line; zero rows; no
        photometric column at all; a magnitude column without its error column
        (RefCat2: no default error is assumed); only one of RA/Dec; RA or Dec outside
        the range of degrees; malformed rows (the message gives the line); a
        band map naming an unknown
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
        above EBV_MAX, lines repeating the header (one warning each, naming
        the rows: data rows counted from 1 after the header, and the file's
        line numbers; for a DataFrame or Table, 0-based positions).

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
    frame, where, origin, rows = _frame_of(source)
    frame, bm, refcat2 = _layout_of(frame, layouts, map_name, where)
    if default_error is not None:
        bm = with_options(bm, default_error=None if default_error is False else default_error)
    if ebv_column is not None:
        bm = with_options(bm, ebv_column=ebv_column)
    phot = _photometry(frame, where, bm, fold=not refcat2)
    if not phot.bands:  # pragma: no cover - _choose_layout found a magnitude column
        raise _no_photometry(
            frame, [str(c) for c in frame.columns], layouts, map_name, where, refcat2
        )
    ebv, ebv_source = _reddening(frame, where, bm, rows)
    ra_col, dec_col = _coordinate_columns(frame, where)
    positions = _positions(frame, where, rows)

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


#: How much of a catalogue :func:`check_catalog` reads: its header must end within it.
_HEAD_BYTES = 1 << 20


def _read_head(path: Path, where: str) -> tuple[bytes, bool]:
    """The first ``_HEAD_BYTES`` of the (gunzipped) file, normalised; and whether that is all."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read(_HEAD_BYTES)
            if raw[:2] == _GZIP_MAGIC:
                stream.seek(0)
                with gzip.GzipFile(fileobj=stream) as unzipped:
                    raw = unzipped.read(_HEAD_BYTES)
                    complete = not unzipped.read(1)
            else:
                complete = not stream.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise CatalogError(f"cannot read catalogue file {str(path)!r}: {exc}") from exc
    return _normalise(raw, where, partial=not complete), complete


def check_catalog(path, /, *, bands=None, match: str = "position") -> Path:
    """Check, cheaply and before any work, that a catalogue file can be used.

    Reads only the header (the first MiB): the file exists, is a regular
    readable file (a FIFO or device is refused, never opened), is text with a
    header line and at least one data line, and has the columns the band map
    needs -- a magnitude column of one of its layouts (a user's map: every
    column it names), the error columns RefCat2 requires, the ``ebv_column``
    named, and (``match="position"``) a recognised RA/Dec pair.  Rows are
    not read: a bad cell is found (and dropped with a warning) by
    :func:`read_catalog`.

    Parameters
    ----------
    path : str or os.PathLike
        The catalogue file (CSV, optionally gzip-compressed).
    bands : None, str, mapping, os.PathLike or BandMap
        Its band map, as for :func:`read_catalog`.
    match : {"position", "order"}
        How it will be matched: ``"position"`` needs RA/Dec columns.

    Returns
    -------
    pathlib.Path
        ``path``, checked.

    Raises
    ------
    CatalogError
        What :func:`read_catalog` would raise for the file's header, with the
        same message (missing file, directory, FIFO/device, unreadable, binary,
        no header, no rows, no photometric column, a missing error column, an
        unknown band map, …), or no coordinate columns for ``match="position"``.
    TypeError
        ``path`` is not a str or os.PathLike.

    Examples
    --------
    >>> check_catalog("stars.csv")                       # doctest: +SKIP
    >>> check_catalog("des.csv", bands="des")            # doctest: +SKIP
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"check_catalog needs a path (str or os.PathLike), not {type(path).__name__}"
        )
    if match not in ("position", "order"):
        raise ValueError(f"match must be 'position' or 'order', not {match!r}")
    layouts, map_name = resolve_bands(bands)
    file = Path(path)
    where = f"file {str(file)!r}"
    _check_file(file)
    raw, complete = _read_head(file, where)
    head = _header(raw, where, whole=complete)
    if complete and not re.compile(rb"\n[ \t\r]*[^\s#]").search(raw, max(head.start - 1, 0)):
        raise CatalogError(f"catalogue {where} has a header but zero rows; it lists no star")
    frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in head.columns})
    frame, bm, refcat2 = _layout_of(frame, layouts, map_name, where)
    _photometry(frame, where, bm, fold=not refcat2)  # a magnitude column without its error
    _reddening(frame, where, bm)  # an ebv_column the file lacks
    ra_col, _ = _coordinate_columns(frame, where)  # only one of RA/Dec
    if match == "position" and ra_col is None:
        raise CatalogError(
            f"catalogue {where} has no coordinate columns (recognised: "
            f"{', '.join('/'.join(pair) for pair in COORDINATE_COLUMNS)}; found: "
            f"{_found([str(c) for c in frame.columns])}); add them, or match by row order (match='order', CLI "
            "--match order) with one row per standard"
        )
    return file


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
