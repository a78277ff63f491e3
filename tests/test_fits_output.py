"""Outputs every FITS tool accepts, and temporary files that never eat a live write.

- fitsverify finds nothing to say about a calibrated output (plain, gzip, float64);
- the units of every HDU are FITS units that astropy reads as the physical unit
  meant, checked against the simulation's true flux (not only the strings);
- ``.gz`` outputs are gzip files that ``open_red`` reads back;
- ``write_red(dtype=...)``: float32 in a scaled unit, the physical values back;
- ``sweep_stale_temps`` removes a dead writer's temporary file and nothing else;
- the QC plot's path is checked before any work and the plot written atomically.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy import units as u
from astropy.io import fits

import kspec_xr as kx
from kspec_xr._base.errors import KspecError, OutputError, OutputExistsError
from kspec_xr._base.paths import _temp_prefix, atomic_output, sweep_stale_temps
from kspec_xr._base.schema import FLUX_UNITS, FLUX_VARIANCE_UNITS
from kspec_xr.io._fits import _same_unit, _squared_units, unit_scale
from kspec_xr.qc import check_plot_path, plot_calibration

FLUX = u.erg / (u.s * u.cm**2 * u.AA)
FITSVERIFY = shutil.which("fitsverify")


@pytest.fixture(scope="module")
def sim(small_exposure):
    return small_exposure


@pytest.fixture(scope="module")
def calibrated(sim):
    return kx.flux_calibrate(sim.red, catalog=sim.catalog_path).compute()


@pytest.fixture(scope="module")
def written(calibrated, tmp_path_factory):
    """The calibrated exposure written plain (float32), gzip-compressed and as float64."""
    from kspec_xr.io.write import calibration_header

    folder = tmp_path_factory.mktemp("out")
    # described once: the writer's HISTORY lines carry the time, to the second
    described = calibration_header(calibrated)
    return {
        "plain": kx.write_red(described, folder / "fcal.fits"),
        "gzip": kx.write_red(described, folder / "fcal.fits.gz"),
        "float64": kx.write_red(described, folder / "fcal64.fits", dtype="float64"),
    }


def _dead_pid() -> int:
    """The pid of a process that has just ended."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


# --- 1. fitsverify ----------------------------------------------------------------------


@pytest.mark.skipif(FITSVERIFY is None, reason="fitsverify is not installed")
@pytest.mark.parametrize("kind", ["plain", "gzip", "float64"])
def test_fitsverify_finds_no_warning_and_no_error(written, kind):
    report = subprocess.run(
        [FITSVERIFY, str(written[kind])], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"Verification found (\d+) warning\(s\) and (\d+) error\(s\)", report)
    assert found is not None, report
    assert (int(found.group(1)), int(found.group(2))) == (0, 0), report


def _table_columns(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "f8": np.array([1.0, np.nan, np.inf, -0.0, 2.5])[:n], "f4": rng.normal(size=n).astype("f4"),
        "i2": np.arange(n, dtype="i2") - 2, "i4": np.arange(n, dtype="i4") * -7,
        "i8": np.arange(n, dtype="i8") * 10**12, "u1": np.arange(n, dtype="u1"),
        "u2": np.arange(n, dtype="u2") * 16000, "u4": np.arange(n, dtype="u4") * 10**9,
        "bool": np.arange(n) % 2 == 0, "text": np.array(["a", "bb", "", "dddd", "e e"])[:n],
        "bytes": np.array([b"x", b"", b"yz", b"q", b"r"])[:n], "vector": rng.normal(size=(n, 3)),
        "cube": rng.normal(size=(n, 2, 3)), "complex": rng.normal(size=n) + 1j,
        "ints": np.arange(4 * n, dtype="i4").reshape(n, 4),
    }  # fmt: skip


@pytest.mark.parametrize("n", [5, 0])
def test_tables_encoded_directly_are_the_bytes_astropy_writes(n, monkeypatch):
    from kspec_xr.io import _fits

    columns = [(name, values, unit, None) for name, values in _table_columns(n).items()
               for unit in (None,)] + [("wave", np.arange(n, dtype=float), "Angstrom", None)]  # fmt: skip
    for chosen in [[c] for c in columns] + [columns]:
        monkeypatch.setattr(_fits, "DIRECT_TABLES", False)
        header, data = _fits.encode_table(chosen, nrows=n)
        monkeypatch.setattr(_fits, "DIRECT_TABLES", True)
        assert (
            _fits._direct_table([_fits._column_for(c[0], c[1], c[2], {})[0] for c in chosen], n)
            is not None
        ), chosen[0][0]  # the direct path is the one taken
        direct_header, direct_data = _fits.encode_table(chosen, nrows=n)
        assert direct_header.tostring() == header.tostring(), chosen[0][0]
        assert direct_data == data, chosen[0][0]


