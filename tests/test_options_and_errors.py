"""Options checked before any work, one-line errors, and outputs that cannot be written.

Issue 11: ``sigma=-3`` and ``smooth="no"`` used to be accepted, ``--debug``
worked only before the subcommand, unexpected exceptions printed tracebacks,
and an unwritable output folder was found only after the calibration ran.
"""

import hashlib
import os

import pytest

import kspec_xr as kx
from kspec_xr import pipeline
from kspec_xr._base.errors import OptionError, OutputError
from kspec_xr._base.paths import check_writable
from kspec_xr.cli import main
from kspec_xr.testing import make_exposure


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return make_exposure(
        31, n_fiber=16, n_standard=4, n_pixel=800, directory=tmp_path_factory.mktemp("sim31")
    )


@pytest.fixture
def no_work(monkeypatch):
    """Make any template fit fail loudly: the checks must come before it."""

    def fail(*args, **kwargs):
        raise AssertionError("the calibration started before the options were checked")

    monkeypatch.setattr(pipeline, "fit_at_resolution", fail)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"sigma": -3}, "sigma must be at least 1"),
        ({"sigma": float("nan")}, "sigma must be a finite number"),
        ({"smooth": "no"}, "smooth must be True or False"),
        ({"min_stars": 0}, "min_stars must be a whole number"),
        ({"min_stars": 2.5}, "min_stars must be a whole number"),
        ({"metric": "l1"}, "metric must be one of 'chi2', 'huber'"),
        ({"match": "name"}, "match must be one of"),
        ({"radius": -2}, "radius must be greater than 0"),
        ({"redden": "yes"}, "redden must be True or False"),
        ({"gating": {"zp_limit": -1}}, "zp_limit must be at least 0"),
        ({"gating": {"min_valid_fraction": 2}}, "min_valid_fraction must be between 0 and 1"),
        ({"gating": {"zp": 1}}, "unknown gating option"),
    ],
)
def test_bad_options_are_refused_before_any_work(sim, no_work, option, message):
    with pytest.raises(OptionError, match=message):
        kx.flux_calibrate(sim.red, catalog=sim.catalog_path, **option)


def test_option_checks_normalise_what_they_accept(sim):
    checked = pipeline.check_options(metric="CHI2", match=" Order", sigma=3, smooth=False)
    assert checked == {"metric": "chi2", "match": "order", "sigma": 3.0, "smooth": False}
    # the stages used on their own check the same way
    with pytest.raises(OptionError, match="sigma must be at least 1"):
        kx.combine_calibrations(sim.red, sigma=0.5)


def test_batch_checks_options_before_starting_a_cluster(sim, tmp_path):
    # no cluster is started (that would take seconds and print); the error comes first
    with pytest.raises(OptionError, match="sigma must be at least 1"):
        kx.calibrate_many([sim.red_path], tmp_path, catalog=sim.catalog_path, sigma=-3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("no", False), ("yes", True), ("0", False), ("1", True), (True, True), ("", False)],
)
def test_pipeline_switches(value, expected):
    assert pipeline._switch("CALIBFLUX_SMOOTH", value) is expected


def test_pipeline_arguments_that_are_not_switches_or_numbers_are_refused(sim):
    with pytest.raises(OptionError, match="CALIBFLUX_SMOOTH = 'maybe'"):
        pipeline._switch("CALIBFLUX_SMOOTH", "maybe")
    with pytest.raises(OptionError, match="CALIBFLUX_FWHM = 'abc'"):
        kx.apply_fluxcal(
            sim.red_path, {"CALIBFLUX": "T", "CALIBFLUX_CATALOG": "x", "CALIBFLUX_FWHM": "abc"}
        )
    assert pipeline._fwhm_argument("Measure") == "measure"
    assert pipeline._fwhm_argument("0") is None


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_output_that_is_the_input_is_refused_in_every_spelling(sim, tmp_path, capsys):
    before = _digest(sim.red_path)
    link = tmp_path / "link.fits"
    link.symlink_to(sim.red_path)
    hard = tmp_path / "hard.fits"
    os.link(sim.red_path, hard)
    here = os.getcwd()
    os.chdir(sim.red_path.parent)
    try:
        spellings = [f"./{sim.red_path.name}", str(link), str(hard)]
        for output in spellings:
            code = main(
                ["fluxcal", sim.red_path.name, "-o", output, "--overwrite"]
                + ["--catalog", str(sim.catalog_path)]
            )
            err = capsys.readouterr().err.strip()
            assert code == 2 and "is the input" in err and "\n" not in err
    finally:
        os.chdir(here)
    assert _digest(sim.red_path) == before


