"""Write an exposure Dataset as a RED file: what it is given, card for card.

``write_red(open_red(f), g)`` reproduces ``f`` (the same HDUs in the same
order, identical data and header cards).  Variables that do not come from the
file (calibration products) are written as extra HDUs marked with
``KXVAR``/``KXMETA`` (one image per numeric variable along
``fiber``/``wavelength``) or ``KXDIM``/``KXCOLn`` (one binary table per other
dimension, e.g. ``standard``, vector columns for 2-D variables; 0-d variables
go to a one-row ``KXSCALARS`` table), each with its name, dims, dtype and
attributes as JSON, and :func:`kspec_xr.open_red` restores them.  A ``mask``
that differs from what the reader would compute is written the same way
(``KXVAR = 'mask'``) and OR-ed in again on reading.  Attributes the reader
cannot rebuild (extra Dataset attributes, extra attributes of file variables)
travel in the primary card ``KXATTRS``.  None of these cards is written for
an unprocessed Dataset, which therefore writes back its input exactly.

A flux-calibrated exposure also gets the cards that describe its
calibration (:func:`calibration_header`: ``FLUXCAL``, ``FCALNSTR``, …), and
its flux and variance are written as float32 in ``10**-17 erg/(s cm2
Angstrom)`` (squared) or as float64 (``write_red(dtype=...)``), with units
spelled as the FITS standard does; ``name.gz`` outputs are gzip-compressed.
Every output passes ``fitsverify`` without a warning.
"""

from __future__ import annotations

import gzip
import os
import textwrap
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits

from .._base import maskbits
from .._base.errors import CalibrationError, OptionError, OutputExistsError, RedFileError
from .._base.paths import atomic_output
from .._base.provenance import (
    add_history,
    header_from_string,
    package_versions,
    primary_header,
    with_header_cards,
)
from .._base.schema import (
    COLUMN_ATTR,
    DS_MEDIUM_ATTR,
    DS_MEDIUM_SOURCE_ATTR,
    FLUX_UNITS,
    FLUX_VARIANCE_UNITS,
    HDU_ATTR,
    HEADER_ATTR,
    HISTORY_ATTR,
    MEDIA,
    MEDIUM_ATTR,
    ORDER_ATTR,
    RAW_ATTR,
    StandardStatus,
    is_flux_units,
    source_name,
    standard_reasons,
)
from ..kernels.lsf import combine_fwhm
from ..kernels.robust import robust_sigma
from ._fits import (
    _ATTRS_CARD,
    _COL_CARD,
    _DEFAULT_FLUX_UNITS,
    _DIM_CARD,
    _FIBRES,
    _FIBRES_NAMES,
    _HISTORY_CARD,
    _MANAGED,
    _MANAGED_DS,
    _MASK,
    _META_CARD,
    _VAR_CARD,
    _VARIANCE,
    _WAVELA,
    EncodedHDU,
    _angle_from_degrees,
    _angle_to_degrees,
    _bits_equal,
    _declare_medium,
    _default_column_units,
    _fits_units,
    _is_table,
    _same_bits,
    _same_unit,
    _scaled_units,
    _squared_units,
    _wcs_wavelength,
    declare_long_strings,
    encode_attrs,
    encode_image,
    encode_table,
    merge_header,
    narrowest_integers,
    update_checksums,
)

__all__ = ["write_red", "calibration_header", "calibration_summary", "calibration_warning"]


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
#: calibrated flux written as float32 is in units of this many erg/(s cm2 Angstrom)
_CALIBRATED_SCALE = 1e-17
#: the on-disk types ``write_red(dtype=...)`` offers for calibrated flux and variance
_DTYPES = ("float32", "float64")
#: gzip level of ``.gz`` outputs (gzip's own default: most of level 9's gain, 3x faster)
_GZIP_LEVEL = 6
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
            carriers[key] = str(name)
    return carriers


