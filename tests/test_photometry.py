"""Synthetic photometry and Teff-from-colours, checked against known truths."""

from __future__ import annotations

import astropy.units as u
import dask.array as da
import numpy as np
import pytest
import speclite.filters
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from kspec_xr import KspecError, synthetic_mags, teff_from_colors
from kspec_xr._base.bands import KNOWN_BANDS, TEFF_FLAGS, VEGA_TO_AB, ab_offset, filter_curve, to_ab
from kspec_xr.stages.photometry import _cached_weights, band_weights
from kspec_xr.testing import raise_if_dask_computes

C_AA = 2.99792458e18  # A/s
HC_OVER_K = 1.4387769e8  # h c / k_B in A K

# Covers every supported band (sdss2010-u from 2939 A, twomass-Ks to 23990 A).
WIDE = np.geomspace(2500.0, 26000.0, 60000)
OPTICAL_BANDS = ["gaiadr2-G", "gaiadr2-BP", "gaiadr2-RP", *(f"panstarrs-{b}" for b in "griz")]


def blackbody(wave, teff):
    """Planck F_lambda shape (arbitrary scale), rows = temperatures."""
    teff = np.atleast_1d(np.asarray(teff, dtype=float))
    return 1e27 / wave**5 / np.expm1(HC_OVER_K / (wave[None, :] * teff[:, None]))


def reference_mags(wave, flux, bands):
    """Slow, obvious implementation: one np.trapezoid per spectrum and band."""
    flux = np.atleast_2d(flux)
    out = np.empty((flux.shape[0], len(bands)))
    for j, band in enumerate(bands):
        fwave, fresp = filter_curve(band)
        s = np.interp(wave, fwave, fresp, left=0.0, right=0.0)
        norm = np.trapezoid(3631e-23 * C_AA / wave**2 * s * wave, wave)
        for i, f in enumerate(flux):
            out[i, j] = -2.5 * np.log10(np.trapezoid(f * s * wave, wave) / norm)
    return out


def smooth_spectra(rng, wave, n):
    """Positive, smooth random spectra: a blackbody times a slow random polynomial."""
    x = (wave - wave.mean()) / np.ptp(wave)
    coeffs = rng.normal(0, 0.3, size=(n, 4))
    poly = np.exp(coeffs @ np.vstack([x, x**2, x**3, np.sin(8 * x)]))
    return blackbody(wave, rng.uniform(4000, 9000, n)) * poly


# --------------------------------------------------------------------------
# Magnitude systems and filters
# --------------------------------------------------------------------------


def test_vega_to_ab_table():
    assert VEGA_TO_AB["gaiadr2-G"] == 0.1001
    assert VEGA_TO_AB["gaiadr2-BP"] == 0.0373
    assert VEGA_TO_AB["gaiadr2-RP"] == 0.3535
    assert VEGA_TO_AB["gaiadr3-G"] == pytest.approx(0.1136, abs=1e-9)
    assert VEGA_TO_AB["gaiadr3-BP"] == pytest.approx(0.0155, abs=1e-9)
    assert VEGA_TO_AB["gaiadr3-RP"] == pytest.approx(0.3561, abs=1e-9)
    assert [VEGA_TO_AB[f"twomass-{b}"] for b in ("J", "H", "Ks")] == [0.91, 1.39, 1.85]
    assert ab_offset("panstarrs-r") == 0.0 and ab_offset("sdss2010-g") == 0.0
    assert to_ab(10.0, "twomass-Ks") == pytest.approx(11.85)
    np.testing.assert_allclose(to_ab(np.array([1.0, np.nan]), "gaiadr2-BP"), [1.0373, np.nan])


def test_filter_curves_come_from_speclite_and_are_cached():
    for band in KNOWN_BANDS:
        wave, resp = filter_curve(band)
        ref = speclite.filters.load_filter(band)
        np.testing.assert_array_equal(wave, ref.wavelength)
        np.testing.assert_array_equal(resp, ref.response)
        assert resp[0] == 0 and resp[-1] == 0 and not wave.flags.writeable
        assert filter_curve(band)[0] is wave


