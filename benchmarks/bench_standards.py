"""Robust standards (issue 8): bad and mismatched standards, before and after, side by side.

Every case is a simulated exposure (``make_exposure``: 120 fibers × 4096
pixels, standards at off-grid parameters, RV ±300 km/s, S/N ≈ 30–50, 8 bright
program stars) calibrated twice in one run: by this tree ("after") and by the
revision before the robust-standards work ("before", ``benchmarks/before.py``,
taken from git and run in a subprocess on the same files).

Cases (several seeds each): a clean exposure; one standard of 7 whose catalogue
photometry is 0.8 (and 0.5) mag off; a ``C`` fibre with no star plus a fibre
with 50× its star's light (compared with the same exposure without those two
standards); a dead fibre; stars the templates do not match (line strengths
±30 % and tilted continua; and stars built another way: extra lines, ripples).
Then the false-rejection rate of clean exposures over many seeds, and the
bridges across the stellar-line bands against the truth.

Columns: median |Cal·T − 1| outside masked bands, program spectra (100-pixel
bins), pull std of all program pixels, of the bright program stars and of the
calibration itself ((Cal − Cal_true)/σ_Cal: the pulls of a spectrum without
photon noise), standards used / rejected, whether exactly the spoilt ones were
rejected, and (no-star case) the median |Cal / Cal_without − 1|.

Run: ``python benchmarks/bench_standards.py [--seeds 3] [--false-seeds 20] [--before REV]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import before as legacy  # noqa: E402

import kspec_xr as kx  # noqa: E402
from kspec_xr._base.maskbits import bit  # noqa: E402
from kspec_xr.qc import line_band_departures  # noqa: E402
from kspec_xr.testing import (
    accuracy_report,  # noqa: E402
    make_exposure,  # noqa: E402
)

SIM = {"n_fiber": 120, "n_pixel": 4096, "n_bright": 8}
CASES = {
    "clean, 7 standards": {"n_standard": 7},
    "1 of 7: photometry +0.8 mag": {"n_standard": 7, "bad_standards": {2: ("photometry", 0.8)}},
    "1 of 7: photometry +0.5 mag": {"n_standard": 7, "bad_standards": {0: ("photometry", 0.5)}},
    "no-star fibre + 50x fibre, of 7": {
        "n_standard": 7,
        "bad_standards": {1: ("no_star",), 4: ("counts", 50.0)},
    },
    "1 of 7: dead fibre": {"n_standard": 7, "bad_standards": {3: ("dead",)}},
    "mismatched (lines ±30 %, tilts)": {"n_standard": 6, "mismatch": 0.3},
    "built another way (lines, ripple)": {"n_standard": 6, "star_model": "other"},
}


def _without(sim, bad: dict, folder: Path):
    """The exposure with the spoilt standards retyped as program fibres (on disk too)."""
    types = sim.red["fiber_type"].values.copy()
    fibers = np.flatnonzero(types == "C")[list(bad)]
    types[fibers] = "P"
    ds = sim.red.assign_coords(fiber_type=("fiber", types, sim.red["fiber_type"].attrs))
    path = kx.write_red(ds, folder / "without.fits", overwrite=True)
    return ds, path


def _agreement(a, b) -> float:
    good = (np.asarray(a["calibration_mask"].values) == 0) & (
        np.asarray(b["calibration_mask"].values) == 0
    )
    ratio = np.asarray(a["calibration"].values)[good] / np.asarray(b["calibration"].values)[good]
    return float(np.median(np.abs(ratio - 1.0)))


def _bridge_error(out, truth) -> float:
    """Largest |Cal·T − 1| inside the interior stellar-line bands (the bridges)."""
    band = (np.asarray(out["calibration_mask"].values) & bit("STELLAR_LINE")) != 0
    band &= np.asarray(truth["telluric"].values) > 0.999
    cal_t = np.asarray(out["calibration"].values) * np.asarray(truth["throughput"].values)
    worst = 0.0
    edges = np.flatnonzero(np.diff(np.r_[0, band.astype(np.int8), 0]))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        if a > 0 and b < band.size:
            worst = max(worst, float(np.max(np.abs(cal_t[a:b] - 1.0))))
    return worst


def _row(label, r, *, used, rejected, correct="", extra=""):
    return (
        f"  {label:6s} {100 * r['cal_median_abs_dev']:7.2f}% {100 * r['program_median_abs_dev']:7.2f}%"
        f" {r['pull_std']:6.2f} {r['bright_pull_std']:6.2f} {r['cal_pull_std']:6.2f}"
        f" {used:>5s} {rejected:>5s} {correct:>7s} {extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--false-seeds", type=int, default=20)
    parser.add_argument("--before", default=legacy.BEFORE, help="git revision of 'before'")
    args = parser.parse_args()
    grid = kx.open_bosz()
    t_start = time.perf_counter()
    summary: dict[str, dict[str, list]] = {}
    bridges = {"after": [], "before": []}
    departures = []
    with tempfile.TemporaryDirectory(prefix="kspec_bench_std_") as tmp:
        for name, kwargs in CASES.items():
            print(f"\n{name}")
            print(
                f"  {'':6s} {'|Cal·T-1|':>8s} {'program':>8s} {'pulls':>6s} {'bright':>6s}"
                f" {'Cal':>6s} {'used':>5s} {'rej':>5s} {'right':>7s}"
            )
            rows = summary.setdefault(name, {"after": [], "before": []})
            for seed in range(args.seeds):
                folder = Path(tmp) / f"{len(summary)}_{seed}"
                sim = make_exposure(200 + seed, directory=folder, name="s", **SIM, **kwargs)
                bad = dict(kwargs.get("bad_standards", {}))
                jobs = [{"red": str(sim.red_path), "catalog": str(sim.catalog_path), "options": {}}]
                without = None
                if "no_star" in str(bad):
                    ds_without, path_without = _without(sim, bad, folder)
                    jobs.append(
                        {"red": str(path_without), "catalog": str(sim.catalog_path), "options": {}}
                    )
                    without = kx.flux_calibrate(
                        ds_without, catalog=sim.catalog_path, templates=grid
                    ).compute()
                out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid).compute()
                old = legacy.run(jobs, args.before)
                status = np.asarray(out["standard_status"].values)
                rejected = set(np.flatnonzero(status != 0).tolist())
                right = "yes" if rejected == set(bad) else f"{sorted(rejected)}"
                report = accuracy_report(out, sim.truth)
                extra = ""
                if without is not None:
                    report["vs_without"] = _agreement(out, without)
                    extra = f"vs without: {100 * report['vs_without']:.2f}%"
                report["right"] = rejected == set(bad)
                rows["after"].append(report)
                print(
                    _row(
                        "after",
                        report,
                        used=str(int((status == 0).sum())),
                        rejected=str(len(rejected)),
                        correct=right,
                        extra=extra,
                    )
                )
                bridges["after"].append(_bridge_error(out, sim.truth))
                departures += [d["departure"] for d in line_band_departures(out)]
                if isinstance(old[0], str):
                    print(f"  before failed: {old[0]}")
                    continue
                before = legacy.as_dataset(old[0], sim.red)
                report_b = accuracy_report(before, sim.truth)
                extra = ""
                if without is not None and not isinstance(old[1], str):
                    report_b["vs_without"] = _agreement(before, legacy.as_dataset(old[1], sim.red))
                    extra = f"vs without: {100 * report_b['vs_without']:.2f}%"
                rows["before"].append(report_b)
                n_used = int(np.count_nonzero(old[0]["used"]))
                print(
                    _row(
                        "before",
                        report_b,
                        used=str(n_used),
                        rejected=str(old[0]["used"].size - n_used),
                        correct="yes" if not bad else "no",
                        extra=extra,
                    )
                )
                bridges["before"].append(
                    _bridge_error(
                        before.assign(calibration_mask=out["calibration_mask"]), sim.truth
                    )
                )

        print(f"\nfalse rejections: clean exposures, seeds 300-{300 + args.false_seeds - 1}")
        false = {}
        for label, kwargs in (
            ("clean, 7 standards", {"n_standard": 7}),
            ("mismatched (lines ±30 %, tilts)", {"n_standard": 6, "mismatch": 0.3}),
            ("built another way", {"n_standard": 6, "star_model": "other"}),
        ):
            n_std = n_rej = 0
            reasons = []
            for seed in range(args.false_seeds):
                sim = make_exposure(
                    300 + seed,
                    n_fiber=80,
                    n_pixel=4096,
                    directory=Path(tmp) / f"false{seed}",
                    name="f",
                    **kwargs,
                )
                out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid).compute()
                status = np.asarray(out["standard_status"].values)
                n_std += status.size
                n_rej += int(np.count_nonzero(status))
                reasons += [str(r) for r in out["standard_reason"].values if r]
            false[label] = (n_rej, n_std)
            print(f"  {label:34s} {n_rej}/{n_std} standards rejected ({100 * n_rej / n_std:.1f} %)")
            for reason in reasons:
                print(f"      {reason}")

    print("\nmedian over seeds (after | before), against the targets:")
    targets = {
        "1 of 7: photometry +0.8 mag": ("cal ≤ 1.2 %, program ≤ 1.5 %, rejected", 0.012),
        "clean, 7 standards": ("cal ≤ 1 %, pulls 0.8-1.25", 0.010),
        "mismatched (lines ±30 %, tilts)": ("pulls 0.8-1.25", None),
        "built another way (lines, ripple)": ("pulls 0.8-1.25", None),
        "no-star fibre + 50x fibre, of 7": ("both rejected, within 0.3 % of without", None),
    }
    for name, rows in summary.items():

        def med(side, key, rows=rows):
            values = [r.get(key, np.nan) for r in rows[side]]
            return float(np.median(values)) if values else float("nan")

        line = (
            f"  {name:36s} cal {100 * med('after', 'cal_median_abs_dev'):.2f}% | "
            f"{100 * med('before', 'cal_median_abs_dev'):.2f}%;  program "
            f"{100 * med('after', 'program_median_abs_dev'):.2f}% | "
            f"{100 * med('before', 'program_median_abs_dev'):.2f}%;  bright pulls "
            f"{med('after', 'bright_pull_std'):.2f} | {med('before', 'bright_pull_std'):.2f};  Cal "
            f"pulls {med('after', 'cal_pull_std'):.2f} | {med('before', 'cal_pull_std'):.2f}"
        )
        if "vs_without" in rows["after"][0]:
            line += (
                f";  vs without {100 * med('after', 'vs_without'):.2f}% | "
                f"{100 * med('before', 'vs_without'):.2f}%"
            )
        right = sum(r["right"] for r in rows["after"])
        line += f";  right rejections {right}/{len(rows['after'])}"
        if name in targets:
            line += f"   [target: {targets[name][0]}]"
        print(line)
    print(
        "  bridges across the stellar-line bands, largest |Cal·T − 1| inside them: "
        f"after {100 * np.median(bridges['after']):.2f}% (max {100 * np.max(bridges['after']):.2f}%)"
        f" | before {100 * np.median(bridges['before']):.2f}% (max "
        f"{100 * np.max(bridges['before']):.2f}%)"
    )
    print(
        "  departure of the bridges from a line between their neighbours (after): median "
        f"{100 * np.median(departures):.2f}%, 95th percentile {100 * np.percentile(departures, 95):.2f}%,"
        f" max {100 * np.max(departures):.2f}%  [target < 2 %]"
    )
    for label, (n_rej, n_std) in false.items():
        print(f"  false rejections, {label}: {n_rej}/{n_std}  [target < 1 % on clean exposures]")
    print(f"\n{time.perf_counter() - t_start:.0f} s in all")


if __name__ == "__main__":
    main()
