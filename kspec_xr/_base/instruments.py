"""Nominal resolving powers of known spectrograph set-ups, from their headers.

The last resort of :func:`kspec_xr.fit_at_resolution` when a frame has no
``SPECFWHM``, no ``SKY`` spectrum with clean lines, and standards whose
measured FWHMs do not agree: the instrument's published resolving power for
the grating named in the header.  It is a nominal value (the real one
depends on the focus and the fibre), so an output calibrated at it says so
in ``FCALFWHM`` and HISTORY.

AAOmega (2dF fibres): the low-resolution VPH gratings 580V (blue arm) and
385R (red arm) give R ≈ 1300 (AAO's AAOmega grating table; Sharp et al. 2006,
SPIE 6269, 62690G), i.e. about 3.7 Å FWHM at 4800 Å and 5.6 Å at 7250 Å.  A
VPH grating's FWHM in Å is close to constant across the detector, so the
FWHM is taken at the grating's central wavelength (``LAMBDAC``).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["RESOLVING_POWER", "nominal_resolution"]

#: Instrument name as written in outputs -> prefix of its ``INSTRUME`` card.
INSTRUMENTS = {"AAOmega": "AAOMEGA"}
#: (instrument name, ``GRATID``) -> resolving power λ/Δλ.
RESOLVING_POWER: dict[tuple[str, str], float] = {
    ("AAOmega", "580V"): 1300.0,
    ("AAOmega", "385R"): 1300.0,
}


def nominal_resolution(header: Mapping) -> tuple[float, str] | None:
    """``(resolving power, description)`` for the header's set-up, or None if unknown."""
    instrument = str(header.get("INSTRUME", "")).strip().upper()
    grating = str(header.get("GRATID", "")).strip().upper()
    for (name, grating_id), power in RESOLVING_POWER.items():
        if instrument.startswith(INSTRUMENTS[name]) and grating == grating_id:
            return power, f"{name} {grating_id} R={power:.0f}"
    return None
