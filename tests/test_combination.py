"""The combination of the standards: robust centre, honest variance, no features at line bands."""

import numpy as np
import pytest
import xarray as xr

import kspec_xr as kx
from kspec_xr._base.maskbits import bit
from kspec_xr.kernels.robust import bridge_gaps, combine_kernel
from kspec_xr.qc import line_band_departures
from kspec_xr.testing import accuracy_report, make_exposure, raise_if_dask_computes

SIM = {"n_fiber": 48, "n_pixel": 2048, "n_bright": 6}


@pytest.fixture(scope="module")
def prepared():
    wave = np.linspace(3700.0, 9300.0, SIM["n_pixel"])  # make_exposure's grid
    return kx.prepare_templates(kx.open_bosz(), wave, 2.5)


def _stars(ds, prepared):
    return (
        ds.pipe(kx.select_standards)
        .pipe(kx.associate_catalog, ds.encoding["source"].replace("red.fits", "_standards.csv"))
        .pipe(kx.fit_standards, prepared)
        .pipe(kx.scale_to_photometry)
        .pipe(kx.star_calibrations)
        .pipe(kx.gate_standards)
    )


@pytest.mark.parametrize(
    "kind", [{"mismatch": 0.3}, {"star_model": "other"}], ids=["mismatch", "another-model"]
)
def test_variance_is_honest_for_stars_the_templates_do_not_match(tmp_path, prepared, kind):
    pulls, bright = [], []
    for seed in (61, 62, 63):
        sim = make_exposure(seed, n_standard=6, directory=tmp_path / str(seed), **SIM, **kind)
        out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=prepared).compute()
        report = accuracy_report(out, sim.truth)
        assert report["cal_median_abs_dev"] < 0.02
        pulls.append(report["cal_pull_std"])
        bright.append(report["bright_pull_std"])
        # the star-to-star scatter is in the variance: larger than the photon noise alone
        assert float(out["calibration_scatter"].max()) > 0.005
    assert 0.8 < np.median(pulls) < 1.25, pulls
    assert 0.8 < np.median(bright) < 1.25, bright


def test_a_star_off_over_part_of_the_spectrum_is_clipped_not_followed(tmp_path, prepared):
    sim = make_exposure(63, n_standard=6, directory=tmp_path, **SIM)
    ds = _stars(sim.red, prepared)
    clean = kx.combine_calibrations(ds)
    bad = ds["std_calibration"].copy()
    bad[0, 500:700] *= 1.3  # one star way off over 200 pixels
    dirty = kx.combine_calibrations(ds.assign(std_calibration=bad))
    region = slice(500, 700)
    diff = np.abs(dirty["calibration"][region] / clean["calibration"][region] - 1)
    assert float(diff.median()) < 0.01
    assert float(dirty["std_clipped_fraction"][0]) > float(clean["std_clipped_fraction"][0])
    assert (dirty["std_kept"][0, 520:680] == 0).all()


def test_a_pixel_with_too_few_stars_is_bridged_and_flagged(tmp_path, prepared):
    sim = make_exposure(64, n_standard=3, directory=tmp_path, **SIM)
    ds = _stars(sim.red, prepared)
    flags = ds["std_calibration_mask"].copy()
    flags[1:, 1200:1230] |= bit("CALIB_INVALID")  # only star 0 is valid there
    out = kx.combine_calibrations(ds.assign(std_calibration_mask=flags)).compute()
    mask = out["calibration_mask"].values[1200:1230]
    assert np.all(mask & bit("CALIB_FEWSTARS")) and np.all(mask & bit("CALIB_INTERP"))
    # bridged from the neighbours, not taken from the one star
    one = ds["std_calibration"].values[0, 1200:1230]
    assert not np.allclose(out["calibration"].values[1200:1230], one, rtol=1e-3, atol=0)
    report = accuracy_report(out.pipe(kx.apply_calibration), sim.truth)
    assert report["cal_median_abs_dev"] < 0.02
    # with min_stars=1 one star is enough
    loose = kx.combine_calibrations(ds.assign(std_calibration_mask=flags), min_stars=1)
    assert not np.any(loose["calibration_mask"].values[1200:1230] & bit("CALIB_FEWSTARS"))