def test_columns_reusing_a_read_header_are_the_bytes_astropy_writes(monkeypatch):
    from kspec_xr.io import _fits

    stored = fits.Header(
        [("TTYPE1", "n"), ("TFORM1", "J"), ("TNULL1", -99), ("TDISP1", "I6"),
         ("TUNIT1", "count"), ("TTYPE2", "name"), ("TFORM2", "20A"), ("TDISP2", "A20"),
         ("TTYPE3", "v"), ("TFORM3", "6E"), ("TDIM3", "(3,2)"), ("TTYPE4", "u"),
         ("TFORM4", "1I"), ("TZERO4", 32768)]
    )  # fmt: skip
    columns = [
        ("n", np.array([1, -99, 3], dtype=np.int32), "count", 1),
        ("name", np.array(["a", "bb", "ccc"]), None, 2),  # narrower than the stored 20A
        ("v", np.arange(18, dtype=np.float32).reshape(3, 2, 3), None, 3),
        ("u", np.array([0, 1, 65535], dtype=np.uint16), None, 4),
    ]
    monkeypatch.setattr(_fits, "DIRECT_TABLES", False)
    by_astropy = _fits.encode_table(columns, stored=stored)
    monkeypatch.setattr(_fits, "DIRECT_TABLES", True)
    direct = _fits.encode_table(columns, stored=stored)
    assert direct[0].tostring() == by_astropy[0].tostring()
    assert direct[1] == by_astropy[1]
    assert direct[0]["TFORM2"] == "20A" and direct[0]["TNULL1"] == -99


def test_a_written_file_is_the_same_with_direct_tables(calibrated, sim, tmp_path, monkeypatch):
    from kspec_xr.io import _fits
    from kspec_xr.io.write import calibration_header

    described = calibration_header(calibrated)
    for source, name in ((described, "fcal"), (sim.red, "raw")):
        monkeypatch.setattr(_fits, "DIRECT_TABLES", False)
        by_astropy = kx.write_red(source, tmp_path / f"{name}-astropy.fits").read_bytes()
        monkeypatch.setattr(_fits, "DIRECT_TABLES", True)
        direct = kx.write_red(source, tmp_path / f"{name}-direct.fits").read_bytes()
        assert direct == by_astropy, name
    with fits.open(tmp_path / "fcal-direct.fits") as hdul:
        assert sum(isinstance(h, fits.BinTableHDU) for h in hdul) >= 3


def test_long_strings_are_announced(written):
    with fits.open(written["plain"]) as hdul:
        for hdu in hdul:
            long_cards = [c for c in hdu.header.cards if len(c.image) > 80]
            if long_cards:
                assert hdu.header["LONGSTRN"] == "OGIP 1.0", hdu.name


# --- 2. units ---------------------------------------------------------------------------


def test_every_unit_written_is_a_fits_unit(written):
    with fits.open(written["plain"]) as hdul:
        assert u.Unit(hdul[0].header["BUNIT"], format="fits") == 1e-17 * FLUX
        assert u.Unit(hdul["VARIANCE"].header["BUNIT"], format="fits") == (1e-17 * FLUX) ** 2
        assert u.Unit(hdul["CALIBRATION"].header["BUNIT"], format="fits") == FLUX / u.ct
        assert (
            u.Unit(hdul["CALIBRATION_VARIANCE"].header["BUNIT"], format="fits")
            == (FLUX / u.ct) ** 2
        )
        for hdu in hdul:
            ours = "KXVAR" in hdu.header or "KXDIM" in hdu.header  # FIBRES keeps 2dfdr's
            for key, value in hdu.header.items():
                if key == "BUNIT" or (ours and key.startswith("TUNIT")):
                    u.Unit(value, format="fits")  # raises if FITS does not know it
    with fits.open(written["plain"]) as hdul:
        # every image HDU with data has its unit, but the dimensionless ones (ratios, counts
        # of stars, mask bits)
        unitless = {"THPUT", "MASK", "CALIBRATION_MASK", "CALIBRATION_NSTARS"}
        unitless |= {"CALIBRATION_RMS", "CALIBRATION_SCATTER"}
        for hdu in hdul:
            if hdu.is_image and hdu.header.get("NAXIS", 0) > 0 and hdu.name not in unitless:
                assert "BUNIT" in hdu.header, hdu.name
        assert hdul["WAVELA"].header["BUNIT"] == "Angstrom"
        assert hdul["SKY"].header["BUNIT"] == "count"
    with fits.open(written["float64"]) as hdul:
        assert hdul[0].header["BUNIT"] == FLUX_UNITS
        assert hdul["VARIANCE"].header["BUNIT"] == FLUX_VARIANCE_UNITS


