"""What the RED reader and writer share: the layout's names and the FITS encoding.

- The names of the HDUs and cards of the RED layout and of the ``KX*`` cards
  with which the writer describes variables that do not come from the file.
- Small helpers both sides need (unique variable names, byte order, unit and
  angle conversions, bit-exact comparison).
- The FITS encoding itself.  The RED writer must reproduce an input file card
  for card.  Astropy builds the *data* part of an HDU well, but when it is
  handed a header it reorders or strips cards.  So the writer lets astropy
  encode each HDU on its own, takes the data bytes and the structural cards
  it generated (``BITPIX``, ``NAXISn``, ``TFORMn`` …), merges those values
  into the header that was read from the file (keeping its card order,
  comments and every other card verbatim) and writes header and data blocks
  itself: :func:`encode_image` / :func:`encode_table`, :func:`merge_header`,
  :func:`update_checksums`, :func:`encode_attrs` / :func:`decode_attrs`,
  :func:`column_format`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy import units as u
from astropy.io import fits

from .._base import maskbits
from .._base.errors import RedFileError
from .._base.schema import (
    COLUMN_ATTR,
    HDU_ATTR,
    HEADER_ATTR,
    MEDIUM_ATTR,
    MEDIUM_SOURCE_ATTR,
    ORDER_ATTR,
    RAW_ATTR,
)

__all__ = [
    "BLOCK",
    "EncodedHDU",
    "column_format",
    "declare_long_strings",
    "decode_attrs",
    "encode_attrs",
    "encode_image",
    "encode_table",
    "merge_header",
    "narrowest_integers",
    "unit_scale",
    "update_checksums",
]

BLOCK = 2880

_VAR_CARD, _META_CARD, _DIM_CARD, _COL_CARD = "KXVAR", "KXMETA", "KXDIM", "KXCOL"
_ATTRS_CARD = "KXATTRS"

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
_MANAGED |= {MEDIUM_ATTR, MEDIUM_SOURCE_ATTR}  # the reader takes them from CTYPEn
_MANAGED |= set(maskbits.flag_attrs())
_MANAGED_DS = {HEADER_ATTR, ORDER_ATTR}
#: primary card: how many lines of ``attrs["history"]`` the header holds as HISTORY cards
_HISTORY_CARD = "KXHISTN"
_DEFAULT_FLUX_UNITS = "count"


def _input_file(path, error, what: str) -> Path:
    """``path`` as a Path, after checking that it names a readable regular file.

    A directory, FIFO, socket or device is refused before it is opened (reading
    a FIFO would block, a device would never end).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or os.PathLike, not {type(path).__name__}")
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows symbolic links, as open() would
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{what} {path} does not exist; check the path") from None
    except OSError as err:
        raise error(
            f"cannot read {what} {path} ({err.strerror or err}); check the path and its permissions"
        ) from None
    if not stat.S_ISREG(mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
        )
        raise error(f"{what} {path} is not a file but {kind}; give the path of a FITS file")
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
    """True if two arrays have the same shape, dtype (either byte order) and bits."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype.newbyteorder("=") != b.dtype.newbyteorder("="):
        return False
    a = a.astype(a.dtype.newbyteorder("="), copy=False)  # no copy of native data
    b = b.astype(b.dtype.newbyteorder("="), copy=False)  # (nor of a broadcast view)
    return bool(np.all(_bits_equal(a, b)))


# --- units ------------------------------------------------------------------------
# Units are written as the FITS standard spells them (Pence et al. 2010, §4.3),
# which astropy reads with ``u.Unit(s, format="fits")``: 'erg/(s cm2 Angstrom)',
# 'erg2/(s2 cm4 Angstrom2)', 'count', a scale as '10**-17 erg/(s cm2 Angstrom)'.
# kspecdr (and earlier kspec_xr) wrote 'erg/cm2/s/A' -- FITS reads 'A' as the
# ampere -- 'Counts' and '(erg/cm2/s/A)2'; those are read as the units they meant.

_SCALE = re.compile(
    r"^\s*(?:10\s*(?:\*\*|\^)\s*\(?\s*([+-]?\d+)\s*\)?|(\d[\d.]*[eE][+-]?\d+))\s+(\S.*)$"
)


def _modern_spelling(units: str) -> str:
    """``units`` with kspecdr's spellings replaced: 'A' beside 'erg' (Å), 'Counts', '(…)2'."""
    s = re.sub(r"(?i)(?<![A-Za-z])counts?(?![A-Za-z])", "count", units.strip())
    if re.search(r"(?<![A-Za-z])erg(?![A-Za-z])", s):
        s = re.sub(r"(?<![A-Za-z0-9_])A(?![A-Za-z0-9_])", "Angstrom", s)
    return re.sub(r"\)\s*(\d+)$", r")**\1", s)


def _parse_unit(units) -> u.UnitBase | None:
    """The astropy unit a unit string means (FITS or kspecdr spelling), or None."""
    if not isinstance(units, str):
        return None
    return _parse_unit_text(units)


