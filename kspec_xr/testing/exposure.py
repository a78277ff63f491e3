"""A simulated K-SPEC exposure with a known truth.

:func:`make_exposure` writes a 2dfdr-style RED file (read back with
:func:`kspec_xr.open_red`), the ATLAS-RefCat2 catalogue of its standard stars
(photometry synthesised through the real speclite curves, Gaia in Vega), and
returns the truth (throughput, true spectra, stellar parameters, radial
velocities, which standards were spoilt and how).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits

from .._base.bands import ab_offset
from .._base.dust import band_ratio
from .._base.regions import read_regions
from ..io import open_red
from ..io.catalog import REFCAT2_COLUMNS, REFCAT2_PHOTOMETRY
from ..kernels.air import air_to_vacuum
from ..kernels.resample import SIGMA_PER_FWHM, edges_from_centers, resample_matrix
from ..kernels.rv import C_KMS
from ..stages.photometry import synthetic_mags
from ..templates.standin import bosz_wavelength, surface_flux

__all__ = ["SimulatedExposure", "make_exposure", "throughput_curve", "telluric_transmission"]

# the optical bands the simulated catalogue fills (2MASS stays empty: the
# stand-in grid stops at 11 500 Å)
_CATALOG_PHOTOMETRY = [p for p in REFCAT2_PHOTOMETRY if not p[2].startswith("twomass")]


@dataclass
class SimulatedExposure:
    """One simulated exposure: the RED Dataset, its catalogue and the truth."""

    red: xr.Dataset
    catalog: pd.DataFrame
    truth: xr.Dataset
    red_path: Path | None = None
    catalog_path: Path | None = None


def throughput_curve(wavelength: np.ndarray, *, seed: int = 0, peak: float = 1.0) -> np.ndarray:
    """A smooth, realistic total throughput (atmosphere + telescope + fiber + spectrograph).

    Rises steeply in the blue (atmospheric extinction, coatings), peaks near
    6000 Å and falls toward the CCD's red cutoff, with a gentle ripple from
    the dichroic/grating; ``seed`` varies its shape.
    """
    rng = np.random.default_rng(seed + 7919)
    lam = np.asarray(wavelength, dtype=float)
    centre = 6000.0 + rng.uniform(-300, 300)
    width = 2800.0 + rng.uniform(-300, 300)
    blue = 1.0 / (1.0 + np.exp(-(lam - 3900.0 - rng.uniform(-80, 80)) / 180.0))
    ripple = 1.0 + 0.04 * np.sin(
        2 * np.pi * lam / (1500.0 + rng.uniform(-200, 200)) + rng.uniform(0, 6)
    )
    shape = np.exp(-0.5 * ((lam - centre) / width) ** 2) * blue * ripple
    return peak * shape / shape.max()


def telluric_transmission(wavelength: np.ndarray, *, seed: int = 0, strength: float = 1.0):
    """Atmospheric absorption confined to the default telluric bands (1 outside them)."""
    rng = np.random.default_rng(seed + 104729)
    lam = np.asarray(wavelength, dtype=float)
    trans = np.ones_like(lam)
    for lo, hi in read_regions("telluric_default"):
        inside = (lam > lo) & (lam < hi)
        x = (lam[inside] - lo) / (hi - lo)
        depth = strength * rng.uniform(0.2, 0.7)
        profile = np.sin(np.pi * x) ** 2 * (0.7 + 0.3 * np.cos(37 * x + rng.uniform(0, 6)))
        trans[inside] = 1.0 - depth * np.clip(profile, 0, 1)
    return trans


def _sky_flux(lam: np.ndarray, rng: np.random.Generator, fwhm: float) -> np.ndarray:
    """Night-sky flux density per fiber (erg/s/cm²/Å): continuum + emission lines,
    unresolved, so seen at the instrument's FWHM."""
    cont = 2.0e-17 * (1.0 + 0.6 * (lam / 6000.0) ** 2)
    lines = [(5578.9, 3e-15), (5891.6, 1e-15), (5897.6, 8e-16), (6302.0, 1.5e-15), (6365.5, 5e-16)]
    oh = rng.uniform(6500.0, 9300.0, 60)
    lines += [(w, a) for w, a in zip(oh, rng.uniform(2e-16, 2e-15, oh.size), strict=True)]
    out = cont.copy()
    from scipy.special import ndtr

    sigma = fwhm / SIGMA_PER_FWHM
    edges = edges_from_centers(lam)
    width = np.diff(edges)
    for w, a in lines:  # averaged over each pixel, as a spectrograph records them
        out += a * (ndtr((edges[1:] - w) / sigma) - ndtr((edges[:-1] - w) / sigma)) / width
    return out


