"""A tile's fiber assignment: read it, and set the fiber types of an exposure from it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from .._base.errors import CatalogError
from .._base.provenance import add_history
from ._fits import _input_file

__all__ = ["TARGET_CLASS_TYPES", "read_assign", "assign_fiber_types"]

#: assign-file ``target_class`` -> 2dfdr fiber type
TARGET_CLASS_TYPES: dict[int, str] = {8: "C", 9: "S", 1: "P", 2: "P", 0: "U"}


def read_assign(path, *, classes: Mapping[int, str] | None = None) -> xr.Dataset:
    """Read a tile's fiber assignment (FITS, CSV or ECSV; one row per fiber).

    Parameters
    ----------
    path : str or os.PathLike
        The assign file, read with ``astropy.table.Table.read``.
    classes : mapping, optional
        ``target_class`` -> fiber type; defaults to :data:`TARGET_CLASS_TYPES`
        (8 → 'C' standard, 9 → 'S' sky, 1, 2 → 'P' program, 0 → 'U' unallocated).

    Returns
    -------
    xarray.Dataset
        Dimension ``fiber`` (1..N in row order, or the file's ``fiber``/``fibre``
        column), a ``fiber_type`` coordinate and every column as a variable.

    Raises
    ------
    CatalogError
        If the file is missing or unreadable, has no ``target_class`` column,
        or a class that is not in ``classes``.

    Examples
    --------
    >>> assign = read_assign("tile42_assign.fits")               # doctest: +SKIP
    >>> ds = assign_fiber_types(open_red("run1_red.fits"), assign)  # doctest: +SKIP
    """
    from astropy.table import Table

    source = _input_file(path, CatalogError, "assign file")
    try:
        fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(source.suffix.lower())
        table = Table.read(source, format=fmt) if fmt else Table.read(source)
    except Exception as err:  # astropy raises many kinds for unreadable tables
        raise CatalogError(
            f"cannot read assign file {source} ({err}); give a FITS, CSV or ECSV table"
        ) from err
    for name in list(table.colnames):  # a UTF-8 byte-order mark or blanks around a name
        clean = name.lstrip("\ufeff").strip()
        if clean and clean != name and clean not in table.colnames:
            table.rename_column(name, clean)
    columns = {name.lower(): name for name in table.colnames}
    if "target_class" not in columns:
        raise CatalogError(
            f"assign file {source} has no target_class column (columns: {table.colnames}); "
            "it needs one class per fiber (8 standard, 9 sky, 1/2 program, 0 unallocated)"
        )
    mapping = dict(TARGET_CLASS_TYPES if classes is None else classes)
    column = table[columns["target_class"]]
    if getattr(column, "mask", None) is not None and np.any(column.mask):
        row = int(np.flatnonzero(column.mask)[0]) + 1
        raise CatalogError(f"assign file {source}, column target_class: row {row} is empty")
    codes = _class_codes(np.asarray(column), source)
    unknown = sorted({int(c) for c in np.unique(codes)} - set(mapping))
    if unknown:
        raise CatalogError(
            f"assign file {source}, column target_class: unknown classes {unknown}; "
            f"known are {mapping}; pass classes={{...}} to map them"
        )
    fiber_col = next(
        (columns[k] for k in ("fiber", "fibre", "fiber_id", "fibre_id") if k in columns), None
    )
    fiber = np.asarray(table[fiber_col]) if fiber_col else np.arange(1, len(table) + 1)
    types = np.array([mapping[int(c)] for c in codes], dtype="U1")
    data_vars = {}
    for name in table.colnames:
        if name == fiber_col:
            continue
        values = table[name]
        values = values.filled() if hasattr(values, "filled") else values
        data_vars[name] = ("fiber", np.asarray(values), {"units": str(values.unit or "")})
    return xr.Dataset(
        data_vars,
        coords={
            "fiber": ("fiber", fiber, {"units": "1"}),
            "fiber_type": (
                "fiber",
                types,
                {"units": "", "long_name": "fiber type from target_class"},
            ),
        },
        attrs={"source": str(source)},
    )


def _class_codes(values: np.ndarray, source) -> np.ndarray:
    """``target_class`` as int64; a CatalogError naming the first row that holds no integer."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values != np.round(values))
        number = np.where(bad, 0.0, values)
    elif values.dtype.kind in "US":
        text = np.char.strip(values.astype(str))
        bad = np.array([not t.lstrip("+-").isdigit() for t in text], dtype=bool)
        number = np.where(bad, "0", text)
    else:
        bad = np.ones(values.shape, dtype=bool)
        number = np.zeros(values.shape)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CatalogError(
            f"assign file {source}, column target_class: data row {row + 1} has "
            f"{str(values[row])!r}, not an integer class (a repeated header line?); give one "
            "integer class per fiber (8 standard, 9 sky, 1/2 program, 0 unallocated)"
        )
    return np.asarray(number).astype(np.float64).astype(np.int64)


def assign_fiber_types(ds: xr.Dataset, assign: xr.Dataset) -> xr.Dataset:
    """Return a copy of ``ds`` whose ``fiber_type`` comes from an assign file.

    Parameters
    ----------
    ds : xarray.Dataset
        The exposure.
    assign : xarray.Dataset
        From :func:`read_assign`: one row per fiber of ``ds``, in the same order.

    Returns
    -------
    xarray.Dataset
        ``ds`` with ``fiber_type`` replaced (attributes kept, so the writer
        updates the FIBRES ``TYPE`` column) and a history line.

    Raises
    ------
    CatalogError
        If the row counts (or the fiber numbers, when the assign file has
        them) do not match.

    Examples
    --------
    >>> ds = assign_fiber_types(ds, read_assign("tile42_assign.csv"))  # doctest: +SKIP
    """
    if "fiber_type" not in assign.variables:
        raise CatalogError("the assign Dataset has no fiber_type; read it with read_assign")
    source = assign.attrs.get("source", "the assign file")
    if assign.sizes.get("fiber") != ds.sizes.get("fiber"):
        raise CatalogError(
            f"{source} has {assign.sizes.get('fiber')} rows but the exposure has "
            f"{ds.sizes.get('fiber')} fibers; use the assign file of this tile (one row per fiber)"
        )
    if "fiber" in ds.coords and not np.array_equal(assign["fiber"].values, ds["fiber"].values):
        raise CatalogError(
            f"{source}: its fiber numbers differ from the exposure's; use the assign file of this tile"
        )
    attrs = dict(ds["fiber_type"].attrs) if "fiber_type" in ds.coords else {"units": ""}
    out = ds.assign_coords(fiber_type=("fiber", assign["fiber_type"].values.astype("U1"), attrs))
    return add_history(out, f"assign_fiber_types: fiber_type from {Path(str(source)).name}")
