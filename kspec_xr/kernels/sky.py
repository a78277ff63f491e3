"""Nearest neighbours on the sky (NumPy only).

A plate holds a few hundred fibres at most, so every fibre is compared
with every catalogue star, in blocks, through unit vectors: the chord
``c`` between two directions gives their separation ``2·arcsin(c/2)``,
exact at arcsecond scales where ``arccos`` of a dot product is not.
(``astropy.coordinates`` does the same match; importing it costs a
quarter of a warm calibration.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["unit_vectors", "nearest_on_sky"]

_ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Cartesian unit vectors, shape (n, 3), of directions given in degrees."""
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def nearest_on_sky(
    ra: np.ndarray, dec: np.ndarray, cat_ra: np.ndarray, cat_dec: np.ndarray, *, block: int = 2**22
) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest catalogue direction, and its separation in arcsec, for each input.

    All coordinates in degrees; the catalogue must not be empty.  ``block``
    bounds the size of the pair array held at once.
    """
    points = unit_vectors(ra, dec)
    stars = unit_vectors(cat_ra, cat_dec)
    if stars.shape[0] == 0:
        raise ValueError("nearest_on_sky needs at least one catalogue direction")
    index = np.empty(points.shape[0], dtype=np.intp)
    chord = np.empty(points.shape[0])
    step = max(1, block // stars.shape[0])
    for start in range(0, points.shape[0], step):
        part = points[start : start + step]
        squared = ((part[:, None, :] - stars[None, :, :]) ** 2).sum(-1)
        best = np.argmin(squared, axis=1)
        index[start : start + step] = best
        chord[start : start + step] = np.sqrt(squared[np.arange(part.shape[0]), best])
    separation = 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0)) * _ARCSEC_PER_RAD
    return index, separation
