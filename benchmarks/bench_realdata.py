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

The photometry is the survey's DES CoAdd ``mag_auto`` g r i z Y (DECam, AB; zero
means missing), read with ``bands="ozdes"`` (a preset of :func:`kspec_xr.read_catalog`);
the file gives no errors, so the preset assumes 0.02 mag.  Real 2dfdr
frames have no ``SPECFWHM``: 3.7 Å (blue) and 5.5 Å (red) are given, from the
README's 3.5–4 and 5–6 Å.  Their wavelengths are in air and ``CTYPE1`` does not
say so: the default medium (air) applies, the templates and masks meet the
pixels' vacuum wavelengths.  The fitted RVs of the standards are printed per
exposure and arm (median and spread), and the summary compares blue with red
star by star: on one velocity scale they agree ("before" treated the air
wavelengths as vacuum: both arms ~80 km/s low, by a different amount per arm).

Run: ``python benchmarks/bench_realdata.py [--no-before] [--arm blue|red]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))

import before as legacy  # noqa: E402

import kspec_xr as kx  # noqa: E402
from kspec_xr.qc import line_band_departures  # noqa: E402

NIGHT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "ozdes-2014-09-17"
FWHM = {"blue": 3.7, "red": 5.5}
ZP_CARD = {"blue": "BLUZP", "red": "REDZP"}
#: the band map of the night's photometry: preset "ozdes" of kspec_xr.read_catalog
#: (DES CoAdd mag_auto g r i z Y on decam2014-*, AB, 0 = missing, 0.02 mag assumed)
BANDS = "ozdes"


def _level(cal, mask) -> float:
    good = (np.asarray(mask) == 0) & np.isfinite(cal)
    return float(np.log10(np.median(np.asarray(cal)[good])))


def _rvs(fibers, rv, used) -> dict[str, float]:
    """Fiber number -> fitted RV (km/s) of the standards used."""
    fibers, rv, used = np.asarray(fibers), np.asarray(rv, float), np.asarray(used, bool)
    return {str(int(f)): float(v) for f, v, u in zip(fibers, rv, used, strict=True) if u}


def _rv_text(rv: dict[str, float]) -> str:
    v = np.array(list(rv.values()))
    if not v.size:
        return "RV: no standard used"
    spread = 1.4826 * np.median(np.abs(v - np.median(v)))
    return f"RV median {np.median(v):+6.1f} km/s, spread (MAD) {spread:4.1f} km/s, n = {v.size}"