# Unit strings are parsed once per process: astropy's parser (and its "did you
# mean" search on a failure) costs ~0.1 ms a call, and a calibrated file has
# a few hundred unit strings, nearly all the same.  Astropy units are immutable.
@functools.lru_cache(maxsize=1024)
def _parse_unit_text(units: str) -> u.UnitBase | None:
    s = _modern_spelling(units)
    power = re.fullmatch(r"\((.*)\)\s*(?:\*\*|\^)\s*\(?([+-]?\d+)\)?", s)
    if power is not None:
        inner = _parse_unit(power.group(1))
        return None if inner is None else inner ** int(power.group(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        for fmt in ("fits", None):
            try:
                return u.Unit(s, format=fmt)
            except (ValueError, TypeError):
                continue
    return None


def _fits_parses(units: str) -> bool:
    """True if ``u.Unit(units, format="fits")`` reads ``units`` without a complaint."""
    if isinstance(units, str):
        return _fits_parses_text(units)
    return _fits_parses_text.__wrapped__(units)


@functools.lru_cache(maxsize=1024)
def _fits_parses_text(units: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("error", u.UnitsWarning)
        try:
            u.Unit(units, format="fits")
        except (ValueError, TypeError, u.UnitsWarning):
            return False
    return True


def _unit_text(unit: u.UnitBase) -> str | None:
    """FITS spelling of an astropy unit ('erg/(Angstrom s cm2)', '10**-17 …'), or None."""
    scale = float(unit.scale)
    prefix = ""
    if scale != 1.0:
        if not scale > 0:
            return None
        power = int(round(np.log10(scale)))
        if not np.isclose(10.0**power, scale, rtol=1e-12, atol=0.0):
            return None
        prefix = f"10**{power} "
    base = u.CompositeUnit(1, unit.bases, unit.powers)
    try:
        text = base.to_string("fits", fraction="inline").replace(" / ", "/")
    except (ValueError, TypeError):
        return None
    return prefix + text if text else None


def unit_scale(units: str) -> tuple[float, str]:
    """The numeric factor of a unit string and the units without it.

    ``'10**-17 erg/(s cm2 Angstrom)'`` gives ``(1e-17, 'erg/(s cm2 Angstrom)')``
    (``'1e-17 …'`` too); a unit string without a factor gives ``(1.0, units)``.
    Physical values are the stored ones times the factor.
    """
    match = _SCALE.match(units) if isinstance(units, str) else None
    if match is None:
        return 1.0, units
    exponent, number, rest = match.groups()
    return (10.0 ** int(exponent) if exponent is not None else float(number)), rest.strip()


def physical_values(data, units: str):
    """Values stored in a scaled unit and that unit -> physical values and plain units.

    ``(data, '10**-17 erg/(s cm2 Angstrom)')`` gives ``(data * 1e-17`` as
    float64, ``'erg/(s cm2 Angstrom)')``; NumPy or dask (lazy) alike.  Units
    without a factor leave ``data`` as it is.
    """
    factor, plain = unit_scale(units)
    if factor == 1.0:
        return data, units
    return data.astype(np.float64) * factor, plain


def _scaled_units(factor: float, units: str) -> str:
    """``units`` with a power-of-ten factor in front (the inverse of :func:`unit_scale`)."""
    return f"10**{int(round(np.log10(factor)))} {units}"


def _fits_units(units) -> str | None:
    """How ``units`` is written as BUNIT/TUNIT: itself when FITS reads it so,
    else its FITS spelling; None when dimensionless or not expressible."""
    if not isinstance(units, str) or not units.strip():
        return None
    return _fits_units_text(units.strip())


@functools.lru_cache(maxsize=1024)
def _fits_units_text(text: str) -> str | None:
    unit = _parse_unit(text)
    if unit is None or unit == u.dimensionless_unscaled:
        return None
    if _modern_spelling(text) == text and _fits_parses(text):
        return text
    written = _unit_text(unit)
    return written if written is not None and _fits_parses(written) else None


def _square_tokens(units: str) -> str:
    """'erg/(s cm2 Angstrom)' -> 'erg2/(s2 cm4 Angstrom2)': every exponent doubled."""
    factor, rest = unit_scale(units)

    def doubled(match: re.Match) -> str:
        return f"{match.group(1)}{2 * int(match.group(2) or 1)}"

    squared = re.sub(r"([A-Za-z]+)([+-]?\d+)?", doubled, rest)
    return squared if factor == 1.0 else _scaled_units(factor**2, squared)


def _squared_units(units: str) -> str:
    """The units of a variance of values in ``units``.

    FITS spellings give FITS spellings ('erg/(s cm2 Angstrom)' ->
    'erg2/(s2 cm4 Angstrom2)', 'count' -> 'count2'); other strings keep the
    kspecdr form ('Counts' -> 'Counts2', 'erg/cm2/s/A' -> '(erg/cm2/s/A)2'),
    so that the units read from an old file do not change.
    """
    legacy = f"{units}2" if re.fullmatch(r"[A-Za-z]+", units) else f"({units})2"
    text = units.strip()
    if not text or _modern_spelling(text) != text or not _fits_parses(text):
        return legacy
    unit = _parse_unit(text)
    squared = _square_tokens(text)
    if unit is not None and _fits_parses(squared) and _parse_unit(squared) == unit**2:
        return squared
    written = _unit_text(unit**2) if unit is not None else None
    return written if written is not None else legacy


def _same_unit(a: str, b: str) -> bool:
    """True if two unit strings mean the same (``'degrees'`` and ``'deg'``,
    kspecdr's ``'erg/cm2/s/A'`` and ``'erg/(s cm2 Angstrom)'``)."""
    a, b = a.strip(), b.strip()
    if a == b:
        return True
    for names in (_DEGREES, _RADIANS):
        if a.lower() in names and b.lower() in names:
            return True
    unit_a, unit_b = _parse_unit(a), _parse_unit(b)
    if unit_a is None or unit_b is None:
        return False
    try:
        return bool(unit_a == unit_b)
    except (ValueError, TypeError):  # pragma: no cover - exotic units
        return False


def _default_column_units(values: np.ndarray) -> str:
    return "1" if values.dtype.kind in "iufc" else ""


def _extname(header: fits.Header) -> str:
    return str(header.get("EXTNAME", "")).strip()


def _is_table(header: fits.Header) -> bool:
    return str(header.get("XTENSION", "")).strip().upper() in {"BINTABLE", "TABLE"}


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
    except (ValueError, TypeError, u.UnitsError):
        raise RedFileError(
            f"{where} has TUNIT {unit!r}, which is not an angle; "
            "set it to 'rad' or 'deg' (2dfdr writes radians)"
        ) from None
    return values * factor, unit


def _angle_from_degrees(values: np.ndarray, unit: str) -> np.ndarray:
    if unit.strip().lower() in _RADIANS:
        return np.radians(values)
    return values / u.Unit(unit).to(u.deg)


def _wcs_wavelength(
    header: fits.Header, npix: int, axis: int, *, where: str | None = None
) -> np.ndarray | None:
    """Wavelengths (Å) of a linear (or -LOG) WCS along FITS axis ``axis``, or None.

    None when the header has no ``CRVALn`` and ``CDELTn`` (or ``CDn_n``).
    ``CUNITn`` may be any length astropy knows ('Angstrom', 'nm', 'm', …;
    none means Å).  Cards that do not give increasing, positive, finite
    wavelengths (a step that is not a positive number, a ``CUNITn`` that is
    not a length, …) raise :class:`RedFileError` naming ``where`` (e.g. ``"RED
    file x.fits, HDU PRIMARY"``) and the card; without ``where`` (the writer,
    which only asks whether the header still describes the axis) they give None.
    """

    def number(card: str, default=None) -> float | None:
        value = header.get(card, default)
        if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
            return float(value) if np.isfinite(value) else None
        return None

    def grid() -> np.ndarray | tuple[str, str]:
        """The wavelengths, or the card at fault and what is wrong with it."""
        crval, cdelt, crpix = number(f"CRVAL{axis}"), number(step_card), number(f"CRPIX{axis}", 1.0)
        if crval is None:
            return f"CRVAL{axis}", "not a finite number"
        if cdelt is None:
            return step_card, "not a finite number"
        if crpix is None:
            return f"CRPIX{axis}", "not a finite number"
        if cdelt <= 0:
            return step_card, "the wavelength step per pixel must be positive"
        log = str(header.get(f"CTYPE{axis}", "")).strip().upper().endswith("-LOG")
        if log and crval <= 0:
            return f"CRVAL{axis}", "a logarithmic (-LOG) axis needs a positive reference value"
        unit = str(header.get(f"CUNIT{axis}", "")).strip()
        factor = 1.0
        if unit and unit.lower() not in {"angstrom", "angstroms", "a"}:
            try:
                factor = u.Unit(unit).to(u.AA)
            except u.UnitsError:
                return f"CUNIT{axis}", "not a unit of length ('Angstrom', 'nm', 'm', ...)"
            except (ValueError, TypeError):
                return f"CUNIT{axis}", "not a unit astropy knows; use 'Angstrom', 'nm' or 'm'"
        with np.errstate(all="ignore"):
            offset = (np.arange(1, npix + 1, dtype=np.float64) - crpix) * cdelt
            wave = (crval * np.exp(offset / crval) if log else crval + offset) * factor
        if not np.all(np.isfinite(wave)) or wave[0] <= 0:
            return f"CRVAL{axis}", (
                f"the axis runs from {wave[0]:.6g} to {wave[-1]:.6g} Å, and wavelengths must "
                "be positive and finite"
            )
        if npix > 1 and not np.all(np.diff(wave) > 0):
            return step_card, "the step is too small for the wavelengths to increase"
        return wave

    step_card = f"CDELT{axis}" if f"CDELT{axis}" in header else f"CD{axis}_{axis}"
    if f"CRVAL{axis}" not in header or step_card not in header:
        return None
    result = grid()
    if not isinstance(result, tuple):
        return result
    if where is None:
        return None
    card, problem = result
    raise RedFileError(
        f"{where}, card {card} = {header.get(card)!r}: {problem}; fix the card, or give the "
        "wavelength of every pixel in a WAVELA image"
    )


#: spectral CTYPEn of the FITS WCS (Greisen et al. 2006, paper III) -> medium
_CTYPE_MEDIUM = {"AWAV": "air", "WAVE": "vacuum"}
_MEDIUM_CTYPE = {medium: ctype for ctype, medium in _CTYPE_MEDIUM.items()}


def _wcs_medium(header: fits.Header, axis: int) -> str | None:
    """'air' / 'vacuum' as ``CTYPE{axis}`` declares it (``AWAV``, ``WAVE-LOG``, …), else None.

    2dfdr writes ``'Wavelength'``, which does not say: None.
    """
    ctype = str(header.get(f"CTYPE{axis}", "")).strip().upper()
    return _CTYPE_MEDIUM.get(ctype.split("-", 1)[0]) if ctype[4:5] in ("", "-") else None


def _declare_medium(header: fits.Header, axis: int, medium) -> None:
    """Set ``CTYPE{axis}`` to ``medium`` if it declares another one (or none).

    The algorithm code (``-LOG``) is kept; a header that already says
    ``medium`` is left alone, so a plain round trip changes nothing.
    """
    if medium not in _MEDIUM_CTYPE or _wcs_medium(header, axis) == medium:
        return
    ctype = str(header.get(f"CTYPE{axis}", "")).strip().upper()
    if _wcs_medium(header, axis) is not None:
        suffix = ctype[4:]  # the other medium's algorithm code
    else:
        suffix = "-LOG" if ctype.endswith("-LOG") else ""
    header[f"CTYPE{axis}"] = (_MEDIUM_CTYPE[medium] + suffix, f"{medium} wavelengths (FITS WCS)")


#: keywords whose value follows from the data (taken from astropy's header)
_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT"}
_STRUCTURAL |= {"TFIELDS", "THEAP", "BSCALE", "BZERO"}
#: indexed column keywords; the first group follows from the column definitions
_COLUMN_STRUCTURAL = ("TTYPE", "TFORM", "TUNIT", "TNULL", "TSCAL", "TZERO", "TDISP", "TDIM")
_COLUMN_OTHER: tuple[str, ...] = (
    "TBCOL",
    "TLMIN",
    "TLMAX",
    "TDMIN",
    "TDMAX",
    "TCTYP",
    "TCUNI",
    "TCRPX",
)
_COLUMN_OTHER += ("TCRVL", "TCDLT", "TCROT", "TRPOS")
_COLUMN_KEY = re.compile(rf"^({'|'.join(_COLUMN_STRUCTURAL + _COLUMN_OTHER)})(\d+)$")
_NAXIS_KEY = re.compile(r"^NAXIS\d+$")
#: cards astropy adds with their default value; absent in a stored header means the same
_DEFAULT_VALUES = {"BSCALE": 1, "BZERO": 0, "TSCAL": 1, "TZERO": 0}


def _split_column_key(keyword: str) -> tuple[str, int] | None:
    match = _COLUMN_KEY.match(keyword)
    return (match.group(1), int(match.group(2))) if match else None


def _is_structural(keyword: str) -> bool:
    if keyword in _STRUCTURAL or _NAXIS_KEY.match(keyword):
        return True
    split = _split_column_key(keyword)
    return split is not None and split[0] in _COLUMN_STRUCTURAL


def _same_value(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.rstrip() == b.rstrip()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # pragma: no cover - exotic card values
        return False


def _default_for(keyword: str):
    split = _split_column_key(keyword)
    return _DEFAULT_VALUES.get(split[0] if split else keyword)


def merge_header(
    stored: fits.Header, generated: fits.Header, renumber: dict[int, int] | None = None
) -> fits.Header:
    """Stored card order and comments, with the structural values astropy generated.

    Parameters
    ----------
    stored : astropy.io.fits.Header
        The header kept from the file (or extra cards for a new HDU).
    generated : astropy.io.fits.Header
        The header astropy wrote for the re-encoded data.
    renumber : dict, optional
        Old column number -> new column number, when table columns were
        dropped; columns missing from the mapping lose their keywords.

    Returns
    -------
    astropy.io.fits.Header
        Every non-structural card of ``stored`` verbatim and in place; each
        structural card with ``generated``'s value (verbatim when unchanged);
        structural cards only ``generated`` has, inserted after their
        predecessor in ``generated``.
    """
    wanted = {card.keyword: card for card in generated.cards}
    out: list[fits.Card] = []
    for card in stored.cards:
        keyword = card.keyword
        split = _split_column_key(keyword)
        if split is not None and renumber is not None:
            new_index = renumber.get(split[1])
            if new_index is None:
                continue
            keyword = f"{split[0]}{new_index}"
        if not _is_structural(keyword):
            out.append(
                card if keyword == card.keyword else fits.Card(keyword, card.value, card.comment)
            )
            continue
        new = wanted.get(keyword)
        if new is None:
            continue  # no longer true of the data (e.g. NAXIS3 of a squeezed image)
        if keyword == card.keyword and _same_value(card.value, new.value):
            out.append(card)
        else:
            out.append(fits.Card(keyword, new.value, card.comment or new.comment))
    # a linked list: inserting after a card costs the same wherever it is (node 0
    # is the start; `present` names each keyword's last card, which an insertion
    # never changes for the keywords already there)
    cards: list = [None, *out]
    following = [*range(1, len(cards)), -1]
    present = {card.keyword: i for i, card in enumerate(cards) if i}
    anchor = 0
    for card in generated.cards:
        if card.keyword in present:
            anchor = present[card.keyword]
            continue
        if _same_value(card.value, _default_for(card.keyword)):
            continue
        new = len(cards)
        cards.append(card)
        following.append(following[anchor])
        following[anchor] = new
        anchor = present[card.keyword] = new
    merged, node = [], following[0]
    while node != -1:
        merged.append(cards[node])
        node = following[node]
    return fits.Header(merged)


_LONGSTRN = ("LONGSTRN", "OGIP 1.0", "The OGIP long string convention may be used.")


def declare_long_strings(header: fits.Header) -> None:
    """Add ``LONGSTRN = 'OGIP 1.0'`` before the first long ``KX*`` string card.

    The cards the writer makes (``KXATTRS``, ``KXMETA``, ``KXCOLn``) continue on
    ``CONTINUE`` cards; fitsverify asks for ``LONGSTRN`` to announce that.  Only
    the writer's own cards are looked at, so a header read from a file is
    written back as it was.
    """
    if _LONGSTRN[0] in header:
        return
    for index, card in enumerate(header.cards):
        if card.keyword.startswith("KX") and isinstance(card.value, str) and len(card.image) > 80:
            header.insert(index, _LONGSTRN)
            return


def narrowest_integers(values: np.ndarray) -> np.ndarray:
    """Integers in the smallest FITS integer type (BITPIX 8, 16, 32, 64) holding them."""
    if values.dtype.kind not in "iu" or values.size == 0:
        return values
    low, high = int(values.min()), int(values.max())
    for dtype in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype, copy=False)
    return values  # uint64 beyond int64: astropy's BZERO encoding


@dataclass
class EncodedHDU:
    """One HDU ready to write: its final header and its padded data bytes."""

    header: fits.Header
    data: bytes

    def tobytes(self) -> bytes:
        """Header blocks followed by data blocks."""
        return self.header.tostring(endcard=True, padding=True).encode("ascii") + self.data


def _astropy_encoded(hdu, primary: bool) -> tuple[fits.Header, bytes]:
    """Let astropy write ``hdu`` to memory; return its header and data bytes."""
    hdus = [hdu] if primary else [fits.PrimaryHDU(), hdu]
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    raw = buffer.getvalue()
    # the header blocks are parsed as fits.open parses them, without building an
    # HDUList: the HDU is the last in the buffer (after an empty primary), so its
    # data are the rest of the buffer
    start = 0 if primary else _header_end(raw, 0)
    end = _header_end(raw, start)
    if (len(raw) - end) % BLOCK:  # pragma: no cover - astropy pads every HDU
        raise ValueError("astropy wrote an HDU that is not a whole number of blocks")
    return fits.Header.fromstring(raw[start:end].decode("ascii")), raw[end:]


_END_CARD = b"END" + b" " * 77


def _header_end(raw: bytes, start: int) -> int:
    """Offset of the first block after the header that begins at ``start``."""
    for block in range(start, len(raw), BLOCK):
        for card in range(block, block + BLOCK, 80):
            if raw[card : card + 80] == _END_CARD:
                return block + BLOCK
    raise ValueError("no END card in the header astropy wrote")  # pragma: no cover


def _read_back(header: fits.Header, payload: bytes, primary: bool):
    """The data astropy decodes from an encoded HDU (to check a scaling is exact)."""
    head = b"" if primary else fits.PrimaryHDU().header.tostring().encode("ascii")
    text = head + header.tostring().encode("ascii") + payload
    with fits.open(io.BytesIO(text), memmap=False) as hdul:
        data = hdul[0 if primary else 1].data
        return None if data is None else data.copy()


_INT_FOR_BITPIX = {8: np.uint8, 16: np.int16, 32: np.int32, 64: np.int64}


def _raw_integers(values: np.ndarray, dtype, scale: float, zero: float, blank=None):
    """Physical values -> stored integers for a scaled image or column."""
    values = np.asarray(values, dtype=np.float64)
    raw = np.rint((values - zero) / scale)
    bad = ~np.isfinite(raw)
    if bad.any():
        raw[bad] = 0 if blank is None else blank
    return raw.astype(dtype)


def encode_image(
    data: np.ndarray, *, stored: fits.Header | None = None, primary: bool = False
) -> tuple[fits.Header, bytes]:
    """Encode an image HDU's data with astropy.

    Parameters
    ----------
    data : numpy.ndarray
        Physical values, in on-disk axis order (NumPy order: last axis is NAXIS1).
    stored : astropy.io.fits.Header, optional
        The header read from the file; a ``BITPIX``/``BSCALE``/``BZERO``
        scaling in it is applied again so that scaled integers come back —
        only if that reproduces ``data`` exactly (processed values are
        written as floats instead of being quantised).
    primary : bool
        Encode as a primary HDU.

    Returns
    -------
    header, data_bytes
        The structural header astropy generated and the padded data bytes.
    """
    data = np.asarray(data)
    bitpix = stored.get("BITPIX") if stored is not None else None
    scale = stored.get("BSCALE", 1) if stored is not None else 1
    zero = stored.get("BZERO", 0) if stored is not None else 0
    if data.size == 0 and stored is not None and stored.get("NAXIS") == 0:
        header, payload = _astropy_encoded(
            fits.PrimaryHDU() if primary else fits.ImageHDU(), primary
        )
        header["BITPIX"] = stored["BITPIX"]  # no data: keep the declared type
        return header, payload
    # astropy decodes scaled integers to floats (unsigned ones to uint): scale back
    scaled = bitpix in _INT_FOR_BITPIX and (scale, zero) != (1, 0) and data.dtype.kind == "f"
    if scaled and stored is not None and bitpix is not None:
        raw = _raw_integers(data, _INT_FOR_BITPIX[bitpix], scale, zero, stored.get("BLANK"))
        hdu = fits.PrimaryHDU(raw) if primary else fits.ImageHDU(raw)
        header, payload = _astropy_encoded(hdu, primary)
        header["BSCALE"] = scale
        header["BZERO"] = zero
        if "BLANK" in stored:
            header["BLANK"] = stored["BLANK"]
        if _same_bits(_read_back(header, payload, primary), data):
            return header, payload
    if data.size and data.dtype.kind in "iuf" and data.dtype.newbyteorder("=").str in _PLAIN_IMAGE:
        return _plain_image(data, primary)
    hdu = fits.PrimaryHDU(data) if primary else fits.ImageHDU(data)
    return _astropy_encoded(hdu, primary)


#: dtypes FITS images store as they are (big-endian, no BZERO): encoded without astropy
_PLAIN_IMAGE = ("|u1", "<i2", "<i4", "<i8", "<f4", "<f8", ">i2", ">i4", ">i8", ">f4", ">f8")


@functools.lru_cache(maxsize=64)
def _image_template(dtype: str, ndim: int, primary: bool) -> fits.Header:
    """The header astropy writes for an image of this dtype and number of axes."""
    shape = (1,) * ndim
    empty = np.zeros(shape, dtype=dtype)
    return _astropy_encoded(fits.PrimaryHDU(empty) if primary else fits.ImageHDU(empty), primary)[0]


def _plain_image(data: np.ndarray, primary: bool) -> tuple[fits.Header, bytes]:
    """What :func:`_astropy_encoded` gives for an unscaled image, made directly.

    The header is astropy's own for the dtype and number of axes (made once,
    on a one-pixel image) with the axis lengths set; the data are the
    big-endian bytes in C order, zero-padded to whole blocks, as astropy
    writes them.
    """
    header = _image_template(data.dtype.newbyteorder("=").str, data.ndim, primary).copy()
    for axis, n in enumerate(reversed(data.shape), start=1):
        header[f"NAXIS{axis}"] = n
    payload = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder(">")).tobytes()
    return header, payload + b"\0" * (-len(payload) % BLOCK)


# --- table columns ----------------------------------------------------------------

_FORMAT_FOR_KIND = {
    ("b", 1): ("L", None),
    ("u", 1): ("B", None),
    ("i", 2): ("I", None),
    ("i", 4): ("J", None),
    ("i", 8): ("K", None),
    ("u", 2): ("I", 2**15),
    ("u", 4): ("J", 2**31),
    ("u", 8): ("K", 2**63),
    ("f", 4): ("E", None),
    ("f", 8): ("D", None),
    ("c", 8): ("C", None),
    ("c", 16): ("M", None),
}
_BITS_FOR_CODE = {"B": 8, "I": 16, "J": 32, "K": 64}


def _strip_repeat(tform: str) -> tuple[int, str]:
    match = re.match(r"^\s*(\d*)([A-Za-z])", tform)
    if match is None:
        raise ValueError(f"unreadable TFORM {tform!r}")
    return (int(match.group(1)) if match.group(1) else 1), match.group(2).upper()


def column_format(values: np.ndarray) -> tuple[str, int | None, str | None]:
    """A binary-table ``TFORM`` for an array whose first axis is the row.

    Returns
    -------
    tform, tzero, tdim
        ``tzero`` is the unsigned-integer offset (or None) and ``tdim`` the
        ``TDIM`` string for cells of more than one axis (or None).

    Raises
    ------
    TypeError
        For dtypes FITS tables cannot hold (datetimes, objects that are not
        strings, multi-dimensional strings).
    """
    values = np.asarray(values)
    cell = values.shape[1:]
    repeat = int(np.prod(cell)) if cell else 1
    tdim = "(" + ",".join(str(n) for n in reversed(cell)) + ")" if len(cell) > 1 else None
    kind = values.dtype.kind
    if kind in "US":
        if cell:
            raise TypeError("multi-dimensional string columns cannot be written to FITS")
        width = max(1, int(np.char.str_len(values).max())) if values.size else 1
        return f"{width}A", None, None
    if kind == "f" and values.dtype.itemsize == 2:
        kind, size = "f", 4
    else:
        size = values.dtype.itemsize
    try:
        code, tzero = _FORMAT_FOR_KIND[(kind, size)]
    except KeyError:
        raise TypeError(f"a FITS table cannot hold values of dtype {values.dtype}") from None
    prefix = "" if repeat == 1 and not cell else str(repeat)
    return f"{prefix}{code}", tzero, tdim


def _stored_column(stored: fits.Header, number: int) -> dict:
    return {
        key: stored[f"{key}{number}"]
        for key in ("TFORM", "TUNIT", "TNULL", "TSCAL", "TZERO", "TDISP", "TDIM")
        if f"{key}{number}" in stored
    }


class _ColumnSpec(NamedTuple):
    """One column as it will be written: its keywords and the values to store."""

    name: str
    tform: str
    values: np.ndarray  # physical values, or the raw integers of a scaled column
    unit: str | None
    tzero: int | None  # the unsigned-integer offset
    null: int | None
    disp: str | None
    dim: str | None


def _column_for(name: str, values: np.ndarray, unit: str | None, stored: dict, scaling=True):
    """A :class:`_ColumnSpec` for one column, and its raw (TSCAL, TZERO) scaling or None.

    The stored ``TFORMn`` (and ``TDIMn``, ``TNULLn``, ``TDISPn``) are reused
    while the values still fit them; a scaled integer column read as floats
    is written as raw integers again when ``scaling`` is allowed.
    """
    values = np.asarray(values)
    tform, tzero, tdim = column_format(values)
    scale, zero = stored.get("TSCAL", 1), stored.get("TZERO", 0)
    raw_scaling = None
    if "TFORM" in stored:
        repeat, code = _strip_repeat(stored["TFORM"])
        new_repeat, new_code = _strip_repeat(tform)
        scaled = code in _BITS_FOR_CODE and (scale, zero) != (1, 0)
        if scaling and scaled and values.dtype.kind == "f":
            values = _raw_integers(values, _INT_FOR_BITPIX[_BITS_FOR_CODE[code]], scale, zero)
            tform, tzero, tdim = stored["TFORM"], None, stored.get("TDIM")
            raw_scaling = (scale, zero)
        elif code == new_code and (repeat >= new_repeat if code == "A" else repeat == new_repeat):
            tform, tdim = stored["TFORM"], stored.get("TDIM", tdim)
    integer = _strip_repeat(tform)[1] in _BITS_FOR_CODE
    spec = _ColumnSpec(
        name, tform, values, unit, tzero, stored.get("TNULL") if integer else None,
        stored.get("TDISP"), tdim,
    )  # fmt: skip
    return spec, raw_scaling


def _astropy_column(spec: _ColumnSpec) -> fits.Column:
    return fits.Column(
        name=spec.name,
        format=spec.tform,
        array=spec.values,
        unit=spec.unit,
        bzero=spec.tzero,
        null=spec.null,
        disp=spec.disp,
        dim=spec.dim,
    )


#: big-endian storage of the codes the direct encoder writes (L and A apart)
_STORAGE = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8",
            "C": ">c8", "M": ">c16"}  # fmt: skip
#: the comments astropy gives a binary table's mandatory cards
_TABLE_CARDS = (
    ("XTENSION", "BINTABLE", "binary table extension"),
    ("BITPIX", 8, "array data type"),
    ("NAXIS", 2, "number of array dimensions"),
    ("NAXIS1", 0, "length of dimension 1"),
    ("NAXIS2", 0, "length of dimension 2"),
    ("PCOUNT", 0, "number of group parameters"),
    ("GCOUNT", 1, "number of groups"),
    ("TFIELDS", 0, "number of table fields"),
)


def _stored_cells(spec: _ColumnSpec, nrows: int) -> np.ndarray | None:
    """(nrows, bytes per row) uint8 of one column as FITS stores it, or None to leave it
    to astropy (a format or dtype the direct encoder does not write)."""
    repeat, code = _strip_repeat(spec.tform)
    values = spec.values
    if values.shape[:1] != (nrows,) or values.dtype.kind not in "biufcUS":
        return None
    cell = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
    if code == "A":
        if values.ndim != 1 or values.dtype.kind not in "US":
            return None
        try:
            raw = values.astype(f"S{repeat}") if values.dtype.kind == "U" else values
        except UnicodeEncodeError:
            return None  # astropy says what is wrong with it
        if raw.dtype.itemsize > repeat and raw.size and np.char.str_len(raw).max() > repeat:
            return None  # astropy would truncate; it is left to say so
        return np.ascontiguousarray(raw, dtype=f"S{repeat}").view(np.uint8).reshape(nrows, repeat)
    if cell != repeat or values.dtype.kind in "US":
        return None
    if code == "L":
        if values.dtype.kind != "b":
            return None
        stored = np.where(values, np.uint8(ord("T")), np.uint8(ord("F")))
    elif code in _STORAGE:
        kind = values.dtype.kind
        if code in "CM" and kind != "c" or code in "ED" and kind not in "fiu":
            return None
        if code in _BITS_FOR_CODE:
            if kind not in "iu":
                return None
            if spec.tzero is None:
                shifted = values.astype(np.int64)
            else:  # unsigned: stored minus the offset, as astropy does
                shifted = (values.astype(np.uint64) - np.uint64(spec.tzero)).view(np.int64)
            info = np.iinfo(_STORAGE[code])
            if shifted.size and (shifted.min() < info.min or shifted.max() > info.max):
                return None
            stored = shifted.astype(_STORAGE[code])
        else:
            stored = values.astype(_STORAGE[code])
    else:
        return None
    stored = np.ascontiguousarray(stored)
    return stored.view(np.uint8).reshape(nrows, stored.dtype.itemsize * cell)


def _direct_table(specs: list[_ColumnSpec], nrows: int) -> tuple[fits.Header, bytes] | None:
    """What astropy writes for an unscaled binary table, made directly, or None.

    The header has astropy's cards in astropy's order (``TTYPE``, ``TFORM``,
    ``TUNIT``, ``TNULL``, ``TZERO``, ``TDISP``, ``TDIM`` per column); the rows
    are the columns' big-endian bytes side by side, strings NUL-padded,
    logicals ``T``/``F``, zero-padded to whole blocks.  A column it does not
    handle leaves the whole table to astropy.
    """
    cells = []
    for spec in specs:
        stored = _stored_cells(spec, nrows)
        if stored is None:
            return None
        cells.append(stored)
    rows = np.concatenate(cells, axis=1) if cells else np.zeros((nrows, 0), np.uint8)
    sizes = {"NAXIS1": rows.shape[1], "NAXIS2": nrows, "TFIELDS": len(specs)}
    cards: list[tuple] = [(key, sizes.get(key, value), note) for key, value, note in _TABLE_CARDS]
    for n, spec in enumerate(specs, start=1):
        for key, value in (
            ("TTYPE", spec.name),
            ("TFORM", spec.tform),
            ("TUNIT", spec.unit),
            ("TNULL", spec.null),
            ("TZERO", spec.tzero),
            ("TDISP", spec.disp),
            ("TDIM", spec.dim),
        ):
            if value is not None and value != "":
                cards.append((f"{key}{n}", value))
    header = fits.Header(cards)
    payload = rows.tobytes()
    return header, payload + b"\0" * (-len(payload) % BLOCK)


def _encode_table_once(columns, stored: fits.Header, nrows, unscaled: set[int]):
    specs, scalings = [], {}
    for number, (name, values, unit, old) in enumerate(columns, start=1):
        spec = _stored_column(stored, old) if old else {}
        column, scaling = _column_for(name, values, unit, spec, number not in unscaled)
        specs.append(column)
        if scaling is not None:
            scalings[number] = scaling
    rows = max((len(spec.values) for spec in specs), default=0) if not nrows else nrows
    direct = None if scalings or not DIRECT_TABLES else _direct_table(specs, rows)
    if direct is not None:
        return *direct, scalings
    hdu = fits.BinTableHDU.from_columns(
        fits.ColDefs([_astropy_column(spec) for spec in specs]), nrows=nrows or 0
    )
    header, payload = _astropy_encoded(hdu, primary=False)
    for number, (scale, zero) in scalings.items():
        header.set(f"TSCAL{number}", scale, after=f"TFORM{number}")
        header.set(f"TZERO{number}", zero, after=f"TSCAL{number}")
    return header, payload, scalings


#: unscaled tables are encoded directly (:func:`_direct_table`); False: all by astropy
DIRECT_TABLES = True


def encode_table(
    columns: list[tuple[str, np.ndarray, str | None, int | None]],
    *,
    stored: fits.Header | None = None,
    nrows: int | None = None,
) -> tuple[fits.Header, bytes]:
    """Encode a binary table with astropy.

    Parameters
    ----------
    columns : list of (name, values, unit, stored_number)
        ``stored_number`` is the column's number in ``stored`` (its ``TFORMn``
        etc. are reused when the values still fit) or None for a new column.
    stored : astropy.io.fits.Header, optional
        The header read from the file.
    nrows : int, optional
        Row count, needed only when there are no columns.

    Returns
    -------
    header, data_bytes

    Notes
    -----
    A column stored with ``TSCALn``/``TZEROn`` keeps its scaling only if
    decoding gives back the values exactly; otherwise (processed values) it
    is written as plain floats rather than quantised.
    """
    stored = stored if stored is not None else fits.Header()
    unscaled: set[int] = set()
    while True:
        header, payload, scalings = _encode_table_once(columns, stored, nrows, unscaled)
        if not scalings:
            return header, payload
        back = _read_back(header, payload, primary=False)
        inexact = {n for n in scalings if not _same_bits(back.field(n - 1), columns[n - 1][1])}
        if not inexact:
            return header, payload
        unscaled |= inexact


# --- checksums --------------------------------------------------------------------


def _ones_complement_sum(data: bytes, start: int = 0) -> int:
    words = np.frombuffer(data, dtype=">u4").astype(np.uint64)
    total = int(words.sum()) + start
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


_EXCLUDE = frozenset(b":;<=>?@[\\]^_`")


def _encode_checksum(value: int) -> str:
    """ASCII encoding of a 32-bit checksum (Seaman, Pence & Rots 2002)."""
    asc = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        chars = [byte // 4 + 0x30] * 4
        chars[0] += byte % 4
        changed = True
        while changed:
            changed = False
            for j in (0, 2):
                if chars[j] in _EXCLUDE or chars[j + 1] in _EXCLUDE:
                    chars[j] += 1
                    chars[j + 1] -= 1
                    changed = True
        for j in range(4):
            asc[4 * j + i] = chars[j]
    return bytes(asc[-1:] + asc[:-1]).decode("ascii")


def update_checksums(hdu: EncodedHDU) -> None:
    """Recompute ``DATASUM``/``CHECKSUM`` in place if the header has them."""
    header = hdu.header
    if "CHECKSUM" not in header and "DATASUM" not in header:
        return
    datasum = _ones_complement_sum(hdu.data)
    if "DATASUM" in header:
        header["DATASUM"] = str(datasum)
    if "CHECKSUM" in header:
        header["CHECKSUM"] = "0" * 16
        text = header.tostring(endcard=True, padding=True).encode("ascii")
        total = _ones_complement_sum(text, datasum)
        header["CHECKSUM"] = _encode_checksum(~total & 0xFFFFFFFF)


# --- attributes <-> JSON -----------------------------------------------------------


def _to_json(value, where: str):
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, np.generic):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind not in "biufUS":
            raise TypeError(f"cannot write attribute {where} of dtype {array.dtype} to FITS")
        return {"__ndarray__": array.tolist(), "dtype": array.dtype.str, "shape": list(array.shape)}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v, where) for k, v in value.items()}
    raise TypeError(
        f"cannot write attribute {where} of type {type(value).__name__} to FITS; "
        "use a str, number, list or NumPy array"
    )


