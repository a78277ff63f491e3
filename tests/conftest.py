"""Shared test fixtures: synthetic RED files and a dask "no compute" guard."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from kspec_xr import testing


@pytest.fixture(scope="session")
def raise_if_dask_computes():
    """The context manager ``kspec_xr.testing.raise_if_dask_computes(max_computes=0)``."""
    return testing.raise_if_dask_computes


def build_red_hdulist(
    nfib: int = 7,
    npix: int = 40,
    *,
    dispaxis: int | None = None,
    ra_unit: str | None = "radians",
    wavela: str | None = "common",
    seed: int = 0,
    types: str = "PCSUCPN",
) -> fits.HDUList:
    """A small 2dfdr-like RED file: PRIMARY, VARIANCE, WAVELA, FIBRES.

    ``wavela``: "common" (every fiber the same grid), "per-fiber", or None
    (a linear WCS in the primary header instead).  ``dispaxis=2`` stores the
    images transposed, as (pixel, fiber).
    """
    rng = np.random.default_rng(seed)
    flux = rng.normal(100.0, 10.0, (nfib, npix)).astype(np.float32)
    variance = np.abs(rng.normal(100.0, 5.0, (nfib, npix))).astype(np.float32)
    flux[0, :3] = np.nan
    variance[-1, :] = 0.0
    flux[-1, :] = 0.0
    wave = np.broadcast_to(5000.0 + 1.25 * np.arange(npix), (nfib, npix)).astype(np.float64)
    if wavela == "per-fiber":
        wave = wave + 0.01 * np.arange(nfib)[:, None]

    def oriented(a):
        return np.ascontiguousarray(a.T) if dispaxis == 2 else a

    primary = fits.PrimaryHDU(oriented(flux))
    header = primary.header
    header["OBJECT"] = ("tile 42", "field name")
    header["SPECFWHM"] = (2.1, "instrument FWHM [A]")
    header["UTMJD"] = 60000.5
    if dispaxis is not None:
        header["DISPAXIS"] = (dispaxis, "dispersion axis")
    if wavela is None:
        axis = 2 if dispaxis == 2 else 1
        header[f"CRVAL{axis}"] = 5000.0
        header[f"CDELT{axis}"] = 1.25
        header[f"CRPIX{axis}"] = 1.0
    header.add_history("2dfdr reduced")
    hdus = [primary, fits.ImageHDU(oriented(variance), name="VARIANCE")]
    if wavela is not None:
        hdus.append(fits.ImageHDU(oriented(wave), name="WAVELA"))
    ra = rng.uniform(0.1, 6.2, nfib)
    dec = rng.uniform(-1.4, 1.4, nfib)
    if ra_unit is not None and ra_unit.startswith("deg"):
        ra, dec = np.degrees(ra), np.degrees(dec)
    type_codes = (types * (nfib // len(types) + 1))[:nfib]
    columns = [
        fits.Column(name="NAME", format="20A", array=[f"star {i}" for i in range(nfib)]),
        fits.Column(name="TYPE", format="1A", array=list(type_codes)),
        fits.Column(name="RA", format="D", unit=ra_unit, array=ra),
        fits.Column(name="DEC", format="D", unit=ra_unit, array=dec),
        fits.Column(name="MAGNITUDE", format="E", array=rng.uniform(12, 18, nfib)),
        fits.Column(name="PIVOT", format="I", array=np.arange(1, nfib + 1)),
        fits.Column(name="X", format="J", unit="microns", array=rng.integers(-1e5, 1e5, nfib)),
    ]
    hdus.append(fits.BinTableHDU.from_columns(columns, name="FIBRES"))
    return fits.HDUList(hdus)


@pytest.fixture(scope="session")
def make_red():
    """The factory :func:`build_red_hdulist` (returns an ``HDUList``)."""
    return build_red_hdulist


@pytest.fixture
def red_path(tmp_path):
    """A small RED file on disk (7 fibers × 40 pixels, common grid, RA in radians)."""
    path = tmp_path / "run1_red.fits"
    build_red_hdulist().writeto(path)
    return path


# --- fixtures shared by several modules (each module still gets its own files) ----------


@pytest.fixture(scope="module")
def small_exposure(tmp_path_factory):
    """A small simulated exposure (24 fibers × 1500 pixels, 6 standards), one per module."""
    return testing.make_exposure(
        1, n_fiber=24, n_standard=6, n_pixel=1500, directory=tmp_path_factory.mktemp("small")
    )


def write_small_standin(tmp_path_factory, **axes):
    """A stand-in grid of only the given nodes (3600-7500 Å) in a folder of its own: its root."""
    from kspec_xr.templates.standin import write_standin_grid

    folder = tmp_path_factory.mktemp("bosz_small")
    return write_standin_grid(folder, **axes, wave_range=(3600, 7500))


def flip_byte(path, offset_from_end: int = 1) -> None:
    """Flip one byte in place (same size, same inode), as a disk error would."""
    import os

    with open(path, "r+b") as fh:
        fh.seek(-offset_from_end, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-offset_from_end, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0x10]))


@pytest.fixture
def fresh_prepared_memory():
    """Nothing prepared in memory before and after the test, as in a new process."""
    from kspec_xr.templates import prepared

    prepared._MEMORY._entries.clear()
    yield
    prepared._MEMORY._entries.clear()
