"""Damaged RED files: every fault is one ``RedFileError`` line naming what is wrong.

The faults of the fault-injection pass of issue 11, each made from a simulated
RED file (``kspec_xr.testing.make_exposure``): bad wavelengths (WAVELA, WCS
cards, CUNIT), bytes beyond ASCII in FIBRES, repeated and corrupt header cards,
damaged ``KX*`` cards, headers that declare more data than the file holds,
FIFOs and devices, and compressed (gzip, bzip2, xz) input.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from kspec_xr import open_red
from kspec_xr._base.errors import KspecWarning, RedFileError
from kspec_xr.cli import main
from kspec_xr.io import read as read_module
from kspec_xr.io._fits import encode_attrs
from kspec_xr.testing import make_exposure

# HDUs of the simulated file: PRIMARY, VARIANCE, WAVELA, FIBRES, SKY, THPUT
VARIANCE, WAVELA, FIBRES = 1, 2, 3


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return make_exposure(
        1, n_fiber=12, n_standard=4, n_pixel=800, directory=tmp_path_factory.mktemp("faults")
    )


@pytest.fixture(scope="module")
def raw(sim) -> bytes:
    return Path(sim.red_path).read_bytes()


# --- making damaged files -----------------------------------------------------------------


def edited(sim, tmp_path, name, edit) -> Path:
    """A copy of the simulated file, changed by ``edit(hdul)`` and written by astropy."""
    path = tmp_path / name
    with fits.open(sim.red_path) as hdul:
        copy = fits.HDUList([hdu.copy() for hdu in hdul])
    edit(copy)
    copy.writeto(path)
    return path


def card_offset(data: bytes, hdu: int, keyword: str) -> int:
    """Byte offset of the first ``keyword`` card in the header of HDU ``hdu``."""
    with fits.open(io.BytesIO(data)) as hdul:
        start = hdul.fileinfo(hdu)["hdrLoc"]
    for offset in range(start, len(data), 80):
        if data[offset : offset + 8].decode("latin-1").rstrip() == keyword:
            return offset
        if data[offset : offset + 8] == b"END     ":
            break
    raise KeyError(keyword)


def with_card(data: bytes, hdu: int, keyword: str, card: bytes) -> bytes:
    """``data`` with the ``keyword`` card of HDU ``hdu`` overwritten by ``card`` (raw bytes)."""
    offset = card_offset(data, hdu, keyword)
    return data[:offset] + card.ljust(80)[:80] + data[offset + 80 :]


def written(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path, match, **kwargs) -> str:
    """The message of the RedFileError ``open_red(path)`` raises; one line naming the file."""
    with pytest.raises(RedFileError, match=match) as info:
        open_red(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and Path(path).name in message
    return message


# --- wavelengths ----------------------------------------------------------------------------


def _wavela(change):
    def edit(hdul):
        wave = hdul["WAVELA"].data.copy()
        change(wave)
        hdul["WAVELA"].data = wave

    return edit


WAVELA_FAULTS = {
    "reversed": (lambda w: w.__setitem__(slice(None), w[:, ::-1]), r"fibre 1 .*pixel 1 to 2"),
    "repeated pixel": (
        lambda w: w.__setitem__((slice(None), 5), w[:, 4]),
        r"fibre 1 .*pixel 5 to 6",
    ),
    "one fibre reversed": (
        lambda w: w.__setitem__(3, w[3, ::-1]),
        r"fibre 4, the wavelengths do not increase",
    ),
    "NaN": (lambda w: w.__setitem__((6, 10), np.nan), r"fibre 7, pixel 11: .*nan"),
    "zero": (lambda w: w.__setitem__((0, 0), 0.0), r"fibre 1, pixel 1: .*positive"),
}


@pytest.mark.parametrize("case", sorted(WAVELA_FAULTS))
def test_wavela_must_rise_and_be_finite(sim, tmp_path, case):
    change, where = WAVELA_FAULTS[case]
    path = edited(sim, tmp_path, "wave_red.fits", _wavela(change))
    refused(path, rf"HDU WAVELA: {where}")
    refused(path, r"HDU WAVELA", chunks={"fiber": 5})


def _wcs(**cards):
    """Without WAVELA: the wavelengths come from the primary header's WCS cards."""

    def edit(hdul):
        del hdul["WAVELA"]
        for keyword, value in cards.items():
            hdul[0].header[keyword] = value

    return edit


