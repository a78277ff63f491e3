"""Fit a stellar template and a radial velocity to every standard star.

The xarray stage around :mod:`kspec_xr.matching`: it resolves the template
grid (prepared once per instrument setup and cached, see
:func:`kspec_xr.prepare_templates`), sets each star's Teff search box from its
colours, and runs the per-star kernel over the ``standard`` dimension with
``xr.apply_ufunc`` — lazily when the exposure is dask-backed.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import xarray as xr

from .errors import CalibrationError
from .io import add_history, primary_header
from .maskbits import bit
from .matching import PreparedGrid, fit_star
from .photometry import colour_pair_indices
from .regions import in_regions
from .standards import standard_index
from .status import FitStatus, StandardStatus, fit_status_attrs, with_status

__all__ = ["fit_standards", "resolve_templates", "teff_candidates"]


def header_fwhm(ds: xr.Dataset) -> float:
    """The instrument FWHM (Å) from the ``SPECFWHM`` header card."""
    value = primary_header(ds).get("SPECFWHM")
    if value is None or not np.isfinite(float(value)) or float(value) <= 0:
        raise CalibrationError(
            "the primary header has no usable SPECFWHM (instrument FWHM in Å); pass fwhm=... "
            "(CLI: --fwhm, pipeline: CALIBFLUX_FWHM)"
        )
    return float(value)


def resolve_templates(templates, wavelength, fwhm, *, cache=True) -> xr.Dataset:
    """A prepared grid (``prepare_templates`` output) from whatever the caller gave.

    ``None`` → the bundled stand-in grid; a path → :func:`kspec_xr.open_bosz`;
    a grid DataArray → prepared (and cached); a prepared Dataset → checked and
    returned.
    """
    from .prepare import prepare_templates
    from .templates import open_bosz

    if isinstance(templates, xr.Dataset) and "loglam" in templates.dims:
        lo, hi = templates.attrs.get("exposure_wave_min"), templates.attrs.get("exposure_wave_max")
        wave = np.asarray(wavelength)
        if lo is not None and (wave[0] < lo - 1e-6 or wave[-1] > hi + 1e-6):
            raise CalibrationError(
                f"the prepared templates cover {lo:.0f}-{hi:.0f} Å but the exposure spans "
                f"{wave[0]:.0f}-{wave[-1]:.0f} Å; prepare them for this exposure's grid"
            )
        return templates
    if templates is None or isinstance(templates, str | os.PathLike):
        templates = open_bosz(templates)
    if not isinstance(templates, xr.DataArray):
        raise TypeError(
            "templates must be None (bundled grid), a path to a BOSZ directory or packed cube, "
            f"a grid from kx.open_bosz or a prepared grid; got {type(templates).__name__}"
        )
    return prepare_templates(templates, wavelength, fwhm, cache=cache)


#: kernel-ready grids of recently used prepared grids, by (cache key, [α/M]):
#: every exposure of a night shares one setup, so a worker builds it once
_GRIDS: OrderedDict = OrderedDict()
_GRIDS_KEPT = 2


class _Rows:
    """Rows of a (template, loglam) array, read when asked for and kept.

    A prepared grid opened from the cache keeps its full-resolution templates
    on disk; a star's final model needs only the few nodes around it, and a
    night's standards keep needing the same ones.
    """

    def __init__(self, da: xr.DataArray, *, kept: int = 256):
        self._da = da
        self.shape = da.shape
        self._rows: OrderedDict[int, np.ndarray] = OrderedDict()
        self._kept = kept

    def __getitem__(self, rows) -> np.ndarray:
        if np.ndim(rows) == 0:
            return self[[rows]][0]
        rows = np.asarray(rows)
        missing = [int(r) for r in rows if int(r) not in self._rows]
        if missing:
            values = np.asarray(self._da.isel(template=missing).values)
            self._rows.update(zip(missing, values, strict=True))
        for r in rows:
            self._rows.move_to_end(int(r))
        out = np.stack([self._rows[int(r)] for r in rows])
        while len(self._rows) > self._kept:
            self._rows.popitem(last=False)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self._da.values, dtype=dtype)


def _grid_arrays(prep: xr.Dataset, alpha: float) -> tuple[PreparedGrid, np.ndarray]:
    # the cache key names the whole prepared grid; a subset of it (``isel``)
    # keeps that attribute, so the templates' parameters are part of the key
    params = np.stack([prep[p].values for p in ("teff", "logg", "mh", "alpha") if p in prep.coords])
    key = (prep.attrs.get("cache_key"), float(alpha), hash(params.tobytes()), params.shape)
    if key[0] and key in _GRIDS:
        _GRIDS.move_to_end(key)
        return _GRIDS[key]
    alphas = (
        np.asarray(prep["alpha"].values)
        if "alpha" in prep.coords
        else np.zeros(prep.sizes["template"])
    )
    chosen = alphas[np.argmin(np.abs(alphas - alpha))]
    keep = np.flatnonzero(alphas == chosen)
    sub = prep.isel(template=keep)
    params = np.stack([sub[p].values for p in ("teff", "logg", "mh")], axis=1).astype(float)
    mags = np.asarray(sub["mags"].values, dtype=float)
    pairs = colour_pair_indices([str(b) for b in sub["band"].values])
    scoring = None
    if "scoring_flux" in sub:
        scoring = PreparedGrid(
            sub["loglam_scoring"].values,
            sub["scoring_flux"].values,
            sub["scoring_continuum"].values,
            params,
            mags,
            pairs,
        )
    grid = PreparedGrid(
        loglam=np.asarray(sub["loglam"].values, dtype=float),
        flux=_Rows(sub["flux"]),
        continuum=_Rows(sub["continuum"]),
        params=params,
        mags=mags,
        pairs=pairs,
        oversample=int(prep.attrs.get("oversample", 1)),
        scoring=scoring,
    )
    if key[0]:
        _GRIDS[key] = (grid, keep)
        while len(_GRIDS) > _GRIDS_KEPT:
            _GRIDS.popitem(last=False)
    return grid, keep


def teff_candidates(teff: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Templates whose Teff lies in the box widened to the grid nodes that bracket it.

    The refinement interpolates between nodes, so the nodes just outside the
    colour box must be candidates too, or a star near the box edge is pinned
    to the last node inside it.
    """
    nodes = np.unique(teff)
    below = nodes[nodes <= lo]
    above = nodes[nodes >= hi]
    first = below[-1] if below.size else nodes[0]
    last = above[0] if above.size else nodes[-1]
    return np.flatnonzero((teff >= first) & (teff <= last))


