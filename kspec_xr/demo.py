"""``kspec-xr demo``: simulate a realistic exposure and calibrate it, against the truth."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "accuracy_report"]


def accuracy_report(out, truth) -> dict[str, float]:
    """Compare a calibrated exposure with the simulation's truth.

    Returns the median |Cal·T − 1| outside the masked bands, the median
    fractional error of the program spectra (flux summed in 100-pixel bins,
    outside masked bands, in bins measured to better than 0.5 %), the standard deviation of the pulls (F − F_true)/σ of the
    program fibers, and the median |ΔTeff| / |ΔRV| of the standards.
    """
    from .maskbits import bit

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

    from .calibration import standards_used

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


def run_demo(directory: str | Path = "kspec_xr_demo", *, seed: int = 1, echo=print) -> dict:
    """Simulate an exposure in ``directory``, calibrate it, write it, print the accuracy."""
    from .io import write_red
    from .pipeline import flux_calibrate
    from .templates import open_bosz
    from .testing import make_exposure

    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    echo("kspec-xr demo: preparing the bundled stand-in BOSZ template grid …")
    grid = open_bosz()
    echo(
        f"  {grid.sizes['teff']}×{grid.sizes['logg']}×{grid.sizes['mh']} templates, "
        f"R={grid.attrs.get('resolution')}, {time.perf_counter() - t0:.1f} s"
    )
    t1 = time.perf_counter()
    sim = make_exposure(
        seed, n_fiber=100, n_standard=8, n_pixel=4096, directory=folder, name="demo"
    )
    echo(f"simulated exposure: {sim.red_path}")
    echo(f"standard-star catalogue: {sim.catalog_path}  ({time.perf_counter() - t1:.1f} s)")
    t2 = time.perf_counter()
    out = flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid).compute()
    echo(f"flux calibration: {time.perf_counter() - t2:.1f} s")
    result = folder / "demored_fcal.fits"
    write_red(out, result, overwrite=True)
    echo(f"calibrated exposure: {result}")
    from .qc import plot_calibration, standards_table

    echo(standards_table(out))
    plot_calibration(out, folder / "demo_qc.png")
    echo(f"QC figure: {folder / 'demo_qc.png'}")
    report = accuracy_report(out, sim.truth)
    echo("accuracy against the simulation's truth:")
    echo(f"  standards used                      {report['n_standards_used']}")
    echo(f"  median |Cal·T − 1| (unmasked)       {100 * report['cal_median_abs_dev']:.2f} %")
    echo(f"  program spectra, median |ΔF/F|      {100 * report['program_median_abs_dev']:.2f} %")
    echo(f"  pulls (F − F_true)/σ, std           {report['pull_std']:.3f}")
    echo(f"  standards' median |ΔTeff|           {report['teff_median_abs_err']:.0f} K")
    echo(f"  standards' median |ΔRV|             {report['rv_median_abs_err']:.2f} km/s")
    echo(f"total {time.perf_counter() - t0:.1f} s")
    return report