def _from_json(obj: dict):
    """A NumPy array for an ``{"__ndarray__": …}`` object; ValueError if it is malformed."""
    if "__ndarray__" not in obj:
        return obj
    try:
        dtype, shape = np.dtype(obj["dtype"]), obj["shape"]
        if dtype.kind not in "biufUS":  # what _to_json writes
            raise ValueError(f"dtype {dtype.str} is not one kspec_xr writes")
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise ValueError(f"shape {shape!r} is not a list of sizes")
        array = np.array(obj["__ndarray__"], dtype=dtype)
        return array[()] if not shape else array.reshape(shape)
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        detail = f"no {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"a malformed array ({detail})") from None


def encode_attrs(attrs: dict, where: str = "") -> str:
    """JSON text for an attrs dict (NumPy scalars and arrays keep their dtype).

    The text is plain printable ASCII without single quotes (escaped as
    ``\\u0027``): astropy misreads long (CONTINUE) strings in which a
    doubled quote falls at a segment boundary.
    """
    text = json.dumps(
        {k: _to_json(v, f"{where}.{k}") for k, v in attrs.items()},
        separators=(",", ":"),
        sort_keys=True,  # one text for one dict, whatever order it was built in
    )
    return text.replace("'", "\\u0027")


def decode_attrs(text: str) -> dict:
    """Inverse of :func:`encode_attrs`.

    Raises ValueError (a one-line reason) if ``text`` is not the JSON of an
    object, as a card edited or damaged outside kspec_xr may be.
    """
    if not isinstance(text, str):
        raise ValueError(f"a {type(text).__name__}, not the JSON text kspec_xr writes")
    try:
        value = json.loads(text, object_hook=_from_json)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError as err:  # a malformed array's ValueError passes as it is
        raise ValueError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value
