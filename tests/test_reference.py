"""The vectorised template fit against the obvious per-template loop (tests/reference_fit.py).

On a small stand-in grid (24 templates) and a small exposure (3 standards):

- the per-template loop's scores equal the vectorised ``Scorer`` scores of
  every candidate (χ² and Huber), so both rank the templates alike;
- ``xcorr_velocity`` on one template row at a time equals the batched call;
- the reference pipeline's whole per-template fit (prepare from the native
  grid, cross-correlate, rebin, normalise, score) picks the fast ``fit_star``
  best node or a grid neighbour of it, and about the same radial velocity.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference_fit as rf  # tests/ is on sys.path (pytest rootdir-relative imports)

import kspec_xr as kx
from kspec_xr.kernels.resample import edges_from_centers
from kspec_xr.kernels.rv import xcorr_velocity
from kspec_xr.kernels.template_fit import Scorer, running_mean
from kspec_xr.templates.standin import write_standin_grid
from kspec_xr.testing import make_exposure

FWHM = 2.5


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small grid, an exposure with 3 standards inside it, and the fast fit."""
    root = tmp_path_factory.mktemp("reference")
    write_standin_grid(
        root / "grid",
        teff=(5750, 6000, 6250, 6500),
        logg=(4.0, 4.5),
        mh=(-0.5, -0.25, 0.0),
        wave_range=(3500, 9500),
    )
    grid = kx.open_bosz(root / "grid")
    sim = make_exposure(
        3,
        n_fiber=20,
        n_standard=3,
        n_sky=4,
        n_pixel=1024,
        wave_range=(3800, 9000),
        fwhm=FWHM,
        std_teff=(5850, 6400),
        std_logg=(4.05, 4.45),
        std_mh=(-0.45, -0.05),
        directory=root / "exposure",
    )
    cache = root / "cache"
    fitted = (
        sim.red.pipe(kx.select_standards)
        .pipe(kx.associate_catalog, sim.catalog_path)
        .pipe(kx.fit_standards, grid, fwhm=FWHM, cache=cache)
    )
    wave = np.asarray(fitted["wavelength"].values)
    prep = kx.prepare_templates(grid, wave, FWHM, cache=cache)
    fast = prep.kernel_grid(0.0)
    stars = rf.standards_inputs(fitted, prep["band"].values)
    return {
        "grid": grid,
        "prep": prep,
        "fast": fast,
        "fitted": fitted,
        "stars": stars,
        "truth": sim.truth,
    }


def _star_at_fast_velocity(case, s):
    """Inputs of the scoring step of ``fit_star`` for star ``s`` at its fitted velocity."""
    star = case["stars"][s]
    grid = case["fast"]
    candidates = rf.teff_candidates(grid.params[:, 0], star.teff_lo, star.teff_hi)
    rv = float(case["fitted"]["fit_rv"].values[s])
    obs_norm, w, gpix, width = rf.normalised_star(star.wave, star.flux, star.ivar)
    return star, grid, candidates, rv, obs_norm, w, gpix, width


@pytest.mark.parametrize("metric", ["chi2", "huber"])
def test_loop_scores_equal_vectorised(case, metric):
    for s in range(len(case["stars"])):
        star, grid, candidates, rv, obs_norm, w, gpix, width = _star_at_fast_velocity(case, s)
        assert candidates.size > 1

        # the fast path: all candidates rebinned at once, scored as matrix products
        wave_edges = edges_from_centers(star.wave)
        norm_t = grid.scoring.rebin_norm(wave_edges, rv, candidates)
        fast = Scorer(obs_norm, w, metric)(norm_t / running_mean(norm_t, gpix, width))

        loop = rf.reference_scores(
            star.wave,
            obs_norm,
            w,
            grid.scoring,
            candidates,
            rv,
            gpix=gpix,
            width=width,
            metric=metric,
        )
        # the fast path rebins flux/continuum, the loop flux and continuum apart
        # (the continuum is smooth on a pixel): the scores agree to ~1e-5
        np.testing.assert_allclose(loop, fast, rtol=1e-4)
        assert np.argmin(loop) == np.argmin(fast)


def test_loop_velocities_equal_batched(case):
    grid = case["fast"]
    work = np.exp(grid.loglam)
    for star in case["stars"]:
        spec, weight = rf.star_on_log_grid(star.wave, star.flux, star.ivar, work)
        templates = np.asarray(grid.flux) / np.asarray(grid.continuum) - 1.0
        batched_v, batched_peak = xcorr_velocity(spec, weight, templates, grid.dlnl, vmax=500.0)
        loop_v, loop_peak = rf.reference_velocities(spec, weight, templates, grid.dlnl, vmax=500.0)
        np.testing.assert_allclose(loop_v, batched_v, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(loop_peak, batched_peak, rtol=1e-10, atol=1e-12)


def test_reference_fit_matches_fast_fit(case):
    grid = case["fast"]
    fitted = case["fitted"]
    wave = case["stars"][0].wave
    native = rf.native_templates(
        case["grid"], grid.params, wave_range=(wave[0] * 0.99 - 10, wave[-1] * 1.01 + 10)
    )
    setup = rf.make_setup(
        native, case["prep"]["wavelength"].values, FWHM, oversample=grid.oversample, shared=True
    )
    # the shared operator reproduces the prepared grid (stored as float32), and so
    # does the operator the per-template pipeline builds for each template
    np.testing.assert_allclose(setup.convolve @ native.flux.T, np.asarray(grid.flux).T, rtol=1e-6)
    own = rf.make_setup(native, setup.work, FWHM, oversample=grid.oversample, shared=False)
    for index in (0, len(native.flux) - 1):
        np.testing.assert_allclose(
            rf.prepare_one(native, own, index)[0], grid.flux[index], rtol=1e-6
        )

    for s, star in enumerate(case["stars"]):
        ref = rf.reference_fit_star(star, native, setup, template_mags=grid.mags, pairs=grid.pairs)
        best = int(fitted["fit_template"].values[s])
        step = np.abs(grid.lattice[ref.best] - grid.lattice[best])
        assert np.all(step <= 1), (s, grid.params[ref.best], grid.params[best])
        assert abs(ref.rv - float(fitted["fit_rv"].values[s])) < 2.0, (s, ref.rv)