def test_the_clip_never_leaves_a_pixel_without_stars():
    rng = np.random.default_rng(1)
    cal = 1.0 + 0.01 * rng.normal(size=(2, 500))
    cal[1] *= 1.5  # two stars that disagree everywhere
    usable = np.ones_like(cal, dtype=bool)
    noise = np.full_like(cal, 1e-4)
    out = combine_kernel(
        cal,
        usable,
        noise,
        np.zeros(2),
        sigma=3,
        iterations=5,
        min_stars=1,
        max_clipped=1.0,
        width=51,
    )
    keep = out[5]
    assert np.all(keep.sum(axis=0) >= 1)
    assert np.all(np.isfinite(out[0]))


def test_weights_follow_signal_to_noise_not_the_calibration_value():
    # three stars at S/N 30, one of them 10 % lower everywhere (a fibre loss):
    # the level is the median star's, not pulled toward the low one by 1/Cal² weights
    rng = np.random.default_rng(2)
    cal = np.ones((3, 800)) * np.array([[1.0], [1.0], [0.9]])
    cal *= 1 + rng.normal(size=cal.shape) / 30
    noise = np.full_like(cal, 1 / 30**2)
    mean, *_ = combine_kernel(
        cal,
        np.ones_like(cal, dtype=bool),
        noise,
        np.full(3, 1e-4),
        sigma=3,
        iterations=5,
        min_stars=2,
        max_clipped=0.5,
        width=51,
    )
    assert abs(np.median(mean) - 1.0) < 0.01


def test_bridges_across_line_bands_make_no_feature(tmp_path, prepared):
    for seed in (65, 66):
        sim = make_exposure(seed, n_standard=6, directory=tmp_path / str(seed), **SIM)
        out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=prepared).compute()
        wave = out["wavelength"].values
        mask = out["calibration_mask"].values
        band = (mask & bit("STELLAR_LINE")) != 0
        assert band.sum() > 50
        error = out["calibration"].values * sim.truth["throughput"].values - 1
        # inside every band the error is that of its neighbours: the bridge adds no feature
        edges = np.flatnonzero(np.diff(np.r_[0, band.astype(np.int8), 0]))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            near = (mask == 0) & (np.abs(wave - wave[a]) < 40) | (np.abs(wave - wave[b - 1]) < 40)
            near &= mask == 0
            assert np.max(np.abs(error[a:b] - np.median(error[near]))) < 0.015, (
                wave[a],
                wave[b - 1],
            )
        for d in line_band_departures(out):
            assert d["departure"] < 0.02, d


def test_one_wing_pixel_cannot_make_a_feature():
    wave = np.linspace(4000, 5000, 1000)
    truth = 1.0 + 0.2 * (wave - 4500) / 500
    value = truth.copy()
    gap = (wave > 4480) & (wave < 4520)
    value[gap] = np.nan
    value[np.flatnonzero(gap)[0] - 1] *= 5  # one pixel at the gap's edge, 5x off
    filled, _ = bridge_gaps(wave, value, np.full(wave.size, 1e-4), ~np.isfinite(value))
    assert np.max(np.abs(filled[gap] / truth[gap] - 1)) < 0.005


def test_standards_spread_over_chunks_give_the_eager_result(tmp_path, prepared):
    sim = make_exposure(67, n_fiber=20, n_standard=10, n_sky=4, n_pixel=2048, directory=tmp_path)
    eager = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=prepared).compute()
    chunked = kx.open_red(sim.red_path, chunks={"fiber": 5})
    with raise_if_dask_computes():
        lazy = kx.flux_calibrate(chunked, catalog=sim.catalog_path, templates=prepared)
    assert lazy["calibration"].chunks is not None
    computed = lazy.compute()
    for name in ("flux", "variance", "calibration", "calibration_variance", "std_zero_point"):
        xr.testing.assert_allclose(computed[name], eager[name], rtol=1e-6)
    np.testing.assert_array_equal(computed["standard_status"], eager["standard_status"])
    np.testing.assert_array_equal(computed["standard_reason"], eager["standard_reason"])
