"""A physically shaped stand-in for the BOSZ 2024 grid, written in its exact file format.

No real BOSZ spectrum can be fetched where kspec_xr is developed and tested, so
the package generates a small grid of its own: the same file names, folders and
columns as the archive (see :mod:`kspec_xr.templates`), filled with spectra that
look like real stars at the resolution of the grid.  It is the default template
grid (:func:`standin_grid_path`) and the fixture of the tests; a user with a
BOSZ download points ``templates=`` at it and nothing else changes.

The module has three layers:

* NumPy kernels: :func:`surface_flux` (one spectrum, a smooth function of
  Teff, log g, [M/H] and [α/M]) and :func:`bosz_wavelength` (the archive's
  shared wavelength grid);
* the file writer :func:`write_standin_grid` (deterministic, atomic, fast);
* the cache :func:`standin_grid_path` (built once per generator version).

The physics is a stand-in, not a model atmosphere: a Planck continuum with
Balmer and Paschen jumps, blue line blanketing, Voigt-profile Balmer lines whose
strength peaks near the A stars and whose Stark wings widen with log g, the
strong metal features (Ca II H&K, G band, Mg b, Na D, the Ca II triplet) and a
fixed list of a few hundred weaker lines, all deepening with metallicity and
falling temperature.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, voigt_profile

from .._base.errors import KspecWarning
from .._base.paths import atomic_output, cache_dir
from . import _names
from ._names import STANDIN_MARKER, bosz_atmosphere, bosz_folder, bosz_name, wave_grid_name

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, the age rule alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "surface_flux",
    "bosz_wavelength",
    "write_standin_grid",
    "standin_grid_path",
    "DEFAULT_GRID",
]

# ---------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------

_HC_K = 1.438776877e8  # h c / k in Angstrom K
_C1 = 1.191042972e27  # 2 h c^2 in erg/s/cm2/sr * Angstrom^4 (B_lambda per Angstrom)
_C_KMS = 299792.458
_K_AMU = 8.314462618e-3  # k / amu in (km/s)^2 / K
_FWHM_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
_XI_KMS = 2.0  # microturbulence of the stand-in, km/s (BOSZ "v2")
_TAU_CAP = 2.5  # soft saturation: line cores keep exp(-2.5) ~ 8 % of the continuum
_BALMER_EDGE = 3646.0
_PASCHEN_EDGE = 8206.0
_EDGE_WIDTH = 6.0  # Angstrom, smoothing of the bound-free edges (line crowding)
_WING_TAU = 3e-4  # a line's window reaches where its Lorentz wing falls to this depth
_MAX_WINDOW = 400.0  # Angstrom
_LINE_SEED = 20240521
_N_WEAK_LINES = 400
_BALMER_CORE = 0.15  # strength of a Balmer line's Doppler core, relative to its wings
_FLUX_FORMAT = "%.4e"  # 5 significant digits
_GZIP_LEVEL = 1  # a cache: fast to write, ~20 % larger than level 6
_PROGRESS_EVERY = 2.0  # s between two progress lines of the writer
_WAVE_FORMAT = "%.6f"

_README = """This folder is a kspec_xr stand-in for the BOSZ 2024 grid (Meszaros et al. 2024).

