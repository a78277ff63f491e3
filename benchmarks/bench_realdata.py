"""The real night (AAOmega/2dfdr, OzDES, 2014-09-17): standards used and rejected, before/after.

Needs ``../shared/realdata/ozdes-2014-09-17/`` (see its README); prints how to
get it and exits when it is absent.  For every exposure of both arms it
calibrates the frame with this tree ("after") and with the revision before the
robust-standards work ("before", see ``benchmarks/before.py``) and prints

- the standards used / rejected, and the reason of every rejection (after);
- log10 of the median calibration against the survey's own zero point
  (``BLUZP``/``REDZP``): a good calibration tracks it (about 0.4 per unit);
- ``FCALRMS``-like fractional RMS across the stars;
- across every bridged stellar-line band (≤ 100 Å wide), the largest departure
  of the calibration from a straight line between its neighbours, with the
  noise of those neighbours.

Then the same frames with two standards spoilt by hand (one fibre's counts made
negative and noise-only, one fibre's counts ×55), against the clean result.

The photometry is the survey's DES CoAdd ``mag_auto`` g r i z (DECam, AB; zero
means missing); the file gives no errors, so 0.02 mag is assumed.  Real 2dfdr
frames have no ``SPECFWHM``: 3.7 Å (blue) and 5.5 Å (red) are given, from the
README's 3.5–4 and 5–6 Å.  Their wavelengths are in air and are used as they
are (issue 10 brings the air/vacuum conversion).

Run: ``python benchmarks/bench_realdata.py [--no-before] [--arm blue|red]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))

import before as legacy  # noqa: E402

import kspec_xr as kx  # noqa: E402
from kspec_xr.qc import line_band_departures  # noqa: E402

NIGHT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "ozdes-2014-09-17"
FWHM = {"blue": 3.7, "red": 5.5}
ZP_CARD = {"blue": "BLUZP", "red": "REDZP"}
DES_BANDS = {"g": "decam2014-g", "r": "decam2014-r", "i": "decam2014-i", "z": "decam2014-z"}
ASSUMED_ERROR = 0.02


def des_catalog(path: Path) -> xr.Dataset:
    """The night's F-star photometry in the layout of :func:`kspec_xr.read_catalog`."""
    table = pd.read_csv(path)
    mag = np.stack([table[f"CoAdd mag_auto {b}"].to_numpy(float) for b in DES_BANDS], axis=1)
    mag[(mag <= 0) | (mag >= 99)] = np.nan  # zero (and 99) mean missing
    return xr.Dataset(
        {
            "mag": (("star", "band"), mag, {"units": "mag", "system": "AB"}),
            "mag_err": (
                ("star", "band"),
                np.where(np.isfinite(mag), ASSUMED_ERROR, np.nan),
                {"units": "mag"},
            ),
        },
        coords={
            "star": np.arange(len(table)),
            "band": list(DES_BANDS.values()),
            "ra": ("star", table["ra"].to_numpy(float), {"units": "deg"}),
            "dec": ("star", table["dec"].to_numpy(float), {"units": "deg"}),
        },
        attrs={"source": str(path)},
    )


def _level(cal, mask) -> float:
    good = (np.asarray(mask) == 0) & np.isfinite(cal)
    return float(np.log10(np.median(np.asarray(cal)[good])))


