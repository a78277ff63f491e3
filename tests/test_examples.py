"""The scripts in ``examples/`` run as a user runs them, and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, out: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(out)],
        capture_output=True, text=True, cwd=out.parent, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not in this installation")
def test_step_by_step_writes_a_calibrated_file_and_its_qc_figure(tmp_path):
    out = tmp_path / "step"
    stdout = _run("step_by_step.py", out)
    assert "standards used" in stdout
    with fits.open(out / "calibrated_red.fits") as hdul:
        assert "erg" in hdul[0].header["BUNIT"]
    assert (out / "qc.png").stat().st_size > 10_000


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not in this installation")
def test_batch_night_calibrates_every_exposure_on_a_local_cluster(tmp_path):
    # (a script without the __main__ guard fails here: the spawned workers re-run it)
    out = tmp_path / "night"
    stdout = _run("batch_night.py", out)
    assert stdout.count(" ok ") >= 4
    assert len(list((out / "calibrated").glob("*red.fits"))) == 4
