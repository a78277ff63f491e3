"""Catalogue faults (issue 11): each one costs at most its own row, never the calibration.

A fault-injection pass found that one unreadable RA cell, a sentinel magnitude,
a repeated header, a BOM or a FIFO could change or stop a whole calibration.
Every test here corrupts a copy of a simulated exposure's catalogue and checks
the outcome against the clean catalogue's (and the clean one's against the
simulation's true throughput).
"""

from __future__ import annotations

import gzip
import os
import threading
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import kspec_xr as kx
from kspec_xr._base.bandmap import DEFAULT_ERROR
from kspec_xr._base.errors import CatalogError, KspecWarning
from kspec_xr._base.schema import StandardStatus
from kspec_xr.io.catalog import REFCAT2_COLUMNS, check_catalog
from kspec_xr.kernels.sky import nearest_on_sky
from kspec_xr.stages.associate import _nearest

# --------------------------------------------------------------------------
# Fixtures: one exposure, its clean calibration, and ways to spoil its catalogue
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(small_exposure):
    return small_exposure


@pytest.fixture(scope="module")
def clean(sim):
    return kx.flux_calibrate(sim.red, catalog=sim.catalog_path).compute()


@pytest.fixture(scope="module")
def clean_catalog(sim):
    return kx.read_catalog(sim.catalog_path)


def _table(sim) -> tuple[list[str], list[list[str]]]:
    """Header and data rows of the simulated catalogue, as the text cells of its file."""
    lines = sim.catalog_path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


def _write(path, header, rows, *, newline="\n") -> os.PathLike:
    path.write_text(newline.join([",".join(header)] + [",".join(r) for r in rows]) + newline)
    return path


def _spoil(sim, path, cells: dict[tuple[int, str], str]):
    """A copy of the catalogue with ``{(data row, column): text}`` replaced (rows from 0)."""
    header, rows = _table(sim)
    for (row, column), text in cells.items():
        rows[row][header.index(column)] = text
    return _write(path, header, rows)


def _field_star(sim) -> int:
    """A catalogue row no fibre observed (0-based data row)."""
    return next(r for r in range(len(sim.catalog)) if r not in sim.truth["catalog_row"].values)


def _calibrate(sim, catalog, **kwargs):
    return kx.flux_calibrate(sim.red, catalog=catalog, **kwargs).compute()


def _same(out, ref, *, drop=()):
    xr.testing.assert_identical(
        out.drop_vars(list(drop)).drop_attrs(), ref.drop_vars(list(drop)).drop_attrs()
    )


def _kspec_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, KspecWarning)]


def test_the_clean_calibration_is_the_true_one(sim, clean):
    # the reference the fault tests compare with: the simulation's throughput, recovered
    ok = clean["calibration_mask"].values == 0
    ratio = clean["calibration"].values[ok] / sim.truth["calibration"].values[ok]
    assert abs(np.median(ratio) - 1) < 0.01
    assert np.all(clean["standard_status"].values == StandardStatus.OK)


# --------------------------------------------------------------------------
# 1. A bad RA/Dec cell drops its row, with one warning, and nothing else
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "text"), [("RA", ""), ("RA", "abc"), ("Dec", "nan"), ("Dec", "1.2.3")]
)
def test_a_bad_position_of_a_field_star_changes_no_calibration(sim, clean, tmp_path, column, text):
    row = _field_star(sim)
    path = _spoil(sim, tmp_path / "spoilt.csv", {(row, column): text})
    with pytest.warns(KspecWarning) as record:
        out = _calibrate(sim, path)
    messages = _kspec_warnings(record)
    assert len(messages) == 1, messages
    # data rows count from 1 after the header; the header is line 1
    assert (
        f"catalogue file '{path}': 1 row(s) (data row {row + 1}; line {row + 2}) have a blank "
        f"or unreadable position ({column!r} in data row {row + 1} (line {row + 2}))"
    ) in messages[0]
    _same(out, clean)
    np.testing.assert_array_equal(out["catalog_row"].values, sim.truth["catalog_row"].values)