The files follow the archive's names, folders and columns exactly, but the spectra are
made by kspec_xr.standin.surface_flux (a Planck continuum with Balmer lines, metal lines
and jumps shaped like real stars), not by model atmospheres.  Point templates= at a real
BOSZ download for science.
"""

#: Parameters of the bundled default grid (MARCS range of the FGK standards).
DEFAULT_GRID: dict[str, Any] = {
    "teff": tuple(range(5000, 8001, 250)),
    "logg": (3.5, 4.0, 4.5, 5.0),
    # 0.25 dex like the real BOSZ 2024 grid: coarser steps interpolate poorly
    "mh": tuple(np.round(np.arange(-2.0, 0.51, 0.25), 2).tolist()),
    "alpha": (0.0,),
    # a little below 3000 Å: the Gaia G curve is tabulated from 2999.99 Å
    "wave_range": (2950.0, 11500.0),
}

# vacuum wavelengths (Angstrom) of H alpha ... H10
_BALMER = (
    # name, lambda, strength (Angstrom of tau), Lorentz HWHM at log g 4 (Angstrom)
    ("H_alpha", 6564.61, 60.0, 2.2),
    ("H_beta", 4862.68, 40.0, 2.6),
    ("H_gamma", 4341.69, 30.0, 3.0),
    ("H_delta", 4102.89, 25.0, 3.2),
    ("H_epsilon", 3971.20, 20.0, 3.3),
    ("H8", 3890.15, 15.0, 3.3),
    ("H9", 3836.47, 12.0, 3.3),
    ("H10", 3798.98, 10.0, 3.3),
)

# strong metal features: name, vacuum lambda, strength (Angstrom of tau) at
# [M/H] = 0 and 5500 K, e-folding of the strength per 1000 K, log g slope of the
# strength (dex per dex), Lorentz HWHM at log g 4.5, log g slope of the HWHM,
# alpha element?, atomic mass, extra intrinsic Gaussian sigma (molecular band).
_STRONG = (
    ("CaII_K", 3934.78, 110.0, 0.80, 0.0, 1.2, 0.25, True, 40.1, 0.0),
    ("CaII_H", 3969.59, 55.0, 0.80, 0.0, 1.2, 0.25, True, 40.1, 0.0),
    ("CaI_4227", 4227.92, 3.0, 1.00, 0.0, 0.25, 0.30, True, 40.1, 0.0),
    ("G_band", 4305.0, 3.5, 1.10, -0.05, 0.0, 0.0, False, 13.0, 8.0),
    ("MgI_b1", 5185.05, 9.0, 0.70, 0.0, 0.35, 0.35, True, 24.3, 0.0),
    ("MgI_b2", 5174.13, 6.0, 0.70, 0.0, 0.35, 0.35, True, 24.3, 0.0),
    ("MgI_b4", 5168.76, 3.0, 0.70, 0.0, 0.35, 0.35, True, 24.3, 0.0),
    ("NaI_D2", 5891.58, 4.0, 1.00, 0.0, 0.25, 0.30, False, 23.0, 0.0),
    ("NaI_D1", 5897.56, 2.5, 1.00, 0.0, 0.25, 0.30, False, 23.0, 0.0),
    ("CaII_8500", 8500.36, 2.5, 0.30, -0.12, 0.6, 0.15, True, 40.1, 0.0),
    ("CaII_8544", 8544.44, 6.0, 0.30, -0.12, 0.6, 0.15, True, 40.1, 0.0),
    ("CaII_8664", 8664.52, 4.5, 0.30, -0.12, 0.6, 0.15, True, 40.1, 0.0),
)

# weak lines: species, probability, alpha element?, atomic mass
_WEAK_SPECIES = (
    ("Fe", 0.55, False, 55.8),
    ("Ni", 0.07, False, 58.7),
    ("Cr", 0.06, False, 52.0),
    ("Ti", 0.10, True, 47.9),
    ("Ca", 0.05, True, 40.1),
    ("Mg", 0.03, True, 24.3),
    ("Si", 0.05, True, 28.1),
    ("CN", 0.09, False, 26.0),
)


# ---------------------------------------------------------------------------
# NumPy kernels
# ---------------------------------------------------------------------------


def bosz_wavelength(resolution: int) -> np.ndarray:
    """The shared wavelength grid of the BOSZ 2024 ``resam`` files at one resolution.

    Parameters
    ----------
    resolution : int
        Resolving power R of the grid (500, 1000, ..., 50000 in the archive).

    Returns
    -------
    numpy.ndarray
        ``15 * R`` vacuum wavelengths (Angstrom), evenly spaced in ln λ from
        500 Å to 320 000 Å: ``λ_i = 500 · 640**(i / (15 R − 1))``.
    """
    n = int(round(15 * float(resolution)))
    if n < 2:
        raise ValueError(f"resolution must be a positive resolving power, got {resolution!r}")
    return 500.0 * 640.0 ** (np.arange(n) / (n - 1))


def _balmer_strength(teff: float) -> float:
    """Hydrogen n=2 population proxy: peaks near 9500 K (the A0 stars)."""
    return float(np.exp(-(((teff - 9500.0) / 3500.0) ** 2)))


def _jump_dex(teff: float, logg: float) -> float:
    """Balmer-jump depth (dex): largest near the A stars and at low gravity."""
    peak = np.exp(-(((teff - 9800.0) / 3300.0) ** 2))
    return float(0.05 + 0.40 * peak * 10.0 ** (-0.1 * (logg - 4.5)))


def _continuum(wave: np.ndarray, teff: float, logg: float) -> np.ndarray:
    """Eddington continuum ``B_λ(Teff)/4`` with smoothed Balmer and Paschen jumps."""
    with np.errstate(over="ignore"):
        planck = _C1 / wave**5 / np.expm1(_HC_K / (wave * teff))
    dex = _jump_dex(teff, logg)
    below_balmer = expit((_BALMER_EDGE - wave) / _EDGE_WIDTH)
    below_paschen = expit((_PASCHEN_EDGE - wave) / _EDGE_WIDTH)
    return 0.25 * planck * 10.0 ** (-dex * (below_balmer + 0.25 * below_paschen))


@functools.lru_cache(maxsize=1)
def _line_table() -> dict[str, np.ndarray]:
    """Every line of the stand-in (Balmer, strong, weak), as read-only column arrays.

    The weak lines come from a fixed-seed generator, so the table is the same in
    every process and on every machine (NumPy's ``PCG64`` stream is stable).
    """
    rng = np.random.default_rng(_LINE_SEED)
    n = _N_WEAK_LINES
    names, prob, alpha_flag, mass = zip(*_WEAK_SPECIES, strict=True)
    kind = rng.choice(len(names), size=n, p=np.asarray(prob) / np.sum(prob))
    # more lines in the blue: 1/λ uniform between 1/11000 and 1/3000
    weak = {
        "lam0": 1.0 / rng.uniform(1.0 / 11000.0, 1.0 / 3000.0, n),
        "strength": 10.0 ** rng.uniform(np.log10(0.004), np.log10(0.25), n),
        "t_slope": np.where(np.asarray(names)[kind] == "CN", 1.5, rng.uniform(0.4, 1.2, n)),
        "g_slope": np.zeros(n),
        "gamma0": rng.uniform(0.01, 0.06, n),
        "gamma_slope": np.full(n, 0.3),
        "alpha": np.asarray(alpha_flag)[kind],
        "mass": np.asarray(mass)[kind],
        "sigma0": np.zeros(n),
        "hydrogen": np.zeros(n, dtype=bool),
    }
    # each Balmer line twice: Stark wings, and a Doppler core that saturates
    nb = len(_BALMER)
    lam_h = np.array([b[1] for b in _BALMER])
    strength_h = np.array([b[2] for b in _BALMER])
    balmer = {
        "lam0": np.concatenate([lam_h, lam_h]),
        "strength": np.concatenate([strength_h, _BALMER_CORE * strength_h]),
        "t_slope": np.zeros(2 * nb),
        "g_slope": np.zeros(2 * nb),
        "gamma0": np.concatenate([[b[3] for b in _BALMER], np.full(nb, 0.05)]),
        "gamma_slope": np.full(2 * nb, 0.35),
        "alpha": np.zeros(2 * nb, dtype=bool),
        "mass": np.full(2 * nb, 1.008),
        "sigma0": np.zeros(2 * nb),
        "hydrogen": np.ones(2 * nb, dtype=bool),
    }
    cols = ("lam0", "strength", "t_slope", "g_slope", "gamma0", "gamma_slope", "alpha", "mass")
    strong = {c: np.array([s[i + 1] for s in _STRONG]) for i, c in enumerate(cols)}
    strong["sigma0"] = np.array([s[9] for s in _STRONG])
    strong["hydrogen"] = np.zeros(len(_STRONG), dtype=bool)
    table = {k: np.concatenate([balmer[k], strong[k], weak[k]]) for k in balmer}
    for v in table.values():
        v.flags.writeable = False
    return table


def _line_parameters(teff, logg, mh, alpha, resolution):
    """Strength (Å of τ), Gaussian σ, Lorentz HWHM and window of every line."""
    t = _line_table()
    hydrogen = t["hydrogen"]
    balmer = _balmer_strength(teff)
    metal = (
        10.0 ** (mh + alpha * t["alpha"])
        * np.exp(-t["t_slope"] * (teff - 5500.0) / 1000.0)
        * 10.0 ** (t["g_slope"] * (logg - 4.5))
    )
    strength = t["strength"] * np.where(hydrogen, balmer, metal)
    # Stark wings of hydrogen grow with the electron density: with log g, and
    # with temperature through the n=2 population; van der Waals wings of metals
    # grow with log g.
    gamma = (
        t["gamma0"]
        * 10.0 ** (t["gamma_slope"] * (logg - np.where(hydrogen, 4.0, 4.5)))
        * np.where(hydrogen, 0.3 + 0.7 * balmer, 1.0)
    )
    finite = resolution is not None and np.isfinite(resolution)
    instrument = 1.0 / (_FWHM_SIGMA * resolution) if finite else 0.0
    doppler2 = (_K_AMU * teff / t["mass"] + 0.5 * _XI_KMS**2) / _C_KMS**2
    sigma = np.sqrt(t["lam0"] ** 2 * (doppler2 + instrument**2) + t["sigma0"] ** 2)
    wing = np.sqrt(strength * gamma / (np.pi * _WING_TAU))
    window = np.clip(np.maximum(8.0 * sigma, wing), 1.0, _MAX_WINDOW)
    return t["lam0"], strength, sigma, gamma, window


def _line_opacity(wave, lam0, strength, sigma, gamma, window) -> np.ndarray:
    """Σ_lines strength · Voigt(λ − λ0), each line evaluated only inside its window.

    The windows are tapered by ``(1 − (Δλ/window)²)²`` so that τ stays a
    continuous function of λ and of the stellar parameters.  ``wave`` must be
    sorted.  All windows are gathered into one flat array so that the Voigt
    function is called once.
    """
    lo = np.searchsorted(wave, lam0 - window, side="left")
    hi = np.searchsorted(wave, lam0 + window, side="right")
    counts = hi - lo
    keep = counts > 0
    lo, counts = lo[keep], counts[keep]
    line = np.repeat(np.flatnonzero(keep), counts)
    first = np.cumsum(counts) - counts
    pixel = np.arange(counts.sum()) - np.repeat(first - lo, counts)
    offset = wave[pixel] - lam0[line]
    taper = np.clip(1.0 - (offset / window[line]) ** 2, 0.0, None) ** 2
    profile = voigt_profile(offset, sigma[line], gamma[line])
    return np.bincount(pixel, weights=strength[line] * profile * taper, minlength=wave.size)


def _blanketing(wave: np.ndarray, teff: float, mh: float) -> np.ndarray:
    """Smooth pseudo-continuous opacity of unresolved metal lines, strongest in the blue."""
    scale = 0.25 * 10.0**mh * np.exp(-(teff - 5500.0) / 1500.0)
    return scale * 2.0 * expit((3000.0 - wave) / 600.0)


def surface_flux(
    wavelength,
    teff: float,
    logg: float,
    mh: float,
    alpha: float = 0.0,
    *,
    resolution: float = 10000.0,
    line_scale: float = 1.0,
    continuum_tilt: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Eddington flux of a stand-in stellar model, shaped like a BOSZ spectrum.

    A smooth, deterministic and continuous function of (Teff, log g, [M/H],
    [α/M]) so that stars drawn between grid nodes interpolate sensibly.

    Parameters
    ----------
    wavelength : array_like
        Vacuum wavelengths in Angstrom (any shape, positive).
    teff, logg, mh, alpha : float
        Effective temperature (K), log10 surface gravity (cgs), [M/H] and
        [α/M] (dex).
    resolution : float, default 10000
        Resolving power R: every line's Gaussian core is broadened by
        FWHM = λ/R, as in a BOSZ file of that R.  ``numpy.inf`` (or None) keeps
        the intrinsic (thermal + microturbulent) width only.  The broadening
        acts on each line's optical-depth profile, so it conserves the
        equivalent width of weak lines but widens saturated ones a little.
    line_scale : float, default 1
        Multiplies the strength of every line (and of the blue blanketing).
    continuum_tilt : float, default 0
        Multiplies the continuum (and so the flux) by ``(λ/5500)**continuum_tilt``.

    Returns
    -------
    H, H_continuum : numpy.ndarray
        Eddington flux H_λ and its continuum, erg/s/cm²/Å, same shape as
        ``wavelength``; the surface flux is ``F_λ = 4π·H_λ``.  ``0 < H ≤ H_continuum``.

    Notes
    -----
    ``H_continuum = B_λ(Teff)/4 · 10**(−D·s_B(λ) − 0.25·D·s_P(λ)) · (λ/5500)**tilt``,
    with ``s_B``, ``s_P`` logistic steps below the Balmer (3646 Å) and
    Paschen (8206 Å) edges and a jump ``D`` (dex) peaking near 9800 K and
    growing as log g falls.  ``H = H_continuum · exp(−τ_s)``, where
    ``τ_s = 2.5·(1 − exp(−τ/2.5))`` softly saturates the optical depth
    ``τ = line_scale · (τ_blanket + Σ_i S_i·V(λ − λ_i; σ_i, γ_i))`` so line
    cores keep a few per cent of the continuum, as real ones do.  Strengths
    ``S_i`` scale as ``10**[M/H]`` (``10**([M/H]+[α/M])`` for Mg, Ca, Ti, Si)
    times ``exp(−k_i (Teff − 5500)/1000)``; Balmer strengths follow
    ``exp(−((Teff − 9500)/3500)²)`` and their Lorentz widths grow as
    ``10**(0.35 (log g − 4))``.

    Examples
    --------
    >>> wave = bosz_wavelength(10000)
    >>> wave = wave[(wave > 3000) & (wave < 11500)]
    >>> h, hc = surface_flux(wave, 6000, 4.5, 0.0)
    >>> bool(np.all((h > 0) & (h <= hc)))
    True
    """
    wave = np.asarray(wavelength, dtype=float)
    shape = wave.shape
    flat = wave.ravel()
    if not np.all(np.isfinite(flat) & (flat > 0)):
        raise ValueError("wavelength must be finite and positive (Angstrom)")
    for name, value in (("teff", teff), ("logg", logg), ("mh", mh), ("alpha", alpha)):
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if teff <= 0:
        raise ValueError(f"teff must be positive (K), got {teff!r}")
    order = None if flat.size < 2 or np.all(np.diff(flat) >= 0) else np.argsort(flat, kind="stable")
    w = flat if order is None else flat[order]

    continuum = _continuum(w, teff, logg) * (w / 5500.0) ** continuum_tilt
    tau = _line_opacity(w, *_line_parameters(teff, logg, mh, alpha, resolution))
    tau = line_scale * (tau + _blanketing(w, teff, mh))
    flux = continuum * np.exp(_TAU_CAP * np.expm1(-tau / _TAU_CAP))

    if order is not None:
        flux[order], continuum[order] = flux.copy(), continuum.copy()
    return flux.reshape(shape), continuum.reshape(shape)


# ---------------------------------------------------------------------------
# writing files in the BOSZ format
# ---------------------------------------------------------------------------


def _format_rows(columns: Sequence[np.ndarray], formats: Sequence[str]) -> bytes:
    """Whitespace-separated text, one row per element, one ``%``-format per column.

    The bytes of ``(" ".join(formats) + "\\n") % row`` for every row.  Columns
    of ``%.Ne`` formats are formatted with NumPy (:func:`_sci_bytes`); other
    formats, or values it does not take, by Python's ``%`` operator.
    """
    arrays = [np.asarray(c, dtype=float).ravel() for c in columns]
    fields = []
    for values, fmt in zip(arrays, formats, strict=True):
        match = _SCI_FORMAT.fullmatch(fmt)
        field = _sci_bytes(values, int(match[1])) if match else None
        if field is None:
            break
        fields.append(field)
    else:
        n = arrays[0].size if arrays else 0
        if fields and all(a.size == n for a in arrays):
            widths = [f.shape[1] for f in fields]
            out = np.full((n, sum(widths) + len(widths)), ord(" "), dtype=np.uint8)
            out[:, -1] = ord("\n")
            start = 0
            for field, width in zip(fields, widths, strict=True):
                out[:, start : start + width] = field
                start += width + 1
            return out.tobytes()
    line = " ".join(formats) + "\n"
    stacked = np.column_stack(arrays)
    return ((line * stacked.shape[0]) % tuple(stacked.ravel().tolist())).encode("ascii")


_SCI_FORMAT = re.compile(r"%\.([0-8])e")
_POW10 = np.array([float(10**i) for i in range(23)])  # exact doubles
_DIGITS = np.array([list(f"{i:03d}".encode()) for i in range(1000)], dtype=np.uint8)


def _sci_bytes(values: np.ndarray, decimals: int) -> np.ndarray | None:
    """``"%.{decimals}e" % v`` of each value as the rows of a uint8 array (None: not one width).

    Exactly Python's (correctly rounded) text: for ``q = v·10**(decimals − e)``
    with ``e = floor(log10 v)``, computed with one rounding (``10**|k|`` is an
    exact double for ``|k| ≤ 22``), ``rint(q)`` is the correctly rounded
    mantissa unless ``q`` lies within 1e-6 of a half-integer (its error is
    below 1e-7), outside ``[10**decimals, 10**(decimals+1) − ½)``
    (a misjudged exponent, or a round-up to the next power of ten) or the
    power is not exact; those few values, and zeros, negatives, NaN and
    infinities, go through Python's ``%``.  None if that text is not of the
    one width (a sign, an exponent beyond ±99, NaN).
    """
    x = values
    width = decimals + (6 if decimals else 5)
    with np.errstate(all="ignore"):
        e = np.floor(np.log10(x))
        e = np.where(np.abs(e) < 100, e, 0).astype(np.int64)
        k = decimals - e
        p = _POW10[np.minimum(np.abs(k), 22)]
        q = np.where(k >= 0, x * p, x / p)
        r = np.rint(q)
        fast = (q >= 10**decimals) & (q < 10 ** (decimals + 1) - 0.5) & (np.abs(k) <= 22)
        fast &= np.abs(q - r) < 0.5 - 1e-6
        r = np.where(fast, r, 10**decimals).astype(np.int64)
    groups = []  # the mantissa's digits in groups of three, lowest first
    for _ in range(decimals // 3 + 1):
        r, group = np.divmod(r, 1000)
        groups.append(np.take(_DIGITS, group, axis=0))
    mantissa = np.concatenate(groups[::-1], axis=1)[:, -(decimals + 1) :]
    out = np.empty((x.size, width), dtype=np.uint8)
    out[:, 0] = mantissa[:, 0]
    if decimals:
        out[:, 1] = ord(".")
        out[:, 2 : 2 + decimals] = mantissa[:, 1:]
    out[:, -4] = ord("e")
    out[:, -3] = np.where(e < 0, ord("-"), ord("+"))
    out[:, -2:] = np.take(_DIGITS, np.abs(e), axis=0)[:, 1:]
    fmt = f"%.{decimals}e"
    for i in np.flatnonzero(~fast):
        text = (fmt % x[i]).encode("ascii")
        if len(text) != width:
            return None
        out[i] = np.frombuffer(text, dtype=np.uint8)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _trimmed_wavelength(resolution: int, wave_range: tuple[float, float]) -> np.ndarray:
    lo, hi = (float(v) for v in wave_range)
    if not lo < hi:
        raise ValueError(f"wave_range must be (low, high) with low < high, got {wave_range!r}")
    wave = bosz_wavelength(resolution)
    wave = wave[(wave >= lo) & (wave <= hi)]
    if wave.size < 2:
        raise ValueError(
            f"wave_range {wave_range!r} holds fewer than 2 points of the R={resolution} grid"
        )
    return wave


def write_standin_grid(
    directory,
    *,
    teff: Sequence[float] = DEFAULT_GRID["teff"],
    logg: Sequence[float] = DEFAULT_GRID["logg"],
    mh: Sequence[float] = DEFAULT_GRID["mh"],
    alpha: Sequence[float] = DEFAULT_GRID["alpha"],
    resolution: int = 10000,
    wave_range: tuple[float, float] = DEFAULT_GRID["wave_range"],
    layout: str = "archive",
    kind: str = "resam",
) -> Path:
    """Write a stand-in grid in the exact file format of the BOSZ 2024 archive.

    Parameters
    ----------
    directory : str or path-like
        Root folder (created).
    teff, logg, mh, alpha : sequence of float
        Grid nodes; every combination is written.
    resolution : int, default 10000
        Resolving power R (file names, line broadening and wavelength grid).
    wave_range : (float, float), default (2950, 11500)
        The archive's shared grid (:func:`bosz_wavelength`) trimmed to this
        range (Å); the real files cover 500–320 000 Å.
    layout : {"archive", "flat"}
        ``"archive"``: ``r{R}/m{[M/H]:+.2f}/<file>`` plus
        ``wavelength_grids/bosz2024_wave_r{R}.txt``; ``"flat"``: every file and
        the wavelength grid in ``directory`` itself.
    kind : {"resam", "noresam"}
        ``resam``: two columns ``H_λ  continuum`` on the shared grid, written
        beside the wavelength-grid file; ``noresam``: three columns
        ``λ  H_λ  continuum`` (no wavelength-grid file).

    Returns
    -------
    pathlib.Path
        ``directory``.

    Notes
    -----
    Files are named by :func:`kspec_xr.templates.bosz_name` (atmosphere ``ms``,
    ``mp`` or ``ap`` by :func:`kspec_xr.templates.bosz_atmosphere`, ``c+0.00``,
    ``v2``), written gzip-compressed (level 1: they are a cache; no time
    stamp, so the bytes are reproducible) with 5 significant digits, each
    through a temporary file and a rename, by one thread per CPU (at most 8).
    A progress line (``generating stand-in templates: 200/572``) is logged
    at INFO every 2 s.
    """
    if layout not in ("archive", "flat"):
        raise ValueError(f"layout must be 'archive' or 'flat', got {layout!r}")
    if kind not in ("resam", "noresam"):
        raise ValueError(f"kind must be 'resam' or 'noresam', got {kind!r}")
    resolution = int(resolution)
    root = Path(directory)
    wave = _trimmed_wavelength(resolution, wave_range)

    root.mkdir(parents=True, exist_ok=True)
    _atomic_write(root / STANDIN_MARKER, _README.encode())
    if kind == "resam":
        wave_dir = root / "wavelength_grids" if layout == "archive" else root
        wave_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(wave_dir / wave_grid_name(resolution), _format_rows([wave], [_WAVE_FORMAT]))

    params = [
        {"teff": t, "logg": g, "mh": m, "alpha": a}
        for m in mh
        for t in teff
        for g in logg
        for a in alpha
    ]
    for m in {p["mh"] for p in params}:
        (root / bosz_folder(resolution, m) if layout == "archive" else root).mkdir(
            parents=True, exist_ok=True
        )

    def write_one(p: dict) -> None:
        name = bosz_name(
            **p,
            atm=bosz_atmosphere(p["teff"], p["logg"]),
            carbon=0.0,
            vturb=2,
            resolution=resolution,
            resampled=kind == "resam",
        )
        folder = root / bosz_folder(resolution, p["mh"]) if layout == "archive" else root
        h, hc = surface_flux(wave, **p, resolution=resolution)
        columns = [h, hc] if kind == "resam" else [wave, h, hc]
        formats = [_WAVE_FORMAT] * (len(columns) - 2) + [_FLUX_FORMAT] * 2
        text = _format_rows(columns, formats)
        _atomic_write(folder / name, gzip.compress(text, compresslevel=_GZIP_LEVEL, mtime=0))

    # NumPy, SciPy's Voigt function and zlib release the GIL: threads compute in parallel
    total, last = len(params), time.monotonic()
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        for done, _ in enumerate(pool.map(write_one, params), 1):
            if time.monotonic() - last >= _PROGRESS_EVERY and done < total:
                log.info("generating stand-in templates: %d/%d", done, total)
                last = time.monotonic()
    return root


def _workers() -> int:
    """Threads of the writer: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


# ---------------------------------------------------------------------------
# the cached default grid
# ---------------------------------------------------------------------------

#: files of a stand-in grid folder that are not part of the grid itself
_COMPLETE, _MANIFEST, _IN_USE = "COMPLETE", "MANIFEST.json", "IN_USE"
_CONTROL = frozenset({_COMPLETE, _MANIFEST, _IN_USE})
#: a grid of another generator version is deleted only once unused this long (s) ...
UNUSED_BEFORE_REMOVAL = 86400.0
#: ... or, for a grid of a kspec_xr that did not record its use, this long (s)
LEGACY_UNUSED_BEFORE_REMOVAL = 7 * 86400.0
_TOUCH_EVERY = 3600.0  # s between two "last used" stamps of one grid by one process


class _InUse:
    """This process's use of one stand-in grid folder.

    Holds a shared ``flock`` on the folder's ``IN_USE`` file for the life of
    the process (a remover needs an exclusive one) and stamps its mtime as
    the grid's "last used" time; ``snapshot`` is the names, sizes and
    mtimes of the files last verified.
    """

    def __init__(self, path: Path):
        self.path = path
        self.snapshot: dict[str, tuple[int, int]] | None = None
        self.touched = -np.inf
        self._file = None

    def hold(self) -> bool:
        """Take (or keep) the shared lock and stamp the use (at most hourly).

        False if the folder went away meanwhile (removed or replaced as damaged
        by another process): the caller looks again.
        """
        stamp = self.path / _IN_USE
        try:
            if self._file is None or not os.path.samestat(
                os.fstat(self._file.fileno()), os.stat(stamp)
            ):
                self.release()
                self._file = _lock_file(stamp, exclusive=False, create=True)
                # a remover renames the folder away while it holds the lock
                if self._file is not None and not os.path.samestat(
                    os.fstat(self._file.fileno()), os.stat(stamp)
                ):
                    self.release()
                    return False
        except FileNotFoundError:
            self.release()
            return (self.path / _COMPLETE).exists()
        except OSError:  # e.g. a read-only cache without the stamp: use it unlocked
            self.release()
        now = time.time()
        if now - self.touched >= _TOUCH_EVERY:
            self.touched = now
            with contextlib.suppress(OSError):
                os.utime(stamp)  # a read-only shared cache: use is not recorded
            with contextlib.suppress(OSError):
                _remove_older_versions(self.path.parent, self.path)
        return True

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None


#: the grids this process uses, by cache key
_BUILT: dict[str, _InUse] = {}


def _lock_file(path: Path, *, exclusive: bool, create: bool = False):
    """``path`` opened and ``flock``-ed, or None if another process holds the lock.

    Raises ``OSError`` (``FileNotFoundError`` without ``create``) if it cannot be opened.
    """
    try:
        fh = open(path, "a+b" if create else "rb")  # noqa: SIM115 - held for the lock's life
    except PermissionError:
        fh = open(path, "rb")  # noqa: SIM115 - a read-only cache: a shared lock still works
    if fcntl is None:  # pragma: no cover - no flock on this platform: ages decide alone
        return fh
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    for _ in range(1 if exclusive else 40):  # a remover holds its lock for a rename only
        try:
            fcntl.flock(fh.fileno(), mode)
            return fh
        except BlockingIOError:
            if not exclusive:
                time.sleep(0.05)
        except OSError:  # pragma: no cover - no locks on this file system
            return fh
    fh.close()
    return None


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Hash of the code that shapes the stand-in files, without docstrings, comments or layout.

    That is this module above its cache section (constants, physics, writer)
    and the name scheme of ``_names``, imports left out: editing a docstring
    or the cache code keeps the key (and the grid), changing a line list or
    a number format makes a new grid.
    """
    digest = hashlib.sha256()
    for module_file, stop in (
        (Path(__file__), "# the cached default grid"),
        (Path(_names.__file__), None),
    ):
        source = module_file.read_text()
        last = source[: source.index(stop)].count("\n") + 1 if stop else None
        for node in ast.parse(source).body:
            if last is not None and node.lineno >= last:
                break
            if isinstance(node, ast.Import | ast.ImportFrom | ast.Try) or _is_docstring(node):
                continue
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in ("__all__", "log") for t in node.targets
            ):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.ClassDef) and _is_docstring(sub.body[0]):
                    sub.body = sub.body[1:] or [ast.Pass()]
            digest.update(ast.dump(node, annotate_fields=False).encode())
    return digest.hexdigest()


