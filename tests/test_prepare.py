"""The grid prepared for an instrument setup: against a slow reference, and its cache."""

import time

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

import kspec_xr as kx
from kspec_xr._base.bands import band_range
from kspec_xr._base.errors import KspecWarning, TemplateError
from kspec_xr.templates import prepare_templates
from kspec_xr.templates.standin import write_standin_grid


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("bosz_small")
    write_standin_grid(
        root, teff=(5750, 6000, 6250), logg=(4.0, 4.5), mh=(-0.5, 0.0), wave_range=(3600, 7500)
    )
    return kx.open_bosz(root)


WAVE = np.linspace(5000.0, 6500.0, 700)
FWHM = 3.0


def _slow_reference(wave_native, flux, work, fwhm, resolution):
    """One template at a time: resample to a fine uniform-λ grid, Gaussian-smooth, average per bin."""
    step = 0.02
    fine = np.arange(wave_native[0], wave_native[-1], step)
    dense = np.interp(fine, wave_native, flux)
    out = np.empty(work.size)
    edges = np.sqrt(work[1:] * work[:-1])
    edges = np.concatenate([[work[0] ** 2 / edges[0]], edges, [work[-1] ** 2 / edges[-1]]])
    # σ varies slowly: smooth in chunks with the local σ
    for lo in range(0, work.size, 200):
        hi = min(lo + 200, work.size)
        lam = work[(lo + hi) // 2]
        sigma = np.sqrt(fwhm**2 - (lam / resolution) ** 2) / 2.3548200450309493 / step
        smooth = gaussian_filter1d(dense, sigma, mode="nearest")
        for i in range(lo, hi):
            inside = (fine >= edges[i]) & (fine < edges[i + 1])
            out[i] = smooth[inside].mean()
    return out


def test_matches_slow_reference(small_grid, tmp_path):
    prep = prepare_templates(small_grid, WAVE, FWHM, cache=False)
    assert prep.sizes["template"] == 12
    native = small_grid["wavelength"].values
    work = prep["wavelength"].values
    sel = (work > 5100) & (work < 6400)
    for k in (0, 7, 11):
        params = {p: prep[p].values[k] for p in ("teff", "logg", "mh", "alpha")}
        flux = small_grid.sel(params).values
        slow = _slow_reference(native, flux, work, FWHM, 10000.0)
        np.testing.assert_allclose(prep["flux"].values[k][sel], slow[sel], rtol=2e-3)


def test_flat_spectrum_stays_flat_and_units(small_grid):
    prep = prepare_templates(small_grid, WAVE, FWHM, cache=False)
    assert prep["flux"].attrs["units"] == "erg/s/cm2/A"
    ratio = prep["flux"] / prep["continuum"]
    assert float(ratio.max()) <= 1.0 + 1e-4  # lines only absorb
    # ln λ working grid: RV shifts are index shifts
    steps = np.diff(prep["loglam"].values)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    assert prep["wavelength"].values[0] < WAVE[0] * (1 - 500 / 299792.458)


def test_synthetic_mags_of_every_template(small_grid):
    prep = prepare_templates(small_grid, WAVE, FWHM, cache=False)
    # the grid covers 3600-7500 Å: exactly the bands inside it
    assert {"panstarrs-g", "panstarrs-r", "sdss2010-g"} <= set(prep["band"].values)
    for band in prep["band"].values:
        lo, hi = band_range(str(band))
        assert lo >= 3600 and hi <= 7500
    hot = prep["mags"].where(prep["teff"] == 6250, drop=True)
    cool = prep["mags"].where(prep["teff"] == 5750, drop=True)
    # hotter stars are brighter per unit area, and bluer
    assert float((hot - cool).sel(band="panstarrs-r").max()) < 0
    colour = prep["mags"].sel(band="panstarrs-g") - prep["mags"].sel(band="panstarrs-r")
    assert float(colour.where(prep["teff"] == 6250).mean()) < float(
        colour.where(prep["teff"] == 5750).mean()
    )


def test_cache_is_reused_and_keyed(small_grid, tmp_path):
    t0 = time.perf_counter()
    first = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    cold = time.perf_counter() - t0
    folders = [p for p in tmp_path.glob("prepared-*") if (p / "meta.json").is_file()]
    assert len(folders) == 1
    t0 = time.perf_counter()
    second = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    warm = time.perf_counter() - t0
    print(f"prepare: cold {cold:.3f} s, warm {warm:.3f} s")
    np.testing.assert_array_equal(first["flux"].values, second["flux"].values)
    prepare_templates(small_grid, WAVE, FWHM + 0.5, cache=tmp_path)
    prepare_templates(small_grid, WAVE[:-1], FWHM, cache=tmp_path)
    assert len(list(tmp_path.glob("prepared-*/meta.json"))) == 3
    # a damaged cache entry is rebuilt, never trusted (in memory and on disk);
    # (the grids opened before are memory maps of the damaged file: not read again)
    expected = np.array(first["flux"].values)
    del first, second
    (folders[0] / "flux.npy").write_bytes(b"garbage")
    with pytest.warns(KspecWarning, match="not using a cached prepared grid"):
        again = prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    np.testing.assert_array_equal(expected, again["flux"].values)


def test_bad_setups_are_errors(small_grid):
    with pytest.raises(TemplateError, match="does not cover"):
        prepare_templates(small_grid, np.linspace(3500, 6000, 100), FWHM, cache=False)
    with pytest.raises(TemplateError, match="not broader"):
        prepare_templates(small_grid, WAVE, 0.3, cache=False)
    with pytest.raises(ValueError, match="FWHM must be positive"):
        prepare_templates(small_grid, WAVE, -1.0, cache=False)


def test_fwhm_polynomial(small_grid):
    const = prepare_templates(small_grid, WAVE, FWHM, cache=False)
    poly = prepare_templates(small_grid, WAVE, [FWHM, 0.0], cache=False)
    np.testing.assert_allclose(poly["flux"].values, const["flux"].values, rtol=1e-6)


def test_cache_keeps_the_most_recent(small_grid, tmp_path, monkeypatch):
    import kspec_xr.templates.prepared as prep_module

    monkeypatch.setattr(prep_module, "CACHE_KEPT", 2)
    for fwhm in (3.0, 3.2, 3.4):
        prepare_templates(small_grid, WAVE, fwhm, cache=tmp_path)
    assert len(list(tmp_path.glob("prepared-*/meta.json"))) == 2


def test_cache_drops_grids_of_other_versions(small_grid, tmp_path):
    """Grids no key of this version can reach go at the next build; other files stay."""
    old = tmp_path / "prepared-0123456789abcdef"
    old.mkdir()
    (old / "meta.json").write_text('{"prepare_version": 4}')
    (tmp_path / "prepared-0011223344556677.nc").write_bytes(b"old netCDF cache")
    (tmp_path / "notes.txt").write_text("mine")
    prepare_templates(small_grid, WAVE, FWHM, cache=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")
    assert len(names) == 2 and "notes.txt" in names and old.name not in names
    assert len(list(tmp_path.glob(".prepared-*.lock"))) == 1  # the preparer's (empty) lock


def test_old_standin_versions_are_removed(tmp_path, monkeypatch):
    from kspec_xr.templates import standin

    (tmp_path / "standin-r10000-oldversion").mkdir()
    (tmp_path / "standin-r5000-otherres").mkdir()
    current = tmp_path / "standin-r10000-current"
    current.mkdir()
    standin._remove_older_versions(tmp_path, current)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "standin-r10000-current",
        "standin-r5000-otherres",
    ]


def test_lock_files_of_entries_gone_are_pruned_after_a_day(tmp_path):
    import os
    import time

    import kspec_xr.templates.prepared as prep_module

    stale, fresh = tmp_path / ".prepared-aaaa.lock", tmp_path / ".prepared-bbbb.lock"
    kept = tmp_path / ".prepared-cccc.lock"  # its entry exists: kept however old
    (tmp_path / "prepared-cccc").mkdir()
    for lock in (stale, fresh, kept):
        lock.touch()
    day_ago = time.time() - 2 * 86400
    os.utime(stale, (day_ago, day_ago))
    os.utime(kept, (day_ago, day_ago))
    prep_module._prune(tmp_path, keep=12)
    assert not stale.exists() and fresh.exists() and kept.exists()
