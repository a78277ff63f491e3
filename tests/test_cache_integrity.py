"""Caches and template files that are damaged, foreign or hostile (issue 11).

Every case checks the behaviour against a known truth: a damaged prepared-grid
entry warns *and* gives the grid (or the calibration) of an undamaged one; a
damaged stand-in grid is generated again byte for byte; hostile template files
are refused with a one-line ``TemplateError`` naming them, in bounded time and
memory.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import flip_byte, write_small_standin

import kspec_xr as kx
from kspec_xr._base.errors import KspecWarning, TemplateError
from kspec_xr.templates import bosz, prepare_templates, read_bosz_table, standin
from kspec_xr.templates import prepared as prepared_module
from kspec_xr.templates._names import bosz_name
from kspec_xr.templates.prepared import PreparedTemplates
from kspec_xr.templates.standin import standin_grid_path
from kspec_xr.testing import accuracy_report, make_exposure

WAVE = np.linspace(5000.0, 6500.0, 700)
FWHM = 3.0
SMALL = {"teff": (5750, 6000, 6250), "logg": (4.0, 4.5), "mh": (-0.5, 0.0)}
NAME = bosz_name(teff=6000, logg=4.5, mh=0.0, resolution=10000)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return write_small_standin(tmp_path_factory, **SMALL)


@pytest.fixture(scope="module")
def small_grid(small_root):
    return kx.open_bosz(small_root)


@pytest.fixture(scope="module")
def truth(small_grid):
    """The prepared grid built without any cache: what every cache hit must equal."""
    return prepare_templates(small_grid, WAVE, FWHM, cache=False)


@pytest.fixture(autouse=True)
def fresh_memory(fresh_prepared_memory):
    """Each test starts as a new process would: nothing prepared in memory."""


def assert_same_grid(got: PreparedTemplates, want: PreparedTemplates) -> None:
    for name in prepared_module._ARRAYS:
        np.testing.assert_array_equal(np.asarray(got._arrays[name]), want._arrays[name], name)
    assert got.bands == want.bands
    np.testing.assert_array_equal(got.atm, want.atm)
    assert got.attrs["fwhm_min"] == want.attrs["fwhm_min"]


def entry_of(cache: Path) -> Path:
    (entry,) = [p for p in cache.glob("prepared-*") if (p / "meta.json").is_file()]
    return entry


# ---------------------------------------------------------------------------
# the prepared-grid cache
# ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # accuracy_report: few program fibers
def test_tampered_magnitudes_are_rebuilt_and_the_calibration_holds(tmp_path, monkeypatch):
    """mags.npy + 0.5 mag used to scale the calibration by 10**0.2 = 1.585, exit 0."""
    grid = kx.open_bosz().sel(mh=[-0.5, -0.25, 0.0, 0.25], teff=slice(5500, 7000))
    monkeypatch.setenv("KSPEC_XR_CACHE", str(tmp_path / "cache"))  # the grid is opened: reused
    sim = make_exposure(
        3, n_fiber=16, n_standard=4, n_sky=4, n_pixel=1024, std_mh=(-0.4, 0.15),
        std_teff=(5800, 6700), directory=tmp_path / "sim",
    )  # fmt: skip

    def calibrate():
        return kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid).compute()

    clean = calibrate()
    report = accuracy_report(clean, sim.truth)
    assert report["n_standards_used"] == 4 and report["cal_median_abs_dev"] < 0.02
    # the resolution stage prepares its own grid too: tamper with every entry
    entries = sorted((tmp_path / "cache" / "prepared").glob("prepared-*"))
    assert entries
    for forget in (False, True):  # the grids still in memory, then a new process
        mags = [np.load(entry / "mags.npy") for entry in entries]
        for entry, m in zip(entries, mags, strict=True):
            np.save(entry / "mags.npy", m + 0.5)
        if forget:
            prepared_module._MEMORY._entries.clear()
        with pytest.warns(KspecWarning, match=r"mags\.npy does not match its SHA-256"):
            again = calibrate()
        np.testing.assert_allclose(again["calibration"], clean["calibration"], rtol=1e-12)
        for entry, m in zip(entries, mags, strict=True):  # rebuilt on disk
            np.testing.assert_array_equal(np.load(entry / "mags.npy"), m)


def test_an_entry_of_another_setup_copied_under_the_key_is_rejected(small_grid, truth, tmp_path):
    mine = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    other = prepare_templates(small_grid, WAVE, FWHM + 1.0, cache=tmp_path)
    mine_path = tmp_path / mine.attrs["cache_key"]
    other_path = tmp_path / other.attrs["cache_key"]
    del mine, other
    shutil.rmtree(mine_path)
    shutil.copytree(other_path, mine_path)  # a valid entry, of the wrong setup
    # still in this process's memory: the replaced folder is opened and checked again
    with pytest.warns(KspecWarning, match=r"prepared from other inputs \(differing in fwhm\)"):
        got = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    assert_same_grid(got, truth)
    assert json.loads((mine_path / "meta.json").read_text())["attrs"]["fwhm_min"] == FWHM


def _damage(entry: Path, how: str) -> None:
    if how.startswith("flip:"):
        flip_byte(entry / f"{how[5:]}.npy")
    elif how == "truncate":
        path = entry / "scoring_norm.npy"
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "missing":
        (entry / "continuum.npy").unlink()
    elif how == "meta-edited":  # swap two band names: same size, wrong magnitudes
        meta = json.loads((entry / "meta.json").read_text())
        meta["bands"][:2] = meta["bands"][1::-1]
        (entry / "meta.json").write_text(json.dumps(meta))
    elif how == "meta-garbage":
        (entry / "meta.json").write_bytes(b"\x00\xff not json")
    elif how == "old-format":  # an entry written before the integrity record
        meta = json.loads((entry / "meta.json").read_text())
        for key in ("cache_format", "arrays", "digest", "inputs"):
            meta.pop(key)
        (entry / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("how", "why"),
    [
        *[(f"flip:{n}", rf"{n}\.npy does not match its SHA-256") for n in prepared_module._ARRAYS],
        ("truncate", r"scoring_norm\.npy is not a readable \.npy array"),
        ("missing", r"continuum\.npy is not a readable \.npy array"),
        ("meta-edited", r"meta\.json does not match its digest"),
        ("meta-garbage", r"is not a complete prepared grid"),
        ("old-format", r"has no integrity record"),
    ],
)
def test_a_damaged_entry_warns_and_is_rebuilt(small_grid, truth, tmp_path, how, why):
    first = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    entry = tmp_path / first.attrs["cache_key"]
    del first  # its memory maps are of the files damaged below
    prepared_module._MEMORY._entries.clear()
    _damage(entry, how)
    with pytest.warns(KspecWarning, match=why) as record:
        got = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    ours = [w for w in record if issubclass(w.category, KspecWarning)]
    assert len(ours) == 1 and str(entry) in str(ours[0].message)
    assert_same_grid(got, truth)
    prepared_module._MEMORY._entries.clear()
    assert_same_grid(PreparedTemplates.open(entry), truth)  # the rebuilt entry verifies
    with pytest.raises(TemplateError, match=why):  # open() itself refuses the damage
        _damage(entry, how)
        PreparedTemplates.open(entry)


def test_an_undamaged_entry_is_verified_cheaply_and_reused(small_grid, truth, tmp_path):
    t0 = time.perf_counter()
    prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    build = time.perf_counter() - t0
    prepared_module._MEMORY._entries.clear()
    t0 = time.perf_counter()
    got = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)  # from disk, verified
    load = time.perf_counter() - t0
    entry = tmp_path / got.attrs["cache_key"]
    t0 = time.perf_counter()
    PreparedTemplates.open(entry, verify=False)
    unverified = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in entry.iterdir()) / 1e6
    print(
        f"{size:.1f} MB entry: build {build:.3f} s, verified load {load * 1e3:.1f} ms, "
        f"unverified open {unverified * 1e3:.1f} ms"
    )
    assert_same_grid(got, truth)
    assert load < 0.5 * build
    assert prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path) is got  # memory hit


def test_a_subset_of_the_grid_has_its_own_entry(small_grid, tmp_path):
    """sel() keeps grid_id: the grid's coordinates are part of the key."""
    full = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    sub = prepare_templates(small_grid.sel(teff=[5750]), WAVE, FWHM, cache=tmp_path)
    assert (full.n_templates, sub.n_templates) == (12, 4)
    assert full.attrs["cache_key"] != sub.attrs["cache_key"]


