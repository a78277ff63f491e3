"""The stand-in BOSZ grid: physics of the spectra, the file writer and the cache."""

from __future__ import annotations

import gzip
import io
import re
import threading

import numpy as np
import pytest

from kspec_xr._base.errors import TemplateError
from kspec_xr.templates import bosz_folder, open_bosz, parse_bosz_name, standin, wave_grid_name
from kspec_xr.templates.standin import (
    bosz_wavelength,
    standin_grid_path,
    surface_flux,
    write_standin_grid,
)

R = 10000
_FULL = bosz_wavelength(R)
WAVE = _FULL[(_FULL >= 3000) & (_FULL <= 11500)]
H_ALPHA, H_BETA, H_DELTA, CA_K = 6564.61, 4862.68, 4102.89, 3934.78


def equivalent_width(h, hc, lo, hi, wave=WAVE) -> float:
    keep = (wave >= lo) & (wave <= hi)
    return float(np.trapezoid(1.0 - h[keep] / hc[keep], wave[keep]))


def ew_at(band, teff=6000.0, logg=4.5, mh=0.0, alpha=0.0, **kw) -> float:
    return equivalent_width(*surface_flux(WAVE, teff, logg, mh, alpha, **kw), *band)


def planck(wave, teff):
    return 1.0 / wave**5 / np.expm1(1.438776877e8 / (wave * teff))


BALMER_BANDS = {"H_alpha": (H_ALPHA - 40, H_ALPHA + 40), "H_beta": (H_BETA - 30, H_BETA + 30)}
METAL_BANDS = {"CaII_K": (CA_K - 8, CA_K + 8), "Mg_b": (5160.0, 5195.0)}


# ---------------------------------------------------------------------------
# the wavelength grid
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [500, 10000])
def test_bosz_wavelength_is_the_archive_grid(resolution):
    wave = bosz_wavelength(resolution)
    assert wave.size == 15 * resolution
    assert wave[0] == 500.0 and wave[-1] == pytest.approx(320000.0, rel=1e-12)
    step = np.diff(np.log(wave))
    np.testing.assert_allclose(step, np.log(640.0) / (15 * resolution - 1), rtol=1e-9)


def test_default_range_has_about_31000_points():
    assert 31000 < WAVE.size < 31500


# ---------------------------------------------------------------------------
# physics
# ---------------------------------------------------------------------------


def test_spectrum_is_deterministic_and_continuous_in_its_parameters():
    # (its speed is measured by benchmarks/bench_speed.py's cold run, not here)
    a, _ = surface_flux(WAVE, 6000, 4.5, 0.0)
    b, _ = surface_flux(WAVE, 6000, 4.5, 0.0)
    np.testing.assert_array_equal(a, b)
    # stars drawn between grid nodes must interpolate: 1 K, 0.001 dex move it a little
    for nudged in (
        surface_flux(WAVE, 6001, 4.5, 0.0)[0],
        surface_flux(WAVE, 6000, 4.501, 0.0)[0],
        surface_flux(WAVE, 6000, 4.5, 0.001)[0],
    ):
        change = np.abs(nudged / a - 1)
        assert 0 < np.max(change) < 5e-3


@pytest.mark.parametrize(
    "params",
    [
        (5000, 4.5, 0.0, 0.0),
        (8000, 3.5, -2.0, 0.4),
        (3500, 1.0, 0.75, 0.0),
        (12000, 5.0, 0.5, -0.2),
    ],
)
def test_positive_and_below_the_continuum(params):
    for scale in (1.0, 3.0):
        h, hc = surface_flux(WAVE, *params, line_scale=scale)
        assert np.all(np.isfinite(h)) and np.all(h > 0) and np.all(h <= hc)


@pytest.mark.parametrize("band", list(BALMER_BANDS))
def test_balmer_lines_strengthen_from_5000_to_8000_k(band):
    ews = [ew_at(BALMER_BANDS[band], teff=t) for t in range(5000, 8001, 500)]
    assert np.all(np.diff(ews) > 0), ews
    assert ews[-1] > 1.5 * ews[0]


@pytest.mark.parametrize("band", list(METAL_BANDS))
def test_metal_lines_grow_with_metallicity_and_fall_with_teff(band):
    by_mh = [ew_at(METAL_BANDS[band], mh=m) for m in (-2.0, -1.0, -0.5, 0.0, 0.5)]
    by_teff = [ew_at(METAL_BANDS[band], teff=t) for t in range(5000, 8001, 500)]
    assert np.all(np.diff(by_mh) > 0), by_mh
    assert np.all(np.diff(by_teff) < 0), by_teff


