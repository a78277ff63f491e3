"""Bad standards are rejected with their reason; the rest calibrate as if they were absent.

Every rule of :func:`kspec_xr.gate_standards` gets an exposure that only that
rule can catch, with a known truth (``make_exposure``'s ``bad_standards``).
"""

import numpy as np
import pytest

import kspec_xr as kx
from kspec_xr._base.errors import CalibrationError
from kspec_xr._base.schema import StandardStatus
from kspec_xr.cli import main
from kspec_xr.testing import accuracy_report, make_exposure

SIM = {"n_fiber": 40, "n_pixel": 2048}


@pytest.fixture(scope="module")
def grid():
    return kx.open_bosz()


@pytest.fixture(scope="module")
def prepared(grid):
    wave = np.linspace(3700.0, 9300.0, SIM["n_pixel"])  # make_exposure's grid
    return kx.prepare_templates(grid, wave, 2.5)


def _sim(tmp_path_factory, seed, **kwargs):
    return make_exposure(seed, directory=tmp_path_factory.mktemp(f"sim{seed}"), **SIM, **kwargs)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _sim(tmp_path_factory, 41, n_standard=7)


def _calibrate(ds, catalog, prepared, **options):
    return kx.flux_calibrate(ds, catalog=catalog, templates=prepared, **options).compute()


def _status(out):
    return [StandardStatus(int(s)) for s in out["standard_status"].values]


def _with_counts(sim, k, factor):
    """The exposure with standard k's counts (and variance) multiplied by ``factor(λ)``."""
    fiber = int(np.flatnonzero(sim.red["fiber_type"].values == "C")[k])
    flux = sim.red["flux"].values.astype(float).copy()
    var = sim.red["variance"].values.astype(float).copy()
    f = factor(sim.red["wavelength"].values)
    flux[fiber] *= f
    var[fiber] *= f**2
    return sim.red.assign(
        flux=(sim.red["flux"].dims, flux, sim.red["flux"].attrs),
        variance=(sim.red["variance"].dims, var, sim.red["variance"].attrs),
    )


@pytest.fixture(scope="module")
def clean_out(clean, prepared):
    return _calibrate(clean.red, clean.catalog_path, prepared)


def test_a_clean_exposure_rejects_none(clean_out, clean):
    assert set(_status(clean_out)) == {StandardStatus.OK}
    assert np.all(clean_out["standard_reason"].values == "")
    report = accuracy_report(clean_out, clean.truth)
    assert report["cal_median_abs_dev"] < 0.01
    assert 0.8 < report["cal_pull_std"] < 1.25


@pytest.mark.parametrize(
    ("spoil", "status", "words", "zero_point"),
    [
        # the zero point is 2.5 log10(Cal_star / Cal_median): a catalogue 0.8 mag too
        # faint scales the model down, so that star's calibration is 0.8 mag low
        (("photometry", 0.8), {StandardStatus.ZERO_POINT}, "zero point -0.7", -0.8),
        (("photometry", -0.5), {StandardStatus.ZERO_POINT}, "zero point +0.", 0.5),
        (("counts", 50.0), {StandardStatus.ZERO_POINT}, "zero point -4.2", -4.25),
        (
            ("no_star",),
            {StandardStatus.FAINT, StandardStatus.NO_SIGNAL},
            "pixel",  # "median S/N … per pixel" or "… of the pixels valid …"
            None,
        ),
        (("dead",), {StandardStatus.NO_SIGNAL}, "0 % of the pixels valid", None),
    ],
)
def test_a_bad_standard_is_rejected_with_its_reason(
    tmp_path_factory, prepared, spoil, status, words, zero_point
):
    sim = _sim(tmp_path_factory, 41, n_standard=7, bad_standards={3: spoil})
    out = _calibrate(sim.red, sim.catalog_path, prepared)
    got = _status(out)
    assert got[3] in status
    assert [s for k, s in enumerate(got) if k != 3] == [StandardStatus.OK] * 6
    reason = str(out["standard_reason"].values[3])
    assert words in reason, reason
    if zero_point is not None:
        assert float(out["std_zero_point"].values[3]) == pytest.approx(zero_point, abs=0.05)
    report = accuracy_report(out, sim.truth)
    assert report["cal_median_abs_dev"] < 0.012
    assert report["program_median_abs_dev"] < 0.015