def test_the_key_records_every_input(small_grid):
    base = prepared_module._cache_inputs(small_grid, WAVE, np.full(WAVE.size, FWHM), 600.0, 3)
    assert base["kspec_xr"] == kx.__version__
    assert base["cache_format"] == prepared_module.CACHE_FORMAT
    changed = [
        prepared_module._cache_inputs(small_grid, WAVE, np.full(WAVE.size, FWHM), 500.0, 3),
        prepared_module._cache_inputs(small_grid, WAVE, np.full(WAVE.size, FWHM), 600.0, 2),
        prepared_module._cache_inputs(small_grid, WAVE * 1.0001, np.full(WAVE.size, FWHM), 600, 3),
        prepared_module._cache_inputs(small_grid, WAVE, np.full(WAVE.size, 3.1), 600.0, 3),
        prepared_module._cache_inputs(
            small_grid.assign_attrs(grid_id="x"), WAVE, np.full(WAVE.size, FWHM), 600.0, 3
        ),
    ]
    keys = {prepared_module._cache_key(i) for i in [base, *changed]}
    assert len(keys) == 6


def test_a_packed_cube_rewritten_gets_a_new_key(small_root, tmp_path):
    cube = kx.pack_bosz(small_root, tmp_path / "cube.nc")
    first = prepared_module._cache_key(
        prepared_module._cache_inputs(kx.open_bosz(cube), WAVE, np.ones(WAVE.size), 600.0, 3)
    )
    os.utime(cube, ns=(0, 1_000_000_000))  # same source, same grid_id, another file
    second = prepared_module._cache_key(
        prepared_module._cache_inputs(kx.open_bosz(cube), WAVE, np.ones(WAVE.size), 600.0, 3)
    )
    assert first != second


