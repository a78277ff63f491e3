"""The flux calibration against a simulated exposure with a known truth."""

import numpy as np
import pytest
import xarray as xr

import kspec_xr as kx
from kspec_xr._base.errors import CalibrationError, CatalogError
from kspec_xr._base.maskbits import bit
from kspec_xr._base.schema import standard_reasons, standards_used
from kspec_xr.testing import accuracy_report, make_exposure, raise_if_dask_computes


@pytest.fixture(scope="module")
def grid():
    return kx.open_bosz()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return make_exposure(
        11, n_fiber=40, n_standard=6, n_pixel=2048, directory=tmp_path_factory.mktemp("sim11")
    )


@pytest.fixture(scope="module")
def prepared(sim, grid):
    return kx.prepare_templates(grid, sim.red["wavelength"], 2.5)  # SPECFWHM of make_exposure


@pytest.fixture(scope="module")
def calibrated(sim, grid):
    return kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid).compute()


def test_recovers_the_known_throughput(calibrated, sim):
    report = accuracy_report(calibrated, sim.truth)
    print(report)
    assert report["n_standards_used"] == 6
    assert report["cal_median_abs_dev"] < 0.012
    assert report["program_median_abs_dev"] < 0.015
    assert 0.8 < report["pull_std"] < 1.25
    assert report["teff_median_abs_err"] < 150
    assert report["rv_median_abs_err"] < 3.0


@pytest.mark.parametrize(
    "kind", [{"mismatch": 0.3}, {"star_model": "other"}], ids=["mismatch", "another-model"]
)
def test_recovers_the_throughput_from_stars_the_templates_do_not_match(tmp_path, grid, kind):
    """Lines ±30 % and tilts, or stars built another way: the fit and the calibration hold."""
    sim = make_exposure(11, n_fiber=40, n_standard=6, n_pixel=2048, directory=tmp_path, **kind)
    out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid).compute()
    report = accuracy_report(out, sim.truth)
    assert report["n_standards_used"] >= 5
    assert report["cal_median_abs_dev"] < 0.015
    assert report["program_median_abs_dev"] < 0.01
    assert 0.8 < report["pull_std"] < 1.25
    assert report["cal_pull_std"] < 1.35
    assert report["teff_median_abs_err"] < 300
    assert report["rv_median_abs_err"] < 4.0


def test_products_and_units(calibrated):
    out = calibrated
    assert out["flux"].attrs["units"] == "erg/(s cm2 Angstrom)"
    assert out["variance"].attrs["units"] == "erg2/(s2 cm4 Angstrom2)"
    for name in ("calibration", "calibration_variance", "calibration_rms", "calibration_mask"):
        assert out[name].dims == ("wavelength",)
        assert "units" in out[name].attrs
    for name in ("fit_teff", "fit_logg", "fit_mh", "fit_rv", "scale", "scale_err"):
        assert out[name].dims == ("standard",)
    assert out["std_calibration"].dims == ("standard", "wavelength")
    # telluric pixels are flagged, never zeroed
    telluric = (out["calibration_mask"] & bit("TELLURIC")) != 0
    assert telluric.any()
    assert np.all(np.isfinite(out["calibration"].values))
    assert np.all((out["mask"].values[:, telluric.values] & bit("TELLURIC")) != 0)
    program = out["fiber_type"] == "P"
    assert np.all(out["flux"].where(program, drop=True).isel(wavelength=telluric.values) != 0)


def test_catalogue_is_matched_by_position(calibrated, sim):
    # the simulated catalogue is shuffled, has extra rows and the FIBRES RA/DEC are radians
    assert calibrated.attrs["catalog_match"] == "position"
    np.testing.assert_array_equal(calibrated["catalog_row"].values, sim.truth["catalog_row"].values)
    assert np.all(calibrated["catalog_sep"].values < 1.0)


def test_variance_propagation_formula(calibrated, sim):
    counts = sim.red["flux"].values.astype(float)
    var_counts = sim.red["variance"].values.astype(float)
    cal = calibrated["calibration"].values
    var_cal = calibrated["calibration_variance"].values
    np.testing.assert_allclose(calibrated["flux"].values, counts * cal, rtol=1e-6)
    np.testing.assert_allclose(
        calibrated["variance"].values, var_counts * cal**2 + counts**2 * var_cal, rtol=1e-6
    )


def test_chunked_is_lazy_and_equals_eager(sim, prepared, tmp_path):
    eager = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=prepared).compute()
    chunked = kx.open_red(sim.red_path, chunks={"fiber": 7})
    with raise_if_dask_computes():
        lazy = kx.flux_calibrate(chunked, catalog=sim.catalog_path, templates=prepared)
    assert lazy["flux"].chunks is not None
    assert lazy["calibration"].chunks is not None
    computed = lazy.compute()
    for name in ("flux", "variance", "calibration", "fit_teff", "fit_rv", "scale"):
        xr.testing.assert_allclose(computed[name], eager[name], rtol=1e-6)
    np.testing.assert_array_equal(computed["mask"].values, eager["mask"].values)