def _program_star(
    lam: np.ndarray, rng: np.random.Generator, rv_max: float, resolution: float
) -> np.ndarray:
    """4π × the surface flux of a random F/G/K star at a random velocity (its shape only)."""
    h, _ = surface_flux(
        lam / (1.0 + rng.uniform(-rv_max, rv_max) / C_KMS),
        rng.uniform(5200, 7800),
        rng.uniform(3.6, 4.9),
        rng.uniform(-1.8, 0.4),
        0.0,
        resolution=resolution,
    )
    return 4 * np.pi * h


def _galaxy_flux(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A simple emission-line galaxy at random redshift (erg/s/cm²/Å)."""
    z = rng.uniform(0.02, 0.3)
    level = 10 ** rng.uniform(-17.5, -16.6)
    beta = rng.uniform(-1.0, 1.5)
    flux = level * (lam / 6000.0) ** beta
    for rest, ew in ((3728.5, 20), (4862.7, 8), (5008.2, 15), (6564.6, 30), (6585.3, 8)):
        w = rest * (1 + z)
        flux += (
            level
            * ew
            * rng.uniform(0.3, 1.5)
            / (np.sqrt(2 * np.pi) * 2.0)
            * np.exp(-0.5 * ((lam - w) / 2.0) ** 2)
        )
    return flux


def _draw_offgrid(rng, lo, hi, step):
    """Uniform draw in [lo, hi] kept at least 15 % of a step away from grid nodes."""
    while True:
        value = rng.uniform(lo, hi)
        frac = (value / step) % 1.0
        if 0.15 < frac < 0.85:
            return float(value)


def make_exposure(
    seed: int = 0,
    *,
    n_fiber: int = 64,
    n_standard: int = 6,
    n_sky: int = 8,
    n_pixel: int = 2048,
    wave_range: tuple[float, float] = (3700.0, 9300.0),
    fwhm: float = 2.5,
    fwhm_card: bool = True,
    snr: float = 40.0,
    rv_max: float = 300.0,
    std_teff: tuple[float, float] = (5700.0, 7300.0),
    std_logg: tuple[float, float] = (3.7, 4.8),
    std_mh: tuple[float, float] = (-1.6, 0.3),
    std_mag: tuple[float, float] = (16.0, 16.9),
    mismatch: float = 0.0,
    ebv: tuple[float, float] | None = None,
    catalog_ebv: bool = True,
    star_model: str = "standin",
    bad_standards: Mapping[int, tuple] | None = None,
    n_bright: int = 0,
    n_extra_catalog: int = 5,
    shuffle_catalog: bool = True,
    ra_unit: str = "radians",
    dispaxis: int = 1,
    medium: str = "vacuum",
    declare_medium: bool = True,
    directory: str | Path | None = None,
    name: str = "sim",
) -> SimulatedExposure:
    """Simulate one exposure with a known truth.

    Parameters
    ----------
    seed : int
        Everything random follows from it.
    n_fiber, n_standard, n_sky : int
        Fibers in all, standard stars (``TYPE='C'``) and sky fibers; two
        fibers are unallocated (``U``) and one broken (``N``) when there is
        room; the rest are program targets (emission-line galaxies and stars).
    n_pixel, wave_range, fwhm : int, (float, float), float
        Linear (scrunched) wavelength grid and instrument FWHM in Å
        (written as ``SPECFWHM``).
    fwhm_card : bool
        False leaves ``SPECFWHM`` out of the header, as 2dfdr does.
    snr : float
        Typical per-pixel S/N of a standard at the throughput peak (stars
        of ``std_mag`` span roughly 0.75–1.25 of it).
    rv_max : float
        Radial velocities are uniform in ±rv_max km/s.
    std_teff, std_logg, std_mh, std_mag
        Ranges of the standards' parameters (drawn off the grid nodes) and
        of their PS1 r magnitudes.
    mismatch : float
        0 draws the standards from the grid's own spectral model; e.g. 0.3
        scales each star's line strengths by a factor in 1 ± 0.3 and tilts its
        continuum by (λ/5500)**t, |t| ≤ mismatch/6 — stars the grid does not
        match exactly.
    ebv : (float, float), optional
        Redden each standard by an E(B−V) drawn uniformly in this range,
        through the G23 law at an R_V drawn in 2.9–3.3 (the calibration
        assumes 3.1: the stars' dust is not exactly the model's).
    catalog_ebv : bool
        With ``ebv``: write each standard's g-band extinction into the
        catalogue's ``Ag`` (with a 5 % error, as from a dust map); False leaves
        ``Ag`` at 0, so E(B−V) must be fitted.
    star_model : {"standin", "other"}
        ``"other"`` builds the standards another way than the grid: the
        stand-in's spectrum times a continuum ripple of 1–3 % (random period
        and phase per star) and ~150 extra absorption lines from a line list
        the grid does not have (the same list for every star, depths growing
        with [M/H] and falling Teff), with line strengths scaled by 0.85–1.15.
    bad_standards : mapping, optional
        Spoil standards (index in fiber order → what): ``("photometry", dm)``
        shifts its catalogue magnitudes by ``dm`` in every band; ``("no_star",)``
        leaves its fibre on empty sky; ``("counts", f)`` multiplies the light in
        its fibre by ``f`` (another star's light); ``("dead",)`` gives it the
        negative, noise-only counts of a dead fibre.  ``truth.bad`` records it.
    n_bright : int
        Program fibres that hold bright stars (r = 14.5–15.5, brighter than the
        standards): their pulls test the calibration's variance, where
        photon noise no longer hides it.
    n_extra_catalog : int
        Catalogue rows for field stars that no fiber observed.
    shuffle_catalog : bool
        Shuffle the catalogue rows (position matching must not rely on order).
    ra_unit : {"radians", "degrees"}
        Unit of ``RA``/``DEC`` in the FIBRES table (2dfdr writes radians).
    dispaxis : {1, 2}
        2 stores the images transposed on disk (``DISPAXIS=2``).
    medium : {"vacuum", "air"}
        The medium of the file's wavelength grid.  With ``"air"`` the linear
        pixel grid is an air grid and every physical spectrum (stars,
        galaxies, sky lines, telluric bands) is evaluated at the pixels'
        vacuum wavelengths (``truth.vacuum_wavelength``).
    declare_medium : bool
        Write the medium as ``CTYPE1`` (``'WAVE'`` / ``'AWAV'``); False writes
        2dfdr's ``'Wavelength'``, which says nothing (read as air).
    directory : path, optional
        Where the RED file and the catalogue CSV go (a new temporary folder
        when omitted).
    name : str
        File stem: ``{name}red.fits`` and ``{name}_standards.csv``.

    Returns
    -------
    SimulatedExposure
        ``red`` (the Dataset read back by :func:`kspec_xr.open_red`),
        ``catalog`` (RefCat2 columns), ``truth`` and the two paths.

    Notes
    -----
    Counts per pixel are ``C = A·T(λ)·t(λ)·F(λ)`` with throughput ``A·T``
    (count per erg/s/cm²/Å), telluric transmission ``t`` and top-of-atmosphere
    flux ``F``; the noise is Gaussian with the Poisson variance of object + sky
    plus read noise, and the sky is subtracted.  So the true calibration is
    ``1/(A·T)`` (``truth.calibration``) wherever ``t = 1``.
    """
    if n_standard < 0 or n_sky < 0 or n_standard + n_sky > n_fiber:
        raise ValueError("n_standard + n_sky must not exceed n_fiber")
    if star_model not in ("standin", "other"):
        raise ValueError(f"star_model must be 'standin' or 'other', not {star_model!r}")
    bad_standards = dict(bad_standards or {})
    for k, what in bad_standards.items():
        if not 0 <= int(k) < n_standard or not what or what[0] not in _SPOILS:
            raise ValueError(
                f"bad_standards[{k!r}] = {what!r}: give a standard index below {n_standard} and "
                f"one of {', '.join(_SPOILS)}"
            )
    if ra_unit not in ("radians", "degrees"):
        raise ValueError("ra_unit must be 'radians' or 'degrees'")
    if medium not in ("vacuum", "air"):
        raise ValueError(f"medium must be 'vacuum' or 'air', not {medium!r}")
    rng = np.random.default_rng(seed)
    lam = np.linspace(wave_range[0], wave_range[1], n_pixel)  # the file's grid, in `medium`
    vac = air_to_vacuum(lam) if medium == "air" else lam  # where the light is evaluated
    pix_edges = edges_from_centers(vac)

    # --- fibers and positions ------------------------------------------------
    types = np.full(n_fiber, "P")
    order = rng.permutation(n_fiber)
    types[order[:n_standard]] = "C"
    types[order[n_standard : n_standard + n_sky]] = "S"
    spare = order[n_standard + n_sky :]
    if spare.size >= 6:
        types[spare[:2]] = "U"
        types[spare[2]] = "N"
    ra0, dec0 = rng.uniform(0, 360), rng.uniform(-60, 30)
    r = np.sqrt(rng.uniform(0, 1, n_fiber)) * 0.95
    phi = rng.uniform(0, 2 * np.pi, n_fiber)
    dec = dec0 + r * np.sin(phi)
    ra = (ra0 + r * np.cos(phi) / np.cos(np.radians(dec))) % 360

    # --- standards: native spectra, magnitudes, observed-resolution spectra --
    std_idx = np.flatnonzero(types == "C")
    native = bosz_wavelength(10000)
    native = native[(native >= 2940.0) & (native <= 11600.0)]
    native_edges = edges_from_centers(native)
    sigma = np.sqrt(np.maximum(fwhm**2 - (lam / 10000.0) ** 2, 0.0)) / SIGMA_PER_FWHM
    to_pixels = resample_matrix(native_edges, pix_edges, sigma)
    bands = [band for _, _, band in _CATALOG_PHOTOMETRY]
    n_std = std_idx.size
    std = {
        k: np.zeros(n_std)
        for k in (
            "teff", "logg", "mh", "alpha", "rv", "mag_r", "line_scale", "continuum_tilt",
            "ebv", "r_v", "ag",
        )
    }  # fmt: skip
    dust_rng = np.random.default_rng(seed + 7919)  # its own stream: the rest is unchanged
    std_true = np.zeros((n_std, n_pixel))
    std_mags = np.zeros((n_std, len(bands)))
    for k in range(n_std):
        teff = _draw_offgrid(rng, *std_teff, 250.0)
        logg = _draw_offgrid(rng, *std_logg, 0.5)
        mh = _draw_offgrid(rng, *std_mh, 0.25)
        rv = rng.uniform(-rv_max, rv_max)
        mag_r = rng.uniform(*std_mag)
        line_scale = 1.0 + (rng.uniform(-mismatch, mismatch) if mismatch else 0.0)
        tilt = rng.uniform(-mismatch, mismatch) / 6.0 if mismatch else 0.0
        h, _ = surface_flux(
            native / (1.0 + rv / C_KMS),
            teff,
            logg,
            mh,
            0.0,
            resolution=10000.0,
            line_scale=line_scale,
            continuum_tilt=tilt,
        )
        surface = 4.0 * np.pi * h
        if star_model == "other":
            surface = surface * _other_star_factor(native, rv, teff, mh, seed * 1009 + k)
        e_bv, r_v, a_g = 0.0, 3.1, 0.0
        if ebv is not None:
            e_bv, r_v = dust_rng.uniform(*ebv), dust_rng.uniform(2.9, 3.3)
            surface = surface * 10.0 ** (-0.4 * e_bv * _extinction(native, r_v))
            a_g = e_bv * band_ratio("panstarrs-g") * (1.0 + 0.05 * dust_rng.normal())
        m_surface = synthetic_mags(native, surface, bands)
        dilution = 10 ** (-0.4 * (mag_r - m_surface[bands.index("panstarrs-r")]))
        std_mags[k] = m_surface - 2.5 * np.log10(dilution)
        std_true[k] = to_pixels @ (surface * dilution)
        values = (teff, logg, mh, 0.0, rv, mag_r, line_scale, tilt, e_bv, r_v, a_g)
        for key, value in zip(std, values, strict=True):
            std[key][k] = value

    # --- program targets ---------------------------------------------------
    true_flux = np.zeros((n_fiber, n_pixel))
    true_flux[std_idx] = std_true
    prog_resolution = float(np.median(lam) / fwhm)
    for f in np.flatnonzero(types == "P"):
        if rng.uniform() < 0.3:
            star = _program_star(vac, rng, rv_max, prog_resolution)
            true_flux[f] = star * 10 ** rng.uniform(-22.3, -21.3)
        else:
            true_flux[f] = _galaxy_flux(vac, rng)
    # bright program stars (their own random stream: the rest of the exposure is unchanged)
    bright_rng = np.random.default_rng(seed + 4242)
    for f in np.flatnonzero(types == "P")[:n_bright]:
        flux = _program_star(vac, bright_rng, rv_max, prog_resolution)
        m_r = synthetic_mags(vac, flux, ["panstarrs-r"])[0]
        true_flux[f] = flux * 10 ** (-0.4 * (bright_rng.uniform(14.5, 15.5) - m_r))

    # --- instrument, atmosphere, noise --------------------------------------
    shape = throughput_curve(lam, seed=seed)
    telluric = telluric_transmission(vac, seed=seed)
    peak = int(np.argmax(shape))
    typical = np.median(std_true[:, peak]) if n_std else 1e-16
    gain = snr**2 / typical * 1.15  # counts per unit flux density at the peak
    throughput = gain * shape
    sky_counts = throughput * _sky_flux(vac, rng, fwhm)
    read_noise = 3.5 * np.sqrt(5.0)  # e-, summed over the extraction profile
    bad = np.full(n_std, "", dtype=object)
    catalog_mags = std_mags.copy()
    for k, what in bad_standards.items():
        bad[k] = " ".join(map(str, what))
        if what[0] == "photometry":
            catalog_mags[k] += float(what[1])
        elif what[0] == "no_star":
            true_flux[std_idx[k]] = 0.0
        elif what[0] == "counts":
            true_flux[std_idx[k]] *= float(what[1])
    obj_counts = throughput * telluric * true_flux
    variance = np.maximum(obj_counts, 0) + sky_counts + read_noise**2
    counts = obj_counts + rng.normal(size=obj_counts.shape) * np.sqrt(variance)
    for k, what in bad_standards.items():
        if what[0] == "dead":  # a dead fibre: a negative bias and read noise only
            f = std_idx[k]
            noise = np.random.default_rng(seed + 31 * k).normal(size=n_pixel)
            counts[f] = -40.0 + read_noise * noise
            variance[f] = read_noise**2
            true_flux[f] = 0.0
    dead = np.isin(types, ["U", "N"])
    counts[dead] = np.nan
    variance[dead] = np.nan
    true_flux[dead] = np.nan

    # --- catalogue ----------------------------------------------------------
    catalog, catalog_row = _make_catalog(
        rng,
        ra[std_idx],
        dec[std_idx],
        catalog_mags,
        std["teff"],
        bands,
        ra0,
        dec0,
        n_extra=n_extra_catalog,
        shuffle=shuffle_catalog,
        ag=std["ag"] if ebv is not None and catalog_ebv else None,
    )

    # --- the RED file ---------------------------------------------------------
    folder = (
        Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="kspec_sim_"))
    )
    folder.mkdir(parents=True, exist_ok=True)
    red_path = folder / f"{name}red.fits"
    cat_path = folder / f"{name}_standards.csv"
    hdul = _red_hdulist(
        lam,
        counts,
        variance,
        types,
        ra,
        dec,
        sky_counts,
        fwhm=fwhm,
        fwhm_card=fwhm_card,
        seed=seed,
        mags=_fiber_mags(types, std_idx, std["mag_r"], rng),
        ra_unit=ra_unit,
        dispaxis=dispaxis,
        field=(ra0, dec0),
        ctype=(
            ({"air": "AWAV", "vacuum": "WAVE"}[medium], f"{medium} wavelengths, linear axis")
            if declare_medium
            else ("Wavelength", "scrunched linear wavelength axis")
        ),
    )
    hdul.writeto(red_path, overwrite=True)
    catalog.to_csv(cat_path, index=False, na_rep="", float_format="%.7g")
    red = open_red(red_path).load()

    fiber = np.arange(1, n_fiber + 1)
    truth = xr.Dataset(
        {
            "flux": (
                ("fiber", "wavelength"),
                true_flux,
                {"units": "erg/cm2/s/A", "long_name": "true top-of-atmosphere flux density"},
            ),
            "telluric": ("wavelength", telluric, {"units": "1"}),
            "vacuum_wavelength": ("wavelength", vac, {"units": "Angstrom"}),
            "throughput": ("wavelength", throughput, {"units": "count/(erg/cm2/s/A)"}),
            "calibration": ("wavelength", 1.0 / throughput, {"units": "erg/cm2/s/A/count"}),
            "sky": ("wavelength", sky_counts, {"units": "count"}),
            "fiber_type": ("fiber", types),
            "bright": (
                "fiber",
                np.isin(np.arange(n_fiber), np.flatnonzero(types == "P")[:n_bright]),
            ),
            "standard_fiber": ("standard", fiber[std_idx]),
            "catalog_row": ("standard", catalog_row),
            **{key: ("standard", value) for key, value in std.items()},
            "bad": ("standard", bad.astype(str), {"long_name": "how the standard was spoilt"}),
            "mag": (("standard", "band"), std_mags, {"units": "mag", "system": "AB"}),
        },
        coords={
            "fiber": fiber,
            "wavelength": ("wavelength", lam, {"units": "Angstrom"}),
            "band": bands,
        },
        attrs={
            "seed": seed,
            "fwhm": fwhm,
            "snr": snr,
            "mismatch": mismatch,
            "star_model": star_model,
            "medium": medium,
            "declare_medium": int(declare_medium),
        },
    )
    return SimulatedExposure(red, catalog, truth, red_path, cat_path)


_SPOILS = ("photometry", "no_star", "counts", "dead")


def _extinction(wave: np.ndarray, r_v: float) -> np.ndarray:
    """A(λ)/E(B−V) of the G23 law at ``r_v`` (vacuum Å)."""
    from dust_extinction.parameter_averages import G23

    x = 1e4 / np.clip(wave, 912.0 * 1.0001, 3.2e5 * 0.9999)
    return r_v * np.asarray(G23(Rv=r_v).evaluate(x, r_v))


def _other_star_factor(native, rv, teff, mh, seed):
    """What a star built another way has that the grid does not (see ``star_model``).

    A continuum ripple of 1–3 % with a random period (600–2500 Å) and phase,
    times ~150 absorption lines from a fixed list of its own (rest frame,
    shifted by the star's RV), Gaussian at R ≈ 10 000, depths up to ~15 %
    growing with [M/H] and falling Teff.
    """
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.01, 0.03)
    period = rng.uniform(600.0, 2500.0)
    ripple = 1.0 + amplitude * np.sin(2 * np.pi * native / period + rng.uniform(0, 2 * np.pi))
    lines = np.random.default_rng(8675309)  # one line list for every star
    centres = 1.0 / lines.uniform(1.0 / 9500.0, 1.0 / 3700.0, 150)
    depths = lines.uniform(0.01, 0.08, 150) * 10 ** (0.5 * mh) * np.exp(-(teff - 6000.0) / 2000.0)
    depths *= rng.uniform(0.85, 1.15)
    shift = 1.0 + rv / C_KMS
    tau = np.zeros_like(native)
    for centre, depth in zip(centres * shift, depths, strict=True):
        width = centre / 10000.0 / SIGMA_PER_FWHM * 1.5
        near = np.abs(native - centre) < 6 * width
        tau[near] += depth * np.exp(-0.5 * ((native[near] - centre) / width) ** 2)
    return ripple * np.exp(-tau)


def _fiber_mags(types, std_idx, std_mag, rng):
    mags = np.where(types == "P", rng.uniform(17.5, 20.5, types.size), 0.0)
    mags[std_idx] = std_mag
    return mags


def _make_catalog(rng, ra, dec, mags, teff, bands, ra0, dec0, *, n_extra, shuffle, ag=None):
    """RefCat2 rows for the standards (+ field stars); returns (frame, row of each standard)."""
    n_std = ra.size
    jitter = 0.15 / 3600.0  # fiber positions vs catalogue: 0.15"
    ra_c = np.concatenate(
        [
            ra + rng.normal(0, jitter, n_std) / np.cos(np.radians(dec)),
            (ra0 + rng.uniform(-1, 1, n_extra)) % 360,
        ]
    )
    dec_c = np.concatenate([dec + rng.normal(0, jitter, n_std), dec0 + rng.uniform(-1, 1, n_extra)])
    extra_mags = rng.uniform(14.0, 18.0, (n_extra, 1)) + np.linspace(0.3, -0.2, len(bands))
    all_mags = np.vstack([mags, extra_mags])
    all_teff = np.concatenate([teff, rng.uniform(4500, 7500, n_extra)])
    n = n_std + n_extra
    frame = pd.DataFrame({c: np.full(n, np.nan) for c in REFCAT2_COLUMNS})
    cosd = np.cos(np.radians(dec0))
    frame["dstDegrees"] = np.hypot((ra_c - ra0) * cosd, dec_c - dec0)
    frame["objid"] = rng.integers(10**17, 2 * 10**17, n)
    frame["RA"], frame["Dec"] = ra_c, dec_c
    frame["plx"], frame["dplx"] = rng.uniform(0.2, 2.0, n), rng.uniform(0.02, 0.08, n)
    frame["pmra"], frame["pmdec"] = rng.normal(0, 8, n), rng.normal(0, 8, n)
    frame["dpmra"], frame["dpmdec"] = rng.uniform(0.02, 0.1, n), rng.uniform(0.02, 0.1, n)
    for column, err_column, band in _CATALOG_PHOTOMETRY:
        gaia = band.startswith("gaia")
        err = rng.uniform(0.002, 0.006, n) if gaia else rng.uniform(0.008, 0.015, n)
        observed = all_mags[:, bands.index(band)] + rng.normal(size=n) * err
        frame[column] = observed - ab_offset(band)  # Gaia DR2 in Vega, as RefCat2 has it
        frame[err_column] = err
    frame["Teff"] = np.round(all_teff + rng.normal(0, 150, n))
    frame["AGaia"] = frame["Ag"] = frame["dupvar"] = 0.0
    if ag is not None:  # the standards' g-band extinction, as RefCat2 gives it
        frame.loc[: n_std - 1, "Ag"] = np.round(ag, 3)
    frame["rp1"], frame["r1"], frame["r10"] = rng.uniform(5, 30, n), rng.uniform(10, 36, n), 36.0
    for b in "griz":
        frame[f"{b}chi"], frame[f"{b}contrib"] = rng.uniform(0.3, 2.0, n), 0.0
    frame["nstat"] = rng.integers(0, 12, n)
    frame = frame.astype({"objid": "int64", "nstat": "int64"})
    row = np.arange(n)
    if shuffle:
        perm = rng.permutation(n)
        frame = frame.iloc[perm].reset_index(drop=True)
        row = np.argsort(perm)  # new row of each original row
    return frame, row[:n_std]


def _red_hdulist(
    lam,
    counts,
    variance,
    types,
    ra,
    dec,
    sky,
    *,
    fwhm,
    seed,
    mags,
    ra_unit,
    dispaxis,
    field,
    fwhm_card=True,
    ctype=("WAVE", "vacuum wavelengths, linear axis"),
):
    n_fiber, n_pixel = counts.shape
    flux32, var32 = counts.astype("float32"), variance.astype("float32")
    if dispaxis == 2:
        flux32, var32 = flux32.T, var32.T
    primary = fits.PrimaryHDU(flux32)
    h = primary.header
    axis = 1 if dispaxis == 1 else 2
    h["BUNIT"] = ("Counts", "units of the extracted spectra")
    h[f"CTYPE{axis}"] = ctype
    h[f"CUNIT{axis}"] = ("Angstroms", "")
    h[f"CRVAL{axis}"] = (float(lam[0]), "wavelength of the reference pixel")
    h[f"CDELT{axis}"] = (float(lam[1] - lam[0]), "wavelength increment per pixel")
    h[f"CRPIX{axis}"] = (1.0, "reference pixel")
    if dispaxis == 2:
        h["DISPAXIS"] = (2, "dispersion along axis 2 (images transposed)")
    h["INSTRUME"] = ("K-SPEC", "instrument")
    h["OBJECT"] = (f"SIMFIELD{seed:04d}", "simulated field")
    h["MEANRA"] = (float(field[0]), "field centre RA (deg)")
    h["MEANDEC"] = (float(field[1]), "field centre Dec (deg)")
    h["EXPOSED"] = (1200.0, "exposure time (s)")
    h["UTMJD"] = (61000.0 + seed * 0.01, "MJD at the start of the exposure")
    h["ZDSTART"] = (30.0, "zenith distance at start (deg)")
    h["ZDEND"] = (32.0, "zenith distance at end (deg)")
    if fwhm_card:
        h["SPECFWHM"] = (float(fwhm), "instrument FWHM (Angstrom)")
    h["SCRUNCH"] = (True, "spectra scrunched to a common linear grid")
    h["HISTORY"] = "simulated by kspec_xr.testing.make_exposure"
    wavela = np.broadcast_to(lam, (n_fiber, n_pixel))
    if dispaxis == 2:
        wavela = wavela.T
    scale = np.pi / 180.0 if ra_unit == "radians" else 1.0
    names = [f"{t}{i + 1:03d}" if t != "U" else "PARKED" for i, t in enumerate(types)]
    cols = [
        fits.Column("NAME", "A20", array=np.array(names)),
        fits.Column("RA", "D", unit=ra_unit, array=ra * scale),
        fits.Column("DEC", "D", unit=ra_unit, array=dec * scale),
        fits.Column("X", "J", unit="microns", array=np.round(ra * 1e3).astype(np.int32)),
        fits.Column("Y", "J", unit="microns", array=np.round(dec * 1e3).astype(np.int32)),
        fits.Column("THETA", "D", unit="radians", array=np.zeros(n_fiber)),
        fits.Column("TYPE", "A1", array=np.array(types)),
        fits.Column("PIVOT", "I", array=np.arange(1, n_fiber + 1, dtype=np.int16)),
        fits.Column("MAGNITUDE", "D", array=mags),
        fits.Column("PID", "J", array=np.zeros(n_fiber, dtype=np.int32)),
        fits.Column("COMMENT", "A40", array=np.array(["simulated"] * n_fiber)),
    ]
    fibres = fits.BinTableHDU.from_columns(cols, name="FIBRES")
    return fits.HDUList(
        [
            primary,
            fits.ImageHDU(var32, name="VARIANCE"),
            fits.ImageHDU(wavela.astype("float64"), name="WAVELA"),
            fibres,
            fits.ImageHDU(sky.astype("float32"), name="SKY"),
            fits.ImageHDU(np.ones(n_fiber, dtype="float32"), name="THPUT"),
        ]
    )