@pytest.mark.parametrize(
    ("cards", "card"),
    [
        ({"CDELT1": 0.0}, "CDELT1"),
        ({"CDELT1": -7.0}, "CDELT1"),
        ({"CDELT1": "abc"}, "CDELT1"),
        ({"CRVAL1": "abc"}, "CRVAL1"),
        ({"CRPIX1": "abc"}, "CRPIX1"),
        ({"CRVAL1": -9000.0}, "CRVAL1"),
        ({"CTYPE1": "WAVE-LOG", "CDELT1": -0.01}, "CDELT1"),
        ({"CUNIT1": "furlongs"}, "CUNIT1"),
        ({"CUNIT1": "s"}, "CUNIT1"),
        ({"CUNIT1": "Hz"}, "CUNIT1"),
    ],
)
def test_bad_wcs_cards(sim, tmp_path, cards, card):
    path = edited(sim, tmp_path, "wcs_red.fits", _wcs(**cards))
    refused(path, rf"HDU PRIMARY, card {card} = ")


def test_nan_step_card(sim, tmp_path):
    path = edited(sim, tmp_path, "wcs_red.fits", _wcs())
    data = with_card(path.read_bytes(), 0, "CDELT1", b"CDELT1  =                  NaN")
    refused(written(tmp_path, "nan_red.fits", data), r"HDU #0: card CDELT1 cannot be parsed")


@pytest.mark.parametrize(
    ("unit", "per_angstrom"), [("Angstrom", 1.0), ("angstrom", 1.0), ("nm", 0.1), ("m", 1e-10)]
)
def test_cunit_lengths_are_converted_to_angstrom(sim, tmp_path, unit, per_angstrom):
    with fits.open(sim.red_path) as hdul:
        crval, cdelt = hdul[0].header["CRVAL1"], hdul[0].header["CDELT1"]
    expected = open_red(sim.red_path).wavelength.values
    cards = {"CUNIT1": unit, "CRVAL1": crval * per_angstrom, "CDELT1": cdelt * per_angstrom}
    ds = open_red(edited(sim, tmp_path, "unit_red.fits", _wcs(**cards)))
    assert ds.wavelength.attrs["units"] == "Angstrom"
    np.testing.assert_allclose(ds.wavelength.values, expected, rtol=1e-12)


# --- FIBRES strings -------------------------------------------------------------------------


def test_non_ascii_fibre_name_is_read_as_question_mark(sim, raw, tmp_path):
    with fits.open(sim.red_path) as hdul:
        start = hdul.fileinfo(FIBRES)["datLoc"]
        width = hdul[FIBRES].header["NAXIS1"]
        names = list(hdul[FIBRES].data["NAME"])
    data = bytearray(raw)
    data[start + 1] = 0xE9  # the 2nd byte of NAME (the first column) of fibre 1
    data[start + 2 * width + 1] = 0xFF  # ... and of fibre 3
    path = written(tmp_path, "latin_red.fits", bytes(data))
    with pytest.warns(KspecWarning, match=r"HDU FIBRES, column NAME: fibres 1, 3 hold bytes"):
        ds = open_red(path)
    got = ds.fiber_name.values
    assert got[0] == names[0][0] + "?" + names[0][2:]
    assert got[2] == names[2][0] + "?" + names[2][2:]
    assert list(got[[1, 3]]) == [names[1], names[3]]


# --- header cards -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hdu", "spare", "card", "match"),
    [
        (0, "INSTRUME", b"NAXIS1  =                  801", r"HDU #0 \(PRIMARY\): keyword NAXIS1"),
        (
            0,
            "INSTRUME",
            b"CRVAL1  =               3800.0",
            r"CRVAL1 appears 2 times .*3700.0, 3800",
        ),
        (VARIANCE, "GCOUNT", b"NAXIS2  =                   13", r"HDU #1 \(VARIANCE\): .*NAXIS2"),
    ],
)
def test_repeated_card_with_another_value(raw, tmp_path, hdu, spare, card, match):
    # the second card takes the place of one further down the same header
    data = with_card(raw, hdu, spare, card)
    refused(written(tmp_path, "twice_red.fits", data), match)


def test_repeated_card_with_the_same_value_is_harmless(sim, raw, tmp_path):
    data = with_card(raw, 0, "INSTRUME", b"CRVAL1  =               3700.0")
    ds = open_red(written(tmp_path, "same_red.fits", data))
    xr.testing.assert_equal(ds.wavelength, open_red(sim.red_path).wavelength)