def test_single_standard_passes_through(tmp_path, grid):
    sim = make_exposure(5, n_fiber=20, n_standard=1, n_pixel=2048, directory=tmp_path)
    out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid).compute()
    bridged = (out["calibration_mask"] & bit("CALIB_INTERP")) != 0
    valid = (out["std_calibration_mask"].isel(standard=0) == 0) & ~bridged
    assert int(valid.sum()) > 1000
    np.testing.assert_allclose(
        out["calibration"].where(valid, drop=True),
        out["std_calibration"].isel(standard=0).where(valid, drop=True),
        rtol=1e-12,
    )
    assert np.all(np.isnan(out["calibration_rms"].values))
    report = accuracy_report(out, sim.truth)
    assert report["cal_median_abs_dev"] < 0.03  # one star at S/N 40: noise-limited


def test_huber_metric_agrees(sim, prepared, calibrated):
    out = kx.flux_calibrate(
        sim.red, catalog=sim.catalog_path, templates=prepared, metric="huber"
    ).compute()
    assert out.attrs["fit_metric"] == "huber"
    np.testing.assert_allclose(out["fit_teff"], calibrated["fit_teff"], atol=150)
    ratio = out["calibration"] / calibrated["calibration"]
    good = calibrated["calibration_mask"] == 0
    assert float(np.abs(ratio.where(good) - 1).median()) < 0.01


def test_bad_pixels_are_flagged_and_calibration_goes_on(sim, prepared):
    ds = sim.red.copy(deep=True)
    fiber = int(np.flatnonzero(ds["fiber_type"].values == "C")[0])
    flux = ds["flux"].values
    var = ds["variance"].values
    flux[fiber, 100:110] = np.nan
    flux[fiber, 200] = np.inf
    var[fiber, 300:305] = 0.0
    var[fiber, 306] = -1.0
    ds["mask"] = ds["mask"] | kx.maskbits.data_mask(flux, var)
    out = kx.flux_calibrate(ds, catalog=sim.catalog_path, templates=prepared).compute()
    assert np.all(np.isfinite(out["calibration"].values))
    m = out["std_calibration_mask"].sel(standard=0).values
    assert np.all(m[100:110] & bit("CALIB_INVALID"))
    assert np.all(m[300:305] & bit("CALIB_INVALID"))
    assert out["mask"].values[fiber, 105] & bit("NONFINITE")
    assert out["mask"].values[fiber, 302] & bit("BADVAR")


def test_no_standard_is_an_error(sim):
    types = np.where(sim.red["fiber_type"] == "C", "P", sim.red["fiber_type"].values)
    ds = sim.red.assign_coords(fiber_type=("fiber", types))
    with pytest.raises(CalibrationError, match="TYPE='C'"):
        kx.select_standards(ds)


def test_catalogue_far_away_is_an_error(sim, tmp_path):
    cat = sim.catalog.copy()
    cat["Dec"] = cat["Dec"] + 5.0
    path = tmp_path / "elsewhere.csv"
    cat.to_csv(path, index=False)
    ds = kx.select_standards(sim.red)
    with pytest.raises(CatalogError, match="no standard star has a catalogue match"):
        kx.associate_catalog(ds, path)


def test_missing_catalogue_is_an_error(sim, tmp_path):
    with pytest.raises(CatalogError, match="nope.csv"):
        kx.associate_catalog(kx.select_standards(sim.red), tmp_path / "nope.csv")


def test_order_matching_only_when_asked_and_row_counts_agree(sim):
    ds = kx.select_standards(sim.red)
    ds = ds.assign(standard_ra=ds["standard_ra"] * np.nan)
    cat = kx.read_catalog(sim.catalog_path)
    ordered = cat.isel(star=sim.truth["catalog_row"].values)  # row k = standard k (fiber order)
    # without positions, the default (position) refuses instead of falling back to the order
    with pytest.raises(CatalogError, match="no standard fibre has RA/Dec"):
        kx.associate_catalog(ds, ordered)
    out = kx.associate_catalog(ds, ordered, method="order")
    assert out.attrs["catalog_match"] == "order"
    np.testing.assert_array_equal(out["catalog_row"].values, np.arange(6))
    np.testing.assert_allclose(
        out["std_mag"].sel(band="panstarrs-r").values,
        cat["mag"].sel(band="panstarrs-r").values[sim.truth["catalog_row"].values],
    )
    # the whole catalogue (extra field stars) cannot be matched by order
    with pytest.raises(CatalogError, match="11 rows for 6 standards"):
        kx.associate_catalog(ds, cat, method="order")
    with pytest.raises(ValueError, match="'auto'.*removed"):
        kx.associate_catalog(ds, cat, method="auto")


