"""Air or vacuum: which the exposure's wavelengths are, and their vacuum values.

Not a stage: the one place where the stages (and :mod:`kspec_xr.nightly`)
learn the medium of an exposure's wavelengths and turn its pixels' wavelengths
into vacuum ones, before they compare them with anything tabulated in vacuum
— the BOSZ templates, the telluric bands, the stellar line list.  The
Dataset's own ``wavelength`` coordinate stays as the file has it: the
calibration is per pixel, so the output grid is the input grid.

The rule (:func:`resolve_medium`):

1. the caller's option (``wavelength_medium="air" | "vacuum"``; CLI ``--air``
   / ``--vacuum``; runtime argument ``CALIBFLUX_MEDIUM``) — a warning
   (:class:`kspec_xr.KspecWarning`) names the card when the file declares the
   other medium;
2. else what an earlier stage of the same calibration used (the Dataset
   attributes ``wavelength_medium`` and ``wavelength_medium_source``);
3. else what the file declares: ``CTYPEn`` of the dispersion axis, ``AWAV``
   (air) or ``WAVE`` (vacuum), which :func:`kspec_xr.open_red` puts on the
   ``wavelength`` coordinate as ``medium`` / ``medium_source``;
4. else **air**: 2dfdr and kspecdr wavelength solutions are in standard air
   and their ``CTYPE1 = 'Wavelength'`` does not say so.

Radial velocities fitted on the vacuum wavelengths are observed-frame
(topocentric) velocities on the vacuum scale, whatever the file's medium.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from .._base.errors import CalibrationError, KspecWarning
from .._base.schema import (
    DS_MEDIUM_ATTR,
    DS_MEDIUM_SOURCE_ATTR,
    MEDIA,
    MEDIUM_ATTR,
    MEDIUM_SOURCE_ATTR,
    source_name,
)
from ..kernels.air import air_to_vacuum

__all__ = [
    "DEFAULT_MEDIUM",
    "check_medium",
    "resolve_medium",
    "declared_medium",
    "vacuum_wavelength",
    "as_vacuum",
    "with_medium",
    "medium_note",
]

#: the medium of a file that does not declare one (2dfdr / kspecdr solutions)
DEFAULT_MEDIUM = "air"


def check_medium(medium, what: str = "wavelength_medium") -> str | None:
    """``medium`` validated: None, 'air' or 'vacuum'."""
    if medium is None:
        return None
    if not isinstance(medium, str):
        raise TypeError(f"{what} must be None, 'air' or 'vacuum', not {type(medium).__name__}")
    value = medium.strip().lower()
    if value not in MEDIA:
        raise ValueError(
            f"{what} must be 'air' or 'vacuum' (or None: from the file), not {medium!r}"
        )
    return value


def declared_medium(ds: xr.Dataset, /) -> tuple[str | None, str]:
    """(medium, card) as the file declares it on the ``wavelength`` coordinate, or (None, '')."""
    if "wavelength" not in ds.variables:
        return None, ""
    attrs = ds["wavelength"].attrs
    medium = attrs.get(MEDIUM_ATTR)
    if medium not in MEDIA:
        return None, ""
    return str(medium), str(attrs.get(MEDIUM_SOURCE_ATTR, "the wavelength coordinate"))


def resolve_medium(ds: xr.Dataset, /, medium=None) -> tuple[str, str]:
    """The medium of the exposure's wavelengths and where that came from.

    Parameters
    ----------
    ds : xr.Dataset
        An exposure (from :func:`kspec_xr.open_red`, possibly processed).
    medium : {None, "air", "vacuum"}
        The caller's option; None follows the file (see the module docstring).

    Returns
    -------
    (medium, source)
        ``medium`` is 'air' or 'vacuum'; ``source`` is ``"option"``,
        ``"file CTYPE1 = 'AWAV'"`` (the card) or ``"default"`` (a file that
        does not say: 2dfdr's air), or the source an earlier stage recorded.

    Warns
    -----
    KspecWarning
        The option contradicts the file's declaration (the option is used).
    """
    medium = check_medium(medium)
    declared, card = declared_medium(ds)
    if medium is not None:
        already = (ds.attrs.get(DS_MEDIUM_ATTR), ds.attrs.get(DS_MEDIUM_SOURCE_ATTR))
        if declared is not None and declared != medium and already != (medium, "option"):
            warnings.warn(
                f"{source_name(ds)}: the file declares {declared} wavelengths ({card}) but "
                f"wavelength_medium={medium!r} was given; treating them as {medium} (leave the "
                "option out to follow the file)",
                KspecWarning,
                stacklevel=3,
            )
        return medium, "option"
    recorded = ds.attrs.get(DS_MEDIUM_ATTR)
    if recorded in MEDIA:
        return str(recorded), str(ds.attrs.get(DS_MEDIUM_SOURCE_ATTR, ""))
    if declared is not None:
        return declared, f"file {card}"
    return DEFAULT_MEDIUM, "default"


def as_vacuum(wavelength: xr.DataArray, medium: str) -> xr.DataArray:
    """Vacuum wavelengths of ``wavelength`` (in ``medium``), same dims, bare of coordinates."""
    values = np.asarray(wavelength.values, dtype=float)
    if check_medium(medium) == "air":
        values = air_to_vacuum(values)
    return xr.DataArray(
        values,
        dims=wavelength.dims,
        attrs={"units": "Angstrom", "long_name": "vacuum wavelength of the pixel"},
    )


def vacuum_wavelength(ds: xr.Dataset, /, medium=None) -> xr.DataArray:
    """The vacuum wavelengths of the exposure's pixels (Å).

    Parameters
    ----------
    ds : xr.Dataset
        An exposure with a ``wavelength`` coordinate (1-D, or 2-D per fiber).
    medium : {None, "air", "vacuum"}
        The medium of ``ds.wavelength``; None follows :func:`resolve_medium`.

    Returns
    -------
    xr.DataArray
        Same dims as ``ds.wavelength`` (no coordinates), ``units='Angstrom'``.
        ``ds`` itself is not changed.

    Examples
    --------
    >>> vac = kx.vacuum_wavelength(kx.open_red("run1_red.fits"))   # doctest: +SKIP
    """
    if "wavelength" not in ds.variables:
        raise CalibrationError(f"{source_name(ds)}: no wavelength coordinate")
    medium, _ = resolve_medium(ds, medium)
    return as_vacuum(ds["wavelength"], medium)


def with_medium(ds: xr.Dataset, medium: str, source: str) -> xr.Dataset:
    """``ds`` with the medium a stage used recorded as Dataset attributes."""
    return ds.assign_attrs({DS_MEDIUM_ATTR: medium, DS_MEDIUM_SOURCE_ATTR: source})


def medium_note(medium: str, source: str) -> str:
    """A short phrase for history lines: ``"air wavelengths (default), vacuum-converted"``."""
    done = ", converted to vacuum" if medium == "air" else ""
    return f"{medium} wavelengths ({source}){done}"
