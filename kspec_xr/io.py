"""Read and write 2dfdr / kspecdr RED files as xarray Datasets.

``open_red`` turns a RED file into the Dataset of DESIGN §3 and ``write_red``
turns it back into a file: ``write_red(open_red(f), g)`` reproduces ``f``
(the same HDUs in the same order, identical data and header cards).

Data model (the attributes other modules rely on)
-------------------------------------------------
``ds.attrs["fits_header"]``
    The primary header, newline-separated 80-character cards (no ``END``);
    read it with :func:`primary_header`, change it with :func:`with_header_cards`.
``ds.attrs["fits_hdu_order"]``
    The keys of the file's extensions in file order, one per line.
``ds.attrs["history"]``
    Lines added by :func:`add_history`; the writer turns them into ``HISTORY``
    cards (after the stored ones) and a re-read Dataset has them in its header.
``fits_hdu`` / ``fits_header`` on a variable
    The variable carries that HDU (its key and its header): ``variance``
    (VARIANCE), ``wavelength`` (WAVELA), ``fiber`` (FIBRES), an extra image
    HDU's variable, or the ``{KEY}_row`` coordinate of an extra table.
``fits_column`` on a variable
    The table column (its ``TTYPE``) the variable holds.
``fits_raw_of`` on a variable
    ``ra_fits``/``dec_fits``: the FIBRES column exactly as stored (radians for
    2dfdr) behind the ``ra``/``dec`` coordinates in degrees.

Variables that do not come from the file (calibration products) are written
as extra HDUs marked with ``KXVAR``/``KXMETA`` (one image per numeric variable
along ``fiber``/``wavelength``) or ``KXDIM``/``KXCOLn`` (one binary table per
other dimension, e.g. ``standard``, vector columns for 2-D variables; 0-d
variables go to a one-row ``KXSCALARS`` table), each with its name, dims,
dtype and attributes as JSON, and :func:`open_red` restores them.  A ``mask``
that differs from what the reader would compute is written the same way
(``KXVAR = 'mask'``) and OR-ed in again on reading.  Attributes the reader
cannot rebuild (extra Dataset attributes, extra attributes of file variables)
travel in the primary card ``KXATTRS``.  None of these cards is written for
an unprocessed Dataset, which therefore writes back its input exactly.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import textwrap
import warnings
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from astropy import units as u
from astropy.io import fits

from . import __version__, maskbits
from ._atomic import atomic_output
from .errors import CatalogError, OutputExistsError, RedFileError
from .fitsio_encode import (
    EncodedHDU,
    decode_attrs,
    encode_attrs,
    encode_image,
    encode_table,
    header_from_string,
    header_to_string,
    merge_header,
    update_checksums,
)

__all__ = [
    "TARGET_CLASS_TYPES",
    "add_history",
    "assign_fiber_types",
    "open_red",
    "primary_header",
    "read_assign",
    "with_header_cards",
    "write_red",
]

HEADER_ATTR = "fits_header"
HDU_ATTR = "fits_hdu"
COLUMN_ATTR = "fits_column"
RAW_ATTR = "fits_raw_of"
ORDER_ATTR = "fits_hdu_order"
HISTORY_ATTR = "history"

_VAR_CARD, _META_CARD, _DIM_CARD, _COL_CARD = "KXVAR", "KXMETA", "KXDIM", "KXCOL"
_ATTRS_CARD = "KXATTRS"
_VERSION_CARDS = {
    "HIERARCH KSPECXR VERSION": "kspec_xr",
    "HIERARCH KSPECXR XARRAY": "xarray",
    "HIERARCH KSPECXR ASTROPY": "astropy",
    "HIERARCH KSPECXR NUMPY": "numpy",
}

_FIBRES, _VARIANCE, _WAVELA, _MASK = "FIBRES", "VARIANCE", "WAVELA", "MASK"
#: HDUs with a meaning in a RED file (MASK is also kept as an image variable)
_ROLE_HDUS = (_FIBRES, _VARIANCE, _WAVELA, _MASK)
_FIBRES_NAMES = {"TYPE": "fiber_type", "NAME": "fiber_name", "RA": "ra", "DEC": "dec"}
_ANGLES = ("RA", "DEC")
_RADIANS = {"rad", "radian", "radians"}
_DEGREES = {"deg", "degree", "degrees"}
#: extra image HDUs whose 1-D axis is ambiguous when fibers == pixels
_SPECTRAL_HDUS, _FIBER_HDUS = {"SKY"}, {"THPUT"}
_MANAGED = {"units", "long_name", HEADER_ATTR, HDU_ATTR, COLUMN_ATTR, RAW_ATTR}
_MANAGED |= set(maskbits.flag_attrs())
_MANAGED_DS = {HEADER_ATTR, ORDER_ATTR, HISTORY_ATTR}
_DEFAULT_FLUX_UNITS = "count"

#: assign-file ``target_class`` -> 2dfdr fiber type
TARGET_CLASS_TYPES: dict[int, str] = {8: "C", 9: "S", 1: "P", 2: "P", 0: "U"}


# =============================================================================
# header helpers (public)
# =============================================================================


def primary_header(ds: xr.Dataset) -> fits.Header:
    """The primary FITS header kept in ``ds.attrs["fits_header"]``.

    Parameters
    ----------
    ds : xarray.Dataset
        A Dataset from :func:`open_red` (or any Dataset; without the attribute
        the header is empty).

    Returns
    -------
    astropy.io.fits.Header
        A new header; changing it does not change ``ds``.

    Examples
    --------
    >>> ds = kx.open_red("run1_red.fits")                  # doctest: +SKIP
    >>> primary_header(ds)["SPECFWHM"]                     # doctest: +SKIP
    2.1
    """
    return header_from_string(ds.attrs.get(HEADER_ATTR, ""))


def _card_keyword(key: str) -> str:
    key = key.strip()
    if key.upper().startswith("HIERARCH ") or (len(key) <= 8 and " " not in key):
        return key
    return f"HIERARCH {key}"


def with_header_cards(ds: xr.Dataset, cards: Mapping | None = None, /, **kwcards) -> xr.Dataset:
    """Return a copy of ``ds`` whose primary header has the given cards set.

    Parameters
    ----------
    ds : xarray.Dataset
        The exposure.
    cards : mapping, optional
        Keyword -> value or (value, comment); for keywords that are not Python
        identifiers (``"DATE-OBS"``, ``"HIERARCH KSPECXR NSTAR"``).
    **kwcards
        Keyword -> value or (value, comment).  Keywords longer than 8
        characters become ``HIERARCH`` cards.

    Returns
    -------
    xarray.Dataset
        A new Dataset (``ds`` is not changed) with ``attrs["fits_header"]`` updated.

    Raises
    ------
    TypeError
        If a value is not a str, bool, int or float (or a (value, comment) pair).

    Examples
    --------
    >>> out = with_header_cards(ds, FLUXCAL=(True, "flux calibrated"), FCALNSTR=3)  # doctest: +SKIP
    """
    header = primary_header(ds)
    for key, value in {**(cards or {}), **kwcards}.items():
        comment = None
        if isinstance(value, tuple):
            if len(value) != 2:
                raise TypeError(
                    f"card {key}: give a value or a (value, comment) pair, not {value!r}"
                )
            value, comment = value
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (str, bool, int, float)) and value is not None:
            raise TypeError(
                f"card {key}: a FITS card holds a str, bool, int or float, not {type(value).__name__}"
            )
        keyword = _card_keyword(key)
        header[keyword] = value if comment is None else (value, comment)
    return ds.assign_attrs({HEADER_ATTR: header_to_string(header)})


def add_history(ds: xr.Dataset, line: str, /, *, timestamp: bool = True) -> xr.Dataset:
    """Return a copy of ``ds`` with a line appended to ``attrs["history"]``.

    The history is newline-separated, one line per processing step (as xclim
    keeps it); :func:`write_red` writes each line as a FITS ``HISTORY`` card.

    Parameters
    ----------
    ds : xarray.Dataset
        The exposure.
    line : str
        What was done, e.g. ``"apply_calibration: 3 standards, rms 1.2%"``.
        Several lines may be given separated by newlines.
    timestamp : bool
        Prefix the line with the UTC time, ``[YYYY-mm-dd HH:MM:SS]``.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    TypeError
        If ``line`` is not a str.
    ValueError
        If ``line`` has characters a FITS card cannot hold (non-ASCII).

    Examples
    --------
    >>> out = add_history(ds, "fit_standards: metric=chi2")   # doctest: +SKIP
    >>> out.attrs["history"]                                   # doctest: +SKIP
    '[2026-05-09 07:35:25] fit_standards: metric=chi2'
    """
    if not isinstance(line, str):
        raise TypeError(f"history line must be a str, not {type(line).__name__}")
    if not line.isascii() or not line.replace("\n", "").isprintable():
        raise ValueError(f"history line {line!r} has characters a FITS card cannot hold")
    lines = [text for text in line.splitlines() if text.strip()]
    if timestamp:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"[{now}] {text}" for text in lines]
    old = ds.attrs.get(HISTORY_ATTR, "")
    return ds.assign_attrs({HISTORY_ATTR: "\n".join(([old] if old else []) + lines)})


# =============================================================================
# small shared helpers
# =============================================================================


def _input_file(path, error, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or os.PathLike, not {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} does not exist; check the path")
    if not path.is_file():
        raise error(f"{what} {path} is not a file; give the path of a FITS file")
    if not os.access(path, os.R_OK):
        raise error(f"cannot read {what} {path}: permission denied; check its permissions")
    return path


class _Names:
    """Hands out unique, netCDF-safe variable names."""

    def __init__(self, taken=()):
        self.taken = set(taken)

    def claim(self, name: str) -> str:
        base = re.sub(r"[^\w.+\-@]", "_", str(name).strip()) or "unnamed"
        if not base[0].isalnum():
            base = f"X{base}"
        candidate, n = base, 1
        while candidate in self.taken:
            n += 1
            candidate = f"{base}_{n}"
        self.taken.add(candidate)
        return candidate


def _native(array: np.ndarray) -> np.ndarray:
    """A native-byte-order copy (FITS data are big-endian)."""
    array = np.asarray(array)
    if array.dtype.byteorder not in "=|":
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _tight_strings(values: np.ndarray) -> np.ndarray:
    """Strings in the narrowest ``<U`` dtype (as netCDF gives them back)."""
    width = int(np.char.str_len(values).max()) if values.size else 1
    return values.astype(f"<U{max(width, 1)}")


def _bits_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise bitwise equality (NaN payloads and signed zeros included)."""
    a = np.asarray(a)
    b = np.asarray(b, dtype=a.dtype)
    if a.dtype.kind == "f":
        return a.view(f"u{a.dtype.itemsize}") == b.view(f"u{b.dtype.itemsize}")
    return a == b


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two arrays have the same shape, dtype and bits."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.all(_bits_equal(a, b)))