def _unwritable_below_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "cache"  # nothing can be created below a regular file, even by root


def test_a_cache_that_cannot_be_written_warns_and_calibrates_without_it(
    small_grid, truth, tmp_path, monkeypatch
):
    cache = _unwritable_below_a_file(tmp_path)
    with pytest.warns(KspecWarning, match="cannot write the prepared-grid cache entry"):
        got = prepare_templates(small_grid, WAVE, FWHM, cache=cache)
    assert_same_grid(got, truth)
    with warnings_as_errors():  # kept in memory: no second build, no second warning
        assert prepare_templates(small_grid, WAVE, FWHM, cache=cache) is got
    # the user cache folder itself cannot be made (KSPEC_XR_CACHE below a file)
    prepared_module._MEMORY._entries.clear()
    monkeypatch.setenv("KSPEC_XR_CACHE", str(cache))
    with pytest.warns(KspecWarning, match="cannot make the prepared-grid cache folder"):
        got = prepare_templates(small_grid, WAVE, FWHM)
    assert_same_grid(got, truth)


def test_a_full_disk_leaves_nothing_behind(small_grid, truth, tmp_path, monkeypatch):
    real_save = np.save
    calls = []

    def save_until_full(path, array, **kwargs):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        real_save(path, array, **kwargs)

    monkeypatch.setattr(prepared_module.np, "save", save_until_full)
    with pytest.warns(KspecWarning, match="No space left on device"):
        got = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    assert_same_grid(got, truth)
    # no partial entry, no temporary folder; only the preparers' (empty) lock file
    left = list(tmp_path.iterdir())
    assert [p.name.startswith(".prepared-") and p.suffix == ".lock" for p in left] == [True]
    assert left[0].stat().st_size == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_cache_folder(small_grid, truth, tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.warns(KspecWarning, match="cannot write"):
            got = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    finally:
        tmp_path.chmod(0o755)
    assert_same_grid(got, truth)


@contextlib.contextmanager
def warnings_as_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------------------
# the stand-in grid
# ---------------------------------------------------------------------------

TINY_DEFAULT = {
    "teff": (5500, 6000),
    "logg": (4.5,),
    "mh": (0.0,),
    "alpha": (0.0,),
    "wave_range": (5000.0, 5100.0),
}


@pytest.fixture
def tiny_default(tmp_path, monkeypatch):
    """A two-file default grid in a temporary cache (the real one is never touched)."""
    monkeypatch.setenv("KSPEC_XR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(standin, "DEFAULT_GRID", dict(TINY_DEFAULT))
    monkeypatch.setattr(standin, "_BUILT", {})
    return tmp_path / "cache"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("COMPLETE", "MANIFEST.json", "IN_USE")
    }


def _spectrum(root: Path) -> Path:
    return sorted(root.rglob("bosz2024_*.txt.gz"))[0]


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda f: f.write_bytes(f.read_bytes()[:200]), "bytes, its manifest"),
        (lambda f: f.unlink(), "1 file.s. missing"),
        (lambda f: shutil.copy(f, f.with_name(NAME.replace("t6000", "t6500"))), "unexpected"),
        (flip_byte, "does not match its SHA-256"),  # same size: the moved mtime is hashed
        (lambda f: (f.parents[2] / "MANIFEST.json").unlink(), "MANIFEST.json is missing"),
    ],
    ids=["truncated", "missing", "extra", "flipped", "no-manifest"],
)
def test_a_damaged_standin_grid_is_generated_again(tiny_default, damage, why):
    path = standin_grid_path()
    good = _snapshot(path)
    values = kx.open_bosz().values
    damage(_spectrum(path))
    standin._BUILT.clear()  # a new process
    with pytest.warns(
        KspecWarning, match=f"stand-in grid {re.escape(str(path))} is damaged.*{why}"
    ):
        assert standin_grid_path() == path
    assert _snapshot(path) == good  # byte for byte
    np.testing.assert_array_equal(kx.open_bosz().values, values)
    with warnings_as_errors():
        assert standin_grid_path() == path


