"""Numbers to read about a calibration: the standards' table, counts, line-band departures."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .._base.maskbits import bit
from .._base.schema import (
    DS_MEDIUM_ATTR,
    DS_MEDIUM_SOURCE_ATTR,
    StandardStatus,
    standard_reasons,
)
from ..kernels.robust import robust_sigma

__all__ = ["standards_summary", "standards_table", "line_band_departures"]


def standards_summary(ds: xr.Dataset, /) -> str:
    """One line: how many standards contribute and how many were rejected (computed values)."""
    status = np.asarray(ds["standard_status"].values)
    used = int(np.count_nonzero(status == StandardStatus.OK))
    return f"{used}/{status.size} standards used, {status.size - used} rejected"


def standards_table(ds: xr.Dataset, /) -> str:
    """A plain-text table of the standards: fiber, parameters, RV, scale, level, status.

    With a note of the wavelength medium the fit took (``attrs["wavelength_medium"]``).
    """
    reasons = standard_reasons(ds)

    def value(name, k):
        return float(ds[name].values[k]) if name in ds else float("nan")

    rows = [
        f"{'std':>3s} {'fiber':>5s} {'name':12s} {'Teff':>6s} {'logg':>5s} {'[M/H]':>6s} "
        f"{'RV':>8s} {'scale err':>9s} {'chi2r':>6s} {'S/N':>5s} {'dZP':>6s} {'tilt':>6s}  status"
    ]
    for k in range(ds.sizes["standard"]):
        reason = reasons[k] or "used"
        scale_err = value("scale_err", k) / value("scale", k)
        rows.append(
            f"{k:3d} {int(ds['standard_fiber'].values[k]):5d} "
            f"{str(ds['standard_name'].values[k])[:12]:12s} "
            f"{value('fit_teff', k):6.0f} {value('fit_logg', k):5.2f} "
            f"{value('fit_mh', k):+6.2f} {value('fit_rv', k):+8.1f} "
            f"{100 * scale_err:8.2f}% {value('fit_chi2_red', k):6.2f} {value('std_snr', k):5.1f} "
            f"{value('std_zero_point', k):+6.2f} {value('std_tilt', k):+6.2f}  {reason}"
        )
    medium = ds.attrs.get(DS_MEDIUM_ATTR)
    if medium is not None:
        source = ds.attrs.get(DS_MEDIUM_SOURCE_ATTR, "")
        rows.append(
            f"RV: observed frame, vacuum scale; the file's wavelengths taken as {medium} ({source})"
        )
    rows.append(standards_summary(ds))
    return "\n".join(rows)


def line_band_departures(
    ds: xr.Dataset, /, *, window: float = 25.0, max_width: float = 100.0
) -> list[dict[str, float]]:
    """How far the calibration departs from its neighbours across each bridged line band.

    For every run of ``STELLAR_LINE`` in ``calibration_mask`` no wider than
    ``max_width`` Å with clean pixels on both sides:

    - ``departure``: the largest ``|Cal / line − 1|`` inside the band, where
      the line joins the medians of the clean calibration within ``window``
      Å on either side (at their mean λ);
    - ``departure_smooth``: the same against a parabola fitted to the clean
      calibration within ``2·window`` Å on both sides, which follows a
      throughput that curves across the band (near a dichroic's edge, say);
    - ``noise``: the uncertainty of the neighbours' medians (1.2533 σ/√n), so
      a departure well below it cannot be told from noise.

    Wider bands (the merged high Balmer lines) are left out: across a few
    hundred Å the throughput is not a straight line.  Needs computed values.

    Returns
    -------
    list of dict
        ``lo``, ``hi`` (Å), ``departure``, ``departure_smooth`` and ``noise``
        (fractions) per band.
    """
    wave = np.asarray(ds["wavelength"].values, dtype=float)
    cal = np.asarray(ds["calibration"].values, dtype=float)
    mask = np.asarray(ds["calibration_mask"].values)
    band = (mask & bit("STELLAR_LINE")) != 0
    clean = (mask == 0) & np.isfinite(cal)
    edges = np.flatnonzero(np.diff(np.r_[0, band.astype(np.int8), 0]))
    out = []
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        lo, hi = wave[a], wave[b - 1]
        if hi - lo > max_width:
            continue
        left = clean & (wave < lo) & (wave >= lo - window)
        right = clean & (wave > hi) & (wave <= hi + window)
        if np.count_nonzero(left) < 5 or np.count_nonzero(right) < 5:
            continue
        xl, yl = wave[left].mean(), np.median(cal[left])
        xr_, yr = wave[right].mean(), np.median(cal[right])
        inside = wave[a:b]
        line = yl + (yr - yl) * (inside - xl) / (xr_ - xl)
        near = clean & (
            ((wave < lo) & (wave >= lo - 2 * window)) | ((wave > hi) & (wave <= hi + 2 * window))
        )
        centre = 0.5 * (lo + hi)
        parabola = np.polyval(np.polyfit(wave[near] - centre, cal[near], 2), inside - centre)
        noise = max(
            1.2533 * robust_sigma(cal[side] / np.median(cal[side])) / np.sqrt(side.sum())
            for side in (left, right)
        )
        out.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "departure": float(np.max(np.abs(cal[a:b] / line - 1.0))),
                "departure_smooth": float(np.max(np.abs(cal[a:b] / parabola - 1.0))),
                "noise": float(noise),
            }
        )
    return out
