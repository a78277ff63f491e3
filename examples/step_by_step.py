"""Calibrate one exposure stage by stage, inspect the standards, save a QC figure.

Run: ``python examples/step_by_step.py [OUTPUT_DIR]``.  Uses a simulated
exposure; point ``red`` and ``catalog`` at your own files instead.
"""

import sys
from pathlib import Path

import kspec_xr as kx
from kspec_xr._base.schema import StandardStatus, with_status
from kspec_xr.qc import standards_table
from kspec_xr.testing import make_exposure

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "example_output")
sim = make_exposure(3, n_fiber=80, n_standard=6, n_pixel=4096, directory=folder)
red, catalog = sim.red_path, sim.catalog_path

ds = kx.open_red(red, chunks={"fiber": 32})  # lazy: nothing is read until computed
grid = kx.open_bosz()  # the bundled stand-in grid; kx.open_bosz("path/to/bosz") for real ones

standards = (
    ds.pipe(kx.select_standards)
    .pipe(kx.associate_catalog, catalog)
    .pipe(kx.fit_standards, grid)  # fwhm from SPECFWHM
    .pipe(kx.scale_to_photometry)
    .compute()
)
print(standards_table(standards))

# the gating rejects bad standards with their reasons (thresholds: kx.gating.GATE_DEFAULTS)
gated = standards.pipe(kx.star_calibrations).pipe(kx.gate_standards).compute()
print(standards_table(gated))

# stop here, drop a star you do not trust, and go on
status = gated["standard_status"].copy()
status[0] = StandardStatus.ZERO_POINT  # e.g. a star you know is variable
gated = with_status(gated, status)
calibrated = gated.pipe(kx.combine_calibrations, smooth=True).pipe(kx.apply_calibration)
kx.write_red(calibrated, folder / "calibrated_red.fits", overwrite=True)
kx.plot_calibration(calibrated, folder / "qc.png", overwrite=True)
print(f"wrote {folder / 'calibrated_red.fits'} and {folder / 'qc.png'}")