def test_the_units_written_are_the_physical_ones(written, sim):
    """Astropy alone, from the file's BUNIT, recovers the simulation's true flux."""
    with fits.open(written["plain"]) as hdul:
        flux = (hdul[0].data * u.Unit(hdul[0].header["BUNIT"], format="fits")).to(FLUX)
    truth = sim.truth["flux"].values
    bright = np.median(np.nan_to_num(truth), axis=1) > 1e-16  # standards, bright targets
    clear = sim.truth["telluric"].values > 0.999
    assert bright.sum() >= 6
    ratio = flux.value[np.ix_(bright, clear)] / truth[np.ix_(bright, clear)]
    assert abs(np.nanmedian(ratio) - 1) < 0.01


def test_old_and_new_spellings_are_the_same_units():
    assert _same_unit("erg/cm2/s/A", FLUX_UNITS)
    assert _same_unit("(erg/cm2/s/A)2", FLUX_VARIANCE_UNITS)
    assert _same_unit("Counts", "count")
    assert _same_unit("erg/cm2/s/A/Counts", "erg/(s cm2 Angstrom count)")
    assert not _same_unit("erg/cm2/s/A", "erg/(s cm2 Angstrom count)")
    assert not _same_unit("10**-17 erg/(s cm2 Angstrom)", FLUX_UNITS)
    # FITS spellings square into FITS spellings; kspecdr's keep their old form
    assert _squared_units(FLUX_UNITS) == FLUX_VARIANCE_UNITS
    assert _squared_units("count") == "count2"
    assert _squared_units("Counts") == "Counts2"
    assert _squared_units("erg/cm2/s/A") == "(erg/cm2/s/A)2"
    assert unit_scale("10**-17 erg/(s cm2 Angstrom)") == (1e-17, FLUX_UNITS)
    assert unit_scale("1e-17 erg/(s cm2 Angstrom)") == (1e-17, FLUX_UNITS)
    assert unit_scale(FLUX_UNITS) == (1.0, FLUX_UNITS)


def test_an_unprocessed_file_keeps_its_spellings(sim, tmp_path):
    """Counts stay 'Counts', the VARIANCE without BUNIT stays without: the same file."""
    again = kx.write_red(kx.open_red(sim.red_path), tmp_path / "again.fits")
    assert again.read_bytes() == Path(sim.red_path).read_bytes()


def test_product_units_come_back_as_they_were(calibrated, written):
    back = kx.open_red(written["plain"])
    for name in ("calibration", "calibration_variance", "calibration_rms", "std_calibration"):
        assert back[name].attrs["units"] == calibrated[name].attrs["units"], name
    assert back["flux"].attrs["units"] == FLUX_UNITS
    assert back["variance"].attrs["units"] == FLUX_VARIANCE_UNITS


# --- 3. gzip ----------------------------------------------------------------------------


def test_gzip_output_is_gzip_and_reads_back(written, tmp_path):
    path = written["gzip"]
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    with gzip.open(path) as packed:
        assert packed.read() == written["plain"].read_bytes()  # the same FITS file inside
    assert path.stat().st_size < written["plain"].stat().st_size
    plain, back = kx.open_red(written["plain"]), kx.open_red(path)
    xr.testing.assert_identical(back.drop_attrs(), plain.drop_attrs())
    # deterministic: no name or time stamp in the gzip header
    again = kx.write_red(back, tmp_path / "again.fits.gz")
    assert again.read_bytes() == path.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- 4. dtype ---------------------------------------------------------------------------