def test_a_bad_position_of_a_standard_costs_that_standard_only(sim, clean, tmp_path):
    k = 2
    row = int(sim.truth["catalog_row"].values[k])
    field = _field_star(sim)
    path = _spoil(sim, tmp_path / "spoilt.csv", {(row, "Dec"): "n/a", (field, "RA"): ""})
    with pytest.warns(KspecWarning) as record:
        out = _calibrate(sim, path)
    (message,) = _kspec_warnings(record)
    first, second = sorted([row, field])
    assert f"2 row(s) (data rows {first + 1}, {second + 1}; lines {first + 2}, {second + 2})" in (
        message
    )
    assert f"'RA' in data row {field + 1} (line {field + 2})" in message
    assert f"'Dec' in data row {row + 1} (line {row + 2})" in message
    status = out["standard_status"].values
    assert status[k] == StandardStatus.NO_MATCH
    others = np.flatnonzero(np.arange(status.size) != k)
    assert np.all(status[others] == StandardStatus.OK)
    for name in ("catalog_row", "catalog_objid", "std_mag", "std_mag_err"):  # the same stars
        np.testing.assert_array_equal(
            out[name].isel(standard=others).values, clean[name].isel(standard=others).values
        )
    # their calibrations move only through what the stars share (e.g. the measured FWHM)
    np.testing.assert_allclose(
        out["std_calibration"].isel(standard=others).values,
        clean["std_calibration"].isel(standard=others).values,
        rtol=5e-3,
    )
    ok = out["calibration_mask"].values == 0
    ratio = out["calibration"].values[ok] / sim.truth["calibration"].values[ok]
    assert abs(np.median(ratio) - 1) < 0.01  # five standards still give the true throughput


def test_one_junk_cell_does_not_change_how_a_position_column_is_read(tmp_path):
    # an "h", "m" or "s" in one cell used to switch the whole column to sexagesimal hours
    path = tmp_path / "junk.csv"
    path.write_text(
        "RA,Dec,g,dg\n150.1,2.2,17,0.01\nmissing,2.3,17,0.01\n150.3,\u22122.4,17,0.01\n"
        "10:00:00,-00:30:00,17,0.01\n10h00m36s,+30 15 00,17,0.01\n"
    )
    with pytest.warns(KspecWarning, match=r"\(data row 2; line 3\).*'RA' in data row 2"):
        cat = kx.read_catalog(path)
    np.testing.assert_allclose(cat.ra, [150.1, np.nan, 150.3, 150.0, 150.15])
    np.testing.assert_allclose(cat.dec, [2.2, 2.3, -2.4, -0.5, 30.25])  # U+2212 is a minus


def test_a_table_names_its_rows_from_zero(sim):
    cat = sim.catalog.astype({"RA": object})
    cat.loc[3, "RA"] = "?"
    with pytest.warns(KspecWarning, match=r"1 row\(s\) \(3\) .*'RA' in row 3 \(0-based\)"):
        kx.read_catalog(cat)


def test_an_out_of_range_position_names_the_line(sim, tmp_path):
    path = _spoil(sim, tmp_path / "far.csv", {(4, "Dec"): "-95"})
    with pytest.raises(CatalogError, match=r"column 'Dec' has -95\.0 in data row 5 \(line 6\)"):
        kx.read_catalog(path)


# --------------------------------------------------------------------------
# 2. Sentinel, out-of-range and zero magnitudes are missing; bad errors are no weights
# --------------------------------------------------------------------------

SENTINELS = ["-999", "99", "99.99", "0.0", "45", "-6", "-9999", "99.999"]