CORRUPT = {
    "no BITPIX": (0, "BITPIX", b"BITPOX  =                  -32", r"HDU #0: no 'BITPIX' card"),
    "no BITPIX in VARIANCE": (
        VARIANCE,
        "BITPIX",
        b"BITPOX  =                  -32",
        r"HDU #1: no 'BITPIX' card",
    ),
    "BITPIX -33": (0, "BITPIX", b"BITPIX  =                  -33", r"HDU #0 .*BITPIX = -33"),
    "BITPIX 7 in FIBRES": (
        FIBRES,
        "BITPIX",
        b"BITPIX  =                    7",
        r"HDU #3 \(FIBRES\): BITPIX = 7",
    ),
    "BITPIX text": (0, "BITPIX", b"BITPIX  =                  abc", r"HDU #0: .*corrupt"),
    "negative NAXIS1": (
        FIBRES,
        "NAXIS1",
        b"NAXIS1  =                   -5",
        r"HDU #3 \(FIBRES\): NAXIS1 = -5",
    ),
    "unknown TFORM": (
        FIBRES,
        "TFORM2",
        b"TFORM2  = 'Z       '",
        r"HDU #3 \(FIBRES\): the column definitions .*'Z'",
    ),
    "no END": (VARIANCE, "END", b"ENX", r"HDU #1: card \d+ is XTENSION.*END card"),
    "unknown XTENSION": (
        WAVELA,
        "XTENSION",
        b"XTENSION= 'FOO     '",
        r"HDU #2 \(WAVELA\): not a standard FITS HDU \(XTENSION = 'FOO'\)",
    ),
    "SIMPLE = F": (0, "SIMPLE", b"SIMPLE  =                    F", r"HDU #0 .*SIMPLE = False"),
    "NUL in a value": (
        0,
        "OBJECT",
        b"OBJECT  = '\x00IMFIELD0001'",
        r"HDU #0: card OBJECT cannot be parsed",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_header(raw, tmp_path, case):
    hdu, keyword, card, match = CORRUPT[case]
    data = with_card(raw, hdu, keyword, card)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's own complaints about the header
        refused(written(tmp_path, "corrupt_red.fits", data), match)


def test_tile_compressed_image_is_refused_as_such(sim, tmp_path):
    def edit(hdul):
        hdul.append(fits.CompImageHDU(np.ones((12, 800), np.float32), name="EXTRA"))

    path = edited(sim, tmp_path, "tiles_red.fits", edit)
    refused(path, r"HDU #6 \(EXTRA\): tile-compressed images are not supported")


# --- kspec_xr's own KX cards ------------------------------------------------------------------


@pytest.fixture
def with_products(sim, tmp_path):
    """The simulated file plus a KXATTRS card, a KXVAR image and a KXDIM table, as the
    writer makes them (built here with astropy, so that the test does not hang on it)."""

    def build(attrs=None, meta=None, column=None):
        def edit(hdul):
            hdul[0].header["KXATTRS"] = attrs or encode_attrs({"": {"run": "night 1"}})
            image = fits.ImageHDU(np.arange(12, dtype=np.float32), name="SCORE")
            image.header["KXVAR"] = "score"
            image.header["KXMETA"] = meta or encode_attrs(
                {"dims": ["fiber"], "coord": False, "dtype": "<f4", "attrs": {"a": np.int16(3)}}
            )
            table = fits.BinTableHDU.from_columns(
                [fits.Column(name="star_rv", format="D", array=np.arange(3.0))], name="STAR"
            )
            table.header["KXDIM"] = "star"
            table.header["KXCOL1"] = column or encode_attrs(
                {"name": "star_rv", "dims": ["star"], "coord": False, "dtype": "<f8", "attrs": {}}
            )
            hdul.extend([image, table])

        return edited(sim, tmp_path, "products_red.fits", edit)

    return build


def test_kx_products_are_read(with_products):
    ds = open_red(with_products())
    assert ds.attrs["run"] == "night 1"
    assert ds.score.attrs["a"] == 3 and ds.score.attrs["a"].dtype == np.int16
    np.testing.assert_array_equal(ds.star_rv.values, [0.0, 1.0, 2.0])


BAD_JSON = {
    "not JSON": ("{not json", "not valid JSON"),
    "a list": ("[1, 2]", "a JSON list, not an object"),
    "bad array dtype": ('{"x": {"__ndarray__": [1], "dtype": "zz", "shape": [1]}}', "malformed"),
    "array without dtype": ('{"x": {"__ndarray__": [1]}}', "malformed array"),
    "array of a wrong shape": (
        '{"x": {"__ndarray__": [1, 2], "dtype": "<i4", "shape": [3]}}',
        "malformed array",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
@pytest.mark.parametrize(
    ("card", "hdu"), [("KXATTRS", "PRIMARY"), ("KXMETA", "SCORE"), ("KXCOL1", "STAR")]
)
def test_damaged_kx_card(with_products, case, card, hdu):
    text, reason = BAD_JSON[case]
    path = with_products(**{{"KXATTRS": "attrs", "KXMETA": "meta", "KXCOL1": "column"}[card]: text})
    refused(path, rf"HDU {hdu}: card {card} cannot be decoded: .*({reason})")


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"dims": ["fiber"], "coord": False, "attrs": {}}, r"card KXMETA has nothing for 'dtype'"),
        ({"dims": "fiber", "coord": False, "dtype": "<f4", "attrs": {}}, r"'fiber' for 'dims'"),
        ({"dims": ["fiber"], "coord": 1, "dtype": "<f4", "attrs": {}}, r"1 for 'coord'"),
        ({"dims": ["fiber"], "coord": False, "dtype": "zz", "attrs": {}}, r"'zz' for 'dtype'"),
        ({"dims": ["a", "b"], "coord": False, "dtype": "<f4", "attrs": {}}, r"cannot decode"),
    ],
)
def test_kx_meta_without_what_the_writer_puts_there(with_products, meta, match):
    refused(with_products(meta=encode_attrs(meta)), rf"HDU SCORE: .*{match}")