def _squared_units(units: str) -> str:
    return f"{units}2" if re.fullmatch(r"[A-Za-z]+", units) else f"({units})2"


def _same_unit(a: str, b: str) -> bool:
    """True if two unit strings mean the same (``'degrees'`` and ``'deg'``)."""
    a, b = a.strip(), b.strip()
    if a == b:
        return True
    for names in (_DEGREES, _RADIANS):
        if a.lower() in names and b.lower() in names:
            return True
    try:
        return u.Unit(a, parse_strict="silent") == u.Unit(b, parse_strict="silent")
    except (ValueError, TypeError):
        return False


def _default_column_units(values: np.ndarray) -> str:
    return "1" if values.dtype.kind in "iufc" else ""


def _extname(header: fits.Header) -> str:
    return str(header.get("EXTNAME", "")).strip()


def _is_table(header: fits.Header) -> bool:
    return str(header.get("XTENSION", "")).strip().upper() in {"BINTABLE", "TABLE"}


# =============================================================================
# reading
# =============================================================================


class _LazyImage:
    """Array-like over one FITS image HDU, read slice by slice (for dask).

    Picklable (a path and an HDU index), so dask.distributed workers read
    their own fibers straight from the file.
    """

    def __init__(self, path: Path, index: int, shape, dtype, transpose: bool):
        self.path, self.index, self.transpose = str(path), index, transpose
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        try:
            with fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
                section = hdul[self.index].section
                data = np.asarray(section[key[::-1] if self.transpose else key])
        except (OSError, IndexError, ValueError) as err:
            raise RedFileError(
                f"RED file {self.path}, HDU #{self.index}: cannot read it any more ({err}); "
                "a lazily opened file must stay in place until computed"
            ) from err
        return _native(data.T if self.transpose else data).astype(self.dtype, copy=False)


def _angle_to_degrees(values: np.ndarray, unit: str | None, where: str):
    """Degrees from a FIBRES RA/DEC column and the name of the stored unit.

    2dfdr writes radians without always saying so: a column without TUNIT is
    taken as radians unless some value is beyond 2π (then degrees).
    """
    name = (unit or "").strip().lower()
    if not name:
        finite = values[np.isfinite(values)]
        name = "deg" if finite.size and np.abs(finite).max() > 2 * np.pi + 1e-9 else "rad"
    if name in _DEGREES:
        return values, None
    if name in _RADIANS:
        return np.degrees(values), "rad"
    try:
        factor = u.Unit(unit).to(u.deg)
    except (ValueError, u.UnitsError):
        raise RedFileError(
            f"{where} has TUNIT {unit!r}, which is not an angle; "
            "set it to 'rad' or 'deg' (2dfdr writes radians)"
        ) from None
    return values * factor, unit


def _angle_from_degrees(values: np.ndarray, unit: str) -> np.ndarray:
    if unit.strip().lower() in _RADIANS:
        return np.radians(values)
    return values / u.Unit(unit).to(u.deg)


def _wcs_wavelength(header: fits.Header, npix: int, axis: int) -> np.ndarray | None:
    """Wavelengths (Å) of a linear (or -LOG) WCS along FITS axis ``axis``, or None."""
    crval = header.get(f"CRVAL{axis}")
    cdelt = header.get(f"CDELT{axis}", header.get(f"CD{axis}_{axis}"))
    if crval is None or cdelt is None:
        return None
    offset = (np.arange(1, npix + 1, dtype=np.float64) - header.get(f"CRPIX{axis}", 1.0)) * cdelt
    if str(header.get(f"CTYPE{axis}", "")).strip().upper().endswith("-LOG"):
        wave = crval * np.exp(offset / crval)
    else:
        wave = crval + offset
    unit = str(header.get(f"CUNIT{axis}", "")).strip()
    if unit and unit.lower() not in {"angstrom", "angstroms", "a"}:
        wave = wave * u.Unit(unit).to(u.AA)
    return wave


