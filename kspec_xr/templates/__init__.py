"""Stellar templates: the BOSZ 2024 grid, kspec_xr's stand-in for it, and the prepared grid.

- ``bosz``: read a BOSZ folder (or a packed cube) lazily; pack one;
- ``standin``: generate the stand-in grid in the BOSZ file format;
- ``prepared``: :class:`PreparedTemplates`, a grid prepared for one instrument
  setup, built once and reused;
- ``_names``: the BOSZ file-name scheme both ``bosz`` and ``standin`` follow.

This module joins them: :func:`open_bosz` opens the stand-in grid when given
no path, :func:`resolve_templates` turns whatever a caller passes as
``templates=`` into a :class:`PreparedTemplates`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import xarray as xr

from .._base.errors import TemplateError
from ._names import (
    PARAM_DIMS,
    bosz_atmosphere,
    bosz_folder,
    bosz_name,
    parse_bosz_name,
    wave_grid_name,
)
from .bosz import open_grid, pack_bosz, read_bosz_table
from .prepared import PreparedTemplates, fwhm_at, prepare_templates
from .standin import standin_grid_path

__all__ = [
    "open_bosz",
    "pack_bosz",
    "read_bosz_table",
    "parse_bosz_name",
    "bosz_name",
    "bosz_atmosphere",
    "bosz_folder",
    "wave_grid_name",
    "PARAM_DIMS",
    "standin_grid_path",
    "PreparedTemplates",
    "prepare_templates",
    "resolve_templates",
    "fwhm_at",
]


def open_bosz(
    path: str | os.PathLike | None = None,
    *,
    resolution: int | str | None = None,
    wave_range: tuple[float, float] | None = None,
    carbon: float = 0.0,
    vturb: int | None = None,
    atmosphere: str | Sequence[str] | None = None,
) -> xr.DataArray:
    """Open a BOSZ 2024 grid lazily (default: the bundled stand-in grid).

    ``path`` is a BOSZ folder or a cube of :func:`pack_bosz`; without it the
    stand-in grid (:func:`standin_grid_path`, generated on first use) is
    opened.  Everything else is :func:`kspec_xr.templates.bosz.open_grid`'s,
    which documents the layout, the options and the errors.
    """
    if path is None:
        if resolution == "orig":
            raise TemplateError(
                "the bundled stand-in grid has no 'orig' resolution: pass an integer R"
            )
        path = standin_grid_path(resolution=10000 if resolution is None else int(resolution))
    return open_grid(
        path,
        resolution=resolution,
        wave_range=wave_range,
        carbon=carbon,
        vturb=vturb,
        atmosphere=atmosphere,
    )


def resolve_templates(templates, wavelength, fwhm, *, cache=True) -> PreparedTemplates:
    """The :class:`PreparedTemplates` for an exposure, from whatever was given as ``templates``.

    ``None`` → the bundled stand-in grid; a path → :func:`open_bosz`; a grid
    DataArray → :func:`prepare_templates` (cached); a :class:`PreparedTemplates`
    → checked against the exposure's wavelengths and returned.
    """
    if isinstance(templates, PreparedTemplates):
        templates.check(wavelength)
        return templates
    if templates is None or isinstance(templates, str | os.PathLike):
        templates = open_bosz(templates)
    if not isinstance(templates, xr.DataArray):
        raise TypeError(
            "templates must be None (bundled grid), a path to a BOSZ directory or packed cube, "
            f"a grid from kx.open_bosz or a kx.PreparedTemplates; got {type(templates).__name__}"
        )
    return prepare_templates(templates, wavelength, fwhm, cache=cache)
