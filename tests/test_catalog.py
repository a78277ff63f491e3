"""ATLAS-RefCat2 catalogue reader."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.table import Table

import kspec_xr as kx
from kspec_xr import CatalogError, read_catalog
from kspec_xr._base.bandmap import (
    DEFAULT_ERROR,
    MAG_PER_SNR,
    PRESETS,
    BandMap,
    parse_inline,
    resolve_bands,
)
from kspec_xr._base.bands import KNOWN_BANDS, VEGA_TO_AB
from kspec_xr._base.dust import EBV_MAX, band_ratio
from kspec_xr.io.catalog import REFCAT2_COLUMNS, REFCAT2_PHOTOMETRY, catalog_bands
from kspec_xr.testing import make_exposure

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
    good = {"panstarrs-g": (13.0, 0.02)}  # K = 0 is RefCat2's "no value" (issue 11)
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
    with pytest.warns(
        kx.KspecWarning, match=r"3 row\(s\) \(data rows 1, 2, 3; lines 2, 3, 4\) have a blank"
    ):
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
    with pytest.raises(
        CatalogError, match=r"dec\.csv': column 'Dec' has 95\.0 in data row 3 \(line 4\)"
    ):
        read_catalog(path)


def test_duplicate_columns(tmp_path):
    path = write_csv(tmp_path / "dup.csv", columns=["RA", "Dec", "g", "dg", "g"])
    with pytest.raises(CatalogError, match=r"dup\.csv' repeats column\(s\) \['g'\]"):
        read_catalog(path)


# --------------------------------------------------------------------------
# Band maps: any photometric system (presets, mappings, TOML, inline)
# --------------------------------------------------------------------------


def write_table(path, columns: dict):
    """A CSV of ``{column: [cells]}`` (cells as written, '' for blank)."""
    names = list(columns)
    n = len(columns[names[0]])
    lines = [",".join(names)] + [",".join(str(columns[c][k]) for c in names) for k in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _mag(cat, band):
    return cat.mag.sel(band=band).values


def _err(cat, band):
    return cat.mag_err.sel(band=band).values


def test_refcat2_preset_is_the_default(full):
    assert REFCAT2_PHOTOMETRY[0] == ("Gaia", "dGaia", "gaiadr2-G") and len(REFCAT2_PHOTOMETRY) == 10
    ref = read_catalog(full)
    xr.testing.assert_identical(read_catalog(full, bands="refcat2"), ref)
    xr.testing.assert_identical(read_catalog(full, bands="RefCat2"), ref)
    assert ref.attrs["catalog"] == "ATLAS-RefCat2" and ref.attrs["band_map"] == "refcat2"
    assert not ref.mag_err_default.any() and "default_error" not in ref.mag_err.attrs
    assert ref.error_column.values.tolist()[:4] == ["dGaia", "dBP", "dRP", "dg"]
    assert ref.mag_system.values.tolist() == ["Vega"] * 3 + ["AB"] * 4 + ["Vega"] * 3


def test_des_preset(tmp_path):
    # DES DR2 coadd columns: 99 sentinels, 0, -99, blank; an error of 0 or blank gets the
    # default, an error of 99 drops the magnitude
    path = write_table(
        tmp_path / "des_dr2.csv",
        {
            "COADD_OBJECT_ID": [1, 2, 3],
            "RA": [10.0, 10.1, 10.2],
            "DEC": [-40.0, -40.1, -40.2],
            "MAG_AUTO_G": [17.2, 99.0, 17.5],
            "MAGERR_AUTO_G": [0.004, 99.0, 0.0],
            "MAG_AUTO_R": [16.9, 0.0, -99],
            "MAGERR_AUTO_R": [0.003, 0.003, 0.003],
            "MAG_AUTO_I": [16.8, "", 16.9],
            "MAGERR_AUTO_I": [0.005, 0.004, ""],
            "MAG_AUTO_Z": [16.7, 16.75, 16.8],
            "MAGERR_AUTO_Z": [0.006, 12.0, -1],
            "EBV_SFD98": [0.02, 0.03, -99],
        },
    )
    cat = read_catalog(path, bands="des")
    assert cat.band.values.tolist() == ["decamDR1-g", "decamDR1-r", "decamDR1-i", "decamDR1-z"]
    assert cat.source_column.values.tolist() == [f"MAG_AUTO_{b}" for b in "GRIZ"]
    np.testing.assert_array_equal(cat.ab_offset, 0.0)
    assert set(cat.mag_system.values) == {"AB"}
    np.testing.assert_allclose(_mag(cat, "decamDR1-g"), [17.2, np.nan, 17.5])
    np.testing.assert_allclose(_err(cat, "decamDR1-g"), [0.004, np.nan, DEFAULT_ERROR])
    np.testing.assert_allclose(_mag(cat, "decamDR1-r"), [16.9, np.nan, np.nan])
    np.testing.assert_allclose(_mag(cat, "decamDR1-i"), [16.8, np.nan, 16.9])
    np.testing.assert_allclose(_err(cat, "decamDR1-i"), [0.005, np.nan, DEFAULT_ERROR])
    np.testing.assert_allclose(_mag(cat, "decamDR1-z"), [16.7, np.nan, 16.8])  # err 12: none
    np.testing.assert_allclose(_err(cat, "decamDR1-z"), [0.006, np.nan, DEFAULT_ERROR])
    assert cat.mag_err_default.values.tolist() == [
        [False, False, False, False],
        [False, False, False, False],
        [True, False, True, True],
    ]
    assert cat.mag_err.attrs["default_error"] == DEFAULT_ERROR
    np.testing.assert_allclose(cat.ebv, [0.02, 0.03, np.nan])
    assert cat.ebv_source.values.tolist() == ["ebv column 'EBV_SFD98'"] * 2 + [""]
    np.testing.assert_allclose(cat.ra, [10.0, 10.1, 10.2])
    assert "MAG_AUTO_G" not in cat and "COADD_OBJECT_ID" in cat and "EBV_SFD98" in cat
    # the query service's lower-case spelling is the same catalogue
    lower = write_table(
        tmp_path / "lower.csv",
        {"ra": [1.0], "dec": [2.0], "mag_auto_g": [17.0], "magerr_auto_g": [0.01]},
    )
    low = read_catalog(lower, bands="des")
    assert low.band.values.tolist() == ["decamDR1-g"] and _err(low, "decamDR1-g")[0] == 0.01
    # a default error of one's own, or none at all
    own = read_catalog(path, bands="des", default_error=0.05)
    assert _err(own, "decamDR1-g")[2] == 0.05
    strict = read_catalog(path, bands="des", default_error=False)
    assert np.isnan(_mag(strict, "decamDR1-g")[2]) and not strict.mag_err_default.any()


def test_des_psf_preset(tmp_path):
    path = write_table(
        tmp_path / "des_psf.csv",
        {"RA": [1.0], "DEC": [-1.0], "WAVG_MAG_PSF_G": [18.1], "WAVG_MAGERR_PSF_G": [0.01],
         "WAVG_MAG_PSF_Y": [17.0], "WAVG_MAGERR_PSF_Y": [0.02]},
    )  # fmt: skip
    cat = read_catalog(path, bands="des_psf")
    assert cat.band.values.tolist() == ["decamDR1-g", "decamDR1-Y"]
    np.testing.assert_allclose(cat.mag.values, [[18.1, 17.0]])
    np.testing.assert_allclose(cat.mag_err.values, [[0.01, 0.02]])


OZDES_COLUMNS = ["index number", "ra", "dec", "r-mag", "SDSS g", "SDSS r"] + [
    f"CoAdd mag_auto {b}" for b in "grizY"
]


def test_ozdes_preset_and_des_fallback(tmp_path):
    # the columns of the real night's des_fstars_2014.csv: no errors, 0 = missing
    rows = {
        "index number": [54, 25],
        "ra": [6.493828, 7.059868],
        "dec": [-42.986155, -42.455513],
        "r-mag": [17.76, 17.14],
        "SDSS g": [0, 17.5],
        "SDSS r": [0, 17.2],
        "CoAdd mag_auto g": [18.02, 17.43],
        "CoAdd mag_auto r": [17.74, 99.0],
        "CoAdd mag_auto i": [17.67, 17.04],
        "CoAdd mag_auto z": [17.64, 17.01],
        "CoAdd mag_auto Y": [0, 16.9],
    }
    path = write_table(tmp_path / "des_fstars.csv", rows)
    cat = read_catalog(path, bands="ozdes")
    assert cat.band.values.tolist() == [f"decam2014-{b}" for b in "grizY"]
    np.testing.assert_allclose(
        cat.mag.values, [[18.02, 17.74, 17.67, 17.64, np.nan], [17.43, np.nan, 17.04, 17.01, 16.9]]
    )
    np.testing.assert_allclose(cat.mag_err.values, np.where(np.isfinite(cat.mag), 0.02, np.nan))
    np.testing.assert_array_equal(cat.mag_err_default, np.isfinite(cat.mag.values))
    assert set(cat.error_column.values) == {""}
    assert cat.attrs["band_map"] == "ozdes" and cat.mag_err.attrs["default_error"] == 0.02
    np.testing.assert_allclose(cat.ra, rows["ra"])
    assert "SDSS g" in cat and "r-mag" in cat  # not mapped, kept
    xr.testing.assert_identical(read_catalog(path, bands="des").drop_attrs(), cat.drop_attrs())
    # RefCat2 reading says which preset fits
    with pytest.raises(CatalogError, match=r"fit preset\(s\) 'des', 'ozdes': pass bands='des'"):
        read_catalog(path)


def test_sdss_preset_applies_the_u_and_z_offsets(tmp_path):
    cols = {"ra": [180.0, 180.1], "dec": [1.0, 1.1]}
    for k, b in enumerate("ugriz"):
        cols[f"psfMag_{b}"] = [18.0 + 0.1 * k, -9999]
        cols[f"psfMagErr_{b}"] = [0.01 * (k + 1), -9999]
    cat = read_catalog(write_table(tmp_path / "sdss.csv", cols), bands="sdss")
    assert cat.band.values.tolist() == [f"sdss2010-{b}" for b in "ugriz"]
    np.testing.assert_allclose(cat.ab_offset, [-0.04, 0, 0, 0, 0.02])
    assert cat.mag_system.values.tolist() == ["offset", "AB", "AB", "AB", "offset"]
    np.testing.assert_allclose(cat.mag.isel(star=0), [17.96, 18.1, 18.2, 18.3, 18.42])
    np.testing.assert_allclose(cat.mag_err.isel(star=0), [0.01, 0.02, 0.03, 0.04, 0.05])
    assert cat.mag.isel(star=1).isnull().all()


def test_panstarrs_preset(tmp_path):
    cols = {"objName": ["a", "b"], "raMean": [200.0, 200.1], "decMean": [10.0, 10.1]}
    for b in "grizy":
        cols[f"{b}MeanPSFMag"] = [16.5, -999]
        cols[f"{b}MeanPSFMagErr"] = [0.003, -999]
    cat = read_catalog(write_table(tmp_path / "ps1.csv", cols), bands="panstarrs")
    assert cat.band.values.tolist() == [f"panstarrs-{b}" for b in "grizy"]
    np.testing.assert_allclose(cat.mag.isel(star=0), 16.5)
    np.testing.assert_allclose(cat.mag_err.isel(star=0), 0.003)
    assert cat.mag.isel(star=1).isnull().all()
    np.testing.assert_allclose(cat.ra, [200.0, 200.1])  # raMean / decMean are positions


def test_gaiadr3_preset(tmp_path):
    cols = {
        "source_id": [11, 12],
        "ra": [30.0, 30.1],
        "dec": [5.0, 5.1],
        "phot_g_mean_mag": [12.0, 13.0],
        "phot_g_mean_flux_over_error": [2000.0, ""],
        "phot_bp_mean_mag": [12.3, ""],
        "phot_bp_mean_flux_over_error": [500.0, 400.0],
        "phot_rp_mean_mag": [11.6, 12.6],
        "phot_rp_mean_flux_over_error": [800.0, 0.0],
    }
    cat = read_catalog(write_table(tmp_path / "gaia.csv", cols), bands="gaiadr3")
    bands = ["gaiadr3-G", "gaiadr3-BP", "gaiadr3-RP"]
    assert cat.band.values.tolist() == bands and set(cat.mag_system.values) == {"Vega"}
    offsets = [VEGA_TO_AB[b] for b in bands]
    np.testing.assert_allclose(cat.ab_offset, offsets)
    np.testing.assert_allclose(cat.mag.isel(star=0), np.array([12.0, 12.3, 11.6]) + offsets)
    np.testing.assert_allclose(cat.mag_err.isel(star=0), MAG_PER_SNR / np.array([2000, 500, 800]))
    assert MAG_PER_SNR == pytest.approx(1.0857, abs=1e-4)
    # no S/N (blank, 0): the default error, flagged; blank BP magnitude: missing
    np.testing.assert_allclose(cat.mag_err.isel(star=1), [DEFAULT_ERROR, np.nan, DEFAULT_ERROR])
    assert cat.mag_err_default.isel(star=1).values.tolist() == [True, False, True]
    # without the S/N columns every error is the default; VizieR's I/355 names work too
    bare = read_catalog(
        write_table(tmp_path / "bare.csv", {k: cols[k] for k in ("ra", "dec", "phot_g_mean_mag")}),
        bands="gaiadr3",
    )
    assert bare.mag_err_default.all() and (bare.error_column == "").all()
    vizier_cols = {"RA_ICRS": [30.0], "DE_ICRS": [5.0], "Gmag": [12.0], "e_Gmag": [0.0028]}
    vizier_cols.update(BPmag=[12.3], e_BPmag=[0.003], RPmag=[11.6], e_RPmag=[0.004])
    vizier = read_catalog(write_table(tmp_path / "vizier.csv", vizier_cols), bands="gaiadr3")
    assert vizier.attrs["band_map"] == "gaiadr3 (VizieR I/355)"
    np.testing.assert_allclose(vizier.mag_err.isel(star=0), [0.0028, 0.003, 0.004])


def test_gaia_xp_preset(tmp_path):
    cols = {"source_id": [1]}
    for k, b in enumerate("ugriz"):
        cols[f"{b}_sdss_mag"] = [15.0 + k * 0.1]
        cols[f"{b}_sdss_flux"] = [1e-30]
        cols[f"{b}_sdss_flux_error"] = [1e-32 * (k + 1)]
    cols.update(y_ps1_mag=[14.5], y_ps1_flux=[2e-30], y_ps1_flux_error=[4e-32])
    cols.update(v_jkc_mag=[15.2], f606w_acswfc_mag=[15.1])  # not mapped
    cat = read_catalog(write_table(tmp_path / "gspc.csv", cols), bands="gaia_xp")
    assert cat.band.values.tolist() == [f"sdss2010-{b}" for b in "ugriz"] + ["panstarrs-y"]
    np.testing.assert_allclose(cat.ab_offset, 0.0)
    np.testing.assert_allclose(cat.mag.isel(star=0), [15.0, 15.1, 15.2, 15.3, 15.4, 14.5])
    np.testing.assert_allclose(
        cat.mag_err.isel(star=0), MAG_PER_SNR * np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.02])
    )
    assert "v_jkc_mag" in cat and "u_sdss_flux" not in cat


def test_skymapper_preset_says_speclite_has_no_curves(tmp_path):
    path = write_table(tmp_path / "sm.csv", {"raj2000": [1.0], "dej2000": [-1.0], "g_psf": [15.0]})
    with pytest.raises(CatalogError, match="speclite ships no SkyMapper"):
        read_catalog(path, bands="skymapper")
    assert not any(b.lower().startswith("skymapper") for b in KNOWN_BANDS)


def test_legacy_presets_nanomaggies(tmp_path):
    flux = [1000.0, 0.0, -5.0, 250.0]
    ivar = [0.04, 1.0, 1.0, 0.0]
    cols = {"ra": [1.0, 1.1, 1.2, 1.3], "dec": [2.0] * 4, "ebv": [0.01, 0.02, 0.7, ""]}
    for b in "grz":
        cols[f"flux_{b}"], cols[f"flux_ivar_{b}"] = flux, ivar
    path = write_table(tmp_path / "sweep.csv", cols)
    with pytest.warns(
        kx.KspecWarning, match=r"1 row\(s\) \(data row 3; line 4\) have an E\(B-V\) above 0\.5"
    ):
        south = read_catalog(path, bands="legacy")
    assert south.band.values.tolist() == ["decam2014-g", "decam2014-r", "decam2014-z"]
    expected = [22.5 - 2.5 * np.log10(1000.0), np.nan, np.nan, 22.5 - 2.5 * np.log10(250.0)]
    np.testing.assert_allclose(_mag(south, "decam2014-r"), expected)
    # sigma_m = 1.0857 / (f sqrt(ivar)); ivar 0: the default error
    np.testing.assert_allclose(
        _err(south, "decam2014-r"), [MAG_PER_SNR / (1000 * 0.2), np.nan, np.nan, DEFAULT_ERROR]
    )
    assert south.source_column.values.tolist() == ["flux_g", "flux_r", "flux_z"]
    assert south.error_column.values.tolist() == ["flux_ivar_g", "flux_ivar_r", "flux_ivar_z"]
    np.testing.assert_allclose(south.ebv, [0.01, 0.02, np.nan, np.nan])
    assert "ebv_catalog" in south  # the raw column, under a name that does not clash
    with pytest.warns(kx.KspecWarning):
        north = read_catalog(path, bands="legacy_north")
    assert north.band.values.tolist() == ["BASS-g", "BASS-r", "MzLS-z"]
    np.testing.assert_allclose(_mag(north, "MzLS-z"), expected)


def test_twomass_preset_vizier_and_irsa(tmp_path):
    vizier = write_table(
        tmp_path / "vizier.csv",
        {"RAJ2000": [1.0], "DEJ2000": [1.0], "Jmag": [11.0], "e_Jmag": [0.02],
         "Hmag": [10.7], "e_Hmag": [""], "Kmag": [10.6], "e_Kmag": [0.03]},
    )  # fmt: skip
    cat = read_catalog(vizier, bands="twomass")
    assert cat.band.values.tolist() == ["twomass-J", "twomass-H", "twomass-Ks"]
    np.testing.assert_allclose(cat.ab_offset, [0.91, 1.39, 1.85])
    np.testing.assert_allclose(cat.mag.isel(star=0), [11.91, 12.09, 12.45])
    np.testing.assert_allclose(cat.mag_err.isel(star=0), [0.02, DEFAULT_ERROR, 0.03])
    irsa = write_table(
        tmp_path / "irsa.csv",
        {"ra": [1.0], "dec": [1.0], "j_m": [11.0], "j_msigcom": [0.02], "k_m": [10.6],
         "k_msigcom": [0.03]},
    )  # fmt: skip
    cat = read_catalog(irsa, bands="twomass")
    assert cat.attrs["band_map"] == "twomass (IRSA fp_psc)"
    assert cat.band.values.tolist() == ["twomass-J", "twomass-Ks"]
    np.testing.assert_allclose(cat.mag.isel(star=0), [11.91, 12.45])


def test_every_preset_uses_known_bands_and_is_documented():
    for name, preset in PRESETS.items():
        assert preset.description and preset.columns_from, name
        for bm in preset.layouts:
            assert set(bm.band_names) <= set(KNOWN_BANDS), name
    assert set(PRESETS) == {
        "refcat2", "des", "des_psf", "ozdes", "sdss", "panstarrs", "gaiadr3", "gaia_xp",
        "skymapper", "legacy", "legacy_north", "twomass",
    }  # fmt: skip


# --------------------------------------------------------------------------
# A band map of one's own
# --------------------------------------------------------------------------


@pytest.fixture
def mine(tmp_path):
    return write_table(
        tmp_path / "mine.csv",
        {"ID": [1, 2], "ra": [10.0, 10.1], "dec": [-5.0, -5.1], "g": [17.0, 0.0],
         "r": [16.8, 16.9], "err_r": [0.01, ""], "Jmag": [15.9, 16.0], "e_Jmag": [0.05, 0.06],
         "u": [18.5, 18.6]},
    )  # fmt: skip


def test_mapping_band_map(mine):
    cat = read_catalog(
        mine,
        bands={
            "g": ("decam2014-g", "AB"),
            "r": ("decam2014-r", "AB", "err_r"),
            "Jmag": ("twomass-J", "Vega", "e_Jmag"),
            "u": ("sdss2010-u", -0.04),
        },
    )
    assert cat.band.values.tolist() == ["decam2014-g", "decam2014-r", "twomass-J", "sdss2010-u"]
    assert cat.mag_system.values.tolist() == ["AB", "AB", "Vega", "offset"]
    np.testing.assert_allclose(cat.ab_offset, [0.0, 0.0, 0.91, -0.04])
    np.testing.assert_allclose(
        cat.mag.values, [[17.0, 16.8, 16.81, 18.46], [np.nan, 16.9, 16.91, 18.56]]
    )
    np.testing.assert_allclose(
        cat.mag_err.values, [[0.03, 0.01, 0.05, 0.03], [np.nan, 0.03, 0.06, 0.03]]
    )
    assert cat.mag_err_default.values.tolist() == [
        [True, False, False, True],
        [False, True, False, True],
    ]
    assert cat.error_column.values.tolist() == ["", "err_r", "e_Jmag", ""]
    # the same as a dict entry, an inline string, a DataFrame and an astropy Table
    same = {
        "g": "decam2014-g",
        "r": {"band": "decam2014-r", "error": "err_r"},
        "Jmag": {"band": "twomass-J", "system": "Vega", "error": "e_Jmag"},
        "u": {"band": "sdss2010-u", "system": -0.04},
    }
    xr.testing.assert_identical(read_catalog(mine, bands=same), cat)
    inline = "g=decam2014-g,r=decam2014-r::err_r,Jmag=twomass-J:Vega:e_Jmag,u=sdss2010-u:-0.04"
    xr.testing.assert_identical(read_catalog(mine, bands=inline), cat)
    frame = pd.read_csv(mine)
    xr.testing.assert_allclose(read_catalog(frame, bands=same).mag, cat.mag)
    xr.testing.assert_allclose(read_catalog(Table.from_pandas(frame), bands=same).mag, cat.mag)


def test_toml_band_map(tmp_path, mine):
    toml = tmp_path / "mine.toml"
    toml.write_text(
        "# my catalogue\n"
        "default_error = 0.05\n"
        'ebv_column = "EBVcol"\n'
        "[bands]\n"
        'g = "decam2014-g"\n'
        'r = ["decam2014-r", "AB", "err_r"]\n'
        'Jmag = { band = "twomass-J", system = "Vega", error = "e_Jmag" }\n'
    )
    text = mine.read_text().splitlines()
    with_ebv = tmp_path / "with_ebv.csv"
    with_ebv.write_text("\n".join([text[0] + ",EBVcol"] + [t + ",0.04" for t in text[1:]]) + "\n")
    for given in (toml, str(toml)):
        cat = read_catalog(with_ebv, bands=given)
        assert cat.band.values.tolist() == ["decam2014-g", "decam2014-r", "twomass-J"]
        np.testing.assert_allclose(_err(cat, "decam2014-g"), [0.05, np.nan])
        np.testing.assert_allclose(_err(cat, "decam2014-r"), [0.01, 0.05])
        np.testing.assert_allclose(cat.ebv, 0.04)
        assert cat.attrs["band_map"] == "mine.toml"
        assert cat.ebv_source.values.tolist() == ["ebv column 'EBVcol'"] * 2
    # default_error = false: magnitudes without an error are left out
    strict = tmp_path / "strict.toml"
    strict.write_text('default_error = false\n[bands]\nr = ["decam2014-r", "AB", "err_r"]\n')
    cat = read_catalog(mine, bands=strict)
    np.testing.assert_allclose(cat.mag.values[:, 0], [16.8, np.nan])


def test_band_map_errors(tmp_path, mine):
    with pytest.raises(CatalogError, match=r"unknown band 'decam-g'.*decam2014-g.*BASS-g"):
        read_catalog(mine, bands={"g": "decam-g"})
    with pytest.raises(
        CatalogError, match=r"no column 'gmag' .*columns found: 'ID', 'ra', 'dec', 'g', 'r'"
    ):
        read_catalog(mine, bands={"gmag": "decam2014-g"})
    with pytest.raises(CatalogError, match=r"no column 'e_r'.*columns found"):
        read_catalog(mine, bands={"r": ("decam2014-r", "AB", "e_r")})
    with pytest.raises(CatalogError, match="band 'decam2014-g' is given twice"):
        read_catalog(mine, bands={"g": "decam2014-g", "r": "decam2014-g"})
    with pytest.raises(CatalogError, match=r"'decs' is not a preset \(refcat2, des, des_psf"):
        read_catalog(mine, bands="decs")
    with pytest.raises(CatalogError, match="has no Vega -> AB offset"):
        read_catalog(mine, bands={"g": ("decam2014-g", "Vega")})
    with pytest.raises(CatalogError, match="system must be 'AB', 'Vega' or a number"):
        read_catalog(mine, bands={"g": ("decam2014-g", "ST")})
    with pytest.raises(CatalogError, match="unknown key"):
        read_catalog(mine, bands={"g": {"band": "decam2014-g", "err": "x"}})
    with pytest.raises(CatalogError, match="has none of the magnitude columns of 'panstarrs'"):
        read_catalog(mine, bands="panstarrs")
    with pytest.raises(CatalogError, match="default_error must be between 0 and 9"):
        read_catalog(mine, bands={"g": "decam2014-g"}, default_error=-1.0)
    with pytest.raises(CatalogError, match=r"cannot read 'g'; write COLUMN=BAND"):
        read_catalog(mine, bands="g,r=decam2014-r")
    with pytest.raises(TypeError, match="bands must be None, a preset name"):
        read_catalog(mine, bands=42)
    with pytest.raises(CatalogError, match=r"has no E\(B-V\) column 'EBV'"):
        read_catalog(mine, bands={"g": "decam2014-g"}, ebv_column="EBV")
    with pytest.raises(CatalogError, match="band map file .*nope.toml' does not exist"):
        read_catalog(mine, bands=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[bands\n")
    with pytest.raises(CatalogError, match="is not valid TOML"):
        read_catalog(mine, bands=bad)
    nobands = tmp_path / "nobands.toml"
    nobands.write_text("default_error = 0.02\n")
    with pytest.raises(CatalogError, match=r"has no \[bands\] table"):
        read_catalog(mine, bands=nobands)
    extra = tmp_path / "extra.toml"
    extra.write_text('defaut_error = 0.02\n[bands]\ng = "decam2014-g"\n')
    with pytest.raises(CatalogError, match=r"unknown key\(s\) \['defaut_error'\]"):
        read_catalog(mine, bands=extra)


def test_inline_and_resolve():
    bm = parse_inline(" g = decam2014-g , J=twomass-J:Vega:e_J, u=sdss2010-u:-0.04 ")
    assert [(s.column, s.band, s.system, s.offset, s.error) for s in bm.bands] == [
        ("g", "decam2014-g", "AB", 0.0, None),
        ("J", "twomass-J", "Vega", 0.91, "e_J"),
        ("u", "sdss2010-u", "offset", -0.04, None),
    ]
    layouts, name = resolve_bands(None)
    assert name == "refcat2" and layouts == PRESETS["refcat2"].layouts
    assert resolve_bands("DES")[1] == "des" and len(resolve_bands("des")[0]) == 2
    assert resolve_bands(bm) == ((bm,), "band map")
    assert isinstance(resolve_bands({"g": "decam2014-g"})[0][0], BandMap)


# --------------------------------------------------------------------------
# E(B-V) of each star
# --------------------------------------------------------------------------


def test_ebv_from_refcat2_ag_and_agaia(tmp_path):
    rows = [dict(ROWS[0]) for _ in range(5)]
    rows[0].update(Ag="0.362", AGaia="0.3")  # Ag first
    rows[1].update(Ag="", AGaia="0.25")  # no Ag: AGaia
    rows[2].update(Ag="0", AGaia="0")  # RefCat2's "no extinction given"
    rows[3].update(Ag="0", AGaia="")  # likewise
    rows[4].update(Ag="-0.1", AGaia="5.0")  # negative, then above EBV_MAX: none
    with pytest.warns(
        kx.KspecWarning, match=r"1 row\(s\) \(data row 5; line 6\) have an E\(B-V\) above 0\.5"
    ):
        cat = read_catalog(write_csv(tmp_path / "ag.csv", rows))
    np.testing.assert_allclose(
        cat.ebv,
        [0.362 / band_ratio("panstarrs-g"), 0.25 / band_ratio("gaiadr2-G"), np.nan, np.nan, np.nan],
    )
    assert cat.ebv_source.values.tolist() == [
        "RefCat2 Ag (PS1 g)", "RefCat2 AGaia (Gaia G)", "", "", "",
    ]  # fmt: skip
    assert cat.ebv.attrs["units"] == "mag" and EBV_MAX == 0.5
    np.testing.assert_allclose(cat.Ag, [0.362, np.nan, 0.0, 0.0, -0.1])  # the raw columns stay


def test_ebv_column_names_and_precedence(tmp_path):
    base = {"RA": [1.0, 1.1, 1.2], "Dec": [1.0, 1.1, 1.2], "g": [15.0] * 3, "dg": [0.01] * 3}
    for name in ("EBV", "E(B-V)", "E_BV", "ebv_sfd", "EBV_SFD98"):
        path = write_table(tmp_path / "e.csv", {**base, name: [0.05, "", -0.02]})
        cat = read_catalog(path)
        np.testing.assert_allclose(cat.ebv, [0.05, np.nan, np.nan])
        assert cat.ebv_source.values.tolist() == [f"ebv column {name!r}", "", ""]
    # the column first, RefCat2's Ag for the stars it lacks
    path = write_table(
        tmp_path / "both.csv", {**base, "EBV": [0.05, "", ""], "Ag": [0.362, 0.362, 0.0]}
    )
    cat = read_catalog(path)
    np.testing.assert_allclose(cat.ebv, [0.05, 0.362 / band_ratio("panstarrs-g"), np.nan])
    # an explicit column wins over the usual names
    path = write_table(tmp_path / "two.csv", {**base, "EBV": [0.05] * 3, "sfd": [0.07] * 3})
    np.testing.assert_allclose(read_catalog(path, ebv_column="sfd").ebv, 0.07)
    assert read_catalog(path, ebv_column="sfd").ebv_source.values[0] == "ebv column 'sfd'"


def test_no_ebv_anywhere(full, tmp_path):
    cat = read_catalog(write_csv(tmp_path / "x.csv", columns=["RA", "Dec", "g", "dg"]))
    assert np.isnan(cat.ebv).all() and cat.ebv_source.values.tolist() == ["", "", ""]


def test_associate_carries_the_ebv_onto_the_standards(tmp_path):
    sim = make_exposure(
        52, n_fiber=20, n_standard=4, n_pixel=512, ebv=(0.05, 0.2), directory=tmp_path
    )
    standards = kx.select_standards(sim.red)
    out = kx.associate_catalog(standards, sim.catalog_path)
    np.testing.assert_allclose(
        out.std_ebv, np.round(sim.truth["ag"].values, 3) / band_ratio("panstarrs-g")
    )
    assert out.std_ebv.attrs["units"] == "mag" and out.std_ebv.dims == ("standard",)
    assert out.std_ebv_source.values.tolist() == ["RefCat2 Ag (PS1 g)"] * 4
    # a standard without a catalogue row: NaN and ""
    cat = sim.catalog.drop(index=int(sim.truth["catalog_row"].values[1]))
    out = kx.associate_catalog(standards, cat)
    assert np.isnan(out.std_ebv.values[1]) and out.std_ebv_source.values[1] == ""
    assert np.isfinite(out.std_ebv.values[[0, 2, 3]]).all()
    # without Ag (the plain simulator: Ag = AGaia = 0): none
    plain = make_exposure(53, n_fiber=16, n_standard=3, n_pixel=512, directory=tmp_path / "p")
    out = kx.associate_catalog(kx.select_standards(plain.red), plain.catalog_path)
    assert np.isnan(out.std_ebv).all() and set(out.std_ebv_source.values) == {""}
    # a catalogue in another system, through bands=
    frame = sim.catalog.rename(columns={"g": "gmag", "dg": "e_gmag"})
    frame = frame[["RA", "Dec", "gmag", "e_gmag"]]
    out = kx.associate_catalog(standards, frame, bands={"gmag": ("panstarrs-g", "AB", "e_gmag")})
    assert out.std_mag.band.values.tolist() == ["panstarrs-g"]
    with pytest.raises(TypeError, match="already a Dataset"):
        kx.associate_catalog(standards, kx.read_catalog(sim.catalog_path), bands="des")


# --------------------------------------------------------------------------
# The command line's --bands and apply_fluxcal's CALIBFLUX_BANDS
# --------------------------------------------------------------------------


def test_cli_bands_option(tmp_path):
    from kspec_xr.cli import _calibration_options, _parser, main

    base = ["fluxcal", "in.fits", "-o", "out.fits", "--catalog", "c.csv"]
    options = _calibration_options(_parser().parse_args(base))
    assert options["bands"] is None
    options = _calibration_options(_parser().parse_args([*base, "--bands", "DES"]))
    assert options["bands"] == "des"
    options = _calibration_options(
        _parser().parse_args([*base, "--bands", "g=decam2014-g,Jmag=twomass-J:Vega:e_Jmag"])
    )
    bm = options["bands"]
    assert isinstance(bm, BandMap) and bm.band_names == ("decam2014-g", "twomass-J")
    assert bm.bands[1].offset == 0.91 and bm.bands[1].error == "e_Jmag"
    toml = tmp_path / "m.toml"
    toml.write_text('[bands]\n"CoAdd mag_auto g" = "decam2014-g"\n')
    batch = ["batch", "x.fits", "--out-dir", "o", "--catalog", "c.csv", "--bands", str(toml)]
    bm = _calibration_options(_parser().parse_args(batch))["bands"]
    assert isinstance(bm, BandMap) and bm.bands[0].column == "CoAdd mag_auto g"
    # a bad map stops the command before any work, with the reason (exit status 2)
    red = tmp_path / "in.fits"
    red.write_bytes(b"")
    for command in (
        ["fluxcal", str(red), "-o", str(tmp_path / "o.fits"), "--catalog", "c.csv"],
        ["batch", str(red), "--out-dir", str(tmp_path / "o"), "--catalog", "c.csv"],
    ):
        assert main([*command, "--bands", "sdss2"]) == 2
        assert main([*command, "--bands", "g=decam-g"]) == 2
    assert not (tmp_path / "o.fits").exists()


def test_flux_calibrate_and_apply_fluxcal_take_bands(monkeypatch):
    import inspect

    import kspec_xr.pipeline as pipeline

    assert inspect.signature(kx.flux_calibrate).parameters["bands"].default is None
    seen = {}
    monkeypatch.setattr(pipeline, "calibrate_file", lambda *a, **k: seen.update(k))
    args = {"CALIBFLUX": True, "CALIBFLUX_CATALOG": "c.csv", "CALIBFLUX_BANDS": "ozdes"}
    assert pipeline.apply_fluxcal("x.fits", args)
    assert seen["bands"] == "ozdes"
    pipeline.apply_fluxcal("x.fits", {"CALIBFLUX": True, "CALIBFLUX_CATALOG": "c.csv"})
    assert seen["bands"] is None