class _Reader:
    """Builds the Dataset of one open RED file (one instance per call)."""

    def __init__(self, hdul: fits.HDUList, path: Path, fiber_chunks, require_common_grid: bool):
        self.hdul, self.path, self.fiber_chunks = hdul, path, fiber_chunks
        # copies taken before any data is read: astropy rewrites the header of a
        # scaled image (BITPIX, BSCALE, BZERO) once its data are accessed
        self.headers = [hdu.header.copy() for hdu in hdul]
        self.require_common_grid = require_common_grid
        self.names = _Names({"flux", "variance", "mask", "fiber", "wavelength", "pixel"})
        self.coords: dict[str, xr.Variable] = {}
        self.data_vars: dict[str, xr.Variable] = {}
        self.extra_masks: list = []

    # -- errors and raw access ---------------------------------------------------

    def error(self, what: str, hdu: str | None = None) -> RedFileError:
        where = f"RED file {self.path}" + (f", HDU {hdu}" if hdu else "")
        return RedFileError(f"{where}: {what}")

    def image(self, index: int, dims, *, transpose=False, name="", lazy=True):
        """Image data oriented as ``dims``: NumPy, or dask when chunking over fiber."""
        hdu = self.hdul[index]
        shape = tuple(reversed(hdu.shape)) if transpose else tuple(hdu.shape)
        lazy = lazy and self.fiber_chunks is not None and "fiber" in dims
        if lazy and shape and 0 not in shape:
            probe = np.asarray(hdu.section[(slice(0, 1),) * len(shape)])
            lazy = _LazyImage(self.path, index, shape, _native(probe).dtype, transpose)
            chunks = tuple(self.fiber_chunks if d == "fiber" else -1 for d in dims)
            stamp = os.stat(self.path)
            token = da.core.tokenize(str(self.path), stamp.st_mtime_ns, stamp.st_size, index)
            meta = np.empty((0,) * len(shape), lazy.dtype)
            return da.from_array(lazy, chunks=chunks, name=f"open_red-{name}-{token}", meta=meta)
        try:
            data = hdu.data
        except (OSError, ValueError, TypeError) as err:
            raise self.error(
                f"cannot read the data ({err}); the file may be truncated", name
            ) from err
        if data is None:  # a header-only HDU
            return np.zeros((0,), np.float32)
        data = _native(data)
        return data.T if transpose else data

    def columns(self, index: int, key: str):
        """(TTYPE, values, TUNIT) of every column of a binary table."""
        hdu = self.hdul[index]
        if str(self.headers[index].get("XTENSION", "")).strip().upper() != "BINTABLE":
            raise self.error("ASCII tables are not supported; convert it to a binary table", key)
        out = []
        for number, column in enumerate(hdu.columns):
            if re.match(r"^\s*\d*[PQ]", str(column.format)):
                raise self.error(
                    f"column {column.name} holds variable-length arrays, which kspec_xr "
                    "cannot carry; remove the column or store fixed-length vectors",
                    key,
                )
            try:
                values = hdu.data.field(number) if hdu.data is not None else None
            except (OSError, ValueError, TypeError) as err:
                raise self.error(f"cannot read column {column.name} ({err})", key) from err
            if values is None:
                values = np.zeros((0,), np.float64)
            elif values.dtype.kind in "US":
                values = _tight_strings(np.char.rstrip(np.asarray(values).astype(str)))
            else:
                values = _native(np.array(values))
            out.append((column.name, values, column.unit))
        return out

    # -- the parts of the file ------------------------------------------------------

    def classify(self):
        """Split the extensions into 2dfdr roles, extra HDUs and products."""
        roles: dict[str, int] = {}
        extras, products, order = [], [], []
        keys = _Names()
        for index in range(1, len(self.hdul)):
            header = self.headers[index]
            if _VAR_CARD in header or _DIM_CARD in header:
                products.append(index)
                continue
            if header.get("ZIMAGE") is True:
                raise self.error(
                    "tile-compressed images are not supported; decompress the file (funpack)",
                    _extname(header) or f"#{index}",
                )
            extname = _extname(header).upper()
            if extname in _ROLE_HDUS and extname not in roles:
                roles[extname] = index
                key = keys.claim(extname)  # the first of each role keeps its plain name
            else:
                key = keys.claim(_extname(header) or f"HDU{index}")
            order.append(key)
            if extname not in roles or roles[extname] != index or extname == _MASK:
                extras.append((index, key))
        return roles, extras, products, order

    def primary(self):
        hdu = self.hdul[0]
        if self.headers[0].get("NAXIS") != 2 or 0 in hdu.shape:
            raise self.error(
                f"the primary image must be 2-D (fibers x pixels), not shape {hdu.shape}; "
                "is this a 2dfdr RED file?",
                "PRIMARY",
            )
        self.header = self.headers[0].copy()
        self.transpose = self.header.get("DISPAXIS", 1) == 2
        disk = tuple(hdu.shape)
        self.nfib, self.npix = (disk[1], disk[0]) if self.transpose else disk
        self.disk_shape = disk

    def fibres(self, index: int | None):
        if index is None:
            raise self.error(
                "no FIBRES HDU (the table of fiber types, names and positions); "
                "2dfdr writes one in every reduced frame — re-run the reduction or add the table",
            )
        header = self.headers[index]
        columns = self.columns(index, _FIBRES)
        if not any(name.strip().upper() == "TYPE" for name, _, _ in columns):
            raise self.error(
                "no TYPE column (the one-character fiber types P, S, C, U, N, F); "
                f"columns are {[name for name, _, _ in columns]}; add a TYPE column",
                _FIBRES,
            )
        nrows = header.get("NAXIS2", 0)
        if nrows != self.nfib:
            raise self.error(
                f"{nrows} rows but the primary image has {self.nfib} fibers; "
                "the FIBRES table must have one row per fiber (is DISPAXIS right?)",
                _FIBRES,
            )
        self.coords["fiber"] = xr.Variable(
            "fiber",
            np.arange(1, self.nfib + 1, dtype=np.int32),
            {
                "units": "1",
                "long_name": "2dfdr fiber number",
                HDU_ATTR: _FIBRES,
                HEADER_ATTR: header_to_string(header),
            },
        )
        for ttype, values, unit in columns:
            upper = ttype.strip().upper()
            name = self.names.claim(_FIBRES_NAMES.get(upper, ttype))
            attrs = {"units": unit or _default_column_units(values), COLUMN_ATTR: ttype}
            if upper in _ANGLES and values.dtype.kind == "f":
                degrees, raw_unit = _angle_to_degrees(
                    values, unit, f"RED file {self.path}, HDU FIBRES, column {ttype}"
                )
                if raw_unit is not None:
                    # Keep the stored values: rad -> deg -> rad is not always bit-exact.
                    raw = self.names.claim(f"{name}_fits")
                    raw_attrs = {
                        "units": raw_unit,
                        "long_name": f"{ttype} as stored in FIBRES",
                        RAW_ATTR: name,
                    }
                    self.coords[raw] = xr.Variable(
                        self.vector_dims("fiber", name, values), values, raw_attrs
                    )
                values, attrs["units"] = degrees, "deg"
            self.coords[name] = xr.Variable(self.vector_dims("fiber", name, values), values, attrs)

    @staticmethod
    def vector_dims(row_dim: str, name: str, values: np.ndarray) -> tuple[str, ...]:
        return (row_dim,) + tuple(f"{name}_dim{i}" for i in range(1, values.ndim))

    def wavelength(self, index: int | None):
        if index is not None:
            header = self.headers[index]
            shape = tuple(self.hdul[index].shape)
            if shape != self.disk_shape:
                raise self.error(
                    f"shape {shape} differs from the primary image {self.disk_shape}; "
                    "WAVELA must give the wavelength of every pixel of every fiber",
                    _WAVELA,
                )
            wave = self.image(index, ("fiber", "wavelength"), transpose=self.transpose, lazy=False)
            attrs = {"units": "Angstrom", "long_name": "wavelength", HDU_ATTR: _WAVELA}
            attrs[HEADER_ATTR] = header_to_string(header)
            rows_agree = wave.shape[0] > 0 and _same_bits(
                wave, np.broadcast_to(wave[0], wave.shape)
            )
            if rows_agree:
                self.spectral = "wavelength"
                self.coords["wavelength"] = xr.Variable("wavelength", wave[0].copy(), attrs)
                return
            if self.require_common_grid:
                first = int(np.flatnonzero(~np.all(_bits_equal(wave, wave[0]), axis=1))[0]) + 1
                raise self.error(
                    f"the fibers have different wavelength grids (fiber {first} differs from "
                    "fiber 1) and a common grid was required; resampling is needed: "
                    "scrunch the frame in 2dfdr, or open it without require_common_grid=True "
                    "(a 'pixel' dimension with a 2-D wavelength coordinate) and resample onto a "
                    "common grid",
                    _WAVELA,
                )
            self.spectral = "pixel"
            self.coords["wavelength"] = xr.Variable(("fiber", "pixel"), wave, attrs)
            return
        axis = 2 if self.transpose else 1
        wave = _wcs_wavelength(self.header, self.npix, axis)
        if wave is None:
            raise self.error(
                f"no wavelength information: no WAVELA HDU and no CRVAL{axis}/CDELT{axis} "
                "(linear WCS along the pixel axis) in the primary header; add a WAVELA image "
                "or the WCS cards",
                "WAVELA",
            )
        self.spectral = "wavelength"
        self.coords["wavelength"] = xr.Variable(
            "wavelength", wave, {"units": "Angstrom", "long_name": "wavelength"}
        )

    def spectra(self, variance_index: int | None):
        dims = ("fiber", self.spectral)
        units = str(self.header.get("BUNIT", _DEFAULT_FLUX_UNITS)).strip() or _DEFAULT_FLUX_UNITS
        flux = self.image(0, dims, transpose=self.transpose, name="flux")
        self.data_vars["flux"] = xr.Variable(dims, flux, {"units": units, "long_name": "flux"})
        if variance_index is None:
            raise self.error(
                "no VARIANCE HDU; kspec_xr needs the variance 2dfdr writes with every "
                "reduced frame — re-run the reduction with variance output",
            )
        hdu = self.hdul[variance_index]
        if tuple(hdu.shape) != self.disk_shape:
            raise self.error(
                f"shape {tuple(hdu.shape)} differs from the primary image {self.disk_shape}; "
                "the variance must have one value per flux pixel",
                _VARIANCE,
            )
        variance = self.image(variance_index, dims, transpose=self.transpose, name="variance")
        header = self.headers[variance_index]
        var_units = str(header.get("BUNIT", "")).strip() or _squared_units(units)
        self.data_vars["variance"] = xr.Variable(
            dims,
            variance,
            {
                "units": var_units,
                "long_name": "variance of flux",
                HDU_ATTR: _VARIANCE,
                HEADER_ATTR: header_to_string(header),
            },
        )

    def extra_image(self, index: int, key: str):
        hdu = self.hdul[index]
        dims = self.image_dims(key, tuple(hdu.shape))
        name = self.names.claim(key)
        data = self.image(index, dims, name=name)
        header = self.headers[index]
        attrs = {"units": str(header.get("BUNIT", "1")).strip(), HDU_ATTR: key}
        attrs[HEADER_ATTR] = header_to_string(header)
        self.data_vars[name] = xr.Variable(dims, data, attrs)
        if key == _MASK:
            if np.dtype(data.dtype).kind not in "iub":
                raise self.error(f"must hold integers, not {data.dtype}", _MASK)
            if dims != ("fiber", self.spectral) and dims != (self.spectral, "fiber"):
                raise self.error(
                    f"shape {tuple(hdu.shape)} differs from the primary image {self.disk_shape}",
                    _MASK,
                )
            self.extra_masks.append(xr.Variable(dims, data))

    def image_dims(self, key: str, shape: tuple) -> tuple[str, ...]:
        if shape == self.disk_shape:
            return (self.spectral, "fiber") if self.transpose else ("fiber", self.spectral)
        if not shape:  # a header-only HDU
            return (f"{key}_dim0",)
        sizes = {"fiber": self.nfib, self.spectral: self.npix}
        dims: list[str] = []
        for axis, n in enumerate(shape):
            options = [d for d, size in sizes.items() if size == n and d not in dims]
            if len(options) > 1:
                hint = self.spectral if key.upper() in _SPECTRAL_HDUS else "fiber"
                options = [hint] if key.upper() in _SPECTRAL_HDUS | _FIBER_HDUS else []
            dims.append(options[0] if len(options) == 1 else f"{key}_dim{axis}")
        return tuple(dims)

    def extra_table(self, index: int, key: str):
        header = self.headers[index]
        row = self.names.claim(f"{key}_row")
        nrows = header.get("NAXIS2", 0)
        attrs = {"units": "1", HDU_ATTR: key, HEADER_ATTR: header_to_string(header)}
        self.coords[row] = xr.Variable(row, np.arange(nrows, dtype=np.int64), attrs)
        for ttype, values, unit in self.columns(index, key):
            name = self.names.claim(f"{key}_{ttype}")
            attrs = {"units": unit or _default_column_units(values), COLUMN_ATTR: ttype}
            self.data_vars[name] = xr.Variable(self.vector_dims(row, name, values), values, attrs)

    def product(self, index: int):
        header = self.headers[index]
        key = _extname(header) or f"#{index}"
        try:
            if _VAR_CARD in header:
                self.product_image(index, header)
            else:
                self.product_table(index, key)
        except (ValueError, KeyError, TypeError) as err:
            if isinstance(err, RedFileError):
                raise
            raise self.error(f"cannot decode the kspec_xr product ({err})", key) from err

    def product_image(self, index: int, header: fits.Header):
        meta = decode_attrs(header[_META_CARD])
        dims = tuple(meta["dims"])
        data = self.image(index, dims, name=header[_VAR_CARD])
        if np.dtype(data.dtype) != np.dtype(meta["dtype"]):
            data = data.astype(meta["dtype"])
        attrs = meta["attrs"]
        if "BUNIT" in header:
            attrs = {"units": header["BUNIT"], **attrs}
        name = header[_VAR_CARD]
        if name == "mask" and not meta["coord"]:
            self.extra_masks.append(xr.Variable(dims, data))
            return
        (self.coords if meta["coord"] else self.data_vars)[name] = xr.Variable(dims, data, attrs)

    def product_table(self, index: int, key: str):
        header = self.headers[index]
        row_dim = header[_DIM_CARD]
        nrows = header.get("NAXIS2", 0)
        for number, (_, values, unit) in enumerate(self.columns(index, key), start=1):
            meta = decode_attrs(header[f"{_COL_CARD}{number}"])
            dims = tuple(meta["dims"])
            stored_dims = ([row_dim] if row_dim else []) + [d for d in dims if d != row_dim]
            if values.ndim != len(stored_dims) + (0 if row_dim else 1):
                tdim = header.get(f"TDIM{number}")
                cell = [int(n) for n in reversed(tdim.strip("() ").split(","))] if tdim else [-1]
                values = values.reshape((max(nrows, 1), *cell))
            if not row_dim:
                values = values[0]
            if values.dtype != np.dtype(meta["dtype"]):
                values = values.astype(meta["dtype"])
            attrs = meta["attrs"] if unit is None else {"units": unit, **meta["attrs"]}
            variable = xr.Variable(tuple(stored_dims), values, attrs).transpose(*dims)
            (self.coords if meta["coord"] else self.data_vars)[meta["name"]] = variable

    # -- assembly -------------------------------------------------------------------------

    def dataset(self) -> xr.Dataset:
        self.primary()
        roles, extras, products, order = self.classify()
        self.wavelength(roles.get(_WAVELA))
        self.spectra(roles.get(_VARIANCE))
        self.fibres(roles.get(_FIBRES))
        self.data_vars["mask"] = None  # keep flux, variance, mask first
        for index, key in extras:
            if _is_table(self.headers[index]):
                self.extra_table(index, key)
            else:
                self.extra_image(index, key)
        for index in products:
            self.product(index)
        self.data_vars["mask"] = self.mask()
        header = self.header
        extra_attrs = decode_attrs(header[_ATTRS_CARD]) if _ATTRS_CARD in header else {}
        if _ATTRS_CARD in header:
            del header[_ATTRS_CARD]
        attrs = {HEADER_ATTR: header_to_string(header), ORDER_ATTR: "\n".join(order)}
        ds = xr.Dataset(
            self.data_vars, coords=self.coords, attrs={**attrs, **extra_attrs.pop("", {})}
        )
        for name, more in extra_attrs.items():
            if name in ds.variables:
                ds.variables[name].attrs.update(more)
        if self.fiber_chunks is not None:
            ds = _chunk_fiber_vars(ds, self.fiber_chunks)
        return ds

    def mask(self) -> xr.Variable:
        flux, variance = self.data_vars["flux"], self.data_vars["variance"]
        mask = maskbits.data_mask(flux.data, variance.data)
        for extra in self.extra_masks:
            mask = mask | extra.transpose(*flux.dims).data.astype(maskbits.MASK_DTYPE)
        return xr.Variable(flux.dims, mask, maskbits.flag_attrs())


