"""Catalogue association that cannot silently go wrong: names, formats, modes."""

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import Angle
from astropy.table import Table

import kspec_xr as kx
from kspec_xr._base.errors import CatalogError, KspecWarning
from kspec_xr._base.schema import StandardStatus
from kspec_xr.testing import make_exposure


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return make_exposure(
        51, n_fiber=30, n_standard=5, n_pixel=1024, directory=tmp_path_factory.mktemp("sim51")
    )


@pytest.fixture(scope="module")
def standards(sim):
    return kx.select_standards(sim.red)


def _rows(out):
    return out["catalog_row"].values


@pytest.mark.parametrize(
    ("ra", "dec"),
    [
        ("ra", "dec"),
        ("RAJ2000", "DEJ2000"),
        ("_RAJ2000", "_DEJ2000"),
        ("RA_ICRS", "DE_ICRS"),
        ("ALPHA_J2000", "DELTA_J2000"),
    ],
)
def test_vizier_and_sextractor_coordinate_names_match_by_position(
    sim, standards, tmp_path, ra, dec
):
    cat = sim.catalog.rename(columns={"RA": ra, "Dec": dec})
    path = tmp_path / "renamed.csv"
    cat.to_csv(path, index=False)
    out = kx.associate_catalog(standards, path)
    assert out.attrs["catalog_match"] == "position"
    np.testing.assert_array_equal(_rows(out), sim.truth["catalog_row"].values)


def test_sexagesimal_coordinates(sim, standards, tmp_path):
    cat = sim.catalog.copy()
    cat["RA"] = [Angle(v, u.deg).to_string(unit=u.hourangle, sep=":", precision=3) for v in cat.RA]
    cat["Dec"] = [Angle(v, u.deg).to_string(unit=u.deg, sep=" ", precision=2, alwayssign=True)
                  for v in cat.Dec]  # fmt: skip
    path = tmp_path / "sexagesimal.csv"
    cat.to_csv(path, index=False)
    read = kx.read_catalog(path)
    np.testing.assert_allclose(read["ra"].values, sim.catalog["RA"].values, atol=1e-5)
    np.testing.assert_allclose(read["dec"].values, sim.catalog["Dec"].values, atol=1e-5)
    out = kx.associate_catalog(standards, path)
    np.testing.assert_array_equal(_rows(out), sim.truth["catalog_row"].values)


def test_no_coordinates_is_an_error_that_lists_the_columns(sim, standards, tmp_path):
    cat = sim.catalog.drop(columns=["RA", "Dec"])
    path = tmp_path / "blind.csv"
    cat.to_csv(path, index=False)
    with pytest.raises(CatalogError, match=r"no coordinate columns.*found: dstDegrees, objid"):
        kx.associate_catalog(standards, path)
    # ... and order matching needs one row per standard
    with pytest.raises(CatalogError, match="10 rows for 5 standards"):
        kx.associate_catalog(standards, path, method="order")
    ordered = cat.iloc[sim.truth["catalog_row"].values]
    out = kx.associate_catalog(standards, ordered, method="order")
    np.testing.assert_array_equal(_rows(out), np.arange(5))
    mags = out["std_mag"].sel(band="panstarrs-r").values
    np.testing.assert_allclose(mags, ordered["r"].values)


def test_a_dataframe_and_a_table_are_catalogues(sim, standards):
    for catalog in (sim.catalog, Table.from_pandas(sim.catalog)):
        out = kx.associate_catalog(standards, catalog)
        np.testing.assert_array_equal(_rows(out), sim.truth["catalog_row"].values)
    read = kx.read_catalog(sim.catalog)
    np.testing.assert_allclose(
        read["mag"].sel(band="gaiadr2-G").values, sim.catalog["Gaia"].values + 0.1001
    )
    with pytest.raises(TypeError, match="DataFrame, an astropy Table"):
        kx.read_catalog(42)


def test_a_blank_coordinate_drops_only_its_row(sim, standards):
    cat = sim.catalog.astype({"RA": object, "Dec": object})
    field_star = next(r for r in range(len(cat)) if r not in sim.truth["catalog_row"].values)
    cat.loc[field_star, "RA"] = ""
    star_row = int(sim.truth["catalog_row"].values[2])
    cat.loc[star_row, "Dec"] = "n/a"
    with pytest.warns(
        KspecWarning, match=rf"2 row\(s\) \(({field_star}, {star_row}|{star_row}, {field_star})\)"
    ):
        out = kx.associate_catalog(standards, cat)
    expected = sim.truth["catalog_row"].values.copy()
    expected[2] = -1
    np.testing.assert_array_equal(_rows(out), expected)
    assert out["standard_status"].values[2] == StandardStatus.NO_MATCH
    assert "no catalogue star within 2" in str(out["standard_reason"].values[2])


def test_a_catalogue_star_claimed_twice_goes_to_the_closer_fibre(sim, standards):
    cat = sim.catalog.copy()
    rows = sim.truth["catalog_row"].values
    moved = cat.loc[rows[1]].copy()
    moved["RA"] = float(standards["standard_ra"].values[0])
    moved["Dec"] = float(standards["standard_dec"].values[0]) + 0.5 / 3600
    cat.loc[rows[1]] = moved
    out = kx.associate_catalog(standards, pd.concat([cat], ignore_index=True), radius=2.0)
    assert _rows(out)[0] == rows[0]
    assert out["standard_status"].values[1] == StandardStatus.NO_MATCH


def test_a_fibre_without_a_position_is_flagged(sim, standards):
    ds = standards.assign(standard_ra=standards["standard_ra"].where(standards.standard != 3))
    out = kx.associate_catalog(ds, sim.catalog)
    assert out["standard_status"].values[3] == StandardStatus.NO_POSITION
    assert np.all(out["standard_status"].values[[0, 1, 2, 4]] == StandardStatus.OK)


def test_nearest_on_sky_agrees_with_astropy():
    """The NumPy match gives astropy's neighbours and separations, near the poles and RA 0/360."""
    from astropy.coordinates import SkyCoord

    from kspec_xr.kernels.sky import nearest_on_sky

    rng = np.random.default_rng(3)
    cat_ra = np.concatenate([rng.uniform(0, 360, 400), [359.9998, 0.0001, 10.0]])
    cat_dec = np.concatenate([rng.uniform(-90, 90, 400), [-30.0, -30.0, 89.9999]])
    ra = np.concatenate([cat_ra[:50] + rng.normal(0, 1e-4, 50), [359.99997, 190.0]]) % 360
    dec = np.concatenate(
        [np.clip(cat_dec[:50] + rng.normal(0, 1e-4, 50), -90, 90), [-30.0, 89.9999]]
    )
    index, sep = nearest_on_sky(ra, dec, cat_ra, cat_dec, block=1000)  # several blocks
    ref, ref_sep, _ = SkyCoord(ra * u.deg, dec * u.deg).match_to_catalog_sky(
        SkyCoord(cat_ra * u.deg, cat_dec * u.deg)
    )
    np.testing.assert_array_equal(index, ref)
    np.testing.assert_allclose(sep, ref_sep.to_value(u.arcsec), rtol=1e-6, atol=1e-6)
    # the nearest star of a fibre at RA 359.99997 is the one at RA 0.0001
    assert index[50] == 401
    assert sep[50] == pytest.approx(0.00013 * 3600 * np.cos(np.radians(30)), rel=1e-6)
