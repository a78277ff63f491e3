"""ATLAS-RefCat2 catalogue reader."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import xarray as xr

import kspec_xr as kx
from kspec_xr import CatalogError, read_catalog
from kspec_xr.io.catalog import REFCAT2_COLUMNS, catalog_bands

# Three stars in RefCat2 layout.  Star 1 has sentinels (99 mag, 9.99 errors),
# empty cells and junk; star 2 has no 2MASS.
ROWS = [
    {
        "dstDegrees": "0.0012", "objid": "123456789012345678", "RA": "150.1", "Dec": "2.2",
        "plx": "1.5", "dplx": "0.05", "pmra": "-3.1", "dpmra": "0.1", "pmdec": "4.2",
        "dpmdec": "0.1", "Gaia": "12.000", "dGaia": "0.001", "BP": "12.300", "dBP": "0.002",
        "RP": "11.600", "dRP": "0.003", "Teff": "6012", "AGaia": "0.11", "dupvar": "0",
        "Ag": "0.12", "rp1": "10.2", "r1": "20.5", "r10": "30.0", "g": "12.40", "dg": "0.010",
        "gchi": "0.5", "gcontrib": "3", "r": "12.10", "dr": "0.011", "rchi": "0.4",
        "rcontrib": "3", "i": "12.00", "di": "0.012", "ichi": "0.3", "icontrib": "3",
        "z": "11.90", "dz": "0.013", "zchi": "0.2", "zcontrib": "3", "nstat": "0",
        "J": "11.00", "dJ": "0.021", "H": "10.70", "dH": "0.022", "K": "10.60", "dK": "0.023",
    },
    {
        "dstDegrees": "0.0020", "objid": "2", "RA": "150.2", "Dec": "-2.3", "plx": "",
        "dplx": "", "pmra": "", "dpmra": "", "pmdec": "", "dpmdec": "", "Gaia": "99.000",
        "dGaia": "0.001", "BP": "13.1", "dBP": "9.99", "RP": "", "dRP": "", "Teff": "5000",
        "AGaia": "", "dupvar": "1", "Ag": "", "rp1": "", "r1": "", "r10": "", "g": "13.0",
        "dg": "0.02", "gchi": "", "gcontrib": "", "r": "n/a", "dr": "0.02", "rchi": "",
        "rcontrib": "", "i": "12.5", "di": "", "ichi": "", "icontrib": "", "z": "12.4",
        "dz": "-0.1", "zchi": "", "zcontrib": "", "nstat": "", "J": "100.0", "dJ": "0.02",
        "H": "10.0", "dH": "12.0", "K": "0", "dK": "0.03",
    },
    {
        "dstDegrees": "0.0031", "objid": "3", "RA": "359.9", "Dec": "89.0", "plx": "0.2",
        "dplx": "0.1", "pmra": "1", "dpmra": "0.2", "pmdec": "1", "dpmdec": "0.2",
        "Gaia": "15.5", "dGaia": "0.002", "BP": "15.9", "dBP": "0.004", "RP": "14.9",
        "dRP": "0.005", "Teff": "4500", "AGaia": "0.5", "dupvar": "2", "Ag": "0.6",
        "rp1": "1", "r1": "2", "r10": "3", "g": "16.2", "dg": "0.01", "gchi": "1",
        "gcontrib": "1", "r": "15.6", "dr": "0.01", "rchi": "1", "rcontrib": "1",
        "i": "15.3", "di": "0.01", "ichi": "1", "icontrib": "1", "z": "15.1", "dz": "0.01",
        "zchi": "1", "zcontrib": "1", "nstat": "5", "J": "", "dJ": "", "H": "", "dH": "",
        "K": "", "dK": "",
    },
]  # fmt: skip

BANDS = [
    "gaiadr2-G", "gaiadr2-BP", "gaiadr2-RP", "panstarrs-g", "panstarrs-r", "panstarrs-i",
    "panstarrs-z", "twomass-J", "twomass-H", "twomass-Ks",
]  # fmt: skip


def write_csv(path, rows=ROWS, columns=REFCAT2_COLUMNS, *, sep=",", header=True, pad=""):
    lines = [f"{sep}{pad}".join(columns)] if header else []
    lines += [sep.join(row.get(c, "") for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def full(tmp_path):
    return write_csv(tmp_path / "standards.csv")


def test_layout(full):
    cat = read_catalog(full)
    assert dict(cat.sizes) == {"star": 3, "band": 10}
    assert cat.star.values.tolist() == [0, 1, 2]
    assert cat.band.values.tolist() == BANDS
    assert cat.source_column.values.tolist() == [
        "Gaia",
        "BP",
        "RP",
        "g",
        "r",
        "i",
        "z",
        "J",
        "H",
        "K",
    ]
    assert cat.mag.dims == ("star", "band") and cat.mag_err.dims == ("star", "band")
    assert cat.mag.attrs["units"] == "mag" and cat.mag.attrs["system"] == "AB"
    assert cat.mag_err.attrs["units"] == "mag"
    np.testing.assert_allclose(cat.ra, [150.1, 150.2, 359.9])
    np.testing.assert_allclose(cat.dec, [2.2, -2.3, 89.0])
    assert cat.ra.attrs["units"] == "deg" and cat.dec.attrs["units"] == "deg"
    assert {"ra", "dec", "objid"} <= set(cat.coords)
    assert cat.objid.dtype == np.int64 and cat.objid.values[0] == 123456789012345678


def test_vega_to_ab_conversion(full):
    mag = read_catalog(full).mag.isel(star=0)
    expected = [
        12.0 + 0.1001, 12.3 + 0.0373, 11.6 + 0.3535,  # Gaia DR2, Vega -> AB
        12.40, 12.10, 12.00, 11.90,  # PS1 unchanged
        11.00 + 0.91, 10.70 + 1.39, 10.60 + 1.85,  # 2MASS, Vega -> AB
    ]  # fmt: skip
    np.testing.assert_allclose(mag.values, expected, atol=1e-12)
    err = read_catalog(full).mag_err.isel(star=0)
    np.testing.assert_allclose(
        err.values, [0.001, 0.002, 0.003, 0.01, 0.011, 0.012, 0.013, 0.021, 0.022, 0.023]
    )
    np.testing.assert_allclose(
        read_catalog(full).ab_offset, [0.1001, 0.0373, 0.3535, 0, 0, 0, 0, 0.91, 1.39, 1.85]
    )


def test_sentinels_blanks_and_junk_are_nan_in_mag_and_err(full):
    cat = read_catalog(full)
    star = cat.isel(star=1)
    good = {"panstarrs-g": (13.0, 0.02), "twomass-Ks": (1.85, 0.03)}  # K = 0 is a real value
    for band in BANDS:
        m, e = float(star.mag.sel(band=band)), float(star.mag_err.sel(band=band))
        if band in good:
            assert (m, e) == pytest.approx(good[band]), band
        else:
            # Gaia 99, BP err 9.99, RP blank, r junk, i blank err, z negative err,
            # J 100, H err 12
            assert np.isnan(m) and np.isnan(e), band
    assert np.isnan(cat.mag.sel(band=["twomass-J", "twomass-H", "twomass-Ks"]).isel(star=2)).all()


def test_extra_columns_kept_with_types_and_units(full):
    cat = read_catalog(full)
    for column in REFCAT2_COLUMNS:
        if column in ("RA", "Dec", "objid", "Gaia", "dGaia", "BP", "dBP", "RP", "dRP", "g", "dg",
                      "r", "dr", "i", "di", "z", "dz", "J", "dJ", "H", "dH", "K", "dK"):  # fmt: skip
            assert column not in cat.data_vars
        else:
            assert cat[column].dims == ("star",), column
    assert cat.Teff.dtype == np.int64 and cat.Teff.values.tolist() == [6012, 5000, 4500]
    assert cat.Teff.attrs["units"] == "K" and cat.plx.attrs["units"] == "mas"
    np.testing.assert_allclose(cat.Ag, [0.12, np.nan, 0.6])
    np.testing.assert_allclose(cat.dstDegrees, [0.0012, 0.0020, 0.0031])
    assert cat.dupvar.values.tolist() == [0, 1, 2]
    assert cat.attrs["source"].endswith("standards.csv")


def test_absent_bands_are_absent_and_extra_columns_survive(tmp_path):
    columns = ["objid", "RA", "Dec", "BP", "dBP", "RP", "dRP", "g", "dg", "r", "dr", "Teff", "name"]
    rows = [dict(r, name=f"star{k}") for k, r in enumerate(ROWS)]
    cat = read_catalog(write_csv(tmp_path / "subset.csv", rows, columns))
    assert cat.band.values.tolist() == ["gaiadr2-BP", "gaiadr2-RP", "panstarrs-g", "panstarrs-r"]
    assert cat.name.values.tolist() == ["star0", "star1", "star2"]
    assert catalog_bands(cat) == ("gaiadr2-BP", "gaiadr2-RP", "panstarrs-g", "panstarrs-r")
    assert catalog_bands(cat.isel(star=[1])) == ("panstarrs-g",)


def test_no_positions_is_fine(tmp_path):
    cat = read_catalog(write_csv(tmp_path / "nopos.csv", columns=["g", "dg", "r", "dr"]))
    assert "ra" not in cat.coords and "dec" not in cat.coords and "objid" not in cat.coords
    assert cat.sizes == {"star": 3, "band": 2}


def test_format_variants(tmp_path, full):
    ref = read_catalog(full)
    # blanks around names, comment lines, commented header, whitespace separated, gzip
    padded = write_csv(tmp_path / "padded.csv", pad="  ")
    xr.testing.assert_identical(read_catalog(padded).drop_attrs(), ref.drop_attrs())
    text = full.read_text().splitlines()
    commented = tmp_path / "commented.csv"
    commented.write_text("# ATLAS-RefCat2 query\n#" + text[0] + "\n" + "\n".join(text[1:]) + "\n")
    xr.testing.assert_identical(read_catalog(commented).drop_attrs(), ref.drop_attrs())
    comments = tmp_path / "comments.csv"
    comments.write_text("# query of 2026-01-01\n\n" + "\n".join(text) + "\n# end\n")
    xr.testing.assert_identical(read_catalog(comments).drop_attrs(), ref.drop_attrs())
    zipped = tmp_path / "standards.csv.gz"
    zipped.write_bytes(gzip.compress(full.read_bytes()))
    xr.testing.assert_identical(read_catalog(zipped).drop_attrs(), ref.drop_attrs())
    rows = [{k: v or "nan" for k, v in r.items()} for r in ROWS]
    spaced = write_csv(tmp_path / "spaced.txt", rows, sep=" ")
    xr.testing.assert_allclose(read_catalog(spaced).mag, ref.mag)
    lower = write_csv(tmp_path / "lower.csv", columns=["ra", "dec", "gaia", "dgaia", "G", "dG"])
    with pytest.warns(kx.KspecWarning, match=r"3 row\(s\) \(0, 1, 2\) have a blank"):
        cat = read_catalog(lower)  # ROWS spell them RA/Dec: the ra/dec cells are blank
    assert cat.band.values.tolist() == ["gaiadr2-G"] and "ra" in cat.coords
    assert "G" in cat and "dG" in cat  # unknown columns are kept, not guessed


# --------------------------------------------------------------------------
# Bad input: a CatalogError naming the file and the column
# --------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CatalogError, match=r"nope\.csv' does not exist"):
        read_catalog(tmp_path / "nope.csv")
    with pytest.raises(CatalogError, match="is a directory"):
        read_catalog(tmp_path)
    with pytest.raises(TypeError):
        read_catalog(42)


def test_unreadable_file(tmp_path):
    binary = tmp_path / "image.fits"
    binary.write_bytes(b"SIMPLE  =                    T\x00\x00\x00")
    with pytest.raises(CatalogError, match=r"image\.fits' is binary"):
        read_catalog(binary)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("RA,Dec,g,dg\n1,2,3,0.1\n1,2,3,0.1,5,6\n")
    with pytest.raises(CatalogError, match=r"ragged\.csv' is not a well-formed table"):
        read_catalog(ragged)


def test_zero_rows(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CatalogError, match=r"empty\.csv' has no rows"):
        read_catalog(empty)
    header_only = write_csv(tmp_path / "header.csv", rows=[])
    with pytest.raises(CatalogError, match=r"header\.csv' has a header but zero rows"):
        read_catalog(header_only)


def test_no_header(tmp_path):
    bare = write_csv(tmp_path / "bare.csv", header=False)
    with pytest.raises(CatalogError, match=r"bare\.csv' has no header line.*dstDegrees,objid"):
        read_catalog(bare)


def test_no_photometry(tmp_path):
    no_phot = write_csv(tmp_path / "astrometry.csv", columns=["objid", "RA", "Dec", "plx"])
    with pytest.raises(CatalogError, match=r"astrometry\.csv' has none of the photometric columns"):
        read_catalog(no_phot)
    nothing = write_csv(tmp_path / "other.csv", columns=["objid", "plx"])
    with pytest.raises(CatalogError, match="neither RA/Dec nor any photometric"):
        read_catalog(nothing)


def test_magnitude_without_error_column(tmp_path):
    path = write_csv(tmp_path / "noerr.csv", columns=["RA", "Dec", "g", "dg", "BP"])
    with pytest.raises(
        CatalogError, match=r"noerr\.csv' has magnitude column 'BP' but no error column 'dBP'"
    ):
        read_catalog(path)


def test_half_positions_and_bad_positions(tmp_path):
    path = write_csv(tmp_path / "half.csv", columns=["RA", "g", "dg"])
    with pytest.raises(CatalogError, match=r"half\.csv' has RA but no 'Dec' column"):
        read_catalog(path)
    rows = [dict(r) for r in ROWS]
    rows[2]["Dec"] = "95.0"
    path = write_csv(tmp_path / "dec.csv", rows, ["RA", "Dec", "g", "dg"])
    with pytest.raises(CatalogError, match=r"dec\.csv': column 'Dec' has 95\.0 in data row 2"):
        read_catalog(path)


def test_duplicate_columns(tmp_path):
    path = write_csv(tmp_path / "dup.csv", columns=["RA", "Dec", "g", "dg", "g"])
    with pytest.raises(CatalogError, match=r"dup\.csv' repeats column\(s\) \['g'\]"):
        read_catalog(path)