def _chunk_fiber_vars(ds: xr.Dataset, fiber_chunks) -> xr.Dataset:
    """Dask-back every data variable along ``fiber`` that is still in memory."""
    updates = {
        name: var.chunk({d: (fiber_chunks if d == "fiber" else -1) for d in var.dims})
        for name, var in ds.data_vars.items()
        if "fiber" in var.dims and not isinstance(var.data, da.Array)
    }
    return ds.assign(updates) if updates else ds


def _fiber_chunks(chunks):
    """Validate ``chunks``: chunk over fiber only, the spectral axis in one piece."""
    if chunks is None:
        return None
    if isinstance(chunks, bool):
        raise TypeError("chunks must be None, an int, 'auto' or a mapping like {'fiber': 50}")
    if isinstance(chunks, Mapping):
        extra = set(chunks) - {"fiber", "wavelength", "pixel"}
        if extra:
            raise ValueError(f"chunks over {sorted(extra)}: RED data are chunked over 'fiber' only")
        for dim in ("wavelength", "pixel"):
            if chunks.get(dim, -1) not in (-1, None):
                raise ValueError(
                    f"chunks={{{dim!r}: {chunks[dim]!r}}}: kspec_xr keeps the spectral axis in one "
                    "chunk; chunk over 'fiber' only, e.g. chunks={'fiber': 50}"
                )
        chunks = chunks.get("fiber", -1)
    if chunks == "auto" or chunks == -1:
        return chunks
    if isinstance(chunks, (int, np.integer)) and chunks > 0:
        return int(chunks)
    raise ValueError(f"chunks={chunks!r}: give a positive number of fibers per chunk, -1 or 'auto'")