def _product_attrs(var: xr.Variable) -> tuple[dict, str | None]:
    """A product's attrs without stale FITS bookkeeping, and its BUNIT/TUNIT.

    The units travel in the card alone when FITS reads them as they are
    spelled; otherwise (kspecdr's 'erg/cm2/s/A/Counts', the dimensionless
    '1', 'dex') the card gets their FITS spelling, or nothing, and the JSON
    keeps them, so that the reader gives back the same string.
    """
    attrs = {k: v for k, v in var.attrs.items() if k not in _FITS_ATTRS}
    units = attrs.get("units")
    if not isinstance(units, str) or not units.strip() or units != units.strip():
        return attrs, None  # kept in the JSON: a FITS string loses its blanks
    written = _fits_units(units)
    if written == units:
        del attrs["units"]
    return attrs, written


class _Writer:
    """Turns one (computed) Dataset into a list of encoded HDUs."""

    def __init__(self, ds: xr.Dataset, dtype: str = "float32"):
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
        self.dtype = np.dtype(dtype)
        # flux-calibrated flux and variance are written in ``dtype`` (see write_red)
        self.calibrated = is_flux_units(ds.flux.attrs.get("units"))

    def oriented(self, var: xr.Variable) -> np.ndarray:
        """A (fiber, spectral) variable in on-disk axis order."""
        values = _values(var.transpose("fiber", self.spectral))
        return values.T if self.transpose else values

    def finish(self, stored: fits.Header, generated, payload, renumber=None) -> EncodedHDU:
        header = merge_header(stored, generated, renumber)
        declare_long_strings(header)
        if "EXTNAME" in header:
            self.extnames.add(str(header["EXTNAME"]).strip().upper())
        hdu = EncodedHDU(header, payload)
        update_checksums(hdu)
        return hdu

    # -- the HDUs ----------------------------------------------------------------------

    def primary(self) -> EncodedHDU:
        """The primary HDU; built last, when the file variables are known."""
        ds, header = self.ds, self.header
        if self.calibrated:
            flux = self.calibrated_values(ds.flux.variable, header, power=1)
        else:
            _set_bunit(header, ds.flux.attrs.get("units"), _DEFAULT_FLUX_UNITS)
            flux = self.oriented(ds.flux.variable)
        if "wavelength" in ds.coords:  # a medium set on the coordinate goes to CTYPEn
            medium = ds["wavelength"].attrs.get(MEDIUM_ATTR)
            _declare_medium(header, 2 if self.transpose else 1, medium)
        # the history travels whole in KXATTRS; the lines the stored header does not
        # hold yet (KXHISTN counts those it does) become HISTORY cards
        lines = [line for line in ds.attrs.get(HISTORY_ATTR, "").splitlines() if line.strip()]
        held = header.get(_HISTORY_CARD, 0)
        held = held if isinstance(held, int) and not isinstance(held, bool) else 0
        new = lines[held:]
        for line in new:
            for part in textwrap.wrap(line, 72, break_on_hyphens=False) or [line]:
                header.add_history(part)
        if new:
            for keyword, value in package_versions().items():
                header[keyword] = value
            header[_HISTORY_CARD] = (len(lines), "lines of attrs['history'] in HISTORY")
        extra = self.extra_attrs()
        if extra:
            header[_ATTRS_CARD] = encode_attrs(extra, "attrs")
        generated, payload = encode_image(flux, stored=header, primary=True)
        return self.finish(header, generated, payload)

    def calibrated_values(self, var: xr.Variable, header: fits.Header, power: int) -> np.ndarray:
        """Calibrated flux (``power=1``) or variance (2) as written, and its BUNIT set.

        float64: the values, in erg/(s cm2 Angstrom) (squared).  float32: the
        values times 1e17 (1e34), in '10**-17 erg/(s cm2 Angstrom)'
        (squared), so that variances of 1e-34 and less stay far inside
        float32's normal range (down to 1.2e-38) at full precision.
        """
        units = FLUX_UNITS if power == 1 else FLUX_VARIANCE_UNITS
        values = self.oriented(var)
        if self.dtype == np.float32:
            factor = _CALIBRATED_SCALE**power
            values = (values.astype(np.float64, copy=False) / factor).astype(np.float32)
            units = _scaled_units(factor, units)
        else:
            values = values.astype(np.float64, copy=False)
        header["BUNIT"] = units
        return values

    def extra_attrs(self) -> dict:
        """Attributes the reader would not restore by itself (kept as KXATTRS)."""
        extra = {}
        ds_extra = {k: v for k, v in self.ds.attrs.items() if k not in _MANAGED_DS}
        if ds_extra:
            extra[""] = ds_extra
        for name in (n for n in self.ds.variables if n in self.file_vars):
            more = {k: v for k, v in self.ds.variables[name].attrs.items() if k not in _MANAGED}
            if more:
                extra[name] = more
        return extra

    def written(self, *names: str) -> None:
        """Record variables written as part of a file HDU."""
        self.done.update(names)
        self.file_vars.update(n for n in names if n in self.ds.variables)

    def image(self, name: str, default_units: str, bunit: tuple | None = None) -> EncodedHDU:
        var = self.ds.variables[name]
        stored = _header_of(var)
        if name == "variance" and self.calibrated_variance():
            values = self.calibrated_values(var, stored, power=2)
        else:
            if bunit is not None:
                stored["BUNIT"] = bunit
            else:
                _set_bunit(stored, var.attrs.get("units"), default_units)
            values = self.oriented(var) if name == "variance" else _values(var)
        generated, payload = encode_image(values, stored=stored)
        self.written(name)
        return self.finish(stored, generated, payload)

    def calibrated_variance(self) -> bool:
        """True if the variance is in the square of the calibrated flux units."""
        units = self.ds.variance.attrs.get("units", FLUX_VARIANCE_UNITS)
        return self.calibrated and isinstance(units, str) and _same_unit(units, FLUX_VARIANCE_UNITS)

    def wavela(self, stored: fits.Header) -> EncodedHDU:
        wave = self.ds["wavelength"].variable
        if self.calibrated and "BUNIT" not in stored:  # a calibrated file: units on every HDU
            stored["BUNIT"] = ("Angstrom", "wavelength of each pixel")
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
        wanted: list[tuple[str, str, int | None]] = []
        if scratch:
            wanted = [
                (name, self._scratch_ttype(name), None) for name in self._scratch_columns(row_dim)
            ]
        else:
            for number in range(1, stored.get("TFIELDS", 0) + 1):
                ttype = stored.get(f"TTYPE{number}", "")
                if ttype in by_column:
                    wanted.append((by_column[ttype], ttype, number))
        columns: list[tuple[str, np.ndarray, str | None, int | None]] = []
        renumber: dict[int, int] = {}
        for new_number, (name, ttype, old) in enumerate(wanted, start=1):
            var = self.ds.variables[name]
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
                names.append(str(name))
        return names

    def _scratch_ttype(self, name: str) -> str:
        reverse = {v: k for k, v in _FIBRES_NAMES.items()}
        return self.ds.variables[name].attrs.get(COLUMN_ATTR, reverse.get(name, name))

    @staticmethod
    def _column_unit(units, stored_unit, values) -> str | None:
        if not isinstance(units, str):
            return stored_unit
        if stored_unit is not None:
            return stored_unit if _same_unit(stored_unit, units) else units
        return None if units == _default_column_units(values) else units

    def _angle_column(self, name: str, raw_name: str, degrees: np.ndarray) -> np.ndarray:
        """Stored RA/DEC values where unchanged, converted degrees where edited."""
        raw = self.ds.variables[raw_name]
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
        elif values.dtype.kind in "iu":  # e.g. the int32 mask, bits 0-7: one byte a pixel
            stored_values = narrowest_integers(values)  # the reader restores KXMETA's dtype
        elif values.dtype == np.float16:
            stored_values = values.astype(np.float32)
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
        columns: list[tuple[str, np.ndarray, str | None, int | None]] = []
        # the dimension's coordinate first, then the other coordinates: a re-read
        # Dataset lists its variables in another order, the file must not change
        names = sorted(names, key=lambda n: (n != row_dim, n not in self.ds.coords))
        for number, name in enumerate(names, start=1):
            var = self.ds.variables[name]
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
        images: list[str] = []
        tables: dict[str, list[str]] = {}
        for name_, var in self.ds.variables.items():
            name = str(name_)
            if name in self.done:
                continue
            if var.dims and set(var.dims) <= main and var.dtype.kind in "biuf":
                images.append(name)
                continue
            others = [d for d in var.dims if d not in main]
            row_dim = str(others[0] if others else (var.dims[0] if var.dims else ""))
            tables.setdefault(row_dim, []).append(name)
        hdus = [
            self.product_image(name, self.ds.variables[name], name in self.ds.coords)
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
            if self.calibrated_variance():
                values = self.calibrated_values(ds.variance.variable, stored, power=2)
            else:
                values = self.oriented(ds.variance.variable)
            generated, payload = encode_image(values, stored=stored)
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
        var = self.ds.variables[name]
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
            return self.table(stored, str(var.dims[0]), prefix=key)
        if (
            self.calibrated
            and key == "SKY"
            and var.attrs.get("units", "1") == "1"
            and "BUNIT" not in stored
        ):
            # 2dfdr's sky spectrum is in the fibres' counts, and stays so
            return self.image(name, "1", bunit=("count", "the sky spectrum, not flux-calibrated"))
        return self.image(name, "1")


def calibration_header(ds: xr.Dataset, /) -> xr.Dataset:
    """Header cards and HISTORY lines that describe a finished calibration.

    ``FLUXCAL = T``, ``FCALNSTR`` (standards that contribute), ``FCALNREJ``
    (standards that do not), ``FCALRMS`` (median fractional RMS of the
    standards' shapes over unmasked pixels, NaN with one star), ``FCALZPSD``
    (robust σ of their zero points, mag), ``FCALMET`` (score),
    ``FCALGRID`` (template grid id), ``FCALMED`` (the medium of the
    wavelengths the calibration took, 'air' | 'vacuum', and in its comment
    where that came from: the file's ``CTYPE1``, the option or the
    default), ``FCALWARN`` when the calibration rests
    on one or two stars, and one HISTORY line per standard (fiber, name,
    Teff, log g, [M/H], RV, scale ± error, or why it was not used).  Needs
    computed values: :func:`kspec_xr.write_red` applies it to a calibrated
    exposure as it writes.

    Raises
    ------
    CalibrationError
        No standard contributes (every one was ruled out, or the calibration
        is nowhere finite): nothing is written.
    """
    reason = standard_reasons(ds)
    used = np.asarray(ds["standard_status"].values) == StandardStatus.OK
    finite = np.isfinite(np.asarray(ds["calibration"].values))
    if not used.any() or not finite.any():
        why = "; ".join(
            f"standard {k} (fiber {int(ds['standard_fiber'].values[k])}): {r}"
            for k, r in enumerate(reason)
            if r
        )
        raise CalibrationError(
            f"{source_name(ds)}: no standard star could be used, so there is no flux calibration "
            f"to write ({why or 'no finite calibration'})"
        )
    summary = calibration_summary(ds)
    rms, zp_spread = summary["rms"], summary["zp_spread"]
    cards = {
        "FLUXCAL": (True, "flux calibrated with standard stars (kspec_xr)"),
        "FCALNSTR": (summary["n_used"], "standards contributing to the calibration"),
        "FCALNREJ": (summary["n_rejected"], "standard stars rejected (see HISTORY)"),
        "FCALRMS": (
            round(rms, 6) if np.isfinite(rms) else "NaN",
            "median fractional RMS of the stars' shapes",
        ),
        "FCALZPSD": (
            round(zp_spread, 4) if np.isfinite(zp_spread) else "NaN",
            "robust sigma of the stars' zero points [mag]",
        ),
        "FCALMET": (str(ds.attrs.get("fit_metric", "")), "template score (chi2|huber)"),
        "FCALGRID": (str(ds.attrs.get("template_grid_id", ""))[:60], "template grid id"),
    }
    resolution = resolution_summary(ds)
    if np.isfinite(resolution["used"]):
        cards["FCALFWHM"] = (
            round(resolution["used"], 3),
            f"[Angstrom] used: {resolution['source']}"[:47],
        )
    if np.isfinite(resolution["measured"]):
        cards["FCALFWME"] = (
            round(resolution["measured"], 3),
            (
                f"[Angstrom] measured on {resolution['n']} {resolution['on']}"
                if resolution["reliable"]
                else "[Angstrom] unreliable: the stars disagree"
            )[:40],
        )
    if "fit_ebv" in ds:
        ebv = np.asarray(ds["fit_ebv"].values, dtype=float)[used]
        if np.any(np.isfinite(ebv)):
            cards["FCALEBV"] = (
                round(float(np.nanmedian(ebv)), 4),
                "median E(B-V) of the standards' models [mag]",
            )
    medium = ds.attrs.get(DS_MEDIUM_ATTR)
    medium_source = str(ds.attrs.get(DS_MEDIUM_SOURCE_ATTR, ""))
    if medium in MEDIA:
        said = {"option": "given as an option", "default": "undeclared, 2dfdr default"}
        comment = f"wavelength medium: {said.get(medium_source, medium_source)}"
        cards["FCALMED"] = (str(medium), comment[:47])
    warning = summary["warning"]
    if warning:
        short = warning.split(":")[0].split(" and ")[0]
        cards["FCALWARN"] = (short[:40], "doubtful; see HISTORY")
    out = with_header_cards(ds, cards)
    lines = [f"FCAL warning: {warning}"] if warning else []
    if np.isfinite(resolution["used"]):
        measured = (
            f", measured {resolution['measured']:.3f} +- {resolution['measured_err']:.3f} A on "
            f"{resolution['n']} {resolution['on']}"
            + (
                f" (scatter {100 * resolution['scatter']:.0f} %)"
                if np.isfinite(resolution["scatter"])
                else ""
            )
            + ("" if resolution["reliable"] else ", not reliable: not used to check")
            if np.isfinite(resolution["measured"])
            else ""
        )
        lines.append(f"FCAL FWHM {resolution['used']:.3f} A ({resolution['source']}){measured}")
    if "fit_ebv" in ds:
        lines.append(f"FCAL reddening law: {ds['fit_ebv'].attrs.get('law', '')}")
    if medium in MEDIA:
        lines.append(
            f"FCAL wavelengths: {medium} (from {medium_source})"
            + (", converted to vacuum for templates and masks" if medium == "air" else "")
            + "; RV observed frame, vacuum scale"
        )
    for k in range(ds.sizes["standard"]):
        head = f"FCAL std {k}: fiber {int(ds['standard_fiber'].values[k])} {ds['standard_name'].values[k]}"
        if not used[k]:
            lines.append(f"{head} not used: {reason[k]}")
            continue
        scale = float(ds["scale"].values[k])
        err = float(ds["scale_err"].values[k])
        lines.append(
            f"{head} Teff {float(ds['fit_teff'].values[k]):.0f} logg "
            f"{float(ds['fit_logg'].values[k]):.2f} [M/H] {float(ds['fit_mh'].values[k]):+.2f} "
            f"RV {float(ds['fit_rv'].values[k]):+.1f} km/s scale {scale:.4e} +- {err:.2e}"
            + (
                f" E(B-V) {float(ds['fit_ebv'].values[k]):.3f} ({ds['ebv_source'].values[k]})"
                if "fit_ebv" in ds and "ebv_source" in ds
                else ""
            )
        )
    return add_history(out, "\n".join(lines))


def calibration_summary(ds: xr.Dataset, /) -> dict:
    """The numbers of the ``FCAL*`` cards, from a computed calibrated exposure.

    ``n_standards``; ``n_used`` (status OK) and ``n_rejected``; ``rms``, the
    median fractional RMS of the stars' shapes over unmasked pixels (NaN
    with one star); ``zp_spread``, the robust σ of the used stars' zero
    points (mag, NaN with fewer than two); ``warning``
    (:func:`calibration_warning`).
    """
    used = np.asarray(ds["standard_status"].values) == StandardStatus.OK
    good = np.asarray(ds["calibration_mask"].values) == 0
    rms = np.asarray(ds["calibration_rms"].values, dtype=float)[good]
    zp_spread = float("nan")
    if "std_zero_point" in ds and used.sum() >= 2:
        zp_spread = robust_sigma(np.asarray(ds["std_zero_point"].values, dtype=float)[used])
    return {
        "n_standards": int(used.size),
        "n_used": int(used.sum()),
        "n_rejected": int((~used).sum()),
        "rms": float(np.nanmedian(rms)) if np.any(np.isfinite(rms)) else float("nan"),
        "zp_spread": float(zp_spread),
        "warning": calibration_warning(ds),
    }


def resolution_summary(ds: xr.Dataset, /) -> dict:
    """The FWHM the fit used (``used``, Å, and its ``source``) and the one measured on
    the standards (``measured`` ± ``measured_err``, from ``n`` stars, their ``scatter``
    and whether they agree well enough to be ``reliable``; NaN when not measured).
    A measurement that is not reliable is reported but never warned about."""
    used = float(ds.attrs.get("fwhm_used", ds.attrs.get("fit_fwhm_median", np.nan)))
    out = {
        "used": used,
        "source": str(ds.attrs.get("fwhm_source", "")),
        "measured": np.nan,
        "measured_err": np.nan,
        "n": 0,
        "scatter": np.nan,
        "reliable": False,
        "on": "standards",
    }
    if np.isfinite(float(ds.attrs.get("fwhm_sky", np.nan))):
        # the sky's lines: no template involved, so they are the check when there
        out.update(
            measured=float(ds.attrs["fwhm_sky"]),
            measured_err=float(ds.attrs.get("fwhm_sky_err", np.nan)),
            n=int(ds.attrs.get("fwhm_sky_lines", 0)),
            on="sky lines",
            scatter=np.nan,
            reliable=True,
        )
    elif "std_fwhm" in ds:
        ok = np.asarray(ds["standard_status"].values) == StandardStatus.OK
        values = np.where(ok, np.asarray(ds["std_fwhm"].values, dtype=float), np.nan)
        estimate = combine_fwhm(values, np.asarray(ds["std_fwhm_err"].values))
        out.update(
            measured=estimate.fwhm,
            measured_err=estimate.err,
            n=estimate.n,
            scatter=estimate.scatter,
            reliable=estimate.reliable,
        )
    return out


def calibration_warning(ds: xr.Dataset, /) -> str:
    """'' or why the calibration of a computed exposure is doubtful: it rests on one or
    two standards, or the FWHM it used disagrees with the one measured on the standards."""
    problems = [_standards_warning(ds)]
    resolution = resolution_summary(ds)
    used, measured = resolution["used"], resolution["measured"]
    if resolution["reliable"] and np.isfinite(used) and abs(used / measured - 1.0) > FWHM_TOLERANCE:
        problems.append(
            f"FWHM {used:.3g} A ({resolution['source']}) disagrees with the {measured:.3g} A "
            f"measured on {resolution['n']} {resolution['on']}: check SPECFWHM / --fwhm"
        )
    return "; ".join(p for p in problems if p)


#: a FWHM used more than this fraction away from the measured one is warned about
FWHM_TOLERANCE = 0.25


def _standards_warning(ds: xr.Dataset) -> str:
    used = np.asarray(ds["standard_status"].values) == StandardStatus.OK
    n = int(used.sum())
    if n == 1:
        return "only 1 standard contributes: no check of the calibration against another star"
    if n == 2:
        if "std_zero_point" in ds:
            zp = np.asarray(ds["std_zero_point"].values, dtype=float)[used]
            limit = float(ds.attrs.get("gate_zp_limit", np.inf))
            if np.all(np.isfinite(zp)) and abs(zp[0] - zp[1]) > limit:
                return (
                    f"only 2 standards contribute and they disagree by {abs(zp[0] - zp[1]):.2f} "
                    "mag: which is right cannot be told"
                )
        return "only 2 standards contribute: no robust check of their agreement"
    return ""


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
    """Write to a temporary file beside ``path`` and rename it into place.

    A name ending in ``.gz`` gets a gzip-compressed file (no name or time
    stamp in its header, as ``gzip -n``: the same Dataset gives the same bytes).
    """
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb") as out:
        if path.suffix.lower() == ".gz":
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=out, compresslevel=_GZIP_LEVEL, mtime=0
            ) as packed:
                for hdu in hdus:
                    packed.write(hdu.tobytes())
        else:
            for hdu in hdus:
                out.write(hdu.tobytes())
        out.flush()
        os.fsync(out.fileno())