def test_float32_output_returns_the_physical_values(calibrated, written):
    with fits.open(written["plain"]) as hdul:
        assert hdul[0].header["BITPIX"] == -32 and hdul["VARIANCE"].header["BITPIX"] == -32
        assert hdul["MASK"].header["BITPIX"] == 8  # bits 0-7 of the int32 mask
    back = kx.open_red(written["plain"])
    for name in ("flux", "variance"):
        assert back[name].dtype == np.float64
        np.testing.assert_allclose(
            back[name].values, calibrated[name].values, rtol=6e-8, equal_nan=True
        )
    assert back["mask"].dtype == calibrated["mask"].dtype
    np.testing.assert_array_equal(back["mask"].values, calibrated["mask"].values)
    # variances of 1e-34 and far below are kept (float32 alone stops at 1.2e-38)
    good = np.isfinite(calibrated["variance"].values) & (calibrated["variance"].values > 0)
    assert np.nanmedian(calibrated["variance"].values[good]) < 1e-30
    assert np.all(back["variance"].values[good] > 0)
    # the float32 file is the float64 one with flux and variance halved
    size32, size64 = written["plain"].stat().st_size, written["float64"].stat().st_size
    halved = calibrated["flux"].size * 4 * 2
    assert abs((size64 - size32) - halved) <= 2 * 2880


def test_tiny_variances_stay_positive_in_float32(calibrated, tmp_path):
    tiny = calibrated.assign(variance=calibrated["variance"] * 1e-8)  # ~1e-42 and below
    back = kx.open_red(kx.write_red(tiny, tmp_path / "tiny.fits"))
    good = np.isfinite(tiny["variance"].values) & (tiny["variance"].values > 0)
    assert np.nanmin(tiny["variance"].values[good]) < 1.2e-38
    np.testing.assert_allclose(
        back["variance"].values[good], tiny["variance"].values[good], rtol=6e-8
    )


def test_float64_output_is_exact_and_round_trips(calibrated, written, tmp_path):
    back = kx.open_red(written["float64"])
    for name in ("flux", "variance"):
        np.testing.assert_array_equal(back[name].values, calibrated[name].values)
    again = kx.write_red(back, tmp_path / "again64.fits", dtype=np.float64)
    assert again.read_bytes() == written["float64"].read_bytes()


def test_calibrated_float32_file_writes_back_byte_for_byte(written, tmp_path):
    again = kx.write_red(kx.open_red(written["plain"]), tmp_path / "again.fits")
    assert again.read_bytes() == written["plain"].read_bytes()
    lazy = kx.open_red(written["plain"], chunks={"fiber": 7})
    assert kx.write_red(lazy, tmp_path / "lazy.fits").read_bytes() == again.read_bytes()


@pytest.mark.parametrize("dtype", ["float16", "int32", "f8x", None, 32])
def test_bad_dtype_is_refused_before_writing(calibrated, tmp_path, dtype):
    with pytest.raises(KspecError, match="float32' or 'float64"):
        kx.write_red(calibrated, tmp_path / "bad.fits", dtype=dtype)
    assert not list(tmp_path.iterdir())


# --- 5. temporary files ------------------------------------------------------------------