def open_red(path, *, chunks=None, require_common_grid: bool = False) -> xr.Dataset:
    """Open a 2dfdr / kspecdr RED file as an ``xarray.Dataset``.

    Parameters
    ----------
    path : str or os.PathLike
        The RED file.
    chunks : int, 'auto', -1 or mapping, optional
        Fibers per dask chunk (``{"fiber": n}`` or ``n``).  The spectral axis
        is always one chunk.  None (default) reads everything into memory;
        otherwise flux, variance and the other per-fiber images are read from
        the file chunk by chunk when computed.
    require_common_grid : bool
        Raise if the fibers' WAVELA rows differ instead of returning the
        ``(fiber, pixel)`` layout.

    Returns
    -------
    xarray.Dataset
        ``flux``, ``variance`` (on-disk dtype) and ``mask`` (int32 bitmask,
        see :mod:`kspec_xr.maskbits`) on ``(fiber, wavelength)``; the fiber
        coordinates of the FIBRES table (``fiber_type``, ``fiber_name``,
        ``ra``/``dec`` in degrees, every other column under its own name);
        ``wavelength`` in Å, 1-D when every fiber shares one grid, else a
        ``pixel`` dimension with a 2-D ``wavelength(fiber, pixel)``; every
        other HDU as variables; the headers as string attributes.  See the
        module docstring for the attribute names.

    Raises
    ------
    RedFileError
        If the file is missing or unreadable, or not laid out as a RED file
        (no FIBRES, VARIANCE of another shape, FIBRES rows ≠ fibers, no TYPE
        column, no wavelength information, differing grids when a common one
        is required).  The message names the file and the HDU or column.
    TypeError, ValueError
        For a ``path`` or ``chunks`` of the wrong type or value.

    Notes
    -----
    2dfdr stores RA/DEC in radians; converting to degrees and back is not
    always bit-exact in float64, so the stored columns are kept as
    ``ra_fits``/``dec_fits`` and written back wherever ``ra``/``dec`` still
    equal their conversion (only changed values are converted back).

    Examples
    --------
    >>> ds = open_red("run1_red.fits")                          # doctest: +SKIP
    >>> lazy = open_red("run1_red.fits", chunks={"fiber": 50})  # doctest: +SKIP
    >>> ds.flux.sel(fiber=ds.fiber_type == "C")                 # doctest: +SKIP
    """
    source = _input_file(path, RedFileError, "RED file")
    fiber_chunks = _fiber_chunks(chunks)
    with _open_fits(source) as hdul:
        ds = _Reader(hdul, source, fiber_chunks, require_common_grid).dataset()
        ds.encoding["source"] = str(source)  # as xr.open_dataset does; used in messages
        return ds


def _data_bytes(header: fits.Header) -> int:
    """Size of an HDU's data (without padding) from its header."""
    naxis = [header.get(f"NAXIS{i}", 0) for i in range(1, header.get("NAXIS", 0) + 1)]
    elements = int(np.prod(naxis, dtype=np.int64)) if naxis else 0
    gcount, pcount = header.get("GCOUNT", 1), header.get("PCOUNT", 0)
    return abs(header.get("BITPIX", 8)) // 8 * gcount * (pcount + elements)


def _open_fits(source: Path) -> fits.HDUList:
    """``fits.open`` with every header read; truncated or corrupt files raise."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(source, memmap=False, lazy_load_hdus=False)
    except (OSError, ValueError, TypeError, IndexError) as err:
        raise RedFileError(
            f"cannot read RED file {source} as FITS ({err}); check that it is a complete FITS file"
        ) from err
    problems = [
        " ".join(str(w.message).split())
        for w in caught
        if "Error validating header" in str(w.message)
    ]
    size = source.stat().st_size
    for index, hdu in enumerate(hdul):
        end = hdul.fileinfo(index)["datLoc"] + _data_bytes(hdu.header)
        if end > size:
            problems.append(f"HDU #{index} needs {end} bytes, the file has {size}")
    if problems:
        hdul.close()
        raise RedFileError(
            f"RED file {source} is truncated or corrupt ({'; '.join(problems)}); "
            "copy it again from the reduction"
        )
    for w in caught:  # not ours to judge: pass astropy's other warnings on
        if "truncated" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return hdul


# =============================================================================
# writing
# =============================================================================


def _values(var: xr.Variable) -> np.ndarray:
    values = np.asarray(var.values)
    if values.dtype.kind == "O":  # strings after some round trips
        values = values.astype(str)
    return values


def _header_of(var: xr.Variable) -> fits.Header:
    return header_from_string(var.attrs.get(HEADER_ATTR, ""))


def _set_bunit(header: fits.Header, units, default: str) -> None:
    """Write ``units`` as BUNIT when it differs from what the reader would assume."""
    if not isinstance(units, str):
        return
    current = header.get("BUNIT")
    if current is not None:
        if str(current).strip() != units:
            header["BUNIT"] = units
    elif units != default:
        header["BUNIT"] = units


_ROLE_VARS = {_VARIANCE: "variance", _WAVELA: "wavelength", _FIBRES: "fiber"}
_FITS_ATTRS = (HEADER_ATTR, HDU_ATTR, COLUMN_ATTR, RAW_ATTR)


def _find_carriers(ds: xr.Dataset) -> dict[str, str]:
    """HDU key -> the variable carrying that HDU read from the file.

    ``fits_hdu``/``fits_header`` can travel to derived variables with
    arithmetic, so only a variable that can hold the HDU counts: the role
    variable for VARIANCE/WAVELA/FIBRES, an index coordinate for a table, a
    data variable for an image (the one named like the key if several).
    """
    carriers: dict[str, str] = {}
    for name, var in ds.variables.items():
        key = var.attrs.get(HDU_ATTR)
        if not isinstance(key, str) or not isinstance(var.attrs.get(HEADER_ATTR), str):
            continue
        if key in _ROLE_VARS:
            fits_ok = name == _ROLE_VARS[key]
        elif _is_table(_header_of(var)):
            fits_ok = var.dims == (name,)
        else:
            fits_ok = name in ds.data_vars
        if fits_ok and (key not in carriers or name == key):
            carriers[key] = name
    return carriers


def _product_attrs(var: xr.Variable) -> tuple[dict, str | None]:
    """A product's attrs without stale FITS bookkeeping, and its units."""
    attrs = {k: v for k, v in var.attrs.items() if k not in _FITS_ATTRS}
    units = attrs.get("units")
    if not isinstance(units, str) or not units.strip() or units != units.strip():
        return attrs, None  # kept in the JSON: a FITS string loses its blanks
    del attrs["units"]
    return attrs, units