def test_unmatched_standard_is_kept_and_flagged(sim, tmp_path):
    cat = sim.catalog.drop(index=int(sim.truth["catalog_row"].values[2]))
    path = tmp_path / "missing_one.csv"
    cat.to_csv(path, index=False)
    out = kx.associate_catalog(kx.select_standards(sim.red), path)
    assert out.sizes["standard"] == 6
    assert out["catalog_row"].values[2] == -1
    assert "no catalogue star" in out["standard_reason"].values[2]
    assert np.all(out["standard_reason"].values[[0, 1, 3, 4, 5]] == "")


def test_coordinates_keep_their_attributes(calibrated, sim):
    for name in ("wavelength", "fiber", "fiber_type", "ra", "dec"):
        assert calibrated[name].attrs == sim.red[name].attrs, name
    assert calibrated["wavelength"].attrs["units"] == "Angstrom"


def test_written_file_describes_the_calibration(calibrated, tmp_path):
    path = kx.write_red(calibrated, tmp_path / "fcal.fits")
    back = kx.open_red(path)
    header = kx.primary_header(back)
    assert header["BUNIT"] == "10**-17 erg/(s cm2 Angstrom)"
    assert header["FLUXCAL"] is True
    assert header["FCALNSTR"] == 6
    assert 0 < header["FCALRMS"] < 0.2
    history = "\n".join(str(h) for h in header["HISTORY"])
    assert history.count("FCAL std") == 6
    assert "fit_standards" in history and "apply_calibration" in history
    for name in ("calibration", "calibration_variance", "fit_teff", "std_calibration"):
        np.testing.assert_allclose(back[name].values, calibrated[name].values, rtol=1e-12)
    # writing the re-read file again does not repeat the description
    again = kx.primary_header(kx.open_red(kx.write_red(back, tmp_path / "again.fits")))
    assert "\n".join(str(h) for h in again["HISTORY"]).count("FCAL std") == 6


def test_calibrated_dataset_round_trips_through_netcdf(calibrated, tmp_path):
    path = tmp_path / "out.nc"
    calibrated.to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_identical(back.load(), calibrated)


def test_a_subset_of_a_prepared_grid_is_its_own_grid(sim, prepared):
    hot = prepared.isel(template=np.flatnonzero(prepared["teff"].values >= 6000))
    out = kx.fit_standards(
        sim.red.pipe(kx.select_standards).pipe(kx.associate_catalog, sim.catalog_path), hot
    ).compute()
    assert float(out["fit_teff"].min()) >= 6000 - 1e-6
    full = kx.fit_standards(
        sim.red.pipe(kx.select_standards).pipe(kx.associate_catalog, sim.catalog_path), prepared
    ).compute()
    assert float(full["fit_teff"].min()) < 6000  # the simulated standards start at 5700 K


def test_fully_masked_standard_is_flagged_not_used(sim, prepared, tmp_path):
    ds = sim.red.copy(deep=True)
    fiber = int(np.flatnonzero(ds["fiber_type"].values == "C")[2])
    ds["flux"].values[fiber] = np.nan
    ds["mask"] = ds["mask"] | kx.maskbits.data_mask(ds["flux"].values, ds["variance"].values)
    out = kx.flux_calibrate(ds, catalog=sim.catalog_path, templates=prepared).compute()
    assert int(out["fit_status"].values[2]) == 1
    assert not bool(standards_used(out)[2])
    reasons = standard_reasons(out)
    assert reasons[2] == "template fit failed: too few pixels"
    assert np.all(reasons[[0, 1, 3, 4, 5]] == "")
    assert np.all(out["std_calibration_mask"].values[2] & bit("CALIB_INVALID"))
    report = accuracy_report(out, sim.truth)
    assert report["cal_median_abs_dev"] < 0.015
    header = kx.primary_header(kx.open_red(kx.write_red(out, tmp_path / "masked.fits")))
    assert header["FCALNSTR"] == 5
    assert "not used: template fit failed" in " ".join(str(h) for h in header["HISTORY"])


def test_catalogue_bands_outside_the_grid_are_an_error(sim, prepared, tmp_path):
    cat = sim.catalog.copy()
    for column in ("Gaia", "BP", "RP", "g", "r", "i", "z"):
        cat[column] = np.nan
    cat["J"], cat["dJ"] = 15.0, 0.02
    path = tmp_path / "only_2mass.csv"
    cat.to_csv(path, index=False)
    ds = sim.red.pipe(kx.select_standards).pipe(kx.associate_catalog, path)
    with pytest.raises(CalibrationError, match="twomass-J"):
        kx.fit_standards(ds, prepared)


def test_nothing_is_written_when_no_standard_is_usable(sim, prepared, tmp_path):
    ds = sim.red.copy(deep=True)
    standards = np.flatnonzero(ds["fiber_type"].values == "C")
    ds["flux"].values[standards] = np.nan
    ds["mask"] = ds["mask"] | kx.maskbits.data_mask(ds["flux"].values, ds["variance"].values)
    out = kx.flux_calibrate(ds, catalog=sim.catalog_path, templates=prepared)
    with pytest.raises(CalibrationError, match="no standard star could be used"):
        kx.write_red(out, tmp_path / "none.fits")
    assert not list(tmp_path.iterdir())
