"""The BOSZ 2024 grid: names, lazy indexing, values, layouts, errors, packing."""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import time

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from kspec_xr._base.errors import OutputExistsError, TemplateError
from kspec_xr.templates import bosz as templates
from kspec_xr.templates import (
    bosz_folder,
    bosz_name,
    open_bosz,
    pack_bosz,
    parse_bosz_name,
    wave_grid_name,
)
from kspec_xr.templates.standin import write_standin_grid

FOUR_PI = 4.0 * np.pi
SMALL = {
    "teff": (5000, 5250, 5500),
    "logg": (4.0, 4.5),
    "mh": (-0.5, 0.0),
    "resolution": 2000,
    "wave_range": (4000.0, 4400.0),
}
R = SMALL["resolution"]


# ---------------------------------------------------------------------------
# helpers: an obvious reader and writer, and a scheduler that refuses to run
# ---------------------------------------------------------------------------


def read_text(path) -> np.ndarray:
    """The slow, obvious reader the fast one is checked against."""
    with gzip.open(path, "rt") as fh:
        return np.array([[float(x) for x in line.split()] for line in fh if line.strip()])


def write_text(path, *columns, fmt="%.6e") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(" ".join(fmt % v for v in row) + "\n" for row in zip(*columns, strict=True))
    path.write_bytes(gzip.compress(rows.encode()))


def name_of(**kw) -> str:
    params = {"alpha": 0.0, "resolution": R, **kw}
    return bosz_name(**params)


class RaiseIfComputes:
    """A dask scheduler that fails the test if anything is computed."""

    def __call__(self, dsk, keys, **kwargs):
        raise RuntimeError("the template grid computed something while it was only being opened")


@pytest.fixture
def counted_reads(monkeypatch):
    """Count the files read by open_bosz's dask tasks (by path)."""
    calls: list[str] = []
    real = templates.read_bosz_table

    def counting(path, **kwargs):
        calls.append(os.fspath(path))
        return real(path, **kwargs)

    monkeypatch.setattr(templates, "read_bosz_table", counting)
    return calls


@pytest.fixture
def small_grid(tmp_path):
    return write_standin_grid(tmp_path / "bosz", **SMALL)


def spectrum_files(root) -> list:
    return sorted(root.rglob("bosz2024_*.txt.gz"))


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------

params_strategy = st.fixed_dictionaries(
    {
        "atm": st.sampled_from(["ap", "mp", "ms"]),
        "teff": st.integers(2800, 60000),
        "logg": st.integers(-2, 18).map(lambda k: k / 2),
        "mh": st.integers(-300, 100).map(lambda k: k / 100),
        "alpha": st.integers(-4, 8).map(lambda k: k / 4),
        "carbon": st.integers(-75, 50).map(lambda k: k / 100),
        "vturb": st.integers(0, 9),
        "resolution": st.sampled_from([500, 1000, 2000, 5000, 10000, 20000, 50000, "orig"]),
        "resampled": st.booleans(),
    }
)


@given(params_strategy)
def test_name_round_trip(params):
    name = bosz_name(**params)
    assert parse_bosz_name(name) == params
    assert name.startswith("bosz2024_") and name.endswith(".txt.gz")


def test_name_matches_the_archive_convention():
    name = bosz_name(teff=5750, logg=4.5, mh=-0.5, resolution=10000)
    assert name == "bosz2024_mp_t5750_g+4.5_m-0.50_a+0.00_c+0.00_v2_r10000_resam.txt.gz"
    assert bosz_name(teff=9000, logg=4.0, mh=0.0, resolution=500, resampled=False).startswith(
        "bosz2024_ap_t9000_g+4.0_m+0.00"
    )
    assert "_ms_t4000_g+3.0_" in bosz_name(teff=4000, logg=3.0, mh=0.0, resolution=500)
    assert bosz_folder(10000, -0.5) == "r10000/m-0.50"
    assert wave_grid_name(10000) == "bosz2024_wave_r10000.txt"


def test_negative_zero_is_written_and_read_as_plus_zero():
    name = bosz_name(teff=6000, logg=-0.0, mh=-0.0, alpha=-0.0, carbon=-1e-9, resolution=10000)
    assert "_g+0.0_m+0.00_a+0.00_c+0.00_" in name
    parsed = parse_bosz_name(name.replace("m+0.00", "m-0.00"))
    assert parsed["mh"] == 0.0 and math.copysign(1.0, parsed["mh"]) == 1.0