def test_sentinel_magnitudes_are_missing_through_a_band_map(tmp_path):
    mags = ["17.2", *SENTINELS, "17.5", "17.6", "17.7"]
    errs = ["0.01"] * (1 + len(SENTINELS)) + ["0", "-0.02", ""]
    n = len(mags)
    path = tmp_path / "des.csv"
    lines = ["RA,DEC,MAG_AUTO_G,MAGERR_AUTO_G"]
    lines += [
        f"{10 + 0.01 * k},-40,{m},{e}" for k, (m, e) in enumerate(zip(mags, errs, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")
    cat = kx.read_catalog(path, bands="des")
    g = cat.sel(band="decamDR1-g")
    expected = [17.2] + [np.nan] * len(SENTINELS) + [17.5, 17.6, 17.7]
    np.testing.assert_allclose(g.mag, expected)
    np.testing.assert_allclose(g.mag_err, [0.01] + [np.nan] * len(SENTINELS) + [DEFAULT_ERROR] * 3)
    assert g.mag_err_default.values.tolist() == [False] * (n - 3) + [True] * 3


def test_sentinel_magnitudes_and_zero_errors_in_refcat2(tmp_path):
    header = ["RA", "Dec", "Gaia", "dGaia", "g", "dg", "K", "dK"]
    rows = [["150", "2", "15", "0.002", "16", "0.01", "14", "0.02"]]
    for k, sentinel in enumerate(SENTINELS):  # every band of a row gets the sentinel
        rows.append(["150", f"{2 + 0.01 * (k + 1)}", sentinel, "0.002", sentinel, "0.01"] * 1
                    + [sentinel, "0.02"])  # fmt: skip
    rows.append(["150", "2.5", "15", "0", "16", "-0.01", "14", ""])  # no usable error
    path = _write(tmp_path / "refcat2.csv", header, rows)
    cat = kx.read_catalog(path)
    assert np.isfinite(cat.mag.values[0]).all()
    assert np.isnan(cat.mag.values[1:]).all() and np.isnan(cat.mag_err.values[1:]).all()
    assert not cat.mag_err_default.any()  # RefCat2 has no default error: left out
    # with a default error, an error of 0 or below (or none) gets it, flagged
    own = kx.read_catalog(path, default_error=0.05)
    np.testing.assert_allclose(own.mag_err.values[-1], [0.05, 0.05, 0.05])
    assert own.mag_err_default.values[-1].all() and not own.mag_err_default.values[0].any()
    np.testing.assert_allclose(own.mag.values[-1], cat.mag.values[0])


@pytest.mark.parametrize(
    ("column", "text"), [("z", "-999"), ("z", "0.0"), ("z", "45"), ("dz", "0")]
)
def test_a_sentinel_magnitude_of_a_standard_is_a_blank_cell(sim, tmp_path, column, text):
    k = 1
    row = int(sim.truth["catalog_row"].values[k])
    blank = _calibrate(sim, _spoil(sim, tmp_path / "blank.csv", {(row, "z"): "", (row, "dz"): ""}))
    spoilt = _calibrate(sim, _spoil(sim, tmp_path / "spoilt.csv", {(row, column): text}))
    assert np.isnan(spoilt["std_mag"].sel(band="panstarrs-z").values[k])
    _same(spoilt, blank)


# --------------------------------------------------------------------------
# 3. Text ids, repeated headers, encodings and line ends
# --------------------------------------------------------------------------


def test_a_text_objid_is_kept_as_text(sim, clean, tmp_path):
    header, rows = _table(sim)
    column = header.index("objid")
    for r, cells in enumerate(rows):
        cells[column] = f"Gaia DR3 {4000 + r}"
    path = _write(tmp_path / "text_ids.csv", header, rows)
    cat = kx.read_catalog(path)
    assert cat.objid.dtype.kind == "U" and cat.objid.values[0] == "Gaia DR3 4000"
    out = _calibrate(sim, path)
    expected = [f"Gaia DR3 {4000 + r}" for r in sim.truth["catalog_row"].values]
    assert out["catalog_objid"].values.tolist() == expected
    _same(out, clean, drop=["catalog_objid"])


def test_repeated_header_lines_are_dropped_with_a_warning(sim, clean, clean_catalog, tmp_path):
    text = sim.catalog_path.read_text().splitlines()
    spoilt = text[:5] + [text[0]] + text[5:9] + ["", "# second query", f" {text[0]}"] + text[9:]
    path = tmp_path / "concatenated.csv"
    path.write_text("\n".join(spoilt) + "\n")
    with pytest.warns(KspecWarning) as record:
        cat = kx.read_catalog(path)
    (message,) = _kspec_warnings(record)
    assert message == (
        f"catalogue file '{path}': line(s) 6, 13 repeat the header line (a CSV concatenated "
        "from two queries?); they are dropped"
    )
    _same(cat, clean_catalog)
    with pytest.warns(KspecWarning, match="repeat the header"):
        _same(_calibrate(sim, path), clean)


def test_a_bad_position_after_dropped_lines_names_its_true_line(sim, tmp_path):
    text = sim.catalog_path.read_text().splitlines()
    header = text[0].split(",")
    cells = text[4].split(",")  # data row 4, line 5
    cells[header.index("RA")] = "?"
    spoilt = [text[0], "# comment", ""] + text[1:4] + [",".join(cells)] + text[5:]
    path = tmp_path / "lines.csv"
    path.write_text("\n".join(spoilt) + "\n")
    with pytest.warns(KspecWarning, match=r"\(data row 4; line 7\)"):
        kx.read_catalog(path)


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: b"\xef\xbb\xbf" + b,  # UTF-8 BOM
        lambda b: b.replace(b"\n", b"\r\n"),  # CRLF
        lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n"),
        lambda b: b.replace(b"\n", b"\r"),  # classic Mac
        lambda b: b.decode().encode("utf-16"),  # UTF-16 with its BOM
        lambda b: gzip.compress(b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n")),
    ],
    ids=["bom", "crlf", "bom-crlf", "cr", "utf16", "gzip-bom-crlf"],
)
def test_encodings_and_line_ends_read_the_same(sim, clean_catalog, tmp_path, encode):
    path = tmp_path / "encoded.csv"
    path.write_bytes(encode(sim.catalog_path.read_bytes()))
    _same(kx.read_catalog(path), clean_catalog)


def test_a_bom_does_not_hide_the_first_column(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfRA,Dec,g,dg\r\n150.5,-2.25,17.1,0.01\r\n")
    cat = kx.read_catalog(path)
    assert cat.ra.values.tolist() == [150.5] and cat.dec.values.tolist() == [-2.25]


def test_non_utf8_bytes_are_replaced_not_fatal(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        "RA,Dec,g,dg,name\n150,2,17.1,0.01,\u00c9toile\n151,3,17.2,0.01,b\n".encode("latin-1")
    )
    cat = kx.read_catalog(path)
    assert cat.name.values.tolist() == ["\ufffdtoile", "b"]
    np.testing.assert_allclose(cat.mag.values[:, 0], [17.1, 17.2])


def test_text_columns_keep_their_spelling_and_late_junk_is_junk(tmp_path):
    # more rows than the reader's type sample (2000): a junk cell far down a numeric column
    n = 2500
    frame = pd.DataFrame(
        {
            "RA": np.linspace(10, 11, n),
            "Dec": -40.0,
            "g": 17.0 + np.arange(n) % 7 * 0.1,
            "dg": 0.01,
            "flag": ["TRUE" if k % 3 else "" for k in range(n)],
        }
    )
    frame["g"] = frame["g"].map("{:.2f}".format)
    frame.loc[2400, "g"] = "n/a"
    frame.loc[2401, "g"] = " 17.25 "
    path = tmp_path / "long.csv"
    frame.to_csv(path, index=False)
    cat = kx.read_catalog(path, bands={"g": ("panstarrs-g", "AB", "dg")})
    g = cat.mag.sel(band="panstarrs-g").values
    assert np.isnan(g[2400]) and g[2401] == 17.25 and np.isfinite(np.delete(g, 2400)).all()
    assert cat.flag.values[:3].tolist() == ["", "TRUE", "TRUE"]  # not pandas' True


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"SIMPLE  =  T\x00\x00\x00", r"is binary, not a CSV text file"),
        ("RA,Dec,g,dg\n".encode("utf-16-le"), r"is binary.*UTF-16/32 text without a byte-order"),
        (b"RA,Dec,g,dg\n1,2,3,0.1\n\n1,2,3,0.1,5,6\n", r"not a well-formed table at line 4"),
        (b"RA,Dec,g,dg\n1,2,3,0.1,9\n", r"not a well-formed table at line 2 \(the first data"),
        (b"RA,Dec,g,dg\n\n# nothing\n", r"has a header but zero rows"),
    ],
    ids=["binary", "utf16-without-bom", "ragged", "long-first-line", "zero-rows"],
)
def test_broken_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "broken.csv"
    path.write_bytes(content)
    with pytest.raises(CatalogError, match=message) as caught:
        kx.read_catalog(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


# --------------------------------------------------------------------------
# 4. Resources: FIFOs and devices refused; 10^5-10^6 rows vectorised; a spatial prefilter
# --------------------------------------------------------------------------


def _within(seconds, func, *args):
    """``func(*args)``'s exception (or None), failing if it blocks for ``seconds``."""
    outcome = {}

    def run():
        try:
            func(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), outcome.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("func", [kx.read_catalog, check_catalog])
def test_a_fifo_is_refused_not_read(tmp_path, func):
    fifo = tmp_path / "stars.csv"
    os.mkfifo(fifo)
    blocked, error = _within(10, func, fifo)
    if blocked:  # release the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not blocked, "the FIFO was opened"
    assert isinstance(error, CatalogError)
    assert str(error) == (
        f"catalogue path '{fifo}' is a FIFO (named pipe), not a regular file; save the "
        "catalogue to a file and pass that file's path"
    )


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("func", [kx.read_catalog, check_catalog])
def test_a_device_is_refused_not_read(func):
    blocked, error = _within(10, func, "/dev/zero")
    assert not blocked
    assert isinstance(error, CatalogError) and "'/dev/zero' is a device" in str(error)


def _reference_mags(path, column):
    """The slow, obvious reading of one magnitude column (RefCat2 rules), cell by cell."""
    out = []
    with open(path) as stream:
        header = stream.readline().strip().split(",")
        k = header.index(column)
        for line in stream:
            cell = line.rstrip("\n").split(",")[k].strip()
            try:
                value = float(cell)
            except ValueError:
                value = np.nan
            ok = np.isfinite(value) and -5 < value < 40 and value != 0
            out.append(value if ok else np.nan)
    return np.array(out)


def test_many_rows_are_read_fast_and_as_a_row_by_row_reader_would(tmp_path):
    n = 60_000
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({c: rng.uniform(0.005, 0.05, n) for c in REFCAT2_COLUMNS})
    frame["objid"] = rng.integers(10**17, 2 * 10**17, n)
    frame["RA"], frame["Dec"] = rng.uniform(0, 360, n), rng.uniform(-90, 90, n)
    for band in ("Gaia", "BP", "RP", "g", "r", "i", "z", "J", "H", "K"):
        frame[band] = rng.uniform(12, 19, n)
    text = frame.astype({"g": object, "RA": object})
    junk = rng.choice(n, 40, replace=False)
    text.loc[junk[:10], "g"] = ""
    text.loc[junk[10:20], "g"] = "99.99"
    text.loc[junk[20:30], "g"] = "n/a"
    text.loc[junk[30:], "RA"] = ""
    path = tmp_path / "big.csv"
    text.to_csv(path, index=False, float_format="%.6f")
    start = time.process_time()
    with pytest.warns(KspecWarning, match=r"10 row\(s\)"):
        cat = kx.read_catalog(path)
    cpu = time.process_time() - start
    assert cat.sizes["star"] == n
    np.testing.assert_array_equal(
        cat.mag.sel(band="panstarrs-g").values, _reference_mags(path, "g")
    )
    np.testing.assert_allclose(cat.objid.values, frame["objid"].values)
    # the row-by-row reader took ~5 s of CPU for these 2.8e6 cells, the C reader ~0.3 s
    assert cpu < 2.5, f"reading {n} rows took {cpu:.1f} s of CPU"


@pytest.mark.parametrize(
    ("ra0", "dec0", "spread"),
    [(0.2, -30.0, 1.0), (180.0, 89.7, 0.5), (359.9, -89.6, 0.3), (90.0, 10.0, 200.0)],
    ids=["ra-wrap", "north-pole", "south-pole", "half-the-sky"],
)
def test_the_prefiltered_match_is_the_brute_force_one(ra0, dec0, spread):
    rng = np.random.default_rng(7)
    n = 50_000
    cat_ra = (ra0 + rng.uniform(-spread, spread, n)) % 360
    cat_dec = np.clip(dec0 + rng.uniform(-2, 2, n), -90, 90)
    cat_ra[rng.choice(n, 100)] = np.nan  # rows without a position are never matched
    fib = rng.choice(np.flatnonzero(np.isfinite(cat_ra)), 20)
    ra = (cat_ra[fib] + rng.normal(0, 0.3 / 3600, 20)) % 360
    dec = np.clip(cat_dec[fib] + rng.normal(0, 0.3 / 3600, 20), -90, 90)
    ra = np.append(ra, (ra0 + 3 * spread) % 360)  # a fibre far from every star
    dec = np.append(dec, dec0 - 3 if dec0 > 0 else dec0 + 3)
    good = np.flatnonzero(np.isfinite(cat_ra) & np.isfinite(cat_dec))
    hit, dist = nearest_on_sky(ra, dec, cat_ra[good], cat_dec[good])
    fast_hit, fast_dist = _nearest(ra, dec, cat_ra, cat_dec, 2.0)
    np.testing.assert_array_equal(fast_hit, good[hit])
    np.testing.assert_allclose(fast_dist, dist)
    assert dist[-1] > 60 and np.all(dist[:-1] < 2)


def test_a_large_catalogue_matches_the_same_stars(sim, clean):
    rng = np.random.default_rng(11)
    n = 300_000
    extra = pd.DataFrame({c: np.full(n, np.nan) for c in sim.catalog.columns})
    extra["RA"], extra["Dec"] = rng.uniform(0, 360, n), rng.uniform(-90, 90, n)
    extra["g"], extra["dg"], extra["objid"] = 17.0, 0.01, np.arange(n)
    big = pd.concat([extra, sim.catalog], ignore_index=True)
    standards = kx.select_standards(sim.red)
    small = kx.associate_catalog(standards, sim.catalog)
    out = kx.associate_catalog(standards, big)
    np.testing.assert_array_equal(out["catalog_row"].values, small["catalog_row"].values + n)
    np.testing.assert_array_equal(small["catalog_row"].values, clean["catalog_row"].values)
    np.testing.assert_array_equal(out["catalog_sep"].values, small["catalog_sep"].values)
    np.testing.assert_array_equal(out["std_mag"].values, small["std_mag"].values)


# --------------------------------------------------------------------------
# 5. check_catalog: the header, cheaply, before any work
# --------------------------------------------------------------------------


def test_check_catalog_passes_good_catalogues(sim, tmp_path):
    assert check_catalog(sim.catalog_path) == sim.catalog_path
    zipped = tmp_path / "stars.csv.gz"
    zipped.write_bytes(gzip.compress(b"\xef\xbb\xbf" + sim.catalog_path.read_bytes()))
    assert check_catalog(str(zipped)) == zipped
    des = tmp_path / "des.csv"
    des.write_text("RA,DEC,MAG_AUTO_G,MAGERR_AUTO_G\n10,-40,17,0.01\n")
    assert check_catalog(des, bands="des") == des
    blind = tmp_path / "blind.csv"
    blind.write_text("g,dg\n17,0.01\n")
    assert check_catalog(blind, match="order") == blind


def test_check_catalog_reads_only_the_header(sim, tmp_path):
    # a bad line far down is found by read_catalog, not by the cheap check
    lines = sim.catalog_path.read_text().splitlines()
    filler = [lines[1]] * 30_000  # > 1 MiB
    path = tmp_path / "long.csv"
    path.write_text("\n".join([lines[0], *filler, lines[1] + ",extra"]) + "\n")
    assert path.stat().st_size > 2**20
    assert check_catalog(path) == path
    with pytest.raises(CatalogError, match="not a well-formed table at line 30002"):
        kx.read_catalog(path)


@pytest.mark.parametrize(
    ("name", "content", "kwargs"),
    [
        ("binary.csv", b"SIMPLE  =  T\x00\x00", {}),
        ("empty.csv", b"", {}),
        ("header.csv", b"RA,Dec,g,dg\n", {}),
        ("numbers.csv", b"1,2,3\n4,5,6\n", {}),
        ("astrometry.csv", b"RA,Dec,plx\n1,2,3\n", {}),
        ("noerr.csv", b"RA,Dec,g,dg,BP\n1,2,17,0.01,17\n", {}),
        ("half.csv", b"RA,g,dg\n1,17,0.01\n", {}),
        ("dupe.csv", b"RA,Dec,g,dg,g\n1,2,17,0.01,17\n", {}),
        ("usermap.csv", b"RA,Dec,gmag\n1,2,17\n", {"bands": {"rmag": "decam2014-r"}}),
        ("preset.csv", b"RA,Dec,g,dg\n1,2,17,0.01\n", {"bands": "nosuchsurvey"}),
    ],
    ids=lambda value: value.split(".")[0] if isinstance(value, str) else "",
)
def test_check_catalog_raises_what_read_catalog_raises(tmp_path, name, content, kwargs):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CatalogError) as read:
        kx.read_catalog(path, **kwargs)
    with pytest.raises(CatalogError) as checked:
        check_catalog(path, **kwargs)
    assert str(checked.value) == str(read.value)