def test_unknown_band_lists_the_known_ones():
    with pytest.raises(KspecError, match="unknown band 'gaia-G'.*panstarrs-g.*twomass-Ks"):
        filter_curve("gaia-G")
    with pytest.raises(KspecError, match="unknown band"):
        synthetic_mags(WIDE, np.ones(WIDE.size), ["panstarrs-g", "bessell-V"])
    with pytest.raises(TypeError):
        synthetic_mags(WIDE, np.ones(WIDE.size), [3])


# --------------------------------------------------------------------------
# synthetic_mags
# --------------------------------------------------------------------------


def test_flat_fnu_is_zero_ab_in_every_band():
    flat = 3631e-23 * C_AA / WIDE**2
    mags = synthetic_mags(WIDE, flat, KNOWN_BANDS)
    assert mags.shape == (len(KNOWN_BANDS),)
    np.testing.assert_allclose(mags, 0.0, atol=1e-3)
    # A flat f_nu of 1 Jy is 2.5 log10(3631) = 8.9 AB.
    np.testing.assert_allclose(synthetic_mags(WIDE, flat / 3631, KNOWN_BANDS), 8.8998, atol=1e-3)


def test_agrees_with_speclite_on_a_blackbody():
    flux = blackbody(WIDE, 6500.0)[0]
    mags = synthetic_mags(WIDE, flux, KNOWN_BANDS)
    unit = u.erg / u.s / u.cm**2 / u.AA
    for band, mag in zip(KNOWN_BANDS, mags, strict=True):
        ref = speclite.filters.load_filter(band).get_ab_magnitude(flux * unit, WIDE * u.AA)
        assert mag == pytest.approx(ref, abs=1e-3), band


def test_vectorised_equals_slow_reference():
    rng = np.random.default_rng(1)
    wave = np.sort(rng.uniform(2900.0, 24500.0, 9000))  # irregular grid
    flux = smooth_spectra(rng, wave, 12)
    bands = ["sdss2010-u", "gaiadr3-BP", "panstarrs-y", "twomass-H"]
    got = synthetic_mags(wave, flux, bands)
    np.testing.assert_allclose(got, reference_mags(wave, flux, bands), atol=1e-6, rtol=0)
    # Any leading shape: (2, 6, n_wave) -> (2, 6, n_band).
    np.testing.assert_allclose(
        synthetic_mags(wave, flux.reshape(2, 6, -1), bands), got.reshape(2, 6, -1)
    )


def test_scaling_by_ten_is_minus_2p5_exactly():
    flux = smooth_spectra(np.random.default_rng(2), WIDE, 3)
    diff = synthetic_mags(WIDE, 10 * flux, OPTICAL_BANDS) - synthetic_mags(
        WIDE, flux, OPTICAL_BANDS
    )
    np.testing.assert_allclose(diff, -2.5, atol=1e-12, rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(1e-30, 1e30),
    teff=st.floats(3000.0, 40000.0),
)
def test_property_magnitude_shifts_with_log_scale(scale, teff):
    wave = np.geomspace(3000.0, 11500.0, 3000)
    flux = blackbody(wave, teff)
    shift = synthetic_mags(wave, scale * flux, OPTICAL_BANDS) - synthetic_mags(
        wave, flux, OPTICAL_BANDS
    )
    np.testing.assert_allclose(shift, -2.5 * np.log10(scale), atol=1e-9, rtol=0)


def test_weights_are_built_once_per_grid_and_bands():
    wave = np.linspace(3500.0, 10000.0, 4001)
    _cached_weights.cache_clear()
    synthetic_mags(wave, np.ones((3, wave.size)), ["panstarrs-r", "panstarrs-i"])
    synthetic_mags(wave.copy(), np.ones((5, wave.size)), ("panstarrs-r", "panstarrs-i"))
    info = _cached_weights.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    w = band_weights(wave, ["panstarrs-r", "panstarrs-i"])
    assert w.shape == (wave.size, 2) and w.flags.writeable
    flat = 3631e-23 * C_AA / wave**2
    np.testing.assert_allclose(flat @ w, 1.0, rtol=1e-12)


