"""Synthetic photometry through real filter curves, and Teff from colours.

Two jobs live here:

* :func:`synthetic_mags` integrates spectra (F_lambda, erg/s/cm2/A, against a
  vacuum wavelength axis in A) through the transmission curves bundled with
  `speclite <https://speclite.readthedocs.io>`_ and returns AB magnitudes.  The
  integral is one matrix product, ``flux @ W``, with a weight matrix ``W``
  built once per (wavelength grid, bands) and cached -- the same idea as
  xESMF's ``Regridder`` building its weights once.
* :func:`teff_from_colours` turns catalogue colours into a Teff estimate and a
  Teff search box per star, calibrated on the synthetic colours of the template
  grid itself (no hand-typed colour--temperature relation).

It also holds the one table of Vega -> AB offsets (:data:`VEGA_TO_AB`) that the
catalogue reader uses.

Layout: the ``_*_np`` functions are NumPy-only kernels (no xarray); the public
functions are thin wrappers that validate, accept NumPy or xarray (eager or
dask-backed), and set metadata.

Filter curves are used as speclite tabulates them (wavelengths in A); speclite
does not convert between air and vacuum wavelengths, so neither do we.  An
air/vacuum shift (1.5--2.7 A in the optical) changes a broad-band magnitude by
well under 1 mmag.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from .errors import KspecError

__all__ = [
    "KNOWN_BANDS",
    "VEGA_TO_AB",
    "COLOUR_PAIRS",
    "ColourChi2",
    "colour_pair_indices",
    "TEFF_FLAGS",
    "filter_curve",
    "band_range",
    "ab_offset",
    "to_ab",
    "band_weights",
    "synthetic_mags",
    "teff_from_colours",
]

#: Filters this module knows, by speclite name (``group-band``).
KNOWN_BANDS: tuple[str, ...] = (
    *(f"panstarrs-{b}" for b in "grizy"),
    *(f"gaiadr2-{b}" for b in ("G", "BP", "RP")),
    *(f"gaiadr3-{b}" for b in ("G", "BP", "RP")),
    *(f"twomass-{b}" for b in ("J", "H", "Ks")),
    *(f"sdss2010-{b}" for b in "ugriz"),
    *(f"decam2014-{b}" for b in "grizY"),
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
        # are deliberately *not* applied: sdss2010-* are treated as AB.
    }
)

#: Colours (blue band, red band) that :func:`teff_from_colours` uses when both
#: bands are present in the observed and the grid magnitudes.
COLOUR_PAIRS: tuple[tuple[str, str], ...] = (
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
)

#: Bits of the ``teff_colour_flag`` variable written by :func:`teff_from_colours`.
TEFF_FLAGS: Mapping[str, int] = MappingProxyType({"no_colour": 1, "grid_edge": 2, "no_template": 4})

_C_ANGSTROM_PER_S = 2.99792458e18  # speed of light, A/s
_AB_FNU = 3631.0e-23  # AB reference flux density, erg/s/cm2/Hz (3631 Jy)
_MIN_SAMPLES = 5  # fewest grid points inside a band's curve that we integrate over


# --------------------------------------------------------------------------
# Filters and magnitude systems
# --------------------------------------------------------------------------


def _check_band(band: object) -> str:
    if not isinstance(band, str):
        raise TypeError(f"a band name must be a str such as 'panstarrs-g', got {band!r}")
    if band not in KNOWN_BANDS:
        raise KspecError(
            f"unknown band {band!r}; use one of the speclite names {', '.join(KNOWN_BANDS)}"
        )
    return band


def _check_bands(bands: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(bands, str):
        bands = (bands,)
    if isinstance(bands, np.ndarray | xr.DataArray | xr.Variable):
        bands = np.asarray(bands).tolist()
    if not isinstance(bands, Sequence):
        raise TypeError(f"bands must be a band name or a sequence of band names, got {bands!r}")
    out = tuple(_check_band(b) for b in bands)
    if not out:
        raise KspecError("no band requested; pass at least one band name, e.g. ['panstarrs-r']")
    if len(set(out)) != len(out):
        raise KspecError(f"bands {out} repeat a band; pass each band once")
    return out


@functools.lru_cache(maxsize=len(KNOWN_BANDS))
def _load_curve(band: str) -> tuple[np.ndarray, np.ndarray]:
    import speclite.filters

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
    return _load_curve(_check_band(band))


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
    return float(VEGA_TO_AB.get(_check_band(band), 0.0))


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


# --------------------------------------------------------------------------
# Synthetic magnitudes: weights (cached) and the NumPy kernel
# --------------------------------------------------------------------------


class _Grid:
    """A wavelength grid that hashes by content, so it can key an lru_cache."""

    __slots__ = ("wavelength", "_digest")

    def __init__(self, wavelength: np.ndarray):
        self.wavelength = wavelength
        self._digest = hashlib.blake2b(wavelength.tobytes(), digest_size=20).digest()

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Grid) and self._digest == other._digest


class _Weights(NamedTuple):
    matrix: np.ndarray  # (stop - start, n_band), includes 1 / AB normalisation
    start: int  # first wavelength index with a non-zero weight in any band
    stop: int  # one past the last such index


def _check_wavelength(wavelength: Any) -> np.ndarray:
    wave = np.asarray(wavelength, dtype=np.float64)
    if wave.ndim != 1 or wave.size < 2:
        raise KspecError(
            f"the wavelength axis must be 1-D with at least 2 points, got shape {wave.shape}; "
            "resample per-fiber wavelengths onto one common grid first"
        )
    if not np.all(np.isfinite(wave)):
        raise KspecError("the wavelength axis contains NaN or inf; give finite wavelengths in A")
    if not np.all(np.diff(wave) > 0):
        raise KspecError(
            "the wavelength axis must be strictly increasing; sort the spectrum by wavelength "
            "(e.g. ds.sortby('wavelength')) and drop duplicate pixels"
        )
    return wave


def _trapezoid_weights_np(wave: np.ndarray) -> np.ndarray:
    """w such that sum(w * y) == np.trapezoid(y, wave) for any y."""
    dw = np.diff(wave)
    w = np.empty_like(wave)
    w[0] = dw[0] / 2
    w[-1] = dw[-1] / 2
    w[1:-1] = (dw[:-1] + dw[1:]) / 2
    return w


def _band_weights_np(wave: np.ndarray, bands: tuple[str, ...]) -> _Weights:
    lo, hi = wave[0], wave[-1]
    trap = _trapezoid_weights_np(wave)
    ab_flux = _AB_FNU * _C_ANGSTROM_PER_S / wave**2  # f_nu = 3631 Jy as F_lambda
    columns = []
    for band in bands:
        fwave, fresp = filter_curve(band)
        # The response is non-zero strictly between fwave[0] and fwave[-1];
        # allow only floating-point rounding (1e-9 relative) at the ends.
        if fwave[0] < lo * (1 - 1e-9) or fwave[-1] > hi * (1 + 1e-9):
            raise KspecError(
                f"band {band!r} transmits over {fwave[0]:.1f}-{fwave[-1]:.1f} A but the "
                f"spectrum covers only {lo:.1f}-{hi:.1f} A; drop that band or extend the "
                "spectrum (e.g. with a model) to cover it"
            )
        column = trap * np.interp(wave, fwave, fresp, left=0.0, right=0.0) * wave
        n_inside = np.count_nonzero(column > 0)
        if n_inside < _MIN_SAMPLES:
            raise KspecError(
                f"the wavelength grid samples band {band!r} ({fwave[0]:.1f}-{fwave[-1]:.1f} A) "
                f"at only {n_inside} points; use a grid at least {_MIN_SAMPLES} points across it"
            )
        norm = ab_flux @ column
        columns.append(column / norm)
    matrix = np.stack(columns, axis=-1)
    used = np.flatnonzero(np.any(matrix > 0, axis=-1))
    start, stop = int(used[0]), int(used[-1]) + 1
    matrix = np.ascontiguousarray(matrix[start:stop])
    matrix.setflags(write=False)
    return _Weights(matrix, start, stop)


@functools.lru_cache(maxsize=32)
def _cached_weights(grid: _Grid, bands: tuple[str, ...]) -> _Weights:
    return _band_weights_np(grid.wavelength, bands)


def _weights(wavelength: Any, bands: str | Sequence[str]) -> tuple[_Weights, tuple[str, ...]]:
    bands = _check_bands(bands)
    wave = _check_wavelength(wavelength)
    wave = wave.copy()
    wave.setflags(write=False)
    return _cached_weights(_Grid(wave), bands), bands


def band_weights(wavelength: Any, bands: str | Sequence[str]) -> np.ndarray:
    """Weight matrix W with ``mag = -2.5 log10(flux @ W)`` (see :func:`synthetic_mags`).

    Parameters
    ----------
    wavelength : array_like, shape (n_wave,)
        Strictly increasing vacuum wavelengths, A.
    bands : str or sequence of str
        Names from :data:`KNOWN_BANDS`.

    Returns
    -------
    numpy.ndarray, shape (n_wave, n_band)
        A fresh array (the cached one is kept private).  Column ``b`` is
        ``w_i S_b(lambda_i) lambda_i / N_b`` with trapezoid weights ``w_i`` and
        ``N_b`` the same sum for a flat f_nu = 3631 Jy spectrum.
    """
    weights, bands = _weights(wavelength, bands)
    out = np.zeros((np.asarray(wavelength).shape[0], len(bands)))
    out[weights.start : weights.stop] = weights.matrix
    return out


def _mags_np(flux: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """AB magnitudes from (..., n) fluxes and an (n, n_band) weight matrix.

    Non-finite flux where a band has non-zero weight, or a non-positive band
    integral, gives NaN for that band.
    """
    flux = np.asarray(flux, dtype=np.float64)
    finite = np.isfinite(flux)
    if finite.all():
        integral = flux @ matrix
        bad = np.zeros(integral.shape, dtype=bool)
    else:
        integral = np.where(finite, flux, 0.0) @ matrix
        bad = ((~finite).astype(np.float64) @ (matrix > 0).astype(np.float64)) > 0
    bad |= ~(integral > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mags = -2.5 * np.log10(np.where(bad, 1.0, integral))
    mags[bad] = np.nan
    return mags


def synthetic_mags(
    wavelength: Any, flux: np.ndarray | xr.DataArray, bands: str | Sequence[str]
) -> np.ndarray | xr.DataArray:
    """Synthetic AB magnitudes of many spectra through speclite filter curves.

    Parameters
    ----------
    wavelength : array_like, shape (n_wave,), or None
        Strictly increasing vacuum wavelengths in A.  May be None when ``flux``
        is a DataArray with a 1-D ``wavelength`` coordinate (if both are given
        they must agree).
    flux : numpy.ndarray (..., n_wave) or xarray.DataArray with a ``wavelength`` dim
        F_lambda in erg/s/cm2/A (other units shift every magnitude by
        -2.5 log10 of the unit's size).  A DataArray may be dask-backed; the
        result then stays lazy (``wavelength`` should be one chunk).
    bands : str or sequence of str
        Names from :data:`KNOWN_BANDS`, e.g. ``["gaiadr2-BP", "panstarrs-r"]``.

    Returns
    -------
    numpy.ndarray (..., n_band) or xarray.DataArray
        AB magnitudes.  A DataArray has the ``wavelength`` dim replaced by a
        trailing ``band`` dim (coordinate = band names), ``units='mag'``,
        ``system='AB'``.  NaN where the band integral is not positive or where
        the flux is NaN/inf inside the band -- data, not an error.

    Raises
    ------
    KspecError
        Unknown band; a band whose transmission reaches outside the spectrum's
        wavelength range (the message names the band and both ranges);
        an unusable wavelength axis.
    TypeError
        ``flux`` is neither a NumPy array nor a DataArray.

    Notes
    -----
    Photon-counting AB magnitude (Fukugita et al. 1996; speclite's convention)::

        m = -2.5 log10( ∫ F_λ S(λ) λ dλ / ∫ (c/λ²) 3631 Jy S(λ) λ dλ )

    Both integrals use the same trapezoid rule on the spectrum's own grid, with
    S linearly interpolated onto it (zero outside the tabulated curve), so a
    flat f_nu = 3631 Jy spectrum gives exactly 0 whatever the sampling.  Per
    (grid, bands) the weights ``W[i, b] = w_i S_b(λ_i) λ_i / N_b`` are built
    once and cached (keyed on a hash of the grid), and the magnitudes of all
    spectra are one matrix product: ``m = -2.5 log10(flux @ W)``.  Rows where
    no band transmits are skipped.

    Examples
    --------
    >>> import numpy as np
    >>> wave = np.linspace(3000.0, 11500.0, 20000)
    >>> flat = 3631e-23 * 2.99792458e18 / wave**2      # f_nu = 3631 Jy
    >>> np.round(synthetic_mags(wave, flat, ["panstarrs-g", "gaiadr2-RP"]), 6) + 0.0
    array([0., 0.])
    """
    if isinstance(flux, xr.DataArray):
        return _synthetic_mags_xr(wavelength, flux, bands)
    if not isinstance(flux, np.ndarray | list | tuple):
        raise TypeError(
            f"flux must be a numpy array (..., n_wave) or an xarray.DataArray, got {type(flux).__name__}"
        )
    if wavelength is None:
        raise KspecError("wavelength is required when flux is a NumPy array")
    flux = np.asarray(flux)
    weights, _ = _weights(wavelength, bands)
    if flux.ndim == 0 or flux.shape[-1] != np.shape(wavelength)[0]:
        raise KspecError(
            f"flux has shape {flux.shape} but the wavelength axis has {np.shape(wavelength)[0]} "
            "points; wavelength must run along the last axis of flux"
        )
    return _mags_np(flux[..., weights.start : weights.stop], weights.matrix)


def _synthetic_mags_xr(
    wavelength: Any, flux: xr.DataArray, bands: str | Sequence[str]
) -> xr.DataArray:
    if "wavelength" not in flux.dims:
        raise KspecError(
            f"flux has dims {flux.dims} but no 'wavelength' dim; rename the spectral dim to "
            "'wavelength' (after resampling onto one common grid)"
        )
    if "band" in flux.dims:
        raise KspecError("flux already has a 'band' dim; rename it before computing magnitudes")
    coord = flux.coords["wavelength"] if "wavelength" in flux.coords else None
    if coord is not None and coord.dims != ("wavelength",):
        raise KspecError(
            f"flux has a {coord.dims} wavelength coordinate; synthetic_mags needs one common 1-D "
            "wavelength axis - resample the spectra onto a common grid first"
        )
    if wavelength is None:
        if coord is None:
            raise KspecError("flux has no 'wavelength' coordinate; pass wavelength= explicitly")
        wavelength = coord.values
    elif coord is not None and not np.allclose(
        np.asarray(wavelength, float), coord.values, rtol=0, atol=1e-6
    ):
        raise KspecError(
            "the wavelength argument differs from flux's wavelength coordinate; pass wavelength=None"
        )
    if np.shape(wavelength)[0] != flux.sizes["wavelength"]:
        raise KspecError(
            f"wavelength has {np.shape(wavelength)[0]} points but flux has {flux.sizes['wavelength']}"
        )
    weights, bands = _weights(wavelength, bands)
    sub = flux.isel(wavelength=slice(weights.start, weights.stop))
    matrix = xr.DataArray(weights.matrix, dims=("wavelength", "band"))
    mags = xr.apply_ufunc(
        _mags_np,
        sub.drop_vars("wavelength", errors="ignore"),
        matrix,
        input_core_dims=[["wavelength"], ["wavelength", "band"]],
        output_core_dims=[["band"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},
        keep_attrs=False,
    )
    mags = mags.drop_vars([c for c in mags.coords if "wavelength" in mags[c].dims])
    return mags.assign_coords(band=list(bands)).assign_attrs(
        units="mag",
        system="AB",
        long_name="synthetic AB magnitude",
        convention="photon-counting, speclite filter curves",
    )


# --------------------------------------------------------------------------
# Teff from colours
# --------------------------------------------------------------------------


def colour_pair_indices(bands: Sequence[str], colours=None) -> np.ndarray:
    """(k, 2) indices into ``bands`` of the colours (default :data:`COLOUR_PAIRS`) both present."""
    index = {str(b): i for i, b in enumerate(bands)}
    pairs = COLOUR_PAIRS if colours is None else colours
    return np.array(
        [[index[b], index[r]] for b, r in pairs if b in index and r in index], dtype=np.intp
    ).reshape(-1, 2)


class ColourChi2:
    """χ² of observed colours against model magnitudes, the covariance built once.

    Parameters
    ----------
    mags, errs : (s, B) arrays
        Observed AB magnitudes and 1σ errors of ``s`` stars (NaN = missing).
    pairs : (k, 2) int array
        Band indices (blue, red) of the colours to use.
    floor : float
        Error floor added in quadrature to every colour, mag.

    Notes
    -----
    Colours ``c = m_blue − m_red`` with covariance ``C = A diag(σ_m²) Aᵀ +
    floor² I`` per star (A maps bands to colours, so colours sharing a band
    are correlated); a model scores ``(c_obs − c_t)ᵀ C⁻¹ (c_obs − c_t)`` over
    the star's available colours.  Colours, not magnitudes: a template's
    absolute level is unknown until it is scaled.
    """

    def __init__(self, mags: np.ndarray, errs: np.ndarray, pairs, *, floor: float = 0.01):
        pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
        mags = np.atleast_2d(mags)
        errs = np.atleast_2d(errs)
        self.blue, self.red = pairs[:, 0], pairs[:, 1]
        n_col = len(pairs)
        obs_col = mags[:, self.blue] - mags[:, self.red]  # (s, k)
        self.avail = (
            np.isfinite(obs_col) & np.isfinite(errs[:, self.blue]) & np.isfinite(errs[:, self.red])
        )
        self.n_colours = self.avail.sum(axis=-1)
        self.obs_col = obs_col
        design = np.zeros((n_col, mags.shape[-1]))
        design[np.arange(n_col), self.blue] = 1.0
        design[np.arange(n_col), self.red] = -1.0
        var = np.where(np.isfinite(errs), errs, 0.0) ** 2
        cov = np.einsum("kb,sb,lb->skl", design, var, design) + floor**2 * np.eye(n_col)
        pair_ok = self.avail[:, :, None] & self.avail[:, None, :]
        cov = np.where(pair_ok, cov, np.eye(n_col))
        self.inv = np.linalg.inv(cov) if n_col else cov

    def __call__(self, model_mags: np.ndarray) -> np.ndarray:
        """(t, B) model magnitudes → (s, t) χ² (inf where a model lacks a used colour)."""
        model_mags = np.atleast_2d(model_mags)
        model_col = model_mags[:, self.blue] - model_mags[:, self.red]  # (t, k)
        resid = np.where(
            self.avail[:, None, :], self.obs_col[:, None, :] - model_col[None, :, :], 0.0
        )
        missing = (self.avail[:, None, :] & ~np.isfinite(model_col)[None, :, :]).any(axis=-1)
        resid = np.where(np.isfinite(resid), resid, 0.0)
        chi2 = np.einsum("stk,skl,stl->st", resid, self.inv, resid)
        chi2[missing] = np.inf
        return chi2


def _teff_from_colours_np(
    mags: np.ndarray,
    errs: np.ndarray,
    grid_mags: np.ndarray,
    grid_teff: np.ndarray,
    *,
    pairs: np.ndarray,
    floor: float,
    nsigma: float,
    teff_step: float | None,
) -> tuple[np.ndarray, ...]:
    """χ² colour match of stars (..., n_band) against templates (n_template, n_band).

    Returns teff, teff_lo, teff_hi, n_colours, chi2_min, flag, each (...).
    """
    shape = mags.shape[:-1]
    mags = mags.reshape(-1, mags.shape[-1])
    errs = errs.reshape(-1, errs.shape[-1])
    n_star = mags.shape[0]
    metric = ColourChi2(mags, errs, pairs, floor=floor)
    n_colours = metric.n_colours
    chi2 = metric(grid_mags)

    # χ² profile over Teff: best template at each Teff node.
    order = np.argsort(grid_teff, kind="stable")
    nodes, first = np.unique(grid_teff[order], return_index=True)
    profile = np.minimum.reduceat(chi2[:, order], first, axis=1)  # (s, u)
    n_node = nodes.size
    best = np.argmin(profile, axis=1)
    rows = np.arange(n_star)
    chi2_min = profile[rows, best]

    # Sub-node Teff: vertex of the parabola through the minimum and its neighbours.
    lo_i, hi_i = np.clip(best - 1, 0, n_node - 1), np.clip(best + 1, 0, n_node - 1)
    x0, x1, x2 = nodes[lo_i], nodes[best], nodes[hi_i]
    y0, y1, y2 = profile[rows, lo_i], chi2_min, profile[rows, hi_i]
    with np.errstate(divide="ignore", invalid="ignore"):
        d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        curv = (d12 - d01) / (x2 - x0)
        vertex = 0.5 * (x0 + x1) - d01 / (2 * curv)
    interior = (best > 0) & (best < n_node - 1) & np.isfinite(y0 + y2) & (curv > 0)
    teff = np.where(interior, np.clip(vertex, x0, x2), x1)

    # Search box: every node within Δχ² ≤ nsigma² of the minimum, widened to at
    # least one grid step either side of the estimate.
    accepted = profile <= (chi2_min + nsigma**2)[:, None]
    node_grid = np.broadcast_to(nodes, profile.shape)
    box_lo = np.where(accepted, node_grid, np.inf).min(axis=1)
    box_hi = np.where(accepted, node_grid, -np.inf).max(axis=1)
    if teff_step is None:  # the local node spacing below / above the best node
        step_lo = np.where(best > 0, x1 - x0, x2 - x1)
        step_hi = np.where(best < n_node - 1, x2 - x1, x1 - x0)
    else:
        step_lo = step_hi = teff_step
    box_lo = np.maximum(np.minimum(box_lo, teff - step_lo), nodes[0])
    box_hi = np.minimum(np.maximum(box_hi, teff + step_hi), nodes[-1])

    no_colour = n_colours == 0
    no_template = ~no_colour & ~np.isfinite(chi2_min)
    unusable = no_colour | no_template
    flag = (
        no_colour * TEFF_FLAGS["no_colour"]
        + no_template * TEFF_FLAGS["no_template"]
        + (~unusable & (n_node > 1) & ((best == 0) | (best == n_node - 1)))
        * TEFF_FLAGS["grid_edge"]
    ).astype(np.int32)
    teff = np.where(unusable, np.nan, teff)
    chi2_min = np.where(unusable, np.nan, chi2_min)
    box_lo = np.where(unusable, nodes[0], box_lo)
    box_hi = np.where(unusable, nodes[-1], box_hi)
    return tuple(
        a.reshape(shape) for a in (teff, box_lo, box_hi, n_colours.astype(np.int32), chi2_min, flag)
    )


def _as_template_grid(grid_mags: xr.DataArray) -> xr.DataArray:
    """(template, band) view of a grid of synthetic mags with a ``teff`` coordinate."""
    if "band" not in grid_mags.dims:
        raise KspecError(f"grid_mags has dims {grid_mags.dims} but no 'band' dim")
    if "teff" not in grid_mags.coords:
        raise KspecError(
            "grid_mags has no 'teff' coordinate; give the template grid's synthetic magnitudes "
            "with dims (template, band) and a teff(template) coordinate, or (teff, ..., band)"
        )
    others = [d for d in grid_mags.dims if d != "band"]
    if others == ["template"]:
        grid = grid_mags
    else:
        grid = grid_mags.stack(template=others)
    grid = grid.transpose("template", "band")
    if grid["teff"].dims != ("template",):
        raise KspecError(
            f"grid_mags' teff coordinate has dims {grid_mags['teff'].dims}; it must vary "
            "along the template axes only"
        )
    return grid


def teff_from_colours(
    mags: xr.DataArray,
    mag_errs: xr.DataArray,
    grid_mags: xr.DataArray,
    *,
    teff_step: float | None = None,
    nsigma: float = 3.0,
    floor: float = 0.01,
    colours: Sequence[tuple[str, str]] | None = None,
) -> xr.Dataset:
    """Teff estimate and Teff search box per star from catalogue colours.

    The colour--Teff relation is the template grid's own: observed colours are
    compared with the synthetic colours of every template.

    Parameters
    ----------
    mags, mag_errs : xarray.DataArray (star, band)
        Observed AB magnitudes and their 1σ errors; NaN = missing.  The
        non-``band`` dims (any name, e.g. ``star`` or ``standard``) are kept.
    grid_mags : xarray.DataArray
        Synthetic AB magnitudes of the template grid, dims ``(template, band)``
        with a ``teff(template)`` coordinate, or ``(teff, logg, mh, alpha,
        band)`` (any parameter dims, ``teff`` among them); e.g. the output of
        :func:`synthetic_mags` on the grid.  NaN marks a template/band with no
        magnitude.
    teff_step : float, optional
        Minimum half-width of the box around the estimate, K.  Default: the
        grid's own Teff spacing next to the best node, so that the box always
        reaches at least one Teff node beyond the estimate on either side
        (box edges are not necessarily nodes; they are clipped to the grid).
    nsigma : float
        The box covers every Teff node whose best template has
        χ² ≤ χ²_min + nsigma².
    floor : float
        Error floor added in quadrature to every colour, mag.
    colours : sequence of (blue, red) band pairs, optional
        Colours to use; default :data:`COLOUR_PAIRS` (Gaia BP−RP and G−RP,
        PS1 g−r, r−i, i−z, SDSS likewise), restricted to those whose bands are
        in ``grid_mags``.

    Returns
    -------
    xarray.Dataset
        On the stars' dims: ``teff_colour`` (K, NaN without colours),
        ``teff_lo``, ``teff_hi`` (K; the whole grid range without colours),
        ``n_colours``, ``chi2_colour`` (χ² of the best template) and
        ``teff_colour_flag`` (bits :data:`TEFF_FLAGS`: ``no_colour``,
        ``grid_edge`` -- best Teff at the edge of the grid, ``no_template`` --
        no template has the star's colours).

    Raises
    ------
    KspecError
        ``grid_mags`` without a ``teff`` coordinate or without any of the
        colour bands; ``mags``/``mag_errs`` without a ``band`` dim.
    TypeError
        Inputs that are not DataArrays.

    Notes
    -----
    With colours c = m_blue − m_red and, per star, the colour covariance
    ``C = A diag(σ_m²) Aᵀ + floor² I`` (A maps bands to colours, so colours
    sharing a band are correlated), each template t scores

        χ²_t = (c_obs − c_t)ᵀ C⁻¹ (c_obs − c_t)

    over the star's available colours.  The χ² profile over Teff (best
    template per Teff node, any logg/[M/H]/[α/M]) gives the estimate: the
    node of minimum χ², refined to the vertex of the parabola through it and
    its two neighbours.  Interstellar reddening is not modelled: reddened
    stars come out too cool.  (A per-star E(B−V) argument is planned.)

    Dask-backed inputs stay lazy (chunks along the star dims).
    """
    for name, arr in (("mags", mags), ("mag_errs", mag_errs), ("grid_mags", grid_mags)):
        if not isinstance(arr, xr.DataArray):
            raise TypeError(f"{name} must be an xarray.DataArray, got {type(arr).__name__}")
    for name, arr in (("mags", mags), ("mag_errs", mag_errs)):
        if "band" not in arr.dims or "band" not in arr.coords:
            raise KspecError(f"{name} has dims {arr.dims}; it needs a 'band' dim with band names")
    grid = _as_template_grid(grid_mags)
    grid_bands = {str(b) for b in grid["band"].values}
    pairs = [tuple(p) for p in (COLOUR_PAIRS if colours is None else colours)]
    for pair in pairs:
        if len(pair) != 2:
            raise TypeError(f"each colour must be a (blue, red) pair of band names, got {pair!r}")
    pairs = [p for p in pairs if p[0] in grid_bands and p[1] in grid_bands]
    if not pairs:
        raise KspecError(
            "grid_mags has none of the colour bands "
            f"{sorted({b for p in (colours or COLOUR_PAIRS) for b in p})}; compute the grid's "
            "synthetic magnitudes through at least Gaia BP/RP or PS1 g/r"
        )
    used = list(dict.fromkeys(b for p in pairs for b in p))
    index = {b: i for i, b in enumerate(used)}
    pair_idx = np.array([[index[b], index[r]] for b, r in pairs], dtype=np.intp)

    teff_coord = np.asarray(grid["teff"].values, dtype=np.float64)
    if not np.all(np.isfinite(teff_coord)):
        raise KspecError("grid_mags' teff coordinate contains NaN; every template needs a Teff")
    # The Teff coordinate goes in as a positional array, not through kwargs.
    grid_teff = xr.DataArray(teff_coord, dims=("template",))
    grid_used = grid.sel(band=used).drop_vars([c for c in grid.coords if c not in ("band",)])
    grid_used = grid_used.drop_vars("band")
    obs = mags.reindex(band=used).drop_vars("band")
    err = mag_errs.reindex(band=used).drop_vars("band")

    outputs = xr.apply_ufunc(
        functools.partial(
            _teff_from_colours_np,
            pairs=pair_idx,
            floor=float(floor),
            nsigma=float(nsigma),
            teff_step=None if teff_step is None else float(teff_step),
        ),
        obs,
        err,
        grid_used,
        grid_teff,
        input_core_dims=[["band"], ["band"], ["template", "band"], ["template"]],
        output_core_dims=[[]] * 6,
        dask="parallelized",
        output_dtypes=[np.float64, np.float64, np.float64, np.int32, np.float64, np.int32],
        dask_gufunc_kwargs={"allow_rechunk": True},
        keep_attrs=False,
    )
    teff, lo, hi, n_col, chi2, flag = outputs
    described = ", ".join(f"{b} - {r}" for b, r in pairs)
    return xr.Dataset(
        {
            "teff_colour": teff.assign_attrs(units="K", long_name="Teff from photometric colours"),
            "teff_lo": lo.assign_attrs(units="K", long_name="lower edge of the Teff search box"),
            "teff_hi": hi.assign_attrs(units="K", long_name="upper edge of the Teff search box"),
            "n_colours": n_col.assign_attrs(units="1", long_name="number of colours used"),
            "chi2_colour": chi2.assign_attrs(
                units="1", long_name="colour chi2 of the best template"
            ),
            "teff_colour_flag": flag.assign_attrs(
                units="1",
                long_name="Teff-from-colours quality flags",
                flag_masks=np.array(list(TEFF_FLAGS.values()), dtype=np.int32),
                flag_meanings=" ".join(TEFF_FLAGS),
            ),
        },
        attrs={
            "colours": described,
            "colour_error_floor_mag": float(floor),
            "teff_box_nsigma": float(nsigma),
            "reddening": "not modelled (colours compared unreddened)",
        },
    )