def test_kxattrs_nested_too_deeply(with_products):
    path = with_products(attrs="[" * 100_000 + "]" * 100_000)
    refused(path, r"HDU PRIMARY: card KXATTRS cannot be decoded: JSON nested too deeply")


def test_kxattrs_entry_that_is_not_a_dict(with_products):
    refused(with_products(attrs='{"": 5}'), r"HDU PRIMARY: card KXATTRS gives 5 for the Dataset")


def test_specfwhm_that_is_not_a_number_is_one_line_from_the_cli(sim, tmp_path, capsys):
    path = edited(sim, tmp_path, "fwhm_red.fits", lambda h: h[0].header.set("SPECFWHM", "abc"))
    out = tmp_path / "out.fits"
    code = main(["fluxcal", str(path), "--catalog", str(sim.catalog_path), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "SPECFWHM = 'abc'" in err and not out.exists()


# --- resources ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hdu", "card", "match"),
    [
        (FIBRES, b"NAXIS2  =            100000000", r"HDU #3 \(FIBRES\) needs 10700\d+ bytes"),
        (FIBRES, b"PCOUNT  =            100000000", r"HDU #3 \(FIBRES\) needs 100\d+ bytes"),
        (0, b"NAXIS2  =            100000000", r"HDU #0 \(PRIMARY\) needs 320\d+ bytes"),
        (0, b"NAXIS2  =  1000000000000000000", r"HDU #0\b.*(needs 32\d{20} bytes|corrupt)"),
    ],
)
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_inflated_sizes_are_refused_before_reading(raw, tmp_path, hdu, card, match, compress):
    keyword = card[:8].decode().strip()
    data = with_card(raw, hdu, keyword, card)
    name = "big_red.fits.gz" if compress else "big_red.fits"
    path = written(tmp_path, name, gzip.compress(data) if compress else data)
    tracemalloc.start()
    try:
        refused(path, match)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # the file is 190 kB; nothing near the declared size is allocated


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe_red.fits"
    os.mkfifo(fifo)
    refused(fifo, r"pipe_red.fits is not a file but a FIFO")


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_device_and_directory_are_refused(tmp_path):
    refused(Path("/dev/null"), r"/dev/null is not a file but a device")
    refused(tmp_path, r"is not a file but a directory")


# --- compressed input --------------------------------------------------------------------------

COMPRESSORS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_compressed_file_reads_as_the_plain_one(sim, raw, tmp_path, suffix):
    path = written(tmp_path, f"run_red.fits.{suffix}", COMPRESSORS[suffix](raw))
    plain = open_red(sim.red_path)
    xr.testing.assert_identical(open_red(path), plain)
    lazy = open_red(path, chunks={"fiber": 5})
    xr.testing.assert_identical(lazy.compute(), plain)


def test_gzip_of_a_truncated_file(raw, tmp_path):
    path = written(tmp_path, "cut_red.fits.gz", gzip.compress(raw[:-2880]))
    refused(path, r"cut_red.fits.gz is truncated or corrupt \(HDU #5 \(THPUT\) needs")


def test_truncated_gzip_stream(raw, tmp_path):
    path = written(tmp_path, "cut_red.fits.gz", gzip.compress(raw)[:-4000])
    refused(path, r"cannot decompress RED file .*cut_red.fits.gz \(gzip")


def test_gzip_that_unpacks_too_far_is_refused(raw, tmp_path, monkeypatch):
    path = written(tmp_path, "bomb_red.fits.gz", gzip.compress(raw + bytes(2880 * 2000)))
    monkeypatch.setattr(read_module, "_MAX_INFLATION", 20)
    refused(path, r"unpacks to more than 20 times its size")


def test_zip_is_refused(raw, tmp_path):
    path = tmp_path / "run_red.fits.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("run_red.fits", raw)
    refused(path, r"is zip-compressed.*decompress it")