class _Writer:
    """Turns one (computed) Dataset into a list of encoded HDUs."""

    def __init__(self, ds: xr.Dataset):
        for name in ("flux", "variance"):
            if name not in ds.data_vars:
                raise ValueError(
                    f"the Dataset has no {name!r} variable; write_red needs flux and variance"
                )
        self.ds = ds
        self.spectral = next(d for d in ds.flux.dims if d != "fiber")
        self.header = primary_header(ds)
        self.transpose = self.header.get("DISPAXIS", 1) == 2
        self.done: set[str] = set()  # variables written so far
        self.file_vars: set[str] = set()  # ... as part of an HDU read from the file
        self.extnames: set[str] = set()
        self.carriers = _find_carriers(ds)

    def oriented(self, var: xr.Variable) -> np.ndarray:
        """A (fiber, spectral) variable in on-disk axis order."""
        values = _values(var.transpose("fiber", self.spectral))
        return values.T if self.transpose else values

    def finish(self, stored: fits.Header, generated, payload, renumber=None) -> EncodedHDU:
        header = merge_header(stored, generated, renumber)
        if "EXTNAME" in header:
            self.extnames.add(str(header["EXTNAME"]).strip().upper())
        hdu = EncodedHDU(header, payload)
        update_checksums(hdu)
        return hdu

    # -- the HDUs ----------------------------------------------------------------------

    def primary(self) -> EncodedHDU:
        """The primary HDU; built last, when the file variables are known."""
        ds, header = self.ds, self.header
        _set_bunit(header, ds.flux.attrs.get("units"), _DEFAULT_FLUX_UNITS)
        lines = [line for line in ds.attrs.get(HISTORY_ATTR, "").splitlines() if line.strip()]
        for line in lines:
            for part in textwrap.wrap(line, 72, break_on_hyphens=False) or [line]:
                header.add_history(part)
        if lines:
            for keyword, package in _VERSION_CARDS.items():
                header[keyword] = __version__ if package == "kspec_xr" else version(package)
        extra = self.extra_attrs()
        if extra:
            header[_ATTRS_CARD] = encode_attrs(extra, "attrs")
        generated, payload = encode_image(
            self.oriented(ds.flux.variable), stored=header, primary=True
        )
        return self.finish(header, generated, payload)

    def extra_attrs(self) -> dict:
        """Attributes the reader would not restore by itself (kept as KXATTRS)."""
        extra = {}
        ds_extra = {k: v for k, v in self.ds.attrs.items() if k not in _MANAGED_DS}
        if ds_extra:
            extra[""] = ds_extra
        for name in (n for n in self.ds.variables if n in self.file_vars):
            more = {k: v for k, v in self.ds[name].attrs.items() if k not in _MANAGED}
            if more:
                extra[name] = more
        return extra

    def written(self, *names: str) -> None:
        """Record variables written as part of a file HDU."""
        self.done.update(names)
        self.file_vars.update(n for n in names if n in self.ds.variables)

    def image(self, name: str, default_units: str) -> EncodedHDU:
        var = self.ds[name].variable
        stored = _header_of(var)
        _set_bunit(stored, var.attrs.get("units"), default_units)
        values = self.oriented(var) if name == "variance" else _values(var)
        generated, payload = encode_image(values, stored=stored)
        self.written(name)
        return self.finish(stored, generated, payload)

    def wavela(self, stored: fits.Header) -> EncodedHDU:
        wave = self.ds["wavelength"].variable
        values = _values(wave)
        if wave.ndim == 1:
            values = np.broadcast_to(values, (self.ds.sizes["fiber"], values.size))
        else:
            values = _values(wave.transpose("fiber", self.spectral))
        values = np.ascontiguousarray(values.T if self.transpose else values)
        generated, payload = encode_image(values, stored=stored)
        self.written("wavelength")
        return self.finish(stored, generated, payload)

    def column_vars(self, row_dim: str, prefix: str) -> tuple[dict, dict]:
        """TTYPE -> variable, and variable -> its stored-values companion, of one table.

        Attributes travel with arithmetic (``keep_attrs``), so a derived
        variable may carry ``fits_column`` too: the variable with the name the
        reader gives the column wins.
        """
        by_column, raw_of = {}, {}
        for name, var in self.ds.variables.items():
            if var.dims[:1] != (row_dim,) or (row_dim == "fiber" and name not in self.ds.coords):
                continue
            raw_target, ttype = var.attrs.get(RAW_ATTR), var.attrs.get(COLUMN_ATTR)
            if isinstance(raw_target, str):
                if raw_target not in raw_of or name == f"{raw_target}_fits":
                    raw_of[raw_target] = name
            elif isinstance(ttype, str):
                expected = (
                    _FIBRES_NAMES.get(ttype.strip().upper(), ttype)
                    if not prefix
                    else f"{prefix}_{ttype}"
                )
                if ttype not in by_column or name == expected:
                    by_column[ttype] = name
        return by_column, raw_of

    def table(self, stored: fits.Header, row_dim: str, prefix="", scratch=False) -> EncodedHDU:
        """A file table: the stored columns still present, in stored order."""
        by_column, raw_of = self.column_vars(row_dim, prefix)
        if scratch:
            wanted = [
                (name, self._scratch_ttype(name), None) for name in self._scratch_columns(row_dim)
            ]
        else:
            wanted = []
            for number in range(1, stored.get("TFIELDS", 0) + 1):
                ttype = stored.get(f"TTYPE{number}", "")
                if ttype in by_column:
                    wanted.append((by_column[ttype], ttype, number))
        columns, renumber = [], {}
        for new_number, (name, ttype, old) in enumerate(wanted, start=1):
            var = self.ds[name].variable
            values = _values(var)
            stored_unit = stored.get(f"TUNIT{old}") if old else None
            if name in raw_of:
                values, unit = self._angle_column(name, raw_of[name], values), stored_unit
            else:
                unit = self._column_unit(var.attrs.get("units"), stored_unit, values)
            columns.append((ttype, values, unit, old))
            if old:
                renumber[old] = new_number
            self.written(name, raw_of.get(name, name))
        generated, payload = encode_table(
            columns, stored=stored, nrows=self.ds.sizes.get(row_dim, 0)
        )
        return self.finish(stored, generated, payload, renumber)

    def _scratch_columns(self, row_dim: str) -> list[str]:
        names = []
        for name, var in self.ds.coords.items():
            if (
                var.dims[:1] == (row_dim,)
                and name not in {"fiber", "wavelength"}
                and RAW_ATTR not in var.attrs
            ):
                names.append(name)
        return names

    def _scratch_ttype(self, name: str) -> str:
        reverse = {v: k for k, v in _FIBRES_NAMES.items()}
        return self.ds[name].attrs.get(COLUMN_ATTR, reverse.get(name, name))

    @staticmethod
    def _column_unit(units, stored_unit, values) -> str | None:
        if not isinstance(units, str):
            return stored_unit
        if stored_unit is not None:
            return stored_unit if _same_unit(stored_unit, units) else units
        return None if units == _default_column_units(values) else units

    def _angle_column(self, name: str, raw_name: str, degrees: np.ndarray) -> np.ndarray:
        """Stored RA/DEC values where unchanged, converted degrees where edited."""
        raw = self.ds[raw_name].variable
        stored = _values(raw)
        values = _angle_from_degrees(degrees, raw.attrs.get("units", "rad"))
        if stored.shape == degrees.shape:
            unchanged = _bits_equal(
                _angle_to_degrees(stored, raw.attrs.get("units", "rad"), name)[0], degrees
            )
            values = np.where(unchanged, stored, values)
        return values.astype(stored.dtype, copy=False)

    def fibres(self) -> EncodedHDU:
        if self.carriers.get(_FIBRES) == "fiber":
            self.written("fiber")
            return self.table(_header_of(self.ds["fiber"].variable), "fiber")
        if "fiber_type" not in self.ds.coords:
            raise ValueError(
                "the Dataset has no 'fiber_type' coordinate; FIBRES needs a TYPE column"
            )
        stored = fits.Header([("EXTNAME", _FIBRES)])
        self.written("fiber")
        return self.table(stored, "fiber", scratch=True)

    # -- products ------------------------------------------------------------------------

    def mask_product(self) -> EncodedHDU | None:
        ds = self.ds
        if "mask" not in ds.data_vars:
            return None
        self.written("mask")
        expected = maskbits.data_mask(_values(ds.flux.variable), _values(ds.variance.variable))
        raw = self.carriers.get(_MASK)
        if raw is not None and raw in ds.data_vars:
            expected = expected | _values(ds[raw].variable.transpose(*ds.flux.dims)).astype(
                maskbits.MASK_DTYPE
            )
        mask = _values(ds.mask.variable.transpose(*ds.flux.dims))
        if np.array_equal(mask, expected):
            return None
        return self.product_image("mask", ds.mask.variable.transpose(*ds.flux.dims), coord=False)

    def _unique_extname(self, base: str) -> str:
        base = base.upper()[:60] or "KXPRODUCT"
        name, n = base, 1
        while name in self.extnames:
            n += 1
            name = f"{base}_{n}"
        return name

    def product_image(self, name: str, var: xr.Variable, coord: bool) -> EncodedHDU:
        values = _values(var)
        stored_values = values
        if values.dtype.kind == "b":
            stored_values = values.astype(np.uint8)
        elif values.dtype == np.int8 or values.dtype == np.float16:
            stored_values = values.astype(np.int16 if values.dtype == np.int8 else np.float32)
        attrs, units = _product_attrs(var)
        meta = {"dims": list(var.dims), "coord": coord, "dtype": values.dtype.str, "attrs": attrs}
        header = fits.Header([("EXTNAME", self._unique_extname(name)), (_VAR_CARD, name)])
        header[_META_CARD] = encode_attrs(meta, name)
        if units is not None:
            header["BUNIT"] = units
        generated, payload = encode_image(stored_values)
        self.done.add(name)
        return self.finish(header, generated, payload)

    def product_table(self, row_dim: str, names: list[str]) -> EncodedHDU:
        header = fits.Header(
            [("EXTNAME", self._unique_extname(row_dim or "KXSCALARS")), (_DIM_CARD, row_dim)]
        )
        columns = []
        for number, name in enumerate(names, start=1):
            var = self.ds[name].variable
            order = ([row_dim] if row_dim else []) + [d for d in var.dims if d != row_dim]
            values = _values(var.transpose(*order))
            if not row_dim:
                values = values[np.newaxis]
            if values.dtype == np.int8 or values.dtype == np.float16:
                values = values.astype(np.int16 if values.dtype == np.int8 else np.float32)
            attrs, units = _product_attrs(var)
            meta = {
                "name": name,
                "dims": list(var.dims),
                "coord": name in self.ds.coords,
                "dtype": var.dtype.str if var.dtype.kind != "O" else values.dtype.str,
                "attrs": attrs,
            }
            header[f"{_COL_CARD}{number}"] = encode_attrs(meta, name)
            columns.append((name, values, units, None))
            self.done.add(name)
        nrows = self.ds.sizes[row_dim] if row_dim else 1
        generated, payload = encode_table(columns, nrows=nrows)
        return self.finish(header, generated, payload)

    def products(self) -> list[EncodedHDU]:
        main = {"fiber", self.spectral}
        images, tables = [], {}
        for name, var in self.ds.variables.items():
            if name in self.done:
                continue
            if var.dims and set(var.dims) <= main and var.dtype.kind in "biuf":
                images.append(name)
                continue
            others = [d for d in var.dims if d not in main]
            row_dim = others[0] if others else (var.dims[0] if var.dims else "")
            tables.setdefault(row_dim, []).append(name)
        hdus = [
            self.product_image(name, self.ds[name].variable, name in self.ds.coords)
            for name in images
        ]
        hdus += [self.product_table(dim, names) for dim, names in tables.items()]
        return hdus

    # -- the file -------------------------------------------------------------------------

    def hdus(self) -> list[EncodedHDU]:
        ds = self.ds
        self.written("flux")
        out = []
        order = [key for key in ds.attrs.get(ORDER_ATTR, "").split("\n") if key]
        order += [key for key in self.carriers if key not in order]
        for key in order:
            name = self.carriers.get(key)
            if name is not None and name not in self.done:
                out.append(self.file_hdu(key, name))
            elif key in _ROLE_VARS and _ROLE_VARS[key] not in self.done:
                # the variable lost its FITS attributes on the way: keep the HDU's place
                out += self.new_role_hdus(key)
            # else the caller dropped it
        for key in _ROLE_VARS:
            out += self.new_role_hdus(key)
        mask = self.mask_product()
        if mask is not None:
            out.append(mask)
        out += self.products()
        return [self.primary(), *out]

    def new_role_hdus(self, key: str) -> list[EncodedHDU]:
        """VARIANCE, FIBRES or WAVELA made from the Dataset alone (if still needed)."""
        ds = self.ds
        if _ROLE_VARS[key] in self.done:
            return []
        if key == _FIBRES:
            return [self.fibres()]
        if key == _VARIANCE:
            stored = fits.Header([("EXTNAME", _VARIANCE)])
            generated, payload = encode_image(self.oriented(ds.variance.variable), stored=stored)
            self.written("variance")
            return [self.finish(stored, generated, payload)]
        if "wavelength" not in ds.coords:
            return []
        wave = ds["wavelength"].variable
        wcs = _wcs_wavelength(self.header, ds.sizes[self.spectral], 2 if self.transpose else 1)
        if wave.ndim == 1 and wcs is not None and _same_bits(_values(wave), wcs):
            self.written("wavelength")  # the primary header's WCS says it all
            return []
        return [self.wavela(fits.Header([("EXTNAME", _WAVELA)]))]

    def file_hdu(self, key: str, name: str) -> EncodedHDU:
        var = self.ds[name].variable
        if name == "variance":
            default = _squared_units(str(self.ds.flux.attrs.get("units", _DEFAULT_FLUX_UNITS)))
            return self.image("variance", default)
        if name == "wavelength":
            return self.wavela(_header_of(var))
        if name == "fiber":
            self.done.add("fiber")
            return self.fibres()
        stored = _header_of(var)
        if _is_table(stored):
            self.written(name)
            return self.table(stored, var.dims[0], prefix=key)
        return self.image(name, "1")