def test_alpha_enhancement_strengthens_alpha_lines_only():
    mg, na = (5160.0, 5195.0), (5885.0, 5905.0)
    assert ew_at(mg, alpha=0.4) > 1.2 * ew_at(mg, alpha=0.0)
    assert ew_at(na, alpha=0.4) == pytest.approx(ew_at(na, alpha=0.0), rel=0.02)


def test_g_band_in_cool_stars():
    band, side = (4295.0, 4315.0), (4240.0, 4260.0)
    cool, hot = (
        ew_at(band, teff=5000) - ew_at(side, teff=5000),
        ew_at(band, teff=7500) - ew_at(side, teff=7500),
    )
    assert cool > 1.0 and cool > 3 * hot


def test_balmer_wings_widen_with_gravity():
    offset = np.searchsorted(WAVE, H_DELTA + 12.0)  # in the wing, far from the core
    depths = []
    for logg in (3.5, 4.0, 4.5, 5.0):
        h, hc = surface_flux(WAVE, 7000, logg, 0.0)
        depths.append(1.0 - h[offset] / hc[offset])
    assert np.all(np.diff(depths) > 0), depths


def test_continuum_colour_follows_planck():
    blue, red = np.searchsorted(WAVE, 4500.0), np.searchsorted(WAVE, 7000.0)
    ratios = []
    for teff in (5000, 6000, 7000, 8000):
        _, hc = surface_flux(WAVE, teff, 4.5, 0.0)
        ratios.append(hc[blue] / hc[red])
        expected = planck(WAVE[blue], teff) / planck(WAVE[red], teff)
        assert ratios[-1] == pytest.approx(expected, rel=1e-6)
    assert np.all(np.diff(ratios) > 0)


def test_balmer_jump_is_deeper_in_hotter_and_lower_gravity_stars():
    below, above = np.searchsorted(WAVE, 3600.0), np.searchsorted(WAVE, 3700.0)

    def jump(teff, logg):
        _, hc = surface_flux(WAVE, teff, logg, 0.0)
        return np.log10(hc[above] / hc[below]) - np.log10(
            planck(WAVE[above], teff) / planck(WAVE[below], teff)
        )

    assert 0.03 < jump(5000, 4.5) < jump(6500, 4.5) < jump(8000, 4.5) < 0.6
    assert jump(8000, 3.5) > jump(8000, 5.0)


def test_absolute_level_is_that_of_a_star():
    h, _ = surface_flux(np.array([5500.0]), 5772, 4.44, 0.0)
    assert 5e6 < 4 * np.pi * h[0] < 1.2e7  # the Sun's surface flux near 5500 Å, erg/s/cm2/Å


def test_continuous_between_nodes():
    a, b = surface_flux(WAVE, 6000, 4.0, -0.5)[0], surface_flux(WAVE, 6250, 4.5, 0.0)[0]
    mid = surface_flux(WAVE, 6125, 4.25, -0.25)[0]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    inside = (mid >= lo * (1 - 0.01)) & (mid <= hi * (1 + 0.01))
    assert inside.mean() > 0.99
    near = surface_flux(WAVE, 6000.5, 4.0005, -0.4995)[0]
    assert np.max(np.abs(near / a - 1)) < 0.01