def test_a_same_size_flip_with_its_mtime_restored_needs_verify(tiny_default):
    path = standin_grid_path()
    good = _snapshot(path)
    f = _spectrum(path)
    st = f.stat()
    flip_byte(f, offset_from_end=300)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    standin._BUILT.clear()
    with warnings_as_errors():
        assert standin_grid_path() == path  # names, sizes and mtimes agree: not hashed
    with pytest.raises(TemplateError, match="verify=True"):  # the read names the cure
        kx.open_bosz().compute()
    with pytest.warns(KspecWarning, match="does not match its SHA-256"):
        standin_grid_path(verify=True)
    assert _snapshot(path) == good


def test_the_key_ignores_docstrings_comments_and_the_cache_code(tmp_path, monkeypatch):
    """Editing a docstring no longer makes every process generate a new grid."""
    source = Path(standin.__file__).read_text()

    def fingerprint(old: str = "", new: str = "") -> str:
        assert old in source
        copy = tmp_path / f"standin_{len(list(tmp_path.iterdir()))}.py"
        copy.write_text(source.replace(old, new))
        monkeypatch.setattr(standin, "__file__", str(copy))
        return standin._code_fingerprint.__wrapped__()  # not the cached one

    base = fingerprint()
    assert base == standin._code_fingerprint()
    assert base == fingerprint("Hydrogen n=2 population proxy", "Proxy")  # a docstring
    assert base == fingerprint("# h c / k in Angstrom K", "# hc/k")  # a comment
    assert base == fingerprint("UNUSED_BEFORE_REMOVAL = 86400.0", "UNUSED_BEFORE_REMOVAL = 1.0")
    assert base != fingerprint("_N_WEAK_LINES = 400", "_N_WEAK_LINES = 401")
    assert base != fingerprint('_FLUX_FORMAT = "%.4e"', '_FLUX_FORMAT = "%.5e"')


