"""Read a 2dfdr / kspecdr RED file into the Dataset of the data model.

``open_red`` turns a RED file into the Dataset of DESIGN §3;
:func:`kspec_xr.write_red` turns it back into a file, identical to the input.

Data model (the attributes other modules rely on)
-------------------------------------------------
``ds.attrs["fits_header"]``
    The primary header, newline-separated 80-character cards (no ``END``);
    read it with :func:`kspec_xr.primary_header`, change it with
    :func:`kspec_xr.with_header_cards`.
``ds.attrs["fits_hdu_order"]``
    The keys of the file's extensions in file order, one per line.
``ds.attrs["history"]``
    Lines added by :func:`kspec_xr.add_history`; the writer turns them into
    ``HISTORY`` cards (after the stored ones) and the reader gives them back.
``fits_hdu`` / ``fits_header`` on a variable
    The variable carries that HDU (its key and its header): ``variance``
    (VARIANCE), ``wavelength`` (WAVELA), ``fiber`` (FIBRES), an extra image
    HDU's variable, or the ``{KEY}_row`` coordinate of an extra table.
``fits_column`` on a variable
    The table column (its ``TTYPE``) the variable holds.
``medium`` / ``medium_source`` on ``wavelength``
    'air' or 'vacuum' and the card that says so (``CTYPE1 = 'AWAV'``), only
    when the file declares it; see :mod:`kspec_xr.stages.medium` for what
    an undeclared axis is taken to be.
``fits_raw_of`` on a variable
    ``ra_fits``/``dec_fits``: the FIBRES column exactly as stored (radians for
    2dfdr) behind the ``ra``/``dec`` coordinates in degrees.

Variables the writer added (calibration products, ``KXVAR``/``KXMETA`` image
HDUs and ``KXDIM``/``KXCOLn`` tables, ``KXATTRS``) are restored as they were.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import os
import re
import warnings
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from .._base import maskbits
from .._base.errors import KspecWarning, RedFileError
from .._base.provenance import header_to_string
from .._base.schema import (
    COLUMN_ATTR,
    HDU_ATTR,
    HEADER_ATTR,
    MEDIUM_ATTR,
    MEDIUM_SOURCE_ATTR,
    ORDER_ATTR,
    RAW_ATTR,
)
from ._fits import (
    _ANGLES,
    _ATTRS_CARD,
    _COL_CARD,
    _DEFAULT_FLUX_UNITS,
    _DIM_CARD,
    _FIBER_HDUS,
    _FIBRES,
    _FIBRES_NAMES,
    _MASK,
    _META_CARD,
    _ROLE_HDUS,
    _SPECTRAL_HDUS,
    _VAR_CARD,
    _VARIANCE,
    _WAVELA,
    _angle_to_degrees,
    _bits_equal,
    _default_column_units,
    _extname,
    _input_file,
    _is_table,
    _Names,
    _native,
    _same_bits,
    _squared_units,
    _tight_strings,
    _wcs_medium,
    _wcs_wavelength,
    decode_attrs,
    physical_values,
)

__all__ = ["open_red"]


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
        self.notes: list[str] = []  # warnings for open_red's caller

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
            if not isinstance(column.name, str) or not column.name.strip():
                raise self.error(
                    f"column {number + 1} has no name (TTYPE{number + 1}); name every column",
                    key,
                )
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
            elif values.dtype.kind == "S":
                values = _tight_strings(np.char.rstrip(self.ascii(np.asarray(values), key, column)))
            elif values.dtype.kind == "U":
                values = _tight_strings(np.char.rstrip(np.asarray(values)))
            else:
                values = _native(np.array(values))
            out.append((column.name, values, column.unit))
        return out

    def ascii(self, values: np.ndarray, key: str, column) -> np.ndarray:
        """Text of a string column; bytes beyond ASCII (not FITS) become '?', with a warning."""
        values = np.ascontiguousarray(values)
        codes = values.view(np.uint8).reshape(values.shape + (values.dtype.itemsize,))
        bad = np.flatnonzero((codes > 127).reshape(len(values), -1).any(axis=1))
        if not bad.size:
            return values.astype(str)
        text = np.char.replace(np.char.decode(values, "ascii", errors="replace"), "\ufffd", "?")
        rows = "fibres" if key == _FIBRES else "rows"
        listed = ", ".join(str(n) for n in bad[:5] + 1) + (", ..." if bad.size > 5 else "")
        self.notes.append(
            f"RED file {self.path}, HDU {key}, column {column.name}: {rows} {listed} hold "
            "bytes that are not ASCII (FITS strings are ASCII); they are read (and would be "
            "written) as '?'"
        )
        return text

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

    def medium_attrs(self) -> dict:
        """``medium`` (air | vacuum) and where it was read, if the file declares it.

        The FITS WCS spells it in ``CTYPEn`` of the dispersion axis (``AWAV``
        air, ``WAVE`` vacuum, also with an algorithm code: ``AWAV-LOG``);
        2dfdr's ``'Wavelength'`` says nothing, and then nothing is set.
        """
        axis = 2 if self.transpose else 1
        medium = _wcs_medium(self.header, axis)
        if medium is None:
            return {}
        ctype = str(self.header[f"CTYPE{axis}"]).strip()
        return {MEDIUM_ATTR: medium, MEDIUM_SOURCE_ATTR: f"CTYPE{axis} = '{ctype}'"}

    def wavelength(self, index: int | None):
        medium = self.medium_attrs()
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
            self.check_grid(wave)
            attrs = {"units": "Angstrom", "long_name": "wavelength", HDU_ATTR: _WAVELA}
            attrs[HEADER_ATTR] = header_to_string(header)
            attrs.update(medium)
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
        wave = _wcs_wavelength(
            self.header, self.npix, axis, where=f"RED file {self.path}, HDU PRIMARY"
        )
        if wave is None:
            raise self.error(
                f"no wavelength information: no WAVELA HDU and no CRVAL{axis}/CDELT{axis} "
                "(linear WCS along the pixel axis) in the primary header; add a WAVELA image "
                "or the WCS cards",
                "WAVELA",
            )
        self.spectral = "wavelength"
        self.coords["wavelength"] = xr.Variable(
            "wavelength", wave, {"units": "Angstrom", "long_name": "wavelength", **medium}
        )

    def check_grid(self, wave: np.ndarray) -> None:
        """WAVELA must hold positive, finite wavelengths that rise along every fibre."""
        if wave.dtype.kind not in "iuf":
            raise self.error(f"holds {wave.dtype} values, not wavelengths in Å", _WAVELA)
        grid = wave.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(grid) & (grid > 0))
            falls = ~(np.diff(grid, axis=1) > 0)
        for broken, problem in ((bad, "is not a positive, finite wavelength"), (falls, "")):
            if not broken.any():
                continue
            fibers = np.flatnonzero(broken.any(axis=1))
            fiber, pixel = int(fibers[0]), int(np.flatnonzero(broken[fibers[0]])[0])
            more = f" (and {fibers.size - 1} more fibres)" if fibers.size > 1 else ""
            if problem:
                what = f"pixel {pixel + 1}: {grid[fiber, pixel]!r} {problem}"
            else:
                a, b = grid[fiber, pixel], grid[fiber, pixel + 1]
                what = (
                    f"the wavelengths do not increase from pixel {pixel + 1} to {pixel + 2} "
                    f"({a:.6g} to {b:.6g} Å)"
                )
            raise self.error(
                f"fibre {fiber + 1}{more}, {what}; WAVELA must give increasing wavelengths "
                "(Å) along every fibre: repair the wavelength solution (re-run the arc "
                "calibration) or replace the image",
                _WAVELA,
            )

    def spectra(self, variance_index: int | None):
        dims = ("fiber", self.spectral)
        units = str(self.header.get("BUNIT", _DEFAULT_FLUX_UNITS)).strip() or _DEFAULT_FLUX_UNITS
        flux = self.image(0, dims, transpose=self.transpose, name="flux")
        flux, flux_units = physical_values(flux, units)  # '10**-17 erg/…' -> erg/…
        self.data_vars["flux"] = xr.Variable(dims, flux, {"units": flux_units, "long_name": "flux"})
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
        variance, var_units = physical_values(variance, var_units)
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
        card = _VAR_CARD if _VAR_CARD in header else _DIM_CARD
        value = header[card]
        if not isinstance(value, str) or (card == _VAR_CARD and not value.strip()):
            raise self.error(
                f"card {card} = {value!r} is not the variable or dimension name kspec_xr's "
                f"writer puts there; {_KX_ADVICE}",
                key,
            )
        if (card == _DIM_CARD) != _is_table(header):
            kind = "table" if _is_table(header) else "image"
            raise self.error(f"card {card} on an {kind} HDU; {_KX_ADVICE}", key)
        try:
            if card == _VAR_CARD:
                self.product_image(index, header, key)
            else:
                self.product_table(index, key)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            if isinstance(err, RedFileError):
                raise
            raise self.error(
                f"cannot decode the kspec_xr product ({type(err).__name__}: {err}); {_KX_ADVICE}",
                key,
            ) from err

    def kx_meta(self, header: fits.Header, card: str, key: str, *, named=False) -> dict:
        """The JSON of a ``KXMETA``/``KXCOLn`` card, checked to hold what the writer wrote."""
        if card not in header:
            raise self.error(
                f"no {card} card (the writer gives every product one); {_KX_ADVICE}", key
            )
        try:
            meta = decode_attrs(header[card])
        except ValueError as err:
            raise self.error(f"card {card} cannot be decoded: {err}; {_KX_ADVICE}", key) from None
        checks = {
            "dims": lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v),
            "coord": lambda v: isinstance(v, bool),
            "dtype": lambda v: isinstance(v, str) and _is_dtype(v),
            "attrs": lambda v: isinstance(v, dict),
        }
        if named:
            checks["name"] = lambda v: isinstance(v, str) and bool(v.strip())
        for field, ok in checks.items():
            if field not in meta or not ok(meta[field]):
                got = f"{meta[field]!r}" if field in meta else "nothing"
                raise self.error(
                    f"card {card} has {got} for {field!r}, not what kspec_xr writes; {_KX_ADVICE}",
                    key,
                )
        return meta

    def product_image(self, index: int, header: fits.Header, key: str):
        meta = self.kx_meta(header, _META_CARD, key)
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
            meta = self.kx_meta(header, f"{_COL_CARD}{number}", key, named=True)
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
        self.data_vars["mask"] = None  # type: ignore[assignment]  # keeps flux, variance, mask first
        for index, key in extras:
            if _is_table(self.headers[index]):
                self.extra_table(index, key)
            else:
                self.extra_image(index, key)
        for index in products:
            self.product(index)
        self.data_vars["mask"] = self.mask()
        header = self.header
        extra_attrs = self.extra_attrs()
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

    def extra_attrs(self) -> dict[str, dict]:
        """``KXATTRS``: attributes by variable name ('' for the Dataset's), or {}."""
        if _ATTRS_CARD not in self.header:
            return {}
        try:
            attrs = decode_attrs(self.header[_ATTRS_CARD])
        except ValueError as err:
            raise self.error(
                f"card {_ATTRS_CARD} cannot be decoded: {err}; {_ATTRS_ADVICE}", "PRIMARY"
            ) from None
        for name, value in attrs.items():
            if not isinstance(value, dict):
                raise self.error(
                    f"card {_ATTRS_CARD} gives {value!r} for {name or 'the Dataset'}, not a set "
                    f"of attributes; {_ATTRS_ADVICE}",
                    "PRIMARY",
                )
        return attrs

    def mask(self) -> xr.Variable:
        flux, variance = self.data_vars["flux"], self.data_vars["variance"]
        mask = maskbits.data_mask(flux.data, variance.data)
        for extra in self.extra_masks:
            mask = mask | extra.transpose(*flux.dims).data.astype(maskbits.MASK_DTYPE)
        return xr.Variable(flux.dims, mask, maskbits.flag_attrs())


#: what to do about a damaged ``KX*`` card (written by kspec_xr, read only by it)
_KX_ADVICE = (
    "kspec_xr's writer made it and it was damaged or edited since: write the file again "
    "from its Dataset, or delete the HDU to read the rest"
)

_ATTRS_ADVICE = _KX_ADVICE.replace(
    "delete the HDU", "delete the card (the attributes it held are lost)"
)


def _is_dtype(text: str) -> bool:
    try:
        np.dtype(text)
    except (TypeError, ValueError):
        return False
    return True


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
        The RED file: FITS, or FITS compressed with gzip, bzip2 or xz
        (``.fits.gz`` …; recognised by its first bytes, not its name).
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
        ``pixel`` dimension with a 2-D ``wavelength(fiber, pixel)``, with
        ``medium`` ('air' | 'vacuum') and ``medium_source`` (the card, e.g.
        ``"CTYPE1 = 'AWAV'"``) among its attributes when the file declares
        the medium (``CTYPEn`` of the dispersion axis); every
        other HDU as variables; the headers as string attributes.  See the
        module docstring for the attribute names.

    Raises
    ------
    RedFileError
        If the file is missing, not a regular file (a FIFO, a device), or
        unreadable; truncated or corrupt (checked on every header before any
        data are read: cards that do not parse, a keyword repeated with another
        value, bad ``BITPIX``/``NAXISn``, data declared beyond the end of the
        file or of its decompressed stream, a compressed file that unpacks to
        more than 1000 times its size); or not laid out as a RED file (no
        FIBRES, VARIANCE of another shape, FIBRES rows ≠ fibers, no TYPE
        column, no wavelength information, WAVELA values that are not finite,
        positive and increasing along every fiber, WCS cards that are not —
        ``CDELTn <= 0``, a ``CUNITn`` that is not a length —, differing grids
        when a common one is required, damaged ``KX*`` cards).  The message is
        one line naming the file and the HDU, card, column or fiber.
    TypeError, ValueError
        For a ``path`` or ``chunks`` of the wrong type or value.

    Warns
    -----
    KspecWarning
        A FIBRES (or other table) string holds bytes beyond ASCII, which FITS
        does not allow; they are read as '?' (the message names the column and
        the fibers).

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
        reader = _Reader(hdul, source, fiber_chunks, require_common_grid)
        ds = reader.dataset()
    for note in reader.notes:
        warnings.warn(note, KspecWarning, stacklevel=2)
    ds.encoding["source"] = str(source)  # as xr.open_dataset does; used in messages
    return ds


#: compressed RED files read through astropy, by their first bytes
_COMPRESSION: dict[bytes, tuple[str, Callable[..., Any]]] = {
    b"\x1f\x8b": ("gzip", gzip.open),
    b"BZh": ("bzip2", bz2.open),
    b"\xfd7zXZ\x00": ("xz", lzma.open),
}
_UNSUPPORTED = {b"PK\x03\x04": "zip", b"\x1f\x9d": "Unix compress (.Z)"}
#: a compressed file may unpack to at most this many times its size (deflate's limit
#: is ~1030; RED data, noisy floats, compress about 1.5 times)
_MAX_INFLATION = 1000
_BITPIX = (8, 16, 32, 64, -32, -64)
#: keywords that may repeat
_COMMENTARY = {"", "COMMENT", "HISTORY", "CONTINUE"}
_SHOWN_PROBLEMS = 3


def _stream_size(source: Path) -> int:
    """Bytes of the FITS stream in ``source``: its size, or its decompressed size.

    A compressed file is decompressed once, in pieces, and refused as soon as it
    unpacks to more than ``_MAX_INFLATION`` times its size, so that neither
    this nor astropy's reading afterwards can run away on a decompression bomb.
    """
    size = source.stat().st_size
    try:
        with open(source, "rb") as file:
            magic = file.read(6)
    except OSError as err:
        raise RedFileError(
            f"cannot read RED file {source} ({err.strerror or err}); check it and its permissions"
        ) from None
    for prefix, kind in _UNSUPPORTED.items():
        if magic.startswith(prefix):
            raise RedFileError(
                f"RED file {source} is {kind}-compressed, which kspec_xr does not read; "
                "decompress it (gzip, bzip2 and xz files are read as they are)"
            )
    found = [value for prefix, value in _COMPRESSION.items() if magic.startswith(prefix)]
    if not found:
        return size
    (kind, opener), limit, total = found[0], _MAX_INFLATION * size, 0
    try:
        with opener(source, "rb") as stream:
            while chunk := stream.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise RedFileError(
                        f"RED file {source} ({kind}, {size} bytes) unpacks to more than "
                        f"{_MAX_INFLATION} times its size, which no RED file does; decompress "
                        "it yourself and check what it holds"
                    )
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:
        raise RedFileError(
            f"cannot decompress RED file {source} ({kind}: {err}); it is truncated or corrupt, "
            "copy it again"
        ) from None
    return total


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _data_bytes(header: fits.Header) -> int:
    """Size of an HDU's data (without padding) from its (checked) header, in Python ints."""
    naxis = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, int(header.get("NAXIS", 0)) + 1)]
    elements = math.prod(naxis) if naxis else 0
    gcount, pcount = int(header.get("GCOUNT", 1)), int(header.get("PCOUNT", 0))
    return abs(int(header.get("BITPIX", 8))) // 8 * gcount * (pcount + elements)