def _rv_summary(side: str, rvs: dict[str, dict[str, dict[str, float]]]) -> None:
    """Blue against red, exposure by exposure and star by star (same fibres in both arms)."""
    if not rvs.get("blue") or not rvs.get("red"):
        return
    print(f"  {side:6s} RVs of the standards, blue vs red arm of each exposure (km/s):")
    diffs = []
    for number in sorted(set(rvs["blue"]) & set(rvs["red"])):
        blue, red = rvs["blue"][number], rvs["red"][number]
        common = sorted(set(blue) & set(red))
        d = np.array([blue[f] - red[f] for f in common])
        diffs.append(np.median(d) if d.size else np.nan)
        print(
            f"    exposure {number}: blue median {np.median(list(blue.values())):+6.1f}, red median "
            f"{np.median(list(red.values())):+6.1f}, blue - red per star: median "
            f"{np.median(d) if d.size else np.nan:+5.1f}, spread (MAD) "
            f"{1.4826 * np.median(np.abs(d - np.median(d))) if d.size else np.nan:4.1f}, n = {d.size}"
        )
    print(
        f"    blue - red over the night: median {np.nanmedian(diffs):+.1f} km/s, "
        f"exposures' spread {np.nanstd(diffs):.1f} km/s"
    )


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
    catalog = NIGHT / "des_fstars_2014.csv"
    grid = kx.open_bosz()
    arms = args.arm or ["blue", "red"]
    levels = {"after": [], "before": []}
    all_departures = {"after": [], "before": []}
    #: side -> arm -> exposure number -> {standard: RV (km/s)}, the standards used
    rvs: dict[str, dict[str, dict[str, dict[str, float]]]] = {"after": {}, "before": {}}
    with tempfile.TemporaryDirectory(prefix="kspec_real_") as tmp:
        cat_path = Path(tmp) / "des.nc"
        kx.read_catalog(catalog, bands=BANDS).to_netcdf(cat_path)  # for the "before" runs
        for arm in arms:
            files = sorted((NIGHT / arm).glob("*red.fits"))
            jobs = [
                {"red": str(f), "catalog": str(cat_path), "options": {"fwhm": FWHM[arm]}}
                for f in files
            ]
            old = [] if args.no_before else legacy.run(jobs, args.before)
            # "before" keeps its own stand-in grid in the cache and drops this tree's:
            # open it again (rebuilt if it is gone)
            grid = kx.open_bosz()
            print(f"\n{arm} arm (FWHM {FWHM[arm]} Å)")
            residuals: dict[str, list[float]] = {}
            for k, path in enumerate(files):
                ds = kx.open_red(path)
                zp = float(kx.primary_header(ds)[ZP_CARD[arm]])
                out = kx.flux_calibrate(
                    ds, catalog=catalog, bands=BANDS, templates=grid, fwhm=FWHM[arm]
                ).compute()
                status = np.asarray(out["standard_status"].values)
                good = np.asarray(out["calibration_mask"].values) == 0
                rms = float(np.nanmedian(np.asarray(out["calibration_rms"].values)[good]))
                level = _level(out["calibration"].values, out["calibration_mask"].values)
                dep = line_band_departures(out)
                worst = max(dep, key=lambda d: d["departure"]) if dep else None
                levels["after"].append((arm, zp, level))
                all_departures["after"] += dep
                for band in out["band"].values:  # m_obs - m_syn - mean, standards used
                    r = np.asarray(out["phot_residual"].sel(band=band).values)[status == 0]
                    residuals.setdefault(str(band), []).extend(r[np.isfinite(r)].tolist())
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
                rv = _rvs(out["standard_fiber"].values, out["fit_rv"].values, status == 0)
                rvs["after"].setdefault(arm, {})[path.name[6:10]] = rv
                print(f"      {_rv_text(rv)} ({out.attrs.get('wavelength_medium_source', '')})")
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
                    b_rv = _rvs(old[k]["standard_fiber"], old[k]["fit_rv"], old[k]["used"])
                    rvs["before"].setdefault(arm, {})[path.name[6:10]] = b_rv
                    all_departures["before"] += b_dep
                    print(
                        f"      before: {int(old[k]['used'].sum()):2d}/{old[k]['used'].size} used,"
                        f" log10 Cal {b_level:7.3f}, rms {b_rms:.3g}, worst line "
                        f"{100 * b_worst:.0f}% (same bands); {_rv_text(b_rv)}"
                    )
            print(f"  {arm} photometric residual m_obs - m_syn - mean offset, standards used:")
            for band, values in residuals.items():
                v = np.asarray(values)
                if v.size:
                    mad = 1.4826 * np.median(np.abs(v - np.median(v)))
                    print(
                        f"    {band:12s} median {1000 * np.median(v):+6.1f} mmag, "
                        f"scatter (MAD) {1000 * mad:5.1f} mmag, n = {v.size}"
                    )

            # two standards spoilt by hand in every exposure of the arm, against the same
            # exposure without those two standards (retyped as program fibres)
            print(f"\n{arm} arm, one dead fibre and one with 55x its light in every exposure:")
            for path in files:
                ds = kx.open_red(path)
                clean = kx.flux_calibrate(
                    ds, catalog=catalog, bands=BANDS, templates=grid, fwhm=FWHM[arm]
                )
                clean = clean.compute()
                used = np.flatnonzero(np.asarray(clean["standard_status"].values) == 0)
                fibers = np.asarray(clean["standard_fiber"].values)
                positions = ds.indexes["fiber"].get_indexer(fibers[used[:2]])
                spoilt = _spoil(ds, dead=positions[0], bright=positions[1])
                out = kx.flux_calibrate(
                    spoilt, catalog=catalog, bands=BANDS, templates=grid, fwhm=FWHM[arm]
                ).compute()
                types = ds["fiber_type"].values.copy()
                types[positions] = "P"
                without = kx.flux_calibrate(
                    ds.assign_coords(fiber_type=("fiber", types, ds["fiber_type"].attrs)),
                    catalog=catalog,
                    bands=BANDS,
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
        _rv_summary(side, rvs[side])
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
