"""The photometric bands kspec_xr knows: names, filter curves, magnitude systems.

One table of each: the speclite filter names (:data:`KNOWN_BANDS`), the
Vega → AB offsets of the catalogue systems that are Vega-based
(:data:`VEGA_TO_AB`), the colours used for Teff (:data:`COLOR_PAIRS`), and the
transmission curves themselves, taken from `speclite
<https://speclite.readthedocs.io>`_ (never typed by hand) and read once per
process.

Filter curves are used as speclite tabulates them (wavelengths in A); speclite
does not convert between air and vacuum wavelengths, so neither do we.  An
air/vacuum shift (1.5--2.7 A in the optical) changes a broad-band magnitude by
well under 1 mmag.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import KspecError

__all__ = [
    "KNOWN_BANDS",
    "VEGA_TO_AB",
    "COLOR_PAIRS",
    "TEFF_FLAGS",
    "check_band",
    "check_bands",
    "filter_curve",
    "band_range",
    "ab_offset",
    "to_ab",
]

#: Filters this module knows, by speclite name (``group-band``).  ``decamDR1-*``:
#: the DES DR1 standard bandpasses (Abbott et al. 2018, ApJS 239, 18, with a
#: reference airmass-1.2 atmosphere); ``BASS-g``, ``BASS-r``, ``MzLS-z``: the
#: Legacy Surveys' northern cameras (all AB).
KNOWN_BANDS: tuple[str, ...] = (
    *(f"panstarrs-{b}" for b in "grizy"),
    *(f"gaiadr2-{b}" for b in ("G", "BP", "RP")),
    *(f"gaiadr3-{b}" for b in ("G", "BP", "RP")),
    *(f"twomass-{b}" for b in ("J", "H", "Ks")),
    *(f"sdss2010-{b}" for b in "ugriz"),
    *(f"decam2014-{b}" for b in "grizY"),
    *(f"decamDR1-{b}" for b in "grizY"),
    "BASS-g",
    "BASS-r",
    "MzLS-z",
)

#: m_AB - m_Vega for every band whose catalogue magnitudes are Vega-based.
#: Bands not listed (panstarrs-*, sdss2010-*, decam2014-*) are AB already.
VEGA_TO_AB: Mapping[str, float] = MappingProxyType(
    {
        # Gaia DR2, revised passbands (Evans et al. 2018, A&A 616, A4; Gaia
        # "IoW 2018-03-16" zero points): ZP_AB - ZP_Vega =
        # 25.7915510 - 25.6914397, 25.3861561 - 25.3488108, 25.1161665 - 24.7626745.
        "gaiadr2-G": 0.1001,
        "gaiadr2-BP": 0.0373,
        "gaiadr2-RP": 0.3535,
        # Gaia (E)DR3 (Riello et al. 2021, A&A 649, A3, Table 3):
        # ZP_AB - ZP_Vega, kept as the published differences.
        "gaiadr3-G": 25.8010 - 25.6874,
        "gaiadr3-BP": 25.3540 - 25.3385,
        "gaiadr3-RP": 25.1040 - 24.7479,
        # 2MASS (Blanton & Roweis 2007, AJ 133, 734, Table 1).
        "twomass-J": 0.91,
        "twomass-H": 1.39,
        "twomass-Ks": 1.85,
        # SDSS u and z are known to sit ~-0.04 and ~+0.02 mag off AB
        # (u_AB = u_SDSS - 0.04, z_AB = z_SDSS + 0.02); those small offsets
        # are *not* applied here (sdss2010-* are AB), but the "sdss" band-map
        # preset applies them (kspec_xr._base.bandmap.SDSS_AB_OFFSETS).
    }
)

#: Colors (blue band, red band) that :func:`kspec_xr.teff_from_colors` uses when both
#: bands are present in the observed and the grid magnitudes.
COLOR_PAIRS: tuple[tuple[str, str], ...] = (
    ("gaiadr2-BP", "gaiadr2-RP"),
    ("gaiadr2-G", "gaiadr2-RP"),
    ("gaiadr3-BP", "gaiadr3-RP"),
    ("gaiadr3-G", "gaiadr3-RP"),
    ("panstarrs-g", "panstarrs-r"),
    ("panstarrs-r", "panstarrs-i"),
    ("panstarrs-i", "panstarrs-z"),
    ("sdss2010-g", "sdss2010-r"),
    ("sdss2010-r", "sdss2010-i"),
    ("sdss2010-i", "sdss2010-z"),
    ("decam2014-g", "decam2014-r"),
    ("decam2014-r", "decam2014-i"),
    ("decam2014-i", "decam2014-z"),
    ("decamDR1-g", "decamDR1-r"),
    ("decamDR1-r", "decamDR1-i"),
    ("decamDR1-i", "decamDR1-z"),
    ("BASS-g", "BASS-r"),
    ("BASS-r", "MzLS-z"),
)

#: Bits of the ``teff_color_flag`` variable written by :func:`kspec_xr.teff_from_colors`.
TEFF_FLAGS: Mapping[str, int] = MappingProxyType({"no_color": 1, "grid_edge": 2, "no_template": 4})


# --------------------------------------------------------------------------
# Filters and magnitude systems
# --------------------------------------------------------------------------


def check_band(band: object) -> str:
    """``band`` if it is a known speclite name (``TypeError``/``KspecError`` otherwise)."""
    if not isinstance(band, str):
        raise TypeError(f"a band name must be a str such as 'panstarrs-g', got {band!r}")
    if band not in KNOWN_BANDS:
        raise KspecError(
            f"unknown band {band!r}; use one of the speclite names {', '.join(KNOWN_BANDS)}"
        )
    return band


def check_bands(bands: str | Sequence[str]) -> tuple[str, ...]:
    """A tuple of distinct known band names from one name or a sequence of them."""
    if isinstance(bands, str):
        bands = (bands,)
    if hasattr(bands, "__array__") and not isinstance(bands, list | tuple):  # NumPy, xarray
        bands = np.asarray(bands).tolist()
    if not isinstance(bands, Sequence):
        raise TypeError(f"bands must be a band name or a sequence of band names, got {bands!r}")
    out = tuple(check_band(b) for b in bands)
    if not out:
        raise KspecError("no band requested; pass at least one band name, e.g. ['panstarrs-r']")
    if len(set(out)) != len(out):
        raise KspecError(f"bands {out} repeat a band; pass each band once")
    return out


@functools.lru_cache(maxsize=len(KNOWN_BANDS))
def _load_curve(band: str) -> tuple[np.ndarray, np.ndarray]:
    import speclite.filters  # deferred: speclite reads its curves on import of a filter

    response = speclite.filters.load_filter(band)
    wave = np.array(response.wavelength, dtype=np.float64)
    resp = np.array(response.response, dtype=np.float64)
    wave.setflags(write=False)
    resp.setflags(write=False)
    return wave, resp


def filter_curve(band: str) -> tuple[np.ndarray, np.ndarray]:
    """Transmission curve of a band, as bundled with speclite.

    Parameters
    ----------
    band : str
        A speclite filter name from :data:`KNOWN_BANDS`, e.g. ``"gaiadr2-BP"``.

    Returns
    -------
    wavelength, response : numpy.ndarray
        Wavelength (A, increasing) and photon-counting response; read-only
        arrays, loaded once per process.  ``response`` is zero at both ends
        and non-zero only strictly between them.

    Raises
    ------
    KspecError
        Unknown band (the message lists the known ones).
    """
    return _load_curve(check_band(band))


def band_range(band: str) -> tuple[float, float]:
    """Wavelength range (A) outside which a band transmits nothing.

    A spectrum must cover ``[lo, hi]`` for :func:`synthetic_mags` to accept
    the band.

    Parameters
    ----------
    band : str
        A name from :data:`KNOWN_BANDS`.

    Returns
    -------
    lo, hi : float
        First and last tabulated wavelength of the speclite curve (where its
        response is zero).
    """
    wave, _ = filter_curve(band)
    return float(wave[0]), float(wave[-1])


def ab_offset(band: str) -> float:
    """m_AB - m_native for a band's catalogue magnitudes (0 for AB-native bands).

    Parameters
    ----------
    band : str
        A name from :data:`KNOWN_BANDS`.

    Returns
    -------
    float
        :data:`VEGA_TO_AB` ``[band]`` for Vega-based bands (Gaia, 2MASS),
        0.0 for Pan-STARRS1 and SDSS.
    """
    return float(VEGA_TO_AB.get(check_band(band), 0.0))


def to_ab(mag: Any, band: str) -> Any:
    """Convert magnitudes in a band's native catalogue system to AB.

    Parameters
    ----------
    mag : float, array or xarray.DataArray
        Magnitudes as the survey publishes them (Vega for Gaia and 2MASS, AB
        for Pan-STARRS1 and SDSS).
    band : str
        A name from :data:`KNOWN_BANDS`.

    Returns
    -------
    Same type as ``mag``
        ``mag + ab_offset(band)``; NaN stays NaN.

    Examples
    --------
    >>> round(to_ab(10.0, "gaiadr2-RP"), 4)
    10.3535
    """
    return mag + ab_offset(band)