def _spoil(ds: xr.Dataset, dead: int, bright: int, factor: float = 55.0) -> xr.Dataset:
    """One standard dead (negative, noise-only counts), one with ``factor``× its light."""
    flux = ds["flux"].values.astype(float).copy()
    var = ds["variance"].values.astype(float).copy()
    rng = np.random.default_rng(7)
    flux[dead] = -30.0 + 5.0 * rng.normal(size=flux.shape[1])
    var[dead] = 25.0
    flux[bright] *= factor
    var[bright] *= factor
    mask = kx.maskbits.data_mask(flux, var) | (ds["mask"].values & ~kx.maskbits.bit("BADVAR"))
    return ds.assign(
        flux=(ds["flux"].dims, flux.astype("float32"), ds["flux"].attrs),
        variance=(ds["variance"].dims, var.astype("float32"), ds["variance"].attrs),
        mask=(ds["mask"].dims, mask.astype("int32"), ds["mask"].attrs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-before", action="store_true", help="skip the 'before' runs")
    parser.add_argument("--arm", choices=("blue", "red"), action="append")
    parser.add_argument("--before", default=legacy.BEFORE, help="git revision of 'before'")
    args = parser.parse_args()
    if not NIGHT.is_dir():
        print(f"no real night at {NIGHT}; this benchmark needs ../shared/realdata/ozdes-2014-09-17")
        return
    catalog = des_catalog(NIGHT / "des_fstars_2014.csv")
    grid = kx.open_bosz()
    arms = args.arm or ["blue", "red"]
    levels = {"after": [], "before": []}
    all_departures = {"after": [], "before": []}
    with tempfile.TemporaryDirectory(prefix="kspec_real_") as tmp:
        cat_path = Path(tmp) / "des.nc"
        catalog.to_netcdf(cat_path)
        for arm in arms:
            files = sorted((NIGHT / arm).glob("*red.fits"))
            jobs = [
                {"red": str(f), "catalog": str(cat_path), "options": {"fwhm": FWHM[arm]}}
                for f in files
            ]
            old = [] if args.no_before else legacy.run(jobs, args.before)
            print(f"\n{arm} arm (FWHM {FWHM[arm]} Å)")
            for k, path in enumerate(files):
                ds = kx.open_red(path)
                zp = float(kx.primary_header(ds)[ZP_CARD[arm]])
                out = kx.flux_calibrate(
                    ds, catalog=catalog, templates=grid, fwhm=FWHM[arm]
                ).compute()
                status = np.asarray(out["standard_status"].values)
                good = np.asarray(out["calibration_mask"].values) == 0
                rms = float(np.nanmedian(np.asarray(out["calibration_rms"].values)[good]))
                level = _level(out["calibration"].values, out["calibration_mask"].values)
                dep = line_band_departures(out)
                worst = max(dep, key=lambda d: d["departure"]) if dep else None
                levels["after"].append((arm, zp, level))
                all_departures["after"] += dep
                text = (
                    f"  {path.name}  ZP {zp:7.3f}  after: {int((status == 0).sum()):2d}/"
                    f"{status.size} used, log10 Cal {level:7.3f}, rms {rms:.3f}, worst line "
                    + (
                        f"{100 * worst['departure']:.1f}% (noise {100 * worst['noise']:.1f}%) at "
                        f"{0.5 * (worst['lo'] + worst['hi']):.0f} Å"
                        if worst
                        else "-"
                    )
                )
                print(
                    text
                    + (f", vs parabola {100 * worst['departure_smooth']:.1f}%" if worst else "")
                )
                for s in np.flatnonzero(status):
                    fiber = int(out["standard_fiber"].values[s])
                    print(f"      rejected fiber {fiber:3d}: {out['standard_reason'].values[s]}")
                if old:
                    if isinstance(old[k], str):
                        print(f"      before: failed: {old[k]}")
                        continue
                    b = legacy.as_dataset(old[k], ds)
                    b_level = _level(b["calibration"].values, b["calibration_mask"].values)
                    b_dep = line_band_departures(b.assign(calibration_mask=out["calibration_mask"]))
                    b_worst = max((d["departure"] for d in b_dep), default=float("nan"))
                    b_good = np.asarray(b["calibration_mask"].values) == 0
                    b_rms = float(np.nanmedian(np.asarray(b["calibration_rms"].values)[b_good]))
                    levels["before"].append((arm, zp, b_level))
                    all_departures["before"] += b_dep
                    print(
                        f"      before: {int(old[k]['used'].sum()):2d}/{old[k]['used'].size} used,"
                        f" log10 Cal {b_level:7.3f}, rms {b_rms:.3g}, worst line "
                        f"{100 * b_worst:.0f}% (same bands)"
                    )

            # two standards spoilt by hand in every exposure of the arm, against the same
            # exposure without those two standards (retyped as program fibres)
            print(f"\n{arm} arm, one dead fibre and one with 55x its light in every exposure:")
            for path in files:
                ds = kx.open_red(path)
                clean = kx.flux_calibrate(ds, catalog=catalog, templates=grid, fwhm=FWHM[arm])
                clean = clean.compute()
                used = np.flatnonzero(np.asarray(clean["standard_status"].values) == 0)
                fibers = np.asarray(clean["standard_fiber"].values)
                positions = ds.indexes["fiber"].get_indexer(fibers[used[:2]])
                spoilt = _spoil(ds, dead=positions[0], bright=positions[1])
                out = kx.flux_calibrate(
                    spoilt, catalog=catalog, templates=grid, fwhm=FWHM[arm]
                ).compute()
                types = ds["fiber_type"].values.copy()
                types[positions] = "P"
                without = kx.flux_calibrate(
                    ds.assign_coords(fiber_type=("fiber", types, ds["fiber_type"].attrs)),
                    catalog=catalog,
                    templates=grid,
                    fwhm=FWHM[arm],
                ).compute()
                status = np.asarray(out["standard_status"].values)
                caught = bool(status[used[0]] and status[used[1]])
                both = (np.asarray(out["calibration_mask"].values) == 0) & (
                    np.asarray(without["calibration_mask"].values) == 0
                )
                ratio = out["calibration"].values[both] / without["calibration"].values[both]
                print(
                    f"  {path.name}: both rejected: {caught}; calibration vs the frame without "
                    f"them: median |ratio - 1| = {100 * np.median(np.abs(ratio - 1)):.3f}%"
                    f" ({out['standard_reason'].values[used[0]]}; "
                    f"{out['standard_reason'].values[used[1]]})"
                )

    print("\nsummary")
    for side in ("after", "before"):
        if not levels[side]:
            continue
        for arm in arms:
            pts = np.array([(zp, lv) for a, zp, lv in levels[side] if a == arm])
            slope = np.polyfit(pts[:, 0], pts[:, 1], 1)[0] if len(pts) > 2 else np.nan
            spread = np.std(pts[:, 1] - slope * pts[:, 0]) if len(pts) > 2 else np.nan
            print(
                f"  {side:6s} {arm:4s}: d log10(Cal) / d ZP = {slope:.3f} (0.4 expected), "
                f"scatter about it {spread:.3f} dex"
            )
        deps = np.array([d["departure"] for d in all_departures[side]])
        smooth = np.array([d["departure_smooth"] for d in all_departures[side]])
        noise = np.array([d["noise"] for d in all_departures[side]])
        if deps.size:
            clear = noise < 0.01
            print(
                f"  {side:6s} {deps.size} line bands: departure from the line between the "
                f"neighbours: median {100 * np.median(deps):.2f}%, max {100 * deps.max():.1f}% "
                f"(max {100 * deps[clear].max():.2f}% over the {clear.sum()} bands whose neighbours "
                f"are known to < 1 %); from a parabola through them: max "
                f"{100 * smooth.max():.2f}% [target < 2 %]"
            )


if __name__ == "__main__":
    main()