def _temp(folder: Path, name: str, pid: int, tail: str = "abcd1234") -> Path:
    path = folder / (_temp_prefix(folder / name, pid) + f"{tail}.tmp")
    path.write_bytes(b"half a file")
    return path


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_sweep_removes_a_dead_writers_temp_and_keeps_a_live_ones(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_tmp = _temp(tmp_path, "out.fits", live.pid, "livelive")
        own_tmp = _temp(tmp_path, "out.fits", os.getpid(), "ownownow")
        dead_tmp = _temp(tmp_path, "out.fits", _dead_pid(), "deaddead")
        removed = sweep_stale_temps(tmp_path / "out.fits")
        assert removed == [dead_tmp]
        assert live_tmp.exists() and own_tmp.exists() and not dead_tmp.exists()
        # a day old: stale whoever holds it
        _age(live_tmp, 2 * 86400)
        assert sweep_stale_temps(tmp_path / "out.fits") == [live_tmp]
    finally:
        live.kill()
        live.wait()


def test_sweep_matches_only_its_own_name(tmp_path):
    dead = _dead_pid()
    others = [
        _temp(tmp_path, "outXfits", dead),  # '.' is not a wildcard
        _temp(tmp_path, "out.fits.gz", dead),  # another output
        _temp(tmp_path, "a.fits", dead),  # what a*.fits would glob
        _temp(tmp_path, "b.fits", dead),  # what [ab].fits would glob
    ]
    probe = tmp_path / ".out.fits.probe.x1y2z3"  # check_writable's, no .tmp: not ours
    probe.write_bytes(b"")
    for name in ("out.fits", "a*.fits", "[ab].fits", "?.fits"):
        mine = _temp(tmp_path, name, dead)
        assert sweep_stale_temps(tmp_path / name) == [mine], name
    assert all(p.exists() for p in others) and probe.exists()


def test_sweep_keeps_fresh_ownerless_temps_and_other_hosts(tmp_path):
    legacy = tmp_path / ".out.fits.k1ll3d_x.tmp"  # kspec_xr before pids: no owner
    legacy.write_bytes(b"")
    elsewhere = tmp_path / f".out.fits.{_dead_pid()}-00000000.abcd1234.tmp"  # another host
    elsewhere.write_bytes(b"")
    assert sweep_stale_temps(tmp_path / "out.fits") == []
    _age(legacy, 2 * 86400)
    _age(elsewhere, 2 * 86400)
    assert sorted(sweep_stale_temps(tmp_path / "out.fits")) == sorted([legacy, elsewhere])


def test_atomic_output_names_its_owner_and_sweeps_first(tmp_path):
    stale = _temp(tmp_path, "x.csv", _dead_pid())
    with atomic_output(tmp_path / "x.csv") as tmp:
        assert tmp.name.startswith(f".x.csv.{os.getpid()}-") and tmp.name.endswith(".tmp")
        assert not stale.exists()
        tmp.write_text("done")
    assert (tmp_path / "x.csv").read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]


def test_write_red_cleans_a_killed_writers_temp(calibrated, tmp_path):
    stale = _temp(tmp_path, "fcal.fits", _dead_pid())
    kx.write_red(calibrated, tmp_path / "fcal.fits")
    assert [p.name for p in tmp_path.iterdir()] == ["fcal.fits"] and not stale.exists()


# --- 6. the QC plot ---------------------------------------------------------------------


def test_check_plot_path(tmp_path):
    assert check_plot_path(tmp_path / "qc.png") == tmp_path / "qc.png"
    assert check_plot_path(str(tmp_path / "qc.PDF")) == tmp_path / "qc.PDF"
    with pytest.raises(OutputError, match=r"qc\.xyz.*\.xyz is not a format.*\.png"):
        check_plot_path(tmp_path / "qc.xyz")
    with pytest.raises(OutputError, match="no extension"):
        check_plot_path(tmp_path / "qc")
    with pytest.raises(OutputError, match="does not exist"):
        check_plot_path(tmp_path / "missing" / "qc.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        check_plot_path(tmp_path / "folder.png")
    (tmp_path / "old.png").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"old\.png exists.*overwrite"):
        check_plot_path(tmp_path / "old.png")
    assert check_plot_path(tmp_path / "old.png", overwrite=True) == tmp_path / "old.png"
    with pytest.raises(TypeError):
        check_plot_path(42)  # type: ignore[arg-type]


def test_plot_path_is_checked_before_any_work(tmp_path):
    nothing = xr.Dataset()  # drawing it would fail with a KeyError
    with pytest.raises(OutputError, match="format"):
        plot_calibration(nothing, tmp_path / "qc.xyz")
    (tmp_path / "qc.png").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        plot_calibration(nothing, tmp_path / "qc.png")
    assert (tmp_path / "qc.png").read_bytes() == b"old"


def test_plot_is_written_atomically(calibrated, tmp_path, monkeypatch):
    path = tmp_path / "qc.png"
    plot_calibration(calibrated, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_calibration(calibrated, tmp_path / "qc.pdf")
    assert (tmp_path / "qc.pdf").read_bytes()[:5] == b"%PDF-"
    before = path.read_bytes()
    from matplotlib.figure import Figure

    def broken(self, fname, **kwargs):
        Path(fname).write_bytes(b"half a plot")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_calibration(calibrated, path, overwrite=True)
    assert path.read_bytes() == before  # the old plot stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qc.pdf", "qc.png"]