def _fit_block(flux, variance, good, mags, errs, teff_lo, teff_hi, *, wave, grid, metric, vmax):
    """Kernel over a block of stars: arrays (S, P), (S, B), (S,) → stacked results."""
    n_star, n_pix = flux.shape
    n_band = grid.mags.shape[1]
    scalars = np.full((n_star, 9), np.nan)
    status = np.zeros(n_star, dtype="int16")
    model = np.full((n_star, n_pix), np.nan)
    model_mags = np.full((n_star, n_band), np.nan)
    for s in range(n_star):
        if not np.any(np.isfinite(mags[s])):
            status[s] = FitStatus.NO_PHOTOMETRY
            continue
        candidates = teff_candidates(grid.params[:, 0], teff_lo[s], teff_hi[s])
        fit = fit_star(
            wave,
            flux[s],
            variance[s],
            good[s],
            mags[s],
            errs[s],
            grid,
            candidates,
            metric=metric,
            vmax=vmax,
        )
        scalars[s] = (
            fit.teff,
            fit.logg,
            fit.mh,
            fit.rv,
            fit.score,
            fit.chi2_red,
            fit.best,
            fit.runner_up,
            fit.runner_up_score,
        )
        status[s] = fit.status
        model[s] = fit.model
        model_mags[s] = fit.model_mags
    return scalars, status, model, model_mags


