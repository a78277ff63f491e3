"""Small xarray helpers shared by the stages."""

from __future__ import annotations

import xarray as xr

__all__ = ["bare"]


def bare(da: xr.DataArray) -> xr.DataArray:
    """``da`` without coordinates, so that ``ds.assign`` keeps the Dataset's own.

    ``xr.apply_ufunc(..., keep_attrs=False)`` returns coordinates without their
    attributes; assigning such a result would replace the Dataset's coordinates
    (and their units) with those bare copies.
    """
    return da.drop_vars(list(da.coords))
