"""The pixel bitmask: one table of named bits, described with CF flag attributes.

``mask == 0`` means a good pixel.  Each bit has a name and a meaning; the
``mask`` variable of every Dataset carries ``flag_masks``/``flag_meanings`` so
that netCDF readers (and cf-xarray) can decode it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASK_BITS", "MASK_DTYPE", "bit", "flag_attrs", "data_mask", "describe"]

#: name -> (bit number, meaning).  Append new bits; never renumber.
MASK_BITS: dict[str, tuple[int, str]] = {
    "NONFINITE": (0, "flux is NaN or infinite"),
    "BADVAR": (1, "variance is non-positive or not finite"),
    "NODATA": (2, "no data: unallocated or broken fiber, or outside the extracted range"),
    "TELLURIC": (3, "inside a telluric or user-masked band"),
    "CALIB_INVALID": (4, "flux calibration invalid at this pixel"),
    "CALIB_INTERP": (5, "flux calibration interpolated across a masked band"),
    "STELLAR_LINE": (
        6,
        "core of a strong stellar line (standards; the calibration is bridged there)",
    ),
    "CALIB_FEWSTARS": (
        7,
        "too few standards agree at this pixel: calibration bridged from its neighbours",
    ),
}

MASK_DTYPE = np.dtype("int32")


def bit(*names: str) -> int:
    """Return the integer value of the named bits OR-ed together.

    >>> bit("NONFINITE", "BADVAR")
    3
    """
    value = 0
    for name in names:
        try:
            value |= 1 << MASK_BITS[name][0]
        except KeyError:
            raise ValueError(
                f"unknown mask bit {name!r}; known bits: {', '.join(MASK_BITS)}"
            ) from None
    return value


def flag_attrs() -> dict[str, object]:
    """CF attributes describing the bitmask (for the ``mask`` variable)."""
    names = list(MASK_BITS)
    return {
        "long_name": "pixel quality bitmask (0 = good)",
        "flag_masks": np.array([bit(n) for n in names], dtype=MASK_DTYPE),
        "flag_meanings": " ".join(n.lower() for n in names),
        "flag_descriptions": "; ".join(f"{n.lower()}: {MASK_BITS[n][1]}" for n in names),
        "units": "1",
    }


def data_mask(flux, variance):
    """Bits that follow from the data alone: NONFINITE, BADVAR and NODATA.

    Works on NumPy and dask arrays alike (no compute).  A pixel whose flux and
    variance are both zero, or both NaN, carries no data (2dfdr writes
    unallocated fibers and pixels off the detector that way).
    """
    nonfinite = ~np.isfinite(flux)
    badvar = ~(np.isfinite(variance) & (variance > 0))
    nodata = ((flux == 0) & (variance == 0)) | (np.isnan(flux) & np.isnan(variance))
    return (
        nonfinite.astype(MASK_DTYPE) * bit("NONFINITE")
        + badvar.astype(MASK_DTYPE) * bit("BADVAR")
        + nodata.astype(MASK_DTYPE) * bit("NODATA")
    )


def describe(value: int) -> list[str]:
    """Names of the bits set in one mask value.

    >>> describe(9)
    ['NONFINITE', 'TELLURIC']
    """
    return [name for name, (b, _) in MASK_BITS.items() if int(value) & (1 << b)]
