"""Fit a stellar template and a radial velocity to every standard star.

The xarray stage around :mod:`kspec_xr.kernels.template_fit`: it resolves the
template grid into a :class:`kspec_xr.templates.PreparedTemplates` (built
once per instrument setup), sets each star's Teff search box from its colors
(:func:`teff_from_colors`), and runs the per-star kernel over the
``standard`` dimension with ``xr.apply_ufunc`` — the grid's arrays go in as
positional arguments, and the stage stays lazy on a dask-backed exposure.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import xarray as xr

from .._base.bands import COLOR_PAIRS, TEFF_FLAGS
from .._base.dust import EBV_MAX, LAW, band_ratio, extinction_curve
from .._base.errors import CalibrationError, KspecError
from .._base.maskbits import bit
from .._base.options import choice, finite_number, flag, positive_number
from .._base.provenance import add_history, primary_header
from .._base.regions import in_regions
from .._base.schema import (
    FitStatus,
    StandardStatus,
    bare,
    fit_status_attrs,
    stage,
    standard_index,
    with_status,
)
from .._base.threads import stage_threads
from ..kernels.photometry import teff_from_colors as teff_from_colors_kernel
from ..kernels.template_fit import FitBlock, fit_block
from ..templates import fwhm_at, resolve_templates
from .medium import as_vacuum, medium_note, resolve_medium, with_medium

__all__ = ["fit_standards", "teff_from_colors", "header_fwhm", "METRICS"]

#: the template scores :func:`fit_standards` knows
METRICS = ("chi2", "huber")

#: fit results on ``standard``: FitBlock field -> (variable, units)
_SCALARS = {
    "teff": ("fit_teff", "K"),
    "logg": ("fit_logg", "dex"),
    "mh": ("fit_mh", "dex"),
    "rv": ("fit_rv", "km/s"),
    "score": ("fit_score", "1"),
    "chi2_red": ("fit_chi2_red", "1"),
    "template": ("fit_template", "1"),
    "runner_up": ("fit_runner_up", "1"),
    "runner_up_score": ("fit_runner_up_score", "1"),
}


def header_fwhm(ds: xr.Dataset, *, required: bool = True) -> float | None:
    """The instrument FWHM (Å) from the ``SPECFWHM`` header card.

    ``None`` when the card is absent and ``required`` is false; a card that is
    not a positive number is always an error (never read as 1 Å or ignored).
    """
    value = primary_header(ds).get("SPECFWHM")
    if value is None:
        if not required:
            return None
        raise CalibrationError(
            "the primary header has no SPECFWHM (instrument FWHM in Å); pass fwhm=... "
            "(CLI: --fwhm, pipeline: CALIBFLUX_FWHM), or let kx.flux_calibrate measure it"
        )
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None:
        try:
            number = float(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
    if number is None or not np.isfinite(number) or number <= 0:
        raise CalibrationError(
            f"the primary header's SPECFWHM = {value!r} is not a positive FWHM in Å; fix the "
            "card, or pass fwhm=... (CLI: --fwhm) to override it"
        )
    return float(number)


@stage
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
    wavelength_medium=None,
    redden: bool = True,
    ebv_fit: str = "field",
) -> xr.Dataset:
    """Best template, refined parameters and radial velocity of every standard.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.associate_catalog` (needs ``std_mag``).
    templates : None, path, xr.DataArray or kx.PreparedTemplates
        The template grid (``None``: the bundled stand-in grid), or a grid
        already prepared for this setup (:func:`kspec_xr.prepare_templates`).
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
    redden : bool
        Redden each star's model by its E(B−V) (law: :data:`kspec_xr._base.dust.LAW`):
        the catalogue's (``std_ebv`` from :func:`kspec_xr.associate_catalog`)
        where it has one, else fitted to the colours together with Teff
        (bounded to [0, 0.5]); the colours of the Teff box are de-reddened.
        False: no reddening (E(B−V) = 0 for every star).
    ebv_fit : {"field", "star"}
        Where E(B−V) is fitted: ``"field"`` adopts the median of the fitted
        stars' values for all of them (one field shares its foreground dust,
        and each star's own value is only as good as its spectroscopic Teff,
        about ±0.04 mag); ``"star"`` keeps each star's own.
    wavelength_medium : {None, "air", "vacuum"}
        Medium of the exposure's wavelengths; None: what the file declares
        (``CTYPE1``), else air (:mod:`kspec_xr.stages.medium`).  The
        templates and ``mask_regions`` are matched to the pixels' vacuum
        wavelengths, so ``fit_rv`` is an observed-frame velocity on the
        vacuum scale.

    Returns
    -------
    xr.Dataset
        ``ds`` plus, on ``standard``: ``fit_teff``, ``fit_logg``, ``fit_mh``,
        ``fit_alpha``, ``fit_rv`` (km/s), ``fit_score``, ``fit_chi2_red``,
        ``fit_template`` / ``fit_runner_up`` (node indices into the prepared
        grid) with ``fit_runner_up_score``, ``fit_status`` (CF flags),
        ``teff_color``, ``teff_lo``, ``teff_hi``; ``model_flux`` on
        (``standard``, ``wavelength``) — the refined model's surface flux at
        the instrument resolution on the exposure's pixels — and
        ``model_mag`` on (``standard``, ``band``).

    Notes
    -----
    See :mod:`kspec_xr.kernels.template_fit` for the algorithm.  The stage stays lazy on a
    dask-backed exposure: the fit runs per block of standards when computed.
    """
    ebv_fit = choice("ebv_fit", ebv_fit, ("field", "star"))
    metric = choice("metric", metric, METRICS)
    vmax, alpha = positive_number("vmax", vmax), finite_number("alpha", alpha)
    redden = flag("redden", redden)
    if "std_mag" not in ds:
        raise CalibrationError(
            "no catalogue photometry on this Dataset; run ds.pipe(kx.associate_catalog, catalog) first"
        )
    if "wavelength" not in ds.dims:
        raise CalibrationError(
            "fit_standards needs a common wavelength axis; this exposure has one wavelength "
            "per fiber (dim 'pixel') — resample it onto one grid first"
        )
    medium, medium_source = resolve_medium(ds, wavelength_medium)
    vacuum = as_vacuum(ds["wavelength"], medium)  # the templates and bands are in vacuum
    wave = np.asarray(vacuum.values)
    if fwhm is None:
        fwhm = header_fwhm(ds)
    prepared = resolve_templates(templates, wave, fwhm, cache=cache)
    inputs = prepared.kernel_inputs(alpha)
    bands = list(prepared.bands)

    observed = [str(b) for b in ds["band"].values if np.isfinite(ds["std_mag"].sel(band=b)).any()]
    if not set(observed) & set(bands):
        raise CalibrationError(
            f"none of the catalogue's bands ({', '.join(observed) or 'none'}) is covered by the "
            f"template grid (it covers {', '.join(bands) or 'none'}); give a catalogue with "
            "Gaia or Pan-STARRS photometry, or a grid that reaches the catalogue's bands"
        )
    mags = ds["std_mag"].reindex(band=bands)
    errs = ds["std_mag_err"].reindex(band=bands)
    grid = inputs["arrays"]
    grid_mags = xr.DataArray(
        grid["template_mags"].values,
        dims=("template", "band"),
        coords={"band": bands, "teff": ("template", grid["params"].values[:, 0])},
    )
    # reddening: E(B-V) from the catalogue where it has one, else fitted (NaN);
    # the colours of the Teff box de-reddened by it, or the box widened over
    # every E(B-V) in [0, EBV_MAX] where it is fitted
    ebv, ebv_source = _catalogue_ebv(ds, redden)
    reddening = np.array([band_ratio(b) for b in bands])
    ratio = xr.DataArray(reddening, dims="band", coords={"band": bands})
    extinction = xr.DataArray(_extinction_at(wave), dims="wavelength")
    fibers = xr.DataArray(standard_index(ds), dims="standard")
    flux = ds["flux"].isel(fiber=fibers)
    variance = ds["variance"].isel(fiber=fibers)
    bad_region = xr.DataArray(in_regions(wave, mask_regions), dims="wavelength")
    good = (ds["mask"].isel(fiber=fibers) & ~bit("TELLURIC")) == 0
    good = good & ~bad_region
    n_band = len(bands)
    threads = stage_threads(flux, flux.sizes["standard"])

    def run(
        star_ebv: xr.DataArray, some_free: bool, first_pass: bool = False
    ) -> tuple[dict, xr.Dataset]:
        """One fit of every star at E(B-V) ``star_ebv`` (NaN: fitted to its colours).

        ``first_pass``: only the fitted E(B-V) values are wanted (every star is
        refitted): see :func:`~kspec_xr.kernels.template_fit.fit_block`.
        """
        free = ~np.isfinite(star_ebv)
        offset = star_ebv.fillna(0.0)
        if some_free:
            # the box at the star's E(B-V) and at 5 trial values, in one call
            trials = xr.DataArray(np.linspace(0.1, EBV_MAX, 5), dims="ebv_trial")
            offset = xr.concat([offset.expand_dims(ebv_trial=1), trials], "ebv_trial")
        boxes = _teff_box(mags - offset * ratio, errs, grid_mags)
        if not some_free:
            box = boxes
        else:
            box = boxes.isel(ebv_trial=0)
            wider = boxes.isel(ebv_trial=slice(1, None))
            box["teff_lo"] = xr.where(
                free, np.fmin(box["teff_lo"], wider["teff_lo"].min("ebv_trial")), box["teff_lo"]
            )
            box["teff_hi"] = xr.where(
                free, np.fmax(box["teff_hi"], wider["teff_hi"].max("ebv_trial")), box["teff_hi"]
            )
        results = xr.apply_ufunc(
            fit_block,
            flux,
            variance,
            good,
            mags,
            errs,
            box["teff_lo"],
            box["teff_hi"],
            star_ebv,
            vacuum,
            extinction,
            *grid.values(),
            input_core_dims=[["wavelength"]] * 3
            + [["band"]] * 2
            + [[], [], [], ["wavelength"], ["wavelength"]]
            + [list(a.dims) for a in grid.values()],
            output_core_dims=[[]] * 10 + [["wavelength"], ["band"], [], []],
            kwargs={
                "pairs": inputs["pairs"],
                "oversample": inputs["oversample"],
                "metric": metric,
                "vmax": float(vmax),
                "reddening": reddening if redden else None,
                "ebv_max": EBV_MAX,
                # field mode: each star's value unclipped at 0, so that their median
                # is unbiased for an unreddened field (the median is clipped instead)
                "ebv_min": -0.2 if ebv_fit == "field" else 0.0,
                "first_pass": first_pass,
                "threads": threads,
            },
            dask="parallelized",
            output_dtypes=[float] * 6
            + ["int64", "int64", float, "int16", float, float, float, float],
            dask_gufunc_kwargs={"allow_rechunk": True, "output_sizes": {"band": n_band}},
            keep_attrs=False,
        )
        return dict(zip(FitBlock._fields, (bare(r) for r in results), strict=True)), box

    fit_e = ~np.isfinite(ebv)
    refit = redden and ebv_fit == "field" and bool(fit_e.any())
    fitted, box = run(ebv, bool(fit_e.any()), first_pass=refit)
    fitted["ebv_star"] = fitted["ebv"]
    if refit:
        # one E(B-V) for the field's fitted stars, the median of their colour
        # fits (each is only as good as its spectroscopic Teff, ~0.04 mag); the
        # stars refitted at it, so that their templates are chosen with it
        usable = fit_e & _status_ok(fitted["status"])
        adopted, adopted_err = _field_ebv(fitted["ebv"].where(usable))
        star_values = fitted["ebv"]
        fitted, box = run(xr.where(fit_e, adopted, ebv), False)
        # (a star with a catalogue E(B-V) is not fitted in the first pass: its
        # fit there would have been this one)
        fitted["ebv_star"] = xr.where(fit_e, star_values, fitted["ebv"])
        fitted["ebv_err"] = xr.where(fit_e, adopted_err, fitted["ebv_err"])
    new = {
        name: fitted[field].assign_attrs(units=units) for field, (name, units) in _SCALARS.items()
    }
    new["fit_alpha"] = xr.full_like(new["fit_teff"], inputs["alpha"]).assign_attrs(units="dex")
    new["fit_ebv"] = fitted["ebv"].assign_attrs(
        units="mag", long_name="E(B-V) the model is reddened by", law=LAW
    )
    new["fit_ebv_err"] = fitted["ebv_err"].assign_attrs(
        units="mag", long_name="1 sigma of a fitted E(B-V) (NaN when from the catalogue)"
    )
    new["fit_ebv_star"] = fitted["ebv_star"].assign_attrs(
        units="mag",
        long_name="E(B-V) fitted to this star's colours alone (may be < 0 with ebv_fit='field')",
    )
    fitted_text = (
        "fitted: field median of the stars' colour fits"
        if ebv_fit == "field"
        else "fitted to the colours"
    )
    new["ebv_source"] = (
        xr.where(
            np.isfinite(ebv),
            ebv_source,
            fitted_text if redden else "none (redden=False)",
        )
        .astype(str)
        .assign_attrs(long_name="where fit_ebv comes from")
    )
    new["fit_rv"] = new["fit_rv"].assign_attrs(
        long_name="observed-frame radial velocity, vacuum wavelength scale",
        wavelength_medium=f"{medium} ({medium_source})",
    )
    status = fitted["status"]
    new["fit_status"] = status.assign_attrs(fit_status_attrs())
    new["model_flux"] = fitted["model"].assign_attrs(
        units=str(prepared.attrs.get("units", "erg/s/cm2/A")),
        long_name="best-fit model surface flux at the instrument resolution",
    )
    # on the catalogue's bands (NaN where the grid does not cover a band)
    model_mags = fitted["model_mags"].assign_coords(band=bands).reindex(band=ds["band"].values)
    new["model_mag"] = bare(model_mags).assign_attrs(
        units="mag", system="AB", long_name="synthetic magnitude of the model surface flux"
    )
    for name in ("teff_color", "teff_lo", "teff_hi"):
        new[name] = bare(box[name]).assign_attrs(units="K")
    out = ds.assign(new)
    failed = ~status.isin(
        [int(s) for s in (FitStatus.OK, FitStatus.NO_COLORS, FitStatus.NO_PHOTOMETRY)]
    )
    previous = ds["standard_status"]
    out = with_status(
        out,
        xr.where(
            (previous == StandardStatus.OK) & failed, int(StandardStatus.FIT_FAILED), previous
        ),
    )
    out = out.assign_attrs(
        fit_metric=metric,
        fit_fwhm=str(fwhm),
        fit_fwhm_median=float(np.median(fwhm_at(fwhm, wave))),
        template_grid=str(prepared.attrs.get("grid_source", "")),
        template_grid_id=str(prepared.attrs.get("grid_id", "")),
        template_alpha=float(inputs["alpha"]),
    )
    out = with_medium(out, medium, medium_source)
    return add_history(
        out,
        f"fit_standards: metric={metric}, FWHM={fwhm} A, grid {prepared.attrs.get('grid_id', '?')}, "
        f"{medium_note(medium, medium_source)}",
    )


def _extinction_at(wave: np.ndarray) -> np.ndarray:
    """:func:`extinction_curve` on an exposure's pixels, remembered for the last few grids
    (the law costs ~10 ms per evaluation; the exposures of a night share a grid)."""
    wave = np.ascontiguousarray(wave, dtype=np.float64)
    return _extinction_cached(wave.tobytes())


@functools.lru_cache(maxsize=8)
def _extinction_cached(key: bytes) -> np.ndarray:
    curve = extinction_curve(np.frombuffer(key, dtype=np.float64))
    curve.setflags(write=False)
    return curve


def _status_ok(status: xr.DataArray) -> xr.DataArray:
    """Fits whose parameters can be trusted (OK, or without colours)."""
    return status.isin([int(s) for s in (FitStatus.OK, FitStatus.NO_COLORS)])


def _field_ebv(values: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """The field's E(B−V) from its stars' fits, and its error (lazy; NaN values do not count).

    The median of the stars' (unclipped) values, clipped to [0, EBV_MAX].
    """
    centre = _nanmedian(values)
    spread = 1.4826 * _nanmedian(np.abs(values - centre))
    n = values.notnull().sum("standard")
    err = 1.2533 * spread / np.sqrt(np.maximum(n, 1))
    return centre.fillna(0.0).clip(0.0, EBV_MAX), err


def _median_of(a: np.ndarray) -> np.ndarray:
    finite = np.isfinite(a)
    if not finite.any():
        return np.asarray(np.nan)
    return np.asarray(np.median(a[finite]))


def _nanmedian(values: xr.DataArray) -> xr.DataArray:
    """Median over ``standard`` ignoring NaN (NaN when none), lazy on dask."""
    return xr.apply_ufunc(
        _median_of,
        values,
        input_core_dims=[["standard"]],
        dask="parallelized",
        output_dtypes=[float],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )


def _catalogue_ebv(ds: xr.Dataset, redden: bool) -> tuple[xr.DataArray, xr.DataArray]:
    """(E(B−V), source) per standard from the catalogue; NaN where it is to be fitted."""
    n = ds.sizes["standard"]
    if not redden:
        return xr.DataArray(np.zeros(n), dims="standard"), xr.DataArray(
            np.full(n, ""), dims="standard"
        )
    if "std_ebv" in ds:
        ebv = bare(ds["std_ebv"]).astype(float)
        source = bare(ds["std_ebv_source"]).astype(str) if "std_ebv_source" in ds else None
        if source is None:
            source = xr.DataArray(np.full(n, "catalogue"), dims="standard")
        return ebv.where(np.isfinite(ebv)), source
    return xr.DataArray(np.full(n, np.nan), dims="standard"), xr.DataArray(
        np.full(n, ""), dims="standard"
    )


def _teff_box(mags: xr.DataArray, errs: xr.DataArray, grid_mags: xr.DataArray) -> xr.Dataset:
    """The 3σ colour box, at least ±half a BOSZ Teff step (teff_candidates then adds the
    nodes that bracket it, so the refinement can reach every Teff in it)."""
    mags, errs = xr.broadcast(mags, errs)  # (the kernel needs them alike, e.g. per E(B-V) trial)
    box = teff_from_colors(
        mags.rename(standard="star"), errs.rename(standard="star"), grid_mags, teff_step=125.0
    )
    return box.rename(star="standard")


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


def teff_from_colors(
    mags: xr.DataArray,
    mag_errs: xr.DataArray,
    grid_mags: xr.DataArray,
    *,
    teff_step: float | None = None,
    nsigma: float = 3.0,
    floor: float = 0.01,
    colors: Sequence[tuple[str, str]] | None = None,
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
        :func:`kspec_xr.synthetic_mags` on the grid.  NaN marks a template/band with no
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
    colors : sequence of (blue, red) band pairs, optional
        Colors to use; default :data:`kspec_xr._base.bands.COLOR_PAIRS` (Gaia BP−RP and G−RP,
        PS1 g−r, r−i, i−z, SDSS likewise), restricted to those whose bands are
        in ``grid_mags``.

    Returns
    -------
    xarray.Dataset
        On the stars' dims: ``teff_color`` (K, NaN without colors),
        ``teff_lo``, ``teff_hi`` (K; the whole grid range without colors),
        ``n_colors``, ``chi2_color`` (χ² of the best template) and
        ``teff_color_flag`` (bits :data:`kspec_xr._base.bands.TEFF_FLAGS`: ``no_color``,
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
    pairs = [tuple(p) for p in (COLOR_PAIRS if colors is None else colors)]
    for pair in pairs:
        if len(pair) != 2:
            raise TypeError(f"each colour must be a (blue, red) pair of band names, got {pair!r}")
    pairs = [p for p in pairs if p[0] in grid_bands and p[1] in grid_bands]
    if not pairs:
        raise KspecError(
            "grid_mags has none of the color bands "
            f"{sorted({b for p in (colors or COLOR_PAIRS) for b in p})}; compute the grid's "
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
            teff_from_colors_kernel,
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
            "teff_color": teff.assign_attrs(units="K", long_name="Teff from photometric colours"),
            "teff_lo": lo.assign_attrs(units="K", long_name="lower edge of the Teff search box"),
            "teff_hi": hi.assign_attrs(units="K", long_name="upper edge of the Teff search box"),
            "n_colors": n_col.assign_attrs(units="1", long_name="number of colours used"),
            "chi2_color": chi2.assign_attrs(
                units="1", long_name="colour chi2 of the best template"
            ),
            "teff_color_flag": flag.assign_attrs(
                units="1",
                long_name="Teff-from-colours quality flags",
                flag_masks=np.array(list(TEFF_FLAGS.values()), dtype=np.int32),
                flag_meanings=" ".join(TEFF_FLAGS),
            ),
        },
        attrs={
            "colors": described,
            "color_error_floor_mag": float(floor),
            "teff_box_nsigma": float(nsigma),
            "reddening": "not modelled (colours compared unreddened)",
        },
    )
