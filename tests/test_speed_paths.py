"""The shortcuts of issue 12 keep every guarantee of the slow paths they skip.

- A prepared grid found intact is not hashed again while its files keep the
  verification stamps recorded then; any write to a file (a flipped byte, a
  copy, a restored mtime) still sends it through the SHA-256 check.
- A BOSZ folder opened again in a process gives the grid a new open gives,
  and any change to its files is a new open.
- ``with_status`` on Variables gives what it gave on DataArrays (eager, lazy).
- ``write_red``'s direct image encoding, header merge and header parsing
  write the bytes astropy's own round trip wrote.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from conftest import flip_byte, write_small_standin

import kspec_xr as kx
from kspec_xr._base import schema
from kspec_xr._base.errors import TemplateError
from kspec_xr.io import _fits
from kspec_xr.io import write as write_module
from kspec_xr.templates import bosz, prepare_templates
from kspec_xr.templates import prepared as prepared_module
from kspec_xr.templates.prepared import STAMPS_FILE, PreparedTemplates
from kspec_xr.templates.standin import write_standin_grid
from kspec_xr.testing import raise_if_dask_computes

WAVE = np.linspace(5000.0, 6500.0, 700)
FWHM = 3.0
SMALL = {"teff": (5750, 6000), "logg": (4.0, 4.5), "mh": (0.0,)}


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory):
    return kx.open_bosz(write_small_standin(tmp_path_factory, **SMALL))


@pytest.fixture(scope="module")
def truth(small_grid):
    return prepare_templates(small_grid, WAVE, FWHM, cache=False)


@pytest.fixture(autouse=True)
def fresh_memory(fresh_prepared_memory):
    """Each test starts as a new process would: nothing prepared in memory."""


@pytest.fixture
def hashed(monkeypatch):
    """The arrays hashed (by their sizes), call by call."""
    calls: list[int] = []
    real = prepared_module._hash_array

    def counting(array):
        calls.append(int(np.asarray(array).nbytes))
        return real(array)

    monkeypatch.setattr(prepared_module, "_hash_array", counting)
    return calls


def assert_same_grid(got: PreparedTemplates, want: PreparedTemplates) -> None:
    for name in prepared_module._ARRAYS:
        np.testing.assert_array_equal(np.asarray(got._arrays[name]), want._arrays[name], name)
    assert got.bands == want.bands


def stamped_entry(small_grid, folder: Path, monkeypatch) -> Path:
    """A cache entry whose arrays carry verification stamps (files old enough: margin 0)."""
    monkeypatch.setattr(prepared_module, "STAMP_MARGIN_NS", 0)
    entry = folder / prepare_templates(small_grid, WAVE, FWHM, cache=folder).attrs["cache_key"]
    prepared_module._MEMORY._entries.clear()
    time.sleep(0.05)  # later writes get later times than the files' own
    PreparedTemplates.open(entry)
    record = json.loads((entry / STAMPS_FILE).read_text())
    assert set(record["arrays"]) == set(prepared_module._ARRAYS)
    time.sleep(0.05)
    return entry


def test_a_stamped_entry_is_not_hashed_again(small_grid, truth, tmp_path, monkeypatch, hashed):
    entry = stamped_entry(small_grid, tmp_path, monkeypatch)
    hashed.clear()
    got = PreparedTemplates.open(entry)
    assert hashed == []
    assert_same_grid(got, truth)
    hashed.clear()
    got = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)  # the cache's way in
    assert hashed == []
    assert_same_grid(got, truth)


def test_files_just_written_are_hashed_and_not_stamped(small_grid, tmp_path, hashed):
    entry = tmp_path / prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path).attrs["cache_key"]
    prepared_module._MEMORY._entries.clear()
    hashed.clear()
    PreparedTemplates.open(entry)  # within STAMP_MARGIN_NS of their writing
    assert len(hashed) == len(prepared_module._ARRAYS)
    assert not (entry / STAMPS_FILE).exists()


@pytest.mark.parametrize("name", ["flux", "scoring_cumulative", "mags"])
@pytest.mark.parametrize("restore_mtime", [False, True])
def test_a_byte_flipped_after_stamping_is_found(
    small_grid, tmp_path, monkeypatch, name, restore_mtime
):
    entry = stamped_entry(small_grid, tmp_path, monkeypatch)
    path = entry / f"{name}.npy"
    st = path.stat()
    flip_byte(path)
    if restore_mtime:  # the ctime still moves
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(TemplateError, match=rf"{name}\.npy does not match its SHA-256"):
        PreparedTemplates.open(entry)


def test_an_entry_copied_elsewhere_is_hashed(small_grid, truth, tmp_path, monkeypatch, hashed):
    entry = stamped_entry(small_grid, tmp_path / "a", monkeypatch)
    copy = tmp_path / "b" / entry.name
    shutil.copytree(entry, copy)  # the stamps come along; the inodes do not
    hashed.clear()
    assert_same_grid(PreparedTemplates.open(copy), truth)
    assert len(hashed) == len(prepared_module._ARRAYS)


def test_stamps_of_another_entry_do_not_count(small_grid, tmp_path, monkeypatch, hashed):
    entry = stamped_entry(small_grid, tmp_path, monkeypatch)
    other = (
        tmp_path / prepare_templates(small_grid, WAVE, FWHM + 1, cache=tmp_path).attrs["cache_key"]
    )
    shutil.copy(entry / STAMPS_FILE, other / STAMPS_FILE)
    hashed.clear()
    PreparedTemplates.open(other)
    assert len(hashed) == len(prepared_module._ARRAYS)


def test_an_edited_meta_is_refused_with_stamps(small_grid, tmp_path, monkeypatch):
    entry = stamped_entry(small_grid, tmp_path, monkeypatch)
    meta = json.loads((entry / "meta.json").read_text())
    meta["bands"][:2] = meta["bands"][1::-1]
    (entry / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TemplateError, match=r"meta\.json does not match its digest"):
        PreparedTemplates.open(entry)


@pytest.mark.parametrize("junk", [b"", b"\x00 not json", b"[1, 2]", b'{"digest": 3, "arrays": 1}'])
def test_unreadable_stamps_mean_hashing(small_grid, truth, tmp_path, monkeypatch, hashed, junk):
    entry = stamped_entry(small_grid, tmp_path, monkeypatch)
    (entry / STAMPS_FILE).write_bytes(junk)
    hashed.clear()
    assert_same_grid(PreparedTemplates.open(entry), truth)
    assert len(hashed) == len(prepared_module._ARRAYS)
    hashed.clear()
    PreparedTemplates.open(entry)  # written again
    assert hashed == []


def test_a_folder_that_takes_no_stamps_still_opens(small_grid, truth, tmp_path, monkeypatch):
    entry = tmp_path / prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path).attrs["cache_key"]
    monkeypatch.setattr(prepared_module, "STAMP_MARGIN_NS", 0)
    time.sleep(0.05)

    def refuse(path, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(prepared_module, "atomic_output", refuse)
    assert_same_grid(PreparedTemplates.open(entry), truth)
    assert not (entry / STAMPS_FILE).exists()


def test_the_stamps_file_does_not_invalidate_the_memory_cache(small_grid, tmp_path, monkeypatch):
    entry = stamped_entry(small_grid, tmp_path, monkeypatch)
    first = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    (entry / STAMPS_FILE).unlink()
    assert prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path) is first


# ---------------------------------------------------------------------------
# a BOSZ folder opened again
# ---------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    return write_standin_grid(tmp_path / "bosz", **SMALL, wave_range=(3600, 7500))


def fresh_open(path, **options):
    """What open_bosz gives without the grids this process opened before."""
    bosz._OPENED._entries.clear()
    return kx.open_bosz(path, **options)


def test_a_folder_opened_again_gives_the_same_grid(folder, monkeypatch):
    first = fresh_open(folder)
    calls = []
    real = bosz._select
    monkeypatch.setattr(bosz, "_select", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = kx.open_bosz(folder)
    assert calls == []  # reused
    xr.testing.assert_identical(again, first)
    assert again.data.name == first.data.name
    again.attrs["grid_id"] = "changed by a user"  # each caller has its own attributes
    assert kx.open_bosz(folder).attrs["grid_id"] == first.attrs["grid_id"]
    xr.testing.assert_identical(kx.open_bosz(folder).compute(), fresh_open(folder).compute())
    assert kx.open_bosz(folder, wave_range=(5000, 6000)).sizes != first.sizes  # other options


def _spectrum(root: Path) -> Path:
    return sorted(root.rglob("bosz2024_*.txt.gz"))[0]


@pytest.mark.parametrize(
    "change",
    ["rewritten, mtime restored", "touched", "removed", "added", "wave grid rewritten", "marker"],
)
def test_a_changed_folder_is_opened_anew(folder, change):
    first = fresh_open(folder)
    spectrum = _spectrum(folder)
    wave_file = Path(first.attrs["wavelength_grid"])
    if change == "rewritten, mtime restored":
        st = spectrum.stat()
        spectrum.write_bytes(spectrum.read_bytes())
        os.utime(spectrum, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "touched":
        os.utime(spectrum, ns=(0, 1_000_000_000))
    elif change == "removed":
        spectrum.unlink()
    elif change == "added":
        shutil.copy(spectrum, spectrum.with_name(spectrum.name.replace("t5750", "t5500")))
    elif change == "wave grid rewritten":
        lines = wave_file.read_text().splitlines()
        wave_file.write_text("\n".join(f"{float(x) * 1.0001:.6f}" for x in lines) + "\n")
    else:
        marker = next(folder.parent.rglob("README_standin.txt"), None)
        (marker.unlink() if marker is not None else (folder / "README_standin.txt").touch())
    time.sleep(0.01)
    again = kx.open_bosz(folder)
    want = fresh_open(folder)
    xr.testing.assert_identical(again, want)
    if change in ("touched", "removed", "added"):
        assert again.attrs["grid_id"] != first.attrs["grid_id"]
    if change == "wave grid rewritten":
        assert not np.array_equal(again["wavelength"], first["wavelength"])
    if change == "marker":
        assert again.attrs["library"] != first.attrs["library"]


# ---------------------------------------------------------------------------
# with_status: the DataArray version it replaced, as the reference
# ---------------------------------------------------------------------------


def with_status_reference(ds, status):
    status = status.astype("int16")
    names = [n for n in schema._DIAGNOSTICS if n in ds and ds[n].dims == ("standard",)]
    limits = {k: float(v) for k, v in ds.attrs.items() if k.startswith("gate_")}
    limits = {k.removeprefix("gate_"): v for k, v in limits.items()}
    limits["radius"] = float(ds.attrs.get("catalog_radius_arcsec", np.nan))
    reason = xr.apply_ufunc(
        schema._reasons_kernel,
        status,
        *(ds[n].astype(float) for n in names),
        kwargs={"keys": [schema._DIAGNOSTICS[n] for n in names], "limits": limits},
        dask="parallelized",
        output_dtypes=[np.dtype(f"<U{schema.REASON_WIDTH}")],
        keep_attrs=False,
    )
    return ds.assign(
        standard_status=schema.bare(status).assign_attrs(schema.status_attrs()),
        standard_reason=schema.bare(reason).assign_attrs(
            long_name="why a standard is not used ('' = used)"
        ),
    )


@pytest.fixture(scope="module")
def sim(small_exposure):
    return small_exposure


@pytest.fixture(scope="module")
def calibrated(sim):
    out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path).compute()
    return write_module.calibration_header(out)  # once: its HISTORY time is fixed


def statuses(ds):
    status = ds["standard_status"]
    yield status  # with the standard coordinate
    yield xr.DataArray(status.values, dims="standard")  # bare
    yield xr.where(ds["std_snr"] < np.nanmedian(ds["std_snr"]), 5, status)  # derived
    yield status.astype("int64").assign_attrs(units="1")


def test_with_status_gives_what_the_dataarray_version_gave(calibrated):
    for status in statuses(calibrated):
        xr.testing.assert_identical(
            schema.with_status(calibrated, status), with_status_reference(calibrated, status)
        )
    lazy = calibrated.chunk({"fiber": 7, "standard": 4})
    with raise_if_dask_computes():
        got = schema.with_status(lazy, lazy["standard_status"])
    assert got["standard_reason"].chunks is not None
    xr.testing.assert_identical(
        got.compute(), with_status_reference(calibrated, calibrated["standard_status"])
    )


def test_with_status_still_refuses_a_status_of_other_standards(calibrated):
    other = calibrated["standard_status"].assign_coords(
        standard=calibrated["standard"].values + 100
    )
    with pytest.raises(ValueError, match="exact"):
        with_status_reference(calibrated, other)
    with pytest.raises(ValueError, match="exact"):
        schema.with_status(calibrated, other)


# ---------------------------------------------------------------------------
# write_red: the astropy round trip it replaced, as the reference
# ---------------------------------------------------------------------------


def encoded_by_astropy(hdu, primary):
    hdus = [hdu] if primary else [fits.PrimaryHDU(), hdu]
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    raw = buffer.getvalue()
    index = 0 if primary else 1
    with fits.open(io.BytesIO(raw), lazy_load_hdus=False) as hdul:
        info = hdul.fileinfo(index)
        header = hdul[index].header.copy()
    return header, raw[info["datLoc"] : info["datLoc"] + info["datSpan"]]


def merged_by_inserting(stored, generated, renumber=None):
    """merge_header as it was: list insertions, the index rebuilt after each."""
    wanted = {card.keyword: card for card in generated.cards}
    out = []
    for card in stored.cards:
        keyword = card.keyword
        split = _fits._split_column_key(keyword)
        if split is not None and renumber is not None:
            if renumber.get(split[1]) is None:
                continue
            keyword = f"{split[0]}{renumber[split[1]]}"
        if not _fits._is_structural(keyword):
            out.append(
                card if keyword == card.keyword else fits.Card(keyword, card.value, card.comment)
            )
            continue
        new = wanted.get(keyword)
        if new is None:
            continue
        if keyword == card.keyword and _fits._same_value(card.value, new.value):
            out.append(card)
        else:
            out.append(fits.Card(keyword, new.value, card.comment or new.comment))
    present = {card.keyword: i for i, card in enumerate(out)}
    anchor = -1
    for card in generated.cards:
        if card.keyword in present:
            anchor = present[card.keyword]
            continue
        if _fits._same_value(card.value, _fits._default_for(card.keyword)):
            continue
        anchor += 1
        out.insert(anchor, card)
        present = {c.keyword: i for i, c in enumerate(out)}
    return fits.Header(out)


@pytest.fixture
def reference_writer(monkeypatch):
    def use():
        monkeypatch.setattr(_fits, "_astropy_encoded", encoded_by_astropy)
        monkeypatch.setattr(_fits, "_PLAIN_IMAGE", ())
        monkeypatch.setattr(write_module, "merge_header", merged_by_inserting)

    return use


@pytest.mark.parametrize("name", ["fcal.fits", "fcal.fits.gz", "fcal64.fits", "unprocessed"])
def test_write_red_writes_the_bytes_of_the_astropy_round_trip(
    calibrated, sim, tmp_path, reference_writer, name
):
    ds = kx.open_red(sim.red_path) if name == "unprocessed" else calibrated
    dtype = "float64" if "64" in name else "float32"
    target = "raw.fits" if name == "unprocessed" else name
    fast = kx.write_red(ds, tmp_path / f"fast-{target}", dtype=dtype)
    reference_writer()
    slow = kx.write_red(ds, tmp_path / f"slow-{target}", dtype=dtype)
    read = gzip.decompress if name.endswith(".gz") else (lambda b: b)
    assert read(fast.read_bytes()) == read(slow.read_bytes())
    if name == "unprocessed":
        assert fast.read_bytes() == Path(sim.red_path).read_bytes()


def test_merge_header_inserts_as_list_insertion_did():
    rng = np.random.default_rng(12)
    structural = ["XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT"]
    structural += [
        f"{k}{n}" for k in ("TTYPE", "TFORM", "TUNIT", "TDIM", "TZERO") for n in (1, 2, 3)
    ]
    other = ["EXTNAME", "OBJECT", "COMMENT", "HISTORY", "TLMIN1"]
    values = [0, 1, 2, "a", "E", 1.0]
    for _ in range(500):
        stored, generated = fits.Header(), fits.Header()
        for _ in range(rng.integers(0, 12)):
            key = str(rng.choice(structural + other))
            if key in ("COMMENT", "HISTORY"):
                stored.append((key, "x"), useblanks=False, bottom=True)
            else:
                stored.append((key, values[rng.integers(6)], str(rng.choice(["", "c"]))))
        for _ in range(rng.integers(0, 12)):
            generated.append((str(rng.choice(structural)), values[rng.integers(6)], "g"))
        renumber = [None, {1: 1, 2: 3, 3: 2}, {2: 1}][rng.integers(3)]
        got = _fits.merge_header(stored, generated, renumber)
        assert got.tostring() == merged_by_inserting(stored, generated, renumber).tostring()


@pytest.mark.parametrize("dtype", ["u1", "i2", ">i4", "<i8", ">f4", "f8", "i1", "u2", "u4"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("primary", [False, True])
def test_an_image_is_encoded_as_astropy_encodes_it(monkeypatch, dtype, shape, primary):
    rng = np.random.default_rng(3)
    data = (rng.normal(size=shape) * 100).astype(dtype)
    if data.dtype.kind == "f":
        data.flat[:3] = [np.nan, -0.0, np.inf]
    data = data.T if len(shape) > 1 else data  # not C-contiguous
    header, payload = _fits.encode_image(data, primary=primary)
    monkeypatch.setattr(_fits, "_astropy_encoded", encoded_by_astropy)
    monkeypatch.setattr(_fits, "_PLAIN_IMAGE", ())
    want_header, want_payload = _fits.encode_image(data, primary=primary)
    assert payload == want_payload
    assert header.tostring() == want_header.tostring()
    assert [(c.keyword, c.value, type(c.value)) for c in header.cards] == [
        (c.keyword, c.value, type(c.value)) for c in want_header.cards
    ]


def test_unit_strings_are_parsed_once_with_the_same_answers():
    for units in [
        "erg/(s cm2 Angstrom)",
        "erg/cm2/s/A",
        "Counts",
        "(erg/cm2/s/A)2",
        "1",
        "dex",
        "10**-17 erg/(s cm2 Angstrom)",
        "count",
        "nonsense unit",
        " mag ",
        "",
    ]:
        assert _fits._fits_units(units) == _fits._fits_units_text.__wrapped__(units.strip()) or (
            not units.strip() and _fits._fits_units(units) is None
        )
        assert _fits._parse_unit(units) == _fits._parse_unit_text.__wrapped__(units)
        assert _fits._fits_parses(units) == _fits._fits_parses_text.__wrapped__(units)
    assert _fits._parse_unit(None) is None and _fits._fits_units(["m"]) is None
