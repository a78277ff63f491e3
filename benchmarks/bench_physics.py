"""Physics of the exposure (issue 10): what the calibration gets right or wrong, side by side.

Every case is a simulated exposure (``make_exposure``: 120 fibers × 4096
pixels, 6 standards at off-grid parameters, RV ±300 km/s, S/N ≈ 30–50, 8
bright program stars) calibrated by this tree, the same seed in every row of
a section, so the rows differ only by what the section is about.

Sections (each a function in :data:`SECTIONS`; ``--only NAME`` runs one):

- ``air``: wavelengths in air.  2dfdr's solutions are in air, the templates,
  telluric bands and line lists in vacuum.  Rows: a vacuum exposure
  (``CTYPE1 = 'WAVE'``); the same seed with an air grid declared
  (``'AWAV'``); air and undeclared (``'Wavelength'``, what 2dfdr writes: the
  default, air); and that undeclared air file treated as vacuum
  (``wavelength_medium="vacuum"``: the behaviour before the medium was
  handled).

- ``reddening``: standards behind E(B−V) = 0.02–0.08 (G23 at R_V 2.9–3.3;
  the calibration assumes 3.1), stars the grid does not match exactly
  (``mismatch=0.3``): E(B−V) from RefCat2's ``Ag``, fitted when the catalogue
  has none, and not modelled (the old behaviour); unreddened exposures with
  E(B−V) fitted must lose nothing.  Extra column: median |ΔE(B−V)|.
- ``fwhm``: no ``SPECFWHM`` (true 2, 3.5, 6 Å), measured on the ``SKY``
  spectrum's lines, and without it on the standards; the card given; a wrong
  FWHM given (warned).  Extra columns:
  FWHM used / true, measured / true, warned (1 = FCALWARN).

Columns: median ΔRV and median |ΔRV| of the standards against the truth
(km/s), median |Cal·T − 1| outside masked bands, program spectra (100-pixel
bins), pull std of the program pixels, standards used.

Run: ``python benchmarks/bench_physics.py [--seeds 3] [--only air]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

import kspec_xr as kx
from kspec_xr.testing import accuracy_report, make_exposure

SIM = {"n_fiber": 120, "n_pixel": 4096, "n_bright": 8}


def _calibrate(sim, grid, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kx.KspecWarning)  # a contradicting option, on purpose
        out = kx.flux_calibrate(sim.red, catalog=sim.catalog_path, templates=grid, **options)
        return out.compute()


def _report(out, sim) -> dict:
    report = accuracy_report(out, sim.truth)
    used = np.asarray(out["standard_status"].values) == 0
    order = np.argsort(np.asarray(sim.truth["standard_fiber"].values))
    drv = np.asarray(out["fit_rv"].values) - np.asarray(sim.truth["rv"].values)[order]
    report["rv_median_err"] = float(np.nanmedian(drv[used]))
    report["rv_median_abs_err"] = float(np.nanmedian(np.abs(drv[used])))
    return report


_HEADER = (
    f"  {'':40s} {'ΔRV':>7s} {'|ΔRV|':>7s} {'|Cal·T-1|':>9s} {'program':>8s} {'pulls':>6s}"
    f" {'used':>5s}"
)


def _row(label: str, r: dict) -> str:
    return (
        f"  {label:40s} {r['rv_median_err']:+7.2f} {r['rv_median_abs_err']:7.2f}"
        f" {100 * r['cal_median_abs_dev']:8.3f}% {100 * r['program_median_abs_dev']:7.3f}%"
        f" {r['pull_std']:6.2f} {r['n_standards_used']:5d}"
    )


def _summary(rows: dict[str, list[dict]]) -> None:
    print(f"\n  median over seeds\n{_HEADER}")
    for label, reports in rows.items():
        keys = reports[0].keys()
        med = {k: float(np.median([r[k] for r in reports])) for k in keys}
        med["n_standards_used"] = int(round(med["n_standards_used"]))
        print(_row(label, med))


# --- sections ---------------------------------------------------------------------------

#: rows of the air section: label -> (make_exposure options, flux_calibrate options)
AIR_CASES: dict[str, tuple[dict, dict]] = {
    "vacuum exposure (WAVE)": ({"medium": "vacuum"}, {}),
    "air, declared (AWAV)": ({"medium": "air"}, {}),
    "air, undeclared -> default air": ({"medium": "air", "declare_medium": False}, {}),
    "air, undeclared, treated as vacuum (old)": (
        {"medium": "air", "declare_medium": False},
        {"wavelength_medium": "vacuum"},
    ),
}


def air_wavelengths(args, grid, folder: Path) -> None:
    """Air wavelengths: handled (declared or by default) against treated as vacuum."""
    rows: dict[str, list[dict]] = {label: [] for label in AIR_CASES}
    for seed in range(args.seeds):
        print(f"\n  seed {500 + seed}\n{_HEADER}")
        for k, (label, (sim_options, options)) in enumerate(AIR_CASES.items()):
            sim = make_exposure(
                500 + seed, directory=folder / f"air{seed}_{k}", name="a", **SIM, **sim_options
            )
            report = _report(_calibrate(sim, grid, **options), sim)
            rows[label].append(report)
            print(_row(label, report))
    _summary(rows)


def _cases(args, grid, folder: Path, name: str, cases: dict, extra: Callable) -> None:
    """Run every case on every seed; ``extra(out, sim)`` adds section columns to a row."""
    rows: dict[str, list[dict]] = {label: [] for label in cases}
    for seed in range(args.seeds):
        print(f"\n  seed {600 + seed}\n{_HEADER}")
        for k, (label, (sim_options, options)) in enumerate(cases.items()):
            sim = make_exposure(
                600 + seed, directory=folder / f"{name}{seed}_{k}", name="x", **SIM,
                mismatch=0.3, **sim_options,
            )  # fmt: skip
            options = dict(options)
            if options.pop("drop_sky", False):  # no SKY spectrum: the stars must measure it
                sim = dataclasses.replace(sim, red=sim.red.drop_vars("SKY"))
            try:
                out = _calibrate(sim, grid, **options)
            except kx.CalibrationError as err:  # refused, with its reason: a row that says so
                print(f"  {label:40s} refused: {str(err).split(': ', 1)[-1][:110]}")
                continue
            report = _report(out, sim)
            report.update(extra(out, sim))
            rows[label].append(report)
            print(_row(label, report) + _extra_text(report))
    print(f"\n  median over seeds\n{_HEADER}")
    for label, reports in rows.items():
        if not reports:
            print(f"  {label:40s} refused in every seed")
            continue
        med = {k: float(np.median([r[k] for r in reports])) for k in reports[0]}
        med["n_standards_used"] = int(round(med["n_standards_used"]))
        print(_row(label, med) + _extra_text(med))


def _extra_text(report: dict) -> str:
    return "".join(f"  {k[2:]} {v:.3f}" for k, v in report.items() if k.startswith("x_"))


#: rows of the reddening section (E(B-V) 0.02-0.08 through G23 at R_V 2.9-3.3)
DUST = {"ebv": (0.02, 0.08)}
REDDENING_CASES: dict[str, tuple[dict, dict]] = {
    "no dust, not reddened (old)": ({}, {"redden": False}),
    "no dust, E(B-V) fitted (0 expected)": ({}, {}),
    "dust, catalogue Ag": (DUST, {}),
    "dust, catalogue Ag, not reddened (old)": (DUST, {"redden": False}),
    "dust, no Ag: E(B-V) fitted": ({**DUST, "catalog_ebv": False}, {}),
}


def _dust_columns(out, sim) -> dict:
    order = np.argsort(np.asarray(sim.truth["standard_fiber"].values))
    true = np.asarray(sim.truth["ebv"].values)[order]
    got = np.asarray(out["fit_ebv"].values)
    return {"x_|dE(B-V)|": float(np.nanmedian(np.abs(got - true)))}


def reddening(args, grid, folder: Path) -> None:
    """Reddened standards: E(B-V) from the catalogue, fitted, and ignored (the old way)."""
    _cases(args, grid, folder, "dust", REDDENING_CASES, _dust_columns)


#: rows of the resolution section: the true FWHM, the header card or not, a wrong given one
FWHM_CASES: dict[str, tuple[dict, dict]] = {
    **{
        f"true {f:.1f} A, no SPECFWHM: sky lines": ({"fwhm": f, "fwhm_card": False}, {})
        for f in (2.0, 3.5, 6.0)
    },
    **{
        f"true {f:.1f} A, no SPECFWHM, no SKY: stars": (
            {"fwhm": f, "fwhm_card": False},
            {"drop_sky": True},
        )
        for f in (2.0, 3.5, 6.0)
    },
    "true 3.5 A, SPECFWHM given": ({"fwhm": 3.5}, {}),
    "true 3.5 A, given 7 A (wrong: warned)": ({"fwhm": 3.5}, {"fwhm": 7.0}),
}


def _fwhm_columns(out, sim) -> dict:
    true = float(sim.truth.attrs["fwhm"])
    summary = kx.io.write.resolution_summary(out)
    return {
        "x_FWHM_used/true": float(out.attrs["fwhm_used"]) / true,
        "x_measured/true": summary["measured"] / true,
        "x_warned": float("FWHM" in kx.io.calibration_warning(out)),
    }


def resolution(args, grid, folder: Path) -> None:
    """The instrument FWHM: measured without SPECFWHM, checked when given."""
    _cases(args, grid, folder, "fwhm", FWHM_CASES, _fwhm_columns)


#: name -> section function(args, grid, folder); the order is the order they run in
SECTIONS: dict[str, Callable] = {
    "air": air_wavelengths,
    "reddening": reddening,
    "fwhm": resolution,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    args = parser.parse_args()
    grid = kx.open_bosz()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kspec_bench_physics_") as tmp:
        for name, section in SECTIONS.items():
            if args.only and name != args.only:
                continue
            print(f"\n== {name}: {(section.__doc__ or '').splitlines()[0]}")
            section(args, grid, Path(tmp) / name)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
