"""Run an earlier revision of kspec_xr on the same inputs, for before/after tables.

The revision is taken from this repository's history with ``git archive`` into a
temporary folder (nothing in the work tree or ``.git`` changes) and run in a
subprocess with that folder first on ``PYTHONPATH``.  Each job calibrates one
RED file with one catalogue (a CSV path, or a netCDF file of a
:func:`kspec_xr.read_catalog`-shaped Dataset) and saves the products the
benchmarks compare as ``.npz``; :func:`as_dataset` turns one back into a
Dataset that :func:`kspec_xr.demo.accuracy_report` accepts.

Only the harness is shimmed, never the old science: revisions that did not yet
know the DECam bands (the real night's photometry) get them added to
``photometry.KNOWN_BANDS`` / ``COLOUR_PAIRS`` before anything runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

#: the last commit before the robust-standards work (issue 8)
BEFORE = "4320d5e"

_ROOT = Path(__file__).resolve().parents[1]

_RUNNER = r"""
import json, sys, warnings
# an editable install of the work tree would fill in modules the revision lacks
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import numpy as np, xarray as xr
import kspec_xr as kx
if not kx.__file__.startswith(sys.argv[2]):
    sys.exit(f"the revision's kspec_xr was not the one imported: {kx.__file__}")
from kspec_xr import photometry

decam = tuple(f"decam2014-{b}" for b in "grizY")
if "decam2014-g" not in photometry.KNOWN_BANDS:
    photometry.KNOWN_BANDS = photometry.KNOWN_BANDS + decam
    photometry.COLOUR_PAIRS = photometry.COLOUR_PAIRS + (
        ("decam2014-g", "decam2014-r"), ("decam2014-r", "decam2014-i"), ("decam2014-i", "decam2014-z"))
try:  # where the revision keeps it
    from kspec_xr._base.schema import standards_used
except ImportError:
    from kspec_xr.calibration import standards_used

warnings.simplefilter("ignore")
for job in json.load(open(sys.argv[1])):
    try:
        ds = kx.open_red(job["red"])
        cat = job["catalog"]
        if cat.endswith(".nc"):
            cat = xr.open_dataset(cat).load()
        out = kx.flux_calibrate(ds, catalog=cat, **job["options"]).compute()
        names = ("calibration", "calibration_variance", "calibration_mask", "flux", "variance",
                 "mask", "fit_teff", "fit_rv", "standard_fiber", "calibration_rms")
        arrays = {n: np.asarray(out[n].values) for n in names}
        arrays["used"] = np.asarray(standards_used(out).values)
        arrays["version"] = np.array(kx.__file__)
        np.savez(job["out"], **arrays)
    except Exception as err:  # recorded, so one failing job does not hide the others
        np.savez(job["out"], error=np.array(f"{type(err).__name__}: {err}"))
"""


def extract(rev: str = BEFORE, dest: str | os.PathLike | None = None) -> Path:
    """The package of revision ``rev`` in a folder (``kspec_xr/`` with its ``data``)."""
    folder = Path(dest or tempfile.mkdtemp(prefix=f"kspec_xr_{rev}_"))
    archive = subprocess.run(
        ["git", "-C", str(_ROOT), "archive", rev, "kspec_xr", "data"],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(folder, filter="data")
    shutil.copytree(folder / "data", folder / "kspec_xr" / "data", dirs_exist_ok=True)
    return folder


def run(jobs: list[dict], rev: str = BEFORE) -> list[dict | str]:
    """Calibrate every job with revision ``rev``; the saved arrays (or the error) per job.

    A job is ``{"red": path, "catalog": path, "options": {...}}``.
    """
    with tempfile.TemporaryDirectory(prefix="kspec_xr_before_") as tmp:
        tree = extract(rev, Path(tmp) / "tree")
        for k, job in enumerate(jobs):
            job["out"] = str(Path(tmp) / f"job{k}.npz")
        job_file = Path(tmp) / "jobs.json"
        job_file.write_text(json.dumps(jobs))
        env = {**os.environ, "PYTHONPATH": str(tree)}
        # cwd: `python -c` puts the working directory first on sys.path, and from
        # the project's folder that would import this tree's kspec_xr instead
        subprocess.run(
            [sys.executable, "-c", _RUNNER, str(job_file), str(tree)], check=True, env=env, cwd=tmp
        )
        results = []
        for job in jobs:
            with np.load(job["out"]) as saved:
                results.append(
                    str(saved["error"]) if "error" in saved else {k: saved[k] for k in saved}
                )
    return results


def as_dataset(saved: dict, like: xr.Dataset) -> xr.Dataset:
    """A Dataset of the saved products on ``like``'s coordinates (for accuracy_report)."""
    wave = ("wavelength",)
    fiber_wave = ("fiber", "wavelength")
    status = np.where(saved["used"], 0, 1).astype("int16")
    return xr.Dataset(
        {
            "calibration": (wave, saved["calibration"]),
            "calibration_variance": (wave, saved["calibration_variance"]),
            "calibration_mask": (wave, saved["calibration_mask"]),
            "calibration_rms": (wave, saved["calibration_rms"]),
            "flux": (fiber_wave, saved["flux"]),
            "variance": (fiber_wave, saved["variance"]),
            "mask": (fiber_wave, saved["mask"]),
            "fit_teff": ("standard", saved["fit_teff"]),
            "fit_rv": ("standard", saved["fit_rv"]),
            "standard_fiber": ("standard", saved["standard_fiber"]),
            "standard_status": ("standard", status),
        },
        coords={"wavelength": like["wavelength"].values, "fiber": like["fiber"].values},
    )