def test_uncovered_band_is_an_error_naming_band_and_ranges():
    wave = np.linspace(3700.0, 9000.0, 2000)
    with pytest.raises(
        KspecError, match=r"'gaiadr2-G' transmits over 3000\.0-10905\.0 A.*3700\.0-9000\.0 A"
    ):
        synthetic_mags(wave, np.ones(wave.size), ["panstarrs-r", "gaiadr2-G"])
    # The same bands are fine where the grid covers them.
    assert np.isfinite(synthetic_mags(wave, np.ones(wave.size), ["panstarrs-r"])).all()


def test_bad_wavelength_axes():
    flux = np.ones(100)
    with pytest.raises(KspecError, match="strictly increasing"):
        synthetic_mags(np.linspace(9000, 3000, 100), flux, ["panstarrs-r"])
    with pytest.raises(KspecError, match="last axis"):
        synthetic_mags(np.linspace(3000, 9000, 100), np.ones((100, 3)), ["panstarrs-r"])
    with pytest.raises(TypeError):
        synthetic_mags(np.linspace(3000, 9000, 100), "flux", ["panstarrs-r"])


def test_nan_and_non_positive_flux_give_nan_only_where_they_matter():
    wave = np.linspace(3800.0, 10000.0, 5000)
    flux = np.tile(blackbody(wave, 6000.0), (3, 1))
    in_i_only = (wave > 7500) & (wave < 7600)  # inside panstarrs-i, outside g
    flux[0, in_i_only] = np.nan
    flux[1] *= -1.0
    flux[2, -1] = np.inf  # beyond every band's curve
    mags = synthetic_mags(wave, flux, ["panstarrs-g", "panstarrs-i"])
    assert np.isfinite(mags[0, 0]) and np.isnan(mags[0, 1])
    assert np.isnan(mags[1]).all()
    assert np.isfinite(mags[2]).all()


def test_dataarray_dask_stays_lazy_and_equals_eager():
    wave = np.linspace(2990.0, 11000.0, 3000)
    flux = smooth_spectra(np.random.default_rng(3), wave, 7)
    eager = xr.DataArray(
        flux,
        dims=("fiber", "wavelength"),
        coords={"wavelength": wave, "fiber": np.arange(7), "name": ("fiber", list("abcdefg"))},
        attrs={"units": "erg/cm2/s/A"},
    )
    lazy = eager.chunk(fiber=3)  # non-divisible chunks
    with raise_if_dask_computes():
        out = synthetic_mags(None, lazy, OPTICAL_BANDS)
    assert isinstance(out.data, da.Array)
    assert out.dims == ("fiber", "band") and list(out.band.values) == OPTICAL_BANDS
    assert out.attrs["units"] == "mag" and out.attrs["system"] == "AB"
    assert "wavelength" not in out.coords and "name" in out.coords
    expected = synthetic_mags(None, eager, OPTICAL_BANDS)
    assert isinstance(expected.data, np.ndarray)
    xr.testing.assert_allclose(out.compute(), expected)
    np.testing.assert_allclose(expected.values, synthetic_mags(wave, flux, OPTICAL_BANDS))
    # wavelength last is not required for a DataArray
    xr.testing.assert_allclose(synthetic_mags(None, eager.T, OPTICAL_BANDS), expected)