def test_parse_accepts_paths_and_plain_txt(tmp_path):
    name = name_of(teff=5000, logg=4.5, mh=0.0)
    assert parse_bosz_name(tmp_path / name)["teff"] == 5000
    assert parse_bosz_name(name[: -len(".gz")])["resolution"] == R


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "spectrum.fits",
        "bosz2017_mp_t5000_g+4.5_m+0.00_a+0.00_c+0.00_v2_r10000_resam.txt.gz",
        "bosz2024_mp_t5000_g4.5_m+0.00_a+0.00_c+0.00_v2_r10000_resam.txt.gz",
        "bosz2024_mp_t5000_g+4.5_m+0.0_a+0.00_c+0.00_v2_r10000_resam.txt.gz",
        "bosz2024_mp_t5000_g+4.5_m+0.00_a+0.00_c+0.00_v2_r10000_lineid.txt.gz",
        "bosz2024_mp_t5000_g+4.5_m+0.00_a+0.00_c+0.00_v2_r10000_resam.txt.gz.part",
        "bosz2024_wave_r10000.txt",
    ],
)
def test_bad_names_are_rejected_by_name(bad):
    with pytest.raises(TemplateError, match=re.escape(repr(bad))):
        parse_bosz_name(bad)


def test_values_the_name_cannot_hold_are_rejected():
    with pytest.raises(TemplateError, match="logg=4.25"):
        bosz_name(teff=5000, logg=4.25, mh=0.0, resolution=10000)
    with pytest.raises(TemplateError, match="teff"):
        bosz_name(teff=5000.5, logg=4.5, mh=0.0, resolution=10000)
    with pytest.raises(TypeError):
        bosz_name(teff=5000, logg="4.5", mh=0.0, resolution=10000)


# ---------------------------------------------------------------------------
# opening is lazy
# ---------------------------------------------------------------------------


def test_opening_reads_no_spectrum_and_computes_nothing(small_grid, counted_reads):
    with dask.config.set(scheduler=RaiseIfComputes()):
        grid = open_bosz(small_grid)
        sub = grid.sel(teff=5250, mh=0.0).isel(wavelength=slice(10, 50))
    assert counted_reads == []
    assert isinstance(grid.data, da.Array) and isinstance(grid["continuum"].data, da.Array)
    assert grid.dims == ("teff", "logg", "mh", "alpha", "wavelength")
    assert grid.chunks[:4] == tuple((1,) * n for n in grid.shape[:4])
    assert grid.chunks[4] == (grid.sizes["wavelength"],)
    sub.compute()
    assert len(counted_reads) == 2  # only the two files of that selection


def test_graph_is_one_task_per_file(small_grid):
    grid = open_bosz(small_grid)
    reads = [
        k
        for k in grid.data.__dask_graph__()
        if isinstance(k, tuple) and str(k[0]).startswith("bosz-read")
    ]
    assert len(reads) == len(spectrum_files(small_grid))


def test_500_names_open_without_reading(tmp_path, counted_reads):
    """Names only: the files are empty, so any read would fail."""
    root = tmp_path / "many"
    root.mkdir()
    (root / wave_grid_name(R)).write_text("\n".join(f"{4000 + i}.0" for i in range(8)))
    count = 0
    for teff in range(5000, 7500, 250):
        for logg in (3.0, 3.5, 4.0, 4.5, 5.0):
            for mh in np.arange(-2.0, 0.5, 0.25):
                (root / name_of(teff=teff, logg=logg, mh=mh)).touch()
                count += 1
    assert count == 500
    t0 = time.perf_counter()
    grid = open_bosz(root)
    elapsed = time.perf_counter() - t0
    print(f"open_bosz on {count} names: {elapsed * 1e3:.1f} ms")
    assert grid.shape == (10, 5, 10, 1, 8)
    assert counted_reads == []
    assert len(grid.data.__dask_graph__()) <= 3 * count  # read + flux slice + continuum slice


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------


