"""calibrate_many and ``kspec-xr batch`` on a real LocalCluster (loopback, worker processes)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client, LocalCluster, WorkerPlugin

import kspec_xr as kx
import kspec_xr.batch as kd
from kspec_xr._base.paths import _temp_prefix
from kspec_xr.cli import main
from kspec_xr.nightly import NIGHTLY_NAME
from kspec_xr.testing import make_exposure

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

NAMES = ("a", "b", "c")


# =============================================================================
# fixtures: three small exposures, one cluster, one reference batch
# =============================================================================


@pytest.fixture(scope="module")
def exposures(tmp_path_factory):
    """Three small exposures ``{a,b,c}red.fits`` with their own catalogues."""
    folder = tmp_path_factory.mktemp("inputs")
    return [
        make_exposure(seed, n_fiber=30, n_standard=4, n_pixel=1024, directory=folder, name=name)
        for seed, name in enumerate(NAMES, start=1)
    ]


@pytest.fixture(scope="module")
def catalogs(exposures):
    """``{file name: catalogue path}`` for :func:`calibrate_many`."""
    return {e.red_path.name: e.catalog_path for e in exposures}


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # no clash on port 8787
        ) as cluster,
        Client(cluster, set_as_default=False) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def first_batch(exposures, catalogs, client, tmp_path_factory):
    """The three exposures calibrated once, with a window of 2 and the peak in flight recorded."""
    out_dir = tmp_path_factory.mktemp("batch") / "out"  # created by calibrate_many
    submitted = []
    peak = 0
    original = client.submit

    def submit(*args, **kwargs):
        nonlocal peak
        future = original(*args, **kwargs)
        submitted.append(future)
        peak = max(peak, sum(not f.done() for f in submitted))
        return future

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kd, "_window", lambda active: 2)
        mp.setattr(client, "submit", submit)
        summary = kx.calibrate_many(
            [e.red_path for e in exposures], out_dir, catalog=catalogs, client=client
        )
    return summary, out_dir, peak, len(submitted)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# =============================================================================
# results
# =============================================================================


def test_batch_matches_serial(first_batch, exposures):
    summary, out_dir, _, _ = first_batch
    assert list(summary.columns) == list(kd.SUMMARY_COLUMNS)
    assert list(summary["input"]) == [str(e.red_path) for e in exposures]  # input order
    assert list(summary["status"]) == ["ok"] * 3, summary["error"].tolist()
    assert list(summary["output"]) == [str(out_dir / e.red_path.name) for e in exposures]
    assert (summary["n_standards"] == 4).all()
    assert (summary["n_used"] >= 1).all()
    assert (summary["rms"] > 0).all() and (summary["seconds"] > 0).all()
    assert (summary["error"] == "").all()

    for exp in exposures:
        serial = kx.flux_calibrate(kx.open_red(exp.red_path), catalog=exp.catalog_path).compute()
        written = kx.open_red(out_dir / exp.red_path.name)
        np.testing.assert_allclose(written["flux"].values, serial["flux"].values, equal_nan=True)
        np.testing.assert_allclose(
            written["variance"].values, serial["variance"].values, equal_nan=True
        )
        assert written["flux"].attrs["units"] == "erg/(s cm2 Angstrom)"

    on_disk = pd.read_csv(out_dir / kd.SUMMARY_NAME, keep_default_na=False)
    assert list(on_disk["input"]) == list(summary["input"])
    assert list(on_disk["status"]) == ["ok"] * 3
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [kd.SUMMARY_NAME, *(e.red_path.name for e in exposures)]
    )


def test_memory_bounded_by_window(first_batch, client):
    _, _, peak, n_submitted = first_batch
    assert n_submitted == 3
    assert peak <= 2  # never more exposures in flight than the window
    assert kd._window(client) == 4  # twice the worker threads (2 workers × 1 thread)


def test_progress_lines(exposures, catalogs, client, tmp_path, caplog):
    # resume over a folder of complete outputs: fast, and exercises the progress lines
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    summary = kx.calibrate_many(
        [exposures[0].red_path], out_dir, catalog=catalogs, client=client, progress=False
    )
    assert list(summary["status"]) == ["ok"]
    assert "ared.fits" not in caplog.text  # progress=False: no progress line
    with caplog.at_level(logging.INFO, logger="kspec_xr.batch"):
        summary = kx.calibrate_many(
            [exposures[0].red_path], out_dir, catalog=catalogs, client=client, resume=True
        )
    assert list(summary["status"]) == ["skipped"]
    assert "[1/1] ared.fits: skipped (" in caplog.text


# =============================================================================
# failures
# =============================================================================


class KillOnce(WorkerPlugin):
    """Kill the worker process (``os._exit``) when it starts executing a matching task.

    Only the first time: a marker file is created just before dying, so the
    rescheduled task (on the other worker or on the nanny's replacement, which
    gets this plugin too) runs normally.
    """

    name = "kspec-xr-test-kill-once"

    def __init__(self, key_part: str, marker: str):
        self.key_part = key_part
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and self.key_part in str(key) and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)


def test_worker_killed_mid_batch(exposures, catalogs, client, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # what a worker killed in the middle of write_red leaves behind (its pid is gone)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stale = _temp_prefix(out_dir / "bred.fits", int(dead)) + "k1ll3d.tmp"
    (out_dir / stale).write_bytes(b"half a FITS file")
    marker = tmp_path / "killed-once"
    workers_before = set(client.scheduler_info()["workers"])
    client.register_plugin(KillOnce("calibrate-bred.fits-", str(marker)))
    try:
        summary = kx.calibrate_many(
            [e.red_path for e in exposures], out_dir, catalog=catalogs, client=client
        )
    finally:
        client.unregister_worker_plugin(KillOnce.name)
    assert marker.exists()  # a worker really died running bred.fits
    assert list(summary["status"]) == ["ok"] * 3, summary["error"].tolist()
    assert _temporaries(out_dir) == []
    for exp in exposures:
        out = kx.open_red(out_dir / exp.red_path.name)
        assert out["flux"].attrs["units"] == "erg/(s cm2 Angstrom)"
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the dead worker
    assert set(client.scheduler_info()["workers"]) != workers_before


class KillAlways(WorkerPlugin):
    """Kill every worker that starts executing a matching task."""

    name = "kspec-xr-test-kill-always"

    def __init__(self, key_part: str):
        self.key_part = key_part

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and self.key_part in str(key):
            os._exit(1)


def _set_allowed_failures(dask_scheduler, value):
    previous = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = value
    return previous


def test_exposure_that_keeps_killing_workers_fails(
    exposures, catalogs, client, tmp_path, monkeypatch
):
    out_dir = tmp_path / "out"
    # one exposure in flight, so that ared.fits never shares a dying worker with cred.fits
    # (a task that was running on a dead worker counts that death against itself too)
    monkeypatch.setattr(kd, "_window", lambda active: 1)
    previous = client.run_on_scheduler(_set_allowed_failures, value=1)  # 2 deaths, not 4
    client.register_plugin(KillAlways("calibrate-cred.fits-"))
    try:
        summary = kx.calibrate_many(
            [exposures[2].red_path, exposures[0].red_path],
            out_dir,
            catalog=catalogs,
            client=client,
            progress=False,
        )
    finally:
        client.unregister_worker_plugin(KillAlways.name)
        client.run_on_scheduler(_set_allowed_failures, value=previous)
    assert list(summary["status"]) == ["failed", "ok"]
    assert "KilledWorker" in summary["error"].iloc[0]
    assert "cred.fits" in summary["error"].iloc[0]
    assert not (out_dir / "cred.fits").exists()
    client.wait_for_workers(2, timeout=60)


def test_cli_bad_input_fails_alone(exposures, tmp_path, capsys):
    # one catalogue for the whole batch: two copies of exposure a and a corrupt file
    folder = tmp_path / "night"
    folder.mkdir()
    for name in ("a1red.fits", "a2red.fits"):
        shutil.copy(exposures[0].red_path, folder / name)
    with open(exposures[1].red_path, "rb") as handle:
        (folder / "brokenred.fits").write_bytes(handle.read(5000))
    out_dir = tmp_path / "out"  # missing: created
    status = main(
        [
            "batch",
            str(folder / "*red.fits"),
            "--catalog",
            str(exposures[0].catalog_path),
            "--out-dir",
            str(out_dir),
            "--workers",
            "2",
            "--nightly",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1
    summary = pd.read_csv(out_dir / kd.SUMMARY_NAME, keep_default_na=False)
    assert list(summary["input"].map(lambda p: Path(p).name)) == [
        "a1red.fits",
        "a2red.fits",
        "brokenred.fits",
    ]
    assert list(summary["status"]) == ["ok", "ok", "failed"]
    assert "brokenred.fits" in summary["error"].iloc[2]
    assert "\n" not in summary["error"].iloc[2]
    assert not (out_dir / "brokenred.fits").exists()
    assert _temporaries(out_dir) == []
    assert "2 ok, 0 skipped, 1 failed" in captured.out
    assert str(out_dir / kd.SUMMARY_NAME) in captured.out
    assert "brokenred.fits: failed" in captured.err
    night = xr.open_dataset(out_dir / NIGHTLY_NAME)
    assert int(night.attrs["n_exposures"]) == 2
    np.testing.assert_allclose(summary["nightly_scale"].iloc[:2].astype(float), 1.0, rtol=1e-6)
    assert f"nightly transfer function: {out_dir / NIGHTLY_NAME}" in captured.out


def test_cli_resume_skips_complete_and_redoes_truncated(first_batch, exposures, client, tmp_path):
    _, done_dir, _, _ = first_batch
    out_dir = tmp_path / "out"
    shutil.copytree(done_dir, out_dir)
    truncated = out_dir / "ared.fits"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    status = main(
        [
            "batch",
            *(str(e.red_path) for e in exposures),
            # only ared.fits is calibrated again, so its catalogue serves for the batch
            "--catalog",
            str(exposures[0].catalog_path),
            "--out-dir",
            str(out_dir),
            "--scheduler",
            client.scheduler.address,
            "--resume",
        ]
    )
    assert status == 0
    summary = pd.read_csv(out_dir / kd.SUMMARY_NAME, keep_default_na=False)
    assert list(summary["status"]) == ["ok", "skipped", "skipped"]
    redone = kx.open_red(truncated)
    assert truncated.stat().st_size == len(data)
    assert redone["flux"].attrs["units"] == "erg/(s cm2 Angstrom)"
    for name in ("bred.fits", "cred.fits"):  # skipped: untouched
        assert (out_dir / name).read_bytes() == (done_dir / name).read_bytes()


def test_never_overwrites_input_or_existing_output(exposures, catalogs, client, tmp_path):
    folder = tmp_path / "night"
    folder.mkdir()
    source = folder / "ared.fits"
    shutil.copy(exposures[0].red_path, source)
    before = source.read_bytes()
    # out_dir == the input folder: the output would be the input itself; and an
    # exposure missing from the catalogue mapping
    summary = kx.calibrate_many(
        [source, exposures[2].red_path],
        folder,
        catalog={"ared.fits": exposures[0].catalog_path},
        client=client,
        overwrite=True,
        progress=False,
    )
    assert list(summary["status"]) == ["failed", "failed"]
    assert "would be the input itself" in summary["error"].iloc[0]
    assert "ared.fits" in summary["error"].iloc[0]
    assert "no catalogue" in summary["error"].iloc[1] and "cred.fits" in summary["error"].iloc[1]
    assert source.read_bytes() == before
    assert not (folder / "cred.fits").exists()

    # an existing output is kept unless overwrite=True; the other exposures carry on
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "bred.fits").write_bytes(b"keep me")
    paths = [exposures[1].red_path, exposures[2].red_path]
    summary = kx.calibrate_many(paths, out_dir, catalog=catalogs, client=client, progress=False)
    assert list(summary["status"]) == ["failed", "ok"]
    assert "exists" in summary["error"].iloc[0] and "overwrite" in summary["error"].iloc[0]
    assert (out_dir / "bred.fits").read_bytes() == b"keep me"


# =============================================================================
# argument checks (no cluster is started)
# =============================================================================


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("kspec-xr batch: error:")
    return err


def test_cli_argument_errors(exposures, tmp_path, capsys):
    common = ["--catalog", str(exposures[0].catalog_path), "--out-dir", str(tmp_path / "o")]
    assert main(["batch", *common]) == 2
    assert "no input files" in _one_line_error(capsys)

    both = ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]
    assert main(["batch", str(exposures[0].red_path), *common, *both]) == 2
    assert "not both" in _one_line_error(capsys)

    missing = str(tmp_path / "nothing" / "*red.fits")
    assert main(["batch", str(exposures[0].red_path), missing, *common]) == 2
    assert missing in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_argument_checks(exposures, catalogs, tmp_path):
    paths = [e.red_path for e in exposures]
    with pytest.raises(kx.KspecError, match="no input"):
        kx.calibrate_many([], tmp_path, catalog=catalogs)
    twin = tmp_path / "other" / "ared.fits"
    with pytest.raises(kx.KspecError, match="share the file name 'ared.fits'"):
        kx.calibrate_many([paths[0], twin], tmp_path, catalog=catalogs)
    with pytest.raises(kx.KspecError, match="given twice"):
        kx.calibrate_many([paths[0], paths[0]], tmp_path, catalog=catalogs)
    with pytest.raises(TypeError, match="unknown option"):
        kx.calibrate_many(paths, tmp_path, catalog=catalogs, fwhn=2.0)
    with pytest.raises(TypeError, match="templates must be a str or os.PathLike"):
        kx.calibrate_many(paths, tmp_path, catalog=catalogs, templates=xr.DataArray([1.0]))
    with pytest.raises(TypeError, match="catalog"):
        kx.calibrate_many(paths, tmp_path, catalog=exposures[0].catalog)
    with pytest.raises(ValueError, match="workers"):
        kx.calibrate_many(paths, tmp_path, catalog=catalogs, client="tcp://x:1", workers=2)
    assert list(tmp_path.iterdir()) == []
