"""The instrument FWHM measured from the standards, and interstellar reddening.

Known truths: Gaussian widths add in quadrature; a simulated exposure's FWHM
and its standards' E(B−V) (drawn through G23 at an R_V other than the
calibration's 3.1, so the dust is not exactly the model's).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

import kspec_xr as kx
from kspec_xr._base.dust import band_ratio, extinction_curve
from kspec_xr._base.errors import CalibrationError
from kspec_xr.io import calibration_warning
from kspec_xr.kernels.lsf import gaussian_blur, profile_minimum, round_fwhm
from kspec_xr.kernels.photometry import ColorChi2
from kspec_xr.stages import header_fwhm
from kspec_xr.testing import make_exposure
from kspec_xr.testing.accuracy import accuracy_report


def _width(profile: np.ndarray) -> float:
    x = np.arange(profile.size)
    w = profile / profile.sum()
    mean = (x * w).sum()
    return float(np.sqrt(((x - mean) ** 2 * w).sum()))


def test_blur_adds_widths_in_quadrature():
    x = np.arange(512, dtype=float)
    line = np.exp(-0.5 * ((x - 256.0) / 2.0) ** 2)
    blurred = gaussian_blur(line, np.array([0.0, 1.5, 3.0]))
    assert _width(blurred[0]) == pytest.approx(2.0, rel=1e-3)
    assert _width(blurred[1]) == pytest.approx(np.hypot(2.0, 1.5), rel=1e-3)
    assert _width(blurred[2]) == pytest.approx(np.hypot(2.0, 3.0), rel=1e-3)
    # flux is conserved
    assert blurred.sum(axis=1) == pytest.approx(np.full(3, line.sum()), rel=1e-9)


def test_profile_minimum_finds_the_vertex_and_refuses_an_edge():
    trials = np.geomspace(1.0, 10.0, 30)
    chi2 = 1000.0 + 400.0 * (np.log(trials) - np.log(3.3)) ** 2
    fwhm, err = profile_minimum(trials, chi2, dof=1000)
    assert fwhm == pytest.approx(3.3, rel=1e-6)
    assert err == pytest.approx(3.3 / np.sqrt(400.0), rel=1e-6)
    assert np.isnan(profile_minimum(trials, 1000.0 + trials, dof=1000)[0])


def test_round_fwhm_is_on_a_two_percent_grid():
    assert round_fwhm(3.5) == round_fwhm(3.51)
    assert abs(round_fwhm(3.5) / 3.5 - 1) < 0.011


@pytest.mark.parametrize("value", ["abc", True, -2.0, 0.0])
def test_bad_specfwhm_is_a_clear_error(value):
    ds = make_exposure(0, n_fiber=12, n_standard=3, n_pixel=600).red
    header = fits.Header(ds.attrs["primary_header"]) if "primary_header" in ds.attrs else None
    from kspec_xr._base.provenance import with_header_cards

    bad = with_header_cards(ds, {"SPECFWHM": (value, "")})
    with pytest.raises(CalibrationError, match="SPECFWHM"):
        header_fwhm(bad)
    del header


@pytest.fixture(scope="module")
def no_fwhm_exposure(tmp_path_factory):
    # true FWHM 4.4 A, no SPECFWHM card (as 2dfdr writes), stars the grid does not match
    return make_exposure(
        11, n_fiber=24, n_standard=6, n_pixel=3000, fwhm=4.4, mismatch=0.3,
        fwhm_card=False, directory=tmp_path_factory.mktemp("nofwhm"),
    )  # fmt: skip


def test_fwhm_is_measured_when_the_header_has_none(no_fwhm_exposure, tmp_path):
    sim = no_fwhm_exposure
    assert "SPECFWHM" not in fits.getheader(sim.red_path)
    # on the SKY spectrum's lines first
    on_sky = sim.red.pipe(kx.flux_calibrate, catalog=sim.catalog_path).compute()
    assert on_sky.attrs["fwhm_source"].endswith("sky lines")
    assert abs(on_sky.attrs["fwhm_used"] / 4.4 - 1) < 0.03
    # the stars measure it (the sky's lines are taken away)
    out = sim.red.drop_vars("SKY").pipe(kx.flux_calibrate, catalog=sim.catalog_path).compute()
    assert out.attrs["fwhm_source"].startswith("measured on 6 standards")
    assert abs(out.attrs["fwhm_used"] / 4.4 - 1) < 0.10
    report = accuracy_report(out, sim.truth)
    assert report["cal_median_abs_dev"] < 0.015
    path = kx.write_red(out, tmp_path / "out.fits")
    header = fits.getheader(path)
    assert abs(header["FCALFWHM"] / 4.4 - 1) < 0.10
    assert "measured" in header.comments["FCALFWHM"]
    assert "FCALWARN" not in header


def test_a_wrong_fwhm_is_used_but_warned_about(no_fwhm_exposure, tmp_path):
    sim = no_fwhm_exposure
    out = sim.red.pipe(kx.flux_calibrate, catalog=sim.catalog_path, fwhm=12.0).compute()
    assert out.attrs["fwhm_used"] == pytest.approx(12.0)
    warning = calibration_warning(out)
    assert "FWHM 12" in warning and "disagrees" in warning
    header = fits.getheader(kx.write_red(out, tmp_path / "wrong.fits"))
    assert header["FCALFWHM"] == pytest.approx(12.0)
    assert header["FCALFWME"] < 12.0 / 1.25  # biased towards the FWHM fitted at, still flagged
    assert "FWHM" in header["FCALWARN"]
    # the right one passes the same check
    right = sim.red.pipe(kx.flux_calibrate, catalog=sim.catalog_path, fwhm=4.4).compute()
    assert "FWHM" not in calibration_warning(right)


def test_colour_chi2_profiles_out_a_known_reddening():
    bands = ["panstarrs-g", "panstarrs-r", "panstarrs-i", "panstarrs-z"]
    ratio = np.array([band_ratio(b) for b in bands])
    intrinsic = np.array([[0.40, 0.0, -0.10, -0.15], [0.60, 0.0, -0.2, -0.3]])
    observed = intrinsic[0] + 0.07 * ratio
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    chi = ColorChi2(observed, np.full(4, 0.01), pairs, reddening=ratio, ebv_max=0.5)
    scores = chi(intrinsic)
    assert scores[0, 0] == pytest.approx(0.0, abs=1e-9)
    assert chi.last_ebv[0, 0] == pytest.approx(0.07, abs=1e-9)
    assert scores[0, 1] > 10.0  # the wrong template stays wrong under any E(B-V)
    plain = ColorChi2(observed, np.full(4, 0.01), pairs)
    assert plain(intrinsic)[0, 0] > 30.0  # without the reddening the right template is off


def test_extinction_law_is_g23():
    # A(V)/E(B-V) = R_V = 3.1 at 5500 A (V), redder is less extinguished
    assert extinction_curve([5500.0])[0] == pytest.approx(3.1, rel=0.03)
    assert np.all(np.diff(extinction_curve(np.linspace(3700, 9300, 50))) < 0)
    assert 3.4 < band_ratio("panstarrs-g") < 3.9


@pytest.fixture
def fresh_dust_cache(tmp_path, monkeypatch):
    """The law and band ratios computed into (and read from) an empty cache of their own."""
    from kspec_xr._base import dust

    def clear():
        for cached in (dust._law_table, dust._ratio_cache, dust.band_ratio):
            cached.cache_clear()

    monkeypatch.setenv("KSPEC_XR_CACHE", str(tmp_path))
    clear()
    yield tmp_path / "dust"
    clear()


def test_the_tabulated_law_is_g23_to_2e_7(fresh_dust_cache):
    from kspec_xr._base.dust import law_curve

    lam = np.exp(np.random.default_rng(3).uniform(np.log(912.0), np.log(3.0e5), 100_000))
    direct = law_curve(lam)
    np.testing.assert_allclose(extinction_curve(lam), direct, rtol=2e-7, atol=0)
    # held at its end values outside the law's range, like the law
    assert extinction_curve([500.0])[0] == pytest.approx(law_curve([500.0])[0], rel=1e-7)


def test_law_and_band_ratios_come_from_the_cache_in_a_new_process(fresh_dust_cache, monkeypatch):
    from kspec_xr._base import dust

    lam = np.linspace(3700.0, 8800.0, 500)
    first_curve = extinction_curve(lam)
    first_ratios = [band_ratio(b) for b in ("panstarrs-g", "gaiadr2-G")]
    assert sorted(p.suffix for p in fresh_dust_cache.iterdir()) == [".json", ".npy"]

    # a new process: nothing in memory, and neither dust_extinction nor speclite needed
    for cached in (dust._law_table, dust._ratio_cache, dust.band_ratio):
        cached.cache_clear()

    def unavailable(*args):
        raise AssertionError("recomputed although the cache holds it")

    monkeypatch.setattr(dust, "_model", unavailable)
    monkeypatch.setattr(dust, "filter_curve", unavailable)
    np.testing.assert_array_equal(extinction_curve(lam), first_curve)
    assert [band_ratio(b) for b in ("panstarrs-g", "gaiadr2-G")] == first_ratios


def test_a_damaged_dust_cache_is_recomputed_with_a_warning(fresh_dust_cache):
    from kspec_xr._base import dust

    lam = np.linspace(3700.0, 8800.0, 500)
    good_curve, good_ratio = extinction_curve(lam), band_ratio("panstarrs-g")
    (table,) = fresh_dust_cache.glob("*.npy")
    raw = bytearray(table.read_bytes())
    raw[-100] ^= 0xFF  # one value of the table
    table.write_bytes(bytes(raw))
    ratios = fresh_dust_cache / "band-ratios.json"
    record = json.loads(ratios.read_text())
    record["ratios"]["panstarrs-g"] -= 0.5  # a ratio edited, its digest not
    ratios.write_text(json.dumps(record))
    for cached in (dust._law_table, dust._ratio_cache, dust.band_ratio):
        cached.cache_clear()
    with pytest.warns(RuntimeWarning, match="does not verify") as caught:
        curve, ratio = extinction_curve(lam), band_ratio("panstarrs-g")
    assert {str(w.message).split(":")[0] for w in caught} == {str(table), str(ratios)}
    np.testing.assert_array_equal(curve, good_curve)
    assert ratio == good_ratio


@pytest.mark.parametrize(
    ("table_bytes", "ratios_text"),
    [(b"", "[1, 2]"), (b"0" * 64 + b"not npy", "{not json"), (None, '"a string, not a record"')],
)
def test_unreadable_dust_cache_files_are_recomputed_with_a_warning(
    fresh_dust_cache, table_bytes, ratios_text
):
    from kspec_xr._base import dust

    lam = np.linspace(3700.0, 8800.0, 50)
    good_curve, good_ratio = extinction_curve(lam), band_ratio("gaiadr2-G")
    (table,) = fresh_dust_cache.glob("*.npy")
    if table_bytes is not None:
        table.write_bytes(table_bytes)  # empty, or not an array
    (fresh_dust_cache / "band-ratios.json").write_text(ratios_text)
    for cached in (dust._law_table, dust._ratio_cache, dust.band_ratio):
        cached.cache_clear()
    with pytest.warns(RuntimeWarning, match="recomputed"):
        curve, ratio = extinction_curve(lam), band_ratio("gaiadr2-G")
    np.testing.assert_array_equal(curve, good_curve)
    assert ratio == good_ratio


def test_band_ratios_of_another_law_or_method_are_not_used(fresh_dust_cache):
    from kspec_xr._base import dust

    good = band_ratio("panstarrs-g")
    ratios = fresh_dust_cache / "band-ratios.json"
    record = json.loads(ratios.read_text())
    for key in (record["key"].replace("R_V = 3.1", "R_V = 2.5"), record["key"] + "x"):
        forged = {"key": key, "ratios": {"panstarrs-g": good - 1.0}}
        forged["digest"] = dust._digest(
            json.dumps([key, forged["ratios"]], sort_keys=True).encode()
        )
        ratios.write_text(json.dumps(forged))  # a valid file, of another law or method
        for cached in (dust._law_table, dust._ratio_cache, dust.band_ratio):
            cached.cache_clear()
        assert band_ratio("panstarrs-g") == good


def test_the_dust_numbers_are_computed_without_a_writable_cache(fresh_dust_cache, monkeypatch):
    from kspec_xr._base import dust

    monkeypatch.setenv("KSPEC_XR_CACHE", "/proc/kspec_xr_no_cache")  # cannot be created
    for cached in (dust._law_table, dust._ratio_cache, dust.band_ratio):
        cached.cache_clear()
    assert 3.4 < band_ratio("panstarrs-g") < 3.9
    assert extinction_curve([5500.0])[0] == pytest.approx(3.1, rel=0.03)


@pytest.fixture(scope="module")
def reddened(tmp_path_factory):
    return make_exposure(
        4, n_fiber=24, n_standard=6, n_pixel=2500, fwhm=3.0, mismatch=0.2, ebv=(0.05, 0.08),
        directory=tmp_path_factory.mktemp("dust"),
    )  # fmt: skip


def test_catalogue_extinction_reddens_the_models(reddened):
    sim = reddened
    out = sim.red.pipe(kx.flux_calibrate, catalog=sim.catalog_path).compute()
    truth = sim.truth["ebv"].values
    assert np.median(np.abs(out["fit_ebv"].values - truth)) < 0.01
    assert all("Ag" in str(s) for s in out["ebv_source"].values)
    dusty = accuracy_report(out, sim.truth)["cal_median_abs_dev"]
    plain = sim.red.pipe(kx.flux_calibrate, catalog=sim.catalog_path, redden=False).compute()
    assert accuracy_report(plain, sim.truth)["cal_median_abs_dev"] > dusty
    assert dusty < 0.015


def test_reddening_is_fitted_when_the_catalogue_has_none(tmp_path):
    sim = make_exposure(
        4, n_fiber=24, n_standard=6, n_pixel=2500, fwhm=3.0, mismatch=0.2, ebv=(0.05, 0.08),
        catalog_ebv=False, directory=tmp_path,
    )  # fmt: skip
    out = sim.red.pipe(kx.flux_calibrate, catalog=sim.catalog_path).compute()
    assert all("fitted" in str(s) for s in out["ebv_source"].values)
    assert abs(float(np.median(out["fit_ebv"].values)) - float(np.median(sim.truth["ebv"]))) < 0.03
    clean = make_exposure(
        4, n_fiber=24, n_standard=6, n_pixel=2500, fwhm=3.0, mismatch=0.2, directory=tmp_path / "c"
    )
    none = clean.red.pipe(kx.flux_calibrate, catalog=clean.catalog_path).compute()
    assert float(np.median(none["fit_ebv"].values)) < 0.02


def test_sky_lines_measure_the_fwhm_without_templates():
    rng = np.random.default_rng(3)
    wave = np.linspace(5000.0, 9000.0, 3000)
    step = wave[1] - wave[0]
    from scipy.special import ndtr

    edges = np.concatenate([[wave[0] - step / 2], wave + step / 2])
    sigma = 4.2 / 2.3548
    sky = np.full(wave.size, 50.0)
    for centre in rng.uniform(5100, 8900, 25):
        sky += 4000 * (ndtr((edges[1:] - centre) / sigma) - ndtr((edges[:-1] - centre) / sigma))
    sky += rng.normal(size=sky.size) * np.sqrt(sky)
    from kspec_xr.kernels.lsf import combine_fwhm, sky_line_fwhm

    widths = sky_line_fwhm(wave, sky, guess=3 * step)
    estimate = combine_fwhm(widths, np.full(widths.size, np.nan))
    assert estimate.reliable and estimate.n >= 10
    assert estimate.fwhm == pytest.approx(4.2, rel=0.03)
    # a sky without lines measures nothing
    assert sky_line_fwhm(wave, 50 + rng.normal(size=wave.size), guess=3 * step).size == 0


def test_stars_that_disagree_are_not_a_measurement(no_fwhm_exposure, monkeypatch):
    from kspec_xr import pipeline
    from kspec_xr.kernels.lsf import combine_fwhm

    scattered = combine_fwhm(np.array([1.2, 2.0, 6.7, 2.3, 1.7, 3.9]), np.full(6, 0.1))
    assert not scattered.reliable and scattered.scatter > 0.10
    assert combine_fwhm(np.array([3.4, 3.5, 3.6, 3.5]), np.full(4, 0.1)).reliable

    real = pipeline.measured_fwhm

    def disagreeing(ds):
        return {**real(ds), "reliable": False, "scatter": 0.4}

    monkeypatch.setattr(pipeline, "measured_fwhm", disagreeing)
    sim = no_fwhm_exposure
    with pytest.raises(CalibrationError, match="cannot be measured reliably"):
        sim.red.drop_vars("SKY").pipe(kx.flux_calibrate, catalog=sim.catalog_path)


def test_the_fwhm_check_keeps_a_chunked_exposure_lazy(no_fwhm_exposure):
    from kspec_xr.testing.dask import raise_if_dask_computes

    sim = no_fwhm_exposure
    chunked = kx.open_red(sim.red_path, chunks={"fiber": 7})
    with raise_if_dask_computes():
        lazy = kx.flux_calibrate(chunked, catalog=sim.catalog_path, fwhm=4.4)
    assert lazy["std_fwhm"].chunks is not None
    assert np.nanmedian(lazy["std_fwhm"].values) == pytest.approx(4.4, rel=0.1)


def test_a_known_grating_gives_the_nominal_fwhm_when_the_stars_disagree(
    no_fwhm_exposure, monkeypatch, tmp_path
):
    from kspec_xr import pipeline
    from kspec_xr.stages import nominal_fwhm

    sim = no_fwhm_exposure
    assert nominal_fwhm(sim.red) is None  # the simulation names no instrument
    real = pipeline.measured_fwhm
    monkeypatch.setattr(
        pipeline, "measured_fwhm", lambda ds: {**real(ds), "reliable": False, "scatter": 0.4}
    )
    red = kx.with_header_cards(
        sim.red.drop_vars("SKY"), INSTRUME="AAOMEGA-2dF", GRATID="385R", LAMBDAC=7251.5
    )
    assert nominal_fwhm(red) == (pytest.approx(7251.5 / 1300), "AAOmega 385R R=1300")
    out = red.pipe(kx.flux_calibrate, catalog=sim.catalog_path).compute()
    assert out.attrs["fwhm_source"] == "nominal, AAOmega 385R R=1300"
    assert out.attrs["fwhm_used"] == pytest.approx(5.578, abs=0.01)
    assert "FWHM measured on the standards is not reliable" in out.attrs["history"]
    path = kx.write_red(out, tmp_path / "nominal.fits")
    card = fits.getheader(path)
    assert card["FCALFWHM"] == pytest.approx(5.578, abs=0.01)
    assert "nominal, AAOmega 385R" in card.comments["FCALFWHM"]
    # asked to measure, a nominal value is not a measurement: refused
    with pytest.raises(CalibrationError, match="cannot be measured reliably"):
        red.pipe(kx.flux_calibrate, catalog=sim.catalog_path, fwhm="measure")