def test_values_are_4pi_times_the_file_columns(small_grid, counted_reads):
    grid = open_bosz(small_grid)
    computed = grid.compute()  # computes the continuum coordinate with the data
    files = spectrum_files(small_grid)
    assert sorted(counted_reads) == sorted(map(str, files))  # each file read once for both
    wave = np.loadtxt(small_grid / "wavelength_grids" / wave_grid_name(R))
    np.testing.assert_array_equal(computed["wavelength"].values, wave)
    for path in files:
        p = parse_bosz_name(path)
        node = computed.sel(teff=p["teff"], logg=p["logg"], mh=p["mh"], alpha=p["alpha"])
        table = read_text(path)
        np.testing.assert_allclose(node.values, FOUR_PI * table[:, 0], rtol=1e-15)
        np.testing.assert_allclose(node["continuum"].values, FOUR_PI * table[:, 1], rtol=1e-15)
        assert node["filename"].item() == path.name and node["atm"].item() == "mp"
    assert computed.attrs["units"] == "erg/s/cm2/A" and computed.attrs["resolution"] == R
    assert computed["continuum"].attrs["units"] == "erg/s/cm2/A"
    assert "stand-in" in computed.attrs["library"]


def test_flat_layout_equals_archive_layout(small_grid, tmp_path):
    flat = write_standin_grid(tmp_path / "flat", layout="flat", **SMALL)
    assert not any(p.is_dir() for p in flat.iterdir())
    a, b = open_bosz(small_grid).compute(), open_bosz(flat).compute()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


def test_a_sub_folder_of_the_archive_finds_its_wavelength_grid(small_grid):
    grid = open_bosz(small_grid / f"r{R}" / "m+0.00")
    assert grid.sizes["mh"] == 1
    assert np.isfinite(grid.isel(teff=0, logg=0).values).all()


def test_noresam_files(tmp_path, counted_reads):
    root = write_standin_grid(tmp_path / "nr", kind="noresam", **SMALL)
    assert not (root / "wavelength_grids").exists()
    counted_reads.clear()
    grid = open_bosz(root, wave_range=(4100, 4300))
    assert len(counted_reads) == 1  # the one file whose λ column defines the grid (documented)
    assert grid.attrs["bosz_kind"] == "noresam"
    computed = grid.compute()
    for path in spectrum_files(root):
        p = parse_bosz_name(path)
        table = read_text(path)
        keep = (table[:, 0] >= 4100) & (table[:, 0] <= 4300)
        node = computed.sel(teff=p["teff"], logg=p["logg"], mh=p["mh"], alpha=0.0)
        np.testing.assert_array_equal(node["wavelength"].values, table[keep, 0])
        np.testing.assert_allclose(node.values, FOUR_PI * table[keep, 1], rtol=1e-15)
        np.testing.assert_allclose(node["continuum"].values, FOUR_PI * table[keep, 2], rtol=1e-15)


def test_noresam_file_on_another_wavelength_grid_is_named(tmp_path):
    root = write_standin_grid(tmp_path / "nr", kind="noresam", **SMALL)
    victim = spectrum_files(root)[-1]
    table = read_text(victim)
    write_text(victim, table[:, 0] * 1.001, table[:, 1], table[:, 2])
    grid = open_bosz(root)
    with pytest.raises(TemplateError, match=re.escape(victim.name)):
        grid.compute()


def test_wave_range_trims_inside_the_read(small_grid):
    full = open_bosz(small_grid).compute()
    trimmed = open_bosz(small_grid, wave_range=(4100.0, 4200.0))
    assert trimmed.chunks[4] == (trimmed.sizes["wavelength"],)
    assert trimmed["wavelength"].min() >= 4100 and trimmed["wavelength"].max() <= 4200
    xr.testing.assert_identical(
        trimmed.compute().drop_attrs(), full.sel(wavelength=slice(4100, 4200)).drop_attrs()
    )
    with pytest.raises(TemplateError, match="covers"):
        open_bosz(small_grid, wave_range=(9000, 9100))
    with pytest.raises(ValueError, match="low < high"):
        open_bosz(small_grid, wave_range=(4200, 4100))


def test_a_hole_is_nan_and_never_read(small_grid, counted_reads):
    missing = small_grid / bosz_folder(R, 0.0) / name_of(teff=5250, logg=4.5, mh=0.0)
    missing.unlink()
    grid = open_bosz(small_grid)
    assert grid.shape[:4] == (3, 2, 2, 1)
    computed = grid.compute()
    hole = computed.sel(teff=5250, logg=4.5, mh=0.0, alpha=0.0)
    assert np.isnan(hole.values).all() and np.isnan(hole["continuum"].values).all()
    assert hole["filename"].item() == "" and hole["atm"].item() == ""
    assert str(missing) not in counted_reads
    assert len(counted_reads) == len(spectrum_files(small_grid))
    assert np.isfinite(computed.sel(teff=5250, logg=4.0, mh=0.0).values).all()


