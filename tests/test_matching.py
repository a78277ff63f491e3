"""The per-star template fit (NumPy kernels) on spectra made by the stand-in generator."""

import numpy as np
import pytest

from kspec_xr import synthetic_mags
from kspec_xr._base.bands import COLOR_PAIRS
from kspec_xr._base.schema import FitStatus
from kspec_xr.kernels.photometry import color_pair_indices
from kspec_xr.kernels.resample import SIGMA_PER_FWHM, edges_from_centers, resample_matrix
from kspec_xr.kernels.rv import C_KMS
from kspec_xr.kernels.template_fit import (
    Scorer,
    TemplateGrid,
    _interp_weights,
    fit_star,
    huber_rho,
    teff_candidates,
)
from kspec_xr.templates import open_bosz, prepare_templates
from kspec_xr.templates.standin import surface_flux, write_standin_grid

WAVE = np.linspace(3800.0, 9000.0, 2500)
FWHM = 2.5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    write_standin_grid(
        root,
        teff=(5500, 5750, 6000, 6250, 6500),
        logg=(4.0, 4.5),
        mh=(-0.5, -0.25, 0.0),
        wave_range=(2950, 11500),
    )
    prep = prepare_templates(open_bosz(root), WAVE, FWHM, cache=False)
    bands = [str(b) for b in prep["band"].values]
    grid = TemplateGrid(
        prep["loglam"].values,
        prep["flux"].values,
        prep["continuum"].values,
        np.stack([prep[p].values for p in ("teff", "logg", "mh")], axis=1),
        prep["mags"].values,
        color_pair_indices(bands, COLOR_PAIRS),
        oversample=prep.attrs["oversample"],
    )
    return grid, bands


def _star(teff, logg, mh, rv, bands, *, snr=None, seed=0):
    native = np.exp(np.arange(np.log(2950), np.log(11500), 1 / 23000))
    h, _ = surface_flux(native / (1 + rv / C_KMS), teff, logg, mh, 0.0)
    sigma = np.sqrt(FWHM**2 - (WAVE / 10000) ** 2) / SIGMA_PER_FWHM
    op = resample_matrix(edges_from_centers(native), edges_from_centers(WAVE), sigma)
    throughput = np.exp(-0.5 * ((WAVE - 6200) / 2500) ** 2)
    counts = op @ (4 * np.pi * h) * throughput
    counts *= 2000 / counts.max()
    variance = counts + 20.0
    if snr is not None:
        counts = counts + np.random.default_rng(seed).normal(size=counts.size) * np.sqrt(variance)
    mags = synthetic_mags(native, 4 * np.pi * h, bands)
    return counts, variance, mags


def _fit(grid, counts, variance, mags, errs=0.01, good=None, candidates=None, **kwargs):
    good = np.ones(WAVE.size, bool) if good is None else good
    candidates = np.arange(grid.params.shape[0]) if candidates is None else candidates
    errs = np.broadcast_to(errs, mags.shape).astype(float)
    return fit_star(WAVE, counts, variance, good, mags, errs, grid, candidates, **kwargs)


def test_node_star_is_recovered_exactly(setup):
    grid, bands = setup
    counts, variance, mags = _star(6000.0, 4.5, -0.25, 123.0, bands)
    fit = _fit(grid, counts, variance, mags)
    assert fit.status == FitStatus.OK
    assert fit.teff == pytest.approx(6000, abs=15)
    assert fit.logg == pytest.approx(4.5, abs=0.05)
    assert fit.mh == pytest.approx(-0.25, abs=0.05)
    assert fit.rv == pytest.approx(123.0, abs=0.5)
    assert tuple(grid.params[fit.best]) == (6000.0, 4.5, -0.25)


@pytest.mark.parametrize("metric", ["chi2", "huber"])
def test_off_node_noisy_star(setup, metric):
    grid, bands = setup
    counts, variance, mags = _star(5880.0, 4.3, -0.15, -241.0, bands, snr=40, seed=3)
    errs = np.full(len(bands), 0.01)
    mags = mags + np.random.default_rng(4).normal(size=mags.size) * errs
    fit = _fit(grid, counts, variance, mags, errs, metric=metric)
    assert abs(fit.teff - 5880) < 80
    assert abs(fit.rv + 241.0) < 3.0
    assert 0.7 < fit.chi2_red < 1.5
    # the model spectrum has the star's shape: model/counts is the throughput, smooth
    ratio = fit.model / counts
    assert np.all(np.isfinite(ratio))


def test_too_few_pixels_and_no_candidates(setup):
    grid, bands = setup
    counts, variance, mags = _star(6000.0, 4.5, -0.25, 0.0, bands)
    good = np.zeros(WAVE.size, bool)
    good[:10] = True
    fit = _fit(grid, counts, variance, mags, good=good)
    assert fit.status == FitStatus.TOO_FEW_PIXELS and np.isnan(fit.teff)
    fit = _fit(grid, counts, variance, mags, candidates=np.array([], dtype=int))
    assert fit.status == FitStatus.NO_CANDIDATE


def test_without_colours_the_spectrum_decides(setup):
    grid, bands = setup
    counts, variance, mags = _star(6250.0, 4.0, 0.0, 50.0, bands)
    fit = _fit(grid, counts, variance, mags * np.nan, np.nan)
    assert fit.status == FitStatus.NO_COLORS
    assert fit.teff == pytest.approx(6250, abs=60)


def test_scorer_matches_explicit_sums():
    rng = np.random.default_rng(0)
    obs, w = rng.normal(1, 0.1, 300), rng.uniform(0, 2, 300)
    models = rng.normal(1, 0.1, (300, 7))
    chi2 = Scorer(obs, w, "chi2")(models)
    np.testing.assert_allclose(chi2, [np.sum(w * (obs - m) ** 2) for m in models.T])
    hub = Scorer(obs, w, "huber")(models)
    np.testing.assert_allclose(
        hub, [2 * np.sum(huber_rho((obs - m) * np.sqrt(w))) for m in models.T]
    )
    assert huber_rho(np.array([0.5]))[0] == pytest.approx(0.125)
    assert huber_rho(np.array([3.0]))[0] == pytest.approx(1.345 * (3 - 0.6725))


def test_interpolation_weights():
    lattice = np.array([[i, j, k] for i in range(3) for j in range(2) for k in range(2)], float)
    w = _interp_weights(lattice, np.array([0.25, 0.5, 1.0]))
    assert w.sum() == pytest.approx(1.0)
    assert np.count_nonzero(w) == 4  # on a face of the cell: 4 corners
    node = _interp_weights(lattice, np.array([2.0, 1.0, 0.0]))
    assert node.max() == 1.0


def test_candidates_bracket_the_box():
    teff = np.repeat(np.arange(5000.0, 6501.0, 250.0), 3)
    got = np.unique(teff[teff_candidates(teff, 5641.0, 6141.0)])
    np.testing.assert_array_equal(got, [5500, 5750, 6000, 6250])
    got = np.unique(teff[teff_candidates(teff, 4000.0, 9000.0)])
    assert got[0] == 5000 and got[-1] == 6500
