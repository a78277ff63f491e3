"""The obvious template fit, one candidate at a time: the reference for kspec_xr's fast path.

:func:`kspec_xr.matching.fit_star` scores every candidate template of a
standard star at once (one sparse product rebins all of them, the scores are
matrix products, one batched FFT cross-correlates several templates).  This
module keeps the plain per-template loop of the reference pipeline, written
for clarity, not speed, so that the fast path can be checked against it
(``tests/test_reference.py``) and timed against it
(``benchmarks/bench_speed.py``).  It reuses kspec_xr's own small kernels
(``resample_matrix``, ``xcorr_velocity``, ``parabola_peak``, ``huber_rho``,
the running mean and the colour χ²), each applied to ONE template at a time.

Three levels:

- :func:`reference_velocities` — ``xcorr_velocity`` called once per template
  row; must equal the batched call.
- :func:`reference_scores` — for one star at one velocity, each candidate
  rebinned to the exposure's pixels with its own ``resample_matrix``
  application, divided by its own continuum and its own running mean, and
  scored with an explicit Σ w (obs − m)² (or Huber); must equal
  ``Scorer(obs_norm, w, metric)(norm_t / smooth_t)`` of ``fit_star``.
- :func:`reference_fit_star` — the reference pipeline's whole per-template
  fit for timing: for every candidate in the star's colour Teff box, prepare
  it from the NATIVE grid (convolve to the instrument FWHM and rebin onto the
  ln λ working grid), cross-correlate it for its own RV (refined by a
  parabola in χ²), shift and rebin it to the exposure's pixels, normalise it
  as the star is normalised, score; the best node wins (no refinement between
  nodes).

Preparing a template means building its convolution operator (native grid →
working grid, ``resample_matrix`` with the instrument's Gaussian) and
applying it, per template, as a loop over template files does
(``make_setup(..., shared=False)``); ``shared=True`` builds that operator once
per setup and only applies it per template: the fastest per-template loop,
timed too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import sparse

from kspec_xr._base.maskbits import bit
from kspec_xr._base.regions import in_regions
from kspec_xr._base.schema import standard_index
from kspec_xr.kernels.photometry import ColorChi2
from kspec_xr.kernels.resample import SIGMA_PER_FWHM, edges_from_centers, resample_matrix
from kspec_xr.kernels.rv import C_KMS, parabola_peak, xcorr_velocity
from kspec_xr.kernels.template_fit import (
    TemplateGrid,
    huber_rho,
    running_mean,
    smoothing_pixels,
)
from kspec_xr.templates import fwhm_at

__all__ = [
    "StarData",
    "NativeTemplates",
    "Setup",
    "ReferenceFit",
    "standards_inputs",
    "native_templates",
    "make_setup",
    "convolution_operator",
    "prepare_one",
    "normalised_star",
    "high_pass",
    "teff_candidates",
    "star_on_log_grid",
    "explicit_score",
    "reference_velocities",
    "reference_scores",
    "reference_fit_star",
]


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


@dataclass
class StarData:
    """One standard star as the fit sees it (the exposure's pixels)."""

    wave: np.ndarray  # (P,) Å
    flux: np.ndarray  # (P,) counts
    variance: np.ndarray  # (P,)
    good: np.ndarray  # (P,) bool
    mags: np.ndarray  # (B,) AB mags in the prepared grid's bands (NaN = missing)
    mag_errs: np.ndarray  # (B,)
    teff_lo: float  # colour Teff box, K
    teff_hi: float

    @property
    def ivar(self) -> np.ndarray:
        """Inverse variance, 0 at unusable pixels (as ``fit_star`` builds it)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = self.good & (self.variance > 0) & np.isfinite(self.flux)
            return np.where(ok, 1.0 / self.variance, 0.0)


def standards_inputs(
    fitted: xr.Dataset, bands, *, mask_regions="telluric_default"
) -> list[StarData]:
    """Per-star inputs from an exposure that went through ``fit_standards``.

    The pixels, mask and photometry are taken exactly as ``fit_standards``
    takes them; the Teff box is the one it set from the colours
    (``teff_lo``/``teff_hi``), so the reference fits the same candidates.
    """
    wave = np.asarray(fitted["wavelength"].values, dtype=float)
    idx = standard_index(fitted)
    flux = np.asarray(fitted["flux"].values, dtype=float)[idx]
    variance = np.asarray(fitted["variance"].values, dtype=float)[idx]
    mask = np.asarray(fitted["mask"].values)[idx]
    good = ((mask & ~bit("TELLURIC")) == 0) & ~in_regions(wave, mask_regions)[None, :]
    bands = [str(b) for b in bands]
    mags = np.asarray(fitted["std_mag"].reindex(band=bands).values, dtype=float)
    errs = np.asarray(fitted["std_mag_err"].reindex(band=bands).values, dtype=float)
    lo = np.asarray(fitted["teff_lo"].values, dtype=float)
    hi = np.asarray(fitted["teff_hi"].values, dtype=float)
    return [
        StarData(wave, flux[s], variance[s], good[s], mags[s], errs[s], lo[s], hi[s])
        for s in range(idx.size)
    ]


@dataclass
class NativeTemplates:
    """Template spectra at the grid's own resolution, in memory."""

    wave: np.ndarray  # (N,) Å
    flux: np.ndarray  # (T, N) surface flux
    continuum: np.ndarray  # (T, N)
    params: np.ndarray  # (T, 3) teff, logg, mh
    resolution: float  # R of the grid


def native_templates(
    grid: xr.DataArray, params: np.ndarray, *, alpha: float = 0.0, wave_range=None
) -> NativeTemplates:
    """Read the native spectra of the templates with the given (teff, logg, mh).

    ``params`` is e.g. ``TemplateGrid.params``, so row ``i`` here is template
    ``i`` of the fast path.  ``wave_range`` trims the spectra (Å).
    """
    import dask

    if wave_range is not None:
        grid = grid.sel(wavelength=slice(*wave_range))
    alphas = np.asarray(grid["alpha"].values) if "alpha" in grid.dims else np.zeros(1)
    a = float(alphas[np.argmin(np.abs(alphas - alpha))])
    rows = [
        grid.sel(teff=t, logg=g, mh=m, **({"alpha": a} if "alpha" in grid.dims else {}))
        for t, g, m in np.asarray(params, dtype=float)
    ]
    stacked = xr.concat(rows, dim="template")
    flux, cont = dask.compute(stacked.data, stacked["continuum"].data)
    return NativeTemplates(
        wave=np.asarray(grid["wavelength"].values, dtype=float),
        flux=np.asarray(flux, dtype=float),
        continuum=np.asarray(cont, dtype=float),
        params=np.asarray(params, dtype=float),
        resolution=float(grid.attrs.get("resolution", np.inf)),
    )


@dataclass
class Setup:
    """The instrument setup: ln λ working grid, FWHM, and optionally a shared operator."""

    work: np.ndarray  # (L,) Å, uniform in ln λ
    dlnl: float
    work_edges: np.ndarray  # (L + 1,)
    fwhm: object  # Å: constant, polynomial coefficients or callable (kspec_xr.prepare.fwhm_at)
    oversample: int  # working pixels per exposure pixel
    convolve: sparse.csr_matrix | None  # (L, N) native → working; None: built per template


def convolution_operator(native: NativeTemplates, work: np.ndarray, fwhm) -> sparse.csr_matrix:
    """Gaussian smoothing to the instrument FWHM and rebinning, native grid → ``work``.

    σ = sqrt(FWHM² − (λ/R)²)/2.3548, integrated exactly over source and
    target bins (``resample_matrix``), as ``prepare_templates`` does.
    """
    fwhm_work = fwhm_at(fwhm, work)
    sigma = np.sqrt(fwhm_work**2 - (work / native.resolution) ** 2) / SIGMA_PER_FWHM
    return resample_matrix(edges_from_centers(native.wave), edges_from_centers(work), sigma)


def make_setup(
    native: NativeTemplates, work: np.ndarray, fwhm, *, oversample: int, shared: bool = False
) -> Setup:
    """The working grid of one instrument setup.

    ``shared=False`` (the reference pipeline): every template is prepared on
    its own, building its convolution operator as it goes — what a loop over
    template files does, each of which may carry its own wavelengths (BOSZ
    ``noresam`` files do).  ``shared=True``: the operator, which depends on
    the setup only when all templates share one wavelength grid, is built
    once here and only applied per template — the fastest a per-template
    loop can be.
    """
    work = np.asarray(work, dtype=float)
    matrix = convolution_operator(native, work, fwhm) if shared else None
    dlnl = float(np.log(work[1] / work[0]))
    return Setup(work, dlnl, edges_from_centers(work), fwhm, int(oversample), matrix)


# ---------------------------------------------------------------------------
# small shared steps
# ---------------------------------------------------------------------------


def normalised_star(wave, flux, ivar, *, smooth_scale: float = 150.0, model_error: float = 0.01):
    """The star divided by its running mean, its weights, and the smoothing it used.

    As ``fit_star`` does: a triangle running mean over ``smooth_scale`` Å of
    the usable pixels (``gpix``); ``w = 1 / (var_norm + model_error²)``, 0
    where unusable.  Returns ``(obs_norm, w, gpix, width)``; templates are
    divided by their own running mean with the same ``gpix`` and ``width``
    (:func:`high_pass`).
    """
    flux = np.where(ivar > 0, flux, 0.0)
    width = smoothing_pixels(wave, smooth_scale)
    gpix = (ivar > 0).astype(float)
    smooth = running_mean(flux, gpix, width)
    with np.errstate(divide="ignore", invalid="ignore"):
        obs_norm = np.where(smooth > 0, flux / smooth, 0.0)
        var_norm = np.where(ivar > 0, 1.0 / (ivar * smooth**2), np.inf)
        w = np.where(smooth > 0, 1.0 / (var_norm + model_error**2), 0.0)
    return obs_norm, w, gpix, width


def high_pass(model: np.ndarray, gpix: np.ndarray, width: int) -> np.ndarray:
    """One normalised template divided by its own running mean (the star's pixels and width)."""
    return model / running_mean(model, gpix, width)


def star_on_log_grid(wave, flux, ivar, work, *, smooth_scale: float = 150.0):
    """Star on the ln λ grid ``work``, divided by its own running mean, minus one; its weight."""
    flux = np.where(ivar > 0, flux, 0.0)
    inside = (work > wave[0]) & (work < wave[-1])
    weight = ((np.interp(work, wave, (ivar > 0).astype(float)) > 0.999) & inside).astype(float)
    obs = np.interp(work, wave, flux)
    width = smoothing_pixels(work, smooth_scale)
    spec = obs / running_mean(obs, weight, width) - 1.0
    return np.where(weight > 0, spec, 0.0), weight


def explicit_score(obs_norm, w, model, metric: str = "chi2") -> float:
    """Σ w (obs − m)² (``chi2``) or 2 Σ ρ_Huber((obs − m)·√w) over the used pixels."""
    used = w > 0
    resid = obs_norm[used] - model[used]
    if metric == "chi2":
        return float(np.sum(w[used] * resid * resid))
    if metric == "huber":
        return float(2.0 * np.sum(huber_rho(resid * np.sqrt(w[used]))))
    raise ValueError(f"metric must be 'chi2' or 'huber', not {metric!r}")


# ---------------------------------------------------------------------------
# level 1 and 2: loops that must equal the vectorised kernels
# ---------------------------------------------------------------------------


def reference_velocities(spectrum, weight, templates, dlnl, *, vmax: float = 500.0):
    """``xcorr_velocity`` against one template row at a time.

    Returns (velocity, peak), each (T,), to compare with the batched call.
    """
    templates = np.atleast_2d(templates)
    velocity = np.empty(templates.shape[0])
    peak = np.empty(templates.shape[0])
    for i, row in enumerate(templates):
        v, p = xcorr_velocity(spectrum, weight, row[None, :], dlnl, vmax=vmax)
        velocity[i], peak[i] = v[0], p[0]
    return velocity, peak


def reference_scores(
    wave,
    obs_norm,
    w,
    grid: TemplateGrid,
    candidates,
    rv: float,
    *,
    gpix: np.ndarray,
    width: int,
    metric: str = "chi2",
) -> np.ndarray:
    """Score of each candidate against one normalised star, one template at a time.

    Each template row of ``grid`` is shifted to ``rv``, rebinned to the
    exposure's pixels (its own application of the ``resample_matrix``
    operator), divided by its own rebinned continuum and then by its own
    running mean (:func:`high_pass`, the star's ``gpix`` and ``width``), and
    scored with :func:`explicit_score`.  Pass ``grid.scoring`` to compare with
    ``fit_star``, which scores on that grid.
    """
    wave_edges = edges_from_centers(np.asarray(wave, dtype=float))
    # the operator depends on the velocity only, and the velocity is the star's
    op = resample_matrix(grid.edges * (1.0 + rv / C_KMS), wave_edges, 0.0)
    scores = np.empty(len(candidates))
    for i, c in enumerate(candidates):
        model = (op @ grid.flux[c]) / (op @ grid.continuum[c])
        scores[i] = explicit_score(obs_norm, w, high_pass(model, gpix, width), metric)
    return scores


# ---------------------------------------------------------------------------
# level 3: the reference pipeline's per-template fit
# ---------------------------------------------------------------------------


def prepare_one(native: NativeTemplates, setup: Setup, index: int):
    """One template convolved to the instrument FWHM on the working grid: (flux, continuum).

    With ``setup.convolve`` None, the operator is built for this template
    (the per-template pipeline that prepares each file on its own);
    otherwise the setup's shared operator is applied.
    """
    matrix = setup.convolve
    if matrix is None:
        matrix = convolution_operator(native, setup.work, setup.fwhm)
    return matrix @ native.flux[index], matrix @ native.continuum[index]


@dataclass
class ReferenceFit:
    """Best node of :func:`reference_fit_star` (index into the templates)."""

    best: int
    teff: float
    logg: float
    mh: float
    rv: float
    candidates: np.ndarray  # (C,) template indices tried
    velocities: np.ndarray  # (C,) each candidate's own RV
    scores: np.ndarray  # (C,) spectral score
    total: np.ndarray  # (C,) spectral score / inflation + colour χ²
    chi2_red: float


def teff_candidates(teff: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The candidates of a colour Teff box, chosen as ``fit_standards`` chooses them."""
    try:
        from kspec_xr.kernels.template_fit import teff_candidates
    except ImportError:  # a fast path that takes the plain box
        return np.flatnonzero((teff >= lo) & (teff <= hi))
    return teff_candidates(teff, lo, hi)


def reference_fit_star(
    star: StarData,
    native: NativeTemplates,
    setup: Setup,
    *,
    template_mags: np.ndarray | None = None,
    pairs: np.ndarray | None = None,
    metric: str = "chi2",
    vmax: float = 500.0,
    model_error: float = 0.01,
    smooth_scale: float = 150.0,
) -> ReferenceFit:
    """Fit one star with the per-template loop of the reference pipeline.

    Once per star: the star divided by its running mean
    (:func:`normalised_star`) and, for the cross-correlation, the star on the
    ln λ working grid (:func:`star_on_log_grid`).  Then for every template in
    the star's Teff box, one at a time:

    1. prepare it: convolve the native spectrum and its continuum to the
       instrument FWHM on the ln λ working grid (:func:`prepare_one`);
    2. cross-correlate it with the star (``xcorr_velocity`` on one row), and
       refine that velocity with a parabola in χ² over ±1 exposure pixel, then
       ±1/4 pixel (the cross-correlation peak alone can be off by a pixel);
    3. shift it to its velocity and rebin it onto the exposure's pixels (a
       ``resample_matrix`` built for that velocity), divide by its own
       rebinned continuum and by its own running mean (:func:`high_pass`);
    4. score it against the star (:func:`explicit_score`).

    Then, as ``fit_star`` does, the spectral scores are divided by the best
    candidate's χ²/dof (when above 1) and the colour χ² of each template's
    synthetic magnitudes (``template_mags`` rows, ``pairs`` of band indices)
    is added; the lowest total is the best node, with its own velocity.
    """
    wave = star.wave
    ivar = star.ivar
    n_good = int(np.count_nonzero(ivar))
    candidates = teff_candidates(native.params[:, 0], star.teff_lo, star.teff_hi)
    if n_good < 50 or candidates.size == 0:
        raise ValueError("the star has too few usable pixels or no candidate template")
    wave_edges = edges_from_centers(wave)

    # once per star: the star normalised, and on the ln λ grid for the RVs
    obs_norm, w, gpix, width = normalised_star(
        wave, star.flux, ivar, smooth_scale=smooth_scale, model_error=model_error
    )
    spec, weight = star_on_log_grid(wave, star.flux, ivar, setup.work, smooth_scale=smooth_scale)
    width_log = smoothing_pixels(setup.work, smooth_scale)

    def model_at(fine_flux, fine_cont, rv):
        """Normalised, high-passed template at velocity ``rv`` on the exposure's pixels."""
        op = resample_matrix(setup.work_edges * (1.0 + rv / C_KMS), wave_edges, 0.0)
        return high_pass((op @ fine_flux) / (op @ fine_cont), gpix, width)

    step_v = C_KMS * setup.dlnl * setup.oversample  # about one exposure pixel, km/s
    n = candidates.size
    velocities, scores, chi2 = np.empty(n), np.empty(n), np.empty(n)
    for i, c in enumerate(candidates):
        # 1. prepare this template for the instrument
        fine_flux, fine_cont = prepare_one(native, setup, c)
        # 2. its own radial velocity: cross-correlation, then a parabola in χ²
        norm = fine_flux / fine_cont
        pattern = norm / running_mean(norm, weight, width_log) - 1.0
        v = float(xcorr_velocity(spec, weight, pattern[None, :], setup.dlnl, vmax=vmax)[0][0])
        for shrink in (1.0, 0.25):
            trial = v + step_v * shrink * np.array([-1.0, 0.0, 1.0])
            chi = [explicit_score(obs_norm, w, model_at(fine_flux, fine_cont, t)) for t in trial]
            v = float(v + step_v * shrink * parabola_peak(*chi))
        # 3. shifted, rebinned, normalised; 4. scored
        model = model_at(fine_flux, fine_cont, v)
        velocities[i] = v
        scores[i] = explicit_score(obs_norm, w, model, metric)
        chi2[i] = scores[i] if metric == "chi2" else explicit_score(obs_norm, w, model, "chi2")

    dof = max(n_good - 1, 1)
    chi2_red = float(chi2[int(np.argmin(scores))] / dof)
    inflate = max(1.0, chi2_red)
    colour = np.zeros(n)
    if template_mags is not None and pairs is not None and len(pairs):
        colours = ColorChi2(star.mags, star.mag_errs, pairs)
        for i, c in enumerate(candidates):
            colour[i] = colours(template_mags[c][None, :])[0, 0]
    total = scores / inflate + colour
    best = int(np.argmin(total))
    node = int(candidates[best])
    return ReferenceFit(
        best=node,
        teff=float(native.params[node, 0]),
        logg=float(native.params[node, 1]),
        mh=float(native.params[node, 2]),
        rv=float(velocities[best]),
        candidates=candidates,
        velocities=velocities,
        scores=scores,
        total=total,
        chi2_red=chi2_red,
    )