def _header_problems(hdul: fits.HDUList, index: int, size: int) -> list[str]:
    """What is wrong with one HDU's header, judged before any data are read.

    Every card must parse, no keyword may repeat with another value, the
    mandatory cards must be sane, the HDU must be a standard one astropy
    recognised, and its declared data must fit in the ``size`` bytes of the stream.
    """
    hdu = hdul[index]
    header = hdu.header
    seen: dict[str, Any] = {}
    repeated: dict[str, list] = {}
    for number, card in enumerate(header.cards, start=1):
        keyword = str(card.keyword).strip().upper()
        try:
            value = card.value
        except (VerifyError, ValueError):
            return [
                f"HDU #{index}: card {keyword[:20] or '(blank)'} cannot be parsed (bytes "
                "that are not printable ASCII, or a malformed value)"
            ]
        if number > 1 and keyword in ("SIMPLE", "XTENSION"):
            return [
                f"HDU #{index}: card {number} is {keyword}, the start of another HDU: the "
                "header's END card is missing or damaged"
            ]
        if keyword in _COMMENTARY:
            continue
        if keyword in seen and (type(value) is not type(seen[keyword]) or value != seen[keyword]):
            repeated.setdefault(keyword, [seen[keyword]]).append(value)
        seen.setdefault(keyword, value)
    name = "PRIMARY" if index == 0 else str(seen.get("EXTNAME", "")).strip()
    where = f"HDU #{index}" + (f" ({name})" if name else "")
    problems = [
        f"{where}: keyword {keyword[:20]} appears {len(values)} times with different values "
        f"({', '.join(_short(v) for v in values)}); keep the right one"
        for keyword, values in repeated.items()
    ]
    bitpix: Any = seen.get("BITPIX")
    naxis: Any = seen.get("NAXIS")
    if bitpix not in _BITPIX or not _is_int(bitpix):
        problems.append(
            f"{where}: BITPIX = {bitpix!r}, not one of {', '.join(map(str, _BITPIX))}"
            if "BITPIX" in seen
            else f"{where}: no BITPIX card"
        )
    if not _is_int(naxis) or not 0 <= naxis <= 999:
        problems.append(
            f"{where}: NAXIS = {naxis!r}, not a number of axes (0 to 999)"
            if "NAXIS" in seen
            else f"{where}: no NAXIS card"
        )
    else:
        for card in [f"NAXIS{i}" for i in range(1, naxis + 1)] + ["PCOUNT", "GCOUNT"]:
            if card not in seen:  # PCOUNT and GCOUNT may be left out (0 and 1)
                problems += [f"{where}: no {card} card"] if card.startswith("NAXIS") else []
            elif not _is_int(seen[card]) or seen[card] < 0:
                problems.append(f"{where}: {card} = {seen[card]!r}, not a whole number >= 0")
    if problems:
        return problems
    if index == 0:
        standard = isinstance(hdu, fits.PrimaryHDU) and not isinstance(hdu, fits.GroupsHDU)
        kind = f"SIMPLE = {seen.get('SIMPLE')!r}"
    else:
        standard = isinstance(hdu, (fits.ImageHDU, fits.BinTableHDU, fits.TableHDU))
        kind = f"XTENSION = {seen.get('XTENSION')!r}"
    if not standard:
        return [
            f"{where}: not a standard FITS HDU ({kind}); its header is corrupt or of a "
            "kind kspec_xr does not read (IMAGE and BINTABLE extensions are)"
        ]
    if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
        try:
            hdu.columns  # noqa: B018  (parses every TFORMn, TTYPEn, ...)
        except (VerifyError, ValueError, KeyError, TypeError, IndexError) as err:
            return [f"{where}: the column definitions are corrupt ({err})"]
    end = hdul.fileinfo(index)["datLoc"] + _data_bytes(header)
    if end > size:
        return [f"{where} needs {end} bytes, the file has {size}"]
    return []


