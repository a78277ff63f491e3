"""Air and vacuum wavelengths: the conversion, the file's declaration, the rule, the calibration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

import kspec_xr as kx
from kspec_xr._base.errors import KspecWarning
from kspec_xr.kernels.air import MIN_AIR_WAVELENGTH, air_to_vacuum, vacuum_to_air
from kspec_xr.qc import standards_table
from kspec_xr.stages.medium import resolve_medium, vacuum_wavelength
from kspec_xr.testing import accuracy_report, make_exposure

# --- the conversion ------------------------------------------------------------------

#: NIST Atomic Spectra Database: (air, vacuum) Å
NIST = {"H alpha": (6562.80, 6564.61), "Na D2": (5889.95, 5891.58), "Ca II K": (3933.66, 3934.78)}


@pytest.mark.parametrize("air, vacuum", NIST.values(), ids=NIST.keys())
def test_known_lines(air, vacuum):
    assert abs(float(air_to_vacuum(air)) - vacuum) < 0.01
    assert abs(float(vacuum_to_air(vacuum)) - air) < 0.01


def test_round_trips_are_exact():
    rng = np.random.default_rng(1)
    lam = np.sort(rng.uniform(2001.0, 320_000.0, 200_000))
    assert np.max(np.abs(vacuum_to_air(air_to_vacuum(lam)) - lam)) < 1e-6
    assert np.max(np.abs(air_to_vacuum(vacuum_to_air(lam)) - lam)) < 1e-6
    assert np.all(np.diff(air_to_vacuum(lam)) > 0)  # monotonic: a grid stays a grid


def test_below_2000_A_air_is_vacuum_and_shapes_are_kept():
    lam = np.array([[900.0, 1500.0], [1999.9, np.nan]])
    np.testing.assert_array_equal(air_to_vacuum(lam), lam)
    np.testing.assert_array_equal(vacuum_to_air(lam), lam)
    assert air_to_vacuum(MIN_AIR_WAVELENGTH) > MIN_AIR_WAVELENGTH
    assert np.ndim(air_to_vacuum(5000.0)) == 0
    # ~83 km/s at 6000 Å: the size of the RV error of treating air as vacuum
    assert 82 < (air_to_vacuum(6000.0) / 6000.0 - 1) * 299_792.458 < 84


# --- the file's declaration ---------------------------------------------------------


def _red(tmp_path, make_red, cards: dict, *, dispaxis=None, wavela="common", name="m.fits"):
    hdul = make_red(dispaxis=dispaxis, wavela=wavela)
    for key, value in cards.items():
        hdul[0].header[key] = value
    path = tmp_path / name
    hdul.writeto(path)
    return path


@pytest.mark.parametrize(
    "cards, medium, card",
    [
        ({"CTYPE1": "AWAV"}, "air", "CTYPE1 = 'AWAV'"),
        ({"CTYPE1": "WAVE"}, "vacuum", "CTYPE1 = 'WAVE'"),
        ({"CTYPE1": "AWAV-LOG"}, "air", "CTYPE1 = 'AWAV-LOG'"),
        ({"CTYPE1": "WAVE-TAB"}, "vacuum", "CTYPE1 = 'WAVE-TAB'"),
        ({"CTYPE1": "Wavelength"}, None, None),
        ({"CTYPE1": "WAVELEN"}, None, None),
        ({}, None, None),
    ],
)
def test_reads_the_medium_from_ctype(tmp_path, make_red, cards, medium, card):
    ds = kx.open_red(_red(tmp_path, make_red, cards))
    attrs = ds["wavelength"].attrs
    assert attrs.get("medium") == medium
    assert attrs.get("medium_source") == card


def test_reads_ctype2_when_dispaxis_is_2(tmp_path, make_red):
    ds = kx.open_red(_red(tmp_path, make_red, {"CTYPE1": "WAVE", "CTYPE2": "AWAV"}, dispaxis=2))
    assert ds["wavelength"].attrs["medium"] == "air"
    assert ds["wavelength"].attrs["medium_source"] == "CTYPE2 = 'AWAV'"


def test_medium_with_a_wcs_axis_and_no_wavela(tmp_path, make_red):
    ds = kx.open_red(_red(tmp_path, make_red, {"CTYPE1": "AWAV"}, wavela=None))
    assert ds["wavelength"].attrs["medium"] == "air"


@pytest.mark.parametrize("ctype", ["AWAV", "WAVE", "Wavelength"])
@pytest.mark.parametrize("wavela", ["common", None])
def test_round_trip_stays_byte_for_byte(tmp_path, make_red, ctype, wavela):
    source = _red(tmp_path, make_red, {"CTYPE1": ctype}, wavela=wavela)
    copy = kx.write_red(kx.open_red(source), tmp_path / "copy.fits")
    assert copy.read_bytes() == source.read_bytes()


def test_a_medium_set_on_the_coordinate_is_written_as_ctype(tmp_path, make_red):
    ds = kx.open_red(_red(tmp_path, make_red, {"CTYPE1": "Wavelength"}))
    ds["wavelength"].attrs["medium"] = "air"
    path = kx.write_red(ds, tmp_path / "declared.fits")
    assert fits.getheader(path)["CTYPE1"] == "AWAV"
    assert kx.open_red(path)["wavelength"].attrs["medium"] == "air"
    assert "KXATTRS" not in fits.getheader(path)


# --- the rule ------------------------------------------------------------------------


def _exposure(medium_attrs: dict | None = None, ds_attrs: dict | None = None) -> xr.Dataset:
    wave = xr.Variable("wavelength", np.linspace(4000.0, 8000.0, 5), medium_attrs or {})
    return xr.Dataset(coords={"wavelength": wave}, attrs=ds_attrs or {})


AIR_FILE = {"medium": "air", "medium_source": "CTYPE1 = 'AWAV'"}
VACUUM_FILE = {"medium": "vacuum", "medium_source": "CTYPE1 = 'WAVE'"}


def test_undeclared_means_air():
    assert resolve_medium(_exposure()) == ("air", "default")


@pytest.mark.parametrize("declared", [AIR_FILE, VACUUM_FILE])
def test_the_file_declaration_comes_next(declared):
    medium, source = resolve_medium(_exposure(declared))
    assert medium == declared["medium"]
    assert source == f"file {declared['medium_source']}"


def test_the_option_wins_and_a_contradiction_warns_naming_the_card():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_medium(_exposure(AIR_FILE), "air") == ("air", "option")
        assert resolve_medium(_exposure(), "vacuum") == ("vacuum", "option")
    with pytest.warns(KspecWarning, match=r"CTYPE1 = 'AWAV'.*wavelength_medium='vacuum'"):
        assert resolve_medium(_exposure(AIR_FILE), "vacuum") == ("vacuum", "option")


def test_a_later_stage_follows_the_earlier_one_and_does_not_warn_again():
    recorded = {"wavelength_medium": "vacuum", "wavelength_medium_source": "option"}
    ds = _exposure(AIR_FILE, recorded)
    assert resolve_medium(ds) == ("vacuum", "option")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_medium(ds, "vacuum") == ("vacuum", "option")


@pytest.mark.parametrize("bad, error", [("glass", ValueError), (1, TypeError)])
def test_a_bad_option_is_refused(bad, error):
    with pytest.raises(error, match="wavelength_medium"):
        resolve_medium(_exposure(), bad)


def test_vacuum_wavelength_leaves_the_dataset_alone():
    ds = _exposure()
    vac = vacuum_wavelength(ds)
    np.testing.assert_allclose(vac.values, air_to_vacuum(ds["wavelength"].values))
    np.testing.assert_array_equal(vacuum_wavelength(ds, "vacuum").values, ds["wavelength"].values)
    np.testing.assert_array_equal(ds["wavelength"].values, np.linspace(4000.0, 8000.0, 5))
    assert vac.attrs["units"] == "Angstrom"


def test_cli_air_and_vacuum_are_exclusive(capsys):
    from kspec_xr.cli import _calibration_options, _parser

    base = ["fluxcal", "in.fits", "-o", "out.fits", "--catalog", "c.csv"]
    for flag, medium in (([], None), (["--air"], "air"), (["--vacuum"], "vacuum")):
        args = _parser().parse_args(base + flag)
        assert _calibration_options(args)["wavelength_medium"] == medium
    args = _parser().parse_args(["batch", "x.fits", "--out-dir", "d", "--catalog", "c", "--air"])
    assert _calibration_options(args)["wavelength_medium"] == "air"
    with pytest.raises(SystemExit):
        _parser().parse_args(base + ["--air", "--vacuum"])
    assert "not allowed with" in capsys.readouterr().err


def test_apply_fluxcal_passes_calibflux_medium(monkeypatch, tmp_path):
    from kspec_xr import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "calibrate_file", lambda *a, **kw: seen.update(kw))
    args = {"CALIBFLUX": True, "CALIBFLUX_CATALOG": "c.csv", "CALIBFLUX_MEDIUM": "Vacuum"}
    assert pipeline.apply_fluxcal(tmp_path / "x.fits", args)
    assert seen["wavelength_medium"] == "vacuum"
    pipeline.apply_fluxcal(tmp_path / "x.fits", {**args, "CALIBFLUX_MEDIUM": ""})
    assert seen["wavelength_medium"] is None


def test_nightly_matches_exposures_on_vacuum_wavelengths():
    from kspec_xr.nightly import nightly_transfer

    def exposure(wave, medium):
        vac = air_to_vacuum(wave) if medium == "air" else wave
        shape = 1e-18 * (1 + np.sin(vac / 30.0) * 0.2)  # structure on the scale of the shift
        return xr.Dataset(
            {
                "calibration": ("wavelength", shape),
                "calibration_variance": ("wavelength", (0.01 * shape) ** 2),
                "calibration_mask": ("wavelength", np.zeros(wave.size, "int32")),
            },
            coords={"wavelength": wave},
            attrs={"wavelength_medium": medium, "wavelength_medium_source": "option"},
        )

    wave = np.linspace(4000.0, 8000.0, 4000)
    night = nightly_transfer([exposure(wave, "air"), exposure(wave, "vacuum")])
    assert night.attrs["wavelength_medium"] == "air"
    expected = exposure(wave, "air")["calibration"].values
    inner = slice(50, -50)
    np.testing.assert_allclose(night["calibration"].values[inner], expected[inner], rtol=2e-3)
    assert np.nanmax(night["calibration_rms"].values[inner]) < 2e-3


# --- the calibration of an air exposure ----------------------------------------------

SIM = {"n_fiber": 24, "n_standard": 5, "n_pixel": 1500}


@pytest.fixture(scope="module")
def grid():
    return kx.open_bosz()


def _calibrate(sim, grid, **options):
    out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid, **options)
    return out.compute()


def _rv_offset(out, sim) -> np.ndarray:
    order = np.argsort(np.asarray(sim.truth["standard_fiber"].values))
    return np.asarray(out["fit_rv"].values) - np.asarray(sim.truth["rv"].values)[order]


@pytest.fixture(scope="module")
def vacuum_run(tmp_path_factory, grid):
    sim = make_exposure(5, **SIM, directory=tmp_path_factory.mktemp("vac"))
    return sim, _calibrate(sim, grid)


@pytest.fixture(scope="module")
def air_sim(tmp_path_factory):
    return make_exposure(5, **SIM, medium="air", directory=tmp_path_factory.mktemp("air"))


@pytest.fixture(scope="module")
def air_run(air_sim, grid):
    return _calibrate(air_sim, grid)


def test_the_simulator_declares_its_medium(air_sim, vacuum_run):
    assert fits.getheader(air_sim.red_path)["CTYPE1"] == "AWAV"
    assert fits.getheader(vacuum_run[0].red_path)["CTYPE1"] == "WAVE"
    np.testing.assert_array_equal(air_sim.red["wavelength"].values, vacuum_run[0].red["wavelength"])


def test_an_air_exposure_calibrates_like_a_vacuum_one(air_run, air_sim, vacuum_run):
    sim, vac_out = vacuum_run
    air = accuracy_report(air_run, air_sim.truth)
    vac = accuracy_report(vac_out, sim.truth)
    print({"air": air, "vacuum": vac})
    assert np.median(np.abs(_rv_offset(air_run, air_sim))) < 3.0
    assert air["cal_median_abs_dev"] < max(1.5 * vac["cal_median_abs_dev"], 0.01)
    assert air["n_standards_used"] == vac["n_standards_used"]
    assert air_run.attrs["wavelength_medium"] == "air"
    assert air_run.attrs["wavelength_medium_source"] == "file CTYPE1 = 'AWAV'"
    # the output grid is the input grid: the coordinate is the file's (air) one
    np.testing.assert_array_equal(air_run["wavelength"].values, air_sim.red["wavelength"].values)


def test_treating_air_as_vacuum_shows_the_old_offset(air_sim, grid):
    with pytest.warns(KspecWarning, match="CTYPE1 = 'AWAV'"):
        out = _calibrate(air_sim, grid, wavelength_medium="vacuum")
    offset = np.median(_rv_offset(out, air_sim))
    assert -90 < offset < -75  # air wavelengths are ~83 km/s short of vacuum at 6000 Å


def test_undeclared_air_is_read_as_air(tmp_path, grid):
    sim = make_exposure(5, **SIM, medium="air", declare_medium=False, directory=tmp_path)
    assert fits.getheader(sim.red_path)["CTYPE1"] == "Wavelength"
    out = _calibrate(sim, grid)
    assert out.attrs["wavelength_medium_source"] == "default"
    assert np.median(np.abs(_rv_offset(out, sim))) < 3.0


def test_the_output_says_which_medium_was_used(air_run, tmp_path):
    path = kx.write_red(air_run, tmp_path / "air_fcal.fits")
    header = fits.getheader(path)
    assert header["FCALMED"] == "air"
    assert "CTYPE1 = 'AWAV'" in header.comments["FCALMED"]
    assert header["CTYPE1"] == "AWAV"  # the science axis is left as the file had it
    history = "\n".join(str(h) for h in header["HISTORY"])
    assert "FCAL wavelengths: air" in history
    assert "vacuum scale" in standards_table(air_run)
    back = kx.open_red(path)
    assert back.attrs["wavelength_medium"] == "air"
    assert "vacuum" in back["fit_rv"].attrs["long_name"]
