"""Science targets of the flux calibration on simulated exposures with a known truth.

Cases, each over several seeds (standards at off-grid parameters, RV uniform in
±300 km/s, S/N ≈ 30-50, R ≈ 3000):

- ``6 standards``: median |Cal·T − 1| ≤ 1 %, program spectra within 1.5 %,
  pull std 0.8-1.25, median |ΔTeff| ≤ 150 K and |ΔRV| ≤ 3 km/s;
- ``1 standard``: median |Cal·T − 1| ≤ 2 %;
- ``mismatched``: the standards are drawn from a different spectral model than
  the grid (line strengths ±30 %, continuum slopes tilted): ≤ 3 %.

Every exposure is calibrated twice, without and with the Savitzky–Golay
smoothing of the combined calibration (``smooth=True``), and both are shown.

Run: ``python benchmarks/bench_accuracy.py [--seeds 4]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import kspec_xr as kx
from kspec_xr.testing import accuracy_report, make_exposure

CASES = {
    "6 standards": ({"n_standard": 6}, 0.010),
    "10 standards": ({"n_standard": 10}, 0.010),
    "1 standard": ({"n_standard": 1}, 0.020),
    "mismatched (±30 % lines)": ({"n_standard": 6, "mismatch": 0.3}, 0.030),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    grid = kx.open_bosz()
    print(
        f"{'case':28s} {'smooth':>6s} {'seed':>4s} {'|Cal·T-1|':>10s} {'program':>8s} {'pulls':>6s} "
        f"{'|dTeff|':>8s} {'|dRV|':>6s} {'time':>6s}"
    )
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kwargs, target) in CASES.items():
            rows = {False: [], True: []}
            for seed in range(args.seeds):
                sim = make_exposure(
                    100 + seed, n_fiber=120, n_pixel=4096, directory=tmp, name=f"s{seed}", **kwargs
                )
                for smooth in (False, True):
                    t0 = time.perf_counter()
                    out = kx.flux_calibrate(
                        sim.red, catalog=sim.catalog_path, templates=grid, smooth=smooth
                    ).compute()
                    seconds = time.perf_counter() - t0
                    r = accuracy_report(out, sim.truth)
                    rows[smooth].append(r)
                    print(
                        f"{name:28s} {str(smooth):>6s} {seed:4d} "
                        f"{100 * r['cal_median_abs_dev']:9.2f}% "
                        f"{100 * r['program_median_abs_dev']:7.2f}% {r['pull_std']:6.3f} "
                        f"{r['teff_median_abs_err']:7.0f}K {r['rv_median_abs_err']:6.2f} "
                        f"{seconds:5.1f}s"
                    )
            for smooth in (False, True):
                summary[(name, smooth)] = (rows[smooth], target)
    print()
    print("median over seeds, against the targets:")
    for (name, smooth), (rows, target) in summary.items():
        cal = np.median([r["cal_median_abs_dev"] for r in rows])
        prog = np.median([r["program_median_abs_dev"] for r in rows])
        pull = np.median([r["pull_std"] for r in rows])
        teff = np.median([r["teff_median_abs_err"] for r in rows])
        rv = np.median([r["rv_median_abs_err"] for r in rows])
        ok = "PASS" if cal <= target else "MISS"
        label = f"{name}{', smoothed' if smooth else ''}"
        print(
            f"  {label:38s} |Cal·T-1| {100 * cal:.2f}% (target ≤ {100 * target:.0f}%) {ok}; "
            f"program {100 * prog:.2f}%; pulls {pull:.3f}; |dTeff| {teff:.0f} K; "
            f"|dRV| {rv:.2f} km/s"
        )


if __name__ == "__main__":
    main()
