"""The standard stars of an exposure: the fibers typed ``C``, as a ``standard`` dimension."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .._base.errors import CalibrationError
from .._base.provenance import add_history
from .._base.schema import source_name, stage, status_attrs

__all__ = ["select_standards"]


@stage
def select_standards(ds: xr.Dataset, /) -> xr.Dataset:
    """Make the standard-star fibers (``TYPE == 'C'``) a ``standard`` dimension.

    Parameters
    ----------
    ds : xr.Dataset
        An exposure from :func:`kspec_xr.open_red`.

    Returns
    -------
    xr.Dataset
        ``ds`` plus ``standard_fiber``, ``standard_name``, ``standard_ra``,
        ``standard_dec`` on a new ``standard`` dimension (0, 1, …, in fiber order).

    Raises
    ------
    CalibrationError
        No fiber has ``TYPE == 'C'``.

    Examples
    --------
    >>> ds.pipe(kx.select_standards).sizes["standard"]   # doctest: +SKIP
    6
    """
    if "fiber_type" not in ds.coords:
        raise CalibrationError(
            f"{source_name(ds)}: no fiber_type coordinate (FIBRES column TYPE); read the "
            "file with kx.open_red or set fiber types from the assign file"
        )
    types = np.char.strip(np.asarray(ds["fiber_type"].values).astype(str))
    idx = np.flatnonzero(types == "C")
    if idx.size == 0:
        found = ", ".join(
            f"{t!r}: {n}" for t, n in zip(*np.unique(types, return_counts=True), strict=True)
        )
        raise CalibrationError(
            f"{source_name(ds)}: no standard-star fiber (TYPE='C') in the FIBRES table "
            f"(types found: {found}); check the fiber allocation or set the types from the "
            "tile's assign file (kx.io.assign_fiber_types)"
        )

    def _coord(name, fill):
        if name in ds.coords:
            return np.asarray(ds[name].values)[idx]
        return np.full(idx.size, fill)

    out = ds.assign_coords(standard=np.arange(idx.size)).assign(
        standard_fiber=(
            "standard",
            np.asarray(ds["fiber"].values)[idx],
            {"long_name": "fiber number of the standard"},
        ),
        standard_name=(
            "standard",
            _coord("fiber_name", "").astype(str),
            {"long_name": "FIBRES NAME"},
        ),
        standard_ra=("standard", _coord("ra", np.nan).astype(float), {"units": "deg"}),
        standard_dec=("standard", _coord("dec", np.nan).astype(float), {"units": "deg"}),
        standard_status=("standard", np.zeros(idx.size, dtype="int16"), status_attrs()),
        standard_reason=(
            "standard",
            np.full(idx.size, ""),
            {"long_name": "why a standard is not used ('' = used)"},
        ),
    )
    return add_history(out, f"select_standards: {idx.size} standard fibers (TYPE='C')")