def test_duplicate_atmospheres_are_resolved_and_recorded(tmp_path):
    root = write_standin_grid(
        tmp_path / "hot",
        teff=(7500, 7750, 8000),
        logg=(4.0,),
        mh=(0.0,),
        resolution=R,
        wave_range=(4000, 4100),
    )
    folder = root / bosz_folder(R, 0.0)
    mp_file = folder / name_of(teff=7750, logg=4.0, mh=0.0, atm="mp")
    ap_file = folder / name_of(teff=7750, logg=4.0, mh=0.0, atm="ap")
    table = read_text(mp_file)
    write_text(ap_file, 2 * table[:, 0], 2 * table[:, 1])

    default = open_bosz(root).sel(teff=7750, logg=4.0, mh=0.0, alpha=0.0).compute()
    assert default["atm"].item() == "mp" and default["filename"].item() == mp_file.name
    np.testing.assert_allclose(default.values, FOUR_PI * table[:, 0], rtol=1e-15)

    atlas = open_bosz(root, atmosphere="ap")
    node = atlas.sel(teff=7750, logg=4.0, mh=0.0, alpha=0.0).compute()
    assert node["atm"].item() == "ap"
    np.testing.assert_allclose(node.values, FOUR_PI * 2 * table[:, 0], rtol=1e-6)
    assert (
        atlas["atm"].sel(teff=[7500, 8000]) == "mp"
    ).all()  # no ATLAS9 there: the default fills in
    assert open_bosz(root, atmosphere=["atlas9"])["atm"].sel(teff=7750).item() == "ap"
    assert open_bosz(root).attrs["grid_id"] != atlas.attrs["grid_id"]
    with pytest.raises(ValueError, match="unknown code"):
        open_bosz(root, atmosphere="kurucz")


def test_several_resolutions_need_a_choice(small_grid):
    write_standin_grid(
        small_grid, teff=(5000,), logg=(4.5,), mh=(0.0,), resolution=1000, wave_range=(4000, 4400)
    )
    with pytest.raises(TemplateError, match="1000, 2000.*resolution="):
        open_bosz(small_grid)
    low = open_bosz(small_grid, resolution=1000)
    assert low.shape[:4] == (1, 1, 1, 1) and low.attrs["resolution"] == 1000
    assert open_bosz(small_grid, resolution=R).shape[:4] == (3, 2, 2, 1)
    with pytest.raises(TemplateError, match="R=5000.*1000, 2000"):
        open_bosz(small_grid, resolution=5000)


def test_carbon_and_vturb_select_one_regular_grid(small_grid):
    folder = small_grid / bosz_folder(R, 0.0)
    source = folder / name_of(teff=5000, logg=4.5, mh=0.0)
    shutil.copy(source, folder / name_of(teff=5000, logg=4.5, mh=0.0, carbon=0.25))
    shutil.copy(source, folder / name_of(teff=5000, logg=4.5, mh=0.0, vturb=1))
    assert open_bosz(small_grid).shape[:4] == (3, 2, 2, 1)  # c+0.00 and the most common vturb (2)
    assert open_bosz(small_grid, carbon=0.25).shape[:4] == (1, 1, 1, 1)
    assert open_bosz(small_grid, vturb=1).attrs["vturb"] == 1
    with pytest.raises(TemplateError, match=r"carbon= -?0.0, 0.25"):
        open_bosz(small_grid, carbon=-0.5)
    with pytest.raises(TemplateError, match="vturb= 1, 2"):
        open_bosz(small_grid, vturb=4)


