"""Air and vacuum wavelengths: the IAU standard conversion, exact both ways.

2dfdr's wavelength solutions are in (standard) air; the BOSZ templates, the
telluric bands and the line lists of kspec_xr are in vacuum.  At 6000 Å the
two differ by 1.66 Å (83 km/s), enough to spoil a radial velocity and to move
every mask by a resolution element.

The dispersion of standard air is Ciddor (1996, Appl. Opt. 35, 1566) as
adopted by the IAU (Morton 2000, ApJS 130, 403, eq. 8) and used by VALD::

    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s²) + 1.5998e-4 / (38.9 - s²)

with ``s = 10⁴ / λ_vac`` in µm⁻¹, and ``λ_air = λ_vac / n(λ_vac)``.  The
inverse starts from N. Piskunov's fit of the air-to-vacuum factor (VALD) and
is refined by Newton iterations on that same formula, so that a round trip
returns its input to < 1e-6 Å (in practice to float64 rounding).

By the IAU convention wavelengths below 2000 Å are given in vacuum: both
functions leave them unchanged (``MIN_AIR_WAVELENGTH``).  The round trip is
exact for every wavelength outside the 0.65 Å just above 2000 Å where the two
conventions meet.

Why the formula is written here: neither NumPy, SciPy, astropy nor speclite
(the packages kspec_xr depends on) converts between air and vacuum;
``specutils`` does, but it is a heavy dependency (and a different formula
choice per function) for eight lines of arithmetic; the kernels are NumPy
only anyway.
"""

from __future__ import annotations

import numpy as np

__all__ = ["air_to_vacuum", "vacuum_to_air", "refractive_index", "MIN_AIR_WAVELENGTH"]

#: below this wavelength (Å) air and vacuum wavelengths are the same by convention
MIN_AIR_WAVELENGTH = 2000.0

# Morton (2000) / Ciddor (1996): n - 1 = A + B / (b - s²) + C / (c - s²)
_A, _B, _b, _C, _c = 8.34254e-5, 2.406147e-2, 130.0, 1.5998e-4, 38.9
# Piskunov's inverse (VALD): n(λ_air) for the first guess of λ_vac
_PA, _PB, _Pb, _PC, _Pc = (
    8.336624212083e-5,
    2.408926869968e-2,
    130.1065924522,
    1.599740894897e-4,
    38.92568793293,
)


def refractive_index(wave_vacuum) -> np.ndarray:
    """Refractive index of standard air at vacuum wavelength(s) ``wave_vacuum`` (Å).

    1 below :data:`MIN_AIR_WAVELENGTH` (and for non-finite input: NaN stays NaN).
    """
    lam = np.asarray(wave_vacuum, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = (1e4 / lam) ** 2
        n = 1.0 + _A + _B / (_b - s2) + _C / (_c - s2)
    return np.where(lam >= MIN_AIR_WAVELENGTH, n, np.where(np.isnan(lam), np.nan, 1.0))


def vacuum_to_air(wave_A) -> np.ndarray:
    """Air wavelengths (Å) of vacuum wavelengths ``wave_A`` (Å): ``λ / n(λ)``.

    Parameters
    ----------
    wave_A : array_like
        Vacuum wavelengths in Å (any shape).  Below 2000 Å they are returned
        unchanged (the IAU convention).

    Returns
    -------
    numpy.ndarray
        float64, same shape; NaN stays NaN.

    Examples
    --------
    >>> round(float(vacuum_to_air(6564.61)), 2)   # H alpha
    6562.8
    """
    lam = np.asarray(wave_A, dtype=np.float64)
    return lam / refractive_index(lam)


def _dair_dvac(lam: np.ndarray) -> np.ndarray:
    """d(λ/n)/dλ at vacuum wavelengths ``lam`` (the Newton step's slope)."""
    s = 1e4 / lam
    s2 = s * s
    n = 1.0 + _A + _B / (_b - s2) + _C / (_c - s2)
    dn_ds = 2.0 * s * (_B / (_b - s2) ** 2 + _C / (_c - s2) ** 2)
    return 1.0 / n + s * dn_ds / n**2


def air_to_vacuum(wave_A, *, iterations: int = 2) -> np.ndarray:
    """Vacuum wavelengths (Å) of air wavelengths ``wave_A`` (Å), the exact inverse of
    :func:`vacuum_to_air`.

    Parameters
    ----------
    wave_A : array_like
        Air wavelengths in Å (any shape).  Below 2000 Å they are returned
        unchanged (the IAU convention).
    iterations : int
        Newton steps after Piskunov's first guess (that guess is good to
        ~1e-8 Å in the optical; one step reaches float64 rounding).

    Returns
    -------
    numpy.ndarray
        float64, same shape, with ``vacuum_to_air(air_to_vacuum(x)) == x`` to
        < 1e-6 Å; NaN stays NaN.

    Examples
    --------
    >>> round(float(air_to_vacuum(6562.80)), 2)   # H alpha
    6564.61
    """
    air = np.asarray(wave_A, dtype=np.float64)
    convert = air >= MIN_AIR_WAVELENGTH
    a = np.where(convert, air, 1e4)  # a harmless stand-in where nothing is converted
    s2 = (1e4 / a) ** 2
    vac = a * (1.0 + _PA + _PB / (_Pb - s2) + _PC / (_Pc - s2))
    for _ in range(int(iterations)):
        s2 = (1e4 / vac) ** 2
        residual = vac / (1.0 + _A + _B / (_b - s2) + _C / (_c - s2)) - a
        vac = vac - residual / _dair_dvac(vac)
    return np.where(convert, vac, air)