def _old_version(root: Path, name: str, *, age_days: float, stamped: bool = True) -> Path:
    old = root / name
    (old / "wavelength_grids").mkdir(parents=True)
    (old / "wavelength_grids" / "bosz2024_wave_r10000.txt").write_text("1\n2\n")
    (old / "COMPLETE").write_text(name + "\n")
    then = time.time() - age_days * 86400
    for f in [*old.rglob("*"), old]:
        if stamped or f.name != "IN_USE":
            os.utime(f, (then, then))
    if stamped:
        (old / "IN_USE").touch()
        os.utime(old / "IN_USE", (then, then))
    return old


def test_old_versions_go_only_when_nobody_uses_them(tmp_path):
    current = tmp_path / "standin-r10000-current"
    current.mkdir()
    recent = _old_version(tmp_path, "standin-r10000-recent", age_days=0.5)
    unused = _old_version(tmp_path, "standin-r10000-unused", age_days=2)
    held = _old_version(tmp_path, "standin-r10000-held", age_days=2)
    legacy_recent = _old_version(tmp_path, "standin-r10000-legacy1", age_days=3, stamped=False)
    legacy_old = _old_version(tmp_path, "standin-r10000-legacy2", age_days=8, stamped=False)
    other_r = _old_version(tmp_path, "standin-r5000-other", age_days=30)
    crashed = tmp_path / ".standin-r10000-x.123.abcd.tmp"
    crashed.mkdir()
    os.utime(crashed, (time.time() - 2 * 86400,) * 2)
    # another process reads `held` (a shared flock on its IN_USE, as standin_grid_path takes)
    code = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
        "fcntl.flock(f, fcntl.LOCK_SH); print('locked', flush=True); time.sleep(60)"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", code, str(held / "IN_USE")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline().strip() == "locked"
        standin._remove_older_versions(tmp_path, current)
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {current.name, recent.name, held.name, legacy_recent.name, other_r.name}
        assert not (legacy_recent / "IN_USE").exists()  # the check stamps nothing
    finally:
        reader.kill()
        reader.wait()
    standin._remove_older_versions(tmp_path, current)  # the reader is gone
    assert not held.exists() and recent.exists()
    assert not unused.exists() and not legacy_old.exists() and not crashed.exists()


def test_a_grid_in_use_by_this_process_survives_a_new_version(tiny_default, monkeypatch):
    first = standin_grid_path()
    old = time.time() - 3 * 86400
    os.utime(first / "IN_USE", (old, old))  # last stamped days ago, but held by _BUILT
    monkeypatch.setitem(standin.DEFAULT_GRID, "teff", (5500, 6000, 6500))
    second = standin_grid_path()  # generates, then removes the grids nobody uses
    assert second != first and first.is_dir()
    (use,) = [u for u in standin._BUILT.values() if u.path == first]
    use.release()  # the "process" using it ends
    standin._remove_older_versions(tiny_default, second)
    assert not first.exists() and second.is_dir()


# ---------------------------------------------------------------------------
# hostile template files
# ---------------------------------------------------------------------------