def _is_docstring(node) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _generator_key(resolution: int) -> str:
    """Hash of everything that shapes the default grid: the generator's code and parameters."""
    spec = json.dumps(
        {"grid": DEFAULT_GRID, "resolution": int(resolution), "code": _code_fingerprint()},
        sort_keys=True,
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _grid_files(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file of a grid folder (not the control files)."""
    out: dict[str, tuple[int, int]] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in os.scandir(folder):
            if entry.name.startswith(".") or (folder == root and entry.name in _CONTROL):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                st = entry.stat(follow_symlinks=False)
                out[Path(entry.path).relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(root: Path, key: str) -> None:
    """``MANIFEST.json`` (size, mtime and SHA-256 of every file), then ``COMPLETE`` naming it."""
    files = _grid_files(root)
    manifest = {
        "key": key,
        "files": {
            rel: [size, mtime, _file_hash(root / rel)]
            for rel, (size, mtime) in sorted(files.items())
        },
    }
    text = json.dumps(manifest, indent=0, sort_keys=True)
    (root / _MANIFEST).write_text(text)
    (root / _COMPLETE).write_text(f"{key}\n{hashlib.sha256(text.encode()).hexdigest()}\n")
    (root / _IN_USE).touch()


def _check_grid(root: Path, key: str, use: _InUse, *, full: bool) -> str | None:
    """What is wrong with a complete grid folder, or None.

    Always compares the names and sizes of its files with its manifest (~1 ms
    for the default grid); hashes the files whose mtime moved since they were
    last verified, or every file with ``full``.
    """
    try:
        complete = (root / _COMPLETE).read_text().split()
        text = (root / _MANIFEST).read_text()
        manifest = json.loads(text)
        listed = {rel: tuple(v) for rel, v in manifest["files"].items()}
        found = _grid_files(root)
    except FileNotFoundError as err:
        return f"{Path(err.filename or '?').name} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"its manifest cannot be read ({err})"
    if complete[:1] != [key] or manifest.get("key") != key:
        return "it was made under another key"
    if complete[1:2] != [hashlib.sha256(text.encode()).hexdigest()]:
        return f"{_MANIFEST} does not match {_COMPLETE}"
    if set(found) != set(listed):
        missing, extra = sorted(set(listed) - set(found)), sorted(set(found) - set(listed))
        parts = []
        if missing:
            parts.append(f"{len(missing)} file(s) missing, e.g. {missing[0]}")
        if extra:
            parts.append(f"{len(extra)} unexpected file(s), e.g. {extra[0]}")
        return "; ".join(parts)
    for rel, (size, _) in found.items():
        if size != listed[rel][0]:
            return f"{rel} has {size} bytes, its manifest {listed[rel][0]}"
    known = use.snapshot or {rel: (v[0], v[1]) for rel, v in listed.items()}
    suspects = sorted(found) if full else sorted(r for r in found if found[r] != known.get(r))
    for rel in suspects:
        try:
            same = _file_hash(root / rel) == listed[rel][2]
        except OSError as err:
            return f"{rel} cannot be read ({err})"
        if not same:
            return f"{rel} does not match its SHA-256 in {_MANIFEST}"
    use.snapshot = found
    return None


def standin_grid_path(*, resolution: int = 10000, verify: bool = False) -> Path:
    """The bundled default template grid: a stand-in BOSZ archive, generated once.

    The grid (:data:`DEFAULT_GRID`: Teff 5000–8000 K in 250 K steps, log g
    3.5–5.0, [M/H] −2 … +0.5, [α/M] = 0, 2950–11500 Å) is written on first use
    into ``kspec_xr._paths.cache_dir()/standin-<key>``, where ``<key>`` hashes
    the grid parameters and the code that makes the files (this module's
    physics and writer, and the BOSZ name scheme, without docstrings or
    comments), so a change of the generator builds a new grid.

    Parameters
    ----------
    resolution : int, default 10000
        Resolving power of the grid.
    verify : bool, default False
        Check the SHA-256 of every file against the grid's manifest (~0.1 s
        for the default grid), not only their names and sizes.

    Returns
    -------
    pathlib.Path
        Root of the grid in the archive layout, for :func:`kspec_xr.open_bosz`.

    Warns
    -----
    KspecWarning
        The grid is damaged (a file missing, added, of another size or, when
        checked, another content): it is generated again, in place.

    Notes
    -----
    Generating the default grid (572 files, ~100 MB) takes about 4 s on two
    CPUs; a warning says so when it starts, INFO lines count the files.  A
    ``MANIFEST.json`` (size, mtime and SHA-256 of each file) is written with
    the ``COMPLETE`` marker.  Every call compares the names and sizes of the
    files with it (~1 ms), and hashes any file whose mtime moved.  Safe when several processes ask at
    once: each builds in its own temporary folder and renames it into place;
    a process that loses the race discards its copy and uses the winner's.

    Grids of other generator versions are deleted only when no process
    uses them: each process holds a shared ``flock`` on the grid's
    ``IN_USE`` file and stamps its mtime (at most hourly) as long as it
    runs, and a grid is removed only if an exclusive lock can be had and it
    was last used more than :data:`UNUSED_BEFORE_REMOVAL` (a day) ago — the
    age alone decides where ``flock`` does not reach (another machine on a
    network file system).  A grid made by a kspec_xr that recorded no use
    goes after :data:`LEGACY_UNUSED_BEFORE_REMOVAL` (a week).
    """
    resolution = int(resolution)
    key = f"standin-r{resolution}-{_generator_key(resolution)}"
    root = cache_dir()
    final = root / key
    use = _BUILT.get(key)
    if use is None or use.path != final:
        use = _BUILT[key] = _InUse(final)
    problem = None
    if (final / _COMPLETE).exists():
        problem = _check_grid(final, key, use, full=verify)
        if problem is None and use.hold():
            return final
    if problem is not None:
        warnings.warn(
            f"kspec_xr: the stand-in grid {final} is damaged ({problem}); generating it again",
            KspecWarning,
            stacklevel=2,
        )
    tmp = root / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    log.warning("kspec_xr: generating the stand-in BOSZ grid (once) in %s", final)
    started = time.perf_counter()
    try:
        write_standin_grid(tmp, resolution=resolution, **DEFAULT_GRID)
        _write_manifest(tmp, key)
        log.info("generated the stand-in grid in %.1f s", time.perf_counter() - started)
        # a damaged grid is replaced, unless another process has repaired it meanwhile
        replace = problem is not None and _check_grid(final, key, _InUse(final), full=True)
        _publish(tmp, final, replace=bool(replace))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    use.snapshot = None
    _check_grid(final, key, use, full=False)  # records what was verified
    use.hold()
    with contextlib.suppress(OSError):
        _remove_older_versions(root, final)
    return final


def _unused_long_enough(folder: Path, now: float) -> bool:
    """Whether a complete grid folder has gone unused long enough to be deleted."""
    try:
        return now - os.stat(folder / _IN_USE).st_mtime > UNUSED_BEFORE_REMOVAL
    except FileNotFoundError:
        pass
    # made by a kspec_xr that stamped nothing: its marker's mtime and the access time of
    # its wavelength grid (read at every open; relatime updates it about daily)
    times = [os.stat(folder / _COMPLETE).st_mtime]
    for wave in folder.glob("wavelength_grids/*"):
        with contextlib.suppress(OSError):
            times.append(os.stat(wave).st_atime)
    return now - max(times) > LEGACY_UNUSED_BEFORE_REMOVAL


def _remove_older_versions(root: Path, current: Path) -> None:
    """Delete stand-in grids of this R made by other generator versions, once nobody uses them.

    A folder without ``COMPLETE`` is unusable and goes now; a complete one
    goes only if no process holds its ``IN_USE`` lock and it was last used
    more than :data:`UNUSED_BEFORE_REMOVAL` ago (see :func:`standin_grid_path`);
    temporary folders of an interrupted generation go after the same time.
    """
    prefix = current.name.rsplit("-", 1)[0] + "-"
    now = time.time()
    for old in root.glob("." + prefix + "*.tmp"):
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > UNUSED_BEFORE_REMOVAL:
                shutil.rmtree(old, ignore_errors=True)
    for old in root.glob(prefix + "*"):
        if old == current or not old.is_dir() or old.name.startswith("."):
            continue
        if not (old / _COMPLETE).exists():
            _delete_folder(old)
            continue
        try:
            lock = _lock_file(old / _IN_USE, exclusive=True)
        except FileNotFoundError:
            lock = False  # a grid of a kspec_xr that took no locks: its age decides
        except OSError:
            continue
        if lock is None:
            continue  # a process is using it
        try:
            if _unused_long_enough(old, now):
                _delete_folder(old)  # renamed away while locked: no new user can find it
        except OSError:
            pass
        finally:
            if lock:
                lock.close()


def _delete_folder(folder: Path) -> None:
    aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        os.rename(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _publish(tmp: Path, final: Path, *, replace: bool = False) -> None:
    """Rename a finished folder into place; if another process won, keep theirs.

    ``replace``: ``final`` is a damaged grid, moved aside for ``tmp`` (a reader
    in the middle of a run finds the new files under the same paths).
    """
    if not replace:
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if (final / _COMPLETE).exists():
                return  # another process finished first: use its grid
    # a stale, unfinished or damaged folder is in the way: move it aside and retry once
    stale = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.stale")
    try:
        os.rename(final, stale)
    except OSError:
        pass
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / _COMPLETE).exists():
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)
