"""RED files <-> Datasets: round trips, laziness, products, bad input, assign files."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.table import Table
from conftest import build_red_hdulist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kspec_xr import (
    add_history,
    assign_fiber_types,
    open_red,
    primary_header,
    read_assign,
    with_header_cards,
    write_red,
)
from kspec_xr._base import maskbits
from kspec_xr._base.errors import CatalogError, OutputExistsError, RedFileError

SUMS = {"CHECKSUM", "DATASUM"}


# --- helpers --------------------------------------------------------------------------


def assert_fits_identical(a, b):
    """Same HDUs in the same order, the same cards and the same data (dtype and values)."""
    with fits.open(a) as left, fits.open(b) as right:
        assert len(left) == len(right), [h.name for h in left] + ["|"] + [h.name for h in right]
        for index, (x, y) in enumerate(zip(left, right, strict=True)):
            cards_x = [c.image for c in x.header.cards if c.keyword not in SUMS]
            cards_y = [c.image for c in y.header.cards if c.keyword not in SUMS]
            assert cards_x == cards_y, f"HDU {index} ({x.name}) header differs"
            assert type(x) is type(y)
            if isinstance(x, fits.BinTableHDU):
                assert x.columns.names == y.columns.names
                assert x.columns.formats == y.columns.formats
                for name in x.columns.names:
                    assert_same_array(x.data[name], y.data[name], f"{x.name}.{name}")
            elif x.data is None:
                assert y.data is None
            else:
                assert_same_array(x.data, y.data, x.name)


def assert_same_array(x, y, where):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype, (where, x.dtype, y.dtype)
    assert x.shape == y.shape, (where, x.shape, y.shape)
    assert np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"), where


def assert_identical(a, b):
    """``xr.testing.assert_identical`` plus equal dtypes (which it does not check)."""
    xr.testing.assert_identical(a, b)
    for name, var in a.variables.items():
        assert var.dtype == b[name].dtype, (name, var.dtype, b[name].dtype)


def netcdf_round_trip(ds, folder):
    path = Path(folder) / f"rt{len(os.listdir(folder))}.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as nc:
        return nc.load()


def write_hdul(hdul, folder, name="in.fits", checksum=False, tail=()):
    """Write ``hdul``, then append pre-encoded HDUs (``tail``, bytes)."""
    path = Path(folder) / name
    hdul.writeto(path, checksum=checksum)
    if tail:
        with open(path, "ab") as out:
            out.write(b"".join(tail))
    return path


def scaled_table_bytes(rng) -> bytes:
    """A binary table with a TSCAL/TZERO column, encoded by hand.

    (astropy 8 cannot write one from physical values, so build the raw
    integer table and add the scaling cards to its header.)
    """
    raw = rng.integers(-1000, 1000, 4).astype(np.int32)
    table = fits.BinTableHDU.from_columns([fits.Column(name="SCALED", format="J", array=raw)])
    table.header["EXTNAME"] = "SCTAB"
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(buffer)
    with fits.open(io.BytesIO(buffer.getvalue())) as hdul:
        info, header = hdul.fileinfo(1), hdul[1].header.copy()
    header.insert("TFORM1", ("TSCAL1", 0.5), after=True)
    header.insert("TSCAL1", ("TZERO1", 3.0), after=True)
    data = buffer.getvalue()[info["datLoc"] : info["datLoc"] + info["datSpan"]]
    return header.tostring().encode("ascii") + data


# --- the round-trip property ---------------------------------------------------------


@st.composite
def red_files(draw):
    """An HDUList of a RED file with random shape, layout, extra HDUs and cards."""
    nfib = draw(st.integers(1, 9))
    npix = draw(st.one_of(st.just(nfib), st.integers(2, 24)))
    hdul = build_red_hdulist(
        nfib,
        npix,
        dispaxis=draw(st.sampled_from([None, 1, 2])),
        ra_unit=draw(st.sampled_from(["radians", "rad", "deg", "degrees", None])),
        wavela=draw(st.sampled_from(["common", "per-fiber", None])),
        seed=draw(st.integers(0, 2**16)),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    header = hdul[0].header
    text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=90)
    for line in draw(st.lists(text, max_size=3)):
        header.add_history(line)
    for line in draw(st.lists(text, max_size=2)):
        header.add_comment(line)
    header["LONGSTR"] = (draw(st.text(st.sampled_from("abc xyz/"), min_size=70, max_size=200)), "x")
    header["HIERARCH ESO DET CHIP ID"] = draw(st.integers(-5, 5))
    extras = draw(st.lists(st.sampled_from(sorted(EXTRA_HDUS)), max_size=4))
    for name in extras:
        hdul.append(EXTRA_HDUS[name](nfib, npix, rng))
    tail = [scaled_table_bytes(rng)] if draw(st.booleans()) else []
    return hdul, tail


def _sky(nfib, npix, rng):
    return fits.ImageHDU(rng.normal(size=npix).astype(np.float32), name="SKY")


def _thput(nfib, npix, rng):
    return fits.ImageHDU(rng.uniform(0.5, 1.5, nfib).astype(np.float32), name="THPUT")


def _shifts(nfib, npix, rng):
    return fits.ImageHDU(rng.normal(size=(3, nfib)), name="SHIFTS")


def _uint_image(nfib, npix, rng):
    hdu = fits.ImageHDU(rng.integers(0, 65535, (2, npix)).astype(np.uint16), name="COUNTS")
    hdu.header["BUNIT"] = "adu"
    return hdu


def _scaled_image(nfib, npix, rng):
    hdu = fits.ImageHDU(rng.uniform(-100, 100, (nfib, 4)).astype(np.float32), name="SCALED")
    hdu.scale("int16", bscale=0.25, bzero=10.0)
    return hdu


def _header_only(nfib, npix, rng):
    hdu = fits.ImageHDU(name="NOTES")
    hdu.header["NOTE"] = "header-only extension"
    return hdu


def _table(nfib, npix, rng):
    n = int(rng.integers(0, 5))
    columns = [
        fits.Column(name="LABEL", format="12A", array=[f"row {i}" for i in range(n)]),
        fits.Column(name="COUNT", format="J", array=rng.integers(-9, 9, n)),
        fits.Column(name="VALUE", format="D", unit="Angstrom", array=rng.normal(size=n)),
        fits.Column(name="FLAG", format="L", array=rng.integers(0, 2, n).astype(bool)),
        fits.Column(name="VEC", format="3E", array=rng.normal(size=(n, 3)).astype(np.float32)),
        fits.Column(name="U16", format="I", bzero=32768, array=np.arange(n, dtype=np.uint16)),
        fits.Column(name="B", format="B", array=np.arange(n, dtype=np.uint8)),
    ]
    hdu = fits.BinTableHDU.from_columns(columns, name="QC")
    hdu.header["QCVER"] = (3, "table version")
    return hdu


def _mask(nfib, npix, rng):
    return fits.ImageHDU(rng.integers(0, 2, (nfib, npix)).astype(np.int16) * 8, name="MASK")


EXTRA_HDUS = {
    "SKY": _sky,
    "THPUT": _thput,
    "SHIFTS": _shifts,
    "COUNTS": _uint_image,
    "SCALED": _scaled_image,
    "NOTES": _header_only,
    "QC": _table,
    "MASK": _mask,
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(red=red_files(), checksum=st.booleans())
def test_round_trip_property(red, checksum):
    hdul, tail = red
    with tempfile.TemporaryDirectory() as folder:
        source = write_hdul(hdul, folder, checksum=checksum, tail=tail)
        ds = open_red(source)
        # FITS -> Dataset -> FITS
        written = write_red(ds, Path(folder) / "out.fits")
        assert_fits_identical(source, written)
        assert written.read_bytes() == source.read_bytes()  # astropy-written input: bytes too
        if checksum:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with fits.open(written, checksum=True) as verified:
                    verified.verify("exception")
        # Dataset -> netCDF -> Dataset, and on to the same FITS file
        back = netcdf_round_trip(ds, folder)
        assert_identical(back, ds)
        again = write_red(back, Path(folder) / "again.fits")
        assert_fits_identical(source, again)


def test_hdu_order_and_headers_are_kept(tmp_path, make_red):
    hdul = make_red(dispaxis=2)
    hdul.insert(1, _sky(7, 40, np.random.default_rng(1)))
    hdul.append(_table(7, 40, np.random.default_rng(2)))
    source = write_hdul(hdul, tmp_path)
    ds = open_red(source)
    assert ds.attrs["fits_hdu_order"].split("\n") == ["SKY", "VARIANCE", "WAVELA", "FIBRES", "QC"]
    assert ds.SKY.dims == ("wavelength",)
    assert "QC_row" in ds.dims and ds.QC_LABEL.attrs["fits_column"] == "LABEL"
    assert primary_header(ds)["DISPAXIS"] == 2
    assert ds.flux.dims == ("fiber", "wavelength")
    np.testing.assert_array_equal(ds.flux.values, hdul[0].data.T)
    assert_fits_identical(source, write_red(ds, tmp_path / "out.fits"))


# --- data model -------------------------------------------------------------------------


@pytest.mark.parametrize("ra_unit", ["radians", "deg"])
def test_coordinates_types_and_units(tmp_path, make_red, ra_unit):
    hdul = make_red(ra_unit=ra_unit)
    ds = open_red(write_hdul(hdul, tmp_path))
    raw = hdul["FIBRES"].data
    expected = np.degrees(raw["RA"]) if ra_unit == "radians" else raw["RA"]
    np.testing.assert_array_equal(ds.ra.values, expected)
    assert ds.ra.attrs["units"] == ds.dec.attrs["units"] == "deg"
    assert ("ra_fits" in ds.coords) is (ra_unit == "radians")
    assert list(ds.fiber.values) == list(range(1, 8))
    assert list(ds.fiber_type.values) == list("PCSUCPN")
    assert ds.fiber_name.values[0] == "star 0"
    assert ds.X.attrs["units"] == "microns" and ds.MAGNITUDE.dtype == np.float32
    assert ds.flux.dtype == ds.variance.dtype == np.float32
    assert ds.mask.dtype == np.int32
    assert ds.flux.attrs["units"] == "count" and ds.variance.attrs["units"] == "count2"
    assert ds.wavelength.attrs["units"] == "Angstrom"
    for name, var in ds.variables.items():
        assert isinstance(var.attrs.get("units"), str), name
    for key, value in maskbits.flag_attrs().items():
        np.testing.assert_array_equal(ds.mask.attrs[key], value)


def test_radians_round_trip_bit_exact(tmp_path, make_red):
    hdul = make_red()
    ra = np.random.default_rng(0).uniform(0, 2 * np.pi, 1000)
    ra = ra[np.radians(np.degrees(ra)) != ra][:7]  # values a naive round trip changes
    hdul["FIBRES"].data["RA"] = ra
    ds = open_red(write_hdul(hdul, tmp_path))
    np.testing.assert_array_equal(ds.ra.values, np.degrees(ra))
    with fits.open(write_red(ds, tmp_path / "out.fits")) as out:
        assert out["FIBRES"].data["RA"].tobytes() == ra.astype(">f8").tobytes()


def test_mask_bits_and_mask_hdu(tmp_path, make_red):
    hdul = make_red()
    hdul.append(_mask(7, 40, np.random.default_rng(3)))
    ds = open_red(write_hdul(hdul, tmp_path))
    flux, variance = hdul[0].data, hdul["VARIANCE"].data
    expected = maskbits.data_mask(flux, variance) | hdul["MASK"].data
    np.testing.assert_array_equal(ds.mask.values, expected)
    assert ds.mask.values[0, 0] & maskbits.bit("NONFINITE")
    assert np.all(ds.mask.values[-1] & maskbits.bit("NODATA"))
    assert_fits_identical(tmp_path / "in.fits", write_red(ds, tmp_path / "out.fits"))


def test_bunit_and_variance_units(tmp_path, make_red):
    hdul = make_red()
    hdul[0].header["BUNIT"] = "erg/cm2/s/A"
    ds = open_red(write_hdul(hdul, tmp_path))
    assert ds.flux.attrs["units"] == "erg/cm2/s/A"
    assert ds.variance.attrs["units"] == "(erg/cm2/s/A)2"


def test_wcs_wavelength_and_per_fiber_grid(tmp_path, make_red):
    ds = open_red(write_hdul(make_red(wavela=None, dispaxis=2), tmp_path))
    np.testing.assert_array_equal(ds.wavelength.values, 5000.0 + 1.25 * np.arange(40))
    per_fiber = open_red(write_hdul(make_red(wavela="per-fiber"), tmp_path, "pf.fits"))
    assert per_fiber.flux.dims == ("fiber", "pixel")
    assert per_fiber.wavelength.dims == ("fiber", "pixel")
    assert "wavelength" not in per_fiber.dims


# --- laziness ---------------------------------------------------------------------------


def test_chunked_equals_eager_without_computing(tmp_path, make_red, raise_if_dask_computes):
    hdul = make_red(dispaxis=2)
    rng = np.random.default_rng(4)
    hdul.append(fits.ImageHDU(_mask(7, 40, rng).data.T, name="MASK"))
    for extra in (_thput, _scaled_image, _uint_image, _table):
        hdul.append(extra(7, 40, rng))
    source = write_hdul(hdul, tmp_path)
    eager = open_red(source)
    with raise_if_dask_computes():
        lazy = open_red(source, chunks={"fiber": 3})
        same = open_red(source, chunks=3)
    for name in ("flux", "variance", "mask", "MASK", "THPUT", "SCALED"):
        assert lazy[name].chunks is not None, name
    assert lazy.flux.chunks == ((3, 3, 1), (40,))
    assert lazy.mask.chunks == ((3, 3, 1), (40,))
    assert_identical(lazy.compute(), eager)
    assert_identical(same.compute(), eager)
    with raise_if_dask_computes(max_computes=1):  # the writer computes once
        written = write_red(lazy, tmp_path / "out.fits")
    assert_fits_identical(source, written)


def test_lazy_file_removed_before_compute(tmp_path, red_path):
    lazy = open_red(red_path, chunks=3)
    red_path.unlink()
    with pytest.raises(RedFileError, match="run1_red.fits.*cannot read it any more"):
        lazy.compute()


@pytest.mark.parametrize(
    "chunks, error",
    [
        ({"wavelength": 10}, ValueError),
        ({"band": 2}, ValueError),
        (0, ValueError),
        (True, TypeError),
    ],
)
def test_bad_chunks(red_path, chunks, error):
    with pytest.raises(error, match="chunk"):
        open_red(red_path, chunks=chunks)


# --- products and provenance ------------------------------------------------------------


def with_products(ds):
    nwave = ds.sizes["wavelength"]
    rng = np.random.default_rng(7)
    standards = {
        "standard_fiber": ("standard", np.array([2, 5], dtype=np.int32), {"units": "1"}),
        "standard_name": ("standard", np.array(["HD 1", "BD+17 4708"]), {"units": ""}),
    }
    products = {
        "teff": ("standard", np.array([6010.0, 5875.5]), {"units": "K", "long_name": "Teff"}),
        "accepted": ("standard", np.array([True, False])),
        "reason": ("standard", np.array(["", "rms too high"]), {"units": ""}),
        "star_calibration": (
            ("standard", "wavelength"),
            rng.normal(size=(2, nwave)).astype(np.float32),
            {"units": "erg/cm2/s/A/count", "qc": np.array([1.5, 2.5])},
        ),
        "band_residual": (("standard", "band"), rng.normal(size=(2, 3)), {"units": "mag"}),
        "band_flags": (("standard", "band"), np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int8)),
        "calibration": ("wavelength", rng.uniform(1, 2, nwave), {"units": "erg/cm2/s/A/count"}),
        "calibration_rms": ("wavelength", rng.uniform(0, 0.1, nwave).astype(np.float32)),
        "throughput": ("fiber", rng.uniform(0.8, 1.2, ds.sizes["fiber"]), {"units": "1"}),
        "scale_error": ((), np.float64(0.013), {"units": "1"}),
        "u16": ("standard", np.array([1, 65535], dtype=np.uint16)),
    }
    out = ds.assign(products).assign_coords(standards)
    out = out.assign_coords(band=("band", np.array(["g", "r", "i"]), {"units": ""}))
    out = out.assign_coords(ok_fiber=("fiber", ds.fiber_type.values != "N"))
    out["flux"] = out.flux.assign_attrs(units="erg/(s cm2 Angstrom)")
    out["variance"] = out.variance.assign_attrs(units="erg2/(s2 cm4 Angstrom2)")
    out["mask"] = out.mask | np.int32(maskbits.bit("TELLURIC")) * (out.wavelength > 5030)
    out["mask"].attrs = maskbits.flag_attrs()  # arithmetic kept wavelength's attrs
    out = with_header_cards(out, FLUXCAL=(True, "flux calibrated"), FCALNSTR=1)
    return out.assign_attrs(title="calibrated exposure")


def test_products_round_trip(tmp_path, red_path):
    ds = with_products(open_red(red_path))
    path = write_red(ds, tmp_path / "products.fits")
    back = open_red(path)
    # the writer set BUNIT from the flux units: the only change in the header
    expected = primary_header(ds)
    expected["BUNIT"] = "10**-17 erg/(s cm2 Angstrom)"  # float32, scaled (write_red's dtype)
    assert primary_header(back) == expected

    # and BUNIT on the WAVELA HDU: a calibrated file has units on every HDU with data
    def wave_header(d):
        return fits.Header.fromstring(d["wavelength"].attrs["fits_header"], sep="\n")

    added = wave_header(back)
    assert added.pop("BUNIT") == "Angstrom" and added == wave_header(ds)
    as_read = back.assign_coords(
        wavelength=back["wavelength"].assign_attrs(
            fits_header=ds["wavelength"].attrs["fits_header"]
        )
    )
    spectra = ["flux", "variance"]  # read back as float64 physical values
    assert_identical(
        as_read.assign_attrs(fits_header=ds.attrs["fits_header"]).drop_vars(spectra),
        ds.drop_vars(spectra),
    )
    for name in spectra:
        assert back[name].dtype == np.float64
        assert back[name].attrs["units"] == ds[name].attrs["units"]
        xr.testing.assert_allclose(back[name], ds[name].astype(np.float64), rtol=1e-7)
    header = fits.getheader(path)
    assert header["BUNIT"] == "10**-17 erg/(s cm2 Angstrom)" and header["FLUXCAL"] is True
    assert fits.getheader(path, "VARIANCE")["BUNIT"] == "10**-34 erg2/(s2 cm4 Angstrom2)"
    assert "KSPECXR VERSION" not in header  # no history lines were added
    # and the file written from the re-read Dataset is the same file
    assert_fits_identical(path, write_red(back, tmp_path / "again.fits"))
    assert_identical(netcdf_round_trip(back, tmp_path), back)
    # chunked products read lazily
    lazy = open_red(path, chunks={"fiber": 2})
    assert lazy.throughput.chunks is not None
    assert_identical(lazy.compute(), back)


def test_history_becomes_header_cards(tmp_path, red_path):
    ds = open_red(red_path)
    processed = add_history(add_history(ds, "stage one"), "stage two", timestamp=False)
    assert "history" not in ds.attrs  # pure
    assert processed.attrs["history"].endswith("] stage one\nstage two")
    back = open_red(write_red(processed, tmp_path / "out.fits"))
    assert back.attrs["history"] == processed.attrs["history"]  # it survives the file
    header = primary_header(back)
    history = [str(line) for line in header["HISTORY"]]
    assert history[0] == "2dfdr reduced" and history[-1] == "stage two"
    assert header["HIERARCH KSPECXR VERSION"]
    again = fits.getheader(write_red(back, tmp_path / "again.fits"))
    assert list(again["HISTORY"]) == list(header["HISTORY"])


def test_with_header_cards_is_pure(red_path):
    ds = open_red(red_path)
    before = ds.attrs["fits_header"]
    out = with_header_cards(ds, {"DATE-OBS": "2026-01-01"}, FCALNSTR=(3, "standards used"))
    out = with_header_cards(out, FCALRMSLONG=np.float64(0.5))
    assert ds.attrs["fits_header"] == before
    header = primary_header(out)
    assert header["FCALNSTR"] == 3 and header.comments["FCALNSTR"] == "standards used"
    assert header["DATE-OBS"] == "2026-01-01" and header["FCALRMSLONG"] == 0.5
    with pytest.raises(TypeError, match="FCALNSTR"):
        with_header_cards(ds, FCALNSTR=[1, 2])


def test_edited_fibres_are_written(tmp_path, red_path):
    ds = open_red(red_path)
    ra = ds.ra.values.copy()
    ra[0] = 10.0
    edited = ds.assign_coords(ra=ds.ra.copy(data=ra)).drop_vars("MAGNITUDE")
    back = open_red(write_red(edited, tmp_path / "out.fits"))
    assert "MAGNITUDE" not in back.coords
    np.testing.assert_allclose(back.ra.values[0], 10.0, rtol=1e-15)
    np.testing.assert_array_equal(back.ra.values[1:], ds.ra.values[1:])
    np.testing.assert_array_equal(back.X.values, ds.X.values)
    selected = open_red(write_red(ds.isel(fiber=[1, 4]), tmp_path / "sel.fits"))
    assert list(selected.fiber_type.values) == ["C", "C"]
    np.testing.assert_array_equal(selected.flux.values, ds.flux.values[[1, 4]])


def test_role_hdus_keep_their_place_when_attrs_are_lost(tmp_path, red_path):
    ds = open_red(red_path)
    stripped = ds.assign_coords(
        wavelength=("wavelength", ds.wavelength.values + 0.5), fiber=("fiber", ds.fiber.values)
    )
    assert not stripped.wavelength.attrs and not stripped.fiber.attrs
    path = write_red(stripped, tmp_path / "out.fits")
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "VARIANCE", "WAVELA", "FIBRES"]
        np.testing.assert_array_equal(hdul["WAVELA"].data[3], ds.wavelength.values + 0.5)
    back = open_red(path)
    assert list(back.fiber_type.values) == list(ds.fiber_type.values)
    np.testing.assert_array_equal(back.ra.values, ds.ra.values)


def test_scaled_data_round_trip_and_are_not_quantised(tmp_path, make_red):
    rng = np.random.default_rng(9)
    hdul = make_red()
    hdul.append(_scaled_image(7, 40, rng))
    source = write_hdul(hdul, tmp_path, tail=[scaled_table_bytes(rng)])
    ds = open_red(source)
    assert ds.SCALED.dtype == np.float32 and ds.SCTAB_SCALED.dtype == np.float64
    assert_fits_identical(source, write_red(ds, tmp_path / "same.fits"))
    edited = ds.assign(SCALED=ds.SCALED * np.float32(1.001), SCTAB_SCALED=ds.SCTAB_SCALED / 3)
    back = open_red(write_red(edited, tmp_path / "edited.fits"))
    np.testing.assert_array_equal(back.SCALED.values, edited.SCALED.values)
    np.testing.assert_array_equal(back.SCTAB_SCALED.values, edited.SCTAB_SCALED.values)


def test_dataset_without_fits_attrs_is_written(tmp_path):
    nfib, npix = 3, 5
    ds = xr.Dataset(
        {
            "flux": (
                ("fiber", "wavelength"),
                np.ones((nfib, npix), np.float32),
                {"units": "count"},
            ),
            "variance": (("fiber", "wavelength"), np.ones((nfib, npix), np.float32)),
        },
        coords={
            "fiber": np.arange(1, nfib + 1),
            "wavelength": ("wavelength", 4000.0 + np.arange(npix), {"units": "Angstrom"}),
            "fiber_type": ("fiber", np.array(["P", "C", "S"])),
            "ra": ("fiber", np.array([1.0, 2.0, 3.0]), {"units": "deg"}),
        },
    )
    back = open_red(write_red(ds, tmp_path / "new.fits"))
    np.testing.assert_array_equal(back.flux.values, ds.flux.values)
    np.testing.assert_array_equal(back.wavelength.values, ds.wavelength.values)
    assert list(back.fiber_type.values) == ["P", "C", "S"]
    np.testing.assert_array_equal(back.ra.values, ds.ra.values)


# --- writing safely -----------------------------------------------------------------------


def test_overwrite_protection(tmp_path, red_path):
    ds = open_red(red_path)
    original = red_path.read_bytes()
    with pytest.raises(OutputExistsError, match=r"overwrite=True") as info:
        write_red(ds, red_path)
    assert str(red_path) in str(info.value) and "--overwrite" in str(info.value)
    assert red_path.read_bytes() == original
    lazy = add_history(open_red(red_path, chunks=2), "in place")  # reads red_path lazily
    assert write_red(lazy, red_path, overwrite=True) == red_path
    assert "in place" in str(fits.getheader(red_path)["HISTORY"])
    np.testing.assert_array_equal(open_red(red_path).flux.values, ds.flux.values)


def test_failed_write_leaves_nothing(tmp_path, red_path, monkeypatch):
    lazy = open_red(red_path, chunks=2)
    original = red_path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_red(lazy, tmp_path / "new.fits")
    with pytest.raises(OSError, match="disk full"):
        write_red(lazy, red_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [red_path.name]
    assert red_path.read_bytes() == original


def test_unwritable_values_fail_before_writing(tmp_path, red_path):
    ds = open_red(red_path).assign(when=("fiber", np.arange(7).astype("datetime64[s]")))
    with pytest.raises(TypeError, match="dtype"):
        write_red(ds, tmp_path / "out.fits")
    assert sorted(p.name for p in tmp_path.iterdir()) == [red_path.name]


def test_missing_destination_folder(tmp_path, red_path):
    with pytest.raises(RedFileError, match="nowhere.*does not exist"):
        write_red(open_red(red_path), tmp_path / "nowhere" / "out.fits")


# --- bad input ----------------------------------------------------------------------------


def _without(hdul, name):
    del hdul[name]
    return hdul


def _bad_variance(hdul):
    hdul["VARIANCE"].data = hdul["VARIANCE"].data[:, :-1]
    return hdul


def _short_fibres(hdul):
    hdul["FIBRES"] = fits.BinTableHDU(hdul["FIBRES"].data[:-1], name="FIBRES")
    return hdul


def _no_type(hdul):
    columns = [c for c in hdul["FIBRES"].columns if c.name != "TYPE"]
    hdul["FIBRES"] = fits.BinTableHDU.from_columns(columns, name="FIBRES")
    return hdul


BAD_FILES = {
    "no FIBRES": (lambda h: _without(h, "FIBRES"), "FIBRES"),
    "variance shape": (_bad_variance, "VARIANCE"),
    "fibres rows": (_short_fibres, "FIBRES"),
    "no TYPE": (_no_type, "TYPE"),
    "no variance": (lambda h: _without(h, "VARIANCE"), "VARIANCE"),
    "no wavelength": (lambda h: _without(h, "WAVELA"), "WAVELA.*CRVAL1"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_red_files(tmp_path, make_red, case):
    corrupt, hdu = BAD_FILES[case]
    path = write_hdul(corrupt(make_red()), tmp_path, "bad_red.fits")
    with pytest.raises(RedFileError, match=hdu) as info:
        open_red(path)
    assert "bad_red.fits" in str(info.value)


def test_differing_grids_when_a_common_one_is_required(tmp_path, make_red):
    path = write_hdul(make_red(wavela="per-fiber"), tmp_path, "pf_red.fits")
    with pytest.raises(RedFileError, match=r"pf_red.fits.*WAVELA.*resampl") as info:
        open_red(path, require_common_grid=True)
    assert "require_common_grid" in str(info.value)


def test_truncated_file(tmp_path, red_path):
    cut = tmp_path / "cut_red.fits"
    cut.write_bytes(red_path.read_bytes()[:-2880])
    with pytest.raises(RedFileError, match=r"cut_red.fits is truncated.*HDU #3"):
        open_red(cut)


def test_unreadable_files(tmp_path):
    with pytest.raises(RedFileError, match="missing.fits.*does not exist"):
        open_red(tmp_path / "missing.fits")
    with pytest.raises(RedFileError, match="is not a file"):
        open_red(tmp_path)
    text = tmp_path / "notes.fits"
    text.write_text("this is not FITS\n" * 200)
    with pytest.raises(RedFileError, match="notes.fits.*FITS"):
        open_red(text)
    one_d = tmp_path / "spectrum.fits"
    fits.PrimaryHDU(np.ones(5, np.float32)).writeto(one_d)
    with pytest.raises(RedFileError, match="spectrum.fits.*PRIMARY.*2-D"):
        open_red(one_d)
    with pytest.raises(TypeError):
        open_red(42)


def test_unreadable_permissions(red_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(RedFileError, match="run1_red.fits: permission denied"):
        open_red(red_path)


# --- assign files ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".ecsv"])
def test_read_assign_and_set_types(tmp_path, red_path, suffix):
    table = Table({"target_class": [8, 9, 1, 2, 0, 8, 9], "objid": np.arange(7)})
    path = tmp_path / f"assign{suffix}"
    table.write(path, format={".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(suffix, None))
    assign = read_assign(path)
    assert list(assign.fiber_type.values) == list("CSPPUCS")
    ds = open_red(red_path)
    out = assign_fiber_types(ds, assign)
    assert list(out.fiber_type.values) == list("CSPPUCS")
    assert list(ds.fiber_type.values) == list("PCSUCPN")  # pure
    back = open_red(write_red(out, tmp_path / "typed.fits"))
    assert list(back.fiber_type.values) == list("CSPPUCS")


def test_assign_errors(tmp_path, red_path):
    ds = open_red(red_path)
    short = tmp_path / "short.csv"
    Table({"target_class": [8, 9]}).write(short, format="ascii.csv")
    with pytest.raises(CatalogError, match="2 rows.*7 fibers"):
        assign_fiber_types(ds, read_assign(short))
    odd = tmp_path / "odd.csv"
    Table({"target_class": [8, 7]}).write(odd, format="ascii.csv")
    with pytest.raises(CatalogError, match=r"odd.csv.*unknown classes \[7\]"):
        read_assign(odd)
    none = tmp_path / "none.csv"
    Table({"cls": [8]}).write(none, format="ascii.csv")
    with pytest.raises(CatalogError, match="none.csv.*target_class"):
        read_assign(none)
    with pytest.raises(CatalogError, match="does not exist"):
        read_assign(tmp_path / "missing.csv")


# --- a calibrated exposure through the files ------------------------------------------


@pytest.fixture(scope="module")
def calibrated_file(tmp_path_factory):
    import kspec_xr as kx
    from kspec_xr.testing import make_exposure

    folder = tmp_path_factory.mktemp("calibrated")
    sim = make_exposure(5, n_fiber=30, n_standard=5, n_pixel=1024, directory=folder)
    out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path).compute()
    return out, write_red(out, folder / "fcal.fits")


def test_a_calibrated_file_writes_back_byte_for_byte(calibrated_file, tmp_path):
    _, path = calibrated_file
    again = write_red(open_red(path), tmp_path / "again.fits")
    assert again.read_bytes() == path.read_bytes()


def test_history_survives_the_round_trip(calibrated_file, tmp_path):
    out, path = calibrated_file
    back = open_red(path)
    assert back.attrs["history"].startswith(out.attrs["history"])
    assert "combine_calibrations" in back.attrs["history"]
    # a stage run after re-reading adds its line once, and only that line
    more = add_history(back, "a later step")
    header = primary_header(open_red(write_red(more, tmp_path / "more.fits")))
    cards = [str(c) for c in header["HISTORY"]]
    assert sum("a later step" in c for c in cards) == 1
    assert sum("combine_calibrations" in c for c in cards) == 1


def test_no_attribute_travels_to_a_variable_it_does_not_describe(calibrated_file):
    out, path = calibrated_file
    for ds in (out, open_red(path)):
        for name, var in ds.variables.items():
            meanings = str(var.attrs.get("flag_meanings", "")).split()
            for key in ("flag_values", "flag_masks"):
                if key in var.attrs:
                    assert len(np.atleast_1d(var.attrs[key])) == len(meanings), (name, key)
            assert not ("flag_values" in var.attrs and "flag_masks" in var.attrs), name
            if "system" in var.attrs:
                assert var.attrs.get("units") == "mag", name
        assert "flag_values" not in ds["mask"].attrs
        assert ds["flux"].attrs["units"] == "erg/(s cm2 Angstrom)"
