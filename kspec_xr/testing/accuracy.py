"""How close a calibrated simulated exposure came to its truth."""

from __future__ import annotations

import numpy as np

from .._base.maskbits import bit
from .._base.schema import standards_used

__all__ = ["accuracy_report"]


def accuracy_report(out, truth) -> dict[str, float]:
    """Compare a calibrated exposure with the simulation's truth.

    Returns the median |Cal·T − 1| outside the masked bands, the median
    fractional error of the program spectra (flux summed in 100-pixel bins,
    outside masked bands, in bins measured to better than 0.5 %), the standard deviation of the pulls (F − F_true)/σ of the
    program fibers, and the median |ΔTeff| / |ΔRV| of the standards.
    """
    good_lam = np.asarray(out["calibration_mask"].values) == 0
    cal_t = np.asarray(out["calibration"].values) * np.asarray(truth["throughput"].values)
    report = {"cal_median_abs_dev": float(np.median(np.abs(cal_t[good_lam] - 1.0)))}
    # the calibration's own pulls: (Cal − Cal_true)/σ_Cal, the limit of the pulls
    # of a program spectrum whose photon noise is negligible
    with np.errstate(invalid="ignore", divide="ignore"):
        rel_err = np.sqrt(np.asarray(out["calibration_variance"].values)) / np.asarray(
            out["calibration"].values
        )
        cal_pull = (cal_t - 1.0) / rel_err
    cal_pull = cal_pull[good_lam & np.isfinite(cal_pull)]
    report["cal_pull_std"] = float(np.std(cal_pull)) if cal_pull.size else float("nan")

    program = np.flatnonzero(np.asarray(truth["fiber_type"].values) == "P")
    flux = np.asarray(out["flux"].values)[program]
    var = np.asarray(out["variance"].values)[program]
    true = np.asarray(truth["flux"].values)[program] * np.asarray(truth["telluric"].values)
    usable = (np.asarray(out["mask"].values)[program] & ~bit("TELLURIC")) == 0
    usable &= good_lam[None, :] & np.isfinite(flux) & (true > 0)
    # systematic error of the calibrated program spectra: flux summed in
    # 100-pixel bins against the truth, in bins whose noise is below 0.5 %
    n_bin = flux.shape[1] // 100
    cut = n_bin * 100

    def binned(a):
        return np.where(usable, a, 0.0)[:, :cut].reshape(len(program), n_bin, 100).sum(-1)

    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = binned(flux) / binned(true)
        noise = np.sqrt(binned(var)) / binned(true)
    full = usable[:, :cut].reshape(len(program), n_bin, 100).all(-1)
    precise = full & (noise < 0.005)
    report["program_median_abs_dev"] = float(np.median(np.abs(ratio[precise] - 1.0)))
    report["program_bins"] = int(np.count_nonzero(precise))
    pulls = ((flux - true) / np.sqrt(var))[usable]
    report["pull_std"] = float(np.std(pulls[np.isfinite(pulls)]))
    # pulls of the program spectra binned like the systematic error above: in
    # 100-pixel sums the calibration error is no longer drowned by photon noise
    with np.errstate(invalid="ignore", divide="ignore"):
        binned_pull = (binned(flux) - binned(true)) / np.sqrt(binned(var))
    binned_pull = binned_pull[full & np.isfinite(binned_pull)]
    report["binned_pull_std"] = float(np.std(binned_pull)) if binned_pull.size else float("nan")
    # pulls of the bright program stars (kspec_xr.testing.make_exposure(n_bright=...))
    bright = np.asarray(truth["bright"].values)[program] if "bright" in truth else None
    if bright is not None and bright.any():
        sel = usable & bright[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            pb = ((flux - true) / np.sqrt(var))[sel]
        report["bright_pull_std"] = float(np.std(pb[np.isfinite(pb)]))
    else:
        report["bright_pull_std"] = float("nan")

    used = np.asarray(standards_used(out).values)
    order = np.argsort(np.asarray(truth["standard_fiber"].values))
    fit_teff = np.asarray(out["fit_teff"].values)
    fit_rv = np.asarray(out["fit_rv"].values)
    report["teff_median_abs_err"] = float(
        np.nanmedian(np.abs(fit_teff - np.asarray(truth["teff"].values)[order])[used])
    )
    report["rv_median_abs_err"] = float(
        np.nanmedian(np.abs(fit_rv - np.asarray(truth["rv"].values)[order])[used])
    )
    report["n_standards_used"] = int(np.count_nonzero(used))
    return report