def test_the_others_calibrate_as_if_the_bad_ones_were_absent(tmp_path_factory, prepared):
    sim = _sim(
        tmp_path_factory, 42, n_standard=7, bad_standards={1: ("no_star",), 4: ("counts", 50.0)}
    )
    out = _calibrate(sim.red, sim.catalog_path, prepared)
    assert [k for k, s in enumerate(_status(out)) if s] == [1, 4]
    types = sim.red["fiber_type"].values.copy()
    types[np.flatnonzero(types == "C")[[1, 4]]] = "P"
    without = sim.red.assign_coords(fiber_type=("fiber", types, sim.red["fiber_type"].attrs))
    ref = _calibrate(without, sim.catalog_path, prepared)
    good = (out["calibration_mask"].values == 0) & (ref["calibration_mask"].values == 0)
    ratio = out["calibration"].values[good] / ref["calibration"].values[good]
    assert np.median(np.abs(ratio - 1)) < 0.003


def test_photometry_that_no_template_matches_is_rejected(clean, prepared, tmp_path):
    cat = clean.catalog.copy()
    row = int(clean.truth["catalog_row"].values[5])
    cat.loc[row, "r"] += 0.5  # one band off: g-r too red, r-i too blue, no Teff fits both
    path = tmp_path / "colours.csv"
    cat.to_csv(path, index=False)
    out = _calibrate(clean.red, path, prepared)
    assert _status(out)[5] == StandardStatus.PHOTOMETRY
    assert "photometric residuals" in str(out["standard_reason"].values[5])
    assert float(out["std_phot_rms"].values[5]) > 0.1
    assert np.all(out["std_phot_rms"].values[[0, 1, 2, 3, 4, 6]] < 0.05)


def test_a_fit_far_worse_than_the_others_is_rejected(clean, prepared):
    # a ripple no stellar template has: the fit's chi2 rises, level and tilt do not change
    ds = _with_counts(clean, 2, lambda lam: 1.0 + 0.25 * np.sin(2 * np.pi * lam / 9.0))
    out = _calibrate(ds, clean.catalog_path, prepared)
    assert _status(out)[2] == StandardStatus.POOR_FIT
    assert float(out["std_chi2_ratio"].values[2]) > 5
    assert "template fit" in str(out["standard_reason"].values[2])


def test_an_extreme_tilt_is_rejected_a_mild_one_is_not(clean, prepared):
    def tilted(mag):  # red-minus-blue difference of `mag` in 2.5 log10(Cal), level kept
        return lambda lam: 10 ** (0.4 * mag * (lam - lam.mean()) / np.ptp(lam))

    steep = _calibrate(_with_counts(clean, 6, tilted(0.5)), clean.catalog_path, prepared)
    assert _status(steep)[6] == StandardStatus.SHAPE
    assert abs(float(steep["std_tilt"].values[6])) > 0.4
    # beyond 4 robust σ of these clean stars, but under 0.2 mag: real tilts must not cost stars
    mild = _calibrate(_with_counts(clean, 6, tilted(0.15)), clean.catalog_path, prepared)
    sigma = float(np.median(np.abs(mild["std_tilt"].values)))
    assert abs(float(mild["std_tilt"].values[6])) > 4 * 1.48 * sigma
    assert _status(mild)[6] == StandardStatus.OK