def test_dataarray_errors():
    wave = np.linspace(3500.0, 10500.0, 50)
    arr = xr.DataArray(np.ones((2, 50)), dims=("fiber", "pixel"))
    with pytest.raises(KspecError, match="no 'wavelength' dim"):
        synthetic_mags(wave, arr, ["panstarrs-r"])
    two_d = xr.DataArray(
        np.ones((2, 50)),
        dims=("fiber", "wavelength"),
        coords={"wavelength_2d": (("fiber", "wavelength"), np.tile(wave, (2, 1)))},
    ).rename(wavelength_2d="wavelength")
    with pytest.raises(KspecError, match="common"):
        synthetic_mags(None, two_d, ["panstarrs-r"])
    with pytest.raises(KspecError, match="wavelength= explicitly"):
        synthetic_mags(None, xr.DataArray(np.ones(50), dims="wavelength"), ["panstarrs-r"])


# --------------------------------------------------------------------------
# teff_from_colors
# --------------------------------------------------------------------------

TEFF_NODES = np.arange(4000.0, 9001.0, 250.0)
BB_WAVE = np.geomspace(3000.0, 11500.0, 12000)


@pytest.fixture(scope="module")
def bb_grid():
    mags = synthetic_mags(BB_WAVE, blackbody(BB_WAVE, TEFF_NODES), OPTICAL_BANDS)
    return xr.DataArray(
        mags, dims=("teff", "band"), coords={"teff": TEFF_NODES, "band": OPTICAL_BANDS}
    )


def observed(teffs, offset=5.0):
    mags = synthetic_mags(BB_WAVE, blackbody(BB_WAVE, teffs), OPTICAL_BANDS) + offset
    return xr.DataArray(mags, dims=("star", "band"), coords={"band": OPTICAL_BANDS})


def test_recovers_off_node_teff_from_noiseless_colours(bb_grid):
    truth = np.array([4380.0, 5120.0, 6610.0, 7345.0, 8470.0])
    obs = observed(truth)
    out = teff_from_colors(obs, xr.full_like(obs, 0.01), bb_grid)
    assert out.teff_color.dims == ("star",)
    np.testing.assert_array_less(np.abs(out.teff_color.values - truth), 125.0)
    assert (out.n_colors == 5).all() and (out.teff_color_flag == 0).all()
    assert (out.teff_lo <= truth).all() and (out.teff_hi >= truth).all()
    # at least one grid step either side of the estimate
    assert (out.teff_lo <= out.teff_color - 250 + 1e-9).all()
    assert (out.teff_hi >= out.teff_color + 250 - 1e-9).all()
    assert out.teff_color.attrs["units"] == "K"


def test_box_contains_truth_with_noise(bb_grid):
    rng = np.random.default_rng(42)
    truth = rng.uniform(4300.0, 8700.0, 40)
    obs = observed(truth)
    obs = obs + rng.normal(0.0, 0.02, obs.shape)
    out = teff_from_colors(obs, xr.full_like(obs, 0.02), bb_grid)
    inside = (out.teff_lo.values <= truth) & (truth <= out.teff_hi.values)
    assert inside.all(), truth[~inside]
    assert (out.teff_hi - out.teff_lo).max() < 3000.0  # informative, not the whole grid


def test_missing_colours(bb_grid):
    obs = observed([5000.0, 6000.0, 7000.0])
    obs[0] = np.nan  # no photometry at all
    obs[1, 3:] = np.nan  # Gaia only: BP-RP, G-RP
    obs[2, :3] = np.nan  # PS1 only
    obs[2, 5] = np.nan  # ... without i: g-r only
    err = xr.full_like(obs, 0.01)
    out = teff_from_colors(obs, err, bb_grid)
    assert out.n_colors.values.tolist() == [0, 2, 1]
    assert np.isnan(out.teff_color[0]) and out.teff_color_flag[0] == TEFF_FLAGS["no_color"]
    assert (out.teff_lo[0], out.teff_hi[0]) == (4000.0, 9000.0)
    np.testing.assert_allclose(out.teff_color[1:], [6000.0, 7000.0], atol=60.0)
    # a catalogue without PS1 at all still works (colours from what is there)
    gaia_only = obs.sel(band=OPTICAL_BANDS[:3])
    out2 = teff_from_colors(gaia_only, err.sel(band=OPTICAL_BANDS[:3]), bb_grid)
    assert out2.n_colors.values.tolist() == [0, 2, 0]


