"""The command line and the reference pipeline's entry point, on real files."""

import hashlib

import numpy as np
import pytest

import kspec_xr as kx
from kspec_xr.cli import main
from kspec_xr.testing import make_exposure


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return make_exposure(
        21, n_fiber=24, n_standard=4, n_pixel=1024, directory=tmp_path_factory.mktemp("sim21")
    )


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # prepares the grid for a setup of its own
def test_fluxcal_writes_a_calibrated_file(sim, tmp_path, capsys):
    before = _digest(sim.red_path)
    out = tmp_path / "out.fits"
    png = tmp_path / "qc.png"
    code = main(
        [
            "fluxcal",
            str(sim.red_path),
            "--catalog",
            str(sim.catalog_path),
            "-o",
            str(out),
            "--qc-plot",
            str(png),
        ]
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "4/4 standards used" in capsys.readouterr().out
    assert _digest(sim.red_path) == before  # input untouched
    header = kx.primary_header(kx.open_red(out))
    assert header["FLUXCAL"] is True and header["BUNIT"] == "10**-17 erg/(s cm2 Angstrom)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--catalog", "missing.csv"], "missing.csv"),
        (["--catalog", "{cat}", "--metric", "chi2", "--fwhm", "-1"], "FWHM"),
    ],
)
def test_bad_input_is_one_line_and_no_output(sim, tmp_path, capsys, args, message):
    out = tmp_path / "out.fits"
    args = [a.replace("{cat}", str(sim.catalog_path)) for a in args]
    code = main(["fluxcal", str(sim.red_path), "-o", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_existing_output_and_missing_folder(sim, tmp_path, capsys):
    out = tmp_path / "exists.fits"
    out.write_bytes(b"keep me")
    base = ["fluxcal", str(sim.red_path), "--catalog", str(sim.catalog_path)]
    assert main([*base, "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main([*base, "-o", str(tmp_path / "no" / "such" / "dir.fits")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "-o", str(out), "--overwrite"]) == 0
    assert kx.primary_header(kx.open_red(out))["FLUXCAL"] is True


def test_no_standard_fiber(sim, tmp_path, capsys):
    from astropy.io import fits

    with fits.open(sim.red_path) as hdul:
        hdul["FIBRES"].data["TYPE"][hdul["FIBRES"].data["TYPE"] == "C"] = "P"
        bad = tmp_path / "nostd.fits"
        hdul.writeto(bad)
    code = main(
        ["fluxcal", str(bad), "--catalog", str(sim.catalog_path), "-o", str(tmp_path / "o.fits")]
    )
    assert code == 2
    assert "TYPE='C'" in capsys.readouterr().err


def test_debug_shows_the_traceback(sim, tmp_path):
    with pytest.raises(kx.CatalogError):
        main(
            [
                "--debug",
                "fluxcal",
                str(sim.red_path),
                "--catalog",
                "missing.csv",
                "-o",
                str(tmp_path / "o.fits"),
            ]
        )


@pytest.mark.slow  # prepares the grid for a setup of its own
def test_apply_fluxcal_in_place(sim, tmp_path):
    path = tmp_path / "inplace.fits"
    path.write_bytes(sim.red_path.read_bytes())
    assert kx.apply_fluxcal(path, {"CALIBFLUX": False}) is False
    assert _digest(path) == _digest(sim.red_path)
    args = {
        "CALIBFLUX": True,
        "CALIBFLUX_CATALOG": str(sim.catalog_path),
        "CALIBFLUX_FWHM": None,
        "CALIBFLUX_METRIC": "chi2",
        "CALIBFLUX_SMOOTH": "false",
    }
    assert kx.apply_fluxcal(path, args) is True
    out = kx.open_red(path)
    assert kx.primary_header(out)["FLUXCAL"] is True
    ref = kx.flux_calibrate(sim.red, catalog=sim.catalog_path).compute()
    np.testing.assert_allclose(out["flux"].values, ref["flux"].values, rtol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(kx.CalibrationError, match="CALIBFLUX_CATALOG"):
        kx.apply_fluxcal(path, {"CALIBFLUX": True})


@pytest.mark.slow  # prepares the grid for a setup of its own
def test_demo_reports_accuracy(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    text = capsys.readouterr().out
    assert "median |Cal·T − 1|" in text
    assert (tmp_path / "demo" / "demored_fcal.fits").exists()


@pytest.mark.slow  # prepares the grid for a setup of its own
def test_someone_elses_exposure_through_the_cli(tmp_path):
    """Another setup (range, FWHM, DISPAXIS=2, RA in degrees), unseen throughput, shuffled
    catalogue with extra rows: calibrated by the command line to the same accuracy."""
    from kspec_xr.testing import accuracy_report

    sim = make_exposure(
        77,
        n_fiber=40,
        n_standard=6,
        n_pixel=3000,
        wave_range=(4000.0, 8800.0),
        fwhm=3.2,
        dispaxis=2,
        ra_unit="degrees",
        n_extra_catalog=20,
        directory=tmp_path,
        name="other",
    )
    out_path = tmp_path / "other_fcal.fits"
    assert (
        main(
            ["fluxcal", str(sim.red_path), "--catalog", str(sim.catalog_path), "-o", str(out_path)]
        )
        == 0
    )
    out = kx.open_red(out_path)
    assert kx.primary_header(out)["DISPAXIS"] == 2
    report = accuracy_report(out, sim.truth)
    assert report["cal_median_abs_dev"] < 0.012
    assert report["program_median_abs_dev"] < 0.015
    assert 0.8 < report["pull_std"] < 1.25