def fit_standards(
    ds: xr.Dataset,
    /,
    templates=None,
    *,
    fwhm=None,
    metric: str = "chi2",
    vmax: float = 500.0,
    alpha: float = 0.0,
    mask_regions="telluric_default",
    cache=True,
) -> xr.Dataset:
    """Best template, refined parameters and radial velocity of every standard.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.associate_catalog` (needs ``std_mag``).
    templates : None, path, xr.DataArray or xr.Dataset
        The template grid (``None``: the bundled stand-in grid), or a grid
        already prepared for this setup.
    fwhm : float, sequence or callable, optional
        Instrument FWHM in Å; ``None`` reads ``SPECFWHM`` from the header.
    metric : {"chi2", "huber"}
        Score of a template against the star, both divided by their running mean.
    vmax : float
        Radial-velocity search range, ±km/s.
    alpha : float
        [α/M] of the templates to use (the grid's nearest value).
    mask_regions : str, path, pairs or None
        Bands left out of the fit (default: the telluric bands).
    cache : bool or path
        Cache of prepared grids (see :func:`kspec_xr.prepare_templates`).

    Returns
    -------
    xr.Dataset
        ``ds`` plus, on ``standard``: ``fit_teff``, ``fit_logg``, ``fit_mh``,
        ``fit_alpha``, ``fit_rv`` (km/s), ``fit_score``, ``fit_chi2_red``,
        ``fit_template`` / ``fit_runner_up`` (node indices into the prepared
        grid) with ``fit_runner_up_score``, ``fit_status`` (CF flags),
        ``teff_colour``, ``teff_lo``, ``teff_hi``; ``model_flux`` on
        (``standard``, ``wavelength``) — the refined model's surface flux at
        the instrument resolution on the exposure's pixels — and
        ``model_mag`` on (``standard``, ``band``).

    Notes
    -----
    See :mod:`kspec_xr.matching` for the algorithm.  The stage stays lazy on a
    dask-backed exposure: the fit runs per block of standards when computed.
    """
    from .photometry import teff_from_colours
    from .prepare import fwhm_at

    if metric not in ("chi2", "huber"):
        raise ValueError(f"metric must be 'chi2' or 'huber', not {metric!r}")
    if "std_mag" not in ds:
        raise CalibrationError(
            "no catalogue photometry on this Dataset; run ds.pipe(kx.associate_catalog, catalog) first"
        )
    if "wavelength" not in ds.dims:
        raise CalibrationError(
            "fit_standards needs a common wavelength axis; this exposure has one wavelength "
            "per fiber (dim 'pixel') — resample it onto one grid first"
        )
    wave = np.asarray(ds["wavelength"].values, dtype=float)
    if fwhm is None:
        fwhm = header_fwhm(ds)
    prep = resolve_templates(templates, wave, fwhm, cache=cache)
    grid, keep = _grid_arrays(prep, alpha)
    bands = [str(b) for b in prep["band"].values]

    observed = [str(b) for b in ds["band"].values if np.isfinite(ds["std_mag"].sel(band=b)).any()]
    if not set(observed) & set(bands):
        raise CalibrationError(
            f"none of the catalogue's bands ({', '.join(observed) or 'none'}) is covered by the "
            f"template grid (it covers {', '.join(bands) or 'none'}); give a catalogue with "
            "Gaia or Pan-STARRS photometry, or a grid that reaches the catalogue's bands"
        )
    mags = ds["std_mag"].reindex(band=bands)
    errs = ds["std_mag_err"].reindex(band=bands)
    grid_mags = prep["mags"].isel(template=keep).assign_coords(teff=("template", grid.params[:, 0]))
    # the 3σ colour box, at least ±half a BOSZ Teff step; _teff_candidates then adds
    # the nodes that bracket it, so the refinement can reach every Teff in it
    box = teff_from_colours(
        mags.rename(standard="star"), errs.rename(standard="star"), grid_mags, teff_step=125.0
    )
    box = box.rename(star="standard")

    idx = standard_index(ds)
    fibers = xr.DataArray(idx, dims="standard")
    flux = ds["flux"].isel(fiber=fibers)
    variance = ds["variance"].isel(fiber=fibers)
    bad_region = xr.DataArray(in_regions(wave, mask_regions), dims="wavelength")
    good = (ds["mask"].isel(fiber=fibers) & ~bit("TELLURIC")) == 0
    good = good & ~bad_region

    scalars, status, model, model_mags = xr.apply_ufunc(
        _fit_block,
        flux,
        variance,
        good,
        mags,
        errs,
        box["teff_lo"],
        box["teff_hi"],
        input_core_dims=[["wavelength"]] * 3 + [["band"]] * 2 + [[], []],
        output_core_dims=[["fit_value"], [], ["wavelength"], ["band"]],
        kwargs={"wave": wave, "grid": grid, "metric": metric, "vmax": float(vmax)},
        dask="parallelized",
        output_dtypes=[float, "int16", float, float],
        dask_gufunc_kwargs={"output_sizes": {"fit_value": 9}, "allow_rechunk": True},
        keep_attrs=False,
    )
    names = [
        "fit_teff",
        "fit_logg",
        "fit_mh",
        "fit_rv",
        "fit_score",
        "fit_chi2_red",
        "fit_template",
        "fit_runner_up",
        "fit_runner_up_score",
    ]
    units = {"fit_teff": "K", "fit_logg": "dex", "fit_mh": "dex", "fit_rv": "km/s"}
    new = {
        n: scalars.isel(fit_value=i, drop=True).assign_attrs(units=units.get(n, "1"))
        for i, n in enumerate(names)
    }
    new["fit_alpha"] = xr.full_like(new["fit_teff"], float(grid_alpha(prep, keep))).assign_attrs(
        units="dex"
    )
    new["fit_status"] = status.assign_attrs(fit_status_attrs())
    new["model_flux"] = model.assign_attrs(
        units=str(prep["flux"].attrs.get("units", "erg/s/cm2/A")),
        long_name="best-fit model surface flux at the instrument resolution",
    )
    # on the catalogue's bands (NaN where the grid does not cover a band)
    model_mags = model_mags.assign_coords(band=bands).reindex(band=ds["band"].values)
    new["model_mag"] = model_mags.assign_attrs(
        units="mag", system="AB", long_name="synthetic magnitude of the model surface flux"
    )
    new["teff_colour"] = box["teff_colour"].assign_attrs(units="K")
    new["teff_lo"] = box["teff_lo"].assign_attrs(units="K")
    new["teff_hi"] = box["teff_hi"].assign_attrs(units="K")
    # bare arrays: the Dataset's own coordinates (with their attrs) stay as they are
    out = ds.assign(
        {name: var.drop_vars([c for c in var.coords if c != "band"]) for name, var in new.items()}
    )
    failed = (status != FitStatus.OK) & (status != FitStatus.NO_COLOURS)
    failed = failed & (status != FitStatus.NO_PHOTOMETRY)
    previous = ds["standard_status"]
    out = with_status(
        out,
        xr.where(
            (previous == StandardStatus.OK) & failed,
            int(StandardStatus.FIT_FAILED),
            previous,
        ),
    )
    out = out.assign_attrs(
        fit_metric=metric,
        fit_fwhm=str(fwhm),
        fit_fwhm_median=float(np.median(fwhm_at(fwhm, wave))),
        template_grid=str(prep.attrs.get("grid_source", "")),
        template_grid_id=str(prep.attrs.get("grid_id", "")),
    )
    return add_history(
        out, f"fit_standards: metric={metric}, FWHM={fwhm} A, grid {prep.attrs.get('grid_id', '?')}"
    )


def grid_alpha(prep: xr.Dataset, keep: np.ndarray) -> float:
    """[α/M] of the templates that were fitted."""
    return float(prep["alpha"].values[keep[0]]) if "alpha" in prep.coords else 0.0
