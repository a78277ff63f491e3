"""Quality control of a flux calibration: one figure that shows what went in.

:func:`plot_calibration` draws, for a calibrated exposure,

1. the combined calibration with its 1σ band and the masked bands shaded;
2. each standard's calibration divided by the combined one (who agrees, who
   was clipped), with the fractional RMS across stars;
3. each standard's catalogue photometry against its fitted model (residuals
   per band), with the fitted parameters in the legend.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from .maskbits import bit
from .status import StandardStatus

__all__ = ["plot_calibration", "standards_table", "standards_summary", "line_band_departures"]


def standards_summary(ds: xr.Dataset, /) -> str:
    """One line: how many standards contribute and how many were rejected (computed values)."""
    status = np.asarray(ds["standard_status"].values)
    used = int(np.count_nonzero(status == StandardStatus.OK))
    return f"{used}/{status.size} standards used, {status.size - used} rejected"


def standards_table(ds: xr.Dataset, /) -> str:
    """A plain-text table of the standards: fiber, parameters, RV, scale, level, status."""
    from .calibration import standard_reasons

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
    rows.append(standards_summary(ds))
    return "\n".join(rows)


_WINDOW = 51


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
    from .robust import robust_sigma

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


def _running_mean(values, valid, window: int = _WINDOW):
    """Mean over ``window`` pixels of the valid values (NaN where none is valid)."""
    from scipy.ndimage import uniform_filter1d

    ok = valid & np.isfinite(values)
    num = uniform_filter1d(np.where(ok, values, 0.0), window)
    den = uniform_filter1d(ok.astype(float), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok & (den > 0.5), num / den, np.nan)


def _shade_masked(ax, wave, calmask):
    masked = (calmask & (bit("TELLURIC") | bit("CALIB_INTERP"))) != 0
    edges = np.flatnonzero(np.diff(np.r_[0, masked.astype(int), 0]))
    for lo, hi in zip(edges[::2], edges[1::2], strict=True):
        ax.axvspan(wave[lo], wave[hi - 1], color="0.85", lw=0)


def _plot_gating(ax, ds: xr.Dataset) -> None:
    """Each standard's zero point against its tilt, with the gating limits."""
    if "std_zero_point" not in ds:
        ax.set_axis_off()
        return
    zp = np.asarray(ds["std_zero_point"].values, dtype=float)
    tilt = np.asarray(ds["std_tilt"].values, dtype=float)
    status = np.asarray(ds["standard_status"].values)
    for k in range(zp.size):
        used = status[k] == StandardStatus.OK
        ax.plot(tilt[k], zp[k], "o" if used else "x", color="C0" if used else "C3", ms=6)
        ax.annotate(str(k), (tilt[k], zp[k]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    zl = np.nanmax(np.asarray(ds["std_zero_point_limit"].values, dtype=float), initial=np.nan)
    tl = np.nanmax(np.asarray(ds["std_tilt_limit"].values, dtype=float), initial=np.nan)
    if np.isfinite(zl) and np.isfinite(tl):
        ax.add_patch(
            matplotlib_rectangle((-tl, -zl), 2 * tl, 2 * zl, fill=False, ls="--", color="0.5")
        )
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("tilt: red − blue of 2.5 log10(Cal_star / Cal_median) [mag]")
    ax.set_ylabel("zero point vs the median [mag]")
    ax.set_title("gating: o used, x rejected (dashed: the limits applied)", fontsize=9)


def matplotlib_rectangle(*args, **kwargs):
    from matplotlib.patches import Rectangle

    return Rectangle(*args, **kwargs)


def plot_calibration(ds: xr.Dataset, /, path: str | os.PathLike | None = None):
    """Draw the QC figure of a calibrated exposure; save it when ``path`` is given.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.flux_calibrate` (computed).
    path : path, optional
        Where to save the figure (PNG, PDF, … by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ds = ds.compute()
    wave = ds["wavelength"].values
    cal = ds["calibration"].values
    err = np.sqrt(ds["calibration_variance"].values)
    calmask = ds["calibration_mask"].values
    fig, axes = plt.subplots(4, 1, figsize=(10, 14), constrained_layout=True)

    ax = axes[0]
    _shade_masked(ax, wave, calmask)
    ax.fill_between(wave, cal - err, cal + err, color="C0", alpha=0.3, lw=0)
    ax.plot(wave, cal, color="C0", lw=1, label="combined calibration (±1σ)")
    ax.set_ylabel(f"calibration [{ds['calibration'].attrs.get('units', '')}]")
    ax.set_title(f"{standards_summary(ds)}; grey: telluric / bridged bands")
    ax.legend(loc="best", fontsize=8)

    ax = axes[1]
    _shade_masked(ax, wave, calmask)
    status = np.asarray(ds["standard_status"].values)
    for k in range(ds.sizes["standard"]):
        ratio = ds["std_calibration"].values[k] / cal
        valid = (ds["std_calibration_mask"].values[k] & ~bit("CALIB_INVALID")) == 0
        finite = valid & np.isfinite(ratio) & (ratio > 0)
        if finite.any():  # the shapes: the levels differ by fibre losses, see panel 4
            ratio = ratio / np.median(ratio[finite])
        used = status[k] == StandardStatus.OK
        name = StandardStatus(int(status[k])).name.lower().replace("_", " ")
        label = f"{k}: fiber {int(ds['standard_fiber'].values[k])}" + ("" if used else f" ({name})")
        ax.plot(
            wave,
            _running_mean(ratio, valid),
            lw=0.8 if used else 0.6,
            ls="-" if used else ":",
            label=label,
        )
    rms = ds["calibration_rms"].values
    rms_smooth = _running_mean(rms, np.isfinite(rms))
    ax.plot(wave, 1 + rms_smooth, color="k", lw=1, label="1 ± RMS across stars")
    ax.plot(wave, 1 - rms_smooth, color="k", lw=1)
    ax.set_ylim(0.9, 1.1)
    ax.set_ylabel(f"star / combined, over its median\n({_WINDOW}-pixel mean; dotted: rejected)")
    ax.legend(loc="upper right", fontsize=7, ncol=3)

    ax = axes[2]
    bands = [str(b) for b in ds["band"].values]
    x = np.arange(len(bands))
    for k in range(ds.sizes["standard"]):
        resid = ds["phot_residual"].values[k]
        ax.plot(
            x,
            1000 * resid,
            "o-",
            ms=3,
            lw=0.8,
            label=(
                f"{k}: Teff {float(ds['fit_teff'].values[k]):.0f} "
                f"logg {float(ds['fit_logg'].values[k]):.2f} "
                f"[M/H] {float(ds['fit_mh'].values[k]):+.2f} "
                f"RV {float(ds['fit_rv'].values[k]):+.0f}"
            ),
        )
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, bands, rotation=30, fontsize=8)
    ax.set_ylabel("m_obs − m_model − offset [mmag]")
    ax.legend(loc="best", fontsize=7, ncol=2)
    _plot_gating(axes[3], ds)
    axes[0].set_xlim(wave[0], wave[-1])
    axes[1].set_xlim(wave[0], wave[-1])
    axes[1].set_xlabel("wavelength [Å]")
    if path is not None:
        fig.savefig(Path(path), dpi=110)
        plt.close(fig)
    return fig
