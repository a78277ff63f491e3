"""The QC figure of a flux calibration: one picture of what went in.

:func:`plot_calibration` draws, for a calibrated exposure,

1. the combined calibration with its 1σ band and the masked bands shaded;
2. each standard's shape against the combined one (who agrees, who was
   clipped or rejected), with the fractional RMS across stars;
3. each standard's catalogue photometry against its fitted model (residuals
   per band), with the fitted parameters in the legend;
4. each standard's zero point against its tilt, with the gating's limits.

:func:`check_plot_path` refuses, before any work, a plot path that could not
be written (format unknown to matplotlib, folder missing, file present).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from .._base.errors import OutputError, OutputExistsError
from .._base.maskbits import bit
from .._base.paths import atomic_output, check_writable
from .._base.schema import StandardStatus
from ..kernels.robust import nan_running_mean
from .tables import standards_summary

__all__ = ["plot_calibration", "check_plot_path", "plot_formats"]

_WINDOW = 51


def _running_mean(values, valid, window: int = _WINDOW):
    """Mean over ``window`` pixels of the valid values (NaN where none is valid)."""
    ok = valid & np.isfinite(values)
    mean = nan_running_mean(values, ok, window)
    den = nan_running_mean(ok.astype(float), np.ones_like(ok), window)
    return np.where(ok & (den > 0.5), mean, np.nan)


def _shade_masked(ax, wave, calmask):
    masked = (calmask & (bit("TELLURIC") | bit("CALIB_INTERP"))) != 0
    edges = np.flatnonzero(np.diff(np.r_[0, masked.astype(int), 0]))
    for lo, hi in zip(edges[::2], edges[1::2], strict=True):
        ax.axvspan(wave[lo], wave[hi - 1], color="0.85", lw=0)


def _plot_gating(ax, ds: xr.Dataset) -> None:
    """Each standard's zero point against its tilt, with the gating limits."""
    from matplotlib.patches import Rectangle  # deferred: matplotlib only to draw

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
        ax.add_patch(Rectangle((-tl, -zl), 2 * tl, 2 * zl, fill=False, ls="--", color="0.5"))
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("tilt: red − blue of 2.5 log10(Cal_star / Cal_median) [mag]")
    ax.set_ylabel("zero point vs the median [mag]")
    ax.set_title("gating: o used, x rejected (dashed: the limits applied)", fontsize=9)


def plot_formats() -> list[str]:
    """The file extensions matplotlib can save a figure as ('png', 'pdf', 'svg', …)."""
    from matplotlib.figure import Figure  # deferred: matplotlib only to draw

    return sorted(Figure().canvas.get_supported_filetypes())


def check_plot_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check, before any work, that a QC plot can be saved at ``path``; return it.

    The format is the extension's (``.png``, ``.pdf``, …: :func:`plot_formats`);
    the folder must exist and take files; an existing file is replaced only
    with ``overwrite``.

    Raises
    ------
    TypeError
        ``path`` is not a str or os.PathLike.
    OutputError
        No extension, or one matplotlib cannot write; the folder is missing,
        read-only or full; ``path`` is a folder.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"plot path must be a str or os.PathLike, not {type(path).__name__}")
    path = Path(path)
    formats = plot_formats()
    extension = path.suffix.lower().lstrip(".")
    if extension not in formats:
        said = (
            f"its extension .{extension} is not" if extension else "it has no extension, which is"
        )
        raise OutputError(
            f"cannot write the QC plot {path}: {said} a format matplotlib writes; "
            f"end the name in one of .{', .'.join(formats)}"
        )
    if path.is_dir():
        raise OutputError(f"cannot write the QC plot {path}: it is a folder; give a file name")
    check_writable(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"the QC plot {path} exists; pass overwrite=True (command line: --overwrite) "
            "to replace it"
        )
    return path


def plot_calibration(
    ds: xr.Dataset, /, path: str | os.PathLike | None = None, *, overwrite: bool = False
):
    """Draw the QC figure of a calibrated exposure; save it when ``path`` is given.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.flux_calibrate` (computed).
    path : path, optional
        Where to save the figure, in the format of its extension (PNG, PDF,
        …: :func:`plot_formats`); checked first (:func:`check_plot_path`),
        then written to a temporary file and renamed, so that a failure
        never leaves a partial plot.
    overwrite : bool
        Replace an existing ``path``.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    OutputError, OutputExistsError
        Before any drawing, as :func:`check_plot_path` does.
    """
    if path is not None:
        path = check_plot_path(path, overwrite)
    import matplotlib  # deferred: matplotlib is slow to import and only needed to draw

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
        try:
            with atomic_output(path, overwrite=overwrite) as tmp:
                fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=110)
        finally:
            plt.close(fig)
    return fig
