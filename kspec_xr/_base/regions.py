"""Wavelength regions to mask: telluric bands, stellar lines and user-given bad regions.

A region file is ASCII, one band per line, ``lam_lo lam_hi`` in vacuum Å;
anything after the two numbers and lines starting with ``#`` are comments.
The default telluric bands ship as ``data/masks/telluric_default.txt``.  A
line list has the same layout with ``centre half_width`` (rest frame, vacuum
Å); the default stellar lines ship as ``data/masks/stellar_lines_default.txt``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .paths import data_path

__all__ = ["read_regions", "in_regions", "read_lines", "line_mask", "BUNDLED_REGIONS"]

#: names accepted in place of a path
BUNDLED_REGIONS = {
    "telluric_default": ("masks", "telluric_default.txt"),
    "stellar_lines_default": ("masks", "stellar_lines_default.txt"),
}

Regions = str | os.PathLike | Iterable[tuple[float, float]] | None


def read_regions(regions: Regions) -> np.ndarray:
    """Return the regions as an ``(n, 2)`` array of ``[lam_lo, lam_hi]`` (Å).

    Parameters
    ----------
    regions : str, path, sequence of (lo, hi) pairs or None
        A bundled name (``"telluric_default"``), a region file, explicit
        pairs, or ``None`` for no regions.

    Raises
    ------
    ValueError
        The file is missing or a line is not two increasing numbers; the
        message names the file and the line.
    """
    if regions is None:
        return np.empty((0, 2))
    if isinstance(regions, str) and regions in BUNDLED_REGIONS:
        regions = data_path(*BUNDLED_REGIONS[regions])
    if isinstance(regions, str | os.PathLike):
        return _read_region_file(Path(regions))
    pairs = np.asarray(list(regions), dtype=float).reshape(-1, 2)
    if np.any(pairs[:, 1] <= pairs[:, 0]):
        raise ValueError(f"every region needs lam_lo < lam_hi; got {pairs.tolist()}")
    return pairs


def read_lines(lines: Regions) -> np.ndarray:
    """Return a line list as an ``(n, 2)`` array of ``[centre, half_width]`` (Å).

    Parameters
    ----------
    lines : str, path, sequence of (centre, half_width) pairs or None
        A bundled name (``"stellar_lines_default"``), a file of
        ``centre half_width`` lines, explicit pairs, or ``None`` for none.
    """
    if lines is None:
        return np.empty((0, 2))
    if isinstance(lines, str) and lines in BUNDLED_REGIONS:
        lines = data_path(*BUNDLED_REGIONS[lines])
    if isinstance(lines, str | os.PathLike):
        return _read_region_file(Path(lines), centred=True)
    pairs = np.asarray(list(lines), dtype=float).reshape(-1, 2)
    if np.any(pairs[:, 1] <= 0):
        raise ValueError(f"every line needs a positive half-width; got {pairs.tolist()}")
    return pairs


def line_mask(wavelength, rv, *, lines: Regions, widen: float = 0.0) -> np.ndarray:
    """(S, P) True inside each star's RV-shifted line bands, each widened by ``widen`` Å.

    ``rv`` (km/s, one per star) moves every band to ``centre·(1 + rv/c)``;
    a star without a velocity (NaN) gets its bands at rest, widened by the
    shift of 300 km/s either way.
    """
    lam = np.asarray(wavelength, dtype=float)
    velocity = np.atleast_1d(np.asarray(rv, dtype=float))
    unknown = ~np.isfinite(velocity)
    shift = 1.0 + np.where(unknown, 0.0, velocity)[:, None] / 299_792.458
    out = np.zeros((velocity.size, lam.size), dtype=bool)
    for centre, half in read_lines(lines):
        reach = half + widen + np.where(unknown, centre * 300.0 / 299_792.458, 0.0)[:, None]
        out |= np.abs(lam[None, :] - centre * shift) <= reach
    return out


def _read_region_file(path: Path, *, centred: bool = False) -> np.ndarray:
    layout = "'centre half_width'" if centred else "'lam_lo lam_hi'"
    if not path.is_file():
        raise ValueError(
            f"mask region file {path} does not exist; give a file of {layout} lines "
            f"or one of the bundled names: {', '.join(BUNDLED_REGIONS)}"
        )
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        try:
            lo, hi = float(fields[0]), float(fields[1])
        except (IndexError, ValueError):
            raise ValueError(
                f"{path}, line {number}: expected {layout} in Å, got {line!r}"
            ) from None
        if centred and not hi > 0:
            raise ValueError(f"{path}, line {number}: the half-width must be positive ({line!r})")
        if not centred and hi <= lo:
            raise ValueError(f"{path}, line {number}: lam_hi must exceed lam_lo ({line!r})")
        pairs.append((lo, hi))
    return np.asarray(pairs, dtype=float).reshape(-1, 2)


def in_regions(wavelength, regions: Regions) -> np.ndarray:
    """Boolean array: True where ``wavelength`` lies inside any region."""
    lam = np.asarray(wavelength, dtype=float)
    inside = np.zeros(lam.shape, dtype=bool)
    for lo, hi in read_regions(regions):
        inside |= (lam >= lo) & (lam <= hi)
    return inside
