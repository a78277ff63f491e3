"""The real night (../shared/realdata/ozdes-2014-09-17) as a user runs it: no --fwhm.

Every frame of both arms calibrated with the DES photometry through the
``ozdes`` band preset, the medium by the default rule (2dfdr: air), the FWHM
found as kspec_xr finds it (the frames have no ``SPECFWHM`` and no ``SKY``:
measured on the standards, else the nominal resolution of the header's
AAOmega grating, R = 1300 for 580V/385R; a frame refused all the same is
calibrated at the README's 3.7 Å blue / 5.5 Å red and counted),
E(B−V) fitted (the catalogue has none).  Prints per frame: FWHM used and how it was found,
standards used / rejected (with reasons), median fitted RV and E(B−V), and
the photometric residuals per band (median over the used standards, mag);
then the FWHM per arm over the night.

Run: ``python benchmarks/bench_realnight_physics.py [--arm blue] [--frames N]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import kspec_xr as kx
from kspec_xr._base.schema import standard_reasons

#: the arms' resolution as the data's README gives it (used only where a frame is refused)
KNOWN_FWHM = {"blue": 3.7, "red": 5.5}
NIGHT = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "ozdes-2014-09-17"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=("blue", "red"), action="append")
    parser.add_argument("--frames", type=int, default=None, help="first N frames per arm")
    args = parser.parse_args()
    if not NIGHT.is_dir():
        raise SystemExit(f"no real data at {NIGHT}")
    catalog = NIGHT / "des_fstars_2014.csv"
    per_arm: dict[str, list[float]] = {}
    refused: dict[str, int] = {}
    for arm in args.arm or ["blue", "red"]:
        frames = sorted((NIGHT / arm).glob("*.fits"))[: args.frames]
        print(f"\n== {arm} arm: {len(frames)} frames")
        for path in frames:
            start = time.perf_counter()
            ds = kx.open_red(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", kx.KspecWarning)
                try:
                    out = ds.pipe(kx.flux_calibrate, catalog=catalog, bands="ozdes").compute()
                except kx.CalibrationError as err:  # no FWHM could be found
                    print(f"  {path.name}: no --fwhm: refused: {str(err).split(': ', 1)[1]}")
                    refused[arm] = refused.get(arm, 0) + 1
                    out = ds.pipe(
                        kx.flux_calibrate, catalog=catalog, bands="ozdes", fwhm=KNOWN_FWHM[arm]
                    ).compute()
            used = np.asarray(out["standard_status"].values) == 0
            resid = (
                out["phot_residual"]
                .where(out["standard_status"] == 0)
                .median("standard", skipna=True)
            )
            bands = " ".join(
                f"{str(b).split('-')[-1]} {float(v):+.3f}"
                for b, v in zip(resid["band"].values, resid.values, strict=True)
                if np.isfinite(v)
            )
            summary = kx.io.write.resolution_summary(out)
            reasons = sorted(set(standard_reasons(out)) - {""})
            per_arm.setdefault(arm, []).append(float(out.attrs["fwhm_used"]))
            print(
                f"  {path.name}: FWHM {out.attrs['fwhm_used']:.2f} A ({out.attrs['fwhm_source']};"
                f" measured {summary['measured']:.2f} +- {summary['measured_err']:.2f})"
                f"  used {int(used.sum())}/{used.size}"
                f"  RV {float(np.nanmedian(out['fit_rv'].values[used])):+.1f} km/s"
                f"  E(B-V) {float(np.nanmedian(out['fit_ebv'].values[used])):.3f}"
                f"  phot resid [{bands}]  {time.perf_counter() - start:.1f} s"
                + (f"  rejected: {'; '.join(reasons)}" if reasons else ""),
                flush=True,
            )
    for arm, values in per_arm.items():
        print(
            f"\n{arm}: {refused.get(arm, 0)} of {len(values)} frames refused without --fwhm; "
            f"FWHM used {np.median(values):.2f} A (range {min(values):.2f}-{max(values):.2f})"
        )


if __name__ == "__main__":
    main()
