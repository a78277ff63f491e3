"""Where an exposure came from and what was done to it: header cards and history.

A Dataset read from a RED file keeps its primary header as the attribute
``fits_header`` (newline-separated 80-character cards, no ``END``) and the
lines of its processing as ``history``.  :func:`primary_header` reads the
header, :func:`with_header_cards` sets cards, :func:`add_history` appends a
line (one per stage, as xclim's ``update_history`` does); the writer turns
the history into ``HISTORY`` cards and adds :func:`package_versions`.
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import xarray as xr
from astropy.io import fits

from .schema import HEADER_ATTR, HISTORY_ATTR

__all__ = [
    "primary_header",
    "with_header_cards",
    "add_history",
    "header_to_string",
    "header_from_string",
    "package_versions",
]

#: header keyword -> package whose version it records
_VERSION_CARDS = {
    "HIERARCH KSPECXR VERSION": "kspec_xr",
    "HIERARCH KSPECXR XARRAY": "xarray",
    "HIERARCH KSPECXR ASTROPY": "astropy",
    "HIERARCH KSPECXR NUMPY": "numpy",
}


def header_to_string(header: fits.Header) -> str:
    """Serialise a header as newline-separated 80-character cards (no END card).

    This is the form kept in ``fits_header`` attributes: a plain ``str`` that
    netCDF stores as is and :func:`header_from_string` parses back exactly.
    """
    return header.tostring(sep="\n", endcard=False, padding=False)


def header_from_string(text: str) -> fits.Header:
    """Inverse of :func:`header_to_string`."""
    if not text:
        return fits.Header()
    return fits.Header.fromstring(text, sep="\n")


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


def package_versions() -> dict[str, str]:
    """Header keyword -> version of kspec_xr and the packages its results depend on."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    """Looked up once per process (the installed versions do not change under it)."""
    out = {}
    for keyword, package in _VERSION_CARDS.items():
        try:
            out[keyword] = version(package)
        except PackageNotFoundError:  # running from a source tree
            out[keyword] = "0+unknown"
    return out