def _check_dtype(dtype) -> str:
    """'float32' or 'float64' from a name or NumPy type; OptionError otherwise."""
    try:
        name = np.dtype(dtype).name if dtype is not None else None
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise OptionError(
            f"write_red(dtype={dtype!r}): the calibrated flux and variance are written as "
            "'float32' or 'float64'; give one of those"
        )
    return str(name)


def write_red(ds: xr.Dataset, path, *, overwrite: bool = False, dtype: str = "float32") -> Path:
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
        The output file; a name ending in ``.gz`` (``out.fits.gz``) is written
        gzip-compressed, which :func:`open_red` reads back.
    overwrite : bool
        Replace ``path`` if it exists.
    dtype : {'float32', 'float64'}
        The type of a flux-calibrated exposure's flux and variance images.
        'float32' (default) halves them: the values are written in units of
        ``10**-17 erg/(s cm2 Angstrom)`` (variance ``10**-34 erg2/(s2 cm4
        Angstrom2)``), that is times 1e17 (1e34), so that even variances of
        1e-40 erg2/(s2 cm4 Angstrom2) stay in float32's normal range; float32
        keeps 7 significant digits, far below the noise.  :func:`open_red`
        returns the physical values (float64) in ``erg/(s cm2 Angstrom)``.
        'float64' writes the values as they are, unscaled.  Data in counts
        and every other HDU keep their own type, so an unprocessed Dataset
        writes back its input exactly.

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
    OptionError
        If ``dtype`` is not 'float32' or 'float64'.
    ValueError
        If ``ds`` has no ``flux``/``variance`` or no fiber types.

    Notes
    -----
    The file is written to a temporary file in the destination folder and
    renamed into place, so a failure never leaves a partial file (temporary
    files that killed writers left for this name are removed first:
    :func:`kspec_xr._base.paths.sweep_stale_temps`).  The flux ``units``
    become ``BUNIT`` (and the variance's its BUNIT), spelled as the FITS
    standard spells units (``erg/(s cm2 Angstrom)``, which
    ``astropy.units.Unit(s, format="fits")`` reads; kspecdr's
    ``erg/cm2/s/A`` would be per ampere); a flux-calibrated exposure gets its summary
    cards (``FLUXCAL``, ``FCALNSTR``, ``FCALRMS``, one ``HISTORY`` line per
    standard; :func:`calibration_header`);
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
    dtype = _check_dtype(dtype)
    dest = _output_file(path, overwrite)
    computed = ds.compute()  # one dask compute for every lazy variable
    if "calibration" in computed and "standard_reason" in computed:
        if primary_header(computed).get("FLUXCAL") is not True:  # not yet described
            computed = calibration_header(computed)
    hdus = _Writer(computed, dtype).hdus()
    _write_atomically(dest, hdus, overwrite)
    return dest