def test_a_small_zero_point_offset_is_kept_and_does_not_pull(clean, prepared, clean_out, tmp_path):
    cat = clean.catalog.copy()
    row = int(clean.truth["catalog_row"].values[0])
    for band in ("Gaia", "BP", "RP", "g", "r", "i", "z"):
        cat.loc[row, band] += 0.1
    path = tmp_path / "offset.csv"
    cat.to_csv(path, index=False)
    out = _calibrate(clean.red, path, prepared)
    assert set(_status(out)) == {StandardStatus.OK}
    good = out["calibration_mask"].values == 0
    ratio = out["calibration"].values[good] / clean_out["calibration"].values[good]
    # the weights follow each star's S/N, not 1/Cal²: a 0.1 mag star moves the median little
    assert abs(np.median(ratio) - 1) < 0.004


def test_relative_rules_never_reject_every_star(tmp_path_factory, prepared):
    sim = _sim(
        tmp_path_factory,
        43,
        n_standard=3,
        bad_standards={0: ("photometry", 0.5), 2: ("photometry", -0.5)},
    )
    out = _calibrate(sim.red, sim.catalog_path, prepared)
    status = _status(out)
    assert status.count(StandardStatus.OK) >= 1
    assert status[1] == StandardStatus.OK  # the median star


def test_counts_and_reasons_agree_everywhere(tmp_path_factory, prepared, tmp_path, capsys):
    sim = _sim(tmp_path_factory, 44, n_standard=5, bad_standards={2: ("photometry", 0.8)})
    out_path = tmp_path / "out.fits"
    code = main(
        ["fluxcal", str(sim.red_path), "--catalog", str(sim.catalog_path), "-o", str(out_path)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "4/5 standards used, 1 rejected" in printed
    assert "rejected standard 2" in printed and "zero point -0.79" in printed
    back = kx.open_red(out_path)
    header = kx.primary_header(back)
    assert header["FCALNSTR"] == 4 and header["FCALNREJ"] == 1
    history = "\n".join(str(h) for h in header["HISTORY"])
    assert history.count("not used: zero point") == 1
    assert "4/5 standards used, 1 rejected" in kx.qc.standards_table(back)
    np.testing.assert_array_equal(back["standard_status"].values, [0, 0, 12, 0, 0])


def test_one_or_two_standards_say_so(tmp_path_factory, prepared, tmp_path):
    sim = _sim(tmp_path_factory, 45, n_standard=2)
    out = _calibrate(sim.red, sim.catalog_path, prepared)
    header = kx.primary_header(kx.open_red(kx.write_red(out, tmp_path / "two.fits")))
    assert header["FCALNSTR"] == 2
    assert header["FCALWARN"].startswith("only 2 standards")
    assert "FCAL warning" in "\n".join(str(h) for h in header["HISTORY"])


def test_nothing_usable_is_refused(tmp_path_factory, prepared, tmp_path):
    spoil = {k: ("no_star",) for k in range(4)}
    sim = _sim(tmp_path_factory, 46, n_standard=4, bad_standards=spoil)
    out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=prepared)
    with pytest.raises(CalibrationError, match="no standard star could be used.*no star"):
        kx.write_red(out, tmp_path / "none.fits")
    assert not (tmp_path / "none.fits").exists()


def test_gating_options_are_checked_and_used(clean, prepared):
    with pytest.raises(TypeError, match="unknown gating option"):
        kx.flux_calibrate(
            clean.red, catalog=clean.catalog_path, templates=prepared, gating={"x": 1}
        )
    ds = (
        clean.red.pipe(kx.select_standards)
        .pipe(kx.associate_catalog, clean.catalog_path)
        .pipe(kx.fit_standards, prepared)
        .pipe(kx.scale_to_photometry)
        .pipe(kx.star_calibrations)
    )
    with pytest.raises(ValueError, match="zp_limit must be at least 0"):
        kx.gate_standards(ds, zp_limit=-1)
    strict = kx.gate_standards(ds, min_snr=1e6).compute()
    assert set(_status(strict)) == {StandardStatus.FAINT}
    assert strict.attrs["gate_min_snr"] == 1e6
