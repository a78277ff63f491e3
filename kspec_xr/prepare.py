"""The template grid prepared for one instrument setup, built once and cached.

Preparing a grid for an exposure's wavelength range and resolution is the
expensive, reusable part of the fit (as xESMF's ``Regridder`` builds its
weights once): every template is convolved to the instrument FWHM (less the
grid's own resolution, in quadrature) and rebinned, flux-conservingly, onto a
working grid uniform in ln λ, where a radial velocity is a plain index shift.
The result is an ``xr.Dataset`` cached on disk, keyed by (grid identity,
wavelength grid, FWHM), so every later exposure of the same setup — in this
process or any other — loads it in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ._atomic import atomic_output
from ._paths import cache_dir
from .errors import CalibrationError, TemplateError
from .resample import (
    SIGMA_PER_FWHM,
    bin_log_grid,
    bin_pixels,
    edges_from_centers,
    resample_matrix,
)
from .rv import C_KMS

__all__ = ["prepare_templates", "fwhm_at", "PREPARE_VERSION"]

#: bump when the prepared product changes, so old cache entries are not reused
PREPARE_VERSION = 3

FWHM = float | Sequence[float] | Callable[[np.ndarray], np.ndarray]


def fwhm_at(fwhm: FWHM, wavelength: np.ndarray) -> np.ndarray:
    """Instrument FWHM (Å) at each wavelength.

    ``fwhm`` is a constant (Å), polynomial coefficients in λ (Å, lowest order
    first: ``c0 + c1·λ + c2·λ² …``) or a callable of λ.
    """
    lam = np.asarray(wavelength, dtype=float)
    if callable(fwhm):
        out = np.asarray(fwhm(lam), dtype=float)
    elif np.ndim(fwhm) == 0:
        out = np.full_like(lam, float(fwhm))
    else:
        out = np.polynomial.polynomial.polyval(lam, np.asarray(fwhm, dtype=float))
    out = np.broadcast_to(out, lam.shape)
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise CalibrationError(
            f"the instrument FWHM must be positive over {lam.min():.0f}-{lam.max():.0f} Å; "
            "give a constant in Å (e.g. fwhm=2.5) or polynomial coefficients in λ"
        )
    return out


def _working_grid(
    wavelength: np.ndarray, fwhm: np.ndarray, *, vmax: float, oversample: int
) -> np.ndarray:
    """Log-uniform grid covering the exposure (plus RV and kernel margins)."""
    lnl = np.log(wavelength)
    dlnl = float(np.min(np.diff(lnl))) / oversample
    margin = vmax / C_KMS + 6 * float(np.max(fwhm / wavelength)) / SIGMA_PER_FWHM
    lo = lnl[0] - margin
    n = int(np.ceil((lnl[-1] + margin - lo) / dlnl)) + 1
    return np.exp(lo + dlnl * np.arange(n))


def _cache_key(grid: xr.DataArray, wavelength, fwhm, vmax, oversample) -> str:
    grid_id = grid.attrs.get("grid_id")
    if not grid_id:
        raise TemplateError(
            "the template grid has no 'grid_id' attribute, so its prepared form cannot be "
            "cached; open it with kx.open_bosz(...) or set grid.attrs['grid_id'] to a "
            "string that identifies its content, or pass cache=False"
        )
    from .photometry import KNOWN_BANDS

    h = hashlib.sha256()
    # the bands are part of the key: a grid prepared before a band was known lacks its mags
    key = [PREPARE_VERSION, str(grid_id), float(vmax), int(oversample), list(KNOWN_BANDS)]
    h.update(json.dumps(key).encode())
    h.update(np.ascontiguousarray(wavelength, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(fwhm, dtype="<f8").tobytes())
    return h.hexdigest()[:24]


def _stack_templates(grid: xr.DataArray) -> xr.DataArray:
    """(teff, logg, mh, alpha, wavelength) → (template, wavelength), holes dropped."""
    if "wavelength" not in grid.dims:
        raise TemplateError(f"the template grid has no 'wavelength' dimension (dims {grid.dims})")
    params = [d for d in grid.dims if d != "wavelength"]
    if params == ["template"]:
        stacked = grid
    else:
        stacked = grid.stack(template=params).transpose("template", "wavelength")
        stacked = stacked.drop_vars(["template", *params]).assign_coords(
            {p: ("template", stacked[p].values) for p in params}
        )
    if "filename" in stacked.coords:  # holes are known from the index, no read needed
        present = np.asarray(stacked["filename"].values != "")
        stacked = stacked.isel(template=np.flatnonzero(present))
    return stacked


def _build(grid: xr.DataArray, wavelength: np.ndarray, fwhm: np.ndarray, *, vmax, oversample):
    from .photometry import KNOWN_BANDS, synthetic_mags

    if "continuum" not in grid.coords:
        raise TemplateError(
            "the template grid has no 'continuum' coordinate; open it with kx.open_bosz "
            "(BOSZ files carry the continuum as their last column)"
        )
    stacked = _stack_templates(grid)
    native = np.asarray(stacked["wavelength"].values, dtype=float)
    resolution = float(stacked.attrs.get("resolution", np.inf))
    work = _working_grid(wavelength, fwhm, vmax=vmax, oversample=oversample)

    fwhm_work = np.interp(work, wavelength, fwhm)  # per-pixel FWHM, held flat beyond the ends
    native_fwhm = work / resolution
    too_sharp = fwhm_work <= native_fwhm
    if np.any(too_sharp):
        raise TemplateError(
            f"the instrument FWHM ({fwhm_work[too_sharp].min():.3g} Å) is not broader than "
            f"the template grid's own resolution (R={resolution:g}); use a grid of higher R"
        )
    sigma = np.sqrt(fwhm_work**2 - native_fwhm**2) / SIGMA_PER_FWHM

    src_edges = edges_from_centers(native)
    dst_edges = edges_from_centers(work)
    try:
        matrix = resample_matrix(src_edges, dst_edges, sigma)
    except ValueError as err:
        raise TemplateError(
            f"the template grid ({native[0]:.0f}-{native[-1]:.0f} Å) does not cover the "
            f"exposure with its velocity and smoothing margins: {err}; open the grid with a "
            "wider wave_range"
        ) from None

    # One parallel read of every file (flux and continuum from the same read).
    flux, continuum = _compute_pair(stacked)
    bad = ~np.all(np.isfinite(flux), axis=1)
    if np.any(bad):
        keep = np.flatnonzero(~bad)
        stacked, flux, continuum = stacked.isel(template=keep), flux[keep], continuum[keep]
    if flux.shape[0] == 0:
        raise TemplateError("the template grid holds no complete spectrum")

    # every known band the grid covers (speclite curves; see photometry.KNOWN_BANDS)
    bands = [b for b in KNOWN_BANDS if _covers(native, b)]
    mags = synthetic_mags(native, flux, bands) if bands else np.empty((flux.shape[0], 0))

    conv_flux = np.asarray(matrix @ flux.T).T
    conv_cont = np.asarray(matrix @ continuum.T).T

    params = [c for c in ("teff", "logg", "mh", "alpha", "atm") if c in stacked.coords]
    coords = {p: ("template", stacked[p].values) for p in params}
    coords["wavelength"] = ("loglam", work, {"units": "Angstrom", "long_name": "wavelength"})
    coords["loglam"] = ("loglam", np.log(work), {"units": "1", "long_name": "ln(wavelength/Å)"})
    coords["band"] = ("band", np.array(bands, dtype=str))
    coords["loglam_scoring"] = (
        "loglam_scoring",
        bin_log_grid(np.log(work), oversample),
        {"units": "1", "long_name": "ln(wavelength/Å), binned to about one exposure pixel"},
    )
    units = stacked.attrs.get("units", "erg/s/cm2/A")
    binned = {"dims": ("template", "loglam_scoring"), "attrs": {"units": units}}
    return xr.Dataset(
        {
            "flux": (
                ("template", "loglam"),
                conv_flux.astype("float32"),
                {"units": units, "long_name": "surface flux at the instrument resolution"},
            ),
            "continuum": (
                ("template", "loglam"),
                conv_cont.astype("float32"),
                {"units": units, "long_name": "continuum at the instrument resolution"},
            ),
            "mags": (
                ("template", "band"),
                mags,
                {"units": "mag", "long_name": "synthetic AB magnitude of the surface flux"},
            ),
            # the grid the templates are ranked on, stored so that a new process
            # reads it whole and the full-resolution arrays only row by row
            "scoring_flux": (
                binned["dims"],
                bin_pixels(conv_flux, oversample).astype("float32"),
                binned["attrs"],
            ),
            "scoring_continuum": (
                binned["dims"],
                bin_pixels(conv_cont, oversample).astype("float32"),
                binned["attrs"],
            ),
        },
        coords=coords,
    )


def _compute_pair(stacked: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    import dask

    flux, cont = dask.compute(stacked.data, stacked["continuum"].data)
    return np.asarray(flux, dtype=float), np.asarray(cont, dtype=float)


def _covers(native: np.ndarray, band: str) -> bool:
    from .photometry import band_range

    lo, hi = band_range(band)
    return native[0] <= lo and hi <= native[-1]


def prepare_templates(
    grid: xr.DataArray,
    wavelength,
    fwhm: FWHM,
    *,
    vmax: float = 600.0,
    oversample: int = 3,
    cache: bool | str | os.PathLike = True,
) -> xr.Dataset:
    """Convolve, rebin and describe every template for one instrument setup.

    Parameters
    ----------
    grid : xr.DataArray
        Template grid from :func:`kspec_xr.open_bosz` (dims ``teff, logg, mh,
        alpha, wavelength`` or ``template, wavelength``, with a ``continuum``
        coordinate and ``resolution`` / ``grid_id`` attributes).
    wavelength : array-like or xr.DataArray
        The exposure's common wavelength grid (Å, increasing, 1-D).
    fwhm : float, sequence of float or callable
        Instrument FWHM in Å: a constant, polynomial coefficients in λ
        (lowest order first) or a function of λ.
    vmax : float
        Largest |radial velocity| (km/s) the working grid must allow for.
    oversample : int
        Working-grid pixels per exposure pixel at the exposure's finest
        sampling in ln λ.
    cache : bool or path
        ``True``: use the user cache folder; a path: use that folder;
        ``False``: always rebuild and never write.

    Returns
    -------
    xr.Dataset
        ``flux`` and ``continuum`` on ``(template, loglam)`` at the instrument
        resolution (float32), ``mags`` on ``(template, band)`` (synthetic AB
        magnitudes of the surface flux through every band the grid covers),
        template parameters as coordinates along ``template``, and
        ``wavelength(loglam)``.  ``attrs`` record the grid id, the FWHM, the
        step in ln λ and the cache key.

    Raises
    ------
    TemplateError
        The grid does not cover the exposure (with margins), is sharper than
        the instrument, or lacks a continuum or an identity for the cache.

    Notes
    -----
    Smoothing kernel: Gaussian with σ(λ) = sqrt(FWHM_inst(λ)² − (λ/R_grid)²)
    / 2.3548, integrated exactly over source and target bins
    (:func:`kspec_xr.resample.resample_matrix`); one sparse operator is
    applied to all templates at once.

    Examples
    --------
    >>> grid = kx.open_bosz()                                   # doctest: +SKIP
    >>> prep = kx.prepare_templates(grid, ds.wavelength, 2.5)   # doctest: +SKIP
    """
    if isinstance(wavelength, xr.DataArray):
        if wavelength.ndim != 1:
            raise ValueError(
                "prepare_templates needs the exposure's common 1-D wavelength grid; this "
                "exposure has a wavelength per fiber — resample it onto one grid first"
            )
        wavelength = wavelength.values
    wave = np.asarray(wavelength, dtype=float)
    if wave.ndim != 1 or wave.size < 2 or np.any(np.diff(wave) <= 0):
        raise ValueError("wavelength must be a strictly increasing 1-D grid (Å)")
    fwhm_pix = fwhm_at(fwhm, wave)

    path = None
    if cache is not False:
        folder = cache_dir("prepared") if cache is True else Path(cache)
        key = _cache_key(grid, wave, fwhm_pix, vmax, oversample)
        path = Path(folder) / f"prepared-{key}.nc"
        loaded = _MEMORY.get(path)
        if loaded is not None and path.exists() and loaded[0] == _stamp(path):
            return loaded[1]
        if path.exists():
            try:
                os.utime(path)  # "recently used", for _prune
                return _remember(path, _open_prepared(path))
            except Exception:  # a damaged cache entry is rebuilt, never trusted
                path.unlink(missing_ok=True)

    prepared = _build(grid, wave, fwhm_pix, vmax=vmax, oversample=oversample)
    prepared.attrs.update(
        {
            "grid_id": str(grid.attrs.get("grid_id", "")),
            "grid_source": str(grid.attrs.get("source", "")),
            "grid_resolution": float(grid.attrs.get("resolution", np.nan)),
            "fwhm_min": float(fwhm_pix.min()),
            "fwhm_max": float(fwhm_pix.max()),
            "dlnl": float(np.diff(prepared["loglam"].values[:2])[0]),
            "vmax": float(vmax),
            "oversample": int(oversample),
            "exposure_wave_min": float(wave[0]),
            "exposure_wave_max": float(wave[-1]),
            "prepare_version": PREPARE_VERSION,
        }
    )
    if path is not None:
        prepared.attrs["cache_key"] = path.stem
        _atomic_netcdf(prepared, path)
        _remember(path, prepared)
        _prune(path.parent, keep=CACHE_KEPT)
    return prepared


#: prepared grids kept in a cache folder (the most recently used; ~100 MB each
#: for the 572-template stand-in grid on a 4096-pixel setup)
CACHE_KEPT = 12


def _prune(folder: Path, *, keep: int) -> None:
    """Delete all but the ``keep`` most recently used prepared grids in ``folder``."""
    entries = sorted(folder.glob("prepared-*.nc"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        if old not in _MEMORY:
            old.unlink(missing_ok=True)


def _open_prepared(path: Path) -> xr.Dataset:
    """A cached prepared grid: everything in memory but the full-resolution templates.

    ``flux`` and ``continuum`` stay on disk and are read a few rows at a time
    (the nodes of a star's final model); the binned scoring grid is what the
    fit reads whole.
    """
    ds = xr.open_dataset(path)
    for name in ds.variables:
        if name not in ("flux", "continuum"):
            ds[name].load()
    return ds


#: the prepared grids this process loaded last (a night's exposures share a setup)
_MEMORY: dict[Path, tuple[tuple[int, int], xr.Dataset]] = {}
_MEMORY_KEPT = 2


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime, size) of a cache file: a replaced or damaged file is read again."""
    info = path.stat()
    return info.st_mtime_ns, info.st_size


def _remember(path: Path, prepared: xr.Dataset) -> xr.Dataset:
    _MEMORY.pop(path, None)
    _MEMORY[path] = (_stamp(path), prepared)
    while len(_MEMORY) > _MEMORY_KEPT:
        _MEMORY.pop(next(iter(_MEMORY)))
    return prepared


def _atomic_netcdf(ds: xr.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        ds.to_netcdf(tmp)