def test_an_unwritable_output_folder_is_refused_before_any_work(sim, no_work, tmp_path):
    # /proc takes no new files, even for root (a read-only file system behaves the same)
    with pytest.raises(OutputError, match="does not take new files"):
        kx.calibrate_file(sim.red_path, "/proc/out.fits", catalog=sim.catalog_path)
    with pytest.raises(OutputError, match="does not exist"):
        kx.calibrate_file(sim.red_path, tmp_path / "no" / "out.fits", catalog=sim.catalog_path)
    with pytest.raises(OutputError, match="it is a folder"):
        kx.calibrate_file(sim.red_path, tmp_path, catalog=sim.catalog_path, overwrite=True)
    with pytest.raises(OutputError, match="MB free"):
        check_writable(tmp_path / "out.fits", needed=10**18)
    assert list(tmp_path.iterdir()) == []  # the probe left nothing behind


def test_debug_is_accepted_anywhere_and_shows_the_traceback(sim, tmp_path, capsys):
    args = ["fluxcal", str(sim.red_path), "-o", str(tmp_path / "o.fits")]
    bad = [*args, "--catalog", str(tmp_path / "missing.csv")]
    assert main(bad) == 2
    assert "missing.csv" in capsys.readouterr().err
    with pytest.raises(kx.KspecError, match="missing.csv"):
        main([*bad, "--debug"])  # after the subcommand
    with pytest.raises(kx.KspecError, match="missing.csv"):
        main(["--debug", *bad])


def test_choices_are_case_insensitive_on_the_command_line(sim, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(input, output, **options):
        seen.update(options)
        raise kx.CalibrationError("stop here")

    monkeypatch.setattr(pipeline, "calibrate_file", fake)
    args = ["fluxcal", str(sim.red_path), "-o", str(tmp_path / "o.fits")]
    code = main([*args, "--catalog", str(sim.catalog_path), "--metric", "CHI2", "--match", "Order"])
    assert code == 2 and "stop here" in capsys.readouterr().err
    assert seen["metric"] == "chi2" and seen["match"] == "order"


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (RuntimeError("boom\nsecond line"), 1, "internal error: RuntimeError: boom second line"),
        (OSError(28, "No space left on device", "/data/out.fits"), 2, "No space left on device"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_unexpected_errors_are_one_line(sim, tmp_path, monkeypatch, capsys, error, code, text):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline, "calibrate_file", broken)
    args = ["fluxcal", str(sim.red_path), "-o", str(tmp_path / "o.fits")]
    assert main([*args, "--catalog", str(sim.catalog_path)]) == code
    err = capsys.readouterr().err.strip()
    assert text in err and "\n" not in err and "Traceback" not in err
    if code == 1:
        assert "--debug" in err
        with pytest.raises(RuntimeError):
            main([*args, "--catalog", str(sim.catalog_path), "--debug"])


@pytest.mark.parametrize("value", [0.0, -5.0, float("nan")])
def test_standards_without_counts_are_never_reported_as_calibrated(sim, tmp_path, value):
    import numpy as np
    from astropy.io import fits

    bad = tmp_path / "bad.fits"
    with fits.open(sim.red_path) as hdus:
        types = np.char.strip(hdus["FIBRES"].data["TYPE"].astype(str))
        hdus[0].data[types == "C"] = value
        hdus.writeto(bad)
    out = tmp_path / "out.fits"
    with pytest.raises(kx.CalibrationError, match="no standard star could be used"):
        kx.calibrate_file(bad, out, catalog=sim.catalog_path)
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


@pytest.mark.parametrize(("name", "message"), [("qc.xyz", "xyz"), ("no/qc.png", "does not exist")])
def test_a_bad_qc_path_is_refused_before_any_work(
    sim, tmp_path, monkeypatch, capsys, name, message
):
    monkeypatch.setattr(pipeline, "calibrate_file", lambda *a, **k: pytest.fail("calibrated"))
    out = tmp_path / "o.fits"
    args = ["fluxcal", str(sim.red_path), "-o", str(out), "--catalog", str(sim.catalog_path)]
    assert main([*args, "--qc-plot", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_batch_refuses_an_unusable_catalogue_before_starting(sim, tmp_path):
    out_dir = tmp_path / "out"
    with pytest.raises(kx.CatalogError, match="missing.csv' does not exist"):
        kx.calibrate_many([sim.red_path], out_dir, catalog=tmp_path / "missing.csv")
    no_radec = tmp_path / "no_radec.csv"
    no_radec.write_text("objid,g,dg\n1,15.0,0.01\n")
    with pytest.raises(kx.CatalogError, match="no_radec.csv"):
        kx.calibrate_many([sim.red_path], out_dir, catalog=no_radec)
    assert not out_dir.exists()  # nothing made, no cluster started


def test_batch_with_a_catalogue_per_exposure_fails_only_the_one_it_cannot_use(
    sim, tmp_path, monkeypatch
):
    from kspec_xr import batch

    monkeypatch.setattr(batch, "_connect", lambda *a: pytest.fail("a cluster was started"))
    summary = kx.calibrate_many(
        [sim.red_path], tmp_path / "out", catalog={sim.red_path.name: tmp_path / "gone.csv"},
        progress=False,
    )  # fmt: skip
    assert list(summary["status"]) == ["failed"]
    assert "gone.csv' does not exist" in summary["error"].iloc[0]