def test_grid_id_is_stable_and_tracks_files_and_trim(small_grid):
    first = open_bosz(small_grid).attrs["grid_id"]
    assert open_bosz(small_grid).attrs["grid_id"] == first
    assert open_bosz(small_grid, wave_range=(4100, 4200)).attrs["grid_id"] != first
    victim = spectrum_files(small_grid)[0]
    st_ = victim.stat()
    os.utime(victim, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    assert open_bosz(small_grid).attrs["grid_id"] != first


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_truncated_file_fails_at_compute_naming_it(small_grid):
    victim = spectrum_files(small_grid)[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    grid = open_bosz(small_grid)  # opening still works: names only
    with pytest.raises(TemplateError, match=re.escape(str(victim))):
        grid.compute()


@pytest.mark.parametrize("damage", ["rows", "columns", "text", "not gzip"])
def test_wrong_shape_or_content_is_named(small_grid, damage):
    victim = spectrum_files(small_grid)[0]
    table = read_text(victim)
    if damage == "rows":
        write_text(victim, table[:-5, 0], table[:-5, 1])
    elif damage == "columns":
        write_text(victim, table[:, 0], table[:, 1], table[:, 1])
    elif damage == "text":
        victim.write_bytes(gzip.compress(b"1.0 2.0\nabc def\n" * (len(table) // 2)))
    else:
        victim.write_bytes(b"\x00\x01garbage" * 100)
    grid = open_bosz(small_grid)
    with pytest.raises(TemplateError, match=re.escape(victim.name)):
        grid.compute()


def test_unusable_folders(tmp_path, small_grid):
    with pytest.raises(TemplateError, match="does not exist"):
        open_bosz(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TemplateError, match="no BOSZ 2024 spectrum"):
        open_bosz(tmp_path / "empty")
    shutil.rmtree(small_grid / "wavelength_grids")
    with pytest.raises(TemplateError, match=wave_grid_name(R)):
        open_bosz(small_grid)
    with pytest.raises(TemplateError, match="is a file"):
        open_bosz(spectrum_files(small_grid)[0])


# ---------------------------------------------------------------------------
# packed cubes
# ---------------------------------------------------------------------------


def test_pack_round_trip_is_lazy_and_equal(small_grid, tmp_path):
    (small_grid / bosz_folder(R, -0.5) / name_of(teff=5500, logg=4.0, mh=-0.5)).unlink()  # a hole
    source = open_bosz(small_grid, wave_range=(4050, 4350))
    packed_path = pack_bosz(small_grid, tmp_path / "cube.nc", wave_range=(4050, 4350))
    assert packed_path == tmp_path / "cube.nc" and not list(tmp_path.glob(".*.tmp"))

    with dask.config.set(scheduler=RaiseIfComputes()):
        packed = open_bosz(packed_path)
    assert isinstance(packed.data, da.Array) and isinstance(packed["continuum"].data, da.Array)
    assert packed.dims == source.dims and packed.chunks == source.chunks
    assert packed.dtype == np.float32

    expected = source.compute()
    got = packed.compute()
    np.testing.assert_allclose(got.values, expected.values, rtol=1e-7, equal_nan=True)
    np.testing.assert_allclose(
        got["continuum"].values, expected["continuum"].values, rtol=1e-7, equal_nan=True
    )
    assert np.isnan(got.sel(teff=5500, logg=4.0, mh=-0.5).values).all()
    for name in ("teff", "logg", "mh", "alpha", "wavelength", "atm", "filename"):
        np.testing.assert_array_equal(got[name].values, expected[name].values)
    for key in ("units", "resolution", "carbon", "vturb", "bosz_kind", "library"):
        assert got.attrs[key] == expected.attrs[key]
    assert got.attrs["source_grid_id"] == source.attrs["grid_id"]
    assert got.attrs["grid_id"] != source.attrs["grid_id"]
    assert got.attrs["source"] == str(packed_path)

    again = pack_bosz(small_grid, tmp_path / "again.nc", wave_range=(4050, 4350))
    assert open_bosz(again).attrs["grid_id"] == got.attrs["grid_id"]  # same source, same identity


def test_packed_cube_trims_and_refuses_to_overwrite(small_grid, tmp_path):
    path = pack_bosz(small_grid, tmp_path)  # a folder: the cube is named inside it
    assert path.parent == tmp_path and path.name.startswith(f"bosz2024_r{R}_")
    whole = open_bosz(path)
    part = open_bosz(path, wave_range=(4100, 4200))
    assert part.attrs["grid_id"] != whole.attrs["grid_id"]
    xr.testing.assert_identical(
        part.compute().drop_attrs(), whole.sel(wavelength=slice(4100, 4200)).compute().drop_attrs()
    )
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        pack_bosz(small_grid, path)
    pack_bosz(small_grid, path, overwrite=True, wave_range=(4000, 4100))
    assert open_bosz(path)["wavelength"].max() <= 4100
    with pytest.raises(TemplateError, match="resolution=2000, not 5000"):
        open_bosz(path, resolution=5000)


def test_a_netcdf_that_is_not_a_cube_is_rejected(tmp_path):
    path = tmp_path / "other.nc"
    xr.Dataset({"x": ("y", np.arange(3.0))}).to_netcdf(path)
    with pytest.raises(TemplateError, match="not a template cube written by pack_bosz"):
        open_bosz(path)