def _output_file(path, overwrite: bool) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"output path must be a str or os.PathLike, not {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise RedFileError(
            f"cannot write {path}: the folder {path.parent} does not exist; create it first"
        )
    if path.is_dir():
        raise RedFileError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} exists; pass overwrite=True (command line: --overwrite) to replace it"
        )
    return path


def _write_atomically(path: Path, hdus: list[EncodedHDU], overwrite: bool) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb") as out:
        for hdu in hdus:
            out.write(hdu.tobytes())
        out.flush()
        os.fsync(out.fileno())


def write_red(ds: xr.Dataset, path, *, overwrite: bool = False) -> Path:
    """Write an exposure Dataset as a RED FITS file.

    ``write_red(open_red(f), g)`` reproduces ``f``: the same HDUs in the same
    order, identical data and header cards (``CHECKSUM``/``DATASUM`` are
    recomputed when present).  Variables added since reading are written as
    extra HDUs that :func:`open_red` turns back into the same variables.

    Parameters
    ----------
    ds : xarray.Dataset
        An exposure (from :func:`open_red`, possibly processed; dask-backed
        Datasets are computed once).
    path : str or os.PathLike
        The output file.
    overwrite : bool
        Replace ``path`` if it exists.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is False.
    RedFileError
        If the destination folder does not exist.
    TypeError
        If ``ds`` is not a Dataset, or a variable has a dtype FITS cannot hold.
    ValueError
        If ``ds`` has no ``flux``/``variance`` or no fiber types.

    Notes
    -----
    The file is written to a temporary file in the destination folder and
    renamed into place, so a failure never leaves a partial file.  The flux
    ``units`` become ``BUNIT``; a flux-calibrated exposure gets its summary
    cards (``FLUXCAL``, ``FCALNSTR``, ``FCALRMS``, one ``HISTORY`` line per
    standard; :func:`kspec_xr.calibration.calibration_header`);
    ``attrs["history"]`` lines become ``HISTORY``
    cards followed by ``HIERARCH KSPECXR VERSION`` (and the xarray, astropy
    and NumPy versions) — only when there are such lines, so an unprocessed
    Dataset writes back its input exactly.

    Examples
    --------
    >>> write_red(open_red("in.fits"), "out.fits")              # doctest: +SKIP
    PosixPath('out.fits')
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"write_red needs an xarray.Dataset, not {type(ds).__name__}")
    dest = _output_file(path, overwrite)
    computed = ds.compute()  # one dask compute for every lazy variable
    if "calibration" in computed and "standard_reason" in computed:
        if primary_header(computed).get("FLUXCAL") is not True:  # not yet described
            from .calibration import calibration_header

            computed = calibration_header(computed)
    hdus = _Writer(computed).hdus()
    _write_atomically(dest, hdus, overwrite)
    return dest


# =============================================================================
# assign files
# =============================================================================


def read_assign(path, *, classes: Mapping[int, str] | None = None) -> xr.Dataset:
    """Read a tile's fiber assignment (FITS, CSV or ECSV; one row per fiber).

    Parameters
    ----------
    path : str or os.PathLike
        The assign file, read with ``astropy.table.Table.read``.
    classes : mapping, optional
        ``target_class`` -> fiber type; defaults to :data:`TARGET_CLASS_TYPES`
        (8 → 'C' standard, 9 → 'S' sky, 1, 2 → 'P' program, 0 → 'U' unallocated).

    Returns
    -------
    xarray.Dataset
        Dimension ``fiber`` (1..N in row order, or the file's ``fiber``/``fibre``
        column), a ``fiber_type`` coordinate and every column as a variable.

    Raises
    ------
    CatalogError
        If the file is missing or unreadable, has no ``target_class`` column,
        or a class that is not in ``classes``.

    Examples
    --------
    >>> assign = read_assign("tile42_assign.fits")               # doctest: +SKIP
    >>> ds = assign_fiber_types(open_red("run1_red.fits"), assign)  # doctest: +SKIP
    """
    from astropy.table import Table

    source = _input_file(path, CatalogError, "assign file")
    try:
        fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(source.suffix.lower())
        table = Table.read(source, format=fmt) if fmt else Table.read(source)
    except Exception as err:  # astropy raises many kinds for unreadable tables
        raise CatalogError(
            f"cannot read assign file {source} ({err}); give a FITS, CSV or ECSV table"
        ) from err
    columns = {name.lower(): name for name in table.colnames}
    if "target_class" not in columns:
        raise CatalogError(
            f"assign file {source} has no target_class column (columns: {table.colnames}); "
            "it needs one class per fiber (8 standard, 9 sky, 1/2 program, 0 unallocated)"
        )
    mapping = dict(TARGET_CLASS_TYPES if classes is None else classes)
    column = table[columns["target_class"]]
    if getattr(column, "mask", None) is not None and np.any(column.mask):
        row = int(np.flatnonzero(column.mask)[0]) + 1
        raise CatalogError(f"assign file {source}, column target_class: row {row} is empty")
    codes = np.asarray(column)
    unknown = sorted({int(c) for c in np.unique(codes)} - set(mapping))
    if unknown:
        raise CatalogError(
            f"assign file {source}, column target_class: unknown classes {unknown}; "
            f"known are {mapping}; pass classes={{...}} to map them"
        )
    fiber_col = next(
        (columns[k] for k in ("fiber", "fibre", "fiber_id", "fibre_id") if k in columns), None
    )
    fiber = np.asarray(table[fiber_col]) if fiber_col else np.arange(1, len(table) + 1)
    types = np.array([mapping[int(c)] for c in codes], dtype="U1")
    data_vars = {}
    for name in table.colnames:
        if name == fiber_col:
            continue
        values = table[name]
        values = values.filled() if hasattr(values, "filled") else values
        data_vars[name] = ("fiber", np.asarray(values), {"units": str(values.unit or "")})
    return xr.Dataset(
        data_vars,
        coords={
            "fiber": ("fiber", fiber, {"units": "1"}),
            "fiber_type": (
                "fiber",
                types,
                {"units": "", "long_name": "fiber type from target_class"},
            ),
        },
        attrs={"source": str(source)},
    )


def assign_fiber_types(ds: xr.Dataset, assign: xr.Dataset) -> xr.Dataset:
    """Return a copy of ``ds`` whose ``fiber_type`` comes from an assign file.

    Parameters
    ----------
    ds : xarray.Dataset
        The exposure.
    assign : xarray.Dataset
        From :func:`read_assign`: one row per fiber of ``ds``, in the same order.

    Returns
    -------
    xarray.Dataset
        ``ds`` with ``fiber_type`` replaced (attributes kept, so the writer
        updates the FIBRES ``TYPE`` column) and a history line.

    Raises
    ------
    CatalogError
        If the row counts (or the fiber numbers, when the assign file has
        them) do not match.

    Examples
    --------
    >>> ds = assign_fiber_types(ds, read_assign("tile42_assign.csv"))  # doctest: +SKIP
    """
    if "fiber_type" not in assign.variables:
        raise CatalogError("the assign Dataset has no fiber_type; read it with read_assign")
    source = assign.attrs.get("source", "the assign file")
    if assign.sizes.get("fiber") != ds.sizes.get("fiber"):
        raise CatalogError(
            f"{source} has {assign.sizes.get('fiber')} rows but the exposure has "
            f"{ds.sizes.get('fiber')} fibers; use the assign file of this tile (one row per fiber)"
        )
    if "fiber" in ds.coords and not np.array_equal(assign["fiber"].values, ds["fiber"].values):
        raise CatalogError(
            f"{source}: its fiber numbers differ from the exposure's; use the assign file of this tile"
        )
    attrs = dict(ds["fiber_type"].attrs) if "fiber_type" in ds.coords else {"units": ""}
    out = ds.assign_coords(fiber_type=("fiber", assign["fiber_type"].values.astype("U1"), attrs))
    return add_history(out, f"assign_fiber_types: fiber_type from {Path(str(source)).name}")