def test_check_catalog_refuses_what_cannot_be_matched_or_read(tmp_path):
    with pytest.raises(CatalogError, match=r"nope\.csv' does not exist"):
        check_catalog(tmp_path / "nope.csv")
    with pytest.raises(CatalogError, match="is a directory"):
        check_catalog(tmp_path)
    blind = tmp_path / "blind.csv"
    blind.write_text("g,dg\n17,0.01\n")
    with pytest.raises(CatalogError, match=r"blind\.csv' has no coordinate columns.*'g', 'dg'"):
        check_catalog(blind)
    with pytest.raises(TypeError, match="needs a path"):
        check_catalog(pd.DataFrame())
    with pytest.raises(ValueError, match="match must be"):
        check_catalog(blind, match="auto")


# --------------------------------------------------------------------------
# The assign file: the same faults, each a one-line CatalogError
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fiber,target_class\n1,8\n2,x\n", r"data row 2 has 'x', not an integer class"),
        ("fiber,target_class\n1,8\nfiber,target_class\n", r"data row 2 has 'target_class'"),
        ("fiber,target_class\n1,8\n2,9.5\n", r"data row 2 has '9.5', not an integer"),
    ],
    ids=["text", "repeated-header", "fraction"],
)
def test_assign_file_faults(tmp_path, text, message):
    path = tmp_path / "assign.csv"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        kx.read_assign(path)


def test_assign_file_with_a_bom_and_crlf(tmp_path):
    path = tmp_path / "assign.csv"
    path.write_bytes(b"\xef\xbb\xbffiber,target_class\r\n3,8\r\n4,9\r\n")
    assign = kx.read_assign(path)
    assert assign.fiber.values.tolist() == [3, 4]
    assert assign.fiber_type.values.tolist() == ["C", "S"]