def test_grid_layouts_and_edge_flag(bb_grid):
    obs = observed([5300.0, 6800.0])
    err = xr.full_like(obs, 0.01)
    a = teff_from_colors(obs, err, bb_grid)
    # (template, band) with a teff(template) coordinate
    stacked = bb_grid.rename(teff="template").assign_coords(teff=("template", TEFF_NODES))
    xr.testing.assert_allclose(a, teff_from_colors(obs, err, stacked.drop_vars("template")))
    # (logg, band, teff): a second logg plane whose colours are off by 0.3 mag never wins
    other = bb_grid + xr.DataArray([0.0, 0.3, 0.0, 0.3, 0.0, 0.0, 0.3], dims="band")
    grid2 = xr.concat([bb_grid, other], dim=xr.DataArray([4.0, 2.0], dims="logg", name="logg"))
    xr.testing.assert_allclose(
        a, teff_from_colors(obs, err, grid2.transpose("logg", "band", "teff"))
    )
    # a star cooler than the grid: best Teff at the edge, flagged
    cool = teff_from_colors(observed([3500.0]), err[:1], bb_grid)
    assert cool.teff_color_flag.values.tolist() == [TEFF_FLAGS["grid_edge"]]
    assert cool.teff_color[0] == 4000.0 and cool.teff_lo[0] == 4000.0 and cool.teff_hi[0] >= 4250.0


def test_teff_from_colors_lazy(bb_grid):
    rng = np.random.default_rng(5)
    obs = observed(rng.uniform(4500, 8500, 7))
    err = xr.full_like(obs, 0.02)
    eager = teff_from_colors(obs, err, bb_grid)
    with raise_if_dask_computes():
        lazy = teff_from_colors(obs.chunk(star=3), err.chunk(star=3), bb_grid.chunk(teff=5))
    assert isinstance(lazy.teff_color.data, da.Array)
    xr.testing.assert_allclose(lazy.compute(), eager)


def test_teff_from_colors_errors(bb_grid):
    obs = observed([5000.0])
    err = xr.full_like(obs, 0.01)
    with pytest.raises(KspecError, match="no 'teff' coordinate"):
        teff_from_colors(obs, err, bb_grid.drop_vars("teff"))
    with pytest.raises(KspecError, match="none of the color bands"):
        teff_from_colors(obs, err, bb_grid.sel(band=["gaiadr2-G", "panstarrs-z"]))
    with pytest.raises(TypeError, match="mags must be an xarray.DataArray"):
        teff_from_colors(obs.values, err, bb_grid)


def test_too_coarse_grid_is_an_error():
    wave = np.linspace(3000.0, 11000.0, 9)  # 1000 A steps
    with pytest.raises(KspecError, match="samples band 'panstarrs-r'.*at only 2 points"):
        synthetic_mags(wave, np.ones(wave.size), ["panstarrs-r"])


def test_teff_from_colors_edge_shapes(bb_grid):
    empty = observed([5000.0]).isel(star=slice(0, 0))
    out = teff_from_colors(empty, empty, bb_grid)
    assert out.sizes["star"] == 0
    # a one-node grid: the box is that node; a star whose colours no template has
    one = bb_grid.isel(teff=[3])
    obs = observed([5000.0])
    out = teff_from_colors(obs, xr.full_like(obs, 0.01), one)
    assert out.teff_color.item() == 4750.0 and out.teff_lo.item() == out.teff_hi.item() == 4750.0
    holes = bb_grid.where(bb_grid.band != "gaiadr2-BP")
    out = teff_from_colors(obs, xr.full_like(obs, 0.01), holes)
    assert out.teff_color_flag.item() == TEFF_FLAGS["no_template"]
    assert np.isnan(out.teff_color.item()) and out.teff_lo.item() == 4000.0