def test_deterministic_and_shape_preserving():
    one = surface_flux(WAVE, 5750, 4.5, -0.25)
    two = surface_flux(WAVE, 5750, 4.5, -0.25)
    np.testing.assert_array_equal(one[0], two[0])
    shuffled = np.random.default_rng(3).permutation(WAVE.size)
    h, hc = surface_flux(WAVE[shuffled].reshape(-1, 2)[: WAVE.size // 2], 5750, 4.5, -0.25)
    assert h.shape == (WAVE.size // 2, 2)
    np.testing.assert_allclose(h.ravel(), one[0][shuffled][: h.size], rtol=1e-12)


def test_line_scale_and_continuum_tilt():
    h, hc = surface_flux(WAVE, 6000, 4.5, 0.0)
    h0, hc0 = surface_flux(WAVE, 6000, 4.5, 0.0, line_scale=0.0)
    np.testing.assert_array_equal(h0, hc0)
    np.testing.assert_array_equal(hc0, hc)
    h2, _ = surface_flux(WAVE, 6000, 4.5, 0.0, line_scale=2.0)
    assert np.all(h2 <= h) and equivalent_width(h2, hc, 3000, 11500) > 1.3 * equivalent_width(
        h, hc, 3000, 11500
    )
    ht, hct = surface_flux(WAVE, 6000, 4.5, 0.0, continuum_tilt=-1.5)
    np.testing.assert_allclose(hct / hc, (WAVE / 5500.0) ** -1.5, rtol=1e-12)
    np.testing.assert_allclose(ht / h, (WAVE / 5500.0) ** -1.5, rtol=1e-12)


def test_resolution_broadens_lines_and_keeps_weak_equivalent_widths():
    """Broadening acts on each line's profile (τ), so it conserves the EW of optically thin lines."""
    band = (5160.0, 5195.0)
    for scale in (1.0, 0.02):
        sharp = surface_flux(WAVE, 6000, 4.5, 0.0, resolution=np.inf, line_scale=scale)
        blurred = surface_flux(WAVE, 6000, 4.5, 0.0, resolution=2000, line_scale=scale)
        assert np.min(blurred[0] / blurred[1]) > np.min(sharp[0] / sharp[1])
    assert equivalent_width(*blurred, *band) == pytest.approx(
        equivalent_width(*sharp, *band), rel=0.03
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="wavelength"):
        surface_flux([5000.0, -1.0], 6000, 4.5, 0.0)
    with pytest.raises(ValueError, match="teff"):
        surface_flux(WAVE, np.nan, 4.5, 0.0)


# ---------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------

TINY = {
    "teff": (5000, 6000),
    "logg": (4.5,),
    "mh": (-1.0, 0.0),
    "resolution": 2000,
    "wave_range": (4000.0, 4400.0),
}


def test_written_grid_opens_with_the_values_of_surface_flux(tmp_path):
    root = write_standin_grid(tmp_path / "g", **TINY)
    names = sorted(p.name for p in root.rglob("*.txt.gz"))
    assert names == sorted(
        [
            "bosz2024_mp_t5000_g+4.5_m-1.00_a+0.00_c+0.00_v2_r2000_resam.txt.gz",
            "bosz2024_mp_t5000_g+4.5_m+0.00_a+0.00_c+0.00_v2_r2000_resam.txt.gz",
            "bosz2024_mp_t6000_g+4.5_m-1.00_a+0.00_c+0.00_v2_r2000_resam.txt.gz",
            "bosz2024_mp_t6000_g+4.5_m+0.00_a+0.00_c+0.00_v2_r2000_resam.txt.gz",
        ]
    )
    assert (root / bosz_folder(2000, -1.0)).is_dir()
    assert (root / "wavelength_grids" / wave_grid_name(2000)).is_file()
    assert not list(root.rglob(".*"))  # no temporary file left behind

    grid = open_bosz(root).compute()
    full = bosz_wavelength(2000)
    np.testing.assert_allclose(
        grid["wavelength"].values, full[(full >= 4000) & (full <= 4400)], rtol=0, atol=1e-6
    )
    for path in root.rglob("*.txt.gz"):
        p = parse_bosz_name(path)
        h, hc = surface_flux(
            grid["wavelength"].values, p["teff"], p["logg"], p["mh"], resolution=2000
        )
        node = grid.sel(teff=p["teff"], logg=p["logg"], mh=p["mh"], alpha=0.0)
        np.testing.assert_allclose(node.values, 4 * np.pi * h, rtol=6e-5)  # 5 significant digits
        np.testing.assert_allclose(node["continuum"].values, 4 * np.pi * hc, rtol=6e-5)


def test_writer_is_deterministic(tmp_path):
    a = write_standin_grid(tmp_path / "a", layout="flat", **TINY)
    b = write_standin_grid(tmp_path / "b", layout="flat", **TINY)
    files = sorted(p.name for p in a.iterdir())
    assert (
        files == sorted(p.name for p in b.iterdir()) and len(files) == 6
    )  # 4 + wave grid + README
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_writer_noresam_has_three_columns(tmp_path):
    root = write_standin_grid(tmp_path / "n", kind="noresam", layout="flat", **TINY)
    path = next(root.glob("*_noresam.txt.gz"))
    table = np.loadtxt(path)
    assert table.shape[1] == 3 and np.all(np.diff(table[:, 0]) > 0)
    assert not (root / wave_grid_name(2000)).exists()


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_standin_grid(tmp_path, layout="nested", **TINY)
    with pytest.raises(ValueError, match="kind"):
        write_standin_grid(tmp_path, kind="lineid", **TINY)
    with pytest.raises(ValueError, match="wave_range"):
        write_standin_grid(tmp_path, teff=(5000,), logg=(4.5,), mh=(0.0,), wave_range=(5000, 4000))


# ---------------------------------------------------------------------------
# the fast paths of the first run: formatting, parsing, one read for two setups
# ---------------------------------------------------------------------------


def python_rows(columns, formats) -> bytes:
    """The obvious implementation the writer's NumPy formatting must match byte for byte."""
    line = " ".join(formats) + "\n"
    rows = zip(*(np.asarray(c).tolist() for c in columns), strict=True)
    return "".join(line % row for row in rows).encode()


def hard_values(decimals: int, rng) -> np.ndarray:
    """Values next to the rounding ties and powers of ten of ``%.{decimals}e``, and random ones."""
    ties = (np.round(rng.uniform(1, 10, 3000), decimals) + 0.5 * 10.0**-decimals) * 10.0 ** (
        rng.integers(-30, 30, 3000)
    )
    tens = 10.0 ** np.arange(-99, 100)
    rounded = np.round(rng.uniform(1, 10, 3000), decimals + 1) * 10.0 ** rng.integers(-90, 90, 3000)
    values = np.concatenate(
        [
            10 ** rng.uniform(-99, 99, 3000),
            *(
                v
                for v in (ties, tens, rounded)
                for v in (v, np.nextafter(v, 0), np.nextafter(v, 1e300))
            ),
            [1.0, 9.99995, 99999.5, 12345.5, 0.0, 2.5e-5],
        ]
    )
    # one width of text (no exponent of three digits): what a grid file holds
    fmt = f"%.{decimals}e"
    return values[[len(fmt % v) == decimals + (6 if decimals else 5) for v in values]]


def test_writer_formatting_is_pythons_to_the_byte():
    rng = np.random.default_rng(7)
    h, hc = surface_flux(WAVE, 6250, 4.0, -0.75)
    assert standin._format_rows([h, hc], ["%.4e"] * 2) == python_rows([h, hc], ["%.4e"] * 2)
    for decimals in range(9):
        values = hard_values(decimals, rng)
        fmt = [f"%.{decimals}e", "%.4e"]
        columns = [values, values[::-1]]
        assert standin._format_rows(columns, fmt) == python_rows(columns, fmt), decimals
    # what it does not take goes through Python's % (noresam's %.6f, signs, NaN, 1e-120)
    for columns, fmt in [
        ([WAVE[:50], h[:50], hc[:50]], ["%.6f", "%.4e", "%.4e"]),
        ([np.array([1.0, -2.5, np.nan, np.inf, 1e-120, 1e150])], ["%.4e"]),
        ([np.array([])], ["%.4e"]),
    ]:
        assert standin._format_rows(columns, fmt) == python_rows(columns, fmt)


def test_reader_fast_parse_is_loadtxt_to_the_bit(tmp_path):
    from kspec_xr.templates import bosz, read_bosz_table

    rng = np.random.default_rng(8)
    root = write_standin_grid(tmp_path / "g", **TINY)
    for path in root.rglob("*.txt.gz"):
        raw = gzip.decompress(path.read_bytes()).rstrip()
        fast = bosz._parse_fixed_width(raw)
        assert fast is not None and fast.shape == (raw.count(b"\n") + 1, 2)
        assert fast.view(np.int64).tolist() == np.loadtxt(io.BytesIO(raw)).view(np.int64).tolist()
    for fmt in ("%.4e %.4e", "%.6E  %.2e", " %.13e\t%.1e", "%.9e"):
        table = 10 ** rng.uniform(-8, 8, (2000, fmt.count("%")))  # powers within 10**±22
        table[::5] = np.round(table[::5], 2)
        raw = "\n".join(fmt % tuple(row) for row in table).encode()
        expected = np.loadtxt(io.BytesIO(raw), ndmin=2)
        assert (
            bosz._parse_fixed_width(raw).view(np.int64).tolist() == expected.view(np.int64).tolist()
        ), fmt
    # any other text is left to numpy.loadtxt (and its errors)
    for raw in (
        b"1.0e+00\n-1.0e+00",  # a sign: another width
        b"1.0e+00 2.0e+00\n3.0e+00 4.0e+0x",
        b"1.0e+30",  # a power beyond 10**22
        b"# header\n1.0e+00",
        b"1.0e+00\r\n2.0e+00",
        b"1.5 2.5\n3.5 4.5",
    ):
        assert bosz._parse_fixed_width(raw) is None
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"1.5 2.5\n3.5 4.5\n")
    np.testing.assert_array_equal(read_bosz_table(plain, ncols=2), [[1.5, 2.5], [3.5, 4.5]])


def test_writer_logs_its_progress(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(standin, "_PROGRESS_EVERY", 0.0)
    with caplog.at_level("INFO", logger="kspec_xr"):
        write_standin_grid(tmp_path / "g", **TINY)
    lines = [r.getMessage() for r in caplog.records if "stand-in templates" in r.getMessage()]
    assert lines == [f"generating stand-in templates: {i}/4" for i in (1, 2, 3)]


def test_a_second_setup_reuses_the_read_of_the_first(tmp_path, monkeypatch):
    from kspec_xr.templates import bosz, prepare_templates
    from kspec_xr.templates import prepared as prepared_module

    root = write_standin_grid(tmp_path / "g", **{**TINY, "wave_range": (3900.0, 4500.0)})
    wave = np.linspace(4000.0, 4400.0, 300)
    reads: list = []
    real = bosz.read_bosz_table
    monkeypatch.setattr(bosz, "read_bosz_table", lambda *a, **k: reads.append(a) or real(*a, **k))
    monkeypatch.setattr(prepared_module, "_RECENT_READ", prepared_module._RecentRead())
    grid = open_bosz(root)
    sharp = prepare_templates(grid, wave, 3.5, cache=False)
    broad = prepare_templates(open_bosz(root), wave, 5.0, cache=False)  # the same files
    assert len(reads) == 4  # each file once, for both setups
    prepared_module._RECENT_READ.clear()
    again = prepare_templates(grid, wave, 5.0, cache=False)
    assert len(reads) == 8
    for name in ("flux", "continuum", "mags"):
        np.testing.assert_array_equal(broad[name].values, again[name].values)
    assert not np.array_equal(sharp["flux"].values, broad["flux"].values)
    victim = sorted(root.rglob("*.txt.gz"))[0]  # a changed file is read again
    victim.write_bytes(gzip.compress(b"1.0e+00 1.0e+00\n"))
    with pytest.raises(TemplateError, match=re.escape(str(victim))):
        prepare_templates(open_bosz(root), wave, 5.0, cache=False)


# ---------------------------------------------------------------------------
# the cached default grid
# ---------------------------------------------------------------------------


@pytest.fixture
def reduced_default(tmp_path, monkeypatch):
    monkeypatch.setenv("KSPEC_XR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        standin,
        "DEFAULT_GRID",
        {
            "teff": (5500, 6000),
            "logg": (4.5,),
            "mh": (0.0,),
            "alpha": (0.0,),
            "wave_range": (5000.0, 5100.0),
        },
    )
    monkeypatch.setattr(standin, "_BUILT", {})
    return tmp_path / "cache"


def test_standin_grid_path_builds_once(reduced_default, caplog):
    path = standin_grid_path()
    assert path.parent == reduced_default and (path / "COMPLETE").is_file()
    assert "generating the stand-in BOSZ grid (once)" in caplog.text
    assert standin_grid_path() == path
    standin._BUILT.clear()  # a new process: finds the finished grid on disk
    caplog.clear()
    assert standin_grid_path() == path
    assert "generating" not in caplog.text
    grid = open_bosz()
    assert grid.shape[:4] == (2, 1, 1, 1) and grid.attrs["source"] == str(path)


def test_standin_grid_path_survives_a_race(reduced_default):
    results, errors = [], []

    def worker():
        try:
            results.append(standin_grid_path())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    leftovers = [p.name for p in reduced_default.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert len(list(results[0].rglob("*.txt.gz"))) == 2


def test_an_unfinished_grid_is_replaced(reduced_default):
    key_dir = standin_grid_path()
    (key_dir / "COMPLETE").unlink()
    standin._BUILT.clear()
    assert standin_grid_path() == key_dir and (key_dir / "COMPLETE").is_file()


def test_generator_change_gives_a_new_grid(reduced_default, monkeypatch):
    first = standin_grid_path()
    monkeypatch.setitem(standin.DEFAULT_GRID, "teff", (5500, 6000, 6500))
    second = standin_grid_path()
    assert second != first and len(list(second.rglob("*.txt.gz"))) == 3