def _short(value, width: int = 30) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _unreadable_hdu(source: Path) -> int | None:
    """The index of the first HDU astropy cannot read (for messages), or None."""
    index = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(source, memmap=False, lazy_load_hdus=True) as hdul:
                while True:
                    try:
                        hdul[index]
                    except IndexError:
                        return None
                    index += 1
    except Exception:  # noqa: BLE001  (only for the message: the caller raises anyway)
        return index


def _open_fits(source: Path) -> fits.HDUList:
    """``fits.open`` with every header read and checked; truncated or corrupt files raise.

    Compressed files (gzip, bzip2, xz) are read as astropy reads them, their
    sizes checked against the decompressed stream.  Nothing is read from an HDU
    whose header declares more data than the file holds.
    """
    size = _stream_size(source)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(source, memmap=False, lazy_load_hdus=False)
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, VerifyError) as err:
        detail = f"no {err} card" if isinstance(err, KeyError) else str(err)
        index = _unreadable_hdu(source)
        detail = detail if index is None else f"HDU #{index}: {detail}"
        raise RedFileError(
            f"cannot read RED file {source} as FITS ({detail}); check that it is a complete, "
            "uncorrupted FITS file"
        ) from None
    problems = [
        " ".join(str(w.message).split())
        for w in caught
        if "Error validating header" in str(w.message)
    ]
    for index in range(len(hdul)):  # where an HDU ends depends on the headers before it
        if isinstance(hdul[index], fits.CompImageHDU):  # its header is the image's
            name = hdul[index].name
            hdul.close()
            raise RedFileError(
                f"RED file {source}, HDU #{index} ({name}): tile-compressed images are not "
                "supported; decompress the file (funpack)"
            )
        problems += _header_problems(hdul, index, size)
        if problems:
            break
    if problems:
        hdul.close()
        shown = problems[:_SHOWN_PROBLEMS]
        if len(problems) > len(shown):
            shown.append(f"{len(problems) - len(shown)} more")
        raise RedFileError(
            f"RED file {source} is truncated or corrupt ({'; '.join(shown)}); "
            "copy it again from the reduction, or repair the header cards named"
        )
    for w in caught:  # not ours to judge: pass astropy's other warnings on
        if "truncated" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return hdul