def _bomb(path: Path, megabytes: int) -> None:
    zipper = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"1.0000e+00 1.0000e+00\n" * (1 << 16)
    parts = [zipper.compress(block) for _ in range(megabytes * (1 << 20) // len(block))]
    path.write_bytes(b"".join([*parts, zipper.flush()]))


def test_a_gzip_bomb_is_refused_in_bounded_memory(small_root, tmp_path):
    folder = tmp_path / "grid"
    shutil.copytree(small_root, folder)
    victim = sorted(folder.rglob("bosz2024_*.txt.gz"))[0]
    _bomb(victim, 64)  # 64 MB of rows in ~0.1 MB (the reported one: 4.6 GB)
    rows = read_bosz_table(sorted(small_root.rglob("bosz2024_*.txt.gz"))[0]).shape[0]
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match=rf"{re.escape(str(victim))} holds more than"):
            read_bosz_table(victim, ncols=2, nrows=rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * (rows * bosz.ROW_BYTES + 65536) + (2 << 20)
    with pytest.raises(TemplateError, match="holds more than"):  # and through the grid
        kx.open_bosz(folder).compute()


def test_a_file_of_real_bosz_size_passes_the_bound(tmp_path):
    """A whole R = 10 000 resam file (15·R = 150 000 rows, 17 digits: ~7 MB) is read."""
    rows = 150_000
    table = np.random.default_rng(1).uniform(1e-9, 1e9, (rows, 2))
    text = "".join(f"{a:.17e} {b:.17e}\n" for a, b in table).encode()
    path = tmp_path / NAME
    path.write_bytes(gzip.compress(text, compresslevel=1))
    np.testing.assert_array_equal(read_bosz_table(path, ncols=2, nrows=rows), table)
    np.testing.assert_array_equal(read_bosz_table(path, ncols=2), table)  # bound from the name
    assert bosz._max_rows(NAME, None) == 2 * rows
    assert bosz._max_rows(NAME.replace("_resam", "_noresam"), None) == bosz.UNKNOWN_ROWS


def _finishes(fn, timeout=10.0):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return thread.is_alive(), box


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_a_fifo_named_like_a_bosz_file_is_refused_without_blocking(small_root, tmp_path):
    fifo = tmp_path / NAME
    os.mkfifo(fifo)
    try:
        blocked, box = _finishes(lambda: read_bosz_table(fifo))
        assert not blocked, "read_bosz_table blocked on a FIFO"
        assert isinstance(box.get("error"), TemplateError)
        assert f"{fifo} is a FIFO, not a regular file" in str(box["error"])
        folder = tmp_path / "grid"
        shutil.copytree(small_root, folder)
        victim = sorted(folder.rglob("bosz2024_*.txt.gz"))[0]
        victim.unlink()
        os.mkfifo(victim)
        blocked, box = _finishes(lambda: kx.open_bosz(folder))
        assert not blocked and isinstance(box.get("error"), TemplateError)
        assert "is a FIFO" in str(box["error"]) and str(victim) in str(box["error"])
    finally:
        for f in (fifo, *tmp_path.rglob("bosz2024_*")):
            if f.is_fifo():  # unblock a reader, should one be stuck
                try:
                    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_device_named_like_a_bosz_file_is_refused(tmp_path):
    link = tmp_path / NAME
    link.symlink_to("/dev/zero")  # would never end
    with pytest.raises(TemplateError, match="is a character device, not a regular file"):
        read_bosz_table(link)


def test_a_symlink_loop_in_the_folder_is_one_line(small_root, tmp_path):
    folder = tmp_path / "grid"
    shutil.copytree(small_root, folder)
    (folder / "loop").symlink_to("loop")
    with pytest.raises(TemplateError) as err:
        kx.open_bosz(folder)
    assert str(folder / "loop") in str(err.value) and "\n" not in str(err.value)
    assert "symbolic-link loop" in str(err.value)
    (folder / "loop").unlink()
    (folder / NAME.replace("t6000", "t6500")).symlink_to(NAME.replace("t6000", "t6500"))
    with pytest.raises(TemplateError, match="symbolic-link loop"):
        kx.open_bosz(folder)
    with pytest.raises(TemplateError, match="cannot use the template grid"):
        kx.open_bosz(folder / NAME.replace("t6000", "t6500"))


def test_a_folder_linked_into_itself_is_scanned_once(small_root, tmp_path):
    folder = tmp_path / "grid"
    shutil.copytree(small_root, folder)
    (folder / "r10000" / "up").symlink_to("..")
    grid = kx.open_bosz(folder)
    assert grid.shape[:4] == kx.open_bosz(small_root).shape[:4]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_packed_cube_names_the_file(small_root, tmp_path, damage):
    cube = kx.pack_bosz(small_root, tmp_path / "cube.nc")
    data = bytearray(cube.read_bytes())
    if damage == "flip":  # the compressed chunks fill the middle of the file
        middle = len(data) // 2
        data[middle : middle + 4096] = bytes(b ^ 0x5A for b in data[middle : middle + 4096])
    else:
        data = data[: len(data) * 2 // 3]
    bad = tmp_path / "bad.nc"
    bad.write_bytes(bytes(data))
    with pytest.raises(TemplateError, match=rf"{re.escape(str(bad))}.*pack it again") as err:
        kx.open_bosz(bad).compute()
    assert "\n" not in str(err.value)


def test_a_gzip_file_damaged_in_the_middle_is_named(small_root, tmp_path):
    """A flipped byte fails the gzip CRC: the file is named, nothing is returned."""
    victim = tmp_path / NAME
    shutil.copy(sorted(small_root.rglob("bosz2024_*.txt.gz"))[0], victim)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    with pytest.raises(TemplateError, match=re.escape(str(victim))):
        read_bosz_table(victim)


_PREPARER = """
import logging, sys, time
from pathlib import Path
import numpy as np
import kspec_xr as kx
import kspec_xr.templates.prepared as prepared
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
original = prepared._build_arrays
def slow_build(*args, **kwargs):  # long enough for the other process to arrive meanwhile
    time.sleep(1.5)
    return original(*args, **kwargs)
prepared._build_arrays = slow_build
grid = kx.open_bosz(kx.standin_grid_path()).isel(teff=slice(0, 2), logg=slice(0, 2), mh=slice(0, 2))
wave = np.linspace(4000.0, 7000.0, 1500)
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
grid_prepared = kx.prepare_templates(grid, wave, 2.5, cache=sys.argv[1])
print(float(np.asarray(grid_prepared._arrays["flux"], dtype=float).sum()))
"""


def test_two_processes_preparing_one_setup_build_it_once(tmp_path):
    import subprocess
    import sys

    go = tmp_path / "go"
    cache = tmp_path / "cache"
    cache.mkdir()
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARER, str(cache), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    time.sleep(0.5)
    go.touch()  # both start preparing at once
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    logs = "".join(err for _, err in outputs)
    assert logs.count("preparing the template grid") == 1, logs  # built once
    assert logs.count("another process is preparing this template grid; waiting") == 1
    sums = {out.strip() for out, _ in outputs}
    assert len(sums) == 1  # and the same arrays in both
    assert len(list(cache.glob("prepared-*"))) == 1


def test_a_preparer_lock_held_too_long_is_given_up_not_waited_for_forever(tmp_path):
    from kspec_xr._base.paths import waiting_lock

    lock = tmp_path / ".prepared-x.lock"
    waits = []
    with waiting_lock(lock, timeout=1.0) as first:
        assert first
        start = time.monotonic()
        with waiting_lock(lock, timeout=0.3, on_wait=lambda: waits.append(1)) as second:
            assert not second  # went on unguarded after the timeout
        assert 0.25 < time.monotonic() - start < 3.0
    assert waits == [1]
    with waiting_lock(lock, timeout=0.3) as again:
        assert again  # released with the first holder
    with waiting_lock(tmp_path / "no-such-folder" / "x.lock", timeout=0.3) as nowhere:
        assert not nowhere  # no file can be made: unguarded, no error
