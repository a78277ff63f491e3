"""Interstellar extinction: the one extinction law kspec_xr uses, and band ratios.

The law is Gordon et al. (2023, ApJ 950, 86; "G23") at R_V = 3.1, the
Milky-Way average, evaluated by the `dust_extinction
<https://dust-extinction.readthedocs.io>`_ package (valid 912 Å – 32 µm).
:func:`extinction_curve` gives A(λ)/E(B−V) = R_V · A(λ)/A(V) on vacuum
wavelengths; a spectrum behind E(B−V) is the intrinsic one times
``10**(-0.4 * ebv * extinction_curve(wave))``.

:func:`band_ratio` gives A_band/E(B−V) for a catalogue band, for converting a
catalogue's per-band extinction (RefCat2's ``Ag``, Pan-STARRS g; ``AGaia``,
Gaia G) into E(B−V).  The ratio depends a little on the star's spectrum; it
is computed for a 6500 K black body (an F star, the usual flux standard) at
E(B−V) = 0.1, which is within 1 % of the ratio of any F/G star.
"""

from __future__ import annotations

import functools

import numpy as np

from .bands import filter_curve

__all__ = ["LAW", "R_V", "EBV_MAX", "extinction_curve", "band_ratio", "redden"]

#: The extinction law, as recorded in outputs.
LAW = "G23 (Gordon et al. 2023), R_V = 3.1"
R_V = 3.1
#: Upper bound of a fitted E(B−V) (and of a catalogue value taken as real), mag.
EBV_MAX = 0.5


@functools.lru_cache(maxsize=1)
def _model():
    from dust_extinction.parameter_averages import G23  # deferred: imports astropy.units

    return G23(Rv=R_V)


def extinction_curve(wavelength) -> np.ndarray:
    """A(λ)/E(B−V) at vacuum wavelengths ``wavelength`` (Å), G23 with R_V = 3.1.

    Outside the law's range (912 Å – 32 µm) the curve is held at its end values.
    """
    lam = np.asarray(wavelength, dtype=np.float64)
    x = 1e4 / np.clip(lam, 912.0 * 1.0001, 3.2e5 * 0.9999)  # inverse microns
    return R_V * np.asarray(_model().evaluate(x, R_V), dtype=np.float64)


def redden(wavelength, flux, ebv) -> np.ndarray:
    """``flux`` behind E(B−V) = ``ebv`` (broadcast over leading axes)."""
    curve = extinction_curve(wavelength)
    return np.asarray(flux) * 10.0 ** (-0.4 * np.asarray(ebv, dtype=float)[..., None] * curve)


@functools.lru_cache(maxsize=64)
def band_ratio(band: str) -> float:
    """A_band / E(B−V) of a speclite band for an F star (6500 K black body).

    Examples
    --------
    >>> 3.4 < band_ratio("panstarrs-g") < 3.9
    True
    """
    from scipy.integrate import trapezoid

    wave, response = filter_curve(band)
    lam = np.linspace(wave[0], wave[-1], 2000)
    resp = np.interp(lam, wave, response)
    hc_kt = 1.4387769e8 / 6500.0  # hc/kT in Å
    planck = lam**-5 / np.expm1(hc_kt / lam)
    weight = resp * planck * lam  # photon-counting
    ebv = 0.1
    dimmed = trapezoid(weight * 10.0 ** (-0.4 * ebv * extinction_curve(lam)), lam)
    return float(-2.5 * np.log10(dimmed / trapezoid(weight, lam)) / ebv)
