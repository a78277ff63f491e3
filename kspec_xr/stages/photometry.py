"""Synthetic AB magnitudes of spectra through speclite filter curves (NumPy or xarray).

:func:`synthetic_mags` integrates spectra (F_lambda, erg/s/cm2/A, against a
vacuum wavelength axis in A) through the transmission curves bundled with
speclite.  The integral is one matrix product, ``flux @ W``, with a weight
matrix ``W`` (:func:`kspec_xr.kernels.photometry.band_weights`) built once per
(wavelength grid, bands) and kept in a small content-keyed cache of this
module -- the same idea as xESMF's ``Regridder`` building its weights once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .._base.bands import check_bands, filter_curve
from .._base.errors import KspecError
from ..kernels.photometry import Weights, mags_from_weights
from ..kernels.photometry import band_weights as band_weights_kernel

__all__ = ["synthetic_mags", "band_weights"]


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


@functools.lru_cache(maxsize=32)
def _cached_weights(grid: _Grid, bands: tuple[str, ...]) -> Weights:
    curves = [filter_curve(b) for b in bands]
    return band_weights_kernel(grid.wavelength, curves, bands)


def _weights(wavelength: Any, bands: str | Sequence[str]) -> tuple[Weights, tuple[str, ...]]:
    bands = check_bands(bands)
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


def synthetic_mags(
    wavelength: Any, flux: np.ndarray | xr.DataArray, bands: str | Sequence[str]
) -> np.ndarray | xr.DataArray:
    """Synthetic AB magnitudes of many spectra through speclite filter curves.

    Parameters
    ----------
    wavelength : array_like, shape (n_wave,), or None
        Strictly increasing vacuum wavelengths in A.  May be None when ``flux``
        is a DataArray with a 1-D ``wavelength`` coordinate (if both are given
        they must agree).  They are used as given, like the filter curves
        (as speclite tabulates them): the air wavelengths of a 2dfdr
        exposure shift a broad-band magnitude by < 1 mmag; for the exact
        value pass ``kx.vacuum_wavelength(ds).values`` with NumPy fluxes.
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
    return mags_from_weights(flux[..., weights.start : weights.stop], weights.matrix)


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
        mags_from_weights,
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
