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

__all__ = ["plot_calibration", "standards_table"]


def standards_table(ds: xr.Dataset, /) -> str:
    """A plain-text table of the standards: fiber, parameters, RV, scale, status."""
    from .calibration import standard_reasons

    reasons = standard_reasons(ds)
    rows = [
        f"{'std':>3s} {'fiber':>5s} {'name':12s} {'Teff':>6s} {'logg':>5s} {'[M/H]':>6s} "
        f"{'RV':>8s} {'scale err':>9s} {'chi2r':>6s}  status"
    ]
    for k in range(ds.sizes["standard"]):
        reason = reasons[k] or "used"
        scale_err = float(ds["scale_err"].values[k] / ds["scale"].values[k])
        rows.append(
            f"{k:3d} {int(ds['standard_fiber'].values[k]):5d} "
            f"{str(ds['standard_name'].values[k])[:12]:12s} "
            f"{float(ds['fit_teff'].values[k]):6.0f} {float(ds['fit_logg'].values[k]):5.2f} "
            f"{float(ds['fit_mh'].values[k]):+6.2f} {float(ds['fit_rv'].values[k]):+8.1f} "
            f"{100 * scale_err:8.2f}% {float(ds['fit_chi2_red'].values[k]):6.2f}  {reason}"
        )
    return "\n".join(rows)


_WINDOW = 51


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
    fig, axes = plt.subplots(3, 1, figsize=(10, 11), constrained_layout=True)

    ax = axes[0]
    _shade_masked(ax, wave, calmask)
    ax.fill_between(wave, cal - err, cal + err, color="C0", alpha=0.3, lw=0)
    ax.plot(wave, cal, color="C0", lw=1, label="combined calibration (±1σ)")
    ax.set_ylabel(f"calibration [{ds['calibration'].attrs.get('units', '')}]")
    ax.set_title(
        f"{ds['calibration_nstars'].max().item()} standards; grey: telluric / interpolated bands"
    )
    ax.legend(loc="best", fontsize=8)

    ax = axes[1]
    _shade_masked(ax, wave, calmask)
    from .calibration import standard_reasons

    used = standard_reasons(ds) == ""
    for k in range(ds.sizes["standard"]):
        ratio = ds["std_calibration"].values[k] / cal
        valid = ds["std_calibration_mask"].values[k] == 0
        label = f"{k}: fiber {int(ds['standard_fiber'].values[k])}" + (
            "" if used[k] else " (unused)"
        )
        ax.plot(wave, _running_mean(ratio, valid), lw=0.8, label=label)
    rms = ds["calibration_rms"].values
    rms_smooth = _running_mean(rms, np.isfinite(rms))
    ax.plot(wave, 1 + rms_smooth, color="k", lw=1, label="1 ± RMS across stars")
    ax.plot(wave, 1 - rms_smooth, color="k", lw=1)
    ax.set_ylim(0.9, 1.1)
    ax.set_ylabel(f"star / combined ({_WINDOW}-pixel mean)")
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
    axes[0].set_xlim(wave[0], wave[-1])
    axes[1].set_xlim(wave[0], wave[-1])
    axes[1].set_xlabel("wavelength [Å]")
    if path is not None:
        fig.savefig(Path(path), dpi=110)
        plt.close(fig)
    return fig
