"""Why a standard star does or does not contribute, and how its template fit went: enums.

Every stage that can rule a standard out sets ``standard_status`` (a
:class:`StandardStatus` code, CF ``flag_values``/``flag_meanings``); the first
reason found wins.  :func:`reason_text` turns a code and the numbers behind it
into the one line of ``standard_reason``.  NumPy only (the kernels use it).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = [
    "StandardStatus",
    "FitStatus",
    "status_attrs",
    "fit_status_attrs",
    "reason_text",
    "REASON_WIDTH",
]


class StandardStatus(IntEnum):
    """The status of one standard star (0 = contributes to the calibration)."""

    OK = 0
    NO_POSITION = 1  #: the fibre has no RA/Dec to match
    NO_MATCH = 2  #: no catalogue star within the match radius
    DUPLICATE = 3  #: its catalogue star was matched to a closer fibre
    NO_ROW = 4  #: order matching: no catalogue row for it
    NO_PHOTOMETRY = 5  #: the catalogue row has no usable magnitude
    FIT_FAILED = 6  #: the template fit failed (too few pixels, no candidate)
    NO_SCALE = 7  #: no catalogue band covered by the template grid
    NO_SIGNAL = 8  #: too few valid pixels with positive counts
    FAINT = 9  #: counts consistent with no star (median S/N too low)
    PHOTOMETRY = 10  #: catalogue photometry inconsistent with the fitted model
    POOR_FIT = 11  #: template fit far worse than the other standards'
    ZERO_POINT = 12  #: overall level a robust outlier among the standards
    SHAPE = 13  #: tilt across the spectrum a robust outlier among the standards
    CLIPPED = 14  #: clipped at most of its pixels when the stars were combined


class FitStatus(IntEnum):
    """The outcome of one star's template fit (``fit_status``)."""

    OK = 0
    TOO_FEW_PIXELS = 1  #: fewer than 50 usable pixels
    NO_CANDIDATE = 2  #: no template in the colour Teff box
    NO_COLORS = 3  #: no colour: Teff from the spectrum alone (still usable)
    NO_PHOTOMETRY = 4  #: the catalogue row has no magnitude: not fitted

    @property
    def usable(self) -> bool:
        """Whether a star with this outcome can calibrate."""
        return self in (FitStatus.OK, FitStatus.NO_COLORS)


def fit_status_attrs() -> dict[str, object]:
    """CF attributes of ``fit_status``."""
    return {
        "long_name": "outcome of the template fit",
        "flag_values": np.array([s.value for s in FitStatus], dtype="int16"),
        "flag_meanings": " ".join(s.name.lower() for s in FitStatus),
        "units": "1",
    }


#: characters of a ``standard_reason`` (fixed-width text, so it can be built lazily)
REASON_WIDTH = 160


def status_attrs() -> dict[str, object]:
    """CF attributes of ``standard_status``."""
    return {
        "long_name": "why a standard star is not used (0 = used)",
        "flag_values": np.array([s.value for s in StandardStatus], dtype="int16"),
        "flag_meanings": " ".join(s.name.lower() for s in StandardStatus),
        "units": "1",
    }


def _fmt(value, spec: str) -> str:
    return "nan" if not np.isfinite(value) else format(value, spec)


def reason_text(code: int, d: dict[str, float], limits: dict[str, float]) -> str:
    """One line saying why a standard is not used ('' when it is).

    ``d`` holds that star's diagnostics (``catalog_sep``, ``valid_fraction``,
    ``snr``, ``phot_rms``, ``chi2_ratio``, ``zero_point``, ``zp_limit``,
    ``tilt``, ``tilt_limit``, ``clipped``, ``fit_status``); ``limits`` the
    thresholds that were applied (attrs of the gating stage).
    """
    s = StandardStatus(int(code))
    g = d.get
    if s is StandardStatus.OK:
        return ""
    if s is StandardStatus.NO_POSITION:
        return "the fibre has no RA/Dec (FIBRES RA/DEC) to match the catalogue"
    if s is StandardStatus.NO_MATCH:
        return (
            f"no catalogue star within {limits.get('radius', float('nan')):g} arcsec "
            f"(nearest {_fmt(g('catalog_sep', np.nan), '.1f')} arcsec)"
        )
    if s is StandardStatus.DUPLICATE:
        return "its catalogue star is matched to a closer fibre"
    if s is StandardStatus.NO_ROW:
        return "no catalogue row for it (order matching)"
    if s is StandardStatus.NO_PHOTOMETRY:
        return "catalogue row has no usable photometry"
    if s is StandardStatus.FIT_FAILED:
        fit_code = g("fit_status", np.nan)
        why = (
            FitStatus(int(fit_code)).name.lower().replace("_", " ")
            if np.isfinite(fit_code)
            else "?"
        )
        return f"template fit failed: {why}"
    if s is StandardStatus.NO_SCALE:
        return "no photometric scale (no catalogue band covered by the grid)"
    if s is StandardStatus.NO_SIGNAL:
        return (
            f"no signal: {100 * g('valid_fraction', np.nan):.0f} % of the pixels valid with "
            f"positive counts (min {100 * limits.get('min_valid_fraction', np.nan):.0f} %)"
        )
    if s is StandardStatus.FAINT:
        return (
            f"counts consistent with no star: median S/N {_fmt(g('snr', np.nan), '.2f')} per pixel "
            f"(min {limits.get('min_snr', np.nan):g})"
        )
    if s is StandardStatus.PHOTOMETRY:
        return (
            f"photometric residuals {_fmt(g('phot_rms', np.nan), '.3f')} mag RMS after scaling "
            f"(max {limits.get('max_phot_rms', np.nan):g})"
        )
    if s is StandardStatus.POOR_FIT:
        return (
            f"template fit {_fmt(g('chi2_ratio', np.nan), '.1f')}x worse (chi2/dof) than the "
            f"median standard's (max {limits.get('max_chi2_ratio', np.nan):g}x)"
        )
    if s is StandardStatus.ZERO_POINT:
        return (
            f"zero point {_fmt(g('zero_point', np.nan), '+.3f')} mag from the standards' median "
            f"(limit {_fmt(g('zp_limit', np.nan), '.3f')} mag)"
        )
    if s is StandardStatus.SHAPE:
        return (
            f"tilt {_fmt(g('tilt', np.nan), '+.3f')} mag across the spectrum against the "
            f"standards' median (limit {_fmt(g('tilt_limit', np.nan), '.3f')} mag)"
        )
    return (
        f"clipped at {100 * g('clipped', np.nan):.0f} % of its pixels when the standards "
        "were combined"
    )
