"""Threads for the standards of a fit (the same numbers), and how kspec_xr's processes use memory."""

from __future__ import annotations

import numpy as np
import pytest

import kspec_xr as kx
from kspec_xr._base.errors import OptionError
from kspec_xr._base.threads import ENV, available_cpus, kernel_threads, stage_threads
from kspec_xr.batch import worker_environment
from kspec_xr.testing import make_exposure


@pytest.fixture(scope="module")
def exposure(tmp_path_factory):
    # reddened, so that the fit runs both its passes (E(B-V) fitted, then the field's)
    return make_exposure(
        21, n_fiber=20, n_standard=6, n_pixel=1800, mismatch=0.2, ebv=(0.02, 0.05),
        directory=tmp_path_factory.mktemp("threads"),
    )  # fmt: skip


def _calibrated(exposure, threads: str, monkeypatch):
    monkeypatch.setenv(ENV, threads)
    return kx.flux_calibrate(exposure.red, catalog=exposure.catalog_path)


def test_threads_give_the_same_calibration_bit_for_bit(exposure, monkeypatch):
    one = _calibrated(exposure, "1", monkeypatch)
    three = _calibrated(exposure, "3", monkeypatch)  # more threads than cores: still the same
    assert kernel_threads(6) == 3
    compared = 0
    for name, var in one.data_vars.items():
        if var.dtype.kind in "fiu":
            np.testing.assert_array_equal(three[name].values, var.values, err_msg=name)
            compared += 1
    assert compared > 40
    assert np.isfinite(one["fit_teff"]).all() and "std_fwhm" in one  # fit and FWHM check ran
    assert float(one["fit_ebv"][0]) > 0  # the field's E(B-V) was fitted: two passes


def test_thread_count_default_option_and_bad_values(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert kernel_threads(100) == available_cpus()
    assert kernel_threads(1) == 1  # never more threads than pieces of work
    monkeypatch.setenv(ENV, "2")
    assert kernel_threads(10) == 2
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(OptionError, match=f"{ENV} must be a positive integer.*{bad}"):
            kernel_threads(4)


def test_a_dask_backed_exposure_is_not_threaded(exposure, monkeypatch):
    monkeypatch.setenv(ENV, "4")
    eager = exposure.red["flux"]
    assert stage_threads(eager, 6) == 4
    assert stage_threads(eager.chunk({"fiber": 5}), 6) == 1  # dask runs the chunks in parallel


def test_batch_workers_share_the_cpus(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    cpus = available_cpus()
    assert worker_environment(1)[ENV] == str(cpus)
    assert worker_environment(cpus)[ENV] == "1"
    assert worker_environment(4 * cpus)[ENV] == "1"
    monkeypatch.setenv(ENV, "3")  # the caller's choice reaches the workers unchanged
    assert ENV not in worker_environment(1)


# --- numpy's huge pages in kspec_xr's own processes (kspec_xr._base.memory) -------------

_HUGE_PAGES_AFTER_CLI = """
import os, sys
from kspec_xr.cli import main
code = main(["fluxcal", "absent_red.fits", "-o", "out.fits", "--catalog", "absent.csv"])  # exit 2
import numpy._core.multiarray as multiarray
print(code, os.environ.get("NUMPY_MADVISE_HUGEPAGE"), multiarray._get_madvise_hugepage())
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "2 0 False"), ("1", "2 1 True")])
def test_the_command_line_starts_numpy_without_huge_pages(given, expected, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if given is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = given  # the user's choice is kept
    done = subprocess.run(
        [sys.executable, "-c", _HUGE_PAGES_AFTER_CLI],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.stdout.split("\n")[-2] == expected, done.stderr


def test_batch_workers_start_numpy_without_huge_pages(monkeypatch):
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    assert worker_environment(2)["NUMPY_MADVISE_HUGEPAGE"] == "0"
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")  # inherited by the workers as it is
    assert "NUMPY_MADVISE_HUGEPAGE" not in worker_environment(2)


def test_a_grid_is_prepared_in_small_pages_and_the_setting_restored(monkeypatch):
    import numpy._core.multiarray as multiarray

    import kspec_xr.templates.prepared as prepared
    from kspec_xr._base.memory import small_pages

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    before = multiarray._set_madvise_hugepage(True)
    try:
        seen = []
        monkeypatch.setattr(
            prepared,
            "_build_arrays",
            lambda *a, **k: seen.append(multiarray._get_madvise_hugepage()),
        )
        prepared._build(None, None, None, vmax=0, oversample=1)
        assert seen == [False] and multiarray._get_madvise_hugepage() is True
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")  # the user's choice stands
        with small_pages():
            assert multiarray._get_madvise_hugepage() is True
    finally:
        multiarray._set_madvise_hugepage(before)


def test_a_batch_with_a_bad_thread_count_is_refused_before_any_work(
    exposure, tmp_path, monkeypatch
):
    monkeypatch.setenv(ENV, "lots")
    out_dir = tmp_path / "out"
    with pytest.raises(OptionError, match=f"{ENV} must be a positive integer"):
        kx.calibrate_many([exposure.red_path], out_dir, catalog=exposure.catalog_path)
    assert not out_dir.exists()  # refused before the cluster and the output folder


def test_a_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch):
    import os

    from distributed import Client

    from kspec_xr.batch import local_cluster

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    before = dict(os.environ)
    seen = []
    for n_workers in (1, 2):  # the second cluster must not inherit the first one's share
        with local_cluster(n_workers) as cluster, Client(cluster, set_as_default=False) as client:
            assert dict(os.environ) == before  # distributed wrote it to spawn; put back
            seen.append(sorted(client.run(lambda: os.environ.get(ENV)).values()))
    assert dict(os.environ) == before
    cpus = available_cpus()
    assert seen == [[str(cpus)], [str(max(1, cpus // 2))] * 2]
